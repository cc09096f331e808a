import X86

/// Control and debug registers, MSRs, LLDT/LTR, and the fast system calls.
extension X86Executor {
    // MARK: control registers

    func movToCR(_ i: Instruction, _ cr: Register, _ src: Operand) throws(Stop) {
        try requireCPL0()
        var n = Int(cr.number)
        if n == 0 && i.prefixes.contains(.lock) { n = 8 }  // AMD's alternate encoding of CR8
        guard case .register(let r) = src else { throw .fault(.invalidOpcode()) }
        let v = readReg(r)
        switch n {
        case 0:
            if v >> 32 != 0 { throw .fault(.generalProtection(0)) }
            var nv = v | CR0.et
            if nv & CR0.pg != 0 && nv & CR0.pe == 0 { throw .fault(.generalProtection(0)) }
            if nv & CR0.nw != 0 && nv & CR0.cd == 0 { throw .fault(.generalProtection(0)) }
            let enablingPaging = nv & CR0.pg != 0 && sys.cr0 & CR0.pg == 0
            if enablingPaging && sys.efer & EFER.lme != 0 {
                if sys.cr4 & CR4.pae == 0 { throw .fault(.generalProtection(0)) }
                if seg[SR.cs].long { throw .fault(.generalProtection(0)) }
                sys.efer |= EFER.lma
            }
            if nv & CR0.pg == 0 && sys.cr0 & CR0.pg != 0 {
                if mode == .long64 { throw .fault(.generalProtection(0)) }
                sys.efer &= ~EFER.lma
            }
            nv &= 0xFFFF_FFFF
            sys.cr0 = nv
            updateMode()
            pagingChanged()
        case 2: sys.cr2 = mode == .long64 ? v : v & 0xFFFF_FFFF
        case 3:
            if mode == .long64 && v >> 52 != 0 { throw .fault(.generalProtection(0)) }
            sys.cr3 = v
            pagingChanged()
        case 4:
            let known: UInt64 = 0x3F_7FFF & ~(1 << 15)
            if v & ~known != 0 { throw .fault(.generalProtection(0)) }
            if sys.efer & EFER.lma != 0 && v & CR4.pae == 0 { throw .fault(.generalProtection(0)) }
            sys.cr4 = v
            pagingChanged()
        case 8:
            if v >> 4 != 0 { throw .fault(.generalProtection(0)) }
            sys.cr8 = v
        default:
            throw .fault(.invalidOpcode())
        }
    }

    func movFromCR(_ cr: Register, _ dst: Operand) throws(Stop) {
        try requireCPL0()
        let v: UInt64
        switch cr.number {
        case 0: v = sys.cr0
        case 2: v = sys.cr2
        case 3: v = sys.cr3
        case 4: v = sys.cr4
        case 8: v = sys.cr8
        default: throw .fault(.invalidOpcode())
        }
        guard case .register(let r) = dst else { throw .fault(.invalidOpcode()) }
        writeReg(r, v)
    }

    func movToDR(_ dr: Register, _ src: Operand) throws(Stop) {
        try requireCPL0()
        guard case .register(let r) = src else { throw .fault(.invalidOpcode()) }
        let v = readReg(r)
        var n = Int(dr.number)
        if n == 4 || n == 5 {
            if sys.cr4 & CR4.de != 0 { throw .fault(.invalidOpcode()) }
            n += 2
        }
        switch n {
        case 0: dr0to3.0 = v
        case 1: dr0to3.1 = v
        case 2: dr0to3.2 = v
        case 3: dr0to3.3 = v
        case 6:
            if v >> 32 != 0 { throw .fault(.generalProtection(0)) }
            sys.dr6 = (v & 0xE00F) | 0xFFFF_0FF0
        case 7:
            if v >> 32 != 0 { throw .fault(.generalProtection(0)) }
            sys.dr7 = (v & 0xFFFF_2BFF) | 0x400
        default: throw .fault(.invalidOpcode())
        }
    }

