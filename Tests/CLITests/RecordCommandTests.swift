import Foundation
import XCTest

/// `exitscope record` and `show` as a user runs them: a flat guest recorded, the trace read back.
final class RecordCommandTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        try CLI.requireKVM()
        dir = try CLI.makeTemporaryDirectory("record-cli")
    }
    override func tearDownWithError() throws { if !dir.isEmpty { try? FileManager.default.removeItem(atPath: dir) } }

    // mov dx,0x3f8; mov al,'H'; out dx,al; mov al,'i'; out dx,al; cli; hlt
    let hello: [UInt8] = [0xBA, 0xF8, 0x03, 0xB0, 0x48, 0xEE, 0xB0, 0x69, 0xEE, 0xFA, 0xF4]

    func flat(_ name: String, _ bytes: [UInt8]) throws -> String {
        let path = dir + "/" + name
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    func testRecordWritesATraceThatShowReads() throws {
        let image = try flat("hello.bin", hello)
        let trace = dir + "/hello.estrace"
        let r = try CLI.run(["record", "--flat", "--load-address", "0x1000", "-o", trace, image])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertEqual(r.out, "Hi", "the guest's serial output is unchanged by recording")
        XCTAssertTrue(r.err.contains("trace: \(trace): "), r.err)
        XCTAssertTrue(r.err.contains("(3 exits)"), r.err)

        let show = try CLI.run(["show", trace, "--json"])
        XCTAssertEqual(show.status, 0, show.err)
        let exits = show.out.split(separator: "\n").compactMap { line -> [String: Any]? in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }.filter { $0["kind"] as? String == "exit" }
        XCTAssertEqual(exits.count, 3)
        // Two committed OUTs found at 0x1005 and 0x1008 ("ee"), then the HLT.
        XCTAssertEqual(exits.map { $0["instruction_start"] as? String }, ["0x1005", "0x1008", "0x100a"])
        XCTAssertEqual(exits.map { $0["instruction_bytes"] as? String }, ["ee", "ee", "f4"])
        XCTAssertEqual(exits.map { $0["visibility"] as? String }, ["committed", "committed", "committed"])
    }

    /// Issue 4: a recording killed by SIGKILL leaves every complete frame readable, and `show`
    /// says the trace was cut short; replay checks the records it has.
    func testRecordKilledBySIGKILLLeavesItsCompleteFramesReadable() throws {
        // mov dx,0x3ff; l: out dx,al; jmp l  (an endless stream of OUT exits)
        let image = try flat("loop.bin", [0xBA, 0xFF, 0x03, 0xEE, 0xEB, 0xFD])
        let trace = dir + "/killed.estrace"
        let p = Process()
        p.executableURL = CLI.binary
        p.arguments = ["record", "--flat", "--load-address", "0x1000", "--frame-records", "100", "-o", trace, image]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        // Wait until a few frames are on disk (each frame is 100 exits), then kill it.
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            let size = (try? FileManager.default.attributesOfItem(atPath: trace)[.size] as? Int) ?? 0
            if size > 20_000 { break }
            usleep(20_000)
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .uncaughtSignal)

        let summary = try CLI.run(["show", trace, "--summary"])
        XCTAssertEqual(summary.status, 0, summary.err)
        XCTAssertTrue(summary.out.contains("CUT SHORT"), summary.out)
        let show = try CLI.run(["show", trace, "--json"])
        XCTAssertEqual(show.status, 0, show.err)
        let records = show.out.split(separator: "\n").compactMap { line -> [String: Any]? in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
        // Whole frames only: 100 records each, numbered without a hole.
        XCTAssertGreaterThan(records.count, 100)
        XCTAssertEqual(records.count % 100, 0, "\(records.count) records is not a whole number of frames")
        XCTAssertEqual(records.compactMap { $0["seq"] as? Int }, Array(0..<records.count))
        XCTAssertTrue(records.dropFirst().allSatisfy { $0["instruction_bytes"] as? String == "ee" })

        let replay = try CLI.run(["replay", trace])
        XCTAssertEqual(replay.status, 0, replay.out + replay.err)
        XCTAssertTrue(replay.err.contains("cut short"), replay.err)
    }

    func testRecordRefusesAMissingImageAndABadFidelity() throws {
        let missing = try CLI.run(["record", dir + "/nothing-here"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.err.contains("no such image"), missing.err)
        let bad = try CLI.run(["record", "--fidelity", "perfect", try flat("h.bin", hello),
                                     "--flat", "--load-address", "0x1000"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("--fidelity must be 'exit' or 'full'"), bad.err)
    }
}
