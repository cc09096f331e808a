import X86

/// A compact pre-decoded form of the hottest register-only instructions, kept beside each
/// decode-cache entry, so the interpreter loop runs them without copying the decoder's
/// `Instruction` or re-checking operand kinds. Anything else is `.generic` and takes the
/// full path; the two paths give identical results (the fast path covers 32/64-bit register
/// and immediate forms in 64-bit mode only).
@usableFromInline struct FastOp {
    @usableFromInline enum Kind: UInt8 {
        case generic, aluRR, aluRI, addRR, addRI, subRR, subRI, cmpRR, cmpRI, testRR, testRI, inc, dec, movRR, movRI, jcc, jmp, nop
    }
    @usableFromInline var kind: Kind = .generic
    @usableFromInline var len: UInt8 = 0
    /// Operand size in bytes (4 or 8).
    @usableFromInline var size: UInt8 = 8
    @usableFromInline var a: UInt8 = 0
    @usableFromInline var b: UInt8 = 0
    /// ALU operation (BinOp raw value) or condition code.
    @usableFromInline var op: UInt8 = 0
    @usableFromInline var imm: UInt64 = 0

    static func compile(_ i: Instruction) -> FastOp {
        var f = FastOp()
        f.len = i.length
        guard i.mode == 64, !i.prefixes.contains(.lock) else { return f }
        func gpr(_ o: Operand) -> UInt8? {
            if case .register(let r) = o, (r.regClass == .gpr32 || r.regClass == .gpr64) { return r.number & 15 }
            return nil
        }
        func imm(_ o: Operand) -> UInt64? {
            if case .immediate(let v, _) = o { return UInt64(bitPattern: v) }
            return nil
        }
        let o0 = i.operands.0, o1 = i.operands.1
        let size = UInt8(i.operandSize / 8)
        f.size = size
        switch i.mnemonic {
        case .add, .or, .adc, .sbb, .and, .sub, .xor, .cmp:
            let op: X86Executor.BinOp
            switch i.mnemonic {
            case .add: op = .add; case .or: op = .or; case .adc: op = .adc; case .sbb: op = .sbb
            case .and: op = .and; case .sub: op = .sub; case .xor: op = .xor; default: op = .cmp
            }
            guard size >= 4, let d = gpr(o0), i.operandCount == 2 else { return f }
            f.op = op.rawValue
            f.a = d
            if let s = gpr(o1) { f.kind = .aluRR; f.b = s } else if let v = imm(o1) { f.kind = .aluRI; f.imm = v & sizeMask(Int(size)) }
            // The commonest operations get their own kinds (one dispatch instead of two).
            if f.kind == .aluRR { f.kind = op == .add ? .addRR : op == .sub ? .subRR : op == .cmp ? .cmpRR : .aluRR }
            if f.kind == .aluRI { f.kind = op == .add ? .addRI : op == .sub ? .subRI : op == .cmp ? .cmpRI : .aluRI }
        case .test:
            guard size >= 4, let d = gpr(o0) else { return f }
            f.a = d
            if let s = gpr(o1) { f.kind = .testRR; f.b = s } else if let v = imm(o1) { f.kind = .testRI; f.imm = v & sizeMask(Int(size)) }
        case .inc, .dec:
            guard size >= 4, let d = gpr(o0) else { return f }
            f.a = d
            f.kind = i.mnemonic == .inc ? .inc : .dec
        case .mov:
            guard size >= 4, let d = gpr(o0) else { return f }
            f.a = d
            if let s = gpr(o1) { f.kind = .movRR; f.b = s } else if let v = imm(o1) { f.kind = .movRI; f.imm = v & sizeMask(Int(size)) }
        case .jo, .jno, .jb, .jae, .je, .jne, .jbe, .ja, .js, .jns, .jp, .jnp, .jl, .jge, .jle, .jg:
            guard i.operandSize == 64, case .relative(let d) = o0 else { return f }
            f.kind = .jcc
            f.op = i.opcode & 0xF
            f.imm = UInt64(bitPattern: d)
        case .jmp:
            guard i.operandSize == 64, case .relative(let d) = o0 else { return f }
            f.kind = .jmp
            f.imm = UInt64(bitPattern: d)
        case .nop:
            f.kind = .nop
        default:
            break
        }
        return f
    }
}

