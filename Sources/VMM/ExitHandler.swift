import CKVM
import KVM

/// Where an exit's data lives: the kvm_run page (I/O data at `dataOffset` from its start)
/// and the 8-byte MMIO data field. Tests hand the handler a plain buffer instead.
public struct ExitDataArea {
    public var page: UnsafeMutableRawPointer
    public var pageSize: Int
    public var mmioData: UnsafeMutableRawPointer
    public init(page: UnsafeMutableRawPointer, pageSize: Int, mmioData: UnsafeMutableRawPointer) {
        self.page = page; self.pageSize = pageSize; self.mmioData = mmioData
    }

    /// `length` bytes at `offset`, or nil when that leaves the page.
    @inline(__always)
    func bytes(at offset: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        guard length >= 0, offset <= UInt64(pageSize), UInt64(length) <= UInt64(pageSize) - offset else { return nil }
        return page + Int(offset)
    }
}

/// Why a guest ended the run through one of its own events.
public enum GuestEventKind: String, Sendable, Codable {
    case shutdown = "SHUTDOWN"
    case failEntry = "FAIL_ENTRY"
    case internalError = "INTERNAL_ERROR"
}

/// What the vCPU loop does after an exit was handled.
public enum ExitAction: Equatable, Sendable {
    case resume
    /// This vCPU stops (HLT with interrupts off and no irqchip); the others go on.
    case haltVCPU
    /// The guest ended the run through the exit port (status already mapped).
    case exitStatus(source: UInt16, value: UInt64, status: Int32)
    /// A guest event that ends the run (the loop adds RIP and the instruction bytes).
    case guestEvent(GuestEventKind, detail: String)
    /// KVM_EXIT_SYSTEM_EVENT: the guest asked for shutdown/reset.
    case systemEvent(SystemEventInfo)
    /// Something the VMM cannot go on from.
    case vmmError(String)
}

/// The result of handling one exit.
public struct ExitOutcome: Equatable, Sendable {
    public var action: ExitAction = .resume
    /// The device side of the exit (nil for exits without one).
    public var access: BusAccess? = nil
    /// A marker (port 0x502) the guest wrote.
    public var marker: UInt64? = nil
    /// A routed RDMSR/WRMSR's completion for kvm_run.msr: data and whether the guest gets #GP.
    public var msrData: UInt64 = 0
    public var msrError: Bool = false
    /// A routed write of an MSR KVM owns: the loop applies it with KVM_SET_MSRS.
    public var forwardMSR: Bool = false
    /// A guest-physical page the guest asked to be refaulted (pc-testdev's flush-page port):
    /// the loop does it outside the bus lock, with completions held off.
    public var refaultPage: UInt64? = nil
    public init() {}
}

/// How the machine's interrupt controller is provided.
public enum IRQChipMode: String, Sendable, Codable, CaseIterable {
    /// No irqchip: the VMM sees every HLT; HLT with IF=0 stops that vCPU.
    case none
    /// In-kernel LAPIC/IOAPIC/PIC/PIT: SMP by INIT/SIPI, APIC timers; HLT stays in the kernel.
    case kernel
}

/// The exit handler: a plain function of the exit value, the devices and the vCPU index.
/// It completes what KVM handed to user space (port and MMIO accesses, routed MSRs) and
/// says what the loop should do next.
public struct ExitHandler: @unchecked Sendable {
    public let bus: DeviceBus
    public let msrs: MSRFile
    public let irqchip: IRQChipMode
    /// The poweroff port's device (on the bus at 0x8900): when it has seen "Shutdown", the
    /// run ends as a KVM shutdown system event would (status 0, as QEMU exits).
    public let shutdown: ShutdownPort?
    /// The i8042 (ports 0x60/0x64): when a command pulses its reset line (0xFE), the run ends as
    /// a RESET system event (status 122), the way a PC reboots.
    public let i8042: I8042Controller?
    /// ACPI's sleep control register (port 0x600): S5 power-off ends the run as a SHUTDOWN
    /// system event (status 0).
    public let acpiSleep: ACPISleepControl?

