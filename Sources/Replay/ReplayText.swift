import Foundation
import Trace
import X86
import X86Emulator

/// The text forms of a replay: the summary and one verdict in full.
public enum ReplayText {
    public static func summary(_ s: ReplaySummary, reader: TraceReader, allowed: Set<VerdictKind>) -> String {
        var out = ""
        let h = reader.header
        out += "trace: \(reader.path) (\(reader.recordCount) records, backend \(h.kvmBackend)"
        if reader.isCutShort { out += ", cut short" }
        out += ")\n"
        out += "replayed: \(s.records) records in \(s.verdicts) verdicts\n"
        out += "\nverdicts:\n"
        for k in VerdictKind.allCases {
            guard let n = s.byKind[k], n > 0 else { continue }
            var tag = ""
            if k.isFailure { tag = allowed.contains(k) ? "  (allowed)" : "  (fails)" }
            out += "  " + pad(k.rawValue, 18) + lpad("\(n)", 10) + tag + "\n"
        }
        if !s.byReference.isEmpty {
            out += "\nreference:\n"
            for (r, n) in s.byReference.sorted(by: { $0.key < $1.key }) { out += "  " + pad(r, 18) + lpad("\(n)", 10) + "\n" }
        }
        out += "\nby reason:\n"
        for (reason, kinds) in s.byReason.sorted(by: { $0.key < $1.key }) {
            let total = kinds.values.reduce(0, +)
            let parts = kinds.sorted { $0.key < $1.key }.map { "\($0.key.rawValue) \($0.value)" }.joined(separator: ", ")
            out += "  " + pad(reason, 18) + lpad("\(total)", 10) + "  " + parts + "\n"
        }
        if !s.byMnemonic.isEmpty {
            out += "\nby mnemonic (checked):\n"
            for (m, n) in s.byMnemonic.sorted(by: { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }) {
                out += "  " + pad(m, 18) + lpad("\(n)", 10) + "\n"
            }
        }
        out += "\ndistinct instruction forms checked: \(s.forms.count)\n"
        if !s.forms.isEmpty {
            out += "  " + s.forms.map(\.text).sorted().joined(separator: "; ") + "\n"
        }
        if let d = s.firstDivergence {
            out += "\nfirst divergence:\n" + full(d)
        }
        for k in VerdictKind.allCases where k.isFailure && k != .divergence {
            if let v = s.firstOf[k] { out += "\nfirst \(k.rawValue): " + v.summaryLine + "\n" }
        }
        let failing = s.failures(allowing: allowed)
        out += "\nresult: " + (failing == 0 ? "PASS" : "FAIL (\(failing) verdict(s) not accepted)") + "\n"
        return out
    }

    /// One verdict in full: the record, the instruction, the state before, the differing fields.
    public static func full(_ v: Verdict) -> String {
        var out = ""
        out += "  seq \(v.seq), vcpu \(v.vcpu), \(v.reason)" + (v.records > 1 ? " (\(v.records) fragments)" : "") + "\n"
        out += "  verdict: \(v.kind.rawValue)" + (v.reference.isEmpty ? "" : " (reference: \(v.reference))") + "\n"
        out += "  instruction: \(Hex.string(v.rip))  " + Hex.bytes(v.bytes, separator: UInt8(ascii: " "))
        if !v.text.isEmpty { out += "  \(v.text)  [\(v.form)]" }
        out += "\n"
        if let a = v.address { out += "  unrecorded address: \(Hex.string(a))\n" }
        if !v.note.isEmpty { out += "  note: \(v.note)\n" }
        if !v.differences.isEmpty {
            out += "  differing fields:\n"
            let w = max(8, v.differences.map(\.field.count).max() ?? 8)
            out += "    " + pad("field", w) + "  " + pad("recorded", 20) + "  emulated\n"
            for d in v.differences { out += "    " + pad(d.field, w) + "  " + pad(d.recorded, 20) + "  " + d.emulated + "\n" }
        }
        if let r = v.reproduction {
            out += "  state before:\n" + stateText(r.state)
        }
        return out
    }

