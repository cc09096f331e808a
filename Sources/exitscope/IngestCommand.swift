import ArgumentParser
import Foundation
import Replay
import Report
import Trace

/// `exitscope ingest`: traces into a SQLite database (schema: Sources/Report/SCHEMA.md).
struct IngestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Add traces to a SQLite database: one run per trace, one row per record.",
        discussion: """
        Each trace becomes a run named after its file (without extension) or --name. Query the
        database with sqlite3 or pandas, or compare two runs with `exitscope report --db FILE --runs A,B`.
        """
    )

    @Argument(help: "Trace files.")
    var traces: [String]

    @Option(help: "The SQLite database (created if missing).")
    var db: String

    @Option(help: "Run name (only with one trace).")
    var name: String?

    @Flag(help: "Replace a run of the same name instead of refusing.")
    var replace = false

    @OptionGroup var symbols: SymbolsOption

    @Flag(help: "Also replay each trace (as `exitscope replay`) and store the verdicts.")
    var replay = false

    func validate() throws {
        if traces.isEmpty { throw ValidationError("give at least one trace") }
        if name != nil && traces.count > 1 { throw ValidationError("--name needs exactly one trace") }
    }

    func run() throws {
        do {
            let database = try ExitDatabase(path: db)
            for path in traces {
                let reader = try TraceReader(path: path)
                let runName = name ?? ((path as NSString).lastPathComponent as NSString).deletingPathExtension
                if let c = reader.cutShort {
                    FileHandle.standardError.write(Data("exitscope ingest: \(path) was cut short at byte \(c.offset); ingesting the complete frames\n".utf8))
                }
                let id = try TraceInput.ingest(reader, header: try symbols.apply(to: reader.header), into: database, name: runName, replace: replace)
                let row = try database.runs().first { $0.id == id }
                print("run \(runName) (id \(id)): \(row?.records ?? 0) records, \(row?.exits ?? 0) exits")
                if replay {
                    // Verdicts go in batches, so memory stays bounded however long the trace.
                    var batch: [VerdictRow] = []
                    var stored = 0
                    _ = try ReplayRun.run(reader, options: ReplayOptions(jobs: 2)) { v in
                        let d = v.differences.first.map { "\($0.field): recorded \($0.recorded), emulated \($0.emulated)" }
                        batch.append(VerdictRow(seq: v.seq, verdict: v.kind.rawValue, reference: v.reference,
                                                detail: d ?? v.note))
                        if batch.count >= 10_000 {
                            try database.addVerdicts(run: runName, batch)
                            stored += batch.count
                            batch.removeAll(keepingCapacity: true)
                        }
                    }
                    try database.addVerdicts(run: runName, batch)
                    print("run \(runName): \(stored + batch.count) replay verdicts")
                }
            }
        } catch let e as ReportError {
            FileHandle.standardError.write(Data("exitscope ingest: \(e)\n".utf8))
            throw ExitCode(1)
        } catch let e as TraceError {
            FileHandle.standardError.write(Data("exitscope ingest: \(e)\n".utf8))
            throw ExitCode(1)
        }
    }
}
