import X86

extension X86Executor {
    /// At most this many iterations of a REP string instruction per step; the instruction then
    /// stays at RIP with its registers updated, exactly as after an interrupt between iterations.
    static let maxRepIterationsPerStep: UInt64 = 1 << 20

    /// Fetches, decodes and executes one instruction; exceptions are returned, not delivered.
    func executeOne() -> StepResult {
        do {
            // A decoded-cache hit is copied once, here (returned through `fetchDecode` it was
            // copied twice, 166 bytes each time).
            let at = try fetchAddress()
            let ci = DecodeCache.index(at.pa)
            let insn: Instruction
            if cache.tag[ci] == cache.key(at.pa, at.mode.rawValue) {
                insn = cache.insn[ci]
            } else {
                insn = try fetchDecode(at)
            }
            nextRIP = advanceIP(rip, Int(insn.length))
            outcome = .ok
            taskSwitched = false
            interruptShadow = false
            stackSegmentShadow = false
            noSingleStepTrap = false
            try execute(insn)
            // RF is cleared once an instruction completes (APM vol. 2, "Resume Flag"); IRET loads
            // it from the stack. A REP instruction interrupted between iterations sets it again.
            if insn.mnemonic != .iret && insn.mnemonic != .iretd && insn.mnemonic != .iretq { flagsRest &= ~RFLAGS.rf }
            rip = nextRIP
            return outcome
        } catch {
            return result(of: error)
        }
    }

    func result(of s: Stop) -> StepResult {
        switch s {
        case .fault(let e): return .exception(e, delivered: false)
        case .unbacked(let a): return .unbackedMemory(a)
        case .unanswered(let q): return .unanswered(q)
        case .unsupported: return .unsupported(currentBytes())
        }
    }

    /// The bytes at RIP as far as they can be read (for `.unsupported`).
    func currentBytes() -> [UInt8] {
        var out: [UInt8] = []
        for i in 0..<15 {
            let off = advanceIP(insnStart, i)
            guard let lin = try? linearFetch(off, 1), let b = try? readLinear(lin, 1, supervisor: false) else { break }
            out.append(UInt8(truncatingIfNeeded: b))
        }
        return out
    }

    /// IP arithmetic wraps at the code size outside 64-bit mode.
    @inline(__always) func advanceIP(_ ip: UInt64, _ n: Int) -> UInt64 {
        let v = ip &+ UInt64(n)
        switch mode {
        case .long64: return v
        case .real, .virtual8086: return v & 0xFFFF
        default: return seg[SR.cs].defaultBig ? v & 0xFFFF_FFFF : v & 0xFFFF
        }
    }

    @inline(__always) func linearFetch(_ ip: UInt64, _ n: Int) throws(Stop) -> UInt64 {
        if mode == .long64 {
            if !isCanonical(ip) { throw .fault(.generalProtection(0)) }
            return ip
        }
        let cs = seg[SR.cs]
        if ip &+ UInt64(n - 1) > UInt64(cs.limit) { throw .fault(.generalProtection(0)) }
        return (cs.base &+ ip) & 0xFFFF_FFFF
    }

    /// Reads up to 15 instruction bytes at CS:RIP and decodes them. A fault on bytes the
    /// instruction does not need (the next page, beyond the CS limit) is raised only if the
    /// decoder needs those bytes.
    func fetchDecode() throws(Stop) -> Instruction {
        let at = try fetchAddress()
        // Decoded-instruction cache, keyed by physical address and decoding mode.
        if let hit = cache.lookup(at.pa, at.mode.rawValue) { return hit }
        return try fetchDecode(at)
    }

    /// Where the instruction at CS:RIP starts (linear and physical) and its decoding mode.
    @inline(__always) func fetchAddress() throws(Stop) -> (lin: UInt64, pa: UInt64, mode: DecoderMode) {
        let lin = try linearFetch(rip, 1)
        let pa = try translate(lin, AccessKind.fetch | userKind(false))
        return (lin, pa, DecoderMode(mode))
    }

    /// `fetchDecode` past the decoded-instruction cache.
    func fetchDecode(_ at: (lin: UInt64, pa: UInt64, mode: DecoderMode)) throws(Stop) -> Instruction {
        var buf: (UInt64, UInt64) = (0, 0)
        let dmode = at.mode
        let lin = at.lin
        let kind = AccessKind.fetch | userKind(false)
        let pa = at.pa
        var avail = 15
        if mode != .long64 {
            let room = UInt64(seg[SR.cs].limit) &- rip &+ 1
            if rip > UInt64(seg[SR.cs].limit) { throw .fault(.generalProtection(0)) }
            avail = Int(min(UInt64(15), room))
        }
        let n1 = min(avail, 4096 - Int(lin & 0xFFF))
        var deferred: Stop? = nil
        var have = 0
        try withUnsafeMutableBytes(of: &buf) { (b) throws(Stop) in
            if case .unbacked(let a) = memory.read(pa, count: n1, into: b.baseAddress!) {
                // Unbacked bytes further on may lie past the instruction's end (replay serves only
                // the recorded bytes): decode what is there, and fail only if the decoder needs more.
                let k = Int(truncatingIfNeeded: a &- pa)
                guard k > 0, k < n1, memory.read(pa, count: k, into: b.baseAddress!) == .ok else { throw .unbacked(a) }
                have = k
                deferred = .unbacked(a)
                return
            }
            have = n1
            if n1 < avail {
                do throws(Stop) {
                    let pa2 = try translate(wrapLinear(lin &+ UInt64(n1)), kind)
                    if case .unbacked(let a) = memory.read(pa2, count: avail - n1, into: b.baseAddress! + n1) {
                        throw .unbacked(a)
                    }
                    have = avail
                } catch {
                    deferred = error
                }
            }
        }
        let r = withUnsafeBytes(of: &buf) { b in
            decodeInstruction(UnsafeRawBufferPointer(rebasing: b[0..<have]), mode: dmode, vendor: vendor)
        }
        switch r {
        case .success(let insn):
            // Cached when it lies in bytes read from the first page (replay serves only the
            // recorded bytes, so fewer than 15 may be there).
            if Int(insn.length) <= min(have, n1) { cache.insert(pa, dmode.rawValue, insn) }
            return insn
        case .failure(.truncated):
            if let d = deferred { throw d }
            if have < 15 { throw .fault(.generalProtection(0)) }  // ran into the CS limit
            throw .fault(.generalProtection(0))
        case .failure(.tooLong):
            throw .fault(.generalProtection(0))
        case .failure(.invalid):
            throw .fault(.invalidOpcode())
        }
    }

