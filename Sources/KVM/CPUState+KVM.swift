import CKVM
import X86

// Conversions between KVM's kvm_regs/kvm_sregs and ExitScope's one state schema.

extension Segment {
    /// From KVM's kvm_segment: the attribute bits are packed the way the VMCB packs them.
    @inline(__always)
    public init(kvm s: kvm_segment) {
        var a = UInt16(s.type & 0xF)
        a |= UInt16(s.s & 1) << 4
        a |= UInt16(s.dpl & 3) << 5
        a |= UInt16((s.unusable != 0 ? 0 : s.present) & 1) << 7
        a |= UInt16(s.avl & 1) << 8
        a |= UInt16(s.l & 1) << 9
        a |= UInt16(s.db & 1) << 10
        a |= UInt16(s.g & 1) << 11
        self.init(selector: s.selector, base: s.base, limit: s.limit, attributes: a)
    }

    public var kvm: kvm_segment {
        var s = kvm_segment()
        s.base = base; s.limit = limit; s.selector = selector
        s.type = type; s.s = isSystem ? 0 : 1; s.dpl = dpl; s.present = present ? 1 : 0
        s.avl = UInt8((attributes >> 8) & 1); s.l = long ? 1 : 0; s.db = defaultBig ? 1 : 0
        s.g = granularity ? 1 : 0
        s.unusable = present ? 0 : 1
        return s
    }
}

extension CPUState {
    /// The state as KVM reports it in kvm_regs and kvm_sregs (MSRs other than EFER and the
    /// debug registers keep their defaults: they are not in those structures).
    @inline(__always)
    public init(regs r: kvm_regs, sregs s: kvm_sregs) {
        self.init()
        rax = r.rax; rcx = r.rcx; rdx = r.rdx; rbx = r.rbx
        rsp = r.rsp; rbp = r.rbp; rsi = r.rsi; rdi = r.rdi
        r8 = r.r8; r9 = r.r9; r10 = r.r10; r11 = r.r11
        r12 = r.r12; r13 = r.r13; r14 = r.r14; r15 = r.r15
        rip = r.rip; rflags = r.rflags
        update(sregs: s)
    }

    /// Replaces the system part (segments, tables, control registers, EFER) from kvm_sregs.
    @inline(__always)
    public mutating func update(sregs s: kvm_sregs) {
        withUnsafePointer(to: s) { update(sregs: $0) }
    }

    /// The same, read in place (the sync-regs area of kvm_run): no copy of the 312-byte struct.
    @inline(__always)
    public mutating func update(sregs p: UnsafePointer<kvm_sregs>) {
        es = Segment(kvm: p.pointee.es); cs = Segment(kvm: p.pointee.cs); ss = Segment(kvm: p.pointee.ss)
        ds = Segment(kvm: p.pointee.ds); fs = Segment(kvm: p.pointee.fs); gs = Segment(kvm: p.pointee.gs)
        ldtr = Segment(kvm: p.pointee.ldt); tr = Segment(kvm: p.pointee.tr)
        gdtr = DescriptorTable(base: p.pointee.gdt.base, limit: p.pointee.gdt.limit)
        idtr = DescriptorTable(base: p.pointee.idt.base, limit: p.pointee.idt.limit)
        cr0 = p.pointee.cr0; cr2 = p.pointee.cr2; cr3 = p.pointee.cr3; cr4 = p.pointee.cr4
        cr8 = p.pointee.cr8; efer = p.pointee.efer
        cpl = CPUState.cpl(cr0: cr0, rflags: rflags, ssDPL: ss.dpl)
    }

    /// The VMCB's CPL as KVM's registers give it: 0 in real mode, 3 in virtual-8086 mode, else SS.DPL.
    @inlinable
    public static func cpl(cr0: UInt64, rflags: UInt64, ssDPL: UInt8) -> UInt8 {
        if cr0 & CR0.pe == 0 { return 0 } else if rflags & RFLAGS.vm != 0 { return 3 } else { return ssDPL }
    }

    /// Registers and the system part from kvm_regs and kvm_sregs, read in place; the fields they
    /// do not hold (MSRs, XCR0, debug registers) keep their values.
    @inline(__always)
    public mutating func update(regs r: UnsafePointer<kvm_regs>, sregs s: UnsafePointer<kvm_sregs>) {
        updateGeneralRegisters(r)
        update(sregs: s)
    }

