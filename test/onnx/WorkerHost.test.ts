import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { Effect, Exit, Fiber, References, Scope } from "effect"
import * as InferenceError from "../../src/InferenceError.ts"
import * as DeviceLock from "../../src/onnx/DeviceLock.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import * as WorkerHost from "../../src/onnx/WorkerHost.ts"
import * as Tensor from "../../src/Tensor.ts"
import { mlpBytes, sampleInput, tempRepository } from "../fixtures/ModelRepositoryFixture.ts"
import * as TestOps from "../fixtures/TestOps.ts"
import * as HeavyModel from "../../scripts/gpu/model.ts"

const quiet = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.provideService(self, References.MinimumLogLevel, "Error")

/** A pool of the mlp in `instances` threads whose sessions take turns on the process's DeviceLock (as WebGPU sessions do), or not. */
const pool = (instances: number, exclusive: boolean) =>
  Effect.gen(function*() {
    const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances, isolation: "thread" }) })
    return yield* quiet(OnnxModelPool.make({ repository, transports: exclusive ? TestOps.exclusiveCpuTransports : TestOps.transports, respawnAttempts: 3 }))
  })

/** The [start, end] (ms since the epoch) of a spin op's turn on its instance. */
const spinInterval = (p: OnnxModelPool.Service, ms: number, requestId: string) =>
  Effect.map(TestOps.run(p, "mlp", { _tag: "spin", ms }, { requestId }), (r) => Array.from(r.outputs["interval"]!.data as Float64Array))

/** The lock is free within a second: a worker frees it just after posting its reply. */
const lockFreed = Effect.gen(function*() {
  const deadline = performance.now() + 1_000
  while (DeviceLock.holder(WorkerHost.deviceLock) !== undefined && performance.now() < deadline) yield* Effect.sleep(5)
  assert.isUndefined(DeviceLock.holder(WorkerHost.deviceLock), "the lock is free once the instances are idle")
})

const overlap = ([a, b]: ReadonlyArray<ReadonlyArray<number>>): boolean => a![0]! < b![1]! && b![0]! < a![1]!

describe("WorkerHost and the DeviceLock", () => {
  it.live("sessions on an exclusive device take turns across threads; others run at once (the control)", () =>
    Effect.gen(function*() {
      const spins = (p: OnnxModelPool.Service) =>
        Effect.all([spinInterval(p, 150, "a"), spinInterval(p, 150, "b")], { concurrency: "unbounded" })
      const exclusive = yield* pool(2, true)
      const turns = yield* spins(exclusive)
      assert.isFalse(overlap(turns), `two instances' runs overlapped on the exclusive device: ${JSON.stringify(turns)}`)
      // real runs hold it too, and leave it free
      const out = yield* exclusive.run("mlp", { input: Tensor.float32(sampleInput(3), [3, 784]) }, { requestId: "real" })
      assert.deepStrictEqual(out.outputs["logits"]!.dims, [3, 10])
      yield* lockFreed

      const free = yield* pool(2, false)
      assert.isTrue(overlap(yield* spins(free)), "without the lock the two instances' runs overlap")
    }))

  it.live("an instance that dies holding the lock does not stop the others: the host frees it", () =>
    Effect.gen(function*() {
      const p = yield* pool(2, true)
      const error = yield* Effect.flip(TestOps.run(p, "mlp", { _tag: "exit", code: 3 }, { requestId: "dies" }))
      assert.instanceOf(error, InferenceError.RunFailed)
      // were the lock still held by the dead thread, these would wait for it forever (the test's timeout)
      const after = yield* Effect.all([spinInterval(p, 20, "after-1"), spinInterval(p, 20, "after-2")], { concurrency: "unbounded" })
      assert.strictEqual(after.length, 2)
      yield* lockFreed
      assert.strictEqual(p.counters.crashes, 1)
    }))
})

