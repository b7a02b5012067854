/**
 * The spec's five seed tests, on real semantics: runs take scripted time under TestClock, and
 * in the cancellation and time-out tests the run is really slower than the cancel or deadline.
 * (The same five behaviours on a bundled ONNX model are in test/seed.onnx.test.ts.)
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as CancelToken from "../src/CancelToken.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as InferenceResult from "../src/InferenceResult.ts"
import * as Priority from "../src/Priority.ts"
import * as PriorityQueue from "../src/PriorityQueue.ts"
import { makeHarness } from "./fixtures/EngineHarness.ts"
import { echoInputs } from "./fixtures/FakeModelPool.ts"

describe("seed", () => {
  it.effect("basic async inference", () =>
    Effect.gen(function*() {
      const { engine } = yield* makeHarness({ script: () => ({ latency: "10 millis" }) })
      const request = InferenceRequest.make("echo", echoInputs(1.5))
      const fiber = yield* Effect.forkChild(engine.inferResult(request), { startImmediately: true })
      yield* TestClock.adjust("10 millis")
      const result = yield* Fiber.join(fiber)
      assert.isTrue(InferenceResult.isSuccess(result))
      if (result._tag !== "Success") return
      assert.strictEqual(result.requestId, request.requestId)
      assert.deepStrictEqual(Array.from(result.outputs["y"]!.data as Float32Array), [3, 3, 3, 3])
      assert.strictEqual(result.deviceUsed, "cpu")
      assert.strictEqual(InferenceResult.latencyMs(result), 10)
    }))

  it.effect("inference cancellation", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "1 second" }) })
      const token = yield* CancelToken.make
      const request = InferenceRequest.make("echo", echoInputs(1))
      const fiber = yield* Effect.forkChild(engine.inferResult(request, token), { startImmediately: true })
      yield* TestClock.adjust("100 millis")
      assert.strictEqual(stats.started, 1, "the run is in progress when the cancel comes")
      yield* token.cancel("user pressed stop")
      const result = yield* Fiber.join(fiber)
      assert.deepStrictEqual(result, InferenceResult.Cancelled({ requestId: request.requestId, reason: "user pressed stop" }))
      assert.isUndefined(InferenceResult.latencyMs(result))
      assert.strictEqual(stats.finished, 0, "answered before the run ended")
    }))

  it.effect("inference timeout", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "1 second" }) })
      const request = InferenceRequest.withTimeout(InferenceRequest.make("echo", echoInputs(1)), "100 millis")
      const fiber = yield* Effect.forkChild(engine.inferResult(request), { startImmediately: true })
      yield* TestClock.adjust("100 millis")
      const result = yield* Fiber.join(fiber)
      assert.strictEqual(result._tag, "TimedOut")
      assert.strictEqual(InferenceResult.latencyMs(result), 100)
      assert.strictEqual(stats.finished, 0, "the deadline fired while the run was still going")
    }))

  it.effect("batch inference", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "10 millis" }), config: { maxConcurrentRequests: 2 } })
      const requests = Array.from({ length: 5 }, (_, i) => InferenceRequest.make("echo", echoInputs(i)))
      const fiber = yield* Effect.forkChild(Stream.runCollect(engine.inferBatch(requests)), { startImmediately: true })
      yield* TestClock.adjust("30 millis")
      const results = yield* Fiber.join(fiber)
      assert.strictEqual(results.length, 5)
      assert.isTrue(results.every(InferenceResult.isSuccess))
      assert.deepStrictEqual(new Set(results.map((r) => r.requestId)), new Set(requests.map((r) => r.requestId)))
      for (const result of results) {
        if (result._tag !== "Success") continue
        const i = requests.findIndex((r) => r.requestId === result.requestId)
        assert.strictEqual((result.outputs["y"]!.data as Float32Array)[0], i * 2)
      }
      assert.strictEqual(stats.maxActive, 2)
    }))

  it.effect("priority queue", () =>
    Effect.sync(() => {
      const queue = PriorityQueue.make<string>(10)
      queue.offer("low", Priority.Low)
      queue.offer("normal", Priority.Normal)
      queue.offer("high", Priority.High)
      queue.offer("critical", Priority.Critical)
      assert.deepStrictEqual(queue.stats(), { critical: 1, high: 1, normal: 1, low: 1, total: 4 })
      assert.deepStrictEqual([queue.poll(), queue.poll(), queue.poll(), queue.poll(), queue.poll()], [
        "critical",
        "high",
        "normal",
        "low",
        undefined
      ])
    }))
})
