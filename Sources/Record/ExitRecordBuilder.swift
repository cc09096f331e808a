import KVM
import Trace
import VMM
import X86
import X86Emulator

/// Guest memory as the record builder reads it (the VMM's read-only view while recording,
/// a plain dictionary in tests).
public protocol RecordMemory: LocatorMemory {
    func walk(_ linear: UInt64, access: PageAccess) -> PageWalkResult
}

/// The facts of one exit, as plain values: what `ExitRecordBuilder` turns into a record.
public struct ExitFacts {
    public var vcpu: Int
    public var exit: VMExit
    public var state: CPUState
    public var stateAfter: CPUState?
    public var access: VMM.BusAccess?
    /// All `count × size` bytes of an I/O exit's data.
    public var ioData: [UInt8]
    public var tscAtExit: UInt64
    public var tscAtReentry: UInt64
    /// The VMM refused the MSR access and gave the guest #GP(0) (`ObservedExit.msrRefused`).
    public var msrRefused: Bool
    public init(vcpu: Int, exit: VMExit, state: CPUState, stateAfter: CPUState? = nil, access: VMM.BusAccess? = nil,
                ioData: [UInt8] = [], tscAtExit: UInt64 = 0, tscAtReentry: UInt64 = 0, msrRefused: Bool = false) {
        self.vcpu = vcpu
        self.exit = exit
        self.state = state
        self.stateAfter = stateAfter
        self.access = access
        self.ioData = ioData
        self.tscAtExit = tscAtExit
        self.tscAtReentry = tscAtReentry
        self.msrRefused = msrRefused
    }
}

/// Turns one exit into a VMCB-style record: control area (EXITCODE, EXITINFO1/2, nRIP, the
/// instruction), save area (the state), device side, guest bytes and timing. A plain function of
/// its inputs, so it is tested without KVM.
public enum ExitRecordBuilder {
    /// The recorder's path: the exit's fields are passed down by reference (no copy of the
    /// 500-byte states but the one into the record), and `memory` is the lane's reused view.
    static func build(exit: borrowing ObservedExit, singleStep: Bool, openGroup: UInt64?, cache: LocatorCache,
                      memory: ViewMemory) -> TraceRecord {
        var io: [UInt8] = []
        if let d = exit.ioData {
            // A loop writes the same bytes to the same port again and again: the previous
            // access's array serves (no allocation per exit).
            if let prev = cache.recentAccesses.first, prev.space == .port, prev.data.count == d.count,
               prev.data.withUnsafeBytes({ $0.elementsEqual(d) }) {
                io = prev.data
            } else {
                io = Array(d)
            }
        }
        memory.load(exit.state)
        return build(vcpu: exit.vcpu, exit: exit.exit, state: exit.state, stateAfter: exit.stateAfter,
                     access: exit.access, ioData: io, tscAtExit: exit.tscAtExit, tscAtReentry: exit.tscAtReentry,
                     msrRefused: exit.msrRefused, memory: memory, singleStep: singleStep, openGroup: openGroup, cache: cache)
    }

    /// - Parameter openGroup: the start of an instruction whose earlier exit said more would follow.
    public static func build(_ f: ExitFacts, memory: RecordMemory, singleStep: Bool = false,
                             openGroup: UInt64? = nil, cache: LocatorCache? = nil) -> TraceRecord {
        build(vcpu: f.vcpu, exit: f.exit, state: f.state, stateAfter: f.stateAfter, access: f.access, ioData: f.ioData,
              tscAtExit: f.tscAtExit, tscAtReentry: f.tscAtReentry, msrRefused: f.msrRefused, memory: memory, singleStep: singleStep,
              openGroup: openGroup, cache: cache)
    }

