import CKVM
import X86
import X86Emulator

// Completion of emulation failures (issue 9): where KVM's instruction emulator gives up
// (KVM_EXIT_INTERNAL_ERROR, suberror EMULATION), the VMM finds the instruction through the
// guest's page tables, runs it with ExitScope's own executor against live guest RAM, devices
// and ports, writes the registers back and resumes: the 2006 prototype's loop.
//
// This file is the part that needs no KVM: the memory and port adapters and the completer.
// Machine.swift reads the vCPU state, pauses the other vCPUs, calls `Completer.complete` and
// writes the result back.

/// Guest bytes a completed instruction read or wrote, by what they were.
public struct CompletionBytes: Equatable, Sendable {
    public enum Role: String, Sendable {
        /// The instruction's own bytes (the executor's fetch).
        case instruction
        /// A page-table entry read on the way to the instruction.
        case pageTable
        /// Anything else read: operands, and page-table entries walked for operands.
        case operandRead
        /// Bytes written (operands, accessed/dirty bits, an exception frame).
        case written
    }
    public var role: Role
    public var gpa: UInt64
    public var bytes: [UInt8]
    public init(role: Role, gpa: UInt64, bytes: [UInt8]) {
        self.role = role
        self.gpa = gpa
        self.bytes = bytes
    }
}

/// The executor's guest-physical memory over the VMM's RAM and device bus. RAM is read and
/// written in place (every range bounds-checked by `GuestMemory.host`); an address outside RAM
/// goes to the MMIO bus in naturally sized pieces of at most 8 bytes (an unclaimed read answers
/// all ones, as in the exit loop). Without a bus, non-RAM is unbacked and stops the instruction.
/// Every access is logged for the observer.
public final class CompletionMemory: X86Emulator.GuestMemory {
    public let ram: GuestMemory
    public let bus: DeviceBus?
    public let vcpu: Int
    /// Reads and writes in order: RAM as bytes, device accesses separately.
    public private(set) var reads: [(gpa: UInt64, bytes: [UInt8])] = []
    public private(set) var writes: [(gpa: UInt64, bytes: [UInt8])] = []
    public private(set) var deviceAccesses: [BusAccess] = []

    public init(ram: GuestMemory, bus: DeviceBus?, vcpu: Int) {
        self.ram = ram
        self.bus = bus
        self.vcpu = vcpu
    }

    /// Bytes from `gpa` that are RAM in one region (0 when `gpa` is not RAM), and otherwise how
    /// many bytes until RAM starts again (capped at `limit`).
    func span(_ gpa: UInt64, limit: Int) -> (ram: Bool, count: Int) {
        var nextRAM = UInt64.max
        for r in ram.regions {
            if gpa >= r.guestPhysical && gpa - r.guestPhysical < r.size {
                return (true, Int(min(UInt64(limit), r.size - (gpa - r.guestPhysical))))
            }
            if r.guestPhysical > gpa { nextRAM = min(nextRAM, r.guestPhysical) }
        }
        return (false, Int(min(UInt64(limit), nextRAM - gpa)))
    }

    /// The largest naturally sized MMIO piece (1, 2, 4 or 8 bytes) at most `n` bytes.
    static func pieceSize(_ n: Int) -> Int { n >= 8 ? 8 : n >= 4 ? 4 : n >= 2 ? 2 : 1 }

