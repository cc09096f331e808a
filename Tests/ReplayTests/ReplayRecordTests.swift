import Foundation
import Replay
import Trace
import X86
import X86Emulator
import XCTest

/// Hand-built records written through TraceWriter, read back and replayed.
final class ReplayRecordTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("replay-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    static let header = TraceHeader(kvmBackend: "kvm_pvm",
                                    memory: [MemoryRegionInfo(gpa: 0, size: 64 << 20, name: "ram"),
                                             MemoryRegionInfo(gpa: 0xD000_0000, size: 0x1000, name: "scratch-mmio")])

    /// Writes `build`'s records (it appends through the writer) and replays the trace.
    func replay(_ name: String = "t", header: TraceHeader = header, settings: TraceWriterSettings = TraceWriterSettings(),
                options: ReplayOptions = ReplayOptions(), _ build: (TraceWriter) throws -> Void) throws -> (ReplaySummary, [Verdict]) {
        let path = dir + "/\(name).estrace"
        let w = try TraceWriter(path: path, header: header, settings: settings)
        try build(w)
        _ = try w.finish()
        var verdicts: [Verdict] = []
        let s = try ReplayRun.run(try TraceReader(path: path), options: options) { verdicts.append($0) }
        return (s, verdicts)
    }

    static func real(rip: UInt64) -> CPUState {
        var s = CPUState.flat(.real)
        s.rip = rip
        return s
    }

    static func prot32(rip: UInt64) -> CPUState {
        var s = CPUState.flat(.protected32)
        s.rip = rip
        return s
    }

    func ioio(_ port: UInt16, isIn: Bool, string: Bool = false, rep: Bool = false, size: Int = 1) -> UInt64 {
        IOIOInfo(port: port, isIn: isIn, isString: string, isRep: rep, size: size, addressSize: 16).exitInfo1
    }

    // MARK: pending IN

    func pendingIn(answer: UInt8, afterAL: UInt8) -> TraceRecord {
        var s = Self.real(rip: 0x1000)
        s.rdx = 0x3FD
        s.rax = 0x1234
        var after = s
        after.rip = 0x1001
        after.rax = 0x1200 | UInt64(afterAL)
        return TraceRecord(kind: .exit, kvmExitReason: 2, exitCode: .ioio, exitInfo1: ioio(0x3FD, isIn: true),
                           exitInfo2: 0x1001, nextRIP: 0x1001, instructionStart: 0x1000, instructionBytes: [0xEC],
                           candidates: 1, visibility: .pending, state: s, stateAfter: after,
                           accesses: [DeviceAccess(space: .port, address: 0x3FD, size: 1, isWrite: false, data: [answer])],
                           memory: [GuestBytes(role: .instruction, gpa: 0x1000, bytes: [0xEC])])
    }

    func testPendingInMatchesWithTheRecordedAnswerFedBack() throws {
        let (s, v) = try replay { w in try w.append(pendingIn(answer: 0x60, afterAL: 0x60)) }
        XCTAssertEqual(v.count, 1)
        XCTAssertEqual(v[0].kind, .match, v[0].summaryLine)
        XCTAssertEqual(v[0].reference, "kvm-emulator")
        XCTAssertEqual(v[0].mnemonic, "in")
        XCTAssertEqual(s.byKind[.match], 1)
        XCTAssertEqual(s.forms.count, 1)
        XCTAssertEqual(s.failures(allowing: []), 0)
    }

    func testPendingInWithAWrongStateAfterIsADivergenceNamingRAX() throws {
        // The recorded state after says AL = 0x61, but the device answered 0x60.
        let (s, v) = try replay { w in try w.append(pendingIn(answer: 0x60, afterAL: 0x61)) }
        XCTAssertEqual(v[0].kind, .divergence)
        XCTAssertEqual(v[0].differences.map(\.field), ["rax"])
        XCTAssertEqual(v[0].differences.first?.recorded, "0x1261")
        XCTAssertEqual(v[0].differences.first?.emulated, "0x1260")
        XCTAssertEqual(s.firstDivergence?.seq, v[0].seq)
        XCTAssertEqual(s.failures(allowing: []), 1)
        XCTAssertEqual(s.failures(allowing: [.divergence]), 0)
    }

    /// The test double: an emulator that gets an instruction wrong on purpose. Replay of
    /// records that match with the real executor must then diverge, naming the register and
    /// giving the recorded and the emulated value.
    func testADeliberatelyWrongEmulatorResultIsCaughtNamingTheRegister() throws {
        let fault = InjectedFault(mnemonic: "in", register: 0, xor: 0x100)  // RAX
        let (s, v) = try replay(options: ReplayOptions(injectedFault: fault)) { w in
            try w.append(pendingIn(answer: 0x60, afterAL: 0x60))
        }
        XCTAssertEqual(v[0].kind, .divergence, v[0].summaryLine)
        XCTAssertEqual(v[0].differences.map(\.field), ["rax"])
        XCTAssertEqual(v[0].differences.first?.recorded, "0x1260")
        XCTAssertEqual(v[0].differences.first?.emulated, "0x1360")
        XCTAssertEqual(s.failures(allowing: []), 1)

        // RCX after a committed OUT, and with two jobs: the same catch.
        let rcx = InjectedFault(mnemonic: "out", register: 1, xor: 1)
        let (_, out) = try replay("out", options: ReplayOptions(jobs: 2, injectedFault: rcx)) { w in
            try w.append(committedOut(value: 0x41, recordedData: 0x41))
        }
        XCTAssertEqual(out[0].kind, .divergence, out[0].summaryLine)
        XCTAssertEqual(out[0].differences.map(\.field), ["rcx"])

        // Another mnemonic: nothing injected, the record matches.
        let (_, clean) = try replay("clean", options: ReplayOptions(injectedFault: InjectedFault(mnemonic: "nop", register: 0, xor: 1))) { w in
            try w.append(pendingIn(answer: 0x60, afterAL: 0x60))
        }
        XCTAssertEqual(clean[0].kind, .match, clean[0].summaryLine)
    }

    // MARK: committed OUT

    func committedOut(value: UInt8, recordedData: UInt8) -> TraceRecord {
        // `out dx, al` at 0x1000 has taken effect: RIP is past it.
        var s = Self.real(rip: 0x1001)
        s.rdx = 0x3F8
        s.rax = UInt64(value)
        s.rflags = 0x46
        return TraceRecord(kind: .exit, kvmExitReason: 2, exitCode: .ioio, exitInfo1: ioio(0x3F8, isIn: false),
                           exitInfo2: 0x1001, nextRIP: 0x1001, instructionStart: 0x1000, instructionBytes: [0xEE],
                           candidates: 1, visibility: .committed, state: s,
                           accesses: [DeviceAccess(space: .port, address: 0x3F8, size: 1, isWrite: true, data: [recordedData])],
                           memory: [GuestBytes(role: .instruction, gpa: 0x1000, bytes: [0xEE])])
    }

    func testCommittedOutIsReplayedFromTheRebuiltStateBefore() throws {
        let (_, v) = try replay { w in try w.append(committedOut(value: 0x41, recordedData: 0x41)) }
        XCTAssertEqual(v[0].kind, .match, v[0].summaryLine)
        XCTAssertEqual(v[0].rip, 0x1000)
    }

    func testNewBytesAtAnAddressAreRunNotTheInstructionDecodedThereBefore() throws {
        // Replay keeps the executor's decoded instructions from record to record; a record whose
        // bytes at the same address differ must run its own instruction (out dx, ax here).
        var wide = committedOut(value: 0x41, recordedData: 0x41)
        wide.state.rax = 0x4241
        wide.exitInfo1 = ioio(0x3F8, isIn: false, size: 2)
        wide.instructionBytes = [0xEF]
        wide.accesses = [DeviceAccess(space: .port, address: 0x3F8, size: 2, isWrite: true, data: [0x41, 0x42])]
        wide.memory = [GuestBytes(role: .instruction, gpa: 0x1000, bytes: [0xEF])]
        let (_, v) = try replay { w in
            try w.append(committedOut(value: 0x41, recordedData: 0x41))
            try w.append(wide)
            try w.append(committedOut(value: 0x43, recordedData: 0x43))
        }
        XCTAssertEqual(v.map(\.kind), [.match, .match, .match], v.map(\.summaryLine).joined(separator: "\n"))
        XCTAssertEqual(v.map(\.form), ["out r16,r8", "out r16,r16", "out r16,r8"])
    }

    func testCommittedOutWithAnotherValueIsCaughtAsPortValue() throws {
        let (_, v) = try replay { w in try w.append(committedOut(value: 0x41, recordedData: 0x42)) }
        XCTAssertEqual(v[0].kind, .divergence)
        XCTAssertEqual(v[0].differences.map(\.field), ["port.value"])
        XCTAssertEqual(v[0].differences.first?.recorded, "0x42")
        XCTAssertEqual(v[0].differences.first?.emulated, "0x41")
        // The reproduction is the rebuilt state before: RIP on the instruction.
        XCTAssertEqual(v[0].reproduction?.state.rip, 0x1000)
    }

    // MARK: REP OUTSB in fragments

    func repOutsFragments(_ text: [UInt8], lastData: UInt8? = nil) -> [TraceRecord] {
        var out: [TraceRecord] = []
        for (k, b) in text.enumerated() {
            var s = Self.real(rip: 0x1000)  // KVM exits each iteration with RIP on the instruction
            s.rdx = 0x3F8
            s.rsi = 0x2000 + UInt64(k + 1)
            s.rcx = UInt64(text.count - k - 1)
            let last = k == text.count - 1
            let data = last ? (lastData ?? b) : b
            out.append(TraceRecord(kind: .exit, kvmExitReason: 2, exitCode: .ioio,
                                   exitInfo1: ioio(0x3F8, isIn: false, string: true, rep: true), exitInfo2: 0x1002,
                                   nextRIP: 0x1002, instructionStart: 0x1000, instructionBytes: [0xF3, 0x6E], candidates: 1,
                                   visibility: .committed, fragment: UInt32(k), lastFragment: last, state: s,
                                   accesses: [DeviceAccess(space: .port, address: 0x3F8, size: 1, isWrite: true, data: [data])],
                                   memory: [GuestBytes(role: .instruction, gpa: 0x1000, bytes: [0xF3, 0x6E]),
                                            GuestBytes(role: .operandRead, gpa: 0x2000 + UInt64(k), bytes: [b])]))
        }
        return out
    }

    func appendGroup(_ w: TraceWriter, _ records: [TraceRecord]) throws {
        var group: UInt64 = 0
        for (k, var r) in records.enumerated() {
            if k > 0 { r.group = group }
            let seq = try w.append(r)
            if k == 0 { group = seq }
        }
    }

    func testRepOutsbFragmentsReplayAsOneInstruction() throws {
        let (s, v) = try replay { w in try appendGroup(w, repOutsFragments(Array("abc".utf8))) }
        XCTAssertEqual(v.count, 1)
        XCTAssertEqual(v[0].kind, .match, v[0].summaryLine)
        XCTAssertEqual(v[0].records, 3)
        XCTAssertEqual(v[0].form, "rep outs r16,m8")
        XCTAssertEqual(s.records, 3)
    }

    func testRepOutsbWithATamperedLastFragmentNamesThatItem() throws {
        let (_, v) = try replay { w in try appendGroup(w, repOutsFragments(Array("abc".utf8), lastData: 0x7A)) }
        XCTAssertEqual(v[0].kind, .divergence)
        XCTAssertEqual(v[0].differences.map(\.field), ["port[2].value"])
    }

    func testAGroupCutShortIsIncompleteNotAGuess() throws {
        let (_, v) = try replay { w in try appendGroup(w, Array(repOutsFragments(Array("abc".utf8)).prefix(2))) }
        XCTAssertEqual(v.count, 1)
        XCTAssertEqual(v[0].kind, .incomplete)
    }

    /// A REP OUTSB of `text.count` fragments after one OUT, on vCPU 0, with a vCPU 1 marker between
    /// fragments, in frames of `frameRecords` records: the group's fragments span frames.
    func writeSpanningGroup(_ name: String, _ text: String, keep: Int? = nil, lastData: UInt8? = nil, frameRecords: Int = 2) throws -> String {
        let path = dir + "/\(name).estrace"
        let w = try TraceWriter(path: path, header: TraceHeader(kvmBackend: "kvm_pvm", vcpuCount: 2),
                                settings: TraceWriterSettings(maxRecordsPerFrame: frameRecords))
        try w.append(committedOut(value: 0x41, recordedData: 0x41))
        var group: UInt64 = 0
        for (k, var r) in repOutsFragments(Array(text.utf8), lastData: lastData).prefix(keep ?? text.utf8.count).enumerated() {
            if k > 0 { r.group = group }
            let seq = try w.append(r)
            if k == 0 { group = seq }
            if k == 1 { try w.append(TraceRecord(kind: .marker, vcpu: 1, code: 7)) }
        }
        try w.append(committedOut(value: 0x42, recordedData: 0x42))
        _ = try w.finish()
        return path
    }

    func runBoth(_ path: String, jobs: Int) throws -> (ReplaySummary, [Verdict], ReplaySummary, [Verdict]) {
        let reader = try TraceReader(path: path)
        var all: [Verdict] = [], failing: [Verdict] = []
        let s1 = try ReplayRun.run(reader, options: ReplayOptions(jobs: jobs)) { all.append($0) }
        let s2 = try ReplayRun.run(reader, options: ReplayOptions(jobs: jobs, delivery: .failures)) { failing.append($0) }
        return (s1, all, s2, failing)
    }

    func testAGroupWhoseFragmentsSpanFramesIsReplayedAsOneInstruction() throws {
        let path = try writeSpanningGroup("span", "hello")
        XCTAssertGreaterThanOrEqual(try TraceReader(path: path).frames.filter { $0.vcpu == 0 }.count, 3)
        for jobs in [1, 2] {
            let (s, v, s2, failing) = try runBoth(path, jobs: jobs)
            XCTAssertEqual(v.map(\.kind), [.match, .match, .notReplayable, .match], "jobs \(jobs): \(v.map(\.summaryLine))")
            XCTAssertEqual(v[1].records, 5)
            XCTAssertEqual(v[1].form, "rep outs r16,m8")
            XCTAssertEqual(v.map(\.seq), v.map(\.seq).sorted())
            XCTAssertEqual(s.records, 8)
            XCTAssertTrue(failing.isEmpty)
            XCTAssertEqual(s2.byKind, s.byKind)
            XCTAssertEqual(s2.records, s.records)
        }
    }

    func testAGroupSpanningFramesWithATamperedLastFragmentNamesThatItem() throws {
        let path = try writeSpanningGroup("span-bad", "hello", lastData: 0x7A)
        for jobs in [1, 2] {
            let (_, v, s2, failing) = try runBoth(path, jobs: jobs)
            XCTAssertEqual(v[1].kind, .divergence, v[1].summaryLine)
            XCTAssertEqual(v[1].differences.map(\.field), ["port[4].value"])
            XCTAssertEqual(failing.map(\.seq), [v[1].seq])
            XCTAssertEqual(s2.byKind[.divergence], 1)
            XCTAssertEqual(s2.byKind[.match], 2)
        }
    }

    func testAGroupSpanningFramesThatNeverFinishesIsIncomplete() throws {
        let path = try writeSpanningGroup("span-cut", "hello", keep: 4)
        for jobs in [1, 2] {
            let (s, v, _, failing) = try runBoth(path, jobs: jobs)
            XCTAssertEqual(v.map(\.kind), [.match, .incomplete, .notReplayable, .match], v.map(\.summaryLine).joined(separator: "\n"))
            XCTAssertEqual(v[1].records, 4)
            XCTAssertEqual(failing.map(\.kind), [.incomplete])
            XCTAssertEqual(s.records, 7)
        }
    }

    // MARK: MMIO

    func testMMIOReadAndWriteMatch() throws {
        // mov eax, [0xD0000000] (pending read) then mov [0xD0000004], ebx (committed write).
        let load: [UInt8] = [0x8B, 0x05, 0x00, 0x00, 0x00, 0xD0]
        let store: [UInt8] = [0x89, 0x1D, 0x04, 0x00, 0x00, 0xD0]
        var s1 = Self.prot32(rip: 0x2000)
        var a1 = s1
        a1.rip = 0x2006
        a1.rax = 0xCAFE_F00D
        s1.rbx = 0x1122_3344
        a1.rbx = s1.rbx
        var s2 = a1
        s2.rip = 0x200C
        let (_, v) = try replay { w in
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 6, exitCode: .npf, exitInfo1: NPFInfo.finalAddress,
                                     exitInfo2: 0xD000_0000, nextRIP: 0x2006, instructionStart: 0x2000, instructionBytes: load,
                                     candidates: 1, visibility: .pending, state: s1, stateAfter: a1,
                                     accesses: [DeviceAccess(space: .mmio, address: 0xD000_0000, size: 4, isWrite: false,
                                                             data: [0x0D, 0xF0, 0xFE, 0xCA])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x2000, bytes: load)]))
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 6, exitCode: .npf, exitInfo1: NPFInfo.finalAddress | NPFInfo.write,
                                     exitInfo2: 0xD000_0004, nextRIP: 0x200C, instructionStart: 0x2006, instructionBytes: store,
                                     candidates: 1, visibility: .committed, state: s2,
                                     accesses: [DeviceAccess(space: .mmio, address: 0xD000_0004, size: 4, isWrite: true,
                                                             data: [0x44, 0x33, 0x22, 0x11])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x2006, bytes: store)]))
        }
        XCTAssertEqual(v.map(\.kind), [.match, .match], v.map(\.summaryLine).joined(separator: "\n"))
        XCTAssertEqual(v.map(\.reason), ["NPF", "NPF"])
    }

    /// KVM's MMIO exits carry at most 8 bytes: a 16-byte MOVDQU read is two exits (8 + 8),
    /// replayed as one instruction group; a RET through an MMIO stack goes to the value read,
    /// not to nRIP; a DIV by an MMIO zero raises #DE after its read.
    func testDeviceReadsInPiecesATransferAndAFaultAfterTheRead() throws {
        var s = CPUState.flat(.protected32)
        s.rip = 0x2000
        s.rbx = 0xD000_0000
        s.cr4 |= CR4.osfxsr  // SSE enabled (without it MOVDQU is #UD, before any access)
        let movdqu: [UInt8] = [0xF3, 0x0F, 0x6F, 0x03]
        func piece(_ gpa: UInt64, _ data: [UInt8], fragment: UInt32, last: Bool) -> TraceRecord {
            var r = TraceRecord(kind: .exit, kvmExitReason: 6, exitCode: .npf, exitInfo1: NPFInfo.finalAddress,
                                exitInfo2: gpa, nextRIP: 0x2004, instructionStart: 0x2000, instructionBytes: movdqu,
                                candidates: 1, visibility: .pending, state: s,
                                accesses: [DeviceAccess(space: .mmio, address: gpa, size: UInt8(data.count), isWrite: false, data: data)],
                                memory: [GuestBytes(role: .instruction, gpa: 0x2000, bytes: movdqu)])
            r.fragment = fragment
            r.lastFragment = last
            return r
        }
        let ret: [UInt8] = [0xC3]
        var rs = CPUState.flat(.protected32)
        rs.rip = 0x2010
        rs.rsp = 0xD000_0100
        let div: [UInt8] = [0xF7, 0x33]  // div dword ptr [rbx]
        var ds = CPUState.flat(.protected32)
        ds.rip = 0x2020
        ds.rbx = 0xD000_0200
        let (_, v) = try replay(header: Self.longHeader) { w in
            try w.append(piece(0xD000_0000, [1, 2, 3, 4, 5, 6, 7, 8], fragment: 0, last: false))
            var second = piece(0xD000_0008, [9, 10, 11, 12, 13, 14, 15, 16], fragment: 1, last: true)
            second.group = 0
            try w.append(second)
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 6, exitCode: .npf, exitInfo1: NPFInfo.finalAddress,
                                     exitInfo2: 0xD000_0100, nextRIP: 0x2011, instructionStart: 0x2010, instructionBytes: ret,
                                     candidates: 1, visibility: .pending, state: rs,
                                     accesses: [DeviceAccess(space: .mmio, address: 0xD000_0100, size: 4, isWrite: false,
                                                             data: [0x00, 0x40, 0, 0])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x2010, bytes: ret)]))
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 6, exitCode: .npf, exitInfo1: NPFInfo.finalAddress,
                                     exitInfo2: 0xD000_0200, nextRIP: 0x2022, instructionStart: 0x2020, instructionBytes: div,
                                     candidates: 1, visibility: .pending, state: ds,
                                     accesses: [DeviceAccess(space: .mmio, address: 0xD000_0200, size: 4, isWrite: false,
                                                             data: [0, 0, 0, 0])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x2020, bytes: div)]))
        }
        XCTAssertEqual(v.map(\.kind), [.match, .match, .match], v.map(\.summaryLine).joined(separator: "\n"))
        XCTAssertEqual(v.first?.records, 2)
        XCTAssertTrue(v.last?.note.contains("#DE") ?? false, v.last?.note ?? "")

        // The same DIV with a state after that shows no fault is caught.
        var after = ds
        after.rip = 0x2022
        let (_, v2) = try replay("t2", header: Self.longHeader) { w in
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 6, exitCode: .npf, exitInfo1: NPFInfo.finalAddress,
                                     exitInfo2: 0xD000_0200, nextRIP: 0x2022, instructionStart: 0x2020, instructionBytes: div,
                                     candidates: 1, visibility: .pending, state: ds, stateAfter: after,
                                     accesses: [DeviceAccess(space: .mmio, address: 0xD000_0200, size: 4, isWrite: false,
                                                             data: [0, 0, 0, 0])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x2020, bytes: div)]))
        }
        XCTAssertEqual(v2.first?.kind, .divergence)
        XCTAssertEqual(v2.first?.differences.map(\.field), ["exception"])
    }

    func testACommittedPushIntoAnMMIOStackIsReplayedFromESPRebuilt() throws {
        let push: [UInt8] = [0x6A, 0x12]  // push 0x12
        var s = Self.prot32(rip: 0x2002)
        s.rsp = 0xD000_00FC
        func record(_ data: [UInt8]) -> TraceRecord {
            TraceRecord(kind: .exit, kvmExitReason: 6, exitCode: .npf, exitInfo1: NPFInfo.finalAddress | NPFInfo.write,
                        exitInfo2: 0xD000_00FC, nextRIP: 0x2002, instructionStart: 0x2000, instructionBytes: push,
                        candidates: 1, visibility: .committed, state: s,
                        accesses: [DeviceAccess(space: .mmio, address: 0xD000_00FC, size: 4, isWrite: true, data: data)],
                        memory: [GuestBytes(role: .instruction, gpa: 0x2000, bytes: push)])
        }
        let (_, v) = try replay { w in try w.append(record([0x12, 0, 0, 0])) }
        XCTAssertEqual(v.first?.kind, .match, v.first?.summaryLine ?? "")
        let (_, bad) = try replay("t2") { w in try w.append(record([0x13, 0, 0, 0])) }
        XCTAssertEqual(bad.first?.differences.map(\.field), ["mmio.value"])
    }

    static let longHeader = TraceHeader(kvmBackend: "kvm_pvm",
                                        memory: [MemoryRegionInfo(gpa: 0, size: 64 << 20, name: "ram"),
                                                 MemoryRegionInfo(gpa: 0xD000_0000, size: 0x1000, name: "scratch-mmio")])

    func testMMIOWriteOfAnotherValueNamesMMIOValue() throws {
        let store: [UInt8] = [0x89, 0x1D, 0x04, 0x00, 0x00, 0xD0]
        var s = Self.prot32(rip: 0x2006)
        s.rbx = 0x1122_3344
        let (_, v) = try replay { w in
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 6, exitCode: .npf, exitInfo1: NPFInfo.finalAddress | NPFInfo.write,
                                     exitInfo2: 0xD000_0004, nextRIP: 0x2006, instructionStart: 0x2000, instructionBytes: store,
                                     candidates: 1, visibility: .committed, state: s,
                                     accesses: [DeviceAccess(space: .mmio, address: 0xD000_0004, size: 4, isWrite: true,
                                                             data: [0x45, 0x33, 0x22, 0x11])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x2000, bytes: store)]))
        }
        XCTAssertEqual(v[0].kind, .divergence)
        XCTAssertEqual(v[0].differences.map(\.field), ["mmio.value"])
    }

    // MARK: MSR

    func testWRMSRAndRDMSRMatch() throws {
        var w1 = Self.prot32(rip: 0x3000)
        w1.rcx = UInt64(MSRIndex.star)
        w1.rdx = 0x0023_0010
        w1.rax = 0
        var r1 = Self.prot32(rip: 0x3002)
        r1.rcx = 0x1B  // APIC base: answered by the device side
        var r1after = r1
        r1after.rip = 0x3004
        r1after.rax = 0xFEE0_0900
        r1after.rdx = 0
        let (_, v) = try replay { w in
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 30, exitCode: .msr, exitInfo1: 1, nextRIP: 0x3002,
                                     instructionStart: 0x3000, instructionBytes: [0x0F, 0x30], candidates: 1, visibility: .pending,
                                     state: w1,
                                     accesses: [DeviceAccess(space: .msr, address: UInt64(MSRIndex.star), size: 8, isWrite: true,
                                                             data: [0, 0, 0, 0, 0x10, 0, 0x23, 0])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x3000, bytes: [0x0F, 0x30])]))
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 29, exitCode: .msr, exitInfo1: 0, nextRIP: 0x3004,
                                     instructionStart: 0x3002, instructionBytes: [0x0F, 0x32], candidates: 1, visibility: .pending,
                                     state: r1, stateAfter: r1after,
                                     accesses: [DeviceAccess(space: .msr, address: 0x1B, size: 8, isWrite: false,
                                                             data: [0x00, 0x09, 0xE0, 0xFE, 0, 0, 0, 0])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x3002, bytes: [0x0F, 0x32])]))
        }
        XCTAssertEqual(v.map(\.kind), [.match, .match], v.map(\.summaryLine).joined(separator: "\n"))
    }

    func testWRMSROfAnotherValueNamesMSRValue() throws {
        var w1 = Self.prot32(rip: 0x3000)
        w1.rcx = UInt64(MSRIndex.star)
        w1.rdx = 0x0023_0010
        let (_, v) = try replay { w in
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 30, exitCode: .msr, exitInfo1: 1, nextRIP: 0x3002,
                                     instructionStart: 0x3000, instructionBytes: [0x0F, 0x30], candidates: 1, visibility: .pending,
                                     state: w1,
                                     accesses: [DeviceAccess(space: .msr, address: UInt64(MSRIndex.star), size: 8, isWrite: true,
                                                             data: [0, 0, 0, 0, 0x10, 0, 0x24, 0])],
                                     memory: [GuestBytes(role: .instruction, gpa: 0x3000, bytes: [0x0F, 0x30])]))
        }
        XCTAssertEqual(v[0].kind, .divergence)
        XCTAssertEqual(v[0].differences.map(\.field), ["msr.value"])
    }

    // MARK: steps, unrecorded memory, ambiguity

    func step(_ bytes: [UInt8], state: CPUState, memory extra: [GuestBytes] = []) -> TraceRecord {
        TraceRecord(kind: .step, kvmExitReason: 4, exitCode: .exception(1), instructionStart: state.rip, instructionBytes: bytes,
                    candidates: 1, visibility: .pending, state: state,
                    memory: [GuestBytes(role: .instruction, gpa: state.rip, bytes: bytes)] + extra)
    }

    func testStepsAreCheckedAgainstTheNextStepsState() throws {
        // add eax, [0x5000] ; inc ecx ; (next step)
        let add: [UInt8] = [0x03, 0x05, 0x00, 0x50, 0x00, 0x00]
        var s0 = Self.prot32(rip: 0x4000)
        s0.rax = 5
        var s1 = s0
        s1.rip = 0x4006
        s1.rax = 12
        s1.rflags = 0x2 | RFLAGS.pf  // 12 = 0b1100: even parity
        var s2 = s1
        s2.rip = 0x4007
        s2.rcx = 1
        s2.rflags = 0x2  // INC to 1: odd parity, not zero, CF kept (clear)
        var wrong = s2
        wrong.rcx = 2
        let (_, v) = try replay { w in
            try w.append(step(add, state: s0, memory: [GuestBytes(role: .operandRead, gpa: 0x5000, bytes: [7, 0, 0, 0])]))
            try w.append(step([0x41], state: s1))
            try w.append(step([0x90], state: wrong))
        }
        XCTAssertEqual(v.count, 3)
        XCTAssertEqual(v[0].kind, .match, v[0].summaryLine)
        XCTAssertEqual(v[1].kind, .divergence)
        XCTAssertEqual(v[1].differences.map(\.field), ["rcx"])
        XCTAssertEqual(v[2].kind, .incomplete, "the last step has no state after it")
    }

    func testMemoryTheRecordDoesNotHoldIsUnrecordedWithItsAddress() throws {
        let add: [UInt8] = [0x03, 0x05, 0x00, 0x50, 0x00, 0x00]
        var s0 = Self.prot32(rip: 0x4000)
        s0.rax = 5
        var s1 = s0
        s1.rip = 0x4006
        let (s, v) = try replay { w in
            try w.append(step(add, state: s0))
            try w.append(step([0x90], state: s1))
        }
        XCTAssertEqual(v[0].kind, .unrecorded)
        XCTAssertEqual(v[0].address, 0x5000)
        XCTAssertEqual(s.failures(allowing: [.unrecorded, .incomplete]), 0)
    }

    func testAmbiguousAndUnlocatedExitsGetTheirOwnVerdicts() throws {
        var r = committedOut(value: 1, recordedData: 1)
        r.candidates = 2
        var u = committedOut(value: 1, recordedData: 1)
        u.candidates = 0
        u.instructionBytes = []
        let (_, v) = try replay { w in
            try w.append(r)
            try w.append(u)
            try w.append(TraceRecord(kind: .marker, code: 1))
        }
        XCTAssertEqual(v.map(\.kind), [.ambiguous, .unlocated, .notReplayable])
    }

    func testCommittedRegisterDestinationIsUnreconstructable() throws {
        // A committed `add eax, [mmio]` cannot be undone: EAX's old value is gone.
        let bytes: [UInt8] = [0x03, 0x05, 0x00, 0x00, 0x00, 0xD0]
        let s = Self.prot32(rip: 0x2006)
        let (_, v) = try replay { w in
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 6, exitCode: .npf, exitInfo1: NPFInfo.finalAddress | NPFInfo.write,
                                     exitInfo2: 0xD000_0000, nextRIP: 0x2006, instructionStart: 0x2000, instructionBytes: bytes,
                                     candidates: 1, visibility: .committed, state: s,
                                     memory: [GuestBytes(role: .instruction, gpa: 0x2000, bytes: bytes)]))
        }
        XCTAssertEqual(v[0].kind, .unreconstructable)
    }

    // MARK: the file

    func testACorruptedTraceIsACleanErrorWithAnOffset() throws {
        let path = dir + "/c.estrace"
        let w = try TraceWriter(path: path, header: Self.header)
        for _ in 0..<50 { try w.append(committedOut(value: 0x41, recordedData: 0x41)) }
        _ = try w.finish()
        var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        // Flip bytes in the middle of the first frame's payload.
        let r = try TraceReader(path: path)
        let at = Int(r.frames[0].offset) + 60
        for k in 0..<8 { bytes[at + k] ^= 0x5A }
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            let reader = try TraceReader(path: path)
            _ = try ReplayRun.run(reader) { _ in }
            XCTFail("a corrupted frame replayed without an error")
        } catch let e as TraceError {
            XCTAssertNotNil(e.offset, "\(e)")
            XCTAssertTrue("\(e)".contains("checksum") || "\(e)".contains("corrupt"), "\(e)")
        }
    }

    func testJobsTwoGivesTheSameVerdictsInTheSameOrder() throws {
        let header = TraceHeader(kvmBackend: "kvm_pvm", vcpuCount: 2)
        let path = dir + "/j.estrace"
        let w = try TraceWriter(path: path, header: header, settings: TraceWriterSettings(maxRecordsPerFrame: 7))
        for i in 0..<200 {
            var r = committedOut(value: UInt8(i & 0x7F), recordedData: UInt8(i % 13 == 0 ? 0xFF : i & 0x7F))
            r.vcpu = UInt16(i % 3 == 0 ? 1 : 0)
            try w.append(r)
            if i % 17 == 0 { try w.append(TraceRecord(kind: .marker, vcpu: r.vcpu, code: UInt64(i))) }
        }
        _ = try w.finish()
        let reader = try TraceReader(path: path)
        XCTAssertGreaterThan(reader.frames.count, 4)
        var one: [String] = [], two: [String] = []
        let s1 = try ReplayRun.run(reader, options: ReplayOptions(jobs: 1)) { one.append($0.jsonLine()) }
        let s2 = try ReplayRun.run(reader, options: ReplayOptions(jobs: 2)) { two.append($0.jsonLine()) }
        XCTAssertEqual(one, two)
        XCTAssertEqual(one.count, 200 + 12)
        XCTAssertEqual(s1.byKind, s2.byKind)
        XCTAssertEqual(s1.byKind[.divergence], 16)
        // Passing verdicts only counted: the same summary, and only the failing verdicts delivered.
        for jobs in [1, 2] {
            var failing: [String] = []
            let s3 = try ReplayRun.run(reader, options: ReplayOptions(jobs: jobs, delivery: .failures)) { failing.append($0.jsonLine()) }
            XCTAssertEqual(s3.byKind, s1.byKind)
            XCTAssertEqual(s3.byReason, s1.byReason)
            XCTAssertEqual(s3.byMnemonic, s1.byMnemonic)
            XCTAssertEqual(s3.byReference, s1.byReference)
            XCTAssertEqual(s3.forms, s1.forms)
            XCTAssertEqual(s3.records, s1.records)
            XCTAssertEqual(s3.firstDivergence?.seq, s1.firstDivergence?.seq)
            XCTAssertEqual(failing, one.filter { $0.contains("\"verdict\":\"divergence\"") })
        }
        // Sequence order.
        let seqs = one.compactMap { line -> UInt64? in
            guard let r = line.range(of: "\"seq\":") else { return nil }
            return UInt64(line[r.upperBound...].prefix { $0.isNumber })
        }
        XCTAssertEqual(seqs, seqs.sorted())
    }

    func testExitOptionGivesTheVerdictCoveringThatRecord() throws {
        var seqs: [UInt64] = []
        let (s, v) = try replay(options: ReplayOptions(exitSeq: 2)) { w in
            seqs.append(try w.append(committedOut(value: 1, recordedData: 1)))
            try appendGroup(w, repOutsFragments(Array("xyz".utf8)))
        }
        XCTAssertEqual(v.count, 1)
        XCTAssertEqual(v[0].seq, 1, "record 2 is the second fragment of the group starting at 1")
        XCTAssertEqual(s.verdicts, 1)
    }

    func testDivergenceExportIsAnExecInputThatReproducesIt() throws {
        let (_, v) = try replay { w in try w.append(committedOut(value: 0x41, recordedData: 0x42)) }
        let data = try DivergenceExport.execInput(v[0])
        let input = try ExecInput.parse(data)
        let out = Exec.run(input, count: 1, untilHalt: false)
        XCTAssertEqual(out.state.rip, 0x1001)
        XCTAssertEqual(out.accesses, [.port(PortAccess(port: 0x3F8, size: 1, isWrite: true, value: 0x41))],
                       "exec reproduces the emulated side of the divergence")
    }
}