    static func build(vcpu: Int, exit: VMExit, state s: CPUState, stateAfter: CPUState?, access: VMM.BusAccess?,
                      ioData: [UInt8], tscAtExit: UInt64, tscAtReentry: UInt64, msrRefused: Bool, memory: RecordMemory,
                      singleStep: Bool, openGroup: UInt64?, cache: LocatorCache?) -> TraceRecord {
        let locator = cache ?? LocatorCache(capacity: 0)
        var r = TraceRecord(kind: .exit, vcpu: UInt16(vcpu), kvmExitReason: exit.reason, state: s,
                            stateAfter: stateAfter, tscExit: tscAtExit, tscEntry: tscAtReentry)
        var located: LocatedInstruction?

        switch exit {
        case let .io(port, size, direction, count, _):
            let isIn = direction == .in
            // On this host IN is shown pending (RIP on it) and OUT committed (RIP past it).
            if isIn {
                located = locator.pending(state: s, memory: memory)
            } else {
                located = locator.committed(state: s, access: .portOut(port: port, size: Int(size)), memory: memory)
            }
            fillPortIO(&r, port: port, size: size, isIn: isIn, count: count,
                       data: ioData.isEmpty ? littleEndian(access?.data ?? 0, Int(size)) : ioData,
                       located: located, accesses: locator)
            if isIn, r.lastFragment, let inst = located?.instruction, inst.mnemonic == .ins, inst.hasRep,
               insBatchReachesDevice(inst, state: s, items: Int(count), memory: memory) {
                r.lastFragment = false  // KVM's emulator writes the batch's device part as MMIO write exits next
            }
        case let .mmio(address, length, isWrite, data):
            if isWrite {
                located = locator.committed(state: s, access: .mmioWrite(gpa: address, size: Int(length)),
                                            memory: memory, hint: openGroup, written: data)
                r.visibility = .committed
            } else {
                located = locator.pending(state: s, memory: memory)
                r.visibility = .pending
            }
            // KVM's emulator writes a REP INS batch's items to MMIO as 8-byte pieces after the IN
            // exit, RIP still on the instruction: no single item explains such a piece.
            var insBatchEnd: UInt64? = nil
            if isWrite, located?.instruction == nil || located?.candidates != 1, let open = openGroup, open == s.rip,
               let (l, end) = insBatchWrite(state: s, gpa: address, length: Int(length), memory: memory) {
                located = l
                insBatchEnd = end
            }
            r.exitCode = .npf
            var info = NPFInfo.finalAddress
            if isWrite { info |= NPFInfo.write }
            if s.cpl == 3 { info |= NPFInfo.user }
            r.exitInfo1 = info
            r.exitInfo2 = address
            let value = isWrite ? data : (access?.data ?? data)
            r.accesses = [Trace.DeviceAccess(space: .mmio, address: address, size: UInt8(clamping: length), isWrite: isWrite,
                                             data: littleEndian(value, Int(min(length, 8))))]
            let inst = located?.instruction
            if let end = insBatchEnd, let inst {
                // The batch's last piece ends where RDI now points; the instruction ends with
                // the last batch (RCX 0), else its next IN exit follows.
                let mask: UInt64 = inst.addressSize == 16 ? 0xFFFF : (inst.addressSize == 32 ? 0xFFFF_FFFF : .max)
                r.lastFragment = s.rcx & mask == 0 && address &+ UInt64(length) == end
            } else if !isWrite, let inst, InstructionLocator.readModifyWrite(inst) {
                r.lastFragment = false  // the write half follows as the next exit
            } else if !isWrite, let inst, inst.mnemonic == .outs {
                r.lastFragment = false  // OUTS reading its item from MMIO: the port write exits next
            } else if let inst, morePiecesFollow(inst, gpa: address, length: Int(length), state: s,
                                                  nextRIP: isWrite ? s.rip : (located?.start ?? s.rip) &+ UInt64(inst.length),
                                                  memory: memory) {
                r.lastFragment = false  // the operand's next piece exits next
            } else {
                r.lastFragment = lastFragment(inst: inst, state: s, pending: !isWrite, count: 1)
            }
        case let .rdmsr(index, _), let .wrmsr(index, _, _):
            located = locator.pending(state: s, memory: memory)
            r.visibility = .pending
            r.exitCode = .msr
            var isWrite = false
            var value: UInt64 = access?.data ?? 0
            if case let .wrmsr(_, _, d) = exit { isWrite = true; value = d }
            r.exitInfo1 = isWrite ? 1 : 0
            r.accesses = [Trace.DeviceAccess(space: .msr, address: UInt64(index), size: 8, isWrite: isWrite,
                                             data: littleEndian(value, 8))]
            r.accessRefused = msrRefused
        case .hlt:
            // KVM reports HLT after it (RIP past the F4 byte).
            located = locator.committed(state: s, access: .other, memory: memory)
            if located?.candidates == 0, s.rip > 0, let b = memory.readLinear(InstructionLocator.linear(s.rip &- 1, state: s), count: 1), b[0] == 0xF4,
               case .success(let inst) = decode(bytes: b, mode: DecoderMode(s.mode)) {
                located = LocatedInstruction(start: s.rip &- 1, bytes: b, instruction: inst, candidates: 1)
            }
            r.visibility = .committed
            r.exitCode = .hlt
        case let .debug(exception, _, dr6, _):
            located = locator.pending(state: s, memory: memory)
            r.visibility = .pending
            r.exitCode = .exception(Int(exception))
            r.exitInfo1 = dr6
            if singleStep && exception == 1 { r.kind = .step }
        case .shutdown:
            located = locator.pending(state: s, memory: memory)
            r.exitCode = .shutdown
            r.note = "triple fault"
        case let .internalError(e):
            located = locator.pending(state: s, memory: memory)
            if let b = e.instructionBytes, !b.isEmpty, located?.instruction == nil {
                located = LocatedInstruction(start: s.rip, bytes: b, instruction: nil, candidates: 0)
            }
            r.exitCode = .none
            r.note = "internal error: \(e.suberrorName)"
        case let .failEntry(hw, cpu):
            r.exitCode = .invalid
            r.exitInfo1 = hw
            r.note = "FAIL_ENTRY hardware reason 0x\(String(hw, radix: 16)) on cpu \(cpu)"
        case .hypercall:
            located = locator.pending(state: s, memory: memory)
            r.visibility = .pending
            r.exitCode = .vmmcall
        case .irqWindowOpen:
            r.exitCode = .vintr
        case let .systemEvent(e):
            r.exitCode = .none
            r.note = "system event \(e.typeName)"
        default:
            r.exitCode = .none
            r.note = exit.reasonName
        }

        if let l = located {
            // A port instruction that consults the TSS bitmap reads memory beyond its fetch.
            let bitmap = readsIOBitmap(l.instruction, r.state)
            if !bitmap, let memo = locator.guestBytes(for: l) {
                setInstruction(&r, l, guestBytes: memo)
            } else {
                setInstruction(&r, l, guestBytes: [])
                r.memory = guestBytes(located: l, record: r, memory: memory, singleStep: r.kind == .step)
                if !bitmap, fetchOnly(l, singleStep: r.kind == .step), r.memory.lazy.filter({ $0.role == .instruction }).reduce(0, { $0 + $1.bytes.count }) == l.bytes.count {
                    locator.rememberGuestBytes(r.memory, for: l)
                }
            }
        }
        return r
    }

