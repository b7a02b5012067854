import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Layer, Scope, Stream } from "effect"
import { TestClock } from "effect/testing"
import * as CancelToken from "../src/CancelToken.ts"
import type { AsyncInferenceEngine } from "../src/Engine.ts"
import * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import type * as Priority from "../src/Priority.ts"
import * as Telemetry from "../src/Telemetry.ts"
import * as Tensor from "../src/Tensor.ts"
import { makeHarness } from "./fixtures/EngineHarness.ts"
import { echoInputs } from "./fixtures/FakeModelPool.ts"

const request = (id: string, options: InferenceRequest.Options = {}) =>
  InferenceRequest.make("echo", echoInputs(1), { requestId: id, ...options })

const fork = <A, E>(effect: Effect.Effect<A, E>) => Effect.forkChild(effect, { startImmediately: true })

const reasonOf = <A>(exit: Exit.Exit<A, InferenceError.InferenceError>) => {
  if (Exit.isSuccess(exit)) return "Success"
  const fail = exit.cause.reasons.find((r) => r._tag === "Fail")
  return fail === undefined ? "Interrupted" : fail.error.reason._tag
}

/**
 * On an engine of one run at a time and a queue of 3, whose "fail" request fails its run: "ok"
 * runs, "fail" fails, "late" passes its deadline, "cancel" is interrupted, "full" finds the queue full.
 */
const everyOutcome = (engine: AsyncInferenceEngine["Service"]) =>
  Effect.gen(function*() {
    const ok = yield* fork(Effect.exit(engine.infer(request("ok"))))
    yield* Effect.yieldNow // dispatched: the queue is empty again
    const fibers = [
      ok,
      yield* fork(Effect.exit(engine.infer(request("fail")))),
      yield* fork(Effect.exit(engine.infer(request("late", { timeout: "7 millis" })))),
      yield* fork(Effect.exit(engine.infer(request("cancel")))),
      yield* fork(Effect.exit(engine.infer(request("full"))))
    ]
    yield* Fiber.interrupt(fibers[3]!)
    return fibers
  })

