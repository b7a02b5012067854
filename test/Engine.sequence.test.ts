import { assert, describe, it } from "@effect/vitest"
import { Clock, Duration, Effect, Exit, Fiber, Stream } from "effect"
import { TestClock } from "effect/testing"
import type * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import type * as InferenceResult from "../src/InferenceResult.ts"
import * as Tensor from "../src/Tensor.ts"
import { controls, counterEngine, counterSequence, step } from "./fixtures/CounterPool.ts"

const fork = <A, E>(effect: Effect.Effect<A, E>) => Effect.forkChild(effect, { startImmediately: true })

const yOf = (result: InferenceResult.Success) => (result.outputs["y"]!.data as Float32Array)[0]

const failureOf = <A>(exit: Exit.Exit<A, InferenceError.InferenceError>) => {
  if (Exit.isSuccess(exit)) return undefined
  const fail = exit.cause.reasons.find((r) => r._tag === "Fail")
  return fail === undefined ? "Interrupted" : fail.error.reason
}

/** The outcome of a fiber of `Effect.exit(…)` if it has ended, without waiting. */
const polled = <A>(fiber: Fiber.Fiber<Exit.Exit<A, InferenceError.InferenceError>>): Exit.Exit<A, InferenceError.InferenceError> | undefined => {
  const outer = fiber.pollUnsafe()
  return outer === undefined ? undefined : Exit.isSuccess(outer) ? outer.value : undefined
}

/** The refusal's tag of an ended fiber of `Effect.exit(…)`: "pending" while it runs, "Success" once it succeeded. */
const outcomeOf = <A>(fiber: Fiber.Fiber<Exit.Exit<A, InferenceError.InferenceError>>): string => {
  const exit = polled(fiber)
  if (exit === undefined) return "pending"
  const reason = failureOf(exit)
  return reason === undefined ? "Success" : typeof reason === "string" ? reason : reason._tag
}

/** The success of `exit`, failing the test otherwise. */
const succeeded = <A>(exit: Exit.Exit<A, InferenceError.InferenceError>): A => {
  if (Exit.isSuccess(exit)) return exit.value
  throw new Error(`expected a success, got ${JSON.stringify(failureOf(exit))}`)
}

/** Runs `request` to its end, moving the TestClock on 200 ms (a run takes 10 by default). */
const settle = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const fiber = yield* fork(Effect.exit(effect))
    yield* TestClock.adjust("200 millis")
    return yield* Fiber.join(fiber)
  })

