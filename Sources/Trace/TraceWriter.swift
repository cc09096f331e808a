import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// When frames close and how hard they are compressed; together these bound the writer's
/// memory: about (vCPUs + queueDepth + 1) × maxFrameBytes, however long the run.
public struct TraceWriterSettings: Sendable {
    /// A vCPU's frame closes after this many records...
    public var maxRecordsPerFrame: Int
    /// ...or once its uncompressed items reach this many bytes.
    public var maxFrameBytes: Int
    /// zstd level for frames.
    public var compressionLevel: Int32
    /// Closed frames waiting for the compressor; a vCPU blocks only when this queue is full.
    public var queueDepth: Int
    /// Assign `seq`, `vcpuSeq` (and `group` of first fragments) in the writer. Off only for
    /// tools that copy records whose numbers are already final (they must increase per vCPU).
    public var assignSequenceNumbers: Bool
    /// The compressor thread's nice value (0: as its process). A recorder raises it so that the
    /// thread, ready at the same moments as the recorder's encoder, does not take a vCPU's CPU.
    public var compressorNice: Int32 = 0

    public init(maxRecordsPerFrame: Int = 16384, maxFrameBytes: Int = 1 << 20, compressionLevel: Int32 = 6,
                queueDepth: Int = 8, assignSequenceNumbers: Bool = true) {
        self.maxRecordsPerFrame = max(1, maxRecordsPerFrame)
        self.maxFrameBytes = max(1024, min(maxFrameBytes, TraceFormat.maxFrameBytes / 2))
        self.compressionLevel = compressionLevel
        self.queueDepth = max(1, queueDepth)
        self.assignSequenceNumbers = assignSequenceNumbers
    }
}

/// What a finished writer wrote.
public struct TraceWriterStatistics: Equatable, Sendable {
    public var records: UInt64 = 0
    public var frames: Int = 0
    /// Uncompressed frame items and compressed frame payloads, in bytes.
    public var rawBytes: UInt64 = 0
    public var compressedBytes: UInt64 = 0
    /// Size of the whole file (header, frames, index, trailer).
    public var fileBytes: UInt64 = 0
    /// Times a vCPU found the compression queue full and waited.
    public var producerStalls: UInt64 = 0
}

/// Writes a trace file: header, then zstd frames (one vCPU each, keyframe then deltas),
/// then an index and a trailer at `finish()`.
///
/// Threading: `append` may be called from several vCPU threads at once. Each vCPU has its own
/// lane (an encoder behind its own lock, uncontended in normal use) and the global sequence
/// number comes from an atomic counter, so there is no global lock on the hot path. Closed
/// frames go through a bounded queue to one background thread that compresses and writes them.
public final class TraceWriter: @unchecked Sendable {
    public let path: String
    public let header: TraceHeader
    public let settings: TraceWriterSettings

    private final class Lane {
        let lock = NSLock()
        let encoder: FrameEncoder
        var nextVcpuSeq: UInt64 = 0
        var lastSeq: UInt64? = nil
        var records: UInt64 = 0
        var firstSeq: UInt64? = nil
        init(vcpu: UInt16, capacity: Int) { encoder = FrameEncoder(vcpu: vcpu, capacity: capacity) }
    }

    private let lanes: [Lane]
    private let nextSeq = Atomic<UInt64>(0)
    private let finished = Atomic<Bool>(false)
    private let finishLock = NSLock()
    private var finalStatistics: TraceWriterStatistics?
    private let pipeline: FramePipeline
    private let frameStats: (@Sendable (UInt16) -> VCPUFrameStats?)?

