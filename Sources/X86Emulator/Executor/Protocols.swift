import X86

// Everything outside the processor reaches the executor through these protocols, so the
// same executor runs against a live VMM (real guest RAM, devices), against a trace during
// replay (bytes served from the record, device answers as recorded), and against an `exec`
// input (a JSON map of bytes).

/// The outcome of one guest-physical access.
public enum PhysicalAccess: Equatable, Sendable {
    case ok
    /// No memory backs this address (replay: the trace did not store it). The executor stops
    /// the instruction and reports exactly this address.
    case unbacked(UInt64)
}

/// Guest-physical memory. The executor issues one call per operand access (split only where
/// an access crosses a page), so an MMIO-backed implementation sees the same access sizes the
/// hardware would produce.
public protocol GuestMemory: AnyObject {
    func read(_ gpa: UInt64, count: Int, into buffer: UnsafeMutableRawPointer) -> PhysicalAccess
    func write(_ gpa: UInt64, count: Int, from buffer: UnsafeRawPointer) -> PhysicalAccess
    /// A host pointer to the whole 4 KiB page at `pageGPA` when it is plain RAM (no device,
    /// no logging wanted), so hot loops can skip the protocol call; nil otherwise.
    func ramPage(_ pageGPA: UInt64) -> UnsafeMutableRawPointer?
}

extension GuestMemory {
    public func ramPage(_ pageGPA: UInt64) -> UnsafeMutableRawPointer? { nil }
}

/// One port access, as the executor performed it.
public struct PortAccess: Equatable, Sendable, Codable {
    public var port: UInt16
    /// 1, 2 or 4 bytes.
    public var size: Int
    public var isWrite: Bool
    public var value: UInt32
    /// True for INS/OUTS; `rep` when a REP prefix repeated it.
    public var string: Bool
    public var rep: Bool
    /// Address size in bits of INS/OUTS (IOIO EXITINFO1's A16/A32/A64); 0 for IN/OUT.
    public var addressSize: Int
    public init(port: UInt16, size: Int, isWrite: Bool, value: UInt32, string: Bool = false, rep: Bool = false,
                addressSize: Int = 0) {
        self.port = port
        self.size = size
        self.isWrite = isWrite
        self.value = value
        self.string = string
        self.rep = rep
        self.addressSize = addressSize
    }
}

/// The I/O port space. A read returns nil when there is no answer (replay: not recorded);
/// the executor then stops with `StepResult.unanswered(.port(...))` and changes nothing.
public protocol IOPorts: AnyObject {
    func read(port: UInt16, size: Int) -> UInt32?
    func write(port: UInt16, size: Int, value: UInt32)
}

/// CPUID answers; nil when the leaf is not known (replay: not recorded).
public protocol CPUIDSource: AnyObject {
    func cpuid(leaf: UInt32, subleaf: UInt32) -> CPUIDResult?
}

public struct CPUIDResult: Equatable, Sendable, Codable {
    public var eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32
    public init(eax: UInt32, ebx: UInt32, ecx: UInt32, edx: UInt32) {
        self.eax = eax
        self.ebx = ebx
        self.ecx = ecx
        self.edx = edx
    }
}

/// What an MSR read or write did on the bus.
public enum MSRResult: Equatable, Sendable {
    case value(UInt64)
    /// The MSR does not exist or refuses the value: RDMSR/WRMSR raise #GP(0).
    case generalProtection
    /// No answer known (replay: not recorded).
    case unanswered
}

/// The MSRs that are not part of `CPUState` (the save-area MSRs, FS/GS base and EFER live in
/// the executor's own state; all others go to the bus). A write answers `.value(v)` when accepted.
public protocol MSRBus: AnyObject {
    func readMSR(_ index: UInt32) -> MSRResult
    func writeMSR(_ index: UInt32, value: UInt64) -> MSRResult
}

/// The time-stamp counter as RDTSC/RDTSCP read it; nil when not known (replay: not recorded).
public protocol TimeStampCounter: AnyObject {
    func readTSC() -> UInt64?
}

// MARK: - Simple implementations, for tests, `exec` inputs and tools

/// Guest-physical memory as sparse 4 KiB pages. Addresses outside any page are unbacked.
/// Optionally logs every write (address, bytes) in order, as `exec` reports them.
public final class SparseMemory: GuestMemory {
    public private(set) var pages: [UInt64: UnsafeMutableRawPointer] = [:]
    public var logWrites: Bool
    public private(set) var writeLog: [(gpa: UInt64, bytes: [UInt8])] = []
    /// When true, reads of unbacked addresses return zeros instead of failing.
    public var zeroFillUnbacked = false

