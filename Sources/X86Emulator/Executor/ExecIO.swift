import Foundation
import X86

/// One `exec` input (EXEC.md): a CPU state in the project's schema plus guest-physical memory
/// and the answers the environment gives (CPUID, MSRs, port reads, RDTSC).
public struct ExecInput: Sendable {
    public var state: CPUState
    /// Guest-physical address → bytes.
    public var memory: [(gpa: UInt64, bytes: [UInt8])]
    public var cpuid: [(leaf: UInt32, subleaf: UInt32?, result: CPUIDResult)]
    public var msrs: [UInt32: UInt64]
    /// Port → values answered to successive reads (the last one repeats).
    public var ports: [UInt16: [UInt32]]
    public var rdtsc: [UInt64]
    /// Deliver exceptions through the IVT/IDT instead of stopping at them.
    public var deliverExceptions: Bool
    /// Unbacked memory reads as zeros instead of stopping.
    public var zeroFill: Bool

    public init(state: CPUState, memory: [(gpa: UInt64, bytes: [UInt8])] = [], cpuid: [(leaf: UInt32, subleaf: UInt32?, result: CPUIDResult)] = [],
                msrs: [UInt32: UInt64] = [:], ports: [UInt16: [UInt32]] = [:], rdtsc: [UInt64] = [],
                deliverExceptions: Bool = false, zeroFill: Bool = false) {
        self.state = state
        self.memory = memory
        self.cpuid = cpuid
        self.msrs = msrs
        self.ports = ports
        self.rdtsc = rdtsc
        self.deliverExceptions = deliverExceptions
        self.zeroFill = zeroFill
    }
}

/// A bad `exec` input: the message says what to fix.
public struct ExecInputError: Error, CustomStringConvertible {
    public var description: String
    init(_ d: String) { description = d }
}

extension ExecInput {
    /// Parses the JSON form described in EXEC.md.
    public static func parse(_ data: Data) throws -> ExecInput {
        let any: Any
        do { any = try JSONSerialization.jsonObject(with: data) } catch {
            throw ExecInputError("input is not valid JSON: \(error.localizedDescription)")
        }
        guard let obj = any as? [String: Any] else { throw ExecInputError("input must be a JSON object") }
        // The state: either top-level CPUState fields or an object under "state".
        let stateObj: Any = obj["state"] ?? obj
        let state: CPUState
        do {
            let sd = try JSONSerialization.data(withJSONObject: stateObj)
            state = try JSONDecoder().decode(CPUState.self, from: sd)
        } catch let e as DecodingError {
            throw ExecInputError("bad state: \(describe(e))")
        }
        var input = ExecInput(state: state)
        if let m = obj["memory"] {
            guard let mm = m as? [String: Any] else { throw ExecInputError("\"memory\" must map addresses to hex byte strings") }
            for (k, v) in mm {
                guard let a = Hex.parse(k) else { throw ExecInputError("memory address '\(k)' is not a hex number") }
                guard let s = v as? String, let b = Hex.parseBytes(s) else {
                    throw ExecInputError("memory at \(k): expected a hex byte string like \"0f a2\"")
                }
                input.memory.append((a, b))
            }
            input.memory.sort { $0.gpa < $1.gpa }
        }
        if let c = obj["cpuid"] {
            guard let arr = c as? [[String: Any]] else {
                throw ExecInputError("\"cpuid\" must be a list of {leaf, subleaf?, eax, ebx, ecx, edx}")
            }
            for e in arr {
                let leaf = try num(e["leaf"], "cpuid leaf")
                let sub = e["subleaf"] == nil ? nil : UInt32(truncatingIfNeeded: try num(e["subleaf"], "cpuid subleaf"))
                let r = CPUIDResult(eax: UInt32(truncatingIfNeeded: try num(e["eax"] ?? "0", "eax")),
                                    ebx: UInt32(truncatingIfNeeded: try num(e["ebx"] ?? "0", "ebx")),
                                    ecx: UInt32(truncatingIfNeeded: try num(e["ecx"] ?? "0", "ecx")),
                                    edx: UInt32(truncatingIfNeeded: try num(e["edx"] ?? "0", "edx")))
                input.cpuid.append((UInt32(truncatingIfNeeded: leaf), sub, r))
            }
        }
        if let m = obj["msrs"] {
            guard let mm = m as? [String: Any] else { throw ExecInputError("\"msrs\" must map MSR indices to values") }
            for (k, v) in mm {
                guard let i = Hex.parse(k), i <= 0xFFFF_FFFF else { throw ExecInputError("MSR index '\(k)' is not a 32-bit hex number") }
                input.msrs[UInt32(i)] = try num(v, "MSR \(k)")
            }
        }
        if let p = obj["ports"] {
            guard let pm = p as? [String: Any] else { throw ExecInputError("\"ports\" must map port numbers to a value or a list of values") }
            for (k, v) in pm {
                guard let port = Hex.parse(k), port <= 0xFFFF else { throw ExecInputError("port '\(k)' is not a 16-bit hex number") }
                let vals = (v as? [Any]) ?? [v]
                input.ports[UInt16(port)] = try vals.map { UInt32(truncatingIfNeeded: try num($0, "port \(k) value")) }
            }
        }
        if let t = obj["rdtsc"] {
            let vals = (t as? [Any]) ?? [t]
            input.rdtsc = try vals.map { try num($0, "rdtsc value") }
        }
        if let d = obj["deliver_exceptions"] as? Bool { input.deliverExceptions = d }
        if let z = obj["unbacked_reads_zero"] as? Bool { input.zeroFill = z }
        return input
    }

