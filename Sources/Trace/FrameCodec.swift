import X86

/// Bits of a record's field mask (FORMAT.md, "Record item"). A clear bit means "as predicted":
/// most fields are predicted to equal the previous record of the frame (the reference);
/// seq and vcpuSeq are predicted to be the reference's plus one; group to be the record's own
/// seq; fragment 0, last fragment, no state-after, no MSR writes and no refused access.
enum RecordField {
    static let tscExit: UInt64 = 1 << 0
    static let handling: UInt64 = 1 << 1
    static let state: UInt64 = 1 << 2
    static let accessData: UInt64 = 1 << 3
    static let seq: UInt64 = 1 << 4
    static let vcpuSeq: UInt64 = 1 << 5
    static let kind: UInt64 = 1 << 6
    static let kvmExitReason: UInt64 = 1 << 7
    static let exitCode: UInt64 = 1 << 8
    static let exitInfo1: UInt64 = 1 << 9
    static let exitInfo2: UInt64 = 1 << 10
    static let exitIntInfo: UInt64 = 1 << 11
    static let nextRIP: UInt64 = 1 << 12
    static let instructionStart: UInt64 = 1 << 13
    static let instructionBytes: UInt64 = 1 << 14
    static let candidates: UInt64 = 1 << 15
    static let visibility: UInt64 = 1 << 16
    static let group: UInt64 = 1 << 17
    static let fragment: UInt64 = 1 << 18
    static let notLast: UInt64 = 1 << 19
    static let stateAfter: UInt64 = 1 << 20
    static let accesses: UInt64 = 1 << 21
    static let memory: UInt64 = 1 << 22
    static let msrWrites: UInt64 = 1 << 23
    static let code: UInt64 = 1 << 24
    static let note: UInt64 = 1 << 25
    /// Format 1.1: the MSR access was refused, the guest got #GP(0) (no bytes; clear = accepted).
    static let accessRefused: UInt64 = 1 << 26
    /// Bits this version knows; a reader skips the rest of an item whose mask has higher bits.
    static let known: UInt64 = (1 << 27) - 1
}

/// The reference a record is encoded against: the previous record of the frame, or at the
/// start of a frame the "null record" (FORMAT.md).
struct RecordReference {
    var seq: UInt64 = 0
    var vcpuSeq: UInt64 = 0
    var tscExit: UInt64 = 0
    var handling: UInt64 = 0
    var kind: UInt8 = RecordKind.exit.rawValue
    var kvmExitReason: UInt64 = 0
    var exitCode: UInt64 = 0
    var exitInfo1: UInt64 = 0
    var exitInfo2: UInt64 = 0
    var exitIntInfo: UInt64 = 0
    var nextRIP: UInt64 = 0
    var instructionStart: UInt64 = 0
    var instructionBytes: [UInt8] = []
    var candidates: UInt8 = 0
    var visibility: UInt8 = 0
    var accesses: [DeviceAccess] = []
    var memory: [Int] = []
    var code: UInt64 = 0
    var note: String = ""

    init(firstSeq: UInt64, firstVcpuSeq: UInt64) {
        seq = firstSeq &- 1
        vcpuSeq = firstVcpuSeq &- 1
    }
}

private struct BlobKey: Hashable {
    var role: UInt8
    var gpa: UInt64
    var bytes: [UInt8]
}

/// Encodes one frame's items (uncompressed) for one vCPU. Used by one thread at a time.
final class FrameEncoder {
    let vcpu: UInt16
    let sink: ByteSink
    private let payload = ByteSink(capacity: 256)
    private(set) var recordCount: UInt32 = 0
    private(set) var firstSeq: UInt64 = 0
    private(set) var lastSeq: UInt64 = 0
    private(set) var firstVcpuSeq: UInt64 = 0
    private var ref = RecordReference(firstSeq: 0, firstVcpuSeq: 0)
    private let refState = StateSlots()
    private let curState = StateSlots()
    private let afterState = StateSlots()
    private let zeroState = StateSlots()
    private var blobs: [BlobKey: Int] = [:]
    private var blobIndices: [Int] = []
    private var lastMemory: [GuestBytes] = []

    init(vcpu: UInt16, capacity: Int) {
        self.vcpu = vcpu
        sink = ByteSink(capacity: capacity)
    }

    var isEmpty: Bool { recordCount == 0 }
    var byteCount: Int { sink.count }

    /// Starts a new, empty frame.
    func reset() {
        sink.reset()
        recordCount = 0
        firstSeq = 0
        lastSeq = 0
        firstVcpuSeq = 0
        hasStats = false
        blobs.removeAll(keepingCapacity: true)
        blobIndices.removeAll(keepingCapacity: true)
        lastMemory = []
    }

    /// Whether the frame holds anything worth writing (records or stats).
    private(set) var hasStats = false

    private func item(_ tag: UInt8) {
        sink.u8(tag)
        sink.varint(UInt64(payload.count))
        sink.append(payload)
        payload.reset()
    }

