import ArgumentParser
import Foundation
import X86Emulator

/// `exitscope decode`: disassemble hex bytes or a file region with the emulator's decoder.
struct DecodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decode",
        abstract: "Decode x86 instructions (Intel syntax) from hex bytes or a file.",
        discussion: """
            Examples:
              exitscope decode --mode 64 '48 8b 44 8b 10'
              exitscope decode --mode 16 --json b80000cd10
              exitscope decode --mode 64 --file /bin/true --offset 0x4000 --length 64
            Bytes that do not decode are listed as "(bad)" (invalid), "(truncated)" or "(too long)" and
            decoding resumes at the next byte.
            """
    )

    @Option(help: "Code size: 16, 32 or 64.")
    var mode: Int = 64

    @Option(help: "Vendor whose decoding rules apply where AMD and Intel differ: amd or intel.")
    var vendor: String = "amd"

    @Flag(help: "One JSON object per line: {offset, length, bytes, mnemonic, text}.")
    var json = false

    @Option(help: "Read the bytes from this file instead of the command line.")
    var file: String?

    @Option(help: "Byte offset into --file (decimal or 0x hex).")
    var offset: String = "0"

    @Option(help: "Number of bytes to decode from --file (decimal or 0x hex); default: to the end.")
    var length: String?

    @Option(help: "Address of the first byte, for branch targets and the listing (decimal or 0x hex).")
    var address: String = "0"

    @Argument(help: "Instruction bytes in hex (spaces allowed), unless --file is given.")
    var hex: [String] = []

    func run() throws {
        guard let decoderMode = DecoderMode(rawValue: mode) else {
            throw ValidationError("--mode must be 16, 32 or 64 (got \(mode))")
        }
        guard let cpuVendor = CPUVendor(rawValue: vendor.lowercased()) else {
            throw ValidationError("--vendor must be amd or intel (got \(vendor))")
        }
        guard let base = Self.parseNumber(address) else { throw ValidationError("bad --address \(address)") }
        let bytes: [UInt8]
        if let file {
            guard hex.isEmpty else { throw ValidationError("give either hex bytes or --file, not both") }
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ValidationError("cannot read file \(file)")
            }
            guard let off = Self.parseNumber(offset), off <= UInt64(data.count) else {
                throw ValidationError("bad --offset \(offset) (file is \(data.count) bytes)")
            }
            var end = UInt64(data.count)
            if let length {
                guard let n = Self.parseNumber(length) else { throw ValidationError("bad --length \(length)") }
                end = n > end - off ? end : off + n   // no overflow on huge --length
            }
            bytes = [UInt8](data[Int(off)..<Int(end)])
        } else {
            guard !hex.isEmpty else { throw ValidationError("give hex bytes or --file") }
            guard let parsed = Self.parseHex(hex.joined()) else {
                throw ValidationError("bad hex: expected pairs of hex digits, e.g. '48 89 d8'")
            }
            bytes = parsed
        }

        var out = ""
        var pos = 0
        bytes.withUnsafeBytes { buf in
            while pos < buf.count {
                let rest = UnsafeRawBufferPointer(rebasing: buf[pos...])
                let addr = base &+ UInt64(pos)
                switch X86Decoder.decode(rest, mode: decoderMode, vendor: cpuVendor) {
                case .success(let insn):
                    let n = Int(insn.length)
                    out += line(addr, Array(rest.prefix(n)), insn.mnemonic.name, insn.text(address: addr))
                    pos += n
                case .failure(let e):
                    let why = e == .invalid ? "(bad)" : (e == .truncated ? "(truncated)" : "(too long)")
                    out += line(addr, [rest[0]], nil, why)
                    pos += 1
                }
                if out.utf8.count > 1 << 16 { print(out, terminator: ""); out = "" }
            }
        }
        print(out, terminator: "")
    }

    private func line(_ addr: UInt64, _ b: [UInt8], _ mnemonic: String?, _ text: String) -> String {
        let hexBytes = b.map { String(format: "%02x", $0) }.joined(separator: " ")
        if json {
            let m = mnemonic.map { "\"\($0)\"" } ?? "null"
            return "{\"offset\":\(addr),\"length\":\(b.count),\"bytes\":\"\(hexBytes.replacingOccurrences(of: " ", with: ""))\",\"mnemonic\":\(m),\"text\":\"\(text)\"}\n"
        }
        let a = String(addr, radix: 16)
        return String(repeating: " ", count: max(0, 8 - a.count)) + a + ":  " + hexBytes.padding(toLength: 30, withPad: " ", startingAt: 0) + " " + text + "\n"
    }

    static func parseNumber(_ s: String) -> UInt64? {
        let t = s.trimmingCharacters(in: .whitespaces).lowercased()
        if t.hasPrefix("0x") { return UInt64(t.dropFirst(2), radix: 16) }
        return UInt64(t)
    }

    static func parseHex(_ s: String) -> [UInt8]? {
        var digits = s.lowercased().filter { !$0.isWhitespace && $0 != "," }
        if digits.hasPrefix("0x") { digits.removeFirst(2) }
        guard !digits.isEmpty, digits.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        var it = digits.makeIterator()
        while let h = it.next(), let l = it.next() {
            guard let v = UInt8(String([h, l]), radix: 16) else { return nil }
            out.append(v)
        }
        return out
    }
}
