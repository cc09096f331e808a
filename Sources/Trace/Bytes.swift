/// Little-endian fixed-width integers, LEB128 varints and zigzag, as FORMAT.md defines them.

@inline(__always) func zigzag(_ v: Int64) -> UInt64 { UInt64(bitPattern: (v << 1) ^ (v >> 63)) }
@inline(__always) func unzigzag(_ v: UInt64) -> Int64 { Int64(bitPattern: v >> 1) ^ -Int64(bitPattern: v & 1) }
/// Zigzag of the wrapping difference `new − old`, the encoding of every delta in the format.
@inline(__always) func delta(_ new: UInt64, _ old: UInt64) -> UInt64 { zigzag(Int64(bitPattern: new &- old)) }
@inline(__always) func undelta(_ d: UInt64, _ old: UInt64) -> UInt64 { old &+ UInt64(bitPattern: unzigzag(d)) }

/// An append-only byte buffer for encoding: raw memory behind a class, so the encoder's hot
/// path does plain stores (no copy-on-write or uniqueness checks). A reference type: share it
/// knowingly.
final class ByteSink {
    private var p: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    private(set) var count = 0

    init(capacity: Int = 0) {
        self.capacity = max(capacity, 64)
        p = .allocate(capacity: self.capacity)
    }

    deinit { p.deallocate() }

    /// A copy of the bytes written so far.
    var bytes: [UInt8] { [UInt8](UnsafeBufferPointer(start: p, count: count)) }

