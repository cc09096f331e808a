import X86
@testable import X86Emulator
import XCTest

/// Group 3: interrupts and exceptions through the IVT/IDT, IRET, fast system calls, far
/// transfers and segment loads, mode switches.
final class ExecGroup3Tests: XCTestCase {
    /// GDT at 0x5000: 0x08 kernel code64, 0x10 kernel data, 0x18 user code64 (DPL3),
    /// 0x20 user data (DPL3), 0x28 code32, 0x30 data with base 0x10000 limit 0xFF.
    static let gdt: [UInt64] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00AF_FA00_0000_FFFF,
                                0x00CF_F200_0000_FFFF, 0x00CF_9A00_0000_FFFF, 0x0040_9201_0000_00FF]

    func loadGDT(_ m: TestMachine) {
        for (i, d) in ExecGroup3Tests.gdt.enumerated() { m.mem.load(0x5000 + UInt64(i * 8), m.le(d)) }
    }

    /// A 64-bit IDT gate at 0x4000 for `vector` to `target` in selector 0x08.
    func gate64(_ m: TestMachine, _ vector: Int, _ target: UInt64, dpl: UInt64 = 0, trap: Bool = false) {
        let type: UInt64 = (trap ? 0xF : 0xE) | (dpl << 5) | 0x80
        let lo = (target & 0xFFFF) | (0x08 << 16) | (type << 40) | ((target >> 16) & 0xFFFF) << 48
        m.mem.load(0x4000 + UInt64(vector * 16), m.le(lo) + m.le(target >> 32))
    }

    func testRealModeSoftwareInterruptAndIRET() {
        let m = TestMachine(.real, code: [0xCD, 0x21, 0x90]) { s in s.rflags = 0x202 }
        m.mem.load(0x84, [0x00, 0x02, 0x50, 0x00])  // IVT[0x21] = 0050:0200
        m.mem.load(0x700, [0xCF])                   // iret
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.cs.selector, 0x50); XCTAssertEqual(m.state.cs.base, 0x500)
        XCTAssertEqual(m.state.rip, 0x200)
        XCTAssertEqual(m.state.rsp, 0x7FFA)
        XCTAssertEqual(m.read(0x7FFA, 2), 0x1002); XCTAssertEqual(m.read(0x7FFC, 2), 0); XCTAssertEqual(m.read(0x7FFE, 2), 0x202)
        XCTAssertEqual(m.state.rflags & RFLAGS.if, 0)
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rip, 0x1002); XCTAssertEqual(m.state.cs.selector, 0)
        XCTAssertEqual(m.state.rsp, 0x8000); XCTAssertEqual(m.state.rflags, 0x202)
    }

    func testRealModeDivideErrorDeliveredThroughIVT() {
        let m = TestMachine(.real, code: [0xF6, 0xF1]) { s in s.rcx = 0 }
        m.mem.load(0x0, [0x00, 0x03, 0x00, 0x00])  // IVT[0] = 0000:0300
        m.cpu.deliverExceptions = true
        XCTAssertEqual(m.step(), .exception(.divideError(), delivered: true))
        XCTAssertEqual(m.state.rip, 0x300)
        XCTAssertEqual(m.read(0x7FFA, 2), 0x1000, "a fault returns to the faulting instruction")
    }

    func testLongModeInterruptFromUserToKernelAndIRETQ() {
        let m = TestMachine(.long64, code: [0xCD, 0x80]) { s in
            s.cpl = 3
            s.cs = Segment(selector: 0x1B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xAFB)
            s.ss = Segment(selector: 0x23, base: 0, limit: 0xFFFF_FFFF, attributes: 0xCF3)
            s.rsp = 0x7000; s.rflags = 0x202
            s.gdtr = DescriptorTable(base: 0x5000, limit: 0x37)
            s.idtr = DescriptorTable(base: 0x4000, limit: 0xFFF)
            s.tr = Segment(selector: 0x38, base: 0x6000, limit: 0x67, attributes: 0x8B)
        }
        loadGDT(m)
        gate64(m, 0x80, 0x2000, dpl: 3)
        m.mem.load(0x6004, m.le(0x9000))  // TSS.RSP0
        m.mem.load(0x2000, [0x48, 0xCF])   // iretq
        XCTAssertEqual(m.step(), .ok)
        var s = m.state
        XCTAssertEqual(s.rip, 0x2000); XCTAssertEqual(s.cs.selector, 0x08); XCTAssertEqual(s.cpl, 0)
        XCTAssertEqual(s.rsp, 0x9000 - 40)
        XCTAssertEqual(m.read(0x8FD8, 8), 0x1002); XCTAssertEqual(m.read(0x8FE0, 8), 0x1B)
        XCTAssertEqual(m.read(0x8FE8, 8), 0x202); XCTAssertEqual(m.read(0x8FF0, 8), 0x7000)
        XCTAssertEqual(m.read(0x8FF8, 8), 0x23)
        XCTAssertEqual(s.rflags & RFLAGS.if, 0, "interrupt gate clears IF")
        XCTAssertEqual(m.step(), .ok)
        s = m.state
        XCTAssertEqual(s.rip, 0x1002); XCTAssertEqual(s.cs.selector, 0x1B); XCTAssertEqual(s.cpl, 3)
        XCTAssertEqual(s.rsp, 0x7000); XCTAssertEqual(s.ss.selector, 0x23); XCTAssertEqual(s.rflags, 0x202)
        XCTAssertEqual(s.mode, .long64)
    }

    func testUserInterruptThroughKernelGateIsGP() {
        let m = TestMachine(.long64, code: [0xCD, 0x80]) { s in
            s.cpl = 3
            s.cs = Segment(selector: 0x1B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xAFB)
            s.idtr = DescriptorTable(base: 0x4000, limit: 0xFFF)
            s.gdtr = DescriptorTable(base: 0x5000, limit: 0x37)
        }
        loadGDT(m)
        gate64(m, 0x80, 0x2000, dpl: 0)
        XCTAssertEqual(m.step(), .exception(.generalProtection(0x80 * 8 + 2), delivered: false))
    }

    func testPageFaultDeliveredWithErrorCodeAndCR2() {
        let m = TestMachine(.long64, code: [0x8B, 0x04, 0x25, 0x00, 0x00, 0x40, 0x00]) { s in
            s.gdtr = DescriptorTable(base: 0x5000, limit: 0x37)
            s.idtr = DescriptorTable(base: 0x4000, limit: 0xFFF)
        }
        loadGDT(m)
        gate64(m, 14, 0x2100)
        m.mem.load(0x72010, m.le(0))  // 0x400000 not present
        m.cpu.deliverExceptions = true
        XCTAssertEqual(m.step(), .exception(.pageFault(0, address: 0x400000), delivered: true))
        let s = m.state
        XCTAssertEqual(s.cr2, 0x400000); XCTAssertEqual(s.rip, 0x2100)
        XCTAssertEqual(s.rsp, 0x8000 - 48)
        XCTAssertEqual(m.read(0x7FD0, 8), 0, "error code"); XCTAssertEqual(m.read(0x7FD8, 8), 0x1000, "faulting RIP")
        XCTAssertEqual(m.read(0x7FE0, 8), 0x08)
    }

    func testTripleFaultWhenNothingCanBeDelivered() {
        let m = TestMachine(.long64, code: [0x0F, 0x0B]) { s in s.idtr = DescriptorTable(base: 0x4000, limit: 0) }
        m.cpu.deliverExceptions = true
        XCTAssertEqual(m.step(), .tripleFault)
    }

    func testSyscallSysret() {
        let m = TestMachine(.long64, code: [0x0F, 0x05]) { s in
            s.cpl = 3
            s.cs = Segment(selector: 0x23, base: 0, limit: 0xFFFF_FFFF, attributes: 0xAFB)
            s.ss = Segment(selector: 0x1B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xCF3)
            s.efer |= EFER.sce
            s.star = (0x10 << 48) | (0x08 << 32)
            s.lstar = 0x2000; s.sfmask = 0x200; s.rflags = 0x202
        }
        m.mem.load(0x2000, [0x48, 0x0F, 0x07])
        XCTAssertEqual(m.step(), .ok)
        var s = m.state
        XCTAssertEqual(s.rip, 0x2000); XCTAssertEqual(s.rcx, 0x1002); XCTAssertEqual(s.r11, 0x202)
        XCTAssertEqual(s.cs.selector, 0x08); XCTAssertEqual(s.ss.selector, 0x10); XCTAssertEqual(s.cpl, 0)
        XCTAssertEqual(s.rflags & RFLAGS.if, 0)
        XCTAssertEqual(m.step(), .ok)
        s = m.state
        XCTAssertEqual(s.rip, 0x1002); XCTAssertEqual(s.cs.selector, 0x23); XCTAssertEqual(s.ss.selector, 0x1B)
        XCTAssertEqual(s.cpl, 3); XCTAssertEqual(s.rflags, 0x202); XCTAssertEqual(s.mode, .long64)
    }

    func testFarJumpAndSegmentLimit() {
        let m = TestMachine(.protected32, code: [0xEA, 0x00, 0x20, 0x00, 0x00, 0x28, 0x00]) { s in
            s.gdtr = DescriptorTable(base: 0x5000, limit: 0x37); s.rax = 0x30
        }
        loadGDT(m)
        m.mem.load(0x2000, [0x8E, 0xD8, 0xA1, 0x00, 0x01, 0x00, 0x00, 0xA1, 0xFC, 0x00, 0x00, 0x00])
        m.mem.load(0x100FC, [0x78, 0x56, 0x34, 0x12])
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.cs.selector, 0x28); XCTAssertEqual(m.state.rip, 0x2000)
        XCTAssertEqual(m.read(0x5000 + 0x28 + 5, 1), 0x9B, "the descriptor's accessed bit is set")
        XCTAssertEqual(m.step(), .ok)  // mov ds, ax
        XCTAssertEqual(m.state.ds.base, 0x10000); XCTAssertEqual(m.state.ds.limit, 0xFF)
        XCTAssertEqual(m.step(), .exception(.generalProtection(0), delivered: false), "offset 0x100 is past the limit")
        m.cpu.state.rip = 0x2007
        XCTAssertEqual(m.step(), .ok)  // mov eax, [0xfc]: the last dword inside the limit
        XCTAssertEqual(m.state.rax, 0x1234_5678)
    }

    func testNullSelectorLoadsButFaultsOnUse() {
        let m = TestMachine(.protected32, code: [0x8E, 0xD8, 0xA1, 0x00, 0x01, 0x00, 0x00]) { s in s.rax = 0 }
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.step(), .exception(.generalProtection(0), delivered: false))
        let ss = TestMachine(.protected32, code: [0x8E, 0xD0]) { s in s.rax = 0 }
        XCTAssertEqual(ss.step(), .exception(.generalProtection(0), delivered: false), "null SS outside 64-bit mode")
    }

    func testRealToProtectedModeSwitch() {
        let code: [UInt8] = [0x0F, 0x01, 0x16, 0x00, 0x30, 0x0F, 0x20, 0xC0, 0x0C, 0x01, 0x0F, 0x22, 0xC0,
                             0xEA, 0x00, 0x11, 0x08, 0x00]
        let m = TestMachine(.real, code: code)
        m.mem.load(0x3000, [0x17, 0x00, 0x00, 0x50, 0x00, 0x00])
        m.mem.load(0x5000, m.le(0) + m.le(0x00CF_9A00_0000_FFFF) + m.le(0x00CF_9200_0000_FFFF))
        m.mem.load(0x1100, [0x66, 0xB8, 0x10, 0x00, 0x8E, 0xD8, 0xA1, 0x00, 0x20, 0x00, 0x00, 0xF4])
        m.mem.load(0x2000, [0xEF, 0xBE, 0xAD, 0xDE])
        let (n, last) = m.cpu.run(count: 20)
        XCTAssertEqual(last, .halted)
        XCTAssertEqual(n, 9)
        XCTAssertEqual(m.state.mode, .protected32)
        XCTAssertEqual(m.state.rax, 0xDEAD_BEEF)
        XCTAssertEqual(m.state.ds.selector, 0x10)
    }

    func testINT3AndINTOInRealMode() {
        let m = TestMachine(.real, code: [0xCE, 0xCC]) { s in s.rflags = 0x802 }
        m.mem.load(0x10, [0x00, 0x04, 0x00, 0x00])  // IVT[4]
        m.mem.load(0x0C, [0x00, 0x05, 0x00, 0x00])  // IVT[3]
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rip, 0x400)
        XCTAssertEqual(m.read(0x7FFA, 2), 0x1001)
        m.cpu.state.rip = 0x1001
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rip, 0x500)
    }

    func testSwapGSAndFSBaseMSR() {
        let m = TestMachine(.long64, code: [0x0F, 0x01, 0xF8, 0x0F, 0x30]) { s in
            s.kernelGSBase = 0xFFFF_8000_0000_1000; s.gs.base = 0x1234
            s.rcx = UInt64(MSRIndex.fsBase); s.rax = 0x5678; s.rdx = 0
        }
        XCTAssertEqual(m.step(2), .ok)
        XCTAssertEqual(m.state.gs.base, 0xFFFF_8000_0000_1000)
        XCTAssertEqual(m.state.kernelGSBase, 0x1234)
        XCTAssertEqual(m.state.fs.base, 0x5678)
    }
}

