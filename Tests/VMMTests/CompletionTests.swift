import KVM
import X86
import X86Emulator
import XCTest
@testable import VMM

/// Completion of emulation failures (issue 9): the adapters and the completer without KVM,
/// then guests on /dev/kvm whose instructions KVM's emulator cannot run.
final class CompletionTests: XCTestCase {
    // mov edi,0x2000; [rdi] = 0x11.., [rdi+8] = 0x22..; rbx = 0x33..; rcx = 0x44..;
    // lock cmpxchg16b [rdi] (equal: stores RCX:RBX, ZF=1); check memory;
    // rax = rdx = 0; lock cmpxchg16b [rdi] (differs: RDX:RAX = memory, ZF=0); check RAX;
    // status 42 when every check passed, else 1 (port 0x501).
    static let cmpxchg16bGuest: [UInt8] = [
        0xbf, 0x00, 0x20, 0x00, 0x00, 0x48, 0xb8, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x48, 0x89, 0x07,
        0x48, 0xba, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x48, 0x89, 0x57, 0x08, 0x48, 0xbb, 0x33, 0x33,
        0x33, 0x33, 0x33, 0x33, 0x33, 0x33, 0x48, 0xb9, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0x44, 0xf0, 0x48,
        0x0f, 0xc7, 0x0f, 0x75, 0x25, 0x48, 0x8b, 0x07, 0x48, 0x39, 0xd8, 0x75, 0x1d, 0x48, 0x8b, 0x47, 0x08, 0x48,
        0x39, 0xc8, 0x75, 0x14, 0x31, 0xc0, 0x31, 0xd2, 0xf0, 0x48, 0x0f, 0xc7, 0x0f, 0x74, 0x09, 0x48, 0x39, 0xd8,
        0x75, 0x04, 0xb0, 0x2a, 0xeb, 0x02, 0xb0, 0x01, 0x66, 0xba, 0x01, 0x05, 0xee,
    ]

    // MARK: without KVM

    func testMemoryAdapterBoundsWithoutBus() throws {
        let ram = try VMM.GuestMemory(size: 0x10000)
        let m = CompletionMemory(ram: ram, bus: nil, vcpu: 0)
        var buf = [UInt8](repeating: 0xAA, count: 16)
        let bytes: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
        // Inside RAM: written and read back, both logged.
        XCTAssertEqual(bytes.withUnsafeBytes { m.write(0x100, count: 8, from: $0.baseAddress!) }, .ok)
        XCTAssertEqual(buf.withUnsafeMutableBytes { m.read(0x100, count: 8, into: $0.baseAddress!) }, .ok)
        XCTAssertEqual(Array(buf.prefix(8)), bytes)
        XCTAssertEqual(ram.read(0x100, count: 8), bytes)
        // Straddling the end of RAM: the first byte past it is reported, and nothing is written.
        XCTAssertEqual(bytes.withUnsafeBytes { m.write(0xFFFC, count: 8, from: $0.baseAddress!) }, .unbacked(0x10000))
        XCTAssertEqual(ram.read(0xFFFC, count: 4), [0, 0, 0, 0])
        XCTAssertEqual(buf.withUnsafeMutableBytes { m.read(0xFFFC, count: 8, into: $0.baseAddress!) }, .unbacked(0x10000))
        // Far outside, and wrapping past 2^64: unbacked, no trap.
        XCTAssertEqual(buf.withUnsafeMutableBytes { m.read(UInt64.max - 3, count: 8, into: $0.baseAddress!) },
                       .unbacked(UInt64.max - 3))
        XCTAssertEqual(bytes.withUnsafeBytes { m.write(0xFFFF_FFFF_0000, count: 8, from: $0.baseAddress!) },
                       .unbacked(0xFFFF_FFFF_0000))
        XCTAssertEqual(m.writes.count, 1)
        XCTAssertEqual(m.writes.first?.gpa, 0x100)
    }

