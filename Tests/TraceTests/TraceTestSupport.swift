import Foundation
import X86
@testable import Trace

/// A temporary directory removed at deinit.
final class TempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "estrace-test-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

func readBytes(_ path: String) -> [UInt8] { Array(FileManager.default.contents(atPath: path) ?? Data()) }
func writeBytes(_ path: String, _ b: [UInt8]) { FileManager.default.createFile(atPath: path, contents: Data(b)) }

/// A protected-mode state with a few distinctive values.
func sampleState(_ n: UInt64) -> CPUState {
    var s = CPUState.flat(.protected32)
    s.rax = 0x1000 &+ n
    s.rbx = 0xDEAD_BEEF_0000 | n
    s.rip = 0x7C00 &+ (n % 7)
    s.rsp = 0x9000
    s.rflags = 0x202 | (n & 1)
    s.cr3 = 0x1000
    return s
}

/// A tight `out dx, al` loop as the recorder would see it: state and data change a little,
/// time moves by roughly the same amount each exit.
func outLoopRecord(_ i: UInt64, vcpu: UInt16 = 0) -> TraceRecord {
    var s = CPUState.flat(.real)
    s.rax = i & 0xFF
    s.rdx = 0x80
    s.rcx = 100_000 - i
    s.rip = 0x1005
    s.rflags = 0x202 | (i & 0xFF == 0 ? 0x40 : 0)
    var rng = SplitMix(seed: i)
    let tsc = 1_000_000 + i * 24_000 + rng.next() % 600
    return TraceRecord(
        kind: .exit, vcpu: vcpu, kvmExitReason: 2, exitCode: .ioio,
        exitInfo1: IOIOInfo(port: 0x80, isIn: false, size: 1, addressSize: 16).exitInfo1,
        nextRIP: 0x1005, instructionStart: 0x1004, instructionBytes: [0xEE], candidates: 1, visibility: .committed,
        state: s,
        accesses: [DeviceAccess(space: .port, address: 0x80, size: 1, isWrite: true, data: [UInt8(i & 0xFF)])],
        memory: [GuestBytes(role: .instruction, gpa: 0x1004, bytes: [0xEE])],
        tscExit: tsc, tscEntry: tsc + 2_000 + rng.next() % 200)
}

