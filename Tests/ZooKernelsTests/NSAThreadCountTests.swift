import XCTest
import ZooKernels
import ZooTensor
import ZooTestSupport

/// Results must not depend on the thread count. XCTest (serial, before Swift Testing) because the
/// thread count is process-wide.
final class NSAThreadCountTests: XCTestCase {
    func testResultsIndependentOfThreadCount() {
        let saved = ZooThreads.count
        defer { ZooThreads.configure(threads: saved) }
        let s = NSAShape(B: 2, Tq: 300, Tk: 300, Hq: 4, Hk: 2, dk: 16, dv: 8)
        let x = makeNSAInputs(s, smallNSA, seed: 101)
        let dOut = randomTensor([s.B, s.Tq, s.Hq, s.dv], seed: 102)
        func run(_ threads: Int) -> [[Float]] {
            ZooThreads.configure(threads: threads)
            let f = nsaForward(x, options: smallNSA)
            let g = nsaBackward(x, forward: f, outputGradient: dOut, options: smallNSA)
            return [f.output.scalars, f.selection.indices.map(Float.init), g.q.scalars, g.kCmp.scalars, g.vCmp.scalars,
                    g.kSel.scalars, g.vSel.scalars, g.kWin.scalars, g.vWin.scalars, g.gates.scalars]
        }
        let one = run(1)
        for threads in [2, 3] {
            let other = run(threads)
            for (i, (a, b)) in zip(one, other).enumerated() {
                XCTAssertEqual(a, b, "result \(i) differs between 1 and \(threads) threads")
            }
        }
    }
}
