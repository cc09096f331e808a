import KVM
import XCTest
@testable import VMM

/// The machine-check banks a guest sees, as under QEMU (kvm-unit-tests' msr walks them).
final class MachineCheckTests: XCTestCase {
    func testGuestSeesTenMachineCheckBanks() throws {
        guard KVMSystem.isAvailable else { throw XCTSkip("/dev/kvm is not available on this host") }
        // mov ecx, 0x179 (IA32_MCG_CAP); rdmsr; mov dx, 0x501; out dx, al  -> status = bank count
        let code: [UInt8] = [0xB9, 0x79, 0x01, 0x00, 0x00, 0x0F, 0x32, 0x66, 0xBA, 0x01, 0x05, 0xEE]
        let m = try Machine(config: MachineConfig(mode: .protected32, memoryMiB: 4), image: .flat(code, at: 0x100000),
                            serial: SerialOutput(fd: -1))
        let s = m.run(limits: RunLimits(timeout: 20))
        XCTAssertEqual(s.stop, .exitPort(value: 10), "\(s.stop)")
    }
}
