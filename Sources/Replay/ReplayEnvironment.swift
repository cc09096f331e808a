import Trace
import X86
import X86Emulator

/// Guest-physical memory served only from the trace (DESIGN.md, "Guest bytes"): the bytes the
/// record carries and those of earlier records in the same frame. Every byte has a valid bit, so a
/// read of anything the recorder did not store stops the instruction with its exact address,
/// never a made-up value. Device addresses (MMIO) are answered from the recorded accesses and
/// every device access the emulator makes is logged for comparison.
final class ReplayMemory: GuestMemory {
    /// One 4 KiB page: data and one valid bit per byte.
    final class Page {
        let data = UnsafeMutablePointer<UInt8>.allocate(capacity: 4096)
        let valid = UnsafeMutablePointer<UInt64>.allocate(capacity: 64)
        init() {
            data.initialize(repeating: 0, count: 4096)
            valid.initialize(repeating: 0, count: 64)
        }
        deinit {
            data.deallocate()
            valid.deallocate()
        }
        func clear() { valid.update(repeating: 0, count: 64) }
        @inline(__always) func isValid(_ off: Int) -> Bool { valid[off >> 6] & (1 << UInt64(off & 63)) != 0 }
        @inline(__always) func setValid(_ off: Int) { valid[off >> 6] |= 1 << UInt64(off & 63) }
    }

    private var pages: [UInt64: Page] = [:]
    private var spare: [Page] = []
    /// Guest-physical ranges that are devices, not RAM (from the header's memory layout).
    var deviceRanges: [(start: UInt64, end: UInt64)] = []
    /// Recorded MMIO accesses of the instruction group being replayed, in order.
    private(set) var recordedMMIO: [DeviceAccess] = []
    /// The emulator's MMIO accesses, in order.
    private(set) var emulatedMMIO: [DeviceAccess] = []
    /// Set when the emulator read a device address no recorded access answers.
    private(set) var unansweredDevice: DeviceAccess?
    private var nextMMIORead = 0
    /// Set when a byte the executor may have cached (decoded code, a page-table entry) changed
    /// behind its back: a new frame, a recorded byte replacing another value, or a RAM write.
    /// Newly stored bytes do not count: nothing cached came from a byte that was not there.
    var changed = true
    /// Advances whenever a stored byte changes or is dropped (a RAM write, a recorded byte
    /// replacing another value, a new frame); bytes newly stored do not advance it. Bytes stored
    /// at one generation are all still there while it lasts.
    private(set) var generation: UInt64 = 1

    /// Drops every byte (a new frame starts: its records decode alone).
    func reset() {
        changed = true
        generation &+= 1
        for (_, p) in pages { p.clear(); spare.append(p) }
        pages.removeAll(keepingCapacity: true)
        lastPage = nil
        lastData = nil
        lastValid = nil
    }

    /// Starts an instruction group: the recorded device side it must reproduce.
    func beginGroup(mmio: [DeviceAccess]) {
        recordedMMIO = mmio
        startGroup()
    }

    /// `beginGroup(mmio:)` with the MMIO accesses of `accesses`; no list is built or replaced
    /// when there are none and were none (port and MSR exits, once per record).
    func beginGroup(_ accesses: [DeviceAccess]) {
        var anyMMIO = false
        for i in accesses.indices where accesses[i].space == .mmio { anyMMIO = true; break }
        if anyMMIO {
            recordedMMIO = accesses.filter { $0.space == .mmio }
        } else if !recordedMMIO.isEmpty {
            recordedMMIO = []
        }
        startGroup()
    }

    private func startGroup() {
        if !emulatedMMIO.isEmpty { emulatedMMIO.removeAll(keepingCapacity: true) }
        if case .some = unansweredDevice { unansweredDevice = nil }
        nextMMIORead = 0
    }

    /// Stores recorded bytes (later records' bytes replace earlier ones).
    func load(_ gpa: UInt64, _ bytes: [UInt8]) {
        var a = gpa
        var k = 0
        while k < bytes.count {
            // The last page through its raw pointers (kept alive by `pages`): no reference
            // counting of the page per record.
            let base = a & ~0xFFF
            if !(base == lastBase && lastData != nil) { _ = page(base) }
            guard let data = lastData, let valid = lastValid else { return }
            let off = Int(a & 0xFFF)
            let n = min(bytes.count - k, 4096 - off)
            for j in 0..<n {
                let b = bytes[k + j]
                let o = off + j
                if valid[o >> 6] & (1 << UInt64(o & 63)) != 0 {
                    if data[o] != b { changed = true; generation &+= 1; data[o] = b }
                } else {
                    data[o] = b
                    valid[o >> 6] |= 1 << UInt64(o & 63)
                }
            }
            k += n
            a &+= UInt64(n)
        }
    }

