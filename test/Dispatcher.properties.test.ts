/**
 * The engine over pools that pin jobs to instances (`InstancePool`, two jobs an instance, over a
 * fake transport that echoes each request's value), driven by random schedules: requests in bursts
 * for two models, callers that leave, runs that end in any order, cancels that reach the instance
 * in time or too late (it began the job), instances that die (and are replaced). Three ways to
 * send work: a request a job, joined batches, groups. After every step:
 * - native runs at once (instances with a job in hand) stay within `maxConcurrentRequests`;
 * - the engine's `ahead` is what the pools hold waiting ahead for callers still waiting (when
 *   nothing waits in a pool's own FIFO); at least that where a batch's or group's job failed with
 *   its instance and its members run again alone (the members waiting for their turn count too);
 * - every answer carries its own request's value.
 * Then everything drains: every caller answered, nothing left in flight, and the engine's close and
 * the pools' close both end. One variant closes the engine midway: every caller is answered at once.
 *
 * `PROPERTY_RUNS` scales the seeds (1000: the default).
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Exit, Fiber, Layer, Scope } from "effect"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import { AsyncInferenceEngine } from "../src/Engine.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import { ModelPool } from "../src/ModelPool.ts"
import * as InstancePool from "../src/onnx/InstancePool.ts"
import type * as Protocol from "../src/onnx/Protocol.ts"
import { layerRecording } from "../src/Telemetry.ts"
import * as Tensor from "../src/Tensor.ts"
import { poolOptions } from "./fixtures/FakeTransport.ts"

const seeds = Math.max(1, Math.round(40 * Number(process.env.PROPERTY_RUNS ?? 1000) / 1000))
const maxConcurrentRequests = 2

/** A job an instance holds: its id, the values of the requests it carries, and for a group the rows of each run. */
interface Held {
  readonly id: number
  readonly values: ReadonlyArray<number>
  readonly group: ReadonlyArray<number> | undefined
}

/** One fake instance: runs the first job it holds until told to end it, echoing the inputs. */
class Instance {
  readonly inHand: Array<Held> = []
  readonly skipping = new Set<number>()
  exited = false
  readonly events: InstancePool.InstanceEvents
  constructor(events: InstancePool.InstanceEvents) {
    this.events = events
  }
  finishRunning(): void {
    const head = this.inHand.shift()
    if (head === undefined) return
    const y = (values: ReadonlyArray<number>) => ({ y: Tensor.float32(Float32Array.from(values), [values.length, 1]) })
    if (head.group === undefined) this.events.message({ _tag: "done", id: head.id, outputs: y(head.values), deviceUsed: "cpu", runMs: 1 })
    else {
      let at = 0
      const results = head.group.map((rows) => ({ _tag: "done" as const, outputs: y(head.values.slice(at, at += rows)), runMs: 1 }))
      this.events.message({ _tag: "doneGroup", id: head.id, deviceUsed: "cpu", results })
    }
    // a job it was told to skip is skipped when its turn comes
    for (let next = this.inHand[0]; next !== undefined && this.skipping.delete(next.id); next = this.inHand[0]) {
      this.inHand.shift()
      this.events.message({ _tag: "failed", id: next.id, error: "cancelled before it ran" })
    }
  }
  die(): void {
    if (this.exited) return
    this.exited = true
    this.inHand.length = 0
    this.events.exit("exit code 3")
  }
}

class World {
  readonly instances: Array<Instance> = []
  /** Whether a cancel reaches the instance before it begins the job. */
  readonly cancelInTime: () => boolean
  constructor(cancelInTime: () => boolean) {
    this.cancelInTime = cancelInTime
  }
  native(): number {
    return this.instances.filter((i) => !i.exited && i.inHand.length > 0).length
  }
  readonly transport: InstancePool.Transport = {
    isolation: "thread",
    noun: "fake",
    spanPrefix: "Fake",
    spawn: (_config, events) => {
      const instance = new Instance(events)
      this.instances.push(instance)
      queueMicrotask(() => events.message({ _tag: "ready", deviceUsed: "cpu", fallbacks: [], inputs: [{ name: "x", dtype: "float32", dims: [-1, 1] }], outputs: [{ name: "y", dtype: "float32", dims: [-1, 1] }], loadMs: 1, warmupMs: 0 }))
      return {
        send: (message: Protocol.ToWorker) => {
          if (instance.exited) throw new Error("channel closed")
          if (message._tag === "run") instance.inHand.push({ id: message.id, values: Array.from(message.inputs["x"]!.data as Float32Array), group: undefined })
          if (message._tag === "runGroup") {
            const parts = message.inputs.map((inputs) => Array.from(inputs["x"]!.data as Float32Array))
            instance.inHand.push({ id: message.id, values: parts.flat(), group: parts.map((p) => p.length) })
          }
          // in time, the instance skips the job at its turn; too late, it has begun it (or will)
          if (message._tag === "cancel" && instance.inHand.findIndex((h) => h.id === message.id) > 0 && this.cancelInTime()) instance.skipping.add(message.id)
          if (message._tag === "close") queueMicrotask(() => {
            events.message({ _tag: "closed" })
            instance.die()
          })
        },
        kill: () => queueMicrotask(() => instance.die()),
        pid: undefined
      }
    }
  }
}

