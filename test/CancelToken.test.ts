/**
 * CancelToken: the reasons a cancel reads, an AbortSignal already aborted, and the listeners a
 * request leaves on the caller's signal once it is answered (none).
 */
import { assert, describe, it } from "@effect/vitest"
import { getEventListeners } from "node:events"
import { Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import * as CancelToken from "../src/CancelToken.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import { makeHarness } from "./fixtures/EngineHarness.ts"
import { echoInputs } from "./fixtures/FakeModelPool.ts"

const request = (id: string) => InferenceRequest.make("echo", echoInputs(1), { requestId: id })
const fork = <A, E>(effect: Effect.Effect<A, E>) => Effect.forkChild(effect, { startImmediately: true })

describe("CancelToken", () => {
  it.effect("a token cancelled without a reason reads 'cancelled by caller'; the first reason wins", () =>
    Effect.gen(function*() {
      const token = CancelToken.makeUnsafe()
      token.cancelUnsafe()
      token.cancelUnsafe("second")
      assert.strictEqual(yield* token.await, "cancelled by caller")
    }))

  it("abortReasonText: no reason reads 'aborted', a reason without text the fallback", () => {
    assert.strictEqual(CancelToken.abortReasonText(undefined), "aborted")
    assert.strictEqual(CancelToken.abortReasonText(Object.create(null)), "aborted (the reason has no text)")
    assert.strictEqual(CancelToken.abortReasonText(new Error("boom")), "boom")
  })

  it.effect("await on an already-aborted AbortSignal resumes at once with its reason", () =>
    Effect.gen(function*() {
      const reason = yield* fork(CancelToken.await(AbortSignal.abort("gone")).pipe(Effect.timeoutOption("1 second")))
      yield* TestClock.adjust("2 seconds")
      const got = yield* Fiber.join(reason)
      assert.deepStrictEqual(got._tag === "Some" ? got.value : "timed out", "gone")
    }))

  it.effect("inferResult with an already-aborted AbortSignal settles as Cancelled without running", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness()
      const fiber = yield* fork(engine.inferResult(request("a"), AbortSignal.abort("gone")))
      yield* TestClock.adjust("1 second")
      const result = fiber.pollUnsafe()
      assert.isDefined(result, "settled")
      const value = yield* Fiber.join(fiber)
      assert.deepStrictEqual(value._tag === "Cancelled" ? value.reason : value._tag, "gone")
      assert.strictEqual(stats.started, 0)
    }))

  it.effect("a finished request leaves no abort listener on the caller's signal", () =>
    Effect.gen(function*() {
      const { engine } = yield* makeHarness({ script: () => ({ latency: "10 millis" }) })
      const controller = new AbortController()
      const fiber = yield* fork(engine.inferResult(request("a"), controller.signal))
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(getEventListeners(controller.signal, "abort").length, 1, "listening while it runs")
      yield* TestClock.adjust("20 millis")
      const result = yield* Fiber.join(fiber)
      assert.strictEqual(result._tag, "Success")
      assert.strictEqual(getEventListeners(controller.signal, "abort").length, 0)
    }))
})
