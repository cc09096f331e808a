import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One frame as the index (or a scan of a cut-short file) lists it.
public struct FrameIndexEntry: Equatable, Sendable {
    /// Byte offset of the frame header in the file.
    public var offset: UInt64
    public var vcpu: UInt16
    public var firstSeq: UInt64
    public var lastSeq: UInt64
    public var firstVcpuSeq: UInt64
    public var recordCount: UInt32
}

/// A frame read in full: its records in order and its per-vCPU stats.
public struct DecodedFrame: Sendable {
    public var info: FrameInfo
    public var records: [TraceRecord]
    public var stats: [VCPUFrameStats]
}

/// Where the readable part of a trace without index ends, and why.
public struct CutShort: Equatable, Sendable {
    /// Byte offset of the first byte that is not part of a complete frame.
    public var offset: UInt64
    public var reason: String
}

/// Reads a trace file. Opening reads the header and the index (or, for a file cut short
/// without one, scans frame headers and checksums); records are then read a frame at a time,
/// so memory stays bounded by a few frames however large the file.
///
/// Thread-safe after `init`: frames may be read from several threads at once (`pread`).
public final class TraceReader: @unchecked Sendable {
    public let path: String
    public let header: TraceHeader
    public let formatMajor: UInt16
    public let formatMinor: UInt16
    /// Frames in file order.
    public let frames: [FrameIndexEntry]
    /// Per-vCPU first/last seq and record counts.
    public let vcpus: [VCPUIndexEntry]
    public let recordCount: UInt64
    public let fileSize: UInt64
    /// Set when the file has no valid index: it was cut short (e.g. the recorder was killed).
    public let cutShort: CutShort?
    public var isCutShort: Bool { cutShort != nil }
    /// The guest symbols of the header, sorted for lookup.
    public let symbols: SymbolTable

    private let src: ByteSource
    /// End of the frame area (index offset, or end of the last complete frame).
    private let dataEnd: UInt64
    private let dataStart: UInt64

    /// Opens a trace file.
    public convenience init(path: String) throws {
        try self.init(source: try ByteSource(path: path), name: path)
    }

    /// Reads a trace held in memory (tests, the fuzzer, a trace received over a pipe).
    public convenience init(bytes: [UInt8], name: String = "<memory>") throws {
        try self.init(source: ByteSource(bytes: bytes), name: name)
    }

