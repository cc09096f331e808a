import Foundation
import XCTest
import X86
@testable import Trace

/// Golden traces written by the 1.0 writer and committed, so every later reader is checked
/// against old files. Regenerate only for a new format version, never to make a test pass:
///     ESTRACE_WRITE_FIXTURES=1 swift test --filter GoldenFixtureTests
final class GoldenFixtureTests: XCTestCase {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures").path
    func fixture(_ name: String) -> String { GoldenFixtureTests.dir + "/" + name }

    /// Writes the fixtures when asked to; otherwise does nothing.
    func testWriteFixturesWhenAsked() throws {
        guard ProcessInfo.processInfo.environment["ESTRACE_WRITE_FIXTURES"] == "1" else { return }
        try FileManager.default.createDirectory(atPath: GoldenFixtureTests.dir, withIntermediateDirectories: true)
        // 1. A port-I/O loop: 300 OUT exits, frames of 64.
        try writeTrace(fixture("outloop-1.0.estrace"), (0..<300).map { outLoopRecord(UInt64($0)) },
                       settings: TraceWriterSettings(maxRecordsPerFrame: 64))
        // 2. One record of every kind, with per-frame stats.
        let w = try TraceWriter(path: fixture("allkinds-1.0.estrace"), header: sampleHeader(),
                                settings: TraceWriterSettings(maxRecordsPerFrame: 5)) { v in
            VCPUFrameStats(vcpu: v, counters: ["exits": 100, "io_exits": 60, "halt_exits": 1], dr7: 0x400)
        }
        var group: UInt64 = 0
        for var r in everyKindRecords() {
            if r.fragment > 0 { r.group = group }
            let s = try w.append(r)
            if r.fragment == 0 { group = s }
        }
        try w.finish()
        // 3. Two vCPUs, interleaved.
        let w2 = try TraceWriter(path: fixture("smp2-1.0.estrace"), header: sampleHeader(vcpus: 2),
                                 settings: TraceWriterSettings(maxRecordsPerFrame: 16))
        for i in 0..<100 {
            var r = outLoopRecord(UInt64(i / 2), vcpu: UInt16(i % 2))
            r.state.rbx = UInt64(i)
            try w2.append(r)
        }
        try w2.finish()
        // 4. The OUT loop cut short in the middle of its fourth frame (as after SIGKILL).
        let full = readBytes(fixture("outloop-1.0.estrace"))
        let r = try TraceReader(path: fixture("outloop-1.0.estrace"))
        writeBytes(fixture("outloop-cut-1.0.estrace"), Array(full[..<(Int(r.frames[3].offset) + 30)]))
    }

