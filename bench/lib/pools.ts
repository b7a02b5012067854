/**
 * What the benchmarks run on: in-thread onnxruntime sessions, a bench-local in-thread
 * `ModelPool` adapter, temporary model repositories with the config.json a benchmark wants,
 * and engines (AsyncInferenceEngine over either pool) as ManagedRuntimes usable from plain
 * async code.
 */
import { Effect, Layer, ManagedRuntime, References } from "effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as ort from "onnxruntime-node"
import { AsyncConfigService, type AsyncConfig } from "../../src/AsyncConfig.ts"
import * as BatchPolicy from "../../src/BatchPolicy.ts"
import { AsyncInferenceEngine, type Service as EngineService } from "../../src/Engine.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"
import { ModelPool, type Service as PoolService } from "../../src/ModelPool.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import { TelemetryCollector } from "../../src/Telemetry.ts"
import type * as Tensor from "../../src/Tensor.ts"
import { modelsDir } from "./common.ts"

// ---------------------------------------------------------------------------
// In-thread sessions
// ---------------------------------------------------------------------------

/** The session options the worker uses (SessionWorker.ts), intra-op threads 1 by default. */
export const sessionOptions = (intraOpNumThreads = 1): ort.InferenceSession.SessionOptions => ({
  executionProviders: ["cpu"],
  intraOpNumThreads,
  interOpNumThreads: 1,
  graphOptimizationLevel: "all",
  logSeverityLevel: 3
})

export const modelPath = (model: string): string => Path.join(modelsDir, model, "model.onnx")

export const openSession = (model: string, intraOpNumThreads = 1): Promise<ort.InferenceSession> =>
  ort.InferenceSession.create(modelPath(model), sessionOptions(intraOpNumThreads))

const isDataType = (t: string): t is Tensor.DataType =>
  ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool", "string"].includes(t)

const toSpec = (m: ort.InferenceSession.ValueMetadata): ModelMetadata.TensorSpec => {
  if (!m.isTensor || !isDataType(m.type)) throw new Error(`unsupported value ${m.name}`)
  return { name: m.name, dtype: m.type, dims: m.shape.map((d) => (typeof d === "number" && d >= 0 ? d : -1)) }
}

/** The metadata the engine would see for `session` (as SessionWorker reports it). */
export const metadataOf = (name: string, session: ort.InferenceSession): ModelMetadata.ModelMetadata => ({
  name,
  version: "1",
  inputs: session.inputMetadata.map(toSpec),
  outputs: session.outputMetadata.map(toSpec)
})

/** config.json's `batching` object, resolved against the model's signature. */
export const resolveBatching = (json: BatchPolicy.ConfigJson | undefined, metadata: ModelMetadata.ModelMetadata): BatchPolicy.BatchingConfig =>
  Effect.runSync(BatchPolicy.resolve(json, metadata))

// ---------------------------------------------------------------------------
// In-thread ModelPool adapter (bench-local)
// ---------------------------------------------------------------------------

export interface InThreadModel {
  readonly name: string
  /** config.json's `batching` object; undefined = batching off. */
  readonly batching?: BatchPolicy.ConfigJson | undefined
}

/**
 * A `ModelPool` that calls `session.run` in the main thread (one session per model). It does
 * what OnnxModelPool does minus the worker hop: ORT tensors in, plain tensors out. Runs on one
 * session execute one after another anyway (each `run` is a synchronous native call).
 */
