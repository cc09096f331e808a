import X86
import XCTest
@testable import VMM

final class MemoryAndLoaderTests: XCTestCase {
    func testGuestMemoryBoundsChecks() throws {
        let m = try GuestMemory(size: 0x10000)
        XCTAssertTrue(m.write(0xFFFC, [1, 2, 3, 4]))
        XCTAssertFalse(m.write(0xFFFD, [1, 2, 3, 4]), "write running off the end accepted")
        XCTAssertEqual(m.read(0xFFFC, count: 4), [1, 2, 3, 4])
        XCTAssertNil(m.read(0xFFFC, count: 5))
        XCTAssertNil(m.read(UInt64.max, count: 2))
        XCTAssertNil(m.host(UInt64.max - 1, length: 4))
        XCTAssertNil(m.load(0x10000, as: UInt8.self))
        XCTAssertEqual(m.load(0xFFFC, as: UInt32.self), 0x0403_0201)
        XCTAssertThrowsError(try GuestMemory(size: 1000), "unaligned size accepted")
    }

    func testLongModeIdentityMapTranslates() throws {
        let config = MachineConfig(mode: .long64, memoryMiB: 4)
        let m = try GuestMemory(size: config.memoryBytes)
        let image = GuestImage.flat([0xF4], at: 0x100000)
        try Loader.load(image, into: m, config: config)
        let s = try Loader.bootState(image, memory: m, config: config)
        XCTAssertEqual(s.mode, .long64)
        XCTAssertEqual(s.rip, 0x100000)
        guard case let .translated(gpa, entries, size) = m.translate(MachineLayout.scratchMMIOBase + 0x18, state: s) else {
            return XCTFail("scratch MMIO not mapped")
        }
        XCTAssertEqual(gpa, MachineLayout.scratchMMIOBase + 0x18)
        XCTAssertEqual(entries.count, 3)
        XCTAssertEqual(size, 2 << 20)
        XCTAssertEqual(m.instructionBytes(state: s, maxBytes: 1), [0xF4])
        guard case .pageFault = m.translate(0x1_0000_0000, state: s) else { return XCTFail("above 4 GiB must not be mapped") }
    }

    func testLegacy32PageWalkAndNotPresent() throws {
        let m = try GuestMemory(size: 0x100000)
        // PD at 0x10000: entry 1 (4 MiB..8 MiB) -> PT at 0x11000; PTE 2 -> frame 0x5000.
        m.store(0x10000 + 1 * 4, UInt32(0x11000 | 0x7))
        m.store(0x11000 + 2 * 4, UInt32(0x5000 | 0x5))  // present, user, read-only
        var s = CPUState.flat(.protected32)
        s.cr0 |= CR0.pg | CR0.wp
        s.cr3 = 0x10000
        guard case let .translated(gpa, entries, _) = m.translate(0x40_2123, state: s) else { return XCTFail() }
        XCTAssertEqual(gpa, 0x5123)
        XCTAssertEqual(entries.map(\.gpa), [0x10004, 0x11008])
        guard case let .pageFault(code, _) = m.translate(0x40_2123, state: s, access: .write) else {
            return XCTFail("write to a read-only page with WP must fault")
        }
        XCTAssertEqual(code & 3, 3)
        guard case .pageFault(0, _) = m.translate(0x80_0000, state: s) else { return XCTFail("not-present PDE") }
        XCTAssertNil(m.readLinear(0x80_0000, count: 1, state: s))
    }

