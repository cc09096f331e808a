import Foundation
import X86

/// How `show` (and anyone else printing records) names things the Trace module cannot know
/// itself: instruction text comes from the emulator's decoder, KVM exit names from the KVM module.
public struct TraceNaming: Sendable {
    /// Intel-syntax text of the instruction in `bytes` at `address` in `mode`, or nil.
    public var disassemble: @Sendable (_ bytes: [UInt8], _ mode: CPUMode, _ address: UInt64) -> String?
    /// "IO", "MMIO", ... for a KVM_EXIT_* number.
    public var kvmExitName: @Sendable (UInt32) -> String

    public init(disassemble: @escaping @Sendable ([UInt8], CPUMode, UInt64) -> String? = { _, _, _ in nil },
                kvmExitName: @escaping @Sendable (UInt32) -> String = { "\($0)" }) {
        self.disassemble = disassemble
        self.kvmExitName = kvmExitName
    }
}

extension TraceRecord {
    /// The name a summary counts this record under: the SVM exit code's APM name for exits
    /// ("IOIO", "NPF", "HLT", ...), the kind in capitals for other records ("MARKER", "STEP").
    public var reasonName: String {
        if kind == .exit { return exitCode.name }
        return kind.name.uppercased()
    }

    /// Host TSC cycles the VMM spent between KVM_RUN returning and being called again.
    public var handlingCycles: UInt64 { tscEntry &- tscExit }
}

/// Counts and facts over a trace (or the part selected by vCPU and reason).
public struct TraceSummary: Sendable {
    public var records: UInt64 = 0
    public var byReason: [String: UInt64] = [:]
    public var byKind: [RecordKind: UInt64] = [:]
    public var byVCPU: [UInt16: UInt64] = [:]
    public var firstTSC: UInt64?
    public var lastTSC: UInt64?
    public var handlingCycles: UInt64 = 0

    public init() {}

    public mutating func add(_ r: TraceRecord) {
        records += 1
        byReason[r.reasonName, default: 0] += 1
        byKind[r.kind, default: 0] += 1
        byVCPU[r.vcpu, default: 0] += 1
        // A record without timing (TSC 0, e.g. a vCPU-start event) does not stretch the span.
        if r.tscExit != 0 {
            firstTSC = min(firstTSC ?? r.tscExit, r.tscExit)
            lastTSC = max(lastTSC ?? r.tscEntry, r.tscEntry, r.tscExit)
        }
        handlingCycles &+= r.handlingCycles
    }
}

/// The text forms of a trace `exitscope show` prints: header facts, a summary, one line per
/// record in the manner of `perf script`, one record in full with the APM's VMCB field names,
/// and JSON lines with CPUState's JSON form for states.
public struct TraceText {
    public let header: TraceHeader
    public let symbols: SymbolTable
    public let naming: TraceNaming
    /// TSC of the trace's first record: line times are seconds since it.
    public var baseTSC: UInt64

    public init(header: TraceHeader, naming: TraceNaming = TraceNaming(), baseTSC: UInt64 = 0) {
        self.header = header
        symbols = SymbolTable(header.symbols)
        self.naming = naming
        self.baseTSC = baseTSC
    }

    static func hex<T: BinaryInteger>(_ v: T) -> String { Hex.string(v) }

    // MARK: summary

