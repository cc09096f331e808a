import Foundation
import Synchronization
import KVM
import Trace
import VMM
import X86
import X86Emulator

/// Recording settings (`exitscope record`).
public struct RecorderOptions: Sendable {
    public var observer: ObserverOptions
    public var writer: TraceWriterSettings
    /// Records each vCPU may have waiting for the encoder (RecordPipeline): with the writer's
    /// frames, this bounds recording's memory (about 1.3 KB per queued record).
    public var queueCapacity: Int
    /// The nice value of recording's own threads (the encoder, RecordPipeline, and the writer's
    /// compressor; the vCPU threads keep theirs). At the process's priority, the encoder woken on
    /// a vCPU's CPU preempted the vCPU thread there (perf sched, io-loop-1000000 on 2 cores with
    /// the other one idle most of the time: 1,939 preemptions, 0.21 s off CPU, 0.2 µs per exit);
    /// at a lower weight it waits to be moved to the idle CPU instead of taking the vCPU's.
    public var backgroundNice: Int32
    public init(observer: ObserverOptions = ObserverOptions(), writer: TraceWriterSettings = TraceWriterSettings(),
                queueCapacity: Int = 1024, backgroundNice: Int32 = 10) {
        self.observer = observer
        self.writer = writer
        self.queueCapacity = max(2, queueCapacity)
        self.backgroundNice = backgroundNice
    }
}

/// What a recording wrote, for the command's summary.
public struct RecordingSummary: Sendable {
    public var path: String
    public var records: UInt64
    public var exits: UInt64
    public var fileBytes: UInt64
    public var frames: Int
    public var ambiguous: UInt64
    public var unlocated: UInt64
    public var writerStalls: UInt64
    /// `.completion` records: instructions the VMM performed because KVM could not.
    public var completions: UInt64 = 0
    public var bytesPerExit: Double { exits == 0 ? 0 : Double(fileBytes) / Double(exits) }
}

/// The observer that turns the VMM's exits into trace records (DESIGN.md, "The exit record").
/// Each vCPU thread touches only its own lane; the writer has no global lock on this path.
public final class Recorder: ExitObserver, @unchecked Sendable {
    public let writer: TraceWriter
    public let options: RecorderOptions
    private let lanes: [Lane]
    /// The same lanes unretained (`lanes` keeps them): borrowed on the fast path without reference counting.
    private let laneReferences: [Unmanaged<Lane>]
    private let pipeline: RecordPipeline
    /// Whether port I/O exits may take the fast path (`pushKnownPortIO`): not under single-step
    /// (steps are held and ordered around exits) nor with --fidelity full (a state after).
    private let fastPortIO: Bool
    // Statistics for the summary, bumped by every vCPU thread.
    private let ambiguous = Atomic<UInt64>(0)
    private let unlocated = Atomic<UInt64>(0)
    private let completionCount = Atomic<UInt64>(0)

    /// Per-vCPU recording state, used only on that vCPU's thread.
    final class Lane: @unchecked Sendable {
        var probe: VCPUProbe?
        /// What the frame-stats callback (on the pipeline's thread) reads.
        let shared = Mutex<(probe: VCPUProbe?, debugRegisters: DebugRegisters?)>((nil, nil))
        /// Set when a frame closed: the vCPU thread reads the debug registers again at its next exit.
        let refreshDebugRegisters = Atomic<Bool>(true)
        var lastState = CPUState() { didSet { lastStateInPipeline = false } }
        /// The last exit took the fast path, which does not copy its state here: the pipeline has
        /// it (RecordPipeline.Item.recordInLastState).
        var lastStateInPipeline = false
        var pendingMSRWrites: [MSRWrite] = []
        let locator = LocatorCache()
        /// The open instruction group: its start RIP and next fragment (its id, the seq of fragment
        /// 0, is set by the pipeline, which learns seq numbers from the writer).
        var openGroup: (start: UInt64, next: UInt32)?
        /// CPL and instruction of the last record, for gap records under single-step.
        var lastCPL: UInt8 = 0
        var lastStepMnemonic: Mnemonic?
        /// The save-area MSRs (KVM_GET_MSRS once, then every routed WRMSR), put into each state:
        /// sync regs do not carry them.
        var msrs: SaveAreaMSRs? { didSet { msrsAnnounced = false } }
        /// The last step record, written once the next record shows it was not an exit.
        var heldStep: TraceRecord? { didSet { if case .some = heldStep { hasHeldStep = true } else { hasHeldStep = false } } }
        /// Whether heldStep/heldWrite hold a record: `lane.heldStep != nil` copied the whole
        /// optional record (about 1.2 KB) on every exit.
        private(set) var hasHeldStep = false
        private(set) var hasHeldWrite = false
        /// An ambiguous MMIO write, written once the next exit shows which instruction it was.
        var heldWrite: TraceRecord? { didSet { if case .some = heldWrite { hasHeldWrite = true } else { hasHeldWrite = false } } }
        /// Guest memory with this vCPU's paging registers, reused at every exit (a `let`: reading it
        /// costs no reference counting).
        let memory: ViewMemory
        /// This vCPU's end of its ring to the pipeline.
        let producer: RecordPipeline.Producer
        /// Exits seen (summed for the summary once the vCPUs stopped: no shared counter per exit).
        var exits: UInt64 = 0
        /// The locator-cache serials the pipeline knows, by slot (RecordPipeline.Item.located);
        /// plain memory, searched on every fast-path exit.
        let announced = UnsafeMutablePointer<UInt64>.allocate(capacity: RecordPipeline.locatedSlots)
        var nextSlot = 0
        /// Whether the pipeline has `msrs` as they are now.
        var msrsAnnounced = false
        /// The last fast-path exit, to take the next one like it without the locator cache.
        var repeatExit = RepeatPortIO()
        /// The whole per-exit work of a port exit like the lane's last fast-path one (RepeatPortIO),
        /// when nothing else is due at this exit: no first exit, debug registers to read, open group,
        /// held write, pending MSR write or MSRs to announce. False: the ordinary order of
        /// `exitHandled` follows.
        @inline(__always)
        func pushRepeatedPortIO(_ registers: SyncedRegistersView, port: UInt16, size: UInt8, isIn: Bool,
                                data: UnsafeRawBufferPointer, tscExit: UInt64, tscEntry: UInt64) -> Bool {
            guard msrsAnnounced, probe != nil, !refreshDebugRegisters.load(ordering: .relaxed), lastStepMnemonic != .xsetbv,
                  openGroup == nil, !hasHeldWrite, pendingMSRWrites.isEmpty,
                  repeatExit.matches(registers, isIn: isIn, port: port, size: size, view: memory.view) else { return false }
            exits &+= 1
            pushPortIO(registers, slot: repeatExit.slot, port: port, size: size, isIn: isIn, data: data,
                       tscExit: tscExit, tscEntry: tscEntry)
            return true
        }

