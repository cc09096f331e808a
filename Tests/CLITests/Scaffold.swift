import XCTest
final class CLITestsScaffold: XCTestCase {}
