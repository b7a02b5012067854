/**
 * Telemetry as a service. The engine calls these record points; the default layer turns them
 * into Effect Metrics, one family per fact, in base units (seconds), each documented once in
 * docs/server.md:
 *
 * | family | labels | what |
 * |---|---|---|
 * | `inference_requests_started_total` | model, version | requests submitted (admitted or refused) |
 * | `inference_requests_total` | model, version, outcome | requests settled, by `outcome`: success, rejected, cancelled, timeout, invalid, backend (`outcomeOf`); every outcome has a row from the first request to the model version on |
 * | `inference_request_duration_seconds` | model, version | end-to-end latency of successful requests |
 * | `inference_queue_duration_seconds` | model, version, priority | time from admission to dispatch |
 * | `inference_compute_duration_seconds` | model, version | time of one native run (a batch is one run) |
 * | `inference_batch_size` | model, version | requests per native run |
 * | `inference_executions_total` | model, version | native runs |
 * | `inference_count_total` | model, version | inferences run: rows (a request of 64 rows to a model that batches counts 64; one to a model that does not, 1) |
 * | `inference_request_compute_seconds_total` | model, version | native run time counted once per request in the run (Triton's `compute_infer`: a run of n requests adds n times its time) |
 *
 * `version` is the model version a request was admitted to, or ran under, as Triton labels its
 * `nv_inference_*` families (`RequestInfo.version`, the last argument of `recordQueueWait` and
 * `recordRun`); empty where none was chosen (a refusal of a model or version the pool does not have).
 *
 * Tests provide `layerRecording` (this module's) and read its `TelemetryLog`.
 *
 * Every accepted or rejected request is recorded by `recordStart` and then exactly one of
 * success, failure, cancelled, timeout or rejected, so started = the sum over outcomes.
 *
 * Record points are plain synchronous calls, made on the engine's hot path (a request costs a
 * few microseconds in all): an implementation must return at once and should never throw (the
 * engine `guard`s it: a throw loses that fact and logs one warning per record point). One that
 * needs Effects (an exporter, a queue) should buffer and work elsewhere. The engine passes one
 * `RequestInfo` object for a request's start and its outcome (the same object, holding nothing of
 * its inputs), so a collector may pair them by identity. `recordRun` is called
 * once per native run that completed (a batch is one run), with the requests and the rows it
 * held; a failed run is not one (a failed batch's members run again alone, and count then).
 *
 * @module Telemetry
 */
import { Context, Effect, Layer, Metric } from "effect"
import type * as InferenceError from "./InferenceError.ts"
import type * as Priority from "./Priority.ts"

/**
 * The model label of a request for a model (or version) the pool does not have: one series for
 * them all, so that made-up names sent by a library caller cannot add series without bound. No
 * repository name can be it (names start with a letter or digit).
 */
export const unknownModel = "_unknown"

export interface RequestInfo {
  readonly modelId: string
  readonly requestId: string
  readonly priority: Priority.Priority
  /** The model version it was admitted to; absent before one was chosen (its start, a refusal before its model was found). */
  readonly version?: string | undefined
}

export type Outcome = "success" | "failure" | "cancelled" | "timeout" | "rejected"