describe("WorkerHost at close", () => {
  it.live("a worker still inside a run at closeTimeout is left to finish it (terminating it would abort the process): close returns, the caller gets its outputs, then the worker exits", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const p = yield* Scope.provide(scope)(Effect.gen(function*() {
        const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 1, isolation: "thread" }) })
        return yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, closeTimeout: "400 millis" }))
      }))
      const spinning = yield* Effect.forkDetach(spinInterval(p, 1_500, "long"), { startImmediately: true })
      yield* Effect.sleep(100)
      const t0 = performance.now()
      yield* quiet(Scope.close(scope, Exit.void))
      const closeMs = performance.now() - t0
      assert.isAtLeast(closeMs, 350, `close waited ${closeMs.toFixed(0)} ms`)
      assert.isBelow(closeMs, 1_200, `close returned after ${closeMs.toFixed(0)} ms, not at the end of the run`)
      assert.strictEqual(p.counters.forcedTerminations, 0)
      assert.strictEqual(p.counters.workersLeftRunning, 1)
      // the run went on to its end, and its caller got its outputs
      const [start, end] = yield* Fiber.join(spinning)
      assert.isAtLeast(end! - start!, 1_450)
      // then the worker released its session and exited
      const deadline = performance.now() + 5_000
      while (p.counters.workersExited < p.counters.workersSpawned && performance.now() < deadline) yield* Effect.sleep(10)
      assert.strictEqual(p.counters.workersExited, p.counters.workersSpawned)
      assert.strictEqual(p.counters.sessionsClosed, p.counters.sessionsOpened)
    }))

  it.live("the same with a real native run: an unload during it no longer aborts the process (terminate() inside session.run did: exit 134)", () =>
    Effect.gen(function*() {
      const repo = yield* Effect.acquireRelease(
        Effect.sync(() => HeavyModel.writeRepository(HeavyModel.heavySizes, { heavy: { instances: 1, isolation: "thread" } })),
        (r) => Effect.sync(r.remove)
      )
      const scope = yield* Scope.make()
      const p = yield* Scope.provide(scope)(quiet(OnnxModelPool.make({ repository: repo.root, closeTimeout: "300 millis" })))
      // 2,048 rows of a 25M-parameter MLP on one thread: about a second here, well past the close timeout
      const rows = 2_048
      const t0 = performance.now()
      const running = yield* Effect.forkDetach(p.run("heavy", { input: Tensor.float32(repo.input(rows), [rows, 1024]) }, { requestId: "long" }), { startImmediately: true })
      yield* Effect.sleep(100)
      yield* quiet(Scope.close(scope, Exit.void))
      assert.strictEqual(p.counters.workersLeftRunning, 1, `the run was still going at the close timeout (${(performance.now() - t0).toFixed(0)} ms)`)
      assert.strictEqual(p.counters.forcedTerminations, 0)
      const result = yield* Fiber.join(running)
      assert.deepStrictEqual(result.outputs["logits"]!.dims, [rows, 1000])
      const deadline = performance.now() + 5_000
      while (p.counters.workersExited < p.counters.workersSpawned && performance.now() < deadline) yield* Effect.sleep(10)
      assert.strictEqual(p.counters.workersExited, p.counters.workersSpawned)
    }), { timeout: 30_000 })
})

describe("a process that exits after its pool closed", () => {
  it("waits with awaitLeftRunning for a worker left inside its native run, then exits 0; process.exit without it aborts (134)", async () => {
    const repo = HeavyModel.writeRepository(HeavyModel.heavySizes, { heavy: { instances: 1, isolation: "thread" } })
    try {
      const program = new URL("../fixtures/LeftRunningExit.ts", import.meta.url).pathname
      const run = (...args: Array<string>) =>
        new Promise<{ status: number | null; signal: string | null; stdout: string; stderr: string }>((resolve) => {
          const child = spawn(process.execPath, [program, repo.root, ...args], { stdio: ["ignore", "pipe", "pipe"] })
          let stdout = ""
          let stderr = ""
          child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")))
          child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
          const timer = setTimeout(() => child.kill("SIGKILL"), 30_000)
          child.on("exit", (status, signal) => {
            clearTimeout(timer)
            resolve({ status, signal, stdout, stderr })
          })
        })
      // Both at once (each loads the model and runs about a second): the wait, and the hazard it guards against.
      const [waited, exited] = await Promise.all([run("--wait"), run()])
      assert.strictEqual(waited.status, 0, waited.stderr)
      assert.deepStrictEqual(waited.stdout.trim().split("\n"), ["left running 1", "run ended"], "the pool closed with the run still going, then the run ended")
      assert.strictEqual(exited.signal, "SIGABRT", `status ${exited.status}: ${exited.stderr}`)
      assert.include(exited.stderr, "Napi::Error")
    } finally {
      repo.remove()
    }
  }, 60_000)
})
