import XCTest
final class KVMTestsScaffold: XCTestCase {}