    /// Format 1.1's fixture: MSR exits, one of them refused (record field bit 26). Written only with
    /// ESTRACE_WRITE_FIXTURES=1.1 (the 1.0 fixtures stay as the 1.0 writer made them).
    static func refusedMSRRecords() -> [TraceRecord] {
        var s = CPUState.flat(.long64)
        s.rip = 0x4003DB
        s.rcx = UInt64(MSRIndex.lstar)
        s.rdx = 0xFFFF_8000
        let good: UInt64 = 0xFFFF_8000_0000_0000, bad: UInt64 = 0xAAAA_AAAA_AAAA_AAAA
        func le(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
        func wrmsr(_ v: UInt64, refused: Bool, tsc: UInt64) -> TraceRecord {
            var st = s
            st.rdx = v >> 32
            st.rax = v & 0xFFFF_FFFF
            return TraceRecord(kind: .exit, kvmExitReason: 30, exitCode: .msr, exitInfo1: 1, nextRIP: 0x4003DD,
                               instructionStart: 0x4003DB, instructionBytes: [0x0F, 0x30], candidates: 1, visibility: .pending,
                               state: st, accesses: [DeviceAccess(space: .msr, address: UInt64(MSRIndex.lstar), size: 8, isWrite: true, data: le(v))],
                               msrWrites: refused ? [] : [MSRWrite(index: MSRIndex.lstar, value: v)], accessRefused: refused,
                               tscExit: tsc, tscEntry: tsc + 3000)
        }
        return [wrmsr(good, refused: false, tsc: 1000), wrmsr(bad, refused: true, tsc: 9000), wrmsr(good, refused: false, tsc: 20000)]
    }

    func testWrite11FixtureWhenAsked() throws {
        guard ProcessInfo.processInfo.environment["ESTRACE_WRITE_FIXTURES"] == "1.1" else { return }
        _ = try writeTrace(fixture("msrrefused-1.1.estrace"), Self.refusedMSRRecords())
    }

    func testRefusedMSRFixture() throws {
        let r = try TraceReader(path: fixture("msrrefused-1.1.estrace"))
        XCTAssertEqual(r.formatMajor, 1)
        XCTAssertEqual(r.formatMinor, 1)
        let recs = try readAll(fixture("msrrefused-1.1.estrace"))
        XCTAssertEqual(recs.map(\.accessRefused), [false, true, false])
        XCTAssertEqual(recs[1].accesses.first?.value, 0xAAAA_AAAA_AAAA_AAAA)
        XCTAssertEqual(recs[1].msrWrites, [])
        XCTAssertEqual(recs, try writeTrace(NSTemporaryDirectory() + "/refused-check-\(UUID().uuidString).estrace", Self.refusedMSRRecords()))
    }

    func testOutLoopFixture() throws {
        let r = try TraceReader(path: fixture("outloop-1.0.estrace"))
        XCTAssertEqual(r.formatMajor, 1)
        XCTAssertFalse(r.isCutShort)
        XCTAssertEqual(r.recordCount, 300)
        XCTAssertEqual(r.frames.count, 5)
        XCTAssertEqual(r.header.hostCPU, "AMD EPYC 7B13 64-Core Processor")
        XCTAssertEqual(r.header.kvmBackend, "kvm_pvm")
        XCTAssertEqual(r.header.tscHz, 2_994_000_000)
        XCTAssertEqual(r.symbols.describe(0x1005), "loop+0x5")
        let e = try r.record(seq: 200)
        XCTAssertEqual(e.kind, .exit)
        XCTAssertEqual(e.exitCode, .ioio)
        XCTAssertEqual(IOIOInfo(exitInfo1: e.exitInfo1).port, 0x80)
        XCTAssertEqual(e.state.rax, 200)
        XCTAssertEqual(e.state.rip, 0x1005)
        XCTAssertEqual(e.instructionBytes, [0xEE])
        XCTAssertEqual(e.accesses.first?.data, [200])
        XCTAssertEqual(e.memory, [GuestBytes(role: .instruction, gpa: 0x1004, bytes: [0xEE])])
        XCTAssertEqual(e.visibility, .committed)
        var n: UInt64 = 0
        try r.forEachRecord { rec in
            XCTAssertEqual(rec, { var x = outLoopRecord(n); x.seq = n; x.vcpuSeq = n; x.group = n; return x }())
            n += 1
        }
        XCTAssertEqual(n, 300)
    }

    func testAllKindsFixture() throws {
        let r = try TraceReader(path: fixture("allkinds-1.0.estrace"))
        let recs = try readAll(fixture("allkinds-1.0.estrace"))
        XCTAssertEqual(recs.map(\.kind), [.exit, .exit, .exit, .exit, .completion, .step, .event, .gap, .marker, .exit, .exit, .exit])
        XCTAssertEqual(recs[0].stateAfter?.rax, 0x55)
        XCTAssertEqual(recs[0].msrWrites, [MSRWrite(index: 0xC000_0082, value: 0xFFFF_FFFF_8100_0000)])
        XCTAssertEqual(recs[0].memory.map(\.role), [.instruction, .pageTable, .operandRead, .written])
        XCTAssertEqual(recs[0].state.fs.base, 0xFFFF_8000_1234_0000)
        XCTAssertEqual(recs[0].note, "serial read")
        XCTAssertEqual(recs[2].group, 1)
        XCTAssertEqual(recs[2].fragment, 1)
        XCTAssertEqual(recs[3].accesses.first?.data, Array("hello".utf8))
        XCTAssertEqual(recs[8].code, 7)
        XCTAssertEqual(recs[11].exitCode, .invalid)
        XCTAssertEqual(recs[11].instructionBytes.count, 15)
        XCTAssertEqual(recs[9].tscEntry, UInt64.max)
        let f = try r.readFrame(0)
        XCTAssertEqual(f.stats.first?.counters["io_exits"], 60)
        XCTAssertEqual(f.stats.first?.dr7, 0x400)
        let expected = try writeTrace(NSTemporaryDirectory() + "/allkinds-check-\(UUID().uuidString).estrace", everyKindRecords())
        XCTAssertEqual(recs, expected)
    }

    func testSMPFixture() throws {
        let r = try TraceReader(path: fixture("smp2-1.0.estrace"))
        XCTAssertEqual(r.header.vcpuCount, 2)
        XCTAssertEqual(r.vcpus.map(\.recordCount), [50, 50])
        var i: UInt64 = 0
        try r.forEachRecord { rec in
            XCTAssertEqual(rec.seq, i)
            XCTAssertEqual(rec.state.rbx, i)
            XCTAssertEqual(rec.vcpu, UInt16(i % 2))
            XCTAssertEqual(rec.vcpuSeq, i / 2)
            i += 1
        }
        XCTAssertEqual(i, 100)
    }

    func testCutShortFixture() throws {
        let r = try TraceReader(path: fixture("outloop-cut-1.0.estrace"))
        XCTAssertTrue(r.isCutShort)
        XCTAssertEqual(r.frames.count, 3)
        XCTAssertEqual(r.recordCount, 192)
        let recs = try readAll(fixture("outloop-cut-1.0.estrace"))
        XCTAssertEqual(recs.last?.state.rax, 191)
    }
}