        /// The registers go into the ring as KVM left them (one copy); the pipeline builds the state.
        @inline(__always)
        func pushPortIO(_ registers: SyncedRegistersView, slot: Int, port: UInt16, size: UInt8, isIn: Bool,
                        data: UnsafeRawBufferPointer, tscExit: UInt64, tscEntry: UInt64) {
            var value: UInt64 = 0
            for i in 0..<data.count { value |= UInt64(data[i]) << (8 * UInt64(i)) }
            producer.pushPortIO(registers: registers, tscExit: tscExit, tscEntry: tscEntry, data: value,
                                kvmExitReason: VMExit.ioReason, port: port, size: size, isIn: isIn, slot: UInt8(slot))
            lastStateInPipeline = true
            lastCPL = registers.cpl
            lastStepMnemonic = nil
        }

        init(memory: ViewMemory, producer: RecordPipeline.Producer) {
            self.memory = memory
            self.producer = producer
            announced.initialize(repeating: 0, count: RecordPipeline.locatedSlots)
        }
        deinit { announced.deallocate(); repeatExit.release() }
    }

    /// A port exit the fast path took, and what makes another exit the same case: the same
    /// paging registers and RIP (the cache's key), the same access (and DX, which `out dx` names),
    /// and the guest bytes of its instruction (its bytes and page-table entries) unchanged in
    /// guest memory. A loop exits this way again and again; checking this costs a few compares
    /// and one memcmp per guest-bytes item, where the locator cache copies its entries around.
    struct RepeatPortIO {
        var valid = false
        var rip: UInt64 = 0, csBase: UInt64 = 0, cr3: UInt64 = 0, cr0: UInt64 = 0, cr4: UInt64 = 0, efer: UInt64 = 0
        var mode: UInt8 = 0, isIn = false, size: UInt8 = 0, port: UInt16 = 0, dx: UInt16 = 0
        var slot = 0
        /// The guest bytes to compare, flat: per item a UInt64 GPA, a UInt64 length, the bytes.
        var check: UnsafeMutableRawPointer? = nil
        var checkItems = 0
        var checkCapacity = 0

        /// On KVM's registers in place: no state is built or copied.
        func matches(_ r: SyncedRegistersView, isIn: Bool, port: UInt16, size: UInt8, view: GuestMemoryView) -> Bool {
            guard valid, r.rip == rip, r.cr3 == cr3, r.csBase == csBase, r.cr0 == cr0,
                  r.cr4 == cr4, r.efer == efer, self.isIn == isIn, self.port == port, self.size == size,
                  UInt16(truncatingIfNeeded: r.rdx) == dx, var p = check.map(UnsafeRawPointer.init) else { return false }
            // The mode (the key's tag) and, as readsIOBitmap: at CPL > IOPL (or in virtual-8086
            // mode) the access reads the TSS bitmap, guest bytes the fast path does not carry.
            let rflags = r.rflags
            if LocatorCache.modeTag(r.mode) != mode || mode == 1 { return false }
            if mode != 0 && UInt64(r.cpl) > (rflags >> 12) & 3 { return false }
            for _ in 0..<checkItems {
                let gpa = p.loadUnaligned(as: UInt64.self)
                let n = Int(p.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
                if !view.equals(gpa, p + 16, count: n) { return false }
                p += 16 + n
            }
            return true
        }

        mutating func set(_ s: CPUState, isIn: Bool, port: UInt16, size: UInt8, slot: Int, guestBytes: [GuestBytes]) {
            let need = guestBytes.reduce(0) { $0 + 16 + $1.bytes.count }
            if need > checkCapacity {
                check?.deallocate()
                check = .allocate(byteCount: need, alignment: 8)
                checkCapacity = need
            }
            var p = check!
            for g in guestBytes {
                p.storeBytes(of: g.gpa, as: UInt64.self)
                p.storeBytes(of: UInt64(g.bytes.count), toByteOffset: 8, as: UInt64.self)
                g.bytes.withUnsafeBytes { b in if b.count > 0 { (p + 16).copyMemory(from: b.baseAddress!, byteCount: b.count) } }
                p += 16 + g.bytes.count
            }
            checkItems = guestBytes.count
            rip = s.rip; csBase = s.cs.base; cr3 = s.cr3; cr0 = s.cr0; cr4 = s.cr4; efer = s.efer
            mode = LocatorCache.modeTag(s)
            self.isIn = isIn; self.port = port; self.size = size; dx = UInt16(truncatingIfNeeded: s.rdx)
            self.slot = slot
            valid = true
        }

        func release() { check?.deallocate() }
    }

