/**
 * `GrpcCodec.toOip`, the pure translation of a `ModelInferRequest` (as proto-loader decodes it)
 * into an OIP request: the gRPC-only rules it refuses with a message in gRPC's terms, table-tested.
 */
import { assert, describe, it } from "@effect/vitest"
import * as GrpcCodec from "../../src/grpc/GrpcCodec.ts"
import * as Oip from "../../src/http/Oip.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"
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
      "values in another field than the datatype's",
      request({ inputs: [input({ contents: contents({ int_contents: [1, 2, 3, 4] }) })] }),
      "input \"x\": datatype FP32 takes its values in contents.fp32_contents, got int_contents"
    ],
    [
      "values in the datatype's field and others",
      request({ inputs: [input({ datatype: "INT64", contents: contents({ int64_contents: ["1", "2", "3", "4"], int_contents: [1], fp64_contents: [1] }) })] }),
      "input \"x\": datatype INT64 takes its values in contents.int64_contents only, also got int_contents, fp64_contents"
    ],
    [
      "no contents at all",
      request(),
      "input \"x\": no values: shape [1, 4] of FP32 needs 4 in contents.fp32_contents (or its bytes in raw_input_contents)"
    ],
    [
      "an empty contents message",
      request({ inputs: [input({ datatype: "BYTES", contents: contents({}) })] }),
      "input \"x\": no values: shape [1, 4] of BYTES needs 4 in contents.bytes_contents (or its bytes in raw_input_contents)"
    ],
    [
      "fewer values than the shape holds",
      request({ inputs: [input({ contents: contents({ fp32_contents: [1, 2] }) })] }),
      "input \"x\": contents.fp32_contents holds 2 values, shape [1, 4] needs 4"
    ],
    [
      "a datatype without typed contents",
      request({ inputs: [input({ datatype: "FP16", contents: contents({ fp32_contents: [1, 2, 3, 4] }) })] }),
      "input \"x\": datatype FP16 has no typed contents: send it in raw_input_contents"
    ],
    [
      "HTTP's binary_data_size with typed contents",
      request({ inputs: [input({ parameters: { binary_data_size: { parameter_choice: "int64_param", int64_param: "16" } }, contents: contents({ fp32_contents: [1, 2, 3, 4] }) })] }),
      "input \"x\": parameters.binary_data_size belongs to HTTP's binary tensor data; over gRPC send the bytes in raw_input_contents"
    ],
    [
      "a binary_data_size with raw contents that is not their length (it was overwritten silently)",
      request({ inputs: [input({ parameters: { binary_data_size: { parameter_choice: "int64_param", int64_param: "5" } } })], raw_input_contents: [f32([1, 2, 3, 4])] }),
      "input \"x\": parameters.binary_data_size is 5, but its raw_input_contents entry holds 16 bytes"
    ],
    [
      "a binary_data_size of the raw contents' length sent as a string (it read: is \"16\", but … holds 16 bytes)",
      request({ inputs: [input({ parameters: { binary_data_size: { parameter_choice: "string_param", string_param: "16" } } })], raw_input_contents: [f32([1, 2, 3, 4])] }),
      "input \"x\": parameters.binary_data_size must be an integer (int64_param), not the string \"16\""
    ],
    [
      "an output in a shared-memory region",
      request({ raw_input_contents: [f32([1, 2, 3, 4])], outputs: [{ name: "y", parameters: { shared_memory_region: { parameter_choice: "string_param", string_param: "out" } } }] }),
      "output \"y\": parameters.shared_memory_region asks for the shared-memory extension, which this server does not support"
    ],
    [
      "an input in a shared-memory region",
      request({ inputs: [input({ parameters: { shared_memory_region: { parameter_choice: "string_param", string_param: "in" }, shared_memory_byte_size: { parameter_choice: "int64_param", int64_param: "16" } } })] }),
      "input \"x\": parameters.shared_memory_region asks for the shared-memory extension, which this server does not support"
    ],
    [
      "an input in a shared-memory region beside a raw one (tritonclient sends no raw entry for it)",
      request({
        inputs: [
          input({ parameters: { shared_memory_region: { parameter_choice: "string_param", string_param: "in" } } }),
          input({ name: "z" })
        ],
        raw_input_contents: [f32([1, 2, 3, 4])]
      }),
      "input \"x\": parameters.shared_memory_region asks for the shared-memory extension, which this server does not support"
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

  it("passes an output's classification on to the OIP request (Triton's classification extension), and no other output parameter", () => {
    const oip = GrpcCodec.toOip(request({
      raw_input_contents: [f32([1, 2, 3, 4])],
      outputs: [{ name: "y", parameters: { classification: { parameter_choice: "int64_param", int64_param: "3" }, other: { parameter_choice: "bool_param", bool_param: true } } }]
    }))
    assert.notStrictEqual(typeof oip, "string")
    if (typeof oip !== "string") assert.deepStrictEqual((oip.body as { outputs: unknown }).outputs, [{ name: "y", parameters: { classification: 3 } }])
  })

  it("keeps a sequence_id past 2^53 exact, as its decimal text (Triton's uint64 correlation ids); smaller ones as numbers", () => {
    const sequenceId = (parameter: GrpcCodec.InferParameter) => {
      const oip = GrpcCodec.toOip(request({ raw_input_contents: [f32([1, 2, 3, 4])], parameters: { sequence_id: parameter, priority: parameter } }))
      const parameters = (oip as { body: { parameters: Record<string, unknown> } }).body.parameters
      return [parameters["sequence_id"], parameters["priority"]]
    }
    assert.deepStrictEqual(sequenceId({ parameter_choice: "uint64_param", uint64_param: "18446744073709551615" }), ["18446744073709551615", 18446744073709552000])
    assert.deepStrictEqual(sequenceId({ parameter_choice: "int64_param", int64_param: "9007199254740993" }), ["9007199254740993", 9007199254740992])
    assert.deepStrictEqual(sequenceId({ parameter_choice: "uint64_param", uint64_param: "42" }), [42, 42])
    assert.deepStrictEqual(sequenceId({ parameter_choice: "string_param", string_param: "a" }), ["a", "a"])
  })

  it("takes raw contents as the binary part and typed contents as data", () => {
    const raw = GrpcCodec.toOip(request({ raw_input_contents: [f32([1, 2, 3, 4])] }))
    assert.notStrictEqual(typeof raw, "string")
    assert.deepStrictEqual((raw as any).body.inputs[0].parameters, { binary_data_size: 16 })
    // KServe's InferInput.set_data_from_numpy sets binary_data_size to the raw entry's length, and its
    // to_grpc sends it: it describes those bytes, so it is taken (Triton ignores it).
    const kserve = GrpcCodec.toOip(request({ inputs: [input({ parameters: { binary_data_size: { parameter_choice: "int64_param", int64_param: "16" } } })], raw_input_contents: [f32([1, 2, 3, 4])] }))
    assert.notStrictEqual(typeof kserve, "string", String(kserve))
    assert.deepStrictEqual((kserve as any).body.inputs[0].parameters, { binary_data_size: 16 })
    const typed = GrpcCodec.toOip(request({ inputs: [input({ contents: contents({ fp32_contents: [1, 2, 3, 4] }) })] }))
    assert.deepStrictEqual((typed as any).body.inputs[0].data, [1, 2, 3, 4])
    assert.isUndefined((typed as any).binary)
    // Other output parameters (binary_data, HTTP's) are not refused: outputs are raw over gRPC anyway.
    const binaryData = GrpcCodec.toOip(request({ raw_input_contents: [f32([1, 2, 3, 4])], outputs: [{ name: "y", parameters: { binary_data: { parameter_choice: "bool_param", bool_param: true } } }] }))
    assert.deepStrictEqual((binaryData as any).body.outputs, [{ name: "y" }])
    // What the OIP checks judge better is left to them: an invalid shape, an unknown datatype.
    const negative = GrpcCodec.toOip(request({ inputs: [input({ shape: ["-1", "4"], contents: contents({ fp32_contents: [1] }) })] }))
    assert.deepStrictEqual((negative as any).body.inputs[0].data, [1])
    const unknown = GrpcCodec.toOip(request({ inputs: [input({ datatype: "XX" })] }))
    assert.deepStrictEqual((unknown as any).body.inputs[0].data, [])
  })

  it("takes typed BYTES contents as they are, a leading byte-order mark too (a BOM-stripping decoder dropped it)", () => {
    const bom = Buffer.from([0xef, 0xbb, 0xbf, 0x61, 0x62, 0x63])
    const typed = GrpcCodec.toOip(request({ inputs: [input({ datatype: "BYTES", shape: ["1", "2"], contents: contents({ bytes_contents: [bom, Buffer.from("héllo")] }) })] }))
    assert.deepStrictEqual((typed as any).body.inputs[0].data, ["\uFEFFabc", "héllo"])
    // Bytes that are not UTF-8 are refused, as in raw contents, not handed on as U+FFFD.
    const jpeg = GrpcCodec.toOip(request({ inputs: [input({ datatype: "BYTES", shape: ["1", "2"], contents: contents({ bytes_contents: [Buffer.from("ok"), Buffer.from([0xff, 0xd8, 0xff])] }) })] }))
    assert.match(String(jpeg), /^input "x": contents.bytes_contents element 1 is not valid UTF-8/)
    const nul = GrpcCodec.toOip(request({ inputs: [input({ datatype: "BYTES", shape: ["1", "2"], contents: contents({ bytes_contents: [Buffer.from("ok"), Buffer.from([0x61, 0x00, 0x62])] }) })] }))
    assert.match(String(nul), /^input "x": contents.bytes_contents element 1 holds a NUL character/)
  })

  it("names the contents field of every datatype, as Triton reads them", () => {
    const table: ReadonlyArray<readonly [string, string | undefined]> = [
      ["BOOL", "bool_contents"],
      ["INT8", "int_contents"],
      ["INT16", "int_contents"],
      ["INT32", "int_contents"],
      ["INT64", "int64_contents"],
      ["UINT8", "uint_contents"],
      ["UINT16", "uint_contents"],
      ["UINT32", "uint_contents"],
      ["UINT64", "uint64_contents"],
      ["FP32", "fp32_contents"],
      ["FP64", "fp64_contents"],
      ["BYTES", "bytes_contents"],
      ["FP16", undefined],
      ["XX", undefined]
    ]
    for (const [datatype, field] of table) assert.strictEqual(GrpcCodec.contentsFieldOf(datatype), field, datatype)
  })
})

