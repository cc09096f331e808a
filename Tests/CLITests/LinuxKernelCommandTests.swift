import Foundation
import XCTest

/// `exitscope run --kernel`: a synthetic bzImage whose 64-bit entry reads the zero page it was
/// handed in RSI (the real Debian kernel boot is a benchmark: Samples/linux/boot.sh).
final class LinuxKernelCommandTests: XCTestCase {
    /// A minimal bzImage (boot protocol 2.15): the setup header, and at the protected-mode
    /// kernel's +0x200 code that prints the command line (cmd_line_ptr, 0x228) on COM1 and exits
    /// through port 0x501 with the e820 entry count (0x1E8) as status.
    static func tinyBzImage() -> Data {
        var f = [UInt8](repeating: 0, count: 3 * 512 + 0x400)
        func put(_ o: Int, _ v: UInt64, _ n: Int) { for i in 0..<n { f[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        f[0x1F1] = 2
        put(0x1FE, 0xAA55, 2)
        f[0x201] = 0x66
        put(0x202, 0x5372_6448, 4)
        put(0x206, 0x020F, 2)
        f[0x211] = 0x01
        put(0x22C, 0x7FFF_FFFF, 4)
        put(0x230, 0x200000, 4)
        f[0x234] = 1
        put(0x236, 0x01, 2)
        put(0x238, 0x7FF, 4)
        put(0x258, 0x100_0000, 8)
        put(0x260, 0x10_0000, 4)
        let code: [UInt8] = [
            0x8A, 0x86, 0xE8, 0x01, 0x00, 0x00,   // mov al, [rsi+0x1e8]   e820_entries
            0x88, 0xC3,                           // mov bl, al
            0x8B, 0xB6, 0x28, 0x02, 0x00, 0x00,   // mov esi, [rsi+0x228]  cmd_line_ptr
            0x66, 0xBA, 0xF8, 0x03,               // mov dx, 0x3f8
            0xAC,                                 // 1: lodsb
            0x84, 0xC0,                           // test al, al
            0x74, 0x03,                           // jz 2f
            0xEE,                                 // out dx, al
            0xEB, 0xF8,                           // jmp 1b
            0x88, 0xD8,                           // 2: mov al, bl
            0x66, 0xBA, 0x01, 0x05,               // mov dx, 0x501
            0xEE,                                 // out dx, al
        ]
        f.replaceSubrange(0x600 + 0x200..<0x600 + 0x200 + code.count, with: code)
        return Data(f)
    }

    func testEntryGetsTheZeroPageInRSI() throws {
        try CLI.requireKVM()
        let dir = try CLI.makeTemporaryDirectory("bzimage")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kernel = dir + "/bzImage"
        FileManager.default.createFile(atPath: kernel, contents: Self.tinyBzImage())
        let r = try CLI.run(["run", "--kernel", kernel, "--append", "hello linux", "--memory", "64", "--timeout", "60"])
        XCTAssertEqual(r.out, "hello linux")
        XCTAssertEqual(r.status, 4, "e820 entries: " + r.err)
    }

    func testBadKernelInputIsAMessage() throws {
        guard FileManager.default.fileExists(atPath: CLI.binary.path) else { throw XCTSkip("exitscope not built") }
        let dir = try CLI.makeTemporaryDirectory("bzimage-bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let bad = dir + "/notlinux"
        var bytes = Self.tinyBzImage()
        bytes[0x202] = 0
        FileManager.default.createFile(atPath: bad, contents: bytes)
        var r = try CLI.run(["run", "--kernel", bad])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("HdrS"), r.err)
        r = try CLI.run(["run", "--kernel", bad, "--initrd", "a", "--initrd", "b"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("one --initrd"), r.err)
        r = try CLI.run(["run", "--kernel", bad, "Samples/io-loop"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("not both"), r.err)
        r = try CLI.run(["run"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("--kernel"), r.err)
        // pref_address + init_size beyond RAM: says how much memory to give.
        let good = dir + "/bzImage"
        FileManager.default.createFile(atPath: good, contents: Self.tinyBzImage())
        r = try CLI.run(["run", "--kernel", good, "--memory", "8"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("--memory"), r.err)
    }
}