    /// Creates the trace file at `path` with a header describing `machine`, `image` and the host.
    public init(path: String, machine: Machine, imagePath: String, imageBytes: [UInt8],
                symbols: [GuestSymbol], commandLine: [String], options: RecorderOptions) throws {
        self.options = options
        fastPortIO = !options.observer.singleStep && options.observer.fidelity == .exit
        let vcpus = machine.config.vcpus
        let header = Recorder.header(machine: machine, imagePath: imagePath, imageBytes: imageBytes,
                                     symbols: symbols, commandLine: commandLine, options: options)
        // The lanes need the pipeline, which needs the writer, whose frame-stats callback reads the lanes.
        let lanesRef = LaneTable()
        var writerSettings = options.writer
        writerSettings.compressorNice = options.backgroundNice
        let writer = try TraceWriter(path: path, header: header, settings: writerSettings, frameStats: { vcpu in
            // Called when a frame closes, on the pipeline's thread: KVM's counters come from the
            // stats file (a read, no vCPU ioctl), the debug registers from the lane's copy, which
            // its vCPU thread refreshes at its next exit (KVM_GET_DEBUGREGS would wait for the
            // vCPU to leave KVM_RUN).
            let lanes = lanesRef.lanes
            guard Int(vcpu) < lanes.count else { return nil }
            let lane = lanes[Int(vcpu)]
            lane.refreshDebugRegisters.store(true, ordering: .relaxed)
            let (probe, dr) = lane.shared.withLock { ($0.probe, $0.debugRegisters) }
            guard let probe else { return nil }
            var s = VCPUFrameStats(vcpu: vcpu, counters: (try? probe.stats()) ?? [:])
            if let d = dr {
                s.dr0 = d.dr0; s.dr1 = d.dr1; s.dr2 = d.dr2; s.dr3 = d.dr3; s.dr6 = d.dr6; s.dr7 = d.dr7
            }
            return s
        })
        self.writer = writer
        let pipeline = RecordPipeline(writer: writer, vcpus: vcpus, capacity: options.queueCapacity,
                                      nice: options.backgroundNice)
        self.pipeline = pipeline
        let view = GuestMemoryView(machine.memory)
        lanes = (0..<vcpus).map { Lane(memory: ViewMemory(view: view), producer: pipeline.producers[$0]) }
        laneReferences = lanes.map { Unmanaged.passUnretained($0) }
        lanesRef.lanes = lanes
    }

    /// The lanes, for the writer's frame-stats callback (set once, before the run).
    final class LaneTable: @unchecked Sendable {
        var lanes: [Lane] = []
    }

    deinit { pipeline.finish() }  // a recorder dropped without finish(): stop its thread

