import CKVM
import Glibc

/// One MSR range routed to user space by the MSR filter.
public struct MSRFilterRange: Equatable, Sendable {
    public var base: UInt32
    public var count: UInt32
    public var reads: Bool
    public var writes: Bool
    public init(base: UInt32, count: UInt32 = 1, reads: Bool = false, writes: Bool = true) {
        self.base = base; self.count = count; self.reads = reads; self.writes = writes
    }
}

/// A KVM virtual machine: memory slots, the in-kernel irqchip and PIT, the MSR filter, vCPUs.
public final class VirtualMachine: @unchecked Sendable {
    let handle: OwnedFD
    public let system: KVMSystem
    public let vcpuMmapSize: Int
    public var fd: Int32 { handle.fd }
    /// Bitmaps handed to KVM_X86_SET_MSR_FILTER (KVM copies them; kept only until the call returns).

    init(fd: Int32, system: KVMSystem, vcpuMmapSize: Int) {
        handle = OwnedFD(fd)
        self.system = system
        self.vcpuMmapSize = vcpuMmapSize
    }

    /// Wraps an existing descriptor (tests use an invalid one to reach error paths).
    public init(fd: Int32, vcpuMmapSize: Int = 4096) {
        handle = OwnedFD(fd)
        system = KVMSystem(fd: -1)
        self.vcpuMmapSize = vcpuMmapSize
    }

    /// KVM_SET_USER_MEMORY_REGION: map `size` bytes of host memory at `host` into guest-physical
    /// `guestPhysical` in `slot`. Size 0 deletes the slot.
    public func setUserMemoryRegion(slot: UInt32, guestPhysical: UInt64, size: UInt64,
                                    host: UnsafeMutableRawPointer, readOnly: Bool = false) throws(KVMError) {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: readOnly ? UInt32(KVM_MEM_READONLY) : 0,
            guest_phys_addr: guestPhysical, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: host)))
        _ = try kvmIoctl(fd, CKVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &region)
    }

    /// KVM_SET_TSS_ADDR: three pages of guest-physical space KVM needs for real mode on VMX.
    public func setTSSAddress(_ gpa: UInt64) throws(KVMError) {
        _ = try kvmIoctl(fd, CKVM_SET_TSS_ADDR, "KVM_SET_TSS_ADDR", value: UInt(gpa))
    }

    /// KVM_SET_IDENTITY_MAP_ADDR: one page for VMX's real-mode identity map.
    public func setIdentityMapAddress(_ gpa: UInt64) throws(KVMError) {
        var a = gpa
        _ = try kvmIoctl(fd, CKVM_SET_IDENTITY_MAP_ADDR, "KVM_SET_IDENTITY_MAP_ADDR", &a)
    }

    /// KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and a LAPIC per vCPU (create before vCPUs).
    public func createIRQChip() throws(KVMError) {
        _ = try kvmIoctl(fd, CKVM_CREATE_IRQCHIP, "KVM_CREATE_IRQCHIP")
    }

    /// KVM_CREATE_PIT2: in-kernel i8254 PIT.
    public func createPIT2() throws(KVMError) {
        var cfg = kvm_pit_config()
        _ = try kvmIoctl(fd, CKVM_CREATE_PIT2, "KVM_CREATE_PIT2", &cfg)
    }

    /// KVM_IRQ_LINE: raise or lower an interrupt line of the in-kernel irqchip.
    public func setIRQLine(_ irq: UInt32, level: Bool) throws(KVMError) {
        var l = kvm_irq_level()
        l.irq = irq
        l.level = level ? 1 : 0
        _ = try kvmIoctl(fd, CKVM_IRQ_LINE, "KVM_IRQ_LINE", &l)
    }

    /// KVM_ENABLE_CAP on the VM.
    public func enableCapability(_ cap: KVMCapability, args: [UInt64] = []) throws(KVMError) {
        var c = kvm_enable_cap()
        c.cap = UInt32(cap.rawValue)
        withUnsafeMutableBytes(of: &c.args) { raw in
            let p = raw.bindMemory(to: UInt64.self)
            for (i, a) in args.prefix(4).enumerated() { p[i] = a }
        }
        _ = try kvmIoctl(fd, CKVM_ENABLE_CAP, "KVM_ENABLE_CAP(\(cap.name))", &c)
    }

    /// Routes accesses to `ranges` to user space as KVM_EXIT_X86_RDMSR/WRMSR: enables
    /// KVM_CAP_X86_USER_SPACE_MSR (filter reason, plus unknown MSRs when `unknownToUser`)
    /// and installs a default-allow filter whose bitmaps deny exactly the routed MSRs.
    public func routeMSRs(_ ranges: [MSRFilterRange], unknownToUser: Bool = false) throws(KVMError) {
        if ranges.count > Int(KVM_MSR_FILTER_MAX_RANGES) {
            throw KVMError.invalidArgument("at most \(KVM_MSR_FILTER_MAX_RANGES) MSR ranges can be routed")
        }
        var reasons = UInt64(KVM_MSR_EXIT_REASON_FILTER)
        if unknownToUser { reasons |= UInt64(KVM_MSR_EXIT_REASON_UNKNOWN) }
        try enableCapability(.userSpaceMSR, args: [reasons])
        if ranges.isEmpty { return }
        var filter = kvm_msr_filter()
        filter.flags = UInt32(KVM_MSR_FILTER_DEFAULT_ALLOW)
        // A cleared bit denies the access, which KVM then reports to user space.
        var bitmaps: [UnsafeMutablePointer<UInt8>] = []
        defer { bitmaps.forEach { $0.deallocate() } }
        for (i, r) in ranges.enumerated() {
            guard r.count > 0, r.count <= UInt32(KVM_MSR_FILTER_MAX_BITMAP_SIZE) * 8 else {
                throw KVMError.invalidArgument("MSR range of \(r.count) MSRs")
            }
            let bytes = Int((r.count + 7) / 8)
            let bm = UnsafeMutablePointer<UInt8>.allocate(capacity: bytes)
            bm.initialize(repeating: 0, count: bytes)
            bitmaps.append(bm)
            let range = ckvm_msr_filter_range(&filter, UInt32(i))!
            range.pointee.flags = (r.reads ? UInt32(KVM_MSR_FILTER_READ) : 0) | (r.writes ? UInt32(KVM_MSR_FILTER_WRITE) : 0)
            range.pointee.nmsrs = r.count
            range.pointee.base = r.base
            range.pointee.bitmap = bm
        }
        _ = try kvmIoctl(fd, CKVM_X86_SET_MSR_FILTER, "KVM_X86_SET_MSR_FILTER", &filter)
    }

    /// KVM_CREATE_VCPU with APIC ID `id`, and its mapped kvm_run page.
    public func createVCPU(id: Int) throws(KVMError) -> VCPU {
        let vfd = try kvmIoctl(fd, CKVM_CREATE_VCPU, "KVM_CREATE_VCPU", value: UInt(id))
        return try VCPU(fd: vfd, index: id, mmapSize: vcpuMmapSize)
    }
}