    func testMemoryAdapterRoutesNonRAMToTheMMIOBus() throws {
        let ram = try VMM.GuestMemory(size: 0x10000)
        let bus = DeviceBus()
        let scratch = ScratchMMIO()
        try bus.attach(scratch, address: 0xD000_0000, length: 0x1000)
        let m = CompletionMemory(ram: ram, bus: bus, vcpu: 0)
        // A 16-byte write (CMPXCHG16B's size) to the device: two 8-byte device writes.
        let bytes: [UInt8] = Array(1...16)
        XCTAssertEqual(bytes.withUnsafeBytes { m.write(0xD000_0010, count: 16, from: $0.baseAddress!) }, .ok)
        XCTAssertEqual(m.deviceAccesses.map(\.size), [8, 8])
        XCTAssertEqual(m.deviceAccesses.map(\.address), [0xD000_0010, 0xD000_0018])
        var buf = [UInt8](repeating: 0, count: 16)
        XCTAssertEqual(buf.withUnsafeMutableBytes { m.read(0xD000_0010, count: 16, into: $0.baseAddress!) }, .ok)
        XCTAssertEqual(buf, bytes)
        // Nobody there: all ones, counted as unclaimed.
        XCTAssertEqual(buf.withUnsafeMutableBytes { m.read(0xE000_0000, count: 3, into: $0.baseAddress!) }, .ok)
        XCTAssertEqual(Array(buf.prefix(3)), [0xFF, 0xFF, 0xFF])
        XCTAssertEqual(m.deviceAccesses.suffix(2).map(\.size), [2, 1])
        XCTAssertFalse(m.deviceAccesses.last?.claimed ?? true)
        // Half RAM, half device: the RAM part lands in RAM, the rest on the bus.
        XCTAssertEqual(bytes.withUnsafeBytes { m.write(0xFFFC, count: 8, from: $0.baseAddress!) }, .ok)
        XCTAssertEqual(ram.read(0xFFFC, count: 4), [1, 2, 3, 4])
        XCTAssertEqual(m.deviceAccesses.last?.address, 0x10000)
        XCTAssertEqual(m.deviceAccesses.last?.isWrite, true)
    }

    /// A long-mode state on the VMM's own identity map, with `code` at 0x100000.
    func longModeState(_ code: [UInt8], ram: VMM.GuestMemory) throws -> CPUState {
        let config = MachineConfig(mode: .long64, memoryMiB: 4)
        let image = GuestImage.flat(code, at: 0x100000)
        try Loader.load(image, into: ram, config: config)
        return try Loader.bootState(image, memory: ram, config: config, vcpu: 0)
    }

    func testCompleterRunsCmpxchg16bAgainstGuestRAM() throws {
        let ram = try VMM.GuestMemory(size: 4 << 20)
        // mov edi,0x2000 is not run here: the state has RDI already; lock cmpxchg16b [rdi]
        var state = try longModeState([0xF0, 0x48, 0x0F, 0xC7, 0x0F], ram: ram)
        state.rdi = 0x2000
        state.rax = 0x1111; state.rdx = 0x2222; state.rbx = 0x3333; state.rcx = 0x4444
        ram.store(0x2000, UInt64(0x1111)); ram.store(0x2008, UInt64(0x2222))
        let c = Completer.complete(vcpu: 0, state: state, ram: ram, bus: nil)
        XCTAssertEqual(c.outcome, .completed)
        XCTAssertEqual(c.mnemonic, "cmpxchg16b")
        XCTAssertEqual(c.instructionBytes, [0xF0, 0x48, 0x0F, 0xC7, 0x0F])
        XCTAssertEqual(c.instructionGPA, 0x100000)
        XCTAssertEqual(c.after.rip, 0x100005)
        XCTAssertNotEqual(c.after.rflags & RFLAGS.zf, 0)
        XCTAssertEqual(ram.load(0x2000, as: UInt64.self), 0x3333)
        XCTAssertEqual(ram.load(0x2008, as: UInt64.self), 0x4444)
        XCTAssertTrue(c.memory.contains { $0.role == .instruction && $0.gpa == 0x100000 })
        XCTAssertTrue(c.memory.contains { $0.role == .pageTable })
        // The executor reads and writes the 16-byte operand as two quadwords.
        XCTAssertEqual(c.memory.filter { $0.role == .operandRead }.map(\.gpa), [0x2000, 0x2008])
        XCTAssertEqual(c.memory.filter { $0.role == .written && $0.gpa >= 0x2000 && $0.gpa < 0x3000 }.map(\.bytes),
                       [[0x33, 0x33, 0, 0, 0, 0, 0, 0], [0x44, 0x44, 0, 0, 0, 0, 0, 0]])
        // Only registers changed: no sregs or MSR write-back needed.
        let wb = Completer.writeBack(before: c.before, after: c.after)
        XCTAssertFalse(wb.sregs)
        XCTAssertTrue(wb.msrs.isEmpty)
    }

