import X86
@testable import X86Emulator
import XCTest

/// Far transfers through call gates and task switches (TSS descriptors, task gates, IRET with
/// NT), each checked against states computed by hand from the APM (vol. 2, 4.11 and 12.3).
final class ExecGateTests: XCTestCase {
    /// Protected-mode GDT at 0x5000: 0x08 code32 DPL0, 0x10 data DPL0, 0x18 code32 DPL3,
    /// 0x20 data DPL3, 0x28 busy TSS32 at 0x6000, 0x30 32-bit call gate DPL3 -> 0x08:0x3000 with
    /// 2 parameters, 0x38 16-bit call gate DPL3 -> 0x08:0x3100 with 1 parameter, 0x40 available
    /// TSS32 at 0x6100, 0x48 task gate DPL3 -> 0x40, 0x50 32-bit call gate DPL0 -> 0x08:0x3000,
    /// 0x58 not-present call gate DPL3.
    static let gdt32: [UInt64] = [
        0, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00CF_FA00_0000_FFFF, 0x00CF_F200_0000_FFFF,
        0x0000_8B00_6000_0067,
        0x0000_EC02_0008_3000, 0x0000_E401_0008_3100,
        0x0000_8900_6100_0067, 0x0000_E500_0040_0000,
        0x0000_8C00_0008_3000, 0x0000_6C00_0008_3000,
    ]

    func protected32(code: [UInt8], user: Bool, _ setup: (inout CPUState) -> Void = { _ in }) -> TestMachine {
        let m = TestMachine(.protected32, code: code) { s in
            s.gdtr = DescriptorTable(base: 0x5000, limit: UInt16(ExecGateTests.gdt32.count * 8 - 1))
            s.tr = Segment(selector: 0x28, base: 0x6000, limit: 0x67, attributes: 0x8B)
            s.rsp = 0x7000
            if user {
                s.cpl = 3
                s.cs = Segment(selector: 0x1B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xCFB)
                for r in [\CPUState.ss, \CPUState.ds, \CPUState.es, \CPUState.fs, \CPUState.gs] {
                    s[keyPath: r] = Segment(selector: 0x23, base: 0, limit: 0xFFFF_FFFF, attributes: 0xCF3)
                }
            } else {
                s.cs = Segment(selector: 0x08, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC9B)
                for r in [\CPUState.ss, \CPUState.ds, \CPUState.es, \CPUState.fs, \CPUState.gs] {
                    s[keyPath: r] = Segment(selector: 0x10, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC93)
                }
            }
            setup(&s)
        }
        for (i, d) in ExecGateTests.gdt32.enumerated() { m.mem.load(0x5000 + UInt64(i * 8), m.le(d)) }
        m.mem.load(0x6004, m.le(0x9000, 4))  // TSS.ESP0
        m.mem.load(0x6008, m.le(0x10, 2))    // TSS.SS0
        return m
    }

    func testCall32GateToInnerLevelCopiesParametersAndRETFReturns() {
        // call far 0x33:0 (the offset in the instruction is ignored); at 0x3000: retf 8
        let m = protected32(code: [0x9A, 0x44, 0x33, 0x22, 0x11, 0x33, 0x00], user: true)
        m.mem.load(0x7000, m.le(0x1111_1111, 4) + m.le(0x2222_2222, 4))
        m.mem.load(0x3000, [0xCA, 0x08, 0x00])
        XCTAssertEqual(m.step(), .ok)
        var s = m.state
        XCTAssertEqual(s.cpl, 0); XCTAssertEqual(s.cs.selector, 0x08); XCTAssertEqual(s.rip, 0x3000)
        XCTAssertEqual(s.ss.selector, 0x10); XCTAssertEqual(s.rsp, 0x8FE8)
        XCTAssertEqual(m.read(0x8FFC, 4), 0x23, "old SS")
        XCTAssertEqual(m.read(0x8FF8, 4), 0x7000, "old ESP")
        XCTAssertEqual(m.read(0x8FF4, 4), 0x2222_2222, "parameter 1")
        XCTAssertEqual(m.read(0x8FF0, 4), 0x1111_1111, "parameter 0")
        XCTAssertEqual(m.read(0x8FEC, 4), 0x1B, "old CS")
        XCTAssertEqual(m.read(0x8FE8, 4), 0x1007, "return EIP")
        XCTAssertEqual(m.step(), .ok)
        s = m.state
        XCTAssertEqual(s.cpl, 3); XCTAssertEqual(s.cs.selector, 0x1B); XCTAssertEqual(s.rip, 0x1007)
        XCTAssertEqual(s.ss.selector, 0x23); XCTAssertEqual(s.rsp, 0x7008, "RETF 8 pops the parameters off the outer stack")
    }

