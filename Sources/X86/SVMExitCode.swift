/// SVM #VMEXIT codes (AMD APM vol. 2, appendix C), the EXITCODE field of the VMCB.
/// ExitScope records each exit with the code an AMD-V host would have given for it.
public struct SVMExitCode: RawRepresentable, Hashable, Sendable, Comparable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ v: UInt64) { rawValue = v }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    public static func readCR(_ n: Int) -> SVMExitCode { SVMExitCode(UInt64(n)) }
    public static func writeCR(_ n: Int) -> SVMExitCode { SVMExitCode(0x10 + UInt64(n)) }
    public static func readDR(_ n: Int) -> SVMExitCode { SVMExitCode(0x20 + UInt64(n)) }
    public static func writeDR(_ n: Int) -> SVMExitCode { SVMExitCode(0x30 + UInt64(n)) }
    public static func exception(_ v: Int) -> SVMExitCode { SVMExitCode(0x40 + UInt64(v)) }

    public static let intr = SVMExitCode(0x60)
    public static let nmi = SVMExitCode(0x61)
    public static let smi = SVMExitCode(0x62)
    public static let initSignal = SVMExitCode(0x63)
    public static let vintr = SVMExitCode(0x64)
    public static let cr0SelWrite = SVMExitCode(0x65)
    public static let idtrRead = SVMExitCode(0x66)
    public static let gdtrRead = SVMExitCode(0x67)
    public static let ldtrRead = SVMExitCode(0x68)
    public static let trRead = SVMExitCode(0x69)
    public static let idtrWrite = SVMExitCode(0x6A)
    public static let gdtrWrite = SVMExitCode(0x6B)
    public static let ldtrWrite = SVMExitCode(0x6C)
    public static let trWrite = SVMExitCode(0x6D)
    public static let rdtsc = SVMExitCode(0x6E)
    public static let rdpmc = SVMExitCode(0x6F)
    public static let pushf = SVMExitCode(0x70)
    public static let popf = SVMExitCode(0x71)
    public static let cpuid = SVMExitCode(0x72)
    public static let rsm = SVMExitCode(0x73)
    public static let iret = SVMExitCode(0x74)
    public static let swint = SVMExitCode(0x75)
    public static let invd = SVMExitCode(0x76)
    public static let pause = SVMExitCode(0x77)
    public static let hlt = SVMExitCode(0x78)
    public static let invlpg = SVMExitCode(0x79)
    public static let invlpga = SVMExitCode(0x7A)
    public static let ioio = SVMExitCode(0x7B)
    public static let msr = SVMExitCode(0x7C)
    public static let taskSwitch = SVMExitCode(0x7D)
    public static let ferrFreeze = SVMExitCode(0x7E)
    public static let shutdown = SVMExitCode(0x7F)
    public static let vmrun = SVMExitCode(0x80)
    public static let vmmcall = SVMExitCode(0x81)
    public static let vmload = SVMExitCode(0x82)
    public static let vmsave = SVMExitCode(0x83)
    public static let stgi = SVMExitCode(0x84)
    public static let clgi = SVMExitCode(0x85)
    public static let skinit = SVMExitCode(0x86)
    public static let rdtscp = SVMExitCode(0x87)
    public static let icebp = SVMExitCode(0x88)
    public static let wbinvd = SVMExitCode(0x89)
    public static let monitor = SVMExitCode(0x8A)
    public static let mwait = SVMExitCode(0x8B)
    public static let xsetbv = SVMExitCode(0x8D)
    public static let npf = SVMExitCode(0x400)
    /// VMEXIT_INVALID (-1): VMRUN failed its consistency checks (KVM's FAIL_ENTRY).
    public static let invalid = SVMExitCode(UInt64.max)
    /// Not an SVM exit: KVM reported something AMD-V has no code for (recorded beside the KVM reason).
    public static let none = SVMExitCode(UInt64.max - 1)

    /// The APM's name for the code: "IOIO", "NPF", "CR0_WRITE", "EXCP_DB", ...
    public var name: String {
        let v = rawValue
        switch v {
        case 0x00...0x0F: return "CR\(v)_READ"
        case 0x10...0x1F: return "CR\(v - 0x10)_WRITE"
        case 0x20...0x2F: return "DR\(v - 0x20)_READ"
        case 0x30...0x3F: return "DR\(v - 0x30)_WRITE"
        case 0x40...0x5F:
            let names = ["DE", "DB", "NMI", "BP", "OF", "BR", "UD", "NM", "DF", "9", "TS", "NP",
                         "SS", "GP", "PF", "15", "MF", "AC", "MC", "XF", "20", "CP"]
            let n = Int(v - 0x40)
            return "EXCP_" + (n < names.count ? names[n] : String(n))
        default: break
        }
        if let n = SVMExitCode.names[v] { return n }
        if self == .invalid { return "INVALID" }
        if self == .none { return "NONE" }
        return "0x" + String(v, radix: 16)
    }

    static let names: [UInt64: String] = [
        0x60: "INTR", 0x61: "NMI", 0x62: "SMI", 0x63: "INIT", 0x64: "VINTR", 0x65: "CR0_SEL_WRITE",
        0x66: "IDTR_READ", 0x67: "GDTR_READ", 0x68: "LDTR_READ", 0x69: "TR_READ",
        0x6A: "IDTR_WRITE", 0x6B: "GDTR_WRITE", 0x6C: "LDTR_WRITE", 0x6D: "TR_WRITE",
        0x6E: "RDTSC", 0x6F: "RDPMC", 0x70: "PUSHF", 0x71: "POPF", 0x72: "CPUID", 0x73: "RSM",
        0x74: "IRET", 0x75: "SWINT", 0x76: "INVD", 0x77: "PAUSE", 0x78: "HLT", 0x79: "INVLPG",
        0x7A: "INVLPGA", 0x7B: "IOIO", 0x7C: "MSR", 0x7D: "TASK_SWITCH", 0x7E: "FERR_FREEZE",
        0x7F: "SHUTDOWN", 0x80: "VMRUN", 0x81: "VMMCALL", 0x82: "VMLOAD", 0x83: "VMSAVE",
        0x84: "STGI", 0x85: "CLGI", 0x86: "SKINIT", 0x87: "RDTSCP", 0x88: "ICEBP", 0x89: "WBINVD",
        0x8A: "MONITOR", 0x8B: "MWAIT", 0x8C: "MWAIT_CONDITIONAL", 0x8D: "XSETBV", 0x8E: "RDPRU",
        0x400: "NPF", 0x401: "AVIC_INCOMPLETE_IPI", 0x402: "AVIC_NOACCEL",
    ]
}

