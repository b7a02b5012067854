/**
 * The standalone server as a process, over a real socket, on real onnxruntime sessions: a
 * repository with the bundled models, a versioned one and three broken files; an inference on
 * each bundled model; then SIGTERM under load, which must drain and exit 0.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as Mlp from "../../scripts/Mlp.ts"
import * as Client from "./HttpClient.ts"

const root = fileURLToPath(new URL("../..", import.meta.url))
const bundled = Path.join(root, "models")
const entry = Path.join(root, "src/bin/server.ts")

interface Running {
  readonly child: ChildProcess
  readonly port: number
  readonly output: () => string
  readonly exit: Promise<number | null>
}

/** Starts `node src/bin/server.ts` with `args` and waits for its "listening on" line. */
const startServer = (args: ReadonlyArray<string>, env: Record<string, string> = {}): Promise<Running> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [entry, ...args], {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    const exit = new Promise<number | null>((r) => child.on("exit", (code) => r(code)))
    const onData = (chunk: Buffer) => {
      output += chunk.toString("utf8")
      const match = /listening on http:\/\/[^:\s]+:(\d+)/.exec(output)
      if (match !== null) resolve({ child, port: Number(match[1]), output: () => output, exit })
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    void exit.then((code) => reject(new Error(`server exited with ${code} before listening:\n${output}`)))
    setTimeout(() => reject(new Error(`server did not listen in time:\n${output}`)), 20_000).unref()
  })

const json = async (outcome: Promise<Client.Outcome>): Promise<{ status: number; body: any; headers: Http.IncomingHttpHeaders }> => {
  const o = await outcome
  if (!Client.isReply(o)) throw new Error(`request failed: ${o.error}`)
  return { status: o.status, body: JSON.parse(o.body), headers: o.headers }
}

