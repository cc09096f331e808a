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

    @Argument(help: "The guest image.")
    var image: String

    @Option(name: .customLong("smp"), help: "Number of vCPUs (1...64).")
    var smp: Int?

    @Option(help: "Guest RAM in MiB (1...3072).")
    var memory: Int?

    @Option(help: "Boot mode: real, protected32 or long64.")
    var mode: String?

    @Option(help: "Interrupt controller: none (the VMM sees every HLT) or kernel (in-kernel LAPIC/IOAPIC/PIT).")
    var irqchip: String?

    @Option(help: "Stop after this many exits (all vCPUs together).")
    var maxExits: UInt64?

    @Option(help: "Stop after this many seconds.")
    var timeout: Double?

    @Option(help: "Write the guest's serial output to this file instead of stdout.")
    var serialOut: String?

    @Option(help: "Feed this file to the guest's serial input.")
    var serialIn: String?

    @Flag(help: "IMAGE is a raw binary (needs --load-address; --mode defaults to real).")
    var flat = false

    @Option(help: "Where a --flat binary is loaded and entered (e.g. 0x1000).")
    var loadAddress: String?

    @Flag(help: "Print the summary as JSON (on stderr).")
    var json = false

    @Flag(help: "Print no summary.")
    var quiet = false

    func validate() throws {
        if flat && loadAddress == nil { throw ValidationError("--flat needs --load-address") }
        if !flat && loadAddress != nil { throw ValidationError("--load-address is only for --flat images") }
        if let t = timeout, !(t > 0) { throw ValidationError("--timeout must be positive") }
        if let n = maxExits, n == 0 { throw ValidationError("--max-exits must be positive") }
    }

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
        let guest: GuestImage
        if flat {
            guard let text = loadAddress, let address = parseNumber(text) else {
                throw VMMError.config("--load-address '\(loadAddress ?? "")' is not a number")
            }
            guest = GuestImage.flat(try ImageLocator.readFile(image), at: address)
        } else {
            let located = try ImageLocator.locate(image)
            guest = try GuestImage.elf(try ImageLocator.readFile(located.elfPath), path: located.elfPath)
        }
        var config = MachineConfig()
        if let text = guest.machineText { try config.apply(text) }
        if let mode { try config.set("mode", mode) }
        if let smp { try config.set("vcpus", String(smp)) }
        if let memory { try config.set("memory", String(memory)) }
        if let irqchip { try config.set("irqchip", irqchip) }

        let output = try serialOut.map { path throws(VMMError) in try SerialOutput(path: path) } ?? SerialOutput(fd: 1)
        let input = try serialIn.map { path throws(VMMError) in try ImageLocator.readFile(path, limit: 64 << 20) } ?? []
        let machine = try Machine(config: config, image: guest, serial: output, serialInput: input)
        let summary = machine.run(limits: RunLimits(maxExits: maxExits, timeout: timeout, handleInterrupt: true))
        output.flush()
        if !quiet {
            let text = json ? summary.json : summary.text
            FileHandle.standardError.write(Data((text + "\n").utf8))
        }
        return summary.exitStatus
    }
}

/// Decimal or 0x-prefixed hexadecimal.
func parseNumber(_ s: String) -> UInt64? {
    if s.hasPrefix("0x") || s.hasPrefix("0X") { return UInt64(s.dropFirst(2), radix: 16) }
    return UInt64(s)
}
