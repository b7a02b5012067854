/**
 * overhead: what the engine adds to one MLP request at concurrency 1 (issues 2 + 3).
 *
 *   (a) direct `session.run` in the main thread (the floor)
 *   (b) engine over OnnxModelPool (sessions in worker threads)
 *   (c) engine over a bench-local in-thread ModelPool (calls `session.run` in the main thread)
 *   (d) OnnxModelPool's `run` called directly, no engine (isolates the thread hop)
 *
 * (c) − (a) is the engine's own overhead; (b) − (a) adds the hop; (d) − (a) is the hop alone.
 * Diagnostics: (a2) `session.run` wrapped in `Effect.promise` (the Effect bridge alone),
 * (c) with no-op telemetry, (c) with tracing off, (c) with batching on.
 *
 * Usage: node --expose-gc bench/overhead.ts [--quick]
 */
import { Effect, References } from "effect"
import { PerformanceObserver } from "node:perf_hooks"
import * as ort from "onnxruntime-node"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as Tensor from "../src/Tensor.ts"
import {
  alternate,
  type Contender,
  fmt,
  goal,
  goalsTable,
  log,
  median,
  mlpData,
  parseArgs,
  ratio,
  section,
  stats,
  type Stats,
  table,
  writeResults
} from "./lib/common.ts"
import { sequentialAsync, sequentialEffect } from "./lib/load.ts"
import { type BatchingSource, engineLayer, inThreadPool, openSession, startEngine, workerPool } from "./lib/pools.ts"

const args = parseArgs()
const ROUNDS = Number(args.options["rounds"] ?? (args.quick ? 3 : 6))
const N = Number(args.options["n"] ?? (args.quick ? 600 : 2500))
/** Warm-up per contender (ms): the engine's Effect code needs seconds of traffic before V8 has optimised it. */
const WARMUP_MS = args.quick ? 600 : 2000

const data = mlpData(1, 7)
const inputs = { input: Tensor.float32(data, [1, 784]) }
const request = () => InferenceRequest.make("mlp", inputs)

type Block_ = Stats & {
  readonly gcPer1k: number
  readonly gcMeanMs: number
  readonly slowPer1k: number
  readonly slowInGcShare: number
  readonly voluntaryCsPer1k: number
  readonly involuntaryCsPer1k: number
}

const batchingOn = { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 }

