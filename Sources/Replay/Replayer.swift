import Trace
import X86
import X86Emulator

/// A record read in place. Replay's hot path passes records and states by pointer: a large
/// struct passed by value from memory is copied whole (1.2 KB a record, 600 bytes a state) at
/// each call that may write memory, which nearly every call here does.
typealias RecordPointer = UnsafePointer<TraceRecord>
/// A state read in place (see `RecordPointer`).
typealias StatePointer = UnsafePointer<CPUState>

/// Where a record's fields read in place lie, found once per user (static constants would be
/// checked for initialization at every use).
struct TraceRecordLayout {
    let stateOffset = MemoryLayout<TraceRecord>.offset(of: \TraceRecord.state)!
    let instructionBytesOffset = MemoryLayout<TraceRecord>.offset(of: \TraceRecord.instructionBytes)!
    let memoryOffset = MemoryLayout<TraceRecord>.offset(of: \TraceRecord.memory)!

    /// The record's `state`, in place.
    @inline(__always) func state(_ r: RecordPointer) -> StatePointer {
        (UnsafeRawPointer(r) + stateOffset).assumingMemoryBound(to: CPUState.self)
    }

    /// The identity of the record's `instructionBytes` storage, read without retaining it (see
    /// `ArrayIdentity`).
    @inline(__always) func instructionBytesIdentity(_ r: RecordPointer) -> UInt {
        (UnsafeRawPointer(r) + instructionBytesOffset).load(as: UInt.self)
    }

    /// The identity of the record's guest-bytes list.
    @inline(__always) func memoryIdentity(_ r: RecordPointer) -> UInt {
        (UnsafeRawPointer(r) + memoryOffset).load(as: UInt.self)
    }
}

/// An array's storage reference as a number: equal for two arrays that share one storage (so
/// hold the same elements). Reading a record's array through a pointer to compare it retained
/// and released it; its one word is read instead. (An array is one reference on this platform:
/// `MemoryLayout<[UInt8]>.size` is a word, checked where the replayer starts.)
enum ArrayIdentity {
    @inline(__always) static func of<T>(_ a: borrowing [T]) -> UInt {
        withUnsafePointer(to: a) { UnsafeRawPointer($0).load(as: UInt.self) }
    }
    /// The identity of empty arrays (they share one storage).
    @inline(__always) static var empty: UInt { of([UInt8]()) }
}

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
        stateBefore = StepCheck.exitStateBefore(r)
    }
}

/// The part of an instruction group (the exits of one instruction) read so far. A group whose
/// fragments run past its frame's end is carried to the next frame of its vCPU by the merge.
struct GroupCarry: Sendable {
    /// The first fragment.
    var first: TraceRecord
    /// Records (fragments) so far.
    var count: Int
    /// The fragment number the next record must have to continue the group.
    var nextFragment: UInt32
    var accesses: [DeviceAccess]
    /// Guest bytes of every fragment, loaded only when the group is replayed.
    var memory: [GuestBytes]
    /// WRMSR accesses of the group's MSR exits: the frame knows them after the group.
    var msrUpdates: [(UInt32, UInt64)]
    /// Save-area MSRs known when the group started.
    var knownMSRs: [UInt32: UInt64] = [:]
}

/// Fragments at the start of a frame that continue a group begun in an earlier frame.
struct GroupContinuation: Sendable {
    var group: UInt64
    var firstFragment: UInt32
    var count: Int
    var accesses: [DeviceAccess]
    var memory: [GuestBytes]
    var msrUpdates: [(UInt32, UInt64)]
    /// The last fragment read (the one that finished the group, when `finished`).
    var last: TraceRecord
    var finished: Bool
    /// Each fragment's verdict if no carried group takes them (`incomplete`, as one record each).
    var orphanVerdicts: [Verdict]
}

/// Counts of verdicts that were counted where they were made instead of being delivered one by
/// one (matches, mostly); merged into the summary in any order, since counts add.
struct VerdictCounts: Sendable {
    var verdicts: UInt64 = 0
    var records: UInt64 = 0
    var byKind = [UInt64](repeating: 0, count: VerdictKind.allCases.count)
    /// The (record kind, SVM exit code) pairs counted, in the order first seen; their counts by
    /// verdict kind are `reasonCounts[i * kindCount + kind]` (one flat array: no nested array to
    /// check for uniqueness per record).
    var reasons: [(kind: RecordKind, code: SVMExitCode)] = []
    var reasonCounts: [UInt64] = []
    static let kindCount = VerdictKind.allCases.count
    var byMnemonic: [UInt16: UInt64] = [:]
    /// cpu, kvm-emulator, vmm.
    var byReference: (UInt64, UInt64, UInt64) = (0, 0, 0)
    var forms: Set<InstructionForm> = []
    // Per-record lookups served without hashing: the last reason, recent mnemonics and forms.
    /// Index into `reasons` by a hash of the pair, -1 when empty: a step trace alternates between
    /// two reasons (STEP and an exit), each found without a search.
    private var reasonSlots = [Int](repeating: -1, count: 16)
    /// Counts by mnemonic not yet in `byMnemonic`, in a few slots chosen by the mnemonic's low
    /// bits: a loop alternates between a few mnemonics, each counted without hashing.
    private var mnemonicSlots = [(mnemonic: UInt16, count: UInt64)](repeating: (0, 0), count: 16)
    private var seenForms = [InstructionForm?](repeating: nil, count: 64)
    /// The last two kinds of verdict counted, with how many of each are not tallied yet: a loop
    /// repeats a few instructions, so most records only add one to a run here (no arrays touched).
    private var run0 = Run(), run1 = Run()
    /// Which run was added to last (the other is replaced by a new kind).
    private var lastRun = 0

    /// Verdicts that count alike: the fields `add` reads.
    private struct Run {
        var kind: VerdictKind = .match
        var records = 0
        var recordKind: RecordKind = .exit
        var exitCode: SVMExitCode = .none
        var reference = ""
        var decoded: DecodedInstruction?
        /// Verdicts in the run not yet tallied (0: the run is empty).
        var count: UInt64 = 0

        @inline(__always) func holds(_ kind: VerdictKind, _ records: Int, _ recordKind: RecordKind, _ exitCode: SVMExitCode,
                                     _ reference: String, _ decoded: DecodedInstruction?) -> Bool {
            count > 0 && self.decoded === decoded && self.kind == kind && self.records == records
                && self.recordKind == recordKind && self.exitCode == exitCode && self.reference == reference
        }
    }

    var isEmpty: Bool { verdicts == 0 }

    mutating func add(_ v: Verdict) {
        add(kind: v.kind, records: v.records, recordKind: v.recordKind, exitCode: v.exitCode, reference: v.reference, decoded: v.decoded)
    }

    /// `add` from the fields it counts (the replayer's scratch verdict is not copied for it).
    mutating func add(kind: VerdictKind, records n: Int, recordKind: RecordKind, exitCode: SVMExitCode, reference: String,
                      decoded: DecodedInstruction?) {
        verdicts += 1
        records += UInt64(n)
        if run0.holds(kind, n, recordKind, exitCode, reference, decoded) {
            run0.count += 1
            lastRun = 0
        } else if run1.holds(kind, n, recordKind, exitCode, reference, decoded) {
            run1.count += 1
            lastRun = 1
        } else {
            newRun(kind: kind, records: n, recordKind: recordKind, exitCode: exitCode, reference: reference, decoded: decoded)
        }
    }

    /// Tallies the run used less recently and starts a new one in its place.
    @inline(never) private mutating func newRun(kind: VerdictKind, records n: Int, recordKind: RecordKind, exitCode: SVMExitCode,
                                                reference: String, decoded: DecodedInstruction?) {
        let run = Run(kind: kind, records: n, recordKind: recordKind, exitCode: exitCode, reference: reference, decoded: decoded, count: 1)
        if lastRun == 0 {
            tally(run1)
            run1 = run
            lastRun = 1
        } else {
            tally(run0)
            run0 = run
            lastRun = 0
        }
    }

    /// Tallies both runs (before the counts are read).
    private mutating func flushRuns() {
        tally(run0)
        tally(run1)
        run0 = Run()
        run1 = Run()
    }

    private mutating func tally(_ r: Run) {
        guard r.count > 0 else { return }
        tally(kind: r.kind, recordKind: r.recordKind, exitCode: r.exitCode, reference: r.reference, decoded: r.decoded, times: r.count)
    }

    /// Adds `times` verdicts alike to the counts by kind, reason, reference, mnemonic and form.
    private mutating func tally(kind: VerdictKind, recordKind: RecordKind, exitCode: SVMExitCode, reference: String,
                                decoded: DecodedInstruction?, times: UInt64) {
        let k = kind.index
        byKind[k] += times
        let h = Int(truncatingIfNeeded: (exitCode.rawValue ^ exitCode.rawValue >> 4 ^ UInt64(recordKind.rawValue) &* 5) & 15)
        var i = reasonSlots[h]
        if i < 0 || reasons[i].kind != recordKind || reasons[i].code != exitCode {
            i = reasonIndex(recordKind, exitCode)
            reasonSlots[h] = i
        }
        reasonCounts[i &* Self.kindCount &+ k] += times
        // `==` rather than a `switch` on the string, which copied it per record.
        if reference.isEmpty {
        } else if reference == "kvm-emulator" {
            byReference.1 += times
        } else if reference == "cpu" {
            byReference.0 += times
        } else {
            byReference.2 += times
        }
        if kind == .match || kind == .divergence || kind == .self, let d = decoded {
            let m = d.instruction.mnemonic.rawValue
            let ms = Int(truncatingIfNeeded: m & 15)
            if mnemonicSlots[ms].mnemonic == m {
                mnemonicSlots[ms].count += times
            } else {
                let old = mnemonicSlots[ms]
                if old.count > 0 { byMnemonic[old.mnemonic, default: 0] += old.count }
                mnemonicSlots[ms] = (m, times)
            }
            let f = d.form
            let slot = Int(truncatingIfNeeded: (UInt64(f.mnemonic) &* 0x9E37_79B9 ^ f.operands &* 31 ^ UInt64(f.rep)) & 63)
            if seenForms[slot] != f {
                forms.insert(f)
                seenForms[slot] = f
            }
        }
    }

