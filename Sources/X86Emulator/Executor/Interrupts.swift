import X86

/// Interrupt and exception delivery (real-mode IVT, protected- and long-mode IDT gates), IRET,
/// and far JMP/CALL/RET (APM vol. 2, chapter 8; vol. 3 for the instructions).
extension X86Executor {
    @usableFromInline enum InterruptKind { case exception, external, intN, int3, into, int1 }

    /// The registers an interrupt or far transfer may change, to restore when it faults midway.
    struct Snapshot {
        var rsp: UInt64, cs: Segment, ss: Segment, ds: Segment, es: Segment, fs: Segment, gs: Segment
        var flags: UInt64, cpl: UInt8
    }
    func snapshot() -> Snapshot {
        Snapshot(rsp: gpr[4], cs: seg[SR.cs], ss: seg[SR.ss], ds: seg[SR.ds], es: seg[SR.es], fs: seg[SR.fs],
                 gs: seg[SR.gs], flags: rflags, cpl: sys.cpl)
    }
    func restore(_ s: Snapshot) {
        if taskSwitched { return }
        gpr[4] = s.rsp
        seg[SR.cs] = s.cs; seg[SR.ss] = s.ss; seg[SR.ds] = s.ds; seg[SR.es] = s.es; seg[SR.fs] = s.fs; seg[SR.gs] = s.gs
        rflags = s.flags
        sys.cpl = s.cpl
        updateMode()
    }

    /// Delivers an exception raised by the instruction at `insnStart`: #DF when delivery itself
    /// faults, shutdown (triple fault) when that faults too.
    func deliver(exception e: CPUException) -> StepResult {
        var cur = e
        var depth = 0
        rip = insnStart
        while true {
            if let a = cur.cr2 { sys.cr2 = a }
            let code: UInt32? = (mode == .real || !CPUException.hasErrorCode(cur.vector)) ? nil : (cur.errorCode ?? 0)
            taskSwitched = false
            let snap = snapshot()
            do throws(Stop) {
                nextRIP = rip
                try interrupt(vector: cur.vector, errorCode: code, kind: .exception, returnRIP: rip)
                rip = nextRIP
                return .exception(e, delivered: true)
            } catch {
                restore(snap)
                switch error {
                case .fault:
                    depth += 1
                    if cur.vector == CPUException.df || depth > 2 { return .tripleFault }
                    cur = CPUException(vector: CPUException.df, errorCode: 0)
                default:
                    return result(of: error)
                }
            }
        }
    }

    /// Delivers an external interrupt (the caller decides it is deliverable: IF, shadow).
    public func injectInterrupt(_ vector: UInt8) -> StepResult {
        matchedState = nil
        insnStart = rip
        taskSwitched = false
        let snap = snapshot()
        do throws(Stop) {
            nextRIP = rip
            try interrupt(vector: vector, errorCode: nil, kind: .external, returnRIP: rip)
            rip = nextRIP
            return .ok
        } catch {
            restore(snap)
            return result(of: error)
        }
    }

    /// INT n / INT3 / INTO / INT1 executed as instructions: delivered with the return address
    /// after the instruction.
    func softwareInterrupt(_ vector: UInt8, kind: InterruptKind) throws(Stop) {
        if mode == .virtual8086 && iopl < 3 && kind == .intN { throw .fault(.generalProtection(0)) }
        // The handler starts with TF clear: no single-step trap after INT n/INT3/INTO/INT1.
        noSingleStepTrap = true
        let snap = snapshot()
        do throws(Stop) {
            try interrupt(vector: vector, errorCode: nil, kind: kind, returnRIP: nextRIP)
        } catch {
            restore(snap)
            throw error
        }
    }

