/**
 * Triton's statistics extension: per-model counts and cumulative durations, as
 * `GET /v2/models[/{name}[/versions/{v}]]/stats` and gRPC `ModelStatistics` answer them.
 *
 * One source of truth with `/metrics`: `layer` provides a `TelemetryCollector` that forwards
 * every record call to the collector beneath it (the one that feeds the Prometheus metrics) and
 * accumulates the same events here. The `TelemetryCollector` interface is unchanged.
 *
 * What each field counts (durations in nanoseconds, from the engine's millisecond records):
 * - `success`: requests answered, with their end-to-end latency; `fail`: requests that failed,
 *   timed out, were cancelled or refused, with the time they had spent (0 when refused).
 * - `queue`: time from admission to dispatch, per request.
 * - `compute_infer`: per request, the time of the native run it was part of; `compute_input`
 *   and `compute_output` count the same requests with 0 ns, since the copies in and out of the
 *   session are inside that run's time here.
 * - `inference_count`: inferences run, in rows as Triton counts them (a request of 64 rows to a
 *   model that batches counts 64; one to a model that does not, 1), `execution_count`: native
 *   runs, `last_inference`: when the last request was answered (ms since the epoch).
 * - `batch_stats`: per batch size (the rows of the run), the runs of that size and their time.
 * - `cache_hit` and `cache_miss`: lookups in the response cache, with their time (a hit is also a
 *   `success`, with its latency; it ran nothing, so `inference_count` and the compute figures do
 *   not count it).
 * Statistics are per model version, the one a request was admitted to (`RequestInfo.version`)
 * and the one that ran; a request refused before admission counts under the version it named, or
 * the one it would have gone to (the engine looks it up at the refusal, so counts never move).
 *
 * @module Statistics
 */
import { Context, Effect, Layer } from "effect"
import * as InferenceError from "../InferenceError.ts"
import * as ModelPool from "../ModelPool.ts"
import * as ModelRepository from "../ModelRepository.ts"
import { type RequestInfo, TelemetryCollector } from "../Telemetry.ts"

export interface Duration {
  count: number
  ns: number
}

export interface ModelStatistics {
  inferenceCount: number
  executionCount: number
  /** ms since the epoch; 0 before the first answer. */
  lastInferenceMs: number
  readonly success: Duration
  readonly fail: Duration
  readonly queue: Duration
  readonly computeInfer: Duration
  /** Response cache lookups that found the request (Triton's `cache_hit`), with the lookups' time. */
  readonly cacheHit: Duration
  /** Response cache lookups that did not (`cache_miss`), with the lookups' time. */
  readonly cacheMiss: Duration
  /** Batch size (rows of the run) → runs of that size. */
  readonly batches: Map<number, Duration>
}

export interface Service {
  /**
   * The statistics of `version` of `model`, or undefined before its first request; `version`
   * undefined: of the requests refused before a version was chosen.
   */
  readonly get: (model: string, version?: string) => ModelStatistics | undefined
}

const nsOf = (ms: number) => Math.max(0, Math.round(ms * 1e6))

const empty = (): ModelStatistics => ({
  inferenceCount: 0,
  executionCount: 0,
  lastInferenceMs: 0,
  success: { count: 0, ns: 0 },
  fail: { count: 0, ns: 0 },
  queue: { count: 0, ns: 0 },
  computeInfer: { count: 0, ns: 0 },
  cacheHit: { count: 0, ns: 0 },
  cacheMiss: { count: 0, ns: 0 },
  batches: new Map()
})

const zero = { count: 0, ns: 0 } as const

/** `a` and `b` added up (either may be undefined). */
const merged = (a: ModelStatistics | undefined, b: ModelStatistics | undefined): ModelStatistics | undefined => {
  if (a === undefined || b === undefined) return a ?? b
  const sum = (x: Duration, y: Duration) => ({ count: x.count + y.count, ns: x.ns + y.ns })
  const batches = new Map(a.batches)
  for (const [size, d] of b.batches) batches.set(size, sum(batches.get(size) ?? zero, d))
  return {
    inferenceCount: a.inferenceCount + b.inferenceCount,
    executionCount: a.executionCount + b.executionCount,
    lastInferenceMs: Math.max(a.lastInferenceMs, b.lastInferenceMs),
    success: sum(a.success, b.success),
    fail: sum(a.fail, b.fail),
    queue: sum(a.queue, b.queue),
    computeInfer: sum(a.computeInfer, b.computeInfer),
    cacheHit: sum(a.cacheHit, b.cacheHit),
    cacheMiss: sum(a.cacheMiss, b.cacheMiss),
    batches
  }
}

/** A model's statistics in Triton's form (JSON for HTTP, the same object for the gRPC message). */
export const toTriton = (name: string, version: string, stats: ModelStatistics | undefined) => {
  const s = stats ?? empty()
  const dur = (d: Duration) => ({ count: d.count, ns: d.ns })
  const copies = { count: s.computeInfer.count, ns: 0 }
  return {
    name,
    version,
    last_inference: s.lastInferenceMs,
    inference_count: s.inferenceCount,
    execution_count: s.executionCount,
    inference_stats: {
      success: dur(s.success),
      fail: dur(s.fail),
      queue: dur(s.queue),
      compute_input: copies,
      compute_infer: dur(s.computeInfer),
      compute_output: copies,
      cache_hit: dur(s.cacheHit),
      cache_miss: dur(s.cacheMiss)
    },
    // Per-response statistics (Triton's, for models that answer a request more than once) and the
    // memory a load took are not tracked: present, as the extension lists them, and empty.
    response_stats: {},
    batch_stats: [...s.batches.entries()].sort(([a], [b]) => a - b).map(([size, d]) => ({
      batch_size: size,
      compute_input: { count: d.count, ns: 0 },
      compute_infer: dur(d),
      compute_output: { count: d.count, ns: 0 }
    })),
    memory_usage: []
  }
}

