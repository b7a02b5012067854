/**
 * throughput: MLP batch-1 requests in a closed loop at 1, 16 and 64 outstanding.
 *
 *   (i)   per-request `session.run` calls in the main thread
 *   (ii)  p-queue (concurrency = the engine's maxConcurrentRequests) + `session.run` in the main thread
 *   (iii) engine, batching off (OnnxModelPool, worker threads, default configuration)
 *   (iv)  engine, batching on  (the same, config.json batching { enabled, maxBatchSize 64, maxQueueDelayMs 0 })
 *   (v)   a hand-written micro-batcher (64 rows or 2 ms) + `session.run` in the main thread: the
 *         baseline that batches too, so that (iv)/(i) is not read as the engine against what a
 *         Node user who wants batching would write
 *
 * Then a sweep at 64 outstanding over the engine configurations that matter (instances 1 or 2,
 * maxConcurrentRequests, a batching delay), with (i) and (ii) alternating in the same rounds,
 * and two diagnostics: the engine over the bench-local in-thread pool (no worker hop).
 *
 * Every contender first runs `--warmup-ms` at 64 outstanding (default 4000, quick 3000; the
 * sweep's engines `--sweep-warmup-ms`, default 1500, quick 1000), then 300 ms before each level:
 * V8 keeps optimising the engine's few hundred hot functions for 3-4 s of load on these 2 cores
 * (`--trace-opt`: 364, 94, 114, 52 optimisations in seconds 0-3, then 4 a second), and throughput
 * doubles meanwhile; the hand-written baselines are a few functions and warm at once. Without it
 * the medians measured the engine's warm-up, not the engine.
 *
 * Usage: node --expose-gc bench/throughput.ts [--quick] [--warmup-ms=N]
 */
import * as AsyncConfig from "../src/AsyncConfig.ts"
import * as ModelRepository from "../src/ModelRepository.ts"
import { alternate, fmt, goal, type Goal, goalsTable, log, median, parseArgs, ratio, type Row, section, table, writeResults } from "./lib/common.ts"
import { microBatcher, pQueue, perRequest, viaEngine } from "./lib/contenders.ts"
import type { LoadResult } from "./lib/load.ts"
import { type BatchingSource, engineLayer, type EngineHandle, inThreadPool, openSession, startEngine, workerPool } from "./lib/pools.ts"

const args = parseArgs()
const ROUNDS = Number(args.options["rounds"] ?? (args.quick ? 2 : 4))
const BLOCK_MS = Number(args.options["block-ms"] ?? (args.quick ? 500 : 1000))
const SWEEP_ROUNDS = Number(args.options["sweep-rounds"] ?? (args.quick ? 1 : 3))
const SWEEP_MS = Number(args.options["sweep-ms"] ?? (args.quick ? 400 : 900))
const WARMUP_MS = Number(args.options["warmup-ms"] ?? (args.quick ? 3000 : 4000))
const SWEEP_WARMUP_MS = Number(args.options["sweep-warmup-ms"] ?? (args.quick ? 1000 : 1500))
const LEVELS = [1, 16, 64]
const MAX_CONCURRENT = AsyncConfig.defaults.maxConcurrentRequests
const DEFAULT_INSTANCES = ModelRepository.defaultInstances()

const batchingOn = (maxQueueDelayMs = 0) => ({ enabled: true, maxBatchSize: 64, maxQueueDelayMs })

type Load = (outstanding: number, durationMs: number) => Promise<LoadResult>

interface Variant {
  readonly name: string
  readonly label: string
  readonly instances: number
  readonly maxConcurrentRequests: number
  readonly batching: boolean
  readonly delayMs?: number
  readonly inThread?: boolean
  /** Diagnostics: no-op telemetry and no spans. */
  readonly lean?: boolean
}

