@testable import Record
import KVM
import X86
import XCTest

/// A vCPU's fast-path port exits reach the pipeline through its ring and the ring's side buffer
/// (RecordPipeline.Producer: kvm_regs with non-temporal stores, kvm_sregs only when they changed,
/// published 16 at a time): each must arrive once, in order, with its own registers, and only
/// once published.
final class PortIORingTests: XCTestCase {
    func testPortExitsArriveInOrderWithTheirOwnRegistersOncePublished() {
        let producer = RecordPipeline.Producer(capacity: 32, doorbell: RecordPipeline.Doorbell())
        var k = KVMRegisters(CPUState.flat(.protected32))
        var pushed: [(tsc: UInt64, state: CPUState)] = []
        // The consumer's state, carried from item to item as the pipeline carries lastPortIOState.
        var consumerState = CPUState()
        var received = 0
        func drain() -> Int {
            var n = 0
            while producer.ring.consume({ item, slot in
                guard case .portIO = item else { return }
                let e = producer.takePortIO(slot: slot, into: &consumerState)
                guard received < pushed.count else { return XCTFail("exit \(received) was never pushed") }
                XCTAssertEqual(e.tscExit, pushed[received].tsc)
                XCTAssertEqual(e.tscEntry, pushed[received].tsc + 1)
                XCTAssertEqual(e.data, pushed[received].tsc & 0xFF)
                XCTAssertEqual(consumerState, pushed[received].state, "exit \(received)")
                received += 1
                n += 1
            }) {}
            return n
        }
        // Six rounds of 20 through a ring of 32: the slots wrap, and a slot's old kvm_sregs must not
        // come back for an exit whose sregs were unchanged.
        for _ in 0..<6 {
            for i in 0..<20 {
                let n = UInt64(pushed.count)
                k.regs.rax = n &* 0x9E37_79B9
                k.regs.rcx = 1000 - n
                k.regs.rip = 0x1001 + n % 3
                if i % 7 == 3 {
                    k.sregs.ds.selector &+= 8
                    k.sregs.cr3 = n << 12
                }
                var full = CPUState()
                k.withView { $0.load(into: &full) }
                pushed.append((n, full))
                k.withView {
                    producer.pushPortIO(registers: $0, tscExit: n, tscEntry: n + 1, data: n & 0xFF, kvmExitReason: 2,
                                        port: 0x3FF, size: 1, isIn: false, slot: 0)
                }
            }
            XCTAssertEqual(drain(), RecordPipeline.Producer.publishEvery, "only whole groups are published")
            producer.push(.flush)  // any other item publishes the port exits before it
            XCTAssertEqual(drain(), 20 - RecordPipeline.Producer.publishEvery)
        }
        XCTAssertEqual(received, 120)
    }
}
