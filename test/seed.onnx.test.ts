/**
 * The seed's five behaviours once more, on the bundled MLP in worker threads (real time).
 * The run in the cancellation and time-out tests is a 16384-row batch: tens of milliseconds,
 * far slower than the 2 ms cancel or deadline.
 */
import { assert, describe, it, layer } from "@effect/vitest"
import { Effect, Fiber, Layer, Stream } from "effect"
import { fileURLToPath } from "node:url"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import * as CancelToken from "../src/CancelToken.ts"
import { AsyncInferenceEngine } from "../src/Engine.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as InferenceResult from "../src/InferenceResult.ts"
import * as Mlp from "../scripts/Mlp.ts"
import * as OnnxModelPool from "../src/onnx/OnnxModelPool.ts"
import * as Priority from "../src/Priority.ts"
import { layerRecording } from "../src/Telemetry.ts"
import * as Tensor from "../src/Tensor.ts"

const repository = fileURLToPath(new URL("../models", import.meta.url))

const rowsOf = (rows: number, seed = 1) => {
  const data = new Float32Array(rows * 784)
  let s = seed
  for (let i = 0; i < data.length; i++) {
    s = (s * 1664525 + 1013904223) >>> 0
    data[i] = s / 4294967296 - 0.5
  }
  return data
}

const inputs = new Map<number, Float32Array>()
const mlpRequest = (rows: number, options: InferenceRequest.Options = {}) => {
  if (!inputs.has(rows)) inputs.set(rows, rowsOf(rows))
  return InferenceRequest.make("mlp", { input: Tensor.float32(inputs.get(rows)!, [rows, 784]) }, options)
}

const Live = AsyncInferenceEngine.layer.pipe(
  Layer.provide(Layer.mergeAll(OnnxModelPool.layer({ repository }), layerRecording, AsyncConfigService.layerWith({ maxConcurrentRequests: 2 })))
)

/** How long one 16384-row run takes here, measured once (the cancel and deadline tests compare against it). */
const longRunMs = Effect.gen(function*() {
  const engine = yield* AsyncInferenceEngine
  const result = yield* engine.infer(mlpRequest(16384))
  return result.latencyMs
})

layer(Live, { timeout: 60_000, excludeTestServices: true })("seed on the bundled MLP", (it) => {
  it.effect("basic async inference", () =>
    Effect.gen(function*() {
      const engine = yield* AsyncInferenceEngine
      const request = mlpRequest(2)
      const result = yield* engine.inferResult(request)
      assert.isTrue(InferenceResult.isSuccess(result))
      if (result._tag !== "Success") return
      const logits = result.outputs["logits"]!
      assert.deepStrictEqual(logits.dims, [2, 10])
      const expected = Mlp.forward(Mlp.weights(), rowsOf(2), 2)
      const got = logits.data as Float32Array
      for (let i = 0; i < expected.length; i++) assert.closeTo(got[i]!, expected[i]!, 1e-4)
      assert.strictEqual(result.deviceUsed, "cpu")
      assert.isAbove(result.latencyMs, 0)
    }))

  it.effect("inference cancellation", () =>
    Effect.gen(function*() {
      const engine = yield* AsyncInferenceEngine
      const runMs = yield* longRunMs
      const token = yield* CancelToken.make
      const fiber = yield* Effect.forkChild(engine.inferResult(mlpRequest(16384), token), { startImmediately: true })
      yield* Effect.sleep("2 millis")
      const cancelledAt = performance.now()
      yield* token.cancel("stop")
      const result = yield* Fiber.join(fiber)
      assert.strictEqual(result._tag, "Cancelled")
      assert.isBelow(performance.now() - cancelledAt, runMs / 2, "answered at once, not after the run")
    }))

  it.effect("inference timeout", () =>
    Effect.gen(function*() {
      const engine = yield* AsyncInferenceEngine
      const runMs = yield* longRunMs
      const result = yield* engine.inferResult(mlpRequest(16384, { timeout: "2 millis" }))
      assert.strictEqual(result._tag, "TimedOut")
      // TimedOut means the deadline won the race with the run; its time says it fired long before the
      // run's end (a timer that fires late on a loaded machine: within a run's length, not half of one)
      if (result._tag === "TimedOut") assert.isBelow(result.elapsedMs, runMs, `the deadline fired before the ${runMs.toFixed(1)} ms run ended`)
    }))

  it.effect("batch inference", () =>
    Effect.gen(function*() {
      const engine = yield* AsyncInferenceEngine
      const requests = Array.from({ length: 8 }, (_, i) => mlpRequest(1 + (i % 3)))
      const results = yield* Stream.runCollect(engine.inferBatch(requests))
      assert.strictEqual(results.length, 8)
      for (const result of results) {
        assert.isTrue(InferenceResult.isSuccess(result))
        const request = requests.find((r) => r.requestId === result.requestId)!
        if (result._tag === "Success") assert.strictEqual(result.outputs["logits"]!.dims[0], request.inputs["input"]!.dims[0])
      }
    }))

  it.effect("priority queue", () =>
    Effect.gen(function*() {
      const engine = yield* AsyncInferenceEngine
      // Two long runs hold both permits; then one request per level queues behind them.
      const blockers = [yield* Effect.forkChild(engine.infer(mlpRequest(16384)), { startImmediately: true }), yield* Effect.forkChild(engine.infer(mlpRequest(16384)), { startImmediately: true })]
      while ((yield* engine.queueStats).total > 0) yield* Effect.sleep("1 millis")
      const finished: Array<Priority.Priority> = []
      const fibers = []
      for (const priority of ["Low", "Normal", "High", "Critical"] as const) {
        fibers.push(yield* Effect.forkChild(
          engine.infer(mlpRequest(1, { priority })).pipe(Effect.tap(() => Effect.sync(() => finished.push(priority)))),
          { startImmediately: true }
        ))
      }
      assert.deepStrictEqual(yield* engine.queueStats, { critical: 1, high: 1, normal: 1, low: 1, total: 4 })
      for (const f of [...blockers, ...fibers]) yield* Fiber.join(f)
      assert.strictEqual(finished[0], Priority.Critical)
      assert.strictEqual(finished.indexOf("High") < finished.indexOf("Low"), true)
    }))

  it.effect("refuses Silero inputs whose batch sizes disagree before running them (a 400, not a run failure)", () =>
    Effect.gen(function*() {
      const engine = yield* AsyncInferenceEngine
      const request = InferenceRequest.make("silero_vad", {
        input: Tensor.float32(new Float32Array(512), [1, 512]),
        state: Tensor.float32(new Float32Array(2 * 2 * 128), [2, 2, 128]),
        sr: Tensor.int64([16000], [])
      })
      const error = yield* Effect.flip(engine.infer(request))
      assert.strictEqual(error.reason._tag, "InvalidInput")
      assert.include(error.message, "input has 1 on axis 0, state has 2 on axis 1")
    }))
})
