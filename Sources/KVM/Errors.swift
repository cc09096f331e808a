import Glibc

/// An errno value with its symbolic name, so messages say "EINTR", not "4".
public struct Errno: RawRepresentable, Equatable, Hashable, Sendable, CustomStringConvertible, Error {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public init(_ v: Int32) { rawValue = v }

    public static let EPERM = Errno(1), ENOENT = Errno(2), EINTR = Errno(4), EIO = Errno(5)
    public static let ENXIO = Errno(6), E2BIG = Errno(7), ENOEXEC = Errno(8), EBADF = Errno(9)
    public static let EAGAIN = Errno(11), ENOMEM = Errno(12), EACCES = Errno(13), EFAULT = Errno(14)
    public static let EBUSY = Errno(16), EEXIST = Errno(17), ENODEV = Errno(19), EINVAL = Errno(22)
    public static let ENFILE = Errno(23), EMFILE = Errno(24), ENOTTY = Errno(25), ENOSPC = Errno(28)
    public static let ERANGE = Errno(34), ENOSYS = Errno(38), EOPNOTSUPP = Errno(95)
    public static let ENOTSUP = EOPNOTSUPP, EHWPOISON = Errno(133)

    static let names: [Int32: String] = [
        1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG",
        8: "ENOEXEC", 9: "EBADF", 10: "ECHILD", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES",
        14: "EFAULT", 16: "EBUSY", 17: "EEXIST", 19: "ENODEV", 20: "ENOTDIR", 21: "EISDIR",
        22: "EINVAL", 23: "ENFILE", 24: "EMFILE", 25: "ENOTTY", 27: "EFBIG", 28: "ENOSPC",
        34: "ERANGE", 38: "ENOSYS", 75: "EOVERFLOW", 95: "EOPNOTSUPP", 133: "EHWPOISON",
    ]

    /// The symbolic name ("EINTR"), or "errno N" for one without a name here.
    public var name: String { Errno.names[rawValue] ?? "errno \(rawValue)" }
    /// The C library's text for it ("Interrupted system call").
    public var message: String { String(cString: strerror(rawValue)) }
    public var description: String { "\(name) (\(message))" }

    /// The calling thread's current errno.
    public static var current: Errno { Errno(errno) }
}

/// What went wrong talking to KVM. Each case names the call and the errno, and prints as
/// one line a user can act on.
public enum KVMError: Error, Equatable, CustomStringConvertible, Sendable {
    /// open(2) of a device (usually /dev/kvm) failed.
    case open(path: String, errno: Errno)
    /// An ioctl failed; `name` is the request as the KVM API documentation spells it.
    case ioctl(name: String, errno: Errno)
    /// mmap(2) of the kvm_run page or guest memory failed.
    case mmap(what: String, errno: Errno)
    /// A capability the caller needs is missing on this host.
    case missingCapability(name: String)
    /// The caller passed something KVM would reject (described).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case let .open(path, e):
            var s = "cannot open \(path): \(e)"
            if e == .ENOENT { s += "; is the kvm module loaded?" }
            if e == .EACCES || e == .EPERM { s += "; add your user to the kvm group" }
            return s
        case let .ioctl(name, e): return "\(name) failed: \(e)"
        case let .mmap(what, e): return "mmap of \(what) failed: \(e)"
        case let .missingCapability(name): return "this host's KVM lacks \(name)"
        case let .invalidArgument(s): return s
        }
    }

    /// The errno carried, if any.
    public var errno: Errno? {
        switch self {
        case let .open(_, e), let .ioctl(_, e), let .mmap(_, e): return e
        case .missingCapability, .invalidArgument: return nil
        }
    }
}
