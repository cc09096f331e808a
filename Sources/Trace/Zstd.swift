import CZstd

/// Thin wrappers over libzstd's one-shot API with reusable contexts.
final class ZstdCompressor {
    private let cctx: OpaquePointer
    let level: Int32

    init(level: Int32) {
        cctx = ZSTD_createCCtx()
        self.level = level
    }


    /// Output buffer reused across frames (a fresh zeroed megabyte per frame costs page faults).
    private var out = UnsafeMutableRawBufferPointer.allocate(byteCount: 0, alignment: 8)

    deinit {
        out.deallocate()
        ZSTD_freeCCtx(cctx)
    }

    func compress(_ src: [UInt8]) throws -> [UInt8] {
        let bound = ZSTD_compressBound(src.count)
        if out.count < bound {
            out.deallocate()
            out = .allocate(byteCount: bound, alignment: 8)
        }
        let n = src.withUnsafeBytes { s in
            ZSTD_compressCCtx(cctx, out.baseAddress, bound, s.baseAddress, s.count, level)
        }
        if ZSTD_isError(n) != 0 {
            throw TraceError.writer("zstd compression failed: \(String(cString: ZSTD_getErrorName(n)))")
        }
        return [UInt8](UnsafeRawBufferPointer(rebasing: out[0..<n]))
    }
}

final class ZstdDecompressor {
    private let dctx: OpaquePointer

    init() { dctx = ZSTD_createDCtx() }
    deinit { ZSTD_freeDCtx(dctx) }

    /// Decompresses exactly `rawSize` bytes into a new buffer the caller owns.
    func decompress(_ src: UnsafeRawBufferPointer, rawSize: Int, offset: UInt64) throws -> UnsafeMutableRawBufferPointer {
        // The zstd frame says its own content size; it must agree with the frame header.
        let declared = ZSTD_getFrameContentSize(src.baseAddress, src.count)
        guard declared == UInt64(rawSize) else {
            throw TraceError.corrupted(offset: offset, what: "zstd frame declares \(declared == ZSTD_CONTENTSIZE_ERROR ? "no valid" : String(declared)) content bytes, frame header says \(rawSize)")
        }
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: max(rawSize, 1), alignment: 8)
        let n = ZSTD_decompressDCtx(dctx, out.baseAddress, rawSize, src.baseAddress, src.count)
        if ZSTD_isError(n) != 0 || n != rawSize {
            out.deallocate()
            let why = ZSTD_isError(n) != 0 ? String(cString: ZSTD_getErrorName(n)) : "\(n) bytes instead of \(rawSize)"
            throw TraceError.corrupted(offset: offset, what: "zstd decompression failed: \(why)")
        }
        return UnsafeMutableRawBufferPointer(rebasing: out[0..<rawSize])
    }
}
