import { assert, describe, it } from "@effect/vitest"
import { Duration, Schema } from "effect"
import * as BatchPolicy from "../../src/BatchPolicy.ts"
import * as Oip from "../../src/http/Oip.ts"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { clientMessage, maxMessageLength, redact, repositoryRoots } from "../../src/http/Routes.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"
import * as Tensor from "../../src/Tensor.ts"
import * as TensorCodec from "../../src/TensorCodec.ts"

const spec = (dtype: Tensor.DataType, dims: ReadonlyArray<number> = [-1, -1]) => ({ name: "x", dtype, dims })
const input = (datatype: string, shape: ReadonlyArray<number>, data: unknown) => ({ name: "x", shape, datatype, data })

describe("Oip datatypes", () => {
  it("maps every engine dtype to an OIP datatype and back", () => {
    for (const dtype of Tensor.dataTypes) assert.strictEqual(Oip.dtypeOf(Oip.datatypeOf[dtype]), dtype)
    assert.strictEqual(Oip.datatypeOf.string, "BYTES")
    assert.strictEqual(Oip.datatypeOf.bool, "BOOL")
    assert.isUndefined(Oip.dtypeOf("BF16"))
  })

  it("converts to and from half precision, rounding to nearest even and overflowing to infinity", () => {
    const cases: ReadonlyArray<readonly [number, number]> = [
      [0, 0x0000], [-0, 0x8000], [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65519, 0x7bff], [65520, 0x7c00],
      [2 ** -14, 0x0400], [2 ** -24, 0x0001], [2 ** -25, 0x0000], [3 * 2 ** -26, 0x0001], [1.5 * 2 ** -24, 0x0002], [0.1, 0x2e66],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [Infinity, 0x7c00], [-Infinity, 0xfc00]
    ]
    for (const [value, bits] of cases) assert.strictEqual(Oip.toHalfBits(value), bits, String(value))
    assert.isNaN(Oip.fromHalfBits(Oip.toHalfBits(NaN)))
    for (let bits = 0; bits < 0x7c00; bits += 37) assert.strictEqual(Oip.toHalfBits(Oip.fromHalfBits(bits)), bits)
  })

  it("maps Triton priority 1…4 to Critical…Low and timeout µs to a deadline; 0 means the default", () => {
    assert.deepStrictEqual([1, 2, 3, 4].map(Oip.priorityOf), ["Critical", "High", "Normal", "Low"])
    assert.isUndefined(Oip.priorityOf(0))
    assert.isUndefined(Oip.priorityOf(undefined))
    assert.strictEqual(Duration.toMillis(Oip.timeoutOf(2_500)!), 2.5)
    assert.isUndefined(Oip.timeoutOf(0))
  })
})

