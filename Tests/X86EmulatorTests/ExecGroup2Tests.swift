import X86
@testable import X86Emulator
import XCTest

/// Group 2: the general-purpose set, hand-checked against the APM's definitions.
final class ExecGroup2Tests: XCTestCase {
    func testShiftsAndRotates() {
        let code: [UInt8] = [0xD0, 0xD0, 0xC0, 0xDB, 0x03, 0xC1, 0xE1, 0x21, 0x66, 0xC1, 0xFA, 0x04, 0x48, 0xC1, 0xC6, 0x04]
        let m = TestMachine(.long64, code: code) { s in
            s.rax = 0x80; s.rflags = 0x3; s.rbx = 0x01; s.rcx = 0xFFFF_FFFF_8000_0001; s.rdx = 0x8010
            s.rsi = 0x1234_5678_9ABC_DEF0
        }
        XCTAssertEqual(m.step(), .ok)  // rcl al,1
        XCTAssertEqual(m.state.rax, 0x01)
        XCTAssertTrue(flags(m.state).cf); XCTAssertTrue(flags(m.state).of)
        XCTAssertEqual(m.step(), .ok)  // rcr bl,3 through CF=1
        XCTAssertEqual(m.state.rbx, 0x60)
        XCTAssertFalse(flags(m.state).cf)
        XCTAssertEqual(m.step(), .ok)  // shl ecx,33: count masked to 1
        XCTAssertEqual(m.state.rcx, 0x2)
        XCTAssertTrue(flags(m.state).cf); XCTAssertTrue(flags(m.state).of)
        XCTAssertEqual(m.step(), .ok)  // sar dx,4
        XCTAssertEqual(m.state.rdx, 0xF801)
        XCTAssertFalse(flags(m.state).cf)
        XCTAssertEqual(m.step(), .ok)  // rol rsi,4
        XCTAssertEqual(m.state.rsi, 0x2345_6789_ABCD_EF01)
        XCTAssertTrue(flags(m.state).cf)
    }

