import X86

/// The Linux x86 boot protocol (Documentation/arch/x86/boot.rst) for a bzImage, entered at its
/// 64-bit entry point as the "64-bit boot protocol" section describes: the boot loader (we)
/// fills a zero page (`struct boot_params`) with the setup header copied from the file, the
/// e820 memory map, the command line and the initrd, identity-maps memory, loads a GDT with
/// flat __BOOT_CS (0x10) and __BOOT_DS (0x18), and jumps to the protected-mode kernel's load
/// address + 0x200 with RSI = the zero page, interrupts off.
///
/// Everything the file says (sizes, offsets, versions) is checked before use: a truncated or
/// corrupted bzImage is a `VMMError.image` naming what is wrong.
///
/// The guest-physical layout (all below 1 MiB except the kernel and the initrd):
/// GDT at 0x500, boot stack below 0x7000, zero page at 0x7000, identity page tables at
/// 0x9000 (PML4, PDPT, four page directories: 0-4 GiB with 2 MiB pages), the command line at
/// 0x20000, the ACPI tables (ACPITables.swift) at 0xE0000 and the MP tables (MPTable.swift) at
/// 0xF0000 in the BIOS area, the protected-mode kernel at
/// 1 MiB (`loadAddress`), the initrd as high as the protocol and RAM allow.
public enum LinuxBoot {
    public static let gdtAddress: UInt64 = 0x500
    public static let stackTop: UInt64 = 0x7000
    public static let zeroPageAddress: UInt64 = 0x7000
    public static let pageTableAddress: UInt64 = 0x9000
    public static let commandLineAddress: UInt64 = 0x20000
    /// The protected-mode kernel's load address: 1 MiB, where a bzImage's code32_start points.
    /// A relocatable kernel moves itself to its decompression buffer (pref_address up) anyway.
    public static let loadAddress: UInt64 = 0x100000
    /// The boot protocol's selectors for the 64-bit entry.
    public static let bootCS: UInt16 = 0x10
    public static let bootDS: UInt16 = 0x18
    /// The minimum protocol version: 2.12 has xloadflags (XLF_KERNEL_64 says a 64-bit entry exists).
    public static let minimumVersion: UInt16 = 0x020C

    // loadflags and xloadflags bits.
    public static let loadedHigh: UInt8 = 0x01
    public static let canUseHeap: UInt8 = 0x80
    public static let xlfKernel64: UInt16 = 0x01
    public static let xlfCanBeLoadedAbove4G: UInt16 = 0x02

    /// The fields of the setup header a boot loader reads (offsets are from the file's start,
    /// which is also their offset in the zero page).
    public struct SetupHeader: Equatable, Sendable {
        public var setupSects: Int
        public var version: UInt16
        public var loadflags: UInt8
        public var code32Start: UInt32
        public var initrdAddrMax: UInt32
        public var kernelAlignment: UInt32
        public var relocatable: Bool
        public var xloadflags: UInt16
        public var cmdlineSize: UInt32
        public var payloadOffset: UInt32
        public var payloadLength: UInt32
        public var prefAddress: UInt64
        public var initSize: UInt32
        /// Where the setup header ends in the file (0x202 + the byte at 0x201): what is copied.
        public var headerEnd: Int
        /// The protected-mode kernel: file offset and length.
        public var kernelOffset: Int
        public var kernelLength: Int

        /// The compression of the payload, from its first bytes (for messages and the
        /// host-side decompression path).
        public func payloadFormat(in file: [UInt8]) -> String {
            let start = kernelOffset + Int(payloadOffset)
            guard start >= 0, start + 6 <= file.count else { return "unknown" }
            let m = Array(file[start..<start + 6])
            if m[0] == 0x1F && m[1] == 0x8B { return "gzip" }
            if m[0] == 0x42 && m[1] == 0x5A && m[2] == 0x68 { return "bzip2" }
            if m[0] == 0x5D && m[1] == 0x00 { return "lzma" }
            if m[0] == 0xFD && m[1] == 0x37 && m[2] == 0x7A && m[3] == 0x58 && m[4] == 0x5A { return "xz" }
            if m[0] == 0x89 && m[1] == 0x4C && m[2] == 0x5A && m[3] == 0x4F { return "lzo" }
            if m[0] == 0x02 && m[1] == 0x21 && m[2] == 0x4C && m[3] == 0x18 { return "lz4" }
            if m[0] == 0x28 && m[1] == 0xB5 && m[2] == 0x2F && m[3] == 0xFD { return "zstd" }
            return "unknown"
        }
    }


