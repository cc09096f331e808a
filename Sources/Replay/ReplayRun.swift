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
    /// Which verdicts `each` gets; the summary counts all of them either way.
    public var delivery: VerdictDelivery
    /// A deliberately wrong emulator result, for tests of replay itself (nil: none).
    public var injectedFault: InjectedFault?
    public init(jobs: Int = 1, vcpu: UInt16? = nil, exitSeq: UInt64? = nil, delivery: VerdictDelivery = .all,
                injectedFault: InjectedFault? = nil) {
        self.jobs = jobs
        self.vcpu = vcpu
        self.exitSeq = exitSeq
        self.delivery = delivery
        self.injectedFault = injectedFault
    }
}

/// Which verdicts a replay hands to its caller one by one.
public enum VerdictDelivery: Sendable {
    /// Every verdict (`--json`, `--exit`, ingest).
    case all
    /// Only verdicts of failing kinds; matches and the other passing kinds are only counted where
    /// they are made, which spares a verdict per record on the way to the summary.
    case failures
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
        if v.kind == .match || v.kind == .divergence || v.kind == .self, let d = v.decoded {
            byMnemonic[d.instruction.mnemonic.name, default: 0] += 1
            forms.insert(d.form)
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
    ///   - each: every verdict (or every failing one, as `options.delivery` says), in sequence order.
    public static func run(_ reader: TraceReader, options: ReplayOptions = ReplayOptions(),
                           progress: ((UInt64, UInt64) -> Void)? = nil,
                           each: (Verdict) throws -> Void) throws -> ReplaySummary {
        let summary = ReplaySummary()
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
        let delivery: VerdictDelivery = target == nil ? options.delivery : .all
        let total = frames.reduce(UInt64(0)) { $0 + UInt64(reader.frames[$1].recordCount) }
        var merge = FrameMerge(header: reader.header, delivery: delivery, target: target, injectedFault: options.injectedFault)
        var done: UInt64 = 0
        func merged(_ k: Int, _ result: FrameResult) throws {
            let f = reader.frames[frames[k]]
            try merge.add(result, nextFirstSeq: k + 1 < frames.count ? reader.frames[frames[k + 1]].firstSeq : nil, deliver: each)
            done += UInt64(f.recordCount)
            progress?(done, total)
        }

        if jobs == 1 || frames.count < 2 {
            let replayer = Replayer(header: reader.header)
            replayer.delivery = delivery
            replayer.injectedFault = options.injectedFault
            for k in frames.indices {
                try merged(k, try replayer.replayFrame(try reader.frameDecoder(frames[k])))
            }
        } else {
            // Workers take frames in order and replay them; this thread merges the results in frame
            // order. At most `window` results wait, so memory is bounded by the settings.
            let pipe = FramePipeline(count: frames.count, window: jobs * 2)
            let workers = min(jobs, frames.count)
            let finished = DispatchGroup()
            let frameList = frames
            for _ in 0..<workers {
                let replayer = Replayer(header: reader.header)
                replayer.delivery = delivery
                replayer.injectedFault = options.injectedFault
                finished.enter()
                let thread = Thread {
                    while let k = pipe.take() {
                        pipe.put(k, Result { try replayer.replayFrame(try reader.frameDecoder(frameList[k])) })
                    }
                    finished.leave()
                }
                thread.stackSize = 1 << 22
                thread.start()
            }
            defer {
                pipe.cancel()
                finished.wait()
            }
            for k in frames.indices {
                try merged(k, try pipe.wait(k).get())
            }
        }
        try merge.finish(deliver: each)
        return merge.summary
    }
}

/// Hands frames to worker threads in order and their results back in order, with at most
/// `window` frames taken and not yet merged.
final class FramePipeline: @unchecked Sendable {
    private let cond = NSCondition()
    private let count: Int
    private let window: Int
    private var next = 0
    private var merged = 0
    private var cancelled = false
    private var slots: [Result<FrameResult, Error>?]

    init(count: Int, window: Int) {
        self.count = count
        self.window = max(1, window)
        slots = Array(repeating: nil, count: self.window)
    }

    /// The next frame to replay, nil when there is none (or the run stopped).
    func take() -> Int? {
        cond.lock()
        defer { cond.unlock() }
        while !cancelled && next < count && next >= merged + window { cond.wait() }
        guard !cancelled && next < count else { return nil }
        next += 1
        return next - 1
    }

    func put(_ k: Int, _ r: Result<FrameResult, Error>) {
        cond.lock()
        slots[k % window] = r
        cond.broadcast()
        cond.unlock()
    }

