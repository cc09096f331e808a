import XCTest
@testable import VMM

/// The ACPI tables a Multiboot machine gets and the PM timer they point at, without KVM.
final class ACPITests: XCTestCase {
    /// Finds a table as kvm-unit-tests' lib/acpi.c does: the RSDP by its 8-byte signature on a
    /// 16-byte boundary in 0xE0000–0xFFFFF, then the RSDT's entries by signature.
    func findTable(_ signature: String, in memory: GuestMemory) -> UInt64? {
        func u32(_ a: UInt64) -> UInt32 { memory.load(a, as: UInt32.self) ?? 0 }
        func sig(_ a: UInt64) -> String { String(decoding: memory.read(a, count: 4) ?? [], as: UTF8.self) }
        var rsdp: UInt64? = nil
        for a in stride(from: UInt64(0xE0000), to: 0x100000, by: 16) where memory.read(a, count: 8) == Array("RSD PTR ".utf8) {
            rsdp = a
            break
        }
        guard let rsdp else { return nil }
        let rsdt = UInt64(u32(rsdp + 16))
        guard sig(rsdt) == "RSDT" else { return nil }
        let end = rsdt + UInt64(u32(rsdt + 4))
        for e in stride(from: rsdt + 36, to: end, by: 4) where sig(UInt64(u32(e))) == signature { return UInt64(u32(e)) }
        return nil
    }

    func sumsToZero(_ memory: GuestMemory, _ at: UInt64, _ length: Int) -> Bool {
        (memory.read(at, count: length) ?? [1]).reduce(UInt8(0), &+) == 0
    }

    func testTablesFoundAsKvmUnitTestsFindsThem() throws {
        let memory = try GuestMemory(size: 2 << 20)
        XCTAssertTrue(memory.write(ACPITables.base, ACPITables.build(vcpus: 3)))
        func u32(_ a: UInt64) -> UInt32 { memory.load(a, as: UInt32.self) ?? 0 }

        let rsdp = try XCTUnwrap((0xE0000..<0x100000).first { ($0 & 15) == 0 && memory.read(UInt64($0), count: 8) == Array("RSD PTR ".utf8) })
        XCTAssertTrue(sumsToZero(memory, UInt64(rsdp), 20), "RSDP checksum")
        XCTAssertEqual(memory.load(UInt64(rsdp) + 15, as: UInt8.self), 0, "revision 0 (ACPI 1.0: no XSDT)")

        let fadt = try XCTUnwrap(findTable("FACP", in: memory), "no FADT through the RSDT")
        XCTAssertEqual(u32(fadt + 4), 116)
        XCTAssertTrue(sumsToZero(memory, fadt, 116), "FADT checksum")
        XCTAssertEqual(u32(fadt + 76), 0x608, "pm_tmr_blk")
        XCTAssertEqual(memory.load(fadt + 91, as: UInt8.self), 4, "pm_tmr_len")
        XCTAssertEqual(u32(fadt + 112) & (1 << 8), 0, "a 24-bit timer (TMR_VAL_EXT clear)")
        let facs = UInt64(u32(fadt + 36)), dsdt = UInt64(u32(fadt + 40))
        XCTAssertEqual(memory.read(facs, count: 4), Array("FACS".utf8))
        XCTAssertEqual(facs & 63, 0, "the FACS must be 64-byte aligned")
        XCTAssertEqual(memory.read(dsdt, count: 4), Array("DSDT".utf8))
        XCTAssertTrue(sumsToZero(memory, dsdt, Int(u32(dsdt + 4))))

        let madt = try XCTUnwrap(findTable("APIC", in: memory))
        let length = u32(madt + 4)
        XCTAssertTrue(sumsToZero(memory, madt, Int(length)), "MADT checksum")
        XCTAssertEqual(u32(madt + 36), 0xFEE0_0000)
        var apicIDs: [UInt8] = [], ioapics: [UInt32] = []
        var p = madt + 44
        while p < madt + UInt64(length) {
            let type = memory.load(p, as: UInt8.self) ?? 0xFF, len = UInt64(memory.load(p + 1, as: UInt8.self) ?? 0)
            XCTAssertGreaterThan(len, 0)
            if type == 0 { apicIDs.append(memory.load(p + 3, as: UInt8.self) ?? 0xFF) }
            if type == 1 { ioapics.append(u32(p + 4)) }
            p += max(len, 1)
        }
        XCTAssertEqual(p, madt + UInt64(length), "entries must fill the table exactly")
        XCTAssertEqual(apicIDs, [0, 1, 2])
        XCTAssertEqual(ioapics, [0xFEC0_0000])
    }