    /// Parses and validates the setup header of a bzImage.
    public static func parseHeader(_ file: [UInt8], path: String = "kernel") throws(VMMError) -> SetupHeader {
        func bad(_ s: String) -> VMMError { .image(path: path, problem: s) }
        // 0x268 is the end of the 2.15 header fields we read (init_size at 0x260 + kernel_info_offset).
        guard file.count >= 0x268 else { throw bad("\(file.count) bytes is too short for a bzImage (the setup header ends at 0x268)") }
        guard le16(file, 0x1FE) == 0xAA55 else { throw bad("no boot sector signature 0xAA55 at 0x1FE: not a bzImage") }
        guard le32(file, 0x202) == 0x5372_6448 else { throw bad("no \"HdrS\" magic at 0x202: not a Linux bzImage (or a pre-2.0 zImage)") }
        let version = le16(file, 0x206)
        guard version >= minimumVersion else {
            throw bad("boot protocol \(version >> 8).\(version & 0xFF) is older than 2.12 (no 64-bit entry to use)")
        }
        let headerEnd = 0x202 + Int(file[0x201])
        var setupSects = Int(file[0x1F1])
        if setupSects == 0 { setupSects = 4 }  // the protocol's rule for ancient kernels
        let kernelOffset = (setupSects + 1) * 512
        guard kernelOffset < file.count else {
            throw bad("setup_sects \(setupSects) puts the protected-mode kernel at \(kernelOffset), beyond the file's \(file.count) bytes")
        }
        let loadflags = file[0x211]
        guard loadflags & loadedHigh != 0 else { throw bad("loadflags \(hex(UInt64(loadflags))) lack LOADED_HIGH: a zImage, not a bzImage") }
        let xloadflags = le16(file, 0x236)
        guard xloadflags & xlfKernel64 != 0 else { throw bad("xloadflags \(hex(UInt64(xloadflags))) lack XLF_KERNEL_64: no 64-bit entry point") }
        let kernelAlignment = le32(file, 0x230)
        guard kernelAlignment != 0, kernelAlignment & (kernelAlignment - 1) == 0 else {
            throw bad("kernel_alignment \(hex(UInt64(kernelAlignment))) is not a power of two")
        }
        let cmdlineSize = le32(file, 0x238)
        let initSize = le32(file, 0x260)
        let prefAddress = le64(file, 0x258)
        let kernelLength = file.count - kernelOffset
        guard initSize >= UInt32(min(kernelLength, Int(UInt32.max))) else {
            throw bad("init_size \(hex(UInt64(initSize))) is smaller than the protected-mode kernel (\(kernelLength) bytes)")
        }
        guard prefAddress >= loadAddress, prefAddress < 1 << 32 else {
            throw bad("pref_address \(hex(prefAddress)) is not between 1 MiB and 4 GiB")
        }
        let payloadOffset = le32(file, 0x248), payloadLength = le32(file, 0x24C)
        guard UInt64(payloadOffset) + UInt64(payloadLength) <= UInt64(kernelLength) else {
            throw bad("payload (offset \(hex(UInt64(payloadOffset))), length \(hex(UInt64(payloadLength)))) lies beyond the protected-mode kernel's \(kernelLength) bytes")
        }
        return SetupHeader(setupSects: setupSects, version: version, loadflags: loadflags, code32Start: le32(file, 0x214),
                           initrdAddrMax: le32(file, 0x22C), kernelAlignment: kernelAlignment, relocatable: file[0x234] != 0,
                           xloadflags: xloadflags, cmdlineSize: cmdlineSize, payloadOffset: payloadOffset,
                           payloadLength: payloadLength, prefAddress: prefAddress, initSize: initSize,
                           headerEnd: min(headerEnd, 0x290), kernelOffset: kernelOffset, kernelLength: kernelLength)
    }

    /// One e820 entry: type 1 RAM, 2 reserved.
    public struct E820Entry: Equatable, Sendable {
        public var address: UInt64, size: UInt64, type: UInt32
        public init(address: UInt64, size: UInt64, type: UInt32) { self.address = address; self.size = size; self.type = type }
    }
    public static let e820RAM: UInt32 = 1
    public static let e820Reserved: UInt32 = 2

