import Trace
import X86

/// Counts and times of one group of exits (a reason, a port, a RIP, ...). Times are TSC cycles.
/// Handling (VMM) time of an exit = its tscEntry − tscExit; guest time = its tscExit − the
/// tscEntry of the previous record on the same vCPU (the guest ran in between).
public struct ExitStats: Sendable, Equatable {
    public var samples: UInt64 = 0
    /// Samples whose handling time is known (tscEntry ≥ tscExit and tscEntry ≠ 0).
    public var timed: UInt64 = 0
    public var vmmCycles: UInt64 = 0
    public var minVMM: UInt64 = .max
    public var maxVMM: UInt64 = 0
    /// Samples whose guest time is known (not the first record of a vCPU).
    public var guestTimed: UInt64 = 0
    public var guestCycles: UInt64 = 0
    /// Bytes moved by the accesses of these exits (port, MMIO views).
    public var bytes: UInt64 = 0
    /// Percentiles of handling time; only kept where a view shows them (fixed size each).
    public var histogram: LogLinearHistogram?

    public init(percentiles: Bool = false) {
        if percentiles { histogram = LogLinearHistogram() }
    }

    @inline(__always)
    mutating func add(vmm: UInt64?, guest: UInt64?, bytes b: UInt64 = 0) {
        samples &+= 1
        bytes &+= b
        if let v = vmm {
            timed &+= 1
            vmmCycles &+= v
            if v < minVMM { minVMM = v }
            if v > maxVMM { maxVMM = v }
            histogram?.record(v)
        }
        if let g = guest {
            guestTimed &+= 1
            guestCycles &+= g
        }
    }

    mutating func merge(_ o: ExitStats) {
        samples &+= o.samples
        timed &+= o.timed
        vmmCycles &+= o.vmmCycles
        minVMM = Swift.min(minVMM, o.minVMM)
        maxVMM = Swift.max(maxVMM, o.maxVMM)
        guestTimed &+= o.guestTimed
        guestCycles &+= o.guestCycles
        bytes &+= o.bytes
        if let h = o.histogram {
            if histogram == nil { histogram = LogLinearHistogram() }
            histogram?.merge(h)
        }
    }
}

/// A map of at most `capacity` keys; samples of keys that arrive once it is full go to one
/// `other` row, so memory stays bounded however many distinct ports, GPAs or RIPs a trace has,
/// and the rows still add up to the total.
struct BoundedMap<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    // Values live in an array, found through a key → position map; the last key hit is
    // remembered because exits come in runs (a loop hits one port and one RIP again and again).
    private var positions: [Key: Int] = [:]
    private(set) var keys: [Key] = []
    private(set) var values: [Value] = []
    var other: Value
    var otherUsed = false
    let capacity: Int
    private var lastKey: Key?
    private var lastPosition = 0

    init(capacity: Int, empty: Value) {
        self.capacity = capacity
        other = empty
    }

    /// The keys and values (built on demand, for the views).
    var entries: [Key: Value] { Dictionary(uniqueKeysWithValues: zip(keys, values)) }

    @inline(__always)
    mutating func update(_ key: Key, make: () -> Value, _ body: (inout Value) -> Void) {
        if let k = lastKey, k == key {
            body(&values[lastPosition])
        } else if let i = positions[key] {
            lastKey = key
            lastPosition = i
            body(&values[i])
        } else if keys.count < capacity {
            var v = make()
            body(&v)
            positions[key] = values.count
            lastKey = key
            lastPosition = values.count
            keys.append(key)
            values.append(v)
        } else {
            otherUsed = true
            body(&other)
        }
    }
}

/// What the vmexit view groups by: the SVM exit code, and KVM's reason beside it.
struct ReasonKey: Hashable, Sendable {
    var exitCode: UInt64
    var kvmExitReason: UInt32
}

/// Limits that keep the aggregate's memory fixed.
public struct AggregatorLimits: Sendable {
    public var ports = 65_536
    public var gpas = 65_536
    public var msrs = 4_096
    public var rips = 65_536
    public var phases = 4_096
    public var mnemonics = 4_096
    public var vcpus = 1_024
    public var timelineBins = 1_000
    public init() {}
}

