/**
 * Soak: the OIP server on the bundled MLP, in this process, under a closed loop of 64
 * outstanding HTTP requests for ten minutes, 10% of them aborted by the client at a random
 * moment within the median latency (so while sent, queued or running; the few answered first
 * are counted apart). After a warm-up it samples memory every 10 s, with a
 * full GC first when `--expose-gc` is on: RSS, heap, external and array buffers, with the
 * engine's diagnostics (queued, running, unsettled, abandoned by stage) and the interval's
 * throughput and latency. It prints a table and the drift of RSS and heap (goal: RSS < 10%),
 * and writes `bench/results/soak.json`.
 *
 * It exits 1 on anything unexpected: a status other than 200, a connection error on a request
 * that was not aborted, or requests still unsettled in the engine once the load has stopped.
 *
 *   node --expose-gc bench/soak.ts [--minutes N] [--clients N] [--cancel-rate R] [--warmup-seconds S] [--sample-seconds S]
 *   npm run soak        (this, then the engine's property soak; SOAK_MINUTES=N sets the minutes,
 *                        since npm hands extra arguments to the last command)
 *
 * The engine's own settings come from the environment, as for the server (`MAX_CONCURRENT_REQUESTS`, …).
 */
import { Context, Effect, Exit, Layer, Scope } from "effect"
import { HttpServer } from "effect/http"
import * as Http from "node:http"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../src/Engine.ts"
import * as Server from "../src/http/Server.ts"
import * as OnnxModelPool from "../src/onnx/OnnxModelPool.ts"
import { TelemetryCollector } from "../src/Telemetry.ts"
import { fmt, gc, goal, goalsTable, log, modelsDir, rng, section, sleep, table, writeResults } from "./lib/common.ts"

// -- arguments ----------------------------------------------------------------------

const flag = (name: string, fallback: number): number => {
  const argv = process.argv.slice(2)
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === `--${name}`) return Number(argv[i + 1])
    if (a.startsWith(`--${name}=`)) return Number(a.slice(name.length + 3))
  }
  return fallback
}

const minutes = flag("minutes", Number(process.env["SOAK_MINUTES"] ?? 10))
const clients = flag("clients", 64)
const cancelRate = flag("cancel-rate", 0.1)
const sampleSeconds = flag("sample-seconds", 10)
const warmupSeconds = flag("warmup-seconds", Math.min(60, Math.max(5, minutes * 6)))
for (const [name, v] of Object.entries({ minutes, clients, cancelRate, sampleSeconds, warmupSeconds })) {
  if (!Number.isFinite(v) || v < 0) {
    console.error(`soak: invalid --${name}: ${v}`)
    process.exit(2)
  }
}

// -- the server -----------------------------------------------------------------------

const App = Server.layer({
  host: "127.0.0.1",
  port: 0,
  bodyLimitBytes: 16 * 1024 * 1024,
  serverName: "soak",
  serverVersion: "0",
  redactPaths: [modelsDir]
}).pipe(
  Layer.provideMerge(AsyncInferenceEngine.layer),
  Layer.provideMerge(Layer.mergeAll(OnnxModelPool.layer({ repository: modelsDir }), TelemetryCollector.layer, AsyncConfigService.layerConfig))
)

const scope = Effect.runSync(Scope.make())
const context = await Effect.runPromise(Layer.build(App).pipe(Scope.provide(scope)))
const address = Context.get(context, HttpServer.HttpServer).address
if (address._tag === "UnixPathAddress") throw new Error("expected a TCP address")
const port = address.port
const engine = Context.get(context, AsyncInferenceEngine)
const diagnostics = () => Effect.runSync(engine.diagnostics)

// -- the load -------------------------------------------------------------------------

const random = rng(20261127)
const body = JSON.stringify({
  inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", data: Array.from({ length: 784 }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5) }]
})

interface Interval {
  ok: number
  aborted: number
  /** Aborted, but the answer came first. */
  abortedLate: number
  latencies: Array<number>
}

const fresh = (): Interval => ({ ok: 0, aborted: 0, abortedLate: 0, latencies: [] })
let interval = fresh()
const totals = { ok: 0, aborted: 0, abortedLate: 0, unexpected: 0 }
const unexpected = new Map<string, number>()
/** Recent median latency, for choosing abort moments. */
let typicalMs = 20

