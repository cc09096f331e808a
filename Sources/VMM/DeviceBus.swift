import Synchronization

/// What a device access was: a port, a guest-physical MMIO address, or an MSR.
public enum AccessKind: UInt8, Sendable, Codable {
    case port, mmio, msr
}

/// One access as the device side saw it: for a read, `data` is what the device answered;
/// for string I/O (`count` > 1) it is the first element's value (all of them are in the
/// exit's I/O data, see `ObservedExit.ioData`).
public struct BusAccess: Equatable, Sendable {
    public var kind: AccessKind
    public var address: UInt64
    public var size: UInt8
    public var isWrite: Bool
    public var data: UInt64
    public var count: UInt32
    /// False when no device claimed it (a read then returned all ones; a write was dropped).
    public var claimed: Bool
    public init(kind: AccessKind, address: UInt64, size: UInt8, isWrite: Bool, data: UInt64,
                count: UInt32 = 1, claimed: Bool = true) {
        self.kind = kind; self.address = address; self.size = size; self.isWrite = isWrite
        self.data = data; self.count = count; self.claimed = claimed
    }
}

/// Accesses no device claimed, grouped by vCPU, kind, address, size and direction, with how
/// many there were.
public struct UnclaimedAccess: Equatable, Hashable, Sendable, Codable {
    public var vcpu: Int
    public var kind: AccessKind
    public var address: UInt64
    public var size: Int
    public var isWrite: Bool
    public var count: UInt64 = 1
    public init(vcpu: Int, kind: AccessKind, address: UInt64, size: Int, isWrite: Bool, count: UInt64 = 1) {
        self.vcpu = vcpu; self.kind = kind; self.address = address; self.size = size; self.isWrite = isWrite
        self.count = count
    }
}

/// The port and MMIO buses. One lock covers all devices: vCPU threads take it for the
/// duration of one device call.
public final class DeviceBus: @unchecked Sendable {
    public private(set) var ports = RangeMap<PortDevice>()
    public private(set) var mmio = RangeMap<MMIODevice>()
    let lock = Mutex<Void>(())

    public private(set) var unclaimedReads: UInt64 = 0
    public private(set) var unclaimedWrites: UInt64 = 0
    /// Unclaimed accesses grouped (first seen first), at most `unclaimedKept` groups; later
    /// new groups are only counted in the totals.
    public private(set) var unclaimed: [UnclaimedAccess] = []
    var unclaimedIndex: [UnclaimedAccess: Int] = [:]
    public let unclaimedKept = 64

    public init() {}

    /// Attaches a port device at [base, base+count); throws on overlap.
    public func attach(_ device: PortDevice, port base: UInt16, count: UInt16) throws(VMMError) {
        guard ports.insert(base: UInt64(base), length: UInt64(count), device) else {
            throw VMMError.config("ports \(hex(UInt64(base)))+\(count) overlap another device")
        }
    }

    public func attach(_ device: MMIODevice, address base: UInt64, length: UInt64) throws(VMMError) {
        guard mmio.insert(base: base, length: length, device) else {
            throw VMMError.config("MMIO \(hex(base))+\(hex(length)) overlaps another device")
        }
    }

    func noteUnclaimed(vcpu: Int, kind: AccessKind, address: UInt64, size: Int, isWrite: Bool, count: UInt64 = 1) {
        if isWrite { unclaimedWrites &+= count } else { unclaimedReads &+= count }
        let key = UnclaimedAccess(vcpu: vcpu, kind: kind, address: address, size: size, isWrite: isWrite, count: 0)
        if let i = unclaimedIndex[key] {
            unclaimed[i].count &+= count
        } else if unclaimed.count < unclaimedKept {
            unclaimedIndex[key] = unclaimed.count
            var u = key
            u.count = count
            unclaimed.append(u)
        }
    }

