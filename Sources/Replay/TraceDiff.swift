import Foundation
import Trace
import X86

/// One exit as `diff` aligns it: reason, the instruction's RIP and the device access (space,
/// address, size, direction). The data is compared separately: it may legitimately differ (time).
public struct ExitKey: Hashable, Sendable {
    public var reason: String
    public var rip: UInt64
    public var space: UInt8
    public var address: UInt64
    public var size: UInt8
    public var isWrite: Bool

    init(_ r: TraceRecord) {
        reason = r.reasonName
        rip = r.instructionBytes.isEmpty ? r.state.rip : r.instructionStart
        if let a = r.accesses.first {
            space = a.space.rawValue
            address = a.address
            size = a.size
            isWrite = a.isWrite
        } else {
            space = 0
            address = 0
            size = 0
            isWrite = false
        }
    }

    public var text: String {
        var s = "\(reason) at \(Hex.string(rip))"
        if space != 0 {
            let name = space == 1 ? "port" : (space == 2 ? "gpa" : "msr")
            s += " \(isWrite ? "write" : "read") \(name) \(Hex.string(address)) size \(size)"
        }
        return s
    }
}

/// Where two traces' exit streams first part, and how they differ overall.
public struct TraceDiffResult: Sendable {
    public struct Parting: Sendable {
        public var vcpu: UInt16
        public var seqA: UInt64?
        public var seqB: UInt64?
        public var a: String
        public var b: String
        /// The exits both had before they parted, on this vCPU.
        public var commonBefore: UInt64
    }
    /// Per reason and RIP: exits only in A, only in B, and aligned exits whose data differs.
    public struct Place: Hashable, Sendable, Comparable {
        public var reason: String
        public var rip: UInt64
        public init(reason: String, rip: UInt64) {
            self.reason = reason
            self.rip = rip
        }
        public static func < (a: Place, b: Place) -> Bool { a.reason != b.reason ? a.reason < b.reason : a.rip < b.rip }
    }
    public struct Counts: Sendable {
        public var onlyA: UInt64 = 0
        public var onlyB: UInt64 = 0
        public var dataDiffers: UInt64 = 0
        public var total: UInt64 { onlyA + onlyB + dataDiffers }
    }

    public var exitsA: UInt64 = 0
    public var exitsB: UInt64 = 0
    public var aligned: UInt64 = 0
    public var onlyA: UInt64 = 0
    public var onlyB: UInt64 = 0
    public var dataDiffers: UInt64 = 0
    /// The first parting of each vCPU (structure: an exit one trace has and the other does not).
    public var partings: [Parting] = []
    /// The first aligned exit whose data differs.
    public var firstDataDifference: Parting?
    public var places: [Place: Counts] = [:]

    public var identical: Bool { onlyA == 0 && onlyB == 0 && dataDiffers == 0 }
}

/// `exitscope diff`: aligns the exit streams of two traces of the same guest, vCPU by vCPU.
/// Streams are read record by record with a bounded look-ahead window, so memory stays bounded.
public enum TraceDiff {
    /// Exits looked ahead to find where two streams agree again after they part.
    public static let window = 256

    struct Stream {
        var it: RecordIterator
        var buffer: [TraceRecord] = []
        var ended = false
        init(_ it: RecordIterator) { self.it = it }
        /// Fills the look-ahead to `n` exits (fewer at the end).
        mutating func fill(_ n: Int) throws {
            while buffer.count < n && !ended {
                if let r = try it.next() {
                    if r.kind == .exit { buffer.append(r) }
                } else {
                    ended = true
                }
            }
        }
    }

