import X86

/// The SSE/AVX data moves and bitwise logic kernels use on memory (MOVDQA/U, MOVAPS/UPS/APD/UPD,
/// MOVNT*, MOVD/MOVQ, PAND/PANDN/POR/PXOR, ANDPS...XORPD and their VEX forms), and the BMI1/BMI2
/// general-purpose instructions (VEX-encoded). MMX forms are not implemented (unsupported).
extension X86Executor {
    typealias Vec = (UInt64, UInt64, UInt64, UInt64)

    /// Returns false when `i` is not one of these instructions.
    func executeVector(_ i: Instruction) throws(Stop) -> Bool {
        switch i.mnemonic {
        case .andn, .bextr, .blsi, .blsmsk, .blsr, .bzhi, .mulx, .pdep, .pext, .rorx, .sarx, .shlx, .shrx:
            try bmi(i)
            return true
        case .movdqa, .movdqu, .movaps, .movups, .movapd, .movupd, .movntdq, .movntps, .movntpd,
             .vmovdqa, .vmovdqu, .vmovaps, .vmovups, .vmovapd, .vmovupd, .vmovntdq, .vmovntps, .vmovntpd:
            let vex = i.prefixes.contains(.vex)
            if i.prefixes.contains(.evex) { throw .unsupported }
            try checkSIMD(vex: vex)
            if !isXMMOperand(i.operands.0) && i.operands.0.memory == nil { throw .unsupported }
            let bytes = vex && i.vector.vectorLength == 1 ? 32 : 16
            let aligned: Set<Mnemonic> = [.movdqa, .movaps, .movapd, .movntdq, .movntps, .movntpd,
                                          .vmovdqa, .vmovaps, .vmovapd, .vmovntdq, .vmovntps, .vmovntpd]
            let v = try readVec(i.operands.1, bytes, aligned: aligned.contains(i.mnemonic))
            try writeVec(i.operands.0, v, bytes, vex: vex, aligned: aligned.contains(i.mnemonic))
            return true
        case .ldmxcsr, .stmxcsr:
            // Kernels load MXCSR in kernel_fpu_begin; KVM's emulator here cannot (Linux boot, issue 9).
            guard case .memory = i.operands.0 else { throw .fault(.invalidOpcode()) }
            try checkSIMD(vex: false)
            if i.mnemonic == .ldmxcsr {
                let v = try read(i.operands.0, 4)
                if v & ~Self.mxcsrMask != 0 { throw .fault(.generalProtection(0)) }  // reserved bits set
                mxcsr = UInt32(truncatingIfNeeded: v)
            } else {
                try write(i.operands.0, UInt64(mxcsr), 4)
            }
            return true
        case .movnti:
            let s = opSize(i.operands.0, i)
            try write(i.operands.0, try read(i.operands.1, s), s)
            return true
        case .movd, .movq, .vmovd, .vmovq:
            let vex = i.prefixes.contains(.vex)
            let o0 = i.operands.0, o1 = i.operands.1
            // MMX registers are not modelled.
            if o0.register?.regClass == .mmx || o1.register?.regClass == .mmx { throw .unsupported }
            if i.prefixes.contains(.evex) { throw .unsupported }
            try checkSIMD(vex: vex)
            let wide = i.mnemonic == .movq || i.mnemonic == .vmovq
            let n = wide ? 8 : 4
            if isXMMOperand(o0) {
                // To an XMM register: zero-extended to 128 bits (VEX: to the full YMM; legacy SSE keeps 255:128).
                let v: UInt64
                if isXMMOperand(o1) { v = vreg[Int(o1.register!.number & 15) * 4] } else { v = try read(o1, n) & sizeMask(n) }
                try writeVec(o0, (v, 0, 0, 0), 16, vex: vex, aligned: false)
            } else {
                guard let src = o1.register, src.regClass == .xmm else { throw .unsupported }
                let v = vreg[Int(src.number & 15) * 4] & sizeMask(n)
                if case .memory = o0 {
                    try write(o0, v, n)
                } else if o0.register?.regClass == .xmm {
                    try writeVec(o0, (v, 0, 0, 0), 16, vex: vex, aligned: false)
                } else {
                    try write(o0, v, n)
                }
            }
            return true
        case .pand, .pandn, .por, .pxor, .andps, .andpd, .andnps, .andnpd, .orps, .orpd, .xorps, .xorpd:
            if i.operands.0.register?.regClass == .mmx { throw .unsupported }
            try checkSIMD(vex: false)
            let a = try readVec(i.operands.0, 16, aligned: false)
            let b = try readVec(i.operands.1, 16, aligned: true)
            try writeVec(i.operands.0, logic(i.mnemonic, a, b), 16, vex: false, aligned: false)
            return true
        case .vpand, .vpandn, .vpor, .vpxor, .vandps, .vandpd, .vandnps, .vandnpd, .vorps, .vorpd, .vxorps, .vxorpd:
            if i.prefixes.contains(.evex) { throw .unsupported }
            try checkSIMD(vex: true)
            let bytes = i.vector.vectorLength == 1 ? 32 : 16
            let a = try readVec(i.operands.1, bytes, aligned: false)
            let b = try readVec(i.operands.2, bytes, aligned: false)
            try writeVec(i.operands.0, logic(i.mnemonic, a, b), bytes, vex: true, aligned: false)
            return true
        default:
            return false
        }
    }

