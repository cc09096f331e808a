import Trace

/// Handling and guest time of each record, in TSC cycles, as a trace is read in order.
/// Handling (VMM) time = tscEntry − tscExit; guest time = tscExit − the previous record's
/// tscEntry on the same vCPU. Memory: one entry per vCPU, at most `maxVCPUs`.
struct RecordClock: Sendable {
    var lastEntry: [UInt16: UInt64] = [:]
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
        var guest: UInt64?
        if let prev = lastEntry[r.vcpu], Self.valid(r.tscExit), r.tscExit >= prev { guest = r.tscExit - prev }
        if entered {
            if lastEntry[r.vcpu] != nil || lastEntry.count < maxVCPUs { lastEntry[r.vcpu] = r.tscEntry }
        } else {
            // The vCPU did not re-enter (or we cannot tell when): the next guest span is unknown.
            lastEntry[r.vcpu] = nil
        }
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

    var open: [UInt16: [Open]] = [:]
    let maxVCPUs: Int
    init(maxVCPUs: Int = 1_024) { self.maxVCPUs = maxVCPUs }

    func current(_ vcpu: UInt16) -> UInt64? { open[vcpu]?.last?.phase }

    mutating func marker(_ r: TraceRecord) -> Event {
        let code = r.code
        if code & Self.endBit != 0 {
            let p = code & ~Self.endBit
            guard var stack = open[r.vcpu], let i = stack.lastIndex(where: { $0.phase == p }) else {
                return .unmatchedEnd(p)
            }
            let begin = stack[i].start
            stack.removeSubrange(i...)
            open[r.vcpu] = stack
            return .ended(p, cycles: r.tscExit >= begin ? r.tscExit - begin : 0)
        }
        let start = r.tscEntry != 0 ? r.tscEntry : r.tscExit
        var stack = open[r.vcpu] ?? []
        // Bounded: a guest that never closes its phases cannot grow this without limit.
        if stack.count >= 64 { stack.removeFirst() }
        stack.append(Open(phase: code, start: start))
        if open[r.vcpu] != nil || open.count < maxVCPUs { open[r.vcpu] = stack }
        return .began(code)
    }
}