    public init(logWrites: Bool = false) { self.logWrites = logWrites }

    deinit { for (_, p) in pages { p.deallocate() } }

    /// Backs the pages covering [gpa, gpa+count) with zeroed memory.
    public func map(_ gpa: UInt64, count: Int) {
        guard count > 0 else { return }
        // Page by page with wrapping arithmetic: a range may run past the top of the address space.
        let pagesNeeded = (Int(gpa & 0xFFF) + count + 4095) / 4096
        var p = gpa & ~0xFFF
        for _ in 0..<pagesNeeded {
            if pages[p] == nil {
                let m = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
                m.initializeMemory(as: UInt8.self, repeating: 0, count: 4096)
                pages[p] = m
            }
            p &+= 4096
        }
    }

    /// Maps and fills bytes at `gpa` (not logged).
    public func load(_ gpa: UInt64, _ bytes: [UInt8]) {
        map(gpa, count: bytes.count)
        bytes.withUnsafeBytes { b in
            var done = 0
            while done < bytes.count {
                let a = gpa &+ UInt64(done)
                let off = Int(a & 0xFFF)
                let n = min(bytes.count - done, 4096 - off)
                if let page = pages[a & ~0xFFF] { (page + off).copyMemory(from: b.baseAddress! + done, byteCount: n) }
                done += n
            }
        }
    }

    public func byte(_ gpa: UInt64) -> UInt8? {
        pages[gpa & ~0xFFF]?.load(fromByteOffset: Int(gpa & 0xFFF), as: UInt8.self)
    }

    public func bytes(_ gpa: UInt64, count: Int) -> [UInt8]? {
        var r = [UInt8](repeating: 0, count: count)
        let ok = r.withUnsafeMutableBytes { b in
            count == 0 || read(gpa, count: count, into: b.baseAddress!) == .ok
        }
        return ok ? r : nil
    }

    public func clearWriteLog() { writeLog.removeAll() }

    public func read(_ gpa: UInt64, count: Int, into buffer: UnsafeMutableRawPointer) -> PhysicalAccess {
        var done = 0
        while done < count {
            let a = gpa &+ UInt64(done)
            let off = Int(a & 0xFFF)
            let n = min(count - done, 4096 - off)
            if let p = pages[a & ~0xFFF] {
                (buffer + done).copyMemory(from: p + off, byteCount: n)
            } else if zeroFillUnbacked {
                (buffer + done).initializeMemory(as: UInt8.self, repeating: 0, count: n)
            } else {
                return .unbacked(a)
            }
            done += n
        }
        return .ok
    }

    public func write(_ gpa: UInt64, count: Int, from buffer: UnsafeRawPointer) -> PhysicalAccess {
        // Check every page first so a failing write changes nothing.
        var done = 0
        while done < count {
            let a = gpa &+ UInt64(done)
            if pages[a & ~0xFFF] == nil { return .unbacked(a) }
            done += min(count - done, 4096 - Int(a & 0xFFF))
        }
        done = 0
        while done < count {
            let a = gpa &+ UInt64(done)
            let off = Int(a & 0xFFF)
            let n = min(count - done, 4096 - off)
            guard let page = pages[a & ~0xFFF] else { return .unbacked(a) }
            (page + off).copyMemory(from: buffer + done, byteCount: n)
            done += n
        }
        if logWrites {
            writeLog.append((gpa, Array(UnsafeRawBufferPointer(start: buffer, count: count))))
        }
        return .ok
    }

    public func ramPage(_ pageGPA: UInt64) -> UnsafeMutableRawPointer? {
        logWrites ? nil : pages[pageGPA]
    }
}

/// Contiguous guest RAM from physical address 0 (what a VMM maps for a simple guest).
public final class FlatMemory: GuestMemory {
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public init(size: Int) {
        self.size = (size + 4095) & ~4095
        base = UnsafeMutableRawPointer.allocate(byteCount: self.size, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: self.size)
    }
    deinit { base.deallocate() }

