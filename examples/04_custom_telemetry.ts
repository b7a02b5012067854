/**
 * 04 · A custom telemetry layer.
 *
 * The engine reports through the `TelemetryCollector` service: one `recordStart` per request,
 * then exactly one of success, failure, cancelled, timeout or rejected, plus queue waits and
 * native runs. Record points are plain synchronous calls on the engine's hot path: return at once. The default layer turns these into Effect Metrics (Prometheus on the server's
 * /metrics, OTLP with `Otel.layer`); provide your own layer to send them anywhere else. Spans
 * (`Engine.infer`) go to whatever `Tracer` is installed: here a tiny one that counts them.
 *
 * Run: `npm run example -- 04`
 */
import { type Duration, Effect, Layer, Tracer } from "effect"
import { fileURLToPath } from "node:url"
import { AsyncConfig, CancelToken, Engine, InferenceRequest, OnnxModelPool, Telemetry, Tensor } from "../src/index.ts"

// Outcome counts and success latencies, in memory.
const outcomes = new Map<string, number>()
const latenciesMs: Array<number> = []
const count = (outcome: string): void => void outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)

const InMemoryTelemetry = Layer.succeed(Telemetry.TelemetryCollector, {
  recordStart: () => count("started"),
  recordSuccess: (_info, latencyMs) => {
    count("success")
    latenciesMs.push(latencyMs)
  },
  recordFailure: (_info, reason) => count(`failure:${reason._tag}`),
  recordCancelled: () => count("cancelled"),
  recordTimeout: () => count("timeout"),
  recordRejected: (_info, reason) => count(`rejected:${reason._tag}`),
  recordQueueWait: () => {},
  recordRun: () => count("runs")
})

// A Tracer that counts finished spans by name.
const spans = new Map<string, number>()
const CountingTracer = Layer.succeed(Tracer.Tracer, Tracer.make({
  span: (options) => {
    const span = new Tracer.NativeSpan(options)
    const end = span.end.bind(span)
    span.end = (time, exit) => {
      end(time, exit)
      spans.set(span.name, (spans.get(span.name) ?? 0) + 1)
    }
    return span
  }
}))

const EngineLive = Engine.AsyncInferenceEngine.layer.pipe(
  Layer.provide(Layer.mergeAll(
    OnnxModelPool.layer({ repository: fileURLToPath(new URL("../models", import.meta.url)) }),
    InMemoryTelemetry,
    AsyncConfig.AsyncConfigService.layerWith({ maxConcurrentRequests: 1 })
  ))
)

const mlp = (rows: number, timeout: Duration.Input) =>
  InferenceRequest.make("mlp", { input: Tensor.float32(new Float32Array(rows * 784), [rows, 784]) }, { timeout })

const program = Effect.gen(function*() {
  const engine = yield* Engine.AsyncInferenceEngine
  const cancelled = CancelToken.makeUnsafe()
  cancelled.cancelUnsafe()
  yield* Effect.all([
    ...Array.from({ length: 20 }, () => engine.inferResult(mlp(1, "10 seconds"))),
    engine.inferResult(mlp(8192, "1 millis")), // its deadline passes first
    engine.inferResult(mlp(1, "10 seconds"), cancelled), // cancelled before it was queued
    engine.inferResult(InferenceRequest.make("mlp", {})) // no inputs: invalid
  ], { concurrency: "unbounded" })
})

await Effect.runPromise(program.pipe(Effect.provide(EngineLive), Effect.provide(CountingTracer)))

const sorted = latenciesMs.toSorted((a, b) => a - b)
console.log(`outcomes: ${[...outcomes].map(([k, v]) => `${k}=${v}`).join(" ")}`)
console.log(`success latency: p50 ${sorted[Math.floor(sorted.length / 2)]!.toFixed(1)} ms, max ${sorted.at(-1)!.toFixed(1)} ms`)
console.log(`spans: Engine.infer=${spans.get("Engine.infer") ?? 0}`)
