import Foundation

/// Writing a report's views to files: one CSV per view (Sources/Report/CSV.md documents each
/// column), or one JSON document.
public enum Export {
    /// Writes `<view>.csv` for each view into `directory` (created if needed); returns the paths.
    @discardableResult
    public static func writeCSV(_ report: Report, views: [View] = View.allCases, key: String? = nil, top: Int? = nil,
                                to directory: String) throws -> [String] {
        let fm = FileManager.default
        try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var paths: [String] = []
        for v in views {
            // A key only sorts the views that have that column; the others keep their order.
            let t = try report.table(v, key: key.flatMap { Report.accepts(key: $0, view: v) ? $0 : nil }, top: top)
            let path = (directory as NSString).appendingPathComponent(v.rawValue + ".csv")
            guard fm.createFile(atPath: path, contents: Data(t.renderCSV().utf8)) else {
                throw ReportError.badArgument("cannot write \(path)")
            }
            paths.append(path)
        }
        return paths
    }

    /// {"header": {...}, "views": {name: table}} for the given views.
    public static func json(_ report: Report, views: [View], key: String? = nil, top: Int? = nil) throws(ReportError) -> String {
        var out: [String: Any] = [:]
        for v in views {
            let k = key.flatMap { Report.accepts(key: $0, view: v) ? $0 : nil }
            out[v.rawValue] = try report.table(v, key: k, top: top).jsonObject()
        }
        let h = report.aggregate.header
        let header: [String: Any] = [
            "format_version": Int(h.formatVersion), "tsc_hz": h.tscHz, "host_cpu": h.hostCPU, "kernel": h.kernel,
            "kvm_backend": h.kvmBackend, "vcpus": Int(h.vcpuCount), "image": h.imagePath,
            "image_sha256": h.imageSHA256, "command_line": h.commandLine, "start_time": h.startTime,
        ]
        return renderJSON(["header": header, "views": out])
    }
}
