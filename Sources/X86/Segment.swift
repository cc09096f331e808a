/// A segment register with its hidden part, in the VMCB save-area layout
/// (AMD APM vol. 2, appendix B): selector, 12-bit attributes, limit, base.
///
/// `attributes` packs the descriptor's type (bits 0-3), S (4), DPL (5-6), P (7),
/// AVL (8), L (9), D/B (10) and G (11), exactly as VMCB's ATTRIB field does.
public struct Segment: Equatable, Hashable, Sendable {
    public var selector: UInt16
    public var base: UInt64
    public var limit: UInt32
    public var attributes: UInt16

    public init(selector: UInt16 = 0, base: UInt64 = 0, limit: UInt32 = 0xFFFF, attributes: UInt16 = 0) {
        self.selector = selector
        self.base = base
        self.limit = limit
        self.attributes = attributes
    }

    public var type: UInt8 { UInt8(attributes & 0xF) }
    public var isSystem: Bool { attributes & 0x10 == 0 }
    public var dpl: UInt8 { UInt8((attributes >> 5) & 3) }
    public var present: Bool { attributes & 0x80 != 0 }
    @inlinable public var long: Bool { attributes & 0x200 != 0 }
    @inlinable public var defaultBig: Bool { attributes & 0x400 != 0 }
    public var granularity: Bool { attributes & 0x800 != 0 }
    public var isCode: Bool { !isSystem && type & 0x8 != 0 }

    /// Real-mode segment for a selector: base = selector << 4, 64 KiB limit, data read/write.
    public static func real(_ selector: UInt16, code: Bool = false) -> Segment {
        Segment(selector: selector, base: UInt64(selector) << 4, limit: 0xFFFF,
                attributes: code ? 0x9B : 0x93)
    }

    /// Decode a legacy 8-byte GDT/LDT descriptor into the hidden part of a segment register.
    public static func fromDescriptor(selector: UInt16, descriptor d: UInt64) -> Segment {
        let base = ((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24)
        var limit = UInt32(truncatingIfNeeded: (d & 0xFFFF) | (((d >> 48) & 0xF) << 16))
        let attr = UInt16(truncatingIfNeeded: ((d >> 40) & 0xFF) | (((d >> 52) & 0xF) << 8))
        if attr & 0x800 != 0 { limit = (limit << 12) | 0xFFF }
        return Segment(selector: selector, base: base, limit: limit, attributes: attr)
    }
}

/// GDTR or IDTR: a base and a 16-bit limit.
public struct DescriptorTable: Equatable, Hashable, Sendable {
    public var base: UInt64
    public var limit: UInt16
    public init(base: UInt64 = 0, limit: UInt16 = 0xFFFF) {
        self.base = base
        self.limit = limit
    }
}