    private init(source src: ByteSource, name path: String) throws {
        self.path = path
        self.src = src
        let size = src.size
        fileSize = size
        do {
            let fixed = try src.read(0, min(Int(size), TraceFormat.fileHeaderFixedSize))
            let magicLen = min(fixed.count, TraceFormat.fileMagic.count)
            guard magicLen == TraceFormat.fileMagic.count, Array(fixed[0..<magicLen]) == TraceFormat.fileMagic else {
                if !fixed.isEmpty && fixed.count < TraceFormat.fileMagic.count && Array(fixed) == Array(TraceFormat.fileMagic.prefix(fixed.count)) {
                    throw TraceError.truncated(offset: size, what: "file ends inside the magic number")
                }
                throw TraceError.foreign(path: path, offset: 0, found: hexPreview(fixed.prefix(8)))
            }
            guard fixed.count == TraceFormat.fileHeaderFixedSize else {
                throw TraceError.truncated(offset: size, what: "file ends inside the file header (needs \(TraceFormat.fileHeaderFixedSize) bytes)")
            }
            formatMajor = fixed.le16(8)
            formatMinor = fixed.le16(10)
            guard formatMajor <= TraceFormat.major else {
                throw TraceError.newerMajorVersion(found: formatMajor, supported: TraceFormat.major)
            }
            guard formatMajor >= 1 else { throw TraceError.corrupted(offset: 8, what: "format major version 0 does not exist") }
            let hlen = Int(fixed.le32(12))
            guard hlen <= TraceFormat.maxHeaderBytes else {
                throw TraceError.corrupted(offset: 12, what: "header length \(hlen) exceeds the format's limit")
            }
            let hstart = UInt64(TraceFormat.fileHeaderFixedSize)
            guard hstart + UInt64(hlen) <= size else {
                throw TraceError.truncated(offset: size, what: "file ends inside the \(hlen)-byte header JSON starting at offset \(hstart)")
            }
            let json = try src.read(hstart, hlen)
            let crc = CRC32C.checksum(json)
            guard crc == fixed.le32(16) else {
                throw TraceError.corrupted(offset: hstart, what: "header checksum mismatch (stored 0x\(String(fixed.le32(16), radix: 16)), computed 0x\(String(crc, radix: 16)))")
            }
            header = try HeaderJSON.decode(json, major: formatMajor)
            symbols = SymbolTable(header.symbols)
            dataStart = hstart + UInt64(hlen)

            if let indexed = try TraceReader.readIndex(src: src, size: size, dataStart: dataStart) {
                frames = indexed.frames
                vcpus = indexed.vcpus
                recordCount = indexed.records
                dataEnd = indexed.indexOffset
                cutShort = nil
            } else {
                let scanned = try TraceReader.scan(src: src, size: size, dataStart: dataStart)
                frames = scanned.frames
                dataEnd = scanned.end
                cutShort = CutShort(offset: scanned.end, reason: scanned.reason)
                var per: [UInt16: VCPUIndexEntry] = [:]
                for f in scanned.frames where f.recordCount > 0 {
                    if var e = per[f.vcpu] {
                        e.firstSeq = min(e.firstSeq, f.firstSeq)
                        e.lastSeq = max(e.lastSeq, f.lastSeq)
                        e.recordCount += UInt64(f.recordCount)
                        per[f.vcpu] = e
                    } else {
                        per[f.vcpu] = VCPUIndexEntry(vcpu: f.vcpu, firstSeq: f.firstSeq, lastSeq: f.lastSeq, recordCount: UInt64(f.recordCount))
                    }
                }
                vcpus = per.values.sorted { $0.vcpu < $1.vcpu }
                recordCount = scanned.frames.reduce(0) { $0 + UInt64($1.recordCount) }
            }
        }
    }

    // MARK: file access

    private struct Indexed {
        var frames: [FrameIndexEntry]
        var vcpus: [VCPUIndexEntry]
        var records: UInt64
        var indexOffset: UInt64
    }

