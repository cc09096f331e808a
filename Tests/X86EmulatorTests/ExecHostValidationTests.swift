import Foundation
import X86
@testable import X86Emulator
import XCTest

/// Runs user-mode instruction forms from random states natively on this CPU (a CPL3 sandbox in
/// a child process, Sandbox/sandbox.c compiled here with gcc) and in the executor, and compares
/// registers, the status flags outside UndefinedFlags, DF, the data page and faults.
final class ExecHostValidationTests: XCTestCase {
    static let code: UInt64 = 0x5000_0000, data: UInt64 = 0x6000_0000

    /// One instruction form: opcode bytes, ModRM use, immediate size, operand-size variants.
    struct Form {
        var name: String
        var opcode: [UInt8]
        /// nil: no ModRM; -1: any reg field; 0-7: fixed /digit.
        var modrm: Int?
        var imm: Int = 0
        var mem = true, reg = true
        /// "b": byte operation (REX R/B only); "v": 16/32/64; "none": no prefixes.
        var sizes = "v"
        /// Register number in the opcode's low 3 bits (50+r...).
        var opreg = false
        var string = false
        var mandatory: [UInt8] = []
        /// VEX-encoded: (map 2 = 0F38 or 3 = 0F3A, pp 0 none / 1 66 / 2 F3 / 3 F2).
        var vex: (map: UInt8, pp: UInt8)? = nil
    }

