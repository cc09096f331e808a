import Foundation

/// One cell of a report table. Numbers stay numbers so that sorting, CSV and JSON see them
/// as such; `.none` is a value that does not exist (a mean of zero samples), never a zero.
public enum Cell: Equatable, Sendable {
    case text(String)
    case int(Int64)
    case uint(UInt64)
    case real(Double)
    case none

    /// For sorting: numbers compare by value, text after numbers, `.none` last.
    var number: Double? {
        switch self {
        case .int(let v): return Double(v)
        case .uint(let v): return Double(v)
        case .real(let v): return v
        case .text, .none: return nil
        }
    }

    /// The cell as CSV/terminal text: integers in decimal, reals with up to 3 decimals.
    public var plain: String {
        switch self {
        case .text(let s): return s
        case .int(let v): return String(v)
        case .uint(let v): return String(v)
        case .real(let v): return Cell.format(v)
        case .none: return ""
        }
    }

    static func format(_ v: Double) -> String {
        guard v.isFinite else { return "" }
        var s = String(format: "%.3f", v)
        while s.hasSuffix("0") { s.removeLast() }
        if s.hasSuffix(".") { s.removeLast() }
        return s == "-0" ? "0" : s
    }
}

public struct Column: Equatable, Sendable {
    public enum Align: Sendable { case left, right }
    /// snake_case; stable: CSV headers, JSON keys and `--key` use it.
    public var name: String
    public var align: Align
    public init(_ name: String, _ align: Align = .right) {
        self.name = name
        self.align = align
    }
}

/// A view of the aggregate: named columns and rows, plus an optional totals row shown on the
/// terminal (CSV files hold data rows only, so that a script can sum them itself).
public struct Table: Equatable, Sendable {
    public var name: String
    public var title: String
    public var columns: [Column]
    public var rows: [[Cell]]
    public var totals: [Cell]?
    /// Lines printed under the table on the terminal (e.g. "Total samples: 12").
    public var notes: [String]

    public init(name: String, title: String, columns: [Column], rows: [[Cell]] = [],
                totals: [Cell]? = nil, notes: [String] = []) {
        self.name = name
        self.title = title
        self.columns = columns
        self.rows = rows
        self.totals = totals
        self.notes = notes
    }

    public var columnNames: [String] { columns.map(\.name) }

    public func columnIndex(_ name: String) -> Int? { columns.firstIndex { $0.name == name } }

    /// Rows ordered by `column`: numbers descending (largest first, as perf does), text ascending.
    /// The sort is stable so that ties keep the aggregator's order.
    public func sorted(by column: String) throws(ReportError) -> Table {
        guard let i = columnIndex(column) else {
            throw .unknownColumn(column, view: name, valid: columnNames)
        }
        var t = self
        let indexed = rows.enumerated().map { ($0.offset, $0.element) }
        t.rows = indexed.sorted { a, b in
            let x = a.1[i], y = b.1[i]
            switch (x.number, y.number) {
            case let (p?, q?): return p != q ? p > q : a.0 < b.0
            case (_?, nil): return true
            case (nil, _?): return false
            case (nil, nil):
                if case .text(let s) = x, case .text(let u) = y, s != u { return s < u }
                if x == .none, y != .none { return false }
                if y == .none, x != .none { return true }
                return a.0 < b.0
            }
        }.map(\.1)
        return t
    }

    public func limited(to n: Int?) -> Table {
        guard let n, n >= 0, rows.count > n else { return self }
        var t = self
        t.rows = Array(rows.prefix(n))
        t.notes.append("(\(rows.count - n) more rows not shown; --top to change)")
        return t
    }

    // MARK: output

    /// An aligned table in the manner of `perf kvm stat report`.
    public func renderText() -> String {
        let header = columns.map(\.name)
        let body = rows.map { $0.map(\.plain) }
        let foot = totals.map { $0.map(\.plain) }
        var widths = header.map(\.count)
        for r in body + (foot.map { [$0] } ?? []) {
            for (i, s) in r.enumerated() where i < widths.count { widths[i] = Swift.max(widths[i], s.count) }
        }
        func line(_ cells: [String]) -> String {
            var out = ""
            for (i, s) in cells.enumerated() where i < columns.count {
                let pad = String(repeating: " ", count: widths[i] - s.count)
                if i > 0 { out += "  " }
                out += columns[i].align == .left ? s + pad : pad + s
            }
            while out.hasSuffix(" ") { out.removeLast() }
            return out
        }
        var s = "\n\(title)\n\n"
        s += line(header) + "\n"
        s += line(widths.map { String(repeating: "-", count: $0) }) + "\n"
        for r in body { s += line(r) + "\n" }
        if body.isEmpty { s += "(no rows)\n" }
        if let f = foot {
            s += line(widths.map { String(repeating: "-", count: $0) }) + "\n"
            s += line(f) + "\n"
        }
        for n in notes { s += "\n" + n }
        if !notes.isEmpty { s += "\n" }
        return s
    }

    /// RFC 4180 CSV: a header row, then one line per row; times are integers in ns.
    public func renderCSV() -> String {
        var s = columns.map { Self.csvField($0.name) }.joined(separator: ",") + "\n"
        for r in rows { s += r.map { Self.csvField($0.plain) }.joined(separator: ",") + "\n" }
        return s
    }

    static func csvField(_ f: String) -> String {
        if f.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
            return "\"" + f.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        }
        return f
    }

    /// The table as a JSON-compatible value: {"name", "title", "columns", "rows": [{col: value}], "totals"}.
    public func jsonObject() -> [String: Any] {
        func obj(_ r: [Cell]) -> [String: Any] {
            var o: [String: Any] = [:]
            for (c, v) in zip(columns, r) { o[c.name] = Self.jsonValue(v) }
            return o
        }
        var o: [String: Any] = ["name": name, "title": title, "columns": columnNames, "rows": rows.map(obj)]
        if let t = totals { o["totals"] = obj(t) }
        return o
    }

    static func jsonValue(_ c: Cell) -> Any {
        switch c {
        case .text(let s): return s
        case .int(let v): return v
        case .uint(let v): return v
        case .real(let v): return v.isFinite ? v : NSNull()
        case .none: return NSNull()
        }
    }
}

/// JSON text for a value built from `jsonObject()`s, keys sorted so output is stable.
public func renderJSON(_ value: Any) -> String {
    guard JSONSerialization.isValidJSONObject(value),
          let d = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .prettyPrinted]),
          let s = String(data: d, encoding: .utf8) else { return "{}" }
    return s
}
