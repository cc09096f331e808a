import X86

/// `show --json`'s lines, written straight into bytes in exactly the form `JSONEncoder` gives
/// `RecordJSON` (keys sorted by their UTF-8 bytes, slashes not escaped, nil optionals left out;
/// RecordJSONWriterTests compares the two on every kind of record). Through JSONEncoder (keyed
/// containers, a dictionary per object, the key sort) `show --json` wrote about 14,000 records/s.
struct RecordJSONWriter {
    private(set) var bytes: [UInt8] = []
    private var first = true

    init() { bytes.reserveCapacity(2048) }

    // MARK: objects

    mutating func record(_ r: TraceRecord, text: TraceText) {
        open()
        key("access_refused"); bool(r.accessRefused)
        key("accesses"); array(r.accesses) { w, a in
            w.open()
            w.key("address"); w.hex(a.address)
            w.key("count"); w.decimal(UInt64(a.count))
            w.key("data"); w.hexBytes(a.data)
            w.key("size"); w.decimal(UInt64(a.size))
            w.key("space"); w.raw(a.space == .port ? "\"port\"" : a.space == .mmio ? "\"mmio\"" : "\"msr\"")
            w.key("write"); w.bool(a.isWrite)
            w.close()
        }
        key("candidates"); decimal(UInt64(r.candidates))
        key("code"); decimal(r.code)
        key("exit_code"); hex(r.exitCode.rawValue)
        key("exit_info1"); hex(r.exitInfo1)
        key("exit_info2"); hex(r.exitInfo2)
        key("exit_int_info"); hex(r.exitIntInfo)
        key("fragment"); decimal(UInt64(r.fragment))
        key("group"); decimal(r.group)
        key("instruction_bytes"); hexBytes(r.instructionBytes)
        key("instruction_start"); hex(r.instructionStart)
        if let t = text.instructionText(r) { key("instruction_text"); string(t) }
        key("kind"); string(r.kind.name)
        key("kvm_exit_name"); string(text.naming.kvmExitName(r.kvmExitReason))
        key("kvm_exit_reason"); decimal(UInt64(r.kvmExitReason))
        key("last_fragment"); bool(r.lastFragment)
        key("memory"); array(r.memory) { w, m in
            w.open()
            w.key("bytes"); w.hexBytes(m.bytes)
            w.key("gpa"); w.hex(m.gpa)
            w.key("role")
            switch m.role {
            case .instruction: w.raw("\"instruction\"")
            case .pageTable: w.raw("\"page_table\"")
            case .operandRead: w.raw("\"operand_read\"")
            case .written: w.raw("\"written\"")
            }
            w.close()
        }
        key("msr_writes"); array(r.msrWrites) { w, m in
            w.open()
            w.key("index"); w.hex(m.index)
            w.key("value"); w.hex(m.value)
            w.close()
        }
        key("next_rip"); hex(r.nextRIP)
        key("note"); string(r.note)
        key("reason"); string(r.reasonName)
        key("seq"); decimal(r.seq)
        key("state"); state(r.state)
        if let after = r.stateAfter { key("state_after"); state(after) }
        if let sym = text.symbols.describe(r.state.rip) { key("symbol"); string(sym) }
        key("tsc_entry"); decimal(r.tscEntry)
        key("tsc_exit"); decimal(r.tscExit)
        key("vcpu"); decimal(UInt64(r.vcpu))
        key("vcpu_seq"); decimal(r.vcpuSeq)
        key("visibility")
        raw(r.visibility == .committed ? "\"committed\"" : r.visibility == .pending ? "\"pending\"" : "\"none\"")
        close()
    }