    private func page(_ base: UInt64) -> Page {
        if base == lastBase, let p = lastPage { return p }
        if let p = pages[base] { setLast(base, p); return p }
        let p = spare.popLast() ?? Page()
        pages[base] = p
        setLast(base, p)
        return p
    }

    /// The page looked up last (a record's bytes and its instruction's accesses mostly share one),
    /// also as raw pointers for the paths run per record.
    private var lastBase: UInt64 = 0
    private var lastPage: Page?
    private var lastData: UnsafeMutablePointer<UInt8>?
    private var lastValid: UnsafeMutablePointer<UInt64>?

    @inline(__always) private func setLast(_ base: UInt64, _ p: Page) {
        lastBase = base
        lastPage = p
        lastData = p.data
        lastValid = p.valid
    }

    @inline(__always) private func existingPage(_ base: UInt64) -> Page? {
        if base == lastBase, let p = lastPage { return p }
        guard let p = pages[base] else { return nil }
        setLast(base, p)
        return p
    }

    /// Every valid byte, coalesced into runs (for `exec` inputs that reproduce a divergence).
    func contents() -> [(gpa: UInt64, bytes: [UInt8])] {
        var out: [(gpa: UInt64, bytes: [UInt8])] = []
        for base in pages.keys.sorted() {
            guard let p = pages[base] else { continue }
            var off = 0
            while off < 4096 {
                guard p.isValid(off) else { off += 1; continue }
                let start = off
                while off < 4096 && p.isValid(off) { off += 1 }
                let gpa = base + UInt64(start)
                let bytes = Array(UnsafeBufferPointer(start: p.data + start, count: off - start))
                if let last = out.last, last.gpa + UInt64(last.bytes.count) == gpa {
                    out[out.count - 1].bytes += bytes
                } else {
                    out.append((gpa, bytes))
                }
            }
        }
        return out
    }

    @inline(__always)
    func isDevice(_ gpa: UInt64, count: Int) -> Bool {
        let end = gpa &+ UInt64(count)
        for r in deviceRanges where gpa < r.end && end > r.start { return true }
        for a in recordedMMIO where gpa < a.address &+ UInt64(a.size) && end > a.address { return true }
        return false
    }

    /// KVM hands a device access to user space in pieces of at most 8 bytes (kvm_run's MMIO
    /// data field): a wider one (MOVDQU, a far pointer) is consecutive pieces, each its own
    /// exit, and is replayed as those pieces.
    static let devicePiece = 8

    func read(_ gpa: UInt64, count: Int, into buffer: UnsafeMutableRawPointer) -> PhysicalAccess {
        if count > Self.devicePiece, isDevice(gpa, count: count) {
            var k = 0
            while k < count {
                let n = min(Self.devicePiece, count - k)
                let r = read(gpa &+ UInt64(k), count: n, into: buffer + k)
                guard case .ok = r else { return r }
                k += n
            }
            return .ok
        }
        if isDevice(gpa, count: count) {
            // The device answers with the next recorded read, if it is this read.
            var i = nextMMIORead
            while i < recordedMMIO.count && recordedMMIO[i].isWrite { i += 1 }
            guard i < recordedMMIO.count, recordedMMIO[i].address == gpa, Int(recordedMMIO[i].size) == count,
                  recordedMMIO[i].data.count >= count else {
                unansweredDevice = DeviceAccess(space: .mmio, address: gpa, size: UInt8(clamping: count), isWrite: false, data: [])
                return .unbacked(gpa)
            }
            let data = recordedMMIO[i].data
            for k in 0..<count { buffer.storeBytes(of: data[k], toByteOffset: k, as: UInt8.self) }
            nextMMIORead = i + 1
            emulatedMMIO.append(DeviceAccess(space: .mmio, address: gpa, size: UInt8(clamping: count), isWrite: false,
                                             data: Array(data.prefix(count))))
            return .ok
        }
        var k = 0
        while k < count {
            let a = gpa &+ UInt64(k)
            let base = a & ~0xFFF
            if !(base == lastBase && lastData != nil) {
                guard existingPage(base) != nil else { return .unbacked(a) }
            }
            guard let data = lastData, let valid = lastValid else { return .unbacked(a) }
            let off = Int(a & 0xFFF)
            let n = min(count - k, 4096 - off)
            for j in 0..<n where valid[(off + j) >> 6] & (1 << UInt64((off + j) & 63)) == 0 { return .unbacked(a &+ UInt64(j)) }
            (buffer + k).copyMemory(from: data + off, byteCount: n)
            k += n
        }
        return .ok
    }