    /// Reads trailer and index; nil when the file has no trailer (cut short).
    private static func readIndex(src: ByteSource, size: UInt64, dataStart: UInt64) throws -> Indexed? {
        let tsize = UInt64(TraceFormat.trailerSize)
        guard size >= dataStart + tsize else { return nil }
        let toff = size - tsize
        let t = try src.read(toff, TraceFormat.trailerSize)
        guard t.count == TraceFormat.trailerSize, Array(t[24..<32]) == TraceFormat.trailerMagic else { return nil }
        let crc = CRC32C.checksum(t[0..<20])
        guard crc == t.le32(20) else {
            throw TraceError.corrupted(offset: toff, what: "trailer checksum mismatch (stored 0x\(String(t.le32(20), radix: 16)), computed 0x\(String(crc, radix: 16)))")
        }
        let indexOffset = t.le64(0)
        let records = t.le64(8)
        let frameCount = Int(t.le32(16))
        guard indexOffset >= dataStart, indexOffset + UInt64(TraceFormat.indexHeaderSize) <= toff else {
            throw TraceError.corrupted(offset: toff, what: "trailer points at index offset \(indexOffset), outside \(dataStart)..<\(toff)")
        }
        let ih = try src.read(indexOffset, TraceFormat.indexHeaderSize)
        guard ih.count == TraceFormat.indexHeaderSize else { throw TraceError.truncated(offset: indexOffset, what: "index header cut short") }
        guard Array(ih[0..<4]) == TraceFormat.indexMagic else {
            throw TraceError.corrupted(offset: indexOffset, what: "expected the index (magic \"ESIX\"), found \(hexPreview(ih[0..<4]))")
        }
        let len = UInt64(ih.le32(4))
        let pstart = indexOffset + UInt64(TraceFormat.indexHeaderSize)
        guard len <= UInt64(TraceFormat.maxIndexBytes), pstart + len <= toff else {
            throw TraceError.corrupted(offset: indexOffset + 4, what: "index length \(len) runs past the trailer at \(toff)")
        }
        let payload = try src.read(pstart, Int(len))
        let pcrc = CRC32C.checksum(payload)
        guard pcrc == ih.le32(8) else {
            throw TraceError.corrupted(offset: indexOffset, what: "index checksum mismatch (stored 0x\(String(ih.le32(8), radix: 16)), computed 0x\(String(pcrc, radix: 16)))")
        }
        return try payload.withUnsafeBytes { p -> Indexed in
            var c = ByteCursor(p, fileOffset: pstart, context: "index", positionsAreFileOffsets: true)
            let n = try c.count(max: c.remaining, "frame count")
            guard n == frameCount else { throw c.corrupt("lists \(n) frames, trailer says \(frameCount)") }
            var frames: [FrameIndexEntry] = []
            frames.reserveCapacity(n)
            var total: UInt64 = 0
            for _ in 0..<n {
                let off = try c.varint()
                let vcpu = try c.varint()
                let first = try c.varint(), last = try c.varint(), firstV = try c.varint()
                let count = try c.varint()
                guard vcpu <= UInt64(UInt16.max), count <= UInt64(UInt32.max) else { throw c.corrupt("frame entry out of range") }
                guard off >= dataStart, off + UInt64(TraceFormat.frameHeaderSize) <= indexOffset else {
                    throw c.corrupt("frame offset \(off) outside the frame area \(dataStart)..<\(indexOffset)")
                }
                guard count == 0 || last >= first else { throw c.corrupt("frame at \(off): last seq \(last) before first \(first)") }
                frames.append(FrameIndexEntry(offset: off, vcpu: UInt16(vcpu), firstSeq: first, lastSeq: last,
                                              firstVcpuSeq: firstV, recordCount: UInt32(count)))
                total += count
            }
            let nv = try c.count(max: c.remaining, "vCPU count")
            var vcpus: [VCPUIndexEntry] = []
            for _ in 0..<nv {
                let v = try c.varint()
                guard v <= UInt64(UInt16.max) else { throw c.corrupt("vCPU \(v) out of range") }
                vcpus.append(VCPUIndexEntry(vcpu: UInt16(v), firstSeq: try c.varint(), lastSeq: try c.varint(), recordCount: try c.varint()))
            }
            // Bytes after this are additions of a newer minor version: ignored.
            guard total == records else { throw c.corrupt("frames hold \(total) records, trailer says \(records)") }
            return Indexed(frames: frames, vcpus: vcpus, records: records, indexOffset: indexOffset)
        }
    }

    /// Walks the frames of a file without a trailer: each must have the frame magic, fit in the
    /// file and match its checksum. Stops at the first one that does not.
    private static func scan(src: ByteSource, size: UInt64, dataStart: UInt64) throws -> (frames: [FrameIndexEntry], end: UInt64, reason: String) {
        var frames: [FrameIndexEntry] = []
        var off = dataStart
        let hsize = UInt64(TraceFormat.frameHeaderSize)
        while off < size {
            if size - off < hsize { return (frames, off, "file ends inside a frame header") }
            let h = try src.read(off, Int(hsize))
            if Array(h[0..<4]) == TraceFormat.indexMagic { return (frames, off, "index present but the trailer is missing") }
            let info = try FrameInfo.parse(h, offset: off)
            let end = off + info.fileSize
            if end > size { return (frames, off, "file ends inside the frame at offset \(off)") }
            let payload = try src.read(off + hsize, Int(info.compressedSize))
            let crc = payload.withUnsafeBytes { FrameInfo.checksum(header: h, payload: $0) }
            if crc != info.checksum {
                if end == size { return (frames, off, "last frame incomplete (checksum mismatch)") }
                throw TraceError.corrupted(offset: off, what: "frame checksum mismatch (stored 0x\(String(info.checksum, radix: 16)), computed 0x\(String(crc, radix: 16)))")
            }
            frames.append(FrameIndexEntry(offset: off, vcpu: info.vcpu, firstSeq: info.firstSeq, lastSeq: info.lastSeq,
                                          firstVcpuSeq: info.firstVcpuSeq, recordCount: info.recordCount))
            off = end
        }
        return (frames, off, "no index: the recorder did not finish the trace")
    }