    public init(bus: DeviceBus, msrs: MSRFile, irqchip: IRQChipMode, shutdown: ShutdownPort? = nil,
                i8042: I8042Controller? = nil, acpiSleep: ACPISleepControl? = nil) {
        self.i8042 = i8042
        self.acpiSleep = acpiSleep
        self.bus = bus
        self.msrs = msrs
        self.irqchip = irqchip
        self.shutdown = shutdown
    }

    /// Maps the exit port's value to a process exit status (the low 8 bits).
    public static func exitPortStatus(_ v: UInt64) -> Int32 { Int32(v & 0xFF) }
    /// isa-debug-exit's status, as QEMU computes it: (value << 1) | 1, low 8 bits.
    public static func debugExitStatus(_ v: UInt64) -> Int32 { Int32(((v << 1) | 1) & 0xFF) }

    @inline(__always)
    public func handle(_ exit: VMExit, vcpu: Int, data: ExitDataArea, interruptFlag: Bool) -> ExitOutcome {
        var out = ExitOutcome()
        switch exit {
        case let .io(port, size, direction, count, dataOffset):
            handleIO(&out, vcpu: vcpu, port: port, size: Int(size), isWrite: direction == .out,
                     count: Int(count), dataOffset: dataOffset, data: data)
        case let .mmio(address, length, isWrite, value):
            let size = Int(length)
            guard size >= 1 && size <= 8 else {
                out.action = .vmmError("MMIO exit with length \(length) at \(hex(address))")
                return out
            }
            if isWrite {
                let claimed = bus.mmioWrite(vcpu: vcpu, address: address, size: size, value: value)
                out.access = BusAccess(kind: .mmio, address: address, size: UInt8(size), isWrite: true,
                                          data: value, claimed: claimed)
            } else {
                let (v, claimed) = bus.mmioRead(vcpu: vcpu, address: address, size: size)
                storeLE(data.mmioData, size, v)
                out.access = BusAccess(kind: .mmio, address: address, size: UInt8(size), isWrite: false,
                                          data: v, claimed: claimed)
            }
        case .hlt:
            if irqchip == .none && !interruptFlag { out.action = .haltVCPU }
        case .shutdown:
            out.action = .guestEvent(.shutdown, detail: "triple fault")
        case let .failEntry(reason, cpu):
            out.action = .guestEvent(.failEntry, detail: "hardware entry failure reason \(hex(reason)) on host CPU \(cpu)")
        case let .internalError(info):
            var d = "suberror \(info.suberrorName)"
            if !info.data.isEmpty { d += ", data " + info.data.map { hex($0) }.joined(separator: " ") }
            out.action = .guestEvent(.internalError, detail: d)
        case .debug, .irqWindowOpen, .intr, .nmi, .exception, .tprAccess:
            break
        case let .rdmsr(index, _):
            if let v = msrs.read(index) {
                out.msrData = v
                out.access = BusAccess(kind: .msr, address: UInt64(index), size: 8, isWrite: false, data: v)
            } else {
                bus.msrUnclaimed(vcpu: vcpu, index: index, isWrite: false)
                out.msrError = true
                out.access = BusAccess(kind: .msr, address: UInt64(index), size: 8, isWrite: false, data: 0, claimed: false)
            }
        case let .wrmsr(index, _, value):
            var claimed = true
            if msrs.forwarded.contains(index) {
                out.forwardMSR = true
            } else if !msrs.write(index, value) {
                bus.msrUnclaimed(vcpu: vcpu, index: index, isWrite: true)
                out.msrError = true
                claimed = false
            }
            out.msrData = value
            out.access = BusAccess(kind: .msr, address: UInt64(index), size: 8, isWrite: true, data: value, claimed: claimed)
        case let .systemEvent(info):
            out.action = .systemEvent(info)
        case .hypercall:
            break  // the loop answers -KVM_ENOSYS
        case let .unknown(reason, hw):
            out.action = .vmmError("KVM returned exit reason \(reason) (\(VMExit.name(ofReason: reason))), hardware reason \(hex(hw))")
        }
        return out
    }

