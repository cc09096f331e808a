import X86
@testable import X86Emulator
import XCTest

/// `X86Executor.stateMatches`, replay's comparison without building the state: it must say
/// "equal" only when `state` equals the given state outside the masked RFLAGS bits.
final class ExecStateMatchTests: XCTestCase {
    /// A long-mode state with a distinct value in every field.
    func distinctState() -> CPUState {
        var s = CPUState.flat(.long64)
        for i in 0..<16 { s.setGPR(i, 0x1111_0000_0000_0000 &* UInt64(i + 1) &+ UInt64(i)) }
        s.rip = 0x1000
        s.rflags = 0x246
        s.fs = Segment(selector: 0x33, base: 0x7000_1000, limit: 0xFFFF, attributes: 0x0C93)
        s.gs = Segment(selector: 0x3B, base: 0x7000_2000, limit: 0xFFFF, attributes: 0x0C93)
        s.ldtr = Segment(selector: 0x48, base: 0x5000, limit: 0x67, attributes: 0x82)
        s.tr = Segment(selector: 0x40, base: 0x6000, limit: 0x67, attributes: 0x8B)
        s.gdtr = DescriptorTable(base: 0x9000, limit: 0x7F)
        s.idtr = DescriptorTable(base: 0xA000, limit: 0xFFF)
        s.cr2 = 0xDEAD_0000; s.cr3 = 0x70000; s.cr8 = 2; s.dr6 = 0xFFFF_0FF1; s.dr7 = 0x401
        s.star = 0x23_0010_0000_0000; s.lstar = 0xFFFF_8000_0000_1000; s.cstar = 0xFFFF_8000_0000_2000
        s.sfmask = 0x4700; s.kernelGSBase = 0xFFFF_8800_0000_0000; s.sysenterCS = 0x10
        s.sysenterESP = 0xFFFF_8000_0000_3000; s.sysenterEIP = 0xFFFF_8000_0000_4000; s.pat = 0x0007_0406_0007_0406 ^ 0x100
        s.xcr0 = 3
        return s
    }

    func testMatchesExactlyTheStateItHolds() {
        let s = distinctState()
        let cpu = X86Executor(state: s, memory: SparseMemory())
        XCTAssertEqual(cpu.state, s)
        XCTAssertTrue(cpu.stateMatches(s, flagMask: 0))
        XCTAssertEqual(cpu.instructionPointer, s.rip)
    }

    func testEveryFieldThatDiffersIsSeen() {
        let s = distinctState()
        let cpu = X86Executor(state: s, memory: SparseMemory())
        var changes: [(String, (inout CPUState) -> Void)] = []
        for i in 0..<16 { changes.append((GPR.names[i], { $0.setGPR(i, $0.gpr(i) ^ 0x10) })) }
        changes += [
            ("rip", { $0.rip ^= 1 }), ("rflags", { $0.rflags ^= RFLAGS.cf }),
            ("es", { $0.es.selector ^= 8 }), ("cs", { $0.cs.attributes ^= 0x100 }), ("ss", { $0.ss.limit ^= 1 }),
            ("ds", { $0.ds.base ^= 0x1000 }), ("fs", { $0.fs.base ^= 1 }), ("gs", { $0.gs.selector ^= 8 }),
            ("ldtr", { $0.ldtr.base ^= 8 }), ("tr", { $0.tr.limit ^= 1 }),
            ("gdtr", { $0.gdtr.limit ^= 1 }), ("idtr", { $0.idtr.base ^= 0x10 }),
            ("cr0", { $0.cr0 ^= CR0.wp }), ("cr2", { $0.cr2 ^= 1 }), ("cr3", { $0.cr3 ^= 0x1000 }),
            ("cr4", { $0.cr4 ^= CR4.pge }), ("cr8", { $0.cr8 ^= 1 }), ("efer", { $0.efer ^= EFER.nxe }),
            ("cpl", { $0.cpl ^= 3 }), ("dr6", { $0.dr6 ^= 1 }), ("dr7", { $0.dr7 ^= 2 }),
            ("star", { $0.star ^= 1 }), ("lstar", { $0.lstar ^= 1 }), ("cstar", { $0.cstar ^= 1 }),
            ("sfmask", { $0.sfmask ^= 1 }), ("kernel_gs_base", { $0.kernelGSBase ^= 1 }),
            ("sysenter_cs", { $0.sysenterCS ^= 1 }), ("sysenter_esp", { $0.sysenterESP ^= 1 }),
            ("sysenter_eip", { $0.sysenterEIP ^= 1 }), ("pat", { $0.pat ^= 1 }), ("xcr0", { $0.xcr0 ^= 4 }),
        ]
        for (name, change) in changes {
            var t = s
            change(&t)
            XCTAssertNotEqual(t, s, name)
            XCTAssertFalse(cpu.stateMatches(t, flagMask: 0), "\(name) differs")
        }
    }

    func testMaskedFlagsAreIgnoredAndOnlyThose() {
        let s = distinctState()
        let cpu = X86Executor(state: s, memory: SparseMemory())
        var t = s
        t.rflags ^= RFLAGS.af | RFLAGS.of
        XCTAssertTrue(cpu.stateMatches(t, flagMask: RFLAGS.af | RFLAGS.of))
        XCTAssertFalse(cpu.stateMatches(t, flagMask: RFLAGS.af))
        XCTAssertFalse(cpu.stateMatches(t, flagMask: 0))
    }

    func testAfterAnInstructionWithLazyFlags() {
        // ADD leaves its flags to be computed when read: the match must read them as `state` does.
        let m = TestMachine(.long64, code: [0x48, 0x01, 0xD8]) { s in s.rax = ~0; s.rbx = 1 }  // add rax, rbx
        XCTAssertEqual(m.step(), .ok)
        let after = m.cpu.state
        XCTAssertEqual(after.rax, 0)
        XCTAssertTrue(m.cpu.stateMatches(after, flagMask: 0))
        var wrongZF = after
        wrongZF.rflags ^= RFLAGS.zf
        XCTAssertFalse(m.cpu.stateMatches(wrongZF, flagMask: 0))
        XCTAssertTrue(m.cpu.stateMatches(wrongZF, flagMask: RFLAGS.zf))
    }
}
