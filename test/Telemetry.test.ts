import { assert, describe, it } from "@effect/vitest"
import { Clock, Context, Duration, Effect, Exit, Fiber, Layer, Metric, Tracer } from "effect"
import { TestClock } from "effect/testing"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../src/Engine.ts"
import * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as Metrics from "../src/http/Metrics.ts"
import { ModelPool } from "../src/ModelPool.ts"
import { guard, layerRecording, metrics, outcomeOf, type RequestInfo, requestOutcomes, TelemetryCollector, TelemetryLog } from "../src/Telemetry.ts"
import * as Tensor from "../src/Tensor.ts"
import { echoInputs, echoMetadata, makeFake } from "./fixtures/FakeModelPool.ts"

const count = (metric: Metric.Metric<number, Metric.CounterState<number>>, attributes: Record<string, string>) =>
  Effect.map(Metric.value(Metric.withAttributes(metric, attributes)), (s) => s.count)

describe("TelemetryCollector.layer", () => {
  it.effect("records Effect Metrics by model and outcome, and an Engine.infer span per request", () =>
    Effect.gen(function*() {
      const spans: Array<{ name: string; attributes: Record<string, unknown>; exit: string }> = []
      const tracer = Tracer.make({
        span: (options) => {
          const span = new Tracer.NativeSpan(options)
          const end = span.end.bind(span)
          span.end = (time, exit) => {
            end(time, exit)
            spans.push({ name: span.name, attributes: Object.fromEntries(span.attributes), exit: exit._tag })
          }
          return span
        }
      })
      const fake = yield* makeFake((id) => id === "bad" ? { latency: "5 millis", failWith: "boom" } : { latency: "5 millis" })
      const context = yield* Layer.build(AsyncInferenceEngine.layer.pipe(
        Layer.provide(Layer.mergeAll(fake.layer, TelemetryCollector.layer, AsyncConfigService.layer))
      ))
      const engine = Context.get(context, AsyncInferenceEngine)
      const model = { model: "echo", version: echoMetadata.version }
      const before = {
        success: yield* count(metrics.requests, { ...model, outcome: "success" }),
        backend: yield* count(metrics.requests, { ...model, outcome: "backend" }),
        started: yield* count(metrics.started, model),
        exec: yield* count(metrics.executions, model)
      }
      const run = (id: string) => Effect.forkChild(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(1), { requestId: id }))), { startImmediately: true })
      const fibers = [yield* run("good"), yield* run("bad")]
      yield* TestClock.adjust("10 millis")
      for (const f of fibers) yield* Fiber.join(f)
      assert.strictEqual((yield* count(metrics.requests, { ...model, outcome: "success" })) - before.success, 1)
      // RunFailed is the backend's fault.
      assert.strictEqual((yield* count(metrics.requests, { ...model, outcome: "backend" })) - before.backend, 1)
      assert.strictEqual((yield* count(metrics.started, model)) - before.started, 2)
      // Executions are runs that completed, as Triton's execution_count: the failed one is not one.
      assert.strictEqual((yield* count(metrics.executions, model)) - before.exec, 1)
      const latency = yield* Metric.value(Metric.withAttributes(metrics.latency, model))
      assert.isAtLeast(latency.count, 1)
      // Base units: a 5 ms run is 0.005 s, not 5.
      assert.isBelow(latency.max, 1)
      assert.isAtLeast(latency.max, 0.004)

      const traced = yield* engine.infer(InferenceRequest.make("echo", echoInputs(1), { requestId: "traced" })).pipe(
        Effect.forkChild({ startImmediately: true }),
        Effect.tap(() => TestClock.adjust("5 millis")),
        Effect.flatMap(Fiber.join),
        Effect.provideService(Tracer.Tracer, tracer)
      )
      assert.strictEqual(traced.requestId, "traced")
      const span = spans.find((s) => s.name === "Engine.infer")
      assert.isDefined(span)
      assert.deepInclude(span!.attributes, { "inference.model": "echo", "inference.request_id": "traced", "inference.priority": "Normal" })
      assert.strictEqual(span!.exit, "Success")
    }))
})

