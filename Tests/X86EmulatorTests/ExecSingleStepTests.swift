import X86
@testable import X86Emulator
import XCTest

/// The single-step trap (RFLAGS.TF, APM vol. 2, 13.1.4): #DB after the instruction, DR6.BS,
/// held off by MOV SS / POP SS, none after software interrupts, one per REP iteration.
final class ExecSingleStepTests: XCTestCase {
    let tf = RFLAGS.tf

    func testTrapAfterTheInstructionReturnedWithTheStateAfterIt() {
        let m = TestMachine(.long64, code: [0x48, 0xFF, 0xC0, 0x90]) { s in s.rflags = 0x102 }
        XCTAssertEqual(m.step(), .exception(CPUException(vector: 1), delivered: false))
        XCTAssertEqual(m.state.rip, 0x1003, "a trap: RIP is past the instruction")
        XCTAssertEqual(m.state.rax, 1)
        XCTAssertEqual(m.state.dr6 & 0x4000, 0x4000, "DR6.BS")
        XCTAssertTrue(m.cpu.singleStepTrapped)
        let (n, last) = m.cpu.run(count: 5)
        XCTAssertEqual(n, 1, "run counts the completed instruction"); XCTAssertEqual(last, .exception(CPUException(vector: 1), delivered: false))
        XCTAssertEqual(m.state.rip, 0x1004)
    }

    func testTrapDeliveredThroughTheIDT() {
        let m = TestMachine(.long64, code: [0x48, 0xFF, 0xC0]) { s in
            s.rflags = 0x302
            s.gdtr = DescriptorTable(base: 0x5000, limit: 0x37)
            s.idtr = DescriptorTable(base: 0x4000, limit: 0xFFF)
        }
        for (i, d) in ExecGroup3Tests.gdt.enumerated() { m.mem.load(0x5000 + UInt64(i * 8), m.le(d)) }
        let lo: UInt64 = 0x2000 | (0x08 << 16) | (0x8E << 40)
        m.mem.load(0x4000 + 16, m.le(lo) + m.le(0))
        m.cpu.deliverExceptions = true
        XCTAssertEqual(m.step(), .exception(CPUException(vector: 1), delivered: true))
        let s = m.state
        XCTAssertEqual(s.rip, 0x2000)
        XCTAssertEqual(s.rflags & (tf | RFLAGS.if), 0, "the handler runs with TF and IF clear")
        XCTAssertEqual(s.rsp, 0x8000 - 40)
        XCTAssertEqual(m.read(s.rsp, 8), 0x1003, "return RIP after the instruction")
        XCTAssertEqual(m.read(s.rsp + 16, 8), 0x302, "pushed RFLAGS keep TF, so IRET goes on stepping")
        XCTAssertEqual(m.step(), .ok, "no trap inside the handler")
    }

    func testPOPFSettingTFTrapsOnlyAfterTheNextInstruction() {
        let m = TestMachine(.real, code: [0x9D, 0x90, 0x90]) { s in s.rsp = 0x7000 }
        m.mem.load(0x7000, [0x02, 0x01])  // FLAGS image with TF
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rflags & tf, tf)
        XCTAssertEqual(m.step(), .exception(CPUException(vector: 1), delivered: false))
        XCTAssertEqual(m.state.rip, 0x1002)
    }

    func testMOVSSHoldsTheTrapOffForOneInstruction() {
        let m = TestMachine(.real, code: [0x8E, 0xD0, 0x90, 0x90]) { s in s.rflags = 0x102; s.rax = 0 }
        XCTAssertEqual(m.step(), .ok, "MOV SS: the trap waits")
        XCTAssertTrue(m.cpu.singleStepPending)
        XCTAssertEqual(m.step(), .exception(CPUException(vector: 1), delivered: false))
        XCTAssertEqual(m.state.rip, 0x1003, "one trap, after the instruction that follows MOV SS")
        XCTAssertFalse(m.cpu.singleStepPending)
        // POP SS too.
        let p = TestMachine(.real, code: [0x17, 0x90]) { s in s.rflags = 0x102; s.rsp = 0x7000 }
        XCTAssertEqual(p.step(), .ok)
        XCTAssertEqual(p.step(), .exception(CPUException(vector: 1), delivered: false))
        XCTAssertEqual(p.state.rip, 0x1002)
    }

    func testNoTrapAfterASoftwareInterrupt() {
        let m = TestMachine(.real, code: [0xCD, 0x21]) { s in s.rflags = 0x102 }
        m.mem.load(0x84, [0x00, 0x02, 0x50, 0x00])
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rip, 0x200); XCTAssertEqual(m.state.rflags & tf, 0)
        XCTAssertEqual(m.read(0x7FFE, 2), 0x102, "the pushed FLAGS keep TF")
    }

    func testEachREPIterationTraps() {
        let m = TestMachine(.real, code: [0xF3, 0xA4]) { s in s.rflags = 0x102; s.rcx = 3; s.rsi = 0x3000; s.rdi = 0x3100 }
        m.mem.load(0x3000, [1, 2, 3])
        XCTAssertEqual(m.step(), .exception(CPUException(vector: 1), delivered: false))
        XCTAssertEqual(m.state.rip, 0x1000, "RIP stays on the REP instruction while iterations remain")
        XCTAssertEqual(m.state.rcx, 2); XCTAssertEqual(m.read(0x3100, 1), 1); XCTAssertEqual(m.read(0x3101, 1), 0)
        XCTAssertEqual(m.step(2), .exception(CPUException(vector: 1), delivered: false))
        XCTAssertEqual(m.step(), .exception(CPUException(vector: 1), delivered: false))
        XCTAssertEqual(m.state.rcx, 0); XCTAssertEqual(m.state.rip, 0x1002)
        XCTAssertEqual(m.read(0x3100, 3), 0x030201)
    }
}
