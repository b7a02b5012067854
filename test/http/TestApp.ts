/**
 * Fixtures for the HTTP tests: a scripted model pool with the models an OIP server needs to be
 * exercised (every datatype, versions, several outputs, an unavailable model, a gated slow one),
 * and an in-memory client that runs the real routes on `HttpServerRequest.fromWeb` requests in
 * the test's own fiber (so TestClock drives deadlines).
 */
import { Context, Deferred, Duration, Effect, Exit, Latch, Layer, Metric, type Scope } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { type AsyncConfig, AsyncConfigService } from "../../src/AsyncConfig.ts"
import * as BatchPolicy from "../../src/BatchPolicy.ts"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import * as DecodePool from "../../src/http/DecodePool.ts"
import { Lifecycle } from "../../src/http/Lifecycle.ts"
import * as Routes from "../../src/http/Routes.ts"
import { Statistics } from "../../src/http/Statistics.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"
import { type InstanceEvents, type ModelLoads, ModelPool, type ModelStatus, type RunOutput } from "../../src/ModelPool.ts"
import { TelemetryCollector } from "../../src/Telemetry.ts"
import * as Tensor from "../../src/Tensor.ts"

export const secretPath = "/srv/secret/models"

export interface TestPoolStats {
  started: number
  finished: number
  /** Calls of `metadataUnsafe` (the engine's admission makes one; `NodeInfer` two more). */
  lookupsUnsafe: number
}

export interface TestPoolOptions {
  /** How long a run of `slow` takes (Clock time). Default 1 second. */
  readonly slowLatency?: Duration.Input | undefined
  /**
   * Whether the pool answers metadata synchronously too (`ModelPool.metadataUnsafe`), as the
   * ONNX pool does: the engine then admits in one step and `Server.layer` serves the infer route
   * from Node's request event (`NodeInfer`). Default true; false keeps the Effect-only paths.
   */
  readonly metadataUnsafe?: boolean | undefined
  /** The pool's instance counts (`ModelPool.counters`), read live; absent: the pool has none. */
  readonly counters?: InstanceEvents | undefined
  /** The pool's load counts (`ModelPool.modelLoads`), read live; absent: the pool has none. */
  readonly modelLoads?: ModelLoads | undefined
  /** More of `slow`'s metadata (its own queue bound). */
  readonly slowMetadata?: Partial<ModelMetadata.ModelMetadata> | undefined
}

const identityModels: ReadonlyArray<ModelMetadata.ModelMetadata> = Tensor.dataTypes.map((dtype) => ({
  name: `identity_${dtype}`,
  version: "1",
  inputs: [{ name: "x", dtype, dims: [-1, -1] }],
  outputs: [{ name: "y", dtype, dims: [-1, -1] }]
}))

const echo = (version: string): ModelMetadata.ModelMetadata => ({
  name: "echo",
  version,
  inputs: [{ name: "x", dtype: "float32", dims: [-1, 4] }],
  outputs: [{ name: "y", dtype: "float32", dims: [-1, 4] }]
})

const multi: ModelMetadata.ModelMetadata = {
  name: "multi",
  version: "1",
  inputs: [{ name: "a", dtype: "float32", dims: [-1] }, { name: "b", dtype: "int64", dims: [] }],
  outputs: [{ name: "sum", dtype: "float32", dims: [1] }, { name: "scaled", dtype: "float32", dims: [-1] }, { name: "b_out", dtype: "int64", dims: [] }]
}

const slow: ModelMetadata.ModelMetadata = { ...echo("1"), name: "slow", defaultPriority: "High", versionPolicy: { _tag: "Latest", numVersions: 1 } }

/** An identity that batches, at most 2 rows a run (y = x), on the GPU as its pool says. */
const batched: ModelMetadata.ModelMetadata = {
  ...echo("1"),
  name: "batched",
  batching: { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 2, preferredBatchSizes: [2], maxQueueDelay: Duration.millis(5) },
  concurrency: 2,
  deviceUsed: "webgpu",
  warmup: { samples: [{ name: "pair", batchSize: 2, count: 3, inputs: { x: { dims: undefined, data: { _tag: "Random" } } } }], inputAxes: {} }
}

