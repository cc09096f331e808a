import Foundation
import Record
import Replay
import Trace
import VMM
import X86
import XCTest

/// A routed WRMSR that changes EFER.NX or LME (the bits that reset KVM's MMU context): KVM
/// restarted such a WRMSR when the VMM wrote them while the exit was pending, so the guest ran
/// it twice and a --fidelity full after-state still stood on it. The VMM writes those bits once
/// the instruction completed: one exit, its state after past the WRMSR with the bit set.
final class ReplayEFERWriteTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("/dev/kvm is not present: recording the EFER-writing guest needs KVM")
        }
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("efer-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { if !dir.isEmpty { try? FileManager.default.removeItem(atPath: dir) } }

    func testWRMSRThatSetsNXExitsOnceAndARefusedOneGivesGP() throws {
        // mov ecx,0xC0000080 (EFER); rdmsr; or eax,0x800 (NX: accepted); wrmsr;
        // xor eax,0x802 (NX off, reserved bit 1: refused, #GP; no IDT: a triple fault); wrmsr; hlt
        let code: [UInt8] = [0xB9, 0x80, 0x00, 0x00, 0xC0, 0x0F, 0x32, 0x0D, 0x00, 0x08, 0x00, 0x00, 0x0F, 0x30,
                             0x35, 0x02, 0x08, 0x00, 0x00, 0x0F, 0x30, 0xF4]
        let base: UInt64 = 0x100000
        for singleStep in [false, true] {
            let config = MachineConfig(mode: .long64, vcpus: 1, irqchip: .none, memoryMiB: 4)
            let machine = try Machine(config: config, image: .flat(code, at: base), serial: SerialOutput(fd: -1))
            let path = dir + "/efer-\(singleStep).estrace"
            let options = RecorderOptions(observer: ObserverOptions(fidelity: .full, singleStep: singleStep))
            let recorder = try Recorder(path: path, machine: machine, imagePath: "efer-nx", imageBytes: code,
                                        symbols: [], commandLine: ["test"], options: options)
            let summary = machine.run(limits: RunLimits(timeout: 20), observer: recorder, options: options.observer)
            _ = try recorder.finish()
            guard case let .guestEvent(r) = summary.stop, r.kind == .shutdown else {
                return XCTFail("single-step \(singleStep): stopped by \(summary.stop)")
            }
            XCTAssertEqual(summary.exitsByReason["X86_WRMSR"], 2, "single-step \(singleStep): one exit per WRMSR")

            let reader = try TraceReader(path: path)
            var msr: [TraceRecord] = []
            try reader.forEachRecord { if $0.exitCode == .msr { msr.append($0) } }
            XCTAssertEqual(msr.map(\.state.rip), [base + 12, base + 19], "single-step \(singleStep)")
            XCTAssertEqual(msr.map(\.accessRefused), [false, true], "single-step \(singleStep)")
            if !singleStep {
                // Under single-step the completion ends in a debug exit instead (no state after).
                XCTAssertEqual(msr.first?.stateAfter?.rip, base + 14)
                XCTAssertEqual((msr.first?.stateAfter?.efer ?? 0) & EFER.nxe, EFER.nxe)
            }

            var verdicts: [Verdict] = []
            _ = try ReplayRun.run(reader, options: ReplayOptions()) { verdicts.append($0) }
            let lines = verdicts.map(\.summaryLine).joined(separator: "\n")
            XCTAssertEqual(verdicts.filter { $0.exitCode == .msr }.map(\.kind), [.match, .match], "single-step \(singleStep):\n" + lines)
            XCTAssertFalse(verdicts.contains { $0.kind.isFailure }, "single-step \(singleStep):\n" + lines)
        }
    }
}
