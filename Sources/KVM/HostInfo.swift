import CKVM
import Foundation

/// Facts about the host a trace header records, so a report states what "hardware" meant.
public enum HostInfo {
    /// The host time stamp counter.
    @inline(__always)
    public static func rdtsc() -> UInt64 { ckvm_rdtsc() }

    /// The TSC frequency, measured against CLOCK_MONOTONIC over `seconds` (the kernel's own
    /// tsc_khz is not exported to user space on every host).
    public static func measureTSCHz(seconds: Double = 0.02) -> UInt64 {
        func now() -> Double {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
        }
        let t0 = now(), c0 = rdtsc()
        while now() - t0 < seconds {}
        let t1 = now(), c1 = rdtsc()
        let hz = Double(c1 &- c0) / (t1 - t0)
        // Round to 100 kHz: the measurement is not better than that.
        return UInt64((hz / 1e5).rounded()) * 100_000
    }

    /// "model name" from /proc/cpuinfo.
    public static func cpuModel() -> String {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
        for line in text.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return "unknown"
    }

    /// The kernel's release and version, as `uname -rv` prints them.
    public static func kernel() -> String {
        var u = utsname()
        uname(&u)
        func field<T>(_ t: T) -> String {
            withUnsafeBytes(of: t) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
        }
        return field(u.release) + " " + field(u.version)
    }
}
