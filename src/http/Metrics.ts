/**
 * The `/metrics` page, in Prometheus text format: the engine's Effect Metrics (the families of
 * `Telemetry.metrics`, rendered by `PrometheusMetrics`), two gauges read from the engine at
 * scrape time, and the standard process and Node.js families (`ProcessMetrics`). One family per
 * fact, durations in seconds; each family is documented once, in docs/server.md.
 *
 * - `inference_pending_requests{model,priority}`: requests waiting to run now (queued, or sent ahead
 *   to a busy instance: what `maxQueuedRequests` bounds), by model and priority
 *   level (from `queueStatsByModel`); `inference_unsettled_requests`: admitted and not yet
 *   answered (queued, forming a batch or running).
 * - `inference_instance_events_total{event}`: what happened to the pool's instances (crashes,
 *   kills, replacements), from the pool's `counters` where it has them; every event has its row.
 * - `inference_model_loads_total{model,outcome}`: loads after the start (explicit model control or
 *   the repository poller), `success` or `failure`, from the pool's `modelLoads` where it has them
 *   (by model where the pool counts by model, as the ONNX pool does; else `{outcome}` alone).
 * - `inference_cache_bytes`, `inference_cache_capacity_bytes`, `inference_cache_entries` and
 *   `inference_cache_evictions_total`: the response cache as a whole, from the engine's
 *   `responseCache`, where it has one (`RESPONSE_CACHE_BYTES`).
 * - `inference_sequences{model,version}`: sequences of stateful models under way (config.json
 *   `sequenceBatching`), from the engine's `sequences`; a version seen once stays, at 0.
 *
 * With `format: "triton"` the page also carries Triton's names, computed from the same counters
 * (`tritonFamilies`), so that dashboards built for Triton work: `nv_inference_request_success`,
 * `nv_inference_request_failure{reason=REJECTED|CANCELED|BACKEND|OTHER}`, `nv_inference_count`,
 * `nv_inference_exec_count`, `nv_inference_request_duration_us`, `nv_inference_queue_duration_us`,
 * `nv_inference_compute_infer_duration_us` (cumulative microseconds, counters as Triton's) and
 * `nv_inference_pending_request_count`, each labelled `model` and `version` (the version a request
 * was admitted to; empty for the refusals of a version the server does not have); and, for the
 * versions that use the response cache, `nv_cache_num_hits_per_model` and `nv_cache_num_misses_per_model`.
 *
 * @module Metrics
 */
import { Effect, Metric, type Scope } from "effect"
import { PrometheusMetrics } from "effect/observability"
import type { AsyncInferenceEngine } from "../Engine.ts"
import type { InstanceEvents, ModelLoads } from "../ModelPool.ts"
import * as Priority from "../Priority.ts"
import { metrics, type RequestOutcome } from "../Telemetry.ts"
import * as ProcessMetrics from "./ProcessMetrics.ts"

/** The content type of the Prometheus text format. */
export const contentType = "text/plain; version=0.0.4; charset=utf-8"

const pendingGauge = Metric.gauge("inference_pending_requests", { description: "Requests waiting to run now (queued or sent ahead to a busy instance), by model and priority" })
const unsettledGauge = Metric.gauge("inference_unsettled_requests", {
  description: "Requests admitted and not yet answered: queued, forming a batch or running"
})
const instanceEventsCounter = Metric.counter("inference_instance_events_total", {
  incremental: true,
  description: "What happened to the model instances (threads or processes), over every model: crash, deadline_kill, abandon_kill, respawn, respawn_failure"
})

const cacheBytesGauge = Metric.gauge("inference_cache_bytes", { description: "Bytes the response cache holds now, every model together (as its entries count them)" })
const cacheCapacityGauge = Metric.gauge("inference_cache_capacity_bytes", { description: "Bytes the response cache may hold (RESPONSE_CACHE_BYTES)" })
const cacheEntriesGauge = Metric.gauge("inference_cache_entries", { description: "Answers the response cache holds now" })
const cacheEvictionsCounter = Metric.counter("inference_cache_evictions_total", {
  incremental: true,
  description: "Answers the response cache dropped, least recently used first, to make room"
})

/** `inference_sequences{model,version}`, set at each scrape from the engine's `sequences`. */
export const sequencesGauge = Metric.gauge("inference_sequences", {
  description: "Sequences of stateful models under way (config.json sequenceBatching): started, not ended, not idle past maxSequenceIdleMs"
})

const modelLoadsCounter = Metric.counter("inference_model_loads_total", {
  incremental: true,
  description: "Model loads and reloads after the start (explicit model control or the repository poller), by model and outcome: success, failure (what served keeps serving)"
})

