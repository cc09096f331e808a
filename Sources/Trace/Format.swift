/// Byte layout constants of the trace file (FORMAT.md is the normative description).
public enum TraceFormat {
    /// Major version: a reader refuses a file with a larger major version.
    public static let major: UInt16 = 1
    /// Minor version: additions a reader of the same major version may ignore.
    public static let minor: UInt16 = 1

    /// File magic, PNG-style: a high byte, the name, then CR LF SUB LF to catch text-mode mangling.
    static let fileMagic: [UInt8] = [0x89, 0x45, 0x53, 0x54, 0x0D, 0x0A, 0x1A, 0x0A] // \x89 E S T \r \n \x1a \n
    static let fileHeaderFixedSize = 20
    static let frameMagic: [UInt8] = Array("ESFR".utf8)
    static let frameHeaderSize = 48
    static let indexMagic: [UInt8] = Array("ESIX".utf8)
    static let indexHeaderSize = 12
    static let trailerMagic: [UInt8] = Array("ESTREND\0".utf8)
    static let trailerSize = 32

    /// Limits a reader enforces before allocating (a hostile or damaged file must not make it
    /// allocate gigabytes); the writer never exceeds them.
    static let maxHeaderBytes = 64 << 20
    static let maxFrameBytes = 256 << 20
    static let maxIndexBytes = 256 << 20

    // Item tags inside a decompressed frame.
    static let tagKeyframe: UInt8 = 1
    static let tagGuestBytes: UInt8 = 2
    static let tagRecord: UInt8 = 3
    static let tagStats: UInt8 = 4
}

/// The fixed 48-byte header in front of each frame's compressed bytes.
public struct FrameInfo: Equatable, Sendable {
    /// Byte offset of the frame header in the file.
    public var offset: UInt64
    public var compressedSize: UInt32
    public var rawSize: UInt32
    public var recordCount: UInt32
    public var firstSeq: UInt64
    public var lastSeq: UInt64
    public var firstVcpuSeq: UInt64
    public var vcpu: UInt16
    public var flags: UInt16
    public var checksum: UInt32

    /// Bytes the frame occupies in the file, header included.
    public var fileSize: UInt64 { UInt64(TraceFormat.frameHeaderSize) + UInt64(compressedSize) }

    func headerBytes() -> [UInt8] {
        let s = ByteSink(capacity: TraceFormat.frameHeaderSize)
        s.append(TraceFormat.frameMagic)
        s.u32(compressedSize)
        s.u32(rawSize)
        s.u32(recordCount)
        s.u64(firstSeq)
        s.u64(lastSeq)
        s.u64(firstVcpuSeq)
        s.u16(vcpu)
        s.u16(flags)
        s.u32(checksum)
        return s.bytes
    }

    /// Parses a frame header (magic already checked by the caller or here); checks sizes.
    static func parse(_ b: [UInt8], offset: UInt64) throws -> FrameInfo {
        guard b.count >= TraceFormat.frameHeaderSize else {
            throw TraceError.truncated(offset: offset, what: "frame header needs \(TraceFormat.frameHeaderSize) bytes, \(b.count) left")
        }
        guard Array(b[0..<4]) == TraceFormat.frameMagic else {
            throw TraceError.corrupted(offset: offset, what: "expected a frame (magic \"ESFR\"), found \(hexPreview(b[0..<4]))")
        }
        let f = FrameInfo(offset: offset, compressedSize: b.le32(4), rawSize: b.le32(8), recordCount: b.le32(12),
                          firstSeq: b.le64(16), lastSeq: b.le64(24), firstVcpuSeq: b.le64(32),
                          vcpu: b.le16(40), flags: b.le16(42), checksum: b.le32(44))
        guard Int(f.rawSize) <= TraceFormat.maxFrameBytes, Int(f.compressedSize) <= TraceFormat.maxFrameBytes else {
            throw TraceError.corrupted(offset: offset, what: "frame sizes \(f.compressedSize)/\(f.rawSize) exceed the format's limit")
        }
        guard f.recordCount == 0 || f.lastSeq >= f.firstSeq, UInt64(f.recordCount) <= f.lastSeq &- f.firstSeq &+ 1 || f.recordCount == 0 else {
            throw TraceError.corrupted(offset: offset, what: "frame sequence range \(f.firstSeq)...\(f.lastSeq) cannot hold \(f.recordCount) records")
        }
        return f
    }

    /// CRC-32C over header bytes 0..<44 and then the compressed bytes.
    static func checksum(header: [UInt8], payload: UnsafeRawBufferPointer) -> UInt32 {
        let h = CRC32C.checksum(header[0..<44])
        return CRC32C.update(h, payload)
    }
}

/// Per-vCPU totals of the index.
public struct VCPUIndexEntry: Equatable, Sendable {
    public var vcpu: UInt16
    public var firstSeq: UInt64
    public var lastSeq: UInt64
    public var recordCount: UInt64
}

func hexPreview<C: Collection>(_ b: C) -> String where C.Element == UInt8 {
    "\"" + b.map { x in
        (0x20..<0x7F).contains(x) ? String(UnicodeScalar(x)) : "\\x" + (x < 16 ? "0" : "") + String(x, radix: 16)
    }.joined() + "\""
}