    /// The control-area fields of a port I/O exit (SVM IOIO): EXITINFO1 with the address size and
    /// segment from the decoded instruction, the device side, whether the instruction is done.
    /// Shared by `build` and the recorder's pipeline (`portIORecord`), so both write the same record.
    static func fillPortIO(_ r: inout TraceRecord, port: UInt16, size: UInt8, isIn: Bool, count: UInt32, data: [UInt8],
                           located: LocatedInstruction?, accesses: LocatorCache?) {
        let inst = located?.instruction
        r.visibility = isIn ? .pending : .committed
        let isString = inst.map { $0.mnemonic == .ins || $0.mnemonic == .outs } ?? (count > 1)
        var segment = isIn ? SegmentRegister.es : SegmentRegister.ds
        if !isIn, let m = inst?.memoryOperand { segment = m.segment }
        let ioio = IOIOInfo(port: port, isIn: isIn, isString: isString, isRep: inst?.hasRep ?? false,
                            size: Int(size), addressSize: Int(inst?.addressSize ?? UInt8(r.state.mode.addressSize)),
                            segment: segment.rawValue)
        r.exitCode = .ioio
        r.exitInfo1 = ioio.exitInfo1
        let a = Trace.DeviceAccess(space: .port, address: UInt64(port), size: size, isWrite: !isIn, count: count, data: data)
        r.accesses = accesses?.accesses(a) ?? [a]
        r.lastFragment = lastFragment(inst: inst, state: r.state, pending: isIn, count: UInt64(count))
    }

