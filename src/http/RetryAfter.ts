/**
 * `Retry-After` for a 429: how long until the queue has room, from its measured drain rate.
 *
 * - `seconds` (pure, table-tested): the queue's length over the rate at which it drains, rounded
 *   up, at least `min` (1 s: the header's resolution) and at most `max` (60 s); `fallback` (1 s)
 *   while no rate has been measured yet (no work has been seen since the start); `max` when the
 *   rate is measured at zero (work waited and nothing drained: a stuck model).
 * - `step` (pure, table-tested): folds one sample into the drain rate, an exponentially weighted
 *   moving average over the intervals between samples (half-life about 10 intervals). Only an
 *   interval in which work was pending (at either end) or drained counts: an idle server keeps
 *   the rate it last measured (or none) instead of decaying to zero and looking hung.
 * - `sampler`: samples every `sampleEvery` (500 ms) the requests drained so far (`totalDrained`:
 *   `inference_requests_total` settled as success, backend, timeout or cancelled, every model
 *   together) and the engine's pending requests, outside the engine.
 *
 * @module RetryAfter
 */
import { Clock, Duration, Effect, Metric, type Scope } from "effect"
import { metrics } from "../Telemetry.ts"

export interface Input {
  /** Requests waiting in the queue (a 429 means it is full). */
  readonly queued: number
  /** Requests drained a second, or undefined when not measured yet. */
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

/** How often the sampler reads the drained count and the pending requests. */
export const sampleEvery = Duration.millis(500)

/** Weight of the newest interval: a half-life of about 10 intervals (5 s of work). */
export const smoothing = 0.07

/** The outcomes of requests that left the queue or a run (refused and invalid ones never entered it). */
const drainedOutcomes: ReadonlySet<string> = new Set(["success", "backend", "timeout", "cancelled"])

/** Requests drained so far over every model (see the module doc), from a metrics snapshot. */
export const totalDrained = (snapshot: ReadonlyArray<Metric.Metric.Snapshot>): number => {
  let total = 0
  for (const s of snapshot) {
    if (s.type === "Counter" && s.id === metrics.requests.id && drainedOutcomes.has(s.attributes?.["outcome"] ?? "")) {
      total += Number((s.state as Metric.CounterState<number>).count)
    }
  }
  return total
}

/** One reading: when, the requests drained so far, and the requests pending (queued, forming, running) then. */
export interface Sample {
  readonly atMs: number
  readonly drained: number
  readonly pending: number
}

export interface RateState {
  /** Requests drained a second, undefined until an interval with work has been measured. */
  readonly ratePerSecond: number | undefined
  readonly last: Sample | undefined
}

export const initial: RateState = { ratePerSecond: undefined, last: undefined }

/**
 * Folds `sample` into the rate. The interval since the last sample counts only when work was
 * pending at either end or some drained in it; an idle interval leaves the rate as it was.
 */
export const step = (state: RateState, sample: Sample): RateState => {
  const last = state.last
  if (last === undefined || sample.atMs <= last.atMs) return { ratePerSecond: state.ratePerSecond, last: sample }
  const drained = sample.drained - last.drained
  if (drained <= 0 && last.pending === 0 && sample.pending === 0) return { ratePerSecond: state.ratePerSecond, last: sample }
  const instant = (Math.max(0, drained) * 1000) / (sample.atMs - last.atMs)
  const rate = state.ratePerSecond === undefined ? instant : state.ratePerSecond + smoothing * (instant - state.ratePerSecond)
  return { ratePerSecond: rate, last: sample }
}

export interface Sampler {
  /** The measured drain rate (requests a second), undefined until an interval with work was measured. */
  readonly ratePerSecond: () => number | undefined
}

/** Starts sampling in the current scope (the server's), reading `pending` each time; stops with it. */
export const sampler = (pending: Effect.Effect<number>): Effect.Effect<Sampler, never, Scope.Scope> =>
  Effect.gen(function*() {
    let state = initial
    const sample = Effect.gen(function*() {
      const atMs = yield* Clock.currentTimeMillis
      const drained = totalDrained(yield* Metric.snapshot)
      state = step(state, { atMs, drained, pending: yield* pending })
    })
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(sample, Effect.sleep(sampleEvery))), { startImmediately: true })
    return { ratePerSecond: () => state.ratePerSecond }
  })