    /// The index of a reason in `reasons`, added when new.
    @inline(never) private mutating func reasonIndex(_ recordKind: RecordKind, _ exitCode: SVMExitCode) -> Int {
        if let i = reasons.firstIndex(where: { $0.kind == recordKind && $0.code == exitCode }) { return i }
        reasons.append((recordKind, exitCode))
        reasonCounts.append(contentsOf: repeatElement(0, count: Self.kindCount))
        return reasons.count - 1
    }

    private mutating func flushMnemonic() {
        for k in 0..<mnemonicSlots.count where mnemonicSlots[k].count > 0 {
            byMnemonic[mnemonicSlots[k].mnemonic, default: 0] += mnemonicSlots[k].count
            mnemonicSlots[k].count = 0
        }
    }

    /// Adds these counts to `summary` (reason and mnemonic names made here, once per frame).
    mutating func merge(into summary: inout ReplaySummary) {
        flushRuns()
        flushMnemonic()
        guard verdicts > 0 else { return }
        summary.verdicts += verdicts
        summary.records += records
        let kinds = VerdictKind.allCases
        for (k, n) in byKind.enumerated() where n > 0 { summary.byKind[kinds[k], default: 0] += n }
        for (i, (recordKind, code)) in reasons.enumerated() {
            let reason = recordKind == .exit ? code.name : recordKind.name.uppercased()
            for k in 0..<Self.kindCount {
                let n = reasonCounts[i * Self.kindCount + k]
                if n > 0 { summary.byReason[reason, default: [:]][kinds[k], default: 0] += n }
            }
        }
        for (m, n) in byMnemonic { summary.byMnemonic[Mnemonic(rawValue: m)?.name ?? "?", default: 0] += n }
        if byReference.0 > 0 { summary.byReference["cpu", default: 0] += byReference.0 }
        if byReference.1 > 0 { summary.byReference["kvm-emulator", default: 0] += byReference.1 }
        if byReference.2 > 0 { summary.byReference["vmm", default: 0] += byReference.2 }
        summary.forms.formUnion(forms)
    }
}

extension VerdictKind {
    /// Position in `allCases`.
    var index: Int {
        switch self {
        case .match: return 0
        case .divergence: return 1
        case .unrecorded: return 2
        case .unsupported: return 3
        case .ambiguous: return 4
        case .unlocated: return 5
        case .unreconstructable: return 6
        case .incomplete: return 7
        case .self: return 8
        case .notReplayable: return 9
        }
    }
}

/// The outcome of one frame, in record order, with what crosses the frame's edges.
struct FrameResult: Sendable {
    var vcpu: UInt16
    var records: UInt64 = 0
    /// Verdicts delivered one by one, in sequence order.
    var verdicts: [Verdict] = []
    /// The others, counted.
    var counts = VerdictCounts()
    /// The frame's last step, waiting for the next frame of its vCPU.
    var openStep: OpenStep?
    /// The frame's first record, which closes the previous frame's open step.
    var head: RecordHead?
    /// Fragments at the frame's start continuing a group of an earlier frame.
    var continuation: GroupContinuation?
    /// A group the frame's end cut: the next frame of the vCPU continues it.
    var openGroup: GroupCarry?
}

/// Decoded instruction bytes, remembered by address: traces replay the same few instructions
/// over and over, and each is needed several times per record.
final class DecodeMemo {
    /// The key is the bytes packed into two words (at most 15 bytes, the length in the top byte):
    /// compared without touching the arrays, nothing retained per lookup.
    struct Entry {
        var start: UInt64 = 0
        var lo: UInt64 = 0
        var hi: UInt64 = 0
        var mode: DecoderMode = .bits16
        var used = false
        var decoded: DecodedInstruction?
        /// The byte array last looked up here: the trace decoder shares one array per distinct
        /// instruction, so the same storage (kept alive by this reference) means the same bytes.
        var bytes: [UInt8] = []
        /// `bytes`' storage identity (set with it).
        var identity: UInt = ArrayIdentity.empty
    }
    private var entries = [Entry](repeating: Entry(), count: 256)
    let layout = TraceRecordLayout()

    /// `decode` of a record's instruction bytes, read in place: a hit compares the storage's
    /// identity and touches no reference count.
    /// `identity`: the identity of `r`'s instruction bytes.
    func decode(_ r: RecordPointer, identity: UInt, mode: DecoderMode) -> DecodedInstruction? {
        let start = r.pointee.instructionStart
        let i = Int(truncatingIfNeeded: (start ^ start >> 8) & 255)
        if entries[i].used && entries[i].start == start && entries[i].mode == mode
            && entries[i].identity == identity && !r.pointee.instructionBytes.isEmpty {
            return entries[i].decoded
        }
        return decode(r.pointee.instructionBytes, start: start, mode: mode)
    }

    /// `decode(_:identity:mode:)` into `target`, which is assigned only when it changes: a hit on
    /// the decoding `target` already holds touches no reference count.
    @inline(__always) func decode(_ r: RecordPointer, identity: UInt, mode: DecoderMode, into target: inout DecodedInstruction?) {
        let start = r.pointee.instructionStart
        let i = Int(truncatingIfNeeded: (start ^ start >> 8) & 255)
        if entries[i].used && entries[i].start == start && entries[i].mode == mode
            && entries[i].identity == identity && !r.pointee.instructionBytes.isEmpty {
            if target !== entries[i].decoded { target = entries[i].decoded }
            return
        }
        let d = decode(r.pointee.instructionBytes, start: start, mode: mode)
        if target !== d { target = d }
    }

    func decode(_ bytes: [UInt8], start: UInt64, mode: DecoderMode) -> DecodedInstruction? {
        guard bytes.count <= 15 else { return Self.decodeNow(bytes, mode: mode) }
        let i = Int(truncatingIfNeeded: (start ^ start >> 8) & 255)
        if entries[i].used && entries[i].start == start && entries[i].mode == mode
            && Replayer.sameStorage(entries[i].bytes, bytes) && !bytes.isEmpty {
            return entries[i].decoded
        }
        return decodePacked(bytes, start: start, mode: mode, slot: i)
    }

    private func decodePacked(_ bytes: [UInt8], start: UInt64, mode: DecoderMode, slot i: Int) -> DecodedInstruction? {
        var lo: UInt64 = 0, hi = UInt64(bytes.count) << 56
        bytes.withUnsafeBufferPointer { b in
            for k in 0..<b.count {
                if k < 8 { lo |= UInt64(b[k]) << (8 * UInt64(k)) } else { hi |= UInt64(b[k]) << (8 * UInt64(k - 8)) }
            }
        }
        if entries[i].used && entries[i].start == start && entries[i].lo == lo && entries[i].hi == hi && entries[i].mode == mode {
            entries[i].bytes = bytes
            entries[i].identity = ArrayIdentity.of(bytes)
            return entries[i].decoded
        }
        let d = Self.decodeNow(bytes, mode: mode)
        entries[i] = Entry(start: start, lo: lo, hi: hi, mode: mode, used: true, decoded: d, bytes: bytes,
                           identity: ArrayIdentity.of(bytes))
        return d
    }

    private static func decodeNow(_ bytes: [UInt8], mode: DecoderMode) -> DecodedInstruction? {
        if case .success(let x) = X86Emulator.decode(bytes: bytes, mode: mode) { return DecodedInstruction(x) }
        return nil
    }
}

/// A wrong emulator result on purpose: the test double of replay's own checks. After the
/// executor runs an instruction with this mnemonic, general-purpose register `register`
/// (0 = RAX ... 15 = R15, the ModRM order) is XORed with `xor`; replay must then report a
/// divergence naming that register.
public struct InjectedFault: Sendable, Equatable {
    public var mnemonic: String
    public var register: Int
    public var xor: UInt64
    public init(mnemonic: String, register: Int, xor: UInt64) {
        self.mnemonic = mnemonic
        self.register = register
        self.xor = xor
    }
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
    /// The last step raised an exception that went through the IDT.
    var lastDelivered = false
    /// The step being replayed is followed by an event record (something delivered after it).
    var stepFollowedByEvent = false
    /// Save-area MSR values written so far in this frame.
    var knownMSRs: [UInt32: UInt64] = [:]
    /// Which verdicts the frame's result lists one by one; the others it counts.
    var delivery: VerdictDelivery = .all
    /// Nil except in tests of replay itself (`InjectedFault`).
    var injectedFault: InjectedFault?
    let memo = DecodeMemo()
    // Scratch reused per record.
    private var recPorts: [PortAccess] = []
    private var emuPorts: [PortAccess] = []
    private var emuMSR: [(index: UInt32, isWrite: Bool, value: UInt64)] = []
    private var mmioScratch: [DeviceAccess] = []
    private var out = FrameResult(vcpu: 0)
    /// The records `replayFrame` reads into, in place: the current one, a held step, and the
    /// one before the current (see `replayFrame`).
    private let slots: UnsafeMutablePointer<TraceRecord>
    private static let slotCount = 3
    /// The state before a step with the known save-area MSRs applied (when there are any).
    private let stepBefore: UnsafeMutablePointer<CPUState>
    /// The state before an exit's instruction (rebuilt for a committed exit, MSRs applied).
    private let exitBefore: UnsafeMutablePointer<CPUState>
    /// The committed exit whose rebuilt before-state (no MSRs applied) `exitBefore` holds: the
    /// check of the step before an exit rebuilds it, and the exit's own replay then uses it.
    /// (Its slot and sequence number; nil: none.)
    private var exitBeforeHolds: UnsafeRawPointer?
    private var exitBeforeSeq: UInt64 = 0
    private let layout = TraceRecordLayout()
    /// The guest-bytes lists stored last (see `loadGuestBytes`).
    private var loadedLists: ((identity: UInt, generation: UInt64, list: [GuestBytes]),
                              (identity: UInt, generation: UInt64, list: [GuestBytes])) = ((0, 0, []), (0, 0, []))

