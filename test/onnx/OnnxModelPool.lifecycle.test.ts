import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Latch, Layer, Logger, References, Scope } from "effect"
import { TestClock } from "effect/testing"
import * as Lifecycle from "../../src/http/Lifecycle.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import type * as InstancePool from "../../src/onnx/InstancePool.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import * as ProcessHost from "../../src/onnx/ProcessHost.ts"
import * as Tensor from "../../src/Tensor.ts"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Mlp from "../../scripts/Mlp.ts"
import { mlpBytes, sampleInput, tempRepository } from "../fixtures/ModelRepositoryFixture.ts"
import * as TestOps from "../fixtures/TestOps.ts"

const mlpInputs = (batch: number) => ({ input: Tensor.float32(sampleInput(batch), [batch, 784]) })
const now = () => performance.now()
const quiet = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.provideService(self, References.MinimumLogLevel, "Error")

/** Polls `check` every 10 ms until it holds, failing after `ms`. */
const eventually = (what: string, check: () => boolean, ms = 5_000) =>
  Effect.gen(function*() {
    const deadline = now() + ms
    while (!check()) {
      if (now() > deadline) return yield* Effect.die(new Error(`timed out waiting for: ${what}`))
      yield* Effect.sleep(10)
    }
  })

/** A pool on a temp repository holding only the mlp, with `instances` instances. */
const mlpPool = (instances: number, scope?: Scope.Scope) =>
  Effect.gen(function*() {
    const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances }) })
    const make = quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, respawnAttempts: 3 }))
    return yield* (scope === undefined ? make : make.pipe(Scope.provide(scope)))
  })