    /// The instruction fields of a record (start, bytes, nRIP) and its guest bytes.
    static func setInstruction(_ r: inout TraceRecord, _ l: LocatedInstruction, guestBytes: [GuestBytes]) {
        r.instructionStart = l.start
        r.instructionBytes = l.bytes
        r.candidates = l.candidates
        r.nextRIP = l.instruction == nil ? 0 : l.start &+ UInt64(l.bytes.count)
        if r.exitCode == .ioio { r.exitInfo2 = r.nextRIP }
        r.memory = guestBytes
    }

    /// The record of a port I/O exit whose instruction and guest bytes the vCPU thread took from
    /// its locator cache (`Recorder`'s fast path): what `build` gives for the same exit, built
    /// without reading guest memory, so it can run on another thread.
    static func portIORecord(vcpu: Int, kvmExitReason: UInt32, port: UInt16, size: UInt8, isIn: Bool, data: [UInt8], state: borrowing CPUState,
                             located: LocatedInstruction, guestBytes: [GuestBytes], tscExit: UInt64, tscEntry: UInt64,
                             accesses: LocatorCache) -> TraceRecord {
        var r = TraceRecord(kind: .exit, vcpu: UInt16(vcpu), kvmExitReason: kvmExitReason, state: copy state,
                            stateAfter: nil, tscExit: tscExit, tscEntry: tscEntry)
        fillPortIO(&r, port: port, size: size, isIn: isIn, count: 1, data: data, located: located, accesses: accesses)
        setInstruction(&r, located, guestBytes: guestBytes)
        return r
    }

    /// Whether `guestBytes` collects nothing but the fetch for this instruction (its bytes and
    /// the page-table entries walked to them): a short list of instructions with no memory
    /// operand, explicit or implicit (kept as a list so that an addition to `guestBytes` cannot
    /// silently make a cached collection wrong).
    static func fetchOnly(_ l: LocatedInstruction, singleStep: Bool) -> Bool {
        guard !singleStep, let inst = l.instruction else { return false }
        switch inst.mnemonic {
        case .in, .out, .hlt, .rdmsr, .wrmsr, .cpuid, .vmcall, .vmmcall:
            for i in 0..<Int(inst.operandCount) {
                if case .memory = inst.operand(i) { return false }
            }
            return true
        default:
            return false
        }
    }

    /// Whether this exit finished its instruction (DESIGN.md: one instruction can exit several times).
    static func lastFragment(inst: Instruction?, state: CPUState, pending: Bool, count: UInt64) -> Bool {
        guard let inst, inst.hasRep else { return true }
        let mask: UInt64 = inst.addressSize == 16 ? 0xFFFF : (inst.addressSize == 32 ? 0xFFFF_FFFF : .max)
        let rcx = state.rcx & mask
        // Pending: RCX still counts this chunk; committed: RCX counts what is left after it.
        return pending ? rcx <= count : rcx == 0
    }

    /// Whether a REP INS batch of `items` (pending: ES:RDI is its first item's) writes any byte
    /// outside RAM: KVM's emulator then writes those bytes to MMIO, each piece its own exit.
    static func insBatchReachesDevice(_ inst: Instruction, state s: CPUState, items: Int, memory: RecordMemory) -> Bool {
        guard let m = inst.memoryOperand,
              let lin = InstructionLocator.effectiveLinear(m, inst: inst, state: s, nextRIP: s.rip) else { return false }
        let size = InstructionLocator.stringSize(inst)
        let total = min(max(items, 1) * size, 1 << 16)  // KVM batches at most a page; bounded anyway
        var start = lin
        if s.rflags & RFLAGS.df != 0 { start = lin &- UInt64(total - size) }
        var offset = 0
        while offset < total {
            let la = start &+ UInt64(offset)
            let chunk = min(total - offset, Int(4096 - (la & 0xFFF)))
            if let pa = memory.physical(la), memory.readPhysical(pa, count: chunk) == nil { return true }
            offset += chunk
        }
        return false
    }

