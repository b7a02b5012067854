/**
 * sizing: does learned batch sizing (`batching.sizing: "learned"`) choose batch sizes better than
 * fixed `preferredBatchSizes`? A deterministic simulation (`lib/sizingSim.ts`): the engine's own
 * Scheduler and BatchPolicy decide on simulated time, in front of a device whose run costs a
 * fixed time plus a time per row (±10% noise), behind instances reached by a hop each way. No
 * device and no noise from this machine: the same command prints the same figures anywhere.
 *
 * Devices (from measured figures where we have them):
 * - gpu: the H200's WebGPU MLP (1 ms a run + 0.0057 ms a row: 256 rows in 2.45 ms), two
 *   instances sharing the GPU, hop 0.05 ms (threads) and 0.3 ms (processes, the GPU default);
 * - gpu-heavy: a model 10× heavier per row (1 ms + 0.05 ms a row), hop 0.3 ms;
 * - cpu: a CPU-like cost (0.03 ms + 0.02 ms a row), one instance, hop 0.03 ms, at most 64 rows.
 * Loads: open (Poisson arrivals of 1-row requests at 1%, 10%, 40% and 80% of the device's full-batch
 * capacity) and closed (1, 64, 256 outstanding). Policies: greedy (no delay), a 2 ms delay, the
 * delay with preferred sizes max/4 and max/2, and learned sizing within a 2 ms and a 10 ms delay.
 *
 * Then the same question on this machine's engine, no simulation: a wide, cheap MLP
 * (1024-16-1000) in two child processes (process isolation, as GPU models default to), batching
 * within 2 ms, fixed sizing against learned, alternating, closed loop of one-row requests at 64 and
 * 256 outstanding (`--no-engine` skips it).
 *
 * Usage: node bench/sizing.ts [--quick] [--seed=N] [--rounds=N] [--no-engine]
 */
import { Duration } from "effect"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as OnnxModelPool from "../src/onnx/OnnxModelPool.ts"
import * as Tensor from "../src/Tensor.ts"
import { writeRepository } from "../scripts/gpu/model.ts"
import { alternate, fmt, goal, type Goal, goalsTable, median, parseArgs, ratio, type Row, section, table, writeResults } from "./lib/common.ts"
import { withRunCounts } from "./lib/contenders.ts"
import { closedLoopEffect } from "./lib/load.ts"
import { engineLayer, startEngine } from "./lib/pools.ts"
import { type Device, type Load, type Result, simulate } from "./lib/sizingSim.ts"

const args = parseArgs()
const SEED = Number(args.options["seed"] ?? 7)
const MEASURED = args.quick ? 8_000 : 40_000
const WARMUP = args.quick ? 2_000 : 5_000

interface Scenario {
  readonly name: string
  readonly device: Device
  readonly instances: number
  readonly hopMs: number
  readonly maxBatchSize: number
}

const gpu: Device = { fixedMs: 1, perRowMs: 0.0057, noise: 0.1, shared: true }
const scenarios: ReadonlyArray<Scenario> = [
  { name: "gpu, hop 0.05 ms", device: gpu, instances: 2, hopMs: 0.05, maxBatchSize: 256 },
  { name: "gpu, hop 0.3 ms", device: gpu, instances: 2, hopMs: 0.3, maxBatchSize: 256 },
  { name: "gpu-heavy, hop 0.3 ms", device: { fixedMs: 1, perRowMs: 0.05, noise: 0.1, shared: true }, instances: 2, hopMs: 0.3, maxBatchSize: 256 },
  { name: "cpu", device: { fixedMs: 0.03, perRowMs: 0.02, noise: 0.1, shared: false }, instances: 1, hopMs: 0.03, maxBatchSize: 64 }
]

const config = (maxBatchSize: number, delayMs: number, preferred: ReadonlyArray<number>, sizing: BatchPolicy.Sizing): BatchPolicy.BatchingConfig => ({
  ...BatchPolicy.disabled,
  enabled: true,
  maxBatchSize,
  maxQueueDelay: Duration.millis(delayMs),
  preferredBatchSizes: preferred,
  sizing
})

const policies = (max: number): ReadonlyArray<readonly [string, BatchPolicy.BatchingConfig, "greedy" | "delay" | "preferred" | "learned"]> => [
  ["greedy", config(max, 0, [], "fixed"), "greedy"],
  ["delay 2 ms", config(max, 2, [], "fixed"), "delay"],
  [`delay 2 ms, preferred ${max / 4}`, config(max, 2, [max / 4], "fixed"), "preferred"],
  [`delay 2 ms, preferred ${max / 2}`, config(max, 2, [max / 2], "fixed"), "preferred"],
  ["learned, delay 2 ms", config(max, 2, [], "learned"), "learned"],
  ["learned, delay 10 ms", config(max, 10, [], "learned"), "learned"]
]

