import Trace
import XCTest

final class SymbolMapTests: XCTestCase {
    func testTextSymbolsAreSizedToTheNextHigherAddress() throws {
        let text = """
        ffffffff81000000 T _stext
        ffffffff81000000 T startup_64
        ffffffff81000100 t helper
        ffffffff81200000 D data_object
        ffffffff81000300 W weak_one
        0000000000000000 T hidden_by_kptr_restrict
        ffffffffc0000000 t mod_func\t[some_module]

        """
        let syms = try SymbolMap.parse(text)
        XCTAssertEqual(syms.map(\.name), ["_stext", "startup_64", "helper", "weak_one", "mod_func"])
        XCTAssertEqual(syms[0].size, 0x100)
        XCTAssertEqual(syms[1].size, 0x100)
        XCTAssertEqual(syms[2].size, 0x200)
        XCTAssertEqual(syms[4].size, 0)
        let table = SymbolTable(syms)
        XCTAssertEqual(table.describe(0xffff_ffff_8100_0150), "helper+0x50")
        XCTAssertEqual(table.describe(0xffff_ffff_c000_0010), "mod_func+0x10")
        XCTAssertNil(table.describe(0xffff_ffff_8000_0000))
    }

    func testAWrongFileIsRefusedWithItsLine() {
        XCTAssertThrowsError(try SymbolMap.parse("ffffffff81000000 T ok\nnot a map line at all\n")) { e in
            XCTAssertEqual((e as? SymbolMap.ParseError)?.line, 2)
        }
        XCTAssertThrowsError(try SymbolMap.parse("zzzz T name\n"))
        XCTAssertEqual(try SymbolMap.parse("").count, 0)
    }
}
