/// A symbol of the guest image (for `show` and `report`: RIP → function name).
public struct ImageSymbol: Equatable, Sendable {
    public var address: UInt64
    public var size: UInt64
    public var name: String
}

extension GuestImage {
    /// The symbols of an ELF32/ELF64 image's .symtab (functions, objects and untyped labels,
    /// as assembler sources define them), sorted by address; [] when it has none or the file
    /// is not a well-formed ELF. Every offset and count is checked against the file's size.
    public static func elfSymbols(_ d: [UInt8]) -> [ImageSymbol] {
        guard d.count >= 52, d[0] == 0x7F, d[1] == 0x45, d[2] == 0x4C, d[3] == 0x46, d[5] == 1 else { return [] }
        let is64 = d[4] == 2
        func u16(_ o: Int) -> Int? { o >= 0 && o + 2 <= d.count ? Int(d[o]) | Int(d[o + 1]) << 8 : nil }
        func u32(_ o: Int) -> UInt64? {
            guard o >= 0, o + 4 <= d.count else { return nil }
            return (0..<4).reduce(UInt64(0)) { $0 | UInt64(d[o + $1]) << (8 * UInt64($1)) }
        }
        func u64(_ o: Int) -> UInt64? {
            guard o >= 0, o + 8 <= d.count else { return nil }
            return (0..<8).reduce(UInt64(0)) { $0 | UInt64(d[o + $1]) << (8 * UInt64($1)) }
        }
        func word(_ o: Int) -> UInt64? { is64 ? u64(o) : u32(o) }
        guard let shoff = word(is64 ? 0x28 : 0x20), let shentsize = u16(is64 ? 0x3A : 0x2E),
              let shnum = u16(is64 ? 0x3C : 0x30), shoff < UInt64(d.count), shnum < 4096, shentsize >= (is64 ? 64 : 40)
        else { return [] }
        func section(_ i: Int) -> (type: UInt64, offset: UInt64, size: UInt64, link: Int, entsize: UInt64)? {
            let base = Int(shoff) + i * shentsize
            guard let type = u32(base + 4), let link = u32(base + (is64 ? 0x28 : 0x18)),
                  let offset = word(base + (is64 ? 0x18 : 0x10)), let size = word(base + (is64 ? 0x20 : 0x14)),
                  let entsize = word(base + (is64 ? 0x38 : 0x24)) else { return nil }
            return (type, offset, size, Int(link), entsize)
        }
        var out: [ImageSymbol] = []
        for i in 0..<shnum {
            guard let sym = section(i), sym.type == 2, sym.link < shnum, let str = section(sym.link),
                  sym.offset <= UInt64(d.count), sym.size <= UInt64(d.count) - sym.offset,
                  str.offset <= UInt64(d.count), str.size <= UInt64(d.count) - str.offset else { continue }
            let entsize = Int(sym.entsize == 0 ? (is64 ? 24 : 16) : sym.entsize)
            guard entsize >= (is64 ? 24 : 16) else { continue }
            for e in stride(from: Int(sym.offset), to: Int(sym.offset + sym.size) - entsize + 1, by: entsize) {
                guard let nameOff = u32(e) else { continue }
                let info = d[e + (is64 ? 4 : 12)]
                let shndx = u16(e + (is64 ? 6 : 14)) ?? 0
                let value = (is64 ? u64(e + 8) : u32(e + 4)) ?? 0
                let size = (is64 ? u64(e + 16) : u32(e + 8)) ?? 0
                let type = info & 0xF
                // NOTYPE, OBJECT, FUNC; defined in a section (not UND, ABS).
                guard type <= 2, shndx != 0, shndx < 0xFF00, nameOff < str.size else { continue }
                var end = Int(str.offset + nameOff)
                let start = end
                while end < Int(str.offset + str.size), d[end] != 0 { end += 1 }
                let name = String(decoding: d[start..<end], as: UTF8.self)
                if name.isEmpty || name.hasPrefix(".L") { continue }
                out.append(ImageSymbol(address: value, size: size, name: name))
            }
        }
        return out.sorted { $0.address < $1.address }
    }
}