describe("Oip.decodeTensor", () => {
  it("decodes flat and nested data row-major into the dtype's array", () => {
    const flat = Oip.decodeTensor("m", spec("int32"), input("INT32", [2, 3], [1, 2, 3, 4, 5, 6]))
    const nested = Oip.decodeTensor("m", spec("int32"), input("INT32", [2, 3], [[1, 2, 3], [4, 5, 6]]))
    for (const t of [flat, nested]) {
      assert.notInstanceOf(t, InferenceError.InvalidInput)
      if (t instanceof InferenceError.InvalidInput) return
      assert.instanceOf(t.data, Int32Array)
      assert.deepStrictEqual(Array.from(t.data as Int32Array), [1, 2, 3, 4, 5, 6])
      assert.deepStrictEqual(t.dims, [2, 3])
    }
    const scalar = Oip.decodeTensor("m", spec("int64", []), input("INT64", [], [16000]))
    assert.deepStrictEqual(scalar, Tensor.int64([16000], []))
  })

  it("takes a Float32Array (Float64Array) of its dtype as flat data, as it is (gRPC's packed contents); refuses one of another length", () => {
    const values = Float32Array.of(1, -0, NaN, 2.5)
    const t = Oip.decodeTensor("m", spec("float32"), input("FP32", [2, 2], values))
    assert.deepStrictEqual(t, Tensor.make("float32", values, [2, 2]))
    assert.strictEqual((t as Tensor.Tensor).data, values, "not copied")
    assert.deepStrictEqual(Oip.decodeTensor("m", spec("float64"), input("FP64", [1, 2], Float64Array.of(1, 2))), Tensor.make("float64", Float64Array.of(1, 2), [1, 2]))
    const short = Oip.decodeTensor("m", spec("float32"), input("FP32", [2, 3], values))
    assert.strictEqual((short as InferenceError.InvalidInput).detail, "data has 4 elements, shape [2, 3] needs 6")
    // another kind of array is not data
    assert.match((Oip.decodeTensor("m", spec("float32"), input("FP32", [1, 2], Float64Array.of(1, 2))) as InferenceError.InvalidInput).detail, /^data must be an array/)
  })

  it("refuses an empty tensor (a zero-size dim): onnxruntime can abort the process on one", () => {
    const empty = Oip.decodeTensor("m", spec("float32"), input("FP32", [0, 4], []))
    assert.instanceOf(empty, InferenceError.InvalidInput)
    assert.include((empty as InferenceError.InvalidInput).detail, "empty tensors are not run")
  })

  it("keeps 64-bit integers given as decimal strings exact", () => {
    const t = Oip.decodeTensor("m", spec("uint64", [-1]), input("UINT64", [2], ["18446744073709551615", 7]))
    assert.deepStrictEqual(Array.from((t as Tensor.Tensor<"uint64">).data), [18446744073709551615n, 7n])
  })

  it("refuses a 64-bit decimal string longer than any 64-bit value before converting it (a 15 MB string took BigInt 15 s), in a short message", () => {
    const long = "9".repeat(1_000_000)
    const t = Oip.decodeTensor("m", spec("int64", [-1]), input("INT64", [1], [long]))
    assert.instanceOf(t, InferenceError.InvalidInput)
    assert.include((t as InferenceError.InvalidInput).detail, "element 0 is a decimal string of 1000000 characters, more than any INT64 value needs")
    assert.isBelow((t as InferenceError.InvalidInput).detail.length, 200)
    // The longest values still pass.
    const edges = Oip.decodeTensor("m", spec("int64", [-1]), input("INT64", [1], ["-9223372036854775808"]))
    assert.strictEqual((edges as Tensor.Tensor<"int64">).data[0], -(2n ** 63n))
  })

  it("refuses a 64-bit integer given as a JSON number beyond 2^53 - 1 (already rounded), pointing to decimal strings", () => {
    const body = JSON.parse('{"data":[9007199254740993]}') as { data: Array<unknown> }
    const cases: ReadonlyArray<readonly [Tensor.DataType, string, Array<unknown>, string | undefined]> = [
      ["int64", "INT64", body.data, "element 0 is a JSON number beyond ±(2^53 - 1) (read as 9007199254740992)"],
      ["int64", "INT64", [-(2 ** 53)], "element 0 is a JSON number beyond"],
      ["int64", "INT64", [9223372036854775807], "send INT64 values of that size as decimal strings"],
      ["uint64", "UINT64", [2 ** 64], "send UINT64 values of that size as decimal strings"],
      ["int64", "INT64", [Number.MAX_SAFE_INTEGER], undefined],
      ["int64", "INT64", [-Number.MAX_SAFE_INTEGER], undefined],
      ["int64", "INT64", ["9007199254740993"], undefined]
    ]
    for (const [dtype, datatype, data, refused] of cases) {
      const t = Oip.decodeTensor("m", spec(dtype, [-1]), input(datatype, [1], data))
      if (refused === undefined) {
        assert.notInstanceOf(t, InferenceError.InvalidInput, String(data[0]))
        assert.strictEqual(String((t as Tensor.Tensor<"int64">).data[0]), String(data[0]))
      } else {
        assert.instanceOf(t, InferenceError.InvalidInput, String(data[0]))
        assert.include((t as InferenceError.InvalidInput).detail, refused)
      }
    }
  })

  it("refuses a 64-bit decimal string one past the datatype's range, at either end", () => {
    const cases: ReadonlyArray<readonly [Tensor.DataType, string, string, string | undefined]> = [
      ["int64", "INT64", "9223372036854775807", undefined],
      ["int64", "INT64", "9223372036854775808", "element 0 is 9223372036854775808, out of the INT64 range"],
      ["int64", "INT64", "-9223372036854775809", "element 0 is -9223372036854775809, out of the INT64 range"],
      ["uint64", "UINT64", "18446744073709551615", undefined],
      ["uint64", "UINT64", "18446744073709551616", "element 0 is 18446744073709551616, out of the UINT64 range"],
      ["uint64", "UINT64", "-1", "element 0 is -1, out of the UINT64 range"]
    ]
    for (const [dtype, datatype, text, refused] of cases) {
      const t = Oip.decodeTensor("m", spec(dtype, [-1]), input(datatype, [1], [text]))
      if (refused === undefined) {
        assert.notInstanceOf(t, InferenceError.InvalidInput, text)
        assert.strictEqual(String((t as Tensor.Tensor<"int64">).data[0]), text)
      } else {
        assert.instanceOf(t, InferenceError.InvalidInput, text)
        assert.include((t as InferenceError.InvalidInput).detail, refused)
      }
    }
  })

  it("refuses shapes beyond the element limit before looking at the data", () => {
    let touched = false
    const data = new Proxy([], { get: (target, key) => (touched = true, Reflect.get(target, key)) })
    const r = Oip.decodeTensor("m", spec("float32"), input("FP32", [1e9, 1e9], data))
    assert.instanceOf(r, InferenceError.InvalidInput)
    assert.include((r as InferenceError.InvalidInput).detail, "exceed the limit")
    assert.isFalse(touched, "the data was never read")
    const fractional = Oip.decodeTensor("m", spec("float32"), input("FP32", [1.5, 2], []))
    assert.include((fractional as InferenceError.InvalidInput).detail, "must be non-negative integers")
  })

  it("refuses data whose element count or nesting does not match the shape", () => {
    const short = Oip.decodeTensor("m", spec("float32", [-1]), input("FP32", [3], [1, 2]))
    assert.strictEqual((short as InferenceError.InvalidInput).detail, "data has 2 elements, shape [3] needs 3")
    const ragged = Oip.decodeTensor("m", spec("float32"), input("FP32", [2, 2], [[1, 2, 3], [4]]))
    assert.include((ragged as InferenceError.InvalidInput).detail, "does not match shape [2, 2]")
    const deep = Oip.decodeTensor("m", spec("float32"), input("FP32", [2, 2], [1, 2, 3, [4]]))
    assert.include((deep as InferenceError.InvalidInput).detail, "element 3 is an array, not FP32")
  })

  it("reads nested data whose outer length equals the element count (shape [2, 1] as [[1], [2]]) as nested, not flat", () => {
    const t = Oip.decodeTensor("m", spec("float32"), input("FP32", [2, 1], [[1], [2]]))
    assert.notInstanceOf(t, InferenceError.InvalidInput)
    assert.deepStrictEqual(Array.from((t as Tensor.Tensor<"float32">).data), [1, 2])
    assert.deepStrictEqual((t as Tensor.Tensor<"float32">).dims, [2, 1])
  })

  it("refuses a rank the model does not take before walking the data, however deep it nests", () => {
    const depth = 100_000
    let data: unknown = 1
    for (let i = 0; i < depth; i++) data = [data]
    const r = Oip.decodeTensor("m", spec("float32"), input("FP32", new Array(depth).fill(1), data))
    assert.instanceOf(r, InferenceError.InvalidInput)
    assert.strictEqual((r as InferenceError.InvalidInput).detail, "rank 100000 given (dims [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, …]), the model takes rank 2 [-1, -1]")
    const flat = Oip.decodeTensor("m", spec("float32"), input("FP32", [4], [1, 2, 3, 4]))
    assert.strictEqual((flat as InferenceError.InvalidInput).detail, "rank 1 given (dims [4]), the model takes rank 2 [-1, -1]")
  })
})