export interface Service {
  readonly recordStart: (info: RequestInfo) => void
  readonly recordSuccess: (info: RequestInfo, latencyMs: number) => void
  /** Failed after admission: invalid input, run failed, model unavailable. */
  readonly recordFailure: (info: RequestInfo, error: InferenceError.Reason, elapsedMs: number) => void
  readonly recordCancelled: (info: RequestInfo, elapsedMs: number) => void
  /** Deadline exceeded or queue timeout. */
  readonly recordTimeout: (info: RequestInfo, elapsedMs: number) => void
  /** Refused at admission: queue full or shutting down. */
  readonly recordRejected: (info: RequestInfo, error: InferenceError.Reason) => void
  /** Time from admission to dispatch, of a request admitted to `version` of the model. */
  readonly recordQueueWait: (modelId: string, priority: Priority.Priority, waitMs: number, version?: string) => void
  /**
   * One native run of `batchSize` requests holding `rows` inferences (Triton's batch size: the
   * rows of the batch dim of a model that batches, 1 a request for one that does not). A caller
   * that does not say (`rows` undefined) counts each request as one. `version`: the model version that ran.
   */
  readonly recordRun: (modelId: string, runMs: number, batchSize: number, rows?: number, version?: string) => void
  /**
   * A request of a model version that uses the response cache was looked up in it (`ResponseCache`):
   * `hit`, answered from it (its `recordSuccess` follows), or not (it goes on to the queue).
   * `lookupMs`: the lookup's time. Optional: a collector without it counts hits as successes only.
   */
  readonly recordCacheLookup?: ((info: RequestInfo, hit: boolean, lookupMs: number) => void) | undefined
}

/** 50 µs to about 26 s, doubling. */
const latencyBoundariesSeconds = Metric.exponentialBoundaries({ start: 0.00005, factor: 2, count: 20 })

/**
 * How a settled request is counted in `inference_requests_total{outcome}`: `success`; `rejected`
 * (refused at admission: queue full, shutting down); `cancelled` (the caller went away);
 * `timeout` (deadline exceeded, queue timeout); `invalid` (the request's fault: bad input,
 * unknown model or version, or one not loaded under explicit model control: `outcomeOfReason`);
 * `backend` (the server's or model's fault: a failed run, a model that failed to load or is being unloaded).
 */
export type RequestOutcome = "success" | "rejected" | "cancelled" | "timeout" | "invalid" | "backend"

export const requestOutcomes: ReadonlyArray<RequestOutcome> = ["success", "rejected", "cancelled", "timeout", "invalid", "backend"]

/** The outcome of a request that failed with `reason`. */
export const outcomeOf = (reason: InferenceError.ReasonTag): RequestOutcome => {
  switch (reason) {
    case "QueueFull":
    case "ShuttingDown":
      return "rejected"
    case "Cancelled":
      return "cancelled"
    case "DeadlineExceeded":
    case "QueueTimeout":
      return "timeout"
    case "InvalidInput":
    case "ModelNotFound":
      return "invalid"
    case "RunFailed":
    case "ModelUnavailable":
      return "backend"
  }
}

/**
 * A failure's outcome, as `outcomeOf` its tag, except a model version not loaded under explicit
 * model control (`ModelUnavailable.unloaded`): answered as not found, counted `invalid` as an
 * unknown model is, not `backend` (nothing failed in the server).
 */
export const outcomeOfReason = (reason: InferenceError.Reason): RequestOutcome =>
  reason._tag === "ModelUnavailable" && reason.unloaded === true ? "invalid" : outcomeOf(reason._tag)

type Attributes = Readonly<Record<string, string>>

/**
 * A family. `unit` ("seconds") travels as the metric's `unit` attribute, which Effect's OTLP
 * exporter sends as the UCUM unit ("s"; "1", dimensionless, without one) and its Prometheus
 * formatter leaves out of the labels (the name says it there).
 */
type FamilySpec =
  | { readonly type: "Counter"; readonly name: string; readonly description: string; readonly unit?: "seconds" }
  | { readonly type: "Histogram"; readonly name: string; readonly description: string; readonly boundaries: ReadonlyArray<number>; readonly unit?: "seconds" }

