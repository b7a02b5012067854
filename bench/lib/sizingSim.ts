/**
 * A discrete-event simulation of the engine's batching, for comparing batch-sizing policies
 * without a device: the engine's own `Scheduler` (the pure state machine that the `Dispatcher`
 * drives) decides, on simulated time, what a device with a known cost per run (a fixed cost plus a
 * cost per row, with noise) would do with the batches, behind instances reached by a hop each way.
 *
 * What it models as the engine does: one pump after every arrival and every completion; a wait
 * ends on a Node timer (whole milliseconds, at least 1); each run's native time is fed to the
 * model's learned cost, the wall time to `expectedRunMs`; `complete` after the result's hop back.
 * A `shared` device runs one batch at a time whichever instance sent it (several processes on one
 * GPU); otherwise each instance is its own device (CPU cores). Deterministic for a seed.
 */
import type * as BatchPolicy from "../../src/BatchPolicy.ts"
import * as Priority from "../../src/Priority.ts"
import * as Scheduler from "../../src/Scheduler.ts"
import { rng } from "./common.ts"

export interface Device {
  /** Cost of a run of no rows (ms). */
  readonly fixedMs: number
  /** Cost of each row (ms). */
  readonly perRowMs: number
  /** Relative standard deviation of a run's time. */
  readonly noise: number
  /** One device behind every instance (runs queue for it), or one device per instance. */
  readonly shared: boolean
}

export type Load =
  | { readonly _tag: "open"; readonly requestsPerMs: number }
  | { readonly _tag: "closed"; readonly outstanding: number }

export interface Options {
  readonly batching: BatchPolicy.BatchingConfig
  readonly instances: number
  /** Jobs one instance may hold at once (the engine's pipelining). */
  readonly depth: number
  /** Main thread to instance, and back (ms each way). */
  readonly hopMs: number
  readonly device: Device
  readonly load: Load
  readonly rowsPerRequest: number
  /** Requests answered before measuring starts, and then measured. */
  readonly warmup: number
  readonly measured: number
  readonly seed: number
}

export interface Result {
  /** Requests answered per second of simulated time. */
  readonly throughputPerS: number
  readonly p50Ms: number
  readonly p99Ms: number
  /** Mean rows per native run. */
  readonly rowsPerRun: number
  /** Share of the device's time spent running, over the measured span. */
  readonly deviceBusy: number
}

type Event =
  | { readonly _tag: "arrival" }
  | { readonly _tag: "wake" }
  | { readonly _tag: "atInstance"; readonly job: Job }
  | { readonly _tag: "runEnd"; readonly job: Job }
  | { readonly _tag: "result"; readonly job: Job }

interface Job {
  readonly batch: Scheduler.Batch<null>
  readonly rows: number
  readonly dispatchedMs: number
  readonly instance: number
  runMs: number
}

/** A min-heap of timed events; ties in insertion order. */
class Timeline {
  readonly #heap: Array<{ atMs: number; seq: number; event: Event }> = []
  #seq = 0
  push(atMs: number, event: Event): void {
    const h = this.#heap
    h.push({ atMs, seq: this.#seq++, event })
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!before(h[i]!, h[p]!)) break
      ;[h[i], h[p]] = [h[p]!, h[i]!]
      i = p
    }
  }
  pop(): { atMs: number; event: Event } | undefined {
    const h = this.#heap
    if (h.length === 0) return undefined
    const top = h[0]!
    const last = h.pop()!
    if (h.length > 0) {
      h[0] = last
      let i = 0
      while (true) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < h.length && before(h[l]!, h[m]!)) m = l
        if (r < h.length && before(h[r]!, h[m]!)) m = r
        if (m === i) break
        ;[h[i], h[m]] = [h[m]!, h[i]!]
        i = m
      }
    }
    return top
  }
}

const before = (a: { atMs: number; seq: number }, b: { atMs: number; seq: number }) => a.atMs < b.atMs || (a.atMs === b.atMs && a.seq < b.seq)