    func movFromDR(_ dr: Register, _ dst: Operand) throws(Stop) {
        try requireCPL0()
        var n = Int(dr.number)
        if n == 4 || n == 5 {
            if sys.cr4 & CR4.de != 0 { throw .fault(.invalidOpcode()) }
            n += 2
        }
        let v: UInt64
        switch n {
        case 0: v = dr0to3.0
        case 1: v = dr0to3.1
        case 2: v = dr0to3.2
        case 3: v = dr0to3.3
        case 6: v = sys.dr6
        case 7: v = sys.dr7
        default: throw .fault(.invalidOpcode())
        }
        guard case .register(let r) = dst else { throw .fault(.invalidOpcode()) }
        writeReg(r, v)
    }

    // MARK: MSRs

    /// RDMSR's value: state MSRs from the executor, all others from the bus.
    func readMSRValue(_ idx: UInt32) throws(Stop) -> UInt64 {
        switch idx {
        case MSRIndex.efer: return sys.efer
        case MSRIndex.star: return sys.star
        case MSRIndex.lstar: return sys.lstar
        case MSRIndex.cstar: return sys.cstar
        case MSRIndex.sfmask: return sys.sfmask
        case MSRIndex.kernelGSBase: return sys.kernelGSBase
        case MSRIndex.sysenterCS: return sys.sysenterCS
        case MSRIndex.sysenterESP: return sys.sysenterESP
        case MSRIndex.sysenterEIP: return sys.sysenterEIP
        case MSRIndex.pat: return sys.pat
        case MSRIndex.fsBase: return seg[SR.fs].base
        case MSRIndex.gsBase: return seg[SR.gs].base
        case MSRIndex.tsc:
            guard let t = tsc?.readTSC() else { throw .unanswered(.tsc) }
            return t
        default:
            guard let bus = msrBus else { throw .unanswered(.msr(idx)) }
            switch bus.readMSR(idx) {
            case .value(let v): return v
            case .generalProtection: throw .fault(.generalProtection(0))
            case .unanswered: throw .unanswered(.msr(idx))
            }
        }
    }

    func writeMSRValue(_ idx: UInt32, _ v: UInt64) throws(Stop) {
        func canonical() throws(Stop) { if !isCanonical(v) { throw .fault(.generalProtection(0)) } }
        switch idx {
        case MSRIndex.efer:
            let allowed: UInt64 = EFER.sce | EFER.lme | EFER.lma | EFER.nxe | EFER.svme | EFER.ffxsr | (1 << 13) | (1 << 15)
            if v & ~allowed != 0 { throw .fault(.generalProtection(0)) }
            // LME cannot change while paging is on; LMA is read-only.
            if sys.cr0 & CR0.pg != 0 && (v ^ sys.efer) & EFER.lme != 0 { throw .fault(.generalProtection(0)) }
            sys.efer = (v & ~EFER.lma) | (sys.efer & EFER.lma)
            updateMode()
            pagingChanged()
        case MSRIndex.star: sys.star = v
        case MSRIndex.lstar: try canonical(); sys.lstar = v
        case MSRIndex.cstar: try canonical(); sys.cstar = v
        case MSRIndex.sfmask: sys.sfmask = v & 0xFFFF_FFFF
        case MSRIndex.kernelGSBase: try canonical(); sys.kernelGSBase = v
        case MSRIndex.sysenterCS: sys.sysenterCS = v & 0xFFFF
        case MSRIndex.sysenterESP: sys.sysenterESP = v
        case MSRIndex.sysenterEIP: sys.sysenterEIP = v
        case MSRIndex.pat:
            for k in 0..<8 {
                let t = (v >> UInt64(8 * k)) & 0xFF
                if t == 2 || t == 3 || t > 7 { throw .fault(.generalProtection(0)) }
            }
            sys.pat = v
        case MSRIndex.fsBase: try canonical(); seg[SR.fs].base = v
        case MSRIndex.gsBase: try canonical(); seg[SR.gs].base = v
        default:
            guard let bus = msrBus else { throw .unanswered(.msr(idx)) }
            switch bus.writeMSR(idx, value: v) {
            case .value: break
            case .generalProtection: throw .fault(.generalProtection(0))
            case .unanswered: throw .unanswered(.msr(idx))
            }
        }
    }

    // MARK: LLDT / LTR

