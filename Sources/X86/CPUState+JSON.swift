/// The JSON form of `CPUState`: every 64-bit value a hex string, segments as objects with
/// selector, base, limit and attributes, and a derived "mode" for readers. On input every
/// field is optional: a missing field keeps the value of `CPUState.flat(mode)`, so an `exec`
/// input can be as short as {"mode": "long64", "rip": "0x1000"}.
extension Segment: Codable {
    enum K: String, CodingKey { case selector, base, limit, attributes }
    public init(from d: Decoder) throws {
        let c = try d.container(keyedBy: K.self)
        self.init()
        selector = UInt16(truncatingIfNeeded: try c.hexIfPresent(.selector) ?? 0)
        base = try c.hexIfPresent(.base) ?? 0
        limit = UInt32(truncatingIfNeeded: try c.hexIfPresent(.limit) ?? 0xFFFF)
        attributes = UInt16(truncatingIfNeeded: try c.hexIfPresent(.attributes) ?? 0x93)
    }
    public func encode(to e: Encoder) throws {
        var c = e.container(keyedBy: K.self)
        try c.encode(Hex.string(selector), forKey: .selector)
        try c.encode(Hex.string(base), forKey: .base)
        try c.encode(Hex.string(limit), forKey: .limit)
        try c.encode(Hex.string(attributes), forKey: .attributes)
    }
}

extension DescriptorTable: Codable {
    enum K: String, CodingKey { case base, limit }
    public init(from d: Decoder) throws {
        let c = try d.container(keyedBy: K.self)
        self.init(base: try c.hexIfPresent(.base) ?? 0,
                  limit: UInt16(truncatingIfNeeded: try c.hexIfPresent(.limit) ?? 0xFFFF))
    }
    public func encode(to e: Encoder) throws {
        var c = e.container(keyedBy: K.self)
        try c.encode(Hex.string(base), forKey: .base)
        try c.encode(Hex.string(limit), forKey: .limit)
    }
}

extension CPUState: Codable {
    enum K: String, CodingKey {
        case mode, cpl
        case rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15, rip, rflags
        case es, cs, ss, ds, fs, gs, ldtr, tr, gdtr, idtr
        case cr0, cr2, cr3, cr4, cr8, efer, dr6, dr7
        case star, lstar, cstar, sfmask, kernel_gs_base, sysenter_cs, sysenter_esp, sysenter_eip, pat, xcr0
    }

    static let gprKeys: [K] = [.rax, .rcx, .rdx, .rbx, .rsp, .rbp, .rsi, .rdi,
                               .r8, .r9, .r10, .r11, .r12, .r13, .r14, .r15]

