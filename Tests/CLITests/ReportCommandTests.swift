import XCTest
import Foundation
import Trace
import X86
import Report

/// `exitscope report` and `exitscope ingest` as a user runs them: the built binary, its output and status.
final class ReportCommandTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("report-cli-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    static var binary: URL { CLI.binary }

    func exitscope(_ args: [String]) throws -> (status: Int32, out: String, err: String) { try CLI.run(args) }

    func writeTrace(_ name: String, outs: Int) throws -> String {
        let path = dir + "/\(name).estrace"
        let w = try TraceWriter(path: path, header: TraceHeader(tscHz: 2_000_000_000, kvmBackend: "kvm_pvm"))
        var t: UInt64 = 1000
        for i in 0..<outs {
            let io = IOIOInfo(port: 0x3FF, isIn: false, size: 1, addressSize: 16)
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 2, exitCode: .ioio, exitInfo1: io.exitInfo1,
                                     instructionStart: 0x1005, instructionBytes: [0xEE],
                                     accesses: [DeviceAccess(space: .port, address: 0x3FF, size: 1, isWrite: true, data: [UInt8(i & 0xFF)])],
                                     tscExit: t, tscEntry: t + 200))
            t += 2000
        }
        try w.append(TraceRecord(kind: .exit, kvmExitReason: 5, exitCode: .hlt, tscExit: t, tscEntry: 0))
        _ = try w.finish()
        return path
    }

    func testReportPrintsThePerfStyleTableWhoseCountsAddUp() throws {
        guard FileManager.default.fileExists(atPath: Self.binary.path) else { throw XCTSkip("exitscope binary not built at \(Self.binary.path)") }
        let trace = try writeTrace("loop", outs: 25)
        let r = try exitscope(["report", trace])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("IOIO"), r.out)
        let ioLine = try XCTUnwrap(r.out.split(separator: "\n").first { $0.hasPrefix("IOIO") })
        // 25 samples, 96.154%, every handling time 200 cycles at 2 GHz = 100 ns.
        XCTAssertEqual(ioLine.split(separator: " ").prefix(8).map(String.init),
                       ["IOIO", "KVM_EXIT_IO", "25", "96.154", "100", "100", "100", "100"])
        XCTAssertTrue(r.out.contains("Total samples: 26"), r.out)

        let j = try exitscope(["report", trace, "--json", "--view", "vmexit,ioport"])
        XCTAssertEqual(j.status, 0, j.err)
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(j.out.utf8)) as? [String: Any])
        let views = try XCTUnwrap(o["views"] as? [String: [String: Any]])
        let rows = try XCTUnwrap(views["vmexit"]?["rows"] as? [[String: Any]])
        XCTAssertEqual(rows.compactMap { $0["samples"] as? Int }.reduce(0, +), 26)
        XCTAssertNotNil(views["ioport"])

        let csvDir = dir + "/csv"
        let c = try exitscope(["report", trace, "--csv", csvDir, "--event", "ioport"])
        XCTAssertEqual(c.status, 0, c.err)
        let vm = try String(contentsOfFile: csvDir + "/vmexit.csv", encoding: .utf8)
        XCTAssertTrue(vm.hasPrefix("reason,kvm_reason,samples,"), vm)
        XCTAssertTrue(c.out.contains("0x3ff"), c.out)
    }

    func testUnknownKeyViewAndEventListTheValidOnes() throws {
        guard FileManager.default.fileExists(atPath: Self.binary.path) else { throw XCTSkip("exitscope binary not built") }
        let trace = try writeTrace("t", outs: 2)
        let k = try exitscope(["report", trace, "--key", "bogus"])
        XCTAssertNotEqual(k.status, 0)
        XCTAssertTrue(k.err.contains("unknown key 'bogus'") && k.err.contains("samples") && k.err.contains("time"), k.err)
        let v = try exitscope(["report", trace, "--view", "nope"])
        XCTAssertNotEqual(v.status, 0)
        XCTAssertTrue(v.err.contains("valid views: summary, vmexit"), v.err)
        let e = try exitscope(["report", trace, "--event", "cr"])
        XCTAssertNotEqual(e.status, 0)
        XCTAssertTrue(e.err.contains("vmexit, ioport, mmio, msr"), e.err)
        let bad = dir + "/garbage.estrace"
        FileManager.default.createFile(atPath: bad, contents: Data("not a trace at all".utf8))
        let g = try exitscope(["report", bad])
        XCTAssertEqual(g.status, 1)
        XCTAssertTrue(g.err.hasPrefix("exitscope report: "), g.err)
    }

    func testEmptyTraceGivesAnEmptyTable() throws {
        guard FileManager.default.fileExists(atPath: Self.binary.path) else { throw XCTSkip("exitscope binary not built") }
        let path = dir + "/empty.estrace"
        _ = try TraceWriter(path: path, header: TraceHeader(tscHz: 1_000_000_000)).finish()
        let r = try exitscope(["report", path, "--view", "all"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("(no rows)"), r.out)
        XCTAssertFalse(r.out.lowercased().contains("nan"), r.out)
    }

    func testIngestAndCompareTwoRuns() throws {
        guard FileManager.default.fileExists(atPath: Self.binary.path) else { throw XCTSkip("exitscope binary not built") }
        let a = try writeTrace("a", outs: 3), b = try writeTrace("b", outs: 8)
        let db = dir + "/runs.sqlite"
        let i = try exitscope(["ingest", a, b, "--db", db])
        XCTAssertEqual(i.status, 0, i.err)
        XCTAssertTrue(i.out.contains("run a (id 1): 4 records, 4 exits"), i.out)
        let again = try exitscope(["ingest", a, "--db", db])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.err.contains("--replace"), again.err)
        let c = try exitscope(["report", "--db", db, "--runs", "a,b"])
        XCTAssertEqual(c.status, 0, c.err)
        let line = try XCTUnwrap(c.out.split(separator: "\n").first { $0.hasPrefix("IOIO") })
        XCTAssertEqual(line.split(separator: " ").prefix(4).map(String.init), ["IOIO", "3", "8", "5"])
        // --replay stores one verdict per record group, joinable with the exits.
        let r = try exitscope(["ingest", try writeTrace("c", outs: 3), "--db", db, "--replay"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("run c: 4 replay verdicts"), r.out)
        let database = try ExitDatabase(path: db)
        XCTAssertEqual(try database.scalar("SELECT COUNT(*) FROM verdicts v JOIN exits e USING (run_id, seq) WHERE e.run_id = 3"), 4)
        let u = try exitscope(["report", "--db", db, "--runs", "a,zz"])
        XCTAssertNotEqual(u.status, 0)
        XCTAssertTrue(u.err.contains("no run 'zz'") && u.err.contains("runs: a, b"), u.err)
    }
}