    /// Creates (truncates) `path` and writes the header.
    /// - Parameter frameStats: called when a vCPU's frame closes, normally on that vCPU's thread
    ///   inside `append` (at `finish()`, on the finishing thread), to attach KVM's stats and the
    ///   debug registers once per frame.
    public init(path: String, header: TraceHeader, settings: TraceWriterSettings = TraceWriterSettings(),
                frameStats: (@Sendable (UInt16) -> VCPUFrameStats?)? = nil) throws {
        self.path = path
        var h = header
        h.formatVersion = TraceFormat.major
        self.header = h
        self.settings = settings
        self.frameStats = frameStats
        let vcpus = max(1, Int(header.vcpuCount))
        lanes = (0..<vcpus).map { Lane(vcpu: UInt16($0), capacity: min(settings.maxFrameBytes, 1 << 16)) }

        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw TraceError.io(path: path, message: "cannot create: \(String(cString: strerror(errno)))") }
        let file = OutputFile(fd: fd, path: path)

        let json = try HeaderJSON.encode(h)
        let s = ByteSink(capacity: json.count + TraceFormat.fileHeaderFixedSize)
        s.append(TraceFormat.fileMagic)
        s.u16(TraceFormat.major)
        s.u16(TraceFormat.minor)
        s.u32(UInt32(json.count))
        s.u32(CRC32C.checksum(json))
        s.append(json)
        do { try file.write(s.bytes) } catch { file.close(); throw error }
        pipeline = FramePipeline(file: file, level: settings.compressionLevel, depth: settings.queueDepth,
                                 nice: settings.compressorNice)
    }

    deinit {
        // A writer dropped without finish() leaves a cut-short file, still readable.
        if !finished.load(ordering: .acquiring) { pipeline.shutdown(); pipeline.file.close() }
    }

    private func lane(_ vcpu: UInt16) throws -> Lane {
        guard Int(vcpu) < lanes.count else {
            throw TraceError.writer("vCPU \(vcpu) out of range: the header declares \(lanes.count) vCPUs")
        }
        return lanes[Int(vcpu)]
    }

    /// Appends one record; returns its global sequence number.
    /// With `assignSequenceNumbers`, the writer sets `seq`, `vcpuSeq`, and for a first fragment
    /// (`fragment == 0`) `group = seq`; later fragments keep the `group` the caller gives them
    /// (the seq this method returned for the first fragment).
    @discardableResult
    public func append(_ record: TraceRecord) throws -> UInt64 {
        let l = try lane(record.vcpu)
        l.lock.lock()
        defer { l.lock.unlock() }
        if finished.load(ordering: .relaxed) { throw TraceError.writer("append after finish()") }
        var seq = record.seq, vcpuSeq = record.vcpuSeq, group = record.group
        if settings.assignSequenceNumbers {
            seq = nextSeq.wrappingAdd(1, ordering: .relaxed).oldValue
            vcpuSeq = l.nextVcpuSeq
            if record.fragment == 0 { group = seq }
        } else if let last = l.lastSeq, seq <= last {
            throw TraceError.writer("vCPU \(record.vcpu): seq \(seq) does not follow \(last)")
        }
        l.nextVcpuSeq = vcpuSeq &+ 1
        l.lastSeq = seq
        if l.firstSeq == nil { l.firstSeq = seq }
        l.records += 1
        l.encoder.append(record, seq: seq, vcpuSeq: vcpuSeq, group: group)
        if Int(l.encoder.recordCount) >= settings.maxRecordsPerFrame || l.encoder.byteCount >= settings.maxFrameBytes {
            try closeFrame(l)
        }
        return seq
    }

    /// Adds a vCPU's stats to its current frame (in addition to the `frameStats` callback).
    public func appendStats(_ stats: VCPUFrameStats) throws {
        let l = try lane(stats.vcpu)
        l.lock.lock()
        defer { l.lock.unlock() }
        if finished.load(ordering: .relaxed) { throw TraceError.writer("appendStats after finish()") }
        l.encoder.appendStats(stats)
    }

    /// Closes the vCPU's current frame now (e.g. when it stops), so it reaches the file even if
    /// the process is killed later.
    public func flush(vcpu: UInt16) throws {
        let l = try lane(vcpu)
        l.lock.lock()
        defer { l.lock.unlock() }
        if !l.encoder.isEmpty { try closeFrame(l) }
    }

    private func closeFrame(_ l: Lane) throws {
        let e = l.encoder
        if !e.isEmpty, let provide = frameStats, let s = provide(e.vcpu) { e.appendStats(s) }
        guard e.sink.count <= TraceFormat.maxFrameBytes else {
            let n = e.sink.count
            e.reset()
            throw TraceError.writer("vCPU \(e.vcpu): a frame of \(n) bytes exceeds the format's limit of \(TraceFormat.maxFrameBytes) (a record's guest bytes are too large); its records were dropped")
        }
        let job = FramePipeline.Job(raw: e.sink.bytes, vcpu: e.vcpu, recordCount: e.recordCount,
                                    firstSeq: e.firstSeq, lastSeq: e.lastSeq, firstVcpuSeq: e.firstVcpuSeq)
        e.reset()
        try pipeline.submit(job)
    }

    /// Closes every frame, waits for the compressor, writes the index and trailer, closes the
    /// file. Safe to call more than once and from any thread (Ctrl-C handlers call it); appends
    /// after it throw.
    @discardableResult
    public func finish() throws -> TraceWriterStatistics {
        finishLock.lock()
        defer { finishLock.unlock() }
        if let s = finalStatistics { return s }
        var firstError: Error?
        for l in lanes {
            l.lock.lock()
            finished.store(true, ordering: .releasing)
            if !l.encoder.isEmpty || l.encoder.hasStats {
                do { try closeFrame(l) } catch { firstError = firstError ?? error }
            }
            l.lock.unlock()
        }
        finished.store(true, ordering: .releasing)
        pipeline.shutdown()
        if let e = pipeline.failure { firstError = firstError ?? e }

        var stats = pipeline.statistics
        stats.records = lanes.reduce(0) { $0 + $1.records }
        if firstError == nil {
            do {
                let indexOffset = pipeline.offset
                let payload = ByteSink()
                payload.varint(UInt64(pipeline.frames.count))
                for f in pipeline.frames {
                    payload.varint(f.offset)
                    payload.varint(UInt64(f.vcpu))
                    payload.varint(f.firstSeq)
                    payload.varint(f.lastSeq)
                    payload.varint(f.firstVcpuSeq)
                    payload.varint(UInt64(f.recordCount))
                }
                let used = lanes.enumerated().filter { $0.element.records > 0 }
                payload.varint(UInt64(used.count))
                for (v, l) in used {
                    payload.varint(UInt64(v))
                    payload.varint(l.firstSeq ?? 0)
                    payload.varint(l.lastSeq ?? 0)
                    payload.varint(l.records)
                }
                let s = ByteSink(capacity: payload.count + 64)
                s.append(TraceFormat.indexMagic)
                s.u32(UInt32(payload.count))
                s.u32(CRC32C.checksum(payload.bytes))
                s.append(payload)
                let t = ByteSink(capacity: TraceFormat.trailerSize)
                t.u64(indexOffset)
                t.u64(stats.records)
                t.u32(UInt32(truncatingIfNeeded: pipeline.frames.count))
                t.u32(CRC32C.checksum(t.bytes))
                t.append(TraceFormat.trailerMagic)
                s.append(t)
                try pipeline.file.write(s.bytes)
                stats.fileBytes = indexOffset + UInt64(s.count)
                pipeline.file.sync()
            } catch {
                firstError = error
            }
        }
        pipeline.file.close()
        finalStatistics = stats
        if let e = firstError { throw e }
        return stats
    }
}