    static func header(machine: Machine, imagePath: String, imageBytes: [UInt8], symbols: [GuestSymbol],
                       commandLine: [String], options: RecorderOptions) -> TraceHeader {
        let info = machine.info
        var caps: [String: Int64] = [:]
        for c in info.capabilities { caps[c.name] = Int64(c.value) }
        let cpuid = machine.guestCPUID.map {
            Trace.CPUIDEntry(function: $0.function, index: $0.index, flags: $0.flags,
                             eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
        }
        let config = machine.config
        let iso = ISO8601DateFormatter().string(from: Date())
        return TraceHeader(
            tscHz: info.tscHz ?? HostInfo.measureTSCHz(), hostCPU: HostInfo.cpuModel(), kernel: HostInfo.kernel(),
            kvmBackend: info.backend, capabilities: caps, cpuid: cpuid,
            memory: [MemoryRegionInfo(gpa: 0, size: config.memoryBytes, name: "ram"),
                     MemoryRegionInfo(gpa: MachineLayout.scratchMMIOBase, size: MachineLayout.scratchMMIOSize, name: "scratch-mmio")],
            vcpuCount: UInt16(config.vcpus), imagePath: imagePath, imageSHA256: SHA256.hex(imageBytes),
            commandLine: commandLine, symbols: symbols,
            options: ["fidelity": options.observer.fidelity.rawValue,
                      "single_step": options.observer.singleStep ? "true" : "false",
                      "mode": config.mode.rawValue, "irqchip": config.irqchip.rawValue,
                      "memory_mib": String(config.memoryMiB)],
            startTime: iso)
    }

    // MARK: ExitObserver

    public func vcpuStarted(vcpu: Int, state: CPUState) {
        guard vcpu < lanes.count else { return }
        lanes[vcpu].lastState = state
        append(TraceRecord(kind: .event, vcpu: UInt16(vcpu), state: state, code: EventCode.vcpuStarted, note: "vcpu started"))
    }

    public func msrWritten(vcpu: Int, index: UInt32, value: UInt64) {
        guard vcpu < lanes.count else { return }
        lanes[vcpu].pendingMSRWrites.append(MSRWrite(index: index, value: value))
    }

    public func marker(vcpu: Int, phase: UInt64) {
        guard vcpu < lanes.count else { return }
        let tsc = HostInfo.rdtsc()
        appendInLastState(TraceRecord(kind: .marker, vcpu: UInt16(vcpu), state: lanes[vcpu].lastState,
                                      tscExit: tsc, tscEntry: tsc, code: phase), lane: lanes[vcpu])
    }

    public func vcpuStopped(vcpu: Int, exits: UInt64) {
        guard vcpu < lanes.count else { return }
        if var held = lanes[vcpu].heldWrite {
            lanes[vcpu].heldWrite = nil
            _ = place(&held, lane: lanes[vcpu])
        }
        if let held = lanes[vcpu].heldStep {
            lanes[vcpu].heldStep = nil
            append(held)
        }
        appendInLastState(TraceRecord(kind: .event, vcpu: UInt16(vcpu), state: lanes[vcpu].lastState,
                                      code: EventCode.vcpuStopped, note: "vcpu stopped after \(exits) exits"), lane: lanes[vcpu])
        // The last frame's stats describe the vCPU as it stopped.
        refreshDebugRegisters(lanes[vcpu])
        pipeline.push(.flush, vcpu: vcpu)
    }

    /// The VMM's short form of a port exit (no ObservedExit built): a loop's exit like its last
    /// one is recorded here; anything else returns false and comes back as `exitHandled`.
    public func portIOExitHandled(vcpu: Int, registers: SyncedRegistersView, io: IOExitInfo, data: UnsafeRawBufferPointer,
                                  tscAtExit: UInt64, tscAtReentry: UInt64) -> Bool {
        guard fastPortIO, vcpu >= 0, vcpu < laneReferences.count, io.count == 1, io.size <= 8,
              data.count == Int(io.size) else { return false }
        return laneReferences[vcpu]._withUnsafeGuaranteedRef {
            $0.pushRepeatedPortIO(registers, port: io.port, size: io.size, isIn: io.direction == .in, data: data,
                                  tscExit: tscAtExit, tscEntry: tscAtReentry)
        }
    }

    public func exitHandled(_ exit: borrowing ObservedExit) {
        guard exit.vcpu >= 0, exit.vcpu < lanes.count else { return }
        // A loop's port exit like its last one: done with the lane borrowed from `laneReferences`
        // (no reference counting), from the exit's trivial fields.
        if fastPortIO, let io = exit.io, io.count == 1, io.size <= 8,
           let data = exit.ioData, data.count == Int(io.size), !exit.hasStateAfter, !exit.msrRefused,
           let registers = exit.registers {
            let tscExit = exit.tscAtExit, tscEntry = exit.tscAtReentry
            if laneReferences[exit.vcpu]._withUnsafeGuaranteedRef({
                $0.pushRepeatedPortIO(registers, port: io.port, size: io.size, isIn: io.direction == .in, data: data,
                                      tscExit: tscExit, tscEntry: tscEntry)
            }) { return }
        }
        let lane = lanes[exit.vcpu]
        if lane.probe == nil {
            let probe = exit.probe
            lane.probe = probe
            var m = SaveAreaMSRs((try? probe.msrs()) ?? [:])
            m.xcr0 = (try? probe.xcr0()) ?? nil
            lane.msrs = m
            _ = try? probe.stats()  // opens the stats file here, so the pipeline never issues a vCPU ioctl
            lane.shared.withLock { $0.probe = probe }
        }
        if lane.refreshDebugRegisters.load(ordering: .relaxed) { refreshDebugRegisters(lane) }
        // A stepped XSETBV has run: its new XCR0 goes into the states from now on.
        if lane.lastStepMnemonic == .xsetbv { refreshXCR0(lane) }
        lane.exits &+= 1
        let memory = lane.memory
        if fastPortIO, lane.openGroup == nil, !lane.hasHeldWrite, lane.pendingMSRWrites.isEmpty, !exit.msrRefused,
           let io = exit.io, io.count == 1, io.size <= 8,
           let data = exit.ioData, data.count == Int(io.size), !exit.hasStateAfter, let registers = exit.registers,
           pushKnownPortIO(exit, registers: registers, lane: lane, memory: memory, port: io.port, size: io.size,
                           isIn: io.direction == .in, data: data) {
            return
        }
        // Under single-step the held step is the instruction an exit comes from (when it is one):
        // it picks between decodings that all end at RIP (a store straddling into MMIO,
        // `mov [rbx+0xffc], rax`, whose last 6 bytes are `mov [rbx+0xffc], eax`).
        let hint = lane.openGroup?.start ?? (options.observer.singleStep ? lane.heldStep?.instructionStart : nil)
        var record = ExitRecordBuilder.build(exit: exit, singleStep: options.observer.singleStep,
                                             openGroup: hint, cache: lane.locator, memory: memory)
        if record.kind == .step, options.observer.singleStep { addLocalAPICReads(&record, lane: lane, probe: exit.probe) }
        if let m = lane.msrs {
            m.apply(to: &record.state)
            if case .some = record.stateAfter {
                var after = m
                for w in lane.pendingMSRWrites { after.set(w.index, w.value) }
                after.apply(to: &record.stateAfter!)
            }
        }
        if !lane.pendingMSRWrites.isEmpty {
            record.msrWrites = lane.pendingMSRWrites
            // The write takes effect with this exit's instruction: later states carry it.
            for w in lane.pendingMSRWrites { lane.msrs?.set(w.index, w.value) }
            lane.pendingMSRWrites.removeAll(keepingCapacity: true)
        }
        if lane.hasHeldWrite, var first = lane.heldWrite {
            lane.heldWrite = nil
            if ExitRecordBuilder.resolveSplitWrite(&first, next: record, memory: memory) { ambiguous.subtract(1, ordering: .relaxed) }
            _ = place(&first, lane: lane)
        }
        if record.visibility == .committed && record.candidates == 0 { unlocated.add(1, ordering: .relaxed) }
        if record.candidates > 1 { ambiguous.add(1, ordering: .relaxed) }
        // An MMIO write two instructions explain waits for the next exit, which may show it was
        // the first piece of a store straddling into MMIO (ExitRecordBuilder.resolveSplitWrite).
        // (Not under single-step, where the held step and gap records order around each record.)
        if !options.observer.singleStep && ExitRecordBuilder.mayBeFirstPiece(record) {
            lane.heldWrite = record
        } else if place(&record, lane: lane) {
            lane.lastState = exit.state
            lane.lastCPL = record.state.cpl
            lane.lastStepMnemonic = Self.mnemonic(record)
            return
        }
        // Assigned in place (no `let after` binding): each extra copy of a state is 520 bytes per exit.
        if exit.hasStateAfter, let after = exit.stateAfter { lane.lastState = after } else { lane.lastState = exit.state }
        lane.lastCPL = record.state.cpl
        lane.lastStepMnemonic = nil
    }

    /// The fast path of a port I/O exit (issue 4: recording overhead): when the lane's locator
    /// cache knows the instruction and its guest bytes (unchanged in guest memory, checked in
    /// place), the vCPU thread pushes only the state and the access; the pipeline's thread builds
    /// the record `build` would have built (ExitRecordBuilder.portIORecord). False: take the
    /// ordinary path (a miss, an ambiguous or REP instruction, one that reads the TSS bitmap).
    private func pushKnownPortIO(_ exit: borrowing ObservedExit, registers: SyncedRegistersView, lane: Lane, memory: ViewMemory,
                                 port: UInt16, size: UInt8, isIn: Bool, data: UnsafeRawBufferPointer) -> Bool {
        if lane.repeatExit.matches(registers, isIn: isIn, port: port, size: size, view: memory.view) {
            pushPortIO(exit, registers: registers, lane: lane, slot: lane.repeatExit.slot, port: port, size: size, isIn: isIn, data: data)
            return true
        }
        memory.load(exit.state)
        let l = isIn ? lane.locator.pending(state: exit.state, memory: memory)
                     : lane.locator.committed(state: exit.state, access: .portOut(port: port, size: Int(size)), memory: memory)
        let serial = lane.locator.lastHitSerial
        guard serial != 0, l.candidates == 1, let inst = l.instruction, !inst.hasRep,
              !ExitRecordBuilder.readsIOBitmap(inst, exit.state), let g = lane.locator.guestBytes(for: l) else { return false }
        var slot = -1
        for i in 0..<RecordPipeline.locatedSlots where lane.announced[i] == serial { slot = i; break }
        if slot < 0 {
            slot = lane.nextSlot
            lane.nextSlot = (slot + 1) % RecordPipeline.locatedSlots
            lane.announced[slot] = serial
            pipeline.push(.located(slot: slot, l, g), vcpu: exit.vcpu)
        }
        lane.repeatExit.set(exit.state, isIn: isIn, port: port, size: size, slot: slot, guestBytes: g)
        pushPortIO(exit, registers: registers, lane: lane, slot: slot, port: port, size: size, isIn: isIn, data: data)
        return true
    }

    /// The registers go into the ring as KVM left them (one copy); the pipeline builds the state.
    private func pushPortIO(_ exit: borrowing ObservedExit, registers: SyncedRegistersView, lane: Lane, slot: Int, port: UInt16,
                            size: UInt8, isIn: Bool, data: UnsafeRawBufferPointer) {
        if !lane.msrsAnnounced {
            pipeline.push(.msrs(lane.msrs), vcpu: exit.vcpu)
            lane.msrsAnnounced = true
        }
        lane.pushPortIO(registers, slot: slot, port: port, size: size, isIn: isIn, data: data,
                        tscExit: exit.tscAtExit, tscEntry: exit.tscAtReentry)
    }

    /// Appends an exit or step record in its instruction group (or holds a step back); true
    /// when the record was a step, now held. `inout`: a record is about 1.2 KB, and copying it
    /// per exit showed in profiles.
    private func place(_ record: inout TraceRecord, lane: Lane) -> Bool {
        // Fragments of one instruction: continue the open group when this exit is on the same
        // instruction start (REP string iterations, the write half of a read-modify-write).
        if let open = lane.openGroup, open.start == record.instructionStart, record.kind == .exit {
            record.fragment = open.next
        } else {
            record.fragment = 0
        }
        // A step record describes the instruction at RIP before it runs; when that instruction
        // then exits to the VMM, the exit's record is its record (DESIGN.md), so the step is held
        // back until the next record of this vCPU shows which it was.
        if lane.hasHeldStep, let held = lane.heldStep {
            lane.heldStep = nil
            if !(record.kind == .exit && record.instructionStart == held.instructionStart) {
                append(held)
                noteDeliveredEvent(lane: lane, held: held, next: record)
            }
        }
        // After the held step: the gap stands between the last stepped instruction and this record,
        // so replay compares that step with the gap (nothing) rather than with a later state.
        if options.observer.singleStep { noteUnobservedSpan(lane: lane, next: record) }
        if record.kind == .step {
            lane.heldStep = record
            // A REP string instruction steps between its exits at the same RIP (KVM_RUN returns
            // after each batch): its group stays open for the next exit on it.
            if lane.openGroup?.start != record.instructionStart { lane.openGroup = nil }
            return true
        }
        append(record)
        if record.kind == .exit && !record.lastFragment {
            lane.openGroup = (record.instructionStart, record.fragment + 1)
        } else {
            lane.openGroup = nil
        }
        return false
    }

    /// An instruction the VMM completed after KVM's emulator failed on it: a `.completion`
    /// record (state before, state after, the instruction, the guest bytes, device accesses).
    public func instructionCompleted(_ c: Completion) {
        guard c.vcpu >= 0, c.vcpu < lanes.count else { return }
        let lane = lanes[c.vcpu]
        let tsc = HostInfo.rdtsc()
        var memory: [GuestBytes] = []
        // Written bytes first, then what was read: a reader loading them in order for replay
        // ends with the bytes as they were before the instruction.
        for m in c.memory where m.role == .written { memory.append(GuestBytes(role: .written, gpa: m.gpa, bytes: m.bytes)) }
        for m in c.memory where m.role != .written {
            let role: GuestBytes.Role = m.role == .instruction ? .instruction : m.role == .pageTable ? .pageTable : .operandRead
            memory.append(GuestBytes(role: role, gpa: m.gpa, bytes: m.bytes))
        }
        let accesses = c.deviceAccesses.map {
            Trace.DeviceAccess(space: $0.kind == .port ? .port : .mmio, address: $0.address, size: $0.size,
                               isWrite: $0.isWrite, data: (0..<Int($0.size)).map { [v = $0.data] i in UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) })
        }
        var note = c.mnemonic
        if c.redeliveredSyscall { note += ", from CPL3: kvm_pvm left it at CPL3 and its fetch at LSTAR faulted" }
        if case let .exceptionDelivered(vector, errorCode) = c.outcome {
            note += ", exception \(vector) delivered" + (errorCode.map { " (error code \($0))" } ?? "")
        }
        let record = TraceRecord(kind: .completion, vcpu: UInt16(c.vcpu), kvmExitReason: Completion.kvmExitReason,
                                 nextRIP: c.outcome == .completed ? c.after.rip : 0, instructionStart: c.before.rip,
                                 instructionBytes: c.instructionBytes, candidates: 1, visibility: .pending,
                                 state: c.before, stateAfter: c.after, accesses: accesses, memory: memory,
                                 tscExit: tsc, tscEntry: tsc, note: note)
        append(record)
        completionCount.add(1, ordering: .relaxed)
        lane.openGroup = nil
        lane.lastState = c.after
        lane.lastCPL = c.after.cpl
    }

