import X86
import XCTest
@testable import X86Emulator

func hexBytes(_ s: String) -> [UInt8] {
    let d = Array(s.filter { !$0.isWhitespace })
    return stride(from: 0, to: d.count, by: 2).map { UInt8(String(d[$0...$0 + 1]), radix: 16)! }
}

func decodeOK(_ hex: String, _ mode: DecoderMode = .bits64, vendor: CPUVendor = .amd,
              file: StaticString = #filePath, line: UInt = #line) -> Instruction? {
    switch decode(bytes: hexBytes(hex), mode: mode, vendor: vendor) {
    case .success(let i): return i
    case .failure(let e):
        XCTFail("\(hex) failed to decode: \(e)", file: file, line: line)
        return nil
    }
}

final class DecoderTests: XCTestCase {
    func testMemoryOperandWithSIB() throws {
        let i = try XCTUnwrap(decodeOK("48 8b 44 8b 10"))
        XCTAssertEqual(i.length, 5)
        XCTAssertEqual(i.mnemonic, .mov)
        XCTAssertEqual(i.operandSize, 64)
        XCTAssertEqual(i.operand(0), .register(Register(.gpr64, 0)))
        let m = try XCTUnwrap(i.operand(1).memory)
        XCTAssertEqual(m.base, Register(.gpr64, 3))
        XCTAssertEqual(m.index, Register(.gpr64, 1))
        XCTAssertEqual(m.scale, 4)
        XCTAssertEqual(m.displacement, 0x10)
        XCTAssertEqual(m.size, 8)
        XCTAssertEqual(m.segment, .ds)
        XCTAssertEqual(i.text, "mov rax, qword ptr [rbx+rcx*4+0x10]")
    }

    func testStackSegmentDefaultAndOverride() throws {
        let bp = try XCTUnwrap(decodeOK("8b 45 f8", .bits32))
        XCTAssertEqual(bp.operand(1).memory?.segment, .ss)
        XCTAssertEqual(bp.operand(1).memory?.displacement, -8)
        let sp = try XCTUnwrap(decodeOK("8b 04 24", .bits32))
        XCTAssertEqual(sp.operand(1).memory?.segment, .ss)
        let r12 = try XCTUnwrap(decodeOK("41 8b 04 24"))  // r12 base: DS, not SS
        XCTAssertEqual(r12.operand(1).memory?.segment, .ds)
        let es = try XCTUnwrap(decodeOK("26 8b 46 02", .bits16))  // es:[bp+2]
        XCTAssertEqual(es.operand(1).memory?.segment, .es)
        XCTAssertEqual(es.operand(1).memory?.base, Register(.gpr16, 5))
        let fs = try XCTUnwrap(decodeOK("64 48 8b 04 25 28 00 00 00"))
        XCTAssertEqual(fs.operand(1).memory?.segment, .fs)
        XCTAssertNil(fs.operand(1).memory?.base)
        XCTAssertEqual(fs.text, "mov rax, qword ptr fs:0x28")
        // In 64-bit mode a DS/ES/SS/CS override is ignored.
        let cs = try XCTUnwrap(decodeOK("2e 8b 00"))
        XCTAssertEqual(cs.operand(1).memory?.segmentOverridden, false)
    }

    func testRIPRelative() throws {
        let i = try XCTUnwrap(decodeOK("48 8d 05 10 00 00 00"))
        XCTAssertEqual(i.mnemonic, .lea)
        XCTAssertEqual(i.operand(1).memory?.ripRelative, true)
        XCTAssertEqual(i.operand(1).memory?.displacement, 0x10)
        // the same bytes in 32-bit mode are an absolute disp32
        let j = try XCTUnwrap(decodeOK("8d 05 10 00 00 00", .bits32))
        XCTAssertEqual(j.operand(1).memory?.ripRelative, false)
        XCTAssertNil(j.operand(1).memory?.base)
    }