    func testMultiply() {
        let m = TestMachine(.long64, code: [0xF7, 0xE1, 0x48, 0x6B, 0xD9, 0xFD]) { s in s.rax = 0x8000_0000; s.rcx = 4 }
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax, 0); XCTAssertEqual(m.state.rdx, 2)
        XCTAssertTrue(flags(m.state).cf); XCTAssertTrue(flags(m.state).of)
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rbx, 0xFFFF_FFFF_FFFF_FFF4)
        XCTAssertFalse(flags(m.state).cf); XCTAssertFalse(flags(m.state).of)
    }

    func testDivideAndDivideError() {
        let m = TestMachine(.long64, code: [0xF6, 0xF1]) { s in s.rax = 263; s.rcx = 4 }
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax & 0xFFFF, 0x0341)
        let s = TestMachine(.protected32, code: [0xF7, 0xF9]) { s in s.rdx = 0xFFFF_FFFF; s.rax = 0xFFFF_FFF9; s.rcx = 2 }
        XCTAssertEqual(s.step(), .ok)
        XCTAssertEqual(s.state.rax, 0xFFFF_FFFD); XCTAssertEqual(s.state.rdx, 0xFFFF_FFFF)
        let z = TestMachine(.long64, code: [0xF7, 0xF1]) { s in s.rax = 1; s.rcx = 0 }
        let before = z.state
        XCTAssertEqual(z.step(), .exception(.divideError(), delivered: false))
        XCTAssertEqual(z.state, before)
        let o = TestMachine(.long64, code: [0xF7, 0xF1]) { s in s.rdx = 5; s.rax = 0; s.rcx = 2 }
        XCTAssertEqual(o.step(), .exception(.divideError(), delivered: false), "quotient does not fit")
    }

    func testDAA() {
        let m = TestMachine(.protected32, code: [0x04, 0x35, 0x27]) { s in s.rax = 0x79 }
        XCTAssertEqual(m.step(2), .ok)
        XCTAssertEqual(m.state.rax & 0xFF, 0x14)
        XCTAssertTrue(flags(m.state).cf); XCTAssertTrue(flags(m.state).af)
        let l = TestMachine(.long64, code: [0x27])
        XCTAssertEqual(l.step(), .exception(.invalidOpcode(), delivered: false), "DAA is invalid in 64-bit mode")
    }

    func testBitTestWithMemoryBitOffset() {
        let m = TestMachine(.long64, code: [0x0F, 0xAB, 0x0B, 0x0F, 0xBA, 0xE0, 0x1F]) { s in
            s.rbx = 0x2000; s.rcx = 35; s.rax = 0x8000_0000
        }
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.read(0x2004, 4), 0x08, "bit 35 is bit 3 of the next dword")
        XCTAssertFalse(flags(m.state).cf)
        XCTAssertEqual(m.step(), .ok)
        XCTAssertTrue(flags(m.state).cf)
    }

    func testBitScansAndCounts() {
        let code: [UInt8] = [0x0F, 0xBC, 0xC1, 0x48, 0x0F, 0xBD, 0xD1, 0xF3, 0x0F, 0xBC, 0xF1, 0xF3, 0x0F, 0xBD, 0xF9,
                             0xF3, 0x4C, 0x0F, 0xB8, 0xC1]
        let m = TestMachine(.long64, code: code) { s in s.rcx = 0xF0 }
        XCTAssertEqual(m.step(5), .ok)
        XCTAssertEqual(m.state.rax, 4); XCTAssertEqual(m.state.rdx, 7); XCTAssertEqual(m.state.rsi, 4)
        XCTAssertEqual(m.state.rdi, 24); XCTAssertEqual(m.state.r8, 4)
        let z = TestMachine(.long64, code: code) { s in s.rcx = 0; s.rax = 0x1234 }
        XCTAssertEqual(z.step(), .ok)
        XCTAssertEqual(z.state.rax, 0x1234, "BSF of zero leaves the destination (AMD)")
        XCTAssertTrue(flags(z.state).zf)
        XCTAssertEqual(z.step(2), .ok)
        XCTAssertEqual(z.state.rsi, 32)
        XCTAssertTrue(flags(z.state).cf)
    }

    func testConditions() {
        let m = TestMachine(.long64, code: [0x39, 0xD8, 0x0F, 0x9C, 0xC1, 0x0F, 0x4F, 0xD6, 0x7E, 0x0E]) { s in
            s.rax = 0xFFFF_FFFF; s.rbx = 1; s.rdx = 0xAAAA_BBBB_0000_1111; s.rsi = 7
        }
        XCTAssertEqual(m.step(4), .ok)
        XCTAssertEqual(m.state.rcx & 0xFF, 1, "setl: -1 < 1")
        XCTAssertEqual(m.state.rdx, 0x1111, "a 32-bit CMOV writes (zero-extends) even when false")
        XCTAssertEqual(m.state.rip, 0x1018, "jle taken")
    }

    func testCountedLoop() {
        let m = TestMachine(.long64, code: [0xFF, 0xC9, 0x75, 0xFC, 0xF4]) { s in s.rcx = 5 }
        let (n, last) = m.cpu.run(count: 100)
        XCTAssertEqual(last, .halted)
        XCTAssertEqual(n, 11)
        XCTAssertEqual(m.state.rcx, 0)
    }

    func testCallRetEnterLeave() {
        let c = TestMachine(.long64, code: [0xE8, 0x0B, 0x00, 0x00, 0x00])
        XCTAssertEqual(c.step(), .ok)
        XCTAssertEqual(c.state.rip, 0x1010)
        XCTAssertEqual(c.state.rsp, 0x7FF8)
        XCTAssertEqual(c.read(0x7FF8, 8), 0x1005)
        let m = TestMachine(.long64, code: [0x55, 0x48, 0x89, 0xE5, 0xC8, 0x20, 0x00, 0x00, 0xC9, 0x5D, 0xC3]) { s in s.rbp = 0x1234 }
        m.mem.load(0x8000, m.le(0x5555))
        XCTAssertEqual(m.step(3), .ok)
        XCTAssertEqual(m.state.rbp, 0x7FF0); XCTAssertEqual(m.state.rsp, 0x7FD0)
        XCTAssertEqual(m.read(0x7FF0, 8), 0x7FF8)
        XCTAssertEqual(m.step(2), .ok)  // leave; pop rbp
        XCTAssertEqual(m.state.rbp, 0x1234); XCTAssertEqual(m.state.rsp, 0x8000)
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rip, 0x5555); XCTAssertEqual(m.state.rsp, 0x8008)
    }

    func testPushaPopaPushfPopf() {
        let m = TestMachine(.protected32, code: [0x60, 0x61, 0x9C, 0x9D]) { s in
            s.rax = 1; s.rcx = 2; s.rdx = 3; s.rbx = 4; s.rbp = 6; s.rsi = 7; s.rdi = 8
        }
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rsp, 0x7FE0)
        XCTAssertEqual(m.read(0x7FE0, 4), 8)
        XCTAssertEqual(m.read(0x7FEC, 4), 0x8000, "the original ESP")
        XCTAssertEqual(m.read(0x7FFC, 4), 1)
        m.mem.load(0x7FEC, [0x99, 0, 0, 0])  // POPA skips the ESP slot
        m.mem.load(0x7FE0, [0x18, 0, 0, 0])
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rsp, 0x8000); XCTAssertEqual(m.state.rdi, 0x18)
        XCTAssertEqual(m.step(), .ok)
        m.mem.load(0x7FFC, [0xD5, 0x08, 0, 0])
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rflags, 0x8D7)
    }

    func testCompareExchangeFamily() {
        let m = TestMachine(.long64, code: [0xF0, 0x0F, 0xB1, 0x0B, 0x0F, 0xC7, 0x0B, 0x0F, 0xC1, 0x13, 0x0F, 0xC8]) { s in
            s.rbx = 0x2000; s.rax = 5; s.rcx = 9; s.rdx = 7
        }
        m.mem.load(0x2000, [5, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.read(0x2000, 4), 9); XCTAssertTrue(flags(m.state).zf)
        XCTAssertEqual(m.step(), .ok)  // cmpxchg8b: mismatch loads edx:eax
        XCTAssertEqual(m.state.rax, 9); XCTAssertEqual(m.state.rdx, 0); XCTAssertFalse(flags(m.state).zf)
        XCTAssertEqual(m.step(), .ok)  // xadd
        XCTAssertEqual(m.read(0x2000, 4), 9); XCTAssertEqual(m.state.rdx, 9)
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax, 0x0900_0000)
    }

    func testRepeCmpsAndRepneScas() {
        let c = TestMachine(.long64, code: [0xF3, 0xA6]) { s in s.rsi = 0x3000; s.rdi = 0x3100; s.rcx = 10 }
        c.mem.load(0x3000, Array("abcX".utf8))
        c.mem.load(0x3100, Array("abcY".utf8))
        XCTAssertEqual(c.step(), .ok)
        XCTAssertEqual(c.state.rcx, 6); XCTAssertEqual(c.state.rsi, 0x3004); XCTAssertEqual(c.state.rdi, 0x3104)
        XCTAssertFalse(flags(c.state).zf)
        let s = TestMachine(.long64, code: [0xF2, 0xAE]) { s in s.rdi = 0x3000; s.rcx = 100; s.rax = 0 }
        s.mem.load(0x3000, Array("abc\0".utf8))
        XCTAssertEqual(s.step(), .ok)
        XCTAssertEqual(s.state.rcx, 96); XCTAssertEqual(s.state.rdi, 0x3004); XCTAssertTrue(flags(s.state).zf)
    }

    func testSignExtensions() {
        let m = TestMachine(.long64, code: [0x66, 0x98, 0x98, 0x48, 0x98, 0x66, 0x99, 0x99, 0x48, 0x99]) { s in s.rax = 0x80 }
        XCTAssertEqual(m.step(), .ok); XCTAssertEqual(m.state.rax, 0xFF80)
        XCTAssertEqual(m.step(), .ok); XCTAssertEqual(m.state.rax, 0xFFFF_FF80)
        XCTAssertEqual(m.step(), .ok); XCTAssertEqual(m.state.rax, 0xFFFF_FFFF_FFFF_FF80)
        XCTAssertEqual(m.step(), .ok); XCTAssertEqual(m.state.rdx, 0xFFFF)
        XCTAssertEqual(m.step(), .ok); XCTAssertEqual(m.state.rdx, 0xFFFF_FFFF)
        XCTAssertEqual(m.step(), .ok); XCTAssertEqual(m.state.rdx, ~0)
    }

    func testSelfModifyingCodeSeesNewBytes() {
        // mov byte [0x1010], 0xF4 (hlt) over a NOP that already ran once through the cache.
        let m = TestMachine(.long64, code: [0x90])
        m.mem.load(0x1010, [0x90, 0xF4])
        m.cpu.state.rip = 0x1010
        XCTAssertEqual(m.step(), .ok)
        m.mem.load(0x1020, [0xC6, 0x04, 0x25, 0x10, 0x10, 0x00, 0x00, 0xF4, 0xEB, 0xEE - 8])  // mov byte [0x1010],0xf4; jmp 0x1010
        m.cpu.state.rip = 0x1020
        XCTAssertEqual(m.step(), .ok)
        m.cpu.state.rip = 0x1010
        XCTAssertEqual(m.step(), .halted)
    }
}

