import Trace
import X86
import X86Emulator

/// A stepped instruction whose after-state is in the next record of its vCPU, which lies in the
/// next frame: the frame's replay leaves it open and the merge closes it (`StepCheck.close`).
public struct OpenStep: Sendable {
    var verdict: Verdict
    var emulated: CPUState
    var flagMask: UInt64
    var start: UInt64
    /// A REP string instruction: a next step on the same instruction means its iterations go on.
    var isRep = false
    /// Save-area MSRs known when the step ran, applied to the next record's state too.
    var msrs: [UInt32: UInt64] = [:]
}

/// What the next record of a vCPU tells about the instruction before it.
public struct RecordHead: Sendable {
    var kind: RecordKind
    var visibility: Visibility
    var instructionStart: UInt64
    var lastFragment: Bool
    var state: CPUState
    var stateAfter: CPUState?
    /// For an exit: the state before its instruction (as shown when pending, rebuilt when committed).
    var stateBefore: CPUState?
    init(_ r: TraceRecord) {
        kind = r.kind
        visibility = r.visibility
        instructionStart = r.instructionStart
        lastFragment = r.lastFragment
        state = r.state
        stateAfter = r.stateAfter
        if r.kind == .exit {
            if r.visibility == .pending {
                stateBefore = r.state
            } else if r.visibility == .committed, r.candidates == 1, r.fragment == 0,
                      case .success(let inst) = decode(bytes: r.instructionBytes, mode: DecoderMode(r.state.mode)),
                      case .success(let before) = Reconstruction.before(r, inst) {
                stateBefore = before
            }
        }
    }
}

/// The verdicts of one frame, in record order, with what crosses the frame's edges.
public struct FrameVerdicts: Sendable {
    public var vcpu: UInt16
    public var verdicts: [Verdict]
    /// The frame's last step, waiting for the next frame of its vCPU.
    public var openStep: OpenStep?
    /// The frame's first record, which closes the previous frame's open step.
    public var head: RecordHead?
}

/// Feeds records through the emulator and compares (DESIGN.md, "When KVM shows an exit").
/// One replayer per thread (never shared while replaying): it owns an executor and the memory
/// it serves from the trace.
public final class Replayer: @unchecked Sendable {
    public let header: TraceHeader
    let memory = ReplayMemory()
    let ports = ReplayPorts()
    let msrs = ReplayMSRs()
    let cpuid: HeaderCPUID
    let cpu: X86Executor
    /// KVM's instruction emulator ran CPL0 guest code (kvm_pvm): the reference for those exits.
    let kvmEmulatesCPL0: Bool
    var lastUnansweredMSR = false
    /// Save-area MSR values written so far in this frame.
    var knownMSRs: [UInt32: UInt64] = [:]

    public init(header: TraceHeader) {
        self.header = header
        cpuid = HeaderCPUID(header.cpuid)
        cpu = X86Executor(state: CPUState(), memory: memory, ports: ports, cpuid: header.cpuid.isEmpty ? nil : cpuid,
                          msrs: msrs, tsc: nil)
        kvmEmulatesCPL0 = header.kvmBackend == "kvm_pvm"
        memory.deviceRanges = header.memory.filter { $0.name != "ram" && $0.size > 0 }
            .map { ($0.gpa, $0.gpa &+ $0.size) }
    }

    func reference(_ s: CPUState) -> String {
        kvmEmulatesCPL0 && s.cpl == 0 ? "kvm-emulator" : "cpu"
    }

    // MARK: frames