    public func summary(_ reader: TraceReader, _ s: TraceSummary, filtered: Bool) -> String {
        let h = header
        var o = ""
        o += "trace      \(reader.path)  (format \(reader.formatMajor).\(reader.formatMinor), \(reader.fileSize) bytes, \(reader.frames.count) frames)\n"
        if let cut = reader.cutShort {
            o += "CUT SHORT  at byte offset \(cut.offset): \(cut.reason); records of frames still open were lost\n"
        }
        o += "host cpu   \(h.hostCPU.isEmpty ? "unknown" : h.hostCPU)\n"
        o += "kernel     \(h.kernel.isEmpty ? "unknown" : h.kernel)\n"
        o += "backend    \(h.kvmBackend)\n"
        o += "tsc        \(h.tscHz == 0 ? "unknown" : String(format: "%.3f MHz", Double(h.tscHz) / 1e6))\n"
        o += "vcpus      \(h.vcpuCount)\n"
        o += "image      \(h.imagePath.isEmpty ? "-" : h.imagePath)\(h.imageSHA256.isEmpty ? "" : "  sha256 \(h.imageSHA256)")\n"
        if !h.commandLine.isEmpty { o += "command    \(h.commandLine.joined(separator: " "))\n" }
        if !h.options.isEmpty { o += "options    \(h.options.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))\n" }
        if !h.startTime.isEmpty { o += "started    \(h.startTime)\n" }
        o += "records    \(s.records)\(filtered ? " selected of \(reader.recordCount)" : "")"
        if let a = s.firstTSC, let b = s.lastTSC, b >= a {
            o += "  over \(duration(b - a))"
            if s.records > 0 { o += ", VMM handling \(duration(s.handlingCycles)) total" }
        }
        o += "\n"
        if s.byVCPU.count > 1 {
            o += "per vcpu   " + s.byVCPU.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: "  ") + "\n"
        }
        if !s.byReason.isEmpty {
            o += "\n  \("reason".padded(to: 16))\("count".leftPad(12))  \("%".leftPad(7))\n"
            for (name, n) in s.byReason.sorted(by: { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }) {
                let pct = String(format: "%.2f", 100 * Double(n) / Double(max(s.records, 1)))
                o += "  \(name.padded(to: 16))\(String(n).leftPad(12))  \(pct.leftPad(7))\n"
            }
        }
        return o
    }

    /// Cycles as time when the TSC frequency is known, else as cycles.
    public func duration(_ cycles: UInt64) -> String {
        guard header.tscHz > 0 else { return "\(cycles) cycles" }
        let s = Double(cycles) / Double(header.tscHz)
        if s >= 1 { return String(format: "%.3f s", s) }
        if s >= 1e-3 { return String(format: "%.3f ms", s * 1e3) }
        return String(format: "%.3f us", s * 1e6)
    }

    // MARK: one line per record

    /// "port 0x80 out size 1 data 0x2a" and the like: what the exit was about.
    public func exitInfo(_ r: TraceRecord) -> String {
        var parts: [String] = []
        switch r.kind {
        case .marker: parts.append("phase \(r.code)")
        case .event, .gap: parts.append("code \(Self.hex(r.code))")
        default: break
        }
        if r.kind == .exit || r.kind == .marker {
            switch r.exitCode {
            case .ioio:
                let io = IOIOInfo(exitInfo1: r.exitInfo1)
                var s = "\(io.isIn ? "in" : "out")\(io.isString ? "s" : "")\(io.isRep ? " rep" : "") port \(Self.hex(io.port)) size \(io.size)"
                if let a = r.accesses.first { s += " data \(dataText(a))" }
                parts.append(s)
            case .npf:
                let w = r.accesses.first?.isWrite ?? (r.exitInfo1 & NPFInfo.write != 0)
                var s = "\(w ? "write" : "read") gpa \(Self.hex(r.exitInfo2))"
                if let a = r.accesses.first { s += " size \(a.size) data \(dataText(a))" }
                parts.append(s)
            case .msr:
                let write = r.exitInfo1 & 1 != 0
                var s = "\(write ? "wrmsr" : "rdmsr") \(Self.hex(UInt32(truncatingIfNeeded: r.state.rcx)))"
                if let a = r.accesses.first { s += " data \(dataText(a))" }
                if r.accessRefused { s += " refused (#GP)" }
                parts.append(s)
            case .hlt, .shutdown, .none, .invalid:
                break
            default:
                if r.exitInfo1 != 0 || r.exitInfo2 != 0 { parts.append("info1 \(Self.hex(r.exitInfo1)) info2 \(Self.hex(r.exitInfo2))") }
            }
            if r.exitCode == .none || r.exitCode == .invalid || r.kind != .exit {
                if r.kvmExitReason != 0 { parts.append("kvm \(naming.kvmExitName(r.kvmExitReason))") }
            }
        }
        if r.exitIntInfo & (1 << 31) != 0 { parts.append("intinfo \(Self.hex(r.exitIntInfo))") }
        if r.fragment > 0 || !r.lastFragment { parts.append("frag \(r.fragment)\(r.lastFragment ? " last" : "") of \(r.group)") }
        if r.candidates > 1 { parts.append("ambiguous (\(r.candidates) candidates)") }
        if !r.note.isEmpty { parts.append("\"\(r.note)\"") }
        return parts.joined(separator: "  ")
    }

    func dataText(_ a: DeviceAccess) -> String {
        if a.count <= 1 && a.data.count <= 8 { return Self.hex(a.value) }
        let shown = a.data.prefix(16)
        return Hex.bytes(shown) + (a.data.count > shown.count ? "… (\(a.data.count) bytes)" : "")
    }

    /// Intel-syntax text of the record's instruction, when it has bytes and the decoder can.
    public func instructionText(_ r: TraceRecord) -> String? {
        guard !r.instructionBytes.isEmpty else { return nil }
        return naming.disassemble(r.instructionBytes, r.state.mode, r.instructionStart)
    }

    /// One line in the manner of `perf script`: seq, [vcpu], time, reason, RIP (symbol), info,
    /// instruction bytes and text.
    public func line(_ r: TraceRecord) -> String {
        // Hand formatting: String(format:) costs more than decoding the record.
        let t: String
        if r.tscExit == 0 {
            t = "-"  // not timed (events such as "vcpu started" carry no TSC)
        } else if header.tscHz > 0 {
            t = TraceText.fixed(Double(Int64(bitPattern: r.tscExit &- baseTSC)) / Double(header.tscHz), 9)
        } else {
            t = String(r.tscExit)
        }
        let v = String(r.vcpu)
        var s = String(r.seq).leftPad(9) + " [" + String(repeating: "0", count: max(0, 3 - v.count)) + v + "] " + t.leftPad(14) + ": "
        s += r.reasonName.padded(to: 10)
        s += " " + Self.hex(r.state.rip)
        if let sym = symbols.describe(r.state.rip) { s += " (" + sym + ")" }
        let info = exitInfo(r)
        if !info.isEmpty { s += "  " + info }
        if !r.instructionBytes.isEmpty {
            s += "  [" + Hex.bytes(r.instructionBytes, separator: UInt8(ascii: " ")) + "]"
            if let text = instructionText(r) { s += " " + text }
        }
        if header.tscHz > 0 && r.kind == .exit {
            s += "  " + TraceText.fixed(Double(r.handlingCycles) / Double(header.tscHz) * 1e6, 2) + "us"
        }
        return s
    }

    /// `x` with `decimals` digits after the point, like "%.Nf" for the magnitudes of a trace.
    static func fixed(_ x: Double, _ decimals: Int) -> String {
        var scale: Int64 = 1
        for _ in 0..<decimals { scale *= 10 }
        guard x.isFinite, abs(x) < 9e15 / Double(scale) else { return String(x) }
        let v = Int64((abs(x) * Double(scale)).rounded())
        let sign = x < 0 && v != 0 ? "-" : ""
        guard decimals > 0 else { return sign + String(v) }
        let frac = String(v % scale)
        return sign + String(v / scale) + "." + String(repeating: "0", count: max(0, decimals - frac.count)) + frac
    }

    // MARK: one record in full

    /// The record with the VMCB's field names (AMD APM vol. 2, appendix B).
    public func full(_ r: TraceRecord) -> String {
        var o = ""
        func f(_ name: String, _ value: String) { o += "  \(name.padded(to: 14)) \(value)\n" }
        o += "record \(r.seq): \(r.kind.name), vcpu \(r.vcpu), vcpu seq \(r.vcpuSeq)\n"
        o += "control area\n"
        f("EXITCODE", "\(Self.hex(r.exitCode.rawValue)) \(r.exitCode.name)")
        var info1 = Self.hex(r.exitInfo1)
        if r.exitCode == .ioio {
            let io = IOIOInfo(exitInfo1: r.exitInfo1)
            info1 += "  (port \(Self.hex(io.port)), \(io.isIn ? "IN" : "OUT"), SZ\(io.size * 8), A\(io.addressSize)\(io.isString ? ", STR" : "")\(io.isRep ? ", REP" : ""), SEG \(io.segment))"
        } else if r.exitCode == .npf {
            var bits: [String] = []
            if r.exitInfo1 & NPFInfo.present != 0 { bits.append("P") }
            if r.exitInfo1 & NPFInfo.write != 0 { bits.append("RW") }
            if r.exitInfo1 & NPFInfo.user != 0 { bits.append("US") }
            if r.exitInfo1 & NPFInfo.reserved != 0 { bits.append("RSV") }
            if r.exitInfo1 & NPFInfo.fetch != 0 { bits.append("ID") }
            if r.exitInfo1 & NPFInfo.finalAddress != 0 { bits.append("final GPA") }
            if r.exitInfo1 & NPFInfo.pageTableWalk != 0 { bits.append("page walk") }
            info1 += "  (\(bits.joined(separator: ", ")))"
        }
        f("EXITINFO1", info1)
        f("EXITINFO2", Self.hex(r.exitInfo2) + (r.exitCode == .npf ? "  (faulting GPA)" : ""))
        f("EXITINTINFO", Self.hex(r.exitIntInfo) + (r.exitIntInfo & (1 << 31) != 0 ? "  (valid, vector \(r.exitIntInfo & 0xFF), type \((r.exitIntInfo >> 8) & 7))" : ""))
        f("nRIP", Self.hex(r.nextRIP))
        var ib = r.instructionBytes.isEmpty ? "-" : Hex.bytes(r.instructionBytes)
        if let t = instructionText(r) { ib += "  \(t)" }
        f("guest insn", ib + (r.instructionBytes.isEmpty ? "" : "  at \(Self.hex(r.instructionStart))" + (symbols.describe(r.instructionStart).map { " (\($0))" } ?? "")))
        f("candidates", "\(r.candidates)\(r.candidates > 1 ? " (ambiguous)" : "")")
        f("visibility", r.visibility == .committed ? "committed (RIP past the instruction)" : r.visibility == .pending ? "pending (RIP on the instruction)" : "none")
        f("KVM exit", "\(r.kvmExitReason) \(naming.kvmExitName(r.kvmExitReason))")
        f("group", "\(r.group) fragment \(r.fragment)\(r.lastFragment ? " (last)" : "")")
        if r.kind == .marker || r.kind == .event || r.kind == .gap || r.code != 0 { f("code", "\(r.code)") }
        if !r.note.isEmpty { f("note", r.note) }
        f("TSC exit", "\(r.tscExit)")
        f("TSC entry", "\(r.tscEntry)  (handling \(duration(r.handlingCycles)))")
        if !r.accesses.isEmpty {
            o += "device accesses\n"
            for a in r.accesses {
                let space = a.space == .port ? "port" : a.space == .mmio ? "mmio" : "msr"
                o += "  \(space) \(a.isWrite ? "write" : "read ") \(Self.hex(a.address)) size \(a.size) count \(a.count) data \(Hex.bytes(a.data))\n"
            }
            if r.accessRefused { o += "  refused: the VMM completed the access with #GP(0); nothing was read or written\n" }
        }
        o += "save area\n"
        o += saveArea(r.state)
        if let after = r.stateAfter {
            let d = after.differingFields(from: r.state)
            o += "state after the instruction (fields that changed: \(d.isEmpty ? "none" : d.joined(separator: ", ")))\n"
            o += saveArea(after)
        }
        if !r.msrWrites.isEmpty {
            o += "MSR writes\n"
            for w in r.msrWrites { o += "  \(Self.hex(w.index)) <- \(Self.hex(w.value))\n" }
        }
        if !r.memory.isEmpty {
            o += "guest bytes\n"
            for m in r.memory {
                let role = ["", "instruction", "page table", "operand read", "written"][Int(m.role.rawValue)]
                o += "  \(role.padded(to: 12)) gpa \(Self.hex(m.gpa)) \(Hex.bytes(m.bytes.prefix(64)))\(m.bytes.count > 64 ? "… (\(m.bytes.count) bytes)" : "")\n"
            }
        }
        return o
    }

    func saveArea(_ s: CPUState) -> String {
        var o = ""
        func seg(_ name: String, _ g: Segment) {
            o += "  \(name.padded(to: 14)) selector \(Self.hex(g.selector)) base \(Self.hex(g.base)) limit \(Self.hex(g.limit)) attrib \(Self.hex(g.attributes))\n"
        }
        func v(_ name: String, _ x: UInt64) { o += "  \(name.padded(to: 14)) \(Self.hex(x))\n" }
        seg("ES", s.es); seg("CS", s.cs); seg("SS", s.ss); seg("DS", s.ds); seg("FS", s.fs); seg("GS", s.gs)
        o += "  \("GDTR".padded(to: 14)) base \(Self.hex(s.gdtr.base)) limit \(Self.hex(s.gdtr.limit))\n"
        seg("LDTR", s.ldtr)
        o += "  \("IDTR".padded(to: 14)) base \(Self.hex(s.idtr.base)) limit \(Self.hex(s.idtr.limit))\n"
        seg("TR", s.tr)
        o += "  \("CPL".padded(to: 14)) \(s.cpl)   (mode \(s.mode.rawValue))\n"
        v("EFER", s.efer); v("CR4", s.cr4); v("CR3", s.cr3); v("CR0", s.cr0); v("DR7", s.dr7); v("DR6", s.dr6)
        v("RFLAGS", s.rflags); v("RIP", s.rip); v("RSP", s.rsp); v("RAX", s.rax)
        v("STAR", s.star); v("LSTAR", s.lstar); v("CSTAR", s.cstar); v("SFMASK", s.sfmask); v("KernelGsBase", s.kernelGSBase)
        v("SYSENTER_CS", s.sysenterCS); v("SYSENTER_ESP", s.sysenterESP); v("SYSENTER_EIP", s.sysenterEIP)
        v("CR2", s.cr2); v("G_PAT", s.pat); v("CR8 (V_TPR)", s.cr8)
        o += "  other GPRs     RCX \(Self.hex(s.rcx)) RDX \(Self.hex(s.rdx)) RBX \(Self.hex(s.rbx)) RBP \(Self.hex(s.rbp)) RSI \(Self.hex(s.rsi)) RDI \(Self.hex(s.rdi))\n"
        o += "                 R8 \(Self.hex(s.r8)) R9 \(Self.hex(s.r9)) R10 \(Self.hex(s.r10)) R11 \(Self.hex(s.r11)) R12 \(Self.hex(s.r12)) R13 \(Self.hex(s.r13)) R14 \(Self.hex(s.r14)) R15 \(Self.hex(s.r15))\n"
        return o
    }

    // MARK: JSON

    /// One record as a JSON object on one line; states in CPUState's JSON form (schema:
    /// RecordJSONWriter, snake_case keys, 64-bit values as hex strings, byte strings as plain hex).
    public func json(_ r: TraceRecord) -> String {
        var w = RecordJSONWriter()
        w.record(r, text: self)
        return String(decoding: w.bytes, as: UTF8.self)
    }

    /// The summary as one JSON object.
    public func summaryJSON(_ reader: TraceReader, _ s: TraceSummary) throws -> String {
        let h = header
        let obj = SummaryJSON(
            path: reader.path, format: "\(reader.formatMajor).\(reader.formatMinor)", file_bytes: reader.fileSize,
            frames: reader.frames.count, cut_short: reader.cutShort.map { CutJSON(offset: $0.offset, reason: $0.reason) },
            host_cpu: h.hostCPU, kernel: h.kernel, kvm_backend: h.kvmBackend, tsc_hz: h.tscHz, vcpu_count: h.vcpuCount,
            image_path: h.imagePath, image_sha256: h.imageSHA256, command_line: h.commandLine, options: h.options,
            start_time: h.startTime, records: s.records, total_records: reader.recordCount, by_reason: s.byReason,
            by_vcpu: Dictionary(uniqueKeysWithValues: s.byVCPU.map { (String($0.key), $0.value) }),
            first_tsc: s.firstTSC, last_tsc: s.lastTSC, handling_cycles: s.handlingCycles)
        return String(decoding: try TraceText.encoder.encode(obj), as: UTF8.self)
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()
}

struct CutJSON: Encodable { var offset: UInt64; var reason: String }

struct SummaryJSON: Encodable {
    var path: String, format: String, file_bytes: UInt64, frames: Int, cut_short: CutJSON?
    var host_cpu: String, kernel: String, kvm_backend: String, tsc_hz: UInt64, vcpu_count: UInt16
    var image_path: String, image_sha256: String, command_line: [String], options: [String: String], start_time: String
    var records: UInt64, total_records: UInt64, by_reason: [String: UInt64], by_vcpu: [String: UInt64]
    var first_tsc: UInt64?, last_tsc: UInt64?, handling_cycles: UInt64
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
    /// Foundation's `padding(toLength: n, withPad: " ", startingAt: 0)` (spaces up to `n` UTF-16
    /// units, or cut to `n`) without its NSString bridging, which took a fifth of `show`'s time.
    func padded(to n: Int) -> String {
        let length = utf16.count
        if length == n { return self }
        if length < n { return self + String(repeating: " ", count: n - length) }
        return String(decoding: Array(utf16.prefix(n)), as: UTF16.self)  // a cut surrogate pair becomes U+FFFD, as there
    }
}