    /// The REP INS at RIP, if this MMIO write is a piece of its batch: KVM's emulator has already
    /// advanced RDI past the batch (ascending, DF clear: it batches only then), so the piece lies
    /// within the page's worth of bytes before ES:RDI. Returns the instruction and the batch's
    /// guest-physical end.
    static func insBatchWrite(state s: CPUState, gpa: UInt64, length: Int, memory: RecordMemory) -> (LocatedInstruction, UInt64)? {
        let l = InstructionLocator.pending(state: s, memory: memory)
        guard let inst = l.instruction, inst.mnemonic == .ins, inst.hasRep, s.rflags & RFLAGS.df == 0,
              let m = inst.memoryOperand, length > 0,
              let lin = InstructionLocator.effectiveLinear(m, inst: inst, state: s, nextRIP: s.rip),
              let last = memory.physical(lin &- 1) else { return nil }
        let end = last &+ 1
        guard gpa &+ UInt64(length) <= end, end &- gpa <= 4096, gpa < end else { return nil }
        return (l, end)
    }

    /// Whether this MMIO access is a piece of a wider explicit memory operand that does not reach
    /// its end: KVM splits an access at a page boundary and into 8-byte pieces (MOVDQU, a far
    /// pointer), each piece its own exit, in address order.
    static func morePiecesFollow(_ inst: Instruction, gpa: UInt64, length: Int, state: CPUState, nextRIP: UInt64,
                                 memory: RecordMemory) -> Bool {
        guard !inst.hasRep, !inst.hasRepne, let m = inst.memoryOperand, Int(m.size) > length,
              let lin = InstructionLocator.effectiveLinear(m, inst: inst, state: state, nextRIP: nextRIP) else { return false }
        // The operand's offset of this piece: on its first page, or on the next one.
        let first = min(Int(m.size), Int(4096 - (lin & 0xFFF)))
        var offset: Int? = nil
        if let pa = memory.physical(lin), gpa >= pa, gpa - pa < UInt64(first) { offset = Int(gpa - pa) }
        if offset == nil, first < Int(m.size), let pa = memory.physical(lin &+ UInt64(first)), gpa >= pa,
           gpa - pa < UInt64(Int(m.size) - first) {
            offset = first + Int(gpa - pa)
        }
        guard let offset, offset + length < Int(m.size) else { return false }
        // The next piece exits only if it is not RAM (half an operand may lie in RAM).
        guard let next = memory.physical(lin &+ UInt64(offset + length)) else { return false }
        return memory.readPhysical(next, count: 1) == nil
    }

    /// Whether `record` is an MMIO write that several instructions ending at RIP explain, which
    /// the next exit may settle (`resolveSplitWrite`): the recorder holds it back until then.
    static func mayBeFirstPiece(_ r: borrowing TraceRecord) -> Bool {
        r.kind == .exit && r.exitCode == .npf && r.visibility == .committed && r.candidates > 1
            && r.accesses.count == 1 && r.accesses[0].space == .mmio && r.accesses[0].isWrite
    }

    /// An ambiguous MMIO write (`mayBeFirstPiece`) followed, at the same RIP, by a write exit of
    /// one located instruction that also performed the held access as the first piece of its
    /// operand (a store straddling a page into MMIO exits once per piece, both shown committed):
    /// the held exit is that instruction's fragment 0. Rewrites `first` and returns true if so.
    static func resolveSplitWrite(_ first: inout TraceRecord, next: borrowing TraceRecord, memory: RecordMemory) -> Bool {
        guard mayBeFirstPiece(first), next.kind == .exit, next.exitCode == .npf, next.visibility == .committed,
              next.candidates == 1, next.state.rip == first.state.rip, next.instructionStart != first.instructionStart,
              next.accesses.count == 1, next.accesses[0].space == .mmio, next.accesses[0].isWrite else { return false }
        let a = first.accesses[0]
        let l = InstructionLocator.committed(state: first.state, access: .mmioWrite(gpa: a.address, size: Int(a.size)),
                                             memory: memory, hint: next.instructionStart)
        guard l.start == next.instructionStart, let inst = l.instruction,
              morePiecesFollow(inst, gpa: a.address, length: Int(a.size), state: first.state, nextRIP: first.state.rip,
                               memory: memory) else { return false }
        first.instructionStart = l.start
        first.instructionBytes = l.bytes
        first.candidates = 1
        first.nextRIP = l.start &+ UInt64(l.bytes.count)
        first.lastFragment = false
        first.memory = guestBytes(located: l, record: first, memory: memory, singleStep: false)
        return true
    }