    /// Encodes `r` with these sequence numbers (the writer's, not necessarily `r`'s own: passing
    /// them avoids copying the whole record on the hot path).
    func append(_ r: TraceRecord, seq: UInt64, vcpuSeq: UInt64, group: UInt64) {
        if recordCount == 0 {
            firstSeq = seq
            firstVcpuSeq = vcpuSeq
            ref = RecordReference(firstSeq: seq, firstVcpuSeq: vcpuSeq)
            // Keyframe: the first state in full (as a delta from the all-zero state).
            refState.set(r.state)
            StateCodec.encode(refState.p, against: zeroState.p, into: payload)
            item(TraceFormat.tagKeyframe)
        }
        // Guest bytes go in before the record that first needs them, once per frame.
        if r.memory == lastMemory && !r.memory.isEmpty {
            // Same guest bytes as the previous record (a loop): already stored, same indices.
        } else {
        lastMemory = r.memory
        blobIndices.removeAll(keepingCapacity: true)
        for m in r.memory {
            let key = BlobKey(role: m.role.rawValue, gpa: m.gpa, bytes: m.bytes)
            if let i = blobs[key] {
                blobIndices.append(i)
            } else {
                let i = blobs.count
                blobs[key] = i
                payload.u8(m.role.rawValue)
                payload.varint(m.gpa)
                payload.append(m.bytes)
                item(TraceFormat.tagGuestBytes)
                blobIndices.append(i)
            }
        }
        }

        var mask: UInt64 = 0
        let handling = r.tscEntry &- r.tscExit
        if r.tscExit != ref.tscExit { mask |= RecordField.tscExit }
        if handling != ref.handling { mask |= RecordField.handling }
        curState.set(r.state)
        if !curState.equals(refState) { mask |= RecordField.state }
        var sameShape = false
        if r.accesses != ref.accesses {
            sameShape = r.accesses.count == ref.accesses.count && zip(r.accesses, ref.accesses).allSatisfy {
                $0.space == $1.space && $0.address == $1.address && $0.size == $1.size && $0.isWrite == $1.isWrite
                    && $0.count == $1.count && $0.data.count == $1.data.count
            }
            mask |= sameShape ? RecordField.accessData : RecordField.accesses
        }
        if seq != ref.seq &+ 1 { mask |= RecordField.seq }
        if vcpuSeq != ref.vcpuSeq &+ 1 { mask |= RecordField.vcpuSeq }
        if r.kind.rawValue != ref.kind { mask |= RecordField.kind }
        if UInt64(r.kvmExitReason) != ref.kvmExitReason { mask |= RecordField.kvmExitReason }
        if r.exitCode.rawValue != ref.exitCode { mask |= RecordField.exitCode }
        if r.exitInfo1 != ref.exitInfo1 { mask |= RecordField.exitInfo1 }
        if r.exitInfo2 != ref.exitInfo2 { mask |= RecordField.exitInfo2 }
        if r.exitIntInfo != ref.exitIntInfo { mask |= RecordField.exitIntInfo }
        if r.nextRIP != ref.nextRIP { mask |= RecordField.nextRIP }
        if r.instructionStart != ref.instructionStart { mask |= RecordField.instructionStart }
        if r.instructionBytes != ref.instructionBytes { mask |= RecordField.instructionBytes }
        if r.candidates != ref.candidates { mask |= RecordField.candidates }
        if r.visibility.rawValue != ref.visibility { mask |= RecordField.visibility }
        if group != seq { mask |= RecordField.group }
        if r.fragment != 0 { mask |= RecordField.fragment }
        if !r.lastFragment { mask |= RecordField.notLast }
        if case .some = r.stateAfter { mask |= RecordField.stateAfter }  // not `!= nil`: that copied the state
        if blobIndices != ref.memory { mask |= RecordField.memory }
        if !r.msrWrites.isEmpty { mask |= RecordField.msrWrites }
        if r.accessRefused { mask |= RecordField.accessRefused }
        if r.code != ref.code { mask |= RecordField.code }
        if r.note != ref.note { mask |= RecordField.note }

        payload.varint(mask)
        if mask & RecordField.tscExit != 0 { payload.varint(delta(r.tscExit, ref.tscExit)) }
        if mask & RecordField.handling != 0 { payload.varint(zigzag(Int64(bitPattern: handling))) }
        if mask & RecordField.state != 0 {
            StateCodec.encode(curState.p, against: refState.p, into: payload)
            refState.copy(from: curState)
        }
        if mask & RecordField.accessData != 0 { for a in r.accesses { payload.append(a.data) } }
        if mask & RecordField.seq != 0 { payload.varint(delta(seq, ref.seq &+ 1)) }
        if mask & RecordField.vcpuSeq != 0 { payload.varint(delta(vcpuSeq, ref.vcpuSeq &+ 1)) }
        if mask & RecordField.kind != 0 { payload.u8(r.kind.rawValue) }
        if mask & RecordField.kvmExitReason != 0 { payload.varint(UInt64(r.kvmExitReason)) }
        if mask & RecordField.exitCode != 0 { payload.varint(r.exitCode.rawValue) }
        if mask & RecordField.exitInfo1 != 0 { payload.varint(r.exitInfo1) }
        if mask & RecordField.exitInfo2 != 0 { payload.varint(r.exitInfo2) }
        if mask & RecordField.exitIntInfo != 0 { payload.varint(r.exitIntInfo) }
        if mask & RecordField.nextRIP != 0 { payload.varint(r.nextRIP) }
        if mask & RecordField.instructionStart != 0 { payload.varint(r.instructionStart) }
        if mask & RecordField.instructionBytes != 0 {
            payload.varint(UInt64(r.instructionBytes.count))
            payload.append(r.instructionBytes)
        }
        if mask & RecordField.candidates != 0 { payload.u8(r.candidates) }
        if mask & RecordField.visibility != 0 { payload.u8(r.visibility.rawValue) }
        if mask & RecordField.group != 0 { payload.varint(seq &- group) }
        if mask & RecordField.fragment != 0 { payload.varint(UInt64(r.fragment)) }
        if mask & RecordField.stateAfter != 0, let after = r.stateAfter {
            afterState.set(after)
            StateCodec.encode(afterState.p, against: curState.p, into: payload)
        }
        if mask & RecordField.accesses != 0 {
            payload.varint(UInt64(r.accesses.count))
            for a in r.accesses {
                payload.u8(a.space.rawValue)
                payload.u8(a.isWrite ? 1 : 0)
                payload.varint(a.address)
                payload.u8(a.size)
                payload.varint(UInt64(a.count))
                payload.varint(UInt64(a.data.count))
                payload.append(a.data)
            }
        }
        if mask & RecordField.memory != 0 {
            payload.varint(UInt64(blobIndices.count))
            for i in blobIndices { payload.varint(UInt64(i)) }
        }
        if mask & RecordField.msrWrites != 0 {
            payload.varint(UInt64(r.msrWrites.count))
            for w in r.msrWrites { payload.varint(UInt64(w.index)); payload.varint(w.value) }
        }
        if mask & RecordField.code != 0 { payload.varint(r.code) }
        if mask & RecordField.note != 0 { payload.string(r.note) }
        item(TraceFormat.tagRecord)

        ref.seq = seq
        ref.vcpuSeq = vcpuSeq
        ref.tscExit = r.tscExit
        ref.handling = handling
        ref.kind = r.kind.rawValue
        ref.kvmExitReason = UInt64(r.kvmExitReason)
        ref.exitCode = r.exitCode.rawValue
        ref.exitInfo1 = r.exitInfo1
        ref.exitInfo2 = r.exitInfo2
        ref.exitIntInfo = r.exitIntInfo
        ref.nextRIP = r.nextRIP
        ref.instructionStart = r.instructionStart
        if mask & RecordField.instructionBytes != 0 { ref.instructionBytes = r.instructionBytes }
        ref.candidates = r.candidates
        ref.visibility = r.visibility.rawValue
        if mask & (RecordField.accesses | RecordField.accessData) != 0 { ref.accesses = r.accesses }
        if mask & RecordField.memory != 0 { ref.memory = blobIndices }
        ref.code = r.code
        if mask & RecordField.note != 0 { ref.note = r.note }

        lastSeq = seq
        recordCount += 1
    }