    /// The common delivery path; sets `nextRIP` to the handler.
    func interrupt(vector: UInt8, errorCode: UInt32?, kind: InterruptKind, returnRIP: UInt64) throws(Stop) {
        let software = kind == .intN || kind == .int3 || kind == .into
        let ext: UInt32 = software ? 0 : 1
        let idtCode = UInt32(vector) * 8 + 2 + ext
        let oldFlags = rflags
        if mode == .real {
            let off = UInt64(vector) * 4
            if off + 3 > UInt64(sys.idtr.limit) { throw .fault(.generalProtection(0)) }
            let entry = try readLinear((sys.idtr.base &+ off) & 0xFFFF_FFFF, 4, supervisor: true)
            try push(oldFlags & 0xFFFF, 2)
            try push(UInt64(seg[SR.cs].selector), 2)
            try push(returnRIP & 0xFFFF, 2)
            var cs = seg[SR.cs]
            cs.selector = UInt16(truncatingIfNeeded: entry >> 16)
            cs.base = UInt64(cs.selector) << 4
            seg[SR.cs] = cs
            flagsRest &= ~(RFLAGS.if | RFLAGS.tf | RFLAGS.ac | RFLAGS.rf)
            nextRIP = entry & 0xFFFF
            return
        }
        let long = sys.efer & EFER.lma != 0
        let gateSize: UInt64 = long ? 16 : 8
        let off = UInt64(vector) * gateSize
        if off + gateSize - 1 > UInt64(sys.idtr.limit) { throw .fault(.generalProtection(idtCode)) }
        let gateAddr = wrapLinear(sys.idtr.base &+ off)
        let lo = try readLinear(gateAddr, 8, supervisor: true)
        let hi: UInt64 = long ? try readLinear(gateAddr &+ 8, 8, supervisor: true) : 0
        let type = UInt8((lo >> 40) & 0xF)
        let gateDPL = UInt8((lo >> 45) & 3)
        let present = lo & (1 << 47) != 0
        if type == 5 && !long {
            if software && gateDPL < sys.cpl { throw .fault(.generalProtection(idtCode)) }
            if !present { throw .fault(.notPresent(idtCode)) }
            try taskGate(UInt16(truncatingIfNeeded: lo >> 16), reason: .interrupt, returnEIP: returnRIP, ext: ext,
                         errorCode: errorCode)
            return
        }
        let valid: Bool = long ? (type == 0xE || type == 0xF) : (type == 6 || type == 7 || type == 0xE || type == 0xF)
        if !valid { throw .fault(.generalProtection(idtCode)) }
        if software && gateDPL < sys.cpl { throw .fault(.generalProtection(idtCode)) }
        if !present { throw .fault(.notPresent(idtCode)) }
        let sel = UInt16(truncatingIfNeeded: lo >> 16)
        var target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000)
        if long { target |= (hi & 0xFFFF_FFFF) << 32 }
        let gate32 = type & 8 != 0
        let isInterruptGate = type & 1 == 0
        if sel & 0xFFFC == 0 { throw .fault(.generalProtection(ext)) }
        let (raw, _) = try readDescriptor(sel)
        var cs = Segment.fromDescriptor(selector: sel, descriptor: raw)
        let selCode = UInt32(sel & 0xFFFC) + ext
        if cs.isSystem || !cs.isCode || cs.dpl > sys.cpl { throw .fault(.generalProtection(selCode)) }
        if !cs.present { throw .fault(.notPresent(selCode)) }
        if long && !(cs.long && !cs.defaultBig) { throw .fault(.generalProtection(selCode)) }
        let conforming = cs.type & 4 != 0
        let newCPL = conforming ? sys.cpl : cs.dpl
        let fromVM86 = mode == .virtual8086
        if fromVM86 && newCPL != 0 { throw .fault(.generalProtection(selCode)) }
        cs.selector = (sel & 0xFFFC) | UInt16(newCPL)
        cs.attributes |= 1

