import { assert, describe, it } from "@effect/vitest"
import { Effect, Metric, References } from "effect"
import { PrometheusMetrics } from "effect/observability"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import * as Tensor from "../../src/Tensor.ts"
import { mlpBytes, sampleInput, tempRepository } from "../fixtures/ModelRepositoryFixture.ts"

const quiet = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.provideService(self, References.MinimumLogLevel, "Error")
const rows = (n: number) => ({ input: Tensor.float32(sampleInput(n), [n, 784]) })

describe("inference_batch_fill_ratio", () => {
  it.live("observes rows over maxBatchSize once per run of a batching model, and nothing for a model that does not batch", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({
        "fill14a/model.onnx": mlpBytes(),
        "fill14a/config.json": JSON.stringify({ instances: 1, batching: { enabled: true, maxBatchSize: 16 } }),
        "fill14b/model.onnx": mlpBytes(),
        "fill14b/config.json": JSON.stringify({ instances: 1, batching: { enabled: false } })
      })
      const pool = yield* quiet(OnnxModelPool.make({ repository }))
      yield* pool.run("fill14a", rows(4), { requestId: "a" })
      yield* pool.run("fill14a", rows(16), { requestId: "b" })
      yield* pool.run("fill14b", rows(4), { requestId: "c" })
      const a = yield* Metric.value(Metric.withAttributes(OnnxModelPool.batchFill, { model: "fill14a", version: "1" }))
      assert.strictEqual(a.count, 2)
      assert.strictEqual(a.sum, 4 / 16 + 1)
      assert.strictEqual(a.max, 1)
      const b = yield* Metric.value(Metric.withAttributes(OnnxModelPool.batchFill, { model: "fill14b", version: "1" }))
      assert.strictEqual(b.count, 0)
      const text = yield* PrometheusMetrics.format()
      assert.match(text, /inference_batch_fill_ratio_count\{model="fill14a",version="1"\} 2/)
    }))

  it("finds the rows on each model's batch axis", () => {
    const batching = { enabled: true, maxBatchSize: 8, maxQueueDelay: 0 as never, preferredBatchSizes: [], sizing: "fixed" as const, inputAxes: {}, outputAxes: {} }
    assert.strictEqual(OnnxModelPool.rowsOf({ x: Tensor.float32(new Float32Array(6), [3, 2]) }, batching), 3)
    const silero = { ...batching, inputAxes: { sr: null, state: 1 } }
    assert.strictEqual(OnnxModelPool.rowsOf({ sr: Tensor.make("int64", BigInt64Array.from([16000n]), []), state: Tensor.float32(new Float32Array(2 * 5 * 4), [2, 5, 4]) }, silero), 5)
  })
})
