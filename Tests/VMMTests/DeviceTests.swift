import KVM
import X86
import XCTest
@testable import VMM

/// Devices, buses and the exit handler, without KVM.
final class DeviceTests: XCTestCase {
    final class Page {
        let page = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        let mmio = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        init() {
            page.initializeMemory(as: UInt8.self, repeating: 0, count: 8192)
            mmio.initializeMemory(as: UInt8.self, repeating: 0, count: 8)
        }
        deinit { page.deallocate(); mmio.deallocate() }
        var area: ExitDataArea { ExitDataArea(page: page, pageSize: 8192, mmioData: mmio) }
        func put(_ bytes: [UInt8], at offset: Int) { page.advanced(by: offset).copyMemory(from: bytes, byteCount: bytes.count) }
        func get(_ offset: Int, _ n: Int) -> [UInt8] { Array(UnsafeRawBufferPointer(start: page + offset, count: n)) }
    }

    func makeHandler(input: [UInt8] = [], irqchip: IRQChipMode = .none) throws -> (ExitHandler, SerialOutput, DeviceBus) {
        let out = SerialOutput(fd: -1, captureLimit: 1 << 16)
        let bus = DeviceBus()
        try bus.attach(UART16550(output: out, input: input), port: 0x3F8, count: 8)
        try bus.attach(ScratchMMIO(), address: MachineLayout.scratchMMIOBase, length: MachineLayout.scratchMMIOSize)
        let msrs = MSRFile(forwarded: [MSRIndex.star], owned: [0x4000_0000: 5])
        return (ExitHandler(bus: bus, msrs: msrs, irqchip: irqchip), out, bus)
    }

    func testRangeMapFindsAndRejectsOverlaps() {
        var m = RangeMap<Int>()
        XCTAssertTrue(m.insert(base: 0x3F8, length: 8, 1))
        XCTAssertTrue(m.insert(base: 0x60, length: 1, 2))
        XCTAssertFalse(m.insert(base: 0x3FF, length: 2, 3), "overlap accepted")
        XCTAssertFalse(m.insert(base: 0x10, length: 0, 3), "empty range accepted")
        XCTAssertFalse(m.insert(base: UInt64.max, length: 2, 3), "wrapping range accepted")
        XCTAssertEqual(m.find(0x3FA)?.entry.value, 1)
        XCTAssertEqual(m.find(0x3FA)?.offset, 2)
        XCTAssertNil(m.find(0x400))
        XCTAssertNil(m.find(0x3FF, size: 2), "access running off the device's end was found")
        XCTAssertEqual(m.find(0x60)?.entry.value, 2)
    }

    func testUARTRegisters() {
        let out = SerialOutput(fd: -1, captureLimit: 100)
        let u = UART16550(output: out, input: [0x41, 0x42])
        XCTAssertEqual(u.read(offset: 5, size: 1) & 0x61, 0x61, "LSR must show THRE, TEMT and DR")
        XCTAssertEqual(u.read(offset: 0, size: 1), 0x41)
        XCTAssertEqual(u.read(offset: 0, size: 1), 0x42)
        XCTAssertEqual(u.read(offset: 5, size: 1), 0x60, "DR must clear when input is used up")
        u.write(offset: 0, size: 1, value: 0x68)
        u.write(offset: 3, size: 1, value: 0x80)  // DLAB on: offset 0 is the divisor latch
        u.write(offset: 0, size: 1, value: 0x01)
        XCTAssertEqual(u.read(offset: 0, size: 1), 0x01)
        u.write(offset: 3, size: 1, value: 0x03)
        u.write(offset: 7, size: 1, value: 0xA5)
        XCTAssertEqual(u.read(offset: 7, size: 1), 0xA5)
        XCTAssertEqual(out.capturedText, "h")
    }

