import Foundation
import X86

/// The header's JSON form (FORMAT.md, "Header"). JSON because the header is written once,
/// read by people and by the Python reader, and grows new keys in new minor versions: a
/// reader ignores keys it does not know and takes a default for keys that are missing.
struct HeaderJSON: Codable {
    struct Symbol: Codable { var address: String; var size: String; var name: String }
    struct Region: Codable { var gpa: String; var size: String; var name: String }
    struct CPUID: Codable {
        var function: String, index: String, flags: UInt32
        var eax: String, ebx: String, ecx: String, edx: String
    }

    var tsc_hz: UInt64?
    var host_cpu: String?
    var kernel: String?
    var kvm_backend: String?
    var capabilities: [String: Int64]?
    var cpuid: [CPUID]?
    var memory: [Region]?
    var vcpu_count: UInt16?
    var image_path: String?
    var image_sha256: String?
    var command_line: [String]?
    var symbols: [Symbol]?
    var options: [String: String]?
    var start_time: String?

    init(_ h: TraceHeader) {
        tsc_hz = h.tscHz
        host_cpu = h.hostCPU
        kernel = h.kernel
        kvm_backend = h.kvmBackend
        capabilities = h.capabilities
        cpuid = h.cpuid.map {
            CPUID(function: Hex.string($0.function), index: Hex.string($0.index), flags: $0.flags,
                  eax: Hex.string($0.eax), ebx: Hex.string($0.ebx), ecx: Hex.string($0.ecx), edx: Hex.string($0.edx))
        }
        memory = h.memory.map { Region(gpa: Hex.string($0.gpa), size: Hex.string($0.size), name: $0.name) }
        vcpu_count = h.vcpuCount
        image_path = h.imagePath
        image_sha256 = h.imageSHA256
        command_line = h.commandLine
        symbols = h.symbols.map { Symbol(address: Hex.string($0.address), size: Hex.string($0.size), name: $0.name) }
        options = h.options
        start_time = h.startTime
    }

    func header(major: UInt16) throws -> TraceHeader {
        func hex(_ s: String, _ what: String) throws -> UInt64 {
            guard let v = Hex.parse(s) else { throw TraceError.corrupted(offset: 20, what: "header \(what) '\(s)' is not a hex number") }
            return v
        }
        func hex32(_ s: String, _ what: String) throws -> UInt32 {
            let v = try hex(s, what)
            guard v <= UInt64(UInt32.max) else { throw TraceError.corrupted(offset: 20, what: "header \(what) '\(s)' exceeds 32 bits") }
            return UInt32(v)
        }
        return TraceHeader(
            formatVersion: major, tscHz: tsc_hz ?? 0, hostCPU: host_cpu ?? "", kernel: kernel ?? "",
            kvmBackend: kvm_backend ?? "unknown", capabilities: capabilities ?? [:],
            cpuid: try (cpuid ?? []).map {
                CPUIDEntry(function: try hex32($0.function, "cpuid function"), index: try hex32($0.index, "cpuid index"),
                           flags: $0.flags, eax: try hex32($0.eax, "cpuid eax"), ebx: try hex32($0.ebx, "cpuid ebx"),
                           ecx: try hex32($0.ecx, "cpuid ecx"), edx: try hex32($0.edx, "cpuid edx"))
            },
            memory: try (memory ?? []).map {
                MemoryRegionInfo(gpa: try hex($0.gpa, "memory gpa"), size: try hex($0.size, "memory size"), name: $0.name)
            },
            vcpuCount: vcpu_count ?? 1, imagePath: image_path ?? "", imageSHA256: image_sha256 ?? "",
            commandLine: command_line ?? [],
            symbols: try (symbols ?? []).map {
                GuestSymbol(address: try hex($0.address, "symbol address"), size: try hex($0.size, "symbol size"), name: $0.name)
            },
            options: options ?? [:], startTime: start_time ?? "")
    }

    static func encode(_ h: TraceHeader) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return Array(try e.encode(HeaderJSON(h)))
    }

    static func decode(_ bytes: [UInt8], major: UInt16) throws -> TraceHeader {
        let j: HeaderJSON
        do {
            j = try JSONDecoder().decode(HeaderJSON.self, from: Data(bytes))
        } catch {
            throw TraceError.corrupted(offset: UInt64(TraceFormat.fileHeaderFixedSize), what: "header is not valid JSON (\(error))")
        }
        return try j.header(major: major)
    }
}

/// Guest symbols sorted by address, for naming a RIP ("main+0x12") in `show` and reports.
public struct SymbolTable: Sendable {
    let sorted: [GuestSymbol]

    public init(_ symbols: [GuestSymbol]) { sorted = symbols.sorted { $0.address < $1.address } }

    /// The closest symbol at or below `address` (within its size when the size is known).
    public func lookup(_ address: UInt64) -> (symbol: GuestSymbol, offset: UInt64)? {
        var lo = 0, hi = sorted.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if sorted[mid].address <= address { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        let s = sorted[lo - 1]
        let off = address - s.address
        if s.size > 0 && off >= s.size { return nil }
        return (s, off)
    }

    /// "name+0x12", "name", or nil when no symbol covers the address.
    public func describe(_ address: UInt64) -> String? {
        guard let (s, off) = lookup(address) else { return nil }
        return off == 0 ? s.name : "\(s.name)+0x\(String(off, radix: 16))"
    }
}