    public init(header: TraceHeader) {
        precondition(MemoryLayout<[UInt8]>.size == MemoryLayout<UInt>.size, "ArrayIdentity needs an array to be one reference")
        slots = .allocate(capacity: Self.slotCount)
        slots.initialize(repeating: TraceRecord(kind: .exit), count: Self.slotCount)
        stepBefore = .allocate(capacity: 1)
        stepBefore.initialize(to: CPUState())
        exitBefore = .allocate(capacity: 1)
        exitBefore.initialize(to: CPUState())
        self.header = header
        cpuid = HeaderCPUID(header.cpuid)
        cpu = X86Executor(state: CPUState(), memory: memory, ports: ports, cpuid: header.cpuid.isEmpty ? nil : cpuid,
                          msrs: msrs, tsc: nil)
        kvmEmulatesCPL0 = header.kvmBackend == "kvm_pvm"
        memory.deviceRanges = header.memory.filter { $0.name != "ram" && $0.size > 0 }
            .map { ($0.gpa, $0.gpa &+ $0.size) }
    }

    deinit {
        slots.deinitialize(count: Self.slotCount)
        slots.deallocate()
        stepBefore.deinitialize(count: 1)
        stepBefore.deallocate()
        exitBefore.deinitialize(count: 1)
        exitBefore.deallocate()
    }

    func reference(_ s: CPUState) -> String {
        reference(cpl: s.cpl)
    }

    @inline(__always) func reference(cpl: UInt8) -> String {
        kvmEmulatesCPL0 && cpl == 0 ? "kvm-emulator" : "cpu"
    }

    func decoded(_ r: borrowing TraceRecord) -> DecodedInstruction? {
        memo.decode(r.instructionBytes, start: r.instructionStart, mode: DecoderMode(r.state.mode))
    }

    @inline(__always) func emit(_ v: Verdict) {
        if delivery == .all || v.kind.isFailure { out.verdicts.append(v) } else { out.counts.add(v) }
    }

    /// The verdict of the record being replayed, reused from record to record: a verdict that is
    /// only counted is neither copied nor destroyed.
    /// One for exits and one for steps: a single-step trace alternates between the two, and
    /// each keeps its instruction's bytes and decoding from one record to the next of its kind.
    private var scratchExit = Verdict(seq: 0, vcpu: 0, kind: .match, recordKind: .exit, exitCode: .none)
    private var scratchStep = Verdict(seq: 0, vcpu: 0, kind: .match, recordKind: .exit, exitCode: .none)

    @inline(__always) private func emitScratch(_ v: inout Verdict) {
        if delivery == .all || v.kind.isFailure {
            out.verdicts.append(v)
        } else {
            out.counts.add(kind: v.kind, records: v.records, recordKind: v.recordKind, exitCode: v.exitCode,
                           reference: v.reference, decoded: v.decoded)
        }
    }

    // MARK: frames

    // What is pending while the next record is read: a run of steps (waiting for the record after
    // them) or an instruction group (waiting for its next fragment). Plain stored properties, so
    // nothing large is copied per record.
    /// Steps in the pending run (0: none); its first step is in the held slot.
    private var pendingSteps = 0
    private var pendingStepsAreRep = false
    /// Guest bytes of the run's later steps.
    private var pendingStepMemory: [GuestBytes] = []
    /// Boxed: a nil check must not copy a whole record.
    private var pendingGroup: GroupBox?
    final class GroupBox {
        var g: GroupCarry
        init(_ g: GroupCarry) { self.g = g }
    }

    /// Replays the records of one frame (one vCPU, in order; the frame decodes alone), reading
    /// them one at a time from `decoder` into three slots, passed by pointer (never copied whole):
    /// the current record, the held first step of a pending run, and the free one. The next
    /// record goes where the record two before it was when that slot is free: a loop's records
    /// repeat their kinds (a single-step trace alternates steps and exits), and the decoder keeps
    /// a slot's instruction bytes, access list and guest-bytes list when the new record shares
    /// them, instead of swapping arrays (a retain and a release each) in every record.
    func replayFrame(_ decoder: FrameDecoder) throws -> FrameResult {
        memory.reset()
        knownMSRs.removeAll(keepingCapacity: true)
        out = FrameResult(vcpu: decoder.info.vcpu)
        pendingSteps = 0
        pendingStepMemory.removeAll(keepingCapacity: true)
        pendingGroup = nil
        if delivery == .all { out.verdicts.reserveCapacity(Int(decoder.info.recordCount)) }
        // Fresh slots per frame, as the decoder expects of a record it has not filled before.
        for k in 0..<Self.slotCount { slots[k] = TraceRecord(kind: .exit) }
        // Slot indices: the current record, the record before it, the held step (-1: none).
        var cur = 0, prev = 0, held = -1
        guard try decoder.next(into: &slots[cur]) else { return takeResult() }
        out.head = RecordHead(slots[cur])
        if slots[cur].kind == .exit && slots[cur].fragment != 0 {
            guard try readContinuation(decoder, &slots[cur]) else { return takeResult() }
        }
        while true {
            let current = RecordPointer(slots + cur)
            if pendingSteps > 0 {
                if replay(current, held: RecordPointer(slots + held)) {
                    held = cur  // a new run starts here
                } else if pendingSteps == 0 {
                    held = -1
                }
            } else if replay(current) {
                held = cur
            }
            let next: Int
            if prev != held && prev != cur {
                next = prev
            } else if held >= 0 && held != cur {
                next = Self.slotCount - cur - held  // the third slot (indices 0, 1, 2)
            } else {
                next = cur == Self.slotCount - 1 ? 0 : cur + 1
            }
            prev = cur
            cur = next
            guard try decoder.next(into: &slots[cur]) else { break }
        }
        if pendingSteps > 0 {
            let mem = pendingStepMemory
            finishStepsAtFrameEnd(slots[held], count: pendingSteps, isRep: pendingStepsAreRep, memory: mem)
            pendingSteps = 0
        }
        if let b = pendingGroup {
            pendingGroup = nil
            out.openGroup = b.g
        }
        return takeResult()
    }

    /// One record of a frame; true when it starts a step run (its slot becomes the held one).
    private func replay(_ r: RecordPointer, held: RecordPointer) -> Bool {
        if pendingSteps > 0 {
            if pendingStepsAreRep && r.pointee.kind == .step && r.pointee.instructionStart == held.pointee.instructionStart
                && r.pointee.instructionBytes == held.pointee.instructionBytes {
                // Single-step traps after each iteration of a REP string instruction: the steps
                // that stay on one instruction are its iterations, replayed as one instruction.
                pendingStepMemory.append(contentsOf: r.pointee.memory)
                pendingSteps += 1
                return false
            }
            let count = pendingSteps
            pendingSteps = 0
            finishSteps(held, count: count, isRep: pendingStepsAreRep, memory: pendingStepMemory, next: r)
            pendingStepMemory.removeAll(keepingCapacity: true)
        }
        return replay(r)
    }

    /// One record of a frame with no step run pending; true when it starts one.
    private func replay(_ r: RecordPointer) -> Bool {
        if let b = pendingGroup {
            if r.pointee.kind == .exit && r.pointee.group == b.g.first.seq && r.pointee.fragment == b.g.nextFragment {
                b.g.count += 1
                b.g.nextFragment += 1
                b.g.accesses.append(contentsOf: r.pointee.accesses)
                b.g.memory.append(contentsOf: r.pointee.memory)
                if r.pointee.exitCode == .msr { Self.collectMSRWrites(r.pointee, into: &b.g.msrUpdates) }
                if r.pointee.lastFragment {
                    pendingGroup = nil
                    finishGroup(b.g, last: r.pointee)
                }
                return false
            }
            pendingGroup = nil
            emit(replayInterrupted(b.g))
            for (i, v) in b.g.msrUpdates { knownMSRs[i] = v }
        }
        if !r.pointee.msrWrites.isEmpty {
            for w in r.pointee.msrWrites where Reconstruction.saveAreaMSRs.contains(w.index) { knownMSRs[w.index] = w.value }
        }
        switch r.pointee.kind {
        case .exit:
            if r.pointee.fragment != 0 {
                emit(simple(r.pointee, .incomplete, note: "fragment \(r.pointee.fragment) of an instruction group that starts in an earlier frame"))
                applyMSRWrites(r)
            } else if r.pointee.lastFragment {
                // The common record: replayed into the scratch verdict, which a match only counts.
                replayExit(into: &scratchExit, first: r, last: r, count: 1, accesses: r.pointee.accesses, memory: nil, lastIsFirst: true)
                emitScratch(&scratchExit)
                applyMSRWrites(r)
            } else {
                startGroup(r.pointee)
            }
        case .completion:
            emit(replayCompletion(r.pointee))
        case .step:
            pendingSteps = 1
            pendingStepsAreRep = isRepString(r)
            return true
        case .event, .gap, .marker:
            emit(simple(r.pointee, .notReplayable))
        }
        return false
    }

