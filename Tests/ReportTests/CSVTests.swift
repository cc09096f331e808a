import XCTest
import Foundation
import Trace
@testable import Report

final class CSVTests: XCTestCase {
    /// The header rows are an interface for notebooks and scripts: changing one is a decision,
    /// so it must change this test too.
    func testHeadersAreStable() throws {
        let expected: [View: String] = [
            .summary: "item,value",
            .vmexit: "reason,kvm_reason,samples,samples_pct,time_pct,min_ns,mean_ns,max_ns,p50_ns,p99_ns,vmm_ns,guest_ns,guest_mean_ns",
            .ioport: "port,direction,samples,samples_pct,time_pct,min_ns,mean_ns,max_ns,vmm_ns,guest_ns,guest_mean_ns,bytes",
            .mmio: "gpa,direction,samples,samples_pct,time_pct,min_ns,mean_ns,max_ns,vmm_ns,guest_ns,guest_mean_ns,bytes",
            .msr: "msr,name,direction,samples,samples_pct,time_pct,min_ns,mean_ns,max_ns,vmm_ns,guest_ns,guest_mean_ns",
            .kvm: "vcpu,kvm_exits,userspace_exits,in_kernel_exits,in_kernel_pct,io_exits,mmio_exits,halt_exits,irq_exits,irq_window_exits,signal_exits,insn_emulation,insn_emulation_fail,hypercalls",
            .kvmCounters: "vcpu,counter,value",
            .rip: "rip,symbol,reason,instruction,bytes,samples,samples_pct,time_pct,min_ns,mean_ns,max_ns,vmm_ns,guest_ns,guest_mean_ns",
            .vcpu: "vcpu,samples,samples_pct,time_pct,min_ns,mean_ns,max_ns,p50_ns,p99_ns,vmm_ns,guest_ns,guest_mean_ns",
            .phase: "phase,name,occurrences,duration_ns,mean_duration_ns,samples,samples_pct,time_pct,min_ns,mean_ns,max_ns,vmm_ns,guest_ns,guest_mean_ns",
            .microbench: "phase,operation,iterations,iterations_from,duration_ns,duration_cycles,cycles_per_op,ns_per_op,exits_per_op",
            .completion: "mnemonic,samples,samples_pct,time_pct,min_ns,mean_ns,max_ns,vmm_ns",
            .timeline: "interval,start_ns,end_ns,exits,completions,vmm_ns,guest_ns",
        ]
        XCTAssertEqual(Set(expected.keys), Set(View.allCases))
        // Empty and non-empty traces have the same headers.
        let full = Make.aggregate([Make.out(port: 0x80, seq: 0, exit: 1, entry: 2)])
        for v in View.allCases {
            let e = try Make.aggregate([]).table(v).renderCSV()
            let f = try full.table(v).renderCSV()
            XCTAssertEqual(e.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init), expected[v], v.rawValue)
            XCTAssertEqual(f.split(separator: "\n").first.map(String.init), expected[v], v.rawValue)
        }
    }

    /// CSV.md documents every column of every view, and nothing that is not a column.
    func testEveryColumnIsDocumented() throws {
        let doc = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Sources/Report/CSV.md").standardizedFileURL
        let text = try String(contentsOf: doc, encoding: .utf8)
        func section(_ title: String) -> String {
            guard let r = text.range(of: "\n## \(title)\n") else { return "" }
            let rest = text[r.upperBound...]
            let end = rest.range(of: "\n## ")?.lowerBound ?? rest.endIndex
            return String(rest[..<end])
        }
        func columns(_ s: String) -> [String] {
            s.split(separator: "\n").compactMap { line -> String? in
                guard line.hasPrefix("| `") else { return nil }
                let cell = line.dropFirst(3)
                return cell.firstIndex(of: "`").map { String(cell[..<$0]) }
            }
        }
        let stats = columns(section("Statistics columns"))
        XCTAssertEqual(stats.count, 11)   // 9 shared + p50/p99
        for v in View.allCases {
            let s = section(v.rawValue + ".csv")
            XCTAssertFalse(s.isEmpty, "CSV.md has no section for \(v.rawValue).csv")
            var documented = columns(s)
            if s.contains("statistics columns") { documented += stats }
            let actual = Report.columns[v] ?? []
            for c in actual { XCTAssertTrue(documented.contains(c), "\(v.rawValue).csv column \(c) is not in CSV.md") }
            for c in documented where !stats.contains(c) {
                XCTAssertTrue(actual.contains(c), "CSV.md documents \(c) in \(v.rawValue).csv, which has no such column")
            }
        }
    }

    func testWritesOneFilePerViewAndQuotesFields() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("report-csv-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var h = Make.header
        h.hostCPU = "AMD \"Test\", 2 cores"
        let r = Make.aggregate([Make.out(port: 0x80, seq: 0, exit: 1, entry: 2)], header: h)
        let paths = try Export.writeCSV(r, key: "time", to: dir)
        XCTAssertEqual(paths.count, View.allCases.count)
        let summary = try String(contentsOfFile: dir + "/summary.csv", encoding: .utf8)
        XCTAssertTrue(summary.contains("host_cpu,\"AMD \"\"Test\"\", 2 cores\"\n"), summary)
        let vm = try String(contentsOfFile: dir + "/vmexit.csv", encoding: .utf8)
        XCTAssertEqual(vm.split(separator: "\n").count, 2)
        XCTAssertTrue(vm.contains("\nIOIO,KVM_EXIT_IO,1,100,100,1,1,1,1,1,1,0,\n"), vm)
    }

    func testJSONHasHeaderAndViews() throws {
        let r = Make.aggregate([Make.out(port: 0x80, seq: 0, exit: 1, entry: 2)])
        let s = try Export.json(r, views: [.vmexit, .ioport])
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any])
        let views = try XCTUnwrap(o["views"] as? [String: Any])
        XCTAssertEqual(Set(views.keys), ["vmexit", "ioport"])
        let vm = try XCTUnwrap(views["vmexit"] as? [String: Any])
        let rows = try XCTUnwrap(vm["rows"] as? [[String: Any]])
        XCTAssertEqual(rows.first?["reason"] as? String, "IOIO")
        XCTAssertEqual(rows.first?["samples"] as? Int, 1)
        XCTAssertEqual((o["header"] as? [String: Any])?["kvm_backend"] as? String, "kvm_pvm")
    }
}
