import ArgumentParser
import Foundation
import Replay
import Trace

/// `exitscope diff`: where two traces of the same guest part, and how they differ overall.
struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Align the exit streams of two traces and report where they part.",
        discussion: """
            Exits are aligned vCPU by vCPU by reason, instruction RIP and device access (space,
            address, size, direction); the access data is compared separately. After a parting the
            streams are resynchronised within a window of \(TraceDiff.window) exits.
            Exit status: 0 when the exit streams are the same, 1 when they differ, 2 for a bad trace.
            """
    )

    @Argument(help: "The first trace.")
    var a: String

    @Argument(help: "The second trace.")
    var b: String

    @Flag(help: "One JSON object instead of text.")
    var json = false

    @Option(help: "Places (reason and RIP) listed in the text output.")
    var top: Int = 20

    func run() throws {
        let result: TraceDiffResult
        do {
            result = try TraceDiff.run(try TraceReader(path: a), try TraceReader(path: b))
        } catch let e as TraceError {
            FileHandle.standardError.write(Data("exitscope diff: \(e)\n".utf8))
            throw ExitCode(2)
        }
        if json {
            Output.shared.line(TraceDiff.json(result, pathA: a, pathB: b))
        } else {
            Output.shared.write(TraceDiff.text(result, pathA: a, pathB: b, top: max(1, top)))
        }
        Output.shared.flush()
        if !result.identical { throw ExitCode(1) }
    }
}
