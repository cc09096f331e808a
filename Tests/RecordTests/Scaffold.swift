import XCTest
final class RecordTestsScaffold: XCTestCase {}