    /// A #PF handler entered from a CPL3 SYSCALL that kvm_pvm left at CPL3 (saved RIP = LSTAR):
    /// 4-level paging, user pages, the handler's first instruction CLAC (an emulation failure).
    func syscallFaultState(ram: VMM.GuestMemory, savedCS: UInt64 = 0x33) -> CPUState {
        ram.store(0x1000, UInt64(0x2000 | 7))            // PML4[0] -> PDPT
        ram.store(0x2000, UInt64(0x3000 | 7))            // PDPT[0] -> PD
        ram.store(0x3000, UInt64(0x00_0000 | 0x87))      // 2 MiB pages, user, writable
        ram.store(0x3008, UInt64(0x20_0000 | 0x87))
        ram.store(0x3010, UInt64(0x40_0000 | 0x87))
        for (i, b) in [UInt8(0x0F), 0x01, 0xCA].enumerated() { ram.store(0x20_0100 + UInt64(i), b) }  // clac
        ram.store(0x30_0010, UInt8(0x0F)); ram.store(0x30_0011, UInt8(0x05))                        // syscall
        // IDT gate 14: 64-bit interrupt gate to 0x200100, selector 0x10.
        ram.store(0x5000 + 14 * 16, UInt64(0x0000_8E00_0010_0100) | UInt64(0x0020) << 48)
        ram.store(0x5000 + 14 * 16 + 8, UInt64(0))
        // The fault's frame: error code (P, U, fetch), RIP = LSTAR, CS, RFLAGS, RSP, SS.
        for (i, v) in [UInt64(0x15), 0x20_0000, savedCS, 0x1_0002, 0x3F_FE00, 0x2B].enumerated() {
            ram.store(0x7000 + UInt64(8 * i), v)
        }
        var s = CPUState()
        s.cr0 = 0x8000_0011; s.cr4 = 0x20; s.cr3 = 0x1000; s.efer = 0x501; s.cr2 = 0x20_0000
        s.cs = Segment(selector: 0x10, base: 0, limit: 0xFFFF_FFFF, attributes: 0xA9B)
        s.ss = Segment(selector: 0x18, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC93)
        s.cpl = 0
        s.idtr = DescriptorTable(base: 0x5000, limit: 0xFFF)
        s.lstar = 0x20_0000; s.star = 0x0023_0010_0000_0000; s.sfmask = 0x4_7700
        s.rip = 0x20_0100; s.rsp = 0x7000; s.rflags = 0x2
        s.rcx = 0x30_0012; s.r11 = 0x246; s.rax = 0xC
        return s
    }

    func testCPL3SyscallLeftAtCPL3IsPerformedFromItsFaultFrame() throws {
        let ram = try VMM.GuestMemory(size: 8 << 20)
        let c = Completer.complete(vcpu: 0, state: syscallFaultState(ram: ram), ram: ram, bus: nil)
        XCTAssertEqual(c.outcome, .completed)
        XCTAssertTrue(c.redeliveredSyscall)
        XCTAssertEqual(c.mnemonic, "syscall")
        XCTAssertEqual(c.instructionBytes, [0x0F, 0x05])
        XCTAssertEqual(c.instructionGPA, 0x30_0010)
        // Before: the user state at the SYSCALL; after: CPL0 at LSTAR on the user stack, as SYSCALL leaves it.
        XCTAssertEqual(c.before.cpl, 3)
        XCTAssertEqual(c.before.rip, 0x30_0010)
        XCTAssertEqual(c.before.cs.selector, 0x33)
        XCTAssertEqual(c.after.cpl, 0)
        XCTAssertEqual(c.after.rip, 0x20_0000)
        XCTAssertEqual(c.after.cs.selector, 0x10)
        XCTAssertEqual(c.after.ss.selector, 0x18)
        XCTAssertEqual(c.after.rsp, 0x3F_FE00)
        XCTAssertEqual(c.after.rcx, 0x30_0012)
        XCTAssertEqual(c.after.r11, 0x246)
        XCTAssertEqual(c.after.rflags & RFLAGS.if, 0)
        XCTAssertEqual(c.after.rax, 0xC)
        XCTAssertTrue(Completer.writeBack(before: c.before, after: c.after).sregs)  // CS/SS back to the kernel's

        // A #PF from kernel mode (saved CS 0x10) is no SYSCALL: the CLAC itself is completed.
        let k = Completer.complete(vcpu: 0, state: syscallFaultState(ram: ram, savedCS: 0x10), ram: ram, bus: nil)
        XCTAssertFalse(k.redeliveredSyscall)
        XCTAssertEqual(k.mnemonic, "clac")
        XCTAssertEqual(k.after.rip, 0x20_0103)
        // Nor is a fault whose return address does not follow a SYSCALL.
        var other = syscallFaultState(ram: ram)
        other.rcx = 0x30_0020
        XCTAssertEqual(Completer.complete(vcpu: 0, state: other, ram: ram, bus: nil).mnemonic, "clac")
    }

