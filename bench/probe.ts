/**
 * probe: one engine configuration at one level for a few seconds, for profiling the hot path
 * (`node --cpu-prof bench/probe.ts [--outstanding=64] [--ms=3000] [--warmup-ms=4000] [--batching=off] [--telemetry=noop]`):
 * the warm-up lets V8 optimise the engine first (3-4 s of load on these 2 cores).
 * Prints one JSON line: req/s, p50/p99, main-thread CPU µs and heap bytes per request, rows/run.
 */
import { parseArgs } from "./lib/common.ts"
import { viaEngine } from "./lib/contenders.ts"
import { engineLayer, startEngine, workerPool } from "./lib/pools.ts"

const args = parseArgs()
const outstanding = Number(args.options["outstanding"] ?? 64)
const ms = Number(args.options["ms"] ?? 3000)
const batching = args.options["batching"] !== "off"
const h = await startEngine(engineLayer(
  workerPool([{ name: "mlp", instances: Number(args.options["instances"] ?? 1), batching: batching ? { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 } : undefined }]),
  { maxConcurrentRequests: Number(args.options["concurrent"] ?? 4) },
  args.options["telemetry"] === "noop" ? "noop" : "metrics"
))
const load = viaEngine(h)
await load(outstanding, Number(args.options["warmup-ms"] ?? 4000))
const r = await load(outstanding, ms)
console.log(JSON.stringify({ outstanding, batching, failed: r.failed, firstError: r.firstError, reqPerSec: Math.round(r.reqPerSec), p50: r.latency["all"]?.p50, p99: r.latency["all"]?.p99, mainCpuUsPerReq: +r.mainCpuUsPerReq.toFixed(2), heapBytesPerReq: Math.round(r.heapBytesPerReq), rowsPerRun: r.meanBatch }))
await h.dispose()