const specs = {
  started: { type: "Counter", name: "inference_requests_started_total", description: "Requests submitted (admitted or refused), by model version" },
  requests: { type: "Counter", name: "inference_requests_total", description: "Requests settled, by model version and outcome: success, rejected, cancelled, timeout, invalid, backend" },
  latency: { type: "Histogram", name: "inference_request_duration_seconds", description: "End-to-end latency of successful requests, admission to answer (seconds)", boundaries: latencyBoundariesSeconds, unit: "seconds" },
  queueWait: { type: "Histogram", name: "inference_queue_duration_seconds", description: "Time from admission to dispatch (seconds)", boundaries: latencyBoundariesSeconds, unit: "seconds" },
  run: { type: "Histogram", name: "inference_compute_duration_seconds", description: "Time of one native run, a batch being one run (seconds)", boundaries: latencyBoundariesSeconds, unit: "seconds" },
  batchSize: { type: "Histogram", name: "inference_batch_size", description: "Requests per native run", boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 9 }) },
  executions: { type: "Counter", name: "inference_executions_total", description: "Native runs, by model version" },
  inferences: { type: "Counter", name: "inference_count_total", description: "Inferences run, by model version: rows of the batch dim (a request of 64 rows counts 64), 1 a request for a model that does not batch" },
  requestCompute: { type: "Counter", name: "inference_request_compute_seconds_total", description: "Native run time counted once per request in the run, as Triton's compute_infer (a run of n requests adds n times its time; seconds)", unit: "seconds" },
  cacheHits: { type: "Counter", name: "inference_cache_hits_total", description: "Requests answered from the response cache, by model version (models with responseCache only)" },
  cacheMisses: { type: "Counter", name: "inference_cache_misses_total", description: "Requests looked up in the response cache and not found there, by model version (models with responseCache only)" }
} as const satisfies Record<string, FamilySpec>

type Family = keyof typeof specs

const familyOf = <F extends Family>(family: F) => (attributes?: Attributes): (typeof specs)[F]["type"] extends "Counter" ? Metric.Counter<number> : Metric.Histogram<number> => {
  const spec: FamilySpec = specs[family]
  // First, as `Metric.withAttributes(family(), labels)` orders it: one series either way.
  const withUnit = spec.unit === undefined ? attributes : { unit: spec.unit, ...attributes }
  return (spec.type === "Counter"
    ? Metric.counter(spec.name, { description: spec.description, attributes: withUnit, incremental: true })
    : Metric.histogram(spec.name, { description: spec.description, boundaries: spec.boundaries, attributes: withUnit })) as never
}

/**
 * Each family as a function of its labels. `family(labels)` is a metric bound to one series (the
 * same series as `Metric.withAttributes(family(), labels)`).
 */
export const families = {
  started: familyOf("started"),
  requests: familyOf("requests"),
  latency: familyOf("latency"),
  queueWait: familyOf("queueWait"),
  run: familyOf("run"),
  batchSize: familyOf("batchSize"),
  executions: familyOf("executions"),
  inferences: familyOf("inferences"),
  requestCompute: familyOf("requestCompute"),
  cacheHits: familyOf("cacheHits"),
  cacheMisses: familyOf("cacheMisses")
} as const

/** One series the default layer records into: a plain update, no context or registry lookup. */
interface Series {
  readonly update: (value: number) => void
}

interface SeriesState {
  readonly update: (value: number) => void
  readonly get: () => unknown
}

const counterState = (): SeriesState => {
  let count = 0
  return {
    update: (value) => {
      count += value
    },
    // Monotonic: only counts and durations go in (OTLP exports it as a monotonic sum, a counter).
    get: () => ({ count, incremental: true })
  }
}

/** The same buckets, count, sum, min and max as Effect's own histogram, read the same way. */
const histogramState = (boundaries: ReadonlyArray<number>): SeriesState => {
  const bounds = Float64Array.from(boundaries).sort()
  const size = bounds.length
  const values = new Uint32Array(size + 1)
  let count = 0
  let sum = 0
  let min = Number.MAX_VALUE
  let max = -Number.MAX_VALUE
  return {
    update: (value) => {
      // the first boundary at or above the value; past the last, the overflow bucket
      let from = 0
      let to = size
      while (from < to) {
        const mid = (from + to) >>> 1
        if (value <= bounds[mid]!) to = mid
        else from = mid + 1
      }
      values[from]!++
      count++
      sum += value
      if (value < min) min = value
      if (value > max) max = value
    },
    get: () => {
      const buckets: Array<[number, number]> = new Array(size)
      let cumulated = 0
      for (let i = 0; i < size; i++) {
        cumulated += values[i]!
        buckets[i] = [bounds[i]!, cumulated]
      }
      return { buckets, count, min, max, sum }
    }
  }
}

