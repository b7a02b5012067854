/**
 * The CLI's NDJSON records: both input shapes, every kind of malformed line named with its
 * line number and reason, and the output lines for each kind of result.
 */
import { assert, describe, it } from "@effect/vitest"
import { counterSequence, counterSignature } from "../fixtures/CounterPool.ts"
import { Duration } from "effect"
import * as Records from "../../src/cli/Records.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import * as InferenceResult from "../../src/InferenceResult.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"
import * as Tensor from "../../src/Tensor.ts"

const metadata: ModelMetadata.ModelMetadata = {
  name: "m",
  version: "1",
  inputs: [
    { name: "x", dtype: "float32", dims: [-1, 2] },
    { name: "n", dtype: "int64", dims: [] }
  ],
  outputs: [{ name: "y", dtype: "float32", dims: [-1, 2] }]
}

const x = { datatype: "FP32", shape: [1, 2], data: [0.5, -1] }
const n = { datatype: "INT64", shape: [], data: ["9007199254740993"] }

const decodeOk = (text: string, line = 1): Records.Record => {
  const decoded = Records.decode(metadata, line, text)
  if (Records.isMalformed(decoded)) throw new Error(decoded.reason)
  return decoded
}

const malformedReason = (text: string): string => {
  const decoded = Records.decode(metadata, 7, text)
  assert.isTrue(Records.isMalformed(decoded), `decoded: ${text}`)
  assert.strictEqual((decoded as Records.Malformed).line, 7)
  return (decoded as Records.Malformed).reason
}

describe("Records", () => {
  it("decodes a tensor map line", () => {
    const record = decodeOk(JSON.stringify({ x, n }), 3)
    assert.strictEqual(record.line, 3)
    assert.isUndefined(record.id)
    assert.deepStrictEqual(Array.from(record.inputs["x"]!.data as Float32Array), [0.5, -1])
    assert.deepStrictEqual(record.inputs["x"]!.dims, [1, 2])
    assert.strictEqual((record.inputs["n"]!.data as BigInt64Array)[0], 9007199254740993n)
    assert.isUndefined(record.priority)
  })

  it("decodes an OIP request body with its id, priority and timeout", () => {
    const record = decodeOk(JSON.stringify({
      id: "r1",
      parameters: { priority: 1, timeout: 250_000 },
      inputs: [{ name: "x", ...x }, { name: "n", ...n }]
    }))
    assert.strictEqual(record.id, "r1")
    assert.strictEqual(record.priority, "Critical")
    assert.strictEqual(Duration.toMillis(record.timeout!), 250)
  })

  it("accepts data nested as the shape", () => {
    const record = decodeOk(JSON.stringify({ x: { datatype: "FP32", shape: [2, 2], data: [[1, 2], [3, 4]] }, n }))
    assert.deepStrictEqual(Array.from(record.inputs["x"]!.data as Float32Array), [1, 2, 3, 4])
  })

  it("a model without inputs takes an empty request ({\"inputs\": []} or {}), as the server does", () => {
    const noInputs: ModelMetadata.ModelMetadata = { ...metadata, inputs: [] }
    for (const text of ["{\"inputs\": []}", "{}", "{\"id\": \"a\", \"inputs\": []}"]) {
      const decoded = Records.decode(noInputs, 1, text)
      assert.isFalse(Records.isMalformed(decoded), text)
      if (!Records.isMalformed(decoded)) assert.deepStrictEqual(decoded.inputs, {})
    }
  })

  it("names why a line is malformed", () => {
    assert.include(malformedReason("{nope"), "not JSON")
    assert.include(malformedReason("[1, 2]"), "expected a JSON object")
    assert.include(malformedReason("{}"), "no input tensors")
    assert.include(malformedReason(JSON.stringify({ x: 3, n })), "\"x\" is not a tensor")
    assert.include(malformedReason(JSON.stringify({ x, n, z: x })), "unknown input")
    assert.include(malformedReason(JSON.stringify({ x: { ...x, datatype: "FP64" }, n })), "the model takes FP32")
    assert.include(malformedReason(JSON.stringify({ x: { ...x, data: [1] }, n })), "does not match shape [1, 2]")
    assert.include(malformedReason(JSON.stringify({ x: { ...x, shape: [1, 3], data: [1, 2, 3] }, n })), "dim 1")
    assert.include(malformedReason(JSON.stringify({ x })), "\"n\"")
    assert.include(malformedReason(JSON.stringify({ inputs: [{ name: "x", ...x }], parameters: { priority: -1 } })), "priority")
    assert.include(malformedReason(JSON.stringify({ x: { datatype: "FP32", data: [1, 2] }, n })), "invalid tensor map")
  })

  it("treats whitespace-only lines as blank", () => {
    assert.isTrue(Records.isBlank(""))
    assert.isTrue(Records.isBlank("  \r"))
    assert.isFalse(Records.isBlank("{}"))
  })

  it("encodes each kind of result as one JSON line naming the input line", () => {
    const success = InferenceResult.Success({
      requestId: "q",
      outputs: { y: Tensor.float32([0.1, 2], [1, 2]), k: Tensor.int64([9007199254740993n], [1]) },
      latencyMs: 1,
      modelVersion: "1",
      deviceUsed: "cpu"
    })
    const text = Records.encode({ line: 4, id: "r" }, success)
    assert.notInclude(text, "\n")
    assert.strictEqual(text, "{\"line\":4,\"id\":\"r\",\"outputs\":{\"y\":{\"datatype\":\"FP32\",\"shape\":[1,2],\"data\":[0.1,2]},\"k\":{\"datatype\":\"INT64\",\"shape\":[1],\"data\":[9007199254740993]}}}")

    const failed = InferenceResult.Failed({
      requestId: "q",
      error: InferenceError.make(new InferenceError.RunFailed({ modelId: "m", requestId: "q", detail: "boom" })),
      elapsedMs: 1
    })
    assert.deepStrictEqual(JSON.parse(Records.encode({ line: 5 }, failed)), {
      line: 5,
      error: { reason: "RunFailed", message: "run of model \"m\" failed for request q: boom" }
    })
    assert.deepInclude(JSON.parse(Records.encode({ line: 6 }, InferenceResult.TimedOut({ requestId: "q", elapsedMs: 30.4 }))).error, {
      reason: "DeadlineExceeded"
    })
    assert.deepStrictEqual(JSON.parse(Records.encode({ line: 7 }, InferenceResult.Cancelled({ requestId: "q", reason: "stop" }))).error, {
      reason: "Cancelled",
      message: "stop"
    })
  })
})

