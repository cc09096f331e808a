@testable import Record
import CKVM
import KVM
import Trace
import VMM
import X86
import XCTest

/// The recorder's shortcut for a port exit like the last one (Recorder.RepeatPortIO): it may only
/// apply when the locator cache would have given the same record, so each way of differing must
/// send the exit back to the cache.
final class RepeatPortIOTests: XCTestCase {
    func machine() throws -> (GuestMemoryView, GuestMemory) {
        let ram = try GuestMemory(size: 1 << 20)
        XCTAssertTrue(ram.write(0x1000, [0xEE]))  // out dx, al
        return (GuestMemoryView(ram), ram)
    }

    func committedOut(_ mode: CPUMode = .protected32) -> CPUState {
        var s = CPUState.flat(mode)
        s.rip = 0x1001  // committed: past the OUT
        s.rdx = 0x3F8
        return s
    }

    func remembered(_ s: CPUState) -> Recorder.RepeatPortIO {
        var r = Recorder.RepeatPortIO()
        r.set(s, isIn: false, port: 0x3F8, size: 1, slot: 3,
              guestBytes: [GuestBytes(role: .instruction, gpa: 0x1000, bytes: [0xEE])])
        return r
    }

    /// The check reads KVM's registers in place (as sync regs leave them in kvm_run).
    func matches(_ r: Recorder.RepeatPortIO, _ s: CPUState, isIn: Bool, port: UInt16, size: UInt8, view: GuestMemoryView) -> Bool {
        KVMRegisters(s).withView { r.matches($0, isIn: isIn, port: port, size: size, view: view) }
    }

    func testTheSameExitRepeats() throws {
        let (view, _) = try machine()
        let s = committedOut()
        let r = remembered(s)
        defer { r.release() }
        var next = s
        next.rax = 0x41  // other registers may change
        XCTAssertTrue(matches(r, next, isIn: false, port: 0x3F8, size: 1, view: view))
        XCTAssertEqual(r.slot, 3)
    }

    func testChangedBytesAnotherPortOrDXDoNotRepeat() throws {
        let (view, ram) = try machine()
        let s = committedOut()
        let r = remembered(s)
        defer { r.release() }
        XCTAssertFalse(matches(r, s, isIn: false, port: 0x3F9, size: 1, view: view), "another port")
        XCTAssertFalse(matches(r, s, isIn: true, port: 0x3F8, size: 1, view: view), "IN, not OUT")
        var dx = s
        dx.rdx = 0x3F9
        XCTAssertFalse(matches(r, dx, isIn: false, port: 0x3F8, size: 1, view: view), "another DX")
        var paging = s
        paging.cr3 = 0x5000
        XCTAssertFalse(matches(r, paging, isIn: false, port: 0x3F8, size: 1, view: view), "other paging registers")
        XCTAssertTrue(ram.write(0x1000, [0xEC]))  // the guest rewrote its instruction
        XCTAssertFalse(matches(r, s, isIn: false, port: 0x3F8, size: 1, view: view), "rewritten instruction")
    }

    /// At CPL 3 with IOPL 0 the OUT consults the TSS I/O bitmap: guest bytes the shortcut does
    /// not carry, so such an exit takes the ordinary path (ring3 recorded otherwise differed).
    func testAnAccessThroughTheIOPermissionBitmapDoesNotRepeat() throws {
        let (view, _) = try machine()
        var user = committedOut()
        user.cpl = 3  // KVM's CPL is SS.DPL outside real and virtual-8086 mode
        user.ss.attributes |= 3 << 5
        let r = remembered(user)
        defer { r.release() }
        XCTAssertFalse(matches(r, user, isIn: false, port: 0x3F8, size: 1, view: view))
        user.rflags |= 3 << 12  // IOPL 3: no bitmap
        XCTAssertTrue(matches(r, user, isIn: false, port: 0x3F8, size: 1, view: view))
    }

    /// The check's mode and CPL come from KVM's registers, the record's from the state built from
    /// them: they must agree in every mode, or a loop would repeat under a wrong key.
    func testModeAndCPLFromKVMsRegistersAgreeWithTheState() {
        forEachModeAndStackDPL { mode, dpl, k in
            let state = k.state
            let (viewMode, viewCPL) = k.withView { ($0.mode, $0.cpl) }
            XCTAssertEqual(viewMode, state.mode, "\(mode), SS.DPL \(dpl)")
            XCTAssertEqual(viewMode, mode, "\(mode), SS.DPL \(dpl)")
            XCTAssertEqual(viewCPL, state.cpl, "\(mode), SS.DPL \(dpl)")
        }
    }
}

/// Calls `body` with KVM's registers of a flat state in every mode, with SS.DPL 0 and 3 (the
/// DPL that gives CPL outside real and virtual-8086 mode).
func forEachModeAndStackDPL(_ body: (CPUMode, UInt16, inout KVMRegisters) -> Void) {
    let modes: [CPUMode] = [.real, .virtual8086, .protected16, .protected32, .compat16, .compat32, .long64]
    for mode in modes {
        for dpl: UInt16 in [0, 3] {
            var s = CPUState.flat(mode)
            s.ss.attributes = s.ss.attributes & ~(3 << 5) | dpl << 5
            var k = KVMRegisters(s)
            body(mode, dpl, &k)
        }
    }
}

/// kvm_regs and kvm_sregs as sync regs leave them in kvm_run, for tests.
struct KVMRegisters {
    var regs: kvm_regs
    var sregs: kvm_sregs
    init(_ s: CPUState) { regs = s.kvmRegs; sregs = s.kvmSregs() }
    var state: CPUState { CPUState(regs: regs, sregs: sregs) }
    func withView<T>(_ body: (SyncedRegistersView) -> T) -> T {
        withUnsafePointer(to: regs) { r in withUnsafePointer(to: sregs) { body(SyncedRegistersView(regs: r, sregs: $0)) } }
    }
}

/// The pipeline converts only kvm_regs when an exit's kvm_sregs equal the previous one's
/// (RecordPipeline.Producer.takePortIO): that must give the state a full conversion gives.
final class RegistersOnlyLoadTests: XCTestCase {
    func testRegistersOnlyLoadEqualsTheFullLoadForEqualSregs() {
        var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng }
        forEachModeAndStackDPL { mode, dpl, k in
            var incremental = CPUState()
            k.withView { $0.load(into: &incremental) }
            for i in 0..<200 {
                // New general registers and RFLAGS (VM flipping too: it moves CPL), same sregs.
                k.regs.rax = next(); k.regs.rcx = next(); k.regs.rdx = next(); k.regs.rbx = next()
                k.regs.rsp = next(); k.regs.rbp = next(); k.regs.rsi = next(); k.regs.rdi = next()
                k.regs.r8 = next(); k.regs.r9 = next(); k.regs.r10 = next(); k.regs.r11 = next()
                k.regs.r12 = next(); k.regs.r13 = next(); k.regs.r14 = next(); k.regs.r15 = next()
                k.regs.rip = next(); k.regs.rflags = next() & 0x3F_7FD7 | 2
                withUnsafePointer(to: k.regs) { incremental.update(regsOnly: $0) }
                var full = CPUState()
                k.withView { $0.load(into: &full) }
                XCTAssertEqual(incremental, full, "\(mode), SS.DPL \(dpl), step \(i)")
                XCTAssertEqual(incremental.cpl, k.state.cpl, "\(mode), SS.DPL \(dpl), step \(i)")
            }
        }
    }
}
