/**
 * cache: what the response cache costs and what it gives. Not part of `npm run bench` (no goal);
 * run it by hand:
 *
 *   node --expose-gc bench/cache.ts [--quick]
 *
 * 1. Main-thread µs of `ResponseCache.keyOf` for one MLP row (784 float32, 3 KB) and of a hit's
 *    lookup (its outputs copied out), median over rounds.
 * 2. The engine over the bundled MLP in a worker thread (batching on, one instance), 64
 *    outstanding, every request the same row: without a cache, and with a 1 MB cache and the
 *    model's `responseCache` on (every request after the first is a hit), alternating rounds.
 *    req/s, p50 and main-thread CPU µs per request; the ratio is a best case (a 100% hit rate).
 */
import * as ResponseCache from "../src/ResponseCache.ts"
import * as Tensor from "../src/Tensor.ts"
import { alternate, fmt, log, median, parseArgs, ratio, section, table, writeResults } from "./lib/common.ts"
import { mlpInputs, viaEngine } from "./lib/contenders.ts"
import { engineRow } from "./lib/load.ts"
import { engineLayer, startEngine, workerPool } from "./lib/pools.ts"

const args = parseArgs()
const rounds = args.quick ? 3 : 5
const blockMs = args.quick ? 1000 : 2500

section("ResponseCache alone (µs a request, main thread)")
const perOp = (n: number, f: () => void): number => {
  const t = performance.now()
  for (let i = 0; i < n; i++) f()
  return ((performance.now() - t) * 1000) / n
}
const cache = ResponseCache.make(1_000_000)
const key = ResponseCache.keyOf("mlp", "1#0", mlpInputs)
cache.insert(key, { outputs: { logits: Tensor.float32(new Float32Array(10), [1, 10]) }, deviceUsed: "cpu" })
const keyUs: Array<number> = []
const hitUs: Array<number> = []
for (let r = 0; r < 7; r++) {
  keyUs.push(perOp(50_000, () => ResponseCache.keyOf("mlp", "1#0", mlpInputs)))
  hitUs.push(perOp(50_000, () => cache.lookup(key)))
}
log(table([
  { op: "keyOf, one MLP row (3 KB)", "µs": fmt(median(keyUs)) },
  { op: "lookup, a hit (one output of 10 floats copied out)", "µs": fmt(median(hitUs)) }
]))

section("the engine, 64 outstanding, the same row every request")
const without = await startEngine(engineLayer(workerPool([{ name: "mlp", instances: 1, batching: { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 } }]), {}))
const cached = await startEngine(engineLayer(
  workerPool([{ name: "mlp", instances: 1, batching: { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 }, responseCache: true }]),
  { responseCacheBytes: 1_000_000 }
))
const contenders = [
  { name: "no cache", run: () => viaEngine(without)(64, blockMs) },
  { name: "response cache, every request a hit", run: () => viaEngine(cached)(64, blockMs) }
]
// warm both (V8 optimises the engine over its first seconds of load)
for (const c of contenders) await c.run()
const results = await alternate(rounds, contenders)
const rows = contenders.map((c) => engineRow(c.name, results[c.name]!))
const perRound = results[contenders[1]!.name]!.map((r, i) => r.reqPerSec / results[contenders[0]!.name]![i]!.reqPerSec)
log(table(rows))
log(`req/s with the cache over without, median of ${rounds} rounds: ${ratio(median(perRound))}`)
writeResults("cache", { keyUs: median(keyUs), hitUs: median(hitUs), rows, perRoundRatio: perRound })
await without.dispose()
await cached.dispose()
