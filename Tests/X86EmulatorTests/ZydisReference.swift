import Foundation
import X86Emulator

/// Zydis (Debian's libzydis, 4.x) as a second reference decoder, loaded with dlopen so that
/// neither the package nor the build depends on it: tests skip when it is absent.
final class ZydisReference {
    typealias InitFn = @convention(c) (UnsafeMutableRawPointer, UInt32, UInt32) -> UInt32
    typealias EnableModeFn = @convention(c) (UnsafeMutableRawPointer, UInt32, UInt8) -> UInt32
    typealias DecodeFullFn = @convention(c) (UnsafeRawPointer, UnsafeRawPointer, Int, UnsafeMutableRawPointer,
                                             UnsafeMutableRawPointer) -> UInt32
    typealias MnemonicStringFn = @convention(c) (UInt32) -> UnsafePointer<CChar>?

    private let decoder = UnsafeMutableRawPointer.allocate(byteCount: 256, alignment: 16)
    private let instruction = UnsafeMutableRawPointer.allocate(byteCount: 2048, alignment: 16)
    private let operands = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 16)
    private let decodeFull: DecodeFullFn
    private let mnemonicString: MnemonicStringFn

    /// nil when libZydis is not installed.
    init?(mode: DecoderMode, vendor: CPUVendor) {
        guard let h = dlopen("libZydis.so.4.0", RTLD_NOW) ?? dlopen("libZydis.so", RTLD_NOW),
              let i = dlsym(h, "ZydisDecoderInit"), let e = dlsym(h, "ZydisDecoderEnableMode"),
              let d = dlsym(h, "ZydisDecoderDecodeFull"), let m = dlsym(h, "ZydisMnemonicGetString") else { return nil }
        decodeFull = unsafeBitCast(d, to: DecodeFullFn.self)
        mnemonicString = unsafeBitCast(m, to: MnemonicStringFn.self)
        // ZydisMachineMode: LONG_64 = 0, LEGACY_32 = 3, LEGACY_16 = 4; ZydisStackWidth: 16 = 0, 32 = 1, 64 = 2
        let (machine, stack): (UInt32, UInt32) = mode == .bits64 ? (0, 2) : (mode == .bits32 ? (3, 1) : (4, 0))
        guard unsafeBitCast(i, to: InitFn.self)(decoder, machine, stack) & 0x8000_0000 == 0 else { return nil }
        // ZYDIS_DECODER_MODE_AMD_BRANCHES = 1
        _ = unsafeBitCast(e, to: EnableModeFn.self)(decoder, 1, vendor == .amd ? 1 : 0)
    }

    deinit {
        decoder.deallocate(); instruction.deallocate(); operands.deallocate()
    }

    /// Length and mnemonic of the instruction at `p`, or nil when Zydis rejects it.
    func decode(_ p: UnsafeRawPointer, _ n: Int) -> (length: Int, mnemonic: String)? {
        guard decodeFull(decoder, p, n, instruction, operands) & 0x8000_0000 == 0 else { return nil }
        // ZydisDecodedInstruction: machine_mode (u32), mnemonic (u32), length (u8) ...
        let mnemonic = instruction.load(fromByteOffset: 4, as: UInt32.self)
        let length = Int(instruction.load(fromByteOffset: 8, as: UInt8.self))
        return (length, mnemonicString(mnemonic).map { String(cString: $0) } ?? "?")
    }
}