    /// An interrupt or exception delivered between two steps: KVM reports the next step inside the
    /// handler (after its first instruction), so the held step has no observed state after it. The
    /// event record says so instead of the step diverging. Only instructions whose successors the
    /// recorder knows are checked (fall-through, relative branches, near RET in 64-bit mode); returns
    /// to CPL0 are noteUnobservedSpan's (the target's instruction runs untrapped).
    private func noteDeliveredEvent(lane: Lane, held: TraceRecord, next: TraceRecord) {
        guard options.observer.singleStep, next.kind == .step || next.kind == .exit,
              next.vcpu == held.vcpu, held.state.cpl == 0, next.state.cpl == 0,
              let expected = successors(of: held, lane: lane),
              !expected.contains(next.instructionStart) else { return }
        append(TraceRecord(kind: .event, vcpu: next.vcpu, state: next.state, tscExit: next.tscExit,
                           tscEntry: next.tscExit, code: EventCode.deliveredBetweenSteps,
                           note: String(format: "interrupt or exception delivered after the step at 0x%llx: next step at 0x%llx, not 0x%llx",
                                        held.instructionStart, next.instructionStart, expected[0])))
    }

    /// A stepped load from the in-kernel local APIC never exits, so guest memory cannot give its
    /// bytes: they are taken from KVM_GET_LAPIC at the step (before the instruction runs) and
    /// recorded as operand reads at their GPA.
    private func addLocalAPICReads(_ record: inout TraceRecord, lane: Lane, probe: VCPUProbe) {
        let memory = lane.memory
        guard case .success(let inst) = decode(bytes: record.instructionBytes, mode: DecoderMode(record.state.mode)),
              inst.mnemonic != .lea, inst.mnemonic != .nop else { return }
        for i in 0..<Int(inst.operandCount) {
            guard case .memory(let m) = inst.operand(i), m.size > 0, m.size <= 16,
                  let lin = InstructionLocator.effectiveLinear(m, inst: inst, state: record.state, nextRIP: record.nextRIP) else { continue }
            memory.load(record.state)
            guard let gpa = memory.physical(lin), gpa >= Self.lapicBase, gpa &+ UInt64(m.size) <= Self.lapicBase &+ 0x400,
                  !record.memory.contains(where: { $0.gpa == gpa }),
                  let regs = try? probe.lapicRegisters(), regs.count == 0x400 else { continue }
            let offset = Int(gpa - Self.lapicBase)
            record.memory.append(GuestBytes(role: .operandRead, gpa: gpa, bytes: Array(regs[offset..<(offset + Int(m.size))])))
        }
    }
    /// The local APIC's default base (IA32_APIC_BASE after reset; the samples do not move it).
    static let lapicBase: UInt64 = 0xFEE0_0000

