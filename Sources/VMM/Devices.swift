import Glibc
import Synchronization

/// A device on the port-I/O bus. `offset` is relative to the device's base port; `size` is
/// 1, 2 or 4. Called with the bus lock held, so a device needs no lock of its own.
public protocol PortDevice: AnyObject {
    func read(offset: UInt16, size: Int) -> UInt32
    func write(offset: UInt16, size: Int, value: UInt32)
}

/// A device on the MMIO bus. `offset` is relative to the device's base; `size` is 1..8.
public protocol MMIODevice: AnyObject {
    func read(offset: UInt64, size: Int) -> UInt64
    func write(offset: UInt64, size: Int, value: UInt64)
}

/// Non-overlapping [base, base+length) ranges mapped to values, found by binary search
/// (Firecracker's bus.rs in spirit).
public struct RangeMap<Value> {
    public struct Entry {
        public let base: UInt64
        public let length: UInt64
        public let value: Value
    }
    public private(set) var entries: [Entry] = []

    public init() {}

    /// Adds a range; false when it is empty, wraps, or overlaps an existing one.
    @discardableResult
    public mutating func insert(base: UInt64, length: UInt64, _ value: Value) -> Bool {
        guard length > 0, base <= UInt64.max - (length - 1) else { return false }
        let last = base + (length - 1)
        for e in entries where base <= e.base + (e.length - 1) && e.base <= last { return false }
        entries.append(Entry(base: base, length: length, value: value))
        entries.sort { $0.base < $1.base }
        return true
    }

    /// The entry holding `address`, and the offset into it.
    @inline(__always)
    public func find(_ address: UInt64) -> (entry: Entry, offset: UInt64)? {
        var lo = 0, hi = entries.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            let e = entries[mid]
            if address < e.base { hi = mid }
            else if address - e.base >= e.length { lo = mid + 1 }
            else { return (e, address - e.base) }
        }
        return nil
    }

    /// The entry holding all of [address, address+size).
    @inline(__always)
    public func find(_ address: UInt64, size: UInt64) -> (entry: Entry, offset: UInt64)? {
        guard let hit = find(address), size <= hit.entry.length - hit.offset else { return nil }
        return hit
    }
}

// MARK: where things live

/// Fixed addresses of ExitScope's machine. Sample guests use these.
public enum MachineLayout {
    /// COM1, a 16550A UART (8 ports).
    public static let serialPort: UInt16 = 0x3F8
    /// Writing V here ends the run with exit status V (& 0xFF).
    public static let exitPort: UInt16 = 0x501
    /// Writing N here marks the start of phase N (reported to the observer).
    public static let markerPort: UInt16 = 0x502
    /// QEMU's isa-debug-exit: writing V ends the run with status (V << 1) | 1.
    public static let debugExitPort: UInt16 = 0xF4
    /// The scratch MMIO device: 4 KiB of readable and writable registers (little-endian,
    /// any size 1..8 at any offset; reads return what was last written, initially zero).
    public static let scratchMMIOBase: UInt64 = 0xD000_0000
    public static let scratchMMIOSize: UInt64 = 0x1000
    /// Guest RAM is at most this much (it must stay below the MMIO hole at 3 GiB).
    public static let maxMemoryMiB = 3072
    /// KVM_SET_TSS_ADDR's three pages (needed by VMX for real mode; unused RAM-less space).
    public static let tssAddress: UInt64 = 0xFFFB_D000
}

// MARK: UART

/// Where the UART's output goes: a file descriptor, buffered; optionally also kept in memory
/// (bounded) so tests and the summary can see it.
public final class SerialOutput: @unchecked Sendable {
    let fd: Int32
    let ownsFD: Bool
    var buffer: [UInt8] = []
    public private(set) var captured: [UInt8] = []
    public let captureLimit: Int
    public private(set) var totalBytes = 0

    /// `fd` < 0 writes nowhere (capture only).
    public init(fd: Int32, ownsFD: Bool = false, captureLimit: Int = 0) {
        self.fd = fd
        self.ownsFD = ownsFD
        self.captureLimit = captureLimit
        buffer.reserveCapacity(4096)
    }

    /// Opens (creates, truncates) a file for the output.
    public convenience init(path: String, captureLimit: Int = 0) throws(VMMError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { throw VMMError.config("cannot open \(path) for serial output: \(String(cString: strerror(errno)))") }
        self.init(fd: fd, ownsFD: true, captureLimit: captureLimit)
    }

    deinit {
        flush()
        if ownsFD { close(fd) }
    }

    public func put(_ b: UInt8) {
        totalBytes += 1
        if captured.count < captureLimit { captured.append(b) }
        guard fd >= 0 else { return }
        buffer.append(b)
        if b == 0x0A || buffer.count >= 4096 { flush() }
    }

