import Trace
import X86
import X86Emulator

/// An instruction form: mnemonic, REP prefix, and each operand's kind and size, packed so that
/// counting distinct forms costs no string per record.
public struct InstructionForm: Hashable, Sendable, Comparable {
    public var mnemonic: UInt16
    /// 0 none, 1 rep/repe, 2 repne.
    public var rep: UInt8
    /// Per operand: kind (4 bits) << 12 | size in bits (12 bits).
    public var operands: UInt64

    public init(_ i: Instruction) {
        mnemonic = i.mnemonic.rawValue
        rep = i.hasRep ? 1 : (i.hasRepne ? 2 : 0)
        var ops: UInt64 = 0
        for k in 0..<min(Int(i.operandCount), 4) {
            let code: UInt64
            switch i.operand(k) {
            case .none: code = 0
            case .register(let r):
                let kind: UInt64
                switch r.regClass {
                case .gpr8, .gpr8rex, .gpr16, .gpr32, .gpr64: kind = 1
                case .segment: kind = 2
                case .control: kind = 3
                case .debug: kind = 4
                default: kind = 5
                }
                code = kind << 12 | UInt64(r.bits & 0xFFF)
            case .memory(let m): code = 6 << 12 | UInt64((Int(m.size) * 8) & 0xFFF)
            case .immediate(_, let size): code = 7 << 12 | UInt64(Int(size) * 8)
            case .relative: code = 8 << 12
            case .farPointer: code = 9 << 12
            }
            ops |= code << (16 * UInt64(k))
        }
        operands = ops
    }

    public static func < (a: Self, b: Self) -> Bool { a.text < b.text }

    /// "rep outs m8" style text.
    public var text: String {
        var s = rep == 1 ? "rep " : (rep == 2 ? "repne " : "")
        s += Mnemonic(rawValue: mnemonic)?.name ?? "?"
        var parts: [String] = []
        for k in 0..<4 {
            let code = (operands >> (16 * UInt64(k))) & 0xFFFF
            if code == 0 { break }
            let bits = code & 0xFFF
            switch code >> 12 {
            case 1: parts.append("r\(bits)")
            case 2: parts.append("sreg")
            case 3: parts.append("cr")
            case 4: parts.append("dr")
            case 5: parts.append("vr\(bits)")
            case 6: parts.append(bits == 0 ? "m" : "m\(bits)")
            case 7: parts.append("imm\(bits)")
            case 8: parts.append("rel")
            default: parts.append("ptr")
            }
        }
        if !parts.isEmpty { s += " " + parts.joined(separator: ",") }
        return s
    }
}

/// KVM_EXIT_* names for the reasons a recorder writes.
public enum KVMExitNames {
    public static func name(_ r: UInt32) -> String {
        switch r {
        case 0: return "UNKNOWN"
        case 1: return "EXCEPTION"
        case 2: return "IO"
        case 3: return "HYPERCALL"
        case 4: return "DEBUG"
        case 5: return "HLT"
        case 6: return "MMIO"
        case 7: return "IRQ_WINDOW_OPEN"
        case 8: return "SHUTDOWN"
        case 9: return "FAIL_ENTRY"
        case 10: return "INTR"
        case 17: return "INTERNAL_ERROR"
        case 24: return "SYSTEM_EVENT"
        case 29: return "X86_RDMSR"
        case 30: return "X86_WRMSR"
        default: return "\(r)"
        }
    }
}
