import Foundation
import Trace
import X86
import XCTest

/// `exitscope replay` and `exitscope diff` as a user runs them: the built binary, its output and status.
final class ReplayCommandTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: ReportCommandTests.binary.path) else {
            throw XCTSkip("exitscope binary not built at \(ReportCommandTests.binary.path)")
        }
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("replay-cli-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func exitscope(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = ReportCommandTests.binary
        p.arguments = args
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile()
        let err = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    /// Committed `out dx, al` exits; every `wrongEvery`-th records another value than AL held.
    func writeTrace(_ name: String, outs: Int, wrongEvery: Int = 0) throws -> String {
        let path = dir + "/\(name).estrace"
        let w = try TraceWriter(path: path, header: TraceHeader(kvmBackend: "kvm_pvm"),
                                settings: TraceWriterSettings(maxRecordsPerFrame: 16))
        for i in 0..<outs {
            var s = CPUState.flat(.real)
            s.rip = 0x1001
            s.rdx = 0x3F8
            s.rax = UInt64(i & 0x7F)
            let data = UInt8(wrongEvery > 0 && i % wrongEvery == wrongEvery - 1 ? 0xFF : i & 0x7F)
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 2, exitCode: .ioio,
                                     exitInfo1: IOIOInfo(port: 0x3F8, isIn: false, size: 1, addressSize: 16).exitInfo1,
                                     nextRIP: 0x1001, instructionStart: 0x1000, instructionBytes: [0xEE], candidates: 1,
                                     visibility: .committed, state: s,
                                     accesses: [DeviceAccess(space: .port, address: 0x3F8, size: 1, isWrite: true, data: [data])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x1000, bytes: [0xEE])]))
        }
        _ = try w.finish()
        return path
    }

    func testCleanTracePassesAndDivergingTraceFailsUnlessAllowed() throws {
        let clean = try writeTrace("clean", outs: 100)
        let r1 = try exitscope(["replay", clean])
        XCTAssertEqual(r1.status, 0, r1.err)
        XCTAssertTrue(r1.out.contains("match"), r1.out)
        XCTAssertTrue(r1.out.contains("result: PASS"), r1.out)

        let bad = try writeTrace("bad", outs: 100, wrongEvery: 10)
        let r2 = try exitscope(["replay", bad])
        XCTAssertEqual(r2.status, 1)
        XCTAssertTrue(r2.out.contains("first divergence"), r2.out)
        XCTAssertTrue(r2.out.contains("port.value"), r2.out)
        XCTAssertEqual(try exitscope(["replay", "--allow", "divergence", bad]).status, 0)
        XCTAssertEqual(try exitscope(["replay", "--allow", "nonsense", bad]).status, 64)

        // --json: one line per verdict, identical with --jobs 2; --export-divergences: exec inputs.
        let j1 = try exitscope(["replay", "--json", bad])
        let j2 = try exitscope(["replay", "--json", "--jobs", "2", bad])
        XCTAssertEqual(j1.out.split(separator: "\n").count, 100)
        XCTAssertEqual(j1.out, j2.out)
        let export = dir + "/div"
        _ = try exitscope(["replay", "--export-divergences", export, bad])
        let files = try FileManager.default.contentsOfDirectory(atPath: export).sorted()
        XCTAssertEqual(files.count, 10)
        let exec = try exitscope(["exec", "--json", export + "/" + files[0]])
        XCTAssertEqual(exec.status, 0, exec.err)
        XCTAssertTrue(exec.out.contains("\"port\""), exec.out)
    }

    func testCorruptedTraceIsOneMessageWithAnOffsetAndStatusTwo() throws {
        let path = try writeTrace("c", outs: 100)
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        let reader = try TraceReader(path: path)
        let at = Int(reader.frames[1].offset) + 52
        bytes[at] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let r = try exitscope(["replay", path])
        XCTAssertEqual(r.status, 2)
        XCTAssertTrue(r.err.contains("offset"), r.err)
        XCTAssertEqual(r.err.split(separator: "\n").count, 1, r.err)
        let foreign = dir + "/foreign"
        try Data("not a trace".utf8).write(to: URL(fileURLWithPath: foreign))
        XCTAssertEqual(try exitscope(["replay", foreign]).status, 2)
    }

    func testDiffOfTwoTraces() throws {
        let a = try writeTrace("a", outs: 50)
        let b = try writeTrace("b", outs: 50, wrongEvery: 25)
        XCTAssertEqual(try exitscope(["diff", a, a]).status, 0)
        let r = try exitscope(["diff", a, b])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.out.contains("data differs: 2"), r.out)
        let j = try exitscope(["diff", "--json", a, b])
        XCTAssertTrue(j.out.contains("\"data_differs\":2"), j.out)
    }
}
