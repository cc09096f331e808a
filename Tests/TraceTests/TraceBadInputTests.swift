import Foundation
import XCTest
import X86
@testable import Trace

final class TraceBadInputTests: XCTestCase {
    /// A finished trace of `n` OUT-loop exits in frames of `perFrame` records.
    func makeTrace(_ dir: TempDir, n: Int = 1000, perFrame: Int = 100) throws -> (path: String, records: [TraceRecord]) {
        let path = dir.file("good.estrace")
        let recs = try writeTrace(path, (0..<n).map { outLoopRecord(UInt64($0)) },
                                  settings: TraceWriterSettings(maxRecordsPerFrame: perFrame))
        return (path, recs)
    }

    func testTraceWithoutIndexIsReadableAndFlaggedCutShort() throws {
        let dir = TempDir()
        let (path, recs) = try makeTrace(dir)
        let full = try TraceReader(path: path)
        let bytes = readBytes(path)
        // Drop the index and trailer: every frame is still there.
        let indexOffset = Int(bytes.le64(bytes.count - 32))
        let noIndex = dir.file("noindex.estrace")
        writeBytes(noIndex, Array(bytes[..<indexOffset]))
        let r = try TraceReader(path: noIndex)
        XCTAssertTrue(r.isCutShort)
        XCTAssertEqual(r.cutShort?.offset, UInt64(indexOffset))
        XCTAssertEqual(r.frames, full.frames)
        XCTAssertEqual(try readAll(noIndex), recs)
    }

    func testTraceCutMidFrameKeepsEveryCompleteFrame() throws {
        let dir = TempDir()
        let (path, recs) = try makeTrace(dir)
        let full = try TraceReader(path: path)
        let bytes = readBytes(path)
        let f7 = full.frames[7]
        for cut in [Int(f7.offset) + 10, Int(f7.offset) + 60, Int(f7.offset) + 48] {
            let cutPath = dir.file("cut\(cut).estrace")
            writeBytes(cutPath, Array(bytes[..<cut]))
            let r = try TraceReader(path: cutPath)
            XCTAssertTrue(r.isCutShort)
            XCTAssertEqual(r.cutShort?.offset, f7.offset, "cut at \(cut)")
            XCTAssertEqual(r.frames.count, 7)
            XCTAssertEqual(try readAll(cutPath), Array(recs[..<700]))
        }
    }

    func testCorruptedByteGivesChecksumErrorWithOffset() throws {
        let dir = TempDir()
        let (path, _) = try makeTrace(dir)
        let full = try TraceReader(path: path)
        var bytes = readBytes(path)
        let f3 = full.frames[3]
        bytes[Int(f3.offset) + 48 + 5] ^= 0x40
        let bad = dir.file("bad.estrace")
        writeBytes(bad, bytes)
        let r = try TraceReader(path: bad) // the index is intact: opening works
        XCTAssertThrowsError(try readAll(bad)) { e in
            guard case let TraceError.corrupted(offset, what) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(offset, f3.offset)
            XCTAssertTrue(what.contains("checksum"), what)
        }
        // Frames before it still read.
        XCTAssertEqual(try r.readFrame(2).records.count, 100)
        // Without the index, the scan stops at the same frame with the same error.
        let indexOffset = Int(bytes.le64(bytes.count - 32))
        writeBytes(bad, Array(bytes[..<indexOffset]))
        XCTAssertThrowsError(try TraceReader(path: bad)) { e in
            XCTAssertEqual((e as? TraceError)?.offset, f3.offset)
        }
    }

    func testCorruptedHeaderIndexAndTrailerAreReported() throws {
        let dir = TempDir()
        let (path, _) = try makeTrace(dir)
        let bytes = readBytes(path)
        let bad = dir.file("bad.estrace")
        // Header JSON byte.
        var b = bytes
        b[25] ^= 1
        writeBytes(bad, b)
        XCTAssertThrowsError(try TraceReader(path: bad)) { e in
            guard case let TraceError.corrupted(offset, what) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(offset, 20)
            XCTAssertTrue(what.contains("header checksum"))
        }
        // Index byte.
        let indexOffset = Int(bytes.le64(bytes.count - 32))
        b = bytes
        b[indexOffset + 14] ^= 1
        writeBytes(bad, b)
        XCTAssertThrowsError(try TraceReader(path: bad)) { e in
            XCTAssertEqual((e as? TraceError)?.offset, UInt64(indexOffset))
        }
        // Trailer byte.
        b = bytes
        b[b.count - 30] ^= 1
        writeBytes(bad, b)
        XCTAssertThrowsError(try TraceReader(path: bad)) { e in
            XCTAssertEqual((e as? TraceError)?.offset, UInt64(bytes.count - 32))
        }
    }

    func testForeignAndEmptyFiles() throws {
        let dir = TempDir()
        let elf = dir.file("a.out")
        writeBytes(elf, [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1, 0] + Array(repeating: 0, count: 100))
        XCTAssertThrowsError(try TraceReader(path: elf)) { e in
            guard case let TraceError.foreign(_, offset, found) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(offset, 0)
            XCTAssertTrue(found.contains("ELF"))
            XCTAssertTrue("\(e)".contains("not an ExitScope trace"))
        }
        let empty = dir.file("empty")
        writeBytes(empty, [])
        XCTAssertThrowsError(try TraceReader(path: empty)) { e in
            guard case TraceError.foreign = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try TraceReader(path: dir.file("missing.estrace"))) { e in
            guard case TraceError.io = e else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try TraceReader(path: dir.path)) { e in
            guard case TraceError.io = e else { return XCTFail("\(e)") }
        }
    }

