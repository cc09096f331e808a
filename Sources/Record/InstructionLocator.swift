import Trace
import X86
import X86Emulator

/// Guest memory as the locator reads it: linear reads with the current paging, and
/// translation to guest-physical addresses (nil when unmapped or not backed).
public protocol LocatorMemory {
    func readLinear(_ linear: UInt64, count: Int) -> [UInt8]?
    func physical(_ linear: UInt64) -> UInt64?
    func readPhysical(_ gpa: UInt64, count: Int) -> [UInt8]?
    /// Whether RAM at `gpa` holds exactly `bytes` (false when not RAM).
    func physicalEquals(_ gpa: UInt64, _ bytes: [UInt8]) -> Bool
}

extension LocatorMemory {
    public func physicalEquals(_ gpa: UInt64, _ bytes: [UInt8]) -> Bool {
        readPhysical(gpa, count: bytes.count) == bytes
    }
}

/// The device access an exit reported, as the locator matches instructions against it.
public enum ReportedAccess: Equatable, Sendable {
    case portOut(port: UInt16, size: Int)
    case portIn(port: UInt16, size: Int)
    case mmioWrite(gpa: UInt64, size: Int)
    case mmioRead(gpa: UInt64, size: Int)
    case other
}

/// The instruction behind an exit: where it starts (RIP), its bytes, its decoding and how many
/// candidates performed the reported access (DESIGN.md, "When KVM shows an exit").
public struct LocatedInstruction: Equatable, Sendable {
    public var start: UInt64
    public var bytes: [UInt8]
    public var instruction: Instruction?
    /// 1 normally; 0 when no decoding performs the access; more than 1 when several do.
    public var candidates: UInt8
}

/// Finds the instruction behind an exit. For a pending exit it is the one at RIP. For a
/// committed exit RIP is already past it, so every decoding that ends exactly at RIP is tried
/// and those that perform the reported access are kept; ambiguity is reported, not resolved.
public enum InstructionLocator {
    /// Linear address of CS:offset (CS's base does not apply in 64-bit mode).
    @inline(__always)
    public static func linear(_ offset: UInt64, state: CPUState) -> UInt64 {
        state.mode == .long64 ? offset : (state.cs.base &+ offset) & 0xFFFF_FFFF
    }

    public static func pending(state: CPUState, memory: LocatorMemory) -> LocatedInstruction {
        let mode = DecoderMode(state.mode)
        let at = linear(state.rip, state: state)
        // Read up to 15 bytes, fewer when the tail runs into an unmapped page.
        var bytes: [UInt8] = []
        for n in stride(from: 15, through: 1, by: -1) {
            if let b = memory.readLinear(at, count: n) { bytes = b; break }
        }
        guard case .success(let inst) = decode(bytes: bytes, mode: mode) else {
            return LocatedInstruction(start: state.rip, bytes: bytes, instruction: nil, candidates: 0)
        }
        return LocatedInstruction(start: state.rip, bytes: Array(bytes.prefix(Int(inst.length))),
                                  instruction: inst, candidates: 1)
    }

