import X86

/// Descriptor tables and segment-register loads (APM vol. 2, chapter 4).
extension X86Executor {
    /// Reads the 8-byte descriptor a selector names in the GDT or LDT.
    /// Beyond the table's limit: #GP(selector).
    func readDescriptor(_ sel: UInt16) throws(Stop) -> (raw: UInt64, address: UInt64) {
        let index = UInt64(sel & 0xFFF8)
        let base: UInt64, limit: UInt64
        if sel & 4 != 0 {
            if !sys.ldtr.present || sys.ldtr.selector & 0xFFFC == 0 { throw .fault(.generalProtection(UInt32(sel & 0xFFFC))) }
            base = sys.ldtr.base; limit = UInt64(sys.ldtr.limit)
        } else {
            base = sys.gdtr.base; limit = UInt64(sys.gdtr.limit)
        }
        if index + 7 > limit { throw .fault(.generalProtection(UInt32(sel & 0xFFFC))) }
        let addr = wrapLinear(base &+ index)
        return (try readLinear(addr, 8, supervisor: true), addr)
    }

    /// The upper 8 bytes of a 16-byte system descriptor (long mode).
    func readDescriptorHigh(_ sel: UInt16) throws(Stop) -> UInt64 {
        let index = UInt64(sel & 0xFFF8) + 8
        let base: UInt64, limit: UInt64
        if sel & 4 != 0 { base = sys.ldtr.base; limit = UInt64(sys.ldtr.limit) } else {
            base = sys.gdtr.base; limit = UInt64(sys.gdtr.limit)
        }
        if index + 7 > limit { throw .fault(.generalProtection(UInt32(sel & 0xFFFC))) }
        return try readLinear(wrapLinear(base &+ index), 8, supervisor: true)
    }

    /// Sets the descriptor's accessed bit in memory, as a segment load does.
    func markAccessed(_ raw: UInt64, _ address: UInt64) throws(Stop) {
        if raw & (1 << 40) == 0 {
            let b = UInt64((raw >> 40) & 0xFF) | 1
            try writeLinear(address &+ 5, 1, b, supervisor: true)
        }
    }

    /// MOV Sreg / POP Sreg / LDS...: loads a data segment or SS with the protected-mode checks.
    func loadSegment(_ s: Int, _ sel: UInt16) throws(Stop) {
        if mode == .real || mode == .virtual8086 {
            var sg = seg[s]
            sg.selector = sel
            sg.base = UInt64(sel) << 4
            if mode == .virtual8086 { sg.limit = 0xFFFF; sg.attributes = s == SR.cs ? 0xFB : 0xF3 }
            seg[s] = sg
            if s == SR.cs { updateMode() }
            return
        }
        let rpl = UInt8(sel & 3), cpl = sys.cpl
        let code = UInt32(sel & 0xFFFC)
        if sel & 0xFFFC == 0 {
            // Null selector: fine for DS/ES/FS/GS; for SS only in 64-bit mode below CPL3 with RPL=CPL.
            if s == SR.ss && !(mode == .long64 && cpl < 3 && rpl == cpl) { throw .fault(.generalProtection(0)) }
            // AMD keeps the FS/GS base when a null selector is loaded in 64-bit mode.
            let base: UInt64 = mode == .long64 && (s == SR.fs || s == SR.gs) ? seg[s].base : 0
            seg[s] = Segment(selector: sel, base: base, limit: 0, attributes: 0)
            return
        }
        let (raw, addr) = try readDescriptor(sel)
        var d = Segment.fromDescriptor(selector: sel, descriptor: raw)
        let dpl = d.dpl
        if d.isSystem { throw .fault(.generalProtection(code)) }
        if s == SR.ss {
            if rpl != cpl || dpl != cpl || d.isCode || d.type & 2 == 0 { throw .fault(.generalProtection(code)) }
            if !d.present { throw .fault(.stackFault(code)) }
        } else {
            if d.isCode && d.type & 2 == 0 { throw .fault(.generalProtection(code)) }
            let conforming = d.isCode && d.type & 4 != 0
            if !conforming && dpl < max(cpl, rpl) { throw .fault(.generalProtection(code)) }
            if !d.present { throw .fault(.notPresent(code)) }
        }
        try markAccessed(raw, addr)
        d.attributes |= 1
        if mode == .long64 && (s == SR.fs || s == SR.gs) {
            // In 64-bit mode the descriptor's base is 32 bits; the upper half clears.
            d.base &= 0xFFFF_FFFF
        }
        seg[s] = d
    }

    /// Loads CS for a far JMP/CALL/RET or IRET to `sel` at privilege `newCPL` (checks already done
    /// by the caller when `checked`).
    func codeDescriptor(_ sel: UInt16, forReturn: Bool) throws(Stop) -> (Segment, UInt64, UInt64) {
        let code = UInt32(sel & 0xFFFC)
        if sel & 0xFFFC == 0 { throw .fault(.generalProtection(0)) }
        let (raw, addr) = try readDescriptor(sel)
        let d = Segment.fromDescriptor(selector: sel, descriptor: raw)
        if d.isSystem || !d.isCode { throw .fault(.generalProtection(code)) }
        return (d, raw, addr)
    }

    /// Far JMP or CALL to a code segment (gates: Gates.swift): CPL stays; conforming allows DPL <= CPL.
    func farTransferTarget(_ sel: UInt16) throws(Stop) -> Segment {
        if mode == .real || mode == .virtual8086 {
            var cs = seg[SR.cs]
            cs.selector = sel
            cs.base = UInt64(sel) << 4
            return cs
        }
        let code = UInt32(sel & 0xFFFC)
        if sel & 0xFFFC == 0 { throw .fault(.generalProtection(0)) }
        let (raw, addr) = try readDescriptor(sel)
        var d = Segment.fromDescriptor(selector: sel, descriptor: raw)
        // Gates and TSS descriptors went through farTransferThroughSystemDescriptor.
        if d.isSystem || !d.isCode { throw .fault(.generalProtection(code)) }
        let cpl = sys.cpl, rpl = UInt8(sel & 3)
        if d.type & 4 != 0 {
            if d.dpl > cpl { throw .fault(.generalProtection(code)) }
        } else {
            if rpl > cpl || d.dpl != cpl { throw .fault(.generalProtection(code)) }
        }
        if !d.present { throw .fault(.notPresent(code)) }
        if mode == .long64 || mode == .compat16 || mode == .compat32 {
            if d.long && d.defaultBig { throw .fault(.generalProtection(code)) }
        }
        try markAccessed(raw, addr)
        d.attributes |= 1
        d.selector = (sel & 0xFFFC) | UInt16(cpl)
        return d
    }

    /// Installs a new CS (and the mode it implies).
    func setCS(_ d: Segment, cpl newCPL: UInt8? = nil) {
        seg[SR.cs] = d
        if let c = newCPL { sys.cpl = c }
        updateMode()
    }

    /// After a return to an outer privilege level: data segments the new CPL may not use become null.
    func nullifyInaccessibleSegments() {
        for s in [SR.es, SR.ds, SR.fs, SR.gs] {
            let d = seg[s]
            let conformingCode = d.isCode && d.type & 4 != 0
            if d.present && !conformingCode && d.dpl < sys.cpl {
                seg[s] = Segment(selector: 0, base: mode == .long64 && s >= SR.fs ? d.base : 0, limit: 0, attributes: 0)
            }
        }
    }
}
