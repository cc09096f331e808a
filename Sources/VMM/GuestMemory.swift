import Glibc
import X86

/// Guest-physical RAM: one or more host mappings, with bounds-checked access by GPA, and
/// GVA→GPA translation by walking the guest's page tables (X86.PageWalker), the way the
/// 2006 prototype found a trapped instruction in guest memory.
///
/// Every accessor checks that the whole range lies in one region; a guest-controlled address
/// or length can never reach host memory outside the mapping.
public final class GuestMemory: PhysicalMemoryReader, @unchecked Sendable {
    public struct Region: @unchecked Sendable {
        public let guestPhysical: UInt64
        public let size: UInt64
        public let host: UnsafeMutableRawPointer
    }
    public private(set) var regions: [Region] = []

    /// Allocates `size` bytes of zeroed RAM at guest-physical `base` (anonymous mmap).
    public init(size: UInt64, base: UInt64 = 0) throws(VMMError) {
        try addRegion(guestPhysical: base, size: size)
    }

    public init() {}

    deinit {
        for r in regions { munmap(r.host, Int(r.size)) }
    }

    public func addRegion(guestPhysical: UInt64, size: UInt64) throws(VMMError) {
        guard size > 0, size & 0xFFF == 0, guestPhysical & 0xFFF == 0, size <= 1 << 40 else {
            throw VMMError.config("guest memory region of \(size) bytes at \(hex(guestPhysical)) is not page-aligned")
        }
        for r in regions where guestPhysical < r.guestPhysical + r.size && r.guestPhysical < guestPhysical + size {
            throw VMMError.config("guest memory regions overlap at \(hex(guestPhysical))")
        }
        let p = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else {
            throw VMMError.config("cannot allocate \(size >> 20) MiB of guest memory: \(String(cString: strerror(errno)))")
        }
        regions.append(Region(guestPhysical: guestPhysical, size: size, host: p))
    }

    /// Total bytes of RAM.
    public var size: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// The host address of `length` bytes at `gpa`, or nil unless all of them are RAM in one region.
    @inline(__always)
    public func host(_ gpa: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for r in regions {
            if gpa >= r.guestPhysical {
                let off = gpa - r.guestPhysical
                if off < r.size && length <= r.size - off { return r.host + Int(off) }
            }
        }
        return nil
    }

    public func contains(_ gpa: UInt64, length: UInt64 = 1) -> Bool { host(gpa, length: length) != nil }

    /// Reads `count` bytes at `gpa`, or nil when any of them is outside RAM.
    public func read(_ gpa: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, let p = host(gpa, length: UInt64(count)) else { return nil }
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    /// Writes `bytes` at `gpa`; false (and nothing written) when any byte is outside RAM.
    @discardableResult
    public func write(_ gpa: UInt64, _ bytes: [UInt8]) -> Bool {
        guard let p = host(gpa, length: UInt64(bytes.count)) else { return false }
        bytes.withUnsafeBytes { raw in
            if let base = raw.baseAddress, raw.count > 0 { p.copyMemory(from: base, byteCount: raw.count) }
        }
        return true
    }

    public func load<T: FixedWidthInteger>(_ gpa: UInt64, as: T.Type) -> T? {
        guard let p = host(gpa, length: UInt64(MemoryLayout<T>.size)) else { return nil }
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    @discardableResult
    public func store<T: FixedWidthInteger>(_ gpa: UInt64, _ value: T) -> Bool {
        guard let p = host(gpa, length: UInt64(MemoryLayout<T>.size)) else { return false }
        p.storeBytes(of: value.littleEndian, as: T.self)
        return true
    }

    /// Makes the host drop its mapping of the 4 KiB page at `gpa` and map it again, contents
    /// kept (pc-testdev's flush-page port): write-protecting the page makes the kernel's MMU
    /// notifier zap KVM's mapping of it, so the guest's next access faults it in again. The
    /// page stays readable throughout, so VMM threads reading guest memory meanwhile are safe;
    /// the caller keeps VMM writers (completions) out. False when the page is not all RAM.
    @discardableResult
    public func refaultPage(_ gpa: UInt64) -> Bool {
        let page = gpa & ~0xFFF
        guard let p = host(page, length: 0x1000) else { return false }
        guard mprotect(p, 0x1000, PROT_READ) == 0 else { return false }
        return mprotect(p, 0x1000, PROT_READ | PROT_WRITE) == 0
    }

    public func readPhysical64(_ gpa: UInt64) -> UInt64? { load(gpa, as: UInt64.self) }
    public func readPhysical32(_ gpa: UInt64) -> UInt32? { load(gpa, as: UInt32.self) }

    // MARK: linear addresses

    /// Translates a linear address with the paging mode of `state` (no side effects: accessed
    /// and dirty bits are not set).
    public func translate(_ linear: UInt64, state: CPUState, access: PageAccess = .read) -> PageWalkResult {
        PageWalker.walk(linear: linear, access: access, cr0: state.cr0, cr3: state.cr3, cr4: state.cr4,
                        efer: state.efer, memory: self)
    }

    /// Reads `count` bytes at a linear address, page by page; nil when a page is not mapped
    /// or not RAM.
    public func readLinear(_ linear: UInt64, count: Int, state: CPUState, access: PageAccess = .read) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(max(count, 0))
        var la = linear
        var left = count
        while left > 0 {
            guard case let .translated(gpa, _, _) = translate(la, state: state, access: access) else { return nil }
            let chunk = min(left, Int(4096 - (la & 0xFFF)))
            guard let bytes = read(gpa, count: chunk) else { return nil }
            out += bytes
            la &+= UInt64(chunk)
            left -= chunk
        }
        return out
    }

    /// The bytes of the instruction at CS:RIP (up to `maxBytes`, fewer if the fetch runs into
    /// an unmapped page), found by walking the guest page tables.
    public func instructionBytes(state: CPUState, maxBytes: Int = 15) -> [UInt8] {
        var linear = state.cs.base &+ state.rip
        if state.mode != .long64 { linear &= 0xFFFF_FFFF }
        var out: [UInt8] = []
        for i in 0..<maxBytes {
            guard let b = readLinear(linear &+ UInt64(i), count: 1, state: state, access: .fetch) else { break }
            out.append(b[0])
        }
        return out
    }
}

@inline(__always)
func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
