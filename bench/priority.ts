/**
 * priority: does Critical stay fast under load? 64 outstanding MLP batch-1 requests, 95% Low and
 * 5% Critical (chosen per request from a seeded PRNG), against Critical requests sent alone
 * (1 outstanding, nothing else running). Critical p99 loaded / Critical p99 unloaded, paired
 * per round; goal ≤ 1.5×.
 *
 * Engines (OnnxModelPool, worker threads, default instances): batching on and off at the
 * default maxConcurrentRequests (4), and at maxConcurrentRequests 1 (nothing queues at the pool,
 * so the engine's queue decides the order). For reference, in-thread per-request `session.run`
 * (no priorities) and p-queue(4) with priorities in front of `session.run`.
 *
 * Usage: node --expose-gc bench/priority.ts [--quick]
 */
import * as ort from "onnxruntime-node"
import PQueue from "p-queue"
import * as AsyncConfig from "../src/AsyncConfig.ts"
import * as ModelRepository from "../src/ModelRepository.ts"
import type * as Priority from "../src/Priority.ts"
import { alternate, fmt, goal, type Goal, goalsTable, log, median, parseArgs, ratio, type Row, rng, section, table, writeResults } from "./lib/common.ts"
import { mlpRow, viaEngine } from "./lib/contenders.ts"
import { closedLoopAsync, type LoadResult } from "./lib/load.ts"
import { engineLayer, type EngineHandle, inThreadPool, openSession, startEngine, workerPool } from "./lib/pools.ts"

const args = parseArgs()
const ROUNDS = Number(args.options["rounds"] ?? (args.quick ? 2 : 3))
const LOADED_MS = Number(args.options["loaded-ms"] ?? (args.quick ? 700 : 2000))
const UNLOADED_MS = Number(args.options["unloaded-ms"] ?? (args.quick ? 300 : 600))
const OUTSTANDING = 64
const CRITICAL_SHARE = 0.05
const INSTANCES = ModelRepository.defaultInstances()

/** 5% Critical, 95% Low, decided by a PRNG seeded per block (the same mix for every contender). */
const mix = (seed: number) => {
  const next = rng(seed)
  return (): Priority.Priority => (next() < CRITICAL_SHARE ? "Critical" : "Low")
}

type Load = (outstanding: number, durationMs: number, loaded: boolean, round: number) => Promise<LoadResult>