    // MARK: privilege helpers

    @inline(__always) func requireCPL0() throws(Stop) {
        if sys.cpl != 0 { throw .fault(.generalProtection(0)) }
    }
    @inline(__always) var iopl: UInt8 { UInt8((flagsRest >> 12) & 3) }

    /// The CS limit (or canonical form) check every near branch target gets.
    @inline(__always) func branch(to target: UInt64, _ osize: Int) throws(Stop) {
        var t = target
        if mode == .long64 {
            if osize != 8 { t &= sizeMask(osize) }
            if !isCanonical(t) { throw .fault(.generalProtection(0)) }
        } else {
            t &= sizeMask(osize)
            if t > UInt64(seg[SR.cs].limit) { throw .fault(.generalProtection(0)) }
        }
        nextRIP = t
    }

    /// Operand size in bytes of the instruction.
    @inline(__always) func osz(_ i: Instruction) -> Int { Int(i.operandSize) >> 3 }

    // MARK: the dispatch

    func execute(_ i: Instruction) throws(Stop) {
        let o0 = i.operands.0, o1 = i.operands.1
        switch i.mnemonic {
        // ---- data movement
        case .mov:
            if case .register(let r) = o0, r.regClass == .control { return try movToCR(i, r, o1) }
            if case .register(let r) = o1, r.regClass == .control { return try movFromCR(r, o0) }
            if case .register(let r) = o0, r.regClass == .debug { return try movToDR(r, o1) }
            if case .register(let r) = o1, r.regClass == .debug { return try movFromDR(r, o0) }
            if case .register(let r) = o0, r.regClass == .segment {
                let v = try read(o1, 2)
                if r.number == 1 || r.number > 5 { throw .fault(.invalidOpcode()) }
                try loadSegment(Int(r.number), UInt16(truncatingIfNeeded: v))
                if r.number == 2 { interruptShadow = true; stackSegmentShadow = true }
                return
            }
            if case .register(let r) = o1, r.regClass == .segment {
                if r.number > 5 { throw .fault(.invalidOpcode()) }
                let sel = UInt64(seg[Int(r.number)].selector)
                // To a register: zero-extended to the operand size; to memory: 16 bits.
                if case .register(let d) = o0 { writeReg(d, sel) } else { try write(o0, sel, 2) }
                return
            }
            let s = opSize(o0, i)
            try write(o0, try read(o1, s), s)
        case .movzx:
            let v = try read(o1, opSize(o1, i))
            try write(o0, v, opSize(o0, i))
        case .movsx, .movsxd:
            let ss = opSize(o1, i)
            let v = signExtend(try read(o1, ss), ss)
            try write(o0, v & sizeMask(opSize(o0, i)), opSize(o0, i))
        case .lea:
            guard case .memory(let m) = o1 else { throw .fault(.invalidOpcode()) }
            var a = UInt64(bitPattern: m.displacement)
            if m.ripRelative { a = a &+ nextRIP }
            if let b = m.base { a = a &+ gpr[Int(b.number) & 15] }
            if let x = m.index { a = a &+ gpr[Int(x.number) & 15] &* UInt64(m.scale) }
            a &= X86Executor.addressMask(m.addressSize)
            try write(o0, a & sizeMask(opSize(o0, i)), opSize(o0, i))
        case .xchg:
            let s = opSize(o0, i)
            let a = try locate(o0, s), b = try locate(o1, s)
            let va = try load(a), vb = try load(b)
            if a.isMemory { try store(a, vb); try store(b, va) } else { try store(b, va); try store(a, vb) }
        case .push:
            let s = osz(i)
            var v: UInt64
            if case .register(let r) = o0, r.regClass == .segment { v = UInt64(seg[Int(r.number)].selector) }
            else if case .immediate(let x, _) = o0 { v = UInt64(bitPattern: x) & sizeMask(s) }
            else { v = try read(o0, s) }
            if case .register(let r) = o0, r.regClass == .gpr64 || r.regClass == .gpr32 || r.regClass == .gpr16, r.number == 4 {
                v = gpr[4] & sizeMask(s)  // PUSH rSP pushes the value before the push
            }
            try push(v, s)
        case .pop:
            let s = osz(i)
            if case .register(let r) = o0, r.regClass == .segment {
                let v = try peek(s)
                try loadSegment(Int(r.number), UInt16(truncatingIfNeeded: v))
                setSP((gpr[4] &+ UInt64(s)) & sizeMask(stackSize))
                if r.number == 2 { interruptShadow = true; stackSegmentShadow = true }
                return
            }
            let v = try peek(s)
            if case .memory(let m) = o0 {
                // The address is computed with rSP already incremented.
                let saved = gpr[4]
                setSP((gpr[4] &+ UInt64(s)) & sizeMask(stackSize))
                do throws(Stop) { try writeMem(segIndex(m), effectiveAddress(m), s, v) } catch { gpr[4] = saved; throw error }
            } else {
                setSP((gpr[4] &+ UInt64(s)) & sizeMask(stackSize))
                try write(o0, v, s)
            }
        case .pusha, .pushad:
            let s = osz(i)
            let m = sizeMask(s)
            let sp0 = gpr[4]
            let vals = [gpr[0], gpr[1], gpr[2], gpr[3], sp0, gpr[5], gpr[6], gpr[7]]
            try probeWrite(try linear(SR.ss, (sp0 &- UInt64(8 * s)) & sizeMask(stackSize), 8 * s, write: true), 8 * s)
            for v in vals { try push(v & m, s) }
        case .popa, .popad:
            let s = osz(i)
            _ = try linear(SR.ss, gpr[4] & sizeMask(stackSize), 8 * s, write: false)
            var vals: [UInt64] = []
            for k in 0..<8 { vals.append(try peek(s, UInt64(k * s))) }
            for (k, r) in [7, 6, 5, -1, 3, 2, 1, 0].enumerated() where r >= 0 { writeGPR(r, vals[k], s) }
            setSP((gpr[4] &+ UInt64(8 * s)) & sizeMask(stackSize))
        case .pushf, .pushfd, .pushfq:
            if mode == .virtual8086 && iopl < 3 { throw .fault(.generalProtection(0)) }
            let s = osz(i)
            // VM and RF are pushed as zero.
            try push(rflags & ~(RFLAGS.vm | RFLAGS.rf) & sizeMask(s), s)
        case .popf, .popfd, .popfq:
            if mode == .virtual8086 && iopl < 3 { throw .fault(.generalProtection(0)) }
            let s = osz(i)
            let v = try peek(s)
            setSP((gpr[4] &+ UInt64(s)) & sizeMask(stackSize))
            writeFlagsPOPF(v, s)
        case .cbw: setReg16(0, signExtend(gpr[0], 1))
        case .cwde: gpr[0] = signExtend(gpr[0], 2) & 0xFFFF_FFFF
        case .cdqe: gpr[0] = signExtend(gpr[0], 4)
        case .cwd: setReg16(2, gpr[0] & 0x8000 != 0 ? 0xFFFF : 0)
        case .cdq: gpr[2] = gpr[0] & 0x8000_0000 != 0 ? 0xFFFF_FFFF : 0
        case .cqo: gpr[2] = gpr[0] & (1 << 63) != 0 ? ~0 : 0
        case .bswap:
            guard case .register(let r) = o0 else { throw .fault(.invalidOpcode()) }
            let v = readReg(r)
            if i.operandSize == 16 {
                // 16-bit BSWAP is undefined; AMD and Intel both clear the low word.
                gpr[Int(r.number) & 15] &= ~0xFFFF
                return
            }
            switch r.bits {
            case 64: writeReg(r, v.byteSwapped)
            case 32: writeReg(r, UInt64(UInt32(truncatingIfNeeded: v).byteSwapped))
            default: writeReg(r, 0)  // 16-bit BSWAP is undefined; AMD and Intel both give 0
            }
        case .movbe:
            if !features.contains(.movbe) { throw .fault(.invalidOpcode()) }
            let s = opSize(o0, i)
            let v = try read(o1, s)
            let sw: UInt64 = s == 8 ? v.byteSwapped : (s == 4 ? UInt64(UInt32(truncatingIfNeeded: v).byteSwapped)
                                                         : UInt64(UInt16(truncatingIfNeeded: v).byteSwapped))
            try write(o0, sw, s)
        case .xlat:
            let asz = i.addressSize
            let s = i.segmentOverride.map { mode == .long64 && $0 != .fs && $0 != .gs ? SR.ds : $0.rawValue } ?? SR.ds
            let a = (gpr[3] &+ (gpr[0] & 0xFF)) & X86Executor.addressMask(asz)
            let v = try readMem(s, a, 1)
            gpr[0] = (gpr[0] & ~0xFF) | v
        case .lahf:
            let f = rflags
            gpr[0] = (gpr[0] & ~0xFF00) | ((f & 0xD5 | 2) << 8)
        case .sahf:
            materializeFlags()
            flagsRest = (flagsRest & ~0xD5) | ((gpr[0] >> 8) & 0xD5)
        case .lds, .les, .lfs, .lgs, .lss:
            guard case .memory(let m) = o1, case .register(let r) = o0 else { throw .fault(.invalidOpcode()) }
            let s = osz(i)
            let off = try readMem(segIndex(m), effectiveAddress(m), s)
            let sel = try readMem(segIndex(m), (effectiveAddress(m) &+ UInt64(s)) & X86Executor.addressMask(m.addressSize), 2)
            let target: Int
            switch i.mnemonic { case .lds: target = SR.ds; case .les: target = SR.es; case .lfs: target = SR.fs
                                case .lgs: target = SR.gs; default: target = SR.ss }
            try loadSegment(target, UInt16(sel))
            writeReg(r, off)
        case .cmpxchg:
            let s = opSize(o0, i)
            let d = try locate(o0, s)
            let dv = try load(d)
            let acc = gpr[0] & sizeMask(s)
            _ = alu(.cmp, acc, dv, s)
            if acc == dv {
                try store(d, try read(o1, s))
            } else {
                if d.isMemory { try store(d, dv) }  // the processor always writes the destination
                writeGPR(0, dv, s)
            }
        case .cmpxchg8b, .cmpxchg16b:
            guard case .memory(let m) = o0 else { throw .fault(.invalidOpcode()) }
            let wide = i.mnemonic == .cmpxchg16b
            let half = wide ? 8 : 4
            if wide && !features.contains(.cmpxchg16b) { throw .fault(.invalidOpcode()) }
            let ea = effectiveAddress(m)
            if wide && ea & 15 != 0 { throw .fault(.generalProtection(0)) }
            let lin = try linear(segIndex(m), ea, 2 * half, write: true)
            try probeWrite(lin, 2 * half)
            let lo = try readLinear(lin, half), hi = try readLinear(wrapLinear(lin &+ UInt64(half)), half)
            let hm = sizeMask(half)
            if lo == gpr[0] & hm && hi == gpr[2] & hm {
                try writeLinear(lin, half, gpr[3] & hm)
                try writeLinear(wrapLinear(lin &+ UInt64(half)), half, gpr[1] & hm)
                setFlag(RFLAGS.zf, true)
            } else {
                try writeLinear(lin, half, lo)
                try writeLinear(wrapLinear(lin &+ UInt64(half)), half, hi)
                writeGPR(0, lo, half)
                writeGPR(2, hi, half)
                setFlag(RFLAGS.zf, false)
            }
        case .xadd:
            let s = opSize(o0, i)
            let d = try locate(o0, s)
            let dv = try load(d)
            let sv = try read(o1, s)
            let r = alu(.add, dv, sv, s)
            if case .register(let src) = o1 { writeReg(src, dv) }
            try store(d, r)
        case .enter: try enter(i)
        case .leave:
            let s = osz(i)
            let bp = gpr[5] & sizeMask(stackSize)
            let v = try readMem(SR.ss, bp, s)
            setSP(bp &+ UInt64(s))
            writeGPR(5, v, s)
        case .nop, .pause, .endbr32, .endbr64, .prefetch, .prefetchw, .prefetchwt1, .prefetchnta, .prefetcht0,
             .prefetcht1, .prefetcht2, .lfence, .mfence, .sfence, .clflush, .clflushopt, .clwb:
            break

        // ---- arithmetic and logic
        case .add, .or, .adc, .sbb, .and, .sub, .xor:
            let s = opSize(o0, i)
            let op: BinOp
            switch i.mnemonic {
            case .add: op = .add; case .or: op = .or; case .adc: op = .adc; case .sbb: op = .sbb
            case .and: op = .and; case .sub: op = .sub; default: op = .xor
            }
            if case .register(let r) = o0 {
                let src = try read(o1, s)
                writeReg(r, alu(op, readReg(r), src, s))
            } else {
                let d = try locate(o0, s)
                let src = try read(o1, s)
                try store(d, alu(op, try load(d), src, s))
            }
        case .cmp:
            let s = opSize(o0, i)
            let a = try read(o0, s), b = try read(o1, s)
            _ = alu(.cmp, a, b, s)
        case .test:
            let s = opSize(o0, i)
            let a = try read(o0, s), b = try read(o1, s)
            _ = alu(.and, a, b, s)
        case .inc, .dec:
            let s = opSize(o0, i)
            let d = try locate(o0, s)
            let v = try load(d)
            try store(d, i.mnemonic == .inc ? inc(v, s) : dec(v, s))
        case .neg:
            let s = opSize(o0, i)
            let d = try locate(o0, s)
            try store(d, neg(try load(d), s))
        case .not:
            let s = opSize(o0, i)
            let d = try locate(o0, s)
            try store(d, ~(try load(d)) & sizeMask(s))
        case .mul, .imul:
            if i.operandCount <= 1 {
                let s = opSize(o0, i)
                mulAcc(try read(o0, s), s, signed: i.mnemonic == .imul)
            } else if i.operandCount == 2 {
                let s = opSize(o0, i)
                let r = imulTrunc(try read(o0, s), try read(o1, s), s)
                try write(o0, r, s)
            } else {
                let s = opSize(o0, i)
                let imm = try read(i.operands.2, s)
                let r = imulTrunc(try read(o1, s), imm, s)
                try write(o0, r, s)
            }
        case .div, .idiv:
            let s = opSize(o0, i)
            try divAcc(try read(o0, s), s, signed: i.mnemonic == .idiv)
        case .rol, .ror, .rcl, .rcr, .shl, .shr, .sal, .sar:
            let s = opSize(o0, i)
            let op: ShiftOp
            switch i.mnemonic {
            case .rol: op = .rol; case .ror: op = .ror; case .rcl: op = .rcl; case .rcr: op = .rcr
            case .shl: op = .shl; case .shr: op = .shr; case .sal: op = .sal; default: op = .sar
            }
            let count: UInt64
            switch o1 {
            case .none: count = 1
            case .immediate(let c, _): count = UInt64(bitPattern: c) & 0xFF
            default: count = try read(o1, 1)
            }
            let d = try locate(o0, s)
            let v = try load(d)
            let r = shift(op, v, count, s)
            if count & (s == 8 ? 0x3F : 0x1F) != 0 || d.isMemory == false { try store(d, r) }
        case .shld, .shrd:
            let s = opSize(o0, i)
            let count = try read(i.operands.2, 1)
            let d = try locate(o0, s)
            let v = try load(d)
            let r = doubleShift(left: i.mnemonic == .shld, v, try read(o1, s), count, s)
            // A register destination is written even for a count of 0 (32-bit forms zero-extend).
            if count & (s == 8 ? 0x3F : 0x1F) != 0 || !d.isMemory { try store(d, r) }
        case .bt, .bts, .btr, .btc: try bitTest(i)
        case .bsf, .bsr:
            let s = opSize(o0, i)
            let src = try read(o1, s)
            guard case .register(let r) = o0 else { throw .fault(.invalidOpcode()) }
            let old = readReg(r)
            let v = i.mnemonic == .bsf ? bsf(src, old, s) : bsr(src, old, s)
            if src & sizeMask(s) != 0 { writeReg(r, v) }
        case .tzcnt:
            let s = opSize(o0, i)
            try write(o0, tzcnt(try read(o1, s), s), s)
        case .lzcnt:
            let s = opSize(o0, i)
            try write(o0, lzcnt(try read(o1, s), s), s)
        case .popcnt:
            let s = opSize(o0, i)
            try write(o0, popcnt(try read(o1, s), s), s)
        case .adcx, .adox:
            let s = opSize(o0, i)
            let flag = i.mnemonic == .adcx ? RFLAGS.cf : RFLAGS.of
            materializeFlags()
            let c: UInt64 = flagsRest & flag != 0 ? 1 : 0
            let a = try read(o0, s), b = try read(o1, s)
            let full = (a & sizeMask(s)).addingReportingOverflow(b & sizeMask(s))
            let r2 = full.partialValue.addingReportingOverflow(c)
            var r = r2.partialValue
            var carry = full.overflow || r2.overflow
            if s == 4 { carry = r > 0xFFFF_FFFF; r &= 0xFFFF_FFFF }
            try write(o0, r, s)
            setFlag(flag, carry)
        case .daa, .das, .aaa, .aas, .aam, .aad:
            if mode == .long64 { throw .fault(.invalidOpcode()) }
            switch i.mnemonic {
            case .daa: daa()
            case .das: das()
            case .aaa: aaa(subtract: false)
            case .aas: aaa(subtract: true)
            case .aam: try aam(UInt64(bitPattern: i.immediate) & 0xFF)
            default: aad(UInt64(bitPattern: i.immediate) & 0xFF)
            }
        case .salc:
            if mode == .long64 { throw .fault(.invalidOpcode()) }
            gpr[0] = (gpr[0] & ~0xFF) | (getCF() ? 0xFF : 0)
        case .seto, .setno, .setb, .setae, .sete, .setne, .setbe, .seta,
             .sets, .setns, .setp, .setnp, .setl, .setge, .setle, .setg:
            try write(o0, condition(i.opcode & 0xF) ? 1 : 0, 1)
        case .cmovo, .cmovno, .cmovb, .cmovae, .cmove, .cmovne, .cmovbe, .cmova,
             .cmovs, .cmovns, .cmovp, .cmovnp, .cmovl, .cmovge, .cmovle, .cmovg:
            let s = opSize(o0, i)
            let v = try read(o1, s)  // the source is read (and can fault) either way
            guard case .register(let r) = o0 else { throw .fault(.invalidOpcode()) }
            if condition(i.opcode & 0xF) { writeReg(r, v) } else if s == 4 { writeReg(r, readReg(r)) }
        case .clc: setFlag(RFLAGS.cf, false)
        case .stc: setFlag(RFLAGS.cf, true)
        case .cmc: setFlag(RFLAGS.cf, !getCF())
        case .cld: flagsRest &= ~RFLAGS.df
        case .std: flagsRest |= RFLAGS.df
        case .cli:
            if mode != .real && sys.cpl > iopl { throw .fault(.generalProtection(0)) }
            flagsRest &= ~RFLAGS.if
        case .sti:
            if mode != .real && sys.cpl > iopl { throw .fault(.generalProtection(0)) }
            if flagsRest & RFLAGS.if == 0 { interruptShadow = true }
            flagsRest |= RFLAGS.if
        case .clac, .stac:
            try requireCPL0()
            if i.mnemonic == .clac { flagsRest &= ~RFLAGS.ac } else { flagsRest |= RFLAGS.ac }

        // ---- control transfer
        case .jmp:
            switch o0 {
            case .relative(let d): try branch(to: nextRIP &+ UInt64(bitPattern: d), osz(i))
            case .farPointer(let sel, let off): try farJump(sel, UInt64(off), osz(i))
            case .memory(let m) where i.modrmReg == 5:
                let s = osz(i)
                let off = try readMem(segIndex(m), effectiveAddress(m), s)
                let sel = try readMem(segIndex(m), (effectiveAddress(m) &+ UInt64(s)) & X86Executor.addressMask(m.addressSize), 2)
                try farJump(UInt16(sel), off, s)
            default: try branch(to: try read(o0, osz(i)), osz(i))
            }
        case .call:
            let s = osz(i)
            switch o0 {
            case .relative(let d):
                let ret = nextRIP
                try branch(to: nextRIP &+ UInt64(bitPattern: d), s)
                try push(ret, s)
            case .farPointer(let sel, let off): try farCall(sel, UInt64(off), s)
            case .memory(let m) where i.modrmReg == 3:
                let off = try readMem(segIndex(m), effectiveAddress(m), s)
                let sel = try readMem(segIndex(m), (effectiveAddress(m) &+ UInt64(s)) & X86Executor.addressMask(m.addressSize), 2)
                try farCall(UInt16(sel), off, s)
            default:
                let t = try read(o0, s)
                let ret = nextRIP
                try branch(to: t, s)
                try push(ret, s)
            }
        case .ret:
            let s = osz(i)
            let t = try peek(s)
            try branch(to: t, s)
            var adj = UInt64(s)
            if case .immediate(let n, _) = o0 { adj &+= UInt64(bitPattern: n) & 0xFFFF }
            setSP((gpr[4] &+ adj) & sizeMask(stackSize))
        case .retf:
            var imm: UInt64 = 0
            if case .immediate(let n, _) = o0 { imm = UInt64(bitPattern: n) & 0xFFFF }
            try farReturn(osz(i), imm)
        case .jo, .jno, .jb, .jae, .je, .jne, .jbe, .ja, .js, .jns, .jp, .jnp, .jl, .jge, .jle, .jg:
            if condition(i.opcode & 0xF), case .relative(let d) = o0 {
                try branch(to: nextRIP &+ UInt64(bitPattern: d), osz(i))
            }
        case .jcxz, .jecxz, .jrcxz:
            if gpr[1] & X86Executor.addressMask(i.addressSize) == 0, case .relative(let d) = o0 {
                try branch(to: nextRIP &+ UInt64(bitPattern: d), osz(i))
            }
        case .loop, .loope, .loopne:
            let am = X86Executor.addressMask(i.addressSize)
            let c = (gpr[1] &- 1) & am
            var take = c != 0
            if i.mnemonic == .loope { take = take && getZF() }
            if i.mnemonic == .loopne { take = take && !getZF() }
            if take, case .relative(let d) = o0 { try branch(to: nextRIP &+ UInt64(bitPattern: d), osz(i)) }
            writeCounter(1, c, i.addressSize)
        case .int3: try softwareInterrupt(3, kind: .int3)
        case .int: try softwareInterrupt(UInt8(truncatingIfNeeded: i.immediate), kind: .intN)
        case .int1: try softwareInterrupt(1, kind: .int1)
        case .into:
            if mode == .long64 { throw .fault(.invalidOpcode()) }
            if getOF() { try softwareInterrupt(4, kind: .into) }
        case .iret, .iretd, .iretq: try interruptReturn(osz(i))
        case .hlt:
            try requireCPL0()
            outcome = .halted
        case .ud2, .ud0, .ud1: throw .fault(.invalidOpcode())
        case .bound:
            guard case .register(let r) = o0, case .memory(let m) = o1 else { throw .fault(.invalidOpcode()) }
            let s = r.bits / 8
            let ea = effectiveAddress(m)
            let lower = signExtend(try readMem(segIndex(m), ea, s), s)
            let upper = signExtend(try readMem(segIndex(m), (ea &+ UInt64(s)) & X86Executor.addressMask(m.addressSize), s), s)
            let idx = Int64(bitPattern: signExtend(readReg(r), s))
            if idx < Int64(bitPattern: lower) || idx > Int64(bitPattern: upper) { throw .fault(CPUException(vector: CPUException.br)) }
        case .fwait:
            // No x87 state is modelled, so there is never a pending x87 exception to report.
            if sys.cr0 & (CR0.mp | CR0.ts) == CR0.mp | CR0.ts { throw .fault(.deviceNotAvailable()) }

        // ---- strings
        case .movs, .cmps, .stos, .lods, .scas, .ins, .outs: try stringInstruction(i)

        // ---- system
        case .in, .out: try portInstruction(i)
        case .cpuid:
            guard let src = cpuidSource else { throw .unanswered(.cpuid(leaf: UInt32(truncatingIfNeeded: gpr[0]), subleaf: UInt32(truncatingIfNeeded: gpr[1]))) }
            let leaf = UInt32(truncatingIfNeeded: gpr[0]), sub = UInt32(truncatingIfNeeded: gpr[1])
            guard let r = src.cpuid(leaf: leaf, subleaf: sub) else { throw .unanswered(.cpuid(leaf: leaf, subleaf: sub)) }
            gpr[0] = UInt64(r.eax); gpr[3] = UInt64(r.ebx); gpr[1] = UInt64(r.ecx); gpr[2] = UInt64(r.edx)
        case .rdtsc, .rdtscp:
            if sys.cr4 & CR4.tsd != 0 && sys.cpl != 0 && mode != .real { throw .fault(.generalProtection(0)) }
            if i.mnemonic == .rdtscp && !features.contains(.rdtscp) { throw .fault(.invalidOpcode()) }
            var aux: UInt64 = 0
            if i.mnemonic == .rdtscp { aux = try readMSRValue(MSRIndex.tscAux) }
            guard let t = tsc?.readTSC() else { throw .unanswered(.tsc) }
            gpr[0] = t & 0xFFFF_FFFF
            gpr[2] = t >> 32
            if i.mnemonic == .rdtscp { gpr[1] = aux & 0xFFFF_FFFF }
        case .rdmsr:
            try requireCPL0()
            let idx = UInt32(truncatingIfNeeded: gpr[1])
            let v = try readMSRValue(idx)
            accessLog.append(.msrRead(index: idx, value: v))
            gpr[0] = v & 0xFFFF_FFFF
            gpr[2] = v >> 32
        case .wrmsr:
            try requireCPL0()
            let idx = UInt32(truncatingIfNeeded: gpr[1])
            let v = (gpr[2] & 0xFFFF_FFFF) << 32 | (gpr[0] & 0xFFFF_FFFF)
            try writeMSRValue(idx, v)
            accessLog.append(.msrWrite(index: idx, value: v))
        case .clts:
            try requireCPL0()
            sys.cr0 &= ~CR0.ts
        case .lmsw:
            try requireCPL0()
            let v = try read(o0, 2)
            // LMSW sets PE but never clears it; it writes MP, EM and TS.
            sys.cr0 = (sys.cr0 & ~0xE) | (v & 0xE) | (sys.cr0 & 1) | (v & 1)
            updateMode()
        case .smsw:
            if sys.cr4 & CR4.umip != 0 && sys.cpl > 0 && mode != .real { throw .fault(.generalProtection(0)) }
            if case .register(let r) = o0 { writeReg(r, sys.cr0 & sizeMask(r.bits / 8)) } else { try write(o0, sys.cr0 & 0xFFFF, 2) }
        case .lgdt, .lidt:
            try requireCPL0()
            guard case .memory(let m) = o0 else { throw .fault(.invalidOpcode()) }
            let ea = effectiveAddress(m), am = X86Executor.addressMask(m.addressSize)
            let limit = try readMem(segIndex(m), ea, 2)
            var base: UInt64
            if mode == .long64 { base = try readMem(segIndex(m), (ea &+ 2) & am, 8) }
            else {
                base = try readMem(segIndex(m), (ea &+ 2) & am, 4)
                if osz(i) == 2 { base &= 0xFF_FFFF }
            }
            let t = DescriptorTable(base: base, limit: UInt16(limit))
            if i.mnemonic == .lgdt { sys.gdtr = t } else { sys.idtr = t }
        case .sgdt, .sidt:
            if sys.cr4 & CR4.umip != 0 && sys.cpl > 0 && mode != .real { throw .fault(.generalProtection(0)) }
            guard case .memory(let m) = o0 else { throw .fault(.invalidOpcode()) }
            let t = i.mnemonic == .sgdt ? sys.gdtr : sys.idtr
            let ea = effectiveAddress(m), am = X86Executor.addressMask(m.addressSize)
            let bsize = mode == .long64 ? 8 : 4
            _ = try linear(segIndex(m), ea, 2 + bsize, write: true)
            try writeMem(segIndex(m), ea, 2, UInt64(t.limit))
            try writeMem(segIndex(m), (ea &+ 2) & am, bsize, t.base & sizeMask(bsize))
        case .lldt, .ltr:
            if mode == .real || mode == .virtual8086 { throw .fault(.invalidOpcode()) }
            try requireCPL0()
            try loadSystemSegment(i.mnemonic == .ltr, UInt16(truncatingIfNeeded: try read(o0, 2)))
        case .sldt, .str:
            if mode == .real || mode == .virtual8086 { throw .fault(.invalidOpcode()) }
            if sys.cr4 & CR4.umip != 0 && sys.cpl > 0 { throw .fault(.generalProtection(0)) }
            let sel = UInt64(i.mnemonic == .sldt ? sys.ldtr.selector : sys.tr.selector)
            if case .register(let r) = o0 { writeReg(r, sel) } else { try write(o0, sel, 2) }
        case .invlpg:
            try requireCPL0()
            guard case .memory(let m) = o0 else { throw .fault(.invalidOpcode()) }
            let lin: UInt64
            if mode == .long64 {
                lin = (m.segment == .fs || m.segment == .gs ? seg[segIndex(m)].base : 0) &+ effectiveAddress(m)
            } else {
                lin = (seg[segIndex(m)].base &+ effectiveAddress(m)) & 0xFFFF_FFFF
            }
            tlb.flush(page: lin >> 12)
            fetchValid = false
            cache.flushAll()
        case .invd, .wbinvd, .wbnoinvd:
            try requireCPL0()
        case .swapgs:
            if mode != .long64 { throw .fault(.invalidOpcode()) }
            try requireCPL0()
            let k = sys.kernelGSBase
            sys.kernelGSBase = seg[SR.gs].base
            seg[SR.gs].base = k
        case .rdfsbase, .rdgsbase, .wrfsbase, .wrgsbase:
            if mode != .long64 || sys.cr4 & CR4.fsgsbase == 0 { throw .fault(.invalidOpcode()) }
            let s = opSize(o0, i)
            let sr = (i.mnemonic == .rdfsbase || i.mnemonic == .wrfsbase) ? SR.fs : SR.gs
            if i.mnemonic == .rdfsbase || i.mnemonic == .rdgsbase {
                try write(o0, seg[sr].base & sizeMask(s), s)
            } else {
                let v = try read(o0, s)
                if !isCanonical(v) { throw .fault(.generalProtection(0)) }
                seg[sr].base = v
            }
        case .syscall: try syscallInstruction()
        case .sysret, .sysretq: try sysretInstruction(i.mnemonic == .sysretq)
        case .sysenter: try sysenterInstruction()
        case .sysexit, .sysexitq: try sysexitInstruction(i.mnemonic == .sysexitq)
        case .vmmcall, .vmcall:
            outcome = .hypercall
        case .lar, .lsl, .verr, .verw: try segmentQuery(i)
        case .arpl:
            if mode == .long64 || mode == .real || mode == .virtual8086 { throw .fault(.invalidOpcode()) }
            let d = try locate(o0, 2)
            let dv = try load(d), sv = try read(o1, 2)
            if dv & 3 < sv & 3 {
                try store(d, (dv & ~3) | (sv & 3))
                setFlag(RFLAGS.zf, true)
            } else {
                setFlag(RFLAGS.zf, false)
            }
        case .xgetbv:
            if sys.cr4 & CR4.osxsave == 0 { throw .fault(.invalidOpcode()) }
            if gpr[1] & 0xFFFF_FFFF != 0 { throw .fault(.generalProtection(0)) }
            gpr[0] = xcr0 & 0xFFFF_FFFF
            gpr[2] = xcr0 >> 32
        case .xsetbv:
            if sys.cr4 & CR4.osxsave == 0 { throw .fault(.invalidOpcode()) }
            try requireCPL0()
            let v = (gpr[2] & 0xFFFF_FFFF) << 32 | (gpr[0] & 0xFFFF_FFFF)
            if gpr[1] & 0xFFFF_FFFF != 0 || !validXCR0(v) { throw .fault(.generalProtection(0)) }
            sys.xcr0 = v
        case .rdpid:
            let v = try readMSRValue(MSRIndex.tscAux)
            try write(o0, v, opSize(o0, i))
        default:
            if try executeVector(i) { return }
            throw .unsupported
        }
    }

