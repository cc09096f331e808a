import Trace

/// Reading a trace file into the aggregate or the database, frame by frame (bounded memory:
/// one decompressed frame at a time). Frames are taken in order of their first sequence
/// number, so each vCPU's records arrive in order, which is all that guest time, handling time
/// and phases need; the timeline's origin is the earliest first record over all vCPUs.
public enum TraceInput {
    /// Frame indices in order of first sequence number (of one vCPU if asked).
    static func frameOrder(_ reader: TraceReader, vcpu: UInt16?) -> [Int] {
        reader.frames.indices.filter { vcpu == nil || reader.frames[$0].vcpu == vcpu }
            .sorted { reader.frames[$0].firstSeq < reader.frames[$1].firstSeq }
    }

    /// Calls `record` for each record and `stats` for each frame's KVM counters.
    public static func read(_ reader: TraceReader, vcpu: UInt16? = nil, record: (TraceRecord) throws -> Void,
                            stats: (VCPUFrameStats) throws -> Void = { _ in }) throws {
        for i in frameOrder(reader, vcpu: vcpu) {
            let d = try reader.frameDecoder(i)
            while let r = try d.next() { try record(r) }
            for s in d.stats { try stats(s) }
        }
    }

    /// The earliest exit TSC among the first records of each vCPU (decodes one frame per vCPU).
    static func earliestTSC(_ reader: TraceReader, vcpu: UInt16?) throws -> UInt64? {
        var seen = Set<UInt16>()
        var earliest: UInt64?
        for i in frameOrder(reader, vcpu: vcpu) where reader.frames[i].recordCount > 0 {
            let v = reader.frames[i].vcpu
            guard seen.insert(v).inserted else { continue }
            let d = try reader.frameDecoder(i)
            while let r = try d.next() {
                if RecordClock.valid(r.tscExit) { earliest = min(earliest ?? .max, r.tscExit); break }
            }
        }
        return earliest
    }

    /// Aggregates a whole trace; `header` replaces the file's (e.g. with other guest symbols).
    public static func aggregate(_ reader: TraceReader, header: TraceHeader? = nil, vcpu: UInt16? = nil,
                                 timelineIntervalNs: UInt64? = nil,
                                 limits: AggregatorLimits = AggregatorLimits()) throws -> Aggregator {
        var a = Aggregator(header: header ?? reader.header, vcpu: vcpu, timelineIntervalNs: timelineIntervalNs, limits: limits)
        if let t = try earliestTSC(reader, vcpu: vcpu) { a.timelineOrigin = t }
        // A plain loop rather than read(record:): a record is a large value, and passing it
        // through closures costs copies on a path that runs 10^7 times.
        for i in frameOrder(reader, vcpu: vcpu) {
            let d = try reader.frameDecoder(i)
            while let r = try d.next() { a.add(r) }
            for s in d.stats { a.add(frameStats: s) }
        }
        return a
    }

    /// Ingests a whole trace as one run; `header` replaces the file's (e.g. with other guest symbols).
    @discardableResult
    public static func ingest(_ reader: TraceReader, header: TraceHeader? = nil, into db: ExitDatabase, name: String,
                              replace: Bool = false) throws -> Int64 {
        try db.ingest(header: header ?? reader.header, name: name, tracePath: reader.path, replace: replace) { sink in
            try read(reader, record: sink)
        }
    }
}
