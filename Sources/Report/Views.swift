import Trace
import X86

/// The views of a report, by stable name (`--view`, CSV file names, JSON keys).
public enum View: String, CaseIterable, Sendable {
    case summary, vmexit, ioport, mmio, msr, kvm, kvmCounters = "kvm_counters", rip, vcpu, phase,
         microbench, completion, timeline

    /// perf's `--event` names map to these views.
    public static let events: [String: View] = ["vmexit": .vmexit, "ioport": .ioport, "mmio": .mmio, "msr": .msr]

    public static func named(_ s: String) throws(ReportError) -> View {
        guard let v = View(rawValue: s) else { throw .unknownView(s, valid: allCases.map(\.rawValue)) }
        return v
    }

    public static func event(_ s: String) throws(ReportError) -> View {
        guard let v = events[s] else { throw .unknownEvent(s, valid: ["vmexit", "ioport", "mmio", "msr"]) }
        return v
    }

    /// The column a view is sorted by when no `--key` is given (nil: the aggregator's natural order).
    var defaultKey: String? {
        switch self {
        case .vmexit, .ioport, .mmio, .msr, .rip, .completion: return "samples"
        case .summary, .kvm, .kvmCounters, .vcpu, .phase, .microbench, .timeline: return nil
        }
    }
}

/// perf kvm stat's `--key` names, accepted beside the column names themselves.
let keyAliases: [String: String] = [
    "sample": "samples", "time": "vmm_ns", "mean": "mean_ns", "avg": "mean_ns", "max": "max_ns",
    "min": "min_ns", "p50": "p50_ns", "p99": "p99_ns", "guest": "guest_ns",
]

/// Turns an aggregate into tables. Times are shown in ns from the header's TSC frequency; when the
/// header does not know it (0), time cells are empty and a note says why.
public struct Report: Sendable {
    public let aggregate: Aggregator
    let symbols: SymbolTable

    public init(_ aggregate: Aggregator) {
        var a = aggregate
        a.finishMarkers()
        self.aggregate = a
        symbols = SymbolTable(aggregate.header.symbols)
    }

    var hz: UInt64 { aggregate.header.tscHz }

    func ns(_ cycles: UInt64) -> Cell {
        hz == 0 ? .none : .uint(UInt64((Double(cycles) * 1e9 / Double(hz)).rounded()))
    }
    func nsReal(_ cycles: Double) -> Cell {
        hz == 0 || !cycles.isFinite ? .none : .real(cycles * 1e9 / Double(hz))
    }
    func pct(_ part: UInt64, _ whole: UInt64) -> Cell {
        whole == 0 ? .real(0) : .real(Double(part) * 100 / Double(whole))
    }

    // MARK: tables

    public func table(_ v: View, key: String? = nil, top: Int? = nil) throws(ReportError) -> Table {
        var t: Table
        switch v {
        case .summary: t = summary()
        case .vmexit: t = vmexit()
        case .ioport: t = ioport()
        case .mmio: t = mmio()
        case .msr: t = msr()
        case .kvm: t = kvm()
        case .kvmCounters: t = kvmCounters()
        case .rip: t = rip()
        case .vcpu: t = vcpu()
        case .phase: t = phase()
        case .microbench: t = microbench()
        case .completion: t = completion()
        case .timeline: t = timeline()
        }
        if let k = key ?? v.defaultKey {
            let column = t.columnIndex(k) != nil ? k : (keyAliases[k] ?? k)
            t = try t.sorted(by: column)
        }
        if hz == 0 && v != .summary { t.notes.append("TSC frequency unknown: times not shown.") }
        return t.limited(to: top)
    }

    /// Every column name of every view, for CSV.md and its test.
    public static let columns: [View: [String]] = {
        let r = Report(Aggregator(header: TraceHeader()))
        var out: [View: [String]] = [:]
        for v in View.allCases { out[v] = (try? r.table(v))?.columnNames ?? [] }
        return out
    }()

    static let statColumns = ["samples", "samples_pct", "time_pct", "min_ns", "mean_ns", "max_ns"]