    func testCall16GatePushesWordsAndCopiesOneWord() {
        let m = protected32(code: [0x9A, 0, 0, 0, 0, 0x3B, 0x00], user: true)
        m.mem.load(0x7000, m.le(0x1111_ABCD, 4))
        XCTAssertEqual(m.step(), .ok)
        let s = m.state
        XCTAssertEqual(s.rip, 0x3100); XCTAssertEqual(s.cpl, 0); XCTAssertEqual(s.rsp, 0x8FF6)
        XCTAssertEqual(m.read(0x8FFE, 2), 0x23); XCTAssertEqual(m.read(0x8FFC, 2), 0x7000)
        XCTAssertEqual(m.read(0x8FFA, 2), 0xABCD); XCTAssertEqual(m.read(0x8FF8, 2), 0x1B)
        XCTAssertEqual(m.read(0x8FF6, 2), 0x1007)
    }

    func testCallGateAtSamePrivilegeKeepsTheStack() {
        let m = protected32(code: [0x9A, 0, 0, 0, 0, 0x50, 0x00], user: false)
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rip, 0x3000); XCTAssertEqual(m.state.ss.selector, 0x10)
        XCTAssertEqual(m.state.rsp, 0x6FF8)
        XCTAssertEqual(m.read(0x6FFC, 4), 0x08); XCTAssertEqual(m.read(0x6FF8, 4), 0x1007)
    }

    func testCallGateFaults() {
        // JMP through a gate to a more privileged non-conforming segment: #GP(code selector).
        var m = protected32(code: [0xEA, 0, 0, 0, 0, 0x33, 0x00], user: true)
        XCTAssertEqual(m.step(), .exception(.generalProtection(0x08), delivered: false))
        XCTAssertEqual(m.state.cs.selector, 0x1B); XCTAssertEqual(m.state.rsp, 0x7000)
        // Gate DPL 0 < CPL 3: #GP(gate selector).
        m = protected32(code: [0x9A, 0, 0, 0, 0, 0x53, 0x00], user: true)
        XCTAssertEqual(m.step(), .exception(.generalProtection(0x50), delivered: false))
        // Not-present gate: #NP(gate selector).
        m = protected32(code: [0x9A, 0, 0, 0, 0, 0x5B, 0x00], user: true)
        XCTAssertEqual(m.step(), .exception(.notPresent(0x58), delivered: false))
        // The TSS's SS0 is a DPL3 segment: #TS(SS selector), nothing written.
        m = protected32(code: [0x9A, 0, 0, 0, 0, 0x33, 0x00], user: true)
        m.mem.load(0x6008, m.le(0x20, 2))
        XCTAssertEqual(m.step(), .exception(.invalidTSS(0x20), delivered: false))
        XCTAssertEqual(m.state.cpl, 3); XCTAssertEqual(m.state.ss.selector, 0x23); XCTAssertEqual(m.read(0x8FFC, 4), 0)
        // ESP0 too low for the frame (SS0 limited to 0xFFF, ESP0 0x10): #SS(SS selector).
        m = protected32(code: [0x9A, 0, 0, 0, 0, 0x33, 0x00], user: true)
        m.mem.load(0x5010, m.le(0x0040_9200_0000_0FFF))
        m.mem.load(0x6004, m.le(0x10, 4))
        XCTAssertEqual(m.step(), .exception(.stackFault(0x10), delivered: false))
        XCTAssertEqual(m.state.cpl, 3)
    }

    func testCall64GateFromUserToKernelAndRETFQ() {
        // Long mode GDT: 0x08 kernel code64, 0x10 kernel data, 0x18 user code64, 0x20 user data,
        // 0x28 64-bit TSS (16 bytes), 0x38 64-bit call gate DPL3 -> 0x08:0x3000 (16 bytes).
        let gdt: [UInt64] = [0, 0x00AF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF, 0x00AF_FA00_0000_FFFF,
                             0x00CF_F200_0000_FFFF, 0x0000_8B00_6000_0067, 0, 0x0000_EC00_0008_3000, 0]
        // call far [0x2000] (m16:32); at 0x3000: retfq
        let m = TestMachine(.long64, code: [0xFF, 0x1C, 0x25, 0x00, 0x20, 0x00, 0x00]) { s in
            s.cpl = 3
            s.cs = Segment(selector: 0x1B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xAFB)
            s.ss = Segment(selector: 0x23, base: 0, limit: 0xFFFF_FFFF, attributes: 0xCF3)
            s.rsp = 0x7000
            s.gdtr = DescriptorTable(base: 0x5000, limit: UInt16(gdt.count * 8 - 1))
            s.tr = Segment(selector: 0x28, base: 0x6000, limit: 0x67, attributes: 0x8B)
        }
        for (i, d) in gdt.enumerated() { m.mem.load(0x5000 + UInt64(i * 8), m.le(d)) }
        m.mem.load(0x2000, [0, 0, 0, 0, 0x3B, 0])
        m.mem.load(0x6004, m.le(0x9000))
        m.mem.load(0x3000, [0x48, 0xCB])
        XCTAssertEqual(m.step(), .ok)
        var s = m.state
        XCTAssertEqual(s.cpl, 0); XCTAssertEqual(s.cs.selector, 0x08); XCTAssertEqual(s.rip, 0x3000)
        XCTAssertEqual(s.ss.selector, 0, "a 64-bit gate loads a null SS with RPL = new CPL")
        XCTAssertEqual(s.rsp, 0x8FE0)
        XCTAssertEqual(m.read(0x8FF8, 8), 0x23); XCTAssertEqual(m.read(0x8FF0, 8), 0x7000)
        XCTAssertEqual(m.read(0x8FE8, 8), 0x1B); XCTAssertEqual(m.read(0x8FE0, 8), 0x1007)
        XCTAssertEqual(m.step(), .ok)
        s = m.state
        XCTAssertEqual(s.cpl, 3); XCTAssertEqual(s.cs.selector, 0x1B); XCTAssertEqual(s.rip, 0x1007)
        XCTAssertEqual(s.ss.selector, 0x23); XCTAssertEqual(s.rsp, 0x7000)
        // A gate whose upper half has a non-zero type field: #GP(gate selector).
        let bad = TestMachine(.long64, code: [0xFF, 0x1C, 0x25, 0x00, 0x20, 0x00, 0x00]) { s in
            s.gdtr = DescriptorTable(base: 0x5000, limit: UInt16(gdt.count * 8 - 1))
        }
        for (i, d) in gdt.enumerated() { bad.mem.load(0x5000 + UInt64(i * 8), bad.le(d)) }
        bad.mem.load(0x5040, bad.le(0x0000_0C00_0000_0000))
        bad.mem.load(0x2000, [0, 0, 0, 0, 0x38, 0])
        XCTAssertEqual(bad.step(), .exception(.generalProtection(0x38), delivered: false))
    }

    // MARK: task switches

    /// The TSS at 0x6100 (selector 0x40): a CPL0 task at 0x3200 with its own registers.
    func loadNewTask(_ m: TestMachine, eip: UInt64 = 0x3200, cs: UInt64 = 0x08, flags: UInt64 = 0x2) {
        m.mem.load(0x6120, m.le(eip, 4))
        m.mem.load(0x6124, m.le(flags, 4))
        for k in 0..<8 { m.mem.load(0x6128 + UInt64(k * 4), m.le(0xA0 + UInt64(k), 4)) }
        m.mem.load(0x6138, m.le(0x9800, 4))  // ESP
        for (k, sel) in [0x10, cs, 0x10, 0x10, 0, 0].enumerated() { m.mem.load(0x6148 + UInt64(k * 4), m.le(sel, 4)) }
    }

    func testJumpToTSSSwitchesTasksAndSavesTheOldOne() {
        let m = protected32(code: [0xEA, 0, 0, 0, 0, 0x40, 0x00], user: false) { s in s.rax = 0x1234; s.rflags = 0x202 }
        loadNewTask(m)
        XCTAssertEqual(m.step(), .ok)
        let s = m.state
        XCTAssertEqual(s.tr.selector, 0x40); XCTAssertEqual(s.tr.base, 0x6100); XCTAssertEqual(s.tr.type, 0xB)
        XCTAssertEqual(s.rip, 0x3200); XCTAssertEqual(s.rax, 0xA0); XCTAssertEqual(s.rsp, 0x9800); XCTAssertEqual(s.rdi, 0xA7)
        XCTAssertEqual(s.rflags, 0x2, "JMP does not set NT"); XCTAssertEqual(s.cs.selector, 0x08)
        XCTAssertEqual(s.fs.selector, 0); XCTAssertEqual(s.cr0 & CR0.ts, CR0.ts)
        XCTAssertEqual(m.read(0x5028 + 5, 1), 0x89, "the old TSS is no longer busy")
        XCTAssertEqual(m.read(0x5040 + 5, 1), 0x8B, "the new TSS is busy")
        XCTAssertEqual(m.read(0x6020, 4), 0x1007, "saved EIP is the next instruction")
        XCTAssertEqual(m.read(0x6024, 4), 0x202); XCTAssertEqual(m.read(0x6028, 4), 0x1234)
        XCTAssertEqual(m.read(0x6038, 4), 0x7000); XCTAssertEqual(m.read(0x604C, 2), 0x08)
        XCTAssertEqual(m.read(0x6100, 2), 0, "no back link for JMP")
    }

    func testCallThroughTaskGateAndIRETBack() {
        // From CPL3: call far 0x4B:0 (task gate DPL3 -> TSS 0x40); the new task runs iret.
        let m = protected32(code: [0x9A, 0, 0, 0, 0, 0x4B, 0x00], user: true) { s in s.rbx = 0x5555 }
        loadNewTask(m)
        m.mem.load(0x3200, [0xCF])
        XCTAssertEqual(m.step(), .ok)
        var s = m.state
        XCTAssertEqual(s.tr.selector, 0x40); XCTAssertEqual(s.cpl, 0); XCTAssertEqual(s.rip, 0x3200)
        XCTAssertEqual(s.rflags & RFLAGS.nt, RFLAGS.nt, "CALL sets NT in the new task")
        XCTAssertEqual(m.read(0x6100, 2), 0x28, "back link to the caller's TSS")
        XCTAssertEqual(m.read(0x5028 + 5, 1), 0x8B, "the caller's TSS stays busy")
        XCTAssertEqual(m.read(0x5040 + 5, 1), 0x8B)
        XCTAssertEqual(m.step(), .ok)  // iret with NT: back to the caller
        s = m.state
        XCTAssertEqual(s.tr.selector, 0x28); XCTAssertEqual(s.cpl, 3); XCTAssertEqual(s.cs.selector, 0x1B)
        XCTAssertEqual(s.rip, 0x1007); XCTAssertEqual(s.rbx, 0x5555); XCTAssertEqual(s.rsp, 0x7000)
        XCTAssertEqual(s.ss.selector, 0x23)
        XCTAssertEqual(m.read(0x5040 + 5, 1), 0x89, "IRET frees the task it leaves")
        XCTAssertEqual(m.read(0x6120, 4), 0x3201, "the left task's EIP is after its IRET")
        XCTAssertEqual(m.read(0x6124, 4) & UInt64(RFLAGS.nt), 0, "IRET saves the left task's flags with NT clear")
    }

    func testInterruptAndExceptionThroughTaskGates() {
        // IDT at 0x4000: vector 0x40 and #GP (13) are task gates to TSS 0x40.
        let m = protected32(code: [0xCD, 0x40], user: false) { s in s.idtr = DescriptorTable(base: 0x4000, limit: 0x7FF) }
        loadNewTask(m)
        m.mem.load(0x4000 + 0x40 * 8, m.le(0x0000_8500_0040_0000))
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.tr.selector, 0x40); XCTAssertEqual(m.state.rip, 0x3200)
        XCTAssertEqual(m.read(0x6020, 4), 0x1002); XCTAssertEqual(m.read(0x6100, 2), 0x28)
        XCTAssertEqual(m.state.rflags & RFLAGS.nt, RFLAGS.nt)

        // mov ds, ax with a selector past the GDT limit: #GP(0x98) delivered through a task gate,
        // the error code pushed on the new task's stack; the saved EIP is the faulting instruction.
        let g = protected32(code: [0x8E, 0xD8], user: false) { s in
            s.idtr = DescriptorTable(base: 0x4000, limit: 0x7FF); s.rax = 0x98
        }
        loadNewTask(g)
        g.mem.load(0x4000 + 13 * 8, g.le(0x0000_8500_0040_0000))
        g.cpu.deliverExceptions = true
        XCTAssertEqual(g.step(), .exception(.generalProtection(0x98), delivered: true))
        XCTAssertEqual(g.state.tr.selector, 0x40); XCTAssertEqual(g.state.rip, 0x3200)
        XCTAssertEqual(g.state.rsp, 0x97FC); XCTAssertEqual(g.read(0x97FC, 4), 0x98)
        XCTAssertEqual(g.read(0x6020, 4), 0x1000)
    }

    func testJumpToA16BitTSS() {
        // 0x60: available 16-bit TSS at 0x6200, limit 0x2B (the 16-bit format's minimum).
        let m = protected32(code: [0xEA, 0, 0, 0, 0, 0x60, 0x00], user: false) { s in
            s.gdtr.limit = 0x67; s.rax = 0xABCD_0000; s.rsp = 0x7000
            s.fs = Segment(selector: 0x10, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC93)
        }
        m.mem.load(0x5060, m.le(0x0000_8100_6200_002B))
        m.mem.load(0x620E, m.le(0x3300, 2) + m.le(0x0002, 2))                          // IP, FLAGS
        for k in 0..<8 { m.mem.load(0x6212 + UInt64(k * 2), m.le(0x1110 + UInt64(k), 2)) }  // AX..DI
        m.mem.load(0x621A, m.le(0x9000, 2))                                            // SP
        for (k, sel) in [0x10, 0x08, 0x10, 0x10, 0].enumerated() { m.mem.load(0x6222 + UInt64(k * 2), m.le(UInt64(sel), 2)) }
        XCTAssertEqual(m.step(), .ok)
        let s = m.state
        XCTAssertEqual(s.tr.selector, 0x60); XCTAssertEqual(s.tr.type, 3, "busy 16-bit TSS")
        XCTAssertEqual(s.rip, 0x3300); XCTAssertEqual(s.rsp & 0xFFFF, 0x9000)
        XCTAssertEqual(s.rax, 0xABCD_1110, "a 16-bit TSS loads the low 16 bits of each register")
        XCTAssertEqual(s.fs.selector, 0x10, "a 16-bit TSS has no FS/GS: they stay")
        XCTAssertEqual(s.cs.selector, 0x08); XCTAssertEqual(s.mode, .protected32)
        XCTAssertEqual(m.read(0x5060 + 5, 1), 0x83)
        XCTAssertEqual(m.read(0x6020, 4), 0x1007, "the old 32-bit TSS saved")
    }

    func testTaskSwitchFaults() {
        // A busy TSS as JMP target: #GP(selector), nothing changes.
        var m = protected32(code: [0xEA, 0, 0, 0, 0, 0x40, 0x00], user: false)
        m.mem.load(0x5040 + 5, [0x8B])
        XCTAssertEqual(m.step(), .exception(.generalProtection(0x40), delivered: false))
        XCTAssertEqual(m.state.tr.selector, 0x28)
        // New TSS limit below 0x67: #TS(selector).
        m = protected32(code: [0xEA, 0, 0, 0, 0, 0x40, 0x00], user: false)
        m.mem.load(0x5040, [0x50])
        XCTAssertEqual(m.step(), .exception(.invalidTSS(0x40), delivered: false))
        XCTAssertEqual(m.state.tr.selector, 0x28); XCTAssertEqual(m.read(0x6020, 4), 0)
        // The new task's CS is a data segment: #TS(CS selector) raised in the new task.
        m = protected32(code: [0xEA, 0, 0, 0, 0, 0x40, 0x00], user: false)
        loadNewTask(m, cs: 0x10)
        XCTAssertEqual(m.step(), .exception(.invalidTSS(0x10), delivered: false))
        XCTAssertEqual(m.state.tr.selector, 0x40, "the switch happened"); XCTAssertEqual(m.state.rip, 0x3200)
        XCTAssertEqual(m.read(0x6020, 4), 0x1007)
        // In long mode a JMP to a TSS descriptor is #GP(selector).
        let l = TestMachine(.long64, code: [0xFF, 0x2C, 0x25, 0x00, 0x20, 0x00, 0x00]) { s in
            s.gdtr = DescriptorTable(base: 0x5000, limit: 0x4F)
        }
        for (i, d) in ExecGateTests.gdt32.enumerated() { l.mem.load(0x5000 + UInt64(i * 8), l.le(d)) }
        l.mem.load(0x2000, [0, 0, 0, 0, 0x40, 0])
        XCTAssertEqual(l.step(), .exception(.generalProtection(0x40), delivered: false))
    }
}
