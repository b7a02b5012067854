/**
 * Telemetry as a service. The engine calls these record points; the default layer turns them
 * into Effect Metrics (counters by model and outcome, histograms of queue wait, run time and
 * end-to-end latency). Tests provide `TelemetryCollector.layerRecording` and read its log.
 *
 * Every accepted or rejected request is recorded by `recordStart` and then exactly one of
 * success, failure, cancelled, timeout or rejected, so started = the sum of the five.
 *
 * Record points are plain synchronous calls, made on the engine's hot path (a request costs a
 * few microseconds in all): an implementation must return at once and never throw. One that
 * needs Effects (an exporter, a queue) should buffer and work elsewhere. `recordRun` is called
 * once per native run (a batch is one run).
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
  /** One native run of `batchSize` requests. */
  readonly recordRun: (modelId: string, runMs: number, batchSize: number) => void
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
  /**
   * Records Effect Metrics, in the metric registry of the context the layer is built in.
   * Labelled metrics are resolved once per label set, and each update is a synchronous
   * `updateUnsafe`: no Effect runs per request.
   */
  static readonly layer = Layer.effect(TelemetryCollector, Effect.map(Effect.context<never>(), (context) => {
    const cache = new Map<string, Metric.Metric<number, unknown>>()
    const labelled = (metric: Metric.Metric<number, unknown>, a: string, b?: string, c?: string) => {
      const key = `${metric.id}|${a}|${b ?? ""}|${c ?? ""}`
      let found = cache.get(key)
      if (found === undefined) {
        const attributes: Record<string, string> = { model: a }
        if (b !== undefined) attributes[c === undefined ? "outcome" : c] = b
        found = Metric.withAttributes(metric, attributes)
        cache.set(key, found)
      }
      return found
    }
    const add = (metric: Metric.Metric<number, unknown>, value: number, model: string, label?: string, labelName?: string) =>
      labelled(metric, model, label, labelName).updateUnsafe(value, context)
    return TelemetryCollector.of({
      recordStart: (info) => add(metrics.started, 1, info.modelId),
      recordSuccess: (info, latencyMs) => {
        add(metrics.requests, 1, info.modelId, "success")
        add(metrics.latency, latencyMs, info.modelId)
      },
      recordFailure: (info, error) => {
        add(metrics.requests, 1, info.modelId, "failure")
        add(metrics.failures, 1, info.modelId, error._tag, "reason")
      },
      recordCancelled: (info) => add(metrics.requests, 1, info.modelId, "cancelled"),
      recordTimeout: (info) => add(metrics.requests, 1, info.modelId, "timeout"),
      recordRejected: (info, error) => {
        add(metrics.requests, 1, info.modelId, "rejected")
        add(metrics.failures, 1, info.modelId, error._tag, "reason")
      },
      recordQueueWait: (modelId, priority, waitMs) => add(metrics.queueWait, waitMs, modelId, priority, "priority"),
      recordRun: (modelId, runMs, batchSize) => {
        add(metrics.run, runMs, modelId)
        add(metrics.batchSize, batchSize, modelId)
        add(metrics.executions, 1, modelId)
        add(metrics.inferences, batchSize, modelId)
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
  const push = (event: Event): void => void events.push(event)
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