    func testOperandSizeAttributes() throws {
        XCTAssertEqual(decodeOK("50")?.operandSize, 64)               // push: default 64
        XCTAssertEqual(decodeOK("66 50")?.operandSize, 16)
        XCTAssertEqual(decodeOK("50", .bits32)?.operandSize, 32)
        XCTAssertEqual(decodeOK("66 50", .bits16)?.operandSize, 32)
        XCTAssertEqual(decodeOK("0f 20 c0")?.operandSize, 64)         // mov r64, cr0: forced 64
        XCTAssertEqual(decodeOK("66 0f 20 c0")?.operand(0), .register(Register(.gpr64, 0)))
        XCTAssertEqual(decodeOK("01 d8")?.operandSize, 32)
        XCTAssertEqual(decodeOK("48 01 d8")?.operandSize, 64)
        XCTAssertEqual(decodeOK("66 48 01 d8")?.operandSize, 64)      // REX.W beats 66
        XCTAssertEqual(decodeOK("67 8b 00")?.addressSize, 32)
        XCTAssertEqual(decodeOK("67 8b 00", .bits16)?.addressSize, 32)
        // mov r64, imm64 is the only 8-byte immediate
        let movabs = try XCTUnwrap(decodeOK("48 b8 88 77 66 55 44 33 22 11"))
        XCTAssertEqual(movabs.length, 10)
        XCTAssertEqual(movabs.operand(1), .immediate(0x1122334455667788, size: 8))
        // Iz sign-extends to 64 bits
        XCTAssertEqual(decodeOK("48 05 ff ff ff ff")?.operand(1), .immediate(-1, size: 8))
        // Ib of 83 sign-extends to the operand size
        XCTAssertEqual(decodeOK("83 c0 ff")?.operand(1), .immediate(-1, size: 4))
    }

    func testNearBranchVendorDifference() throws {
        // AMD: 66 makes the near branch 16-bit (rel16); Intel ignores 66 in 64-bit mode (rel32).
        let amd = try XCTUnwrap(decodeOK("66 e8 10 00 00 00", vendor: .amd))
        XCTAssertEqual(amd.length, 4)
        XCTAssertEqual(amd.operandSize, 16)
        XCTAssertEqual(amd.operand(0), .relative(0x10))
        let intel = try XCTUnwrap(decodeOK("66 e8 10 00 00 00", vendor: .intel))
        XCTAssertEqual(intel.length, 6)
        XCTAssertEqual(intel.operandSize, 64)
        let jcc = try XCTUnwrap(decodeOK("66 0f 84 10 00 00 00", vendor: .intel))
        XCTAssertEqual(jcc.length, 7)
        XCTAssertEqual(decodeOK("66 0f 84 10 00 00 00", vendor: .amd)?.length, 5)
        XCTAssertEqual(decodeOK("e8 10 00", .bits16)?.length, 3)
    }

    func testStringAndIOInstructions() throws {
        let stos = try XCTUnwrap(decodeOK("f3 48 ab"))
        XCTAssertEqual(stos.mnemonic, .stos)
        XCTAssertTrue(stos.hasRep)
        XCTAssertEqual(stos.operand(0).memory?.segment, .es)
        XCTAssertEqual(stos.operand(0).memory?.base, Register(.gpr64, 7))
        XCTAssertEqual(stos.operand(0).memory?.size, 8)
        let outs = try XCTUnwrap(decodeOK("f3 26 6e", .bits16))  // rep outsb with es: override
        XCTAssertEqual(outs.mnemonic, .outs)
        XCTAssertEqual(outs.operand(1).memory?.segment, .es)
        XCTAssertEqual(outs.operand(1).memory?.base, Register(.gpr16, 6))
        let ins = try XCTUnwrap(decodeOK("67 6d"))
        XCTAssertEqual(ins.mnemonic, .ins)
        XCTAssertEqual(ins.operand(0).memory?.base, Register(.gpr32, 7))
        XCTAssertEqual(ins.operand(0).memory?.size, 4)
        XCTAssertEqual(decodeOK("e6 80")?.operand(0), .immediate(0x80, size: 1))
        XCTAssertEqual(decodeOK("ed")?.operand(0), .register(Register(.gpr32, 0)))
        XCTAssertEqual(decodeOK("66 ef")?.operand(1), .register(Register(.gpr16, 0)))
    }

    func testByteRegistersWithAndWithoutREX() throws {
        XCTAssertEqual(decodeOK("88 e0")?.operand(0), .register(Register(.gpr8, 0)))
        XCTAssertEqual(decodeOK("88 e0")?.operand(1), .register(Register(.gpr8, 4)))  // ah
        XCTAssertEqual(decodeOK("40 88 e0")?.operand(1), .register(Register(.gpr8rex, 4)))  // spl
        XCTAssertEqual(decodeOK("40 88 e0")?.text, "mov al, spl")
        XCTAssertEqual(decodeOK("45 88 c8")?.text, "mov r8b, r9b")
    }