    /// Whether IN/OUT/INS/OUTS at this state consult the TSS I/O permission bitmap: protected
    /// mode with CPL > IOPL, or virtual-8086 mode.
    static func readsIOBitmap(_ inst: Instruction?, _ s: borrowing CPUState) -> Bool {
        guard let inst else { return false }
        switch inst.mnemonic {  // a switch, not an array literal: this runs on every exit
        case .in, .out, .ins, .outs: break
        default: return false
        }
        switch s.mode {
        case .real: return false
        case .virtual8086: return true
        default: return UInt64(s.cpl) > (s.rflags >> 12) & 3
        }
    }

    /// The port an IN/OUT/INS/OUTS addresses: its 8-bit immediate, else DX.
    static func ioPort(_ inst: Instruction, _ s: borrowing CPUState) -> UInt16 {
        for i in 0..<Int(inst.operandCount) {
            if case .immediate(let p, _) = inst.operand(i) { return UInt16(UInt64(bitPattern: p) & 0xFF) }
        }
        return UInt16(truncatingIfNeeded: s.rdx)
    }

    static func littleEndian(_ v: UInt64, _ size: Int) -> [UInt8] {
        (0..<max(0, min(size, 8))).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) }
    }

    /// The guest bytes replay needs: the instruction's bytes where they are in guest-physical
    /// memory, the page-table entries walked to reach them and the operands, and the operands'
    /// bytes in RAM (MMIO bytes are the device side, recorded as accesses).
    static func guestBytes(located l: LocatedInstruction, record r: TraceRecord, memory: RecordMemory,
                           singleStep: Bool) -> [GuestBytes] {
        var c = GuestByteCollector(memory: memory, mmio: r.accesses.first(where: { $0.space == .mmio })?.address)
        let s = r.state
        // The instruction, page by page.
        var lin = InstructionLocator.linear(l.start, state: s)
        var offset = 0
        while offset < l.bytes.count {
            let chunk = min(l.bytes.count - offset, Int(4096 - (lin & 0xFFF)))
            guard case let .translated(gpa, entries, _) = memory.walk(lin, access: .fetch) else { break }
            c.addWalk(entries)
            c.out.append(GuestBytes(role: .instruction, gpa: gpa, bytes: Array(l.bytes[offset..<(offset + chunk)])))
            offset += chunk
            lin &+= UInt64(chunk)
        }
        guard let inst = l.instruction else { return c.out }
        let isString = [.movs, .stos, .lods, .ins, .outs, .cmps, .scas].contains(inst.mnemonic)
        let items = Int(max(1, r.accesses.first?.count ?? 1))
        // Explicit memory operands and string operands.
        for i in 0..<Int(inst.operandCount) {
            guard case .memory(let m) = inst.operand(i), m.size > 0 else { continue }
            if inst.mnemonic == .lea || inst.mnemonic == .nop || inst.mnemonic == .invlpg { continue }
            var adjust: Int64 = 0
            if r.visibility == .committed && isString {
                let step = Int64(m.size) * Int64(items)
                adjust = s.rflags & RFLAGS.df != 0 ? step : -step
            }
            let elements = isString ? items : 1
            guard let la = InstructionLocator.effectiveLinear(m, inst: inst, state: s, nextRIP: r.nextRIP, adjust: adjust) else { continue }
            let total = min(Int(m.size) * elements, 4096)
            var start = la
            if s.rflags & RFLAGS.df != 0 && elements > 1 { start = la &- UInt64(total - Int(m.size)) }
            c.addRange(start, count: total)
            // A REP string instruction's next item: the walk to it, so that replay sees the #PF
            // that ends the instruction there (its buffer running into a not-present page).
            if isString && (inst.hasRep || inst.hasRepne) {
                let next = s.rflags & RFLAGS.df != 0 ? start &- UInt64(m.size) : start &+ UInt64(total)
                c.addWalkTo(next)
            }
        }
        // Descriptor tables an instruction reads implicitly: segment loads and far transfers
        // read GDT/LDT entries, interrupts and IRET the IDT and GDT (bounded to 4 KiB each;
        // the writer stores identical bytes once per frame).
        if loadsDescriptors(inst) && s.cr0 & CR0.pe != 0 && s.mode != .virtual8086 {
            c.addRange(s.gdtr.base, count: min(Int(s.gdtr.limit) + 1, 4096))
            if s.ldtr.present && s.ldtr.limit > 0 { c.addRange(s.ldtr.base, count: min(Int(s.ldtr.limit) + 1, 4096)) }
        }
        if [.int, .int3, .into, .iret, .iretd, .iretq].contains(inst.mnemonic) {
            c.addRange(s.idtr.base, count: min(Int(s.idtr.limit) + 1, 4096))
        }
        // The I/O permission bitmap: the TSS's map base and the two bitmap bytes the port's bits
        // lie in (APM 2, "I/O-Permission Bitmap"); out-of-limit reads fault, nothing to record.
        if readsIOBitmap(inst, s) && s.tr.limit >= 0x67 {
            c.addRange(s.tr.base &+ 0x66, count: 2)
            if let base = memory.readLinear(s.tr.base &+ 0x66, count: 2) {
                let port = ioPort(inst, s)
                let offset = (UInt64(base[0]) | UInt64(base[1]) << 8) &+ UInt64(port >> 3)
                if offset &+ 1 <= UInt64(s.tr.limit) { c.addRange(s.tr.base &+ offset, count: 2) }
            }
        }
        // Implicit stack operands, for single-step replay of stack instructions.
        if singleStep {
            let stackOps: [Mnemonic] = [.push, .pop, .call, .ret, .iret, .iretd, .iretq, .enter, .leave, .pushf, .popf, .int, .int3, .retf]
            if stackOps.contains(inst.mnemonic) {
                let width: UInt64 = s.mode == .long64 ? 8 : (s.ss.defaultBig ? 4 : 2)
                let base = s.mode == .long64 ? s.rsp : (s.ss.base &+ (s.ss.defaultBig ? s.rsp & 0xFFFF_FFFF : s.rsp & 0xFFFF))
                c.addRange(base &- 8 * width, count: Int(16 * width))
            }
        }
        return c.out
    }
}