const noLoads: ModelLoads = { succeeded: 0, failed: 0 }

/** Each `outcome` label of `inference_model_loads_total`, and the count it reports. */
export const modelLoadLabels: ReadonlyArray<readonly [label: string, key: "succeeded" | "failed"]> = [
  ["success", "succeeded"],
  ["failure", "failed"]
]

/** Each `event` label of `inference_instance_events_total`, and the count it reports. */
export const instanceEventLabels: ReadonlyArray<readonly [label: string, key: keyof InstanceEvents]> = [
  ["crash", "crashes"],
  ["deadline_kill", "deadlineKills"],
  ["abandon_kill", "abandonKills"],
  ["respawn", "respawns"],
  ["respawn_failure", "respawnFailures"]
]

/**
 * Adds to `counter` what each of `counts` grew by since the last call (`counted` holds what it
 * holds), one series per label. The first call adds every row, even at 0, so that a dashboard
 * finds every series at once (and `increase()` sees the first event).
 */
const countUp = <K extends string>(
  counter: Metric.Counter<number>,
  labelName: string,
  labels: ReadonlyArray<readonly [label: string, key: K]>,
  counts: Readonly<Record<K, number>>,
  counted: Map<string, number>,
  /** The series' other label (`model`), if any: its counts are kept apart. */
  model?: string
): Effect.Effect<void> =>
  Effect.forEach(labels, ([label, key]) => {
    const seen = model === undefined ? label : `${model}\u0000${label}`
    const before = counted.get(seen)
    const now = counts[key]
    if (before !== undefined && now <= before) return Effect.void
    counted.set(seen, now)
    return Metric.update(Metric.withAttributes(counter, model === undefined ? { [labelName]: label } : { model, [labelName]: label }), now - (before ?? 0))
  }, { discard: true })

/** Versions as numbers where both are ("2" before "10"), else as text. */
const byVersion = (a: string, b: string): number => {
  const x = Number(a)
  const y = Number(b)
  return a !== "" && b !== "" && Number.isFinite(x) && Number.isFinite(y) ? x - y : a < b ? -1 : a > b ? 1 : 0
}

const escapeLabel = (value: string) => value.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")

/** Triton's failure reasons for each of this engine's failure outcomes. */
export const tritonReason: Readonly<Record<Exclude<RequestOutcome, "success">, "REJECTED" | "CANCELED" | "BACKEND" | "OTHER">> = {
  rejected: "REJECTED",
  cancelled: "CANCELED",
  backend: "BACKEND",
  timeout: "OTHER",
  invalid: "OTHER"
}

interface TritonCounts {
  success: number
  failure: Record<"REJECTED" | "CANCELED" | "BACKEND" | "OTHER", number>
  count: number
  execCount: number
  requestUs: number
  queueUs: number
  computeUs: number
  pending: number
  /** Response cache lookups; undefined for a model version that does not use the cache. */
  cache: { hits: number; misses: number } | undefined
}

/**
 * Triton's `nv_inference_*` families (and `nv_cache_*` for the versions that use the response
 * cache, from their first lookup), from a snapshot of the engine's metrics and the number of
 * requests waiting per model and version (`Engine.waitingByVersion`); every version in `served`
 * has its rows, at 0 before its first request (as Triton's, from the model's load). Pure: the
 * snapshot in, the text out.
 */
