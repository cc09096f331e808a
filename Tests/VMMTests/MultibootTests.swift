import X86
import XCTest
@testable import VMM

/// Multiboot v1 loading, without KVM: the header search, the information block, the memory
/// map, modules and the boot registers.
final class MultibootTests: XCTestCase {
    func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// A file with a Multiboot header at `offset`.
    func file(headerAt offset: Int, flags: UInt32 = 0, checksumDelta: UInt32 = 0) -> [UInt8] {
        var f = [UInt8](repeating: 0x90, count: offset)
        f += le32(Multiboot.headerMagic) + le32(flags) + le32((0 &- (Multiboot.headerMagic &+ flags)) &+ checksumDelta)
        return f + [UInt8](repeating: 0, count: 64)
    }

    let image = GuestImage(kind: .elf32, segments: [GuestImage.Segment(address: 0x400000, bytes: [0xF4], memorySize: 0x1234)],
                           entry: 0x400000)
    let config = MachineConfig(mode: .protected32, memoryMiB: 16)

    func testHeaderIsFoundOnlyWithItsChecksumAndWithin8KiB() {
        XCTAssertEqual(Multiboot.findHeader(in: file(headerAt: 0x1000)), Multiboot.Header(offset: 0x1000, flags: 0))
        XCTAssertEqual(Multiboot.findHeader(in: file(headerAt: 8, flags: 3))?.flags, 3)
        XCTAssertNil(Multiboot.findHeader(in: file(headerAt: 0x1000, checksumDelta: 1)), "bad checksum accepted")
        XCTAssertNil(Multiboot.findHeader(in: file(headerAt: 8192)), "header past 8 KiB accepted")
        XCTAssertNil(Multiboot.findHeader(in: file(headerAt: 6)), "unaligned header accepted")
        XCTAssertNil(Multiboot.findHeader(in: [0x02, 0xB0, 0xAD]), "truncated file")
    }