extension ExitRecordBuilder {
    /// Instructions that load a segment descriptor outside real mode.
    static func loadsDescriptors(_ inst: Instruction) -> Bool {
        switch inst.mnemonic {
        case .lds, .les, .lfs, .lgs, .lss, .retf, .iret, .iretd, .iretq, .ltr, .lldt, .int, .int3, .into,
             .syscall, .sysret, .sysenter, .sysexit:
            return true
        case .mov, .pop:
            if case .register(let r) = inst.operand(0), r.regClass == .segment { return true }
            return false
        case .jmp, .call:
            for i in 0..<Int(inst.operandCount) {
                if case .farPointer = inst.operand(i) { return true }
            }
            // JMP/CALL m16:16/32/64 (the far forms through memory, FF /5 and FF /3).
            return inst.map == .legacy && inst.opcode == 0xFF && (inst.modrmReg == 3 || inst.modrmReg == 5)
        default:
            return false
        }
    }
}

/// Collects guest bytes for one record, each page-table entry once.
struct GuestByteCollector {
    let memory: RecordMemory
    let mmio: UInt64?
    var out: [GuestBytes] = []

    init(memory: RecordMemory, mmio: UInt64?) {
        self.memory = memory
        self.mmio = mmio
    }

    mutating func addWalk(_ entries: [PageTableEntry]) {
        for e in entries where !out.contains(where: { $0.role == .pageTable && $0.gpa == e.gpa }) {
            out.append(GuestBytes(role: .pageTable, gpa: e.gpa, bytes: ExitRecordBuilder.littleEndian(e.value, e.size)))
        }
    }

