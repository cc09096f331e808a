/// The one CPU-state type of ExitScope (DESIGN.md, "One state schema"): the VMCB save-area
/// fields plus every general-purpose register. `exec`, `show --json`, replay's divergences
/// and the notebooks all use its JSON form (see `CPUState+JSON.swift`).
public struct CPUState: Equatable, Hashable, Sendable {
    public var rax: UInt64 = 0, rcx: UInt64 = 0, rdx: UInt64 = 0, rbx: UInt64 = 0
    public var rsp: UInt64 = 0, rbp: UInt64 = 0, rsi: UInt64 = 0, rdi: UInt64 = 0
    public var r8: UInt64 = 0, r9: UInt64 = 0, r10: UInt64 = 0, r11: UInt64 = 0
    public var r12: UInt64 = 0, r13: UInt64 = 0, r14: UInt64 = 0, r15: UInt64 = 0
    public var rip: UInt64 = 0xFFF0
    public var rflags: UInt64 = 0x2

    public var es = Segment.real(0), cs = Segment.real(0, code: true), ss = Segment.real(0)
    public var ds = Segment.real(0), fs = Segment.real(0), gs = Segment.real(0)
    public var ldtr = Segment(attributes: 0x82)
    public var tr = Segment(attributes: 0x8B)
    public var gdtr = DescriptorTable()
    public var idtr = DescriptorTable(base: 0, limit: 0x3FF)

    public var cr0: UInt64 = 0x10
    public var cr2: UInt64 = 0
    public var cr3: UInt64 = 0
    public var cr4: UInt64 = 0
    public var cr8: UInt64 = 0
    public var efer: UInt64 = 0
    /// VMCB's CPL field; on AMD it follows SS.DPL outside real mode.
    public var cpl: UInt8 = 0
    public var dr6: UInt64 = 0xFFFF_0FF0
    public var dr7: UInt64 = 0x400

    // Save-area MSRs (VMCB offsets 0x600-0x670): changed only by WRMSR, SYSCALL and SWAPGS.
    public var star: UInt64 = 0, lstar: UInt64 = 0, cstar: UInt64 = 0, sfmask: UInt64 = 0
    public var kernelGSBase: UInt64 = 0
    public var sysenterCS: UInt64 = 0, sysenterESP: UInt64 = 0, sysenterEIP: UInt64 = 0
    public var pat: UInt64 = 0x0007_0406_0007_0406
    /// XCR0 (XSETBV/XGETBV): which XSAVE state components the OS enabled. A state that does not
    /// say (older JSON and traces) reads as 7 (x87, SSE, AVX), what the executor assumed before
    /// the field existed; it matters only while CR4.OSXSAVE is set.
    public var xcr0: UInt64 = 7

    public init() {}

    // MARK: register access by encoding number

    @inline(__always)
    public func gpr(_ n: Int) -> UInt64 {
        switch n & 15 {
        case 0: return rax
        case 1: return rcx
        case 2: return rdx
        case 3: return rbx
        case 4: return rsp
        case 5: return rbp
        case 6: return rsi
        case 7: return rdi
        case 8: return r8
        case 9: return r9
        case 10: return r10
        case 11: return r11
        case 12: return r12
        case 13: return r13
        case 14: return r14
        default: return r15
        }
    }

    @inline(__always)
    public mutating func setGPR(_ n: Int, _ v: UInt64) {
        switch n & 15 {
        case 0: rax = v
        case 1: rcx = v
        case 2: rdx = v
        case 3: rbx = v
        case 4: rsp = v
        case 5: rbp = v
        case 6: rsi = v
        case 7: rdi = v
        case 8: r8 = v
        case 9: r9 = v
        case 10: r10 = v
        case 11: r11 = v
        case 12: r12 = v
        case 13: r13 = v
        case 14: r14 = v
        default: r15 = v
        }
    }

