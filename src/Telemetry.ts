/**
 * Telemetry as a service. The engine calls these record points; the default layer turns them
 * into Effect Metrics (counters by model and outcome, histograms of queue wait, run time and
 * end-to-end latency). Tests provide `TelemetryCollector.layerRecording` and read its log.
 *
 * Every accepted or rejected request is recorded by `recordStart` and then exactly one of
 * success, failure, cancelled, timeout or rejected, so started = the sum of the five.
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

const latencyBoundariesMs = Metric.exponentialBoundaries({ start: 0.05, factor: 2, count: 20 })

/** The metric families the default layer records (exported for the server's /metrics). */
export const metrics = {
  requests: Metric.counter("inference_requests_total", { description: "Requests by model and outcome" }),
  started: Metric.counter("inference_requests_started_total", { description: "Requests submitted, by model" }),
  failures: Metric.counter("inference_request_failures_total", { description: "Failed requests by model and reason" }),
  latency: Metric.histogram("inference_request_duration_ms", { description: "End-to-end latency of successful requests (ms)", boundaries: latencyBoundariesMs }),
  queueWait: Metric.histogram("inference_queue_duration_ms", { description: "Time from admission to dispatch (ms)", boundaries: latencyBoundariesMs }),
  run: Metric.histogram("inference_compute_duration_ms", { description: "Time of one native run (ms)", boundaries: latencyBoundariesMs }),
  batchSize: Metric.histogram("inference_batch_size", { description: "Requests per native run", boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 9 }) }),
  executions: Metric.counter("inference_exec_total", { description: "Native runs by model" }),
  inferences: Metric.counter("inference_count_total", { description: "Requests run by model (a batch counts each)" })
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
    return TelemetryCollector.of({
      recordStart: (info) => update(metrics.started, { model: info.modelId }, 1),
      recordSuccess: (info, latencyMs) =>
        Effect.andThen(update(metrics.requests, { model: info.modelId, outcome: "success" }, 1), update(metrics.latency, { model: info.modelId }, latencyMs)),
      recordFailure: (info, error) =>
        Effect.andThen(update(metrics.requests, { model: info.modelId, outcome: "failure" }, 1), update(metrics.failures, { model: info.modelId, reason: error._tag }, 1)),
      recordCancelled: (info) => update(metrics.requests, { model: info.modelId, outcome: "cancelled" }, 1),
      recordTimeout: (info) => update(metrics.requests, { model: info.modelId, outcome: "timeout" }, 1),
      recordRejected: (info, error) =>
        Effect.andThen(update(metrics.requests, { model: info.modelId, outcome: "rejected" }, 1), update(metrics.failures, { model: info.modelId, reason: error._tag }, 1)),
      recordQueueWait: (modelId, priority, waitMs) => update(metrics.queueWait, { model: modelId, priority }, waitMs),
      recordRun: (modelId, runMs, batchSize) =>
        Effect.all([
          update(metrics.run, { model: modelId }, runMs),
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
