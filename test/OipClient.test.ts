/**
 * The Open Inference Protocol client: its pure parts (a refusal's reason from the server's header
 * or status, the request body, the answer's tensors), the exchange's cancellation on a plain
 * `node:http` server, and the whole client against `node src/bin/server.ts` on the bundled models.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber, Scope, Stream } from "effect"
import * as Http from "node:http"
import type * as Net from "node:net"
import * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import type * as InferenceResult from "../src/InferenceResult.ts"
import * as OipClient from "../src/OipClient.ts"
import * as Routes from "../src/http/Routes.ts"
import * as Tensor from "../src/Tensor.ts"
import * as TensorCodec from "../src/TensorCodec.ts"
import { type ServerProcess, startServer } from "./fixtures/ServerProcess.ts"

const request = InferenceRequest.make("m", { x: Tensor.float32([1, 2], [1, 2]) }, { requestId: "r1", timeout: "2 seconds", modelVersion: "3" })

const reasonFor = (status: number, reason: InferenceError.Reason | undefined, message: string) =>
  OipClient.reasonOf(request, status, reason === undefined ? undefined : Routes.reasonFields(reason), message, 12)

describe("OipClient.reasonOf", () => {
  it("rebuilds the reason the server's engine gave from its header, numbers and words included", () => {
    const cases: ReadonlyArray<InferenceError.Reason> = [
      new InferenceError.QueueFull({ modelId: "m", requestId: "r1", capacity: 256 }),
      new InferenceError.QueueFull({ modelId: "m", requestId: "r1", capacity: 8, bound: "model" }),
      new InferenceError.QueueFull({ modelId: "m", requestId: "r1", capacity: 16, bound: "sequences" }),
      new InferenceError.QueueTimeout({ modelId: "m", requestId: "r1", queueTimeoutMs: 100, waitedMs: 104 }),
      new InferenceError.DeadlineExceeded({ modelId: "m", requestId: "r1", timeoutMs: 2000, elapsedMs: 2001 }),
      new InferenceError.Cancelled({ requestId: "r1", reason: "the client went away" }),
      new InferenceError.ModelNotFound({ modelId: "m", version: "3" }),
      new InferenceError.ModelUnavailable({ modelId: "m", reason: "failed to load: bad file" }),
      new InferenceError.ModelUnavailable({ modelId: "m", reason: "unloaded", unloaded: true }),
      new InferenceError.InvalidInput({ modelId: "m", input: "x", detail: "rank 1 given, the model takes rank 2" }),
      new InferenceError.InvalidInput({ modelId: "m", input: "größe", detail: "missing input" }),
      new InferenceError.InvalidInput({ modelId: "m", detail: "unknown priority" }),
      new InferenceError.RunFailed({ modelId: "m", requestId: "r1", detail: "a defect" }),
      new InferenceError.ShuttingDown({})
    ]
    for (const reason of cases) {
      const header = Routes.reasonFields(reason)
      assert.match(header, /^[\x20-\x7e]*$/, "a header value in ASCII")
      const rebuilt = OipClient.reasonOf(request, InferenceError.httpStatus(reason), header, reason.message, 12)
      assert.deepStrictEqual({ ...rebuilt }, { ...reason }, reason._tag)
      assert.strictEqual(rebuilt.message, reason.message)
    }
  })

  it("from another server (no header), the status decides, keeping its message", () => {
    const invalid = reasonFor(400, undefined, "unexpected shape")
    assert.deepStrictEqual([invalid._tag, invalid._tag === "InvalidInput" && invalid.detail], ["InvalidInput", "unexpected shape"])
    assert.deepStrictEqual({ ...reasonFor(404, undefined, "no model") }, { ...new InferenceError.ModelNotFound({ modelId: "m", version: "3" }) })
    const late = reasonFor(504, undefined, "timeout")
    assert.deepStrictEqual({ ...late }, { ...new InferenceError.DeadlineExceeded({ modelId: "m", requestId: "r1", timeoutMs: 2000, elapsedMs: 12 }) })
    // Triton answers a full queue 503: retryable, as ModelUnavailable is
    const full = reasonFor(503, undefined, "Exceeds maximum queue size")
    assert.strictEqual(full._tag, "ModelUnavailable")
    assert.include(full.message, "the server answered 503: Exceeds maximum queue size")
    assert.isTrue(InferenceError.make(full).isRetryable)
    // a header that is not ours is ignored
    assert.strictEqual(OipClient.reasonOf(request, 400, "not json", "bad", 0)._tag, "InvalidInput")
  })
})

describe("OipClient request and answer", () => {
  it("encodes the request's parameters as Triton's and numeric inputs as binary tensor data; strings as JSON", () => {
    const seq = InferenceRequest.make("m", { x: Tensor.float32([1, 2], [1, 2]), s: Tensor.make("string", ["a"], [1]) }, {
      requestId: "q",
      priority: "High",
      timeout: "250 millis",
      sequence: { id: 7, start: true }
    })
    const { bytes, headers } = OipClient.encodeRequest(seq, { binaryInputs: true, binaryOutputs: true, outputs: ["y"] })
    const jsonLength = Number(headers[TensorCodec.inferenceHeaderContentLength])
    const json = JSON.parse(Buffer.from(bytes).subarray(0, jsonLength).toString("utf8"))
    assert.deepStrictEqual(json.parameters, { priority: 2, timeout: 250_000, sequence_id: 7, sequence_start: true, binary_data_output: true })
    assert.strictEqual(json.id, "q")
    assert.deepStrictEqual(json.inputs, [
      { name: "x", datatype: "FP32", shape: [1, 2], parameters: { binary_data_size: 8 } },
      { name: "s", datatype: "BYTES", shape: [1], data: ["a"] }
    ])
    assert.deepStrictEqual(json.outputs, [{ name: "y", parameters: { binary_data: true } }])
    assert.deepStrictEqual(Array.from(new Float32Array(Uint8Array.from(bytes.subarray(jsonLength)).buffer)), [1, 2])
    const plain = OipClient.encodeRequest(seq, { binaryInputs: false, binaryOutputs: false })
    assert.strictEqual(plain.headers["content-type"], "application/json")
    assert.deepStrictEqual(JSON.parse(Buffer.from(plain.bytes).toString("utf8")).inputs[0].data, [1, 2])
  })

  it("decodes an answer's JSON and binary outputs, and says why an answer is not the protocol", () => {
    const head = Buffer.from(JSON.stringify({
      model_name: "m",
      model_version: "2",
      outputs: [
        { name: "a", datatype: "INT64", shape: [2], parameters: { binary_data_size: 16 } },
        { name: "b", datatype: "FP32", shape: [1, 2], data: [0.5, 1.5] }
      ]
    }))
    const body = Buffer.concat([head, Buffer.from(BigInt64Array.of(3n, -4n).buffer)])
    const decoded = OipClient.decodeResponse("m", { status: 200, headers: { [TensorCodec.inferenceHeaderContentLength]: String(head.byteLength) }, body })
    if (typeof decoded === "string") return assert.fail(decoded)
    assert.strictEqual(decoded.modelVersion, "2")
    assert.deepStrictEqual(Array.from(decoded.outputs["a"]!.data as BigInt64Array), [3n, -4n])
    assert.deepStrictEqual([Array.from(decoded.outputs["b"]!.data as Float32Array), decoded.outputs["b"]!.dims], [[0.5, 1.5], [1, 2]])
    const short = OipClient.decodeResponse("m", { status: 200, headers: { [TensorCodec.inferenceHeaderContentLength]: String(head.byteLength) }, body: body.subarray(0, body.byteLength - 1) })
    assert.include(short as string, `output "a": binary_data_size 16 does not fit the answer`)
    assert.strictEqual(OipClient.decodeResponse("m", { status: 200, headers: {}, body: Buffer.from("<html>") }), "its body is not JSON")
  })

  it("decodes int64 JSON outputs past 2^53 exactly, other outputs' large integers as numbers, and empty outputs", () => {
    const body = Buffer.from(
      `{"model_version":"1","outputs":[{"name":"i","datatype":"INT64","shape":[2],"data":[9007199254740993,-9007199254740995]},` +
        `{"name":"f","datatype":"FP64","shape":[2],"data":[9007199254740993,1e20]},` +
        `{"name":"e","datatype":"FP32","shape":[0,4],"data":[]},{"name":"b","datatype":"INT32","shape":[0],"parameters":{"binary_data_size":0}}]}`
    )
    const decoded = OipClient.decodeResponse("m", { status: 200, headers: {}, body })
    if (typeof decoded === "string") return assert.fail(decoded)
    assert.deepStrictEqual(Array.from(decoded.outputs["i"]!.data as BigInt64Array), [9007199254740993n, -9007199254740995n])
    assert.deepStrictEqual(Array.from(decoded.outputs["f"]!.data as Float64Array), [9007199254740992, 1e20])
    assert.deepStrictEqual([decoded.outputs["e"]!.dims, decoded.outputs["e"]!.data.length, decoded.outputs["b"]!.dims], [[0, 4], 0, [0]])
  })

  it("decodeMetadata: inputs and outputs, the highest version listed, declared signatures; says why a body is not metadata", () => {
    const body = (json: unknown) => Buffer.from(JSON.stringify(json))
    const decoded = OipClient.decodeMetadata("m", undefined, body({ versions: ["2", "10"], inputs: [{ name: "x", datatype: "INT64", shape: [-1, 3] }], outputs: [] }))
    assert.deepStrictEqual(decoded, { name: "m", version: "10", inputs: [{ name: "x", dtype: "int64", dims: [-1, 3] }], outputs: [] })
    assert.strictEqual((OipClient.decodeMetadata("m", "2", body({ versions: ["10"], inputs: [], outputs: [] })) as { version: string }).version, "2")
    assert.strictEqual(OipClient.decodeMetadata("m", undefined, body({ inputs: [{ name: "x", datatype: "COMPLEX", shape: [1] }], outputs: [] })), "metadata with tensors it does not know")
    assert.strictEqual(OipClient.decodeMetadata("m", undefined, Buffer.from("<html>")), "metadata that is not JSON")
    assert.strictEqual(OipClient.decodeMetadata("m", undefined, Buffer.from("null")), "metadata with tensors it does not know")
  })

  it("leaves out the timeout of a request that has none (an infinite one), as Triton's 0", () => {
    const endless = InferenceRequest.make("m", { x: Tensor.float32([1], [1]) }, { timeout: Duration.infinity })
    const { bytes } = OipClient.encodeRequest(endless, { binaryInputs: false, binaryOutputs: false })
    assert.deepStrictEqual(JSON.parse(Buffer.from(bytes).toString("utf8")).parameters, { priority: 3 })
  })

  it("prints JSON inputs exactly: an int64 past 2^53, a negative zero", () => {
    const exact = InferenceRequest.make("m", { i: Tensor.make("int64", BigInt64Array.of(9007199254740993n), [1]), z: Tensor.float32([-0, 1], [2]) })
    const text = Buffer.from(OipClient.encodeRequest(exact, { binaryInputs: false, binaryOutputs: false }).bytes).toString("utf8")
    assert.include(text, `"data":[9007199254740993]`)
    assert.include(text, `"data":[-0,1]`)
  })

  it("the server's header leaves out an input name too long to carry, rather than a cut one", () => {
    const long = "n".repeat(300)
    assert.deepStrictEqual(JSON.parse(Routes.reasonFields(new InferenceError.InvalidInput({ modelId: "m", input: long, detail: "x" }))), { _tag: "InvalidInput" })
  })
})

/** A plain `node:http` server on `host` answering every request with `answer`, for the client's transport. */
const fakeServer = (host: string, answer: (req: Http.IncomingMessage, res: Http.ServerResponse, body: string) => void) =>
  Effect.gen(function*() {
    const server = Http.createServer((req, res) => {
      let body = ""
      req.on("data", (c: Buffer) => (body += c.toString("utf8")))
      req.on("end", () => answer(req, res, body))
    })
    yield* Effect.acquireRelease(
      Effect.callback<void>((resume) => void server.listen(0, host, () => resume(Effect.void))),
      () => Effect.sync(() => (server.closeAllConnections(), server.close()))
    )
    const port = (server.address() as Net.AddressInfo).port
    return host.includes(":") ? `http://[${host}]:${port}` : `http://${host}:${port}`
  })

