import XCTest
import X86
import Trace
@testable import Report

/// Hand-made record streams with known times. The header's TSC runs at 1 GHz, so 1 cycle = 1 ns.
enum Make {
    static let header = TraceHeader(tscHz: 1_000_000_000, hostCPU: "test CPU", kvmBackend: "kvm_pvm", vcpuCount: 2,
                                    symbols: [GuestSymbol(address: 0x1000, size: 0x100, name: "loop")])

    static func out(port: UInt16, value: UInt8 = 0, vcpu: UInt16 = 0, seq: UInt64, exit: UInt64, entry: UInt64,
                    rip: UInt64 = 0x1010) -> TraceRecord {
        let io = IOIOInfo(port: port, isIn: false, size: 1, addressSize: 16)
        var s = CPUState()
        s.rip = rip + 1
        return TraceRecord(kind: .exit, vcpu: vcpu, seq: seq, kvmExitReason: 2, exitCode: .ioio,
                           exitInfo1: io.exitInfo1, nextRIP: rip + 1, instructionStart: rip, instructionBytes: [0xEE],
                           candidates: 1, visibility: .committed, state: s,
                           accesses: [DeviceAccess(space: .port, address: UInt64(port), size: 1, isWrite: true, data: [value])],
                           tscExit: exit, tscEntry: entry)
    }

    static func inb(port: UInt16, vcpu: UInt16 = 0, seq: UInt64, exit: UInt64, entry: UInt64) -> TraceRecord {
        let io = IOIOInfo(port: port, isIn: true, size: 1, addressSize: 16)
        return TraceRecord(kind: .exit, vcpu: vcpu, seq: seq, kvmExitReason: 2, exitCode: .ioio, exitInfo1: io.exitInfo1,
                           instructionStart: 0x1020, instructionBytes: [0xEC], visibility: .pending,
                           accesses: [DeviceAccess(space: .port, address: UInt64(port), size: 1, isWrite: false, data: [0x5A])],
                           tscExit: exit, tscEntry: entry)
    }

    static func mmio(gpa: UInt64, write: Bool, size: UInt8 = 4, vcpu: UInt16 = 0, seq: UInt64, exit: UInt64,
                     entry: UInt64) -> TraceRecord {
        TraceRecord(kind: .exit, vcpu: vcpu, seq: seq, kvmExitReason: 6, exitCode: .npf,
                    exitInfo1: write ? NPFInfo.write : 0, exitInfo2: gpa, instructionStart: 0x2000,
                    instructionBytes: [0x89, 0x07],
                    accesses: [DeviceAccess(space: .mmio, address: gpa, size: size, isWrite: write,
                                            data: [UInt8](repeating: 1, count: Int(size)))],
                    tscExit: exit, tscEntry: entry)
    }

    static func hlt(vcpu: UInt16 = 0, seq: UInt64, exit: UInt64, entry: UInt64) -> TraceRecord {
        TraceRecord(kind: .exit, vcpu: vcpu, seq: seq, kvmExitReason: 5, exitCode: .hlt, instructionStart: 0x1030,
                    instructionBytes: [0xF4], tscExit: exit, tscEntry: entry)
    }

    static func wrmsr(_ index: UInt32, seq: UInt64, exit: UInt64, entry: UInt64) -> TraceRecord {
        var s = CPUState()
        s.rcx = UInt64(index)
        return TraceRecord(kind: .exit, seq: seq, kvmExitReason: 30, exitCode: .msr, exitInfo1: 1,
                           instructionStart: 0x1040, instructionBytes: [0x0F, 0x30], state: s, tscExit: exit, tscEntry: entry)
    }

    static func marker(_ code: UInt64, vcpu: UInt16 = 0, seq: UInt64, exit: UInt64, entry: UInt64) -> TraceRecord {
        TraceRecord(kind: .marker, vcpu: vcpu, seq: seq, tscExit: exit, tscEntry: entry, code: code)
    }

