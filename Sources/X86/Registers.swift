/// General-purpose register numbers as the ModRM/REX encoding numbers them.
public enum GPR: Int, CaseIterable, Sendable {
    case rax = 0, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15

    public var name: String { GPR.names[rawValue] }
    public static let names = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
}

/// Segment register numbers in the encoding's order (ES=0 ... GS=5).
public enum SegmentRegister: Int, CaseIterable, Sendable {
    case es = 0, cs, ss, ds, fs, gs
    public var name: String { ["es", "cs", "ss", "ds", "fs", "gs"][rawValue] }
}

/// RFLAGS bits (AMD APM vol. 2, 3.1.6).
public enum RFLAGS {
    public static let cf: UInt64 = 1 << 0
    public static let reserved1: UInt64 = 1 << 1
    public static let pf: UInt64 = 1 << 2
    public static let af: UInt64 = 1 << 4
    public static let zf: UInt64 = 1 << 6
    public static let sf: UInt64 = 1 << 7
    public static let tf: UInt64 = 1 << 8
    public static let `if`: UInt64 = 1 << 9
    public static let df: UInt64 = 1 << 10
    public static let of: UInt64 = 1 << 11
    public static let iopl: UInt64 = 3 << 12
    public static let nt: UInt64 = 1 << 14
    public static let rf: UInt64 = 1 << 16
    public static let vm: UInt64 = 1 << 17
    public static let ac: UInt64 = 1 << 18
    public static let vif: UInt64 = 1 << 19
    public static let vip: UInt64 = 1 << 20
    public static let id: UInt64 = 1 << 21
    /// The six arithmetic status flags.
    public static let status: UInt64 = cf | pf | af | zf | sf | of
}

/// Control-register and EFER bits used by mode and paging logic.
public enum CR0 {
    public static let pe: UInt64 = 1 << 0
    public static let mp: UInt64 = 1 << 1
    public static let em: UInt64 = 1 << 2
    public static let ts: UInt64 = 1 << 3
    public static let et: UInt64 = 1 << 4
    public static let ne: UInt64 = 1 << 5
    public static let wp: UInt64 = 1 << 16
    public static let am: UInt64 = 1 << 18
    public static let nw: UInt64 = 1 << 29
    public static let cd: UInt64 = 1 << 30
    public static let pg: UInt64 = 1 << 31
}

public enum CR4 {
    public static let vme: UInt64 = 1 << 0
    public static let pvi: UInt64 = 1 << 1
    public static let tsd: UInt64 = 1 << 2
    public static let de: UInt64 = 1 << 3
    public static let pse: UInt64 = 1 << 4
    public static let pae: UInt64 = 1 << 5
    public static let pge: UInt64 = 1 << 7
    public static let osfxsr: UInt64 = 1 << 9
    public static let osxmmexcpt: UInt64 = 1 << 10
    public static let umip: UInt64 = 1 << 11
    public static let la57: UInt64 = 1 << 12
    public static let fsgsbase: UInt64 = 1 << 16
    public static let osxsave: UInt64 = 1 << 18
    public static let smep: UInt64 = 1 << 20
    public static let smap: UInt64 = 1 << 21
    public static let pke: UInt64 = 1 << 22
}

public enum EFER {
    public static let sce: UInt64 = 1 << 0
    public static let lme: UInt64 = 1 << 8
    public static let lma: UInt64 = 1 << 10
    public static let nxe: UInt64 = 1 << 11
    public static let svme: UInt64 = 1 << 12
    public static let ffxsr: UInt64 = 1 << 14
}

/// MSR indices that the save area carries or that system instructions use.
public enum MSRIndex {
    public static let tsc: UInt32 = 0x10
    public static let apicBase: UInt32 = 0x1B
    public static let sysenterCS: UInt32 = 0x174
    public static let sysenterESP: UInt32 = 0x175
    public static let sysenterEIP: UInt32 = 0x176
    public static let pat: UInt32 = 0x277
    public static let efer: UInt32 = 0xC000_0080
    public static let star: UInt32 = 0xC000_0081
    public static let lstar: UInt32 = 0xC000_0082
    public static let cstar: UInt32 = 0xC000_0083
    public static let sfmask: UInt32 = 0xC000_0084
    public static let fsBase: UInt32 = 0xC000_0100
    public static let gsBase: UInt32 = 0xC000_0101
    public static let kernelGSBase: UInt32 = 0xC000_0102
    public static let tscAux: UInt32 = 0xC000_0103

    /// The MSRs whose values live in the VMCB save area: writes to them are routed to the
    /// VMM by the MSR filter so the recorder sees each change as it happens.
    public static let saveArea: [UInt32] = [efer, star, lstar, cstar, sfmask, kernelGSBase,
                                            sysenterCS, sysenterESP, sysenterEIP, pat]
}