describe("Oip encoding", () => {
  it("prints float32 as its shortest round-tripping decimal and non-finite values as null", () => {
    const t = Tensor.float32([0.1, 1 / 3, 100, -2.5e-8, NaN, Infinity], [6])
    const text = Oip.encodeData(t)
    assert.strictEqual(text, "[0.1,0.33333334,100,-2.5e-8,null,null]")
    const back = JSON.parse(text) as Array<number | null>
    back.slice(0, 4).forEach((v, i) => assert.strictEqual(Math.fround(v!), (t.data as Float32Array)[i]))
  })

  it("prints a negative zero as -0 in every float type (String(-0) is \"0\", which reads back as +0)", () => {
    assert.strictEqual(Oip.encodeData(Tensor.float32([-0, 0, -1], [3])), "[-0,0,-1]")
    assert.strictEqual(Oip.encodeData(Tensor.make("float64", Float64Array.of(-0, 0), [2])), "[-0,0]")
    assert.strictEqual(Oip.encodeData(Tensor.make("float16", Uint16Array.of(0x8000, 0x0000), [2])), "[-0,0]")
    assert.isTrue(Object.is(JSON.parse(Oip.encodeData(Tensor.float32([-0], [1])))[0], -0))
  })

  it("prints each float32 as Number(v.toPrecision(p)) for the least p from 6 that reads back: random bit patterns and edges", () => {
    // The definition, one toPrecision per p (what the encoder computes faster).
    const reference = (v: number): string => {
      if (!Number.isFinite(v)) return "null"
      if (Object.is(v, -0)) return "-0"
      if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v)
      for (let p = 6; p < 9; p++) {
        const s = Number(v.toPrecision(p))
        if (Math.fround(s) === v) return String(s)
      }
      return String(Number(v.toPrecision(9)))
    }
    let seed = 12345
    const bits = new Uint32Array(40_000).map(() => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0))
    const edges = [
      0, 0.1, 0.3, 9.999999, 99999.995, 0.0999999, 1e-10, 2.5e-7, 123456.7, 8.5e37, 3.4028234663852886e38, 1.1754943508222875e-38, 1e-45, 16777217, 1e20,
      // where String switches notation (10^-7, 10^21) and where the exponent gets a second digit
      1e-6, 1.5e-6, 9.999999e-7, 1e-7, 1.2345e-7, 123456789012, 1.0000001e15, 1.2e16, 9.99e20, 1e21, 4.2e21, 5e-10, 3e-38, 1.5e10
    ]
    const powers = Array.from({ length: 277 }, (_, i) => [2 ** (i - 149), 10 ** ((i - 149) / 4)]).flat()
    const values = Float32Array.from([...new Float32Array(bits.buffer), ...edges, ...edges.map((x) => -x), ...powers])
    const printed = Oip.encodeData(Tensor.float32(values, [values.length])).slice(1, -1).split(",")
    const wrong = printed.flatMap((text, i) => text === reference(values[i]!) ? [] : [`${values[i]}: ${text}, not ${reference(values[i]!)}`])
    assert.deepStrictEqual(wrong.slice(0, 5), [])
    // a few values at a time are joined as strings, many written as bytes: the same text
    const inSmallArrays = Array.from({ length: Math.ceil(values.length / 100) }, (_, i) => Oip.encodeData(Tensor.float32(values.slice(i * 100, i * 100 + 100), [Math.min(100, values.length - i * 100)])).slice(1, -1))
    assert.strictEqual(inSmallArrays.join(","), printed.join(","))
  })

  it("prints 64-bit integers exactly, booleans as true/false, strings as JSON strings", () => {
    assert.strictEqual(Oip.encodeData(Tensor.int64([-(2n ** 63n), 2n ** 53n + 1n], [2])), "[-9223372036854775808,9007199254740993]")
    assert.strictEqual(Oip.encodeData(Tensor.make("bool", Uint8Array.from([1, 0]), [2])), "[true,false]")
    assert.strictEqual(Oip.encodeData(Tensor.make("string", ["a\"b", "é"], [2])), "[\"a\\\"b\",\"é\"]")
  })

  it("writes a response with the id only when given", () => {
    const outputs = [["y", Tensor.float32([1, 2], [1, 2])] as const]
    const plain = Oip.encodeResponse({ modelName: "m", modelVersion: "3", id: undefined, outputs })
    assert.deepStrictEqual(JSON.parse(plain.json), {
      model_name: "m",
      model_version: "3",
      outputs: [{ name: "y", datatype: "FP32", shape: [1, 2], data: [1, 2] }]
    })
    assert.deepStrictEqual(plain.binary, [])
    assert.strictEqual(JSON.parse(Oip.encodeResponse({ modelName: "m", modelVersion: "3", id: "x", outputs }).json).id, "x")
  })
})