    @inline(__always)
    func handleIO(_ out: inout ExitOutcome, vcpu: Int, port: UInt16, size: Int, isWrite: Bool, count: Int,
                  dataOffset: UInt64, data: ExitDataArea) {
        guard size == 1 || size == 2 || size == 4, count >= 1,
              let p = data.bytes(at: dataOffset, length: size * count) else {
            out.action = .vmmError("I/O exit with size \(size), count \(count), data offset \(dataOffset) outside kvm_run")
            return
        }
        if count == 1 {
            if isWrite {
                let v = UInt64(loadLE(p, size))
                out.access = BusAccess(kind: .port, address: UInt64(port), size: UInt8(size), isWrite: true, data: v)
                switch port {
                case MachineLayout.exitPort:
                    out.action = .exitStatus(source: port, value: v, status: Self.exitPortStatus(v))
                case MachineLayout.debugExitPort:
                    out.action = .exitStatus(source: port, value: v, status: Self.debugExitStatus(v))
                case MachineLayout.markerPort:
                    out.marker = v
                case MachineLayout.testDevFlushPort where size == 4:
                    // QEMU takes only 32-bit writes here; others go to the bus (unclaimed).
                    out.refaultPage = v & 0xFFFF_F000
                case MachineLayout.shutdownPort:
                    out.access!.claimed = bus.portWrite(vcpu: vcpu, port: port, size: size, value: UInt32(v))
                    if let shutdown, bus.withLock({ shutdown.requested }) {
                        out.action = .systemEvent(SystemEventInfo(type: UInt32(KVM_SYSTEM_EVENT_SHUTDOWN)))
                    }
                case MachineLayout.i8042CommandPort:
                    out.access!.claimed = bus.portWrite(vcpu: vcpu, port: port, size: size, value: UInt32(v))
                    if let i8042, bus.withLock({ i8042.resetRequested }) {
                        out.action = .systemEvent(SystemEventInfo(type: UInt32(KVM_SYSTEM_EVENT_RESET)))
                    }
                case ACPITables.sleepControlPort:
                    out.access!.claimed = bus.portWrite(vcpu: vcpu, port: port, size: size, value: UInt32(v))
                    if let acpiSleep, bus.withLock({ acpiSleep.powerOffRequested }) {
                        out.action = .systemEvent(SystemEventInfo(type: UInt32(KVM_SYSTEM_EVENT_SHUTDOWN)))
                    }
                default:
                    out.access!.claimed = bus.portWrite(vcpu: vcpu, port: port, size: size, value: UInt32(v))
                }
            } else {
                let (v, claimed) = bus.portRead(vcpu: vcpu, port: port, size: size)
                storeLE(p, size, UInt64(v))
                out.access = BusAccess(kind: .port, address: UInt64(port), size: UInt8(size), isWrite: false,
                                          data: UInt64(v), claimed: claimed)
            }
            return
        }
        // String I/O (REP INS/OUTS): KVM hands over a chunk of `count` elements at once.
        let claimed: Bool
        let ours = port == MachineLayout.exitPort || port == MachineLayout.debugExitPort || port == MachineLayout.markerPort
        switch port {
        case _ where ours && isWrite:
            // The first element decides, as a single OUT would.
            let v = UInt64(loadLE(p, size))
            if port == MachineLayout.markerPort { out.marker = v }
            else if port == MachineLayout.exitPort {
                out.action = .exitStatus(source: port, value: v, status: Self.exitPortStatus(v))
            } else {
                out.action = .exitStatus(source: port, value: v, status: Self.debugExitStatus(v))
            }
            claimed = true
        default:
            claimed = bus.portString(vcpu: vcpu, port: port, size: size, count: count, isWrite: isWrite, data: p)
        }
        out.access = BusAccess(kind: .port, address: UInt64(port), size: UInt8(size), isWrite: isWrite,
                                  data: UInt64(loadLE(p, size)), count: UInt32(count), claimed: claimed)
    }
}
