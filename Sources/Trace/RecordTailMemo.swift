#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The fields of a record item from `kind` on (its "tail": control area, instruction, device side,
/// guest-bytes list), remembered by their encoded bytes: a loop's records repeat them, so the
/// frame decoder reads them once per distinct encoding instead of varint by varint per record.
///
/// A tail's fields that its mask leaves out are the reference's (the previous record's), so an
/// entry also holds the reference's tail it was decoded against (`before`); it is used only
/// when the same bytes, the same mask and the same reference tail come again. Instruction
/// bytes and one-access lists are shared arrays in the decoder's recent-value slots: an entry
/// keeps the arrays it found there and is used only while those slots still hold them (then a
/// decode would find them there too).
struct RecordTail: Equatable {
    var kind: UInt8 = 0
    var visibility: UInt8 = 0
    var candidates: UInt8 = 0
    var kvmExitReason: UInt64 = 0
    var exitCode: UInt64 = 0
    var exitInfo1: UInt64 = 0
    var exitInfo2: UInt64 = 0
    var exitIntInfo: UInt64 = 0
    var nextRIP: UInt64 = 0
    var instructionStart: UInt64 = 0
    var code: UInt64 = 0
    /// The decoder's slots: recent instruction bytes, recent one-access list, single blob (-1:
    /// none; an entry is only made when the list they stand for otherwise is empty).
    var bytesSlot = -1
    var accessSlot = -1
    var singleBlob = -1
}

struct RecordTailMemo {
    struct Entry {
        var used = false
        var mask: UInt64 = 0
        var length = 0
        var before = RecordTail()
        var after = RecordTail()
        var kind: RecordKind = .exit
        var visibility: Visibility = .none
        var hasGroup = false
        var groupDelta: UInt64 = 0
        var fragment: UInt32 = 0
        /// The arrays in the slots `after` names when the entry was made.
        var bytes: [UInt8] = []
        var accesses: [DeviceAccess] = []
    }

    static let slotCount = 16
    /// Longer tails are decoded as they come.
    static let maxLength = 48
    /// Mask bits of the tail fields.
    static let tailBits: UInt64 = RecordField.known & ~((1 << 6) - 1)
    /// Fields whose decoding depends on more than the tail's bytes and the reference's tail (or
    /// that are rare): a record with any of them is decoded as it comes.
    static let excluded: UInt64 = RecordField.accessData | RecordField.stateAfter | RecordField.msrWrites | RecordField.note
    /// Tails with fewer fields are cheap to decode as they come.
    static let minFields = 4

    /// In plain memory: entries are read field by field in place (an array element would be
    /// copied whole, arrays retained).
    let entries: UnsafeMutablePointer<Entry>
    /// Each entry's encoded tail, `maxLength` bytes per entry.
    let bytes: UnsafeMutableRawPointer

    init() {
        entries = .allocate(capacity: Self.slotCount)
        entries.initialize(repeating: Entry(), count: Self.slotCount)
        bytes = .allocate(byteCount: Self.slotCount * Self.maxLength, alignment: 8)
    }

    func deallocate() {
        entries.deinitialize(count: Self.slotCount)
        entries.deallocate()
        bytes.deallocate()
    }

    /// Whether a tail with this mask may be remembered (a test of the mask alone).
    @inline(__always) static func worthTrying(_ mask: UInt64) -> Bool {
        mask & (excluded | ~RecordField.known) == 0 && (mask & tailBits).nonzeroBitCount >= minFields
    }

    /// The entry slot for a tail with this mask (one `worthTrying` accepted) and these bytes, or -1
    /// when such a tail is not remembered.
    @inline(__always) static func slot(mask: UInt64, _ p: UnsafeRawPointer, length n: Int) -> Int {
        guard n > 0, n <= maxLength else { return -1 }
        let first = UInt64(p.load(as: UInt8.self)), last = UInt64(p.load(fromByteOffset: n - 1, as: UInt8.self))
        let h = (mask >> 6) &* 0x9E37_79B9 ^ UInt64(n) &* 31 ^ first &* 7 ^ last
        return Int(truncatingIfNeeded: (h ^ h >> 17) & UInt64(slotCount - 1))
    }

    /// Whether entry `i` holds this tail decoded against `before`.
    @inline(__always) func matches(_ i: Int, mask: UInt64, _ p: UnsafeRawPointer, length n: Int, before b: RecordTail) -> Bool {
        let e = entries + i
        guard e.pointee.used, e.pointee.mask == mask, e.pointee.length == n, e.pointee.before == b else { return false }
        return memcmp(bytes + i * Self.maxLength, p, n) == 0
    }

    func store(_ i: Int, _ e: Entry, _ p: UnsafeRawPointer) {
        entries[i] = e
        (bytes + i * Self.maxLength).copyMemory(from: p, byteCount: e.length)
    }
}