describe("binary tensor data (Triton's extension)", () => {
  const spec = (dtype: Tensor.DataType, dims: ReadonlyArray<number> = [-1, -1]): ModelMetadata.ModelMetadata => ({
    name: "m",
    version: "1",
    inputs: [{ name: "x", dtype, dims }],
    outputs: [{ name: "y", dtype, dims }]
  })
  const input = (datatype: string, shape: ReadonlyArray<number>, size: unknown) => ({ name: "x", datatype, shape, parameters: { binary_data_size: size } })
  const le = (array: ArrayBufferView) => new Uint8Array(array.buffer, array.byteOffset, array.byteLength)

  it("decodes every fixed-size datatype from little-endian bytes, and encodes them back", () => {
    const cases: ReadonlyArray<readonly [Tensor.DataType, string, ArrayBufferView & ArrayLike<unknown>]> = [
      ["float32", "FP32", Float32Array.from([1.5, -2, Number.NaN, 3e38])],
      ["float64", "FP64", Float64Array.from([1e-300, -0.1])],
      ["float16", "FP16", Uint16Array.from([0x3c00, 0xc000])],
      ["int8", "INT8", Int8Array.from([-128, 127])],
      ["int64", "INT64", BigInt64Array.from([-(2n ** 63n), 2n ** 53n + 1n])],
      ["uint64", "UINT64", BigUint64Array.from([2n ** 64n - 1n])],
      ["uint16", "UINT16", Uint16Array.from([65535])],
      ["int32", "INT32", Int32Array.from([-7, 8, 9])],
      ["bool", "BOOL", Uint8Array.from([1, 0, 1])]
    ]
    for (const [dtype, datatype, array] of cases) {
      const bytes = le(array)
      const tensors = Oip.decodeInputs(spec(dtype), [input(datatype, [1, array.length], bytes.length)], bytes)
      assert.notInstanceOf(tensors, InferenceError.InvalidInput, datatype)
      const x = (tensors as Tensor.TensorMap)["x"]!
      assert.deepStrictEqual(Array.from(x.data as ArrayLike<unknown>), Array.from(array), datatype)
      assert.deepStrictEqual(Oip.encodeBinaryData(x), bytes, datatype)
    }
  })

  it("decodes BYTES as length-prefixed UTF-8 strings, and encodes them back", () => {
    const bytes = Uint8Array.from([2, 0, 0, 0, 0x68, 0x69, 2, 0, 0, 0, 0xc3, 0xa9, 0, 0, 0, 0])
    const tensors = Oip.decodeInputs(spec("string", [-1]), [input("BYTES", [3], bytes.length)], bytes) as Tensor.TensorMap
    assert.deepStrictEqual(tensors["x"]!.data, ["hi", "é", ""])
    assert.deepStrictEqual(Oip.encodeBinaryData(tensors["x"]!), bytes)
  })

  it("takes each input's bytes in order: in place where aligned for its dtype, copied where not", () => {
    const metadata: ModelMetadata.ModelMetadata = {
      name: "m",
      version: "1",
      inputs: [
        { name: "a", dtype: "int32", dims: [-1] },
        { name: "b", dtype: "uint8", dims: [-1] },
        { name: "c", dtype: "float32", dims: [-1] },
        { name: "d", dtype: "float32", dims: [-1] }
      ],
      outputs: []
    }
    const f = new Uint8Array(new Float32Array([1.5]).buffer)
    // a at 0 (aligned), b at 8 (bytes align anywhere), d at 11 (not a multiple of 4).
    const body = Uint8Array.from([1, 0, 0, 0, 2, 0, 0, 0, 9, 8, 7, ...f])
    const tensors = Oip.decodeInputs(metadata, [
      { name: "a", datatype: "INT32", shape: [2], parameters: { binary_data_size: 8 } },
      { name: "c", datatype: "FP32", shape: [2], data: [0.5, 1] },
      { name: "b", datatype: "UINT8", shape: [3], parameters: { binary_data_size: 3 } },
      { name: "d", datatype: "FP32", shape: [1], parameters: { binary_data_size: 4 } }
    ], body) as Tensor.TensorMap
    assert.deepStrictEqual(Array.from(tensors["a"]!.data as Int32Array), [1, 2])
    assert.deepStrictEqual(Array.from(tensors["b"]!.data as Uint8Array), [9, 8, 7])
    assert.deepStrictEqual(Array.from(tensors["c"]!.data as Float32Array), [0.5, 1])
    assert.deepStrictEqual(Array.from(tensors["d"]!.data as Float32Array), [1.5])
    body.fill(0)
    assert.deepStrictEqual(Array.from(tensors["a"]!.data as Int32Array), [0, 0], "a is a view on the body")
    assert.deepStrictEqual(Array.from(tensors["b"]!.data as Uint8Array), [0, 0, 0], "b is a view on the body")
    assert.deepStrictEqual(Array.from(tensors["d"]!.data as Float32Array), [1.5], "d was copied: a Float32Array cannot start at byte 11")
  })

  const refusals: ReadonlyArray<readonly [string, ReadonlyArray<Oip.RequestInput>, Uint8Array | undefined, RegExp]> = [
    ["a size that does not fit the shape", [input("FP32", [1, 2], 4)], new Uint8Array(4), /the binary data is 4 bytes, shape \[1, 2\] of FP32 needs 8/],
    ["a size past the binary part", [input("FP32", [1, 2], 8)], new Uint8Array(4), /binary_data_size is 8 bytes, only 4 are left in the binary part/],
    ["a size without a binary part", [input("FP32", [1, 2], 8)], undefined, /no binary part \(send the Inference-Header-Content-Length header\)/],
    ["bytes left over", [input("FP32", [1, 1], 4)], new Uint8Array(6), /the binary part has 6 bytes, the inputs' binary_data_size add up to 4/],
    ["a negative size", [input("FP32", [1, 1], -4)], new Uint8Array(4), /binary_data_size must be a non-negative integer, got -4/],
    ["a size as a string", [input("FP32", [1, 1], "4")], new Uint8Array(4), /binary_data_size must be a non-negative integer, got "4"/],
    ["both data and a size", [{ ...input("FP32", [1, 1], 4), data: [1] }], new Uint8Array(4), /has both data and parameters.binary_data_size/],
    ["a BOOL byte that is not 0 or 1", [input("BOOL", [1, 2], 2)], Uint8Array.from([1, 2]), /BOOL element 1 is the byte 2, not 0 or 1/],
    ["huge dims, before any allocation", [input("FP32", [1e9, 1e9], 4)], new Uint8Array(4), /exceed the limit/]
  ]
  for (const [name, inputs, body, expected] of refusals) {
    it(`refuses ${name}`, () => {
      const dtype = inputs[0]!.datatype === "BOOL" ? "bool" : "float32"
      const error = Oip.decodeInputs(spec(dtype), inputs, body)
      assert.instanceOf(error, InferenceError.InvalidInput)
      assert.match((error as InferenceError.InvalidInput).message, expected)
    })
  }

  it("frames a body: the JSON's bytes then each binary part, split back at the header's length", () => {
    const { body, jsonLength } = Oip.binaryBody({ json: "{\"é\":1}", binary: [Uint8Array.from([1, 2]), Uint8Array.from([3])] })
    assert.strictEqual(jsonLength, 8, "bytes, not characters (é is two)")
    assert.deepStrictEqual(Oip.splitBinaryBody(body, String(jsonLength)), { text: "{\"é\":1}", binary: Uint8Array.from([1, 2, 3]) })
    assert.deepStrictEqual(Oip.splitBinaryBody(body, String(body.length)), { text: "{\"é\":1}\u0001\u0002\u0003", binary: new Uint8Array(0) }, "a header of the whole body: no binary part")
    for (const header of ["12", "-1", "8.0", " 8", "abc", ""]) {
      assert.match(Oip.splitBinaryBody(body, header) as string, /must be a byte count within the body's 11 bytes/, header)
    }
  })

  it("refuses BYTES that end inside an element or leave bytes after the last, and a count the bytes cannot hold before allocating", () => {
    const short = Oip.decodeInputs(spec("string", [-1]), [input("BYTES", [1], 5)], Uint8Array.from([9, 0, 0, 0, 65]))
    assert.match((short as InferenceError.InvalidInput).message, /binary data ends inside element 0 of 1/)
    const huge = Oip.decodeInputs(spec("string", [-1]), [input("BYTES", [2 ** 28], 4)], new Uint8Array(4))
    assert.match((huge as InferenceError.InvalidInput).message, /binary data of 4 bytes cannot hold 268435456 BYTES elements/)
    const long = Oip.decodeInputs(spec("string", [-1]), [input("BYTES", [1], 6)], Uint8Array.from([1, 0, 0, 0, 65, 66]))
    assert.match((long as InferenceError.InvalidInput).message, /binary data has 1 bytes after the 1 elements/)
  })

  it("BYTES binary elements: a leading byte-order mark is kept, bytes that are not UTF-8 are refused naming the element (never replaced by U+FFFD)", () => {
    const bom = Oip.decodeInputs(spec("string", [-1]), [input("BYTES", [1], 7)], Uint8Array.from([3, 0, 0, 0, 0xef, 0xbb, 0xbf]))
    assert.deepStrictEqual((bom as Record<string, Tensor.Tensor>).x!.data, ["\uFEFF"])
    const jpeg = Oip.decodeInputs(spec("string", [-1]), [input("BYTES", [2], 13)], Uint8Array.from([2, 0, 0, 0, 65, 66, 3, 0, 0, 0, 0xff, 0xd8, 0xff]))
    assert.match((jpeg as InferenceError.InvalidInput).message, /BYTES element 1 is not valid UTF-8/)
    // Valid UTF-8 with a NUL: onnxruntime-node would cut the string there ("a"), so refused.
    const nul = Oip.decodeInputs(spec("string", [-1]), [input("BYTES", [2], 13)], Uint8Array.from([2, 0, 0, 0, 65, 66, 3, 0, 0, 0, 0x61, 0x00, 0x62]))
    assert.match((nul as InferenceError.InvalidInput).message, /BYTES element 1 holds a NUL character \(U\+0000\), where onnxruntime would cut the string/)
  })

  it("TensorCodec.unsupportedParameter: shared memory on inputs and outputs; other parameters (classification included) pass", () => {
    const cases: ReadonlyArray<readonly [Record<string, unknown> | undefined, boolean, RegExp | undefined]> = [
      [undefined, false, undefined],
      [{ binary_data_size: 4 }, false, undefined],
      [{ binary_data: true }, true, undefined],
      [{ shared_memory_region: "r" }, false, /^parameters.shared_memory_region: the shared memory extension is not supported; send the data in the request \(data, or binary_data_size\)$/],
      [{ shared_memory_byte_size: 4 }, false, /^parameters.shared_memory_byte_size: the shared memory extension/],
      [{ shared_memory_offset: 0 }, true, /^parameters.shared_memory_offset: the shared memory extension is not supported; send the data in the request \(the output comes back in the response\)$/],
      [{ shared_memory_region: "r" }, true, /shared memory extension is not supported/],
      [{ classification: 3 }, true, undefined],
      [{ classification: 3 }, false, undefined]
    ]
    for (const [parameters, output, expected] of cases) {
      const r = TensorCodec.unsupportedParameter(parameters, output)
      if (expected === undefined) assert.isUndefined(r, JSON.stringify(parameters))
      else assert.match(r ?? "", expected, JSON.stringify(parameters))
    }
  })

  it("returns as binary the outputs asked for: per output, or all by binary_data_output unless an output says false", () => {
    const metadata: ModelMetadata.ModelMetadata = { name: "m", version: "1", inputs: [], outputs: [{ name: "a", dtype: "float32", dims: [1] }, { name: "b", dtype: "float32", dims: [1] }] }
    const of = (request: Oip.InferRequest) => [...(Oip.binaryOutputsOf(metadata, request, ["a", "b"]) as ReadonlySet<string>)]
    assert.deepStrictEqual(of({ inputs: [] }), [])
    assert.deepStrictEqual(of({ inputs: [], outputs: [{ name: "b", parameters: { binary_data: true } }] }), ["b"])
    assert.deepStrictEqual(of({ inputs: [], parameters: { binary_data_output: true } }), ["a", "b"])
    assert.deepStrictEqual(of({ inputs: [], parameters: { binary_data_output: true }, outputs: [{ name: "a", parameters: { binary_data: false } }] }), ["b"])
    const bad = Oip.binaryOutputsOf(metadata, { inputs: [], outputs: [{ name: "a", parameters: { binary_data: "yes" } }] }, ["a"])
    assert.match((bad as InferenceError.InvalidInput).message, /parameters.binary_data must be a boolean, got "yes"/)
    const encoded = Oip.encodeResponse({ modelName: "m", modelVersion: "1", id: undefined, outputs: [["a", Tensor.float32([1], [1])], ["b", Tensor.float32([2], [1])]], binaryOutputs: new Set(["b"]) })
    assert.deepStrictEqual(JSON.parse(encoded.json).outputs, [
      { name: "a", datatype: "FP32", shape: [1], data: [1] },
      { name: "b", datatype: "FP32", shape: [1], parameters: { binary_data_size: 4 } }
    ])
    assert.deepStrictEqual(encoded.binary, [new Uint8Array(Float32Array.from([2]).buffer)])
  })
})

describe("Oip.rawBinaryRequest", () => {
  const model = (dtype: Tensor.DataType, dims: ReadonlyArray<number>): ModelMetadata.ModelMetadata => ({
    name: "m", version: "1", inputs: [spec(dtype, dims)], outputs: [{ name: "y", dtype, dims }]
  })

  it("a BYTES input of one element takes the whole body as that element, its length before it", () => {
    const raw = Oip.rawBinaryRequest(model("string", [1]), new Uint8Array([104, 105]))
    if (raw instanceof InferenceError.InvalidInput) return assert.fail(raw.message)
    assert.deepStrictEqual(raw.body, { inputs: [{ name: "x", shape: [1], datatype: "BYTES", parameters: { binary_data_size: 6 } }], parameters: { binary_data_output: true } })
    assert.deepStrictEqual(Array.from(raw.binary), [2, 0, 0, 0, 104, 105])
    const prepared = Oip.prepare(model("string", [1]), raw.body, raw.binary)
    if (prepared instanceof InferenceError.InvalidInput) return assert.fail(prepared.message)
    assert.deepStrictEqual(prepared.inputs["x"]!.data, ["hi"])
    const many = Oip.rawBinaryRequest(model("string", [-1]), new Uint8Array([104, 105]))
    assert.match((many as InferenceError.InvalidInput).message, /of BYTES needs an input of one element; "x" is \[-1\]/)
  })

  it("deduces the one variable-size dim from the byte count, rounding down as Triton, so that a ragged body is refused by its length", () => {
    const raw = Oip.rawBinaryRequest(model("int16", [3, -1]), new Uint8Array(14))
    if (raw instanceof InferenceError.InvalidInput) return assert.fail(raw.message)
    assert.deepStrictEqual(raw.body.inputs[0]!.shape, [3, 2])
    const prepared = Oip.prepare(model("int16", [3, -1]), raw.body, raw.binary)
    assert.match((prepared as InferenceError.InvalidInput).message, /the binary data is 14 bytes, shape \[3, 2\] of INT16 needs 12/)
  })

  it("takes a batching model's batch dim as 1 (a batch of one), not as the dim to deduce: two rows' bytes are refused", () => {
    const batching: ModelMetadata.ModelMetadata = { ...model("float32", [-1, 4]), batching: { ...BatchPolicy.disabled, enabled: true } }
    const one = Oip.rawBinaryRequest(batching, new Uint8Array(16))
    if (one instanceof InferenceError.InvalidInput) return assert.fail(one.message)
    assert.deepStrictEqual(one.body.inputs[0]!.shape, [1, 4])
    const two = Oip.rawBinaryRequest(batching, new Uint8Array(32))
    if (two instanceof InferenceError.InvalidInput) return assert.fail(two.message)
    assert.deepStrictEqual(two.body.inputs[0]!.shape, [1, 4])
    assert.match((Oip.prepare(batching, two.body, two.binary) as InferenceError.InvalidInput).message, /the binary data is 32 bytes, shape \[1, 4\] of FP32 needs 16/)
    // Without batching, the same dim is the one deduced from the byte count.
    const unbatched = Oip.rawBinaryRequest(model("float32", [-1, 4]), new Uint8Array(32))
    assert.deepStrictEqual((unbatched as Exclude<typeof unbatched, InferenceError.InvalidInput>).body.inputs[0]!.shape, [2, 4])
  })
})

describe("Oip.jsonText", () => {
  it("a body longer than a string can be is refused as such, not as bytes that are not UTF-8", () => {
    // Half a gigabyte to make for real; a view that says it is that long stands in for it.
    const huge = Object.defineProperty(new Uint8Array(1), "length", { value: Oip.maxJsonTextBytes + 1 })
    assert.isUndefined(Oip.jsonText(huge))
    assert.strictEqual(Oip.undecodableMessage(huge), `the request's JSON is ${Oip.maxJsonTextBytes + 1} bytes, more than the ${Oip.maxJsonTextBytes} a JSON text can be here (send large tensors as binary data)`)
    assert.strictEqual(Oip.undecodableMessage(Uint8Array.of(0xff)), Oip.notUtf8Message)
    assert.strictEqual(Oip.jsonText(Buffer.from('{"a": 1}')), '{"a": 1}')
  })
})

describe("redact", () => {
  it("cuts a message that quotes a huge field to maxMessageLength characters", () => {
    const long = `datatype ${JSON.stringify("A".repeat(1_000_000))} is not supported`
    const text = redact(long)
    assert.strictEqual(text.length, maxMessageLength)
    assert.isTrue(text.startsWith("datatype \"AAAA") && text.endsWith("A…"))
    assert.strictEqual(redact("short"), "short")
  })

  it("cuts between characters, never inside a surrogate pair (a lone surrogate is not UTF-8 text)", () => {
    for (const prefix of ["", "x"]) {
      const invalid = new InferenceError.InvalidInput({ modelId: "mlp", detail: prefix + "😀".repeat(2_000) })
      const text = clientMessage(invalid, [])
      // Well formed: UTF-8 carries it unchanged (a lone surrogate would come back as U+FFFD).
      assert.strictEqual(Buffer.from(text, "utf8").toString("utf8"), text, `prefix ${JSON.stringify(prefix)}`)
      assert.isAtMost(text.length, maxMessageLength)
      assert.isTrue(text.endsWith("😀…"))
    }
  })

  it("drops stack frames and absolute paths, keeps paths relative to the repository", () => {
    assert.strictEqual(
      redact("Load model from /srv/models/a/1/model.onnx failed: bad\n    at Session.create (/app/node_modules/x.js:1:2)"),
      "Load model from model.onnx failed: bad"
    )
    assert.strictEqual(redact("failed to load /srv/models/a/model.onnx", ["/srv/models"]), "failed to load <repository>/a/model.onnx")
    assert.strictEqual(redact("mlp/1/model.onnx is empty"), "mlp/1/model.onnx is empty")
    assert.strictEqual(redact("C:\\models\\a\\model.onnx: missing"), "model.onnx: missing")
  })

  it("repositoryRoots names a symlinked repository by its real path too, so messages that quote it (with a space in it) are redacted", () => {
    const base = Fs.mkdtempSync(Path.join(Os.tmpdir(), "roots-"))
    try {
      const real = Path.join(base, "real dir")
      Fs.mkdirSync(real)
      Fs.symlinkSync(real, Path.join(base, "link"))
      const roots = repositoryRoots(Path.join(base, "link"))
      assert.include(roots, real)
      assert.strictEqual(redact(`Load model from ${real}/garbage/model.onnx failed`, roots), "Load model from <repository>/garbage/model.onnx failed")
      // The longer root first: one that is a prefix of another does not cut it in two.
      assert.strictEqual(redact("/srv/models-real/a/model.onnx is empty", ["/srv/models", "/srv/models-real"]), "<repository>/a/model.onnx is empty")
      assert.deepStrictEqual(repositoryRoots("/no/such/repository"), ["/no/such/repository"])
    } finally {
      Fs.rmSync(base, { recursive: true, force: true })
    }
  })

  it("clientMessage quotes an invalid input as the client sent it (a name like a path too), and redacts any other failure", () => {
    const invalid = new InferenceError.InvalidInput({ modelId: "mlp", input: "/home/user/input", detail: "unknown input; the model takes input" })
    assert.include(clientMessage(invalid, ["/home"]), "\"/home/user/input\"")
    const failed = new InferenceError.RunFailed({ modelId: "mlp", requestId: "r1", detail: "Load model from /srv/models/mlp/1/model.onnx failed" })
    assert.include(clientMessage(failed, ["/srv/models"]), "Load model from <repository>/mlp/1/model.onnx failed")
    const huge = new InferenceError.InvalidInput({ modelId: "mlp", detail: "x".repeat(10_000) })
    assert.strictEqual(clientMessage(huge, []).length, maxMessageLength)
  })
})

describe("binary tensor data, random", () => {
  const datatypes = ["FP32", "FP16", "INT64", "UINT8", "BOOL", "BYTES", "FP64", "INT8"] as const
  const dtypeOf = (datatype: string) => Oip.dtypeOf(datatype) ?? "float32"
  const BinaryCase = Schema.Struct({
    datatype: Schema.Literals(datatypes),
    modelDatatype: Schema.Literals(datatypes),
    shape: Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: -2, maximum: 6 }))).check(Schema.isMaxLength(3)),
    size: Schema.Int.check(Schema.isBetween({ minimum: -1, maximum: 80 })),
    bytes: Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 255 }))).check(Schema.isMaxLength(80))
  })
  it.prop(
    "any header and bytes: a tensor of exactly the shape, or an InvalidInput; never a throw",
    [BinaryCase],
    ([c]) => {
      const metadata: ModelMetadata.ModelMetadata = {
        name: "m",
        version: "1",
        inputs: [{ name: "x", dtype: dtypeOf(c.modelDatatype), dims: c.shape.map(() => -1) }],
        outputs: []
      }
      const result = Oip.decodeInputs(metadata, [{ name: "x", datatype: c.datatype, shape: c.shape, parameters: { binary_data_size: c.size } }], Uint8Array.from(c.bytes))
      if (result instanceof InferenceError.InvalidInput) return
      const x = result["x"]!
      assert.strictEqual(x.data.length, Tensor.elementCount(c.shape))
      assert.strictEqual(c.size, c.bytes.length)
      assert.strictEqual(c.datatype, c.modelDatatype)
    },
    { arbitrary: { runs: 2000 } }
  )
})

