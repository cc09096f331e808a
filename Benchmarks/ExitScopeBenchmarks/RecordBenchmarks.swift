import Benchmark
import Foundation
import Record
import Trace
import VMM

/// Recording overhead (issue 4): the port-I/O loop guest run with no observer, then recorded
/// (default fidelity, then --fidelity full), in one process and one run, so their ratio is
/// meaningful.
/// Also reports trace bytes per exit. Needs /dev/kvm; without it these benchmarks are not
/// registered (and say so).
func recordBenchmarks() {
    guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
        print("record benchmarks skipped: /dev/kvm is not present")
        return
    }
    let exits = 20_000
    // One iteration = one whole guest run of `exits` exits (throughput: guest runs per second).
    let config = Benchmark.Configuration(metrics: [.wallClock, .cpuUser, .cpuSystem, .throughput, .peakMemoryResident],
                                         maxDuration: .seconds(20), maxIterations: 5)
    Benchmark("Run: io-loop, \(exits) exits, no observer", configuration: config) { benchmark in
        try guestRun(exits: exits, benchmark: benchmark, fidelity: nil)
    }
    Benchmark("Record: io-loop, \(exits) exits, fidelity exit", configuration: config) { benchmark in
        try guestRun(exits: exits, benchmark: benchmark, fidelity: .exit)
    }
    Benchmark("Record: io-loop, \(exits) exits, fidelity full", configuration: config) { benchmark in
        try guestRun(exits: exits, benchmark: benchmark, fidelity: .full)
    }
}

/// The repository root, from this file's path (benchmarks run from the package directory).
private let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

private func guestRun(exits: Int, benchmark: Benchmark, fidelity: Fidelity?) throws {
    let located = try ImageLocator.locate(repositoryRoot + "/Samples/io-loop-\(exits)")
    let bytes = try ImageLocator.readFile(located.elfPath)
    let image = try GuestImage.elf(bytes, path: located.elfPath)
    var config = MachineConfig()
    if let t = image.machineText { try config.apply(t) }
    let tracePath = NSTemporaryDirectory() + "bench-\(getpid()).estrace"
    defer { try? FileManager.default.removeItem(atPath: tracePath) }
    do {
        let machine = try Machine(config: config, image: image, serial: try SerialOutput(path: "/dev/null"))
        if let fidelity {
            let options = RecorderOptions(observer: ObserverOptions(fidelity: fidelity))
            let recorder = try Recorder(path: tracePath, machine: machine, imagePath: located.elfPath, imageBytes: bytes,
                                        symbols: [], commandLine: ["benchmark"], options: options)
            benchmark.startMeasurement()
            let summary = machine.run(observer: recorder, options: options.observer)
            let recording = try recorder.finish()
            benchmark.stopMeasurement()
            print("record (\(fidelity.rawValue)): \(summary.totalExits) exits, " +
                  String(format: "%.2f bytes/exit", recording.bytesPerExit))
        } else {
            benchmark.startMeasurement()
            let summary = machine.run()
            benchmark.stopMeasurement()
            blackHole(summary.totalExits)
        }
    }
}