    public static func run(_ a: TraceReader, _ b: TraceReader) throws -> TraceDiffResult {
        var result = TraceDiffResult()
        let vcpus = Set(a.vcpus.map(\.vcpu)).union(b.vcpus.map(\.vcpu)).sorted()
        for v in vcpus {
            var sa = Stream(a.records(vcpu: v))
            var sb = Stream(b.records(vcpu: v))
            var parted = false
            var common: UInt64 = 0
            func place(_ r: TraceRecord) -> TraceDiffResult.Place {
                let k = ExitKey(r)
                return TraceDiffResult.Place(reason: k.reason, rip: k.rip)
            }
            while true {
                try sa.fill(1)
                try sb.fill(1)
                if sa.buffer.isEmpty && sb.buffer.isEmpty { break }
                if let ra = sa.buffer.first, let rb = sb.buffer.first, ExitKey(ra) == ExitKey(rb) {
                    result.aligned += 1
                    result.exitsA += 1
                    result.exitsB += 1
                    if !parted { common += 1 }
                    if ra.accesses.map(\.data) != rb.accesses.map(\.data) {
                        result.dataDiffers += 1
                        result.places[place(ra), default: .init()].dataDiffers += 1
                        if result.firstDataDifference == nil {
                            result.firstDataDifference = .init(vcpu: v, seqA: ra.seq, seqB: rb.seq, a: describe(ra), b: describe(rb),
                                                               commonBefore: common)
                        }
                    }
                    sa.buffer.removeFirst()
                    sb.buffer.removeFirst()
                    continue
                }
                // The streams part here: find the nearest point where they agree again.
                if !parted {
                    parted = true
                    let ra = sa.buffer.first, rb = sb.buffer.first
                    result.partings.append(.init(vcpu: v, seqA: ra?.seq, seqB: rb?.seq, a: ra.map(describe) ?? "end of trace",
                                                 b: rb.map(describe) ?? "end of trace", commonBefore: common))
                }
                try sa.fill(window)
                try sb.fill(window)
                // No point of agreement within the window: everything in both windows differs.
                var skipA = sa.buffer.count, skipB = sb.buffer.count
                var best = Int.max
                var firstB: [ExitKey: Int] = [:]
                for (j, r) in sb.buffer.enumerated() {
                    let k = ExitKey(r)
                    if firstB[k] == nil { firstB[k] = j }
                }
                for (i, r) in sa.buffer.enumerated() where i < best {
                    if let j = firstB[ExitKey(r)], i + j < best {
                        best = i + j
                        skipA = i
                        skipB = j
                    }
                }
                for r in sa.buffer.prefix(skipA) { result.onlyA += 1; result.exitsA += 1; result.places[place(r), default: .init()].onlyA += 1 }
                for r in sb.buffer.prefix(skipB) { result.onlyB += 1; result.exitsB += 1; result.places[place(r), default: .init()].onlyB += 1 }
                sa.buffer.removeFirst(skipA)
                sb.buffer.removeFirst(skipB)
            }
        }
        return result
    }

    static func describe(_ r: TraceRecord) -> String {
        var s = "seq \(r.seq): " + ExitKey(r).text
        if let a = r.accesses.first, !a.data.isEmpty { s += " data " + Hex.bytes(a.data.prefix(16), separator: UInt8(ascii: " ")) }
        return s
    }

    public static func text(_ d: TraceDiffResult, pathA: String, pathB: String, top: Int = 20) -> String {
        var out = "A: \(pathA) (\(d.exitsA) exits)\nB: \(pathB) (\(d.exitsB) exits)\n"
        out += "aligned: \(d.aligned)  only in A: \(d.onlyA)  only in B: \(d.onlyB)  data differs: \(d.dataDiffers)\n"
        if d.identical {
            out += "the exit streams are the same\n"
            return out
        }
        for p in d.partings {
            out += "\nvCPU \(p.vcpu): the streams part after \(p.commonBefore) common exits\n"
            out += "  A: \(p.a)\n  B: \(p.b)\n"
        }
        if let f = d.firstDataDifference {
            out += "\nfirst data difference (vCPU \(f.vcpu), after \(f.commonBefore) common exits):\n  A: \(f.a)\n  B: \(f.b)\n"
        }
        let rows = d.places.sorted { $0.value.total != $1.value.total ? $0.value.total > $1.value.total : $0.key < $1.key }.prefix(top)
        out += "\ndifferences by reason and RIP:\n"
        out += "  reason        rip                  only A    only B  data differs\n"
        for (p, c) in rows {
            out += "  " + ReplayText.pad(p.reason, 12) + "  " + ReplayText.pad(Hex.string(p.rip), 18)
                + ReplayText.lpad("\(c.onlyA)", 8) + ReplayText.lpad("\(c.onlyB)", 10) + ReplayText.lpad("\(c.dataDiffers)", 14) + "\n"
        }
        if d.places.count > top { out += "  (\(d.places.count - top) more places)\n" }
        return out
    }

    public static func json(_ d: TraceDiffResult, pathA: String, pathB: String) -> String {
        func part(_ p: TraceDiffResult.Parting) -> String {
            "{\"vcpu\":\(p.vcpu),\"seq_a\":\(p.seqA.map(String.init) ?? "null"),\"seq_b\":\(p.seqB.map(String.init) ?? "null"),"
                + "\"common_before\":\(p.commonBefore),\"a\":\(jsonString(p.a)),\"b\":\(jsonString(p.b))}"
        }
        var s = "{\"a\":\(jsonString(pathA)),\"b\":\(jsonString(pathB)),\"exits_a\":\(d.exitsA),\"exits_b\":\(d.exitsB),"
        s += "\"aligned\":\(d.aligned),\"only_a\":\(d.onlyA),\"only_b\":\(d.onlyB),\"data_differs\":\(d.dataDiffers),"
        s += "\"identical\":\(d.identical),\"partings\":[" + d.partings.map(part).joined(separator: ",") + "],"
        s += "\"first_data_difference\":" + (d.firstDataDifference.map(part) ?? "null") + ","
        let places = d.places.sorted { $0.key < $1.key }.map { p, c in
            "{\"reason\":\(jsonString(p.reason)),\"rip\":\(jsonString(Hex.string(p.rip))),\"only_a\":\(c.onlyA),\"only_b\":\(c.onlyB),\"data_differs\":\(c.dataDiffers)}"
        }
        s += "\"places\":[" + places.joined(separator: ",") + "]}"
        return s
    }
}