/// Consumes a trace's records in order (plus the per-frame KVM counters and the header) and keeps
/// only fixed-size aggregates: streaming histograms for percentiles and capped maps for the
/// per-port/GPA/MSR/RIP views. `Report` turns the aggregate into tables.
public struct Aggregator: Sendable {
    public struct RIPInfo: Sendable {
        var stats = ExitStats()
        var bytes: [UInt8] = []
        var bits = 16
        var reason = ""
    }
    public struct PhaseStats: Sendable {
        /// Completed begin/end pairs.
        var occurrences: UInt64 = 0
        /// Sum of the durations of the completed pairs, in cycles.
        var durationCycles: UInt64 = 0
        var exits = ExitStats()
    }
    struct Bin: Sendable {
        var exits: UInt64 = 0
        var vmmCycles: UInt64 = 0
        var guestCycles: UInt64 = 0
        var completions: UInt64 = 0
    }

    public let header: TraceHeader
    public let vcpuFilter: UInt16?
    public let limits: AggregatorLimits

    // Record kinds seen (after the vCPU filter).
    public private(set) var records: UInt64 = 0
    /// Records per kind, indexed by the kind's raw value.
    var kinds = [UInt64](repeating: 0, count: 8)
    public func count(of kind: RecordKind) -> UInt64 { kinds[Int(kind.rawValue) & 7] }
    public private(set) var firstTSC: UInt64 = .max
    public private(set) var lastTSC: UInt64 = 0

    var total = ExitStats(percentiles: true)
    var reasons: BoundedMap<ReasonKey, ExitStats>
    var vcpus: BoundedMap<UInt16, ExitStats>
    var ports: BoundedMap<UInt32, ExitStats>        // port << 1 | isIn
    var gpas: BoundedMap<UInt64, ExitStats>         // gpa << 1 | isWrite
    var msrs: BoundedMap<UInt64, ExitStats>         // index << 1 | isWrite
    var rips: BoundedMap<UInt64, RIPInfo>
    var phases: BoundedMap<UInt64, PhaseStats>
    var outsidePhases = ExitStats()
    var completions: BoundedMap<String, ExitStats>
    /// Per vCPU (index, below `limits.vcpus`): the handling time of its last exit when that was an
    /// emulation failure (KVM_EXIT_INTERNAL_ERROR), which the completion after it is charged with:
    /// the completion record itself is written mid-handling and carries no time of its own.
    var pendingFailureVMM: [UInt64?] = []
    var unmatchedPhaseEnds: UInt64 = 0

    var clock: RecordClock
    var phaseTracker: PhaseTracker
    /// Last KVM counters seen per vCPU (they are cumulative, so the last frame's are the totals).
    var kvmCounters: [UInt16: [String: UInt64]] = [:]

    // Timeline: fixed number of bins; when time runs past the last one, pairs merge and the
    // width doubles.
    var binWidth: UInt64
    var bins: [Bin] = []
    /// Where interval 0 starts; by default the first record's TSC. Set it before adding records
    /// when records do not arrive in global time order (one vCPU's frames after another's).
    public var timelineOrigin: UInt64?

    /// Operation names and iteration counts per phase (the microbenchmark view), when known.
    public var phaseNames: [UInt64: String] = [:]
    public var phaseIterations: [UInt64: UInt64] = [:]

    public init(header: TraceHeader, vcpu: UInt16? = nil, timelineIntervalNs: UInt64? = nil,
                limits: AggregatorLimits = AggregatorLimits()) {
        self.header = header
        self.vcpuFilter = vcpu
        self.limits = limits
        clock = RecordClock(maxVCPUs: limits.vcpus)
        phaseTracker = PhaseTracker(maxVCPUs: limits.vcpus)
        vcpus = BoundedMap(capacity: limits.vcpus, empty: ExitStats(percentiles: true))
        reasons = BoundedMap(capacity: 4_096, empty: ExitStats(percentiles: true))
        ports = BoundedMap(capacity: limits.ports, empty: ExitStats())
        gpas = BoundedMap(capacity: limits.gpas, empty: ExitStats())
        msrs = BoundedMap(capacity: limits.msrs, empty: ExitStats())
        rips = BoundedMap(capacity: limits.rips, empty: RIPInfo())
        phases = BoundedMap(capacity: limits.phases, empty: PhaseStats())
        completions = BoundedMap(capacity: limits.mnemonics, empty: ExitStats())
        let hz = header.tscHz
        if let ns = timelineIntervalNs, ns > 0, hz > 0 {
            binWidth = Swift.max(1, UInt64((Double(ns) * Double(hz) / 1e9).rounded()))
        } else {
            // 1 ms by default (2^20 cycles when the TSC frequency is unknown).
            binWidth = hz > 0 ? Swift.max(1, hz / 1000) : 1 << 20
        }
    }

    public var exitCount: UInt64 { count(of: .exit) }

    // MARK: input

