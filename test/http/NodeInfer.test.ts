/**
 * The infer route on Node's request event (`NodeInfer`): which requests it takes and which it
 * leaves to the router, that its answers are the router's byte for byte, and that it keeps the
 * route's contracts (disconnect cancels, in-flight counting, Connection: close in a shutdown).
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer } from "effect"
import { HttpServer } from "effect/http"
import * as Http from "node:http"
import * as Net from "node:net"
import { AsyncConfigService } from "../../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import type * as InferenceError from "../../src/InferenceError.ts"
import * as LifecycleModule from "../../src/http/Lifecycle.ts"
import { Lifecycle } from "../../src/http/Lifecycle.ts"
import * as DecodePool from "../../src/http/DecodePool.ts"
import * as InferExchange from "../../src/http/InferExchange.ts"
import type * as QueuePolicy from "../../src/QueuePolicy.ts"
import * as NodeInfer from "../../src/http/NodeInfer.ts"
import * as Server from "../../src/http/Server.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"
import { ModelPool } from "../../src/ModelPool.ts"
import { TelemetryCollector } from "../../src/Telemetry.ts"
import * as Tensor from "../../src/Tensor.ts"
import * as Client from "./HttpClient.ts"
import { countedDecodePool, makeTestPool, routeOptions, withFreshMetrics } from "./TestApp.ts"

const echoBody = { inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4] }] }

interface Sent {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly body: Buffer
}

/** One request with exactly these headers (Content-Length always set from the body). */
const request = (port: number, method: string, path: string, body: string | Buffer, headers: Record<string, string> = {}): Promise<Sent> =>
  new Promise((resolve, reject) => {
    const bytes = typeof body === "string" ? Buffer.from(body) : body
    const r = Http.request({ host: "127.0.0.1", port, method, path, agent: false, headers: { ...headers, "content-length": bytes.length } }, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (c: Buffer) => chunks.push(c))
      response.on("end", () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks) }))
    })
    r.on("error", reject)
    r.end(bytes)
  })

describe("NodeInfer.matchInferPath", () => {
  const table: ReadonlyArray<readonly [string, ReturnType<typeof NodeInfer.matchInferPath>]> = [
    ["/v2/models/mlp/infer", { name: "mlp", version: undefined }],
    ["/v2/models/mlp/infer/", { name: "mlp", version: undefined }],
    ["/v2/models/mlp/infer?x=1", { name: "mlp", version: undefined }],
    ["/v2/models/mlp/versions/12/infer", { name: "mlp", version: "12" }],
    ["/v2/models/a.b-c_d/versions/1/infer", { name: "a.b-c_d", version: "1" }],
    ["/v2/models/mlp/versions/x/infer", undefined],
    ["/v2/models/mlp/versions/1/2/infer", undefined],
    ["/v2/models/.hidden/infer", undefined],
    ["/v2/models/ml%20p/infer", undefined],
    ["/v2/models//infer", undefined],
    ["/v2/models/mlp/ready", undefined],
    ["/v2/models/mlp", undefined],
    ["/v2/models/infer", undefined],
    ["/v1/models/mlp/infer", undefined]
  ]
  for (const [url, expected] of table) {
    it(`${url} → ${JSON.stringify(expected)}`, () => {
      assert.deepStrictEqual(NodeInfer.matchInferPath(url), expected)
    })
  }
})

/** The handler alone on a Node server: what it declines answers 599, so a test sees who answered. */
const makeHandlerServer = (
  options: {
    readonly bodyLimitBytes?: number
    readonly maxQueuedRequests?: number
    readonly decodePool?: DecodePool.DecodePool
    readonly largeBodyBytes?: number
    readonly largeAnswerValues?: number
    readonly decodeInFlightLimit?: number
    readonly slowMetadata?: Partial<ModelMetadata.ModelMetadata>
    readonly responseCacheBytes?: number
  } = {}
) =>
  Effect.gen(function*() {
    const testPool = yield* makeTestPool({ slowLatency: "20 millis", slowMetadata: options.slowMetadata })
    const context = yield* Layer.build(AsyncInferenceEngine.layer.pipe(
      Layer.provideMerge(Layer.mergeAll(
        testPool.layer,
        TelemetryCollector.layer,
        AsyncConfigService.layerWith({ maxConcurrentRequests: 1, maxQueuedRequests: options.maxQueuedRequests ?? 16, responseCacheBytes: options.responseCacheBytes }),
        Lifecycle.layer
      ))
    ))
    const engine = Context.get(context, AsyncInferenceEngine)
    const lifecycle = Context.get(context, Lifecycle)
    const pool = Context.get(context, ModelPool)
    const invalid: Array<InferenceError.Reason> = []
    const defects: Array<unknown> = []
    const handler = NodeInfer.make({
      engine,
      metadataUnsafe: pool.metadataUnsafe!,
      lifecycle,
      bodyLimitBytes: options.bodyLimitBytes ?? 1024,
      errorOf: (reason) => ({ status: reason._tag === "QueueFull" ? 429 : reason._tag === "DeadlineExceeded" ? 504 : 400, message: reason.message }),
      recordRefused: (_, reason) => void invalid.push(reason),
      onDefect: (defect) => void defects.push(defect),
      decodePool: options.decodePool,
      largeBodyBytes: options.largeBodyBytes,
      largeAnswerValues: options.largeAnswerValues,
      decodeInFlightLimit: options.decodeInFlightLimit
    })
    const server = Http.createServer((req, res) => {
      if (handler(req, res)) return
      req.resume()
      res.writeHead(599).end()
    })
    yield* Effect.acquireRelease(
      Effect.callback<void>((resume) => void server.listen(0, "127.0.0.1", () => resume(Effect.void))),
      () => Effect.sync(() => server.close())
    )
    const port = (server.address() as { port: number }).port
    return { port, engine, lifecycle, gate: testPool.gate, stats: testPool.stats, down: testPool.down, invalid, defects }
  })