    /// Port read of `size` bytes; all ones when unclaimed.
    @inline(__always)
    public func portRead(vcpu: Int, port: UInt16, size: Int) -> (value: UInt32, claimed: Bool) {
        lock.withLock { _ in
            if let hit = ports.find(UInt64(port), size: UInt64(size)) {
                return (hit.entry.value.read(offset: UInt16(hit.offset), size: size), true)
            }
            noteUnclaimed(vcpu: vcpu, kind: .port, address: UInt64(port), size: size, isWrite: false)
            return (size >= 4 ? ~0 : (UInt32(1) << (8 * UInt32(size))) &- 1, false)
        }
    }

    @inline(__always)
    @discardableResult
    public func portWrite(vcpu: Int, port: UInt16, size: Int, value: UInt32) -> Bool {
        lock.withLock { _ in
            if let hit = ports.find(UInt64(port), size: UInt64(size)) {
                hit.entry.value.write(offset: UInt16(hit.offset), size: size, value: value)
                return true
            }
            noteUnclaimed(vcpu: vcpu, kind: .port, address: UInt64(port), size: size, isWrite: true)
            return false
        }
    }

    /// String port I/O: `count` elements of `size` bytes at `data` (KVM's I/O data area).
    public func portString(vcpu: Int, port: UInt16, size: Int, count: Int, isWrite: Bool,
                           data: UnsafeMutableRawPointer) -> Bool {
        lock.withLock { _ in
            guard let hit = ports.find(UInt64(port), size: UInt64(size)) else {
                noteUnclaimed(vcpu: vcpu, kind: .port, address: UInt64(port), size: size, isWrite: isWrite,
                              count: UInt64(count))
                if !isWrite { data.initializeMemory(as: UInt8.self, repeating: 0xFF, count: size * count) }
                return false
            }
            let dev = hit.entry.value, off = UInt16(hit.offset)
            for i in 0..<count {
                let p = data + i * size
                if isWrite {
                    dev.write(offset: off, size: size, value: loadLE(p, size))
                } else {
                    storeLE(p, size, UInt64(dev.read(offset: off, size: size)))
                }
            }
            return true
        }
    }

    @inline(__always)
    public func mmioRead(vcpu: Int, address: UInt64, size: Int) -> (value: UInt64, claimed: Bool) {
        lock.withLock { _ in
            if let hit = mmio.find(address, size: UInt64(size)) {
                return (hit.entry.value.read(offset: hit.offset, size: size), true)
            }
            noteUnclaimed(vcpu: vcpu, kind: .mmio, address: address, size: size, isWrite: false)
            return (size >= 8 ? ~0 : (UInt64(1) << (8 * UInt64(size))) &- 1, false)
        }
    }

    @inline(__always)
    @discardableResult
    public func mmioWrite(vcpu: Int, address: UInt64, size: Int, value: UInt64) -> Bool {
        lock.withLock { _ in
            if let hit = mmio.find(address, size: UInt64(size)) {
                hit.entry.value.write(offset: hit.offset, size: size, value: value)
                return true
            }
            noteUnclaimed(vcpu: vcpu, kind: .mmio, address: address, size: size, isWrite: true)
            return false
        }
    }

    /// Notes an unclaimed MSR access (an MSR routed to the VMM that it does not own).
    public func msrUnclaimed(vcpu: Int, index: UInt32, isWrite: Bool) {
        lock.withLock { _ in noteUnclaimed(vcpu: vcpu, kind: .msr, address: UInt64(index), size: 8, isWrite: isWrite) }
    }

    /// Runs `body` with the bus lock held (e.g. to flush the UART at the end of a run).
    public func withLock<T>(_ body: () -> T) -> T { lock.withLock { _ in body() } }
}

@inline(__always)
func loadLE(_ p: UnsafeRawPointer, _ size: Int) -> UInt32 {
    switch size {
    case 1: return UInt32(p.load(as: UInt8.self))
    case 2: return UInt32(UInt16(littleEndian: p.loadUnaligned(as: UInt16.self)))
    default: return UInt32(littleEndian: p.loadUnaligned(as: UInt32.self))
    }
}

@inline(__always)
func storeLE(_ p: UnsafeMutableRawPointer, _ size: Int, _ v: UInt64) {
    for i in 0..<size { p.storeBytes(of: UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))), toByteOffset: i, as: UInt8.self) }
}
