import Foundation
import X86
@testable import X86Emulator
import XCTest

/// XCR0 as part of the state: XSETBV/XGETBV against it, VEX instructions gated by it and by
/// CR4.OSXSAVE, and its JSON form.
final class ExecXCR0Tests: XCTestCase {
    let ud = CPUException.invalidOpcode()
    static let xsetbv: [UInt8] = [0x0F, 0x01, 0xD1], xgetbv: [UInt8] = [0x0F, 0x01, 0xD0]
    static let vpxor: [UInt8] = [0xC5, 0xF9, 0xEF, 0xC0]  // vpxor xmm0, xmm0, xmm0

    func machine(_ code: [UInt8], osxsave: Bool = true, _ setup: (inout CPUState) -> Void = { _ in }) -> TestMachine {
        TestMachine(.long64, code: code) { s in
            s.cr4 |= CR4.osfxsr | (osxsave ? CR4.osxsave : 0)
            setup(&s)
        }
    }

    func testXSETBVWritesTheStateAndVEXFollowsIt() {
        let m = machine(ExecXCR0Tests.xsetbv + ExecXCR0Tests.vpxor) { s in s.rax = 3; s.rcx = 0; s.rdx = 0 }
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.xcr0, 3)
        XCTAssertEqual(m.step(), .exception(ud, delivered: false), "AVX state disabled in XCR0: VEX is #UD")
        let ok = machine(ExecXCR0Tests.vpxor) { s in s.xcr0 = 7 }
        XCTAssertEqual(ok.step(), .ok)
        XCTAssertEqual(ok.state.rip, 0x1004)
    }

    func testXGETBVReadsTheStatesXCR0() {
        let m = machine(ExecXCR0Tests.xgetbv) { s in s.xcr0 = 0x2E7; s.rcx = 0; s.rax = ~0; s.rdx = ~0 }
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax, 0x2E7); XCTAssertEqual(m.state.rdx, 0)
    }

    func testVEXIsUDWithoutOSXSAVE() {
        let m = machine(ExecXCR0Tests.vpxor, osxsave: false)
        XCTAssertEqual(m.step(), .exception(ud, delivered: false))
        let g = machine(ExecXCR0Tests.xgetbv, osxsave: false) { s in s.rcx = 0 }
        XCTAssertEqual(g.step(), .exception(ud, delivered: false))
    }

    func testXSETBVFaults() {
        func gp(_ rax: UInt64, cpl3: Bool = false, supported: UInt32? = nil, file: StaticString = #filePath, line: UInt = #line) {
            let m = machine(ExecXCR0Tests.xsetbv) { s in
                s.rax = rax; s.rcx = 0; s.rdx = 0
                if cpl3 {
                    s.cpl = 3
                    s.cs = Segment(selector: 0x1B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xAFB)
                    s.ss = Segment(selector: 0x23, base: 0, limit: 0xFFFF_FFFF, attributes: 0xCF3)
                }
            }
            if let sup = supported { m.cpuid.set(leaf: 0xD, subleaf: 0, CPUIDResult(eax: sup, ebx: 0, ecx: 0, edx: 0)) }
            m.cpu.cpuidSource = supported == nil ? nil : m.cpuid
            XCTAssertEqual(m.step(), .exception(.generalProtection(0), delivered: false), "xcr0 \(Hex.string(rax))", file: file, line: line)
            XCTAssertEqual(m.state.xcr0, 7, file: file, line: line)
        }
        gp(2)                        // x87 bit clear
        gp(5)                        // AVX without SSE
        gp(0xF)                      // bit 3 not supported (no CPUID: x87/SSE/AVX only)
        gp(0x27, supported: 0xE7)    // AVX-512 components must go together
        gp(0xE3, supported: 0xE7)    // ... and with AVX
        gp(3, cpl3: true)            // CPL0 only
        // With CPUID saying AVX-512 state exists, all three components together are fine.
        let m = machine(ExecXCR0Tests.xsetbv) { s in s.rax = 0xE7; s.rcx = 0; s.rdx = 0 }
        m.cpuid.set(leaf: 0xD, subleaf: 0, CPUIDResult(eax: 0xE7, ebx: 0, ecx: 0, edx: 0))
        m.cpu.cpuidSource = m.cpuid
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.xcr0, 0xE7)
    }

    func testXCR0InTheExecJSON() throws {
        let json = """
        {"mode": "long64", "cr4": "0x40620", "xcr0": "0x3", "rip": "0x1000", "cr3": "0x70000",
         "memory": {"0x1000": "c5 f9 ef c0", "0x70000": "07 10 07 00 00 00 00 00",
                    "0x71000": "87 00 00 00 00 00 00 00"}}
        """
        let input = try ExecInput.parse(Data(json.utf8))
        XCTAssertEqual(input.state.xcr0, 3)
        let out = Exec.run(input, count: 1, untilHalt: false)
        XCTAssertEqual(out.last, .exception(ud, delivered: false))
        let text = String(decoding: try JSONEncoder().encode(out.state), as: UTF8.self)
        XCTAssertTrue(text.contains("\"xcr0\":\"0x3\""), text)
        // A state without the field reads as 7.
        let old = try JSONDecoder().decode(CPUState.self, from: Data(#"{"mode": "long64"}"#.utf8))
        XCTAssertEqual(old.xcr0, 7)
        XCTAssertEqual(CPUState().differingFields(from: { var s = CPUState(); s.xcr0 = 3; return s }()), ["xcr0"])
    }
}
