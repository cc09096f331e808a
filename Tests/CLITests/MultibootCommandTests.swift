import Foundation
import XCTest

/// `exitscope run/record --multiboot` with the Multiboot sample kernel (Samples/multiboot.S),
/// on /dev/kvm.
final class MultibootCommandTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    var sample: String { Self.repo + "/Samples/multiboot" }

    func testSampleSeesItsInformationBlockFirmwareConfigAndTestDevice() throws {
        try CLI.requireKVM()
        let r = try CLI.run(["run", "--multiboot", sample, "--append", "hello multiboot", "--smp", "2",
                             "--memory", "64", "--timeout", "60"])
        XCTAssertEqual(r.status, 0, r.out + r.err)
        let lines = r.out.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "multiboot: magic 0x2badb002")
        // mem_upper = 64 MiB - 1 MiB - the VMM's 64 KiB, in KiB; the map's RAM at 1 MiB is as long.
        let upper = (64 << 10) - 1024 - 64
        XCTAssertTrue(lines.contains { $0.hasSuffix(String(format: "mem_lower 0x00000280 mem_upper 0x%08x", upper)) }, r.out)
        XCTAssertTrue(lines.contains(String(format: "mmap: entries 0x00000005 ram at 1 MiB 0x%08x", upper << 10)), r.out)
        // As QEMU: the kernel's file name, a space, the --append text.
        XCTAssertTrue(lines.contains { $0.hasPrefix("cmdline: \"") && $0.hasSuffix("/multiboot.elf hello multiboot\"") }, r.out)
        XCTAssertTrue(lines.contains("fw_cfg: QEMU cpus 0x00000002 ram 0x04000000"), r.out)
        XCTAssertTrue(lines.contains("testdev latch: 0xbeefaa44"), r.out)
        XCTAssertTrue(lines.contains("testdev memory: 0xcafe5a0d"), r.out)
        XCTAssertEqual(lines.last, "multiboot: PASS")
        XCTAssertTrue(r.err.contains("stopped: guest system event SHUTDOWN"), r.err)
    }

    func testRecordTakesTheSameOptions() throws {
        try CLI.requireKVM()
        let dir = try CLI.makeTemporaryDirectory("multiboot")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let trace = dir + "/mb.estrace"
        let r = try CLI.run(["record", "--multiboot", sample, "--env", "NR_CPUS=1", "--append", "rec",
                             "--serial-out", dir + "/serial.txt", "-o", trace, "--timeout", "60"])
        XCTAssertEqual(r.status, 0, r.err)
        let serial = try String(contentsOfFile: dir + "/serial.txt", encoding: .utf8)
        XCTAssertTrue(serial.contains(".elf rec\"\n"), serial)
        XCTAssertTrue(serial.hasSuffix("multiboot: PASS\n"), serial)
        XCTAssertTrue(FileManager.default.fileExists(atPath: trace))
    }

    func testBadMultibootInputIsAMessage() throws {
        guard FileManager.default.fileExists(atPath: CLI.binary.path) else { throw XCTSkip("exitscope not built") }
        let dir = try CLI.makeTemporaryDirectory("multiboot-bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let notKernel = dir + "/plain.bin"
        FileManager.default.createFile(atPath: notKernel, contents: Data(repeating: 0x90, count: 64))
        var r = try CLI.run(["run", "--multiboot", notKernel])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("error"), r.err)
        r = try CLI.run(["run", "--append", "x", notKernel])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("--multiboot"), r.err)
        r = try CLI.run(["run", "--multiboot", "--mode", "long64", sample])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("protected32"), r.err)
    }
}