    func testCompleterReportsWhatItCannotRun() throws {
        let ram = try VMM.GuestMemory(size: 4 << 20)
        // x87 FLD1 (not implemented by the executor): unsupported, state unchanged.
        let state = try longModeState([0xD9, 0xE8], ram: ram)
        let c = Completer.complete(vcpu: 0, state: state, ram: ram, bus: nil)
        XCTAssertEqual(c.outcome, .unsupported)
        XCTAssertFalse(c.resumes)
        XCTAssertEqual(c.after, state)
        XCTAssertTrue(c.failureDetail.contains("d9 e8"), c.failureDetail)
        // RIP on an unmapped page (beyond the 4 GiB identity map).
        var far = state
        far.rip = 0x1_0000_0000_0000
        let d = Completer.complete(vcpu: 0, state: far, ram: ram, bus: nil)
        XCTAssertFalse(d.resumes)
        if case .failed = d.outcome {} else { XCTFail("\(d.outcome)") }
        // An operand outside RAM without a bus: the instruction stops, nothing resumes.
        var out = try longModeState([0xF0, 0x48, 0x0F, 0xC7, 0x0F], ram: ram)
        out.rdi = 0x8000_0000
        let e = Completer.complete(vcpu: 0, state: out, ram: ram, bus: nil)
        XCTAssertEqual(e.outcome, .failed("no memory at 0x80000000"))
    }

    /// SSE instructions start from the XMM registers the caller passes (KVM_GET_FPU on a live
    /// guest) and hand back the changed ones; VEX-encoded ones are refused, not run on zeros.
    func testCompleterCarriesXMMInAndOut() throws {
        let ram = try GuestMemory(size: 4 << 20)
        var state = try longModeState([0x66, 0x0F, 0xEF, 0xC1], ram: ram)  // pxor xmm0, xmm1
        state.cr4 |= CR4.osfxsr
        var xmm = [UInt64](repeating: 0, count: 32)
        xmm[0] = 0xF0F0; xmm[1] = 0x1111; xmm[2] = 0x0FF0; xmm[3] = 0x2222
        let c = Completer.complete(vcpu: 0, state: state, ram: ram, bus: nil, xmm: xmm, mxcsr: 0x1F80)
        XCTAssertEqual(c.outcome, .completed)
        XCTAssertEqual(c.mnemonic, "pxor")
        XCTAssertEqual(c.xmmAfter.map { Array($0.prefix(4)) }, [0xFF00, 0x3333, 0x0FF0, 0x2222])
        XCTAssertEqual(c.mxcsrAfter, 0x1F80)
        let v = Completer.complete(vcpu: 0, state: try longModeState([0xC5, 0xF9, 0xEF, 0xC1], ram: ram), ram: ram,
                                   bus: nil, xmm: xmm, mxcsr: 0x1F80)  // vpxor xmm0, xmm0, xmm1
        XCTAssertFalse(v.resumes)
        XCTAssertEqual(v.mnemonic, "vpxor")
    }

    func testWriteBackNamesChangedSregsAndMSRs() {
        let before = CPUState.flat(.long64)
        var after = before
        after.rax = 5
        XCTAssertFalse(Completer.writeBack(before: before, after: after).sregs)
        after.cr2 = 0x1234
        after.lstar = 0xFFFF_8000_0000_1000
        let wb = Completer.writeBack(before: before, after: after)
        XCTAssertTrue(wb.sregs)
        XCTAssertEqual(wb.msrs.map(\.index), [MSRIndex.lstar])
        XCTAssertEqual(wb.msrs.first?.value, 0xFFFF_8000_0000_1000)
        var s = CPUState()
        Completer.apply(msrs: [MSRIndex.star: 7, MSRIndex.pat: 9, 0x1234: 1], to: &s)
        XCTAssertEqual(s.star, 7)
        XCTAssertEqual(s.pat, 9)
    }

    // MARK: on /dev/kvm