export const inThreadPool = (models: ReadonlyArray<InThreadModel>): Layer.Layer<ModelPool> =>
  Layer.effect(
    ModelPool,
    Effect.gen(function*() {
      const loaded = new Map<string, { session: ort.InferenceSession; metadata: ModelMetadata.ModelMetadata }>()
      for (const m of models) {
        const session = yield* Effect.acquireRelease(
          Effect.promise(() => openSession(m.name)),
          (s) => Effect.promise(() => s.release())
        )
        const base = metadataOf(m.name, session)
        const metadata = m.batching === undefined ? base : { ...base, batching: resolveBatching(m.batching, base) }
        loaded.set(m.name, { session, metadata })
      }
      const notFound = (modelId: string) => Effect.fail(new InferenceError.ModelNotFound({ modelId }))
      const service: PoolService = {
        metadata: (modelId) => {
          const m = loaded.get(modelId)
          return m === undefined ? notFound(modelId) : Effect.succeed(m.metadata)
        },
        run: (modelId, inputs, options) => {
          const m = loaded.get(modelId)
          if (m === undefined) return notFound(modelId)
          return Effect.tryPromise({
            try: () => {
              const feeds: Record<string, ort.Tensor> = {}
              for (const name in inputs) {
                const t = inputs[name]!
                feeds[name] = new ort.Tensor(t.dtype as "float32", t.data as Float32Array, t.dims)
              }
              return m.session.run(feeds)
            },
            catch: (e) => new InferenceError.RunFailed({ modelId, requestId: options.requestId, detail: String(e) })
          }).pipe(Effect.map((results) => {
            const outputs: Record<string, Tensor.Tensor> = {}
            for (const name in results) {
              const t = results[name]!
              outputs[name] = { dtype: t.type as Tensor.DataType, dims: t.dims, data: t.data as Tensor.TensorData }
            }
            return { outputs, deviceUsed: "cpu" }
          }))
        },
        models: Effect.succeed(models.map((m) => ({ name: m.name, version: "1", state: "READY" as const })))
      }
      return service
    })
  )

// ---------------------------------------------------------------------------
// Temporary repositories (worker pool)
// ---------------------------------------------------------------------------

const tempDirs = new Set<string>()
process.on("exit", () => {
  for (const d of tempDirs) Fs.rmSync(d, { recursive: true, force: true })
})

export interface RepoModel {
  readonly name: string
  /** Written to `<repo>/<name>/config.json`. */
  readonly config: Record<string, unknown>
}

/** A repository in a temp dir: the bundled model files copied (not linked: links leaving the root are refused). */
export const tempRepository = (models: ReadonlyArray<RepoModel>): string => {
  const root = Fs.mkdtempSync(Path.join(Os.tmpdir(), "bench-repo-"))
  tempDirs.add(root)
  for (const m of models) {
    const dir = Path.join(root, m.name)
    Fs.mkdirSync(dir)
    Fs.copyFileSync(modelPath(m.name), Path.join(dir, "model.onnx"))
    Fs.writeFileSync(Path.join(dir, "config.json"), JSON.stringify(m.config, null, 2))
  }
  return root
}

export type BatchingSource = "off" | "config.json" | "bench override"

export interface WorkerModel {
  readonly name: string
  readonly instances: number
  /** config.json's `batching`; undefined = batching off (`{ "enabled": false }` is written). */
  readonly batching?: BatchPolicy.ConfigJson | undefined
  /** config.json's `responseCache.enable` (the engine keeps answers only with `responseCacheBytes`). */
  readonly responseCache?: boolean | undefined
}

/**
 * OnnxModelPool over a temp repository with the config.json each model needs. If the pool does
 * not (yet) read config.json's `batching`, the wanted batching is applied to the metadata the
 * pool returns, and `sources` says so.
 */
export const workerPool = (
  models: ReadonlyArray<WorkerModel>,
  sources: Record<string, BatchingSource> = {}
): Layer.Layer<ModelPool, unknown> =>
  Layer.effect(
    ModelPool,
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.make({ repository: repositoryFor(models) })
      const overrides = new Map<string, ModelMetadata.ModelMetadata>()
      for (const m of models) {
        const md = yield* pool.metadata(m.name)
        if (m.batching === undefined) {
          sources[m.name] = "off"
          if (md.batching?.enabled === true) overrides.set(m.name, { ...md, batching: BatchPolicy.disabled })
        } else if (md.batching?.enabled === true) {
          sources[m.name] = "config.json"
        } else {
          sources[m.name] = "bench override"
          overrides.set(m.name, { ...md, batching: resolveBatching(m.batching, md) })
        }
      }
      if (overrides.size === 0) return pool
      return {
        ...pool,
        metadata: (modelId, version) => {
          const o = overrides.get(modelId)
          return o === undefined ? pool.metadata(modelId, version) : Effect.succeed(o)
        }
      } satisfies PoolService
    })
  )

