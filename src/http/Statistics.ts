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
 * Statistics are per model name (the engine's telemetry carries no version), reported for the
 * model's default version.
 *
 * @module Statistics
 */
import { Context, Effect, Layer } from "effect"
import * as InferenceError from "../InferenceError.ts"
import type * as ModelPool from "../ModelPool.ts"
import * as ModelRepository from "../ModelRepository.ts"
import { TelemetryCollector } from "../Telemetry.ts"

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
  /** Batch size (rows of the run) → runs of that size. */
  readonly batches: Map<number, Duration>
}

export interface Service {
  /** The statistics of `model`, or undefined before its first request. */
  readonly get: (model: string) => ModelStatistics | undefined
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
  batches: new Map()
})

const zero = { count: 0, ns: 0 } as const

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
      cache_hit: zero,
      cache_miss: zero
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
 * The statistics of every model (`name` undefined: each model's default version, the highest),
 * or of one model (its default version unless `version` is given; versions compare as numbers,
 * "01" is "1", as `ModelRepository.lookup` finds them). ModelNotFound for a model or version the
 * pool does not have.
 */
export const report = (
  pool: ModelPool.Service,
  statistics: Service,
  name: string | undefined,
  version: string | undefined
): Effect.Effect<Array<ReturnType<typeof toTriton>>, InferenceError.ModelNotFound> =>
  Effect.flatMap(pool.models, (models) => {
    if (name === undefined) {
      const defaults = new Map<string, string>()
      for (const m of models) {
        const seen = defaults.get(m.name)
        if (seen === undefined || Number(m.version) > Number(seen)) defaults.set(m.name, m.version)
      }
      return Effect.succeed([...defaults].map(([model, v]) => toTriton(model, v, statistics.get(model))))
    }
    const versions = models.filter((m) => m.name === name)
    const chosen = version === undefined
      ? versions.map((m) => m.version).sort((a, b) => Number(b) - Number(a))[0]
      : versions.find((m) => ModelRepository.sameVersion(m.version, version))?.version
    if (chosen === undefined) return Effect.fail(new InferenceError.ModelNotFound(version === undefined ? { modelId: name } : { modelId: name, version }))
    return Effect.succeed([toTriton(name, chosen, statistics.get(name))])
  })

export class Statistics extends Context.Service<Statistics, Service>()("effect-onnx/http/Statistics") {
  /**
   * Statistics, and a TelemetryCollector that feeds them and forwards to the one it is given.
   * Provide the engine with the collector of this layer.
   */
  static readonly layer: Layer.Layer<Statistics | TelemetryCollector, never, TelemetryCollector> = Layer.effectContext(
    Effect.gen(function*() {
      const inner = yield* TelemetryCollector
      const byModel = new Map<string, ModelStatistics>()
      const of = (model: string) => {
        let s = byModel.get(model)
        if (s === undefined) {
          s = empty()
          byModel.set(model, s)
        }
        return s
      }
      const add = (d: Duration, count: number, ms: number) => {
        d.count += count
        d.ns += nsOf(ms) * count
      }
      const failed = (model: string, ms: number): void => add(of(model).fail, 1, ms)
      // Record points are synchronous (the engine's hot path): each updates the statistics, then the inner collector.
      const collector = TelemetryCollector.of({
        recordStart: inner.recordStart,
        recordSuccess: (info, latencyMs) => {
          const s = of(info.modelId)
          add(s.success, 1, latencyMs)
          s.lastInferenceMs = Date.now()
          inner.recordSuccess(info, latencyMs)
        },
        recordFailure: (info, error, elapsedMs) => {
          failed(info.modelId, elapsedMs)
          inner.recordFailure(info, error, elapsedMs)
        },
        recordCancelled: (info, elapsedMs) => {
          failed(info.modelId, elapsedMs)
          inner.recordCancelled(info, elapsedMs)
        },
        recordTimeout: (info, elapsedMs) => {
          failed(info.modelId, elapsedMs)
          inner.recordTimeout(info, elapsedMs)
        },
        recordRejected: (info, error) => {
          failed(info.modelId, 0)
          inner.recordRejected(info, error)
        },
        recordQueueWait: (modelId, priority, waitMs) => {
          add(of(modelId).queue, 1, waitMs)
          inner.recordQueueWait(modelId, priority, waitMs)
        },
        recordRun: (modelId, runMs, batchSize, rows) => {
          const s = of(modelId)
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
          inner.recordRun(modelId, runMs, batchSize, rows)
        }
      })
      return Context.make(Statistics, { get: (model) => byModel.get(model) }).pipe(Context.add(TelemetryCollector, collector))
    })
  )
}
