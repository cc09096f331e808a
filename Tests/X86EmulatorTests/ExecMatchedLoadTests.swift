import X86
@testable import X86Emulator
import XCTest

/// `X86Executor.load(from:keepingCaches:matched:)`: after `stateMatches(at:)` found the executor
/// equal to a state, loading that state only sets RFLAGS; the result must be exactly what a full
/// load gives, and anything run in between must make it a full load.
final class ExecMatchedLoadTests: XCTestCase {
    /// Real mode at 0x1000: `add ax, bx` (leaves flags the mask may hide), `nop`.
    func setUp(_ rflags: UInt64) -> (X86Executor, UnsafeMutablePointer<CPUState>) {
        var s = CPUState.flat(.real)
        s.rip = 0x1000
        s.rax = 0x7FFF
        s.rbx = 1
        s.rflags = rflags
        let mem = SparseMemory()
        mem.load(0x1000, [0x01, 0xD8, 0x90])
        let cpu = X86Executor(state: s, memory: mem)
        let p = UnsafeMutablePointer<CPUState>.allocate(capacity: 1)
        p.initialize(to: s)
        return (cpu, p)
    }

    func testMatchedLoadEqualsAFullLoad() {
        let (cpu, p) = setUp(0x2)
        defer { p.deallocate() }
        _ = cpu.step()  // add: flags from the result
        var after = cpu.state
        // The recorded state differs from the executor only in flags the comparison masks.
        after.rflags ^= RFLAGS.af
        p.pointee = after
        XCTAssertTrue(cpu.stateMatches(at: p, flagMask: RFLAGS.af))
        cpu.load(from: p, keepingCaches: true, matched: true)
        XCTAssertEqual(cpu.state, after)
        let full = X86Executor(state: CPUState(), memory: SparseMemory())
        full.load(from: p, keepingCaches: false)
        XCTAssertEqual(cpu.state, full.state)
    }

    func testAnythingRunInBetweenMakesItAFullLoad() {
        let (cpu, p) = setUp(0x2)
        defer { p.deallocate() }
        let before = cpu.state
        p.pointee = before
        XCTAssertTrue(cpu.stateMatches(at: p, flagMask: 0))
        _ = cpu.step()  // the executor moved on: the match is stale
        XCTAssertNotEqual(cpu.state, before)
        cpu.load(from: p, keepingCaches: true, matched: true)
        XCTAssertEqual(cpu.state, before)
        // And a state the executor was never found equal to is loaded whole.
        var other = before
        other.rcx = 0x1234
        p.pointee = other
        cpu.load(from: p, keepingCaches: true, matched: true)
        XCTAssertEqual(cpu.state, other)
    }
}