    static func num(_ v: Any?, _ what: String) throws -> UInt64 {
        if let s = v as? String, let n = Hex.parse(s) { return n }
        if let n = v as? NSNumber, !(v is Bool), n.int64Value >= 0 { return n.uint64Value }
        throw ExecInputError("\(what): expected a hex string like \"0x10\"")
    }

    static func describe(_ e: DecodingError) -> String {
        switch e {
        case .dataCorrupted(let c), .typeMismatch(_, let c), .valueNotFound(_, let c), .keyNotFound(_, let c):
            let path = c.codingPath.map(\.stringValue).joined(separator: ".")
            return (path.isEmpty ? "" : "\(path): ") + c.debugDescription
        @unknown default:
            return "\(e)"
        }
    }
}

/// The result of running an `exec` input.
public struct ExecOutput: Sendable {
    public var state: CPUState
    public var executed: Int
    public var last: StepResult
    /// Written bytes, coalesced by address, with their final values.
    public var memoryWritten: [(gpa: UInt64, bytes: [UInt8])]
    public var accesses: [AccessEvent]

    /// The JSON form (EXEC.md), keys sorted.
    public func json() -> [String: Any] {
        var o: [String: Any] = [:]
        let enc = JSONEncoder()
        if let d = try? enc.encode(state), let s = try? JSONSerialization.jsonObject(with: d) { o["state"] = s }
        o["executed"] = executed
        switch last {
        case .ok: o["result"] = "ok"
        case .halted: o["result"] = "halted"
        case .hypercall: o["result"] = "hypercall"
        case .tripleFault: o["result"] = "triple_fault"
        case .exception(let e, let delivered):
            o["result"] = "exception"
            var x: [String: Any] = ["vector": Int(e.vector), "name": e.name, "delivered": delivered]
            if let c = e.errorCode { x["error_code"] = Hex.string(c) }
            if let a = e.cr2 { x["cr2"] = Hex.string(a) }
            o["exception"] = x
        case .unsupported(let b):
            o["result"] = "unsupported"
            o["bytes"] = Hex.bytes(b)
        case .unbackedMemory(let a):
            o["result"] = "unbacked_memory"
            o["address"] = Hex.string(a)
        case .unanswered(let q):
            o["result"] = "unanswered"
            o["question"] = q.description
        }
        var mem: [String: String] = [:]
        for w in memoryWritten { mem[Hex.string(w.gpa)] = ExecOutput.spaced(w.bytes) }
        o["memory_written"] = mem
        var ports: [[String: Any]] = [], msrs: [[String: Any]] = []
        for a in accesses {
            switch a {
            case .port(let p):
                ports.append(["port": Hex.string(p.port), "size": p.size, "direction": p.isWrite ? "out" : "in",
                              "value": Hex.string(p.value), "string": p.string, "rep": p.rep]
                             .merging(p.string ? ["address_size": p.addressSize] : [:]) { a, _ in a })
            case .msrRead(let i, let v):
                msrs.append(["index": Hex.string(i), "direction": "read", "value": Hex.string(v)])
            case .msrWrite(let i, let v):
                msrs.append(["index": Hex.string(i), "direction": "write", "value": Hex.string(v)])
            }
        }
        o["ports"] = ports
        o["msrs"] = msrs
        return o
    }

    public func jsonData(pretty: Bool = true) -> Data {
        var opts: JSONSerialization.WritingOptions = [.sortedKeys]
        if pretty { opts.insert(.prettyPrinted) }
        return (try? JSONSerialization.data(withJSONObject: json(), options: opts)) ?? Data("{}".utf8)
    }

    static func spaced(_ b: [UInt8]) -> String {
        b.map { String(format: "%02x", $0) }.joined(separator: " ")
    }
}

