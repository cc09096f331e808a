import KVM

/// Errors of the VMM itself (bad configuration or image, KVM refusing a setup call). Guest
/// behaviour — a triple fault, a wild access, an emulation failure — is never one of these:
/// it ends the run with a `RunSummary` saying what happened.
public enum VMMError: Error, Equatable, CustomStringConvertible, Sendable {
    case kvm(KVMError)
    case config(String)
    case image(path: String, problem: String)

    public var description: String {
        switch self {
        case let .kvm(e): return e.description
        case let .config(s): return s
        case let .image(path, problem): return "\(path): \(problem)"
        }
    }
}
