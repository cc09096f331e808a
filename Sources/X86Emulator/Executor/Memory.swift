import X86

/// Segment register indices in the hot file (the encoding's order).
@usableFromInline enum SR {
    static let es = 0, cs = 1, ss = 2, ds = 3, fs = 4, gs = 5
}

/// A direct-mapped cache of successful translations, keyed by linear page and access kind
/// (read/write/fetch × user/supervisor), so a cached entry never grants more than a walk did.
/// Flushed on CR0/CR3/CR4/EFER changes, per page by INVLPG.
final class TLB {
    static let entries = 512
    let tag: UnsafeMutablePointer<UInt64>
    let frame: UnsafeMutablePointer<UInt64>
    /// Host pointer to the physical page when it is plain RAM.
    let host: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    init() {
        tag = .allocate(capacity: TLB.entries)
        tag.initialize(repeating: 0, count: TLB.entries)
        frame = .allocate(capacity: TLB.entries)
        frame.initialize(repeating: 0, count: TLB.entries)
        host = .allocate(capacity: TLB.entries)
        host.initialize(repeating: nil, count: TLB.entries)
    }
    deinit {
        tag.deallocate()
        frame.deallocate()
        host.deallocate()
    }
    @inline(__always) static func index(_ lpn: UInt64, _ kind: UInt64) -> Int {
        Int((lpn &* 8 &+ kind) & UInt64(entries - 1))
    }
    @inline(__always) static func key(_ lpn: UInt64, _ kind: UInt64) -> UInt64 { (lpn << 3 | kind) &+ 1 }
    func flushAll() { tag.update(repeating: 0, count: TLB.entries) }
    func flush(page lpn: UInt64) {
        for k in 0..<UInt64(8) { tag[TLB.index(lpn, k)] = 0 }
    }
}

/// Access kinds for translation: bit 0 write, bit 1 user, bit 2 fetch.
@usableFromInline enum AccessKind {
    static let read: UInt64 = 0, write: UInt64 = 1, user: UInt64 = 2, fetch: UInt64 = 4
}

/// Adapts `GuestMemory` to the page walker's reader protocol.
struct WalkReader: PhysicalMemoryReader {
    let memory: GuestMemory
    func readPhysical64(_ gpa: UInt64) -> UInt64? {
        var v: UInt64 = 0
        return memory.read(gpa, count: 8, into: &v) == .ok ? v : nil
    }
    func readPhysical32(_ gpa: UInt64) -> UInt32? {
        var v: UInt32 = 0
        return memory.read(gpa, count: 4, into: &v) == .ok ? v : nil
    }
}

extension X86Executor {
    // MARK: segmentation

    @inline(__always) var is64: Bool { mode == .long64 }

    @inline(__always) func segFault(_ s: Int, _ code: UInt32 = 0) -> Stop {
        .fault(s == SR.ss ? .stackFault(code) : .generalProtection(code))
    }

    /// Checks a data access of `size` bytes at `offset` in segment `s` and returns its linear
    /// address: canonical form in 64-bit mode; usability, type and limit (expand-down too) elsewhere.
    @inline(__always)
    func linear(_ s: Int, _ offset: UInt64, _ size: Int, write: Bool) throws(Stop) -> UInt64 {
        let sg = seg[s]
        if mode == .long64 {
            let base: UInt64 = s >= SR.fs ? sg.base : 0
            let lin = base &+ offset
            if !isCanonical(lin) || !isCanonical(lin &+ UInt64(size - 1)) { throw segFault(s) }
            try alignmentCheck(lin, size)
            return lin
        }
        if mode != .real {
            // Outside real mode a segment with P=0 is unusable (a null selector was loaded).
            if !sg.present { throw segFault(s) }
            let type = sg.type
            if type & 8 != 0 {  // code: never writable, readable only with R
                if write || type & 2 == 0 { throw segFault(s) }
            } else if write && type & 2 == 0 {
                throw segFault(s)
            }
        }
        let last = offset &+ UInt64(size - 1)
        let type = sg.type
        if !sg.isSystem && type & 0xC == 0x4 {
            // Expand-down data: valid offsets are (limit, upper].
            let upper: UInt64 = sg.defaultBig ? 0xFFFF_FFFF : 0xFFFF
            if offset <= UInt64(sg.limit) || last > upper || last < offset { throw segFault(s) }
        } else if last > UInt64(sg.limit) || last < offset {
            throw segFault(s)
        }
        let lin = (sg.base &+ offset) & 0xFFFF_FFFF
        try alignmentCheck(lin, size)
        return lin
    }

    @inline(__always) func alignmentCheck(_ lin: UInt64, _ size: Int) throws(Stop) {
        if size > 1 && lin & UInt64(size - 1) != 0 && sys.cpl == 3
            && sys.cr0 & CR0.am != 0 && flagsRest & RFLAGS.ac != 0 && size <= 8 {
            throw .fault(CPUException(vector: CPUException.ac, errorCode: 0))
        }
    }

