import X86

/// String instructions and port I/O (APM vol. 3: MOVS, CMPS, STOS, LODS, SCAS, INS, OUTS, IN, OUT).
extension X86Executor {
    /// The source segment of a string instruction: DS unless overridden (64-bit mode: only FS/GS).
    func stringSourceSegment(_ i: Instruction) -> Int {
        // The decoder resolves the source operand (DS:rSI, overridable) with its segment.
        for k in 0..<Int(i.operandCount) {
            if case .memory(let m) = i.operand(k), m.base?.number == 6 { return m.segment.rawValue }
        }
        guard let o = i.segmentOverride else { return SR.ds }
        if mode == .long64 && o != .fs && o != .gs { return SR.ds }
        return o.rawValue
    }

    /// Element size of a string instruction (1, 2, 4, 8).
    func stringElementSize(_ i: Instruction) -> Int {
        for k in 0..<Int(i.operandCount) {
            if case .memory(let m) = i.operand(k), m.size != 0 { return Int(m.size) }
        }
        if i.opcode & 1 == 0 { return 1 }
        return i.mnemonic == .ins || i.mnemonic == .outs ? min(osz(i), 4) : osz(i)
    }

    func stringInstruction(_ i: Instruction) throws(Stop) {
        let asz = i.addressSize
        let am = X86Executor.addressMask(asz)
        let size = stringElementSize(i)
        let delta: UInt64 = flagsRest & RFLAGS.df != 0 ? 0 &- UInt64(size) : UInt64(size)
        let srcSeg = stringSourceSegment(i)
        let repeated = i.prefixes.contains(.rep) || i.prefixes.contains(.repne)
        let conditional = i.mnemonic == .cmps || i.mnemonic == .scas
        let repne = i.prefixes.contains(.repne) && !i.prefixes.contains(.rep)
        if i.mnemonic == .ins || i.mnemonic == .outs { try checkIOPermission(UInt16(truncatingIfNeeded: gpr[2]), size) }
        var iterations: UInt64 = 0
        while true {
            if repeated && gpr[1] & am == 0 { break }
            let si = gpr[6] & am, di = gpr[7] & am
            switch i.mnemonic {
            case .movs:
                let v = try readMem(srcSeg, si, size)
                try writeMem(SR.es, di, size, v)
                writeCounter(6, si &+ delta, asz)
                writeCounter(7, di &+ delta, asz)
            case .stos:
                try writeMem(SR.es, di, size, gpr[0] & sizeMask(size))
                writeCounter(7, di &+ delta, asz)
            case .lods:
                let v = try readMem(srcSeg, si, size)
                writeGPR(0, v, size)
                writeCounter(6, si &+ delta, asz)
            case .cmps:
                let a = try readMem(srcSeg, si, size)
                let b = try readMem(SR.es, di, size)
                _ = alu(.cmp, a, b, size)
                writeCounter(6, si &+ delta, asz)
                writeCounter(7, di &+ delta, asz)
            case .scas:
                let b = try readMem(SR.es, di, size)
                _ = alu(.cmp, gpr[0] & sizeMask(size), b, size)
                writeCounter(7, di &+ delta, asz)
            case .ins:
                let port = UInt16(truncatingIfNeeded: gpr[2])
                let lin = try linear(SR.es, di, size, write: true)
                try probeWrite(lin, size)
                guard let v = ports?.read(port: port, size: size) else { throw .unanswered(.port(port, size: size)) }
                accessLog.append(.port(PortAccess(port: port, size: size, isWrite: false, value: v, string: true, rep: repeated, addressSize: Int(asz))))
                try writeLinear(lin, size, UInt64(v))
                writeCounter(7, di &+ delta, asz)
            case .outs:
                let port = UInt16(truncatingIfNeeded: gpr[2])
                let v = UInt32(truncatingIfNeeded: try readMem(srcSeg, si, size))
                ports?.write(port: port, size: size, value: v)
                accessLog.append(.port(PortAccess(port: port, size: size, isWrite: true, value: v, string: true, rep: repeated, addressSize: Int(asz))))
                writeCounter(6, si &+ delta, asz)
            default:
                throw .unsupported
            }
            if !repeated { break }
            let c = (gpr[1] &- 1) & am
            writeCounter(1, c, asz)
            if c == 0 { break }
            if conditional {
                let zf = getZF()
                if repne ? zf : !zf { break }
            }
            iterations &+= 1
            // Under single-step each iteration traps: stop after one, RIP on the instruction.
            if iterations >= X86Executor.maxRepIterationsPerStep || flagsRest & RFLAGS.tf != 0 {
                nextRIP = insnStart  // resume later, like an interrupt between iterations
                break
            }
        }
    }

    /// IN/OUT privilege: CPL <= IOPL, else the TSS I/O permission bitmap must allow every byte.
    func checkIOPermission(_ port: UInt16, _ size: Int) throws(Stop) {
        if mode == .real { return }
        if mode != .virtual8086 && sys.cpl <= iopl { return }
        let tr = sys.tr
        guard tr.present, tr.type == 9 || tr.type == 11, tr.limit >= 0x67 else { throw .fault(.generalProtection(0)) }
        let mapBase = try readLinear(wrapLinear(tr.base &+ 0x66), 2, supervisor: true)
        let off = mapBase &+ UInt64(port >> 3)
        if off &+ 1 > UInt64(tr.limit) { throw .fault(.generalProtection(0)) }
        let bits = try readLinear(wrapLinear(tr.base &+ off), 2, supervisor: true)
        let mask = ((UInt64(1) << UInt64(size)) - 1) << UInt64(port & 7)
        if bits & mask != 0 { throw .fault(.generalProtection(0)) }
    }

    func portInstruction(_ i: Instruction) throws(Stop) {
        let isIn = i.mnemonic == .in
        let portOp = isIn ? i.operands.1 : i.operands.0
        let dataOp = isIn ? i.operands.0 : i.operands.1
        let port: UInt16
        if case .immediate(let p, _) = portOp { port = UInt16(UInt64(bitPattern: p) & 0xFF) }
        else { port = UInt16(truncatingIfNeeded: gpr[2]) }
        let size: Int
        if case .register(let r) = dataOp { size = r.bits / 8 } else { size = min(osz(i), 4) }
        try checkIOPermission(port, size)
        if isIn {
            guard let v = ports?.read(port: port, size: size) else { throw .unanswered(.port(port, size: size)) }
            let masked = v & UInt32(truncatingIfNeeded: sizeMask(size))
            accessLog.append(.port(PortAccess(port: port, size: size, isWrite: false, value: masked)))
            writeGPR(0, UInt64(masked), size)
        } else {
            let v = UInt32(truncatingIfNeeded: gpr[0] & sizeMask(size))
            ports?.write(port: port, size: size, value: v)
            accessLog.append(.port(PortAccess(port: port, size: size, isWrite: true, value: v)))
        }
    }
}