const loadsOf = (s: Scenario): ReadonlyArray<readonly [string, Load]> => {
  const capacityPerMs = (s.maxBatchSize / (s.device.fixedMs + s.device.perRowMs * s.maxBatchSize)) * (s.device.shared ? 1 : s.instances)
  const open = (share: number) => [`open ${share * 100}%`, { _tag: "open", requestsPerMs: capacityPerMs * share }] as const
  const closed = (n: number) => [`closed ${n}`, { _tag: "closed", outstanding: n }] as const
  return [open(0.01), open(0.1), open(0.4), open(0.8), closed(1), closed(64), closed(256)]
}

const rows: Array<Row> = []
const cases: Array<{ scenario: string; load: string; results: Record<string, Result & { kind: string }> }> = []
for (const s of scenarios) {
  section(`${s.name}: ${s.device.fixedMs} ms + ${s.device.perRowMs} ms a row, ${s.instances} instance(s)${s.device.shared ? " sharing one device" : ""}, at most ${s.maxBatchSize} rows`)
  const scenarioRows: Array<Row> = []
  for (const [loadName, load] of loadsOf(s)) {
    const results: Record<string, Result & { kind: string }> = {}
    for (const [name, batching, kind] of policies(s.maxBatchSize)) {
      const r = simulate({ batching, instances: s.instances, depth: 2, hopMs: s.hopMs, device: s.device, load, rowsPerRequest: 1, warmup: WARMUP, measured: MEASURED, seed: SEED })
      results[name] = { ...r, kind }
      const row = { scenario: s.name, load: loadName, policy: name, "req/s": Math.round(r.throughputPerS), "p50 ms": +r.p50Ms.toFixed(2), "p99 ms": +r.p99Ms.toFixed(2), "rows/run": +r.rowsPerRun.toFixed(1), "device busy": `${Math.round(r.deviceBusy * 100)}%` }
      scenarioRows.push(row)
      rows.push(row)
    }
    cases.push({ scenario: s.name, load: loadName, results })
  }
  console.log(table(scenarioRows, ["load", "policy", "req/s", "p50 ms", "p99 ms", "rows/run", "device busy"]))
}

/** Learned (2 ms delay) against the best of some fixed policies in one case: p50 and throughput ratios. */
const against = (c: (typeof cases)[number], kinds: ReadonlyArray<string>) => {
  const learned = c.results["learned, delay 2 ms"]!
  const fixed = Object.values(c.results).filter((r) => kinds.includes(r.kind))
  const bestP50 = Math.min(...fixed.map((r) => r.p50Ms))
  const bestThroughput = Math.max(...fixed.map((r) => r.throughputPerS))
  return { p50: learned.p50Ms / bestP50, throughput: learned.throughputPerS / bestThroughput }
}

section("learned sizing (2 ms delay) against the best fixed policy of each case")
const summary = cases.map((c) => {
  const preferred = against(c, ["preferred"])
  const delay = against(c, ["delay"])
  return {
    scenario: c.scenario,
    load: c.load,
    "p50 / best preferred": ratio(preferred.p50),
    "req/s / best preferred": ratio(preferred.throughput),
    "p50 / delay 2 ms": ratio(delay.p50),
    "req/s / delay 2 ms": ratio(delay.throughput),
    preferredP50: preferred.p50,
    preferredThroughput: preferred.throughput,
    delayP50: delay.p50,
    delayThroughput: delay.throughput
  }
})
console.log(table(summary, ["scenario", "load", "p50 / best preferred", "req/s / best preferred", "p50 / delay 2 ms", "req/s / delay 2 ms"]))

