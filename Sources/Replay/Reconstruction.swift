import Trace
import X86
import X86Emulator

/// Why a committed exit's state before the instruction cannot be rebuilt exactly.
public struct ReconstructionFailure: Error, Sendable {
    public var message: String
}

/// Rebuilding the state before a committed instruction (DESIGN.md: KVM showed it after it took
/// effect). RIP goes back to the recorded start and each register side effect the decoded
/// instruction has is undone; an instruction whose inputs the after-state no longer holds is
/// refused, never guessed.
enum Reconstruction {
    static func before(_ r: TraceRecord, _ inst: Instruction) -> Result<CPUState, ReconstructionFailure> {
        var s = r.state
        if let why = rebuild(&s, from: r, inst) { return .failure(why) }
        return .success(s)
    }

    /// `before` in place: `s` holds the record's state and becomes the state before.
    static func rebuild(_ s: inout CPUState, from r: borrowing TraceRecord, _ inst: Instruction) -> ReconstructionFailure? {
        var rec = copy r
        return withUnsafePointer(to: &rec) { rebuild(&s, from: $0, inst) }
    }

    /// `rebuild` from a record read in place (its accesses are read only by the forms that need
    /// them: reading the array through the pointer retains it).
    static func rebuild(_ s: inout CPUState, from r: RecordPointer, _ inst: Instruction) -> ReconstructionFailure? {
        s.rip = r.pointee.instructionStart
        // RFLAGS: an instruction that writes status flags without reading them leaves the
        // after-flags as good a before-value as any (the written ones are recomputed and compared;
        // the others it preserved). Flag readers among memory-destination forms are refused.
        switch inst.mnemonic {
        case .out, .hlt, .mov, .movnti, .add, .sub, .and, .or, .xor, .inc, .dec, .not, .neg,
             .shl, .sal, .shr, .sar, .rol, .ror, .bts, .btr, .btc,
             .seto, .setno, .setb, .setae, .sete, .setne, .setbe, .seta, .sets, .setns, .setp, .setnp,
             .setl, .setge, .setle, .setg, .vmmcall, .shld, .shrd, .smsw:
            // Memory (or port) destination only: no register but RIP and RFLAGS changed. (Vector
            // stores are refused below: their source registers are not in the trace.)
            if case .register = inst.operand(0), inst.mnemonic != .out {
                return ReconstructionFailure(message: "\(inst.mnemonic.name) with a register destination: its old value is gone")
            }
            return nil
        case .xchg:
            // XCHG mem, reg: the register held what was written to memory.
            guard let w = r.pointee.accesses.first(where: { $0.isWrite }) else {
                return ReconstructionFailure(message: "xchg without a recorded write")
            }
            var reg: Register?
            for k in 0..<Int(inst.operandCount) { if case .register(let x) = inst.operand(k) { reg = x } }
            guard let reg else { return ReconstructionFailure(message: "xchg without a register operand") }
            setRegister(&s, reg, w.value)
            return nil
        case .push, .pushf, .pushfd, .pushfq, .call, .enter:
            // A stack store: RSP moved down by the width (ENTER also set RBP to the slot the old
            // RBP went to, and that old RBP is what it wrote).
            let width = UInt64(inst.operandSize / 8)
            let stackWidth = s.mode == .long64 ? 64 : (s.ss.defaultBig ? 32 : 16)
            if inst.mnemonic == .enter {
                guard case .immediate(let level, _) = inst.operand(1), level & 0x1F == 0,
                      let w = r.pointee.accesses.first(where: { $0.isWrite }), UInt64(w.size) == width else {
                    return ReconstructionFailure(message: "committed enter: only nesting level 0 with its whole store in one recorded access")
                }
                s.rsp = wrap(s.rbp, width, stackWidth)
                setRegister(&s, Register(width == 8 ? .gpr64 : (width == 4 ? .gpr32 : .gpr16), 5), w.value)
                return nil
            }
            if case .register(let reg) = inst.operand(0), reg.regClass != .segment, reg.number == 4 {
                return ReconstructionFailure(message: "committed push of the stack pointer")
            }
            s.rsp = wrap(s.rsp, width, stackWidth)
            return nil
        case .outs, .stos, .movs:
            let items = UInt64(max(1, r.pointee.accesses.first?.count ?? 1))
            let size = UInt64(stringElementSize(inst))
            let delta = size &* items
            let down = s.rflags & RFLAGS.df != 0
            let width = Int(inst.addressSize)
            // Pointers moved by delta per item (down when DF is set): move them back.
            if inst.mnemonic == .outs || inst.mnemonic == .movs {
                s.rsi = wrap(s.rsi, down ? delta : 0 &- delta, width)
            }
            if inst.mnemonic == .stos || inst.mnemonic == .movs {
                s.rdi = wrap(s.rdi, down ? delta : 0 &- delta, width)
            }
            if inst.hasRep {
                s.rcx = wrap(s.rcx, items, width)
                // RF marks a REP instruction interrupted between iterations; before its first
                // iteration the previous instruction had completed, which cleared it.
                s.rflags &= ~RFLAGS.rf
            }
            return nil
        default:
            return ReconstructionFailure(message: "committed \(inst.mnemonic.name): undoing its register effects is not defined")
        }
    }