describe("OnnxModelPool lifecycle", () => {
  it.live("a crashed worker fails only its own request, is replaced, and the pool is back to full", () =>
    Effect.gen(function*() {
      const pool = yield* mlpPool(2)
      const crashes: Array<[TestOps.TestOp, RegExp]> = [
        [{ _tag: "throwUncaught" }, /died \(exit code 1; Error: test op: uncaught exception/],
        [{ _tag: "exit", code: 3 }, /died \(exit code 3\)/]
      ]
      for (const [op, detail] of crashes) {
        // a bystander occupies the other instance for the whole crash
        const bystander = yield* Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 250 }, { requestId: "bystander" }), { startImmediately: true })
        yield* Effect.sleep(20)
        const error = yield* Effect.flip(TestOps.run(pool, "mlp", op, { requestId: `crash-${op._tag}` }))
        assert.instanceOf(error, InferenceError.RunFailed)
        assert.strictEqual((error as InferenceError.RunFailed).requestId, `crash-${op._tag}`)
        assert.match((error as InferenceError.RunFailed).detail, detail)
        // a request queued meanwhile is served by whichever instance frees first
        const queued = yield* pool.run("mlp", mlpInputs(2), { requestId: "during" })
        assert.deepStrictEqual(queued.outputs["logits"]!.dims, [2, 10])
        const bystanderExit = yield* Fiber.await(bystander)
        assert.isTrue(Exit.isSuccess(bystanderExit), "the bystander's run on the other worker succeeded")
        yield* eventually("two live instances", () => pool.stats("mlp")?.live === 2)
        assert.deepStrictEqual((yield* pool.models)[0], { name: "mlp", version: "1", state: "READY" })
      }
      assert.strictEqual(pool.counters.crashes, 2)
      assert.strictEqual(pool.counters.respawns, 2)
      assert.strictEqual(pool.counters.sessionsLost, 2)
      // both instances serve again, concurrently
      const t0 = now()
      yield* Effect.all([
        TestOps.run(pool, "mlp", { _tag: "spin", ms: 150 }, { requestId: "a" }),
        TestOps.run(pool, "mlp", { _tag: "spin", ms: 150 }, { requestId: "b" })
      ], { concurrency: "unbounded" })
      assert.isBelow(now() - t0, 280, "two spins of 150 ms ran in parallel on two instances")
    }))

  it.live("closing the scope after many interrupted runs releases every session and thread", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const pool = yield* mlpPool(2, scope)
      let seed = 12345
      const random = (n: number) => {
        seed = (seed * 1103515245 + 12345) >>> 0
        return seed % n
      }
      const jobs = Array.from({ length: 60 }, (_, i) => {
        const job = i % 3 === 0
          ? pool.run("mlp", mlpInputs(1 + random(8)), { requestId: `run-${i}` })
          : TestOps.run(pool, "mlp", { _tag: "spin", ms: 5 + random(25) }, { requestId: `spin-${i}` })
        return Effect.timeoutOption(job, 1 + random(40))
      })
      const results = yield* Effect.all(jobs, { concurrency: 12 })
      const completed = results.filter((r) => r._tag === "Some").length
      const { interruptedQueued, interruptedRunning } = pool.counters
      assert.isAbove(interruptedQueued + interruptedRunning, 10, `interrupted: ${interruptedQueued} queued, ${interruptedRunning} running`)
      assert.isAbove(completed, 0)
      // still serving on both instances afterwards
      yield* pool.run("mlp", mlpInputs(1), { requestId: "after" })
      yield* eventually("no busy instance", () => pool.stats("mlp")?.busy === 0)

      // close while runs are in flight (two per instance: one running, one sent ahead) and one waits:
      // the jobs sent finish, the waiting one fails
      const inFlight = yield* Effect.forkDetach(TestOps.run(pool, "mlp", { _tag: "spin", ms: 200 }, { requestId: "in-flight" }), { startImmediately: true })
      const second = yield* Effect.forkDetach(TestOps.run(pool, "mlp", { _tag: "spin", ms: 200 }, { requestId: "second" }), { startImmediately: true })
      const aheadA = yield* Effect.forkDetach(TestOps.run(pool, "mlp", { _tag: "spin", ms: 20 }, { requestId: "ahead-a" }), { startImmediately: true })
      const aheadB = yield* Effect.forkDetach(TestOps.run(pool, "mlp", { _tag: "spin", ms: 20 }, { requestId: "ahead-b" }), { startImmediately: true })
      const waiting = yield* Effect.forkDetach(pool.run("mlp", mlpInputs(1), { requestId: "waiting" }), { startImmediately: true })
      yield* Effect.sleep(20)
      assert.strictEqual(pool.stats("mlp")?.queued, 1)
      const t0 = now()
      yield* Scope.close(scope, Exit.void)
      const closeMs = now() - t0
      assert.isAtLeast(closeMs, 120, `close waited ${closeMs.toFixed(0)} ms for the running spins`)
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(inFlight)))
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(second)))
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(aheadA)), "a job sent ahead before the close runs")
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(aheadB)))
      const waitingExit = yield* Fiber.await(waiting)
      assert.isTrue(Exit.isFailure(waitingExit))
      assert.include(String(waitingExit), "closing")

      const c = pool.counters
      assert.strictEqual(c.workersSpawned, 2)
      assert.strictEqual(c.workersExited, c.workersSpawned, "every thread exited")
      assert.strictEqual(c.sessionsOpened, 2)
      assert.strictEqual(c.sessionsClosed, c.sessionsOpened, "every session was released")
      assert.strictEqual(c.sessionsLost, 0)
      assert.strictEqual(c.forcedTerminations, 0, "no worker had to be terminated")
      assert.strictEqual(c.lateRepliesDropped, c.interruptedRunning, "each interrupted run's reply arrived and was dropped")
      const closed = yield* Effect.flip(pool.run("mlp", mlpInputs(1), { requestId: "late" }))
      assert.instanceOf(closed, InferenceError.ModelUnavailable)
    }))

  it.live("a crashed instance is not replaced from a model.onnx changed on disk: one model keeps serving, on the other instance", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 2 }) })
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, respawnAttempts: 3 }))
      const answer = Effect.map(pool.run("mlp", mlpInputs(1), { requestId: "r" }), (r) => Array.from(r.outputs["logits"]!.data as Float32Array).join(","))
      const before = yield* answer
      // a new export renamed over the file, without a reload
      const file = Path.join(repository, "mlp", "model.onnx")
      Fs.writeFileSync(`${file}.tmp`, Mlp.build({ seed: 2 }).bytes)
      Fs.renameSync(`${file}.tmp`, file)
      yield* Effect.flip(TestOps.run(pool, "mlp", { _tag: "exit", code: 7 }, { requestId: "crash" }))
      yield* eventually("the replacement given up", () => pool.counters.respawnFailures === 1)
      assert.strictEqual(pool.counters.respawns, 0)
      assert.strictEqual(pool.stats("mlp")?.live, 1)
      const answers = yield* Effect.all(Array.from({ length: 6 }, () => answer), { concurrency: 2 })
      assert.deepStrictEqual(new Set(answers), new Set([before]), "every answer comes from the model loaded")
      assert.strictEqual((yield* pool.models)[0]?.state, "READY")
    }))

  it.live("a start interrupted while its processes load kills them at once; a load under explicit control is not interrupted with its caller", () =>
    Effect.gen(function*() {
      // Processes whose session loads after SLOW_LOAD_MS, each pid noted.
      const pids: Array<number> = []
      const slow = ProcessHost.transportFor(new URL("../fixtures/SlowSessionProcess.ts", import.meta.url))
      const process_: InstancePool.Transport = {
        ...slow,
        spawn: (config, events) => {
          const instance = slow.spawn(config, events)
          if (instance.pid !== undefined) pids.push(instance.pid)
          return instance
        }
      }
      const alive = (pid: number) => {
        try {
          process.kill(pid, 0)
          return true
        } catch {
          return false
        }
      }
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 2, isolation: "process" }) })
      const previous = process.env["SLOW_LOAD_MS"]
      yield* Effect.addFinalizer(() => Effect.sync(() => previous === undefined ? delete process.env["SLOW_LOAD_MS"] : void (process.env["SLOW_LOAD_MS"] = previous)))

      process.env["SLOW_LOAD_MS"] = "60000"
      const startedAt = now()
      const exit = yield* Effect.exit(Effect.scoped(quiet(OnnxModelPool.make({ repository, transports: { process: process_ } }))).pipe(Effect.timeout("500 millis")))
      assert.isTrue(Exit.isFailure(exit) && String(exit).includes("TimeoutError"), String(exit))
      assert.isBelow(now() - startedAt, 30_000, "it did not wait for the loads (a minute)")
      assert.strictEqual(pids.length, 2)
      yield* eventually("the loading processes are gone", () => pids.every((pid) => !alive(pid)))

      process.env["SLOW_LOAD_MS"] = "1500"
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: { process: process_ }, modelControl: "explicit", loadModels: [] }))
      const load = yield* Effect.forkChild(quiet(pool.load!("mlp")), { startImmediately: true })
      yield* Effect.sleep(300)
      yield* Fiber.interrupt(load)
      assert.strictEqual((yield* pool.models).find((m) => m.name === "mlp")?.state, "READY", "the load went on to its end")
    }))

  it.live("a reload moves the runs waiting in the old host to the new one: none fails", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 1 }) })
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, modelControl: "explicit", loadModels: ["mlp"] }))
      // busy for longer than the reload takes: the swap happens while the runs wait in the old host
      const busy = yield* Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 2_500 }, { requestId: "busy" }), { startImmediately: true })
      const ahead = yield* Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 10 }, { requestId: "ahead" }), { startImmediately: true })
      const waiting = yield* Effect.forEach([1, 2, 3], (i) => Effect.forkChild(Effect.exit(pool.run("mlp", mlpInputs(i), { requestId: `waiting-${i}` })), { startImmediately: true }))
      yield* Effect.sleep(20)
      assert.strictEqual(pool.stats("mlp")?.queued, 3)
      const load = yield* Effect.forkChild(quiet(pool.load!("mlp")), { startImmediately: true })
      yield* eventually("the new instance loaded", () => pool.counters.sessionsOpened === 2)
      assert.isUndefined(busy.pollUnsafe(), "the old instance is still busy at the swap")
      yield* Fiber.join(load)
      for (const [i, fiber] of waiting.entries()) {
        const exit = yield* Fiber.join(fiber)
        assert.isTrue(Exit.isSuccess(exit), String(exit))
        if (Exit.isSuccess(exit)) assert.deepStrictEqual(exit.value.outputs["logits"]!.dims, [i + 1, 10])
      }
      yield* Fiber.join(busy)
      yield* Fiber.join(ahead)
      assert.strictEqual(pool.counters.workersSpawned, 2)
      yield* eventually("the old instance exited", () => pool.counters.workersExited === 1)
    }))

  it.effect("explicit control: the directories never loaded are rescanned at most once a second, not on every models call (readiness and metadata call it per request)", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "a/model.onnx": mlpBytes() })
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, modelControl: "explicit", loadModels: [] }))
      const names = Effect.map(pool.models, (models) => models.map((m) => `${m.name} ${m.state}`).sort())
      assert.deepStrictEqual(yield* names, ["a UNAVAILABLE"])
      Fs.mkdirSync(Path.join(repository, "b"))
      Fs.writeFileSync(Path.join(repository, "b/model.onnx"), mlpBytes())
      assert.deepStrictEqual(yield* names, ["a UNAVAILABLE"], "within the second: the last scan's answer")
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(yield* names, ["a UNAVAILABLE", "b UNAVAILABLE"])
      // loadedModels (what /metrics reads on every scrape) never rescans: what was loaded, or tried, only.
      assert.deepStrictEqual((yield* pool.loadedModels!).map((m) => `${m.name} ${m.state}`), ["a UNAVAILABLE"])
    }))

  it.live("explicit control: models answers from a fresh scan after a load or an unload (a loaded model is listed once)", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 1 }), "other/model.onnx": mlpBytes() })
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, modelControl: "explicit", loadModels: [] }))
      const names = Effect.map(pool.models, (models) => models.map((m) => `${m.name} ${m.state}`).sort())
      assert.deepStrictEqual(yield* names, ["mlp UNAVAILABLE", "other UNAVAILABLE"])
      yield* quiet(pool.load!("mlp"))
      assert.deepStrictEqual(yield* names, ["mlp READY", "other UNAVAILABLE"])
      yield* quiet(pool.unload!("mlp", Effect.void))
      assert.deepStrictEqual(yield* names, ["mlp UNAVAILABLE", "other UNAVAILABLE"])
    }))

  it.live("explicit control: the index says LOADING while a model that does not serve loads, keeps READY through a reload, and says UNLOADING while an unload drains; none of them holds readiness back", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/1/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 1 }) })
      // Instances announce themselves ready only when the test lets them: a load stays under way until then.
      let release: () => void = () => {}
      let held = new Promise<void>((resolve) => (release = resolve))
      const holding = TestOps.holdingReady(TestOps.transports.thread, () => held)
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: { thread: holding }, modelControl: "explicit", loadModels: [] }))
      // Runs before the pool's close (finalizers run last added first): a failed assertion does not leave a load held.
      yield* Effect.addFinalizer(() => Effect.sync(() => release()))
      const states = Effect.map(pool.models, (models) => models.map((m) => `${m.name}@${m.version} ${m.state}${m.reason === undefined ? "" : ` (${m.reason})`}`))
      const readiness = Effect.map(pool.models, (models) => Lifecycle.readiness({ shuttingDown: false, strict: true, models }).ready)
      assert.deepStrictEqual(yield* states, ["mlp@1 UNAVAILABLE (unloaded)"])
      const load = yield* Effect.forkChild(quiet(pool.load!("mlp")), { startImmediately: true })
      yield* eventually("the load spawned its instance", () => pool.counters.workersSpawned === 1)
      assert.deepStrictEqual(yield* states, ["mlp@1 LOADING"])
      assert.isTrue(yield* readiness, "a load under way is not a failed model")
      release()
      yield* Fiber.join(load)
      assert.deepStrictEqual(yield* states, ["mlp@1 READY"])
      // A reload that adds a version: the one that serves stays READY while its new instance loads,
      // and the new one is listed LOADING from the start of the load.
      Fs.mkdirSync(Path.join(repository, "mlp", "2"))
      Fs.writeFileSync(Path.join(repository, "mlp", "2", "model.onnx"), mlpBytes())
      held = new Promise<void>((resolve) => (release = resolve))
      const reload = yield* Effect.forkChild(quiet(pool.load!("mlp")), { startImmediately: true })
      yield* eventually("the reload spawned its instances", () => pool.counters.workersSpawned === 3)
      assert.deepStrictEqual(yield* states, ["mlp@1 READY", "mlp@2 LOADING"])
      release()
      yield* Fiber.join(reload)
      assert.deepStrictEqual(yield* states, ["mlp@1 READY", "mlp@2 READY"])
      // An unload waits for what the engine holds of the model (here: until the test says so).
      const drained = yield* Latch.make(false)
      const unload = yield* Effect.forkChild(quiet(pool.unload!("mlp", drained.await)), { startImmediately: true })
      yield* Effect.yieldNow
      assert.deepStrictEqual(yield* states, ["mlp@1 UNLOADING", "mlp@2 UNLOADING"])
      assert.isTrue(yield* readiness, "an unload under way is not a failed model")
      yield* drained.open
      yield* Fiber.join(unload)
      assert.deepStrictEqual(yield* states, ["mlp@1 UNAVAILABLE (unloaded)", "mlp@2 UNAVAILABLE (unloaded)"])
      // A load that fails passes through LOADING to UNAVAILABLE with its reason, which readiness counts.
      Fs.writeFileSync(Path.join(repository, "mlp", "config.json"), "{ not json")
      assert.isTrue(Exit.isFailure(yield* Effect.exit(quiet(pool.load!("mlp")))))
      assert.match((yield* states)[0]!, /^mlp@1 UNAVAILABLE \(config\.json: invalid JSON/)
      assert.isFalse(yield* readiness)
    }))

  it.live("a load and an unload of one model take turns: an unload asked while a load runs ends the model unloaded", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 1 }) })
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, modelControl: "explicit", loadModels: ["mlp"] }))
      const spawned = pool.counters.workersSpawned
      const load = yield* Effect.forkChild(quiet(pool.load!("mlp")), { startImmediately: true })
      // the load is starting its new instance (spawned, not yet ready) when the unload is asked
      yield* eventually("the load spawning its instance", () => pool.counters.workersSpawned === spawned + 1)
      const unload = yield* Effect.forkChild(quiet(pool.unload!("mlp", Effect.void)), { startImmediately: true })
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(load)))
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(unload)))
      // asked last, the unload decides: the model is not served
      assert.deepStrictEqual((yield* pool.models).map((m) => [m.name, m.state, m.reason]), [["mlp", "UNAVAILABLE", "unloaded"]])
    }))

  it.live("a load or an unload whose caller leaves runs to its end: no model left refusing as 'unloading', no instance left serving nothing", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 1 }) })
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, modelControl: "explicit", loadModels: ["mlp"] }))
      // an unload whose caller leaves while the engine drains the model
      const unload = yield* Effect.forkChild(quiet(pool.unload!("mlp", Effect.sleep("300 millis"))), { startImmediately: true })
      yield* Effect.sleep("20 millis")
      yield* Fiber.interrupt(unload)
      assert.deepStrictEqual((yield* pool.models).map((m) => [m.state, m.reason]), [["UNAVAILABLE", "unloaded"]])
      const refused = yield* Effect.flip(pool.metadata("mlp"))
      assert.include(refused.message, "unloaded", "not 'unloading' for ever")
      assert.strictEqual(pool.counters.workersExited, pool.counters.workersSpawned, "the unload released the instance")
      // loads whose callers leave while their instances start
      for (let i = 0; i < 3; i++) {
        const spawned = pool.counters.workersSpawned
        const load = yield* Effect.forkChild(quiet(pool.load!("mlp")), { startImmediately: true })
        yield* eventually("the load spawning its instance", () => pool.counters.workersSpawned === spawned + 1)
        yield* Fiber.interrupt(load)
      }
      assert.deepStrictEqual((yield* pool.models).map((m) => m.state), ["READY"])
      assert.strictEqual(pool.counters.workersSpawned - pool.counters.workersExited, 1, "one instance serves; the loads it replaced released theirs")
    }))

  it.live("a load after the pool's scope closed is refused and starts nothing", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 2 }) })
      const scope = yield* Scope.make()
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, modelControl: "explicit", loadModels: ["mlp"] })).pipe(Scope.provide(scope))
      yield* Scope.close(scope, Exit.void)
      const error = yield* Effect.flip(quiet(pool.load!("mlp")))
      assert.instanceOf(error, InferenceError.ModelUnavailable)
      assert.include(error.message, "closing")
      assert.strictEqual((yield* pool.models)[0]?.state, "UNAVAILABLE")
      assert.strictEqual(pool.counters.workersSpawned, 2, "no instance started after the close")
      assert.strictEqual(pool.counters.workersExited, 2)
    }))

  it.live("a load racing the close is closed by it: nothing outlives the scope", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 2 }) })
      const scope = yield* Scope.make()
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, modelControl: "explicit", loadModels: [] })).pipe(Scope.provide(scope))
      const load = yield* Effect.forkDetach(quiet(pool.load!("mlp")), { startImmediately: true })
      // the load's instances are starting (spawned, not yet ready) when the close begins
      yield* eventually("the load spawning its instances", () => pool.counters.workersSpawned === 2)
      assert.strictEqual(pool.counters.sessionsOpened, 0)
      yield* Scope.close(scope, Exit.void)
      const c = pool.counters
      assert.strictEqual(c.workersExited, c.workersSpawned, "the close waited for the starting instances and closed them")
      assert.strictEqual(c.sessionsClosed, c.sessionsOpened)
      const loaded = yield* Fiber.await(load)
      assert.isTrue(Exit.isFailure(loaded))
      assert.include(String(loaded), "closing")
      assert.strictEqual((yield* pool.models)[0]?.state, "UNAVAILABLE")
    }))

  it.live("a Layer's scope owns its workers: after the layer is released nothing is left", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 2 }) })
      const counters = yield* Effect.scoped(
        Effect.gen(function*() {
          const context = yield* quiet(Layer.build(OnnxModelPool.layerWithControl({ repository, transports: TestOps.transports })))
          const pool = Context.get(context, OnnxModelPool.OnnxModelPool)
          const fibers = yield* Effect.forEach(
            Array.from({ length: 6 }, (_, i) => i),
            (i) => Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 40 }, { requestId: `s${i}` }), { startImmediately: true })
          )
          yield* Effect.sleep(10)
          yield* Fiber.interruptAll(fibers)
          return pool.counters
        })
      )
      assert.strictEqual(counters.workersExited, counters.workersSpawned)
      assert.strictEqual(counters.sessionsClosed, counters.sessionsOpened)
      assert.strictEqual(counters.interruptedRunning + counters.interruptedQueued, 6)
    }))
})

