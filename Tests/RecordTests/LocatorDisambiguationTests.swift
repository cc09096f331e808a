import Record
import Trace
import VMM
import X86
import XCTest

/// How the recorder tells apart decodings that all end at RIP and touch the written MMIO
/// address (kvm-unit-tests' emulator: a REX-prefixed byte store in memset gave 8208 ambiguities).
final class LocatorDisambiguationTests: XCTestCase {
    func write(_ state: CPUState, code: [UInt8], at: UInt64, gpa: UInt64, size: UInt32, data: UInt64,
               openGroup: UInt64? = nil) -> TraceRecord {
        ExitRecordBuilder.build(ExitFacts(vcpu: 0, exit: .mmio(address: gpa, length: size, isWrite: true, data: data), state: state),
                                memory: FlatTestMemory(state: state, code: code, at: at), openGroup: openGroup)
    }

    func testAByteStoreIsToldFromItsSourceByTheValueWritten() {
        // "40 88 31" is mov [rcx], sil; its last two bytes alone are mov [rcx], dh.
        var s = CPUState.flat(.long64)
        s.rip = 0x1003
        s.rcx = 0xFF00_0000
        s.rsi = 0x77
        s.rdx = 0x5500
        let sil = write(s, code: [0x40, 0x88, 0x31], at: 0x1000, gpa: 0xFF00_0000, size: 1, data: 0x77)
        XCTAssertEqual(sil.candidates, 1)
        XCTAssertEqual(sil.instructionStart, 0x1000)
        let dh = write(s, code: [0x40, 0x88, 0x31], at: 0x1000, gpa: 0xFF00_0000, size: 1, data: 0x55)
        XCTAssertEqual(dh.candidates, 1)
        XCTAssertEqual(dh.instructionStart, 0x1001)
        s.rdx = 0x7700  // both registers hold what was written: a real ambiguity, reported
        XCTAssertEqual(write(s, code: [0x40, 0x88, 0x31], at: 0x1000, gpa: 0xFF00_0000, size: 1, data: 0x77).candidates, 2)
    }

    func testAnOperandSizePrefixIsToldByTheAccessSize() {
        // "66 89 03" stores AX; "89 03" would store EAX, a 4-byte access.
        var s = CPUState.flat(.protected32)
        s.rip = 0x1003
        s.rbx = 0xFF00_0000
        s.rax = 0x1234_5678
        let r = write(s, code: [0x66, 0x89, 0x03], at: 0x1000, gpa: 0xFF00_0000, size: 2, data: 0x5678)
        XCTAssertEqual(r.candidates, 1)
        XCTAssertEqual(r.instructionStart, 0x1000)
        XCTAssertEqual(r.instructionBytes, [0x66, 0x89, 0x03])
    }

    func testALoneWriteExitIsNoReadModifyWrite() {
        // "0f 29 1b" is movaps [rbx], xmm3 (16 bytes: 8-byte pieces); "29 1b" is sub [rbx], ebx,
        // which would have exited for its read first and opened a group.
        var s = CPUState.flat(.long64)
        s.rip = 0x1003
        s.rbx = 0xFF00_0000
        let lone = write(s, code: [0x0F, 0x29, 0x1B], at: 0x1000, gpa: 0xFF00_0000, size: 4, data: 0)
        XCTAssertEqual(lone.candidates, 1)
        XCTAssertEqual(lone.instructionStart, 0x1000)
        let half = write(s, code: [0x0F, 0x29, 0x1B], at: 0x1000, gpa: 0xFF00_0000, size: 4, data: 0, openGroup: 0x1001)
        XCTAssertEqual(half.instructionStart, 0x1001, "the write half of the SUB whose read opened the group")
    }

    func testBitTestWithARegisterOffsetWritesTheUnitTheBitIsIn() {
        // btc [rbx], eax with bit 64: the dword at rbx+8 is read and written back.
        var s = CPUState.flat(.protected32)
        s.rip = 0x1003
        s.rbx = 0xFF00_0000
        s.rax = 64
        let r = write(s, code: [0x0F, 0xBB, 0x03], at: 0x1000, gpa: 0xFF00_0008, size: 4, data: 1, openGroup: 0x1000)
        XCTAssertEqual(r.candidates, 1)
        XCTAssertEqual(r.instructionStart, 0x1000)
        s.rax = UInt64(UInt32(bitPattern: -1))  // bit -1: the dword below
        XCTAssertEqual(write(s, code: [0x0F, 0xBB, 0x03], at: 0x1000, gpa: 0xFEFF_FFFC, size: 4, data: 0, openGroup: 0x1000).candidates, 1)
    }

    func testAWideReadInPiecesIsOneGroup() {
        // movdqu xmm0, [rbx]: KVM reads 16 bytes of MMIO as two 8-byte exits.
        var s = CPUState.flat(.long64)
        s.rip = 0x1000
        s.rbx = 0xFF00_0000
        let code: [UInt8] = [0xF3, 0x0F, 0x6F, 0x03]
        func read(_ gpa: UInt64) -> TraceRecord {
            ExitRecordBuilder.build(ExitFacts(vcpu: 0, exit: .mmio(address: gpa, length: 8, isWrite: false, data: 0), state: s),
                                    memory: FlatTestMemory(state: s, code: code, at: 0x1000))
        }
        XCTAssertFalse(read(0xFF00_0000).lastFragment, "the second piece exits next")
        XCTAssertTrue(read(0xFF00_0008).lastFragment)
    }

    func testAPushWithTheStackInMMIOIsLocated() {
        // push 0x12 (6a 12) with ESP moved into MMIO: the store is at the ESP it left behind.
        var s = CPUState.flat(.protected32)
        s.rip = 0x1002
        s.rsp = 0xFF00_0FFC
        let r = write(s, code: [0x6A, 0x12], at: 0x1000, gpa: 0xFF00_0FFC, size: 4, data: 0x12)
        XCTAssertEqual(r.candidates, 1)
        XCTAssertEqual(r.instructionStart, 0x1000)
        XCTAssertEqual(write(s, code: [0x6A, 0x12], at: 0x1000, gpa: 0xFF00_0FF8, size: 4, data: 0x12).candidates, 0,
                       "a store below the stack pointer is not the push's")
    }
}
