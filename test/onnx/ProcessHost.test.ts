import { assert, describe, it, layer } from "@effect/vitest"
import * as Fs from "node:fs"
import { Context, Duration, Effect, Exit, Fiber, Layer, References, Scope } from "effect"
import { AsyncConfigService } from "../../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import * as InferenceRequest from "../../src/InferenceRequest.ts"
import * as ModelRepository from "../../src/ModelRepository.ts"
import * as Mlp from "../../scripts/Mlp.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import { layerRecording } from "../../src/Telemetry.ts"
import * as Tensor from "../../src/Tensor.ts"
import { maxAbsDiff, mlpBytes, sampleInput, tempRepository } from "../fixtures/ModelRepositoryFixture.ts"
import * as TestOps from "../fixtures/TestOps.ts"

const mlpInputs = (batch: number, seed = 7) => ({ input: Tensor.float32(sampleInput(batch, seed), [batch, 784]) })
const now = () => performance.now()
const quiet = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.provideService(self, References.MinimumLogLevel, "Error")

/** Whether a process with this pid exists (`kill(pid, 0)` only checks). */
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    if ((e as { code?: unknown }).code === "ESRCH") return false
    throw e
  }
}

/** Polls `check` every 10 ms until it holds, failing after `ms`. */
const eventually = (what: string, check: () => boolean, ms = 10_000) =>
  Effect.gen(function*() {
    const deadline = now() + ms
    while (!check()) {
      if (now() > deadline) return yield* Effect.die(new Error(`timed out waiting for: ${what}`))
      yield* Effect.sleep(10)
    }
  })

const runFailed = (e: unknown): InferenceError.RunFailed => {
  assert.instanceOf(e, InferenceError.RunFailed)
  return e as InferenceError.RunFailed
}

const KILL_GRACE_MS = 400

/** A pool on a temp repository: `proc` (2 instances in child processes) and `thread` (1 worker thread), both the MLP. */
const poolLayer = (options: { readonly closeTimeout?: Duration.Input } = {}) =>
  Layer.effectContext(
    Effect.gen(function*() {
      const repository = yield* tempRepository({
        "proc/model.onnx": mlpBytes(),
        "proc/config.json": JSON.stringify({ instances: 2, isolation: "process", killGraceMs: KILL_GRACE_MS }),
        "thread/model.onnx": mlpBytes(),
        "thread/config.json": JSON.stringify({ instances: 1 })
      })
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, respawnAttempts: 3, closeTimeout: options.closeTimeout }))
      return Context.make(OnnxModelPool.OnnxModelPool, pool)
    })
  )

const pidsOf = (pool: OnnxModelPool.Service, model = "proc") =>
  Effect.map(pool.info, (all) => all.find((m) => m.name === model)?.pids ?? [])

/** Both `proc` instances live and idle: what an earlier test left running has ended. */
const settled = (pool: OnnxModelPool.Service) =>
  eventually("both proc instances live and idle", () => {
    const stats = pool.stats("proc")
    return stats?.live === 2 && stats.busy === 0
  })