    public func segment(_ s: SegmentRegister) -> Segment {
        switch s {
        case .es: return es
        case .cs: return cs
        case .ss: return ss
        case .ds: return ds
        case .fs: return fs
        case .gs: return gs
        }
    }

    public mutating func setSegment(_ s: SegmentRegister, _ v: Segment) {
        switch s {
        case .es: es = v
        case .cs: cs = v
        case .ss: ss = v
        case .ds: ds = v
        case .fs: fs = v
        case .gs: gs = v
        }
    }

    // MARK: mode

    /// Inlinable: replay asks it per record, and a call would copy the whole state.
    @inlinable public var mode: CPUMode {
        CPUState.mode(cr0: cr0, efer: efer, rflags: rflags, csLong: cs.long, csDefaultBig: cs.defaultBig)
    }

    /// The mode from the registers that decide it, for callers that hold them without a whole
    /// state (a recorder reading KVM's registers in place).
    @inlinable public static func mode(cr0: UInt64, efer: UInt64, rflags: UInt64, csLong: Bool, csDefaultBig: Bool) -> CPUMode {
        if cr0 & CR0.pe == 0 { return .real }
        if efer & EFER.lma != 0 && csLong { return .long64 }
        if rflags & RFLAGS.vm != 0 { return .virtual8086 }
        if efer & EFER.lma != 0 { return csDefaultBig ? .compat32 : .compat16 }
        return csDefaultBig ? .protected32 : .protected16
    }

    /// A flat state for `mode`, as ExitScope's loaders and `exec` inputs use it: paging off
    /// outside long mode, code/data segments covering 4 GiB (or 64 KiB in real mode).
    public static func flat(_ mode: CPUMode) -> CPUState {
        var s = CPUState()
        switch mode {
        case .real, .virtual8086:
            s.rip = 0
            if mode == .virtual8086 {
                s.cr0 = CR0.pe | CR0.et
                s.rflags |= RFLAGS.vm
                s.cpl = 3
            }
        case .protected16, .protected32, .compat16, .compat32, .long64:
            let big: UInt16 = (mode == .protected16 || mode == .compat16) ? 0 : 0x400
            let gran: UInt16 = big == 0 ? 0 : 0x800
            let limit: UInt32 = big == 0 ? 0xFFFF : 0xFFFF_FFFF
            let code = Segment(selector: 0x08, base: 0, limit: limit,
                               attributes: (mode == .long64 ? 0x29B : 0x9B | big) | gran)
            let data = Segment(selector: 0x10, base: 0, limit: limit, attributes: 0x93 | big | gran)
            s.cs = code
            for r in [SegmentRegister.ds, .es, .ss, .fs, .gs] { s.setSegment(r, data) }
            s.cr0 = CR0.pe | CR0.et
            s.rip = 0
            s.gdtr = DescriptorTable(base: 0, limit: 0x17)
            s.idtr = DescriptorTable(base: 0, limit: 0)
            if mode == .long64 || mode == .compat32 || mode == .compat16 {
                s.cr0 |= CR0.pg
                s.cr4 |= CR4.pae
                s.efer = EFER.lme | EFER.lma
                if mode == .long64 { s.cs.attributes = 0xA9B }
            }
        }
        return s
    }
}

/// The processor's operating mode as the decoder and executor need it.
public enum CPUMode: String, Sendable, CaseIterable, Codable {
    case real
    case virtual8086 = "vm86"
    case protected16
    case protected32
    case compat16
    case compat32
    case long64

    /// Default operand and address size in bits.
    public var defaultSize: Int {
        switch self {
        case .real, .virtual8086, .protected16, .compat16: return 16
        case .protected32, .compat32, .long64: return 32
        }
    }
    /// Address size of the mode (64 in 64-bit mode).
    public var addressSize: Int { self == .long64 ? 64 : defaultSize }
    /// The decoder's bitness: 16, 32 or 64.
    public var bits: Int { self == .long64 ? 64 : defaultSize }
}
