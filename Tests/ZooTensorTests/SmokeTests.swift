import Testing
import ZooTensor
import ZooTestSupport

@Test func matmulMatchesManualProduct() {
    let a = Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
    let b = Tensor(shape: [3, 2], scalars: [7, 8, 9, 10, 11, 12])
    expectClose(Tensor.matmul(a, b).scalars, [58, 64, 139, 154] as [Double])
}
