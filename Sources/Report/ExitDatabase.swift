import Foundation
import GRDB
import Trace
import X86

/// One replay verdict, as the Replay module hands it to the CLI: a plain row so that Report
/// does not depend on Replay. `verdict` is Replay's verdict kind ("match", "divergence",
/// "unrecorded", "not-replayable", ...); `reference` names what the emulator was compared with ("cpu",
/// "kvm-emulator"); `detail` is free text (the first differing field, for instance).
public struct VerdictRow: Equatable, Sendable {
    public var seq: UInt64
    public var verdict: String
    public var reference: String
    public var detail: String
    public init(seq: UInt64, verdict: String, reference: String = "", detail: String = "") {
        self.seq = seq
        self.verdict = verdict
        self.reference = reference
        self.detail = detail
    }
}

/// A run as the database holds it.
public struct RunRow: Equatable, Sendable {
    public var id: Int64
    public var name: String
    public var tracePath: String
    public var exits: Int64
    public var records: Int64
}

/// The SQLite database of `exitscope ingest` (schema in Sources/Report/SCHEMA.md): one row per
/// run, one per record, one per replay verdict. Ingestion streams: records go through one
/// prepared statement inside one transaction per run, whatever the trace's length.
public final class ExitDatabase {
    public let path: String
    let queue: DatabaseQueue

    public init(path: String) throws(ReportError) {
        self.path = path
        do {
            queue = try DatabaseQueue(path: path)
            var m = DatabaseMigrator()
            m.registerMigration("v1") { db in try db.execute(sql: Self.schemaV1) }
            try m.migrate(queue)
        } catch {
            throw .database("cannot open \(path): \(error)")
        }
    }

    static let schemaV1 = """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            trace_path TEXT NOT NULL,
            ingested_at TEXT NOT NULL,
            format_version INTEGER NOT NULL,
            tsc_hz INTEGER NOT NULL,
            host_cpu TEXT NOT NULL,
            kernel TEXT NOT NULL,
            kvm_backend TEXT NOT NULL,
            vcpu_count INTEGER NOT NULL,
            image_path TEXT NOT NULL,
            image_sha256 TEXT NOT NULL,
            command_line TEXT NOT NULL,
            options TEXT NOT NULL,
            capabilities TEXT NOT NULL,
            start_time TEXT NOT NULL,
            records INTEGER NOT NULL DEFAULT 0,
            exits INTEGER NOT NULL DEFAULT 0,
            duration_ns INTEGER
        );
        CREATE TABLE exits (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            vcpu INTEGER NOT NULL,
            vcpu_seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            reason TEXT,
            kvm_reason TEXT,
            exit_code INTEGER,
            exit_info1 INTEGER,
            exit_info2 INTEGER,
            rip INTEGER NOT NULL,
            instruction_start INTEGER NOT NULL,
            instruction_bytes TEXT NOT NULL,
            instruction TEXT,
            symbol TEXT,
            visibility TEXT NOT NULL,
            instruction_group INTEGER NOT NULL,
            fragment INTEGER NOT NULL,
            port INTEGER,
            gpa INTEGER,
            msr INTEGER,
            direction TEXT,
            access_size INTEGER,
            access_count INTEGER,
            data INTEGER,
            tsc_exit INTEGER NOT NULL,
            tsc_entry INTEGER NOT NULL,
            vmm_ns INTEGER,
            guest_ns INTEGER,
            phase INTEGER,
            code INTEGER NOT NULL,
            note TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID;
        CREATE INDEX exits_reason ON exits(run_id, kind, reason);
        CREATE INDEX exits_rip ON exits(run_id, rip);
        CREATE INDEX exits_port ON exits(run_id, port) WHERE port IS NOT NULL;
        CREATE INDEX exits_gpa ON exits(run_id, gpa) WHERE gpa IS NOT NULL;
        CREATE INDEX exits_msr ON exits(run_id, msr) WHERE msr IS NOT NULL;
        CREATE INDEX exits_vcpu ON exits(run_id, vcpu, vcpu_seq);
        CREATE INDEX exits_phase ON exits(run_id, phase) WHERE phase IS NOT NULL;
        CREATE TABLE verdicts (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            verdict TEXT NOT NULL,
            reference TEXT NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID;
        CREATE INDEX verdicts_verdict ON verdicts(run_id, verdict);
        """

