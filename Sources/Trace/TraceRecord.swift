import X86

/// The kinds of record the format has had since its first version (DESIGN.md).
public enum RecordKind: UInt8, Sendable, CaseIterable, Codable {
    /// A VM exit: the VMCB-style snapshot of one KVM_RUN return.
    case exit = 1
    /// An instruction the VMM performed itself because KVM could not emulate it.
    case completion = 2
    /// One single-stepped guest instruction (KVM_GUESTDBG_SINGLESTEP).
    case step = 3
    /// An interrupt or exception injected, a vCPU started or stopped.
    case event = 4
    /// A span that could not be observed (e.g. CPL3 code under single-step).
    case gap = 5
    /// A phase boundary the guest announced on the marker port (0x502).
    case marker = 6

    public var name: String { String(describing: self) }
}

/// How KVM showed the instruction behind an exit (DESIGN.md, "When KVM shows an exit").
public enum Visibility: UInt8, Sendable, Codable {
    /// Not tied to one instruction (an event, a gap, an external interrupt).
    case none = 0
    /// The instruction has taken effect; RIP is past it (OUT and MMIO writes here).
    case committed = 1
    /// RIP is on the instruction; it completes when the VMM re-enters (IN and MMIO reads here).
    case pending = 2
}

/// The device side of an exit: one access to a port, a guest-physical address or an MSR.
public struct DeviceAccess: Equatable, Sendable {
    public enum Space: UInt8, Sendable, Codable { case port = 1, mmio = 2, msr = 3 }
    public var space: Space
    /// Port number, GPA, or MSR index.
    public var address: UInt64
    /// Bytes per item (1, 2, 4 or 8).
    public var size: UInt8
    public var isWrite: Bool
    /// Items in this access: more than one for string I/O that KVM batched.
    public var count: UInt32
    /// The data, `size * count` bytes, little-endian, as the guest wrote or the device answered.
    public var data: [UInt8]

    public init(space: Space, address: UInt64, size: UInt8, isWrite: Bool, count: UInt32 = 1, data: [UInt8]) {
        self.space = space
        self.address = address
        self.size = size
        self.isWrite = isWrite
        self.count = count
        self.data = data
    }

    /// The first item as a little-endian integer (the common single-item case).
    public var value: UInt64 {
        var v: UInt64 = 0
        for (i, b) in data.prefix(min(Int(size), 8)).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }
}

/// Guest bytes the record needs for replay: a run of guest-physical memory as it was read
/// (instruction bytes, page-table entries, operands) or as it was written.
public struct GuestBytes: Equatable, Sendable {
    public enum Role: UInt8, Sendable, Codable {
        case instruction = 1, pageTable = 2, operandRead = 3, written = 4
    }
    public var role: Role
    public var gpa: UInt64
    public var bytes: [UInt8]
    public init(role: Role, gpa: UInt64, bytes: [UInt8]) {
        self.role = role
        self.gpa = gpa
        self.bytes = bytes
    }
}

/// A write to a save-area MSR, seen by the VMM through the MSR filter.
public struct MSRWrite: Equatable, Sendable {
    public var index: UInt32
    public var value: UInt64
    public init(index: UInt32, value: UInt64) {
        self.index = index
        self.value = value
    }
}

/// One record of a trace. Exit records follow AMD's VMCB: a control area (EXITCODE, EXITINFO1,
/// EXITINFO2, EXITINTINFO, nRIP, instruction bytes) and a save area (`state`), beside the KVM
/// exit reason it came from, the device side and timing.
public struct TraceRecord: Equatable, Sendable {
    public var kind: RecordKind
    public var vcpu: UInt16
    /// Global sequence number, over all vCPUs, starting at 0.
    public var seq: UInt64
    /// Sequence number within this vCPU, starting at 0.
    public var vcpuSeq: UInt64

    // Control area
    /// KVM's exit reason (KVM_EXIT_*), kept beside the SVM code, never replaced by it.
    public var kvmExitReason: UInt32
    public var exitCode: SVMExitCode
    public var exitInfo1: UInt64
    public var exitInfo2: UInt64
    public var exitIntInfo: UInt64
    /// Next sequential RIP (the instruction's end), 0 when unknown.
    public var nextRIP: UInt64

    /// RIP (the CS offset) of the instruction's first byte, and its bytes (at most 15); the
    /// bytes' guest-physical place is in `memory` with the role `.instruction`.
    public var instructionStart: UInt64
    public var instructionBytes: [UInt8]
    /// For committed exits: how many decoded candidates ending at RIP performed the access
    /// (1 normally; 0 when none did; >1 is an ambiguity, recorded as such).
    public var candidates: UInt8
    public var visibility: Visibility

    /// Exits of one instruction share a group id (the `seq` of its first fragment);
    /// `fragment` counts from 0 and `lastFragment` marks the one that finished it.
    public var group: UInt64
    public var fragment: UInt32
    public var lastFragment: Bool

    /// The save area and every GPR, as KVM showed it at the exit (sync_regs).
    public var state: CPUState
    /// With `--fidelity full`: the state after the instruction completed.
    public var stateAfter: CPUState?

    public var accesses: [DeviceAccess]
    public var memory: [GuestBytes]
    public var msrWrites: [MSRWrite]
    /// The VMM refused the record's MSR access (KVM_SET_MSRS refused the value, or no device
    /// owns the MSR) and completed RDMSR/WRMSR with #GP(0) instead: nothing was read or written.
    /// Format 1.1 (record field bit 26); false in older traces.
    public var accessRefused: Bool

    /// Host TSC when KVM_RUN returned and when the VMM called it again.
    public var tscExit: UInt64
    public var tscEntry: UInt64

