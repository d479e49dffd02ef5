import XCTest
import ZooKernels
import ZooTensor

// XCTest (serial) because MemoryMeter counts process-wide: a parallel test would add its bytes.

final class SSDMemoryTests: XCTestCase {
    /// Forward + backward hold memory linear in T (no T×T matrix, no per-token state): the peak
    /// extra bytes double at most when T doubles and stay within a few times the size of x.
    func testForwardBackwardMemoryIsLinearInLength() {
        var peaks: [Int] = []
        var xBytes: [Int] = []
        for T in [512, 1024, 2048] {
            let s = SSDShape(batch: 1, length: T, heads: 2, headDim: 16, groups: 1, stateSize: 16)
            var g = SeededGenerator(seed: 1)
            let inputs = SSDInputs(x: Tensor.normal(s.xShape, generator: &g), dt: Tensor.normal(s.dtShape, generator: &g),
                                   A: Tensor.full([2], -1), B: Tensor.normal(s.bcShape, generator: &g),
                                   C: Tensor.normal(s.bcShape, generator: &g), D: .ones([2]), dtBias: .zeros([2]))
            let dY = Tensor.normal(s.xShape, generator: &g)
            let options = SSDOptions(chunkSize: 16)
            let peak = MemoryMeter.measurePeak {
                let f = ssdChunkedForward(inputs, options: options, saveChunkStates: true)
                _ = ssdChunkedBackward(inputs, outputGradient: dY, chunkStates: f.chunkStates, options: options)
            }.peakExtraBytes
            peaks.append(peak)
            xBytes.append(inputs.x.byteCount)
        }
        for k in 1..<peaks.count {
            XCTAssertLessThan(Double(peaks[k]), 2.2 * Double(peaks[k - 1]), "peak grows faster than T: \(peaks)")
        }
        // y, dx, the chunk states and their gradients (each the size of x when N = Q), dB, dC, …
        XCTAssertLessThan(peaks[2], 10 * xBytes[2] + 4_000_000, "peaks \(peaks) against x of \(xBytes) bytes")
    }
}