describe("GrpcCodec.inferRequestProblem", () => {
  const definitions = GrpcCodec.loadDefinitions() as unknown as Record<string, Record<string, { requestSerialize: (m: unknown) => Buffer; requestDeserialize: (b: Buffer) => unknown }>>
  const service = definitions["inference.GRPCInferenceService"]!
  const encode = (message: unknown) => service["ModelInfer"]!.requestSerialize(message)
  /** A length-delimited field `field` holding `payload`. */
  const lengthDelimited = (field: number, payload: Buffer): Buffer => {
    const length: Array<number> = []
    for (let n = payload.length; ; n = Math.floor(n / 128)) {
      length.push(n >= 128 ? (n % 128) | 0x80 : n)
      if (n < 128) break
    }
    return Buffer.concat([Buffer.from([(field << 3) | 2, ...length]), payload])
  }

  const tooLarge = (b: Uint8Array) => {
    const problem = GrpcCodec.inferRequestProblem(b)
    return problem?._tag === "tooLarge" ? problem.why : problem === undefined ? undefined : `unreadable: ${problem.why}`
  }

  it("passes what a request holds, refuses before decoding what no request needs: entries past maxInferEntries, values past maxInferValues", () => {
    const ok = encode({
      model_name: "m",
      parameters: { priority: { int64_param: "1" } },
      inputs: [{ name: "x", datatype: "INT64", shape: ["2", "3"], contents: { int64_contents: ["1", "2", "3", "4", "5", "6"] } }],
      outputs: [{ name: "y", parameters: { binary_data: { bool_param: true } } }],
      raw_input_contents: [Buffer.from([1, 2, 3, 4])]
    })
    assert.isUndefined(tooLarge(ok))
    // Empty inputs, 2 bytes each: what decoded for 45 s at 8 million.
    const inputs = encode({ model_name: "m", inputs: Array.from({ length: GrpcCodec.maxInferEntries + 1 }, () => ({})) })
    assert.match(tooLarge(inputs) ?? "", /^the request holds 4097 inputs, outputs, raw_input_contents and parameters together; at most 4096/)
    // One input whose int64_contents, packed, hold a value a byte past the bound.
    const packed = Buffer.alloc(GrpcCodec.maxInferValues + 1, 1)
    const values = lengthDelimited(5, lengthDelimited(5, lengthDelimited(3, packed)))
    assert.match(tooLarge(values) ?? "", /holds 1048577 tensor values in contents and shape dims; at most 1048576/)
    assert.isUndefined(tooLarge(lengthDelimited(5, lengthDelimited(5, lengthDelimited(3, packed.subarray(1))))))
    // A shape of more dims than any model has.
    const shape = lengthDelimited(5, lengthDelimited(3, Buffer.alloc(GrpcCodec.maxInferRank + 1, 1)))
    assert.strictEqual(tooLarge(shape), "an input's shape has 65 dims; at most 64")
    assert.isUndefined(tooLarge(lengthDelimited(5, lengthDelimited(3, Buffer.alloc(GrpcCodec.maxInferRank, 1)))))
    // Bytes that are not protobuf: refused as unreadable.
    assert.match(tooLarge(Buffer.from([0xff, 0xff, 0xff])) ?? "", /^unreadable: a field key at byte 0 does not end/)
  })

  it("refuses what the decoder would read unseen: groups, a known field of the wrong wire type, keys past 32 bits; counts floats and every shape field", () => {
    const many = encode({ model_name: "m", inputs: Array.from({ length: GrpcCodec.maxInferEntries + 1 }, () => ({})) })
    const problem = (b: Uint8Array) => GrpcCodec.inferRequestProblem(b)
    // An empty group (field 15, wire types 3 and 4) after the inputs: protobufjs skips it.
    assert.match(problem(Buffer.concat([many, Buffer.from([0x7b, 0x7c])]))?.why ?? "", /field 15 at byte \d+ is a group/)
    // Inside an input's contents, ahead of int64 values past the bound.
    const values = Buffer.alloc(GrpcCodec.maxInferValues + 1, 1)
    const grouped = lengthDelimited(5, lengthDelimited(5, Buffer.concat([Buffer.from([0x7b, 0x7c]), lengthDelimited(3, values)])))
    assert.strictEqual(problem(grouped)?._tag, "unreadable")
    // An input (field 5) as a varint: the decoder still reads a length and a message.
    assert.match(problem(Buffer.from([0x28, 0x02, 0x1a, 0x00]))?.why ?? "", /^field 5 at byte 0 has wire type 0, not its type's \(2\)/)
    // A key of 5 bytes whose bits past 32 make it another field number, to the decoder field 5.
    const input = encode({ inputs: [{ name: "x" }] })
    assert.strictEqual(input[0], 0x2a)
    const longKeys = Buffer.concat(Array.from({ length: GrpcCodec.maxInferEntries + 1 }, () => Buffer.concat([Buffer.from([0xaa, 0x80, 0x80, 0x80, 0x10]), input.subarray(1)])))
    assert.strictEqual((service["ModelInfer"]!.requestDeserialize(longKeys) as GrpcCodec.ModelInferRequest).inputs.length, 4097, "the decoder reads inputs")
    assert.match(tooLarge(longKeys) ?? "", /holds 4097 inputs/)
    // A shape's dims in several fields (unpacked, or packed chunks) are one shape to the decoder.
    const unpacked = lengthDelimited(5, Buffer.from(Array.from({ length: GrpcCodec.maxInferRank + 1 }, () => [0x18, 0x01]).flat()))
    assert.strictEqual(tooLarge(unpacked), "an input's shape has 65 dims; at most 64")
    const chunks = lengthDelimited(5, Buffer.concat([lengthDelimited(3, Buffer.alloc(40, 1)), lengthDelimited(3, Buffer.alloc(25, 1))]))
    assert.strictEqual(tooLarge(chunks), "an input's shape has 65 dims; at most 64")
    // Float and double contents count as values, packed or not.
    const floats = lengthDelimited(5, lengthDelimited(5, lengthDelimited(6, Buffer.alloc(4 * (GrpcCodec.maxInferValues + 1)))))
    assert.match(tooLarge(floats) ?? "", /holds 1048577 tensor values/)
    const doubles = lengthDelimited(5, lengthDelimited(5, Buffer.concat(Array.from({ length: 3 }, () => Buffer.from([0x39, 0, 0, 0, 0, 0, 0, 0, 0])))))
    assert.isUndefined(tooLarge(doubles))
    assert.isUndefined(tooLarge(encode({ inputs: [{ name: "x", datatype: "FP32", shape: ["2"], contents: { fp32_contents: [1, 2] } }] })))
  })

  it("counts every kind of entry and value: request parameters, bytes contents, the largest rank of any input, and the entries bound exactly", () => {
    // 4 096 entries pass, one more does not; request parameters count among them.
    const entries = (inputs: number, parameters: number) =>
      encode({ model_name: "m", inputs: Array.from({ length: inputs }, () => ({})), parameters: Object.fromEntries(Array.from({ length: parameters }, (_, i) => [`p${i}`, { bool_param: true }])) })
    assert.isUndefined(tooLarge(entries(GrpcCodec.maxInferEntries - 2, 2)))
    assert.match(tooLarge(entries(GrpcCodec.maxInferEntries - 2, 3)) ?? "", /holds 4097 inputs/)
    // bytes_contents (field 8 of contents): each element is a value.
    const bytes = lengthDelimited(5, lengthDelimited(5, Buffer.concat(Array.from({ length: GrpcCodec.maxInferValues + 1 }, () => Buffer.from([0x42, 0x00])))))
    assert.match(tooLarge(bytes) ?? "", /holds 1048577 tensor values/)
    // The rank bound holds for every input, not only the last.
    const deep = lengthDelimited(5, lengthDelimited(3, Buffer.alloc(GrpcCodec.maxInferRank + 1, 1)))
    const flat = lengthDelimited(5, lengthDelimited(3, Buffer.alloc(2, 1)))
    assert.strictEqual(tooLarge(Buffer.concat([deep, flat])), "an input's shape has 65 dims; at most 64")
  })

  it("the tolerant deserializer reads packed float and double contents straight into typed arrays: what the decoder reads, in its order", () => {
    const tolerant = GrpcCodec.tolerantRequests(service)
    /** A decoded request with its typed arrays as arrays, for comparison with the decoder's own. */
    const plain = (decoded: unknown) =>
      JSON.parse(JSON.stringify(decoded, (_key, value: unknown) =>
        ArrayBuffer.isView(value) && !(value instanceof Uint8Array)
          ? Array.from(value as Float32Array)
          : typeof value === "number" && (Object.is(value, -0) || !Number.isFinite(value))
          ? String(Object.is(value, -0) ? "-0" : value)
          : value))
    const f = (values: ReadonlyArray<number>) => Buffer.from(Float32Array.from(values).buffer)
    const d = (values: ReadonlyArray<number>) => Buffer.from(Float64Array.from(values).buffer)
    const name = (text: string) => lengthDelimited(1, Buffer.from(text))
    const datatype = (text: string) => lengthDelimited(2, Buffer.from(text))
    const cases: ReadonlyArray<readonly [string, Buffer]> = [
      ["one FP32 input", encode({ model_name: "m", inputs: [{ name: "x", datatype: "FP32", shape: ["1", "4"], contents: { fp32_contents: [1, -0, NaN, Infinity] } }] })],
      ["FP32, INT64 and FP64 inputs, and an output", encode({
        model_name: "m",
        id: "r",
        parameters: { priority: { int64_param: "1" } },
        inputs: [
          { name: "a", datatype: "FP32", shape: ["2"], contents: { fp32_contents: [0.1, 1e-40] } },
          { name: "b", datatype: "INT64", shape: ["1"], contents: { int64_contents: ["9007199254740993"] } },
          { name: "c", datatype: "FP64", shape: ["3"], contents: { fp64_contents: [Math.PI, -1e300, 5e-324] } }
        ],
        outputs: [{ name: "y" }]
      })],
      ["an input with empty contents beside one with values", encode({ model_name: "m", inputs: [{ name: "e", datatype: "FP32", shape: ["0"], contents: {} }, { name: "x", datatype: "FP32", shape: ["1"], contents: { fp32_contents: [7] } }] })],
      // one input whose contents come twice: the decoder keeps the last (protobufjs does not merge them)
      ["contents given twice for one input", lengthDelimited(5, Buffer.concat([name("x"), datatype("FP32"), lengthDelimited(5, lengthDelimited(6, f([1, 2]))), lengthDelimited(5, lengthDelimited(6, f([3])))]))],
      ["a packed field given twice in one contents", lengthDelimited(5, Buffer.concat([name("x"), lengthDelimited(5, Buffer.concat([lengthDelimited(6, f([1])), lengthDelimited(7, d([2])), lengthDelimited(6, f([3, 4]))]))]))],
      // unpacked floats (a key each, wire type 5): left to the decoder, whole message
      ["unpacked floats beside packed ones", lengthDelimited(5, Buffer.concat([name("x"), lengthDelimited(5, Buffer.concat([lengthDelimited(6, f([1])), Buffer.from([(6 << 3) | 5]), f([2])]))]))]
    ]
    for (const [label, bytes] of cases) {
      const before = Buffer.from(bytes)
      const fast = tolerant["ModelInfer"]!.requestDeserialize(bytes)
      assert.notInstanceOf(fast, GrpcCodec.Undecodable, label)
      assert.deepStrictEqual(plain(fast), plain(service["ModelInfer"]!.requestDeserialize(bytes)), label)
      assert.isTrue(bytes.equals(before), `${label}: the message's bytes are as they came`)
    }
    const typed = (label: string) => (tolerant["ModelInfer"]!.requestDeserialize(cases.find(([l]) => l === label)![1]) as GrpcCodec.ModelInferRequest).inputs
    assert.instanceOf(typed("one FP32 input")[0]!.contents!.fp32_contents, Float32Array, "read as a Float32Array")
    assert.instanceOf(typed("FP32, INT64 and FP64 inputs, and an output")[2]!.contents!.fp64_contents, Float64Array)
    assert.deepStrictEqual(Array.from(typed("contents given twice for one input")[0]!.contents!.fp32_contents!), [3])
    assert.deepStrictEqual(Array.from(typed("a packed field given twice in one contents")[0]!.contents!.fp32_contents!), [1, 3, 4])
    assert.notInstanceOf(typed("unpacked floats beside packed ones")[0]!.contents!.fp32_contents, Float32Array, "left to the decoder")
    // Varints the decoder reads as 10 bytes though they end sooner (a 6-byte key or length): the walk
    // would see other fields than the decoder, so the message is refused before either reads it.
    const longKeyInContents = lengthDelimited(5, Buffer.concat([name("x"), datatype("FP32"), Buffer.from([0x18, 0x01]), lengthDelimited(5, Buffer.from([0xc8, 0x80, 0x80, 0x80, 0x80, 0x00, 0x00, 0x32, 0x04, 0x00, 0x00, 0x48, 0x00]))]))
    const longKeyOnTop = Buffer.concat([Buffer.from([0x92, 0x80, 0x80, 0x80, 0x80, 0x00, 0x03, 0x41, 0x41, 0x41]), lengthDelimited(5, Buffer.concat([name("xxx"), lengthDelimited(5, lengthDelimited(6, Buffer.alloc(32)))]))])
    const longValue = lengthDelimited(5, lengthDelimited(5, Buffer.from([0x10, 0x81, 0x80, 0x80, 0x80, 0x80, 0x00])))
    for (const bytes of [longKeyInContents, longKeyOnTop, longValue]) {
      assert.strictEqual(GrpcCodec.inferRequestProblem(bytes)?._tag, "unreadable")
      assert.instanceOf(tolerant["ModelInfer"]!.requestDeserialize(bytes), GrpcCodec.Undecodable)
    }
    // A negative int32, sign-extended to 10 bytes as encoders write it, still passes.
    const negative = encode({ model_name: "m", inputs: [{ name: "x", datatype: "INT32", shape: ["1"], contents: { int_contents: [-5] } }] })
    assert.isUndefined(GrpcCodec.inferRequestProblem(negative))
    // A packed payload that is not whole floats is the decoder's to refuse, as before.
    const ragged = lengthDelimited(5, lengthDelimited(5, lengthDelimited(6, Buffer.from([0, 0, 128]))))
    assert.instanceOf(tolerant["ModelInfer"]!.requestDeserialize(ragged), GrpcCodec.Undecodable)
    // Through toOip and the OIP checks (as GrpcService takes them), the values become the tensor as they were sent.
    const oip = GrpcCodec.toOip(tolerant["ModelInfer"]!.requestDeserialize(cases[0]![1]) as GrpcCodec.ModelInferRequest)
    if (typeof oip === "string") return assert.fail(oip)
    const body = Oip.decodeInferRequest(oip.body)
    if ("error" in body) return assert.fail(body.error)
    const model: ModelMetadata.ModelMetadata = { name: "m", version: "1", inputs: [{ name: "x", dtype: "float32", dims: [-1, 4] }], outputs: [{ name: "y", dtype: "float32", dims: [-1, 4] }] }
    const prepared = Oip.prepare(model, body)
    if (prepared instanceof InferenceError.InvalidInput) return assert.fail(prepared.message)
    assert.deepStrictEqual(prepared.inputs["x"]!.dims, [1, 4])
    assert.deepStrictEqual(Array.from(prepared.inputs["x"]!.data as Float32Array), [1, -0, NaN, Infinity])
    // too few values for the shape: the same refusal as the decoder's array gets
    const short = encode({ model_name: "m", inputs: [{ name: "x", datatype: "FP32", shape: ["1", "4"], contents: { fp32_contents: [1, 2, 3] } }] })
    for (const decoded of [tolerant["ModelInfer"]!.requestDeserialize(short), service["ModelInfer"]!.requestDeserialize(short)]) {
      assert.strictEqual(GrpcCodec.toOip(decoded as GrpcCodec.ModelInferRequest), "input \"x\": contents.fp32_contents holds 3 values, shape [1, 4] needs 4")
    }
  })

  it("the tolerant deserializer answers such a request Undecodable, before decoding it", () => {
    const tolerant = GrpcCodec.tolerantRequests(service)
    const inputs = encode({ model_name: "m", inputs: Array.from({ length: GrpcCodec.maxInferEntries + 1 }, () => ({})) })
    for (const method of ["ModelInfer", "ModelStreamInfer"]) {
      const decoded = tolerant[method]!.requestDeserialize(inputs)
      assert.instanceOf(decoded, GrpcCodec.Undecodable, method)
      assert.include((decoded as GrpcCodec.Undecodable).details, "4097 inputs")
    }
  })
})
