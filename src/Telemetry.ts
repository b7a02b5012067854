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
 * | `inference_count_total` | model | requests run (a batch of n counts n) |
 *
 * Tests provide `TelemetryCollector.layerRecording` and read its log.
 *
 * Every accepted or rejected request is recorded by `recordStart` and then exactly one of
 * success, failure, cancelled, timeout or rejected, so started = the sum over outcomes.
 *
 * @module Telemetry
 */
import { Context, Effect, Layer, Metric } from "effect"
import type * as InferenceError from "./InferenceError.ts"
import type * as Priority from "./Priority.ts"

export interface RequestInfo {
  readonly modelId: string
  readonly requestId: string
  readonly priority: Priority.Priority
}

export type Outcome = "success" | "failure" | "cancelled" | "timeout" | "rejected"

export interface Service {
  readonly recordStart: (info: RequestInfo) => Effect.Effect<void>
  readonly recordSuccess: (info: RequestInfo, latencyMs: number) => Effect.Effect<void>
  /** Failed after admission: invalid input, run failed, model unavailable. */
  readonly recordFailure: (info: RequestInfo, error: InferenceError.Reason, elapsedMs: number) => Effect.Effect<void>
  readonly recordCancelled: (info: RequestInfo, elapsedMs: number) => Effect.Effect<void>
  /** Deadline exceeded or queue timeout. */
  readonly recordTimeout: (info: RequestInfo, elapsedMs: number) => Effect.Effect<void>
  /** Refused at admission: queue full or shutting down. */
  readonly recordRejected: (info: RequestInfo, error: InferenceError.Reason) => Effect.Effect<void>
  /** Time from admission to dispatch. */
  readonly recordQueueWait: (modelId: string, priority: Priority.Priority, waitMs: number) => Effect.Effect<void>
  /** One native run of `batchSize` requests. */
  readonly recordRun: (modelId: string, runMs: number, batchSize: number) => Effect.Effect<void>
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

/** The metric families the default layer records (exported for the server's /metrics). */
export const metrics = {
  started: Metric.counter("inference_requests_started_total", { description: "Requests submitted (admitted or refused), by model" }),
  requests: Metric.counter("inference_requests_total", {
    description: "Requests settled, by model and outcome: success, rejected, cancelled, timeout, invalid, backend"
  }),
  latency: Metric.histogram("inference_request_duration_seconds", {
    description: "End-to-end latency of successful requests, admission to answer (seconds)",
    boundaries: latencyBoundariesSeconds
  }),
  queueWait: Metric.histogram("inference_queue_duration_seconds", { description: "Time from admission to dispatch (seconds)", boundaries: latencyBoundariesSeconds }),
  run: Metric.histogram("inference_compute_duration_seconds", { description: "Time of one native run, a batch being one run (seconds)", boundaries: latencyBoundariesSeconds }),
  batchSize: Metric.histogram("inference_batch_size", { description: "Requests per native run", boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 9 }) }),
  executions: Metric.counter("inference_executions_total", { description: "Native runs, by model" }),
  inferences: Metric.counter("inference_count_total", { description: "Requests run, by model (a batch of n counts n)" })
} as const