describe("OnnxModelPool: load counts and versionPolicy logs", () => {
  it.live("without model control the pool has no load counts (no inference_model_loads_total row)", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const pool = yield* quiet(OnnxModelPool.make({ repository, defaults: { instances: 1 } }))
      assert.isUndefined(pool.modelLoads)
    }), 60_000)

  it.live("the start says what each model's versionPolicy leaves out (info) and names that has no directory (warning)", () => {
    const lines: Array<string> = []
    const capture = Logger.make((options) => {
      lines.push(`${options.logLevel} ${Array.isArray(options.message) ? options.message.join(" ") : String(options.message)}`)
    })
    return Effect.gen(function*() {
      const repository = yield* tempRepository({
        "mlp/1/model.onnx": mlpBytes(),
        "mlp/2/model.onnx": mlpBytes(),
        "mlp/config.json": JSON.stringify({ versionPolicy: { specific: { versions: [2, 5] } } })
      })
      yield* OnnxModelPool.make({ repository, defaults: { instances: 1 } })
      assert.include(lines, "Info model mlp: versionPolicy specific 2, 5 leaves out version(s) 1; they are not loaded", JSON.stringify(lines))
      assert.include(lines, "Warn model mlp: versionPolicy specific 2, 5 names version 5, but no version directory 5/ is present", JSON.stringify(lines))
    }).pipe(Effect.provide(Logger.layer([capture], { mergeWithExisting: false })))
  }, 60_000)
})
