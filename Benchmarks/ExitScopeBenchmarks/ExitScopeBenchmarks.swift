import Benchmark
let benchmarks: @Sendable () -> Void = {
    traceBenchmarks()
    decoderBenchmarks()
    executorBenchmarks()
    RunBenchmark.register()
    replayBenchmarks()
    recordBenchmarks()
}
