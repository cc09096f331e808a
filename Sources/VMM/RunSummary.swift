import Foundation
import KVM
import X86

/// Process exit statuses of a run that did not end through the guest's exit port.
/// (A guest can write these values to 0x501 too; the summary says which happened.)
public enum RunExitStatus {
    /// HLT with interrupts off on every vCPU (irqchip none): the guest is done.
    public static let halted: Int32 = 0
    /// Bad image, flags or a VMM failure.
    public static let vmmError: Int32 = 1
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN) or asked for a reset.
    public static let shutdown: Int32 = 122
    /// KVM could not run the guest: FAIL_ENTRY, or INTERNAL_ERROR (e.g. an emulation failure).
    public static let guestFailure: Int32 = 123
    /// --timeout expired.
    public static let timeout: Int32 = 124
    /// --max-exits reached.
    public static let maxExits: Int32 = 125
    /// Ctrl-C (SIGINT), as shells report it.
    public static let interrupted: Int32 = 130
}

/// A guest event that ended the run, with where it happened.
public struct GuestEventReport: Sendable, Equatable {
    public var vcpu: Int
    public var kind: GuestEventKind
    public var detail: String
    public var state: CPUState
    /// The bytes at CS:RIP, found by walking the guest's page tables (or KVM's own copy for an
    /// emulation failure); empty when RIP points nowhere readable.
    public var instructionBytes: [UInt8]

    public var description: String {
        let bytes = instructionBytes.isEmpty ? "unreadable" : instructionBytes.map { String(format: "%02x", $0) }.joined(separator: " ")
        return "vCPU \(vcpu): \(kind.rawValue) (\(detail)) at \(state.mode.rawValue) RIP \(hex(state.rip))"
            + " (CS base \(hex(state.cs.base))), instruction bytes: \(bytes)"
    }
}

/// Why a run stopped.
public enum StopReason: Sendable, Equatable {
    case exitPort(value: UInt64)
    case debugExit(value: UInt64)
    case halted
    case guestEvent(GuestEventReport)
    case systemEvent(type: String)
    case maxExits(UInt64)
    case timeout(seconds: Double)
    case interrupted
    case vmmError(String)

    public var name: String {
        switch self {
        case .exitPort: return "exit-port"
        case .debugExit: return "debug-exit"
        case .halted: return "halted"
        case let .guestEvent(r): return r.kind.rawValue.lowercased().replacingOccurrences(of: "_", with: "-")
        case .systemEvent: return "system-event"
        case .maxExits: return "max-exits"
        case .timeout: return "timeout"
        case .interrupted: return "interrupted"
        case .vmmError: return "vmm-error"
        }
    }

    public var description: String {
        switch self {
        case let .exitPort(v): return "guest wrote \(hex(v)) to the exit port 0x501"
        case let .debugExit(v): return "guest wrote \(hex(v)) to isa-debug-exit 0xf4"
        case .halted: return "every vCPU halted with interrupts off"
        case let .guestEvent(r): return r.description
        case let .systemEvent(t): return "guest system event \(t)"
        case let .maxExits(n): return "reached --max-exits \(n)"
        case let .timeout(s): return "timed out after \(s) s"
        case .interrupted: return "interrupted (Ctrl-C)"
        case let .vmmError(s): return "VMM error: \(s)"
        }
    }

    public var exitStatus: Int32 {
        switch self {
        case let .exitPort(v): return ExitHandler.exitPortStatus(v)
        case let .debugExit(v): return ExitHandler.debugExitStatus(v)
        case .halted: return RunExitStatus.halted
        case let .guestEvent(r): return r.kind == .shutdown ? RunExitStatus.shutdown : RunExitStatus.guestFailure
        case let .systemEvent(t): return t == "SHUTDOWN" ? 0 : RunExitStatus.shutdown
        case .maxExits: return RunExitStatus.maxExits
        case .timeout: return RunExitStatus.timeout
        case .interrupted: return RunExitStatus.interrupted
        case .vmmError: return RunExitStatus.vmmError
        }
    }
}

public struct VCPUSummary: Sendable, Equatable {
    public var index: Int
    public var exits: UInt64
    public var exitsByReason: [String: UInt64]
    /// Stopped by HLT with interrupts off (rather than by the run ending).
    public var halted: Bool
}

