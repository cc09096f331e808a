import X86

/// Intel-syntax text, close to `objdump -M intel` (lowercase, ", " between operands; the
/// differences are listed in DECODER.md).
extension Instruction {
    /// The instruction as text, with relative branch targets shown for an instruction at address 0.
    public var text: String { text(address: 0) }

    /// The instruction as text; relative branch targets are absolute, computed from `address`.
    public func text(address: UInt64) -> String {
        var s = ""
        if prefixes.contains(.lock) { s += "lock " }
        if attributes & FormAttr.repe != 0 {
            if prefixes.contains(.rep) || prefixes.contains(.repne) { s += prefixes.contains(.repne) ? "repne " : "repe " }
        } else if attributes & FormAttr.rep_ != 0 && (prefixes.contains(.rep) || prefixes.contains(.repne)) {
            s += "rep "
        }
        s += mnemonic.name
        let isString = attributes & (FormAttr.rep_ | FormAttr.repe) != 0
        for k in 0..<Int(operandCount) {
            s += k == 0 ? " " : ", "
            s += operandText(operand(k), address: address, isString: isString)
            if k == 0 && prefixes.contains(.evex) {
                if vector.opmask != 0 { s += "{k\(vector.opmask)}" }
                if vector.zeroing { s += "{z}" }
            }
        }
        return s
    }

    func operandText(_ o: Operand, address: UInt64, isString: Bool) -> String {
        switch o {
        case .none: return ""
        case .register(let r): return r.name
        case .immediate(let v, let size):
            // the implicit count of D0-D3 shifts, written as objdump does
            if immediateSize == 0 && v == 1 { return "1" }
            return hex(size >= 8 ? UInt64(bitPattern: v) : UInt64(bitPattern: v) & ((1 << (UInt64(size) * 8)) - 1))
        case .relative(let d):
            var target = address &+ UInt64(length) &+ UInt64(bitPattern: d)
            if operandSize == 16 { target &= 0xFFFF } else if operandSize == 32 || mode != 64 { target &= 0xFFFF_FFFF }
            return hex(target)
        case .farPointer(let sel, let off): return "\(hex(UInt64(sel))):\(hex(UInt64(off)))"
        case .memory(let m):
            var s = ""
            // moffs (A0-A3, no ModRM) is written without a size, as objdump does: the register says it
            let isMoffs = !hasModRM && m.base == nil && m.index == nil && !isString
            if !isMoffs, let p = Instruction.sizeNames[Int(m.size)] { s += p + " ptr " }
            if vector.broadcast && prefixes.contains(.evex) && m.size > 0 && m.size < 16 { s = "" ; s += Instruction.sizeNames[Int(m.size)].map { $0 + " bcst " } ?? "" }
            let showSegment = m.segmentOverridden || isString || (m.base == nil && m.index == nil && !m.ripRelative)
            if showSegment { s += ["es", "cs", "ss", "ds", "fs", "gs"][m.segment.rawValue] + ":" }
            if m.base == nil && m.index == nil && !m.ripRelative {
                let mask: UInt64 = m.addressSize == 64 ? ~0 : (m.addressSize == 32 ? 0xFFFF_FFFF : 0xFFFF)
                return s + hex(UInt64(bitPattern: m.displacement) & mask)
            }
            s += "["
            var first = true
            if m.ripRelative { s += m.addressSize == 64 ? "rip" : "eip"; first = false }
            if let b = m.base { s += b.name; first = false }
            if let x = m.index {
                s += (first ? "" : "+") + x.name + (m.addressSize == 16 ? "" : "*\(m.scale)")
                first = false
            }
            // an encoded zero displacement is shown (objdump does: [rbp+0x0])
            let encodedDisp = displacementSize > 0 && (m.base != nil || m.index != nil || m.ripRelative)
            if m.displacement != 0 || first || encodedDisp {
                if m.displacement < 0 && !first { s += "-" + hex(UInt64(-m.displacement)) }
                else { s += (first ? "" : "+") + hex(UInt64(bitPattern: m.displacement)) }
            }
            return s + "]"
        }
    }

    static let sizeNames: [Int: String] = [1: "byte", 2: "word", 4: "dword", 6: "fword", 8: "qword", 10: "tbyte",
                                           16: "xmmword", 32: "ymmword", 64: "zmmword"]
}

@inline(__always) func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
