import KVM
import Synchronization
import X86
import XCTest
@testable import VMM

/// Tiny guests on /dev/kvm. CPL0 code runs in KVM's instruction emulator on kvm_pvm hosts,
/// so the guests are a few instructions long.
final class MachineTests: XCTestCase {
    func requireKVM() throws {
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
    }

    func run(_ code: [UInt8], mode: BootMode, at address: UInt64, vcpus: Int = 1, irqchip: IRQChipMode = .none,
             limits: RunLimits = RunLimits(timeout: 20), observer: ExitObserver? = nil,
             options: ObserverOptions = ObserverOptions(), input: [UInt8] = []) throws -> (RunSummary, String) {
        try requireKVM()
        let out = SerialOutput(fd: -1, captureLimit: 1 << 16)
        let config = MachineConfig(mode: mode, vcpus: vcpus, irqchip: irqchip, memoryMiB: 4)
        let m = try Machine(config: config, image: .flat(code, at: address), serial: out, serialInput: input)
        let s = m.run(limits: limits, observer: observer, options: options)
        return (s, out.capturedText)
    }

    // mov dx,0x3f8; mov al,'H'; out dx,al; mov al,'i'; out dx,al; cli; hlt
    static let realHello: [UInt8] = [0xBA, 0xF8, 0x03, 0xB0, 0x48, 0xEE, 0xB0, 0x69, 0xEE, 0xFA, 0xF4]

    func testRealModeSerialOutputAndHalt() throws {
        let (s, text) = try run(Self.realHello, mode: .real, at: 0x1000)
        XCTAssertEqual(text, "Hi")
        XCTAssertEqual(s.stop, .halted)
        XCTAssertEqual(s.exitStatus, 0)
        XCTAssertEqual(s.exitsByReason, ["IO": 2, "HLT": 1])
        XCTAssertEqual(s.serialBytes, 2)
    }

    func testAMachineRunsOnce() throws {
        try requireKVM()
        let m = try Machine(config: MachineConfig(memoryMiB: 1), image: .flat(Self.realHello, at: 0x1000),
                            serial: SerialOutput(fd: -1))
        XCTAssertEqual(m.run().stop, .halted)
        XCTAssertEqual(m.run().stop.name, "vmm-error")
    }

    func testLongModeExitPortStatus() throws {
        // mov dx,0x501; mov al,7; out dx,al
        let (s, _) = try run([0x66, 0xBA, 0x01, 0x05, 0xB0, 0x07, 0xEE], mode: .long64, at: 0x100000)
        XCTAssertEqual(s.stop, .exitPort(value: 7))
        XCTAssertEqual(s.exitStatus, 7)
    }

    func testProtectedModeDebugExitAndScratchMMIO() throws {
        // mov dword [0xD0000010], 0x5a; mov eax,[0xD0000010]; out 0xf4,al  -> status (0x5a<<1)|1 = 0xb5
        let code: [UInt8] = [0xC7, 0x05, 0x10, 0x00, 0x00, 0xD0, 0x5A, 0x00, 0x00, 0x00,
                             0xA1, 0x10, 0x00, 0x00, 0xD0, 0xE6, 0xF4]
        let (s, _) = try run(code, mode: .protected32, at: 0x100000)
        XCTAssertEqual(s.stop, .debugExit(value: 0x5A))
        XCTAssertEqual(s.exitStatus, 0xB5)
        XCTAssertEqual(s.exitsByReason["MMIO"], 2)
    }

    func testRoutedMSRWriteIsAppliedAndObserved() throws {
        // mov ecx,0xC0000081 (STAR); mov eax,0x1234; xor edx,edx; wrmsr; xor eax,eax; rdmsr; mov dx,0x501; out dx,al
        let code: [UInt8] = [0xB9, 0x81, 0x00, 0x00, 0xC0, 0xB8, 0x34, 0x12, 0x00, 0x00, 0x31, 0xD2, 0x0F, 0x30,
                             0x31, 0xC0, 0x0F, 0x32, 0x66, 0xBA, 0x01, 0x05, 0xEE]
        let obs = Recorder()
        let (s, _) = try run(code, mode: .long64, at: 0x100000, observer: obs)
        XCTAssertEqual(s.exitStatus, 0x34, "RDMSR must read back the routed WRMSR's value")
        XCTAssertEqual(obs.msrWrites.withLock { $0 }.first?.index, MSRIndex.star)
        XCTAssertEqual(obs.msrWrites.withLock { $0 }.first?.value, 0x1234)
    }

