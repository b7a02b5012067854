/**
 * InstancePool over a fake Transport under TestClock: every path of the mechanism (spawn, pick,
 * pipeline, cancel, crash and replace, backoff, deadline kill, close) without a model, a thread
 * or a process. The real transports are exercised by OnnxModelPool*.test.ts and ProcessHost.test.ts.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Fiber, Logger } from "effect"
import { TestClock } from "effect/testing"
import type * as InferenceError from "../../src/InferenceError.ts"
import * as InstancePool from "../../src/onnx/InstancePool.ts"
import * as Tensor from "../../src/Tensor.ts"
import { type FakeInstance, fakeTransport, poolOptions } from "../fixtures/FakeTransport.ts"

const options = poolOptions

const x = { x: Tensor.float32(new Float32Array([1]), [1, 1]) }

/** Lets forked fibers and microtasks run. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 5; i++) {
    yield* Effect.promise(() => new Promise<void>((r) => setImmediate(r)))
    yield* Effect.yieldNow
  }
})

/** A started pool over a fake transport whose initial instances loaded. */
const started = (overrides: Partial<InstancePool.Options> = {}, isolation: InstancePool.Isolation = "thread", killMidRunAbortsProcess = false) =>
  Effect.gen(function*() {
    const fake = fakeTransport(isolation)
    const transport: InstancePool.Transport = { ...fake.transport, killMidRunAbortsProcess }
    const fiber = yield* Effect.forkChild(InstancePool.start(options(overrides), transport), { startImmediately: true })
    yield* settle
    for (const instance of fake.instances) instance.ready()
    const pool = yield* Fiber.join(fiber)
    return { pool, ...fake, transport }
  })

/**
 * Ends every job the instances hold, in order, as their runs would: a test that leaves jobs sent
 * ahead calls it last, since interrupting such a job (the test's scope closing) waits for its instance.
 */
const finishAll = (instances: ReadonlyArray<FakeInstance>) =>
  Effect.gen(function*() {
    for (const instance of instances) while (instance.inHand.length > 0) instance.finishRunning()
    yield* settle
  })

const reasonOf = (exit: Exit.Exit<unknown, InferenceError.RunFailed | InferenceError.ModelUnavailable>) =>
  Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined

