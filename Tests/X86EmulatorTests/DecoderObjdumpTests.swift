import Foundation
import X86
import XCTest
@testable import X86Emulator

/// Cross-check against GNU objdump (binutils): for every instruction both accept, the same length
/// and the same mnemonic under the name mapping of DECODER.md. Sample sizes are bounded so the
/// test takes a few seconds; EXITSCOPE_XCHECK_SCALE=N multiplies them, EXITSCOPE_XCHECK_VERBOSE=1
/// prints every disagreement.
final class DecoderObjdumpTests: XCTestCase {
    struct ObjdumpInsn {
        var offset: Int
        var bytes: [UInt8]
        var mnemonic: String
        var text: String
    }

    static let objdump: String? = ["/usr/bin/objdump", "/usr/local/bin/objdump"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }
    static var scale: Int { Int(ProcessInfo.processInfo.environment["EXITSCOPE_XCHECK_SCALE"] ?? "") ?? 1 }
    static var verbose: Bool { ProcessInfo.processInfo.environment["EXITSCOPE_XCHECK_VERBOSE"] != nil }

    static func run(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: objdump!)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    /// Words objdump prints before the mnemonic that are prefixes, not the instruction.
    static let prefixWords: Set<String> = [
        "lock", "rep", "repz", "repnz", "repe", "repne", "data16", "data32", "addr16", "addr32",
        "cs", "ds", "es", "ss", "fs", "gs", "bnd", "notrack", "xacquire", "xrelease", "rex", "{vex}",
        "{vex3}", "{evex}", "{rex}", "{rex2}", "{disp32}", "{disp8}", "{load}", "{store}", "{nf}",
    ]

    /// Parses `objdump -d/-D --insn-width=16 -M intel` lines: "  addr:\tbytes\tmnemonic operands".
    static func parse(_ out: String) -> [ObjdumpInsn] {
        var result: [ObjdumpInsn] = []
        for line in out.split(separator: "\n", omittingEmptySubsequences: true) {
            let cols = line.split(separator: "\t", omittingEmptySubsequences: false)
            guard cols.count >= 3, let colon = cols[0].lastIndex(of: ":"),
                  let off = Int(cols[0][..<colon].trimmingCharacters(in: .whitespaces), radix: 16) else { continue }
            let bytes = cols[1].split(separator: " ").compactMap { UInt8($0, radix: 16) }
            let text = cols[2...].joined(separator: "\t").trimmingCharacters(in: .whitespaces)
            var words = text.split(separator: " ").map(String.init)
            while let w = words.first, prefixWords.contains(w) || w.hasPrefix("rex.") { words.removeFirst() }
            guard var m = words.first, !bytes.isEmpty else { continue }
            if let paren = m.firstIndex(of: "(") , m != "(bad)" { m = String(m[..<paren]) }
            result.append(ObjdumpInsn(offset: off, bytes: bytes, mnemonic: m, text: text))
        }
        return result
    }

    /// objdump names that differ from ours (DECODER.md, "Name mapping"): objdump name -> our names.
    static let nameMap: [String: Set<String>] = [
        "movabs": ["mov"],
        "callw": ["call"], "jmpw": ["jmp"], "retw": ["ret"], "callq": ["call"], "jmpq": ["jmp"], "retq": ["ret"],
        "lret": ["retf"], "lretw": ["retf"], "lretq": ["retf"], "ljmp": ["jmp"], "lcall": ["call"],
        "pushfw": ["pushf"], "popfw": ["popf"], "pushaw": ["pusha"], "popaw": ["popa"],
        "iretw": ["iret"], "sysretd": ["sysret"], "sysexitd": ["sysexit"], "sysexitl": ["sysexit"],
        "xchg": ["nop"],                  // 66 90: objdump "xchg ax,ax", we (and the CPU) NOP
        "fwait": ["fwait"], "int1": ["int1"],
        "cwtl": ["cwde"], "cltq": ["cdqe"],
        "shl": ["shl", "sal"],            // C0-D3 /6: objdump calls the undocumented alias shl
        // MPX (withdrawn): without MPX the CPU executes 0F 1A/1B as hint NOPs
        "bndldx": ["nop"], "bndstx": ["nop"], "bndmov": ["nop"], "bndcl": ["nop"], "bndcu": ["nop"],
        "bndcn": ["nop"], "bndmk": ["nop"],
    ]

    /// objdump adds an operand-size letter to these when the size is not the mode's default.
    static let sizeSuffixed: Set<String> = [
        "push", "pop", "call", "jmp", "ret", "retf", "enter", "leave", "iret", "pushf", "popf", "pusha", "popa",
        "sysret", "sysexit", "fldenv", "fnstenv", "frstor", "fnsave", "lgdt", "lidt", "sgdt", "sidt",
        "fstenv", "fsave", "lfs", "lgs", "lss", "les", "lds", "xbegin",
    ]

