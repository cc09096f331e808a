import Glibc

/// The PC devices QEMU's test kernels (kvm-unit-tests) talk to, as QEMU models them.
extension MachineLayout {
    /// The ACPI PM timer, where QEMU's PIIX4 has it (PM base 0x600 + 8); the FADT of a
    /// Multiboot machine names it (ACPITables.build).
    public static let pmTimerPort: UInt16 = 0x608
    /// QEMU's fw_cfg, legacy I/O interface: selector at 0x510 (16-bit write), data at 0x511.
    public static let fwCfgPort: UInt16 = 0x510
    /// Bochs/QEMU poweroff: writing the bytes of "Shutdown" one by one ends the run (status 0).
    public static let shutdownPort: UInt16 = 0x8900
    /// pc-testdev's 4-byte latch: what is written at any size and offset is read back.
    public static let testDevPort: UInt16 = 0xE0
    /// pc-testdev's flush-page port: a 32-bit write of a guest-physical address makes the
    /// host drop and restore its mapping of that page, so KVM faults it in again on the next
    /// guest access (kvm-unit-tests' eventinj takes exceptions on a stack flushed this way).
    public static let testDevFlushPort: UInt16 = 0xE4
    /// The same latch again, as QEMU splits accesses here into single bytes (same result).
    public static let testDevBytePort: UInt16 = 0xE8
    /// pc-testdev's interrupt lines: a write of V to 0x2000 + n sets line n (0..23) to V != 0
    /// (with the in-kernel irqchip only: the lines are its PIC/IOAPIC inputs).
    public static let testDevIRQPort: UInt16 = 0x2000
    public static let testDevIRQLines: UInt16 = 24
    /// pc-testdev's 64 KiB of RAM-like MMIO (kvm-unit-tests' IORAM_BASE_PHYS): every access exits.
    public static let testDevMemoryBase: UInt64 = 0xFF00_0000
    public static let testDevMemorySize: UInt64 = 0x1_0000
    /// The 8259 PICs' ports (command, data), claimed by the VMM only without the in-kernel irqchip.
    public static let masterPICPort: UInt16 = 0x20
    public static let slavePICPort: UInt16 = 0xA0
}

// MARK: fw_cfg

/// QEMU's firmware configuration device through its legacy port interface: a write of a key
/// to the selector (offset 0) selects an item and rewinds it; each read of the data port
/// (offset 1) returns the item's next byte (0 past its end or for unknown keys). Data-port
/// writes are ignored, as QEMU has done since 2.4.
public final class FirmwareConfig: PortDevice {
    public static let signature: UInt16 = 0x00
    public static let id: UInt16 = 0x01
    public static let ramSize: UInt16 = 0x03
    public static let cpuCount: UInt16 = 0x05
    public static let maxCPUs: UInt16 = 0x0F
    /// kvm-unit-tests reads this key as the highest usable RAM address (FW_CFG_MAX_RAM).
    public static let maxRAM: UInt16 = 0x11
    public static let fileDirectory: UInt16 = 0x19

    public private(set) var items: [UInt16: [UInt8]]
    public private(set) var selector: UInt16 = 0
    var position = 0

    public init(vcpus: Int, ramBytes: UInt64) {
        func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
        items = [
            Self.signature: Array("QEMU".utf8),
            Self.id: le(1, 4),                       // traditional interface only (no DMA)
            Self.ramSize: le(ramBytes, 8),
            Self.cpuCount: le(UInt64(vcpus), 2),
            Self.maxCPUs: le(UInt64(vcpus), 2),
            Self.maxRAM: le(ramBytes, 8),
            Self.fileDirectory: [0, 0, 0, 0],        // no files (count is big-endian)
        ]
    }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        guard offset == 1 else { return 0 }
        var v: UInt32 = 0
        for i in 0..<min(size, 4) { v |= UInt32(nextByte()) << (8 * UInt32(i)) }
        return v
    }

    func nextByte() -> UInt8 {
        guard let item = items[selector], position < item.count else { return 0 }
        defer { position += 1 }
        return item[position]
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        guard offset == 0 else { return }
        selector = UInt16(truncatingIfNeeded: value)
        position = 0
    }
}

// MARK: poweroff

/// The Bochs/QEMU poweroff port: the bytes "Shutdown" written in order request poweroff; any
/// other byte starts the match again (an 'S' starts a new one).
public final class ShutdownPort: PortDevice {
    static let word = Array("Shutdown".utf8)
    var matched = 0
    public private(set) var requested = false