    public func load(_ gpa: Int, _ bytes: [UInt8]) {
        precondition(gpa >= 0 && gpa + bytes.count <= size, "FlatMemory.load outside RAM")
        bytes.withUnsafeBytes { (base + gpa).copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
    }

    public func read(_ gpa: UInt64, count: Int, into buffer: UnsafeMutableRawPointer) -> PhysicalAccess {
        if gpa >= UInt64(size) { return .unbacked(gpa) }
        if gpa + UInt64(count) > UInt64(size) { return .unbacked(UInt64(size)) }
        buffer.copyMemory(from: base + Int(gpa), byteCount: count)
        return .ok
    }

    public func write(_ gpa: UInt64, count: Int, from buffer: UnsafeRawPointer) -> PhysicalAccess {
        if gpa >= UInt64(size) { return .unbacked(gpa) }
        if gpa + UInt64(count) > UInt64(size) { return .unbacked(UInt64(size)) }
        (base + Int(gpa)).copyMemory(from: buffer, byteCount: count)
        return .ok
    }

    public func ramPage(_ pageGPA: UInt64) -> UnsafeMutableRawPointer? {
        pageGPA < UInt64(size) ? base + Int(pageGPA) : nil
    }
}

/// Port answers from a table (port → queue of values; the last value repeats), logging every
/// access. Writes are accepted and logged.
public final class ScriptedPorts: IOPorts {
    public var answers: [UInt16: [UInt32]]
    public private(set) var log: [PortAccess] = []
    /// Answer for ports without an entry; nil makes such reads unanswered.
    public var defaultValue: UInt32?
    public init(answers: [UInt16: [UInt32]] = [:], defaultValue: UInt32? = nil) {
        self.answers = answers
        self.defaultValue = defaultValue
    }
    public func read(port: UInt16, size: Int) -> UInt32? {
        var v: UInt32
        if var q = answers[port], let first = q.first {
            v = first
            if q.count > 1 { q.removeFirst(); answers[port] = q }
        } else if let d = defaultValue {
            v = d
        } else {
            return nil
        }
        v &= size == 4 ? 0xFFFF_FFFF : (UInt32(1) << (8 * UInt32(size))) - 1
        log.append(PortAccess(port: port, size: size, isWrite: false, value: v))
        return v
    }
    public func write(port: UInt16, size: Int, value: UInt32) {
        log.append(PortAccess(port: port, size: size, isWrite: true, value: value))
    }
    public func clearLog() { log.removeAll() }
}

/// CPUID answers from a table keyed by (leaf, subleaf); a leaf given without subleaf answers
/// every subleaf.
public final class TableCPUID: CPUIDSource {
    public var table: [UInt64: CPUIDResult]
    public var fallback: CPUIDResult?
    public init(_ table: [UInt64: CPUIDResult] = [:], fallback: CPUIDResult? = nil) {
        self.table = table
        self.fallback = fallback
    }
    public static func key(_ leaf: UInt32, _ subleaf: UInt32?) -> UInt64 {
        UInt64(leaf) << 32 | UInt64(subleaf ?? 0xFFFF_FFFF)
    }
    public func set(leaf: UInt32, subleaf: UInt32? = nil, _ r: CPUIDResult) { table[TableCPUID.key(leaf, subleaf)] = r }
    public func cpuid(leaf: UInt32, subleaf: UInt32) -> CPUIDResult? {
        table[TableCPUID.key(leaf, subleaf)] ?? table[TableCPUID.key(leaf, nil)] ?? fallback
    }
}

/// MSRs from a table: reads of absent MSRs raise #GP unless `unknownIsUnanswered`; writes are
/// stored and logged.
public final class TableMSRs: MSRBus {
    public var values: [UInt32: UInt64]
    public var unknownIsUnanswered: Bool
    public private(set) var writes: [(index: UInt32, value: UInt64)] = []
    public init(_ values: [UInt32: UInt64] = [:], unknownIsUnanswered: Bool = false) {
        self.values = values
        self.unknownIsUnanswered = unknownIsUnanswered
    }
    public func readMSR(_ index: UInt32) -> MSRResult {
        if let v = values[index] { return .value(v) }
        return unknownIsUnanswered ? .unanswered : .generalProtection
    }
    public func writeMSR(_ index: UInt32, value: UInt64) -> MSRResult {
        values[index] = value
        writes.append((index, value))
        return .value(value)
    }
}

/// A TSC answering a fixed sequence (the last value repeats), or counting up from a start.
public final class ScriptedTSC: TimeStampCounter {
    public var values: [UInt64]
    public var increment: UInt64
    public init(_ values: [UInt64], increment: UInt64 = 0) {
        self.values = values
        self.increment = increment
    }
    public func readTSC() -> UInt64? {
        guard let v = values.first else { return nil }
        if values.count > 1 { values.removeFirst() } else { values[0] = v &+ increment }
        return v
    }
}