    /// Replays the records of one frame (one vCPU, in order; the frame decodes alone).
    public func replayFrame(_ records: [TraceRecord]) -> FrameVerdicts {
        memory.reset()
        knownMSRs.removeAll(keepingCapacity: true)
        var out = FrameVerdicts(vcpu: records.first?.vcpu ?? 0, verdicts: [], openStep: nil,
                                head: records.first.map(RecordHead.init))
        out.verdicts.reserveCapacity(records.count)
        var i = 0
        while i < records.count {
            let r = records[i]
            for w in r.msrWrites where Reconstruction.saveAreaMSRs.contains(w.index) { knownMSRs[w.index] = w.value }
            switch r.kind {
            case .exit:
                // Gather the fragments of one instruction group.
                var end = i + 1
                if r.fragment == 0 && !r.lastFragment {
                    while end < records.count, records[end].kind == .exit, records[end].group == r.seq,
                          records[end].fragment == UInt32(end - i) {
                        end += 1
                        if records[end - 1].lastFragment { break }
                    }
                }
                let group = records[i..<end]
                if r.fragment != 0 {
                    out.verdicts.append(simple(r, .incomplete, note: "fragment \(r.fragment) of an instruction group that starts in an earlier frame"))
                } else if !(group.last?.lastFragment ?? true) {
                    out.verdicts.append(simple(r, .incomplete, records: group.count,
                                               note: end == records.count ? "instruction group continues past the frame's end" : "instruction group not finished in the trace"))
                } else {
                    out.verdicts.append(replayExit(group))
                }
                for g in group where g.exitCode == .msr {
                    for a in g.accesses where a.space == .msr && a.isWrite && Reconstruction.saveAreaMSRs.contains(UInt32(truncatingIfNeeded: a.address)) {
                        knownMSRs[UInt32(truncatingIfNeeded: a.address)] = a.value
                    }
                }
                i = end
            case .completion:
                out.verdicts.append(replayCompletion(r))
                i += 1
            case .step:
                // Single-step traps after each iteration of a REP string instruction: the steps
                // that stay on one instruction are its iterations, replayed as one instruction.
                var end = i + 1
                while end < records.count, records[end].kind == .step, records[end].instructionStart == r.instructionStart,
                      records[end].instructionBytes == r.instructionBytes, isRepString(r) {
                    end += 1
                }
                let next = end < records.count ? RecordHead(records[end]) : nil
                let (v, open) = replayStep(records[i..<end], next: next)
                if let v { out.verdicts.append(v) }
                if let open { out.openStep = open }
                i = end
            case .event, .gap, .marker:
                out.verdicts.append(simple(r, .notReplayable))
                i += 1
            }
        }
        return out
    }

    func simple(_ r: TraceRecord, _ kind: VerdictKind, records: Int = 1, note: String = "") -> Verdict {
        var v = Verdict(seq: r.seq, vcpu: r.vcpu, kind: kind, recordKind: r.kind, exitCode: r.exitCode, records: records,
                        rip: r.instructionStart != 0 || !r.instructionBytes.isEmpty ? r.instructionStart : r.state.rip,
                        bytes: r.instructionBytes, note: note)
        if kind != .notReplayable { v.reference = reference(r.state) }
        if !r.instructionBytes.isEmpty, case .success(let inst) = decode(bytes: r.instructionBytes, mode: DecoderMode(r.state.mode)) {
            v.instruction = inst
        }
        return v
    }

    // MARK: exits

