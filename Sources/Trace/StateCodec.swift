import X86

/// The delta encoding of `CPUState` (FORMAT.md, "State encoding").
///
/// A state is 73 unsigned "slots" grouped into 47 fields; a segment register is one field of
/// four slots (selector, base, limit, attributes), GDTR/IDTR one field of two (base, limit).
/// A delta is a varint bit mask of the fields that changed, then for each changed field, in
/// field order, each of its slots as zigzag(new − old) (wrapping 64-bit difference).
/// Most exits change RIP, RAX and RFLAGS at most, so a delta is a few bytes.
enum StateCodec {
    static let slotCount = 73
    static let fieldCount = 47

    /// Field names in field-bit order (FORMAT.md's table; the JSON form's names).
    static let fieldNames: [String] = GPR.names + ["rip", "rflags", "es", "cs", "ss", "ds", "fs", "gs",
        "ldtr", "tr", "gdtr", "idtr", "cr0", "cr2", "cr3", "cr4", "cr8", "efer", "cpl", "dr6", "dr7",
        "star", "lstar", "cstar", "sfmask", "kernel_gs_base", "sysenter_cs", "sysenter_esp",
        "sysenter_eip", "pat", "xcr0"]

    /// fieldStart[f] ..< fieldStart[f + 1] are field f's slots.
    static let fieldStart: [Int] = {
        var starts: [Int] = []
        var s = 0
        for f in 0..<fieldCount {
            starts.append(s)
            s += (18...25).contains(f) ? 4 : ((26...27).contains(f) ? 2 : 1)
        }
        starts.append(s)
        precondition(s == slotCount)
        return starts
    }()

    /// Width in bits of each slot: a decoded value wider than its slot is a corrupt frame.
    static let slotWidth: [UInt8] = {
        var w = [UInt8](repeating: 64, count: slotCount)
        for f in 18...25 { let s = fieldStart[f]; w[s] = 16; w[s + 2] = 32; w[s + 3] = 16 }
        for f in 26...27 { w[fieldStart[f] + 1] = 16 }
        w[fieldStart[34]] = 8
        return w
    }()

    @inline(__always)
    static func flatten(_ s: CPUState, _ p: UnsafeMutablePointer<UInt64>) {
        p[0] = s.rax; p[1] = s.rcx; p[2] = s.rdx; p[3] = s.rbx
        p[4] = s.rsp; p[5] = s.rbp; p[6] = s.rsi; p[7] = s.rdi
        p[8] = s.r8; p[9] = s.r9; p[10] = s.r10; p[11] = s.r11
        p[12] = s.r12; p[13] = s.r13; p[14] = s.r14; p[15] = s.r15
        p[16] = s.rip; p[17] = s.rflags
        @inline(__always) func seg(_ i: Int, _ g: Segment) {
            p[i] = UInt64(g.selector); p[i + 1] = g.base; p[i + 2] = UInt64(g.limit); p[i + 3] = UInt64(g.attributes)
        }
        seg(18, s.es); seg(22, s.cs); seg(26, s.ss); seg(30, s.ds); seg(34, s.fs); seg(38, s.gs)
        seg(42, s.ldtr); seg(46, s.tr)
        p[50] = s.gdtr.base; p[51] = UInt64(s.gdtr.limit)
        p[52] = s.idtr.base; p[53] = UInt64(s.idtr.limit)
        p[54] = s.cr0; p[55] = s.cr2; p[56] = s.cr3; p[57] = s.cr4; p[58] = s.cr8; p[59] = s.efer
        p[60] = UInt64(s.cpl); p[61] = s.dr6; p[62] = s.dr7
        p[63] = s.star; p[64] = s.lstar; p[65] = s.cstar; p[66] = s.sfmask; p[67] = s.kernelGSBase
        p[68] = s.sysenterCS; p[69] = s.sysenterESP; p[70] = s.sysenterEIP; p[71] = s.pat
        // XCR0 is stored XOR 7, so the all-zero keyframe base means 7 (CPUState's default): traces
        // written before the field existed read as 7, and a state with XCR0 = 7 encodes exactly
        // as it did then (older readers still read it).
        p[72] = s.xcr0 ^ 7
    }

    /// The inverse of `flatten`; slots must already fit their widths (checked by `decode`).
    static func unflatten(_ p: UnsafePointer<UInt64>) -> CPUState {
        var s = CPUState()
        unflatten(p, into: &s)
        return s
    }

