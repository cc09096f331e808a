/// Reads guest-physical memory for the page walker; nil when the address is not backed.
public protocol PhysicalMemoryReader {
    func readPhysical64(_ gpa: UInt64) -> UInt64?
    func readPhysical32(_ gpa: UInt64) -> UInt32?
}

/// What kind of access a translation is for; it decides the #PF error code's bits.
public struct PageAccess: OptionSet, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let write = PageAccess(rawValue: 1 << 1)
    public static let user = PageAccess(rawValue: 1 << 2)
    public static let fetch = PageAccess(rawValue: 1 << 4)
    public static let read: PageAccess = []
}

/// One page-table entry the walk read: where it lives and what it held.
public struct PageTableEntry: Equatable, Sendable {
    public var gpa: UInt64
    public var value: UInt64
    public var size: Int  // 4 (32-bit paging) or 8
    public init(gpa: UInt64, value: UInt64, size: Int) {
        self.gpa = gpa
        self.value = value
        self.size = size
    }
}

public enum PageWalkResult: Equatable, Sendable {
    /// The physical address, the entries walked (root first), and the page size in bytes.
    case translated(gpa: UInt64, entries: [PageTableEntry], pageSize: UInt64)
    /// A #PF with its error code (CR2 is the linear address).
    case pageFault(errorCode: UInt32, entries: [PageTableEntry])
    /// A table the walk needed is not in guest memory (or not in the trace, during replay).
    case unbacked(gpa: UInt64, entries: [PageTableEntry])
}

/// The paging modes a walk can take, from CR0, CR4 and EFER (APM vol. 2, 5.1).
public enum PagingMode: Sendable {
    case none, legacy32, pae, level4, level5

    public init(cr0: UInt64, cr4: UInt64, efer: UInt64) {
        if cr0 & CR0.pg == 0 { self = .none }
        else if cr4 & CR4.pae == 0 { self = .legacy32 }
        else if efer & EFER.lma == 0 { self = .pae }
        else { self = cr4 & CR4.la57 != 0 ? .level5 : .level4 }
    }
}

/// The guest page walker: a pure function of the control registers, the linear address, the
/// access kind and guest-physical memory. It checks present, write, user and NX permissions
/// and reports the entries it read; setting accessed/dirty bits is the caller's business
/// (the entries tell it where).
public enum PageWalker {
    public static func walk(linear: UInt64, access: PageAccess, cr0: UInt64, cr3: UInt64,
                            cr4: UInt64, efer: UInt64, memory: PhysicalMemoryReader) -> PageWalkResult {
        let mode = PagingMode(cr0: cr0, cr4: cr4, efer: efer)
        let isWrite = access.contains(.write), isUser = access.contains(.user)
        let isFetch = access.contains(.fetch)
        let wp = cr0 & CR0.wp != 0
        let nxe = efer & EFER.nxe != 0
        var entries: [PageTableEntry] = []
        var writable = true, user = true, noExec = false

        func fault(_ present: Bool, reserved: Bool = false) -> PageWalkResult {
            var ec: UInt32 = present ? 1 : 0
            if isWrite { ec |= 2 }
            if isUser { ec |= 4 }
            if reserved { ec |= 8 }
            if isFetch && (nxe || cr4 & CR4.smep != 0) { ec |= 16 }
            return .pageFault(errorCode: ec, entries: entries)
        }
        func check(pageSize: UInt64, frame: UInt64) -> PageWalkResult {
            if isUser && !user { return fault(true) }
            if isWrite && !writable && (isUser || wp) { return fault(true) }
            if isFetch && noExec { return fault(true) }
            return .translated(gpa: frame | (linear & (pageSize - 1)), entries: entries, pageSize: pageSize)
        }

        switch mode {
        case .none:
            return .translated(gpa: linear & 0xFFFF_FFFF, entries: [], pageSize: 4096)
        case .legacy32:
            let l = linear & 0xFFFF_FFFF
            let pdeAddr = (cr3 & 0xFFFF_F000) | ((l >> 22) << 2)
            guard let pde32 = memory.readPhysical32(pdeAddr) else { return .unbacked(gpa: pdeAddr, entries: entries) }
            let pde = UInt64(pde32)
            entries.append(PageTableEntry(gpa: pdeAddr, value: pde, size: 4))
            if pde & 1 == 0 { return fault(false) }
            writable = pde & 2 != 0; user = pde & 4 != 0
            if pde & 0x80 != 0 && cr4 & CR4.pse != 0 {
                // 4 MiB page; bits 20:13 give physical address bits 39:32 (PSE-36/40).
                let frame = (pde & 0xFFC0_0000) | (((pde >> 13) & 0xFF) << 32)
                return check(pageSize: 4 << 20, frame: frame)
            }
            let pteAddr = (pde & 0xFFFF_F000) | (((l >> 12) & 0x3FF) << 2)
            guard let pte32 = memory.readPhysical32(pteAddr) else { return .unbacked(gpa: pteAddr, entries: entries) }
            let pte = UInt64(pte32)
            entries.append(PageTableEntry(gpa: pteAddr, value: pte, size: 4))
            if pte & 1 == 0 { return fault(false) }
            writable = writable && pte & 2 != 0; user = user && pte & 4 != 0
            return check(pageSize: 4096, frame: pte & 0xFFFF_F000)
        case .pae, .level4, .level5:
            let addrMask: UInt64 = 0x000F_FFFF_FFFF_F000
            var table: UInt64
            var levels: [Int]
            switch mode {
            case .pae:
                let l = linear & 0xFFFF_FFFF
                let pdpteAddr = (cr3 & 0xFFFF_FFE0) | ((l >> 30) << 3)
                guard let pdpte = memory.readPhysical64(pdpteAddr) else { return .unbacked(gpa: pdpteAddr, entries: entries) }
                entries.append(PageTableEntry(gpa: pdpteAddr, value: pdpte, size: 8))
                if pdpte & 1 == 0 { return fault(false) }
                table = pdpte & addrMask
                levels = [21, 12]
            case .level5:
                table = cr3 & addrMask
                levels = [48, 39, 30, 21, 12]
            default:
                table = cr3 & addrMask
                levels = [39, 30, 21, 12]
            }
            for shift in levels {
                let entryAddr = table | (((linear >> UInt64(shift)) & 0x1FF) << 3)
                guard let e = memory.readPhysical64(entryAddr) else { return .unbacked(gpa: entryAddr, entries: entries) }
                entries.append(PageTableEntry(gpa: entryAddr, value: e, size: 8))
                if e & 1 == 0 { return fault(false) }
                if !nxe && e & (1 << 63) != 0 { return fault(true, reserved: true) }
                writable = writable && e & 2 != 0
                user = user && e & 4 != 0
                if nxe && e & (1 << 63) != 0 { noExec = true }
                if shift == 12 { return check(pageSize: 4096, frame: e & addrMask) }
                if e & 0x80 != 0 {
                    if shift == 39 || shift == 48 { return fault(true, reserved: true) }
                    let pageSize: UInt64 = 1 << UInt64(shift)
                    return check(pageSize: pageSize, frame: e & addrMask & ~(pageSize - 1))
                }
                table = e & addrMask
            }
            return fault(false)
        }
    }
}