    func appendStats(_ s: VCPUFrameStats) {
        payload.varint(UInt64(s.vcpu))
        for d in [s.dr0, s.dr1, s.dr2, s.dr3, s.dr6, s.dr7] { payload.varint(d) }
        let names = s.counters.keys.sorted()
        payload.varint(UInt64(names.count))
        for n in names {
            payload.string(n)
            payload.varint(s.counters[n] ?? 0)
        }
        item(TraceFormat.tagStats)
        hasStats = true
    }
}

/// A decompressed frame, decoded record by record (bounded memory: one frame at a time).
public final class FrameDecoder {
    public let info: FrameInfo
    private let raw: UnsafeMutableRawBufferPointer
    private var cursor: ByteCursor
    private var ref: RecordReference
    private let refState = StateSlots()
    /// `refState` unflattened, kept up to date field by field as deltas change it.
    private var refCPUState = CPUState()
    private let scratch = StateSlots()
    private var haveKeyframe = false
    private var blobs: [GuestBytes] = []
    /// A one-element list per blob, made once: most records need one blob (a stepped
    /// instruction's bytes), so a record's list is shared instead of built per record.
    private var singleBlobLists: [[GuestBytes]] = []
    /// Instruction byte strings and one-access lists decoded lately, by content (a few slots,
    /// chosen by a hash): a single-step trace alternates between a few instructions and their
    /// accesses, and an array found here is shared instead of allocated and freed per record.
    private var recentBytes = [[UInt8]](repeating: [], count: 8)
    private var recentAccesses = [[DeviceAccess]](repeating: [], count: 8)
    // The reference's arrays, held as indices where possible (`ref`'s own arrays are not used
    // here): a record stores each array once, in itself, instead of in itself and in `ref`.
    /// The reference's instruction bytes: their slot in `recentBytes` (-1: none).
    private var refBytesSlot = -1
    /// The reference's accesses: their slot in `recentAccesses`, or -1 for `refAccessList`.
    private var refAccessSlot = -1
    private var refAccessList: [DeviceAccess] = []
    /// The reference's guest bytes: one blob's index, or -1 for the list `refMemoryList`.
    private var refSingleBlob = -1
    private var refMemoryList: [Int] = []
    private var decoded: UInt32 = 0
    /// Record tails decoded lately (`RecordTailMemo`).
    private var tailMemo = RecordTailMemo()
    /// Records whose tail came from the memo (for tests).
    private(set) var tailMemoHits = 0
    /// The frame's per-vCPU stats, complete once `next()` has returned nil.
    public private(set) var stats: [VCPUFrameStats] = []

