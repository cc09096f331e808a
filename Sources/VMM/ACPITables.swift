/// ACPI tables for Linux guests whose kernel has no MP-table parser (Debian's cloud kernel
/// is built without CONFIG_X86_MPPARSE, so MPTable.swift alone leaves it in virtual-wire mode):
/// RSDP (ACPI 2.0) -> RSDT and XSDT -> FADT (-> DSDT) and MADT. The smallest set 6.1 accepts:
///
/// - FADT revision 6 with HW_REDUCED_ACPI (as Firecracker and Cloud Hypervisor do): no PM1
///   event/control blocks, no SCI, no legacy PIC or PIT timer setup needed; IAPC_BOOT_ARCH says
///   "no VGA" and does not claim an 8042, so the kernel does not probe the keyboard (a probe
///   without keyboard interrupts only times out). The reset register is I/O port 0x64 with
///   value 0xFE: an ACPI reboot pulses the i8042's reset line. The sleep control/status
///   registers are ports 0x600/0x601 (`ACPISleepControl`): with \_S5 in the DSDT the kernel
///   registers ACPI power-off, which writes SLP_TYP=5|SLP_EN there and ends the run.
/// - DSDT: its header and one AML object, Name(\_S5, Package(){5, 0, 0, 0}).
/// - MADT: a Local APIC per vCPU (IDs 0..n-1), the IOAPIC at 0xFEC00000 with GSI base 0 and
///   ID n. No interrupt source override: KVM's default routing sends ISA IRQ n (the PIT's
///   IRQ0 included) to IOAPIC pin n, which is what the kernel assumes without one.
public enum ACPITables {
    /// The RSDP's address: 16-aligned in the BIOS area the kernel scans (0xE0000-0xFFFFF),
    /// also handed over directly in boot_params.acpi_rsdp_addr. The tables follow it.
    public static let rsdpAddress: UInt64 = 0xE0000
    public static let sleepControlPort: UInt16 = 0x600
    public static let sleepStatusPort: UInt16 = 0x601
    static let oemID = Array("EXITSC".utf8)
    static let oemTableID = Array("EXITSCOP".utf8)

    static func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    static func checksum(_ b: [UInt8]) -> UInt8 { UInt8(truncatingIfNeeded: 0 &- b.reduce(0) { $0 &+ Int($1) }) }

    /// A table: the 36-byte system description header, then `body`, with the checksum set.
    static func table(_ signature: String, revision: UInt8, _ body: [UInt8]) -> [UInt8] {
        var t = Array(signature.utf8) + le(UInt64(36 + body.count), 4) + [revision, 0] + oemID + oemTableID
            + le(1, 4) + Array("EXSC".utf8) + le(1, 4) + body
        t[9] = checksum(t)
        return t
    }

    /// A Generic Address Structure for a byte-wide I/O port.
    static func ioGAS(_ port: UInt16) -> [UInt8] { [1, 8, 0, 1] + le(UInt64(port), 8) }