    func runGuest(_ code: [UInt8], vcpus: Int = 1, complete: Bool, observer: ExitObserver? = nil) throws -> RunSummary {
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
        let config = MachineConfig(mode: .long64, vcpus: vcpus, memoryMiB: 4)
        let m = try Machine(config: config, image: .flat(code, at: 0x100000), serial: SerialOutput(fd: -1))
        return m.run(limits: RunLimits(timeout: 30, completeEmulationFailures: complete), observer: observer)
    }

    func requirePVM() throws {
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
        guard KVMSystem.backendModule() == "kvm_pvm" else {
            throw XCTSkip("KVM's emulator fails on CMPXCHG16B only on kvm_pvm (CPL0 emulated); this host runs \(KVMSystem.backendModule())")
        }
    }

    final class Completions: ExitObserver, @unchecked Sendable {
        let lock = NSLock()
        var seen: [Completion] = []
        func exitHandled(_ exit: borrowing ObservedExit) {}
        func instructionCompleted(_ completion: Completion) { lock.lock(); seen.append(completion); lock.unlock() }
    }

    func testCmpxchg16bIsCompletedAndTheGuestGoesOn() throws {
        try requirePVM()
        let obs = Completions()
        let s = try runGuest(Self.cmpxchg16bGuest, complete: true, observer: obs)
        XCTAssertEqual(s.stop, .exitPort(value: 42), s.text)
        XCTAssertEqual(s.completions["cmpxchg16b"], 2, s.text)
        XCTAssertEqual(s.exitsByReason["INTERNAL_ERROR"], 2)
        XCTAssertEqual(obs.seen.map(\.mnemonic), ["cmpxchg16b", "cmpxchg16b"])
        XCTAssertEqual(obs.seen.first?.before.rip, 0x100034)
        XCTAssertEqual(obs.seen.first?.after.rip, 0x100039)
        XCTAssertEqual(obs.seen.last?.after.rax, 0x3333_3333_3333_3333)
        XCTAssertTrue(s.text.contains("cmpxchg16b: 2"), s.text)
    }

    func testNoCompleteEndsWithTheEmulationFailureReport() throws {
        try requirePVM()
        let s = try runGuest(Self.cmpxchg16bGuest, complete: false)
        guard case let .guestEvent(r) = s.stop else { return XCTFail("stopped by \(s.stop)") }
        XCTAssertEqual(r.kind, .internalError)
        XCTAssertEqual(r.state.rip, 0x100034)
        XCTAssertEqual(Array(r.instructionBytes.prefix(5)), [0xF0, 0x48, 0x0F, 0xC7, 0x0F])
        XCTAssertEqual(s.exitStatus, RunExitStatus.guestFailure)
        XCTAssertTrue(s.completions.isEmpty)
    }

    /// MOVBE with a register operand: KVM's emulator fails on it; the processor raises #UD.
    /// The guest installs a #UD handler (IDT at 0x3000) that checks the pushed RIP is the
    /// MOVBE's and exits with 6; falling through would exit with 1.
    func testMovbeRegisterFormGetsUDThroughTheGuestIDT() throws {
        try requirePVM()
        let code: [UInt8] = [
            0x48, 0x8d, 0x05, 0x3a, 0x00, 0x00, 0x00, 0xbf, 0x60, 0x30, 0x00, 0x00, 0x66, 0x89, 0x07, 0x66, 0xc7, 0x47,
            0x02, 0x08, 0x00, 0x66, 0xc7, 0x47, 0x04, 0x00, 0x8e, 0x48, 0xc1, 0xe8, 0x10, 0x66, 0x89, 0x47, 0x06, 0x48,
            0xc1, 0xe8, 0x10, 0x89, 0x47, 0x08, 0xc7, 0x47, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x01, 0x1d, 0x1f, 0x00,
            0x00, 0x00, 0x48, 0x0f, 0x38, 0xf0, 0xc1, 0xb0, 0x01, 0xeb, 0x11, 0x48, 0x8d, 0x1d, 0xf0, 0xff, 0xff, 0xff,
            0x48, 0x39, 0x1c, 0x24, 0xb0, 0x06, 0x74, 0x02, 0xb0, 0x02, 0x66, 0xba, 0x01, 0x05, 0xee, 0xff, 0x0f, 0x00,
            0x30, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ]
        let obs = Completions()
        let s = try runGuest(code, complete: true, observer: obs)
        XCTAssertEqual(s.stop, .exitPort(value: 6), s.text)
        XCTAssertEqual(obs.seen.count, 1)
        XCTAssertEqual(obs.seen.first?.outcome, .exceptionDelivered(vector: 6, errorCode: nil))
        XCTAssertEqual(obs.seen.first?.before.rip, 0x100038)
        // The exception frame went to the guest's stack: it is among the bytes written.
        XCTAssertTrue(obs.seen.first?.memory.contains { $0.role == .written } ?? false)
    }