    func testTruncatedInsideTheHeader() throws {
        let dir = TempDir()
        let (path, _) = try makeTrace(dir, n: 10)
        let bytes = readBytes(path)
        for cut in [4, 12, 30] {
            let p = dir.file("h\(cut).estrace")
            writeBytes(p, Array(bytes[..<cut]))
            XCTAssertThrowsError(try TraceReader(path: p)) { e in
                guard case let TraceError.truncated(offset, _) = e else { return XCTFail("cut \(cut): \(e)") }
                XCTAssertEqual(offset, UInt64(cut))
            }
        }
    }

    func testNewerMajorVersionIsRefusedAndNewerMinorRead() throws {
        let dir = TempDir()
        let (path, recs) = try makeTrace(dir, n: 10)
        var bytes = readBytes(path)
        bytes[8] = 2 // major 2
        let p = dir.file("v2.estrace")
        writeBytes(p, bytes)
        XCTAssertThrowsError(try TraceReader(path: p)) { e in
            XCTAssertEqual(e as? TraceError, .newerMajorVersion(found: 2, supported: 1))
        }
        bytes[8] = 1
        bytes[10] = 9 // minor 9: same major, read as usual
        writeBytes(p, bytes)
        let r = try TraceReader(path: p)
        XCTAssertEqual(r.formatMinor, 9)
        XCTAssertEqual(try readAll(p), recs)
    }

    /// A newer minor version may add header keys, frame items, record fields and index bytes;
    /// this reader ignores them (FORMAT.md, "Compatibility").
    func testUnknownAdditionsOfANewerMinorAreIgnored() throws {
        // Hand-build a frame: keyframe, an unknown item, a record with an unknown high mask bit.
        let items = ByteSink()
        let payload = ByteSink()
        let zero = StateSlots(), st = StateSlots()
        var s = CPUState.flat(.real)
        s.rax = 0x42
        st.set(s)
        StateCodec.encode(st.p, against: zero.p, into: payload)
        items.u8(TraceFormat.tagKeyframe); items.varint(UInt64(payload.count)); items.append(payload)
        items.u8(0x77); items.varint(3); items.append([1, 2, 3]) // unknown item
        let rec = ByteSink()
        rec.varint(RecordField.tscExit | RecordField.code | (1 << 40))
        rec.varint(zigzag(1000))
        rec.varint(5)
        rec.append([0xAA, 0xBB]) // the unknown field's bytes
        items.u8(TraceFormat.tagRecord); items.varint(UInt64(rec.count)); items.append(rec.bytes)

        let dir = TempDir()
        let path = dir.file("newer.estrace")
        let json = Array(#"{"host_cpu":"future","vcpu_count":1,"future_key":{"x":1}}"#.utf8)
        let file = ByteSink()
        file.append(TraceFormat.fileMagic); file.u16(1); file.u16(3); file.u32(UInt32(json.count)); file.u32(CRC32C.checksum(json)); file.append(json)
        let compressed = try ZstdCompressor(level: 3).compress(items.bytes)
        var info = FrameInfo(offset: UInt64(file.count), compressedSize: UInt32(compressed.count), rawSize: UInt32(items.count),
                             recordCount: 1, firstSeq: 0, lastSeq: 0, firstVcpuSeq: 0, vcpu: 0, flags: 0, checksum: 0)
        info.checksum = compressed.withUnsafeBytes { FrameInfo.checksum(header: info.headerBytes(), payload: $0) }
        file.append(info.headerBytes()); file.append(compressed)
        writeBytes(path, file.bytes)

        let r = try TraceReader(path: path)
        XCTAssertEqual(r.header.hostCPU, "future")
        XCTAssertTrue(r.isCutShort) // no index
        let recs = try readAll(path)
        XCTAssertEqual(recs.count, 1)
        XCTAssertEqual(recs.first?.state.rax, 0x42)
        XCTAssertEqual(recs.first?.tscExit, 1000)
        XCTAssertEqual(recs.first?.code, 5)
    }

    /// Random damage never crashes the reader: it either reads or throws a TraceError.
    func testRandomDamageNeverCrashes() throws {
        let dir = TempDir()
        let path = dir.file("all.estrace")
        try writeTrace(path, everyKindRecords() + (0..<300).map { outLoopRecord(UInt64($0)) },
                       settings: TraceWriterSettings(maxRecordsPerFrame: 50, compressionLevel: 1))
        let good = readBytes(path)
        var rng = SplitMix(seed: 99)
        let p = dir.file("damaged.estrace")
        for round in 0..<300 {
            var b = good
            switch round % 3 {
            case 0: for _ in 0..<(1 + Int(rng.next() % 4)) { b[Int(rng.next() % UInt64(b.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            case 1: b = Array(b[..<Int(rng.next() % UInt64(b.count))])
            default:
                let at = Int(rng.next() % UInt64(b.count))
                b.insert(contentsOf: (0..<Int(rng.next() % 9)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: at)
            }
            writeBytes(p, b)
            do {
                let r = try TraceReader(path: p)
                try r.forEachRecord { _ in }
                for i in r.frames.indices { _ = try? r.readFrame(i) }
            } catch is TraceError {
                // expected for most damage
            }
        }
    }
}