    static func forms() -> [Form] {
        var f: [Form] = []
        let alu = ["add", "or", "adc", "sbb", "and", "sub", "xor", "cmp"]
        for (k, n) in alu.enumerated() {
            let b = UInt8(k * 8)
            f.append(Form(name: "\(n) Eb,Gb", opcode: [b], modrm: -1, sizes: "b"))
            f.append(Form(name: "\(n) Ev,Gv", opcode: [b + 1], modrm: -1))
            f.append(Form(name: "\(n) Gb,Eb", opcode: [b + 2], modrm: -1, sizes: "b"))
            f.append(Form(name: "\(n) Gv,Ev", opcode: [b + 3], modrm: -1))
            f.append(Form(name: "\(n) AL,Ib", opcode: [b + 4], modrm: nil, imm: 1, sizes: "b"))
            f.append(Form(name: "\(n) rAX,Iz", opcode: [b + 5], modrm: nil, imm: 4))
            f.append(Form(name: "\(n) Eb,Ib", opcode: [0x80], modrm: k, imm: 1, sizes: "b"))
            f.append(Form(name: "\(n) Ev,Iz", opcode: [0x81], modrm: k, imm: 4))
            f.append(Form(name: "\(n) Ev,Ib", opcode: [0x83], modrm: k, imm: 1))
        }
        f += [Form(name: "test Eb,Gb", opcode: [0x84], modrm: -1, sizes: "b"), Form(name: "test Ev,Gv", opcode: [0x85], modrm: -1),
              Form(name: "test AL,Ib", opcode: [0xA8], modrm: nil, imm: 1, sizes: "b"), Form(name: "test rAX,Iz", opcode: [0xA9], modrm: nil, imm: 4),
              Form(name: "xchg Eb,Gb", opcode: [0x86], modrm: -1, sizes: "b"), Form(name: "xchg Ev,Gv", opcode: [0x87], modrm: -1),
              Form(name: "mov Eb,Gb", opcode: [0x88], modrm: -1, sizes: "b"), Form(name: "mov Ev,Gv", opcode: [0x89], modrm: -1),
              Form(name: "mov Gb,Eb", opcode: [0x8A], modrm: -1, sizes: "b"), Form(name: "mov Gv,Ev", opcode: [0x8B], modrm: -1),
              Form(name: "mov Eb,Ib", opcode: [0xC6], modrm: 0, imm: 1, sizes: "b"), Form(name: "mov Ev,Iz", opcode: [0xC7], modrm: 0, imm: 4),
              Form(name: "mov Zb,Ib", opcode: [0xB0], modrm: nil, imm: 1, sizes: "b", opreg: true),
              Form(name: "lea Gv,M", opcode: [0x8D], modrm: -1, reg: false),
              Form(name: "inc Eb", opcode: [0xFE], modrm: 0, sizes: "b"), Form(name: "dec Eb", opcode: [0xFE], modrm: 1, sizes: "b"),
              Form(name: "inc Ev", opcode: [0xFF], modrm: 0), Form(name: "dec Ev", opcode: [0xFF], modrm: 1),
              Form(name: "imul Gv,Ev", opcode: [0x0F, 0xAF], modrm: -1),
              Form(name: "imul Gv,Ev,Iz", opcode: [0x69], modrm: -1, imm: 4), Form(name: "imul Gv,Ev,Ib", opcode: [0x6B], modrm: -1, imm: 1),
              Form(name: "bt Ev,Gv", opcode: [0x0F, 0xA3], modrm: -1), Form(name: "bts Ev,Gv", opcode: [0x0F, 0xAB], modrm: -1),
              Form(name: "btr Ev,Gv", opcode: [0x0F, 0xB3], modrm: -1), Form(name: "btc Ev,Gv", opcode: [0x0F, 0xBB], modrm: -1),
              Form(name: "bsf", opcode: [0x0F, 0xBC], modrm: -1), Form(name: "bsr", opcode: [0x0F, 0xBD], modrm: -1),
              Form(name: "tzcnt", opcode: [0x0F, 0xBC], modrm: -1, mandatory: [0xF3]),
              Form(name: "lzcnt", opcode: [0x0F, 0xBD], modrm: -1, mandatory: [0xF3]),
              Form(name: "popcnt", opcode: [0x0F, 0xB8], modrm: -1, mandatory: [0xF3]),
              Form(name: "shld Ib", opcode: [0x0F, 0xA4], modrm: -1, imm: 1), Form(name: "shld CL", opcode: [0x0F, 0xA5], modrm: -1),
              Form(name: "shrd Ib", opcode: [0x0F, 0xAC], modrm: -1, imm: 1), Form(name: "shrd CL", opcode: [0x0F, 0xAD], modrm: -1),
              Form(name: "xadd Eb", opcode: [0x0F, 0xC0], modrm: -1, sizes: "b"), Form(name: "xadd Ev", opcode: [0x0F, 0xC1], modrm: -1),
              Form(name: "cmpxchg Eb", opcode: [0x0F, 0xB0], modrm: -1, sizes: "b"), Form(name: "cmpxchg Ev", opcode: [0x0F, 0xB1], modrm: -1),
              Form(name: "bswap", opcode: [0x0F, 0xC8], modrm: nil, opreg: true),
              Form(name: "movzx Gv,Eb", opcode: [0x0F, 0xB6], modrm: -1), Form(name: "movzx Gv,Ew", opcode: [0x0F, 0xB7], modrm: -1),
              Form(name: "movsx Gv,Eb", opcode: [0x0F, 0xBE], modrm: -1), Form(name: "movsx Gv,Ew", opcode: [0x0F, 0xBF], modrm: -1),
              Form(name: "movsxd", opcode: [0x63], modrm: -1),
              Form(name: "cbw/cwde/cdqe", opcode: [0x98], modrm: nil), Form(name: "cwd/cdq/cqo", opcode: [0x99], modrm: nil),
              Form(name: "sahf", opcode: [0x9E], modrm: nil, sizes: "none"), Form(name: "lahf", opcode: [0x9F], modrm: nil, sizes: "none"),
              Form(name: "cmc", opcode: [0xF5], modrm: nil, sizes: "none"), Form(name: "clc", opcode: [0xF8], modrm: nil, sizes: "none"),
              Form(name: "stc", opcode: [0xF9], modrm: nil, sizes: "none"), Form(name: "cld", opcode: [0xFC], modrm: nil, sizes: "none"),
              Form(name: "std", opcode: [0xFD], modrm: nil, sizes: "none"),
              Form(name: "movbe Gv,M", opcode: [0x0F, 0x38, 0xF0], modrm: -1, reg: false),
              Form(name: "movbe M,Gv", opcode: [0x0F, 0x38, 0xF1], modrm: -1, reg: false),
              Form(name: "adcx", opcode: [0x0F, 0x38, 0xF6], modrm: -1, mandatory: [0x66]),
              Form(name: "adox", opcode: [0x0F, 0x38, 0xF6], modrm: -1, mandatory: [0xF3]),
              Form(name: "push r", opcode: [0x50], modrm: nil, sizes: "none", opreg: true),
              Form(name: "pop r", opcode: [0x58], modrm: nil, sizes: "none", opreg: true),
              Form(name: "cmpxchg8b/16b", opcode: [0x0F, 0xC7], modrm: 1, reg: false)]
        // BMI1 / BMI2 (the host has both)
        for (n, op, pp, digit) in [("andn", 0xF2, 0, -1), ("blsr", 0xF3, 0, 1), ("blsmsk", 0xF3, 0, 2), ("blsi", 0xF3, 0, 3),
                                   ("bzhi", 0xF5, 0, -1), ("pext", 0xF5, 2, -1), ("pdep", 0xF5, 3, -1), ("mulx", 0xF6, 3, -1),
                                   ("bextr", 0xF7, 0, -1), ("shlx", 0xF7, 1, -1), ("sarx", 0xF7, 2, -1), ("shrx", 0xF7, 3, -1)] {
            f.append(Form(name: n, opcode: [UInt8(op)], modrm: digit, sizes: "vex", vex: (2, UInt8(pp))))
        }
        f.append(Form(name: "rorx", opcode: [0xF0], modrm: -1, imm: 1, sizes: "vex", vex: (3, 3)))
        for d in 0..<8 where d != 6 {
            let n = ["rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar"][d]
            f.append(Form(name: "\(n) Eb,Ib", opcode: [0xC0], modrm: d, imm: 1, sizes: "b"))
            f.append(Form(name: "\(n) Ev,Ib", opcode: [0xC1], modrm: d, imm: 1))
            f.append(Form(name: "\(n) Eb,1", opcode: [0xD0], modrm: d, sizes: "b"))
            f.append(Form(name: "\(n) Ev,1", opcode: [0xD1], modrm: d))
            f.append(Form(name: "\(n) Eb,CL", opcode: [0xD2], modrm: d, sizes: "b"))
            f.append(Form(name: "\(n) Ev,CL", opcode: [0xD3], modrm: d))
        }
        for (d, n) in [(0, "test"), (2, "not"), (3, "neg"), (4, "mul"), (5, "imul"), (6, "div"), (7, "idiv")] {
            f.append(Form(name: "\(n) Eb", opcode: [0xF6], modrm: d, imm: d == 0 ? 1 : 0, sizes: "b"))
            f.append(Form(name: "\(n) Ev", opcode: [0xF7], modrm: d, imm: d == 0 ? 4 : 0))
        }
        for cc in 0..<16 {
            f.append(Form(name: "cmovcc \(cc)", opcode: [0x0F, UInt8(0x40 + cc)], modrm: -1))
            f.append(Form(name: "setcc \(cc)", opcode: [0x0F, UInt8(0x90 + cc)], modrm: 0, sizes: "b"))
        }
        for (op, n) in [(0xA4, "movsb"), (0xA5, "movs"), (0xA6, "cmpsb"), (0xA7, "cmps"), (0xAA, "stosb"), (0xAB, "stos"),
                        (0xAC, "lodsb"), (0xAD, "lods"), (0xAE, "scasb"), (0xAF, "scas")] {
            f.append(Form(name: n, opcode: [UInt8(op)], modrm: nil, sizes: op & 1 == 0 ? "b" : "v", string: true))
        }
        return f
    }

