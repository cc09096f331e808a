import ArgumentParser
import Foundation
import Record
import Trace
import VMM

/// `exitscope record IMAGE`: runs the guest exactly as `run` does and writes every exit to a trace.
struct RecordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record",
        abstract: "Run a guest and record every VM exit into a trace file.",
        discussion: """
        The guest runs as under `exitscope run` (same flags, same exit status). Each exit becomes a
        VMCB-style record (EXITCODE, EXITINFO1/2, nRIP, the instruction, the save area, the device
        side, guest bytes, host TSC at exit and re-entry); see Sources/Trace/FORMAT.md.

        --fidelity full also captures the state after each pending instruction completed (one
        extra KVM_RUN per exit). --single-step records every CPL0 guest instruction as a step.
        The summary (records, bytes per exit, where the trace went) goes to stderr.
        """
    )

    @OptionGroup var machine: MachineOptions

    @Option(name: .shortAndLong, help: "The trace file (default: NAME.estrace in the current directory).")
    var out: String?

    @Option(help: "exit (the state KVM showed at each exit) or full (also the state after the instruction).")
    var fidelity: String = "exit"

    @Flag(help: "Single-step the guest (KVM_GUESTDBG_SINGLESTEP): every CPL0 instruction becomes a step record.")
    var singleStep = false

    @Option(help: "Records per vCPU frame (a frame is the unit of compression, checksums and seeking).")
    var frameRecords: Int = 16384

    @Flag(help: "Print the run and recording summary as JSON (on stderr).")
    var json = false

    @Flag(help: "Print no summary.")
    var quiet = false

    func validate() throws {
        guard Fidelity(rawValue: fidelity) != nil else {
            throw ValidationError("--fidelity must be 'exit' or 'full', not '\(fidelity)'")
        }
        guard frameRecords >= 1 else { throw ValidationError("--frame-records must be at least 1") }
    }

    func run() throws {
        let prepared: MachineOptions.Prepared
        do { prepared = try machine.prepare() } catch {
            printError(error.description)
            throw ExitCode(RunExitStatus.vmmError)
        }
        let path = out ?? defaultTracePath(prepared.imagePath)
        let options = RecorderOptions(
            observer: ObserverOptions(fidelity: Fidelity(rawValue: fidelity) ?? .exit, singleStep: singleStep),
            writer: TraceWriterSettings(maxRecordsPerFrame: frameRecords))
        let recorder: Recorder
        do {
            recorder = try Recorder(path: path, machine: prepared.machine, imagePath: prepared.imagePath,
                                    imageBytes: prepared.imageBytes,
                                    symbols: prepared.symbols.map { GuestSymbol(address: $0.address, size: $0.size, name: $0.name) },
                                    commandLine: CommandLine.arguments, options: options)
        } catch {
            printError("cannot write the trace: \(error)")
            throw ExitCode(RunExitStatus.vmmError)
        }
        let summary = prepared.machine.run(limits: machine.limits, observer: recorder, options: options.observer)
        prepared.serial.flush()
        let recording: RecordingSummary
        do { recording = try recorder.finish() } catch {
            printError("the trace could not be finished: \(error)")
            throw ExitCode(RunExitStatus.vmmError)
        }
        if !quiet {
            if json {
                let r: [String: Any] = [
                    "trace": recording.path, "records": recording.records, "exits": recording.exits,
                    "file_bytes": recording.fileBytes, "frames": recording.frames,
                    "bytes_per_exit": recording.bytesPerExit, "ambiguous": recording.ambiguous,
                    "unlocated": recording.unlocated, "exit_status": summary.exitStatus, "stop": summary.stop.name,
                    "writer_stalls": recording.writerStalls,
                ]
                let data = (try? JSONSerialization.data(withJSONObject: r, options: [.sortedKeys])) ?? Data()
                FileHandle.standardError.write(Data((summary.json + "\n").utf8))
                FileHandle.standardError.write(data + Data("\n".utf8))
            } else {
                var text = summary.text + "\n"
                text += "trace: \(recording.path): \(recording.records) records (\(recording.exits) exits) in \(recording.frames) frames, "
                text += "\(recording.fileBytes) bytes, \(String(format: "%.2f", recording.bytesPerExit)) bytes/exit\n"
                if recording.unlocated > 0 { text += "trace: \(recording.unlocated) committed exits whose instruction was not found\n" }
                if recording.ambiguous > 0 { text += "trace: \(recording.ambiguous) exits with several candidate instructions (recorded as ambiguous)\n" }
                if recording.writerStalls > 0 { text += "trace: vCPUs waited \(recording.writerStalls) times for the trace writer (a full queue)\n" }
                FileHandle.standardError.write(Data(text.utf8))
            }
        }
        throw ExitCode(summary.exitStatus)
    }

    func defaultTracePath(_ image: String) -> String {
        var name = (image as NSString).lastPathComponent
        for ext in [".elf", ".bin", ".img"] where name.hasSuffix(ext) { name = String(name.dropLast(ext.count)) }
        return name + ".estrace"
    }
}
