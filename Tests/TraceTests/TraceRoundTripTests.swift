import Foundation
import XCTest
import X86
@testable import Trace

final class TraceRoundTripTests: XCTestCase {
    func testPrimitiveEncodingsMatchTheSpec() {
        // FORMAT.md's check value, and a continued CRC equals the CRC of the concatenation.
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        let a = Array("hello, ".utf8), b = Array("frames".utf8)
        XCTAssertEqual(CRC32C.checksum(b, continuing: CRC32C.checksum(a)), CRC32C.checksum(a + b))
        let s = ByteSink()
        s.varint(300)
        s.varint(UInt64.max)
        XCTAssertEqual(s.bytes, [0xAC, 0x02] + Array(repeating: 0xFF, count: 9) + [0x01])
        XCTAssertEqual(zigzag(-1), 1)
        XCTAssertEqual(zigzag(1), 2)
        XCTAssertEqual(unzigzag(zigzag(Int64.min)), Int64.min)
        XCTAssertEqual(undelta(delta(3, 0xFFFF_FFFF_FFFF_FFFE), 0xFFFF_FFFF_FFFF_FFFE), 3)
    }

    func testEveryKindAndFieldRoundTrips() throws {
        let dir = TempDir()
        let path = dir.file("all.estrace")
        let written = try writeTrace(path, everyKindRecords())
        let reader = try TraceReader(path: path)
        XCTAssertFalse(reader.isCutShort)
        XCTAssertEqual(reader.recordCount, UInt64(written.count))
        XCTAssertEqual(reader.header, { var h = sampleHeader(); h.formatVersion = TraceFormat.major; return h }())
        let read = try readAll(path)
        XCTAssertEqual(read.count, written.count)
        for (a, b) in zip(read, written) { XCTAssertEqual(a, b, "record \(b.seq) (\(b.kind))") }
        XCTAssertEqual(Set(read.map(\.kind)), Set(RecordKind.allCases))
        // The fragments of the read-modify-write share the first fragment's seq as group.
        XCTAssertEqual(read[2].group, read[1].seq)
        XCTAssertFalse(read[1].lastFragment)
    }

    func testRoundTripAcrossManySmallFrames() throws {
        let dir = TempDir()
        let path = dir.file("frames.estrace")
        let base = everyKindRecords()
        let input = (0..<500).map { i -> TraceRecord in
            var r = base[i % base.count]
            r.fragment = 0
            r.lastFragment = true
            r.tscExit &+= UInt64(i) * 1000
            r.state.rcx = UInt64(i)
            return r
        }
        let written = try writeTrace(path, input, settings: TraceWriterSettings(maxRecordsPerFrame: 7))
        let reader = try TraceReader(path: path)
        XCTAssertEqual(reader.frames.count, (500 + 6) / 7)
        XCTAssertEqual(try readAll(path), written)
        // Each frame decodes on its own (keyframe at its start).
        let mid = try reader.readFrame(reader.frames.count / 2)
        XCTAssertEqual(mid.records, Array(written[Int(mid.info.firstSeq)...Int(mid.info.lastSeq)]))
    }

    func testGuestBytesAreStoredOncePerFrame() throws {
        let dir = TempDir()
        let a = dir.file("dedupe.estrace")
        let input = (0..<1000).map { outLoopRecord(UInt64($0)) }
        try writeTrace(a, input, settings: TraceWriterSettings(maxRecordsPerFrame: 1000, compressionLevel: 1))
        let reader = try TraceReader(path: a)
        let d = try reader.frameDecoder(0)
        // The same instruction bytes at the same GPA: one guest-bytes item in the frame.
        var items: [UInt8: Int] = [:]
        _ = try d.all()
        let raw = try rawFrameItems(reader, 0)
        for t in raw { items[t, default: 0] += 1 }
        XCTAssertEqual(items[TraceFormat.tagGuestBytes], 1)
        XCTAssertEqual(items[TraceFormat.tagRecord], 1000)
        XCTAssertEqual(items[TraceFormat.tagKeyframe], 1)
    }

    func testFrameStatsAreStoredPerFrame() throws {
        let dir = TempDir()
        let path = dir.file("stats.estrace")
        let w = try TraceWriter(path: path, header: sampleHeader(), settings: TraceWriterSettings(maxRecordsPerFrame: 10)) { vcpu in
            VCPUFrameStats(vcpu: vcpu, counters: ["exits": 42, "io_exits": 40], dr6: 0xFFFF_0FF0, dr7: 0x400)
        }
        for i in 0..<25 { try w.append(outLoopRecord(UInt64(i))) }
        try w.finish()
        let r = try TraceReader(path: path)
        XCTAssertEqual(r.frames.count, 3)
        for i in 0..<3 {
            let f = try r.readFrame(i)
            XCTAssertEqual(f.stats, [VCPUFrameStats(vcpu: 0, counters: ["exits": 42, "io_exits": 40], dr6: 0xFFFF_0FF0, dr7: 0x400)])
        }
    }