const one = (agent: Http.Agent): Promise<void> =>
  new Promise((resolve) => {
    const started = performance.now()
    const cancel = random() < cancelRate
    const controller = new AbortController()
    let timer: ReturnType<typeof setTimeout> | undefined
    if (cancel) timer = setTimeout(() => controller.abort(), random() * typicalMs)
    let settled = false
    const finish = (label: string) => {
      if (settled) return
      settled = true
      if (timer !== undefined) clearTimeout(timer)
      const ms = performance.now() - started
      if (label === "200") {
        interval.ok++
        totals.ok++
        interval.latencies.push(ms)
        if (cancel) {
          interval.abortedLate++
          totals.abortedLate++
        }
      } else if (cancel && controller.signal.aborted) {
        interval.aborted++
        totals.aborted++
      } else {
        totals.unexpected++
        unexpected.set(label, (unexpected.get(label) ?? 0) + 1)
      }
      resolve()
    }
    const req = Http.request({
      host: "127.0.0.1",
      port,
      method: "POST",
      path: "/v2/models/mlp/infer",
      agent,
      signal: controller.signal,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) }
    }, (response) => {
      response.on("data", () => {})
      response.on("end", () => finish(String(response.statusCode)))
      response.on("error", (e: NodeJS.ErrnoException) => finish(e.code ?? e.message))
    })
    req.on("error", (e: NodeJS.ErrnoException) => finish(e.code ?? e.message))
    req.end(body)
  })

let running = true
const loops = Array.from({ length: clients }, async () => {
  const agent = new Http.Agent({ keepAlive: true, maxSockets: 1 })
  while (running) await one(agent)
  agent.destroy()
})

// -- sampling -------------------------------------------------------------------------

interface Sample {
  readonly atS: number
  readonly rssMiB: number
  readonly heapUsedMiB: number
  readonly externalMiB: number
  readonly arrayBuffersMiB: number
  readonly reqPerSec: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly aborted: number
  readonly queued: number
  readonly runs: number
  readonly unsettled: number
}

const mib = (bytes: number) => bytes / 2 ** 20
const quantile = (xs: Array<number>, q: number) => {
  if (xs.length === 0) return NaN
  xs.sort((a, b) => a - b)
  return xs[Math.min(xs.length - 1, Math.floor(q * xs.length))]!
}

const startedAt = performance.now()
const elapsedS = () => (performance.now() - startedAt) / 1000
const samples: Array<Sample> = []
log(`soak: ${clients} clients, ${cancelRate * 100}% aborted, ${minutes} min (warm-up ${warmupSeconds} s), sample every ${sampleSeconds} s, gc ${typeof (globalThis as { gc?: unknown }).gc === "function" ? "exposed" : "NOT exposed (run with --expose-gc)"}`)

const endAt = startedAt + Math.max(minutes * 60, warmupSeconds) * 1000
let lastSampleAt = performance.now()
await sleep(warmupSeconds * 1000)
interval = fresh()
lastSampleAt = performance.now()
while (performance.now() < endAt) {
  await sleep(Math.min(sampleSeconds * 1000, Math.max(0, endAt - performance.now())))
  const now = performance.now()
  const seconds = (now - lastSampleAt) / 1000
  lastSampleAt = now
  const done = interval
  interval = fresh()
  typicalMs = quantile(done.latencies, 0.5) || typicalMs
  gc()
  const memory = process.memoryUsage()
  const d = diagnostics()
  const sample: Sample = {
    atS: Math.round(elapsedS()),
    rssMiB: mib(memory.rss),
    heapUsedMiB: mib(memory.heapUsed),
    externalMiB: mib(memory.external),
    arrayBuffersMiB: mib(memory.arrayBuffers),
    reqPerSec: done.ok / seconds,
    p50Ms: typicalMs,
    p99Ms: quantile(done.latencies, 0.99),
    aborted: done.aborted,
    queued: d.queued,
    runs: d.runs,
    unsettled: d.unsettled
  }
  samples.push(sample)
  log(`${String(sample.atS).padStart(5)} s  rss ${fmt(sample.rssMiB)} MiB  heap ${fmt(sample.heapUsedMiB)} MiB  ${fmt(sample.reqPerSec)} req/s  p50 ${fmt(sample.p50Ms)} ms  p99 ${fmt(sample.p99Ms)} ms  aborted ${sample.aborted}  unexpected ${totals.unexpected}`)
}

