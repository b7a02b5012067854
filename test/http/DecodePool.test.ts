/**
 * Decode threads: the same outcome as decoding on the main thread, for every kind of body; a
 * thread that dies hands its bodies back (undefined) and is replaced; `close` ends everything.
 */
import { assert, describe, it } from "@effect/vitest"
import * as InferenceError from "../../src/InferenceError.ts"
import * as DecodePool from "../../src/http/DecodePool.ts"
import * as InferExchange from "../../src/http/InferExchange.ts"
import * as Oip from "../../src/http/Oip.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"
import * as BatchPolicy from "../../src/BatchPolicy.ts"
import * as Tensor from "../../src/Tensor.ts"
import * as CounterPool from "../fixtures/CounterPool.ts"

const metadata: ModelMetadata.ModelMetadata = {
  name: "m",
  version: "3",
  inputs: [
    { name: "x", dtype: "float32", dims: [-1, 4] },
    { name: "ids", dtype: "int64", dims: [-1] },
    { name: "flags", dtype: "bool", dims: [-1] },
    { name: "words", dtype: "string", dims: [-1] }
  ],
  outputs: [{ name: "y", dtype: "float32", dims: [-1, 4] }, { name: "z", dtype: "float32", dims: [-1] }],
  batching: { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 2 }
}

const bodies: ReadonlyArray<readonly [string, string]> = [
  ["every dtype, nested and flat, with parameters", JSON.stringify({
    id: "r",
    parameters: { priority: 1, timeout: 2500, binary_data_output: true },
    inputs: [
      { name: "x", shape: [2, 4], datatype: "FP32", data: [[1, 2, 3, 4], [0.5, -1, 1e-3, 7]] },
      { name: "ids", shape: [2], datatype: "INT64", data: ["9007199254740993", 4] },
      { name: "flags", shape: [2], datatype: "BOOL", data: [true, 0] },
      { name: "words", shape: [2], datatype: "BYTES", data: ["a", "é"] }
    ],
    outputs: [{ name: "z", parameters: { binary_data: false } }, { name: "y" }]
  })],
  ["not JSON", "{\"inputs\": ["],
  ["a bad envelope", JSON.stringify({ inputs: 3 })],
  ["a datatype the model does not take", JSON.stringify({ inputs: [{ name: "x", shape: [1, 4], datatype: "FP64", data: [1, 2, 3, 4] }] })],
  ["too many rows", JSON.stringify({ inputs: [{ name: "x", shape: [3, 4], datatype: "FP32", data: new Array(12).fill(0) }] })],
  ["an unknown output", JSON.stringify({ inputs: [], outputs: [{ name: "w" }] })]
]

const plain = (outcome: DecodePool.Outcome | undefined): unknown => {
  if (outcome === undefined) return undefined
  if (outcome instanceof InferenceError.InvalidInput) return { invalid: outcome.message }
  if (outcome._tag === "NotJson") return outcome
  return {
    ...outcome,
    inputs: Object.fromEntries(Object.entries(outcome.inputs).map(([name, t]) => [name, { dtype: t.dtype, dims: t.dims, data: Array.from(t.data as ArrayLike<unknown>) }]))
  }
}

const decodeOn = (pool: DecodePool.DecodePool, body: string | Buffer) =>
  new Promise<DecodePool.Outcome | undefined>((resolve) => pool.decode("m", metadata, Buffer.from(body), resolve))

