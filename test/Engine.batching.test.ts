/**
 * Dynamic batching in the engine, under TestClock. A DispatchGate latch holds dispatch until
 * the queue holds exactly the requests a test wants batched, so batch composition is exact.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Exit, Fiber, Latch, Layer, Scope } from "effect"
import { TestClock } from "effect/testing"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import { AsyncInferenceEngine, DispatchGate } from "../src/Engine.ts"
import * as ModelControl from "../src/http/ModelControl.ts"
import * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import type * as InferenceResult from "../src/InferenceResult.ts"
import * as ModelMetadata from "../src/ModelMetadata.ts"
import { ModelPool } from "../src/ModelPool.ts"
import type * as Priority from "../src/Priority.ts"
import { layerRecording, TelemetryLog } from "../src/Telemetry.ts"
import * as Tensor from "../src/Tensor.ts"
import { engineOver, makeHarness } from "./fixtures/EngineHarness.ts"
import { echoInputs, echoMetadata, type Script } from "./fixtures/FakeModelPool.ts"

const batching = (overrides: Partial<BatchPolicy.BatchingConfig> = {}): BatchPolicy.BatchingConfig => ({
  ...BatchPolicy.disabled,
  enabled: true,
  maxBatchSize: 8,
  ...overrides
})

const fork = <A, E>(effect: Effect.Effect<A, E>) => Effect.forkChild(effect, { startImmediately: true })

const request = (id: string, value: number, options: InferenceRequest.Options = {}) =>
  InferenceRequest.make("echo", echoInputs(value), { requestId: id, ...options })

const firstValue = (result: InferenceResult.Success) => (result.outputs["y"]!.data as Float32Array)[0]

/** A harness whose dispatcher waits at a closed gate until the test opens it. */
const gated = (options: { script?: (id: string, rowValues: ReadonlyArray<number>) => Script; config?: NonNullable<Parameters<typeof makeHarness>[0]>["config"]; batching: BatchPolicy.BatchingConfig }) =>
  Effect.gen(function*() {
    const gate = yield* Latch.make(false)
    const harness = yield* makeHarness(options).pipe(Effect.provideService(DispatchGate, gate.await))
    return { ...harness, gate }
  })

/**
 * A harness whose model is busy: a 100 ms run ("long") starts at 0 ms, every other run takes
 * 2 ms, and the test resumes at 1 ms. With a run in flight, a forming batch may wait out its delay.
 */
const busyModel = (maxQueueDelayMs: number) =>
  Effect.gen(function*() {
    const harness = yield* makeHarness({
      script: (id) => ({ latency: id === "long" ? "100 millis" : "2 millis" }),
      batching: batching({ maxQueueDelay: Duration.millis(maxQueueDelayMs) }),
      config: { maxConcurrentRequests: 2 }
    })
    yield* fork(Effect.exit(harness.engine.infer(request("long", 0))))
    yield* TestClock.adjust("1 millis")
    return harness
  })