export const tritonFamilies = (
  snapshot: ReadonlyArray<Metric.Metric.Snapshot>,
  pendingByVersion: ReadonlyMap<string, ReadonlyMap<string, number>>,
  served: ReadonlyArray<{ readonly name: string; readonly version: string }> = []
): string => {
  // By model, then version: a model's rows together, its versions in order.
  const byModel = new Map<string, Map<string, TritonCounts>>()
  const entry = (model: string, version: string) => {
    let versions = byModel.get(model)
    if (versions === undefined) byModel.set(model, versions = new Map())
    let e = versions.get(version)
    if (e === undefined) {
      e = { success: 0, failure: { REJECTED: 0, CANCELED: 0, BACKEND: 0, OTHER: 0 }, count: 0, execCount: 0, requestUs: 0, queueUs: 0, computeUs: 0, pending: 0, cache: undefined }
      versions.set(version, e)
    }
    return e
  }
  for (const { name, version } of served) entry(name, version)
  for (const s of snapshot) {
    const model = s.attributes?.["model"]
    if (model === undefined) continue
    const version = s.attributes?.["version"] ?? ""
    if (s.type === "Counter") {
      const n = Number((s.state as Metric.CounterState<number>).count)
      if (s.id === metrics.requests.id) {
        const outcome = s.attributes?.["outcome"] as RequestOutcome | undefined
        if (outcome === "success") entry(model, version).success += n
        else if (outcome !== undefined && outcome in tritonReason) entry(model, version).failure[tritonReason[outcome]] += n
      } else if (s.id === metrics.inferences.id) entry(model, version).count += n
      else if (s.id === metrics.executions.id) entry(model, version).execCount += n
      else if (s.id === metrics.requestCompute.id) entry(model, version).computeUs += n * 1e6
      else if (s.id === metrics.cacheHits.id || s.id === metrics.cacheMisses.id) {
        const e = entry(model, version)
        e.cache ??= { hits: 0, misses: 0 }
        if (s.id === metrics.cacheHits.id) e.cache.hits += n
        else e.cache.misses += n
      }
    } else if (s.type === "Histogram") {
      const us = (s.state as Metric.HistogramState).sum * 1e6
      if (s.id === metrics.latency.id) entry(model, version).requestUs += us
      else if (s.id === metrics.queueWait.id) entry(model, version).queueUs += us
    }
  }
  for (const [model, versions] of pendingByVersion) for (const [version, pending] of versions) entry(model, version).pending = pending
  if (byModel.size === 0) return ""
  const rows: Array<readonly [labels: string, counts: TritonCounts]> = []
  for (const model of [...byModel.keys()].sort()) {
    const versions = byModel.get(model)!
    for (const version of [...versions.keys()].sort(byVersion)) rows.push([`model="${escapeLabel(model)}",version="${escapeLabel(version)}"`, versions.get(version)!])
  }
  const family = (name: string, type: string, help: string, value: (e: TritonCounts) => number) =>
    `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${rows.map(([labels, e]) => `${name}{${labels}} ${Math.round(value(e))}`).join("\n")}\n`
  let text = family("nv_inference_request_success", "counter", "Number of successful inference requests, all batch sizes", (e) => e.success)
  text += "# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes\n# TYPE nv_inference_request_failure counter\n"
  for (const [labels, e] of rows) {
    for (const reason of ["REJECTED", "CANCELED", "BACKEND", "OTHER"] as const) {
      text += `nv_inference_request_failure{${labels},reason="${reason}"} ${e.failure[reason]}\n`
    }
  }
  text += family("nv_inference_count", "counter", "Number of inferences performed (a batch of n counts n)", (e) => e.count)
  text += family("nv_inference_exec_count", "counter", "Number of model executions performed (a batch counts 1)", (e) => e.execCount)
  text += family("nv_inference_request_duration_us", "counter", "Cumulative end-to-end duration of successful inference requests, in microseconds", (e) => e.requestUs)
  text += family("nv_inference_queue_duration_us", "counter", "Cumulative time requests spent waiting in the queue, in microseconds", (e) => e.queueUs)
  // As Triton: a batch's time counted for each request in it. Input and output copies are inside the run here (0, as /stats says).
  text += family("nv_inference_compute_input_duration_us", "counter", "Cumulative compute input duration in microseconds (inside the run here: 0)", () => 0)
  text += family("nv_inference_compute_infer_duration_us", "counter", "Cumulative compute inference duration in microseconds, a batch's time counted for each request in it", (e) => e.computeUs)
  text += family("nv_inference_compute_output_duration_us", "counter", "Cumulative compute output duration in microseconds (inside the run here: 0)", () => 0)
  text += family("nv_inference_pending_request_count", "gauge", "Instantaneous number of pending requests awaiting execution", (e) => e.pending)
  // Triton's per-model cache counts, for the versions that use the response cache (none without).
  const cached = rows.filter(([, e]) => e.cache !== undefined)
  if (cached.length > 0) {
    const cacheFamily = (name: string, help: string, value: (c: { hits: number; misses: number }) => number) =>
      `# HELP ${name} ${help}\n# TYPE ${name} counter\n${cached.map(([labels, e]) => `${name}{${labels}} ${value(e.cache!)}`).join("\n")}\n`
    text += cacheFamily("nv_cache_num_hits_per_model", "Number of response cache hits per model", (c) => c.hits)
    text += cacheFamily("nv_cache_num_misses_per_model", "Number of response cache misses per model", (c) => c.misses)
  }
  return text
}

export type Format = "default" | "triton"