    /// Where the stepped instruction continues, or nil when the recorder cannot tell.
    private func successors(of held: TraceRecord, lane: Lane) -> [UInt64]? {
        guard held.nextRIP != 0,
              case .success(let i) = decode(bytes: held.instructionBytes, mode: DecoderMode(held.state.mode)) else { return nil }
        let long = held.state.mode == .long64
        switch i.mnemonic {
        case .jo, .jno, .jb, .jae, .je, .jne, .jbe, .ja, .js, .jns, .jp, .jnp, .jl, .jge, .jle, .jg, .jmp, .call:
            guard long, case .relative(let d) = i.operand(0) else { return nil }
            let target = held.nextRIP &+ UInt64(bitPattern: d)
            return i.mnemonic == .jmp || i.mnemonic == .call ? [target] : [held.nextRIP, target]
        case .ret:
            // A near RET without an immediate takes the return RIP from [RSP].
            let memory = lane.memory
            guard long, i.operandCount == 0 else { return nil }
            memory.load(held.state)
            guard let b = memory.readLinear(held.state.rsp, count: 8) else { return nil }
            return [b.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }]
        case .iret, .iretd, .iretq, .retf, .int, .int1, .int3, .into, .syscall, .sysret, .sysretq, .sysenter, .sysexit, .sysexitq,
             .loop, .loope, .loopne, .jcxz, .jecxz, .jrcxz, .ud2, .rsm:
            return nil
        default:
            // REP string instructions step once per iteration at the same RIP.
            return [held.nextRIP, held.instructionStart]
        }
    }