/** Like Silero VAD: 4 samples at 16 kHz or 2 at 8 kHz, as declared signatures (y = audio). */
const vad: ModelMetadata.ModelMetadata = {
  name: "vad",
  version: "1",
  inputs: [{ name: "audio", dtype: "float32", dims: [-1, -1] }, { name: "sr", dtype: "int64", dims: [] }],
  outputs: [{ name: "y", dtype: "float32", dims: [-1, -1] }],
  signatures: [{ audio: { dims: [-1, 4] }, sr: { values: [16000] } }, { audio: { dims: [-1, 2] }, sr: { values: [8000] } }],
  versionPolicy: { _tag: "Specific", versions: ["1", "3"] }
}

/** Like a text model's embedding lookup: token ids within [0, 9] (y = ids). */
const tokens: ModelMetadata.ModelMetadata = {
  name: "tokens",
  version: "1",
  inputs: [{ name: "ids", dtype: "int64", dims: [-1, -1] }],
  outputs: [{ name: "y", dtype: "int64", dims: [-1, -1] }],
  signatures: [{ ids: { min: 0, max: 9 } }]
}

/**
 * The models: `echo` v1 (y = x) and v2 (y = 2x, the default), `identity_<dtype>` for every
 * dtype (y = x, any [-1, -1] shape), `multi` (outputs sum(a), a * b and b), `slow` (echo that
 * takes `slowLatency`, or until `gate` opens when it is closed; its default priority is High,
 * its version policy latest 1), `vad` (version policy specific 1, 3) and `tokens` (identities with
 * declared input signatures), `batched` (an identity that
 * batches up to 2 rows, on "webgpu"), and `broken`, unavailable with
 * a reason that names an absolute path.
 */