    func isXMMOperand(_ o: Operand) -> Bool {
        if case .register(let r) = o { return r.regClass == .xmm || r.regClass == .ymm }
        return false
    }

    /// SSE needs CR0.EM clear and CR4.OSFXSR; AVX needs CR4.OSXSAVE and XCR0 enabling SSE and
    /// AVX state; both raise #NM while CR0.TS is set.
    /// The MXCSR bits a processor with DAZ accepts (MXCSR_MASK 0xFFFF); LDMXCSR of others is #GP(0).
    static let mxcsrMask: UInt64 = 0xFFFF

    func checkSIMD(vex: Bool) throws(Stop) {
        if vex {
            if mode == .real || mode == .virtual8086 { throw .fault(.invalidOpcode()) }
            if sys.cr4 & CR4.osxsave == 0 || xcr0 & 6 != 6 { throw .fault(.invalidOpcode()) }
        } else {
            if sys.cr0 & CR0.em != 0 || sys.cr4 & CR4.osfxsr == 0 { throw .fault(.invalidOpcode()) }
        }
        if sys.cr0 & CR0.ts != 0 { throw .fault(.deviceNotAvailable()) }
    }

    func logic(_ m: Mnemonic, _ a: Vec, _ b: Vec) -> Vec {
        func f(_ x: UInt64, _ y: UInt64) -> UInt64 {
            switch m {
            case .pand, .andps, .andpd, .vpand, .vandps, .vandpd: return x & y
            case .pandn, .andnps, .andnpd, .vpandn, .vandnps, .vandnpd: return ~x & y
            case .por, .orps, .orpd, .vpor, .vorps, .vorpd: return x | y
            default: return x ^ y
            }
        }
        return (f(a.0, b.0), f(a.1, b.1), f(a.2, b.2), f(a.3, b.3))
    }

    func readVec(_ o: Operand, _ bytes: Int, aligned: Bool) throws(Stop) -> Vec {
        switch o {
        case .register(let r) where r.regClass == .xmm || r.regClass == .ymm:
            let p = vreg + Int(r.number & 15) * 4
            return bytes == 32 ? (p[0], p[1], p[2], p[3]) : (p[0], p[1], 0, 0)
        case .memory(let m):
            let ea = effectiveAddress(m)
            if aligned && ea & UInt64(bytes - 1) != 0 { throw .fault(.generalProtection(0)) }
            let lin = try linear(segIndex(m), ea, bytes, write: false)
            var v: Vec = (0, 0, 0, 0)
            try withUnsafeMutableBytes(of: &v) { (b) throws(Stop) in try readLinearBytes(lin, bytes, into: b.baseAddress!) }
            return v
        default:
            throw .unsupported
        }
    }