describe("Records of a stateful model", () => {
  const counter = { name: "counter", version: "1", ...counterSignature, sequence: counterSequence() }
  const body = (parameters: unknown, inputs = [{ name: "x", datatype: "FP32", shape: [1, 1], data: [1] }]) => JSON.stringify({ parameters, inputs })

  it("reads the sequence from the parameters, without the state input", () => {
    const record = Records.decode(counter, 1, body({ sequence_id: "s", sequence_start: true }))
    assert.isFalse(Records.isMalformed(record))
    assert.deepStrictEqual((record as Records.Record).sequence, { id: "s", start: true, end: false })
    assert.deepStrictEqual(Object.keys((record as Records.Record).inputs), ["x"])
  })

  it("names flags without an id, a bad id, and a missing input as malformed", () => {
    const reason = (text: string) => (Records.decode(counter, 3, text) as Records.Malformed).reason
    assert.include(reason(body({ sequence_start: true })), "need a sequence_id")
    assert.include(reason(body({ sequence_id: -2 })), "sequence_id")
    assert.include(reason(body({ sequence_id: 1 }, [])), "no input tensors")
  })
})

describe("Records.readResume", () => {
  const bytes = (text: string) => new TextEncoder().encode(text)
  it("collects the answered lines, keeps complete lines only, and refuses a file that is not an output", () => {
    const cases: ReadonlyArray<readonly [string, ReadonlyArray<number> | string, number?]> = [
      ["", [], 0],
      ['{"line":1,"outputs":{}}\n{"line":3,"error":{}}\n', [1, 3], 46],
      ['{"line":1,"outputs":{}}\n{"line":2,"outp', [1], 24],
      ['{"line":1,"outputs":{}}\n\n{"line":2,"outputs":{}}\n', [1, 2], 49],
      ["hello\n", "line 1 of the output is not an output record of this command"],
      ['{"line":1}\n{"line":0}\n', "line 2 of the output is not an output record of this command"],
      ['{"line":1.5}\n', "line 1 of the output is not an output record of this command"]
    ]
    for (const [text, expected, keep] of cases) {
      const result = Records.readResume(bytes(text))
      if (typeof expected === "string") {
        assert.deepStrictEqual(result, { error: expected }, text)
        continue
      }
      assert.isFalse("error" in result, text)
      if ("error" in result) continue
      assert.deepStrictEqual([...result.done].sort((a, b) => a - b), expected, text)
      assert.strictEqual(result.keepBytes, keep, text)
    }
  })
})