/// The output file: whole writes, retried on EINTR and short writes.
final class OutputFile: @unchecked Sendable {
    let fd: Int32
    let path: String
    private var closed = false
    init(fd: Int32, path: String) { self.fd = fd; self.path = path }

    func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    func write(_ p: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < p.count {
            let n = Glibc.write(fd, p.baseAddress! + done, p.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw TraceError.io(path: path, message: "write failed: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }

    func sync() { _ = fsync(fd) }

    func close() {
        if !closed { _ = Glibc.close(fd); closed = true }
    }
}

/// The bounded queue of closed frames and the thread that compresses and writes them, in
/// submission order.
final class FramePipeline: @unchecked Sendable {
    struct Job {
        var raw: [UInt8]
        var vcpu: UInt16
        var recordCount: UInt32
        var firstSeq: UInt64
        var lastSeq: UInt64
        var firstVcpuSeq: UInt64
    }

    let file: OutputFile
    private let cond = NSCondition()
    private var queue: [Job] = []
    private var head = 0
    private let depth: Int
    private var closing = false
    private var done = false
    private var error: Error?
    private let level: Int32
    // Owned by the worker until `shutdown()` returns.
    private(set) var frames: [FrameInfo] = []
    private(set) var offset: UInt64
    private var stats = TraceWriterStatistics()

    init(file: OutputFile, level: Int32, depth: Int, nice: Int32 = 0) {
        self.file = file
        self.level = level
        self.depth = depth
        offset = UInt64(lseek(file.fd, 0, SEEK_CUR))
        let t = Thread { [unowned self] in
            // who = 0: on Linux the calling thread only. A refusal leaves the thread as it was.
            if nice != 0 { _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice) }
            self.run()
        }
        t.name = "trace-compressor"
        t.start()
    }

    var failure: Error? { cond.lock(); defer { cond.unlock() }; return error }
    var statistics: TraceWriterStatistics { cond.lock(); defer { cond.unlock() }; return stats }

    func submit(_ job: Job) throws {
        cond.lock()
        defer { cond.unlock() }
        if let e = error { throw e }
        if queue.count - head >= depth {
            stats.producerStalls += 1
            while queue.count - head >= depth && error == nil && !done { cond.wait() }
        }
        if let e = error { throw e }
        guard !done else { throw TraceError.writer("frame submitted after the writer finished") }
        queue.append(job)
        cond.broadcast()
    }

    /// Lets the worker drain the queue, then waits for it to exit.
    func shutdown() {
        cond.lock()
        closing = true
        cond.broadcast()
        while !done { cond.wait() }
        cond.unlock()
    }

    private func run() {
        let zstd = ZstdCompressor(level: level)
        while true {
            cond.lock()
            while queue.count == head && !closing { cond.wait() }
            if queue.count == head {
                done = true
                cond.broadcast()
                cond.unlock()
                return
            }
            let job = queue[head]
            head += 1
            if head > 64 { queue.removeFirst(head); head = 0 }
            cond.broadcast()
            let failed = error != nil
            cond.unlock()
            if failed { continue } // drain without writing after an I/O error

            do {
                let compressed = try zstd.compress(job.raw)
                var info = FrameInfo(offset: offset, compressedSize: UInt32(compressed.count), rawSize: UInt32(job.raw.count),
                                     recordCount: job.recordCount, firstSeq: job.firstSeq, lastSeq: job.lastSeq,
                                     firstVcpuSeq: job.firstVcpuSeq, vcpu: job.vcpu, flags: 0, checksum: 0)
                let h0 = info.headerBytes()
                info.checksum = compressed.withUnsafeBytes { FrameInfo.checksum(header: h0, payload: $0) }
                var out = info.headerBytes()
                out.append(contentsOf: compressed)
                try file.write(out)
                offset += UInt64(out.count)
                frames.append(info)
                cond.lock()
                stats.frames += 1
                stats.rawBytes += UInt64(job.raw.count)
                stats.compressedBytes += UInt64(compressed.count)
                cond.unlock()
            } catch {
                cond.lock()
                self.error = error
                cond.broadcast()
                cond.unlock()
            }
        }
    }
}
