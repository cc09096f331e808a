import X86

/// A module handed to a Multiboot kernel: its bytes and its command line (kvm-unit-tests
/// reads its "environ" text, lines of KEY=VALUE, from the single module it is given).
public struct MultibootModule: Sendable, Equatable {
    public var bytes: [UInt8]
    public var cmdline: String
    public init(bytes: [UInt8], cmdline: String = "") { self.bytes = bytes; self.cmdline = cmdline }

    /// The environ text kvm-unit-tests expects: one KEY=VALUE per line.
    public static func environ(_ pairs: [String]) -> MultibootModule {
        MultibootModule(bytes: Array(pairs.map { $0 + "\n" }.joined().utf8), cmdline: "environ")
    }
}

/// Multiboot v1 (the GNU Multiboot Specification 0.6.96) as QEMU's `-kernel` does it for an
/// ELF image: the image is loaded by its program headers (physical addresses); the boot
/// vCPU enters in 32-bit protected mode, paging off, flat segments, with EAX=0x2BADB002 and
/// EBX the guest-physical address of the information block.
///
/// The block, the command lines, the memory map and the modules are placed after the image,
/// page-aligned, as QEMU places them: modules first, then the block and its strings. The
/// ACPI tables (ACPITables.swift, with the PM timer) go in the BIOS area at 0xE0000, where
/// kvm-unit-tests' RSDP scan finds them.
public enum Multiboot {
    public static let headerMagic: UInt32 = 0x1BAD_B002
    public static let bootloaderMagic: UInt32 = 0x2BAD_B002
    /// The header must lie 4-aligned in the file's first 8 KiB.
    public static let searchLimit = 8192

    // Info block flags (spec §3.3).
    public static let flagMemory: UInt32 = 1 << 0
    public static let flagCmdline: UInt32 = 1 << 2
    public static let flagModules: UInt32 = 1 << 3
    public static let flagMemoryMap: UInt32 = 1 << 6
    public static let flagBootloaderName: UInt32 = 1 << 9

    /// The header found in a file: its offset and flags.
    public struct Header: Equatable, Sendable {
        public var offset: Int
        public var flags: UInt32
    }

    /// Finds the header (magic, flags, checksum summing to zero), or nil.
    public static func findHeader(in data: [UInt8]) -> Header? {
        func u32(_ o: Int) -> UInt32 {
            UInt32(data[o]) | UInt32(data[o + 1]) << 8 | UInt32(data[o + 2]) << 16 | UInt32(data[o + 3]) << 24
        }
        var o = 0
        while o + 12 <= min(data.count, searchLimit) {
            if u32(o) == headerMagic {
                let flags = u32(o + 4)
                if headerMagic &+ flags &+ u32(o + 8) == 0 { return Header(offset: o, flags: flags) }
            }
            o += 4
        }
        return nil
    }

    /// The kernel's command line as QEMU builds it: the kernel's file name, a space, then the
    /// -append text (kvm-unit-tests takes the first word as argv[0]).
    public static func commandLine(kernel path: String, append: String) -> String { "\(path) \(append)" }

    /// One entry of the memory map: base, length, type (1 usable RAM, 2 reserved).
    public struct MemoryRange: Equatable, Sendable {
        public var base: UInt64, length: UInt64, type: UInt32
    }

    /// The machine's memory as the map shows it: conventional memory below 640 KiB, the
    /// BIOS holes reserved, RAM from 1 MiB up to the VMM's area, the VMM's area reserved.
    public static func memoryMap(config: MachineConfig) -> [MemoryRange] {
        let top = config.vmmAreaBase
        var map = [MemoryRange(base: 0, length: 0x9FC00, type: 1),
                   MemoryRange(base: 0x9FC00, length: 0x400, type: 2),
                   MemoryRange(base: 0xF0000, length: 0x10000, type: 2)]
        if top > 0x100000 { map.append(MemoryRange(base: 0x100000, length: top - 0x100000, type: 1)) }
        map.append(MemoryRange(base: top, length: config.memoryBytes - top, type: 2))
        return map
    }

