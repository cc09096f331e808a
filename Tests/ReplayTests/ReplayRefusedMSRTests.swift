import Foundation
import Record
import Replay
import Trace
import VMM
import X86
import XCTest

/// A routed WRMSR/RDMSR the VMM refused (the guest got #GP(0)): recorded with the trace's
/// `accessRefused` (format 1.1) and matched only when the emulator raises #GP(0) for it.
final class ReplayRefusedMSRTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("refused-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func replay(_ records: [TraceRecord]) throws -> [Verdict] {
        let path = dir + "/t-\(UUID().uuidString).estrace"
        let w = try TraceWriter(path: path, header: TraceHeader(kvmBackend: "kvm_pvm",
                                                                 memory: [MemoryRegionInfo(gpa: 0, size: 64 << 20, name: "ram")]))
        for r in records { try w.append(r) }
        _ = try w.finish()
        var verdicts: [Verdict] = []
        _ = try ReplayRun.run(try TraceReader(path: path), options: ReplayOptions()) { verdicts.append($0) }
        return verdicts
    }

    /// A pending WRMSR (or RDMSR) exit at 0x3000 in protected mode, CPL 0.
    func msrExit(write: Bool, index: UInt32, edxEax: UInt64, recordedValue: UInt64? = nil, refused: Bool) -> TraceRecord {
        var s = CPUState.flat(.protected32)
        s.rip = 0x3000
        s.rcx = UInt64(index)
        s.rdx = edxEax >> 32
        s.rax = edxEax & 0xFFFF_FFFF
        let v = recordedValue ?? edxEax
        let bytes: [UInt8] = write ? [0x0F, 0x30] : [0x0F, 0x32]
        return TraceRecord(kind: .exit, kvmExitReason: write ? 30 : 29, exitCode: .msr, exitInfo1: write ? 1 : 0, nextRIP: 0x3002,
                           instructionStart: 0x3000, instructionBytes: bytes, candidates: 1, visibility: .pending, state: s,
                           accesses: [DeviceAccess(space: .msr, address: UInt64(index), size: 8, isWrite: write,
                                                   data: (0..<8).map { UInt8(truncatingIfNeeded: (write ? v : 0) >> (8 * UInt64($0))) })],
                           memory: [GuestBytes(role: .instruction, gpa: 0x3000, bytes: bytes)], accessRefused: refused)
    }

    static let nonCanonical: UInt64 = 0x8000_0000_0000_0000

    func testRefusedNonCanonicalWRMSRMatchesTheEmulatorsGP() throws {
        for index in [MSRIndex.lstar, MSRIndex.cstar, MSRIndex.kernelGSBase] {
            let v = try replay([msrExit(write: true, index: index, edxEax: Self.nonCanonical, refused: true)])
            XCTAssertEqual(v.map(\.kind), [.match], v.map(\.summaryLine).joined(separator: "\n"))
            XCTAssertTrue(v.first?.note.contains("#GP(0)") ?? false, v.first?.note ?? "")
        }
    }

    func testRefusedWRMSRTheEmulatorAcceptsDiverges() throws {
        // A canonical LSTAR: the emulator writes it, so the refusal is not explained.
        let v = try replay([msrExit(write: true, index: MSRIndex.lstar, edxEax: 0xFFFF_8000_0000_1000, refused: true)])
        XCTAssertEqual(v.first?.kind, .divergence)
        XCTAssertEqual(v.first?.differences.map(\.field), ["msr.refused"])
        XCTAssertEqual(v.first?.differences.first?.recorded, "#GP(0)")
    }

    func testRefusedWRMSRWithAnotherValueThanEDXEAXDiverges() throws {
        // #GP(0) from the emulator, but for a value the record does not name: the wrong reason.
        let v = try replay([msrExit(write: true, index: MSRIndex.lstar, edxEax: Self.nonCanonical,
                                    recordedValue: 0x9000_0000_0000_0000, refused: true)])
        XCTAssertEqual(v.first?.kind, .divergence)
        XCTAssertEqual(v.first?.differences.map(\.field), ["msr.value"])
    }

    func testRefusedWRMSRAtCPL3Diverges() throws {
        // At CPL 3 WRMSR faults for privilege and never exits to the VMM.
        var r = msrExit(write: true, index: MSRIndex.lstar, edxEax: Self.nonCanonical, refused: true)
        r.state.cpl = 3
        r.state.cs.attributes |= 3 << 5
        r.state.ss.attributes |= 3 << 5
        r.state.cs.selector |= 3
        r.state.ss.selector |= 3
        let v = try replay([r])
        XCTAssertEqual(v.first?.kind, .divergence)
        XCTAssertTrue(v.first?.differences.map(\.field).contains("cpl") ?? false, "\(v.first?.differences ?? [])")
    }

    func testRefusedRDMSROfADeviceMSRMatches() throws {
        // An MSR no device owns: the VMM answered #GP; replay serves that answer.
        let v = try replay([msrExit(write: false, index: 0x4B56_4D99, edxEax: 0, refused: true)])
        XCTAssertEqual(v.map(\.kind), [.match], v.map(\.summaryLine).joined(separator: "\n"))
    }

    func testWithoutTheFlagTheEmulatorsGPIsADivergence() throws {
        // A 1.0 trace of the same exit says the WRMSR completed.
        let v = try replay([msrExit(write: true, index: MSRIndex.lstar, edxEax: Self.nonCanonical, refused: false)])
        XCTAssertEqual(v.first?.kind, .divergence)
        XCTAssertEqual(v.first?.differences.map(\.field), ["exception"])
    }

    func testARefusedWriteDoesNotChangeTheKnownMSR() throws {
        // Accepted LSTAR write, then a refused one, then a RDMSR of LSTAR that must read the first value.
        let good: UInt64 = 0xFFFF_8000_0000_2000
        var first = msrExit(write: true, index: MSRIndex.lstar, edxEax: good, refused: false)
        first.msrWrites = [MSRWrite(index: MSRIndex.lstar, value: good)]
        var read = msrExit(write: false, index: MSRIndex.lstar, edxEax: 0, refused: false)
        read.accesses[0].data = (0..<8).map { UInt8(truncatingIfNeeded: good >> (8 * UInt64($0))) }
        var after = read.state
        after.rip = 0x3002
        after.rax = good & 0xFFFF_FFFF
        after.rdx = good >> 32
        read.stateAfter = after
        let v = try replay([first, msrExit(write: true, index: MSRIndex.lstar, edxEax: Self.nonCanonical, refused: true), read])
        XCTAssertEqual(v.map(\.kind), [.match, .match, .match], v.map(\.summaryLine).joined(separator: "\n"))
    }

    // MARK: on /dev/kvm

    func testRecordedRefusedWRMSRReplaysAsMatch() throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("/dev/kvm is not present: recording the refused-WRMSR guest needs KVM")
        }
        // mov ecx,0xC0000082 (LSTAR); xor eax,eax; mov edx,0xFFFF8000; wrmsr (canonical: accepted);
        // mov edx,0x80000000; wrmsr (non-canonical: refused, #GP; no IDT: a triple fault); hlt
        let code: [UInt8] = [0xB9, 0x82, 0x00, 0x00, 0xC0, 0x31, 0xC0, 0xBA, 0x00, 0x80, 0xFF, 0xFF, 0x0F, 0x30,
                             0xBA, 0x00, 0x00, 0x00, 0x80, 0x0F, 0x30, 0xF4]
        let config = MachineConfig(mode: .long64, vcpus: 1, irqchip: .none, memoryMiB: 4)
        let machine = try Machine(config: config, image: .flat(code, at: 0x100000), serial: SerialOutput(fd: -1))
        let path = dir + "/refused.estrace"
        let options = RecorderOptions()
        let recorder = try Recorder(path: path, machine: machine, imagePath: "refused-wrmsr", imageBytes: code,
                                    symbols: [], commandLine: ["test"], options: options)
        let summary = machine.run(limits: RunLimits(timeout: 20), observer: recorder, options: options.observer)
        _ = try recorder.finish()
        guard case let .guestEvent(r) = summary.stop, r.kind == .shutdown else { return XCTFail("stopped by \(summary.stop)") }

        let reader = try TraceReader(path: path)
        XCTAssertEqual(reader.formatMinor, TraceFormat.minor)
        var msr: [TraceRecord] = []
        try reader.forEachRecord { if $0.exitCode == .msr { msr.append($0) } }
        XCTAssertEqual(msr.map(\.accessRefused), [false, true])
        XCTAssertEqual(msr.map { $0.msrWrites.map(\.value) }, [[0xFFFF_8000_0000_0000], []])

        var verdicts: [Verdict] = []
        _ = try ReplayRun.run(reader, options: ReplayOptions()) { verdicts.append($0) }
        let msrVerdicts = verdicts.filter { $0.exitCode == .msr }
        XCTAssertEqual(msrVerdicts.map(\.kind), [.match, .match], verdicts.map(\.summaryLine).joined(separator: "\n"))
        XCTAssertFalse(verdicts.contains { $0.kind == .divergence }, verdicts.map(\.summaryLine).joined(separator: "\n"))
    }
}
