/**
 * 07 · A client of the server: `OipClient` takes the engine's own `InferenceRequest` and answers
 * its `InferenceResult.Success` or typed `InferenceError`, over the Open Inference Protocol (this
 * project's server, Triton, KServe). Code written against the engine in process runs against a
 * server by swapping the call.
 *
 * Here the server runs in this process (as in 05) so that the example needs nothing else; against
 * `npm start`, the client is `OipClient.make({ url: "http://127.0.0.1:8000" })`.
 *
 * Run: `npm run example -- 07`
 */
import { Effect, Layer } from "effect"
import { HttpServer } from "effect/http"
import { fileURLToPath } from "node:url"
import { AsyncConfig, Engine, InferenceRequest, OipClient, OnnxModelPool, Server, Telemetry, Tensor } from "../src/index.ts"

const repository = fileURLToPath(new URL("../models", import.meta.url))

const App = Server.layer({ host: "127.0.0.1", port: 0, bodyLimitBytes: 1 << 20, serverName: "example", serverVersion: "1" }).pipe(
  Layer.provideMerge(Engine.AsyncInferenceEngine.layer),
  Layer.provideMerge(Layer.mergeAll(OnnxModelPool.layer({ repository }), Telemetry.TelemetryCollector.layer, AsyncConfig.AsyncConfigService.layer))
)

const program = Effect.gen(function*() {
  const url = HttpServer.formatAddress((yield* HttpServer.HttpServer).address)
  const engine = yield* Engine.AsyncInferenceEngine
  const remote = yield* OipClient.make({ url })

  const row = Tensor.float32(Float32Array.from({ length: 784 }, (_, i) => (i % 7) / 7), [1, 784])
  const request = InferenceRequest.make("mlp", { input: row }, { priority: "High", timeout: "2 seconds" })
  // the same request, in process and through the server
  const local = yield* engine.infer(request)
  const answered = yield* remote.infer(request)
  const same = Array.from(answered.outputs["logits"]!.data as Float32Array).every((v, i) => v === (local.outputs["logits"]!.data as Float32Array)[i])
  console.log(`remote: ${answered._tag}, logits [${answered.outputs["logits"]!.dims.join(", ")}], the same as in process: ${same}`)

  // refusals are the engine's typed errors, over the wire too
  const refused = yield* Effect.flip(remote.infer(InferenceRequest.make("mlp", { input: Tensor.float32([1, 2], [1, 2]) })))
  console.log(`a row of 2 floats -> ${refused.reason._tag} (input ${refused.reason._tag === "InvalidInput" ? refused.reason.input : "?"}), retryable: ${refused.isRetryable}`)
  const missing = yield* Effect.flip(remote.infer(InferenceRequest.make("nope", { input: row })))
  console.log(`an unknown model -> ${missing.reason._tag}`)

  const metadata = yield* remote.metadata("mlp")
  console.log(`metadata: ${metadata.inputs.map((t) => `${t.name} ${t.dtype} [${t.dims.join(", ")}]`).join(", ")}; ready: ${yield* remote.ready("mlp")}`)

  const { drained } = yield* Server.shutdown("5 seconds")
  console.log(`shutdown: drained ${drained}`)
}).pipe(Effect.scoped)

await Effect.runPromise(program.pipe(Effect.provide(App)))
