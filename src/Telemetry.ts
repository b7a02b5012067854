/**
 * Telemetry as a service. The engine calls these record points; the default layer turns them
 * into Effect Metrics, one family per fact, in base units (seconds), each documented once in
 * docs/server.md:
 *
 * | family | labels | what |
 * |---|---|---|
 * | `inference_requests_started_total` | model | requests submitted (admitted or refused) |
 * | `inference_requests_total` | model, outcome | requests settled, by `outcome`: success, rejected, cancelled, timeout, invalid, backend (`outcomeOf`); every outcome has a row from the model's first request on |
 * | `inference_request_duration_seconds` | model | end-to-end latency of successful requests |
 * | `inference_queue_duration_seconds` | model, priority | time from admission to dispatch |
 * | `inference_compute_duration_seconds` | model | time of one native run (a batch is one run) |
 * | `inference_batch_size` | model | requests per native run |
 * | `inference_executions_total` | model | native runs |
 * | `inference_count_total` | model | inferences run: rows (a request of 64 rows to a model that batches counts 64; one to a model that does not, 1) |
 *
 * Tests provide `TelemetryCollector.layerRecording` and read its log.
 *
 * Every accepted or rejected request is recorded by `recordStart` and then exactly one of
 * success, failure, cancelled, timeout or rejected, so started = the sum over outcomes.
 *
 * Record points are plain synchronous calls, made on the engine's hot path (a request costs a
 * few microseconds in all): an implementation must return at once and should never throw (the
 * engine `guard`s it: a throw loses that fact and logs one warning per record point). One that
 * needs Effects (an exporter, a queue) should buffer and work elsewhere. `recordRun` is called
 * once per native run (a batch is one run), with the requests and the rows it held.
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
  /** Time from admission to dispatch. */
  readonly recordQueueWait: (modelId: string, priority: Priority.Priority, waitMs: number) => void
  /**
   * One native run of `batchSize` requests holding `rows` inferences (Triton's batch size: the
   * rows of the batch dim of a model that batches, 1 a request for one that does not). A caller
   * that does not say (`rows` undefined) counts each request as one.
   */
  readonly recordRun: (modelId: string, runMs: number, batchSize: number, rows?: number) => void
}

/** 50 µs to about 26 s, doubling. */
const latencyBoundariesSeconds = Metric.exponentialBoundaries({ start: 0.00005, factor: 2, count: 20 })

/**
 * How a settled request is counted in `inference_requests_total{outcome}`: `success`; `rejected`
 * (refused at admission: queue full, shutting down); `cancelled` (the caller went away);
 * `timeout` (deadline exceeded, queue timeout); `invalid` (the request's fault: bad input,
 * unknown model or version); `backend` (the server's or model's fault: a failed run, an
 * unavailable model).
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

type Attributes = Readonly<Record<string, string>>

const counter = (name: string, description: string) => (attributes?: Attributes) => Metric.counter(name, { description, attributes })
const histogram = (name: string, description: string, boundaries: ReadonlyArray<number>) => (attributes?: Attributes) =>
  Metric.histogram(name, { description, boundaries, attributes })

/**
 * Each family as a function of its labels. `family(labels)` is a metric bound to one series (the
 * same series as `Metric.withAttributes(family(), labels)`), so an update is a map lookup instead
 * of a context built per update.
 */
export const families = {
  started: counter("inference_requests_started_total", "Requests submitted (admitted or refused), by model"),
  requests: counter("inference_requests_total", "Requests settled, by model and outcome: success, rejected, cancelled, timeout, invalid, backend"),
  latency: histogram("inference_request_duration_seconds", "End-to-end latency of successful requests, admission to answer (seconds)", latencyBoundariesSeconds),
  queueWait: histogram("inference_queue_duration_seconds", "Time from admission to dispatch (seconds)", latencyBoundariesSeconds),
  run: histogram("inference_compute_duration_seconds", "Time of one native run, a batch being one run (seconds)", latencyBoundariesSeconds),
  batchSize: histogram("inference_batch_size", "Requests per native run", Metric.exponentialBoundaries({ start: 1, factor: 2, count: 9 })),
  executions: counter("inference_executions_total", "Native runs, by model"),
  inferences: counter("inference_count_total", "Inferences run, by model: rows of the batch dim (a request of 64 rows counts 64), 1 a request for a model that does not batch")
} as const

type Family = keyof typeof families