    /// - Parameter hint: the start of the instruction this exit continues (the write half of a
    ///   read-modify-write whose read exit came first); used when it ends at RIP and performs the access.
    ///   `written`: the value an MMIO write exit carried; decodings that would have stored
    ///   something else (a MOV from another register) are dropped when several remain.
    public static func committed(state: CPUState, access: ReportedAccess, memory: LocatorMemory,
                                 hint: UInt64? = nil, written: UInt64? = nil) -> LocatedInstruction {
        let mode = DecoderMode(state.mode)
        if let hint, hint < state.rip, state.rip - hint <= 15 {
            var at = state
            at.rip = hint
            let l = pending(state: at, memory: memory)
            if let inst = l.instruction, hint &+ UInt64(inst.length) == state.rip,
               performs(inst, access: access, state: state, memory: memory) {
                return l
            }
        }
        // A REP string instruction between iterations: each iteration exits with RIP still on
        // the instruction (the iteration took effect; the instruction has not finished).
        let here = pending(state: state, memory: memory)
        if let inst = here.instruction, inst.hasRep || inst.hasRepne,
           [.outs, .movs, .stos, .ins].contains(inst.mnemonic), performs(inst, access: access, state: state, memory: memory) {
            return here
        }
        let end = linear(state.rip, state: state)
        var window: [UInt8] = []
        var windowLength = 0
        for n in stride(from: 15, through: 1, by: -1) where UInt64(n) <= end {
            if let b = memory.readLinear(end - UInt64(n), count: n) { window = b; windowLength = n; break }
        }
        var found: [(Int, Instruction)] = []
        if windowLength > 0 {
            for length in 1...windowLength {
                let slice = Array(window[(windowLength - length)...])
                guard case .success(let inst) = decode(bytes: slice, mode: mode), Int(inst.length) == length else { continue }
                if performs(inst, access: access, state: state, memory: memory) { found.append((length, inst)) }
            }
        }
        if found.count > 1, case let .mmioWrite(_, size) = access {
            // A read-modify-write of MMIO exits for its read first (and that exit opens the
            // group, `hint`): a write exit with no group open is not one. And a plain store
            // wrote what its source holds (the state after a MOV still has it).
            let mask: UInt64 = size >= 8 ? .max : (1 << (8 * UInt64(size))) - 1
            let kept = found.filter { _, inst in
                if hint == nil && readModifyWrite(inst) { return false }
                if let written, let v = storedValue(inst, state: state), v & mask != written & mask { return false }
                return true
            }
            if !kept.isEmpty { found = kept }
        }
        guard let best = found.first else {
            return LocatedInstruction(start: state.rip, bytes: [], instruction: nil, candidates: 0)
        }
        // Candidates that differ only by redundant prefixes (e.g. "ee" and "66 ee" after an
        // immediate ending in 0x66) are one instruction with the same effects: `candidates` counts
        // distinct instructions, so only a real ambiguity is reported as one. The shortest is kept.
        var distinct: [Instruction] = []
        for (_, inst) in found where !distinct.contains(where: { Self.sameEffect($0, inst) }) { distinct.append(inst) }
        let start = state.rip &- UInt64(best.0)
        return LocatedInstruction(start: start, bytes: Array(window[(windowLength - best.0)...]),
                                  instruction: best.1, candidates: UInt8(min(distinct.count, 255)))
    }

    /// Instructions that read a memory destination and write it back (on MMIO: a read exit,
    /// then a write exit).
    public static func readModifyWrite(_ inst: Instruction) -> Bool {
        guard case .memory = inst.operand(0) else { return false }
        switch inst.mnemonic {
        case .add, .adc, .sub, .sbb, .and, .or, .xor, .inc, .dec, .neg, .not, .xchg, .xadd, .cmpxchg,
             .cmpxchg8b, .cmpxchg16b, .btc, .btr, .bts, .shl, .shr, .sar, .rol, .ror, .rcl, .rcr, .shld, .shrd:
            return true
        default:
            return false
        }
    }

    /// What a MOV to memory from a general-purpose register or an immediate stored, read from
    /// the state after it (MOV changes no register); nil for any other instruction.
    static func storedValue(_ inst: Instruction, state: CPUState) -> UInt64? {
        guard inst.mnemonic == .mov, inst.operandCount == 2, case .memory = inst.operand(0) else { return nil }
        switch inst.operand(1) {
        case .immediate(let v, _):
            return UInt64(bitPattern: v)
        case .register(let r):
            switch r.regClass {
            case .gpr8 where r.number >= 4 && r.number < 8:
                return (state.gpr(Int(r.number) - 4) >> 8) & 0xFF     // AH, CH, DH, BH
            case .gpr8, .gpr8rex, .gpr16, .gpr32, .gpr64:
                return registerValue(r, state)
            default:
                return nil
            }
        default:
            return nil
        }
    }

    /// Same mnemonic and operands: two decodings that perform the same access the same way.
    static func sameEffect(_ a: Instruction, _ b: Instruction) -> Bool {
        guard a.mnemonic == b.mnemonic, a.operandCount == b.operandCount, a.hasRep == b.hasRep,
              a.addressSize == b.addressSize else { return false }
        for i in 0..<Int(a.operandCount) where a.operand(i) != b.operand(i) { return false }
        return true
    }

