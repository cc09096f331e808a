import X86

/// Decoded instructions keyed by the physical address of their first byte and the decoding
/// mode (direct-mapped). Only instructions that lie within one page are cached. A write to a
/// page that holds cached code drops the entries the written bytes could overlap, so
/// self-modifying code sees its new bytes.
final class DecodeCache {
    static let size = 8192
    static let pageBits = 1 << 16
    let tag: UnsafeMutablePointer<UInt64>
    let insn: UnsafeMutablePointer<Instruction>
    /// The compact form of each entry (`.generic` when it has none).
    let fast: UnsafeMutablePointer<FastOp>
    /// Per physical page (hashed): 1 when some entry may come from it.
    let codePages: UnsafeMutablePointer<UInt8>
    var enabled = true
    /// Flushes bump a 5-bit generation kept in the tags' top bits (O(1), so replay can set a new
    /// state per record cheaply); every 32nd flush clears the table for real. Physical
    /// addresses have at most 52 bits, so `pa << 7 | mode` stays below bit 59.
    var generation: UInt64 = 0
    static let lowMask: UInt64 = (1 << 59) - 1

    init() {
        tag = .allocate(capacity: DecodeCache.size)
        tag.initialize(repeating: 0, count: DecodeCache.size)
        insn = .allocate(capacity: DecodeCache.size)
        fast = .allocate(capacity: DecodeCache.size)
        fast.initialize(repeating: FastOp(), count: DecodeCache.size)
        codePages = .allocate(capacity: DecodeCache.pageBits)
        codePages.initialize(repeating: 0, count: DecodeCache.pageBits)
    }

    deinit {
        for i in 0..<DecodeCache.size where tag[i] != 0 { (insn + i).deinitialize(count: 1) }
        tag.deallocate()
        insn.deallocate()
        fast.deallocate()
        codePages.deallocate()
    }

    @inline(__always) func key(_ pa: UInt64, _ mode: Int) -> UInt64 {
        ((pa << 7 | UInt64(mode)) &+ 1) | (generation << 59)
    }
    @inline(__always) static func index(_ pa: UInt64) -> Int { Int(pa & UInt64(size - 1)) }

    @inline(__always) func lookup(_ pa: UInt64, _ mode: Int) -> Instruction? {
        let i = DecodeCache.index(pa)
        return tag[i] == key(pa, mode) ? insn[i] : nil
    }

    func insert(_ pa: UInt64, _ mode: Int, _ x: Instruction) {
        guard enabled else { return }
        let i = DecodeCache.index(pa)
        if tag[i] == 0 { (insn + i).initialize(to: x) } else { insn[i] = x }
        fast[i] = FastOp.compile(x)
        tag[i] = key(pa, mode)
        codePages[Int((pa >> 12) & UInt64(DecodeCache.pageBits - 1))] = 1
    }

    /// Drops entries whose instruction could overlap [pa, pa + count).
    func invalidate(_ pa: UInt64, _ count: Int) {
        let start = pa >= 14 ? pa - 14 : 0
        var a = start
        while a < pa &+ UInt64(count) {
            let i = DecodeCache.index(a)
            if tag[i] > 1 && ((tag[i] & DecodeCache.lowMask) &- 1) >> 7 == a { markEmpty(i) }
            a += 1
        }
    }

    @inline(__always) private func markEmpty(_ i: Int) {
        // Keep the slot initialised (tag 1 never matches a real key: pa<<7|mode+1 >= 1 only for
        // pa 0 mode 0, which lookups of mode 0 never use since modes are 16/32/64).
        tag[i] = 1
    }

    func flushAll() {
        generation = (generation + 1) & 31
        if generation == 0 {
            for i in 0..<DecodeCache.size where tag[i] != 0 { tag[i] = 1 }
            codePages.update(repeating: 0, count: DecodeCache.pageBits)
        }
    }
}