    @inline(__always) func isCanonical(_ a: UInt64) -> Bool {
        if sys.cr4 & CR4.la57 != 0 { return UInt64(bitPattern: Int64(bitPattern: a << 7) >> 7) == a }
        return UInt64(bitPattern: Int64(bitPattern: a << 16) >> 16) == a
    }

    // MARK: paging

    /// Translates a linear address; sets accessed/dirty bits as the walk goes.
    @inline(__always)
    func translate(_ lin: UInt64, _ kind: UInt64) throws(Stop) -> UInt64 {
        if sys.cr0 & CR0.pg == 0 { return lin & 0xFFFF_FFFF }
        let lpn = lin >> 12
        let i = TLB.index(lpn, kind)
        if tlb.tag[i] == TLB.key(lpn, kind) { return tlb.frame[i] | (lin & 0xFFF) }
        return try walk(lin, kind)
    }

    func walk(_ lin: UInt64, _ kind: UInt64) throws(Stop) -> UInt64 {
        var access: PageAccess = []
        if kind & AccessKind.write != 0 { access.insert(.write) }
        if kind & AccessKind.user != 0 { access.insert(.user) }
        if kind & AccessKind.fetch != 0 { access.insert(.fetch) }
        let r = PageWalker.walk(linear: lin, access: access, cr0: sys.cr0, cr3: sys.cr3, cr4: sys.cr4,
                                efer: sys.efer, memory: WalkReader(memory: memory))
        switch r {
        case .unbacked(let gpa, _):
            throw .unbacked(gpa)
        case .pageFault(let code, _):
            throw .fault(.pageFault(code, address: lin))
        case .translated(let gpa, let entries, _):
            // SMEP/SMAP (the walker leaves them to us).
            let leafUser = entries.allSatisfy { $0.value & 4 != 0 }
            if kind & AccessKind.user == 0 && leafUser {
                if kind & AccessKind.fetch != 0 && sys.cr4 & CR4.smep != 0 {
                    throw .fault(.pageFault(0x11, address: lin))
                }
                if kind & AccessKind.fetch == 0 && sys.cr4 & CR4.smap != 0 && flagsRest & RFLAGS.ac == 0
                    && sys.cpl == 3 {
                    throw .fault(.pageFault(1 | UInt32(kind & 1) << 1, address: lin))
                }
            }
            // Accessed on every level, dirty on the leaf for writes (PAE's PDPTEs have neither).
            let pae = PagingMode(cr0: sys.cr0, cr4: sys.cr4, efer: sys.efer) == .pae
            for (n, e) in entries.enumerated() {
                if pae && n == 0 { continue }
                var v = UInt8(truncatingIfNeeded: e.value)
                var nv = v | 0x20
                if n == entries.count - 1 && kind & AccessKind.write != 0 { nv |= 0x40 }
                if nv != v {
                    if case .unbacked(let a) = memory.write(e.gpa, count: 1, from: &nv) { throw .unbacked(a) }
                    v = nv
                }
            }
            let lpn = lin >> 12
            let i = TLB.index(lpn, kind)
            tlb.tag[i] = TLB.key(lpn, kind)
            tlb.frame[i] = gpa & ~0xFFF
            return gpa
        }
    }

    @inline(__always) func userKind(_ supervisor: Bool) -> UInt64 {
        (!supervisor && sys.cpl == 3) ? AccessKind.user : 0
    }

    // MARK: linear-address accesses

    /// Reads `size` (1...8) bytes at a linear address, split at a page boundary.
    @inline(__always)
    func readLinear(_ lin: UInt64, _ size: Int, supervisor: Bool = false) throws(Stop) -> UInt64 {
        let kind = userKind(supervisor)
        var v: UInt64 = 0
        let off = Int(lin & 0xFFF)
        if off + size <= 4096 {
            let pa = try translate(lin, kind)
            if case .unbacked(let a) = memory.read(pa, count: size, into: &v) { throw .unbacked(a) }
            return v
        }
        let n1 = 4096 - off
        let lin2 = wrapLinear(lin &+ UInt64(n1))
        let pa1 = try translate(lin, kind)
        let pa2 = try translate(lin2, kind)
        try withUnsafeMutableBytes(of: &v) { (b) throws(Stop) in
            if case .unbacked(let a) = memory.read(pa1, count: n1, into: b.baseAddress!) { throw .unbacked(a) }
            if case .unbacked(let a) = memory.read(pa2, count: size - n1, into: b.baseAddress! + n1) { throw .unbacked(a) }
        }
        return v
    }

