import CKVM
import Dispatch
import Foundation
import Glibc
import KVM
import Synchronization
import X86

/// Limits and controls of one run.
public struct RunLimits: Sendable {
    /// Stop after this many exits (all vCPUs together).
    public var maxExits: UInt64?
    /// Stop after this many seconds of wall time.
    public var timeout: Double?
    /// Stop cleanly on Ctrl-C (SIGINT) instead of dying.
    public var handleInterrupt: Bool
    /// Complete what KVM's emulator cannot (issue 9, Completion.swift): on an emulation failure
    /// the VMM runs the instruction itself and resumes. Off (`--no-complete`): the failure ends
    /// the run with its report.
    public var completeEmulationFailures: Bool
    public init(maxExits: UInt64? = nil, timeout: Double? = nil, handleInterrupt: Bool = false,
                completeEmulationFailures: Bool = true) {
        self.maxExits = maxExits; self.timeout = timeout; self.handleInterrupt = handleInterrupt
        self.completeEmulationFailures = completeEmulationFailures
    }
}

/// A KVM machine built from a config and an image: guest memory, devices, vCPUs. `run` starts
/// one thread per vCPU, each in the exit loop, and returns the summary when every vCPU has
/// stopped.
public final class Machine: @unchecked Sendable {
    public let config: MachineConfig
    public let system: KVMSystem
    public let vm: VirtualMachine
    public let memory: GuestMemory
    public let bus: DeviceBus
    public let uart: UART16550
    public let scratch: ScratchMMIO
    public let msrs: MSRFile
    public let handler: ExitHandler
    public let image: GuestImage
    /// The CPUID table given to vCPU 0 (KVM_SET_CPUID2: KVM's supported set narrowed to the
    /// profile), for the trace header.
    public let guestCPUID: [CPUIDEntry]
    let vcpus: [VCPU]
    let bootStates: [CPUState?]
    /// A machine runs once: its vCPUs' state and devices carry on from where a run left them.
    let started = Atomic<Bool>(false)

    /// Builds the machine. `serial` receives the UART's output; `serialInput` is what the guest
    /// reads from it.
    public init(config: MachineConfig, image: GuestImage, serial: SerialOutput, serialInput: [UInt8] = [],
                system: KVMSystem? = nil) throws(VMMError) {
        guard config.memoryMiB >= 1, config.memoryMiB <= MachineLayout.maxMemoryMiB else {
            throw VMMError.config("memory \(config.memoryMiB) MiB: expected 1...\(MachineLayout.maxMemoryMiB)")
        }
        guard config.vcpus >= 1, config.vcpus <= MachineConfig.maxVCPUs else {
            throw VMMError.config("vcpus \(config.vcpus): expected 1...\(MachineConfig.maxVCPUs)")
        }
        self.config = config
        self.image = image
        do {
            let sys = try system ?? KVMSystem()
            self.system = sys
            memory = try GuestMemory(size: config.memoryBytes)
            try Loader.load(image, into: memory, config: config)
            vm = try sys.createVM()
            try? vm.setTSSAddress(MachineLayout.tssAddress)  // VMX needs it for real mode; others ignore it
            for r in memory.regions {
                try vm.setUserMemoryRegion(slot: 0, guestPhysical: r.guestPhysical, size: r.size, host: r.host)
            }
            if config.irqchip == .kernel {
                try vm.createIRQChip()
                try vm.createPIT2()
            }
            let routed = config.routeSaveAreaMSRs && sys.has(.userSpaceMSR) && sys.has(.msrFilter)
            if routed {
                try vm.routeMSRs(MSRIndex.saveArea.map { MSRFilterRange(base: $0, count: 1, reads: false, writes: true) })
            }
            msrs = MSRFile(forwarded: routed ? Set(MSRIndex.saveArea) : [])

            bus = DeviceBus()
            uart = UART16550(output: serial, input: serialInput)
            scratch = ScratchMMIO()
            try bus.attach(uart, port: MachineLayout.serialPort, count: 8)
            try bus.attach(scratch, address: MachineLayout.scratchMMIOBase, length: MachineLayout.scratchMMIOSize)
            let shutdown = try Self.attachPCDevices(bus, config: config)
            let legacy = try Self.attachLegacyDevices(bus, config: config)
            if config.irqchip == .kernel {
                let vm = self.vm
                // A refused line (KVM returns an error only for a bad line number) is dropped.
                try bus.attach(TestDevIRQLines { line, level in try? vm.setIRQLine(line, level: level) },
                               port: MachineLayout.testDevIRQPort, count: MachineLayout.testDevIRQLines)
            }
            handler = ExitHandler(bus: bus, msrs: msrs, irqchip: config.irqchip, shutdown: shutdown, i8042: legacy.i8042,
                                  acpiSleep: legacy.acpiSleep)

            let cpuid = try sys.supportedCPUID()
            guestCPUID = config.cpuid.apply(cpuid, apicID: 0)
            // Machine-check banks as QEMU sets them (MCG_CTL_P | MCG_SER_P, 10 banks), so guests
            // that walk the banks (kvm-unit-tests' msr) see what they see under QEMU.
            // (KVM reports the capability bits; its bank maximum is KVM_CAP_MCE's value, at least 10 in practice.)
            let mcgCap = (try? sys.mceCapSupported()).map { ($0 & (1 << 8 | 1 << 24)) | 10 }
            var vcpus: [VCPU] = []
            var states: [CPUState?] = []
            for i in 0..<config.vcpus {
                let v = try vm.createVCPU(id: i)
                try v.setCPUID(config.cpuid.apply(cpuid, apicID: UInt32(i)))
                if let mcgCap { try? v.setupMCE(mcgCap) }
                // With the in-kernel irqchip the APs wait for INIT/SIPI; without it every vCPU
                // starts at the entry point with its own stack.
                if i == 0 || config.irqchip == .none {
                    let s = try Loader.bootState(image, memory: memory, config: config, vcpu: i)
                    try v.setSregs(s.kvmSregs(base: try v.getSregs()))
                    try v.setRegs(s.kvmRegs)
                    states.append(s)
                } else {
                    states.append(nil)
                }
                vcpus.append(v)
            }
            self.vcpus = vcpus
            bootStates = states
        } catch let e as KVMError {
            throw VMMError.kvm(e)
        } catch let e as VMMError {
            throw e
        } catch {
            throw VMMError.config("\(error)")
        }
    }