    /// CPUState's JSON form (X86's `CPUState.encode(to:)`), keys in sorted order.
    mutating func state(_ s: CPUState) {
        open()
        key("cpl"); decimal(UInt64(s.cpl))
        key("cr0"); hex(s.cr0)
        key("cr2"); hex(s.cr2)
        key("cr3"); hex(s.cr3)
        key("cr4"); hex(s.cr4)
        key("cr8"); hex(s.cr8)
        key("cs"); segment(s.cs)
        key("cstar"); hex(s.cstar)
        key("dr6"); hex(s.dr6)
        key("dr7"); hex(s.dr7)
        key("ds"); segment(s.ds)
        key("efer"); hex(s.efer)
        key("es"); segment(s.es)
        key("fs"); segment(s.fs)
        key("gdtr"); table(s.gdtr)
        key("gs"); segment(s.gs)
        key("idtr"); table(s.idtr)
        key("kernel_gs_base"); hex(s.kernelGSBase)
        key("ldtr"); segment(s.ldtr)
        key("lstar"); hex(s.lstar)
        key("mode"); string(s.mode.rawValue)
        key("pat"); hex(s.pat)
        key("r10"); hex(s.r10)
        key("r11"); hex(s.r11)
        key("r12"); hex(s.r12)
        key("r13"); hex(s.r13)
        key("r14"); hex(s.r14)
        key("r15"); hex(s.r15)
        key("r8"); hex(s.r8)
        key("r9"); hex(s.r9)
        key("rax"); hex(s.rax)
        key("rbp"); hex(s.rbp)
        key("rbx"); hex(s.rbx)
        key("rcx"); hex(s.rcx)
        key("rdi"); hex(s.rdi)
        key("rdx"); hex(s.rdx)
        key("rflags"); hex(s.rflags)
        key("rip"); hex(s.rip)
        key("rsi"); hex(s.rsi)
        key("rsp"); hex(s.rsp)
        key("sfmask"); hex(s.sfmask)
        key("ss"); segment(s.ss)
        key("star"); hex(s.star)
        key("sysenter_cs"); hex(s.sysenterCS)
        key("sysenter_eip"); hex(s.sysenterEIP)
        key("sysenter_esp"); hex(s.sysenterESP)
        key("tr"); segment(s.tr)
        key("xcr0"); hex(s.xcr0)
        close()
    }

    private mutating func segment(_ g: Segment) {
        open()
        key("attributes"); hex(g.attributes)
        key("base"); hex(g.base)
        key("limit"); hex(g.limit)
        key("selector"); hex(g.selector)
        close()
    }

    private mutating func table(_ t: DescriptorTable) {
        open()
        key("base"); hex(t.base)
        key("limit"); hex(t.limit)
        close()
    }

    // MARK: values

    private mutating func open() { bytes.append(UInt8(ascii: "{")); first = true }
    private mutating func close() { bytes.append(UInt8(ascii: "}")); first = false }

    private mutating func array<T>(_ items: [T], _ body: (inout RecordJSONWriter, T) -> Void) {
        bytes.append(UInt8(ascii: "["))
        for (i, x) in items.enumerated() {
            if i > 0 { bytes.append(UInt8(ascii: ",")) }
            body(&self, x)
        }
        bytes.append(UInt8(ascii: "]"))
        first = false
    }

    private mutating func key(_ k: StaticString) {
        if !first { bytes.append(UInt8(ascii: ",")) }
        first = false
        bytes.append(UInt8(ascii: "\""))
        k.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    private mutating func raw(_ s: StaticString) { s.withUTF8Buffer { bytes.append(contentsOf: $0) } }

    private mutating func bool(_ v: Bool) { raw(v ? "true" : "false") }

    private mutating func decimal(_ v: UInt64) { bytes.append(contentsOf: String(v).utf8) }

    /// `Hex.string`: "0x" and lowercase digits, no leading zeros, quoted.
    private mutating func hex<T: FixedWidthInteger & UnsignedInteger>(_ value: T) {
        let v = UInt64(value)
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: "0"))
        bytes.append(UInt8(ascii: "x"))
        var shift = v == 0 ? 0 : (63 - v.leadingZeroBitCount) / 4 * 4
        while shift >= 0 {
            bytes.append(Hex.digit(UInt8(truncatingIfNeeded: v >> UInt64(shift)) & 15))
            shift -= 4
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// `Hex.bytes`: two lowercase digits per byte, quoted.
    private mutating func hexBytes(_ b: [UInt8]) {
        bytes.append(UInt8(ascii: "\""))
        for x in b {
            bytes.append(Hex.digit(x >> 4))
            bytes.append(Hex.digit(x & 15))
        }
        bytes.append(UInt8(ascii: "\""))
    }

    /// A JSON string escaped as JSONEncoder escapes it (with `.withoutEscapingSlashes`): quote,
    /// backslash, \b \f \n \r \t, other controls below 0x20 as \u00xx (lowercase); the rest as is.
    private mutating func string(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "\""): raw("\\\"")
            case UInt8(ascii: "\\"): raw("\\\\")
            case 0x08: raw("\\b")
            case 0x0C: raw("\\f")
            case 0x0A: raw("\\n")
            case 0x0D: raw("\\r")
            case 0x09: raw("\\t")
            case 0..<0x20:
                raw("\\u00")
                bytes.append(Hex.digit(c >> 4))
                bytes.append(Hex.digit(c & 15))
            default: bytes.append(c)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