    @inline(__always)
    func writeLinear(_ lin: UInt64, _ size: Int, _ value: UInt64, supervisor: Bool = false) throws(Stop) {
        let kind = userKind(supervisor) | AccessKind.write
        var v = value
        let off = Int(lin & 0xFFF)
        if off + size <= 4096 {
            let pa = try translate(lin, kind)
            if case .unbacked(let a) = memory.write(pa, count: size, from: &v) { throw .unbacked(a) }
            codeWritten(pa, size)
            return
        }
        let n1 = 4096 - off
        let lin2 = wrapLinear(lin &+ UInt64(n1))
        let pa1 = try translate(lin, kind)
        let pa2 = try translate(lin2, kind)
        try withUnsafeBytes(of: &v) { (b) throws(Stop) in
            if case .unbacked(let a) = memory.write(pa1, count: n1, from: b.baseAddress!) { throw .unbacked(a) }
            if case .unbacked(let a) = memory.write(pa2, count: size - n1, from: b.baseAddress! + n1) { throw .unbacked(a) }
        }
        codeWritten(pa1, n1)
        codeWritten(pa2, size - n1)
    }

    /// Reads or writes `count` bytes (vector operands, descriptor tables) at a linear address.
    func readLinearBytes(_ lin: UInt64, _ count: Int, into p: UnsafeMutableRawPointer, supervisor: Bool = false) throws(Stop) {
        let kind = userKind(supervisor)
        var done = 0
        while done < count {
            let l = wrapLinear(lin &+ UInt64(done))
            let n = min(count - done, 4096 - Int(l & 0xFFF))
            let pa = try translate(l, kind)
            if case .unbacked(let a) = memory.read(pa, count: n, into: p + done) { throw .unbacked(a) }
            done += n
        }
    }

    func writeLinearBytes(_ lin: UInt64, _ count: Int, from p: UnsafeRawPointer, supervisor: Bool = false) throws(Stop) {
        let kind = userKind(supervisor) | AccessKind.write
        // Translate every page first so a fault changes no memory.
        var pas: [(UInt64, Int, Int)] = []
        var done = 0
        while done < count {
            let l = wrapLinear(lin &+ UInt64(done))
            let n = min(count - done, 4096 - Int(l & 0xFFF))
            pas.append((try translate(l, kind), done, n))
            done += n
        }
        for (pa, o, n) in pas {
            if case .unbacked(let a) = memory.write(pa, count: n, from: p + o) { throw .unbacked(a) }
            codeWritten(pa, n)
        }
    }

    /// Makes sure a write of `size` bytes at `lin` would not fault (for instructions that must
    /// check all their stores before doing any).
    func probeWrite(_ lin: UInt64, _ size: Int, supervisor: Bool = false) throws(Stop) {
        let kind = userKind(supervisor) | AccessKind.write
        _ = try translate(lin, kind)
        let last = wrapLinear(lin &+ UInt64(size - 1))
        if last >> 12 != lin >> 12 { _ = try translate(last, kind) }
    }

    @inline(__always) func wrapLinear(_ l: UInt64) -> UInt64 { mode == .long64 ? l : l & 0xFFFF_FFFF }

    // MARK: segment:offset accesses

    @inline(__always)
    func readMem(_ s: Int, _ off: UInt64, _ size: Int) throws(Stop) -> UInt64 {
        try readLinear(try linear(s, off, size, write: false), size)
    }

    @inline(__always)
    func writeMem(_ s: Int, _ off: UInt64, _ size: Int, _ v: UInt64) throws(Stop) {
        try writeLinear(try linear(s, off, size, write: true), size, v)
    }

    // MARK: stack

    /// Stack address size in bytes: 8 in 64-bit mode, else SS.B.
    @inline(__always) var stackSize: Int {
        mode == .long64 ? 8 : (seg[SR.ss].defaultBig ? 4 : 2)
    }

    @inline(__always) var sp: UInt64 {
        get { gpr[4] & sizeMask(stackSize) }
    }

    @inline(__always) func setSP(_ v: UInt64) {
        switch stackSize {
        case 8: gpr[4] = v
        case 4: gpr[4] = v & 0xFFFF_FFFF  // a 32-bit stack write zero-extends in long mode too
        default: gpr[4] = (gpr[4] & ~0xFFFF) | (v & 0xFFFF)
        }
    }

    @inline(__always)
    func push(_ v: UInt64, _ size: Int) throws(Stop) {
        let m = sizeMask(stackSize)
        let nsp = (gpr[4] &- UInt64(size)) & m
        try writeMem(SR.ss, nsp, size, v)
        setSP(nsp)
    }

    @inline(__always)
    func pop(_ size: Int) throws(Stop) -> UInt64 {
        let m = sizeMask(stackSize)
        let v = try readMem(SR.ss, gpr[4] & m, size)
        setSP((gpr[4] &+ UInt64(size)) & m)
        return v
    }

    /// Reads the stack without moving SP (offset `delta` above it).
    func peek(_ size: Int, _ delta: UInt64 = 0) throws(Stop) -> UInt64 {
        let m = sizeMask(stackSize)
        return try readMem(SR.ss, (gpr[4] &+ delta) & m, size)
    }

    /// Hook for the decoded-instruction cache: a write to a physical page holding cached code.
    @inline(__always) func codeWritten(_ pa: UInt64, _ count: Int) {
        if cache.codePages[Int((pa >> 12) & UInt64(DecodeCache.pageBits - 1))] != 0 {
            cache.invalidate(pa, count)
        }
    }
}