    /// fw_cfg, the poweroff port, pc-testdev (latch and RAM-like MMIO), the ACPI PM timer and, without the
    /// in-kernel irqchip, the PIC mask registers (PCDevices.swift).
    static func attachPCDevices(_ bus: DeviceBus, config: MachineConfig) throws(VMMError) -> ShutdownPort {
        try bus.attach(FirmwareConfig(vcpus: config.vcpus, ramBytes: config.memoryBytes), port: MachineLayout.fwCfgPort, count: 2)
        let shutdown = ShutdownPort()
        try bus.attach(shutdown, port: MachineLayout.shutdownPort, count: 1)
        let latch = TestDevLatch()
        try bus.attach(latch, port: MachineLayout.testDevPort, count: 4)
        try bus.attach(latch, port: MachineLayout.testDevBytePort, count: 4)
        try bus.attach(ACPIPMTimer(), port: MachineLayout.pmTimerPort, count: 4)
        try bus.attach(ScratchMMIO(size: Int(MachineLayout.testDevMemorySize)), address: MachineLayout.testDevMemoryBase,
                       length: MachineLayout.testDevMemorySize)
        if config.irqchip == .none {
            try bus.attach(PICMaskRegisters(), port: MachineLayout.masterPICPort, count: 2)
            try bus.attach(PICMaskRegisters(), port: MachineLayout.slavePICPort, count: 2)
        }
        return shutdown
    }

    /// The i8042 (0x60, 0x64), the CMOS/RTC (0x70-0x71) and the ACPI sleep registers
    /// (0x600-0x601) that a Linux kernel reads, reboots and powers off through
    /// (LegacyDevices.swift, ACPITables.swift).
    static func attachLegacyDevices(_ bus: DeviceBus, config: MachineConfig) throws(VMMError)
        -> (i8042: I8042Controller, acpiSleep: ACPISleepControl) {
        let i8042 = I8042Controller()
        try bus.attach(I8042Port(i8042, command: false), port: MachineLayout.i8042DataPort, count: 1)
        try bus.attach(I8042Port(i8042, command: true), port: MachineLayout.i8042CommandPort, count: 1)
        try bus.attach(CMOS(memoryMiB: config.memoryMiB), port: MachineLayout.cmosPort, count: 2)
        let sleep = ACPISleepControl()
        try bus.attach(sleep, port: ACPITables.sleepControlPort, count: 2)
        return (i8042, sleep)
    }

    /// Facts about the machine, for an observer's trace header.
    public var info: MachineInfo {
        MachineInfo(config: config, backend: KVMSystem.backendModule(), apiVersion: (try? system.apiVersion()) ?? 0,
                    capabilities: KVMCapability.reported.map { ($0.name, (try? system.checkExtension($0)) ?? 0) },
                    memory: GuestMemoryView(memory),
                    tscHz: (try? vcpus[0].tscKHz()).map { $0 * 1000 },
                    hostCPU: Self.hostCPU(), kernel: Self.kernelRelease())
    }

