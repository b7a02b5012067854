import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as InferenceError from "../../src/InferenceError.ts"
import * as Statistics from "../../src/http/Statistics.ts"
import type * as ModelPool from "../../src/ModelPool.ts"
import { layerRecording, TelemetryCollector, TelemetryLog } from "../../src/Telemetry.ts"

const info = { modelId: "m", requestId: "r", priority: "Normal" } as const

describe("Statistics", () => {
  it.effect("forwards every record to the collector beneath and accumulates Triton's statistics from the same calls", () =>
    Effect.gen(function*() {
      const services = yield* Layer.build(Statistics.Statistics.layer.pipe(Layer.provideMerge(layerRecording)))
      const collector = Context.get(services, TelemetryCollector)
      const stats = Context.get(services, Statistics.Statistics)
      collector.recordStart(info)
      collector.recordQueueWait("m", "Normal", 2)
      collector.recordRun("m", 3, 4)
      collector.recordRun("m", 1, 1)
      collector.recordSuccess(info, 5)
      collector.recordFailure(info, new InferenceError.InvalidInput({ modelId: "m", detail: "d" }), 1)
      collector.recordTimeout(info, 7)
      collector.recordCancelled(info, 0.5)
      collector.recordRejected(info, new InferenceError.ShuttingDown({}))
      const log = Context.get(services, TelemetryLog).events.map((e) => e._tag)
      assert.deepStrictEqual(log, ["start", "queueWait", "run", "run", "success", "failure", "timeout", "cancelled", "rejected"])
      const t = Statistics.toTriton("m", "1", stats.get("m"))
      assert.strictEqual(t.inference_count, 5)
      assert.strictEqual(t.execution_count, 2)
      assert.isAbove(t.last_inference, 0)
      assert.deepStrictEqual(t.inference_stats.success, { count: 1, ns: 5_000_000 })
      assert.deepStrictEqual(t.inference_stats.fail, { count: 4, ns: 8_500_000 })
      assert.deepStrictEqual(t.inference_stats.queue, { count: 1, ns: 2_000_000 })
      // Per request, the run it was part of: 4 × 3 ms + 1 × 1 ms.
      assert.deepStrictEqual(t.inference_stats.compute_infer, { count: 5, ns: 13_000_000 })
      assert.deepStrictEqual(t.batch_stats.map((b) => [b.batch_size, b.compute_infer.count, b.compute_infer.ns]), [[1, 1, 1_000_000], [4, 1, 3_000_000]])
      assert.isUndefined(stats.get("other"))
      assert.strictEqual(Statistics.toTriton("other", "1", undefined).inference_count, 0)
    }))

  it.effect("keeps each model version apart; what was recorded without a version shows under the highest READY one", () =>
    Effect.gen(function*() {
      const services = yield* Layer.build(Statistics.Statistics.layer.pipe(Layer.provideMerge(layerRecording)))
      const collector = Context.get(services, TelemetryCollector)
      const stats = Context.get(services, Statistics.Statistics)
      collector.recordQueueWait("m", "Normal", 1, "1")
      collector.recordRun("m", 2, 1, 1, "1")
      collector.recordSuccess({ ...info, version: "1" }, 3)
      collector.recordQueueWait("m", "Normal", 1, "2")
      collector.recordRun("m", 2, 2, 2, "2")
      collector.recordSuccess({ ...info, version: "2" }, 3)
      collector.recordSuccess({ ...info, version: "2" }, 3)
      collector.recordRejected(info, new InferenceError.QueueFull({ modelId: "m", requestId: "r", capacity: 1 }))
      assert.deepStrictEqual([stats.get("m", "1")?.success.count, stats.get("m", "2")?.success.count, stats.get("m")?.fail.count], [1, 2, 1])
      const pool = { models: Effect.succeed([{ name: "m", version: "1", state: "READY" }, { name: "m", version: "2", state: "READY" }]) } as unknown as ModelPool.Service
      const all = yield* Statistics.report(pool, stats, undefined, undefined)
      assert.deepStrictEqual(all.map((t) => [t.version, t.inference_count, t.inference_stats.success.count, t.inference_stats.fail.count]), [["1", 1, 1, 0], ["2", 2, 2, 1]])
      const [one] = yield* Statistics.report(pool, stats, "m", "01")
      assert.deepStrictEqual([one!.version, one!.execution_count, one!.inference_stats.queue.count], ["1", 1, 1])
      assert.deepStrictEqual((yield* Statistics.report(pool, stats, "m", undefined)).map((t) => t.version), ["1", "2"], "a model's every version, as Triton answers")
      // Merged with what has no version, a version keeps its own last inference (the later of the two).
      assert.isAbove(all[1]!.last_inference, 0)
      assert.strictEqual(all[1]!.last_inference, stats.get("m", "2")!.lastInferenceMs)
      const twoDown = { models: Effect.succeed([{ name: "m", version: "1", state: "READY" }, { name: "m", version: "2", state: "UNAVAILABLE" }]) } as unknown as ModelPool.Service
      assert.deepStrictEqual((yield* Statistics.report(twoDown, stats, "m", undefined)).map((t) => [t.version, t.inference_stats.fail.count]), [["1", 1], ["2", 0]])
      // A READY version wins over one listed before it that is not, whatever their numbers.
      const oneDown = { models: Effect.succeed([{ name: "m", version: "1", state: "UNAVAILABLE" }, { name: "m", version: "2", state: "READY" }]) } as unknown as ModelPool.Service
      assert.deepStrictEqual((yield* Statistics.report(oneDown, stats, "m", undefined)).map((t) => [t.version, t.inference_stats.fail.count]), [["1", 0], ["2", 1]])
    }))

  it.effect("counts inferences and batch sizes in rows, as Triton: one run of a 64-row request is 64 inferences of batch size 64", () =>
    Effect.gen(function*() {
      const services = yield* Layer.build(Statistics.Statistics.layer.pipe(Layer.provideMerge(layerRecording)))
      const collector = Context.get(services, TelemetryCollector)
      const stats = Context.get(services, Statistics.Statistics)
      collector.recordRun("m", 2, 1, 64)
      collector.recordRun("m", 2, 1, 64)
      collector.recordRun("m", 3, 3, 96)
      const t = Statistics.toTriton("m", "1", stats.get("m"))
      assert.strictEqual(t.inference_count, 224)
      assert.strictEqual(t.execution_count, 3)
      // compute_infer stays per request: 1 × 2 ms twice, 3 × 3 ms.
      assert.deepStrictEqual(t.inference_stats.compute_infer, { count: 5, ns: 13_000_000 })
      assert.deepStrictEqual(t.batch_stats.map((b) => [b.batch_size, b.compute_infer.count]), [[64, 2], [96, 1]])
      const runs = Context.get(services, TelemetryLog).events.filter((e) => e._tag === "run")
      assert.deepStrictEqual(runs.map((e) => e._tag === "run" ? e.rows : undefined), [64, 64, 96], "forwarded with the rows")
    }))
})
