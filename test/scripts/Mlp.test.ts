import { assert, describe, it } from "@effect/vitest"
import * as ort from "onnxruntime-node"
import * as Mlp from "../../scripts/Mlp.ts"
import { maxAbsDiff, mlpBytes, sampleInput } from "../fixtures/ModelRepositoryFixture.ts"

describe("Mlp", () => {
  it("regenerates models/mlp/model.onnx byte for byte", () => {
    const { bytes } = Mlp.build()
    const committed = mlpBytes()
    assert.strictEqual(bytes.length, committed.length)
    assert.isTrue(Buffer.from(bytes).equals(Buffer.from(committed)), "Mlp.build() equals the committed model")
    assert.isTrue(Buffer.from(Mlp.build().bytes).equals(Buffer.from(bytes)), "two builds are equal")
    assert.isFalse(Buffer.from(Mlp.build({ seed: 2 }).bytes).equals(Buffer.from(bytes)), "another seed gives other weights")
  })

  it("draws weights from the seed: 784x256 and 256x10 with biases", () => {
    const mlp = Mlp.weights()
    assert.deepStrictEqual(mlp.layers.map((l) => [l.inputs, l.outputs, l.weights.length, l.bias.length]), [[784, 256, 784 * 256, 256], [256, 10, 2560, 10]])
    const bound = Math.sqrt(6 / 784)
    assert.isTrue(mlp.layers[0]!.weights.every((w) => Math.abs(w) <= bound))
    assert.throws(() => Mlp.weights({ sizes: [4] }), /at least two/)
  })

  it("onnxruntime's output matches the plain-JS forward pass to 1e-5", async () => {
    const { bytes, mlp } = Mlp.build()
    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 })
    try {
      assert.deepStrictEqual(session.inputNames, ["input"])
      assert.deepStrictEqual(session.outputNames, ["logits"])
      for (const batch of [1, 3, 17]) {
        const x = sampleInput(batch, batch)
        const out = await session.run({ input: new ort.Tensor("float32", x, [batch, 784]) })
        const logits = out["logits"]!
        assert.deepStrictEqual(logits.dims, [batch, 10])
        assert.isBelow(maxAbsDiff(logits.data as Float32Array, Mlp.forward(mlp, x, batch)), 1e-5, `batch ${batch}`)
      }
    } finally {
      await session.release()
    }
  })

  it("builds other shapes too", async () => {
    const { bytes, mlp } = Mlp.build({ sizes: [8, 16, 4, 3], seed: 42 })
    const session = await ort.InferenceSession.create(bytes)
    try {
      const x = Float32Array.from({ length: 16 }, (_, i) => Math.sin(i))
      const out = await session.run({ input: new ort.Tensor("float32", x, [2, 8]) })
      assert.deepStrictEqual(out["logits"]!.dims, [2, 3])
      assert.isBelow(maxAbsDiff(out["logits"]!.data as Float32Array, Mlp.forward(mlp, x, 2)), 1e-5)
    } finally {
      await session.release()
    }
  })
})
