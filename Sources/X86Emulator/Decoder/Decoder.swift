import X86

/// The generated tables copied once into flat unsafe buffers, so the hot path indexes raw memory
/// (no Array bounds checks, no copy-on-write checks).
final class DecoderTables: @unchecked Sendable {
    static let shared = DecoderTables()

    let root: UnsafeMutablePointer<UInt16>
    let hasModRM: UnsafeMutablePointer<UInt8>
    let nodeKind: UnsafeMutablePointer<UInt8>
    let nodeArg: UnsafeMutablePointer<UInt16>
    let formMnemonic: UnsafeMutablePointer<UInt16>
    let formOperands: UnsafeMutablePointer<UInt64>
    let formAttrs: UnsafeMutablePointer<UInt16>

    private static func copy<T>(_ a: [T]) -> UnsafeMutablePointer<T> {
        let p = UnsafeMutablePointer<T>.allocate(capacity: max(a.count, 1))
        _ = UnsafeMutableBufferPointer(start: p, count: a.count).initialize(from: a)
        return p
    }

    private init() {
        root = Self.copy(tableRoot)
        hasModRM = Self.copy(tableHasModRM)
        nodeKind = Self.copy(tableNodeKind)
        nodeArg = Self.copy(tableNodeArg)
        formMnemonic = Self.copy(tableFormMnemonic)
        formOperands = Self.copy(tableFormOperands)
        formAttrs = Self.copy(tableFormAttrs)
    }
}

/// Decode one instruction from the start of `bytes` (at most 15 bytes are examined).
public func decode(bytes: UnsafeRawBufferPointer, mode: DecoderMode, vendor: CPUVendor = .amd) -> DecodeResult {
    X86Decoder.decode(bytes, mode: mode, vendor: vendor)
}

/// Decode one instruction from the start of `bytes`.
public func decode(bytes: [UInt8], mode: DecoderMode, vendor: CPUVendor = .amd) -> DecodeResult {
    bytes.withUnsafeBytes { X86Decoder.decode($0, mode: mode, vendor: vendor) }
}

public enum X86Decoder {
    /// Decode one instruction. Table driven: prefixes, then the opcode's node in the generated
    /// decision tree (see opcodes.tsv), ModRM/SIB/displacement, then each operand of the form.
    public static func decode(_ bytes: UnsafeRawBufferPointer, mode: DecoderMode, vendor: CPUVendor = .amd) -> DecodeResult {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return .failure(.truncated) }
        let count = bytes.count
        let t = DecoderTables.shared
        let is64 = mode == .bits64

        // Bytes [0, end) must be available: past 15 is #GP, past the buffer is "need more bytes".
        @inline(__always) func need(_ end: Int) -> DecodeError? {
            if end > 15 { return .tooLong }
            if end > count { return .truncated }
            return nil
        }
        @inline(__always) func u8(_ i: Int) -> UInt8 { p.load(fromByteOffset: i, as: UInt8.self) }

        // ---- legacy prefixes and REX (a REX not immediately before the opcode is ignored)
        var i = 0
        var pfx = Prefixes()
        var seg: UInt8 = 0xFF
        var rex: UInt8 = 0
        var lastRep: UInt8 = 0
        var b: UInt8 = 0
        prefixLoop: while true {
            if let e = need(i + 1) { return .failure(e) }
            b = u8(i)
            switch b {
            case 0xF0: pfx.insert(.lock)
            case 0xF2: pfx.insert(.repne); lastRep = 3
            case 0xF3: pfx.insert(.rep); lastRep = 2
            case 0x26: seg = 0; pfx.insert(.segment)
            case 0x2E: seg = 1; pfx.insert(.segment)
            case 0x36: seg = 2; pfx.insert(.segment)
            case 0x3E: seg = 3; pfx.insert(.segment)
            case 0x64: seg = 4; pfx.insert(.segment)
            case 0x65: seg = 5; pfx.insert(.segment)
            case 0x66: pfx.insert(.operandSize)
            case 0x67: pfx.insert(.addressSize)
            case 0x40...0x4F where is64:
                rex = b; i += 1
                continue prefixLoop
            default: break prefixLoop
            }
            rex = 0
            i += 1
        }
        if rex != 0 { pfx.insert(.rex) }

