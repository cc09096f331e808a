import X86
@testable import X86Emulator
import XCTest

/// Random bytes and random states in every mode: the executor must never trap, and an
/// instruction that stops (exception not delivered, unbacked memory, no answer, unsupported)
/// leaves RIP on itself.
final class ExecRobustnessTests: XCTestCase {
    func testRandomBytesInEveryMode() {
        var rng = ExecHostValidationTests.RNG(s: 0xF022_0001)
        var outcomes: [String: Int] = [:]
        var unsupportedMnemonics: [String: Int] = [:]
        let iterations = Int(ProcessInfo.processInfo.environment["EXITSCOPE_FUZZ_ITERATIONS"] ?? "") ?? 600
        for mode in CPUMode.allCases {
            let mem = SparseMemory()
            mem.map(0, count: 0x20000)
            mem.zeroFillUnbacked = true
            let ports = ScriptedPorts(defaultValue: 0xFF)
            let cpuid = TableCPUID(fallback: CPUIDResult(eax: 0, ebx: 0, ecx: 0, edx: 0))
            let cpu = X86Executor(state: CPUState.flat(mode), memory: mem, ports: ports, cpuid: cpuid,
                                  msrs: TableMSRs(), tsc: ScriptedTSC([1], increment: 1))
            for it in 0..<iterations {
                // Random tables and code; identity 2 MiB pages for the long modes at 0x10000.
                var page = [UInt8](repeating: 0, count: 4096)
                for base in [UInt64(0x0), 0x1000, 0x2000, 0x3000] {
                    for k in stride(from: 0, to: 4096, by: 8) {
                        let v = rng.below(4) == 0 ? 0 : rng.next()
                        for j in 0..<8 { page[k + j] = UInt8(truncatingIfNeeded: v >> UInt64(8 * j)) }
                    }
                    mem.load(base, page)
                }
                var s = CPUState.flat(mode)
                if mode == .long64 || mode == .compat32 || mode == .compat16 {
                    s.cr3 = 0x10000
                    mem.load(0x10000, le(0x11000 | 7))
                    mem.load(0x11000, le(0x12000 | 7))
                    mem.load(0x12000, le(0x87))
                }
                for i in 0..<16 { s.setGPR(i, rng.below(3) == 0 ? UInt64(rng.below(0x3000)) : rng.value()) }
                s.rip = 0x1000 + UInt64(rng.below(0x800))
                s.rflags = (rng.next() & 0xCD5) | 2 | (mode == .virtual8086 ? RFLAGS.vm : 0)
                if rng.below(4) == 0 { s.cpl = mode == .real ? 0 : 3 }
                s.idtr = DescriptorTable(base: UInt64(rng.below(4)) * 0x1000, limit: UInt16(truncatingIfNeeded: rng.next()))
                s.gdtr = DescriptorTable(base: UInt64(rng.below(4)) * 0x1000, limit: UInt16(truncatingIfNeeded: rng.next()))
                if rng.below(2) == 0 { s.cr4 |= CR4.osfxsr | CR4.osxsave }
                cpu.state = s
                cpu.deliverExceptions = it % 2 == 0
                for _ in 0..<8 {
                    let start = cpu.state.rip
                    let r = cpu.step()
                    let key: String
                    switch r {
                    case .ok: key = "ok"
                    case .halted: key = "halted"
                    case .hypercall: key = "hypercall"
                    case .tripleFault: key = "triple fault"
                    case .exception(_, let d): key = d ? "exception delivered" : "exception"
                    case .unsupported(let b):
                        key = "unsupported"
                        if case .success(let insn) = decode(bytes: b, mode: DecoderMode(cpu.currentMode)) {
                            unsupportedMnemonics["\(insn.mnemonic)", default: 0] += 1
                            if ProcessInfo.processInfo.environment["EXITSCOPE_FUZZ_VERBOSE"] != nil && insn.mnemonic == .pop {
                                print("unsupported \(mode): \(Hex.bytes(b.prefix(Int(insn.length)))) \(insn.text)")
                            }
                        }
                    case .unbackedMemory: key = "unbacked"
                    case .unanswered: key = "unanswered"
                    }
                    outcomes[key, default: 0] += 1
                    switch r {
                    case .exception(_, false) where !cpu.singleStepTrapped, .unsupported, .unbackedMemory, .unanswered:
                        // (a single-step #DB is a trap: it comes after the instruction)
                        XCTAssertEqual(cpu.state.rip, start, "\(mode): a stopped instruction keeps RIP (\(r))")
                    default: break
                    }
                    if r != .ok && !(r == .exception(CPUException(vector: 0), delivered: true)) {
                        if case .exception(_, true) = r { continue }
                        break
                    }
                }
            }
        }
        print("robustness: \(CPUMode.allCases.count) modes x \(iterations) random states: \(outcomes.sorted { $0.key < $1.key })")
        let top = unsupportedMnemonics.sorted { $0.value > $1.value }.prefix(40).map { "\($0.key) \($0.value)" }
        print("unsupported (not implemented; x87/MMX/most SSE): \(top.joined(separator: ", "))")
        XCTAssertGreaterThan(outcomes["ok", default: 0], 0)
    }

    func le(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
}
