import Foundation
import XCTest

/// `exitscope run` as a user runs it: the built binary, its output, summary and status.
final class RunCommandTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        try CLI.requireKVM()
        dir = try CLI.makeTemporaryDirectory("run-cli")
    }
    override func tearDownWithError() throws { if !dir.isEmpty { try? FileManager.default.removeItem(atPath: dir) } }

    func exitscope(_ args: [String]) throws -> (status: Int32, out: String, err: String) { try CLI.run(args) }

    func flat(_ name: String, _ bytes: [UInt8]) throws -> String {
        let path = dir + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    // mov dx,0x3f8; mov al,'H'; out dx,al; mov al,'i'; out dx,al; cli; hlt
    let hello: [UInt8] = [0xBA, 0xF8, 0x03, 0xB0, 0x48, 0xEE, 0xB0, 0x69, 0xEE, 0xFA, 0xF4]

    func testFlatRealModeGuestPrintsAndHalts() throws {
        let r = try exitscope(["run", "--flat", "--load-address", "0x1000", try flat("hello.bin", hello)])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "Hi")
        XCTAssertTrue(r.err.contains("stopped: every vCPU halted with interrupts off"), r.err)
        XCTAssertTrue(r.err.contains("IO: 2"), r.err)
    }

    func testSerialOutToFileAndJSONSummary() throws {
        let out = dir + "/serial.txt"
        let r = try exitscope(["run", "--flat", "--load-address", "0x1000", "--serial-out", out, "--json",
                               try flat("hello.bin", hello)])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "")
        XCTAssertEqual(try String(contentsOfFile: out, encoding: .utf8), "Hi")
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.err.utf8)) as? [String: Any], r.err)
        XCTAssertEqual(json["stop"] as? String, "halted")
        XCTAssertEqual(json["exitStatus"] as? Int, 0)
        XCTAssertEqual((json["exitsByReason"] as? [String: Int])?["HLT"], 1)
    }

    func testSerialInputIsEchoed() throws {
        // mov dx,0x3f8; l: add dx,5; in al,dx; test al,1; jz done; sub dx,5; in al,dx; out dx,al; jmp l; done: cli; hlt
        let code: [UInt8] = [0xBA, 0xF8, 0x03, 0x83, 0xC2, 0x05, 0xEC, 0xA8, 0x01, 0x74, 0x07, 0x83, 0xEA, 0x05,
                             0xEC, 0xEE, 0xEB, 0xF1, 0xFA, 0xF4]
        let input = dir + "/in.txt"
        try "echo".write(toFile: input, atomically: true, encoding: .utf8)
        let r = try exitscope(["run", "--flat", "--load-address", "0x1000", "--serial-in", input, try flat("echo.bin", code)])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "echo")
    }

    func testExitStatusTimeoutAndMaxExits() throws {
        // mov dx,0x501; mov al,42; out dx,al
        var r = try exitscope(["run", "--flat", "--load-address", "0x1000", try flat("e.bin", [0xBA, 0x01, 0x05, 0xB0, 0x2A, 0xEE])])
        XCTAssertEqual(r.status, 42, r.err)
        r = try exitscope(["run", "--flat", "--load-address", "0x1000", "--timeout", "0.3", try flat("spin.bin", [0xEB, 0xFE])])
        XCTAssertEqual(r.status, 124, r.err)
        XCTAssertTrue(r.err.contains("timed out"), r.err)
        r = try exitscope(["run", "--flat", "--load-address", "0x1000", "--max-exits", "10", "--quiet",
                           try flat("loop.bin", [0xBA, 0xFF, 0x03, 0xEE, 0xEB, 0xFD])])
        XCTAssertEqual(r.status, 125, r.err)
        XCTAssertEqual(r.err, "")
    }

    func testTripleFaultReportAndStatus() throws {
        let r = try exitscope(["run", "--flat", "--load-address", "0x100000", "--mode", "long64",
                               try flat("tf.bin", [0x90, 0x0F, 0x0B])])
        XCTAssertEqual(r.status, 122, r.err)
        XCTAssertTrue(r.err.contains("vCPU 0: SHUTDOWN"), r.err)
        XCTAssertTrue(r.err.contains("RIP 0x100001"), r.err)
        XCTAssertTrue(r.err.contains("instruction bytes: 0f 0b"), r.err)
    }

    func testBadInputIsOneClearMessage() throws {
        var r = try exitscope(["run", dir + "/missing"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.hasPrefix("exitscope: error: "), r.err)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        r = try exitscope(["run", try flat("notelf.bin", [1, 2, 3, 4])])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("not an ELF file"), r.err)
        r = try exitscope(["run", "--flat", "--load-address", "0x1000", "--mode", "vm86", try flat("x.bin", [0xF4])])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("mode 'vm86'"), r.err)
        r = try exitscope(["run", "--flat", try flat("y.bin", [0xF4])])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.err.contains("--load-address"), r.err)
        r = try exitscope(["run", "--flat", "--load-address", "0x1000", "--memory", "999999", try flat("z.bin", [0xF4])])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("memory"), r.err)
    }
}