describe("NodeInfer.make", () => {
  it.live("refuses a body nested deeper than 64 levels before JSON.parse (which takes about half a microsecond and an array per level)", () =>
    Effect.gen(function*() {
      const { port, invalid } = yield* makeHandlerServer({ bodyLimitBytes: 1 << 20 })
      const deep = yield* Effect.promise(() =>
        request(port, "POST", "/v2/models/echo/infer", `{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ${"[".repeat(20_000)}0${"]".repeat(20_000)}}]}`)
      )
      assert.strictEqual(deep.status, 400)
      assert.match(JSON.parse(deep.body.toString()).error, /^the request body nests arrays or objects more than 64 levels deep/)
      assert.strictEqual(invalid.length, 0, "not JSON the server reads: refused as a malformed body is, not counted against the model")
    }))

  it.live("outputs of more than maxJsonOutputValues values are refused as JSON (400, naming binary data), and come as binary data", () =>
    Effect.gen(function*() {
      const { port, defects } = yield* makeHandlerServer({ bodyLimitBytes: 8 << 20 })
      const rows = InferExchange.maxJsonOutputValues / 4 + 1
      const bytes = Buffer.alloc(rows * 4 * 4)
      const post = (parameters: Record<string, unknown>) => {
        const head = Buffer.from(JSON.stringify({ inputs: [{ name: "x", datatype: "FP32", shape: [rows, 4], parameters: { binary_data_size: bytes.length } }], parameters }))
        return Effect.promise(() => request(port, "POST", "/v2/models/echo/infer", Buffer.concat([head, bytes]), { "inference-header-content-length": String(head.length) }))
      }
      const json = yield* post({})
      assert.strictEqual(json.status, 400, json.body.toString().slice(0, 200))
      assert.match(JSON.parse(json.body.toString()).error, /^the outputs asked as JSON hold 1048580 values, more than the 1048576 a JSON answer carries; ask for them as binary tensor data/)
      const binary = yield* post({ binary_data_output: true })
      assert.strictEqual(binary.status, 200)
      assert.deepStrictEqual(defects, [])
    }))

  it.live("a model at its own queue bound (maxQueuedRequests) is refused 429 before decoding; another model is still served", () =>
    Effect.gen(function*() {
      const { port, gate, invalid, engine } = yield* makeHandlerServer({ slowMetadata: { maxQueuedRequests: 1, concurrency: 1 } })
      yield* gate.close
      const json = JSON.stringify(echoBody)
      const post = (model: string) => Client.start(port, "POST", `/v2/models/${model}/infer`, json)
      const running = post("slow")
      const queued = post("slow")
      yield* Effect.promise(() => Client.eventually(() => Effect.runSync(engine.pending) === 2))
      // The third: refused before decoding (one runs, one waits: the model's bound of 1).
      const refused = yield* Effect.promise(() => post("slow").done)
      assert.isTrue(Client.isReply(refused) && refused.status === 429, JSON.stringify(refused).slice(0, 200))
      if (Client.isReply(refused)) assert.match(JSON.parse(refused.body).error, /^queue full: model slow already has 1 requests waiting/)
      assert.deepInclude(invalid.at(-1), { _tag: "QueueFull", capacity: 1, bound: "model" })
      // Another model is admitted (it waits for the one permit the running request holds).
      const other = post("echo")
      yield* gate.open
      for (const p of [running, queued, other]) {
        const outcome = yield* Effect.promise(() => p.done)
        assert.isTrue(Client.isReply(outcome) && outcome.status === 200, JSON.stringify(outcome).slice(0, 200))
      }
    }))

  it.live("a model at its own queue bound that uses the response cache: a repeated request is answered from it (200), a new one refused 429", () =>
    Effect.gen(function*() {
      const { port, gate, engine, stats } = yield* makeHandlerServer({ slowMetadata: { maxQueuedRequests: 1, concurrency: 1, responseCache: true }, responseCacheBytes: 100_000 })
      const body = (first: number) => JSON.stringify({ inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", data: [first, 2, 3, 4] }] })
      const post = (first: number) => Client.start(port, "POST", "/v2/models/slow/infer", body(first))
      const primed = yield* Effect.promise(() => post(1).done)
      assert.isTrue(Client.isReply(primed) && primed.status === 200)
      yield* gate.close
      const running = post(2)
      const queued = post(3)
      yield* Effect.promise(() => Client.eventually(() => Effect.runSync(engine.pending) === 2))
      const runs = stats.started
      const hit = yield* Effect.promise(() => post(1).done)
      assert.isTrue(Client.isReply(hit) && hit.status === 200, JSON.stringify(hit).slice(0, 200))
      if (Client.isReply(hit)) assert.deepStrictEqual(JSON.parse(hit.body).outputs[0].data, [1, 2, 3, 4])
      const refused = yield* Effect.promise(() => post(4).done)
      assert.isTrue(Client.isReply(refused) && refused.status === 429, JSON.stringify(refused).slice(0, 200))
      assert.strictEqual(stats.started, runs, "neither ran")
      yield* gate.open
      for (const p of [running, queued]) {
        const outcome = yield* Effect.promise(() => p.done)
        assert.isTrue(Client.isReply(outcome) && outcome.status === 200)
      }
    }))

  it.live("declines what the router must answer, and answers the rest", () =>
    Effect.gen(function*() {
      const { port, lifecycle, invalid, defects } = yield* makeHandlerServer()
      const json = JSON.stringify(echoBody)
      const post = (path: string, body: string | Buffer = json, headers: Record<string, string> = {}) =>
        Effect.promise(() => request(port, "POST", path, body, headers))

      // Declined: the router answers these (its 4xx/5xx, or a route that is not infer).
      for (const [path, headers, body] of [
        ["/v2/models/echo/ready", {}, json],
        ["/v2/models/nope/infer", {}, json],
        ["/v2/models/broken/infer", {}, json],
        ["/v2/models/echo/versions/9/infer", {}, json],
        ["/v2/models/bad%name/infer", {}, json],
        ["/v2/models/echo/infer", { "content-encoding": "identity" }, json],
        ["/v2/models/echo/infer", {}, "x".repeat(1025)]
      ] as const) {
        assert.strictEqual((yield* post(path, body, headers)).status, 599, `${path} ${JSON.stringify(headers)} is the router's`)
      }
      assert.strictEqual((yield* Effect.promise(() => request(port, "GET", "/v2/models/echo/infer", ""))).status, 599)

      // Answered here.
      const ok = yield* post("/v2/models/echo/versions/1/infer", JSON.stringify({ id: "r1", ...echoBody }))
      assert.strictEqual(ok.status, 200, ok.body.toString())
      assert.strictEqual(ok.headers["content-type"], "application/json")
      assert.deepStrictEqual(JSON.parse(ok.body.toString()), {
        model_name: "echo",
        model_version: "1",
        id: "r1",
        outputs: [{ name: "y", datatype: "FP32", shape: [1, 4], data: [1, 2, 3, 4] }]
      })
      const notJson = yield* post("/v2/models/echo/infer", "{")
      assert.strictEqual(notJson.status, 400)
      assert.match(JSON.parse(notJson.body.toString()).error, /^the request body is not valid JSON/)
      // Not UTF-8 (0xff in the id): refused, not answered with U+FFFD in the echoed id.
      const notUtf8 = yield* post("/v2/models/echo/infer", Buffer.concat([Buffer.from('{"id": "'), Buffer.of(0xff), Buffer.from(`", ${json.slice(1)}`)]))
      assert.strictEqual(notUtf8.status, 400, notUtf8.body.toString())
      assert.strictEqual(JSON.parse(notUtf8.body.toString()).error, "the request body is not valid UTF-8, as JSON text must be (RFC 8259 §8.1)")
      const wrong = yield* post("/v2/models/echo/infer", JSON.stringify({ inputs: [{ name: "x", shape: [1, 4], datatype: "INT32", data: [1, 2, 3, 4] }] }))
      assert.strictEqual(wrong.status, 400)
      assert.strictEqual(invalid.length, 1, "a body that does not fit its model is counted as refused")
      assert.include(JSON.parse(wrong.body.toString()).error, "the model takes FP32")
      const late = yield* post("/v2/models/slow/infer", JSON.stringify({ parameters: { timeout: 5000 }, ...echoBody }))
      assert.strictEqual(late.status, 504, "the engine's failure, as errorOf maps it")
      // Classification (Triton's extension) here too: the same module encodes it.
      const classes = yield* post("/v2/models/echo/versions/1/infer", JSON.stringify({ ...echoBody, outputs: [{ name: "y", parameters: { classification: 2 } }] }))
      assert.strictEqual(classes.status, 200, classes.body.toString())
      assert.deepStrictEqual(JSON.parse(classes.body.toString()).outputs, [{ name: "y", datatype: "BYTES", shape: [2], data: ["4.000000:3", "3.000000:2"] }])

      // Binary tensor data both ways.
      const head = Buffer.from(JSON.stringify({
        inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", parameters: { binary_data_size: 16 } }],
        parameters: { binary_data_output: true }
      }))
      const binary = yield* post(
        "/v2/models/echo/versions/2/infer",
        Buffer.concat([head, Buffer.from(new Float32Array([1.5, -2, 0, 4]).buffer)]) as unknown as string,
        { "inference-header-content-length": String(head.length) }
      )
      assert.strictEqual(binary.status, 200, binary.body.toString())
      assert.strictEqual(binary.headers["content-type"], "application/octet-stream")
      const jsonLength = Number(binary.headers["inference-header-content-length"])
      assert.deepStrictEqual(JSON.parse(binary.body.subarray(0, jsonLength).toString()).outputs[0].parameters, { binary_data_size: 16 })
      const tail = binary.body.subarray(jsonLength)
      assert.deepStrictEqual([...new Float32Array(tail.buffer.slice(tail.byteOffset, tail.byteOffset + tail.length))], [3, -4, 0, 8])
      const badSplit = yield* post("/v2/models/echo/infer", json, { "inference-header-content-length": "99999" })
      assert.strictEqual(badSplit.status, 400)
      // A header as long as the whole body: all JSON, no binary part (tritonclient sends this).
      const whole = yield* post("/v2/models/echo/infer", json, { "inference-header-content-length": String(Buffer.byteLength(json)) })
      assert.strictEqual(whole.status, 200, whole.body.toString())
      // An output asked for twice is answered once.
      const twice = yield* post("/v2/models/echo/infer", JSON.stringify({ ...echoBody, outputs: [{ name: "y" }, { name: "y" }] }))
      assert.strictEqual(twice.status, 200, twice.body.toString())
      assert.deepStrictEqual(JSON.parse(twice.body.toString()).outputs.map((o: { name: string }) => o.name), ["y"])

      assert.strictEqual(lifecycle.inFlight(), 0, "every request left the in-flight count")
      assert.deepStrictEqual(defects, [])
    }).pipe(withFreshMetrics))

  it.live("a body larger than upfrontBodyBytes gets its memory as it arrives, not from Content-Length; it is still read whole, JSON and binary", () =>
    Effect.gen(function*() {
      const { port, lifecycle } = yield* makeHandlerServer({ bodyLimitBytes: 16_000_000 })
      // Read whole: bodies of several chunks, past the threshold, answered exactly.
      const n = 60_000
      const values = Array.from({ length: n }, (_, i) => (i % 1000) / 8)
      const big = JSON.stringify({ inputs: [{ name: "x", shape: [1, n], datatype: "FP32", data: values }] })
      assert.isAbove(big.length, 256 * 1024, "several times upfrontBodyBytes")
      const json = yield* Effect.promise(() => request(port, "POST", "/v2/models/identity_float32/infer", big))
      assert.strictEqual(json.status, 200, json.body.toString().slice(0, 200))
      assert.deepStrictEqual(JSON.parse(json.body.toString()).outputs[0].data, values)
      const head = Buffer.from(JSON.stringify({
        inputs: [{ name: "x", shape: [1, n], datatype: "FP32", parameters: { binary_data_size: n * 4 } }],
        parameters: { binary_data_output: true }
      }))
      const bytes = Buffer.from(new Float32Array(values).buffer)
      const binary = yield* Effect.promise(() =>
        request(port, "POST", "/v2/models/identity_float32/infer", Buffer.concat([head, bytes]), { "inference-header-content-length": String(head.length) })
      )
      assert.strictEqual(binary.status, 200, binary.body.toString().slice(0, 200))
      const jsonLength = Number(binary.headers["inference-header-content-length"])
      assert.isTrue(binary.body.subarray(jsonLength).equals(bytes), "the binary part came back byte for byte")

      // 20 clients each declare 16 MB (half of them with a binary part) and send one byte.
      const before = process.memoryUsage().arrayBuffers
      const sockets = Array.from({ length: 20 }, (_, i) => {
        const socket = Net.connect({ port, host: "127.0.0.1" })
        const split = i % 2 === 0 ? "" : "Inference-Header-Content-Length: 100\r\n"
        socket.on("error", () => {})
        socket.write(`POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 16000000\r\n${split}\r\n{`)
        return socket
      })
      yield* Effect.promise(() => Client.eventually(() => lifecycle.inFlight() === 20))
      yield* Effect.sleep(50)
      const grownMb = (process.memoryUsage().arrayBuffers - before) / 1e6
      for (const socket of sockets) socket.destroy()
      assert.isBelow(grownMb, 20, `20 bodies of one byte reserved ${grownMb.toFixed(0)} MB`)
      yield* Effect.promise(() => Client.eventually(() => lifecycle.inFlight() === 0))
    }).pipe(withFreshMetrics))

  it.live("a model unloaded while the body arrived is answered with the router's error and counted, as the router counts it", () =>
    Effect.gen(function*() {
      const { port, down, invalid } = yield* makeHandlerServer()
      const client = Client.partialEchoPost(port, JSON.stringify(echoBody), 10)
      yield* Effect.addFinalizer(() => Effect.sync(client.close))
      yield* Effect.sleep("50 millis")
      down.add("echo")
      client.rest()
      yield* Effect.promise(() => Client.eventually(() => client.received().includes("\r\n\r\n{")))
      const received = client.received()
      // This harness's `errorOf` answers 400 for it (the server's answers 503).
      assert.include(received, "unloaded")
      assert.deepStrictEqual(invalid.map((r) => r._tag), ["ModelUnavailable"])
    }).pipe(withFreshMetrics))

  it.live("a queue that filled while a body arrived answers 429 once the body is in, before decoding it", () =>
    Effect.gen(function*() {
      const { port, gate, lifecycle, invalid } = yield* makeHandlerServer({ maxQueuedRequests: 1 })
      yield* gate.close
      // Accepted while the queue is empty; its body (not JSON: decoding it would answer 400) comes later.
      const client = Client.partialEchoPost(port, "{".repeat(40), 5)
      yield* Effect.addFinalizer(() => Effect.sync(client.close))
      yield* Effect.promise(() => Client.eventually(() => lifecycle.inFlight() === 1))
      const running = Client.start(port, "POST", "/v2/models/slow/infer", echoBody)
      const queued = Client.start(port, "POST", "/v2/models/slow/infer", echoBody)
      yield* Effect.promise(() => Client.eventually(() => lifecycle.inFlight() === 3))
      yield* Effect.sleep(20)
      client.rest()
      yield* Effect.promise(() => Client.eventually(() => client.received().includes("\r\n\r\n{")))
      assert.match(client.received(), /^HTTP\/1\.1 429 /, client.received().slice(0, 200))
      assert.deepStrictEqual(invalid.map((r) => r._tag), ["QueueFull"])
      yield* gate.open
      for (const pending of [running, queued]) yield* Effect.promise(() => pending.done)
    }).pipe(withFreshMetrics))

  it.live("a full queue or a shutdown is declined before the body is read (the router answers 429 or 503)", () =>
    Effect.gen(function*() {
      const { port, gate, lifecycle } = yield* makeHandlerServer({ maxQueuedRequests: 1 })
      yield* gate.close
      const running = Client.start(port, "POST", "/v2/models/slow/infer", echoBody)
      const queued = Client.start(port, "POST", "/v2/models/slow/infer", echoBody)
      yield* Effect.promise(() => Client.eventually(() => lifecycle.inFlight() === 2))
      yield* Effect.sleep(20)
      assert.strictEqual((yield* Effect.promise(() => request(port, "POST", "/v2/models/echo/infer", JSON.stringify(echoBody)))).status, 599)
      yield* gate.open
      for (const pending of [running, queued]) {
        const reply = yield* Effect.promise(() => pending.done)
        assert.isTrue(Client.isReply(reply) && reply.status === 200)
      }
      yield* lifecycle.beginShutdown
      assert.strictEqual((yield* Effect.promise(() => request(port, "POST", "/v2/models/echo/infer", JSON.stringify(echoBody)))).status, 599)
    }).pipe(withFreshMetrics))

  it.live("a request that arrived before the shutdown began is answered with Connection: close; a client that leaves cancels its request", () =>
    Effect.gen(function*() {
      const { port, gate, lifecycle, engine, stats } = yield* makeHandlerServer()
      yield* gate.close
      const running = Client.start(port, "POST", "/v2/models/slow/infer", echoBody)
      yield* Effect.promise(() => Client.eventually(() => stats.started === 1))
      const queued = Client.start(port, "POST", "/v2/models/echo/infer", echoBody)
      yield* Effect.promise(() => Client.eventually(async () => (await Effect.runPromise(engine.pending)) === 2))
      queued.request.destroy()
      yield* Effect.promise(() => Client.eventually(async () => (await Effect.runPromise(engine.pending)) === 1))
      assert.strictEqual((yield* engine.queueStats).total, 0, "the abandoned request left the queue")
      yield* Effect.promise(() => Client.eventually(() => lifecycle.inFlight() === 1))
      yield* lifecycle.beginShutdown
      yield* gate.open
      const reply = yield* Effect.promise(() => running.done)
      assert.isTrue(Client.isReply(reply) && reply.status === 200 && reply.headers["connection"] === "close")
      assert.strictEqual(stats.started, 1, "the cancelled request never ran")
      yield* Effect.promise(() => Client.eventually(() => lifecycle.inFlight() === 0))
    }).pipe(withFreshMetrics))
})

describe("NodeInfer with decode threads", () => {
  it.live("large JSON bodies that queue up are decoded on a thread, Critical ones here, and every answer is right", () =>
    Effect.gen(function*() {
      const { pool: decodePool, calls } = yield* countedDecodePool
      const { port, defects } = yield* makeHandlerServer({ bodyLimitBytes: 1 << 20, maxQueuedRequests: 512, decodePool })
      const agent = new Http.Agent({ keepAlive: true, maxSockets: 32 })
      yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
      const row = (i: number) => Array.from({ length: 600 }, (_, j) => Math.fround((i * 600 + j) / 7919))
      const one = (i: number) =>
        new Promise<{ i: number; status: number; body: any }>((resolve, reject) => {
          const payload = Buffer.from(JSON.stringify({
            id: String(i),
            parameters: { priority: i % 10 === 0 ? 1 : 4 },
            inputs: [{ name: "x", shape: [1, 600], datatype: "FP32", data: row(i) }]
          }))
          const r = Http.request({ host: "127.0.0.1", port, method: "POST", path: "/v2/models/identity_float32/infer", agent, headers: { "content-length": payload.length } }, (response) => {
            const chunks: Array<Buffer> = []
            response.on("data", (c: Buffer) => chunks.push(c))
            response.on("end", () => resolve({ i, status: response.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) }))
          })
          r.on("error", reject)
          r.end(payload)
        })
      const replies = yield* Effect.promise(() => Promise.all(Array.from({ length: 200 }, (_, i) => one(i))))
      for (const reply of replies) {
        assert.strictEqual(reply.status, 200, JSON.stringify(reply.body))
        assert.strictEqual(reply.body.id, String(reply.i))
        // Floats print as the shortest text that reads back to the same float32.
        assert.deepStrictEqual((reply.body.outputs[0].data as Array<number>).map(Math.fround), row(reply.i))
      }
      assert.isAbove(calls.bodies.length, 0, "some bodies went to the decode thread")
      assert.isBelow(calls.bodies.length, 200, "not all: the first (nothing queued yet) and the Critical ones are decoded here")
      assert.deepStrictEqual(defects, [])
    }).pipe(withFreshMetrics))
})

describe("NodeInfer with large bodies", () => {
  /** A body for `identity_float32` of `n` values (row-major [1, n]), Critical or not. */
  const identityBody = (n: number, critical: boolean) => {
    const data = Array.from({ length: n }, (_, j) => Math.fround(j / 7919))
    return { data, text: JSON.stringify({ parameters: { priority: critical ? 1 : 4 }, inputs: [{ name: "x", shape: [1, n], datatype: "FP32", data }] }) }
  }

  it.live("a JSON body of largeBodyBytes and more is decoded on a thread when nothing else waits and when Critical, from memory it shares; a smaller one here", () =>
    Effect.gen(function*() {
      const { pool: decodePool, calls } = yield* countedDecodePool
      const sent = () => calls.bodies.map((bytes) => ({ bytes: bytes.length, shared: typeof bytes !== "string" && bytes.buffer instanceof SharedArrayBuffer }))
      // No decode threads for bodies that queue up (decodeInFlightLimit 0): only the large rule sends any.
      const { port, defects } = yield* makeHandlerServer({ bodyLimitBytes: 1 << 20, decodePool, largeBodyBytes: 16_384, decodeInFlightLimit: 0 })
      const small = identityBody(100, false)
      const large = identityBody(2000, true)
      assert.isBelow(Buffer.byteLength(small.text), 16_384)
      assert.isAbove(Buffer.byteLength(large.text), 16_384)
      for (const [body, data] of [[small.text, small.data], [large.text, large.data]] as const) {
        const reply = yield* Effect.promise(() => request(port, "POST", "/v2/models/identity_float32/infer", body))
        assert.strictEqual(reply.status, 200, reply.body.toString())
        assert.deepStrictEqual((JSON.parse(reply.body.toString()).outputs[0].data as Array<number>).map(Math.fround), data)
      }
      assert.deepStrictEqual(sent(), [{ bytes: Buffer.byteLength(large.text), shared: true }], "the large body alone, shared, not copied")
      assert.strictEqual(calls.starts, 1, "its thread was started as the body arrived")
      // A large body that is not valid for the model: the thread's refusal is the answer.
      const bad = yield* Effect.promise(() => request(port, "POST", "/v2/models/identity_float32/infer", large.text.replace("[1,2000]", "[1,2001]")))
      assert.strictEqual(bad.status, 400)
      assert.match(JSON.parse(bad.body.toString()).error, /2001/)
      assert.strictEqual(calls.bodies.length, 2)
      assert.deepStrictEqual(defects, [])
    }).pipe(withFreshMetrics))

  it.live("an answer of largeAnswerValues JSON values and more is encoded on a thread, the same bytes as here; a smaller one here", () =>
    Effect.gen(function*() {
      const { pool: decodePool, calls } = yield* countedDecodePool
      const threaded = yield* makeHandlerServer({ bodyLimitBytes: 1 << 20, decodePool, largeAnswerValues: 1000 })
      const here = yield* makeHandlerServer({ bodyLimitBytes: 1 << 20 })
      for (const n of [999, 1000, 3000]) {
        const { text } = identityBody(n, false)
        const [a, b] = yield* Effect.promise(() => Promise.all([request(threaded.port, "POST", "/v2/models/identity_float32/infer", text), request(here.port, "POST", "/v2/models/identity_float32/infer", text)]))
        assert.strictEqual(a.status, 200, a.body.toString())
        assert.strictEqual(a.headers["content-type"], "application/json")
        assert.strictEqual(a.headers["content-length"], b.headers["content-length"])
        assert.isTrue(a.body.equals(b.body), `${n} values: the same bytes`)
      }
      assert.strictEqual(calls.encodes, 2, "the answers of 1,000 and 3,000 values")
      // binary outputs are not JSON values: a large one asked as binary is encoded here
      const { text } = identityBody(3000, false)
      const binary = JSON.stringify({ ...JSON.parse(text), parameters: { binary_data_output: true } })
      const r = yield* Effect.promise(() => request(threaded.port, "POST", "/v2/models/identity_float32/infer", binary))
      assert.strictEqual(r.status, 200)
      assert.strictEqual(r.headers["content-type"], "application/octet-stream")
      assert.strictEqual(calls.encodes, 2)
      assert.deepStrictEqual([...threaded.defects, ...here.defects], [])
    }).pipe(withFreshMetrics))

  it.live("a shutdown that begins while a large answer is encoded on a thread: a sequence that goes on keeps its connection", () =>
    Effect.gen(function*() {
      const lifecycle = yield* LifecycleModule.make
      const real = DecodePool.make(1)
      yield* Effect.addFinalizer(() => Effect.sync(real.close))
      yield* Effect.promise(() => real.warm())
      let encodes = 0
      const decodePool: DecodePool.DecodePool = {
        ...real,
        encode: (response, onDone) => {
          encodes++
          Effect.runSync(lifecycle.beginShutdown)
          real.encode(response, onDone)
        }
      }
      const n = 70_000
      const metadata: ModelMetadata.ModelMetadata = { name: "m", version: "1", inputs: [{ name: "x", dtype: "float32", dims: [-1] }], outputs: [{ name: "y", dtype: "float32", dims: [-1] }] }
      // an engine whose sequence 1 goes on after this request, answering n values
      const engine = {
        config: { aging: undefined },
        admitsUnsafe: () => true,
        queueFullUnsafe: () => undefined,
        isDraining: Effect.succeed(false),
        sequencesUnderWayUnsafe: () => true,
        takesSequenceUnsafe: () => true,
        inferUnsafe: (_request: unknown, onExit: (exit: Exit.Exit<unknown>) => void) => {
          setTimeout(() => onExit(Exit.succeed({ modelVersion: "1", outputs: { y: Tensor.float32(new Float32Array(n), [n]) } })), 1)
          return () => {}
        }
      } as unknown as NodeInfer.Options["engine"]
      const handler = NodeInfer.make({
        engine,
        lifecycle,
        metadataUnsafe: () => metadata,
        bodyLimitBytes: 1 << 20,
        errorOf: (reason) => ({ status: 400, message: reason.message }),
        recordRefused: () => {},
        onDefect: (defect) => assert.fail(String(defect)),
        decodePool,
        largeAnswerValues: 65_536
      })
      const server = Http.createServer((req, res) => {
        if (!handler(req, res)) res.writeHead(599).end()
      })
      yield* Effect.acquireRelease(
        Effect.callback<void>((resume) => void server.listen(0, "127.0.0.1", () => resume(Effect.void))),
        () => Effect.sync(() => server.close())
      )
      const port = (server.address() as { port: number }).port
      // a client that keeps its connection (without an agent, Node's client asks to close it)
      const agent = new Http.Agent({ keepAlive: true })
      yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
      const body = Buffer.from(JSON.stringify({ parameters: { sequence_id: 1 }, inputs: [{ name: "x", shape: [1], datatype: "FP32", data: [1] }] }))
      const reply = yield* Effect.promise(() =>
        new Promise<Http.IncomingMessage>((resolve, reject) => {
          const r = Http.request({ host: "127.0.0.1", port, method: "POST", path: "/v2/models/m/infer", agent, headers: { "content-length": body.length } }, (response) => {
            response.resume()
            response.on("end", () => resolve(response))
          })
          r.on("error", reject)
          r.end(body)
        })
      )
      assert.strictEqual(reply.statusCode, 200)
      assert.strictEqual(encodes, 1)
      assert.isTrue(lifecycle.isShuttingDown())
      assert.notStrictEqual(reply.headers["connection"], "close", "the sequence goes on: its connection stays")
    }))

  it.live("a large body (and answer) whose thread cannot answer (it crashed, or the pool closed) is decoded (and encoded) here, the body from the same memory", () =>
    Effect.gen(function*() {
      let asked = 0
      const lost: DecodePool.DecodePool = {
        threads: 1,
        inFlight: () => 0,
        specsHeld: () => 0,
        start: () => {},
        warm: () => Promise.resolve(),
        decode: (_name, _metadata, _bytes, onDone) => {
          asked++
          onDone(undefined)
        },
        encode: (_response, onDone) => {
          asked++
          onDone(undefined)
        },
        close: () => {}
      }
      const { port, defects } = yield* makeHandlerServer({ bodyLimitBytes: 1 << 20, decodePool: lost, largeBodyBytes: 16_384, largeAnswerValues: 1000 })
      const large = identityBody(2000, false)
      const reply = yield* Effect.promise(() => request(port, "POST", "/v2/models/identity_float32/infer", large.text))
      assert.strictEqual(reply.status, 200, reply.body.toString())
      assert.deepStrictEqual((JSON.parse(reply.body.toString()).outputs[0].data as Array<number>).map(Math.fround), large.data)
      assert.strictEqual(asked, 2, "asked to decode the body, and to encode the answer")
      assert.deepStrictEqual(defects, [])
    }).pipe(withFreshMetrics))
})

/** The whole server (`Server.layer`) over the test pool, on a free port. */
const makeServer = Effect.gen(function*() {
  const pool = yield* makeTestPool({ slowLatency: "20 millis" })
  const context = yield* Layer.build(
    Server.layer({ ...routeOptions(4096), host: "127.0.0.1", port: 0 }).pipe(
      Layer.provideMerge(AsyncInferenceEngine.layer),
      Layer.provideMerge(Layer.mergeAll(pool.layer, TelemetryCollector.layer, AsyncConfigService.layerWith({})))
    )
  )
  const address = Context.get(context, HttpServer.HttpServer).address
  if (address._tag === "UnixPathAddress") return yield* Effect.die("expected a TCP address")
  return { pool, port: address.port, node: Context.get(context, Server.NodeServer) }
})

describe("Server.layer: the infer route on Node's request event answers what the router answers", () => {
  it.live("the same status, headers and bytes for every kind of body", () =>
    Effect.gen(function*() {
      const { pool, port } = yield* makeServer
      const head = JSON.stringify({ id: "b", inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", parameters: { binary_data_size: 16 } }], outputs: [{ name: "y", parameters: { binary_data: true } }] })
      const binaryBody = Buffer.concat([Buffer.from(head), Buffer.from(new Float32Array([1, 2, 3, 4]).buffer)])
      const cases: ReadonlyArray<readonly [string, string, Buffer | string, Record<string, string>]> = [
        ["ok", "/v2/models/echo/infer", JSON.stringify({ id: "a", ...echoBody }), {}],
        ["version", "/v2/models/echo/versions/1/infer", JSON.stringify(echoBody), {}],
        ["not json", "/v2/models/echo/infer", "{\"inputs\":", {}],
        ["a byte-order mark", "/v2/models/echo/infer", Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(echoBody))]), {}],
        ["envelope", "/v2/models/echo/infer", JSON.stringify({ inputs: "x" }), {}],
        ["datatype", "/v2/models/echo/infer", JSON.stringify({ inputs: [{ name: "x", shape: [1, 1], datatype: "FP64", data: [1] }] }), {}],
        ["shape", "/v2/models/echo/infer", JSON.stringify({ inputs: [{ name: "x", shape: [1, 3], datatype: "FP32", data: [1] }] }), {}],
        ["unknown output", "/v2/models/echo/infer", JSON.stringify({ ...echoBody, outputs: [{ name: "z" }] }), {}],
        ["deadline", "/v2/models/slow/infer", JSON.stringify({ parameters: { timeout: 1000 }, ...echoBody }), {}],
        ["binary", "/v2/models/echo/infer", binaryBody, { "inference-header-content-length": String(head.length) }],
        ["bad split", "/v2/models/echo/infer", binaryBody, { "inference-header-content-length": "x" }],
        ["raw binary", "/v2/models/echo/infer", Buffer.from(new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]).buffer), { "inference-header-content-length": "0" }],
        ["raw binary refused", "/v2/models/multi/infer", Buffer.from(new Float32Array([1]).buffer), { "inference-header-content-length": "0" }]
      ]
      for (const [label, path, body, headers] of cases) {
        const lookups = pool.stats.lookupsUnsafe
        const viaNode = yield* Effect.promise(() => request(port, "POST", path, body, headers))
        assert.isAtLeast(pool.stats.lookupsUnsafe - lookups, 2, `${label}: served on Node's request event (it looks the model up before and after the body)`)
        // Any Content-Encoding sends the request through the router; identity changes nothing else.
        const routed = pool.stats.lookupsUnsafe
        const viaRouter = yield* Effect.promise(() => request(port, "POST", path, body, { ...headers, "content-encoding": "identity" }))
        assert.isAtMost(pool.stats.lookupsUnsafe - routed, 1, `${label}: served by the router (only the engine looks up)`)
        // Request ids are made per request: the one thing that differs.
        const text = (sent: Sent) => sent.body.toString("latin1").replace(/request [\w-]+ /g, "request <id> ")
        assert.strictEqual(viaNode.status, viaRouter.status, label)
        if (label === "ok" || label === "version" || label === "binary" || label === "a byte-order mark" || label === "raw binary") assert.strictEqual(viaNode.status, 200, label)
        if (label === "raw binary") {
          // The default version, echo 2 (y = 2x), on the deduced shape [2, 4], as binary.
          const jsonLength = Number(viaNode.headers["inference-header-content-length"])
          assert.deepStrictEqual(JSON.parse(viaNode.body.subarray(0, jsonLength).toString()).outputs[0].shape, [2, 4])
          const y = viaNode.body.subarray(jsonLength)
          assert.deepStrictEqual(Array.from(new Float32Array(y.buffer.slice(y.byteOffset, y.byteOffset + y.length))), [2, 4, 6, 8, 10, 12, 14, 16])
        }
        assert.strictEqual(text(viaNode), text(viaRouter), label)
        for (const header of ["content-type", "content-length", "inference-header-content-length", "connection"]) {
          assert.strictEqual(viaNode.headers[header], viaRouter.headers[header], `${label}: ${header}`)
        }
      }
    }).pipe(withFreshMetrics))
})