    /// SQLite integers are signed: 64-bit values (kernel RIPs, EXITINFO) keep their bit pattern.
    static func int(_ v: UInt64) -> Int64 { Int64(bitPattern: v) }

    static func jsonText(_ v: Any) -> String {
        guard JSONSerialization.isValidJSONObject(v),
              let d = try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys]) else { return "{}" }
        return String(decoding: d, as: UTF8.self)
    }

    // MARK: ingest

    /// Ingests one trace as run `name`. `feed` reads the trace and hands each record to the sink
    /// in order; everything happens in one transaction, so a failing feed leaves no half run.
    /// With `replace`, an existing run of that name is deleted first.
    @discardableResult
    public func ingest(header h: TraceHeader, name: String, tracePath: String, replace: Bool = false,
                       feed: ((TraceRecord) throws -> Void) throws -> Void) throws -> Int64 {
        let symbols = SymbolTable(h.symbols)
        let hz = h.tscHz
        func ns(_ c: UInt64?) -> Int64? {
            guard let c, hz > 0 else { return nil }
            return Int64(clamping: UInt64((Double(c) * 1e9 / Double(hz)).rounded()))
        }
        do {
            return try queue.write { db -> Int64 in
                if let existing = try Int64.fetchOne(db, sql: "SELECT id FROM runs WHERE name = ?", arguments: [name]) {
                    guard replace else {
                        throw ReportError.badArgument("run '\(name)' is already in \(path); give another --name or --replace")
                    }
                    try db.execute(sql: "DELETE FROM verdicts WHERE run_id = ?", arguments: [existing])
                    try db.execute(sql: "DELETE FROM exits WHERE run_id = ?", arguments: [existing])
                    try db.execute(sql: "DELETE FROM runs WHERE id = ?", arguments: [existing])
                }
                let now = ISO8601DateFormatter().string(from: Date())
                try db.execute(sql: """
                    INSERT INTO runs (name, trace_path, ingested_at, format_version, tsc_hz, host_cpu, kernel,
                        kvm_backend, vcpu_count, image_path, image_sha256, command_line, options, capabilities, start_time)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, arguments: [name, tracePath, now, Int64(h.formatVersion), Self.int(h.tscHz), h.hostCPU, h.kernel,
                                     h.kvmBackend, Int64(h.vcpuCount), h.imagePath, h.imageSHA256,
                                     Self.jsonText(h.commandLine), Self.jsonText(h.options),
                                     Self.jsonText(h.capabilities.mapValues { NSNumber(value: $0) }), h.startTime])
                let runID = db.lastInsertedRowID
                let insert = try db.makeStatement(sql: """
                    INSERT INTO exits VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                        ?, ?, ?, ?, ?, ?, ?)
                    """)
                var clock = RecordClock()
                var phases = PhaseTracker()
                var records: Int64 = 0, exits: Int64 = 0
                var first = UInt64.max, last: UInt64 = 0
                // Decoding for display repeats on hot loops: remember the last few RIPs' text.
                var decoded: [UInt64: (bytes: [UInt8], text: String?)] = [:]

                try feed { r in
                    let (vmm, guest) = clock.times(r)
                    let phase = phases.observe(r)
                    // The phase column: the one open when the record is counted (marker OUTs: none).
                    let openPhase = phase.isMarkerExit ? nil : phases.current(r.vcpu)
                    records += 1
                    if r.kind == .exit { exits += 1 }
                    if RecordClock.valid(r.tscExit) {
                        first = min(first, r.tscExit)
                        last = max(last, vmm != nil ? r.tscEntry : r.tscExit)
                    }
                    let rip = r.instructionStart != 0 ? r.instructionStart : r.state.rip
                    var text: String?
                    if !r.instructionBytes.isEmpty {
                        if let c = decoded[rip], c.bytes == r.instructionBytes {
                            text = c.text
                        } else {
                            text = Disassembly.decode(r.instructionBytes, bits: codeBits(r.state), rip: rip)?.intel
                            if decoded.count >= 4_096 { decoded.removeAll(keepingCapacity: true) }
                            decoded[rip] = (r.instructionBytes, text)
                        }
                    }
                    var port: Int64?, gpa: Int64?, msr: Int64?, dir: String?, size: Int64?, count: Int64?, data: Int64?
                    let isExit = r.kind == .exit
                    if isExit, let io = Aggregator.portAccess(r) {
                        port = Int64(io.port)
                        dir = io.isIn ? "in" : "out"
                    } else if isExit, let m = Aggregator.mmioAccess(r) {
                        gpa = Self.int(m.gpa)
                        dir = m.isWrite ? "write" : "read"
                    } else if isExit, let m = Aggregator.msrAccess(r) {
                        msr = Int64(m.index)
                        dir = m.isWrite ? "wrmsr" : "rdmsr"
                    }
                    if let a = r.accesses.first {
                        size = Int64(a.size)
                        count = Int64(a.count)
                        data = Self.int(a.value)
                    }
                    let hasExit = r.kind == .exit || r.exitCode != .none || r.kvmExitReason != 0
                    let args: [(any DatabaseValueConvertible)?] = [
                        runID, Self.int(r.seq), Int64(r.vcpu), Self.int(r.vcpuSeq), r.kind.name,
                        hasExit ? reasonName(r) : nil, hasExit ? KVMExitReasonName.name(r.kvmExitReason) : nil,
                        r.exitCode == .none ? nil : Self.int(r.exitCode.rawValue),
                        hasExit ? Self.int(r.exitInfo1) : nil, hasExit ? Self.int(r.exitInfo2) : nil,
                        Self.int(rip), Self.int(r.instructionStart), Hex.bytes(r.instructionBytes, separator: UInt8(ascii: " ")), text,
                        symbols.describe(rip), String(describing: r.visibility), Self.int(r.group), Int64(r.fragment),
                        port, gpa, msr, dir, size, count, data,
                        Self.int(r.tscExit), Self.int(r.tscEntry), ns(vmm), ns(guest),
                        openPhase.map(Self.int), Self.int(r.code), r.note,
                    ]
                    try insert.execute(arguments: StatementArguments(args))
                }
                let duration: Int64? = first <= last ? ns(last - first) : nil
                try db.execute(sql: "UPDATE runs SET records = ?, exits = ?, duration_ns = ? WHERE id = ?",
                               arguments: [records, exits, duration, runID])
                return runID
            }
        } catch let e as ReportError {
            throw e
        } catch let e as DatabaseError {
            throw ReportError.database(e.description)
        }
    }

    /// Stores replay verdicts for a run (replacing earlier verdicts of the same records).
    public func addVerdicts(run: String, _ rows: [VerdictRow]) throws(ReportError) {
        let id = try runID(run)
        do {
            try queue.write { db in
                let st = try db.makeStatement(sql: "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?)")
                for v in rows { try st.execute(arguments: [id, Self.int(v.seq), v.verdict, v.reference, v.detail]) }
            }
        } catch {
            throw .database("\(error)")
        }
    }

    // MARK: queries

    public func runs() throws(ReportError) -> [RunRow] {
        do {
            return try queue.read { db in
                try Row.fetchAll(db, sql: "SELECT id, name, trace_path, exits, records FROM runs ORDER BY id").map {
                    RunRow(id: $0["id"], name: $0["name"], tracePath: $0["trace_path"], exits: $0["exits"],
                           records: $0["records"])
                }
            }
        } catch {
            throw .database("\(error)")
        }
    }

    /// A run by name, or by its numeric id.
    public func runID(_ nameOrID: String) throws(ReportError) -> Int64 {
        let all = try runs()
        if let r = all.first(where: { $0.name == nameOrID }) { return r.id }
        if let n = Int64(nameOrID), all.contains(where: { $0.id == n }) { return n }
        throw .unknownRun(nameOrID, valid: all.map(\.name))
    }

    struct ReasonTotals { var samples: Int64 = 0; var vmm: Int64 = 0; var timed: Int64 = 0 }

    func reasonTotals(_ run: Int64) throws(ReportError) -> [String: ReasonTotals] {
        do {
            return try queue.read { db in
                var out: [String: ReasonTotals] = [:]
                let rows = try Row.fetchAll(db, sql: """
                    SELECT reason, COUNT(*) AS n, COALESCE(SUM(vmm_ns), 0) AS vmm, COUNT(vmm_ns) AS timed
                    FROM exits WHERE run_id = ? AND kind = 'exit' GROUP BY reason
                    """, arguments: [run])
                for r in rows {
                    out[r["reason"] ?? "?"] = ReasonTotals(samples: r["n"], vmm: r["vmm"], timed: r["timed"])
                }
                return out
            }
        } catch {
            throw .database("\(error)")
        }
    }

    /// Two runs side by side, per exit reason: counts and handling times, with B − A deltas.
    public func compare(_ a: String, _ b: String) throws(ReportError) -> Table {
        let ia = try runID(a), ib = try runID(b)
        let ta = try reasonTotals(ia), tb = try reasonTotals(ib)
        var rows: [[Cell]] = []
        var totA = ReasonTotals(), totB = ReasonTotals()
        for reason in Set(ta.keys).union(tb.keys).sorted() {
            let x = ta[reason], y = tb[reason]
            let sa = x?.samples ?? 0, sb = y?.samples ?? 0, va = x?.vmm ?? 0, vb = y?.vmm ?? 0
            totA.samples += sa; totA.vmm += va; totA.timed += x?.timed ?? 0
            totB.samples += sb; totB.vmm += vb; totB.timed += y?.timed ?? 0
            rows.append(Self.compareRow(reason, x ?? ReasonTotals(), y ?? ReasonTotals()))
        }
        let cols = Self.compareColumns.map { Column($0, $0 == "reason" ? .left : .right) }
        return Table(name: "compare", title: "Run A = \(a), run B = \(b): exits per reason, B − A:", columns: cols,
                     rows: rows, totals: Self.compareRow("Total", totA, totB))
    }

    public static let compareColumns = ["reason", "samples_a", "samples_b", "samples_delta", "samples_delta_pct",
                                        "vmm_ns_a", "vmm_ns_b", "vmm_ns_delta", "mean_ns_a", "mean_ns_b",
                                        "mean_delta_pct"]

    static func compareRow(_ reason: String, _ x: ReasonTotals, _ y: ReasonTotals) -> [Cell] {
        func mean(_ t: ReasonTotals) -> Double? { t.timed > 0 ? Double(t.vmm) / Double(t.timed) : nil }
        func pct(_ a: Double?, _ b: Double?) -> Cell {
            guard let a, let b, a != 0 else { return .none }
            return .real((b - a) * 100 / a)
        }
        return [.text(reason), .int(x.samples), .int(y.samples), .int(y.samples - x.samples),
                pct(Double(x.samples), Double(y.samples)), .int(x.vmm), .int(y.vmm), .int(y.vmm - x.vmm),
                mean(x).map { .real($0) } ?? .none, mean(y).map { .real($0) } ?? .none, pct(mean(x), mean(y))]
    }

    /// Runs a read-only query (for tests and the notebooks' checks).
    public func scalar(_ sql: String, _ args: [any DatabaseValueConvertible] = []) throws -> Int64? {
        try queue.read { db in try Int64.fetchOne(db, sql: sql, arguments: StatementArguments(args)) }
    }
}
