import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Metric, Tracer } from "effect"
import { TestClock } from "effect/testing"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../src/Engine.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import { metrics, TelemetryCollector } from "../src/Telemetry.ts"
import { echoInputs, makeFake } from "./fixtures/FakeModelPool.ts"

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
      const model = { model: "echo" }
      const before = {
        success: yield* count(metrics.requests, { ...model, outcome: "success" }),
        failure: yield* count(metrics.requests, { ...model, outcome: "failure" }),
        runFailed: yield* count(metrics.failures, { ...model, reason: "RunFailed" }),
        started: yield* count(metrics.started, model),
        exec: yield* count(metrics.executions, model)
      }
      const run = (id: string) => Effect.forkChild(Effect.exit(engine.infer(InferenceRequest.make("echo", echoInputs(1), { requestId: id }))), { startImmediately: true })
      const fibers = [yield* run("good"), yield* run("bad")]
      yield* TestClock.adjust("10 millis")
      for (const f of fibers) yield* Fiber.join(f)
      assert.strictEqual((yield* count(metrics.requests, { ...model, outcome: "success" })) - before.success, 1)
      assert.strictEqual((yield* count(metrics.requests, { ...model, outcome: "failure" })) - before.failure, 1)
      assert.strictEqual((yield* count(metrics.failures, { ...model, reason: "RunFailed" })) - before.runFailed, 1)
      assert.strictEqual((yield* count(metrics.started, model)) - before.started, 2)
      assert.strictEqual((yield* count(metrics.executions, model)) - before.exec, 2)
      const latency = yield* Metric.value(Metric.withAttributes(metrics.latency, model))
      assert.isAtLeast(latency.count, 1)

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