describe("DecodePool", () => {
  it("holds one spec a model version: each reload's metadata replaces the one before, and either decodes right", async () => {
    const pool = DecodePool.make(1)
    await pool.warm()
    try {
      const body = Buffer.from(JSON.stringify({ inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4] }] }))
      const decode = (m: ModelMetadata.ModelMetadata) => new Promise<DecodePool.Outcome | undefined>((resolve) => pool.decode("m", m, body, resolve))
      const x = (outcome: DecodePool.Outcome | undefined) =>
        outcome !== undefined && "inputs" in outcome ? Array.from(outcome.inputs["x"]!.data as Float32Array) : outcome
      let current = metadata
      for (let reload = 0; reload < 20; reload++) {
        current = { ...metadata } // a reload: new metadata for the same name and version
        assert.deepStrictEqual(x(await decode(current)), [1, 2, 3, 4])
      }
      assert.strictEqual(pool.specsHeld(), 1)
      // An older metadata object still in use (a body resolved before the reload): its spec is sent again.
      assert.deepStrictEqual(x(await decode(metadata)), [1, 2, 3, 4])
      assert.deepStrictEqual(x(await decode(current)), [1, 2, 3, 4])
      assert.strictEqual(pool.specsHeld(), 1)
      assert.deepStrictEqual(x(await decode({ ...metadata, version: "4" })), [1, 2, 3, 4])
      assert.strictEqual(pool.specsHeld(), 2, "another version has its own")
    } finally {
      pool.close()
    }
  })

  it("decodes every kind of body as the main thread does", async () => {
    const pool = DecodePool.make(2)
    await pool.warm()
    try {
      for (const [label, body] of bodies) {
        const there = await decodeOn(pool, body)
        const here = InferExchange.decodeBody("m", metadata, body, undefined)
        if (label.startsWith("every dtype")) assert.strictEqual(here._tag, "Body", "the first body is a valid one")
        assert.deepStrictEqual(plain(there), plain(here), label)
      }
      // Bytes that are not UTF-8: refused as on the main thread (`InferExchange.decode` of bytes), not read as U+FFFD.
      const notUtf8 = Buffer.concat([Buffer.from('{"id": "'), Buffer.of(0xff), Buffer.from('", "inputs": []}')])
      const refused = { _tag: "NotJson" as const, message: Oip.notUtf8Message }
      assert.deepStrictEqual(await decodeOn(pool, notUtf8), refused)
      assert.deepStrictEqual(InferExchange.decode("m", undefined, metadata, notUtf8, undefined), refused)
      assert.strictEqual(pool.inFlight(), 0)
      const decoded = await decodeOn(pool, bodies[0]![1])
      assert.isTrue(decoded !== undefined && decoded._tag === "Body" && (decoded.inputs["x"]!.data as Float32Array).buffer.byteLength === 32, "the tensors came back whole")
    } finally {
      pool.close()
    }
  })

  it("a thread that dies answers its bodies undefined (the caller decodes them) and is replaced", async () => {
    const pool = DecodePool.make(1, new URL("../fixtures/ExitingDecodeWorker.ts", import.meta.url))
    await pool.warm()
    try {
      const calls: Array<unknown> = []
      const first = new Promise<void>((resolve) =>
        pool.decode("m", metadata, Buffer.from(bodies[0]![1]), (o) => {
          calls.push(o)
          resolve()
        })
      )
      await first
      assert.deepStrictEqual(calls, [undefined])
      assert.strictEqual(pool.inFlight(), 0)
      // A new thread takes the next body (and dies too: answered undefined once more, never twice).
      assert.isUndefined(await decodeOn(pool, bodies[0]![1]))
      await new Promise((resolve) => setTimeout(resolve, 50))
      assert.deepStrictEqual(calls, [undefined])
    } finally {
      pool.close()
    }
  })

  it("encodes an answer as encoding it here does, JSON and binary, copying a view's own bytes and leaving the tensors the caller's", async () => {
    const pool = DecodePool.make(1)
    await pool.warm()
    try {
      // a slice of a batch's outputs (rows 1 and 2 of 4), as a batched request's answer holds
      const batch = Float32Array.from({ length: 4 * 3 }, (_, i) => i / 3)
      const y = Tensor.make("float32", batch.subarray(3, 9), [2, 3])
      const ids = Tensor.int64([2n ** 60n, -1n], [2])
      const encodeOn = (response: InferExchange.Response) => new Promise<InferExchange.Answer | undefined>((resolve) => pool.encode(response, resolve))
      const json: InferExchange.Response = { modelName: "m", modelVersion: "1", id: "r", outputs: [["y", y], ["ids", ids]], binaryOutputs: undefined }
      const here = InferExchange.encodePrepared(json)
      assert.strictEqual(here._tag, "Json")
      const there = await encodeOn(json)
      assert.strictEqual(there?._tag, "JsonBytes")
      assert.strictEqual(new TextDecoder().decode((there as { readonly bytes: Uint8Array }).bytes), (here as { readonly text: string }).text)
      const binary: InferExchange.Response = { ...json, binaryOutputs: new Set(["y"]) }
      const hereBinary = InferExchange.encodePrepared(binary) as { readonly bytes: Uint8Array; readonly jsonLength: number }
      const thereBinary = await encodeOn(binary)
      assert.deepStrictEqual(thereBinary, { _tag: "Binary", bytes: hereBinary.bytes, jsonLength: hereBinary.jsonLength })
      // the caller's tensors are untouched: nothing was moved out from under them
      assert.strictEqual(batch.byteLength, 48)
      assert.deepStrictEqual(Array.from(y.data as Float32Array), [1, 4 / 3, 5 / 3, 2, 7 / 3, 8 / 3].map(Math.fround))
      assert.strictEqual(pool.inFlight(), 0, "answers being encoded are not bodies")
    } finally {
      pool.close()
    }
  })

  it("close answers an encode in flight undefined, and every later one at once", async () => {
    const pool = DecodePool.make(1)
    await pool.warm()
    const response: InferExchange.Response = { modelName: "m", modelVersion: "1", id: undefined, outputs: [["y", Tensor.float32([1, 2], [2])]], binaryOutputs: undefined }
    const pending = new Promise<InferExchange.Answer | undefined>((resolve) => pool.encode(response, resolve))
    pool.close()
    assert.isUndefined(await pending)
    assert.isUndefined(await new Promise<InferExchange.Answer | undefined>((resolve) => pool.encode(response, resolve)))
  })

  it("decodes bodies for a stateful model as the main thread does: its state and control inputs and state output are the server's", async () => {
    const stateful: ModelMetadata.ModelMetadata = {
      name: "counter",
      version: "1",
      inputs: CounterPool.controlledSignature.inputs,
      outputs: CounterPool.controlledSignature.outputs,
      sequence: CounterPool.counterSequence({ controls: CounterPool.controls })
    }
    const x = { name: "x", shape: [1, 1], datatype: "FP32", data: [1] }
    const sequenced = { parameters: { sequence_id: 7, sequence_start: true } }
    const cases: ReadonlyArray<readonly [string, string]> = [
      ["no outputs asked: the client's alone", JSON.stringify({ ...sequenced, inputs: [x] })],
      ["the state output asked", JSON.stringify({ ...sequenced, inputs: [x], outputs: [{ name: "hN" }] })],
      ["a state input sent", JSON.stringify({ ...sequenced, inputs: [x, { name: "h", shape: [1, 1], datatype: "FP32", data: [5] }] })],
      ["a control input sent", JSON.stringify({ ...sequenced, inputs: [x, { name: "START", shape: [1, 1], datatype: "INT32", data: [1] }] })]
    ]
    const pool = DecodePool.make(1)
    await pool.warm()
    try {
      for (const [label, body] of cases) {
        const there = await new Promise<DecodePool.Outcome | undefined>((resolve) => pool.decode("counter", stateful, Buffer.from(body), resolve))
        assert.deepStrictEqual(plain(there), plain(InferExchange.decodeBody("counter", stateful, body, undefined)), label)
      }
    } finally {
      pool.close()
    }
  })

  it("until a thread is ready, a body or an answer is given back at once (the caller does it itself, no waiting for a thread to load); then the thread takes them", async () => {
    const pool = DecodePool.make(1)
    try {
      const response: InferExchange.Response = { modelName: "m", modelVersion: "1", id: undefined, outputs: [["y", Tensor.float32([1, 2], [2])]], binaryOutputs: undefined }
      // answered within the call: nothing waits for the thread to load
      const answers: Array<unknown> = []
      pool.decode("m", metadata, Buffer.from(bodies[0]![1]), (outcome) => answers.push(outcome))
      pool.encode(response, (answer) => answers.push(answer))
      assert.deepStrictEqual(answers, [undefined, undefined])
      await pool.warm()
      assert.strictEqual((await decodeOn(pool, bodies[0]![1]))?._tag, "Body")
      assert.strictEqual((await new Promise<InferExchange.Answer | undefined>((resolve) => pool.encode(response, resolve)))?._tag, "JsonBytes")
    } finally {
      pool.close()
    }
  })

  it("close answers what is in flight undefined, and every later body at once", async () => {
    const pool = DecodePool.make(1)
    await pool.warm()
    const pending = decodeOn(pool, bodies[0]![1])
    pool.close()
    assert.isUndefined(await pending)
    assert.isUndefined(await decodeOn(pool, bodies[0]![1]))
    assert.strictEqual(pool.inFlight(), 0)
  })
})