    /// Our name for objdump's, given the mode (objdump's unsuffixed forms mean the mode's size).
    static func equivalent(_ obj: String, _ ours: Mnemonic, mode: DecoderMode) -> Bool {
        let o = ours.name
        if obj == o { return true }
        if let set = nameMap[obj], set.contains(o) { return true }
        if let last = obj.last, "wdlq".contains(last), sizeSuffixed.contains(String(obj.dropLast())),
           String(obj.dropLast()) == o || o.hasPrefix(String(obj.dropLast())) { return true }
        // compare predicates: objdump writes cmpnless / vcmpeq_uqps for cmpss / vcmpps with an imm8
        for base in ["cmpps", "cmppd", "cmpss", "cmpsd", "vcmpps", "vcmppd", "vcmpss", "vcmpsd"] where o == base {
            let pre = base.hasPrefix("v") ? "vcmp" : "cmp"
            if obj.hasPrefix(pre) && obj.hasSuffix(String(base.suffix(2))) { return true }
        }
        // pclmulqdq / vpcmp{,u}{b,w,d,q} with a predicate folded into the name
        if o.hasSuffix("pclmulqdq") && obj.hasPrefix(String(o.dropLast(6))) && obj.hasSuffix("dq") { return true }
        if o.hasPrefix("vpcmp") && obj.hasPrefix("vpcmp") && obj.last == o.last && obj.count > o.count { return true }
        // XOP vpcom{,u}{b,w,d,q}: objdump folds the imm8 predicate in as well (vpcomltb, vpcomfalseuq...)
        if o.hasPrefix("vpcom") && obj.hasPrefix("vpcom") && obj.last == o.last && obj.count > o.count
            && (o.dropFirst(5).first == "u") == obj.dropLast().hasSuffix("u") { return true }
        switch (obj, mode) {
        case ("pushf", .bits64): return o == "pushfq"
        case ("popf", .bits64): return o == "popfq"
        case ("pushf", .bits32): return o == "pushfd"
        case ("popf", .bits32): return o == "popfd"
        case ("pusha", .bits32): return o == "pushad"
        case ("popa", .bits32): return o == "popad"
        case ("iret", .bits32), ("iret", .bits64): return o == "iretd"
        case ("pushf", .bits16), ("popf", .bits16), ("pusha", .bits16), ("popa", .bits16): return o == obj
        default: return false
        }
    }

    struct Tally {
        var compared = 0, lengthDiffs = 0, nameDiffs = 0, weRejected = 0
        var examples: [String] = []
    }

    func compare(_ insns: [ObjdumpInsn], buffer: [UInt8]?, mode: DecoderMode, label: String, tally: inout Tally) {
        for ins in insns {
            if ins.mnemonic == "(bad)" || ins.text.contains("(bad)") || ins.text.contains("bad}") || ins.text.hasPrefix(".byte") { continue }
            // objdump folds FWAIT (9B) into a following x87 instruction; the CPU executes two
            if let k = ins.bytes.firstIndex(of: 0x9B), k < ins.bytes.count - 1,
               ins.bytes[..<k].allSatisfy({ [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3].contains($0) }) { continue }
            let bytes: [UInt8]
            if let buffer { bytes = Array(buffer[ins.offset..<min(buffer.count, ins.offset + 15)]) } else { bytes = ins.bytes }
            let hexs = ins.bytes.map { String(format: "%02x", $0) }.joined(separator: " ")
            switch decode(bytes: bytes, mode: mode) {
            case .failure(let e):
                tally.weRejected += 1
                if Self.verbose { print("[\(label)] we reject (\(e)): \(hexs)  objdump: \(ins.text)") }
            case .success(let i):
                tally.compared += 1
                if Int(i.length) != ins.bytes.count {
                    tally.lengthDiffs += 1
                    let s = "[\(label)] length \(i.length) vs objdump \(ins.bytes.count): \(hexs)  objdump: \(ins.text)  ours: \(i.text)"
                    if tally.examples.count < 40 { tally.examples.append(s) }
                    if Self.verbose { print(s) }
                } else if !Self.equivalent(ins.mnemonic, i.mnemonic, mode: mode) {
                    tally.nameDiffs += 1
                    let s = "[\(label)] name \(i.mnemonic.name) vs objdump \(ins.mnemonic): \(hexs)  objdump: \(ins.text)  ours: \(i.text)"
                    if tally.examples.count < 40 { tally.examples.append(s) }
                    if Self.verbose { print(s) }
                }
            }
        }
    }

