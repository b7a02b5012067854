import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber } from "effect"
import { TestClock } from "effect/testing"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as ResponseCache from "../src/ResponseCache.ts"
import * as Tensor from "../src/Tensor.ts"
import { makeHarness } from "./fixtures/EngineHarness.ts"
import { echoInputs, echoMetadata } from "./fixtures/FakeModelPool.ts"

const entry = (values: ReadonlyArray<number>): ResponseCache.Entry => ({ outputs: { y: Tensor.float32(values, [1, values.length]) }, deviceUsed: "cpu" })
const valuesOf = (e: ResponseCache.Entry | undefined) => Array.from((e?.outputs["y"]?.data ?? []) as Float32Array)

describe("ResponseCache", () => {
  it("answers what it keeps, as copies: neither the inserted arrays nor a hit's change what it holds", () => {
    const cache = ResponseCache.make(10_000)
    const inserted = entry([1, 2, 3])
    cache.insert("a", inserted)
    ;(inserted.outputs["y"]!.data as Float32Array)[0] = 99
    const hit = cache.lookup("a")
    assert.deepStrictEqual(valuesOf(hit), [1, 2, 3])
    assert.strictEqual(hit?.deviceUsed, "cpu")
    ;(hit!.outputs["y"]!.data as Float32Array)[1] = 99
    assert.deepStrictEqual(valuesOf(cache.lookup("a")), [1, 2, 3])
    assert.isUndefined(cache.lookup("b"))
    assert.deepInclude(cache.stats(), { entries: 1, hits: 2, misses: 1, evictions: 0 })
  })

  it("drops the least recently used entries to stay within its bytes, and keeps nothing larger than all of them", () => {
    const size = ResponseCache.sizeOf(entry([1, 2, 3, 4])) // 16 bytes of floats and the overheads
    assert.strictEqual(size, 16 + ResponseCache.tensorOverheadBytes + ResponseCache.entryOverheadBytes)
    const cache = ResponseCache.make(3 * size)
    cache.insert("a", entry([1, 0, 0, 0]))
    cache.insert("b", entry([2, 0, 0, 0]))
    cache.insert("c", entry([3, 0, 0, 0]))
    cache.lookup("a") // a is now the most recently used: b goes first
    cache.insert("d", entry([4, 0, 0, 0]))
    assert.isUndefined(cache.lookup("b"))
    assert.deepStrictEqual(["a", "c", "d"].map((k) => valuesOf(cache.lookup(k))[0]), [1, 3, 4])
    assert.deepInclude(cache.stats(), { entries: 3, bytes: 3 * size, evictions: 1 })
    // larger than the whole cache: not kept, and nothing is dropped for it
    cache.insert("big", entry(Array.from({ length: 1000 }, () => 1)))
    assert.isUndefined(cache.lookup("big"))
    assert.strictEqual(cache.stats().entries, 3)
    // the same key again replaces its entry, counted once
    cache.insert("a", entry([5, 0, 0, 0]))
    assert.deepStrictEqual(valuesOf(cache.lookup("a")), [5, 0, 0, 0])
    assert.strictEqual(cache.stats().bytes, 3 * size)
  })

  it("counts each tensor's objects and a string output's text", () => {
    const strings: ResponseCache.Entry = { outputs: { s: Tensor.make("string", ["é", "abc"], [2]) }, deviceUsed: "cpu" }
    assert.strictEqual(ResponseCache.sizeOf(strings), ResponseCache.entryOverheadBytes + ResponseCache.tensorOverheadBytes + (32 + 2) + (32 + 6))
    const two: ResponseCache.Entry = { outputs: { a: Tensor.float32([1], [1]), b: Tensor.float32([1], [1]) }, deviceUsed: "cpu" }
    assert.strictEqual(ResponseCache.sizeOf(two), ResponseCache.entryOverheadBytes + 2 * (ResponseCache.tensorOverheadBytes + 4))
  })

  it("keyOf tells apart every part of a request, and only those", () => {
    const x = (data: ReadonlyArray<number>, dims: ReadonlyArray<number>) => Tensor.float32(data, dims)
    const base = ResponseCache.keyOf("m", "1#0", { a: x([1, 2, 3, 4], [1, 4]), b: Tensor.int64([7], [1]) })
    // the same request, its inputs listed in another order
    assert.strictEqual(ResponseCache.keyOf("m", "1#0", { b: Tensor.int64([7], [1]), a: x([1, 2, 3, 4], [1, 4]) }), base)
    const others = [
      ResponseCache.keyOf("n", "1#0", { a: x([1, 2, 3, 4], [1, 4]), b: Tensor.int64([7], [1]) }),
      ResponseCache.keyOf("m", "1#1", { a: x([1, 2, 3, 4], [1, 4]), b: Tensor.int64([7], [1]) }),
      ResponseCache.keyOf("m", "1#0", { a: x([1, 2, 3, 4], [2, 2]), b: Tensor.int64([7], [1]) }),
      ResponseCache.keyOf("m", "1#0", { a: x([1, 2, 3, 5], [1, 4]), b: Tensor.int64([7], [1]) }),
      ResponseCache.keyOf("m", "1#0", { c: x([1, 2, 3, 4], [1, 4]), b: Tensor.int64([7], [1]) }),
      // the same bytes as another type
      ResponseCache.keyOf("m", "1#0", { a: Tensor.make("int32", new Int32Array(new Float32Array([1, 2, 3, 4]).buffer), [1, 4]), b: Tensor.int64([7], [1]) }),
      ResponseCache.keyOf("m", "1#0", { a: x([1, 2, 3, 4], [1, 4]) })
    ]
    assert.strictEqual(new Set([base, ...others]).size, others.length + 1)
    // strings are length-prefixed: ["ab", "c"] is not ["a", "bc"]; names and models too
    assert.notStrictEqual(
      ResponseCache.keyOf("m", "1", { s: Tensor.make("string", ["ab", "c"], [2]) }),
      ResponseCache.keyOf("m", "1", { s: Tensor.make("string", ["a", "bc"], [2]) })
    )
    assert.notStrictEqual(ResponseCache.keyOf("ab", "c", {}), ResponseCache.keyOf("a", "bc", {}))
    // a view reads only its own bytes
    const buffer = new Float32Array([9, 1, 2, 3, 4, 9])
    assert.strictEqual(
      ResponseCache.keyOf("m", "1#0", { a: Tensor.float32(buffer.subarray(1, 5), [1, 4]), b: Tensor.int64([7], [1]) }),
      base
    )
  })
})