    public func read(_ gpa: UInt64, count: Int, into buffer: UnsafeMutableRawPointer) -> PhysicalAccess {
        guard count > 0 else { return .ok }
        guard gpa <= UInt64.max - UInt64(count - 1) else { return .unbacked(gpa) }
        var done = 0
        while done < count {
            let a = gpa + UInt64(done)
            let s = span(a, limit: count - done)
            if s.ram {
                guard let p = ram.host(a, length: UInt64(s.count)) else { return .unbacked(a) }
                (buffer + done).copyMemory(from: p, byteCount: s.count)
                reads.append((a, Array(UnsafeRawBufferPointer(start: p, count: s.count))))
                done += s.count
            } else {
                guard let bus else { return .unbacked(a) }
                let n = Self.pieceSize(s.count)
                let (v, claimed) = bus.mmioRead(vcpu: vcpu, address: a, size: n)
                for i in 0..<n { (buffer + done + i).storeBytes(of: UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))), as: UInt8.self) }
                deviceAccesses.append(BusAccess(kind: .mmio, address: a, size: UInt8(n), isWrite: false, data: v, claimed: claimed))
                done += n
            }
        }
        return .ok
    }

    public func write(_ gpa: UInt64, count: Int, from buffer: UnsafeRawPointer) -> PhysicalAccess {
        guard count > 0 else { return .ok }
        guard gpa <= UInt64.max - UInt64(count - 1) else { return .unbacked(gpa) }
        // Without a bus, check the whole range first so a failing write changes nothing.
        if bus == nil {
            var done = 0
            while done < count {
                let a = gpa + UInt64(done)
                let s = span(a, limit: count - done)
                if !s.ram { return .unbacked(a) }
                done += s.count
            }
        }
        var done = 0
        while done < count {
            let a = gpa + UInt64(done)
            let s = span(a, limit: count - done)
            if s.ram {
                guard let p = ram.host(a, length: UInt64(s.count)) else { return .unbacked(a) }
                p.copyMemory(from: buffer + done, byteCount: s.count)
                writes.append((a, Array(UnsafeRawBufferPointer(start: buffer + done, count: s.count))))
                done += s.count
            } else {
                guard let bus else { return .unbacked(a) }
                let n = Self.pieceSize(s.count)
                var v: UInt64 = 0
                for i in 0..<n { v |= UInt64((buffer + done + i).load(as: UInt8.self)) << (8 * UInt64(i)) }
                let claimed = bus.mmioWrite(vcpu: vcpu, address: a, size: n, value: v)
                deviceAccesses.append(BusAccess(kind: .mmio, address: a, size: UInt8(n), isWrite: true, data: v, claimed: claimed))
                done += n
            }
        }
        return .ok
    }
}

/// The executor's port space over the VMM's device bus (an unclaimed read answers all ones).
public final class CompletionPorts: IOPorts {
    public let bus: DeviceBus
    public let vcpu: Int
    public private(set) var accesses: [BusAccess] = []
    public init(bus: DeviceBus, vcpu: Int) {
        self.bus = bus
        self.vcpu = vcpu
    }
    public func read(port: UInt16, size: Int) -> UInt32? {
        let (v, claimed) = bus.portRead(vcpu: vcpu, port: port, size: size)
        accesses.append(BusAccess(kind: .port, address: UInt64(port), size: UInt8(size), isWrite: false, data: UInt64(v), claimed: claimed))
        return v
    }
    public func write(port: UInt16, size: Int, value: UInt32) {
        let claimed = bus.portWrite(vcpu: vcpu, port: port, size: size, value: value)
        accesses.append(BusAccess(kind: .port, address: UInt64(port), size: UInt8(size), isWrite: true, data: UInt64(value), claimed: claimed))
    }
}

/// One instruction the VMM performed because KVM could not.
public struct Completion: Sendable, Equatable {
    /// The KVM exit a completion follows (KVM_EXIT_INTERNAL_ERROR).
    public static let kvmExitReason = UInt32(KVM_EXIT_INTERNAL_ERROR)
    public enum Outcome: Sendable, Equatable {
        /// The instruction ran; `after` has RIP past it.
        case completed
        /// The instruction raised an exception, which the executor delivered through the guest's
        /// IDT/IVT (as the processor would): `after` is at the handler.
        case exceptionDelivered(vector: UInt8, errorCode: UInt32?)
        /// ExitScope's emulator does not know the instruction either: the run ends, naming the bytes.
        case unsupported
        /// The instruction could not be completed (why): the run ends with the report.
        case failed(String)
    }
    public var vcpu: Int
    public var outcome: Outcome
    public var before: CPUState
    /// The state to write back (equal to `before` unless the outcome resumes the guest).
    public var after: CPUState
    /// The instruction's bytes (up to 15 as fetched; the decoded length when it decoded) and the
    /// guest-physical address of its first byte (nil when RIP does not translate).
    public var instructionBytes: [UInt8]
    public var instructionGPA: UInt64?
    /// "cmpxchg16b", "movbe", ... ("(bad)" when the bytes are no instruction: #UD).
    public var mnemonic: String
    /// Guest RAM read and written, device (MMIO) and port accesses, in order.
    public var memory: [CompletionBytes]
    public var deviceAccesses: [BusAccess]
    /// XMM0-15 (low, high quadword each: 32 values) and MXCSR before and after, when the caller
    /// supplied them (KVM_GET_FPU); nil otherwise.
    public var xmm: [UInt64]?
    public var xmmAfter: [UInt64]?
    public var mxcsr: UInt32?
    public var mxcsrAfter: UInt32?
    /// The completed instruction is a CPL3 SYSCALL that kvm_pvm did not take to CPL0
    /// (SyscallRedelivery): `before` is the user state at it, rebuilt from the #PF frame.
    public var redeliveredSyscall = false

