/**
 * 03 · Streaming a batch.
 *
 * `inferBatch` submits requests a few at a time (`concurrency`) and emits each result as it
 * completes: a Stream for Effect code, an AsyncIterable through the Promise facade. Results never
 * fail the stream (Cancelled, TimedOut and Failed are results), and stopping early cancels what
 * is still outstanding.
 *
 * Run: `npm run example -- 03`
 */
import { Effect, Layer, Stream } from "effect"
import { fileURLToPath } from "node:url"
import { AsyncConfig, Engine, InferenceClient, InferenceRequest, OnnxModelPool, Telemetry, Tensor } from "../src/index.ts"

const repository = fileURLToPath(new URL("../models", import.meta.url))
const requests = (n: number) =>
  Array.from({ length: n }, (_, i) =>
    InferenceRequest.make("mlp", { input: Tensor.float32(new Float32Array(784).fill(i / n), [1, 784]) }, { requestId: `req-${i}` }))

// Effect: a Stream of results, folded into counts by outcome.
const EngineLive = Engine.AsyncInferenceEngine.layer.pipe(
  Layer.provide(Layer.mergeAll(
    OnnxModelPool.layer({ repository }),
    Telemetry.TelemetryCollector.layer,
    AsyncConfig.AsyncConfigService.layer
  ))
)

const program = Effect.gen(function*() {
  const engine = yield* Engine.AsyncInferenceEngine
  const counts = yield* engine.inferBatch(requests(200), { concurrency: 16 }).pipe(
    Stream.runFold(() => ({} as Record<string, number>), (acc, result) => ({ ...acc, [result._tag]: (acc[result._tag] ?? 0) + 1 }))
  )
  console.log(`Stream: 200 requests -> ${JSON.stringify(counts)}`)

  // Taking only the first 10 results stops the stream: the rest are cancelled, none left behind.
  const first = yield* engine.inferBatch(requests(200), { concurrency: 16 }).pipe(Stream.take(10), Stream.runCollect)
  console.log(`Stream.take(10): ${first.length} results, engine pending afterwards: ${yield* engine.pending}`)
})
await Effect.runPromise(program.pipe(Effect.provide(EngineLive)))

// Promise facade: the same batch as an AsyncIterable.
const client = await InferenceClient.make({ repository })
let seen = 0
for await (const result of client.inferBatch(requests(50), { concurrency: 8 })) {
  if (result._tag === "Success") seen++
}
console.log(`for await: ${seen} successes`)
await client.close()
