import Foundation
import KVM
import VMM
import X86
import XCTest

/// Single-step with several vCPUs runs them in lockstep (GuestToken): what an observer reads from
/// guest memory at a vCPU's debug exit is what that vCPU's next instruction sees, however busy
/// the other vCPUs are.
final class LockstepTests: XCTestCase {
    /// Both vCPUs (irqchip none: both start here) run 1000 times:
    ///   again: mov eax,[rdi]; lock inc dword [rdi]; dec ecx; jnz again
    /// then cli; hlt. The load is at 0x10000a.
    static let guest: [UInt8] = [
        0xBF, 0x00, 0x20, 0x00, 0x00,  // mov edi,0x2000
        0xB9, 0xE8, 0x03, 0x00, 0x00,  // mov ecx,1000
        0x8B, 0x07,                    // again: mov eax,[rdi]
        0xF0, 0xFF, 0x07,              // lock inc dword [rdi]
        0xFF, 0xC9,                    // dec ecx
        0x75, 0xF7,                    // jnz again
        0xFA, 0xF4,                    // cli; hlt
    ]
    static let loadRIP: UInt64 = 0x10000A

    /// At each debug exit on the load, reads the counter from guest memory; at that vCPU's next
    /// debug exit (the load has run), compares with what the load put in EAX.
    final class LoadWatcher: ExitObserver, @unchecked Sendable {
        let lock = NSLock()
        var expected: [Int: UInt32] = [:]
        var checked = 0
        var stale: [String] = []
        func exitHandled(_ exit: borrowing ObservedExit) {
            guard case .debug = exit.exit else { return }
            lock.lock()
            defer { lock.unlock() }
            if let v = expected.removeValue(forKey: exit.vcpu) {
                checked += 1
                let loaded = UInt32(truncatingIfNeeded: exit.state.rax)
                if loaded != v { stale.append("vCPU \(exit.vcpu): read \(v) at the debug exit, the load got \(loaded)") }
            }
            if exit.state.rip == LockstepTests.loadRIP, let v = exit.memory.readPhysical32(0x2000) {
                expected[exit.vcpu] = v
            }
        }
    }

    func testSingleStepObserverReadsWhatTheNextInstructionSeesWithTwoVCPUs() throws {
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
        let config = MachineConfig(mode: .long64, vcpus: 2, memoryMiB: 4)
        let m = try Machine(config: config, image: .flat(Self.guest, at: 0x100000), serial: SerialOutput(fd: -1))
        let watcher = LoadWatcher()
        let s = m.run(limits: RunLimits(timeout: 60), observer: watcher, options: ObserverOptions(singleStep: true))
        // Both vCPUs finished (neither starved): each added 1000.
        XCTAssertEqual(s.stop, .halted, s.text)
        XCTAssertEqual(m.memory.load(0x2000, as: UInt32.self), 2000, s.text)
        XCTAssertEqual(watcher.checked, 2000)
        XCTAssertEqual(watcher.stale, [], "\(watcher.stale.count) loads saw another value than the one read at their debug exit")
    }

    final class Quiet: ExitObserver, @unchecked Sendable {
        func exitHandled(_ exit: borrowing ObservedExit) {}
    }

    /// A completion (the VMM runs an instruction KVM's emulator failed on and holds the other
    /// vCPUs out of the guest) happens inside the completing vCPU's turn: with lockstep on, two
    /// vCPUs adding 1 to a shared counter 200 times each by LOCK CMPXCHG16B retry loops end with
    /// 400 and both halted (no deadlock between the token and the completion's pause).
    func testCompletionsUnderLockstepNeitherDeadlockNorLoseUpdates() throws {
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
        guard KVMSystem.backendModule() == "kvm_pvm" else {
            throw XCTSkip("KVM's emulator fails on CMPXCHG16B only on kvm_pvm (CPL0 emulated); this host runs \(KVMSystem.backendModule())")
        }
        let code = CompletionTests.lockedCounterLoop
        for fidelity in [Fidelity.exit, .full] {
            let config = MachineConfig(mode: .long64, vcpus: 2, memoryMiB: 4)
            let m = try Machine(config: config, image: .flat(code, at: 0x100000), serial: SerialOutput(fd: -1))
            let s = m.run(limits: RunLimits(timeout: 60), observer: Quiet(),
                          options: ObserverOptions(fidelity: fidelity, singleStep: true))
            XCTAssertEqual(s.stop, .halted, "\(fidelity): " + s.text)
            XCTAssertEqual(m.memory.load(0x2000, as: UInt64.self), 400, "\(fidelity): " + s.text)
            XCTAssertGreaterThanOrEqual(s.completions["cmpxchg16b"] ?? 0, 400)
        }
    }
}