    /// Single-step sees CPL0 only (kvm_pvm runs CPL3 natively): when the guest went to CPL3 and
    /// came back, the span between is recorded as a gap rather than silently missing.
    /// A step at CPL3 (the trap right after an exit's instruction at CPL3) is followed by native
    /// CPL3 code too. After an IRET/SYSRET/SYSEXIT back to CPL0, kvm_pvm runs the instruction at
    /// the return target without a trap: the next step is one instruction later.
    private func noteUnobservedSpan(lane: Lane, next: TraceRecord) {
        let lowered = lane.lastStepMnemonic.map { [Mnemonic.sysret, .sysexit, .iret, .iretd, .iretq].contains($0) } ?? false
        let steppedAtCPL3 = lane.lastStepMnemonic != nil && lane.lastCPL == 3 && next.kind != .step
        if next.state.cpl == 3 && (lowered || lane.lastCPL == 0 || steppedAtCPL3) {
            append(TraceRecord(kind: .gap, vcpu: next.vcpu, state: next.state, tscExit: next.tscExit,
                               tscEntry: next.tscExit, code: GapCode.userMode,
                               note: "CPL3 code ran natively and was not single-stepped"))
        } else if lowered || steppedAtCPL3 {
            append(TraceRecord(kind: .gap, vcpu: next.vcpu, state: next.state, tscExit: next.tscExit,
                               tscEntry: next.tscExit, code: lowered ? GapCode.untrappedAfterReturn : GapCode.userMode,
                               note: lowered ? "the instruction at the return target ran without a single-step trap"
                                             : "CPL3 code ran natively and was not single-stepped"))
        }
    }

    static func applySaveAreaMSRs(_ m: [UInt32: UInt64], to s: inout CPUState) {
        SaveAreaMSRs(m).apply(to: &s)
    }

    static func mnemonic(_ r: TraceRecord) -> Mnemonic? {
        if case .success(let i) = decode(bytes: r.instructionBytes, mode: DecoderMode(r.state.mode)) { return i.mnemonic }
        return nil
    }

    // MARK: finishing

