import CKVM

/// Direction of a port access as KVM_EXIT_IO reports it.
public enum IODirection: UInt8, Sendable, Equatable {
    case `in` = 0
    case out = 1
}

/// KVM_EXIT_INTERNAL_ERROR's payload. A fixed inline array keeps `VMExit` a plain value
/// (no reference counting on the exit path).
public struct InternalErrorInfo: Equatable, Sendable {
    public var suberror: UInt32
    public var ndata: UInt32
    public var storage: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64,
                         UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

    public init(suberror: UInt32, data: [UInt64]) {
        self.suberror = suberror
        ndata = UInt32(min(data.count, 16))
        storage = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &storage) { raw in
            let p = raw.bindMemory(to: UInt64.self)
            for (i, v) in data.prefix(16).enumerated() { p[i] = v }
        }
    }

    /// The data words KVM supplied (at most 16).
    public var data: [UInt64] {
        withUnsafeBytes(of: storage) { Array($0.bindMemory(to: UInt64.self).prefix(Int(min(ndata, 16)))) }
    }

    public static let emulation: UInt32 = UInt32(KVM_INTERNAL_ERROR_EMULATION)
    public static let simultaneousException: UInt32 = UInt32(KVM_INTERNAL_ERROR_SIMUL_EX)
    public static let deliveryEvent: UInt32 = UInt32(KVM_INTERNAL_ERROR_DELIVERY_EV)
    public static let unexpectedExitReason: UInt32 = UInt32(KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON)

    public var suberrorName: String {
        switch suberror {
        case Self.emulation: return "EMULATION"
        case Self.simultaneousException: return "SIMUL_EX"
        case Self.deliveryEvent: return "DELIVERY_EV"
        case Self.unexpectedExitReason: return "UNEXPECTED_EXIT_REASON"
        default: return "suberror \(suberror)"
        }
    }

    /// For an emulation failure with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES: the
    /// instruction bytes KVM could not emulate (the emulation_failure overlay of `data`).
    public var instructionBytes: [UInt8]? {
        let d = data
        guard suberror == Self.emulation, d.count >= 3, d[0] & 1 != 0 else { return nil }
        var bytes: [UInt8] = []
        withUnsafeBytes(of: storage) { raw in
            // flags (data[0]), then insn_size and 15 bytes (data[1...2])
            let size = Int(min(raw[8], 15))
            bytes = Array(raw[9..<(9 + size)])
        }
        return bytes
    }

    public static func == (a: Self, b: Self) -> Bool { a.suberror == b.suberror && a.data == b.data }
}

/// KVM_EXIT_SYSTEM_EVENT's payload.
public struct SystemEventInfo: Equatable, Sendable {
    public var type: UInt32
    public var flags: UInt64
    public init(type: UInt32, flags: UInt64 = 0) { self.type = type; self.flags = flags }
    public var typeName: String {
        switch type {
        case UInt32(KVM_SYSTEM_EVENT_SHUTDOWN): return "SHUTDOWN"
        case UInt32(KVM_SYSTEM_EVENT_RESET): return "RESET"
        case UInt32(KVM_SYSTEM_EVENT_CRASH): return "CRASH"
        case UInt32(KVM_SYSTEM_EVENT_WAKEUP): return "WAKEUP"
        case UInt32(KVM_SYSTEM_EVENT_SUSPEND): return "SUSPEND"
        default: return "type \(type)"
        }
    }
}

/// KVM_EXIT_IO's fields, read from kvm_run without building a `VMExit`: matching a case of that
/// enum copies all of it (137 bytes) first, which an observer's per-exit path notices.
public struct IOExitInfo: Sendable, Equatable {
    public var port: UInt16
    public var size: UInt8
    public var direction: IODirection
    public var count: UInt32
    /// Where the data is, from the start of kvm_run.
    public var dataOffset: UInt64

    /// The I/O exit described by a kvm_run page, or nil when the exit is another kind.
    @inlinable
    public init?(run r: UnsafePointer<kvm_run>) {
        guard Int32(ckvm_run_exit_reason(r)) == KVM_EXIT_IO else { return nil }
        port = ckvm_run_io_port(r); size = ckvm_run_io_size(r)
        direction = ckvm_run_io_direction(r) == 0 ? .in : .out
        count = ckvm_run_io_count(r); dataOffset = ckvm_run_io_data_offset(r)
    }
}

