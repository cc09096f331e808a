import XCTest
final class X86TestsScaffold: XCTestCase {}
