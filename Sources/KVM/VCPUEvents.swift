import CKVM

/// Pending and injected events of a vCPU (kvm_vcpu_events), as a plain value: what an
/// "event" record needs (an exception or interrupt being delivered, NMI state, the
/// interrupt shadow).
public struct VCPUEvents: Equatable, Sendable {
    public var exceptionInjected: Bool
    public var exceptionPending: Bool
    public var exceptionVector: UInt8
    public var exceptionHasErrorCode: Bool
    public var exceptionErrorCode: UInt32
    public var exceptionPayload: UInt64?
    public var interruptInjected: Bool
    public var interruptVector: UInt8
    public var interruptSoft: Bool
    /// STI / MOV SS interrupt shadow (KVM_X86_SHADOW_INT_*).
    public var interruptShadow: UInt8
    public var nmiInjected: Bool
    public var nmiPending: Bool
    public var nmiMasked: Bool
    public var sipiVector: UInt32
    public var tripleFaultPending: Bool

    public init(kvm e: kvm_vcpu_events) {
        exceptionInjected = e.exception.injected != 0
        exceptionPending = e.exception.pending != 0
        exceptionVector = e.exception.nr
        exceptionHasErrorCode = e.exception.has_error_code != 0
        exceptionErrorCode = e.exception.error_code
        exceptionPayload = e.exception_has_payload != 0 ? e.exception_payload : nil
        interruptInjected = e.interrupt.injected != 0
        interruptVector = e.interrupt.nr
        interruptSoft = e.interrupt.soft != 0
        interruptShadow = e.interrupt.shadow
        nmiInjected = e.nmi.injected != 0
        nmiPending = e.nmi.pending != 0
        nmiMasked = e.nmi.masked != 0
        sipiVector = e.sipi_vector
        tripleFaultPending = e.triple_fault.pending != 0
    }
}
