import X86

/// The x86 executor: one virtual processor with a fast register file, stepping through guest
/// code in every mode. Memory, ports, CPUID, MSRs and the TSC come from protocols; the state
/// goes in and out as `CPUState` (the project's one state schema).
///
/// The hot state (general-purpose registers, RIP, flags, segment registers, vector registers)
/// lives in unsafe buffers and plain stored properties; everything else sits in `sys`, a
/// `CPUState` whose hot fields are ignored until `state` is read.
public final class X86Executor {
    // MARK: environment
    public let memory: GuestMemory
    public var ports: IOPorts?
    public var cpuidSource: CPUIDSource?
    public var msrBus: MSRBus?
    public var tsc: TimeStampCounter?
    /// Deliver exceptions through the IVT/IDT (true) or return them with the state unchanged (false).
    public var deliverExceptions = false
    /// Features the executor implements only when CPUID reports them (BMI1, BMI2, MOVBE...);
    /// read from `cpuidSource` when it is set, else everything is enabled.
    public var features: Features = .all
    /// Port and MSR accesses, in order, for callers that compare them (replay, `exec`);
    /// appended only by I/O and MSR instructions, cleared by the caller.
    public var accessLog: [AccessEvent] = []
    /// The vendor whose behaviour the executor follows where AMD and Intel differ.
    public var vendor: CPUVendor = .amd
    /// XCR0 (XGETBV/XSETBV), part of the state (`CPUState.xcr0`).
    public var xcr0: UInt64 {
        get { sys.xcr0 }
        set { sys.xcr0 = newValue; matchedState = nil }
    }
    /// The state `stateMatches(at:)` last found equal to this executor's, while nothing has
    /// changed either since (see `load(from:keepingCaches:matched:)`).
    var matchedState: UnsafeRawPointer?
    /// Instructions retired by `step`/`run`.
    public internal(set) var retired: UInt64 = 0

    // MARK: hot register file
    @usableFromInline let gpr: UnsafeMutablePointer<UInt64>
    @usableFromInline let seg: UnsafeMutablePointer<Segment>
    /// 16 vector registers of 256 bits (4 quadwords each): XMM in the low half.
    @usableFromInline let vreg: UnsafeMutablePointer<UInt64>
    @usableFromInline var rip: UInt64 = 0
    /// RFLAGS with the six status flags valid only when `lazyOp == .none`.
    @usableFromInline var flagsRest: UInt64 = 2
    @usableFromInline var lazy = LazyFlags()
    @usableFromInline var mode: CPUMode = .real
    public var mxcsr: UInt32 = 0x1F80
    /// DR0-DR3 (not part of the state schema).
    public var dr0to3: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    /// Everything not in the hot file: system registers, MSRs, CPL.
    @usableFromInline var sys = CPUState()
    /// Interrupt shadow after MOV SS/POP SS/STI (one instruction).
    public internal(set) var interruptShadow = false
    /// The shadow is a MOV SS / POP SS one: it also holds a single-step trap off for one instruction.
    var stackSegmentShadow = false
    /// A single-step trap held off by MOV SS / POP SS, taken after the next instruction.
    public internal(set) var singleStepPending = false
    /// Set by instructions after which no single-step trap is taken (software interrupts).
    var noSingleStepTrap = false
    /// The last `step` completed its instruction and then took a single-step trap (so a returned,
    /// undelivered #DB still counts as an executed instruction).
    public internal(set) var singleStepTrapped = false

    // Per-instruction scratch
    @usableFromInline var insnStart: UInt64 = 0
    @usableFromInline var nextRIP: UInt64 = 0
    /// What the current instruction ends with when it completes (HLT, VMMCALL set it).
    var outcome: StepResult = .ok
    /// Set once a task switch has saved the old task: a later fault belongs to the new task, so
    /// the usual restore of the state before the instruction must not happen.
    var taskSwitched = false

    let tlb: TLB
    /// The page RIP executes from, translated once (invalidated with the TLB and on mode changes).
    @usableFromInline var fetchPage: UInt64 = 0
    @usableFromInline var fetchFrame: UInt64 = 0
    @usableFromInline var fetchValid = false
    let cache: DecodeCache