extension X86Executor {
    /// Runs fast forms back to back from RIP, at most `limit`, keeping RIP and the decode
    /// cache's tables in locals; stops at the first instruction without a fast form, at a page
    /// change, or where a branch target needs the full path. Returns how many it ran.
    @inline(__always)
    func runFast(_ limit: Int) -> Int {
        if mode != .long64 || flagsRest & RFLAGS.tf != 0 || singleStepPending { return 0 }
        if !(rip >> 12 == fetchPage && fetchValid) { _ = primeFetchPage(); if !fetchValid { return 0 } }
        let tags = cache.tag, ops = cache.fast, regs = gpr
        let genBits = cache.generation << 59
        let page = fetchPage, frame = fetchFrame
        var ip = rip
        var k = 0
        loop: while k < limit {
            if ip >> 12 != page { break }
            let pa = frame | (ip & 0xFFF)
            let idx = DecodeCache.index(pa)
            if tags[idx] != ((pa << 7 | 64) &+ 1) | genBits { break }
            let f = ops[idx]
            let next = ip &+ UInt64(f.len)
            switch f.kind {
            case .generic:
                break loop
            case .addRR, .addRI, .subRR, .subRI, .cmpRR, .cmpRI:
                let size = Int(f.size)
                let m = sizeMask(size)
                let reg = f.kind == .addRR || f.kind == .subRR || f.kind == .cmpRR
                let src = reg ? regs[Int(f.b)] & m : f.imm
                let d = regs[Int(f.a)] & m
                let add = f.kind == .addRR || f.kind == .addRI
                let r = (add ? d &+ src : d &- src) & m
                lazy.op = add ? .add : .sub
                lazy.signShift = UInt64(size * 8 - 1)
                lazy.mask = m
                lazy.dst = d
                lazy.src = src
                lazy.res = r
                if f.kind != .cmpRR && f.kind != .cmpRI { regs[Int(f.a)] = r }
            case .aluRR, .aluRI:
                let size = Int(f.size)
                let src = f.kind == .aluRR ? regs[Int(f.b)] & sizeMask(size) : f.imm
                let op = BinOp(rawValue: f.op) ?? .cmp
                let r = alu(op, regs[Int(f.a)] & sizeMask(size), src, size)
                if op != .cmp { regs[Int(f.a)] = r }
            case .testRR, .testRI:
                let size = Int(f.size)
                let src = f.kind == .testRR ? regs[Int(f.b)] : f.imm
                _ = alu(.and, regs[Int(f.a)] & sizeMask(size), src & sizeMask(size), size)
            case .inc:
                let size = Int(f.size)
                regs[Int(f.a)] = inc(regs[Int(f.a)] & sizeMask(size), size)
            case .dec:
                let size = Int(f.size)
                regs[Int(f.a)] = dec(regs[Int(f.a)] & sizeMask(size), size)
            case .movRR:
                regs[Int(f.a)] = regs[Int(f.b)] & sizeMask(Int(f.size))
            case .movRI:
                regs[Int(f.a)] = f.imm
            case .jcc:
                // JE/JNE (the loop branches) test ZF inline; the others go through condition().
                let taken = f.op & 0xE == 4 ? getZF() != (f.op & 1 != 0) : condition(f.op)
                if taken {
                    let t = next &+ f.imm
                    if !isCanonical(t) { break loop }
                    ip = t
                    k += 1
                    continue loop
                }
            case .jmp:
                let t = next &+ f.imm
                if !isCanonical(t) { break loop }
                ip = t
                k += 1
                continue loop
            case .nop:
                break
            }
            ip = next
            k += 1
        }
        if k > 0 {
            rip = ip
            retired &+= UInt64(k)
            interruptShadow = false
        }
        return k
    }

    /// Translates RIP's page for fetching and remembers it; false so the caller takes the full
    /// path this time (which fills the decode cache).
    func primeFetchPage() -> Bool {
        let kind = AccessKind.fetch | userKind(false)
        guard isCanonical(rip), let pa = try? translate(rip, kind) else { return false }
        fetchPage = rip >> 12
        fetchFrame = pa & ~0xFFF
        fetchValid = true
        return false
    }
}