const repositoryFor = (models: ReadonlyArray<WorkerModel>) =>
  tempRepository(models.map((m) => ({
    name: m.name,
    config: {
      instances: m.instances,
      intraOpNumThreads: 1,
      interOpNumThreads: 1,
      batching: m.batching ?? { enabled: false },
      ...(m.responseCache === true ? { responseCache: { enable: true } } : {})
    }
  })))

/** OnnxModelPool with its extras (`counters`, `stats`, `runMs`), as both ModelPool and OnnxModelPool. */
export const workerPoolWithControl = (models: ReadonlyArray<WorkerModel>) => OnnxModelPool.layerWithControl({ repository: repositoryFor(models) })

/** An OnnxModelPool alone (its `run` reports the worker-measured `runMs`). */
export const startOnnxPool = async (models: ReadonlyArray<WorkerModel>) => {
  const runtime = ManagedRuntime.make(workerPoolWithControl(models))
  const pool = await runtime.runPromise(OnnxModelPool.OnnxModelPool)
  return { runtime, pool, dispose: () => runtime.dispose() }
}

// ---------------------------------------------------------------------------
// Engines
// ---------------------------------------------------------------------------

export type TelemetryKind = "metrics" | "noop"

/** Native runs the engine made (counted at its `recordRun` telemetry point). */
export interface RunCounts {
  runs: number
  rows: number
  runMs: number
}

/**
 * The chosen telemetry layer, with `recordRun` also counted into `counts`, so that a benchmark
 * can report the batch sizes an engine formed.
 */
export const countingTelemetry = (kind: TelemetryKind | Layer.Layer<TelemetryCollector>, counts: RunCounts): Layer.Layer<TelemetryCollector> =>
  Layer.effect(
    TelemetryCollector,
    Effect.map(TelemetryCollector, (real) =>
      TelemetryCollector.of({
        ...real,
        recordRun: (modelId, runMs, batchSize) => {
          counts.runs++
          counts.rows += batchSize
          counts.runMs += runMs
          return real.recordRun(modelId, runMs, batchSize)
        }
      }))
  ).pipe(Layer.provide(kind === "metrics" ? TelemetryCollector.layer : kind === "noop" ? TelemetryCollector.layerNoop : kind))

export interface EngineHandle {
  readonly runtime: ManagedRuntime.ManagedRuntime<AsyncInferenceEngine | ModelPool, unknown>
  readonly engine: EngineService
  readonly pool: PoolService
  readonly counts: RunCounts
  readonly dispose: () => Promise<void>
}

export interface EngineLayer {
  readonly layer: Layer.Layer<AsyncInferenceEngine | ModelPool, unknown>
  readonly counts: RunCounts
}

/**
 * The engine over `pool`. `tracing: false` puts `References.TracerEnabled = false` in the
 * runtime, so that fibers run through it (callers included) create no spans: a diagnostic of
 * what tracing costs.
 */
export const engineLayer = (
  pool: Layer.Layer<ModelPool, unknown>,
  config: Partial<AsyncConfig>,
  telemetry: TelemetryKind | Layer.Layer<TelemetryCollector> = "metrics",
  options: { readonly tracing?: boolean } = {}
): EngineLayer => {
  const counts: RunCounts = { runs: 0, rows: 0, runMs: 0 }
  const base = Layer.mergeAll(pool, countingTelemetry(telemetry, counts), AsyncConfigService.layerWith(config))
  const layer = AsyncInferenceEngine.layer.pipe(
    Layer.provideMerge(options.tracing === false ? Layer.merge(base, Layer.succeed(References.TracerEnabled, false)) : base)
  )
  return { layer, counts }
}

/** Builds the engine in its own runtime; `dispose` closes it (and its pool). */
export const startEngine = async ({ counts, layer }: EngineLayer): Promise<EngineHandle> => {
  const runtime = ManagedRuntime.make(layer)
  const { engine, pool } = await runtime.runPromise(Effect.all({ engine: AsyncInferenceEngine, pool: ModelPool }))
  return { runtime, engine, pool, counts, dispose: () => runtime.dispose() }
}

/** A pool alone (no engine) in its own runtime. */
export const startPool = async (layer: Layer.Layer<ModelPool, unknown>) => {
  const runtime = ManagedRuntime.make(layer)
  const pool = await runtime.runPromise(ModelPool)
  return { runtime, pool, dispose: () => runtime.dispose() }
}
