import X86

/// The generated tables copied once into flat unsafe buffers, so the hot path indexes raw memory
/// (no Array bounds checks, no copy-on-write checks).
final class DecoderTables: @unchecked Sendable {
    static let shared = DecoderTables()

    let root: UnsafeMutablePointer<UInt16>
    let hasModRM: UnsafeMutablePointer<UInt8>
    let node: UnsafeMutablePointer<UInt32>
    let formMnemonic: UnsafeMutablePointer<UInt16>
    let formOperands: UnsafeMutablePointer<UInt64>
    let formAttrs: UnsafeMutablePointer<UInt16>

    /// Per first byte: the legacy-prefix bits it sets (`X86Decoder.p*`), the segment it names
    /// (+1, bits 10-12), REX (bit 13), an escape or VEX/EVEX/XOP lead byte (bit 14). One load per
    /// byte replaces a switch over the prefix values.
    let byteClass: UnsafeMutablePointer<UInt16>
    /// Operand size codes resolved to bytes, for every (operand size, vector length, 64-bit mode)
    /// an instruction can have: `sizeBytes[sizeContext * 32 + code]` (see `sizeContext`).
    let sizeBytes: UnsafeMutablePointer<UInt16>
    /// General-purpose register class by operand bytes (min(n, 15)), without and with REX.
    let gprClass: UnsafeMutablePointer<RegisterClass>
    let gprClassREX: UnsafeMutablePointer<RegisterClass>

    private static func copy<T>(_ a: [T]) -> UnsafeMutablePointer<T> {
        let p = UnsafeMutablePointer<T>.allocate(capacity: max(a.count, 1))
        _ = UnsafeMutableBufferPointer(start: p, count: a.count).initialize(from: a)
        return p
    }

    /// Byte-class bits.
    static let segmentShift: UInt16 = 10, rexBit: UInt16 = 1 << 13, escapeBit: UInt16 = 1 << 14
    static let legacyPrefixBits: UInt16 = 0x3FF

    /// The index of a size context: operand size 16/32/64, vector length code 0-3, 64-bit mode.
    @inline(__always) static func sizeContext(osize: UInt8, vectorLength: Int, is64: Bool) -> Int {
        (Int(osize >> 5) * 4 + vectorLength) * 2 + (is64 ? 1 : 0)
    }

