import Foundation
import Replay
import Trace
import X86
import XCTest

/// The hostile-* Samples guests (they attack the VMM), recorded on /dev/kvm and replayed.
extension ReplaySampleTests {
    /// hostile-mmio's 8-byte store straddling the scratch device's end exits twice, both shown
    /// committed at the same RIP; its first piece alone is also what a 4-byte store (the same bytes
    /// without REX.W) would do. The recorder must settle it with the second exit: one instruction
    /// group of two fragments, no ambiguity, and the whole trace replays.
    func testHostileMMIOStraddlingStoreIsOneInstructionGroup() throws {
        let (reader, path) = try record("hostile-mmio")
        defer { try? FileManager.default.removeItem(atPath: path) }
        var groups: [Verdict] = []
        var failing: [Verdict] = []
        let s = try ReplayRun.run(reader, options: ReplayOptions()) { v in
            if v.kind.isFailure { failing.append(v) }
            if v.kind == .match, v.exitCode == .npf, v.records == 2, v.bytes == [0x48, 0x89, 0x83, 0xFC, 0x0F, 0x00, 0x00] {
                groups.append(v)
            }
        }
        XCTAssertEqual(s.failures(allowing: []), 0, "hostile-mmio:\n" + describe(failing))
        XCTAssertEqual(s.byKind[.ambiguous, default: 0], 0)
        XCTAssertEqual(groups.count, 1, "the straddling MOV QWORD store is not one group of two write exits")
    }

    /// hostile-rep-ins: REP INSB/INSW/OUTSB with absurd counts, each stopped by a #PF on the
    /// buffer's next (not-present) page, delivered to the guest without an exit. Each group is
    /// replayed up to that #PF: three matches, none left `incomplete`, nothing failing.
    func testHostileRepInsGroupsStoppedByAPageFaultReplay() throws {
        let (reader, path) = try record("hostile-rep-ins")
        defer { try? FileManager.default.removeItem(atPath: path) }
        var stopped: [Verdict] = []
        var failing: [Verdict] = []
        let s = try ReplayRun.run(reader, options: ReplayOptions()) { v in
            if v.kind.isFailure { failing.append(v) }
            if v.kind == .match, v.note.hasPrefix("stopped by #PF") { stopped.append(v) }
        }
        XCTAssertEqual(s.failures(allowing: []), 0, "hostile-rep-ins:\n" + describe(failing))
        XCTAssertEqual(stopped.map(\.bytes), [[0xF3, 0x6C], [0x67, 0x66, 0xF3, 0x6D], [0xF3, 0x6E]], describe(stopped))  // REP INSB, INSW, OUTSB
        XCTAssertTrue(stopped.allSatisfy { $0.note.contains("cr2=0x1f1000") }, describe(stopped))
    }

    /// hostile-string-io's REP OUTSB runs from RAM's last 16 bytes past its end: each item beyond
    /// exits as an MMIO read, then as the OUT. The last item's read is not the instruction's last
    /// exit (its OUT follows), so the 32 items are one group of 48 exits that replays as a match.
    /// Its REP INSB/INSW into RAM's last bytes and past the end: KVM's emulator reads a batch of
    /// items in one IN exit, then writes the batch's device part as 8-byte MMIO writes at the same
    /// RIP. Those writes are fragments of the REP INS (the IN exit is not its last), and replay
    /// compares their bytes with the emulator's per-item writes: every record of the trace matches.
    func testHostileStringIOOutsFromPastRAMIsOneGroup() throws {
        let (reader, path) = try record("hostile-string-io")
        defer { try? FileManager.default.removeItem(atPath: path) }
        var outs: [Verdict] = []
        var ins: [Verdict] = []
        var failing: [Verdict] = []
        let s = try ReplayRun.run(reader, options: ReplayOptions()) { v in
            if v.kind.isFailure { failing.append(v) }
            if v.bytes == [0xF3, 0x6E] { outs.append(v) }
            if v.bytes == [0xF3, 0x6C] || v.bytes == [0x66, 0xF3, 0x6D] { ins.append(v) }
        }
        XCTAssertEqual(s.failures(allowing: []), 0, "hostile-string-io:\n" + describe(failing))
        XCTAssertEqual(s.byKind[.unlocated, default: 0], 0)
        XCTAssertEqual(outs.map(\.kind), [.match], describe(outs))
        XCTAssertEqual(outs.first?.records, 48, describe(outs))
        // REP INSB: IN 8 (RAM), IN 24, three 8-byte writes; REP INSW: IN 4 (2 in RAM), a 4-byte
        // write, IN 28, seven 8-byte writes.
        XCTAssertEqual(ins.map(\.kind), [.match, .match], describe(ins))
        XCTAssertEqual(ins.map(\.records), [5, 10], describe(ins))
        XCTAssertTrue(ins.allSatisfy { $0.reference == "kvm-emulator" }, describe(ins))
    }
}