    func report(_ t: Tally, _ label: String) {
        print("objdump cross-check \(label): compared \(t.compared), length disagreements \(t.lengthDiffs), "
              + "name disagreements \(t.nameDiffs), accepted by objdump but rejected by us \(t.weRejected)")
        XCTAssertEqual(t.lengthDiffs + t.nameDiffs, 0, "disagreements with objdump:\n" + t.examples.joined(separator: "\n"))
    }

    func testRealBinariesAgreeWithObjdump() throws {
        guard Self.objdump != nil else { throw XCTSkip("objdump (binutils) is not installed") }
        let candidates = ["/usr/bin/ls", "/usr/bin/bash", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                          "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
                          "/usr/lib/x86_64-linux-gnu/libzstd.so.1", "/usr/lib/x86_64-linux-gnu/libm.so.6"]
        let files = candidates.filter { FileManager.default.fileExists(atPath: $0) }
        guard !files.isEmpty else { throw XCTSkip("no x86-64 binaries found to compare") }
        var t = Tally()
        for f in files {
            // a bounded window of .text: find its address, disassemble 24 KiB (times the scale) of it
            let headers = try Self.run(["-h", "-j", ".text", f])
            guard let line = headers.split(separator: "\n").first(where: { $0.contains(" .text") }) else { continue }
            let cols = line.split(separator: " ")
            guard cols.count > 4, let size = Int(cols[2], radix: 16), let vma = Int(cols[3], radix: 16) else { continue }
            let window = min(size, 16 * 1024 * Self.scale)
            let start = vma + (size - window) / 2
            let out = try Self.run(["-d", "-M", "intel", "--insn-width=16", "-j", ".text",
                                    "--start-address=0x" + String(start, radix: 16),
                                    "--stop-address=0x" + String(start + window, radix: 16), f])
            compare(Self.parse(out), buffer: nil, mode: .bits64, label: (f as NSString).lastPathComponent, tally: &t)
        }
        report(t, "real code")
        XCTAssertGreaterThan(t.compared, 10_000)
    }

