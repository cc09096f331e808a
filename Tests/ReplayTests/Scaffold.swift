import XCTest
final class ReplayTestsScaffold: XCTestCase {}