export const makeTestPool = (options: TestPoolOptions = {}) =>
  Effect.gen(function*() {
    const stats: TestPoolStats = { started: 0, finished: 0, lookupsUnsafe: 0 }
    /** Models a test has taken down (unloaded): unavailable until removed from here. */
    const down = new Set<string>()
    const gate = yield* Latch.make(true)
    const models: Record<string, Record<string, ModelMetadata.ModelMetadata>> = {
      echo: { "1": echo("1"), "2": echo("2") },
      multi: { "1": multi },
      slow: { "1": { ...slow, ...options.slowMetadata } },
      vad: { "1": vad },
      tokens: { "1": tokens },
      batched: { "1": batched }
    }
    for (const m of identityModels) models[m.name] = { "1": m }
    const statuses: Array<ModelStatus> = []
    for (const [name, versions] of Object.entries(models)) {
      for (const version of Object.keys(versions)) statuses.push({ name, version, state: "READY" })
    }
    const brokenReason = `failed to load ${secretPath}/broken/1/model.onnx: Protobuf parsing failed\n    at Session.create (${secretPath}/x.js:1:1)`
    statuses.push({ name: "broken", version: "1", state: "UNAVAILABLE", reason: brokenReason })

    const lookup = (
      modelId: string,
      version: string | undefined
    ): Effect.Effect<ModelMetadata.ModelMetadata, InferenceError.ModelNotFound | InferenceError.ModelUnavailable> => {
      if (modelId === "broken") return Effect.fail(new InferenceError.ModelUnavailable({ modelId, reason: brokenReason }))
      if (down.has(modelId)) return Effect.fail(new InferenceError.ModelUnavailable({ modelId, reason: "unloaded" }))
      const versions = models[modelId]
      if (versions === undefined) return Effect.fail(new InferenceError.ModelNotFound({ modelId }))
      const chosen = version ?? Object.keys(versions).sort().at(-1)!
      const metadata = versions[chosen]
      return metadata === undefined
        ? Effect.fail(new InferenceError.ModelNotFound({ modelId, version: chosen }))
        : Effect.succeed(metadata)
    }

    const compute = (metadata: ModelMetadata.ModelMetadata, inputs: Tensor.TensorMap): Tensor.TensorMap => {
      if (metadata.name === "echo" || metadata.name === "slow") {
        const x = inputs["x"] as Tensor.Tensor<"float32">
        const k = metadata.version === "2" ? 2 : 1
        return { y: Tensor.float32(x.data.map((v) => v * k), x.dims) }
      }
      if (metadata.name === "multi") {
        const a = inputs["a"] as Tensor.Tensor<"float32">
        const b = inputs["b"] as Tensor.Tensor<"int64">
        const k = Number(b.data[0])
        return {
          sum: Tensor.float32([a.data.reduce((s, v) => s + v, 0)], [1]),
          scaled: Tensor.float32(a.data.map((v) => v * k), a.dims),
          b_out: b
        }
      }
      if (metadata.name === "vad") return { y: inputs["audio"]! }
      if (metadata.name === "tokens") return { y: inputs["ids"]! }
      return { y: inputs["x"]! }
    }

    const run = (modelId: string, inputs: Tensor.TensorMap, runOptions: { readonly requestId: string; readonly version?: string | undefined }) =>
      Effect.gen(function*() {
        const metadata = yield* lookup(modelId, runOptions.version)
        stats.started++
        const done = Deferred.makeUnsafe<RunOutput, InferenceError.RunFailed>()
        // Like a native run, it cannot be stopped: interrupting `run` only stops the wait.
        const native = (metadata.name === "slow"
          ? Effect.andThen(gate.await, Effect.sleep(options.slowLatency ?? Duration.seconds(1)))
          : Effect.void).pipe(
            Effect.andThen(Effect.sync(() => {
              stats.finished++
              Deferred.doneUnsafe(done, Exit.succeed({ outputs: compute(metadata, inputs), deviceUsed: "cpu" }))
            }))
          )
        yield* Effect.forkDetach(native, { startImmediately: true })
        return yield* Deferred.await(done)
      })

    const metadataUnsafe = (modelId: string, version: string | undefined) => {
      stats.lookupsUnsafe++
      const result = Effect.runSync(Effect.result(lookup(modelId, version)))
      return result._tag === "Success" ? result.success : result.failure
    }
    const pool = ModelPool.of({
      metadata: lookup,
      ...(options.metadataUnsafe === false ? {} : { metadataUnsafe }),
      ...(options.counters === undefined ? {} : { counters: options.counters }),
      ...(options.modelLoads === undefined ? {} : { modelLoads: options.modelLoads }),
      run,
      models: Effect.succeed(statuses)
    })
    return { pool, stats, gate, down, layer: Layer.succeed(ModelPool, pool) }
  })

export interface AppOptions extends TestPoolOptions {
  readonly config?: Partial<AsyncConfig> | undefined
  readonly bodyLimitBytes?: number | undefined
  /** Overrides of `routeOptions` (strict readiness, Retry-After, metrics format). */
  readonly routes?: Partial<Routes.Options> | undefined
  /** Another pool instead of the test pool (whose `stats` and `gate` then go unused). */
  readonly modelPool?: Layer.Layer<ModelPool> | undefined
}

/**
 * The routes' options for the test pool. Readiness is not strict by default here: the pool holds
 * `broken` on purpose, which strict readiness (the server's default) reports as not ready.
 */
export const routeOptions = (bodyLimitBytes = 1024 * 1024, overrides: Partial<Routes.Options> = {}): Routes.Options => ({
  bodyLimitBytes,
  serverName: "effect-onnx",
  serverVersion: "0.0.0-test",
  redactPaths: [secretPath],
  strictReadiness: false,
  ...overrides
})

export interface TestResponse {
  readonly status: number
  readonly headers: Headers
  readonly text: string
  readonly json: any
}

/** Sends one request through the routes, in the current fiber. */
export type Send = (
  method: string,
  path: string,
  body?: unknown,
  headers?: Record<string, string>
) => Effect.Effect<TestResponse>

/**
 * The engine (real, over the test pool), the routes, and `send`, in the current scope. Metrics
 * go to a fresh registry (provide `registry` with `Metric.MetricRegistry` around the test).
 */