describe("Server.layer: a client that sends Expect: 100-continue", () => {
  it.live("is told to continue and answered on Node's request event, or by the router when declined", () =>
    Effect.gen(function*() {
      const { pool, port, node } = yield* makeServer
      const expectContinue = (path: string, extra: Record<string, string> = {}) =>
        Effect.promise(() =>
          new Promise<{ status: number; body: string; continued: boolean }>((resolve, reject) => {
            const body = Buffer.from(JSON.stringify(echoBody))
            let continued = false
            const r = Http.request({
              host: "127.0.0.1",
              port,
              method: "POST",
              path,
              agent: false,
              headers: { ...extra, expect: "100-continue", "content-length": body.length }
            }, (response) => {
              const chunks: Array<Buffer> = []
              response.on("data", (c: Buffer) => chunks.push(c))
              response.on("end", () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString(), continued }))
            })
            r.on("continue", () => {
              continued = true
              r.end(body)
            })
            r.on("error", reject)
          })
        )
      const requestsBefore = node.requests()
      const lookups = pool.stats.lookupsUnsafe
      const fast = yield* expectContinue("/v2/models/echo/infer")
      assert.deepInclude(fast, { status: 200, continued: true })
      assert.deepStrictEqual(JSON.parse(fast.body).outputs[0].data, [2, 4, 6, 8])
      assert.isAtLeast(pool.stats.lookupsUnsafe - lookups, 2, "served on Node's request event")
      const routed = yield* expectContinue("/v2/models/echo/infer", { "content-encoding": "identity" })
      assert.deepInclude(routed, { status: 200, continued: true })
      assert.strictEqual(node.requests() - requestsBefore, 2, "the server's own accounting counts both")
    }).pipe(withFreshMetrics))
})

