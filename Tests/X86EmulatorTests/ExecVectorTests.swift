import X86
@testable import X86Emulator
import XCTest

/// Group 4: SSE/AVX moves and logic on memory, with the enable checks (CR0/CR4/XCR0).
final class ExecVectorTests: XCTestCase {
    static let code: [UInt8] = [0xF3, 0x0F, 0x6F, 0x0B,              // movdqu xmm1, [rbx]
                                0x66, 0x0F, 0xEF, 0xCA,              // pxor xmm1, xmm2
                                0x66, 0x0F, 0x7F, 0x4B, 0x20,        // movdqa [rbx+0x20], xmm1
                                0xC5, 0xFE, 0x6F, 0x1B,              // vmovdqu ymm3, [rbx]
                                0xC5, 0xE1, 0xEF, 0xE3,              // vpxor xmm4, xmm3, xmm3
                                0x66, 0x48, 0x0F, 0x7E, 0xC8,        // movq rax, xmm1
                                0x66, 0x0F, 0x6E, 0xE9,              // movd xmm5, ecx
                                0xC5, 0xFE, 0x7F, 0x5B, 0x40,        // vmovdqu [rbx+0x40], ymm3
                                0x66, 0x0F, 0x6F, 0x43, 0x08]        // movdqa xmm0, [rbx+8]: misaligned

    func machine() -> TestMachine {
        let m = TestMachine(.long64, code: ExecVectorTests.code) { s in
            s.cr4 |= CR4.osfxsr | CR4.osxsave
            s.rbx = 0x3000; s.rcx = 0xFFFF_FFFF_8765_4321
        }
        m.mem.load(0x3000, (0..<32).map { UInt8($0) })
        m.cpu.setVectorRegister(2, (0xFF, 0xFF00, 0xAAAA, 0xBBBB))
        m.cpu.setVectorRegister(4, (1, 2, 3, 4))
        m.cpu.setVectorRegister(5, (9, 9, 9, 9))
        return m
    }

    func testMovesAndLogic() {
        let m = machine()
        XCTAssertEqual(m.step(3), .ok)
        let lo: UInt64 = 0x0706_0504_0302_0100, hi: UInt64 = 0x0F0E_0D0C_0B0A_0908
        XCTAssertEqual(m.cpu.vectorRegister(1).0, lo ^ 0xFF)
        XCTAssertEqual(m.cpu.vectorRegister(1).1, hi ^ 0xFF00)
        XCTAssertEqual(m.read(0x3020, 8), lo ^ 0xFF)
        XCTAssertEqual(m.read(0x3028, 8), hi ^ 0xFF00)
        XCTAssertEqual(m.step(), .ok)  // vmovdqu ymm3
        XCTAssertEqual(m.cpu.vectorRegister(3).3, 0x1F1E_1D1C_1B1A_1918)
        XCTAssertEqual(m.step(), .ok)  // vpxor xmm4: VEX.128 zeroes bits 255:128
        let v4 = m.cpu.vectorRegister(4)
        XCTAssertTrue(v4 == (0, 0, 0, 0), "\(v4)")
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.state.rax, lo ^ 0xFF)
        XCTAssertEqual(m.step(), .ok)  // movd xmm5, ecx: zero-extends to 128 bits, keeps 255:128
        XCTAssertTrue(m.cpu.vectorRegister(5) == (0x8765_4321, 0, 9, 9))
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.read(0x3058, 8), 0x1F1E_1D1C_1B1A_1918)
        XCTAssertEqual(m.step(), .exception(.generalProtection(0), delivered: false), "MOVDQA needs 16-byte alignment")
    }

    func testEnableChecks() {
        let noSSE = TestMachine(.long64, code: ExecVectorTests.code) { s in s.rbx = 0x3000 }
        XCTAssertEqual(noSSE.step(), .exception(.invalidOpcode(), delivered: false), "CR4.OSFXSR clear")
        let ts = TestMachine(.long64, code: ExecVectorTests.code) { s in
            s.rbx = 0x3000; s.cr4 |= CR4.osfxsr; s.cr0 |= CR0.ts
        }
        XCTAssertEqual(ts.step(), .exception(.deviceNotAvailable(), delivered: false), "CR0.TS set")
        let noAVX = TestMachine(.long64, code: Array(ExecVectorTests.code[13...])) { s in s.rbx = 0x3000; s.cr4 |= CR4.osfxsr }
        XCTAssertEqual(noAVX.step(), .exception(.invalidOpcode(), delivered: false), "CR4.OSXSAVE clear")
    }

    /// LDMXCSR/STMXCSR (0F AE /2, /3): the Linux boot's kernel_fpu_begin loads MXCSR this way.
    func testLoadAndStoreMXCSR() {
        let code: [UInt8] = [0x0F, 0xAE, 0x54, 0x24, 0x04,   // ldmxcsr [rsp+4]
                             0x0F, 0xAE, 0x5B, 0x10,         // stmxcsr [rbx+0x10]
                             0x0F, 0xAE, 0x53, 0x20]         // ldmxcsr [rbx+0x20]: reserved bit set
        let m = TestMachine(.long64, code: code) { s in s.cr4 |= CR4.osfxsr; s.rsp = 0x2000; s.rbx = 0x3000 }
        m.mem.load(0x2004, [0xC0, 0x9F, 0, 0])                // 0x9FC0: all masked, round toward zero, DAZ
        m.mem.load(0x3010, [0xEE, 0xEE, 0xEE, 0xEE, 0x55])
        m.mem.load(0x3020, [0x80, 0x1F, 0x01, 0x00])          // bit 16 is reserved
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.cpu.mxcsr, 0x9FC0)
        XCTAssertEqual(m.step(), .ok)
        XCTAssertEqual(m.read(0x3010, 4), 0x9FC0)
        XCTAssertEqual(m.read(0x3014, 1), 0x55, "STMXCSR writes 4 bytes")
        XCTAssertEqual(m.step(), .exception(.generalProtection(0), delivered: false))
        XCTAssertEqual(m.cpu.mxcsr, 0x9FC0)
        let noSSE = TestMachine(.long64, code: code) { s in s.rsp = 0x2000 }
        XCTAssertEqual(noSSE.step(), .exception(.invalidOpcode(), delivered: false), "CR4.OSFXSR clear")
    }
}
