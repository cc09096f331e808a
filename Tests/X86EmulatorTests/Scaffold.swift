import XCTest
final class X86EmulatorTestsScaffold: XCTestCase {}