describe("AsyncInferenceEngine dynamic batching", () => {
  it.effect("an inferUnsafe onExit that throws touches nothing else: its batch's other members get their rows, and deadlines still fire on time", () =>
    Effect.gen(function*() {
      const { engine, stats, gate } = yield* gated({ batching: batching(), config: { maxConcurrentRequests: 1 } })
      const throwing = () => {
        throw new Error("a caller's bug")
      }
      engine.inferUnsafe(request("throws", 1), throwing)
      const others = []
      for (let i = 2; i <= 4; i++) others.push(yield* fork(Effect.exit(engine.infer(request(`m${i}`, i)))))
      yield* gate.open
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual(stats.batchSizes, [4])
      for (let i = 0; i < 3; i++) {
        const exit = yield* Fiber.join(others[i]!)
        assert.isTrue(Exit.isSuccess(exit), `m${i + 2}: ${String(exit)}`)
        if (Exit.isSuccess(exit)) assert.strictEqual(firstValue(exit.value), (i + 2) * 2)
      }
      // The timer answers a request past its deadline by calling its onExit: after a throw there, it still runs.
      const { engine: busyEngine } = yield* makeHarness({ script: (id) => ({ latency: id === "long" ? "100 millis" : "2 millis" }), config: { maxConcurrentRequests: 1 } })
      yield* fork(Effect.exit(busyEngine.infer(request("long", 0))))
      busyEngine.inferUnsafe(request("throws-late", 1, { timeout: "20 millis" }), throwing)
      const victim = yield* fork(Effect.exit(busyEngine.infer(request("victim", 1, { timeout: "60 millis" }))))
      yield* TestClock.adjust("59 millis")
      assert.isUndefined(victim.pollUnsafe())
      yield* TestClock.adjust("1 millis")
      const exit = yield* Fiber.join(victim)
      const failure = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
      assert.strictEqual(failure?._tag === "Fail" ? (failure.error as InferenceError.InferenceError).reason._tag : undefined, "DeadlineExceeded", String(exit))
    }))

  it.effect("runs queued requests of one model as one batch, and every caller gets exactly its own rows", () =>
    Effect.gen(function*() {
      const { engine, stats, gate, log } = yield* gated({ batching: batching(), config: { maxConcurrentRequests: 1 } })
      const fibers = []
      for (let i = 0; i < 5; i++) fibers.push(yield* fork(engine.infer(request(`r${i}`, i + 1, {}))))
      // Time passes and the pump's microtasks run: the closed gate holds dispatch all the while.
      yield* TestClock.adjust("5 millis")
      assert.strictEqual(stats.started, 0, "nothing dispatched before the gate opened")
      assert.strictEqual((yield* engine.queueStats).total, 5)
      yield* gate.open
      yield* TestClock.adjust("10 millis")
      for (let i = 0; i < 5; i++) {
        const result = yield* Fiber.join(fibers[i]!)
        assert.strictEqual(result.requestId, `r${i}`)
        assert.strictEqual(firstValue(result), (i + 1) * 2)
        assert.deepStrictEqual(result.outputs["y"]!.dims, [1, 4])
      }
      assert.deepStrictEqual(stats.batchSizes, [5])
      assert.strictEqual(stats.started, 1, "one native run for the batch")
      assert.deepStrictEqual(log.events.filter((e) => e._tag === "run").map((e) => e._tag === "run" ? e.batchSize : 0), [5])
    }))

  it.effect("splits what exceeds maxBatchSize into further runs, one permit each", () =>
    Effect.gen(function*() {
      const { engine, stats, gate } = yield* gated({ batching: batching({ maxBatchSize: 4 }), config: { maxConcurrentRequests: 1 } })
      const fibers = []
      for (let i = 0; i < 6; i++) fibers.push(yield* fork(engine.infer(request(`r${i}`, i))))
      yield* gate.open
      yield* TestClock.adjust("20 millis")
      for (const f of fibers) yield* Fiber.join(f)
      assert.deepStrictEqual(stats.batchSizes, [4, 2])
      assert.strictEqual(stats.maxActive, 1)
    }))

  it.effect("counts rows, not requests, and a request larger than a batch runs alone", () =>
    Effect.gen(function*() {
      const { engine, stats, gate } = yield* gated({ batching: batching({ maxBatchSize: 4 }), config: { maxConcurrentRequests: 1 } })
      const big = yield* fork(engine.infer(InferenceRequest.make("echo", echoInputs(1, 5), { requestId: "big" })))
      const pair = yield* fork(engine.infer(InferenceRequest.make("echo", echoInputs(2, 3), { requestId: "three" })))
      const one = yield* fork(engine.infer(request("one", 3)))
      yield* gate.open
      yield* TestClock.adjust("30 millis")
      assert.deepStrictEqual((yield* Fiber.join(big)).outputs["y"]!.dims, [5, 4])
      assert.deepStrictEqual((yield* Fiber.join(pair)).outputs["y"]!.dims, [3, 4])
      assert.deepStrictEqual((yield* Fiber.join(one)).outputs["y"]!.dims, [1, 4])
      assert.deepStrictEqual(stats.batchSizes, [5, 4])
      // The big one ran alone, without a batch key (the scheduler counts it as one row): its 5
      // output rows do not make the model look like one whose outputs are not rows of its inputs.
      const later = [yield* fork(engine.infer(request("l1", 1))), yield* fork(engine.infer(request("l2", 1))), yield* fork(engine.infer(request("l3", 1)))]
      yield* TestClock.adjust("30 millis")
      for (const f of later) yield* Fiber.join(f)
      assert.deepStrictEqual(stats.batchSizes.slice(2), [3], "still batched")
    }))

  it.effect("fills a batch from the highest level first", () =>
    Effect.gen(function*() {
      const { engine, stats, gate } = yield* gated({ batching: batching({ maxBatchSize: 2 }), config: { maxConcurrentRequests: 1 } })
      const levels: ReadonlyArray<readonly [string, Priority.Priority]> = [["low-a", "Low"], ["low-b", "Low"], ["normal", "Normal"], ["high", "High"]]
      const fibers = []
      for (const [id, priority] of levels) fibers.push(yield* fork(engine.infer(request(id, 1, { priority }))))
      yield* gate.open
      yield* TestClock.adjust("30 millis")
      for (const f of fibers) yield* Fiber.join(f)
      assert.deepStrictEqual(stats.order, ["high", "low-a"], "each run is named by its first member")
      assert.deepStrictEqual(stats.batchSizes, [2, 2])
    }))

  it.effect("a batch that holds a Critical request takes no lower-priority rows", () =>
    Effect.gen(function*() {
      const { engine, stats, gate } = yield* gated({ batching: batching({ maxBatchSize: 8 }), config: { maxConcurrentRequests: 1 } })
      const levels: ReadonlyArray<readonly [string, Priority.Priority]> = [["low-a", "Low"], ["critical-a", "Critical"], ["normal", "Normal"], ["critical-b", "Critical"], ["low-b", "Low"]]
      const fibers = []
      for (const [id, priority] of levels) fibers.push(yield* fork(engine.infer(request(id, 1, { priority }))))
      yield* gate.open
      yield* TestClock.adjust("30 millis")
      for (const f of fibers) yield* Fiber.join(f)
      assert.deepStrictEqual(stats.order, ["critical-a", "normal"], "the Critical ones ran first, alone together")
      assert.deepStrictEqual(stats.batchSizes, [2, 3])
    }))

  it.effect("a Critical request joins a forming batch of lower rows, which is then sent at once", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* busyModel(10)
      const low = yield* fork(engine.infer(request("low", 1, { priority: "Low" })))
      yield* TestClock.adjust("2 millis")
      assert.deepStrictEqual(stats.batchSizes, [1], "the Low request is forming, waiting for rows")
      const critical = yield* fork(engine.infer(request("critical", 2, { priority: "Critical" })))
      yield* TestClock.adjust("0 millis")
      assert.deepStrictEqual(stats.batchSizes, [1, 2], "sent as soon as the Critical request joined")
      yield* TestClock.adjust("2 millis")
      yield* Fiber.join(low)
      yield* Fiber.join(critical)
    }))

  it.effect("waits up to maxQueueDelay for more rows while the model is busy, then sends", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* busyModel(10)
      const a = yield* fork(engine.infer(request("a", 1)))
      yield* TestClock.adjust("4 millis")
      const b = yield* fork(engine.infer(request("b", 2)))
      yield* TestClock.adjust("5 millis")
      assert.deepStrictEqual(stats.batchSizes, [1], "still forming at 10 ms")
      yield* TestClock.adjust("1 millis")
      assert.deepStrictEqual(stats.batchSizes, [1, 2], "sent at 11 ms: the delay counts from the oldest member")
      assert.deepStrictEqual(stats.startTimesMs, [0, 11])
      yield* TestClock.adjust("2 millis")
      assert.strictEqual(firstValue(yield* Fiber.join(a)), 2)
      assert.strictEqual(firstValue(yield* Fiber.join(b)), 4)
    }))

  it.effect("a lone request on an idle model does not wait for a batch", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({ batching: batching({ maxQueueDelay: Duration.millis(50) }) })
      const fiber = yield* fork(engine.inferResult(request("lone", 1)))
      yield* TestClock.adjust("10 millis")
      const result = yield* Fiber.join(fiber)
      assert.strictEqual(result._tag, "Success")
      assert.deepStrictEqual(stats.startTimesMs, [0])
    }))

  it.effect("never holds a request for batching past its deadline: the batch goes early", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({
        script: (id) => ({ latency: id === "long" ? "100 millis" : "2 millis" }),
        batching: batching({ maxQueueDelay: Duration.millis(50) }),
        config: { maxConcurrentRequests: 2 }
      })
      // Teach the engine this model's run time (2 ms).
      const warm = yield* fork(engine.infer(request("warm", 0)))
      yield* TestClock.adjust("2 millis")
      yield* Fiber.join(warm)
      yield* fork(engine.infer(request("long", 0)))
      yield* Effect.yieldNow
      const tight = yield* fork(Effect.exit(engine.infer(request("tight", 1, { timeout: "20 millis" }))))
      yield* TestClock.adjust("30 millis")
      const exit = yield* Fiber.join(tight)
      assert.isTrue(Exit.isSuccess(exit), "answered before its deadline")
      assert.deepStrictEqual(stats.startTimesMs, [0, 2, 18], "sent at 2 + 20 - 2 × 2 ms, not after the 50 ms delay")
    }))

  it.effect("a Critical request never waits behind a forming batch", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* busyModel(40)
      const low = yield* fork(engine.infer(request("low", 1, { priority: "Low" })))
      yield* TestClock.adjust("4 millis")
      const critical = yield* fork(engine.infer(request("critical", 2, { priority: "Critical" })))
      yield* TestClock.adjust("2 millis")
      assert.deepStrictEqual(stats.startTimesMs, [0, 5], "sent the moment the Critical request joined")
      assert.deepStrictEqual(stats.batchSizes, [1, 2])
      assert.strictEqual(firstValue(yield* Fiber.join(critical)), 4)
      assert.strictEqual(firstValue(yield* Fiber.join(low)), 2)
    }))

  it.effect("a request cancelled while its batch forms leaves the batch before dispatch", () =>
    Effect.gen(function*() {
      const { engine, stats, outcomes } = yield* busyModel(10)
      const a = yield* fork(engine.infer(request("a", 1)))
      const b = yield* fork(engine.infer(request("b", 2)))
      const c = yield* fork(engine.infer(request("c", 3)))
      yield* TestClock.adjust("1 millis")
      yield* Fiber.interrupt(b)
      yield* TestClock.adjust("12 millis")
      assert.deepStrictEqual(stats.batchSizes, [1, 2], "b's row never ran")
      assert.strictEqual(firstValue(yield* Fiber.join(a)), 2)
      assert.strictEqual(firstValue(yield* Fiber.join(c)), 6)
      assert.strictEqual(outcomes().cancelled, 1)
    }))

  it.effect("a request cancelled after dispatch has its rows dropped; the others get theirs", () =>
    Effect.gen(function*() {
      const { engine, stats, gate } = yield* gated({ script: () => ({ latency: "10 millis" }), batching: batching() })
      const a = yield* fork(engine.infer(request("a", 1)))
      const b = yield* fork(engine.infer(request("b", 2)))
      const c = yield* fork(engine.infer(request("c", 3)))
      yield* gate.open
      yield* TestClock.adjust("5 millis")
      assert.deepStrictEqual(stats.batchSizes, [3])
      yield* Fiber.interrupt(b)
      yield* TestClock.adjust("5 millis")
      assert.strictEqual(firstValue(yield* Fiber.join(a)), 2)
      assert.strictEqual(firstValue(yield* Fiber.join(c)), 6)
      assert.strictEqual(yield* engine.pending, 0)
    }))

  it.effect("a batch whose run fails runs each member again alone: only a member that fails alone fails", () =>
    Effect.gen(function*() {
      // b's input poisons any run it is part of (like a token id past the vocabulary).
      const { engine, gate, stats, log } = yield* gated({
        script: (_id, rowValues) => rowValues.includes(2) ? { latency: "1 millis", failWith: "bad kernel" } : { latency: "1 millis" },
        batching: batching()
      })
      const a = yield* fork(Effect.exit(engine.infer(request("a", 1))))
      const b = yield* fork(Effect.exit(engine.infer(request("b", 2))))
      const c = yield* fork(Effect.exit(engine.infer(request("c", 3))))
      yield* gate.open
      yield* TestClock.adjust("4 millis")
      const [ea, eb, ec] = [yield* Fiber.join(a), yield* Fiber.join(b), yield* Fiber.join(c)]
      assert.isTrue(Exit.isSuccess(ea) && firstValue(ea.value) === 2, "a got its result")
      assert.isTrue(Exit.isSuccess(ec) && firstValue(ec.value) === 6, "c got its result")
      assert.isTrue(Exit.isFailure(eb) && eb.cause.reasons.some((r) => r._tag === "Fail" && r.error.reason._tag === "RunFailed"), "b failed")
      assert.deepStrictEqual(stats.batchSizes, [3, 1, 1, 1], "one batch, then each member alone, one after the other")
      // Only the runs that completed count (Triton's execution and inference counts): a and c alone.
      const runs = log.events.flatMap((e) => e._tag === "run" ? [[e.batchSize, e.rows]] : [])
      assert.deepStrictEqual(runs, [[1, 1], [1, 1]], "the failed batch and b's failed rerun are not runs")
      assert.strictEqual(stats.maxActive, 1, "the reruns hold the batch's permit")
      assert.strictEqual(yield* engine.pending, 0)
    }))

  it.effect("a batch whose run ends with a defect runs each member again alone, like a failed run", () =>
    Effect.gen(function*() {
      const { engine, gate, stats } = yield* gated({
        script: (_id, rowValues) => rowValues.length > 1 ? { latency: "1 millis", dieWith: "worker crashed" } : { latency: "1 millis" },
        batching: batching()
      })
      const fibers = [yield* fork(Effect.exit(engine.infer(request("a", 1)))), yield* fork(Effect.exit(engine.infer(request("b", 2))))]
      yield* gate.open
      yield* TestClock.adjust("3 millis")
      for (const f of fibers) assert.isTrue(Exit.isSuccess(yield* Fiber.join(f)))
      assert.deepStrictEqual(stats.batchSizes, [2, 1, 1])
    }))

  it.effect("a batch whose members each fail alone fails each of them with RunFailed", () =>
    Effect.gen(function*() {
      const { engine, gate, stats } = yield* gated({ script: () => ({ latency: "1 millis", failWith: "bad kernel" }), batching: batching() })
      const fibers = [yield* fork(Effect.exit(engine.infer(request("a", 1)))), yield* fork(Effect.exit(engine.infer(request("b", 2))))]
      yield* gate.open
      yield* TestClock.adjust("3 millis")
      for (const f of fibers) {
        const exit = yield* Fiber.join(f)
        assert.isTrue(Exit.isFailure(exit) && exit.cause.reasons.some((r) => r._tag === "Fail" && r.error.reason._tag === "RunFailed"))
      }
      assert.deepStrictEqual(stats.batchSizes, [2, 1, 1])
    }))

  it.effect("a member whose deadline passes while its batch's reruns go on is answered on time and never runs alone", () =>
    Effect.gen(function*() {
      const { engine, gate, stats } = yield* gated({
        script: (_id, rowValues) => rowValues.length > 1 ? { latency: "1 millis", failWith: "bad kernel" } : { latency: "10 millis" },
        batching: batching()
      })
      const a = yield* fork(Effect.exit(engine.infer(request("a", 1))))
      const b = yield* fork(Effect.exit(engine.infer(InferenceRequest.withTimeout(request("b", 2), "5 millis"))))
      yield* gate.open
      yield* TestClock.adjust("5 millis")
      const eb = yield* Fiber.join(b)
      assert.isTrue(Exit.isFailure(eb) && eb.cause.reasons.some((r) => r._tag === "Fail" && r.error.reason._tag === "DeadlineExceeded"))
      yield* TestClock.adjust("10 millis")
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(a)))
      assert.deepStrictEqual(stats.batchSizes, [2, 1], "b's deadline passed while a ran alone: b never ran again")
    }))

  it.effect("the concurrency bound counts native runs: a batch is one run", () =>
    Effect.gen(function*() {
      const { engine, stats, gate } = yield* gated({ script: () => ({ latency: "5 millis" }), batching: batching({ maxBatchSize: 3 }), config: { maxConcurrentRequests: 2 } })
      const fibers = []
      for (let i = 0; i < 12; i++) fibers.push(yield* fork(engine.infer(request(`r${i}`, i))))
      yield* gate.open
      yield* TestClock.adjust("20 millis")
      for (const f of fibers) yield* Fiber.join(f)
      assert.deepStrictEqual(stats.batchSizes, [3, 3, 3, 3])
      assert.strictEqual(stats.maxActive, 2)
    }))

  it.effect("closing the engine answers requests in a forming batch with ShuttingDown", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const { engine, stats } = yield* busyModel(50).pipe(Scope.provide(scope))
      const waiting = yield* fork(Effect.exit(engine.infer(request("waiting", 1))))
      yield* TestClock.adjust("1 millis")
      assert.strictEqual((yield* engine.diagnostics).forming, 1)
      yield* Scope.close(scope, Exit.void)
      const exit = yield* Fiber.join(waiting)
      assert.isTrue(Exit.isFailure(exit) && exit.cause.reasons.some((r) => r._tag === "Fail" && r.error.reason._tag === "ShuttingDown"))
      assert.deepStrictEqual(stats.batchSizes, [1], "the forming batch never ran")
    }))

  for (const sizing of ["learned", "fixed"] as const) {
    it.effect(`${sizing} sizing: a batch that forms behind a 10 ms run goes ${sizing === "learned" ? "a tenth of that run before it ends (the learned cost's prediction)" : "when that run ends (its model is idle)"}`, () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({
          script: () => ({ latency: "10 millis" }),
          batching: batching({ maxBatchSize: 64, maxQueueDelay: Duration.millis(50), sizing }),
          concurrency: 1,
          metadata: { pipelineDepth: 2 }
        })
        // One run teaches the engine the cost: 10 ms.
        const warm = yield* fork(engine.infer(request("warm", 1)))
        yield* TestClock.adjust("10 millis")
        yield* Fiber.join(warm)
        const fibers = [yield* fork(engine.infer(request("a", 2)))]
        yield* TestClock.adjust("1 millis")
        for (let i = 0; i < 20; i++) fibers.push(yield* fork(engine.infer(request(`b${i}`, 3))))
        yield* TestClock.adjust("7 millis")
        assert.strictEqual(stats.started, 2, "18 ms: the batch still forms")
        yield* TestClock.adjust("1 millis")
        assert.strictEqual(stats.started, sizing === "learned" ? 3 : 2)
        yield* TestClock.adjust("1 millis")
        assert.strictEqual(stats.started, 3)
        assert.deepStrictEqual(stats.batchSizes, [1, 1, 20])
        assert.deepStrictEqual(stats.startTimesMs, [0, 10, sizing === "learned" ? 19 : 20])
        yield* TestClock.adjust("10 millis")
        for (const f of fibers) yield* Fiber.join(f)
      }))
  }
})

