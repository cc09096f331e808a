import X86

/// Far transfers through system descriptors: call gates (APM vol. 2, 4.11.2-4.11.3) and task
/// switches through a TSS descriptor or a task gate (vol. 2, 12.3).
extension X86Executor {
    /// Why a task switch happens: decides the busy bits, the back link and NT.
    enum TaskSwitchReason { case jmp, call, iret, interrupt }

    /// Far JMP/CALL whose selector names a system descriptor. Returns false when it names a
    /// code or data segment (the caller's plain path handles it).
    func farTransferThroughSystemDescriptor(_ sel: UInt16, call: Bool) throws(Stop) -> Bool {
        if mode == .real || mode == .virtual8086 || sel & 0xFFFC == 0 { return false }
        let (raw, addr) = try readDescriptor(sel)
        if raw & (1 << 44) != 0 { return false }
        let type = UInt8((raw >> 40) & 0xF)
        let long = sys.efer & EFER.lma != 0
        let code = UInt32(sel & 0xFFFC)
        switch type {
        case 0xC: try callGate(sel, raw, call: call)
        case 0x4 where !long: try callGate(sel, raw, call: call)
        case 0x1, 0x9:
            if long { throw .fault(.generalProtection(code)) }
            let dpl = UInt8((raw >> 45) & 3)
            if dpl < sys.cpl || dpl < UInt8(sel & 3) { throw .fault(.generalProtection(code)) }
            if raw & (1 << 47) == 0 { throw .fault(.notPresent(code)) }
            try taskSwitch(to: sel, raw, addr, reason: call ? .call : .jmp, returnEIP: nextRIP, ext: 0, errorCode: nil)
        case 0x5 where !long:
            let dpl = UInt8((raw >> 45) & 3)
            if dpl < sys.cpl || dpl < UInt8(sel & 3) { throw .fault(.generalProtection(code)) }
            if raw & (1 << 47) == 0 { throw .fault(.notPresent(code)) }
            try taskGate(UInt16(truncatingIfNeeded: raw >> 16), reason: call ? .call : .jmp, returnEIP: nextRIP,
                         ext: 0, errorCode: nil)
        default:
            // Busy TSS, LDT, interrupt/trap gates, and in long mode everything but 64-bit call gates.
            throw .fault(.generalProtection(code))
        }
        return true
    }

    // MARK: call gates