    func testARoutedMSRWriteKVMRefusesIsNotObservedAsWritten() throws {
        // mov ecx,0xC0000082 (LSTAR); xor eax,eax; mov edx,0x80000000; wrmsr: a non-canonical
        // address, refused by KVM_SET_MSRS; the guest gets #GP (no IDT here: a triple fault).
        let code: [UInt8] = [0xB9, 0x82, 0x00, 0x00, 0xC0, 0x31, 0xC0, 0xBA, 0x00, 0x00, 0x00, 0x80, 0x0F, 0x30, 0xF4]
        let obs = Recorder()
        let (s, _) = try run(code, mode: .long64, at: 0x100000, observer: obs)
        guard case let .guestEvent(r) = s.stop else { return XCTFail("stopped by \(s.stop)") }
        XCTAssertEqual(r.kind, .shutdown, "the refused WRMSR must fault")
        XCTAssertTrue(obs.msrWrites.withLock { $0 }.isEmpty, "a refused write must not be reported as written")
        let wrmsr = obs.seen.withLock { $0 }.first { if case .wrmsr = $0.exit { return true } else { return false } }
        XCTAssertEqual(wrmsr?.msrRefused, true, "the observer must learn the write was refused")
    }

    func testTripleFaultReportNamesRIPAndBytes() throws {
        // Long mode with an empty IDT: UD2 cannot be delivered -> #DF -> triple fault.
        let (s, _) = try run([0x90, 0x0F, 0x0B], mode: .long64, at: 0x100000)
        guard case let .guestEvent(r) = s.stop else { return XCTFail("stopped by \(s.stop)") }
        XCTAssertEqual(r.kind, .shutdown)
        XCTAssertEqual(r.vcpu, 0)
        XCTAssertEqual(r.state.rip, 0x100001)
        XCTAssertEqual(Array(r.instructionBytes.prefix(2)), [0x0F, 0x0B])
        XCTAssertEqual(s.exitStatus, RunExitStatus.shutdown)
    }

    func testTimeoutStopsAnEndlessLoop() throws {
        let (s, _) = try run([0xEB, 0xFE], mode: .real, at: 0x1000, limits: RunLimits(timeout: 0.3))
        XCTAssertEqual(s.stop, .timeout(seconds: 0.3))
        XCTAssertEqual(s.exitStatus, RunExitStatus.timeout)
    }

    /// With the in-kernel irqchip `cli; hlt` blocks inside KVM; the timeout's kick still gets
    /// every vCPU out (here one blocked in HLT and one an AP still waiting for SIPI).
    func testTimeoutKicksVCPUsBlockedInTheKernel() throws {
        let (s, _) = try run([0xFA, 0xF4], mode: .real, at: 0x1000, vcpus: 2, irqchip: .kernel,
                             limits: RunLimits(timeout: 0.3))
        XCTAssertEqual(s.stop, .timeout(seconds: 0.3))
        XCTAssertEqual(s.totalExits, 0, "HLT must stay in the kernel with its irqchip")
    }

    func testMaxExitsStopsAnIOLoop() throws {
        // mov dx,0x3ff; l: out dx,al; jmp l
        let (s, _) = try run([0xBA, 0xFF, 0x03, 0xEE, 0xEB, 0xFD], mode: .real, at: 0x1000,
                             limits: RunLimits(maxExits: 50, timeout: 20))
        XCTAssertEqual(s.stop, .maxExits(50))
        XCTAssertEqual(s.totalExits, 50)
        XCTAssertEqual(s.exitStatus, RunExitStatus.maxExits)
    }

