import Foundation
import X86

/// A loadable guest: byte segments at guest-physical addresses, an entry point, and the
/// machine text from the image's `.exitscope` section if it has one.
public struct GuestImage: Sendable, Equatable {
    public struct Segment: Sendable, Equatable {
        public var address: UInt64
        public var bytes: [UInt8]
        /// Bytes in memory (≥ bytes.count: the rest is zero, as ELF's p_memsz says).
        public var memorySize: UInt64
    }
    public enum Kind: String, Sendable { case flat, elf32, elf64 }

    public var kind: Kind
    public var segments: [Segment]
    public var entry: UInt64
    /// The `.exitscope` section's text ("mode=real vcpus=1 ..."), if present.
    public var machineText: String?
    /// General-purpose registers the boot vCPU starts with besides the mode's entry state
    /// (a Multiboot kernel gets EAX=0x2BADB002 and EBX=the information block).
    public struct EntryRegisters: Sendable, Equatable {
        public var rax: UInt64
        public var rbx: UInt64
        public init(rax: UInt64, rbx: UInt64) { self.rax = rax; self.rbx = rbx }
    }
    public var entryRegisters: EntryRegisters?
    /// The boot vCPU's whole first state, when the image's boot protocol defines it (a Linux
    /// bzImage: LinuxBoot.swift builds its own GDT and page tables); the mode's entry state
    /// and the VMM area's GDT are then not used.
    public var entryState: CPUState?

    public init(kind: Kind, segments: [Segment], entry: UInt64, machineText: String? = nil) {
        self.kind = kind; self.segments = segments; self.entry = entry; self.machineText = machineText
    }

    /// A raw binary loaded at `address` and entered there.
    public static func flat(_ bytes: [UInt8], at address: UInt64) -> GuestImage {
        GuestImage(kind: .flat, segments: [Segment(address: address, bytes: bytes, memorySize: UInt64(bytes.count))],
                   entry: address)
    }

    /// The lowest guest-physical address the image occupies.
    public var lowestAddress: UInt64 { segments.map(\.address).min() ?? 0 }

    /// Parses an ELF32 or ELF64 little-endian x86 executable by its program headers (PT_LOAD
    /// at p_paddr), and reads its `.exitscope` section. Every offset and size is checked
    /// against the file; a malformed file is an error naming what is wrong.
    public static func elf(_ data: [UInt8], path: String = "image") throws(VMMError) -> GuestImage {
        func bad(_ s: String) -> VMMError { .image(path: path, problem: s) }
        guard data.count >= 52, data[0] == 0x7F, data[1] == 0x45, data[2] == 0x4C, data[3] == 0x46 else {
            throw bad("not an ELF file")
        }
        let is64: Bool
        switch data[4] {
        case 1: is64 = false
        case 2: is64 = true
        default: throw bad("unknown ELF class \(data[4])")
        }
        guard data[5] == 1 else { throw bad("not a little-endian ELF file") }
        func u16(_ o: Int) throws(VMMError) -> UInt64 {
            guard o >= 0, o + 2 <= data.count else { throw bad("truncated at offset \(o)") }
            return UInt64(data[o]) | UInt64(data[o + 1]) << 8
        }
        func u32(_ o: Int) throws(VMMError) -> UInt64 {
            guard o >= 0, o + 4 <= data.count else { throw bad("truncated at offset \(o)") }
            var v: UInt64 = 0
            for i in 0..<4 { v |= UInt64(data[o + i]) << (8 * UInt64(i)) }
            return v
        }
        func u64(_ o: Int) throws(VMMError) -> UInt64 {
            guard o >= 0, o + 8 <= data.count else { throw bad("truncated at offset \(o)") }
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(data[o + i]) << (8 * UInt64(i)) }
            return v
        }
        func word(_ o: Int) throws(VMMError) -> UInt64 { is64 ? try u64(o) : try u32(o) }
        func int(_ v: UInt64, _ what: String) throws(VMMError) -> Int {
            guard v <= UInt64(data.count) else { throw bad("\(what) \(v) lies beyond the file's \(data.count) bytes") }
            return Int(v)
        }

