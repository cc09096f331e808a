import ArgumentParser
import Foundation
import VMM

/// The options that describe a machine and its run, shared by `run` and `record` so that
/// `record` runs the guest exactly as `run` does.
struct MachineOptions: ParsableArguments {
    @Argument(help: "The guest image: Samples/NAME, an .elf file, or with --flat a raw binary (none with --kernel).")
    var image: String?

    @Option(help: ArgumentHelp("Boot a Linux bzImage by the x86 boot protocol (64-bit entry, e820, MP tables); "
        + "defaults irqchip=kernel, memory=512, --append \"console=ttyS0\". See Samples/linux.", valueName: "bzImage"))
    var kernel: String?

    @Option(name: .customLong("smp"), help: "Number of vCPUs (1...64).")
    var smp: Int?

    @Option(help: "Guest RAM in MiB (1...3072).")
    var memory: Int?

    @Option(help: "Boot mode: real, protected32 or long64.")
    var mode: String?

    @Option(help: "Interrupt controller: none (the VMM sees every HLT) or kernel (in-kernel LAPIC/IOAPIC/PIT).")
    var irqchip: String?

    @Option(help: "CPUID profile: host (KVM's supported set) or noavx (without AVX, AVX-512, AMX).")
    var cpuid: String?

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

    @Flag(help: ArgumentHelp("IMAGE is a Multiboot v1 kernel (an ELF, e.g. a kvm-unit-tests .flat): entered in protected32 "
        + "mode with EAX=0x2BADB002, EBX=the information block; defaults irqchip=kernel, memory=128.",
        discussion: ""))
    var multiboot = false

    @Option(help: "The kernel's command line (--multiboot or --kernel).")
    var append: String?

    @Option(help: ArgumentHelp("A Multiboot module (repeatable), as QEMU's -initrd; with --kernel the one initramfs.", valueName: "file"))
    var initrd: [String] = []

    @Option(help: ArgumentHelp("KEY=VALUE for a Multiboot environ module (repeatable), e.g. NR_CPUS=1: "
        + "the lines kvm-unit-tests reads from its one module.", valueName: "key=value"))
    var env: [String] = []

    @Flag(help: "Do not complete instructions KVM's emulator fails on: end the run with the emulation-failure report.")
    var noComplete = false

    func validate() throws {
        if flat && loadAddress == nil { throw ValidationError("--flat needs --load-address") }
        if !flat && loadAddress != nil { throw ValidationError("--load-address is only for --flat images") }
        if let t = timeout, !(t > 0) { throw ValidationError("--timeout must be positive") }
        if let n = maxExits, n == 0 { throw ValidationError("--max-exits must be positive") }
        if multiboot && flat { throw ValidationError("--multiboot and --flat exclude each other") }
        if kernel != nil {
            if image != nil { throw ValidationError("give either IMAGE or --kernel, not both") }
            if multiboot || flat { throw ValidationError("--kernel excludes --multiboot and --flat") }
            if initrd.count > 1 { throw ValidationError("--kernel takes one --initrd") }
            if !env.isEmpty { throw ValidationError("--env is for --multiboot kernels") }
            if let mode, mode != "long64" { throw ValidationError("a --kernel bzImage is entered in long64 mode (not \(mode))") }
        } else {
            if image == nil { throw ValidationError("missing IMAGE (or --kernel BZIMAGE)") }
            if !multiboot && (append != nil || !initrd.isEmpty || !env.isEmpty) {
                throw ValidationError("--append, --initrd and --env are for --multiboot or --kernel")
            }
        }
        if let bad = env.first(where: { !$0.contains("=") || $0.hasPrefix("=") || $0.contains("\n") }) {
            throw ValidationError("--env '\(bad)' is not KEY=VALUE")
        }
        if multiboot, let mode, mode != "protected32" {
            throw ValidationError("a --multiboot kernel starts in protected32 mode (not \(mode))")
        }
    }