    /// Into the vCPU's ring; the pipeline's thread encodes it (every record of a vCPU is
    /// appended on that vCPU's thread, so each ring has one producer).
    private func append(_ r: consuming TraceRecord) {
        let vcpu = Int(r.vcpu)
        pipeline.push(.record(r), vcpu: vcpu)
    }

    /// A record whose state is the vCPU's last state (a marker, the stop event): when the last
    /// exit took the fast path, the pipeline puts that exit's state in.
    private func appendInLastState(_ r: consuming TraceRecord, lane: Lane) {
        var r = r
        let vcpu = Int(r.vcpu)
        if lane.lastStateInPipeline {
            pipeline.push(.recordInLastState(r), vcpu: vcpu)
        } else {
            lane.msrs?.apply(to: &r.state)  // like every exit's state: with the save-area MSRs and XCR0
            pipeline.push(.record(r), vcpu: vcpu)
        }
    }

    /// Once per frame (and as the vCPU stops): the debug registers for the frame's stats, and
    /// XCR0, which sync regs do not carry and XSETBV changes without an exit on kvm_pvm.
    private func refreshDebugRegisters(_ lane: Lane) {
        lane.refreshDebugRegisters.store(false, ordering: .relaxed)
        refreshXCR0(lane)
        guard let probe = lane.probe, let d = try? probe.debugRegisters() else { return }
        lane.shared.withLock { $0.debugRegisters = d }
    }

    private func refreshXCR0(_ lane: Lane) {
        guard let probe = lane.probe, let x = try? probe.xcr0(), lane.msrs != nil, lane.msrs?.xcr0 != x else { return }
        lane.msrs?.xcr0 = x
    }

    /// Writes the index and trailer; call once the run is over (also from Ctrl-C paths).
    public func finish() throws -> RecordingSummary {
        pipeline.finish()
        var stats = try writer.finish()
        stats.producerStalls += pipeline.producerStalls
        return RecordingSummary(path: writer.path, records: stats.records, exits: lanes.reduce(0) { $0 + $1.exits },
                                fileBytes: stats.fileBytes, frames: stats.frames, ambiguous: ambiguous.load(ordering: .relaxed),
                                unlocated: unlocated.load(ordering: .relaxed), writerStalls: stats.producerStalls,
                                completions: completionCount.load(ordering: .relaxed))
    }
}

/// The save-area MSRs a lane puts into every state, in plain stored properties (a dictionary
/// lookup per MSR per exit showed in profiles); nil = not known (KVM_GET_MSRS left it out).
/// XCR0 rides along: like the MSRs it is not in sync regs, and is read by ioctl (KVM_GET_XCRS)
/// at the first exit, once per frame and after a stepped XSETBV.
struct SaveAreaMSRs {
    var star, lstar, cstar, sfmask, kernelGSBase, sysenterCS, sysenterESP, sysenterEIP, pat: UInt64?
    var xcr0: UInt64?

    init(_ m: [UInt32: UInt64]) {
        star = m[MSRIndex.star]; lstar = m[MSRIndex.lstar]; cstar = m[MSRIndex.cstar]
        sfmask = m[MSRIndex.sfmask]; kernelGSBase = m[MSRIndex.kernelGSBase]
        sysenterCS = m[MSRIndex.sysenterCS]; sysenterESP = m[MSRIndex.sysenterESP]
        sysenterEIP = m[MSRIndex.sysenterEIP]; pat = m[MSRIndex.pat]
    }

    /// A routed WRMSR; other MSRs are not part of the state.
    mutating func set(_ index: UInt32, _ v: UInt64) {
        switch index {
        case MSRIndex.star: star = v
        case MSRIndex.lstar: lstar = v
        case MSRIndex.cstar: cstar = v
        case MSRIndex.sfmask: sfmask = v
        case MSRIndex.kernelGSBase: kernelGSBase = v
        case MSRIndex.sysenterCS: sysenterCS = v
        case MSRIndex.sysenterESP: sysenterESP = v
        case MSRIndex.sysenterEIP: sysenterEIP = v
        case MSRIndex.pat: pat = v
        default: break
        }
    }

    @inline(__always)
    func apply(to s: inout CPUState) {
        if let v = star { s.star = v }
        if let v = lstar { s.lstar = v }
        if let v = cstar { s.cstar = v }
        if let v = sfmask { s.sfmask = v }
        if let v = kernelGSBase { s.kernelGSBase = v }
        if let v = sysenterCS { s.sysenterCS = v }
        if let v = sysenterESP { s.sysenterESP = v }
        if let v = sysenterEIP { s.sysenterEIP = v }
        if let v = pat { s.pat = v }
        if let v = xcr0 { s.xcr0 = v }
    }
}

/// Codes of `.event` records.
public enum EventCode {
    public static let vcpuStarted: UInt64 = 1
    public static let vcpuStopped: UInt64 = 2
    /// An interrupt or exception was delivered between two single steps.
    public static let deliveredBetweenSteps: UInt64 = 3
}

/// Codes of `.gap` records.
public enum GapCode {
    /// Code at CPL3, which single-step cannot follow on this backend.
    public static let userMode: UInt64 = 1
    /// After IRET/SYSRET/SYSEXIT, kvm_pvm runs the first instruction at the return target without
    /// a single-step trap, so no step shows the state right after the return.
    public static let untrappedAfterReturn: UInt64 = 2
}