extension ExecGroup3Tests {
    func testVirtual8086SegmentsAndIOPL() {
        let m = TestMachine(.virtual8086, code: [0xB8, 0x34, 0x12, 0x8E, 0xD8, 0x8A, 0x1E, 0x10, 0x00, 0xFA]) { s in
            s.cs = Segment(selector: 0, base: 0, limit: 0xFFFF, attributes: 0xFB)
            s.rflags = RFLAGS.vm | 0x202  // IOPL 0
        }
        m.mem.load(0x12350, [0x77])
        XCTAssertEqual(m.state.mode, .virtual8086)
        XCTAssertEqual(m.step(3), .ok)
        XCTAssertEqual(m.state.ds.base, 0x12340)
        XCTAssertEqual(m.state.rbx & 0xFF, 0x77)
        XCTAssertEqual(m.step(), .exception(.generalProtection(0), delivered: false), "CLI in vm86 with IOPL < 3")
    }

    func testLTRMarksTheTSSBusyAndLLDTLoads() {
        let m = TestMachine(.protected32, code: [0x0F, 0x00, 0xD8, 0x0F, 0x00, 0xD1, 0x66, 0x0F, 0x00, 0xCA, 0x66, 0x0F, 0x00, 0xC6]) { s in
            s.gdtr = DescriptorTable(base: 0x5000, limit: 0x47)
            s.rax = 0x38; s.rcx = 0x40
        }
        loadGDT(m)
        // 0x38: available 32-bit TSS at 0x6000, limit 0x67; 0x40: LDT at 0x7000, limit 0xFF
        m.mem.load(0x5038, m.le(0x0000_8900_6000_0067))
        m.mem.load(0x5040, m.le(0x0000_8200_7000_00FF))
        XCTAssertEqual(m.step(4), .ok)
        let s = m.state
        XCTAssertEqual(s.tr.selector, 0x38); XCTAssertEqual(s.tr.base, 0x6000); XCTAssertEqual(s.tr.type, 0xB)
        XCTAssertEqual(m.read(0x5038 + 5, 1), 0x8B, "busy bit set in the GDT")
        XCTAssertEqual(s.ldtr.selector, 0x40); XCTAssertEqual(s.ldtr.base, 0x7000); XCTAssertEqual(s.ldtr.limit, 0xFF)
        XCTAssertEqual(s.rdx & 0xFFFF, 0x38); XCTAssertEqual(s.rsi & 0xFFFF, 0x40)
        let again = TestMachine(.protected32, code: [0x0F, 0x00, 0xD8]) { s in
            s.gdtr = DescriptorTable(base: 0x5000, limit: 0x47); s.rax = 0x38
        }
        again.mem.load(0x5038, again.le(0x0000_8B00_6000_0067))
        XCTAssertEqual(again.step(), .exception(.generalProtection(0x38), delivered: false), "LTR of a busy TSS")
    }
}
