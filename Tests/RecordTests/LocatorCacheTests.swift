@testable import Record
import Trace
import X86
import XCTest

/// Guest RAM with 32-bit paging done by the page walker: linear reads go through the walk, so a
/// changed page-table entry moves what a linear address reads.
final class PagedTestMemory: RecordMemory, PhysicalMemoryReader {
    var ram: [UInt64: UInt8] = [:]
    var state: CPUState
    init(state: CPUState) { self.state = state }
    func poke(_ gpa: UInt64, _ bytes: [UInt8]) { for (i, b) in bytes.enumerated() { ram[gpa + UInt64(i)] = b } }
    func poke32(_ gpa: UInt64, _ v: UInt32) { poke(gpa, (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) }) }
    func readPhysical(_ gpa: UInt64, count: Int) -> [UInt8]? {
        var out: [UInt8] = []
        for i in 0..<count {
            guard let b = ram[gpa + UInt64(i)] else { return nil }
            out.append(b)
        }
        return out
    }
    func readPhysical64(_ gpa: UInt64) -> UInt64? {
        readPhysical(gpa, count: 8).map { $0.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) } }
    }
    func readPhysical32(_ gpa: UInt64) -> UInt32? {
        readPhysical(gpa, count: 4).map { $0.enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * UInt32($1.offset)) } }
    }
    func walk(_ linear: UInt64, access: PageAccess) -> PageWalkResult {
        PageWalker.walk(linear: linear, access: access, cr0: state.cr0, cr3: state.cr3, cr4: state.cr4,
                        efer: state.efer, memory: self)
    }
    func physical(_ linear: UInt64) -> UInt64? {
        if case let .translated(gpa, _, _) = walk(linear, access: .read) { return gpa }
        return nil
    }
    func readLinear(_ linear: UInt64, count: Int) -> [UInt8]? {
        var out: [UInt8] = []
        for i in 0..<count {
            guard let p = physical(linear + UInt64(i)), let b = ram[p] else { return nil }
            out.append(b)
        }
        return out
    }
}

/// The per-vCPU cache of located instructions and their guest bytes must never hand a record
/// the bytes of an instruction that is no longer there.
final class LocatorCacheTests: XCTestCase {
    /// Protected mode with 32-bit paging: page directory at 0x10000, page table at 0x11000,
    /// linear 0x400000 mapped to `frame`.
    func pagedMachine(frame: UInt64) -> PagedTestMemory {
        var s = CPUState.flat(.protected32)
        s.cr0 |= CR0.pg
        s.cr3 = 0x10000
        s.rip = 0x400000
        s.rdx = 0x3FD
        let m = PagedTestMemory(state: s)
        m.poke32(0x10000 + (0x400000 >> 22) * 4, 0x11000 | 0x7)
        for i in 0..<1024 { m.poke32(0x11000 + UInt64(i) * 4, 0) }
        m.poke32(0x11000, UInt32(frame) | 0x7)
        return m
    }

    func buildIn(_ m: PagedTestMemory, cache: LocatorCache) -> TraceRecord {
        ExitRecordBuilder.build(ExitFacts(vcpu: 0, exit: .io(port: 0x3FD, size: 1, direction: .in, count: 1, dataOffset: 0),
                                          state: m.state, ioData: [0x60]), memory: m, cache: cache)
    }

    func testRepeatedExitReusesTheGuestBytesUntilThePageTableEntryChanges() {
        let m = pagedMachine(frame: 0x5000)
        m.poke(0x5000, [0xEC])            // in al, dx
        m.poke(0x6000, [0xE4, 0x61])      // in al, 0x61 (another frame)
        let cache = LocatorCache()
        let first = buildIn(m, cache: cache)
        let second = buildIn(m, cache: cache)
        XCTAssertEqual(first, second)
        XCTAssertEqual(cache.hits, 1)
        XCTAssertEqual(second.instructionBytes, [0xEC])
        XCTAssertEqual(second.memory.first(where: { $0.role == .instruction })?.gpa, 0x5000)
        XCTAssertTrue(second.memory.contains { $0.role == .pageTable && $0.gpa == 0x11000 })

        // The guest remaps the page: same RIP, same CR3, other bytes.
        m.poke32(0x11000, 0x6000 | 0x7)
        let third = buildIn(m, cache: cache)
        XCTAssertEqual(cache.hits, 1, "a changed page-table entry must not hit the cache")
        XCTAssertEqual(third.instructionBytes, [0xE4, 0x61])
        XCTAssertEqual(third.memory.first(where: { $0.role == .instruction }), GuestBytes(role: .instruction, gpa: 0x6000, bytes: [0xE4, 0x61]))
        XCTAssertEqual(third.memory.first(where: { $0.role == .pageTable && $0.gpa == 0x11000 })?.bytes, [0x07, 0x60, 0, 0])
        XCTAssertEqual(third, buildIn(m, cache: LocatorCache(capacity: 0)), "cached and uncached records must be equal")
    }

