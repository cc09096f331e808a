/// Hex strings as DESIGN.md's state schema writes 64-bit values: "0x" followed by lowercase digits.
public enum Hex {
    public static func string<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }

    /// Parses "0x1f", "1f", or a decimal number prefixed "0d"; nil when it is not a number.
    public static func parse(_ s: String) -> UInt64? {
        var t = Substring(s.trimmingCharactersInSpace())
        if t.hasPrefix("0x") || t.hasPrefix("0X") { t = t.dropFirst(2) }
        else if t.hasPrefix("0d") { return UInt64(t.dropFirst(2)) }
        t = Substring(t.filter { $0 != "_" })
        return UInt64(t, radix: 16)
    }

    /// Bytes as a plain lowercase hex string ("0f01d9").
    public static func bytes<C: Collection>(_ b: C, separator: UInt8? = nil) -> String where C.Element == UInt8 {
        let count = b.count
        guard count > 0 else { return "" }
        let n = separator == nil ? count * 2 : count * 3 - 1
        // Written in place: a Character array and appends per digit made `show` spend a tenth of its time here.
        return String(unsafeUninitializedCapacity: n) { out in
            var i = 0
            for x in b {
                if i > 0, let sep = separator { out[i] = sep; i += 1 }
                out[i] = digit(x >> 4)
                out[i + 1] = digit(x & 15)
                i += 2
            }
            return i
        }
    }

    /// The ASCII lowercase hex digit of `d` (0...15).
    @inline(__always)
    public static func digit(_ d: UInt8) -> UInt8 { d < 10 ? 0x30 + d : 0x57 + d }

    /// Parses "0f 01 d9", "0f01d9" or "\x0f\x01"; nil on an odd digit count or a non-hex character.
    public static func parseBytes(_ s: String) -> [UInt8]? {
        let cleaned = s.replacingAll(["\\x", "0x", " ", ",", "\n", "\t"]).lowercased()
        guard cleaned.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(cleaned.count / 2)
        var it = cleaned.makeIterator()
        while let a = it.next(), let b = it.next() {
            guard let v = UInt8(String([a, b]), radix: 16) else { return nil }
            out.append(v)
        }
        return out
    }
}

extension String {
    func trimmingCharactersInSpace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }

    func replacingAll(_ needles: [String]) -> String {
        var r = self
        for n in needles {
            var out = ""
            var rest = Substring(r)
            while let range = rest.range(of: n) {
                out += rest[..<range.lowerBound]
                rest = rest[range.upperBound...]
            }
            r = out + rest
        }
        return r
    }
}

extension Substring {
    func range(of needle: String) -> Range<Substring.Index>? {
        guard !needle.isEmpty else { return nil }
        var i = startIndex
        while i < endIndex {
            if self[i...].hasPrefix(needle) {
                return i..<index(i, offsetBy: needle.count)
            }
            i = index(after: i)
        }
        return nil
    }
}