    /// The inverse of `flatten`, in place (no 400-byte temporary on the reading path).
    @inline(__always)
    static func unflatten(_ p: UnsafePointer<UInt64>, into s: inout CPUState) {
        s.rax = p[0]; s.rcx = p[1]; s.rdx = p[2]; s.rbx = p[3]
        s.rsp = p[4]; s.rbp = p[5]; s.rsi = p[6]; s.rdi = p[7]
        s.r8 = p[8]; s.r9 = p[9]; s.r10 = p[10]; s.r11 = p[11]
        s.r12 = p[12]; s.r13 = p[13]; s.r14 = p[14]; s.r15 = p[15]
        s.rip = p[16]; s.rflags = p[17]
        @inline(__always) func seg(_ i: Int) -> Segment {
            Segment(selector: UInt16(truncatingIfNeeded: p[i]), base: p[i + 1],
                    limit: UInt32(truncatingIfNeeded: p[i + 2]), attributes: UInt16(truncatingIfNeeded: p[i + 3]))
        }
        s.es = seg(18); s.cs = seg(22); s.ss = seg(26); s.ds = seg(30); s.fs = seg(34); s.gs = seg(38)
        s.ldtr = seg(42); s.tr = seg(46)
        s.gdtr = DescriptorTable(base: p[50], limit: UInt16(truncatingIfNeeded: p[51]))
        s.idtr = DescriptorTable(base: p[52], limit: UInt16(truncatingIfNeeded: p[53]))
        s.cr0 = p[54]; s.cr2 = p[55]; s.cr3 = p[56]; s.cr4 = p[57]; s.cr8 = p[58]; s.efer = p[59]
        s.cpl = UInt8(truncatingIfNeeded: p[60]); s.dr6 = p[61]; s.dr7 = p[62]
        s.star = p[63]; s.lstar = p[64]; s.cstar = p[65]; s.sfmask = p[66]; s.kernelGSBase = p[67]
        s.sysenterCS = p[68]; s.sysenterESP = p[69]; s.sysenterEIP = p[70]; s.pat = p[71]
        s.xcr0 = p[72] ^ 7
    }

    /// The bit mask of the fields whose slots differ. A run of eight slots is compared by OR-ing
    /// their XORs first (an exit changes two or three slots, so most runs are equal and their slots
    /// are not looked at one by one); the slots' bits then map to fields by the fixed layout of
    /// `fieldStart`. The recorder's pipeline encodes a state per exit: the loop over fields and
    /// their slots it replaces was a third of its encoder's instructions.
    @inline(__always)
    static func changedFields(_ new: UnsafePointer<UInt64>, _ old: UnsafePointer<UInt64>) -> UInt64 {
        var lo: UInt64 = 0, hi: UInt64 = 0  // slots 0-63, 64-72
        var c = 0
        while c < slotCount {
            let n = min(8, slotCount - c)
            var any: UInt64 = 0
            for j in 0..<n { any |= new[c + j] ^ old[c + j] }
            if any != 0 {
                for j in 0..<n where new[c + j] != old[c + j] {
                    let i = c + j
                    if i < 64 { lo |= 1 << UInt64(i) } else { hi |= 1 << UInt64(i - 64) }
                }
            }
            c += 8
        }
        // Fields 0-17: slots 0-17; 18-25 (segments): four slots each from 18; 26-27 (GDTR, IDTR):
        // two each from 50; 28-46: slots 54-72, one each.
        var mask = lo & 0x3FFFF
        for k in 0..<8 where (lo >> UInt64(18 + 4 * k)) & 0xF != 0 { mask |= 1 << UInt64(18 + k) }
        if (lo >> 50) & 3 != 0 { mask |= 1 << 26 }
        if (lo >> 52) & 3 != 0 { mask |= 1 << 27 }
        mask |= ((lo >> 54) & 0x3FF) << 28
        mask |= (hi & 0x1FF) << 38
        return mask
    }

    /// Appends the delta from `old` to `new` (both flattened).
    @inline(__always)
    static func encode(_ new: UnsafePointer<UInt64>, against old: UnsafePointer<UInt64>, into sink: ByteSink) {
        let mask = changedFields(new, old)
        fieldStart.withUnsafeBufferPointer { fs in
            sink.varint(mask)
            var m = mask
            while m != 0 {
                let f = m.trailingZeroBitCount
                m &= m - 1
                for i in fs[f]..<fs[f + 1] { sink.varint(delta(new[i], old[i])) }
            }
        }
    }

    /// Reads a delta and applies it to `old`, writing the result to `new` (which may be `old`).
    /// The field layout (`fieldStart`, `slotWidth`) is spelled out here instead of read from the
    /// tables: this runs for nearly every record. Returns the mask of the fields it changed.
    @inline(__always) @discardableResult
    static func decode(_ c: inout ByteCursor, old: UnsafePointer<UInt64>, into new: UnsafeMutablePointer<UInt64>) throws -> UInt64 {
        let mask = try c.varint()
        if UnsafePointer(new) != old { new.update(from: old, count: slotCount) }
        // Bits beyond the known fields would need a newer reader: this frame cannot be read.
        guard mask >> UInt64(fieldCount) == 0 else { throw c.corrupt("state delta names unknown fields (mask 0x\(String(mask, radix: 16)))") }
        var m = mask
        while m != 0 {
            let f = m.trailingZeroBitCount
            m &= m - 1
            if f < 18 {
                // GPRs, RIP, RFLAGS: one 64-bit slot each, slot = field.
                new[f] = undelta(try c.varint(), new[f])
            } else if f < 26 {
                // A segment register: selector (16 bits), base, limit (32), attributes (16).
                let i = 18 + (f - 18) * 4
                new[i] = try slot(&c, f, width: 16, undelta(try c.varint(), new[i]))
                new[i + 1] = undelta(try c.varint(), new[i + 1])
                new[i + 2] = try slot(&c, f, width: 32, undelta(try c.varint(), new[i + 2]))
                new[i + 3] = try slot(&c, f, width: 16, undelta(try c.varint(), new[i + 3]))
            } else if f < 28 {
                // GDTR, IDTR: base, limit (16).
                let i = 50 + (f - 26) * 2
                new[i] = undelta(try c.varint(), new[i])
                new[i + 1] = try slot(&c, f, width: 16, undelta(try c.varint(), new[i + 1]))
            } else {
                // One slot each from CR0 on; CPL (field 34) is 8 bits.
                let i = f + 26
                let v = undelta(try c.varint(), new[i])
                new[i] = f == 34 ? try slot(&c, f, width: 8, v) : v
            }
        }
        return mask
    }