    static func aggregate(_ records: [TraceRecord], header: TraceHeader = header, vcpu: UInt16? = nil,
                          limits: AggregatorLimits = AggregatorLimits()) -> Report {
        var a = Aggregator(header: header, vcpu: vcpu, limits: limits)
        for r in records { a.add(r) }
        return Report(a)
    }
}

extension Table {
    func row(_ key: String) -> [String: Cell]? {
        guard let r = rows.first(where: { $0.first?.plain == key }) else { return nil }
        return Dictionary(uniqueKeysWithValues: zip(columnNames, r))
    }
    func sum(_ column: String) -> UInt64 {
        guard let i = columnIndex(column) else { return 0 }
        return rows.reduce(0) { acc, r in if case .uint(let v) = r[i] { return acc + v }; return acc }
    }
}

final class HistogramTests: XCTestCase {
    func testPercentilesWithinThreePercentOfExact() {
        var h = LogLinearHistogram()
        var values: [UInt64] = []
        var x: UInt64 = 0x9E37_79B9_7F4A_7C15
        for i in 0..<50_000 {
            x = x &* 6364136223846793005 &+ 1442695040888963407
            // A long-tailed mix: most around 8000 cycles, some up to ~1e9.
            let v = (i % 100 == 0) ? (x >> 34) : 7_000 + (x >> 52)
            values.append(v)
            h.record(v)
        }
        values.sort()
        for q in [0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let exact = Double(values[max(0, Int((q * Double(values.count)).rounded(.up)) - 1)])
            let got = Double(h.value(atQuantile: q) ?? 0)
            XCTAssertEqual(got, exact, accuracy: exact * 0.03, "q=\(q)")
        }
        XCTAssertEqual(h.min, values.first)
        XCTAssertEqual(h.max, values.last)
        XCTAssertEqual(h.count, 50_000)
    }

    func testSmallValuesAreExactAndEmptyHasNone() {
        var h = LogLinearHistogram()
        XCTAssertNil(h.value(atQuantile: 0.5))
        for v: UInt64 in [1, 2, 3, 4, 5] { h.record(v) }
        XCTAssertEqual(h.value(atQuantile: 0.5), 3)
        XCTAssertEqual(h.value(atQuantile: 1), 5)
        XCTAssertEqual(h.value(atQuantile: 0), 1)
    }

    func testHugeValuesDoNotTrap() {
        var h = LogLinearHistogram()
        h.record(.max)
        h.record(0)
        XCTAssertEqual(h.value(atQuantile: 1), .max)
        XCTAssertEqual(h.value(atQuantile: 0.5), 0)
    }
}

final class AggregatorTests: XCTestCase {
    /// vCPU 0: out at 100 (handled until 150), out at 400 (until 420), hlt at 1000 (until 1500).
    /// vCPU 1: in at 200 (until 260), mmio write at 300 (until 390).
    func mixed() -> [TraceRecord] {
        [
            Make.out(port: 0x3F8, seq: 0, exit: 100, entry: 150),
            Make.inb(port: 0x60, vcpu: 1, seq: 1, exit: 200, entry: 260),
            Make.mmio(gpa: 0xFEE0_0300, write: true, vcpu: 1, seq: 2, exit: 300, entry: 390),
            Make.out(port: 0x3F8, seq: 3, exit: 400, entry: 420),
            Make.hlt(seq: 4, exit: 1000, entry: 1500),
        ]
    }