    /// Writes rCX/rSI/rDI-style counters at an address size (16-bit writes merge).
    @inline(__always) func writeCounter(_ n: Int, _ v: UInt64, _ asz: UInt8) {
        switch asz {
        case 16: gpr[n] = (gpr[n] & ~0xFFFF) | (v & 0xFFFF)
        case 32: gpr[n] = v & 0xFFFF_FFFF
        default: gpr[n] = v
        }
    }

    /// POPF/POPFD/POPFQ: which bits may change depends on CPL and IOPL (APM vol. 3, POPF).
    func writeFlagsPOPF(_ v: UInt64, _ size: Int) {
        let old = rflags
        var changeable: UInt64 = RFLAGS.status | RFLAGS.tf | RFLAGS.df | RFLAGS.nt | RFLAGS.ac | RFLAGS.id
        if mode == .real || sys.cpl == 0 { changeable |= RFLAGS.iopl | RFLAGS.if }
        else if sys.cpl <= iopl { changeable |= RFLAGS.if }
        if mode == .virtual8086 { changeable |= RFLAGS.if; changeable &= ~RFLAGS.iopl }
        changeable &= sizeMask(size)
        rflags = (old & ~changeable) | (v & changeable)
        flagsRest &= ~RFLAGS.rf
    }

    func bitTest(_ i: Instruction) throws(Stop) {
        let o0 = i.operands.0, o1 = i.operands.1
        let s = opSize(o0, i)
        let bits = UInt64(s * 8)
        var bitOffset: UInt64
        var loc: Location
        if case .immediate(let v, _) = o1 {
            bitOffset = UInt64(bitPattern: v) & (bits - 1)
            loc = try locate(o0, s)
            if i.mnemonic == .bt, loc.isMemory { loc = Location(isMemory: true, reg: loc.reg, linear: try linear(segIndex(o0.memory!), effectiveAddress(o0.memory!), s, write: false), size: s) }
        } else {
            let raw = try read(o1, s)
            if case .memory(let m) = o0 {
                // A register bit offset addresses memory beyond the operand (signed).
                let sOff = Int64(bitPattern: signExtend(raw, s))
                let byteDelta = (sOff >> Int64(s == 8 ? 6 : (s == 4 ? 5 : 4))) &* Int64(s)
                bitOffset = UInt64(bitPattern: sOff) & (bits - 1)
                let ea = (effectiveAddress(m) &+ UInt64(bitPattern: byteDelta)) & X86Executor.addressMask(m.addressSize)
                loc = Location(isMemory: true, reg: Register(.gpr64, 0),
                               linear: try linear(segIndex(m), ea, s, write: i.mnemonic != .bt), size: s)
            } else {
                bitOffset = raw & (bits - 1)
                loc = try locate(o0, s)
            }
        }
        let v = i.mnemonic == .bt ? (loc.isMemory ? try readLinear(loc.linear, s) : readReg(loc.reg)) : try load(loc)
        let bit: UInt64 = 1 << bitOffset
        setFlag(RFLAGS.cf, v & bit != 0)
        switch i.mnemonic {
        case .bts: try store(loc, v | bit)
        case .btr: try store(loc, v & ~bit)
        case .btc: try store(loc, v ^ bit)
        default: break
        }
    }

