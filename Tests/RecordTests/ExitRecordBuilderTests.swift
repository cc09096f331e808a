import Foundation
import KVM
import Record
import Trace
import VMM
import X86
import XCTest

/// Flat guest memory for the builder, paging as the state says (off in these tests).
final class FlatTestMemory: RecordMemory {
    var bytes: [UInt64: UInt8] = [:]
    let state: CPUState
    init(state: CPUState, code: [UInt8], at address: UInt64) {
        self.state = state
        for (i, b) in code.enumerated() { bytes[address + UInt64(i)] = b }
    }
    func readLinear(_ linear: UInt64, count: Int) -> [UInt8]? {
        var out: [UInt8] = []
        for i in 0..<count {
            guard let b = bytes[linear + UInt64(i)] else { return nil }
            out.append(b)
        }
        return out
    }
    func physical(_ linear: UInt64) -> UInt64? { linear }
    func readPhysical(_ gpa: UInt64, count: Int) -> [UInt8]? { readLinear(gpa, count: count) }
    func walk(_ linear: UInt64, access: PageAccess) -> PageWalkResult {
        PageWalker.walk(linear: linear, access: access, cr0: state.cr0, cr3: state.cr3, cr4: state.cr4,
                        efer: state.efer, memory: self)
    }
}

extension FlatTestMemory: PhysicalMemoryReader {
    func readPhysical64(_ gpa: UInt64) -> UInt64? {
        readLinear(gpa, count: 8).map { $0.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) } }
    }
    func readPhysical32(_ gpa: UInt64) -> UInt32? { readPhysical64(gpa).map { UInt32(truncatingIfNeeded: $0) } }
}

final class ExitRecordBuilderTests: XCTestCase {
    func testCommittedOutIsFoundBeforeRIPWithIOIOInfo() {
        var s = CPUState.flat(.real)
        s.rip = 0x1003  // past "mov al, 0x41 ; out dx, al"
        s.rdx = 0x3F8
        s.rax = 0x41
        let mem = FlatTestMemory(state: s, code: [0xB0, 0x41, 0xEE], at: 0x1000)
        let r = ExitRecordBuilder.build(
            ExitFacts(vcpu: 0, exit: .io(port: 0x3F8, size: 1, direction: .out, count: 1, dataOffset: 0),
                      state: s, ioData: [0x41]), memory: mem)
        XCTAssertEqual(r.exitCode, .ioio)
        XCTAssertEqual(r.visibility, .committed)
        XCTAssertEqual(r.instructionStart, 0x1002)
        XCTAssertEqual(r.instructionBytes, [0xEE])
        XCTAssertEqual(r.candidates, 1)
        XCTAssertEqual(r.nextRIP, 0x1003)
        XCTAssertEqual(r.exitInfo2, 0x1003)
        let info = IOIOInfo(exitInfo1: r.exitInfo1)
        XCTAssertEqual(info.port, 0x3F8)
        XCTAssertFalse(info.isIn)
        XCTAssertEqual(info.size, 1)
        XCTAssertEqual(info.addressSize, 16)
        XCTAssertEqual(r.accesses.first?.data, [0x41])
        XCTAssertEqual(r.memory.first(where: { $0.role == .instruction })?.bytes, [0xEE])
    }

    func testPendingInIsTheInstructionAtRIP() {
        var s = CPUState.flat(.protected32)
        s.rip = 0x2000
        s.rdx = 0x3FD
        let mem = FlatTestMemory(state: s, code: [0xEC, 0x90], at: 0x2000)
        let r = ExitRecordBuilder.build(
            ExitFacts(vcpu: 1, exit: .io(port: 0x3FD, size: 1, direction: .in, count: 1, dataOffset: 0),
                      state: s, ioData: [0x60]), memory: mem)
        XCTAssertEqual(r.visibility, .pending)
        XCTAssertEqual(r.instructionStart, 0x2000)
        XCTAssertEqual(r.instructionBytes, [0xEC])
        XCTAssertEqual(r.vcpu, 1)
        XCTAssertTrue(IOIOInfo(exitInfo1: r.exitInfo1).isIn)
        XCTAssertEqual(IOIOInfo(exitInfo1: r.exitInfo1).addressSize, 32)
        XCTAssertEqual(r.accesses.first?.data, [0x60])
    }

