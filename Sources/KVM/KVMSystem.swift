import CKVM
import Glibc

/// Capabilities ExitScope asks about (KVM_CHECK_EXTENSION numbers from <linux/kvm.h>).
public struct KVMCapability: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: Int32
    public var name: String
    public init(rawValue: Int32) { self.rawValue = rawValue; name = "KVM_CAP \(rawValue)" }
    public init(_ v: Int32, _ name: String) { rawValue = v; self.name = name }
    public var description: String { name }

    public static let irqchip = KVMCapability(Int32(KVM_CAP_IRQCHIP), "KVM_CAP_IRQCHIP")
    public static let hlt = KVMCapability(Int32(KVM_CAP_HLT), "KVM_CAP_HLT")
    public static let userMemory = KVMCapability(Int32(KVM_CAP_USER_MEMORY), "KVM_CAP_USER_MEMORY")
    public static let setTSSAddr = KVMCapability(Int32(KVM_CAP_SET_TSS_ADDR), "KVM_CAP_SET_TSS_ADDR")
    public static let extCPUID = KVMCapability(Int32(KVM_CAP_EXT_CPUID), "KVM_CAP_EXT_CPUID")
    public static let pit2 = KVMCapability(Int32(KVM_CAP_PIT2), "KVM_CAP_PIT2")
    public static let nrVCPUs = KVMCapability(Int32(KVM_CAP_NR_VCPUS), "KVM_CAP_NR_VCPUS")
    public static let maxVCPUs = KVMCapability(Int32(KVM_CAP_MAX_VCPUS), "KVM_CAP_MAX_VCPUS")
    public static let nrMemslots = KVMCapability(Int32(KVM_CAP_NR_MEMSLOTS), "KVM_CAP_NR_MEMSLOTS")
    public static let syncRegs = KVMCapability(Int32(KVM_CAP_SYNC_REGS), "KVM_CAP_SYNC_REGS")
    public static let immediateExit = KVMCapability(Int32(KVM_CAP_IMMEDIATE_EXIT), "KVM_CAP_IMMEDIATE_EXIT")
    public static let userSpaceMSR = KVMCapability(Int32(KVM_CAP_X86_USER_SPACE_MSR), "KVM_CAP_X86_USER_SPACE_MSR")
    public static let msrFilter = KVMCapability(Int32(KVM_CAP_X86_MSR_FILTER), "KVM_CAP_X86_MSR_FILTER")
    public static let binaryStatsFD = KVMCapability(Int32(KVM_CAP_BINARY_STATS_FD), "KVM_CAP_BINARY_STATS_FD")
    public static let setGuestDebug = KVMCapability(Int32(KVM_CAP_SET_GUEST_DEBUG), "KVM_CAP_SET_GUEST_DEBUG")
    public static let debugRegs = KVMCapability(Int32(KVM_CAP_DEBUGREGS), "KVM_CAP_DEBUGREGS")
    public static let xcrs = KVMCapability(Int32(KVM_CAP_XCRS), "KVM_CAP_XCRS")
    public static let vcpuEvents = KVMCapability(Int32(KVM_CAP_VCPU_EVENTS), "KVM_CAP_VCPU_EVENTS")
    public static let mpState = KVMCapability(Int32(KVM_CAP_MP_STATE), "KVM_CAP_MP_STATE")
    public static let internalErrorData = KVMCapability(Int32(KVM_CAP_INTERNAL_ERROR_DATA), "KVM_CAP_INTERNAL_ERROR_DATA")
    public static let tscControl = KVMCapability(Int32(KVM_CAP_TSC_CONTROL), "KVM_CAP_TSC_CONTROL")
    public static let getTSCKHz = KVMCapability(Int32(KVM_CAP_GET_TSC_KHZ), "KVM_CAP_GET_TSC_KHZ")
    /// Every emulation failure exits to the VMM with the instruction bytes (issue 9's completion).
    public static let exitOnEmulationFailure = KVMCapability(Int32(KVM_CAP_EXIT_ON_EMULATION_FAILURE),
                                                             "KVM_CAP_EXIT_ON_EMULATION_FAILURE")

    /// The set a run's header reports.
    public static let reported: [KVMCapability] = [
        .irqchip, .hlt, .userMemory, .setTSSAddr, .extCPUID, .pit2, .nrVCPUs, .maxVCPUs, .nrMemslots,
        .syncRegs, .immediateExit, .userSpaceMSR, .msrFilter, .binaryStatsFD, .setGuestDebug,
        .debugRegs, .xcrs, .vcpuEvents, .mpState, .internalErrorData, .tscControl, .getTSCKHz,
        .exitOnEmulationFailure,
    ]
}

/// One CPUID leaf as KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2 carry it.
public struct CPUIDEntry: Equatable, Hashable, Sendable {
    public var function: UInt32, index: UInt32, flags: UInt32
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    public init(function: UInt32, index: UInt32 = 0, flags: UInt32 = 0,
                eax: UInt32 = 0, ebx: UInt32 = 0, ecx: UInt32 = 0, edx: UInt32 = 0) {
        self.function = function; self.index = index; self.flags = flags
        self.eax = eax; self.ebx = ebx; self.ecx = ecx; self.edx = edx
    }
    init(_ e: kvm_cpuid_entry2) {
        self.init(function: e.function, index: e.index, flags: e.flags, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
    }
    var raw: kvm_cpuid_entry2 {
        var e = kvm_cpuid_entry2()
        e.function = function; e.index = index; e.flags = flags
        e.eax = eax; e.ebx = ebx; e.ecx = ecx; e.edx = edx
        return e
    }
}

/// The KVM subsystem (/dev/kvm): API version, capabilities, supported CPUID, VM creation.
public final class KVMSystem: @unchecked Sendable {
    let handle: OwnedFD
    public var fd: Int32 { handle.fd }