    private init() {
        root = Self.copy(tableRoot)
        hasModRM = Self.copy(tableHasModRM)
        node = Self.copy(tableNode)
        formMnemonic = Self.copy(tableFormMnemonic)
        formOperands = Self.copy(tableFormOperands)
        formAttrs = Self.copy(tableFormAttrs)

        var bc = [UInt16](repeating: 0, count: 256)
        bc[0xF0] = X86Decoder.pLock
        bc[0xF2] = X86Decoder.pRepne
        bc[0xF3] = X86Decoder.pRep
        for (b, s) in [(0x26, 0), (0x2E, 1), (0x36, 2), (0x3E, 3), (0x64, 4), (0x65, 5)] as [(Int, UInt16)] {
            bc[b] = X86Decoder.pSeg | (s + 1) << Self.segmentShift
        }
        bc[0x66] = X86Decoder.p66
        bc[0x67] = X86Decoder.p67
        for b in 0x40...0x4F { bc[b] = Self.rexBit }
        for b in [0x0F, 0xC4, 0xC5, 0x62, 0x8F] { bc[b] = Self.escapeBit }
        byteClass = Self.copy(bc)

        // Filled from the one definition of the size codes, X86Decoder.sizeBytes.
        var sz = [UInt16](repeating: 0, count: 3 * 4 * 2 * 32)
        for os: UInt8 in [16, 32, 64] {
            for vl in 0..<4 {
                for is64 in [false, true] {
                    let base = Self.sizeContext(osize: os, vectorLength: vl, is64: is64) * 32
                    for code in 0..<32 {
                        guard let c = OperandSizeCode(rawValue: UInt8(code)) else { continue }
                        sz[base + code] = UInt16(X86Decoder.sizeBytes(c, osize: os, vlBytes: 16 << vl, is64: is64))
                    }
                }
            }
        }
        sizeBytes = Self.copy(sz)
        var g = [RegisterClass](repeating: .gpr32, count: 16)
        g[2] = .gpr16; g[8] = .gpr64
        g[1] = .gpr8
        gprClass = Self.copy(g)
        g[1] = .gpr8rex
        gprClassREX = Self.copy(g)
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
    /// Inlinable so a caller in another module builds the result in place instead of copying the
    /// instruction out of a call frame into the Result and again out of it.
    @inlinable
    public static func decode(_ bytes: UnsafeRawBufferPointer, mode: DecoderMode, vendor: CPUVendor = .amd) -> DecodeResult {
        var r = Instruction()
        if let e = decode(bytes, mode: mode, vendor: vendor, into: &r) { return .failure(e) }
        return .success(r)
    }

    /// The same, writing into `r` in place (no Result wrapping: the fastest way to decode many
    /// instructions). Returns nil on success; on failure `r` is unspecified.
    public static func decode(_ bytes: UnsafeRawBufferPointer, mode: DecoderMode, vendor: CPUVendor = .amd,
                              into r: inout Instruction) -> DecodeError? {
        // One copy of the decoder per mode, so every test of the mode is folded away.
        switch mode {
        case .bits64: return decode(bytes, constantMode: .bits64, vendor: vendor, into: &r)
        case .bits32: return decode(bytes, constantMode: .bits32, vendor: vendor, into: &r)
        case .bits16: return decode(bytes, constantMode: .bits16, vendor: vendor, into: &r)
        }
    }

    @inline(__always)
    static func decode(_ bytes: UnsafeRawBufferPointer, constantMode mode: DecoderMode, vendor: CPUVendor,
                       into r: inout Instruction) -> DecodeError? {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return .truncated }
        let count = bytes.count
        let t = DecoderTables.shared
        let is64 = mode == .bits64

        // Bytes [0, end) must be available: past 15 is #GP, past the buffer is "need more bytes".
        let limit = min(count, 15)
        @inline(__always) func need(_ end: Int) -> DecodeError? {
            if _fastPath(end <= limit) { return nil }
            return end > 15 ? .tooLong : .truncated
        }
        @inline(__always) func u8(_ i: Int) -> UInt8 { p.load(fromByteOffset: i, as: UInt8.self) }

        // ---- legacy prefixes and REX (a REX not immediately before the opcode is ignored)
        var i = 0
        var pf: UInt16 = 0
        var seg: UInt8 = 0xFF
        var rex: UInt8 = 0
        var lastRep: UInt8 = 0
        var b: UInt8 = 0
        var cls: UInt16 = 0
        prefixLoop: while true {
            if let e = need(i + 1) { return e }
            b = u8(i)
            cls = t.byteClass[Int(b)]
            if cls & DecoderTables.legacyPrefixBits == 0 {
                if cls & DecoderTables.rexBit != 0 && is64 { rex = b; i += 1; continue prefixLoop }
                break prefixLoop
            }
            pf |= cls & DecoderTables.legacyPrefixBits
            if cls & X86Decoder.pRep != 0 { lastRep = 2 } else if cls & X86Decoder.pRepne != 0 { lastRep = 3 }
            let s = UInt8(truncatingIfNeeded: cls >> DecoderTables.segmentShift) & 7
            if s != 0 { seg = s - 1 }
            rex = 0
            i += 1
        }
        if rex != 0 { pf |= X86Decoder.pREX }

        // ---- opcode map, VEX / EVEX / XOP
        var map = 0
        var op: UInt8 = b
        var vec = VectorPrefix()
        var mandatory = lastRep != 0 ? Int(lastRep) : ((pf & X86Decoder.p66 != 0) ? 1 : 0)
        var regHigh: UInt8 = 0     // EVEX R' (bit 4 of ModRM.reg for vector registers)
        var rmHigh: UInt8 = 0      // EVEX X (bit 4 of ModRM.rm for vector registers)
        var vexW = false
        var unusedVVVVBits: UInt8 = 0  // VEX/XOP.vvvv as encoded (inverted), all four bits
        if cls & DecoderTables.escapeBit == 0 {
            i += 1   // the common case: a one-byte opcode
        } else {
        switch b {
        case 0x0F:
            if let e = need(i + 2) { return e }
            let b2 = u8(i + 1)
            if b2 == 0x38 || b2 == 0x3A {
                if let e = need(i + 3) { return e }
                map = b2 == 0x38 ? 2 : 3
                op = u8(i + 2); i += 3
            } else if b2 == 0x0F {
                map = 4; op = 0; i += 2   // 3DNow!: the opcode is the suffix byte after the operands
            } else {
                map = 1; op = b2; i += 2
            }
        case 0xC4, 0xC5, 0x62, 0x8F:
            if let e = need(i + 2) { return e }
            let b1 = u8(i + 1)
            let isVector: Bool
            if b == 0x8F { isVector = b1 & 0x1F >= 8 }
            else { isVector = is64 || b1 >> 6 == 3 }
            if !isVector { map = 0; op = b; i += 1; break }
            if (pf & X86Decoder.p66 != 0) || lastRep != 0 || (pf & X86Decoder.pLock != 0) || rex != 0 {
                return .invalid
            }
            let rbit: UInt8 = (~b1 >> 7) & 1
            let xbit: UInt8 = (~b1 >> 6) & 1
            let bbit: UInt8 = (~b1 >> 5) & 1
            if b == 0xC5 {
                if let e = need(i + 3) { return e }
                vec.vvvv = (~b1 >> 3) & 15
                vec.vectorLength = (b1 >> 2) & 1
                vec.pp = b1 & 3
                rex = 0x40 | (is64 ? rbit << 2 : 0)
                map = 5; op = u8(i + 2); i += 3
                pf |= X86Decoder.pVEX
            } else {
                if let e = need(i + 3) { return e }
                let b2 = u8(i + 2)
                vexW = b2 & 0x80 != 0
                vec.w = vexW
                vec.vvvv = (~b2 >> 3) & 15
                vec.pp = b2 & 3
                if is64 { rex = 0x40 | (vexW ? 8 : 0) | rbit << 2 | xbit << 1 | bbit }
                else { rex = 0x40 | (vexW ? 8 : 0) }
                if b == 0x62 {
                    // EVEX: P0 = R X B R' 0 m m m, P1 = W vvvv 1 pp, P2 = z L'L b V' aaa
                    if b1 & 0x08 != 0 || b2 & 0x04 == 0 { return .invalid }
                    if let e = need(i + 5) { return e }
                    let p2 = u8(i + 3)
                    let mm = b1 & 7
                    switch mm {
                    case 1: map = 8
                    case 2: map = 9
                    case 3: map = 10
                    case 5: map = 11
                    case 6: map = 12
                    default: return .invalid
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
                    pf |= X86Decoder.pEVEX
                } else {
                    vec.vectorLength = (b2 >> 2) & 1
                    let mm = b1 & 0x1F
                    if b == 0xC4 {
                        switch mm {
                        case 1: map = 5
                        case 2: map = 6
                        case 3: map = 7
                        default: return .invalid
                        }
                        pf |= X86Decoder.pVEX
                    } else {
                        switch mm {
                        case 8: map = 13
                        case 9: map = 14
                        case 10: map = 15
                        default: return .invalid
                        }
                        pf |= X86Decoder.pXOP
                    }
                    op = u8(i + 3); i += 4
                }
            }
            // Outside 64-bit mode the high bit selects no register, but a vvvv that must be 1111b
            // is checked whole (below), so keep it.
            unusedVVVVBits = vec.vvvv
            if !is64 { vec.vvvv &= 7 }
            mandatory = Int(vec.pp)
        default:
            i += 1
        }
        }

        // ---- effective sizes before the form is known (66 / 67 / REX.W)
        let w = rex & 8 != 0
        let has66 = (pf & X86Decoder.p66 != 0)
        var asize: UInt8
        switch mode {
        case .bits64: asize = (pf & X86Decoder.p67 != 0) ? 32 : 64
        case .bits32: asize = (pf & X86Decoder.p67 != 0) ? 16 : 32
        case .bits16: asize = (pf & X86Decoder.p67 != 0) ? 32 : 16
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
            if let e = need(i + 1) { return e }
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
                        if let e = need(i + 1) { return e }
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
                    if let e = need(i + dispSize) { return e }
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
            if let e = need(i + 1) { return e }
            op = u8(i); i += 1
            key = 4 << 8 | Int(op)
        }

        // ---- walk the decision tree to the form
        // Each switch node selects child `a + value`, the value of the property it tests; all the
        // properties are known here, so they are packed 4 bits per node kind into one word and a
        // node step is a load, a shift and an add (no branch on the kind, which real code
        // mispredicts).
        let osNo64 = UInt64(operandSize(ignore66: false, default64: false) >> 5)
        let osD64 = UInt64(operandSize(ignore66: false, default64: true) >> 5)
        var selector: UInt64 = (is64 ? 1 : 0) << (4 * UInt64(DecodeNodeKind.mode64))
        selector |= UInt64(mandatory) << (4 * UInt64(DecodeNodeKind.prefix))
        selector |= (mod == 3 ? 1 : 0) << (4 * UInt64(DecodeNodeKind.mod))
        selector |= UInt64(regField) << (4 * UInt64(DecodeNodeKind.reg))
        selector |= UInt64(rmField) << (4 * UInt64(DecodeNodeKind.rm))
        selector |= (w ? 1 : 0) << (4 * UInt64(DecodeNodeKind.w))
        selector |= UInt64(vec.vectorLength & 3) << (4 * UInt64(DecodeNodeKind.l))
        selector |= osNo64 << (4 * UInt64(DecodeNodeKind.os))
        selector |= UInt64(asize >> 5) << (4 * UInt64(DecodeNodeKind.adsize))
        selector |= osD64 << (4 * UInt64(DecodeNodeKind.osd64))
        selector |= (w && is64 ? 1 : 0) << (4 * UInt64(DecodeNodeKind.wgpr))
        var word = t.node[Int(t.root[key])]
        var nodeKind = UInt8(truncatingIfNeeded: word >> 16)
        while nodeKind > DecodeNodeKind.leafMandatory66 {
            // EVEX L'L = 3 is reserved where the form depends on the vector length.
            if nodeKind == DecodeNodeKind.l && vec.vectorLength > 2 { return .invalid }
            if nodeKind > DecodeNodeKind.wgpr { return .invalid }
            let child = Int(word & 0xFFFF) + Int(truncatingIfNeeded: (selector >> (4 * UInt64(nodeKind))) & 15)
            word = t.node[child]
            nodeKind = UInt8(truncatingIfNeeded: word >> 16)
        }
        if nodeKind == DecodeNodeKind.invalid { return .invalid }
        let consumed66 = nodeKind == DecodeNodeKind.leafMandatory66
        let node = Int(word & 0xFFFF)
        let form = node
        let attrs = t.formAttrs[form]
        let mnemonic = unsafeBitCast(t.formMnemonic[form], to: Mnemonic.self)  // raw values are the case indices
        let ops = t.formOperands[form]

        // ---- the effective operand size
        let isVector = pf & X86Decoder.pVector != 0
        let osize: UInt8
        if isVector {
            osize = is64 && w ? 64 : 32
        } else if is64 && attrs & (FormAttr.d64 | FormAttr.f64 | FormAttr.near) != 0 {
            osize = attrs & FormAttr.f64 != 0 || (attrs & FormAttr.near != 0 && vendor == .intel)
                ? 64 : operandSize(ignore66: consumed66, default64: true)
        } else {
            osize = operandSize(ignore66: consumed66, default64: false)
        }

        // ---- operands
        // One call per operand into a function that computes only what its operand kind needs
        // (inlined into a loop, the compiler hoisted every kind's register and memory parts out
        // of it and computed them all for every instruction).
        let segOverride: SegmentRegister? = seg == 0xFF ? nil : SegmentRegister(rawValue: Int(seg))
        let opCount = Int(attrs >> 13)
        let isEVEX = pf & X86Decoder.pEVEX != 0
        let vectorLength = isVector ? Int(vec.vectorLength) : 0
        var o = OperandContext(
            p: p, count: count, i: i, disp: disp, dispSize: dispSize,
            sizes: t.sizeBytes + DecoderTables.sizeContext(osize: osize, vectorLength: vectorLength, is64: is64) * 32,
            gprClasses: rex != 0 && !isVector ? t.gprClassREX : t.gprClass,
            mod: mod, regField: regField, rmField: rmField, rex: rex, regHigh: regHigh, rmHigh: rmHigh,
            vvvv: vec.vvvv, op: op, osize: osize, asize: asize, vectorLength: UInt8(vectorLength),
            seg: seg, baseReg: baseReg, indexReg: indexReg, scale: scale,
            is64: is64, ripRelative: ripRel, isEVEX: isEVEX, evexBroadcast: isEVEX && vec.broadcast,
            lock: pf & X86Decoder.pLock != 0)
        r.operands = (.none, .none, .none, .none)
        withUnsafeMutablePointer(to: &r.operands) { tuple in
            // A homogeneous tuple is laid out as an array.
            let out = UnsafeMutableRawPointer(tuple).assumingMemoryBound(to: Operand.self)
            var j = 0
            while j < opCount {
                let spec = UInt16(truncatingIfNeeded: ops >> (16 * UInt64(j)))
                if let e = X86Decoder.decodeOperand(spec, index: j, &o, into: out + (j & 3)) { o.error = e; break }
                j += 1
            }
        }
        if let e = o.error { return e }
        i = o.i
        let imm = o.imm, immSize = o.immSize, imm2 = o.imm2, imm2Size = o.imm2Size
        disp = o.disp; dispSize = o.dispSize

        var mn = mnemonic
        var nOperands = opCount
        // 90 is XCHG rAX, rAX only with REX.B; without it, NOP (PAUSE with F3).
        if map == 0 && op == 0x90 && rex & 1 == 0 {
            mn = lastRep == 2 ? .pause : .nop
            nOperands = 0
            r.operands = (.none, .none, .none, .none)
        }
        // VEX/XOP.vvvv that no operand of the form uses is reserved and must be 1111b (held
        // inverted here, so 0), in every mode; anything else is #UD (AMD APM vol. 3, "VEX and
        // XOP prefixes").
        if pf & (X86Decoder.pVEX | X86Decoder.pXOP) != 0 && unusedVVVVBits != 0 {
            var usesVVVV = false
            for k in 0..<opCount {
                let kd = kindOf(ops, k)
                if kd == OperandKind.H.rawValue || kd == OperandKind.B.rawValue || kd == OperandKind.kH.rawValue { usesVVVV = true }
            }
            if !usesVVVV { return .invalid }
        }
        // LOCK is #UD unless the form allows it and its destination is memory.
        if (pf & X86Decoder.pLock != 0) {
            let ok = (attrs & FormAttr.lock != 0 && mod != 3)
                || (opCount == 2 && (kindOf(ops, 0) == OperandKind.C.rawValue || kindOf(ops, 1) == OperandKind.C.rawValue))
            if !ok { return .invalid }
        }

        r.length = UInt8(i); r.mnemonic = mn; r.map = unsafeBitCast(UInt8(map & 15), to: OpcodeMap.self); r.opcode = op
        r.prefixes = Prefixes(rawValue: pf); r.segmentOverride = segOverride; r.rex = rex; r.vector = vec
        r.operandSize = osize; r.addressSize = asize; r.mode = is64 ? 64 : (mode == .bits32 ? 32 : 16)
        r.hasModRM = hasModRM; r.modrm = modrm; r.hasSIB = hasSIB; r.sib = sib
        r.displacement = disp; r.displacementSize = UInt8(dispSize)
        r.immediate = imm; r.immediateSize = immSize; r.immediate2 = imm2; r.immediate2Size = imm2Size
        r.operandCount = UInt8(nOperands); r.attributes = attrs
        return nil
    }

    /// What decoding one operand needs: the instruction's fields, the position in the bytes, and
    /// the immediates and displacement read so far (moffs and immediates advance `i`).
    struct OperandContext {
        let p: UnsafeRawPointer
        let count: Int
        var i: Int
        var disp: Int64
        var dispSize: Int
        var imm: Int64 = 0, immSize: UInt8 = 0, imm2: Int64 = 0, imm2Size: UInt8 = 0
        var error: DecodeError? = nil
        let sizes: UnsafeMutablePointer<UInt16>
        let gprClasses: UnsafeMutablePointer<RegisterClass>
        let mod: UInt8, regField: UInt8, rmField: UInt8, rex: UInt8, regHigh: UInt8, rmHigh: UInt8
        let vvvv: UInt8, op: UInt8, osize: UInt8, asize: UInt8, vectorLength: UInt8
        let seg: UInt8, baseReg: UInt8, indexReg: UInt8, scale: UInt8
        let is64: Bool, ripRelative: Bool, isEVEX: Bool, evexBroadcast: Bool, lock: Bool

        init(p: UnsafeRawPointer, count: Int, i: Int, disp: Int64, dispSize: Int,
             sizes: UnsafeMutablePointer<UInt16>, gprClasses: UnsafeMutablePointer<RegisterClass>,
             mod: UInt8, regField: UInt8, rmField: UInt8, rex: UInt8, regHigh: UInt8, rmHigh: UInt8,
             vvvv: UInt8, op: UInt8, osize: UInt8, asize: UInt8, vectorLength: UInt8,
             seg: UInt8, baseReg: UInt8, indexReg: UInt8, scale: UInt8,
             is64: Bool, ripRelative: Bool, isEVEX: Bool, evexBroadcast: Bool, lock: Bool) {
            self.p = p; self.count = count; self.i = i; self.disp = disp; self.dispSize = dispSize
            self.sizes = sizes; self.gprClasses = gprClasses
            self.mod = mod; self.regField = regField; self.rmField = rmField; self.rex = rex
            self.regHigh = regHigh; self.rmHigh = rmHigh; self.vvvv = vvvv; self.op = op
            self.osize = osize; self.asize = asize; self.vectorLength = vectorLength
            self.seg = seg; self.baseReg = baseReg; self.indexReg = indexReg; self.scale = scale
            self.is64 = is64; self.ripRelative = ripRelative; self.isEVEX = isEVEX
            self.evexBroadcast = evexBroadcast; self.lock = lock
        }
    }

    /// Decodes operand `j` of spec `spec` (kind << 8 | size code) into `out`.
    @inline(never)
    static func decodeOperand(_ spec: UInt16, index j: Int, _ c: inout OperandContext,
                              into out: UnsafeMutablePointer<Operand>) -> DecodeError? {
        // The generated enums number their cases from 0, as the table's codes do.
        let kind = unsafeBitCast(UInt8(spec >> 8), to: OperandKind.self)
        let code = unsafeBitCast(UInt8(spec & 0xFF), to: OperandSizeCode.self)
        let rexR: UInt8 = (c.rex & 4) << 1
        let rexB: UInt8 = (c.rex & 1) << 3
        let osize = c.osize
        let p = c.p

        @inline(__always) func need(_ end: Int) -> DecodeError? {
            if _fastPath(end <= min(c.count, 15)) { return nil }
            return end > 15 ? .tooLong : .truncated
        }
        @inline(__always) func sizeBytes(_ code: OperandSizeCode) -> Int {
            Int(c.sizes[Int(code.rawValue & 31)])
        }
        @inline(__always) func gprClass(_ bytes: Int) -> RegisterClass {
            c.gprClasses[min(bytes, 15)]
        }
        @inline(__always) func vectorClass(_ code: OperandSizeCode) -> RegisterClass {
            switch code {
            case .x, .ps, .pd: return c.vectorLength == 0 ? .xmm : (c.vectorLength == 1 ? .ymm : .zmm)
            case .qq: return .ymm
            case .h: return c.vectorLength == 2 ? .ymm : .xmm
            default: return .xmm
            }
        }
        /// The segment override if it applies (in 64-bit mode only FS and GS do).
        @inline(__always) func dataOverride() -> SegmentRegister? {
            c.seg == 0xFF || (c.is64 && c.seg < 4) ? nil : SegmentRegister(rawValue: Int(c.seg))
        }
        @inline(__always) func addressClass() -> RegisterClass {
            c.asize == 64 ? .gpr64 : (c.asize == 32 ? .gpr32 : .gpr16)
        }
        func memory(_ size: Int, code: OperandSizeCode) -> Operand {
            var accessSize = size
            var d = c.disp
            if c.isEVEX {
                if c.evexBroadcast { accessSize = X86Decoder.elementSize(code, w: c.rex & 8 != 0) }
                if c.dispSize == 1 && accessSize > 0 { d = c.disp &* Int64(accessSize) }
            }
            let aclass = addressClass()
            let o = dataOverride()
            return .memory(MemoryOperand(
                segment: o ?? ((c.baseReg == 4 || c.baseReg == 5) ? .ss : .ds), segmentOverridden: o != nil,
                base: c.baseReg == 0xFF ? nil : Register(aclass, c.baseReg),
                index: c.indexReg == 0xFF ? nil : Register(aclass, c.indexReg),
                scale: c.scale, displacement: d, ripRelative: c.ripRelative, addressSize: c.asize,
                size: UInt16(accessSize)))
        }
        func stringMemory(_ size: Int, destination: Bool) -> Operand {
            let o = dataOverride()
            return .memory(MemoryOperand(
                segment: destination ? .es : (o ?? .ds),
                segmentOverridden: !destination && o != nil,
                base: Register(addressClass(), destination ? 7 : 6), index: nil, scale: 1, displacement: 0,
                ripRelative: false, addressSize: c.asize, size: UInt16(size)))
        }
        @inline(__always) func zeroExtend(_ v: Int64, _ bytes: Int) -> Int64 {
            bytes >= 8 ? v : v & ((1 << (Int64(bytes) * 8)) - 1)
        }

        let operand: Operand
        switch kind {
        case .E:
            let n = sizeBytes(code)
            operand = c.mod == 3 ? .register(Register(gprClass(n), c.rmField | rexB)) : memory(n, code: code)
        case .G:
            operand = .register(Register(gprClass(sizeBytes(code)), c.regField | rexR))
        case .M:
            if c.mod == 3 { return .invalid }
            operand = memory(sizeBytes(code), code: code)
        case .R:
            operand = .register(Register(gprClass(sizeBytes(code)), c.rmField | rexB))
        case .S:
            if c.regField > 5 || (j == 0 && c.regField == 1) { return .invalid }
            operand = .register(Register(.segment, c.regField))
        case .C:
            // LOCK MOV CRn is AMD's alternative encoding of CR8 outside 64-bit mode.
            let extra: UInt8 = c.lock ? 8 : 0
            operand = .register(Register(.control, c.regField | rexR | extra))
        case .D:
            operand = .register(Register(.debug, c.regField | rexR))
        case .Z:
            operand = .register(Register(gprClass(sizeBytes(code)), c.op & 7 | rexB))
        case .I:
            let n: Int
            switch code {
            case .b, .bs: n = 1
            case .w: n = 2
            case .d: n = 4
            case .z: n = osize == 16 ? 2 : 4
            default: n = Int(osize) >> 3
            }
            if let e = need(c.i + n) { return e }
            let v = X86Decoder.signed(p, c.i, n)
            c.i += n
            if c.immSize == 0 { c.imm = v; c.immSize = UInt8(n) } else { c.imm2 = v; c.imm2Size = UInt8(n) }
            switch code {
            case .b, .w:
                operand = .immediate(zeroExtend(v, n), size: UInt8(n))
            case .bs, .z, .v:
                operand = .immediate(v, size: osize >> 3)
            default:
                operand = .immediate(v, size: UInt8(n))
            }
        case .J:
            let n = code == .b ? 1 : (osize == 16 ? 2 : 4)
            if let e = need(c.i + n) { return e }
            let v = X86Decoder.signed(p, c.i, n)
            c.i += n
            c.imm = v; c.immSize = UInt8(n)
            operand = .relative(v)
        case .O:
            let n = Int(c.asize) >> 3
            if let e = need(c.i + n) { return e }
            var off: UInt64 = 0
            switch n {
            case 2: off = UInt64(p.loadUnaligned(fromByteOffset: c.i, as: UInt16.self))
            case 4: off = UInt64(p.loadUnaligned(fromByteOffset: c.i, as: UInt32.self))
            default: off = p.loadUnaligned(fromByteOffset: c.i, as: UInt64.self)
            }
            c.i += n
            c.disp = Int64(bitPattern: off); c.dispSize = n
            let o = dataOverride()
            operand = .memory(MemoryOperand(segment: o ?? .ds, segmentOverridden: o != nil, base: nil, index: nil,
                                            scale: 1, displacement: c.disp, ripRelative: false,
                                            addressSize: c.asize, size: UInt16(sizeBytes(code))))
        case .A:
            let n = osize == 16 ? 2 : 4
            if let e = need(c.i + n + 2) { return e }
            let off = n == 2 ? UInt32(p.loadUnaligned(fromByteOffset: c.i, as: UInt16.self))
                             : p.loadUnaligned(fromByteOffset: c.i, as: UInt32.self)
            let sel = p.loadUnaligned(fromByteOffset: c.i + n, as: UInt16.self)
            c.i += n + 2
            c.imm = Int64(off); c.immSize = UInt8(n); c.imm2 = Int64(sel); c.imm2Size = 2
            operand = .farPointer(selector: sel, offset: off)
        case .X:
            operand = stringMemory(sizeBytes(code), destination: false)
        case .Y:
            operand = stringMemory(sizeBytes(code), destination: true)
        case .N:
            operand = .register(Register(.mmx, c.rmField))
        case .P:
            operand = .register(Register(.mmx, c.regField))
        case .Q:
            operand = c.mod == 3 ? .register(Register(.mmx, c.rmField)) : memory(sizeBytes(code), code: code)
        case .U:
            operand = .register(Register(vectorClass(code), c.rmField | rexB | c.rmHigh))
        case .V:
            operand = .register(Register(vectorClass(code), c.regField | rexR | c.regHigh))
        case .W:
            operand = c.mod == 3 ? .register(Register(vectorClass(code), c.rmField | rexB | c.rmHigh))
                                 : memory(sizeBytes(code), code: code)
        case .H:
            operand = .register(Register(vectorClass(code), c.vvvv))
        case .B:
            operand = .register(Register(gprClass(sizeBytes(code)), c.vvvv & 15))
        case .L:
            if let e = need(c.i + 1) { return e }
            let x = p.load(fromByteOffset: c.i, as: UInt8.self)
            c.i += 1
            c.imm = Int64(x); c.immSize = 1
            operand = .register(Register(vectorClass(code), (x >> 4) & (c.is64 ? 15 : 7)))
        case .kG:
            operand = .register(Register(.mask, c.regField))
        case .kE:
            operand = c.mod == 3 ? .register(Register(.mask, c.rmField)) : memory(sizeBytes(code), code: code)
        case .kH:
            operand = .register(Register(.mask, c.vvvv & 7))
        case .kR:
            operand = .register(Register(.mask, c.rmField))
        case .fixed:
            switch unsafeBitCast(code, to: FixedOperand.self) {
            case .AL: operand = .register(Register(.gpr8, 0))
            case .CL: operand = .register(Register(.gpr8, 1))
            case .DX: operand = .register(Register(.gpr16, 2))
            case .rAX: operand = .register(Register(gprClass(Int(osize) >> 3), 0))
            case .eAX: operand = .register(Register(osize == 16 ? .gpr16 : .gpr32, 0))
            case .AX: operand = .register(Register(.gpr16, 0))
            case .st: operand = .register(Register(.st, 0))
            case .sti: operand = .register(Register(.st, c.rmField))
            case .one: operand = .immediate(1, size: 1)
            case .XMM0: operand = .register(Register(.xmm, 0))
            case .ES, .CS, .SS, .DS, .FS, .GS:
                operand = .register(Register(.segment, code.rawValue - FixedOperand.ES.rawValue))
            }
        }
        out.pointee = operand
        return nil
    }

    static let pLock: UInt16 = 1 << 0, pRep: UInt16 = 1 << 1, pRepne: UInt16 = 1 << 2, p66: UInt16 = 1 << 3,
               p67: UInt16 = 1 << 4, pSeg: UInt16 = 1 << 5, pREX: UInt16 = 1 << 6, pVEX: UInt16 = 1 << 7,
               pEVEX: UInt16 = 1 << 8, pXOP: UInt16 = 1 << 9
    static let pVector: UInt16 = pVEX | pEVEX | pXOP

    @inline(__always) static func sizeBytes(_ code: OperandSizeCode, osize: UInt8, vlBytes: Int, is64: Bool) -> Int {
        switch code {
        case .b: return 1
        case .w: return 2
        case .d, .ss: return 4
        case .q, .sd: return 8
        case .v, .bs: return Int(osize) >> 3
        case .z: return osize == 16 ? 2 : 4
        case .y: return osize == 64 ? 8 : 4
        case .p: return osize == 16 ? 4 : (osize == 32 ? 6 : 10)
        case .s: return is64 ? 10 : 6
        case .a: return Int(osize) >> 2
        case .x, .ps, .pd: return vlBytes
        case .dq: return 16
        case .qq: return 32
        case .t: return 10
        case .e: return osize == 16 ? 14 : 28
        case .f: return osize == 16 ? 94 : 108
        case .h: return vlBytes >> 1
        case .s512: return 512
        case .o: return vlBytes >> 2
        case .xq: return vlBytes >> 3
        default: return 0
        }
    }

    /// Element size for EVEX broadcast.
    @inline(__always) static func elementSize(_ code: OperandSizeCode, w: Bool) -> Int {
        switch code {
        case .ps, .ss, .d: return 4
        case .pd, .sd, .q: return 8
        default: return w ? 8 : 4
        }
    }

    /// Loads a little-endian immediate of n bytes, sign-extended.
    @inline(__always) static func signed(_ p: UnsafeRawPointer, _ i: Int, _ n: Int) -> Int64 {
        switch n {
        case 1: return Int64(Int8(bitPattern: p.load(fromByteOffset: i, as: UInt8.self)))
        case 2: return Int64(Int16(bitPattern: p.loadUnaligned(fromByteOffset: i, as: UInt16.self)))
        case 4: return Int64(Int32(bitPattern: p.loadUnaligned(fromByteOffset: i, as: UInt32.self)))
        default: return Int64(bitPattern: p.loadUnaligned(fromByteOffset: i, as: UInt64.self))
        }
    }

    @inline(__always) static func kindOf(_ ops: UInt64, _ j: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: ops >> (16 * UInt64(j) + 8))
    }
}