/// `TraceDiff` on two hand-built traces.
final class TraceDiffTests: XCTestCase {
    func write(_ path: String, ports: [UInt16], data: [UInt8]) throws {
        let w = try TraceWriter(path: path, header: TraceHeader(kvmBackend: "kvm_pvm"))
        for (k, p) in ports.enumerated() {
            try w.append(TraceRecord(kind: .exit, kvmExitReason: 2, exitCode: .ioio, instructionStart: 0x1000 + UInt64(p),
                                     instructionBytes: [0xEE], candidates: 1, visibility: .committed,
                                     accesses: [DeviceAccess(space: .port, address: UInt64(p), size: 1, isWrite: true, data: [data[k]])]))
        }
        _ = try w.finish()
    }

    func testIdenticalStreamsAndAPartingWithResync() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("diff-\(UUID())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ports: [UInt16] = [1, 2, 3, 4, 5, 6, 7, 8]
        try write(dir + "/a", ports: ports, data: [0, 0, 0, 0, 0, 0, 0, 0])
        try write(dir + "/a2", ports: ports, data: [0, 0, 0, 0, 0, 0, 0, 0])
        // B: one extra exit (port 9) after the third, and another value at port 7.
        try write(dir + "/b", ports: [1, 2, 3, 9, 4, 5, 6, 7, 8], data: [0, 0, 0, 0, 0, 0, 0, 0x55, 0])
        let same = try TraceDiff.run(try TraceReader(path: dir + "/a"), try TraceReader(path: dir + "/a2"))
        XCTAssertTrue(same.identical)
        XCTAssertEqual(same.aligned, 8)
        let d = try TraceDiff.run(try TraceReader(path: dir + "/a"), try TraceReader(path: dir + "/b"))
        XCTAssertFalse(d.identical)
        XCTAssertEqual(d.aligned, 8)
        XCTAssertEqual(d.onlyA, 0)
        XCTAssertEqual(d.onlyB, 1)
        XCTAssertEqual(d.dataDiffers, 1)
        XCTAssertEqual(d.partings.first?.commonBefore, 3)
        XCTAssertEqual(d.partings.first?.seqB, 3)
        XCTAssertEqual(d.places[.init(reason: "IOIO", rip: 0x1009)]?.onlyB, 1)
        XCTAssertEqual(d.places[.init(reason: "IOIO", rip: 0x1007)]?.dataDiffers, 1)
        XCTAssertTrue(TraceDiff.json(d, pathA: "a", pathB: "b").contains("\"only_b\":1"))
    }
}