describe("InstancePool", () => {
  it.effect("starts every instance and reads the metadata from the first that loaded", () =>
    Effect.gen(function*() {
      const { instances, pool } = yield* started()
      assert.strictEqual(instances.length, 2)
      assert.deepStrictEqual(pool.metadata.inputs, [{ name: "x", dtype: "float32", dims: [-1, 1] }])
      assert.deepStrictEqual(pool.stats(), { instances: 2, live: 2, idle: 2, busy: 0, queued: 0, starting: 0 })
      assert.strictEqual(pool.depth, 2, "threads take a job ahead by default")
    }))

  it.effect("fails with LoadFailed when an instance cannot load, and closes the others", () =>
    Effect.gen(function*() {
      const fake = fakeTransport()
      const fiber = yield* Effect.forkChild(InstancePool.start(options(), fake.transport), { startImmediately: true })
      yield* settle
      fake.instances[0]!.ready()
      fake.instances[1]!.events.message({ _tag: "loadFailed", error: "corrupt model" })
      fake.instances[1]!.die("exit code 0")
      yield* settle
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.isFailure(exit))
      assert.include(String(exit), "corrupt model")
      assert.isTrue(fake.instances[0]!.sent.some((m) => m._tag === "close"), "the loaded one was asked to close")
    }))

  it.effect("a start interrupted while its instances load kills the processes still loading, closes those that loaded, and ends at once", () =>
    Effect.gen(function*() {
      const fake = fakeTransport("process")
      const fiber = yield* Effect.forkChild(InstancePool.start(options({ instances: 2 }), fake.transport), { startImmediately: true })
      yield* settle
      fake.instances[0]!.ready()
      yield* settle
      yield* Fiber.interrupt(fiber)
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.hasInterrupts(exit), String(exit))
      assert.isTrue(fake.instances[0]!.sent.some((m) => m._tag === "close"), "the one that loaded was closed")
      assert.isTrue(fake.instances[1]!.killed, "the one still loading was killed")
      assert.deepStrictEqual(fake.instances.map((i) => i.exited), [true, true])

      // Threads: the one still loading cannot be killed; it is closed once it loads, and the interruption waits for it.
      const threads = fakeTransport("thread")
      const started = yield* Effect.forkChild(InstancePool.start(options({ instances: 1 }), { ...threads.transport, killMidRunAbortsProcess: true }), { startImmediately: true })
      yield* settle
      const interrupting = yield* Effect.forkChild(Fiber.interrupt(started), { startImmediately: true })
      yield* settle
      assert.isFalse(threads.instances[0]!.killed)
      threads.instances[0]!.ready()
      yield* settle
      yield* Fiber.join(interrupting)
      assert.isTrue(threads.instances[0]!.exited, "closed once it loaded")
    }))

  it.effect("gives a job to an idle instance first, then one ahead to each, then queues in FIFO order", () =>
    Effect.gen(function*() {
      const { instances: [a, b], pool } = yield* started()
      const fibers = []
      for (let i = 0; i < 5; i++) fibers.push(yield* Effect.forkChild(pool.run(x, `r${i}`), { startImmediately: true }))
      assert.deepStrictEqual([a!.runs().length, b!.runs().length], [2, 2])
      assert.deepStrictEqual(pool.stats(), { instances: 2, live: 2, idle: 0, busy: 2, queued: 1, starting: 0 })
      // a's first reply frees room on a: the queued job goes there
      a!.reply(a!.runs()[0]!, 7)
      assert.strictEqual(a!.runs().length, 3)
      const first = yield* Fiber.join(fibers[0]!)
      assert.deepStrictEqual(Array.from(first.outputs["y"]!.data as Float32Array), [7])
      yield* finishAll([a!, b!])
    }))

  it.effect("says when each job begins (onStart): at once on an idle instance, when the job ahead of it replies; never for one cancelled first", () =>
    Effect.gen(function*() {
      const { instances: [a], pool } = yield* started({ instances: 1 })
      const begun: Array<string> = []
      const run = (id: string) => Effect.forkChild(pool.run(x, id, { onStart: () => begun.push(id) }), { startImmediately: true })
      const first = yield* run("first")
      assert.deepStrictEqual(begun, ["first"], "an idle instance runs it at once")
      const ahead = yield* run("ahead")
      const cancelled = yield* run("cancelled")
      const queued = yield* run("queued")
      assert.deepStrictEqual(begun, ["first"], "sent ahead or queued: not begun")
      a!.finishRunning()
      yield* Fiber.join(first)
      assert.deepStrictEqual(begun, ["first", "ahead"], "the job ahead begins as the one before it replies")
      // "cancelled", sent ahead as "first" replied, is interrupted before its turn
      const interrupting = yield* Effect.forkChild(Fiber.interrupt(cancelled), { startImmediately: true })
      a!.finishRunning()
      yield* Fiber.join(ahead)
      assert.deepStrictEqual(begun, ["first", "ahead"], "a job cancelled before its turn never begins")
      a!.fail(a!.inHand[0]!, "cancelled before it ran")
      yield* Fiber.join(interrupting)
      assert.deepStrictEqual(begun, ["first", "ahead", "queued"])
      a!.finishRunning()
      yield* Fiber.join(queued)
    }))

  it.effect("interrupting a job sent ahead returns once the instance has let go of it: skipped at its turn, or run when the cancel came too late", () =>
    Effect.gen(function*() {
      const { instances: [a], pool } = yield* started({ instances: 1 })
      const run = (id: string) => Effect.forkChild(pool.run(x, id), { startImmediately: true })
      yield* run("r0")
      const skipped = yield* run("skipped")
      const interrupting = yield* Effect.forkChild(Fiber.interrupt(skipped), { startImmediately: true })
      yield* settle
      assert.isUndefined(interrupting.pollUnsafe(), "it still holds its place in the instance")
      a!.finishRunning()
      a!.fail(a!.inHand[0]!, "cancelled before it ran")
      yield* Fiber.join(interrupting)
      // The instance began the next one before the cancel reached it: the interruption waits for its end.
      yield* run("r1")
      const raced = yield* run("raced")
      const interruptingRaced = yield* Effect.forkChild(Fiber.interrupt(raced), { startImmediately: true })
      a!.finishRunning()
      yield* settle
      assert.isUndefined(interruptingRaced.pollUnsafe(), "the instance runs it")
      a!.finishRunning()
      yield* Fiber.join(interruptingRaced)
      assert.deepStrictEqual(pool.stats(), { instances: 1, live: 1, idle: 1, busy: 0, queued: 0, starting: 0 })
    }))

  it.effect("sends a job ahead to the busy instance whose run began first, the likelier to end first", () =>
    Effect.gen(function*() {
      const { instances: [a, b], pool } = yield* started()
      const run = (id: string) => Effect.forkChild(pool.run(x, id), { startImmediately: true })
      yield* run("r0") // a
      yield* run("r1") // b
      a!.finishRunning()
      yield* run("r2") // a, idle again: its run began after b's
      yield* run("r3")
      assert.deepStrictEqual([a!.runs().length, b!.runs().length], [2, 2], "r3 went ahead on b, whose run began first")
      yield* finishAll([a!, b!])
    }))

  it.effect("an interrupted job: queued, it is never sent; sent ahead, the instance is told to skip it", () =>
    Effect.gen(function*() {
      const { instances: [a], pool } = yield* started({ instances: 1 })
      const running = yield* Effect.forkChild(pool.run(x, "running"), { startImmediately: true })
      const ahead = yield* Effect.forkChild(pool.run(x, "ahead"), { startImmediately: true })
      const queued = yield* Effect.forkChild(pool.run(x, "queued"), { startImmediately: true })
      assert.strictEqual(pool.stats().queued, 1)
      yield* Fiber.interrupt(queued)
      assert.strictEqual(pool.stats().queued, 0)
      // its interruption returns once the instance has skipped it
      const interrupting = yield* Effect.forkChild(Fiber.interrupt(ahead), { startImmediately: true })
      const [runId, aheadId] = a!.runs()
      assert.deepStrictEqual(a!.sent.filter((m) => m._tag === "cancel"), [{ _tag: "cancel", id: aheadId! }])
      a!.reply(runId!)
      a!.fail(aheadId!, "cancelled before it ran")
      yield* Fiber.join(interrupting)
      yield* Fiber.join(running)
      assert.strictEqual(a!.runs().length, 2, "the queued job was never sent")
      assert.strictEqual(pool.stats().busy, 0)
    }))

  it.effect("a crash fails only the running job; the job sent ahead runs elsewhere; the instance is replaced", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { auto, instances, pool } = yield* started({ instances: 1, counters })
      auto.ready = true
      const running = yield* Effect.forkChild(Effect.exit(pool.run(x, "running")), { startImmediately: true })
      const ahead = yield* Effect.forkChild(pool.run(x, "ahead"), { startImmediately: true })
      instances[0]!.die("exit code 3")
      const exit = yield* Fiber.join(running)
      assert.include(reasonOf(exit)?.message ?? "", "died (exit code 3)")
      yield* settle
      assert.strictEqual(instances.length, 2, "a replacement was started")
      assert.strictEqual(counters.crashes, 1)
      assert.strictEqual(counters.respawns, 1)
      const replacement = instances[1]!
      assert.strictEqual(replacement.runs().length, 1, "the job sent ahead went to the replacement")
      replacement.reply(replacement.runs()[0]!, 5)
      assert.deepStrictEqual(Array.from((yield* Fiber.join(ahead)).outputs["y"]!.data as Float32Array), [5])
    }))

  it.effect("every instance, a replacement too, is started with the warm-up plan, so none takes a job before its warm-up ran", () =>
    Effect.gen(function*() {
      const warmup = { samples: [{ name: "full", batchSize: 64, count: 2, inputs: {} }], inputAxes: { x: 0 } }
      const { auto, instances } = yield* started({ instances: 2, warmup })
      auto.ready = true
      instances[0]!.die("exit code 3")
      yield* settle
      assert.strictEqual(instances.length, 3, "a replacement was started")
      for (const instance of instances) assert.deepStrictEqual(instance.config.warmup, warmup)
      const { instances: plain } = yield* started({ instances: 1 })
      assert.isUndefined(plain[0]!.config.warmup)
    }))

  it.effect("an instance whose session does not load within loadTimeout is killed: the start fails saying so, and a replacement that hangs is retried", () =>
    Effect.gen(function*() {
      // At start: one of two instances never loads (a hung GPU driver, a stopped process).
      const fake = fakeTransport("process")
      const starting = yield* Effect.forkChild(Effect.exit(InstancePool.start(options({ instances: 2, loadTimeout: Duration.seconds(30) }), fake.transport)), { startImmediately: true })
      yield* settle
      fake.instances[0]!.ready()
      yield* TestClock.adjust("29 seconds")
      yield* settle
      assert.isUndefined(starting.pollUnsafe(), "still loading before the timeout")
      yield* TestClock.adjust("1 second")
      yield* settle
      const exit = yield* Fiber.join(starting)
      assert.isTrue(Exit.isFailure(exit))
      const failure = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
      assert.include(failure?._tag === "Fail" ? (failure.error as { reason: string }).reason : "", "did not load its session within 30s: killed")
      assert.isTrue(fake.instances[1]!.killed, "the hung instance was killed")

      // A replacement that hangs: killed at the timeout, and the next attempt loads.
      const counters = InstancePool.makeCounters()
      const { instances, pool } = yield* started({ instances: 1, counters, respawnAttempts: 3, respawnDelay: Duration.millis(100), loadTimeout: Duration.seconds(30) })
      instances[0]!.die("signal SIGKILL")
      yield* settle
      yield* TestClock.adjust("1 second")
      yield* settle
      assert.strictEqual(instances.length, 2, "a replacement is loading")
      yield* TestClock.adjust("30 seconds")
      yield* settle
      assert.isTrue(instances[1]!.killed, "the hung replacement was killed")
      yield* TestClock.adjust("1 second")
      yield* settle
      assert.strictEqual(instances.length, 3, "another attempt")
      instances[2]!.ready()
      yield* settle
      assert.strictEqual(pool.stats().instances, 1)
      assert.isUndefined(pool.unavailableReason())
      assert.strictEqual(counters.respawns, 1)

      // A thread cannot be killed while it loads (that would abort the process): the attempt is
      // given up all the same, and the thread, should it load after all, is closed.
      const threads = yield* started({ instances: 1, respawnAttempts: 3, respawnDelay: Duration.millis(100), loadTimeout: Duration.seconds(30) }, "thread", true)
      threads.instances[0]!.die("exit code 1")
      yield* settle
      yield* TestClock.adjust("1 second")
      yield* settle
      yield* TestClock.adjust("31 seconds")
      yield* settle
      assert.isFalse(threads.instances[1]!.killed, "not killed")
      assert.strictEqual(threads.instances.length, 3, "another attempt")
      threads.instances[1]!.ready()
      threads.instances[2]!.ready()
      yield* settle
      assert.isTrue(threads.instances[1]!.exited, "the late one was closed once it loaded")
      assert.strictEqual(threads.pool.stats().instances, 1, "the pool keeps one instance, not two")
    }))

  it.effect("a crash is logged as a warning naming the model, how the instance died and that it is being replaced", () => {
    const warnings: Array<string> = []
    const capture = Logger.make((options) => {
      if (options.logLevel === "Warn") warnings.push(String(Array.isArray(options.message) ? options.message.join(" ") : options.message))
    })
    return Effect.gen(function*() {
      const { auto, instances, pool } = yield* started({ instances: 1 })
      auto.ready = true
      const running = yield* Effect.forkChild(Effect.exit(pool.run(x, "running")), { startImmediately: true })
      instances[0]!.die("signal SIGKILL")
      yield* Fiber.join(running)
      yield* settle
      assert.strictEqual(instances.length, 2, "a replacement was started")
      assert.strictEqual(warnings.length, 1, JSON.stringify(warnings))
      assert.match(warnings[0]!, /^model m version 1: the \w+ running the model died \(signal SIGKILL.*\); replacing it$/)
    }).pipe(Effect.provide(Logger.layer([capture], { mergeWithExisting: false })))
  })

  it.effect("a crash is logged once, however many attempts its replacement takes", () => {
    const warnings: Array<string> = []
    const capture = Logger.make((options) => {
      if (options.logLevel === "Warn") warnings.push(String(Array.isArray(options.message) ? options.message.join(" ") : options.message))
    })
    return Effect.gen(function*() {
      const { auto, instances, pool } = yield* started({ instances: 1, respawnAttempts: 3, respawnDelay: Duration.millis(100) })
      auto.failLoad = true
      const running = yield* Effect.forkChild(Effect.exit(pool.run(x, "running")), { startImmediately: true })
      instances[0]!.die("signal SIGKILL")
      yield* settle
      yield* TestClock.adjust("100 millis")
      yield* settle
      yield* TestClock.adjust("200 millis")
      yield* settle
      yield* Fiber.join(running)
      assert.strictEqual(instances.length, 4, "the original and three replacement attempts")
      assert.strictEqual(warnings.filter((w) => w.endsWith("replacing it")).length, 1, JSON.stringify(warnings))
    }).pipe(Effect.provide(Logger.layer([capture], { mergeWithExisting: false })))
  })

  it.effect("a transport that cannot start an instance at all (spawn throws: a thread or process limit) is a failed start, not a defect", () =>
    Effect.gen(function*() {
      // a replacement that cannot be started: the waiting jobs are answered and the pool says why
      const counters = InstancePool.makeCounters()
      const { instances, pool, transport } = yield* started({ instances: 1, counters, respawnAttempts: 2, respawnDelay: Duration.millis(100) })
      ;(transport as { spawn: InstancePool.Transport["spawn"] }).spawn = () => {
        throw new Error("ERR_WORKER_INIT_FAILED EAGAIN")
      }
      const running = yield* Effect.forkChild(Effect.exit(pool.run(x, "running")), { startImmediately: true })
      const waiting = yield* Effect.forkChild(Effect.exit(pool.run(x, "waiting")), { startImmediately: true })
      instances[0]!.die("exit code 3")
      yield* settle
      yield* TestClock.adjust("1 second")
      yield* settle
      assert.isTrue(Exit.isFailure(yield* Fiber.join(running)))
      const reason = reasonOf(yield* Fiber.join(waiting))
      assert.strictEqual(reason?._tag, "ModelUnavailable", String(reason))
      assert.include(pool.unavailableReason() ?? "", "could not be started: Error: ERR_WORKER_INIT_FAILED EAGAIN")
      assert.strictEqual(counters.respawnFailures, 1)

      // at start: the second of two instances cannot be started; the first is closed, nothing left running
      const fake = fakeTransport()
      const spawnFirst = fake.transport.spawn
      let spawned = 0
      const failing: InstancePool.Transport = {
        ...fake.transport,
        spawn: (config, events) => {
          if (spawned++ === 1) throw new Error("ERR_WORKER_INIT_FAILED EAGAIN")
          return spawnFirst(config, events)
        }
      }
      const start = yield* Effect.forkChild(Effect.exit(InstancePool.start(options({ instances: 2 }), failing)), { startImmediately: true })
      yield* settle
      for (const instance of fake.instances) if (!instance.exited) instance.ready()
      yield* settle
      const exit = yield* Fiber.join(start)
      assert.isTrue(Exit.isFailure(exit), String(exit))
      assert.include(String(exit), "could not be started")
      assert.isFalse(Cause.hasDies(exit._tag === "Failure" ? exit.cause : Cause.empty), "a failure, not a defect")
      assert.deepStrictEqual(fake.instances.map((i) => i.exited), [true], "the one started was closed")
    }))

  it.effect("no replacement once model.onnx changed on disk: the pool serves on its other instances, then is unavailable saying why", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      let identity = "inode 1"
      const { auto, instances, pool } = yield* started({ instances: 2, counters, identify: () => identity })
      auto.ready = true
      identity = "inode 2" // renamed over by a new export
      instances[0]!.die("signal SIGKILL")
      yield* settle
      assert.strictEqual(instances.length, 2, "no replacement was started")
      assert.strictEqual(counters.respawnFailures, 1)
      assert.isUndefined(pool.unavailableReason(), "the other instance still serves the version loaded")
      const served = yield* Effect.forkChild(pool.run(x, "on-b"), { startImmediately: true })
      instances[1]!.reply(instances[1]!.runs()[0]!, 4)
      assert.deepStrictEqual(Array.from((yield* Fiber.join(served)).outputs["y"]!.data as Float32Array), [4])
      instances[1]!.die("signal SIGKILL")
      yield* settle
      assert.strictEqual(instances.length, 2)
      assert.include(pool.unavailableReason() ?? "", "model.onnx changed on disk")
      assert.strictEqual(reasonOf(yield* Effect.exit(pool.run(x, "later")))?._tag, "ModelUnavailable")
    }))

  it.effect("a replacement whose session reports another signature is closed before it takes a job", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { instances, pool } = yield* started({ instances: 1, counters, respawnAttempts: 3 })
      const waiting = yield* Effect.forkChild(Effect.exit(pool.run(x, "running")), { startImmediately: true })
      const queued = yield* Effect.forkChild(Effect.exit(pool.run(x, "queued")), { startImmediately: true })
      const third = yield* Effect.forkChild(Effect.exit(pool.run(x, "third")), { startImmediately: true })
      instances[0]!.die("exit code 3")
      yield* settle
      const replacement = instances[1]!
      replacement.ready({ inputs: [{ name: "x", dtype: "float32", dims: [-1, 1024] }], outputs: [{ name: "y", dtype: "float32", dims: [-1, 10] }] })
      yield* settle
      assert.deepStrictEqual(replacement.runs(), [], "it was given no job")
      assert.isTrue(replacement.sent.some((m) => m._tag === "close"), "it was closed")
      assert.strictEqual(instances.length, 2, "not retried: another attempt would load the same file")
      assert.include(pool.unavailableReason() ?? "", "another signature")
      assert.strictEqual(reasonOf(yield* Fiber.join(waiting))?._tag, "RunFailed")
      assert.include(reasonOf(yield* Fiber.join(queued))?.message ?? "", "another signature")
      assert.strictEqual(reasonOf(yield* Fiber.join(third))?._tag, "ModelUnavailable")
    }))

  it.effect("a job sent ahead with its inputs moved fails when the instance dies, saying they were lost; a copied one runs on the replacement", () =>
    Effect.gen(function*() {
      const { auto, instances, pool } = yield* started({ instances: 1 })
      auto.ready = true
      for (const transfer of [true, false]) {
        const instance = instances[instances.length - 1]!
        const running = yield* Effect.forkChild(Effect.exit(pool.run(x, "running")), { startImmediately: true })
        const data = new Float32Array([2])
        const ahead = yield* Effect.forkChild(Effect.exit(pool.run({ x: Tensor.float32(data, [1, 1]) }, "ahead", { transfer })), { startImmediately: true })
        assert.strictEqual(data.byteLength, transfer ? 0 : 4, transfer ? "moved" : "copied")
        instance.die("exit code 7")
        assert.strictEqual(reasonOf(yield* Fiber.join(running))?._tag, "RunFailed")
        yield* settle
        const replacement = instances[instances.length - 1]!
        if (transfer) {
          const error = reasonOf(yield* Fiber.join(ahead))
          assert.strictEqual(error?._tag, "RunFailed")
          assert.include(error?.message ?? "", "inputs were moved (transferred) to the fake ahead of their turn and were lost when it died (exit code 7)")
          assert.deepStrictEqual(replacement.runs(), [], "nothing was sent again")
        } else {
          assert.strictEqual(replacement.runs().length, 1, "the copied job went to the replacement")
          replacement.reply(replacement.runs()[0]!, 3)
          assert.isTrue(Exit.isSuccess(yield* Fiber.join(ahead)))
        }
      }
    }))

  it.effect("replacements back off exponentially; once they are spent the pool is unavailable and waiting jobs fail", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { auto, instances, pool } = yield* started({ instances: 1, counters, respawnAttempts: 3, respawnDelay: Duration.millis(100) })
      auto.failLoad = true
      const running = yield* Effect.forkChild(Effect.exit(pool.run(x, "running")), { startImmediately: true })
      const ahead = yield* Effect.forkChild(Effect.exit(pool.run(x, "ahead")), { startImmediately: true })
      const waiting = yield* Effect.forkChild(Effect.exit(pool.run(x, "waiting")), { startImmediately: true })
      instances[0]!.die()
      yield* settle
      assert.strictEqual(instances.length, 2, "the first attempt is immediate")
      yield* TestClock.adjust("99 millis")
      yield* settle
      assert.strictEqual(instances.length, 2)
      yield* TestClock.adjust("1 millis")
      yield* settle
      assert.strictEqual(instances.length, 3, "the second after 100 ms")
      yield* TestClock.adjust("200 millis")
      yield* settle
      assert.strictEqual(instances.length, 4, "the third after 200 more")
      assert.strictEqual(counters.respawnFailures, 1)
      assert.include(pool.unavailableReason() ?? "", "every instance was lost")
      assert.strictEqual(reasonOf(yield* Fiber.join(running))?._tag, "RunFailed")
      assert.strictEqual(reasonOf(yield* Fiber.join(ahead))?._tag, "ModelUnavailable")
      assert.strictEqual(reasonOf(yield* Fiber.join(waiting))?._tag, "ModelUnavailable")
      assert.strictEqual(reasonOf(yield* Effect.exit(pool.run(x, "later")))?._tag, "ModelUnavailable")
    }))

  it.effect("once its quick attempts are spent, a lost instance is tried again every respawnRetryInterval, and the pool serves again when one loads", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { auto, instances, pool } = yield* started({
        instances: 1,
        counters,
        respawnAttempts: 2,
        respawnDelay: Duration.millis(100),
        respawnRetryInterval: Duration.seconds(30)
      })
      auto.failLoad = true
      instances[0]!.die("signal SIGKILL") // the OOM killer, say
      yield* settle
      yield* TestClock.adjust("100 millis")
      yield* settle
      assert.strictEqual(instances.length, 3, "the original and two quick attempts")
      assert.strictEqual(counters.respawnFailures, 1)
      assert.include(pool.unavailableReason() ?? "", "retried every 30s")
      assert.strictEqual(reasonOf(yield* Effect.exit(pool.run(x, "while down")))?._tag, "ModelUnavailable")

      yield* TestClock.adjust("29999 millis")
      yield* settle
      assert.strictEqual(instances.length, 3, "nothing before the interval")
      yield* TestClock.adjust("1 millis")
      yield* settle
      assert.strictEqual(instances.length, 4, "a try after 30 s: it fails too")
      assert.isDefined(pool.unavailableReason())

      auto.failLoad = false
      auto.ready = true // the cause passed
      yield* TestClock.adjust("30 seconds")
      yield* settle
      assert.strictEqual(instances.length, 5)
      assert.isUndefined(pool.unavailableReason(), "serving again")
      assert.strictEqual(counters.respawns, 1)
      const served = yield* Effect.forkChild(pool.run(x, "after"), { startImmediately: true })
      yield* settle
      instances[4]!.reply(instances[4]!.runs()[0]!, 5)
      assert.deepStrictEqual(Array.from((yield* Fiber.join(served)).outputs["y"]!.data as Float32Array), [5])
      yield* TestClock.adjust("5 minutes")
      yield* settle
      assert.strictEqual(instances.length, 5, "no more tries once it is replaced")
    }))

  it.effect("the later tries stop when the pool closes, and when model.onnx changed on disk", () =>
    Effect.gen(function*() {
      for (const stop of ["close", "changed"] as const) {
        let identity = "inode 1"
        const { auto, instances, pool } = yield* started({
          instances: 1,
          respawnAttempts: 1,
          respawnRetryInterval: Duration.seconds(30),
          identify: () => identity
        })
        auto.failLoad = true
        instances[0]!.die("signal SIGKILL")
        yield* settle
        assert.strictEqual(instances.length, 2)
        if (stop === "close") yield* pool.close
        else identity = "inode 2"
        yield* TestClock.adjust("30 seconds")
        yield* settle
        assert.strictEqual(instances.length, 2, `no try after the ${stop}`)
        if (stop === "changed") {
          assert.include(pool.unavailableReason() ?? "", "model.onnx changed on disk")
          assert.notInclude(pool.unavailableReason() ?? "", "retried every")
          yield* TestClock.adjust("5 minutes")
          yield* settle
          assert.strictEqual(instances.length, 2)
        }
      }
    }))

  it.effect("process isolation: a run still going killGrace past its deadline is killed, failed and replaced", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { auto, instances, pool } = yield* started({ instances: 1, counters, killGrace: Duration.millis(100) }, "process")
      assert.strictEqual(pool.depth, 1, "a process takes no job ahead")
      auto.ready = true
      const runaway = yield* Effect.forkChild(Effect.exit(pool.run(x, "runaway", { timeout: Duration.millis(50) })), { startImmediately: true })
      yield* TestClock.adjust("149 millis")
      yield* settle
      assert.isFalse(instances[0]!.killed)
      yield* TestClock.adjust("1 millis")
      yield* settle
      assert.isTrue(instances[0]!.killed)
      assert.include(reasonOf(yield* Fiber.join(runaway))?.message ?? "", "killed after exceeding its deadline by 100 ms")
      assert.strictEqual(counters.deadlineKills, 1)
      assert.strictEqual(counters.crashes, 0, "a deadline kill is not a crash")
      assert.strictEqual(instances.length, 2, "replaced")
    }))

  it.effect("process isolation: a run whose caller is interrupted is killed killGrace later, and the interruption returns then", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { auto, instances, pool } = yield* started({ instances: 1, counters, killGrace: Duration.millis(100) }, "process")
      auto.ready = true
      // A deadline far off: the kill comes from the interruption, not from it.
      const abandoned = yield* Effect.forkChild(pool.run(x, "abandoned", { timeout: Duration.seconds(60) }), { startImmediately: true })
      yield* TestClock.adjust("10 millis")
      const interrupting = yield* Effect.forkChild(Fiber.interrupt(abandoned), { startImmediately: true })
      yield* settle
      assert.isUndefined(interrupting.pollUnsafe(), "the run goes on: the interruption waits for it")
      yield* TestClock.adjust("99 millis")
      yield* settle
      assert.isFalse(instances[0]!.killed)
      assert.isUndefined(interrupting.pollUnsafe())
      yield* TestClock.adjust("1 millis")
      yield* settle
      assert.isTrue(instances[0]!.killed, "killed 100 ms after the interruption")
      yield* Fiber.join(interrupting)
      assert.strictEqual(counters.abandonKills, 1)
      assert.strictEqual(counters.deadlineKills, 0)
      assert.strictEqual(counters.crashes, 0, "a kill is not a crash")
      assert.strictEqual(counters.lateRepliesDropped, 1, "its outcome went to nobody")
      assert.strictEqual(instances.length, 2, "replaced")
      // The replacement serves.
      const next = yield* Effect.forkChild(pool.run(x, "next"), { startImmediately: true })
      yield* settle
      instances[1]!.finishRunning(5)
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(next)))
    }))

  it.effect("process isolation: an interrupted run that ends within killGrace is not killed; threads never wait", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const proc = yield* started({ instances: 1, counters, killGrace: Duration.millis(100) }, "process")
      const abandoned = yield* Effect.forkChild(proc.pool.run(x, "abandoned"), { startImmediately: true })
      yield* settle
      const interrupting = yield* Effect.forkChild(Fiber.interrupt(abandoned), { startImmediately: true })
      yield* TestClock.adjust("60 millis")
      yield* settle
      assert.isUndefined(interrupting.pollUnsafe())
      proc.instances[0]!.finishRunning()
      yield* Fiber.join(interrupting)
      yield* TestClock.adjust("100 millis")
      yield* settle
      assert.isFalse(proc.instances[0]!.killed, "the kill was disarmed when the run ended")
      assert.strictEqual(counters.abandonKills, 0)

      const threads = yield* started({ instances: 1, killGrace: Duration.millis(100) })
      const running = yield* Effect.forkChild(threads.pool.run(x, "running"), { startImmediately: true })
      yield* settle
      // A thread cannot be stopped mid-run: its interruption returns at once, and the run goes on.
      yield* Fiber.interrupt(running)
      yield* TestClock.adjust("1 second")
      yield* settle
      assert.isFalse(threads.instances[0]!.killed)
      yield* finishAll(threads.instances)
    }))

  it.effect("a job whose deadline passed while it waited is failed unsent", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { instances: [a], pool } = yield* started({ instances: 1, counters }, "process")
      const first = yield* Effect.forkChild(pool.run(x, "first"), { startImmediately: true })
      const late = yield* Effect.forkChild(Effect.exit(pool.run(x, "late", { timeout: Duration.millis(10) })), { startImmediately: true })
      yield* TestClock.adjust("20 millis")
      a!.reply(a!.runs()[0]!)
      yield* Fiber.join(first)
      assert.include(reasonOf(yield* Fiber.join(late))?.message ?? "", "not run: its deadline passed")
      assert.strictEqual(counters.expiredUnsent, 1)
      assert.strictEqual(a!.runs().length, 1)
    }))

  it.effect("closeInto a successor moves the jobs never sent to it, in order; jobs sent finish where they are", () =>
    Effect.gen(function*() {
      const old = yield* started({ instances: 1 })
      const [a] = old.instances
      const fibers = []
      for (let i = 0; i < 5; i++) fibers.push(yield* Effect.forkChild(Effect.exit(old.pool.run(x, `r${i}`)), { startImmediately: true }))
      assert.strictEqual(old.pool.stats().queued, 3)
      const next = yield* started({ instances: 1 })
      const [b] = next.instances
      const closing = yield* Effect.forkChild(old.pool.closeInto(next.pool, "reloaded"), { startImmediately: true })
      assert.strictEqual(old.pool.stats().queued, 0)
      assert.strictEqual(b!.runs().length, 2, "the first two moved jobs went to the new instance at once")
      assert.strictEqual(next.pool.stats().queued, 1)
      // the one still waiting in the successor is withdrawn there when its caller leaves
      yield* Fiber.interrupt(fibers[4]!)
      assert.strictEqual(next.pool.stats().queued, 0)
      for (const id of b!.runs()) b!.reply(id, 20 + id)
      for (const id of a!.runs()) a!.reply(id, 10 + id)
      yield* Fiber.join(closing)
      const values = []
      for (const f of fibers.slice(0, 4)) {
        const exit = yield* Fiber.join(f)
        assert.isTrue(Exit.isSuccess(exit), String(exit))
        if (Exit.isSuccess(exit)) values.push((exit.value.outputs["y"]!.data as Float32Array)[0])
      }
      assert.deepStrictEqual(values, [10, 11, 20, 21], "r0 and r1 ran on the old instance, r2 and r3 on the new one, in order")
      assert.isTrue(a!.exited)
    }))

  it.effect("closeInto a successor with other inputs, or other outputs, fails the waiting jobs with the reason", () =>
    Effect.gen(function*() {
      const successors: ReadonlyArray<Parameters<FakeInstance["ready"]>[0]> = [
        { inputs: [{ name: "x", dtype: "float32", dims: [-1, 2] }], outputs: [{ name: "y", dtype: "float32", dims: [-1, 1] }] },
        { inputs: [{ name: "x", dtype: "float32", dims: [-1, 1] }], outputs: [{ name: "z", dtype: "float32", dims: [-1, 1] }] }
      ]
      for (const signature of successors) {
        const old = yield* started({ instances: 1 })
        const fibers = []
        for (let i = 0; i < 3; i++) fibers.push(yield* Effect.forkChild(Effect.exit(old.pool.run(x, `r${i}`)), { startImmediately: true }))
        const fake = fakeTransport()
        const starting = yield* Effect.forkChild(InstancePool.start(options({ instances: 1 }), fake.transport), { startImmediately: true })
        yield* settle
        fake.instances[0]!.ready(signature)
        const next = yield* Fiber.join(starting)
        yield* Effect.forkChild(old.pool.closeInto(next, "the model was reloaded while this run waited"), { startImmediately: true })
        const waiting = reasonOf(yield* Fiber.join(fibers[2]!))
        assert.strictEqual(waiting?._tag, "ModelUnavailable")
        assert.include(waiting?.message ?? "", "the model was reloaded while this run waited, with other inputs, outputs or isolation: send it again")
        assert.deepStrictEqual(fake.instances[0]!.runs(), [])
        yield* finishAll(old.instances)
      }
    }))

  it.effect("close kills a process that runs nothing and does not answer close after idleProcessCloseTimeout, not the whole closeTimeout", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { auto, instances, pool } = yield* started({ instances: 2, counters, closeTimeout: Duration.seconds(60) }, "process")
      auto.ignoreClose = true // a stopped process: it never answers
      const closing = yield* Effect.forkChild(pool.close, { startImmediately: true })
      yield* settle
      yield* TestClock.adjust(Duration.subtract(InstancePool.idleProcessCloseTimeout, Duration.millis(1)))
      yield* settle
      assert.isFalse(instances.some((i) => i.killed), "given its time to close")
      yield* TestClock.adjust("1 millis")
      yield* settle
      assert.isTrue(instances.every((i) => i.killed), "killed, 55 s before the close timeout")
      yield* Fiber.join(closing)
      assert.strictEqual(counters.forcedTerminations, 2)
    }))

  it.effect("close fails what waits, lets what was sent finish, and kills an instance that outlives closeTimeout", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { instances: [a, b], pool } = yield* started({ instances: 2, counters, closeTimeout: Duration.seconds(1) })
      const onA = yield* Effect.forkChild(pool.run(x, "on-a"), { startImmediately: true })
      const onB = yield* Effect.forkChild(Effect.exit(pool.run(x, "on-b")), { startImmediately: true })
      const aheadA = yield* Effect.forkChild(pool.run(x, "ahead-a"), { startImmediately: true })
      yield* Effect.forkChild(pool.run(x, "ahead-b"), { startImmediately: true })
      const waiting = yield* Effect.forkChild(Effect.exit(pool.run(x, "waiting")), { startImmediately: true })
      // what the counters say when close returns
      const closing = yield* Effect.forkChild(Effect.map(pool.close, () => ({ ...counters })), { startImmediately: true })
      assert.include(reasonOf(yield* Fiber.join(waiting))?.message ?? "", "closing")
      // a finishes both of its jobs, then is asked to close and exits
      a!.reply(a!.runs()[0]!)
      a!.reply(a!.runs()[1]!)
      yield* Fiber.join(onA)
      yield* Fiber.join(aheadA)
      yield* settle
      assert.isTrue(a!.exited)
      // b never answers: killed after the close timeout
      assert.isFalse(b!.killed)
      yield* TestClock.adjust("1 second")
      yield* settle
      assert.isTrue(b!.killed)
      const atClose = yield* Fiber.join(closing)
      assert.strictEqual(atClose.forcedTerminations, 1)
      assert.strictEqual(atClose.workersExited, atClose.workersSpawned)
      assert.strictEqual(atClose.sessionsOpened, atClose.sessionsClosed + atClose.sessionsLost, "the killed instance's session is counted before close returns")
      assert.strictEqual(reasonOf(yield* Fiber.join(onB))?._tag, "RunFailed", "b's job died with it")
      assert.strictEqual(reasonOf(yield* Effect.exit(pool.run(x, "after")))?._tag, "ModelUnavailable")
    }))

  it.effect("at closeTimeout, an instance inside a run whose kill would abort the process (a thread) is left to finish it: its caller is answered, what was sent ahead is taken back unrun, then it exits", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { auto, instances: [a], pool } = yield* started({ instances: 1, counters, closeTimeout: Duration.seconds(1) }, "thread", true)
      auto.skipCancelled = true
      const running = yield* Effect.forkChild(Effect.exit(pool.run(x, "running")), { startImmediately: true })
      const ahead = yield* Effect.forkChild(Effect.exit(pool.run(x, "ahead")), { startImmediately: true })
      yield* settle
      const [, aheadId] = a!.runs()
      const closing = yield* Effect.forkChild(pool.close, { startImmediately: true })
      yield* TestClock.adjust("1 second")
      yield* settle
      // close returns without killing it
      yield* Fiber.join(closing)
      assert.isFalse(a!.killed)
      assert.isFalse(a!.exited)
      assert.strictEqual(counters.forcedTerminations, 0)
      assert.strictEqual(counters.workersLeftRunning, 1)
      // a program's last step waits for it (exiting while it runs would abort the process)
      assert.strictEqual(InstancePool.leftRunningCount(), 1)
      const waiting = yield* Effect.forkChild(InstancePool.awaitLeftRunning, { startImmediately: true })
      // the job sent ahead is taken back (a plain close fails it, as what waited), and the instance is told to skip it
      const aheadReason = reasonOf(yield* Fiber.join(ahead))
      assert.strictEqual(aheadReason?._tag, "ModelUnavailable")
      assert.include(aheadReason?.message ?? "", "the model pool is closing")
      assert.isTrue(a!.sent.some((m) => m._tag === "cancel" && m.id === aheadId))
      // the run ends: its caller gets its outputs, then the instance is asked to close, and exits
      assert.isUndefined(waiting.pollUnsafe(), "waiting while it runs")
      a!.finishRunning(7)
      yield* settle
      const result = yield* Fiber.join(running)
      assert.isTrue(Exit.isSuccess(result))
      assert.isTrue(a!.sent.some((m) => m._tag === "close"))
      assert.isTrue(a!.exited)
      assert.isDefined(waiting.pollUnsafe(), "the wait ends when it exits")
      assert.strictEqual(InstancePool.leftRunningCount(), 0)
      assert.strictEqual(counters.workersExited, counters.workersSpawned)
      assert.strictEqual(counters.sessionsOpened, counters.sessionsClosed + counters.sessionsLost)
    }))

  it.effect("at closeTimeout on a reload (closeInto), the jobs sent ahead to an instance left running go to the successor and run there", () =>
    Effect.gen(function*() {
      const old = yield* started({ instances: 1, closeTimeout: Duration.seconds(1) }, "thread", true)
      old.auto.skipCancelled = true
      const [a] = old.instances
      const running = yield* Effect.forkChild(Effect.exit(old.pool.run(x, "running")), { startImmediately: true })
      const ahead = yield* Effect.forkChild(Effect.exit(old.pool.run(x, "ahead")), { startImmediately: true })
      yield* settle
      assert.strictEqual(a!.runs().length, 2)
      const next = yield* started({ instances: 1 })
      const [b] = next.instances
      const closing = yield* Effect.forkChild(old.pool.closeInto(next.pool, "reloaded"), { startImmediately: true })
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(closing)
      // taken back from a, sent to b
      assert.strictEqual(b!.runs().length, 1)
      b!.finishRunning(42)
      yield* settle
      const moved = yield* Fiber.join(ahead)
      assert.isTrue(Exit.isSuccess(moved), String(moved))
      if (Exit.isSuccess(moved)) assert.deepStrictEqual(Array.from(moved.value.outputs["y"]!.data as Float32Array), [42])
      // a's run ends: its own caller is answered, then a exits
      a!.finishRunning(7)
      yield* settle
      assert.isTrue(Exit.isSuccess(yield* Fiber.join(running)))
      assert.isTrue(a!.exited)
    }))

  it.effect("at closeTimeout, a replacement still loading in a thread is left to load, then closed: its kill would abort the process too", () =>
    Effect.gen(function*() {
      const counters = InstancePool.makeCounters()
      const { instances, pool } = yield* started({ instances: 1, counters, closeTimeout: Duration.seconds(1) }, "thread", true)
      instances[0]!.die("exit code 3")
      yield* settle
      assert.strictEqual(instances.length, 2, "a replacement is loading")
      const closing = yield* Effect.forkChild(pool.close, { startImmediately: true })
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(closing)
      const replacement = instances[1]!
      assert.isFalse(replacement.killed)
      assert.strictEqual(counters.workersLeftRunning, 1)
      // once loaded, it is asked to close, and exits
      replacement.ready()
      yield* settle
      assert.isTrue(replacement.sent.some((m) => m._tag === "close"))
      assert.isTrue(replacement.exited)
      assert.strictEqual(counters.workersExited, counters.workersSpawned)
    }))
})
