import Foundation
import XCTest
import X86
@testable import Trace

final class TraceTextTests: XCTestCase {
    let naming = TraceNaming(disassemble: { b, _, _ in b == [0xEE] ? "out dx, al" : nil },
                             kvmExitName: { $0 == 2 ? "IO" : "R\($0)" })

    func testLineNamesReasonSymbolPortAndInstruction() {
        var r = outLoopRecord(42)
        r.seq = 42
        let t = TraceText(header: sampleHeader(), naming: naming, baseTSC: outLoopRecord(0).tscExit)
        let line = t.line(r)
        XCTAssertTrue(line.hasPrefix("       42 [000]"), line)
        for part in ["IOIO", "0x1005 (loop+0x5)", "out port 0x80 size 1 data 0x2a", "[ee] out dx, al"] {
            XCTAssertTrue(line.contains(part), "\(part) missing in \(line)")
        }
    }

    /// Events such as "vcpu stopped" carry no TSC: their line says so instead of a time before the trace began.
    func testUntimedRecordShowsADashForItsTime() {
        var r = outLoopRecord(3)
        r.tscExit = 0
        r.tscEntry = 0
        let line = TraceText(header: sampleHeader(), naming: naming, baseTSC: outLoopRecord(0).tscExit).line(r)
        XCTAssertTrue(line.contains("] " + "-".leftPad(14) + ": IOIO"), line)
        XCTAssertFalse(line.contains("-0."), line)
    }

    func testFullRecordUsesTheVMCBFieldNames() {
        let r = everyKindRecords()[0]
        let full = TraceText(header: sampleHeader(), naming: naming).full(r)
        for name in ["EXITCODE", "EXITINFO1", "EXITINFO2", "EXITINTINFO", "nRIP", "CPL", "EFER", "CR0", "RFLAGS",
                     "RIP", "RSP", "RAX", "LSTAR", "KernelGsBase", "G_PAT", "GDTR", "IDTR", "TR"] {
            XCTAssertTrue(full.contains("  \(name) "), "\(name) missing")
        }
        XCTAssertTrue(full.contains("port 0x3f8, IN"))
        XCTAssertTrue(full.contains("state after the instruction (fields that changed: rax, rip)"))
        XCTAssertTrue(full.contains("0xc0000082 <- 0xffffffff81000000"))
    }

    func testJSONLineCarriesTheStateInTheSchemaForm() throws {
        let r = everyKindRecords()[0]
        let line = TraceText(header: sampleHeader(), naming: naming).json(r)
        XCTAssertFalse(line.contains("\n"))
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual(obj["reason"] as? String, "IOIO")
        XCTAssertEqual(obj["visibility"] as? String, "pending")
        XCTAssertEqual(obj["kvm_exit_name"] as? String, "IO")
        let state = try JSONSerialization.data(withJSONObject: try XCTUnwrap(obj["state"]))
        XCTAssertEqual(try JSONDecoder().decode(CPUState.self, from: state), r.state)
        let after = try JSONSerialization.data(withJSONObject: try XCTUnwrap(obj["state_after"]))
        XCTAssertEqual(try JSONDecoder().decode(CPUState.self, from: after), r.stateAfter)
    }

    func testSummaryCountsByReasonAndFlagsCutShort() throws {
        let path = GoldenFixtureTests.dir + "/outloop-cut-1.0.estrace"
        let reader = try TraceReader(path: path)
        var s = TraceSummary()
        try reader.forEachRecord { s.add($0) }
        XCTAssertEqual(s.byReason, ["IOIO": 192])
        let text = TraceText(header: reader.header, naming: naming).summary(reader, s, filtered: false)
        XCTAssertTrue(text.contains("CUT SHORT"))
        XCTAssertTrue(text.contains("kvm_pvm"))
        XCTAssertTrue(text.contains("IOIO                     192"))
    }

    func testFixedPointFormattingMatchesPrintf() {
        for (x, d) in [(1.5, 2), (0.000014433, 9), (-0.0412, 3), (3752.664923662, 9), (0.0, 2), (12.345, 0), (0.999, 2)] {
            XCTAssertEqual(TraceText.fixed(x, d), String(format: "%.\(d)f", x).replacingOccurrences(of: "-0.00", with: "0.00"), "\(x) \(d)")
        }
    }

    func testSymbolLookup() {
        let t = SymbolTable([GuestSymbol(address: 0x2000, size: 0x10, name: "b"), GuestSymbol(address: 0x1000, size: 0, name: "a")])
        XCTAssertEqual(t.describe(0x1000), "a")
        XCTAssertEqual(t.describe(0x1fff), "a+0xfff")
        XCTAssertEqual(t.describe(0x200f), "b+0xf")
        XCTAssertNil(t.describe(0x2010))
        XCTAssertNil(t.describe(0xfff))
    }
}

/// `show`'s columns: `padded(to:)` must pad and cut exactly as Foundation's `padding(toLength:)`.
final class PaddedStringTests: XCTestCase {
    func testPaddedMatchesFoundationsPadding() {
        for s in ["", "IOIO", "EXCEPTION_DB", "0123456789", "é", "漢字漢字漢字", "🦀🦀🦀🦀🦀🦀", "a🦀b"] {
            for n in [0, 1, 4, 10, 14, 16] {
                XCTAssertEqual(s.padded(to: n), s.padding(toLength: n, withPad: " ", startingAt: 0), "\(s.debugDescription) to \(n)")
            }
        }
    }

    func testHexBytesWithAndWithoutSeparator() {
        XCTAssertEqual(Hex.bytes([UInt8]()), "")
        XCTAssertEqual(Hex.bytes([0x0F, 0x01, 0xD9, 0xA0]), "0f01d9a0")
        XCTAssertEqual(Hex.bytes([0xEE], separator: UInt8(ascii: " ")), "ee")
        XCTAssertEqual(Hex.bytes([0x66, 0x0F, 0xFF], separator: UInt8(ascii: " ")), "66 0f ff")
        XCTAssertEqual(Hex.bytes([0x12, 0x34].prefix(1)), "12")
    }
}