    /// Out of line: the copy of the record it keeps would otherwise be made on every record's path.
    @inline(never) private func startGroup(_ r: borrowing TraceRecord) {
        var msr: [(UInt32, UInt64)] = []
        if r.exitCode == .msr { Self.collectMSRWrites(r, into: &msr) }
        pendingGroup = GroupBox(GroupCarry(first: copy r, count: 1, nextFragment: 1, accesses: r.accesses,
                                           memory: r.memory, msrUpdates: msr, knownMSRs: knownMSRs))
    }

    private func takeResult() -> FrameResult {
        let result = out
        out = FrameResult(vcpu: 0)
        return result
    }

    /// Reads the fragments at a frame's start that continue a group of an earlier frame, as far
    /// as they go (the merge joins them to the group, or gives each its own `incomplete`).
    /// True when `slot` then holds the record after them, still to be replayed.
    private func readContinuation(_ decoder: FrameDecoder, _ slot: inout TraceRecord) throws -> Bool {
        var c = GroupContinuation(group: slot.group, firstFragment: slot.fragment, count: 0, accesses: [], memory: [],
                                  msrUpdates: [], last: slot, finished: false, orphanVerdicts: [])
        defer { out.continuation = c }
        while true {
            c.count += 1
            for w in slot.msrWrites where Reconstruction.saveAreaMSRs.contains(w.index) { knownMSRs[w.index] = w.value }
            applyMSRWrites(slot)
            c.accesses.append(contentsOf: slot.accesses)
            c.memory.append(contentsOf: slot.memory)
            if slot.exitCode == .msr { Self.collectMSRWrites(slot, into: &c.msrUpdates) }
            c.orphanVerdicts.append(simple(slot, .incomplete, note: "fragment \(slot.fragment) of an instruction group that starts in an earlier frame"))
            let expected = slot.fragment &+ 1
            if slot.lastFragment { c.finished = true }
            c.last = slot
            guard try decoder.next(into: &slot) else { return false }
            if c.finished || !(slot.kind == .exit && slot.group == c.group && slot.fragment == expected) { return true }
        }
    }

    static func collectMSRWrites(_ r: TraceRecord, into out: inout [(UInt32, UInt64)]) {
        guard !r.accessRefused else { return }  // the guest got #GP: the MSR kept its value
        for a in r.accesses where a.space == .msr && a.isWrite && Reconstruction.saveAreaMSRs.contains(UInt32(truncatingIfNeeded: a.address)) {
            out.append((UInt32(truncatingIfNeeded: a.address), a.value))
        }
    }

    func applyMSRWrites(_ r: RecordPointer) {
        guard r.pointee.exitCode == .msr else { return }
        applyMSRWrites(r.pointee)
    }

    func applyMSRWrites(_ r: TraceRecord) {
        guard r.exitCode == .msr, !r.accessRefused else { return }
        for a in r.accesses where a.space == .msr && a.isWrite && Reconstruction.saveAreaMSRs.contains(UInt32(truncatingIfNeeded: a.address)) {
            knownMSRs[UInt32(truncatingIfNeeded: a.address)] = a.value
        }
    }

    /// A group whose fragments spanned frames, joined by the merge: replayed from its own records'
    /// guest bytes and the save-area MSRs known where it started.
    func replayCarried(_ g: GroupCarry, last: TraceRecord) -> Verdict {
        memory.reset()
        knownMSRs = g.knownMSRs
        return replayExit(first: g.first, last: last, count: g.count, accesses: g.accesses, memory: g.memory)
    }

    /// A group left without its last fragment: the vCPU's next record is another instruction.
    /// A REP INS/OUTS whose buffer runs into a not-present page ends so: the #PF is delivered to
    /// the guest inside KVM (no exit), so the trace holds the iterations' exits and then the
    /// handler's. The group is replayed: if the emulator, fed the recorded items, raises an
    /// exception after a prefix of them, the trace is explained (a `match`, KVM's emulator the
    /// reference: it reads a batch of port items ahead, and those past the fault are discarded).
    /// Anything else stays `incomplete`. Documented in Sources/Replay/README.md.
    func replayInterrupted(_ g: GroupCarry) -> Verdict {
        let unfinished = simple(g.first, .incomplete, records: g.count, note: "instruction group not finished in the trace")
        var v = unfinished
        guard g.first.exitCode == .ioio, g.first.candidates == 1, let inst = v.decoded?.instruction,
              inst.hasRep, inst.mnemonic == .ins || inst.mnemonic == .outs,
              g.accesses.allSatisfy({ $0.space == .port }), let lastItems = g.accesses.last?.count else { return unfinished }
        for m in g.memory { memory.load(m.gpa, m.bytes) }
        var before = g.first.state
        if g.first.visibility == .committed, Reconstruction.rebuild(&before, from: g.first, inst) != nil { return unfinished }
        Reconstruction.applyMSRs(knownMSRs, to: &before)
        ports.begin(g.accesses)
        msrs.begin([], refused: false)
        memory.beginGroup(mmio: [])
        cpu.load(before, keepingCaches: !memory.changed)
        memory.changed = false
        cpu.accessLog.removeAll(keepingCapacity: true)
        guard case .exception(let e, _) = cpu.step() else { return unfinished }
        var recorded: [PortAccess] = []
        for a in g.accesses { for k in 0..<Int(a.count) { recorded.append(Self.portItem(a, k)) } }
        var emulated: [PortAccess] = []
        for x in cpu.accessLog { if case .port(let p) = x { emulated.append(p) } }
        // Every item the emulator made is the recorded one; only the last exit's batch may have
        // items past the fault.
        guard emulated.count <= recorded.count, recorded.count - emulated.count <= Int(lastItems) else { return unfinished }
        for k in 0..<emulated.count {
            comparePort(&v, recorded[k], emulated[k], tag: "port.")
            if !v.differences.isEmpty {
                conclude(&v, before: before)
                return v
            }
        }
        v.kind = .match
        v.note = "stopped by \(e.description) delivered to the guest after \(emulated.count) of the \(recorded.count) recorded items"
            + (recorded.count > emulated.count ? " (KVM's emulator read the rest ahead of the fault; they are discarded)" : "")
            + "; the state after it (the handler's) is not in the trace"
        return v
    }

    private func finishGroup(_ g: GroupCarry, last: borrowing TraceRecord) {
        emit(replayExit(first: g.first, last: last, count: g.count, accesses: g.accesses, memory: g.memory))
        for (i, v) in g.msrUpdates { knownMSRs[i] = v }
    }

    private func finishSteps(_ first: RecordPointer, count: Int, isRep: Bool, memory mem: [GuestBytes], next: RecordPointer) {
        // Into the scratch verdict, like a single-record exit: a matching step is only counted.
        replayStep(into: &scratchStep, first, count: count, isRep: isRep, laterMemory: mem, next: next)
        emitScratch(&scratchStep)
    }

    private func finishStepsAtFrameEnd(_ r: borrowing TraceRecord, count: Int, isRep: Bool, memory mem: [GuestBytes]) {
        var v = simple(r, .match, records: count)
        guard let d = v.decoded else {
            v.kind = r.instructionBytes.isEmpty ? .unlocated : .unsupported
            emit(v)
            return
        }
        var before = r.state
        Reconstruction.applyMSRs(knownMSRs, to: &before)
        var rec = copy r
        let completed = withUnsafePointer(to: &rec) { rp in
            withUnsafePointer(to: &before) { executeStep(&v, rp, inst: d.instruction, laterMemory: mem, before: $0) }
        }
        guard completed else {
            emit(v)
            return
        }
        var open = OpenStep(verdict: v, emulated: cpu.state, flagMask: Reconstruction.undefinedFlags(d.instruction, before: before),
                            start: r.instructionStart, isRep: count > 1 || isRep, msrs: knownMSRs)
        // Closed by the merge, after this replayer's memory has moved on: keep what reproduces it now.
        open.verdict.reproduction = reproduction(before)
        out.openStep = open
    }

    func simple(_ r: borrowing TraceRecord, _ kind: VerdictKind, records: Int = 1, note: String = "") -> Verdict {
        var v = Verdict(seq: r.seq, vcpu: r.vcpu, kind: kind, recordKind: r.kind, exitCode: r.exitCode, records: records,
                        rip: r.instructionStart != 0 || !r.instructionBytes.isEmpty ? r.instructionStart : r.state.rip,
                        bytes: r.instructionBytes, note: note)
        if kind != .notReplayable { v.reference = reference(r.state) }
        if !r.instructionBytes.isEmpty { v.decoded = decoded(r) }
        return v
    }

    // MARK: exits

    /// Replays an instruction group: its first and last records, the accesses of all its records,
    /// and their guest bytes (`memory`; nil for a group of one record, whose bytes `first` holds).
    func replayExit(first: borrowing TraceRecord, last: borrowing TraceRecord, count: Int, accesses recorded: [DeviceAccess],
                    memory groupMemory: [GuestBytes]?) -> Verdict {
        var v = Verdict(seq: 0, vcpu: 0, kind: .match, recordKind: .exit, exitCode: .none)
        var f = copy first, l = copy last
        withUnsafePointer(to: &f) { fp in
            withUnsafePointer(to: &l) { lp in
                replayExit(into: &v, first: fp, last: lp, count: count, accesses: recorded, memory: groupMemory)
            }
        }
        return v
    }