    /// True when the guest goes on (the instruction completed, or its exception was delivered).
    public var resumes: Bool {
        switch outcome {
        case .completed, .exceptionDelivered: return true
        case .unsupported, .failed: return false
        }
    }

    /// What the run's report says when it ends here.
    public var failureDetail: String {
        let bytes = Hex.bytes(instructionBytes, separator: UInt8(ascii: " "))
        switch outcome {
        case .completed, .exceptionDelivered: return ""
        case .unsupported: return "ExitScope's emulator does not implement it either (bytes \(bytes))"
        case let .failed(why): return "completion of \(mnemonic) (bytes \(bytes)) failed: \(why)"
        }
    }
}

/// Performs the instruction at CS:RIP of a state with the executor (no KVM involved).
public enum Completer {
    /// Runs the instruction at `state`'s CS:RIP against `ram` (and `bus` for MMIO and ports).
    /// Exceptions are delivered through the guest's IDT by the executor.
    /// `xmm` (32 quadwords) and `mxcsr` are the SSE state the instruction starts from; without
    /// them the executor's are zero and an SSE instruction would compute from wrong inputs, so
    /// callers completing live guests pass them. VEX/EVEX/XOP instructions are refused: the
    /// upper YMM/ZMM halves are not carried in.
    public static func complete(vcpu: Int, state live: CPUState, ram: GuestMemory, bus: DeviceBus?,
                                xmm: [UInt64]? = nil, mxcsr: UInt32? = nil) -> Completion {
        // At the #PF handler's entry after a CPL3 SYSCALL that kvm_pvm left at CPL3, the
        // instruction to complete is that SYSCALL, from the user state it started in.
        let redelivered = SyscallRedelivery.userState(atPageFaultEntry: live, ram: ram)
        let state = redelivered ?? live
        var c = Completion(vcpu: vcpu, outcome: .failed(""), before: state, after: state, instructionBytes: [],
                           instructionGPA: nil, mnemonic: "unknown", memory: [], deviceAccesses: [],
                           xmm: xmm, xmmAfter: xmm, mxcsr: mxcsr, mxcsrAfter: mxcsr)
        var linear = state.cs.base &+ state.rip
        if state.mode != .long64 { linear &= 0xFFFF_FFFF }
        c.redeliveredSyscall = redelivered != nil
        var walked: Set<UInt64> = []
        switch ram.translate(linear, state: state, access: .fetch) {
        case let .translated(gpa, entries, _):
            c.instructionGPA = gpa
            for e in entries { walked.insert(e.gpa) }
        case let .pageFault(errorCode, _):
            c.outcome = .failed("the instruction's page is not mapped (#PF error \(errorCode))")
            return c
        case let .unbacked(gpa, _):
            c.outcome = .failed("the page tables at \(hex(gpa)) are not RAM")
            return c
        }
        c.instructionBytes = ram.instructionBytes(state: state)
        if c.instructionBytes.isEmpty {
            c.outcome = .failed("the instruction's bytes are not RAM")
            return c
        }
        // Bytes that are no instruction (e.g. MOVBE with a register operand) still go to the
        // executor: it raises #UD, as the processor does.
        if case let .success(insn) = decode(bytes: c.instructionBytes, mode: DecoderMode(state.mode)) {
            c.mnemonic = String(describing: insn.mnemonic)
            c.instructionBytes = Array(c.instructionBytes.prefix(Int(insn.length)))
            if !insn.prefixes.isDisjoint(with: [.vex, .evex, .xop]) {
                c.outcome = .failed("VEX/EVEX/XOP instructions are not completed (the upper vector halves are not carried in)")
                return c
            }
        } else {
            c.mnemonic = "(bad)"
        }

        let memory = CompletionMemory(ram: ram, bus: bus, vcpu: vcpu)
        let ports = bus.map { CompletionPorts(bus: $0, vcpu: vcpu) }
        let cpu = X86Executor(state: state, memory: memory, ports: ports)
        cpu.deliverExceptions = true
        if let xmm, xmm.count == 32 {
            for i in 0..<16 { cpu.setVectorRegister(i, (xmm[2 * i], xmm[2 * i + 1], 0, 0)) }
        }
        if let mxcsr { cpu.mxcsr = mxcsr }
        let result = cpu.step()
        switch result {
        case .ok:
            c.outcome = .completed
        case let .exception(e, delivered: true):
            c.outcome = .exceptionDelivered(vector: e.vector, errorCode: e.errorCode)
        case let .exception(e, delivered: false):
            c.outcome = .failed("exception \(e.name) was not delivered")
        case .halted:
            c.outcome = .failed("HLT is KVM's to run")
        case .hypercall:
            c.outcome = .failed("a hypercall is KVM's to run")
        case .tripleFault:
            c.outcome = .failed("delivering its exception faulted until shutdown (triple fault)")
        case .unsupported:
            c.outcome = .unsupported
        case let .unbackedMemory(gpa):
            c.outcome = .failed("no memory at \(hex(gpa))")
        default:
            c.outcome = .failed("the emulator needed an answer the VMM does not give (\(result))")
        }
        if c.resumes {
            c.after = cpu.state
            if xmm != nil {
                var v: [UInt64] = []
                v.reserveCapacity(32)
                for i in 0..<16 { let r = cpu.vectorRegister(i); v.append(r.0); v.append(r.1) }
                c.xmmAfter = v
            }
            if mxcsr != nil { c.mxcsrAfter = cpu.mxcsr }
        }

        // Classify what was read: the fetch, the walk to the instruction, the rest.
        let start = c.instructionGPA ?? 0
        for r in memory.reads {
            let role: CompletionBytes.Role
            if r.gpa <= start && start < r.gpa &+ UInt64(r.bytes.count) || r.gpa > start && r.gpa < start &+ 15 {
                role = .instruction
            } else if walked.contains(r.gpa) {
                role = .pageTable
            } else {
                role = .operandRead
            }
            c.memory.append(CompletionBytes(role: role, gpa: r.gpa, bytes: r.bytes))
        }
        for w in memory.writes { c.memory.append(CompletionBytes(role: .written, gpa: w.gpa, bytes: w.bytes)) }
        c.deviceAccesses = memory.deviceAccesses + (ports?.accesses ?? [])
        return c
    }