/// EXITINFO1 of an IOIO intercept (APM vol. 2, 15.10.2).
public struct IOIOInfo: Equatable, Sendable {
    public var port: UInt16
    public var isIn: Bool
    public var isString: Bool
    public var isRep: Bool
    /// Operand size in bytes: 1, 2 or 4.
    public var size: Int
    /// Address size in bits: 16, 32 or 64.
    public var addressSize: Int
    /// Effective segment for string instructions (0=ES ... 5=GS), as in bits 12:10.
    public var segment: Int

    public init(port: UInt16, isIn: Bool, isString: Bool = false, isRep: Bool = false,
                size: Int, addressSize: Int, segment: Int = 3) {
        self.port = port
        self.isIn = isIn
        self.isString = isString
        self.isRep = isRep
        self.size = size
        self.addressSize = addressSize
        self.segment = segment
    }

    public var exitInfo1: UInt64 {
        var v = UInt64(port) << 16
        if isIn { v |= 1 }
        if isString { v |= 1 << 2 }
        if isRep { v |= 1 << 3 }
        switch size { case 1: v |= 1 << 4; case 2: v |= 1 << 5; default: v |= 1 << 6 }
        switch addressSize { case 16: v |= 1 << 7; case 32: v |= 1 << 8; default: v |= 1 << 9 }
        v |= UInt64(segment & 7) << 10
        return v
    }

    public init(exitInfo1 v: UInt64) {
        port = UInt16(truncatingIfNeeded: v >> 16)
        isIn = v & 1 != 0
        isString = v & 4 != 0
        isRep = v & 8 != 0
        size = v & 0x10 != 0 ? 1 : (v & 0x20 != 0 ? 2 : 4)
        addressSize = v & 0x80 != 0 ? 16 : (v & 0x100 != 0 ? 32 : 64)
        segment = Int((v >> 10) & 7)
    }
}

/// EXITINFO1 of a nested page fault (APM vol. 2, 15.25.6): a #PF-style error code.
public enum NPFInfo {
    public static let present: UInt64 = 1 << 0
    public static let write: UInt64 = 1 << 1
    public static let user: UInt64 = 1 << 2
    public static let reserved: UInt64 = 1 << 3
    public static let fetch: UInt64 = 1 << 4
    /// Bit 32: the fault happened on the final guest-physical address.
    public static let finalAddress: UInt64 = 1 << 32
    /// Bit 33: the fault happened while walking the guest's page tables.
    public static let pageTableWalk: UInt64 = 1 << 33
}
