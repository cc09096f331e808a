import ArgumentParser
import Foundation
import VMM

/// `exitscope run IMAGE`: runs a guest on ExitScope's VMM and prints a summary.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a guest image under ExitScope's KVM-based VMM.",
        discussion: """
        IMAGE is Samples/NAME, Samples/NAME.S, Samples/NAME.c, an .elf file, or with --flat a raw binary.
        A sample is built with `make -C Samples build/NAME.elf` when its ELF is missing or older than
        its source. The machine comes from the image's .exitscope section; flags override it.

        The guest's serial output goes to stdout (or --serial-out); the summary (exits by reason,
        per vCPU, unclaimed accesses, why the run stopped) goes to stderr, as JSON with --json.

        Exit status: the value the guest wrote to port 0x501 (low 8 bits), or (v << 1) | 1 for
        isa-debug-exit (port 0xf4); 0 when every vCPU halted with interrupts off (irqchip none);
        122 triple fault (SHUTDOWN) or reset; 123 KVM could not run the guest (FAIL_ENTRY,
        INTERNAL_ERROR such as an emulation failure); 124 --timeout expired; 125 --max-exits
        reached; 130 Ctrl-C; 1 bad image, bad flags or a VMM error.
        """
    )

    @OptionGroup var machine: MachineOptions

    @Flag(help: "Print the summary as JSON (on stderr).")
    var json = false

    @Flag(help: "Print no summary.")
    var quiet = false

    func run() throws {
        // A closed stdout (`| head`) must not kill the run: writes then just fail.
        signal(SIGPIPE, SIG_IGN)
        do {
            let status = try runMachine()
            throw ExitCode(status)
        } catch let e as VMMError {
            FileHandle.standardError.write(Data("exitscope: error: \(e.description)\n".utf8))
            throw ExitCode(RunExitStatus.vmmError)
        }
    }

    func runMachine() throws -> Int32 {
        let prepared = try machine.prepare()
        let summary = prepared.machine.run(limits: machine.limits)
        prepared.serial.flush()
        if !quiet {
            let text = json ? summary.json : summary.text
            FileHandle.standardError.write(Data((text + "\n").utf8))
        }
        return summary.exitStatus
    }
}