const settle = Effect.gen(function*() {
  for (let i = 0; i < 5; i++) {
    yield* Effect.promise(() => new Promise<void>((r) => setImmediate(r)))
    yield* Effect.yieldNow
  }
})

const startPool = (world: World, modelId: string, instances: number) =>
  Effect.gen(function*() {
    const options = poolOptions({ modelId, instances, respawnDelay: Duration.millis(1) })
    const fiber = yield* Effect.forkChild(InstancePool.start(options, world.transport), { startImmediately: true })
    yield* settle
    return yield* Fiber.join(fiber)
  })

type Mode = "alone" | "batch" | "group"

const engineOver = (pools: Record<string, InstancePool.InstancePool>, mode: Mode) =>
  Effect.gen(function*() {
    const batching: BatchPolicy.BatchingConfig = mode === "batch" ? { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 4, maxQueueDelay: Duration.millis(1) } : BatchPolicy.disabled
    const modelPool = ModelPool.of({
      metadata: (modelId) => Effect.succeed({ ...pools[modelId]!.metadata, batching, concurrency: pools[modelId]!.stats().instances, pipelineDepth: 2, reportsStarts: true }),
      run: (modelId, inputs, options) => pools[modelId]!.run(inputs, options.requestId, options),
      ...(mode === "group" ? { runGroup: (modelId: string, inputs: ReadonlyArray<Tensor.TensorMap>, options: InstancePool.RunOptions & { readonly requestId: string }) => pools[modelId]!.runGroup(inputs, options.requestId, options) } : {}),
      models: Effect.succeed([])
    })
    const context = yield* Layer.build(
      AsyncInferenceEngine.layer.pipe(Layer.provideMerge(Layer.mergeAll(Layer.succeed(ModelPool, modelPool), layerRecording, AsyncConfigService.layerWith({ maxConcurrentRequests, maxQueuedRequests: 1000 }))))
    )
    return Context.get(context, AsyncInferenceEngine)
  })

/** A seeded linear congruential generator in [0, 1). */
const random = (seed: number) => () => {
  seed = (seed * 1103515245 + 12345) >>> 0
  return seed / 2 ** 32
}

