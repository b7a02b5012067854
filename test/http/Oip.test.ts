import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import * as Oip from "../../src/http/Oip.ts"
import { maxMessageLength, redact } from "../../src/http/Routes.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import * as Tensor from "../../src/Tensor.ts"

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
    const empty = Oip.decodeTensor("m", spec("float32"), input("FP32", [0, 4], []))
    assert.deepStrictEqual(empty, Tensor.float32([], [0, 4]))
  })

  it("keeps 64-bit integers given as decimal strings exact", () => {
    const t = Oip.decodeTensor("m", spec("uint64", [-1]), input("UINT64", [2], ["18446744073709551615", 7]))
    assert.deepStrictEqual(Array.from((t as Tensor.Tensor<"uint64">).data), [18446744073709551615n, 7n])
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

  it("prints 64-bit integers exactly, booleans as true/false, strings as JSON strings", () => {
    assert.strictEqual(Oip.encodeData(Tensor.int64([-(2n ** 63n), 2n ** 53n + 1n], [2])), "[-9223372036854775808,9007199254740993]")
    assert.strictEqual(Oip.encodeData(Tensor.make("bool", Uint8Array.from([1, 0]), [2])), "[true,false]")
    assert.strictEqual(Oip.encodeData(Tensor.make("string", ["a\"b", "é"], [2])), "[\"a\\\"b\",\"é\"]")
  })

  it("writes a response with the id only when given", () => {
    const outputs = [["y", Tensor.float32([1, 2], [1, 2])] as const]
    assert.deepStrictEqual(JSON.parse(Oip.encodeResponse({ modelName: "m", modelVersion: "3", id: undefined, outputs })), {
      model_name: "m",
      model_version: "3",
      outputs: [{ name: "y", datatype: "FP32", shape: [1, 2], data: [1, 2] }]
    })
    assert.strictEqual(JSON.parse(Oip.encodeResponse({ modelName: "m", modelVersion: "3", id: "x", outputs })).id, "x")
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

  it("drops stack frames and absolute paths, keeps paths relative to the repository", () => {
    assert.strictEqual(
      redact("Load model from /srv/models/a/1/model.onnx failed: bad\n    at Session.create (/app/node_modules/x.js:1:2)"),
      "Load model from model.onnx failed: bad"
    )
    assert.strictEqual(redact("failed to load /srv/models/a/model.onnx", ["/srv/models"]), "failed to load <repository>/a/model.onnx")
    assert.strictEqual(redact("mlp/1/model.onnx is empty"), "mlp/1/model.onnx is empty")
    assert.strictEqual(redact("C:\\models\\a\\model.onnx: missing"), "model.onnx: missing")
  })
})