const answerY = (res: Http.ServerResponse) => {
  res.writeHead(200, { "content-type": "application/json" })
  res.end(JSON.stringify({ model_name: "m", model_version: "1", outputs: [{ name: "y", datatype: "FP32", shape: [1], data: [2] }] }))
}

describe("OipClient over a plain server", () => {
  it.live("an IPv6 URL; a request without a timeout waits as long as the answer takes; bad timeouts and priorities are refused before anything is sent", () =>
    Effect.gen(function*() {
      const bodies: Array<string> = []
      const url = yield* fakeServer("::1", (_req, res, body) => {
        bodies.push(body)
        setTimeout(() => answerY(res), 30)
      })
      const client = yield* OipClient.make({ url })
      const endless = yield* client.infer(InferenceRequest.make("m", { x: Tensor.float32([1], [1]) }, { timeout: Duration.infinity }))
      assert.deepStrictEqual(Array.from(endless.outputs["y"]!.data as Float32Array), [2])
      const x = { x: Tensor.float32([1], [1]) }
      for (const request of [
        InferenceRequest.make("m", x, { timeout: -5 }),
        InferenceRequest.make("m", x, { timeout: Number.NaN }),
        { ...InferenceRequest.make("m", x), priority: "Urgent" } as unknown as InferenceRequest.InferenceRequest
      ]) {
        const refused = yield* Effect.flip(client.infer(request))
        assert.strictEqual(refused.reason._tag, "InvalidInput", refused.message)
      }
      assert.strictEqual(bodies.length, 1, "the refused ones were never sent")
    }))

  it.live("metadata names the highest version listed, whatever the order, and the input signatures the server declares", () =>
    Effect.gen(function*() {
      const url = yield* fakeServer("127.0.0.1", (_req, res) => {
        res.writeHead(200, { "content-type": "application/json" })
        res.end(JSON.stringify({
          name: "m",
          versions: ["10", "9", "2"],
          inputs: [{ name: "x", datatype: "FP32", shape: [-1] }],
          outputs: [],
          // this project's server publishes config.json's inputSignatures so
          properties: { input_signatures: JSON.stringify([{ x: { dims: [1, 4] } }]) }
        }))
      })
      const client = yield* OipClient.make({ url })
      const metadata = yield* client.metadata("m")
      assert.strictEqual(metadata.version, "10")
      assert.deepStrictEqual(metadata.signatures, [{ x: { dims: [1, 4] } }])
    }))

  it.live("closing: connect's close cancels what is in flight and refuses what comes after; make's client refuses once its scope closed", () =>
    Effect.gen(function*() {
      const url = yield* fakeServer("127.0.0.1", (_req, res) => setTimeout(() => answerY(res), 300))
      const promised = OipClient.connect({ url })
      const pending = promised.infer(InferenceRequest.make("m", { x: Tensor.float32([1], [1]) }, { requestId: "p" }))
      yield* Effect.sleep("50 millis")
      yield* Effect.promise(() => promised.close())
      const cut = yield* Effect.promise(() => pending.then(() => undefined, (e: unknown) => e))
      assert.deepStrictEqual({ ...(cut as InferenceError.InferenceError).reason }, { ...new InferenceError.Cancelled({ requestId: "p", reason: "the client was closed" }) })
      const after = yield* Effect.promise(() => promised.infer(InferenceRequest.make("m", { x: Tensor.float32([1], [1]) })).then(() => undefined, (e: unknown) => e))
      assert.strictEqual((after as InferenceError.InferenceError).reason._tag, "ShuttingDown")
      assert.isFalse(yield* Effect.promise(() => promised.ready()))

      const scope = yield* Scope.make()
      const scoped = yield* Scope.provide(OipClient.make({ url }), scope)
      yield* Scope.close(scope, Exit.void)
      assert.strictEqual((yield* Effect.flip(scoped.infer(InferenceRequest.make("m", { x: Tensor.float32([1], [1]) })))).reason._tag, "ShuttingDown")
    }))
})