    func testCommittedExitWithNoMatchingInstructionIsRecordedAsUnlocated() {
        var s = CPUState.flat(.real)
        s.rip = 0x1002
        s.rdx = 0x80  // the bytes are "out dx, al" but the exit says another port
        let mem = FlatTestMemory(state: s, code: [0x90, 0xEE], at: 0x1000)
        let r = ExitRecordBuilder.build(
            ExitFacts(vcpu: 0, exit: .io(port: 0x3F8, size: 1, direction: .out, count: 1, dataOffset: 0), state: s),
            memory: mem)
        XCTAssertEqual(r.candidates, 0)
        XCTAssertEqual(r.instructionBytes, [])
    }

    func testMMIOWriteIsAnNPFWithTheOperandAddress() {
        var s = CPUState.flat(.long64)
        s.cr0 &= ~CR0.pg  // the test memory has no page tables; the walker then maps 1:1
        s.rip = 0x3006
        s.rbx = 0xD000_0000
        // mov dword [rbx+4], eax  = 89 43 04 ; preceded by nop nop nop
        let mem = FlatTestMemory(state: s, code: [0x90, 0x90, 0x90, 0x89, 0x43, 0x04], at: 0x3000)
        let r = ExitRecordBuilder.build(
            ExitFacts(vcpu: 0, exit: .mmio(address: 0xD000_0004, length: 4, isWrite: true, data: 0x1234), state: s),
            memory: mem)
        XCTAssertEqual(r.exitCode, .npf)
        XCTAssertEqual(r.exitInfo2, 0xD000_0004)
        XCTAssertEqual(r.exitInfo1 & NPFInfo.write, NPFInfo.write)
        XCTAssertEqual(r.instructionStart, 0x3003)
        XCTAssertEqual(r.candidates, 1)
        XCTAssertEqual(r.accesses.first?.value, 0x1234)
    }
}

extension ExitRecordBuilderTests {
    func testARedundantPrefixBeforeOutIsNotAnAmbiguity() {
        var s = CPUState.flat(.real)
        s.rip = 0x1004  // "mov ax, 0x6600 ; out dx, al": the immediate's 0x66 also decodes as a prefix
        s.rdx = 0x80
        let mem = FlatTestMemory(state: s, code: [0xB8, 0x00, 0x66, 0xEE], at: 0x1000)
        let r = ExitRecordBuilder.build(
            ExitFacts(vcpu: 0, exit: .io(port: 0x80, size: 1, direction: .out, count: 1, dataOffset: 0), state: s),
            memory: mem)
        XCTAssertEqual(r.candidates, 1)
        XCTAssertEqual(r.instructionStart, 0x1003)
        XCTAssertEqual(r.instructionBytes, [0xEE])
    }

    func testOnlyTheCandidateThatPerformsTheAccessCounts() {
        var s = CPUState.flat(.real)
        s.rip = 0x1002
        s.rdx = 0x80
        s.rax = 0
        // "e6 80" is out 0x80, al; its last byte alone is no OUT, but "ee" at 0x1001 would be:
        // here 0x1000: e6 ee -> out 0xee, al (port 0xee, no match) and ee (port dx = 0x80, match).
        let mem = FlatTestMemory(state: s, code: [0xE6, 0xEE], at: 0x1000)
        let r = ExitRecordBuilder.build(
            ExitFacts(vcpu: 0, exit: .io(port: 0x80, size: 1, direction: .out, count: 1, dataOffset: 0), state: s),
            memory: mem)
        XCTAssertEqual(r.candidates, 1, "only 'ee' writes port 0x80")
        XCTAssertEqual(r.instructionStart, 0x1001)
    }
}