    func enter(_ i: Instruction) throws(Stop) {
        let s = osz(i)
        let frameSize = UInt64(bitPattern: i.immediate) & 0xFFFF
        let level = UInt64(bitPattern: i.immediate2) & 0x1F
        let saved = (gpr[4], gpr[5])
        do throws(Stop) {
            try push(gpr[5], s)
            let frameTemp = gpr[4] & sizeMask(stackSize)
            if level > 0 {
                var bp = gpr[5]
                for _ in 1..<level {
                    bp = (bp &- UInt64(s)) & sizeMask(stackSize)
                    try push(try readMem(SR.ss, bp, s), s)
                }
                try push(frameTemp, s)
            }
            writeGPR(5, frameTemp, s == 2 ? 2 : (stackSize == 8 ? 8 : s))
            setSP((gpr[4] &- frameSize) & sizeMask(stackSize))
            // The hardware checks the new stack top is writable.
            _ = try linear(SR.ss, gpr[4] & sizeMask(stackSize), 1, write: true)
        } catch {
            gpr[4] = saved.0; gpr[5] = saved.1
            throw error
        }
    }

    func segmentQuery(_ i: Instruction) throws(Stop) {
        if mode == .real || mode == .virtual8086 { throw .fault(.invalidOpcode()) }
        let src: Operand = i.mnemonic == .verr || i.mnemonic == .verw ? i.operands.0 : i.operands.1
        let sel = UInt16(truncatingIfNeeded: try read(src, 2))
        var ok = false
        var raw: UInt64 = 0
        if sel & 0xFFFC != 0 {
            do throws(Stop) { raw = try readDescriptor(sel).raw; ok = true } catch {
                if case .fault = error { ok = false } else { throw error }
            }
        }
        if ok {
            let d = Segment.fromDescriptor(selector: sel, descriptor: raw)
            let conforming = d.isCode && d.type & 4 != 0
            let privOK = conforming || (d.dpl >= sys.cpl && d.dpl >= UInt8(sel & 3))
            switch i.mnemonic {
            case .verr: ok = !d.isSystem && privOK && (!d.isCode || d.type & 2 != 0)
            case .verw: ok = !d.isSystem && privOK && !d.isCode && d.type & 2 != 0
            default:
                if d.isSystem {
                    let t = d.type
                    let valid: Set<UInt8> = mode == .long64 || mode == .compat32 || mode == .compat16
                        ? (i.mnemonic == .lar ? [2, 9, 11, 12] : [2, 9, 11])
                        : (i.mnemonic == .lar ? [1, 2, 3, 4, 5, 9, 11, 12] : [1, 2, 3, 9, 11])
                    ok = valid.contains(t) && privOK
                } else {
                    ok = privOK
                }
            }
            if ok, case .register(let r) = i.operands.0, i.mnemonic == .lar || i.mnemonic == .lsl {
                if i.mnemonic == .lar { writeReg(r, raw >> 32 & 0x00F0_FF00 & sizeMask(r.bits / 8)) }
                else { writeReg(r, UInt64(d.limit) & sizeMask(r.bits / 8)) }
            }
        }
        setFlag(RFLAGS.zf, ok)
    }
}
