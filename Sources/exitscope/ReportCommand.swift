import ArgumentParser
import Foundation
import Report
import Trace

/// `exitscope report`: perf-kvm-stat-style tables of a trace, CSV/JSON for scripts, or two
/// ingested runs side by side.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Overhead report of a trace: exits per reason, port, MMIO address, MSR, RIP, vCPU, phase.",
        discussion: """
        Without --view, prints the trace summary and the --event table (default vmexit), sorted by
        --key (default samples; perf's sample/time/mean/max/min work, and so does any column name).
        Views: \(View.allCases.map(\.rawValue).joined(separator: ", ")), or "all".
        --csv DIR writes one CSV per view (columns documented in Sources/Report/CSV.md), all times in ns.
        With --db FILE --runs A,B: two ingested runs side by side (see `exitscope ingest`).
        """
    )

    @Argument(help: "The trace file (not needed with --db).")
    var trace: String?

    @Option(help: "Event class in perf's manner: vmexit, ioport, mmio or msr.")
    var event: String = "vmexit"

    @Option(help: "Views to print, comma-separated, or 'all' (default: summary and the --event view).")
    var view: String?

    @Option(help: "Sort key: a column name, or perf's sample, time, mean, max, min.")
    var key: String?

    @Option(help: "Only this vCPU's records.")
    var vcpu: UInt16?

    @Option(help: "Show at most N rows per table.")
    var top: Int?

    @Option(help: "Write one CSV per view into this directory.")
    var csv: String?

    @Flag(help: "Print JSON instead of tables.")
    var json = false

    @Option(help: "Timeline interval in ns (default 1 ms; doubled as needed to keep at most 1000 intervals).")
    var interval: UInt64?

    @Option(help: "Operations in each microbenchmark phase, e.g. 1=1000000,2=1000 (default: one per begin/end marker pair).")
    var iterations: String?

    @OptionGroup var symbols: SymbolsOption

    @Option(help: "A database written by `exitscope ingest` (with --runs).")
    var db: String?

    @Option(help: "Two runs of --db to compare, by name or id: A,B.")
    var runs: String?

    func validate() throws {
        if let t = top, t < 0 { throw ValidationError("--top must be 0 or more") }
        if db != nil {
            if runs == nil { throw ValidationError("--db needs --runs A,B") }
            if trace != nil { throw ValidationError("give either a TRACE or --db, not both") }
        } else {
            if runs != nil { throw ValidationError("--runs needs --db") }
            if trace == nil { throw ValidationError("missing TRACE (or --db FILE --runs A,B)") }
        }
        if interval == 0 { throw ValidationError("--interval must be positive") }
    }

    func selectedViews() throws -> [View] {
        let primary = try View.event(event)
        guard let view else { return [.summary, primary] }
        if view == "all" { return View.allCases }
        return try view.split(separator: ",").map { try View.named(String($0)) }
    }

    func parseIterations() throws -> [UInt64: UInt64] {
        guard let iterations else { return [:] }
        var out: [UInt64: UInt64] = [:]
        for part in iterations.split(separator: ",") {
            let kv = part.split(separator: "=")
            guard kv.count == 2, let p = UInt64(kv[0]), let n = UInt64(kv[1]), n > 0 else {
                throw ReportError.badArgument("--iterations: '\(part)' is not PHASE=COUNT (e.g. 1=1000000)")
            }
            out[p] = n
        }
        return out
    }

    func run() throws {
        do {
            if let db { return try compare(db) }
            try report()
        } catch let e as ReportError {
            throw ValidationError(e.description)
        } catch let e as TraceError {
            FileHandle.standardError.write(Data("exitscope report: \(e)\n".utf8))
            throw ExitCode(1)
        }
    }

    func report() throws {
        guard let trace else { return }
        let views = try selectedViews()
        // Check the key before reading a long trace.
        if let key, !views.contains(where: { Report.accepts(key: key, view: $0) }) {
            let main = views.first { $0 != .summary } ?? .vmexit
            throw ReportError.unknownColumn(key, view: main.rawValue, valid: Report.validKeys(main))
        }
        let its = try parseIterations()
        let reader = try TraceReader(path: trace)
        if let c = reader.cutShort {
            FileHandle.standardError.write(Data("exitscope report: \(trace) was cut short at byte \(c.offset) (\(c.reason)); reporting the complete frames\n".utf8))
        }
        var agg = try TraceInput.aggregate(reader, header: try symbols.apply(to: reader.header), vcpu: vcpu, timelineIntervalNs: interval)
        agg.phaseIterations = its
        let report = Report(agg)
        func keyFor(_ v: View) -> String? { key.flatMap { Report.accepts(key: $0, view: v) ? $0 : nil } }

        if let csv {
            let paths = try Export.writeCSV(report, key: key, top: top, to: csv)
            FileHandle.standardError.write(Data("wrote \(paths.count) CSV files to \(csv)\n".utf8))
        }
        if json {
            print(try Export.json(report, views: views, key: key, top: top))
            return
        }
        for v in views { print(try report.table(v, key: keyFor(v), top: top ?? (v == .rip ? 20 : nil)).renderText()) }
    }

    func compare(_ path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else {
            throw ReportError.database("no database at \(path) (write one with `exitscope ingest TRACE... --db \(path)`)")
        }
        let names = (runs ?? "").split(separator: ",").map(String.init)
        guard names.count == 2 else { throw ReportError.badArgument("--runs takes two runs: A,B") }
        let db = try ExitDatabase(path: path)
        var t = try db.compare(names[0], names[1])
        if let key { t = try t.sorted(by: key) }
        t = t.limited(to: top)
        if let csv {
            try FileManager.default.createDirectory(atPath: csv, withIntermediateDirectories: true)
            let file = (csv as NSString).appendingPathComponent("compare.csv")
            guard FileManager.default.createFile(atPath: file, contents: Data(t.renderCSV().utf8)) else {
                throw ReportError.badArgument("cannot write \(file)")
            }
        }
        print(json ? renderJSON(["views": ["compare": t.jsonObject()]]) : t.renderText())
    }
}
