import X86

/// The arithmetic and logic semantics, on values already read: each returns the result and
/// sets the flags as the APM defines them (undefined flags as this project's host, an AMD
/// EPYC, leaves them where that is known; see UndefinedFlags.swift).
extension X86Executor {
    @usableFromInline enum BinOp: UInt8 { case add, or, adc, sbb, and, sub, xor, cmp }

    /// ADD/OR/ADC/SBB/AND/SUB/XOR/CMP in the opcode-extension order.
    @inline(__always)
    func alu(_ op: BinOp, _ d: UInt64, _ s: UInt64, _ size: Int) -> UInt64 {
        let m = sizeMask(size)
        switch op {
        case .add:
            let r = (d &+ s) & m
            setLazy(.add, size: size, dst: d, src: s, res: r)
            return r
        case .adc:
            let c: UInt64 = getCF() ? 1 : 0
            let r = (d &+ s &+ c) & m
            setLazy(.adc, size: size, dst: d, src: s, res: r, carryIn: c)
            return r
        case .sub, .cmp:
            let r = (d &- s) & m
            setLazy(.sub, size: size, dst: d, src: s, res: r)
            return r
        case .sbb:
            let c: UInt64 = getCF() ? 1 : 0
            let r = (d &- s &- c) & m
            setLazy(.sbb, size: size, dst: d, src: s, res: r, carryIn: c)
            return r
        case .and:
            let r = d & s & m
            setLazy(.logic, size: size, dst: d, src: s, res: r)
            return r
        case .or:
            let r = (d | s) & m
            setLazy(.logic, size: size, dst: d, src: s, res: r)
            return r
        case .xor:
            let r = (d ^ s) & m
            setLazy(.logic, size: size, dst: d, src: s, res: r)
            return r
        }
    }

    @inline(__always) func inc(_ d: UInt64, _ size: Int) -> UInt64 {
        let r = (d &+ 1) & sizeMask(size)
        setLazy(.inc, size: size, dst: d, src: 1, res: r)
        return r
    }

    @inline(__always) func dec(_ d: UInt64, _ size: Int) -> UInt64 {
        let r = (d &- 1) & sizeMask(size)
        setLazy(.dec, size: size, dst: d, src: 1, res: r)
        return r
    }

    func neg(_ d: UInt64, _ size: Int) -> UInt64 {
        let r = (0 &- d) & sizeMask(size)
        setLazy(.sub, size: size, dst: 0, src: d, res: r)
        return r
    }

    @inline(__always) func signBit(_ v: UInt64, _ size: Int) -> Bool { (v >> UInt64(size * 8 - 1)) & 1 != 0 }

