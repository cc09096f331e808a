import X86

/// The code size the decoder assumes (CS.D / CS.L, i.e. the default operand and address size).
public enum DecoderMode: Int, Sendable, CaseIterable {
    case bits16 = 16
    case bits32 = 32
    case bits64 = 64

    /// The decoding mode of a processor mode (compatibility modes decode as their code size).
    public init(_ mode: CPUMode) {
        switch mode {
        case .long64: self = .bits64
        case .protected32, .compat32: self = .bits32
        case .real, .virtual8086, .protected16, .compat16: self = .bits16
        }
    }
}

/// Where AMD and Intel decode differently (66-prefixed near branches in 64-bit mode), the decoder
/// follows the vendor of the processor being modelled.
public enum CPUVendor: String, Sendable, CaseIterable {
    case amd, intel
}

/// Why decoding failed.
public enum DecodeError: Error, Equatable, Sendable {
    /// More bytes are needed: the buffer ends inside the instruction.
    case truncated
    /// The bytes are not a valid instruction in this mode (the processor raises #UD).
    case invalid
    /// The instruction would exceed 15 bytes (the processor raises #GP).
    case tooLong
}

public typealias DecodeResult = Result<Instruction, DecodeError>

/// Opcode maps: legacy escapes, AMD 3DNow!, and the VEX / EVEX / XOP maps.
public enum OpcodeMap: UInt8, Sendable {
    case legacy = 0, map0F, map0F38, map0F3A, amd3DNow
    case vex0F, vex0F38, vex0F3A
    case evex0F, evex0F38, evex0F3A, evexMap5, evexMap6
    case xop8, xop9, xopA
}

/// Register files an operand can name.
public enum RegisterClass: UInt8, Sendable {
    /// AL, CL, DL, BL, AH, CH, DH, BH (no REX prefix: numbers 4-7 are the high bytes).
    case gpr8
    /// AL ... BL, SPL, BPL, SIL, DIL, R8B ... R15B (with a REX prefix: low bytes only).
    case gpr8rex
    case gpr16, gpr32, gpr64
    case segment, control, debug
    case mmx, xmm, ymm, zmm
    /// x87 stack register ST(i).
    case st
    /// AVX-512 opmask k0-k7.
    case mask
    case rip
}

public struct Register: Equatable, Hashable, Sendable {
    public var regClass: RegisterClass
    /// The register number in the encoding (0-15 for GPRs, 0-31 for vector registers, ST(i) index...).
    public var number: UInt8

    public init(_ regClass: RegisterClass, _ number: UInt8) {
        self.regClass = regClass
        self.number = number
    }

    /// Width in bits (0 for segment/x87 where it does not apply as such).
    public var bits: Int {
        switch regClass {
        case .gpr8, .gpr8rex: return 8
        case .gpr16, .segment: return 16
        case .gpr32: return 32
        case .gpr64, .control, .debug, .mmx, .rip, .mask: return 64
        case .xmm: return 128
        case .ymm: return 256
        case .zmm: return 512
        case .st: return 80
        }
    }

    public var name: String {
        let n = Int(number)
        switch regClass {
        case .gpr8: return n < 16 ? Register.gpr8Names[n] : "?"
        case .gpr8rex: return n < 16 ? Register.gpr8RexNames[n] : "?"
        case .gpr16: return n < 16 ? Register.gpr16Names[n] : "?"
        case .gpr32: return n < 16 ? Register.gpr32Names[n] : "?"
        case .gpr64: return n < 16 ? GPR.names[n] : "?"
        case .segment: return n < 6 ? ["es", "cs", "ss", "ds", "fs", "gs"][n] : "?"
        case .control: return "cr\(n)"
        case .debug: return "dr\(n)"
        case .mmx: return "mm\(n)"
        case .xmm: return "xmm\(n)"
        case .ymm: return "ymm\(n)"
        case .zmm: return "zmm\(n)"
        case .st: return "st(\(n))"
        case .mask: return "k\(n)"
        case .rip: return bits == 64 ? "rip" : "eip"
        }
    }

    static let gpr8Names = ["al", "cl", "dl", "bl", "ah", "ch", "dh", "bh", "?", "?", "?", "?", "?", "?", "?", "?"]
    static let gpr8RexNames = ["al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil",
                               "r8b", "r9b", "r10b", "r11b", "r12b", "r13b", "r14b", "r15b"]
    static let gpr16Names = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di",
                             "r8w", "r9w", "r10w", "r11w", "r12w", "r13w", "r14w", "r15w"]
    static let gpr32Names = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi",
                             "r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d", "r15d"]
}