    func testHandlingAndGuestTimePerReason() throws {
        let r = Make.aggregate(mixed())
        let t = try r.table(.vmexit)
        let io = try XCTUnwrap(t.row("IOIO"))
        XCTAssertEqual(io["samples"], .uint(3))
        XCTAssertEqual(io["kvm_reason"], .text("KVM_EXIT_IO"))
        // Handling: 50, 60, 20.
        XCTAssertEqual(io["vmm_ns"], .uint(130))
        XCTAssertEqual(io["min_ns"], .uint(20))
        XCTAssertEqual(io["max_ns"], .uint(60))
        // Guest time: only the second out on vCPU 0 has a predecessor there (400 − 150).
        XCTAssertEqual(io["guest_ns"], .uint(250))
        let npf = try XCTUnwrap(t.row("NPF"))
        XCTAssertEqual(npf["vmm_ns"], .uint(90))
        XCTAssertEqual(npf["guest_ns"], .uint(40))          // 300 − 260, on vCPU 1
        let hlt = try XCTUnwrap(t.row("HLT"))
        XCTAssertEqual(hlt["guest_ns"], .uint(580))         // 1000 − 420
        XCTAssertEqual(hlt["p50_ns"], .uint(500))
        // % time: HLT is 500 of 720 handling cycles.
        guard case .real(let pct)? = hlt["time_pct"] else { return XCTFail("time_pct") }
        XCTAssertEqual(pct, 500.0 * 100 / 720, accuracy: 1e-9)
        XCTAssertEqual(t.totals?[2], .uint(5))
        // Sorted by samples by default: IOIO first.
        XCTAssertEqual(t.rows.first?.first, .text("IOIO"))
    }

    func testCountsAddUpToTheExitCountInEveryPartition() throws {
        var records = mixed()
        records.insert(Make.marker(1, seq: 5, exit: 1600, entry: 1610), at: 5)
        records.append(Make.wrmsr(MSRIndex.efer, seq: 6, exit: 1700, entry: 1800))
        records.append(Make.out(port: 0x80, seq: 7, exit: 1900, entry: 1950))
        records.append(Make.marker(0x8001, seq: 8, exit: 2000, entry: 2010))
        records.append(TraceRecord(kind: .event, seq: 9, tscExit: 2100, tscEntry: 2100, note: "irq"))
        let r = Make.aggregate(records)
        let exits = r.aggregate.exitCount
        XCTAssertEqual(exits, 7)
        XCTAssertEqual(try r.table(.vmexit).sum("samples"), exits)
        XCTAssertEqual(try r.table(.vcpu).sum("samples"), exits)
        XCTAssertEqual(try r.table(.rip).sum("samples"), exits)
        XCTAssertEqual(try r.table(.phase).sum("samples"), exits)
        XCTAssertEqual(try r.table(.timeline).sum("exits"), exits)
        let device = try r.table(.ioport).sum("samples") + r.table(.mmio).sum("samples") + r.table(.msr).sum("samples")
        XCTAssertEqual(device + 1, exits)   // the HLT has no device side
        XCTAssertEqual(try r.table(.msr).row("0xc0000080")?["name"], .text("EFER"))
        XCTAssertEqual(try r.table(.msr).row("0xc0000080")?["direction"], .text("wrmsr"))
    }

    func testPortAndMMIOViewsSeparateDirections() throws {
        let r = Make.aggregate([
            Make.out(port: 0x3F8, seq: 0, exit: 10, entry: 20),
            Make.inb(port: 0x3F8, seq: 1, exit: 30, entry: 50),
            Make.out(port: 0x3F8, seq: 2, exit: 60, entry: 65),
            Make.mmio(gpa: 0xD000_0000, write: false, seq: 3, exit: 70, entry: 80),
            Make.mmio(gpa: 0xD000_0000, write: true, size: 8, seq: 4, exit: 90, entry: 100),
        ])
        let io = try r.table(.ioport)
        XCTAssertEqual(io.rows.count, 2)
        let out = try XCTUnwrap(io.rows.first { $0[1] == .text("out") })
        XCTAssertEqual(out[0], .text("0x3f8"))
        XCTAssertEqual(out[io.columnIndex("samples")!], .uint(2))
        XCTAssertEqual(out[io.columnIndex("bytes")!], .uint(2))
        let mm = try r.table(.mmio)
        XCTAssertEqual(mm.rows.count, 2)
        let w = try XCTUnwrap(mm.rows.first { $0[1] == .text("write") })
        XCTAssertEqual(w[mm.columnIndex("bytes")!], .uint(8))
    }

