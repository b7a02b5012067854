/**
 * The Dispatcher over a pool that pins each job to one instance (`InstancePool` over a fake
 * transport, pipelining two jobs an instance, as threads do): such a pool starts its jobs out of
 * the order they were dispatched in, when a later one finds an instance that freed sooner. The
 * engine must learn from the pool which jobs run (`reportsStarts`): it withdraws only a job that
 * waits, and never lets more native runs go at once than `maxConcurrentRequests`.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AsyncConfigService, type AsyncConfig } from "../src/AsyncConfig.ts"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import * as Dispatcher from "../src/Dispatcher.ts"
import { AsyncInferenceEngine } from "../src/Engine.ts"
import * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import { ModelPool } from "../src/ModelPool.ts"
import * as InstancePool from "../src/onnx/InstancePool.ts"
import type * as ModelMetadata from "../src/ModelMetadata.ts"
import type * as Scheduler from "../src/Scheduler.ts"
import { layerRecording, TelemetryCollector, TelemetryLog } from "../src/Telemetry.ts"
import * as Tensor from "../src/Tensor.ts"
import { type FakeInstance, fakeTransport, poolOptions } from "./fixtures/FakeTransport.ts"
import { stoppedClock } from "./fixtures/StoppedClock.ts"

/** Lets forked fibers, microtasks and the dispatcher's pumps run. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 5; i++) {
    yield* Effect.promise(() => new Promise<void>((r) => setImmediate(r)))
    yield* Effect.yieldNow
  }
})

/**
 * A started pool of `modelId` over fake instances that load at once and skip the jobs they are
 * told to cancel (unless `lateCancels`: each cancel comes too late, and the job runs).
 */
const startPool = (
  modelId: string,
  instances: number,
  lateCancels = false,
  overrides: Partial<InstancePool.Options> = {},
  isolation: InstancePool.Isolation = "thread"
) =>
  Effect.gen(function*() {
    const fake = fakeTransport(isolation)
    fake.auto.ready = true
    fake.auto.skipCancelled = !lateCancels
    const fiber = yield* Effect.forkChild(InstancePool.start(poolOptions({ modelId, instances, ...overrides }), fake.transport), { startImmediately: true })
    yield* settle
    const pool = yield* Fiber.join(fiber)
    yield* Effect.addFinalizer(() => pool.close)
    return { pool, instances: fake.instances }
  })

/**
 * The engine over pools by model id, as `OnnxModelPool` serves them (one request a job: no
 * groups; a process pool stops abandoned runs), batching as `batching` says.
 */
const engineOver = (pools: Record<string, InstancePool.InstancePool>, config: Partial<AsyncConfig>, batching: BatchPolicy.BatchingConfig = BatchPolicy.disabled) =>
  Effect.gen(function*() {
    const modelPool = ModelPool.of({
      metadata: (modelId) => {
        const pool = pools[modelId]
        return pool === undefined
          ? Effect.fail(new InferenceError.ModelNotFound({ modelId }))
          : Effect.succeed({ ...pool.metadata, batching, concurrency: pool.stats().instances, pipelineDepth: pool.depth, reportsStarts: true, stopsAbandonedRuns: pool.isolation === "process" })
      },
      run: (modelId, inputs, options) => pools[modelId]!.run(inputs, options.requestId, options),
      models: Effect.succeed([])
    })
    const context = yield* Layer.build(
      AsyncInferenceEngine.layer.pipe(Layer.provideMerge(Layer.mergeAll(Layer.succeed(ModelPool, modelPool), layerRecording, AsyncConfigService.layerWith(config))))
    )
    return Context.get(context, AsyncInferenceEngine)
  })

const request = (modelId: string, requestId: string) => InferenceRequest.make(modelId, { x: Tensor.float32(new Float32Array([1]), [1, 1]) }, { requestId })
const fork = <A, E>(effect: Effect.Effect<A, E>) => Effect.forkChild(Effect.exit(effect), { startImmediately: true })

/** Instances running a job now: those with a job in hand. */
const running = (instances: ReadonlyArray<FakeInstance>) => instances.filter((i) => i.inHand.length > 0).length