    /// Save-area MSRs the trace shows through WRMSR (accesses, `msrWrites`) rather than in each
    /// state: a state still holding the reset value of one gets the value last written.
    static func applyMSRs(_ known: [UInt32: UInt64], to s: inout CPUState) {
        guard !known.isEmpty else { return }
        let d = CPUState()
        for (i, v) in known {
            switch i {
            case MSRIndex.star: if s.star == d.star { s.star = v }
            case MSRIndex.lstar: if s.lstar == d.lstar { s.lstar = v }
            case MSRIndex.cstar: if s.cstar == d.cstar { s.cstar = v }
            case MSRIndex.sfmask: if s.sfmask == d.sfmask { s.sfmask = v }
            case MSRIndex.kernelGSBase: if s.kernelGSBase == d.kernelGSBase { s.kernelGSBase = v }
            case MSRIndex.sysenterCS: if s.sysenterCS == d.sysenterCS { s.sysenterCS = v }
            case MSRIndex.sysenterESP: if s.sysenterESP == d.sysenterESP { s.sysenterESP = v }
            case MSRIndex.sysenterEIP: if s.sysenterEIP == d.sysenterEIP { s.sysenterEIP = v }
            case MSRIndex.pat: if s.pat == d.pat { s.pat = v }
            default: break
            }
        }
    }

    static let saveAreaMSRs: Set<UInt32> = [MSRIndex.star, MSRIndex.lstar, MSRIndex.cstar, MSRIndex.sfmask, MSRIndex.kernelGSBase,
                                            MSRIndex.sysenterCS, MSRIndex.sysenterESP, MSRIndex.sysenterEIP, MSRIndex.pat]

    /// `reg + delta` in the low `width` bits; bits above an address size of 16 stay as they were
    /// (a 32-bit update in 64-bit mode cleared them, and the emulator clears them again).
    static func wrap(_ reg: UInt64, _ delta: UInt64, _ width: Int) -> UInt64 {
        switch width {
        case 16: return (reg & ~0xFFFF) | ((reg &+ delta) & 0xFFFF)
        case 32: return (reg & ~0xFFFF_FFFF) | ((reg &+ delta) & 0xFFFF_FFFF)
        default: return reg &+ delta
        }
    }

    static func stringElementSize(_ inst: Instruction) -> Int {
        if let m = inst.memoryOperand, m.size > 0 { return Int(m.size) }
        return Int(inst.operandSize) / 8
    }

    static func setRegister(_ s: inout CPUState, _ r: Register, _ value: UInt64) {
        switch r.regClass {
        case .gpr8 where r.number >= 4 && r.number < 8:
            let n = Int(r.number) - 4
            s.setGPR(n, (s.gpr(n) & ~0xFF00) | ((value & 0xFF) << 8))
        case .gpr8, .gpr8rex:
            s.setGPR(Int(r.number), (s.gpr(Int(r.number)) & ~0xFF) | (value & 0xFF))
        case .gpr16:
            s.setGPR(Int(r.number), (s.gpr(Int(r.number)) & ~0xFFFF) | (value & 0xFFFF))
        case .gpr32:
            s.setGPR(Int(r.number), (s.gpr(Int(r.number)) & ~0xFFFF_FFFF) | (value & 0xFFFF_FFFF))
        default:
            s.setGPR(Int(r.number), value)
        }
    }

    /// The RFLAGS bits the instruction leaves undefined (UNDEFINED_FLAGS.md), for its inputs.
    static func undefinedFlags(_ inst: Instruction, before: CPUState) -> UInt64 {
        withUnsafePointer(to: before) { undefinedFlags(inst, at: $0) }
    }

    /// `undefinedFlags` with the state before read in place.
    static func undefinedFlags(_ inst: Instruction, at before: StatePointer) -> UInt64 {
        let bits = Int(inst.operandSize)
        switch inst.mnemonic {
        case .shl, .sal, .shr, .sar, .rol, .ror, .rcl, .rcr, .shld, .shrd:
            let countOperand = inst.mnemonic == .shld || inst.mnemonic == .shrd ? 2 : 1
            var count: UInt64 = 1
            switch inst.operand(countOperand) {
            case .immediate(let v, _): count = UInt64(bitPattern: v)
            case .register(let r): count = before.pointee.gpr(Int(r.number)) & 0xFF
            default: break
            }
            let masked = count & (bits == 64 ? 0x3F : 0x1F)
            return UndefinedFlags.mask(for: inst.mnemonic, maskedCount: masked, operandBits: bits)
        default:
            return UndefinedFlags.mask(for: inst.mnemonic, operandBits: bits)
        }
    }
}

