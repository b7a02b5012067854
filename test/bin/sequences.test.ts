/**
 * Sequences end to end: the standalone server with Silero VAD configured to keep its state
 * (`sequenceBatching`) beside the same model without it. A stream of audio chunks sent as one
 * sequence, over HTTP and over gRPC, answers what the client that carries the state itself gets;
 * the metadata and the configuration leave the state out, as Triton's; bad sequences are 400s.
 * A graceful shutdown lets sequences under way finish, as Triton's does.
 */
import * as Grpc from "@grpc/grpc-js"
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Os from "node:os"
import * as Path from "node:path"
import * as GrpcCodec from "../../src/grpc/GrpcCodec.ts"
import { root, type ServerProcess, startServer } from "../fixtures/ServerProcess.ts"
import { openStream } from "../grpc/GrpcHarness.ts"
import * as Client from "../http/HttpClient.ts"

const bundled = Path.join(root, "models", "silero_vad")
const proto = Grpc.loadPackageDefinition(GrpcCodec.loadDefinitions()) as any

const unary = (client: any, method: string, request: unknown): Promise<{ error?: Grpc.ServiceError; response?: any }> =>
  new Promise((resolve) => client[method](request, (error: Grpc.ServiceError | null, response: any) => resolve(error === null ? { response } : { error })))

const send = async (port: number, method: "GET" | "POST", path: string, body?: unknown): Promise<{ status: number; body: any }> => {
  const o = await Client.send(port, method, path, body)
  if (!Client.isReply(o)) throw new Error(`request failed: ${o.error}`)
  return { status: o.status, body: JSON.parse(o.body) }
}

/** Four chunks of 512 samples: speech-like noise, then silence. */
const chunks = Array.from({ length: 4 }, (_, c) =>
  Array.from({ length: 512 }, (_, i) => (c < 2 ? Math.sin((c * 512 + i) / 6) * 0.5 + Math.sin((c * 512 + i) / 2.3) * 0.2 : 0)))

const audio = (chunk: ReadonlyArray<number>) => [
  { name: "input", shape: [1, 512], datatype: "FP32", data: chunk },
  { name: "sr", shape: [], datatype: "INT64", data: [16000] }
]

const bundledConfig = () => JSON.parse(Fs.readFileSync(Path.join(bundled, "config.json"), "utf8")) as Record<string, unknown>

/** A repository with Silero VAD twice: `vad` keeps its state (sequences idle after a minute), `vad_plain` as bundled (the client carries it). */
const sileroRepository = (prefix: string): string => {
  const repository = Fs.mkdtempSync(Path.join(Os.tmpdir(), prefix))
  for (const [name, extra] of [["vad", { sequenceBatching: { maxSequenceIdleMs: 60_000, state: [{ input: "state", output: "stateN" }] } }], ["vad_plain", {}]] as const) {
    Fs.mkdirSync(Path.join(repository, name))
    Fs.copyFileSync(Path.join(bundled, "model.onnx"), Path.join(repository, name, "model.onnx"))
    Fs.writeFileSync(Path.join(repository, name, "config.json"), JSON.stringify({ ...bundledConfig(), ...extra }))
  }
  return repository
}

/** A state that is not zeros, for a sequence that starts from a file. */
const initialState = Float32Array.from({ length: 256 }, (_, i) => Math.sin(i) * 0.5)

