/**
 * profile: where the main thread's time goes while the engine serves a closed loop, from a V8
 * CPU profile (and optionally a sampling heap profile) taken in steady state only — after a
 * warm-up, over one measured block — so that start-up and JIT warm-up do not pollute it.
 *
 * Not part of `npm run bench` (it measures no goal); run it by hand:
 *
 *   node --expose-gc bench/profile.ts [--mode=on-workers|off-workers|on-inthread|off-inthread]
 *     [--outstanding=64] [--maxConcurrent=4] [--telemetry=metrics|noop] [--tracing=on|off]
 *     [--ms=4000] [--heap] [--save]
 *
 * Prints self time by category (Effect runtime, engine, WorkerHost, telemetry, tracing, GC,
 * idle, postMessage, onnxruntime …) and the top functions; `--heap` adds allocated bytes per
 * request by function; `--save` writes the .cpuprofile to bench/results/.
 */
import { Effect, References } from "effect"
import * as Fs from "node:fs"
import { Session } from "node:inspector/promises"
import * as Path from "node:path"
import { fmt, log, parseArgs, resultsDir, table } from "./lib/common.ts"
import { viaEngine } from "./lib/contenders.ts"
import { engineLayer, inThreadPool, startEngine, type TelemetryKind, workerPool } from "./lib/pools.ts"

const args = parseArgs()
const mode = args.options["mode"] ?? "on-workers"
const outstanding = Number(args.options["outstanding"] ?? 64)
const maxConcurrent = Number(args.options["maxConcurrent"] ?? 4)
const telemetry = (args.options["telemetry"] ?? "metrics") as TelemetryKind
const tracing = (args.options["tracing"] ?? "on") === "on"
const ms = Number(args.options["ms"] ?? 4000)

interface ProfileNode {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly children?: ReadonlyArray<number>
}
interface Profile {
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

/** A function's category, from its script URL and name. */
const category = (fn: string, url: string): string => {
  if (fn === "(garbage collector)") return "GC"
  if (fn === "(idle)") return "idle (waiting for the worker / I/O)"
  if (fn === "(program)") return "(program: native, unattributed)"
  if (fn === "postMessage") return "postMessage (structured clone to the worker)"
  if (url.includes("/src/Telemetry.ts") || url.includes("/effect/dist/Metric.js")) return "telemetry (Metric updates)"
  if (url.includes("internal/tracer.js") || fn === "makeSpanUnsafe" || fn === "addSpanStackTrace") return "tracing (spans, stack capture)"
  if (url.includes("/src/onnx/")) return "OnnxModelPool / WorkerHost"
  if (url.includes("/src/Batch.ts") || url.includes("/src/Tensor.ts")) return "batch concat/split"
  if (url.includes("/src/")) return "engine (src/*.ts)"
  if (url.includes("/effect/dist/")) return "Effect runtime"
  if (url.includes("onnxruntime")) return "onnxruntime-node (incl. native run)"
  if (url.includes("/bench/")) return "load generator (bench)"
  if (url.startsWith("node:") || url === "" || url.includes("internal/")) return "Node internals / native"
  return "other"
}

const analyse = (profile: Profile, requests: number) => {
  const dt = new Map<number, number>()
  for (let i = 0; i < profile.samples.length; i++) dt.set(profile.samples[i]!, (dt.get(profile.samples[i]!) ?? 0) + (profile.timeDeltas[i] ?? 0))
  let total = 0
  const byCategory = new Map<string, number>()
  const byFunction = new Map<string, number>()
  for (const n of profile.nodes) {
    const t = dt.get(n.id) ?? 0
    if (t === 0) continue
    total += t
    const { functionName, lineNumber, url } = n.callFrame
    const cat = category(functionName, url)
    byCategory.set(cat, (byCategory.get(cat) ?? 0) + t)
    const key = `${functionName || "(anonymous)"} ${url.split("/").slice(-2).join("/")}:${lineNumber + 1}`
    byFunction.set(key, (byFunction.get(key) ?? 0) + t)
  }
  const rows = (m: Map<string, number>, n: number) =>
    [...m].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, v]) => ({
      name: k,
      "share %": +(100 * v / total).toFixed(1),
      "µs/request": +(v / requests).toFixed(2)
    }))
  return { totalMs: total / 1000, categories: rows(byCategory, 30), functions: rows(byFunction, 30) }
}

