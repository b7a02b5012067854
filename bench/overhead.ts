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

  const viaEngine = (h: typeof engineInThread, n: number, tracing = true) =>
    h.runtime.runPromise(
      sequentialEffect(n, () => h.engine.infer(request())).pipe(
        tracing ? (e) => e : Effect.provideService(References.TracerEnabled, false)
      )
    )
  const poolDirect = (n: number) =>
    engineWorkers.runtime.runPromise(
      sequentialEffect(n, () => engineWorkers.pool.run("mlp", inputs, { requestId: InferenceRequest.nextRequestId() }))
    )

  type Block = (n: number) => Promise<Float64Array>
  const blocks: Array<{ readonly name: string; readonly label: string; readonly block: Block }> = [
    { name: "a", label: "(a) direct session.run, in-thread", block: (n) => sequentialAsync(n, direct) },
    { name: "b", label: "(b) engine over OnnxModelPool (worker threads)", block: (n) => viaEngine(engineWorkers, n) },
    { name: "c", label: "(c) engine over in-thread pool", block: (n) => viaEngine(engineInThread, n) },
    { name: "d", label: "(d) OnnxModelPool.run direct, no engine", block: poolDirect },
    {
      name: "a2",
      label: "(a2) diag: session.run in Effect.promise",
      block: (n) => Effect.runPromise(sequentialEffect(n, () => Effect.promise(direct)))
    },
    { name: "c-noop", label: "(c) diag: no-op telemetry", block: (n) => viaEngine(engineNoop, n) },
    { name: "c-notrace", label: "(c) diag: tracing off", block: (n) => viaEngine(engineInThread, n, false) },
    { name: "c-batch", label: "(c) diag: batching on (idle)", block: (n) => viaEngine(engineBatching, n) }
  ]

  for (const b of blocks) {
    const until = performance.now() + WARMUP_MS
    while (performance.now() < until) await b.block(200)
  }
  const contenders: Array<Contender<Stats>> = blocks.map((b) => ({ name: b.name, run: async () => stats(await b.block(N)) }))
  const results = await alternate(ROUNDS, contenders, (r, name, s) => log(`  round ${r + 1} ${name.padEnd(9)} p50 ${fmt(s.p50, 4)} p99 ${fmt(s.p99, 4)} ms`))

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