    /// Opens /dev/kvm (or `path`) and checks the API version is the stable 12.
    public init(path: String = "/dev/kvm") throws(KVMError) {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { throw KVMError.open(path: path, errno: .current) }
        handle = OwnedFD(fd)
        let version = try apiVersion()
        if version != KVM_API_VERSION {
            throw KVMError.invalidArgument("KVM API version \(version), expected \(KVM_API_VERSION)")
        }
    }

    /// Wraps an existing descriptor (tests use an invalid one to reach error paths).
    public init(fd: Int32) { handle = OwnedFD(fd) }

    /// True when /dev/kvm can be opened by this process.
    public static var isAvailable: Bool {
        let fd = open("/dev/kvm", O_RDWR | O_CLOEXEC)
        if fd < 0 { return false }
        close(fd)
        return true
    }

    public func apiVersion() throws(KVMError) -> Int32 {
        try kvmIoctl(fd, CKVM_GET_API_VERSION, "KVM_GET_API_VERSION")
    }

    /// KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific positive value.
    public func checkExtension(_ cap: KVMCapability) throws(KVMError) -> Int32 {
        try kvmIoctl(fd, CKVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", value: UInt(cap.rawValue))
    }

    public func has(_ cap: KVMCapability) -> Bool { ((try? checkExtension(cap)) ?? 0) > 0 }

    /// Size of the region to mmap from a vCPU fd (kvm_run plus the PIO data page and more).
    public func vcpuMmapSize() throws(KVMError) -> Int {
        Int(try kvmIoctl(fd, CKVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE"))
    }

    /// KVM_X86_GET_MCE_CAP_SUPPORTED: the IA32_MCG_CAP bits and bank count KVM can emulate.
    public func mceCapSupported() throws(KVMError) -> UInt64 {
        var v: UInt64 = 0
        _ = try kvmIoctl(fd, CKVM_X86_GET_MCE_CAP_SUPPORTED, "KVM_X86_GET_MCE_CAP_SUPPORTED", &v)
        return v
    }

    /// KVM_GET_SUPPORTED_CPUID: what KVM can present to a guest on this host.
    public func supportedCPUID() throws(KVMError) -> [CPUIDEntry] {
        var n: UInt32 = 64
        while true {
            guard let c = ckvm_cpuid2_alloc(n) else { throw KVMError.mmap(what: "kvm_cpuid2", errno: .ENOMEM) }
            defer { free(c) }
            var err: Int32 = 0
            if ckvm_ioctl_ptr(fd, CKVM_GET_SUPPORTED_CPUID, c, &err) < 0 {
                if err == Errno.E2BIG.rawValue && n < 4096 { n *= 2; continue }
                throw KVMError.ioctl(name: "KVM_GET_SUPPORTED_CPUID", errno: Errno(err))
            }
            let entries = ckvm_cpuid2_entries(c)!
            return (0..<Int(c.pointee.nent)).map { CPUIDEntry(entries[$0]) }
        }
    }

    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM_GET_MSRS/KVM_SET_MSRS accept.
    public func msrIndexList() throws(KVMError) -> [UInt32] {
        var n: UInt32 = 256
        while true {
            guard let l = ckvm_msr_list_alloc(n) else { throw KVMError.mmap(what: "kvm_msr_list", errno: .ENOMEM) }
            defer { free(l) }
            var err: Int32 = 0
            if ckvm_ioctl_ptr(fd, CKVM_GET_MSR_INDEX_LIST, l, &err) < 0 {
                if err == Errno.E2BIG.rawValue && n < 65536 { n = max(n * 2, l.pointee.nmsrs); continue }
                throw KVMError.ioctl(name: "KVM_GET_MSR_INDEX_LIST", errno: Errno(err))
            }
            let p = ckvm_msr_list_indices(l)!
            return (0..<Int(l.pointee.nmsrs)).map { p[$0] }
        }
    }

    /// KVM_CREATE_VM (machine type 0).
    public func createVM() throws(KVMError) -> VirtualMachine {
        let vmfd = try kvmIoctl(fd, CKVM_CREATE_VM, "KVM_CREATE_VM", value: 0)
        let size = try vcpuMmapSize()
        return VirtualMachine(fd: vmfd, system: self, vcpuMmapSize: size)
    }

    /// Which KVM module backs /dev/kvm (kvm_intel, kvm_amd, kvm_pvm, ...): the first of those
    /// present in /sys/module (built-in or loaded), else "kvm" or "unknown".
    public static func backendModule() -> String {
        for name in ["kvm_pvm", "kvm_intel", "kvm_amd"] where access("/sys/module/\(name)", F_OK) == 0 {
            return name
        }
        return access("/sys/module/kvm", F_OK) == 0 ? "kvm" : "unknown"
    }
}
