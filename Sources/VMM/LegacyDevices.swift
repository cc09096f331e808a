import Foundation

/// Where the PC's legacy devices a Linux kernel touches live.
extension MachineLayout {
    /// i8042 keyboard controller: data port.
    public static let i8042DataPort: UInt16 = 0x60
    /// i8042: status (read) and command (write) port. Command 0xFE pulses the reset line.
    public static let i8042CommandPort: UInt16 = 0x64
    /// MC146818 RTC / CMOS: index port (bit 7 of the value is the NMI mask), data at +1.
    public static let cmosPort: UInt16 = 0x70
}

// MARK: i8042

/// The i8042 keyboard controller, as much of it as a kernel probing it or rebooting through it
/// needs: the controller commands (read/write the command byte, self tests, enable/disable the
/// ports, read/write the output port), a keyboard that acknowledges what it is sent (reset
/// answers 0xFA 0xAA), and the reset line: command 0xFE (any 0xF0-0xFF pulse with bit 0 clear)
/// or an output-port write with bit 0 clear sets `resetRequested`, which ends the run as a
/// RESET system event (ExitHandler). There is no keyboard input and no interrupt.
public final class I8042Controller {
    public private(set) var resetRequested = false
    public private(set) var commandByte: UInt8 = 0x45   // kbd interrupt, system flag, translation
    var output: [UInt8] = []
    /// The controller command whose data byte the next data-port write is (0x60, 0xD1-0xD4).
    var pendingCommand: UInt8?
    var lastWasCommand = false
    static let outputLimit = 16

    public init() {}

    func push(_ bytes: UInt8...) {
        for b in bytes where output.count < Self.outputLimit { output.append(b) }
    }

    /// Status register: OBF while output waits, SYS (self test passed), A2 (last write was a command).
    public var status: UInt8 { (output.isEmpty ? 0 : 0x01) | 0x04 | (lastWasCommand ? 0x08 : 0) }

    public func readData() -> UInt8 { output.isEmpty ? 0 : output.removeFirst() }

    public func writeData(_ v: UInt8) {
        lastWasCommand = false
        if let c = pendingCommand {
            pendingCommand = nil
            switch c {
            case 0x60: commandByte = v
            case 0xD1: if v & 0x01 == 0 { resetRequested = true }  // output port bit 0 is the reset line (active low)
            case 0xD2, 0xD3: push(v)                               // echo as if from keyboard/aux
            case 0xD4: push(0xFA)                                  // a byte for the aux device: acknowledged
            default: break
            }
            return
        }
        // A byte for the keyboard.
        switch v {
        case 0xFF: push(0xFA, 0xAA)           // reset: ACK, self test passed
        case 0xF2: push(0xFA, 0xAB, 0x83)     // identify: MF2 keyboard
        case 0xEE: push(0xEE)                 // echo
        default: push(0xFA)                   // ACK
        }
    }

    public func writeCommand(_ c: UInt8) {
        lastWasCommand = true
        switch c {
        case 0x20: push(commandByte)
        case 0x60, 0xD1, 0xD2, 0xD3, 0xD4: pendingCommand = c
        case 0xA7: commandByte |= 0x20        // disable aux
        case 0xA8: commandByte &= ~0x20
        case 0xA9, 0xAB: push(0x00)           // interface tests pass
        case 0xAA: push(0x55)                 // controller self test passed
        case 0xAD: commandByte |= 0x10        // disable keyboard
        case 0xAE: commandByte &= ~0x10
        case 0xD0: push(0x03)                 // output port: reset line high, A20 enabled
        case 0xF0...0xFF: if c & 0x01 == 0 { resetRequested = true }
        default: break
        }
    }
}

/// One of the i8042's two ports on the bus (they are not adjacent: 0x61 between them belongs
/// to the PIT's speaker gate).
public final class I8042Port: PortDevice {
    let controller: I8042Controller
    let isCommand: Bool
    public init(_ controller: I8042Controller, command: Bool) { self.controller = controller; self.isCommand = command }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        UInt32(isCommand ? controller.status : controller.readData())
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        if isCommand { controller.writeCommand(v) } else { controller.writeData(v) }
    }
}

// MARK: CMOS / RTC