/// Runs an `exec` input: `count` instructions, or until HLT (bounded by `count` as a guard).
public enum Exec {
    public static func run(_ input: ExecInput, count: Int, untilHalt: Bool) -> ExecOutput {
        let mem = SparseMemory(logWrites: true)
        for m in input.memory { mem.load(m.gpa, m.bytes) }
        mem.zeroFillUnbacked = input.zeroFill
        let ports = ScriptedPorts(answers: input.ports)
        let cpuid = TableCPUID()
        for c in input.cpuid { cpuid.set(leaf: c.leaf, subleaf: c.subleaf, c.result) }
        let msrs = TableMSRs(input.msrs)
        let tsc = ScriptedTSC(input.rdtsc)
        let cpu = X86Executor(state: input.state, memory: mem, ports: ports,
                              cpuid: input.cpuid.isEmpty ? nil : cpuid, msrs: msrs,
                              tsc: input.rdtsc.isEmpty ? nil : tsc)
        cpu.deliverExceptions = input.deliverExceptions
        var executed = 0
        var last: StepResult = .ok
        while executed < count {
            last = cpu.step()
            switch last {
            case .ok: executed += 1; continue
            case .exception(_, true): executed += 1; if untilHalt { continue }
            case .exception(_, false) where cpu.singleStepTrapped: executed += 1
            case .halted, .hypercall: executed += 1
            default: break
            }
            if !untilHalt || last != .ok { break }
        }
        return ExecOutput(state: cpu.state, executed: executed, last: last,
                          memoryWritten: coalesce(mem), accesses: cpu.accessLog)
    }

    /// The final bytes of every written range, merged where ranges touch.
    static func coalesce(_ mem: SparseMemory) -> [(gpa: UInt64, bytes: [UInt8])] {
        var addrs = Set<UInt64>()
        for w in mem.writeLog { for k in 0..<w.bytes.count { addrs.insert(w.gpa &+ UInt64(k)) } }
        var out: [(gpa: UInt64, bytes: [UInt8])] = []
        for a in addrs.sorted() {
            let b = mem.byte(a) ?? 0
            if let last = out.last, last.gpa &+ UInt64(last.bytes.count) == a {
                out[out.count - 1].bytes.append(b)
            } else {
                out.append((a, [b]))
            }
        }
        return out
    }
}

extension ExecOutput {
    /// A human-readable summary: the result, the fields that changed, memory and accesses.
    public func text(before: CPUState) -> String {
        var lines: [String] = []
        var r: String
        switch last {
        case .ok: r = "ok"
        case .halted: r = "halted"
        case .hypercall: r = "hypercall (VMMCALL/VMCALL)"
        case .tripleFault: r = "triple fault (shutdown)"
        case .exception(let e, let d): r = "exception \(e)" + (d ? ", delivered" : ", not delivered (state before the instruction)")
        case .unsupported(let b): r = "unsupported instruction: \(ExecOutput.spaced(b))"
        case .unbackedMemory(let a): r = "unbacked memory at \(Hex.string(a)) (add it to \"memory\")"
        case .unanswered(let q): r = "no answer for \(q) in the input"
        }
        lines.append("result: \(r)")
        lines.append("executed: \(executed)")
        let changed = state.differingFields(from: before)
        if changed.isEmpty { lines.append("state: unchanged") }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let dict = (try? JSONSerialization.jsonObject(with: (try? enc.encode(state)) ?? Data())) as? [String: Any] ?? [:]
        let old = (try? JSONSerialization.jsonObject(with: (try? enc.encode(before)) ?? Data())) as? [String: Any] ?? [:]
        for f in changed {
            func show(_ v: Any?) -> String {
                if let d = v as? [String: Any] { return d.keys.sorted().map { "\($0)=\(d[$0]!)" }.joined(separator: " ") }
                return v.map { "\($0)" } ?? "?"
            }
            lines.append("  \(f): \(show(old[f])) -> \(show(dict[f]))")
        }
        for w in memoryWritten { lines.append("memory \(Hex.string(w.gpa)): \(ExecOutput.spaced(w.bytes))") }
        for a in accesses {
            switch a {
            case .port(let p):
                lines.append("port \(p.isWrite ? "out" : "in ") \(Hex.string(p.port)) size \(p.size) value \(Hex.string(p.value))"
                             + (p.string ? (p.rep ? " (rep string)" : " (string)") : ""))
            case .msrRead(let i, let v): lines.append("rdmsr \(Hex.string(i)) = \(Hex.string(v))")
            case .msrWrite(let i, let v): lines.append("wrmsr \(Hex.string(i)) = \(Hex.string(v))")
            }
        }
        return lines.joined(separator: "\n")
    }
}