    func testNopPauseAndXchg() throws {
        XCTAssertEqual(decodeOK("90")?.mnemonic, .nop)
        XCTAssertEqual(decodeOK("f3 90")?.mnemonic, .pause)
        XCTAssertEqual(decodeOK("41 90")?.mnemonic, .xchg)
        XCTAssertEqual(decodeOK("0f 1f 44 00 00")?.length, 5)
        XCTAssertEqual(decodeOK("66 2e 0f 1f 84 00 00 00 00 00")?.length, 10)
    }

    func testFailures() {
        XCTAssertEqual(decode(bytes: hexBytes("48 8b"), mode: .bits64), .failure(.truncated))
        XCTAssertEqual(decode(bytes: hexBytes("b8 00 00"), mode: .bits32), .failure(.truncated))
        XCTAssertEqual(decode(bytes: [], mode: .bits32), .failure(.truncated))
        XCTAssertEqual(decode(bytes: hexBytes("0f 0b"), mode: .bits64).map(\.mnemonic), .success(.ud2))
        XCTAssertEqual(decode(bytes: hexBytes("06"), mode: .bits64), .failure(.invalid))       // push es
        XCTAssertEqual(decode(bytes: hexBytes("06"), mode: .bits32).map(\.mnemonic), .success(.push))
        XCTAssertEqual(decode(bytes: hexBytes("8d c0"), mode: .bits64), .failure(.invalid))    // lea reg,reg
        XCTAssertEqual(decode(bytes: hexBytes("f0 01 c0"), mode: .bits64), .failure(.invalid)) // lock on reg
        XCTAssertEqual(decode(bytes: hexBytes("8e c8"), mode: .bits64), .failure(.invalid))    // mov cs, ax
        XCTAssertEqual(decode(bytes: [UInt8](repeating: 0x66, count: 14) + [0x90], mode: .bits64).map(\.length),
                       .success(15))
        XCTAssertEqual(decode(bytes: [UInt8](repeating: 0x66, count: 15) + [0x90], mode: .bits64), .failure(.tooLong))
        XCTAssertEqual(decode(bytes: [UInt8](repeating: 0x66, count: 20), mode: .bits64), .failure(.tooLong))
    }

    func testSystemInstructions() throws {
        XCTAssertEqual(decodeOK("0f 01 d8")?.mnemonic, .vmrun)
        XCTAssertEqual(decodeOK("0f 01 f8")?.mnemonic, .swapgs)
        XCTAssertEqual(decode(bytes: hexBytes("0f 01 f8"), mode: .bits32), .failure(.invalid))
        let lgdt = try XCTUnwrap(decodeOK("0f 01 15 00 10 00 00", .bits32))
        XCTAssertEqual(lgdt.mnemonic, .lgdt)
        XCTAssertEqual(lgdt.operand(0).memory?.size, 6)
        XCTAssertEqual(decodeOK("0f 01 10")?.operand(0).memory?.size, 10)
        XCTAssertEqual(decodeOK("0f 22 d8", .bits32)?.operand(0), .register(Register(.control, 3)))
        XCTAssertEqual(decodeOK("44 0f 22 c0")?.operand(0), .register(Register(.control, 8)))
        XCTAssertEqual(decodeOK("f0 0f 22 c0", .bits32)?.operand(0), .register(Register(.control, 8)))
        let far = try XCTUnwrap(decodeOK("ea 00 7c 00 00 08 00", .bits32))
        XCTAssertEqual(far.operand(0), .farPointer(selector: 8, offset: 0x7c00))
        XCTAssertEqual(decodeOK("66 ea 00 7c 08 00", .bits32)?.length, 6)
        // MOV r/m, Sreg: a register destination takes the operand size, memory is always 16 bits
        XCTAssertEqual(decodeOK("8c d8", .bits32)?.text, "mov eax, ds")
        XCTAssertEqual(decodeOK("8c 18", .bits32)?.operand(0).memory?.size, 2)
        XCTAssertEqual(decodeOK("0f c7 0e")?.mnemonic, .cmpxchg8b)
        XCTAssertEqual(decodeOK("f0 48 0f c7 0e")?.mnemonic, .cmpxchg16b)
        XCTAssertEqual(decodeOK("0f 38 f0 07")?.mnemonic, .movbe)
        XCTAssertEqual(decodeOK("cf")?.mnemonic, .iretd)
        XCTAssertEqual(decodeOK("48 cf")?.mnemonic, .iretq)
    }