    /// Legacy SSE writes keep bits 255:128 of the YMM register; VEX writes zero them (VEX.128).
    func writeVec(_ o: Operand, _ v: Vec, _ bytes: Int, vex: Bool, aligned: Bool) throws(Stop) {
        switch o {
        case .register(let r) where r.regClass == .xmm || r.regClass == .ymm:
            let p = vreg + Int(r.number & 15) * 4
            p[0] = v.0; p[1] = v.1
            if bytes == 32 { p[2] = v.2; p[3] = v.3 } else if vex { p[2] = 0; p[3] = 0 }
        case .memory(let m):
            let ea = effectiveAddress(m)
            if aligned && ea & UInt64(bytes - 1) != 0 { throw .fault(.generalProtection(0)) }
            let lin = try linear(segIndex(m), ea, bytes, write: true)
            var x = v
            try withUnsafeBytes(of: &x) { (b) throws(Stop) in try writeLinearBytes(lin, bytes, from: b.baseAddress!) }
        default:
            throw .unsupported
        }
    }

    // MARK: BMI1 / BMI2

    func bmi(_ i: Instruction) throws(Stop) {
        let bmi2: Set<Mnemonic> = [.bzhi, .mulx, .pdep, .pext, .rorx, .sarx, .shlx, .shrx]
        if !features.contains(bmi2.contains(i.mnemonic) ? .bmi2 : .bmi1) { throw .fault(.invalidOpcode()) }
        if mode == .real || mode == .virtual8086 { throw .fault(.invalidOpcode()) }
        let o0 = i.operands.0, o1 = i.operands.1, o2 = i.operands.2
        let s = Int(i.operandSize) / 8
        let m = sizeMask(s)
        let bits = UInt64(s * 8)
        switch i.mnemonic {
        case .andn:
            let notSrc = ~(try read(o1, s))
            let r = notSrc & (try read(o2, s)) & m
            setBMIFlags(r, s, cf: false)
            try write(o0, r, s)
        case .bextr:
            let src = try read(o1, s) & m, ctl = try read(o2, s)
            let start = ctl & 0xFF, len = (ctl >> 8) & 0xFF
            var r: UInt64 = start >= bits ? 0 : src >> start
            if len < 64 { r &= (UInt64(1) << len) &- 1 }
            r &= m
            setBMIFlags(r, s, cf: false)
            flagsRest &= ~RFLAGS.sf  // SF undefined; cleared
            try write(o0, r, s)
        case .blsi, .blsmsk, .blsr:
            let src = try read(o1, s) & m
            let r: UInt64
            switch i.mnemonic {
            case .blsi: r = (0 &- src) & src & m
            case .blsmsk: r = ((src &- 1) ^ src) & m
            default: r = ((src &- 1) & src) & m
            }
            setBMIFlags(r, s, cf: i.mnemonic == .blsi ? src != 0 : src == 0)
            try write(o0, r, s)
        case .bzhi:
            let src = try read(o1, s) & m, n = try read(o2, s) & 0xFF
            let r = n < bits ? src & ((UInt64(1) << n) &- 1) : src
            setBMIFlags(r, s, cf: n > bits - 1)
            try write(o0, r, s)
        case .mulx:
            let a = gpr[2] & m, b = try read(o2, s) & m
            let (hi, lo) = a.multipliedFullWidth(by: b)
            if s == 8 {
                try write(o1, lo, s)
                try write(o0, hi, s)
            } else {
                try write(o1, lo & m, s)
                try write(o0, lo >> 32, s)
            }
        case .pdep:
            try write(o0, X86Executor.pdep(try read(o1, s) & m, try read(o2, s) & m), s)
        case .pext:
            try write(o0, X86Executor.pext(try read(o1, s) & m, try read(o2, s) & m), s)
        case .rorx:
            // RORX has no VEX.vvvv operand: any value but 1111b is #UD (the decoder accepts it).
            if i.vector.vvvv != 0 { throw .fault(.invalidOpcode()) }
            let src = try read(o1, s) & m
            let c = try read(o2, 1) & (bits - 1)
            try write(o0, c == 0 ? src : ((src >> c) | (src << (bits - c))) & m, s)
        case .sarx, .shlx, .shrx:
            let src = try read(o1, s) & m
            let c = try read(o2, s) & (bits - 1)
            let r: UInt64
            switch i.mnemonic {
            case .shlx: r = (src << c) & m
            case .shrx: r = src >> c
            default: r = UInt64(bitPattern: Int64(bitPattern: signExtend(src, s)) >> Int64(c)) & m
            }
            try write(o0, r, s)
        default:
            throw .unsupported
        }
    }
}