describe("OipClient exchange", () => {
  it.live("interrupting infer closes the request's connection (the server sees its client go); a deadline does too, as DeadlineExceeded", () =>
    Effect.gen(function*() {
      const closed: Array<number> = []
      const server = Http.createServer((req) => req.on("close", () => closed.push(performance.now())))
      yield* Effect.acquireRelease(
        Effect.callback<void>((resume) => void server.listen(0, "127.0.0.1", () => resume(Effect.void))),
        () => Effect.sync(() => (server.closeAllConnections(), server.close()))
      )
      const port = (server.address() as Net.AddressInfo).port
      const client = yield* OipClient.make({ url: `http://127.0.0.1:${port}` })
      const fiber = yield* Effect.forkChild(client.infer(InferenceRequest.make("m", { x: Tensor.float32([1], [1]) })), { startImmediately: true })
      yield* Effect.sleep("100 millis")
      assert.strictEqual(closed.length, 0)
      yield* Fiber.interrupt(fiber)
      for (let i = 0; i < 100 && closed.length === 0; i++) yield* Effect.sleep("5 millis")
      assert.strictEqual(closed.length, 1, "the server saw the request go")
      const startedMs = performance.now()
      const exit = yield* Effect.exit(client.infer(InferenceRequest.make("m", { x: Tensor.float32([1], [1]) }, { timeout: "150 millis" })))
      const reason = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error.reason : undefined
      assert.strictEqual(reason?._tag, "DeadlineExceeded")
      assert.isAtLeast(performance.now() - startedMs, 140)
      for (let i = 0; i < 100 && closed.length === 1; i++) yield* Effect.sleep("5 millis")
      assert.strictEqual(closed.length, 2)
    }))
})