const noop = () => {}

/**
 * The default layer's series by registry, then by family, labels and the context's metric
 * attributes (`Metric.CurrentMetricAttributes`, part of a series' identity): layers built on one
 * registry with the same attributes record into the same series, as Effect's own `update` would.
 */
const seriesByRegistry = new WeakMap<Metric.MetricRegistry, Map<string, Series>>()

/**
 * The series of `family` with `labels` in the context's registry. Its first update registers it
 * there (`Metric.registerUnsafe`: the registry reads its state when metrics are snapshotted), so a
 * series appears once it has been updated, as with Effect's own `update`. An update is then a plain
 * call: Effect's `updateUnsafe` looks the series up in the context and the registry every time,
 * which cost about 0.4 µs a request on the engine's hot path. The default layer is these series'
 * only writer: updates made through `Metric.update` are ignored, a count someone made into the
 * same series before its registration is replaced, and a series taken out of the registry
 * (`Metric.remove`) is not registered again.
 */
const seriesIn = (context: Context.Context<never>, family: Family, labels: Attributes): Series => {
  const registry = Context.get(context, Metric.MetricRegistry)
  let byKey = seriesByRegistry.get(registry)
  if (byKey === undefined) seriesByRegistry.set(registry, byKey = new Map())
  const key = `${family}${JSON.stringify(labels)}${JSON.stringify(Context.get(context, Metric.CurrentMetricAttributes))}`
  let found = byKey.get(key)
  if (found === undefined) {
    const spec: FamilySpec = specs[family]
    const state = spec.type === "Counter" ? counterState() : histogramState(spec.boundaries)
    let registered = false
    found = {
      update: (value) => {
        if (!registered) {
          registered = true
          Metric.registerUnsafe(families[family](labels) as Metric.Metric<number, unknown>, context, { get: state.get, update: noop, modify: noop })
        }
        state.update(value)
      }
    }
    byKey.set(key, found)
  }
  return found
}

/** The metric families the default layer records (exported for the server's /metrics). */
export const metrics = {
  started: families.started(),
  requests: families.requests(),
  latency: families.latency(),
  queueWait: families.queueWait(),
  run: families.run(),
  batchSize: families.batchSize(),
  executions: families.executions(),
  inferences: families.inferences(),
  requestCompute: families.requestCompute(),
  cacheHits: families.cacheHits(),
  cacheMisses: families.cacheMisses()
} as const

