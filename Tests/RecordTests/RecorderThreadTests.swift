import Foundation
import KVM
import Record
import VMM
import XCTest

/// Recording's own threads (the encoder and the compressor) run at RecorderOptions.backgroundNice,
/// so they do not take a vCPU's CPU; the threads that create and run the machine keep their priority.
final class RecorderThreadTests: XCTestCase {
    /// Nice values of this process's threads, from /proc/self/task/*/stat (field 19).
    func threadNices() -> [Int] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.compactMap { tid in
            guard let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 16 ? Int(fields[16]) : nil
        }
    }

    func testEncoderAndCompressorRunAtTheBackgroundNiceValue() throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("/dev/kvm is not present: recording tests need KVM")
        }
        XCTAssertEqual(getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0), 0, "the test starts at nice 0")
        let before = threadNices().filter { $0 == 7 }.count
        // mov dx,0x501; out dx,al: one exit, status 0.
        let machine = try Machine(config: MachineConfig(memoryMiB: 1), image: .flat([0xBA, 0x01, 0x05, 0xEE], at: 0x1000),
                                  serial: SerialOutput(fd: -1))
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("nice-\(UUID()).estrace").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let recorder = try Recorder(path: out, machine: machine, imagePath: "flat", imageBytes: [], symbols: [],
                                    commandLine: ["test"], options: RecorderOptions(backgroundNice: 7))
        // The threads set their nice value as they start.
        let deadline = Date().addingTimeInterval(10)
        while threadNices().filter({ $0 == 7 }).count < before + 2 && Date() < deadline { usleep(1000) }
        XCTAssertEqual(threadNices().filter { $0 == 7 }.count, before + 2, "the encoder and the compressor")
        XCTAssertEqual(getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0), 0, "the calling thread keeps its priority")
        let summary = machine.run(limits: RunLimits(timeout: 20), observer: recorder)
        XCTAssertEqual(summary.stop, .exitPort(value: 0))
        XCTAssertEqual(try recorder.finish().exits, 1)
    }
}