const main = async () => {
  log(`priority: ${ROUNDS} rounds × (${UNLOADED_MS} ms unloaded + ${LOADED_MS} ms loaded) per contender${args.quick ? " (quick)" : ""}`)
  const engineConfigs = [
    { name: "on-c4", label: `engine, batching on (workers ×${INSTANCES}, maxConcurrent ${AsyncConfig.defaults.maxConcurrentRequests})`, batching: true, maxConcurrentRequests: AsyncConfig.defaults.maxConcurrentRequests },
    { name: "off-c4", label: `engine, batching off (workers ×${INSTANCES}, maxConcurrent ${AsyncConfig.defaults.maxConcurrentRequests})`, batching: false, maxConcurrentRequests: AsyncConfig.defaults.maxConcurrentRequests },
    { name: "on-c1", label: `engine, batching on (workers ×${INSTANCES}, maxConcurrent 1)`, batching: true, maxConcurrentRequests: 1 },
    { name: "off-c1", label: `engine, batching off (workers ×${INSTANCES}, maxConcurrent 1)`, batching: false, maxConcurrentRequests: 1 },
    { name: "on-c1-inthread", label: "diag: engine over the in-thread pool, batching on, maxConcurrent 1", batching: true, maxConcurrentRequests: 1, inThread: true },
    { name: "off-c1-inthread", label: "diag: engine over the in-thread pool, batching off, maxConcurrent 1", batching: false, maxConcurrentRequests: 1, inThread: true }
  ]
  const engines: Array<EngineHandle> = []
  const contenders: Array<{ name: string; label: string; engine: boolean; goal: boolean; load: Load }> = []
  for (const c of engineConfigs) {
    const batching = c.batching ? { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 } : undefined
    const h = await startEngine(engineLayer(
      "inThread" in c ? inThreadPool([{ name: "mlp", batching }]) : workerPool([{ name: "mlp", instances: INSTANCES, batching }]),
      { maxConcurrentRequests: c.maxConcurrentRequests }
    ))
    engines.push(h)
    contenders.push({
      name: c.name,
      label: c.label,
      engine: true,
      goal: !("inThread" in c),
      load: (outstanding, ms, loaded, round) => {
        const pick = mix(1000 + round)
        return viaEngine(h, loaded ? () => pick() : () => "Critical")(outstanding, ms)
      }
    })
  }
  const sessionRaw = await openSession("mlp")
  const sessionPq = await openSession("mlp")
  const feeds = () => ({ input: new ort.Tensor("float32", mlpRow, [1, 784]) })
  contenders.push({
    name: "raw",
    label: "ref: per-request session.run, in-thread (no priorities)",
    engine: false,
    goal: false,
    load: (outstanding, ms, loaded, round) => {
      const pick = mix(1000 + round)
      return closedLoopAsync(outstanding, ms, () => ({ cls: loaded ? pick() : "Critical", run: () => sessionRaw.run(feeds()) }))
    }
  })
  const pq = new PQueue({ concurrency: AsyncConfig.defaults.maxConcurrentRequests })
  contenders.push({
    name: "pqueue",
    label: `ref: p-queue(${AsyncConfig.defaults.maxConcurrentRequests}) with priorities + session.run, in-thread`,
    engine: false,
    goal: false,
    load: (outstanding, ms, loaded, round) => {
      const pick = mix(1000 + round)
      return closedLoopAsync(outstanding, ms, () => {
        const cls = loaded ? pick() : "Critical"
        return { cls, run: () => pq.add(() => sessionPq.run(feeds()), { priority: cls === "Critical" ? 3 : 0 }) }
      })
    }
  })

  for (const c of contenders) {
    await c.load(1, 300, false, 0)
    await c.load(OUTSTANDING, 1000, true, 0)
  }
  const blocks = contenders.flatMap((c) => [
    { name: `${c.name}/unloaded`, run: (r: number) => c.load(1, UNLOADED_MS, false, r) },
    { name: `${c.name}/loaded`, run: (r: number) => c.load(OUTSTANDING, LOADED_MS, true, r) }
  ])
  const results = await alternate(ROUNDS, blocks, (r, name, x) => {
    const crit = x.latency["Critical"]
    log(`  round ${r + 1} ${name.padEnd(16)} ${fmt(x.reqPerSec)} req/s, Critical n ${crit?.n ?? 0} p50 ${fmt(crit?.p50 ?? NaN)} p99 ${fmt(crit?.p99 ?? NaN)} ms${x.meanBatch === undefined ? "" : `, rows/run ${fmt(x.meanBatch)}`}`)
  }, "priority")

  const crit = (name: string, key: "p50" | "p99") => results[name]!.map((x) => x.latency["Critical"]?.[key] ?? NaN)
  const low = (name: string, key: "p50" | "p99") => results[name]!.map((x) => x.latency["Low"]?.[key] ?? NaN)
  const rows: Array<Row> = contenders.map((c) => {
    const u = `${c.name}/unloaded`
    const l = `${c.name}/loaded`
    const p99Ratio = median(crit(l, "p99").map((x, r) => x / crit(u, "p99")[r]!))
    return {
      contender: c.label,
      "unloaded Critical p50 ms": median(crit(u, "p50")),
      "unloaded Critical p99 ms": median(crit(u, "p99")),
      "loaded Critical p50 ms": median(crit(l, "p50")),
      "loaded Critical p99 ms": median(crit(l, "p99")),
      "loaded Low p99 ms": median(low(l, "p99")),
      "loaded req/s": median(results[l]!.map((x) => x.reqPerSec)),
      "rows/run": c.engine ? fmt(median(results[l]!.map((x) => x.meanBatch ?? NaN))) : "",
      "Critical p99 loaded/unloaded": ratio(p99Ratio),
      _ratio: p99Ratio
    }
  })
  const goals: Array<Goal> = rows.filter((_, i) => contenders[i]!.goal).map((r) =>
    goal(`Critical p99 loaded/unloaded: ${r.contender}`, "≤ 1.5×", r._ratio as number, (r._ratio as number) <= 1.5, ratio(r._ratio as number))
  )
  for (const r of rows) delete r._ratio

  section(`priority: 64 outstanding, 95% Low / 5% Critical vs Critical alone (${ROUNDS} rounds; medians; ratio = median of per-round ratios)`)
  console.log(table(rows))
  section("priority: goals")
  console.log(goalsTable(goals))
  const file = writeResults("priority", {
    args: { quick: args.quick, rounds: ROUNDS, loadedMs: LOADED_MS, unloadedMs: UNLOADED_MS, outstanding: OUTSTANDING, criticalShare: CRITICAL_SHARE },
    contenders: contenders.map((c) => ({ name: c.name, label: c.label })),
    table: rows,
    rounds: results,
    goals
  })
  log(`wrote ${file}`)
  await Promise.all([...engines.map((h) => h.dispose()), sessionRaw.release(), sessionPq.release()])
}

await main()
