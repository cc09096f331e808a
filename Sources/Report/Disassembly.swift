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
        let mode: DecoderMode = bits == 64 ? .bits64 : (bits == 32 ? .bits32 : .bits16)
        guard case .success(let i) = X86Emulator.decode(bytes: bytes, mode: mode) else { return nil }
        return Text(mnemonic: i.mnemonic.name, intel: i.text(address: rip))
    }
}