    func testPhasesAndMicrobenchmarkCost() throws {
        // Phase 2 twice, 3 exits each time; the phase runs from the begin marker's re-entry to
        // the end marker's exit: (2000 − 1000) and (5000 − 3500).
        var recs: [TraceRecord] = []
        var seq: UInt64 = 0
        func add(_ r: TraceRecord) { var r = r; r.seq = seq; seq += 1; recs.append(r) }
        add(Make.out(port: 0x80, seq: 0, exit: 10, entry: 20))
        add(Make.marker(2, seq: 0, exit: 990, entry: 1000))
        for i in 0..<3 { add(Make.out(port: 0x80, seq: 0, exit: 1100 + UInt64(i) * 100, entry: 1150 + UInt64(i) * 100)) }
        add(Make.marker(0x8002, seq: 0, exit: 2000, entry: 2010))
        add(Make.marker(2, seq: 0, exit: 3400, entry: 3500))
        for i in 0..<3 { add(Make.out(port: 0x80, seq: 0, exit: 3600 + UInt64(i) * 100, entry: 3610 + UInt64(i) * 100)) }
        add(Make.marker(0x8002, seq: 0, exit: 5000, entry: 5010))
        add(Make.marker(0x8007, seq: 0, exit: 6000, entry: 6010))   // an end without a begin
        var a = Aggregator(header: Make.header)
        for r in recs { a.add(r) }
        a.phaseNames[2] = "out"
        let rep = Report(a)
        let ph = try rep.table(.phase)
        let p2 = try XCTUnwrap(ph.row("2"))
        XCTAssertEqual(p2["occurrences"], .uint(2))
        XCTAssertEqual(p2["duration_ns"], .uint(2500))
        XCTAssertEqual(p2["samples"], .uint(6))
        XCTAssertEqual(p2["name"], .text("out"))
        XCTAssertEqual(ph.row("-")?["samples"], .uint(1))
        XCTAssertTrue(ph.notes.contains { $0.contains("1 phase end") })

        // Each begin/end pair brackets one operation: 2500 cycles over 2 operations.
        let mb = try rep.table(.microbench)
        let op = try XCTUnwrap(mb.row("2"))
        XCTAssertEqual(op["iterations"], .uint(2))
        XCTAssertEqual(op["iterations_from"], .text("markers"))
        XCTAssertEqual(op["cycles_per_op"], .real(1250))
        XCTAssertEqual(op["exits_per_op"], .real(3))
        XCTAssertEqual(op["operation"], .text("out"))

        var b = a
        b.phaseIterations[2] = 1000
        let op2 = try XCTUnwrap(Report(b).table(.microbench).row("2"))
        XCTAssertEqual(op2["iterations"], .uint(1000))
        XCTAssertEqual(op2["iterations_from"], .text("option"))
        XCTAssertEqual(op2["ns_per_op"], .real(2.5))

        // The adams-agesen sample's phases are named after its operations.
        var h = Make.header
        h.imagePath = "Samples/build/adams-agesen.elf"
        var c = Aggregator(header: h)
        for r in recs { c.add(r) }
        XCTAssertEqual(try Report(c).table(.microbench).row("2")?["operation"], .text("in"))
    }

    func testVCPUFilterKeepsOnlyThatVCPU() throws {
        let r = Make.aggregate(mixed(), vcpu: 1)
        XCTAssertEqual(r.aggregate.exitCount, 2)
        let t = try r.table(.vmexit)
        XCTAssertEqual(t.row("NPF")?["samples"], .uint(1))
        XCTAssertNil(t.row("HLT"))
        XCTAssertTrue(t.title.contains("VCPU 1"))
    }