    /// A minimal ELF64: one PT_LOAD of `code` at `paddr`, and an .exitscope section.
    static func elf64(code: [UInt8], paddr: UInt64, entry: UInt64, config: String?) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 64)
        func put16(_ o: Int, _ v: UInt64) { for i in 0..<2 { f[o + i] = UInt8((v >> (8 * UInt64(i))) & 0xFF) } }
        func put32(_ o: Int, _ v: UInt64) { for i in 0..<4 { f[o + i] = UInt8((v >> (8 * UInt64(i))) & 0xFF) } }
        func put64(_ o: Int, _ v: UInt64) { for i in 0..<8 { f[o + i] = UInt8((v >> (8 * UInt64(i))) & 0xFF) } }
        f[0...3] = [0x7F, 0x45, 0x4C, 0x46]; f[4] = 2; f[5] = 1; f[6] = 1
        put16(16, 2); put16(18, 62); put32(20, 1); put64(24, entry)
        put64(32, 64); put16(52, 64); put16(54, 56); put16(56, 1); put16(58, 64)
        // program header at 64
        let codeOff = 64 + 56
        f += [UInt8](repeating: 0, count: 56)
        put32(64, 1); put32(68, 5); put64(72, UInt64(codeOff)); put64(80, paddr); put64(88, paddr)
        put64(96, UInt64(code.count)); put64(104, UInt64(code.count) + 16); put64(112, 0x1000)
        f += code
        guard let config else { return f }
        let textOff = f.count
        let text = Array(config.utf8) + [0]
        f += text
        let strOff = f.count
        let strtab = Array("\0.exitscope\0.shstrtab\0".utf8)
        f += strtab
        while f.count % 8 != 0 { f.append(0) }
        let shoff = f.count
        f += [UInt8](repeating: 0, count: 64 * 3)
        put64(40, UInt64(shoff)); put16(60, 3); put16(62, 2)
        put32(shoff + 64, 1); put32(shoff + 68, 1); put64(shoff + 64 + 24, UInt64(textOff)); put64(shoff + 64 + 32, UInt64(text.count))
        put32(shoff + 128, 12); put32(shoff + 132, 3); put64(shoff + 128 + 24, UInt64(strOff)); put64(shoff + 128 + 32, UInt64(strtab.count))
        return f
    }

    /// A minimal ELF32 (i386): one PT_LOAD of `code` at `paddr`, no sections.
    static func elf32(code: [UInt8], paddr: UInt32, entry: UInt32) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 52 + 32)
        func put16(_ o: Int, _ v: UInt32) { for i in 0..<2 { f[o + i] = UInt8((v >> (8 * UInt32(i))) & 0xFF) } }
        func put32(_ o: Int, _ v: UInt32) { for i in 0..<4 { f[o + i] = UInt8((v >> (8 * UInt32(i))) & 0xFF) } }
        f[0...3] = [0x7F, 0x45, 0x4C, 0x46]; f[4] = 1; f[5] = 1; f[6] = 1
        put16(16, 2); put16(18, 3); put32(20, 1); put32(24, entry); put32(28, 52)
        put16(40, 52); put16(42, 32); put16(44, 1)
        put32(52, 1); put32(56, 84); put32(60, paddr); put32(64, paddr)
        put32(68, UInt32(code.count)); put32(72, UInt32(code.count)); put32(76, 5); put32(80, 0x1000)
        return f + code
    }

    func testELF32LoaderUsesPhysicalAddresses() throws {
        let img = try GuestImage.elf(Self.elf32(code: [0xF4], paddr: 0x100000, entry: 0x100000))
        XCTAssertEqual(img.kind, .elf32)
        XCTAssertEqual(img.entry, 0x100000)
        XCTAssertEqual(img.segments.first?.address, 0x100000)
        XCTAssertNil(img.machineText)
    }

    func testELF64LoaderReadsSegmentsEntryAndConfig() throws {
        let file = Self.elf64(code: [0xF4, 0x90], paddr: 0x1000, entry: 0x1000, config: "mode=real memory=2")
        let img = try GuestImage.elf(file)
        XCTAssertEqual(img.kind, .elf64)
        XCTAssertEqual(img.entry, 0x1000)
        XCTAssertEqual(img.segments, [GuestImage.Segment(address: 0x1000, bytes: [0xF4, 0x90], memorySize: 18)])
        XCTAssertEqual(img.machineText, "mode=real memory=2")
        var c = MachineConfig()
        try c.apply(img.machineText!)
        let m = try GuestMemory(size: c.memoryBytes)
        m.write(0x1002, [0xAA])
        try Loader.load(img, into: m, config: c)
        XCTAssertEqual(m.read(0x1000, count: 3), [0xF4, 0x90, 0x00], "p_memsz beyond p_filesz must be zeroed")
    }

    func testZeroFileSizeSegmentIsZeroedNotACrash() throws {
        let img = GuestImage(kind: .elf64, segments: [.init(address: 0x2000, bytes: [], memorySize: 0x100)], entry: 0x2000)
        let m = try GuestMemory(size: 1 << 20)
        XCTAssertTrue(m.write(0x2000, [0xAA]))
        XCTAssertTrue(m.write(0x2000, []))
        try Loader.load(img, into: m, config: MachineConfig(memoryMiB: 1))
        XCTAssertEqual(m.read(0x2000, count: 1), [0])
    }

    func testBadELFsAreClearErrors() {
        let good = Self.elf64(code: [0xF4], paddr: 0x1000, entry: 0x1000, config: nil)
        XCTAssertThrowsError(try GuestImage.elf([1, 2, 3], path: "x")) { e in
            XCTAssertEqual((e as? VMMError)?.description, "x: not an ELF file")
        }
        for cut in [20, 70, 100] {
            XCTAssertThrowsError(try GuestImage.elf(Array(good.prefix(cut))), "truncated at \(cut) accepted")
        }
        var lying = good
        lying[96] = 0xFF; lying[97] = 0xFF  // p_filesz far beyond the file
        XCTAssertThrowsError(try GuestImage.elf(lying))
        var arm = good
        arm[18] = 40
        XCTAssertThrowsError(try GuestImage.elf(arm))
        // A segment that does not fit in RAM is refused at load time.
        let big = Self.elf64(code: [0xF4], paddr: 0x7FFF_F000, entry: 0x1000, config: nil)
        let img = try! GuestImage.elf(big)
        let m = try! GuestMemory(size: 1 << 20)
        XCTAssertThrowsError(try Loader.load(img, into: m, config: MachineConfig(memoryMiB: 1)))
    }

    func testRealModeEntryMustBeBelow64K() throws {
        let m = try GuestMemory(size: 2 << 20)
        XCTAssertThrowsError(try Loader.bootState(GuestImage.flat([0xF4], at: 0x10000), memory: m, config: MachineConfig()))
        let s = try Loader.bootState(GuestImage.flat([0xF4], at: 0x7C00), memory: m, config: MachineConfig())
        XCTAssertEqual(s.cs.selector, 0)
        XCTAssertEqual(s.rip, 0x7C00)
        XCTAssertEqual(s.rsp, 0x7C00)
        XCTAssertEqual(s.mode, .real)
    }
}
