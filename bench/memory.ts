/**
 * memory: RSS and heap before and after 1,000,000 requests, 10% of them cancelled — half by
 * interrupting the caller's fiber right after admission (the request is queued: 64 are
 * outstanding), half through a CancelToken fired after a delay near the median latency (the
 * request is usually forming or running by then). Engine over the real MLP in worker threads,
 * batching on, default configuration, 64 outstanding. A full GC (`--expose-gc`) precedes every
 * reading; readings are also taken every 10% of the run to show the trend.
 *
 * Where the cancellations landed is counted from the engine's telemetry: a request dispatched
 * into a run is recorded by `recordQueueWait`, so cancelled-while-running = dispatched −
 * succeeded (no failures are expected), cancelled-while-queued = cancelled − that.
 *
 * Usage: node --expose-gc bench/memory.ts [--quick] [--requests=N]
 */
import { Effect, Fiber, Layer } from "effect"
import * as v8 from "node:v8"
import * as CancelToken from "../src/CancelToken.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import { TelemetryCollector } from "../src/Telemetry.ts"
import { fmt, foreignLoad, gc, goal, type Goal, goalsTable, log, parseArgs, rng, type Row, section, stats, table, writeResults } from "./lib/common.ts"
import { mlpInputs } from "./lib/contenders.ts"
import { closedLoopEffect } from "./lib/load.ts"
import { engineLayer, startEngine, workerPool } from "./lib/pools.ts"

const args = parseArgs()
const REQUESTS = Number(args.options["requests"] ?? (args.quick ? 100_000 : 1_000_000))
const WARMUP = args.quick ? 20_000 : 100_000
const OUTSTANDING = 64
const CANCEL_EVERY = 10 // 10%: seq % 10 === 0 → queued-cancel on even tens, running-cancel on odd tens

interface Reading {
  readonly requests: number
  readonly seconds: number
  readonly rssMiB: number
  readonly heapUsedMiB: number
  readonly heapTotalMiB: number
  readonly externalMiB: number
  readonly arrayBuffersMiB: number
}

const MiB = 2 ** 20

const read = (requests: number, t0: number): Reading => {
  gc()
  const m = process.memoryUsage()
  return {
    requests,
    seconds: (performance.now() - t0) / 1000,
    rssMiB: m.rss / MiB,
    heapUsedMiB: m.heapUsed / MiB,
    heapTotalMiB: m.heapTotal / MiB,
    externalMiB: m.external / MiB,
    arrayBuffersMiB: m.arrayBuffers / MiB
  }
}

/** Telemetry counts for locating cancellations (on top of the real metrics layer). */
const counts = { started: 0, success: 0, cancelled: 0, timeout: 0, failure: 0, rejected: 0, dispatched: 0 }
const countingTelemetry = Layer.effect(
  TelemetryCollector,
  Effect.map(TelemetryCollector, (real) =>
    TelemetryCollector.of({
      recordStart: (i) => (counts.started++, real.recordStart(i)),
      recordSuccess: (i, ms) => (counts.success++, real.recordSuccess(i, ms)),
      recordFailure: (i, e, ms) => (counts.failure++, real.recordFailure(i, e, ms)),
      recordCancelled: (i, ms) => (counts.cancelled++, real.recordCancelled(i, ms)),
      recordTimeout: (i, ms) => (counts.timeout++, real.recordTimeout(i, ms)),
      recordRejected: (i, e) => (counts.rejected++, real.recordRejected(i, e)),
      recordQueueWait: (m, p, ms) => (counts.dispatched++, real.recordQueueWait(m, p, ms)),
      recordRun: real.recordRun
    }))
).pipe(Layer.provide(TelemetryCollector.layer))