    public init(state: CPUState, memory: GuestMemory, ports: IOPorts? = nil, cpuid: CPUIDSource? = nil,
                msrs: MSRBus? = nil, tsc: TimeStampCounter? = nil) {
        self.ports = ports
        self.cpuidSource = cpuid
        self.msrBus = msrs
        self.tsc = tsc
        self.memory = memory
        gpr = .allocate(capacity: 16)
        gpr.initialize(repeating: 0, count: 16)
        seg = .allocate(capacity: 6)
        seg.initialize(repeating: Segment(), count: 6)
        vreg = .allocate(capacity: 64)
        vreg.initialize(repeating: 0, count: 64)
        tlb = TLB()
        cache = DecodeCache()
        // `load(from:)` copies the state as plain bytes.
        precondition(_isPOD(CPUState.self), "CPUState must stay plain data")
        self.state = state
        if let c = cpuid, let f = Features.from(c) { features = f }
    }

    deinit {
        gpr.deallocate()
        seg.deallocate()
        vreg.deallocate()
    }

    /// The architectural state in the project's schema.
    public var state: CPUState {
        get {
            var s = sys
            // Field by field: CPUState.gpr/setGPR are not inlinable across modules.
            s.rax = gpr[0]; s.rcx = gpr[1]; s.rdx = gpr[2]; s.rbx = gpr[3]
            s.rsp = gpr[4]; s.rbp = gpr[5]; s.rsi = gpr[6]; s.rdi = gpr[7]
            s.r8 = gpr[8]; s.r9 = gpr[9]; s.r10 = gpr[10]; s.r11 = gpr[11]
            s.r12 = gpr[12]; s.r13 = gpr[13]; s.r14 = gpr[14]; s.r15 = gpr[15]
            s.rip = rip
            s.rflags = rflags
            s.es = seg[0]; s.cs = seg[1]; s.ss = seg[2]; s.ds = seg[3]; s.fs = seg[4]; s.gs = seg[5]
            return s
        }
        set { load(newValue, keepingCaches: false) }
    }

    /// Whether `state` would equal `s` in every field outside RFLAGS bits `flagMask`, without
    /// building it (replay compares after each instruction and nearly always finds them equal).
    /// Segment registers and descriptor tables are compared whole.
    public func stateMatches(_ s: CPUState, flagMask: UInt64) -> Bool {
        withUnsafePointer(to: s) { stateMatches(at: $0, flagMask: flagMask) }
    }

    /// `stateMatches` with the state read in place (replay's states live in its record slots: a
    /// state passed by value from there was copied, 600 bytes, per record).
    public func stateMatches(at p: UnsafePointer<CPUState>, flagMask: UInt64) -> Bool {
        guard gpr[0] == p.pointee.rax, gpr[1] == p.pointee.rcx, gpr[2] == p.pointee.rdx, gpr[3] == p.pointee.rbx,
              gpr[4] == p.pointee.rsp, gpr[5] == p.pointee.rbp, gpr[6] == p.pointee.rsi, gpr[7] == p.pointee.rdi,
              gpr[8] == p.pointee.r8, gpr[9] == p.pointee.r9, gpr[10] == p.pointee.r10, gpr[11] == p.pointee.r11,
              gpr[12] == p.pointee.r12, gpr[13] == p.pointee.r13, gpr[14] == p.pointee.r14, gpr[15] == p.pointee.r15,
              rip == p.pointee.rip, rflags & ~flagMask == p.pointee.rflags & ~flagMask,
              seg[0] == p.pointee.es, seg[1] == p.pointee.cs, seg[2] == p.pointee.ss, seg[3] == p.pointee.ds,
              seg[4] == p.pointee.fs, seg[5] == p.pointee.gs
        else { return false }
        let same = sys.ldtr == p.pointee.ldtr && sys.tr == p.pointee.tr && sys.gdtr == p.pointee.gdtr && sys.idtr == p.pointee.idtr
            && sys.cr0 == p.pointee.cr0 && sys.cr2 == p.pointee.cr2 && sys.cr3 == p.pointee.cr3 && sys.cr4 == p.pointee.cr4
            && sys.cr8 == p.pointee.cr8 && sys.efer == p.pointee.efer && sys.cpl == p.pointee.cpl && sys.dr6 == p.pointee.dr6
            && sys.dr7 == p.pointee.dr7 && sys.star == p.pointee.star && sys.lstar == p.pointee.lstar && sys.cstar == p.pointee.cstar
            && sys.sfmask == p.pointee.sfmask && sys.kernelGSBase == p.pointee.kernelGSBase && sys.sysenterCS == p.pointee.sysenterCS
            && sys.sysenterESP == p.pointee.sysenterESP && sys.sysenterEIP == p.pointee.sysenterEIP && sys.pat == p.pointee.pat
            && sys.xcr0 == p.pointee.xcr0
        if same { matchedState = UnsafeRawPointer(p) }
        return same
    }

    /// RIP (`state.rip` without building the state).
    public var instructionPointer: UInt64 { rip }