    public func flush() {
        guard fd >= 0, !buffer.isEmpty else { return }
        buffer.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            var off = 0
            while off < raw.count {
                let n = Glibc.write(fd, base + off, raw.count - off)
                if n <= 0 { if errno == EINTR { continue }; break }
                off += n
            }
        }
        buffer.removeAll(keepingCapacity: true)
    }

    public var capturedText: String { String(decoding: captured, as: UTF8.self) }
}

/// A 16550A UART (COM1): enough of it for polling drivers. LSR always shows THRE and TEMT
/// (the transmitter is always ready) and DR while input remains; the divisor latch, IER, LCR,
/// MCR and SCR read back what was written; there are no interrupts.
public final class UART16550: PortDevice {
    public let output: SerialOutput
    var input: [UInt8]
    var inputPosition = 0
    var ier: UInt8 = 0, lcr: UInt8 = 0x03, mcr: UInt8 = 0, scr: UInt8 = 0
    var dll: UInt8 = 0x0C, dlm: UInt8 = 0, fcr: UInt8 = 0

    public init(output: SerialOutput, input: [UInt8] = []) {
        self.output = output
        self.input = input
    }

    var dlab: Bool { lcr & 0x80 != 0 }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        switch offset {
        case 0:
            if dlab { return UInt32(dll) }
            guard inputPosition < input.count else { return 0 }
            defer { inputPosition += 1 }
            return UInt32(input[inputPosition])
        case 1: return UInt32(dlab ? dlm : ier)
        case 2: return fcr & 1 != 0 ? 0xC1 : 0x01  // IIR: no interrupt pending (FIFOs on if enabled)
        case 3: return UInt32(lcr)
        case 4: return UInt32(mcr)
        case 5:  // LSR: THRE | TEMT, plus DR while input is left
            return 0x60 | (inputPosition < input.count ? 1 : 0)
        case 6: return 0xB0  // MSR: DCD, DSR, CTS
        case 7: return UInt32(scr)
        default: return 0xFF
        }
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        switch offset {
        case 0: if dlab { dll = v } else { output.put(v) }
        case 1: if dlab { dlm = v } else { ier = v & 0x0F }
        case 2: fcr = v
        case 3: lcr = v
        case 4: mcr = v
        case 7: scr = v
        default: break  // LSR and MSR are read-only
        }
    }
}

// MARK: scratch MMIO

/// 4 KiB (by default) of plain registers: what is written is read back.
public final class ScratchMMIO: MMIODevice {
    public let size: Int
    let bytes: UnsafeMutableRawPointer
    public private(set) var reads = 0
    public private(set) var writes = 0

    public init(size: Int = Int(MachineLayout.scratchMMIOSize)) {
        self.size = size
        bytes = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
        bytes.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    }
    deinit { bytes.deallocate() }

    public func read(offset: UInt64, size n: Int) -> UInt64 {
        reads += 1
        guard n >= 1, n <= 8, offset <= UInt64(size - n) else { return ~0 }
        var v: UInt64 = 0
        for i in 0..<n { v |= UInt64(bytes.load(fromByteOffset: Int(offset) + i, as: UInt8.self)) << (8 * UInt64(i)) }
        return v
    }

    public func write(offset: UInt64, size n: Int, value: UInt64) {
        writes += 1
        guard n >= 1, n <= 8, offset <= UInt64(size - n) else { return }
        for i in 0..<n {
            bytes.storeBytes(of: UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))), toByteOffset: Int(offset) + i, as: UInt8.self)
        }
    }
}

// MARK: MSR file

/// The MSRs routed to the VMM. `forwarded` ones are KVM's own (the save-area MSRs): a routed
/// write is applied to KVM with KVM_SET_MSRS after the observer has seen it. The others live
/// here: a write stores, a read returns the stored value; an MSR in neither set is #GP.
/// Shared by all vCPUs, so the values are behind a lock.
public final class MSRFile: @unchecked Sendable {
    public let forwarded: Set<UInt32>
    let values: Mutex<[UInt32: UInt64]>

    public init(forwarded: Set<UInt32>, owned: [UInt32: UInt64] = [:]) {
        self.forwarded = forwarded
        values = Mutex(owned)
    }

    public func owns(_ index: UInt32) -> Bool { values.withLock { $0[index] != nil } }
    public func read(_ index: UInt32) -> UInt64? { values.withLock { $0[index] } }
    /// Stores an owned MSR's value; false if the VMM does not own it.
    public func write(_ index: UInt32, _ value: UInt64) -> Bool {
        values.withLock {
            guard $0[index] != nil else { return false }
            $0[index] = value
            return true
        }
    }
}