const main = async () => {
  gc()
  const baseline = process.memoryUsage()
  log(`memory: ${REQUESTS.toLocaleString("en-US")} requests, ${100 / CANCEL_EVERY}% cancelled, ${OUTSTANDING} outstanding${args.quick ? " (quick)" : ""}`)
  const built = engineLayer(
    workerPool([{ name: "mlp", instances: 1, batching: { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 } }]),
    {},
    countingTelemetry
  )
  const runCounts = built.counts
  const h = await startEngine(built)
  const { engine } = h

  // The median latency under this load sets the delay of the token cancellations.
  const probe = await h.runtime.runPromise(closedLoopEffect(OUTSTANDING, 3000, () => ({ run: engine.infer(InferenceRequest.make("mlp", mlpInputs)) })))
  const p50 = probe.latency["all"]!.p50
  log(`  probe: ${fmt(probe.reqPerSec)} req/s, p50 ${fmt(p50)} ms`)

  const random = rng(42)
  const results = { success: 0, cancelledQueued: 0, cancelledToken: 0, tokenAnsweredFirst: 0, other: 0 }
  const one = (seq: number): Effect.Effect<void> => {
    const request = InferenceRequest.make("mlp", mlpInputs)
    if (seq % CANCEL_EVERY !== 0) {
      return engine.infer(request).pipe(
        Effect.matchEffect({ onSuccess: () => Effect.sync(() => void results.success++), onFailure: () => Effect.sync(() => void results.other++) })
      )
    }
    if ((seq / CANCEL_EVERY) % 2 === 0) {
      // Cancel while queued: interrupt the caller once the request is admitted (it waits behind 63 others).
      return Effect.gen(function*() {
        const fiber = yield* Effect.forkChild(engine.infer(request), { startImmediately: true })
        yield* Fiber.interrupt(fiber)
        results.cancelledQueued++
      })
    }
    // Cancel later: a CancelToken fired after 0.3–1.2 × the median latency.
    return Effect.suspend(() => {
      const token = CancelToken.makeUnsafe()
      const timer = setTimeout(() => token.cancelUnsafe("bench"), Math.max(0.5, p50 * (0.3 + 0.9 * random())))
      return Effect.map(engine.inferResult(request, token), (r) => {
        clearTimeout(timer)
        if (r._tag === "Cancelled") results.cancelledToken++
        else if (r._tag === "Success") {
          results.success++
          results.tokenAnsweredFirst++
        } else results.other++
      })
    })
  }

  /** A count-bounded closed loop: OUTSTANDING clients take sequence numbers until `n` are done. */
  const runBlock = (start: number, n: number, sample: Array<number>) =>
    h.runtime.runPromise(Effect.gen(function*() {
      let next = start
      const end = start + n
      const client = Effect.gen(function*() {
        while (next < end) {
          const seq = next++
          const t = performance.now()
          yield* one(seq)
          if (seq % 97 === 1) sample.push(performance.now() - t)
        }
      })
      yield* Effect.all(Array.from({ length: OUTSTANDING }, () => client), { concurrency: "unbounded", discard: true })
    }))

  // Warm-up with the very same workload (cancellations included), so that JIT, allocator arenas
  // and the worker's buffers have settled before the first reading.
  const tw = performance.now()
  await runBlock(-WARMUP, WARMUP, [])
  log(`  warm-up: ${WARMUP.toLocaleString("en-US")} requests in ${fmt((performance.now() - tw) / 1000)} s`)
  for (const k of Object.keys(counts) as Array<keyof typeof counts>) counts[k] = 0
  for (const k of Object.keys(results) as Array<keyof typeof results>) results[k] = 0

  const stopForeign = foreignLoad()
  const t0 = performance.now()
  const readings: Array<Reading> = [read(0, t0)]
  const latencies: Array<number> = []
  const checkpoints = 10
  const per = Math.ceil(REQUESTS / checkpoints)
  let done = 0
  for (let c = 0; c < checkpoints; c++) {
    const n = Math.min(per, REQUESTS - done)
    await runBlock(done, n, latencies)
    done += n
    const r = read(done, t0)
    readings.push(r)
    log(`  ${done.toLocaleString("en-US")} requests, ${fmt(r.seconds)} s: rss ${fmt(r.rssMiB)} MiB, heap ${fmt(r.heapUsedMiB)} MiB, external ${fmt(r.externalMiB)} MiB; pending ${
      Effect.runSync(engine.pending)
    }`)
  }
  const foreign = stopForeign()
  const seconds = (performance.now() - t0) / 1000
  const pendingAfter = await h.runtime.runPromise(engine.pending)
  const queueAfter = await h.runtime.runPromise(engine.queueStats)
  const before = readings[0]!
  const after = readings[readings.length - 1]!
  const drift = (k: keyof Reading) => (after[k] - before[k]) / before[k]
  /** Least-squares slope of `k` over the readings, in bytes per request (a leak shows as a steady slope). */
  const slope = (k: keyof Reading) => {
    const xs = readings.map((r) => r.requests)
    const ys = readings.map((r) => r[k] * MiB)
    const mx = xs.reduce((a, b) => a + b, 0) / xs.length
    const my = ys.reduce((a, b) => a + b, 0) / ys.length
    let num = 0
    let den = 0
    for (let i = 0; i < xs.length; i++) {
      num += (xs[i]! - mx) * (ys[i]! - my)
      den += (xs[i]! - mx) ** 2
    }
    return num / den
  }
  const cancelledRunning = counts.dispatched - counts.success - counts.failure - counts.timeout
  const cancelledQueued = counts.cancelled - cancelledRunning

  const rows: Array<Row> = readings.map((r) => ({
    requests: r.requests.toLocaleString("en-US"),
    "elapsed s": r.seconds,
    "RSS MiB": r.rssMiB,
    "heap used MiB": r.heapUsedMiB,
    "heap total MiB": r.heapTotalMiB,
    "external MiB": r.externalMiB,
    "arrayBuffers MiB": r.arrayBuffersMiB
  }))
  const outcome: Array<Row> = [
    { what: "requests sent", count: done },
    { what: "succeeded", count: results.success },
    { what: "cancelled by interrupting the caller right after admission", count: results.cancelledQueued },
    { what: "cancelled through a CancelToken (answered Cancelled)", count: results.cancelledToken },
    { what: "token requests answered (Success) before their token fired", count: results.tokenAnsweredFirst },
    { what: "other results (failed / timed out)", count: results.other + counts.failure + counts.timeout },
    { what: "engine telemetry: cancelled while queued or forming (never ran)", count: cancelledQueued },
    { what: "engine telemetry: cancelled after dispatch into a run (result dropped)", count: cancelledRunning },
    { what: "pending in the engine after the run", count: pendingAfter },
    { what: "queued in the engine after the run", count: queueAfter.total }
  ]
  const lat = stats(latencies)
  const goals: Array<Goal> = [
    goal("RSS drift over the run (after GC)", "< 10%", drift("rssMiB"), Math.abs(drift("rssMiB")) < 0.1, `${(100 * drift("rssMiB")).toFixed(1)}% (${fmt(before.rssMiB)} → ${fmt(after.rssMiB)} MiB)`),
    goal("heap-used drift over the run (after GC)", "< 10%", drift("heapUsedMiB"), Math.abs(drift("heapUsedMiB")) < 0.1, `${(100 * drift("heapUsedMiB")).toFixed(1)}% (${fmt(before.heapUsedMiB)} → ${fmt(after.heapUsedMiB)} MiB)`),
    goal("nothing left pending or queued", "0", pendingAfter + queueAfter.total, pendingAfter === 0 && queueAfter.total === 0, String(pendingAfter + queueAfter.total))
  ]

  section(`memory: ${done.toLocaleString("en-US")} requests (${fmt(done / seconds)} req/s over ${fmt(seconds)} s), 10% cancelled, engine over the MLP in a worker, batching on, ${OUTSTANDING} outstanding`)
  console.log(`other processes used ${(100 * foreign).toFixed(0)}% of the machine's CPU during the run (foreign load)`)
  console.log(`process before the engine started: rss ${fmt(baseline.rss / MiB)} MiB, heap ${fmt(baseline.heapUsed / MiB)} MiB; readings below start after a warm-up of ${WARMUP.toLocaleString("en-US")} requests of the same workload, each after a forced full GC`)
  console.log(`latency (every 97th request, cancelled ones included): p50 ${fmt(lat.p50)} ms, p99 ${fmt(lat.p99)} ms; mean rows/run ${fmt(runCounts.rows / runCounts.runs)}\n`)
  console.log(table(rows))
  console.log(`\ntrend over the readings (least squares): heap used ${fmt(slope("heapUsedMiB"), 3)} bytes/request, RSS ${fmt(slope("rssMiB"), 3)} bytes/request\n`)
  console.log(table(outcome))
  section("memory: goals")
  console.log(goalsTable(goals))
  const file = writeResults("memory", {
    args: { quick: args.quick, requests: REQUESTS, warmup: WARMUP, outstanding: OUTSTANDING, cancelShare: 1 / CANCEL_EVERY },
    setup: { model: "mlp", pool: "OnnxModelPool, 1 worker", batching: { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 }, telemetry: "TelemetryCollector.layer (+ counts)" },
    readings,
    outcome,
    counts,
    results,
    foreignLoadDuringRun: foreign,
    slopeBytesPerRequest: { heapUsed: slope("heapUsedMiB"), rss: slope("rssMiB") },
    heapStatistics: v8.getHeapStatistics(),
    goals
  })
  log(`wrote ${file}`)
  await h.dispose()
}

await main()
