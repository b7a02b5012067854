// temporary probe: per-request server CPU of pipeline variants
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, References } from "effect"
import { HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "effect/http"
import * as Http from "node:http"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../src/Engine.ts"
import * as Server from "../src/http/Server.ts"
import * as OnnxModelPool from "../src/onnx/OnnxModelPool.ts"
import { TelemetryCollector } from "../src/Telemetry.ts"
import { inThreadPool } from "./lib/pools.ts"
const [variant, port, tracing] = [process.argv[2]!, Number(process.argv[3]), process.argv[4] === "trace"]
let app: Layer.Layer<any, any, never>
if (variant === "raw") {
  const Route = HttpRouter.add("POST", "/v2/models/mlp/infer", Effect.gen(function*() {
    const req = yield* HttpServerRequest.HttpServerRequest
    const text = yield* req.text
    const j = JSON.parse(text)
    return HttpServerResponse.text(JSON.stringify({ n: j.inputs[0].data.length }), { contentType: "application/json" })
  }).pipe(Effect.orDie))
  app = HttpRouter.serve(Route, { disableLogger: true, disableListenLog: true }).pipe(Layer.provideMerge(NodeHttpServer.layer(Http.createServer, { port })))
} else if (variant === "codec" || variant === "codec+run") {
  const ort = await import("onnxruntime-node")
  const Oip = await import("../src/http/Oip.ts")
  const session = await ort.InferenceSession.create("models/mlp/model.onnx", { intraOpNumThreads: 1, interOpNumThreads: 1 })
  const metadata = { name: "mlp", version: "1", inputs: [{ name: "input", dtype: "float32" as const, dims: [-1, 784] }], outputs: [{ name: "logits", dtype: "float32" as const, dims: [-1, 10] }] }
  const Route = HttpRouter.add("POST", "/v2/models/mlp/infer", Effect.gen(function*() {
    const req = yield* HttpServerRequest.HttpServerRequest
    const text = yield* req.text
    const body = Oip.decodeInferRequest(JSON.parse(text))
    if ("error" in body) return HttpServerResponse.text("bad", { status: 400 })
    const inputs = Oip.decodeInputs(metadata, body.inputs) as any
    let out: any = { logits: { dtype: "float32", dims: [1, 10], data: new Float32Array(10) } }
    if (variant === "codec+run") {
      const r = yield* Effect.promise(() => session.run({ input: new ort.Tensor("float32", inputs.input.data, inputs.input.dims) }))
      out = { logits: { dtype: "float32", dims: r.logits!.dims, data: r.logits!.data } }
    }
    return HttpServerResponse.text(Oip.encodeResponse({ modelName: "mlp", modelVersion: "1", id: undefined, outputs: [["logits", out.logits]] }), { contentType: "application/json" })
  }).pipe(Effect.orDie))
  app = HttpRouter.serve(Route, { disableLogger: true, disableListenLog: true }).pipe(Layer.provideMerge(NodeHttpServer.layer(Http.createServer, { port })))
} else if (variant === "routes-stub") {
  const Tensor = await import("../src/Tensor.ts")
  const { ModelPool } = await import("../src/ModelPool.ts")
  const { Lifecycle } = await import("../src/http/Lifecycle.ts")
  const Routes = await import("../src/http/Routes.ts")
  const metadata = { name: "mlp", version: "1", inputs: [{ name: "input", dtype: "float32" as const, dims: [-1, 784] }], outputs: [{ name: "logits", dtype: "float32" as const, dims: [-1, 10] }] }
  const out = { logits: Tensor.float32(new Float32Array(10), [1, 10]) }
  const engine: any = { infer: (r: any) => Effect.succeed({ requestId: r.requestId, outputs: out, latencyMs: 0, deviceUsed: "cpu" }), queueStats: Effect.succeed({ critical: 0, high: 0, normal: 0, low: 0, total: 0 }), pending: Effect.succeed(0), config: { maxQueuedRequests: 1000 } }
  const pool: any = { metadata: () => Effect.succeed(metadata), models: Effect.succeed([]), run: () => Effect.die("no") }
  app = HttpRouter.serve(Routes.layer({ bodyLimitBytes: 1 << 24, serverName: "x", serverVersion: "0" }), { disableLogger: true, disableListenLog: true, routerConfig: Routes.routerConfig }).pipe(
    Layer.provideMerge(NodeHttpServer.layer(Http.createServer, { port })),
    Layer.provide(Layer.mergeAll(Layer.succeed(AsyncInferenceEngine, engine), Layer.succeed(ModelPool, pool), TelemetryCollector.layerNoop, Lifecycle.layer)))
} else {
  const pool = variant === "inthread" ? inThreadPool([{ name: "mlp" }]) : OnnxModelPool.layer({ repository: "models" })
  const telemetry = process.argv[5] === "noop" ? TelemetryCollector.layerNoop : TelemetryCollector.layer
  app = Server.layer({ host: "127.0.0.1", port, bodyLimitBytes: 1 << 24, serverName: "x", serverVersion: "0" }).pipe(
    Layer.provideMerge(AsyncInferenceEngine.layer),
    Layer.provide(Layer.mergeAll(pool, telemetry, AsyncConfigService.layerWith({ maxQueuedRequests: 1024 }))))
}
const main = Effect.gen(function*() { yield* HttpServer.HttpServer; console.log("listening on"); return yield* Effect.never }).pipe(Effect.provide(app))
NodeRuntime.runMain(tracing ? main : main.pipe(Effect.provideService(References.TracerEnabled, false)))
