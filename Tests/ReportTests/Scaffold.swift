import XCTest
final class ReportTestsScaffold: XCTestCase {}
