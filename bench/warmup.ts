/**
 * warmup: what config.json's `warmup` saves the first requests of a freshly loaded model. Not
 * part of `npm run bench` (no goal); run it by hand:
 *
 *   node --expose-gc bench/warmup.ts [--quick] [--rounds=N]
 *
 * Each round loads the bundled MLP in a fresh pool (one worker thread), without a warm-up and
 * with `{"warmup": [{"count": 2}]}`, alternating which goes first, and times its first three
 * native runs of one row in the worker (`runMs`) and the first `run` as the caller sees it
 * (the hop to the worker included). Medians over rounds.
 */
import { ManagedRuntime } from "effect"
import * as OnnxModelPool from "../src/onnx/OnnxModelPool.ts"
import { alternate, fmt, log, median, parseArgs, ratio, section, table, writeResults } from "./lib/common.ts"
import { mlpInputs } from "./lib/contenders.ts"
import { tempRepository } from "./lib/pools.ts"

const args = parseArgs()
const rounds = Number(args.options["rounds"] ?? (args.quick ? 3 : 7))

interface FirstRuns {
  readonly runMs: ReadonlyArray<number>
  readonly firstCallMs: number
  readonly loadMs: number
}

const firstRuns = async (warmup: ReadonlyArray<unknown> | undefined): Promise<FirstRuns> => {
  const root = tempRepository([{ name: "mlp", config: { instances: 1, intraOpNumThreads: 1, ...(warmup === undefined ? {} : { warmup }) } }])
  const t0 = performance.now()
  const runtime = ManagedRuntime.make(OnnxModelPool.layerWithControl({ repository: root }))
  try {
    const pool = await runtime.runPromise(OnnxModelPool.OnnxModelPool)
    const loadMs = performance.now() - t0
    const runMs: Array<number> = []
    let firstCallMs = NaN
    for (let i = 0; i < 3; i++) {
      const t = performance.now()
      const r = await runtime.runPromise(pool.run("mlp", mlpInputs, { requestId: `warmup-${i}` }))
      if (i === 0) firstCallMs = performance.now() - t
      runMs.push(r.runMs)
    }
    return { runMs, firstCallMs, loadMs }
  } finally {
    await runtime.dispose()
  }
}

section("the MLP's first runs after a load, without and with a warm-up (ms)")
const contenders = [
  { name: "no warmup", run: () => firstRuns(undefined) },
  { name: "warmup count 2", run: () => firstRuns([{ count: 2 }]) }
]
const results = await alternate(rounds, contenders)
const rows = contenders.map((c) => {
  const rs = results[c.name]!
  return {
    contender: c.name,
    "1st run": fmt(median(rs.map((r) => r.runMs[0]!))),
    "2nd run": fmt(median(rs.map((r) => r.runMs[1]!))),
    "3rd run": fmt(median(rs.map((r) => r.runMs[2]!))),
    "1st call (hop included)": fmt(median(rs.map((r) => r.firstCallMs))),
    "load": fmt(median(rs.map((r) => r.loadMs)))
  }
})
log(table(rows))
const first = (name: string) => median(results[name]!.map((r) => r.runMs[0]!))
log(`first native run, with the warm-up over without: ${ratio(first("warmup count 2") / first("no warmup"))} (median of ${rounds} rounds)`)
writeResults("warmup", { rows, rounds })