    /// `simple` in place: `v` becomes what `simple(r, kind, records:, note:)` returns, reusing its
    /// storage (the replayer's scratch verdict is made once per record this way, never copied).
    /// `state` is `r`'s state or the copy of it the caller runs from (its RIP, CPL and mode are read).
    func setSimple(_ v: inout Verdict, _ r: RecordPointer, state: StatePointer, _ kind: VerdictKind,
                   records: Int = 1, note: String = "") {
        v.seq = r.pointee.seq
        v.vcpu = r.pointee.vcpu
        v.kind = kind
        v.recordKind = r.pointee.kind
        v.exitCode = r.pointee.exitCode
        v.records = records
        // The bytes' storage identity, not the array: reading it through `r` retained it.
        let bytesIdentity = layout.instructionBytesIdentity(r)
        let noBytes = bytesIdentity == ArrayIdentity.empty || r.pointee.instructionBytes.isEmpty
        v.rip = r.pointee.instructionStart != 0 || !noBytes ? r.pointee.instructionStart : state.pointee.rip
        if ArrayIdentity.of(v.bytes) != bytesIdentity { v.bytes = r.pointee.instructionBytes }
        if !(v.note.isEmpty && note.isEmpty) { v.note = note }
        // Compared first: assigning the same short string still releases the old one.
        let ref = kind != .notReplayable ? reference(cpl: state.pointee.cpl) : ""
        if v.reference != ref { v.reference = ref }
        let mode = CPUState.mode(cr0: state.pointee.cr0, efer: state.pointee.efer, rflags: state.pointee.rflags,
                                 csLong: state.pointee.cs.long, csDefaultBig: state.pointee.cs.defaultBig)
        if noBytes {
            if case .some = v.decoded { v.decoded = nil }
        } else {
            memo.decode(r, identity: bytesIdentity, mode: DecoderMode(mode), into: &v.decoded)
        }
        if !v.differences.isEmpty { v.differences.removeAll(keepingCapacity: true) }
        v.address = nil
        if v.hasReproduction { v.reproduction = nil }
    }

    /// Whether the record holds a state after its instruction (`!= nil` on the optional state
    /// compared whole states: CPUState is Equatable).
    @inline(__always) static func hasStateAfter(_ r: RecordPointer) -> Bool {
        if case .some = r.pointee.stateAfter { return true }
        return false
    }