/// The MC146818 RTC and its 128 bytes of CMOS RAM behind the index/data pair 0x70/0x71.
/// The time registers (seconds, minutes, hours, weekday, day, month, year, and the century at
/// 0x32) are read from the host clock (UTC) at each read, in BCD or binary and 24- or 12-hour
/// form as status register B says; writes to them are ignored (the guest cannot set the host's
/// clock). Status A never shows an update in progress (so a kernel waiting for UIP to clear
/// does not spin), C reads 0 (no interrupt flags) and D has VRT (valid RAM and time). Other
/// bytes are plain CMOS RAM. The index is masked to 7 bits, so no guest value leaves the array.
public final class CMOS: PortDevice {
    public private(set) var index: UInt8 = 0
    var ram = [UInt8](repeating: 0, count: 128)
    /// Seconds since the Unix epoch; the host clock unless a test gives another.
    let clock: () -> Double

    public static let statusA: UInt8 = 0x0A, statusB: UInt8 = 0x0B, statusC: UInt8 = 0x0C, statusD: UInt8 = 0x0D
    public static let century: UInt8 = 0x32

    public init(clock: @escaping () -> Double = { Date().timeIntervalSince1970 }, memoryMiB: Int = 0) {
        self.clock = clock
        ram[Int(Self.statusA)] = 0x26    // 32.768 kHz time base, 1024 Hz rate
        ram[Int(Self.statusB)] = 0x02    // 24-hour, BCD, no interrupts
        ram[Int(Self.statusD)] = 0x80    // VRT
        // Base memory 640 KiB and extended memory (KiB above 1 MiB, capped at 63 MiB), as a BIOS leaves them.
        ram[0x15] = 0x80; ram[0x16] = 0x02
        let ext = UInt16(clamping: max(0, min(memoryMiB - 1, 63)) * 1024)
        ram[0x17] = UInt8(truncatingIfNeeded: ext); ram[0x18] = UInt8(truncatingIfNeeded: ext >> 8)
        ram[0x30] = ram[0x17]; ram[0x31] = ram[0x18]
    }

    public func read(offset: UInt16, size: Int) -> UInt32 {
        guard offset == 1 else { return UInt32(index) }  // the index port reads back the index
        return UInt32(register(index))
    }

    public func write(offset: UInt16, size: Int, value: UInt32) {
        let v = UInt8(truncatingIfNeeded: value)
        if offset == 0 { index = v & 0x7F; return }
        switch index {
        case 0x00...0x09, Self.century, Self.statusC, Self.statusD: break   // clock and read-only status
        case Self.statusA: ram[Int(index)] = v & 0x7F                       // UIP is read-only
        default: ram[Int(index)] = v
        }
    }

    /// The byte at CMOS index `i` (0..<128) as the guest reads it.
    public func register(_ i: UInt8) -> UInt8 {
        let i = i & 0x7F
        let b = ram[Int(Self.statusB)]
        let binary = b & 0x04 != 0, hour24 = b & 0x02 != 0
        func enc(_ v: Int) -> UInt8 { binary ? UInt8(v) : UInt8((v / 10) << 4 | v % 10) }
        let t = time()
        switch i {
        case 0x00: return enc(t.second)
        case 0x02: return enc(t.minute)
        case 0x04:
            if hour24 { return enc(t.hour) }
            let h12 = t.hour % 12 == 0 ? 12 : t.hour % 12
            return enc(h12) | (t.hour >= 12 ? 0x80 : 0)
        case 0x06: return enc(t.weekday)
        case 0x07: return enc(t.day)
        case 0x08: return enc(t.month)
        case 0x09: return enc(t.year % 100)
        case Self.century: return enc(t.year / 100)
        case Self.statusC: return 0
        default: return ram[Int(i)]
        }
    }

    struct Time { var year, month, day, weekday, hour, minute, second: Int }

    /// The clock's UTC time, by the civil-from-days algorithm (no calendar object per read).
    func time() -> Time {
        let now = clock()
        let secs = now.isFinite ? Int64(max(0, min(now, 253_402_300_799))) : 0   // clamp to years 1970-9999
        let days = secs / 86400, rem = Int(secs % 86400)
        let z = days + 719_468
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = Int(doy - (153 * mp + 2) / 5 + 1)
        let month = Int(mp < 10 ? mp + 3 : mp - 9)
        let year = Int(yoe + era * 400) + (month <= 2 ? 1 : 0)
        let weekday = Int((days + 4) % 7) + 1   // 1970-01-01 was a Thursday; RTC Sunday = 1
        return Time(year: year, month: month, day: day, weekday: weekday, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60)
    }
}
