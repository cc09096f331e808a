import CKVM
import Glibc

/// KVM's binary statistics (KVM_GET_STATS_FD): descriptors read once, values on demand.
/// Each stat may hold several u64s (histograms); `read()` returns the first of each, by name.
public final class KVMStats: @unchecked Sendable {
    let handle: OwnedFD
    /// Stat names in descriptor order ("exits", "io_exits", "halt_exits", ...).
    public let names: [String]
    let offsets: [Int]   // byte offset of each stat's first value within the data block
    let dataOffset: Int
    let dataSize: Int

    init(fd: Int32) throws(KVMError) {
        handle = OwnedFD(fd)
        var header = kvm_stats_header()
        let hsize = MemoryLayout<kvm_stats_header>.size
        if pread(fd, &header, hsize, 0) != hsize { throw KVMError.ioctl(name: "read of KVM stats header", errno: .current) }
        let descSize = MemoryLayout<kvm_stats_desc>.size + Int(header.name_size)
        let count = Int(header.num_desc)
        guard count < 100_000, header.name_size < 4096 else {
            throw KVMError.invalidArgument("KVM stats header is implausible")
        }
        var buf = [UInt8](repeating: 0, count: descSize * count)
        if count > 0 {
            let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(header.desc_offset)) }
            if n != buf.count { throw KVMError.ioctl(name: "read of KVM stats descriptors", errno: .current) }
        }
        var names: [String] = [], offsets: [Int] = []
        var end = 0
        buf.withUnsafeBytes { raw in
            for i in 0..<count {
                let base = i * descSize
                let size = Int(raw.loadUnaligned(fromByteOffset: base + 6, as: UInt16.self))
                let offset = Int(raw.loadUnaligned(fromByteOffset: base + 8, as: UInt32.self))
                let nameStart = base + MemoryLayout<kvm_stats_desc>.size
                let nameBytes = raw[nameStart..<(nameStart + Int(header.name_size))]
                let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
                names.append(name)
                offsets.append(offset)
                end = max(end, offset + max(size, 1) * 8)
            }
        }
        self.names = names
        self.offsets = offsets
        dataOffset = Int(header.data_offset)
        dataSize = end
    }

    /// Current values (first u64 of each stat), in `names` order.
    public func readValues() throws(KVMError) -> [UInt64] {
        var data = [UInt8](repeating: 0, count: dataSize)
        let fd = handle.fd
        let off = dataOffset
        let n = data.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(off)) }
        if n < 0 { throw KVMError.ioctl(name: "read of KVM stats", errno: .current) }
        return data.withUnsafeBytes { raw in offsets.map { raw.loadUnaligned(fromByteOffset: $0, as: UInt64.self) } }
    }

    /// Current values by name.
    public func read() throws(KVMError) -> [String: UInt64] {
        let v = try readValues()
        var out: [String: UInt64] = [:]
        for (i, n) in names.enumerated() { out[n] = v[i] }
        return out
    }
}