    /// The map: RAM below 639 KiB, the EBDA's kilobyte, VGA window and BIOS area reserved up
    /// to 1 MiB (the MP tables live there), RAM from 1 MiB to the VMM's area (the top 64 KiB,
    /// reserved). RAM stops at 3 GiB at most, so the 3-4 GiB hole (IOAPIC 0xFEC00000, LAPIC
    /// 0xFEE00000, the MMIO devices) is never RAM.
    public static func e820Map(config: MachineConfig) -> [E820Entry] {
        let top = config.vmmAreaBase
        var map = [E820Entry(address: 0, size: 0x9FC00, type: e820RAM),
                   E820Entry(address: 0x9FC00, size: 0x100000 - 0x9FC00, type: e820Reserved)]
        if top > 0x100000 { map.append(E820Entry(address: 0x100000, size: top - 0x100000, type: e820RAM)) }
        map.append(E820Entry(address: top, size: config.memoryBytes - top, type: e820Reserved))
        return map
    }

    /// Where the initrd goes: page-aligned, as high as possible with its end at or below both
    /// initrd_addr_max + 1 and the end of RAM below the VMM's area; never over the kernel's
    /// load or decompression buffer. Nil when it does not fit.
    public static func initrdAddress(size: UInt64, header: SetupHeader, config: MachineConfig) -> UInt64? {
        let limit = min(UInt64(header.initrdAddrMax) + 1, config.vmmAreaBase)
        guard size > 0, size <= limit else { return nil }
        let at = (limit - size) & ~0xFFF
        let kernelEnd = max(loadAddress + UInt64(header.kernelLength), header.prefAddress + UInt64(header.initSize))
        guard at >= kernelEnd else { return nil }
        return at
    }