    func testVectorEncodings() throws {
        XCTAssertEqual(decodeOK("c5 f8 28 c1")?.text, "vmovaps xmm0, xmm1")
        XCTAssertEqual(decodeOK("c5 fc 28 c1")?.text, "vmovaps ymm0, ymm1")
        XCTAssertEqual(decodeOK("0f 28 c1")?.text, "movaps xmm0, xmm1")
        XCTAssertEqual(decodeOK("66 0f ef c0")?.mnemonic, .pxor)
        XCTAssertEqual(decodeOK("0f ef c0")?.operand(0), .register(Register(.mmx, 0)))
        let bcast = try XCTUnwrap(decodeOK("c4 e2 7d 18 00"))
        XCTAssertEqual(bcast.mnemonic, .vbroadcastss)
        XCTAssertEqual(bcast.operand(1).memory?.size, 4)
        // EVEX: disp8 is scaled by the access size (64 bytes for a zmm load)
        let z = try XCTUnwrap(decodeOK("62 f1 7c 48 28 41 01"))
        XCTAssertEqual(z.mnemonic, .vmovaps)
        XCTAssertEqual(z.operand(0), .register(Register(.zmm, 0)))
        XCTAssertEqual(z.operand(1).memory?.displacement, 64)
        XCTAssertEqual(z.length, 7)
        // EVEX.R' and V' reach registers 16-31
        XCTAssertEqual(decodeOK("62 e1 7c 40 58 c0")?.text, "vaddps zmm16, zmm16, zmm0")
        // W selects the 64-bit GPR form only in 64-bit mode
        XCTAssertEqual(decodeOK("c4 e1 f9 7e c0")?.text, "vmovq rax, xmm0")
        XCTAssertEqual(decodeOK("c4 e1 f9 7e c0", .bits32)?.text, "vmovd eax, xmm0")
        // C4/C5 outside 64-bit mode are LES/LDS unless ModRM.mod is 11
        XCTAssertEqual(decodeOK("c4 00", .bits32)?.mnemonic, .les)
        XCTAssertEqual(decodeOK("62 00", .bits32)?.mnemonic, .bound)
        XCTAssertEqual(decode(bytes: hexBytes("66 c5 f8 28 c1"), mode: .bits64), .failure(.invalid))
        XCTAssertEqual(decode(bytes: hexBytes("c4 e2"), mode: .bits64), .failure(.truncated))
        // BMI uses VEX.vvvv for a general register
        XCTAssertEqual(decodeOK("c4 e2 f8 f2 c1")?.text, "andn rax, rax, rcx")
        XCTAssertEqual(decodeOK("c4 e3 7b f0 c1 05")?.text, "rorx eax, ecx, 0x5")
    }

    /// A VEX/XOP form that uses no vvvv operand needs VEX.vvvv = 1111b; anything else is #UD.
    func testUnusedVVVVMustBe1111b() {
        func invalid(_ hex: String, _ what: String, line: UInt = #line) {
            XCTAssertEqual(decode(bytes: hexBytes(hex), mode: .bits64), .failure(.invalid), what, line: line)
        }
        invalid("c4 e3 03 f0 c1 05", "rorx with vvvv=1111b inverted to 0000b")
        invalid("c4 e3 43 f0 c1 05", "rorx with vvvv=0111b")
        invalid("c5 f0 28 c1", "vmovaps with vvvv=1110b")
        invalid("c5 c0 77", "vzeroupper with vvvv=1000b")
        invalid("c4 e2 71 18 00", "vbroadcastss with vvvv=1110b")
        invalid("c4 e1 f1 7e c0", "vmovq with vvvv=1110b")
        invalid("8f e9 70 80 c1", "XOP vfrczps with vvvv=1110b")
        // Outside 64-bit mode too, including the high bit (which selects no register there).
        XCTAssertEqual(decode(bytes: hexBytes("c4 e1 38 28 c1"), mode: .bits32), .failure(.invalid), "vmovaps, vvvv=0111b, 32-bit")
        XCTAssertEqual(decodeOK("c5 f8 28 c1", .bits32)?.text, "vmovaps xmm0, xmm1")
        XCTAssertEqual(decodeOK("c4 e1 30 58 c1", .bits32)?.text, "vaddps xmm0, xmm1, xmm1", "vvvv as a register: high bit ignored")
        XCTAssertEqual(decodeOK("c5 f8 28 c1")?.text, "vmovaps xmm0, xmm1")
        XCTAssertEqual(decodeOK("c5 f8 77")?.mnemonic, .vzeroupper)
        XCTAssertEqual(decodeOK("8f e9 78 80 c1")?.mnemonic, .vfrczps)
        // Forms that use vvvv take any value.
        XCTAssertEqual(decodeOK("c5 f0 58 c1")?.text, "vaddps xmm0, xmm1, xmm1")
        XCTAssertEqual(decodeOK("c4 e2 70 f2 c1")?.text, "andn eax, ecx, ecx")
        XCTAssertEqual(decodeOK("c4 e2 70 f3 c9")?.text, "blsr ecx, ecx")
    }