describe("OipClient: a sequence's requests, inferResult, inferBatch", () => {
  it.live("a sequence's requests made at once go one at a time in the order they were made; other requests do not wait", () =>
    Effect.gen(function*() {
      let inFlight = 0
      let most = 0
      const order: Array<string> = []
      const url = yield* fakeServer("127.0.0.1", (req, res, body) => {
        const json = JSON.parse(body.slice(0, Number(req.headers["inference-header-content-length"] ?? body.length))) as { id: string; parameters: { sequence_id?: number } }
        order.push(json.id)
        if (json.parameters.sequence_id === undefined) return answerY(res)
        inFlight++
        most = Math.max(most, inFlight)
        setTimeout(() => {
          inFlight--
          answerY(res)
        }, 5 + Math.random() * 15)
      })
      const client = yield* OipClient.make({ url })
      const x = { x: Tensor.float32([1], [1]) }
      const steps = Array.from({ length: 8 }, (_, i) => InferenceRequest.make("m", x, { requestId: `s${i}`, sequence: { id: 1, start: i === 0 } }))
      const fiber = yield* Effect.forkChild(Effect.forEach(steps, (r) => client.infer(r), { concurrency: "unbounded" }), { startImmediately: true })
      yield* Effect.sleep("2 millis")
      // a request of no sequence goes at once, ahead of the sequence's waiting ones
      yield* client.infer(InferenceRequest.make("m", x, { requestId: "free" }))
      yield* Fiber.join(fiber)
      assert.strictEqual(most, 1)
      assert.deepStrictEqual(order.filter((id) => id !== "free"), steps.map((r) => r.requestId))
      assert.isBelow(order.indexOf("free"), 7)
    }))

  it.live("a request of a sequence that leaves while waiting its turn (deadline, interruption) is never sent, and passes the turn on only once the one before it is over", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const url = yield* fakeServer("127.0.0.1", (req, res, body) => {
        const id = (JSON.parse(body.slice(0, Number(req.headers["inference-header-content-length"] ?? body.length))) as { id: string }).id
        log.push(`+${id}`)
        setTimeout(() => {
          log.push(`-${id}`)
          answerY(res)
        }, id.startsWith("P") ? 300 : 5)
      })
      const client = yield* OipClient.make({ url })
      const x = { x: Tensor.float32([1], [1]) }
      const of = (id: string, timeout: Duration.Input = "2 seconds") => InferenceRequest.make("m", x, { requestId: id, timeout, sequence: { id: 7 } })
      // A's deadline runs out while P runs
      const p = yield* Effect.forkChild(client.infer(of("P1")), { startImmediately: true })
      const a = yield* Effect.forkChild(Effect.exit(client.infer(of("A1", "50 millis"))), { startImmediately: true })
      const b = yield* Effect.forkChild(client.infer(of("B1")), { startImmediately: true })
      const aExit = yield* Fiber.join(a)
      assert.strictEqual(Exit.isFailure(aExit) ? aExit.cause.reasons.find((r) => r._tag === "Fail")?.error.reason._tag : "Success", "DeadlineExceeded")
      yield* Fiber.join(p)
      yield* Fiber.join(b)
      // C is interrupted while P runs
      const p2 = yield* Effect.forkChild(client.infer(of("P2")), { startImmediately: true })
      const c = yield* Effect.forkChild(client.infer(of("C2")), { startImmediately: true })
      const d = yield* Effect.forkChild(client.infer(of("D2")), { startImmediately: true })
      yield* Effect.sleep("50 millis")
      yield* Fiber.interrupt(c)
      yield* Fiber.join(p2)
      yield* Fiber.join(d)
      assert.deepStrictEqual(log, ["+P1", "-P1", "+B1", "-B1", "+P2", "-P2", "+D2", "-D2"])
    }))

  it.live("retryOnQueueFull: a 429 sent again after its Retry-After, within the deadline; off by default", () =>
    Effect.gen(function*() {
      let received = 0
      let refuseNext = 0
      let retryAfter = "0"
      const url = yield* fakeServer("127.0.0.1", (_req, res) => {
        received++
        if (refuseNext > 0) {
          refuseNext--
          res.writeHead(429, { "content-type": "application/json", "retry-after": retryAfter, [OipClient.reasonHeader]: Routes.reasonFields(new InferenceError.QueueFull({ modelId: "m", requestId: "", capacity: 4 })) })
          return res.end(JSON.stringify({ error: "queue full" }))
        }
        answerY(res)
      })
      const x = { x: Tensor.float32([1], [1]) }
      const plain = yield* OipClient.make({ url })
      refuseNext = 1
      assert.strictEqual((yield* Effect.flip(plain.infer(InferenceRequest.make("m", x)))).reason._tag, "QueueFull")
      assert.strictEqual(received, 1)
      const retrying = yield* OipClient.make({ url, retryOnQueueFull: 3 })
      received = 0
      refuseNext = 2
      assert.strictEqual((yield* retrying.infer(InferenceRequest.make("m", x)))._tag, "Success")
      assert.strictEqual(received, 3, "two refusals, then the answer")
      // a Retry-After longer than what is left of the deadline: the QueueFull at once, no wait
      received = 0
      refuseNext = 1
      retryAfter = "5"
      const startedMs = performance.now()
      const full = yield* Effect.flip(retrying.infer(InferenceRequest.make("m", x, { timeout: "1 second" })))
      assert.deepStrictEqual([full.reason._tag, received], ["QueueFull", 1])
      assert.isBelow(performance.now() - startedMs, 500)
    }))

  it.live("inferBatch refuses a concurrency that is not a positive integer, as the engine's (NaN would never end)", () =>
    Effect.gen(function*() {
      const client = yield* OipClient.make({ url: "http://127.0.0.1:9" })
      for (const concurrency of [Number.NaN, 0, -1, 1.5]) {
        const exit = yield* Effect.exit(Stream.runCollect(client.inferBatch([], { concurrency })))
        assert.isTrue(Exit.isFailure(exit) && Cause.hasDies(exit.cause), String(concurrency))
      }
    }))

  it.live("inferResult answers every outcome as a result; inferBatch each request's, as the engine's do", () =>
    Effect.gen(function*() {
      const url = yield* fakeServer("127.0.0.1", (req, res, body) => {
        const id = (JSON.parse(body.slice(0, Number(req.headers["inference-header-content-length"] ?? body.length))) as { id: string }).id
        if (id.startsWith("bad")) {
          res.writeHead(400, { "content-type": "application/json" })
          return res.end(JSON.stringify({ error: "no" }))
        }
        if (id.startsWith("slow")) return setTimeout(() => answerY(res), 300)
        answerY(res)
      })
      const client = yield* OipClient.make({ url })
      const x = { x: Tensor.float32([1], [1]) }
      const tags = (results: ReadonlyArray<InferenceResult.InferenceResult>) => results.map((r) => `${r.requestId}:${r._tag}`).sort()
      const one = yield* Effect.forEach(["ok", "bad", "slow"], (id) => client.inferResult(InferenceRequest.make("m", x, { requestId: id, timeout: "100 millis" })))
      assert.deepStrictEqual(tags(one), ["bad:Failed", "ok:Success", "slow:TimedOut"])
      const down = yield* (yield* OipClient.make({ url: "http://127.0.0.1:9" })).inferResult(InferenceRequest.make("m", x, { requestId: "d" }))
      assert.strictEqual(down._tag, "Failed")
      const batch = Array.from(yield* Stream.runCollect(client.inferBatch(["a", "bad1", "b", "c"].map((id) => InferenceRequest.make("m", x, { requestId: id }))))) as Array<InferenceResult.InferenceResult>
      assert.deepStrictEqual(tags(batch), ["a:Success", "b:Success", "bad1:Failed", "c:Success"])
      const promised = OipClient.connect({ url })
      const seen = yield* Effect.promise(async () => {
        const out: Array<string> = []
        for await (const r of promised.inferBatch([InferenceRequest.make("m", x, { requestId: "p1" }), InferenceRequest.make("m", x, { requestId: "bad2" })])) out.push(`${r.requestId}:${r._tag}`)
        return out
      })
      assert.deepStrictEqual(seen.sort(), ["bad2:Failed", "p1:Success"])
      const aborted = yield* Effect.promise(() => promised.inferResult(InferenceRequest.make("m", x, { requestId: "slow2" }), { signal: AbortSignal.timeout(50) }))
      assert.strictEqual(aborted._tag, "Cancelled")
      // not a request at all: a Failed result, not a throw
      const notOne = yield* Effect.promise(() => promised.inferResult(null as unknown as InferenceRequest.InferenceRequest))
      assert.isTrue(notOne._tag === "Failed" && notOne.error.reason._tag === "InvalidInput")
      // a batch in flight when the client closes: its requests are answered ShuttingDown, not "unreachable"
      const closing = Effect.promise(async () => {
        const out: Array<string> = []
        for await (const r of promised.inferBatch(["slow3", "slow4"].map((id) => InferenceRequest.make("m", x, { requestId: id })))) {
          out.push(r._tag === "Failed" ? r.error.reason._tag : r._tag)
        }
        return out
      })
      const batchFiber = yield* Effect.forkChild(closing, { startImmediately: true })
      yield* Effect.sleep("50 millis")
      yield* Effect.promise(() => promised.close())
      assert.deepStrictEqual(yield* Fiber.join(batchFiber), ["ShuttingDown", "ShuttingDown"])
    }))
})

