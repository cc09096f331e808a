import Benchmark
import Foundation
import Replay
import Trace
import X86
import X86Emulator

/// Replay throughput in records/s (goal ≥ 2M per core), one job and --jobs 2, on the port-I/O
/// loop trace (committed OUTs) and on a single-step trace of a real-mode loop.
/// Run: swift package --allow-writing-to-package-directory benchmark --target ExitScopeBenchmarks --filter Replay
enum ReplayBench {
    static let records = 1_000_000
    static let dir = NSTemporaryDirectory() + "exitscope-replay-bench"
    static var outLoopPath: String { dir + "/outloop.estrace" }
    static var stepPath: String { dir + "/steps.estrace" }

    /// The OUT loop as the recorder writes it (TraceBench.outLoopRecord: committed `out dx, al`).
    static let preparedOutLoop: Void = {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try! TraceBench.write(outLoopPath, exits: records)
    }()

    /// Steps of `inc ax; dec cx; jmp` in real mode, states produced by running the loop (a JMP, not
    /// a JNZ: the 16-bit CX would end the loop after 65536 turns, before the records are written).
    static let preparedSteps: Void = {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let code: [UInt8] = [0x40, 0x49, 0xEB, 0xFC]  // 0x1000: inc ax; dec cx; jmp 0x1000
        let mem = FlatMemory(size: 1 << 16)
        mem.load(0x1000, code)
        var s = CPUState.flat(.real)
        s.rip = 0x1000
        s.rcx = UInt64(records)
        let cpu = X86Executor(state: s, memory: mem)
        let w = try! TraceWriter(path: stepPath, header: TraceHeader(kvmBackend: "synthetic"))
        for _ in 0..<records {
            let st = cpu.state
            let off = Int(st.rip - 0x1000)
            let len = off == 2 ? 2 : 1
            let bytes = Array(code[off..<(off + len)])
            try! w.append(TraceRecord(kind: .step, kvmExitReason: 4, exitCode: .exception(1), instructionStart: st.rip,
                                      instructionBytes: bytes, candidates: 1, visibility: .pending, state: st,
                                      memory: [GuestBytes(role: .instruction, gpa: st.rip, bytes: bytes)]))
            _ = cpu.step()
        }
        _ = try! w.finish()
    }()

    static func replay(_ path: String, jobs: Int) throws -> ReplaySummary {
        // As `exitscope replay` without --json: passing verdicts counted, failing ones delivered.
        let s = try ReplayRun.run(try TraceReader(path: path), options: ReplayOptions(jobs: jobs, delivery: .failures)) { _ in }
        precondition(s.failures(allowing: [.incomplete]) == 0, "replay benchmark trace did not replay cleanly")
        return s
    }
}

func replayBenchmarks() {
    let config = Benchmark.Configuration(metrics: [.wallClock, .throughput, .peakMemoryResident],
                                         scalingFactor: .mega, maxDuration: .seconds(30), maxIterations: 3)
    for jobs in [1, 2] {
        Benchmark("Replay: OUT loop, 1M exits, jobs \(jobs)", configuration: config) { benchmark in
            _ = ReplayBench.preparedOutLoop
            benchmark.startMeasurement()
            let s = try ReplayBench.replay(ReplayBench.outLoopPath, jobs: jobs)
            benchmark.stopMeasurement()
            blackHole(s.records)
        }
        Benchmark("Replay: single-step loop, 1M steps, jobs \(jobs)", configuration: config) { benchmark in
            _ = ReplayBench.preparedSteps
            benchmark.startMeasurement()
            let s = try ReplayBench.replay(ReplayBench.stepPath, jobs: jobs)
            benchmark.stopMeasurement()
            blackHole(s.records)
        }
    }
}
