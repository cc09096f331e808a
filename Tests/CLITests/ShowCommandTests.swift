import Foundation
import XCTest

/// `exitscope show` as a user runs it, on the golden traces of Tests/TraceTests/Fixtures.
final class ShowCommandTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("TraceTests/Fixtures").path

    func show(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        guard FileManager.default.fileExists(atPath: CLI.binary.path) else {
            throw XCTSkip("exitscope binary not built at \(CLI.binary.path)")
        }
        return try CLI.run(["show"] + args)
    }

    func fixture(_ name: String) -> String { Self.fixtures + "/" + name }

    func testSummaryAndOneLinePerExit() throws {
        let r = try show([fixture("outloop-1.0.estrace")])
        XCTAssertEqual(r.status, 0, r.err)
        for part in ["kvm_pvm", "AMD EPYC 7B13", "records    300", "IOIO                     300"] {
            XCTAssertTrue(r.out.contains(part), "\(part) missing")
        }
        let lines = r.out.split(separator: "\n").filter { $0.contains(": IOIO") }
        XCTAssertEqual(lines.count, 300)
        XCTAssertTrue(lines[42].contains("0x1005 (loop+0x5)"), String(lines[42]))
        XCTAssertTrue(lines[42].contains("out port 0x80 size 1 data 0x2a"), String(lines[42]))
        XCTAssertTrue(lines[42].contains("[ee] out dx, al"), String(lines[42]))
    }

    func testOneExitInFullAndJSON() throws {
        let full = try show([fixture("allkinds-1.0.estrace"), "--exit", "0"])
        XCTAssertEqual(full.status, 0, full.err)
        for name in ["EXITCODE       0x7b IOIO", "EXITINFO1", "EXITINTINFO", "nRIP", "LSTAR", "state after the instruction"] {
            XCTAssertTrue(full.out.contains(name), "\(name) missing")
        }
        let json = try show([fixture("smp2-1.0.estrace"), "--json", "--vcpu", "1", "--limit", "3"])
        XCTAssertEqual(json.status, 0, json.err)
        let lines = json.out.split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        XCTAssertEqual(obj["vcpu"] as? Int, 1)
        XCTAssertEqual((obj["state"] as? [String: Any])?["rdx"] as? String, "0x80")
    }

    /// A kernel's System.map names RIPs the image's own symbols do not (perf kvm's --guestkallsyms).
    func testSymbolsFromASystemMapNameRIPsInShowAndReport() throws {
        let dir = try CLI.makeTemporaryDirectory("show-symbols")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let map = dir + "/System.map"
        // outloop's OUT is at 0x1005: a map that puts it 5 bytes into "port_loop".
        try "0000000000001000 T port_loop\n0000000000001000 t port_loop_alias\n0000000000001008 D some_data\n0000000000001010 T after\n"
            .write(toFile: map, atomically: true, encoding: .utf8)
        let r = try show([fixture("outloop-1.0.estrace"), "--symbols", map, "--limit", "3"])
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n").filter { $0.contains(": IOIO") }
        XCTAssertEqual(lines.count, 3)
        XCTAssertTrue(lines[0].contains("0x1005 (port_loop"), String(lines[0]))
        XCTAssertFalse(lines[0].contains("(loop+"), "the image's own symbols were used: \(lines[0])")

        let report = try CLI.run(["report", fixture("outloop-1.0.estrace"), "--symbols", map, "--view", "rip", "--json"])
        XCTAssertEqual(report.status, 0, report.err)
        XCTAssertTrue(report.out.contains("port_loop"), report.out)

        let notAMap = dir + "/passwd"
        try "root:x:0:0:root:/root:/bin/bash\n".write(toFile: notAMap, atomically: true, encoding: .utf8)
        let bad = try show([fixture("outloop-1.0.estrace"), "--symbols", notAMap])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("line 1"), bad.err)
        let missing = try show([fixture("outloop-1.0.estrace"), "--symbols", dir + "/nope"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.err.contains("cannot read"), missing.err)
    }

    func testReasonFilterAndCutShortNote() throws {
        let hlt = try show([fixture("allkinds-1.0.estrace"), "--reason", "hlt"])
        XCTAssertEqual(hlt.status, 0, hlt.err)
        XCTAssertEqual(hlt.out.split(separator: "\n").filter { $0.contains(": ") && $0.contains("[000]") }.count, 1)
        let bad = try show([fixture("allkinds-1.0.estrace"), "--reason", "bogus"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("unknown reason 'bogus'"), bad.err)
        let cut = try show([fixture("outloop-cut-1.0.estrace"), "--summary"])
        XCTAssertEqual(cut.status, 0, cut.err)
        XCTAssertTrue(cut.out.contains("CUT SHORT"))
    }

    func testBadFilesGiveOneMessageWithOffsetAndFail() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("show-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let foreign = dir.appendingPathComponent("x.estrace").path
        FileManager.default.createFile(atPath: foreign, contents: Data("#!/bin/sh\necho hi\n".utf8))
        let f = try show([foreign])
        XCTAssertNotEqual(f.status, 0)
        XCTAssertTrue(f.err.contains("not an ExitScope trace") && f.err.contains("byte offset 0"), f.err)

        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: fixture("outloop-1.0.estrace"))))
        let headerEnd = 20 + Int(bytes[12]) + Int(bytes[13]) << 8
        bytes[headerEnd + 60] ^= 0xFF // inside the first frame's compressed bytes
        let corrupt = dir.appendingPathComponent("c.estrace").path
        FileManager.default.createFile(atPath: corrupt, contents: Data(bytes))
        let c = try show([corrupt])
        XCTAssertNotEqual(c.status, 0)
        XCTAssertTrue(c.err.contains("checksum") && c.err.contains("byte offset \(headerEnd)"), c.err)
        XCTAssertEqual(c.err.split(separator: "\n").count, 1, c.err)

        let missing = try show([fixture("outloop-1.0.estrace"), "--exit", "100000"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.err.contains("no record with seq 100000"), missing.err)
    }
}
