import XCTest
import Foundation
import Trace
@testable import Report

final class DatabaseTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("report-db-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func records(outs: Int, handling: UInt64) -> [TraceRecord] {
        var recs = [Make.marker(1, seq: 0, exit: 10, entry: 20)]
        for i in 0..<outs {
            let t = 100 + UInt64(i) * 1000
            recs.append(Make.out(port: 0x3F8, value: UInt8(i & 0xFF), seq: UInt64(recs.count), exit: t, entry: t + handling))
        }
        recs.append(Make.marker(0x8001, seq: UInt64(recs.count), exit: 100_000, entry: 100_010))
        recs.append(Make.mmio(gpa: 0xFEE0_00B0, write: true, seq: UInt64(recs.count), exit: 200_000, entry: 200_100))
        recs.append(Make.hlt(seq: UInt64(recs.count), exit: 300_000, entry: 0))
        return recs
    }

    func testIngestRoundTrip() throws {
        let db = try ExitDatabase(path: dir + "/runs.sqlite")
        let recs = records(outs: 5, handling: 40)
        let id = try db.ingest(header: Make.header, name: "a", tracePath: "/t/a.estrace") { sink in
            for r in recs { try sink(r) }
        }
        XCTAssertEqual(try db.runs(), [RunRow(id: id, name: "a", tracePath: "/t/a.estrace", exits: 7, records: 9)])
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM exits WHERE run_id = ?", [id]), 9)
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM exits WHERE kind = 'exit'"), 7)
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM exits WHERE port = 1016 AND direction = 'out'"), 5)
        XCTAssertEqual(try db.scalar("SELECT SUM(vmm_ns) FROM exits WHERE reason = 'IOIO'"), 200)
        // The second out ran 1000 − 40 ns of guest time after the first one's re-entry.
        XCTAssertEqual(try db.scalar("SELECT guest_ns FROM exits WHERE seq = 2"), 960)
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM exits WHERE phase = 1 AND kind = 'exit'"), 5)
        XCTAssertEqual(try db.scalar("SELECT data FROM exits WHERE seq = 3"), 2)
        XCTAssertEqual(try db.scalar("SELECT gpa FROM exits WHERE reason = 'NPF' AND direction = 'write'"), 0xFEE0_00B0)
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM exits WHERE symbol = 'loop+0x10'"), 5)
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM exits WHERE reason = 'HLT' AND vmm_ns IS NULL"), 1)
        XCTAssertEqual(try db.scalar("SELECT tsc_hz FROM runs WHERE name = 'a'"), 1_000_000_000)
        // The query planner uses the indexes for the obvious questions.
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name LIKE 'exits_%'"), 7)

        // Verdicts plug in by (run, seq).
        try db.addVerdicts(run: "a", [VerdictRow(seq: 1, verdict: "match", reference: "kvm-emulator"),
                                      VerdictRow(seq: 2, verdict: "diverged", reference: "kvm-emulator", detail: "rax")])
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM verdicts v JOIN exits e USING (run_id, seq) WHERE v.verdict = 'diverged' AND e.port = 1016"), 1)

        // Reopening keeps everything (the schema migration runs once).
        let again = try ExitDatabase(path: dir + "/runs.sqlite")
        XCTAssertEqual(try again.runs().count, 1)
    }

    func testDuplicateRunNameIsRefusedUnlessReplaced() throws {
        let db = try ExitDatabase(path: dir + "/runs.sqlite")
        let recs = records(outs: 2, handling: 10)
        try db.ingest(header: Make.header, name: "a", tracePath: "x") { s in for r in recs { try s(r) } }
        XCTAssertThrowsError(try db.ingest(header: Make.header, name: "a", tracePath: "x") { s in for r in recs { try s(r) } }) {
            XCTAssertTrue(String(describing: $0).contains("--replace"), String(describing: $0))
        }
        try db.ingest(header: Make.header, name: "a", tracePath: "y", replace: true) { s in for r in recs.prefix(3) { try s(r) } }
        XCTAssertEqual(try db.runs().map(\.tracePath), ["y"])
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM exits"), 3)
    }

    func testFailingFeedLeavesNoHalfRun() throws {
        struct Boom: Error {}
        let db = try ExitDatabase(path: dir + "/runs.sqlite")
        XCTAssertThrowsError(try db.ingest(header: Make.header, name: "bad", tracePath: "x") { s in
            try s(Make.out(port: 0x80, seq: 0, exit: 1, entry: 2))
            throw Boom()
        })
        XCTAssertEqual(try db.runs(), [])
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM exits"), 0)
    }

    func testTwoRunsSideBySide() throws {
        let db = try ExitDatabase(path: dir + "/runs.sqlite")
        let a = records(outs: 4, handling: 100), b = records(outs: 6, handling: 50)
        try db.ingest(header: Make.header, name: "slow", tracePath: "a") { s in for r in a { try s(r) } }
        try db.ingest(header: Make.header, name: "fast", tracePath: "b") { s in for r in b { try s(r) } }
        let t = try db.compare("slow", "fast")
        let io = try XCTUnwrap(t.row("IOIO"))
        XCTAssertEqual(io["samples_a"], .int(4))
        XCTAssertEqual(io["samples_b"], .int(6))
        XCTAssertEqual(io["samples_delta"], .int(2))
        XCTAssertEqual(io["samples_delta_pct"], .real(50))
        XCTAssertEqual(io["vmm_ns_a"], .int(400))
        XCTAssertEqual(io["vmm_ns_b"], .int(300))
        XCTAssertEqual(io["mean_delta_pct"], .real(-50))
        XCTAssertEqual(t.columnNames, ExitDatabase.compareColumns)
        XCTAssertEqual(t.totals?[1], .int(6))   // 4 outs + NPF + HLT
        // By id too; unknown runs list the known ones.
        XCTAssertNoThrow(try db.compare("1", "2"))
        XCTAssertThrowsError(try db.compare("slow", "nope")) {
            XCTAssertEqual(String(describing: $0), "no run 'nope' in the database; runs: slow, fast")
        }
    }
}
