import ArgumentParser

/// The command tree. Each subcommand lives in its own file; this file only lists them.
/// Subcommands parse arguments and print; the work is done by the library modules.
@main
struct ExitScope: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exitscope",
        abstract: "Record every VM exit of a guest, replay it through an x86 emulator, report the overhead.",
        subcommands: [
            RunCommand.self,
            RecordCommand.self,
            DecodeCommand.self,
            ReportCommand.self,
            IngestCommand.self,
            ExecCommand.self,
            ShowCommand.self,
            ReplayCommand.self,
            DiffCommand.self,
        ]
    )
}