    static func stateText(_ s: CPUState) -> String {
        var out = ""
        var line = "    "
        for i in 0..<16 {
            line += pad(GPR.names[i], 4) + pad(Hex.string(s.gpr(i)), 20)
            if i % 4 == 3 { out += line + "\n"; line = "    " }
        }
        out += "    rip \(Hex.string(s.rip))  rflags \(Hex.string(s.rflags))  mode \(s.mode)  cpl \(s.cpl)\n"
        out += "    cr0 \(Hex.string(s.cr0))  cr3 \(Hex.string(s.cr3))  cr4 \(Hex.string(s.cr4))  efer \(Hex.string(s.efer))\n"
        for r in SegmentRegister.allCases {
            let g = s.segment(r)
            out += "    \(r.name) sel \(Hex.string(g.selector)) base \(Hex.string(g.base)) limit \(Hex.string(g.limit)) attr \(Hex.string(g.attributes))\n"
        }
        return out
    }

    static func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
    static func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
}

public struct ExportError: Error, Sendable {
    public var message: String
}

/// `--export-divergences DIR`: each divergence as an `exec` input (EXEC.md) that reproduces it.
public enum DivergenceExport {
    public static func prepare(_ dir: String) throws {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) {
            if !isDir.boolValue { throw ExportError(message: "\(dir) exists and is not a directory") }
            return
        }
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        } catch {
            throw ExportError(message: "cannot create \(dir): \(error.localizedDescription)")
        }
    }

    /// The `exec` input for a verdict's reproduction, as JSON text (keys sorted).
    public static func execInput(_ v: Verdict) throws -> Data {
        guard let r = v.reproduction else { throw ExportError(message: "verdict \(v.seq) has no reproduction") }
        let stateData = try JSONEncoder().encode(r.state)
        guard var obj = try JSONSerialization.jsonObject(with: stateData) as? [String: Any] else {
            throw ExportError(message: "state of \(v.seq) did not encode as an object")
        }
        var mem: [String: String] = [:]
        for m in r.memory { mem[Hex.string(m.gpa)] = Hex.bytes(m.bytes, separator: UInt8(ascii: " ")) }
        obj["memory"] = mem
        if !r.ports.isEmpty {
            var p: [String: [String]] = [:]
            for (port, vals) in r.ports { p[Hex.string(port)] = vals.map { Hex.string($0) } }
            obj["ports"] = p
        }
        if !r.msrs.isEmpty {
            var m: [String: String] = [:]
            for (i, val) in r.msrs { m[Hex.string(i)] = Hex.string(val) }
            obj["msrs"] = m
        }
        if !r.cpuid.isEmpty {
            obj["cpuid"] = r.cpuid.map { e -> [String: String] in
                var d = ["leaf": Hex.string(e.function), "eax": Hex.string(e.eax), "ebx": Hex.string(e.ebx),
                         "ecx": Hex.string(e.ecx), "edx": Hex.string(e.edx)]
                if e.flags & 1 != 0 { d["subleaf"] = Hex.string(e.index) }
                return d
            }
        }
        obj["comment"] = "exitscope replay divergence: seq \(v.seq) vcpu \(v.vcpu) \(v.reason) \(v.text); "
            + v.differences.map { "\($0.field) recorded \($0.recorded) emulated \($0.emulated)" }.joined(separator: "; ")
        return try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
    }

    public static func write(_ v: Verdict, directory: String) throws {
        let path = (directory as NSString).appendingPathComponent("divergence-\(v.seq).json")
        do {
            try execInput(v).write(to: URL(fileURLWithPath: path))
        } catch let e as ExportError {
            throw e
        } catch {
            throw ExportError(message: "cannot write \(path): \(error.localizedDescription)")
        }
    }
}
