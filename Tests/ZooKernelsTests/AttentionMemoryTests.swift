import XCTest
import ZooKernels
import ZooTensor

/// Memory and thread-count tests of the attention kernels. XCTest, not Swift Testing: XCTest runs
/// serially before the parallel Swift Testing tests, so MemoryMeter's peak and the global thread
/// count see this test alone.
final class AttentionMemoryTests: XCTestCase {
    struct Buffers {
        let shape: AttentionShape
        let q, k, v, dO: Tensor
        var o, lse, dq, dk, dv: Tensor
        init(_ shape: AttentionShape, seed: UInt64) {
            self.shape = shape
            var g = SeededGenerator(seed: seed)
            let qShape = [shape.batch, shape.queryLength, shape.queryHeads, shape.headDim]
            let kShape = [shape.batch, shape.keyLength, shape.keyValueHeads, shape.headDim]
            let vShape = [shape.batch, shape.keyLength, shape.keyValueHeads, shape.valueDim]
            let oShape = [shape.batch, shape.queryLength, shape.queryHeads, shape.valueDim]
            q = Tensor.normal(qShape, generator: &g); k = Tensor.normal(kShape, generator: &g)
            v = Tensor.normal(vShape, generator: &g); dO = Tensor.normal(oShape, generator: &g)
            o = Tensor.zeros(oShape); lse = Tensor.zeros([shape.batch, shape.queryHeads, shape.queryLength])
            dq = Tensor.zeros(qShape); dk = Tensor.zeros(kShape); dv = Tensor.zeros(vShape)
        }
        /// Bytes of q, k, v, o and dO: the O(T·d) yardstick.
        var inputBytes: Int { q.byteCount + k.byteCount + v.byteCount + o.byteCount + dO.byteCount }

        mutating func flashForwardBackward() {
            let (po, pl) = (o.mutablePointer(), lse.mutablePointer())
            let (pdq, pdk, pdv) = (dq.mutablePointer(), dk.mutablePointer(), dv.mutablePointer())
            flashAttentionForward(q: q.pointer, k: k.pointer, v: v.pointer, shape: shape, output: po, logSumExp: pl)
            flashAttentionBackward(q: q.pointer, k: k.pointer, v: v.pointer, output: po, logSumExp: pl, outputGradient: dO.pointer,
                                   shape: shape, queryGradient: pdq, keyGradient: pdk, valueGradient: pdv)
        }
        mutating func naiveForwardBackward() {
            let (po, pl) = (o.mutablePointer(), lse.mutablePointer())
            let (pdq, pdk, pdv) = (dq.mutablePointer(), dk.mutablePointer(), dv.mutablePointer())
            naiveAttentionForward(q: q.pointer, k: k.pointer, v: v.pointer, shape: shape, output: po, logSumExp: pl)
            naiveAttentionBackward(q: q.pointer, k: k.pointer, v: v.pointer, outputGradient: dO.pointer, shape: shape,
                                   queryGradient: pdq, keyGradient: pdk, valueGradient: pdv)
        }
    }

    func testFlashForwardBackwardMemoryIsLinearInLength() {
        // T = 8192: a single T×T Float matrix per head would be 256 MiB.
        var peaks: [Int: Int] = [:]
        for T in [4096, 8192] {
            var x = Buffers(AttentionShape(batch: 1, queryLength: T, keyLength: T, queryHeads: 2, keyValueHeads: 2, headDim: 64), seed: 1)
            let peak = MemoryMeter.measurePeak { x.flashForwardBackward() }.peakExtraBytes
            peaks[T] = peak
            let squareBytes = T * T * MemoryLayout<Float>.stride
            print("flash fwd+bwd T=\(T): peak extra \(peak / 1024) KiB = \(String(format: "%.2f", Double(peak) / Double(x.inputBytes)))× the inputs (q, k, v, o, dO); one T×T Float matrix: \(squareBytes / 1024) KiB")
            XCTAssertLessThan(peak, 4 * x.inputBytes, "T=\(T): flash fwd+bwd should need O(T·d) extra memory")
            if T == 8192 {
                XCTAssertLessThan(peak, squareBytes / 4, "T=\(T): flash fwd+bwd allocates something close to a T×T matrix")
            }
        }
        // Doubling T must roughly double the peak (linear), not quadruple it.
        let ratio = Double(peaks[8192]!) / Double(peaks[4096]!)
        XCTAssertLessThan(ratio, 2.5, "peak grew \(ratio)× when T doubled")
    }

    func testNaiveMaterialisesTheScoreMatrix() {
        // The naive kernel holds a Tq×Tk Double matrix per worker: quadratic in T.
        let T = 2048
        var x = Buffers(AttentionShape(batch: 1, queryLength: T, keyLength: T, queryHeads: 1, keyValueHeads: 1, headDim: 16), seed: 2)
        let naivePeak = MemoryMeter.measurePeak { x.naiveForwardBackward() }.peakExtraBytes
        let flashPeak = MemoryMeter.measurePeak { x.flashForwardBackward() }.peakExtraBytes
        print("T=\(T): naive fwd+bwd peak extra \(naivePeak / 1024) KiB, flash \(flashPeak / 1024) KiB")
        XCTAssertGreaterThanOrEqual(naivePeak, T * T * MemoryLayout<Double>.stride)
        XCTAssertLessThan(flashPeak * 10, naivePeak)
    }

    func testResultsDoNotDependOnThreadCount() {
        let original = ZooThreads.count
        defer { ZooThreads.configure(threads: original) }
        for shape in [AttentionShape(batch: 1, queryLength: 700, keyLength: 700, queryHeads: 4, keyValueHeads: 2, headDim: 64),
                      AttentionShape(batch: 1, queryLength: 1, keyLength: 3000, queryHeads: 2, keyValueHeads: 1, headDim: 32)] {
            var results: [[Float]] = []
            for threads in [1, 2, 3] {
                ZooThreads.configure(threads: threads)
                var x = Buffers(shape, seed: 3)
                x.flashForwardBackward()
                results.append(x.o.scalars + x.lse.scalars + x.dq.scalars + x.dk.scalars + x.dv.scalars)
            }
            XCTAssertEqual(results[0], results[1], "\(shape): 1 vs 2 threads")
            XCTAssertEqual(results[0], results[2], "\(shape): 1 vs 3 threads")
        }
    }
}