    /// The save-area MSRs (other than EFER, which is in kvm_sregs) a state carries, by index.
    public static func msrs(of s: CPUState) -> [(index: UInt32, value: UInt64)] {
        [(MSRIndex.star, s.star), (MSRIndex.lstar, s.lstar), (MSRIndex.cstar, s.cstar), (MSRIndex.sfmask, s.sfmask),
         (MSRIndex.kernelGSBase, s.kernelGSBase), (MSRIndex.sysenterCS, s.sysenterCS),
         (MSRIndex.sysenterESP, s.sysenterESP), (MSRIndex.sysenterEIP, s.sysenterEIP), (MSRIndex.pat, s.pat)]
    }

    /// Puts MSR values read from KVM into a state (unknown indices are ignored).
    public static func apply(msrs values: [UInt32: UInt64], to s: inout CPUState) {
        for (i, v) in values {
            switch i {
            case MSRIndex.star: s.star = v
            case MSRIndex.lstar: s.lstar = v
            case MSRIndex.cstar: s.cstar = v
            case MSRIndex.sfmask: s.sfmask = v
            case MSRIndex.kernelGSBase: s.kernelGSBase = v
            case MSRIndex.sysenterCS: s.sysenterCS = v
            case MSRIndex.sysenterESP: s.sysenterESP = v
            case MSRIndex.sysenterEIP: s.sysenterEIP = v
            case MSRIndex.pat: s.pat = v
            default: break
            }
        }
    }

