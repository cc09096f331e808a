import KVM
import XCTest
@testable import VMM

/// fw_cfg, the poweroff port, pc-testdev and the PIC mask registers, without KVM.
final class PCDeviceTests: XCTestCase {
    func testFirmwareConfigItems() {
        let f = FirmwareConfig(vcpus: 3, ramBytes: 128 << 20)
        func item(_ key: UInt16, _ n: Int) -> [UInt8] {
            f.write(offset: 0, size: 2, value: UInt32(key))
            return (0..<n).map { _ in UInt8(f.read(offset: 1, size: 1)) }
        }
        XCTAssertEqual(item(0x00, 4), Array("QEMU".utf8))
        XCTAssertEqual(item(0x05, 2), [3, 0])
        XCTAssertEqual(item(0x03, 8), [0, 0, 0, 8, 0, 0, 0, 0])
        XCTAssertEqual(item(0x11, 8), [0, 0, 0, 8, 0, 0, 0, 0])
        XCTAssertEqual(item(0x00, 6), Array("QEMU".utf8) + [0, 0], "reads past the item's end must give 0")
        XCTAssertEqual(item(0x1234, 2), [0, 0], "unknown key")
        // Selecting rewinds; a wider read takes consecutive bytes.
        f.write(offset: 0, size: 2, value: 0)
        XCTAssertEqual(f.read(offset: 1, size: 2), 0x4551)
        f.write(offset: 1, size: 1, value: 0x55)  // data writes are ignored
        XCTAssertEqual(f.read(offset: 1, size: 1), 0x4D)
    }

    func testTestDevLatchBytesAndBounds() {
        let l = TestDevLatch()
        l.write(offset: 0, size: 4, value: 0x1122_3344)
        XCTAssertEqual(l.read(offset: 0, size: 4), 0x1122_3344)
        XCTAssertEqual(l.read(offset: 2, size: 2), 0x1122)
        XCTAssertEqual(l.read(offset: 1, size: 1), 0x33)
        l.write(offset: 1, size: 2, value: 0xBEEF)
        XCTAssertEqual(l.value, 0x11BE_EF44)
        l.write(offset: 3, size: 2, value: 0)  // runs off the latch: dropped
        XCTAssertEqual(l.value, 0x11BE_EF44)
        XCTAssertEqual(l.read(offset: 2, size: 4), ~0)
    }

    func testShutdownNeedsTheWholeWord() {
        let s = ShutdownPort()
        for b in "ShutShutdow".utf8 { s.write(offset: 0, size: 1, value: UInt32(b)) }
        XCTAssertFalse(s.requested)
        s.write(offset: 0, size: 1, value: UInt32(UInt8(ascii: "n")))
        XCTAssertTrue(s.requested)
    }

    func testTestDevIRQLinesDriveTheirLine() {
        var calls: [String] = []
        let d = TestDevIRQLines { line, level in calls.append("\(line)=\(level)") }
        d.write(offset: 11, size: 4, value: 1)
        d.write(offset: 11, size: 4, value: 0)
        d.write(offset: 24, size: 1, value: 1)  // no such line
        XCTAssertEqual(calls, ["11=true", "11=false"])
    }

    func testPICMaskRegisters() {
        let p = PICMaskRegisters()
        XCTAssertEqual(p.read(offset: 1, size: 1), 0xFF)
        p.write(offset: 0, size: 1, value: 0x11)
        p.write(offset: 1, size: 1, value: 0xFB)
        XCTAssertEqual(p.read(offset: 1, size: 1), 0xFB)
        XCTAssertEqual(p.read(offset: 0, size: 1), 0)
    }