/// Field-by-field comparison of two states in the one schema, masking undefined flags.
enum StateComparison {
    /// `compare` with the executor's state, built only when it differs from `recorded`.
    @inline(__always)
    static func compare(recorded a: borrowing CPUState, executor: X86Executor, flagMask: UInt64, into d: inout [FieldDifference]) {
        if executor.stateMatches(a, flagMask: flagMask) { return }
        compare(recorded: a, emulated: executor.state, flagMask: flagMask, into: &d)
    }

    /// `compare` with the recorded state read in place.
    @inline(__always)
    static func compare(recorded a: StatePointer, executor: X86Executor, flagMask: UInt64, into d: inout [FieldDifference]) {
        if executor.stateMatches(at: a, flagMask: flagMask) { return }
        compare(recorded: a.pointee, emulated: executor.state, flagMask: flagMask, into: &d)
    }

    static func compare(recorded a: CPUState, emulated b: CPUState, flagMask: UInt64, into d: inout [FieldDifference]) {
        if a == b { return }
        for i in 0..<16 where a.gpr(i) != b.gpr(i) {
            d.append(FieldDifference(GPR.names[i], recorded: Hex.string(a.gpr(i)), emulated: Hex.string(b.gpr(i))))
        }
        if a.rip != b.rip { d.append(FieldDifference("rip", recorded: Hex.string(a.rip), emulated: Hex.string(b.rip))) }
        if a.rflags & ~flagMask != b.rflags & ~flagMask {
            d.append(FieldDifference("rflags", recorded: Hex.string(a.rflags), emulated: Hex.string(b.rflags)))
        }
        for r in SegmentRegister.allCases { segment(r.name, a.segment(r), b.segment(r), &d) }
        segment("ldtr", a.ldtr, b.ldtr, &d)
        segment("tr", a.tr, b.tr, &d)
        table("gdtr", a.gdtr, b.gdtr, &d)
        table("idtr", a.idtr, b.idtr, &d)
        let regs: [(String, UInt64, UInt64)] = [
            ("cr0", a.cr0, b.cr0), ("cr2", a.cr2, b.cr2), ("cr3", a.cr3, b.cr3), ("cr4", a.cr4, b.cr4),
            ("cr8", a.cr8, b.cr8), ("efer", a.efer, b.efer), ("cpl", UInt64(a.cpl), UInt64(b.cpl)),
            ("dr6", a.dr6, b.dr6), ("dr7", a.dr7, b.dr7),
            ("star", a.star, b.star), ("lstar", a.lstar, b.lstar), ("cstar", a.cstar, b.cstar),
            ("sfmask", a.sfmask, b.sfmask), ("kernel_gs_base", a.kernelGSBase, b.kernelGSBase),
            ("sysenter_cs", a.sysenterCS, b.sysenterCS), ("sysenter_esp", a.sysenterESP, b.sysenterESP),
            ("sysenter_eip", a.sysenterEIP, b.sysenterEIP), ("pat", a.pat, b.pat),
            ("xcr0", a.xcr0, b.xcr0),
        ]
        for (n, x, y) in regs where x != y { d.append(FieldDifference(n, recorded: Hex.string(x), emulated: Hex.string(y))) }
    }

    static func segment(_ n: String, _ a: Segment, _ b: Segment, _ d: inout [FieldDifference]) {
        guard a != b else { return }
        if a.selector != b.selector { d.append(FieldDifference(n + ".selector", recorded: Hex.string(a.selector), emulated: Hex.string(b.selector))) }
        if a.base != b.base { d.append(FieldDifference(n + ".base", recorded: Hex.string(a.base), emulated: Hex.string(b.base))) }
        if a.limit != b.limit { d.append(FieldDifference(n + ".limit", recorded: Hex.string(a.limit), emulated: Hex.string(b.limit))) }
        if a.attributes != b.attributes { d.append(FieldDifference(n + ".attributes", recorded: Hex.string(a.attributes), emulated: Hex.string(b.attributes))) }
    }

    static func table(_ n: String, _ a: DescriptorTable, _ b: DescriptorTable, _ d: inout [FieldDifference]) {
        if a.base != b.base { d.append(FieldDifference(n + ".base", recorded: Hex.string(a.base), emulated: Hex.string(b.base))) }
        if a.limit != b.limit { d.append(FieldDifference(n + ".limit", recorded: Hex.string(a.limit), emulated: Hex.string(b.limit))) }
    }
}
