/**
 * isolation: what running sessions in child processes costs against worker threads, on the MLP
 * (batch 1, 2 instances each, ORT 1 intra-op thread, batching off), through OnnxModelPool's
 * `run` (no engine: the engine's own cost is the same for both and measured by `overhead`).
 *
 *   thread   config.json `isolation: "thread"`  (WorkerHost, the default)
 *   process  config.json `isolation: "process"` (ProcessHost)
 *
 * Measured, alternating the two in every round:
 *   - c=1: sequential runs, p50/p99 latency;
 *   - c=16: closed loop with 16 outstanding, req/s, p50/p99, CPU per request (this process plus
 *     the children, read from /proc);
 *   - start-up: the time to load a pool (2 instances), and each child's RSS;
 *   - kills (process only): a spin past its deadline + killGraceMs; the delay from deadline +
 *     grace to the RunFailed, then until the killed pid is gone, then until the replacement serves;
 *   - crash replacement: an instance that exits, until the pool is back to 2 live instances;
 *   - large tensors: a wide, cheap MLP (1024-16-1000) fed 64- and 256-row runs (256 KiB and
 *     1 MiB in, 250 KiB and 1000 KiB out), 2 outstanding on 2 instances, rows/s for threads,
 *     processes with shared memory (`ShmChannel`, the default) and processes through the pipe.
 *
 * Usage: node --expose-gc bench/isolation.ts [--quick] [--rounds=N] [--n=N] [--block-ms=N]
 */
import { Duration, Effect, Exit, ManagedRuntime } from "effect"
import * as Fs from "node:fs"
import * as OnnxModelPool from "../src/onnx/OnnxModelPool.ts"
import * as Tensor from "../src/Tensor.ts"
import { alternate, type Contender, fmt, goal, goalsTable, log, median, mlpData, parseArgs, ratio, section, sleep, stats, table, writeResults } from "./lib/common.ts"
import { closedLoopEffect, type LoadResult, sequentialEffect } from "./lib/load.ts"
import { tempRepository } from "./lib/pools.ts"
import * as TestOps from "../test/fixtures/TestOps.ts"
import * as ProcessHost from "../src/onnx/ProcessHost.ts"
import { writeRepository } from "../scripts/gpu/model.ts"

const args = parseArgs()
const ROUNDS = Number(args.options["rounds"] ?? (args.quick ? 3 : 6))
const N = Number(args.options["n"] ?? (args.quick ? 500 : 2000))
const BLOCK_MS = Number(args.options["block-ms"] ?? (args.quick ? 600 : 1500))
const WARMUP_MS = args.quick ? 1000 : 3000
const KILLS = Number(args.options["kills"] ?? (args.quick ? 3 : 6))
const STARTS = args.quick ? 2 : 4
const INSTANCES = 2
const OUTSTANDING = 16
const KILL_GRACE_MS = 100

type Isolation = "thread" | "process"
const kinds: ReadonlyArray<Isolation> = ["thread", "process"]

const inputs = { input: Tensor.float32(mlpData(1, 7), [1, 784]) }

interface Handle {
  readonly isolation: Isolation
  readonly runtime: ManagedRuntime.ManagedRuntime<OnnxModelPool.OnnxModelPool, unknown>
  readonly pool: OnnxModelPool.Service
  readonly startMs: number
}

const startPool = async (isolation: Isolation): Promise<Handle> => {
  const repository = tempRepository([{
    name: "mlp",
    config: { instances: INSTANCES, intraOpNumThreads: 1, interOpNumThreads: 1, batching: { enabled: false }, isolation, killGraceMs: KILL_GRACE_MS }
  }])
  const t0 = performance.now()
  const runtime = ManagedRuntime.make(OnnxModelPool.layerWithControl({ repository, transports: TestOps.transports }))
  const pool = await runtime.runPromise(OnnxModelPool.OnnxModelPool)
  return { isolation, runtime, pool, startMs: performance.now() - t0 }
}

// ---- large tensors: the process hop for big batches, shared memory against the pipe ----------
type Wide = "thread" | "process, shared memory" | "process, pipe"
const wideKinds: ReadonlyArray<Wide> = ["thread", "process, shared memory", "process, pipe"]
const WIDE_ROWS = [64, 256]