    /// Sets the fields of `s` named by `fields` (a delta's mask) from the flattened state `p`:
    /// `unflatten` of only what a delta changed.
    @inline(__always)
    static func unflatten(_ p: UnsafePointer<UInt64>, fields: UInt64, into s: inout CPUState) {
        var m = fields
        while m != 0 {
            let f = m.trailingZeroBitCount
            m &= m - 1
            @inline(__always) func seg(_ i: Int) -> Segment {
                Segment(selector: UInt16(truncatingIfNeeded: p[i]), base: p[i + 1],
                        limit: UInt32(truncatingIfNeeded: p[i + 2]), attributes: UInt16(truncatingIfNeeded: p[i + 3]))
            }
            switch f {
            case 0: s.rax = p[0]
            case 1: s.rcx = p[1]
            case 2: s.rdx = p[2]
            case 3: s.rbx = p[3]
            case 4: s.rsp = p[4]
            case 5: s.rbp = p[5]
            case 6: s.rsi = p[6]
            case 7: s.rdi = p[7]
            case 8: s.r8 = p[8]
            case 9: s.r9 = p[9]
            case 10: s.r10 = p[10]
            case 11: s.r11 = p[11]
            case 12: s.r12 = p[12]
            case 13: s.r13 = p[13]
            case 14: s.r14 = p[14]
            case 15: s.r15 = p[15]
            case 16: s.rip = p[16]
            case 17: s.rflags = p[17]
            case 18: s.es = seg(18)
            case 19: s.cs = seg(22)
            case 20: s.ss = seg(26)
            case 21: s.ds = seg(30)
            case 22: s.fs = seg(34)
            case 23: s.gs = seg(38)
            case 24: s.ldtr = seg(42)
            case 25: s.tr = seg(46)
            case 26: s.gdtr = DescriptorTable(base: p[50], limit: UInt16(truncatingIfNeeded: p[51]))
            case 27: s.idtr = DescriptorTable(base: p[52], limit: UInt16(truncatingIfNeeded: p[53]))
            case 28: s.cr0 = p[54]
            case 29: s.cr2 = p[55]
            case 30: s.cr3 = p[56]
            case 31: s.cr4 = p[57]
            case 32: s.cr8 = p[58]
            case 33: s.efer = p[59]
            case 34: s.cpl = UInt8(truncatingIfNeeded: p[60])
            case 35: s.dr6 = p[61]
            case 36: s.dr7 = p[62]
            case 37: s.star = p[63]
            case 38: s.lstar = p[64]
            case 39: s.cstar = p[65]
            case 40: s.sfmask = p[66]
            case 41: s.kernelGSBase = p[67]
            case 42: s.sysenterCS = p[68]
            case 43: s.sysenterESP = p[69]
            case 44: s.sysenterEIP = p[70]
            case 45: s.pat = p[71]
            case 46: s.xcr0 = p[72] ^ 7
            default: break
            }
        }
    }

    /// `v` when it fits `width` bits, else the error naming field `f`.
    @inline(__always) private static func slot(_ c: inout ByteCursor, _ f: Int, width: UInt64, _ v: UInt64) throws -> UInt64 {
        guard v >> width == 0 else { throw widthError(c, f, v, width) }
        return v
    }

    @inline(never) private static func widthError(_ c: ByteCursor, _ f: Int, _ v: UInt64, _ w: UInt64) -> TraceError {
        c.corrupt("\(fieldNames[f]) value 0x\(String(v, radix: 16)) does not fit \(w) bits")
    }
}

/// 73 slots of a flattened state, owned (no Swift array on the hot path).
final class StateSlots {
    let p: UnsafeMutablePointer<UInt64>
    init() {
        p = .allocate(capacity: StateCodec.slotCount)
        p.initialize(repeating: 0, count: StateCodec.slotCount)
    }
    deinit { p.deallocate() }
    func set(_ s: CPUState) { StateCodec.flatten(s, p) }
    func zero() { p.update(repeating: 0, count: StateCodec.slotCount) }
    func copy(from o: StateSlots) { p.update(from: o.p, count: StateCodec.slotCount) }
    var state: CPUState { StateCodec.unflatten(p) }
    @inline(__always) func equals(_ o: StateSlots) -> Bool {
        for i in 0..<StateCodec.slotCount where p[i] != o.p[i] { return false }
        return true
    }
}
