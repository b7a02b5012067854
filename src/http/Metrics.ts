/**
 * The `/metrics` page: Prometheus text exposition of the engine's Effect Metrics (rendered by
 * `PrometheusMetrics`), plus families in the spirit of Triton's that are computed at scrape time:
 *
 * - `inference_request_success_total{model}` and
 *   `inference_request_failure_total{model,reason}` with reason one of `rejected` (queue full,
 *   shutting down), `cancelled` (client gone), `timeout` (deadline or queue timeout), `invalid`
 *   (bad input) and `backend` (run failed, model unavailable). Both are derived from the
 *   engine's `inference_requests_total{outcome}` and `inference_request_failures_total{reason}`,
 *   so there is one source of truth.
 * - `inference_pending_requests{model,priority}`: requests queued now, by model and priority
 *   level (a gauge read from `queueStatsByModel`), and `inference_unsettled_requests`: admitted and not yet answered
 *   (queued, forming a batch or running).
 *
 * Inference count and execution count (`inference_count_total`, `inference_exec_total`) and the
 * queue, compute and end-to-end durations (`inference_*_duration_ms` histograms) come from the
 * engine's own families, labelled by model.
 *
 * @module Metrics
 */
import { Effect, Metric } from "effect"
import { PrometheusMetrics } from "effect/observability"
import type { AsyncInferenceEngine } from "../Engine.ts"
import * as Priority from "../Priority.ts"
import { metrics } from "../Telemetry.ts"

/** The content type of the Prometheus text format. */
export const contentType = "text/plain; version=0.0.4; charset=utf-8"

export type FailureKind = "rejected" | "cancelled" | "timeout" | "invalid" | "backend"

export const failureKinds: ReadonlyArray<FailureKind> = ["rejected", "cancelled", "timeout", "invalid", "backend"]

const pendingGauge = Metric.gauge("inference_pending_requests", { description: "Requests queued now, by model and priority" })
const unsettledGauge = Metric.gauge("inference_unsettled_requests", {
  description: "Requests admitted and not yet answered: queued, forming a batch or running"
})

const escapeLabel = (value: string) => value.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")

/** Success and failure-by-kind counts per model, from a metrics snapshot. */
export const outcomeCounts = (snapshot: ReadonlyArray<Metric.Metric.Snapshot>) => {
  const byModel = new Map<string, { success: number } & Record<FailureKind, number>>()
  const entry = (model: string) => {
    let e = byModel.get(model)
    if (e === undefined) {
      e = { success: 0, rejected: 0, cancelled: 0, timeout: 0, invalid: 0, backend: 0 }
      byModel.set(model, e)
    }
    return e
  }
  const invalid = new Map<string, number>()
  const failed = new Map<string, number>()
  for (const s of snapshot) {
    if (s.type !== "Counter") continue
    const model = s.attributes?.["model"]
    if (model === undefined) continue
    const count = Number((s.state as Metric.CounterState<number>).count)
    if (s.id === metrics.requests.id) {
      const e = entry(model)
      switch (s.attributes?.["outcome"]) {
        case "success":
          e.success += count
          break
        case "rejected":
          e.rejected += count
          break
        case "cancelled":
          e.cancelled += count
          break
        case "timeout":
          e.timeout += count
          break
        case "failure":
          failed.set(model, (failed.get(model) ?? 0) + count)
          break
      }
    } else if (s.id === metrics.failures.id && s.attributes?.["reason"] === "InvalidInput") {
      invalid.set(model, (invalid.get(model) ?? 0) + count)
    }
  }
  for (const [model, n] of failed) {
    const e = entry(model)
    const bad = Math.min(n, invalid.get(model) ?? 0)
    e.invalid += bad
    e.backend += n - bad
  }
  return byModel
}

const renderOutcomes = (snapshot: ReadonlyArray<Metric.Metric.Snapshot>): string => {
  const counts = outcomeCounts(snapshot)
  if (counts.size === 0) return ""
  const lines: Array<string> = [
    "# HELP inference_request_success_total Successful requests by model",
    "# TYPE inference_request_success_total counter"
  ]
  for (const [model, e] of counts) lines.push(`inference_request_success_total{model="${escapeLabel(model)}"} ${e.success}`)
  lines.push(
    "# HELP inference_request_failure_total Failed requests by model and reason (rejected, cancelled, timeout, invalid, backend)",
    "# TYPE inference_request_failure_total counter"
  )
  for (const [model, e] of counts) {
    for (const kind of failureKinds) lines.push(`inference_request_failure_total{model="${escapeLabel(model)}",reason="${kind}"} ${e[kind]}`)
  }
  return lines.join("\n") + "\n"
}

/** Models that had requests queued at an earlier scrape: their gauges go back to 0 when they have none. */
const modelsSeen = new Set<string>()

/** Renders the whole page; needs the engine for the pending gauges. */
export const render = (engine: AsyncInferenceEngine["Service"]): Effect.Effect<string> =>
  Effect.gen(function*() {
    const byModel = yield* engine.queueStatsByModel
    const unsettled = yield* engine.pending
    for (const model of byModel.keys()) modelsSeen.add(model)
    for (const model of modelsSeen) {
      const stats = byModel.get(model)
      const byLevel: Record<Priority.Priority, number> = {
        Critical: stats?.critical ?? 0,
        High: stats?.high ?? 0,
        Normal: stats?.normal ?? 0,
        Low: stats?.low ?? 0
      }
      for (const level of Priority.levels) {
        yield* Metric.update(Metric.withAttributes(pendingGauge, { model, priority: level }), byLevel[level])
      }
    }
    yield* Metric.update(unsettledGauge, unsettled)
    const text = yield* PrometheusMetrics.format()
    const snapshot = yield* Metric.snapshot
    return text + renderOutcomes(snapshot)
  })
