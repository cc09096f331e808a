import KVM

/// What CPUID tells the guest (DESIGN.md, "Ports and profiles every machine has").
public enum CPUIDProfile: String, Sendable, Codable, CaseIterable {
    /// KVM's supported set (KVM_GET_SUPPORTED_CPUID) as it is.
    case host
    /// The host set without AVX, AVX2, FMA, F16C, AVX-512, AVX-VNNI and AMX, and without
    /// their XSAVE state components: keeps guest kernels from vector code that KVM's
    /// instruction emulator cannot run at CPL0 on an emulating backend.
    case noavx

    /// `entries` narrowed to this profile, with `apicID` in leaves 1, 0xB and 0x1F.
    public func apply(_ entries: [CPUIDEntry], apicID: UInt32) -> [CPUIDEntry] {
        entries.map { e in
            var e = e
            switch e.function {
            case 1: e.ebx = (e.ebx & 0x00FF_FFFF) | (apicID << 24)
            case 0xB, 0x1F: e.edx = apicID
            case KVMParavirt.featuresLeaf: e.eax &= ~KVMParavirt.hiddenFeatures
            default: break
            }
            guard self == .noavx else { return e }
            switch (e.function, e.index) {
            case (1, _):
                e.ecx &= ~(UInt32(1) << 28 | 1 << 12 | 1 << 29)  // AVX, FMA, F16C
            case (7, 0):
                e.ebx &= ~(UInt32(1) << 5 | 1 << 16 | 1 << 17 | 1 << 21 | 1 << 26 | 1 << 27 | 1 << 28 | 1 << 30 | 1 << 31)
                e.ecx &= ~(UInt32(1) << 1 | 1 << 6 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12 | 1 << 14)
                e.edx &= ~(UInt32(1) << 2 | 1 << 3 | 1 << 8 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 25)
            case (7, 1):
                e.eax &= ~(UInt32(1) << 4 | 1 << 5)  // AVX-VNNI, AVX512_BF16
            case (0xD, 0):
                // XCR0 may hold only x87, SSE and the non-vector components (MPX, PKRU).
                e.eax &= ~(UInt32(1) << 2 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 17 | 1 << 18)
            case (0xD, 2), (0xD, 5), (0xD, 6), (0xD, 7), (0xD, 17), (0xD, 18):
                e.eax = 0; e.ebx = 0; e.ecx = 0; e.edx = 0
            default:
                break
            }
            return e
        }
    }
}

/// KVM's paravirtual CPUID leaf (KVM_CPUID_FEATURES) and what ExitScope keeps from guests.
public enum KVMParavirt {
    public static let featuresLeaf: UInt32 = 0x4000_0001
    /// KVM_FEATURE_PV_TLB_FLUSH (bit 9). With it a guest skips the TLB-shootdown IPI to a vCPU
    /// KVM marked preempted and leaves the flush to KVM at that vCPU's next entry. This VMM
    /// keeps vCPUs out of the guest often (completions hold the others out), and on kvm_pvm
    /// that deferred flush left a stale translation: a Linux process read zeros for memory
    /// it had just written on the other vCPU (Samples/README.md). Without the feature the
    /// guest sends the IPI and flushes itself.
    public static let hiddenFeatures: UInt32 = 1 << 9
}