const main = async () => {
  log(`overhead: ${ROUNDS} rounds × ${N} sequential requests per contender${args.quick ? " (quick)" : ""}`)
  const session = await openSession("mlp")
  const direct = () => session.run({ input: new ort.Tensor("float32", data, [1, 784]) }).then((r) => r["logits"]!.data)

  const sources: Record<string, BatchingSource> = {}
  const engineWorkers = await startEngine(engineLayer(workerPool([{ name: "mlp", instances: 1 }], sources), {}))
  const engineInThread = await startEngine(engineLayer(inThreadPool([{ name: "mlp" }]), {}))
  const engineNoop = await startEngine(engineLayer(inThreadPool([{ name: "mlp" }]), {}, "noop"))
  const engineBatching = await startEngine(engineLayer(inThreadPool([{ name: "mlp", batching: batchingOn }]), {}))

  const viaEngine = (h: typeof engineInThread, n: number, tracing: boolean, starts?: Float64Array) =>
    h.runtime.runPromise(
      sequentialEffect(n, () => h.engine.infer(request()), starts).pipe(
        tracing ? (e) => e : Effect.provideService(References.TracerEnabled, false)
      )
    )
  const poolDirect = (n: number, starts?: Float64Array) =>
    engineWorkers.runtime.runPromise(
      sequentialEffect(n, () => engineWorkers.pool.run("mlp", inputs, { requestId: InferenceRequest.nextRequestId() }), starts)
    )

  type Block = (n: number, starts?: Float64Array) => Promise<Float64Array>
  const blocks: Array<{ readonly name: string; readonly label: string; readonly block: Block }> = [
    { name: "a", label: "(a) direct session.run, in-thread", block: (n, s) => sequentialAsync(n, direct, s) },
    { name: "b", label: "(b) engine over OnnxModelPool (worker threads)", block: (n, s) => viaEngine(engineWorkers, n, true, s) },
    { name: "c", label: "(c) engine over in-thread pool", block: (n, s) => viaEngine(engineInThread, n, true, s) },
    { name: "d", label: "(d) OnnxModelPool.run direct, no engine", block: poolDirect },
    {
      name: "a2",
      label: "(a2) diag: session.run in Effect.promise",
      block: (n, s) => Effect.runPromise(sequentialEffect(n, () => Effect.promise(direct), s))
    },
    { name: "c-noop", label: "(c) diag: no-op telemetry", block: (n, s) => viaEngine(engineNoop, n, true, s) },
    { name: "c-notrace", label: "(c) diag: tracing off", block: (n, s) => viaEngine(engineInThread, n, false, s) },
    { name: "c-batch", label: "(c) diag: batching on (idle)", block: (n, s) => viaEngine(engineBatching, n, true, s) }
  ]

  for (const b of blocks) {
    const until = performance.now() + WARMUP_MS
    while (performance.now() < until) await b.block(200)
  }
  // GC pauses (V8 'gc' performance entries), to tell which slow requests a collection explains.
  const gcEntries: Array<{ start: number; end: number; minor: boolean }> = []
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcEntries.push({ start: e.startTime, end: e.startTime + e.duration, minor: (e as unknown as { detail?: { kind?: number } }).detail?.kind === 1 })
    }
  })
  observer.observe({ entryTypes: ["gc"] })
  const contenders: Array<Contender<Block_>> = blocks.map((b) => ({
    name: b.name,
    run: async () => {
      const starts = new Float64Array(N)
      const r0 = process.resourceUsage()
      const t0 = performance.now()
      const lat = await b.block(N, starts)
      const t1 = performance.now()
      const r1 = process.resourceUsage()
      for (const e of observer.takeRecords()) {
        gcEntries.push({ start: e.startTime, end: e.startTime + e.duration, minor: (e as unknown as { detail?: { kind?: number } }).detail?.kind === 1 })
      }
      const gcs = gcEntries.filter((g) => g.end >= t0 && g.start <= t1)
      let slow = 0
      let slowInGc = 0
      for (let i = 0; i < lat.length; i++) {
        if (lat[i]! <= 1) continue
        slow++
        const s = starts[i]!
        const e = s + lat[i]!
        if (gcs.some((g) => g.end >= s && g.start <= e)) slowInGc++
      }
      gcEntries.length = 0
      return {
        ...stats(lat),
        gcPer1k: (1000 * gcs.length) / N,
        gcMeanMs: gcs.length === 0 ? 0 : gcs.reduce((a, g) => a + g.end - g.start, 0) / gcs.length,
        slowPer1k: (1000 * slow) / N,
        slowInGcShare: slow === 0 ? NaN : slowInGc / slow,
        voluntaryCsPer1k: (1000 * (r1.voluntaryContextSwitches - r0.voluntaryContextSwitches)) / N,
        involuntaryCsPer1k: (1000 * (r1.involuntaryContextSwitches - r0.involuntaryContextSwitches)) / N
      }
    }
  }))
  const results = await alternate(ROUNDS, contenders, (r, name, s) =>
    log(`  round ${r + 1} ${name.padEnd(9)} p50 ${fmt(s.p50, 4)} p99 ${fmt(s.p99, 4)} ms; GCs/1k ${fmt(s.gcPer1k)}, >1 ms/1k ${fmt(s.slowPer1k)} (${fmt(100 * s.slowInGcShare, 2)}% during a GC)`), "overhead")
  observer.disconnect()

  // Paired, per-round differences against (a).
  const added = (name: string, key: "p50" | "p99" | "mean") => median(results[name]!.map((s, r) => s[key] - results["a"]![r]![key]))
  const rows = blocks.map((b) => {
    const rs = results[b.name]!
    return {
      contender: b.label,
      "p50 ms": median(rs.map((s) => s.p50)),
      "p99 ms": median(rs.map((s) => s.p99)),
      "mean ms": median(rs.map((s) => s.mean)),
      "max ms": Math.max(...rs.map((s) => s.max)),
      "added p50 ms": b.name === "a" ? "" : fmt(added(b.name, "p50"), 4),
      "added p99 ms": b.name === "a" ? "" : fmt(added(b.name, "p99"), 4),
      "p50 vs (a)": b.name === "a" ? "" : ratio(median(rs.map((s, r) => s.p50 / results["a"]![r]!.p50)))
    }
  })

  const ownP50 = added("c", "p50")
  const ownP99 = added("c", "p99")
  const hopP50 = added("b", "p50")
  const hopP99 = added("b", "p99")
  const goals = [
    goal("engine's own added p50, (c)−(a)", "≤ 0.1 ms", ownP50, ownP50 <= 0.1, `${fmt(ownP50, 4)} ms`),
    goal("engine's own added p99, (c)−(a)", "≤ 1 ms", ownP99, ownP99 <= 1, `${fmt(ownP99, 4)} ms`),
    goal("engine over workers added p50, (b)−(a)", "≤ 0.1 ms", hopP50, hopP50 <= 0.1, `${fmt(hopP50, 4)} ms`),
    goal("engine over workers added p99, (b)−(a)", "≤ 1 ms", hopP99, hopP99 <= 1, `${fmt(hopP99, 4)} ms`)
  ]

  section(`overhead: MLP batch 1, concurrency 1 (${ROUNDS} rounds × ${N} requests, medians over rounds; added = median of per-round differences)`)
  console.log(table(rows))
  console.log(`\nhop alone, (d)−(a): p50 ${fmt(added("d", "p50"), 4)} ms, p99 ${fmt(added("d", "p99"), 4)} ms; engine on top of the hop, (b)−(d): p50 ${
    fmt(median(results["b"]!.map((s, r) => s.p50 - results["d"]![r]!.p50)), 4)
  } ms`)
  console.log(`telemetry (c)−(c-noop): p50 ${fmt(median(results["c"]!.map((s, r) => s.p50 - results["c-noop"]![r]!.p50)), 4)} ms; tracing (c)−(c-notrace): p50 ${
    fmt(median(results["c"]!.map((s, r) => s.p50 - results["c-notrace"]![r]!.p50)), 4)
  } ms; Effect bridge (a2)−(a): p50 ${fmt(added("a2", "p50"), 4)} ms`)
  section("overhead: where the tail comes from (GC pauses from a PerformanceObserver, context switches of the whole process from getrusage; medians over rounds)")
  console.log(table(blocks.map((b) => {
    const rs = results[b.name]!
    return {
      contender: b.label,
      "GC pauses per 1k requests": median(rs.map((s) => s.gcPer1k)),
      "mean pause ms": median(rs.map((s) => s.gcMeanMs)),
      "requests > 1 ms per 1k": median(rs.map((s) => s.slowPer1k)),
      "of those, overlapping a GC": `${fmt(100 * median(rs.map((s) => s.slowInGcShare)), 2)}%`,
      "voluntary ctx switches per 1k": median(rs.map((s) => s.voluntaryCsPer1k)),
      "involuntary per 1k": median(rs.map((s) => s.involuntaryCsPer1k))
    }
  })))
  section("overhead: goals")
  console.log(goalsTable(goals))

  const file = writeResults("overhead", {
    args: { quick: args.quick, rounds: ROUNDS, n: N, warmupMs: WARMUP_MS },
    setup: { model: "mlp", batch: 1, concurrency: 1, engineConfig: "defaults (maxConcurrentRequests 4)", telemetry: "TelemetryCollector.layer", workerInstances: 1, batchingSources: sources },
    contenders: Object.fromEntries(blocks.map((b) => [b.name, b.label])),
    rounds: results,
    table: rows,
    goals
  })
  log(`wrote ${file}`)
  await Promise.all([engineWorkers.dispose(), engineInThread.dispose(), engineNoop.dispose(), engineBatching.dispose(), session.release()])
}

await main()