describe("node src/bin/server.ts", () => {
  let repository: string
  let server: Running

  beforeAll(async () => {
    repository = Fs.mkdtempSync(Path.join(Os.tmpdir(), "oip-server-"))
    const mlp = Fs.readFileSync(Path.join(bundled, "mlp/model.onnx"))
    const put = (relative: string, bytes: Uint8Array | string) => {
      Fs.mkdirSync(Path.dirname(Path.join(repository, relative)), { recursive: true })
      Fs.writeFileSync(Path.join(repository, relative), bytes)
    }
    put("mlp/model.onnx", mlp)
    put("silero_vad/model.onnx", Fs.readFileSync(Path.join(bundled, "silero_vad/model.onnx")))
    put("silero_vad/config.json", Fs.readFileSync(Path.join(bundled, "silero_vad/config.json")))
    put("versioned/1/model.onnx", mlp)
    put("versioned/2/model.onnx", mlp)
    // asks for the response cache, which the server is not given (RESPONSE_CACHE_BYTES unset): a warning
    put("versioned/config.json", JSON.stringify({ responseCache: { enable: true } }))
    put("corrupt/model.onnx", "this is not an ONNX model")
    put("truncated/model.onnx", mlp.subarray(0, Math.floor(mlp.length / 2)))
    put("empty/model.onnx", "")
    server = await startServer(["--port", "0", "--models", repository, "--grace-period-seconds", "10"])
  }, 30_000)

  afterAll(async () => {
    if (server !== undefined && server.child.exitCode === null) {
      server.child.kill("SIGKILL")
      await server.exit
    }
    if (repository !== undefined) Fs.rmSync(repository, { recursive: true, force: true })
  })

  it("warns at start of a model that enables responseCache when RESPONSE_CACHE_BYTES gives the cache nothing", () => {
    assert.include(server.output(), "versioned@1, versioned@2: config.json enables responseCache, but RESPONSE_CACHE_BYTES is 0, so nothing is cached")
  })

  it("reports each model READY or UNAVAILABLE with a reason; broken files do not stop the others", async () => {
    const index = await json(Client.send(server.port, "POST", "/v2/repository/index"))
    assert.strictEqual(index.status, 200)
    const state = Object.fromEntries((index.body as Array<{ name: string; version: string; state: string; reason?: string }>)
      .map((m) => [`${m.name}/${m.version}`, m]))
    for (const ready of ["mlp/1", "silero_vad/1", "versioned/1", "versioned/2"]) assert.strictEqual(state[ready]?.state, "READY", ready)
    for (const broken of ["corrupt/1", "truncated/1", "empty/1"]) {
      assert.strictEqual(state[broken]?.state, "UNAVAILABLE", broken)
      assert.isString(state[broken]?.reason)
      assert.notInclude(state[broken]!.reason!, repository, "no absolute path")
    }
    const corrupt = await json(Client.send(server.port, "POST", "/v2/models/corrupt/infer", { inputs: [] }))
    assert.strictEqual(corrupt.status, 503)
    assert.notInclude(JSON.stringify(corrupt.body), repository)
    // Strict readiness (the default, as Triton's): not ready while a model is unavailable.
    const ready = await json(Client.send(server.port, "GET", "/v2/health/ready"))
    assert.strictEqual(ready.status, 503)
    assert.match((ready.body as { error: string }).error, /^3 of 7 model versions unavailable: corrupt@1, empty@1, truncated@1$/)
    assert.include(server.output(), "model corrupt@1 is UNAVAILABLE")
  })

  it("runs the MLP and Silero VAD; the highest version is the default", async () => {
    const mlp = Mlp.weights()
    const x = Float32Array.from({ length: 2 * 784 }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5)
    const expected = Mlp.forward(mlp, x, 2)
    const r = await json(Client.send(server.port, "POST", "/v2/models/mlp/infer", {
      id: "mlp-1",
      inputs: [{ name: "input", shape: [2, 784], datatype: "FP32", data: Array.from(x) }]
    }))
    assert.strictEqual(r.status, 200)
    assert.strictEqual(r.body.id, "mlp-1")
    assert.deepStrictEqual(r.body.outputs[0].shape, [2, 10])
    const logits = r.body.outputs[0].data as Array<number>
    logits.forEach((v, i) => assert.closeTo(v, expected[i]!, 1e-4))
    // Triton's classification extension on the real logits: the top 3 of each row, by index.
    const classes = await json(Client.send(server.port, "POST", "/v2/models/mlp/infer", {
      inputs: [{ name: "input", shape: [2, 784], datatype: "FP32", data: Array.from(x) }],
      outputs: [{ name: "logits", parameters: { classification: 3 } }]
    }))
    assert.strictEqual(classes.status, 200, JSON.stringify(classes.body))
    assert.deepStrictEqual(classes.body.outputs[0].shape, [2, 3])
    const top = (row: number) => Array.from({ length: 10 }, (_, i) => i).sort((a, b) => logits[row * 10 + b]! - logits[row * 10 + a]!).slice(0, 3)
    const indices = (classes.body.outputs[0].data as Array<string>).map((s) => Number(s.split(":")[1]))
    assert.deepStrictEqual(indices, [...top(0), ...top(1)])

    const vad = await json(Client.send(server.port, "POST", "/v2/models/silero_vad/infer", {
      inputs: [
        { name: "input", shape: [1, 512], datatype: "FP32", data: Array.from({ length: 512 }, (_, i) => Math.sin(i / 8) * 0.3) },
        { name: "state", shape: [2, 1, 128], datatype: "FP32", data: new Array(256).fill(0) },
        { name: "sr", shape: [], datatype: "INT64", data: [16000] }
      ]
    }))
    assert.strictEqual(vad.status, 200, JSON.stringify(vad.body))
    const [output, stateN] = vad.body.outputs
    assert.deepStrictEqual([output.name, output.shape], ["output", [1, 1]])
    assert.isAtLeast(output.data[0], 0)
    assert.isAtMost(output.data[0], 1)
    assert.deepStrictEqual([stateN.name, stateN.shape], ["stateN", [2, 1, 128]])

    // Inputs onnxruntime would refuse only at run time (a 500) fit none of the signatures that
    // Silero's config.json declares: 400 at admission. 256 samples at 8 kHz is the other one.
    const silero = (samples: number, sr: number) =>
      json(Client.send(server.port, "POST", "/v2/models/silero_vad/infer", {
        inputs: [
          { name: "input", shape: [1, samples], datatype: "FP32", data: new Array(samples).fill(0) },
          { name: "state", shape: [2, 1, 128], datatype: "FP32", data: new Array(256).fill(0) },
          { name: "sr", shape: [], datatype: "INT64", data: [sr] }
        ]
      }))
    for (const [samples, sr] of [[3, 16000], [512, 12345], [512, 8000]] as const) {
      const refused = await silero(samples, sr)
      assert.strictEqual(refused.status, 400, `${samples} samples at ${sr}: ${JSON.stringify(refused.body)}`)
      assert.match(refused.body.error, /fit none of the model's 2 declared input signatures/)
    }
    assert.strictEqual((await silero(256, 8000)).status, 200)
    const sileroMetadata = await json(Client.send(server.port, "GET", "/v2/models/silero_vad"))
    assert.strictEqual(sileroMetadata.body.properties.max_batch_size, "64")
    assert.deepStrictEqual(JSON.parse(sileroMetadata.body.properties.input_signatures)[1], { input: { dims: [-1, 256] }, sr: { values: [8000] } })

    // Triton's binary tensor data extension, both ways: the same logits as the JSON request.
    const binaryReply = await Client.sendBinary(server.port, "/v2/models/mlp/infer", {
      inputs: [{ name: "input", shape: [2, 784], datatype: "FP32", parameters: { binary_data_size: x.byteLength } }],
      outputs: [{ name: "logits", parameters: { binary_data: true } }]
    }, new Uint8Array(x.buffer))
    assert.strictEqual(binaryReply.status, 200, binaryReply.body.toString("utf8").slice(0, 300))
    assert.strictEqual(binaryReply.headers["content-type"], "application/octet-stream")
    const jsonLength = Number(binaryReply.headers["inference-header-content-length"])
    const head = JSON.parse(binaryReply.body.subarray(0, jsonLength).toString("utf8"))
    assert.deepStrictEqual(head.outputs, [{ name: "logits", datatype: "FP32", shape: [2, 10], parameters: { binary_data_size: 80 } }])
    const tail = binaryReply.body.subarray(jsonLength)
    const binaryLogits = new Float32Array(tail.buffer.slice(tail.byteOffset, tail.byteOffset + tail.byteLength))
    Array.from(binaryLogits).forEach((v, i) => assert.closeTo(v, expected[i]!, 1e-4))
    const badHeader = await Client.sendBinary(server.port, "/v2/models/mlp/infer", { inputs: [] }, new Uint8Array(8), "999999")
    assert.strictEqual(badHeader.status, 400)
    assert.match(JSON.parse(badHeader.body.toString("utf8")).error, /inference-header-content-length "999999" must be a byte count within the body's/)

    const metadata = await json(Client.send(server.port, "GET", "/v2/models/versioned"))
    assert.deepStrictEqual(metadata.body.versions, ["1", "2"])
    const v = await json(Client.send(server.port, "POST", "/v2/models/versioned/infer", {
      inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", data: new Array(784).fill(0) }]
    }))
    assert.strictEqual(v.body.model_version, "2")
  })

  it("refuses an empty tensor with 400 (onnxruntime aborts the process on Silero with one) and keeps serving", async () => {
    const vad = (rows: number) =>
      json(Client.send(server.port, "POST", "/v2/models/silero_vad/infer", {
        inputs: [
          { name: "input", shape: [rows, 512], datatype: "FP32", data: new Array(rows * 512).fill(0) },
          { name: "state", shape: [2, rows, 128], datatype: "FP32", data: new Array(rows * 256).fill(0) },
          { name: "sr", shape: [], datatype: "INT64", data: [16000] }
        ]
      }))
    const empty = await vad(0)
    assert.strictEqual(empty.status, 400, JSON.stringify(empty.body))
    assert.match(empty.body.error, /dims \[0, 512\] hold no elements: empty tensors are not run/)
    const mlpEmpty = await json(Client.send(server.port, "POST", "/v2/models/mlp/infer", {
      inputs: [{ name: "input", shape: [0, 784], datatype: "FP32", data: [] }]
    }))
    assert.strictEqual(mlpEmpty.status, 400)
    const after = await vad(1)
    assert.strictEqual(after.status, 200, JSON.stringify(after.body))
    assert.isNull(server.child.exitCode, server.output())
    // The ONNX pool's instance counts reach /metrics: nothing crashed or was killed.
    const metrics = await Client.send(server.port, "GET", "/metrics")
    assert.isTrue(Client.isReply(metrics))
    const page = Client.isReply(metrics) ? metrics.body : ""
    for (const event of ["crash", "deadline_kill", "abandon_kill", "respawn_failure"]) assert.include(page, `inference_instance_events_total{event="${event}"} 0`)
  })

  it("on SIGTERM under load: answers what it admitted, refuses the rest with 503, drains and exits 0", async () => {
    const body = { inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", data: new Array(784).fill(0.25) }] }
    const outcomes: Array<string> = []
    let signalled = false
    let okAfterSignal = 0
    const loop = async () => {
      const agent = new Http.Agent({ keepAlive: true, maxSockets: 1 })
      try {
        while (true) {
          const o = await Client.send(server.port, "POST", "/v2/models/mlp/infer", body, agent)
          const label = Client.isReply(o) ? String(o.status) : o.error
          outcomes.push(label)
          if (signalled && label === "200") okAfterSignal++
          if (label !== "200") return
        }
      } finally {
        agent.destroy()
      }
    }
    const loops = Array.from({ length: 16 }, loop)
    await Client.eventually(() => outcomes.filter((o) => o === "200").length >= 32, 15_000)
    const okBefore = outcomes.filter((o) => o === "200").length
    signalled = true
    server.child.kill("SIGTERM")
    await Promise.all(loops)
    const code = await server.exit
    const counts: Record<string, number> = {}
    for (const o of outcomes) counts[o] = (counts[o] ?? 0) + 1
    assert.isAtLeast(okBefore, 32, `load ran before the signal: ${JSON.stringify(counts)}`)
    for (const label of Object.keys(counts)) {
      assert.include(["200", "503", "ECONNREFUSED"], label, `unexpected outcome ${label}: ${JSON.stringify(counts)}\n${server.output()}`)
    }
    assert.strictEqual(code, 0, server.output())
    assert.include(server.output(), "drained in")
    assert.isAtLeast(okAfterSignal, 1, "requests in flight at the signal were answered")
  }, 45_000)

  it("refuses an invalid flag with exit 2 and a one-line error first, through the same parser as every command", async () => {
    const run = async (args: ReadonlyArray<string>) => {
      const child = spawn(process.execPath, [entry, ...args], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
      let stderr = ""
      child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
      const code = await new Promise<number | null>((r) => child.on("exit", r))
      return { code, lines: stderr.trim().split("\n") }
    }
    const eighty = await run(["--port", "eighty"])
    assert.strictEqual(eighty.code, 2)
    assert.deepStrictEqual(eighty.lines, ["effect-onnx: serve: invalid --port \"eighty\": Expected a decimal integer"])
    const bogus = await run(["--bogus"])
    assert.strictEqual(bogus.code, 2)
    assert.match(bogus.lines[0]!, /^effect-onnx serve: Unrecognized flag: --bogus/)
    assert.deepStrictEqual(bogus.lines.slice(1), ["Run 'effect-onnx serve --help' for usage."])
  }, 20_000)

  it("--exit-on-error true exits 1 at start, naming the model that failed to load (as Triton's)", async () => {
    const child = spawn(process.execPath, [entry, "--port", "0", "--models", repository, "--exit-on-error", "true"], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stdout.on("data", (c: Buffer) => (output += c.toString("utf8")))
    child.stderr.on("data", (c: Buffer) => (output += c.toString("utf8")))
    const code = await new Promise<number | null>((r) => child.on("exit", r))
    assert.strictEqual(code, 1, output)
    assert.include(output, "3 of 7 model versions failed to load; exiting (--exit-on-error)")
    assert.include(output, "model corrupt@1 is UNAVAILABLE")
    assert.notInclude(output, "listening on")
  }, 30_000)

  it("--log-format json writes every log line as one JSON object (time, level, message), the Triton config.pbtxt warning and the drain included", async () => {
    const triton = Fs.mkdtempSync(Path.join(Os.tmpdir(), "json-logs-"))
    Fs.mkdirSync(Path.join(triton, "t", "1"), { recursive: true })
    Fs.copyFileSync(Path.join(bundled, "mlp/model.onnx"), Path.join(triton, "t", "1", "model.onnx"))
    Fs.writeFileSync(Path.join(triton, "t", "config.pbtxt"), "max_batch_size: 8\n")
    const running = await startServer(["--port", "0", "--grpc-port", "off", "--models", triton, "--log-format", "json"])
    try {
      running.child.kill("SIGTERM")
      assert.strictEqual(await running.exit, 0, running.output())
      const lines = running.output().split("\n").filter((l) => l !== "")
      const parsed = lines.map((l) => {
        try {
          return JSON.parse(l) as { time: string; level: string; message: string }
        } catch {
          throw new Error(`not a JSON line: ${l}`)
        }
      })
      for (const p of parsed) {
        assert.match(p.time, /^\d{4}-\d\d-\d\dT/)
        assert.include(["DEBUG", "INFO", "WARN", "ERROR"], p.level)
      }
      const messages = parsed.map((p) => `${p.level} ${p.message}`)
      assert.isTrue(messages.some((m) => /^INFO listening on http:/.test(m)), messages.join("\n"))
      assert.isTrue(messages.some((m) => /^WARN model repository: ignoring "t\/config.pbtxt": Triton's model configuration is not read here/.test(m)), messages.join("\n"))
      assert.isTrue(messages.some((m) => /^INFO drained in \d+ ms/.test(m)), messages.join("\n"))
    } finally {
      if (running.child.exitCode === null) running.child.kill("SIGKILL")
      Fs.rmSync(triton, { recursive: true, force: true })
    }
  }, 30_000)

  it("--model-control-mode poll: a model copied into the repository serves after the next poll, one removed stops; a client's load is refused", async () => {
    const polled = Fs.mkdtempSync(Path.join(Os.tmpdir(), "polled-repo-"))
    Fs.mkdirSync(Path.join(polled, "mlp"))
    Fs.copyFileSync(Path.join(bundled, "mlp/model.onnx"), Path.join(polled, "mlp", "model.onnx"))
    const running = await startServer(["--port", "0", "--grpc-port", "off", "--models", polled, "--model-control-mode", "poll", "--repository-poll-secs", "1"])
    const states = async () => ((await json(Client.send(running.port, "POST", "/v2/repository/index"))).body as Array<{ name: string; state: string }>).map((m) => `${m.name} ${m.state}`)
    const until = async (what: string, check: (s: ReadonlyArray<string>) => boolean) => {
      for (let i = 0; ; i++) {
        const now = await states()
        if (check(now)) return
        if (i > 100) throw new Error(`${what}: ${now.join(", ")}\n${running.output()}`)
        await new Promise((r) => setTimeout(r, 100))
      }
    }
    try {
      assert.deepStrictEqual(await states(), ["mlp READY"])
      // copied in under another name, then renamed into place, as for Triton
      Fs.mkdirSync(Path.join(polled, ".incoming"))
      Fs.copyFileSync(Path.join(bundled, "mlp/model.onnx"), Path.join(polled, ".incoming", "model.onnx"))
      Fs.renameSync(Path.join(polled, ".incoming"), Path.join(polled, "added"))
      await until("the added model is loaded by a poll", (s) => s.includes("added READY"))
      const row = { inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", data: new Array(784).fill(0.5) }] }
      assert.strictEqual((await json(Client.send(running.port, "POST", "/v2/models/added/infer", JSON.stringify(row)))).status, 200)
      const refused = await json(Client.send(running.port, "POST", "/v2/repository/models/mlp/unload"))
      assert.strictEqual(refused.status, 400)
      assert.match(refused.body.error, /not allowed while the server polls the model repository/)
      Fs.rmSync(Path.join(polled, "added"), { recursive: true })
      await until("the removed model is unloaded", (s) => !s.some((m) => m.startsWith("added")))
      assert.strictEqual((await json(Client.send(running.port, "POST", "/v2/models/added/infer", JSON.stringify(row)))).status, 404)
      assert.match(running.output(), /repository poll: model added appeared in the repository: loading it/)
    } finally {
      running.child.kill("SIGKILL")
      await running.exit
      Fs.rmSync(polled, { recursive: true, force: true })
    }
  }, 60_000)

  it("an empty repository: a warning at start, and never ready under strict readiness (ready with --strict-readiness false)", async () => {
    const empty = Fs.mkdtempSync(Path.join(Os.tmpdir(), "empty-repo-"))
    const [strict, lenient] = await Promise.all([
      startServer(["--port", "0", "--models", empty]),
      startServer(["--port", "0", "--models", empty], { STRICT_READINESS: "false" })
    ])
    try {
      assert.match(strict.output(), /WARN .*the model repository .* holds no model: the server will not turn ready \(--strict-readiness\)/)
      const notReady = await json(Client.send(strict.port, "GET", "/v2/health/ready"))
      assert.strictEqual(notReady.status, 503)
      assert.strictEqual(notReady.body.error, "the model repository holds no model")
      assert.match(lenient.output(), /WARN .*holds no model/)
      assert.strictEqual((await json(Client.send(lenient.port, "GET", "/v2/health/ready"))).status, 200)
    } finally {
      for (const s of [strict, lenient]) s.child.kill("SIGKILL")
      await Promise.all([strict.exit, lenient.exit])
      Fs.rmSync(empty, { recursive: true, force: true })
    }
  }, 30_000)
})
