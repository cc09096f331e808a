import Trace
import X86

/// KVM_EXIT_* names from <linux/kvm.h>, for the column beside the SVM exit code. Kept here
/// because Report must not depend on the KVM module (DESIGN.md's table).
public enum KVMExitReasonName {
    static let names = [
        "UNKNOWN", "EXCEPTION", "IO", "HYPERCALL", "DEBUG", "HLT", "MMIO", "IRQ_WINDOW_OPEN",
        "SHUTDOWN", "FAIL_ENTRY", "INTR", "SET_TPR", "TPR_ACCESS", "S390_SIEIC", "S390_RESET",
        "DCR", "NMI", "INTERNAL_ERROR", "OSI", "PAPR_HCALL", "S390_UCONTROL", "WATCHDOG",
        "S390_TSCH", "EPR", "SYSTEM_EVENT", "S390_STSI", "IOAPIC_EOI", "HYPERV", "ARM_NISV",
        "X86_RDMSR", "X86_WRMSR", "DIRTY_RING_FULL", "AP_RESET_HOLD", "X86_BUS_LOCK", "XEN",
        "RISCV_SBI", "RISCV_CSR", "NOTIFY", "LOONGARCH_IOCSR", "MEMORY_FAULT", "TDX",
    ]

    /// "KVM_EXIT_IO", or "KVM_EXIT_<n>" for a number this table does not know.
    public static func name(_ reason: UInt32) -> String {
        Int(reason) < names.count ? "KVM_EXIT_" + names[Int(reason)] : "KVM_EXIT_\(reason)"
    }
}

/// The exit reason a report groups by: the SVM exit code's APM name, or the KVM exit reason's
/// name when KVM reported something AMD-V has no code for.
public func reasonName(_ r: TraceRecord) -> String {
    r.exitCode == .none ? KVMExitReasonName.name(r.kvmExitReason) : r.exitCode.name
}

func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

/// Code size of the guest at this state: 16, 32 or 64 (for the decoder and for display).
func codeBits(_ s: CPUState) -> Int {
    if s.cr0 & CR0.pe == 0 { return 16 }
    if s.efer & EFER.lma != 0 && s.cs.long { return 64 }
    return s.cs.defaultBig ? 32 : 16
}
