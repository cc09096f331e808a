import X86
@testable import X86Emulator
import XCTest

/// Group 1 (what replay of VM exits needs): port I/O, moves and ALU on memory, system
/// instructions, in every mode.
final class ExecGroup1Tests: XCTestCase {
    func testRealModeOutInHlt() {
        // mov al,0x41; mov dx,0x3f8; out dx,al; in al,0x60; hlt
        let m = TestMachine(.real, code: [0xB0, 0x41, 0xBA, 0xF8, 0x03, 0xEE, 0xE4, 0x60, 0xF4])
        m.ports.answers[0x60] = [0x5A]
        XCTAssertEqual(m.step(4), .ok)
        XCTAssertEqual(m.step(), .halted)
        XCTAssertEqual(m.state.rax & 0xFF, 0x5A)
        XCTAssertEqual(m.state.rip, 0x1009)
        XCTAssertEqual(m.cpu.accessLog, [
            .port(PortAccess(port: 0x3F8, size: 1, isWrite: true, value: 0x41)),
            .port(PortAccess(port: 0x60, size: 1, isWrite: false, value: 0x5A)),
        ])
    }
}

extension ExecGroup1Tests {
    func testRepOutsbLongMode() {
        let m = TestMachine(.long64, code: [0xF3, 0x6E, 0xF4]) { s in
            s.rsi = 0x3000; s.rcx = 3; s.rdx = 0x3F8
        }
        m.mem.load(0x3000, [0x41, 0x42, 0x43])
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rcx, 0)
        XCTAssertEqual(m.state.rsi, 0x3003)
        XCTAssertEqual(m.state.rip, 0x1002)
        XCTAssertEqual(m.cpu.accessLog, [0x41, 0x42, 0x43].map {
            .port(PortAccess(port: 0x3F8, size: 1, isWrite: true, value: $0, string: true, rep: true, addressSize: 64))
        })
        XCTAssertEqual(m.step(), .halted)
    }

    func testRepInswProtected32() {
        let m = TestMachine(.protected32, code: [0x66, 0xF3, 0x6D]) { s in
            s.rdi = 0x4000; s.rcx = 2; s.rdx = 0x60
        }
        m.ports.answers[0x60] = [0x1234, 0x5678]
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.mem.bytes(0x4000, count: 4), [0x34, 0x12, 0x78, 0x56])
        XCTAssertEqual(m.state.rdi, 0x4004)
        XCTAssertEqual(m.state.rcx, 0)
        XCTAssertEqual(m.cpu.accessLog.count, 2)
    }

    func testUnansweredPortReadChangesNothing() {
        let m = TestMachine(.real, code: [0xE4, 0x71])  // in al, 0x71
        let before = m.state
        XCTAssertEqual(m.step(), .unanswered(.port(0x71, size: 1)))
        XCTAssertEqual(m.state, before)
    }

    func testAddToMemoryFlags() {
        let m = TestMachine(.protected32, code: [0xC7, 0x05, 0x00, 0x20, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0x7F,
                                                 0x83, 0x05, 0x00, 0x20, 0x00, 0x00, 0x01])
        XCTAssertEqual(m.step(2), .ok)
        XCTAssertEqual(m.read(0x2000, 4), 0x8000_0000)
        let f = flags(m.state)
        XCTAssertTrue(f.of); XCTAssertTrue(f.sf); XCTAssertFalse(f.zf); XCTAssertFalse(f.cf)
        XCTAssertTrue(f.af); XCTAssertTrue(f.pf)
    }

    func testMovzxMovsxMovsxd() {
        let m = TestMachine(.long64, code: [0x0F, 0xB6, 0x03, 0x48, 0x0F, 0xBF, 0x0B, 0x48, 0x63, 0x13, 0x66, 0x0F, 0xBE, 0x33]) { s in
            s.rbx = 0x2000; s.rax = ~0; s.rsi = 0x1111_2222_3333_4444
        }
        m.mem.load(0x2000, [0x80, 0xFF, 0xFF, 0xFF])
        XCTAssertEqual(m.step(4), .ok)
        XCTAssertEqual(m.state.rax, 0x80)
        XCTAssertEqual(m.state.rcx, 0xFFFF_FFFF_FFFF_FF80)
        XCTAssertEqual(m.state.rdx, 0xFFFF_FFFF_FFFF_FF80)
        XCTAssertEqual(m.state.rsi, 0x1111_2222_3333_FF80)
    }

    func testXchgWithMemoryZeroExtends() {
        let m = TestMachine(.long64, code: [0x87, 0x03]) { s in s.rbx = 0x2000; s.rax = 0xFFFF_FFFF_1122_3344 }
        m.mem.load(0x2000, [0xDD, 0xCC, 0xBB, 0xAA])
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax, 0xAABB_CCDD)
        XCTAssertEqual(m.read(0x2000, 4), 0x1122_3344)
    }

    func testCmpAndTestFlags() {
        let m = TestMachine(.long64, code: [0x3C, 0x80, 0x85, 0xC9]) { s in s.rax = 0x7F; s.rcx = 0 }
        XCTAssertEqual(m.step(), .ok)
        var f = flags(m.state)
        XCTAssertTrue(f.cf); XCTAssertTrue(f.of); XCTAssertTrue(f.sf); XCTAssertFalse(f.zf)
        XCTAssertFalse(f.af); XCTAssertTrue(f.pf)
        XCTAssertEqual(m.state.rax, 0x7F)
        XCTAssertEqual(m.step(), .ok)
        f = flags(m.state)
        XCTAssertTrue(f.zf); XCTAssertFalse(f.cf); XCTAssertFalse(f.of); XCTAssertFalse(f.sf); XCTAssertTrue(f.pf)
    }

    func testCPUIDAnsweredAndUnanswered() {
        let m = TestMachine(.long64, code: [0x0F, 0xA2, 0x0F, 0xA2]) { s in s.rax = 0; s.rcx = 0 }
        m.cpuid.set(leaf: 0, CPUIDResult(eax: 0xD, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65))
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax, 0xD)
        XCTAssertEqual(m.state.rbx, 0x6874_7541)
        XCTAssertEqual(m.state.rcx, 0x444D_4163)
        XCTAssertEqual(m.state.rdx, 0x6974_6E65)
        m.cpu.state.rax = 0x8000_0000
        m.cpu.state.rcx = 0
        XCTAssertEqual(m.step(), .unanswered(.cpuid(leaf: 0x8000_0000, subleaf: 0)))
        XCTAssertEqual(m.state.rip, 0x1002)
    }

    func testRDMSRWRMSR() {
        // rdmsr (EFER, executor state); wrmsr (APIC base, the bus); rdmsr of an unknown MSR: #GP
        let m = TestMachine(.long64, code: [0x0F, 0x32, 0x0F, 0x30, 0x0F, 0x32]) { s in s.rcx = 0xC000_0080 }
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax, 0x500)
        XCTAssertEqual(m.state.rdx, 0)
        m.cpu.state.rcx = 0x1B; m.cpu.state.rax = 0xFEE0_0900; m.cpu.state.rdx = 0
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.msrs.values[0x1B], 0xFEE0_0900)
        m.cpu.state.rcx = 0x12345
        XCTAssertEqual(m.step(), .exception(.generalProtection(0), delivered: false))
        XCTAssertEqual(m.cpu.accessLog, [.msrRead(index: 0xC000_0080, value: 0x500),
                                         .msrWrite(index: 0x1B, value: 0xFEE0_0900)])
    }

    func testRDTSC() {
        let m = TestMachine(.protected32, code: [0x0F, 0x31])
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax, 0x2345_6789)
        XCTAssertEqual(m.state.rdx, 1)
    }

    func testMovCRAndPrivilege() {
        let code: [UInt8] = [0x0F, 0x20, 0xC0, 0x0F, 0x22, 0xDB, 0x0F, 0x20, 0xE1]
        let m = TestMachine(.long64, code: code) { s in s.rbx = 0x70000 }
        XCTAssertEqual(m.step(3), .ok)
        XCTAssertEqual(m.state.rax, 0x8000_0011)
        XCTAssertEqual(m.state.cr3, 0x70000)
        XCTAssertEqual(m.state.rcx, 0x20)
        let u = TestMachine(.long64, code: code) { s in s.cpl = 3 }
        XCTAssertEqual(u.step(), .exception(.generalProtection(0), delivered: false))
        XCTAssertEqual(u.state.rip, 0x1000)
    }

    func testCliStiNeedIOPL() {
        let u = TestMachine(.protected32, code: [0xFA, 0xFB]) { s in s.cpl = 3; s.rflags = 0x202 }
        XCTAssertEqual(u.step(), .exception(.generalProtection(0), delivered: false))
        let k = TestMachine(.protected32, code: [0xFA, 0xFB]) { s in s.cpl = 3; s.rflags = 0x3202 }
        XCTAssertEqual(k.step(), .ok)
        XCTAssertEqual(k.state.rflags & RFLAGS.if, 0)
        XCTAssertEqual(k.step(), .ok)
        XCTAssertEqual(k.state.rflags & RFLAGS.if, RFLAGS.if)
    }

    func testDescriptorTableAndMachineStatusWord() {
        let code: [UInt8] = [0x0F, 0x01, 0x15, 0x00, 0x30, 0x00, 0x00, 0x0F, 0x01, 0x05, 0x10, 0x30, 0x00, 0x00,
                             0x0F, 0x01, 0x1D, 0x20, 0x30, 0x00, 0x00, 0x0F, 0x01, 0x0D, 0x30, 0x30, 0x00, 0x00,
                             0x66, 0x0F, 0x01, 0xE0, 0x0F, 0x01, 0xF3, 0x0F, 0x06]
        let m = TestMachine(.protected32, code: code) { s in s.rbx = 0xE }
        m.mem.load(0x3000, [0x27, 0x00, 0x45, 0x23, 0x01, 0x00])
        m.mem.load(0x3020, [0xFF, 0x07, 0x00, 0x50, 0x00, 0x00])
        XCTAssertEqual(m.step(4), .ok)
        XCTAssertEqual(m.state.gdtr, DescriptorTable(base: 0x12345, limit: 0x27))
        XCTAssertEqual(m.state.idtr, DescriptorTable(base: 0x5000, limit: 0x7FF))
        XCTAssertEqual(m.mem.bytes(0x3010, count: 6), [0x27, 0x00, 0x45, 0x23, 0x01, 0x00])
        XCTAssertEqual(m.mem.bytes(0x3030, count: 6), [0xFF, 0x07, 0x00, 0x50, 0x00, 0x00])
        XCTAssertEqual(m.step(), .ok)  // smsw ax
        XCTAssertEqual(m.state.rax & 0xFFFF, 0x11)
        XCTAssertEqual(m.step(), .ok)  // lmsw bx
        XCTAssertEqual(m.state.cr0, 0x1F)
        XCTAssertEqual(m.step(), .ok)  // clts
        XCTAssertEqual(m.state.cr0, 0x17)
    }

    func testHypercall() {
        let m = TestMachine(.long64, code: [0x0F, 0x01, 0xD9])
        XCTAssertEqual(m.step(), .hypercall)
        XCTAssertEqual(m.state.rip, 0x1003)
    }

    func testINVLPGUsesTheNewMapping() {
        let code: [UInt8] = [0x8B, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, 0x0F, 0x01, 0x3C, 0x25, 0x00, 0x00, 0x20, 0x00,
                             0x8B, 0x0C, 0x25, 0x00, 0x00, 0x20, 0x00]
        let m = TestMachine(.long64, code: code)
        m.mem.load(0x72000 + 8, m.le(0x0000_0000 | 0x87))  // 0x200000 -> phys 0
        m.mem.map(0x400000, count: 4096)
        m.mem.load(0x0, [1, 2, 3, 4])
        m.mem.load(0x400000, [5, 6, 7, 8])
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax, 0x0403_0201)
        m.mem.load(0x72000 + 8, m.le(0x400000 | 0x87))
        XCTAssertEqual(m.step(2), .ok)
        XCTAssertEqual(m.state.rcx, 0x0807_0605)
    }

    func testIOPermissionBitmap() {
        let m = TestMachine(.protected32, code: [0xE4, 0x80, 0xE6, 0x81]) { s in
            s.cpl = 3
            s.tr = Segment(selector: 0x28, base: 0x6000, limit: 0x80, attributes: 0x8B)
        }
        m.mem.load(0x6066, [0x68, 0x00])
        m.mem.load(0x6078, [0x02, 0xFF])  // port 0x80 allowed, 0x81 denied
        m.ports.answers[0x80] = [0x99]
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax & 0xFF, 0x99)
        XCTAssertEqual(m.step(), .exception(.generalProtection(0), delivered: false))
    }

    func testUnbackedMemoryNamesTheAddress() {
        let m = TestMachine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00])
        m.mem.load(0x72000 + 8, m.le(0x600000 | 0x87))
        XCTAssertEqual(m.step(), .unbackedMemory(0x600000))
        XCTAssertEqual(m.state.rip, 0x1000)
    }

    func testRepStosStopsAtUnbackedMemoryKeepingProgress() {
        let m = TestMachine(.long64, code: [0xF3, 0xAB]) { s in s.rdi = 0x7FFF8; s.rcx = 4; s.rax = 0x1122_3344 }
        XCTAssertEqual(m.step(), .unbackedMemory(0x80000))
        XCTAssertEqual(m.state.rcx, 2)
        XCTAssertEqual(m.state.rdi, 0x80000)
        XCTAssertEqual(m.state.rip, 0x1000)
        XCTAssertEqual(m.read(0x7FFFC, 4), 0x1122_3344)
    }

    /// REP STOSB across into a not-present page: #PF with the write error code and CR2, the
    /// iterations done are kept, and re-executing after mapping the page completes it.
    func testRepStosPageFaultAndRestart() {
        let m = TestMachine(.long64, code: [0xF3, 0xAA]) { s in s.rdi = 0x400FFE; s.rcx = 4; s.rax = 0xAA }
        m.mem.load(0x72000 + 16, m.le(0x73000 | 7))  // PD[2] -> page table at 0x73000
        m.mem.load(0x73000, m.le(0x50000 | 7))       // 0x400000 -> 0x50000, 0x401000 not present
        XCTAssertEqual(m.step(), .exception(.pageFault(2, address: 0x401000), delivered: false))
        XCTAssertEqual(m.state.rcx, 2)
        XCTAssertEqual(m.state.rdi, 0x401000)
        XCTAssertEqual(m.state.rip, 0x1000)
        XCTAssertEqual(m.mem.bytes(0x50FFE, count: 2), [0xAA, 0xAA])
        XCTAssertEqual(m.read(0x73000, 1) & 0x60, 0x60, "accessed and dirty set on the PTE")
        XCTAssertEqual(m.read(0x72010, 1) & 0x20, 0x20, "accessed set on the PDE")
        m.mem.load(0x73008, m.le(0x51000 | 7))
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rcx, 0)
        XCTAssertEqual(m.state.rdi, 0x401002)
        XCTAssertEqual(m.mem.bytes(0x51000, count: 2), [0xAA, 0xAA])
    }

    func testPageFaultOnUserAccessToSupervisorPage() {
        // CPL3 reads a supervisor page: #PF error code P|U = 5
        let m = TestMachine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x00, 0x40, 0x00]) { s in s.cpl = 3 }
        m.mem.load(0x72000 + 16, m.le(0x73000 | 7))
        m.mem.load(0x73000, m.le(0x50000 | 3))  // present, writable, supervisor
        // The code page itself must be user-accessible: the 2 MiB identity pages are (0x87).
        XCTAssertEqual(m.step(), .exception(.pageFault(5, address: 0x400000), delivered: false))
    }
}