    func testRewrittenInstructionBytesAreLocatedAfresh() {
        let m = pagedMachine(frame: 0x5000)
        m.poke(0x5000, [0xEC])
        let cache = LocatorCache()
        _ = buildIn(m, cache: cache)
        _ = buildIn(m, cache: cache)
        XCTAssertEqual(cache.hits, 1)
        m.poke(0x5000, [0xE4, 0x61])
        let r = buildIn(m, cache: cache)
        XCTAssertEqual(cache.hits, 1)
        XCTAssertEqual(r.instructionBytes, [0xE4, 0x61])
        XCTAssertEqual(r.memory.first(where: { $0.role == .instruction })?.bytes, [0xE4, 0x61])
    }

    func testInstructionsWithMemoryOperandsCollectTheirOperandsEveryTime() {
        // outsb (DS:ESI) under a cache: the operand byte read must follow ESI and memory.
        let m = pagedMachine(frame: 0x5000)
        m.state.rip = 0x400000
        m.poke(0x5000, [0x6E])  // outsb, pending here as a REP-less string instruction at RIP
        m.poke32(0x11000 + 1 * 4, 0x7000 | 0x7)  // linear 0x401000 -> 0x7000
        m.poke(0x7000, [0xAA, 0xBB])
        let cache = LocatorCache()
        func build() -> TraceRecord {
            var s = m.state
            s.rsi = 0x401001  // committed: ESI already past the byte read at 0x401000
            s.rip = 0x400001  // committed: RIP past the OUTSB
            return ExitRecordBuilder.build(ExitFacts(vcpu: 0, exit: .io(port: 0x3FD, size: 1, direction: .out, count: 1, dataOffset: 0),
                                                     state: s, ioData: [0xAA]), memory: m, cache: cache)
        }
        let a = build()
        XCTAssertEqual(a.instructionBytes, [0x6E])
        m.poke(0x7000, [0x11])
        let b = build()
        XCTAssertTrue(b.memory.contains { $0.role == .operandRead && $0.bytes.first == 0x11 },
                      "operand bytes are read at each exit, not taken from the cache: \(b.memory)")
    }

    /// The recorder's fast path (RecordPipeline): a port exit whose instruction the cache knows is
    /// built on the pipeline's thread from the cache entry alone. That record must be the one
    /// `build` makes for the same exit, and the entry's serial must change when its bytes could.
    func testPipelinePortIORecordEqualsTheBuiltRecord() {
        let m = pagedMachine(frame: 0x5000)
        m.poke(0x5000, [0xEC])            // in al, dx
        m.poke(0x6000, [0xE4, 0x61])      // in al, 0x61
        let cache = LocatorCache()
        _ = buildIn(m, cache: cache)      // a miss: located, guest bytes remembered
        XCTAssertEqual(cache.lastHitSerial, 0, "a miss has no serial")
        m.state.rax = 0x1234              // a later exit on the same instruction, other registers
        let built = buildIn(m, cache: cache)
        let serial = cache.lastHitSerial
        XCTAssertNotEqual(serial, 0)

        let l = cache.pending(state: m.state, memory: m)
        XCTAssertEqual(cache.lastHitSerial, serial)
        guard let g = cache.guestBytes(for: l) else { return XCTFail("a hit with guest bytes") }
        let fast = ExitRecordBuilder.portIORecord(vcpu: 0, kvmExitReason: built.kvmExitReason, port: 0x3FD, size: 1, isIn: true,
                                                  data: [0x60], state: m.state, located: l, guestBytes: g,
                                                  tscExit: 0, tscEntry: 0, accesses: LocatorCache(capacity: 0))
        XCTAssertEqual(fast, built)

        // Remapped: the next hit (after one miss) is another entry, under another serial.
        m.poke32(0x11000, 0x6000 | 0x7)
        _ = buildIn(m, cache: cache)
        let remapped = buildIn(m, cache: cache)
        XCTAssertEqual(remapped.instructionBytes, [0xE4, 0x61])
        XCTAssertNotEqual(cache.lastHitSerial, 0)
        XCTAssertNotEqual(cache.lastHitSerial, serial)
    }
}
