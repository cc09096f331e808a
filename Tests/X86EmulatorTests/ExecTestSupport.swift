import X86
@testable import X86Emulator
import XCTest

/// A machine for executor tests: sparse memory, scripted ports/CPUID/MSRs/TSC.
final class TestMachine {
    let mem = SparseMemory()
    let ports = ScriptedPorts()
    let cpuid = TableCPUID()
    let msrs = TableMSRs()
    let tsc = ScriptedTSC([0x1_2345_6789])
    var cpu: X86Executor!

    /// A flat state of `mode` with code at `codeAt`; long modes get identity-mapped 2 MiB pages
    /// for the low 1 GiB (PML4 0x70000, PDPT 0x71000, PD 0x72000).
    init(_ mode: CPUMode, code: [UInt8], at codeAt: UInt64 = 0x1000, setup: (inout CPUState) -> Void = { _ in }) {
        var s = CPUState.flat(mode)
        s.rip = mode == .real || mode == .virtual8086 ? codeAt & 0xFFFF : codeAt
        if mode == .real { s.cs = .real(UInt16(codeAt >> 4 & 0xF000), code: true) }
        s.rsp = 0x8000
        mem.map(0, count: 0x80000)
        if mode == .long64 || mode == .compat32 || mode == .compat16 {
            s.cr3 = 0x70000
            mem.load(0x70000, le(0x71000 | 7))
            mem.load(0x71000, le(0x72000 | 7))
            for i in 0..<512 { mem.load(0x72000 + UInt64(i) * 8, le(UInt64(i) << 21 | 0x87)) }
        }
        mem.load(codeAt, code)
        setup(&s)
        cpu = X86Executor(state: s, memory: mem, ports: ports, cpuid: nil, msrs: msrs, tsc: tsc)
        cpu.cpuidSource = cpuid
    }

    func le(_ v: UInt64, _ n: Int = 8) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

    @discardableResult
    func step(_ n: Int = 1, file: StaticString = #filePath, line: UInt = #line) -> StepResult {
        var r: StepResult = .ok
        for _ in 0..<n {
            r = cpu.step()
            if r != .ok { return r }
        }
        return r
    }

    var state: CPUState { cpu.state }

    func read(_ gpa: UInt64, _ n: Int) -> UInt64 {
        var v: UInt64 = 0
        for (i, b) in (mem.bytes(gpa, count: n) ?? []).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }
}

/// Flag helpers for assertions.
func flags(_ s: CPUState) -> (cf: Bool, pf: Bool, af: Bool, zf: Bool, sf: Bool, of: Bool) {
    let f = s.rflags
    return (f & RFLAGS.cf != 0, f & RFLAGS.pf != 0, f & RFLAGS.af != 0, f & RFLAGS.zf != 0,
            f & RFLAGS.sf != 0, f & RFLAGS.of != 0)
}