/// One VM exit, decoded from the kvm_run page: every x86 exit reason KVM can return, and
/// `unknown` with its number for the rest.
public enum VMExit: Equatable, Sendable {
    /// KVM_EXIT_IO: `count` accesses of `size` bytes; data at `dataOffset` from the start of kvm_run.
    case io(port: UInt16, size: UInt8, direction: IODirection, count: UInt32, dataOffset: UInt64)
    /// KVM_EXIT_MMIO: `data` holds the written bytes (little-endian) for a write.
    case mmio(address: UInt64, length: UInt32, isWrite: Bool, data: UInt64)
    case hlt
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    case shutdown
    case failEntry(hardwareReason: UInt64, cpu: UInt32)
    case internalError(InternalErrorInfo)
    case debug(exception: UInt32, pc: UInt64, dr6: UInt64, dr7: UInt64)
    /// KVM_EXIT_X86_RDMSR: the VMM answers with data (or error) before re-entry.
    case rdmsr(index: UInt32, reason: UInt32)
    case wrmsr(index: UInt32, reason: UInt32, data: UInt64)
    case systemEvent(SystemEventInfo)
    case irqWindowOpen
    case hypercall(nr: UInt64, args: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64), longMode: Bool)
    case exception(vector: UInt32, errorCode: UInt32)
    /// KVM_EXIT_INTR: KVM_RUN interrupted by a signal (rarely reported as an exit reason).
    case intr
    case tprAccess(rip: UInt64, isWrite: Bool)
    case nmi
    case unknown(reason: UInt32, hardwareReason: UInt64)

    /// Decodes the exit described by a kvm_run page.
    @inline(__always)
    public init(run r: UnsafePointer<kvm_run>) {
        let reason = ckvm_run_exit_reason(r)
        switch Int32(reason) {
        case KVM_EXIT_IO:
            self = .io(port: ckvm_run_io_port(r), size: ckvm_run_io_size(r),
                       direction: ckvm_run_io_direction(r) == 0 ? .in : .out,
                       count: ckvm_run_io_count(r), dataOffset: ckvm_run_io_data_offset(r))
        case KVM_EXIT_MMIO:
            let len = ckvm_run_mmio_len(r)
            var data: UInt64 = 0
            if let p = ckvm_run_mmio_data(UnsafeMutablePointer(mutating: r)) {
                data = UnsafeRawPointer(p).loadUnaligned(as: UInt64.self)
            }
            if len < 8 { data &= (UInt64(1) << (UInt64(len) * 8)) &- 1 }
            self = .mmio(address: ckvm_run_mmio_phys_addr(r), length: len,
                         isWrite: ckvm_run_mmio_is_write(r) != 0, data: data)
        case KVM_EXIT_HLT: self = .hlt
        case KVM_EXIT_SHUTDOWN: self = .shutdown
        case KVM_EXIT_FAIL_ENTRY:
            self = .failEntry(hardwareReason: ckvm_run_fail_entry_reason(r), cpu: ckvm_run_fail_entry_cpu(r))
        case KVM_EXIT_INTERNAL_ERROR:
            let n = min(ckvm_run_internal_ndata(r), 16)
            self = .internalError(InternalErrorInfo(suberror: ckvm_run_internal_suberror(r),
                                                    data: (0..<n).map { ckvm_run_internal_data(r, $0) }))
        case KVM_EXIT_DEBUG:
            self = .debug(exception: ckvm_run_debug_exception(r), pc: ckvm_run_debug_pc(r),
                          dr6: ckvm_run_debug_dr6(r), dr7: ckvm_run_debug_dr7(r))
        case KVM_EXIT_X86_RDMSR:
            self = .rdmsr(index: ckvm_run_msr_index(r), reason: ckvm_run_msr_reason(r))
        case KVM_EXIT_X86_WRMSR:
            self = .wrmsr(index: ckvm_run_msr_index(r), reason: ckvm_run_msr_reason(r), data: ckvm_run_msr_data(r))
        case KVM_EXIT_SYSTEM_EVENT:
            self = .systemEvent(SystemEventInfo(type: ckvm_run_system_event_type(r),
                                                flags: ckvm_run_system_event_data(r, 0)))
        case KVM_EXIT_IRQ_WINDOW_OPEN: self = .irqWindowOpen
        case KVM_EXIT_HYPERCALL:
            self = .hypercall(nr: ckvm_run_hypercall_nr(r),
                              args: (ckvm_run_hypercall_arg(r, 0), ckvm_run_hypercall_arg(r, 1),
                                     ckvm_run_hypercall_arg(r, 2), ckvm_run_hypercall_arg(r, 3),
                                     ckvm_run_hypercall_arg(r, 4), ckvm_run_hypercall_arg(r, 5)),
                              longMode: ckvm_run_hypercall_longmode(r) != 0)
        case KVM_EXIT_EXCEPTION:
            self = .exception(vector: ckvm_run_ex_exception(r), errorCode: ckvm_run_ex_error_code(r))
        case KVM_EXIT_INTR: self = .intr
        case KVM_EXIT_TPR_ACCESS:
            self = .tprAccess(rip: ckvm_run_tpr_access_rip(r), isWrite: ckvm_run_tpr_access_is_write(r) != 0)
        case KVM_EXIT_NMI: self = .nmi
        default: self = .unknown(reason: reason, hardwareReason: ckvm_run_hw_exit_reason(r))
        }
    }

    /// The KVM_EXIT_* number this exit came from.
    /// KVM_EXIT_IO's number, for code that knows the exit is `.io` (no switch, no copy).
    public static let ioReason = UInt32(KVM_EXIT_IO)

    @inline(__always)
    public var reason: UInt32 {
        switch self {
        case .io: return UInt32(KVM_EXIT_IO)
        case .mmio: return UInt32(KVM_EXIT_MMIO)
        case .hlt: return UInt32(KVM_EXIT_HLT)
        case .shutdown: return UInt32(KVM_EXIT_SHUTDOWN)
        case .failEntry: return UInt32(KVM_EXIT_FAIL_ENTRY)
        case .internalError: return UInt32(KVM_EXIT_INTERNAL_ERROR)
        case .debug: return UInt32(KVM_EXIT_DEBUG)
        case .rdmsr: return UInt32(KVM_EXIT_X86_RDMSR)
        case .wrmsr: return UInt32(KVM_EXIT_X86_WRMSR)
        case .systemEvent: return UInt32(KVM_EXIT_SYSTEM_EVENT)
        case .irqWindowOpen: return UInt32(KVM_EXIT_IRQ_WINDOW_OPEN)
        case .hypercall: return UInt32(KVM_EXIT_HYPERCALL)
        case .exception: return UInt32(KVM_EXIT_EXCEPTION)
        case .intr: return UInt32(KVM_EXIT_INTR)
        case .tprAccess: return UInt32(KVM_EXIT_TPR_ACCESS)
        case .nmi: return UInt32(KVM_EXIT_NMI)
        case let .unknown(r, _): return r
        }
    }

    /// The KVM_EXIT_* name ("IO", "MMIO", "HLT", ...) for summaries and records.
    public var reasonName: String { VMExit.name(ofReason: reason) }

    public static func name(ofReason r: UInt32) -> String {
        r < UInt32(reasonNames.count) ? reasonNames[Int(r)] : "UNKNOWN_\(r)"
    }

    /// KVM_EXIT_* names indexed by number (<linux/kvm.h>).
    public static let reasonNames = [
        "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO", "IRQ_WINDOW_OPEN",
        "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS", "S390_SIEIC", "S390_RESET",
        "DCR", "NMI", "INTERNAL_ERROR", "OSI", "PAPR_HCALL", "S390_UCONTROL", "WATCHDOG",
        "S390_TSCH", "EPR", "SYSTEM_EVENT", "S390_STSI", "IOAPIC_EOI", "HYPERV", "ARM_NISV",
        "X86_RDMSR", "X86_WRMSR", "DIRTY_RING_FULL", "AP_RESET_HOLD", "X86_BUS_LOCK", "XEN",
        "RISCV_SBI", "RISCV_CSR", "NOTIFY",
    ]

    public static func == (a: VMExit, b: VMExit) -> Bool {
        switch (a, b) {
        case let (.io(p1, s1, d1, c1, o1), .io(p2, s2, d2, c2, o2)):
            return p1 == p2 && s1 == s2 && d1 == d2 && c1 == c2 && o1 == o2
        case let (.mmio(a1, l1, w1, d1), .mmio(a2, l2, w2, d2)):
            return a1 == a2 && l1 == l2 && w1 == w2 && d1 == d2
        case (.hlt, .hlt), (.shutdown, .shutdown), (.irqWindowOpen, .irqWindowOpen), (.intr, .intr), (.nmi, .nmi):
            return true
        case let (.failEntry(r1, c1), .failEntry(r2, c2)): return r1 == r2 && c1 == c2
        case let (.internalError(x), .internalError(y)): return x == y
        case let (.debug(e1, p1, s1, t1), .debug(e2, p2, s2, t2)): return e1 == e2 && p1 == p2 && s1 == s2 && t1 == t2
        case let (.rdmsr(i1, r1), .rdmsr(i2, r2)): return i1 == i2 && r1 == r2
        case let (.wrmsr(i1, r1, d1), .wrmsr(i2, r2, d2)): return i1 == i2 && r1 == r2 && d1 == d2
        case let (.systemEvent(x), .systemEvent(y)): return x == y
        case let (.hypercall(n1, a1, l1), .hypercall(n2, a2, l2)):
            return n1 == n2 && l1 == l2 && a1.0 == a2.0 && a1.1 == a2.1 && a1.2 == a2.2
                && a1.3 == a2.3 && a1.4 == a2.4 && a1.5 == a2.5
        case let (.exception(v1, e1), .exception(v2, e2)): return v1 == v2 && e1 == e2
        case let (.tprAccess(r1, w1), .tprAccess(r2, w2)): return r1 == r2 && w1 == w2
        case let (.unknown(r1, h1), .unknown(r2, h2)): return r1 == r2 && h1 == h2
        default: return false
        }
    }
}