    func testMultibootMachinesGetTheTablesAndRefuseAnImageOverThem() throws {
        let config = MachineConfig(mode: .protected32, vcpus: 2, memoryMiB: 16)
        let header: [UInt8] = [0x02, 0xB0, 0xAD, 0x1B, 0, 0, 0, 0, 0xFE, 0x4F, 0x52, 0xE4] + [UInt8](repeating: 0, count: 16)
        let image = GuestImage(kind: .elf32, segments: [GuestImage.Segment(address: 0x400000, bytes: [0xF4], memorySize: 1)], entry: 0x400000)
        let out = try Multiboot.prepare(image, file: header, path: "k", config: config, cmdline: "", modules: [])
        let memory = try GuestMemory(size: config.memoryBytes)
        try Loader.load(out, into: memory, config: config)
        XCTAssertNotNil(findTable("FACP", in: memory))
        XCTAssertTrue(Multiboot.memoryMap(config: config).contains { $0.type == 2 && $0.base <= ACPITables.base && ACPITables.base < $0.base + $0.length },
                      "the tables must lie in memory the map reserves")

        let low = GuestImage(kind: .elf32, segments: [GuestImage.Segment(address: 0xE8000, bytes: [0xF4], memorySize: 0x10000)], entry: 0xE8000)
        XCTAssertThrowsError(try Multiboot.prepare(low, file: header, path: "k", config: config, cmdline: "", modules: [])) {
            XCTAssertTrue("\($0)".contains("ACPI"), "\($0)")
        }
    }

    func testPMTimerCountsAt3579545HzIn24Bits() {
        XCTAssertEqual(ACPIPMTimer.count(afterNanoseconds: 0), 0)
        XCTAssertEqual(ACPIPMTimer.count(afterNanoseconds: 1_000_000_000), 3_579_545 & 0xFF_FFFF)
        XCTAssertEqual(ACPIPMTimer.count(afterNanoseconds: 1_000), 3, "1 µs is 3.58 ticks, truncated")
        // After ~4.69 s the 24-bit counter wraps; a run of a year must not overflow the arithmetic.
        XCTAssertEqual(ACPIPMTimer.count(afterNanoseconds: 5_000_000_000), UInt32(17_897_725 & 0xFF_FFFF))
        let year: UInt64 = 365 * 86_400 * 1_000_000_000
        XCTAssertEqual(ACPIPMTimer.count(afterNanoseconds: year), UInt32((365 * 86_400 * 3_579_545) & 0xFF_FFFF))

        nonisolated(unsafe) var now: UInt64 = 7_000_000_000
        let t = ACPIPMTimer { now }
        XCTAssertEqual(t.read(offset: 0, size: 4), 0, "counts from the machine's creation")
        now += 2_000_000
        XCTAssertEqual(t.read(offset: 0, size: 4), 7159)
        t.write(offset: 0, size: 4, value: 0)
        XCTAssertEqual(t.read(offset: 0, size: 4), 7159, "read-only")
        XCTAssertEqual(t.read(offset: 0, size: 2), 0xFFFF, "only 32-bit reads give the count")
        XCTAssertEqual(t.read(offset: 1, size: 1), 0xFF)
    }
}
