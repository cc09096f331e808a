import X86

/// Lazily evaluated status flags: the ALU instructions that dominate guest code (ADD, SUB,
/// CMP, logic, INC, DEC) only record their operands and result; each flag is computed when
/// something reads it. Everything else writes the flags eagerly into `flagsRest`.
@usableFromInline
struct LazyFlags {
    @usableFromInline enum Op: UInt8 { case none, add, adc, sub, sbb, logic, inc, dec }
    @usableFromInline var op: Op = .none
    /// Operand size in bits - 1 (7, 15, 31, 63): the sign bit's position.
    @usableFromInline var signShift: UInt64 = 63
    @usableFromInline var mask: UInt64 = ~0
    /// Destination (first operand) before the operation, source operand, result (unmasked).
    @usableFromInline var dst: UInt64 = 0
    @usableFromInline var src: UInt64 = 0
    @usableFromInline var res: UInt64 = 0
    /// Carry in for ADC/SBB.
    @usableFromInline var carryIn: UInt64 = 0
}

@inline(__always) func sizeMask(_ bytes: Int) -> UInt64 {
    bytes >= 8 ? ~0 : (UInt64(1) << UInt64(bytes * 8)) &- 1
}

@inline(__always) func parity(_ v: UInt64) -> Bool { (UInt8(truncatingIfNeeded: v).nonzeroBitCount & 1) == 0 }

extension X86Executor {
    /// RFLAGS with every status flag evaluated.
    @usableFromInline var rflags: UInt64 {
        get {
            if lazy.op == .none { return flagsRest }
            return (flagsRest & ~RFLAGS.status) | lazyStatus()
        }
        set {
            flagsRest = (newValue & 0x3F_7FD5) | 2
            lazy.op = .none
        }
    }

    /// Records an ALU result whose flags are evaluated lazily.
    @inline(__always)
    func setLazy(_ op: LazyFlags.Op, size: Int, dst: UInt64, src: UInt64, res: UInt64, carryIn: UInt64 = 0) {
        if op == .inc || op == .dec {
            // INC/DEC keep CF: freeze it before the lazy record changes.
            let cf = getCF()
            flagsRest = (flagsRest & ~RFLAGS.cf) | (cf ? RFLAGS.cf : 0)
        } else if lazy.op == .none {
            // nothing to freeze
        }
        lazy.op = op
        lazy.signShift = UInt64(size * 8 - 1)
        lazy.mask = sizeMask(size)
        lazy.dst = dst
        lazy.src = src
        lazy.res = res
        lazy.carryIn = carryIn
    }

    /// Writes the six status flags eagerly.
    @inline(__always)
    func setStatus(_ status: UInt64) {
        if lazy.op != .none { flagsRest = rflags; lazy.op = .none }
        flagsRest = (flagsRest & ~RFLAGS.status) | (status & RFLAGS.status)
    }

    /// Materialises lazy flags into `flagsRest` (before partial flag updates).
    @inline(__always)
    func materializeFlags() {
        if lazy.op != .none {
            flagsRest = rflags
            lazy.op = .none
        }
    }

    /// Sets SF, ZF, PF from a result; CF, OF, AF given.
    @inline(__always)
    func setResultFlags(_ res: UInt64, size: Int, cf: Bool, of: Bool, af: Bool = false) {
        let m = sizeMask(size)
        var s: UInt64 = 0
        if cf { s |= RFLAGS.cf }
        if of { s |= RFLAGS.of }
        if af { s |= RFLAGS.af }
        if res & m == 0 { s |= RFLAGS.zf }
        if (res >> UInt64(size * 8 - 1)) & 1 != 0 { s |= RFLAGS.sf }
        if parity(res) { s |= RFLAGS.pf }
        setStatus(s)
    }

    func lazyStatus() -> UInt64 {
        var s: UInt64 = 0
        if getCF() { s |= RFLAGS.cf }
        if getZF() { s |= RFLAGS.zf }
        if getSF() { s |= RFLAGS.sf }
        if getOF() { s |= RFLAGS.of }
        if parity(lazy.res) { s |= RFLAGS.pf }
        if getAF() { s |= RFLAGS.af }
        return s
    }

    @inline(__always) func getCF() -> Bool {
        let m = lazy.mask
        switch lazy.op {
        case .none, .inc, .dec: return flagsRest & RFLAGS.cf != 0
        case .add: return lazy.res & m < lazy.dst & m
        case .adc:
            let r = lazy.res & m, d = lazy.dst & m
            return r < d || (lazy.carryIn != 0 && r == d)
        case .sub: return lazy.dst & m < lazy.src & m
        case .sbb:
            let d = lazy.dst & m, s = lazy.src & m
            return d < s || (lazy.carryIn != 0 && d == s)
        case .logic: return false
        }
    }

    @inline(__always) func getZF() -> Bool {
        if lazy.op == .none { return flagsRest & RFLAGS.zf != 0 }
        return lazy.res & lazy.mask == 0
    }

    @inline(__always) func getSF() -> Bool {
        if lazy.op == .none { return flagsRest & RFLAGS.sf != 0 }
        return (lazy.res >> lazy.signShift) & 1 != 0
    }

    @inline(__always) func getPF() -> Bool {
        if lazy.op == .none { return flagsRest & RFLAGS.pf != 0 }
        return parity(lazy.res)
    }

    @inline(__always) func getAF() -> Bool {
        switch lazy.op {
        case .none: return flagsRest & RFLAGS.af != 0
        case .logic: return false
        default: return (lazy.dst ^ lazy.src ^ lazy.res) & 0x10 != 0
        }
    }

    @inline(__always) func getOF() -> Bool {
        let sh = lazy.signShift
        switch lazy.op {
        case .none: return flagsRest & RFLAGS.of != 0
        case .add, .adc, .inc:
            return ((lazy.dst ^ lazy.res) & (lazy.src ^ lazy.res)) >> sh & 1 != 0
        case .sub, .sbb, .dec:
            return ((lazy.dst ^ lazy.src) & (lazy.dst ^ lazy.res)) >> sh & 1 != 0
        case .logic: return false
        }
    }

    /// Condition code `cc` (the low nibble of Jcc/SETcc/CMOVcc opcodes).
    @inline(__always) func condition(_ cc: UInt8) -> Bool {
        let r: Bool
        switch cc >> 1 {
        case 0: r = getOF()
        case 1: r = getCF()
        case 2: r = getZF()
        case 3: r = getCF() || getZF()
        case 4: r = getSF()
        case 5: r = getPF()
        case 6: r = getSF() != getOF()
        default: r = getZF() || (getSF() != getOF())
        }
        return cc & 1 == 0 ? r : !r
    }

    @inline(__always) func setFlag(_ bit: UInt64, _ on: Bool) {
        materializeFlags()
        if on { flagsRest |= bit } else { flagsRest &= ~bit }
    }
}
