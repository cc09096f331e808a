import X86

/// Where a destination operand lives, resolved once for read-modify-write instructions.
@usableFromInline struct Location {
    @usableFromInline var isMemory: Bool
    @usableFromInline var reg: Register
    @usableFromInline var linear: UInt64
    @usableFromInline var size: Int
}

extension X86Executor {
    // MARK: registers

    @inline(__always)
    func readReg(_ r: Register) -> UInt64 {
        let n = Int(r.number)
        switch r.regClass {
        case .gpr8: return n < 4 || n > 7 ? gpr[n & 15] & 0xFF : (gpr[n - 4] >> 8) & 0xFF
        case .gpr8rex: return gpr[n & 15] & 0xFF
        case .gpr16: return gpr[n & 15] & 0xFFFF
        case .gpr32: return gpr[n & 15] & 0xFFFF_FFFF
        case .gpr64: return gpr[n & 15]
        case .segment: return n < 6 ? UInt64(seg[n].selector) : 0
        case .rip: return nextRIP
        default: return 0
        }
    }

    /// Writes a GPR with the x86 merge rules: 8/16-bit writes merge, 32-bit writes zero-extend.
    @inline(__always)
    func writeReg(_ r: Register, _ v: UInt64) {
        let n = Int(r.number)
        switch r.regClass {
        case .gpr8:
            if n < 4 || n > 7 { gpr[n & 15] = (gpr[n & 15] & ~0xFF) | (v & 0xFF) }
            else { gpr[n - 4] = (gpr[n - 4] & ~0xFF00) | ((v & 0xFF) << 8) }
        case .gpr8rex: gpr[n & 15] = (gpr[n & 15] & ~0xFF) | (v & 0xFF)
        case .gpr16: gpr[n & 15] = (gpr[n & 15] & ~0xFFFF) | (v & 0xFFFF)
        case .gpr32: gpr[n & 15] = v & 0xFFFF_FFFF
        case .gpr64: gpr[n & 15] = v
        default: break
        }
    }

    /// Writes general register `n` at operand size `size` bytes (no high-byte registers).
    @inline(__always)
    func writeGPR(_ n: Int, _ v: UInt64, _ size: Int) {
        switch size {
        case 1: gpr[n] = (gpr[n] & ~0xFF) | (v & 0xFF)
        case 2: gpr[n] = (gpr[n] & ~0xFFFF) | (v & 0xFFFF)
        case 4: gpr[n] = v & 0xFFFF_FFFF
        default: gpr[n] = v
        }
    }

    // MARK: effective addresses

    @inline(__always) static func addressMask(_ bits: UInt8) -> UInt64 {
        bits == 64 ? ~0 : (bits == 32 ? 0xFFFF_FFFF : 0xFFFF)
    }

    @inline(__always)
    func effectiveAddress(_ m: MemoryOperand) -> UInt64 {
        var a = UInt64(bitPattern: m.displacement)
        if m.ripRelative { a = a &+ nextRIP }
        if let b = m.base { a = a &+ gpr[Int(b.number) & 15] }
        if let i = m.index, i.regClass != .xmm && i.regClass != .ymm && i.regClass != .zmm {
            a = a &+ (gpr[Int(i.number) & 15] &* UInt64(m.scale))
        }
        return a & X86Executor.addressMask(m.addressSize)
    }

    @inline(__always) func segIndex(_ m: MemoryOperand) -> Int { m.segment.rawValue }

    // MARK: operand size and access

    /// Bytes an operand occupies.
    @inline(__always)
    func opSize(_ o: Operand, _ insn: Instruction) -> Int {
        switch o {
        case .register(let r): return max(r.bits / 8, 1)
        case .memory(let m): return m.size == 0 ? Int(insn.operandSize) / 8 : Int(m.size)
        case .immediate(_, let s): return Int(s)
        default: return Int(insn.operandSize) / 8
        }
    }

    @inline(__always)
    func read(_ o: Operand, _ size: Int) throws(Stop) -> UInt64 {
        switch o {
        case .register(let r): return readReg(r)
        case .memory(let m): return try readMem(segIndex(m), effectiveAddress(m), size)
        case .immediate(let v, _): return UInt64(bitPattern: v) & sizeMask(size)
        case .relative(let d): return UInt64(bitPattern: d)
        default: return 0
        }
    }

    @inline(__always)
    func write(_ o: Operand, _ v: UInt64, _ size: Int) throws(Stop) {
        switch o {
        case .register(let r): writeReg(r, v)
        case .memory(let m): try writeMem(segIndex(m), effectiveAddress(m), size, v)
        default: break
        }
    }

    /// Resolves a destination for read-modify-write: memory is checked for writing (segment
    /// type/limit and a write translation) before anything is read, as the hardware does.
    @inline(__always)
    func locate(_ o: Operand, _ size: Int) throws(Stop) -> Location {
        switch o {
        case .memory(let m):
            let lin = try linear(segIndex(m), effectiveAddress(m), size, write: true)
            return Location(isMemory: true, reg: Register(.gpr64, 0), linear: lin, size: size)
        case .register(let r):
            return Location(isMemory: false, reg: r, linear: 0, size: size)
        default:
            throw .unsupported
        }
    }

    @inline(__always)
    func load(_ l: Location) throws(Stop) -> UInt64 {
        if !l.isMemory { return readReg(l.reg) }
        // Translate for writing first so a read-only page faults with W=1 as for any RMW.
        try probeWrite(l.linear, l.size)
        return try readLinear(l.linear, l.size)
    }

    @inline(__always)
    func store(_ l: Location, _ v: UInt64) throws(Stop) {
        if l.isMemory { try writeLinear(l.linear, l.size, v) } else { writeReg(l.reg, v) }
    }
}