    /// Only kvm_regs, for a state whose system part already came from the same kvm_sregs: the
    /// result equals `update(regs:sregs:)` (CPL, which depends on RFLAGS.VM, is derived again).
    @inline(__always)
    public mutating func update(regsOnly r: UnsafePointer<kvm_regs>) {
        updateGeneralRegisters(r)
        cpl = CPUState.cpl(cr0: cr0, rflags: rflags, ssDPL: ss.dpl)
    }

    @inline(__always)
    mutating func updateGeneralRegisters(_ r: UnsafePointer<kvm_regs>) {
        rax = r.pointee.rax; rcx = r.pointee.rcx; rdx = r.pointee.rdx; rbx = r.pointee.rbx
        rsp = r.pointee.rsp; rbp = r.pointee.rbp; rsi = r.pointee.rsi; rdi = r.pointee.rdi
        r8 = r.pointee.r8; r9 = r.pointee.r9; r10 = r.pointee.r10; r11 = r.pointee.r11
        r12 = r.pointee.r12; r13 = r.pointee.r13; r14 = r.pointee.r14; r15 = r.pointee.r15
        rip = r.pointee.rip; rflags = r.pointee.rflags
    }

    public var kvmRegs: kvm_regs {
        var r = kvm_regs()
        r.rax = rax; r.rcx = rcx; r.rdx = rdx; r.rbx = rbx
        r.rsp = rsp; r.rbp = rbp; r.rsi = rsi; r.rdi = rdi
        r.r8 = r8; r.r9 = r9; r.r10 = r10; r.r11 = r11
        r.r12 = r12; r.r13 = r13; r.r14 = r14; r.r15 = r15
        r.rip = rip; r.rflags = rflags
        return r
    }

    /// kvm_sregs for this state on top of `base` (which keeps apic_base and the interrupt bitmap).
    public func kvmSregs(base: kvm_sregs = kvm_sregs()) -> kvm_sregs {
        var s = base
        s.es = es.kvm; s.cs = cs.kvm; s.ss = ss.kvm; s.ds = ds.kvm; s.fs = fs.kvm; s.gs = gs.kvm
        s.ldt = ldtr.kvm; s.tr = tr.kvm
        s.gdt.base = gdtr.base; s.gdt.limit = gdtr.limit
        s.idt.base = idtr.base; s.idt.limit = idtr.limit
        s.cr0 = cr0; s.cr2 = cr2; s.cr3 = cr3; s.cr4 = cr4; s.cr8 = cr8; s.efer = efer
        return s
    }
}

/// The synced registers in place in the vCPU's kvm_run page: valid until its next KVM_RUN.
/// The fields a recorder compares per exit are read here without building a state.
public struct SyncedRegistersView {
    public let regs: UnsafePointer<kvm_regs>
    public let sregs: UnsafePointer<kvm_sregs>
    @inlinable
    public init(regs: UnsafePointer<kvm_regs>, sregs: UnsafePointer<kvm_sregs>) { self.regs = regs; self.sregs = sregs }

    @inlinable public var rip: UInt64 { regs.pointee.rip }
    @inlinable public var rdx: UInt64 { regs.pointee.rdx }
    @inlinable public var rflags: UInt64 { regs.pointee.rflags }
    @inlinable public var cr0: UInt64 { sregs.pointee.cr0 }
    @inlinable public var cr3: UInt64 { sregs.pointee.cr3 }
    @inlinable public var cr4: UInt64 { sregs.pointee.cr4 }
    @inlinable public var efer: UInt64 { sregs.pointee.efer }
    @inlinable public var csBase: UInt64 { sregs.pointee.cs.base }
    /// As `CPUState.cpl` after `update(sregs:)`.
    @inlinable public var cpl: UInt8 { CPUState.cpl(cr0: cr0, rflags: rflags, ssDPL: sregs.pointee.ss.dpl & 3) }
    /// As `CPUState.mode` of the state these registers give.
    @inlinable public var mode: CPUMode {
        CPUState.mode(cr0: cr0, efer: efer, rflags: rflags, csLong: sregs.pointee.cs.l & 1 != 0,
                      csDefaultBig: sregs.pointee.cs.db & 1 != 0)
    }

    /// The state they describe, into `state` in place (fields sync regs do not carry keep theirs).
    @inline(__always)
    public func load(into state: inout CPUState) { state.update(regs: regs, sregs: sregs) }
}
