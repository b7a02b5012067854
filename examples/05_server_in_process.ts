/**
 * 05 · The Open Inference Protocol server, in-process.
 *
 * `Server.layer` serves the OIP v2 REST routes over the engine on a port (0: any free one);
 * `Server.shutdown` is the graceful stop the standalone server runs on SIGTERM. Here the server
 * lives inside a program that talks to it with `fetch` (in JSON, then with Triton's binary tensor
 * data), then stops it.
 *
 * Run: `npm run example -- 05`
 */
import { Effect, Layer } from "effect"
import { HttpServer } from "effect/http"
import { fileURLToPath } from "node:url"
import { AsyncConfig, Engine, OnnxModelPool, Server, Telemetry } from "../src/index.ts"

const repository = fileURLToPath(new URL("../models", import.meta.url))

const App = Server.layer({ host: "127.0.0.1", port: 0, bodyLimitBytes: 1 << 20, serverName: "example", serverVersion: "1" }).pipe(
  Layer.provideMerge(Engine.AsyncInferenceEngine.layer),
  Layer.provideMerge(Layer.mergeAll(
    OnnxModelPool.layer({ repository }),
    Telemetry.TelemetryCollector.layer,
    AsyncConfig.AsyncConfigService.layer
  ))
)

const program = Effect.gen(function*() {
  const server = yield* HttpServer.HttpServer
  const base = HttpServer.formatAddress(server.address)
  console.log(`listening on ${base.replace(/:\d+$/, ":<port>")}`)

  const ready = yield* Effect.promise(() => fetch(`${base}/v2/health/ready`))
  console.log(`GET /v2/health/ready -> ${ready.status}`)

  const body = { id: "example", inputs: [{ name: "input", datatype: "FP32", shape: [1, 784], data: new Array(784).fill(0.25) }] }
  const answer = yield* Effect.promise(async () => {
    const response = await fetch(`${base}/v2/models/mlp/infer`, { method: "POST", body: JSON.stringify(body) })
    return { status: response.status, json: await response.json() as { id: string; outputs: Array<{ name: string; shape: Array<number> }> } }
  })
  console.log(`POST /v2/models/mlp/infer -> ${answer.status}: id ${answer.json.id}, ${answer.json.outputs.map((o) => `${o.name} [${o.shape.join(", ")}]`).join(", ")}`)

  // The same row as binary tensor data (Triton's extension, what tritonclient sends): the JSON
  // header, then the raw little-endian floats; the logits come back as raw floats too.
  const row = new Float32Array(784).fill(0.25)
  const header = new TextEncoder().encode(JSON.stringify({
    inputs: [{ name: "input", datatype: "FP32", shape: [1, 784], parameters: { binary_data_size: row.byteLength } }],
    outputs: [{ name: "logits", parameters: { binary_data: true } }]
  }))
  const binary = yield* Effect.promise(async () => {
    const response = await fetch(`${base}/v2/models/mlp/infer`, {
      method: "POST",
      headers: { "inference-header-content-length": String(header.length) },
      body: Buffer.concat([header, new Uint8Array(row.buffer)])
    })
    const bytes = new Uint8Array(await response.arrayBuffer())
    const jsonLength = Number(response.headers.get("inference-header-content-length"))
    return { status: response.status, logits: new Float32Array(bytes.slice(jsonLength).buffer) }
  })
  const jsonLogits = (answer.json.outputs[0] as unknown as { data: Array<number> }).data
  const same = jsonLogits.every((v, i) => Math.abs(v - binary.logits[i]!) < 1e-6)
  console.log(`POST /v2/models/mlp/infer, binary tensors -> ${binary.status}: ${binary.logits.length} logits, the same as JSON: ${same}`)

  const missing = yield* Effect.promise(() => fetch(`${base}/v2/models/nope/infer`, { method: "POST", body: JSON.stringify(body) }))
  console.log(`POST /v2/models/nope/infer -> ${missing.status}`)

  const report = yield* Server.shutdown("5 seconds")
  console.log(`shutdown: drained ${report.drained}`)
}).pipe(Effect.scoped)

await Effect.runPromise(program.pipe(Effect.provide(App)))
