import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber } from "effect"
import { TestClock } from "effect/testing"
import * as Perf from "../../src/cli/Perf.ts"
import * as Oip from "../../src/http/Oip.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import * as ModelMetadata from "../../src/ModelMetadata.ts"
import * as Sequence from "../../src/Sequence.ts"
import * as Tensor from "../../src/Tensor.ts"
import * as TensorCodec from "../../src/TensorCodec.ts"
import * as InferenceRequest from "../../src/InferenceRequest.ts"
import { controls, counterEngine, counterSequence } from "../fixtures/CounterPool.ts"

const vad: ModelMetadata.ModelMetadata = {
  name: "vad",
  version: "1",
  inputs: [
    { name: "input", dtype: "float32", dims: [-1, -1] },
    { name: "state", dtype: "float32", dims: [2, -1, 128] },
    { name: "sr", dtype: "int64", dims: [] }
  ],
  outputs: [{ name: "output", dtype: "float32", dims: [-1, 1] }],
  signatures: [{ input: { dims: [-1, 512] }, sr: { values: [16000] } }, { input: { dims: [-1, 256] }, sr: { values: [8000] } }]
}

describe("Perf", () => {
  it("parseLevels: a comma-separated list of positive integers", () => {
    assert.deepStrictEqual(Perf.parseLevels("1,16,64"), [1, 16, 64])
    assert.deepStrictEqual(Perf.parseLevels(" 4 "), [4])
    for (const bad of ["", "0", "1,x", "-1", "1.5", "5000"]) assert.isString(Perf.parseLevels(bad), bad)
    for (const empty of ["1,,2", "1,", ",4", " , "]) assert.include(Perf.parseLevels(empty), "an empty entry in", empty)
  })

  it("checkHttpUrl: http://HOST[:PORT]; a URL without its scheme, or another scheme, is refused with the form expected", () => {
    for (const good of ["http://127.0.0.1:8000", "http://localhost:8000/", "http://[::1]:8000", "http://example.com"]) assert.isUndefined(Perf.checkHttpUrl(good), good)
    for (const bad of ["localhost:18700", "127.0.0.1:8000", "ftp://x", "https://x", "http://", ""]) assert.include(Perf.checkHttpUrl(bad) ?? "", "expected http://HOST:PORT", bad)
  })

  it("checkGrpcAddress: HOST:PORT (or grpc://HOST:PORT); a URL of another scheme or an address without its port is refused with the form expected", () => {
    for (const good of ["127.0.0.1:8001", "localhost:8001", "grpc://127.0.0.1:8001", "[::1]:8001", "inference.example.com:443"]) assert.isUndefined(Perf.checkGrpcAddress(good), good)
    for (const bad of ["http://127.0.0.1:8001", "https://x:1", "127.0.0.1", "localhost:", ":8001", "x:70000", "a b:1", ""]) {
      assert.include(Perf.checkGrpcAddress(bad) ?? "", "expected HOST:PORT", bad)
    }
  })

  it("makeInputs: dynamic dims 1, the first declared signature's dims and values; the model accepts them", () => {
    const made = Perf.makeInputs(vad, 3)
    assert.strictEqual(made.length, 3)
    for (const inputs of made) {
      const byName = Object.fromEntries(inputs.map((i) => [i.name, i]))
      assert.deepStrictEqual(byName["input"]!.shape, [1, 512])
      assert.deepStrictEqual(byName["state"]!.shape, [2, 1, 128])
      assert.deepStrictEqual(byName["sr"]!.shape, [])
      assert.deepStrictEqual(byName["sr"]!.data, [16000])
      assert.strictEqual(byName["sr"]!.datatype, "INT64")
      const decoded = Oip.decodeInputs(vad, inputs)
      assert.notInstanceOf(decoded, InferenceError.InvalidInput)
      assert.isUndefined(ModelMetadata.validateInputs(vad, decoded as Tensor.TensorMap))
    }
    // Repeatable: the same seed makes the same inputs.
    assert.deepStrictEqual(Perf.makeInputs(vad, 2, 7), Perf.makeInputs(vad, 2, 7))
  })

  it("summarize: throughput over the measured seconds, nearest-rank percentiles, errors apart", () => {
    const latencies = Array.from({ length: 100 }, (_, i) => i + 1) // 1..100 ms
    const r = Perf.summarize(16, latencies, ["HTTP 429: full", "HTTP 429: full", "ECONNRESET"], 2)
    assert.strictEqual(r.requests, 100)
    assert.strictEqual(r.errors, 3)
    assert.strictEqual(r.throughput, 50)
    assert.deepStrictEqual(r.latencyMs, { avg: 50.5, p50: 50, p90: 90, p95: 95, p99: 99, max: 100 })
    assert.deepStrictEqual(r.errorSamples, ["HTTP 429: full", "ECONNRESET"])
    const empty = Perf.summarize(1, [], [], 1)
    assert.deepStrictEqual(empty.latencyMs, { avg: 0, p50: 0, p90: 0, p95: 0, p99: 0, max: 0 })
  })

  it("formatTable: a header and one aligned row per level", () => {
    const table = Perf.formatTable([Perf.summarize(1, [1, 2, 3], [], 1), Perf.summarize(64, [10, 20], ["x"], 1)])
    const lines = table.split("\n")
    assert.strictEqual(lines.length, 3)
    assert.match(lines[0]!, /^concurrency\s+requests\s+errors\s+infer\/s\s+avg ms\s+p50 ms\s+p90 ms\s+p95 ms\s+p99 ms\s+max ms$/)
    assert.strictEqual(new Set(lines.map((l) => l.length)).size, 1, "aligned")
    assert.match(lines[2]!, /^\s+64\s+2\s+1\s+2\.0\s+15\.00/)
  })

  it("encodeRequest: JSON, or binary tensor data that the server's codec decodes to the same tensors", () => {
    const inputs = Oip.decodeInputs(vad, Perf.makeInputs(vad, 1)[0]!) as Tensor.TensorMap
    const json = Perf.encodeRequest(inputs, false)
    const body = Oip.decodeInferRequest(JSON.parse(json.bytes as string))
    assert.isFalse("error" in body)
    if ("error" in body) return
    assert.deepStrictEqual(Oip.decodeInputs(vad, body.inputs), inputs)
    const binary = Perf.encodeRequest(inputs, true)
    const split = Oip.splitBinaryBody(binary.bytes as Uint8Array, binary.headers[Oip.inferenceHeaderContentLength]!)
    assert.notTypeOf(split, "string")
    if (typeof split === "string") return
    const header = Oip.decodeInferRequest(JSON.parse(split.text))
    if ("error" in header) return assert.fail(header.error)
    assert.deepStrictEqual(Oip.decodeInputs(vad, header.inputs, split.binary), inputs)
  })

  it("sequenceFlags: sequences of the given length, a start first and an end last, each with an id of its own", () => {
    const client = Perf.sequenceFlags(3)
    const flags = Array.from({ length: 7 }, client.next)
    assert.deepStrictEqual(flags.map((f) => [f.start, f.end]), [[true, false], [false, false], [false, true], [true, false], [false, false], [false, true], [true, false]])
    const ids = flags.map((f) => f.id)
    assert.deepStrictEqual([ids[0] === ids[2], ids[2] !== ids[3], ids[3] === ids[5], ids[5] !== ids[6]], [true, true, true, true])
    assert.notStrictEqual(Perf.sequenceFlags(3).next().id, ids[0], "another client's sequences have other ids")
    // integers below 2^31: a model's int32 CORRID control takes them (it refuses text ids)
    for (const id of ids) assert.isTrue(Number.isInteger(id) && (id as number) >= 1 && (id as number) < 2 ** 31, String(id))
    assert.deepStrictEqual(Array.from({ length: 2 }, Perf.sequenceFlags(1).next).map((f) => [f.start, f.end]), [[true, true], [true, true]])
    // the 7th request started a sequence: closing ends it, once; the next request starts another
    assert.deepStrictEqual(client.closing(), { id: ids[6]!, start: false, end: true })
    assert.isUndefined(client.closing())
    assert.isTrue(client.next().start)
    const ended = Perf.sequenceFlags(2)
    ended.next()
    ended.next()
    assert.isUndefined(ended.closing(), "a sequence at its end needs no closing request")
  })

  it("a stateful model: makeInputs leaves the state input out; encodeRequest carries the sequence as Triton's parameters, in JSON and binary", () => {
    const stateful: ModelMetadata.ModelMetadata = {
      ...vad,
      sequence: Sequence.resolve({ maxSequenceIdleMs: 1000, maxSequences: 8, states: [{ input: "state", output: "stateN", dims: undefined }] }, {
        inputs: vad.inputs,
        outputs: [...vad.outputs, { name: "stateN", dtype: "float32", dims: [2, -1, 128] }]
      }) as Sequence.Resolved
    }
    const made = Perf.makeInputs(stateful, 1)[0]!
    assert.deepStrictEqual(made.map((i) => i.name), ["input", "sr"])
    const inputs = Oip.decodeInputs(stateful, made) as Tensor.TensorMap
    for (const binary of [false, true]) {
      const encoded = Perf.encodeRequest(inputs, binary, { id: "s-1", start: true, end: false })
      const bytes = typeof encoded.bytes === "string" ? new TextEncoder().encode(encoded.bytes) : encoded.bytes
      const jsonLength = binary ? Number(encoded.headers["inference-header-content-length"]) : bytes.length
      const body = Oip.decodeInferRequest(JSON.parse(new TextDecoder().decode(bytes.subarray(0, jsonLength))))
      assert.notProperty(body, "error")
      assert.deepStrictEqual(TensorCodec.sequenceOf((body as TensorCodec.InferRequest).parameters), { id: "s-1", start: true, end: false }, `binary ${binary}`)
    }
  })

  it.effect("the ids of its sequences fit a model's integer CORRID control (which refuses text ids): an engine runs them", () =>
    Effect.gen(function*() {
      const { engine, controlRuns } = yield* counterEngine({ sequence: counterSequence({ controls }) })
      const flags = Perf.sequenceFlags(2)
      for (let i = 0; i < 2; i++) {
        const run = yield* Effect.forkChild(Effect.exit(engine.infer(InferenceRequest.make("counter", { x: Tensor.float32([1], [1, 1]) }, { sequence: flags.next() }))))
        yield* TestClock.adjust("100 millis")
        assert.isTrue(Exit.isSuccess(yield* Fiber.join(run)))
      }
      assert.strictEqual(controlRuns.length, 2)
      assert.strictEqual(controlRuns[0]![0]![3], controlRuns[1]![0]![3], "one sequence, one CORRID")
    }))
})
