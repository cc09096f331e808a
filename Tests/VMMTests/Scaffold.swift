import XCTest
final class VMMTestsScaffold: XCTestCase {}