    func loadSystemSegment(_ isTR: Bool, _ sel: UInt16) throws(Stop) {
        let code = UInt32(sel & 0xFFFC)
        if sel & 0xFFFC == 0 {
            if isTR { throw .fault(.generalProtection(0)) }
            sys.ldtr = Segment(selector: sel, base: 0, limit: 0, attributes: 0)
            return
        }
        if sel & 4 != 0 { throw .fault(.generalProtection(code)) }
        let (raw, addr) = try readDescriptor(sel)
        var d = Segment.fromDescriptor(selector: sel, descriptor: raw)
        if !d.isSystem { throw .fault(.generalProtection(code)) }
        if isTR {
            if d.type != 9 && d.type != 1 { throw .fault(.generalProtection(code)) }
            if (mode == .long64 || mode == .compat32 || mode == .compat16) && d.type != 9 { throw .fault(.generalProtection(code)) }
        } else if d.type != 2 {
            throw .fault(.generalProtection(code))
        }
        if !d.present { throw .fault(.notPresent(code)) }
        if sys.efer & EFER.lma != 0 {
            let hi = try readDescriptorHigh(sel)
            d.base |= (hi & 0xFFFF_FFFF) << 32
        }
        if isTR {
            // Mark the TSS busy in the GDT.
            let b = UInt64((raw >> 40) & 0xFF) | 2
            try writeLinear(addr &+ 5, 1, b, supervisor: true)
            d.attributes |= 2
            sys.tr = d
        } else {
            sys.ldtr = d
        }
    }

    // MARK: SYSCALL / SYSRET / SYSENTER / SYSEXIT

    func flatCode(_ sel: UInt16, dpl: UInt16, long: Bool) -> Segment {
        Segment(selector: sel, base: 0, limit: 0xFFFF_FFFF, attributes: (long ? 0xA9B : 0xC9B) | (dpl << 5))
    }

    func flatStack(_ sel: UInt16, dpl: UInt16) -> Segment {
        Segment(selector: sel, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC93 | (dpl << 5))
    }

    func syscallInstruction() throws(Stop) {
        if sys.efer & EFER.sce == 0 { throw .fault(.invalidOpcode()) }
        if mode == .real || mode == .virtual8086 { throw .fault(.invalidOpcode()) }
        let sel = UInt16(truncatingIfNeeded: sys.star >> 32) & 0xFFFC
        if sys.efer & EFER.lma != 0 {
            let ret = nextRIP
            gpr[1] = ret
            gpr[11] = rflags & ~RFLAGS.rf
            let target = mode == .long64 ? sys.lstar : sys.cstar
            rflags = rflags & ~sys.sfmask & ~RFLAGS.rf
            var cs = flatCode(sel, dpl: 0, long: true)
            cs.attributes = 0xA9B
            seg[SR.cs] = cs
            seg[SR.ss] = flatStack(sel &+ 8, dpl: 0)
            sys.cpl = 0
            updateMode()
            nextRIP = target
        } else {
            gpr[1] = nextRIP & 0xFFFF_FFFF
            flagsRest &= ~(RFLAGS.vm | RFLAGS.if | RFLAGS.rf)
            seg[SR.cs] = flatCode(sel, dpl: 0, long: false)
            seg[SR.ss] = flatStack(sel &+ 8, dpl: 0)
            sys.cpl = 0
            updateMode()
            nextRIP = sys.star & 0xFFFF_FFFF
        }
    }

