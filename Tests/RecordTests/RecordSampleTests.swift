import Foundation
import KVM
import Record
import Trace
import VMM
import X86
import XCTest

/// Records sample guests on /dev/kvm and reads the traces back.
final class RecordSampleTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    func record(_ sample: String, single: Bool = false, cpuid: CPUIDProfile? = nil) throws -> (TraceReader, RunSummary, RecordingSummary) {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("/dev/kvm is not present: recording tests need KVM")
        }
        let located = try ImageLocator.locate(Self.repo + "/Samples/" + sample)
        let bytes = try ImageLocator.readFile(located.elfPath)
        let image = try GuestImage.elf(bytes, path: located.elfPath)
        var config = MachineConfig()
        if let t = image.machineText { try config.apply(t) }
        if let cpuid { config.cpuid = cpuid }
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("rec-\(sample)-\(UUID()).estrace").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let serial = try SerialOutput(path: "/dev/null")
        let machine = try Machine(config: config, image: image, serial: serial)
        let options = RecorderOptions(observer: ObserverOptions(singleStep: single))
        let recorder = try Recorder(path: out, machine: machine, imagePath: located.elfPath, imageBytes: bytes,
                                    symbols: GuestImage.elfSymbols(bytes).map { GuestSymbol(address: $0.address, size: $0.size, name: $0.name) },
                                    commandLine: ["test"], options: options)
        let summary = machine.run(limits: RunLimits(timeout: 60), observer: recorder, options: options.observer)
        let recording = try recorder.finish()
        return (try TraceReader(path: out), summary, recording)
    }

    /// The header's CPUID table is the one the vCPUs were given: the profile applied.
    func testHeaderHoldsTheCPUIDTableOfTheProfile() throws {
        let (reader, _, _) = try record("hello-real", cpuid: .noavx)
        let given = CPUIDProfile.noavx.apply(try KVMSystem().supportedCPUID(), apicID: 0)
        XCTAssertEqual(reader.header.cpuid.count, given.count)
        for (h, g) in zip(reader.header.cpuid, given) {
            XCTAssertEqual([h.function, h.index, h.eax, h.ebx, h.ecx, h.edx], [g.function, g.index, g.eax, g.ebx, g.ecx, g.edx])
        }
        let leaf1 = try XCTUnwrap(reader.header.cpuid.first { $0.function == 1 })
        XCTAssertEqual(leaf1.ecx & (1 << 28), 0, "AVX is in the noavx profile's table")
    }

    /// XCR0 is not in sync regs: the recorder reads it from KVM (KVM_GET_XCRS), so every state,
    /// events and markers included, says what the vCPU has: the reset value, x87 only, for a
    /// guest that never runs XSETBV (it was the state model's default, 7, before).
    func testEveryStateCarriesXCR0AsKVMHoldsIt() throws {
        let (reader, _, _) = try record("long-mode")
        var kinds = Set<RecordKind>()
        try reader.forEachRecord { r in
            XCTAssertEqual(r.state.xcr0, 1, "seq \(r.seq) (\(r.kind))")
            kinds.insert(r.kind)
        }
        XCTAssertTrue(kinds.isSuperset(of: [.exit, .event]))
    }

    /// The port loop's exits are staged on the vCPU thread and reach the ring in groups
    /// (RecordPipeline.Producer.publishEvery): every exit is there, in order, each with its own
    /// RCX, and the stop event that follows them carries the last exit's state.
    func testIOLoopTraceHoldsEveryExitInOrderAndTheStopEventFollowsTheLast() throws {
        let (reader, summary, recording) = try record("io-loop-1000")
        XCTAssertEqual(summary.exitStatus, 0)
        var exits: [TraceRecord] = []
        var stop: TraceRecord? = nil
        try reader.forEachRecord { r in
            if r.kind == .exit { exits.append(r) }
            if r.kind == .event && r.code == EventCode.vcpuStopped { stop = r }
        }
        XCTAssertEqual(UInt64(exits.count), recording.exits)
        XCTAssertEqual(exits.map(\.vcpuSeq), exits.indices.map { exits[0].vcpuSeq + UInt64($0) })
        // The loop's OUTs: ECX counts down by one from 1000 (the OUT comes before the DEC).
        let loop = exits.filter { $0.accesses.first?.address == 0x3FF }
        XCTAssertEqual(loop.count, 1000)
        XCTAssertEqual(loop.map { $0.state.rcx & 0xFFFF_FFFF }, (1...1000).reversed().map { UInt64($0) })
        XCTAssertEqual(stop?.state, exits.last?.state)
    }

    func testHelloRealTraceHoldsEveryExitWithItsInstruction() throws {
        let (reader, summary, recording) = try record("hello-real")
        XCTAssertEqual(summary.exitStatus, 0)
        XCTAssertFalse(reader.isCutShort)
        XCTAssertEqual(reader.header.kvmBackend.isEmpty, false)
        XCTAssertGreaterThan(reader.header.tscHz, 0)
        XCTAssertEqual(reader.header.imageSHA256.count, 64)
        var exits = 0, io = 0, hlt = 0
        try reader.forEachRecord { r in
            guard r.kind == .exit else { return }
            exits += 1
            if r.exitCode == .ioio { io += 1 }
            if r.exitCode == .hlt { hlt += 1 }
            XCTAssertEqual(r.candidates, 1, "exit \(r.seq) at \(Hex.string(r.state.rip)): instruction not located")
            XCTAssertFalse(r.instructionBytes.isEmpty)
            XCTAssertGreaterThanOrEqual(r.tscEntry, r.tscExit)
        }
        XCTAssertEqual(UInt64(exits), summary.totalExits)
        XCTAssertEqual(UInt64(exits), recording.exits)
        XCTAssertEqual(hlt, 1)
        XCTAssertEqual(io, exits - 1)
        // "Hello from real mode" went out through THR writes, recorded as committed port writes.
        var text = ""
        try reader.forEachRecord { r in
            if let a = r.accesses.first, a.space == .port, a.address == 0x3F8, a.isWrite { text += String(UnicodeScalar(a.data[0])) }
        }
        XCTAssertTrue(text.contains("Hello from real mode"), text)
    }

    func testLongModeTraceLocatesMMIOAndStringInstructions() throws {
        let (reader, summary, recording) = try record("long-mode")
        XCTAssertEqual(summary.exitStatus, 0)
        XCTAssertEqual(recording.unlocated, 0)
        XCTAssertEqual(recording.ambiguous, 0)
        var mmio = 0, msrWrites = 0, fragments = 0
        try reader.forEachRecord { r in
            if r.exitCode == .npf { mmio += 1 }
            if r.exitCode == .msr && r.exitInfo1 == 1 { msrWrites += 1 }
            if r.fragment > 0 { fragments += 1 }
        }
        XCTAssertGreaterThan(mmio, 0)
        XCTAssertGreaterThan(msrWrites, 0)
        XCTAssertGreaterThan(fragments, 0, "REP MOVSQ to MMIO and read-modify-writes give grouped fragments")
    }
}