    /// What must be written back to KVM for `after`: whether kvm_sregs changed (segments,
    /// descriptor tables, control registers, EFER) and which MSRs changed.
    public static func writeBack(before: CPUState, after: CPUState) -> (sregs: Bool, msrs: [(index: UInt32, value: UInt64)]) {
        let sregs = before.es != after.es || before.cs != after.cs || before.ss != after.ss || before.ds != after.ds
            || before.fs != after.fs || before.gs != after.gs || before.ldtr != after.ldtr || before.tr != after.tr
            || before.gdtr != after.gdtr || before.idtr != after.idtr || before.cr0 != after.cr0
            || before.cr2 != after.cr2 || before.cr3 != after.cr3 || before.cr4 != after.cr4
            || before.cr8 != after.cr8 || before.efer != after.efer
        let b = msrs(of: before), a = msrs(of: after)
        var changed: [(index: UInt32, value: UInt64)] = []
        for (x, y) in zip(b, a) where x.value != y.value { changed.append(y) }
        return (sregs, changed)
    }
}

/// kvm_pvm runs a SYSCALL at CPL3 natively but leaves the vCPU at CPL3: RCX, R11 and RFLAGS are
/// set and RIP is LSTAR, so the fetch at LSTAR (a supervisor page) faults, and the guest's #PF
/// handler gets a frame whose RIP is LSTAR under a CPL3 CS: a Linux guest kills the process
/// (init: a panic). The VMM sees that handler's entry only when its first instruction exits
/// (Linux's CLAC under SMAP is an emulation failure here); there the state of the SYSCALL is
/// known exactly, so the completer performs the SYSCALL as the processor should have.
public enum SyscallRedelivery {
    /// The user state at the SYSCALL, when `state` is at the entry of the #PF handler (IDT
    /// vector 14) with a frame of such a fault: saved RIP = LSTAR = CR2, a CPL3 CS, a user-mode
    /// error code, and `0F 05` right before RCX (SYSCALL's return address). Nil otherwise.
    public static func userState(atPageFaultEntry state: CPUState, ram: GuestMemory) -> CPUState? {
        guard state.mode == .long64, state.cpl == 0, state.efer & EFER.sce != 0, state.lstar != 0,
              state.cr2 == state.lstar, state.idtr.limit >= 14 * 16 + 15,
              let gate = ram.readLinear(state.idtr.base &+ 14 * 16, count: 16, state: state),
              let frame = ram.readLinear(state.rsp, count: 48, state: state) else { return nil }
        let handler = UInt64(le16(gate, 0)) | UInt64(le16(gate, 6)) << 16 | UInt64(le32(gate, 8)) << 32
        let errorCode = le64(frame, 0), savedRIP = le64(frame, 8), savedCS = le64(frame, 16)
        let savedRSP = le64(frame, 32), savedSS = le64(frame, 40)
        guard handler == state.rip, savedRIP == state.lstar, savedCS & 3 == 3, savedSS & 3 == 3,
              errorCode & 4 != 0, state.rcx >= 2 else { return nil }
        var user = state
        user.rip = state.rcx &- 2
        user.rsp = savedRSP
        user.rflags = (state.r11 & ~RFLAGS.rf) | 2  // SYSCALL saved the user RFLAGS in R11
        user.cs = Segment(selector: UInt16(truncatingIfNeeded: savedCS), base: 0, limit: 0xFFFF_FFFF, attributes: 0xAFB)
        user.ss = Segment(selector: UInt16(truncatingIfNeeded: savedSS), base: 0, limit: 0xFFFF_FFFF, attributes: 0xCF3)
        user.cpl = 3
        guard ram.readLinear(user.rip, count: 2, state: user, access: .fetch) == [0x0F, 0x05] else { return nil }
        return user
    }
}
