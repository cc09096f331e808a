import Benchmark
import Foundation
import Glibc
import VMM

/// `exitscope run` against the floor: exits per second of the io-loop sample (real mode, one
/// OUT exit per iteration) on ExitScope's VMM, beside Benchmarks/floor/kvm-run-floor.c, a
/// minimal C program doing the same KVM_RUN loop on the same image (built by gcc here).
/// Each iteration runs the floor and then the VMM, so the ratio comes from one run.
/// The VMM side is what `exitscope run` executes (Machine.run, serial output discarded);
/// its exits/s is the run summary's total exits over its elapsed time, as `exitscope run` prints.
/// EXITSCOPE_BENCH_IO_LOOP_N sets the iteration count (default 200000).
enum RunBenchmark {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func register() {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            FileHandle.standardError.write(Data("run benchmark skipped: /dev/kvm is not available\n".utf8))
            return
        }
        close(fd)
        let n = ProcessInfo.processInfo.environment["EXITSCOPE_BENCH_IO_LOOP_N"].flatMap { Int($0) } ?? 200_000
        let vmmMetric = BenchmarkMetric.custom("exitscope run exits/s", polarity: .prefersLarger, useScalingFactor: false)
        let floorMetric = BenchmarkMetric.custom("KVM_RUN floor exits/s", polarity: .prefersLarger, useScalingFactor: false)
        let ratioMetric = BenchmarkMetric.custom("exitscope/floor x1000", polarity: .prefersLarger, useScalingFactor: false)

        Benchmark("run: io-loop-\(n) exits/s, exitscope run vs KVM_RUN floor",
                  configuration: .init(metrics: [vmmMetric, floorMetric, ratioMetric, .wallClock],
                                       maxDuration: .seconds(120), maxIterations: 5)) { benchmark in
            let elf = root.appendingPathComponent("Samples/build/io-loop-\(n).elf").path
            let floor = FileManager.default.temporaryDirectory.appendingPathComponent("exitscope-kvm-run-floor").path
            do {
                try shell(["make", "-s", "-C", root.appendingPathComponent("Samples").path, "build/io-loop-\(n).elf"])
                try shell(["gcc", "-O2", "-o", floor, root.appendingPathComponent("Benchmarks/floor/kvm-run-floor.c").path])
                let image = try GuestImage.elf(try ImageLocator.readFile(elf), path: elf)
                var config = MachineConfig()
                if let text = image.machineText { try config.apply(text) }
                for _ in benchmark.scaledIterations {
                    let floorRate = try runFloor(floor, elf)
                    let machine = try Machine(config: config, image: image, serial: SerialOutput(fd: -1))
                    let summary = machine.run()
                    guard summary.exitStatus == 0, summary.elapsedSeconds > 0 else {
                        benchmark.error("io-loop did not finish: \(summary.stop.description)")
                        return
                    }
                    let rate = Double(summary.totalExits) / summary.elapsedSeconds
                    benchmark.measurement(floorMetric, Int(floorRate))
                    benchmark.measurement(vmmMetric, Int(rate))
                    benchmark.measurement(ratioMetric, Int((rate / floorRate * 1000).rounded()))
                    print(String(format: "io-loop-%d: exitscope run %.0f exits/s, floor %.0f exits/s, ratio %.3f",
                                 n, rate, floorRate, rate / floorRate))
                }
            } catch {
                benchmark.error("\(error)")
            }
        }
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    @discardableResult
    static func shell(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw Failure(description: "\(args.joined(separator: " ")) failed: \(String(decoding: e, as: UTF8.self))")
        }
        return String(decoding: o, as: UTF8.self)
    }

    /// The floor's exits/s from its JSON line.
    static func runFloor(_ floor: String, _ elf: String) throws -> Double {
        let text = try shell([floor, elf])
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
              let rate = (object["exits_per_second"] as? NSNumber)?.doubleValue, rate > 0 else {
            throw Failure(description: "kvm-run-floor printed \(text)")
        }
        return rate
    }
}