    /// samples, samples_pct, time_pct, min_ns, mean_ns, max_ns [, p50_ns, p99_ns], vmm_ns, guest_ns, guest_mean_ns
    func statCells(_ s: ExitStats, of total: ExitStats, percentiles: Bool) -> [Cell] {
        var c: [Cell] = [.uint(s.samples), pct(s.samples, total.samples), pct(s.vmmCycles, total.vmmCycles)]
        c.append(s.timed > 0 ? ns(s.minVMM) : .none)
        c.append(s.timed > 0 ? nsReal(Double(s.vmmCycles) / Double(s.timed)) : .none)
        c.append(s.timed > 0 ? ns(s.maxVMM) : .none)
        if percentiles {
            c.append(s.histogram?.value(atQuantile: 0.5).map(ns) ?? .none)
            c.append(s.histogram?.value(atQuantile: 0.99).map(ns) ?? .none)
        }
        c.append(ns(s.vmmCycles))
        c.append(ns(s.guestCycles))
        c.append(s.guestTimed > 0 ? nsReal(Double(s.guestCycles) / Double(s.guestTimed)) : .none)
        return c
    }

    func statColumns(percentiles: Bool) -> [Column] {
        var names = Self.statColumns
        if percentiles { names += ["p50_ns", "p99_ns"] }
        names += ["vmm_ns", "guest_ns", "guest_mean_ns"]
        return names.map { Column($0) }
    }

    func summary() -> Table {
        let a = aggregate, h = a.header
        let duration = a.lastTSC >= a.firstTSC && a.firstTSC != .max ? a.lastTSC - a.firstTSC : 0
        var rows: [[Cell]] = [
            [.text("host_cpu"), .text(h.hostCPU)],
            [.text("kernel"), .text(h.kernel)],
            [.text("kvm_backend"), .text(h.kvmBackend)],
            [.text("tsc_hz"), .uint(h.tscHz)],
            [.text("vcpus"), .uint(UInt64(h.vcpuCount))],
            [.text("image"), .text(h.imagePath)],
            [.text("image_sha256"), .text(h.imageSHA256)],
            [.text("start_time"), .text(h.startTime)],
            [.text("vcpu_filter"), a.vcpuFilter.map { .uint(UInt64($0)) } ?? .text("all")],
            [.text("records"), .uint(a.records)],
        ]
        for k in RecordKind.allCases { rows.append([.text(k.name + "s"), .uint(a.count(of: k))]) }
        rows.append([.text("duration_ns"), ns(duration)])
        rows.append([.text("vmm_ns"), ns(a.total.vmmCycles)])
        rows.append([.text("guest_ns"), ns(a.total.guestCycles)])
        let perSec: Cell = duration > 0 && hz > 0
            ? .real(Double(a.exitCount) * Double(hz) / Double(duration)) : .none
        rows.append([.text("exits_per_s"), perSec])
        if a.unmatchedPhaseEnds > 0 { rows.append([.text("unmatched_phase_ends"), .uint(a.unmatchedPhaseEnds)]) }
        return Table(name: "summary", title: "Trace summary", columns: [Column("item", .left), Column("value", .left)],
                     rows: rows)
    }

    func vmexit() -> Table {
        let a = aggregate
        var cols = [Column("reason", .left), Column("kvm_reason", .left)]
        cols += statColumns(percentiles: true)
        // Several KVM reasons can give one SVM code (and the other way round): one row per pair.
        var rows = zip(a.reasons.keys, a.reasons.values).map { k, v -> [Cell] in
            let name = k.exitCode == SVMExitCode.none.rawValue ? KVMExitReasonName.name(k.kvmExitReason)
                                                                : SVMExitCode(k.exitCode).name
            return [.text(name), .text(KVMExitReasonName.name(k.kvmExitReason))] + statCells(v, of: a.total, percentiles: true)
        }.sorted { ($0[0].plain, $0[1].plain) < ($1[0].plain, $1[1].plain) }
        if a.reasons.otherUsed { rows.append([.text("other"), .text("")] + statCells(a.reasons.other, of: a.total, percentiles: true)) }
        let totals = [.text("Total"), .text("")] + statCells(a.total, of: a.total, percentiles: true)
        let notes = [
            "Total samples: \(a.total.samples), total handling (VMM) time: \(ns(a.total.vmmCycles).plain) ns, "
                + "guest time: \(ns(a.total.guestCycles).plain) ns."
        ]
        return Table(name: "vmexit", title: "Analyze events for all VMs, \(vcpuText):", columns: cols,
                     rows: rows, totals: totals, notes: notes)
    }

    var vcpuText: String { aggregate.vcpuFilter.map { "VCPU \($0)" } ?? "all VCPUs" }

