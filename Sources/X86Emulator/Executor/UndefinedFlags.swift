import X86

/// The RFLAGS bits each instruction leaves undefined (AMD APM vol. 3 "rFLAGS affected" and
/// Intel SDM vol. 2 flag tables agree on these), so comparisons against hardware, KVM or another
/// emulator mask exactly these and nothing else. See UNDEFINED_FLAGS.md for the table in prose.
public enum UndefinedFlags {
    static let cf = RFLAGS.cf, pf = RFLAGS.pf, af = RFLAGS.af, zf = RFLAGS.zf, sf = RFLAGS.sf, of = RFLAGS.of

    /// Undefined flags of `mnemonic`. For shifts and rotates pass the masked count the instruction
    /// used (what is undefined depends on it); `operandBits` matters for SHLD/SHRD.
    public static func mask(for mnemonic: Mnemonic, maskedCount: UInt64? = nil, operandBits: Int = 32) -> UInt64 {
        switch mnemonic {
        case .and, .or, .xor, .test: return af
        case .mul, .imul: return sf | zf | af | pf
        case .div, .idiv: return cf | of | sf | zf | af | pf
        case .shl, .sal, .shr, .sar:
            guard let c = maskedCount, c != 0 else { return maskedCount == nil ? af | of : 0 }
            return af | (c > 1 ? of : 0)
        case .rol, .ror, .rcl, .rcr:
            guard let c = maskedCount, c != 0 else { return maskedCount == nil ? of : 0 }
            return c > 1 ? of : 0
        case .shld, .shrd:
            guard let c = maskedCount, c != 0 else { return maskedCount == nil ? cf | of | sf | zf | af | pf : 0 }
            if c > UInt64(operandBits) { return cf | of | sf | zf | af | pf }
            return af | (c > 1 ? of : 0)
        case .bsf, .bsr: return cf | of | sf | af | pf
        case .bt, .bts, .btr, .btc: return of | sf | af | pf
        case .daa, .das: return of
        case .aaa, .aas: return of | sf | zf | pf
        case .aam, .aad: return of | af | cf
        case .lzcnt, .tzcnt: return of | sf | pf | af
        case .andn, .blsi, .blsmsk, .blsr, .bzhi: return af | pf
        case .bextr: return af | sf | pf
        default: return 0
        }
    }

    /// True when the destination itself is undefined for these inputs (BSF/BSR of zero on Intel,
    /// SHLD/SHRD with a count above the operand size, 16-bit BSWAP).
    public static func resultUndefined(for mnemonic: Mnemonic, source: UInt64 = 1, maskedCount: UInt64 = 0,
                                       operandBits: Int = 32, vendor: CPUVendor = .amd) -> Bool {
        switch mnemonic {
        case .bsf, .bsr: return source == 0 && vendor == .intel
        case .shld, .shrd: return maskedCount > UInt64(operandBits)
        case .bswap: return operandBits == 16
        default: return false
        }
    }

    /// Every mnemonic with undefined flags, for documentation and tests.
    public static let mnemonics: [Mnemonic] = [.and, .or, .xor, .test, .mul, .imul, .div, .idiv, .shl, .sal, .shr,
                                               .sar, .rol, .ror, .rcl, .rcr, .shld, .shrd, .bsf, .bsr, .bt, .bts,
                                               .btr, .btc, .daa, .das, .aaa, .aas, .aam, .aad, .lzcnt, .tzcnt,
                                               .andn, .blsi, .blsmsk, .blsr, .bzhi, .bextr]
}