    /// Frame `k`'s result, once a worker has put it; frames are waited for in order.
    func wait(_ k: Int) -> Result<FrameResult, Error> {
        cond.lock()
        defer { cond.unlock() }
        while slots[k % window] == nil { cond.wait() }
        let r = slots[k % window]!
        slots[k % window] = nil
        merged = k + 1
        cond.broadcast()
        return r
    }

    func cancel() {
        cond.lock()
        cancelled = true
        cond.broadcast()
        cond.unlock()
    }
}

/// Joins frame results in frame order: closes steps and groups left open at a frame's end with
/// the next frame of their vCPU, and delivers verdicts in sequence order.
struct FrameMerge {
    let replayer: Replayer
    let delivery: VerdictDelivery
    /// `--exit N`: only the verdict covering this record is delivered and counted.
    let target: TraceRecord?
    private(set) var summary = ReplaySummary()
    private var buffer: [Verdict] = []
    private var openSteps: [UInt16: OpenStep] = [:]
    private var openGroups: [UInt16: GroupCarry] = [:]
    /// A group carried over more frames than this many records is given up as incomplete:
    /// memory stays bounded by the settings, not by the guest.
    static let maxCarriedRecords = 1 << 16

    init(header: TraceHeader, delivery: VerdictDelivery, target: TraceRecord?, injectedFault: InjectedFault? = nil) {
        replayer = Replayer(header: header)
        replayer.delivery = .all
        replayer.injectedFault = injectedFault
        self.delivery = delivery
        self.target = target
    }

    private mutating func emit(_ v: Verdict) {
        if delivery == .all || v.kind.isFailure {
            buffer.append(v)
        } else {
            summary.add(v)
        }
    }

    mutating func add(_ f: FrameResult, nextFirstSeq: UInt64?, deliver: (Verdict) throws -> Void) throws {
        var r = f
        r.counts.merge(into: &summary)
        let vcpu = r.vcpu
        if let o = openSteps.removeValue(forKey: vcpu) { emit(StepCheck.close(o, next: r.head)) }
        if var g = openGroups.removeValue(forKey: vcpu) {
            if let c = r.continuation, c.group == g.first.seq, c.firstFragment == g.nextFragment,
               g.count + c.count <= Self.maxCarriedRecords {
                // The group's fragments go on at this frame's start: one instruction, one verdict.
                r.continuation = nil
                g.count += c.count
                g.nextFragment &+= UInt32(truncatingIfNeeded: c.count)
                g.accesses.append(contentsOf: c.accesses)
                g.memory.append(contentsOf: c.memory)
                if c.finished {
                    emit(replayer.replayCarried(g, last: c.last))
                } else {
                    openGroups[vcpu] = g
                }
            } else {
                emit(replayer.simple(g.first, .incomplete, records: g.count, note: "instruction group continues past the frame's end"))
            }
        }
        if let c = r.continuation { for v in c.orphanVerdicts { emit(v) } }
        buffer.append(contentsOf: r.verdicts)
        if let o = r.openStep { openSteps[vcpu] = o }
        if let g = r.openGroup { openGroups[vcpu] = g }
        // Everything before the next frame's first record (and before any step or group still open) is final.
        var limit = nextFirstSeq ?? UInt64.max
        for (_, o) in openSteps { limit = min(limit, o.verdict.seq) }
        for (_, g) in openGroups { limit = min(limit, g.first.seq) }
        try flush(below: limit, deliver)
    }

    mutating func finish(deliver: (Verdict) throws -> Void) throws {
        for (_, o) in openSteps.sorted(by: { $0.key < $1.key }) { emit(StepCheck.close(o, next: nil)) }
        for (_, g) in openGroups.sorted(by: { $0.key < $1.key }) {
            emit(replayer.simple(g.first, .incomplete, records: g.count, note: "instruction group continues past the frame's end"))
        }
        openSteps.removeAll()
        openGroups.removeAll()
        try flush(below: .max, deliver)
    }

    private mutating func flush(below limit: UInt64, _ deliver: (Verdict) throws -> Void) throws {
        guard !buffer.isEmpty else { return }
        // Sorted already unless frames of several vCPUs interleaved.
        var sorted = true
        for i in 1..<buffer.count where buffer[i - 1].seq > buffer[i].seq { sorted = false; break }
        if !sorted { buffer.sort { $0.seq < $1.seq } }
        var k = 0
        while k < buffer.count && buffer[k].seq < limit {
            let v = buffer[k]
            k += 1
            if let t = target {
                // The verdict covering N: same vCPU, starting at or before N and spanning it.
                guard v.vcpu == t.vcpu, v.seq <= t.seq, v.seq == t.seq || v.records > 1 && t.group == v.seq else { continue }
            }
            summary.add(v)
            try deliver(v)
        }
        if k == buffer.count { buffer.removeAll(keepingCapacity: true) } else { buffer.removeFirst(k) }
    }
}