export const makeApp = (options: AppOptions = {}): Effect.Effect<
  {
    readonly send: Send
    readonly engine: AsyncInferenceEngine["Service"]
    readonly lifecycle: Lifecycle["Service"]
    readonly stats: TestPoolStats
    readonly gate: Latch.Latch
  },
  never,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const testPool = yield* makeTestPool(options)
    const services = yield* Layer.build(
      AsyncInferenceEngine.layer.pipe(
        Layer.provideMerge(Statistics.layer),
        Layer.provideMerge(Layer.mergeAll(
          options.modelPool ?? testPool.layer,
          TelemetryCollector.layer,
          // A test's own settings: an invalid one is the test's bug.
          AsyncConfigService.layerWith(options.config ?? {}).pipe(Layer.orDie),
          Lifecycle.layer
        ))
      )
    )
    const app = yield* HttpRouter.toHttpEffect(
      Routes.layer(routeOptions(options.bodyLimitBytes, options.routes ?? {})).pipe(Layer.provide(Layer.succeedContext(services)))
    ).pipe(Effect.provideService(HttpRouter.RouterConfig, Routes.routerConfig))
    const send: Send = (method, path, body, headers) =>
      Effect.gen(function*() {
        const init: RequestInit = { method, headers: { ...headers } }
        if (body !== undefined) init.body = typeof body === "string" || body instanceof Uint8Array ? body as NonNullable<RequestInit["body"]> : JSON.stringify(body)
        const request = HttpServerRequest.fromWeb(new Request(`http://localhost${path}`, init))
        const response = yield* app.pipe(
          Effect.provideService(HttpServerRequest.HttpServerRequest, request),
          Effect.scoped,
          Effect.catchCause((cause) => Effect.die(cause))
        )
        const web = HttpServerResponse.toWeb(response)
        const text = yield* Effect.promise(() => web.text())
        let parsed: unknown = undefined
        try {
          parsed = JSON.parse(text)
        } catch {
          // not JSON (the metrics page)
        }
        return { status: web.status, headers: web.headers, text, json: parsed }
      })
    return {
      send,
      engine: Context.get(services, AsyncInferenceEngine),
      lifecycle: Context.get(services, Lifecycle),
      stats: testPool.stats,
      gate: testPool.gate
    }
  })

/** Yields until `condition` holds (at most `maxYields` times), for fibers to reach a state. */
export const waitUntil = (condition: () => boolean, maxYields = 1000): Effect.Effect<void> =>
  Effect.gen(function*() {
    for (let i = 0; i < maxYields && !condition(); i++) yield* Effect.yieldNow
    if (!condition()) return yield* Effect.die(new Error("waitUntil: condition never held"))
  })

/** Runs `effect` with a metric registry of its own. */
export const withFreshMetrics = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.provideService(effect, Metric.MetricRegistry, new Map())

/** What was handed to a `countedDecodePool`: each body's bytes (or text), answers encoded, threads started. */
export interface DecodePoolCalls {
  readonly bodies: Array<Uint8Array | string>
  encodes: number
  starts: number
}

/**
 * A real decode pool of one thread, loaded before it is returned (so that it takes work at once),
 * closed with the scope, whose calls are counted in `calls`.
 */
export const countedDecodePool: Effect.Effect<{ readonly pool: DecodePool.DecodePool; readonly real: DecodePool.DecodePool; readonly calls: DecodePoolCalls }, never, Scope.Scope> =
  Effect.gen(function*() {
    const real = DecodePool.make(1)
    yield* Effect.addFinalizer(() => Effect.sync(real.close))
    yield* Effect.promise(() => real.warm())
    const calls: DecodePoolCalls = { bodies: [], encodes: 0, starts: 0 }
    const pool: DecodePool.DecodePool = {
      ...real,
      start: () => {
        calls.starts++
        real.start()
      },
      decode: (name, metadata, bytes, onDone) => {
        calls.bodies.push(bytes)
        real.decode(name, metadata, bytes, onDone)
      },
      encode: (response, onDone) => {
        calls.encodes++
        real.encode(response, onDone)
      }
    }
    return { pool, real, calls }
  })