/** The metric families the default layer records (exported for the server's /metrics). */
export const metrics = {
  started: families.started(),
  requests: families.requests(),
  latency: families.latency(),
  queueWait: families.queueWait(),
  run: families.run(),
  batchSize: families.batchSize(),
  executions: families.executions(),
  inferences: families.inferences()
} as const

export class TelemetryCollector extends Context.Service<TelemetryCollector, Service>()("effect-onnx/TelemetryCollector") {
  /**
   * Records Effect Metrics, in the metric registry of the context the layer is built in. Each
   * series is resolved once (per family and labels) and updated with a synchronous
   * `updateUnsafe`: no Effect runs and no context is built per request.
   */
  static readonly layer = Layer.effect(TelemetryCollector, Effect.map(Effect.context<never>(), (context) => {
    type Series = Metric.Metric<number, unknown>
    /** A model's series, made on first use; labelled ones (outcome, reason, priority) by label. */
    interface ModelSeries {
      readonly started: Series
      readonly latency: Series
      readonly run: Series
      readonly batchSize: Series
      readonly executions: Series
      readonly inferences: Series
      readonly outcomes: Map<string, Series>
      readonly queueWait: Map<string, Series>
    }
    const byModel = new Map<string, ModelSeries>()
    const seriesOf = (model: string): ModelSeries => {
      let found = byModel.get(model)
      if (found === undefined) {
        const labels = { model }
        found = {
          started: families.started(labels),
          latency: families.latency(labels),
          run: families.run(labels),
          batchSize: families.batchSize(labels),
          executions: families.executions(labels),
          inferences: families.inferences(labels),
          outcomes: new Map(),
          queueWait: new Map()
        }
        byModel.set(model, found)
      }
      return found
    }
    const labelled = (map: Map<string, Series>, family: Family, model: string, name: string, value: string): Series => {
      let found = map.get(value)
      if (found === undefined) {
        found = families[family]({ model, [name]: value }) as Series
        map.set(value, found)
      }
      return found
    }
    const settle = (model: string, outcome: RequestOutcome) => labelled(seriesOf(model).outcomes, "requests", model, "outcome", outcome).updateUnsafe(1, context)
    const start = (model: string) => {
      const fresh = !byModel.has(model)
      const series = seriesOf(model)
      // Every outcome gets its row (at 0) with the model's first request: a dashboard's rate() of a
      // failure that never happened is 0, not "no data".
      if (fresh) for (const outcome of requestOutcomes) labelled(series.outcomes, "requests", model, "outcome", outcome).updateUnsafe(0, context)
      series.started.updateUnsafe(1, context)
    }
    return TelemetryCollector.of({
      recordStart: (info) => start(info.modelId),
      recordSuccess: (info, latencyMs) => {
        settle(info.modelId, "success")
        seriesOf(info.modelId).latency.updateUnsafe(latencyMs / 1000, context)
      },
      recordFailure: (info, error) => settle(info.modelId, outcomeOf(error._tag)),
      recordCancelled: (info) => settle(info.modelId, "cancelled"),
      recordTimeout: (info) => settle(info.modelId, "timeout"),
      recordRejected: (info) => settle(info.modelId, "rejected"),
      recordQueueWait: (modelId, priority, waitMs) => labelled(seriesOf(modelId).queueWait, "queueWait", modelId, "priority", priority).updateUnsafe(waitMs / 1000, context),
      recordRun: (modelId, runMs, batchSize, rows) => {
        const series = seriesOf(modelId)
        series.run.updateUnsafe(runMs / 1000, context)
        series.batchSize.updateUnsafe(batchSize, context)
        series.executions.updateUnsafe(1, context)
        series.inferences.updateUnsafe(rows ?? batchSize, context)
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
  recordQueueWait: (modelId, priority, waitMs) => {
    try {
      service.recordQueueWait(modelId, priority, waitMs)
    } catch (e) {
      onThrow("recordQueueWait", e)
    }
  },
  recordRun: (modelId, runMs, batchSize, rows) => {
    try {
      service.recordRun(modelId, runMs, batchSize, rows)
    } catch (e) {
      onThrow("recordRun", e)
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
    recordRun: (modelId, runMs, batchSize, rows) => push(rows === undefined ? { _tag: "run", modelId, runMs, batchSize } : { _tag: "run", modelId, runMs, batchSize, rows })
  }))
}))
