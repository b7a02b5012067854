/**
 * `GrpcCodec.toOip`, the pure translation of a `ModelInferRequest` (as proto-loader decodes it)
 * into an OIP request: the gRPC-only rules it refuses with a message in gRPC's terms, table-tested.
 */
import { assert, describe, it } from "@effect/vitest"
import * as GrpcCodec from "../../src/grpc/GrpcCodec.ts"
import { f32 } from "./GrpcHarness.ts"

/** A request as proto-loader gives it (`defaults: true`): absent contents are null, absent lists empty. */
const request = (extra: Partial<GrpcCodec.ModelInferRequest> = {}): GrpcCodec.ModelInferRequest => ({
  model_name: "echo",
  model_version: "",
  id: "",
  inputs: [{ name: "x", datatype: "FP32", shape: ["1", "4"], contents: null }],
  outputs: [],
  raw_input_contents: [],
  ...extra
})

type Input = GrpcCodec.ModelInferRequest["inputs"][number]
const input = (extra: Partial<Input>): Input => ({ name: "x", datatype: "FP32", shape: ["1", "4"], contents: null, ...extra })
/** Typed contents as proto-loader decodes them: every field present, the unset ones empty. */
const contents = (set: Partial<GrpcCodec.InferTensorContents>): GrpcCodec.InferTensorContents => ({
  bool_contents: [],
  int_contents: [],
  int64_contents: [],
  uint_contents: [],
  uint64_contents: [],
  fp32_contents: [],
  fp64_contents: [],
  bytes_contents: [],
  ...set
})

describe("GrpcCodec.toOip", () => {
  const refused: ReadonlyArray<readonly [string, GrpcCodec.ModelInferRequest, string]> = [
    [
      "typed contents beside raw contents",
      request({ inputs: [input({ contents: contents({ fp32_contents: [9, 9, 9, 9] }) })], raw_input_contents: [f32([1, 2, 3, 4])] }),
      "input \"x\": contents must not be given when raw_input_contents is used"
    ],
    [
      "an empty contents message beside raw contents (set is set, as in Triton)",
      request({ inputs: [input({ contents: contents({}) })], raw_input_contents: [f32([1, 2, 3, 4])] }),
      "input \"x\": contents must not be given when raw_input_contents is used"
    ],
    [
      "raw contents not one per input",
      request({ raw_input_contents: [f32([1, 2, 3, 4]), f32([1])] }),
      "expected 1 raw_input_contents, one per input, got 2"
    ]
  ]
  it("refuses, in gRPC's terms, what a ModelInferRequest must not say", () => {
    for (const [why, message, expected] of refused) assert.strictEqual(GrpcCodec.toOip(message), expected, why)
  })

  it("takes raw contents as the binary part and typed contents as data", () => {
    const raw = GrpcCodec.toOip(request({ raw_input_contents: [f32([1, 2, 3, 4])] }))
    assert.notStrictEqual(typeof raw, "string")
    assert.deepStrictEqual((raw as any).body.inputs[0].parameters, { binary_data_size: 16 })
    const typed = GrpcCodec.toOip(request({ inputs: [input({ contents: contents({ fp32_contents: [1, 2, 3, 4] }) })] }))
    assert.deepStrictEqual((typed as any).body.inputs[0].data, [1, 2, 3, 4])
    assert.isUndefined((typed as any).binary)
  })
})