describe("TelemetryCollector.layer series", () => {
  /** A collector built on `registry`, with the snapshot of that registry. */
  const collectorOn = (registry: Metric.MetricRegistry) =>
    Effect.map(
      Layer.build(TelemetryCollector.layer).pipe(Effect.provideService(Metric.MetricRegistry, registry)),
      (context) => Context.get(context, TelemetryCollector)
    )
  const snapshotOf = (registry: Metric.MetricRegistry) => Metric.snapshotUnsafe(Context.make(Metric.MetricRegistry, registry))

  it.effect("reads as Effect's own histogram and counter fed the same values: buckets, count, sum, min, max", () =>
    Effect.gen(function*() {
      const registry: Metric.MetricRegistry = new Map()
      const collector = yield* collectorOn(registry)
      // below the first bound, on bounds, between them, past the last (the overflow bucket)
      const waitsMs = [0.01, 0.05, 0.1, 0.11, 3, 250, 26_214.4, 1e9, 0]
      for (const ms of waitsMs) collector.recordQueueWait("m", "High", ms)
      for (let i = 0; i < 3; i++) collector.recordStart({ modelId: "m", requestId: `r${i}`, priority: "High" })

      const reference: Metric.MetricRegistry = new Map()
      const referenceContext = Context.make(Metric.MetricRegistry, reference)
      const histogram = Metric.withAttributes(metrics.queueWait, { model: "m", version: "", priority: "High" })
      for (const ms of waitsMs) yield* Metric.update(histogram, ms / 1000).pipe(Effect.provideService(Metric.MetricRegistry, reference))
      yield* Metric.update(Metric.withAttributes(metrics.started, { model: "m", version: "" }), 3).pipe(Effect.provideService(Metric.MetricRegistry, reference))

      const ours = snapshotOf(registry)
      for (const expected of Metric.snapshotUnsafe(referenceContext)) {
        const found = ours.find((s) => s.id === expected.id && JSON.stringify(s.attributes) === JSON.stringify(expected.attributes))
        assert.isDefined(found, `${expected.id} ${JSON.stringify(expected.attributes)}`)
        assert.strictEqual(found!.type, expected.type)
        assert.deepStrictEqual(found!.state, expected.state)
      }
    }))

  it.effect("collectors built with other metric attributes on one registry count into series of their own", () =>
    Effect.gen(function*() {
      const registry: Metric.MetricRegistry = new Map()
      const labelled = (engine: string) => collectorOn(registry).pipe(Effect.provideService(Metric.CurrentMetricAttributes, { engine }))
      const a = yield* labelled("a")
      const b = yield* labelled("b")
      a.recordStart({ modelId: "m", requestId: "1", priority: "Normal" })
      b.recordStart({ modelId: "m", requestId: "2", priority: "Normal" })
      b.recordStart({ modelId: "m", requestId: "3", priority: "Normal" })
      const started = snapshotOf(registry).filter((s) => s.id === metrics.started.id)
      assert.deepStrictEqual(
        started.map((s) => [s.attributes?.["engine"], (s.state as Metric.CounterState<number>).count]).sort(),
        [["a", 1], ["b", 2]]
      )
    }))

  it.effect("appears once updated, and two collectors on one registry count into the same series", () =>
    Effect.gen(function*() {
      const registry: Metric.MetricRegistry = new Map()
      const first = yield* collectorOn(registry)
      const second = yield* collectorOn(registry)
      assert.deepStrictEqual(snapshotOf(registry), [])
      const info = { modelId: "m", requestId: "r", priority: "Normal" } as const
      first.recordStart(info)
      second.recordStart(info)
      first.recordSuccess(info, 2)
      const started = snapshotOf(registry).filter((s) => s.id === metrics.started.id)
      assert.deepStrictEqual(started.map((s) => s.state), [{ count: 2, incremental: true }])
      const outcomes = snapshotOf(registry).filter((s) => s.id === metrics.requests.id).map((s) => [s.attributes?.["outcome"], (s.state as Metric.CounterState<number>).count])
      assert.deepStrictEqual(Object.fromEntries(outcomes), { success: 1, rejected: 0, cancelled: 0, timeout: 0, invalid: 0, backend: 0 })
      assert.isFalse(snapshotOf(registry).some((s) => s.id === metrics.run.id), "no run yet: no compute series")
    }))
})