extension ExecGroup2Tests {
    /// `run` takes the interpreter's fast path for register forms; `step` never does. Both
    /// must end in the same state, flags included.
    func testFastPathAgreesWithFullPath() {
        let code: [UInt8] = [0xB9, 0x32, 0x00, 0x00, 0x00, 0x48, 0xC7, 0xC0, 0xFB, 0xFF, 0xFF, 0xFF, 0x48, 0x01, 0xC8,
                             0x29, 0xC2, 0x48, 0x83, 0xF8, 0x07, 0xF7, 0xC2, 0x03, 0x00, 0x00, 0x00, 0xFF, 0xC3, 0x89, 0xD6,
                             0x48, 0x31, 0xC7, 0x41, 0x81, 0xE0, 0xF0, 0x0F, 0x00, 0x00, 0x4D, 0x09, 0xC1, 0x49, 0x11, 0xC2,
                             0xFF, 0xC9, 0x75, 0xD9, 0xEB, 0x01, 0x90, 0xF4]
        let setup: (inout CPUState) -> Void = { s in s.rdx = 0x1234_5678_9ABC; s.r8 = ~0; s.rflags = 0x2 }
        let fast = TestMachine(.long64, code: code, setup: setup)
        let slow = TestMachine(.long64, code: code, setup: setup)
        let (n, last) = fast.cpu.run(count: 10_000)
        XCTAssertEqual(last, .halted)
        var k = 0
        while slow.step() == .ok { k += 1 }
        XCTAssertEqual(n, k + 1)
        XCTAssertEqual(fast.state, slow.state)
        XCTAssertEqual(fast.state.rip, 0x1037)
        // Partial runs stop exactly where asked.
        let part = TestMachine(.long64, code: code, setup: setup)
        XCTAssertEqual(part.cpu.run(count: 100).executed, 100)
        let ref = TestMachine(.long64, code: code, setup: setup)
        for _ in 0..<100 { _ = ref.step() }
        XCTAssertEqual(part.state, ref.state)
    }

