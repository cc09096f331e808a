// libFuzzer target over the trace reader (FORMAT.md, "Fuzzing"). Built with
//   swift build -c release --scratch-path .build-fuzz --product TraceFuzz \
//     -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library -Xswiftc -DFUZZING
// libFuzzer then supplies `main`. Without -DFUZZING (a plain `swift build`) this is a small
// tool that runs the same checks over the files named on its command line, to replay a crash.
import Trace

/// Every input is tried two ways: as a whole trace file (header, index or scan, frames,
/// checksums, zstd, records, seek) and as an uncompressed frame payload (so mutations reach
/// the record decoder without having to fix checksums). Errors are expected; crashes are bugs.
func exercise(_ bytes: [UInt8]) {
    if let r = try? TraceReader(bytes: bytes, name: "fuzz") {
        var it = r.records()
        var n = 0
        while n < 100_000, let rec = try? it.next() { n += 1; _ = rec.state.mode }
        for i in r.frames.indices.prefix(64) { _ = try? r.readFrame(i) }
        if let v = r.vcpus.first { _ = try? r.record(seq: v.lastSeq) }
    }
    if let first = bytes.first {
        _ = try? FrameDecoder.decodeUncompressed(Array(bytes.dropFirst()), recordCount: UInt32(first))
    }
}

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    exercise(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

/// libFuzzer's driver entry point (compiler-rt), used because SwiftPM links an executable's
/// entry as `<Target>_main` rather than letting libFuzzer's own `main` in.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@_cdecl("TraceFuzz_main")
public func traceFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var c = argc
    var v = argv
    return LLVMFuzzerRunDriver(&c, &v, fuzzOne)
}
#else
import Foundation

@main
struct TraceFuzzReplay {
    static func main() {
        let files = CommandLine.arguments.dropFirst()
        if files.isEmpty {
            print("usage: TraceFuzz FILE... (runs the fuzz target's checks over each file; see FORMAT.md)")
            return
        }
        for f in files {
            guard let d = FileManager.default.contents(atPath: f) else { print("\(f): cannot read"); continue }
            exercise(Array(d))
            print("\(f): ok")
        }
    }
}
#endif
