import CKVM
import Glibc
import X86

/// A KVM vCPU: its fd, the mapped kvm_run page, KVM_RUN, and state get/set.
/// Not thread-safe: one thread runs it (another may only set immediate_exit and signal it).
public final class VCPU: @unchecked Sendable {
    let handle: OwnedFD
    public var fd: Int32 { handle.fd }
    /// The vCPU's APIC ID / index in its machine.
    public let index: Int
    /// The mapped kvm_run structure.
    public let runPointer: UnsafeMutablePointer<kvm_run>
    public let mmapSize: Int
    private var statsReader: KVMStats?

    init(fd: Int32, index: Int, mmapSize: Int) throws(KVMError) {
        handle = OwnedFD(fd)
        self.index = index
        self.mmapSize = mmapSize
        guard mmapSize >= MemoryLayout<kvm_run>.size else {
            throw KVMError.invalidArgument("vCPU mmap size \(mmapSize) is smaller than kvm_run")
        }
        let p = mmap(nil, mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED || p == nil { throw KVMError.mmap(what: "kvm_run", errno: .current) }
        runPointer = p!.bindMemory(to: kvm_run.self, capacity: 1)
    }

    deinit { munmap(runPointer, mmapSize) }

    // MARK: running

    /// KVM_RUN, then the decoded exit. EINTR (a kick) and EAGAIN (an AP leaving wait-for-SIPI)
    /// are thrown like any other errno; the caller decides.
    @inline(__always)
    public func run() throws(KVMError) -> VMExit {
        var err: Int32 = 0
        if ckvm_run(fd, &err) < 0 { throw KVMError.ioctl(name: "KVM_RUN", errno: Errno(err)) }
        return VMExit(run: runPointer)
    }

    /// KVM_RUN without decoding: 0, or the errno. The fastest form for the exit loop.
    @inline(__always)
    public func runRaw() -> Int32 {
        var err: Int32 = 0
        return ckvm_run(fd, &err) < 0 ? err : 0
    }

    /// The exit the last KVM_RUN reported.
    @inline(__always)
    public var exit: VMExit { VMExit(run: runPointer) }

    /// The last exit's KVM_EXIT_IO fields, nil for other exits (no `VMExit` built).
    @inlinable
    public var ioExit: IOExitInfo? { IOExitInfo(run: runPointer) }

    /// kvm_run.immediate_exit: when set, KVM_RUN returns EINTR at once (and before entering
    /// the guest). Safe to set from another thread before signalling this one.
    public var immediateExit: Bool {
        get { ckvm_run_immediate_exit(runPointer) != 0 }
        set { ckvm_run_set_immediate_exit(runPointer, newValue ? 1 : 0) }
    }

    /// kvm_run.if_flag and ready_for_interrupt_injection after an exit.
    public var interruptFlag: Bool { ckvm_run_if_flag(runPointer) != 0 }
    public var readyForInterruptInjection: Bool { ckvm_run_ready_for_interrupt_injection(runPointer) != 0 }
    public var requestInterruptWindow: Bool {
        get { runPointer.pointee.request_interrupt_window != 0 }
        set { runPointer.pointee.request_interrupt_window = newValue ? 1 : 0 }
    }

    /// The KVM_EXIT_IO data area: `length` bytes at `offset` from kvm_run, or nil when that
    /// would leave the mapping (checked even though KVM sets the offset).
    @inline(__always)
    public func ioData(offset: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        guard length >= 0, offset <= UInt64(mmapSize), UInt64(length) <= UInt64(mmapSize) - offset else { return nil }
        return UnsafeMutableRawPointer(runPointer) + Int(offset)
    }

    /// The 8-byte KVM_EXIT_MMIO data field (a read's answer goes here).
    @inline(__always)
    public var mmioData: UnsafeMutableRawPointer { UnsafeMutableRawPointer(ckvm_run_mmio_data(runPointer)!) }

    /// Answers a KVM_EXIT_X86_RDMSR (or acknowledges a WRMSR); `error` makes the guest take #GP.
    @inline(__always)
    public func completeMSR(data: UInt64, error: Bool) {
        ckvm_run_msr_set_data(runPointer, data)
        ckvm_run_msr_set_error(runPointer, error ? 1 : 0)
    }

    /// Sets kvm_run.hypercall.ret.
    public func completeHypercall(ret: UInt64) { ckvm_run_hypercall_set_ret(runPointer, ret) }

    // MARK: sync regs (KVM_CAP_SYNC_REGS)

    /// Asks KVM to copy regs/sregs/events into kvm_run at every exit (no extra ioctl to read them).
    public func enableSyncRegs(regs: Bool = true, sregs: Bool = true, events: Bool = false) {
        var v: UInt64 = 0
        if regs { v |= CKVM_SYNC_X86_REGS }
        if sregs { v |= CKVM_SYNC_X86_SREGS }
        if events { v |= CKVM_SYNC_X86_EVENTS }
        ckvm_run_set_sync_valid(runPointer, v)
    }

    public var syncRegsEnabled: Bool { ckvm_run_sync_valid(runPointer) & CKVM_SYNC_X86_REGS != 0 }
    public var syncSregsEnabled: Bool { ckvm_run_sync_valid(runPointer) & CKVM_SYNC_X86_SREGS != 0 }
    public var syncEventsEnabled: Bool { ckvm_run_sync_valid(runPointer) & CKVM_SYNC_X86_EVENTS != 0 }

    /// regs as KVM left them in kvm_run at the last exit (valid with sync regs enabled).
    public var syncedRegs: UnsafeMutablePointer<kvm_regs> { ckvm_run_sync_regs(runPointer)! }
    public var syncedSregs: UnsafeMutablePointer<kvm_sregs> { ckvm_run_sync_sregs(runPointer)! }
    public var syncedEvents: UnsafeMutablePointer<kvm_vcpu_events> { ckvm_run_sync_events(runPointer)! }

    /// Marks the synced regs (and sregs) as changed by the VMM: KVM loads them at the next KVM_RUN.
    public func markSyncedDirty(regs: Bool = true, sregs: Bool = false) {
        ckvm_run_set_sync_dirty(runPointer, (regs ? CKVM_SYNC_X86_REGS : 0) | (sregs ? CKVM_SYNC_X86_SREGS : 0))
    }

    /// The state at the last exit built from the sync-regs area (no ioctl).
    @inline(__always)
    public func syncedState() -> CPUState {
        CPUState(regs: syncedRegs.pointee, sregs: syncedSregs.pointee)
    }

    /// The synced registers in place (valid until the next KVM_RUN).
    @inline(__always)
    public var syncedRegisters: SyncedRegistersView { SyncedRegistersView(regs: syncedRegs, sregs: syncedSregs) }

    /// The synced registers into `state` in place (the exit path: no temporary copies). Fields
    /// sync regs do not carry keep their values, so `state` should hold nothing else.
    public func loadSyncedState(into state: inout CPUState) {
        syncedRegisters.load(into: &state)
    }

    // MARK: state get/set

    /// One KVM_GET_* ioctl that fills a struct, and one KVM_SET_* that passes one.
    private func read<T>(_ empty: T, _ request: UInt, _ name: String) throws(KVMError) -> T {
        var v = empty
        _ = try kvmIoctl(fd, request, name, &v)
        return v
    }
    private func write<T>(_ value: T, _ request: UInt, _ name: String) throws(KVMError) {
        var v = value
        _ = try kvmIoctl(fd, request, name, &v)
    }

    public func getRegs() throws(KVMError) -> kvm_regs { try read(kvm_regs(), CKVM_GET_REGS, "KVM_GET_REGS") }
    public func setRegs(_ regs: kvm_regs) throws(KVMError) { try write(regs, CKVM_SET_REGS, "KVM_SET_REGS") }
    public func getSregs() throws(KVMError) -> kvm_sregs { try read(kvm_sregs(), CKVM_GET_SREGS, "KVM_GET_SREGS") }
    public func setSregs(_ sregs: kvm_sregs) throws(KVMError) { try write(sregs, CKVM_SET_SREGS, "KVM_SET_SREGS") }
    public func getFPU() throws(KVMError) -> kvm_fpu { try read(kvm_fpu(), CKVM_GET_FPU, "KVM_GET_FPU") }
    public func setFPU(_ fpu: kvm_fpu) throws(KVMError) { try write(fpu, CKVM_SET_FPU, "KVM_SET_FPU") }
    /// XCR0 and friends (KVM_GET_XCRS), as (index, value) pairs.
    public func getXCRs() throws(KVMError) -> [(index: UInt32, value: UInt64)] {
        var x = kvm_xcrs()
        _ = try kvmIoctl(fd, CKVM_GET_XCRS, "KVM_GET_XCRS", &x)
        let n = Int(min(x.nr_xcrs, UInt32(KVM_MAX_XCRS)))
        return withUnsafeBytes(of: x.xcrs) { raw in
            let p = raw.bindMemory(to: kvm_xcr.self)
            return (0..<n).map { (p[$0].xcr, p[$0].value) }
        }
    }
    public func setXCRs(_ xcrs: [(index: UInt32, value: UInt64)]) throws(KVMError) {
        var x = kvm_xcrs()
        x.nr_xcrs = UInt32(min(xcrs.count, Int(KVM_MAX_XCRS)))
        withUnsafeMutableBytes(of: &x.xcrs) { raw in
            let p = raw.bindMemory(to: kvm_xcr.self)
            for (i, e) in xcrs.prefix(Int(KVM_MAX_XCRS)).enumerated() { p[i].xcr = e.index; p[i].value = e.value }
        }
        _ = try kvmIoctl(fd, CKVM_SET_XCRS, "KVM_SET_XCRS", &x)
    }
    /// KVM_GET_MSRS for `indices`; an MSR KVM refuses is left out of the result.
    public func getMSRs(_ indices: [UInt32]) throws(KVMError) -> [UInt32: UInt64] {
        guard !indices.isEmpty else { return [:] }
        guard let m = ckvm_msrs_alloc(UInt32(indices.count)) else { throw KVMError.mmap(what: "kvm_msrs", errno: .ENOMEM) }
        defer { free(m) }
        let e = ckvm_msrs_entries(m)!
        for (i, idx) in indices.enumerated() { e[i].index = idx }
        let n = try kvmIoctl(fd, CKVM_GET_MSRS, "KVM_GET_MSRS", pointer: m)
        var out: [UInt32: UInt64] = [:]
        for i in 0..<Int(n) { out[e[i].index] = e[i].data }
        return out
    }
    /// KVM_SET_MSRS; returns how many KVM accepted (it stops at the first it refuses).
    @discardableResult
    public func setMSRs(_ values: [(index: UInt32, value: UInt64)]) throws(KVMError) -> Int {
        guard !values.isEmpty else { return 0 }
        guard let m = ckvm_msrs_alloc(UInt32(values.count)) else { throw KVMError.mmap(what: "kvm_msrs", errno: .ENOMEM) }
        defer { free(m) }
        let e = ckvm_msrs_entries(m)!
        for (i, v) in values.enumerated() { e[i].index = v.index; e[i].data = v.value }
        return Int(try kvmIoctl(fd, CKVM_SET_MSRS, "KVM_SET_MSRS", pointer: m))
    }
    public func getVCPUEvents() throws(KVMError) -> kvm_vcpu_events { try read(kvm_vcpu_events(), CKVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS") }
    public func setVCPUEvents(_ events: kvm_vcpu_events) throws(KVMError) { try write(events, CKVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS") }
    /// KVM_GET_MP_STATE: KVM_MP_STATE_RUNNABLE (0), UNINITIALIZED (1, an AP waiting for INIT),
    /// INIT_RECEIVED (2), HALTED (3), SIPI_RECEIVED (4), ...
    public func getMPState() throws(KVMError) -> UInt32 {
        var s = kvm_mp_state()
        _ = try kvmIoctl(fd, CKVM_GET_MP_STATE, "KVM_GET_MP_STATE", &s)
        return s.mp_state
    }
    public func setMPState(_ state: UInt32) throws(KVMError) {
        var s = kvm_mp_state(mp_state: state)
        _ = try kvmIoctl(fd, CKVM_SET_MP_STATE, "KVM_SET_MP_STATE", &s)
    }
    /// KVM_SET_CPUID2: what CPUID tells this guest.
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        guard let c = ckvm_cpuid2_alloc(UInt32(entries.count)) else { throw KVMError.mmap(what: "kvm_cpuid2", errno: .ENOMEM) }
        defer { free(c) }
        let e = ckvm_cpuid2_entries(c)!
        for (i, x) in entries.enumerated() { e[i] = x.raw }
        _ = try kvmIoctl(fd, CKVM_SET_CPUID2, "KVM_SET_CPUID2", pointer: c)
    }
    /// KVM_SET_GUEST_DEBUG: single-step (KVM_GUESTDBG_SINGLESTEP) on or off.
    public func setSingleStep(_ on: Bool) throws(KVMError) {
        var d = kvm_guest_debug()
        d.control = on ? UInt32(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP) : 0
        _ = try kvmIoctl(fd, CKVM_SET_GUEST_DEBUG, "KVM_SET_GUEST_DEBUG", &d)
    }
    /// KVM_GET_DEBUGREGS: DR0-DR3, DR6, DR7.
    public func getDebugRegs() throws(KVMError) -> DebugRegisters {
        var d = kvm_debugregs()
        _ = try kvmIoctl(fd, CKVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", &d)
        return DebugRegisters(dr0: d.db.0, dr1: d.db.1, dr2: d.db.2, dr3: d.db.3, dr6: d.dr6, dr7: d.dr7)
    }

    /// KVM_GET_LAPIC: the in-kernel local APIC's 1 KiB register page (xAPIC layout).
    public func getLAPIC() throws(KVMError) -> [UInt8] {
        var l = kvm_lapic_state()
        _ = try kvmIoctl(fd, CKVM_GET_LAPIC, "KVM_GET_LAPIC", &l)
        return withUnsafeBytes(of: &l.regs) { Array($0) }
    }

    /// KVM_X86_SETUP_MCE: the guest's IA32_MCG_CAP (capability bits and number of banks).
    public func setupMCE(_ mcgCap: UInt64) throws(KVMError) {
        var v = mcgCap
        _ = try kvmIoctl(fd, CKVM_X86_SETUP_MCE, "KVM_X86_SETUP_MCE", &v)
    }

    /// KVM_GET_TSC_KHZ: the guest's TSC rate (the host's unless scaled).
    public func tscKHz() throws(KVMError) -> UInt64 {
        UInt64(try kvmIoctl(fd, CKVM_GET_TSC_KHZ, "KVM_GET_TSC_KHZ"))
    }

    /// KVM's binary statistics for this vCPU (KVM_GET_STATS_FD, opened on first use).
    public func stats() throws(KVMError) -> KVMStats {
        if let s = statsReader { return s }
        let sfd = try kvmIoctl(fd, CKVM_GET_STATS_FD, "KVM_GET_STATS_FD")
        let s = try KVMStats(fd: sfd)
        statsReader = s
        return s
    }
}

public struct DebugRegisters: Equatable, Sendable {
    public var dr0: UInt64, dr1: UInt64, dr2: UInt64, dr3: UInt64, dr6: UInt64, dr7: UInt64
    public init(dr0: UInt64, dr1: UInt64, dr2: UInt64, dr3: UInt64, dr6: UInt64, dr7: UInt64) {
        self.dr0 = dr0; self.dr1 = dr1; self.dr2 = dr2; self.dr3 = dr3; self.dr6 = dr6; self.dr7 = dr7
    }
}
