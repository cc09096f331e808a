import XCTest
final class TraceTestsScaffold: XCTestCase {}