describe("NodeInfer.priorityHint", () => {
  const table: ReadonlyArray<readonly [string, number]> = [
    ['{"parameters":{"priority":1},"inputs":[]}', 0],
    ['{"inputs":[],"parameters":{"priority" : 4}}', 3],
    ['{"parameters":{"priority":\n 2}}', 1],
    ['{"parameters":{"priority":0}}', 2],
    ['{"parameters":{"priority":10}}', 2],
    // Past the four levels: the fallback (a rank past Low would index no queue).
    ['{"parameters":{"priority":5}}', 2],
    ['{"parameters":{"priority":9}}', 2],
    ['{"parameters":{"priority":-1}}', 2],
    ['{"parameters":{"priority":"1"}}', 2],
    ['{"inputs":[]}', 2],
    ['{"id":"priority"}', 2]
  ]
  for (const [json, rank] of table) {
    it(`${json} → ${rank}`, () => {
      assert.strictEqual(NodeInfer.priorityHint(Buffer.from(json), 2), rank)
    })
  }
})

describe("NodeInfer.makeDecodeQueue", () => {
  it("runs after the current turn, Critical first and FIFO within a rank; past its budget it yields, and what came meanwhile is ordered with the rest", async () => {
    const queue = NodeInfer.makeDecodeQueue(5)
    const later = queue.push
    const order: Array<string> = []
    const busy = (ms: number) => {
      const until = performance.now() + ms
      while (performance.now() < until) { /* a decode that takes `ms` */ }
    }
    later(3, () => order.push("low-1"))
    later(3, () => {
      order.push("low-2")
      busy(10)
    })
    later(0, () => order.push("critical-1"))
    later(3, () => order.push("low-3"))
    later(1, () => order.push("high-1"))
    assert.deepStrictEqual(order, [], "nothing runs in the turn that queued it")
    assert.strictEqual(queue.waiting(), 5)
    // The first drain stops after low-2 (over budget); a Critical body read before the next drain goes first.
    setImmediate(() => later(0, () => order.push("critical-2")))
    await new Promise((resolve) => setTimeout(resolve, 50))
    assert.deepStrictEqual(order, ["critical-1", "high-1", "low-1", "low-2", "critical-2", "low-3"])
    assert.strictEqual(queue.waiting(), 0)
  })

  it("with the engine's aging, a Low body that has waited goes before a flood of High ones that keeps coming", async () => {
    const order: Array<string> = []
    const busy = (ms: number) => {
      const until = performance.now() + ms
      while (performance.now() < until) { /* a decode that takes `ms` */ }
    }
    const run = async (aging: QueuePolicy.Aging | undefined) => {
      order.length = 0
      const queue = NodeInfer.makeDecodeQueue(1, aging)
      // each High decode takes 5 ms and brings the next High body: the High rank is never empty
      let highs = 0
      const high = () => {
        order.push(`high-${++highs}`)
        busy(5)
        if (highs < 30) queue.push(1, high)
      }
      queue.push(1, high)
      queue.push(1, high)
      queue.push(3, () => order.push("low"))
      // until the flood and the Low body are all decoded (a fixed wait was too short on a loaded machine)
      for (let waited = 0; (highs < 30 || !order.includes("low")) && waited < 10_000; waited += 10) await new Promise((resolve) => setTimeout(resolve, 10))
      return order.indexOf("low")
    }
    const strict = await run(undefined)
    assert.strictEqual(strict, order.length - 1, "without aging the Low body waits for the whole flood")
    const aged = await run({ High: 10, Normal: 10, Low: 10 })
    assert.isAbove(aged, 0)
    assert.isBelow(aged, 15, `with aging (10 ms a level) it goes within about 20 ms of High decodes: at ${aged} of ${order.length}`)
  })
})