layer(poolLayer(), { excludeTestServices: true })("ProcessHost: sessions in child processes", (it) => {
  it.effect("runs the mlp in child processes with exactly the thread's results", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      const info = Object.fromEntries((yield* pool.info).map((m) => [m.name, m]))
      assert.strictEqual(info["proc"]!.state, "READY")
      assert.strictEqual(info["proc"]!.isolation, "process")
      assert.strictEqual(info["thread"]!.isolation, "thread")
      assert.isUndefined(info["thread"]!.pids)
      const pids = info["proc"]!.pids!
      assert.strictEqual(new Set(pids).size, 2)
      for (const pid of pids) {
        assert.notStrictEqual(pid, process.pid)
        assert.isTrue(alive(pid))
      }
      // 100 rows (313 KB in) cross through shared memory one way, 2,048 rows (6.4 MB in, 82 KB out) both ways.
      for (const batch of [1, 5, 100, 2048]) {
        const inputs = mlpInputs(batch, batch)
        const before = Float32Array.from(inputs.input.data)
        const proc = yield* pool.run("proc", inputs, { requestId: `proc-${batch}` })
        const thread = yield* pool.run("thread", inputs, { requestId: `thread-${batch}` })
        const logits = proc.outputs["logits"]!
        assert.deepStrictEqual(logits.dims, [batch, 10])
        assert.strictEqual(proc.deviceUsed, "cpu")
        assert.instanceOf(logits.data, Float32Array)
        assert.strictEqual(logits.data.byteLength, batch * 10 * 4, "an exact-size output buffer")
        assert.deepStrictEqual(logits.data, thread.outputs["logits"]!.data, "bit for bit the thread's output")
        assert.isBelow(maxAbsDiff(logits.data as Float32Array, Mlp.forward(Mlp.weights(), inputs.input.data, batch)), 1e-5)
        assert.deepStrictEqual(inputs.input.data, before, "the caller's input is untouched")
      }
    }))

  it.effect("hands each child its shared-memory files, unlinked, and answers concurrent large runs each with its own rows", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      yield* settled(pool)
      for (const pid of (yield* pidsOf(pool)) as ReadonlyArray<number>) {
        for (const fd of [4, 5]) assert.match(Fs.readlinkSync(`/proc/${pid}/fd/${fd}`), /^\/dev\/shm\/effect-onnx-.* \(deleted\)$/)
      }
      const seeds = Array.from({ length: 16 }, (_, i) => i + 100)
      const results = yield* Effect.forEach(seeds, (seed) => pool.run("proc", mlpInputs(100, seed), { requestId: `shm-${seed}` }), { concurrency: "unbounded" })
      for (const [i, seed] of seeds.entries()) {
        const expected = yield* pool.run("thread", mlpInputs(100, seed), { requestId: `shm-thread-${seed}` })
        assert.deepStrictEqual(results[i]!.outputs["logits"]!.data, expected.outputs["logits"]!.data, `seed ${seed}`)
      }
    }))

  it.effect("lets a run that ends within its deadline plus the kill grace finish", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      yield* settled(pool)
      const kills = pool.counters.deadlineKills
      const out = yield* TestOps.run(pool, "proc", { _tag: "spin", ms: 150 }, { requestId: "late-but-in-grace", timeout: Duration.millis(50) })
      assert.isAtLeast(out.runMs, 150)
      assert.strictEqual(pool.counters.deadlineKills, kills)
    }))

  it.effect("kills a run that outlives its deadline by the kill grace at once; the other instance is unaffected; the replacement serves", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      yield* settled(pool)
      const { crashes, deadlineKills, respawns } = pool.counters
      const before = yield* pidsOf(pool)
      // a bystander without a deadline holds the other instance through the kill
      const bystander = yield* Effect.forkChild(TestOps.run(pool, "proc", { _tag: "spin", ms: 700 }, { requestId: "bystander" }), { startImmediately: true })
      yield* Effect.sleep(30)
      const timeoutMs = 100
      const t0 = now()
      const error = runFailed(yield* Effect.flip(TestOps.run(pool, "proc", { _tag: "spin", ms: 30_000 }, { requestId: "runaway", timeout: Duration.millis(timeoutMs) })))
      const elapsedMs = now() - t0
      const lateMs = elapsedMs - (timeoutMs + KILL_GRACE_MS)
      assert.strictEqual(error.requestId, "runaway")
      const over = new RegExp(`^killed after exceeding its deadline by (\\d+) ms \\(kill grace ${KILL_GRACE_MS} ms\\); the session process was replaced$`).exec(error.detail)
      assert.isNotNull(over, error.detail)
      assert.isAtLeast(lateMs, -5, `failed ${elapsedMs.toFixed(0)} ms after the call`)
      // the kill timer's own lateness, a few ms when the event loop is free; generous for a loaded machine
      const timerLateMs = Number(over![1]) - KILL_GRACE_MS
      assert.isBelow(lateMs, 400, `failed ${lateMs.toFixed(0)} ms after deadline + grace (kill timer ${timerLateMs} ms late)`)
      yield* eventually("the runaway's process is gone", () => before.some((pid) => !alive(pid)), 2_000)
      const killed = before.filter((pid) => !alive(pid))
      assert.strictEqual(killed.length, 1, "exactly the runaway's process is gone")

      assert.isTrue(Exit.isSuccess(yield* Fiber.await(bystander)), "the bystander's run on the other process succeeded")
      assert.strictEqual(pool.counters.deadlineKills, deadlineKills + 1)
      assert.strictEqual(pool.counters.crashes, crashes, "a deadline kill is not a crash")
      yield* eventually("the replacement", () => pool.counters.respawns === respawns + 1 && pool.stats("proc")?.live === 2)
      const after = yield* pidsOf(pool)
      assert.strictEqual(after.length, 2)
      assert.notInclude(after, killed[0])
      // both instances serve again, the replacement included
      const outs = yield* Effect.all([
        TestOps.run(pool, "proc", { _tag: "spin", ms: 100 }, { requestId: "a" }),
        pool.run("proc", mlpInputs(3), { requestId: "b", timeout: Duration.seconds(5) })
      ], { concurrency: "unbounded" })
      assert.deepStrictEqual(outs[1].outputs["logits"]!.dims, [3, 10])
      assert.strictEqual(pool.counters.deadlineKills, deadlineKills + 1)
    }))

  it.effect("stops a run whose caller was interrupted: its process is killed after the kill grace, and the interruption returns then", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      yield* settled(pool)
      const proc = yield* pool.metadata("proc")
      const thread = yield* pool.metadata("thread")
      assert.isTrue(proc.stopsAbandonedRuns, "the engine may interrupt a begun run of a process")
      assert.isUndefined(thread.stopsAbandonedRuns, "a thread's run cannot be stopped")
      const { abandonKills, crashes, deadlineKills, respawns } = pool.counters
      const before = yield* pidsOf(pool)
      const runaway = yield* Effect.forkChild(TestOps.run(pool, "proc", { _tag: "spin", ms: 30_000 }, { requestId: "abandoned" }), { startImmediately: true })
      yield* eventually("the run began", () => pool.stats("proc")?.busy === 1)
      const t0 = now()
      yield* Fiber.interrupt(runaway)
      const waitedMs = now() - t0
      assert.isAtLeast(waitedMs, KILL_GRACE_MS - 5, "the interruption waits for the kill")
      assert.isBelow(waitedMs, KILL_GRACE_MS + 1_000, "and no longer than the grace, give or take a loaded machine")
      assert.strictEqual(pool.counters.abandonKills, abandonKills + 1)
      assert.strictEqual(pool.counters.deadlineKills, deadlineKills)
      yield* eventually("its process is gone", () => before.some((pid) => !alive(pid)), 2_000)
      assert.strictEqual(before.filter((pid) => !alive(pid)).length, 1, "exactly one process was killed")
      assert.strictEqual(pool.counters.crashes, crashes, "a kill is not a crash")
      yield* eventually("the replacement", () => pool.counters.respawns === respawns + 1 && pool.stats("proc")?.live === 2)
      const out = yield* pool.run("proc", mlpInputs(2), { requestId: "after" })
      assert.deepStrictEqual(out.outputs["logits"]!.dims, [2, 10])
    }))

  it.effect("fails a job whose deadline passed while it waited, without sending it", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      yield* settled(pool)
      const { deadlineKills, expiredUnsent, replies } = pool.counters
      const blockers = yield* Effect.forEach(
        ["b1", "b2"],
        (id) => Effect.forkChild(TestOps.run(pool, "proc", { _tag: "spin", ms: 300 }, { requestId: id }), { startImmediately: true })
      )
      yield* Effect.sleep(20)
      const error = runFailed(yield* Effect.flip(pool.run("proc", mlpInputs(1), { requestId: "expired", timeout: Duration.millis(50) })))
      assert.match(error.detail, /^not run: its deadline passed \d+ ms ago while it waited for an instance$/)
      for (const f of blockers) assert.isTrue(Exit.isSuccess(yield* Fiber.await(f)))
      assert.strictEqual(pool.counters.expiredUnsent, expiredUnsent + 1)
      assert.strictEqual(pool.counters.deadlineKills, deadlineKills)
      assert.strictEqual(pool.counters.replies, replies + 2, "only the blockers reached an instance")
    }))

  it.effect("a native crash in a child (abort, SIGSEGV) fails only its own run; the process is replaced and the parent keeps serving", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      yield* settled(pool)
      const crashes0 = pool.counters.crashes
      const cases: Array<[TestOps.TestOp, RegExp]> = [
        [{ _tag: "abort" }, /^the session process running the model died \(signal SIGABRT\)$/],
        [{ _tag: "signal", signal: "SIGSEGV" }, /^the session process running the model died \(signal SIGSEGV\)$/],
        [{ _tag: "throwUncaught" }, /died \(exit code 1; Error: test op: uncaught exception/]
      ]
      for (const [op, detail] of cases) {
        yield* eventually("two live instances", () => pool.stats("proc")?.live === 2)
        const bystander = yield* Effect.forkChild(TestOps.run(pool, "proc", { _tag: "spin", ms: 300 }, { requestId: "bystander" }), { startImmediately: true })
        yield* Effect.sleep(20)
        const error = runFailed(yield* Effect.flip(TestOps.run(pool, "proc", op, { requestId: `crash-${op._tag}` })))
        assert.strictEqual(error.requestId, `crash-${op._tag}`)
        assert.match(error.detail, detail)
        // the parent keeps serving: a request queued meanwhile, and the thread model
        const during = yield* pool.run("proc", mlpInputs(2), { requestId: "during" })
        assert.deepStrictEqual(during.outputs["logits"]!.dims, [2, 10])
        yield* pool.run("thread", mlpInputs(1), { requestId: "thread" })
        assert.isTrue(Exit.isSuccess(yield* Fiber.await(bystander)), "the bystander's run on the other process succeeded")
      }
      yield* eventually("two live instances", () => pool.stats("proc")?.live === 2)
      assert.strictEqual(pool.counters.crashes, crashes0 + 3)
      assert.deepStrictEqual((yield* pool.models).find((m) => m.name === "proc"), { name: "proc", version: "1", state: "READY" })
    }))

  it.effect("refuses the crash test ops in a thread, where they would end the whole process", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      for (const op of [{ _tag: "abort" }, { _tag: "signal", signal: "SIGSEGV" }] as const) {
        const error = runFailed(yield* Effect.flip(TestOps.run(pool, "thread", op, { requestId: op._tag })))
        assert.match(error.detail, /needs isolation "process"/)
      }
      yield* pool.run("thread", mlpInputs(1), { requestId: "after" })
    }))
})

