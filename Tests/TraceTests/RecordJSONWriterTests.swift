import Foundation
import XCTest
import X86
@testable import Trace

/// `show --json` writes its lines byte by byte (RecordJSONWriter); they must be exactly what
/// JSONEncoder gives the schema's Encodable form (`RecordJSONOracle`, below, as `show --json`
/// wrote them before), keys, order, escaping and all, for every kind of record and string.
final class RecordJSONWriterTests: XCTestCase {
    let naming = TraceNaming(disassemble: { b, _, _ in b == [0xEE] ? "out dx, al" : b == [0xEC] ? "in al, dx" : nil },
                             kvmExitName: { $0 == 2 ? "IO" : "R\($0)" })

    func expected(_ r: TraceRecord, _ t: TraceText) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try e.encode(RecordJSONOracle(r, text: t)), as: UTF8.self)
    }

    func testEveryKindOfRecordIsWrittenAsJSONEncoderWroteIt() throws {
        let t = TraceText(header: sampleHeader(), naming: naming)
        for (i, r) in everyKindRecords().enumerated() {
            XCTAssertEqual(t.json(r), try expected(r, t), "record \(i) (\(r.kind))")
        }
    }

    func testGoldenTracesAreWrittenAsJSONEncoderWroteThem() throws {
        for name in ["allkinds-1.0", "msrrefused-1.1", "outloop-1.0", "smp2-1.0"] {
            let reader = try TraceReader(path: GoldenFixtureTests.dir + "/\(name).estrace")
            let t = TraceText(header: reader.header, naming: naming)
            var n = 0
            try reader.forEachRecord { r in
                XCTAssertEqual(t.json(r), try expected(r, t), "\(name) seq \(r.seq)")
                n += 1
            }
            XCTAssertGreaterThan(n, 0, name)
        }
    }

    /// Notes and symbols are text from the guest's image and the VMM: every character JSON
    /// escapes, slashes (not escaped), and text beyond ASCII.
    func testStringsAreEscapedAsJSONEncoderEscapesThem() throws {
        var everyByte = ""
        for c in 0..<0x80 { everyByte.unicodeScalars.append(Unicode.Scalar(UInt8(c))) }
        let notes = [everyByte, "a/b\\c\"d", "tab\there\nnew\r\u{8}\u{c}", "é ü 漢字 🦀", "", "\u{7f}\u{1f}\u{0}"]
        let t = TraceText(header: sampleHeader(), naming: naming)
        for note in notes {
            var r = everyKindRecords()[0]
            r.note = note
            XCTAssertEqual(t.json(r), try expected(r, t), note.debugDescription)
        }
    }

    /// Values at their extremes (hex without leading zeros, 0, the largest) and optional keys
    /// present and absent (state_after, symbol, instruction_text).
    func testExtremeValuesAndOptionalKeys() throws {
        let t = TraceText(header: sampleHeader(), naming: naming)
        var r = everyKindRecords()[0]
        for v: UInt64 in [0, 1, 0xF, 0x10, 0xFFFF_FFFF, 0x1_0000_0000, UInt64.max] {
            r.state = sampleState(v)
            r.state.rax = v; r.state.cs.base = v; r.state.gdtr.limit = UInt16(truncatingIfNeeded: v)
            r.tscExit = v; r.seq = v; r.exitInfo1 = v
            r.stateAfter = v == 0 ? nil : r.state
            r.instructionBytes = v == 1 ? [] : [0xEE]
            r.state.rip = v  // no symbol for most values
            XCTAssertEqual(t.json(r), try expected(r, t), "value \(v)")
        }
    }
}

/// The JSON-lines form of a record (`show --json`): snake_case keys, 64-bit values as hex
/// strings, byte strings as plain hex, states in CPUState's JSON form.
struct RecordJSONOracle: Encodable {
    struct Access: Encodable { var space: String, address: String, size: UInt8, write: Bool, count: UInt32, data: String }
    struct Bytes: Encodable { var role: String, gpa: String, bytes: String }
    struct MSR: Encodable { var index: String, value: String }
    var seq: UInt64, vcpu: UInt16, vcpu_seq: UInt64, kind: String, reason: String
    var kvm_exit_reason: UInt32, kvm_exit_name: String
    var exit_code: String, exit_info1: String, exit_info2: String, exit_int_info: String, next_rip: String
    var instruction_start: String, instruction_bytes: String, instruction_text: String?
    var candidates: UInt8, visibility: String, group: UInt64, fragment: UInt32, last_fragment: Bool
    var tsc_exit: UInt64, tsc_entry: UInt64, symbol: String?
    var state: CPUState, state_after: CPUState?
    var accesses: [Access], memory: [Bytes], msr_writes: [MSR], access_refused: Bool, code: UInt64, note: String

    init(_ r: TraceRecord, text: TraceText) {
        seq = r.seq; vcpu = r.vcpu; vcpu_seq = r.vcpuSeq; kind = r.kind.name; reason = r.reasonName
        kvm_exit_reason = r.kvmExitReason; kvm_exit_name = text.naming.kvmExitName(r.kvmExitReason)
        exit_code = Hex.string(r.exitCode.rawValue); exit_info1 = Hex.string(r.exitInfo1); exit_info2 = Hex.string(r.exitInfo2)
        exit_int_info = Hex.string(r.exitIntInfo); next_rip = Hex.string(r.nextRIP)
        instruction_start = Hex.string(r.instructionStart); instruction_bytes = Hex.bytes(r.instructionBytes)
        instruction_text = text.instructionText(r)
        candidates = r.candidates
        visibility = r.visibility == .committed ? "committed" : r.visibility == .pending ? "pending" : "none"
        group = r.group; fragment = r.fragment; last_fragment = r.lastFragment
        tsc_exit = r.tscExit; tsc_entry = r.tscEntry; symbol = text.symbols.describe(r.state.rip)
        state = r.state; state_after = r.stateAfter
        accesses = r.accesses.map {
            Access(space: $0.space == .port ? "port" : $0.space == .mmio ? "mmio" : "msr", address: Hex.string($0.address),
                   size: $0.size, write: $0.isWrite, count: $0.count, data: Hex.bytes($0.data))
        }
        memory = r.memory.map {
            Bytes(role: ["", "instruction", "page_table", "operand_read", "written"][Int($0.role.rawValue)],
                  gpa: Hex.string($0.gpa), bytes: Hex.bytes($0.bytes))
        }
        msr_writes = r.msrWrites.map { MSR(index: Hex.string($0.index), value: Hex.string($0.value)) }
        access_refused = r.accessRefused
        code = r.code; note = r.note
    }
}

