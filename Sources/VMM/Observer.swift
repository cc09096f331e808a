import Glibc
import KVM
import X86

/// Recording's view of the VMM (DESIGN.md, "The exit record"). The VMM calls it on each
/// vCPU's own thread, so an observer must be safe to call from several threads at once
/// (one call at a time per vCPU). With no observer the exit loop does none of this work.
///
/// Order per vCPU: `vcpuStarted`, then for every exit `exitHandled` (and `msrWritten` /
/// `marker` just before it when the exit was one), then `vcpuStopped`; `runEnded` once,
/// on the thread that called `Machine.run`, after every vCPU has stopped.
public protocol ExitObserver: AnyObject, Sendable {
    /// Before the first KVM_RUN of the machine (machine description for the trace header).
    func runStarted(_ info: MachineInfo)
    /// A vCPU thread is about to enter the guest for the first time, in `state`.
    func vcpuStarted(vcpu: Int, state: CPUState)
    /// One exit, after the VMM handled it and just before re-entry.
    func exitHandled(_ exit: borrowing ObservedExit)
    /// A port I/O exit of one access (KVM_EXIT_IO, count 1) that the VMM handled and resumes from,
    /// with sync regs on and fidelity `.exit`, and no marker: offered first, with only its own
    /// fields (building an ObservedExit costs the vCPU thread ~250 instructions per exit). True:
    /// the observer took it, and no `exitHandled` follows for it; false (the default): the VMM
    /// calls `exitHandled` as for any exit. `registers` and `data` are valid only during the call.
    func portIOExitHandled(vcpu: Int, registers: SyncedRegistersView, io: IOExitInfo, data: UnsafeRawBufferPointer,
                           tscAtExit: UInt64, tscAtReentry: UInt64) -> Bool
    /// A routed WRMSR (index, value), before the VMM applies it.
    func msrWritten(vcpu: Int, index: UInt32, value: UInt64)
    /// The guest wrote `phase` to the marker port (0x502).
    func marker(vcpu: Int, phase: UInt64)
    /// The VMM performed an instruction KVM's emulator failed on (issue 9), right after the
    /// `exitHandled` of that INTERNAL_ERROR exit: state before and after, the instruction, the
    /// guest bytes it read and wrote, its device accesses. The other vCPUs were held out of the
    /// guest while it ran.
    func instructionCompleted(_ completion: Completion)
    /// A vCPU left its loop (the run is ending, or it halted).
    func vcpuStopped(vcpu: Int, exits: UInt64)
    /// The run is over.
    func runEnded(_ summary: RunSummary)
}

extension ExitObserver {
    public func portIOExitHandled(vcpu: Int, registers: SyncedRegistersView, io: IOExitInfo, data: UnsafeRawBufferPointer,
                                  tscAtExit: UInt64, tscAtReentry: UInt64) -> Bool { false }
    public func runStarted(_ info: MachineInfo) {}
    public func vcpuStarted(vcpu: Int, state: CPUState) {}
    public func msrWritten(vcpu: Int, index: UInt32, value: UInt64) {}
    public func marker(vcpu: Int, phase: UInt64) {}
    public func instructionCompleted(_ completion: Completion) {}
    public func vcpuStopped(vcpu: Int, exits: UInt64) {}
    public func runEnded(_ summary: RunSummary) {}
}

/// What was captured of each exit (`ObserverOptions.fidelity`).
public enum Fidelity: String, Sendable, Codable {
    /// The state KVM showed at the exit (sync regs: regs + sregs, no extra ioctl).
    case exit
    /// Also the state after the instruction completed: the VMM re-enters with immediate_exit=1
    /// (KVM completes the pending I/O or MMIO and returns EINTR) and reads sync regs again.
    case full
}