    func replayExit(_ group: ArraySlice<TraceRecord>) -> Verdict {
        guard let first = group.first, let last = group.last else {
            return Verdict(seq: 0, vcpu: 0, kind: .notReplayable, recordKind: .exit, exitCode: .none)
        }
        switch first.exitCode {
        case .ioio, .npf, .msr, .hlt, .vmmcall: break
        default: return simple(first, .notReplayable, records: group.count)
        }
        if first.candidates > 1 {
            return simple(first, .ambiguous, records: group.count, note: "\(first.candidates) instructions end at RIP and perform the access")
        }
        if first.instructionBytes.isEmpty || first.candidates == 0 {
            return simple(first, .unlocated, records: group.count, note: "the recorder found no instruction performing the access")
        }
        var v = simple(first, .match, records: group.count)
        guard let inst = v.instruction else {
            v.kind = .unsupported
            v.note = "the bytes do not decode"
            return v
        }
        for r in group { for m in r.memory { memory.load(m.gpa, m.bytes) } }

        // The state before the instruction.
        var before: CPUState
        if first.visibility == .committed {
            switch Reconstruction.before(first, inst) {
            case .success(let s): before = s
            case .failure(let why):
                v.kind = .unreconstructable
                v.note = why.message
                return v
            }
        } else {
            before = first.state
        }
        Reconstruction.applyMSRs(knownMSRs, to: &before)

        var recorded: [DeviceAccess] = []
        for r in group { recorded.append(contentsOf: r.accesses) }
        // The state after: committed exits show it; pending ones only with --fidelity full.
        var after: CPUState? = last.visibility == .committed ? last.state : last.stateAfter
        if (inst.hasRep || inst.hasRepne), var a = after, a.rip == first.instructionStart {
            // KVM exits on a REP string's last iteration before it retires the instruction: the
            // iteration took effect (RCX is 0) but RIP moves on only at re-entry.
            a.rip = last.nextRIP
            a.rflags &= ~RFLAGS.rf  // set while it was between iterations; retiring clears it
            after = a
        }
        if var a = after {
            Reconstruction.applyMSRs(knownMSRs, to: &a)
            after = a
        }
        return execute(&v, before: before, inst: inst, recorded: recorded, exitCode: first.exitCode,
                       exitInfo1: first.exitInfo1, nextRIP: last.nextRIP, after: after)
    }

    /// Runs `inst` from `before` against the recorded device side and fills in the verdict.
    func execute(_ v: inout Verdict, before: CPUState, inst: Instruction, recorded: [DeviceAccess], exitCode: SVMExitCode,
                 exitInfo1: UInt64, nextRIP: UInt64, after: CPUState?, compareDevice: Bool = true) -> Verdict {
        ports.begin(recorded)
        msrs.begin(recorded)
        memory.beginGroup(mmio: recorded.filter { $0.space == .mmio })
        cpu.state = before
        cpu.accessLog.removeAll(keepingCapacity: true)
        lastUnansweredMSR = false
        let result = cpu.step()
        switch result {
        case .ok, .halted, .hypercall:
            break
        case .exception(let e, _):
            v.kind = .divergence
            v.differences.append(FieldDifference("exception", recorded: "none", emulated: e.description))
            v.reproduction = reproduction(before)
            return v
        case .tripleFault:
            v.kind = .divergence
            v.differences.append(FieldDifference("exception", recorded: "none", emulated: "triple fault"))
            v.reproduction = reproduction(before)
            return v
        case .unsupported(let b):
            v.kind = .unsupported
            v.bytes = b.isEmpty ? v.bytes : b
            v.note = "the executor does not run this instruction"
            return v
        case .unbackedMemory(let a):
            if let d = memory.unansweredDevice, compareDevice {
                v.kind = .divergence
                v.differences.append(FieldDifference("mmio", recorded: describe(memory.recordedMMIO),
                                                     emulated: "read \(Hex.string(d.address)) size \(d.size)"))
                v.reproduction = reproduction(before)
            } else {
                v.kind = .unrecorded
                v.address = a
                v.note = "unrecorded memory \(Hex.string(a))"
            }
            return v
        case .unanswered(let q):
            if case .msr = q { lastUnansweredMSR = true }
            if case .port = q, let m = ports.mismatch, compareDevice {
                v.kind = .divergence
                v.differences.append(FieldDifference("port", recorded: describe(recorded.filter { $0.space == .port }),
                                                     emulated: "in \(Hex.string(m.port)) size \(m.size)"))
                v.reproduction = reproduction(before)
            } else {
                v.kind = .unrecorded
                v.note = "unrecorded answer: \(q)"
            }
            return v
        }

        let emulated = cpu.state
        if compareDevice { compareAccesses(&v, inst: inst, recorded: recorded, exitCode: exitCode, exitInfo1: exitInfo1) }
        if nextRIP != 0 && emulated.rip != nextRIP {
            v.differences.append(FieldDifference("next_rip", recorded: Hex.string(nextRIP), emulated: Hex.string(emulated.rip)))
        }
        if let after {
            let mask = Reconstruction.undefinedFlags(inst, before: before)
            StateComparison.compare(recorded: after, emulated: emulated, flagMask: mask, into: &v.differences)
        }
        if !v.differences.isEmpty {
            v.kind = .divergence
            v.reproduction = reproduction(before)
        }
        return v
    }