describe("Dispatcher over a pool that pins jobs to instances", () => {
  it.live("a job that a freed instance started before an older one is not withdrawn when its caller leaves: native runs stay within maxConcurrentRequests", () =>
    Effect.gen(function*() {
      const m = yield* startPool("m", 2)
      const n = yield* startPool("n", 1)
      const engine = yield* engineOver({ m: m.pool, n: n.pool }, { maxConcurrentRequests: 2 })
      const [a1, a2] = m.instances
      const all = [...m.instances, ...n.instances]
      let most = 0
      const observe = () => (most = Math.max(most, running(all)))
      const r1 = yield* fork(engine.infer(request("m", "r1")))
      const r2 = yield* fork(engine.infer(request("m", "r2")))
      const r3 = yield* fork(engine.infer(request("m", "r3")))
      yield* settle
      observe()
      assert.deepStrictEqual([a1!.inHand.length, a2!.inHand.length], [2, 1], "r3 waits on a1 behind r1")
      a2!.finishRunning()
      yield* Fiber.join(r2)
      // a2 is idle: r4 runs there at once, while r3 still waits on a1
      const r4 = yield* fork(engine.infer(request("m", "r4")))
      yield* settle
      observe()
      assert.strictEqual(a2!.inHand.length, 1, "r4 runs on a2")
      yield* Fiber.interrupt(r4)
      yield* settle
      assert.isFalse(a2!.sent.some((message) => message._tag === "cancel"), "r4 runs: it is not withdrawn")
      a1!.finishRunning()
      yield* Fiber.join(r1)
      yield* settle
      // m runs r3 (a1) and r4 (a2, for nobody): n's request must wait for a permit
      const s1 = yield* fork(engine.infer(request("n", "s1")))
      yield* settle
      observe()
      assert.strictEqual(most, 2, "never more native runs than maxConcurrentRequests")
      assert.strictEqual(n.instances[0]!.inHand.length, 0, "n waits while m's two runs go on")
      a2!.finishRunning()
      yield* settle
      assert.strictEqual(n.instances[0]!.inHand.length, 1, "n runs once r4's run ended")
      n.instances[0]!.finishRunning()
      a1!.finishRunning()
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(s1)))
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(r3)))
    }))

  it.live("a withdrawn job that its instance began before the cancel reached it holds its permit until its run ends", () =>
    Effect.gen(function*() {
      const m = yield* startPool("m", 1, true)
      const n = yield* startPool("n", 2)
      const engine = yield* engineOver({ m: m.pool, n: n.pool }, { maxConcurrentRequests: 2 })
      const [a] = m.instances
      const all = [...m.instances, ...n.instances]
      let most = 0
      const observe = () => (most = Math.max(most, running(all)))
      const r1 = yield* fork(engine.infer(request("m", "r1")))
      const r2 = yield* fork(engine.infer(request("m", "r2")))
      yield* settle
      assert.deepStrictEqual(a!.inHand.length, 2, "r2 waits on a behind r1")
      yield* Fiber.interrupt(r2)
      yield* settle
      assert.isTrue(a!.sent.some((message) => message._tag === "cancel"), "r2 was withdrawn")
      // the instance had already begun r2 when the cancel came
      a!.finishRunning()
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(r1)))
      yield* settle
      assert.strictEqual(a!.inHand.length, 1, "r2 runs, for nobody")
      const s1 = yield* fork(engine.infer(request("n", "s1")))
      const s2 = yield* fork(engine.infer(request("n", "s2")))
      yield* settle
      observe()
      assert.strictEqual(most, 2, "r2's run holds its permit: n runs one request, not two")
      a!.finishRunning()
      yield* settle
      observe()
      assert.strictEqual(running(n.instances), 2, "n runs both once r2's run ended")
      for (const instance of n.instances) instance.finishRunning()
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(s1)))
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(s2)))
      assert.strictEqual(most, 2)
    }))

  it.live("a batch's member run again alone after its job failed waits like any job: counted as waiting, withdrawn when its callers leave", () =>
    Effect.gen(function*() {
      // a lost instance is not replaced during the test: the rerun has only the busy one
      const m = yield* startPool("m", 2, false, { respawnAttempts: 1, respawnDelay: Duration.seconds(30) })
      const batching: BatchPolicy.BatchingConfig = { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 2 }
      const engine = yield* engineOver({ m: m.pool }, {}, batching)
      const [a1, a2] = m.instances
      const r1 = yield* fork(engine.infer(request("m", "r1")))
      const r2 = yield* fork(engine.infer(request("m", "r2")))
      yield* settle
      const r3 = yield* fork(engine.infer(request("m", "r3")))
      yield* settle
      assert.deepStrictEqual([a1!.inHand.length, a2!.inHand.length], [1, 1], "r1 and r2 run as one batch on a1, r3 on a2")
      // a1 dies running the batch: its members run again alone, r1 first, sent ahead on a2 behind r3
      a1!.die()
      yield* settle
      assert.strictEqual(a2!.inHand.length, 2)
      assert.strictEqual((yield* engine.diagnostics).ahead, 2, "r1's job waits on a2, and r2 waits for its own turn")
      yield* Fiber.interrupt(r1)
      yield* Fiber.interrupt(r2)
      yield* settle
      const [, rerunId] = a2!.runs()
      assert.deepStrictEqual(a2!.sent.filter((message) => message._tag === "cancel"), [{ _tag: "cancel", id: rerunId! }], "nobody waits for it: withdrawn")
      a2!.finishRunning()
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(r3)))
      yield* settle
      assert.deepStrictEqual(a2!.inHand, [], "skipped, not run for nobody")
      assert.deepInclude(yield* engine.diagnostics, { queued: 0, runs: 0, ahead: 0, unsettled: 0 })
    }))

  it.live("closing the engine answers every caller at once, a job sent ahead behind a run that goes on too", () =>
    Effect.gen(function*() {
      const m = yield* startPool("m", 1)
      const scope = yield* Scope.make()
      const engine = yield* engineOver({ m: m.pool }, {}).pipe(Scope.provide(scope))
      const [a] = m.instances
      const r1 = yield* fork(engine.infer(request("m", "r1")))
      const r2 = yield* fork(engine.infer(request("m", "r2")))
      yield* settle
      assert.strictEqual(a!.inHand.length, 2, "r1 runs, r2 waits behind it")
      yield* Scope.close(scope, Exit.void)
      for (const caller of [r1, r2]) {
        const exit = yield* Fiber.join(caller)
        assert.isTrue(Exit.isFailure(exit) && Cause.squash(exit.cause) instanceof InferenceError.InferenceError, String(exit))
        if (Exit.isFailure(exit)) assert.strictEqual((Cause.squash(exit.cause) as InferenceError.InferenceError).reason._tag, "ShuttingDown")
      }
      assert.strictEqual(a!.inHand.length, 2, "while r1's run still goes on")
      a!.finishRunning()
      yield* settle
      assert.deepStrictEqual(a!.inHand, [], "then r2 is skipped")
    }))

  it.live("a job waiting on a busy instance is withdrawn when its caller leaves, though a later job found an idle instance first", () =>
    Effect.gen(function*() {
      const m = yield* startPool("m", 2)
      const engine = yield* engineOver({ m: m.pool }, { maxConcurrentRequests: 4 })
      const [a1, a2] = m.instances
      const r1 = yield* fork(engine.infer(request("m", "r1")))
      const r2 = yield* fork(engine.infer(request("m", "r2")))
      const r3 = yield* fork(engine.infer(request("m", "r3")))
      yield* settle
      a2!.finishRunning()
      yield* Fiber.join(r2)
      yield* settle
      assert.strictEqual((yield* engine.diagnostics).ahead, 1, "r3 waits on a1 (it counts against maxQueued)")
      yield* Fiber.interrupt(r3)
      yield* settle
      const [, r3Id] = a1!.runs()
      assert.deepStrictEqual(a1!.sent.filter((message) => message._tag === "cancel"), [{ _tag: "cancel", id: r3Id! }], "r3 was withdrawn")
      a1!.finishRunning()
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(r1)))
      yield* settle
      assert.deepStrictEqual([a1!.inHand, a2!.inHand], [[], []], "r3 never ran")
      assert.strictEqual((yield* engine.diagnostics).ahead, 0)
    }))

  it.live("over processes, a begun run whose every caller left is killed after the grace; its permit is held until then", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const m = yield* startPool("m", 1, false, { counters, killGrace: Duration.millis(60) }, "process")
      const n = yield* startPool("n", 1)
      const engine = yield* engineOver({ m: m.pool, n: n.pool }, { maxConcurrentRequests: 1 })
      const [a] = m.instances
      const [b] = n.instances
      const r1 = yield* fork(engine.infer(request("m", "r1")))
      yield* settle
      const r2 = yield* fork(engine.infer(request("n", "r2")))
      yield* settle
      assert.strictEqual(a!.inHand.length, 1, "r1 runs")
      assert.strictEqual(b!.inHand.length, 0, "r2 waits for the one permit")
      // The caller leaves at once; its run goes on for nobody until the grace is spent.
      yield* Fiber.interrupt(r1)
      yield* settle
      assert.isFalse(a!.killed)
      assert.strictEqual(b!.inHand.length, 0, "the permit is held while the run goes on")
      yield* Effect.sleep(Duration.millis(120))
      yield* settle
      assert.isTrue(a!.killed, "killed after the grace")
      assert.strictEqual(counters.abandonKills, 1)
      assert.strictEqual(b!.inHand.length, 1, "then r2 runs")
      b!.finishRunning()
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(r2)))
      const stats = (yield* engine.diagnostics)
      assert.strictEqual(stats.ahead, 0)
    }))

  it.live("over processes, a batch's run is stopped only once its last caller has left", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const m = yield* startPool("m", 1, false, { counters, killGrace: Duration.millis(30) }, "process")
      const batching = { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 4 }
      const engine = yield* engineOver({ m: m.pool }, { maxConcurrentRequests: 1 }, batching)
      const [a] = m.instances
      // r0 takes the instance; r1 and r2 form a batch behind it.
      const r0 = yield* fork(engine.infer(request("m", "r0")))
      yield* settle
      const r1 = yield* fork(engine.infer(request("m", "r1")))
      const r2 = yield* fork(engine.infer(request("m", "r2")))
      yield* settle
      a!.finishRunning()
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(r0)))
      yield* settle
      const runs = a!.sent.filter((message) => message._tag === "run")
      assert.strictEqual(runs.length, 2)
      assert.deepStrictEqual(runs[1]!._tag === "run" ? runs[1]!.inputs["x"]!.dims : [], [2, 1], "r1 and r2 run as one batch")
      yield* Fiber.interrupt(r1)
      yield* Effect.sleep(Duration.millis(80))
      yield* settle
      assert.isFalse(a!.killed, "r2 still waits for the run")
      yield* Fiber.interrupt(r2)
      yield* Effect.sleep(Duration.millis(80))
      yield* settle
      assert.isTrue(a!.killed, "nobody waits: killed after the grace")
      assert.strictEqual(counters.abandonKills, 1)
    }))
})