    static func fadt(dsdt: UInt64, pmTimerPort: UInt16?) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 276 - 36)
        func put(_ offset: Int, _ bytes: [UInt8]) { f.replaceSubrange(offset - 36..<offset - 36 + bytes.count, with: bytes) }
        put(40, le(dsdt, 4))                            // DSDT
        put(109, le(1 << 2, 2))                         // IAPC_BOOT_ARCH: VGA not present (no 8042 claimed)
        put(112, le(1 << 20 | 1 << 10, 4))              // flags: HW_REDUCED_ACPI, RESET_REG_SUP
        put(116, ioGAS(MachineLayout.i8042CommandPort)) // RESET_REG
        put(128, [0xFE])                                // RESET_VALUE
        put(131, [0])                                   // FADT minor version (6.0)
        put(140, le(dsdt, 8))                           // X_DSDT
        put(244, ioGAS(sleepControlPort))               // SLEEP_CONTROL_REG
        put(256, ioGAS(sleepStatusPort))                // SLEEP_STATUS_REG
        put(268, Array("EXITSCOP".utf8))                // hypervisor vendor identity
        if let pmTimerPort {
            // For QEMU's test kernels, which take the PM timer's port from here whatever the
            // flags say (kvm-unit-tests' vmexit reads pm_tmr_blk); a hardware-reduced-aware
            // OS ignores these fields, so Linux machines leave them out.
            put(76, le(UInt64(pmTimerPort), 4))         // PM_TMR_BLK
            put(91, [4])                                // PM_TMR_LEN
            put(208, [1, 32, 0, 3] + le(UInt64(pmTimerPort), 8))  // X_PM_TMR_BLK: 32-bit I/O
        }
        return table("FACP", revision: 6, f)
    }

    /// AML: Name (\_S5, Package (4) { 5, 0, 0, 0 }).
    static let s5AML: [UInt8] = [0x08, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x07, 0x04, 0x0A, 0x05, 0x00, 0x00, 0x00]

    static func madt(vcpus: Int) -> [UInt8] {
        var b = le(UInt64(MPTable.localAPICAddress), 4) + le(1, 4)   // PCAT_COMPAT: the 8259s exist
        for i in 0..<vcpus { b += [0, 8, UInt8(truncatingIfNeeded: i), UInt8(truncatingIfNeeded: i)] + le(1, 4) }  // enabled
        b += [1, 12, MPTable.ioAPICID(vcpus: vcpus), 0] + le(UInt64(MPTable.ioAPICAddress), 4) + le(0, 4)
        return table("APIC", revision: 5, b)
    }

    /// The RSDP and all tables, to be placed at `rsdpAddress` (each table 16-aligned after it).
    /// `pmTimerPort`: the FADT also names an ACPI PM timer there (Multiboot machines).
    public static func build(vcpus: Int, pmTimerPort: UInt16? = nil) -> [UInt8] {
        let n = max(1, min(vcpus, 254))
        var blob = [UInt8](repeating: 0, count: 64)      // the RSDP's slot (36 bytes used)
        func place(_ t: [UInt8]) -> UInt64 {
            while blob.count % 16 != 0 { blob.append(0) }
            let at = rsdpAddress + UInt64(blob.count)
            blob += t
            return at
        }
        let dsdtBytes = table("DSDT", revision: 2, s5AML)
        let dsdt = place(dsdtBytes)
        let fadt = place(fadt(dsdt: dsdt, pmTimerPort: pmTimerPort))
        let madt = place(madt(vcpus: n))
        let rsdt = place(table("RSDT", revision: 1, le(fadt, 4) + le(madt, 4)))
        let xsdt = place(table("XSDT", revision: 1, le(fadt, 8) + le(madt, 8)))
        var rsdp = Array("RSD PTR ".utf8) + [0] + oemID + [2] + le(rsdt, 4) + le(36, 4) + le(xsdt, 8) + [0, 0, 0, 0]
        rsdp[8] = checksum(Array(rsdp[0..<20]))
        rsdp[32] = checksum(rsdp)
        blob.replaceSubrange(0..<36, with: rsdp)
        return blob
    }
}

/// The hardware-reduced ACPI sleep control register (FADT SLEEP_CONTROL_REG, port 0x600) and
/// sleep status register (0x601): a write of SLP_EN (bit 5) with SLP_TYP (bits 2-4) = 5, the
/// \_S5 value the DSDT gives, is ACPI power-off; it sets `powerOffRequested`, which ends the
/// run as a SHUTDOWN system event (status 0). Status reads 0; other writes are ignored.
public final class ACPISleepControl: PortDevice {
    public private(set) var powerOffRequested = false
    public init() {}
    public func read(offset: UInt16, size: Int) -> UInt32 { 0 }
    public func write(offset: UInt16, size: Int, value: UInt32) {
        guard offset == 0 else { return }
        if value & 0x20 != 0, (value >> 2) & 7 == 5 { powerOffRequested = true }
    }
}