describe("OipClient.connect (Promises)", () => {
  it("aborting a request's signal closes its connection and rejects with Cancelled; close ends the client", async () => {
    const closed: Array<string> = []
    const server = Http.createServer((req) => req.on("close", () => closed.push(req.url ?? "")))
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()))
    try {
      const client = OipClient.connect({ url: `http://127.0.0.1:${(server.address() as Net.AddressInfo).port}` })
      const controller = new AbortController()
      const pending = client.infer(InferenceRequest.make("m", { x: Tensor.float32([1], [1]) }, { requestId: "q" }), { signal: controller.signal })
      await new Promise((r) => setTimeout(r, 50))
      controller.abort("the user left")
      const error = await pending.then(() => undefined, (e: unknown) => e)
      assert.isTrue(InferenceError.isInferenceError(error))
      assert.deepStrictEqual({ ...(error as InferenceError.InferenceError).reason }, { ...new InferenceError.Cancelled({ requestId: "q", reason: "the user left" }) })
      for (let i = 0; i < 100 && closed.length === 0; i++) await new Promise((r) => setTimeout(r, 5))
      assert.deepStrictEqual(closed, ["/v2/models/m/infer"])
      await client.close()
      assert.throws(() => OipClient.connect({ url: "https://example.com" }), /is not an http:\/\/ URL/)
    } finally {
      server.closeAllConnections()
      server.close()
    }
  })
})

