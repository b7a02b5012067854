/**
 * The engine and its Dispatcher at their edges: group sizing and timing, runs that end by a
 * defect or an interruption, failures past a deadline, cancels and drains, the Promise-free
 * `inferUnsafe` path. Each case was found unpinned by a mutation audit; the comment above each
 * names the change to the source that it fails on.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Context, Deferred, Duration, Effect, Exit, Fiber, Latch, Layer, Scope } from "effect"
import { TestClock } from "effect/testing"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import * as Dispatcher from "../src/Dispatcher.ts"
import { AsyncInferenceEngine, DispatchGate } from "../src/Engine.ts"
import * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import type * as ModelMetadata from "../src/ModelMetadata.ts"
import { ModelPool } from "../src/ModelPool.ts"
import type * as Scheduler from "../src/Scheduler.ts"
import { layerRecording, TelemetryCollector, TelemetryLog } from "../src/Telemetry.ts"
import * as Tensor from "../src/Tensor.ts"
import { engineOver, makeHarness } from "./fixtures/EngineHarness.ts"
import { stoppedClock } from "./fixtures/StoppedClock.ts"
import { echoInputs, echoMetadata, makeFake } from "./fixtures/FakeModelPool.ts"

/** Lets the dispatcher's pump (a microtask) and the forked runs go. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 5; i++) {
    yield* Effect.promise(() => new Promise<void>((r) => setImmediate(r)))
    yield* Effect.yieldNow
  }
})

const fork = <A, E>(effect: Effect.Effect<A, E>) => Effect.forkChild(effect, { startImmediately: true })

/** Model "m" version 1: one float32 column in (x), the same out (y), rows along axis 0. */
const oneColumn: ModelMetadata.ModelMetadata = {
  name: "m",
  version: "1",
  inputs: [{ name: "x", dtype: "float32", dims: [-1, 1] }],
  outputs: [{ name: "y", dtype: "float32", dims: [-1, 1] }]
}