    public init(from d: Decoder) throws {
        let c = try d.container(keyedBy: K.self)
        let mode: CPUMode
        if let m = try c.decodeIfPresent(String.self, forKey: .mode) {
            guard let mm = CPUMode(rawValue: m) else {
                throw DecodingError.dataCorruptedError(
                    forKey: .mode, in: c,
                    debugDescription: "unknown mode '\(m)'; valid: \(CPUMode.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            mode = mm
        } else {
            mode = .real
        }
        self = CPUState.flat(mode)
        for (i, k) in CPUState.gprKeys.enumerated() {
            if let v = try c.hexIfPresent(k) { setGPR(i, v) }
        }
        if let v = try c.hexIfPresent(.rip) { rip = v }
        if let v = try c.hexIfPresent(.rflags) { rflags = v }
        if let v = try c.decodeIfPresent(Segment.self, forKey: .es) { es = v }
        if let v = try c.decodeIfPresent(Segment.self, forKey: .cs) { cs = v }
        if let v = try c.decodeIfPresent(Segment.self, forKey: .ss) { ss = v }
        if let v = try c.decodeIfPresent(Segment.self, forKey: .ds) { ds = v }
        if let v = try c.decodeIfPresent(Segment.self, forKey: .fs) { fs = v }
        if let v = try c.decodeIfPresent(Segment.self, forKey: .gs) { gs = v }
        if let v = try c.decodeIfPresent(Segment.self, forKey: .ldtr) { ldtr = v }
        if let v = try c.decodeIfPresent(Segment.self, forKey: .tr) { tr = v }
        if let v = try c.decodeIfPresent(DescriptorTable.self, forKey: .gdtr) { gdtr = v }
        if let v = try c.decodeIfPresent(DescriptorTable.self, forKey: .idtr) { idtr = v }
        if let v = try c.hexIfPresent(.cr0) { cr0 = v }
        if let v = try c.hexIfPresent(.cr2) { cr2 = v }
        if let v = try c.hexIfPresent(.cr3) { cr3 = v }
        if let v = try c.hexIfPresent(.cr4) { cr4 = v }
        if let v = try c.hexIfPresent(.cr8) { cr8 = v }
        if let v = try c.hexIfPresent(.efer) { efer = v }
        if let v = try c.hexIfPresent(.dr6) { dr6 = v }
        if let v = try c.hexIfPresent(.dr7) { dr7 = v }
        if let v = try c.hexIfPresent(.star) { star = v }
        if let v = try c.hexIfPresent(.lstar) { lstar = v }
        if let v = try c.hexIfPresent(.cstar) { cstar = v }
        if let v = try c.hexIfPresent(.sfmask) { sfmask = v }
        if let v = try c.hexIfPresent(.kernel_gs_base) { kernelGSBase = v }
        if let v = try c.hexIfPresent(.sysenter_cs) { sysenterCS = v }
        if let v = try c.hexIfPresent(.sysenter_esp) { sysenterESP = v }
        if let v = try c.hexIfPresent(.sysenter_eip) { sysenterEIP = v }
        if let v = try c.hexIfPresent(.pat) { pat = v }
        if let v = try c.hexIfPresent(.xcr0) { xcr0 = v }
        if let v = try c.decodeIfPresent(Int.self, forKey: .cpl) { cpl = UInt8(clamping: v) }
        else if mode != .real { cpl = UInt8(ss.dpl) }
    }

    public func encode(to e: Encoder) throws {
        var c = e.container(keyedBy: K.self)
        try c.encode(mode.rawValue, forKey: .mode)
        try c.encode(Int(cpl), forKey: .cpl)
        for (i, k) in CPUState.gprKeys.enumerated() { try c.encode(Hex.string(gpr(i)), forKey: k) }
        try c.encode(Hex.string(rip), forKey: .rip)
        try c.encode(Hex.string(rflags), forKey: .rflags)
        try c.encode(es, forKey: .es)
        try c.encode(cs, forKey: .cs)
        try c.encode(ss, forKey: .ss)
        try c.encode(ds, forKey: .ds)
        try c.encode(fs, forKey: .fs)
        try c.encode(gs, forKey: .gs)
        try c.encode(ldtr, forKey: .ldtr)
        try c.encode(tr, forKey: .tr)
        try c.encode(gdtr, forKey: .gdtr)
        try c.encode(idtr, forKey: .idtr)
        try c.encode(Hex.string(cr0), forKey: .cr0)
        try c.encode(Hex.string(cr2), forKey: .cr2)
        try c.encode(Hex.string(cr3), forKey: .cr3)
        try c.encode(Hex.string(cr4), forKey: .cr4)
        try c.encode(Hex.string(cr8), forKey: .cr8)
        try c.encode(Hex.string(efer), forKey: .efer)
        try c.encode(Hex.string(dr6), forKey: .dr6)
        try c.encode(Hex.string(dr7), forKey: .dr7)
        try c.encode(Hex.string(star), forKey: .star)
        try c.encode(Hex.string(lstar), forKey: .lstar)
        try c.encode(Hex.string(cstar), forKey: .cstar)
        try c.encode(Hex.string(sfmask), forKey: .sfmask)
        try c.encode(Hex.string(kernelGSBase), forKey: .kernel_gs_base)
        try c.encode(Hex.string(sysenterCS), forKey: .sysenter_cs)
        try c.encode(Hex.string(sysenterESP), forKey: .sysenter_esp)
        try c.encode(Hex.string(sysenterEIP), forKey: .sysenter_eip)
        try c.encode(Hex.string(pat), forKey: .pat)
        try c.encode(Hex.string(xcr0), forKey: .xcr0)
    }

    /// The names of the fields that differ between two states, in schema order (for divergences).
    public func differingFields(from o: CPUState) -> [String] {
        var d: [String] = []
        for (i, k) in CPUState.gprKeys.enumerated() where gpr(i) != o.gpr(i) { d.append(k.rawValue) }
        if rip != o.rip { d.append("rip") }
        if rflags != o.rflags { d.append("rflags") }
        for r in SegmentRegister.allCases where segment(r) != o.segment(r) { d.append(r.name) }
        if ldtr != o.ldtr { d.append("ldtr") }
        if tr != o.tr { d.append("tr") }
        if gdtr != o.gdtr { d.append("gdtr") }
        if idtr != o.idtr { d.append("idtr") }
        if cr0 != o.cr0 { d.append("cr0") }
        if cr2 != o.cr2 { d.append("cr2") }
        if cr3 != o.cr3 { d.append("cr3") }
        if cr4 != o.cr4 { d.append("cr4") }
        if cr8 != o.cr8 { d.append("cr8") }
        if efer != o.efer { d.append("efer") }
        if cpl != o.cpl { d.append("cpl") }
        if xcr0 != o.xcr0 { d.append("xcr0") }
        return d
    }
}

extension KeyedDecodingContainer {
    /// A hex string ("0x1f"), or a plain JSON number, or nil when absent.
    func hexIfPresent(_ k: Key) throws -> UInt64? {
        if !contains(k) { return nil }
        if let s = try? decode(String.self, forKey: k) {
            guard let v = Hex.parse(s) else {
                throw DecodingError.dataCorruptedError(forKey: k, in: self,
                    debugDescription: "'\(s)' is not a hex number (write it as \"0x...\")")
            }
            return v
        }
        return try decode(UInt64.self, forKey: k)
    }
}
