import ArgumentParser
import Foundation
import KVM
import Trace
import X86
import X86Emulator

/// `exitscope show`: print a trace — summary, one line per exit, one exit in full, or JSON lines.
struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show",
        abstract: "Print a trace: summary and one line per exit, one exit in full, or JSON lines.",
        discussion: """
            Without options: the trace's facts and exit counts by reason, then one line per record
            in the manner of `perf script`: seq [vcpu] seconds: REASON RIP (symbol) info [bytes] text.
            --exit N prints record N in full with the VMCB's field names (reached through the index).
            --json prints one JSON object per record (states in the CPU-state JSON form);
            with --summary, one JSON object with the summary.
            Reasons are the SVM exit names (IOIO, NPF, HLT, MSR, SHUTDOWN, ...) and the record kinds
            COMPLETION, STEP, EVENT, GAP, MARKER.
            """
    )

    @Argument(help: "The trace file (.estrace).")
    var trace: String

    @Option(name: .customLong("exit"), help: "Print the record with this sequence number in full.")
    var exitSeq: UInt64?

    @Option(help: "Only records of this vCPU.")
    var vcpu: UInt16?

    @Option(help: "Only records with this reason (e.g. IOIO, NPF, HLT, MARKER), or an exit code such as 0x7b.")
    var reason: String?

    @Flag(help: "JSON lines instead of text.")
    var json = false

    @Flag(help: "Only the summary (header facts, counts by reason).")
    var summary = false

    @Option(help: "Print at most this many records.")
    var limit: UInt64?

    @Option(help: "Start at this sequence number.")
    var from: UInt64 = 0

    @OptionGroup var symbols: SymbolsOption

    static let naming = TraceNaming(
        disassemble: { bytes, mode, address in
            switch X86Emulator.decode(bytes: bytes, mode: DecoderMode(mode)) {
            case .success(let insn): return insn.text(address: address)
            case .failure: return nil
            }
        },
        kvmExitName: { VMExit.name(ofReason: $0) })

    /// Every reason name a record can have, for checking --reason.
    static let reasonNames: [String] = {
        var names = Set<String>()
        for c in UInt64(0)..<0x90 { names.insert(SVMExitCode(c).name) }
        for c in UInt64(0x400)...0x402 { names.insert(SVMExitCode(c).name) }
        names.insert(SVMExitCode.invalid.name)
        names.insert(SVMExitCode.none.name)
        for k in RecordKind.allCases where k != .exit { names.insert(k.name.uppercased()) }
        return names.filter { !$0.hasPrefix("0x") }.sorted()
    }()

    func run() throws {
        do {
            try show()
        } catch let e as TraceError {
            Output.shared.flush()
            FileHandle.standardError.write(Data("exitscope show: \(e)\n".utf8))
            throw ExitCode(2)
        }
    }

    private func show() throws {
        var reasonFilter: String?
        if let r = reason {
            if let code = Hex.parse(r), r.lowercased().hasPrefix("0x") {
                reasonFilter = SVMExitCode(code).name
            } else if ShowCommand.reasonNames.contains(r.uppercased()) {
                reasonFilter = r.uppercased()
            } else {
                // Name the reasons this trace has: the full list of SVM exit names is long.
                var present = Set<String>()
                if let reader = try? TraceReader(path: trace) {
                    try? reader.forEachRecord { present.insert($0.reasonName) }
                }
                let these = present.isEmpty ? "" : " this trace has \(present.sorted().joined(separator: ", "));"
                throw ValidationError("unknown reason '\(r)';\(these) valid are the SVM exit names (IOIO, NPF, HLT, MSR, CPUID, SHUTDOWN, EXCP_DB, ...), COMPLETION, STEP, EVENT, GAP, MARKER, or an exit code like 0x7b")
            }
        }
        let reader = try TraceReader(path: trace)
        var text = TraceText(header: try symbols.apply(to: reader.header), naming: ShowCommand.naming)
        let out = Output.shared
        defer { out.flush() }

        if let n = exitSeq {
            let r = try reader.record(seq: n)
            if json { out.line(text.json(r)) } else { out.write(text.full(r)) }
            return
        }

        func selected(_ r: TraceRecord) -> Bool { reasonFilter == nil || r.reasonName == reasonFilter }
        let filtered = vcpu != nil || reasonFilter != nil || from > 0

        if summary || !json {
            var s = TraceSummary()
            try reader.forEachRecord(vcpu: vcpu, from: from) { r in if selected(r) { s.add(r) } }
            if json {
                out.line(try text.summaryJSON(reader, s))
                return
            }
            out.write(text.summary(reader, s, filtered: filtered))
            if summary { return }
            out.line("")
            // Times are seconds since the first timed record shown.
            text.baseTSC = s.firstTSC ?? 0
        }

        var printed: UInt64 = 0
        var it = reader.records(vcpu: vcpu, from: from)
        while let r = try it.next() {
            if let l = limit, printed >= l { break }
            guard selected(r) else { continue }
            out.line(json ? text.json(r) : text.line(r))
            printed += 1
        }
    }
}

/// Buffered stdout: `show` may print millions of lines.
final class Output: @unchecked Sendable {
    static let shared = Output()
    private var buffer: [UInt8] = []

    func write(_ s: String) {
        buffer.append(contentsOf: s.utf8)
        if buffer.count >= 1 << 16 { flush() }
    }

    func line(_ s: String) { write(s); buffer.append(0x0A) }

    func flush() {
        guard !buffer.isEmpty else { return }
        buffer.withUnsafeBytes { p in
            var done = 0
            while done < p.count {
                let n = Foundation.write(1, p.baseAddress! + done, p.count - done)
                if n <= 0 { if errno == EINTR { continue }; break }
                done += n
            }
        }
        buffer.removeAll(keepingCapacity: true)
    }
}