/// A memory operand: segment:[base + index*scale + displacement], or [rip + displacement].
public struct MemoryOperand: Equatable, Sendable {
    /// The effective segment: the override if one applies, else DS, or SS for rBP/rSP bases
    /// (ES for the destination of string instructions). In 64-bit mode only FS/GS overrides apply.
    public var segment: SegmentRegister
    /// True when a segment-override prefix chose `segment`.
    public var segmentOverridden: Bool
    /// Base register (GPR of the address size), nil for none. Nil with `ripRelative`.
    public var base: Register?
    /// Index register: a GPR, or a vector register for VSIB (gathers/scatters).
    public var index: Register?
    /// 1, 2, 4 or 8.
    public var scale: UInt8
    /// Displacement, sign-extended (EVEX disp8 already multiplied by N).
    public var displacement: Int64
    /// RIP-relative (64-bit mode, ModRM mod=00 rm=101): address = next instruction's RIP + displacement.
    public var ripRelative: Bool
    /// Address size in bits (16, 32, 64): the width of the effective-address computation.
    public var addressSize: UInt8
    /// Bytes accessed (0 when the instruction does not access memory through it, e.g. LEA, or the
    /// size is variable such as XSAVE).
    public var size: UInt16
}

/// One operand of a decoded instruction.
public enum Operand: Equatable, Sendable {
    case none
    case register(Register)
    case memory(MemoryOperand)
    /// An immediate, sign- or zero-extended as the instruction defines, with the size in bytes at
    /// which the instruction uses it.
    case immediate(Int64, size: UInt8)
    /// A relative branch target, as a displacement from the next instruction's address.
    case relative(Int64)
    /// A far pointer selector:offset (JMP/CALL ptr16:16/32).
    case farPointer(selector: UInt16, offset: UInt32)

    public var register: Register? { if case .register(let r) = self { return r } else { return nil } }
    public var memory: MemoryOperand? { if case .memory(let m) = self { return m } else { return nil } }
}

/// Prefixes present on the instruction.
public struct Prefixes: OptionSet, Equatable, Sendable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let lock = Prefixes(rawValue: 1 << 0)
    /// F3 (REP / REPE / REPZ); also set when F3 was a mandatory prefix.
    public static let rep = Prefixes(rawValue: 1 << 1)
    /// F2 (REPNE / REPNZ); also set when F2 was a mandatory prefix.
    public static let repne = Prefixes(rawValue: 1 << 2)
    public static let operandSize = Prefixes(rawValue: 1 << 3)
    public static let addressSize = Prefixes(rawValue: 1 << 4)
    public static let segment = Prefixes(rawValue: 1 << 5)
    public static let rex = Prefixes(rawValue: 1 << 6)
    public static let vex = Prefixes(rawValue: 1 << 7)
    public static let evex = Prefixes(rawValue: 1 << 8)
    public static let xop = Prefixes(rawValue: 1 << 9)
}

/// VEX / EVEX / XOP payload fields, decoded (register numbers are not inverted).
public struct VectorPrefix: Equatable, Sendable {
    /// The register named by vvvv (and V' for EVEX), 0-31.
    public var vvvv: UInt8 = 0
    /// Vector length: 0 = 128, 1 = 256, 2 = 512 bits (EVEX L'L; VEX.L).
    public var vectorLength: UInt8 = 0
    public var w: Bool = false
    /// Implied mandatory prefix (0 none, 1 = 66, 2 = F3, 3 = F2).
    public var pp: UInt8 = 0
    /// EVEX opmask register (aaa), 0 = no masking.
    public var opmask: UInt8 = 0
    /// EVEX.z: zeroing rather than merging.
    public var zeroing: Bool = false
    /// EVEX.b: broadcast / rounding control / SAE.
    public var broadcast: Bool = false
    public init() {}
}