    // MARK: accesses

    func compareAccesses(_ v: inout Verdict, inst: Instruction, recorded: [DeviceAccess], exitCode: SVMExitCode, exitInfo1: UInt64) {
        // Ports: item by item (string I/O that KVM batched is `count` items of one access).
        var recPorts: [PortAccess] = []
        for a in recorded where a.space == .port {
            let size = Int(a.size)
            for k in 0..<Int(a.count) {
                var val: UInt32 = 0
                for b in 0..<min(size, 4) where k * size + b < a.data.count { val |= UInt32(a.data[k * size + b]) << (8 * UInt32(b)) }
                recPorts.append(PortAccess(port: UInt16(truncatingIfNeeded: a.address), size: size, isWrite: a.isWrite, value: val))
            }
        }
        var emuPorts: [PortAccess] = []
        var emuMSR: [(index: UInt32, isWrite: Bool, value: UInt64)] = []
        for e in cpu.accessLog {
            switch e {
            case .port(let p): emuPorts.append(p)
            case .msrRead(let i, let val): emuMSR.append((i, false, val))
            case .msrWrite(let i, let val): emuMSR.append((i, true, val))
            }
        }
        if !recPorts.isEmpty || !emuPorts.isEmpty {
            if recPorts.count != emuPorts.count {
                v.differences.append(FieldDifference("port_accesses", recorded: "\(recPorts.count)", emulated: "\(emuPorts.count)"))
            }
            for k in 0..<min(recPorts.count, emuPorts.count) {
                let r = recPorts[k], e = emuPorts[k]
                let tag = recPorts.count > 1 ? "port[\(k)]." : "port."
                if r.port != e.port { v.differences.append(FieldDifference(tag + "port", recorded: Hex.string(r.port), emulated: Hex.string(e.port))) }
                if r.size != e.size { v.differences.append(FieldDifference(tag + "size", recorded: "\(r.size)", emulated: "\(e.size)")) }
                if r.isWrite != e.isWrite { v.differences.append(FieldDifference(tag + "direction", recorded: r.isWrite ? "out" : "in", emulated: e.isWrite ? "out" : "in")) }
                if r.value != e.value { v.differences.append(FieldDifference(tag + "value", recorded: Hex.string(r.value), emulated: Hex.string(e.value))) }
                if v.differences.count > 16 { break }
            }
            // EXITINFO1's string and REP bits (the APM's IOIO fields) against what the emulator did.
            if exitCode == .ioio, let e = emuPorts.first {
                let info = IOIOInfo(exitInfo1: exitInfo1)
                if info.isString != e.string { v.differences.append(FieldDifference("ioio.string", recorded: "\(info.isString)", emulated: "\(e.string)")) }
                if info.isRep != e.rep { v.differences.append(FieldDifference("ioio.rep", recorded: "\(info.isRep)", emulated: "\(e.rep)")) }
                if info.isIn == e.isWrite { v.differences.append(FieldDifference("ioio.direction", recorded: info.isIn ? "in" : "out", emulated: e.isWrite ? "out" : "in")) }
                if info.port != e.port { v.differences.append(FieldDifference("ioio.port", recorded: Hex.string(info.port), emulated: Hex.string(e.port))) }
                if info.size != e.size { v.differences.append(FieldDifference("ioio.size", recorded: "\(info.size)", emulated: "\(e.size)")) }
            }
        }
        // MMIO: address, size, direction, value of each access, in order.
        let recMMIO = recorded.filter { $0.space == .mmio }
        let emuMMIO = memory.emulatedMMIO
        if !recMMIO.isEmpty || !emuMMIO.isEmpty {
            if recMMIO.count != emuMMIO.count {
                v.differences.append(FieldDifference("mmio_accesses", recorded: describe(recMMIO), emulated: describe(emuMMIO)))
            } else {
                for k in 0..<recMMIO.count {
                    let r = recMMIO[k], e = emuMMIO[k]
                    let tag = recMMIO.count > 1 ? "mmio[\(k)]." : "mmio."
                    if r.address != e.address { v.differences.append(FieldDifference(tag + "gpa", recorded: Hex.string(r.address), emulated: Hex.string(e.address))) }
                    if r.size != e.size { v.differences.append(FieldDifference(tag + "size", recorded: "\(r.size)", emulated: "\(e.size)")) }
                    if r.isWrite != e.isWrite { v.differences.append(FieldDifference(tag + "direction", recorded: r.isWrite ? "write" : "read", emulated: e.isWrite ? "write" : "read")) }
                    if r.value != e.value { v.differences.append(FieldDifference(tag + "value", recorded: Hex.string(r.value), emulated: Hex.string(e.value))) }
                }
            }
        }
        // MSRs: index, direction, value.
        let recMSR = recorded.filter { $0.space == .msr }
        if !recMSR.isEmpty || !emuMSR.isEmpty {
            if recMSR.count != emuMSR.count {
                v.differences.append(FieldDifference("msr_accesses", recorded: "\(recMSR.count)", emulated: "\(emuMSR.count)"))
            } else {
                for k in 0..<recMSR.count {
                    let r = recMSR[k], e = emuMSR[k]
                    if r.address != UInt64(e.index) { v.differences.append(FieldDifference("msr.index", recorded: Hex.string(r.address), emulated: Hex.string(e.index))) }
                    if r.isWrite != e.isWrite { v.differences.append(FieldDifference("msr.direction", recorded: r.isWrite ? "wrmsr" : "rdmsr", emulated: e.isWrite ? "wrmsr" : "rdmsr")) }
                    if r.value != e.value { v.differences.append(FieldDifference("msr.value", recorded: Hex.string(r.value), emulated: Hex.string(e.value))) }
                }
            }
        }
    }