struct SplitMix {
    var x: UInt64
    init(seed: UInt64) { x = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        x = x &+ 0x9E37_79B9_7F4A_7C15
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// One record of every kind, with every field of the model set to something non-default.
func everyKindRecords() -> [TraceRecord] {
    var out: [TraceRecord] = []
    var s = sampleState(1)
    s.fs = Segment(selector: 0x33, base: 0xFFFF_8000_1234_0000, limit: 0xFFFFF, attributes: 0xC93)
    s.gdtr = DescriptorTable(base: 0x5000, limit: 0x3F)
    s.lstar = 0xFFFF_FFFF_8100_0000
    s.efer = EFER.lme | EFER.lma | EFER.sce
    s.cpl = 3
    s.pat = 0x1234
    var after = s
    after.rip += 1
    after.rax = 0x55
    // exit: IN (pending) with state after, guest bytes of every role, MSR write, note
    out.append(TraceRecord(
        kind: .exit, vcpu: 0, kvmExitReason: 2, exitCode: .ioio,
        exitInfo1: IOIOInfo(port: 0x3F8, isIn: true, size: 1, addressSize: 32).exitInfo1,
        exitInfo2: 0x7C01, exitIntInfo: 0x8000_0030, nextRIP: 0x7C01,
        instructionStart: 0x7C00, instructionBytes: [0xEC], candidates: 1, visibility: .pending,
        state: s, stateAfter: after,
        accesses: [DeviceAccess(space: .port, address: 0x3F8, size: 1, isWrite: false, data: [0x55])],
        memory: [GuestBytes(role: .instruction, gpa: 0x7C00, bytes: [0xEC]),
                 GuestBytes(role: .pageTable, gpa: 0x1000, bytes: [0x03, 0x20, 0, 0, 0, 0, 0, 0]),
                 GuestBytes(role: .operandRead, gpa: 0x8000, bytes: [1, 2, 3, 4]),
                 GuestBytes(role: .written, gpa: 0x9000, bytes: [9, 9])],
        msrWrites: [MSRWrite(index: 0xC000_0082, value: 0xFFFF_FFFF_8100_0000)],
        tscExit: 123_456_789, tscEntry: 123_460_000, note: "serial read"))
    // MMIO read-modify-write: two fragments of one group
    var frag0 = TraceRecord(kind: .exit, vcpu: 0, kvmExitReason: 6, exitCode: .npf,
                            exitInfo1: NPFInfo.present | NPFInfo.finalAddress, exitInfo2: 0xFEE0_0300,
                            nextRIP: 0x7C06, instructionStart: 0x7C02, instructionBytes: [0x83, 0x0D, 0x00, 0x03],
                            candidates: 2, visibility: .pending, group: 0, fragment: 0, lastFragment: false,
                            state: s,
                            accesses: [DeviceAccess(space: .mmio, address: 0xFEE0_0300, size: 4, isWrite: false, data: [1, 0, 0, 0])],
                            tscExit: 123_500_000, tscEntry: 123_501_000)
    frag0.memory = [GuestBytes(role: .instruction, gpa: 0x7C02, bytes: [0x83, 0x0D, 0x00, 0x03])]
    out.append(frag0)
    var frag1 = frag0
    frag1.fragment = 1
    frag1.lastFragment = true
    frag1.visibility = .committed
    frag1.accesses = [DeviceAccess(space: .mmio, address: 0xFEE0_0300, size: 4, isWrite: true, data: [3, 0, 0, 0])]
    frag1.tscExit = 123_502_000
    frag1.tscEntry = 123_502_500
    out.append(frag1)
    // REP OUTSB batched: one access of several items
    out.append(TraceRecord(kind: .exit, vcpu: 0, kvmExitReason: 2, exitCode: .ioio,
                           exitInfo1: IOIOInfo(port: 0x3F8, isIn: false, isString: true, isRep: true, size: 1, addressSize: 32).exitInfo1,
                           visibility: .committed, state: sampleState(3),
                           accesses: [DeviceAccess(space: .port, address: 0x3F8, size: 1, isWrite: true, count: 5, data: Array("hello".utf8))],
                           tscExit: 123_600_000, tscEntry: 123_600_100))
    out.append(TraceRecord(kind: .completion, vcpu: 0, kvmExitReason: 17, exitCode: .none, nextRIP: 0x7C10,
                           instructionStart: 0x7C0C, instructionBytes: [0x0F, 0xC7, 0x0E, 0x00], candidates: 1,
                           visibility: .pending, state: sampleState(4), stateAfter: sampleState(5),
                           tscExit: 123_700_000, tscEntry: 123_700_900, note: "lock cmpxchg16b"))
    out.append(TraceRecord(kind: .step, vcpu: 0, kvmExitReason: 4, exitCode: .exception(1), exitInfo1: 0x4000,
                           state: sampleState(6), tscExit: 123_800_000, tscEntry: 123_800_010))
    out.append(TraceRecord(kind: .event, vcpu: 0, exitIntInfo: 0x8000_0020, state: sampleState(6),
                           tscExit: 123_900_000, tscEntry: 123_900_000, code: 0x20, note: "inject IRQ 0"))
    out.append(TraceRecord(kind: .gap, vcpu: 0, state: sampleState(7), tscExit: 124_000_000, tscEntry: 124_100_000,
                           code: 3, note: "CPL3 span not single-stepped"))
    out.append(TraceRecord(kind: .marker, vcpu: 0, kvmExitReason: 2, exitCode: .ioio,
                           exitInfo1: IOIOInfo(port: 0x502, isIn: false, size: 4, addressSize: 32).exitInfo1,
                           visibility: .committed, state: sampleState(8),
                           accesses: [DeviceAccess(space: .port, address: 0x502, size: 4, isWrite: true, data: [7, 0, 0, 0])],
                           tscExit: 124_200_000, tscEntry: 124_200_300, code: 7, note: ""))
    out.append(TraceRecord(kind: .exit, vcpu: 0, kvmExitReason: 5, exitCode: .hlt, nextRIP: 0x7C21, instructionStart: 0x7C20,
                           instructionBytes: [0xF4], candidates: 1, visibility: .committed, state: sampleState(9),
                           tscExit: 0, tscEntry: UInt64.max))
    out.append(TraceRecord(kind: .exit, vcpu: 0, kvmExitReason: 8, exitCode: .shutdown, state: CPUState(),
                           tscExit: 124_300_000, tscEntry: 124_300_000, note: "triple fault"))
    out.append(TraceRecord(kind: .exit, vcpu: 0, kvmExitReason: 0xFFFF_FFFF, exitCode: .invalid, exitInfo1: UInt64.max,
                           exitInfo2: UInt64.max, exitIntInfo: UInt64.max, nextRIP: UInt64.max, instructionStart: UInt64.max,
                           instructionBytes: Array(repeating: 0x66, count: 15), candidates: 255, visibility: .none,
                           state: sampleState(UInt64.max), tscExit: UInt64.max, tscEntry: 0))
    return out
}

func sampleHeader(vcpus: UInt16 = 1) -> TraceHeader {
    TraceHeader(tscHz: 2_994_000_000, hostCPU: "AMD EPYC 7B13 64-Core Processor", kernel: "Linux 6.8.0-test x86_64",
                kvmBackend: "kvm_pvm", capabilities: ["KVM_CAP_SYNC_REGS": 7, "KVM_CAP_X86_USER_SPACE_MSR": 1],
                cpuid: [CPUIDEntry(function: 0, eax: 0xD, ebx: 0x6874_7541, ecx: 0x444D_4163, edx: 0x6974_6E65),
                        CPUIDEntry(function: 7, index: 0, flags: 1, eax: 0, ebx: 0x219C_91A9, ecx: 0, edx: 0)],
                memory: [MemoryRegionInfo(gpa: 0, size: 0x100_0000, name: "ram")],
                vcpuCount: vcpus, imagePath: "Samples/build/outloop.bin",
                imageSHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                commandLine: ["exitscope", "record", "--out", "t.estrace", "outloop.bin"],
                symbols: [GuestSymbol(address: 0x1000, size: 0x10, name: "loop"), GuestSymbol(address: 0x7C00, size: 0, name: "_start")],
                options: ["fidelity": "default", "irqchip": "none"], startTime: "2026-11-26T17:00:00Z")
}

/// Writes records with the writer numbering them; returns what was appended (with numbers).
@discardableResult
func writeTrace(_ path: String, _ records: [TraceRecord], header: TraceHeader = sampleHeader(),
                settings: TraceWriterSettings = TraceWriterSettings(), finish: Bool = true) throws -> [TraceRecord] {
    let w = try TraceWriter(path: path, header: header, settings: settings)
    var out: [TraceRecord] = []
    var vcpuSeqs: [UInt16: UInt64] = [:]
    var lastGroupStart: UInt64 = 0
    for var r in records {
        if r.fragment > 0 { r.group = lastGroupStart }
        let seq = try w.append(r)
        r.seq = seq
        r.vcpuSeq = vcpuSeqs[r.vcpu, default: 0]
        vcpuSeqs[r.vcpu] = r.vcpuSeq + 1
        if r.fragment == 0 { r.group = seq; lastGroupStart = seq }
        out.append(r)
    }
    if finish { try w.finish() }
    return out
}

func readAll(_ path: String) throws -> [TraceRecord] {
    let r = try TraceReader(path: path)
    var out: [TraceRecord] = []
    try r.forEachRecord { out.append($0) }
    return out
}
