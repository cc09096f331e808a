// swift-tools-version: 6.1
// ExitScope: record every VM exit, replay it through an x86 emulator, report the overhead.
// The module layout follows DESIGN.md's table; dependencies only point down it.
import PackageDescription

let optimize: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"])]

let package = Package(
    name: "ExitScope",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "exitscope", targets: ["exitscope"]),
        // libFuzzer target over the trace reader; build command in Sources/Trace/FORMAT.md.
        .executable(name: "TraceFuzz", targets: ["TraceFuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // C shims
        .target(name: "CKVM"),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),

        // Vocabulary, emulator, trace file
        .target(name: "X86", swiftSettings: optimize),
        .target(name: "X86Emulator", dependencies: ["X86"],
                // the decoder's opcode table and its generator: Tables.generated.swift is built from them
                exclude: ["Decoder/opcodes.tsv", "Decoder/gen_tables.py", "Decoder/DECODER.md",
                          "Executor/EXEC.md", "Executor/UNDEFINED_FLAGS.md"],
                swiftSettings: optimize),
        .target(name: "Trace", dependencies: ["X86", "CZstd"], exclude: ["FORMAT.md"], swiftSettings: optimize),

        // The machine
        .target(name: "KVM", dependencies: ["CKVM", "X86"], swiftSettings: optimize),
        .target(name: "VMM", dependencies: ["KVM", "X86", "X86Emulator"], exclude: ["README.md"], swiftSettings: optimize),

        // Recording, replay, reports
        .target(name: "Record", dependencies: ["CKVM", "VMM", "Trace", "X86Emulator"], exclude: ["README.md"], swiftSettings: optimize),
        .target(name: "Replay", dependencies: ["Trace", "X86Emulator"], swiftSettings: optimize),
        .target(name: "Report", dependencies: ["Trace", "X86Emulator", .product(name: "GRDB", package: "GRDB.swift")],
                exclude: ["CSV.md", "SCHEMA.md"], swiftSettings: optimize),

        // The command-line tool: argument parsing and printing only
        .executableTarget(name: "exitscope", dependencies: [
            "X86", "X86Emulator", "Trace", "KVM", "VMM", "Record", "Replay", "Report",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .executableTarget(name: "TraceFuzz", dependencies: ["Trace"], path: "Tests/Fuzz/TraceFuzz"),

        .testTarget(name: "X86Tests", dependencies: ["X86"]),
        .testTarget(name: "X86EmulatorTests", dependencies: ["X86", "X86Emulator"],
                    // the host-CPU sandbox's C source, compiled by the validation test with gcc
                    exclude: ["Sandbox"]),
        .testTarget(name: "TraceTests", dependencies: ["Trace", "X86"], exclude: ["Fixtures"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "CKVM"]),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "KVM", "X86", "X86Emulator"]),
        .testTarget(name: "RecordTests", dependencies: ["Record", "VMM", "Trace", "KVM", "CKVM"]),
        .testTarget(name: "ReplayTests", dependencies: ["Replay", "Record", "VMM", "Trace", "X86Emulator"]),
        .testTarget(name: "ReportTests", dependencies: ["Report", "Trace"]),
        .testTarget(name: "CLITests", dependencies: ["exitscope"]),

        .executableTarget(
            name: "ExitScopeBenchmarks",
            dependencies: [
                "X86", "X86Emulator", "Trace", "KVM", "VMM", "Record", "Replay", "Report",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/ExitScopeBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