    func testTwoVCPUsWithoutIrqchipBothHalt() throws {
        let (s, text) = try run(Self.realHello, mode: .real, at: 0x1000, vcpus: 2)
        XCTAssertEqual(text.count, 4)
        XCTAssertEqual(s.stop, .halted)
        XCTAssertEqual(s.vcpus.map(\.exits), [3, 3])
        XCTAssertEqual(s.vcpus.map(\.halted), [true, true])
    }

    func testKernelIrqchipRun() throws {
        // mov dx,0x501; mov al,3; out dx,al
        let (s, _) = try run([0xBA, 0x01, 0x05, 0xB0, 0x03, 0xEE], mode: .real, at: 0x1000, vcpus: 2, irqchip: .kernel,
                             limits: RunLimits(timeout: 5))
        XCTAssertEqual(s.stop, .exitPort(value: 3))
    }

    /// The BSP (long mode) wakes vCPU 1 by INIT/SIPI through its LAPIC's ICR; the AP starts in
    /// real mode at 0x8000 and ends the run through the exit port. (Here the sending LAPIC must
    /// be software-enabled in its SVR, or KVM drops the IPIs.)
    func testKernelIrqchipAPStartsByINITSIPI() throws {
        try requireKVM()
        let bsp: [UInt8] = [0xBB, 0x00, 0x03, 0xE0, 0xFE,                    // mov ebx,0xFEE00300
                            0xC7, 0x83, 0xF0, 0xFD, 0xFF, 0xFF, 0xFF, 0x01, 0x00, 0x00,  // SVR = 0x1FF (enable)
                            0xC7, 0x43, 0x10, 0x00, 0x00, 0x00, 0x01,        // ICR high: APIC ID 1
                            0xC7, 0x03, 0x00, 0x45, 0x00, 0x00,              // INIT
                            // out 0x502 (marker) before the SIPI: once the AP runs, its exit-port
                            // write may end the run before a later marker would be seen.
                            0x66, 0xBA, 0x02, 0x05, 0xEE,
                            0xC7, 0x43, 0x10, 0x00, 0x00, 0x00, 0x01,
                            0xC7, 0x03, 0x08, 0x46, 0x00, 0x00,              // SIPI, vector 8 -> 0x8000
                            0xF4, 0xEB, 0xFD]                                // l: hlt; jmp l
        let ap: [UInt8] = [0xBA, 0x01, 0x05, 0xB0, 0x42, 0xEE]                // mov dx,0x501; mov al,0x42; out dx,al
        let image = GuestImage(kind: .flat, segments: [
            .init(address: 0x100000, bytes: bsp, memorySize: UInt64(bsp.count)),
            .init(address: 0x8000, bytes: ap, memorySize: UInt64(ap.count)),
        ], entry: 0x100000)
        let out = SerialOutput(fd: -1, captureLimit: 100)
        let m = try Machine(config: MachineConfig(mode: .long64, vcpus: 2, irqchip: .kernel, memoryMiB: 4), image: image, serial: out)
        let s = m.run(limits: RunLimits(timeout: 2))
        XCTAssertEqual(s.stop, .exitPort(value: 0x42), s.text)
        XCTAssertEqual(s.vcpus[1].exitsByReason["IO"], 1)
        XCTAssertEqual(s.markers, 1)
    }

    /// On kvm_pvm, CPL0 code runs in KVM's emulator, which lacks LOCK CMPXCHG16B: an
    /// INTERNAL_ERROR (emulation failure) that, with completion off (`--no-complete`), must end
    /// the run with a report, not a crash.
    func testEmulationFailureIsAGuestEventReport() throws {
        try requireKVM()
        guard KVMSystem.backendModule() == "kvm_pvm" else {
            throw XCTSkip("needs kvm_pvm (CPL0 emulated); this host runs \(KVMSystem.backendModule())")
        }
        // mov esi,0x2000; lock cmpxchg16b [rsi]
        let (s, _) = try run([0xBE, 0x00, 0x20, 0x00, 0x00, 0xF0, 0x48, 0x0F, 0xC7, 0x0E], mode: .long64, at: 0x100000,
                             limits: RunLimits(timeout: 20, completeEmulationFailures: false))
        guard case let .guestEvent(r) = s.stop else { return XCTFail("stopped by \(s.stop)") }
        XCTAssertEqual(r.kind, .internalError)
        XCTAssertEqual(r.state.rip, 0x100005)
        XCTAssertEqual(Array(r.instructionBytes.prefix(5)), [0xF0, 0x48, 0x0F, 0xC7, 0x0E])
        XCTAssertEqual(s.exitStatus, RunExitStatus.guestFailure)
    }