        // ---- opcode map, VEX / EVEX / XOP
        var map = 0
        var op: UInt8 = b
        var vec = VectorPrefix()
        var mandatory = lastRep != 0 ? Int(lastRep) : (pfx.contains(.operandSize) ? 1 : 0)
        var regHigh: UInt8 = 0     // EVEX R' (bit 4 of ModRM.reg for vector registers)
        var rmHigh: UInt8 = 0      // EVEX X (bit 4 of ModRM.rm for vector registers)
        var vexW = false
        switch b {
        case 0x0F:
            if let e = need(i + 2) { return .failure(e) }
            let b2 = u8(i + 1)
            if b2 == 0x38 || b2 == 0x3A {
                if let e = need(i + 3) { return .failure(e) }
                map = b2 == 0x38 ? 2 : 3
                op = u8(i + 2); i += 3
            } else if b2 == 0x0F {
                map = 4; op = 0; i += 2   // 3DNow!: the opcode is the suffix byte after the operands
            } else {
                map = 1; op = b2; i += 2
            }
        case 0xC4, 0xC5, 0x62, 0x8F:
            if let e = need(i + 2) { return .failure(e) }
            let b1 = u8(i + 1)
            let isVector: Bool
            if b == 0x8F { isVector = b1 & 0x1F >= 8 }
            else { isVector = is64 || b1 >> 6 == 3 }
            if !isVector { map = 0; op = b; i += 1; break }
            if pfx.contains(.operandSize) || lastRep != 0 || pfx.contains(.lock) || rex != 0 {
                return .failure(.invalid)
            }
            let rbit: UInt8 = (~b1 >> 7) & 1
            let xbit: UInt8 = (~b1 >> 6) & 1
            let bbit: UInt8 = (~b1 >> 5) & 1
            if b == 0xC5 {
                if let e = need(i + 3) { return .failure(e) }
                vec.vvvv = (~b1 >> 3) & 15
                vec.vectorLength = (b1 >> 2) & 1
                vec.pp = b1 & 3
                rex = 0x40 | (is64 ? rbit << 2 : 0)
                map = 5; op = u8(i + 2); i += 3
                pfx.insert(.vex)
            } else {
                if let e = need(i + 3) { return .failure(e) }
                let b2 = u8(i + 2)
                vexW = b2 & 0x80 != 0
                vec.w = vexW
                vec.vvvv = (~b2 >> 3) & 15
                vec.pp = b2 & 3
                if is64 { rex = 0x40 | (vexW ? 8 : 0) | rbit << 2 | xbit << 1 | bbit }
                else { rex = 0x40 | (vexW ? 8 : 0) }
                if b == 0x62 {
                    // EVEX: P0 = R X B R' 0 m m m, P1 = W vvvv 1 pp, P2 = z L'L b V' aaa
                    if b1 & 0x08 != 0 || b2 & 0x04 == 0 { return .failure(.invalid) }
                    if let e = need(i + 5) { return .failure(e) }
                    let p2 = u8(i + 3)
                    let mm = b1 & 7
                    switch mm {
                    case 1: map = 8
                    case 2: map = 9
                    case 3: map = 10
                    case 5: map = 11
                    case 6: map = 12
                    default: return .failure(.invalid)
                    }
                    if is64 {
                        regHigh = ((~b1 >> 4) & 1) << 4
                        rmHigh = xbit << 4
                        vec.vvvv |= ((~p2 >> 3) & 1) << 4
                    }
                    vec.zeroing = p2 & 0x80 != 0
                    vec.vectorLength = (p2 >> 5) & 3
                    vec.broadcast = p2 & 0x10 != 0
                    vec.opmask = p2 & 7
                    op = u8(i + 4); i += 5
                    pfx.insert(.evex)
                } else {
                    vec.vectorLength = (b2 >> 2) & 1
                    let mm = b1 & 0x1F
                    if b == 0xC4 {
                        switch mm {
                        case 1: map = 5
                        case 2: map = 6
                        case 3: map = 7
                        default: return .failure(.invalid)
                        }
                        pfx.insert(.vex)
                    } else {
                        switch mm {
                        case 8: map = 13
                        case 9: map = 14
                        case 10: map = 15
                        default: return .failure(.invalid)
                        }
                        pfx.insert(.xop)
                    }
                    op = u8(i + 3); i += 4
                }
            }
            if !is64 { vec.vvvv &= 7 }
            mandatory = Int(vec.pp)
        default:
            i += 1
        }