    /// Intel-syntax text against objdump's, after the documented cosmetic differences (DECODER.md):
    /// case, ", " vs ",", prefixes objdump spells out, `<symbol>` and `# comment` annotations,
    /// movabs, `st` vs `st(0)`, `66 90`, negative RIP displacements, objdump's bare branch targets.
    func testTextMatchesObjdumpOnRealCode() throws {
        guard Self.objdump != nil else { throw XCTSkip("objdump (binutils) is not installed") }
        let out = try Self.run(["-d", "-M", "intel", "--insn-width=16", "-j", ".text", "/usr/bin/ls"])
        let insns = Array(Self.parse(out).prefix(20_000 * Self.scale))
        guard insns.count > 1000 else { throw XCTSkip("/usr/bin/ls has too little code to compare") }
        func squeeze(_ t: String) -> String { t.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
        var compared = 0, different: [String] = []
        for ins in insns where !ins.text.contains("(bad)") {
            guard case .success(let i) = decode(bytes: ins.bytes, mode: .bits64) else { continue }
            var theirs = ins.text.lowercased()
            if let r = theirs.range(of: " <") { theirs = String(theirs[..<r.lowerBound]) }
            if let r = theirs.range(of: "#") { theirs = String(theirs[..<r.lowerBound]) }
            var words = squeeze(theirs).split(separator: " ").map(String.init)
            while let w = words.first, Self.prefixWords.contains(w) || w.hasPrefix("rex.") { words.removeFirst() }
            theirs = words.joined(separator: " ")
            if words.count == 2, Int(words[1], radix: 16) != nil, i.operand(0) != .none, case .relative = i.operand(0) {
                theirs = words[0] + " 0x" + words[1]
            }
            theirs = theirs.replacingOccurrences(of: "movabs", with: "mov")
            var ours = i.text(address: UInt64(ins.offset)).lowercased().replacingOccurrences(of: ", ", with: ",")
            for p in ["rep ", "repe ", "repne ", "lock "] where ours.hasPrefix(p) { ours.removeFirst(p.count) }
            ours = ours.replacingOccurrences(of: "st(0)", with: "st")
            theirs = theirs.replacingOccurrences(of: "st(0)", with: "st")
            if ins.bytes == [0x66, 0x90] { theirs = "nop" }
            if let m = i.memoryOperand, m.ripRelative, m.displacement < 0 { continue }  // objdump: [rip+0xffff...]
            compared += 1
            if theirs != ours && different.count < 20 { different.append("objdump: \(theirs)   ours: \(ours)") }
        }
        print("text vs objdump on /usr/bin/ls: compared \(compared), different \(different.count)")
        XCTAssertGreaterThan(compared, 1000)
        XCTAssertEqual(different.count, 0, different.joined(separator: "\n"))
    }

    func randomBytesAgree(mode: DecoderMode, machine: String) throws {
        guard Self.objdump != nil else { throw XCTSkip("objdump (binutils) is not installed") }
        var rng = SplitMix64(seed: 0xE817_5C0F + UInt64(mode.rawValue))
        let n = 32 * 1024 * Self.scale
        var buf = [UInt8](repeating: 0, count: n)
        for k in 0..<n { buf[k] = UInt8(truncatingIfNeeded: rng.next()) }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("exitscope-xcheck-\(mode.rawValue)-\(getpid()).bin")
        try Data(buf).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let out = try Self.run(["-D", "-b", "binary", "-m", machine, "-M", "intel", "--insn-width=16", url.path])
        var t = Tally()
        // objdump decodes each instruction to its end even past the buffer; skip the last 15 bytes
        let insns = Self.parse(out).filter { $0.offset + 15 < n }
        compare(insns, buffer: buf, mode: mode, label: "random\(mode.rawValue)", tally: &t)
        report(t, "random bytes, \(mode.rawValue)-bit")
        XCTAssertGreaterThan(t.compared, 5_000)
    }

    /// VEX / EVEX / XOP prefixes with random payload, opcode and operand bytes, one per 32-byte slot
    /// (the rest NOPs, so objdump is back in step at every slot).
    func vectorPrefixesAgree(mode: DecoderMode, machine: String) throws {
        guard Self.objdump != nil else { throw XCTSkip("objdump (binutils) is not installed") }
        var rng = SplitMix64(seed: 0x7EC7_0125 + UInt64(mode.rawValue))
        let slots = 4000 * Self.scale
        // a quarter of the opcodes are random, the rest are opcodes our table defines for the map
        let vexMapOfLead: [UInt8: [Int]] = [0xC5: [5], 0xC4: [5, 6, 7], 0x62: [8, 9, 10, 11, 12]]
        var known: [Int: [UInt8]] = [:]
        for m in 5...12 { known[m] = (0..<256).filter { tableRoot[m * 256 + $0] != 0 }.map { UInt8($0) } }
        var buf = [UInt8](repeating: 0x90, count: slots * 32)
        for k in 0..<slots {
            let o = k * 32
            for j in 0..<16 { buf[o + j] = UInt8(truncatingIfNeeded: rng.next()) }
            let top: UInt8 = mode == .bits64 ? 0 : 0xC0   // outside 64-bit mode R/X must read as 11
            switch rng.next() % 4 {
            case 0: buf[o] = 0xC5; buf[o + 1] |= top
            case 1: buf[o] = 0xC4; buf[o + 1] = buf[o + 1] & 0xE0 | top | UInt8(1 + rng.next() % 3)
            case 2: buf[o] = 0x8F; buf[o + 1] = buf[o + 1] & 0xE0 | top | UInt8(8 + rng.next() % 3)
            default:
                buf[o] = 0x62
                buf[o + 1] = buf[o + 1] & 0xF0 | top | [1, 2, 3, 5, 6][Int(rng.next() % 5)]
                buf[o + 2] |= 0x04
            }
            if rng.next() % 4 != 0, let maps = vexMapOfLead[buf[o]] {
                // put a defined opcode of the selected map in the opcode position
                let m: Int, at: Int
                switch buf[o] {
                case 0xC5: m = 5; at = 2
                case 0xC4: m = 4 + Int(buf[o + 1] & 0x1F); at = 3
                default: m = [1: 8, 2: 9, 3: 10, 5: 11, 6: 12][Int(buf[o + 1] & 7)] ?? 8; at = 4
                }
                if maps.contains(m), let ops = known[m], !ops.isEmpty { buf[o + at] = ops[Int(rng.next() % UInt64(ops.count))] }
            }
        }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("exitscope-xcheck-vec-\(mode.rawValue)-\(getpid()).bin")
        try Data(buf).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        let out = try Self.run(["-D", "-b", "binary", "-m", machine, "-M", "intel", "--insn-width=16", url.path])
        var t = Tally()
        compare(Self.parse(out).filter { $0.offset % 32 == 0 }, buffer: buf, mode: mode, label: "vector\(mode.rawValue)", tally: &t)
        report(t, "VEX/EVEX/XOP prefixes, \(mode.rawValue)-bit")
        XCTAssertGreaterThan(t.compared, 250)
    }

    func testVectorPrefixes64() throws { try vectorPrefixesAgree(mode: .bits64, machine: "i386:x86-64") }
    func testVectorPrefixes32() throws { try vectorPrefixesAgree(mode: .bits32, machine: "i386") }

    func testRandomBytes64() throws { try randomBytesAgree(mode: .bits64, machine: "i386:x86-64") }
    func testRandomBytes32() throws { try randomBytesAgree(mode: .bits32, machine: "i386") }
    func testRandomBytes16() throws { try randomBytesAgree(mode: .bits16, machine: "i8086") }
}

/// A small deterministic generator so failures reproduce.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