    /// REP INSB from an unclaimed port with a count far beyond guest memory, the buffer
    /// running off the end of RAM: the VMM survives and reports.
    func testHostileRepInsRunningOffMemory() throws {
        // mov edi,0x3FFF00; mov ecx,0x7FFFFFFF; mov dx,0x5F0; rep insb; mov dx,0x501; mov al,1; out dx,al
        let code: [UInt8] = [0xBF, 0x00, 0xFF, 0x3F, 0x00, 0xB9, 0xFF, 0xFF, 0xFF, 0x7F, 0x66, 0xBA, 0xF0, 0x05,
                             0xF3, 0x6C, 0x66, 0xBA, 0x01, 0x05, 0xB0, 0x01, 0xEE]
        let (s, _) = try run(code, mode: .protected32, at: 0x100000, limits: RunLimits(maxExits: 2000, timeout: 20))
        XCTAssertGreaterThan(s.unclaimedReads, 0)
        XCTAssertNotEqual(s.stop.name, "vmm-error", s.text)
    }

    /// The machine an ELF's .exitscope section asks for is the one that runs it.
    func testELFMachineSectionChoosesTheMode() throws {
        try requireKVM()
        // xor eax,eax; add rax,5 (in 32-bit code: dec eax; add eax,5 -> 4); mov dx,0x501; out dx,al
        let code: [UInt8] = [0x31, 0xC0, 0x48, 0x83, 0xC0, 0x05, 0x66, 0xBA, 0x01, 0x05, 0xEE]
        let img = try GuestImage.elf(MemoryAndLoaderTests.elf64(code: code, paddr: 0x100000, entry: 0x100000,
                                                                 config: "mode=long64 memory=8"))
        var config = MachineConfig()
        try config.apply(img.machineText ?? "")
        XCTAssertEqual(config.mode, .long64)
        let m = try Machine(config: config, image: img, serial: SerialOutput(fd: -1))
        XCTAssertEqual(m.run(limits: RunLimits(timeout: 20)).stop, .exitPort(value: 5))
    }

    /// cpuid=noavx hides AVX (leaf 1 ECX bit 28) and AVX2 (leaf 7 EBX bit 5); APIC IDs differ per vCPU.
    /// On kvm_pvm the guest's CPUID does not come from KVM_SET_CPUID2's table (it sees the host's
    /// bits, OSXSAVE following its CR4), so only the table is checked there.
    func testCPUIDProfiles() throws {
        try requireKVM()
        let sys = try KVMSystem()
        let supported = try sys.supportedCPUID()
        let narrowed = CPUIDProfile.noavx.apply(supported, apicID: 3)
        XCTAssertEqual(narrowed.first { $0.function == 1 }.map { $0.ebx >> 24 }, 3)
        XCTAssertEqual(narrowed.first { $0.function == 1 }.map { $0.ecx & (1 << 28) }, 0)
        XCTAssertEqual(narrowed.first { $0.function == 7 && $0.index == 0 }.map { $0.ebx & (1 << 5) } ?? 0, 0)
        // The guest sees it: mov eax,1; cpuid; shr ecx,28; and cl,1; mov al,cl; mov dx,0x501; out dx,al
        let code: [UInt8] = [0x66, 0xB8, 0x01, 0x00, 0x00, 0x00, 0x0F, 0xA2, 0x66, 0xC1, 0xE9, 0x1C, 0x80, 0xE1, 0x01,
                             0x88, 0xC8, 0xBA, 0x01, 0x05, 0xEE]
        guard KVMSystem.backendModule() != "kvm_pvm" else { return }
        let hostAVX = (supported.first { $0.function == 1 }?.ecx ?? 0) >> 28 & 1
        for (profile, expected) in [(CPUIDProfile.host, UInt64(hostAVX)), (.noavx, 0)] {
            var config = MachineConfig(mode: .real, memoryMiB: 1)
            config.cpuid = profile
            let m = try Machine(config: config, image: .flat(code, at: 0x1000), serial: SerialOutput(fd: -1), system: sys)
            XCTAssertEqual(m.run(limits: RunLimits(timeout: 20)).stop, .exitPort(value: expected), "\(profile)")
        }
    }