const largeTensors = async () => {
  const repo = writeRepository([1024, 16, 1000], {
    thread: { instances: INSTANCES, intraOpNumThreads: 1, batching: { enabled: false }, isolation: "thread" },
    process: { instances: INSTANCES, intraOpNumThreads: 1, batching: { enabled: false }, isolation: "process" }
  })
  const pools = {} as Record<Wide, { runtime: ManagedRuntime.ManagedRuntime<OnnxModelPool.OnnxModelPool, unknown>; pool: OnnxModelPool.Service; model: string }>
  for (const k of wideKinds) {
    const transports = k === "process, pipe" ? { process: ProcessHost.transportFor(ProcessHost.processUrl, { sharedMemory: false }) } : {}
    const runtime = ManagedRuntime.make(OnnxModelPool.layerWithControl({ repository: repo.root, transports }))
    pools[k] = { runtime, pool: await runtime.runPromise(OnnxModelPool.OnnxModelPool), model: k === "thread" ? "thread" : "process" }
  }
  const feeds = Object.fromEntries(WIDE_ROWS.map((rows) => [rows, { input: Tensor.float32(repo.input(rows, 3), [rows, 1024]) }]))
  const block = (k: Wide, rows: number, ms: number) =>
    pools[k].runtime.runPromise(closedLoopEffect(INSTANCES, ms, () => ({ run: pools[k].pool.run(pools[k].model, feeds[rows]!, { requestId: "wide" }) })))
  for (const k of wideKinds) await block(k, 256, WARMUP_MS / 3)
  const out: Record<number, Record<string, Array<LoadResult>>> = {}
  for (const rows of WIDE_ROWS) {
    out[rows] = await alternate(ROUNDS, wideKinds.map((k) => ({ name: k, run: () => block(k, rows, BLOCK_MS) })), (r, name, x) =>
      log(`  round ${r} ${rows} rows ${name}: ${fmt(x.reqPerSec * rows)} rows/s`), `wide-${rows}`)
  }
  for (const k of wideKinds) await pools[k].runtime.dispose()
  repo.remove()
  return WIDE_ROWS.map((rows) => {
    const r = out[rows]!
    const perRound = (k: Wide) => r[k]!.map((x) => x.reqPerSec * rows)
    return {
      rows,
      rowsPerSec: Object.fromEntries(wideKinds.map((k) => [k, median(perRound(k))])),
      p50Ms: Object.fromEntries(wideKinds.map((k) => [k, median(r[k]!.map((x) => x.latency["all"]!.p50))])),
      sharedOverPipe: median(perRound("process, shared memory").map((x, i) => x / perRound("process, pipe")[i]!)),
      sharedOverThread: median(perRound("process, shared memory").map((x, i) => x / perRound("thread")[i]!))
    }
  })
}

/** Every child pid seen, checked to be gone at the end. */
const seenPids = new Set<number>()

const pidsOf = async (h: Handle): Promise<ReadonlyArray<number>> => {
  const pids = (await h.runtime.runPromise(h.pool.info))[0]?.pids ?? []
  for (const pid of pids) seenPids.add(pid)
  return pids
}

/** Whether `pid` still executes: it exists and is not a zombie (Linux /proc; a zombie has stopped running but is not yet reaped). */
const running = (pid: number): boolean => {
  try {
    const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3)
    return state !== "Z" && state !== "X"
  } catch {
    return false
  }
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** utime + stime of `pid` in ms (Linux), 0 when unreadable. */
const cpuMsOf = (pid: number): number => {
  try {
    const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) * 10 // clock ticks of 10 ms
  } catch {
    return 0
  }
}

/** VmRSS of `pid` in MiB (Linux). */
const rssMiBOf = (pid: number): number => {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(Fs.readFileSync(`/proc/${pid}/status`, "utf8"))
    return m === null ? NaN : Number(m[1]) / 1024
  } catch {
    return NaN
  }
}

const until = async (what: string, check: () => boolean, ms = 20_000) => {
  const end = performance.now() + ms
  while (!check()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(2)
  }
}

const run = (h: Handle) => h.pool.run("mlp", inputs, { requestId: "bench" })

interface C1 {
  readonly p50: number
  readonly p99: number
}

interface C16 extends LoadResult {
  /** CPU per request including the child processes, µs. */
  readonly cpuUsPerReqAll: number
}

const c1 = (h: Handle) => async (): Promise<C1> => {
  const s = stats(await h.runtime.runPromise(sequentialEffect(N, () => run(h))))
  return { p50: s.p50, p99: s.p99 }
}

const c16 = (h: Handle) => async (): Promise<C16> => {
  const pids = await pidsOf(h)
  const child0 = pids.reduce((a, pid) => a + cpuMsOf(pid), 0)
  const r = await h.runtime.runPromise(closedLoopEffect(OUTSTANDING, BLOCK_MS, () => ({ run: run(h) })))
  const childMs = pids.reduce((a, pid) => a + cpuMsOf(pid), 0) - child0
  return { ...r, cpuUsPerReqAll: r.cpuUsPerReq + (childMs * 1000) / Math.max(1, r.completed) }
}