    /// INT n at CPL0 in long mode: KVM's emulator fails on it here; the executor delivers it
    /// through the guest's IDT (gate 0x80 at 0x3800), the handler sets EAX=0x80 and IRETQs
    /// (which KVM runs); the guest exits with 9 when EAX came back as 0x80.
    func testIntNInLongModeIsDeliveredByTheVMM() throws {
        try requirePVM()
        let code: [UInt8] = [
            0x48, 0x8d, 0x05, 0x42, 0x00, 0x00, 0x00, 0xbf, 0x00, 0x38, 0x00, 0x00, 0x66, 0x89, 0x07, 0x66, 0xc7, 0x47,
            0x02, 0x08, 0x00, 0x66, 0xc7, 0x47, 0x04, 0x00, 0x8e, 0x48, 0xc1, 0xe8, 0x10, 0x66, 0x89, 0x47, 0x06, 0x48,
            0xc1, 0xe8, 0x10, 0x89, 0x47, 0x08, 0xc7, 0x47, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x01, 0x1d, 0x1d, 0x00,
            0x00, 0x00, 0x31, 0xc0, 0xcd, 0x80, 0x3d, 0x80, 0x00, 0x00, 0x00, 0xb0, 0x09, 0x74, 0x0b, 0xb0, 0x01, 0xeb,
            0x07, 0xb8, 0x80, 0x00, 0x00, 0x00, 0x48, 0xcf, 0x66, 0xba, 0x01, 0x05, 0xee, 0xff, 0x0f, 0x00, 0x30, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00,
        ]
        let obs = Completions()
        let s = try runGuest(code, complete: true, observer: obs)
        XCTAssertEqual(s.stop, .exitPort(value: 9), s.text)
        XCTAssertEqual(s.completions["int"], 1, s.text)
        XCTAssertEqual(obs.seen.first?.outcome, .completed)
        XCTAssertEqual(obs.seen.first?.after.rip, 0x100000 + 0x49, "at the handler")
    }

    /// Per vCPU, 200 times: add 1 to the 16-byte counter at 0x2000 with a LOCK CMPXCHG16B retry
    /// loop (each CMPXCHG16B an emulation failure the VMM completes on kvm_pvm), then `cli; hlt`.
    /// Flat long64 code at 0x100000 (also LockstepTests).
    static let lockedCounterLoop: [UInt8] = [
        0xBF, 0x00, 0x20, 0x00, 0x00,        // mov edi,0x2000
        0x41, 0xB8, 0xC8, 0x00, 0x00, 0x00,  // mov r8d,200
        0x48, 0x8B, 0x07,                    // again: mov rax,[rdi]
        0x48, 0x8B, 0x57, 0x08,              // mov rdx,[rdi+8]
        0x48, 0x8D, 0x58, 0x01,              // lea rbx,[rax+1]
        0x48, 0x89, 0xD1,                    // mov rcx,rdx
        0xF0, 0x48, 0x0F, 0xC7, 0x0F,        // lock cmpxchg16b [rdi]
        0x75, 0xEC,                          // jnz again
        0x41, 0xFF, 0xC8,                    // dec r8d
        0x75, 0xE7,                          // jnz again
        0xFA, 0xF4,                          // cli; hlt
    ]

    /// Two vCPUs each add 1 to a shared 16-byte counter 200 times with LOCK CMPXCHG16B retry
    /// loops, every one completed by the VMM: the total must be exactly 400 (other vCPUs are
    /// held out of the guest during a completion, so the RMW is atomic).
    func testLockedCompletionsStayAtomicAcrossVCPUs() throws {
        try requirePVM()
        let code = Self.lockedCounterLoop
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
        let config = MachineConfig(mode: .long64, vcpus: 2, memoryMiB: 4)
        let m = try Machine(config: config, image: .flat(code, at: 0x100000), serial: SerialOutput(fd: -1))
        let s = m.run(limits: RunLimits(timeout: 60))
        XCTAssertEqual(s.stop, .halted, s.text)
        XCTAssertEqual(m.memory.load(0x2000, as: UInt64.self), 400, s.text)
        XCTAssertGreaterThanOrEqual(s.completions["cmpxchg16b"] ?? 0, 400)
    }
}
