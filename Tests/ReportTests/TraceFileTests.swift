import XCTest
import Foundation
import Trace
@testable import Report

/// The aggregate and the database read from real trace files written by TraceWriter.
final class TraceFileTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("report-trace-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// Two vCPUs of port-I/O loops inside phase 1, small frames so that they interleave.
    func writeTrace(_ name: String, outs: Int) throws -> String {
        let path = dir + "/" + name + ".estrace"
        var settings = TraceWriterSettings()
        settings.maxRecordsPerFrame = 7
        let w = try TraceWriter(path: path, header: Make.header, settings: settings,
                                frameStats: { v in VCPUFrameStats(vcpu: v, counters: ["exits": 1_000_000]) })
        var t: [UInt64] = [1_000, 1_500]
        for v: UInt16 in 0...1 { try w.append(Make.marker(1, vcpu: v, seq: 0, exit: t[Int(v)], entry: t[Int(v)] + 10)) }
        for i in 0..<outs {
            let v = UInt16(i % 2)
            t[Int(v)] += 1_000
            try w.append(Make.out(port: 0x3FF, value: UInt8(i & 0xFF), vcpu: v, seq: 0, exit: t[Int(v)], entry: t[Int(v)] + 100))
        }
        for v: UInt16 in 0...1 { try w.append(Make.marker(0x8001, vcpu: v, seq: 0, exit: t[Int(v)] + 500, entry: t[Int(v)] + 510)) }
        try w.append(Make.hlt(seq: 0, exit: t[0] + 1_000, entry: 0))
        _ = try w.finish()
        return path
    }

    func testAggregateOfATraceFileAddsUpToItsExitCount() throws {
        let path = try writeTrace("loop", outs: 101)
        let reader = try TraceReader(path: path)
        var exits: UInt64 = 0
        try reader.forEachRecord { if $0.kind == .exit { exits += 1 } }
        XCTAssertEqual(exits, 102)
        let r = Report(try TraceInput.aggregate(reader))
        XCTAssertEqual(r.aggregate.exitCount, exits)
        let vm = try r.table(.vmexit)
        XCTAssertEqual(vm.sum("samples"), exits)
        XCTAssertEqual(vm.row("IOIO")?["samples"], .uint(101))
        XCTAssertEqual(vm.row("IOIO")?["mean_ns"], .real(100))
        // Each out follows the previous exit's re-entry on its vCPU by 900 ns; the first of each
        // vCPU follows only a marker record, which is not a re-entry, so it has no guest time.
        XCTAssertEqual(vm.row("IOIO")?["guest_ns"], .uint(99 * 900))
        XCTAssertEqual(try r.table(.phase).row("1")?["samples"], .uint(101))
        XCTAssertEqual(try r.table(.phase).row("1")?["occurrences"], .uint(2))
        XCTAssertEqual(try r.table(.vcpu).sum("samples"), exits)
        XCTAssertEqual(try r.table(.timeline).sum("exits"), exits)
        // KVM counters came with the frames.
        XCTAssertEqual(try r.table(.kvm).rows.first?[1], .uint(1_000_000))

        let only1 = Report(try TraceInput.aggregate(reader, vcpu: 1))
        XCTAssertEqual(only1.aggregate.exitCount, 50)
    }

    func testIngestOfTwoTraceFilesAndCompare() throws {
        let a = try TraceReader(path: try writeTrace("a", outs: 10))
        let b = try TraceReader(path: try writeTrace("b", outs: 30))
        let db = try ExitDatabase(path: dir + "/runs.sqlite")
        try TraceInput.ingest(a, into: db, name: "a")
        try TraceInput.ingest(b, into: db, name: "b")
        XCTAssertEqual(try db.runs().map(\.exits), [11, 31])
        XCTAssertEqual(try db.scalar("SELECT COUNT(*) FROM exits WHERE run_id = 2 AND port = 1023 AND phase = 1"), 30)
        let t = try db.compare("a", "b")
        XCTAssertEqual(t.row("IOIO")?["samples_delta"], .int(20))
        XCTAssertEqual(t.row("HLT")?["samples_delta"], .int(0))
    }

    func testEmptyTraceFile() throws {
        let path = dir + "/empty.estrace"
        let w = try TraceWriter(path: path, header: Make.header)
        _ = try w.finish()
        let r = Report(try TraceInput.aggregate(try TraceReader(path: path)))
        XCTAssertEqual(r.aggregate.exitCount, 0)
        XCTAssertTrue(try r.table(.vmexit).rows.isEmpty)
    }
}