        // ---- effective sizes before the form is known (66 / 67 / REX.W)
        let w = rex & 8 != 0
        let has66 = pfx.contains(.operandSize)
        var asize: UInt8
        switch mode {
        case .bits64: asize = pfx.contains(.addressSize) ? 32 : 64
        case .bits32: asize = pfx.contains(.addressSize) ? 16 : 32
        case .bits16: asize = pfx.contains(.addressSize) ? 32 : 16
        }
        @inline(__always) func operandSize(ignore66: Bool, default64: Bool) -> UInt8 {
            let o66 = has66 && !ignore66
            switch mode {
            case .bits64: return w ? 64 : (o66 ? 16 : (default64 ? 64 : 32))
            case .bits32: return o66 ? 16 : 32
            case .bits16: return o66 ? 32 : 16
            }
        }

        // ---- ModRM, SIB, displacement
        var key = map << 8 | Int(op)
        let hasModRM = map == 4 || t.hasModRM[key] != 0
        var modrm: UInt8 = 0, sib: UInt8 = 0, hasSIB = false
        var disp: Int64 = 0, dispSize = 0
        var baseReg: UInt8 = 0xFF, indexReg: UInt8 = 0xFF, scale: UInt8 = 1, ripRel = false
        var mod: UInt8 = 3, regField: UInt8 = 0, rmField: UInt8 = 0
        if hasModRM {
            if let e = need(i + 1) { return .failure(e) }
            modrm = u8(i); i += 1
            mod = modrm >> 6; regField = (modrm >> 3) & 7; rmField = modrm & 7
            // MOV to/from CRn/DRn ignore ModRM.mod: the r/m operand is always a register.
            if map == 1 && op & 0xFC == 0x20 { mod = 3 }
            if mod != 3 {
                if asize == 16 {
                    switch rmField {
                    case 0: baseReg = 3; indexReg = 6
                    case 1: baseReg = 3; indexReg = 7
                    case 2: baseReg = 5; indexReg = 6
                    case 3: baseReg = 5; indexReg = 7
                    case 4: baseReg = 6
                    case 5: baseReg = 7
                    case 6: baseReg = mod == 0 ? 0xFF : 5
                    default: baseReg = 3
                    }
                    dispSize = mod == 1 ? 1 : (mod == 2 || (mod == 0 && rmField == 6) ? 2 : 0)
                } else {
                    let rexB: UInt8 = (rex & 1) << 3
                    if rmField == 4 {
                        if let e = need(i + 1) { return .failure(e) }
                        sib = u8(i); i += 1; hasSIB = true
                        scale = 1 << (sib >> 6)
                        let idx = (sib >> 3) & 7 | (rex & 2) << 2
                        indexReg = idx == 4 ? 0xFF : idx
                        if sib & 7 == 5 && mod == 0 { baseReg = 0xFF; dispSize = 4 }
                        else { baseReg = sib & 7 | rexB }
                    } else if rmField == 5 && mod == 0 {
                        dispSize = 4
                        ripRel = is64
                    } else {
                        baseReg = rmField | rexB
                    }
                    if mod == 1 { dispSize = 1 } else if mod == 2 { dispSize = 4 }
                }
                if dispSize > 0 {
                    if let e = need(i + dispSize) { return .failure(e) }
                    switch dispSize {
                    case 1: disp = Int64(Int8(bitPattern: u8(i)))
                    case 2: disp = Int64(Int16(bitPattern: p.loadUnaligned(fromByteOffset: i, as: UInt16.self)))
                    default: disp = Int64(Int32(bitPattern: p.loadUnaligned(fromByteOffset: i, as: UInt32.self)))
                    }
                    i += dispSize
                }
            }
        }
        if map == 4 {
            if let e = need(i + 1) { return .failure(e) }
            op = u8(i); i += 1
            key = 4 << 8 | Int(op)
        }

