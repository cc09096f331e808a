import XCTest
@testable import VMM

/// The ACPI tables a Multiboot machine gets and the PM timer they name, without KVM.
final class ACPITests: XCTestCase {
    /// Finds a table as kvm-unit-tests' lib/acpi.c does: the RSDP by its 8-byte signature on a
    /// 16-byte boundary in 0xE0000–0xFFFFF, then the XSDT's entries (revision ≥ 2) or the RSDT's.
    func findTable(_ signature: String, in memory: GuestMemory) -> UInt64? {
        func u32(_ a: UInt64) -> UInt32 { memory.load(a, as: UInt32.self) ?? 0 }
        func sig(_ a: UInt64) -> String { String(decoding: memory.read(a, count: 4) ?? [], as: UTF8.self) }
        guard let rsdp = stride(from: UInt64(0xE0000), to: 0x100000, by: 16).first(where: {
            memory.read($0, count: 8) == Array("RSD PTR ".utf8) }) else { return nil }
        if memory.load(rsdp + 15, as: UInt8.self) ?? 0 >= 2, let xsdt = memory.load(rsdp + 24, as: UInt64.self), sig(xsdt) == "XSDT" {
            let end = xsdt + UInt64(u32(xsdt + 4))
            for e in stride(from: xsdt + 36, to: end, by: 8) {
                if let t = memory.load(e, as: UInt64.self), sig(t) == signature { return t }
            }
            return nil
        }
        let rsdt = UInt64(u32(rsdp + 16))
        guard sig(rsdt) == "RSDT" else { return nil }
        for e in stride(from: rsdt + 36, to: rsdt + UInt64(u32(rsdt + 4)), by: 4) where sig(UInt64(u32(e))) == signature {
            return UInt64(u32(e))
        }
        return nil
    }

    func testMultibootMachinesGetTheTablesWithThePMTimer() throws {
        let config = MachineConfig(mode: .protected32, vcpus: 2, memoryMiB: 16)
        let header: [UInt8] = [0x02, 0xB0, 0xAD, 0x1B, 0, 0, 0, 0, 0xFE, 0x4F, 0x52, 0xE4] + [UInt8](repeating: 0, count: 16)
        let image = GuestImage(kind: .elf32, segments: [GuestImage.Segment(address: 0x400000, bytes: [0xF4], memorySize: 1)], entry: 0x400000)
        let out = try Multiboot.prepare(image, file: header, path: "k", config: config, cmdline: "", modules: [])
        let memory = try GuestMemory(size: config.memoryBytes)
        try Loader.load(out, into: memory, config: config)
        let fadt = try XCTUnwrap(findTable("FACP", in: memory), "no FADT where kvm-unit-tests looks")
        let length = Int(memory.load(fadt + 4, as: UInt32.self) ?? 0)
        XCTAssertEqual((memory.read(fadt, count: length) ?? [1]).reduce(UInt8(0), &+), 0, "FADT checksum")
        XCTAssertEqual(memory.load(fadt + 76, as: UInt32.self), UInt32(MachineLayout.pmTimerPort), "pm_tmr_blk")
        XCTAssertEqual(memory.load(fadt + 91, as: UInt8.self), 4, "pm_tmr_len")
        XCTAssertEqual(memory.load(fadt + 208 + 4, as: UInt64.self), UInt64(MachineLayout.pmTimerPort), "X_PM_TMR_BLK")
        XCTAssertEqual(memory.load(fadt + 112, as: UInt32.self).map { $0 & (1 << 8) }, 0, "a 24-bit timer (TMR_VAL_EXT clear)")

        // Linux machines' tables name no timer.
        let linux = ACPITables.build(vcpus: 2)
        let lm = try GuestMemory(size: 2 << 20)
        XCTAssertTrue(lm.write(ACPITables.rsdpAddress, linux))
        let lf = try XCTUnwrap(findTable("FACP", in: lm))
        XCTAssertEqual(lm.load(lf + 76, as: UInt32.self), 0)

        let low = GuestImage(kind: .elf32, segments: [GuestImage.Segment(address: 0xD8000, bytes: [0xF4], memorySize: 0x10000)], entry: 0xD8000)
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
