import Foundation
import Testing
import ZooKernels
import ZooTensor
import ZooTestSupport

/// Small NSA sizes that make every branch non-trivial on short sequences: overlapping compression
/// blocks (d < l), l′ ≠ l, real top-n choices (n < visible blocks), a window shorter than T.
let smallNSA = NSAOptions(compressBlock: 4, compressStride: 2, selectBlock: 8, selectCount: 4, window: 12)

struct NSAShape: CustomStringConvertible, Sendable {
    var B = 1, Tq = 40, Tk = 40, Hq = 2, Hk = 1, dk = 8, dv = 8
    var description: String { "B\(B) Tq\(Tq) Tk\(Tk) Hq\(Hq) Hkv\(Hk) dk\(dk) dv\(dv)" }
}

/// Random inputs; compressed K/V are mean-pooled from their own raw keys when `pooled`.
func makeNSAInputs(_ s: NSAShape, _ o: NSAOptions, seed: UInt64, pooled: Bool = true) -> NSAInputs {
    let Nc = o.compressedCount(keys: s.Tk)
    func r(_ shape: [Int], _ salt: UInt64) -> Tensor { randomTensor(shape, seed: seed &* 7919 &+ salt) }
    let kc: Tensor, vc: Tensor
    if pooled {
        kc = nsaCompressMean(r([s.B, s.Tk, s.Hk, s.dk], 1), options: o)
        vc = nsaCompressMean(r([s.B, s.Tk, s.Hk, s.dv], 2), options: o)
    } else {
        kc = r([s.B, Nc, s.Hk, s.dk], 1); vc = r([s.B, Nc, s.Hk, s.dv], 2)
    }
    return NSAInputs(q: r([s.B, s.Tq, s.Hq, s.dk], 3), kCmp: kc, vCmp: vc,
                     kSel: r([s.B, s.Tk, s.Hk, s.dk], 4), vSel: r([s.B, s.Tk, s.Hk, s.dv], 5),
                     kWin: r([s.B, s.Tk, s.Hk, s.dk], 6), vWin: r([s.B, s.Tk, s.Hk, s.dv], 7),
                     gates: r([s.B, s.Tq, s.Hq, 3], 8))
}

let nsaShapes: [NSAShape] = [
    NSAShape(),                                                    // one head pair, T = 40
    NSAShape(B: 2, Tq: 37, Tk: 37, Hq: 4, Hk: 2, dk: 8, dv: 6),    // B > 1, GQA, dv ≠ dk, odd T
    NSAShape(B: 1, Tq: 1, Tk: 1, Hq: 2, Hk: 2, dk: 4, dv: 4),      // T = 1
    NSAShape(B: 1, Tq: 13, Tk: 50, Hq: 3, Hk: 1, dk: 5, dv: 7),    // queries are the last 13 positions
    NSAShape(B: 1, Tq: 300, Tk: 300, Hq: 4, Hk: 1, dk: 16, dv: 16), // several chunks and tiles
]

@Suite struct NSAKernelTests {
    @Test(arguments: nsaShapes)
    func fastForwardMatchesNaive(_ s: NSAShape) {
        let x = makeNSAInputs(s, smallNSA, seed: 11)
        let ref = nsaNaiveForward(NSADoubleInputs(x), options: smallNSA)
        let fast = nsaForward(x, options: smallNSA, selection: ref.selection)
        expectClose(fast.output.doubles, ref.output, "output \(s)")
        let branch = fast.branchOutputs.doubles, n = ref.output.count
        for c in 0..<3 { expectClose(Array(branch[c * n ..< (c + 1) * n]), ref.branchOutputs[c], "branch \(c) \(s)") }
    }

    @Test(arguments: nsaShapes)
    func fastBackwardMatchesNaive(_ s: NSAShape) {
        let x = makeNSAInputs(s, smallNSA, seed: 12)
        let dx = NSADoubleInputs(x)
        let ref = nsaNaiveForward(dx, options: smallNSA)
        let dOut = randomTensor([s.B, s.Tq, s.Hq, s.dv], seed: 99)
        let g = nsaNaiveBackward(dx, options: smallNSA, selection: ref.selection, outputGradient: dOut.doubles)
        let fwd = nsaForward(x, options: smallNSA, selection: ref.selection)
        let fg = nsaBackward(x, forward: fwd, outputGradient: dOut, options: smallNSA)
        expectClose(fg.q.doubles, g.q, "dq \(s)")
        expectClose(fg.kCmp.doubles, g.kCmp, "dkCmp \(s)")
        expectClose(fg.vCmp.doubles, g.vCmp, "dvCmp \(s)")
        expectClose(fg.kSel.doubles, g.kSel, "dkSel \(s)")
        expectClose(fg.vSel.doubles, g.vSel, "dvSel \(s)")
        expectClose(fg.kWin.doubles, g.kWin, "dkWin \(s)")
        expectClose(fg.vWin.doubles, g.vWin, "dvWin \(s)")
        expectClose(fg.gates.doubles, g.gates, "dgates \(s)")
    }
}