/// A decoded instruction. A value type with fixed fields: decoding allocates nothing.
public struct Instruction: Equatable, Sendable {
    /// Length in bytes (1-15).
    public var length: UInt8
    public var mnemonic: Mnemonic
    public var map: OpcodeMap
    /// The opcode byte within its map (for 3DNow!, the suffix byte).
    public var opcode: UInt8
    public var prefixes: Prefixes
    /// The segment override prefix (the last one), whether or not it applies in this mode.
    public var segmentOverride: SegmentRegister?
    /// The REX byte (0x40-0x4F), 0 for none. For VEX/EVEX the R/X/B/W bits are folded in here too.
    public var rex: UInt8
    public var vector: VectorPrefix
    /// Effective operand size in bits (16, 32, 64) after 66/REX.W and the 64-bit defaults.
    public var operandSize: UInt8
    /// Effective address size in bits (16, 32, 64) after 67.
    public var addressSize: UInt8
    /// The mode the instruction was decoded in (16, 32, 64).
    public var mode: UInt8
    public var hasModRM: Bool
    public var modrm: UInt8
    public var hasSIB: Bool
    public var sib: UInt8
    /// Raw displacement as encoded (sign-extended), and its size in bytes (0, 1, 2, 4, 8 for moffs).
    public var displacement: Int64
    public var displacementSize: UInt8
    /// First immediate as encoded (sign-extended from its encoded size), its size in bytes.
    public var immediate: Int64
    public var immediateSize: UInt8
    /// Second immediate (ENTER's level, far pointer selector), its size in bytes.
    public var immediate2: Int64
    public var immediate2Size: UInt8
    public var operandCount: UInt8
    public var operands: (Operand, Operand, Operand, Operand)
    /// Table attributes of the form (lock/rep allowed...).
    var attributes: UInt16

    /// An empty instruction (length 0, `.invalid`), to decode into with `X86Decoder.decode(_:mode:vendor:into:)`.
    public init() {
        length = 0; mnemonic = .invalid; map = .legacy; opcode = 0; prefixes = []; segmentOverride = nil
        rex = 0; vector = VectorPrefix(); operandSize = 0; addressSize = 0; mode = 0; hasModRM = false
        modrm = 0; hasSIB = false; sib = 0; displacement = 0; displacementSize = 0; immediate = 0
        immediateSize = 0; immediate2 = 0; immediate2Size = 0; operandCount = 0
        operands = (.none, .none, .none, .none); attributes = 0
    }

    public static func == (a: Instruction, b: Instruction) -> Bool {
        a.length == b.length && a.mnemonic == b.mnemonic && a.map == b.map && a.opcode == b.opcode
            && a.prefixes == b.prefixes && a.rex == b.rex && a.vector == b.vector
            && a.operandSize == b.operandSize && a.addressSize == b.addressSize && a.modrm == b.modrm
            && a.sib == b.sib && a.displacement == b.displacement && a.immediate == b.immediate
            && a.immediate2 == b.immediate2 && a.operandList == b.operandList
    }

    /// Operand `i` (0-3); `.none` past `operandCount`.
    public func operand(_ i: Int) -> Operand {
        switch i {
        case 0: return operands.0
        case 1: return operands.1
        case 2: return operands.2
        case 3: return operands.3
        default: return .none
        }
    }

    /// The operands as an array (convenience; not for hot paths).
    public var operandList: [Operand] { (0..<Int(operandCount)).map { operand($0) } }

    /// REX.W (or VEX/EVEX.W).
    public var rexW: Bool { rex & 8 != 0 }
    public var rexR: Bool { rex & 4 != 0 }
    public var rexX: Bool { rex & 2 != 0 }
    public var rexB: Bool { rex & 1 != 0 }
    /// The LOCK prefix is present and the instruction allows it (a memory destination).
    public var lockable: Bool { attributes & FormAttr.lock != 0 }
    /// String instruction repeated by F3 (REP/REPE).
    public var hasRep: Bool { prefixes.contains(.rep) && attributes & (FormAttr.rep_ | FormAttr.repe) != 0 }
    /// String instruction repeated by F2 (REPNE; only CMPS/SCAS test it).
    public var hasRepne: Bool { prefixes.contains(.repne) && attributes & (FormAttr.rep_ | FormAttr.repe) != 0 }
    /// ModRM fields.
    public var modrmMod: UInt8 { modrm >> 6 }
    public var modrmReg: UInt8 { (modrm >> 3) & 7 }
    public var modrmRM: UInt8 { modrm & 7 }
    /// The first memory operand, if any.
    public var memoryOperand: MemoryOperand? {
        for i in 0..<Int(operandCount) { if case .memory(let m) = operand(i) { return m } }
        return nil
    }
}
