import Foundation
import XCTest

/// `exitscope run/record` on the completion sample (Samples/completion.S, issue 9): the VMM
/// completes LOCK CMPXCHG16B where KVM's emulator fails on it (kvm_pvm), `--no-complete` keeps
/// the emulation-failure report, and a recorded run replays its completions with verdict `self`.
final class CompletionCommandTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    var sample: String { Self.repo + "/Samples/completion" }

    func requirePVM() throws {
        try CLI.requireKVM()
        guard FileManager.default.fileExists(atPath: "/sys/module/kvm_pvm") else {
            throw XCTSkip("KVM's emulator fails on CMPXCHG16B at CPL0 only on kvm_pvm, which is not loaded here")
        }
    }

    func testRunCompletesAndNoCompleteReports() throws {
        try requirePVM()
        var r = try CLI.run(["run", sample, "--timeout", "60"])
        XCTAssertTrue(r.out.contains("lock cmpxchg16b (equal): PASS\n"), r.out)
        XCTAssertTrue(r.out.contains("lock cmpxchg16b (different): PASS\n"), r.out)
        XCTAssertFalse(r.out.contains("FAIL"), r.out)
        XCTAssertTrue(r.err.contains("completed by the VMM: 2\n  cmpxchg16b: 2"), r.err)

        r = try CLI.run(["run", sample, "--timeout", "60", "--no-complete", "--json"])
        XCTAssertEqual(r.status, 123, r.err)
        XCTAssertFalse(r.out.contains("PASS"), r.out)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.err.utf8)) as? [String: Any], r.err)
        XCTAssertEqual(json["stop"] as? String, "internal-error")
        let event = try XCTUnwrap(json["guestEvent"] as? [String: Any])
        XCTAssertTrue((event["instructionBytes"] as? String)?.hasPrefix("f0 48 0f c7") ?? false, r.err)
        XCTAssertEqual((json["completions"] as? [String: Int])?.isEmpty, true)
    }

    func testRecordedCompletionsReplayAsSelf() throws {
        try requirePVM()
        let dir = try CLI.makeTemporaryDirectory("completion")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let trace = dir + "/c.estrace"
        let r = try CLI.run(["record", sample, "-o", trace, "--serial-out", dir + "/serial.txt", "--timeout", "60"])
        XCTAssertTrue(r.err.contains("cmpxchg16b: 2"), r.err)
        let replay = try CLI.run(["replay", trace])
        XCTAssertEqual(replay.status, 0, replay.out + replay.err)
        XCTAssertTrue(replay.out.contains("COMPLETION                 2  self 2"), replay.out)
    }
}