describe("AsyncInferenceEngine dynamic batching across models", () => {
  /** The engine over `pool` with no telemetry; with `gate`, nothing is dispatched until it opens. */
  it.effect("never joins requests of two models (or two versions of one) into one run, even when their inputs look alike", () =>
    Effect.gen(function*() {
      // Two models with one signature, each multiplying by its own factor; both batch.
      const factors: Record<string, number> = { double: 2, triple: 3 }
      const runs: Array<{ readonly model: string; readonly rows: number }> = []
      const metadataOf = (name: string): ModelMetadata.ModelMetadata => ({ ...echoMetadata, name, batching: batching(), concurrency: 1 })
      const pool = Layer.succeed(ModelPool, {
        metadata: (modelId) => modelId in factors ? Effect.succeed(metadataOf(modelId)) : Effect.fail(new InferenceError.ModelNotFound({ modelId })),
        run: (modelId, inputs) =>
          Effect.sync(() => {
            const x = inputs["x"]!
            runs.push({ model: modelId, rows: x.dims[0]! })
            const y = Float32Array.from(x.data as Float32Array, (v) => v * factors[modelId]!)
            return { outputs: { y: Tensor.float32(y, x.dims) }, deviceUsed: "cpu" }
          }),
        models: Effect.succeed([])
      })
      const gate = yield* Latch.make(false)
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 1 }, { gate })
      // queued while dispatch is held: interleaved, so a batch that gathers by input kind alone would take both models' requests
      const calls = ["double", "triple", "double", "triple"].map((model, i) => ({ model, value: i + 1 }))
      const fibers = yield* Effect.forEach(calls, ({ model, value }) => fork(engine.infer(InferenceRequest.make(model, echoInputs(value), { requestId: `${model}-${value}` }))))
      yield* gate.open
      const results = yield* Effect.forEach(fibers, Fiber.join)
      assert.deepStrictEqual(results.map(firstValue), calls.map(({ model, value }) => value * factors[model]!))
      assert.deepStrictEqual(runs, [{ model: "double", rows: 2 }, { model: "triple", rows: 2 }])
    }))

  it.effect("notStarted counts one model's queued and forming requests, not another's: an unload of one does not wait for the other's batch", () =>
    Effect.gen(function*() {
      const release = yield* Latch.make(false)
      const metadataOf: Record<string, ModelMetadata.ModelMetadata> = {
        a: { ...echoMetadata, name: "a" },
        b: { ...echoMetadata, name: "b", batching: batching({ maxQueueDelay: Duration.seconds(3) }), concurrency: 2 }
      }
      let bRuns = 0
      const pool = Layer.succeed(ModelPool, {
        metadata: (modelId) => modelId in metadataOf ? Effect.succeed(metadataOf[modelId]!) : Effect.fail(new InferenceError.ModelNotFound({ modelId })),
        run: (modelId, inputs) =>
          Effect.gen(function*() {
            if (modelId === "b" && bRuns++ === 0) yield* release.await
            return { outputs: { y: inputs["x"]! }, deviceUsed: "cpu" }
          }),
        models: Effect.succeed([])
      })
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 4 })
      const running = yield* fork(engine.infer(InferenceRequest.make("b", echoInputs(1))))
      yield* TestClock.adjust("1 millis")
      const forming = yield* fork(engine.infer(InferenceRequest.make("b", echoInputs(2))))
      yield* TestClock.adjust("1 millis")
      assert.strictEqual((yield* engine.diagnostics).forming, 1, "b's second request forms a batch while its first runs")
      assert.strictEqual(yield* engine.notStarted("b"), 1)
      assert.strictEqual(yield* engine.notStarted("a"), 0)
      // returns at once (under TestClock a wait would never end)
      yield* ModelControl.drained(engine, "a")
      yield* release.open
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(running)
      yield* Fiber.join(forming)
      assert.strictEqual(yield* engine.notStarted("b"), 0)
    }))

  it.effect("never joins requests admitted before and after a reload that changed the version's outputs: each is answered under its own", () =>
    Effect.gen(function*() {
      for (const [oldPriority, newPriority] of [["Normal", "Normal"], ["Normal", "High"]] as const) {
        const before: ModelMetadata.ModelMetadata = { ...echoMetadata, name: "m", batching: batching() }
        const after: ModelMetadata.ModelMetadata = { ...before, outputs: [{ ...echoMetadata.outputs[0]!, name: "z" }] }
        let current = before
        const pool = Layer.succeed(ModelPool, {
          metadata: () => Effect.succeed(current),
          // as OnnxModelPool: a run admitted against a signature the version no longer has is refused
          run: (modelId, inputs, options) =>
            options.admittedAs !== undefined && !ModelMetadata.sameSignature(current, options.admittedAs)
              ? Effect.fail(new InferenceError.ModelUnavailable({ modelId, reason: "reloaded while this request waited; send it again" }))
              : Effect.succeed({ outputs: { [current.outputs[0]!.name]: inputs["x"]! }, deviceUsed: "cpu" }),
          models: Effect.succeed([])
        })
        const gate = yield* Latch.make(false)
        const engine = yield* engineOver(pool, {}, { gate })
        const infer = (id: string, priority: Priority.Priority) => fork(Effect.exit(engine.infer(InferenceRequest.make("m", echoInputs(1), { requestId: id, priority }))))
        const old = yield* infer("old", oldPriority) // admitted against output y
        current = after
        const fresh = yield* infer("new", newPriority) // admitted against output z
        yield* gate.open
        const oldExit = yield* Fiber.join(old)
        const newExit = yield* Fiber.join(fresh)
        const what = `old ${oldPriority}, new ${newPriority}`
        assert.isTrue(Exit.isSuccess(newExit) && "z" in newExit.value.outputs, `${what}: the new one runs: ${String(newExit)}`)
        assert.isTrue(Exit.isFailure(oldExit), `${what}: the old one, admitted against outputs the version no longer has, is refused`)
      }
    }))

  it.effect("a pool's batched output whose data does not fill its dims fails the batch's requests, not hands one memory nobody wrote", () =>
    Effect.gen(function*() {
      const width = 2048 // a member's slice is 8 KB: memory that is not zeroed before the slice is written
      const metadata: ModelMetadata.ModelMetadata = {
        ...echoMetadata,
        inputs: [{ name: "x", dtype: "float32", dims: [-1, width] }],
        outputs: [{ name: "y", dtype: "float32", dims: [-1, width] }],
        batching: batching()
      }
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.succeed(metadata),
        // a buggy pool: says [rows, width] but holds one row's data
        run: (_modelId, inputs) => Effect.succeed({ outputs: { y: Tensor.make("float32", new Float32Array(width).fill(7), [inputs["x"]!.dims[0]!, width]) }, deviceUsed: "cpu" }),
        models: Effect.succeed([])
      })
      const gate = yield* Latch.make(false)
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 1 }, { gate })
      const fibers = yield* Effect.forEach(["a", "b"], (id) =>
        fork(Effect.exit(engine.infer(InferenceRequest.make("echo", { x: Tensor.float32(new Float32Array(width).fill(1), [1, width]) }, { requestId: id })))))
      yield* gate.open
      for (const exit of yield* Effect.forEach(fibers, Fiber.join)) {
        assert.isTrue(Exit.isFailure(exit), String(exit))
        assert.include(String(exit), "its data does not fill its dims")
      }
    }))

  it.effect("a model whose outputs are not rows of its inputs (a detection model's) is not batched once seen: the batch's members run again alone, later requests go alone", () =>
    Effect.gen(function*() {
      const runs: Array<number> = []
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.succeed({ ...echoMetadata, concurrency: 1, batching: batching() }),
        run: (_modelId, inputs) => {
          const x = inputs["x"]!
          runs.push(x.dims[0]!)
          // One more "detection" than input rows, each filled with the run's first value.
          const detections = x.dims[0]! + 1
          return Effect.succeed({ outputs: { y: Tensor.float32(new Float32Array(detections * 4).fill((x.data as Float32Array)[0]!), [detections, 4]) }, deviceUsed: "cpu" })
        },
        models: Effect.succeed([])
      })
      const gate = yield* Latch.make(false)
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 1 }, { gate })
      const infer = (value: number) => fork(engine.infer(InferenceRequest.make("echo", echoInputs(value))))
      const first = [yield* infer(1), yield* infer(2)]
      yield* gate.open
      const answers = yield* Effect.forEach(first, Fiber.join)
      assert.deepStrictEqual(answers.map((r) => [r.outputs["y"]!.dims, firstValue(r)]), [[[2, 4], 1], [[2, 4], 2]], "each its own run's outputs")
      assert.deepStrictEqual(runs, [2, 1, 1], "one batch of two, then each member alone")
      // Three at once: the first goes at once; without the guard the two behind it would be joined.
      const later = [yield* infer(3), yield* infer(4), yield* infer(5)]
      for (const f of later) yield* Fiber.join(f)
      assert.deepStrictEqual(runs.slice(3), [1, 1, 1], "alone from now on")
    }))

  it.effect("a reload's new maxQueuedRequests applies to the edges' checks at once, before any of its requests is admitted", () =>
    Effect.gen(function*() {
      let metadata: ModelMetadata.ModelMetadata = { ...echoMetadata, concurrency: 1, maxQueuedRequests: 1 }
      const gate = yield* Latch.make(false)
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.sync(() => metadata),
        metadataUnsafe: () => metadata,
        run: (_modelId, inputs) => Effect.as(gate.await, { outputs: { y: inputs["x"]! }, deviceUsed: "cpu" }),
        models: Effect.succeed([])
      })
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 4, maxQueuedRequests: 100 })
      const running = yield* fork(engine.infer(request("running", 1)))
      yield* Effect.yieldNow
      const queued = yield* fork(engine.infer(request("queued", 2)))
      yield* Effect.yieldNow
      assert.deepInclude(yield* engine.diagnostics, { queued: 1, runs: 1 })
      assert.strictEqual(engine.queueFullUnsafe("echo", metadata)?.bound, "model", "one runs, one waits: the bound of 1")
      assert.isFalse(Exit.isSuccess(yield* Effect.exit(engine.checkAdmission("echo", "1"))))
      // Reloaded with a bound of 50 (a new metadata object for the same version): as the edges
      // see it (the metadata they looked up), and as the pool has it (checkAdmission without one).
      metadata = { ...metadata, maxQueuedRequests: 50 }
      assert.isTrue(Exit.isSuccess(yield* Effect.exit(engine.checkAdmission("echo", "1"))))
      assert.isUndefined(engine.queueFullUnsafe("echo", metadata))
      yield* gate.open
      for (const f of [running, queued]) yield* Fiber.join(f)
    }))

  it.effect("a group's failed runs are not counted as runs: only those that completed are (Triton's execution and inference counts)", () =>
    Effect.gen(function*() {
      const poison = 13
      const valueOf = (inputs: Tensor.TensorMap) => (inputs["x"]!.data as Float32Array)[0]!
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.succeed({ ...echoMetadata, concurrency: 1 }),
        run: (_modelId, inputs) => Effect.succeed({ outputs: { y: inputs["x"]! }, deviceUsed: "cpu", runMs: 1 }),
        runGroup: (modelId, inputs) =>
          Effect.succeed(inputs.map((i) =>
            valueOf(i) === poison
              ? Exit.fail(new InferenceError.RunFailed({ modelId, requestId: "r", detail: "bad kernel" }))
              : Exit.succeed({ outputs: { y: i["x"]! }, deviceUsed: "cpu", runMs: 1 })
          )),
        models: Effect.succeed([])
      })
      const gate = yield* Latch.make(false)
      const context = yield* Layer.build(AsyncInferenceEngine.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(pool, layerRecording, AsyncConfigService.layerWith({ maxConcurrentRequests: 1 })))
      )).pipe(Effect.provideService(DispatchGate, gate.await))
      const engine = Context.get(context, AsyncInferenceEngine)
      const fibers = yield* Effect.forEach([1, poison, 3], (v) => fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(v))))))
      yield* gate.open
      const exits = yield* Effect.forEach(fibers, Fiber.join)
      assert.deepStrictEqual(exits.map((e) => Exit.isSuccess(e) ? firstValue(e.value) : "failed"), [1, "failed", 3])
      const runs = Context.get(context, TelemetryLog).events.filter((e) => e._tag === "run")
      assert.deepStrictEqual(runs.map((e) => e._tag === "run" ? e.batchSize : 0), [1, 1], "two runs completed; the failed one is not counted")
    }))

  it.effect("a group whose job fails as a whole (its instance died) runs its members again alone: one crashing input fails only itself", () =>
    Effect.gen(function*() {
      const poison = 13
      const jobs: Array<string> = []
      const valueOf = (inputs: Tensor.TensorMap) => (inputs["x"]!.data as Float32Array)[0]!
      const crash = (modelId: string) => new InferenceError.RunFailed({ modelId, requestId: "r", detail: "the session process ended (signal SIGSEGV)" })
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.succeed({ ...echoMetadata, concurrency: 1 }),
        run: (modelId, inputs) => {
          jobs.push(`run ${valueOf(inputs)}`)
          return valueOf(inputs) === poison ? Effect.fail(crash(modelId)) : Effect.succeed({ outputs: { y: inputs["x"]! }, deviceUsed: "cpu" })
        },
        runGroup: (modelId, inputs) => {
          jobs.push(`group ${inputs.map(valueOf).join(",")}`)
          return inputs.some((i) => valueOf(i) === poison)
            ? Effect.fail(crash(modelId))
            : Effect.succeed(inputs.map((i) => Exit.succeed({ outputs: { y: i["x"]! }, deviceUsed: "cpu" })))
        },
        models: Effect.succeed([])
      })
      const gate = yield* Latch.make(false)
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 1 }, { gate })
      const values = [1, poison, 3]
      const fibers = yield* Effect.forEach(values, (v) => fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(v))))))
      yield* gate.open
      const exits = yield* Effect.forEach(fibers, Fiber.join)
      assert.deepStrictEqual(exits.map((e) => Exit.isSuccess(e) ? firstValue(e.value) : "failed"), [1, "failed", 3])
      assert.deepStrictEqual(jobs, ["group 1,13,3", "run 1", "run 13", "run 3"])
    }))

  it.effect("a higher-priority request that a forming batch of lower priority holds a slot or a permit from sends that batch now: it waits for its run, not its batching delay", () =>
    Effect.gen(function*() {
      const row = (width: number) => ({ x: Tensor.float32(new Float32Array(width).fill(1), [1, width]) })
      const delayed = batching({ maxQueueDelay: Duration.millis(40) })
      const metadata = (name: string, withBatching: boolean): ModelMetadata.ModelMetadata => ({
        ...echoMetadata,
        name,
        concurrency: 2,
        inputs: [{ name: "x", dtype: "float32", dims: [-1, -1] }],
        outputs: [{ name: "y", dtype: "float32", dims: [-1, -1] }],
        ...(withBatching ? { batching: delayed } : {})
      })
      // (1) a slot: model x's second slot is held by a forming Low batch that the Critical request (another width) cannot join
      // (2) a permit: the Critical request is for model y, idle, and both permits are x's
      for (const [what, criticalModel] of [["a slot of its model", "x"], ["the last permit", "y"]] as const) {
        const models: Record<string, ModelMetadata.ModelMetadata> = { x: metadata("x", true), y: metadata("y", false) }
        const started: Array<[string, number]> = []
        const pool = Layer.succeed(ModelPool, {
          metadata: (modelId) => Effect.succeed(models[modelId]!),
          run: (_modelId, inputs, options) =>
            Effect.gen(function*() {
              started.push([options.requestId, yield* Clock.currentTimeMillis])
              yield* Effect.sleep(options.requestId === "long" ? "100 millis" : "2 millis")
              return { outputs: { y: inputs["x"]! }, deviceUsed: "cpu" }
            }),
          models: Effect.succeed([])
        })
        const engine = yield* engineOver(pool, { maxConcurrentRequests: 2 })
        yield* fork(engine.infer(InferenceRequest.make("x", row(4), { requestId: "long" })))
        yield* TestClock.adjust("1 millis")
        const low = yield* fork(engine.infer(InferenceRequest.make("x", row(4), { requestId: "low", priority: "Low" })))
        yield* TestClock.adjust("1 millis")
        const critical = yield* fork(engine.infer(InferenceRequest.make(criticalModel, row(8), { requestId: "critical", priority: "Critical" })))
        yield* TestClock.adjust("100 millis")
        yield* Fiber.join(critical)
        yield* Fiber.join(low)
        const at = Object.fromEntries(started.map(([id, ms]) => [id, ms - started[0]![1]]))
        assert.strictEqual(at["low"], 2, `${what}: the Low batch went when the Critical request came, not after its 40 ms`)
        assert.strictEqual(at["critical"], 4, `${what}: the Critical request ran once the Low run (2 ms) was done`)
      }
    }))

  it.effect("keeps the models of a pool apart when they share one metadata object, or one metadata name", () =>
    Effect.gen(function*() {
      for (const shared of [true, false]) {
        const factors: Record<string, number> = { double: 2, triple: 3 }
        const common: ModelMetadata.ModelMetadata = { ...echoMetadata, name: "scale", batching: batching(), concurrency: 1 }
        const metadataOf: Record<string, ModelMetadata.ModelMetadata> = shared ? { double: common, triple: common } : { double: { ...common }, triple: { ...common } }
        const runs: Array<string> = []
        const pool = Layer.succeed(ModelPool, {
          metadata: (modelId) => modelId in metadataOf ? Effect.succeed(metadataOf[modelId]!) : Effect.fail(new InferenceError.ModelNotFound({ modelId })),
          run: (modelId, inputs) =>
            Effect.sync(() => {
              const x = inputs["x"]!
              runs.push(`${modelId} x${x.dims[0]}`)
              return { outputs: { y: Tensor.float32(Float32Array.from(x.data as Float32Array, (v) => v * factors[modelId]!), x.dims) }, deviceUsed: "cpu" }
            }),
          models: Effect.succeed([])
        })
        const gate = yield* Latch.make(false)
        const engine = yield* engineOver(pool, { maxConcurrentRequests: 1 }, { gate })
        const calls = ["double", "triple", "double", "triple"].map((model, i) => ({ model, value: i + 1 }))
        const fibers = yield* Effect.forEach(calls, ({ model, value }) => fork(engine.infer(InferenceRequest.make(model, echoInputs(value)))))
        yield* gate.open
        const results = yield* Effect.forEach(fibers, Fiber.join)
        const what = shared ? "one metadata object" : "one metadata name"
        assert.deepStrictEqual(results.map(firstValue), calls.map(({ model, value }) => value * factors[model]!), what)
        assert.deepStrictEqual(runs, ["double x2", "triple x2"], what)
      }
    }))

  it.effect("runs every job under the version its requests were admitted to, named or not (so they share it), batched or grouped", () =>
    Effect.gen(function*() {
      for (const batches of [true, false]) {
        const runs: Array<{ readonly version: string | undefined; readonly requests: number }> = []
        const metadata: ModelMetadata.ModelMetadata = { ...echoMetadata, concurrency: 1, ...(batches ? { batching: batching() } : {}) }
        const answer = (x: Tensor.Tensor) => ({ outputs: { y: x }, deviceUsed: "cpu" })
        const pool = Layer.succeed(ModelPool, {
          metadata: () => Effect.succeed(metadata),
          run: (_modelId, inputs, options) =>
            Effect.sync(() => {
              runs.push({ version: options.version, requests: inputs["x"]!.dims[0]! })
              return answer(inputs["x"]!)
            }),
          runGroup: (_modelId, inputs, options) =>
            Effect.sync(() => {
              runs.push({ version: options.version, requests: inputs.length })
              return inputs.map((i) => Exit.succeed(answer(i["x"]!)))
            }),
          models: Effect.succeed([])
        })
        const gate = yield* Latch.make(false)
        const engine = yield* engineOver(pool, { maxConcurrentRequests: 1 }, { gate })
        // "1" is the highest version now: all four are admitted to it, and run under it even if a load makes another the highest first
        const versions = [undefined, "1", undefined, "01"]
        const fibers = yield* Effect.forEach(versions, (modelVersion, i) =>
          fork(engine.infer(InferenceRequest.make("echo", echoInputs(i + 1), { requestId: `r${i}`, modelVersion }))))
        yield* gate.open
        yield* Effect.forEach(fibers, Fiber.join)
        assert.deepStrictEqual(runs, [{ version: "1", requests: 4 }], batches ? "batched" : "grouped")
      }
    }))
})
