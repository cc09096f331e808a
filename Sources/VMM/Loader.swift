import X86

/// Puts an image into guest memory and computes the boot vCPU's first state for a mode.
///
/// Layout: the image's segments where they say; the VMM's area is the top 64 KiB of RAM
/// (`MachineConfig.vmmAreaBase`): GDT at its base (null, 0x08 code for the boot mode,
/// 0x10 data, 0x18 code32, 0x20 code64, 0x28 code16), long-mode page tables from +0x1000
/// (PML4, PDPT, four page directories identity-mapping 0-4 GiB with 2 MiB pages, so the
/// scratch MMIO device at 0xD000_0000 is mapped too). The protected and long-mode stacks
/// start just below that area; the real-mode stack just below the image.
public enum Loader {
    static let code32: UInt64 = 0x00CF_9B00_0000_FFFF  // 4 GiB, execute/read, D=1
    static let data32: UInt64 = 0x00CF_9300_0000_FFFF  // 4 GiB, read/write
    static let code64: UInt64 = 0x00AF_9B00_0000_FFFF  // L=1
    static let code16: UInt64 = 0x0000_9B00_0000_FFFF

    /// The VMM's GDT for a boot mode: 0x08 is the code segment the mode is entered with (64-bit
    /// for long64, else 32-bit), 0x10 data, then 0x18 code32, 0x20 code64, 0x28 code16 for
    /// guests that switch modes themselves.
    public static func gdtEntries(for mode: BootMode) -> [UInt64] {
        [0, mode == .long64 ? code64 : code32, data32, code32, code64, code16]
    }

    /// Copies the segments into memory; each must lie wholly in RAM and below the VMM's area.
    public static func load(_ image: GuestImage, into memory: GuestMemory, config: MachineConfig) throws(VMMError) {
        for s in image.segments {
            let end = s.address &+ s.memorySize
            guard end >= s.address, end <= config.vmmAreaBase, let p = memory.host(s.address, length: s.memorySize) else {
                throw VMMError.config("image segment at \(hex(s.address)) (\(s.memorySize) bytes) does not fit in "
                    + "\(config.memoryMiB) MiB of guest memory (the top 64 KiB are the VMM's)")
            }
            s.bytes.withUnsafeBytes { raw in
                if let base = raw.baseAddress, raw.count > 0 { p.copyMemory(from: base, byteCount: raw.count) }
            }
            if s.memorySize > UInt64(s.bytes.count) {
                (p + s.bytes.count).initializeMemory(as: UInt8.self, repeating: 0, count: Int(s.memorySize) - s.bytes.count)
            }
        }
    }

    /// Writes the GDT (and for long64 the page tables) and returns the boot state.
    public static func bootState(_ image: GuestImage, memory: GuestMemory, config: MachineConfig,
                                 vcpu: Int = 0) throws(VMMError) -> CPUState {
        if vcpu == 0, let s = image.entryState { return s }
        let area = config.vmmAreaBase
        let stackTop = area - UInt64(vcpu) * 0x1000
        switch config.mode {
        case .real:
            guard image.entry < 0x10000 else {
                throw VMMError.config("real-mode entry \(hex(image.entry)) must be below 0x10000 (CS=0, IP=entry)")
            }
            var s = CPUState()
            s.cs = Segment.real(0, code: true)
            s.rip = image.entry
            let low = image.lowestAddress
            var sp: UInt64 = low >= 0x1000 && low <= 0x10000 ? low & ~0xF : 0xFFF0
            sp -= UInt64(vcpu) * 0x400
            s.rsp = sp
            return s
        case .protected32, .long64:
            let gdt = gdtEntries(for: config.mode)
            for (i, e) in gdt.enumerated() { memory.store(area + UInt64(i * 8), e) }
            var s = CPUState.flat(config.mode == .long64 ? .long64 : .protected32)
            s.gdtr = DescriptorTable(base: area, limit: UInt16(gdt.count * 8 - 1))
            s.rip = image.entry
            s.rsp = stackTop
            s.cr0 |= CR0.ne
            if vcpu == 0, let r = image.entryRegisters { s.rax = r.rax; s.rbx = r.rbx }
            if config.mode == .long64 {
                guard image.entry <= 0xFFFF_FFFF else {
                    throw VMMError.config("long-mode entry \(hex(image.entry)) is outside the identity-mapped 4 GiB")
                }
                let pml4 = area + 0x1000, pdpt = area + 0x2000, pd = area + 0x3000
                for i in 0..<512 { memory.store(pml4 + UInt64(i * 8), UInt64(0)); memory.store(pdpt + UInt64(i * 8), UInt64(0)) }
                memory.store(pml4, pdpt | 0x3)
                for g in 0..<4 {
                    let table = pd + UInt64(g) * 0x1000
                    memory.store(pdpt + UInt64(g * 8), table | 0x3)
                    for i in 0..<512 {
                        let phys = (UInt64(g) << 30) | (UInt64(i) << 21)
                        memory.store(table + UInt64(i * 8), phys | 0x83)  // P, RW, PS (2 MiB)
                    }
                }
                s.cr3 = pml4
            }
            return s
        }
    }
}