const summarize = (rs: ReadonlyArray<LoadResult>, base?: ReadonlyArray<LoadResult>, base2?: ReadonlyArray<LoadResult>, base3?: ReadonlyArray<LoadResult>) => ({
  "req/s": median(rs.map((r) => r.reqPerSec)),
  "p50 ms": median(rs.map((r) => r.latency["all"]!.p50)),
  "p99 ms": median(rs.map((r) => r.latency["all"]!.p99)),
  "vs (i)": base === undefined ? "" : ratio(median(rs.map((r, k) => r.reqPerSec / base[k]!.reqPerSec))),
  "vs (ii)": base2 === undefined ? "" : ratio(median(rs.map((r, k) => r.reqPerSec / base2[k]!.reqPerSec))),
  "vs (v)": base3 === undefined ? "" : ratio(median(rs.map((r, k) => r.reqPerSec / base3[k]!.reqPerSec))),
  "main ELU": median(rs.map((r) => r.mainELU)),
  "rows/run": rs[0]!.meanBatch === undefined ? "" : fmt(median(rs.map((r) => r.meanBatch!)), 3),
  "main CPU µs/req": median(rs.map((r) => r.mainCpuUsPerReq)),
  "heap B/req": Math.round(median(rs.map((r) => r.heapBytesPerReq))),
  "process CPU µs/req": median(rs.map((r) => r.cpuUsPerReq)),
  failed: rs.reduce((a, r) => a + r.failed, 0)
})