describe("sequences of a stateful model, through the server", () => {
  let repository: string
  let server: ServerProcess
  let ports: { http: number; grpc: number }

  beforeAll(async () => {
    repository = sileroRepository("sequences-")
    // the same, its sequences starting from a state read from initial_state/state0.bin
    Fs.mkdirSync(Path.join(repository, "vad_init", "initial_state"), { recursive: true })
    Fs.copyFileSync(Path.join(bundled, "model.onnx"), Path.join(repository, "vad_init", "model.onnx"))
    Fs.writeFileSync(Path.join(repository, "vad_init", "initial_state", "state0.bin"), new Uint8Array(initialState.buffer))
    Fs.writeFileSync(
      Path.join(repository, "vad_init", "config.json"),
      JSON.stringify({ ...bundledConfig(), sequenceBatching: { state: [{ input: "state", output: "stateN", initialState: { file: "state0.bin" } }] } })
    )
    server = await startServer(["--port", "0", "--grpc-port", "0", "--models", repository, "--grace-period-seconds", "1"], { grpc: true })
    ports = { http: server.http, grpc: server.grpc }
  }, 40_000)

  afterAll(() => {
    if (server !== undefined && server.child.exitCode === null) server.child.kill("SIGKILL")
    if (repository !== undefined) Fs.rmSync(repository, { recursive: true, force: true })
  })

  /** What a client that carries the state itself gets for the chunks, one after another. */
  const carried = async (): Promise<Array<number>> => {
    let state: ReadonlyArray<number> = new Array(256).fill(0)
    const out: Array<number> = []
    for (const chunk of chunks) {
      const r = await send(ports.http, "POST", "/v2/models/vad_plain/infer", {
        inputs: [...audio(chunk), { name: "state", shape: [2, 1, 128], datatype: "FP32", data: state }]
      })
      assert.strictEqual(r.status, 200, JSON.stringify(r.body))
      out.push(r.body.outputs.find((o: any) => o.name === "output").data[0])
      state = r.body.outputs.find((o: any) => o.name === "stateN").data
    }
    return out
  }

  it("over HTTP, a sequence answers what carrying the state answers, without the state in the answer", async () => {
    const expected = await carried()
    // the state matters here: the same chunks sent each on its own answer otherwise
    const fresh = (await send(ports.http, "POST", "/v2/models/vad_plain/infer", {
      inputs: [...audio(chunks[1]!), { name: "state", shape: [2, 1, 128], datatype: "FP32", data: new Array(256).fill(0) }]
    })).body.outputs.find((o: any) => o.name === "output").data[0]
    // (these synthetic chunks are not speech: probabilities near 5e-4, which the state moves by 6e-5)
    assert.isAbove(Math.abs(fresh - expected[1]!), 1e-5)
    const got: Array<number> = []
    for (let c = 0; c < chunks.length; c++) {
      const r = await send(ports.http, "POST", "/v2/models/vad/infer", {
        parameters: { sequence_id: 42, sequence_start: c === 0, sequence_end: c === chunks.length - 1 },
        inputs: audio(chunks[c]!)
      })
      assert.strictEqual(r.status, 200, JSON.stringify(r.body))
      assert.deepStrictEqual(r.body.outputs.map((o: any) => o.name), ["output"])
      got.push(r.body.outputs[0].data[0])
    }
    // the same session's kernels on the same inputs: equal but for float noise
    for (let c = 0; c < chunks.length; c++) assert.closeTo(got[c]!, expected[c]!, 1e-7, `chunk ${c}`)
    // ended: its next request must start again
    const after = await send(ports.http, "POST", "/v2/models/vad/infer", { parameters: { sequence_id: 42 }, inputs: audio(chunks[0]!) })
    assert.strictEqual(after.status, 400)
    assert.include(after.body.error, "sequence 42 of model vad is not under way")
  }, 30_000)

  it("over gRPC, with a text id: the same answers", async () => {
    const expected = await carried()
    const client = new proto.inference.GRPCInferenceService(`127.0.0.1:${ports.grpc}`, Grpc.credentials.createInsecure())
    try {
      for (let c = 0; c < chunks.length; c++) {
        const r = await unary(client, "ModelInfer", {
          model_name: "vad",
          parameters: { sequence_id: { string_param: "caller-7" }, sequence_start: { bool_param: c === 0 } },
          inputs: [{ name: "input", datatype: "FP32", shape: [1, 512] }, { name: "sr", datatype: "INT64", shape: [] }],
          raw_input_contents: [Buffer.from(Float32Array.from(chunks[c]!).buffer), Buffer.from(BigInt64Array.from([16000n]).buffer)]
        })
        assert.isUndefined(r.error, r.error?.message)
        assert.deepStrictEqual(r.response.outputs.map((o: any) => o.name), ["output"])
        const value = new Float32Array(new Uint8Array(r.response.raw_output_contents[0]).buffer)[0]!
        assert.closeTo(value, expected[c]!, 1e-7, `chunk ${c}`)
      }
      // a uint64 correlation id past 2^53 (drawn at random by some clients) is its own sequence, kept exact
      const big = (start: boolean, id: string) => unary(client, "ModelInfer", {
        model_name: "vad",
        parameters: { sequence_id: { uint64_param: id }, sequence_start: { bool_param: start } },
        inputs: [{ name: "input", datatype: "FP32", shape: [1, 512] }, { name: "sr", datatype: "INT64", shape: [] }],
        raw_input_contents: [Buffer.from(Float32Array.from(chunks[0]!).buffer), Buffer.from(BigInt64Array.from([16000n]).buffer)]
      })
      assert.isUndefined((await big(true, "18446744073709551615")).error)
      assert.isUndefined((await big(false, "18446744073709551615")).error)
      // its neighbour, the same double, was never started
      assert.include((await big(false, "18446744073709551614")).error?.details, "is not under way")
      const metadata = await unary(client, "ModelMetadata", { name: "vad" })
      assert.deepStrictEqual(metadata.response.inputs.map((t: any) => t.name), ["input", "sr"])
      const config = await unary(client, "ModelConfig", { name: "vad" })
      assert.strictEqual(config.response.config.sequence_batching.state[0].input_name, "state")
      const unstarted = await unary(client, "ModelInfer", {
        model_name: "vad",
        parameters: { sequence_id: { int64_param: 5 } },
        inputs: [{ name: "input", datatype: "FP32", shape: [1, 512] }, { name: "sr", datatype: "INT64", shape: [] }],
        raw_input_contents: [Buffer.from(new Float32Array(512).buffer), Buffer.from(BigInt64Array.from([16000n]).buffer)]
      })
      assert.strictEqual(unstarted.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(unstarted.error?.details, "sequence 5 of model vad is not under way")
    } finally {
      client.close()
    }
  }, 30_000)

  it("over a gRPC stream, the chunks of a sequence sent at once without waiting run in order and answer as carried", async () => {
    const expected = await carried()
    const client = new proto.inference.GRPCInferenceService(`127.0.0.1:${ports.grpc}`, Grpc.credentials.createInsecure())
    try {
      const { stream, received, ended } = openStream(client)
      for (let c = 0; c < chunks.length; c++) {
        stream.write({
          model_name: "vad",
          id: `chunk-${c}`,
          parameters: {
            sequence_id: { int64_param: 77 },
            sequence_start: { bool_param: c === 0 },
            sequence_end: { bool_param: c === chunks.length - 1 }
          },
          inputs: [{ name: "input", datatype: "FP32", shape: [1, 512] }, { name: "sr", datatype: "INT64", shape: [] }],
          raw_input_contents: [Buffer.from(Float32Array.from(chunks[c]!).buffer), Buffer.from(BigInt64Array.from([16000n]).buffer)]
        })
      }
      stream.end()
      await ended
      assert.deepStrictEqual(received.map((m) => m.error_message), chunks.map(() => ""))
      for (const m of received) {
        const c = Number(m.infer_response.id.slice("chunk-".length))
        const value = new Float32Array(new Uint8Array(m.infer_response.raw_output_contents[0]).buffer)[0]!
        assert.closeTo(value, expected[c]!, 1e-7, `chunk ${c}`)
      }
    } finally {
      client.close()
    }
  }, 30_000)

  it("a sequence of a model whose initial state is a file starts from it: it answers what a client carrying that state gets, and /config names the file", async () => {
    const carriedFrom = await send(ports.http, "POST", "/v2/models/vad_plain/infer", {
      inputs: [...audio(chunks[0]!), { name: "state", shape: [2, 1, 128], datatype: "FP32", data: Array.from(initialState) }]
    })
    const zeros = await send(ports.http, "POST", "/v2/models/vad_plain/infer", {
      inputs: [...audio(chunks[0]!), { name: "state", shape: [2, 1, 128], datatype: "FP32", data: new Array(256).fill(0) }]
    })
    const expected = carriedFrom.body.outputs.find((o: any) => o.name === "output").data[0]
    // the state matters for this chunk: from zeros it answers otherwise
    assert.isAbove(Math.abs(zeros.body.outputs.find((o: any) => o.name === "output").data[0] - expected), 1e-6)
    const r = await send(ports.http, "POST", "/v2/models/vad_init/infer", { parameters: { sequence_id: 1, sequence_start: true }, inputs: audio(chunks[0]!) })
    assert.strictEqual(r.status, 200, JSON.stringify(r.body))
    assert.closeTo(r.body.outputs[0].data[0], expected, 1e-7)
    const config = (await send(ports.http, "GET", "/v2/models/vad_init/config")).body
    assert.deepStrictEqual(config.sequence_batching.state[0].initial_state, [{ name: "state0.bin", data_type: "TYPE_FP32", dims: [2, 1, 128], data_file: "state0.bin" }])
  })

  it("metadata and config leave the state out, as Triton lists a sequence model", async () => {
    const metadata = await send(ports.http, "GET", "/v2/models/vad")
    assert.deepStrictEqual(metadata.body.inputs.map((t: any) => t.name), ["input", "sr"])
    assert.deepStrictEqual(metadata.body.outputs.map((t: any) => t.name), ["output"])
    const config = (await send(ports.http, "GET", "/v2/models/vad/config")).body
    assert.deepStrictEqual(config.input.map((t: any) => t.name), ["input", "sr"])
    assert.isUndefined(config.dynamic_batching)
    assert.deepStrictEqual(config.sequence_batching.state, [{
      input_name: "state",
      output_name: "stateN",
      data_type: "TYPE_FP32",
      dims: [2, 1, 128],
      initial_state: [{ name: "zero", data_type: "TYPE_FP32", dims: [2, 1, 128], zero_data: true }]
    }])
    assert.strictEqual(config.sequence_batching.max_sequence_idle_microseconds, 60_000_000)
  })

  it("bad sequences are 400s with the reason: none for a stateful model, a state sent, a state output asked, one for a model without state, flags without an id", async () => {
    const cases: ReadonlyArray<readonly [string, unknown, string]> = [
      ["vad", { inputs: audio(chunks[0]!) }, "needs a sequence id"],
      ["vad", {
        parameters: { sequence_id: 1, sequence_start: true },
        inputs: [...audio(chunks[0]!), { name: "state", shape: [2, 1, 128], datatype: "FP32", data: new Array(256).fill(0) }]
      }, `input "state" is the sequence's state`],
      ["vad", { parameters: { sequence_id: 1, sequence_start: true }, inputs: audio(chunks[0]!), outputs: [{ name: "stateN" }] }, "is the sequence's next state"],
      ["vad_plain", {
        parameters: { sequence_id: 1, sequence_start: true },
        inputs: [...audio(chunks[0]!), { name: "state", shape: [2, 1, 128], datatype: "FP32", data: new Array(256).fill(0) }]
      }, "keeps no state between requests"],
      ["vad", { parameters: { sequence_start: true }, inputs: audio(chunks[0]!) }, "need a sequence_id"],
      ["vad", { parameters: { sequence_id: -1, sequence_start: true }, inputs: audio(chunks[0]!) }, "sequence_id"],
      ["vad", { parameters: { sequence_id: 1.5, sequence_start: true }, inputs: audio(chunks[0]!) }, "sequence_id"]
    ]
    for (const [model, body, expected] of cases) {
      const r = await send(ports.http, "POST", `/v2/models/${model}/infer`, body)
      assert.strictEqual(r.status, 400, `${model} ${JSON.stringify(body).slice(0, 120)}: ${JSON.stringify(r.body)}`)
      assert.include(r.body.error, expected)
      assert.notInclude(r.body.error, "    at ")
    }
  })

  it("effect-onnx perf drives a stateful model in sequences, over HTTP and gRPC, without errors", async () => {
    // records of the chunks (gRPC's model metadata has no input signatures to make inputs from)
    const records = Path.join(repository, "chunks.ndjson")
    Fs.writeFileSync(records, chunks.map((chunk) => JSON.stringify({ input: { datatype: "FP32", shape: [1, 512], data: chunk }, sr: { datatype: "INT64", shape: [], data: [16000] } })).join("\n") + "\n")
    for (const target of [["--url", `http://127.0.0.1:${ports.http}`], ["--url", `127.0.0.1:${ports.grpc}`, "--grpc"]]) {
      const run = spawnSync(process.execPath, [
        Path.join(root, "src/bin/cli.ts"), "perf", "--model", "vad", ...target, "--input", records,
        "--concurrency", "2", "--duration", "0.5", "--warmup", "0", "--sequence-length", "3", "--json"
      ], { cwd: root, encoding: "utf8", timeout: 30_000 })
      assert.strictEqual(run.status, 0, run.stderr)
      const report = JSON.parse(run.stdout) as { levels: Array<{ requests: number; errors: number }> }
      assert.isAbove(report.levels[0]!.requests, 3, target.join(" "))
      assert.strictEqual(report.levels[0]!.errors, 0, `${target.join(" ")}: ${run.stderr}`)
    }
  }, 60_000)

  it("/metrics counts the sequences under way by model and version", async () => {
    const count = async () => {
      const o = await Client.send(ports.http, "GET", "/metrics")
      if (!Client.isReply(o)) throw new Error(o.error)
      return Number(/\ninference_sequences\{model="vad",version="1"\} (\d+)\n/.exec(o.body)?.[1])
    }
    // at least the gRPC test's sequence, which never ended (and its idle limit is a minute)
    const before = await count()
    assert.isAtLeast(before, 1)
    const step = (flags: Record<string, unknown>) => send(ports.http, "POST", "/v2/models/vad/infer", { parameters: { sequence_id: "m", ...flags }, inputs: audio(chunks[0]!) })
    assert.strictEqual((await step({ sequence_start: true })).status, 200)
    assert.strictEqual(await count(), before + 1)
    assert.strictEqual((await step({ sequence_end: true })).status, 200)
    assert.strictEqual(await count(), before)
  })

  it("SIGTERM with a sequence under way that nobody ends (the gRPC test's): the drain waits out its 1 s grace, then exits and says so", async () => {
    const signalledAt = Date.now()
    server.child.kill("SIGTERM")
    assert.strictEqual(await server.exit, 0, server.output())
    assert.isAtLeast(Date.now() - signalledAt, 1000)
    assert.match(server.output(), /until the \d+ sequences under way end/)
    assert.match(server.output(), /grace period over after \d+ ms with work still pending \(.*; \d+ sequences cut before their end\)/)
  }, 30_000)
})

describe("a graceful shutdown lets sequences under way finish (Triton's rule)", () => {
  let repository: string
  let server: ServerProcess

  beforeAll(async () => {
    repository = sileroRepository("sequences-drain-")
    server = await startServer(["--port", "0", "--grpc-port", "0", "--models", repository, "--grace-period-seconds", "30"], { grpc: true })
  }, 40_000)

  afterAll(() => {
    if (server !== undefined && server.child.exitCode === null) server.child.kill("SIGKILL")
    if (repository !== undefined) Fs.rmSync(repository, { recursive: true, force: true })
  })

  it("after SIGTERM: the sequences' next requests are answered (HTTP on its open connection, gRPC), new ones 503 / UNAVAILABLE; the server exits once both ended, long before its grace", async () => {
    const port = server.http
    const agent = new Http.Agent({ keepAlive: true, maxSockets: 1 })
    const client = new proto.inference.GRPCInferenceService(`127.0.0.1:${server.grpc}`, Grpc.credentials.createInsecure())
    try {
      // what a client that carries the state gets, chunk by chunk
      let state: ReadonlyArray<number> = new Array(256).fill(0)
      const expected: Array<number> = []
      for (const chunk of chunks) {
        const r = await send(port, "POST", "/v2/models/vad_plain/infer", { inputs: [...audio(chunk), { name: "state", shape: [2, 1, 128], datatype: "FP32", data: state }] })
        expected.push(r.body.outputs.find((o: any) => o.name === "output").data[0])
        state = r.body.outputs.find((o: any) => o.name === "stateN").data
      }
      const overHttp = async (id: string, c: number, flags: Record<string, unknown>) => {
        const o = await Client.send(port, "POST", "/v2/models/vad/infer", { parameters: { sequence_id: id, ...flags }, inputs: audio(chunks[c]!) }, agent)
        if (!Client.isReply(o)) throw new Error(o.error)
        return { status: o.status, connection: o.headers["connection"], body: JSON.parse(o.body) }
      }
      const overGrpc = (id: string, c: number, flags: Record<string, boolean>) =>
        unary(client, "ModelInfer", {
          model_name: "vad",
          parameters: {
            sequence_id: { string_param: id },
            ...Object.fromEntries(Object.entries(flags).map(([k, v]) => [k, { bool_param: v }]))
          },
          inputs: [{ name: "input", datatype: "FP32", shape: [1, 512] }, { name: "sr", datatype: "INT64", shape: [] }],
          raw_input_contents: [Buffer.from(Float32Array.from(chunks[c]!).buffer), Buffer.from(BigInt64Array.from([16000n]).buffer)]
        })
      const grpcValue = (r: { response?: any }) => new Float32Array(new Uint8Array(r.response.raw_output_contents[0]).buffer)[0]!

      const h0 = await overHttp("h", 0, { sequence_start: true })
      assert.strictEqual(h0.status, 200, JSON.stringify(h0.body))
      const g0 = await overGrpc("g", 0, { sequence_start: true })
      assert.isUndefined(g0.error, g0.error?.message)

      // the next chunk is on its way when the signal comes: half its body sent
      const body = JSON.stringify({ parameters: { sequence_id: "h" }, inputs: audio(chunks[1]!) })
      const inFlight = new Promise<{ status: number; connection: string | undefined; body: any }>((resolve, reject) => {
        const request = Http.request({
          host: "127.0.0.1",
          port,
          method: "POST",
          path: "/v2/models/vad/infer",
          agent,
          headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) }
        }, (response) => {
          const parts: Array<Buffer> = []
          response.on("data", (c: Buffer) => parts.push(c))
          response.on("end", () => resolve({ status: response.statusCode ?? 0, connection: response.headers["connection"], body: JSON.parse(Buffer.concat(parts).toString("utf8")) }))
        })
        request.on("error", reject)
        request.write(body.slice(0, 100))
        setTimeout(() => {
          server.child.kill("SIGTERM")
          void Client.eventually(async () => (await send(port, "GET", "/v2/health/ready")).status === 503).then(() => request.end(body.slice(100)), reject)
        }, 100)
      })

      // the sequences go on, with their state, and their connections stay open: the request in flight at the signal's,
      const h1 = await inFlight
      assert.strictEqual(h1.status, 200, JSON.stringify(h1.body))
      assert.closeTo(h1.body.outputs[0].data[0], expected[1]!, 1e-7)
      assert.notStrictEqual(h1.connection, "close", "the connection stays open for the sequence's next request")
      const g1 = await overGrpc("g", 1, {})
      assert.isUndefined(g1.error, g1.error?.message)
      assert.closeTo(grpcValue(g1), expected[1]!, 1e-7)

      // new work is refused: a new sequence, a start over of one under way, a model without state
      const fresh = await send(port, "POST", "/v2/models/vad/infer", { parameters: { sequence_id: "new", sequence_start: true }, inputs: audio(chunks[0]!) })
      assert.strictEqual(fresh.status, 503, JSON.stringify(fresh.body))
      assert.include(fresh.body.error, "shutting down")
      assert.strictEqual((await send(port, "POST", "/v2/models/vad/infer", { parameters: { sequence_id: "g", sequence_start: true }, inputs: audio(chunks[0]!) })).status, 503)
      const plain = await send(port, "POST", "/v2/models/vad_plain/infer", { inputs: [...audio(chunks[0]!), { name: "state", shape: [2, 1, 128], datatype: "FP32", data: new Array(256).fill(0) }] })
      assert.strictEqual(plain.status, 503)
      const grpcFresh = await overGrpc("new", 0, { sequence_start: true })
      assert.strictEqual(grpcFresh.error?.code, Grpc.status.UNAVAILABLE)

      // and one sent after it (a failed one too: the sequence is still under way)
      const h2 = await overHttp("h", 2, {})
      assert.strictEqual(h2.status, 200, JSON.stringify(h2.body))
      assert.closeTo(h2.body.outputs[0].data[0], expected[2]!, 1e-7)
      assert.notStrictEqual(h2.connection, "close")
      const bad = await Client.send(port, "POST", "/v2/models/vad/infer", { parameters: { sequence_id: "h" }, inputs: [{ name: "input", shape: [1, 512], datatype: "FP32", data: chunks[0] }] }, agent)
      assert.isTrue(Client.isReply(bad) && bad.status === 400 && bad.headers["connection"] !== "close", JSON.stringify(bad))

      // HTTP's sequence ends: that answer closes its connection; gRPC's is still under way, so the server waits
      const h3 = await overHttp("h", 3, { sequence_end: true })
      assert.strictEqual(h3.status, 200, JSON.stringify(h3.body))
      assert.closeTo(h3.body.outputs[0].data[0], expected[3]!, 1e-7)
      assert.strictEqual(h3.connection, "close")
      await new Promise((r) => setTimeout(r, 300))
      assert.isNull(server.child.exitCode, "the gRPC sequence is still under way")
      const endedAt = Date.now()
      const g2 = await overGrpc("g", 2, { sequence_end: true })
      assert.isUndefined(g2.error, g2.error?.message)
      assert.closeTo(grpcValue(g2), expected[2]!, 1e-7)

      assert.strictEqual(await server.exit, 0, server.output())
      assert.isBelow(Date.now() - endedAt, 15_000, "it exits once the sequences ended, not at its 30 s grace")
      assert.match(server.output(), /drained in \d+ ms/)
      assert.include(server.output(), "until the 2 sequences under way end")
    } finally {
      client.close()
      agent.destroy()
    }
  }, 60_000)
})
