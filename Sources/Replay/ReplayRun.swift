import Dispatch
import Foundation
import Trace
import X86
import X86Emulator

/// What `exitscope replay` replays and how.
public struct ReplayOptions: Sendable {
    /// Frames decoded and replayed in parallel; the output does not depend on it.
    public var jobs: Int
    /// Only this vCPU's records.
    public var vcpu: UInt16?
    /// Only the verdict covering the record with this sequence number.
    public var exitSeq: UInt64?
    public init(jobs: Int = 1, vcpu: UInt16? = nil, exitSeq: UInt64? = nil) {
        self.jobs = jobs
        self.vcpu = vcpu
        self.exitSeq = exitSeq
    }
}

/// The aggregate of a replay: counts by verdict, reason, mnemonic, the forms checked, the firsts.
public struct ReplaySummary: Sendable {
    public var records: UInt64 = 0
    public var verdicts: UInt64 = 0
    public var byKind: [VerdictKind: UInt64] = [:]
    /// Reason ("IOIO", "STEP", ...) → verdict kind → count.
    public var byReason: [String: [VerdictKind: UInt64]] = [:]
    /// Mnemonic → instructions checked (verdict match or divergence).
    public var byMnemonic: [String: UInt64] = [:]
    public var byReference: [String: UInt64] = [:]
    /// Distinct instruction forms checked (match or divergence).
    public var forms: Set<InstructionForm> = []
    /// The first verdict of each failing kind, by sequence number.
    public var firstOf: [VerdictKind: Verdict] = [:]

    public init() {}

    public var firstDivergence: Verdict? { firstOf[.divergence] }

    mutating func add(_ v: Verdict) {
        verdicts += 1
        records += UInt64(v.records)
        byKind[v.kind, default: 0] += 1
        byReason[v.reason, default: [:]][v.kind, default: 0] += 1
        if !v.reference.isEmpty { byReference[v.reference, default: 0] += 1 }
        if v.kind == .match || v.kind == .divergence || v.kind == .self, let i = v.instruction {
            byMnemonic[i.mnemonic.name, default: 0] += 1
            forms.insert(InstructionForm(i))
        }
        if v.kind.isFailure && firstOf[v.kind] == nil { firstOf[v.kind] = v }
    }

    /// Verdicts of kinds not in `allowed` that fail the run.
    public func failures(allowing allowed: Set<VerdictKind>) -> UInt64 {
        byKind.filter { $0.key.isFailure && !allowed.contains($0.key) }.reduce(0) { $0 + $1.value }
    }
}

/// Replays a whole trace: frames in parallel, verdicts delivered in sequence order (so the output
/// is the same with any number of jobs).
public enum ReplayRun {
    /// - Parameters:
    ///   - progress: called on the calling thread with (records done, records in total).
    ///   - each: every verdict, in sequence order.
    public static func run(_ reader: TraceReader, options: ReplayOptions = ReplayOptions(),
                           progress: ((UInt64, UInt64) -> Void)? = nil,
                           each: (Verdict) throws -> Void) throws -> ReplaySummary {
        var summary = ReplaySummary()
        let jobs = max(1, min(options.jobs, 64))
        // --exit N: the vCPU of record N limits the frames; the verdict covering N is kept.
        var vcpuFilter = options.vcpu
        var target: TraceRecord?
        if let n = options.exitSeq {
            let r = try reader.record(seq: n)
            target = r
            if let v = vcpuFilter, v != r.vcpu { return summary }
            vcpuFilter = r.vcpu
        }
        var frames = reader.frames.indices.filter {
            let f = reader.frames[$0]
            return f.recordCount > 0 && (vcpuFilter == nil || f.vcpu == vcpuFilter)
        }.sorted { reader.frames[$0].firstSeq < reader.frames[$1].firstSeq }
        if let t = target {
            // The frame holding N, the one before (a group may start there) and the one after (a step's after-state).
            guard let k = frames.firstIndex(where: { reader.frames[$0].firstSeq <= t.seq && t.seq <= reader.frames[$0].lastSeq }) else {
                return summary
            }
            frames = Array(frames[max(0, k - 1)...min(frames.count - 1, k + 1)])
        }
        let total = frames.reduce(UInt64(0)) { $0 + UInt64(reader.frames[$1].recordCount) }
        let replayers = (0..<jobs).map { _ in Replayer(header: reader.header) }
        let batchSize = jobs == 1 ? 1 : jobs * 2

        var buffer: [Verdict] = []
        var open: [UInt16: OpenStep] = [:]
        var done: UInt64 = 0
        var deliveredUpTo: UInt64 = 0

        func deliver(_ v: Verdict) throws {
            if let t = target {
                // The verdict covering N: same vCPU, starting at or before N and spanning it.
                guard v.vcpu == t.vcpu, v.seq <= t.seq, v.seq == t.seq || v.records > 1 && t.group == v.seq else { return }
            }
            summary.add(v)
            try each(v)
        }

        func flush(below limit: UInt64) throws {
            guard !buffer.isEmpty else { return }
            // Verdicts are large: sort only when frames of several vCPUs interleaved.
            var sorted = true
            for i in 1..<buffer.count where buffer[i - 1].seq > buffer[i].seq { sorted = false; break }
            if !sorted { buffer.sort { $0.seq < $1.seq } }
            var k = 0
            while k < buffer.count && buffer[k].seq < limit {
                try deliver(buffer[k])
                k += 1
            }
            if k == buffer.count { buffer.removeAll(keepingCapacity: true) } else { buffer.removeFirst(k) }
            deliveredUpTo = limit
        }

        var start = 0
        while start < frames.count {
            let batch = Array(frames[start..<min(frames.count, start + batchSize)])
            var results = [Result<FrameVerdicts, Error>?](repeating: nil, count: batch.count)
            if jobs == 1 {
                for (k, f) in batch.enumerated() {
                    results[k] = Result { replayers[0].replayFrame(try reader.readFrame(f).records) }
                }
            } else {
                let box = ResultBox(results)
                DispatchQueue.concurrentPerform(iterations: min(jobs, batch.count)) { w in
                    var k = w
                    while k < batch.count {
                        let r = Result { replayers[w].replayFrame(try reader.readFrame(batch[k]).records) }
                        box.set(k, r)
                        k += jobs
                    }
                }
                results = box.values
            }
            for (k, f) in batch.enumerated() {
                guard let r = results[k] else { continue }
                let fv = try r.get()
                let vcpu = reader.frames[f].vcpu
                if let o = open.removeValue(forKey: vcpu) { buffer.append(StepCheck.close(o, next: fv.head)) }
                buffer.append(contentsOf: fv.verdicts)
                if let o = fv.openStep { open[vcpu] = o }
                done += UInt64(reader.frames[f].recordCount)
            }
            start += batch.count
            // Everything before the next frame's first record (and before any step still open) is final.
            var limit = start < frames.count ? reader.frames[frames[start]].firstSeq : UInt64.max
            for (_, o) in open { limit = min(limit, o.verdict.seq) }
            try flush(below: limit)
            progress?(done, total)
        }
        for (_, o) in open { buffer.append(StepCheck.close(o, next: nil)) }
        try flush(below: .max)
        _ = deliveredUpTo
        return summary
    }
}

/// Results written by worker threads, each to its own slot.
final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var values: [Result<FrameVerdicts, Error>?]
    init(_ v: [Result<FrameVerdicts, Error>?]) { values = v }
    func set(_ i: Int, _ r: Result<FrameVerdicts, Error>) {
        lock.lock()
        values[i] = r
        lock.unlock()
    }
}