    /// The page tables at `pageTableAddress`: PML4, PDPT, four page directories identity-
    /// mapping 0-4 GiB with 2 MiB pages (24 KiB, one segment).
    public static func identityPageTables() -> [UInt8] {
        let base = pageTableAddress
        var t = [UInt8](repeating: 0, count: 6 * 0x1000)
        func put(_ offset: Int, _ v: UInt64) { for i in 0..<8 { t[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        put(0, (base + 0x1000) | 0x3)
        for g in 0..<4 {
            put(0x1000 + g * 8, (base + 0x2000 + UInt64(g) * 0x1000) | 0x3)
            for i in 0..<512 {
                put(0x2000 + g * 0x1000 + i * 8, (UInt64(g) << 30) | (UInt64(i) << 21) | 0x83)  // P, RW, PS
            }
        }
        return t
    }

    /// The GDT: null, null, __BOOT_CS (64-bit code, flat), __BOOT_DS (data, flat).
    public static let gdt: [UInt64] = [0, 0, Loader.code64, Loader.data32]

    /// The zero page for `header` (copied from `file`), with the command line, initrd and e820 map.
    public static func zeroPage(file: [UInt8], header: SetupHeader, config: MachineConfig,
                                initrd: (address: UInt64, size: UInt64)?) -> [UInt8] {
        var zp = [UInt8](repeating: 0, count: 0x1000)
        for o in 0x1F1..<header.headerEnd where o < file.count { zp[o] = file[o] }
        func put(_ o: Int, _ v: UInt64, _ n: Int) { for i in 0..<n { zp[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        put(0x1FA, 0xFFFF, 2)                       // vid_mode: "normal"
        zp[0x210] = 0xFF                            // type_of_loader: undefined boot loader
        zp[0x211] = header.loadflags | canUseHeap   // keep LOADED_HIGH, heap_end_ptr is valid
        put(0x214, loadAddress, 4)                  // code32_start
        put(0x224, 0xDE00, 2)                       // heap_end_ptr: 0xE000 - 0x200, as boot.rst suggests
        put(0x228, commandLineAddress, 4)           // cmd_line_ptr
        put(0x0C8, commandLineAddress >> 32, 4)     // ext_cmd_line_ptr
        put(0x070, ACPITables.rsdpAddress, 8)       // acpi_rsdp_addr (protocol 2.14)
        if let r = initrd {
            put(0x218, r.address & 0xFFFF_FFFF, 4); put(0x0C0, r.address >> 32, 4)
            put(0x21C, r.size & 0xFFFF_FFFF, 4); put(0x0C4, r.size >> 32, 4)
        }
        let map = e820Map(config: config)
        zp[0x1E8] = UInt8(map.count)
        for (i, e) in map.enumerated() {
            let o = 0x2D0 + i * 20
            put(o, e.address, 8); put(o + 8, e.size, 8); put(o + 16, UInt64(e.type), 4)
        }
        return zp
    }

    /// The boot vCPU's state at the 64-bit entry.
    public static func entryState(header: SetupHeader) -> CPUState {
        var s = CPUState.flat(.long64)
        s.cs.selector = bootCS
        for r in [SegmentRegister.ds, .es, .ss, .fs, .gs] {
            var seg = s.segment(r)
            seg.selector = bootDS
            s.setSegment(r, seg)
        }
        s.gdtr = DescriptorTable(base: gdtAddress, limit: UInt16(gdt.count * 8 - 1))
        s.idtr = DescriptorTable(base: 0, limit: 0)
        s.cr0 |= CR0.ne
        s.cr3 = pageTableAddress
        s.rip = loadAddress + 0x200
        s.rsp = stackTop
        s.rsi = zeroPageAddress
        s.rflags = 0x2                               // IF=0
        return s
    }

    /// Builds the guest: every piece as a segment, and the entry state for vCPU 0.
    /// `cmdline` must fit cmdline_size; `initrd` (if any) must fit below initrd_addr_max.
    public static func prepare(file: [UInt8], path: String = "kernel", config: MachineConfig, cmdline: String,
                               initrd: [UInt8]?) throws(VMMError) -> GuestImage {
        func bad(_ s: String) -> VMMError { .image(path: path, problem: s) }
        let header = try parseHeader(file, path: path)
        let cmd = Array(cmdline.utf8)
        guard cmd.count <= Int(header.cmdlineSize) else {
            throw VMMError.config("the command line (\(cmd.count) bytes) exceeds the kernel's cmdline_size (\(header.cmdlineSize))")
        }
        guard !cmd.contains(0) else { throw VMMError.config("the command line contains a NUL byte") }
        let kernelEnd = max(loadAddress + UInt64(header.kernelLength), header.prefAddress + UInt64(header.initSize))
        guard kernelEnd <= config.vmmAreaBase else {
            throw VMMError.config("the kernel needs memory up to \(hex(kernelEnd)) (pref_address + init_size) but the machine has "
                + "\(config.memoryMiB) MiB; give --memory \((kernelEnd >> 20) + 64) or more")
        }
        var initrdPlace: (address: UInt64, size: UInt64)?
        if let initrd, !initrd.isEmpty {
            guard let at = initrdAddress(size: UInt64(initrd.count), header: header, config: config) else {
                throw VMMError.config("the initrd (\(initrd.count) bytes) does not fit between the kernel's buffer (ends \(hex(kernelEnd))) "
                    + "and min(initrd_addr_max \(hex(UInt64(header.initrdAddrMax))), end of RAM): give more --memory")
            }
            initrdPlace = (at, UInt64(initrd.count))
        }
        let mp = MPTable.build(vcpus: config.vcpus)
        let acpi = ACPITables.build(vcpus: config.vcpus)
        var gdtBytes: [UInt8] = []
        for e in gdt { for i in 0..<8 { gdtBytes.append(UInt8(truncatingIfNeeded: e >> (8 * UInt64(i)))) } }
        var segments = [
            GuestImage.Segment(address: gdtAddress, bytes: gdtBytes, memorySize: UInt64(gdtBytes.count)),
            GuestImage.Segment(address: zeroPageAddress,
                               bytes: zeroPage(file: file, header: header, config: config, initrd: initrdPlace),
                               memorySize: 0x1000),
            GuestImage.Segment(address: pageTableAddress, bytes: identityPageTables(), memorySize: 0x6000),
            GuestImage.Segment(address: commandLineAddress, bytes: cmd + [0], memorySize: UInt64(cmd.count + 1)),
            GuestImage.Segment(address: MPTable.address, bytes: mp, memorySize: UInt64(mp.count)),
            GuestImage.Segment(address: ACPITables.rsdpAddress, bytes: acpi, memorySize: UInt64(acpi.count)),
            GuestImage.Segment(address: loadAddress, bytes: Array(file[header.kernelOffset...]), memorySize: UInt64(header.kernelLength)),
        ]
        if let r = initrdPlace, let initrd { segments.append(GuestImage.Segment(address: r.address, bytes: initrd, memorySize: r.size)) }
        guard header.kernelLength > 0x200 else { throw bad("the protected-mode kernel (\(header.kernelLength) bytes) has no 64-bit entry at +0x200") }
        var image = GuestImage(kind: .flat, segments: segments, entry: loadAddress + 0x200)
        image.entryState = entryState(header: header)
        return image
    }
}
