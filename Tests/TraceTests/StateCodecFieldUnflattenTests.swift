@testable import Trace
import X86
import XCTest

/// The reader keeps its reference state unflattened and updates only the fields a delta names
/// (StateCodec.unflatten(_:fields:into:)): for every field that must equal the whole unflatten.
final class StateCodecFieldUnflattenTests: XCTestCase {
    func testEachFieldUpdatesExactlyThatField() {
        let base = StateSlots(), changed = StateSlots()
        for i in 0..<StateCodec.slotCount { base.p[i] = UInt64(i + 1) & 0x7 }
        for f in 0..<StateCodec.fieldCount {
            changed.copy(from: base)
            for i in StateCodec.fieldStart[f]..<StateCodec.fieldStart[f + 1] {
                changed.p[i] = StateCodec.slotWidth[i] == 64 ? 0xDEAD_BEEF_0000 | UInt64(i) : UInt64(i) | 0x80
            }
            var s = StateCodec.unflatten(base.p)
            StateCodec.unflatten(changed.p, fields: 1 << UInt64(f), into: &s)
            XCTAssertEqual(s, StateCodec.unflatten(changed.p), "field \(StateCodec.fieldNames[f])")
        }
    }

    func testRandomDeltasKeepTheUnflattenedStateInStep() {
        var rng = SystemRandomNumberGenerator()
        let slots = StateSlots(), before = StateSlots()
        var s = StateCodec.unflatten(slots.p)
        for _ in 0..<2000 {
            before.copy(from: slots)
            for _ in 0..<Int.random(in: 0...5, using: &rng) {
                let i = Int.random(in: 0..<StateCodec.slotCount, using: &rng)
                let w = StateCodec.slotWidth[i]
                slots.p[i] = w == 64 ? rng.next() : rng.next() & ((1 << UInt64(w)) - 1)
            }
            StateCodec.unflatten(slots.p, fields: StateCodec.changedFields(slots.p, before.p), into: &s)
            XCTAssertEqual(s, StateCodec.unflatten(slots.p))
        }
    }
}