    /// KVM's per-vCPU counters of one frame.
    public mutating func add(frameStats s: VCPUFrameStats) {
        if let f = vcpuFilter, f != s.vcpu { return }
        if kvmCounters[s.vcpu] == nil && kvmCounters.count >= limits.vcpus { return }
        kvmCounters[s.vcpu] = s.counters
    }

    public mutating func add(_ r: TraceRecord) {
        if let f = vcpuFilter, f != r.vcpu { return }
        records &+= 1
        kinds[Int(r.kind.rawValue) & 7] &+= 1

        // Timing: handling time of this record, guest time since the previous one on its vCPU.
        let (vmm, guest) = clock.times(r)
        let entered = vmm != nil
        if RecordClock.valid(r.tscExit) {
            firstTSC = Swift.min(firstTSC, r.tscExit)
            lastTSC = Swift.max(lastTSC, entered ? r.tscEntry : r.tscExit)
        }

        let phase = phaseTracker.observe(r)
        if let e = phase.before { apply(e) }
        switch r.kind {
        case .exit: addExit(r, vmm: vmm, guest: guest, markerExit: phase.isMarkerExit)
        case .completion: addCompletion(r, vmm: vmm)
        case .marker, .step, .event, .gap: break
        }
        if let e = phase.after { apply(e) }
    }

    /// Applies the markers still waiting for their exit (Report does this on its copy).
    mutating func finishMarkers() {
        for e in phaseTracker.flush() { apply(e) }
    }

    private mutating func addExit(_ r: TraceRecord, vmm: UInt64?, guest: UInt64?, markerExit: Bool) {
        total.add(vmm: vmm, guest: guest)
        let v = Int(r.vcpu)
        if v < limits.vcpus {
            if v >= pendingFailureVMM.count { pendingFailureVMM += Array(repeating: nil, count: v + 1 - pendingFailureVMM.count) }
            pendingFailureVMM[v] = r.kvmExitReason == Self.kvmExitInternalError ? vmm : nil
        }
        reasons.update(ReasonKey(exitCode: r.exitCode.rawValue, kvmExitReason: r.kvmExitReason),
                       make: { ExitStats(percentiles: true) }) { $0.add(vmm: vmm, guest: guest) }
        vcpus.update(r.vcpu, make: { ExitStats(percentiles: true) }) { $0.add(vmm: vmm, guest: guest) }

        // Device side, in perf's --event manner.
        if let io = Self.portAccess(r) {
            let key = UInt32(io.port) << 1 | (io.isIn ? 1 : 0)
            ports.update(key, make: { ExitStats() }) { $0.add(vmm: vmm, guest: guest, bytes: io.bytes) }
        } else if let m = Self.mmioAccess(r) {
            // 63-bit GPAs are plenty (52-bit physical addresses); bit 0 of the key is the direction.
            let key = m.gpa << 1 | (m.isWrite ? 1 : 0)
            gpas.update(key, make: { ExitStats() }) { $0.add(vmm: vmm, guest: guest, bytes: m.bytes) }
        } else if let m = Self.msrAccess(r) {
            let key = UInt64(m.index) << 1 | (m.isWrite ? 1 : 0)
            msrs.update(key, make: { ExitStats() }) { $0.add(vmm: vmm, guest: guest) }
        }

        let rip = r.instructionStart != 0 ? r.instructionStart : r.state.rip
        rips.update(rip, make: {
            RIPInfo(bytes: Array(r.instructionBytes.prefix(15)), bits: codeBits(r.state), reason: reasonName(r))
        }) { $0.stats.add(vmm: vmm, guest: guest) }

        if !markerExit, let p = phaseTracker.current(r.vcpu) {
            phases.update(p, make: { PhaseStats() }) { $0.exits.add(vmm: vmm, guest: guest) }
        } else {
            outsidePhases.add(vmm: vmm, guest: guest)
        }

        if RecordClock.valid(r.tscExit) { addToTimeline(r.tscExit) { $0.exits &+= 1; $0.vmmCycles &+= vmm ?? 0; $0.guestCycles &+= guest ?? 0 } }
    }

    static let kvmExitInternalError: UInt32 = 17  // KVM_EXIT_INTERNAL_ERROR

    private mutating func addCompletion(_ r: TraceRecord, vmm: UInt64?) {
        let m = mnemonic(of: r)
        let v = Int(r.vcpu)
        var charged = vmm
        if v < pendingFailureVMM.count, let failure = pendingFailureVMM[v] {
            charged = failure
            pendingFailureVMM[v] = nil
        }
        completions.update(m, make: { ExitStats() }) { $0.add(vmm: charged, guest: nil) }
        if RecordClock.valid(r.tscExit) { addToTimeline(r.tscExit) { $0.completions &+= 1 } }
    }