const main = async () => {
  const batching = mode.startsWith("on") ? { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 } : undefined
  const pool = mode.endsWith("inthread") ? inThreadPool([{ name: "mlp", batching }]) : workerPool([{ name: "mlp", instances: 1, batching }])
  const h = await startEngine(engineLayer(pool, { maxConcurrentRequests: maxConcurrent }, telemetry))
  const load = viaEngine(h)
  const run = (d: number) =>
    tracing ? load(outstanding, d) : h.runtime.runPromise(Effect.provideService(Effect.promise(() => load(outstanding, d)), References.TracerEnabled, false))
  log(`profile: ${mode}, ${outstanding} outstanding, maxConcurrent ${maxConcurrent}, telemetry ${telemetry}, tracing ${tracing ? "on" : "off"}; warm-up 4 s`)
  for (let i = 0; i < 4; i++) await run(1000)
  const session = new Session()
  session.connect()
  await session.post("Profiler.enable")
  await session.post("Profiler.setSamplingInterval", { interval: 100 })
  if (args.options["heap"] === "true") {
    await session.post("HeapProfiler.startSampling", { samplingInterval: 512, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true })
  }
  await session.post("Profiler.start")
  const r = await run(ms)
  const { profile } = (await session.post("Profiler.stop")) as unknown as { profile: Profile }
  const heap = args.options["heap"] === "true" ? ((await session.post("HeapProfiler.stopSampling")) as unknown as { profile: { head: HeapNode } }).profile : undefined
  session.disconnect()
  const a = analyse(profile, r.completed)
  console.log(`\n## profile: ${mode}, ${outstanding} outstanding, maxConcurrent ${maxConcurrent}, telemetry ${telemetry}, tracing ${tracing ? "on" : "off"}\n`)
  console.log(`${fmt(r.reqPerSec)} req/s, p50 ${fmt(r.latency["all"]!.p50)} ms, p99 ${fmt(r.latency["all"]!.p99)} ms, rows/run ${fmt(r.meanBatch ?? NaN)}, main ELU ${fmt(r.mainELU)}, process CPU ${fmt(r.cpuUsPerReq)} µs/request`)
  console.log(`main-thread profile: ${fmt(a.totalMs)} ms sampled over ${r.completed} requests (${fmt((a.totalMs * 1000) / r.completed)} µs/request)\n`)
  console.log(table(a.categories))
  console.log("")
  console.log(table(a.functions))
  if (heap !== undefined) {
    const byFn = new Map<string, number>()
    let bytes = 0
    const walk = (n: HeapNode) => {
      const key = `${n.callFrame.functionName || "(anonymous)"} ${n.callFrame.url.split("/").slice(-2).join("/")}:${n.callFrame.lineNumber + 1}`
      byFn.set(key, (byFn.get(key) ?? 0) + n.selfSize)
      bytes += n.selfSize
      for (const c of n.children) walk(c)
    }
    walk(heap.head)
    console.log(`\nallocated (sampled): ${fmt(bytes / r.completed)} bytes/request\n`)
    console.log(table([...byFn].sort((x, y) => y[1] - x[1]).slice(0, 25).map(([k, v]) => ({ function: k, "bytes/request": Math.round(v / r.completed) }))))
  }
  if (args.options["save"] === "true") {
    Fs.mkdirSync(resultsDir, { recursive: true })
    const file = Path.join(resultsDir, `profile-${mode}-${outstanding}.cpuprofile`)
    Fs.writeFileSync(file, JSON.stringify(profile))
    log(`wrote ${file}`)
  }
  await h.dispose()
}

interface HeapNode {
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly selfSize: number
  readonly children: ReadonlyArray<HeapNode>
}

await main()