    public init() {}

    public func read(offset: UInt16, size: Int) -> UInt32 { 0xFF }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        let b = UInt8(truncatingIfNeeded: value)
        if b == Self.word[matched] { matched += 1 } else { matched = b == Self.word[0] ? 1 : 0 }
        if matched == Self.word.count { requested = true; matched = 0 }
    }
}

// MARK: pc-testdev

/// pc-testdev's I/O latch (ports 0xE0-0xE3, and 0xE8-0xEB for the same register): one 32-bit register; an access of `size` bytes
/// at offset `o` writes or reads bytes o..<o+size of it, as QEMU's test_ioport ops do.
public final class TestDevLatch: PortDevice {
    public private(set) var value: UInt32 = 0

    public init() {}

    static func mask(offset: UInt16, size: Int) -> (mask: UInt32, shift: UInt32)? {
        guard size >= 1, size <= 4, Int(offset) + size <= 4 else { return nil }
        let shift = UInt32(offset) * 8
        let bits: UInt32 = size == 4 ? ~0 : (UInt32(1) << (8 * UInt32(size))) - 1
        return (bits << shift, shift)
    }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        guard let m = Self.mask(offset: offset, size: size) else { return ~0 }
        return (value & m.mask) >> m.shift
    }

    public func write(offset: UInt16, size: Int, value v: UInt32) {
        guard let m = Self.mask(offset: offset, size: size) else { return }
        value = (value & ~m.mask) | ((v << m.shift) & m.mask)
    }
}

/// pc-testdev's interrupt lines (ports 0x2000-0x2017): a write to offset n drives line n to
/// level (value != 0), as QEMU's qemu_set_irq; reads give 0. `setLine` is KVM_IRQ_LINE on
/// a machine; tests pass their own.
public final class TestDevIRQLines: PortDevice {
    let setLine: (UInt32, Bool) -> Void
    public init(setLine: @escaping (UInt32, Bool) -> Void) { self.setLine = setLine }

    public func read(offset: UInt16, size: Int) -> UInt32 { 0 }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        guard offset < MachineLayout.testDevIRQLines else { return }
        setLine(UInt32(offset), value != 0)
    }
}

// MARK: PIC mask registers

/// The interrupt mask registers of an 8259 pair, for machines without the in-kernel irqchip
/// (there KVM's own PIC claims these ports). Only what a guest that masks the PIC needs:
/// the data port (offset 1) stores and returns the last byte written (the IMR after an
/// initialisation sequence); the command port (offset 0) accepts writes and reads 0 (no
/// request or service bits: this machine raises no PIC interrupts).
public final class PICMaskRegisters: PortDevice {
    public private(set) var mask: UInt8 = 0xFF

    public init() {}

    public func read(offset: UInt16, size: Int) -> UInt32 { offset == 1 ? UInt32(mask) : 0 }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        if offset == 1 { mask = UInt8(truncatingIfNeeded: value) }
    }
}

// MARK: ACPI PM timer

/// The ACPI power-management timer (port 0x608, as QEMU's PIIX4): a free-running 24-bit
/// counter at 3.579545 MHz since the machine was made. Only a 32-bit read at its port gives
/// the count, as QEMU accepts only 4-byte accesses there; other reads give all ones, writes
/// are ignored (the register is read-only).
public final class ACPIPMTimer: PortDevice {
    public static let frequency: UInt64 = 3_579_545
    let nanoseconds: () -> UInt64
    let start: UInt64

    /// `nanoseconds` is a monotonic clock (tests pass their own).
    public init(nanoseconds: @escaping () -> UInt64 = ACPIPMTimer.monotonicNanoseconds) {
        self.nanoseconds = nanoseconds
        start = nanoseconds()
    }

    /// The count after `ns` nanoseconds, without overflow for any run length.
    public static func count(afterNanoseconds ns: UInt64) -> UInt32 {
        let ticks = (ns / 1_000_000_000) &* frequency &+ (ns % 1_000_000_000) * frequency / 1_000_000_000
        return UInt32(truncatingIfNeeded: ticks) & 0xFF_FFFF
    }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        guard offset == 0, size == 4 else { return size >= 4 ? ~0 : (UInt32(1) << (8 * UInt32(max(size, 0)))) &- 1 }
        return Self.count(afterNanoseconds: nanoseconds() &- start)
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {}

    public static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}