    /// Whether `inst`, which ended at `state.rip` and left `state` behind, performs `access`.
    static func performs(_ inst: Instruction, access: ReportedAccess, state: CPUState, memory: LocatorMemory) -> Bool {
        switch access {
        case let .portOut(port, size):
            switch inst.mnemonic {
            case .out:
                guard case .register(let src) = inst.operand(1), src.bits / 8 == size else { return false }
                if case .immediate(let imm, _) = inst.operand(0) { return UInt16(truncatingIfNeeded: imm) == port }
                return UInt16(truncatingIfNeeded: state.rdx) == port
            case .outs:
                return stringSize(inst) == size && UInt16(truncatingIfNeeded: state.rdx) == port
            default:
                return false
            }
        case let .portIn(port, size):
            switch inst.mnemonic {
            case .in:
                guard case .register(let dst) = inst.operand(0), dst.bits / 8 == size else { return false }
                if case .immediate(let imm, _) = inst.operand(1) { return UInt16(truncatingIfNeeded: imm) == port }
                return UInt16(truncatingIfNeeded: state.rdx) == port
            case .ins:
                return stringSize(inst) == size && UInt16(truncatingIfNeeded: state.rdx) == port
            default:
                return false
            }
        case let .mmioWrite(gpa, size), let .mmioRead(gpa, size):
            // Implicit stack stores (PUSH, CALL, PUSHF, ENTER) with the stack in MMIO.
            if case .mmioWrite = access, let (lin, width) = stackStore(inst, state: state),
               size <= width, let pa = memory.physical(lin), pa <= gpa && gpa < pa &+ UInt64(width) {
                return true
            }
            for i in 0..<Int(inst.operandCount) {
                guard case .memory(let m) = inst.operand(i) else { continue }
                guard Int(m.size) >= size || m.size == 0 else { continue }
                // String destinations were advanced past the element already.
                var adjust: Int64 = 0
                if inst.mnemonic == .movs || inst.mnemonic == .stos {
                    let step = Int64(stringSize(inst))
                    adjust = state.rflags & RFLAGS.df != 0 ? step : -step
                }
                // BT/BTS/BTR/BTC with a register bit offset address the operand-sized unit the
                // offset falls in, which may lie far from the operand (signed, in units).
                if [.bt, .bts, .btr, .btc].contains(inst.mnemonic), case .register(let r) = inst.operand(1), m.size > 0 {
                    let bits = Int64(m.size) * 8
                    var offset = Int64(bitPattern: registerValue(r, state))
                    if r.bits == 16 { offset = Int64(Int16(truncatingIfNeeded: offset)) }
                    if r.bits == 32 { offset = Int64(Int32(truncatingIfNeeded: offset)) }
                    adjust = (offset >= 0 ? offset / bits : (offset - bits + 1) / bits) * Int64(m.size)
                }
                guard let lin = effectiveLinear(m, inst: inst, state: state, nextRIP: state.rip, adjust: adjust),
                      let pa = memory.physical(lin) else { continue }
                // An operand that crosses a page boundary is two pieces, each its own exit.
                let span = max(Int(m.size), size)
                let first = min(span, Int(4096 - (lin & 0xFFF)))
                // KVM hands an operand of up to 8 bytes that stays on one page to user space
                // whole: a piece of another size is some other instruction's access (a 66 prefix
                // before "mov [m], eax" makes it a 2-byte store).
                if m.size > 0 && m.size <= 8 && first == span && Int(m.size) != size && !isString(inst) { continue }
                if pa <= gpa && gpa < pa &+ UInt64(first) { return true }
                if first < span, let next = memory.physical(lin &+ UInt64(first)),
                   next <= gpa && gpa < next &+ UInt64(span - first) { return true }
            }
            return false
        case .other:
            return false
        }
    }

    /// Where a committed PUSH, near CALL, PUSHF or ENTER (nesting level 0) stored on the stack,
    /// from the state after it: SS:RSP, or for ENTER SS:RBP (the old RBP's slot); and the width.
    public static func stackStore(_ inst: Instruction, state: CPUState) -> (linear: UInt64, width: Int)? {
        let width = Int(inst.operandSize) / 8
        guard width == 2 || width == 4 || width == 8 else { return nil }
        var offset: UInt64
        switch inst.mnemonic {
        case .push, .pushf, .pushfd, .pushfq:
            offset = state.rsp
        case .call:
            for i in 0..<Int(inst.operandCount) { if case .farPointer = inst.operand(i) { return nil } }
            if inst.map == .legacy && inst.opcode == 0xFF && inst.modrmReg == 3 { return nil }  // far, through memory
            offset = state.rsp
        case .enter:
            guard case .immediate(let level, _) = inst.operand(1), level & 0x1F == 0 else { return nil }
            offset = state.rbp
        default:
            return nil
        }
        if state.mode == .long64 { return (offset, width) }
        offset &= state.ss.defaultBig ? 0xFFFF_FFFF : 0xFFFF
        return ((state.ss.base &+ offset) & 0xFFFF_FFFF, width)
    }

    static func isString(_ inst: Instruction) -> Bool {
        [.movs, .stos, .lods, .ins, .outs, .cmps, .scas].contains(inst.mnemonic)
    }

    /// Element size of a string instruction in bytes.
    static func stringSize(_ inst: Instruction) -> Int {
        if let m = inst.memoryOperand, m.size > 0 { return Int(m.size) }
        return Int(inst.operandSize) / 8
    }

