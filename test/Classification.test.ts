/**
 * Classification (Triton's classification extension) as a pure function: the top classes of an
 * output, row by row, written as Triton writes them ("<value>:<index>", `std::to_string` values).
 */
import { assert, describe, it } from "@effect/vitest"
import * as Classification from "../src/Classification.ts"
import * as Tensor from "../src/Tensor.ts"
import { toHalfBits } from "../src/internal/Float16.ts"

const strings = (t: Tensor.Tensor<"string">) => ({ dims: t.dims, data: Array.from(t.data) })

describe("Classification", () => {
  it("one row: the highest values first, equal values in index order, NaN last; a count past the elements gives them all", () => {
    const t = Tensor.float32([0.25, 3, -1, 3, Number.NaN, 0], [6])
    assert.deepStrictEqual(strings(Classification.classify(t, 2, null)), { dims: [2], data: ["3.000000:1", "3.000000:3"] })
    assert.deepStrictEqual(strings(Classification.classify(t, 10, null)), {
      dims: [6],
      data: ["3.000000:1", "3.000000:3", "0.250000:0", "0.000000:5", "-1.000000:2", "nan:4"]
    })
  })

  it("writes values as C++'s std::to_string: integers as they are (64-bit exactly), floating point with six decimals", () => {
    const cases: ReadonlyArray<readonly [Tensor.Tensor, ReadonlyArray<string>]> = [
      [Tensor.make("float64", Float64Array.of(0.1234567, Infinity, -Infinity, 1e22), [4]), ["inf:1", "10000000000000000000000.000000:3", "0.123457:0"]],
      [Tensor.make("float16", Uint16Array.of(toHalfBits(0.5), toHalfBits(-2)), [2]), ["0.500000:0", "-2.000000:1"]],
      // std::to_string(-0.0) is "-0.000000"; (-0).toFixed(6) is "0.000000".
      [Tensor.float32([-0, -1e-7, -1], [3]), ["-0.000000:0", "-0.000000:1", "-1.000000:2"]],
      // 2^53 + 1 above 2^53: ordered exactly, not as the doubles they round to.
      [Tensor.int64([9007199254740992n, 9007199254740993n, -5n], [3]), ["9007199254740993:1", "9007199254740992:0", "-5:2"]],
      [Tensor.make("uint64", BigUint64Array.of(18446744073709551615n, 0n), [2]), ["18446744073709551615:0", "0:1"]],
      [Tensor.make("int8", Int8Array.of(-3, 7), [2]), ["7:1", "-3:0"]],
      [Tensor.make("uint32", Uint32Array.of(4294967295, 1), [2]), ["4294967295:0", "1:1"]]
    ]
    for (const [tensor, expected] of cases) {
      assert.deepStrictEqual(Array.from(Classification.classify(tensor, 3, null).data), expected, tensor.dtype)
    }
  })

  it("rows along the batch axis, each apart: [rows, count]; an axis other than the first too", () => {
    const byRow = Tensor.float32([1, 5, 2, 9, 0, 4], [2, 3])
    assert.deepStrictEqual(strings(Classification.classify(byRow, 2, 0)), { dims: [2, 2], data: ["5.000000:1", "2.000000:2", "9.000000:0", "4.000000:2"] })
    // Batch axis 1 of [3, 2]: row r is the column r (elements r, r + 2, r + 4).
    const byColumn = Tensor.float32([1, 9, 5, 0, 2, 4], [3, 2])
    assert.deepStrictEqual(strings(Classification.classify(byColumn, 1, 1)), { dims: [2, 1], data: ["5.000000:1", "9.000000:0"] })
    // No rows: no classes.
    assert.deepStrictEqual(strings(Classification.classify(Tensor.float32([], [0, 3]), 2, 0)), { dims: [0, 2], data: [] })
  })

  it("labels: a class with a label is value:index:label; an empty or missing label adds nothing", () => {
    const t = Tensor.float32([0.1, 0.9, 0.5, 0.7], [1, 4])
    assert.deepStrictEqual(Array.from(Classification.classify(t, 4, 0, ["cat", "dog", ""]).data), ["0.900000:1:dog", "0.700000:3", "0.500000:2", "0.100000:0:cat"])
  })

  it("countOf: a positive integer, else why not", () => {
    assert.strictEqual(Classification.countOf(3), 3)
    for (const bad of [0, -1, 2.5, "3", true, null, Number.NaN, 2 ** 32]) {
      const r = Classification.countOf(bad)
      assert.isString(r, String(bad))
      assert.match(r as string, /^parameters.classification must be a positive integer \(the number of classes to return\), got /)
    }
  })

  it("supports numeric outputs only", () => {
    for (const dtype of Tensor.dataTypes) assert.strictEqual(Classification.supports(dtype), dtype !== "bool" && dtype !== "string", dtype)
  })
})