    public static let phaseEndBit = PhaseTracker.endBit

    private mutating func apply(_ e: PhaseTracker.Event) {
        switch e {
        case .began(let p):
            phases.update(p, make: { PhaseStats() }) { _ in }
        case let .ended(p, cycles):
            phases.update(p, make: { PhaseStats() }) {
                $0.occurrences &+= 1
                $0.durationCycles &+= cycles
            }
        case .unmatchedEnd:
            unmatchedPhaseEnds &+= 1
        }
    }

    private mutating func addToTimeline(_ tsc: UInt64, _ body: (inout Bin) -> Void) {
        if timelineOrigin == nil { timelineOrigin = tsc }
        let origin = timelineOrigin ?? tsc
        let offset = tsc >= origin ? tsc - origin : 0
        var i = offset / binWidth
        while i >= UInt64(limits.timelineBins) {
            // Merge pairs and double the width: fixed memory whatever the trace's duration.
            var merged: [Bin] = []
            merged.reserveCapacity(bins.count / 2 + 1)
            var j = 0
            while j < bins.count {
                var b = bins[j]
                if j + 1 < bins.count {
                    let c = bins[j + 1]
                    b.exits &+= c.exits
                    b.vmmCycles &+= c.vmmCycles
                    b.guestCycles &+= c.guestCycles
                    b.completions &+= c.completions
                }
                merged.append(b)
                j += 2
            }
            bins = merged
            binWidth &*= 2
            i = offset / binWidth
        }
        if bins.count <= Int(i) { bins.append(contentsOf: repeatElement(Bin(), count: Int(i) - bins.count + 1)) }
        body(&bins[Int(i)])
    }

    // MARK: classification of the device side

    struct PortAccess { var port: UInt16; var isIn: Bool; var bytes: UInt64 }
    struct MMIOAccess { var gpa: UInt64; var isWrite: Bool; var bytes: UInt64 }
    struct MSRAccess { var index: UInt32; var isWrite: Bool }

    static func accessBytes(_ a: DeviceAccess) -> UInt64 { UInt64(a.size) * UInt64(Swift.max(a.count, 1)) }

    /// IOIO exits: port and direction from EXITINFO1 (APM 15.10.2) or, failing that, the access.
    static func portAccess(_ r: TraceRecord) -> PortAccess? {
        let a = r.accesses.first { $0.space == .port }
        if r.exitCode == .ioio, r.exitInfo1 & 0x70 != 0 {
            let io = IOIOInfo(exitInfo1: r.exitInfo1)
            return PortAccess(port: io.port, isIn: io.isIn, bytes: a.map(accessBytes) ?? UInt64(io.size))
        }
        guard let a else { return nil }
        return PortAccess(port: UInt16(truncatingIfNeeded: a.address), isIn: !a.isWrite, bytes: accessBytes(a))
    }

    /// MMIO (NPF) exits: the access's GPA, or EXITINFO2 with EXITINFO1's write bit.
    static func mmioAccess(_ r: TraceRecord) -> MMIOAccess? {
        if let a = r.accesses.first(where: { $0.space == .mmio }) {
            return MMIOAccess(gpa: a.address, isWrite: a.isWrite, bytes: accessBytes(a))
        }
        if r.exitCode == .npf {
            return MMIOAccess(gpa: r.exitInfo2, isWrite: r.exitInfo1 & NPFInfo.write != 0, bytes: 0)
        }
        return nil
    }

    /// MSR exits: the access's index, or ECX with EXITINFO1 (0 = RDMSR, 1 = WRMSR).
    static func msrAccess(_ r: TraceRecord) -> MSRAccess? {
        if let a = r.accesses.first(where: { $0.space == .msr }) {
            return MSRAccess(index: UInt32(truncatingIfNeeded: a.address), isWrite: a.isWrite)
        }
        if r.exitCode == .msr {
            return MSRAccess(index: UInt32(truncatingIfNeeded: r.state.rcx), isWrite: r.exitInfo1 & 1 != 0)
        }
        return nil
    }

    func mnemonic(of r: TraceRecord) -> String {
        if let d = Disassembly.decode(r.instructionBytes, bits: codeBits(r.state), rip: r.instructionStart) {
            return d.mnemonic
        }
        if !r.note.isEmpty { return r.note }
        return r.instructionBytes.isEmpty ? "(no bytes)" : "bytes " + Hex.bytes(r.instructionBytes.prefix(3), separator: UInt8(ascii: " "))
    }
}