    struct RNG {
        var s: UInt64
        mutating func next() -> UInt64 {
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
        mutating func value() -> UInt64 {
            switch below(8) {
            case 0: return 0
            case 1: return UInt64(below(70))
            case 2: return ~0
            case 3: return 1 << UInt64(below(64))
            case 4: return 0x8000_0000 &+ UInt64(below(3)) &- 1
            case 5: return 0x7FFF_FFFF_FFFF_FFFF &+ UInt64(below(3))
            case 6: return UInt64(below(0x10000))
            default: return next()
            }
        }
    }

    struct Case {
        var bytes: [UInt8]
        var regs: [UInt64]
        var rflags: UInt64
        var data: [UInt8]
    }

    static func makeCase(_ f: Form, _ r: inout RNG) -> Case {
        var b: [UInt8] = []
        var regs = (0..<16).map { _ in r.value() }
        regs[4] = data + 0xF00
        var rex: UInt8 = 0
        var opsizePrefix = false
        switch f.sizes {
        case "v":
            switch r.below(3) { case 0: opsizePrefix = true; case 1: rex |= 0x48; default: break }
            if r.below(2) == 0 { rex |= 0x44 }
            if r.below(2) == 0 { rex |= 0x41 }
        case "b":
            if r.below(2) == 0 { rex |= 0x40 | UInt8(r.below(2)) << 2 | UInt8(r.below(2)) }
        default:
            if f.opreg && r.below(2) == 0 { rex |= 0x41 }
        }
        if f.string && r.below(3) == 0 { b.append(r.below(2) == 0 ? 0xF3 : 0xF2) }
        if opsizePrefix { b.append(0x66) }
        b += f.mandatory
        if let v = f.vex {
            let w = UInt8(r.below(2)), rr = UInt8(r.below(2)), bb = UInt8(r.below(2)), vvvv = UInt8(r.below(16))
            b += [0xC4, ((rr ^ 1) << 7) | (1 << 6) | ((bb ^ 1) << 5) | v.map, (w << 7) | ((~vvvv & 0xF) << 3) | v.pp]
        } else if rex != 0 { b.append(rex) }
        var op = f.opcode
        if f.opreg { op[op.count - 1] |= UInt8(r.below(8)) }
        b += op
        var memory = false
        if let m = f.modrm {
            let regField = m < 0 ? UInt8(r.below(8)) : UInt8(m)
            memory = f.mem && (!f.reg || r.below(2) == 0)
            if memory {
                b.append(0x40 | regField << 3 | 3)
                b.append(UInt8(r.below(0x80)))
            } else {
                b.append(0xC0 | regField << 3 | UInt8(r.below(8)))
            }
        }
        let immBytes = f.imm == 4 && opsizePrefix ? 2 : f.imm  // Iz is a word with 66
        for _ in 0..<immBytes { b.append(UInt8(truncatingIfNeeded: r.next())) }
        if memory || f.string {
            regs[3] = data + 0x400 + UInt64(r.below(0x300))
            regs[11] = data + 0x400 + UInt64(r.below(0x300))
        }
        if f.string {
            regs[6] = data + 0x200 + UInt64(r.below(0x100))
            regs[7] = data + 0x800 + UInt64(r.below(0x100))
            regs[1] = UInt64(r.below(12))
        }
        if f.opcode == [0x58] || f.opcode == [0x50] { regs[4] = data + 0xF00 }
        let status: UInt64 = r.next() & (RFLAGS.status | RFLAGS.df)
        var d = [UInt8](repeating: 0, count: 4096)
        for k in stride(from: 0, to: 4096, by: 8) {
            let v = r.next()
            for j in 0..<8 { d[k + j] = UInt8(truncatingIfNeeded: v >> UInt64(8 * j)) }
        }
        if r.below(2) == 0 { for k in 0x400..<0x800 { d[k] = d[0x400 + (k % 16)] } }  // repeats help CMPS/SCAS
        return Case(bytes: b, regs: regs, rflags: status | 0x202, data: d)
    }