    @inline(__always) func signExtend(_ v: UInt64, _ size: Int) -> UInt64 {
        switch size {
        case 1: return UInt64(bitPattern: Int64(Int8(truncatingIfNeeded: v)))
        case 2: return UInt64(bitPattern: Int64(Int16(truncatingIfNeeded: v)))
        case 4: return UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: v)))
        default: return v
        }
    }

    // MARK: shifts and rotates

    @usableFromInline enum ShiftOp: UInt8 { case rol, ror, rcl, rcr, shl, shr, sal, sar }

    /// The group-2 shifts and rotates: count masked to 5 bits (6 with 64-bit operands); a
    /// masked count of 0 changes no flags. RCL/RCR rotate through CF (9/17/33/65 bits).
    func shift(_ op: ShiftOp, _ d: UInt64, _ rawCount: UInt64, _ size: Int) -> UInt64 {
        let bits = UInt64(size * 8)
        let m = sizeMask(size)
        let count = rawCount & (size == 8 ? 0x3F : 0x1F)
        if count == 0 { return d & m }
        let v = d & m
        materializeFlags()
        var f = flagsRest
        func put(_ bit: UInt64, _ on: Bool) { if on { f |= bit } else { f &= ~bit } }
        func szp(_ r: UInt64) {
            put(RFLAGS.zf, r & m == 0)
            put(RFLAGS.sf, signBit(r, size))
            put(RFLAGS.pf, parity(r))
        }
        var r: UInt64
        switch op {
        case .rol:
            let c = count % bits
            r = c == 0 ? v : ((v << c) | (v >> (bits - c))) & m
            put(RFLAGS.cf, r & 1 != 0)
            put(RFLAGS.of, signBit(r, size) != (r & 1 != 0))
        case .ror:
            let c = count % bits
            r = c == 0 ? v : ((v >> c) | (v << (bits - c))) & m
            put(RFLAGS.cf, signBit(r, size))
            put(RFLAGS.of, signBit(r, size) != signBit(r << 1, size))
        case .rcl:
            let c = count % (bits + 1)
            r = v
            var cf: UInt64 = f & 1
            if c != 0 {
                for _ in 0..<c {
                    let out = (r >> (bits - 1)) & 1
                    r = ((r << 1) | cf) & m
                    cf = out
                }
            }
            put(RFLAGS.cf, cf != 0)
            put(RFLAGS.of, signBit(r, size) != (cf != 0))
        case .rcr:
            let c = count % (bits + 1)
            r = v
            var cf: UInt64 = f & 1
            let of = signBit(v, size) != (cf != 0)
            if c != 0 {
                for _ in 0..<c {
                    let out = r & 1
                    r = (r >> 1) | (cf << (bits - 1))
                    cf = out
                }
            }
            put(RFLAGS.cf, cf != 0)
            // OF is defined for a count of 1: MSB of the operand XOR the old CF; for larger
            // counts AMD computes it from the result's top two bits.
            if count == 1 { put(RFLAGS.of, of) } else { put(RFLAGS.of, signBit(r, size) != signBit(r << 1, size)) }
        case .shl, .sal:
            if count < bits {
                r = (v << count) & m
                put(RFLAGS.cf, (v >> (bits - count)) & 1 != 0)
            } else {
                r = 0
                put(RFLAGS.cf, count == bits ? v & 1 != 0 : false)
            }
            put(RFLAGS.of, signBit(r, size) != (f & RFLAGS.cf != 0))
            put(RFLAGS.af, true)
            szp(r)
        case .shr:
            if count < bits {
                r = v >> count
                put(RFLAGS.cf, (v >> (count - 1)) & 1 != 0)
            } else {
                r = 0
                put(RFLAGS.cf, count == bits ? signBit(v, size) : false)
            }
            put(RFLAGS.of, signBit(v, size))
            put(RFLAGS.af, true)
            szp(r)
        case .sar:
            let sv = Int64(bitPattern: signExtend(v, size))
            let c = min(count, bits - 1)
            r = UInt64(bitPattern: sv >> Int64(c)) & m
            put(RFLAGS.cf, count >= bits ? signBit(v, size) : (UInt64(bitPattern: sv) >> (count - 1)) & 1 != 0)
            put(RFLAGS.of, false)
            put(RFLAGS.af, true)
            szp(r)
        }
        flagsRest = f
        return r
    }

    /// SHLD/SHRD: count masked to 5 (6) bits; 16-bit counts above 16 leave an undefined result.
    func doubleShift(left: Bool, _ d: UInt64, _ s: UInt64, _ rawCount: UInt64, _ size: Int) -> UInt64 {
        let bits = UInt64(size * 8)
        let m = sizeMask(size)
        let count = rawCount & (size == 8 ? 0x3F : 0x1F)
        if count == 0 { return d & m }
        let dv = d & m, sv = s & m
        var r: UInt64, cf: Bool
        if count > bits {
            // Only 16-bit operands get here (counts 17-31): the result is undefined; this
            // follows the 48-bit concatenation dst:src:dst the hardware shifts.
            let wide = left ? (dv << 32) | (sv << 16) | dv : dv | (sv << 16) | (dv << 32)
            if left {
                r = ((wide << count) >> 32) & m
                cf = (wide >> (48 - count)) & 1 != 0
            } else {
                r = (wide >> count) & m
                cf = (wide >> (count - 1)) & 1 != 0
            }
        } else if left {
            r = count == bits ? sv : ((dv << count) | (sv >> (bits - count))) & m
            cf = (dv >> (bits - count)) & 1 != 0
        } else {
            r = count == bits ? sv : ((dv >> count) | (sv << (bits - count))) & m
            cf = (dv >> (count - 1)) & 1 != 0
        }
        let of = signBit(r, size) != signBit(dv, size)
        setResultFlags(r, size: size, cf: cf, of: of, af: false)
        return r
    }

    // MARK: multiply and divide

    /// MUL/IMUL with one operand: rDX:rAX (AX for bytes) = rAX * src.
    func mulAcc(_ src: UInt64, _ size: Int, signed: Bool) {
        let m = sizeMask(size)
        let a = gpr[0] & m, b = src & m
        var lo: UInt64, hi: UInt64, overflow: Bool
        if signed {
            let sa = Int64(bitPattern: signExtend(a, size)), sb = Int64(bitPattern: signExtend(b, size))
            let (h, l) = sa.multipliedFullWidth(by: sb)
            if size == 8 {
                lo = l; hi = UInt64(bitPattern: h)
                overflow = h != (Int64(bitPattern: l) >> 63)
            } else {
                let p = sa &* sb
                lo = UInt64(bitPattern: p) & m
                hi = (UInt64(bitPattern: p) >> UInt64(size * 8)) & m
                overflow = signExtend(lo, size) != UInt64(bitPattern: p)
            }
        } else {
            let (h, l) = a.multipliedFullWidth(by: b)
            if size == 8 { lo = l; hi = h } else {
                lo = l & m
                hi = (l >> UInt64(size * 8)) & m
            }
            overflow = hi != 0
        }
        switch size {
        case 1: setReg16(0, (hi << 8) | lo)
        case 2: setReg16(0, lo); setReg16(2, hi)
        case 4: gpr[0] = lo; gpr[2] = hi
        default: gpr[0] = lo; gpr[2] = hi
        }
        // CF=OF=overflow; SF, ZF, AF, PF undefined: AMD sets SF/ZF/PF from the low half.
        setResultFlags(lo, size: size, cf: overflow, of: overflow, af: false)
    }

    /// IMUL with two or three operands: the truncated product, CF=OF when it did not fit.
    func imulTrunc(_ a: UInt64, _ b: UInt64, _ size: Int) -> UInt64 {
        let m = sizeMask(size)
        let sa = Int64(bitPattern: signExtend(a & m, size)), sb = Int64(bitPattern: signExtend(b & m, size))
        let (h, l) = sa.multipliedFullWidth(by: sb)
        let r = l & m
        let overflow: Bool
        if size == 8 { overflow = h != (Int64(bitPattern: l) >> 63) } else {
            overflow = signExtend(r, size) != l
        }
        setResultFlags(r, size: size, cf: overflow, of: overflow, af: false)
        return r
    }

    /// DIV/IDIV: #DE on a zero divisor or a quotient that does not fit.
    func divAcc(_ src: UInt64, _ size: Int, signed: Bool) throws(Stop) {
        let m = sizeMask(size)
        let divisor = src & m
        if divisor == 0 { throw .fault(.divideError()) }
        let bits = UInt64(size * 8)
        var q: UInt64, r: UInt64
        if !signed {
            if size == 8 {
                let hi = gpr[2], lo = gpr[0]
                if hi >= divisor { throw .fault(.divideError()) }
                (q, r) = divisor.dividingFullWidth((high: hi, low: lo))
            } else {
                let dividend: UInt64 = size == 1 ? (gpr[0] & 0xFFFF) : (((gpr[2] & m) << bits) | (gpr[0] & m))
                q = dividend / divisor
                r = dividend % divisor
                if q > m { throw .fault(.divideError()) }
            }
        } else {
            let sd = Int64(bitPattern: signExtend(divisor, size))
            if size == 8 {
                let hi = Int64(bitPattern: gpr[2]), lo = gpr[0]
                // 128-bit signed division via magnitudes.
                let neg = hi < 0
                var mh = UInt64(bitPattern: hi), ml = lo
                if neg { ml = ~ml &+ 1; mh = ~mh &+ (ml == 0 ? 1 : 0) }
                let dneg = sd < 0
                let md = sd.magnitude
                if mh >= md { throw .fault(.divideError()) }
                let (uq, ur) = md.dividingFullWidth((high: mh, low: ml))
                let qneg = neg != dneg
                if qneg {
                    if uq > UInt64(1) << 63 { throw .fault(.divideError()) }
                    q = 0 &- uq
                } else {
                    if uq > UInt64(Int64.max) { throw .fault(.divideError()) }
                    q = uq
                }
                r = neg ? 0 &- ur : ur
            } else {
                let dividend: Int64
                if size == 1 { dividend = Int64(Int16(truncatingIfNeeded: gpr[0])) }
                else if size == 2 { dividend = Int64(Int32(truncatingIfNeeded: ((gpr[2] & 0xFFFF) << 16) | (gpr[0] & 0xFFFF))) }
                else { dividend = Int64(bitPattern: ((gpr[2] & m) << 32) | (gpr[0] & m)) }
                let sq = dividend / sd, sr = dividend % sd
                let lim = Int64(1) << Int64(bits - 1)
                if sq >= lim || sq < -lim { throw .fault(.divideError()) }
                q = UInt64(bitPattern: sq) & m
                r = UInt64(bitPattern: sr) & m
            }
        }
        switch size {
        case 1: setReg16(0, ((r & 0xFF) << 8) | (q & 0xFF))
        case 2: setReg16(0, q); setReg16(2, r)
        case 4: gpr[0] = q & m; gpr[2] = r & m
        default: gpr[0] = q; gpr[2] = r
        }
        // All six flags undefined after DIV/IDIV; left unchanged here.
    }

    @inline(__always) func setReg16(_ n: Int, _ v: UInt64) { gpr[n] = (gpr[n] & ~0xFFFF) | (v & 0xFFFF) }

    // MARK: BCD and ASCII adjust (not in 64-bit mode)

    func daa() {
        materializeFlags()
        var al = gpr[0] & 0xFF
        let oldAL = al, oldCF = flagsRest & RFLAGS.cf != 0
        var cf = false, af = false
        if al & 0xF > 9 || flagsRest & RFLAGS.af != 0 {
            al = (al &+ 6) & 0xFF
            cf = oldCF || oldAL > 0xF9
            af = true
        }
        if oldAL > 0x99 || oldCF {
            al = (al &+ 0x60) & 0xFF
            cf = true
        }
        gpr[0] = (gpr[0] & ~0xFF) | al
        setResultFlags(al, size: 1, cf: cf, of: false, af: af)
    }

    func das() {
        materializeFlags()
        var al = gpr[0] & 0xFF
        let oldAL = al, oldCF = flagsRest & RFLAGS.cf != 0
        var cf = false, af = false
        if al & 0xF > 9 || flagsRest & RFLAGS.af != 0 {
            al = (al &- 6) & 0xFF
            cf = oldCF || oldAL < 6
            af = true
        }
        if oldAL > 0x99 || oldCF {
            al = (al &- 0x60) & 0xFF
            cf = true
        }
        gpr[0] = (gpr[0] & ~0xFF) | al
        setResultFlags(al, size: 1, cf: cf, of: false, af: af)
    }

    func aaa(subtract: Bool) {
        materializeFlags()
        var ax = gpr[0] & 0xFFFF
        let adjust = ax & 0xF > 9 || flagsRest & RFLAGS.af != 0
        if adjust {
            if subtract {
                let al = (ax & 0xFF) &- 6
                let ah = ((ax >> 8) &- 1) & 0xFF
                ax = (ah << 8) | (al & 0xFF)
            } else {
                ax = (ax &+ 0x106) & 0xFFFF
            }
        }
        ax &= 0xFF0F
        setReg16(0, ax)
        setResultFlags(ax & 0xFF, size: 1, cf: adjust, of: false, af: adjust)
    }

    func aam(_ base: UInt64) throws(Stop) {
        if base == 0 { throw .fault(.divideError()) }
        let al = gpr[0] & 0xFF
        let ah = al / base, nal = al % base
        setReg16(0, (ah << 8) | nal)
        setResultFlags(nal, size: 1, cf: false, of: false, af: false)
    }

    func aad(_ base: UInt64) {
        let al = gpr[0] & 0xFF, ah = (gpr[0] >> 8) & 0xFF
        let r = (al &+ ah &* base) & 0xFF
        setReg16(0, r)
        // AMD computes OF/AF/CF as for the 8-bit ADD of AL and AH*base.
        let prod = (ah &* base) & 0xFF
        let cf = al + prod > 0xFF
        let af = (al & 0xF) + (prod & 0xF) > 0xF
        let of = ((al ^ r) & (prod ^ r)) & 0x80 != 0
        setResultFlags(r, size: 1, cf: cf, of: of, af: af)
    }

    // MARK: bit scans and counts

    func bsf(_ src: UInt64, _ old: UInt64, _ size: Int) -> UInt64 {
        let v = src & sizeMask(size)
        // ZF set and destination unchanged for a zero source (AMD documents that).
        if v == 0 { setResultFlagsBitScan(zero: true); return old }
        setResultFlagsBitScan(zero: false)
        return UInt64(v.trailingZeroBitCount)
    }

    func bsr(_ src: UInt64, _ old: UInt64, _ size: Int) -> UInt64 {
        let v = src & sizeMask(size)
        if v == 0 { setResultFlagsBitScan(zero: true); return old }
        setResultFlagsBitScan(zero: false)
        return UInt64(63 - v.leadingZeroBitCount)
    }

    private func setResultFlagsBitScan(zero: Bool) {
        materializeFlags()
        if zero { flagsRest |= RFLAGS.zf } else { flagsRest &= ~RFLAGS.zf }
    }

    func tzcnt(_ src: UInt64, _ size: Int) -> UInt64 {
        let v = src & sizeMask(size)
        let r = v == 0 ? UInt64(size * 8) : UInt64(v.trailingZeroBitCount)
        setCountFlags(cf: v == 0, zf: r == 0)
        return r
    }

    func lzcnt(_ src: UInt64, _ size: Int) -> UInt64 {
        let v = src & sizeMask(size)
        let r = v == 0 ? UInt64(size * 8) : UInt64(v.leadingZeroBitCount - (64 - size * 8))
        setCountFlags(cf: v == 0, zf: r == 0)
        return r
    }

    func popcnt(_ src: UInt64, _ size: Int) -> UInt64 {
        let v = src & sizeMask(size)
        setStatus(v == 0 ? RFLAGS.zf : 0)
        return UInt64(v.nonzeroBitCount)
    }

    private func setCountFlags(cf: Bool, zf: Bool) {
        materializeFlags()
        var f = flagsRest & ~(RFLAGS.cf | RFLAGS.zf)
        if cf { f |= RFLAGS.cf }
        if zf { f |= RFLAGS.zf }
        flagsRest = f
    }

    /// Flags of the BMI1 logic group (ANDN, BLSI...): SF/ZF from the result, OF=0, CF given.
    func setBMIFlags(_ r: UInt64, _ size: Int, cf: Bool) {
        materializeFlags()
        var f = flagsRest & ~(RFLAGS.cf | RFLAGS.zf | RFLAGS.sf | RFLAGS.of)
        if cf { f |= RFLAGS.cf }
        if r & sizeMask(size) == 0 { f |= RFLAGS.zf }
        if signBit(r, size) { f |= RFLAGS.sf }
        flagsRest = f
    }

    static func pdep(_ src: UInt64, _ mask: UInt64) -> UInt64 {
        var r: UInt64 = 0, m = mask, k: UInt64 = 0
        while m != 0 {
            let low = m & (0 &- m)
            if (src >> k) & 1 != 0 { r |= low }
            k += 1
            m &= m - 1
        }
        return r
    }

    static func pext(_ src: UInt64, _ mask: UInt64) -> UInt64 {
        var r: UInt64 = 0, m = mask, k: UInt64 = 0
        while m != 0 {
            let low = m & (0 &- m)
            if src & low != 0 { r |= 1 << k }
            k += 1
            m &= m - 1
        }
        return r
    }
}
