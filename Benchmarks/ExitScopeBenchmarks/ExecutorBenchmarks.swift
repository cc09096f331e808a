import Benchmark
import X86
import X86Emulator

/// The executor's interpreter speed on a long-mode loop of add/dec/jnz (issue 5's figure:
/// goal >= 200M instructions/s). Throughput is instructions per second of wall time; each
/// iteration runs 1M instructions, so 1M / CPU user time gives the rate on a loaded machine.
func executorBenchmarks() {
    Benchmark("Executor long-mode add/dec/jnz loop",
              configuration: .init(metrics: [.wallClock, .cpuUser, .throughput], scalingFactor: .mega,
                                   maxDuration: .seconds(5), maxIterations: 20)) { benchmark in
        let (cpu, _) = loopMachine()
        benchmark.startMeasurement()
        let (n, _) = cpu.run(count: benchmark.scaledIterations.count)
        benchmark.stopMeasurement()
        blackHole(n)
    }

    // Replay's pattern: a new state per record, then one instruction (here OUT DX, AL, whose
    // port access is logged). Throughput is records per second.
    Benchmark("Executor set state + step OUT (replay pattern)",
              configuration: .init(metrics: [.wallClock, .throughput], scalingFactor: .kilo,
                                   maxDuration: .seconds(5), maxIterations: 50)) { benchmark in
        let (cpu, mem) = loopMachine()
        mem.load(0x2000, [0xEE])
        let ports = NullPorts()
        cpu.ports = ports
        var s = cpu.state
        s.rip = 0x2000
        s.rdx = 0x3F8
        benchmark.startMeasurement()
        for i in benchmark.scaledIterations {
            s.rax = UInt64(i & 0xFF)
            cpu.state = s
            cpu.accessLog.removeAll(keepingCapacity: true)
            blackHole(cpu.step())
        }
        benchmark.stopMeasurement()
    }
}

final class NullPorts: IOPorts {
    func read(port: UInt16, size: Int) -> UInt32? { 0 }
    func write(port: UInt16, size: Int, value: UInt32) {}
}

/// 64-bit code at 0x1000: add rax, rbx; dec rcx; jnz -7, with rcx large enough never to end;
/// identity-mapped 2 MiB pages, guest RAM as one flat block.
func loopMachine() -> (X86Executor, FlatMemory) {
    let mem = FlatMemory(size: 4 << 20)
    mem.load(0x70000, le(0x71000 | 7))
    mem.load(0x71000, le(0x72000 | 7))
    mem.load(0x72000, le(0x87))
    mem.load(0x72008, le(0x20_0000 | 0x87))
    mem.load(0x1000, [0x48, 0x01, 0xD8, 0x48, 0xFF, 0xC9, 0x75, 0xF8])
    var s = CPUState.flat(.long64)
    s.cr3 = 0x70000
    s.rip = 0x1000
    s.rcx = 1 << 62
    s.rbx = 3
    return (X86Executor(state: s, memory: mem), mem)
}

private func le(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