    /// Rows of a capped map, plus its "other" row when it overflowed.
    func keyedRows<K: Comparable>(_ m: BoundedMap<K, ExitStats>, key: (K) -> [Cell], other: [Cell],
                      percentiles: Bool = false) -> [[Cell]] {
        var total = ExitStats()
        for v in m.entries.values { total.merge(v) }
        if m.otherUsed { total.merge(m.other) }
        var rows = m.entries.sorted { $0.key < $1.key }.map { k, v in key(k) + statCells(v, of: total, percentiles: percentiles) + [.uint(v.bytes)] }
        if m.otherUsed { rows.append(other + statCells(m.other, of: total, percentiles: percentiles) + [.uint(m.other.bytes)]) }
        return rows
    }

    func ioport() -> Table {
        let rows = keyedRows(aggregate.ports, key: { k in
            [.text(hex(UInt64(k >> 1))), .text(k & 1 != 0 ? "in" : "out")]
        }, other: [.text("other"), .text("")])
        let cols = [Column("port", .left), Column("direction", .left)] + statColumns(percentiles: false) + [Column("bytes")]
        return Table(name: "ioport", title: "Analyze events for IO ports, \(vcpuText):", columns: cols,
                     rows: rows)
    }

    func mmio() -> Table {
        let rows = keyedRows(aggregate.gpas, key: { k in
            [.text(hex(k >> 1)), .text(k & 1 != 0 ? "write" : "read")]
        }, other: [.text("other"), .text("")])
        let cols = [Column("gpa", .left), Column("direction", .left)] + statColumns(percentiles: false) + [Column("bytes")]
        return Table(name: "mmio", title: "Analyze events for MMIO, \(vcpuText):", columns: cols,
                     rows: rows)
    }

    static let msrNames: [UInt32: String] = [
        MSRIndex.tsc: "TSC", MSRIndex.apicBase: "APIC_BASE", MSRIndex.sysenterCS: "SYSENTER_CS",
        MSRIndex.sysenterESP: "SYSENTER_ESP", MSRIndex.sysenterEIP: "SYSENTER_EIP", MSRIndex.pat: "PAT",
        MSRIndex.efer: "EFER", MSRIndex.star: "STAR", MSRIndex.lstar: "LSTAR", MSRIndex.cstar: "CSTAR",
        MSRIndex.sfmask: "SFMASK", MSRIndex.fsBase: "FS_BASE", MSRIndex.gsBase: "GS_BASE",
        MSRIndex.kernelGSBase: "KERNEL_GS_BASE", MSRIndex.tscAux: "TSC_AUX", 0x1A0: "MISC_ENABLE",
        0x6E0: "TSC_DEADLINE", 0x3A: "FEATURE_CONTROL", 0x48: "SPEC_CTRL", 0x49: "PRED_CMD",
        0x8B: "PATCH_LEVEL", 0xFE: "MTRRCAP", 0x2FF: "MTRR_DEF_TYPE", 0x4B564D00: "KVM_WALL_CLOCK_NEW",
        0x4B564D01: "KVM_SYSTEM_TIME_NEW",
    ]

    static func msrName(_ i: UInt32) -> String {
        if let n = msrNames[i] { return n }
        if (0x800...0x8FF).contains(i) { return "X2APIC_" + String(i - 0x800, radix: 16) }
        return ""
    }

    func msr() -> Table {
        let rows = keyedRows(aggregate.msrs, key: { k in
            let i = UInt32(truncatingIfNeeded: k >> 1)
            return [.text(hex(UInt64(i))), .text(Self.msrName(i)), .text(k & 1 != 0 ? "wrmsr" : "rdmsr")]
        }, other: [.text("other"), .text(""), .text("")])
        let cols = [Column("msr", .left), Column("name", .left), Column("direction", .left)]
            + statColumns(percentiles: false) + [Column("bytes")]
        return Table(name: "msr", title: "Analyze events for MSRs, \(vcpuText):", columns: cols,
                     rows: rows).droppingColumn("bytes")
    }

    /// The counters this view shows as columns (KVM's x86 vCPU stat names); all of them are in kvm_counters.
    static let kvmColumns = ["io_exits", "mmio_exits", "halt_exits", "irq_exits", "irq_window_exits",
                             "signal_exits", "insn_emulation", "insn_emulation_fail", "hypercalls"]

