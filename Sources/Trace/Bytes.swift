/// Little-endian fixed-width integers, LEB128 varints and zigzag, as FORMAT.md defines them.

@inline(__always) func zigzag(_ v: Int64) -> UInt64 { UInt64(bitPattern: (v << 1) ^ (v >> 63)) }
@inline(__always) func unzigzag(_ v: UInt64) -> Int64 { Int64(bitPattern: v >> 1) ^ -Int64(bitPattern: v & 1) }
/// Zigzag of the wrapping difference `new − old`, the encoding of every delta in the format.
@inline(__always) func delta(_ new: UInt64, _ old: UInt64) -> UInt64 { zigzag(Int64(bitPattern: new &- old)) }
@inline(__always) func undelta(_ d: UInt64, _ old: UInt64) -> UInt64 { old &+ UInt64(bitPattern: unzigzag(d)) }

/// An append-only byte buffer for encoding.
struct ByteSink {
    var bytes: [UInt8] = []

    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    var count: Int { bytes.count }

    @inline(__always) mutating func u8(_ v: UInt8) { bytes.append(v) }
    @inline(__always) mutating func u16(_ v: UInt16) { for i in 0..<2 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    @inline(__always) mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
    @inline(__always) mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }

    @inline(__always) mutating func varint(_ v: UInt64) {
        var v = v
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    @inline(__always) mutating func varint<T: BinaryInteger>(_ v: T) { varint(UInt64(v)) }

    mutating func append<C: Collection>(_ b: C) where C.Element == UInt8 { bytes.append(contentsOf: b) }

    mutating func string(_ s: String) {
        let u = Array(s.utf8)
        varint(UInt64(u.count))
        bytes.append(contentsOf: u)
    }

    /// Patches a little-endian UInt32 at `at` (for lengths known only afterwards).
    mutating func patchU32(_ v: UInt32, at: Int) {
        for i in 0..<4 { bytes[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
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