export const simulate = (options: Options): Result => {
  const random = rng(options.seed)
  const gaussian = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random())
  const { device, instances } = options
  const scheduler = Scheduler.make<null>({ maxConcurrent: instances, maxQueued: 10_000_000, enablePriority: true })
  const spec: Scheduler.ModelSpec = { key: "m", instances, depth: options.depth, batching: options.batching, maxGroup: 1, devices: device.shared ? 1 : instances }
  const timeline = new Timeline()
  const latencies: Array<number> = []
  let answered = 0
  let measuredFromMs = NaN
  let rowsRun = 0
  let runsCounted = 0
  let busyMs = 0
  let nowMs = 0
  let wakeAtMs = Infinity

  const instanceJobs: Array<Array<Job>> = Array.from({ length: instances }, () => [])
  const instanceBusy: Array<boolean> = Array.from({ length: instances }, () => false)
  const devices = device.shared ? 1 : instances
  const deviceQueue: Array<Array<Job>> = Array.from({ length: devices }, () => [])
  const deviceBusy: Array<boolean> = Array.from({ length: devices }, () => false)
  const deviceOf = (instance: number) => (device.shared ? 0 : instance)

  const admit = () => {
    scheduler.admit({
      value: null,
      model: spec,
      priority: Priority.Normal,
      rows: options.rowsPerRequest,
      batchKey: "k",
      deadlineAtMs: Infinity,
      queueDeadlineAtMs: Infinity
    }, nowMs)
  }

  const startRun = (d: number) => {
    if (deviceBusy[d] || deviceQueue[d]!.length === 0) return
    const job = deviceQueue[d]!.shift()!
    deviceBusy[d] = true
    job.runMs = Math.max(0.5, 1 + device.noise * gaussian()) * (device.fixedMs + device.perRowMs * job.rows)
    if (!Number.isNaN(measuredFromMs)) busyMs += job.runMs
    timeline.push(nowMs + job.runMs, { _tag: "runEnd", job })
  }

  const instanceNext = (i: number) => {
    if (instanceBusy[i] || instanceJobs[i]!.length === 0) return
    instanceBusy[i] = true
    const job = instanceJobs[i]![0]!
    deviceQueue[deviceOf(i)]!.push(job)
    startRun(deviceOf(i))
  }

  const pump = () => {
    while (true) {
      const step = scheduler.next(nowMs)
      if (step._tag === "Dispatch") {
        const batch = step.batch
        let instance = 0
        for (let i = 1; i < instances; i++) if (instanceJobs[i]!.length < instanceJobs[instance]!.length) instance = i
        const job: Job = { batch, rows: batch.rows, dispatchedMs: nowMs, instance, runMs: 0 }
        instanceJobs[instance]!.push(job)
        timeline.push(nowMs + options.hopMs, { _tag: "atInstance", job })
        continue
      }
      if (step._tag === "Wait") {
        // A Node timer: whole milliseconds, at least one.
        const at = nowMs + Math.max(1, Math.ceil(step.untilMs - nowMs - 1e-9))
        if (at < wakeAtMs) {
          wakeAtMs = at
          timeline.push(at, { _tag: "wake" })
        }
      }
      return
    }
  }

  const nextArrival = () => {
    if (options.load._tag !== "open") return
    timeline.push(nowMs - Math.log(1 - random()) / options.load.requestsPerMs, { _tag: "arrival" })
  }

  if (options.load._tag === "open") nextArrival()
  else for (let i = 0; i < options.load.outstanding; i++) admit()
  pump()

  const total = options.warmup + options.measured
  while (answered < total) {
    const next = timeline.pop()
    if (next === undefined) throw new Error("simulation stalled: nothing scheduled and requests unanswered")
    nowMs = next.atMs
    const event = next.event
    switch (event._tag) {
      case "arrival":
        admit()
        nextArrival()
        break
      case "wake":
        if (nowMs < wakeAtMs) continue
        wakeAtMs = Infinity
        break
      case "atInstance":
        instanceNext(event.job.instance)
        continue
      case "runEnd": {
        const { job } = event
        const i = job.instance
        instanceJobs[i]!.shift()
        instanceBusy[i] = false
        deviceBusy[deviceOf(i)] = false
        instanceNext(i)
        startRun(deviceOf(i))
        timeline.push(nowMs + options.hopMs, { _tag: "result", job })
        continue
      }
      case "result": {
        const { job } = event
        const batch = job.batch
        batch.model.expectedRunMs = nowMs - job.dispatchedMs
        batch.model.cost.observe(job.rows, job.runMs)
        if (!Number.isNaN(measuredFromMs)) {
          rowsRun += job.rows
          runsCounted++
        }
        for (const m of batch.members) {
          if (m.stage === "settled") continue
          scheduler.settle(m)
          answered++
          if (answered === options.warmup) measuredFromMs = nowMs
          else if (answered > options.warmup) latencies.push(nowMs - m.admittedAtMs)
          if (options.load._tag === "closed") admit()
        }
        scheduler.complete(batch, nowMs)
        break
      }
    }
    pump()
  }
  const spanMs = nowMs - measuredFromMs
  latencies.sort((a, b) => a - b)
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!
  return {
    throughputPerS: (latencies.length / spanMs) * 1000,
    p50Ms: at(0.5),
    p99Ms: at(0.99),
    rowsPerRun: rowsRun / runsCounted,
    deviceBusy: busyMs / (spanMs * devices)
  }
}