    func testEmptyTraceGivesEmptyTablesWithoutDivisionByZero() throws {
        let r = Make.aggregate([])
        for v in View.allCases {
            let t = try r.table(v)
            if v == .summary { continue }
            if v == .phase {
                XCTAssertEqual(t.rows.count, 1)   // only the "(outside phases)" row, all zero
            } else {
                XCTAssertTrue(t.rows.isEmpty, v.rawValue)
            }
            XCTAssertFalse(t.renderText().contains("nan"), v.rawValue)
            XCTAssertFalse(t.renderCSV().lowercased().contains("nan"), v.rawValue)
            XCTAssertFalse(t.renderCSV().lowercased().contains("inf"), v.rawValue)
        }
        let t = try r.table(.vmexit)
        XCTAssertTrue(t.renderText().contains("(no rows)"))
        XCTAssertEqual(t.totals?[2], .uint(0))
        XCTAssertEqual(t.totals?[3], .real(0))
        XCTAssertEqual(t.totals?[5], Cell.none)
    }

    func testUnknownKeyListsTheValidOnes() {
        let r = Make.aggregate(mixed())
        XCTAssertThrowsError(try r.table(.vmexit, key: "bogus")) { e in
            let msg = String(describing: e)
            XCTAssertTrue(msg.contains("unknown key 'bogus'"), msg)
            XCTAssertTrue(msg.contains("samples") && msg.contains("p99_ns") && msg.contains("guest_ns"), msg)
        }
        XCTAssertThrowsError(try View.named("nope")) { e in
            XCTAssertTrue(String(describing: e).contains("vmexit, ioport"), String(describing: e))
        }
        XCTAssertThrowsError(try View.event("cr")) { e in
            XCTAssertTrue(String(describing: e).contains("vmexit, ioport, mmio, msr"))
        }
    }

    func testPerfKeyAliasesAndTop() throws {
        let r = Make.aggregate(mixed())
        // By total handling time HLT (500) comes before IOIO (130) and NPF (90).
        let t = try r.table(.vmexit, key: "time")
        XCTAssertEqual(t.rows.map { $0[0].plain }, ["HLT", "IOIO", "NPF"])
        let m = try r.table(.vmexit, key: "max", top: 1)
        XCTAssertEqual(m.rows.map { $0[0].plain }, ["HLT"])
        XCTAssertTrue(m.notes.contains { $0.contains("2 more rows") })
    }

    func testCappedMapsPutTheRestInOther() throws {
        var limits = AggregatorLimits()
        limits.ports = 2
        limits.rips = 1
        let recs = (0..<5).map { i in
            Make.out(port: 0x80 + UInt16(i), seq: UInt64(i), exit: UInt64(i) * 100, entry: UInt64(i) * 100 + 10,
                     rip: 0x1000 + UInt64(i))
        }
        let r = Make.aggregate(recs, limits: limits)
        let io = try r.table(.ioport)
        XCTAssertEqual(io.rows.count, 3)
        XCTAssertEqual(io.row("other")?["samples"], .uint(3))
        XCTAssertEqual(io.sum("samples"), 5)
        let rip = try r.table(.rip)
        XCTAssertEqual(rip.row("other")?["samples"], .uint(4))
        XCTAssertEqual(rip.sum("samples"), 5)
    }

    func testTimelineStaysBoundedAndAddsUp() throws {
        var limits = AggregatorLimits()
        limits.timelineBins = 4
        var a = Aggregator(header: Make.header, timelineIntervalNs: 100, limits: limits)
        for i in 0..<40 { a.add(Make.out(port: 0x80, seq: UInt64(i), exit: 1000 + UInt64(i) * 50, entry: 1000 + UInt64(i) * 50 + 5)) }
        let t = try Report(a).table(.timeline)
        XCTAssertLessThanOrEqual(t.rows.count, 4)
        XCTAssertEqual(t.sum("exits"), 40)
        // The interval doubled from 100 ns until 2000 ns of records fit in 4 bins.
        XCTAssertEqual(t.rows.first?[2], .uint(800))
    }

    func testRIPViewShowsSymbolAndBytes() throws {
        let r = Make.aggregate(mixed())
        let t = try r.table(.rip)
        let row = try XCTUnwrap(t.row("0x1010"))
        XCTAssertEqual(row["symbol"], .text("loop+0x10"))
        XCTAssertEqual(row["bytes"], .text("ee"))
        XCTAssertEqual(row["reason"], .text("IOIO"))
        XCTAssertEqual(row["samples"], .uint(2))
    }

