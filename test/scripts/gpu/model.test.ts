import { assert, describe, it } from "@effect/vitest"
import * as ort from "onnxruntime-node"
import { sliceOnnx } from "../../../scripts/gpu/model.ts"

describe("scripts/gpu/model", () => {
  it("sliceOnnx: the MLP's signature, each row's first `outputs` columns", async () => {
    const session = await ort.InferenceSession.create(sliceOnnx(6, 4), { intraOpNumThreads: 1 })
    try {
      assert.deepStrictEqual(session.inputNames, ["input"])
      assert.deepStrictEqual(session.outputNames, ["logits"])
      for (const rows of [1, 3]) {
        const x = Float32Array.from({ length: rows * 6 }, (_, i) => i + 0.5)
        const out = (await session.run({ input: new ort.Tensor("float32", x, [rows, 6]) }))["logits"]!
        assert.deepStrictEqual(out.dims, [rows, 4])
        const expected = Array.from({ length: rows }, (_, r) => Array.from(x.subarray(r * 6, r * 6 + 4))).flat()
        assert.deepStrictEqual(Array.from(out.data as Float32Array), expected, `${rows} row(s)`)
      }
    } finally {
      await session.release()
    }
  })

  it("sliceOnnx refuses more outputs than inputs", () => {
    assert.throws(() => sliceOnnx(4, 5), /must not exceed/)
  })
})