    var limits: RunLimits {
        RunLimits(maxExits: maxExits, timeout: timeout, handleInterrupt: true, completeEmulationFailures: !noComplete)
    }

    /// A machine ready to run, with what a trace header needs to know about its image.
    struct Prepared {
        var machine: Machine
        var serial: SerialOutput
        var imagePath: String
        var imageBytes: [UInt8]
        var symbols: [ImageSymbol]
    }

    func prepare() throws(VMMError) -> Prepared {
        var guest: GuestImage
        let path: String
        let bytes: [UInt8]
        if let kernel {
            path = kernel
            bytes = try ImageLocator.readFile(kernel, limit: 256 << 20)
            guest = GuestImage.flat([], at: 0)
        } else if flat {
            let image = image ?? ""
            guard let text = loadAddress, let address = parseNumber(text) else {
                throw VMMError.config("--load-address '\(loadAddress ?? "")' is not a number")
            }
            path = image
            bytes = try ImageLocator.readFile(image)
            guest = GuestImage.flat(bytes, at: address)
        } else {
            let located = try ImageLocator.locate(image ?? "")
            path = located.elfPath
            bytes = try ImageLocator.readFile(located.elfPath)
            guest = try GuestImage.elf(bytes, path: located.elfPath)
        }
        var config = MachineConfig()
        if multiboot {
            // What QEMU gives a -kernel: in-kernel PIC/LAPIC/IOAPIC/PIT, 128 MiB.
            config.mode = .protected32
            config.irqchip = .kernel
            config.memoryMiB = 128
        }
        if kernel != nil {
            // What a Linux guest needs: the in-kernel irqchip and PIT, 64-bit entry, room for
            // the decompression buffer (16 MiB + init_size) and the initramfs.
            config.mode = .long64
            config.irqchip = .kernel
            config.memoryMiB = 512
        }
        if let text = guest.machineText { try config.apply(text) }
        if let mode { try config.set("mode", mode) }
        if let smp { try config.set("vcpus", String(smp)) }
        if let memory { try config.set("memory", String(memory)) }
        if let irqchip { try config.set("irqchip", irqchip) }
        if let cpuid { try config.set("cpuid", cpuid) }

        if kernel != nil {
            let ramdisk = try initrd.first.map { file throws(VMMError) in try ImageLocator.readFile(file, limit: 1 << 30) }
            guest = try LinuxBoot.prepare(file: bytes, path: path, config: config, cmdline: append ?? "console=ttyS0", initrd: ramdisk)
        }
        if multiboot {
            var modules: [MultibootModule] = []
            for file in initrd { modules.append(MultibootModule(bytes: try ImageLocator.readFile(file, limit: 256 << 20), cmdline: file)) }
            if !env.isEmpty { modules.append(.environ(env)) }
            guest = try Multiboot.prepare(guest, file: bytes, path: path, config: config, cmdline: Multiboot.commandLine(kernel: path, append: append ?? ""),
                                          modules: modules)
        }

        let output = try serialOut.map { path throws(VMMError) in try SerialOutput(path: path) } ?? SerialOutput(fd: 1)
        let input = try serialIn.map { path throws(VMMError) in try ImageLocator.readFile(path, limit: 64 << 20) } ?? []
        let machine = try Machine(config: config, image: guest, serial: output, serialInput: input)
        return Prepared(machine: machine, serial: output, imagePath: path, imageBytes: bytes,
                        symbols: flat || kernel != nil ? [] : GuestImage.elfSymbols(bytes))
    }
}

/// Prints "exitscope: error: ..." on stderr.
func printError(_ message: String) {
    FileHandle.standardError.write(Data("exitscope: error: \(message)\n".utf8))
}

/// Decimal or 0x-prefixed hexadecimal.
func parseNumber(_ s: String) -> UInt64? {
    if s.hasPrefix("0x") || s.hasPrefix("0X") { return UInt64(s.dropFirst(2), radix: 16) }
    return UInt64(s)
}
