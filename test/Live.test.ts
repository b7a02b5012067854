/**
 * `Live.layer` stacks are their own: two in one runtime (two servers over two repositories, two
 * clients in one process) each build their engine, collector and metric registry, and a server
 * built over each has its own Lifecycle. Effect builds a layer object once per runtime, so the
 * module-constant layers inside them had been shared by every stack.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer, Metric } from "effect"
import { AsyncInferenceEngine } from "../src/Engine.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as Live from "../src/Live.ts"
import { Lifecycle } from "../src/http/Lifecycle.ts"
import * as Server from "../src/http/Server.ts"
import { ModelPool } from "../src/ModelPool.ts"
import { echoInputs, makeFake } from "./fixtures/FakeModelPool.ts"
import { routeOptions } from "./http/TestApp.ts"

class A extends Context.Service<A, { readonly engine: AsyncInferenceEngine["Service"]; readonly registry: Metric.MetricRegistry; readonly lifecycle: Lifecycle["Service"] }>()("test/Live/A") {}
class B extends Context.Service<B, { readonly engine: AsyncInferenceEngine["Service"]; readonly registry: Metric.MetricRegistry; readonly lifecycle: Lifecycle["Service"] }>()("test/Live/B") {}

/** A server over its own Live stack (a fake pool), and what it was built with, under `tag`. */
const stack = <I, S>(tag: Context.Service<I, S>) =>
  Layer.unwrap(Effect.map(makeFake(), (fake) => {
    const live = Live.layer({ modelPool: Layer.succeed(ModelPool, fake.pool) })
    const server = Server.layer({ ...routeOptions(), host: "127.0.0.1", port: 0 })
    return Layer.effect(
      tag,
      Effect.gen(function*() {
        return { engine: yield* AsyncInferenceEngine, registry: yield* Metric.MetricRegistry, lifecycle: yield* Lifecycle } as unknown as S
      })
    ).pipe(Layer.provide(server), Layer.provideMerge(live))
  }))

describe("Live.layer", () => {
  it.live("two stacks in one runtime have their own engine, metric registry and server Lifecycle", () =>
    Effect.gen(function*() {
      const context = yield* Layer.build(Layer.mergeAll(stack(A), stack(B)))
      const a = Context.get(context, A)
      const b = Context.get(context, B)
      assert.notStrictEqual(a.engine, b.engine, "one engine each")
      assert.notStrictEqual(a.registry, b.registry, "one metric registry each")
      assert.notStrictEqual(a.lifecycle, b.lifecycle, "one Lifecycle each: one server's shutdown is not the other's")
      // A request to A is counted in A's registry alone.
      yield* a.engine.infer(InferenceRequest.make("echo", echoInputs(1))).pipe(Effect.provideService(Metric.MetricRegistry, a.registry))
      const started = (registry: Metric.MetricRegistry) =>
        [...registry.values()].some((m) => (m as { readonly id?: string }).id === "inference_requests_started_total")
      assert.isTrue(started(a.registry))
      assert.isFalse(started(b.registry), "B's registry has none of A's series")
      yield* a.lifecycle.beginShutdown
      assert.isTrue(a.lifecycle.isShuttingDown())
      assert.isFalse(b.lifecycle.isShuttingDown(), "B still serves")
    }))
})
