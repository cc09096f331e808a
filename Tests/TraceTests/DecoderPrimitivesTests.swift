import XCTest
import X86
@testable import Trace

/// The reader's varints and state deltas, which take a word-at-a-time path when eight bytes are
/// readable and a byte-by-byte one otherwise: both must give the same values, positions and errors.
final class DecoderPrimitivesTests: XCTestCase {
    /// Reads `bytes` as varints until the end; the values, or the error's message.
    func varints(_ bytes: [UInt8]) -> ([UInt64], String?) {
        var out: [UInt64] = []
        return bytes.withUnsafeBytes { raw in
            var c = ByteCursor(raw, fileOffset: 0, context: "test", positionsAreFileOffsets: true)
            do {
                while !c.atEnd { out.append(try c.varint()) }
                return (out, nil)
            } catch {
                return (out, "\(error)")
            }
        }
    }

    func testVarintsOfEveryLengthAtEveryDistanceFromTheEnd() {
        var values: [UInt64] = [0, 1, 0x7F, 0x80, 300, UInt64.max, UInt64.max - 1, 1 << 63]
        for bits in stride(from: 7, through: 63, by: 7) {
            values += [(1 << UInt64(bits)) - 1, 1 << UInt64(bits), (1 << UInt64(bits)) + 1]
        }
        values += [0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210, 0x00FF_00FF_00FF_00FF]
        for v in values {
            let s = ByteSink()
            s.varint(v)
            let one = s.bytes
            // Followed by 0 to 10 one-byte varints: the value sits at every distance from the end.
            for tail in 0...10 {
                let bytes = one + [UInt8](repeating: 0x05, count: tail)
                let (read, error) = varints(bytes)
                XCTAssertNil(error, "0x\(String(v, radix: 16)) with \(tail) bytes after it")
                XCTAssertEqual(read, [v] + [UInt64](repeating: 5, count: tail), "0x\(String(v, radix: 16)) with \(tail) bytes after it")
            }
        }
        // Several values back to back, read in order (each must end exactly where the next starts).
        let s = ByteSink()
        for v in values { s.varint(v) }
        XCTAssertEqual(varints(s.bytes).0, values)
    }

    func testNonCanonicalVarintsReadAsTheirValue() {
        // Zero-padded encodings are valid LEB128: the same value whichever path reads them.
        XCTAssertEqual(varints([0x80, 0x00] + [UInt8](repeating: 0, count: 8)).0.first, 0)
        XCTAssertEqual(varints([0xFF, 0x80, 0x80, 0x00] + [UInt8](repeating: 0, count: 8)).0.first, 0x7F)
        XCTAssertEqual(varints([0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 1, 1]).0, [1, 1, 1])
    }

    func testBadVarintsGiveTheirMessage() {
        // Cut short, with and without eight bytes left to read.
        for n in 1...12 {
            let (read, error) = varints([UInt8](repeating: 0x80, count: n))
            XCTAssertEqual(read, [])
            let expected = n >= 10 ? "varint overflows 64 bits" : "ends inside a varint"
            XCTAssertTrue(error?.contains(expected) ?? false, "\(n) continuation bytes: \(error ?? "no error")")
        }
        // A tenth byte above 1 overflows; exactly 1 is UInt64's top bit.
        let over = [UInt8](repeating: 0xFF, count: 9) + [0x02] + [UInt8](repeating: 0, count: 8)
        XCTAssertTrue(varints(over).1?.contains("varint overflows 64 bits") ?? false)
        let top = [UInt8](repeating: 0x80, count: 9) + [0x01]
        XCTAssertEqual(varints(top).0, [1 << 63])
    }

    /// A state delta setting `field`'s slots to `values` (as deltas from zero).
    func delta(field: Int, _ values: [UInt64]) -> [UInt8] {
        let s = ByteSink()
        s.varint(1 << UInt64(field))
        for v in values { s.varint(zigzag(Int64(bitPattern: v))) }
        return s.bytes + [UInt8](repeating: 0, count: 8)  // room for the word-at-a-time path
    }

    func decodeState(_ bytes: [UInt8]) -> (CPUState?, String?) {
        let zero = StateSlots(), out = StateSlots()
        return bytes.withUnsafeBytes { raw in
            var c = ByteCursor(raw, fileOffset: 0, context: "test", positionsAreFileOffsets: false)
            do {
                try StateCodec.decode(&c, old: zero.p, into: out.p)
                return (out.state, nil)
            } catch {
                return (nil, "\(error)")
            }
        }
    }

    func testStateDeltaSlotsWiderThanTheirFieldAreRefused() {
        // Every narrow slot, by the layout's own tables: one past its width is refused, naming the field.
        for f in 0..<StateCodec.fieldCount {
            let slots = StateCodec.fieldStart[f]..<StateCodec.fieldStart[f + 1]
            for (k, i) in slots.enumerated() {
                var values = [UInt64](repeating: 1, count: slots.count)
                let w = StateCodec.slotWidth[i]
                if w == 64 { continue }
                values[k] = (1 << UInt64(w)) - 1
                XCTAssertNil(decodeState(delta(field: f, values)).1, "\(StateCodec.fieldNames[f]) slot \(k) at its maximum")
                values[k] = 1 << UInt64(w)
                let error = decodeState(delta(field: f, values)).1 ?? "no error"
                XCTAssertTrue(error.contains("\(StateCodec.fieldNames[f]) value 0x\(String(1 << UInt64(w), radix: 16)) does not fit \(w) bits"),
                              "\(StateCodec.fieldNames[f]) slot \(k): \(error)")
            }
        }
    }

    func testEveryStateFieldRoundTripsThroughItsSlots() {
        // Each field alone, with distinct values in each of its slots: decoded into the right place.
        for f in 0..<StateCodec.fieldCount {
            let slots = StateCodec.fieldStart[f]..<StateCodec.fieldStart[f + 1]
            var flat = [UInt64](repeating: 0, count: StateCodec.slotCount)
            for (k, i) in slots.enumerated() {
                let w = StateCodec.slotWidth[i]
                flat[i] = (0x1234_5678_9ABC_DEF0 &+ UInt64(k)) & (w == 64 ? ~0 : (1 << UInt64(w)) - 1)
            }
            let expected = flat.withUnsafeBufferPointer { StateCodec.unflatten($0.baseAddress!) }
            let (state, error) = decodeState(delta(field: f, slots.map { flat[$0] }))
            XCTAssertNil(error, StateCodec.fieldNames[f])
            XCTAssertEqual(state, expected, StateCodec.fieldNames[f])
        }
    }
}