/// How the VMM feeds its observer.
public struct ObserverOptions: Sendable {
    public var fidelity: Fidelity
    /// KVM_GUESTDBG_SINGLESTEP on every vCPU: each instruction KVM runs gives a DEBUG exit,
    /// delivered to the observer like any other exit (on kvm_pvm: CPL0 only).
    public var singleStep: Bool
    /// Also sync kvm_vcpu_events at every exit (KVM_SYNC_X86_EVENTS, still no ioctl) and pass
    /// them as `ObservedExit.events`.
    public var events: Bool
    public init(fidelity: Fidelity = .exit, singleStep: Bool = false, events: Bool = false) {
        self.fidelity = fidelity
        self.singleStep = singleStep
        self.events = events
    }
}

/// Static facts about the machine a run uses (for a trace header).
public struct MachineInfo: Sendable {
    public var config: MachineConfig
    public var backend: String
    public var apiVersion: Int32
    /// Capabilities with their KVM_CHECK_EXTENSION values (0 = absent).
    public var capabilities: [(name: String, value: Int32)]
    public var memory: GuestMemoryView
    /// The guest TSC rate (KVM_GET_TSC_KHZ × 1000): the host's unless KVM scales it.
    public var tscHz: UInt64?
    /// Host CPU model name and kernel release, so a report can say what "hardware" meant.
    public var hostCPU: String
    public var kernel: String
}

/// Read-only, bounds-checked access to guest memory for observers: physical reads, page-table
/// walks and linear reads with a given state. Nothing here can write guest memory.
public struct GuestMemoryView: @unchecked Sendable, PhysicalMemoryReader {
    let memory: GuestMemory
    public init(_ memory: GuestMemory) { self.memory = memory }

    public var size: UInt64 { memory.size }
    public func read(_ gpa: UInt64, count: Int) -> [UInt8]? { memory.read(gpa, count: count) }
    /// Whether RAM at `gpa` holds exactly `bytes`, compared in place (false when not RAM).
    public func equals(_ gpa: UInt64, _ bytes: [UInt8]) -> Bool {
        guard let p = memory.host(gpa, length: UInt64(bytes.count)) else { return false }
        return bytes.withUnsafeBytes { b in b.count == 0 || memcmp(p, b.baseAddress!, b.count) == 0 }
    }
    /// The same, for `count` bytes at `bytes` (no array: for checks made on every exit).
    public func equals(_ gpa: UInt64, _ bytes: UnsafeRawPointer, count: Int) -> Bool {
        guard let p = memory.host(gpa, length: UInt64(count)) else { return false }
        return count == 0 || memcmp(p, bytes, count) == 0
    }
    public func readPhysical64(_ gpa: UInt64) -> UInt64? { memory.readPhysical64(gpa) }
    public func readPhysical32(_ gpa: UInt64) -> UInt32? { memory.readPhysical32(gpa) }
    /// GVA→GPA with the page tables of `state`, listing every entry walked.
    public func translate(_ linear: UInt64, state: CPUState, access: PageAccess = .read) -> PageWalkResult {
        memory.translate(linear, state: state, access: access)
    }
    public func readLinear(_ linear: UInt64, count: Int, state: CPUState) -> [UInt8]? {
        memory.readLinear(linear, count: count, state: state)
    }
    public func instructionBytes(state: CPUState, maxBytes: Int = 15) -> [UInt8] {
        memory.instructionBytes(state: state, maxBytes: maxBytes)
    }
}

/// Per-vCPU probes an observer may call from that vCPU's callbacks (once per trace frame,
/// not per exit: each costs a read or an ioctl).
public final class VCPUProbe: @unchecked Sendable {
    let vcpu: VCPU
    init(_ vcpu: VCPU) { self.vcpu = vcpu }
    public var index: Int { vcpu.index }
    /// KVM's binary statistics for this vCPU, by name (exits, halt_exits, insn_emulation, ...).
    public func stats() throws(KVMError) -> [String: UInt64] { try vcpu.stats().read() }
    /// DR0-3, DR6, DR7 (KVM_GET_DEBUGREGS).
    public func debugRegisters() throws(KVMError) -> DebugRegisters { try vcpu.getDebugRegs() }
    /// The in-kernel local APIC's register page (KVM_GET_LAPIC), for reads that never exit.
    public func lapicRegisters() throws(KVMError) -> [UInt8] { try vcpu.getLAPIC() }
    /// XCR0 (KVM_GET_XCRS), nil when KVM does not report it.
    public func xcr0() throws(KVMError) -> UInt64? {
        try vcpu.getXCRs().first { $0.index == 0 }?.value
    }
    /// The save-area MSRs (KVM_GET_MSRS) for a keyframe.
    public func msrs(_ indices: [UInt32] = MSRIndex.saveArea) throws(KVMError) -> [UInt32: UInt64] {
        try vcpu.getMSRs(indices)
    }
}

