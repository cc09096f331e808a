import ArgumentParser
import Foundation
import Trace

/// `--symbols FILE` of show, report and ingest: guest symbols from a System.map or
/// /proc/kallsyms, in place of the header's (perf kvm's --guestkallsyms).
struct SymbolsOption: ParsableArguments {
    @Option(name: .customLong("symbols"),
            help: "Name RIPs with this System.map or /proc/kallsyms of the guest (e.g. a Linux kernel's), instead of the image's symbols.")
    var path: String?

    /// `header` with the file's symbols, or unchanged without --symbols.
    func apply(to header: TraceHeader) throws -> TraceHeader {
        guard let path else { return header }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("--symbols: cannot read \(path)")
        }
        var h = header
        do {
            h.symbols = try SymbolMap.parse(String(decoding: data, as: UTF8.self))
        } catch {
            throw ValidationError("--symbols \(path): \(error)")
        }
        if h.symbols.isEmpty { throw ValidationError("--symbols \(path): no text symbols (types t, T, w, W) with an address") }
        return h
    }
}
