import X86

/// An x86 exception as a value: vector, error code when the vector has one, CR2 for #PF.
public struct CPUException: Equatable, Hashable, Sendable, CustomStringConvertible {
    public var vector: UInt8
    public var errorCode: UInt32?
    /// The faulting linear address for #PF (what CR2 receives).
    public var cr2: UInt64?

    public init(vector: UInt8, errorCode: UInt32? = nil, cr2: UInt64? = nil) {
        self.vector = vector
        self.errorCode = errorCode
        self.cr2 = cr2
    }

    public static let de: UInt8 = 0, db: UInt8 = 1, nmi: UInt8 = 2, bp: UInt8 = 3, of: UInt8 = 4
    public static let br: UInt8 = 5, ud: UInt8 = 6, nm: UInt8 = 7, df: UInt8 = 8
    public static let ts: UInt8 = 10, np: UInt8 = 11, ss: UInt8 = 12, gp: UInt8 = 13, pf: UInt8 = 14
    public static let mf: UInt8 = 16, ac: UInt8 = 17, mc: UInt8 = 18, xm: UInt8 = 19

    public static func divideError() -> CPUException { CPUException(vector: de) }
    public static func invalidOpcode() -> CPUException { CPUException(vector: ud) }
    public static func deviceNotAvailable() -> CPUException { CPUException(vector: nm) }
    public static func generalProtection(_ code: UInt32 = 0) -> CPUException { CPUException(vector: gp, errorCode: code) }
    public static func stackFault(_ code: UInt32 = 0) -> CPUException { CPUException(vector: ss, errorCode: code) }
    public static func notPresent(_ code: UInt32) -> CPUException { CPUException(vector: np, errorCode: code) }
    public static func invalidTSS(_ code: UInt32) -> CPUException { CPUException(vector: ts, errorCode: code) }
    public static func pageFault(_ code: UInt32, address: UInt64) -> CPUException {
        CPUException(vector: pf, errorCode: code, cr2: address)
    }

    /// The APM mnemonic of the vector (#GP, #PF ...).
    public var name: String {
        let names: [UInt8: String] = [0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD",
                                      7: "#NM", 8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP",
                                      14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XF"]
        return names[vector] ?? "vector \(vector)"
    }

    public var description: String {
        var s = name
        if let e = errorCode { s += "(\(Hex.string(e)))" }
        if let a = cr2 { s += " cr2=\(Hex.string(a))" }
        return s
    }

    /// Vectors that push an error code in protected and long mode.
    static func hasErrorCode(_ v: UInt8) -> Bool {
        switch v {
        case 8, 10, 11, 12, 13, 14, 17, 21, 29, 30: return true
        default: return false
        }
    }
}

/// An answer the executor needed but its environment did not have (replay: not recorded).
public enum MissingAnswer: Equatable, Hashable, Sendable, CustomStringConvertible {
    case port(UInt16, size: Int)
    case msr(UInt32)
    case cpuid(leaf: UInt32, subleaf: UInt32)
    case tsc

    public var description: String {
        switch self {
        case .port(let p, let s): return "port \(Hex.string(p)) (\(s) bytes)"
        case .msr(let i): return "MSR \(Hex.string(i))"
        case .cpuid(let l, let s): return "CPUID leaf \(Hex.string(l)) subleaf \(Hex.string(s))"
        case .tsc: return "TSC"
        }
    }
}

/// What one `step()` did.
public enum StepResult: Equatable, Sendable {
    /// The instruction completed; RIP is at the next one.
    case ok
    /// HLT executed: RIP is past it, the processor waits for an interrupt.
    case halted
    /// The instruction raised an exception. With `deliverExceptions` off the state is the one
    /// before the instruction (a restartable string instruction keeps the iterations it did);
    /// with it on, the exception went through the IVT/IDT (`delivered` is true) and RIP is at
    /// the handler.
    case exception(CPUException, delivered: Bool)
    /// Delivering an exception faulted again until the processor gave up (shutdown).
    case tripleFault
    /// The bytes at RIP are not an instruction this executor runs (the bytes, up to 15).
    case unsupported([UInt8])
    /// The instruction needed guest-physical memory nobody backs; state as before it.
    case unbackedMemory(UInt64)
    /// The instruction needed a device, MSR, CPUID or TSC answer that is not known.
    case unanswered(MissingAnswer)
    /// VMMCALL/VMCALL: a hypercall for the caller to handle; RIP is past the instruction.
    case hypercall
}

/// Why an instruction stopped early; internal, carried by typed throws.
@usableFromInline
enum Stop: Error {
    case fault(CPUException)
    case unbacked(UInt64)
    case unanswered(MissingAnswer)
    case unsupported
}