describe("AsyncInferenceEngine sequences", () => {
  it.effect("keeps each sequence's state between its requests, and answers without the state output", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine()
      const answers: Array<number | undefined> = []
      for (const [id, x, flags] of [[1, 5, { start: true }], ["a", 100, { start: true }], [1, 2, {}], ["a", 1, {}], [1, 3, { end: true }]] as const) {
        const exit = yield* settle(engine.infer(step(id, x, flags)))
        assert.isTrue(Exit.isSuccess(exit), JSON.stringify(failureOf(exit)))
        if (Exit.isSuccess(exit)) {
          assert.deepStrictEqual(Object.keys(exit.value.outputs), ["y"])
          answers.push(yOf(exit.value))
        }
      }
      assert.deepStrictEqual(answers, [5, 100, 7, 101, 10])
    }))

  it.effect("a sequence starts from its initial state: a file's values (Triton's data_file), on every start", () =>
    Effect.gen(function*() {
      const sequence = counterSequence({ states: [{ input: "h", output: "hN", dims: undefined, initialFile: { name: "h0.bin", bytes: new Uint8Array(Float32Array.of(100).buffer) } }] })
      const { engine } = yield* counterEngine({ sequence })
      const answers: Array<number | undefined> = []
      for (const [x, flags] of [[1, { start: true }], [2, {}], [5, { start: true }]] as const) answers.push(yOf(succeeded(yield* settle(engine.infer(step(1, x, flags))))))
      assert.deepStrictEqual(answers, [101, 103, 105])
    }))

  it.effect("a start starts an ongoing sequence over; an integer id and the same digits as text are two sequences", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine()
      const y = (exit: Exit.Exit<InferenceResult.Success, InferenceError.InferenceError>) => (Exit.isSuccess(exit) ? yOf(exit.value) : failureOf(exit))
      assert.strictEqual(y(yield* settle(engine.infer(step(7, 1, { start: true })))), 1)
      assert.strictEqual(y(yield* settle(engine.infer(step("7", 50, { start: true })))), 50)
      assert.strictEqual(y(yield* settle(engine.infer(step(7, 1)))), 2)
      assert.strictEqual(y(yield* settle(engine.infer(step(7, 4, { start: true })))), 4)
      assert.strictEqual(y(yield* settle(engine.infer(step("7", 1)))), 51)
    }))

  it.effect("refuses a request of a sequence that is not under way: never started, ended, or idle past maxSequenceIdleMs", () =>
    Effect.gen(function*() {
      const { engine, runs } = yield* counterEngine()
      const refused = (exit: Exit.Exit<unknown, InferenceError.InferenceError>) => {
        const reason = failureOf(exit)
        assert.strictEqual(typeof reason === "object" ? reason._tag : reason, "InvalidInput")
        assert.include(typeof reason === "object" ? reason.message : "", "is not under way")
        assert.include(typeof reason === "object" ? reason.message : "", "sequence_start")
      }
      refused(yield* settle(engine.infer(step(1, 1))))
      yield* settle(engine.infer(step(1, 1, { start: true, end: true })))
      refused(yield* settle(engine.infer(step(1, 1))))
      yield* settle(engine.infer(step(2, 1, { start: true })))
      // 1 s after its answer (at 10 ms of the 200 settle waited), it is idle past the limit: gone
      yield* TestClock.adjust("810 millis")
      refused(yield* settle(engine.infer(step(2, 1))))
      assert.strictEqual(runs.length, 2)
    }))

  it.effect("a sequence idle for less than maxSequenceIdleMs goes on", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine({ sequence: counterSequence({ maxSequenceIdleMs: 5_000 }) })
      yield* settle(engine.infer(step(1, 1, { start: true })))
      yield* TestClock.adjust("3 seconds")
      const exit = yield* settle(engine.infer(step(1, 1)))
      assert.strictEqual(Exit.isSuccess(exit) ? yOf(exit.value) : -1, 2)
    }))

  it.effect("runs a sequence's requests one at a time in the order they came, each with the state the one before left", () =>
    Effect.gen(function*() {
      const { engine, runs } = yield* counterEngine()
      const fibers = []
      fibers.push(yield* fork(engine.infer(step(1, 1, { start: true }))))
      for (const x of [2, 3, 4]) fibers.push(yield* fork(engine.infer(step(1, x))))
      yield* TestClock.adjust("1 second")
      const answers = []
      for (const f of fibers) answers.push(yOf(yield* Fiber.join(f)))
      assert.deepStrictEqual(answers, [1, 3, 6, 10])
      assert.deepStrictEqual(runs, [[[1, 0]], [[2, 1]], [[3, 3]], [[4, 6]]])
    }))

  it.effect("batches the requests of different sequences together, each row with its own state", () =>
    Effect.gen(function*() {
      const { engine, runs } = yield* counterEngine({ batching: true, sequence: counterSequence({ maxSequenceIdleMs: 60_000 }) })
      const fibers = []
      for (const id of [1, 2, 3]) fibers.push(yield* fork(engine.infer(step(id, id * 10, { start: true }))))
      yield* TestClock.adjust("1 second")
      for (const f of fibers) yield* Fiber.join(f)
      const second = []
      for (const id of [1, 2, 3]) second.push(yield* fork(engine.infer(step(id, 1))))
      yield* TestClock.adjust("1 second")
      const answers = []
      for (const f of second) answers.push(yOf(yield* Fiber.join(f)))
      assert.deepStrictEqual(answers, [11, 21, 31])
      assert.deepStrictEqual(runs, [[[10, 0], [20, 0], [30, 0]], [[1, 10], [1, 20], [1, 30]]])
    }))

  it.effect("a failed request leaves the state as it was, and the sequence goes on", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine()
      yield* settle(engine.infer(step(1, 5, { start: true })))
      const failed = yield* settle(engine.infer(step(1, -1)))
      assert.strictEqual((failureOf(failed) as InferenceError.Reason)._tag, "RunFailed")
      const exit = yield* settle(engine.infer(step(1, 1)))
      assert.strictEqual(Exit.isSuccess(exit) ? yOf(exit.value) : -1, 6)
    }))

  it.effect("an end that fails does not end the sequence", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine()
      yield* settle(engine.infer(step(1, 5, { start: true })))
      yield* settle(engine.infer(step(1, -1, { end: true })))
      const exit = yield* settle(engine.infer(step(1, 1, { end: true })))
      assert.strictEqual(Exit.isSuccess(exit) ? yOf(exit.value) : -1, 6)
      assert.strictEqual((failureOf(yield* settle(engine.infer(step(1, 1)))) as InferenceError.Reason)._tag, "InvalidInput")
    }))

  it.effect("a request waiting behind its sequence: cancelled, it leaves and never runs; past its deadline, DeadlineExceeded on time; the next one still runs after the first", () =>
    Effect.gen(function*() {
      const { engine, runs, log } = yield* counterEngine({ latencyMs: 100 })
      const first = yield* fork(engine.infer(step(1, 1, { start: true })))
      const cancelled = yield* fork(Effect.exit(engine.infer(step(1, 1000))))
      const late = yield* fork(Effect.exit(engine.infer(step(1, 2000, {}, { timeout: "30 millis" }))))
      const third = yield* fork(engine.infer(step(1, 2)))
      yield* Fiber.interrupt(cancelled)
      yield* TestClock.adjust("30 millis")
      const lateExit = yield* Fiber.join(late)
      assert.strictEqual((failureOf(lateExit) as InferenceError.Reason)._tag, "DeadlineExceeded")
      assert.strictEqual(runs.length, 1, "answered at its deadline, while the first still runs")
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yOf(yield* Fiber.join(first)), 1)
      assert.strictEqual(yOf(yield* Fiber.join(third)), 3)
      assert.deepStrictEqual(runs, [[[1, 0]], [[2, 1]]])
      const tags = log.events.map((e) => e._tag)
      assert.strictEqual(tags.filter((t) => t === "cancelled").length, 1)
      assert.strictEqual(tags.filter((t) => t === "timeout").length, 1)
    }))

  it.effect("cancelling a running request frees its sequence: the next one runs at once, with the state before it", () =>
    Effect.gen(function*() {
      const { engine, runs } = yield* counterEngine({ latencyMs: 100 })
      yield* settle(engine.infer(step(1, 1, { start: true })))
      const running = yield* fork(engine.infer(step(1, 5)))
      yield* TestClock.adjust("10 millis")
      const next = yield* fork(engine.infer(step(1, 2)))
      yield* Fiber.interrupt(running)
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yOf(yield* Fiber.join(next)), 3)
      assert.deepStrictEqual(runs.slice(1), [[[5, 1]], [[2, 1]]])
    }))

  it.effect("refuses the third of two sequences while both are under way, with a message naming the bound", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine({ sequence: counterSequence({ maxSequences: 2, maxSequenceIdleMs: 60_000 }) })
      yield* settle(engine.infer(step(1, 1, { start: true })))
      yield* settle(engine.infer(step(2, 1, { start: true })))
      const exit = yield* settle(engine.infer(step(3, 1, { start: true })))
      const reason = failureOf(exit) as InferenceError.Reason
      assert.strictEqual(reason._tag, "QueueFull")
      assert.strictEqual((reason as InferenceError.QueueFull).bound, "sequences")
      assert.include(reason.message, "sequenceBatching.maxSequences")
      yield* settle(engine.infer(step(2, 1, { end: true })))
      assert.isTrue(Exit.isSuccess(yield* settle(engine.infer(step(3, 1, { start: true })))))
    }))

  it.effect("refuses, before queueing: no sequence for a stateful model, a sequence for one without state, a state input sent, a bad id", () =>
    Effect.gen(function*() {
      const { engine, runs } = yield* counterEngine()
      const message = (exit: Exit.Exit<unknown, InferenceError.InferenceError>) => {
        const reason = failureOf(exit)
        assert.strictEqual(typeof reason === "object" ? reason._tag : reason, "InvalidInput")
        return typeof reason === "object" ? reason.message : ""
      }
      const x = { x: Tensor.float32([1], [1, 1]) }
      assert.include(message(yield* Effect.exit(engine.infer(InferenceRequest.make("counter", x)))), "needs a sequence id")
      const sent = InferenceRequest.make("counter", { ...x, h: Tensor.float32([1], [1, 1]) }, { sequence: { id: 1, start: true } })
      assert.include(message(yield* Effect.exit(engine.infer(sent))), `input "h" is the sequence's state`)
      for (const id of [0, -3, 1.5, "", 2 ** 60] as const) {
        assert.include(message(yield* Effect.exit(engine.infer(step(id, 1, { start: true })))), "sequence id", String(id))
      }
      assert.strictEqual(runs.length, 0)
      // batched, a request of two rows disagrees with the state's one
      const batched = yield* counterEngine({ batching: true })
      const twoRows = InferenceRequest.make("counter", { x: Tensor.float32([1, 2], [2, 1]) }, { sequence: { id: 1, start: true } })
      assert.include(message(yield* Effect.exit(batched.engine.infer(twoRows))), "batch")
      assert.strictEqual(batched.runs.length, 0)
    }))

  it.effect("a model without state refuses a request that names a sequence", () =>
    Effect.gen(function*() {
      const { engine, reload } = yield* counterEngine()
      reload({ sequence: undefined })
      const exit = yield* Effect.exit(engine.infer(InferenceRequest.make("counter", { x: Tensor.float32([1], [1, 1]), h: Tensor.float32([0], [1, 1]) }, { sequence: { id: 1 } })))
      const reason = failureOf(exit) as InferenceError.Reason
      assert.strictEqual(reason._tag, "InvalidInput")
      assert.include(reason.message, "keeps no state between requests")
    }))

  it.effect("a reload that keeps the states' shape keeps the sequences going; one that changes it ends them", () =>
    Effect.gen(function*() {
      const { engine, reload } = yield* counterEngine({ sequence: counterSequence({ maxSequenceIdleMs: 60_000 }) })
      yield* settle(engine.infer(step(1, 1, { start: true })))
      reload({ sequence: counterSequence({ maxSequenceIdleMs: 60_000 }) })
      const kept = yield* settle(engine.infer(step(1, 1)))
      assert.strictEqual(Exit.isSuccess(kept) ? yOf(kept.value) : -1, 2)
      reload({ sequence: { ...counterSequence({ maxSequenceIdleMs: 60_000 }), shape: "another" } })
      const reshaped = failureOf(yield* settle(engine.infer(step(1, 1)))) as InferenceError.Reason
      assert.strictEqual(reshaped._tag, "InvalidInput")
      assert.include(reshaped.message, "the model was reloaded with other state tensors")
    }))

  it.effect("drain waits for requests waiting behind their sequence and runs them; past its grace they are answered ShuttingDown", () =>
    Effect.gen(function*() {
      const { engine, runs } = yield* counterEngine({ latencyMs: 100 })
      const atMs: Record<string, number> = {}
      const noted = <A, E>(name: string, effect: Effect.Effect<A, E>) => Effect.tap(effect, () => Effect.map(Clock.currentTimeMillis, (ms) => void (atMs[name] = ms)))
      const first = yield* fork(noted("first", engine.infer(step(1, 1, { start: true }))))
      // its end: the drain waits for sequences under way too
      const second = yield* fork(noted("second", engine.infer(step(1, 2, { end: true }))))
      const drained = yield* fork(noted("drained", engine.drain("1 second")))
      yield* TestClock.adjust("250 millis")
      assert.deepStrictEqual(yield* Fiber.join(drained), { drained: true })
      assert.strictEqual(yOf(yield* Fiber.join(first)), 1)
      assert.strictEqual(yOf(yield* Fiber.join(second)), 3)
      // the drain ended once the waiting one had run too (100 to 200 ms), not when the first was answered
      assert.deepStrictEqual(atMs, { first: 100, second: 200, drained: 200 })
      assert.strictEqual(runs.length, 2)
    }))

  for (const path of ["metadataUnsafe", "Effect metadata"] as const) {
    it.effect(`drain (${path}): a sequence under way goes on, a start or a request without a sequence is refused ShuttingDown, and the drain ends when the sequence ends`, () =>
      Effect.gen(function*() {
        const { engine } = yield* counterEngine({ effectMetadataOnly: path === "Effect metadata" })
        yield* settle(engine.infer(step(1, 1, { start: true })))
        yield* settle(engine.infer(step(2, 10, { start: true })))
        const atMs: Record<string, number> = {}
        const drained = yield* fork(Effect.tap(engine.drain("10 seconds"), () => Effect.map(Clock.currentTimeMillis, (ms) => void (atMs["drained"] = ms))))
        const shutting = (exit: Exit.Exit<unknown, InferenceError.InferenceError>) => (failureOf(exit) as InferenceError.Reason | undefined)?._tag
        assert.strictEqual(yOf(succeeded(yield* settle(engine.infer(step(1, 2))))), 3)
        assert.strictEqual(shutting(yield* settle(engine.infer(step(3, 1, { start: true })))), "ShuttingDown")
        // a start of a sequence under way starts it over: new work too
        assert.strictEqual(shutting(yield* settle(engine.infer(step(1, 1, { start: true })))), "ShuttingDown")
        assert.strictEqual(shutting(yield* settle(engine.infer(InferenceRequest.make("counter", { x: Tensor.float32([1], [1, 1]) })))), "ShuttingDown")
        assert.isUndefined(drained.pollUnsafe())
        assert.strictEqual(yOf(succeeded(yield* settle(engine.infer(step(2, 5, { end: true }))))), 15)
        assert.isUndefined(drained.pollUnsafe(), "sequence 1 is still under way")
        // the state survived the refused start: 1 + 2 + 4
        const end = yield* fork(Effect.tap(engine.infer(step(1, 4, { end: true })), () => Effect.map(Clock.currentTimeMillis, (ms) => void (atMs["ended"] = ms))))
        yield* TestClock.adjust("10 millis")
        assert.strictEqual(yOf(yield* Fiber.join(end)), 7)
        assert.deepStrictEqual(yield* Fiber.join(drained), { drained: true })
        assert.strictEqual(atMs["drained"], atMs["ended"], "the drain ended with the last sequence's end, not at a later sweep")
        // ended: nothing continues it
        assert.strictEqual(shutting(yield* settle(engine.infer(step(1, 1)))), "ShuttingDown")
      }))
  }

  it.effect("drain: a sequence under way that nobody continues ends the drain when it goes idle past maxSequenceIdleMs (within 100 ms)", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine({ sequence: counterSequence({ maxSequenceIdleMs: 700 }) })
      yield* settle(engine.infer(step(1, 1, { start: true })))
      const lastMs = (yield* Clock.currentTimeMillis) - 190 // answered 10 ms in, `settle` moved on 200
      const drained = yield* fork(Effect.andThen(engine.drain("10 seconds"), (d) => Effect.map(Clock.currentTimeMillis, (ms) => ({ ...d, ms }))))
      yield* TestClock.adjust("450 millis")
      assert.isUndefined(drained.pollUnsafe(), "the sequence is not idle yet")
      yield* TestClock.adjust("200 millis")
      const { drained: done, ms } = yield* Fiber.join(drained)
      assert.isTrue(done)
      assert.isAtLeast(ms - lastMs, 700)
      assert.isAtMost(ms - lastMs, 800)
      assert.deepStrictEqual(yield* engine.sequences, new Map())
    }))

  it.effect("drain past its grace: sequences under way are refused from then on, and takesSequenceUnsafe says so", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine({ sequence: counterSequence({ maxSequenceIdleMs: 60_000 }) })
      yield* settle(engine.infer(step(1, 1, { start: true })))
      assert.isTrue(engine.takesSequenceUnsafe("counter", "1", { id: 1 }))
      assert.isFalse(engine.takesSequenceUnsafe("counter", "1", undefined), "a request without a sequence")
      assert.isFalse(engine.takesSequenceUnsafe("counter", "1", { id: 1, start: true }))
      assert.isFalse(engine.takesSequenceUnsafe("counter", "1", { id: 2 }))
      assert.isTrue(engine.sequencesUnderWayUnsafe("counter", "1"))
      assert.isFalse(engine.sequencesUnderWayUnsafe("counter", "2"))
      const drained = yield* fork(engine.drain("1 second"))
      // the edges' early check: only a model version with sequences under way is let through
      assert.isTrue(Exit.isSuccess(yield* Effect.exit(engine.checkAdmission("counter", "1"))))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* Fiber.join(drained), { drained: false })
      assert.isFalse(engine.takesSequenceUnsafe("counter", "1", { id: 1 }))
      assert.isFalse(engine.sequencesUnderWayUnsafe("counter", "1"))
      const refused = yield* settle(engine.infer(step(1, 2)))
      assert.strictEqual((failureOf(refused) as InferenceError.Reason)._tag, "ShuttingDown")
      const early = yield* Effect.exit(engine.checkAdmission("counter", "1"))
      assert.strictEqual((failureOf(early) as InferenceError.Reason)._tag, "ShuttingDown")
    }))

  it.effect("inferBatch during a drain: requests of sequences under way go on, the first that is new work is refused ShuttingDown and ends the batch", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine()
      yield* settle(engine.infer(step(1, 1, { start: true })))
      yield* settle(engine.infer(step(2, 10, { start: true })))
      const drained = yield* fork(engine.drain("10 seconds"))
      const batch = [step(1, 1, { end: true }), step(2, 1, { end: true }), step(3, 1, { start: true }), step(1, 5, { start: true })]
      const results = yield* fork(Stream.runCollect(engine.inferBatch(batch)))
      yield* TestClock.adjust("100 millis")
      const byId = new Map(Array.from(yield* Fiber.join(results), (r) => [r.requestId, r]))
      const outcome = (r: InferenceResult.InferenceResult | undefined) =>
        r === undefined ? "not taken" : r._tag === "Success" ? yOf(r) : r._tag === "Failed" ? r.error.reason._tag : r._tag
      assert.deepStrictEqual(batch.map((r) => outcome(byId.get(r.requestId))), [2, 11, "ShuttingDown", "not taken"])
      assert.deepStrictEqual(yield* Fiber.join(drained), { drained: true })
    }))

  it.effect("two drains: when the shorter one's grace cuts a sequence, the longer one does not report everything drained", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine({ sequence: counterSequence({ maxSequenceIdleMs: 60_000 }) })
      yield* settle(engine.infer(step(1, 1, { start: true })))
      const long = yield* fork(engine.drain("30 seconds"))
      const short = yield* fork(engine.drain("1 second"))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* Fiber.join(short), { drained: false })
      yield* TestClock.adjust("200 millis")
      assert.deepStrictEqual(yield* Fiber.join(long), { drained: false })
    }))

  it.effect("drain past its grace answers the waiting turns ShuttingDown", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine({ latencyMs: 5_000 })
      const first = yield* fork(Effect.exit(engine.infer(step(1, 1, { start: true }))))
      const second = yield* fork(Effect.exit(engine.infer(step(1, 2))))
      const drained = yield* fork(engine.drain("1 second"))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* Fiber.join(drained), { drained: false })
      assert.strictEqual((failureOf(yield* Fiber.join(second)) as InferenceError.Reason)._tag, "ShuttingDown")
      yield* TestClock.adjust("10 seconds")
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(first)))
    }))

  it.effect("transferInputs: the sequence's state is copied, never moved, so a failure keeps it", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine()
      yield* settle(engine.infer(step(1, 5, { start: true }, { transferInputs: true })))
      yield* settle(engine.infer(step(1, -1, {}, { transferInputs: true })))
      const exit = yield* settle(engine.infer(step(1, 1, {}, { transferInputs: true })))
      assert.strictEqual(Exit.isSuccess(exit) ? yOf(exit.value) : -1, 6)
    }))

  it.effect("inferUnsafe: a waiting turn's cancel takes it out; cancelled once running, the next runs", () =>
    Effect.gen(function*() {
      const { engine, runs } = yield* counterEngine({ latencyMs: 100 })
      const answers: Array<string> = []
      const onExit = (name: string) => (exit: Exit.Exit<InferenceResult.Success, InferenceError.InferenceError>) =>
        answers.push(`${name}:${Exit.isSuccess(exit) ? yOf(exit.value) : (failureOf(exit) as InferenceError.Reason)._tag}`)
      engine.inferUnsafe(step(1, 1, { start: true }), onExit("a"))
      const cancelB = engine.inferUnsafe(step(1, 10), onExit("b"))
      const cancelC = engine.inferUnsafe(step(1, 100), onExit("c"))
      engine.inferUnsafe(step(1, 1000), onExit("d"))
      cancelB()
      yield* TestClock.adjust("150 millis")
      // c runs now (100 to 200 ms): cancelled while it runs, d starts at once with a's state
      cancelC()
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(answers, ["a:1", "d:1001"])
      assert.deepStrictEqual(runs.map((r) => r[0]![0]), [1, 100, 1000])
    }))

  it.effect("sequences: those under way by model and version, without the ended or idle ones", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine()
      assert.deepStrictEqual(yield* engine.sequences, new Map())
      yield* settle(engine.infer(step(1, 1, { start: true })))
      yield* settle(engine.infer(step(2, 1, { start: true })))
      assert.deepStrictEqual(yield* engine.sequences, new Map([["counter", new Map([["1", 2]])]]))
      yield* settle(engine.infer(step(2, 1, { end: true })))
      assert.deepStrictEqual(yield* engine.sequences, new Map([["counter", new Map([["1", 1]])]]))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* engine.sequences, new Map())
    }))

  it.effect("drain past its grace refuses a turn waiting behind a queued request too, not only the queued one", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine({ latencyMs: 5_000, config: { maxConcurrentRequests: 1 } })
      const busy = yield* fork(Effect.exit(engine.infer(step(2, 7, { start: true }, { timeout: "60 seconds" }))))
      const queued = yield* fork(Effect.exit(engine.infer(step(1, 1, { start: true }, { timeout: "60 seconds" }))))
      const behind = yield* fork(Effect.exit(engine.infer(step(1, 2, {}, { timeout: "60 seconds" }))))
      const drained = yield* fork(engine.drain("1 second"))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* Fiber.join(drained), { drained: false })
      assert.strictEqual((failureOf(yield* Fiber.join(queued)) as InferenceError.Reason)._tag, "ShuttingDown")
      assert.strictEqual(outcomeOf(behind), "ShuttingDown", "answered at the grace")
      yield* TestClock.adjust("10 seconds")
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(busy)))
    }))

  it.effect("turns waiting behind their sequence count against the queue's bound and the model's own, both ways", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine({ latencyMs: 5_000, config: { maxConcurrentRequests: 1, maxQueuedRequests: 2 } })
      const fibers = [yield* fork(Effect.exit(engine.infer(step(1, 1, { start: true }))))]
      yield* TestClock.adjust("1 millis")
      for (const request of [step(1, 2), step(1, 3), step(2, 1, { start: true }), step(3, 1, { start: true }), step(1, 4)]) {
        fibers.push(yield* fork(Effect.exit(engine.infer(request))))
      }
      yield* Effect.yieldNow
      const outcomes = fibers.map(outcomeOf)
      // one running, two waiting behind it: the bound of 2 is reached, so a start queued and another turn are refused
      assert.deepStrictEqual(outcomes, ["pending", "pending", "pending", "QueueFull", "QueueFull", "QueueFull"])
      assert.deepStrictEqual((yield* engine.queueStats).total, 2)
      assert.isFalse(engine.admitsUnsafe())
      assert.isDefined(engine.queueFullUnsafe("counter", undefined))
    }))

  it.effect("the model's own maxQueuedRequests bounds the turns waiting behind their sequences", () =>
    Effect.gen(function*() {
      const { engine, pool, reload } = yield* counterEngine({ latencyMs: 5_000 })
      reload({ maxQueuedRequests: 1, concurrency: 1 })
      const fibers = [yield* fork(Effect.exit(engine.infer(step(1, 1, { start: true }))))]
      for (const x of [2, 3]) fibers.push(yield* fork(Effect.exit(engine.infer(step(1, x)))))
      yield* Effect.yieldNow
      assert.deepStrictEqual(fibers.map(outcomeOf), ["pending", "pending", "QueueFull"])
      assert.strictEqual((failureOf(polled(fibers[2]!)!) as InferenceError.QueueFull).bound, "model")
      // the edges' early checks name the same bound
      const metadata = yield* Effect.orDie(pool.metadata("counter"))
      assert.strictEqual(engine.queueFullUnsafe("counter", metadata)?.bound, "model")
      const early = yield* Effect.flip(engine.checkAdmission("counter", "1", metadata))
      assert.strictEqual((early.reason as InferenceError.QueueFull).bound, "model")
    }))

  it.effect("a turn waiting behind its sequence past the queue timeout is answered QueueTimeout then, not when its turn comes", () =>
    Effect.gen(function*() {
      const { engine, log } = yield* counterEngine({ latencyMs: 1_000, config: { queueTimeout: Duration.millis(50) } })
      const first = yield* fork(engine.infer(step(1, 1, { start: true }, { timeout: "60 seconds" })))
      const behind = yield* fork(Effect.exit(engine.infer(step(1, 2, {}, { timeout: "60 seconds" }))))
      yield* TestClock.adjust("50 millis")
      assert.strictEqual(outcomeOf(behind), "QueueTimeout", "answered at the queue timeout")
      assert.strictEqual(log.events.filter((e) => e._tag === "timeout").length, 1)
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yOf(yield* Fiber.join(first)), 1)
    }))

  it.effect("turns waiting behind their sequence are counted where requests not started are: notStarted (an unload's wait), pending, the queue's stats", () =>
    Effect.gen(function*() {
      const { engine } = yield* counterEngine({ latencyMs: 5_000 })
      yield* fork(engine.infer(step(1, 1, { start: true })))
      for (const [x, priority] of [[2, "High"], [3, "Low"], [4, "Low"]] as const) yield* fork(engine.infer(step(1, x, {}, { priority })))
      yield* Effect.yieldNow
      assert.strictEqual(yield* engine.notStarted("counter"), 3)
      assert.strictEqual(yield* engine.pending, 4)
      assert.deepStrictEqual(yield* engine.queueStats, { critical: 0, high: 1, normal: 0, low: 2, total: 3 })
      assert.deepStrictEqual((yield* engine.queueStatsByModel).get("counter")?.total, 3)
      assert.deepStrictEqual(yield* engine.waitingByVersion, new Map([["counter", new Map([["1", 3]])]]))
    }))

  it.effect("a reload that shortens maxSequenceIdleMs: sequences that go idle under the new limit are dropped, behind one started under the old", () =>
    Effect.gen(function*() {
      const { engine, reload } = yield* counterEngine({ sequence: counterSequence({ maxSequenceIdleMs: 60_000, maxSequences: 3 }) })
      yield* settle(engine.infer(step(1, 1, { start: true })))
      reload({ sequence: counterSequence({ maxSequenceIdleMs: 100, maxSequences: 3 }) })
      yield* settle(engine.infer(step(2, 1, { start: true })))
      yield* settle(engine.infer(step(3, 1, { start: true })))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* engine.sequences, new Map([["counter", new Map([["1", 1]])]]))
      assert.isTrue(Exit.isSuccess(yield* settle(engine.infer(step(4, 1, { start: true })))))
      // and the first, used again, goes idle under the new limit too
      yield* settle(engine.infer(step(1, 1)))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* engine.sequences, new Map())
    }))

  it.effect("control inputs: the engine sets START on a sequence's first request, END on its last, READY always, CORRID to its id; requests of several sequences batched, each row its own", () =>
    Effect.gen(function*() {
      const { engine, controlRuns, runs } = yield* counterEngine({ batching: true, sequence: counterSequence({ controls, maxSequenceIdleMs: 60_000 }) })
      const round = (requests: ReadonlyArray<ReturnType<typeof step>>) =>
        Effect.gen(function*() {
          const fibers = []
          for (const request of requests) fibers.push(yield* fork(engine.infer(request)))
          yield* TestClock.adjust("100 millis")
          const ys = []
          for (const f of fibers) ys.push(yOf(yield* Fiber.join(f)))
          return ys
        })
      assert.deepStrictEqual(yield* round([step(7, 1, { start: true }), step(9, 10, { start: true })]), [1, 10])
      assert.deepStrictEqual(yield* round([step(7, 2), step(9, 20, { end: true })]), [3, 30])
      assert.deepStrictEqual(yield* round([step(7, 3, { end: true })]), [6])
      assert.deepStrictEqual(runs.map((r) => r.length), [2, 2, 1])
      assert.deepStrictEqual(controlRuns, [
        [[1, 0, 1, 7n], [1, 0, 1, 9n]],
        [[0, 0, 1, 7n], [0, 1, 1, 9n]],
        [[0, 1, 1, 7n]]
      ])
    }))

  it.effect("control inputs: a client may not send them, and a text id does not fit a numeric CORRID", () =>
    Effect.gen(function*() {
      const { engine, runs } = yield* counterEngine({ sequence: counterSequence({ controls }) })
      const message = (exit: Exit.Exit<unknown, InferenceError.InferenceError>) => (failureOf(exit) as InferenceError.Reason).message
      const sent = InferenceRequest.make("counter", { x: Tensor.float32([1], [1, 1]), START: Tensor.make("int32", Int32Array.of(1), [1, 1]) }, { sequence: { id: 1, start: true } })
      assert.include(message(yield* Effect.exit(engine.infer(sent))), `input "START" is the sequence's start control, which the server sets`)
      assert.include(message(yield* Effect.exit(engine.infer(step("a", 1, { start: true })))), `sequence_id must be an integer below 2^53, not text`)
      assert.strictEqual(runs.length, 0)
    }))
})
