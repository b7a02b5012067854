import { assert, describe, it } from "@effect/vitest"
import * as SessionEndpoint from "../../src/onnx/SessionEndpoint.ts"
import * as Tensor from "../../src/Tensor.ts"

describe("SessionEndpoint.givenBack", () => {
  it("gives back each exact-size input buffer once, never a view into a larger one or one an output lives in", () => {
    const a = Tensor.float32(new Float32Array(8), [2, 4])
    const shared = new Float32Array(16)
    const b = Tensor.float32(shared.subarray(0, 8), [2, 4])
    const c = Tensor.float32(new Float32Array(4), [1, 4])
    const sameAsA = Tensor.float32(a.data, [2, 4])
    const out = { y: Tensor.float32(c.data, [1, 4]) }
    const back = SessionEndpoint.givenBack({ a, b, c, d: sameAsA }, out)
    assert.deepStrictEqual(back, [a.data.buffer])
    assert.isUndefined(SessionEndpoint.givenBack({ b, c }, out))
  })
})
