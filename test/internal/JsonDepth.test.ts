import { assert, describe, it } from "@effect/vitest"
import * as JsonDepth from "../../src/internal/JsonDepth.ts"

const nested = (levels: number, open = "[", close = "]") => open.repeat(levels) + "0" + close.repeat(levels)
/** `[0,[0,[0,…]]]`: one opener per level among values, so that no run of openers gives it away. */
const interleaved = (levels: number) => "[0,".repeat(levels) + "0" + "]".repeat(levels)
/** Many openers, shallow: `[[0],[0],…]`, as nested tensor data with many rows. */
const manyRows = (rows: number) => `[${Array.from({ length: rows }, () => "[0]").join(",")}]`

describe("JsonDepth.nestsDeeperThan", () => {
  it("refuses deep nesting only, whatever its form, and never a string's brackets", () => {
    const cases: ReadonlyArray<readonly [string, string, boolean]> = [
      ["a flat body", JSON.stringify({ inputs: [{ data: [1, 2, 3] }] }), false],
      ["64 levels (the limit), with many openers", `${manyRows(20_000).slice(0, -1)},${nested(63)}]`, false],
      ["65 levels, with many openers", `${manyRows(20_000).slice(0, -1)},${nested(64)}]`, true],
      ["a million levels of arrays", nested(1_000_000), true],
      ["a million levels of objects", "{\"a\":".repeat(1_000_000) + "0" + "}".repeat(1_000_000), true],
      ["a million levels among values", interleaved(1_000_000), true],
      ["20,000 shallow rows", manyRows(20_000), false],
      ["brackets inside strings", JSON.stringify({ s: Array.from({ length: 20_000 }, () => "[[[[").join(""), t: "\\\"[[" }), false],
      ["an escaped quote does not end a string", `["\\"${"[".repeat(20_000)}"]`, false],
      ["an escaped backslash before a quote does end it", `[${JSON.stringify("a\\")}, ${nested(20_000)}]`, true],
      ["deep nesting after many strings with escapes", `[${Array.from({ length: 5_000 }, () => JSON.stringify("\\\"x\\")).join(",")},${nested(20_000)}]`, true],
      // Few openers: not scanned, its parse is cheap however deep (the schema refuses it after).
      ["5,000 levels, few openers", nested(5_000), false]
    ]
    for (const [what, text, deeper] of cases) {
      if (text.length < 100_000) assert.doesNotThrow(() => JSON.parse(text), undefined, undefined, `${what} is JSON`)
      assert.strictEqual(JsonDepth.nestsDeeperThan(text), deeper, what)
    }
  })

  it("everything it lets through parses in a bounded time: no more than 10,000 levels unscanned", () => {
    assert.isFalse(JsonDepth.nestsDeeperThan(nested(10_000)))
    assert.isTrue(JsonDepth.nestsDeeperThan(nested(10_001)))
  })
})

describe("JsonDepth.inferBodyProblem", () => {
  const body = (inputs: string) => `{"inputs": [${inputs}]}`
  const row = `{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}`
  it("passes a request body; refuses, before JSON.parse, one deeper than maxDepth, or with more objects or arrays than any request holds", () => {
    assert.isUndefined(JsonDepth.inferBodyProblem(body(row), "the body"))
    // 1 000 rows of nested data: 1 002 arrays, few objects.
    assert.isUndefined(JsonDepth.inferBodyProblem(body(`{"name": "x", "shape": [1000, 2], "datatype": "FP32", "data": [${Array(1000).fill("[1, 2]").join(",")}]}`), "the body"))
    assert.strictEqual(JsonDepth.inferBodyProblem(`{"inputs": ${"[".repeat(20_000)}${"]".repeat(20_000)}}`, "the body"), JsonDepth.tooDeepMessage("the body"))
    // What 16 KB of gzip inflated to: objects and empty arrays by the million.
    assert.match(JsonDepth.inferBodyProblem(body(Array(JsonDepth.maxObjects + 1).fill("{}").join(",")), "the body") ?? "", /^the body holds more than 4096 objects/)
    assert.isUndefined(JsonDepth.inferBodyProblem(body(Array(JsonDepth.maxObjects - 1).fill("{}").join(",")), "the body"))
    assert.match(JsonDepth.inferBodyProblem(`{"inputs": [${Array(JsonDepth.maxArrays + 1).fill("[]").join(",")}]}`, "the body") ?? "", /^the body holds more than 1048576 arrays/)
    // Braces inside strings (BYTES data) are not objects.
    assert.isUndefined(JsonDepth.inferBodyProblem(body(`{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["${"{".repeat(10_000)}"]}`), "the body"))
  })
})
