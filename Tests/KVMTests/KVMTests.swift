import CKVM
import Glibc
import X86
import XCTest
@testable import KVM

final class KVMErrorTests: XCTestCase {
    func testErrnoNamesAndMessages() {
        let e = KVMError.ioctl(name: "KVM_RUN", errno: .EINTR)
        XCTAssertEqual(e.description, "KVM_RUN failed: EINTR (Interrupted system call)")
        XCTAssertEqual(Errno(9).name, "EBADF")
        XCTAssertEqual(Errno(9999).name, "errno 9999")
    }

    func testOpenMissingDeviceNamesThePath() {
        XCTAssertThrowsError(try KVMSystem(path: "/nonexistent/kvm")) { error in
            guard let e = error as? KVMError, case let .open(path, errno) = e else { return XCTFail("\(error)") }
            XCTAssertEqual(path, "/nonexistent/kvm")
            XCTAssertEqual(errno, .ENOENT)
        }
    }

    func testIoctlsOnInvalidDescriptorReportEBADF() {
        let sys = KVMSystem(fd: -1)
        XCTAssertThrowsError(try sys.apiVersion()) { error in
            XCTAssertEqual(error as? KVMError, .ioctl(name: "KVM_GET_API_VERSION", errno: .EBADF))
        }
        XCTAssertThrowsError(try sys.createVM()) { error in
            XCTAssertEqual(error as? KVMError, .ioctl(name: "KVM_CREATE_VM", errno: .EBADF))
        }
        XCTAssertFalse(sys.has(.syncRegs))
        let vm = VirtualMachine(fd: -1)
        XCTAssertThrowsError(try vm.createVCPU(id: 0)) { error in
            XCTAssertEqual(error as? KVMError, .ioctl(name: "KVM_CREATE_VCPU", errno: .EBADF))
        }
        XCTAssertThrowsError(try vm.createIRQChip()) { error in
            XCTAssertEqual((error as? KVMError)?.errno, .EBADF)
        }
    }

    func testExitDecodingFromASyntheticRunPage() {
        let run = UnsafeMutablePointer<kvm_run>.allocate(capacity: 1)
        defer { run.deallocate() }
        run.initialize(to: kvm_run())
        run.pointee.exit_reason = UInt32(KVM_EXIT_IO)
        run.pointee.io.direction = UInt8(KVM_EXIT_IO_OUT)
        run.pointee.io.size = 1
        run.pointee.io.port = 0x3F8
        run.pointee.io.count = 1
        run.pointee.io.data_offset = 4096
        XCTAssertEqual(VMExit(run: run), .io(port: 0x3F8, size: 1, direction: .out, count: 1, dataOffset: 4096))
        XCTAssertEqual(VMExit(run: run).reasonName, "IO")

        run.pointee.exit_reason = UInt32(KVM_EXIT_MMIO)
        run.pointee.mmio.phys_addr = 0xFEB0_0010
        run.pointee.mmio.len = 2
        run.pointee.mmio.is_write = 1
        run.pointee.mmio.data = (0x34, 0x12, 0xFF, 0xFF, 0, 0, 0, 0)
        XCTAssertEqual(VMExit(run: run), .mmio(address: 0xFEB0_0010, length: 2, isWrite: true, data: 0x1234))

        run.pointee.exit_reason = UInt32(KVM_EXIT_INTERNAL_ERROR)
        run.pointee.internal.suberror = 1
        run.pointee.internal.ndata = 3
        run.pointee.emulation_failure.flags = 1
        run.pointee.emulation_failure.insn_size = 3
        run.pointee.emulation_failure.insn_bytes = (0x0F, 0xC7, 0x0E, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        guard case let .internalError(info) = VMExit(run: run) else { return XCTFail() }
        XCTAssertEqual(info.suberrorName, "EMULATION")
        XCTAssertEqual(info.instructionBytes, [0x0F, 0xC7, 0x0E])

        run.pointee.exit_reason = 99
        XCTAssertEqual(VMExit(run: run).reasonName, "UNKNOWN_99")
        XCTAssertEqual(VMExit(run: run).reason, 99)
    }

    func testSegmentRoundTripThroughKVMLayout() {
        let flat = CPUState.flat(.long64)
        let back = Segment(kvm: flat.cs.kvm)
        XCTAssertEqual(back, flat.cs)
        var s = CPUState.flat(.protected32)
        s.rip = 0x1234
        s.rax = 7
        let r = CPUState(regs: s.kvmRegs, sregs: s.kvmSregs())
        XCTAssertEqual(r.rip, 0x1234)
        XCTAssertEqual(r.cs, s.cs)
        XCTAssertEqual(r.mode, .protected32)
    }
}

/// Tests that talk to /dev/kvm. They skip, saying so, where it is absent.
final class KVMDeviceTests: XCTestCase {
    func requireKVM() throws -> KVMSystem {
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
        return try KVMSystem()
    }

    func testSystemQueries() throws {
        let sys = try requireKVM()
        XCTAssertEqual(try sys.apiVersion(), 12)
        XCTAssertGreaterThanOrEqual(try sys.vcpuMmapSize(), MemoryLayout<kvm_run>.size)
        XCTAssertTrue(sys.has(.userMemory))
        let cpuid = try sys.supportedCPUID()
        XCTAssertTrue(cpuid.contains { $0.function == 0 })
    }