/** Plays one random schedule; the invariants it saw broken (empty: none). */
const play = (seed: number, mode: Mode, deaths: boolean, closeMidway: boolean) =>
  Effect.gen(function*() {
    const rand = random(seed)
    const world = new World(() => rand() < 0.5)
    const pools = { m: yield* startPool(world, "m", 2), n: yield* startPool(world, "n", 1) }
    const scope = yield* Scope.make()
    const engine = yield* engineOver(pools, mode).pipe(Scope.provide(scope))
    const callers = new Map<number, Fiber.Fiber<Exit.Exit<unknown, unknown>>>()
    const broken: Array<string> = []
    const steps = 200
    const closeAt = closeMidway ? 20 + Math.floor(rand() * (steps - 40)) : -1
    let next = 0
    /** The answers that came: each must echo its own value. */
    const collect = () => {
      for (const [value, caller] of callers) {
        const exit = caller.pollUnsafe()
        if (exit === undefined) continue
        callers.delete(value)
        const answer = Exit.isSuccess(exit) && Exit.isSuccess(exit.value) ? exit.value.value as { readonly outputs: Tensor.TensorMap } : undefined
        const y = answer?.outputs["y"]?.data as Float32Array | undefined
        if (answer !== undefined && (y?.length !== 1 || y[0] !== value)) broken.push(`r${value} was answered with ${String(y)}`)
      }
    }
    for (let step = 0; step < steps && broken.length === 0; step++) {
      if (step === closeAt) {
        yield* Scope.close(scope, Exit.void)
        yield* settle
        collect()
        if (callers.size > 0) broken.push(`after the engine closed, ${callers.size} callers unanswered`)
        break
      }
      const r = rand()
      if (r < 0.45) {
        const model = rand() < 0.6 ? "m" : "n"
        for (let b = 1 + Math.floor(rand() * 4); b > 0; b--) {
          const value = ++next
          const request = InferenceRequest.make(model, { x: Tensor.float32(Float32Array.of(value), [1, 1]) }, { requestId: `r${value}` })
          callers.set(value, yield* Effect.forkChild(Effect.exit(engine.infer(request)), { startImmediately: true }))
        }
      } else if (r < 0.6 && callers.size > 0) {
        const values = [...callers.keys()]
        yield* Fiber.interrupt(callers.get(values[Math.floor(rand() * values.length)]!)!)
      } else if (r < (deaths ? 0.97 : 1)) {
        const busy = world.instances.filter((i) => !i.exited && i.inHand.length > 0)
        if (busy.length > 0) busy[Math.floor(rand() * busy.length)]!.finishRunning()
      } else {
        const live = world.instances.filter((i) => !i.exited)
        if (live.length > 0) live[Math.floor(rand() * live.length)]!.die()
      }
      yield* settle
      collect()
      if (world.native() > maxConcurrentRequests) broken.push(`step ${step}: ${world.native()} native runs, over maxConcurrentRequests ${maxConcurrentRequests}`)
      if (pools.m.stats().queued + pools.n.stats().queued === 0) {
        let held = 0
        for (const instance of world.instances) {
          if (!instance.exited) instance.inHand.forEach((job, i) => (held += i > 0 && !instance.skipping.has(job.id) ? job.values.filter((v) => callers.has(v)).length : 0))
        }
        const { ahead } = yield* engine.diagnostics
        const reruns = deaths && mode !== "alone"
        if (reruns ? ahead < held : ahead !== held) broken.push(`step ${step}: the engine counts ${ahead} waiting ahead, the pools hold ${held}`)
      }
    }
    if (closeAt < 0) {
      for (let round = 0; round < 200 && (callers.size > 0 || world.native() > 0); round++) {
        for (const instance of world.instances) if (!instance.exited) instance.finishRunning()
        yield* settle
        collect()
      }
      if (callers.size > 0) broken.push(`after the drain, ${callers.size} callers unanswered`)
      const left = yield* engine.diagnostics
      if (left.runs !== 0 || left.ahead !== 0 || left.unsettled !== 0) broken.push(`after the drain: ${JSON.stringify(left)}`)
      const closing = yield* Effect.forkChild(Scope.close(scope, Exit.void), { startImmediately: true })
      yield* settle
      if (closing.pollUnsafe() === undefined) broken.push("the engine's close does not end")
    }
    const poolsClosing = yield* Effect.forkChild(Effect.all([pools.m.close, pools.n.close]), { startImmediately: true })
    for (let round = 0; round < 50 && poolsClosing.pollUnsafe() === undefined; round++) {
      for (const instance of world.instances) if (!instance.exited) instance.finishRunning()
      yield* settle
    }
    if (poolsClosing.pollUnsafe() === undefined) broken.push("the pools' close does not end")
    return broken
  })

describe("Dispatcher properties: the engine over pools that pin jobs to instances", () => {
  for (const mode of ["alone", "batch", "group"] as const) {
    for (const deaths of [false, true]) {
      it.live(`${mode === "alone" ? "a request a job" : mode === "batch" ? "joined batches" : "groups"}, ${deaths ? "with" : "without"} instances dying: the bounds and counts hold, and everything drains`, () =>
        Effect.gen(function*() {
          const failures: Array<string> = []
          for (let seed = 1; seed <= seeds; seed++) {
            const broken = yield* play(seed, mode, deaths, false)
            if (broken.length > 0) failures.push(`seed ${seed}: ${broken.slice(0, 3).join(" | ")}`)
          }
          assert.deepStrictEqual(failures, [])
        }), 120_000)
    }
  }

  it.live("closing the engine midway answers every caller at once, and the pools close after", () =>
    Effect.gen(function*() {
      const failures: Array<string> = []
      for (let seed = 1; seed <= seeds; seed++) {
        const broken = yield* play(seed, (["alone", "batch", "group"] as const)[seed % 3]!, seed % 2 === 0, true)
        if (broken.length > 0) failures.push(`seed ${seed}: ${broken.slice(0, 3).join(" | ")}`)
      }
      assert.deepStrictEqual(failures, [])
    }), 120_000)
})