    func describe(_ a: [DeviceAccess]) -> String {
        if a.isEmpty { return "none" }
        return a.map { "\($0.isWrite ? "write" : "read") \(Hex.string($0.address)) size \($0.size) value \(Hex.string($0.value))" }
            .joined(separator: ", ")
    }

    func reproduction(_ before: CPUState) -> Reproduction {
        var mem = memory.contents()
        // exec has no devices: recorded MMIO reads become memory holding the answer.
        for a in memory.recordedMMIO where !a.isWrite { mem.append((a.address, Array(a.data.prefix(Int(a.size))))) }
        for a in memory.recordedMMIO where a.isWrite && !mem.contains(where: { $0.gpa == a.address }) {
            mem.append((a.address, [UInt8](repeating: 0, count: Int(a.size))))
        }
        return Reproduction(state: before, memory: mem, ports: ports.answersByPort, msrs: msrs.answers, cpuid: header.cpuid)
    }

    // MARK: completions and steps

    /// A completion: the VMM ran this emulator itself; replaying it checks the record is consistent.
    func replayCompletion(_ r: TraceRecord) -> Verdict {
        var v = simple(r, .self)
        v.reference = "vmm"
        guard let inst = v.instruction else {
            v.kind = r.instructionBytes.isEmpty ? .unlocated : .unsupported
            return v
        }
        for m in r.memory { memory.load(m.gpa, m.bytes) }
        var w = v
        _ = execute(&w, before: r.state, inst: inst, recorded: r.accesses, exitCode: r.exitCode, exitInfo1: r.exitInfo1,
                    nextRIP: r.nextRIP, after: r.stateAfter)
        if w.kind == .match { return v }
        w.reference = "vmm"
        return w
    }

    func isRepString(_ r: TraceRecord) -> Bool {
        guard let b = r.instructionBytes.first(where: { $0 != 0x66 && $0 != 0x67 && !(0x26...0x3E).contains($0) && $0 != 0x64 && $0 != 0x65 }),
              b == 0xF3 || b == 0xF2 else { return false }
        if case .success(let inst) = decode(bytes: r.instructionBytes, mode: DecoderMode(r.state.mode)) {
            return inst.hasRep || inst.hasRepne
        }
        return false
    }