    func testInformationBlockAsKvmUnitTestsReadsIt() throws {
        let env = MultibootModule.environ(["NR_CPUS=1", "TEST=x"])
        let out = try Multiboot.prepare(image, file: file(headerAt: 0), path: "k", config: config,
                                        cmdline: "cpuid 7", modules: [env])
        guard let regs = out.entryRegisters else { return XCTFail("no entry registers") }
        XCTAssertEqual(regs.rax, 0x2BAD_B002)
        let memory = try GuestMemory(size: config.memoryBytes)
        try Loader.load(out, into: memory, config: config)
        let mbi = regs.rbx
        XCTAssertGreaterThanOrEqual(mbi, 0x400000 + 0x1234, "information block overlaps the image")
        func u32(_ a: UInt64) -> UInt32 { memory.load(a, as: UInt32.self) ?? 0xDEAD }
        func cString(_ a: UInt64) -> String {
            var bytes: [UInt8] = []
            var p = a
            while let b = memory.load(p, as: UInt8.self), b != 0, bytes.count < 256 { bytes.append(b); p += 1 }
            return String(decoding: bytes, as: UTF8.self)
        }
        let flags = u32(mbi)
        XCTAssertEqual(flags & 0x4D, 0x4D, "memory, cmdline, modules and memory map must be flagged")
        XCTAssertEqual(u32(mbi + 4), 640)
        XCTAssertEqual(u32(mbi + 8), UInt32((config.vmmAreaBase - 0x100000) / 1024), "mem_upper")
        XCTAssertEqual(cString(UInt64(u32(mbi + 16))), "cpuid 7")
        XCTAssertEqual(u32(mbi + 20), 1, "mods_count")
        let mod = UInt64(u32(mbi + 24))
        let start = UInt64(u32(mod)), end = UInt64(u32(mod + 4))
        XCTAssertEqual(start & 0xFFF, 0, "module not page-aligned")
        XCTAssertGreaterThanOrEqual(start, 0x401234)
        XCTAssertEqual(memory.read(start, count: Int(end - start)).map { String(decoding: $0, as: UTF8.self) }, "NR_CPUS=1\nTEST=x\n")
        XCTAssertEqual(cString(UInt64(u32(mod + 8))), "environ")
        XCTAssertEqual(cString(UInt64(u32(mbi + 64))), "ExitScope")

        // The memory map: entries of size 20, usable RAM from 1 MiB to the VMM's area.
        let length = UInt64(u32(mbi + 44)), base = UInt64(u32(mbi + 48))
        var entries: [Multiboot.MemoryRange] = []
        var p = base
        while p < base + length {
            let size = UInt64(u32(p))
            XCTAssertEqual(size, 20)
            let b = UInt64(u32(p + 4)) | UInt64(u32(p + 8)) << 32, l = UInt64(u32(p + 12)) | UInt64(u32(p + 16)) << 32
            entries.append(Multiboot.MemoryRange(base: b, length: l, type: u32(p + 20)))
            p += size + 4
        }
        XCTAssertEqual(entries, Multiboot.memoryMap(config: config))
        XCTAssertTrue(entries.contains(Multiboot.MemoryRange(base: 0x100000, length: config.vmmAreaBase - 0x100000, type: 1)))
        XCTAssertEqual(entries.filter { $0.type == 1 }.map(\.length).reduce(0, +), 0x9FC00 + config.vmmAreaBase - 0x100000)
        for s in out.segments { XCTAssertLessThanOrEqual(s.address + s.memorySize, config.vmmAreaBase) }

        // Only the boot vCPU gets EAX/EBX; it starts in protected mode with paging off.
        let s0 = try Loader.bootState(out, memory: memory, config: config, vcpu: 0)
        XCTAssertEqual(s0.rax, 0x2BAD_B002)
        XCTAssertEqual(s0.rbx, mbi)
        XCTAssertEqual(s0.mode, .protected32)
        XCTAssertEqual(s0.cr0 & CR0.pg, 0)
        XCTAssertEqual(s0.rip, 0x400000)
        let s1 = try Loader.bootState(out, memory: memory, config: config, vcpu: 1)
        XCTAssertEqual(s1.rax, 0)
    }

    func testNoModulesMeansCountZero() throws {
        let out = try Multiboot.prepare(image, file: file(headerAt: 0), path: "k", config: config, cmdline: "", modules: [])
        let memory = try GuestMemory(size: config.memoryBytes)
        try Loader.load(out, into: memory, config: config)
        let mbi = try XCTUnwrap(out.entryRegisters?.rbx)
        XCTAssertEqual(memory.load(mbi + 20, as: UInt32.self), 0)
        XCTAssertEqual(memory.load(UInt64(memory.load(mbi + 16, as: UInt32.self) ?? 0), as: UInt8.self), 0, "empty cmdline")
    }

    func testRefusals() {
        func message(_ body: () throws -> Void) -> String {
            do { try body(); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(message { _ = try Multiboot.prepare(self.image, file: [UInt8](repeating: 0, count: 100), path: "k",
                                                          config: self.config, cmdline: "", modules: []) }.contains("no Multiboot header"))
        XCTAssertTrue(message { _ = try Multiboot.prepare(self.image, file: self.file(headerAt: 0), path: "k",
                                                          config: MachineConfig(mode: .long64), cmdline: "", modules: []) }.contains("protected32"))
        XCTAssertTrue(message { _ = try Multiboot.prepare(self.image, file: self.file(headerAt: 0, flags: 4), path: "k",
                                                          config: self.config, cmdline: "", modules: []) }.contains("video"))
        let big = MultibootModule(bytes: [UInt8](repeating: 1, count: 16 << 20))
        XCTAssertTrue(message { _ = try Multiboot.prepare(self.image, file: self.file(headerAt: 0), path: "k",
                                                          config: self.config, cmdline: "", modules: [big]) }.contains("do not fit"))
    }
}