    /// Checks `file` for a Multiboot header and returns `image` (parsed from it) with the
    /// information block, strings, memory map and modules as extra segments, and EAX/EBX set
    /// for the boot vCPU. Only ELF images are supported (the header's a.out-kludge addresses,
    /// flag 16, are not); the VBE/framebuffer request (flag 2) is refused.
    public static func prepare(_ image: GuestImage, file: [UInt8], path: String, config: MachineConfig,
                               cmdline: String, modules: [MultibootModule]) throws(VMMError) -> GuestImage {
        func bad(_ s: String) -> VMMError { .image(path: path, problem: s) }
        guard let header = findHeader(in: file) else {
            throw bad("no Multiboot header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB")
        }
        guard image.kind != .flat else { throw bad("a Multiboot image must be an ELF file here (the a.out kludge is not supported)") }
        if header.flags & 0x4 != 0 { throw bad("the kernel asks for a video mode (Multiboot flag 2), which this machine has not") }
        // Flags 0 (page-aligned modules) and 1 (memory info) are what we always give.
        guard config.mode == .protected32 else {
            throw bad("a Multiboot kernel is entered in protected32 mode, not \(config.mode.rawValue)")
        }
        guard config.memoryBytes >= 2 << 20 else { throw bad("a Multiboot machine needs at least 2 MiB of memory") }
        guard image.entry <= 0xFFFF_FFFF else { throw bad("entry \(hex(image.entry)) is above 4 GiB") }

        // The firmware's ACPI tables in the reserved BIOS area, where kvm-unit-tests looks for them.
        let acpi = ACPITables.build(vcpus: config.vcpus, pmTimerPort: MachineLayout.pmTimerPort)
        let acpiEnd = ACPITables.rsdpAddress + UInt64(acpi.count)
        if let clash = image.segments.first(where: { $0.address < acpiEnd && ACPITables.rsdpAddress < $0.address &+ $0.memorySize }) {
            throw bad("a segment at \(hex(clash.address)) overlaps the BIOS area at \(hex(ACPITables.rsdpAddress)) (the ACPI tables)")
        }

        let imageEnd = image.segments.map { $0.address &+ $0.memorySize }.max() ?? 0x100000
        var cursor = (max(imageEnd, 0x100000) + 0xFFF) & ~0xFFF
        var segments = image.segments
        segments.append(GuestImage.Segment(address: ACPITables.rsdpAddress, bytes: acpi, memorySize: UInt64(acpi.count)))
        let limit = config.vmmAreaBase
        func place(_ bytes: [UInt8], align: UInt64) throws(VMMError) -> UInt64 {
            let at = (cursor + align - 1) & ~(align - 1)
            guard at <= limit, UInt64(bytes.count) <= limit - at else {
                throw VMMError.config("the Multiboot modules and information (\(bytes.count) bytes at \(hex(at))) do not fit in "
                    + "\(config.memoryMiB) MiB of guest memory")
            }
            segments.append(GuestImage.Segment(address: at, bytes: bytes, memorySize: UInt64(bytes.count)))
            cursor = at + UInt64(bytes.count)
            return at
        }
        func cString(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }

        // Modules, each page-aligned: their start, end and command line.
        var moduleList: [UInt8] = []
        for m in modules {
            let start = try place(m.bytes.isEmpty ? [0] : m.bytes, align: 0x1000)
            let end = start + UInt64(m.bytes.count)
            let name = try place(cString(m.cmdline), align: 1)
            for v in [UInt32(start), UInt32(end), UInt32(name), 0] { moduleList += le32(v) }
        }
        let modsAddress = modules.isEmpty ? 0 : try place(moduleList, align: 16)
        let cmdlineAddress = try place(cString(cmdline), align: 1)
        let loaderName = try place(cString("ExitScope"), align: 1)
        var mmap: [UInt8] = []
        for r in memoryMap(config: config) {
            mmap += le32(20) + le64(r.base) + le64(r.length) + le32(r.type)
        }
        let mmapAddress = try place(mmap, align: 8)

        let upperTop = min(limit, 0x1_0000_0000)
        var info = [UInt8](repeating: 0, count: 120)
        func set(_ offset: Int, _ v: UInt32) { info.replaceSubrange(offset..<offset + 4, with: le32(v)) }
        set(0, flagMemory | flagCmdline | flagModules | flagMemoryMap | flagBootloaderName)
        set(4, 640)                                          // mem_lower, KiB
        set(8, UInt32((upperTop - 0x100000) / 1024))         // mem_upper, KiB from 1 MiB
        set(16, UInt32(cmdlineAddress))
        set(20, UInt32(modules.count))
        set(24, UInt32(modsAddress))
        set(44, UInt32(mmap.count))
        set(48, UInt32(mmapAddress))
        set(64, UInt32(loaderName))
        let infoAddress = try place(info, align: 8)
        guard cursor <= 0xFFFF_FFFF else { throw VMMError.config("the Multiboot information lies above 4 GiB") }

        var out = image
        out.segments = segments
        out.entryRegisters = GuestImage.EntryRegisters(rax: UInt64(bootloaderMagic), rbx: infoAddress)
        return out
    }

    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
}