describe("ProcessHost lifecycle", () => {
  it.live("leaves no child process behind: every pid ever spawned is gone after the scope closes, a stuck one SIGKILLed", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(poolLayer({ closeTimeout: "1 second" }), scope)
      const pool = Context.get(context, OnnxModelPool.OnnxModelPool)
      const seen = new Set<number>()
      const note = Effect.map(pidsOf(pool), (pids) => pids.forEach((pid) => seen.add(pid)))
      yield* note
      // one crash and one deadline kill: two replacements
      yield* Effect.flip(TestOps.run(pool, "proc", { _tag: "exit", code: 7 }, { requestId: "crash" }))
      yield* Effect.flip(TestOps.run(pool, "proc", { _tag: "spin", ms: 30_000 }, { requestId: "runaway", timeout: Duration.millis(10) }))
      yield* eventually("both replacements", () => pool.counters.respawns === 2 && pool.stats("proc")?.live === 2)
      yield* note
      assert.strictEqual(seen.size, 4)
      // close with one instance stuck (no deadline) and the others idle: the stuck one is SIGKILLed after closeTimeout
      const stuck = yield* Effect.forkDetach(TestOps.run(pool, "proc", { _tag: "spin", ms: 30_000 }, { requestId: "stuck" }), { startImmediately: true })
      yield* Effect.sleep(30)
      const t0 = now()
      yield* Scope.close(scope, Exit.void)
      const closeMs = now() - t0
      assert.isAtLeast(closeMs, 950, `close waited ${closeMs.toFixed(0)} ms for the stuck run`)
      assert.isBelow(closeMs, 3_000, `close took ${closeMs.toFixed(0)} ms`)
      const stuckError = runFailed(yield* Effect.flip(Fiber.join(stuck)))
      assert.match(stuckError.detail, /died \(signal SIGKILL\)/)

      const c = pool.counters
      assert.strictEqual(c.workersSpawned, 2 + 2 + 1, "2 proc + 2 replacements + 1 thread")
      assert.strictEqual(c.workersExited, c.workersSpawned, "every instance exited")
      assert.strictEqual(c.sessionsOpened, c.sessionsClosed + c.sessionsLost)
      assert.strictEqual(c.sessionsLost, 3, "crash, deadline kill and the forced close")
      assert.strictEqual(c.forcedTerminations, 1, "only the stuck instance was killed; the idle ones exited gracefully")
      for (const pid of seen) assert.isFalse(alive(pid), `pid ${pid} is gone`)
    }))
})

