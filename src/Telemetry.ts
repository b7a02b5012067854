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

export class TelemetryCollector extends Context.Service<TelemetryCollector, Service>()("effect-inference/TelemetryCollector") {
  /** Records Effect Metrics. */
  static readonly layer = Layer.sync(TelemetryCollector, () => {
    const count = (outcome: Outcome, modelId: string) =>
      Metric.update(Metric.withAttributes(metrics.requests, { model: modelId, outcome }), 1)
    const fail = (modelId: string, reason: string) =>
      Metric.update(Metric.withAttributes(metrics.failures, { model: modelId, reason }), 1)
    return TelemetryCollector.of({
      recordStart: (info) => Metric.update(Metric.withAttributes(metrics.started, { model: info.modelId }), 1),
      recordSuccess: (info, latencyMs) =>
        Effect.andThen(count("success", info.modelId), Metric.update(Metric.withAttributes(metrics.latency, { model: info.modelId }), latencyMs)),
      recordFailure: (info, error) => Effect.andThen(count("failure", info.modelId), fail(info.modelId, error._tag)),
      recordCancelled: (info) => count("cancelled", info.modelId),
      recordTimeout: (info) => count("timeout", info.modelId),
      recordRejected: (info, error) => Effect.andThen(count("rejected", info.modelId), fail(info.modelId, error._tag)),
      recordQueueWait: (modelId, priority, waitMs) =>
        Metric.update(Metric.withAttributes(metrics.queueWait, { model: modelId, priority }), waitMs),
      recordRun: (modelId, runMs, batchSize) =>
        Effect.all([
          Metric.update(Metric.withAttributes(metrics.run, { model: modelId }), runMs),
          Metric.update(Metric.withAttributes(metrics.batchSize, { model: modelId }), batchSize),
          Metric.update(Metric.withAttributes(metrics.executions, { model: modelId }), 1),
          Metric.update(Metric.withAttributes(metrics.inferences, { model: modelId }), batchSize)
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
export class TelemetryLog extends Context.Service<TelemetryLog, { readonly events: ReadonlyArray<Event> }>()("effect-inference/TelemetryLog") {}

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