    func sandboxBinary() throws -> String {
        guard let gcc = ["/usr/bin/gcc", "/usr/bin/cc"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("no gcc on this machine: the host-CPU sandbox cannot be built")
        }
        let src = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Sandbox/sandbox.c").path
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("exitscope-sandbox-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }  // no sandbox left in /tmp per run
        let out = dir.appendingPathComponent("sandbox").path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: gcc)
        p.arguments = ["-O1", "-o", out, src]
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw XCTSkip("gcc could not build the sandbox") }
        return out
    }

    func runSandbox(_ bin: String, _ cases: [Case]) throws -> Data {
        var input = Data()
        input.reserveCapacity(cases.count * 4248)
        for c in cases {
            var code = c.bytes + [UInt8](repeating: 0, count: 15 - c.bytes.count)
            code.append(UInt8(c.bytes.count))
            input.append(contentsOf: code)
            for v in c.regs + [c.rflags] { withUnsafeBytes(of: v.littleEndian) { input.append(contentsOf: $0) } }
            input.append(contentsOf: c.data)
        }
        let dir = URL(fileURLWithPath: bin).deletingLastPathComponent()
        let inURL = dir.appendingPathComponent("in.bin"), outURL = dir.appendingPathComponent("out.bin")
        try input.write(to: inURL)
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.standardInput = try FileHandle(forReadingFrom: inURL)
        p.standardOutput = try FileHandle(forWritingTo: outURL)
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "sandbox exit status")
        return try Data(contentsOf: outURL)
    }

    func testAgainstHostCPU() throws {
        #if !arch(x86_64)
        throw XCTSkip("the host-CPU comparison needs an x86-64 host")
        #endif
        let bin = try sandboxBinary()
        let forms = ExecHostValidationTests.forms()
        // EXITSCOPE_VALIDATION_CASES raises the number of random states per form.
        let perForm = ProcessInfo.processInfo.environment["EXITSCOPE_VALIDATION_CASES"].flatMap { Int($0) } ?? 48
        var rng = RNG(s: 0x5EED_0001)
        var cases: [Case] = []
        var formOf: [Int] = []
        for (i, f) in forms.enumerated() {
            for _ in 0..<perForm {
                cases.append(ExecHostValidationTests.makeCase(f, &rng))
                formOf.append(i)
            }
        }
        let out = try runSandbox(bin, cases)
        XCTAssertEqual(out.count, cases.count * 4240)

        // The emulator: CPL3 64-bit code, 1 GiB identity pages for the low 4 GiB.
        let mem = SparseMemory()
        mem.map(0x1000, count: 0x2000)
        mem.load(0x1000, le(0x2000 | 7))
        for i in 0..<4 { mem.load(0x2000 + UInt64(i) * 8, le(UInt64(i) << 30 | 0x87)) }
        mem.map(ExecHostValidationTests.code, count: 4096)
        mem.map(ExecHostValidationTests.data, count: 4096)
        var base = CPUState.flat(.long64)
        base.cr3 = 0x1000
        base.cpl = 3
        base.cs = Segment(selector: 0x33, base: 0, limit: 0xFFFF_FFFF, attributes: 0xAFB)
        base.ss = Segment(selector: 0x2B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xCF3)
        let cpu = X86Executor(state: base, memory: mem)

        var disagreements: [String: (Int, String)] = [:]
        var unsupported: [String: Int] = [:]
        var compared = 0, faults = 0, undefinedResults = 0
        for (k, c) in cases.enumerated() {
            let o = out.subdata(in: k * 4240..<(k + 1) * 4240)
            let sig = o.withUnsafeBytes { $0.load(fromByteOffset: 0, as: Int64.self) }
            let hregs = (0..<16).map { i in o.withUnsafeBytes { $0.load(fromByteOffset: 8 + i * 8, as: UInt64.self) } }
            let hflags = o.withUnsafeBytes { $0.load(fromByteOffset: 136, as: UInt64.self) }
            let hdata = [UInt8](o[144..<(144 + 4096)])

            mem.load(ExecHostValidationTests.code, c.bytes + [0xCC])
            mem.load(ExecHostValidationTests.data, c.data)
            var s = base
            for i in 0..<16 { s.setGPR(i, c.regs[i]) }
            s.rip = ExecHostValidationTests.code
            s.rflags = c.rflags
            cpu.state = s
            let r = cpu.step()
            let es = cpu.state
            let name = forms[formOf[k]].name
            func disagree(_ what: String) {
                let detail = "\(Hex.bytes(c.bytes)): \(what)"
                disagreements[name] = ((disagreements[name]?.0 ?? 0) + 1, disagreements[name]?.1 ?? detail)
            }
            if case .unsupported = r { unsupported[name, default: 0] += 1; continue }
            compared += 1
            if sig != 0 {
                faults += 1
                let expect: [Int64: [UInt8]] = [8: [0], 4: [6], 11: [13, 14, 12], 7: [17, 12, 13], 5: [3, 1]]
                if case .exception(let e, _) = r, expect[sig]?.contains(e.vector) == true { continue }
                // An address outside the sandbox's two pages: unmapped on the host, unbacked here.
                if sig == 11, case .unbackedMemory(let a) = r, a >> 12 != ExecHostValidationTests.data >> 12,
                   a >> 12 != ExecHostValidationTests.code >> 12 { continue }
                disagree("host signal \(sig), emulator \(r)")
                continue
            }
            guard r == .ok else { disagree("host ran it, emulator \(r)"); continue }
            var resultUndefined = false
            if case .success(let insn) = decode(bytes: c.bytes, mode: .bits64) {
                var count: UInt64 = 0
                if case .immediate(let v, _) = insn.operand(2) { count = UInt64(bitPattern: v) } else { count = c.regs[1] }
                let opBits = insn.operand(0).register.map { $0.bits } ?? Int(insn.operandSize)
                count &= opBits == 64 ? 0x3F : 0x1F
                resultUndefined = UndefinedFlags.resultUndefined(for: insn.mnemonic, maskedCount: count, operandBits: opBits)
            }
            if resultUndefined { undefinedResults += 1; continue }
            for i in 0..<16 where hregs[i] != es.gpr(i) {
                disagree("\(GPR.names[i]) host \(Hex.string(hregs[i])) emulator \(Hex.string(es.gpr(i)))")
            }
            var undefined: UInt64 = 0
            if case .success(let insn) = decode(bytes: c.bytes, mode: .bits64) {
                var count: UInt64? = nil
                switch insn.operand(1) {
                case .immediate(let v, _): count = UInt64(bitPattern: v)
                case .register(let rr) where rr.regClass == .gpr8 && rr.number == 1: count = c.regs[1]
                case .none: count = 1
                default: break
                }
                if insn.mnemonic == .shld || insn.mnemonic == .shrd {
                    if case .immediate(let v, _) = insn.operand(2) { count = UInt64(bitPattern: v) } else { count = c.regs[1] }
                }
                let bits = Int(insn.operandSize)
                let opBits = insn.operand(0).register.map { $0.bits } ?? (insn.operand(0).memory.map { Int($0.size) * 8 } ?? bits)
                if let cc = count { count = cc & (opBits == 64 ? 0x3F : 0x1F) }
                undefined = UndefinedFlags.mask(for: insn.mnemonic, maskedCount: count, operandBits: opBits)
            }
            let cmpMask = (RFLAGS.status | RFLAGS.df) & ~undefined
            if hflags & cmpMask != es.rflags & cmpMask {
                disagree("flags host \(Hex.string(hflags & cmpMask)) emulator \(Hex.string(es.rflags & cmpMask)) (undefined \(Hex.string(undefined)))")
            }
            if let ed = mem.bytes(ExecHostValidationTests.data, count: 4096), ed != hdata {
                let first = (0..<4096).first { ed[$0] != hdata[$0] } ?? 0
                disagree("data at +\(Hex.string(first)) host \(hdata[first]) emulator \(ed[first])")
            }
        }
        var report = "host-CPU validation: \(forms.count) forms, \(cases.count) cases, \(compared) compared (\(faults) faulting on the host, \(undefinedResults) with an undefined result), "
        report += "\(disagreements.values.reduce(0) { $0 + $1.0 }) disagreeing in \(disagreements.count) forms, "
        report += "\(unsupported.values.reduce(0, +)) unsupported in \(unsupported.count) forms"
        print(report)
        for (n, d) in disagreements.sorted(by: { $0.key < $1.key }) { print("  \(n): \(d.0) cases, e.g. \(d.1)") }
        for (n, c) in unsupported.sorted(by: { $0.key < $1.key }) { print("  unsupported \(n): \(c)") }
        XCTAssertTrue(disagreements.isEmpty, report)
        XCTAssertTrue(unsupported.isEmpty, report)
    }

    func le(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
}