describe("AsyncInferenceEngine", () => {
  describe("dispatch", () => {
    it.effect("runs the highest priority first and FIFO within a level", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "10 millis" }), config: { maxConcurrentRequests: 1 } })
        const levels: ReadonlyArray<readonly [string, Priority.Priority]> = [
          ["busy", "Low"],
          ["low-1", "Low"],
          ["normal-1", "Normal"],
          ["low-2", "Low"],
          ["high-1", "High"],
          ["critical-1", "Critical"],
          ["high-2", "High"]
        ]
        const fibers = []
        for (const [id, priority] of levels) {
          fibers.push(yield* fork(engine.infer(request(id, { priority }))))
          if (id === "busy") yield* Effect.yieldNow // let the dispatcher take it before the others queue
        }
        yield* TestClock.adjust("100 millis")
        for (const f of fibers) yield* Fiber.join(f)
        assert.deepStrictEqual(stats.order, ["busy", "critical-1", "high-1", "high-2", "normal-1", "low-1", "low-2"])
      }))

    it.effect("inferUnsafe's spentMs counts against the deadline: spent, the request fails without running; else its deadline comes that much sooner", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "50 millis" }), config: { maxConcurrentRequests: 1 } })
        const answers = new Map<string, string>()
        const onExitOf = (id: string) => (exit: Exit.Exit<unknown, InferenceError.InferenceError>) =>
          answers.set(id, Exit.isSuccess(exit) ? "ok" : exit.cause.reasons.find((r) => r._tag === "Fail")?.error.reason._tag ?? "?")
        // spent its whole 100 ms before the engine (its body waited to be decoded): never runs
        engine.inferUnsafe(request("spent", { timeout: "100 millis" }), onExitOf("spent"), { spentMs: 100 })
        // 110 of 150 ms spent: queued behind a 50 ms run, it would start at 50 ms, past the 40 ms it has left
        engine.inferUnsafe(request("busy"), onExitOf("busy"))
        engine.inferUnsafe(request("late", { timeout: "150 millis" }), onExitOf("late"), { spentMs: 110 })
        // nothing spent: the same wait and run (done at 100 ms) fit its deadline
        engine.inferUnsafe(request("fresh", { timeout: "150 millis" }), onExitOf("fresh"))
        yield* TestClock.adjust("200 millis")
        assert.deepStrictEqual(Object.fromEntries(answers), { spent: "DeadlineExceeded", busy: "ok", late: "DeadlineExceeded", fresh: "ok" })
        assert.deepStrictEqual(stats.order, ["busy", "fresh"])
      }))

    it.effect("inputs that are not tensors (plain JavaScript, decoded JSON) are a typed InvalidInput, not a defect, on both admission paths", () =>
      Effect.gen(function*() {
        for (const metadataDelay of [undefined, "1 millis"] as const) {
          const { engine, stats } = yield* makeHarness({ metadataDelay })
          for (const inputs of [null, undefined, { x: null }, { x: { dtype: "float32", data: new Float32Array(4) } }]) {
            const bad = InferenceRequest.make("echo", inputs as unknown as Tensor.TensorMap)
            const fiber = yield* fork(Effect.exit(engine.infer(bad)))
            yield* TestClock.adjust("1 millis")
            const exit = yield* Fiber.join(fiber)
            assert.strictEqual(reasonOf(exit), "InvalidInput", `${JSON.stringify(inputs)} (${metadataDelay ?? "sync"} lookup)`)
          }
          // A negative timeout is the caller's mistake too, not a deadline that passed.
          const negative = yield* Effect.exit(engine.infer(request("negative", { timeout: -5 })))
          assert.strictEqual(reasonOf(negative), "InvalidInput")
          // So is a request built by hand with a timeout that is not a Duration (a TypeError before).
          for (const timeout of [1000, "2 seconds", undefined]) {
            const handBuilt = { ...request("hand-built"), timeout } as unknown as InferenceRequest.InferenceRequest
            const fiber = yield* fork(Effect.exit(engine.infer(handBuilt)))
            yield* TestClock.adjust("1 millis")
            const exit = yield* Fiber.join(fiber)
            assert.strictEqual(reasonOf(exit), "InvalidInput", `timeout ${String(timeout)} (${metadataDelay ?? "sync"} lookup)`)
            assert.match(String(exit), /it must be a Duration/)
          }
          assert.strictEqual(stats.started, 0)
        }
      }))

    it.effect("a request built by hand in plain JavaScript with fields of the wrong type, or a timeout that is not a duration, is a typed InvalidInput on every path", () =>
      Effect.gen(function*() {
        const good = request("hand-built")
        const cases: ReadonlyArray<readonly [string, unknown]> = [
          ["null", null],
          ["a string", "echo"],
          ["modelVersion 1", { ...good, modelVersion: 1 }],
          ["no modelId", { ...good, modelId: undefined }],
          ["modelId 42", { ...good, modelId: 42 }],
          ["requestId 5", { ...good, requestId: 5 }],
          ["inputs an array", { ...good, inputs: [] }],
          ["timeout NaN", InferenceRequest.make("echo", good.inputs, { timeout: Number.NaN })],
          ["timeout NaN, withTimeout", InferenceRequest.withTimeout(good, Number.NaN)],
          ["timeout \"5 sec\"", InferenceRequest.make("echo", good.inputs, { timeout: "5 sec" as Duration.Input })]
        ]
        for (const metadataDelay of [undefined, "1 millis"] as const) {
          const { engine, outcomes, stats } = yield* makeHarness({ metadataDelay })
          for (const [label, given] of cases) {
            const bad = given as InferenceRequest.InferenceRequest
            const where = `${label} (${metadataDelay ?? "sync"} lookup)`
            const fiber = yield* fork(Effect.exit(engine.infer(bad)))
            let unsafe: Exit.Exit<unknown, InferenceError.InferenceError> | undefined
            engine.inferUnsafe(bad, (exit) => void (unsafe = exit))
            const result = yield* fork(engine.inferResult(bad))
            yield* TestClock.adjust("1 millis")
            const exit = yield* Fiber.join(fiber)
            assert.strictEqual(reasonOf(exit), "InvalidInput", `infer: ${where}: ${String(exit)}`)
            assert.strictEqual(unsafe === undefined ? undefined : reasonOf(unsafe), "InvalidInput", `inferUnsafe: ${where}`)
            const settled = yield* Fiber.join(result)
            assert.strictEqual(settled._tag === "Failed" ? settled.error.reason._tag : settled._tag, "InvalidInput", `inferResult: ${where}`)
            // Its id when it has one that is a string.
            const id = (given as { requestId?: unknown } | null)?.requestId
            assert.strictEqual(settled.requestId, typeof id === "string" ? id : "", `inferResult's requestId: ${where}`)
          }
          assert.strictEqual(stats.started, 0)
          assert.deepInclude(outcomes(), { start: cases.length * 3, failure: cases.length * 3 }, "each counted, as a failure (invalid)")
        }
      }))

    it.effect("a spentMs that is not a positive number counts as none; one past the timeout fails at once (a NaN once made the timer spin for ever)", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "10 millis" }) })
        const answers = new Map<string, string>()
        const onExitOf = (id: string) => (exit: Exit.Exit<unknown, InferenceError.InferenceError>) =>
          answers.set(id, Exit.isSuccess(exit) ? "ok" : exit.cause.reasons.find((r) => r._tag === "Fail")?.error.reason._tag ?? "?")
        for (const [id, spentMs] of [["nan", NaN], ["negative", -5], ["infinite", Infinity]] as const) {
          engine.inferUnsafe(request(`unsafe-${id}`, { timeout: "100 millis" }), onExitOf(`unsafe-${id}`), { spentMs })
          const fiber = yield* fork(Effect.exit(engine.infer(request(`effect-${id}`, { timeout: "100 millis" }), { spentMs })))
          yield* Effect.sync(() => fiber.addObserver((exit) => Exit.isSuccess(exit) && onExitOf(`effect-${id}`)(exit.value)))
        }
        yield* TestClock.adjust("50 millis")
        assert.deepStrictEqual(Object.fromEntries([...answers].sort()), {
          "effect-infinite": "DeadlineExceeded",
          "effect-nan": "ok",
          "effect-negative": "ok",
          "unsafe-infinite": "DeadlineExceeded",
          "unsafe-nan": "ok",
          "unsafe-negative": "ok"
        })
        assert.strictEqual(stats.finished, 4)
      }))

    it.effect("never runs more than maxConcurrentRequests at once", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({
          script: (id) => ({ latency: `${5 + (Number(id) % 7)} millis` }),
          config: { maxConcurrentRequests: 3 }
        })
        const fibers = []
        for (let i = 0; i < 40; i++) fibers.push(yield* fork(engine.infer(request(String(i)))))
        for (let t = 0; t < 200; t++) yield* TestClock.adjust("1 millis")
        for (const f of fibers) yield* Fiber.join(f)
        assert.strictEqual(stats.finished, 40)
        assert.strictEqual(stats.maxActive, 3)
      }))

    it.effect("never runs more of a model at once than its instances, and picks by priority when one frees", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "10 millis" }), concurrency: 1, config: { maxConcurrentRequests: 4 } })
        const fibers = [yield* fork(engine.infer(request("low-1", { priority: "Low" })))]
        yield* Effect.yieldNow
        fibers.push(yield* fork(engine.infer(request("low-2", { priority: "Low" }))))
        fibers.push(yield* fork(engine.infer(request("low-3", { priority: "Low" }))))
        yield* TestClock.adjust("5 millis")
        fibers.push(yield* fork(engine.infer(request("critical", { priority: "Critical" }))))
        yield* TestClock.adjust("100 millis")
        for (const f of fibers) yield* Fiber.join(f)
        assert.strictEqual(stats.maxActive, 1)
        assert.deepStrictEqual(stats.order, ["low-1", "critical", "low-2", "low-3"], "the waiting requests stayed in the priority queue")
      }))

    /** One request running and two queued, then "overflow", which must be refused QueueFull: its reason's fields. */
    const twoQueuedThenOverflow = (engine: AsyncInferenceEngine["Service"]) =>
      Effect.gen(function*() {
        yield* fork(engine.infer(request("running")))
        yield* Effect.yieldNow
        yield* fork(engine.infer(request("q1")))
        yield* fork(engine.infer(request("q2")))
        const exit = yield* Effect.exit(engine.infer(request("overflow")))
        assert.strictEqual(reasonOf(exit), "QueueFull")
        const reason = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
        return reason?._tag === "Fail" ? reason.error.reason : {}
      })

    it.effect("answers QueueFull at once when the queue is at its bound, queuing nothing", () =>
      Effect.gen(function*() {
        const { engine, outcomes } = yield* makeHarness({ script: () => ({ latency: "1 second" }), config: { maxConcurrentRequests: 1, maxQueuedRequests: 2 } })
        assert.deepInclude(yield* twoQueuedThenOverflow(engine), { capacity: 2, requestId: "overflow", modelId: "echo" })
        assert.strictEqual((yield* engine.queueStats).total, 2)
        assert.strictEqual(outcomes().rejected, 1)
      }))

    it.effect("a model's own maxQueuedRequests: QueueFull names that bound when it is full, though the queue has room; checkAdmission agrees", () =>
      Effect.gen(function*() {
        const { engine, outcomes } = yield* makeHarness({
          script: () => ({ latency: "1 second" }),
          // One instance: "running" takes its one slot, and the two behind it wait.
          concurrency: 1,
          metadata: { maxQueuedRequests: 2 },
          config: { maxConcurrentRequests: 1, maxQueuedRequests: 10 }
        })
        assert.deepInclude(yield* twoQueuedThenOverflow(engine), { capacity: 2, bound: "model", requestId: "overflow", modelId: "echo" })
        const admission = yield* Effect.exit(engine.checkAdmission("echo", "1"))
        assert.strictEqual(reasonOf(admission), "QueueFull")
        assert.match(String(admission), /model echo already has 2 requests waiting/)
        assert.strictEqual((yield* engine.queueStats).total, 2)
        assert.strictEqual(outcomes().rejected, 2)
      }))

    it.effect("checkAdmission answers by the engine's own rule (QueueFull, then ShuttingDown) and counts the refusal; recordRefused counts an edge's refusal", () =>
      Effect.gen(function*() {
        const { engine, outcomes } = yield* makeHarness({ script: () => ({ latency: "1 second" }), config: { maxConcurrentRequests: 1, maxQueuedRequests: 1 } })
        assert.isTrue(Exit.isSuccess(yield* Effect.exit(engine.checkAdmission("echo"))), "room in the queue")
        yield* fork(engine.infer(request("running")))
        yield* Effect.yieldNow
        yield* fork(engine.infer(request("queued")))
        assert.strictEqual(reasonOf(yield* Effect.exit(engine.checkAdmission("echo"))), "QueueFull")
        assert.strictEqual(outcomes().rejected, 1)
        yield* engine.recordRefused("echo", new InferenceError.InvalidInput({ modelId: "echo", detail: "not JSON" }))
        assert.strictEqual(outcomes().failure, 1)
        yield* Effect.forkChild(engine.drain("1 second"), { startImmediately: true })
        assert.strictEqual(reasonOf(yield* Effect.exit(engine.checkAdmission("echo"))), "ShuttingDown")
        assert.strictEqual(outcomes().start, 2 + 3, "two requests, three refusals: each counted as started")
      }))

    it.effect("an edge's refusal is counted under the version the pool would admit to, from its metadata Effect when it has no metadataUnsafe", () =>
      Effect.gen(function*() {
        const versions: Array<string | undefined> = []
        const noop = () => {}
        const capture = Layer.succeed(Telemetry.TelemetryCollector, {
          recordStart: noop,
          recordSuccess: noop,
          recordFailure: (info) => void versions.push(info.version),
          recordCancelled: noop,
          recordTimeout: noop,
          recordRejected: (info) => void versions.push(info.version),
          recordQueueWait: noop,
          recordRun: noop
        })
        const { engine } = yield* makeHarness({ script: () => ({ latency: "1 second" }), config: { maxConcurrentRequests: 1, maxQueuedRequests: 1 }, telemetry: capture })
        yield* fork(engine.infer(request("running")))
        yield* Effect.yieldNow
        yield* fork(engine.infer(request("queued")))
        assert.strictEqual(reasonOf(yield* Effect.exit(engine.checkAdmission("echo"))), "QueueFull")
        yield* engine.recordRefused("echo", new InferenceError.InvalidInput({ modelId: "echo", detail: "not JSON" }))
        // The version is the one the pool's metadata answers for the one named (this fake pool has one version, 1, whatever is asked).
        yield* engine.recordRefused("echo", new InferenceError.InvalidInput({ modelId: "echo", detail: "not JSON" }), "7")
        yield* engine.recordRefused("nope", new InferenceError.InvalidInput({ modelId: "nope", detail: "not JSON" }))
        assert.deepStrictEqual(versions, ["1", "1", "1", undefined], "the default version, the pool's answer for the one named, none for a model the pool does not have")
      }))

    it.effect("refuses invalid input and unknown models before queuing", () =>
      Effect.gen(function*() {
        const { engine, stats, outcomes } = yield* makeHarness()
        const wrongDim = InferenceRequest.make("echo", { x: Tensor.float32([1, 2, 3], [1, 3]) })
        const unknownInput = InferenceRequest.make("echo", { ...echoInputs(1), extra: Tensor.float32([1], [1]) })
        const unknownModel = InferenceRequest.make("nope", echoInputs(1))
        assert.strictEqual(reasonOf(yield* Effect.exit(engine.infer(wrongDim))), "InvalidInput")
        assert.strictEqual(reasonOf(yield* Effect.exit(engine.infer(unknownInput))), "InvalidInput")
        assert.strictEqual(reasonOf(yield* Effect.exit(engine.infer(unknownModel))), "ModelNotFound")
        assert.strictEqual(stats.started, 0)
        assert.deepInclude(outcomes(), { start: 3, failure: 3 })
      }))

    it.effect("refuses a priority that is not one of the four levels with InvalidInput (inferResult: a Failed result), queuing nothing", () =>
      Effect.gen(function*() {
        const { engine, stats, outcomes } = yield* makeHarness()
        for (const priority of ["high", "Urgent", 3]) {
          const bad = request(`bad-${priority}`, { priority: priority as Priority.Priority })
          const exit = yield* Effect.exit(engine.infer(bad))
          assert.strictEqual(reasonOf(exit), "InvalidInput")
          assert.isTrue(Exit.isFailure(exit) && String(exit.cause.reasons.find((r) => r._tag === "Fail")?.error.message).includes("unknown priority"))
          const result = yield* engine.inferResult(bad)
          assert.strictEqual(result._tag === "Failed" ? result.error.reason._tag : result._tag, "InvalidInput")
        }
        assert.strictEqual(stats.started, 0)
        assert.strictEqual(yield* engine.pending, 0)
        assert.deepInclude(outcomes(), { start: 6, failure: 6 })
        const good = yield* fork(engine.infer(request("good", { priority: "High" })))
        yield* TestClock.adjust("10 millis")
        assert.strictEqual((yield* Fiber.join(good))._tag, "Success")
        // Admission through the pool's metadata Effect refuses it the same way.
        const slow = yield* makeHarness({ metadataDelay: "1 millis" })
        const viaEffect = yield* fork(Effect.exit(slow.engine.infer(request("bad", { priority: "Urgent" as Priority.Priority }))))
        yield* TestClock.adjust("1 millis")
        assert.strictEqual(reasonOf(yield* Fiber.join(viaEffect)), "InvalidInput")
      }))

    it.effect("a failed run fails only its own request", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({ script: (id) => id === "bad" ? { latency: "5 millis", failWith: "kernel error" } : { latency: "5 millis" } })
        const bad = yield* fork(Effect.exit(engine.infer(request("bad"))))
        const good = yield* fork(Effect.exit(engine.infer(request("good"))))
        yield* TestClock.adjust("10 millis")
        assert.strictEqual(reasonOf(yield* Fiber.join(bad)), "RunFailed")
        assert.strictEqual(reasonOf(yield* Fiber.join(good)), "Success")
      }))
    it.effect("a run that ends with a defect fails its request with RunFailed (a backend failure), not ShuttingDown", () =>
      Effect.gen(function*() {
        const { engine, outcomes } = yield* makeHarness({ script: () => ({ latency: "5 millis", dieWith: "worker crashed" }) })
        const exit = yield* fork(Effect.exit(engine.infer(request("a"))))
        yield* TestClock.adjust("10 millis")
        const result = yield* Fiber.join(exit)
        assert.strictEqual(reasonOf(result), "RunFailed")
        assert.isTrue(Exit.isFailure(result) && String(result.cause.reasons.find((r) => r._tag === "Fail")?.error.message).includes("worker crashed"))
        assert.deepStrictEqual([outcomes().failure, outcomes().rejected], [1, 0])
      }))
  })

  describe("cancellation", () => {
    it.effect("a request interrupted while queued leaves the queue at once and never runs", () =>
      Effect.gen(function*() {
        const { engine, stats, outcomes } = yield* makeHarness({ script: () => ({ latency: "100 millis" }), config: { maxConcurrentRequests: 1 } })
        yield* fork(engine.infer(request("running")))
        const queued = yield* fork(engine.infer(request("queued")))
        yield* TestClock.adjust("10 millis")
        assert.strictEqual((yield* engine.queueStats).total, 1)
        yield* Fiber.interrupt(queued)
        assert.strictEqual((yield* engine.queueStats).total, 0)
        yield* TestClock.adjust("500 millis")
        assert.deepStrictEqual(stats.order, ["running"])
        assert.strictEqual(outcomes().cancelled, 1)
      }))

    it.effect("a request interrupted while running is answered at once; its permit stays held until the run ends", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "100 millis" }), config: { maxConcurrentRequests: 1 } })
        const running = yield* fork(engine.infer(request("running")))
        yield* TestClock.adjust("10 millis")
        const next = yield* fork(engine.infer(request("next")))
        yield* Fiber.interrupt(running)
        assert.strictEqual(stats.finished, 0, "the run goes on after its caller left")
        yield* TestClock.adjust("50 millis")
        assert.deepStrictEqual(stats.order, ["running"], "the next request waits for the native run to end")
        yield* TestClock.adjust("40 millis")
        assert.deepStrictEqual(stats.order, ["running", "next"])
        yield* TestClock.adjust("100 millis")
        const result = yield* Fiber.join(next)
        assert.strictEqual(result.requestId, "next")
        assert.strictEqual(stats.maxActive, 1)
      }))

    it.effect("a job sent ahead to a busy instance is withdrawn once its callers have all left (interrupted or past their deadline): it never runs", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({
          script: () => ({ latency: "100 millis" }),
          concurrency: 1,
          metadata: { pipelineDepth: 3 },
          instanceQueue: true
        })
        const running = yield* fork(engine.infer(request("running")))
        yield* TestClock.adjust("1 millis")
        const interrupted = yield* fork(engine.infer(request("interrupted")))
        yield* TestClock.adjust("1 millis")
        const late = yield* fork(engine.infer(request("late", { timeout: Duration.millis(20) })))
        yield* TestClock.adjust("1 millis")
        assert.strictEqual((yield* engine.diagnostics).runs, 3, "two jobs sent ahead")
        yield* Fiber.interrupt(interrupted)
        yield* TestClock.adjust("30 millis")
        assert.strictEqual(reasonOf(yield* Fiber.await(late)), "DeadlineExceeded")
        assert.strictEqual((yield* engine.diagnostics).runs, 1, "both withdrawn: their slots are free")
        assert.strictEqual(stats.skipped, 2, "the instance skipped both")
        yield* TestClock.adjust("200 millis")
        assert.strictEqual((yield* Fiber.join(running)).requestId, "running")
        assert.deepStrictEqual(stats.order, ["running"])
      }))

    it.effect("requests in a job sent ahead to a busy instance count as queued in the queue stats, as QueueFull counts them, and stop counting when cancelled or started", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({
          script: () => ({ latency: "100 millis" }),
          concurrency: 1,
          metadata: { pipelineDepth: 2 },
          instanceQueue: true,
          config: { maxQueuedRequests: 3 }
        })
        const running = yield* fork(engine.infer(request("running")))
        yield* TestClock.adjust("1 millis")
        const ahead = yield* fork(engine.infer(request("ahead", { priority: "High" })))
        yield* TestClock.adjust("1 millis")
        const queued = [yield* fork(engine.infer(request("q1"))), yield* fork(engine.infer(request("q2", { priority: "Low" })))]
        yield* TestClock.adjust("1 millis")
        const diagnostics = yield* engine.diagnostics
        assert.deepStrictEqual([diagnostics.queued, diagnostics.ahead, diagnostics.runs], [2, 1, 2])
        assert.deepStrictEqual(yield* engine.queueStats, { critical: 0, high: 1, normal: 1, low: 1, total: 3 })
        assert.deepStrictEqual((yield* engine.queueStatsByModel).get("echo"), { critical: 0, high: 1, normal: 1, low: 1, total: 3 })
        // The same requests by the version each was admitted to (Triton's pending count per version).
        assert.deepStrictEqual(yield* engine.waitingByVersion, new Map([["echo", new Map([["1", 3]])]]))
        // The bound the stats show is the one admission applies.
        assert.strictEqual(reasonOf(yield* Effect.exit(engine.infer(request("refused")))), "QueueFull")
        yield* Fiber.interrupt(ahead)
        assert.deepStrictEqual(yield* engine.queueStats, { critical: 0, high: 0, normal: 1, low: 1, total: 2 })
        yield* TestClock.adjust("100 millis")
        assert.strictEqual((yield* Fiber.join(running)).requestId, "running")
        // q1 runs now and q2 was sent ahead behind it: still waiting, still counted.
        assert.deepStrictEqual((yield* engine.queueStats).total, 1)
        yield* TestClock.adjust("300 millis")
        for (const f of queued) yield* Fiber.join(f)
        assert.deepStrictEqual(yield* engine.queueStats, { critical: 0, high: 0, normal: 0, low: 0, total: 0 })
        assert.strictEqual((yield* engine.queueStatsByModel).size, 0)
        assert.strictEqual((yield* engine.waitingByVersion).size, 0)
      }))

    it.effect("an AbortSignal cancels like interruption", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({ script: () => ({ latency: "1 second" }) })
        const controller = new AbortController()
        const fiber = yield* fork(engine.inferResult(request("a"), controller.signal))
        yield* TestClock.adjust("10 millis")
        controller.abort(new Error("client went away"))
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual(result._tag === "Cancelled" ? result.reason : result._tag, "client went away")
      }))

    it.effect("a token cancelled before submission settles as Cancelled without running", () =>
      Effect.gen(function*() {
        const { engine, stats, outcomes } = yield* makeHarness()
        const token = CancelToken.makeUnsafe()
        token.cancelUnsafe("too late")
        const result = yield* engine.inferResult(request("a"), token)
        assert.strictEqual(result._tag, "Cancelled")
        assert.strictEqual(stats.started, 0)
        assert.deepInclude(outcomes(), { start: 1, cancelled: 1 })
      }))
  })

  describe("deadlines", () => {
    it.effect("the deadline covers queue wait plus run", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({ script: () => ({ latency: "60 millis" }), config: { maxConcurrentRequests: 1 } })
        yield* fork(engine.infer(request("first")))
        const second = yield* fork(Effect.exit(engine.infer(request("second", { timeout: "100 millis" }))))
        yield* TestClock.adjust("99 millis")
        assert.isUndefined(second.pollUnsafe(), "still waiting at 99 ms")
        yield* TestClock.adjust("1 millis")
        const exit = yield* Fiber.join(second)
        assert.strictEqual(reasonOf(exit), "DeadlineExceeded")
      }))

    it.effect("the deadline fires on time while the run is in progress", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "10 seconds" }) })
        const fiber = yield* fork(engine.inferResult(request("slow", { timeout: "250 millis" })))
        yield* TestClock.adjust("250 millis")
        const result = yield* Fiber.join(fiber)
        assert.deepStrictEqual(result, { ...result, _tag: "TimedOut", elapsedMs: 250 })
        assert.strictEqual(stats.finished, 0)
      }))

    it.effect("a request queued longer than queueTimeout fails with QueueTimeout and never runs", () =>
      Effect.gen(function*() {
        const { engine, stats, outcomes } = yield* makeHarness({
          script: () => ({ latency: "1 second" }),
          config: { maxConcurrentRequests: 1, queueTimeout: Duration.millis(50) }
        })
        yield* fork(engine.infer(request("busy")))
        const waiting = yield* fork(Effect.exit(engine.infer(request("waiting"))))
        yield* TestClock.adjust("50 millis")
        const exit = yield* Fiber.join(waiting)
        assert.strictEqual(reasonOf(exit), "QueueTimeout")
        assert.strictEqual((yield* engine.queueStats).total, 0)
        yield* TestClock.adjust("2 seconds")
        assert.deepStrictEqual(stats.order, ["busy"])
        assert.strictEqual(outcomes().timeout, 1)
      }))

    it.effect("gives the pool what is left of the deadline when the run starts", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({ script: () => ({ latency: "30 millis" }), config: { maxConcurrentRequests: 1 } })
        yield* fork(engine.infer(request("first", { timeout: "1 second" })))
        yield* Effect.yieldNow
        yield* fork(engine.infer(request("second", { timeout: "100 millis" })))
        yield* TestClock.adjust("60 millis")
        assert.deepStrictEqual(stats.runTimeoutsMs, [1000, 70], "the second waited 30 ms of its 100")
      }))

    it.effect("the queue timeout does not cut a request that is already running", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({ script: () => ({ latency: "200 millis" }), config: { queueTimeout: Duration.millis(50) } })
        const fiber = yield* fork(Effect.exit(engine.infer(request("a"))))
        yield* TestClock.adjust("200 millis")
        assert.strictEqual(reasonOf(yield* Fiber.join(fiber)), "Success")
      }))
  })

  describe("inferBatch", () => {
    it.effect("emits results in completion order", () =>
      Effect.gen(function*() {
        const latencies: Record<string, number> = { a: 30, b: 10, c: 20 }
        const { engine } = yield* makeHarness({ script: (id) => ({ latency: `${latencies[id]!} millis` }) })
        const fiber = yield* fork(Stream.runCollect(engine.inferBatch(["a", "b", "c"].map((id) => request(id)))))
        yield* TestClock.adjust("30 millis")
        const results = yield* Fiber.join(fiber)
        assert.deepStrictEqual(results.map((r) => r.requestId), ["b", "c", "a"])
      }))

    it.effect("a consumer that stops early cancels what is outstanding", () =>
      Effect.gen(function*() {
        const { engine, outcomes, stats } = yield* makeHarness({ script: (id) => ({ latency: `${10 * Number(id)} millis` }), config: { maxConcurrentRequests: 1 } })
        const requests = ["1", "2", "3", "4", "5"].map((id) => request(id))
        const fiber = yield* fork(Stream.runCollect(Stream.take(engine.inferBatch(requests, { concurrency: 5 }), 2)))
        yield* TestClock.adjust("30 millis")
        const results = yield* Fiber.join(fiber)
        assert.deepStrictEqual(results.map((r) => r.requestId), ["1", "2"])
        assert.deepInclude(outcomes(), { success: 2, cancelled: 3 })
        assert.strictEqual((yield* engine.queueStats).total, 0, "nothing left queued")
        const startedAtStop = stats.started
        assert.isAtMost(startedAtStop, 3, "at most the one run that was already dispatched")
        yield* TestClock.adjust("1 second")
        assert.strictEqual(stats.started, startedAtStop, "nothing runs after the consumer stopped")
        assert.strictEqual(yield* engine.pending, 0)
      }))

    it.effect("a concurrency that is not a positive integer is a TypeError, and nothing is submitted", () =>
      Effect.gen(function*() {
        const { engine, outcomes } = yield* makeHarness({ script: () => ({ latency: "10 millis" }) })
        for (const concurrency of [0, -1, Number.NaN, 1.5]) {
          const fiber = yield* fork(Stream.runCollect(engine.inferBatch(["a", "b"].map((id) => request(id)), { concurrency })))
          yield* TestClock.adjust("20 millis")
          const exit = yield* Fiber.await(fiber)
          const defect = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Die")?.defect : undefined
          assert.instanceOf(defect, TypeError, String(concurrency))
          assert.include(String(defect), `concurrency must be a positive integer, got ${concurrency}`)
        }
        assert.strictEqual(outcomes().start, 0)
      }))

    it.effect("cancelling the token settles what is outstanding as Cancelled", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({ script: () => ({ latency: "10 millis" }), config: { maxConcurrentRequests: 1 } })
        const token = yield* CancelToken.make
        const requests = ["a", "b", "c", "d"].map((id) => request(id))
        const fiber = yield* fork(Stream.runCollect(engine.inferBatch(requests, { cancel: token, concurrency: 4 })))
        yield* TestClock.adjust("10 millis")
        yield* token.cancel("enough")
        const results = yield* Fiber.join(fiber)
        assert.deepStrictEqual(results.map((r) => `${r.requestId}:${r._tag}`).sort(), ["a:Success", "b:Cancelled", "c:Cancelled", "d:Cancelled"])
      }))

    it.effect("reads a generator as it submits, and once cancelled takes nothing more from it: an endless one ends", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({ script: () => ({ latency: "10 millis" }), config: { maxConcurrentRequests: 2 } })
        let pulled = 0
        let closed = false
        function* endless() {
          try {
            for (;;) yield request(String(pulled++))
          } finally {
            closed = true
          }
        }
        const token = yield* CancelToken.make
        const fiber = yield* fork(Stream.runCollect(engine.inferBatch(endless(), { cancel: token, concurrency: 2 })))
        yield* TestClock.adjust("10 millis")
        assert.isAtMost(pulled, 8, "about `concurrency` ahead, not a chunk of thousands")
        yield* TestClock.adjust("20 millis")
        const pulledBeforeCancel = pulled
        yield* token.cancel("enough")
        const results = yield* Fiber.join(fiber)
        const cancelled = results.filter((r) => r._tag === "Cancelled").length
        assert.isAtLeast(results.length - cancelled, 4, "the runs before the cancel")
        assert.isAtMost(cancelled, 2, "what was outstanding")
        assert.strictEqual(pulled, pulledBeforeCancel, "nothing taken after the cancel")
        assert.strictEqual(results.length, pulled, "every request taken has its result")
        assert.isTrue(closed, "the generator was closed (its finally ran)")
      }))

    it.effect("a batch cancelled before it starts takes nothing from its requests", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness()
        let pulled = 0
        function* counted() {
          for (;;) yield request(String(pulled++))
        }
        const token = yield* CancelToken.make
        yield* token.cancel("before")
        const results = yield* Stream.runCollect(engine.inferBatch(counted(), { cancel: token }))
        assert.deepStrictEqual([results.length, pulled], [0, 0])
        const aborted = AbortSignal.abort()
        assert.strictEqual((yield* Stream.runCollect(engine.inferBatch(counted(), { cancel: aborted }))).length, 0)
        assert.strictEqual(pulled, 0)
      }))
  })

  describe("telemetry", () => {
    it.effect("records one outcome per start, plus queue wait and run time", () =>
      Effect.gen(function*() {
        const { engine, log, outcomes } = yield* makeHarness({
          script: (id) => id === "fail" ? { latency: "5 millis", failWith: "x" } : { latency: "5 millis" },
          config: { maxConcurrentRequests: 1, maxQueuedRequests: 3 }
        })
        const fibers = yield* everyOutcome(engine)
        fibers.push(yield* fork(Effect.exit(engine.infer(request("room-again")))))
        yield* TestClock.adjust("100 millis")
        for (const f of fibers) yield* Fiber.await(f)
        const counts = outcomes()
        assert.deepStrictEqual(counts, { start: 6, success: 2, failure: 1, cancelled: 1, timeout: 1, rejected: 1 })
        assert.strictEqual(counts.start, counts.success! + counts.failure! + counts.cancelled! + counts.timeout! + counts.rejected!)
        const waits = log.events.filter((e) => e._tag === "queueWait").map((e) => e._tag === "queueWait" ? e.waitMs : -1)
        assert.deepStrictEqual(waits, [0, 5, 10])
        // Runs that completed: the failed one is not counted (Triton's execution count).
        const runs = log.events.filter((e) => e._tag === "run")
        assert.strictEqual(runs.length, 2)
        assert.isTrue(runs.every((e) => e._tag === "run" && e.runMs === 5 && e.batchSize === 1))
      }))

    for (const [path, metadataDelay] of [["synchronous", undefined], ["the pool's metadata Effect", "1 millis"]] as const) {
      it.effect(`records a request for a model the pool does not have under one label, Telemetry.unknownModel, so made-up names add no series (${path})`, () =>
        Effect.gen(function*() {
          const { engine, log, outcomes } = yield* makeHarness({ metadataDelay })
          const fibers = [
            yield* fork(Effect.exit(engine.infer(InferenceRequest.make("made-up-1", echoInputs(1))))),
            yield* fork(Effect.exit(engine.infer(InferenceRequest.make("made-up-2", echoInputs(1))))),
            yield* fork(Effect.exit(engine.infer(request("ok"))))
          ]
          yield* TestClock.adjust("10 millis") // the lookups end
          yield* TestClock.adjust("100 millis") // the run started after them ends
          const exits = []
          for (const f of fibers) exits.push(yield* Fiber.join(f))
          assert.deepStrictEqual(exits.map(reasonOf), ["ModelNotFound", "ModelNotFound", "Success"])
          // The caller's error still names the model it asked for.
          assert.match(String(exits[0]), /made-up-1/)
          const byModel = log.events.filter((e) => e._tag === "start" || e._tag === "failure" || e._tag === "success").map((e) => `${e._tag}:${"modelId" in e ? e.modelId : ""}`).sort()
          assert.deepStrictEqual(byModel, ["failure:_unknown", "failure:_unknown", "start:_unknown", "start:_unknown", "start:echo", "success:echo"])
          assert.deepStrictEqual(outcomes(), { start: 3, success: 1, failure: 2, cancelled: 0, timeout: 0, rejected: 0 })
          assert.strictEqual(Telemetry.unknownModel, "_unknown")
        }))
    }

    for (const [path, metadataDelay] of [["synchronous", undefined], ["the pool's metadata Effect", "1 millis"]] as const) {
      it.effect(`refusals decided before any lookup count a made-up name under Telemetry.unknownModel, a real model under its own (${path})`, () =>
        Effect.gen(function*() {
          const { engine, log } = yield* makeHarness({ metadataDelay, script: () => ({ latency: "50 millis" }), config: { maxConcurrentRequests: 1, maxQueuedRequests: 1 } })
          // The engine has found "echo" once (the pool without metadataUnsafe has to tell it so).
          const admitted = []
          for (const id of ["running", "queued"]) {
            admitted.push(yield* fork(Effect.exit(engine.infer(request(id)))))
            yield* TestClock.adjust("1 millis")
          }
          assert.isFalse(engine.admitsUnsafe(), `the queue is full: ${JSON.stringify(yield* engine.queueStats)}`)
          const names = ["echo", "made-up"]
          // Through the pool's metadata Effect a refusal may wait for a lookup (1 ms here).
          const settle = <A, E>(effect: Effect.Effect<A, E>) =>
            Effect.gen(function*() {
              const fiber = yield* fork(Effect.exit(effect))
              yield* TestClock.adjust("1 millis")
              return yield* Fiber.join(fiber)
            })
          for (const name of names) {
            // An edge's refusal before its lookup (a full queue), and what it reports itself.
            assert.strictEqual(reasonOf(yield* settle(engine.checkAdmission(name))), "QueueFull")
            yield* settle(engine.recordRefused(name, new InferenceError.QueueFull({ modelId: name, requestId: "", capacity: 1 })))
            // Cancelled before it started, and a negative timeout (refused before the lookup on the Effect path).
            const token = CancelToken.makeUnsafe()
            token.cancelUnsafe("before")
            const cancelled = yield* settle(engine.inferResult(InferenceRequest.make(name, echoInputs(1)), token))
            assert.isTrue(Exit.isSuccess(cancelled) && cancelled.value._tag === "Cancelled")
            assert.isTrue(Exit.isFailure(yield* settle(engine.infer(InferenceRequest.make(name, echoInputs(1), { timeout: Duration.millis(-1) })))))
          }
          yield* TestClock.adjust("200 millis")
          for (const f of admitted) assert.strictEqual(reasonOf(yield* Fiber.join(f)), "Success")
          const drain = yield* fork(engine.drain("1 second"))
          for (const name of names) assert.strictEqual(reasonOf(yield* settle(engine.infer(InferenceRequest.make(name, echoInputs(1))))), "ShuttingDown")
          yield* Fiber.join(drain)
          const started = log.events.filter((e) => e._tag === "start").map((e) => "modelId" in e ? e.modelId : "")
          assert.deepStrictEqual(started.filter((m) => m === "echo").length, 2 + 5, "the two admitted, then five refusals")
          assert.deepStrictEqual(started.filter((m) => m === Telemetry.unknownModel).length, 5)
          assert.notInclude(started, "made-up")
        }))
    }

    it.effect("a telemetry record point that throws breaks neither a request nor the engine: every request is answered as it would be", () =>
      Effect.gen(function*() {
        const throwing = (point: string) => () => {
          throw new Error(`${point} broke`)
        }
        const broken = Telemetry.TelemetryCollector.of({
          recordStart: throwing("recordStart"),
          recordSuccess: throwing("recordSuccess"),
          recordFailure: throwing("recordFailure"),
          recordCancelled: throwing("recordCancelled"),
          recordTimeout: throwing("recordTimeout"),
          recordRejected: throwing("recordRejected"),
          recordQueueWait: throwing("recordQueueWait"),
          recordRun: throwing("recordRun")
        })
        const { engine } = yield* makeHarness({
          script: (id) => id === "fail" ? { latency: "5 millis", failWith: "x" } : { latency: "5 millis" },
          config: { maxConcurrentRequests: 1, maxQueuedRequests: 3 },
          telemetry: Layer.succeed(Telemetry.TelemetryCollector, broken)
        })
        const fibers = yield* everyOutcome(engine)
        fibers.push(yield* fork(Effect.exit(engine.infer(InferenceRequest.make("made-up", echoInputs(1))))))
        yield* TestClock.adjust("100 millis")
        const reasons = []
        for (const f of fibers) {
          const exit = yield* Fiber.await(f)
          reasons.push(Exit.isSuccess(exit) ? reasonOf(exit.value) : "Interrupted")
        }
        assert.deepStrictEqual(reasons, ["Success", "RunFailed", "DeadlineExceeded", "Interrupted", "QueueFull", "ModelNotFound"])
        assert.strictEqual(yield* engine.pending, 0)
        const after = yield* fork(Effect.exit(engine.infer(request("after"))))
        yield* TestClock.adjust("10 millis")
        assert.strictEqual(reasonOf(yield* Fiber.join(after)), "Success")
      }))
  })

  describe("lifecycle", () => {
    it.effect("drain refuses new requests and waits for queued and running ones", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({ script: () => ({ latency: "20 millis" }), config: { maxConcurrentRequests: 1 } })
        const a = yield* fork(Effect.exit(engine.infer(request("a"))))
        const b = yield* fork(Effect.exit(engine.infer(request("b"))))
        const drain = yield* fork(engine.drain("1 second"))
        assert.isTrue(yield* engine.isDraining)
        assert.strictEqual(reasonOf(yield* Effect.exit(engine.infer(request("c")))), "ShuttingDown")
        yield* TestClock.adjust("40 millis")
        assert.deepStrictEqual(yield* Fiber.join(drain), { drained: true })
        assert.strictEqual(reasonOf(yield* Fiber.join(a)), "Success")
        assert.strictEqual(reasonOf(yield* Fiber.join(b)), "Success")
      }))

    it.effect("drain gives up after its grace period", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({ script: () => ({ latency: "10 seconds" }) })
        yield* fork(engine.infer(request("a")))
        const drain = yield* fork(engine.drain("1 second"))
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* Fiber.join(drain), { drained: false })
      }))

    it.effect("a second drain after one whose grace ran out reports drained when nothing was cut (the run it waited for finished), not when queued work was refused", () =>
      Effect.gen(function*() {
        const running = yield* makeHarness({ script: () => ({ latency: "2 seconds" }) })
        const a = yield* fork(Effect.exit(running.engine.infer(request("a"))))
        const first = yield* fork(running.engine.drain("1 second"))
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* Fiber.join(first), { drained: false })
        yield* TestClock.adjust("1 second")
        assert.strictEqual(reasonOf(yield* Fiber.join(a)), "Success")
        assert.deepStrictEqual(yield* running.engine.drain("1 second"), { drained: true })

        const queued = yield* makeHarness({ script: () => ({ latency: "2 seconds" }), config: { maxConcurrentRequests: 1 } })
        yield* fork(Effect.exit(queued.engine.infer(request("b"))))
        const c = yield* fork(Effect.exit(queued.engine.infer(request("c"))))
        const cut = yield* fork(queued.engine.drain("1 second"))
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* Fiber.join(cut), { drained: false })
        assert.strictEqual(reasonOf(yield* Fiber.join(c)), "ShuttingDown")
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(yield* queued.engine.drain("1 second"), { drained: false }, "c was refused by the first drain's grace")
      }))

    it.effect("closing the engine's scope answers queued requests with ShuttingDown", () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const { engine } = yield* makeHarness({ script: () => ({ latency: "1 second" }), config: { maxConcurrentRequests: 1 } }).pipe(Scope.provide(scope))
        yield* fork(Effect.exit(engine.infer(request("running"))))
        const queued = yield* fork(Effect.exit(engine.infer(request("queued"))))
        yield* TestClock.adjust("1 millis")
        yield* Scope.close(scope, Exit.void)
        assert.strictEqual(reasonOf(yield* Fiber.join(queued)), "ShuttingDown")
      }))
  })

  describe("admission through the pool's metadata Effect", () => {
    it.effect("a request interrupted while its model's metadata is looked up counts as cancelled", () =>
      Effect.gen(function*() {
        const { engine, outcomes } = yield* makeHarness({ metadataDelay: "10 millis" })
        const fiber = yield* fork(engine.infer(request("a")))
        yield* TestClock.adjust("5 millis")
        yield* Fiber.interrupt(fiber)
        assert.deepStrictEqual([outcomes().start, outcomes().cancelled], [1, 1])
        assert.strictEqual(yield* engine.pending, 0)
      }))

    it.effect("the deadline fires on time while the metadata is looked up: DeadlineExceeded at the timeout, counted once as a timeout", () =>
      Effect.gen(function*() {
        const { engine, outcomes, stats } = yield* makeHarness({ metadataDelay: "1 second" })
        const fiber = yield* fork(engine.infer(request("a", { timeout: Duration.millis(100) })))
        yield* TestClock.adjust("100 millis")
        const exit = fiber.pollUnsafe()
        assert.isDefined(exit, "answered at its deadline, not when the lookup ends")
        assert.strictEqual(reasonOf(exit!), "DeadlineExceeded")
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual([outcomes().start, outcomes().timeout, outcomes().cancelled], [1, 1, 0])
        assert.strictEqual(stats.started, 0)
        assert.strictEqual(yield* engine.pending, 0)
      }))

    it.effect("DeadlineExceeded's elapsedMs counts from submission, the lookup included, as its deadline does", () =>
      Effect.gen(function*() {
        const { engine } = yield* makeHarness({ metadataDelay: "30 millis", script: () => ({ latency: "1 second" }) })
        const fiber = yield* fork(engine.infer(request("a", { timeout: Duration.millis(100) })))
        yield* TestClock.adjust("100 millis")
        const exit = yield* Fiber.await(fiber)
        const reason = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error.reason : undefined
        assert.deepInclude(reason, { _tag: "DeadlineExceeded", timeoutMs: 100, elapsedMs: 100 })
      }))

    it.effect("the queue timeout counts from admission, not from before the lookup: a lookup longer than queueTimeout does not fail an idle engine's request", () =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({
          metadataDelay: "80 millis",
          script: () => ({ latency: "10 millis" }),
          config: { queueTimeout: Duration.millis(50) }
        })
        const fiber = yield* fork(engine.infer(request("a", { timeout: Duration.seconds(1) })))
        yield* TestClock.adjust("100 millis")
        assert.strictEqual(reasonOf(yield* Fiber.await(fiber)), "Success")
        assert.strictEqual(stats.started, 1)
      }))

    it.effect("a request whose metadata comes after the engine began to close is answered ShuttingDown and never queued", () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const { engine, outcomes, stats } = yield* makeHarness({ metadataDelay: "10 millis" }).pipe(Scope.provide(scope))
        const fiber = yield* fork(Effect.exit(engine.infer(request("a", { timeout: Duration.millis(200) }))))
        yield* TestClock.adjust("5 millis")
        yield* Scope.close(scope, Exit.void)
        yield* TestClock.adjust("10 millis")
        assert.strictEqual(reasonOf(yield* Fiber.join(fiber)), "ShuttingDown")
        assert.strictEqual(yield* engine.pending, 0)
        assert.deepStrictEqual([outcomes().start, outcomes().rejected], [1, 1])
        assert.strictEqual(stats.started, 0)
      }))
  })

  describe("starvation", () => {
    const flood = (aging: boolean) =>
      Effect.gen(function*() {
        const { engine, stats } = yield* makeHarness({
          script: () => ({ latency: "10 millis" }),
          config: { maxConcurrentRequests: 1, maxQueuedRequests: 1000, ...(aging ? { aging: { Low: 30 } } : {}) }
        })
        yield* fork(Effect.exit(engine.infer(request("low", { priority: "Low" }))))
        // Critical work arrives faster than it is served: strict priority never gets to Low.
        for (let t = 0; t < 50; t++) {
          yield* fork(Effect.exit(engine.infer(request(`c${t}a`, { priority: "Critical" }))))
          yield* fork(Effect.exit(engine.infer(request(`c${t}b`, { priority: "Critical" }))))
          yield* TestClock.adjust("10 millis")
        }
        return stats.order.indexOf("low")
      })

    it.effect("strict priority starves Low under a steady Critical load", () =>
      Effect.gen(function*() {
        assert.strictEqual(yield* flood(false), -1)
      }))

    it.effect("with aging, Low is served once it has waited its bounds up to Critical", () =>
      Effect.gen(function*() {
        const position = yield* flood(true)
        // Low at rank 3 reaches rank 0 after 3 × 30 ms; it then is the oldest head: served by ~100 ms (10 runs).
        assert.isAtLeast(position, 1)
        assert.isAtMost(position, 11)
      }))
  })
})