    /// Sets the state. With `keepingCaches`, decoded instructions and cached translations survive
    /// when CR0, CR3, CR4 and EFER are unchanged: for a caller that sets a new state per
    /// instruction and knows guest memory did not change behind the executor's back since the
    /// last flush (replay). Setting `state` always flushes.
    public func load(_ s: CPUState, keepingCaches: Bool) {
        withUnsafePointer(to: s) { load(from: $0, keepingCaches: keepingCaches) }
    }

    /// `load` with the state read in place (no copy of it on the way in).
    /// `matched`: the caller knows `p` holds, unchanged, the state `stateMatches(at: p)` last
    /// compared: when that comparison found this executor equal and nothing ran since, only
    /// RFLAGS is loaded (its undefined bits may differ); the rest already is `p`.
    public func load(from p: UnsafePointer<CPUState>, keepingCaches: Bool, matched: Bool) {
        if matched && matchedState == UnsafeRawPointer(p) {
            matchedState = nil
            rflags = p.pointee.rflags
            singleStepPending = false
            fetchValid = false
            // Paging registers are equal: the caches go only if memory changed behind them.
            if !keepingCaches {
                tlb.flushAll()
                cache.flushAll()
            }
            return
        }
        load(from: p, keepingCaches: keepingCaches)
    }

    public func load(from p: UnsafePointer<CPUState>, keepingCaches: Bool) {
        matchedState = nil
        let samePaging = sys.cr0 == p.pointee.cr0 && sys.cr3 == p.pointee.cr3 && sys.cr4 == p.pointee.cr4 && sys.efer == p.pointee.efer
        // One copy of the plain-data state into `sys` (an assignment made two: via a temporary).
        withUnsafeMutablePointer(to: &sys) { UnsafeMutableRawPointer($0).copyMemory(from: p, byteCount: MemoryLayout<CPUState>.size) }
        singleStepPending = false
        gpr[0] = sys.rax; gpr[1] = sys.rcx; gpr[2] = sys.rdx; gpr[3] = sys.rbx
        gpr[4] = sys.rsp; gpr[5] = sys.rbp; gpr[6] = sys.rsi; gpr[7] = sys.rdi
        gpr[8] = sys.r8; gpr[9] = sys.r9; gpr[10] = sys.r10; gpr[11] = sys.r11
        gpr[12] = sys.r12; gpr[13] = sys.r13; gpr[14] = sys.r14; gpr[15] = sys.r15
        rip = sys.rip
        rflags = sys.rflags
        seg[0] = sys.es; seg[1] = sys.cs; seg[2] = sys.ss
        seg[3] = sys.ds; seg[4] = sys.fs; seg[5] = sys.gs
        updateMode()
        fetchValid = false
        if !(keepingCaches && samePaging) {
            tlb.flushAll()
            cache.flushAll()
        }
    }

    /// Drops decoded instructions and cached translations. Call it when guest memory (code or
    /// page tables) changed behind the executor's back, e.g. after the guest ran natively;
    /// writes the executor makes itself keep the caches coherent. Setting `state` does it too.
    public func flushCaches() {
        fetchValid = false
        tlb.flushAll()
        cache.flushAll()
    }

    /// XMM/YMM register `n` as four little-endian quadwords.
    public func vectorRegister(_ n: Int) -> (UInt64, UInt64, UInt64, UInt64) {
        let p = vreg + (n & 15) * 4
        return (p[0], p[1], p[2], p[3])
    }
    public func setVectorRegister(_ n: Int, _ v: (UInt64, UInt64, UInt64, UInt64)) {
        let p = vreg + (n & 15) * 4
        p[0] = v.0; p[1] = v.1; p[2] = v.2; p[3] = v.3
    }

    public var currentMode: CPUMode { mode }
    public var cpl: UInt8 { sys.cpl }

    @inline(__always) func updateMode() {
        fetchValid = false
        let cs = seg[1]
        if sys.cr0 & CR0.pe == 0 { mode = .real }
        else if sys.efer & EFER.lma != 0 && cs.long { mode = .long64 }
        else if flagsRest & RFLAGS.vm != 0 && sys.efer & EFER.lma == 0 { mode = .virtual8086 }
        else if sys.efer & EFER.lma != 0 { mode = cs.defaultBig ? .compat32 : .compat16 }
        else { mode = cs.defaultBig ? .protected32 : .protected16 }
        if mode == .real { sys.cpl = 0 } else if mode == .virtual8086 { sys.cpl = 3 }
    }