    // MARK: frames

    /// Reads, checks and decompresses frame `i` (in file order); decode its records with `next()`.
    public func frameDecoder(_ i: Int) throws -> FrameDecoder {
        guard frames.indices.contains(i) else { throw TraceError.notFound("frame \(i) does not exist (the trace has \(frames.count))") }
        let e = frames[i]
        let hsize = TraceFormat.frameHeaderSize
        let h = try src.read(e.offset, hsize)
        guard h.count == hsize else { throw TraceError.truncated(offset: e.offset, what: "frame header cut short") }
        let info = try FrameInfo.parse(h, offset: e.offset)
        guard info.vcpu == e.vcpu, info.firstSeq == e.firstSeq, info.recordCount == e.recordCount, info.lastSeq == e.lastSeq,
              info.firstVcpuSeq == e.firstVcpuSeq else {
            throw TraceError.corrupted(offset: e.offset, what: "frame header disagrees with the index")
        }
        guard e.offset + info.fileSize <= dataEnd else {
            throw TraceError.corrupted(offset: e.offset, what: "frame of \(info.compressedSize) bytes runs past the frame area's end at \(dataEnd)")
        }
        let payload = try src.read(e.offset + UInt64(hsize), Int(info.compressedSize))
        guard payload.count == Int(info.compressedSize) else { throw TraceError.truncated(offset: e.offset, what: "frame payload cut short") }
        return try payload.withUnsafeBytes { p in
            let crc = FrameInfo.checksum(header: h, payload: p)
            guard crc == info.checksum else {
                throw TraceError.corrupted(offset: e.offset, what: "frame checksum mismatch (stored 0x\(String(info.checksum, radix: 16)), computed 0x\(String(crc, radix: 16)))")
            }
            let raw = try ZstdDecompressor().decompress(p, rawSize: Int(info.rawSize), offset: e.offset)
            return FrameDecoder(info: info, raw: raw)
        }
    }

    /// The zstd bytes of frame `i`, checksum verified: one standard zstd frame, so the frames of
    /// a trace concatenated are a `.zst` stream `zstd -d` can read (the benchmark's floor).
    public func compressedFrame(_ i: Int) throws -> [UInt8] {
        guard frames.indices.contains(i) else { throw TraceError.notFound("frame \(i) does not exist (the trace has \(frames.count))") }
        let e = frames[i]
        let h = try src.read(e.offset, TraceFormat.frameHeaderSize)
        let info = try FrameInfo.parse(h, offset: e.offset)
        let payload = try src.read(e.offset + UInt64(TraceFormat.frameHeaderSize), Int(info.compressedSize))
        guard payload.count == Int(info.compressedSize) else { throw TraceError.truncated(offset: e.offset, what: "frame payload cut short") }
        let crc = payload.withUnsafeBytes { FrameInfo.checksum(header: h, payload: $0) }
        guard crc == info.checksum else { throw TraceError.corrupted(offset: e.offset, what: "frame checksum mismatch") }
        return payload
    }

    /// Frame `i` in full: records and stats.
    public func readFrame(_ i: Int) throws -> DecodedFrame {
        let d = try frameDecoder(i)
        let records = try d.all()
        return DecodedFrame(info: d.info, records: records, stats: d.stats)
    }

    // MARK: records

    /// Records in global sequence order, optionally of one vCPU, from `seq` on.
    public func records(vcpu: UInt16? = nil, from seq: UInt64 = 0) -> RecordIterator {
        RecordIterator(reader: self, vcpu: vcpu, from: seq)
    }

    /// Calls `body` for every record in sequence order (bounded memory).
    public func forEachRecord(vcpu: UInt16? = nil, from seq: UInt64 = 0, _ body: (TraceRecord) throws -> Void) throws {
        var it = records(vcpu: vcpu, from: seq)
        var r = TraceRecord(kind: .exit)
        while try it.next(into: &r) { try body(r) }
    }