    /// A single-stepped instruction (or the steps of one REP instruction's iterations): its
    /// after-state is the next record of the vCPU. An instruction that exits to the VMM gets no
    /// step after it: it is checked as its exit record, not twice.
    func replayStep(_ steps: ArraySlice<TraceRecord>, next: RecordHead?) -> (Verdict?, OpenStep?) {
        guard let r = steps.first else { return (nil, nil) }
        var v = simple(r, .match, records: steps.count)
        guard let inst = v.instruction else {
            v.kind = r.instructionBytes.isEmpty ? .unlocated : .unsupported
            return (v, nil)
        }
        let exits = next.map { $0.kind == .exit && $0.instructionStart == r.instructionStart } ?? false
        if exits, let n = next, (n.visibility == .pending && n.stateAfter == nil) || isRepString(r) {
            v.kind = .notReplayable
            v.note = "the stepped instruction exited: checked as its exit"
            return (v, nil)
        }
        for s in steps { for m in s.memory { memory.load(m.gpa, m.bytes) } }
        var before = r.state
        Reconstruction.applyMSRs(knownMSRs, to: &before)
        var w = v
        w = execute(&w, before: before, inst: inst, recorded: [], exitCode: .none, exitInfo1: 0, nextRIP: 0, after: nil,
                    compareDevice: false)
        if deviceAnswerMissing {
            // It needed a device: it exited, and its exit record holds the device side.
            v.kind = .notReplayable
            v.note = "the stepped instruction exited: checked as its exit"
            return (v, nil)
        }
        guard w.kind == .match else { return (w, nil) }
        var open = OpenStep(verdict: w, emulated: cpu.state, flagMask: Reconstruction.undefinedFlags(inst, before: before),
                            start: r.instructionStart, isRep: steps.count > 1 || isRepString(r), msrs: knownMSRs)
        open.verdict.reproduction = reproduction(before)
        guard let next else { return (nil, open) }
        return (StepCheck.close(open, next: next), nil)
    }

    /// The last execution stopped because a port, MMIO or MSR answer was not in the record.
    var deviceAnswerMissing: Bool {
        ports.mismatch != nil || memory.unansweredDevice != nil || lastUnansweredMSR
    }

}

/// Closes a step's comparison with the record that follows it on its vCPU.
public enum StepCheck {
    public static func close(_ open: OpenStep, next: RecordHead?) -> Verdict {
        var v = open.verdict
        guard let next else {
            v.kind = .incomplete
            v.note = "last step of the trace: no state after it"
            v.reproduction = nil
            return v
        }
        if open.isRep && next.kind == .step && next.instructionStart == open.start && next.state.rip == open.start {
            v.kind = .incomplete
            v.note = "REP iterations continue in the next frame"
            v.reproduction = nil
            return v
        }
        let after: CPUState?
        switch next.kind {
        case .step:
            after = next.state
        case .exit:
            if next.instructionStart == open.start && next.visibility == .committed {
                // The stepped instruction exited: its committed record shows the state after it.
                after = next.lastFragment ? next.state : nil
            } else if next.instructionStart == open.start && next.visibility == .pending {
                after = next.stateAfter
            } else {
                // The next instruction exited (its own step is not recorded): its state before.
                after = next.stateBefore
            }
        default:
            after = nil
        }
        guard var after else {
            v.kind = .notReplayable
            v.note = next.kind == .exit ? "the stepped instruction exited: checked as its exit" : "next record is a \(next.kind.name): no state after the step"
            v.reproduction = nil
            return v
        }
        Reconstruction.applyMSRs(open.msrs, to: &after)
        StateComparison.compare(recorded: after, emulated: open.emulated, flagMask: open.flagMask, into: &v.differences)
        if v.differences.isEmpty {
            v.reproduction = nil
        } else {
            v.kind = .divergence
        }
        return v
    }
}