const worst = (xs: ReadonlyArray<number>, f: (...v: Array<number>) => number) => f(...xs)
const goals: Array<Goal> = [
  goal("learned p50 vs the best fixed preferredBatchSizes, worst case", "≤ 1.05×", worst(summary.map((s) => s.preferredP50), Math.max), worst(summary.map((s) => s.preferredP50), Math.max) <= 1.05, ratio(worst(summary.map((s) => s.preferredP50), Math.max))),
  goal("learned req/s vs the best fixed preferredBatchSizes, worst case", "≥ 0.95×", worst(summary.map((s) => s.preferredThroughput), Math.min), worst(summary.map((s) => s.preferredThroughput), Math.min) >= 0.95, ratio(worst(summary.map((s) => s.preferredThroughput), Math.min))),
  goal("learned p50 vs the 2 ms delay alone (fixed sizing), worst case", "≤ 1.05×", worst(summary.map((s) => s.delayP50), Math.max), worst(summary.map((s) => s.delayP50), Math.max) <= 1.05, ratio(worst(summary.map((s) => s.delayP50), Math.max))),
  goal("learned req/s vs the 2 ms delay alone, worst case", "≥ 0.95×", worst(summary.map((s) => s.delayThroughput), Math.min), worst(summary.map((s) => s.delayThroughput), Math.min) >= 0.95, ratio(worst(summary.map((s) => s.delayThroughput), Math.min)))
]
const tally = (xs: ReadonlyArray<number>, lowerIsBetter: boolean) => {
  const better = xs.filter((x) => (lowerIsBetter ? x < 0.95 : x > 1.05)).length
  const worse = xs.filter((x) => (lowerIsBetter ? x > 1.05 : x < 0.95)).length
  return `${better} better, ${xs.length - better - worse} within 5%, ${worse} worse`
}
section("tally over the cases (5% either way counts as the same)")
console.log(table([
  { against: "best fixed preferredBatchSizes", p50: tally(summary.map((s) => s.preferredP50), true), "req/s": tally(summary.map((s) => s.preferredThroughput), false) },
  { against: "2 ms delay alone (fixed sizing)", p50: tally(summary.map((s) => s.delayP50), true), "req/s": tally(summary.map((s) => s.delayThroughput), false) }
]))
console.log(`\nseed ${SEED}, ${WARMUP} requests of warm-up and ${MEASURED} measured per cell; ${fmt(rows.length)} cells`)

/** Fixed against learned sizing on this machine's engine: rows and ratios, or undefined when skipped. */
const onThisMachine = async () => {
  const rounds = Number(args.options["rounds"] ?? (args.quick ? 2 : 4))
  const blockMs = args.quick ? 1000 : 2000
  const base = { executionProviders: ["cpu"], instances: 2, intraOpNumThreads: 1, isolation: "process" }
  const repo = writeRepository([1024, 16, 1000], {
    fixed: { ...base, batching: { enabled: true, maxBatchSize: 256, maxQueueDelayMs: 2 } },
    learned: { ...base, batching: { enabled: true, maxBatchSize: 256, maxQueueDelayMs: 2, sizing: "learned" } }
  })
  const engine = await startEngine(engineLayer(OnnxModelPool.layer({ repository: repo.root }), { maxConcurrentRequests: 4, maxQueuedRequests: 4096 }))
  const row = Tensor.float32(repo.input(1, 7), [1, 1024])
  const block = (model: string, k: number, ms: number) => async () => {
    const before = { ...engine.counts }
    const r = await engine.runtime.runPromise(closedLoopEffect(k, ms, () => ({ run: engine.engine.infer(InferenceRequest.make(model, { input: row })) })))
    return withRunCounts(r, before, engine.counts)
  }
  for (const model of ["fixed", "learned"]) await block(model, 64, 500)()
  const out = []
  for (const k of [64, 256]) {
    const r = await alternate(rounds, ["fixed", "learned"].map((name) => ({ name, run: block(name, k, blockMs) })), (round, name, x) =>
      console.error(`  round ${round} ${name} k=${k}: ${fmt(x.reqPerSec)} req/s`), `engine-${k}`)
    const paired = (f: (x: (typeof r)[string][number]) => number) => median(r["learned"]!.map((x, i) => f(x) / f(r["fixed"]![i]!)))
    for (const name of ["fixed", "learned"]) {
      const xs = r[name]!
      out.push({
        outstanding: k,
        sizing: name,
        "req/s": Math.round(median(xs.map((x) => x.reqPerSec))),
        "p50 ms": +median(xs.map((x) => x.latency["all"]!.p50)).toFixed(2),
        "p99 ms": +median(xs.map((x) => x.latency["all"]!.p99)).toFixed(2),
        "rows/run": +median(xs.map((x) => x.meanBatch ?? 1)).toFixed(1),
        "learned / fixed req/s": name === "learned" ? ratio(paired((x) => x.reqPerSec)) : "",
        "learned / fixed p50": name === "learned" ? ratio(paired((x) => x.latency["all"]!.p50)) : "",
        reqPerSecRatio: paired((x) => x.reqPerSec)
      })
    }
  }
  await engine.dispose()
  repo.remove()
  return { rounds, blockMs, rows: out }
}

const engineRows = args.options["no-engine"] === "true" ? undefined : await onThisMachine()
if (engineRows !== undefined) {
  section(`this machine's engine: MLP 1024-16-1000, 2 child processes, batching within 2 ms, one-row requests (medians of ${engineRows.rounds} rounds × ${engineRows.blockMs} ms; ratios paired per round)`)
  console.log(table(engineRows.rows, ["outstanding", "sizing", "req/s", "p50 ms", "p99 ms", "rows/run", "learned / fixed req/s", "learned / fixed p50"]))
}

section("goals")
console.log(goalsTable(goals))
writeResults("sizing", { seed: SEED, measured: MEASURED, warmup: WARMUP, scenarios, rows, summary, engine: engineRows, goals })