describe("Oip.metadataVersions", () => {
  const status = (name: string, version: string, state: "READY" | "UNAVAILABLE") => ({ name, version, state })
  const metadata = (version: string) => ({ name: "m", version }) as unknown as ModelMetadata.ModelMetadata
  const models = [status("m", "1", "READY"), status("m", "2", "UNAVAILABLE"), status("m", "3", "READY"), status("other", "4", "READY")]
  const cases: ReadonlyArray<readonly [string, ReadonlyArray<ReturnType<typeof status>>, string, string | undefined, ReadonlyArray<string>]> = [
    ["no version asked: the model's ready versions, not the unavailable one nor another model's", models, "3", undefined, ["1", "3"]],
    ["a version asked: that version alone", models, "1", "1", ["1"]],
    ["a pool that lists nothing: the version that answered", [], "7", undefined, ["7"]]
  ]
  for (const [name, listed, answered, asked, expected] of cases) {
    it(name, () => assert.deepStrictEqual(Oip.metadataVersions(listed, metadata(answered), asked), expected))
  }
})

describe("Oip sequence parameters", () => {
  const metadata: ModelMetadata.ModelMetadata = { name: "m", version: "1", inputs: [spec("float32")], outputs: [{ name: "y", dtype: "float32", dims: [-1, -1] }] }
  const prepare = (parameters: unknown) => {
    const body = Oip.decodeInferRequest({ ...(parameters === undefined ? {} : { parameters }), inputs: [input("FP32", [1, 1], [1])] })
    if ("error" in body) return body.error
    const prepared = Oip.prepare(metadata, body)
    return prepared instanceof InferenceError.InvalidInput ? prepared.message : prepared.sequence
  }

  it("reads sequence_id (a non-negative integer or text; 0 and \"\" mean none), sequence_start and sequence_end", () => {
    const table: ReadonlyArray<readonly [unknown, unknown]> = [
      [undefined, undefined],
      [{ sequence_id: 0 }, undefined],
      [{ sequence_id: "" }, undefined],
      [{ sequence_id: 42 }, { id: 42, start: false, end: false }],
      [{ sequence_id: "abc", sequence_start: true }, { id: "abc", start: true, end: false }],
      [{ sequence_id: 2 ** 53 - 1, sequence_end: true }, { id: 2 ** 53 - 1, start: false, end: true }],
      [{ sequence_start: false }, undefined]
    ]
    for (const [parameters, expected] of table) assert.deepStrictEqual(prepare(parameters), expected, JSON.stringify(parameters))
  })

  it("refuses an id that is not one, and flags without an id", () => {
    const table: ReadonlyArray<readonly [unknown, string]> = [
      [{ sequence_id: -1 }, "sequence_id"],
      [{ sequence_id: 1.5 }, "sequence_id"],
      [{ sequence_id: 2 ** 53 }, "a larger id goes as text"],
      [{ sequence_id: true }, "sequence_id"],
      [{ sequence_id: "x".repeat(257) }, "sequence_id"],
      [{ sequence_id: 1, sequence_start: "yes" }, "sequence_start"],
      [{ sequence_start: true }, "sequence_start and sequence_end need a sequence_id"],
      [{ sequence_id: 0, sequence_end: true }, "need a sequence_id"]
    ]
    for (const [parameters, expected] of table) assert.include(String(prepare(parameters)), expected, JSON.stringify(parameters))
  })
})