        let oldSS = seg[SR.ss], oldRSP = gpr[4], oldCS = seg[SR.cs].selector
        if long {
            let ist = Int(hi >> 32 & 0) + Int((lo >> 32) & 7)
            var rsp: UInt64
            if ist != 0 {
                rsp = try readLinear(sys.tr.base &+ 0x24 &+ UInt64(ist - 1) * 8, 8, supervisor: true)
            } else if newCPL < sys.cpl {
                rsp = try readLinear(sys.tr.base &+ 4 &+ UInt64(newCPL) * 8, 8, supervisor: true)
            } else {
                rsp = gpr[4]
            }
            if newCPL < sys.cpl {
                seg[SR.ss] = Segment(selector: UInt16(newCPL), base: 0, limit: 0, attributes: 0)
            }
            rsp &= ~0xF
            if !isCanonical(rsp) { throw .fault(.stackFault(ext)) }
            var frame: [UInt64] = [UInt64(oldSS.selector), oldRSP, oldFlags, UInt64(oldCS), returnRIP]
            if let e = errorCode { frame.append(UInt64(e)) }
            let top = rsp &- UInt64(frame.count * 8)
            sys.cpl = newCPL
            try probeWrite(top, frame.count * 8, supervisor: true)
            for (k, v) in frame.enumerated() {
                try writeLinear(rsp &- UInt64((k + 1) * 8), 8, v, supervisor: true)
            }
            gpr[4] = top
            seg[SR.cs] = cs
            if !isCanonical(target) { throw .fault(.generalProtection(0)) }
            nextRIP = target
        } else {
            let word = gate32 ? 4 : 2
            if newCPL < sys.cpl {
                // Inner stack from the TSS.
                let tss32 = sys.tr.type & 8 != 0
                let newSP: UInt64, newSSsel: UInt16
                if tss32 {
                    newSP = try readLinear(wrapLinear(sys.tr.base &+ 4 &+ UInt64(newCPL) * 8), 4, supervisor: true)
                    newSSsel = UInt16(truncatingIfNeeded: try readLinear(wrapLinear(sys.tr.base &+ 8 &+ UInt64(newCPL) * 8), 2, supervisor: true))
                } else {
                    newSP = try readLinear(wrapLinear(sys.tr.base &+ 2 &+ UInt64(newCPL) * 4), 2, supervisor: true)
                    newSSsel = UInt16(truncatingIfNeeded: try readLinear(wrapLinear(sys.tr.base &+ 4 &+ UInt64(newCPL) * 4), 2, supervisor: true))
                }
                let tsCode = UInt32(newSSsel & 0xFFFC) + ext
                if newSSsel & 0xFFFC == 0 { throw .fault(.invalidTSS(ext)) }
                let (ssRaw, ssAddr) = try readDescriptor(newSSsel)
                var ss = Segment.fromDescriptor(selector: newSSsel, descriptor: ssRaw)
                if ss.isSystem || ss.isCode || ss.type & 2 == 0 || ss.dpl != newCPL || UInt8(newSSsel & 3) != newCPL {
                    throw .fault(.invalidTSS(tsCode))
                }
                if !ss.present { throw .fault(.stackFault(tsCode)) }
                try markAccessed(ssRaw, ssAddr)
                ss.attributes |= 1
                sys.cpl = newCPL
                seg[SR.ss] = ss
                gpr[4] = newSP
                flagsRest &= ~RFLAGS.vm
                updateMode()
                if fromVM86 {
                    for s in [SR.gs, SR.fs, SR.ds, SR.es] { try push(UInt64(seg[s].selector), word) }
                }
                try push(UInt64(oldSS.selector), word)
                try push(oldRSP & sizeMask(word), word)
                if fromVM86 {
                    for s in [SR.gs, SR.fs, SR.ds, SR.es] { seg[s] = Segment(selector: 0, base: 0, limit: 0, attributes: 0) }
                }
            }
            try push(oldFlags & sizeMask(word), word)
            try push(UInt64(oldCS), word)
            try push(returnRIP & sizeMask(word), word)
            if let e = errorCode { try push(UInt64(e), word) }
            if !gate32 { target &= 0xFFFF }
            if target > UInt64(cs.limit) { throw .fault(.generalProtection(0)) }
            seg[SR.cs] = cs
            nextRIP = target
        }
        sys.cpl = newCPL
        flagsRest &= ~(RFLAGS.tf | RFLAGS.nt | RFLAGS.rf | RFLAGS.vm)
        if isInterruptGate { flagsRest &= ~RFLAGS.if }
        updateMode()
    }

    // MARK: IRET

    func interruptReturn(_ s: Int) throws(Stop) {
        let snap = snapshot()
        do throws(Stop) { try interruptReturnBody(s) } catch {
            restore(snap)
            throw error
        }
    }

    private func interruptReturnBody(_ s: Int) throws(Stop) {
        if mode == .real || mode == .virtual8086 {
            if mode == .virtual8086 && iopl < 3 { throw .fault(.generalProtection(0)) }
            let ip = try peek(s), csSel = try peek(s, UInt64(s)), fl = try peek(s, UInt64(2 * s))
            if ip > UInt64(seg[SR.cs].limit) && mode == .real && s == 2 { throw .fault(.generalProtection(0)) }
            setSP((gpr[4] &+ UInt64(3 * s)) & sizeMask(stackSize))
            try loadSegment(SR.cs, UInt16(truncatingIfNeeded: csSel))
            if mode == .real {
                let keep: UInt64 = s == 2 ? ~0xFFFF : (RFLAGS.vm | RFLAGS.vif | RFLAGS.vip)
                rflags = (rflags & keep) | (fl & ~keep)
            } else {
                let keep: UInt64 = RFLAGS.iopl | RFLAGS.vm | RFLAGS.vif | RFLAGS.vip | (s == 2 ? ~0xFFFF : 0)
                rflags = (rflags & keep) | (fl & ~keep)
            }
            nextRIP = ip & sizeMask(s)
            return
        }
        if flagsRest & RFLAGS.nt != 0 && sys.efer & EFER.lma == 0 { try taskReturn(); return }
        if sys.efer & EFER.lma != 0 && flagsRest & RFLAGS.nt != 0 { throw .fault(.generalProtection(0)) }
        let ip = try peek(s), csSel = UInt16(truncatingIfNeeded: try peek(s, UInt64(s)))
        let fl = try peek(s, UInt64(2 * s))
        let cpl = sys.cpl
        if fl & RFLAGS.vm != 0 && cpl == 0 && s == 4 && sys.efer & EFER.lma == 0 {
            // Return to virtual-8086 mode.
            let esp = try peek(4, 12), ss = try peek(4, 16)
            let es = try peek(4, 20), ds = try peek(4, 24), fs = try peek(4, 28), gs = try peek(4, 32)
            rflags = fl
            func v86(_ sel: UInt64, code: Bool = false) -> Segment {
                Segment(selector: UInt16(truncatingIfNeeded: sel), base: (sel & 0xFFFF) << 4, limit: 0xFFFF,
                        attributes: code ? 0xFB : 0xF3)
            }
            seg[SR.cs] = v86(UInt64(csSel), code: true)
            seg[SR.ss] = v86(ss); seg[SR.es] = v86(es); seg[SR.ds] = v86(ds); seg[SR.fs] = v86(fs); seg[SR.gs] = v86(gs)
            gpr[4] = esp & 0xFFFF_FFFF
            sys.cpl = 3
            updateMode()
            nextRIP = ip & 0xFFFF
            return
        }
        let rpl = UInt8(csSel & 3)
        if csSel & 0xFFFC == 0 { throw .fault(.generalProtection(0)) }
        if rpl < cpl { throw .fault(.generalProtection(UInt32(csSel & 0xFFFC))) }
        let (raw, addr) = try readDescriptor(csSel)
        var cs = Segment.fromDescriptor(selector: csSel, descriptor: raw)
        let code = UInt32(csSel & 0xFFFC)
        if cs.isSystem || !cs.isCode { throw .fault(.generalProtection(code)) }
        if cs.type & 4 != 0 ? cs.dpl > rpl : cs.dpl != rpl { throw .fault(.generalProtection(code)) }
        if !cs.present { throw .fault(.notPresent(code)) }
        let long = sys.efer & EFER.lma != 0
        let toOuter = rpl > cpl || mode == .long64
        var newSP: UInt64 = 0, newSS = seg[SR.ss]
        if toOuter {
            newSP = try peek(s, UInt64(3 * s))
            let ssSel = UInt16(truncatingIfNeeded: try peek(s, UInt64(4 * s)))
            newSS = try returnStackSegment(ssSel, rpl: rpl, to64: long && cs.long)
        }
        try markAccessed(raw, addr)
        cs.attributes |= 1
        // Flags as POPF would change them at the old CPL, plus RF.
        var changeable: UInt64 = RFLAGS.status | RFLAGS.tf | RFLAGS.df | RFLAGS.nt | RFLAGS.ac | RFLAGS.id | RFLAGS.rf
        if cpl == 0 { changeable |= RFLAGS.iopl | RFLAGS.if | RFLAGS.vif | RFLAGS.vip }
        else if cpl <= iopl { changeable |= RFLAGS.if }
        changeable &= sizeMask(s)
        let target = ip & sizeMask(s)
        if !(long && cs.long) && target > UInt64(cs.limit) { throw .fault(.generalProtection(0)) }
        rflags = (rflags & ~changeable) | (fl & changeable)
        seg[SR.cs] = cs
        sys.cpl = rpl
        if toOuter {
            seg[SR.ss] = newSS
            updateMode()
            if mode == .long64 { gpr[4] = newSP } else if newSS.defaultBig { gpr[4] = newSP & 0xFFFF_FFFF } else { setReg16(4, newSP) }
            if rpl > cpl { nullifyInaccessibleSegments() }
        } else {
            setSP((gpr[4] &+ UInt64(3 * s)) & sizeMask(stackSize))
            updateMode()
        }
        nextRIP = target
    }

    // MARK: far JMP / CALL / RET

    /// The SS an IRET or far RET to an outer level loads (APM vol. 2, 4.11): a null selector only
    /// on a return to 64-bit code below CPL3; otherwise a present writable data segment whose RPL
    /// and DPL equal the new CPL.
    private func returnStackSegment(_ ssSel: UInt16, rpl: UInt8, to64: Bool) throws(Stop) -> Segment {
        if ssSel & 0xFFFC == 0 {
            if !(to64 && rpl < 3) { throw .fault(.generalProtection(0)) }
            return Segment(selector: ssSel, base: 0, limit: 0, attributes: 0)
        }
        let (ssRaw, ssAddr) = try readDescriptor(ssSel)
        var ss = Segment.fromDescriptor(selector: ssSel, descriptor: ssRaw)
        let sc = UInt32(ssSel & 0xFFFC)
        if UInt8(ssSel & 3) != rpl || ss.dpl != rpl || ss.isSystem || ss.isCode || ss.type & 2 == 0 {
            throw .fault(.generalProtection(sc))
        }
        if !ss.present { throw .fault(.stackFault(sc)) }
        try markAccessed(ssRaw, ssAddr)
        ss.attributes |= 1
        return ss
    }

    func farJump(_ sel: UInt16, _ off: UInt64, _ s: Int) throws(Stop) {
        if try farTransferThroughSystemDescriptor(sel, call: false) { return }
        let cs = try farTransferTarget(sel)
        let t = off & sizeMask(s)
        if !(mode == .long64 || (sys.efer & EFER.lma != 0 && cs.long)) && t > UInt64(cs.limit) { throw .fault(.generalProtection(0)) }
        setCS(cs)
        nextRIP = t
    }

    func farCall(_ sel: UInt16, _ off: UInt64, _ s: Int) throws(Stop) {
        if try farTransferThroughSystemDescriptor(sel, call: true) { return }
        let cs = try farTransferTarget(sel)
        let t = off & sizeMask(s)
        if !(sys.efer & EFER.lma != 0 && cs.long) && t > UInt64(cs.limit) { throw .fault(.generalProtection(0)) }
        let snap = snapshot()
        do throws(Stop) {
            try push(UInt64(seg[SR.cs].selector), s)
            try push(nextRIP, s)
        } catch {
            restore(snap)
            throw error
        }
        setCS(cs)
        nextRIP = t
    }

    func farReturn(_ s: Int, _ imm: UInt64) throws(Stop) {
        let ip = try peek(s), csSel = UInt16(truncatingIfNeeded: try peek(s, UInt64(s)))
        if mode == .real || mode == .virtual8086 {
            let snap = snapshot()
            try loadSegment(SR.cs, csSel)
            let t = ip & sizeMask(s)
            if t > UInt64(seg[SR.cs].limit) { restore(snap); throw .fault(.generalProtection(0)) }
            setSP((gpr[4] &+ UInt64(2 * s) &+ imm) & sizeMask(stackSize))
            nextRIP = t
            return
        }
        let cpl = sys.cpl, rpl = UInt8(csSel & 3)
        if csSel & 0xFFFC == 0 { throw .fault(.generalProtection(0)) }
        if rpl < cpl { throw .fault(.generalProtection(UInt32(csSel & 0xFFFC))) }
        let (raw, addr) = try readDescriptor(csSel)
        var cs = Segment.fromDescriptor(selector: csSel, descriptor: raw)
        let code = UInt32(csSel & 0xFFFC)
        if cs.isSystem || !cs.isCode { throw .fault(.generalProtection(code)) }
        if cs.type & 4 != 0 ? cs.dpl > rpl : cs.dpl != rpl { throw .fault(.generalProtection(code)) }
        if !cs.present { throw .fault(.notPresent(code)) }
        let t = ip & sizeMask(s)
        let long = sys.efer & EFER.lma != 0
        if !(long && cs.long) && t > UInt64(cs.limit) { throw .fault(.generalProtection(0)) }
        if rpl > cpl {
            let spOff = UInt64(2 * s) &+ imm
            let newSP = try peek(s, spOff), ssSel = UInt16(truncatingIfNeeded: try peek(s, spOff &+ UInt64(s)))
            let newSS = try returnStackSegment(ssSel, rpl: rpl, to64: long && cs.long)
            try markAccessed(raw, addr)
            cs.attributes |= 1
            seg[SR.cs] = cs
            seg[SR.ss] = newSS
            sys.cpl = rpl
            updateMode()
            let sp = newSP &+ imm
            if mode == .long64 { gpr[4] = sp } else if newSS.defaultBig { gpr[4] = sp & 0xFFFF_FFFF } else { setReg16(4, sp) }
            nullifyInaccessibleSegments()
        } else {
            try markAccessed(raw, addr)
            cs.attributes |= 1
            seg[SR.cs] = cs
            updateMode()
            setSP((gpr[4] &+ UInt64(2 * s) &+ imm) & sizeMask(stackSize))
        }
        nextRIP = t
    }
}