extension RecordSampleTests {
    func testSingleStepRecordsEveryInstructionAndEndsAtTheHLT() throws {
        let (reader, summary, _) = try record("hello-real", single: true)
        XCTAssertEqual(summary.exitStatus, 0, "a stepped HLT with interrupts off halts the vCPU: \(summary.stop)")
        var steps = 0, io = 0
        var previous: TraceRecord?
        try reader.forEachRecord { r in
            if r.kind == .step {
                steps += 1
                XCTAssertEqual(r.visibility, .pending)
                XCTAssertEqual(r.instructionStart, r.state.rip, "a step record describes the instruction at RIP")
                XCTAssertFalse(r.instructionBytes.isEmpty)
            }
            if r.kind == .exit && r.exitCode == .ioio { io += 1 }
            if let p = previous, p.kind == .step, r.kind == .step, p.vcpuSeq + 1 == r.vcpuSeq,
               p.instructionBytes.count == 2, p.instructionBytes[0] == 0x31 {
                // "xor ax, ax" (31 c0): the next step shows RIP advanced by its length.
                XCTAssertEqual(r.state.rip, p.state.rip + 2)
            }
            previous = r
        }
        XCTAssertGreaterThan(steps, 100)
        XCTAssertEqual(io, 42, "the 42 port accesses are exits, not steps")
        XCTAssertEqual(reader.header.options["single_step"], "true")
    }

    /// Issue 9: each instruction the VMM completed is a `.completion` record: the state before
    /// and after, the instruction, and the guest bytes it read and wrote.
    func testCompletionsAreRecorded() throws {
        guard KVMSystem.backendModule() == "kvm_pvm" || !FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("KVM's emulator fails on CMPXCHG16B only on kvm_pvm; this host runs \(KVMSystem.backendModule())")
        }
        let (reader, summary, recording) = try record("completion")
        XCTAssertEqual(summary.completions["cmpxchg16b"], 2, summary.text)
        XCTAssertEqual(recording.completions, 2)
        var completions: [TraceRecord] = []
        var previous: TraceRecord?
        try reader.forEachRecord { r in
            if r.kind == .completion {
                completions.append(r)
                // It follows the INTERNAL_ERROR exit it completes, on the same instruction.
                XCTAssertEqual(previous?.kind, .exit)
                XCTAssertEqual(previous?.kvmExitReason, r.kvmExitReason)
                XCTAssertEqual(previous?.state.rip, r.instructionStart)
            }
            previous = r
        }
        XCTAssertEqual(completions.count, 2)
        guard let first = completions.first else { return }
        XCTAssertEqual(first.note, "cmpxchg16b")
        XCTAssertEqual(Array(first.instructionBytes.prefix(4)), [0xF0, 0x48, 0x0F, 0xC7])
        XCTAssertEqual(first.instructionStart, first.state.rip)
        XCTAssertEqual(first.stateAfter?.rip, first.state.rip + UInt64(first.instructionBytes.count))
        XCTAssertEqual(first.nextRIP, first.stateAfter?.rip)
        XCTAssertNotEqual((first.stateAfter?.rflags ?? 0) & RFLAGS.zf, 0, "the equal case sets ZF")
        XCTAssertTrue(first.memory.contains { $0.role == .instruction })
        XCTAssertTrue(first.memory.contains { $0.role == .pageTable })
        XCTAssertEqual(first.memory.filter { $0.role == .operandRead }.count, 2)
        // The written quadwords are RCX:RBX of the state before.
        let written = first.memory.filter { $0.role == .written && $0.bytes.count == 8 }.map { m in
            m.bytes.enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        }
        XCTAssertEqual(written, [first.state.rbx, first.state.rcx])
    }
}
