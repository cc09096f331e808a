import XCTest
import X86
@testable import Trace

/// XCR0 in the state encoding (field 46, stored XOR 7): traces from before the field read as 7,
/// a state with XCR0 = 7 encodes as it did before, other values round-trip.
final class StateCodecXCR0Tests: XCTestCase {
    func encoded(_ s: CPUState) -> [UInt8] {
        let zero = StateSlots(), st = StateSlots()
        st.set(s)
        let sink = ByteSink()
        StateCodec.encode(st.p, against: zero.p, into: sink)
        return sink.bytes
    }

    func decoded(_ bytes: [UInt8]) throws -> CPUState {
        let zero = StateSlots(), out = StateSlots()
        try bytes.withUnsafeBytes { raw in
            var c = ByteCursor(raw, fileOffset: 0, context: "test", positionsAreFileOffsets: false)
            try StateCodec.decode(&c, old: zero.p, into: out.p)
        }
        return out.state
    }

    func testDefaultXCR0SetsNoNewFieldBit() throws {
        let bytes = encoded(CPUState.flat(.long64))
        var mask: UInt64 = 0, shift: UInt64 = 0
        for b in bytes { mask |= UInt64(b & 0x7F) << shift; shift += 7; if b & 0x80 == 0 { break } }
        XCTAssertEqual(mask >> 46, 0, "a state with XCR0 = 7 encodes without field 46, as before the field existed")
        XCTAssertEqual(try decoded(bytes).xcr0, 7, "the all-zero base reads as 7")
    }

    func testOtherXCR0ValuesRoundTrip() throws {
        for v: UInt64 in [1, 3, 0xE7, 0x2FF] {
            var s = CPUState.flat(.long64)
            s.xcr0 = v
            XCTAssertEqual(try decoded(encoded(s)), s)
        }
    }
}