export class TelemetryCollector extends Context.Service<TelemetryCollector, Service>()("effect-onnx/TelemetryCollector") {
  /** Records Effect Metrics. */
  static readonly layer = Layer.sync(TelemetryCollector, () => {
    // Labelled metrics are made once per label set, not once per request.
    const cache = new Map<string, Metric.Metric<number, unknown>>()
    const labelled = (metric: Metric.Metric<number, unknown>, attributes: Record<string, string>) => {
      const key = `${metric.id}|${Object.values(attributes).join("|")}`
      let found = cache.get(key)
      if (found === undefined) {
        found = Metric.withAttributes(metric, attributes)
        cache.set(key, found)
      }
      return found
    }
    const update = (metric: Metric.Metric<number, unknown>, attributes: Record<string, string>, value: number) =>
      Metric.update(labelled(metric, attributes), value)
    // Every outcome gets its row (at 0) with the model's first request: a dashboard's rate() of a
    // failure that never happened is 0, not "no data".
    const modelsSeen = new Set<string>()
    const start = (model: string) =>
      modelsSeen.has(model)
        ? update(metrics.started, { model }, 1)
        : Effect.suspend(() => {
          modelsSeen.add(model)
          return Effect.andThen(
            Effect.forEach(requestOutcomes, (outcome) => update(metrics.requests, { model, outcome }, 0), { discard: true }),
            update(metrics.started, { model }, 1)
          )
        })
    const settle = (model: string, outcome: RequestOutcome) => update(metrics.requests, { model, outcome }, 1)
    return TelemetryCollector.of({
      recordStart: (info) => start(info.modelId),
      recordSuccess: (info, latencyMs) =>
        Effect.andThen(settle(info.modelId, "success"), update(metrics.latency, { model: info.modelId }, latencyMs / 1000)),
      recordFailure: (info, error) => settle(info.modelId, outcomeOf(error._tag)),
      recordCancelled: (info) => settle(info.modelId, "cancelled"),
      recordTimeout: (info) => settle(info.modelId, "timeout"),
      recordRejected: (info) => settle(info.modelId, "rejected"),
      recordQueueWait: (modelId, priority, waitMs) => update(metrics.queueWait, { model: modelId, priority }, waitMs / 1000),
      recordRun: (modelId, runMs, batchSize) =>
        Effect.all([
          update(metrics.run, { model: modelId }, runMs / 1000),
          update(metrics.batchSize, { model: modelId }, batchSize),
          update(metrics.executions, { model: modelId }, 1),
          update(metrics.inferences, { model: modelId }, batchSize)
        ], { discard: true })
    })
  })

  /** Records nothing. */
  static readonly layerNoop = Layer.succeed(TelemetryCollector, {
    recordStart: () => Effect.void,
    recordSuccess: () => Effect.void,
    recordFailure: () => Effect.void,
    recordCancelled: () => Effect.void,
    recordTimeout: () => Effect.void,
    recordRejected: () => Effect.void,
    recordQueueWait: () => Effect.void,
    recordRun: () => Effect.void
  })
}

/** One recorded event, as the recording layer keeps it. */
export type Event =
  | { readonly _tag: "start"; readonly requestId: string; readonly modelId: string }
  | { readonly _tag: Exclude<Outcome, "failure" | "rejected">; readonly requestId: string; readonly modelId: string }
  | { readonly _tag: "failure" | "rejected"; readonly requestId: string; readonly modelId: string; readonly reason: InferenceError.ReasonTag }
  | { readonly _tag: "queueWait"; readonly modelId: string; readonly priority: Priority.Priority; readonly waitMs: number }
  | { readonly _tag: "run"; readonly modelId: string; readonly runMs: number; readonly batchSize: number }

/** An in-memory log of every record call, for tests and examples. */
export class TelemetryLog extends Context.Service<TelemetryLog, { readonly events: ReadonlyArray<Event> }>()("effect-onnx/TelemetryLog") {}

/** Provides both TelemetryCollector and the TelemetryLog it appends to. */
export const layerRecording: Layer.Layer<TelemetryCollector | TelemetryLog> = Layer.effectContext(Effect.sync(() => {
  const events: Array<Event> = []
  const push = (event: Event) => Effect.sync(() => void events.push(event))
  return Context.make(TelemetryLog, { events }).pipe(Context.add(TelemetryCollector, {
    recordStart: (i) => push({ _tag: "start", requestId: i.requestId, modelId: i.modelId }),
    recordSuccess: (i) => push({ _tag: "success", requestId: i.requestId, modelId: i.modelId }),
    recordFailure: (i, e) => push({ _tag: "failure", requestId: i.requestId, modelId: i.modelId, reason: e._tag }),
    recordCancelled: (i) => push({ _tag: "cancelled", requestId: i.requestId, modelId: i.modelId }),
    recordTimeout: (i) => push({ _tag: "timeout", requestId: i.requestId, modelId: i.modelId }),
    recordRejected: (i, e) => push({ _tag: "rejected", requestId: i.requestId, modelId: i.modelId, reason: e._tag }),
    recordQueueWait: (modelId, priority, waitMs) => push({ _tag: "queueWait", modelId, priority, waitMs }),
    recordRun: (modelId, runMs, batchSize) => push({ _tag: "run", modelId, runMs, batchSize })
  }))
}))
