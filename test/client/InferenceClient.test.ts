/**
 * The Promise facade over the engine, on the scripted fake pool (`echo`, real clock): results
 * and typed rejections, AbortSignal before, while queued and while running, batches as
 * AsyncIterables, stats and close. One test on the bundled repository checks the default pool.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Layer, Logger, Tracer } from "effect"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import * as InferenceClient from "../../src/InferenceClient.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import * as InferenceRequest from "../../src/InferenceRequest.ts"
import { ModelPool } from "../../src/ModelPool.ts"
import type * as InferenceResult from "../../src/InferenceResult.ts"
import * as Tensor from "../../src/Tensor.ts"
import { makeCounterPool, step } from "../fixtures/CounterPool.ts"
import { echoInputs, makeFake, type Script } from "../fixtures/FakeModelPool.ts"

const echo = (id: string, value = 1) => InferenceRequest.make("echo", echoInputs(value), { requestId: id })

/** A client on the fake pool; `script` gives each request's latency. */
const fakeClient = async (script: (requestId: string) => Script, maxConcurrentRequests = 1) => {
  const fake = Effect.runSync(makeFake(script))
  const client = await InferenceClient.make({ modelPool: fake.layer, config: { maxConcurrentRequests } })
  return { client, stats: fake.stats }
}

const rejection = async (promise: Promise<unknown>): Promise<unknown> => {
  try {
    await promise
  } catch (e) {
    return e
  }
  throw new Error("expected a rejection")
}