    /// "model name" from /proc/cpuinfo.
    static func hostCPU() -> String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
        for line in text.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return "unknown"
    }

    /// uname's release ("6.18.44-...").
    static func kernelRelease() -> String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    // MARK: running

    final class Runner: @unchecked Sendable {
        let vcpu: VCPU
        let index: Int
        var thread = pthread_t()
        var counts = [UInt64](repeating: 0, count: 64)
        var exits: UInt64 = 0
        var halted = false
        /// XCR0 from KVM_GET_XCRS at the vCPU's start, with an observer (for completions' states).
        var xcr0: UInt64? = nil
        /// Completions by mnemonic (rare: a dictionary is fine).
        var completions: [String: UInt64] = [:]
        /// True while this thread may be inside KVM_RUN (kept only with several vCPUs): a
        /// completion waits until every other vCPU is out of the guest.
        let inRun = Atomic<Bool>(false)
        /// Counts this vCPU's KVM_RUNs under lockstep, so a waiter knows when one lasts (GuestToken).
        let runNumber = Atomic<UInt64>(0)
        /// Under lockstep: the last kick found this vCPU waiting in KVM (halted, or for SIPI), so
        /// its next KVM_RUN most likely waits too and a vCPU waiting for the token kicks at once.
        let expectBlock = Atomic<Bool>(false)
        init(vcpu: VCPU) { self.vcpu = vcpu; index = vcpu.index }
    }

    final class Control: @unchecked Sendable {
        let stopRequested = Atomic<Bool>(false)
        let reason = Mutex<StopReason?>(nil)
        let totalExits = Atomic<UInt64>(0)
        let markers = Atomic<UInt64>(0)
        var runners: [Runner] = []
        /// One completion at a time, VM-wide; while one runs, the other vCPUs stay out of the
        /// guest (`pauseRequested`), so a locked instruction is atomic for the guest.
        let completionLock = Mutex<Void>(())
        let pauseRequested = Atomic<Bool>(false)
        /// Lockstep (single-step with several vCPUs, GuestToken.swift): only the vCPU holding it
        /// may be in KVM_RUN; it holds it from one exit (observed) until its next KVM_RUN returned.
        var token: GuestToken? = nil

        /// Holds every vCPU but `me` out of KVM_RUN: raise the flag, kick those inside, wait
        /// until none is. False if they did not come out within 10 s (a VMM failure).
        func pauseOthers(except me: Runner) -> Bool {
            pauseRequested.store(true, ordering: .sequentiallyConsistent)
            let deadline = monotonicSeconds() + 10
            var round = 0
            while true {
                let inside = runners.filter { $0 !== me && $0.inRun.load(ordering: .sequentiallyConsistent) }
                if inside.isEmpty { return true }
                if round % 50 == 0 {
                    for r in inside {
                        r.vcpu.immediateExit = true
                        if r.thread != pthread_t() { _ = ckvm_pthread_kill(r.thread, ckvm_kick_signal()) }
                    }
                }
                if monotonicSeconds() > deadline { return false }
                round += 1
                usleep(20)
            }
        }

        func resumeOthers() { pauseRequested.store(false, ordering: .sequentiallyConsistent) }

        /// Marks `r` as inside KVM_RUN once no completion is running (the caller clears it).
        func enterGuest(_ r: Runner) {
            while true {
                waitWhilePaused()
                r.inRun.store(true, ordering: .sequentiallyConsistent)
                if !pauseRequested.load(ordering: .sequentiallyConsistent) || stopRequested.load(ordering: .relaxed) { return }
                r.inRun.store(false, ordering: .sequentiallyConsistent)
            }
        }

        /// A vCPU thread waits here, out of the guest, while another completes an instruction.
        func waitWhilePaused() {
            while pauseRequested.load(ordering: .sequentiallyConsistent) && !stopRequested.load(ordering: .relaxed) {
                usleep(20)
            }
        }

        /// The first reason wins; every vCPU is kicked out of KVM_RUN.
        func stop(_ r: StopReason) {
            reason.withLock { if $0 == nil { $0 = r } }
            stopRequested.store(true, ordering: .sequentiallyConsistent)
            kick()
        }

        func kick() {
            for r in runners {
                r.vcpu.immediateExit = true
                if r.thread != pthread_t() { _ = ckvm_pthread_kill(r.thread, ckvm_kick_signal()) }
            }
        }
    }

    /// Runs the machine until the guest ends it, a limit is hit, or Ctrl-C. Call once.
    public func run(limits: RunLimits = RunLimits(), observer: ExitObserver? = nil,
                    options: ObserverOptions = ObserverOptions()) -> RunSummary {
        let control = Control()
        control.runners = vcpus.map { Runner(vcpu: $0) }
        if observer != nil && options.singleStep && control.runners.count > 1 {
            control.token = GuestToken(runners: control.runners)
        }
        if started.exchange(true, ordering: .sequentiallyConsistent) {
            return finish(control, start: monotonicSeconds(), observer: nil,
                          forced: .vmmError("this machine has already run; build a new Machine"))
        }
        if limits.completeEmulationFailures && system.has(.exitOnEmulationFailure) {
            // Every emulation failure comes to the VMM, with KVM's copy of the bytes.
            do { try vm.enableCapability(.exitOnEmulationFailure, args: [1]) } catch {
                return finish(control, start: monotonicSeconds(), observer: nil, forced: .vmmError(error.description))
            }
        }
        _ = ckvm_install_kick_handler(ckvm_kick_signal())
        if limits.handleInterrupt { _ = ckvm_install_sigint_handler() }
        defer { if limits.handleInterrupt { _ = ckvm_restore_sigint() } }

        if let observer {
            let sync = system.has(.syncRegs)
            for v in vcpus {
                if sync { v.enableSyncRegs(regs: true, sregs: true, events: options.events) }
                if options.singleStep {
                    do { try v.setSingleStep(true) } catch {
                        return finish(control, start: monotonicSeconds(), observer: observer,
                                      forced: .vmmError(error.description))
                    }
                }
            }
            observer.runStarted(info)
        }

        let start = monotonicSeconds()
        let finished = DispatchSemaphore(value: 0)
        for r in control.runners {
            let box = Unmanaged.passRetained(ThreadBox { [self] in
                self.loop(r, control: control, limits: limits, observer: observer, options: options)
                finished.signal()
            })
            var t = pthread_t()
            let rc = ckvm_thread_start(&t, { arg in
                let box = Unmanaged<ThreadBox>.fromOpaque(arg!).takeRetainedValue()
                box.body()
                return nil
            }, box.toOpaque())
            if rc != 0 {
                box.release()
                control.stop(.vmmError("cannot start vCPU thread: \(Errno(rc))"))
                finished.signal()
            } else {
                r.thread = t
            }
        }

        var done = 0
        var lastKick = start
        while done < control.runners.count {
            if finished.wait(timeout: .now() + .milliseconds(10)) == .success { done += 1; continue }
            let now = monotonicSeconds()
            if let t = limits.timeout, now - start >= t, !control.stopRequested.load(ordering: .relaxed) {
                control.stop(.timeout(seconds: t))
            }
            if limits.handleInterrupt && ckvm_sigint_received() != 0 && !control.stopRequested.load(ordering: .relaxed) {
                control.stop(.interrupted)
            }
            // A kick can land between a vCPU's check and its KVM_RUN; kick again until all are out.
            if control.stopRequested.load(ordering: .relaxed) && now - lastKick > 0.02 {
                control.kick()
                lastKick = now
            }
        }
        for r in control.runners where r.thread != pthread_t() { pthread_join(r.thread, nil) }
        return finish(control, start: start, observer: observer, forced: nil)
    }

    func finish(_ control: Control, start: Double, observer: ExitObserver?, forced: StopReason?) -> RunSummary {
        bus.withLock { uart.output.flush() }
        let reason = forced ?? control.reason.withLock { $0 } ?? .halted
        var byReason: [String: UInt64] = [:]
        var perVCPU: [VCPUSummary] = []
        for r in control.runners {
            var mine: [String: UInt64] = [:]
            for (i, n) in r.counts.enumerated() where n > 0 {
                let name = i == 63 ? "OTHER" : VMExit.name(ofReason: UInt32(i))
                mine[name, default: 0] += n
                byReason[name, default: 0] += n
            }
            perVCPU.append(VCPUSummary(index: r.index, exits: r.exits, exitsByReason: mine, halted: r.halted))
        }
        var completions: [String: UInt64] = [:]
        for r in control.runners { completions.merge(r.completions, uniquingKeysWith: +) }
        let s = bus.withLock {
            RunSummary(stop: reason, totalExits: perVCPU.reduce(0) { $0 + $1.exits }, exitsByReason: byReason,
                       vcpus: perVCPU, unclaimedReads: bus.unclaimedReads, unclaimedWrites: bus.unclaimedWrites,
                       unclaimed: bus.unclaimed, markers: control.markers.load(ordering: .relaxed),
                       serialBytes: uart.output.totalBytes, elapsedSeconds: monotonicSeconds() - start,
                       completions: completions)
        }
        observer?.runEnded(s)
        return s
    }

    /// The exit loop of one vCPU, on its own thread.
    func loop(_ r: Runner, control: Control, limits: RunLimits, observer: ExitObserver?, options: ObserverOptions) {
        _ = ckvm_unblock_signal(ckvm_kick_signal())
        let vcpu = r.vcpu
        let index = r.index
        let data = ExitDataArea(page: UnsafeMutableRawPointer(vcpu.runPointer), pageSize: vcpu.mmapSize,
                                mmioData: vcpu.mmioData)
        let maxExits = limits.maxExits ?? 0
        let handler = self.handler  // a local copy: no retain/release of its references per exit
        let probe = VCPUProbe(vcpu)
        let fidelityFull = observer != nil && options.fidelity == .full
        let synced = vcpu.syncRegsEnabled && vcpu.syncSregsEnabled
        let smp = control.runners.count > 1
        let completing = limits.completeEmulationFailures
        // Lockstep (GuestToken): a step's bytes are read at its debug exit and the instruction
        // runs in the next KVM_RUN; no other vCPU may be in KVM_RUN in between. The token is
        // held across both and passed on at each exit, before the exit is handled and observed.
        let token = control.token
        var holding = false
        var observedRIP: UInt64? = nil  // where the vCPU stood at its last observed exit
        defer { if holding { token?.release(r) } }
        if let observer {
            var boot = bootStates[index] ?? currentState(vcpu)
            // XCR0 as KVM holds it (reset: x87 only), not the state model's default.
            if let x = try? vcpu.getXCRs().first(where: { $0.index == 0 }) { boot.xcr0 = x.value; r.xcr0 = x.value }
            observer.vcpuStarted(vcpu: index, state: boot)
        }
        var pending = false  // an exit the completing KVM_RUN (fidelity full) already returned
        // The instruction the last single-step debug exit stood on (see the stepped-HLT rule below).
        var lastStepRIP: UInt64? = nil
        // Exit counts by KVM_EXIT_* number (63 = anything larger), in plain memory.
        let counts = UnsafeMutablePointer<UInt64>.allocate(capacity: 64)
        counts.initialize(repeating: 0, count: 64)
        // The observer's states at an exit and after it (fidelity full), lent by pointer: an
        // ObservedExit that held them by value was copied (1.3 KB) at every exit.
        let states = UnsafeMutablePointer<CPUState>.allocate(capacity: 2)
        states.initialize(repeating: CPUState(), count: 2)
        // Whether states[0] holds the current exit's state: with sync regs it is built from them
        // only when the observer asks (ObservedExit.statePointer), except with fidelity full,
        // whose completing KVM_RUN replaces them before the observer runs.
        let stateLoaded = UnsafeMutablePointer<Bool>.allocate(capacity: 1)
        stateLoaded.initialize(to: false)
        let lazyState = synced && !fidelityFull
        var exits: UInt64 = 0
        defer {
            states.deinitialize(count: 2)
            states.deallocate()
            stateLoaded.deallocate()
            r.counts = Array(UnsafeBufferPointer(start: counts, count: 64))
            counts.deallocate()
            r.exits = exits
            observer?.vcpuStopped(vcpu: index, exits: exits)
        }

        while true {
            if !pending {
                if control.stopRequested.load(ordering: .relaxed) { return }
                if let token, !holding {
                    guard token.acquire(r, stop: control.stopRequested) else { return }
                    holding = true
                    if control.stopRequested.load(ordering: .relaxed) { return }
                }
                if smp {
                    // Another vCPU may be completing an instruction: stay out of the guest until
                    // it is done. Publishing inRun before re-checking the flag closes the race
                    // with `pauseOthers` (both sequentially consistent).
                    if control.pauseRequested.load(ordering: .sequentiallyConsistent) {
                        control.waitWhilePaused()
                        continue
                    }
                    if holding { r.runNumber.add(1, ordering: .sequentiallyConsistent) }
                    r.inRun.store(true, ordering: .sequentiallyConsistent)
                    if control.pauseRequested.load(ordering: .sequentiallyConsistent) {
                        r.inRun.store(false, ordering: .sequentiallyConsistent)
                        continue
                    }
                }
                let err = vcpu.runRaw()
                if smp { r.inRun.store(false, ordering: .sequentiallyConsistent) }
                if err != 0 {
                    if err == EINTR || err == EAGAIN {
                        // A kick (stop, a vCPU waiting for the token, or a stale immediate_exit),
                        // or an AP leaving wait-for-SIPI.
                        if control.stopRequested.load(ordering: .relaxed) { return }
                        vcpu.immediateExit = false
                        if holding {
                            let after = err == EAGAIN ? .movedOn : afterKick(vcpu, observedRIP: observedRIP)
                            r.expectBlock.store(after == .waiting, ordering: .relaxed)
                            // Its bytes were read for this turn: the instruction runs before the token goes.
                            if after != .instructionPending {
                                token?.release(r)
                                holding = false
                            }
                        }
                        continue
                    }
                    control.stop(.vmmError("vCPU \(index): \(KVMError.ioctl(name: "KVM_RUN", errno: Errno(err)))"))
                    return
                }
            }
            let tscExit = observer != nil ? ckvm_rdtsc() : 0
            if holding {
                // The instruction observed at the last exit has run: another vCPU's turn.
                if !pending {
                    r.expectBlock.store(false, ordering: .relaxed)
                    guard token?.yield(r, stop: control.stopRequested) ?? true else { return }
                }
                observedRIP = synced ? vcpu.syncedRegs.pointee.rip : currentState(vcpu).rip
            }
            pending = false
            let exit = vcpu.exit
            // For the observer, read before a completing KVM_RUN (fidelity full) can replace it.
            let ioExit = observer != nil ? vcpu.ioExit : nil
            let reason = Int(min(exit.reason, 63))
            counts[reason] &+= 1
            exits &+= 1

            var outcome = handler.handle(exit, vcpu: index, data: data, interruptFlag: vcpu.interruptFlag)
            // In an array (one pointer) rather than an optional: the optional's 1.1 KB (two states)
            // was copied several times on every exit, completion or not. `completed` guards it.
            var completion: [Completion] = []
            var completed = false
            if completing, case let .internalError(info) = exit, info.suberror == InternalErrorInfo.emulation,
               case let .guestEvent(kind, detail) = outcome.action {
                let c = complete(r, control: control)
                switch c {
                case let .success(done):
                    completion = [done]
                    completed = true
                    if done.resumes {
                        outcome.action = .resume
                        r.completions[done.mnemonic, default: 0] &+= 1
                    } else {
                        outcome.action = .guestEvent(kind, detail: detail + "; " + done.failureDetail)
                    }
                case let .failure(why):
                    outcome.action = .vmmError(why.message)
                }
            }
            let resumes: Bool
            if case .resume = outcome.action { resumes = true } else { resumes = false }

            // A routed RDMSR/WRMSR completed with kvm_run.msr.error: the guest gets #GP(0).
            var msrRefused = false
            // The EFER value whose LME/NX part waits until the WRMSR has completed (see below).
            var deferredEFER: UInt64 = 0
            var eferPending = false
            switch exit {
            case .rdmsr:
                msrRefused = outcome.msrError
                vcpu.completeMSR(data: outcome.msrData, error: outcome.msrError)
            case let .wrmsr(msrIndex, _, value):
                if outcome.forwardMSR {
                    // KVM restarts a WRMSR instead of completing it when EFER's LME or NX (the bits
                    // that reset its MMU context) changed while the exit was pending: the guest
                    // would execute it twice (seen: real-mode LME, two exits at one RIP). So those
                    // bits are written once the instruction has completed; the rest now, which
                    // also tells whether KVM takes the value.
                    var now = value
                    if msrIndex == MSRIndex.efer {
                        let current = synced ? vcpu.syncedSregs.pointee.efer : (try? vcpu.getSregs())?.efer ?? value
                        if (value ^ current) & Self.eferMMURoleBits != 0 {
                            now = value & ~Self.eferMMURoleBits | current & Self.eferMMURoleBits
                            deferredEFER = value
                            eferPending = true
                        }
                    }
                    // Only a write KVM takes happened: a refused one (a non-canonical LSTAR)
                    // gives the guest #GP and leaves the MSR as it was.
                    let accepted = (try? vcpu.setMSRs([(msrIndex, now)])) ?? 0
                    if accepted == 1 { observer?.msrWritten(vcpu: index, index: msrIndex, value: value) }
                    msrRefused = accepted != 1
                    if msrRefused { eferPending = false }
                    vcpu.completeMSR(data: value, error: msrRefused)
                } else {
                    if !outcome.msrError { observer?.msrWritten(vcpu: index, index: msrIndex, value: value) }
                    msrRefused = outcome.msrError
                    vcpu.completeMSR(data: value, error: outcome.msrError)
                }
            case .hypercall:
                vcpu.completeHypercall(ret: UInt64(bitPattern: -1000))  // -KVM_ENOSYS
            default:
                break
            }
            if let page = outcome.refaultPage {
                // Completions write guest RAM from the VMM: none may run while the page is read-only.
                control.completionLock.withLock { _ in _ = memory.refaultPage(page) }
            }
            if let m = outcome.marker {
                control.markers.add(1, ordering: .relaxed)
                observer?.marker(vcpu: index, phase: m)
            }

            // `observer != nil` and `observer?.`: binding it with `if let` retained it at every exit.
            observe: if observer != nil {
                // A plain port I/O exit goes to the observer's short form first (no ObservedExit built).
                if lazyState, let e = ioExit, e.count == 1, outcome.marker == nil, resumes,
                   let p = data.bytes(at: e.dataOffset, length: Int(e.size)),
                   observer?.portIOExitHandled(vcpu: index, registers: vcpu.syncedRegisters, io: e,
                                               data: UnsafeRawBufferPointer(start: p, count: Int(e.size)),
                                               tscAtExit: tscExit, tscAtReentry: ckvm_rdtsc()) == true {
                    break observe
                }
                if lazyState {
                    stateLoaded.pointee = false
                } else {
                    if synced { vcpu.loadSyncedState(into: &states[0]) } else { states[0] = currentState(vcpu) }
                    stateLoaded.pointee = true
                }
                let events: VCPUEvents? = !options.events ? nil
                    : vcpu.syncEventsEnabled ? VCPUEvents(kvm: vcpu.syncedEvents.pointee)
                    : (try? vcpu.getVCPUEvents()).map { VCPUEvents(kvm: $0) }
                var haveAfter = false
                if fidelityFull && resumes {
                    let err = runToCompletion(r, control: control, smp: smp)
                    if eferPending && (err == EINTR || err == 0) {
                        eferPending = false
                        applyDeferredEFER(r, value: deferredEFER, control: control)
                    }
                    if err == EINTR {
                        if synced { vcpu.loadSyncedState(into: &states[1]) } else { states[1] = currentState(vcpu) }
                        haveAfter = true
                    } else if err == 0 {
                        pending = true
                    } else {
                        control.stop(.vmmError("vCPU \(index): \(KVMError.ioctl(name: "KVM_RUN", errno: Errno(err)))"))
                    }
                }
                var io: UnsafeRawBufferPointer? = nil
                if let e = ioExit, let p = data.bytes(at: e.dataOffset, length: Int(e.size) * Int(e.count)) {
                    io = UnsafeRawBufferPointer(start: p, count: Int(e.size) * Int(e.count))
                }
                let observed = ObservedExit(vcpu: index, sequence: exits - 1, exit: exit, io: ioExit, stateStorage: states,
                                            stateLoaded: stateLoaded, stateAfterPointer: haveAfter ? UnsafePointer(states + 1) : nil,
                                            registers: lazyState ? vcpu.syncedRegisters : nil,
                                            tscAtExit: tscExit, tscAtReentry: ckvm_rdtsc(), access: outcome.access,
                                            ioData: io, events: events, guestMemory: .passUnretained(memory),
                                            probeReference: .passUnretained(probe), msrRefused: msrRefused)
                observer?.exitHandled(observed)
                if completed, let done = completion.first, done.resumes { observer?.instructionCompleted(done) }
            }

            if eferPending {
                // The WRMSR with a deferred EFER part completes here (fidelity full did it above).
                let err = runToCompletion(r, control: control, smp: smp)
                if err == EINTR || err == 0 {
                    pending = err == 0
                    applyDeferredEFER(r, value: deferredEFER, control: control)
                } else {
                    control.stop(.vmmError("vCPU \(index): \(KVMError.ioctl(name: "KVM_RUN", errno: Errno(err)))"))
                }
            }

            // Under single-step on kvm_pvm a HLT gives a debug exit and the guest goes on: a
            // stepped HLT with interrupts off and no irqchip halts the vCPU as the HLT exit would.
            if options.singleStep, case .debug = exit {
                let s = synced ? vcpu.syncedState() : currentState(vcpu)
                if config.irqchip == .none, s.rflags & RFLAGS.if == 0, let prev = lastStepRIP, prev &+ 1 == s.rip,
                   let b = memory.readLinear(s.mode == .long64 ? prev : (s.cs.base &+ prev) & 0xFFFF_FFFF, count: 1, state: s),
                   b[0] == 0xF4 {
                    r.halted = true
                    return
                }
                lastStepRIP = s.rip
            }

            if maxExits > 0 {
                let total = control.totalExits.add(1, ordering: .relaxed).newValue
                if total >= maxExits && resumes { control.stop(.maxExits(maxExits)); return }
            }

            switch outcome.action {
            case .resume:
                continue
            case .haltVCPU:
                r.halted = true
                return
            case let .exitStatus(source, value, _):
                control.stop(source == MachineLayout.debugExitPort ? .debugExit(value: value) : .exitPort(value: value))
                return
            case let .guestEvent(kind, detail):
                let state = synced ? vcpu.syncedState() : currentState(vcpu)
                var bytes = memory.instructionBytes(state: state)
                if case let .internalError(info) = exit, let b = info.instructionBytes, !b.isEmpty { bytes = b }
                control.stop(.guestEvent(GuestEventReport(vcpu: index, kind: kind, detail: detail, state: state,
                                                          instructionBytes: bytes)))
                return
            case let .systemEvent(info):
                control.stop(.systemEvent(type: info.typeName))
                return
            case let .vmmError(s):
                control.stop(.vmmError("vCPU \(index): \(s)"))
                return
            }
        }
    }

    /// EFER bits whose change resets KVM's MMU context (KVM_MMU_EFER_ROLE_BITS).
    static let eferMMURoleBits = EFER.lme | EFER.nxe

    /// Completes the pending instruction with a KVM_RUN that leaves before entering the guest
    /// (immediate_exit): EINTR when it completed, 0 when completing it gave an exit of its own
    /// (a debug exit under single-step, the write of a read-modify-write). It may write guest
    /// memory, so it too stays out of another vCPU's completion.
    func runToCompletion(_ r: Runner, control: Control, smp: Bool) -> Int32 {
        if smp { control.enterGuest(r) }
        r.vcpu.immediateExit = true
        let err = r.vcpu.runRaw()
        if smp { r.inRun.store(false, ordering: .sequentiallyConsistent) }
        r.vcpu.immediateExit = control.stopRequested.load(ordering: .relaxed)
        return err
    }

    /// Writes a routed EFER value once its WRMSR completed. KVM took the value with LME/NX as
    /// they were, so a refusal now means KVM refuses those bits: the run stops and says so.
    /// The synced sregs (read as the state after, or as the state at an exit the completion
    /// gave) are KVM's from before the write: they are read again.
    func applyDeferredEFER(_ r: Runner, value: UInt64, control: Control) {
        if ((try? r.vcpu.setMSRs([(MSRIndex.efer, value)])) ?? 0) != 1 {
            control.stop(.vmmError("vCPU \(r.index): KVM refused EFER \(hex(value)) (LME/NX) after the guest's WRMSR completed"))
        } else if r.vcpu.syncSregsEnabled, let sregs = try? r.vcpu.getSregs() {
            r.vcpu.syncedSregs.pointee = sregs
        }
    }

    /// Where a vCPU stands after a kick ended its KVM_RUN with EINTR (under lockstep).
    enum AfterKick {
        /// The instruction observed at the last exit has still to run: it keeps the token.
        case instructionPending
        /// Halted, or an AP waiting for SIPI: what runs next follows an interrupt (or SIPI) and
        /// is observed anew.
        case waiting
        /// It ran on: CPL3 code (not stepped), or an interrupt was delivered.
        case movedOn
    }

    func afterKick(_ vcpu: VCPU, observedRIP: UInt64?) -> AfterKick {
        guard let mp = try? vcpu.getMPState() else { return .movedOn }
        if mp != 0 /* KVM_MP_STATE_RUNNABLE */ { return .waiting }
        guard let observedRIP else { return .movedOn }
        let s = currentState(vcpu)
        return s.cpl == 0 && s.rip == observedRIP ? .instructionPending : .movedOn
    }

    struct CompletionFailure: Error { var message: String }

    /// Completes the instruction KVM's emulator failed on (Completion.swift): reads the full
    /// state by ioctl (rare, so the cost does not matter), holds the other vCPUs out of the
    /// guest, runs the instruction with the executor against live RAM and devices, and writes
    /// registers, segments/control registers and MSRs back as they changed.
    func complete(_ r: Runner, control: Control) -> Result<Completion, CompletionFailure> {
        let vcpu = r.vcpu
        return control.completionLock.withLock { _ -> Result<Completion, CompletionFailure> in
            let smp = control.runners.count > 1
            if smp && !control.pauseOthers(except: r) {
                control.resumeOthers()
                return .failure(CompletionFailure(message: "vCPU \(r.index): other vCPUs did not leave the guest for a completion"))
            }
            defer { if smp { control.resumeOthers() } }
            do {
                let regs = try vcpu.getRegs()
                let sregs = try vcpu.getSregs()
                var state = CPUState(regs: regs, sregs: sregs)
                let saveArea = MSRIndex.saveArea.filter { $0 != MSRIndex.efer }
                if let m = try? vcpu.getMSRs(saveArea) { Completer.apply(msrs: m, to: &state) }
                // XCR0 as read at the vCPU's start (no ioctl per completion: these guests never
                // run XSETBV, and the recorder re-reads it once per frame for exits).
                if let x = r.xcr0 { state.xcr0 = x }
                // SSE instructions compute from the guest's XMM registers and MXCSR.
                var fpu = try vcpu.getFPU()
                let xmm = withUnsafeBytes(of: fpu.xmm) { raw in (0..<32).map { raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self) } }
                let c = Completer.complete(vcpu: r.index, state: state, ram: memory, bus: bus, xmm: xmm, mxcsr: fpu.mxcsr)
                guard c.resumes else { return .success(c) }
                if let after = c.xmmAfter, after != xmm || c.mxcsrAfter != fpu.mxcsr {
                    withUnsafeMutableBytes(of: &fpu.xmm) { raw in
                        for (i, v) in after.enumerated() { raw.storeBytes(of: v, toByteOffset: 8 * i, as: UInt64.self) }
                    }
                    if let m = c.mxcsrAfter { fpu.mxcsr = m }
                    try vcpu.setFPU(fpu)
                }
                let wb = Completer.writeBack(before: c.before, after: c.after)
                if wb.sregs { try vcpu.setSregs(c.after.kvmSregs(base: sregs)) }
                if !wb.msrs.isEmpty {
                    let n = try vcpu.setMSRs(wb.msrs)
                    if n != wb.msrs.count {
                        return .failure(CompletionFailure(message: "vCPU \(r.index): KVM refused MSR \(hex(UInt64(wb.msrs[n].index))) after completing \(c.mnemonic)"))
                    }
                }
                try vcpu.setRegs(c.after.kvmRegs)
                return .success(c)
            } catch {
                return .failure(CompletionFailure(message: "vCPU \(r.index): completion: \(error)"))
            }
        }
    }

    /// The vCPU's state by ioctl (when sync regs are off, or outside the exit path).
    func currentState(_ vcpu: VCPU) -> CPUState {
        guard let regs = try? vcpu.getRegs(), let sregs = try? vcpu.getSregs() else { return CPUState() }
        return CPUState(regs: regs, sregs: sregs)
    }
}

final class ThreadBox {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