    /// Called when paging-relevant state changes (CR0, CR3, CR4, EFER): drop cached translations.
    func pagingChanged() {
        fetchValid = false
        tlb.flushAll()
        cache.flushAll()
    }

    // MARK: stepping

    /// Executes one instruction.
    public func step() -> StepResult {
        matchedState = nil
        insnStart = rip
        singleStepTrapped = false
        let trapFlag = flagsRest & RFLAGS.tf != 0
        let r = executeOne()
        switch r {
        case .ok:
            retired &+= 1
            if (trapFlag || singleStepPending) && !noSingleStepTrap {
                if stackSegmentShadow {
                    singleStepPending = true
                    return r
                }
                return singleStepTrap()
            }
            singleStepPending = false
            return r
        case .halted, .hypercall:
            retired &+= 1
            singleStepPending = false
            return r
        case .exception(let e, _):
            if deliverExceptions {
                return deliver(exception: e)
            }
            return r
        default:
            return r
        }
    }

    /// The single-step trap after an instruction that began with RFLAGS.TF set (APM vol. 2,
    /// 13.1.4): DR6.BS set, #DB with the return address after the instruction, delivered through
    /// the IDT when `deliverExceptions` is set; otherwise returned with the state after the
    /// instruction (a trap, unlike a fault).
    func singleStepTrap() -> StepResult {
        singleStepPending = false
        singleStepTrapped = true
        sys.dr6 |= 0x4000
        let db = CPUException(vector: CPUException.db)
        if !deliverExceptions { return .exception(db, delivered: false) }
        insnStart = rip
        return deliver(exception: db)
    }

    /// Runs until `count` instructions retired or something other than `.ok` happens.
    public func run(count: Int) -> (executed: Int, last: StepResult) {
        matchedState = nil
        var n = 0
        while n < count {
            n += runFast(count - n)
            if n >= count { break }
            let r = step()
            if r != .ok {
                if case .exception(_, true) = r { n += 1; continue }
                return (n + ((r == .halted || r == .hypercall || singleStepTrapped) ? 1 : 0), r)
            }
            n += 1
        }
        return (n, .ok)
    }
}

/// One port or MSR access in `X86Executor.accessLog`.
public enum AccessEvent: Equatable, Sendable {
    case port(PortAccess)
    case msrRead(index: UInt32, value: UInt64)
    case msrWrite(index: UInt32, value: UInt64)
}

/// CPUID-gated features the executor checks before running an instruction.
public struct Features: OptionSet, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let bmi1 = Features(rawValue: 1 << 0)
    public static let bmi2 = Features(rawValue: 1 << 1)
    public static let lzcnt = Features(rawValue: 1 << 2)
    public static let popcnt = Features(rawValue: 1 << 3)
    public static let movbe = Features(rawValue: 1 << 4)
    public static let cmpxchg16b = Features(rawValue: 1 << 5)
    public static let rdtscp = Features(rawValue: 1 << 6)
    public static let avx = Features(rawValue: 1 << 7)
    public static let fsgsbase = Features(rawValue: 1 << 8)
    public static let all = Features(rawValue: 0xFFFF_FFFF)

    /// The features a CPUID source reports (leaves 1, 7 and 0x80000001); nil when it cannot answer.
    public static func from(_ c: CPUIDSource) -> Features? {
        guard let l1 = c.cpuid(leaf: 1, subleaf: 0) else { return nil }
        var f: Features = []
        if l1.ecx & (1 << 23) != 0 { f.insert(.popcnt) }
        if l1.ecx & (1 << 22) != 0 { f.insert(.movbe) }
        if l1.ecx & (1 << 13) != 0 { f.insert(.cmpxchg16b) }
        if l1.ecx & (1 << 28) != 0 { f.insert(.avx) }
        if let l7 = c.cpuid(leaf: 7, subleaf: 0) {
            if l7.ebx & (1 << 3) != 0 { f.insert(.bmi1) }
            if l7.ebx & (1 << 8) != 0 { f.insert(.bmi2) }
            if l7.ebx & 1 != 0 { f.insert(.fsgsbase) }
        }
        if let e1 = c.cpuid(leaf: 0x8000_0001, subleaf: 0) {
            if e1.ecx & (1 << 5) != 0 { f.insert(.lzcnt) }
            if e1.edx & (1 << 27) != 0 { f.insert(.rdtscp) }
        }
        return f
    }
}

/// The decoder entry point the executor uses.
@inline(__always)
func decodeInstruction(_ bytes: UnsafeRawBufferPointer, mode: DecoderMode, vendor: CPUVendor = .amd) -> DecodeResult {
    decode(bytes: bytes, mode: mode, vendor: vendor)
}