    /// The linear address of a memory operand with `state`'s registers (plus `adjust` for
    /// string registers that already moved).
    public static func effectiveLinear(_ m: MemoryOperand, inst: Instruction, state: CPUState,
                                       nextRIP: UInt64, adjust: Int64 = 0) -> UInt64? {
        var ea: UInt64 = UInt64(bitPattern: m.displacement)
        if m.ripRelative { ea = ea &+ nextRIP }
        if let b = m.base, b.regClass != .rip { ea = ea &+ registerValue(b, state) }
        if let x = m.index { ea = ea &+ (registerValue(x, state) << UInt64(scaleShift(m.scale))) }
        ea = ea &+ UInt64(bitPattern: adjust)
        switch m.addressSize {
        case 16: ea &= 0xFFFF
        case 32: ea &= 0xFFFF_FFFF
        default: break
        }
        let seg = state.segment(m.segment)
        if state.mode == .long64 {
            return (m.segment == .fs || m.segment == .gs) ? seg.base &+ ea : ea
        }
        return (seg.base &+ ea) & 0xFFFF_FFFF
    }

    static func scaleShift(_ s: UInt8) -> Int {
        switch s { case 2: return 1; case 4: return 2; case 8: return 3; default: return 0 }
    }

    static func registerValue(_ r: Register, _ state: CPUState) -> UInt64 {
        let v = state.gpr(Int(r.number))
        switch r.bits {
        case 16: return v & 0xFFFF
        case 32: return v & 0xFFFF_FFFF
        default: return v
        }
    }
}

/// A per-vCPU cache of located instructions: exits repeat at the same few RIPs, and finding a
/// committed instruction costs up to fifteen decodes. An entry is used only after checking
/// that the linear address still maps to the same guest-physical bytes, so guest code or page
/// tables that changed are located afresh. Used by one vCPU thread only.
///
/// An entry may also hold the record's guest bytes when they depend on nothing but the fetch
/// (an instruction without memory operands: IN, OUT, HLT, RDMSR, ...): the instruction's bytes
/// and the page-table entries walked to reach them. Such an entry is checked by comparing those
/// bytes with guest memory in place: same paging registers (part of the key) and same entries
/// give the same walk, so the stored bytes are exactly what a fresh collection would produce.
public final class LocatorCache {
    struct Key: Hashable {
        var rip: UInt64, csBase: UInt64, cr3: UInt64, cr0: UInt64, cr4: UInt64, efer: UInt64
        var mode: UInt8, committed: Bool
    }
    struct Entry {
        var located: LocatedInstruction
        var linear: UInt64
        var gpa: UInt64
        /// The record's guest bytes for this instruction, when they depend only on the fetch.
        var guestBytes: [GuestBytes]?
        /// Names this content: a new entry, or new guest bytes, get a new serial.
        var serial: UInt64
    }
    private var nextSerial: UInt64 = 1
    /// The serial of the entry the last lookup hit, when that entry had guest bytes (else 0):
    /// under one serial, the located instruction and its guest bytes never change, so the
    /// recorder's pipeline can be told them once and then only the serial's slot.
    public private(set) var lastHitSerial: UInt64 = 0
    private var entries: [Key: Entry] = [:]
    private let capacity: Int
    public private(set) var hits: UInt64 = 0
    /// The key of the last lookup and whether it hit an entry with guest bytes.
    private var lastKey: Key?
    private var lastGuestBytes: [GuestBytes]?
    private var lastHitStart: UInt64 = 0
    private var lastHitBytes: [UInt8] = []
    /// The entry the previous lookup found or made, under its key: a loop exits at the same RIP
    /// again and again, and comparing a key is cheaper than hashing it into the dictionary.
    private var recentKey: Key?
    private var recent: Entry?

    /// The device side of the previous port exit, reused while it stays equal (an array per
    /// exit is an allocation per exit).
    private(set) var recentAccesses: [DeviceAccess] = []

    public init(capacity: Int = 512) { self.capacity = capacity }

    /// `[a]`, as the array the previous call returned when that holds an equal access.
    func accesses(_ a: DeviceAccess) -> [DeviceAccess] {
        if recentAccesses.count == 1 && recentAccesses[0] == a { return recentAccesses }
        recentAccesses = [a]
        return recentAccesses
    }

    /// A switch, not `CPUMode.allCases.firstIndex`: `allCases` builds an array, on every exit.
    @inline(__always)
    static func modeTag(_ s: CPUState) -> UInt8 { modeTag(s.mode) }