        let machine = try u16(18)
        guard machine == 3 || machine == 62 else { throw bad("ELF machine \(machine) is not x86 (3) or x86-64 (62)") }
        let entry = try word(24)
        let phoff = try int(try word(is64 ? 32 : 28), "program header offset")
        let shoff = try int(try word(is64 ? 40 : 32), "section header offset")
        let phentsize = Int(try u16(is64 ? 54 : 42)), phnum = Int(try u16(is64 ? 56 : 44))
        let shentsize = Int(try u16(is64 ? 58 : 46)), shnum = Int(try u16(is64 ? 60 : 48))
        let shstrndx = Int(try u16(is64 ? 62 : 50))
        guard phnum > 0 else { throw bad("no program headers") }
        guard phentsize >= (is64 ? 56 : 32) else { throw bad("program header size \(phentsize) too small") }

        var segments: [Segment] = []
        for i in 0..<phnum {
            let h = phoff + i * phentsize
            let type = try u32(h)
            guard type == 1 else { continue }  // PT_LOAD
            let offset, paddr, filesz, memsz: UInt64
            if is64 {
                offset = try u64(h + 8); paddr = try u64(h + 24); filesz = try u64(h + 32); memsz = try u64(h + 40)
            } else {
                offset = try u32(h + 4); paddr = try u32(h + 12); filesz = try u32(h + 16); memsz = try u32(h + 20)
            }
            guard filesz <= memsz else { throw bad("segment \(i): file size \(filesz) > memory size \(memsz)") }
            guard offset <= UInt64(data.count), filesz <= UInt64(data.count) - offset else {
                throw bad("segment \(i): bytes \(offset)+\(filesz) lie beyond the file's \(data.count) bytes")
            }
            guard paddr <= UInt64.max - memsz else { throw bad("segment \(i): address \(hex(paddr)) + size wraps") }
            if memsz == 0 { continue }
            segments.append(Segment(address: paddr, bytes: Array(data[Int(offset)..<Int(offset + filesz)]), memorySize: memsz))
        }
        guard !segments.isEmpty else { throw bad("no loadable (PT_LOAD) segments") }

        var text: String?
        if shnum > 0 && shoff > 0 && shstrndx < shnum && shentsize >= (is64 ? 64 : 40) {
            func section(_ n: Int) throws(VMMError) -> (name: UInt64, offset: UInt64, size: UInt64) {
                let s = shoff + n * shentsize
                return is64 ? (try u32(s), try u64(s + 24), try u64(s + 32)) : (try u32(s), try u32(s + 16), try u32(s + 20))
            }
            let strtab = try section(shstrndx)
            for n in 0..<shnum {
                let s = try section(n)
                let nameAt = strtab.offset &+ s.name
                let want = Array(".exitscope\0".utf8)
                guard nameAt < UInt64(data.count), UInt64(want.count) <= UInt64(data.count) - nameAt,
                      Array(data[Int(nameAt)..<Int(nameAt) + want.count]) == want else { continue }
                guard s.offset <= UInt64(data.count), s.size <= UInt64(data.count) - s.offset, s.size <= 4096 else {
                    throw bad(".exitscope section lies beyond the file or is over 4 KiB")
                }
                text = String(decoding: data[Int(s.offset)..<Int(s.offset + s.size)].filter { $0 != 0 }, as: UTF8.self)
                break
            }
        }
        return GuestImage(kind: is64 ? .elf64 : .elf32, segments: segments, entry: entry, machineText: text)
    }
}