    /// The devices as a machine attaches them, through the exit handler.
    func testThroughTheExitHandler() throws {
        let bus = DeviceBus()
        let shutdown = try Machine.attachPCDevices(bus, config: MachineConfig(mode: .protected32, vcpus: 2, irqchip: .none, memoryMiB: 64))
        let h = ExitHandler(bus: bus, msrs: MSRFile(forwarded: []), irqchip: .none, shutdown: shutdown)
        let page = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        let mmio = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { page.deallocate(); mmio.deallocate() }
        page.initializeMemory(as: UInt8.self, repeating: 0, count: 8192)
        let area = ExitDataArea(page: page, pageSize: 8192, mmioData: mmio)
        func out(_ port: UInt16, _ size: UInt8, _ value: UInt32) -> ExitOutcome {
            page.storeBytes(of: value, toByteOffset: 4096, as: UInt32.self)
            return h.handle(.io(port: port, size: size, direction: .out, count: 1, dataOffset: 4096), vcpu: 0, data: area, interruptFlag: false)
        }
        func inp(_ port: UInt16, _ size: UInt8) -> UInt64? {
            h.handle(.io(port: port, size: size, direction: .in, count: 1, dataOffset: 4096), vcpu: 0, data: area, interruptFlag: false).access?.data
        }
        _ = out(0x510, 2, 0x05)
        XCTAssertEqual(inp(0x511, 1), 2)
        XCTAssertEqual(inp(0x511, 1), 0)
        _ = out(0xE0, 4, 0xCAFE_F00D)
        XCTAssertEqual(inp(0xE2, 2), 0xCAFE)
        XCTAssertEqual(inp(0xE0, 1), 0x0D)
        // 0xE8 is the same latch; 0xE4 asks for a page to be refaulted (32-bit writes only).
        XCTAssertEqual(inp(0xEA, 2), 0xCAFE)
        _ = out(0xE8, 1, 0x42)
        XCTAssertEqual(inp(0xE0, 4), 0xCAFE_F042)
        XCTAssertEqual(out(0xE4, 4, 0x0012_3456).refaultPage, 0x0012_3000)
        XCTAssertNil(out(0xE0, 4, 0x0012_3456).refaultPage)
        XCTAssertGreaterThan(inp(0x608, 4) ?? ~0, 0, "the PM timer runs")
        XCTAssertLessThan(inp(0x608, 4) ?? ~0, 1 << 24)
        _ = out(0x21, 1, 0xFF)
        XCTAssertEqual(inp(0x21, 1), 0xFF)
        XCTAssertEqual(bus.unclaimedReads + bus.unclaimedWrites, 0)
        XCTAssertNil(out(0xE4, 2, 0x1000).refaultPage, "QEMU takes only 32-bit writes at 0xE4")
        XCTAssertEqual(bus.unclaimedWrites, 1)

        // pc-testdev memory: 64 KiB, reads back what was written, bounds-checked at its end.
        let top = MachineLayout.testDevMemoryBase + MachineLayout.testDevMemorySize
        _ = h.handle(.mmio(address: top - 8, length: 8, isWrite: true, data: 0x0102_0304_0506_0708), vcpu: 0, data: area, interruptFlag: false)
        let r = h.handle(.mmio(address: top - 8, length: 8, isWrite: false, data: 0), vcpu: 0, data: area, interruptFlag: false)
        XCTAssertEqual(r.access?.data, 0x0102_0304_0506_0708)
        let past = h.handle(.mmio(address: top - 4, length: 8, isWrite: false, data: 0), vcpu: 0, data: area, interruptFlag: false)
        XCTAssertEqual(past.access?.claimed, false, "an access running past the region must not be claimed")

        for b in "Shutdow".utf8 { XCTAssertEqual(out(0x8900, 1, UInt32(b)).action, .resume) }
        guard case let .systemEvent(info) = out(0x8900, 1, UInt32(UInt8(ascii: "n"))).action else {
            return XCTFail("\"Shutdown\" must end the run")
        }
        XCTAssertEqual(info.typeName, "SHUTDOWN")
    }

    func testRefaultPageKeepsContentsAndChecksBounds() throws {
        let memory = try GuestMemory(size: 64 << 10)
        XCTAssertTrue(memory.write(0x2FF8, [1, 2, 3, 4, 5, 6, 7, 8]))
        XCTAssertTrue(memory.refaultPage(0x2FFF))
        XCTAssertEqual(memory.read(0x2FF8, count: 8), [1, 2, 3, 4, 5, 6, 7, 8])
        XCTAssertTrue(memory.write(0x2000, [9]), "the page must be writable again")
        XCTAssertFalse(memory.refaultPage(64 << 10), "a page outside RAM")
        XCTAssertFalse(memory.refaultPage(~0))
    }

    func testKernelIRQChipLeavesThePICPortsToKVM() throws {
        let bus = DeviceBus()
        _ = try Machine.attachPCDevices(bus, config: MachineConfig(mode: .protected32, irqchip: .kernel))
        XCTAssertNil(bus.ports.find(0x21))
        XCTAssertNotNil(bus.ports.find(0x510))
    }
}