    /// For markers: the phase number; for events and gaps: a code of the kind's own.
    public var code: UInt64
    /// Free text for events, gaps and unusual exits (e.g. an INTERNAL_ERROR's suberror).
    public var note: String

    public init(kind: RecordKind, vcpu: UInt16 = 0, seq: UInt64 = 0, vcpuSeq: UInt64 = 0,
                kvmExitReason: UInt32 = 0, exitCode: SVMExitCode = .none, exitInfo1: UInt64 = 0,
                exitInfo2: UInt64 = 0, exitIntInfo: UInt64 = 0, nextRIP: UInt64 = 0,
                instructionStart: UInt64 = 0, instructionBytes: [UInt8] = [], candidates: UInt8 = 0,
                visibility: Visibility = .none, group: UInt64 = 0, fragment: UInt32 = 0,
                lastFragment: Bool = true, state: CPUState = CPUState(), stateAfter: CPUState? = nil,
                accesses: [DeviceAccess] = [], memory: [GuestBytes] = [], msrWrites: [MSRWrite] = [],
                accessRefused: Bool = false, tscExit: UInt64 = 0, tscEntry: UInt64 = 0, code: UInt64 = 0, note: String = "") {
        self.kind = kind
        self.vcpu = vcpu
        self.seq = seq
        self.vcpuSeq = vcpuSeq
        self.kvmExitReason = kvmExitReason
        self.exitCode = exitCode
        self.exitInfo1 = exitInfo1
        self.exitInfo2 = exitInfo2
        self.exitIntInfo = exitIntInfo
        self.nextRIP = nextRIP
        self.instructionStart = instructionStart
        self.instructionBytes = instructionBytes
        self.candidates = candidates
        self.visibility = visibility
        self.group = group
        self.fragment = fragment
        self.lastFragment = lastFragment
        self.state = state
        self.stateAfter = stateAfter
        self.accesses = accesses
        self.memory = memory
        self.msrWrites = msrWrites
        self.accessRefused = accessRefused
        self.tscExit = tscExit
        self.tscEntry = tscEntry
        self.code = code
        self.note = note
    }
}

/// Per-frame, per-vCPU counters: KVM's binary stats and the debug registers, read once per
/// frame rather than per exit (DESIGN.md).
public struct VCPUFrameStats: Equatable, Sendable {
    public var vcpu: UInt16
    /// KVM stat name → value (exits, io_exits, mmio_exits, halt_exits, insn_emulation, ...).
    public var counters: [String: UInt64]
    public var dr0: UInt64, dr1: UInt64, dr2: UInt64, dr3: UInt64, dr6: UInt64, dr7: UInt64
    public init(vcpu: UInt16, counters: [String: UInt64] = [:], dr0: UInt64 = 0, dr1: UInt64 = 0,
                dr2: UInt64 = 0, dr3: UInt64 = 0, dr6: UInt64 = 0, dr7: UInt64 = 0) {
        self.vcpu = vcpu
        self.counters = counters
        self.dr0 = dr0
        self.dr1 = dr1
        self.dr2 = dr2
        self.dr3 = dr3
        self.dr6 = dr6
        self.dr7 = dr7
    }
}

/// The facts of a run, written once at the start of the file.
public struct TraceHeader: Equatable, Sendable {
    public var formatVersion: UInt16
    public var tscHz: UInt64
    public var hostCPU: String
    public var kernel: String
    /// kvm_amd, kvm_intel, kvm_pvm, or "unknown".
    public var kvmBackend: String
    /// KVM capability name → value of KVM_CHECK_EXTENSION.
    public var capabilities: [String: Int64]
    public var cpuid: [CPUIDEntry]
    public var memory: [MemoryRegionInfo]
    public var vcpuCount: UInt16
    public var imagePath: String
    public var imageSHA256: String
    public var commandLine: [String]
    /// Guest symbols (address → name) when the image has them, for `show` and `report`.
    public var symbols: [GuestSymbol]
    /// Recording options (fidelity, single-step, irqchip mode, ...), name → value.
    public var options: [String: String]
    public var startTime: String

    public init(formatVersion: UInt16 = 1, tscHz: UInt64 = 0, hostCPU: String = "", kernel: String = "",
                kvmBackend: String = "unknown", capabilities: [String: Int64] = [:], cpuid: [CPUIDEntry] = [],
                memory: [MemoryRegionInfo] = [], vcpuCount: UInt16 = 1, imagePath: String = "",
                imageSHA256: String = "", commandLine: [String] = [], symbols: [GuestSymbol] = [],
                options: [String: String] = [:], startTime: String = "") {
        self.formatVersion = formatVersion
        self.tscHz = tscHz
        self.hostCPU = hostCPU
        self.kernel = kernel
        self.kvmBackend = kvmBackend
        self.capabilities = capabilities
        self.cpuid = cpuid
        self.memory = memory
        self.vcpuCount = vcpuCount
        self.imagePath = imagePath
        self.imageSHA256 = imageSHA256
        self.commandLine = commandLine
        self.symbols = symbols
        self.options = options
        self.startTime = startTime
    }
}

public struct CPUIDEntry: Equatable, Sendable, Codable {
    public var function: UInt32, index: UInt32, flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
                eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        self.function = function
        self.index = index
        self.flags = flags
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }
}

public struct MemoryRegionInfo: Equatable, Sendable, Codable {
    public var gpa: UInt64
    public var size: UInt64
    public var name: String
    public init(gpa: UInt64, size: UInt64, name: String) {
        self.gpa = gpa
        self.size = size
        self.name = name
    }
}

public struct GuestSymbol: Equatable, Sendable, Codable {
    public var address: UInt64
    public var size: UInt64
    public var name: String
    public init(address: UInt64, size: UInt64, name: String) {
        self.address = address
        self.size = size
        self.name = name
    }
}