    /// KVM_FEATURE_PV_TLB_FLUSH (leaf 0x40000001 EAX bit 9) is hidden in every profile, and the
    /// guest sees it hidden (KVM answers its own leaves from the table, also on kvm_pvm): with it a
    /// Linux guest left TLB flushes of preempted vCPUs to KVM and read stale memory here.
    func testParavirtTLBFlushIsHiddenFromTheGuest() throws {
        try requireKVM()
        let sys = try KVMSystem()
        let supported = try sys.supportedCPUID()
        // mov eax,0x40000001; cpuid; shr eax,9; and al,1; mov dx,0x501; out dx,al
        let code: [UInt8] = [0x66, 0xB8, 0x01, 0x00, 0x00, 0x40, 0x0F, 0xA2, 0x66, 0xC1, 0xE8, 0x09, 0x24, 0x01,
                             0xBA, 0x01, 0x05, 0xEE]
        for profile in CPUIDProfile.allCases {
            let table = profile.apply(supported, apicID: 0)
            let leaf = try XCTUnwrap(table.first { $0.function == KVMParavirt.featuresLeaf }, "KVM offers its paravirtual leaf")
            XCTAssertEqual(leaf.eax & (1 << 9), 0, "\(profile)")
            // Nothing else in the leaf changes (steal time, PV EOI, ... stay as KVM offers them).
            let offered = try XCTUnwrap(supported.first { $0.function == KVMParavirt.featuresLeaf })
            XCTAssertEqual(leaf.eax | (offered.eax & (1 << 9)), offered.eax, "\(profile)")
            var config = MachineConfig(mode: .real, memoryMiB: 1)
            config.cpuid = profile
            let m = try Machine(config: config, image: .flat(code, at: 0x1000), serial: SerialOutput(fd: -1), system: sys)
            XCTAssertEqual(m.run(limits: RunLimits(timeout: 20)).stop, .exitPort(value: 0), "\(profile): the guest sees PV_TLB_FLUSH")
        }
    }

    final class Recorder: ExitObserver, @unchecked Sendable {
        struct Seen { var exit: VMExit; var rip: UInt64; var after: UInt64?; var afterRAX: UInt64?; var access: BusAccess?
                      var io: [UInt8]; var tscOrdered: Bool; var events: VCPUEvents?; var bytesAtRIP: [UInt8]
                      var msrRefused = false }
        let seen = Mutex<[Seen]>([])
        let msrWrites = Mutex<[(index: UInt32, value: UInt64)]>([])
        let markers = Mutex<[UInt64]>([])
        let events = Mutex<[String]>([])
        func runStarted(_ info: MachineInfo) { events.withLock { $0.append("run") } }
        func vcpuStarted(vcpu: Int, state: CPUState) { events.withLock { $0.append("start \(vcpu)") } }
        func vcpuStopped(vcpu: Int, exits: UInt64) { events.withLock { $0.append("stop \(vcpu) \(exits)") } }
        func runEnded(_ summary: RunSummary) { events.withLock { $0.append("end") } }
        func msrWritten(vcpu: Int, index: UInt32, value: UInt64) { msrWrites.withLock { $0.append((index, value)) } }
        func marker(vcpu: Int, phase: UInt64) { markers.withLock { $0.append(phase) } }
        func exitHandled(_ e: borrowing ObservedExit) {
            let s = Seen(exit: e.exit, rip: e.state.rip, after: e.stateAfter?.rip, afterRAX: e.stateAfter?.rax,
                         access: e.access, io: e.ioData.map { Array($0) } ?? [],
                         tscOrdered: e.tscAtExit <= e.tscAtReentry, events: e.events, bytesAtRIP: e.memory.instructionBytes(state: e.state, maxBytes: 1),
                         msrRefused: e.msrRefused)
            seen.withLock { $0.append(s) }
        }
    }

