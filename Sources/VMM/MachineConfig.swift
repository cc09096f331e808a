/// The mode the boot vCPU starts in.
public enum BootMode: String, Sendable, Codable, CaseIterable {
    /// CS=0, IP=entry (entry < 0x10000), SS=0, SP below the image.
    case real
    /// Flat 4 GiB code/data segments from a GDT the VMM builds; paging off.
    case protected32
    /// 64-bit code segment, PAE paging with the VMM's identity map of the low 4 GiB (2 MiB pages).
    case long64
}

/// A machine: what the `.exitscope` section of an image or the command line says.
public struct MachineConfig: Sendable, Codable, Equatable {
    public var mode: BootMode = .real
    public var vcpus: Int = 1
    public var irqchip: IRQChipMode = .none
    public var memoryMiB: Int = 16
    /// What CPUID tells the guest.
    public var cpuid: CPUIDProfile = .host
    /// Route writes of the save-area MSRs (MSRIndex.saveArea) to the VMM with the MSR filter.
    public var routeSaveAreaMSRs: Bool = true

    public init(mode: BootMode = .real, vcpus: Int = 1, irqchip: IRQChipMode = .none, memoryMiB: Int = 16) {
        self.mode = mode; self.vcpus = vcpus; self.irqchip = irqchip; self.memoryMiB = memoryMiB
    }

    public static let maxVCPUs = 64

    /// Applies "key=value" words ("mode=real vcpus=1 irqchip=none memory=16"), as found in an
    /// image's `.exitscope` section. Unknown keys and bad values are errors naming them.
    public mutating func apply(_ text: String) throws(VMMError) {
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "," || $0 == "\0" }) {
            let parts = word.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw VMMError.config("machine setting '\(word)' is not key=value") }
            try set(parts[0], parts[1])
        }
    }

    public mutating func set(_ key: String, _ value: String) throws(VMMError) {
        switch key {
        case "mode":
            guard let m = BootMode(rawValue: value) else {
                throw VMMError.config("mode '\(value)': expected real, protected32 or long64")
            }
            mode = m
        case "vcpus", "smp":
            guard let n = Int(value), n >= 1, n <= Self.maxVCPUs else {
                throw VMMError.config("vcpus '\(value)': expected 1...\(Self.maxVCPUs)")
            }
            vcpus = n
        case "irqchip":
            guard let i = IRQChipMode(rawValue: value) else { throw VMMError.config("irqchip '\(value)': expected none or kernel") }
            irqchip = i
        case "memory":
            guard let n = Int(value), n >= 1, n <= MachineLayout.maxMemoryMiB else {
                throw VMMError.config("memory '\(value)': expected 1...\(MachineLayout.maxMemoryMiB) (MiB)")
            }
            memoryMiB = n
        case "cpuid":
            guard let p = CPUIDProfile(rawValue: value) else { throw VMMError.config("cpuid '\(value)': expected host or noavx") }
            cpuid = p
        default:
            throw VMMError.config("unknown machine setting '\(key)' (known: mode, vcpus, irqchip, memory, cpuid)")
        }
    }

    public var memoryBytes: UInt64 { UInt64(memoryMiB) << 20 }

    /// The VMM's own area at the top of RAM (64 KiB): GDT at its base, then the long-mode page
    /// tables; the boot stack grows down from its base.
    public var vmmAreaBase: UInt64 { memoryBytes - 0x10000 }
}
