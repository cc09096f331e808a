/// What a report can refuse, each with a message that says what would be accepted.
public enum ReportError: Error, Equatable, CustomStringConvertible {
    case unknownView(String, valid: [String])
    case unknownColumn(String, view: String, valid: [String])
    case unknownEvent(String, valid: [String])
    case unknownRun(String, valid: [String])
    case badArgument(String)
    case database(String)

    public var description: String {
        switch self {
        case let .unknownView(v, valid):
            return "unknown view '\(v)'; valid views: \(valid.joined(separator: ", "))"
        case let .unknownColumn(c, view, valid):
            return "unknown key '\(c)' for view '\(view)'; valid keys: \(valid.joined(separator: ", "))"
        case let .unknownEvent(e, valid):
            return "unknown event '\(e)'; valid events: \(valid.joined(separator: ", "))"
        case let .unknownRun(r, valid):
            return "no run '\(r)' in the database; runs: \(valid.isEmpty ? "(none)" : valid.joined(separator: ", "))"
        case let .badArgument(s): return s
        case let .database(s): return "database: \(s)"
        }
    }
}