    /// A real-mode guest: mov al,'A'; out 0x3f8 (dx),al; hlt. Checks the IO exit, the data,
    /// sync regs, and that OUT is shown committed (RIP past it).
    func testRealModeOutAndHalt() throws {
        let sys = try requireKVM()
        let vm = try sys.createVM()
        let size = 0x10000
        let mem = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        defer { munmap(mem, size) }
        let code: [UInt8] = [0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xF4]  // mov dx,0x3f8; mov al,'A'; out dx,al; hlt
        mem.advanced(by: 0x1000).copyMemory(from: code, byteCount: code.count)
        try vm.setUserMemoryRegion(slot: 0, guestPhysical: 0, size: UInt64(size), host: mem)
        let vcpu = try vm.createVCPU(id: 0)
        var sregs = try vcpu.getSregs()
        sregs.cs.base = 0; sregs.cs.selector = 0
        try vcpu.setSregs(sregs)
        var regs = kvm_regs()
        regs.rip = 0x1000; regs.rflags = 2
        try vcpu.setRegs(regs)
        if sys.has(.syncRegs) { vcpu.enableSyncRegs() }

        let exit = try vcpu.run()
        guard case let .io(port, sz, dir, count, off) = exit else { return XCTFail("got \(exit)") }
        XCTAssertEqual(port, 0x3F8); XCTAssertEqual(sz, 1); XCTAssertEqual(dir, .out); XCTAssertEqual(count, 1)
        XCTAssertEqual(vcpu.ioData(offset: off, length: 1)?.load(as: UInt8.self), 0x41)
        XCTAssertNil(vcpu.ioData(offset: UInt64(vcpu.mmapSize), length: 1))
        let rip = sys.has(.syncRegs) ? vcpu.syncedRegs.pointee.rip : try vcpu.getRegs().rip
        XCTAssertTrue(rip == 0x1005 || rip == 0x1006, "OUT exit RIP \(String(rip, radix: 16))")
        XCTAssertEqual(try vcpu.run(), .hlt)
        XCTAssertEqual(try vcpu.getRegs().rip, 0x1007)

        let stats = try vcpu.stats()
        XCTAssertTrue(stats.names.contains("io_exits"), "\(stats.names)")
        let values = try stats.read()
        // "exits" counts both; io_exits stays 0 on kvm_pvm (its OUT goes through the emulator).
        XCTAssertGreaterThanOrEqual(values["exits"] ?? 0, 2)
    }

    func testImmediateExitReturnsEINTR() throws {
        let sys = try requireKVM()
        let vm = try sys.createVM()
        let vcpu = try vm.createVCPU(id: 0)
        vcpu.immediateExit = true
        XCTAssertThrowsError(try vcpu.run()) { error in
            XCTAssertEqual(error as? KVMError, .ioctl(name: "KVM_RUN", errno: .EINTR))
        }
    }
}

final class KVMStateTests: XCTestCase {
    func testStateGetSetRoundTrips() throws {
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
        let sys = try KVMSystem()
        let vm = try sys.createVM()
        let vcpu = try vm.createVCPU(id: 0)
        try vcpu.setCPUID(try sys.supportedCPUID())
        var regs = try vcpu.getRegs()
        regs.rbx = 0x1122_3344_5566_7788
        try vcpu.setRegs(regs)
        XCTAssertEqual(try vcpu.getRegs().rbx, 0x1122_3344_5566_7788)
        let set = try vcpu.setMSRs([(MSRIndex.star, 0x0023_0010_0000_0000), (MSRIndex.lstar, 0xFFFF_8000_0000_1000)])
        XCTAssertEqual(set, 2)
        let msrs = try vcpu.getMSRs([MSRIndex.star, MSRIndex.lstar])
        XCTAssertEqual(msrs[MSRIndex.star], 0x0023_0010_0000_0000)
        XCTAssertEqual(msrs[MSRIndex.lstar], 0xFFFF_8000_0000_1000)
        var fpu = try vcpu.getFPU()
        fpu.fcw = 0x27F
        try vcpu.setFPU(fpu)
        XCTAssertEqual(try vcpu.getFPU().fcw, 0x27F)
        XCTAssertEqual(try vcpu.getMPState(), 0, "the BSP starts runnable")
        _ = try vcpu.getVCPUEvents()
        if sys.has(.xcrs) {
            let xcrs = try vcpu.getXCRs()
            XCTAssertEqual(xcrs.first?.index, 0)
            XCTAssertEqual((xcrs.first?.value ?? 0) & 1, 1, "XCR0.x87 is always set")
        }
        XCTAssertGreaterThan(try vcpu.tscKHz(), 0)
        let dr = try vcpu.getDebugRegs()
        XCTAssertEqual(dr.dr7 & 0x400, 0x400)
    }

    func testMSRFilterAndIrqchipSetup() throws {
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
        let sys = try KVMSystem()
        let vm = try sys.createVM()
        try vm.createIRQChip()
        try vm.createPIT2()
        guard sys.has(.userSpaceMSR), sys.has(.msrFilter) else {
            throw XCTSkip("this host's KVM lacks KVM_CAP_X86_USER_SPACE_MSR or KVM_CAP_X86_MSR_FILTER")
        }
        try vm.routeMSRs([MSRFilterRange(base: MSRIndex.star, count: 4)])
        XCTAssertThrowsError(try vm.routeMSRs([MSRFilterRange](repeating: MSRFilterRange(base: 0), count: 17)))
        let ap = try vm.createVCPU(id: 1)
        XCTAssertEqual(try ap.getMPState(), 1, "with the in-kernel irqchip an AP waits for INIT/SIPI (UNINITIALIZED)")
    }
}
