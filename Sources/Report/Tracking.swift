import Trace

/// Handling and guest time of each record, in TSC cycles, as a trace is read in order.
/// Handling (VMM) time = tscEntry − tscExit; guest time = tscExit − the previous record's
/// tscEntry on the same vCPU. Memory: one entry per vCPU, at most `maxVCPUs`.
struct RecordClock: Sendable {
    /// Per vCPU (index), the last re-entry TSC; 0 = unknown. vCPUs beyond `maxVCPUs` get no guest time.
    var lastEntry: [UInt64] = []
    let maxVCPUs: Int

    init(maxVCPUs: Int = 1_024) { self.maxVCPUs = maxVCPUs }

    /// A TSC value that can be real: 0 means "not taken", and values at or above 2^63 (a century
    /// of cycles) are sentinels or damage, not times.
    @inline(__always)
    static func valid(_ t: UInt64) -> Bool { t != 0 && t < 1 << 63 }

    @inline(__always)
    mutating func times(_ r: TraceRecord) -> (vmm: UInt64?, guest: UInt64?) {
        let entered = Self.valid(r.tscExit) && Self.valid(r.tscEntry) && r.tscEntry >= r.tscExit
        let vmm: UInt64? = entered ? r.tscEntry - r.tscExit : nil
        let v = Int(r.vcpu)
        guard v < maxVCPUs else { return (vmm, nil) }
        if v >= lastEntry.count { lastEntry.append(contentsOf: repeatElement(0, count: v + 1 - lastEntry.count)) }
        var guest: UInt64?
        let prev = lastEntry[v]
        if prev != 0, Self.valid(r.tscExit), r.tscExit >= prev { guest = r.tscExit - prev }
        // When the vCPU did not re-enter (or we cannot tell when), the next guest span is unknown.
        lastEntry[v] = entered ? r.tscEntry : 0
        return (vmm, guest)
    }
}

/// The marker convention (Samples/README.md): the guest writes P to port 0x502 when phase P
/// begins and 0x8000|P when it ends. Phases nest per vCPU; an exit belongs to the innermost
/// open phase. A phase runs from its begin marker's re-entry to its end marker's exit.
struct PhaseTracker: Sendable {
    static let endBit: UInt64 = 0x8000
    struct Open: Sendable { var phase: UInt64; var start: UInt64 }
    enum Event { case began(UInt64), ended(UInt64, cycles: UInt64), unmatchedEnd(UInt64) }

    /// Open phases per vCPU (index); vCPUs beyond `maxVCPUs` have no phases.
    var open: [[Open]] = []
    let maxVCPUs: Int
    init(maxVCPUs: Int = 1_024) { self.maxVCPUs = maxVCPUs }

    @inline(__always)
    func current(_ vcpu: UInt16) -> UInt64? { Int(vcpu) < open.count ? open[Int(vcpu)].last?.phase : nil }

    mutating func marker(_ r: TraceRecord) -> Event {
        let code = r.code
        let v = Int(r.vcpu)
        if code & Self.endBit != 0 {
            let p = code & ~Self.endBit
            guard v < open.count, let i = open[v].lastIndex(where: { $0.phase == p }) else { return .unmatchedEnd(p) }
            let begin = open[v][i].start
            open[v].removeSubrange(i...)
            return .ended(p, cycles: r.tscExit >= begin ? r.tscExit - begin : 0)
        }
        guard v < maxVCPUs else { return .began(code) }
        if v >= open.count { open.append(contentsOf: repeatElement([], count: v + 1 - open.count)) }
        // Bounded: a guest that never closes its phases cannot grow this without limit.
        if open[v].count >= 64 { open[v].removeFirst() }
        open[v].append(Open(phase: code, start: r.tscEntry != 0 ? r.tscEntry : r.tscExit))
        return .began(code)
    }
}