    func kvm() -> Table {
        let a = aggregate
        var rows: [[Cell]] = []
        var vcpuIDs = Set(a.kvmCounters.keys)
        for k in a.vcpus.entries.keys { vcpuIDs.insert(k) }
        for v in vcpuIDs.sorted() {
            let c = a.kvmCounters[v]
            let user = a.vcpus.entries[v]?.samples ?? 0
            var row: [Cell] = [.uint(UInt64(v))]
            if let kvmExits = c?["exits"] {
                let inKernel = kvmExits >= user ? kvmExits - user : 0
                row += [.uint(kvmExits), .uint(user), .uint(inKernel), pct(inKernel, kvmExits)]
            } else {
                row += [.none, .uint(user), .none, .none]
            }
            for n in Self.kvmColumns { row.append(c?[n].map { .uint($0) } ?? .none) }
            rows.append(row)
        }
        let cols = ["vcpu", "kvm_exits", "userspace_exits", "in_kernel_exits", "in_kernel_pct"] + Self.kvmColumns
        return Table(name: "kvm", title: "Exits handled in the kernel vs in userspace (KVM's counters), \(vcpuText):",
                     columns: cols.map { Column($0) }, rows: rows,
                     notes: a.kvmCounters.isEmpty ? ["The trace holds no KVM counters."] : [])
    }

    func kvmCounters() -> Table {
        var rows: [[Cell]] = []
        for (v, c) in aggregate.kvmCounters.sorted(by: { $0.key < $1.key }) {
            for (k, n) in c.sorted(by: { $0.key < $1.key }) { rows.append([.uint(UInt64(v)), .text(k), .uint(n)]) }
        }
        return Table(name: "kvm_counters", title: "KVM's per-vCPU counters at the end of the trace:",
                     columns: [Column("vcpu"), Column("counter", .left), Column("value")], rows: rows)
    }

    func rip() -> Table {
        let a = aggregate
        var total = ExitStats()
        for v in a.rips.entries.values { total.merge(v.stats) }
        if a.rips.otherUsed { total.merge(a.rips.other.stats) }
        var rows: [[Cell]] = a.rips.entries.sorted { $0.key < $1.key }.map { rip, info in
            let d = Disassembly.decode(info.bytes, bits: info.bits, rip: rip)
            return [.text(hex(rip)), .text(symbols.describe(rip) ?? ""), .text(info.reason),
                    .text(d?.intel ?? ""), .text(Hex.bytes(info.bytes, separator: UInt8(ascii: " ")))]
                + statCells(info.stats, of: total, percentiles: false)
        }
        if a.rips.otherUsed {
            rows.append([.text("other"), .text(""), .text(""), .text(""), .text("")]
                + statCells(a.rips.other.stats, of: total, percentiles: false))
        }
        let cols = [Column("rip", .left), Column("symbol", .left), Column("reason", .left),
                    Column("instruction", .left), Column("bytes", .left)] + statColumns(percentiles: false)
        return Table(name: "rip", title: "Hot guest RIPs (exits by instruction), \(vcpuText):", columns: cols, rows: rows)
    }

    func vcpu() -> Table {
        let a = aggregate
        var rows = a.vcpus.entries.sorted { $0.key < $1.key }.map { k, v in
            [.text(String(k))] + statCells(v, of: a.total, percentiles: true)
        }
        if a.vcpus.otherUsed { rows.append([.text("other")] + statCells(a.vcpus.other, of: a.total, percentiles: true)) }
        return Table(name: "vcpu", title: "Exits per vCPU:", columns: [Column("vcpu", .left)] + statColumns(percentiles: true),
                     rows: rows, totals: [.text("Total")] + statCells(a.total, of: a.total, percentiles: true))
    }

    func phaseName(_ p: UInt64) -> String {
        if let n = aggregate.phaseNames[p] { return n }
        // Samples/adams-agesen.S numbers its operations 1...7.
        if aggregate.header.imagePath.contains("adams-agesen"), p >= 1, Int(p) <= Self.adamsAgesen.count {
            return Self.adamsAgesen[Int(p) - 1]
        }
        return ""
    }

    static let adamsAgesen = ["syscall", "in", "cr8wr", "callret", "pgfault", "divzero", "ptemod"]