    func testOutToSerialAndInFromLSR() throws {
        let (h, out, _) = try makeHandler()
        let p = Page()
        p.put([0x48], at: 4096)
        var o = h.handle(.io(port: 0x3F8, size: 1, direction: .out, count: 1, dataOffset: 4096), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertEqual(o.action, .resume)
        XCTAssertEqual(o.access, BusAccess(kind: .port, address: 0x3F8, size: 1, isWrite: true, data: 0x48))
        o = h.handle(.io(port: 0x3FD, size: 1, direction: .in, count: 1, dataOffset: 4096), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertEqual(p.get(4096, 1), [0x60])
        XCTAssertEqual(o.access?.data, 0x60)
        XCTAssertEqual(out.capturedText, "H")
    }

    func testExitPortsAndMarker() throws {
        let (h, _, _) = try makeHandler()
        let p = Page()
        p.put([0x2A, 0, 0, 0], at: 4096)
        XCTAssertEqual(h.handle(.io(port: 0x501, size: 1, direction: .out, count: 1, dataOffset: 4096), vcpu: 0, data: p.area, interruptFlag: false).action,
                       .exitStatus(source: 0x501, value: 0x2A, status: 0x2A))
        XCTAssertEqual(h.handle(.io(port: 0xF4, size: 1, direction: .out, count: 1, dataOffset: 4096), vcpu: 0, data: p.area, interruptFlag: false).action,
                       .exitStatus(source: 0xF4, value: 0x2A, status: 0x55))
        let m = h.handle(.io(port: 0x502, size: 4, direction: .out, count: 1, dataOffset: 4096), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertEqual(m.marker, 0x2A)
        XCTAssertEqual(m.action, .resume)
    }

    func testUnclaimedAccessesReadAllOnesAndAreCounted() throws {
        let (h, _, bus) = try makeHandler()
        let p = Page()
        let o = h.handle(.io(port: 0x5F0, size: 2, direction: .in, count: 4, dataOffset: 4096), vcpu: 1, data: p.area, interruptFlag: false)
        XCTAssertEqual(p.get(4096, 8), [UInt8](repeating: 0xFF, count: 8))
        XCTAssertEqual(o.access?.claimed, false)
        _ = h.handle(.mmio(address: 0xC000_0000, length: 4, isWrite: true, data: 1), vcpu: 0, data: p.area, interruptFlag: false)
        let r = h.handle(.mmio(address: 0xC000_0000, length: 4, isWrite: false, data: 0), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: p.mmio, count: 4)), [0xFF, 0xFF, 0xFF, 0xFF])
        XCTAssertEqual(r.access?.data, 0xFFFF_FFFF)
        XCTAssertEqual(bus.unclaimedReads, 5)
        XCTAssertEqual(bus.unclaimedWrites, 1)
        XCTAssertEqual(bus.unclaimed.first, UnclaimedAccess(vcpu: 1, kind: .port, address: 0x5F0, size: 2, isWrite: false, count: 4))
        XCTAssertEqual(bus.unclaimed.count, 3, "one group per place and direction")
        _ = h.handle(.mmio(address: 0xC000_0000, length: 4, isWrite: false, data: 0), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertEqual(bus.unclaimed.last?.count, 2)
    }

    func testScratchMMIOReadsBackWhatWasWritten() throws {
        let (h, _, _) = try makeHandler()
        let p = Page()
        let base = MachineLayout.scratchMMIOBase
        _ = h.handle(.mmio(address: base + 0x10, length: 4, isWrite: true, data: 0xDEAD_BEEF), vcpu: 0, data: p.area, interruptFlag: false)
        let o = h.handle(.mmio(address: base + 0x12, length: 2, isWrite: false, data: 0), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertEqual(o.access?.data, 0xDEAD)
        XCTAssertEqual(Array(UnsafeRawBufferPointer(start: p.mmio, count: 2)), [0xAD, 0xDE])
        // An access straddling the device's end is nobody's.
        let edge = h.handle(.mmio(address: base + 0xFFC, length: 8, isWrite: false, data: 0), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertEqual(edge.access?.claimed, false)
    }

    func testHostileIOExitIsAReportNotACrash() throws {
        let (h, _, _) = try makeHandler()
        let p = Page()
        let o = h.handle(.io(port: 0x3F8, size: 1, direction: .in, count: 100_000, dataOffset: 4096), vcpu: 0, data: p.area, interruptFlag: false)
        guard case .vmmError = o.action else { return XCTFail("\(o.action)") }
        let o2 = h.handle(.io(port: 0x3F8, size: 4, direction: .out, count: 1, dataOffset: UInt64.max - 1), vcpu: 0, data: p.area, interruptFlag: false)
        guard case .vmmError = o2.action else { return XCTFail("\(o2.action)") }
    }

    func testHaltShutdownAndMSRs() throws {
        let (h, _, bus) = try makeHandler()
        let p = Page()
        XCTAssertEqual(h.handle(.hlt, vcpu: 0, data: p.area, interruptFlag: false).action, .haltVCPU)
        XCTAssertEqual(h.handle(.hlt, vcpu: 0, data: p.area, interruptFlag: true).action, .resume)
        let (hk, _, _) = try makeHandler(irqchip: .kernel)
        XCTAssertEqual(hk.handle(.hlt, vcpu: 0, data: p.area, interruptFlag: false).action, .resume)
        XCTAssertEqual(h.handle(.shutdown, vcpu: 0, data: p.area, interruptFlag: false).action, .guestEvent(.shutdown, detail: "triple fault"))

        let fwd = h.handle(.wrmsr(index: MSRIndex.star, reason: 4, data: 9), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertTrue(fwd.forwardMSR)
        let own = h.handle(.wrmsr(index: 0x4000_0000, reason: 4, data: 7), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertFalse(own.msrError)
        XCTAssertEqual(h.handle(.rdmsr(index: 0x4000_0000, reason: 4), vcpu: 0, data: p.area, interruptFlag: false).msrData, 7)
        let unknown = h.handle(.rdmsr(index: 0x1234, reason: 2), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertTrue(unknown.msrError, "an MSR nobody owns must give the guest #GP")
        XCTAssertEqual(bus.unclaimedReads, 1)
    }

    func testMachineConfigText() throws {
        var c = MachineConfig()
        try c.apply("mode=long64 vcpus=2 irqchip=kernel memory=64\n")
        XCTAssertEqual(c, MachineConfig(mode: .long64, vcpus: 2, irqchip: .kernel, memoryMiB: 64))
        XCTAssertThrowsError(try c.apply("mode=vm86"))
        XCTAssertThrowsError(try c.apply("memory=0"))
        XCTAssertThrowsError(try c.apply("colour=blue"))
        XCTAssertThrowsError(try c.apply("vcpus"))
    }
}

extension DeviceTests {
    func testStringInFromTheExitPortIsUnclaimedNotAnExit() throws {
        let (h, _, bus) = try makeHandler()
        let p = Page()
        let o = h.handle(.io(port: 0x501, size: 1, direction: .in, count: 3, dataOffset: 4096), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertEqual(o.action, .resume)
        XCTAssertEqual(p.get(4096, 3), [0xFF, 0xFF, 0xFF])
        XCTAssertEqual(bus.unclaimedReads, 3)
        p.put([5, 6], at: 4096)
        let w = h.handle(.io(port: 0x501, size: 1, direction: .out, count: 2, dataOffset: 4096), vcpu: 0, data: p.area, interruptFlag: false)
        XCTAssertEqual(w.action, .exitStatus(source: 0x501, value: 5, status: 5))
    }
}
