/// Intel MultiProcessor Specification 1.4 tables, how this machine tells a Linux kernel where
/// its interrupt controllers are. Chosen over ACPI because it is the least code the 6.1 kernel
/// accepts: without an RSDP, Linux scans 0xF0000-0xFFFFF for the MP floating pointer
/// (CONFIG_X86_MPPARSE) and takes the processors, the IOAPIC and the ISA interrupt routing from
/// the configuration table; ACPI would need RSDP, XSDT, MADT, FADT and a DSDT. Firecracker
/// boots Linux the same way.
///
/// Routing: ISA IRQ n goes to IOAPIC pin n for n in 0..<16, identity, because that is KVM's
/// default GSI routing (KVM_CREATE_IRQCHIP routes GSI n to IOAPIC pin n; the PIT raises GSI 0).
/// QEMU instead installs IRQ0 -> pin 2 routes and an override; we install no routes, so the
/// table says pin 0. LINT0 is ExtINT (the PIC), LINT1 NMI.
public enum MPTable {
    /// The floating pointer's address (the BIOS area the kernel scans; reserved in e820);
    /// the configuration table follows it.
    public static let address: UInt64 = 0xF0000
    public static let localAPICAddress: UInt32 = 0xFEE0_0000
    public static let ioAPICAddress: UInt32 = 0xFEC0_0000
    public static let isaIRQs = 16

    // Entry types (MP spec table 4-3).
    static let processor: UInt8 = 0, bus: UInt8 = 1, ioAPIC: UInt8 = 2, ioInterrupt: UInt8 = 3, localInterrupt: UInt8 = 4

    /// The IOAPIC's ID: after the LAPIC IDs 0..<vcpus, so all are distinct.
    public static func ioAPICID(vcpus: Int) -> UInt8 { UInt8(truncatingIfNeeded: vcpus) }

    /// Floating pointer (16 bytes) + configuration table, to be placed at `address`.
    public static func build(vcpus: Int) -> [UInt8] {
        let n = max(1, min(vcpus, 254))
        func le16(_ v: Int) -> [UInt8] { [UInt8(truncatingIfNeeded: v), UInt8(truncatingIfNeeded: v >> 8)] }
        func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
        func checksum(_ b: [UInt8]) -> UInt8 { UInt8(truncatingIfNeeded: 0 &- b.reduce(0) { $0 &+ Int($1) }) }

        var entries: [UInt8] = []
        var count = 0
        for i in 0..<n {
            // LAPIC ID, version 0x14 (integrated), EN | BP for the boot processor, signature
            // family 6, features FPU | APIC; 8 reserved bytes.
            entries += [processor, UInt8(i), 0x14, i == 0 ? 0x03 : 0x01] + le32(0x600) + le32(0x201) + [UInt8](repeating: 0, count: 8)
            count += 1
        }
        entries += [bus, 0] + Array("ISA   ".utf8)
        count += 1
        let ioapic = ioAPICID(vcpus: n)
        entries += [ioAPIC, ioapic, 0x11, 0x01] + le32(ioAPICAddress)
        count += 1
        for irq in 0..<isaIRQs {
            // INT, polarity/trigger conforming to the ISA bus (edge, active high), bus 0.
            entries += [ioInterrupt, 0] + le16(0) + [0, UInt8(irq), ioapic, UInt8(irq)]
            count += 1
        }
        entries += [localInterrupt, 3] + le16(0) + [0, 0, 0xFF, 0]   // ExtINT -> LINT0 of every LAPIC
        entries += [localInterrupt, 1] + le16(0) + [0, 0, 0xFF, 1]   // NMI -> LINT1 of every LAPIC
        count += 2

        var table = Array("PCMP".utf8) + le16(44 + entries.count) + [4, 0] + Array("EXITSCPE".utf8)
            + Array("EXITSCOPE   ".utf8) + le32(0) + le16(0) + le16(count) + le32(localAPICAddress) + le16(0) + [0, 0]
        table += entries
        table[7] = checksum(table)

        let tableAddress = UInt32(address) + 16
        var pointer = Array("_MP_".utf8) + le32(tableAddress) + [1, 4, 0, 0, 0, 0, 0, 0]
        pointer[10] = checksum(pointer)
        return pointer + table
    }
}
