import X86
import XCTest
@testable import VMM

func pokeLE(_ f: inout [UInt8], _ o: Int, _ v: UInt64, _ n: Int) {
    for i in 0..<n { f[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
}

/// A tiny bzImage: 2 setup sectors after the boot sector, then `kernelBytes` of kernel whose
/// first bytes are a gzip magic (the payload at offset 0x10).
func syntheticBzImage(version: UInt16 = 0x020F, kernelBytes: Int = 0x1000, xloadflags: UInt16 = 0x7F,
             initSize: UInt32 = 0x40_0000, initrdAddrMax: UInt32 = 0x7FFF_FFFF) -> [UInt8] {
    var f = [UInt8](repeating: 0, count: 3 * 512 + kernelBytes)
    f[0x1F1] = 2                                 // setup_sects
    pokeLE(&f, 0x1FE, 0xAA55, 2)
    f[0x201] = 0x66                              // jump: header ends at 0x268
    pokeLE(&f, 0x202, 0x5372_6448, 4)               // "HdrS"
    pokeLE(&f, 0x206, UInt64(version), 2)
    f[0x211] = 0x01                              // LOADED_HIGH
    pokeLE(&f, 0x214, 0x100000, 4)
    pokeLE(&f, 0x22C, UInt64(initrdAddrMax), 4)
    pokeLE(&f, 0x230, 0x200000, 4)                  // kernel_alignment
    f[0x234] = 1                                 // relocatable
    pokeLE(&f, 0x236, UInt64(xloadflags), 2)
    pokeLE(&f, 0x238, 0x7FF, 4)                     // cmdline_size
    pokeLE(&f, 0x248, 0x10, 4)                      // payload_offset
    pokeLE(&f, 0x24C, 0x100, 4)                     // payload_length
    pokeLE(&f, 0x258, 0x100_0000, 8)                // pref_address 16 MiB
    pokeLE(&f, 0x260, UInt64(initSize), 4)
    f[0x600 + 0x10] = 0x1F; f[0x600 + 0x11] = 0x8B
    f[0x600 + 0x200] = 0xF4                      // "64-bit entry": hlt
    return f
}

/// The Linux boot protocol loader, the MP tables, the i8042 and the CMOS/RTC, without KVM.
/// The bzImages here are synthetic: a setup header with the fields a loader reads, and a
/// small "protected-mode kernel".
final class LinuxBootTests: XCTestCase {
    func u32(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<4).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
    func u64(_ b: [UInt8], _ o: Int) -> UInt64 { u32(b, o) | u32(b, o + 4) << 32 }

    func bzImage(version: UInt16 = 0x020F, kernelBytes: Int = 0x1000, xloadflags: UInt16 = 0x7F,
                 initSize: UInt32 = 0x40_0000, initrdAddrMax: UInt32 = 0x7FFF_FFFF) -> [UInt8] {
        syntheticBzImage(version: version, kernelBytes: kernelBytes, xloadflags: xloadflags, initSize: initSize, initrdAddrMax: initrdAddrMax)
    }

    let config: MachineConfig = {
        var c = MachineConfig(mode: .long64, vcpus: 2, irqchip: .kernel, memoryMiB: 64)
        c.cpuid = .host
        return c
    }()

    func testHeaderFieldsAreRead() throws {
        let f = bzImage()
        let h = try LinuxBoot.parseHeader(f)
        XCTAssertEqual(h.setupSects, 2)
        XCTAssertEqual(h.kernelOffset, 0x600)
        XCTAssertEqual(h.kernelLength, 0x1000)
        XCTAssertEqual(h.version, 0x020F)
        XCTAssertEqual(h.prefAddress, 0x100_0000)
        XCTAssertEqual(h.headerEnd, 0x268)
        XCTAssertEqual(h.cmdlineSize, 0x7FF)
        XCTAssertEqual(h.payloadFormat(in: f), "gzip")
    }

    func testBadOrTruncatedImagesAreClearErrors() {
        func problem(_ f: [UInt8]) -> String {
            do { _ = try LinuxBoot.parseHeader(f, path: "k"); return "accepted" } catch { return "\(error)" }
        }
        XCTAssertTrue(problem([]).contains("too short"))
        XCTAssertTrue(problem(Array(bzImage().prefix(0x250))).contains("too short"))
        var f = bzImage(); f[0x202] = 0x00
        XCTAssertTrue(problem(f).contains("HdrS"))
        f = bzImage(); f[0x1FE] = 0
        XCTAssertTrue(problem(f).contains("0xAA55"))
        XCTAssertTrue(problem(bzImage(version: 0x020B)).contains("older than 2.12"))
        XCTAssertTrue(problem(bzImage(xloadflags: 0x02)).contains("XLF_KERNEL_64"))
        f = bzImage(); f[0x211] = 0
        XCTAssertTrue(problem(f).contains("LOADED_HIGH"))
        f = bzImage(); f[0x1F1] = 0xFF               // setup sectors past the end of the file
        XCTAssertTrue(problem(f).contains("setup_sects"))
        f = bzImage(); pokeLE(&f, 0x230, 0x30000, 4)
        XCTAssertTrue(problem(f).contains("kernel_alignment"))
        f = bzImage(); pokeLE(&f, 0x24C, 0xFFFF_FFFF, 4)  // payload length beyond the file
        XCTAssertTrue(problem(f).contains("payload"))
        f = bzImage(); pokeLE(&f, 0x258, 0xFFFF_FFFF_0000_0000, 8)
        XCTAssertTrue(problem(f).contains("pref_address"))
        XCTAssertTrue(problem(bzImage(initSize: 0x10)).contains("init_size"))
        // Every truncation of a good image is an error or a parse, never a crash.
        let good = bzImage(kernelBytes: 0x400)
        for n in stride(from: 0, to: good.count, by: 7) { _ = problem(Array(good.prefix(n))) }
    }

    func testZeroPageE820CommandLineAndInitrd() throws {
        let f = bzImage()
        let initrd = [UInt8](repeating: 0xAB, count: 0x2345)
        let image = try LinuxBoot.prepare(file: f, config: config, cmdline: "console=ttyS0 nokaslr", initrd: initrd)
        let memory = try GuestMemory(size: config.memoryBytes)
        try Loader.load(image, into: memory, config: config)
        var zp = [UInt8](repeating: 0, count: 0x1000)
        for i in 0..<0x1000 { zp[i] = memory.load(LinuxBoot.zeroPageAddress + UInt64(i), as: UInt8.self) ?? 0 }

        XCTAssertEqual(zp[0x210], 0xFF, "type_of_loader")
        XCTAssertEqual(zp[0x211], 0x81, "loadflags: LOADED_HIGH | CAN_USE_HEAP")
        XCTAssertEqual(u32(zp, 0x202), 0x5372_6448, "the setup header is copied")
        XCTAssertEqual(u32(zp, 0x1FA) & 0xFFFF, 0xFFFF, "vid_mode normal")
        XCTAssertEqual(u32(zp, 0x224) & 0xFFFF, 0xDE00, "heap_end_ptr")
        XCTAssertEqual(u32(zp, 0x228), LinuxBoot.commandLineAddress)
        let cmd = (0..<22).map { memory.load(LinuxBoot.commandLineAddress + UInt64($0), as: UInt8.self) ?? 0 }
        XCTAssertEqual(cmd, Array("console=ttyS0 nokaslr".utf8) + [0])

        // The initrd: page-aligned, as high as RAM below the VMM area allows, above the kernel's buffer.
        let at = u32(zp, 0x218), size = u32(zp, 0x21C)
        XCTAssertEqual(size, 0x2345)
        XCTAssertEqual(at & 0xFFF, 0)
        XCTAssertLessThanOrEqual(at + size, config.vmmAreaBase)
        XCTAssertGreaterThan(at + 0x1000 + size, config.vmmAreaBase, "not placed as high as possible")
        XCTAssertGreaterThanOrEqual(at, 0x100_0000 + 0x40_0000, "overlaps the decompression buffer")
        XCTAssertEqual(memory.load(at + 0x2344, as: UInt8.self), 0xAB)

        // e820: RAM below 639 KiB, reserved to 1 MiB, RAM to the VMM area, which is reserved.
        XCTAssertEqual(zp[0x1E8], 4)
        let map = (0..<4).map { i in (u64(zp, 0x2D0 + i * 20), u64(zp, 0x2D8 + i * 20), u32(zp, 0x2E0 + i * 20)) }
        XCTAssertEqual(map[0].0, 0); XCTAssertEqual(map[0].1, 0x9FC00); XCTAssertEqual(map[0].2, 1)
        XCTAssertEqual(map[1].0, 0x9FC00); XCTAssertEqual(map[1].0 + map[1].1, 0x100000); XCTAssertEqual(map[1].2, 2)
        XCTAssertEqual(map[2].0, 0x100000); XCTAssertEqual(map[2].0 + map[2].1, config.vmmAreaBase); XCTAssertEqual(map[2].2, 1)
        XCTAssertEqual(map[3].0 + map[3].1, config.memoryBytes); XCTAssertEqual(map[3].2, 2)

        // The protected-mode kernel at 1 MiB, entered at +0x200 in 64-bit mode with RSI = zero page.
        XCTAssertEqual(memory.load(0x100200, as: UInt8.self), 0xF4)
        let s = try Loader.bootState(image, memory: memory, config: config)
        XCTAssertEqual(s.rip, 0x100200)
        XCTAssertEqual(s.rsi, LinuxBoot.zeroPageAddress)
        XCTAssertEqual(s.cs.selector, 0x10)
        XCTAssertEqual(s.ds.selector, 0x18); XCTAssertEqual(s.ss.selector, 0x18)
        XCTAssertEqual(s.rflags & RFLAGS.if, 0, "interrupts must be off")
        XCTAssertEqual(s.efer & EFER.lma, EFER.lma)
        // The GDT has flat __BOOT_CS (64-bit code) and __BOOT_DS at 0x10 and 0x18.
        XCTAssertEqual(memory.load(s.gdtr.base + 0x10, as: UInt64.self), Loader.code64)
        XCTAssertEqual(memory.load(s.gdtr.base + 0x18, as: UInt64.self), Loader.data32)
        // The page tables identity-map 0-4 GiB: walk a few addresses.
        for va: UInt64 in [0, 0x100200, 0x3FFF_F000, 0xFEC0_0000, 0xFFFF_FFFF] {
            let pml4e = memory.load(s.cr3 + ((va >> 39) & 511) * 8, as: UInt64.self) ?? 0
            let pdpte = memory.load((pml4e & ~0xFFF) + ((va >> 30) & 511) * 8, as: UInt64.self) ?? 0
            let pde = memory.load((pdpte & ~0xFFF) + ((va >> 21) & 511) * 8, as: UInt64.self) ?? 0
            XCTAssertEqual(pde & 0x81, 0x81, "2 MiB page present at \(hex(va))")
            XCTAssertEqual((pde & ~0x1F_FFFF & 0xF_FFFF_FFFF_F000) | (va & 0x1F_FFFF), va)
        }
    }

    func testWhatDoesNotFitIsAnError() {
        let f = bzImage()
        var small = config
        small.memoryMiB = 16                                   // pref_address 16 MiB + init_size does not fit
        XCTAssertThrowsError(try LinuxBoot.prepare(file: f, config: small, cmdline: "", initrd: nil))
        XCTAssertThrowsError(try LinuxBoot.prepare(file: f, config: config, cmdline: String(repeating: "x", count: 0x800), initrd: nil),
                             "command line longer than cmdline_size")
        // An initrd that would have to lie over the kernel's buffer.
        XCTAssertThrowsError(try LinuxBoot.prepare(file: f, config: config, cmdline: "", initrd: [UInt8](repeating: 1, count: 60 << 20)))
        // initrd_addr_max below the kernel's buffer: nowhere to put it.
        XCTAssertThrowsError(try LinuxBoot.prepare(file: bzImage(initrdAddrMax: 0xFF_FFFF), config: config, cmdline: "", initrd: [1]))
        XCTAssertNoThrow(try LinuxBoot.prepare(file: f, config: config, cmdline: "", initrd: nil))
    }

    func testMPTableChecksumsAndContents() {
        let t = MPTable.build(vcpus: 2)
        func sum(_ b: ArraySlice<UInt8>) -> UInt8 { b.reduce(0, &+) }
        XCTAssertEqual(Array(t[0..<4]), Array("_MP_".utf8))
        XCTAssertEqual(sum(t[0..<16]), 0, "floating pointer checksum")
        XCTAssertEqual(t[9], 4, "spec revision 1.4")
        XCTAssertEqual(u32(t, 4), MPTable.address + 16, "points at the configuration table")
        let c = Array(t[16...])
        XCTAssertEqual(Array(c[0..<4]), Array("PCMP".utf8))
        let length = Int(c[4]) | Int(c[5]) << 8
        XCTAssertEqual(length, c.count)
        XCTAssertEqual(sum(c[0..<length]), 0, "configuration table checksum")
        XCTAssertEqual(u32(c, 36), 0xFEE0_0000, "local APIC address")
        let count = Int(c[34]) | Int(c[35]) << 8
        // Walk the entries: 2 processors (the first the BSP), 1 ISA bus, the IOAPIC, 16 IRQs, 2 LINTs.
        var o = 44, kinds: [UInt8: Int] = [:], irqPins: [UInt8: UInt8] = [:]
        for _ in 0..<count {
            let type = c[o]
            kinds[type, default: 0] += 1
            switch type {
            case 0:
                XCTAssertEqual(c[o + 3] & 1, 1, "processor enabled")
                XCTAssertEqual(c[o + 3] & 2 != 0, c[o + 1] == 0, "only APIC ID 0 is the BSP")
                o += 20
            case 1: XCTAssertEqual(Array(c[o + 2..<o + 8]), Array("ISA   ".utf8)); o += 8
            case 2:
                XCTAssertEqual(c[o + 1], 2, "IOAPIC ID after the LAPIC IDs")
                XCTAssertEqual(u32(c, o + 4), 0xFEC0_0000); o += 8
            case 3: XCTAssertEqual(c[o + 6], 2); irqPins[c[o + 5]] = c[o + 7]; o += 8
            default: o += 8
            }
        }
        XCTAssertEqual(o, length)
        XCTAssertEqual(kinds, [0: 2, 1: 1, 2: 1, 3: 16, 4: 2])
        XCTAssertEqual(irqPins[0], 0, "IRQ0 on pin 0, as KVM's default routing")
        XCTAssertEqual(irqPins[14], 14)
    }

    func testI8042ResetAndSelfTest() {
        let k = I8042Controller()
        let data = I8042Port(k, command: false), cmd = I8042Port(k, command: true)
        XCTAssertEqual(cmd.read(offset: 0, size: 1) & 0x03, 0, "no output, input buffer empty")
        cmd.write(offset: 0, size: 1, value: 0xAA)
        XCTAssertEqual(cmd.read(offset: 0, size: 1) & 1, 1, "output buffer full")
        XCTAssertEqual(data.read(offset: 0, size: 1), 0x55)
        cmd.write(offset: 0, size: 1, value: 0x60)           // write the command byte
        data.write(offset: 0, size: 1, value: 0x47)
        cmd.write(offset: 0, size: 1, value: 0x20)
        XCTAssertEqual(data.read(offset: 0, size: 1), 0x47)
        data.write(offset: 0, size: 1, value: 0xFF)          // keyboard reset
        XCTAssertEqual([data.read(offset: 0, size: 1), data.read(offset: 0, size: 1)], [0xFA, 0xAA])
        for _ in 0..<100 { data.write(offset: 0, size: 1, value: 0xF4) }  // output stays bounded
        XCTAssertLessThanOrEqual(k.output.count, I8042Controller.outputLimit)
        XCTAssertFalse(k.resetRequested)
        cmd.write(offset: 0, size: 1, value: 0xFF)           // pulse no line: not a reset
        XCTAssertFalse(k.resetRequested)
        cmd.write(offset: 0, size: 1, value: 0xFE)
        XCTAssertTrue(k.resetRequested)
    }

    func testI8042ResetEndsTheRunThroughTheExitHandler() throws {
        let bus = DeviceBus()
        let legacy = try Machine.attachLegacyDevices(bus, config: config)
        let h = ExitHandler(bus: bus, msrs: MSRFile(forwarded: []), irqchip: .kernel, i8042: legacy.i8042, acpiSleep: legacy.acpiSleep)
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 8)
        defer { page.deallocate() }
        let area = ExitDataArea(page: page, pageSize: 4096, mmioData: page + 64)
        page.storeBytes(of: 0xAA, toByteOffset: 0x100, as: UInt8.self)
        XCTAssertEqual(h.handle(.io(port: 0x64, size: 1, direction: .out, count: 1, dataOffset: 0x100), vcpu: 0, data: area,
                                interruptFlag: false).action, .resume)
        page.storeBytes(of: 0xFE, toByteOffset: 0x100, as: UInt8.self)
        let out = h.handle(.io(port: 0x64, size: 1, direction: .out, count: 1, dataOffset: 0x100), vcpu: 0, data: area, interruptFlag: false)
        guard case let .systemEvent(info) = out.action else { return XCTFail("0xFE to port 0x64 did not end the run: \(out.action)") }
        XCTAssertEqual(info.typeName, "RESET")
        XCTAssertEqual(StopReason.systemEvent(type: info.typeName).exitStatus, RunExitStatus.shutdown)
    }

    func testCMOSClockInBCDAndBinary() {
        // 2026-11-26 21:45:07 UTC, a Thursday.
        let c = CMOS(clock: { 1_795_729_507 }, memoryMiB: 512)
        func reg(_ i: UInt8) -> UInt32 { c.write(offset: 0, size: 1, value: UInt32(i)); return c.read(offset: 1, size: 1) }
        XCTAssertEqual(reg(0x00), 0x07)
        XCTAssertEqual(reg(0x02), 0x45)
        XCTAssertEqual(reg(0x04), 0x21)
        XCTAssertEqual(reg(0x07), 0x26)
        XCTAssertEqual(reg(0x08), 0x11)
        XCTAssertEqual(reg(0x09), 0x26)
        XCTAssertEqual(reg(0x32), 0x20)
        XCTAssertEqual(reg(0x06), 5, "Thursday (Sunday = 1)")
        XCTAssertEqual(reg(0x0A) & 0x80, 0, "never an update in progress")
        XCTAssertEqual(reg(0x0D), 0x80, "valid RAM and time")
        XCTAssertEqual(reg(0x0C), 0)
        // Binary, 12-hour: status B DM=1, 24/12=0.
        c.write(offset: 0, size: 1, value: 0x0B); c.write(offset: 1, size: 1, value: 0x04)
        XCTAssertEqual(reg(0x04), 0x80 | 9, "9 PM")
        XCTAssertEqual(reg(0x02), 45)
        // The NMI-mask bit and any index stay in the 128 bytes; time registers ignore writes.
        c.write(offset: 0, size: 1, value: 0xFF)
        XCTAssertEqual(c.index, 0x7F)
        c.write(offset: 1, size: 1, value: 0x5A)
        XCTAssertEqual(c.read(offset: 1, size: 1), 0x5A)
        c.write(offset: 0, size: 1, value: 0x00); c.write(offset: 1, size: 1, value: 0x59)
        XCTAssertEqual(c.read(offset: 1, size: 1), 7)
        XCTAssertEqual(CMOS(clock: { -.infinity }).register(0x09), 0x70, "a bad clock reads as 1970")
    }
}

/// The ACPI tables and the ACPI sleep control register, without KVM.
final class ACPITablesTests: XCTestCase {
    func u32(_ b: [UInt8], _ o: Int) -> UInt64 { (0..<4).reduce(0) { $0 | UInt64(b[o + $1]) << (8 * UInt64($1)) } }
    func u64(_ b: [UInt8], _ o: Int) -> UInt64 { u32(b, o) | u32(b, o + 4) << 32 }
    func sum(_ b: ArraySlice<UInt8>) -> UInt8 { b.reduce(0, &+) }

    /// The table at guest-physical `address` inside the blob, checked: signature, length, checksum.
    func table(_ blob: [UInt8], at address: UInt64, _ signature: String, file: StaticString = #filePath, line: UInt = #line) -> [UInt8] {
        let o = Int(address - ACPITables.rsdpAddress)
        guard o >= 0, o + 36 <= blob.count else { XCTFail("\(signature) at \(hex(address)) outside the tables", file: file, line: line); return [] }
        XCTAssertEqual(String(decoding: blob[o..<o + 4], as: UTF8.self), signature, file: file, line: line)
        let length = Int(u32(blob, o + 4))
        guard o + length <= blob.count else { XCTFail("\(signature) runs past the tables", file: file, line: line); return [] }
        XCTAssertEqual(sum(blob[o..<o + length]), 0, "\(signature) checksum", file: file, line: line)
        return Array(blob[o..<o + length])
    }

    func testRSDPLeadsToFADTDSDTAndMADT() {
        let blob = ACPITables.build(vcpus: 3)
        XCTAssertEqual(Array(blob[0..<8]), Array("RSD PTR ".utf8))
        XCTAssertEqual(sum(blob[0..<20]), 0, "RSDP 1.0 checksum")
        XCTAssertEqual(sum(blob[0..<36]), 0, "RSDP extended checksum")
        XCTAssertEqual(blob[15], 2, "ACPI 2.0 RSDP")
        let xsdt = table(blob, at: u64(blob, 24), "XSDT")
        let rsdt = table(blob, at: u32(blob, 16), "RSDT")
        XCTAssertEqual(xsdt.count, 36 + 16)
        XCTAssertEqual([u32(rsdt, 36), u32(rsdt, 40)], [u64(xsdt, 36), u64(xsdt, 44)], "RSDT and XSDT list the same tables")

        let fadt = table(blob, at: u64(xsdt, 36), "FACP")
        XCTAssertEqual(fadt.count, 276)
        XCTAssertEqual(fadt[8], 6, "FADT revision")
        XCTAssertNotEqual(u32(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI")
        XCTAssertEqual(u32(fadt, 109) & 0xFFFF & 0x2, 0, "no 8042 claimed (the kernel would probe a keyboard)")
        XCTAssertEqual(Array(fadt[116..<120]), [1, 8, 0, 1], "reset register: byte-wide system I/O")
        XCTAssertEqual(u64(fadt, 120), 0x64)
        XCTAssertEqual(fadt[128], 0xFE)
        XCTAssertEqual(u64(fadt, 244 + 4), UInt64(ACPITables.sleepControlPort))
        XCTAssertEqual(u64(fadt, 256 + 4), UInt64(ACPITables.sleepStatusPort))
        XCTAssertEqual(u32(fadt, 40), u64(fadt, 140), "DSDT and X_DSDT agree")
        let dsdt = table(blob, at: u64(fadt, 140), "DSDT")
        XCTAssertEqual(Array(dsdt[36...]), [0x08] + Array("_S5_".utf8) + [0x12, 0x07, 0x04, 0x0A, 0x05, 0x00, 0x00, 0x00])

        let madt = table(blob, at: u64(xsdt, 44), "APIC")
        XCTAssertEqual(u32(madt, 36), 0xFEE0_0000)
        var o = 44, lapics: [UInt8] = [], ioapics: [(UInt8, UInt64, UInt64)] = []
        while o < madt.count {
            let type = madt[o], length = Int(madt[o + 1])
            XCTAssertGreaterThan(length, 0)
            if type == 0 { lapics.append(madt[o + 3]); XCTAssertEqual(u32(madt, o + 4) & 1, 1, "enabled") }
            if type == 1 { ioapics.append((madt[o + 2], u32(madt, o + 4), u32(madt, o + 8))) }
            XCTAssertNotEqual(type, 2, "no interrupt source override: KVM routes IRQ0 to pin 0")
            o += max(length, 1)
        }
        XCTAssertEqual(o, madt.count)
        XCTAssertEqual(lapics, [0, 1, 2])
        XCTAssertEqual(ioapics.count, 1)
        XCTAssertEqual(ioapics.first?.0, 3, "IOAPIC ID after the LAPIC IDs")
        XCTAssertEqual(ioapics.first?.1, 0xFEC0_0000)
        XCTAssertEqual(ioapics.first?.2, 0, "GSI base")
        // Everything stays below the MP tables' BIOS-area slot.
        XCTAssertLessThanOrEqual(ACPITables.rsdpAddress + UInt64(blob.count), MPTable.address)
    }

    func testZeroPageHandsOverTheRSDP() throws {
        let f = syntheticBzImage()
        let config = MachineConfig(mode: .long64, vcpus: 1, irqchip: .kernel, memoryMiB: 64)
        let image = try LinuxBoot.prepare(file: f, config: config, cmdline: "", initrd: nil)
        guard let zp = image.segments.first(where: { $0.address == LinuxBoot.zeroPageAddress })?.bytes else { return XCTFail("no zero page") }
        XCTAssertEqual(u64(zp, 0x70), ACPITables.rsdpAddress)
        XCTAssertTrue(image.segments.contains { $0.address == ACPITables.rsdpAddress && Array($0.bytes.prefix(8)) == Array("RSD PTR ".utf8) })
    }

    func testSleepControlS5PowersOffThroughTheExitHandler() throws {
        let bus = DeviceBus()
        let legacy = try Machine.attachLegacyDevices(bus, config: MachineConfig())
        let h = ExitHandler(bus: bus, msrs: MSRFile(forwarded: []), irqchip: .kernel, i8042: legacy.i8042, acpiSleep: legacy.acpiSleep)
        let page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 8)
        defer { page.deallocate() }
        let area = ExitDataArea(page: page, pageSize: 4096, mmioData: page + 64)
        func out(_ port: UInt16, _ v: UInt8) -> ExitAction {
            page.storeBytes(of: v, toByteOffset: 0x100, as: UInt8.self)
            return h.handle(.io(port: port, size: 1, direction: .out, count: 1, dataOffset: 0x100), vcpu: 0, data: area, interruptFlag: false).action
        }
        XCTAssertEqual(out(0x601, 0x80), .resume, "clearing WAK_STS")
        XCTAssertEqual(out(0x600, 0x0C), .resume, "SLP_TYP 3 without SLP_EN")
        XCTAssertEqual(out(0x600, 0x2C), .resume, "S3 is not power-off")
        guard case let .systemEvent(info) = out(0x600, 0x34) else { return XCTFail("S5 did not power off") }
        XCTAssertEqual(info.typeName, "SHUTDOWN")
        XCTAssertEqual(StopReason.systemEvent(type: info.typeName).exitStatus, 0)
    }
}
