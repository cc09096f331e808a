import Trace
import X86
import X86Emulator

/// What replaying one record (or one instruction group) concluded.
public enum VerdictKind: String, Sendable, CaseIterable, Comparable {
    /// The emulator did what the trace says the reference did.
    case match
    /// The emulator did something else: `differences` names each field.
    ///
    /// Under `record --single-step` with several vCPUs, a step's operand bytes are read from guest
    /// memory at its debug exit and the instruction runs in the vCPU's next KVM_RUN; the VMM runs
    /// the vCPUs in lockstep (VMM/GuestToken.swift) so that no other vCPU stores to them in
    /// between. (Without it, smp's spinlock XCHG diverged in the loaded value in about 1 of 3
    /// recordings.)
    case divergence
    /// The emulator needed a byte (or an answer) the recorder did not store.
    case unrecorded
    /// The emulator does not run this instruction (`bytes`).
    case unsupported
    /// The recorder found several instructions that end at RIP and perform the access.
    case ambiguous
    /// The recorder found no instruction that performs the access (or none at all).
    case unlocated
    /// A committed exit whose state before the instruction cannot be rebuilt exactly.
    case unreconstructable
    /// An instruction group whose fragments are not all in the trace.
    ///
    /// Rule for a group the guest, not the trace, left unfinished (the vCPU's next record is at
    /// another instruction): a REP INS/OUTS ended by an exception delivered to the guest inside
    /// KVM (a #PF as its buffer runs into a not-present page; no exit shows it) is replayed from
    /// its recorded items, and is a `match` when the emulator raises an exception after a prefix
    /// of them, every one equal to the recorded one, with only the last exit's batch left over
    /// (KVM's emulator reads a batch of port items ahead; those past the fault are discarded,
    /// which a CPU, reading one item per iteration, would not do: KVM's emulator is the reference).
    /// Anything else stays `incomplete` (`Replayer.replayInterrupted`).
    case incomplete
    /// A completion: the VMM performed the instruction with this very emulator; checked for
    /// consistency, never counted as agreement with hardware.
    case `self`
    /// Records that are not instructions (events, gaps, markers) or exits without one; and steps
    /// whose result the trace cannot show because of how kvm_pvm single-steps (each says why in
    /// its note):
    /// - after IRET/SYSRET and after an exception's delivery, kvm_pvm runs the next instruction
    ///   (the return target, the handler's entry) without a trap, so no step shows the state
    ///   right after (a gap record, or a note on the faulting step);
    /// - CPUID: on kvm_pvm the guest's CPUID returns the host's values, not the KVM_SET_CPUID2
    ///   table in the trace header that the emulator answers from (KVM's instruction emulator does
    ///   gate on that table: MOVBE at CPL0 raises #UD although the guest's CPUID reports it); the
    ///   recorded and emulated values stay in `differences`.
    case notReplayable = "not-replayable"

    public static func < (a: Self, b: Self) -> Bool { a.order < b.order }
    private var order: Int { Self.allCases.firstIndex(of: self) ?? 0 }

    /// Kinds that make `exitscope replay` fail unless allowed.
    public var isFailure: Bool {
        switch self {
        case .match, .self, .notReplayable: return false
        default: return true
        }
    }
}

/// One field that differs: its name, the recorded value and the emulated one (as text).
public struct FieldDifference: Equatable, Sendable {
    public var field: String
    public var recorded: String
    public var emulated: String
    public init(_ field: String, recorded: String, emulated: String) {
        self.field = field
        self.recorded = recorded
        self.emulated = emulated
    }
}

/// What an `exec` input needs to reproduce a verdict (EXEC.md): the state before, the memory
/// the replay had, and the device answers.
public struct Reproduction: Sendable {
    public var state: CPUState
    public var memory: [(gpa: UInt64, bytes: [UInt8])]
    public var ports: [UInt16: [UInt32]]
    public var msrs: [UInt32: UInt64]
    public var cpuid: [CPUIDEntry]
}

/// A decoded instruction and its form, shared by the verdicts on it.
final class DecodedInstruction: Sendable {
    let instruction: Instruction
    let form: InstructionForm
    init(_ i: Instruction) {
        instruction = i
        form = InstructionForm(i)
    }
}

final class ReproductionBox: Sendable {
    let value: Reproduction
    init(_ value: Reproduction) { self.value = value }
}