describe("Dispatcher: a run's failure past its caller's deadline", () => {
  /** The engine over a pool whose runs wait for the test to fail them (one instance, batching as given). */
  const engineFailingOnCue = (clock: Clock.Clock, batching: BatchPolicy.BatchingConfig) =>
    Effect.gen(function*() {
      const runs: Array<Deferred.Deferred<never, InferenceError.RunFailed>> = []
      const metadata = { name: "m", version: "1", inputs: [{ name: "x", dtype: "float32" as const, dims: [-1, 1] }], outputs: [{ name: "y", dtype: "float32" as const, dims: [-1, 1] }], batching, concurrency: 1 }
      const modelPool = ModelPool.of({
        metadata: () => Effect.succeed(metadata),
        metadataUnsafe: () => metadata,
        run: () => Effect.flatMap(Deferred.make<never, InferenceError.RunFailed>(), (d) => Effect.andThen(Effect.sync(() => runs.push(d)), Deferred.await(d))),
        models: Effect.succeed([])
      })
      const context = yield* Layer.build(
        AsyncInferenceEngine.layer.pipe(Layer.provideMerge(Layer.mergeAll(Layer.succeed(ModelPool, modelPool), layerRecording, AsyncConfigService.layerWith({ maxConcurrentRequests: 1 }))))
      ).pipe(Effect.provideService(Clock.Clock, clock))
      return { engine: Context.get(context, AsyncInferenceEngine), runs, log: Context.get(context, TelemetryLog) }
    })

  const reasonOf = (exit: Exit.Exit<unknown, InferenceError.InferenceError>) =>
    Exit.isSuccess(exit) ? "Success" : (exit.cause.reasons.find((r) => r._tag === "Fail")?.error as InferenceError.InferenceError | undefined)?.reason._tag

  it.live("is DeadlineExceeded (504, a timeout), not the pool's RunFailed (500, a backend failure); a batch's members are not run again", () =>
    Effect.gen(function*() {
      const { clock, advance } = stoppedClock()
      const { engine, runs, log } = yield* engineFailingOnCue(clock, { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 4 })
      const a = yield* fork(engine.infer(InferenceRequest.make("m", { x: Tensor.float32(new Float32Array([1]), [1, 1]) }, { requestId: "a", timeout: "10 millis" })))
      const b = yield* fork(engine.infer(InferenceRequest.make("m", { x: Tensor.float32(new Float32Array([2]), [1, 1]) }, { requestId: "b", timeout: "10 millis" })))
      yield* settle
      assert.strictEqual(runs.length, 1, "one batched run")
      // The pool gives up on the run at the deadline (a job refused late, a run killed at it).
      advance(10)
      yield* Deferred.fail(runs[0]!, new InferenceError.RunFailed({ modelId: "m", requestId: "a", detail: "not run: its deadline passed 0 ms ago while it waited for an instance" }))
      yield* settle
      assert.deepStrictEqual([reasonOf(yield* Fiber.join(a)), reasonOf(yield* Fiber.join(b))], ["DeadlineExceeded", "DeadlineExceeded"])
      assert.strictEqual(runs.length, 1, "not run again member by member")
      assert.deepStrictEqual(log.events.filter((e) => e._tag === "timeout").length, 2, "counted as timeouts")
      // Before its deadline, a failed run is the run's failure: alone, it is not run again.
      const c = yield* fork(engine.infer(InferenceRequest.make("m", { x: Tensor.float32(new Float32Array([3]), [1, 1]) }, { requestId: "c", timeout: "10 millis" })))
      yield* settle
      yield* Deferred.fail(runs[1]!, new InferenceError.RunFailed({ modelId: "m", requestId: "c", detail: "crashed" }))
      yield* settle
      assert.strictEqual(reasonOf(yield* Fiber.join(c)), "RunFailed")
    }))
})