    func testConcurrentAppendsFromSeveralVCPUs() throws {
        let dir = TempDir()
        let path = dir.file("smp.estrace")
        let vcpus = 4
        let perVCPU = 3000
        let w = try TraceWriter(path: path, header: sampleHeader(vcpus: UInt16(vcpus)),
                                settings: TraceWriterSettings(maxRecordsPerFrame: 97, queueDepth: 2))
        DispatchQueue.concurrentPerform(iterations: vcpus) { v in
            for i in 0..<perVCPU {
                var r = outLoopRecord(UInt64(i), vcpu: UInt16(v))
                r.state.rbx = UInt64(v) << 32 | UInt64(i) // who and which, to check after reading
                try! w.append(r)
            }
        }
        let stats = try w.finish()
        XCTAssertEqual(stats.records, UInt64(vcpus * perVCPU))
        let reader = try TraceReader(path: path)
        XCTAssertEqual(reader.recordCount, UInt64(vcpus * perVCPU))
        XCTAssertEqual(reader.vcpus.map(\.recordCount), Array(repeating: UInt64(perVCPU), count: vcpus))
        var expectedSeq: UInt64 = 0
        var nextPerVCPU = [UInt64](repeating: 0, count: vcpus)
        try reader.forEachRecord { r in
            XCTAssertEqual(r.seq, expectedSeq)
            expectedSeq += 1
            let v = Int(r.vcpu)
            XCTAssertEqual(r.vcpuSeq, nextPerVCPU[v])
            XCTAssertEqual(r.state.rbx, UInt64(v) << 32 | nextPerVCPU[v])
            nextPerVCPU[v] += 1
        }
        XCTAssertEqual(expectedSeq, UInt64(vcpus * perVCPU))
        // One vCPU alone, through the index.
        var count = 0
        try reader.forEachRecord(vcpu: 2) { r in XCTAssertEqual(r.vcpu, 2); count += 1 }
        XCTAssertEqual(count, perVCPU)
    }

    func testRandomSeekThroughTheIndex() throws {
        let dir = TempDir()
        let path = dir.file("seek.estrace")
        let written = try writeTrace(path, (0..<5000).map { outLoopRecord(UInt64($0)) },
                                     settings: TraceWriterSettings(maxRecordsPerFrame: 128))
        let reader = try TraceReader(path: path)
        var rng = SplitMix(seed: 7)
        for _ in 0..<50 {
            let n = rng.next() % 5000
            XCTAssertEqual(try reader.record(seq: n), written[Int(n)])
        }
        var it = reader.records(from: 4990)
        var tail: [TraceRecord] = []
        while let r = try it.next() { tail.append(r) }
        XCTAssertEqual(tail, Array(written[4990...]))
        XCTAssertThrowsError(try reader.record(seq: 5000)) { e in
            guard case TraceError.notFound = e else { return XCTFail("\(e)") }
        }
    }

    func testOutLoopIsSmallPerExit() throws {
        let dir = TempDir()
        let path = dir.file("outloop.estrace")
        let n = 100_000
        let w = try TraceWriter(path: path, header: sampleHeader())
        for i in 0..<n { try w.append(outLoopRecord(UInt64(i))) }
        let stats = try w.finish()
        let perExit = Double(stats.fileBytes) / Double(n)
        XCTAssertLessThan(perExit, 16, "bytes per exit on an OUT loop")
        XCTAssertEqual(try TraceReader(path: path).recordCount, UInt64(n))
    }

    func testAppendAfterFinishAndBadVCPUThrow() throws {
        let dir = TempDir()
        let w = try TraceWriter(path: dir.file("x.estrace"), header: sampleHeader(vcpus: 2))
        XCTAssertThrowsError(try w.append(TraceRecord(kind: .exit, vcpu: 2)))
        try w.finish()
        XCTAssertNoThrow(try w.finish()) // idempotent
        XCTAssertThrowsError(try w.append(TraceRecord(kind: .exit, vcpu: 0)))
    }

    func testEmptyTraceReadsAsEmpty() throws {
        let dir = TempDir()
        let path = dir.file("empty.estrace")
        try writeTrace(path, [])
        let r = try TraceReader(path: path)
        XCTAssertEqual(r.recordCount, 0)
        XCTAssertFalse(r.isCutShort)
        XCTAssertEqual(try readAll(path), [])
    }
}

/// The item tags of a frame, in order (test-only peek at the raw layout).
func rawFrameItems(_ reader: TraceReader, _ i: Int) throws -> [UInt8] {
    let d = try reader.frameDecoder(i)
    return d.itemTags()
}