const reasonOf = (e: unknown): string => {
  assert.isTrue(InferenceError.isInferenceError(e), `not an InferenceError: ${String(e)}`)
  return (e as InferenceError.InferenceError).reason._tag
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe("InferenceClient", () => {
  it("resolves infer with the engine's Success", async () => {
    const { client } = await fakeClient(() => ({ latency: "1 millis" }))
    const result = await client.infer(echo("a", 3))
    assert.strictEqual(result._tag, "Success")
    assert.deepStrictEqual(Array.from(result.outputs["y"]!.data as Float32Array), [6, 6, 6, 6])
    await client.close()
  })

  it("close lets a sequence under way finish within its grace: its end is answered, a new one refused, and close returns then, not at the grace", async () => {
    const counter = makeCounterPool({ sequence: undefined, latencyMs: 1 })
    const client = await InferenceClient.make({ modelPool: Layer.succeed(ModelPool, counter.pool) })
    const y = (r: InferenceResult.Success) => (r.outputs["y"]!.data as Float32Array)[0]
    assert.strictEqual(y(await client.infer(step(1, 5, { start: true }))), 5)
    const startedMs = performance.now()
    const closing = client.close({ grace: "10 seconds" })
    assert.strictEqual(reasonOf(await rejection(client.infer(step(2, 1, { start: true })))), "ShuttingDown")
    assert.strictEqual(reasonOf(await rejection(client.metadata("counter"))), "ShuttingDown")
    assert.strictEqual(y(await client.infer(step(1, 2))), 7)
    const ended = await client.inferResult(step(1, 3, { end: true }))
    assert.strictEqual(ended._tag, "Success")
    await closing
    assert.isBelow(performance.now() - startedMs, 5_000, "close returned once the sequence ended")
    assert.strictEqual(reasonOf(await rejection(client.infer(step(1, 1)))), "ShuttingDown")
  })

  it("rejects with the typed InferenceError (unknown model, invalid input)", async () => {
    const { client } = await fakeClient(() => ({ latency: "1 millis" }))
    assert.strictEqual(reasonOf(await rejection(client.infer(InferenceRequest.make("nope", echoInputs(1))))), "ModelNotFound")
    const wrong = InferenceRequest.make("echo", { x: Tensor.float32([1, 2, 3], [1, 3]) })
    assert.strictEqual(reasonOf(await rejection(client.infer(wrong))), "InvalidInput")
    assert.strictEqual(reasonOf(await rejection(client.metadata("nope"))), "ModelNotFound")
    assert.strictEqual((await client.metadata("echo")).inputs[0]!.name, "x")
    await client.close()
  })

  it("aborting a queued request takes it out of the queue: it never runs and rejects with Cancelled", async () => {
    const { client, stats } = await fakeClient(() => ({ latency: "150 millis" }))
    const first = client.infer(echo("first"))
    const controller = new AbortController()
    const queued = client.infer(echo("queued"), { signal: controller.signal })
    await sleep(20)
    assert.strictEqual((await client.stats()).queue.total, 1)
    controller.abort(new Error("no longer needed"))
    const error = await rejection(queued)
    assert.strictEqual(reasonOf(error), "Cancelled")
    assert.include((error as InferenceError.InferenceError).message, "no longer needed")
    assert.strictEqual((await client.stats()).queue.total, 0)
    assert.strictEqual((await first)._tag, "Success")
    await sleep(20)
    assert.deepStrictEqual(stats.order, ["first"])
    await client.close()
  })

  it("aborting a running request answers at once; its run's result is dropped", async () => {
    const { client, stats } = await fakeClient(() => ({ latency: "400 millis" }))
    const controller = new AbortController()
    const running = client.infer(echo("long"), { signal: controller.signal })
    await sleep(50)
    assert.strictEqual(stats.active, 1)
    const abortedAt = Date.now()
    controller.abort()
    assert.strictEqual(reasonOf(await rejection(running)), "Cancelled")
    assert.isBelow(Date.now() - abortedAt, 200)
    assert.strictEqual((await client.stats()).pending, 0)
    await client.close()
  })

  it("an already-aborted signal rejects with Cancelled and runs nothing", async () => {
    const { client, stats } = await fakeClient(() => ({ latency: "1 millis" }))
    assert.strictEqual(reasonOf(await rejection(client.infer(echo("x"), { signal: AbortSignal.abort() }))), "Cancelled")
    const result = await client.inferResult(echo("y"), { signal: AbortSignal.abort("stop") })
    assert.deepInclude(result, { _tag: "Cancelled", reason: "stop" })
    await sleep(10)
    assert.strictEqual(stats.started, 0)
    await client.close()
  })

  it("inferBatch yields every result as an AsyncIterable", async () => {
    const { client } = await fakeClient(() => ({ latency: "5 millis" }), 2)
    const seen: Array<string> = []
    for await (const result of client.inferBatch(Array.from({ length: 12 }, (_, i) => echo(`r${i}`)), { concurrency: 4 })) {
      assert.strictEqual(result._tag, "Success")
      seen.push(result.requestId)
    }
    assert.deepStrictEqual(seen.toSorted(), Array.from({ length: 12 }, (_, i) => `r${i}`).toSorted())
    await client.close()
  })

  it("inferBatch throws a TypeError for a concurrency that is not a positive integer (NaN hung, 0 and -1 passed)", async () => {
    const { client } = await fakeClient(() => ({ latency: "1 millis" }))
    for (const concurrency of [0, -1, Number.NaN, 1.5]) {
      assert.throws(() => client.inferBatch([echo("a")], { concurrency }), TypeError, "concurrency must be a positive integer")
    }
    await client.close()
  })

  it("leaving a batch's for-await early cancels what is outstanding", async () => {
    const { client, stats } = await fakeClient(() => ({ latency: "30 millis" }), 1)
    let taken = 0
    for await (const _ of client.inferBatch(Array.from({ length: 20 }, (_, i) => echo(`r${i}`)), { concurrency: 4 })) {
      if (++taken === 2) break
    }
    assert.strictEqual((await client.stats()).pending, 0)
    await sleep(100)
    assert.isBelow(stats.started, 8)
    await client.close()
  })

  it("an abort reason with no string form is Cancelled with a fallback text, not a crash", async () => {
    const { client } = await fakeClient(() => ({ latency: "50 millis" }))
    const throwing = { toString: () => { throw new Error("no string for you") } }
    for (const reason of [Object.create(null) as unknown, throwing]) {
      const queued = new AbortController()
      const running = client.inferResult(echo("running"))
      const result = client.inferResult(echo("queued"), { signal: queued.signal })
      const rejected = rejection(client.infer(echo("queued-2"), { signal: queued.signal }))
      queued.abort(reason)
      assert.deepInclude(await result, { _tag: "Cancelled", reason: "aborted (the reason has no text)" })
      assert.strictEqual(reasonOf(await rejected), "Cancelled")
      const batch: Array<string> = []
      for await (const r of client.inferBatch([echo("b")], { signal: AbortSignal.abort(reason) })) batch.push(r._tag)
      assert.deepStrictEqual(batch, [])
      await running
    }
    await client.close()
  })

  it("a batch ending early closes the caller's generator (its finally runs): a break, or an abort", async () => {
    const { client } = await fakeClient(() => ({ latency: "5 millis" }), 2)
    const source = (closed: { value: boolean }) =>
      (function*() {
        try {
          for (let i = 0;; i++) yield echo(`g${i}`)
        } finally {
          closed.value = true
        }
      })()
    const onBreak = { value: false }
    for await (const _ of client.inferBatch(source(onBreak), { concurrency: 2 })) break
    assert.isTrue(onBreak.value, "break")
    const onAbort = { value: false }
    const controller = new AbortController()
    let seen = 0
    for await (const _ of client.inferBatch(source(onAbort), { concurrency: 2, signal: controller.signal })) if (++seen === 3) controller.abort()
    assert.isTrue(onAbort.value, "abort")
    await client.close()
  })

  it("close ends a batch in flight: the next request it takes is answered ShuttingDown, and an endless generator is not read on", async () => {
    const { client } = await fakeClient(() => ({ latency: "2 millis" }), 2)
    let pulled = 0
    let closed = false
    const endless = (function*() {
      try {
        for (;;) {
          pulled++
          yield echo(`e${pulled}`)
        }
      } finally {
        closed = true
      }
    })()
    const tags: Array<string> = []
    let closing: Promise<void> | undefined
    for await (const r of client.inferBatch(endless, { concurrency: 4 })) {
      tags.push(r._tag === "Failed" ? r.error.reason._tag : r._tag)
      if (tags.length === 10) closing = client.close()
      if (tags.length > 10_000) break
    }
    await closing
    assert.isBelow(tags.length, 100, "the loop ended soon after close")
    assert.strictEqual(tags.at(-1), "ShuttingDown")
    assert.isTrue(closed, "the generator was closed")
    assert.isBelow(pulled, 100)
  })

  it("aborting a batch's signal settles what is outstanding as Cancelled", async () => {
    const { client } = await fakeClient(() => ({ latency: "40 millis" }), 1)
    const controller = new AbortController()
    const results: Array<InferenceResult.InferenceResult> = []
    setTimeout(() => controller.abort(), 60)
    for await (const result of client.inferBatch(Array.from({ length: 10 }, (_, i) => echo(`r${i}`)), { signal: controller.signal, concurrency: 10 })) {
      results.push(result)
    }
    assert.strictEqual(results.length, 10)
    const cancelled = results.filter((r) => r._tag === "Cancelled").length
    assert.isAtLeast(cancelled, 7)
    assert.strictEqual(results.filter((r) => r._tag === "Success").length + cancelled, 10)
    await client.close()
  })

  it("close answers requests still queued or running with ShuttingDown, and refuses new ones", async () => {
    const { client } = await fakeClient(() => ({ latency: "300 millis" }))
    const running = client.infer(echo("running"))
    const queued = client.infer(echo("queued"))
    await sleep(30)
    await client[Symbol.asyncDispose]()
    assert.strictEqual(reasonOf(await rejection(running)), "ShuttingDown")
    assert.strictEqual(reasonOf(await rejection(queued)), "ShuttingDown")
    assert.strictEqual(reasonOf(await rejection(client.infer(echo("later")))), "ShuttingDown")
    const late = await client.inferResult(echo("later"))
    assert.strictEqual(late._tag === "Failed" ? late.error.reason._tag : late._tag, "ShuttingDown")
    assert.isTrue((await client.stats()).draining)
    await client.close() // idempotent
  })

  it("close answers every inferResult still queued or running with a ShuttingDown result: none rejects", async () => {
    const { client } = await fakeClient(() => ({ latency: "300 millis" }))
    const pending = Array.from({ length: 20 }, (_, i) =>
      client.inferResult(echo(`r${i}`)).then(
        (result) => (result._tag === "Failed" ? result.error.reason._tag : result._tag),
        (error: unknown) => `rejected: ${String(error)}`
      ))
    await sleep(30)
    await client.close()
    assert.deepStrictEqual(await Promise.all(pending), Array.from({ length: 20 }, () => "ShuttingDown"))
  })

  it("close with a grace period lets running requests finish", async () => {
    const { client } = await fakeClient(() => ({ latency: "80 millis" }))
    const running = client.infer(echo("running"))
    await sleep(10)
    await client.close({ grace: "2 seconds" })
    assert.strictEqual((await running)._tag, "Success")
  })

  it("make rejects invalid engine settings with a TypeError naming the setting", async () => {
    const fake = Effect.runSync(makeFake(() => ({ latency: "1 millis" })))
    for (const [config, message] of [
      [{ maxConcurrentRequests: 0 }, "maxConcurrentRequests: Expected a value greater than or equal to 1, got 0"],
      [{ maxConcurrentRequests: Number.NaN }, "maxConcurrentRequests: Expected an integer, got NaN"],
      [{ maxQueuedRequests: 0 }, "maxQueuedRequests: Expected a value greater than or equal to 1, got 0"],
      [{ queueTimeout: Duration.seconds(-1) }, "queueTimeout: Expected a duration that is not negative"],
      [{ aging: { High: -5 } }, "aging.High: Expected a value greater than 0, got -5"]
    ] as const) {
      const error = await rejection(InferenceClient.make({ modelPool: fake.layer, config }))
      assert.instanceOf(error, TypeError)
      assert.include((error as TypeError).message, `InferenceClient.make: invalid config: ${message}`)
    }
  })

  it("a config key set to undefined keeps its default (typed so under exactOptionalPropertyTypes: a value read from the environment may be missing)", async () => {
    const fromEnv: number | undefined = process.env["EFFECT_ONNX_TEST_UNSET"] === undefined ? undefined : 1
    const fake = Effect.runSync(makeFake(() => ({ latency: "1 millis" })))
    const client = await InferenceClient.make({ modelPool: fake.layer, config: { maxConcurrentRequests: fromEnv, maxQueuedRequests: 7 } })
    assert.strictEqual(client.config.maxConcurrentRequests, 4)
    assert.strictEqual(client.config.maxQueuedRequests, 7)
    await client.close()
  })

  it("close rejects a grace that is not a duration, or is negative or NaN, with a TypeError and closes nothing", async () => {
    const { client } = await fakeClient(() => ({ latency: "1 millis" }))
    for (const grace of ["abc", Number.NaN, -1000, "-1 seconds"] as const) {
      const error = await rejection(client.close({ grace: grace as Duration.Input }))
      assert.instanceOf(error, TypeError)
      assert.include((error as TypeError).message, "InferenceClient.close: invalid grace")
    }
    assert.isFalse((await client.stats()).draining)
    assert.strictEqual((await client.infer(echo("still open")))._tag, "Success")
    await client.close({ grace: "1 second" })
    assert.isTrue((await client.stats()).draining)
  })

  // Checked by the compiler too (`tsc -p .`): the layer's error channel was `unknown`, so no catchTag compiled.
  it("layer's failures are typed for Effect programs: a bad setting, an unreadable repository and the engine's errors are each caught by tag", async () => {
    const fake = Effect.runSync(makeFake(() => ({ latency: "1 millis" })))
    const program = Effect.gen(function*() {
      const engine = yield* AsyncInferenceEngine
      return yield* engine.infer(InferenceRequest.make("nope", echoInputs(1)))
    })
    const outcome = (options: InferenceClient.Options<"no pool">): Effect.Effect<string> =>
      program.pipe(
        Effect.provide(InferenceClient.layer(options)),
        Effect.as("Success"),
        Effect.catchTag("ConfigError", () => Effect.succeed("ConfigError")),
        Effect.catchTag("RepositoryError", () => Effect.succeed("RepositoryError")),
        Effect.catchTag("InferenceError", (e) => Effect.succeed(e.reason._tag)),
        // a pool's own failure stays in the channel, typed as that pool says
        Effect.catch((e) => Effect.succeed(`pool: ${String(e)}`))
      )
    assert.strictEqual(await Effect.runPromise(outcome({ modelPool: fake.layer, config: { maxQueuedRequests: 0 } })), "ConfigError")
    assert.strictEqual(await Effect.runPromise(outcome({ repository: "/nonexistent/repository" })), "RepositoryError")
    assert.strictEqual(await Effect.runPromise(outcome({ modelPool: fake.layer })), "ModelNotFound")
    const broken: Layer.Layer<ModelPool, "no pool"> = Layer.effect(ModelPool, Effect.fail("no pool" as const))
    assert.strictEqual(await Effect.runPromise(outcome({ modelPool: broken })), "pool: no pool")
  })

  it("layer leaves the tracing of the program it is provided to alone: its Tracer receives the program's spans and Engine.infer", async () => {
    const fake = Effect.runSync(makeFake(() => ({ latency: "1 millis" })))
    const ended: Array<string> = []
    const recording = Tracer.make({
      span: (options) => {
        const span = new Tracer.NativeSpan(options)
        const end = span.end.bind(span)
        span.end = (time, exit) => {
          ended.push(options.name)
          end(time, exit)
        }
        return span
      }
    })
    const program = Effect.gen(function*() {
      const engine = yield* AsyncInferenceEngine
      yield* engine.infer(echo("traced"))
      yield* Effect.void.pipe(Effect.withSpan("App.step"))
    }).pipe(Effect.withSpan("App.handler"))
    await Effect.runPromise(program.pipe(Effect.provide(InferenceClient.layer({ modelPool: fake.layer })), Effect.provideService(Tracer.Tracer, recording)))
    assert.deepStrictEqual(ended.toSorted(), ["App.handler", "App.step", "Engine.infer"])
  })

  it("layer's logLevel filters the engine's lines, not those of the program it is provided to", async () => {
    const fake = Effect.runSync(makeFake(() => ({ latency: "1 millis" })))
    const lines: Array<string> = []
    const capture = Logger.make<unknown, void>(({ logLevel, message }) => void lines.push(`${logLevel}: ${[message].flat().join(" ")}`))
    const program = Effect.gen(function*() {
      yield* AsyncInferenceEngine
      yield* Effect.logInfo("the application's own line")
    })
    await Effect.runPromise(program.pipe(Effect.provide(InferenceClient.layer({ modelPool: fake.layer })), Effect.provide(Logger.layer([capture]))))
    assert.deepStrictEqual(lines, ["Info: the application's own line"])
  })

  it("make rejects when the repository cannot be read, and starts on the bundled models by default", async () => {
    await rejection(InferenceClient.make({ repository: "/nonexistent/repository" }))
    const client = await InferenceClient.make()
    const models = await client.models()
    assert.deepStrictEqual(models.map((m) => `${m.name}:${m.state}`).toSorted(), ["mlp:READY", "silero_vad:READY"])
    const result = await client.infer(InferenceRequest.make("mlp", { input: Tensor.float32(new Float32Array(784), [1, 784]) }))
    assert.deepStrictEqual(result.outputs["logits"]!.dims, [1, 10])
    await client.close()
  }, 30_000)
})