describe("TelemetryCollector.layer recordRun", () => {
  it.effect("counts inference_count_total in rows (Triton's inferences) and inference_executions_total in runs", () =>
    Effect.gen(function*() {
      const collector = Context.get(yield* Layer.build(TelemetryCollector.layer), TelemetryCollector)
      const model = { model: "rows-model", version: "" }
      const before = { inferences: yield* count(metrics.inferences, model), exec: yield* count(metrics.executions, model) }
      collector.recordRun("rows-model", 1, 1, 64)
      collector.recordRun("rows-model", 1, 1, 64)
      collector.recordRun("rows-model", 1, 2)
      assert.strictEqual((yield* count(metrics.inferences, model)) - before.inferences, 130, "64 + 64 rows, then 2 requests that did not say")
      assert.strictEqual((yield* count(metrics.executions, model)) - before.exec, 3)
    }))

  it.effect("counts a run's time once per request in it (Triton's compute_infer), and Triton's page reads it so, with compute_input and compute_output at 0", () =>
    Effect.gen(function*() {
      const collector = Context.get(yield* Layer.build(TelemetryCollector.layer), TelemetryCollector)
      const model = { model: "compute-model", version: "3" }
      const before = yield* count(metrics.requestCompute, model)
      collector.recordRun("compute-model", 10, 4, 4, "3") // a batch of 4 requests, 10 ms: 40 ms of request compute
      collector.recordRun("compute-model", 5, 1, 1, "3")
      assert.closeTo((yield* count(metrics.requestCompute, model)) - before, 0.045, 1e-9)
      const page = Metrics.tritonFamilies(yield* Metric.snapshot, new Map())
      assert.include(page, `nv_inference_compute_infer_duration_us{model="compute-model",version="3"} ${Math.round((before + 0.045) * 1e6)}`)
      assert.include(page, `nv_inference_compute_input_duration_us{model="compute-model",version="3"} 0`)
      assert.include(page, `nv_inference_compute_output_duration_us{model="compute-model",version="3"} 0`)
    }))
})

describe("TelemetryCollector.layer versions", () => {
  it.effect("counts each model version apart, as Triton labels its families: the version a request was admitted to or ran under; none chosen, empty", () =>
    Effect.gen(function*() {
      const registry: Metric.MetricRegistry = new Map()
      const collector = Context.get(yield* Layer.build(TelemetryCollector.layer).pipe(Effect.provideService(Metric.MetricRegistry, registry)), TelemetryCollector)
      const v1 = { modelId: "m", requestId: "a", priority: "Normal", version: "1" } as const
      const v2 = { modelId: "m", requestId: "b", priority: "Normal", version: "2" } as const
      const unknown = { modelId: "m", requestId: "c", priority: "Normal" } as const
      for (const info of [v1, v2, unknown]) collector.recordStart(info)
      collector.recordSuccess(v1, 3)
      collector.recordFailure(v2, new InferenceError.RunFailed({ modelId: "m", requestId: "b", detail: "x" }), 1)
      collector.recordRejected(unknown, new InferenceError.ModelNotFound({ modelId: "m" }))
      collector.recordQueueWait("m", "Normal", 1, "2")
      collector.recordRun("m", 2, 1, 4, "1")
      const snapshot = Metric.snapshotUnsafe(Context.make(Metric.MetricRegistry, registry))
      const counts = (id: string) =>
        snapshot.filter((s) => s.id === id && (s.state as Metric.CounterState<number>).count > 0)
          .map((s) => JSON.stringify(s.attributes) + " " + (s.state as Metric.CounterState<number>).count).sort()
      assert.deepStrictEqual(counts(metrics.started.id), ['{"model":"m","version":""} 1', '{"model":"m","version":"1"} 1', '{"model":"m","version":"2"} 1'])
      assert.deepStrictEqual(counts(metrics.requests.id), [
        '{"model":"m","version":"","outcome":"rejected"} 1',
        '{"model":"m","version":"1","outcome":"success"} 1',
        '{"model":"m","version":"2","outcome":"backend"} 1'
      ])
      assert.deepStrictEqual(counts(metrics.inferences.id), ['{"model":"m","version":"1"} 4'])
      const waits = snapshot.filter((s) => s.id === metrics.queueWait.id).map((s) => JSON.stringify(s.attributes))
      assert.deepStrictEqual(waits, ['{"unit":"seconds","model":"m","version":"2","priority":"Normal"}'], "durations carry their unit, for OTLP")
    }))
})