    var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: p, count: count) }

    /// Forgets the contents, keeps the memory.
    func reset() { count = 0 }

    @inline(__always) private func reserve(_ n: Int) {
        if count + n > capacity { grow(count + n) }
    }

    @inline(never) private func grow(_ need: Int) {
        var c = capacity * 2
        while c < need { c *= 2 }
        let q = UnsafeMutablePointer<UInt8>.allocate(capacity: c)
        q.update(from: p, count: count)
        p.deallocate()
        p = q
        capacity = c
    }

    @inline(__always) func u8(_ v: UInt8) {
        reserve(1)
        p[count] = v
        count += 1
    }
    @inline(__always) func u16(_ v: UInt16) { for i in 0..<2 { u8(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    @inline(__always) func u32(_ v: UInt32) { for i in 0..<4 { u8(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    @inline(__always) func u64(_ v: UInt64) { for i in 0..<8 { u8(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }

    @inline(__always) func varint(_ v: UInt64) {
        reserve(10)
        var v = v
        while v >= 0x80 {
            p[count] = UInt8(truncatingIfNeeded: v) | 0x80
            count += 1
            v >>= 7
        }
        p[count] = UInt8(v)
        count += 1
    }

    @inline(__always) func varint<T: BinaryInteger>(_ v: T) { varint(UInt64(v)) }

    func append(_ b: UnsafeRawBufferPointer) {
        guard let base = b.baseAddress, b.count > 0 else { return }
        reserve(b.count)
        (p + count).update(from: base.assumingMemoryBound(to: UInt8.self), count: b.count)
        count += b.count
    }

    func append(_ b: [UInt8]) { b.withUnsafeBytes { append($0) } }

    func append(_ b: ArraySlice<UInt8>) { b.withUnsafeBytes { append($0) } }

    func append(_ other: ByteSink) { append(other.buffer) }

    func string(_ s: String) {
        var s = s
        s.withUTF8 { u in
            varint(UInt64(u.count))
            append(UnsafeRawBufferPointer(u))
        }
    }
}

/// A bounds-checked reader over bytes: every read past the end or of an impossible value
/// throws `TraceError` with the file offset of the structure being read.
struct ByteCursor {
    let base: UnsafeRawPointer
    let end: Int
    var pos: Int
    /// Added to error messages: where these bytes live in the file (e.g. a frame's offset).
    let fileOffset: UInt64
    /// What is being read, for messages ("frame", "index"): a StaticString, so copying the
    /// cursor costs no reference counting.
    let context: StaticString
    /// Whether positions map 1:1 to file offsets (uncompressed sections) or not (frames).
    let positionsAreFileOffsets: Bool

    init(_ p: UnsafeRawBufferPointer, fileOffset: UInt64, context: StaticString, positionsAreFileOffsets: Bool) {
        base = p.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!
        end = p.count
        pos = 0
        self.fileOffset = fileOffset
        self.context = context
        self.positionsAreFileOffsets = positionsAreFileOffsets
    }

    var remaining: Int { end - pos }
    var atEnd: Bool { pos >= end }

    var errorOffset: UInt64 { positionsAreFileOffsets ? fileOffset + UInt64(pos) : fileOffset }

    func corrupt(_ what: String) -> TraceError {
        let where_ = positionsAreFileOffsets ? "" : " at byte offset \(fileOffset) (byte \(pos) of its decompressed payload)"
        return .corrupted(offset: errorOffset, what: "\(context)\(where_): \(what)")
    }

    @inline(__always) mutating func u8() throws -> UInt8 {
        guard pos < end else { throw corrupt("ends inside a field") }
        let v = base.load(fromByteOffset: pos, as: UInt8.self)
        pos += 1
        return v
    }

    @inline(__always) mutating func varint() throws -> UInt64 {
        // Most varints of a record are one byte (field masks, small fields).
        if pos < end {
            let b = base.load(fromByteOffset: pos, as: UInt8.self)
            if b < 0x80 {
                pos += 1
                return UInt64(b)
            }
            // Two to eight bytes with eight readable: decoded from one word, no loop per byte.
            if end - pos >= 8 {
                let w = UInt64(littleEndian: base.loadUnaligned(fromByteOffset: pos, as: UInt64.self))
                if w & 0x8000 == 0 {
                    // Two bytes (a delta, a port, a short RIP): the second's 7 bits above the first's.
                    pos += 2
                    return (w & 0x7F) | ((w >> 1) & 0x3F80)
                }
                if w & 0x80_0000 == 0 {
                    // Three bytes (record field masks, TSC deltas).
                    pos += 3
                    return (w & 0x7F) | ((w >> 1) & 0x3F80) | ((w >> 2) & 0x1F_C000)
                }
                let stops = ~w & 0x8080_8080_8080_8080
                if stops != 0 {
                    let bits = stops.trailingZeroBitCount + 1  // through the last byte's high bit
                    pos += bits >> 3
                    return Self.packVarint(w & (bits == 64 ? ~0 : (1 << UInt64(bits)) &- 1))
                }
            }
        }
        return try varintSlow()
    }

    /// The seven-bit groups of a varint's bytes (at most eight, little-endian in `x`, high bits
    /// included) packed together: pairs, then quartets, then the two halves.
    @inline(__always) static func packVarint(_ x: UInt64) -> UInt64 {
        var x = x & 0x7F7F_7F7F_7F7F_7F7F
        x = (x & 0x007F_007F_007F_007F) | ((x & 0x7F00_7F00_7F00_7F00) >> 1)
        x = (x & 0x0000_3FFF_0000_3FFF) | ((x & 0x3FFF_0000_3FFF_0000) >> 2)
        return (x & 0x0000_0000_0FFF_FFFF) | ((x & 0x0FFF_FFFF_0000_0000) >> 4)
    }

    /// Byte by byte: near the end of the bytes, nine- and ten-byte varints, and every error.
    @inline(never) mutating func varintSlow() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard pos < end else { throw corrupt("ends inside a varint") }
            let b = base.load(fromByteOffset: pos, as: UInt8.self)
            pos += 1
            if shift == 63 && b > 1 { throw corrupt("varint overflows 64 bits") }
            result |= UInt64(b & 0x7F) << shift
            if b < 0x80 { return result }
            shift += 7
        }
    }

    /// A varint that must fit in `limit` (a count or a length).
    @inline(__always) mutating func count(max limit: Int, _ what: String) throws -> Int {
        let v = try varint()
        guard v <= UInt64(limit) else { throw corrupt("\(what) \(v) exceeds \(limit)") }
        return Int(v)
    }

    mutating func bytes(_ n: Int) throws -> [UInt8] {
        guard n >= 0, n <= remaining else { throw corrupt("length \(n) runs past the end (\(remaining) left)") }
        let r = [UInt8](UnsafeRawBufferPointer(start: base + pos, count: n))
        pos += n
        return r
    }

    mutating func skip(_ n: Int) throws {
        guard n >= 0, n <= remaining else { throw corrupt("length \(n) runs past the end (\(remaining) left)") }
        pos += n
    }

    mutating func string(max limit: Int = 1 << 20) throws -> String {
        let n = try count(max: min(limit, remaining), "string length")
        let b = try bytes(n)
        return String(decoding: b, as: UTF8.self)
    }
}

/// Little-endian loads from a byte array at a known-valid position (fixed headers).
extension Array where Element == UInt8 {
    func le16(_ at: Int) -> UInt16 { UInt16(self[at]) | UInt16(self[at + 1]) << 8 }
    func le32(_ at: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(self[at + $1]) << (8 * UInt32($1)) } }
    func le64(_ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(self[at + $1]) << (8 * UInt64($1)) } }
}