describe("OipClient against the server", () => {
  let server: ServerProcess

  beforeAll(async () => {
    server = await startServer(["--port", "0", "--grpc-port", "off"])
  }, 40_000)

  afterAll(() => {
    if (server !== undefined && server.child.exitCode === null) server.child.kill("SIGKILL")
  })

  const row = Float32Array.from({ length: 784 }, (_, i) => (i % 17) / 17)

  it.live("infer: binary and JSON both ways give the same logits; metadata and readiness", () =>
    Effect.gen(function*() {
      const url = `http://127.0.0.1:${server.http}`
      const binary = yield* OipClient.make({ url })
      const json = yield* OipClient.make({ url, binaryInputs: false, binaryOutputs: false })
      const req = InferenceRequest.make("mlp", { input: Tensor.float32(row, [1, 784]) }, { requestId: "mine" })
      const a = yield* binary.infer(req)
      const b = yield* json.infer(req)
      assert.deepStrictEqual([a.requestId, a.modelVersion, a.deviceUsed, Object.keys(a.outputs)], ["mine", "1", "remote", ["logits"]])
      assert.deepStrictEqual(a.outputs["logits"]!.dims, [1, 10])
      const x = a.outputs["logits"]!.data as Float32Array
      const y = b.outputs["logits"]!.data as Float32Array
      // JSON prints each float32 so that it reads back the same
      assert.deepStrictEqual(Array.from(x), Array.from(y))
      assert.isTrue(x.some((v) => v !== 0))
      const metadata = yield* binary.metadata("mlp")
      assert.deepStrictEqual([metadata.version, metadata.inputs.map((t) => [t.name, t.dtype, t.dims])], ["1", [["input", "float32", [-1, 784]]]])
      assert.isTrue(yield* binary.ready())
      assert.isTrue(yield* binary.ready("mlp"))
      assert.isFalse(yield* binary.ready("nope"))
      const unreachable = yield* OipClient.make({ url: "http://127.0.0.1:9" })
      assert.isFalse(yield* unreachable.ready())
      const down = yield* Effect.flip(unreachable.infer(req))
      assert.strictEqual(down.reason._tag, "ModelUnavailable")
      assert.isTrue(down.reason._tag === "ModelUnavailable" && down.reason.unreachable === true)
      assert.include(down.message, "ECONNREFUSED")
    }))

  it.live("refusals are the engine's own typed errors: an unknown model, an input that does not fit (named), a version the model lacks", () =>
    Effect.gen(function*() {
      const client = yield* OipClient.make({ url: `http://127.0.0.1:${server.http}` })
      const nope = yield* Effect.flip(client.infer(InferenceRequest.make("nope", { input: Tensor.float32(row, [1, 784]) })))
      assert.deepStrictEqual({ ...nope.reason }, { ...new InferenceError.ModelNotFound({ modelId: "nope" }) })
      const wrong = yield* Effect.flip(client.infer(InferenceRequest.make("mlp", { input: Tensor.float32([1, 2], [1, 2]) })))
      assert.strictEqual(wrong.reason._tag, "InvalidInput")
      if (wrong.reason._tag === "InvalidInput") {
        assert.strictEqual(wrong.reason.input, "input")
        // the server's words once, not wrapped in the client's own prefix
        assert.strictEqual(wrong.message.split("for model").length, 2, wrong.message)
      }
      const version = yield* Effect.flip(client.infer(InferenceRequest.make("mlp", { input: Tensor.float32(row, [1, 784]) }, { modelVersion: "9" })))
      assert.strictEqual(version.reason._tag, "ModelNotFound")
      // the same through the Promise client
      const promised = OipClient.connect({ url: `http://127.0.0.1:${server.http}` })
      const answered = yield* Effect.promise(() => promised.infer(InferenceRequest.make("mlp", { input: Tensor.float32(row, [1, 784]) })))
      assert.deepStrictEqual(answered.outputs["logits"]!.dims, [1, 10])
      const refused = yield* Effect.promise(() => promised.infer(InferenceRequest.make("mlp", { input: Tensor.float32([1, 2], [1, 2]) })).then(() => undefined, (e: unknown) => e))
      assert.strictEqual((refused as InferenceError.InferenceError).reason._tag, "InvalidInput")
      yield* Effect.promise(() => promised.close())
      const missing = yield* Effect.flip(client.metadata("nope"))
      assert.strictEqual(missing.reason._tag, "ModelNotFound")
      assert.isFalse(wrong.isRetryable)
    }), 20_000)

  it.live("many requests at once over the client's connections, each answered with its own row's logits", () =>
    Effect.gen(function*() {
      const client = yield* OipClient.make({ url: `http://127.0.0.1:${server.http}`, maxSockets: 8 })
      const rows = Array.from({ length: 40 }, (_, r) => Float32Array.from({ length: 784 }, (_, i) => ((i + r) % 13) / 13))
      const alone = yield* Effect.forEach(rows.slice(0, 3), (r) => client.infer(InferenceRequest.make("mlp", { input: Tensor.float32(r, [1, 784]) })))
      const together = yield* Effect.forEach(rows, (r) => client.infer(InferenceRequest.make("mlp", { input: Tensor.float32(r, [1, 784]) }, { timeout: Duration.seconds(10) })), { concurrency: 40 })
      // (batched with others, a row's logits may differ from its run alone by float rounding)
      for (let r = 0; r < 3; r++) {
        const got = together[r]!.outputs["logits"]!.data as Float32Array
        ;(alone[r]!.outputs["logits"]!.data as Float32Array).forEach((v, i) => assert.closeTo(got[i]!, v, 1e-5))
      }
      assert.notDeepEqual(Array.from(together[0]!.outputs["logits"]!.data as Float32Array), Array.from(together[1]!.outputs["logits"]!.data as Float32Array))
    }), 30_000)
})