/** Process only: spins past deadline + grace; the delay to the RunFailed, and until the replacement is live. */
const kill = async (h: Handle) => {
  const timeoutMs = 50
  const before = await pidsOf(h)
  const t0 = performance.now()
  const exit = await h.runtime.runPromise(Effect.exit(TestOps.run(h.pool, "mlp", { _tag: "spin", ms: 60_000 }, { requestId: "runaway", timeout: Duration.millis(timeoutMs) })))
  const failedAt = performance.now()
  if (Exit.isSuccess(exit)) throw new Error("the runaway was not killed")
  await until("the killed process to stop", () => before.some((pid) => !running(pid)))
  const deadMs = performance.now() - failedAt
  await until("the killed process to be reaped", () => before.some((pid) => !alive(pid)))
  const goneMs = performance.now() - failedAt
  await until("the replacement", () => h.pool.stats("mlp")?.live === INSTANCES && h.pool.stats("mlp")?.starting === 0)
  const replaceMs = performance.now() - failedAt
  await pidsOf(h)
  return { lateMs: failedAt - t0 - timeoutMs - KILL_GRACE_MS, deadMs, goneMs, replaceMs }
}

/** An instance exits; the time until the pool has all its instances live again. */
const crash = async (h: Handle) => {
  const t0 = performance.now()
  await h.runtime.runPromise(Effect.exit(TestOps.run(h.pool, "mlp", { _tag: "exit", code: 3 }, { requestId: "crash" })))
  const failedAt = performance.now()
  await until("the replacement", () => h.pool.stats("mlp")?.live === INSTANCES)
  const replaceMs = performance.now() - failedAt
  await pidsOf(h)
  return { failMs: failedAt - t0, replaceMs }
}

