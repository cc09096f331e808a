@testable import Trace
import XCTest

/// The encoder's mask of changed fields (StateCodec.changedFields) against the definition: a field
/// is in the mask when any of its slots (`fieldStart`) differs.
final class StateCodecMaskTests: XCTestCase {
    func reference(_ new: UnsafePointer<UInt64>, _ old: UnsafePointer<UInt64>) -> UInt64 {
        var mask: UInt64 = 0
        for f in 0..<StateCodec.fieldCount {
            for i in StateCodec.fieldStart[f]..<StateCodec.fieldStart[f + 1] where new[i] != old[i] {
                mask |= 1 << UInt64(f)
            }
        }
        return mask
    }

    func testEverySingleSlotChangeMarksItsOwnField() {
        let old = StateSlots(), new = StateSlots()
        for i in 0..<StateCodec.slotCount {
            new.copy(from: old)
            new.p[i] = 1
            let field = (0..<StateCodec.fieldCount).first { StateCodec.fieldStart[$0] <= i && i < StateCodec.fieldStart[$0 + 1] }!
            XCTAssertEqual(StateCodec.changedFields(new.p, old.p), 1 << UInt64(field), "slot \(i)")
        }
        XCTAssertEqual(StateCodec.changedFields(old.p, old.p), 0)
    }

    func testRandomChangesGiveTheMaskOfTheDefinition() {
        var rng = SystemRandomNumberGenerator()
        let old = StateSlots(), new = StateSlots()
        for _ in 0..<2000 {
            for i in 0..<StateCodec.slotCount { old.p[i] = rng.next() & 0xFF }
            new.copy(from: old)
            for _ in 0..<Int.random(in: 0...6, using: &rng) {
                new.p[Int.random(in: 0..<StateCodec.slotCount, using: &rng)] = rng.next()
            }
            XCTAssertEqual(StateCodec.changedFields(new.p, old.p), reference(new.p, old.p))
        }
    }
}