// -- stop, check that nothing is left behind ----------------------------------------------

running = false
await Promise.all(loops)
let settledAfterMs = 0
while (diagnostics().unsettled > 0 && settledAfterMs < 10_000) {
  await sleep(50)
  settledAfterMs += 50
}
const left = diagnostics()
const report = await Effect.runPromise(Server.shutdown("5 seconds").pipe(Effect.provideContext(context)))
await Effect.runPromise(Scope.close(scope, Exit.void))

// -- report ---------------------------------------------------------------------------------

const head = samples.slice(0, 3)
const tail = samples.slice(-3)
const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length)
/** Least-squares slope of `ys` over `xs`, per unit of x. */
const slope = (xs: ReadonlyArray<number>, ys: ReadonlyArray<number>) => {
  const mx = mean(xs)
  const my = mean(ys)
  let num = 0
  let den = 0
  for (let i = 0; i < xs.length; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my)
    den += (xs[i]! - mx) ** 2
  }
  return den === 0 ? 0 : num / den
}
const drift = (field: "rssMiB" | "heapUsedMiB") => {
  const first = mean(head.map((s) => s[field]))
  const last = mean(tail.map((s) => s[field]))
  return {
    firstMiB: first,
    lastMiB: last,
    minMiB: Math.min(...samples.map((s) => s[field])),
    maxMiB: Math.max(...samples.map((s) => s[field])),
    driftPct: ((last - first) / first) * 100,
    slopeMiBPerMin: slope(samples.map((s) => s.atS / 60), samples.map((s) => s[field]))
  }
}
const rss = drift("rssMiB")
const heap = drift("heapUsedMiB")
const leftBehind = left.unsettled + left.queued + left.runs + left.forming
const failures = totals.unexpected + leftBehind

section(`Soak: ${minutes} min, ${clients} outstanding, ${cancelRate * 100}% aborted`)
console.log(table(samples.map((s) => ({
  "t (s)": String(s.atS),
  "RSS MiB": s.rssMiB,
  "heap MiB": s.heapUsedMiB,
  "external MiB": s.externalMiB,
  "req/s": s.reqPerSec,
  "p50 ms": s.p50Ms,
  "p99 ms": s.p99Ms,
  aborted: String(s.aborted),
  queued: String(s.queued),
  unsettled: String(s.unsettled)
}))))
console.log("")
console.log(table([
  { memory: "RSS", ...Object.fromEntries(Object.entries(rss).map(([k, v]) => [k, v])) },
  { memory: "heap used", ...Object.fromEntries(Object.entries(heap).map(([k, v]) => [k, v])) }
]))
console.log("")
const goals = [
  goal("RSS drift, first 3 samples to last 3", "< 10%", rss.driftPct, Math.abs(rss.driftPct) < 10, `${fmt(rss.driftPct, 2)}%`),
  goal("unexpected statuses or errors", "0", totals.unexpected, totals.unexpected === 0, unexpected.size === 0 ? "0" : JSON.stringify(Object.fromEntries(unexpected))),
  goal("left in the engine after the load", "0", leftBehind, leftBehind === 0, JSON.stringify(left))
]
console.log(goalsTable(goals))
console.log(`\n${fmt(totals.ok)} answered, ${fmt(totals.aborted)} aborted by the client (${fmt(totals.abortedLate)} more aborted after their answer), engine abandoned by stage ${JSON.stringify(left.abandoned)}; shutdown drained ${report.drained} in ${report.elapsedMs} ms`)

const file = writeResults("soak", {
  settings: { minutes, clients, cancelRate, warmupSeconds, sampleSeconds, gcExposed: typeof (globalThis as { gc?: unknown }).gc === "function" },
  totals,
  unexpected: Object.fromEntries(unexpected),
  engineAfterLoad: left,
  rss,
  heap,
  goals,
  samples
})
log(`wrote ${file}`)
process.exit(failures === 0 ? 0 : 1)