/**
 * The statistics of every model version the pool lists (`name` undefined), of every version of one
 * model (`version` undefined, as Triton answers), or of one version (versions compare as numbers,
 * "01" is "1", as `ModelRepository.lookup` finds them). ModelNotFound for a model or version the
 * pool does not have. What was recorded without a version (a pool that could not say which one a
 * refused request would have gone to) shows under the model's highest READY version.
 */
export const report = (
  pool: ModelPool.Service,
  statistics: Service,
  name: string | undefined,
  version: string | undefined
): Effect.Effect<Array<ReturnType<typeof toTriton>>, InferenceError.ModelNotFound> =>
  Effect.flatMap(pool.models, (models) => {
    const unversionedOn = new Map<string, { readonly version: string; readonly ready: boolean }>()
    for (const m of models) {
      const seen = unversionedOn.get(m.name)
      const ready = ModelPool.runs(m)
      if (seen === undefined || (ready && !seen.ready) || (ready === seen.ready && Number(m.version) > Number(seen.version))) unversionedOn.set(m.name, { version: m.version, ready })
    }
    const of = (model: string, v: string) =>
      toTriton(model, v, unversionedOn.get(model)?.version === v ? merged(statistics.get(model, v), statistics.get(model)) : statistics.get(model, v))
    const chosen = models.filter((m) => (name === undefined || m.name === name) && (version === undefined || ModelRepository.sameVersion(m.version, version)))
    if (name !== undefined && chosen.length === 0) {
      return Effect.fail(new InferenceError.ModelNotFound(version === undefined ? { modelId: name } : { modelId: name, version }))
    }
    return Effect.succeed(chosen.map((m) => of(m.name, m.version)))
  })

export class Statistics extends Context.Service<Statistics, Service>()("effect-onnx/http/Statistics") {
  /**
   * Statistics, and a TelemetryCollector that feeds them and forwards to the one it is given.
   * Provide the engine with the collector of this layer.
   */
  static readonly layer: Layer.Layer<Statistics | TelemetryCollector, never, TelemetryCollector> = Layer.effectContext(
    Effect.gen(function*() {
      const inner = yield* TelemetryCollector
      // By model, then version ("" for the requests refused before a version was chosen).
      const byModel = new Map<string, Map<string, ModelStatistics>>()
      const of = (model: string, version: string | undefined) => {
        let versions = byModel.get(model)
        if (versions === undefined) byModel.set(model, versions = new Map())
        let s = versions.get(version ?? "")
        if (s === undefined) versions.set(version ?? "", s = empty())
        return s
      }
      const add = (d: Duration, count: number, ms: number) => {
        d.count += count
        d.ns += nsOf(ms) * count
      }
      const failed = (info: RequestInfo, ms: number): void => add(of(info.modelId, info.version).fail, 1, ms)
      // Record points are synchronous (the engine's hot path): each updates the statistics, then the inner collector.
      const collector = TelemetryCollector.of({
        recordStart: inner.recordStart,
        recordSuccess: (info, latencyMs) => {
          const s = of(info.modelId, info.version)
          add(s.success, 1, latencyMs)
          s.lastInferenceMs = Date.now()
          inner.recordSuccess(info, latencyMs)
        },
        recordFailure: (info, error, elapsedMs) => {
          failed(info, elapsedMs)
          inner.recordFailure(info, error, elapsedMs)
        },
        recordCancelled: (info, elapsedMs) => {
          failed(info, elapsedMs)
          inner.recordCancelled(info, elapsedMs)
        },
        recordTimeout: (info, elapsedMs) => {
          failed(info, elapsedMs)
          inner.recordTimeout(info, elapsedMs)
        },
        recordRejected: (info, error) => {
          failed(info, 0)
          inner.recordRejected(info, error)
        },
        recordQueueWait: (modelId, priority, waitMs, version) => {
          add(of(modelId, version).queue, 1, waitMs)
          inner.recordQueueWait(modelId, priority, waitMs, version)
        },
        recordRun: (modelId, runMs, batchSize, rows, version) => {
          const s = of(modelId, version)
          const size = rows ?? batchSize
          s.executionCount += 1
          s.inferenceCount += size
          add(s.computeInfer, batchSize, runMs)
          let batch = s.batches.get(size)
          if (batch === undefined) {
            batch = { count: 0, ns: 0 }
            s.batches.set(size, batch)
          }
          add(batch, 1, runMs)
          inner.recordRun(modelId, runMs, batchSize, rows, version)
        },
        recordCacheLookup: (info, hit, lookupMs) => {
          const s = of(info.modelId, info.version)
          add(hit ? s.cacheHit : s.cacheMiss, 1, lookupMs)
          inner.recordCacheLookup?.(info, hit, lookupMs)
        }
      })
      return Context.make(Statistics, { get: (model, version) => byModel.get(model)?.get(version ?? "") }).pipe(Context.add(TelemetryCollector, collector))
    })
  )
}
