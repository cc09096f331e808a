import Trace
import X86

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
        // Only exits and steps are KVM_RUN returns; markers, events, gaps and completions are
        // notes the VMM made in between, with times inside a handling span.
        guard r.kind == .exit || r.kind == .step else { return (vmm, nil) }
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
///
/// A marker can reach the trace twice: as the OUT's own exit record and as a record of kind
/// `marker` (the recorder writes that one just before the exit, with a time inside the exit's
/// handling). The exit is preferred (its times are the OUT's); a marker record counts only when
/// no OUT exit with its value is next to it, so traces with either or both read the same.
struct PhaseTracker: Sendable {
    static let endBit: UInt64 = 0x8000
    static let port: UInt64 = 0x502
    struct Open: Sendable { var phase: UInt64; var start: UInt64 }
    struct Marker: Sendable { var code: UInt64; var tscExit: UInt64; var tscEntry: UInt64 }
    enum Event { case began(UInt64), ended(UInt64, cycles: UInt64), unmatchedEnd(UInt64) }

    /// Open phases per vCPU (index); vCPUs beyond `maxVCPUs` have no phases.
    var open: [[Open]] = []
    /// Per vCPU: a marker record waiting to see whether its OUT exit follows.
    var pending: [Marker?] = []
    /// Per vCPU: the value of the marker OUT exit just seen (its marker record may follow).
    var lastExitCode: [UInt64?] = []
    let maxVCPUs: Int
    init(maxVCPUs: Int = 1_024) { self.maxVCPUs = maxVCPUs }

    @inline(__always)
    func current(_ vcpu: UInt16) -> UInt64? { Int(vcpu) < open.count ? open[Int(vcpu)].last?.phase : nil }

    /// The value an exit wrote to the marker port, if it is such an OUT.
    @inline(__always)
    static func markerValue(_ r: TraceRecord) -> UInt64? {
        guard r.kind == .exit else { return nil }
        if r.exitCode == .ioio, r.exitInfo1 & 0x70 != 0 {
            let io = IOIOInfo(exitInfo1: r.exitInfo1)
            guard UInt64(io.port) == port, !io.isIn else { return nil }
            if let a = r.accesses.first(where: { $0.space == .port }) { return a.value }
            return r.state.rax & (io.size >= 4 ? 0xFFFF_FFFF : (1 << (8 * UInt64(io.size))) - 1)
        }
        if let a = r.accesses.first, a.space == .port, a.address == port, a.isWrite { return a.value }
        return nil
    }

    /// Feeds one record (every record, in each vCPU's order). Returns the phase event to apply
    /// before the record is counted, the one to apply after it, and whether the record is a
    /// marker OUT itself (counted outside phases: it is the bracket, not the work).
    @inline(__always)
    mutating func observe(_ r: TraceRecord) -> (before: Event?, after: Event?, isMarkerExit: Bool) {
        let v = Int(r.vcpu)
        guard v < maxVCPUs else { return (nil, nil, false) }
        if v >= open.count {
            let n = v + 1 - open.count
            open.append(contentsOf: repeatElement([], count: n))
            pending.append(contentsOf: repeatElement(nil, count: n))
            lastExitCode.append(contentsOf: repeatElement(nil, count: n))
        }
        if r.kind == .marker {
            if lastExitCode[v] == r.code {           // its exit came first and counted already
                lastExitCode[v] = nil
                return (nil, nil, false)
            }
            let earlier = pending[v].map { apply($0, vcpu: v) }
            pending[v] = Marker(code: r.code, tscExit: r.tscExit, tscEntry: r.tscEntry)
            return (earlier, nil, false)
        }
        let value = Self.markerValue(r)
        var before: Event?
        if let m = pending[v] {
            pending[v] = nil
            if value != m.code { before = apply(m, vcpu: v) }   // else the exit stands for it
        }
        lastExitCode[v] = value
        guard let value else { return (before, nil, false) }
        return (before, apply(Marker(code: value, tscExit: r.tscExit, tscEntry: r.tscEntry), vcpu: v), true)
    }

    /// Applies the markers still waiting (at the end of a trace).
    mutating func flush() -> [Event] {
        var out: [Event] = []
        for v in pending.indices { if let m = pending[v] { out.append(apply(m, vcpu: v)); pending[v] = nil } }
        return out
    }

    private mutating func apply(_ m: Marker, vcpu v: Int) -> Event {
        if m.code & Self.endBit != 0 {
            let p = m.code & ~Self.endBit
            guard let i = open[v].lastIndex(where: { $0.phase == p }) else { return .unmatchedEnd(p) }
            let begin = open[v][i].start
            open[v].removeSubrange(i...)
            return .ended(p, cycles: m.tscExit >= begin ? m.tscExit - begin : 0)
        }
        // Bounded: a guest that never closes its phases cannot grow this without limit.
        if open[v].count >= 64 { open[v].removeFirst() }
        open[v].append(Open(phase: m.code, start: RecordClock.valid(m.tscEntry) ? m.tscEntry : m.tscExit))
        return .began(m.code)
    }
}