/// The verdict on one record or instruction group (named by the seq of its first record).
public struct Verdict: Sendable {
    public var seq: UInt64
    public var vcpu: UInt16
    public var kind: VerdictKind
    /// What the emulator was compared with: "cpu" (the processor ran it), "kvm-emulator" (KVM's
    /// instruction emulator ran it: kvm_pvm at CPL0), "vmm" (a completion), "" for non-replayable.
    public var reference: String = ""
    public var recordKind: RecordKind
    public var exitCode: SVMExitCode
    /// The records the group spans.
    public var records: Int
    public var rip: UInt64
    public var bytes: [UInt8]
    /// The decoded instruction, when the bytes decode.
    public var instruction: Instruction? {
        get { decoded?.instruction }
        set { decoded = newValue.map(DecodedInstruction.init) }
    }
    /// Out of line and shared: replay decodes each instruction once (DecodeMemo) and every
    /// verdict on it refers to the same box.
    var decoded: DecodedInstruction?
    public var differences: [FieldDifference] = []
    /// The unrecorded address, when `kind == .unrecorded` and memory was missing.
    public var address: UInt64?
    public var note: String
    /// Kept for divergences only: the state before and what reproduces it.
    public var reproduction: Reproduction? {
        get { reproductionBox?.value }
        set { reproductionBox = newValue.map(ReproductionBox.init) }
    }
    /// Out of line: a state and memory runs are large, and every verdict is moved several times
    /// while only divergences carry one.
    private var reproductionBox: ReproductionBox?
    /// Without unboxing (a scratch verdict checks it per record).
    var hasReproduction: Bool { reproductionBox != nil }

    public init(seq: UInt64, vcpu: UInt16, kind: VerdictKind, recordKind: RecordKind, exitCode: SVMExitCode,
                records: Int = 1, rip: UInt64 = 0, bytes: [UInt8] = [], note: String = "") {
        self.seq = seq
        self.vcpu = vcpu
        self.kind = kind
        self.recordKind = recordKind
        self.exitCode = exitCode
        self.records = records
        self.rip = rip
        self.bytes = bytes
        self.note = note
    }

    /// The record's reason as `show` names it ("IOIO", "NPF", "STEP", ...).
    public var reason: String { recordKind == .exit ? exitCode.name : recordKind.name.uppercased() }
    public var mnemonic: String { decoded?.instruction.mnemonic.name ?? "" }
    /// Mnemonic with operand kinds and sizes ("out imm8,r8"): the instruction form checked.
    public var form: String { decoded?.form.text ?? "" }
    /// Intel-syntax text.
    public var text: String { instruction?.text(address: rip) ?? "" }

    /// One line of `replay --json`, keys in a fixed order (output is byte-identical run to run).
    public func jsonLine() -> String {
        var parts: [String] = []
        parts.append("\"seq\":\(seq)")
        parts.append("\"vcpu\":\(vcpu)")
        parts.append("\"verdict\":\(jsonString(kind.rawValue))")
        parts.append("\"reference\":\(jsonString(reference))")
        parts.append("\"reason\":\(jsonString(reason))")
        parts.append("\"records\":\(records)")
        parts.append("\"rip\":\(jsonString(Hex.string(rip)))")
        parts.append("\"mnemonic\":\(jsonString(mnemonic))")
        parts.append("\"form\":\(jsonString(form))")
        parts.append("\"text\":\(jsonString(text))")
        parts.append("\"bytes\":\(jsonString(Hex.bytes(bytes, separator: UInt8(ascii: " "))))")
        let diffs = differences.map {
            "{\"field\":\(jsonString($0.field)),\"recorded\":\(jsonString($0.recorded)),\"emulated\":\(jsonString($0.emulated))}"
        }
        parts.append("\"differences\":[\(diffs.joined(separator: ","))]")
        if let a = address { parts.append("\"address\":\(jsonString(Hex.string(a)))") }
        if !note.isEmpty { parts.append("\"note\":\(jsonString(note))") }
        return "{" + parts.joined(separator: ",") + "}"
    }

    /// A one-line description for text output.
    public var summaryLine: String {
        var s = "seq \(seq) vcpu \(vcpu) \(reason) \(Hex.string(rip))"
        if !text.isEmpty { s += " \(text)" }
        s += ": \(kind.rawValue)"
        if !reference.isEmpty { s += " (vs \(reference))" }
        if let a = address { s += " at \(Hex.string(a))" }
        if !differences.isEmpty { s += " — " + differences.map { "\($0.field) recorded \($0.recorded) emulated \($0.emulated)" }.joined(separator: "; ") }
        if !note.isEmpty { s += " [\(note)]" }
        return s
    }
}

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 {
                out += "\\u00" + Hex.bytes(CollectionOfOne(UInt8(u.value)))
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}
