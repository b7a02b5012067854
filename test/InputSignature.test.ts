import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Schema } from "effect"
import * as InputSignature from "../src/InputSignature.ts"
import * as ModelMetadata from "../src/ModelMetadata.ts"
import * as Tensor from "../src/Tensor.ts"

const vad: InputSignature.ModelInputs = {
  inputs: [{ name: "input", dims: [-1, -1] }, { name: "state", dims: [2, -1, 128] }, { name: "sr", dims: [] }, { name: "text", dtype: "string", dims: [-1] }]
}

const signatures: ReadonlyArray<InputSignature.Signature> = [
  { input: { dims: [-1, 512] }, sr: { values: [16000] } },
  { input: { dims: [-1, 256] }, sr: { values: [8000] } }
]

const audio = (samples: number, sr: number) => ({
  input: Tensor.float32(new Float32Array(samples), [1, samples]),
  sr: Tensor.int64([sr], [])
})

describe("InputSignature.check", () => {
  const cases: ReadonlyArray<readonly [string, Tensor.TensorMap, string | undefined]> = [
    ["512 samples at 16 kHz fit the first", audio(512, 16000), undefined],
    ["256 samples at 8 kHz fit the second", audio(256, 8000), undefined],
    ["512 at 8 kHz fits neither", audio(512, 8000), "the inputs fit none of the model's 2 declared input signatures: [0] sr value 8000 (element 0) is not one of [16000]; [1] input dims [1, 512], declared [-1, 256]"],
    ["too few samples", audio(10, 16000), "the inputs fit none of the model's 2 declared input signatures: [0] input dims [1, 10], declared [-1, 512]; [1] input dims [1, 10], declared [-1, 256]"],
    ["an unsupported rate", audio(512, 44100), "the inputs fit none of the model's 2 declared input signatures: [0] sr value 44100 (element 0) is not one of [16000]; [1] input dims [1, 512], declared [-1, 256]"]
  ]
  for (const [name, inputs, expected] of cases) {
    it(name, () => assert.strictEqual(InputSignature.check(signatures, inputs), expected))
  }

  it("any dim where the declaration says -1, e.g. the batch", () =>
    assert.isUndefined(InputSignature.check(signatures, { input: Tensor.float32(new Float32Array(3 * 512), [3, 512]), sr: Tensor.int64([16000], []) })))

  it("without declared signatures, anything the model's metadata accepts fits", () => {
    assert.isUndefined(InputSignature.check(undefined, audio(3, 1)))
    assert.isUndefined(InputSignature.check([], audio(3, 1)))
  })

  it("min and max are inclusive; NaN is outside every range; one signature gives its reason alone", () => {
    const ranged: ReadonlyArray<InputSignature.Signature> = [{ x: { min: 0, max: 1 } }]
    assert.isUndefined(InputSignature.check(ranged, { x: Tensor.float32([0, 0.5, 1], [3]) }))
    assert.strictEqual(InputSignature.check(ranged, { x: Tensor.float32([0, 1.5], [2]) }), "x value 1.5 (element 1) is outside [0, 1] (the model's declared input signature)")
    assert.strictEqual(InputSignature.check(ranged, { x: Tensor.float32([Number.NaN], [1]) }), "x value NaN (element 0) is outside [0, 1] (the model's declared input signature)")
    assert.strictEqual(InputSignature.check([{ x: { min: 0 } }], { x: Tensor.float32([-1], [1]) }), "x value -1 (element 0) is outside [0, inf] (the model's declared input signature)")
    assert.strictEqual(InputSignature.check([{ x: { max: 0 } }], { x: Tensor.int64([1n], [1]) }), "x value 1 (element 0) is outside [-inf, 0] (the model's declared input signature)")
  })

  it("int64 values compare exactly, past 2^53 too", () => {
    const big = 2n ** 60n
    assert.isUndefined(InputSignature.check([{ x: { values: [Number(big)] } }], { x: Tensor.int64([big], [1]) }))
    assert.isDefined(InputSignature.check([{ x: { values: [Number(big)] } }], { x: Tensor.int64([big + 1n], [1]) }))
    assert.isDefined(InputSignature.check([{ x: { values: [0.5] } }], { x: Tensor.int64([0n], [1]) }), "a fractional value never equals an integer")
  })
})

