/**
 * `Retry-After` for a 429: how long until the queue has room, from its measured drain rate.
 *
 * - `seconds` (pure, table-tested): the queue's length over the rate at which it drains, rounded
 *   up, at least `min` (1 s: the header's resolution) and at most `max` (60 s); `fallback` (1 s)
 *   while no rate has been measured yet (nothing has run since the start); `max` when the rate
 *   is measured at zero (nothing drains: a stuck model).
 * - `sampler`: measures the drain rate, the requests the engine runs a second
 *   (`inference_count_total`, every model together), as an exponentially weighted moving average
 *   over samples taken every `sampleEvery` (half-life about 5 s), from the engine's own metrics,
 *   outside the engine.
 *
 * @module RetryAfter
 */
import { Clock, Duration, Effect, Metric, type Scope } from "effect"
import { metrics } from "../Telemetry.ts"

export interface Input {
  /** Requests waiting in the queue (a 429 means it is full). */
  readonly queued: number
  /** Requests run per second, or undefined when not measured yet. */
  readonly ratePerSecond: number | undefined
  readonly min?: number | undefined
  readonly max?: number | undefined
  readonly fallback?: number | undefined
}

/** Whole seconds a client should wait before retrying (see the module doc). */
export const seconds = (input: Input): number => {
  const min = input.min ?? 1
  const max = input.max ?? 60
  if (input.ratePerSecond === undefined || !Number.isFinite(input.ratePerSecond)) return Math.min(max, Math.max(min, input.fallback ?? 1))
  if (input.ratePerSecond <= 0) return max
  return Math.min(max, Math.max(min, Math.ceil(input.queued / input.ratePerSecond)))
}

/** How often the sampler reads the engine's run count. */
export const sampleEvery = Duration.millis(500)

/** Weight of the newest sample: a half-life of about 10 samples (5 s). */
export const smoothing = 0.07

/** The run counter's total over every model, from a metrics snapshot. */
export const totalRun = (snapshot: ReadonlyArray<Metric.Metric.Snapshot>): number => {
  let total = 0
  for (const s of snapshot) {
    if (s.type === "Counter" && s.id === metrics.inferences.id) total += Number((s.state as Metric.CounterState<number>).count)
  }
  return total
}

export interface Sampler {
  /** The measured drain rate (requests a second), undefined until a first interval was measured. */
  readonly ratePerSecond: () => number | undefined
}

/** Starts sampling in the current scope (the server's); stops with it. */
export const sampler: Effect.Effect<Sampler, never, Scope.Scope> = Effect.gen(function*() {
  let rate: number | undefined
  let last: { readonly atMs: number; readonly total: number } | undefined
  const sample = Effect.gen(function*() {
    const atMs = yield* Clock.currentTimeMillis
    const total = totalRun(yield* Metric.snapshot)
    if (last !== undefined && atMs > last.atMs) {
      const instant = ((total - last.total) * 1000) / (atMs - last.atMs)
      rate = rate === undefined ? instant : rate + smoothing * (instant - rate)
    }
    last = { atMs, total }
  })
  yield* Effect.forkScoped(Effect.forever(Effect.andThen(sample, Effect.sleep(sampleEvery))), { startImmediately: true })
  return { ratePerSecond: () => rate }
})