    /// Whether two arrays share one storage (or are both empty): the assignment is then skipped
    /// (it would only retain one and release the other, once per record).
    @inline(__always) static func sameStorage<T>(_ a: [T], _ b: [T]) -> Bool {
        guard a.count == b.count else { return false }
        if a.isEmpty { return true }
        return a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in pa.baseAddress == pb.baseAddress } }
    }

    /// `replayExit` into `v` (every field overwritten).
    /// `lastIsFirst`: `first` and `last` are one record.
    func replayExit(into v: inout Verdict, first: RecordPointer, last: RecordPointer, count: Int,
                    accesses recorded: [DeviceAccess], memory groupMemory: [GuestBytes]?, lastIsFirst: Bool = false) {
        let firstState = layout.state(first)
        switch first.pointee.exitCode {
        case .ioio, .npf, .msr, .hlt, .vmmcall: break
        default:
            setSimple(&v, first, state: firstState, .notReplayable, records: count)
            return
        }
        if first.pointee.candidates > 1 {
            setSimple(&v, first, state: firstState, .ambiguous, records: count, note: "\(first.pointee.candidates) instructions end at RIP and perform the access")
            return
        }
        if first.pointee.instructionBytes.isEmpty || first.pointee.candidates == 0 {
            setSimple(&v, first, state: firstState, .unlocated, records: count, note: "the recorder found no instruction performing the access")
            return
        }
        setSimple(&v, first, state: firstState, .match, records: count)
        guard let inst = v.decoded?.instruction else {
            v.kind = .unsupported
            v.note = "the bytes do not decode"
            return
        }
        if let groupMemory {
            for m in groupMemory { memory.load(m.gpa, m.bytes) }
        } else {
            loadGuestBytes(first)
        }

        // The state before the instruction: the record's own when it is pending and no MSRs are
        // known, else rebuilt in the replayer's buffer (where the check of the step before it
        // may have rebuilt it already).
        let rebuilt = exitBeforeHolds == UnsafeRawPointer(first) && exitBeforeSeq == first.pointee.seq
        exitBeforeHolds = nil
        let before: StatePointer
        if first.pointee.visibility != .committed && knownMSRs.isEmpty {
            before = firstState
        } else {
            if !(rebuilt && first.pointee.visibility == .committed) {
                exitBefore.pointee = firstState.pointee
                if first.pointee.visibility == .committed, let why = Reconstruction.rebuild(&exitBefore.pointee, from: first, inst) {
                    v.kind = .unreconstructable
                    v.note = why.message
                    return
                }
            }
            Reconstruction.applyMSRs(knownMSRs, to: &exitBefore.pointee)
            before = StatePointer(exitBefore)
        }
        // Rebuilt by the step check, which compared it with the executor: unchanged unless MSRs
        // were applied to it.
        let matched = rebuilt && first.pointee.visibility == .committed && knownMSRs.isEmpty
        guard run(&v, before: before, inst: inst, recorded: recorded, exitCode: first.pointee.exitCode, exitInfo1: first.pointee.exitInfo1,
                  hasAfter: last.pointee.visibility == .committed || Self.hasStateAfter(last),
                  refused: first.pointee.exitCode == .msr && last.pointee.accessRefused, matched: matched) else {
            return
        }
        compareNextRIP(&v, recorded: last.pointee.nextRIP, emulated: cpu.instructionPointer, inst: inst)
        // The state after: committed exits show it; pending ones only with --fidelity full.
        // Compared in place unless it needs adjusting, and with the executor's registers: its
        // whole state is built only when they differ.
        let mask = Reconstruction.undefinedFlags(inst, at: before)
        let isRep = inst.hasRep || inst.hasRepne
        if last.pointee.visibility == .committed {
            if (isRep && last.pointee.state.rip == first.pointee.instructionStart) || !knownMSRs.isEmpty {
                var after = last.pointee.state
                adjustAfter(&after, isRep: isRep, start: first.pointee.instructionStart, nextRIP: last.pointee.nextRIP)
                StateComparison.compare(recorded: after, executor: cpu, flagMask: mask, into: &v.differences)
            } else {
                StateComparison.compare(recorded: layout.state(last), executor: cpu, flagMask: mask, into: &v.differences)
            }
        } else if Self.hasStateAfter(last), var after = last.pointee.stateAfter {
            adjustAfter(&after, isRep: isRep, start: first.pointee.instructionStart, nextRIP: last.pointee.nextRIP)
            StateComparison.compare(recorded: after, executor: cpu, flagMask: mask, into: &v.differences)
        }
        conclude(&v, before: before)
    }

    func adjustAfter(_ after: inout CPUState, isRep: Bool, start: UInt64, nextRIP: UInt64) {
        if isRep && after.rip == start {
            // KVM exits on a REP string's last iteration before it retires the instruction: the
            // iteration took effect (RCX is 0) but RIP moves on only at re-entry.
            after.rip = nextRIP
            after.rflags &= ~RFLAGS.rf  // set while it was between iterations; retiring clears it
        }
        Reconstruction.applyMSRs(knownMSRs, to: &after)
    }

    func compareNextRIP(_ v: inout Verdict, recorded nextRIP: UInt64, emulated: UInt64, inst: Instruction) {
        // nRIP is the next sequential instruction (as SVM defines it), which a control transfer
        // (RET through an MMIO stack, JMP through an MMIO pointer) does not go to: its target is
        // checked only against a recorded after-state.
        if nextRIP != 0 && emulated != nextRIP && !Self.transfersControl(inst) {
            v.differences.append(FieldDifference("next_rip", recorded: Hex.string(nextRIP), emulated: Hex.string(emulated)))
        }
    }

    /// Any difference makes the verdict a divergence, with what reproduces it.
    func conclude(_ v: inout Verdict, before: CPUState) {
        if !v.differences.isEmpty {
            v.kind = .divergence
            v.reproduction = reproduction(before)
        }
    }

    /// `conclude` with the state before read in place.
    @inline(__always) func conclude(_ v: inout Verdict, before: StatePointer) {
        if !v.differences.isEmpty { concludeDivergence(&v, before: before) }
    }

    @inline(never) func concludeDivergence(_ v: inout Verdict, before: StatePointer) {
        v.kind = .divergence
        v.reproduction = reproduction(before.pointee)
    }

    /// Instructions whose next RIP is not the sequential one when they complete.
    static func transfersControl(_ inst: Instruction) -> Bool {
        switch inst.mnemonic {
        case .jmp, .call, .ret, .retf, .iret, .iretd, .iretq, .int, .int3, .into, .syscall, .sysret, .sysretq,
             .sysenter, .sysexit, .sysexitq, .loop, .loope, .loopne, .jcxz, .jecxz, .jrcxz,
             .ja, .jae, .jb, .jbe, .je, .jne, .jg, .jge, .jl, .jle, .jo, .jno, .jp, .jnp, .js, .jns:
            return true
        default:
            return false
        }
    }

    /// Runs `inst` from `before` against the recorded device side and fills in the verdict.
    func execute(_ v: inout Verdict, before: CPUState, inst: Instruction, recorded: [DeviceAccess], exitCode: SVMExitCode,
                 exitInfo1: UInt64, nextRIP: UInt64, after: CPUState?, compareDevice: Bool = true) {
        let completed = withUnsafePointer(to: before) {
            run(&v, before: $0, inst: inst, recorded: recorded, exitCode: exitCode, exitInfo1: exitInfo1,
                hasAfter: after != nil, compareDevice: compareDevice)
        }
        guard completed else { return }
        let emulated = cpu.state
        compareNextRIP(&v, recorded: nextRIP, emulated: emulated.rip, inst: inst)
        if let after {
            let mask = Reconstruction.undefinedFlags(inst, before: before)
            StateComparison.compare(recorded: after, emulated: emulated, flagMask: mask, into: &v.differences)
        }
        conclude(&v, before: before)
    }

    /// Runs `inst` from `before` with the recorded device side and compares the accesses; false
    /// when the verdict is final already (the instruction did not complete).
    /// `hasAfter`: the trace holds the state after the instruction.
    /// `refused`: the record says the VMM refused its MSR access and the guest got #GP(0).
    /// `before` is read in place (the record's state or a replayer buffer), never copied.
    /// `matched`: `before` is the replayer's exit buffer as the step check compared it with the
    /// executor, unchanged since (the executor then loads only what may differ).
    func run(_ v: inout Verdict, before: StatePointer, inst: Instruction, recorded: [DeviceAccess], exitCode: SVMExitCode,
             exitInfo1: UInt64, hasAfter: Bool, compareDevice: Bool = true, refused: Bool = false, matched: Bool = false) -> Bool {
        if recorded.isEmpty || (recorded.count == 1 && recorded[0].space == .port && recorded[0].isWrite) {
            // Nothing to answer (a step, an OUT): only last record's answers to drop.
            ports.begin([])
            msrs.begin([], refused: refused)
            memory.beginGroup([])
        } else {
            ports.begin(recorded)
            msrs.begin(recorded, refused: refused)
            memory.beginGroup(recorded)
        }
        // Caches survive from record to record unless memory changed under them.
        if matched {
            cpu.load(from: before, keepingCaches: !memory.changed, matched: true)
        } else {
            cpu.load(from: before, keepingCaches: !memory.changed)
        }
        memory.changed = false
        // One event (a port access) is the common log: removeLast is cheaper than removeAll's
        // generic range replacement; both keep the capacity.
        if cpu.accessLog.count == 1 { cpu.accessLog.removeLast() } else { cpu.accessLog.removeAll(keepingCapacity: true) }
        lastUnansweredMSR = false
        let result = cpu.step()
        if let f = injectedFault, f.mnemonic == inst.mnemonic.name, (0..<16).contains(f.register) {
            var s = cpu.state
            s.setGPR(f.register, s.gpr(f.register) ^ f.xor)
            cpu.load(s, keepingCaches: true)
        }
        if refused {
            judgeRefusal(&v, result: result, before: before.pointee, inst: inst, recorded: recorded)
            return false
        }
        switch result {
        case .ok, .halted, .hypercall:
            break
        case .exception(let e, delivered: true):
            // Only steps deliver exceptions (executeStep): the state after is the handler's.
            v.note = "raised \(e.description), delivered through the IDT"
            lastDelivered = true
        case .exception(let e, _) where stepFollowedByEvent:
            // The recorder saw a delivery after this step (an event record), and no state after
            // it: the exception agrees with that, and there is nothing more to compare.
            v.kind = .notReplayable
            v.note = "raised \(e.description); the next record is an event (a delivery between steps): no state after the step to compare"
            return false
        case .exception(let e, _):
            // A pending exit without an after-state shows only that the instruction made its
            // device accesses (DIV by an MMIO zero: the read, then #DE). An exception raised after
            // all of them, with them all as recorded, is not contradicted by the trace.
            if !hasAfter, compareDevice, !recorded.isEmpty {
                var probe = v
                compareAccesses(&probe, inst: inst, recorded: recorded, exitCode: exitCode, exitInfo1: exitInfo1)
                if probe.differences.isEmpty {
                    v.note = "raised \(e.description) after the recorded accesses; the trace holds no state after the instruction to compare (--fidelity full records it)"
                    return false
                }
            }
            v.kind = .divergence
            v.differences.append(FieldDifference("exception", recorded: "none", emulated: e.description))
            v.reproduction = reproduction(before.pointee)
            return false
        case .tripleFault:
            v.kind = .divergence
            v.differences.append(FieldDifference("exception", recorded: "none", emulated: "triple fault"))
            v.reproduction = reproduction(before.pointee)
            return false
        case .unsupported(let b):
            v.kind = .unsupported
            v.bytes = b.isEmpty ? v.bytes : b
            v.note = "the executor does not run this instruction"
            return false
        case .unbackedMemory(let a):
            if let d = memory.unansweredDevice, compareDevice {
                v.kind = .divergence
                v.differences.append(FieldDifference("mmio", recorded: describe(memory.recordedMMIO),
                                                     emulated: "read \(Hex.string(d.address)) size \(d.size)"))
                v.reproduction = reproduction(before.pointee)
            } else {
                v.kind = .unrecorded
                v.address = a
                v.note = "unrecorded memory \(Hex.string(a))"
            }
            return false
        case .unanswered(let q):
            if case .msr = q { lastUnansweredMSR = true }
            if case .port = q, let m = ports.mismatch, compareDevice {
                v.kind = .divergence
                v.differences.append(FieldDifference("port", recorded: describe(recorded.filter { $0.space == .port }),
                                                     emulated: "in \(Hex.string(m.port)) size \(m.size)"))
                v.reproduction = reproduction(before.pointee)
            } else {
                v.kind = .unrecorded
                v.note = "unrecorded answer: \(q)"
            }
            return false
        }

        if compareDevice { compareAccesses(&v, inst: inst, recorded: recorded, exitCode: exitCode, exitInfo1: exitInfo1) }
        return true
    }

    /// A refused MSR access matches when the emulator raises #GP(0) on that RDMSR/WRMSR, at CPL 0
    /// (a #GP for privilege would not have exited), with ECX and, for WRMSR, EDX:EAX as recorded;
    /// the state after it (inside the #GP handler) is not compared.
    func judgeRefusal(_ v: inout Verdict, result: StepResult, before: CPUState, inst: Instruction, recorded: [DeviceAccess]) {
        let want = "#GP(0)"
        switch result {
        case .exception(let e, _) where e.vector == CPUException.gp && e.errorCode == 0:
            guard let a = recorded.first(where: { $0.space == .msr }) else {
                v.differences.append(FieldDifference("msr_accesses", recorded: "0", emulated: "1"))
                break
            }
            let isWrite = inst.mnemonic == .wrmsr
            if inst.mnemonic != .wrmsr && inst.mnemonic != .rdmsr {
                v.differences.append(FieldDifference("mnemonic", recorded: a.isWrite ? "wrmsr" : "rdmsr", emulated: inst.mnemonic.name))
            } else if a.isWrite != isWrite {
                v.differences.append(FieldDifference("msr.direction", recorded: a.isWrite ? "wrmsr" : "rdmsr", emulated: isWrite ? "wrmsr" : "rdmsr"))
            }
            if before.cpl != 0 { v.differences.append(FieldDifference("cpl", recorded: "0 (an MSR exit)", emulated: "\(before.cpl)")) }
            let index = before.rcx & 0xFFFF_FFFF
            if a.address != index { v.differences.append(FieldDifference("msr.index", recorded: Hex.string(a.address), emulated: Hex.string(index))) }
            let value = (before.rdx & 0xFFFF_FFFF) << 32 | (before.rax & 0xFFFF_FFFF)
            if a.isWrite && isWrite && a.value != value {
                v.differences.append(FieldDifference("msr.value", recorded: Hex.string(a.value), emulated: Hex.string(value)))
            }
            if v.differences.isEmpty { v.note = "refused: #GP(0) as the VMM gave the guest" }
        case .exception(let e, _):
            v.differences.append(FieldDifference("exception", recorded: want, emulated: e.description))
        case .tripleFault:
            v.differences.append(FieldDifference("exception", recorded: want, emulated: "triple fault"))
        case .ok, .halted, .hypercall:
            v.differences.append(FieldDifference("msr.refused", recorded: want, emulated: "completed"))
        case .unsupported(let b):
            v.kind = .unsupported
            v.bytes = b.isEmpty ? v.bytes : b
            v.note = "the executor does not run this instruction"
            return
        case .unbackedMemory(let a):
            v.kind = .unrecorded
            v.address = a
            v.note = "unrecorded memory \(Hex.string(a))"
            return
        case .unanswered(let q):
            if case .msr = q { lastUnansweredMSR = true }
            v.kind = .unrecorded
            v.note = "unrecorded answer: \(q)"
            return
        }
        conclude(&v, before: before)
    }

    // MARK: accesses

    /// Item `k` of a recorded port access as the emulator reports one.
    @inline(__always) static func portItem(_ a: DeviceAccess, _ k: Int) -> PortAccess {
        let size = Int(a.size)
        var val: UInt32 = 0
        for b in 0..<min(size, 4) where k * size + b < a.data.count { val |= UInt32(a.data[k * size + b]) << (8 * UInt32(b)) }
        return PortAccess(port: UInt16(truncatingIfNeeded: a.address), size: size, isWrite: a.isWrite, value: val)
    }

    func comparePort(_ v: inout Verdict, _ r: PortAccess, _ e: PortAccess, tag: String) {
        if r.port != e.port { v.differences.append(FieldDifference(tag + "port", recorded: Hex.string(r.port), emulated: Hex.string(e.port))) }
        if r.size != e.size { v.differences.append(FieldDifference(tag + "size", recorded: "\(r.size)", emulated: "\(e.size)")) }
        if r.isWrite != e.isWrite { v.differences.append(FieldDifference(tag + "direction", recorded: r.isWrite ? "out" : "in", emulated: e.isWrite ? "out" : "in")) }
        if r.value != e.value { v.differences.append(FieldDifference(tag + "value", recorded: Hex.string(r.value), emulated: Hex.string(e.value))) }
    }

    /// EXITINFO1's string and REP bits (the APM's IOIO fields) against what the emulator did.
    func compareIOIO(_ v: inout Verdict, exitInfo1: UInt64, _ e: PortAccess) {
        let info = IOIOInfo(exitInfo1: exitInfo1)
        if info.isString != e.string { v.differences.append(FieldDifference("ioio.string", recorded: "\(info.isString)", emulated: "\(e.string)")) }
        if info.isRep != e.rep { v.differences.append(FieldDifference("ioio.rep", recorded: "\(info.isRep)", emulated: "\(e.rep)")) }
        if info.isIn == e.isWrite { v.differences.append(FieldDifference("ioio.direction", recorded: info.isIn ? "in" : "out", emulated: e.isWrite ? "out" : "in")) }
        if info.port != e.port { v.differences.append(FieldDifference("ioio.port", recorded: Hex.string(info.port), emulated: Hex.string(e.port))) }
        if info.size != e.size { v.differences.append(FieldDifference("ioio.size", recorded: "\(info.size)", emulated: "\(e.size)")) }
    }

    func compareAccesses(_ v: inout Verdict, inst: Instruction, recorded: [DeviceAccess], exitCode: SVMExitCode, exitInfo1: UInt64) {
        // The common case, one port item each way (IN, OUT): compared without building the lists.
        if recorded.count == 1, recorded[0].space == .port, recorded[0].count == 1, cpu.accessLog.count == 1,
           case .port(let e) = cpu.accessLog[0], memory.emulatedMMIO.isEmpty {
            let r = Self.portItem(recorded[0], 0)
            // Equal in every compared field (the usual case): nothing to record.
            if r.port == e.port && r.size == e.size && r.isWrite == e.isWrite && r.value == e.value {
                guard exitCode == .ioio else { return }
                let info = IOIOInfo(exitInfo1: exitInfo1)
                if info.isString == e.string && info.isRep == e.rep && info.isIn != e.isWrite && info.port == e.port
                    && info.size == e.size { return }
            }
            comparePort(&v, r, e, tag: "port.")
            if exitCode == .ioio { compareIOIO(&v, exitInfo1: exitInfo1, e) }
            return
        }
        // Ports: item by item (string I/O that KVM batched is `count` items of one access).
        recPorts.removeAll(keepingCapacity: true)
        for a in recorded where a.space == .port {
            for k in 0..<Int(a.count) { recPorts.append(Self.portItem(a, k)) }
        }
        emuPorts.removeAll(keepingCapacity: true)
        emuMSR.removeAll(keepingCapacity: true)
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
                comparePort(&v, r, e, tag: recPorts.count > 1 ? "port[\(k)]." : "port.")
                if v.differences.count > 16 { break }
            }
            if exitCode == .ioio, let e = emuPorts.first { compareIOIO(&v, exitInfo1: exitInfo1, e) }
        }
        // MMIO: address, size, direction, value of each access, in order.
        let recMMIO = recorded.filter { $0.space == .mmio }
        let emuMMIO = memory.emulatedMMIO
        if !recMMIO.isEmpty || !emuMMIO.isEmpty {
            if inst.mnemonic == .ins, recMMIO.count != emuMMIO.count || zip(recMMIO, emuMMIO).contains(where: { $0.size != $1.size }),
               recMMIO.allSatisfy(\.isWrite), emuMMIO.allSatisfy(\.isWrite) {
                // KVM's emulator (the reference here) writes a REP INS batch to MMIO in 8-byte
                // pieces, a CPU one item at a time: the same bytes at the same addresses.
                if Self.writtenBytes(recMMIO) != Self.writtenBytes(emuMMIO) {
                    v.differences.append(FieldDifference("mmio_bytes", recorded: describe(recMMIO), emulated: describe(emuMMIO)))
                }
                v.reference = "kvm-emulator"
                v.note = "KVM's emulator wrote the batch to MMIO as \(recMMIO.count) pieces, the emulator as \(emuMMIO.count) items; compared byte by byte"
            } else if recMMIO.count != emuMMIO.count {
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

    /// The bytes a list of MMIO writes left at each address (a later write wins).
    static func writtenBytes(_ writes: [DeviceAccess]) -> [UInt64: UInt8] {
        var out: [UInt64: UInt8] = [:]
        for w in writes {
            for k in 0..<min(Int(w.size), w.data.count) { out[w.address &+ UInt64(k)] = w.data[k] }
        }
        return out
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
        guard let inst = v.decoded?.instruction else {
            v.kind = r.instructionBytes.isEmpty ? .unlocated : .unsupported
            return v
        }
        for m in r.memory { memory.load(m.gpa, m.bytes) }
        var w = v
        execute(&w, before: r.state, inst: inst, recorded: r.accesses, exitCode: r.exitCode, exitInfo1: r.exitInfo1,
                nextRIP: r.nextRIP, after: r.stateAfter)
        if w.kind == .match { return v }
        w.reference = "vmm"
        return w
    }

    func isRepString(_ r: RecordPointer) -> Bool {
        guard r.pointee.instructionBytes.contains(where: { $0 == 0xF3 || $0 == 0xF2 }) else { return false }
        return isRepString(r.pointee)
    }

    func isRepString(_ r: TraceRecord) -> Bool {
        guard let b = r.instructionBytes.first(where: { $0 != 0x66 && $0 != 0x67 && !(0x26...0x3E).contains($0) && $0 != 0x64 && $0 != 0x65 }),
              b == 0xF3 || b == 0xF2 else { return false }
        if let d = decoded(r) { return d.instruction.hasRep || d.instruction.hasRepne }
        return false
    }

    /// A single-stepped instruction (or the `count` steps of one REP instruction's iterations,
    /// whose later steps brought `laterMemory`): its after-state is the next record of the vCPU,
    /// `next`. An instruction that exits to the VMM gets no step after it: it is checked as its
    /// exit record, not twice.
    func replayStep(into v: inout Verdict, _ r: RecordPointer, count: Int, isRep: Bool, laterMemory: [GuestBytes],
                    next: RecordPointer) {
        // The state the step runs from: its recorded state, or with the save-area MSRs known so
        // far a copy of it in the replayer's buffer. (Those MSRs are none of the fields
        // `setSimple` reads: RIP, CPL, mode.)
        let before: StatePointer
        if knownMSRs.isEmpty {
            before = layout.state(r)
        } else {
            stepBefore.pointee = r.pointee.state
            Reconstruction.applyMSRs(knownMSRs, to: &stepBefore.pointee)
            before = StatePointer(stepBefore)
        }
        setSimple(&v, r, state: before, .match, records: count)
        // The instruction, copied once out of the shared decoding for the calls below.
        guard let inst = v.decoded?.instruction else {
            v.kind = r.pointee.instructionBytes.isEmpty ? .unlocated : .unsupported
            return
        }
        if next.pointee.kind == .exit, next.pointee.instructionStart == r.pointee.instructionStart,
           (next.pointee.visibility == .pending && !Self.hasStateAfter(next)) || isRep {
            v.kind = .notReplayable
            v.note = "the stepped instruction exited: checked as its exit"
            return
        }
        stepFollowedByEvent = next.pointee.kind == .event
        defer { stepFollowedByEvent = false }
        guard executeStep(&v, r, inst: inst, laterMemory: laterMemory, before: before) else { return }
        if lastDelivered && next.pointee.kind == .step && next.pointee.state.rip != cpu.instructionPointer {
            // kvm_pvm runs the handler's first instruction without a single-step trap (as after
            // IRET): the next step is one instruction into the handler, not its entry.
            v.kind = .notReplayable
            v.note += "; the next step is past the handler's entry \(Hex.string(cpu.instructionPointer)): kvm_pvm ran its first instruction without a single-step trap"
            return
        }
        let rebuiltNext = StepCheck.close(&v, executor: cpu, flagMask: Reconstruction.undefinedFlags(inst, at: before),
                                          start: r.pointee.instructionStart, isRep: count > 1 || isRep, msrs: knownMSRs,
                                          nextRecord: next, nextState: layout.state(next), memo: memo, rebuildInto: exitBefore)
        if rebuiltNext {
            exitBeforeHolds = UnsafeRawPointer(next)
            exitBeforeSeq = next.pointee.seq
        }
        if v.kind == .divergence && kvmEmulatesCPL0 && inst.mnemonic == .cpuid
            && v.differences.allSatisfy({ ["rax", "rbx", "rcx", "rdx"].contains($0.field) }) {
            // Not an emulator fault: the guest saw the host's CPUID (see VerdictKind.notReplayable).
            v.kind = .notReplayable
            v.note = "CPUID leaf \(Hex.string(before.pointee.rax & 0xFFFF_FFFF)) subleaf \(Hex.string(before.pointee.rcx & 0xFFFF_FFFF)): the guest saw the host's values, not the trace header's table (kvm_pvm does not apply KVM_SET_CPUID2)"
            v.reproduction = nil
            return
        }
        if v.kind == .divergence { v.reproduction = reproduction(before.pointee) }
    }

    static func withKnownMSRs(_ s: CPUState, _ known: [UInt32: UInt64]) -> CPUState {
        var c = s
        Reconstruction.applyMSRs(known, to: &c)
        return c
    }

    /// Runs a step from `before` (its recorded state with the known save-area MSRs). True when it
    /// completed, to be compared with the next record's state; else `v` is final.
    func executeStep(_ v: inout Verdict, _ r: RecordPointer, inst: Instruction, laterMemory: [GuestBytes],
                     before: StatePointer) -> Bool {
        loadGuestBytes(r)
        for m in laterMemory { memory.load(m.gpa, m.bytes) }
        // A stepped instruction that faults (DIV by zero) traps next at its handler: the exception
        // goes through the IDT as on the CPU, and the handler's state is what the next step shows.
        cpu.deliverExceptions = !stepFollowedByEvent
        lastDelivered = false
        // No device side, next RIP or after-state to compare here (`execute` without them).
        let completed = run(&v, before: before, inst: inst, recorded: [], exitCode: .none, exitInfo1: 0, hasAfter: false,
                            compareDevice: false)
        cpu.deliverExceptions = false
        if completed { conclude(&v, before: before) }
        if deviceAnswerMissing {
            // It needed a device: it exited, and its exit record holds the device side.
            v.kind = .notReplayable
            v.note = "the stepped instruction exited: checked as its exit"
            v.differences = []
            v.address = nil
            v.reproduction = nil
            v.bytes = r.pointee.instructionBytes
            return false
        }
        return v.kind == .match
    }

    /// Stores the record's guest bytes in replay memory, unless the same list (the same storage:
    /// a loop's records share it) was stored since memory last changed, so it is all there.
    func loadGuestBytes(_ r: RecordPointer) {
        let identity = layout.memoryIdentity(r)
        let generation = memory.generation
        if loadedLists.0.identity == identity && loadedLists.0.generation == generation
            || loadedLists.1.identity == identity && loadedLists.1.generation == generation {
            return
        }
        let list = r.pointee.memory
        for m in list { memory.load(m.gpa, m.bytes) }
        // Kept (so its storage cannot be reused by another list while it is remembered), with
        // the generation after storing it.
        loadedLists.1 = loadedLists.0
        loadedLists.0 = (identity, memory.generation, list)
    }

    /// The last execution stopped because a port, MMIO or MSR answer was not in the record.
    var deviceAnswerMissing: Bool {
        ports.mismatch != nil || memory.unansweredDevice != nil || lastUnansweredMSR
    }

}

/// Closes a step's comparison with the record that follows it on its vCPU.
public enum StepCheck {
    /// For an exit record: the state before its instruction (as shown when pending, rebuilt when committed).
    static func exitStateBefore(_ r: borrowing TraceRecord, memo: DecodeMemo? = nil) -> CPUState? {
        var s = CPUState()
        return exitStateBefore(r, memo: memo, into: &s) ? s : nil
    }

    /// `exitStateBefore` into `s` (one copy of the record's state); false when there is none.
    static func exitStateBefore(_ r: borrowing TraceRecord, memo: DecodeMemo?, into s: inout CPUState) -> Bool {
        guard r.kind == .exit, r.visibility == .pending || r.visibility == .committed else { return false }
        s = r.state
        var rec = copy r
        return withUnsafePointer(to: &rec) { rebuildBefore($0, memo: memo, state: &s) }
    }

    /// `exitStateBefore` with `s` already holding `r`'s state: rebuilt in place.
    static func rebuildBefore(_ r: RecordPointer, memo: DecodeMemo?, state s: inout CPUState) -> Bool {
        guard r.pointee.kind == .exit else { return false }
        if r.pointee.visibility == .pending { return true }
        guard r.pointee.visibility == .committed, r.pointee.candidates == 1, r.pointee.fragment == 0 else { return false }
        let inst: Instruction
        if let memo {
            // The mode from its registers: `s.mode` copied the whole state.
            let mode = CPUState.mode(cr0: s.cr0, efer: s.efer, rflags: s.rflags, csLong: s.cs.long, csDefaultBig: s.cs.defaultBig)
            guard let d = memo.decode(r, identity: memo.layout.instructionBytesIdentity(r), mode: DecoderMode(mode)) else { return false }
            inst = d.instruction
        } else {
            guard case .success(let i) = decode(bytes: r.pointee.instructionBytes, mode: DecoderMode(s.mode)) else { return false }
            inst = i
        }
        return Reconstruction.rebuild(&s, from: r, inst) == nil
    }

    /// With the next record of the vCPU as the merge keeps it (from the next frame).
    public static func close(_ open: OpenStep, next: RecordHead?) -> Verdict {
        var v = open.verdict
        guard let next else {
            v.kind = .incomplete
            v.note = "last step of the trace: no state after it"
            v.reproduction = nil
            return v
        }
        close(&v, emulated: open.emulated, flagMask: open.flagMask, start: open.start, isRep: open.isRep, msrs: open.msrs,
              kind: next.kind, visibility: next.visibility, instructionStart: next.instructionStart,
              lastFragment: next.lastFragment, state: next.state, stateAfter: next.stateAfter, stateBefore: next.stateBefore)
        return v
    }

    /// With the next record itself (in the same frame). The same rules as the general `close`
    /// below, read from the borrowed record: only the state that shows the result is looked at,
    /// and copied only when it must be adjusted (save-area MSRs) or rebuilt (a committed exit).
    /// `executor` holds the step's result (its state is built only if it differs).
    /// `rebuildInto`: where the state before a next committed exit is rebuilt; true when it then
    /// holds that state (MSRs not applied).
    @discardableResult
    static func close(_ v: inout Verdict, executor emulated: X86Executor, flagMask: UInt64, start: UInt64, isRep: Bool,
                      msrs: [UInt32: UInt64], nextRecord next: RecordPointer, nextState: StatePointer, memo: DecodeMemo?,
                      rebuildInto rebuilt: UnsafeMutablePointer<CPUState>) -> Bool {
        let kind = next.pointee.kind
        if isRep && kind == .step && next.pointee.instructionStart == start && next.pointee.state.rip == start {
            v.kind = .incomplete
            v.note = "REP iterations continue in the next frame"
            v.reproduction = nil
            return false
        }
        switch kind {
        case .step:
            compareAfter(&v, recorded: nextState, emulated: emulated, flagMask: flagMask, msrs: msrs)
            return false
        case .exit:
            if next.pointee.instructionStart == start && next.pointee.visibility == .committed {
                // The stepped instruction exited: its committed record shows the state after it.
                if next.pointee.lastFragment {
                    compareAfter(&v, recorded: nextState, emulated: emulated, flagMask: flagMask, msrs: msrs)
                    return false
                }
            } else if next.pointee.instructionStart == start && next.pointee.visibility == .pending {
                if let after = next.pointee.stateAfter {
                    withUnsafePointer(to: after) { compareAfter(&v, recorded: $0, emulated: emulated, flagMask: flagMask, msrs: msrs) }
                    return false
                }
            } else if next.pointee.visibility == .pending {
                // The state before the next (exiting) instruction, whose own step is not
                // recorded: a pending exit shows it as it is.
                compareAfter(&v, recorded: nextState, emulated: emulated, flagMask: flagMask, msrs: msrs)
                return false
            } else {
                // Rebuilt from a committed exit, into `rebuilt` (the exit's replay uses it too).
                rebuilt.pointee = next.pointee.state
                if rebuildBefore(next, memo: memo, state: &rebuilt.pointee) {
                    compareAfter(&v, recorded: rebuilt, emulated: emulated, flagMask: flagMask, msrs: msrs)
                    return true
                }
            }
        default:
            break
        }
        v.kind = .notReplayable
        v.note = kind == .exit ? "the stepped instruction exited: checked as its exit" : "next record is a \(kind.name): no state after the step"
        v.reproduction = nil
        return false
    }

    /// The comparison that ends `close`: `recorded` with the known save-area MSRs applied.
    private static func compareAfter(_ v: inout Verdict, recorded: StatePointer, emulated: X86Executor,
                                     flagMask: UInt64, msrs: [UInt32: UInt64]) {
        if msrs.isEmpty {
            StateComparison.compare(recorded: recorded, executor: emulated, flagMask: flagMask, into: &v.differences)
        } else {
            var after = recorded.pointee
            Reconstruction.applyMSRs(msrs, to: &after)
            StateComparison.compare(recorded: after, executor: emulated, flagMask: flagMask, into: &v.differences)
        }
        if v.differences.isEmpty {
            if v.hasReproduction { v.reproduction = nil }
        } else {
            v.kind = .divergence
        }
    }

    /// Compares the step's emulated state with what the next record shows after it.
    static func close(_ v: inout Verdict, emulated: CPUState, flagMask: UInt64, start: UInt64, isRep: Bool, msrs: [UInt32: UInt64],
                      kind: RecordKind, visibility: Visibility, instructionStart: UInt64, lastFragment: Bool,
                      state: CPUState, stateAfter: CPUState?, stateBefore: CPUState?) {
        if isRep && kind == .step && instructionStart == start && state.rip == start {
            v.kind = .incomplete
            v.note = "REP iterations continue in the next frame"
            v.reproduction = nil
            return
        }
        // Which state shows the result: the next step's, the exit's after-state, or the state
        // before the next (exiting) instruction, whose own step is not recorded.
        enum Source { case state, stateAfter, stateBefore, none }
        let source: Source
        switch kind {
        case .step:
            source = .state
        case .exit:
            if instructionStart == start && visibility == .committed {
                // The stepped instruction exited: its committed record shows the state after it.
                source = lastFragment ? .state : .none
            } else if instructionStart == start && visibility == .pending {
                source = stateAfter != nil ? .stateAfter : .none
            } else {
                source = stateBefore != nil ? .stateBefore : .none
            }
        default:
            source = .none
        }
        switch source {
        case .none:
            v.kind = .notReplayable
            v.note = kind == .exit ? "the stepped instruction exited: checked as its exit" : "next record is a \(kind.name): no state after the step"
            v.reproduction = nil
            return
        case .state where msrs.isEmpty:
            StateComparison.compare(recorded: state, emulated: emulated, flagMask: flagMask, into: &v.differences)
        default:
            var after: CPUState
            switch source {
            case .stateAfter: after = stateAfter ?? state
            case .stateBefore: after = stateBefore ?? state
            default: after = state
            }
            Reconstruction.applyMSRs(msrs, to: &after)
            StateComparison.compare(recorded: after, emulated: emulated, flagMask: flagMask, into: &v.differences)
        }
        if v.differences.isEmpty {
            v.reproduction = nil
        } else {
            v.kind = .divergence
        }
    }
}