    /// Far CALL or JMP through a call gate. The gate gives CS:offset and the push size (16, 32 or
    /// 64 bits, whatever the instruction's operand size); a CALL to a more privileged
    /// non-conforming segment switches to the inner stack from the TSS and, for 16/32-bit gates,
    /// copies the gate's parameter count of words or doublewords from the old stack.
    func callGate(_ gateSel: UInt16, _ lo: UInt64, call: Bool) throws(Stop) {
        let long = sys.efer & EFER.lma != 0
        let gcode = UInt32(gateSel & 0xFFFC)
        let cpl = sys.cpl
        let gateDPL = UInt8((lo >> 45) & 3)
        if gateDPL < cpl || gateDPL < UInt8(gateSel & 3) { throw .fault(.generalProtection(gcode)) }
        if lo & (1 << 47) == 0 { throw .fault(.notPresent(gcode)) }
        var target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF_0000)
        let size: Int
        if long {
            // The upper half's type field must be 0 (it would be a descriptor's type there).
            let hi = try readDescriptorHigh(gateSel)
            if (hi >> 40) & 0x1F != 0 { throw .fault(.generalProtection(gcode)) }
            target |= (hi & 0xFFFF_FFFF) << 32
            size = 8
        } else {
            size = (lo >> 40) & 8 != 0 ? 4 : 2
            if size == 2 { target &= 0xFFFF }
        }
        let csSel = UInt16(truncatingIfNeeded: lo >> 16)
        if csSel & 0xFFFC == 0 { throw .fault(.generalProtection(0)) }
        let (csRaw, csAddr) = try readDescriptor(csSel)
        var cs = Segment.fromDescriptor(selector: csSel, descriptor: csRaw)
        let ccode = UInt32(csSel & 0xFFFC)
        if cs.isSystem || !cs.isCode || cs.dpl > cpl { throw .fault(.generalProtection(ccode)) }
        let conforming = cs.type & 4 != 0
        // JMP never changes privilege: a non-conforming target must be at CPL.
        if !call && !conforming && cs.dpl != cpl { throw .fault(.generalProtection(ccode)) }
        if !cs.present { throw .fault(.notPresent(ccode)) }
        if long {
            if !(cs.long && !cs.defaultBig) { throw .fault(.generalProtection(ccode)) }
            if !isCanonical(target) { throw .fault(.generalProtection(0)) }
        } else if target > UInt64(cs.limit) {
            throw .fault(.generalProtection(0))
        }
        let newCPL = conforming ? cpl : cs.dpl
        cs.selector = (csSel & 0xFFFC) | UInt16(newCPL)
        cs.attributes |= 1
        let snap = snapshot()
        do throws(Stop) {
            if call {
                let oldCS = UInt64(seg[SR.cs].selector), retIP = nextRIP & sizeMask(size)
                if newCPL < cpl {
                    try callGateInnerStack(newCPL: newCPL, size: size, paramCount: long ? 0 : Int((lo >> 32) & 0x1F),
                                           oldCS: oldCS, retIP: retIP)
                } else {
                    try pushAll([oldCS, retIP], size)
                }
            }
            try markAccessed(csRaw, csAddr)
            setCS(cs, cpl: newCPL)
            nextRIP = target
        } catch {
            restore(snap)
            throw error
        }
    }

    /// Pushes `values` in order on the current stack, checking the whole frame first so a fault
    /// writes nothing.
    private func pushAll(_ values: [UInt64], _ size: Int, ssFaultCode: UInt32 = 0) throws(Stop) {
        let total = values.count * size
        let m = sizeMask(stackSize)
        let low = (gpr[4] &- UInt64(total)) & m
        do throws(Stop) {
            let lin = try linear(SR.ss, low, total, write: true)
            try probeWrite(lin, total)
        } catch {
            if case .fault(let e) = error, e.vector == CPUException.ss { throw .fault(.stackFault(ssFaultCode)) }
            throw error
        }
        for v in values { try push(v, size) }
    }

    /// The TSS field at `offset` of `size` bytes; beyond the TSS limit: #TS(TR).
    private func readTSS(_ offset: UInt64, _ size: Int) throws(Stop) -> UInt64 {
        if offset + UInt64(size) - 1 > UInt64(sys.tr.limit) { throw .fault(.invalidTSS(UInt32(sys.tr.selector & 0xFFFC))) }
        return try readLinear(wrapLinear(sys.tr.base &+ offset), size, supervisor: true)
    }

    private func callGateInnerStack(newCPL: UInt8, size: Int, paramCount: Int, oldCS: UInt64, retIP: UInt64) throws(Stop) {
        let oldSS = UInt64(seg[SR.ss].selector), oldSP = gpr[4]
        if size == 8 {
            // 64-bit gate: RSP from the TSS, SS becomes a null selector with RPL = new CPL.
            let rsp = try readTSS(4 + UInt64(newCPL) * 8, 8)
            if !isCanonical(rsp) || !isCanonical(rsp &- 32) { throw .fault(.stackFault(0)) }
            sys.cpl = newCPL
            try probeWrite(rsp &- 32, 32, supervisor: true)
            let frame = [oldSS, oldSP, oldCS, retIP]
            for (k, v) in frame.enumerated() { try writeLinear(rsp &- UInt64((k + 1) * 8), 8, v, supervisor: true) }
            seg[SR.ss] = Segment(selector: UInt16(newCPL), base: 0, limit: 0, attributes: 0)
            gpr[4] = rsp &- 32
            return
        }
        // The parameters, read from the old stack at the old privilege level.
        var params: [UInt64] = []
        let oldMask = sizeMask(stackSize)
        for k in 0..<paramCount {
            params.append(try readMem(SR.ss, (oldSP &+ UInt64(k * size)) & oldMask, size))
        }
        let tss32 = sys.tr.type & 8 != 0
        let newSP: UInt64, newSSsel: UInt16
        if tss32 {
            newSP = try readTSS(4 + UInt64(newCPL) * 8, 4)
            newSSsel = UInt16(truncatingIfNeeded: try readTSS(8 + UInt64(newCPL) * 8, 2))
        } else {
            newSP = try readTSS(2 + UInt64(newCPL) * 4, 2)
            newSSsel = UInt16(truncatingIfNeeded: try readTSS(4 + UInt64(newCPL) * 4, 2))
        }
        let tsCode = UInt32(newSSsel & 0xFFFC)
        if newSSsel & 0xFFFC == 0 { throw .fault(.invalidTSS(0)) }
        let ssRaw: UInt64, ssAddr: UInt64
        do throws(Stop) { (ssRaw, ssAddr) = try readDescriptor(newSSsel) } catch {
            if case .fault = error { throw .fault(.invalidTSS(tsCode)) }
            throw error
        }
        var ss = Segment.fromDescriptor(selector: newSSsel, descriptor: ssRaw)
        if ss.isSystem || ss.isCode || ss.type & 2 == 0 || ss.dpl != newCPL || UInt8(newSSsel & 3) != newCPL {
            throw .fault(.invalidTSS(tsCode))
        }
        if !ss.present { throw .fault(.stackFault(tsCode)) }
        ss.attributes |= 1
        sys.cpl = newCPL
        seg[SR.ss] = ss
        gpr[4] = ss.defaultBig ? newSP & 0xFFFF_FFFF : newSP & 0xFFFF
        // Parameter k (k = 0 nearest the old top) lands at the same distance from the new top.
        try pushAll([oldSS, oldSP & sizeMask(size)] + params.reversed() + [oldCS, retIP], size, ssFaultCode: tsCode)
        try markAccessed(ssRaw, ssAddr)
    }

    // MARK: task switches

    /// A task gate (far JMP/CALL, or an IDT entry): the TSS it names must be an available TSS in the GDT.
    func taskGate(_ tssSel: UInt16, reason: TaskSwitchReason, returnEIP: UInt64, ext: UInt32, errorCode: UInt32?) throws(Stop) {
        let code = UInt32(tssSel & 0xFFFC) + ext
        if tssSel & 4 != 0 || tssSel & 0xFFFC == 0 { throw .fault(.generalProtection(code)) }
        let (raw, addr) = try readDescriptor(tssSel)
        let type = UInt8((raw >> 40) & 0x1F)
        if type != 0x01 && type != 0x09 { throw .fault(.generalProtection(code)) }
        if raw & (1 << 47) == 0 { throw .fault(.notPresent(code)) }
        try taskSwitch(to: tssSel, raw, addr, reason: reason, returnEIP: returnEIP, ext: ext, errorCode: errorCode)
    }

    /// IRET with NT set outside long mode: back to the task in the current TSS's link field.
    func taskReturn() throws(Stop) {
        let link = UInt16(truncatingIfNeeded: try readTSS(0, 2))
        let code = UInt32(link & 0xFFFC)
        if link & 4 != 0 || link & 0xFFFC == 0 { throw .fault(.invalidTSS(code)) }
        let raw: UInt64, addr: UInt64
        do throws(Stop) { (raw, addr) = try readDescriptor(link) } catch {
            if case .fault = error { throw .fault(.invalidTSS(code)) }
            throw error
        }
        let type = UInt8((raw >> 40) & 0x1F)
        if type != 0x03 && type != 0x0B { throw .fault(.invalidTSS(code)) }
        if raw & (1 << 47) == 0 { throw .fault(.notPresent(code)) }
        try taskSwitch(to: link, raw, addr, reason: .iret, returnEIP: nextRIP, ext: 0, errorCode: nil)
    }

    /// The task switch proper (APM vol. 2, 12.3.4): checks the new TSS, saves the current task in
    /// its TSS, updates busy bits, back link and NT, loads the new task. Faults up to the save
    /// leave everything as before; faults while loading the new task's segments happen in the
    /// new task (its state stays, the exception's return address is the new EIP), as on hardware.
    func taskSwitch(to sel: UInt16, _ raw: UInt64, _ addr: UInt64, reason: TaskSwitchReason, returnEIP: UInt64,
                    ext: UInt32, errorCode: UInt32?) throws(Stop) {
        let code = UInt32(sel & 0xFFFC) + ext
        var newTSS = Segment.fromDescriptor(selector: sel, descriptor: raw)
        let new32 = newTSS.type & 8 != 0
        if newTSS.limit < (new32 ? 0x67 : 0x2B) { throw .fault(.invalidTSS(code)) }
        let old = sys.tr
        let old32 = old.type & 8 != 0
        if old.limit < (old32 ? 0x5F : 0x29) { throw .fault(.invalidTSS(UInt32(old.selector & 0xFFFC))) }

        // Read the whole new image first: a fault here changes nothing.
        let n = new32 ? 0x68 : 0x2C
        let img = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 8)
        defer { img.deallocate() }
        try readLinearBytes(newTSS.base, n, into: img, supervisor: true)
        func f(_ o: Int, _ sz: Int) -> UInt64 {
            var v: UInt64 = 0
            for k in 0..<sz { v |= UInt64(img.load(fromByteOffset: o + k, as: UInt8.self)) << (8 * UInt64(k)) }
            return v
        }

        // Save the current task.
        var flags = rflags
        if reason == .iret { flags &= ~RFLAGS.nt }
        let g = (0..<8).map { gpr[$0] }
        if old32 {
            var w: [(UInt64, Int, UInt64)] = [(0x20, 4, returnEIP), (0x24, 4, flags)]
            for k in 0..<8 { w.append((0x28 + UInt64(k) * 4, 4, g[k])) }
            for (k, s) in [SR.es, SR.cs, SR.ss, SR.ds, SR.fs, SR.gs].enumerated() {
                w.append((0x48 + UInt64(k) * 4, 2, UInt64(seg[s].selector)))
            }
            for (o, sz, v) in w { try writeLinear(wrapLinear(old.base &+ o), sz, v & sizeMask(sz), supervisor: true) }
        } else {
            var w: [(UInt64, UInt64)] = [(0x0E, returnEIP), (0x10, flags)]
            for k in 0..<8 { w.append((0x12 + UInt64(k) * 2, g[k])) }
            for (k, s) in [SR.es, SR.cs, SR.ss, SR.ds].enumerated() { w.append((0x22 + UInt64(k) * 2, UInt64(seg[s].selector))) }
            for (o, v) in w { try writeLinear(wrapLinear(old.base &+ o), 2, v & 0xFFFF, supervisor: true) }
        }
        // Busy bits and the back link.
        if reason == .jmp || reason == .iret, old.selector & 0xFFFC != 0, old.selector & 4 == 0 {
            let (oraw, oaddr) = try readDescriptor(old.selector)
            try writeLinear(oaddr &+ 5, 1, ((oraw >> 40) & 0xFF) & ~2, supervisor: true)
        }
        if reason != .iret {
            try writeLinear(addr &+ 5, 1, ((raw >> 40) & 0xFF) | 2, supervisor: true)
        }
        if reason == .call || reason == .interrupt {
            try writeLinear(newTSS.base, 2, UInt64(old.selector), supervisor: true)
        }

        // Commit: from here on the new task is current; faults belong to it.
        taskSwitched = true
        newTSS.attributes |= 2
        sys.tr = newTSS
        sys.cr0 |= CR0.ts
        var newFlags: UInt64, eip: UInt64
        var sels: [UInt16]  // ES CS SS DS FS GS
        let ldt: UInt16
        if new32 {
            let cr3 = f(0x1C, 4)
            if sys.cr0 & CR0.pg != 0 && cr3 != sys.cr3 { sys.cr3 = cr3; pagingChanged() } else { sys.cr3 = cr3 }
            eip = f(0x20, 4)
            newFlags = f(0x24, 4)
            for k in 0..<8 { gpr[k] = f(0x28 + k * 4, 4) }
            sels = (0..<6).map { UInt16(truncatingIfNeeded: f(0x48 + $0 * 4, 2)) }
            ldt = UInt16(truncatingIfNeeded: f(0x60, 2))
        } else {
            eip = f(0x0E, 2)
            newFlags = (flags & ~0xFFFF) | f(0x10, 2)
            for k in 0..<8 { gpr[k] = (gpr[k] & ~0xFFFF) | f(0x12 + k * 2, 2) }
            sels = (0..<4).map { UInt16(truncatingIfNeeded: f(0x22 + $0 * 2, 2)) } + [seg[SR.fs].selector, seg[SR.gs].selector]
            ldt = UInt16(truncatingIfNeeded: f(0x2A, 2))
        }
        if reason == .call || reason == .interrupt { newFlags |= RFLAGS.nt }
        rflags = newFlags
        rip = eip
        nextRIP = eip
        insnStart = eip
        // The selectors are loaded before their descriptors are checked; until checked they are unusable.
        for (k, s) in [SR.es, SR.cs, SR.ss, SR.ds, SR.fs, SR.gs].enumerated() where new32 || k < 4 {
            seg[s] = Segment(selector: sels[k], base: 0, limit: 0, attributes: 0)
        }
        sys.ldtr = Segment(selector: ldt, base: 0, limit: 0, attributes: 0)

        if newFlags & RFLAGS.vm != 0 && new32 {
            for (k, s) in [SR.es, SR.cs, SR.ss, SR.ds, SR.fs, SR.gs].enumerated() {
                seg[s] = Segment(selector: sels[k], base: UInt64(sels[k]) << 4, limit: 0xFFFF, attributes: s == SR.cs ? 0xFB : 0xF3)
            }
            sys.cpl = 3
        } else {
            sys.cpl = UInt8(sels[1] & 3)
        }
        updateMode()
        try loadTaskLDT(ldt)
        if mode != .virtual8086 { try loadTaskSegments(sels, all: new32) }
        if let e = errorCode { try push(UInt64(e), new32 ? 4 : 2) }
        if eip > UInt64(seg[SR.cs].limit) { throw .fault(.generalProtection(0)) }
    }

    private func loadTaskLDT(_ sel: UInt16) throws(Stop) {
        if sel & 0xFFFC == 0 { return }
        let code = UInt32(sel & 0xFFFC)
        if sel & 4 != 0 { throw .fault(.invalidTSS(code)) }
        let raw: UInt64
        do throws(Stop) { (raw, _) = try readDescriptor(sel) } catch {
            if case .fault = error { throw .fault(.invalidTSS(code)) }
            throw error
        }
        let d = Segment.fromDescriptor(selector: sel, descriptor: raw)
        if !d.isSystem || d.type != 2 || !d.present { throw .fault(.invalidTSS(code)) }
        sys.ldtr = d
    }

    /// The new task's CS, SS and data segments, checked as a task switch checks them (#TS for
    /// a bad descriptor, #NP/#SS for a not-present one).
    private func loadTaskSegments(_ sels: [UInt16], all: Bool) throws(Stop) {
        let cpl = sys.cpl
        func descriptor(_ sel: UInt16) throws(Stop) -> (Segment, UInt64, UInt64) {
            do throws(Stop) {
                let (raw, addr) = try readDescriptor(sel)
                return (Segment.fromDescriptor(selector: sel, descriptor: raw), raw, addr)
            } catch {
                if case .fault = error { throw .fault(.invalidTSS(UInt32(sel & 0xFFFC))) }
                throw error
            }
        }
        // CS
        let csSel = sels[1], csCode = UInt32(csSel & 0xFFFC)
        if csSel & 0xFFFC == 0 { throw .fault(.invalidTSS(0)) }
        var (cs, csRaw, csAddr) = try descriptor(csSel)
        if cs.isSystem || !cs.isCode { throw .fault(.invalidTSS(csCode)) }
        if cs.type & 4 != 0 ? cs.dpl > cpl : cs.dpl != cpl { throw .fault(.invalidTSS(csCode)) }
        if !cs.present { throw .fault(.notPresent(csCode)) }
        try markAccessed(csRaw, csAddr)
        cs.attributes |= 1
        seg[SR.cs] = cs
        updateMode()
        // SS
        let ssSel = sels[2], ssCode = UInt32(ssSel & 0xFFFC)
        if ssSel & 0xFFFC == 0 { throw .fault(.invalidTSS(0)) }
        var (ss, ssRaw, ssAddr) = try descriptor(ssSel)
        if ss.isSystem || ss.isCode || ss.type & 2 == 0 || ss.dpl != cpl || UInt8(ssSel & 3) != cpl {
            throw .fault(.invalidTSS(ssCode))
        }
        if !ss.present { throw .fault(.stackFault(ssCode)) }
        try markAccessed(ssRaw, ssAddr)
        ss.attributes |= 1
        seg[SR.ss] = ss
        // ES DS FS GS (a 16-bit TSS has no FS/GS: they stay as they were).
        for (k, s) in [(0, SR.es), (3, SR.ds), (4, SR.fs), (5, SR.gs)] {
            if !all && k >= 4 { continue }
            let sel = sels[k], code = UInt32(sel & 0xFFFC)
            if sel & 0xFFFC == 0 { seg[s] = Segment(selector: sel, base: 0, limit: 0, attributes: 0); continue }
            var (d, raw, addr) = try descriptor(sel)
            if d.isSystem || (d.isCode && d.type & 2 == 0) { throw .fault(.invalidTSS(code)) }
            let conforming = d.isCode && d.type & 4 != 0
            if !conforming && d.dpl < max(cpl, UInt8(sel & 3)) { throw .fault(.invalidTSS(code)) }
            if !d.present { throw .fault(.notPresent(code)) }
            try markAccessed(raw, addr)
            d.attributes |= 1
            seg[s] = d
        }
    }
}