describe("Engine's recordRun", () => {
  it.effect("records a run's native time (RunOutput.runMs), not its wait in the instance it was sent ahead to", () =>
    Effect.gen(function*() {
      // One instance that pipelines two jobs: the second waits there for the first's 10 ms run.
      let busyUntilMs = 0
      const pool = ModelPool.of({
        metadata: () => Effect.succeed({ ...echoMetadata, concurrency: 1, pipelineDepth: 2 }),
        run: (_modelId, inputs) =>
          Effect.gen(function*() {
            const now = yield* Clock.currentTimeMillis
            busyUntilMs = Math.max(now, busyUntilMs) + 10
            yield* Effect.sleep(busyUntilMs - now)
            return { outputs: { y: inputs["x"]! }, deviceUsed: "cpu", runMs: 10 }
          }),
        models: Effect.succeed([])
      })
      const context = yield* Layer.build(AsyncInferenceEngine.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(Layer.succeed(ModelPool, pool), layerRecording, AsyncConfigService.layerWith({ maxConcurrentRequests: 1 })))
      ))
      const engine = Context.get(context, AsyncInferenceEngine)
      const run = (value: number) => Effect.forkChild(engine.infer(InferenceRequest.make("echo", echoInputs(value))), { startImmediately: true })
      const fibers = [yield* run(1), yield* run(2)]
      yield* TestClock.adjust("50 millis")
      for (const f of fibers) yield* Fiber.join(f)
      const runs = Context.get(context, TelemetryLog).events.flatMap((e) => (e._tag === "run" ? [e.runMs] : []))
      assert.deepStrictEqual(runs, [10, 10], "the job sent ahead waited 10 ms for the instance, then ran 10 ms")
    }))

  it.effect("records a group's runs at the group's wall time per member when the pool does not time them, not at 0", () =>
    Effect.gen(function*() {
      const pool = ModelPool.of({
        metadata: () => Effect.succeed({ ...echoMetadata, concurrency: 1 }),
        run: (_modelId, inputs) => Effect.succeed({ outputs: { y: inputs["x"]! }, deviceUsed: "cpu" }),
        // Each run of a group takes 10 ms; the pool reports no runMs.
        runGroup: (_modelId, inputs) =>
          Effect.as(Effect.sleep(Duration.millis(10 * inputs.length)), inputs.map((x) => Exit.succeed({ outputs: { y: x["x"]! }, deviceUsed: "cpu" }))),
        models: Effect.succeed([])
      })
      const context = yield* Layer.build(AsyncInferenceEngine.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(Layer.succeed(ModelPool, pool), layerRecording, AsyncConfigService.layerWith({})))
      ))
      const engine = Context.get(context, AsyncInferenceEngine)
      const fibers = []
      for (let i = 0; i < 4; i++) fibers.push(yield* Effect.forkChild(engine.infer(InferenceRequest.make("echo", echoInputs(i))), { startImmediately: true }))
      yield* TestClock.adjust("100 millis")
      for (const f of fibers) yield* Fiber.join(f)
      const runs = Context.get(context, TelemetryLog).events.flatMap((e) => (e._tag === "run" ? [e.runMs] : []))
      assert.deepStrictEqual(runs, [10, 10, 10, 10], "one group of 4 runs took 40 ms")
    }))
})

