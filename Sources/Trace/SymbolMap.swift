/// Guest symbols from a System.map or /proc/kallsyms text ("ffffffff81000000 T _stext"), for
/// naming the RIPs of guests whose image carries no symbols, such as a Linux bzImage: what
/// perf kvm's --guestkallsyms does. Read-side only; the trace itself is not changed.
public enum SymbolMap {
    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public let line: Int
        public let text: String
        public var description: String { "line \(line): '\(text)' is not 'ADDRESS TYPE NAME' (System.map or /proc/kallsyms)" }
    }

    /// The text symbols (types t, T, w, W) of `text`, each sized up to the next text symbol at a
    /// higher address (the last one open-ended). Other symbol types and lines of only zeros
    /// (kallsyms read without privilege) are skipped; a line that is not three or more fields
    /// with a hexadecimal address is an error, so a wrong file is refused rather than half-read.
    public static func parse(_ text: String) throws(ParseError) -> [GuestSymbol] {
        var found: [(address: UInt64, name: String)] = []
        var number = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            let fields = raw.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.isEmpty { continue }
            guard fields.count >= 3, fields[1].count == 1, let address = UInt64(fields[0], radix: 16) else {
                throw ParseError(line: number, text: String(raw.prefix(80)))
            }
            guard ["t", "T", "w", "W"].contains(fields[1]), address != 0 else { continue }
            found.append((address, String(fields[2])))
        }
        found.sort { $0.address < $1.address }
        var symbols: [GuestSymbol] = []
        symbols.reserveCapacity(found.count)
        for (i, s) in found.enumerated() {
            // Several names at one address (aliases): the next *higher* address bounds the size.
            var j = i + 1
            while j < found.count && found[j].address == s.address { j += 1 }
            let size = j < found.count ? found[j].address - s.address : 0
            symbols.append(GuestSymbol(address: s.address, size: size, name: s.name))
        }
        return symbols
    }
}