    /// Takes ownership of `raw` (allocated by the reader), which holds `info.rawSize` bytes.
    init(info: FrameInfo, raw: UnsafeMutableRawBufferPointer) {
        self.info = info
        self.raw = raw
        cursor = ByteCursor(UnsafeRawBufferPointer(raw), fileOffset: info.offset,
                            context: "frame", positionsAreFileOffsets: false)
        ref = RecordReference(firstSeq: info.firstSeq, firstVcpuSeq: info.firstVcpuSeq)
    }

    deinit {
        raw.deallocate()
        tailMemo.deallocate()
    }

    /// The tags of the frame's items in order (for tests and `show --frames`-style debugging).
    func itemTags() -> [UInt8] {
        var c = ByteCursor(UnsafeRawBufferPointer(raw), fileOffset: info.offset, context: "frame", positionsAreFileOffsets: false)
        var tags: [UInt8] = []
        while !c.atEnd {
            guard let t = try? c.u8(), let n = try? c.count(max: c.remaining, "item length"), (try? c.skip(n)) != nil else { break }
            tags.append(t)
        }
        return tags
    }

    /// Decodes the whole frame.
    public func all() throws -> [TraceRecord] {
        var out: [TraceRecord] = []
        out.reserveCapacity(Int(info.recordCount))
        while let r = try next() { out.append(r) }
        return out
    }

    /// The next record of the frame, or nil at its end (after checking the record count).
    public func next() throws -> TraceRecord? {
        var r = TraceRecord(kind: .exit)
        return try next(into: &r) ? r : nil
    }

    /// Decodes the next record into `r` (every field overwritten), avoiding a copy of the
    /// record; false at the end of the frame.
    public func next(into r: inout TraceRecord) throws -> Bool {
        var c = cursor
        defer { cursor = c }
        while !c.atEnd {
            let tag = try c.u8()
            let len = try c.count(max: c.remaining, "item length")
            let itemEnd = c.pos + len
            switch tag {
            case TraceFormat.tagKeyframe:
                refState.zero()
                try StateCodec.decode(&c, old: refState.p, into: refState.p)
                StateCodec.unflatten(refState.p, into: &refCPUState)
                haveKeyframe = true
            case TraceFormat.tagGuestBytes:
                let roleRaw = try c.u8()
                guard let role = GuestBytes.Role(rawValue: roleRaw) else { throw c.corrupt("unknown guest-bytes role \(roleRaw)") }
                let gpa = try c.varint()
                guard itemEnd >= c.pos else { throw c.corrupt("guest-bytes item shorter than its fields") }
                blobs.append(GuestBytes(role: role, gpa: gpa, bytes: try c.bytes(itemEnd - c.pos)))
                singleBlobLists.append([blobs[blobs.count - 1]])
            case TraceFormat.tagRecord:
                guard haveKeyframe else { throw c.corrupt("record before the frame's keyframe") }
                guard decoded < info.recordCount else { throw c.corrupt("more records than the frame header's \(info.recordCount)") }
                try decodeRecord(&c, end: itemEnd, into: &r)
                c.pos = itemEnd
                decoded += 1
                return true
            case TraceFormat.tagStats:
                stats.append(try decodeStats(&c))
            default:
                break // an item of a newer minor version: skipped
            }
            guard c.pos <= itemEnd else { throw c.corrupt("item (tag \(tag)) longer than its length \(len)") }
            c.pos = itemEnd
        }
        guard decoded == info.recordCount else {
            throw c.corrupt("frame header announces \(info.recordCount) records, payload holds \(decoded)")
        }
        return false
    }