const main = async () => {
  log(`throughput: levels ${LEVELS.join(", ")}, ${ROUNDS} rounds × ${BLOCK_MS} ms after ${WARMUP_MS} ms of warm-up each; sweep at 64: ${SWEEP_ROUNDS} rounds × ${SWEEP_MS} ms after ${SWEEP_WARMUP_MS} ms each${args.quick ? " (quick)" : ""}`)
  const sessionI = await openSession("mlp")
  const sessionII = await openSession("mlp")
  const sessionV = await openSession("mlp")
  const sources: Record<string, Record<string, BatchingSource>> = {}
  const engines: Array<EngineHandle> = []
  const start = async (v: Variant): Promise<EngineHandle> => {
    const src: Record<string, BatchingSource> = {}
    sources[v.name] = src
    const pool = v.inThread === true
      ? inThreadPool([{ name: "mlp", batching: v.batching ? batchingOn(v.delayMs) : undefined }])
      : workerPool([{ name: "mlp", instances: v.instances, batching: v.batching ? batchingOn(v.delayMs) : undefined }], src)
    const h = await startEngine(engineLayer(pool, { maxConcurrentRequests: v.maxConcurrentRequests }, v.lean === true ? "noop" : "metrics", { tracing: v.lean !== true }))
    engines.push(h)
    return h
  }

  // ---- main table: (i)–(iv) at 1, 16, 64 -------------------------------------------------
  const main4: Array<{ name: string; label: string; load: Load }> = [
    { name: "i", label: "(i) per-request session.run (in-thread)", load: perRequest(sessionI) },
    { name: "ii", label: `(ii) p-queue(${MAX_CONCURRENT}) + session.run (in-thread)`, load: pQueue(sessionII, MAX_CONCURRENT) },
    {
      name: "iii",
      label: `(iii) engine, batching off (workers ×${DEFAULT_INSTANCES}, maxConcurrent ${MAX_CONCURRENT})`,
      load: viaEngine(await start({ name: "iii", label: "", instances: DEFAULT_INSTANCES, maxConcurrentRequests: MAX_CONCURRENT, batching: false }))
    },
    {
      name: "iv",
      label: `(iv) engine, batching on (workers ×${DEFAULT_INSTANCES}, maxConcurrent ${MAX_CONCURRENT})`,
      load: viaEngine(await start({ name: "iv", label: "", instances: DEFAULT_INSTANCES, maxConcurrentRequests: MAX_CONCURRENT, batching: true }))
    },
    { name: "v", label: "(v) micro-batcher (64 rows or 2 ms) + session.run (in-thread)", load: microBatcher(sessionV) }
  ]
  for (const c of main4) await c.load(64, WARMUP_MS)
  const mainResults: Record<number, Record<string, Array<LoadResult>>> = {}
  const mainRows: Array<Row> = []
  for (const level of LEVELS) {
    for (const c of main4) await c.load(level, 300) // warm-up
    mainResults[level] = await alternate(ROUNDS, main4.map((c) => ({ name: c.name, run: () => c.load(level, BLOCK_MS) })), (r, name, x) =>
      log(`  ${level} outstanding, round ${r + 1} ${name.padEnd(4)} ${fmt(x.reqPerSec)} req/s p50 ${fmt(x.latency["all"]!.p50)} p99 ${fmt(x.latency["all"]!.p99)} ms${x.meanBatch === undefined ? "" : ` rows/run ${fmt(x.meanBatch)}`}`), `level ${level}`)
    const res = mainResults[level]!
    for (const c of main4) {
      const engine = c.name === "iii" || c.name === "iv"
      mainRows.push({ outstanding: level, contender: c.label, ...summarize(res[c.name]!, c.name === "i" ? undefined : res["i"], engine ? res["ii"] : undefined, engine ? res["v"] : undefined) })
    }
  }

  // ---- sweep at 64 ------------------------------------------------------------------------
  const variants: Array<Variant> = [
    { name: "on-i1-c1", label: "batching on, instances 1, maxConcurrent 1", instances: 1, maxConcurrentRequests: 1, batching: true },
    { name: "on-i1-c2", label: "batching on, instances 1, maxConcurrent 2", instances: 1, maxConcurrentRequests: 2, batching: true },
    { name: "on-i1-c4", label: "batching on, instances 1, maxConcurrent 4", instances: 1, maxConcurrentRequests: 4, batching: true },
    { name: "on-i1-c2-d1", label: "batching on, instances 1, maxConcurrent 2, delay 1 ms", instances: 1, maxConcurrentRequests: 2, batching: true, delayMs: 1 },
    { name: "on-i2-c2", label: "batching on, instances 2, maxConcurrent 2", instances: 2, maxConcurrentRequests: 2, batching: true },
    { name: "on-i2-c4", label: "batching on, instances 2, maxConcurrent 4", instances: 2, maxConcurrentRequests: 4, batching: true },
    { name: "off-i1-c4", label: "batching off, instances 1, maxConcurrent 4", instances: 1, maxConcurrentRequests: 4, batching: false },
    { name: "off-i2-c2", label: "batching off, instances 2, maxConcurrent 2", instances: 2, maxConcurrentRequests: 2, batching: false },
    { name: "off-i2-c4", label: "batching off, instances 2, maxConcurrent 4", instances: 2, maxConcurrentRequests: 4, batching: false },
    { name: "off-i2-c8", label: "batching off, instances 2, maxConcurrent 8", instances: 2, maxConcurrentRequests: 8, batching: false },
    { name: "diag-on-inthread", label: "diag: batching on, in-thread pool, maxConcurrent 4", instances: 1, maxConcurrentRequests: 4, batching: true, inThread: true },
    { name: "diag-off-inthread", label: "diag: batching off, in-thread pool, maxConcurrent 4", instances: 1, maxConcurrentRequests: 4, batching: false, inThread: true },
    { name: "diag-on-i1-c2-lean", label: "diag: batching on, instances 1, maxConcurrent 2, no-op telemetry, tracing off", instances: 1, maxConcurrentRequests: 2, batching: true, lean: true },
    { name: "diag-on-inthread-lean", label: "diag: batching on, in-thread pool, maxConcurrent 4, no-op telemetry, tracing off", instances: 1, maxConcurrentRequests: 4, batching: true, inThread: true, lean: true }
  ]
  const sweepLoads: Array<{ name: string; label: string; load: Load; variant?: Variant }> = [
    { name: "i", label: main4[0]!.label, load: main4[0]!.load },
    { name: "ii", label: main4[1]!.label, load: main4[1]!.load }
  ]
  for (const v of variants) sweepLoads.push({ name: v.name, label: v.label, load: viaEngine(await start(v)), variant: v })
  for (const c of sweepLoads) await c.load(64, SWEEP_WARMUP_MS)
  const sweep = await alternate(SWEEP_ROUNDS, sweepLoads.map((c) => ({ name: c.name, run: () => c.load(64, SWEEP_MS) })), (r, name, x) =>
    log(`  sweep round ${r + 1} ${name.padEnd(18)} ${fmt(x.reqPerSec)} req/s p50 ${fmt(x.latency["all"]!.p50)} p99 ${fmt(x.latency["all"]!.p99)} ms${x.meanBatch === undefined ? "" : ` rows/run ${fmt(x.meanBatch)}`}`), "sweep")
  const sweepRows = sweepLoads.map((c) => ({ contender: c.label, ...summarize(sweep[c.name]!, c.name === "i" ? undefined : sweep["i"], c.name === "i" || c.name === "ii" ? undefined : sweep["ii"]) }))

  const best = (batching: boolean) => {
    const vs = variants.filter((v) => v.batching === batching && v.inThread !== true && v.lean !== true)
    return vs.reduce((a, b) => (median(sweep[b.name]!.map((r) => r.reqPerSec)) > median(sweep[a.name]!.map((r) => r.reqPerSec)) ? b : a))
  }
  const bestOn = best(true)
  const bestOff = best(false)
  const pairRatio = (xs: ReadonlyArray<LoadResult>, ys: ReadonlyArray<LoadResult>) => median(xs.map((x, k) => x.reqPerSec / ys[k]!.reqPerSec))

  const at64 = mainResults[64]!
  const onVsI = pairRatio(at64["iv"]!, at64["i"]!)
  const offVsII = pairRatio(at64["iii"]!, at64["ii"]!)
  const onVsV = pairRatio(at64["iv"]!, at64["v"]!)
  const bestOnVsI = pairRatio(sweep[bestOn.name]!, sweep["i"]!)
  const bestOffVsII = pairRatio(sweep[bestOff.name]!, sweep["ii"]!)
  const mainCpuOn = median(at64["iv"]!.map((r) => r.mainCpuUsPerReq))
  const bytesOn = median(at64["iv"]!.map((r) => r.heapBytesPerReq))
  const goals: Array<Goal> = [
    goal("64 outstanding, batching on: main-thread CPU per request, (iv), default config", "≤ 10 µs", mainCpuOn, mainCpuOn <= 10, `${fmt(mainCpuOn)} µs`),
    goal("64 outstanding, batching on: heap bytes allocated per request, (iv), default config", "≤ 4 KB", bytesOn, bytesOn <= 4096, `${Math.round(bytesOn)} B`),
    goal("64 outstanding: batching on vs per-request runs, (iv)/(i), default config", "≥ 3× (stretch 5×)", onVsI, onVsI >= 3, ratio(onVsI)),
    goal("64 outstanding: batching off vs p-queue, (iii)/(ii), default config", "≥ 1.0×", offVsII, offVsII >= 1, ratio(offVsII)),
    goal("64 outstanding: batching on vs a hand-written micro-batcher, (iv)/(v), default config", "≥ 1.0×", onVsV, onVsV >= 1, ratio(onVsV)),
    goal(`64 outstanding: batching on vs per-request, best config (${bestOn.label})`, "≥ 3×", bestOnVsI, bestOnVsI >= 3, ratio(bestOnVsI)),
    goal(`64 outstanding: batching off vs p-queue, best config (${bestOff.label})`, "≥ 1.0×", bestOffVsII, bestOffVsII >= 1, ratio(bestOffVsII))
  ]

  section(`throughput: MLP batch-1 requests, closed loop (${ROUNDS} rounds × ${BLOCK_MS} ms per contender and level; medians over rounds; ratios = median of per-round ratios)`)
  console.log(table(mainRows))
  section(`throughput: engine configurations at 64 outstanding (${SWEEP_ROUNDS} rounds × ${SWEEP_MS} ms)`)
  console.log(table(sweepRows))
  console.log(`\nbest batching-on config: ${bestOn.label}; best batching-off config: ${bestOff.label}`)
  console.log(`batching source: ${JSON.stringify(sources["iv"])} (\"bench override\" = config.json's batching is not read by the pool yet; the bench sets it on the pool's metadata)`)
  section("throughput: goals")
  console.log(goalsTable(goals))

  const file = writeResults("throughput", {
    args: { quick: args.quick, rounds: ROUNDS, blockMs: BLOCK_MS, sweepRounds: SWEEP_ROUNDS, sweepMs: SWEEP_MS, levels: LEVELS, warmupMs: WARMUP_MS, sweepWarmupMs: SWEEP_WARMUP_MS },
    setup: { model: "mlp", batch: 1, defaultInstances: DEFAULT_INSTANCES, maxConcurrentRequests: MAX_CONCURRENT, batchingOn: batchingOn(), microBatcher: "(v): 64 rows or 2 ms, one batch at a time, in-thread session", telemetry: "TelemetryCollector.layer", batchingSources: sources },
    main: { table: mainRows, rounds: mainResults },
    sweep: { variants, table: sweepRows, rounds: sweep, bestOn: bestOn.name, bestOff: bestOff.name },
    goals
  })
  log(`wrote ${file}`)
  await Promise.all([...engines.map((h) => h.dispose()), sessionI.release(), sessionII.release(), sessionV.release()])
}

await main()