describe("Telemetry.outcomeOf", () => {
  it.effect("the engine records a request's start and outcome with one object that names the version it was admitted to, not its inputs", () =>
    Effect.gen(function*() {
      const starts: Array<RequestInfo> = []
      const outcomes: Array<RequestInfo> = []
      const collector = TelemetryCollector.of({
        recordStart: (info) => void starts.push(info),
        recordSuccess: (info) => void outcomes.push(info),
        recordFailure: (info) => void outcomes.push(info),
        recordCancelled: (info) => void outcomes.push(info),
        recordTimeout: (info) => void outcomes.push(info),
        recordRejected: (info) => void outcomes.push(info),
        recordQueueWait: () => {},
        recordRun: () => {}
      })
      // versions 1 and 2 of "echo"; the default is the highest
      const versionOf = (version: string | undefined) => (version === undefined || version === "2" ? "2" : version === "1" || version === "01" ? "1" : undefined)
      const metadataUnsafe = (modelId: string, version?: string) => {
        const v = modelId === "echo" ? versionOf(version) : undefined
        return v === undefined ? new InferenceError.ModelNotFound({ modelId }) : { ...echoMetadata, version: v }
      }
      const pool = ModelPool.of({
        metadata: (modelId, version) => {
          const m = metadataUnsafe(modelId, version)
          return "_tag" in m ? Effect.fail(m) : Effect.succeed(m)
        },
        metadataUnsafe,
        run: (_modelId, inputs) => Effect.succeed({ outputs: { y: inputs["x"]! }, deviceUsed: "cpu" }),
        models: Effect.succeed([])
      })
      const context = yield* Layer.build(AsyncInferenceEngine.layer.pipe(
        Layer.provide(Layer.mergeAll(Layer.succeed(ModelPool, pool), Layer.succeed(TelemetryCollector, collector), AsyncConfigService.layer))
      ))
      const engine = Context.get(context, AsyncInferenceEngine)
      const infer = (id: string, options: { readonly modelVersion?: string; readonly inputs?: ReturnType<typeof echoInputs> } = {}) =>
        Effect.exit(engine.infer(InferenceRequest.make("echo", options.inputs ?? echoInputs(1), { requestId: id, modelVersion: options.modelVersion })))
      yield* infer("one", { modelVersion: "01" })
      yield* infer("default")
      yield* infer("bad-one", { modelVersion: "1", inputs: { x: Tensor.float32(new Float32Array(3), [1, 3]) } })
      yield* engine.drain(0)
      yield* infer("late")
      assert.deepStrictEqual(outcomes.map((i) => [i.requestId, i.version]), [["one", "1"], ["default", "2"], ["bad-one", "1"], ["late", "2"]])
      assert.deepStrictEqual(starts.map((i) => i.requestId), ["one", "default", "bad-one", "late"])
      for (let i = 0; i < outcomes.length; i++) {
        assert.strictEqual(outcomes[i], starts[i], `${outcomes[i]!.requestId}: one object for its start and its outcome`)
        assert.deepStrictEqual(Object.keys(outcomes[i]!).sort(), ["modelId", "priority", "requestId", "version"], "nothing of the request's inputs")
      }
    }))

  it("maps every failure reason to one outcome", () => {
    const cases: ReadonlyArray<readonly [Parameters<typeof outcomeOf>[0], string]> = [
      ["QueueFull", "rejected"],
      ["ShuttingDown", "rejected"],
      ["Cancelled", "cancelled"],
      ["DeadlineExceeded", "timeout"],
      ["QueueTimeout", "timeout"],
      ["InvalidInput", "invalid"],
      ["ModelNotFound", "invalid"],
      ["RunFailed", "backend"],
      ["ModelUnavailable", "backend"]
    ]
    for (const [reason, outcome] of cases) assert.strictEqual(outcomeOf(reason), outcome, reason)
    assert.deepStrictEqual([...new Set(cases.map(([, o]) => o))].sort(), requestOutcomes.filter((o) => o !== "success").sort())
  })
})

describe("Telemetry.guard", () => {
  it("passes every record point through, and turns a throw into onThrow naming the point", () => {
    const calls: Array<string> = []
    const thrown: Array<string> = []
    const service = {
      recordStart: () => void calls.push("recordStart"),
      recordSuccess: () => void calls.push("recordSuccess"),
      recordFailure: () => void calls.push("recordFailure"),
      recordCancelled: () => void calls.push("recordCancelled"),
      recordTimeout: () => void calls.push("recordTimeout"),
      recordRejected: () => void calls.push("recordRejected"),
      recordQueueWait: () => {
        throw new Error("queue wait broke")
      },
      recordRun: (_m: string, runMs: number) => void calls.push(`recordRun ${runMs}`)
    }
    const guarded = guard(service, (point, error) => void thrown.push(`${point}: ${(error as Error).message}`))
    const info = { modelId: "m", requestId: "r", priority: "Normal" } as const
    guarded.recordStart(info)
    guarded.recordSuccess(info, 1)
    guarded.recordFailure(info, new InferenceError.InvalidInput({ modelId: "m", detail: "x" }), 1)
    guarded.recordCancelled(info, 1)
    guarded.recordTimeout(info, 1)
    guarded.recordRejected(info, new InferenceError.ShuttingDown({}))
    guarded.recordQueueWait("m", "Normal", 1)
    guarded.recordRun("m", 7, 1)
    assert.deepStrictEqual(calls, ["recordStart", "recordSuccess", "recordFailure", "recordCancelled", "recordTimeout", "recordRejected", "recordRun 7"])
    assert.deepStrictEqual(thrown, ["recordQueueWait: queue wait broke"])
  })
})
