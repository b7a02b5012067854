import { assert, describe, it } from "@effect/vitest"
import * as ModelMetadata from "../src/ModelMetadata.ts"
import * as Tensor from "../src/Tensor.ts"

const metadata: ModelMetadata.ModelMetadata = {
  name: "m",
  version: "1",
  inputs: [
    { name: "x", dtype: "float32", dims: [-1, 3] },
    { name: "sr", dtype: "int64", dims: [] }
  ],
  outputs: [{ name: "y", dtype: "float32", dims: [-1, 1] }]
}

const valid = { x: Tensor.float32([1, 2, 3, 4, 5, 6], [2, 3]), sr: Tensor.int64([16000], []) }

describe("ModelMetadata.validateInputs", () => {
  it("accepts inputs that fit, with any size on a dynamic dim", () => {
    assert.isUndefined(ModelMetadata.validateInputs(metadata, valid))
  })

  it("refuses a string element onnxruntime would change (a NUL, a lone surrogate) or that is no string, as the edges do", () => {
    const texts: ModelMetadata.ModelMetadata = { name: "t", version: "1", inputs: [{ name: "s", dtype: "string", dims: [-1] }], outputs: [] }
    const strings = (data: ReadonlyArray<unknown>) => ({ s: Tensor.make("string", data as Array<string>, [data.length]) })
    assert.isUndefined(ModelMetadata.validateInputs(texts, strings(["", "é", "😀"])))
    for (const [data, expected] of [
      [["a", "b\0c"], /element 1 holds a NUL character/],
      [["\ud83d"], /element 0 is not well-formed Unicode/],
      [["a", 7], /element 1 is a number, not a string/],
      [[null], /element 0 is a null, not a string/]
    ] as const) {
      assert.match(ModelMetadata.validateInputs(texts, strings(data))?.message ?? "", expected, JSON.stringify(data))
    }
  })

  const cases: ReadonlyArray<readonly [string, Tensor.TensorMap, string | undefined, RegExp]> = [
    ["an unknown input", { ...valid, z: Tensor.float32([1], [1]) }, "z", /unknown input; the model takes x, sr/],
    ["a missing input", { x: valid.x }, "sr", /missing input/],
    ["a wrong dtype", { ...valid, x: Tensor.make("float64", new Float64Array(6), [2, 3]) }, "x", /dtype float64 given, the model takes float32/],
    ["a wrong rank", { ...valid, x: Tensor.float32([1, 2, 3], [3]) }, "x", /rank 1 given/],
    ["a wrong fixed dim", { ...valid, x: Tensor.float32([1, 2, 3, 4], [1, 4]) }, "x", /dim 1 is 4, the model takes 3/],
    ["data shorter than the dims", { ...valid, x: Tensor.float32([1, 2, 3], [2, 3]) }, "x", /data has 3 elements, dims \[2, 3\] need 6/],
    ["a negative dim", { ...valid, x: Tensor.float32([], [-1, 3]) }, "x", /non-negative integers/],
    ["a fractional dim", { ...valid, x: Tensor.float32([], [1.5, 3]) }, "x", /non-negative integers/],
    ["a huge shape", { ...valid, x: Tensor.float32([], [1e9, 1e9]) }, "x", /exceed the limit/],
    ["a zero-size dim (an empty tensor)", { ...valid, x: Tensor.float32([], [0, 3]) }, "x", /hold no elements: empty tensors are not run/],
    ["a huge dim beside a zero", { ...valid, x: Tensor.float32([], [0, 4503599627370496]) }, "x", /exceed the limit/],
    // An integer beyond 2^53 (gRPC's int64 dims) is too large, not "not an integer".
    ["a dim beyond 2^53", { ...valid, x: Tensor.float32([], [2 ** 62, 3]) }, "x", /exceed the limit/],
    ["an infinite dim", { ...valid, x: Tensor.float32([], [Infinity, 3]) }, "x", /non-negative integers/],
    ["data of the wrong array type", { ...valid, x: { dtype: "float32", dims: [1, 3], data: new Float64Array(3) } as unknown as Tensor.Tensor }, "x", /array type/],
    // What the types rule out, and a caller in plain JavaScript (or with decoded JSON) may still send:
    // a typed refusal, not a TypeError out of the engine.
    ["inputs that are null", null as unknown as Tensor.TensorMap, undefined, /inputs must be an object of named tensors, not null/],
    ["inputs that are undefined", undefined as unknown as Tensor.TensorMap, undefined, /inputs must be an object of named tensors, not undefined/],
    ["a tensor that is null", { ...valid, x: null as unknown as Tensor.Tensor }, "x", /not a tensor/],
    ["a tensor that is a number", { ...valid, x: 3 as unknown as Tensor.Tensor }, "x", /not a tensor/],
    ["a tensor without dims", { ...valid, x: { dtype: "float32", data: new Float32Array(3) } as unknown as Tensor.Tensor }, "x", /not a tensor/],
    ["a tensor without data", { ...valid, x: { dtype: "float32", dims: [1, 3] } as unknown as Tensor.Tensor }, "x", /array type/]
  ]
  it("refuses a missing input named like an Object.prototype member as missing, not as a wrong dtype", () => {
    const odd: ModelMetadata.ModelMetadata = { ...metadata, inputs: [...metadata.inputs, { name: "constructor", dtype: "float32", dims: [1] }] }
    const error = ModelMetadata.validateInputs(odd, valid)
    assert.strictEqual(error?.input, "constructor")
    assert.match(error!.detail, /missing input/)
  })

  for (const [name, inputs, input, detail] of cases) {
    it(`refuses ${name}, naming the input`, () => {
      const error = ModelMetadata.validateInputs(metadata, inputs)
      assert.isDefined(error)
      assert.strictEqual(error!.modelId, "m")
      assert.strictEqual(error!.input, input)
      assert.match(error!.detail, detail)
    })
  }
})