    func phase() -> Table {
        let a = aggregate
        var rows: [[Cell]] = a.phases.entries.sorted { $0.key < $1.key }.map { p, s in
            let mean: Cell = s.occurrences > 0 ? nsReal(Double(s.durationCycles) / Double(s.occurrences)) : .none
            return [.text(String(p)), .text(phaseName(p)), .uint(s.occurrences), ns(s.durationCycles), mean]
                + statCells(s.exits, of: a.total, percentiles: false)
        }
        if a.phases.otherUsed {
            rows.append([.text("other"), .text(""), .uint(a.phases.other.occurrences), ns(a.phases.other.durationCycles), .none]
                + statCells(a.phases.other.exits, of: a.total, percentiles: false))
        }
        rows.append([.text("-"), .text("(outside phases)"), .none, .none, .none]
            + statCells(a.outsidePhases, of: a.total, percentiles: false))
        let cols = [Column("phase", .left), Column("name", .left), Column("occurrences"), Column("duration_ns"),
                    Column("mean_duration_ns")] + statColumns(percentiles: false)
        var notes: [String] = []
        if a.unmatchedPhaseEnds > 0 { notes.append("\(a.unmatchedPhaseEnds) phase end markers had no matching begin.") }
        return Table(name: "phase", title: "Exits per phase (markers on port 0x502), \(vcpuText):", columns: cols,
                     rows: rows, notes: notes)
    }

    /// Adams & Agesen (ASPLOS 2006), table of operation costs: each phase's duration over its
    /// iterations. The sample brackets every single operation with its markers (Samples/README.md),
    /// so an operation is one begin/end pair unless `--iterations` says otherwise. A bracket also
    /// holds the end marker's own instructions up to its OUT's exit.
    func microbench() -> Table {
        let a = aggregate
        var rows: [[Cell]] = []
        for (p, s) in a.phases.entries.sorted(by: { $0.key < $1.key }) where s.occurrences > 0 {
            let given = a.phaseIterations[p]
            let iterations = given ?? s.occurrences
            let perOp = Double(s.durationCycles) / Double(iterations)
            rows.append([
                .text(String(p)), .text(phaseName(p)), .uint(iterations), .text(given != nil ? "option" : "markers"),
                ns(s.durationCycles), .uint(s.durationCycles), .real(perOp), nsReal(perOp),
                .real(Double(s.exits.samples) / Double(iterations)),
            ])
        }
        let cols = [Column("phase", .left), Column("operation", .left), Column("iterations"),
                    Column("iterations_from", .left), Column("duration_ns"), Column("duration_cycles"),
                    Column("cycles_per_op"), Column("ns_per_op"), Column("exits_per_op")]
        return Table(name: "microbench", title: "Cost of each operation (Adams & Agesen, ASPLOS 2006), measured on this host:",
                     columns: cols, rows: rows)
    }

    func completion() -> Table {
        let a = aggregate
        var total = ExitStats()
        for v in a.completions.entries.values { total.merge(v) }
        if a.completions.otherUsed { total.merge(a.completions.other) }
        var rows = a.completions.entries.sorted { $0.key < $1.key }.map { k, v in
            [.text(k)] + statCells(v, of: total, percentiles: false)
        }
        if a.completions.otherUsed { rows.append([.text("other")] + statCells(a.completions.other, of: total, percentiles: false)) }
        return Table(name: "completion", title: "Instructions the VMM completed itself, by mnemonic, \(vcpuText):",
                     columns: [Column("mnemonic", .left)] + statColumns(percentiles: false).filter { !$0.name.hasPrefix("guest") },
                     rows: rows.map { Array($0.dropLast(2)) })
    }

    func timeline() -> Table {
        let a = aggregate
        var rows: [[Cell]] = []
        for (i, b) in a.bins.enumerated() {
            let start = UInt64(i) &* a.binWidth
            rows.append([.uint(UInt64(i)), ns(start), ns(start &+ a.binWidth), .uint(b.exits), .uint(b.completions),
                         ns(b.vmmCycles), ns(b.guestCycles)])
        }
        let cols = ["interval", "start_ns", "end_ns", "exits", "completions", "vmm_ns", "guest_ns"]
        return Table(name: "timeline", title: "Exits per interval of \(ns(a.binWidth).plain) ns from the first record:",
                     columns: cols.map { Column($0) }, rows: rows)
    }
}

extension Table {
    func droppingColumn(_ name: String) -> Table {
        guard let i = columnIndex(name) else { return self }
        var t = self
        t.columns.remove(at: i)
        t.rows = rows.map { r in var r = r; if i < r.count { r.remove(at: i) }; return r }
        if var tot = totals, i < tot.count { tot.remove(at: i); t.totals = tot }
        return t
    }
}

extension Report {
    /// The keys `--key` accepts for a view: its columns and perf's aliases of them.
    public static func validKeys(_ v: View) -> [String] {
        let cols = columns[v] ?? []
        return cols + keyAliases.filter { cols.contains($0.value) }.keys.sorted()
    }

    public static func accepts(key: String, view v: View) -> Bool { validKeys(v).contains(key) }
}