    func testInKernelExitsFromKVMCounters() throws {
        var a = Aggregator(header: Make.header)
        for r in mixed() { a.add(r) }
        a.add(frameStats: VCPUFrameStats(vcpu: 0, counters: ["exits": 5, "io_exits": 1]))
        a.add(frameStats: VCPUFrameStats(vcpu: 0, counters: ["exits": 10, "io_exits": 2, "halt_exits": 1]))
        let t = try Report(a).table(.kvm)
        let v0 = try XCTUnwrap(t.rows.first { $0[0] == .uint(0) })
        let d = Dictionary(uniqueKeysWithValues: zip(t.columnNames, v0))
        XCTAssertEqual(d["kvm_exits"], .uint(10))
        XCTAssertEqual(d["userspace_exits"], .uint(3))
        XCTAssertEqual(d["in_kernel_exits"], .uint(7))
        XCTAssertEqual(d["halt_exits"], .uint(1))
        let v1 = try XCTUnwrap(t.rows.first { $0[0] == .uint(1) })
        XCTAssertEqual(v1[1], Cell.none)   // no counters for vCPU 1
        XCTAssertEqual(try Report(a).table(.kvmCounters).rows.count, 3)
    }

    func testUnknownTSCFrequencyLeavesTimesEmpty() throws {
        let r = Make.aggregate(mixed(), header: TraceHeader(tscHz: 0))
        let t = try r.table(.vmexit)
        XCTAssertEqual(t.row("IOIO")?["vmm_ns"], Cell.none)
        XCTAssertEqual(t.row("IOIO")?["samples"], .uint(3))
        XCTAssertTrue(t.notes.contains { $0.contains("TSC frequency unknown") })
    }

    func testUnenteredExitHasNoHandlingTime() throws {
        // A SHUTDOWN that never re-entered (tscEntry 0) counts as a sample without a time.
        let r = Make.aggregate([
            Make.out(port: 0x80, seq: 0, exit: 100, entry: 110),
            TraceRecord(kind: .exit, seq: 1, kvmExitReason: 8, exitCode: .shutdown, tscExit: 200, tscEntry: 0),
        ])
        let row = try XCTUnwrap(r.table(.vmexit).row("SHUTDOWN"))
        XCTAssertEqual(row["samples"], .uint(1))
        XCTAssertEqual(row["mean_ns"], Cell.none)
        XCTAssertEqual(row["guest_ns"], .uint(90))
    }
}

final class DisassemblyTests: XCTestCase {
    func testHotRIPsAndCompletionsShowTheDecodedInstruction() throws {
        var long = CPUState()
        long.cr0 |= CR0.pe
        long.efer |= EFER.lma
        long.cs.attributes |= 0x200   // L
        let r = Make.aggregate([
            Make.out(port: 0x3F8, seq: 0, exit: 100, entry: 150),
            TraceRecord(kind: .completion, seq: 1, instructionStart: 0x3000,
                        instructionBytes: [0xF0, 0x48, 0x0F, 0xC7, 0x0E], state: long, tscExit: 200, tscEntry: 300),
        ])
        XCTAssertEqual(try r.table(.rip).row("0x1010")?["instruction"], .text("out dx, al"))
        let c = try r.table(.completion)
        XCTAssertEqual(c.rows.first?.first, .text("cmpxchg16b"))   // decoded in 64-bit mode from the state
        XCTAssertEqual(c.sum("samples"), 1)
    }