    func testObserverSeesEachExitWithStateDeviceSideAndMarkers() throws {
        // mov dx,0x502; mov al,9; out dx,al; mov dx,0x3fd; in al,dx; mov dx,0x501; out dx,al
        let code: [UInt8] = [0xBA, 0x02, 0x05, 0xB0, 0x09, 0xEE, 0xBA, 0xFD, 0x03, 0xEC, 0xBA, 0x01, 0x05, 0xEE]
        let obs = Recorder()
        let (s, _) = try run(code, mode: .real, at: 0x1000, observer: obs, options: ObserverOptions(fidelity: .full, events: true))
        XCTAssertEqual(s.exitStatus, 0x60, "IN from LSR must give THRE|TEMT")
        let seen = obs.seen.withLock { $0 }
        XCTAssertEqual(seen.count, 3)
        XCTAssertEqual(obs.markers.withLock { $0 }, [9])
        XCTAssertEqual(obs.events.withLock { $0 }, ["run", "start 0", "stop 0 3", "end"])
        // OUT: shown committed (RIP past it); IN: shown pending (RIP on it), completed by the
        // immediate-exit re-entry (fidelity full) with AL = 0x60 and RIP past it.
        XCTAssertEqual(seen[0].rip, 0x1006)
        XCTAssertEqual(seen[0].access?.data, 9)
        XCTAssertEqual(seen[0].io, [9])
        XCTAssertEqual(seen[1].rip, 0x1009)
        XCTAssertEqual(seen[1].bytesAtRIP, [0xEC])
        XCTAssertEqual(seen[1].access, BusAccess(kind: .port, address: 0x3FD, size: 1, isWrite: false, data: 0x60))
        XCTAssertEqual(seen[1].after, 0x100A)
        XCTAssertEqual((seen[1].afterRAX ?? 0) & 0xFF, 0x60)
        XCTAssertTrue(seen.allSatisfy(\.tscOrdered))
        XCTAssertTrue(seen.allSatisfy { $0.events != nil && $0.events?.exceptionInjected == false }, "events were asked for")
    }

    /// Takes the short form of port exits to 0x3F8 and declines the others.
    final class ShortForm: ExitObserver, @unchecked Sendable {
        struct Offer: Equatable { var port: UInt16; var isIn: Bool; var data: [UInt8]; var rip: UInt64; var tscOrdered: Bool }
        let offers = Mutex<[Offer]>([])
        let handled = Mutex<[UInt16]>([])
        func portIOExitHandled(vcpu: Int, registers: SyncedRegistersView, io: IOExitInfo, data: UnsafeRawBufferPointer,
                               tscAtExit: UInt64, tscAtReentry: UInt64) -> Bool {
            offers.withLock { $0.append(Offer(port: io.port, isIn: io.direction == .in, data: Array(data), rip: registers.rip,
                                              tscOrdered: tscAtExit <= tscAtReentry)) }
            return io.port == 0x3F8
        }
        func exitHandled(_ e: borrowing ObservedExit) {
            if let io = e.io { handled.withLock { $0.append(io.port) } }
        }
    }