    /// Whether two arrays share one storage (or are both empty): assigning one to the other
    /// would then only retain and release it, once per record.
    @inline(__always) private func sameStorage<T>(_ a: [T], _ b: [T]) -> Bool {
        guard a.count == b.count else { return false }
        if a.isEmpty { return true }
        return a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in pa.baseAddress == pb.baseAddress } }
    }

    /// The next `n` bytes (an instruction's), shared with an earlier record's when equal: the slot
    /// of `recentBytes` that holds them.
    @inline(__always) private func recentBytes(_ c: inout ByteCursor, _ n: Int) throws -> Int {
        guard n >= 0, n <= c.remaining else { _ = try c.bytes(n); return -1 }  // throws its message
        let p = c.base + c.pos
        var h = n
        for k in 0..<n { h = h &* 31 &+ Int(p.load(fromByteOffset: k, as: UInt8.self)) }
        let slot = h & 7
        let same = recentBytes[slot].withUnsafeBufferPointer { b -> Bool in
            guard b.count == n else { return false }
            for k in 0..<n where b[k] != p.load(fromByteOffset: k, as: UInt8.self) { return false }
            return true
        }
        if same {
            c.pos += n
            return slot
        }
        recentBytes[slot] = try c.bytes(n)
        return slot
    }

    /// One access with `len` data bytes next: the list shared with an earlier record's when equal;
    /// the slot of `recentAccesses` that holds it.
    @inline(__always) private func recentAccess(_ c: inout ByteCursor, space: DeviceAccess.Space, isWrite: Bool, address: UInt64,
                                                size: UInt8, count: UInt32, len: Int) throws -> Int {
        guard len >= 0, len <= c.remaining else { _ = try c.bytes(len); return -1 }  // throws its message
        let p = c.base + c.pos
        let slot = Int(truncatingIfNeeded: (address ^ address >> 3 ^ UInt64(len) &* 5) & 7)
        let same = recentAccesses[slot].withUnsafeBufferPointer { list -> Bool in
            guard list.count == 1 else { return false }
            let a = list[0]
            guard a.space == space, a.isWrite == isWrite, a.address == address, a.size == size, a.count == count else { return false }
            return a.data.withUnsafeBufferPointer { b -> Bool in
                guard b.count == len else { return false }
                for k in 0..<len where b[k] != p.load(fromByteOffset: k, as: UInt8.self) { return false }
                return true
            }
        }
        if same {
            c.pos += len
            return slot
        }
        recentAccesses[slot] = [DeviceAccess(space: space, address: address, size: size, isWrite: isWrite, count: count, data: try c.bytes(len))]
        return slot
    }

    /// Whether `memory` is the listed blobs (a loop keeps the same list: usually the very same
    /// array storage, compared first).
    @inline(__always) private func holdsBlobs(_ memory: [GuestBytes], _ indices: [Int]) -> Bool {
        guard memory.count == indices.count else { return false }
        for k in 0..<indices.count {
            let i = indices[k]
            // Field by field: a copy of the element would retain and release its bytes.
            guard memory[k].gpa == blobs[i].gpa, memory[k].role == blobs[i].role,
                  sameStorage(memory[k].bytes, blobs[i].bytes) || memory[k].bytes == blobs[i].bytes else { return false }
        }
        return true
    }

    /// The reference's tail as the memo compares it.
    @inline(__always) private func referenceTail() -> RecordTail {
        RecordTail(kind: ref.kind, visibility: ref.visibility, candidates: ref.candidates, kvmExitReason: ref.kvmExitReason,
                   exitCode: ref.exitCode, exitInfo1: ref.exitInfo1, exitInfo2: ref.exitInfo2, exitIntInfo: ref.exitIntInfo,
                   nextRIP: ref.nextRIP, instructionStart: ref.instructionStart, code: ref.code,
                   bytesSlot: refBytesSlot, accessSlot: refAccessSlot, singleBlob: refSingleBlob)
    }

    /// The identity of the storage of array `i` of `list` (its one reference), read without
    /// retaining it.
    @inline(__always) private static func identity<T>(_ list: UnsafeBufferPointer<[T]>, _ i: Int) -> UInt {
        guard let b = list.baseAddress, i >= 0, i < list.count else { return 0 }
        return UnsafeRawPointer(b + i).load(as: UInt.self)
    }

    /// The identity of an array's storage, as `identity(_:_:)` reads it.
    @inline(__always) private static func identity<T>(of a: borrowing [T]) -> UInt {
        withUnsafePointer(to: a) { UnsafeRawPointer($0).load(as: UInt.self) }
    }

    /// The reference tail a missed lookup saw, for `rememberTail`.
    private var lookedUpBefore = RecordTail()

    /// Looks the tail at `p` up in the memo (out of line: most records of a trace whose tails
    /// have few fields never come here). Returns the entry slot (-1: not to be remembered) and
    /// sets `hit` when `r`'s tail fields were set from it.
    @inline(__always) private func lookUpTail(mask: UInt64, _ p: UnsafeRawPointer, length n: Int, hit: inout Bool,
                                           into r: inout TraceRecord) -> Int {
        let slot = RecordTailMemo.slot(mask: mask, p, length: n)
        guard slot >= 0, ref.note.isEmpty, refAccessSlot >= 0 || refAccessList.isEmpty,
              refSingleBlob >= 0 || refMemoryList.isEmpty else { return -1 }
        let before = referenceTail()
        if tailMemo.matches(slot, mask: mask, p, length: n, before: before) {
            hit = applyTail(slot, mask: mask, into: &r)
        }
        if !hit { lookedUpBefore = before }
        return slot
    }

    /// Sets `r`'s tail fields from memo entry `i` and the decoder's slots as its decode would;
    /// false (nothing changed) when a slot no longer holds the array the entry found there.
    private func applyTail(_ i: Int, mask: UInt64, into r: inout TraceRecord) -> Bool {
        let e = tailMemo.entries + i
        // The recent-value slots must hold what the decode would leave there.
        guard Self.recentSlot(&recentBytes, e.pointee.after.bytesSlot, holds: e.pointee.bytes,
                        carried: mask & RecordField.instructionBytes != 0),
              Self.recentSlot(&recentAccesses, e.pointee.after.accessSlot, holds: e.pointee.accesses,
                        carried: mask & RecordField.accesses != 0) else { return false }
        r.kind = e.pointee.kind
        r.kvmExitReason = UInt32(truncatingIfNeeded: e.pointee.after.kvmExitReason)
        r.exitCode = SVMExitCode(e.pointee.after.exitCode)
        r.exitInfo1 = e.pointee.after.exitInfo1
        r.exitInfo2 = e.pointee.after.exitInfo2
        r.exitIntInfo = e.pointee.after.exitIntInfo
        r.nextRIP = e.pointee.after.nextRIP
        r.instructionStart = e.pointee.after.instructionStart
        refBytesSlot = e.pointee.after.bytesSlot
        if refBytesSlot < 0 {
            if !r.instructionBytes.isEmpty { r.instructionBytes = [] }
        } else if !sameStorage(r.instructionBytes, recentBytes[refBytesSlot]) {
            r.instructionBytes = recentBytes[refBytesSlot]
        }
        r.candidates = e.pointee.after.candidates
        r.visibility = e.pointee.visibility
        r.group = e.pointee.hasGroup ? r.seq &- e.pointee.groupDelta : r.seq
        r.fragment = e.pointee.fragment
        r.lastFragment = mask & RecordField.notLast == 0
        if case .some = r.stateAfter { r.stateAfter = nil }
        refAccessSlot = e.pointee.after.accessSlot
        if refAccessSlot < 0 && !refAccessList.isEmpty { refAccessList = [] }
        if refAccessSlot >= 0 {
            if !sameStorage(r.accesses, recentAccesses[refAccessSlot]) { r.accesses = recentAccesses[refAccessSlot] }
        } else if !sameStorage(r.accesses, refAccessList) {
            r.accesses = refAccessList
        }
        refSingleBlob = e.pointee.after.singleBlob
        if refSingleBlob < 0 && !refMemoryList.isEmpty { refMemoryList = [] }
        if refSingleBlob >= 0 {
            if !sameStorage(r.memory, singleBlobLists[refSingleBlob]) { r.memory = singleBlobLists[refSingleBlob] }
        } else if !r.memory.isEmpty {
            r.memory = []
        }
        if !r.msrWrites.isEmpty { r.msrWrites.removeAll(keepingCapacity: true) }
        r.code = e.pointee.after.code
        if !(r.note.isEmpty && ref.note.isEmpty) { r.note = ref.note }
        r.accessRefused = mask & RecordField.accessRefused != 0
        return true
    }

    /// Whether recent-value slot `i` (-1: none) of `slots` holds `want` (the same storage or equal
    /// contents) as the decode would leave it; a tail that carries the value itself (`carried`) puts
    /// it back when another value took the slot since.
    @inline(__always) private static func recentSlot<T: Equatable>(_ slots: inout [[T]], _ i: Int, holds want: borrowing [T],
                                                                  carried: Bool) -> Bool {
        guard i >= 0 else { return true }
        let have = slots.withUnsafeBufferPointer { identity($0, i) }
        if have == identity(of: want) || slots[i] == want { return true }
        guard carried else { return false }
        slots[i] = copy want
        return true
    }

    /// Remembers the tail just decoded into `r` (when its lists are all in the decoder's slots).
    @inline(never) private func rememberTail(_ i: Int, mask: UInt64, _ p: UnsafeRawPointer, length n: Int,
                                             _ r: borrowing TraceRecord) {
        guard refAccessSlot >= 0 || refAccessList.isEmpty, refSingleBlob >= 0 || refMemoryList.isEmpty,
              r.note.isEmpty else { return }
        var e = RecordTailMemo.Entry()
        e.used = true
        e.mask = mask
        e.length = n
        e.before = lookedUpBefore
        e.after = RecordTail(kind: r.kind.rawValue, visibility: r.visibility.rawValue, candidates: r.candidates,
                             kvmExitReason: UInt64(r.kvmExitReason), exitCode: r.exitCode.rawValue, exitInfo1: r.exitInfo1,
                             exitInfo2: r.exitInfo2, exitIntInfo: r.exitIntInfo, nextRIP: r.nextRIP,
                             instructionStart: r.instructionStart, code: r.code,
                             bytesSlot: refBytesSlot, accessSlot: refAccessSlot, singleBlob: refSingleBlob)
        e.kind = r.kind
        e.visibility = r.visibility
        e.hasGroup = mask & RecordField.group != 0
        e.groupDelta = r.seq &- r.group
        e.fragment = r.fragment
        if refBytesSlot >= 0 { e.bytes = recentBytes[refBytesSlot] }
        if refAccessSlot >= 0 { e.accesses = recentAccesses[refAccessSlot] }
        tailMemo.store(i, e, p)
    }

    private func decodeStats(_ c: inout ByteCursor) throws -> VCPUFrameStats {
        let vcpu = try c.varint()
        guard vcpu <= UInt64(UInt16.max) else { throw c.corrupt("stats vCPU \(vcpu) out of range") }
        var s = VCPUFrameStats(vcpu: UInt16(vcpu))
        s.dr0 = try c.varint(); s.dr1 = try c.varint(); s.dr2 = try c.varint()
        s.dr3 = try c.varint(); s.dr6 = try c.varint(); s.dr7 = try c.varint()
        let n = try c.count(max: c.remaining, "stats counter count")
        for _ in 0..<n {
            let name = try c.string()
            s.counters[name] = try c.varint()
        }
        return s
    }

    private func decodeRecord(_ c: inout ByteCursor, end: Int, into r: inout TraceRecord) throws {
        let mask = try c.varint()
        r.vcpu = info.vcpu
        if mask & RecordField.tscExit != 0 { r.tscExit = undelta(try c.varint(), ref.tscExit) } else { r.tscExit = ref.tscExit }
        var handling = ref.handling
        if mask & RecordField.handling != 0 { handling = UInt64(bitPattern: unzigzag(try c.varint())) }
        r.tscEntry = r.tscExit &+ handling
        if mask & RecordField.state != 0 {
            let changed = try StateCodec.decode(&c, old: refState.p, into: refState.p)
            StateCodec.unflatten(refState.p, fields: changed, into: &refCPUState)
        }
        // One plain copy of the reference state (unflattening all 73 slots per record cost more).
        withUnsafeMutablePointer(to: &r.state) { $0.update(from: &refCPUState, count: 1) }
        if mask & RecordField.accessData != 0 {
            // The reference's accesses with new data (same shape).
            var list = refAccessSlot >= 0 ? recentAccesses[refAccessSlot] : refAccessList
            for i in list.indices { list[i].data = try c.bytes(list[i].data.count) }
            refAccessSlot = -1
            refAccessList = list
        }
        r.seq = mask & RecordField.seq != 0 ? undelta(try c.varint(), ref.seq &+ 1) : ref.seq &+ 1
        r.vcpuSeq = mask & RecordField.vcpuSeq != 0 ? undelta(try c.varint(), ref.vcpuSeq &+ 1) : ref.vcpuSeq &+ 1
        var kind = ref.kind
        var kvm = ref.kvmExitReason
        var vis = ref.visibility
        // The tail (fields from `kind` on): from the memo when this encoding was decoded before
        // against the same reference tail, else read field by field (and remembered).
        let tailStart = c.pos
        var memoSlot = -1
        var hit = false
        if RecordTailMemo.worthTrying(mask) {
            memoSlot = lookUpTail(mask: mask, c.base + tailStart, length: end - tailStart, hit: &hit, into: &r)
        }
        if hit {
            tailMemoHits &+= 1
            let t = tailMemo.entries + memoSlot
            kind = t.pointee.after.kind
            kvm = t.pointee.after.kvmExitReason
            vis = t.pointee.after.visibility
            c.pos = end
        } else {
            if mask & RecordField.kind != 0 { kind = try c.u8() }
            guard let k = RecordKind(rawValue: kind) else { throw c.corrupt("unknown record kind \(kind)") }
            r.kind = k
            if mask & RecordField.kvmExitReason != 0 { kvm = try c.varint() }
            guard kvm <= UInt64(UInt32.max) else { throw c.corrupt("KVM exit reason \(kvm) exceeds 32 bits") }
            r.kvmExitReason = UInt32(kvm)
            r.exitCode = SVMExitCode(mask & RecordField.exitCode != 0 ? try c.varint() : ref.exitCode)
            r.exitInfo1 = mask & RecordField.exitInfo1 != 0 ? try c.varint() : ref.exitInfo1
            r.exitInfo2 = mask & RecordField.exitInfo2 != 0 ? try c.varint() : ref.exitInfo2
            r.exitIntInfo = mask & RecordField.exitIntInfo != 0 ? try c.varint() : ref.exitIntInfo
            r.nextRIP = mask & RecordField.nextRIP != 0 ? try c.varint() : ref.nextRIP
            r.instructionStart = mask & RecordField.instructionStart != 0 ? try c.varint() : ref.instructionStart
            if mask & RecordField.instructionBytes != 0 {
                let n = try c.count(max: 15, "instruction length")
                refBytesSlot = try recentBytes(&c, n)
            }
            if refBytesSlot < 0 {
                if !r.instructionBytes.isEmpty { r.instructionBytes = [] }
            } else if !sameStorage(r.instructionBytes, recentBytes[refBytesSlot]) {
                r.instructionBytes = recentBytes[refBytesSlot]
            }
            r.candidates = mask & RecordField.candidates != 0 ? try c.u8() : ref.candidates
            if mask & RecordField.visibility != 0 { vis = try c.u8() }
            guard let v = Visibility(rawValue: vis) else { throw c.corrupt("unknown visibility \(vis)") }
            r.visibility = v
            r.group = mask & RecordField.group != 0 ? r.seq &- (try c.varint()) : r.seq
            r.fragment = 0
            if mask & RecordField.fragment != 0 {
                let f = try c.varint()
                guard f <= UInt64(UInt32.max) else { throw c.corrupt("fragment \(f) exceeds 32 bits") }
                r.fragment = UInt32(f)
            }
            r.lastFragment = mask & RecordField.notLast == 0
            if mask & RecordField.stateAfter != 0 {
                try StateCodec.decode(&c, old: refState.p, into: scratch.p)
                r.stateAfter = scratch.state
            } else if case .some = r.stateAfter {
                r.stateAfter = nil  // only when set: storing nil clears the whole optional state
            }
            if mask & RecordField.accesses != 0 {
                let n = try c.count(max: c.remaining, "access count")
                var list: [DeviceAccess] = []
                if n > 1 { list.reserveCapacity(n) }
                var slot = -1
                for _ in 0..<n {
                    let spaceRaw = try c.u8()
                    guard let space = DeviceAccess.Space(rawValue: spaceRaw) else { throw c.corrupt("unknown access space \(spaceRaw)") }
                    let flags = try c.u8()
                    let address = try c.varint()
                    let size = try c.u8()
                    let count = try c.varint()
                    guard count <= UInt64(UInt32.max) else { throw c.corrupt("access count \(count) exceeds 32 bits") }
                    let len = try c.count(max: c.remaining, "access data length")
                    if n == 1 {
                        slot = try recentAccess(&c, space: space, isWrite: flags & 1 != 0, address: address, size: size,
                                                count: UInt32(count), len: len)
                    } else {
                        list.append(DeviceAccess(space: space, address: address, size: size, isWrite: flags & 1 != 0,
                                                 count: UInt32(count), data: try c.bytes(len)))
                    }
                }
                refAccessSlot = slot
                if slot < 0 { refAccessList = list } else if !refAccessList.isEmpty { refAccessList = [] }
            }
            if refAccessSlot >= 0 {
                if !sameStorage(r.accesses, recentAccesses[refAccessSlot]) { r.accesses = recentAccesses[refAccessSlot] }
            } else if !sameStorage(r.accesses, refAccessList) {
                r.accesses = refAccessList
            }
            if mask & RecordField.memory != 0 {
                let n = try c.count(max: c.remaining, "guest-bytes count")
                if n == 1 {
                    // One blob, the common case: its list made once (no array per record).
                    let i = try c.varint()
                    guard i < UInt64(blobs.count) else { throw c.corrupt("guest-bytes index \(i) but only \(blobs.count) stored so far") }
                    refSingleBlob = Int(i)
                } else {
                    var list: [Int] = []
                    list.reserveCapacity(n)
                    for _ in 0..<n {
                        let i = try c.varint()
                        guard i < UInt64(blobs.count) else { throw c.corrupt("guest-bytes index \(i) but only \(blobs.count) stored so far") }
                        list.append(Int(i))
                    }
                    refSingleBlob = -1
                    refMemoryList = list
                }
            }
            if refSingleBlob >= 0 {
                if !sameStorage(r.memory, singleBlobLists[refSingleBlob]) { r.memory = singleBlobLists[refSingleBlob] }
            } else if refMemoryList.isEmpty {
                if !r.memory.isEmpty { r.memory = [] }
            } else if !holdsBlobs(r.memory, refMemoryList) {
                // Rebuilt only when it differs from what `r` already holds (a loop keeps it).
                r.memory = refMemoryList.map { blobs[$0] }
            }
            if !r.msrWrites.isEmpty { r.msrWrites.removeAll(keepingCapacity: true) }
            if mask & RecordField.msrWrites != 0 {
                let n = try c.count(max: c.remaining, "MSR write count")
                r.msrWrites.reserveCapacity(n)
                for _ in 0..<n {
                    let index = try c.varint()
                    guard index <= UInt64(UInt32.max) else { throw c.corrupt("MSR index \(index) exceeds 32 bits") }
                    r.msrWrites.append(MSRWrite(index: UInt32(index), value: try c.varint()))
                }
            }
            r.code = mask & RecordField.code != 0 ? try c.varint() : ref.code
            if mask & RecordField.note != 0 { ref.note = try c.string() }
            if !(r.note.isEmpty && ref.note.isEmpty) { r.note = ref.note }
            r.accessRefused = mask & RecordField.accessRefused != 0
        }
        guard c.pos <= end else { throw c.corrupt("record longer than its item length") }
        // Remembered only once it decoded within its item: a tail that ran past it stays an error.
        if memoSlot >= 0 && !hit { rememberTail(memoSlot, mask: mask, c.base + tailStart, length: end - tailStart, r) }
        // Higher mask bits are fields of a newer minor version: the caller skips to the item's end.

        ref.seq = r.seq
        ref.vcpuSeq = r.vcpuSeq
        ref.tscExit = r.tscExit
        ref.handling = handling
        ref.kind = kind
        ref.kvmExitReason = kvm
        ref.exitCode = r.exitCode.rawValue
        ref.exitInfo1 = r.exitInfo1
        ref.exitInfo2 = r.exitInfo2
        ref.exitIntInfo = r.exitIntInfo
        ref.nextRIP = r.nextRIP
        ref.instructionStart = r.instructionStart
        ref.candidates = r.candidates
        ref.visibility = vis
        ref.code = r.code
    }
}

extension FrameDecoder {
    /// Decodes an uncompressed frame payload with a made-up frame header: lets the fuzzer and
    /// debugging tools reach the item and record decoders past zstd and the checksums.
    public static func decodeUncompressed(_ bytes: [UInt8], vcpu: UInt16 = 0, recordCount: UInt32,
                                          firstSeq: UInt64 = 0) throws -> DecodedFrame {
        guard bytes.count <= TraceFormat.maxFrameBytes else { throw TraceError.corrupted(offset: 0, what: "frame too large") }
        let raw = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 8)
        bytes.withUnsafeBytes { raw.copyMemory(from: $0) }
        let info = FrameInfo(offset: 0, compressedSize: 0, rawSize: UInt32(bytes.count), recordCount: recordCount,
                             firstSeq: firstSeq, lastSeq: firstSeq &+ UInt64(recordCount), firstVcpuSeq: 0,
                             vcpu: vcpu, flags: 0, checksum: 0)
        let d = FrameDecoder(info: info, raw: UnsafeMutableRawBufferPointer(rebasing: raw[0..<bytes.count]))
        let records = try d.all()
        return DecodedFrame(info: info, records: records, stats: d.stats)
    }
}
