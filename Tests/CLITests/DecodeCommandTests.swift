import Foundation
import XCTest

/// `exitscope decode` as a user runs it: the built binary, its listing, JSON lines and exit status.
final class DecodeCommandTests: XCTestCase {
    static var binary: URL {
        var u = Bundle(for: DecodeCommandTests.self).bundleURL
        while u.pathExtension == "xctest" || u.lastPathComponent == "Contents" { u.deleteLastPathComponent() }
        return u.appendingPathComponent("exitscope")
    }

    func exitscope(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        guard FileManager.default.fileExists(atPath: Self.binary.path) else {
            throw XCTSkip("exitscope binary not built at \(Self.binary.path)")
        }
        let p = Process()
        p.executableURL = Self.binary
        p.arguments = args
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile()
        let err = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    func testListing() throws {
        let r = try exitscope(["decode", "--mode", "64", "48 8b 44 8b 10 c3"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2)
        XCTAssertTrue(lines[0].contains("48 8b 44 8b 10"), lines[0])
        XCTAssertTrue(lines[0].hasSuffix("mov rax, qword ptr [rbx+rcx*4+0x10]"), lines[0])
        XCTAssertTrue(lines[1].hasPrefix("       5:"), lines[1])
        XCTAssertTrue(lines[1].hasSuffix("ret"), lines[1])
    }

    func testJSONLinesAndModes() throws {
        let r = try exitscope(["decode", "--mode", "16", "--json", "b8 00 4c cd 21"])
        XCTAssertEqual(r.status, 0, r.err)
        let objs = try r.out.split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        XCTAssertEqual(objs.count, 2)
        XCTAssertEqual(objs[0]["offset"] as? Int, 0)
        XCTAssertEqual(objs[0]["length"] as? Int, 3)
        XCTAssertEqual(objs[0]["bytes"] as? String, "b8004c")
        XCTAssertEqual(objs[0]["mnemonic"] as? String, "mov")
        XCTAssertEqual(objs[0]["text"] as? String, "mov ax, 0x4c00")
        XCTAssertEqual(objs[1]["offset"] as? Int, 3)
        XCTAssertEqual(objs[1]["text"] as? String, "int 0x21")
    }

    func testFileWithOffsetAndLength() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("decode-cli-\(getpid()).bin").path
        try Data([0xCC, 0xCC, 0x0F, 0x05, 0x90, 0xCC]).write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try exitscope(["decode", "--file", path, "--offset", "2", "--length", "3", "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out.split(separator: "\n").count, 2)
        XCTAssertTrue(r.out.contains("\"text\":\"syscall\""), r.out)
        XCTAssertTrue(r.out.contains("\"text\":\"nop\""), r.out)
    }

    func testUndecodableBytesAreListedNotFatal() throws {
        let r = try exitscope(["decode", "--mode", "64", "06 48 8b"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("(bad)"), r.out)
        XCTAssertTrue(r.out.contains("(truncated)"), r.out)
    }

    func testBadInputIsAClearError() throws {
        let hex = try exitscope(["decode", "--mode", "64", "4g 90"])
        XCTAssertNotEqual(hex.status, 0)
        XCTAssertTrue(hex.err.contains("bad hex"), hex.err)
        let odd = try exitscope(["decode", "909"])
        XCTAssertNotEqual(odd.status, 0)
        let mode = try exitscope(["decode", "--mode", "8", "90"])
        XCTAssertNotEqual(mode.status, 0)
        XCTAssertTrue(mode.err.contains("--mode"), mode.err)
        let missing = try exitscope(["decode", "--file", "/nonexistent/file.bin"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.err.contains("cannot read file"), missing.err)
        let offset = try exitscope(["decode", "--file", "/etc/hostname", "--offset", "0x100000"])
        XCTAssertNotEqual(offset.status, 0)
    }
}