/// What a run did: why it stopped, its exit status, exits by reason (total and per vCPU),
/// unclaimed accesses, markers.
public struct RunSummary: Sendable, Equatable {
    public var stop: StopReason
    public var exitStatus: Int32 { stop.exitStatus }
    public var totalExits: UInt64
    public var exitsByReason: [String: UInt64]
    public var vcpus: [VCPUSummary]
    public var unclaimedReads: UInt64
    public var unclaimedWrites: UInt64
    public var unclaimed: [UnclaimedAccess]
    public var markers: UInt64
    public var serialBytes: Int
    public var elapsedSeconds: Double
    /// Instructions the VMM completed because KVM's emulator could not, by mnemonic.
    public var completions: [String: UInt64] = [:]

    public var text: String {
        var lines: [String] = []
        lines.append("stopped: \(stop.description)")
        lines.append("exit status: \(exitStatus)")
        let secs = String(format: "%.3f", elapsedSeconds)
        lines.append("exits: \(totalExits) in \(secs) s" + (elapsedSeconds > 0 ? String(format: " (%.0f/s)", Double(totalExits) / elapsedSeconds) : ""))
        for (name, n) in exitsByReason.sorted(by: { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }) {
            lines.append("  \(name): \(n)")
        }
        if vcpus.count > 1 {
            for v in vcpus {
                let parts = v.exitsByReason.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
                lines.append("  vCPU \(v.index): \(v.exits) exits\(parts.isEmpty ? "" : " (" + parts + ")")\(v.halted ? ", halted" : "")")
            }
        }
        if unclaimedReads + unclaimedWrites > 0 {
            lines.append("unclaimed accesses: \(unclaimedReads) reads (answered all ones), \(unclaimedWrites) writes (dropped)")
            let top = unclaimed.enumerated().sorted { ($0.element.count, -$0.offset) > ($1.element.count, -$1.offset) }.prefix(8)
            for (_, u) in top {
                lines.append("  vCPU \(u.vcpu) \(u.kind) \(u.isWrite ? "write" : "read") \(hex(u.address)) size \(u.size): \(u.count)")
            }
            if unclaimed.count > top.count { lines.append("  ... \(unclaimed.count - top.count) more places (see --json)") }
        }
        if markers > 0 { lines.append("markers: \(markers)") }
        if !completions.isEmpty {
            lines.append("completed by the VMM: \(completions.values.reduce(0, +))")
            for (name, n) in completions.sorted(by: { $0.value > $1.value || ($0.value == $1.value && $0.key < $1.key) }) {
                lines.append("  \(name): \(n)")
            }
        }
        return lines.joined(separator: "\n")
    }

    /// The summary as one JSON object (64-bit values as hex strings, like the state schema).
    public var json: String {
        var o: [String: Any] = [
            "stop": stop.name,
            "stopDetail": stop.description,
            "exitStatus": Int(exitStatus),
            "totalExits": totalExits,
            "exitsByReason": exitsByReason,
            "vcpus": vcpus.map { ["index": $0.index, "exits": $0.exits, "exitsByReason": $0.exitsByReason, "halted": $0.halted] as [String: Any] },
            "unclaimedReads": unclaimedReads,
            "unclaimedWrites": unclaimedWrites,
            "unclaimed": unclaimed.map { ["vcpu": $0.vcpu, "kind": "\($0.kind)", "address": hex($0.address),
                                          "size": $0.size, "write": $0.isWrite, "count": $0.count] as [String: Any] },
            "markers": markers,
            "completions": completions,
            "serialBytes": serialBytes,
            "elapsedSeconds": elapsedSeconds,
        ]
        switch stop {
        case let .exitPort(v), let .debugExit(v): o["guestValue"] = hex(v)
        case let .guestEvent(r):
            o["guestEvent"] = ["vcpu": r.vcpu, "kind": r.kind.rawValue, "detail": r.detail, "rip": hex(r.state.rip),
                               "mode": r.state.mode.rawValue,
                               "instructionBytes": r.instructionBytes.map { String(format: "%02x", $0) }.joined(separator: " ")]
        default: break
        }
        let data = (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