    @inline(__always)
    static func modeTag(_ mode: CPUMode) -> UInt8 {
        switch mode {
        case .real: return 0
        case .virtual8086: return 1
        case .protected16: return 2
        case .protected32: return 3
        case .compat16: return 4
        case .compat32: return 5
        case .long64: return 6
        }
    }

    @inline(__always)
    static func key(_ s: CPUState, committed: Bool) -> Key {
        Key(rip: s.rip, csBase: s.cs.base, cr3: s.cr3, cr0: s.cr0, cr4: s.cr4, efer: s.efer,
            mode: modeTag(s), committed: committed)
    }

    /// The entry for `key`: the recent one when the key matches, else the dictionary's.
    @inline(__always)
    private func lookup(_ key: Key) -> Entry? {
        if let k = recentKey, k == key, let e = recent { return e }
        let e = entries[key]
        recentKey = key
        recent = e
        return e
    }

    public func pending(state: CPUState, memory: LocatorMemory) -> LocatedInstruction {
        let key = Self.key(state, committed: false)
        lastKey = key
        lastGuestBytes = nil
        lastHitSerial = 0
        if let e = lookup(key), valid(e, memory: memory) {
            return hit(e)
        }
        let l = InstructionLocator.pending(state: state, memory: memory)
        remember(key, l, memory: memory, state: state)
        return l
    }

    /// A cache hit: counted, and its remembered guest bytes offered for this record.
    private func hit(_ e: Entry) -> LocatedInstruction {
        hits &+= 1
        if let g = e.guestBytes {
            lastHitSerial = e.serial
            lastGuestBytes = g
            lastHitStart = e.located.start
            lastHitBytes = e.located.bytes
        }
        return e.located
    }

    public func committed(state: CPUState, access: ReportedAccess, memory: LocatorMemory, hint: UInt64? = nil,
                          written: UInt64? = nil) -> LocatedInstruction {
        let key = Self.key(state, committed: true)
        lastKey = key
        lastGuestBytes = nil
        lastHitSerial = 0
        if let e = lookup(key), valid(e, memory: memory), let inst = e.located.instruction,
           hint == nil || e.located.start == hint || e.located.candidates == 1,
           InstructionLocator.performs(inst, access: access, state: state, memory: memory) {
            return hit(e)
        }
        let l = InstructionLocator.committed(state: state, access: access, memory: memory, hint: hint, written: written)
        remember(key, l, memory: memory, state: state)
        return l
    }

    /// The guest bytes stored with the entry the last lookup hit, if that lookup returned `l`.
    func guestBytes(for l: LocatedInstruction) -> [GuestBytes]? {
        guard let g = lastGuestBytes, lastHitStart == l.start, lastHitBytes == l.bytes else { return nil }
        return g
    }

    /// Stores `bytes` as the guest bytes of the entry the last lookup made or hit (only for an
    /// instruction whose guest bytes depend on nothing but the fetch; the caller decides).
    func rememberGuestBytes(_ bytes: [GuestBytes], for l: LocatedInstruction) {
        guard let key = lastKey, var e = entries[key], e.located.start == l.start, e.located.bytes == l.bytes else { return }
        e.guestBytes = bytes
        e.serial = nextSerial
        nextSerial &+= 1
        entries[key] = e
        recentKey = key
        recent = e
    }

    private func valid(_ e: Entry, memory: LocatorMemory) -> Bool {
        if let g = e.guestBytes {
            // Same paging registers (the key), same page-table entries and same instruction
            // bytes: the walk and the bytes are what they were when the entry was made.
            for b in g where !memory.physicalEquals(b.gpa, b.bytes) { return false }
            return true
        }
        guard memory.physical(e.linear) == e.gpa, let now = memory.readPhysical(e.gpa, count: e.located.bytes.count) else {
            return false
        }
        return now == e.located.bytes
    }

    private func remember(_ key: Key, _ l: LocatedInstruction, memory: LocatorMemory, state: CPUState) {
        // Only unambiguous instructions within one page are cached.
        guard l.candidates == 1, l.instruction != nil else { return }
        let linear = InstructionLocator.linear(l.start, state: state)
        guard (linear & 0xFFF) + UInt64(l.bytes.count) <= 4096, let gpa = memory.physical(linear) else { return }
        guard capacity > 0 else { return }
        if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
        let e = Entry(located: l, linear: linear, gpa: gpa, guestBytes: nil, serial: nextSerial)
        nextSerial &+= 1
        entries[key] = e
        recentKey = key
        recent = e
    }
}