    /// The record with global sequence number `seq`, found through the index: only the frames
    /// whose range covers it are decompressed.
    public func record(seq: UInt64) throws -> TraceRecord {
        for (i, f) in frames.enumerated() where f.recordCount > 0 && f.firstSeq <= seq && seq <= f.lastSeq {
            let d = try frameDecoder(i)
            while let r = try d.next() {
                if r.seq == seq { return r }
                if r.seq > seq { break }
            }
        }
        let last = vcpus.map(\.lastSeq).max()
        throw TraceError.notFound("no record with seq \(seq) in \(path)" + (last.map { " (records run 0...\($0))" } ?? " (no records)"))
    }
}

/// Merges the frames of all vCPUs into global sequence order. Frames of one vCPU never overlap,
/// so only frames whose ranges overlap the current position are open at once (about one per vCPU).
public struct RecordIterator {
    let reader: TraceReader
    /// Frame indices sorted by first seq, not yet opened.
    private var pending: [Int]
    private var p = 0
    /// An open frame and its next record (a class, so advancing it copies no record).
    private final class Head {
        let decoder: FrameDecoder
        var record: TraceRecord
        init(_ d: FrameDecoder, _ r: TraceRecord) { decoder = d; record = r }
    }
    private var active: [Head] = []
    private let from: UInt64

    init(reader: TraceReader, vcpu: UInt16?, from: UInt64) {
        self.reader = reader
        self.from = from
        pending = reader.frames.indices.filter {
            let f = reader.frames[$0]
            return f.recordCount > 0 && f.lastSeq >= from && (vcpu == nil || f.vcpu == vcpu)
        }.sorted { reader.frames[$0].firstSeq < reader.frames[$1].firstSeq }
    }

    public mutating func next() throws -> TraceRecord? {
        var r = TraceRecord(kind: .exit)
        return try next(into: &r) ? r : nil
    }

    /// The next record in sequence order into `out`; false at the end. Cheaper than `next()`:
    /// the open frame decodes its following record in place.
    public mutating func next(into out: inout TraceRecord) throws -> Bool {
        while p < pending.count {
            let f = reader.frames[pending[p]]
            if !active.isEmpty {
                var m = UInt64.max
                for h in active where h.record.seq < m { m = h.record.seq }
                if f.firstSeq > m { break }
            }
            let d = try reader.frameDecoder(pending[p])
            p += 1
            let h = Head(d, TraceRecord(kind: .exit))
            while try d.next(into: &h.record) {
                if h.record.seq >= from { active.append(h); break }
            }
        }
        guard !active.isEmpty else { return false }
        var best = 0
        if active.count > 1 {
            for i in 1..<active.count where active[i].record.seq < active[best].record.seq { best = i }
        }
        let h = active[best]
        out = h.record
        if try !h.decoder.next(into: &h.record) { active.remove(at: best) }
        return true
    }
}

/// Where a reader's bytes come from: a file read with pread (thread-safe, nothing held in
/// memory) or an array.
final class ByteSource: @unchecked Sendable {
    private let fd: Int32
    private let bytes: [UInt8]?
    let size: UInt64
    let path: String

    init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw TraceError.io(path: path, message: "cannot open: \(String(cString: strerror(errno)))") }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw TraceError.io(path: path, message: "cannot stat: \(e)")
        }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            close(fd)
            throw TraceError.io(path: path, message: "is a directory, not a trace file")
        }
        self.fd = fd
        bytes = nil
        size = UInt64(st.st_size)
    }

    init(bytes: [UInt8]) {
        fd = -1
        self.bytes = bytes
        size = UInt64(bytes.count)
        path = "<memory>"
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Up to `count` bytes at `offset` (fewer at the end of the data).
    func read(_ offset: UInt64, _ count: Int) throws -> [UInt8] {
        if let b = bytes {
            guard offset < UInt64(b.count) else { return [] }
            let start = Int(offset)
            return Array(b[start..<min(b.count, start + count)])
        }
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        try out.withUnsafeMutableBytes { p in
            while done < count {
                let n = Glibc.pread(fd, p.baseAddress! + done, count - done, off_t(offset) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw TraceError.io(path: path, message: "read at offset \(offset) failed: \(String(cString: strerror(errno)))")
                }
                if n == 0 { break }
                done += n
            }
        }
        if done < count { out.removeSubrange(done...) }
        return out
    }
}

