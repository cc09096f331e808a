import Foundation
import XCTest
@testable import X86Emulator

/// Second opinion: Zydis. Same length for every instruction both accept, at every byte offset of
/// random buffers and at every instruction of real code; mnemonics compared under the mapping of
/// DECODER.md (condition-code synonyms, sized string mnemonics).
final class DecoderZydisTests: XCTestCase {
    static let conditionSynonyms: [String: String] = [
        "nbe": "a", "nb": "ae", "nae": "b", "c": "b", "nc": "ae", "na": "be", "z": "e", "nz": "ne",
        "nge": "l", "nl": "ge", "nle": "g", "ng": "le", "pe": "p", "po": "np",
    ]
    static let sizedString = ["movs", "cmps", "stos", "lods", "scas", "ins", "outs"]

    static func equivalent(zydis z: String, ours i: Instruction) -> Bool {
        let o = i.mnemonic.name
        if z == o { return true }
        for p in ["j", "cmov", "set"] where z.hasPrefix(p) && o.hasPrefix(p) {
            if let c = conditionSynonyms[String(z.dropFirst(p.count))], p + c == o { return true }
        }
        if sizedString.contains(o), z.hasPrefix(o), z.count == o.count + 1 { return true }
        // size-named forms: Zydis pushfq/iretq/cdqe... vs ours, and the reverse
        let zBase = z.hasSuffix("w") || z.hasSuffix("d") || z.hasSuffix("q") ? String(z.dropLast()) : z
        let oBase = o.hasSuffix("w") || o.hasSuffix("d") || o.hasSuffix("q") ? String(o.dropLast()) : o
        if zBase == oBase && ["pushf", "popf", "iret", "pusha", "popa", "sysret", "sysexit"].contains(zBase) { return true }
        let aliases: [String: Set<String>] = [
            "nop": ["nop", "xchg", "pause"], "shl": ["sal"], "int1": ["int1"], "ud1": ["ud1"], "fwait": ["fwait"],
            "ret": ["retf"],                                   // Zydis names far returns ret (far by opcode)
            // undocumented x87 aliases: Zydis gives the base name, we the SDM/objdump alias
            "fcom": ["fcom2"], "fcomp": ["fcomp3", "fcomp5"], "fxch": ["fxch4", "fxch7"], "fstp": ["fstp8", "fstp9"],
            "fstpnce": ["fstp1"], "fdisi8087_nop": ["fndisi"], "feni8087_nop": ["fneni"], "fsetpm287_nop": ["fnsetpm"],
        ]
        if let a = aliases[z], a.contains(o) { return true }
        // predicates folded into names, as with objdump (vcmpps with imm8 vs vcmpeqps...)
        for p in ["cmp", "vcmp", "vpcmp"] where o.hasPrefix(p) && z.hasPrefix(p) && o.suffix(2) == z.suffix(2)
            && ["ps", "pd", "ss", "sd", "b", "w", "d", "q", "ub", "uw", "ud", "uq"].contains(where: { o == p + $0 }) { return true }
        if o.hasSuffix("pclmulqdq") && z.hasPrefix(String(o.dropLast(6))) && z.hasSuffix("dq") { return true }
        return false
    }

    struct Tally { var compared = 0, lengthDiffs = 0, nameDiffs = 0, examples: [String] = [], names: [String: Int] = [:] }

    func check(_ buf: [UInt8], offsets: [Int], mode: DecoderMode, vendor: CPUVendor = .amd, label: String) throws {
        guard let z = ZydisReference(mode: mode, vendor: vendor) else { throw XCTSkip("libZydis is not installed (apt-get install libzydis-dev)") }
        var t = Tally()
        buf.withUnsafeBytes { raw in
            for off in offsets where off < raw.count {
                let rest = UnsafeRawBufferPointer(rebasing: raw[off..<min(raw.count, off + 15)])
                guard case .success(let ours) = X86Decoder.decode(rest, mode: mode, vendor: vendor),
                      let theirs = z.decode(rest.baseAddress!, rest.count) else { continue }
                t.compared += 1
                let hex = rest.prefix(max(Int(ours.length), theirs.length)).map { String(format: "%02x", $0) }.joined(separator: " ")
                if Int(ours.length) != theirs.length {
                    t.lengthDiffs += 1
                    if t.examples.count < 30 { t.examples.append("[\(label)] length \(ours.length) vs zydis \(theirs.length): \(hex)  ours: \(ours.text)  zydis: \(theirs.mnemonic)") }
                } else if !Self.equivalent(zydis: theirs.mnemonic, ours: ours) {
                    t.nameDiffs += 1
                    t.names["\(ours.mnemonic.name) / \(theirs.mnemonic)", default: 0] += 1
                }
            }
        }
        let topNames = t.names.sorted { $0.value > $1.value }.prefix(12).map { "\($0.key) ×\($0.value)" }.joined(separator: ", ")
        print("zydis cross-check \(label): compared \(t.compared), length disagreements \(t.lengthDiffs), "
              + "name differences \(t.nameDiffs)\(topNames.isEmpty ? "" : " (ours / zydis: \(topNames))")")
        if ProcessInfo.processInfo.environment["EXITSCOPE_XCHECK_VERBOSE"] != nil { t.examples.forEach { print($0) } }
        XCTAssertEqual(t.lengthDiffs, 0, "length disagreements with Zydis:\n" + t.examples.joined(separator: "\n"))
        XCTAssertEqual(t.nameDiffs, 0, "mnemonic differences with Zydis: \(topNames)")
        XCTAssertGreaterThan(t.compared, 1000)
    }

    func randomBuffer(_ n: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix64(seed: seed)
        return (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
    }

    func testRandomEveryOffset64() throws {
        let b = randomBuffer(24 * 1024, seed: 64); try check(b, offsets: Array(b.indices), mode: .bits64, label: "random64")
    }
    func testRandomEveryOffset64Intel() throws {
        // Intel rules for 66-prefixed near branches (Zydis without its AMD-branches mode)
        let b = randomBuffer(24 * 1024, seed: 6464)
        try check(b, offsets: Array(b.indices), mode: .bits64, vendor: .intel, label: "random64-intel")
    }
    func testRandomEveryOffset32() throws {
        let b = randomBuffer(24 * 1024, seed: 32); try check(b, offsets: Array(b.indices), mode: .bits32, label: "random32")
    }
    func testRandomEveryOffset16() throws {
        let b = randomBuffer(24 * 1024, seed: 16); try check(b, offsets: Array(b.indices), mode: .bits16, label: "random16")
    }

    func testRealCode() throws {
        guard let d = FileManager.default.contents(atPath: "/usr/bin/ls") else { throw XCTSkip("/usr/bin/ls not found") }
        let b = [UInt8](d)
        // linear sweep of the whole file (headers and data included: more variety, both must agree anyway)
        var offsets: [Int] = []
        b.withUnsafeBytes { raw in
            var pos = 0
            while pos < raw.count - 16 {
                offsets.append(pos)
                if case .success(let i) = X86Decoder.decode(UnsafeRawBufferPointer(rebasing: raw[pos...]), mode: .bits64) {
                    pos += Int(i.length)
                } else { pos += 1 }
            }
        }
        try check(b, offsets: offsets, mode: .bits64, label: "/usr/bin/ls")
    }
}