    /// The page-table entries walked to `linear`, also when the walk ends in a #PF.
    mutating func addWalkTo(_ linear: UInt64) {
        switch memory.walk(linear, access: .read) {
        case let .translated(_, entries, _), let .pageFault(_, entries): addWalk(entries)
        case let .unbacked(gpa, entries): addUnbackedWalk(gpa, entries)
        }
    }

    /// A walk that reached a table entry where no RAM is (a guest pointed a table there). KVM's
    /// walker (paging_tmpl.h, walk_addr_generic) ends such a walk in a not-present #PF, which is
    /// what an entry reading zero gives: the entries walked and that zero entry are recorded, so
    /// replay raises the same #PF instead of finding the table unrecorded.
    mutating func addUnbackedWalk(_ gpa: UInt64, _ entries: [PageTableEntry]) {
        addWalk(entries)
        let size = entries.last?.size ?? 8
        guard memory.readPhysical(gpa, count: size) == nil,
              !out.contains(where: { $0.role == .pageTable && $0.gpa == gpa }) else { return }
        out.append(GuestBytes(role: .pageTable, gpa: gpa, bytes: [UInt8](repeating: 0, count: size)))
    }

    /// RAM bytes at a linear range (with the walks that reach them); device pages are skipped,
    /// their bytes are the exit's accesses.
    mutating func addRange(_ linear: UInt64, count: Int) {
        var la = linear
        var left = count
        while left > 0 {
            let chunk = min(left, Int(4096 - (la & 0xFFF)))
            if case let .translated(gpa, entries, _) = memory.walk(la, access: .read) {
                addWalk(entries)
                let isDevice = mmio.map { gpa <= $0 && $0 < gpa &+ UInt64(chunk) } ?? false
                if !isDevice, let bytes = memory.readPhysical(gpa, count: chunk) {
                    out.append(GuestBytes(role: .operandRead, gpa: gpa, bytes: bytes))
                }
            } else if case let .pageFault(_, entries) = memory.walk(la, access: .read) {
                addWalk(entries)  // replay raises the same #PF
            } else if case let .unbacked(gpa, entries) = memory.walk(la, access: .read) {
                addUnbackedWalk(gpa, entries)
            }
            la &+= UInt64(chunk)
            left -= chunk
        }
    }
}

/// The VMM's read-only memory view with the exit's paging registers: one per vCPU lane, loaded
/// at each exit (a class, so passing it as `RecordMemory` copies no state and allocates nothing).
final class ViewMemory: RecordMemory {
    let view: GuestMemoryView
    private var cr0: UInt64 = 0, cr3: UInt64 = 0, cr4: UInt64 = 0, efer: UInt64 = 0
    init(view: GuestMemoryView) { self.view = view }

    /// Takes the paging registers of `s` (all a walk depends on).
    func load(_ s: borrowing CPUState) {
        cr0 = s.cr0; cr3 = s.cr3; cr4 = s.cr4; efer = s.efer
    }

    func walk(_ linear: UInt64, access: PageAccess) -> PageWalkResult {
        PageWalker.walk(linear: linear, access: access, cr0: cr0, cr3: cr3, cr4: cr4, efer: efer, memory: view)
    }
    func readLinear(_ linear: UInt64, count: Int) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(max(count, 0))
        var la = linear
        var left = count
        while left > 0 {
            guard case let .translated(gpa, _, _) = walk(la, access: .read) else { return nil }
            let chunk = min(left, Int(4096 - (la & 0xFFF)))
            guard let bytes = view.read(gpa, count: chunk) else { return nil }
            out += bytes
            la &+= UInt64(chunk)
            left -= chunk
        }
        return out
    }
    func physical(_ linear: UInt64) -> UInt64? {
        if case let .translated(gpa, _, _) = walk(linear, access: .read) { return gpa }
        return nil
    }
    func readPhysical(_ gpa: UInt64, count: Int) -> [UInt8]? { view.read(gpa, count: count) }
    func physicalEquals(_ gpa: UInt64, _ bytes: [UInt8]) -> Bool { view.equals(gpa, bytes) }
}
