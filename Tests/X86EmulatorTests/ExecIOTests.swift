import Foundation
import X86
@testable import X86Emulator
import XCTest

/// The `exec` input/output format (EXEC.md).
final class ExecIOTests: XCTestCase {
    func testParseRunAndReport() throws {
        let json = """
        {"mode": "real", "rip": "0x1000", "rax": "0x41", "rdx": "0x3f8", "rdi": "0x2000", "rcx": "0x0",
         "memory": {"0x1000": "ee e4 60 88 05 0f a2 f4", "0x2000": "00 00"},
         "ports": {"0x60": ["0x1c"]},
         "cpuid": [{"leaf": "0x1c", "eax": "0x11", "ebx": "0x22", "ecx": "0x33", "edx": "0x44"}]}
        """
        let input = try ExecInput.parse(Data(json.utf8))
        let out = Exec.run(input, count: 100, untilHalt: true)
        XCTAssertEqual(out.last, .halted)
        XCTAssertEqual(out.executed, 5)
        XCTAssertEqual(out.state.rax, 0x11)
        XCTAssertEqual(out.state.rbx, 0x22)
        XCTAssertEqual(out.memoryWritten.map(\.gpa), [0x2000])
        XCTAssertEqual(out.memoryWritten.first?.bytes, [0x1C])
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: out.jsonData()) as? [String: Any])
        XCTAssertEqual(obj["result"] as? String, "halted")
        let ports = try XCTUnwrap(obj["ports"] as? [[String: Any]])
        XCTAssertEqual(ports.map { $0["direction"] as? String }, ["out", "in"])
        XCTAssertEqual(ports.first?["value"] as? String, "0x41")
        XCTAssertEqual((obj["memory_written"] as? [String: String])?["0x2000"], "1c")
        let st = try XCTUnwrap(obj["state"] as? [String: Any])
        XCTAssertEqual(st["rip"] as? String, "0x1008")
        // The output state reads back as an input state.
        let again = try ExecInput.parse(try JSONSerialization.data(withJSONObject: ["state": st]))
        XCTAssertEqual(again.state, out.state)
    }

    func testExceptionIsReportedWithErrorCode() throws {
        let input = try ExecInput.parse(Data("""
        {"mode": "protected32", "cpl": 3, "rip": "0x0", "memory": {"0x0": "fa"}}
        """.utf8))
        let out = Exec.run(input, count: 1, untilHalt: false)
        XCTAssertEqual(out.last, .exception(.generalProtection(0), delivered: false))
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: out.jsonData()) as? [String: Any])
        let e = try XCTUnwrap(obj["exception"] as? [String: Any])
        XCTAssertEqual(e["name"] as? String, "#GP")
        XCTAssertEqual(e["error_code"] as? String, "0x0")
    }

    func testBadInputsSayWhatIsWrong() {
        func message(_ s: String) -> String {
            do { _ = try ExecInput.parse(Data(s.utf8)); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(message("not json").contains("not valid JSON"))
        XCTAssertTrue(message("{\"mode\": \"long32\"}").contains("unknown mode"))
        XCTAssertTrue(message("{\"memory\": {\"zz\": \"00\"}}").contains("not a hex number"))
        XCTAssertTrue(message("{\"memory\": {\"0x10\": \"0g\"}}").contains("hex byte string"))
        XCTAssertTrue(message("{\"ports\": {\"0x10000\": \"1\"}}").contains("16-bit"))
        XCTAssertTrue(message("{\"rax\": \"xyz\"}").contains("not a hex number"))
    }

    func testUnbackedAndUnansweredAreNamed() throws {
        let input = try ExecInput.parse(Data("""
        {"mode": "real", "rip": "0x1000", "memory": {"0x1000": "8b 1e 00 30"}}
        """.utf8))
        let out = Exec.run(input, count: 1, untilHalt: false)
        XCTAssertEqual(out.last, .unbackedMemory(0x3000))
        XCTAssertEqual(out.state.rip, 0x1000)
    }
}