    func write(_ gpa: UInt64, count: Int, from buffer: UnsafeRawPointer) -> PhysicalAccess {
        if count > Self.devicePiece, isDevice(gpa, count: count) {
            var k = 0
            while k < count {
                let n = min(Self.devicePiece, count - k)
                _ = write(gpa &+ UInt64(k), count: n, from: buffer + k)
                k += n
            }
            return .ok
        }
        if isDevice(gpa, count: count) {
            let bytes = Array(UnsafeRawBufferPointer(start: buffer, count: count))
            emulatedMMIO.append(DeviceAccess(space: .mmio, address: gpa, size: UInt8(clamping: count), isWrite: true, data: bytes))
            return .ok
        }
        // RAM the emulator writes becomes known to later records of the frame.
        changed = true
        generation &+= 1
        for k in 0..<count {
            let a = gpa &+ UInt64(k)
            let p = page(a & ~0xFFF)
            let off = Int(a & 0xFFF)
            p.data[off] = buffer.load(fromByteOffset: k, as: UInt8.self)
            p.setValid(off)
        }
        return .ok
    }
}

/// Port answers from the recorded device side: IN/INS get the data the device gave, in order.
final class ReplayPorts: IOPorts {
    private var items: [(port: UInt16, size: Int, value: UInt32)] = []
    private var next = 0
    /// The emulator asked for a read the trace does not hold (more reads, or another port).
    private(set) var mismatch: (port: UInt16, size: Int)?

    func begin(_ accesses: [DeviceAccess]) {
        // Each reset only when needed, and the accesses looked at in place: this runs per record.
        if !items.isEmpty { items.removeAll(keepingCapacity: true) }
        next = 0
        if case .some = mismatch { mismatch = nil }
        for i in accesses.indices {
            guard accesses[i].space == .port && !accesses[i].isWrite else { continue }
            let a = accesses[i]
            let size = Int(a.size)
            guard size > 0 else { continue }
            for k in 0..<Int(a.count) {
                var v: UInt32 = 0
                for b in 0..<min(size, 4) where k * size + b < a.data.count { v |= UInt32(a.data[k * size + b]) << (8 * UInt32(b)) }
                items.append((UInt16(truncatingIfNeeded: a.address), size, v))
            }
        }
    }

    /// The answers in order (for `exec` inputs), by port.
    var answersByPort: [UInt16: [UInt32]] {
        var d: [UInt16: [UInt32]] = [:]
        for i in items { d[i.port, default: []].append(i.value) }
        return d
    }

    func read(port: UInt16, size: Int) -> UInt32? {
        guard next < items.count, items[next].port == port, items[next].size == size else {
            mismatch = (port, size)
            return nil
        }
        defer { next += 1 }
        return items[next].value
    }

    func write(port: UInt16, size: Int, value: UInt32) {}
}

/// MSRs outside the state schema: RDMSR answers what the device side recorded; WRMSR is accepted
/// (the executor logs both, and replay compares the log with the record).
/// A refused access (the record's `accessRefused`) is answered #GP for the MSR it names.
final class ReplayMSRs: MSRBus {
    private(set) var answers: [UInt32: UInt64] = [:]
    private var refusedIndex: UInt32?
    func begin(_ accesses: [DeviceAccess], refused: Bool = false) {
        if !answers.isEmpty { answers.removeAll(keepingCapacity: true) }
        if case .some = refusedIndex { refusedIndex = nil }
        for i in accesses.indices {
            guard accesses[i].space == .msr else { continue }
            let a = accesses[i]
            if refused { refusedIndex = UInt32(truncatingIfNeeded: a.address) } else if !a.isWrite { answers[UInt32(truncatingIfNeeded: a.address)] = a.value }
        }
    }
    func readMSR(_ index: UInt32) -> MSRResult {
        if index == refusedIndex { return .generalProtection }
        return answers[index].map { .value($0) } ?? .unanswered
    }
    func writeMSR(_ index: UInt32, value: UInt64) -> MSRResult { index == refusedIndex ? .generalProtection : .value(value) }
}

/// CPUID answers from the table the header says the guest was given.
final class HeaderCPUID: CPUIDSource {
    let entries: [CPUIDEntry]
    init(_ entries: [CPUIDEntry]) { self.entries = entries }
    func cpuid(leaf: UInt32, subleaf: UInt32) -> CPUIDResult? {
        // KVM_CPUID_FLAG_SIGNIFCANT_INDEX (1): the entry applies to one subleaf only.
        for e in entries where e.function == leaf && (e.flags & 1 == 0 || e.index == subleaf) {
            return CPUIDResult(eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
        }
        return nil
    }
}