const main = async () => {
  log(`isolation: ${ROUNDS} rounds; c=1 ${N} runs, c=${OUTSTANDING} ${BLOCK_MS} ms blocks; ${INSTANCES} instances each${args.quick ? " (quick)" : ""}`)

  // ---- start-up --------------------------------------------------------------------------
  const startMs: Record<Isolation, Array<number>> = { thread: [], process: [] }
  for (let i = 0; i < STARTS; i++) {
    for (const k of i % 2 === 0 ? kinds : [...kinds].reverse()) {
      const h = await startPool(k)
      startMs[k].push(h.startMs)
      await h.runtime.dispose()
    }
  }
  const rssBefore = process.memoryUsage().rss / 2 ** 20
  const thread = await startPool("thread")
  const threadRssMiB = process.memoryUsage().rss / 2 ** 20 - rssBefore
  const proc = await startPool("process")
  const handles: Record<Isolation, Handle> = { thread, process: proc }
  const childRss = (await pidsOf(proc)).map(rssMiBOf)

  // ---- warm-up ---------------------------------------------------------------------------
  for (const h of [thread, proc]) await h.runtime.runPromise(closedLoopEffect(4, WARMUP_MS / 2, () => ({ run: run(h) })))

  // ---- c=1 and c=16, alternating ---------------------------------------------------------
  const contenders: Array<Contender<{ c1: C1; c16: C16 }>> = kinds.map((k) => ({
    name: k,
    run: async () => ({ c1: await c1(handles[k])(), c16: await c16(handles[k])() })
  }))
  const results = await alternate(ROUNDS, contenders, (r, name, x) =>
    log(`  round ${r} ${name}: c=1 p50 ${fmt(x.c1.p50)} ms; c=${OUTSTANDING} ${fmt(x.c16.reqPerSec)} req/s`), "isolation")

  // ---- kills and crash replacement -------------------------------------------------------
  const kills: Array<{ lateMs: number; deadMs: number; goneMs: number; replaceMs: number }> = []
  for (let i = 0; i < KILLS; i++) kills.push(await kill(proc))
  const crashes: Record<Isolation, Array<{ failMs: number; replaceMs: number }>> = { thread: [], process: [] }
  for (let i = 0; i < Math.max(2, Math.ceil(KILLS / 2)); i++) {
    for (const k of kinds) crashes[k].push(await crash(handles[k]))
  }
  const counters = { thread: { ...thread.pool.counters }, process: { ...proc.pool.counters } }
  await thread.runtime.dispose()
  await proc.runtime.dispose()
  const leaked = [...seenPids].filter(alive).length
  const wide = await largeTensors()

  // ---- report ----------------------------------------------------------------------------
  const summarize = (k: Isolation) => {
    const rs = results[k]!
    return {
      c1P50Ms: median(rs.map((x) => x.c1.p50)),
      c1P99Ms: median(rs.map((x) => x.c1.p99)),
      c16ReqPerSec: median(rs.map((x) => x.c16.reqPerSec)),
      c16P50Ms: median(rs.map((x) => x.c16.latency["all"]!.p50)),
      c16P99Ms: median(rs.map((x) => x.c16.latency["all"]!.p99)),
      c16CpuUsPerReq: median(rs.map((x) => x.c16.cpuUsPerReqAll)),
      c16MainELU: median(rs.map((x) => x.c16.mainELU)),
      startMs: median(startMs[k]),
      crashReplaceMs: median(crashes[k].map((c) => c.replaceMs))
    }
  }
  const summary = { thread: summarize("thread"), process: summarize("process") }
  const paired = {
    c1P50: median(results["process"]!.map((x, i) => x.c1.p50 / results["thread"]![i]!.c1.p50)),
    c16ReqPerSec: median(results["process"]!.map((x, i) => x.c16.reqPerSec / results["thread"]![i]!.c16.reqPerSec))
  }
  const killSummary = {
    lateMsMedian: median(kills.map((k) => k.lateMs)),
    lateMsMax: Math.max(...kills.map((k) => k.lateMs)),
    deadMsMedian: median(kills.map((k) => k.deadMs)),
    deadMsMax: Math.max(...kills.map((k) => k.deadMs)),
    goneMsMedian: median(kills.map((k) => k.goneMs)),
    goneMsMax: Math.max(...kills.map((k) => k.goneMs)),
    replaceMsMedian: median(kills.map((k) => k.replaceMs))
  }

  section("thread vs process isolation (MLP batch 1, 2 instances, pool.run)")
  const row = (k: Isolation) => ({
    isolation: k,
    "c=1 p50 ms": summary[k].c1P50Ms,
    "c=1 p99 ms": summary[k].c1P99Ms,
    [`c=${OUTSTANDING} req/s`]: summary[k].c16ReqPerSec,
    [`c=${OUTSTANDING} p50 ms`]: summary[k].c16P50Ms,
    [`c=${OUTSTANDING} p99 ms`]: summary[k].c16P99Ms,
    "CPU µs/req": summary[k].c16CpuUsPerReq,
    "start ms": summary[k].startMs,
    "crash→live ms": summary[k].crashReplaceMs
  })
  console.log(table([row("thread"), row("process")]))
  console.log(`\nprocess / thread (paired per round): c=1 p50 ${ratio(paired.c1P50)}, c=${OUTSTANDING} req/s ${ratio(paired.c16ReqPerSec)}`)
  console.log(`memory: thread pool +${fmt(threadRssMiB)} MiB in this process; each child process ${childRss.map((x) => fmt(x)).join(", ")} MiB RSS`)
  console.log(
    `kills (process, killGraceMs ${KILL_GRACE_MS}): RunFailed ${fmt(killSummary.lateMsMedian)} ms after deadline + grace (median; max ${
      fmt(killSummary.lateMsMax)
    }); the process stopped (zombie or gone) ${fmt(killSummary.deadMsMedian)} ms later (max ${fmt(killSummary.deadMsMax)}), was reaped ${
      fmt(killSummary.goneMsMedian)
    } ms later (max ${fmt(killSummary.goneMsMax)}); replacement serving ${fmt(killSummary.replaceMsMedian)} ms later`
  )

  section(`large tensors (MLP 1024-16-1000, ${INSTANCES} outstanding on ${INSTANCES} instances, pool.run)`)
  console.log(table(wide.map((w) => ({
    rows: w.rows,
    ...Object.fromEntries(wideKinds.map((k) => [`${k} rows/s`, w.rowsPerSec[k]!])),
    ...Object.fromEntries(wideKinds.map((k) => [`${k} p50 ms`, w.p50Ms[k]!])),
    "shared / pipe": ratio(w.sharedOverPipe),
    "shared / thread": ratio(w.sharedOverThread)
  }))))

  const goals = [
    goal("process kill: RunFailed within grace + 100 ms", "< 100 ms late", killSummary.lateMsMax, killSummary.lateMsMax < 100, `${fmt(killSummary.lateMsMax)} ms (max)`),
    goal(
      "process kill: the process stopped within grace + 100 ms",
      "< 100 ms late",
      Math.max(...kills.map((k) => k.lateMs + k.deadMs)),
      Math.max(...kills.map((k) => k.lateMs + k.deadMs)) < 100,
      `${fmt(Math.max(...kills.map((k) => k.lateMs + k.deadMs)))} ms (max)`
    ),
    goal("child processes left after close", "0", leaked, leaked === 0, `${leaked} of ${seenPids.size}`)
  ]
  section("goals")
  console.log(goalsTable(goals))

  const file = writeResults("isolation", {
    config: { rounds: ROUNDS, n: N, blockMs: BLOCK_MS, outstanding: OUTSTANDING, instances: INSTANCES, killGraceMs: KILL_GRACE_MS },
    summary,
    paired,
    memory: { threadPoolMiB: threadRssMiB, childRssMiB: childRss },
    kills,
    killSummary,
    crashes,
    counters,
    largeTensors: wide,
    rounds: results,
    goals
  })
  log(`wrote ${file}`)
}

await main()
