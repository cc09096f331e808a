import Glibc

/// The ACPI tables a PC firmware leaves for a kernel, as far as QEMU's test kernels read
/// them: kvm-unit-tests finds the RSDP by scanning 0xE0000–0xFFFFF on 16-byte boundaries,
/// follows the RSDT to the FADT and takes the PM timer's port from it (vmexit's
/// `inl_from_pmtimer`). ACPI 1.0 forms (RSDP revision 0, RSDT, FADT revision 1, FACS), an
/// empty DSDT and a MADT describing the machine's LAPICs and IOAPIC.
///
/// What is not here: the PM1 event/control blocks (0 in the FADT, so no sleep states or
/// SCI), SMI_CMD (0: the machine is always in ACPI mode), an XSDT.
public enum ACPITables {
    /// Where the tables go: the reserved BIOS area below 1 MiB (the memory map reserves
    /// 0xF0000–0xFFFFF), where the RSDP scan looks.
    public static let base: UInt64 = 0xF_0000
    /// The PM timer's port, as QEMU's PIIX4 places it (PM base 0x600 + 8).
    public static let pmTimerPort: UInt16 = 0x608
    public static let localAPICAddress: UInt32 = 0xFEE0_0000
    public static let ioAPICAddress: UInt32 = 0xFEC0_0000
    /// The PIIX4's SCI line (the FADT must name one).
    public static let sciIRQ: UInt16 = 9

    static let oemID = Array("EXTSCP".utf8)              // 6 bytes
    static let oemTableID = Array("EXITSCOP".utf8)       // 8 bytes

    /// The tables' bytes, to be placed at `base`, for `vcpus` processors (APIC IDs 0..<vcpus).
    public static func build(vcpus: Int, base: UInt64 = base) -> [UInt8] {
        var out: [UInt8] = []
        func align(_ n: Int) { while out.count % n != 0 { out.append(0) } }
        func address() -> UInt32 { UInt32(truncatingIfNeeded: base + UInt64(out.count)) }

        // Lay out first, then fill: RSDP, RSDT, FACS (64-aligned), FADT, DSDT, MADT.
        let rsdpAt = address()
        out += [UInt8](repeating: 0, count: 20)
        align(16)
        let rsdtAt = address()
        let rsdtLength = 36 + 2 * 4
        out += [UInt8](repeating: 0, count: rsdtLength)
        align(64)
        let facsAt = address()
        var facs = [UInt8](repeating: 0, count: 64)
        put(&facs, 0, Array("FACS".utf8))
        put32(&facs, 4, 64)
        out += facs
        align(16)
        let fadtAt = address()
        out += [UInt8](repeating: 0, count: 116)
        align(16)
        let dsdtAt = address()
        out += table("DSDT", revision: 1, body: [])
        align(16)
        let madtAt = address()
        out += madt(vcpus: vcpus)

        // FADT (ACPI 1.0, 116 bytes).
        var fadtBody = [UInt8](repeating: 0, count: 116 - 36)
        func f32(_ offset: Int, _ v: UInt32) { put32(&fadtBody, offset - 36, v) }
        f32(36, facsAt)                                   // FIRMWARE_CTRL
        f32(40, dsdtAt)                                   // DSDT
        fadtBody[46 - 36] = UInt8(sciIRQ)                 // SCI_INT (16 bits)
        f32(76, UInt32(pmTimerPort))                      // PM_TMR_BLK
        fadtBody[91 - 36] = 4                             // PM_TMR_LEN
        f32(112, 1 << 0 | 1 << 2)                         // flags: WBINVD, PROC_C1; TMR_VAL_EXT clear (24-bit)
        let fadt = table("FACP", revision: 1, body: fadtBody)
        out.replaceSubrange(Int(fadtAt - UInt32(base))..<Int(fadtAt - UInt32(base)) + fadt.count, with: fadt)

        var rsdtBody: [UInt8] = []
        put32(&rsdtBody, 0, fadtAt)
        put32(&rsdtBody, 4, madtAt)
        let rsdt = table("RSDT", revision: 1, body: rsdtBody)
        out.replaceSubrange(Int(rsdtAt - UInt32(base))..<Int(rsdtAt - UInt32(base)) + rsdt.count, with: rsdt)

        var rsdp = Array("RSD PTR ".utf8) + [0] + oemID + [0]   // revision 0: ACPI 1.0
        put32(&rsdp, 16, rsdtAt)
        rsdp[8] = checksum(rsdp)
        out.replaceSubrange(Int(rsdpAt - UInt32(base))..<Int(rsdpAt - UInt32(base)) + 20, with: rsdp)
        return out
    }

    /// The MADT: a processor local APIC entry per vCPU, the IOAPIC (ID 0, GSI base 0), and
    /// the ISA IRQ 0 → GSI 2 override every PC has.
    static func madt(vcpus: Int) -> [UInt8] {
        var body: [UInt8] = []
        put32(&body, 0, localAPICAddress)
        put32(&body, 4, 1)                                // PCAT_COMPAT: there are 8259s too
        for i in 0..<max(0, min(vcpus, 255)) {
            body += [0, 8, UInt8(i), UInt8(i)] + le32(1)  // processor UID, APIC ID, enabled
        }
        body += [1, 12, 0, 0] + le32(ioAPICAddress) + le32(0)
        body += [2, 10, 0, 0] + le32(2) + [0, 0]          // bus ISA, IRQ 0, GSI 2, flags: bus default
        return table("APIC", revision: 1, body: body)
    }

    /// A system description table: the 36-byte header, then `body`, checksummed.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var t = Array(signature.utf8) + le32(UInt32(36 + body.count)) + [revision, 0] + oemID + oemTableID
        t += le32(1) + Array("EXSC".utf8) + le32(1) + body
        t[9] = checksum(t)
        return t
    }

    /// The byte that makes `bytes` sum to zero (with the checksum field itself still 0).
    static func checksum(_ bytes: [UInt8]) -> UInt8 { 0 &- bytes.reduce(0, &+) }

    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
    static func put32(_ a: inout [UInt8], _ offset: Int, _ v: UInt32) {
        while a.count < offset + 4 { a.append(0) }
        a.replaceSubrange(offset..<offset + 4, with: le32(v))
    }
    static func put(_ a: inout [UInt8], _ offset: Int, _ bytes: [UInt8]) {
        a.replaceSubrange(offset..<offset + bytes.count, with: bytes)
    }
}

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