/// Finds a guest image the way `exitscope run` names it: `Samples/NAME`, `Samples/NAME.S`,
/// `Samples/NAME.c` or the `.elf` itself. For a sample with a source, the ELF is
/// `Samples/build/NAME.elf`, built with `make -C Samples build/NAME.elf` when it is missing
/// or older than its source.
public enum ImageLocator {
    public struct Located: Equatable, Sendable {
        public var elfPath: String
        public var source: String?
        public var built: Bool
    }

    public static func locate(_ name: String, build: Bool = true) throws(VMMError) -> Located {
        let fm = FileManager.default
        let url = URL(fileURLWithPath: name)
        let ext = url.pathExtension
        let dir = url.deletingLastPathComponent()
        let base = (ext == "S" || ext == "c" || ext == "elf") ? url.deletingPathExtension().lastPathComponent
                                                               : url.lastPathComponent
        // An explicit ELF (or any existing file without a source beside it) is used as is.
        if ext == "elf" && fm.fileExists(atPath: name) { return Located(elfPath: name, source: nil, built: false) }
        var sources: [String] = []
        if ext == "S" || ext == "c" { sources = [name] } else {
            sources = [dir.appendingPathComponent(base + ".S").path, dir.appendingPathComponent(base + ".c").path]
        }
        let srcDir = ext == "elf" && dir.lastPathComponent == "build" ? dir.deletingLastPathComponent() : dir
        if ext == "elf" {
            sources = [srcDir.appendingPathComponent(base + ".S").path, srcDir.appendingPathComponent(base + ".c").path]
        }
        // NAME-N: NAME.S built with N iterations (Samples/README.md), target build/NAME-N.elf.
        if !sources.contains(where: { fm.fileExists(atPath: $0) }), ext != "S", ext != "c",
           let dash = base.lastIndex(of: "-"), !base[base.index(after: dash)...].isEmpty,
           base[base.index(after: dash)...].allSatisfy(\.isNumber) {
            let stem = String(base[..<dash])
            sources = [srcDir.appendingPathComponent(stem + ".S").path, srcDir.appendingPathComponent(stem + ".c").path]
        }
        guard let source = sources.first(where: { fm.fileExists(atPath: $0) }) else {
            var isDir: ObjCBool = false
            if fm.fileExists(atPath: name, isDirectory: &isDir), !isDir.boolValue {
                return Located(elfPath: name, source: nil, built: false)
            }
            throw VMMError.image(path: name, problem: "no such image (looked for \(sources.joined(separator: ", ")))")
        }
        let target = "build/\(base).elf"
        let elf = srcDir.appendingPathComponent(target).path
        let stale: Bool = {
            guard let e = try? fm.attributesOfItem(atPath: elf)[.modificationDate] as? Date else { return true }
            guard let s = try? fm.attributesOfItem(atPath: source)[.modificationDate] as? Date else { return false }
            return e < s
        }()
        if !stale { return Located(elfPath: elf, source: source, built: false) }
        guard build else { throw VMMError.image(path: elf, problem: "not built (run make -C \(srcDir.path) \(target))") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["make", "-s", "-C", srcDir.path, target]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.standardError
        do { try p.run() } catch {
            throw VMMError.image(path: source, problem: "cannot run make: \(error)")
        }
        let msg = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, fm.fileExists(atPath: elf) else {
            let text = String(decoding: msg, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw VMMError.image(path: source, problem: "make -C \(srcDir.path) \(target) failed\(text.isEmpty ? "" : ":\n" + text)")
        }
        return Located(elfPath: elf, source: source, built: true)
    }

    /// Reads a file's bytes, as a clear error when it cannot.
    public static func readFile(_ path: String, limit: Int = 1 << 30) throws(VMMError) -> [UInt8] {
        guard let d = FileManager.default.contents(atPath: path) else {
            throw VMMError.image(path: path, problem: "cannot read file")
        }
        guard d.count <= limit else { throw VMMError.image(path: path, problem: "file is larger than \(limit >> 20) MiB") }
        return [UInt8](d)
    }
}
