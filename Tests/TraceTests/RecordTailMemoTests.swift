import XCTest
import X86
@testable import Trace

/// The frame decoder remembers record tails (the fields from `kind` on) by their encoding
/// (RecordTailMemo): records read through it must be exactly the records written, also when the
/// recent-value slots it relies on are reused by other instructions in between.
final class RecordTailMemoTests: XCTestCase {
    /// A single-stepped loop of `n` instructions, each step followed by an `out` exit every
    /// `exitEvery` steps: steps and exits alternate their shapes, as in a single-step trace.
    private func loop(_ n: Int, iterations: Int, exitEvery: Int, notes: Bool = false) -> [TraceRecord] {
        var out: [TraceRecord] = []
        for i in 0..<iterations {
            for k in 0..<n {
                let start = 0x2000 + UInt64(k) * 4
                var s = sampleState(UInt64(i))
                s.rip = start
                s.rcx = UInt64(iterations - i)
                // Distinct bytes per instruction (more instructions than the decoder's eight
                // recent-bytes slots when n > 8).
                let bytes: [UInt8] = [0x90 &+ UInt8(k & 7), UInt8(k), 0x41]
                out.append(TraceRecord(kind: .step, kvmExitReason: 4, exitCode: .none, instructionStart: start,
                                       instructionBytes: bytes, candidates: 1, visibility: .pending, state: s,
                                       memory: [GuestBytes(role: .instruction, gpa: start, bytes: bytes)],
                                       tscExit: 10_000 + UInt64(out.count) * 97,
                                       tscEntry: 10_050 + UInt64(out.count) * 97,
                                       note: notes && i % 3 == 1 && k == 0 ? "phase \(i)" : ""))
                if k % exitEvery == 0 {
                    var e = outLoopRecord(UInt64(i * n + k))
                    e.state.rip = start + 3
                    e.instructionStart = start + 2
                    e.nextRIP = start + 3
                    out.append(e)
                }
            }
        }
        return out
    }

    private func decodeAll(_ path: String) throws -> (records: [TraceRecord], hits: Int) {
        let reader = try TraceReader(path: path)
        var records: [TraceRecord] = []
        var hits = 0
        for k in reader.frames.indices {
            let d = try reader.frameDecoder(k)
            var r = TraceRecord(kind: .exit)
            while try d.next(into: &r) { records.append(r) }
            hits += d.tailMemoHits
        }
        return (records, hits)
    }

    func testRepeatedTailsDecodeAsWritten() throws {
        let dir = TempDir()
        for (n, exitEvery, notes) in [(1, 1, false), (3, 2, false), (13, 3, false), (5, 1, true)] {
            let path = dir.file("loop-\(n)-\(exitEvery).estrace")
            let written = try writeTrace(path, loop(n, iterations: 60, exitEvery: exitEvery, notes: notes),
                                         settings: TraceWriterSettings(maxRecordsPerFrame: 97))
            let (read, hits) = try decodeAll(path)
            XCTAssertEqual(read.count, written.count)
            for (a, b) in zip(read, written) where a != b {
                XCTFail("loop of \(n): record \(b.seq) (\(b.kind)) decodes differently")
                break
            }
            // The loop's repeated tails came from the memo (the test covers that path), also
            // when its instructions outnumber the recent-bytes slots (13).
            XCTAssertGreaterThan(hits, read.count / 5, "loop of \(n)")
        }
    }
}