describe("the engine's response cache", () => {
  const request = (id: string, value: number) => InferenceRequest.make("echo", echoInputs(value), { requestId: id })
  const cached = { config: { responseCacheBytes: 1_000_000 }, metadata: { responseCache: true } } as const

  it.effect("answers a request it answered before without a run, with equal outputs the caller owns", () =>
    Effect.gen(function*() {
      const { engine, log, stats } = yield* makeHarness(cached)
      const first = yield* Effect.forkChild(engine.infer(request("a", 3)), { startImmediately: true })
      yield* TestClock.adjust("10 millis")
      const a = yield* Fiber.join(first)
      const b = yield* engine.infer(request("b", 3)) // no clock needed: nothing runs
      assert.strictEqual(stats.started, 1)
      assert.deepStrictEqual(Array.from(b.outputs["y"]!.data as Float32Array), [6, 6, 6, 6])
      assert.deepStrictEqual(b.outputs, a.outputs)
      assert.notStrictEqual(b.outputs["y"]!.data, a.outputs["y"]!.data)
      assert.strictEqual(b.deviceUsed, "cpu")
      assert.strictEqual(b.modelVersion, "1")
      // another input runs
      const other = yield* Effect.forkChild(engine.infer(request("c", 4)), { startImmediately: true })
      yield* TestClock.adjust("10 millis")
      yield* Fiber.join(other)
      assert.strictEqual(stats.started, 2)
      const lookups = log.events.flatMap((e) => e._tag === "cacheLookup" ? [`${e.requestId}:${e.hit}`] : [])
      assert.deepStrictEqual(lookups, ["a:false", "b:true", "c:false"])
      // a hit is a success, after its start
      assert.deepStrictEqual(log.events.filter((e) => e._tag !== "queueWait" && e._tag !== "run" && e._tag !== "cacheLookup" && e.requestId === "b").map((e) => e._tag), ["start", "success"])
    }))

  it.effect("keeps nothing of a failed run, and nothing without responseCache or without a cache", () =>
    Effect.gen(function*() {
      const failing = yield* makeHarness({ ...cached, script: (id) => id === "a" ? { latency: "10 millis", failWith: "boom" } : { latency: "10 millis" } })
      const first = yield* Effect.forkChild(Effect.exit(failing.engine.infer(request("a", 3))), { startImmediately: true })
      yield* TestClock.adjust("10 millis")
      assert.isTrue(Exit.isFailure(yield* Fiber.join(first)))
      const retry = yield* Effect.forkChild(failing.engine.infer(request("b", 3)), { startImmediately: true })
      yield* TestClock.adjust("10 millis")
      yield* Fiber.join(retry)
      assert.strictEqual(failing.stats.started, 2, "the failure was not kept: the retry ran")
      for (const options of [{ config: cached.config }, { metadata: cached.metadata }]) {
        const { engine, log, stats } = yield* makeHarness(options)
        for (const id of ["a", "b"]) {
          const f = yield* Effect.forkChild(engine.infer(request(id, 3)), { startImmediately: true })
          yield* TestClock.adjust("10 millis")
          yield* Fiber.join(f)
        }
        assert.strictEqual(stats.started, 2, JSON.stringify(options))
        assert.isFalse(log.events.some((e) => e._tag === "cacheLookup"))
      }
    }))

  it.effect("an edge's early check lets a cached model's request through a full queue, but not past the bodies the queue can hold waiting at the edge", () =>
    Effect.gen(function*() {
      const withCache = yield* makeHarness({ ...cached, config: { ...cached.config, maxQueuedRequests: 2 } })
      const without = yield* makeHarness({ config: { maxQueuedRequests: 2 } })
      const metadata = { ...echoMetadata, responseCache: true }
      // the queue holds 2: with 2 bodies waiting at the edge it is full for any other model
      assert.strictEqual(without.engine.queueFullUnsafe("echo", echoMetadata, 2)?._tag, "QueueFull")
      assert.isUndefined(withCache.engine.queueFullUnsafe("echo", metadata, 1))
      assert.strictEqual(withCache.engine.queueFullUnsafe("echo", metadata, 2)?._tag, "QueueFull")
      assert.strictEqual(withCache.engine.queueFullUnsafe("echo", metadata, 1000)?._tag, "QueueFull")
    }))

  it.effect("a hit answers at admission: past a full queue, at once for a request whose deadline the queue would miss", () =>
    Effect.gen(function*() {
      const { engine, stats } = yield* makeHarness({ ...cached, config: { ...cached.config, maxConcurrentRequests: 1, maxQueuedRequests: 1 }, script: () => ({ latency: "1 second" }) })
      const first = yield* Effect.forkChild(engine.infer(request("a", 3)), { startImmediately: true })
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(first)
      // the only instance busy, the queue full
      yield* Effect.forkChild(engine.infer(request("busy", 5)), { startImmediately: true })
      yield* Effect.forkChild(engine.infer(request("queued", 6)), { startImmediately: true })
      const full = yield* Effect.flip(engine.infer(request("refused", 7)))
      assert.strictEqual(full.reason._tag, "QueueFull")
      const runs = stats.started
      const hit = yield* engine.infer(InferenceRequest.make("echo", echoInputs(3), { requestId: "hit", timeout: "5 millis" }))
      assert.deepStrictEqual(Array.from(hit.outputs["y"]!.data as Float32Array), [6, 6, 6, 6])
      assert.strictEqual(stats.started, runs, "no run for the hit")
    }))
})