    /// JE/JNE test ZF inline on the fast path: taken and not taken, after TEST and INC.
    func testFastPathJEAgreesWithFullPath() {
        let code: [UInt8] = [0xB8, 0, 0, 0, 0, 0x85, 0xC0, 0x74, 0x01, 0xF4, 0xFF, 0xC0, 0x74, 0x01, 0xF4, 0xF4]
        let fast = TestMachine(.long64, code: code), slow = TestMachine(.long64, code: code)
        let (n, last) = fast.cpu.run(count: 100)
        XCTAssertEqual(last, .halted); XCTAssertEqual(n, 6)
        while slow.step() == .ok {}
        XCTAssertEqual(fast.state, slow.state)
        XCTAssertEqual(fast.state.rip, 0x100F, "the first JE is taken, the second is not")
    }
}

extension ExecGroup2Tests {
    func testBound() {
        let inRange = TestMachine(.protected32, code: [0x62, 0x03]) { s in s.rbx = 0x2000; s.rax = 5 }
        inRange.mem.load(0x2000, [0xFE, 0xFF, 0xFF, 0xFF, 0x05, 0x00, 0x00, 0x00])  // [-2, 5]
        XCTAssertEqual(inRange.step(), .ok)
        let out = TestMachine(.protected32, code: [0x62, 0x03]) { s in s.rbx = 0x2000; s.rax = 0xFFFF_FFFD }
        out.mem.load(0x2000, [0xFE, 0xFF, 0xFF, 0xFF, 0x05, 0x00, 0x00, 0x00])
        XCTAssertEqual(out.step(), .exception(CPUException(vector: CPUException.br), delivered: false), "-3 < -2: #BR")
    }
}

extension ExecGroup2Tests {
    /// Setting a new state drops decoded instructions (replay changes memory between records):
    /// over more state changes than the cache has generations, new bytes at the same address run.
    func testNewStateSeesNewCodeBytes() {
        let m = TestMachine(.long64, code: [0x90])
        let start = m.state
        for k in 0..<70 {
            let inc: [UInt8] = k % 2 == 0 ? [0xFF, 0xC0] : [0xFF, 0xC8]  // inc eax / dec eax
            m.mem.load(0x1000, inc)
            var s = start
            s.rax = 10
            m.cpu.state = s
            XCTAssertEqual(m.step(), .ok)
            XCTAssertEqual(m.state.rax, k % 2 == 0 ? 11 : 9, "round \(k)")
        }
    }
}