/** A server's `/metrics` page: its state (the models seen, the process observers) belongs to the scope that made it. */
export interface Page {
  /**
   * Renders the whole page; needs the engine for the pending gauges, which cover `served` (the
   * model versions the server serves: 0 before any request) and every model that had requests
   * queued before.
   */
  readonly render: (
    engine: AsyncInferenceEngine["Service"],
    options?: {
      readonly format?: Format | undefined
      readonly served?: ReadonlyArray<{ readonly name: string; readonly version: string }> | undefined
      /** The pool's instance counts (`ModelPool.counters`); absent: no `inference_instance_events_total`. */
      readonly instanceEvents?: Readonly<InstanceEvents> | undefined
      /** The pool's load counts (`ModelPool.modelLoads`); absent: no `inference_model_loads_total`. */
      readonly modelLoads?: Readonly<ModelLoads> | undefined
    }
  ) => Effect.Effect<string>
  /**
   * What `render` does to the registry before it formats it (the pending and unsettled gauges, the
   * instance events), alone: for exporters that read the registry themselves (OTLP), which would
   * otherwise see those series only as of the last scrape of the page.
   */
  readonly refresh: (
    engine: AsyncInferenceEngine["Service"],
    options?: {
      readonly served?: ReadonlyArray<{ readonly name: string; readonly version: string }> | undefined
      readonly instanceEvents?: Readonly<InstanceEvents> | undefined
      readonly modelLoads?: Readonly<ModelLoads> | undefined
    }
  ) => Effect.Effect<void>
}

/** Makes a page in the current scope: the process observers start now and stop when the scope closes. */
export const make: Effect.Effect<Page, never, Scope.Scope> = Effect.map(
  Effect.acquireRelease(Effect.sync(() => ProcessMetrics.make()), (process) => Effect.sync(() => process.stop())),
  (processMetrics): Page => {
    /** Models served or with requests queued at an earlier scrape: their gauges stay, at 0 when they have none. */
    const modelsSeen = new Set<string>()
    /** The instance counts the counter holds: each scrape adds what grew since. */
    const eventsCounted = new Map<string, number>()
    /** The load counts the counter holds, likewise (by model and outcome where the pool counts by model). */
    const loadsCounted = new Map<string, number>()
    /** Models with load rows: those served or loaded at an earlier scrape. */
    const loadsSeen = new Set<string>()
    /** The evictions the counter holds, likewise. */
    let evictionsCounted = 0
    /** Model versions that had sequences at an earlier scrape: their gauge stays, at 0 when they have none. */
    const sequencesSeen = new Map<string, { readonly model: string; readonly version: string }>()
    const refresh: Page["refresh"] = (engine, options = {}) =>
      Effect.gen(function*() {
        const byModel = yield* engine.queueStatsByModel
        const unsettled = yield* engine.pending
        for (const { name } of options.served ?? []) modelsSeen.add(name)
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
        if (options.instanceEvents !== undefined) {
          yield* countUp(instanceEventsCounter, "event", instanceEventLabels, options.instanceEvents, eventsCounted)
        }
        const loads = options.modelLoads
        if (loads?.byModel === undefined) {
          if (loads !== undefined) yield* countUp(modelLoadsCounter, "outcome", modelLoadLabels, loads, loadsCounted)
        } else {
          // by model: each served one has its rows (0 before its first load), and each loaded since
          for (const { name } of options.served ?? []) loadsSeen.add(name)
          for (const model of loads.byModel.keys()) loadsSeen.add(model)
          for (const model of loadsSeen) yield* countUp(modelLoadsCounter, "outcome", modelLoadLabels, loads.byModel.get(model) ?? noLoads, loadsCounted, model)
        }
        const cache = yield* engine.responseCache
        if (cache !== undefined) {
          yield* Metric.update(cacheBytesGauge, cache.bytes)
          yield* Metric.update(cacheCapacityGauge, cache.capacityBytes)
          yield* Metric.update(cacheEntriesGauge, cache.entries)
          yield* Metric.update(cacheEvictionsCounter, cache.evictions - evictionsCounted)
          evictionsCounted = cache.evictions
        }
        const sequences = yield* engine.sequences
        for (const [model, versions] of sequences) {
          for (const version of versions.keys()) sequencesSeen.set(`${model}@${version}`, { model, version })
        }
        for (const { model, version } of sequencesSeen.values()) {
          yield* Metric.update(Metric.withAttributes(sequencesGauge, { model, version }), sequences.get(model)?.get(version) ?? 0)
        }
      })
    return {
      refresh,
      render: (engine, options = {}) =>
        Effect.gen(function*() {
          yield* refresh(engine, options)
          const text = yield* PrometheusMetrics.format()
          const page = text + (text.endsWith("\n") || text === "" ? "" : "\n") + processMetrics.render()
          if (options.format !== "triton") return page
          return page + tritonFamilies(yield* Metric.snapshot, yield* engine.waitingByVersion, options.served)
        })
    }
  }
)