        // ---- walk the decision tree to the form
        var node = Int(t.root[key])
        var consumed66 = false
        walk: while true {
            let a = Int(t.nodeArg[node])
            switch t.nodeKind[node] {
            case DecodeNodeKind.leaf: node = a; break walk
            case DecodeNodeKind.leafMandatory66: node = a; consumed66 = true; break walk
            case DecodeNodeKind.mode64: node = a + (is64 ? 1 : 0)
            case DecodeNodeKind.prefix: node = a + mandatory
            case DecodeNodeKind.mod: node = a + (mod == 3 ? 1 : 0)
            case DecodeNodeKind.reg: node = a + Int(regField)
            case DecodeNodeKind.rm: node = a + Int(rmField)
            case DecodeNodeKind.w: node = a + (w ? 1 : 0)
            case DecodeNodeKind.l:
                if vec.vectorLength > 2 { return .failure(.invalid) }
                node = a + Int(vec.vectorLength)
            case DecodeNodeKind.os: node = a + Int(operandSize(ignore66: false, default64: false) >> 5)
            case DecodeNodeKind.osd64: node = a + Int(operandSize(ignore66: false, default64: true) >> 5)
            case DecodeNodeKind.adsize: node = a + Int(asize >> 5)
            default: return .failure(.invalid)
            }
        }
        let form = node
        let attrs = t.formAttrs[form]
        let mnemonic = Mnemonic(rawValue: t.formMnemonic[form]) ?? .invalid
        let ops = t.formOperands[form]

        // ---- the effective operand size
        var osize: UInt8
        if is64 && attrs & (FormAttr.d64 | FormAttr.f64 | FormAttr.near) != 0 {
            if attrs & FormAttr.f64 != 0 || (attrs & FormAttr.near != 0 && vendor == .intel) { osize = 64 }
            else { osize = operandSize(ignore66: consumed66, default64: true) }
        } else {
            osize = operandSize(ignore66: consumed66, default64: false)
        }
        if pfx.contains(.vex) || pfx.contains(.evex) || pfx.contains(.xop) {
            osize = is64 && w ? 64 : 32
        }

        // ---- operands
        let vlBytes: Int = pfx.contains(.evex) || pfx.contains(.vex) || pfx.contains(.xop) ? 16 << Int(vec.vectorLength) : 16
        let vecClass: RegisterClass = vlBytes == 16 ? .xmm : (vlBytes == 32 ? .ymm : .zmm)
        let gpr8Class: RegisterClass = rex != 0 && !pfx.contains(.vex) && !pfx.contains(.evex) && !pfx.contains(.xop) ? .gpr8rex : .gpr8
        let segOverride: SegmentRegister? = seg == 0xFF ? nil : SegmentRegister(rawValue: Int(seg))
        let rexR: UInt8 = (rex & 4) << 1
        let rexB: UInt8 = (rex & 1) << 3
        var imm: Int64 = 0, immSize: UInt8 = 0, imm2: Int64 = 0, imm2Size: UInt8 = 0
        let opCount = Int(attrs >> 13)
        var out: (Operand, Operand, Operand, Operand) = (.none, .none, .none, .none)