describe("config.json isolation and killGraceMs", () => {
  const configError = (json: unknown) =>
    Effect.map(Effect.flip(ModelRepository.decodeConfig(json)), (e) => e.message.replace(/\n\s*/g, " "))

  it.effect("defaults to threads with a 1 s kill grace, and decodes both keys", () =>
    Effect.gen(function*() {
      const defaults = yield* ModelRepository.decodeConfig({})
      assert.strictEqual(defaults.isolation, "thread")
      assert.strictEqual(defaults.killGraceMs, 1000)
      const config = yield* ModelRepository.decodeConfig({ isolation: "process", killGraceMs: 0 })
      assert.strictEqual(config.isolation, "process")
      assert.strictEqual(config.killGraceMs, 0)
      assert.strictEqual((yield* ModelRepository.decodeConfig({}, { isolation: "process" })).isolation, "process")
    }))

  it.effect("rejects an unknown isolation or a bad killGraceMs, naming the field", () =>
    Effect.gen(function*() {
      assert.strictEqual(yield* configError({ isolation: "vm" }), `Expected "thread" | "process" at ["isolation"]`)
      assert.strictEqual(yield* configError({ isolation: "Process" }), `Expected "thread" | "process" at ["isolation"]`)
      assert.strictEqual(yield* configError({ killGraceMs: -1 }), `Expected a value between 0 and 600000 at ["killGraceMs"]`)
      assert.strictEqual(yield* configError({ killGraceMs: 600_001 }), `Expected a value between 0 and 600000 at ["killGraceMs"]`)
      assert.strictEqual(yield* configError({ killGraceMs: 1.5 }), `Expected an integer at ["killGraceMs"]`)
      assert.strictEqual(yield* configError({ killGraceMs: "1000" }), `Expected number at ["killGraceMs"]`)
    }))

  it.live("makes a model with an invalid isolation UNAVAILABLE with the reason", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "bad/model.onnx": mlpBytes(), "bad/config.json": JSON.stringify({ isolation: "container" }) })
      const pool = yield* quiet(OnnxModelPool.make({ repository }))
      assert.deepStrictEqual(yield* pool.models, [
        { name: "bad", version: "1", state: "UNAVAILABLE", reason: `config.json: Expected "thread" | "process" at ["isolation"]` }
      ])
      assert.strictEqual(pool.counters.workersSpawned, 0)
    }))
})