describe("InputSignature.resolve", () => {
  it.effect("accepts declarations that narrow the model's inputs", () =>
    Effect.gen(function*() {
      assert.deepStrictEqual(yield* InputSignature.resolve(signatures, vad), signatures)
      assert.isUndefined(yield* InputSignature.resolve(undefined, vad))
      assert.deepStrictEqual(yield* InputSignature.resolve([{ state: { dims: [2, 1, 128] } }], vad), [{ state: { dims: [2, 1, 128] } }])
    }))

  it.effect("accepts -1 on a dim the model fixes (any size the model takes), and a range whose min equals its max", () =>
    Effect.gen(function*() {
      const fixed: InputSignature.ModelInputs = { inputs: [{ name: "input", dims: [1, 512] }, { name: "sr", dims: [] }] }
      assert.deepStrictEqual(yield* InputSignature.resolve([{ input: { dims: [-1, 512] } }], fixed), [{ input: { dims: [-1, 512] } }])
      assert.deepStrictEqual(yield* InputSignature.resolve([{ sr: { min: 5, max: 5 } }], vad), [{ sr: { min: 5, max: 5 } }])
    }))

  const refusals: ReadonlyArray<readonly [string, InputSignature.ConfigJson, string]> = [
    ["an unknown input", [{ input: {} }, { audio: { dims: [-1] } }], "inputSignatures[1].audio: unknown input; the model takes input, state, sr, text"],
    ["a different rank", [{ input: { dims: [512] } }], "inputSignatures[0].input.dims: rank 1, the model's input has rank 2 [-1, -1]"],
    ["a dim the model fixes otherwise", [{ state: { dims: [2, -1, 64] } }], "inputSignatures[0].state.dims: dim 2 is 64, the model fixes it at 128"],
    ["min above max", [{ sr: { min: 16000, max: 8000 } }], "inputSignatures[0].sr: min 16000 is above max 8000"],
    ["values for a string input", [{ text: { values: [1] } }], "inputSignatures[0].text: values, min and max apply to numbers; the input holds strings"]
  ]
  for (const [name, config, expected] of refusals) {
    it.effect(`refuses ${name}`, () =>
      Effect.gen(function*() {
        assert.strictEqual(yield* Effect.flip(InputSignature.resolve(config, vad)), expected)
      }))
  }
})

describe("InputSignature.ConfigJson", () => {
  const decode = Schema.decodeUnknownExit(InputSignature.ConfigJson)
  it("decodes alternatives; refuses an empty list, an empty values list, non-finite bounds and fractional dims", () => {
    assert.isTrue(decode([{ input: { dims: [-1, 512] }, sr: { values: [16000] } }])._tag === "Success")
    for (const bad of [[], [{ sr: { values: [] } }], [{ x: { min: "0" } }], [{ x: { dims: [0.5] } }], [{ x: { dims: [-2] } }], { x: {} }]) {
      assert.strictEqual(decode(bad)._tag, "Failure", JSON.stringify(bad))
    }
  })
})

describe("ModelMetadata.validateInputs with declared signatures", () => {
  const metadata: ModelMetadata.ModelMetadata = {
    name: "vad",
    version: "1",
    inputs: [{ name: "input", dtype: "float32", dims: [-1, -1] }, { name: "sr", dtype: "int64", dims: [] }],
    outputs: [],
    signatures
  }
  it("checks the model's own metadata first, then the signatures, as InvalidInput", () => {
    assert.isUndefined(ModelMetadata.validateInputs(metadata, audio(512, 16000)))
    const refused = ModelMetadata.validateInputs(metadata, audio(100, 16000))
    assert.strictEqual(refused?._tag, "InvalidInput")
    assert.include(refused?.message, "for model \"vad\": the inputs fit none of the model's 2 declared input signatures")
    const wrongType = ModelMetadata.validateInputs(metadata, { input: Tensor.float32([0], [1, 1]), sr: Tensor.float32([16000], []) })
    assert.include(wrongType?.message, "dtype float32 given, the model takes int64")
  })
})

const failure = <A>(effect: Effect.Effect<A, string>) => {
  const exit = Effect.runSyncExit(Effect.flip(effect))
  return Exit.isSuccess(exit) ? exit.value : "succeeded"
}

describe("InputSignature edges: strings, dims of 0, int64 values", () => {
  it("resolve refuses max alone on a string input", () => {
    const model: InputSignature.ModelInputs = { inputs: [{ name: "text", dtype: "string", dims: [-1] }] }
    assert.strictEqual(failure(InputSignature.resolve([{ text: { max: 5 } }], model)), "inputSignatures[0].text: values, min and max apply to numbers; the input holds strings")
  })

  it("resolve refuses a declared dim that disagrees with a model dim fixed at 0", () => {
    const model: InputSignature.ModelInputs = { inputs: [{ name: "x", dims: [0, 3] }] }
    assert.include(failure(InputSignature.resolve([{ x: { dims: [1, 3] } }], model)), "dim 0 is 1, the model fixes it at 0")
  })

  it("an int64 element never equals a non-integer declared value, and checking does not throw", () => {
    const signatures = [{ sr: { values: [0.6, 16000] } }]
    assert.strictEqual(InputSignature.check(signatures, { sr: Tensor.int64([16000], []) }), undefined)
    assert.strictEqual(
      InputSignature.check(signatures, { sr: Tensor.int64([1], []) }),
      "sr value 1 (element 0) is not one of [0.6, 16000] (the model's declared input signature)"
    )
  })

  it("a declared dim of 0 is a size, not a wildcard", () => {
    const signatures = [{ x: { dims: [-1, 0] } }]
    assert.isDefined(InputSignature.check(signatures, { x: Tensor.float32(new Float32Array(2), [1, 2]) }))
    assert.isUndefined(InputSignature.check(signatures, { x: Tensor.float32(new Float32Array(0), [1, 0]) }))
  })
})
