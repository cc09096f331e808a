/// A log-linear histogram of non-negative integers (TSC cycles), in the manner of HdrHistogram:
/// values below `2^subBits` are counted exactly; above, each power of two is split into
/// `2^subBits` equal buckets. With `subBits` = 6 a bucket spans at most 1/64 of its lower
/// bound, so a percentile read at the bucket's midpoint is within 0.8% of a true sample
/// (at most 1.6% in the worst case), and memory is fixed (59 × 64 counters) whatever the
/// number of samples.
public struct LogLinearHistogram: Sendable, Equatable {
    public static let subBits = 6
    static let subCount = 1 << subBits
    /// Exponents 0...(64 - subBits) each get `subCount` buckets.
    static let bucketCount = (64 - subBits + 1) * subCount

    private var counts: [UInt64]
    public private(set) var count: UInt64 = 0
    public private(set) var min: UInt64 = .max
    public private(set) var max: UInt64 = 0

    public init() { counts = [UInt64](repeating: 0, count: Self.bucketCount) }

    @inline(__always)
    static func index(of v: UInt64) -> Int {
        if v < UInt64(subCount) { return Int(v) }
        let msb = 63 - v.leadingZeroBitCount            // >= subBits
        let shift = msb - subBits                        // >= 0
        let sub = Int((v >> UInt64(shift)) & UInt64(subCount - 1))
        return (shift + 1) * subCount + sub
    }

    /// The lowest value of a bucket and its width.
    static func bounds(of index: Int) -> (low: UInt64, width: UInt64) {
        if index < subCount { return (UInt64(index), 1) }
        let shift = index / subCount - 1
        let sub = UInt64(index % subCount)
        let low = (UInt64(subCount) | sub) << UInt64(shift)
        return (low, UInt64(1) << UInt64(shift))
    }

    @inline(__always)
    public mutating func record(_ v: UInt64) {
        counts[Self.index(of: v)] &+= 1
        count &+= 1
        if v < min { min = v }
        if v > max { max = v }
    }

    public mutating func merge(_ other: LogLinearHistogram) {
        guard other.count > 0 else { return }
        for i in 0..<counts.count where other.counts[i] != 0 { counts[i] &+= other.counts[i] }
        count &+= other.count
        if other.min < min { min = other.min }
        if other.max > max { max = other.max }
    }

    /// The value at quantile `q` (0...1): the midpoint of the bucket holding the sample of
    /// rank ⌈q·count⌉, clamped to the exact minimum and maximum
    /// (which are returned exactly for the first and last rank). Nil when empty.
    public func value(atQuantile q: Double) -> UInt64? {
        guard count > 0 else { return nil }
        let qq = q.isNaN ? 0 : Swift.min(Swift.max(q, 0), 1)
        var rank = UInt64((qq * Double(count)).rounded(.up))
        if rank < 1 { rank = 1 }
        if rank >= count { return max }   // the extremes are known exactly
        if rank == 1 { return min }
        var seen: UInt64 = 0
        for i in 0..<counts.count where counts[i] != 0 {
            seen &+= counts[i]
            if seen >= rank {
                let (low, width) = Self.bounds(of: i)
                let mid = low &+ (width - 1) / 2
                return Swift.min(Swift.max(mid, min), max)
            }
        }
        return max
    }
}