describe("the engine over process isolation", () => {
  it.live("a request cancelled mid-run: its process is killed after the kill grace, the permit comes back, the replacement serves", () =>
    Effect.gen(function*() {
      // A heavier MLP, so that a 1,024-row run lasts long enough to be cancelled in the middle.
      const repository = yield* tempRepository({
        "heavy/model.onnx": Mlp.build({ sizes: [784, 2048, 2048, 10] }).bytes,
        "heavy/config.json": JSON.stringify({ instances: 1, isolation: "process", killGraceMs: 0, batching: { enabled: false } })
      })
      const context = yield* quiet(Layer.build(
        AsyncInferenceEngine.layer.pipe(
          Layer.provideMerge(Layer.mergeAll(
            OnnxModelPool.layerWithControl({ repository, transports: TestOps.transports }),
            layerRecording,
            AsyncConfigService.layerWith({ maxConcurrentRequests: 1 })
          ))
        )
      ))
      const engine = Context.get(context, AsyncInferenceEngine)
      const pool = Context.get(context, OnnxModelPool.OnnxModelPool)
      const rows = (id: string) => InferenceRequest.make("heavy", mlpInputs(1024), { requestId: id })
      // How long such a run takes here, uncancelled.
      const t0 = now()
      yield* engine.infer(rows("whole"))
      const runMs = now() - t0
      const { abandonKills, respawns } = pool.counters
      const [pid] = yield* pidsOf(pool, "heavy")
      const cancelled = yield* Effect.forkChild(engine.infer(rows("cancelled")), { startImmediately: true })
      yield* eventually("the run began", () => pool.stats("heavy")?.busy === 1)
      yield* Effect.sleep(Math.min(20, runMs / 4))
      const t1 = now()
      yield* Fiber.interrupt(cancelled)
      yield* eventually("the process was killed", () => pool.counters.abandonKills === abandonKills + 1, 5_000)
      const killedAfterMs = now() - t1
      // A grace of 0: killed at once, not when the run would have ended (a loaded machine's timers allowed for).
      assert.isBelow(killedAfterMs, 1_000, `killed ${killedAfterMs.toFixed(0)} ms after the cancel (a ${runMs.toFixed(0)} ms run)`)
      yield* eventually("its process is gone", () => !alive(pid!), 2_000)
      // The permit came back once the run was over: the next request runs on the replacement.
      const after = yield* engine.infer(InferenceRequest.make("heavy", mlpInputs(2), { requestId: "after" }))
      assert.deepStrictEqual(after.outputs["logits"]!.dims, [2, 10])
      assert.strictEqual(pool.counters.respawns, respawns + 1)
      assert.strictEqual((yield* engine.diagnostics).unsettled, 0)
    }).pipe(Effect.scoped), 60_000)
})