describe("Dispatcher: a run's failure as its caller gets it", () => {
  /** The engine over a pool whose every run ends as `fail` says. */
  const engineFailingWith = (fail: Effect.Effect<never, InferenceError.RunFailed | InferenceError.ModelUnavailable>) =>
    Effect.gen(function*() {
      const metadata = { name: "m", version: "1", inputs: [{ name: "x", dtype: "float32" as const, dims: [-1, 1] }], outputs: [{ name: "y", dtype: "float32" as const, dims: [-1, 1] }], concurrency: 1 }
      const modelPool = ModelPool.of({
        metadata: () => Effect.succeed(metadata),
        metadataUnsafe: () => metadata,
        run: () => fail,
        models: Effect.succeed([])
      })
      const context = yield* Layer.build(
        AsyncInferenceEngine.layer.pipe(Layer.provideMerge(Layer.mergeAll(Layer.succeed(ModelPool, modelPool), layerRecording, AsyncConfigService.layerWith({}))))
      )
      return Context.get(context, AsyncInferenceEngine)
    })

  const table: ReadonlyArray<readonly [string, Effect.Effect<never, InferenceError.RunFailed | InferenceError.ModelUnavailable>, string, string]> = [
    ["a RunFailed keeps the pool's detail", Effect.fail(new InferenceError.RunFailed({ modelId: "m", requestId: "r", detail: "kernel error" })), "RunFailed", "kernel error"],
    ["a ModelUnavailable stays ModelUnavailable", Effect.fail(new InferenceError.ModelUnavailable({ modelId: "m", reason: "unloading" })), "ModelUnavailable", "unloading"],
    ["only a defect becomes RunFailed, saying so", Effect.die(new Error("worker lost")), "RunFailed", "the run ended with a defect: worker lost"]
  ]
  for (const [name, fail, tag, said] of table) {
    it.effect(name, () =>
      Effect.gen(function*() {
        const engine = yield* engineFailingWith(fail)
        const exit = yield* Effect.exit(engine.infer(request("m", "r")))
        assert.isTrue(Exit.isFailure(exit), String(exit))
        const reason = Exit.isFailure(exit) ? (Cause.squash(exit.cause) as InferenceError.InferenceError).reason : undefined
        assert.strictEqual(reason?._tag, tag)
        assert.strictEqual(reason?._tag === "RunFailed" ? reason.detail : reason?._tag === "ModelUnavailable" ? reason.reason : undefined, said)
      }))
  }
})

