import Benchmark
import Foundation
import Trace
import X86

/// Trace file figures: writing and reading speed in records/s, bytes per exit on a tight OUT
/// loop, and reading beside `zstd -d` of the very same frames (the floor: decompression only).
/// Run: swift package --allow-writing-to-package-directory benchmark --target ExitScopeBenchmarks --filter Trace
enum TraceBench {
    static let exits = 1_000_000
    static let dir = NSTemporaryDirectory() + "exitscope-trace-bench"
    static var tracePath: String { dir + "/outloop.estrace" }
    static var zstPath: String { dir + "/outloop-frames.zst" }

    /// What the recorder sees on `out dx, al` in a loop: AL, RCX and the TSC move each exit.
    static func outLoopRecord(_ i: UInt64, _ rng: inout UInt64) -> TraceRecord {
        var s = CPUState.flat(.real)
        s.rax = i & 0xFF
        s.rdx = 0x80
        s.rcx = 10_000_000 &- i
        s.rip = 0x1005
        s.rflags = 0x202 | (i & 0xFF == 0 ? 0x40 : 0)
        rng = rng &* 6364136223846793005 &+ 1442695040888963407
        let jitter = (rng >> 33) % 600
        let tsc = 1_000_000 + i * 24_000 + jitter
        return TraceRecord(
            kind: .exit, kvmExitReason: 2, exitCode: .ioio,
            exitInfo1: IOIOInfo(port: 0x80, isIn: false, size: 1, addressSize: 16).exitInfo1,
            nextRIP: 0x1005, instructionStart: 0x1004, instructionBytes: [0xEE], candidates: 1, visibility: .committed,
            state: s, accesses: [DeviceAccess(space: .port, address: 0x80, size: 1, isWrite: true, data: [UInt8(i & 0xFF)])],
            memory: [GuestBytes(role: .instruction, gpa: 0x1004, bytes: [0xEE])],
            tscExit: tsc, tscEntry: tsc + 2_000 + (rng >> 40) % 200)
    }

    static func header() -> TraceHeader {
        TraceHeader(tscHz: 3_000_000_000, hostCPU: "benchmark", kvmBackend: "synthetic", vcpuCount: 1)
    }

    @discardableResult
    static func write(_ path: String, exits: Int) throws -> TraceWriterStatistics {
        let w = try TraceWriter(path: path, header: header())
        var rng: UInt64 = 1
        for i in 0..<exits { try w.append(outLoopRecord(UInt64(i), &rng)) }
        return try w.finish()
    }

    /// Writes the trace once, and its frames as a plain .zst stream for `zstd -d`.
    static let prepared: Void = {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let stats = try! write(tracePath, exits: exits)
        let reader = try! TraceReader(path: tracePath)
        var zst: [UInt8] = []
        for i in reader.frames.indices { zst += try! reader.compressedFrame(i) }
        FileManager.default.createFile(atPath: zstPath, contents: Data(zst))
        let perExit = Double(stats.fileBytes) / Double(exits)
        FileHandle.standardError.write(Data(String(format: "trace: %d exits, %llu bytes, %.3f bytes/exit, %d frames, %llu raw bytes\n",
                                                   exits, stats.fileBytes, perExit, stats.frames, stats.rawBytes).utf8))
    }()
}

func traceBenchmarks() {
    let scaled = Benchmark.Configuration(metrics: [.wallClock, .throughput, .peakMemoryResident, .mallocCountTotal],
                                         scalingFactor: .mega, maxDuration: .seconds(20), maxIterations: 5)

    Benchmark("Trace write: OUT loop, 1M exits", configuration: Benchmark.Configuration(
        metrics: [.wallClock, .throughput, .peakMemoryResident, .custom("file bytes per 1000 exits", useScalingFactor: false)],
        scalingFactor: .mega, maxDuration: .seconds(20), maxIterations: 5)) { benchmark in
        // Records are built before the clock starts (100k of them, appended ten times), so the
        // figure is the writer's own cost on the vCPU thread plus waiting for the compressor at finish.
        var rng: UInt64 = 1
        let batch = (0..<100_000).map { TraceBench.outLoopRecord(UInt64($0), &rng) }
        let path = TraceBench.dir + "/write.estrace"
        try? FileManager.default.createDirectory(atPath: TraceBench.dir, withIntermediateDirectories: true)
        benchmark.startMeasurement()
        let w = try TraceWriter(path: path, header: TraceBench.header())
        for _ in 0..<(TraceBench.exits / batch.count) {
            for r in batch { try w.append(r) }
        }
        let stats = try w.finish()
        benchmark.stopMeasurement()
        benchmark.measurement(.custom("file bytes per 1000 exits", useScalingFactor: false), Int(stats.fileBytes * 1000 / UInt64(TraceBench.exits)))
    }

    Benchmark("Trace read: all records in order, 1M exits", configuration: scaled) { benchmark in
        _ = TraceBench.prepared
        benchmark.startMeasurement()
        let reader = try TraceReader(path: TraceBench.tracePath)
        var n = 0
        var sum: UInt64 = 0
        try reader.forEachRecord { r in n += 1; sum &+= r.state.rax }
        benchmark.stopMeasurement()
        precondition(n == TraceBench.exits)
        blackHole(sum)
    }

    Benchmark("Trace read: zstd -d of the same frames (floor)", configuration: scaled) { benchmark in
        _ = TraceBench.prepared
        benchmark.startMeasurement()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/zstd")
        p.arguments = ["-d", "-q", "-c", TraceBench.zstPath]
        p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        p.waitUntilExit()
        benchmark.stopMeasurement()
        precondition(p.terminationStatus == 0)
    }
}
