import ArgumentParser
import Foundation
import Replay
import Trace
import X86
import X86Emulator

/// `exitscope replay`: every record through the emulator, compared with what the trace says happened.
struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Replay each recorded exit through the emulator and report where it differs.",
        discussion: """
            Each exit (all fragments of one instruction) runs from the state before it, with memory
            served only from the trace's guest bytes and device reads answered as recorded; the
            accesses, the next RIP and every part of the state the trace holds afterwards are
            compared, masking only the instruction's undefined flags.
            Verdicts: match, divergence, unrecorded, unsupported, ambiguous, unlocated,
            unreconstructable, incomplete, self (a completion), not-replayable.
            Exit status: 0 when nothing failed, 1 when some verdict other than match, self or
            not-replayable was given and not accepted with --allow, 2 for a bad trace or option.
            """
    )

    @Argument(help: "The trace file (.estrace).")
    var trace: String

    @Flag(help: "One JSON object per verdict instead of the summary.")
    var json = false

    @Option(name: .customLong("exit"), help: "Only the verdict for the record with this sequence number, in full.")
    var exitSeq: UInt64?

    @Option(help: "Only records of this vCPU.")
    var vcpu: UInt16?

    @Option(help: "Frames decoded and replayed in parallel (the output does not change).")
    var jobs: Int = 1

    @Option(name: .customLong("allow"), help: "Accept verdicts of this kind (repeatable), e.g. --allow unrecorded.")
    var allow: [String] = []

    @Option(name: .customLong("export-divergences"), help: "Write each divergence as an `exec` input into this directory.")
    var exportDirectory: String?

    @Flag(help: "Print every failing verdict, not only the first of each kind.")
    var verbose = false

    func validate() throws {
        if jobs < 1 || jobs > 64 { throw ValidationError("--jobs must be between 1 and 64") }
        for a in allow where VerdictKind(rawValue: a) == nil {
            throw ValidationError("--allow \(a): not a verdict kind (\(VerdictKind.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
    }

    func run() throws {
        do {
            try replay()
        } catch let e as TraceError {
            Output.shared.flush()
            FileHandle.standardError.write(Data("exitscope replay: \(e)\n".utf8))
            throw ExitCode(2)
        } catch let e as ExportError {
            Output.shared.flush()
            FileHandle.standardError.write(Data("exitscope replay: \(e.message)\n".utf8))
            throw ExitCode(2)
        }
    }

    private func replay() throws {
        let reader = try TraceReader(path: trace)
        if let c = reader.cutShort {
            FileHandle.standardError.write(Data("exitscope replay: \(trace) was cut short at byte offset \(c.offset) (\(c.reason)); replaying its \(reader.recordCount) complete records\n".utf8))
        }
        let allowed = Set(allow.compactMap(VerdictKind.init(rawValue:)))
        if let d = exportDirectory { try DivergenceExport.prepare(d) }
        let bar = ProgressBar(enabled: isatty(2) != 0 && !json)
        var exported = 0
        var failingLines: [String] = []
        let summary = try ReplayRun.run(reader, options: ReplayOptions(jobs: jobs, vcpu: vcpu, exitSeq: exitSeq,
                                                                       delivery: json || exitSeq != nil ? .all : .failures),
                                        progress: { bar.update($0, $1) }) { v in
            if json { Output.shared.line(v.jsonLine()) }
            if verbose && v.kind.isFailure && !json { failingLines.append(v.summaryLine) }
            if v.kind == .divergence, let d = exportDirectory, v.reproduction != nil {
                try DivergenceExport.write(v, directory: d)
                exported += 1
            }
            if exitSeq != nil && !json { Output.shared.line(ReplayText.full(v)) }
        }
        bar.finish()
        if !json && exitSeq == nil {
            Output.shared.write(ReplayText.summary(summary, reader: reader, allowed: allowed))
            for l in failingLines { Output.shared.line(l) }
        }
        if let d = exportDirectory, !json { Output.shared.line("exported \(exported) divergence(s) to \(d)") }
        Output.shared.flush()
        if exitSeq != nil && summary.verdicts == 0 {
            FileHandle.standardError.write(Data("exitscope replay: no verdict covers record \(exitSeq ?? 0)\n".utf8))
            throw ExitCode(2)
        }
        if summary.failures(allowing: allowed) > 0 { throw ExitCode(1) }
    }
}

/// A progress bar on stderr, only on a terminal; redrawn at most a few times a second.
final class ProgressBar {
    let enabled: Bool
    private var last = Date.distantPast
    private var drawn = false
    init(enabled: Bool) { self.enabled = enabled }
    func update(_ done: UInt64, _ total: UInt64) {
        guard enabled, total > 0 else { return }
        let now = Date()
        guard now.timeIntervalSince(last) > 0.2 || done == total else { return }
        last = now
        let width = 40
        let filled = Int(Double(width) * Double(done) / Double(total))
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        FileHandle.standardError.write(Data("\rreplay [\(bar)] \(done)/\(total) records".utf8))
        drawn = true
    }
    func finish() {
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }
}