describe("Engine and Dispatcher edges", () => {
  // Mutant (Dispatcher.ts, runGroup): `nativeMs / members.length` → `nativeMs`.
  it.effect("a group's native run time is learned per member: a group of cheap runs does not shrink the next groups to one", () =>
    Effect.gen(function*() {
      const groups: Array<number> = []
      const firstJob = yield* Latch.make(false)
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.succeed({ ...echoMetadata, concurrency: 1 }),
        run: (_modelId, inputs) => Effect.succeed({ outputs: { y: inputs["x"]! }, deviceUsed: "cpu", runMs: 0.2 }),
        runGroup: (_modelId, inputs) =>
          Effect.suspend(() => {
            groups.push(inputs.length)
            const answers = inputs.map((i) => Exit.succeed({ outputs: { y: i["x"]! }, deviceUsed: "cpu", runMs: 0.2 }))
            // The first group holds the model until the test has queued the second wave.
            return groups.length === 1 ? Effect.as(firstJob.await, answers) : Effect.succeed(answers)
          }),
        models: Effect.succeed([])
      })
      const gate = yield* Latch.make(false)
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 1 }, { gate })
      const infer = (v: number) => fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(v)))))
      const first = yield* Effect.forEach([1, 2, 3, 4], infer)
      yield* gate.open
      yield* settle
      assert.deepStrictEqual(groups, [4], "the first four go as one group")
      const second = yield* Effect.forEach([5, 6, 7, 8], infer)
      yield* firstJob.open
      const exits = yield* Effect.forEach([...first, ...second], Fiber.join)
      assert.isTrue(exits.every(Exit.isSuccess))
      // 0.2 ms a run: 5 fit the 1 ms group budget (Scheduler.groupCap); 0.8 ms (the group's sum) would allow 1
      assert.deepStrictEqual(groups, [4, 4], "the next four go as one group too")
    }))

  // Mutant (Dispatcher.ts, make's submit): `if (state.closed) return undefined` dropped.
  it.effect("a dispatcher whose scope has closed admits nothing: submit answers undefined, nothing is left unsettled", () =>
    Effect.gen(function*() {
      const metadata = oneColumn
      const pool = ModelPool.of({
        metadata: () => Effect.succeed(metadata),
        run: (_modelId, inputs) => Effect.succeed({ outputs: { y: inputs["x"]! }, deviceUsed: "cpu" }),
        models: Effect.succeed([])
      })
      const scope = yield* Scope.make()
      const dispatcher = yield* Dispatcher.make({ maxConcurrent: 1, maxQueued: 100, enablePriority: true }).pipe(
        Effect.provideService(ModelPool, pool),
        Effect.provide(TelemetryCollector.layerNoop),
        Scope.provide(scope)
      )
      yield* Scope.close(scope, Exit.void)
      const answers: Array<string> = []
      const spec: Scheduler.ModelSpec = { key: "m", instances: 1, depth: 1, batching: BatchPolicy.disabled, maxGroup: 1 }
      const admitted = dispatcher.submit({
        value: {
          request: InferenceRequest.make("m", { x: Tensor.float32(new Float32Array([1]), [1, 1]) }, { requestId: "late" }),
          metadata,
          batching: BatchPolicy.disabled,
          resume: (exit) => void answers.push(Exit.isSuccess(exit) ? "ok" : "failed")
        },
        model: spec,
        priority: "Normal",
        rows: 1,
        batchKey: undefined,
        deadlineAtMs: dispatcher.nowMs() + 1000,
        queueDeadlineAtMs: Infinity
      })
      yield* TestClock.adjust("2 seconds")
      assert.isUndefined(admitted, "refused: no pump will ever dispatch it")
      assert.strictEqual(dispatcher.scheduler.unsettled, 0, "nothing admitted that nobody will answer")
      assert.deepStrictEqual(answers, [])
    }))

  // Mutant (Dispatcher.ts, runMembers): the pool's timeout is 0, not unbounded, for a request without a deadline.
  it.effect("a request without a deadline gives the pool no deadline either (a process pool kills a run past its timeout)", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "10 millis" }) })
      const fiber = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(1), { requestId: "forever", timeout: Duration.infinity }))))
      yield* TestClock.adjust("10 millis")
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(fiber)))
      assert.deepStrictEqual(stats.runTimeoutsMs, [Infinity])
    }))

  // Mutant (Dispatcher.ts, answerFailed): `isRunFailure(exit) && now >= request.deadlineAtMs` → `now >= request.deadlineAtMs`.
  it.live("a run that fails past its caller's deadline for a reason other than RunFailed (the model unloading) keeps that reason", () =>
    Effect.gen(function*() {
      // A clock the test moves, whose sleeps never end: only the pool's failure answers the request.
      const { advance, clock } = stoppedClock()
      const runs: Array<Deferred.Deferred<never, InferenceError.ModelUnavailable>> = []
      const metadata: ModelMetadata.ModelMetadata = { ...oneColumn, concurrency: 1 }
      const pool = ModelPool.of({
        metadata: () => Effect.succeed(metadata),
        metadataUnsafe: () => metadata,
        run: () => Effect.flatMap(Deferred.make<never, InferenceError.ModelUnavailable>(), (d) => Effect.andThen(Effect.sync(() => runs.push(d)), Deferred.await(d))),
        models: Effect.succeed([])
      })
      const engine = yield* engineOver(Layer.succeed(ModelPool, pool), { maxConcurrentRequests: 1 }, { clock })
      const fiber = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("m", { x: Tensor.float32(new Float32Array([1]), [1, 1]) }, { requestId: "a", timeout: "10 millis" }))))
      yield* settle
      assert.strictEqual(runs.length, 1)
      advance(10)
      yield* Deferred.fail(runs[0]!, new InferenceError.ModelUnavailable({ modelId: "m", reason: "unloading" }))
      yield* settle
      const exit = yield* Fiber.join(fiber)
      assert.isTrue(Exit.isFailure(exit))
      const reason = Exit.isFailure(exit) ? (Cause.squash(exit.cause) as InferenceError.InferenceError).reason : undefined
      assert.strictEqual(reason?._tag, "ModelUnavailable", "only a RunFailed past the deadline is the deadline's doing")
    }))

  // Mutant (Dispatcher.ts, dispatch): the run fiber's onExit no longer answers the members it left unanswered.
  it.effect("a pool whose run throws (a bug, not a failed Effect) fails the request at once with RunFailed, not at its deadline", () =>
    Effect.gen(function*() {
      const metadata: ModelMetadata.ModelMetadata = { ...echoMetadata, concurrency: 1 }
      const pool = ModelPool.of({
        metadata: () => Effect.succeed(metadata),
        metadataUnsafe: () => metadata,
        run: () => {
          throw new Error("pool bug")
        },
        models: Effect.succeed([])
      })
      const engine = yield* engineOver(Layer.succeed(ModelPool, pool))
      const fiber = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(1), { timeout: "1 second" }))))
      yield* settle
      const exit = fiber.pollUnsafe()
      assert.isDefined(exit, "answered at once, not left waiting for its deadline")
      const reason = exit !== undefined && Exit.isSuccess(exit) && Exit.isFailure(exit.value) ? (Cause.squash(exit.value.cause) as InferenceError.InferenceError).reason : undefined
      assert.strictEqual(reason?._tag, "RunFailed")
      assert.strictEqual(reason?._tag === "RunFailed" ? reason.detail : undefined, "the run ended with a defect: pool bug")
      assert.strictEqual(yield* engine.pending, 0)
    }))

  // Mutant (Dispatcher.ts, runMembers): `transfer: joined || request.transferInputs === true` → `transfer: request.transferInputs === true`.
  it.effect("a batch the engine concatenated is the pool's own to move (RunOptions.transfer); a request run alone is not, unless its caller gave its inputs away", () =>
    Effect.gen(function*() {
      const transfers: Array<readonly [number, boolean | undefined]> = []
      const metadata: ModelMetadata.ModelMetadata = { ...echoMetadata, concurrency: 1, batching: { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 8 } }
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.succeed(metadata),
        run: (_modelId, inputs, options) =>
          Effect.sync(() => {
            transfers.push([inputs["x"]!.dims[0]!, options.transfer])
            return { outputs: { y: inputs["x"]! }, deviceUsed: "cpu" }
          }),
        models: Effect.succeed([])
      })
      const gate = yield* Latch.make(false)
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 1 }, { gate })
      const batch = yield* Effect.forEach([1, 2], (v) => fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(v))))))
      yield* gate.open
      for (const f of batch) assert.isTrue(Exit.isSuccess(yield* Fiber.join(f)))
      assert.isTrue(Exit.isSuccess(yield* Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(3))))))
      assert.deepStrictEqual(transfers, [[2, true], [1, false]])
    }))

  /**
   * The engine over a pool of the echo model that groups (one instance, one run at a time): each
   * native run takes 1 ms on the Clock and the pool reports no `runMs`; the first group waits for
   * `firstJob` before it starts, so the test can queue a second wave behind it.
   */
  const untimedGroups = Effect.gen(function*() {
    const jobs: Array<string> = []
    const firstJob = yield* Latch.make(false)
    const answer = (i: Tensor.TensorMap) => ({ outputs: { y: i["x"]! }, deviceUsed: "cpu" })
    const pool = Layer.succeed(ModelPool, {
      metadata: () => Effect.succeed({ ...echoMetadata, concurrency: 1 }),
      run: (_modelId, inputs) => Effect.suspend(() => (jobs.push("run"), Effect.as(Effect.sleep("1 millis"), answer(inputs)))),
      runGroup: (_modelId, inputs) =>
        Effect.suspend(() => {
          jobs.push(`group of ${inputs.length}`)
          const runs = Effect.as(Effect.sleep(Duration.millis(inputs.length)), inputs.map((i) => Exit.succeed(answer(i))))
          return jobs.length === 1 ? Effect.andThen(firstJob.await, runs) : runs
        }),
      models: Effect.succeed([])
    })
    const gate = yield* Latch.make(false)
    const context = yield* Layer.build(AsyncInferenceEngine.layer.pipe(
      Layer.provideMerge(Layer.mergeAll(pool, layerRecording, AsyncConfigService.layerWith({ maxConcurrentRequests: 1 })))
    )).pipe(Effect.provideService(DispatchGate, gate.await))
    const engine = Context.get(context, AsyncInferenceEngine)
    const infer = (v: number) => fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(v)))))
    return { engine, jobs, firstJob, gate, infer, log: Context.get(context, TelemetryLog) }
  })

  // Mutant (Dispatcher.ts, runGroup): `o.value.runMs ?? NaN` → `o.value.runMs ?? 0` (a pool that does not time its runs).
  it.effect("a group the pool did not time is sized by its wall time per member: 1 ms a run leaves room for one run a group", () =>
    Effect.gen(function*() {
      const { firstJob, gate, infer, jobs } = yield* untimedGroups
      const first = yield* Effect.forEach([1, 2, 3, 4], infer)
      yield* gate.open
      yield* settle
      const second = yield* Effect.forEach([5, 6, 7, 8], infer)
      yield* firstJob.open
      yield* TestClock.adjust("20 millis")
      for (const f of [...first, ...second]) assert.isTrue(Exit.isSuccess(yield* Fiber.join(f)))
      // 4 ms for 4 runs: 1 ms each fills the 1 ms group budget (Scheduler.groupCap); taken as 0 ms, the next group would be 4
      assert.deepStrictEqual(jobs, ["group of 4", "run", "run", "run", "run"])
    }))

  // Mutant (Dispatcher.ts, runGroup): `outcome.value.runMs ?? wallMs` → `outcome.value.runMs ?? 0` in the run's telemetry.
  it.effect("each run of a group the pool did not time is recorded with the group's wall time per member, not 0", () =>
    Effect.gen(function*() {
      const { firstJob, gate, infer, log } = yield* untimedGroups
      const fibers = yield* Effect.forEach([1, 2, 3, 4], infer)
      yield* firstJob.open
      yield* gate.open
      yield* settle
      yield* TestClock.adjust("4 millis")
      for (const f of fibers) assert.isTrue(Exit.isSuccess(yield* Fiber.join(f)))
      const runs = log.events.flatMap((e) => e._tag === "run" ? [[e.runMs, e.batchSize]] : [])
      assert.deepStrictEqual(runs, [[1, 1], [1, 1], [1, 1], [1, 1]], "4 ms for the group of 4: 1 ms each")
    }))

  // Mutant (Dispatcher.ts, runMembers): `Exit.isFailure(exit) && joined && isRunFailure(exit)` → `Exit.isFailure(exit) && joined`.
  it.effect("a batch whose job fails for a reason other than the run (the model unloading) is not run again member by member", () =>
    Effect.gen(function*() {
      let runs = 0
      const metadata: ModelMetadata.ModelMetadata = { ...echoMetadata, concurrency: 1, batching: { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 8 } }
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.succeed(metadata),
        run: (modelId) => Effect.suspend(() => (runs++, Effect.fail(new InferenceError.ModelUnavailable({ modelId, reason: "unloading" })))),
        models: Effect.succeed([])
      })
      const gate = yield* Latch.make(false)
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 1 }, { gate })
      const fibers = yield* Effect.forEach([1, 2, 3], (v) => fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(v))))))
      yield* gate.open
      for (const f of fibers) {
        const exit = yield* Fiber.join(f)
        const reason = Exit.isFailure(exit) ? (Cause.squash(exit.cause) as InferenceError.InferenceError).reason : undefined
        assert.strictEqual(reason?._tag, "ModelUnavailable")
      }
      assert.strictEqual(runs, 1, "one batched job, not run again alone")
    }))

  // Mutant (Dispatcher.ts, make's cancel): `schedule(state)` after a cancel dropped.
  it.effect("cancelling the last member of a forming batch frees its permit at once: a request waiting for one runs now, not at the batch's delay", () =>
    Effect.gen(function*() {
      const width = (n: number) => ({ x: Tensor.float32(new Float32Array(n).fill(1), [1, n]) })
      const model = (name: string, batching?: BatchPolicy.BatchingConfig): ModelMetadata.ModelMetadata => ({
        ...echoMetadata,
        name,
        concurrency: 2,
        inputs: [{ name: "x", dtype: "float32", dims: [-1, -1] }],
        outputs: [{ name: "y", dtype: "float32", dims: [-1, -1] }],
        ...(batching === undefined ? {} : { batching })
      })
      const models: Record<string, ModelMetadata.ModelMetadata> = {
        x: model("x", { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 8, maxQueueDelay: Duration.millis(40) }),
        y: model("y")
      }
      const started: Record<string, number> = {}
      const pool = Layer.succeed(ModelPool, {
        metadata: (modelId) => Effect.succeed(models[modelId]!),
        run: (_modelId, inputs, options) =>
          Effect.gen(function*() {
            started[options.requestId] = yield* Clock.currentTimeMillis
            yield* Effect.sleep(options.requestId === "long" ? "100 millis" : "2 millis")
            return { outputs: { y: inputs["x"]! }, deviceUsed: "cpu" }
          }),
        models: Effect.succeed([])
      })
      const engine = yield* engineOver(pool, { maxConcurrentRequests: 2 })
      yield* fork(engine.infer(InferenceRequest.make("x", width(4), { requestId: "long" })))
      yield* TestClock.adjust("1 millis")
      // x is busy: this one forms a batch (its 40 ms delay), holding the second permit
      const forming = yield* fork(engine.infer(InferenceRequest.make("x", width(4), { requestId: "forming", priority: "Low" })))
      yield* TestClock.adjust("1 millis")
      const waiting = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("y", width(4), { requestId: "waiting", priority: "Low" }))))
      yield* TestClock.adjust("1 millis")
      assert.deepInclude(yield* engine.diagnostics, { forming: 1, queued: 1, runs: 1 })
      yield* Fiber.interrupt(forming)
      yield* settle
      assert.strictEqual(started["waiting"]! - started["long"]!, 3, "y's request ran once the permit was free")
      yield* TestClock.adjust("2 millis")
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(waiting)))
    }))

  // Mutant (Dispatcher.ts, asRunExit): `|| Cause.hasInterruptsOnly(exit.cause)` dropped.
  it.effect("a run the pool ends by interruption (its own close) answers ShuttingDown, not RunFailed", () =>
    Effect.gen(function*() {
      const metadata: ModelMetadata.ModelMetadata = { ...echoMetadata, concurrency: 1 }
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.succeed(metadata),
        run: () => Effect.interrupt,
        models: Effect.succeed([])
      })
      const engine = yield* engineOver(pool)
      const exit = yield* Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(1))))
      const reason = Exit.isFailure(exit) ? (Cause.squash(exit.cause) as InferenceError.InferenceError).reason : undefined
      assert.strictEqual(reason?._tag, "ShuttingDown")
    }))

  // Mutant (Dispatcher.ts, runGroup): the group's pool timeout taken from its first member's deadline, not its latest.
  it.effect("a group's run may last until its latest member's deadline when that member came last", () =>
    Effect.gen(function*() {
      const metadata = oneColumn
      const timeouts: Array<number> = []
      const output = (x: Tensor.Tensor) => ({ outputs: { y: x }, deviceUsed: "cpu" })
      const pool = ModelPool.of({
        metadata: () => Effect.succeed(metadata),
        run: (_modelId, inputs, options) => Effect.sync(() => (timeouts.push(Duration.toMillis(options.timeout!)), output(inputs["x"]!))),
        runGroup: (_modelId, inputs, options) => Effect.sync(() => (timeouts.push(Duration.toMillis(options.timeout!)), inputs.map((i) => Exit.succeed(output(i["x"]!))))),
        models: Effect.succeed([])
      })
      const dispatcher = yield* Dispatcher.make({ maxConcurrent: 1, maxQueued: 100, enablePriority: true }).pipe(
        Effect.provideService(ModelPool, pool),
        Effect.provide(TelemetryCollector.layerNoop)
      )
      const answers: Record<string, string> = {}
      const spec: Scheduler.ModelSpec = { key: "grouped", instances: 1, depth: 1, batching: BatchPolicy.disabled, maxGroup: 4 }
      for (const [requestId, deadlineInMs] of [["early", 10], ["late", 100]] as const) {
        dispatcher.submit({
          value: {
            request: InferenceRequest.make("m", { x: Tensor.float32(new Float32Array([1]), [1, 1]) }, { requestId }),
            metadata,
            batching: BatchPolicy.disabled,
            resume: (exit) => void (answers[requestId] = Exit.isSuccess(exit) ? "ok" : String(exit))
          },
          model: spec,
          priority: "Normal",
          rows: 1,
          batchKey: undefined,
          deadlineAtMs: dispatcher.nowMs() + deadlineInMs,
          queueDeadlineAtMs: Infinity
        })
      }
      yield* TestClock.adjust("1 millis")
      assert.deepStrictEqual(answers, { early: "ok", late: "ok" })
      assert.deepStrictEqual(timeouts, [100], "one job, until the later deadline")
    }))

  // Mutant (Dispatcher.ts, runGroup): the members past their deadline are no longer answered before the group's members run again alone.
  it.live("a group whose job fails at its members' deadline answers them DeadlineExceeded and runs none of them again", () =>
    Effect.gen(function*() {
      // A clock the test moves, whose sleeps never end: only the pool's failure answers the requests.
      const { advance, clock } = stoppedClock()
      const jobs: Array<string> = []
      const groups: Array<Deferred.Deferred<never, InferenceError.RunFailed>> = []
      const metadata: ModelMetadata.ModelMetadata = { ...oneColumn, concurrency: 1 }
      const pool = ModelPool.of({
        metadata: () => Effect.succeed(metadata),
        metadataUnsafe: () => metadata,
        run: (_modelId, inputs) => Effect.sync(() => (jobs.push("run"), { outputs: { y: inputs["x"]! }, deviceUsed: "cpu" })),
        runGroup: () => Effect.flatMap(Deferred.make<never, InferenceError.RunFailed>(), (d) => Effect.andThen(Effect.sync(() => (jobs.push("group"), groups.push(d))), Deferred.await(d))),
        models: Effect.succeed([])
      })
      const gate = yield* Latch.make(false)
      const engine = yield* engineOver(Layer.succeed(ModelPool, pool), { maxConcurrentRequests: 1 }, { clock, gate })
      const fibers = yield* Effect.forEach(["a", "b"], (requestId) =>
        fork(Effect.exit(engine.infer(InferenceRequest.make("m", { x: Tensor.float32(new Float32Array([1]), [1, 1]) }, { requestId, timeout: "10 millis" })))))
      yield* gate.open
      yield* settle
      assert.deepStrictEqual(jobs, ["group"])
      advance(10)
      yield* Deferred.fail(groups[0]!, new InferenceError.RunFailed({ modelId: "m", requestId: "a", detail: "killed at its deadline" }))
      yield* settle
      for (const f of fibers) {
        const exit = yield* Fiber.join(f)
        const reason = Exit.isFailure(exit) ? (Cause.squash(exit.cause) as InferenceError.InferenceError).reason : undefined
        assert.strictEqual(reason?._tag, "DeadlineExceeded")
      }
      assert.deepStrictEqual(jobs, ["group"], "not run again member by member")
    }))

  // Mutant (Engine.ts, recordFailure): the `case "Cancelled"` dropped (a cancel counted as a failure).
  it.effect("an edge's refusal of a request whose client left before it reached the engine is counted as cancelled, not as a failure", () =>
    Effect.gen(function*() {
      const { engine, outcomes } = yield* makeHarness()
      yield* engine.recordRefused("echo", new InferenceError.Cancelled({ requestId: "", reason: "the client disconnected before its request reached the engine" }), "1")
      assert.deepInclude(outcomes(), { start: 1, cancelled: 1, failure: 0 })
    }))

  // Mutant (Engine.ts, submit): `state.queueTimeoutMs > 0 ? queuedMs + state.queueTimeoutMs : Infinity` → `queuedMs + state.queueTimeoutMs`.
  it.effect("a queueTimeout of 0 is no queue timeout: a request that waits for a busy engine is not timed out at once", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "10 millis" }), config: { maxConcurrentRequests: 1, queueTimeout: Duration.zero } })
      const first = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(1), { requestId: "first" }))))
      yield* Effect.yieldNow
      const second = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(2), { requestId: "second" }))))
      yield* TestClock.adjust("20 millis")
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(first)))
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(second)), "it waited 10 ms in the queue, then ran")
      assert.deepStrictEqual(stats.order, ["first", "second"])
    }))

  /** The engine over the fake echo pool given a `metadataUnsafe` (the admission path without an Effect), one run at a time. */
  const engineWithUnsafeLookup = Effect.gen(function*() {
    const fake = yield* makeFake(() => ({ latency: "10 millis" }), undefined, 1)
    const metadata: ModelMetadata.ModelMetadata = { ...echoMetadata, concurrency: 1 }
    const pool = ModelPool.of({
      ...fake.pool,
      metadataUnsafe: (modelId) => modelId === "echo" ? metadata : new InferenceError.ModelNotFound({ modelId })
    })
    return { engine: yield* engineOver(Layer.succeed(ModelPool, pool), { maxConcurrentRequests: 1 }), stats: fake.stats }
  })

  // Mutant (Engine.ts, submit's cleanup): `noteSettled(state)` after a cancel dropped.
  it.effect("a drain whose last request is cancelled ends then, drained, not at its grace", () =>
    Effect.gen(function*() {
      const { engine } = yield* makeHarness({ script: () => ({ latency: "10 millis" }), config: { maxConcurrentRequests: 1 } })
      const running = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(1), { requestId: "running" }))))
      yield* Effect.yieldNow
      const queued = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(2), { requestId: "queued" }))))
      yield* Effect.yieldNow
      const drain = yield* fork(engine.drain("1 minute"))
      yield* TestClock.adjust("10 millis")
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(running)))
      // "queued" ran after "running"; interrupt the fiber while it runs: the last request, cancelled
      yield* Fiber.interrupt(queued)
      yield* TestClock.adjust("1 millis")
      const done = drain.pollUnsafe()
      assert.isDefined(done, "the drain ended with the cancel")
      assert.deepStrictEqual(done !== undefined && Exit.isSuccess(done) ? done.value : undefined, { drained: true })
    }))

  // Mutant (Engine.ts, inferUnsafe): the `once` guard `if (!open) return` dropped.
  it.effect("inferUnsafe through the metadata Effect: once cancelled, onExit is never called", () =>
    Effect.gen(function*() {
      const { engine } = yield* makeHarness({ script: () => ({ latency: "10 millis" }) })
      const calls: Array<string> = []
      const cancel = engine.inferUnsafe(InferenceRequest.make("echo", echoInputs(1)), (exit) => void calls.push(exit._tag))
      yield* Effect.yieldNow
      cancel()
      yield* TestClock.adjust("20 millis")
      yield* settle
      assert.deepStrictEqual(calls, [])
    }))

  // Mutant (Engine.ts, inferUnsafe): `cancel?.()` dropped from the function it returns (the metadataUnsafe path).
  it.effect("inferUnsafe without an Effect: its cancel takes a queued request out of the queue; it never runs", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* engineWithUnsafeLookup
      const calls: Array<string> = []
      engine.inferUnsafe(InferenceRequest.make("echo", echoInputs(1), { requestId: "running" }), (exit) => void calls.push(exit._tag))
      const cancel = engine.inferUnsafe(InferenceRequest.make("echo", echoInputs(2), { requestId: "queued" }), (exit) => void calls.push(exit._tag))
      yield* settle
      cancel()
      assert.strictEqual(yield* engine.pending, 1, "only the running one is left")
      yield* TestClock.adjust("30 millis")
      assert.deepStrictEqual(stats.order, ["running"])
      assert.deepStrictEqual(calls, ["Success"])
    }))

  // Mutant (Engine.ts, admitNow): `state.draining ? new InferenceError.ShuttingDown({}) : lookup(...)` → `lookup(...)`.
  it.effect("once draining, a request for a model the pool does not have is answered ShuttingDown, as on the Effect path", () =>
    Effect.gen(function*() {
      const { engine } = yield* engineWithUnsafeLookup
      assert.deepStrictEqual(yield* engine.drain("1 second"), { drained: true })
      const exit = yield* Effect.exit(engine.infer(InferenceRequest.make("made-up", echoInputs(1))))
      const reason = Exit.isFailure(exit) ? (Cause.squash(exit.cause) as InferenceError.InferenceError).reason : undefined
      assert.strictEqual(reason?._tag, "ShuttingDown")
    }))

  // Mutant (Engine.ts, admitEffect): the lookup's time limit `timeoutMs - spentMs` → `timeoutMs`.
  it.effect("the deadline cuts a slow metadata lookup short by what the edge already spent (spentMs)", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({ metadataDelay: "100 millis" })
      const fiber = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(1), { timeout: "100 millis" }), { spentMs: 60 })))
      yield* TestClock.adjust("40 millis")
      const exit = fiber.pollUnsafe()
      assert.isDefined(exit, "answered at its deadline: 40 ms after the call, 100 ms after the edge began")
      const reason = exit !== undefined && Exit.isSuccess(exit) && Exit.isFailure(exit.value) ? (Cause.squash(exit.value.cause) as InferenceError.InferenceError).reason : undefined
      assert.strictEqual(reason?._tag, "DeadlineExceeded")
      assert.strictEqual(stats.started, 0)
    }))

  // Mutant (Engine.ts, toResult): `case "QueueTimeout":` dropped from the TimedOut results.
  it.effect("inferResult answers a request that waited past queueTimeout as TimedOut", () =>
    Effect.gen(function*() {
      const { engine } = yield* makeHarness({ script: () => ({ latency: "100 millis" }), config: { maxConcurrentRequests: 1, queueTimeout: Duration.millis(20) } })
      yield* fork(engine.inferResult(InferenceRequest.make("echo", echoInputs(1), { requestId: "busy" })))
      yield* Effect.yieldNow
      const waiting = yield* fork(engine.inferResult(InferenceRequest.make("echo", echoInputs(2), { requestId: "waiting" })))
      yield* TestClock.adjust("30 millis")
      const result = yield* Fiber.join(waiting)
      assert.strictEqual(result._tag, "TimedOut")
    }))

  // Mutant (Engine.ts, refusal): the batching model's rows check (`Batch.rowsDisagreement`) dropped.
  it.effect("a batching model refuses at admission a request whose inputs disagree on their rows (InvalidInput), running nothing", () =>
    Effect.gen(function*() {
      let runs = 0
      const metadata: ModelMetadata.ModelMetadata = {
        ...echoMetadata,
        inputs: [{ name: "a", dtype: "float32", dims: [-1, 1] }, { name: "b", dtype: "float32", dims: [-1, 1] }],
        batching: { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 8 }
      }
      const pool = Layer.succeed(ModelPool, {
        metadata: () => Effect.succeed(metadata),
        run: (_modelId, inputs) => Effect.sync(() => (runs++, { outputs: { y: inputs["a"]! }, deviceUsed: "cpu" })),
        models: Effect.succeed([])
      })
      const engine = yield* engineOver(pool)
      const inputs = { a: Tensor.float32(new Float32Array([1]), [1, 1]), b: Tensor.float32(new Float32Array([1, 2]), [2, 1]) }
      const exit = yield* Effect.exit(engine.infer(InferenceRequest.make("echo", inputs)))
      const reason = Exit.isFailure(exit) ? (Cause.squash(exit.cause) as InferenceError.InferenceError).reason : undefined
      assert.strictEqual(reason?._tag, "InvalidInput")
      assert.strictEqual(runs, 0)
    }))

  // Mutant (Engine.ts, drain): `if (o._tag === "None") state.dispatcher.refuseWaiting()` dropped.
  it.effect("a drain whose grace has passed answers the requests still queued with ShuttingDown at once; the run goes on", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "100 millis" }), config: { maxConcurrentRequests: 1 } })
      const running = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(1), { requestId: "running" }))))
      yield* Effect.yieldNow
      const queued = yield* fork(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(2), { requestId: "queued" }))))
      yield* Effect.yieldNow
      const drain = yield* fork(engine.drain("10 millis"))
      yield* TestClock.adjust("10 millis")
      assert.deepStrictEqual(yield* Fiber.join(drain), { drained: false })
      const exit = queued.pollUnsafe()
      assert.isDefined(exit, "answered when the grace ran out")
      const reason = exit !== undefined && Exit.isSuccess(exit) && Exit.isFailure(exit.value) ? (Cause.squash(exit.value.cause) as InferenceError.InferenceError).reason : undefined
      assert.strictEqual(reason?._tag, "ShuttingDown")
      yield* TestClock.adjust("100 millis")
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(running)))
      assert.deepStrictEqual(stats.order, ["running"])
    }))

  // Mutant (Engine.ts, admitsUnsafe): `!state.draining &&` dropped.
  it.effect("admitsUnsafe says no once the engine drains, as admission would (ShuttingDown)", () =>
    Effect.gen(function*() {
      const { engine } = yield* makeHarness()
      assert.isTrue(engine.admitsUnsafe())
      assert.deepStrictEqual(yield* engine.drain("1 second"), { drained: true })
      assert.isFalse(engine.admitsUnsafe())
    }))
})