export class TelemetryCollector extends Context.Service<TelemetryCollector, Service>()("effect-onnx/TelemetryCollector") {
  /**
   * Records Effect Metrics, in the metric registry of the context the layer is built in. Each
   * series is resolved once (per family and labels) and updated with a plain synchronous call
   * (`seriesIn`): no Effect runs and no context or registry is looked up per request.
   */
  static readonly layer = Layer.effect(TelemetryCollector, Effect.map(Effect.context<never>(), (context) => {
    /** A model version's series, made on first use; labelled ones (outcome, priority) by label. */
    interface ModelSeries {
      readonly started: Series
      readonly latency: Series
      readonly run: Series
      readonly batchSize: Series
      readonly executions: Series
      readonly inferences: Series
      readonly requestCompute: Series
      readonly cacheHits: Series
      readonly cacheMisses: Series
      readonly outcomes: Map<string, Series>
      readonly queueWait: Map<string, Series>
    }
    const byModel = new Map<string, Map<string, ModelSeries>>()
    const seriesOf = (model: string, version = ""): ModelSeries => {
      let versions = byModel.get(model)
      if (versions === undefined) byModel.set(model, versions = new Map())
      let found = versions.get(version)
      if (found === undefined) {
        const labels = { model, version }
        found = {
          started: seriesIn(context, "started", labels),
          latency: seriesIn(context, "latency", labels),
          run: seriesIn(context, "run", labels),
          batchSize: seriesIn(context, "batchSize", labels),
          executions: seriesIn(context, "executions", labels),
          inferences: seriesIn(context, "inferences", labels),
          requestCompute: seriesIn(context, "requestCompute", labels),
          cacheHits: seriesIn(context, "cacheHits", labels),
          cacheMisses: seriesIn(context, "cacheMisses", labels),
          outcomes: new Map(),
          queueWait: new Map()
        }
        versions.set(version, found)
      }
      return found
    }
    const labelled = (map: Map<string, Series>, family: Family, model: string, version: string, name: string, value: string): Series => {
      let found = map.get(value)
      if (found === undefined) {
        found = seriesIn(context, family, { model, version, [name]: value })
        map.set(value, found)
      }
      return found
    }
    const settle = (info: RequestInfo, outcome: RequestOutcome) =>
      labelled(seriesOf(info.modelId, info.version).outcomes, "requests", info.modelId, info.version ?? "", "outcome", outcome).update(1)
    const start = (info: RequestInfo) => {
      const version = info.version ?? ""
      const fresh = byModel.get(info.modelId)?.has(version) !== true
      const series = seriesOf(info.modelId, version)
      // Every outcome gets its row (at 0) with the model version's first request: a dashboard's
      // rate() of a failure that never happened is 0, not "no data".
      if (fresh) for (const outcome of requestOutcomes) labelled(series.outcomes, "requests", info.modelId, version, "outcome", outcome).update(0)
      series.started.update(1)
    }
    return TelemetryCollector.of({
      recordStart: start,
      recordSuccess: (info, latencyMs) => {
        settle(info, "success")
        seriesOf(info.modelId, info.version).latency.update(latencyMs / 1000)
      },
      recordFailure: (info, error) => settle(info, outcomeOfReason(error)),
      recordCancelled: (info) => settle(info, "cancelled"),
      recordTimeout: (info) => settle(info, "timeout"),
      recordRejected: (info) => settle(info, "rejected"),
      recordQueueWait: (modelId, priority, waitMs, version = "") =>
        labelled(seriesOf(modelId, version).queueWait, "queueWait", modelId, version, "priority", priority).update(waitMs / 1000),
      recordRun: (modelId, runMs, batchSize, rows, version) => {
        const series = seriesOf(modelId, version)
        series.run.update(runMs / 1000)
        series.batchSize.update(batchSize)
        series.executions.update(1)
        series.inferences.update(rows ?? batchSize)
        series.requestCompute.update((runMs / 1000) * batchSize)
      },
      recordCacheLookup: (info, hit) => {
        const series = seriesOf(info.modelId, info.version)
        // both at once, so a model version that uses the cache shows both series from its first lookup
        series.cacheHits.update(hit ? 1 : 0)
        series.cacheMisses.update(hit ? 0 : 1)
      }
    })
  }))

  /** Records nothing. */
  static readonly layerNoop = Layer.succeed(TelemetryCollector, {
    recordStart: () => {},
    recordSuccess: () => {},
    recordFailure: () => {},
    recordCancelled: () => {},
    recordTimeout: () => {},
    recordRejected: () => {},
    recordQueueWait: () => {},
    recordRun: () => {}
  })
}

/**
 * The same record points, each made safe: one that throws loses its fact, and `onThrow` is told,
 * instead of the exception reaching the engine, where it left a request unanswered or ended the
 * process. The engine guards the collector it is given, whoever wrote it.
 */
