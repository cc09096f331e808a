import ArgumentParser
import Foundation
import X86
import X86Emulator

/// `exitscope exec [--count N | --until-hlt] [--json] FILE|-`: runs one state through the emulator.
struct ExecCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec",
        abstract: "Execute instructions from a CPU state given as JSON (see Sources/X86Emulator/Executor/EXEC.md).",
        discussion: """
        FILE (or - for stdin) holds one state in ExitScope's schema plus "memory" (guest-physical
        address -> hex bytes) and optional answers for "cpuid", "msrs", "ports" and "rdtsc".
        Prints the resulting state, the memory written, the port and MSR accesses and any exception.

        Exit status: 0 when the instructions ran (an architectural exception is a result, not an
        error); 3 when the emulator could not go on (unsupported instruction, memory or an answer
        missing from the input, triple fault); 2 for a bad input file.
        """
    )

    @Option(help: "Number of instructions to execute (default 1).")
    var count: Int?

    @Flag(name: .customLong("until-hlt"), help: "Execute until HLT (at most --count instructions, default 10,000,000).")
    var untilHlt = false

    @Flag(help: "Print the result as JSON.")
    var json = false

    @Argument(help: "The input file, or - for stdin.")
    var file: String

    func run() throws {
        let data: Data
        if file == "-" {
            data = FileHandle.standardInput.readDataToEndOfFile()
        } else {
            guard let d = FileManager.default.contents(atPath: file) else {
                FileHandle.standardError.write(Data("exitscope exec: cannot read '\(file)'\n".utf8))
                throw ExitCode(2)
            }
            data = d
        }
        if let c = count, c < 1 {
            FileHandle.standardError.write(Data("exitscope exec: --count must be at least 1\n".utf8))
            throw ExitCode(2)
        }
        let input: ExecInput
        do { input = try ExecInput.parse(data) } catch {
            FileHandle.standardError.write(Data("exitscope exec: \(file): \(error)\n".utf8))
            throw ExitCode(2)
        }
        let out = Exec.run(input, count: count ?? (untilHlt ? 10_000_000 : 1), untilHalt: untilHlt)
        if json {
            FileHandle.standardOutput.write(out.jsonData(pretty: true))
            print("")
        } else {
            print(out.text(before: input.state))
        }
        switch out.last {
        case .unsupported, .unbackedMemory, .unanswered, .tripleFault: throw ExitCode(3)
        default: break
        }
    }
}