describe("Dispatcher.make: what it hands the pool and learns from it", () => {
  const metadata: ModelMetadata.ModelMetadata = {
    name: "m",
    version: "1",
    inputs: [{ name: "x", dtype: "float32", dims: [-1, 1] }],
    outputs: [{ name: "y", dtype: "float32", dims: [-1, 1] }]
  }
  const batching: BatchPolicy.BatchingConfig = { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 8 }
  const output = (x: Tensor.Tensor) => ({ outputs: { y: x }, deviceUsed: "cpu" })

  /** A dispatcher over `pool`; `submit` admits a request of `spec` whose deadline is `deadlineInMs` from now, and records its answer. */
  const dispatcherOver = (pool: ModelPool["Service"]) =>
    Effect.gen(function*() {
      const dispatcher = yield* Dispatcher.make({ maxConcurrent: 1, maxQueued: 100, enablePriority: true }).pipe(
        Effect.provideService(ModelPool, pool),
        Effect.provide(TelemetryCollector.layerNoop)
      )
      const answers: Record<string, string> = {}
      const submit = (spec: Scheduler.ModelSpec, requestId: string, deadlineInMs: number) =>
        dispatcher.submit({
          value: {
            request: request("m", requestId),
            metadata,
            batching: spec.batching,
            resume: (exit) => void (answers[requestId] = Exit.isSuccess(exit) ? "ok" : String(exit))
          },
          model: spec,
          priority: "Normal",
          rows: 1,
          batchKey: spec.batching.enabled ? "k" : undefined,
          deadlineAtMs: dispatcher.nowMs() + deadlineInMs,
          queueDeadlineAtMs: Infinity
        })
      return { dispatcher, answers, submit }
    })

  it.effect("a batch's or a group's run may last until its latest member's deadline, whichever member that is", () =>
    Effect.gen(function*() {
      const timeouts: Array<number> = []
      const { answers, submit } = yield* dispatcherOver(ModelPool.of({
        metadata: () => Effect.succeed(metadata),
        run: (_modelId, inputs, options) => Effect.sync(() => (timeouts.push(Duration.toMillis(options.timeout!)), output(inputs["x"]!))),
        runGroup: (_modelId, inputs, options) => Effect.sync(() => (timeouts.push(Duration.toMillis(options.timeout!)), inputs.map((i) => Exit.succeed(output(i["x"]!))))),
        models: Effect.succeed([])
      }))
      const batched: Scheduler.ModelSpec = { key: "batched", instances: 1, depth: 1, batching, maxGroup: 1 }
      const grouped: Scheduler.ModelSpec = { key: "grouped", instances: 1, depth: 1, batching: BatchPolicy.disabled, maxGroup: 4 }
      for (const spec of [batched, grouped]) {
        submit(spec, `${spec.key}-late`, 100)
        submit(spec, `${spec.key}-early`, 10)
        yield* TestClock.adjust("1 millis")
      }
      assert.deepStrictEqual(answers, { "batched-late": "ok", "batched-early": "ok", "grouped-late": "ok", "grouped-early": "ok" })
      assert.deepStrictEqual(timeouts, [100, 100], "one job each, until the latest member's deadline (the first submitted), not the earliest's")
    }))

  it.effect("learns the model's run cost from the pool's native run time, not the job's wall time", () =>
    Effect.gen(function*() {
      const { answers, dispatcher, submit } = yield* dispatcherOver(ModelPool.of({
        metadata: () => Effect.succeed(metadata),
        // 10 ms in the pool (waiting for an instance, crossing to it), of which 2 ms ran
        run: (_modelId, inputs) => Effect.as(Effect.sleep("10 millis"), { ...output(inputs["x"]!), runMs: 2 }),
        models: Effect.succeed([])
      }))
      const spec: Scheduler.ModelSpec = { key: "m", instances: 1, depth: 1, batching: { ...batching, sizing: "learned" }, maxGroup: 1 }
      submit(spec, "r", 1000)
      yield* TestClock.adjust("20 millis")
      assert.deepStrictEqual(answers, { r: "ok" })
      const model = dispatcher.scheduler.model(spec)
      assert.strictEqual(model.cost.runs, 1)
      assert.strictEqual(model.cost.predict(1), 2)
      assert.strictEqual(model.expectedRunMs, 10, "the wall time is the last run's time")
    }))
})