export const guard = (service: Service, onThrow: (recordPoint: keyof Service, error: unknown) => void): Service => ({
  recordStart: (info) => {
    try {
      service.recordStart(info)
    } catch (e) {
      onThrow("recordStart", e)
    }
  },
  recordSuccess: (info, latencyMs) => {
    try {
      service.recordSuccess(info, latencyMs)
    } catch (e) {
      onThrow("recordSuccess", e)
    }
  },
  recordFailure: (info, error, elapsedMs) => {
    try {
      service.recordFailure(info, error, elapsedMs)
    } catch (e) {
      onThrow("recordFailure", e)
    }
  },
  recordCancelled: (info, elapsedMs) => {
    try {
      service.recordCancelled(info, elapsedMs)
    } catch (e) {
      onThrow("recordCancelled", e)
    }
  },
  recordTimeout: (info, elapsedMs) => {
    try {
      service.recordTimeout(info, elapsedMs)
    } catch (e) {
      onThrow("recordTimeout", e)
    }
  },
  recordRejected: (info, error) => {
    try {
      service.recordRejected(info, error)
    } catch (e) {
      onThrow("recordRejected", e)
    }
  },
  recordQueueWait: (modelId, priority, waitMs, version) => {
    try {
      service.recordQueueWait(modelId, priority, waitMs, version)
    } catch (e) {
      onThrow("recordQueueWait", e)
    }
  },
  recordRun: (modelId, runMs, batchSize, rows, version) => {
    try {
      service.recordRun(modelId, runMs, batchSize, rows, version)
    } catch (e) {
      onThrow("recordRun", e)
    }
  },
  recordCacheLookup: (info, hit, lookupMs) => {
    try {
      service.recordCacheLookup?.(info, hit, lookupMs)
    } catch (e) {
      onThrow("recordCacheLookup", e)
    }
  }
})

/** One recorded event, as the recording layer keeps it. */
export type Event =
  | { readonly _tag: "start"; readonly requestId: string; readonly modelId: string }
  | { readonly _tag: Exclude<Outcome, "failure" | "rejected">; readonly requestId: string; readonly modelId: string }
  | { readonly _tag: "failure" | "rejected"; readonly requestId: string; readonly modelId: string; readonly reason: InferenceError.ReasonTag }
  | { readonly _tag: "queueWait"; readonly modelId: string; readonly priority: Priority.Priority; readonly waitMs: number }
  | { readonly _tag: "run"; readonly modelId: string; readonly runMs: number; readonly batchSize: number; readonly rows?: number | undefined }
  | { readonly _tag: "cacheLookup"; readonly requestId: string; readonly modelId: string; readonly hit: boolean }

/** An in-memory log of every record call, for tests and examples. */
export class TelemetryLog extends Context.Service<TelemetryLog, { readonly events: ReadonlyArray<Event> }>()("effect-onnx/TelemetryLog") {}

/** Provides both TelemetryCollector and the TelemetryLog it appends to. */
export const layerRecording: Layer.Layer<TelemetryCollector | TelemetryLog> = Layer.effectContext(Effect.sync(() => {
  const events: Array<Event> = []
  const push = (event: Event): void => void events.push(event)
  return Context.make(TelemetryLog, { events }).pipe(Context.add(TelemetryCollector, {
    recordStart: (i) => push({ _tag: "start", requestId: i.requestId, modelId: i.modelId }),
    recordSuccess: (i) => push({ _tag: "success", requestId: i.requestId, modelId: i.modelId }),
    recordFailure: (i, e) => push({ _tag: "failure", requestId: i.requestId, modelId: i.modelId, reason: e._tag }),
    recordCancelled: (i) => push({ _tag: "cancelled", requestId: i.requestId, modelId: i.modelId }),
    recordTimeout: (i) => push({ _tag: "timeout", requestId: i.requestId, modelId: i.modelId }),
    recordRejected: (i, e) => push({ _tag: "rejected", requestId: i.requestId, modelId: i.modelId, reason: e._tag }),
    recordQueueWait: (modelId, priority, waitMs) => push({ _tag: "queueWait", modelId, priority, waitMs }),
    recordRun: (modelId, runMs, batchSize, rows) => push(rows === undefined ? { _tag: "run", modelId, runMs, batchSize } : { _tag: "run", modelId, runMs, batchSize, rows }),
    recordCacheLookup: (i, hit) => push({ _tag: "cacheLookup", requestId: i.requestId, modelId: i.modelId, hit })
  }))
}))
