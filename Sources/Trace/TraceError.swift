/// What can go wrong with a trace file. Every reading error carries the byte offset in the
/// file where the problem was found, so a user (or a bug report) can point at it.
public enum TraceError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The file could not be opened, read or written.
    case io(path: String, message: String)
    /// The file does not start with the trace magic: not a trace at all.
    case foreign(path: String, offset: UInt64, found: String)
    /// The file ends before a structure it announces is complete.
    case truncated(offset: UInt64, what: String)
    /// A checksum does not match or a field holds an impossible value.
    case corrupted(offset: UInt64, what: String)
    /// The file was written by a newer major version of the format.
    case newerMajorVersion(found: UInt16, supported: UInt16)
    /// A request outside the trace (a sequence number, a frame, a vCPU).
    case notFound(String)
    /// Misuse of the writer (append after finish, vCPU out of range).
    case writer(String)

    public var description: String {
        switch self {
        case let .io(path, message):
            return "\(path): \(message)"
        case let .foreign(path, offset, found):
            return "\(path): not an ExitScope trace (bad magic \(found) at byte offset \(offset))"
        case let .truncated(offset, what):
            return "trace truncated at byte offset \(offset): \(what)"
        case let .corrupted(offset, what):
            return "trace corrupted at byte offset \(offset): \(what)"
        case let .newerMajorVersion(found, supported):
            return "trace format version \(found).x is newer than this reader (\(supported).x); use a newer exitscope"
        case let .notFound(what):
            return what
        case let .writer(what):
            return "trace writer: \(what)"
        }
    }

    /// The byte offset of the problem, when there is one.
    public var offset: UInt64? {
        switch self {
        case let .foreign(_, o, _), let .truncated(o, _), let .corrupted(o, _): return o
        default: return nil
        }
    }
}