    func sysretInstruction(_ q: Bool) throws(Stop) {
        if sys.efer & EFER.sce == 0 { throw .fault(.invalidOpcode()) }
        if mode == .real || mode == .virtual8086 { throw .fault(.invalidOpcode()) }
        try requireCPL0()
        let base = UInt16(truncatingIfNeeded: sys.star >> 48)
        if sys.efer & EFER.lma != 0 {
            if q && !isCanonical(gpr[1]) { throw .fault(.generalProtection(0)) }
            if q {
                var cs = flatCode((base &+ 16) | 3, dpl: 3, long: true)
                cs.attributes = 0xAFB
                seg[SR.cs] = cs
                nextRIP = gpr[1]
            } else {
                seg[SR.cs] = flatCode(base | 3, dpl: 3, long: false)
                nextRIP = gpr[1] & 0xFFFF_FFFF
            }
            rflags = (gpr[11] & ~(RFLAGS.rf | RFLAGS.vm)) | 2
        } else {
            seg[SR.cs] = flatCode(base | 3, dpl: 3, long: false)
            flagsRest |= RFLAGS.if
            nextRIP = gpr[1] & 0xFFFF_FFFF
        }
        // AMD loads the SS selector and keeps the cached attributes otherwise valid.
        var ss = seg[SR.ss]
        ss.selector = (base &+ 8) | 3
        ss.attributes = (ss.attributes & ~0x60) | 0x60
        seg[SR.ss] = ss
        sys.cpl = 3
        updateMode()
    }

    func sysenterInstruction() throws(Stop) {
        if mode == .real { throw .fault(.generalProtection(0)) }
        if mode == .long64 || mode == .compat16 || mode == .compat32 {
            if vendor == .amd { throw .fault(.invalidOpcode()) }
        }
        let sel = UInt16(truncatingIfNeeded: sys.sysenterCS) & 0xFFFC
        if sel == 0 { throw .fault(.generalProtection(0)) }
        flagsRest &= ~(RFLAGS.vm | RFLAGS.if | RFLAGS.rf)
        let long = sys.efer & EFER.lma != 0
        var cs = flatCode(sel, dpl: 0, long: long)
        if long { cs.attributes = 0xA9B }
        seg[SR.cs] = cs
        seg[SR.ss] = flatStack(sel &+ 8, dpl: 0)
        sys.cpl = 0
        updateMode()
        gpr[4] = long ? sys.sysenterESP : sys.sysenterESP & 0xFFFF_FFFF
        nextRIP = long ? sys.sysenterEIP : sys.sysenterEIP & 0xFFFF_FFFF
    }

    func sysexitInstruction(_ q: Bool) throws(Stop) {
        if mode == .real || mode == .virtual8086 { throw .fault(.generalProtection(0)) }
        try requireCPL0()
        if (mode == .long64 || mode == .compat32 || mode == .compat16) && vendor == .amd { throw .fault(.invalidOpcode()) }
        let base = UInt16(truncatingIfNeeded: sys.sysenterCS) & 0xFFFC
        if base == 0 { throw .fault(.generalProtection(0)) }
        if q {
            var cs = flatCode((base &+ 32) | 3, dpl: 3, long: true)
            cs.attributes = 0xAFB
            seg[SR.cs] = cs
            seg[SR.ss] = flatStack((base &+ 40) | 3, dpl: 3)
            gpr[4] = gpr[1]
            nextRIP = gpr[2]
        } else {
            seg[SR.cs] = flatCode((base &+ 16) | 3, dpl: 3, long: false)
            seg[SR.ss] = flatStack((base &+ 24) | 3, dpl: 3)
            gpr[4] = gpr[1] & 0xFFFF_FFFF
            nextRIP = gpr[2] & 0xFFFF_FFFF
        }
        sys.cpl = 3
        updateMode()
    }

    // MARK: XCR0

    /// The XCR0 bits this processor supports: CPUID 0xD.0 EDX:EAX when the CPUID source
    /// answers it, else x87, SSE and AVX.
    var supportedXCR0: UInt64 {
        if let c = cpuidSource, let d = c.cpuid(leaf: 0xD, subleaf: 0) { return UInt64(d.edx) << 32 | UInt64(d.eax) }
        return 7
    }

    /// XSETBV's rules (APM vol. 2, 11.5.2): only supported bits; x87 always set; AVX needs SSE;
    /// the AVX-512 components (bits 5-7) all together and only with SSE and AVX.
    func validXCR0(_ v: UInt64) -> Bool {
        if v & ~supportedXCR0 != 0 || v & 1 == 0 { return false }
        if v & 4 != 0 && v & 2 == 0 { return false }
        let avx512 = v & 0xE0
        if avx512 != 0 && (avx512 != 0xE0 || v & 6 != 6) { return false }
        return true
    }
}