/// One exit as the observer sees it. Valid only during `exitHandled`; the pointers into the
/// kvm_run page and to the states must not be kept.
public struct ObservedExit {
    public let vcpu: Int
    /// This vCPU's exit number (0, 1, 2, ...).
    public let sequence: UInt64
    public let exit: VMExit
    /// `exit`'s KVM_EXIT_IO fields when it is one (matching `exit` copies the whole enum).
    public let io: IOExitInfo?
    /// The VMM's copy of the state, lent for the callback: built from `registers` at the first
    /// use of `state`/`statePointer` (an observer that copies the registers never pays for it).
    let stateStorage: UnsafeMutablePointer<CPUState>
    /// Whether `stateStorage` holds this exit's state yet (one flag per vCPU loop, reset per exit).
    let stateLoaded: UnsafeMutablePointer<Bool>
    let stateAfterPointer: UnsafePointer<CPUState>?
    /// The state at the exit as KVM's synced registers, in place in the kvm_run page; nil when
    /// sync regs are off or the page already shows a later state (`--fidelity full`).
    public let registers: SyncedRegistersView?
    /// The state, lent for the callback (valid only until it returns). The pointer lets a hot
    /// observer read fields and copy the state once, where Swift may copy a value read through
    /// an accessor to pass it on.
    public var statePointer: UnsafePointer<CPUState> {
        if !stateLoaded.pointee {
            registers?.load(into: &stateStorage.pointee)
            stateLoaded.pointee = true
        }
        return UnsafePointer(stateStorage)
    }
    /// The state as KVM showed it at the exit (for OUT and MMIO writes on this host: after the
    /// instruction; for IN and MMIO reads: on it). Read in place: `exit.state.rip` copies nothing.
    public var state: CPUState { _read { yield statePointer.pointee } }
    /// Host TSC right after KVM_RUN returned, and just before this callback (the VMM's
    /// handling time is the difference; re-entry follows the callback).
    public let tscAtExit: UInt64
    public let tscAtReentry: UInt64
    /// The device side: port/GPA/MSR, size, direction, data (a read's answer), count.
    public let access: BusAccess?
    /// For an I/O exit: all `count` elements (after the device answered, for IN/INS).
    public let ioData: UnsafeRawBufferPointer?
    /// Fidelity `.full`: the state after the instruction completed (nil when the completing
    /// KVM_RUN itself produced another exit, which then follows as the next exit).
    public var stateAfter: CPUState? { stateAfterPointer?.pointee }
    public var hasStateAfter: Bool { stateAfterPointer != nil }
    /// With `ObserverOptions(events: true)`: pending/injected events at the exit.
    public let events: VCPUEvents?
    /// Guest memory and the probe are lent like the states, unretained, so building and dropping
    /// the exit costs no reference counting (the VMM's loop holds both for the whole run).
    let guestMemory: Unmanaged<GuestMemory>
    let probeReference: Unmanaged<VCPUProbe>
    public var memory: GuestMemoryView { GuestMemoryView(guestMemory.takeUnretainedValue()) }
    public var probe: VCPUProbe { probeReference.takeUnretainedValue() }
    /// A routed RDMSR/WRMSR the VMM refused (KVM_SET_MSRS refused the value, or no device owns
    /// the MSR): it completed the instruction with #GP(0), so nothing was read or written.
    public var msrRefused: Bool = false
}
