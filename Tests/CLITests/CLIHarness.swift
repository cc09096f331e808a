import Foundation
import XCTest

/// Runs the built `exitscope` binary as a user would, capturing output and status.
enum CLI {
    static var binary: URL {
        var u = Bundle(for: RunCommandTests.self).bundleURL
        while u.pathExtension == "xctest" || u.lastPathComponent == "Contents" { u.deleteLastPathComponent() }
        return u.appendingPathComponent("exitscope")
    }

    static func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        // stderr goes to a file, so neither pipe can fill up while the other is read.
        let errPath = FileManager.default.temporaryDirectory.appendingPathComponent("cli-err-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: errPath.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errPath) }
        let errFile = try FileHandle(forWritingTo: errPath)
        let o = Pipe()
        p.standardOutput = o
        p.standardError = errFile
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        try errFile.close()
        let err = (try? Data(contentsOf: errPath)) ?? Data()
        return (p.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }

    /// Skips unless the binary is built and /dev/kvm can be opened.
    static func requireKVM() throws {
        guard FileManager.default.fileExists(atPath: binary.path) else {
            throw XCTSkip("exitscope binary not built at \(binary.path)")
        }
        guard FileManager.default.isReadableFile(atPath: "/dev/kvm"), open("/dev/kvm", O_RDWR) >= 0 else {
            throw XCTSkip("/dev/kvm is not available on this host")
        }
    }

    static func makeTemporaryDirectory(_ prefix: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}