    /// A completion is charged with the handling time of the emulation failure it completed (the
    /// record itself is written mid-handling, with no time of its own); one after another kind of
    /// exit, or on another vCPU, is not.
    func testCompletionsCarryTheirEmulationFailuresHandlingTime() throws {
        var long = CPUState()
        long.cr0 |= CR0.pe
        long.efer |= EFER.lma
        long.cs.attributes |= 0x200   // L
        func failure(vcpu: UInt16, seq: UInt64, exit: UInt64, entry: UInt64) -> TraceRecord {
            TraceRecord(kind: .exit, vcpu: vcpu, seq: seq, kvmExitReason: 17, instructionStart: 0x3000,
                        instructionBytes: [0x0F, 0x01, 0xCA], state: long, tscExit: exit, tscEntry: entry)
        }
        func completion(vcpu: UInt16, seq: UInt64, at t: UInt64) -> TraceRecord {
            TraceRecord(kind: .completion, vcpu: vcpu, seq: seq, kvmExitReason: 17, instructionStart: 0x3000,
                        instructionBytes: [0x0F, 0x01, 0xCA], state: long, tscExit: t, tscEntry: t)
        }
        let r = Make.aggregate([
            failure(vcpu: 0, seq: 0, exit: 1_000, entry: 1_700),
            failure(vcpu: 1, seq: 1, exit: 1_100, entry: 1_400),
            completion(vcpu: 0, seq: 2, at: 1_500),
            completion(vcpu: 1, seq: 3, at: 1_300),
            Make.out(port: 0x3F8, vcpu: 0, seq: 4, exit: 2_000, entry: 2_050),
            completion(vcpu: 0, seq: 5, at: 2_020),
        ])
        let row = try XCTUnwrap(try r.table(.completion).row("clac"))
        XCTAssertEqual(row["samples"], .uint(3))
        XCTAssertEqual(row["vmm_ns"], .uint(700 + 300))
        XCTAssertEqual(row["max_ns"], .uint(700))
    }
}

final class MarkerExitTests: XCTestCase {
    /// The recorder's order: a marker record (time inside the OUT's handling), then the OUT's exit.
    /// Phase 1 runs from the begin OUT's re-entry (1100) to the end OUT's exit (1900), with one
    /// exit of real work inside; the OUTs to 0x502 count outside phases, once each.
    func records(markerRecordFirst: Bool) -> [TraceRecord] {
        var recs: [TraceRecord] = []
        func marker(_ code: UInt64, exit: UInt64, entry: UInt64) {
            let m = Make.marker(code, seq: 0, exit: exit + 50, entry: exit + 50)
            var o = Make.out(port: 0x502, seq: 0, exit: exit, entry: entry, rip: 0x1040)
            o.accesses = [DeviceAccess(space: .port, address: 0x502, size: 2, isWrite: true,
                                       data: [UInt8(code & 0xFF), UInt8(code >> 8)])]
            recs += markerRecordFirst ? [m, o] : [o, m]
        }
        marker(1, exit: 1000, entry: 1100)
        recs.append(Make.mmio(gpa: 0xD000_0000, write: true, seq: 0, exit: 1500, entry: 1600))
        marker(0x8001, exit: 1900, entry: 2000)
        for i in recs.indices { recs[i].seq = UInt64(i) }
        return recs
    }

    func testMarkerOUTExitsDelimitPhasesOnce() throws {
        for first in [true, false] {
            let r = Make.aggregate(records(markerRecordFirst: first))
            let ph = try r.table(.phase)
            let p1 = try XCTUnwrap(ph.row("1"), "marker record first: \(first)")
            XCTAssertEqual(p1["occurrences"], .uint(1))
            XCTAssertEqual(p1["duration_ns"], .uint(800))
            XCTAssertEqual(p1["samples"], .uint(1))
            XCTAssertEqual(p1["guest_ns"], .uint(400))   // 1500 − 1100: marker records do not cut guest spans
            XCTAssertEqual(ph.row("-")?["samples"], .uint(2))
            XCTAssertEqual(ph.sum("samples"), r.aggregate.exitCount)
            XCTAssertTrue(ph.notes.isEmpty, "\(ph.notes)")
            let mb = try XCTUnwrap(r.table(.microbench).row("1"))
            XCTAssertEqual(mb["iterations"], .uint(1))
            XCTAssertEqual(mb["exits_per_op"], .real(1))
        }
    }
}