    func testAMDXOP() throws {
        // XOP is 8F with map select >= 8; with a smaller map field, 8F is POP r/m
        XCTAssertEqual(decodeOK("8f e8 78 c0 c1 05")?.text, "vprotb xmm0, xmm1, 0x5")
        XCTAssertEqual(decodeOK("8f ea 78 10 c0 44 33 22 11")?.length, 9)   // TBM bextr with imm32
        XCTAssertEqual(decodeOK("8f e9 78 01 c8")?.mnemonic, .blcfill)
        XCTAssertEqual(decodeOK("8f c0")?.mnemonic, .pop)
        XCTAssertTrue(decodeOK("8f e8 78 c0 c1 05")?.prefixes.contains(.xop) ?? false)
        // 3DNow!: the opcode is the byte after the operands
        let pf = try XCTUnwrap(decodeOK("0f 0f 44 24 08 b4"))
        XCTAssertEqual(pf.mnemonic, .pfmul)
        XCTAssertEqual(pf.map, .amd3DNow)
        XCTAssertEqual(pf.length, 6)
        XCTAssertEqual(pf.operand(1).memory?.displacement, 8)
        XCTAssertEqual(decode(bytes: hexBytes("0f 0f c1"), mode: .bits64), .failure(.truncated))
        XCTAssertEqual(decode(bytes: hexBytes("0f 0f c1 00"), mode: .bits64), .failure(.invalid))
    }

    func testInPlaceDecodeMatchesResultAPI() throws {
        var r = Instruction()
        for hex in ["48 8b 44 8b 10", "f3 48 ab", "c5 fc 28 c1", "ea 00 7c 00 00 08 00", "90", "d9 e8"] {
            let b = hexBytes(hex)
            let mode: DecoderMode = hex.hasPrefix("ea") ? .bits32 : .bits64
            let err = b.withUnsafeBytes { X86Decoder.decode($0, mode: mode, into: &r) }
            XCTAssertNil(err)
            XCTAssertEqual(decode(bytes: b, mode: mode), .success(r), hex)
        }
        // stale operands from the previous decode do not leak into a shorter one
        XCTAssertEqual(r.operandCount, 0)
        XCTAssertEqual(r.operand(0), .none)
    }

    func testMnemonicRawValuesAreCaseIndices() {
        // The decoder converts table numbers to Mnemonic by bit cast; this is what makes it valid.
        XCTAssertEqual(MemoryLayout<Mnemonic>.size, 2)
        for (k, m) in Mnemonic.allCases.enumerated() { XCTAssertEqual(Int(m.rawValue), k) }
        XCTAssertEqual(unsafeBitCast(Mnemonic.cpuid.rawValue, to: Mnemonic.self), .cpuid)
        XCTAssertEqual(Mnemonic.in.name, "in")
    }

    func testX87() throws {
        XCTAssertEqual(decodeOK("d9 e8")?.mnemonic, .fld1)
        XCTAssertEqual(decodeOK("dc e1")?.text, "fsubr st(1), st(0)")
        XCTAssertEqual(decodeOK("de f9")?.mnemonic, .fdivp)
        let fld = try XCTUnwrap(decodeOK("db 2c 24"))
        XCTAssertEqual(fld.mnemonic, .fld)
        XCTAssertEqual(fld.operand(0).memory?.size, 10)
        XCTAssertEqual(decodeOK("d9 30", .bits16)?.operand(0).memory?.size, 14)  // fnstenv, 16-bit
    }
}