    func testPortExitsAreOfferedInShortFormAndATakenOneIsNotObservedAgain() throws {
        // mov dx,0x502; mov al,9; out dx,al (marker); mov dx,0x3fd; in al,dx; mov dx,0x3f8;
        // mov al,'H'; out dx,al; mov al,'i'; out dx,al; mov dx,0x501; out dx,al (exit status 'i')
        let code: [UInt8] = [0xBA, 0x02, 0x05, 0xB0, 0x09, 0xEE, 0xBA, 0xFD, 0x03, 0xEC, 0xBA, 0xF8, 0x03,
                             0xB0, 0x48, 0xEE, 0xB0, 0x69, 0xEE, 0xBA, 0x01, 0x05, 0xEE]
        let obs = ShortForm()
        let (s, text) = try run(code, mode: .real, at: 0x1000, observer: obs)
        XCTAssertEqual(s.exitStatus, 0x69)
        XCTAssertEqual(text, "Hi")
        // Not offered: the marker write (the observer gets `marker` first) and the exit-port write
        // (the run ends there). The IN comes with the device's answer, RIP on the IN (pending).
        XCTAssertEqual(obs.offers.withLock { $0 }, [
            .init(port: 0x3FD, isIn: true, data: [0x60], rip: 0x1009, tscOrdered: true),
            .init(port: 0x3F8, isIn: false, data: [0x48], rip: 0x1010, tscOrdered: true),
            .init(port: 0x3F8, isIn: false, data: [0x69], rip: 0x1013, tscOrdered: true)])
        XCTAssertEqual(obs.handled.withLock { $0 }, [0x502, 0x3FD, 0x501], "a declined offer comes back as exitHandled")

        // With fidelity full the observer needs the state after each exit: nothing is offered.
        let full = ShortForm()
        let (f, _) = try run(code, mode: .real, at: 0x1000, observer: full, options: ObserverOptions(fidelity: .full))
        XCTAssertEqual(f.exitStatus, 0x69)
        XCTAssertEqual(full.offers.withLock { $0 }, [])
        XCTAssertEqual(full.handled.withLock { $0 }, [0x502, 0x3FD, 0x3F8, 0x3F8, 0x501])
    }

    /// MMIO on this host: a write is shown committed (RIP past it), a read pending (RIP on it).
    func testMMIOWriteCommittedReadPending() throws {
        // mov eax,0x77; mov [0xD0000020],eax; mov ebx,[0xD0000020]; mov dx,0x501; mov al,bl; out dx,al
        let code: [UInt8] = [0xB8, 0x77, 0x00, 0x00, 0x00, 0xA3, 0x20, 0x00, 0x00, 0xD0, 0x8B, 0x1D, 0x20, 0x00, 0x00, 0xD0,
                             0x66, 0xBA, 0x01, 0x05, 0x88, 0xD8, 0xEE]
        let obs = Recorder()
        let (s, _) = try run(code, mode: .protected32, at: 0x100000, observer: obs, options: ObserverOptions(fidelity: .full))
        XCTAssertEqual(s.exitStatus, 0x77)
        let seen = obs.seen.withLock { $0 }
        XCTAssertEqual(seen.count, 3)
        XCTAssertEqual(seen[0].access, BusAccess(kind: .mmio, address: 0xD000_0020, size: 4, isWrite: true, data: 0x77))
        XCTAssertEqual(seen[0].rip, 0x10000A, "MMIO write shown committed")
        XCTAssertEqual(seen[1].access, BusAccess(kind: .mmio, address: 0xD000_0020, size: 4, isWrite: false, data: 0x77))
        XCTAssertEqual(seen[1].rip, 0x10000A, "MMIO read shown pending")
        XCTAssertEqual(seen[1].after, 0x100010, "completed by the immediate-exit re-entry")
    }

    func testSingleStepDeliversDebugExits() throws {
        let obs = Recorder()
        let (s, text) = try run(Self.realHello, mode: .real, at: 0x1000, observer: obs, options: ObserverOptions(singleStep: true))
        XCTAssertEqual(text, "Hi")
        XCTAssertEqual(s.stop, .halted)
        let debugs = obs.seen.withLock { $0 }.filter { if case .debug = $0.exit { return true } else { return false } }
        XCTAssertGreaterThanOrEqual(debugs.count, 4, "expected a DEBUG exit per stepped instruction")
    }
}