        @inline(__always) func sizeBytes(_ code: UInt8) -> Int {
            switch code {
            case OperandSizeCode.b.rawValue: return 1
            case OperandSizeCode.w.rawValue: return 2
            case OperandSizeCode.d.rawValue, OperandSizeCode.ss.rawValue: return 4
            case OperandSizeCode.q.rawValue, OperandSizeCode.sd.rawValue: return 8
            case OperandSizeCode.v.rawValue, OperandSizeCode.bs.rawValue: return Int(osize) >> 3
            case OperandSizeCode.z.rawValue: return osize == 16 ? 2 : 4
            case OperandSizeCode.y.rawValue: return osize == 64 ? 8 : 4
            case OperandSizeCode.p.rawValue: return osize == 16 ? 4 : (osize == 32 ? 6 : 10)
            case OperandSizeCode.s.rawValue: return is64 ? 10 : 6
            case OperandSizeCode.a.rawValue: return Int(osize) >> 2
            case OperandSizeCode.x.rawValue, OperandSizeCode.ps.rawValue, OperandSizeCode.pd.rawValue: return vlBytes
            case OperandSizeCode.dq.rawValue: return 16
            case OperandSizeCode.qq.rawValue: return 32
            case OperandSizeCode.t.rawValue: return 10
            case OperandSizeCode.e.rawValue: return osize == 16 ? 14 : 28
            case OperandSizeCode.f.rawValue: return osize == 16 ? 94 : 108
            case OperandSizeCode.h.rawValue: return vlBytes >> 1
            case OperandSizeCode.s512.rawValue: return 512
            case OperandSizeCode.o.rawValue: return vlBytes >> 2
            case OperandSizeCode.xq.rawValue: return vlBytes >> 3
            default: return 0
            }
        }
        @inline(__always) func gprClass(_ bytes: Int) -> RegisterClass {
            switch bytes {
            case 1: return gpr8Class
            case 2: return .gpr16
            case 8: return .gpr64
            default: return .gpr32
            }
        }
        @inline(__always) func vectorClass(_ code: UInt8) -> RegisterClass {
            switch code {
            case OperandSizeCode.x.rawValue, OperandSizeCode.ps.rawValue, OperandSizeCode.pd.rawValue: return vecClass
            case OperandSizeCode.qq.rawValue: return .ymm
            case OperandSizeCode.h.rawValue: return vlBytes == 64 ? .ymm : .xmm
            default: return .xmm
            }
        }
        @inline(__always) func elementSize(_ code: UInt8) -> Int {
            switch code {
            case OperandSizeCode.ps.rawValue, OperandSizeCode.ss.rawValue, OperandSizeCode.d.rawValue: return 4
            case OperandSizeCode.pd.rawValue, OperandSizeCode.sd.rawValue, OperandSizeCode.q.rawValue: return 8
            default: return w ? 8 : 4
            }
        }
        func memory(_ size: Int, code: UInt8) -> Operand {
            var accessSize = size
            var d = disp
            if pfx.contains(.evex) {
                if vec.broadcast { accessSize = elementSize(code) }
                if dispSize == 1 && accessSize > 0 { d = disp * Int64(accessSize) }
            }
            let aclass: RegisterClass = asize == 64 ? .gpr64 : (asize == 32 ? .gpr32 : .gpr16)
            var segment: SegmentRegister = (baseReg == 4 || baseReg == 5) ? .ss : .ds
            var overridden = false
            if let s = segOverride, !is64 || s.rawValue >= 4 { segment = s; overridden = true }
            return .memory(MemoryOperand(
                segment: segment, segmentOverridden: overridden,
                base: baseReg == 0xFF ? nil : Register(aclass, baseReg),
                index: indexReg == 0xFF ? nil : Register(aclass, indexReg),
                scale: scale, displacement: d, ripRelative: ripRel, addressSize: asize,
                size: UInt16(accessSize)))
        }
        func stringMemory(_ size: Int, destination: Bool) -> Operand {
            let aclass: RegisterClass = asize == 64 ? .gpr64 : (asize == 32 ? .gpr32 : .gpr16)
            var segment: SegmentRegister = destination ? .es : .ds
            var overridden = false
            if !destination, let s = segOverride, !is64 || s.rawValue >= 4 { segment = s; overridden = true }
            return .memory(MemoryOperand(
                segment: segment, segmentOverridden: overridden,
                base: Register(aclass, destination ? 7 : 6), index: nil, scale: 1, displacement: 0,
                ripRelative: false, addressSize: asize, size: UInt16(size)))
        }
        // Reads an immediate of `n` bytes, sign-extended from its encoded size.
        func readImmediate(_ n: Int) -> Result<Int64, DecodeError> {
            if let e = need(i + n) { return .failure(e) }
            let v: Int64
            switch n {
            case 1: v = Int64(Int8(bitPattern: u8(i)))
            case 2: v = Int64(Int16(bitPattern: p.loadUnaligned(fromByteOffset: i, as: UInt16.self)))
            case 4: v = Int64(Int32(bitPattern: p.loadUnaligned(fromByteOffset: i, as: UInt32.self)))
            default: v = Int64(bitPattern: p.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            }
            i += n
            if immSize == 0 { imm = v; immSize = UInt8(n) } else { imm2 = v; imm2Size = UInt8(n) }
            return .success(v)
        }
        @inline(__always) func zeroExtend(_ v: Int64, _ bytes: Int) -> Int64 {
            bytes >= 8 ? v : v & ((1 << (Int64(bytes) * 8)) - 1)
        }

        var j = 0
        while j < opCount {
            let spec = UInt16(truncatingIfNeeded: ops >> (16 * UInt64(j)))
            let kind = UInt8(spec >> 8)
            let code = UInt8(spec & 0xFF)
            let operand: Operand
            switch kind {
            case OperandKind.E.rawValue:
                let n = sizeBytes(code)
                operand = mod == 3 ? .register(Register(gprClass(n), rmField | rexB)) : memory(n, code: code)
            case OperandKind.G.rawValue:
                operand = .register(Register(gprClass(sizeBytes(code)), regField | rexR))
            case OperandKind.M.rawValue:
                if mod == 3 { return .failure(.invalid) }
                operand = memory(sizeBytes(code), code: code)
            case OperandKind.R.rawValue:
                operand = .register(Register(gprClass(sizeBytes(code)), rmField | rexB))
            case OperandKind.S.rawValue:
                if regField > 5 || (j == 0 && regField == 1) { return .failure(.invalid) }
                operand = .register(Register(.segment, regField))
            case OperandKind.C.rawValue:
                // LOCK MOV CRn is AMD's alternative encoding of CR8 outside 64-bit mode.
                let extra: UInt8 = pfx.contains(.lock) ? 8 : 0
                operand = .register(Register(.control, regField | rexR | extra))
            case OperandKind.D.rawValue:
                operand = .register(Register(.debug, regField | rexR))
            case OperandKind.Z.rawValue:
                operand = .register(Register(gprClass(sizeBytes(code)), op & 7 | rexB))
            case OperandKind.I.rawValue:
                let n: Int
                switch code {
                case OperandSizeCode.b.rawValue, OperandSizeCode.bs.rawValue: n = 1
                case OperandSizeCode.w.rawValue: n = 2
                case OperandSizeCode.d.rawValue: n = 4
                case OperandSizeCode.z.rawValue: n = osize == 16 ? 2 : 4
                default: n = Int(osize) >> 3
                }
                let v: Int64
                switch readImmediate(n) {
                case .success(let x): v = x
                case .failure(let e): return .failure(e)
                }
                switch code {
                case OperandSizeCode.b.rawValue, OperandSizeCode.w.rawValue:
                    operand = .immediate(zeroExtend(v, n), size: UInt8(n))
                case OperandSizeCode.bs.rawValue, OperandSizeCode.z.rawValue, OperandSizeCode.v.rawValue:
                    operand = .immediate(v, size: osize >> 3)
                default:
                    operand = .immediate(v, size: UInt8(n))
                }
            case OperandKind.J.rawValue:
                let n = code == OperandSizeCode.b.rawValue ? 1 : (osize == 16 ? 2 : 4)
                switch readImmediate(n) {
                case .success(let x): operand = .relative(x)
                case .failure(let e): return .failure(e)
                }
            case OperandKind.O.rawValue:
                let n = Int(asize) >> 3
                if let e = need(i + n) { return .failure(e) }
                var off: UInt64 = 0
                switch n {
                case 2: off = UInt64(p.loadUnaligned(fromByteOffset: i, as: UInt16.self))
                case 4: off = UInt64(p.loadUnaligned(fromByteOffset: i, as: UInt32.self))
                default: off = p.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                }
                i += n
                disp = Int64(bitPattern: off); dispSize = n
                var segment = SegmentRegister.ds, overridden = false
                if let s = segOverride, !is64 || s.rawValue >= 4 { segment = s; overridden = true }
                operand = .memory(MemoryOperand(segment: segment, segmentOverridden: overridden, base: nil, index: nil,
                                                scale: 1, displacement: disp, ripRelative: false,
                                                addressSize: asize, size: UInt16(sizeBytes(code))))
            case OperandKind.A.rawValue:
                let n = osize == 16 ? 2 : 4
                if let e = need(i + n + 2) { return .failure(e) }
                let off = n == 2 ? UInt32(p.loadUnaligned(fromByteOffset: i, as: UInt16.self))
                                 : p.loadUnaligned(fromByteOffset: i, as: UInt32.self)
                let sel = p.loadUnaligned(fromByteOffset: i + n, as: UInt16.self)
                i += n + 2
                imm = Int64(off); immSize = UInt8(n); imm2 = Int64(sel); imm2Size = 2
                operand = .farPointer(selector: sel, offset: off)
            case OperandKind.X.rawValue:
                operand = stringMemory(sizeBytes(code), destination: false)
            case OperandKind.Y.rawValue:
                operand = stringMemory(sizeBytes(code), destination: true)
            case OperandKind.N.rawValue:
                operand = .register(Register(.mmx, rmField))
            case OperandKind.P.rawValue:
                operand = .register(Register(.mmx, regField))
            case OperandKind.Q.rawValue:
                operand = mod == 3 ? .register(Register(.mmx, rmField)) : memory(sizeBytes(code), code: code)
            case OperandKind.U.rawValue:
                operand = .register(Register(vectorClass(code), rmField | rexB | rmHigh))
            case OperandKind.V.rawValue:
                operand = .register(Register(vectorClass(code), regField | rexR | regHigh))
            case OperandKind.W.rawValue:
                operand = mod == 3 ? .register(Register(vectorClass(code), rmField | rexB | rmHigh))
                                   : memory(sizeBytes(code), code: code)
            case OperandKind.H.rawValue:
                operand = .register(Register(vectorClass(code), vec.vvvv))
            case OperandKind.B.rawValue:
                operand = .register(Register(gprClass(sizeBytes(code)), vec.vvvv & 15))
            case OperandKind.L.rawValue:
                switch readImmediate(1) {
                case .success(let x): operand = .register(Register(vectorClass(code), UInt8(truncatingIfNeeded: x >> 4) & (is64 ? 15 : 7)))
                case .failure(let e): return .failure(e)
                }
            case OperandKind.kG.rawValue:
                operand = .register(Register(.mask, regField))
            case OperandKind.kE.rawValue:
                operand = mod == 3 ? .register(Register(.mask, rmField)) : memory(sizeBytes(code), code: code)
            case OperandKind.kH.rawValue:
                operand = .register(Register(.mask, vec.vvvv & 7))
            case OperandKind.kR.rawValue:
                operand = .register(Register(.mask, rmField))
            default: // fixed operands
                switch code {
                case FixedOperand.AL.rawValue: operand = .register(Register(.gpr8, 0))
                case FixedOperand.CL.rawValue: operand = .register(Register(.gpr8, 1))
                case FixedOperand.DX.rawValue: operand = .register(Register(.gpr16, 2))
                case FixedOperand.rAX.rawValue: operand = .register(Register(gprClass(Int(osize) >> 3), 0))
                case FixedOperand.eAX.rawValue: operand = .register(Register(osize == 16 ? .gpr16 : .gpr32, 0))
                case FixedOperand.AX.rawValue: operand = .register(Register(.gpr16, 0))
                case FixedOperand.st.rawValue: operand = .register(Register(.st, 0))
                case FixedOperand.sti.rawValue: operand = .register(Register(.st, rmField))
                case FixedOperand.one.rawValue: operand = .immediate(1, size: 1)
                case FixedOperand.XMM0.rawValue: operand = .register(Register(.xmm, 0))
                default: operand = .register(Register(.segment, code - FixedOperand.ES.rawValue))
                }
            }
            switch j {
            case 0: out.0 = operand
            case 1: out.1 = operand
            case 2: out.2 = operand
            default: out.3 = operand
            }
            j += 1
        }

        var mn = mnemonic
        var nOperands = opCount
        // 90 is XCHG rAX, rAX only with REX.B; without it, NOP (PAUSE with F3).
        if map == 0 && op == 0x90 && rex & 1 == 0 {
            mn = lastRep == 2 ? .pause : .nop
            nOperands = 0
            out = (.none, .none, .none, .none)
        }
        // LOCK is #UD unless the form allows it and its destination is memory.
        if pfx.contains(.lock) {
            let ok = (attrs & FormAttr.lock != 0 && mod != 3)
                || (opCount == 2 && (kindOf(ops, 0) == OperandKind.C.rawValue || kindOf(ops, 1) == OperandKind.C.rawValue))
            if !ok { return .failure(.invalid) }
        }

        return .success(Instruction(
            length: UInt8(i), mnemonic: mn, map: OpcodeMap(rawValue: UInt8(map)) ?? .legacy, opcode: op,
            prefixes: pfx, segmentOverride: segOverride, rex: rex, vector: vec,
            operandSize: osize, addressSize: asize, mode: UInt8(mode.rawValue),
            hasModRM: hasModRM, modrm: modrm, hasSIB: hasSIB, sib: sib,
            displacement: disp, displacementSize: UInt8(dispSize),
            immediate: imm, immediateSize: immSize, immediate2: imm2, immediate2Size: imm2Size,
            operandCount: UInt8(nOperands), operands: out, attributes: attrs))
    }

    @inline(__always) static func kindOf(_ ops: UInt64, _ j: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: ops >> (16 * UInt64(j) + 8))
    }
}
