/**
 * Load generators: sequential requests (concurrency 1) and closed loops (N outstanding: each of
 * N clients sends its next request as soon as its previous one is answered), for plain
 * promise-returning calls and for Effects (run as fibers in one runtime, as an Effect caller
 * of the engine would). Latency is taken per request with `performance.now()`.
 */
import { Effect, Exit } from "effect"
import { readFileSync } from "node:fs"
import { performance } from "node:perf_hooks"
import * as v8 from "node:v8"
import { fmt, median, Samples, type Stats, stats } from "./common.ts"

/** CPU seconds (user + system, every thread) process `pid` has used, from /proc; NaN off Linux. */
export const cpuSeconds = (pid: number): number => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return NaN
  }
}

/**
 * The main thread's own CPU time in µs (its tid is the pid): on-CPU time from
 * `/proc/self/task/<pid>/schedstat`, else utime+stime from `stat` (10 ms ticks). NaN off Linux.
 * Worker threads are not counted: this is what the event loop spends.
 */
export const mainThreadCpuUs = (): number => {
  try {
    return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8").split(" ")[0]) / 1000
  } catch {
    try {
      const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8")
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      return (Number(f[11]) + Number(f[12])) * 1e4
    } catch {
      return NaN
    }
  }
}

/**
 * Bytes allocated on this isolate's heap (the main thread's) from now until the returned
 * function is called: what every GC in between freed plus the growth of the used heap.
 */
export const allocationMeter = (): (() => number) => {
  const profiler = new v8.GCProfiler()
  const used0 = v8.getHeapStatistics().used_heap_size
  profiler.start()
  return () => {
    const report = profiler.stop()
    let freed = 0
    for (const s of report?.statistics ?? []) freed += s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize
    return v8.getHeapStatistics().used_heap_size - used0 + freed
  }
}

export interface LoadResult {
  readonly completed: number
  readonly failed: number
  readonly seconds: number
  readonly reqPerSec: number
  /** Latency by class ("all" unless the request function names classes). */
  readonly latency: Readonly<Record<string, Stats>>
  /** Share of the wall time the main event loop was busy. */
  readonly mainELU: number
  /** Process CPU time (all threads) per completed request, µs. */
  readonly cpuUsPerReq: number
  /** Main-thread CPU time per completed request, µs (`mainThreadCpuUs`): the event loop's cost, the figure that bounds throughput. */
  readonly mainCpuUsPerReq: number
  /** Bytes allocated on the main thread's heap per completed request (`allocationMeter`). */
  readonly heapBytesPerReq: number
  /** First failure seen, if any. */
  readonly firstError?: string
  /** Engines only: mean rows per native run, and mean run time seen by the engine (ms). */
  readonly meanBatch?: number
  readonly meanRunMs?: number
}

interface Recorder {
  readonly record: (cls: string, ms: number) => void
  readonly fail: (e: unknown) => void
  readonly finish: (t0: number) => LoadResult
}

const recorder = (): Recorder => {
  const byClass = new Map<string, Samples>()
  let failed = 0
  let firstError: string | undefined
  let last = 0
  const elu0 = performance.eventLoopUtilization()
  const cpu0 = process.cpuUsage()
  const main0 = mainThreadCpuUs()
  const allocated = allocationMeter()
  return {
    record: (cls, ms) => {
      let s = byClass.get(cls)
      if (s === undefined) byClass.set(cls, s = new Samples(4096))
      s.push(ms)
      last = performance.now()
    },
    fail: (e) => {
      failed++
      last = performance.now()
      firstError ??= e instanceof Error ? e.message : typeof e === "object" ? JSON.stringify(e) : String(e)
    },
    finish: (t0) => {
      const elu = performance.eventLoopUtilization(elu0).utilization
      const cpu = process.cpuUsage(cpu0)
      const mainUs = mainThreadCpuUs() - main0
      const bytes = allocated()
      let completed = 0
      const latency: Record<string, Stats> = {}
      const all = new Samples(4096)
      for (const [cls, s] of byClass) {
        completed += s.length
        latency[cls] = stats(s.view())
        for (const x of s.view()) all.push(x)
      }
      if (byClass.size > 1) latency["all"] = stats(all.view())
      const seconds = (last - t0) / 1000
      return {
        completed,
        failed,
        seconds,
        reqPerSec: completed / seconds,
        latency,
        mainELU: elu,
        cpuUsPerReq: (cpu.user + cpu.system) / Math.max(1, completed),
        mainCpuUsPerReq: mainUs / Math.max(1, completed),
        heapBytesPerReq: bytes / Math.max(1, completed),
        ...(firstError === undefined ? {} : { firstError })
      }
    }
  }
}

export interface Request<R> {
  readonly run: R
  readonly cls?: string | undefined
}

/** `outstanding` clients, each looping until `durationMs` has passed. */
export const closedLoopAsync = async (
  outstanding: number,
  durationMs: number,
  request: (seq: number) => Request<() => Promise<unknown>>
): Promise<LoadResult> => {
  const rec = recorder()
  const t0 = performance.now()
  const end = t0 + durationMs
  let seq = 0
  const client = async () => {
    while (performance.now() < end) {
      const { cls, run } = request(seq++)
      const t = performance.now()
      try {
        await run()
        rec.record(cls ?? "all", performance.now() - t)
      } catch (e) {
        rec.fail(e)
      }
    }
  }
  await Promise.all(Array.from({ length: outstanding }, client))
  return rec.finish(t0)
}

/** The same for Effects: one fiber per client. */
export const closedLoopEffect = <E>(
  outstanding: number,
  durationMs: number,
  /** `client`: which of the `outstanding` clients asks (0 …), for a client with state of its own. */
  request: (seq: number, client: number) => Request<Effect.Effect<unknown, E>>
): Effect.Effect<LoadResult> =>
  Effect.suspend(() => {
    const rec = recorder()
    const t0 = performance.now()
    const end = t0 + durationMs
    let seq = 0
    const client = (index: number) => Effect.gen(function*() {
      while (performance.now() < end) {
        const { cls, run } = request(seq++, index)
        const t = performance.now()
        const exit = yield* Effect.exit(run)
        if (Exit.isSuccess(exit)) rec.record(cls ?? "all", performance.now() - t)
        else rec.fail(exit.cause)
      }
    })
    return Effect.all(Array.from({ length: outstanding }, (_, index) => client(index)), { concurrency: "unbounded", discard: true }).pipe(
      Effect.map(() => rec.finish(t0))
    )
  })

/** `n` requests one after another; latencies in ms (and, into `starts` if given, each start time). */
export const sequentialAsync = async (n: number, run: () => Promise<unknown>, starts?: Float64Array): Promise<Float64Array> => {
  const out = new Float64Array(n)
  for (let i = 0; i < n; i++) {
    const t = performance.now()
    await run()
    out[i] = performance.now() - t
    if (starts !== undefined) starts[i] = t
  }
  return out
}

export const sequentialEffect = <E>(n: number, run: () => Effect.Effect<unknown, E>, starts?: Float64Array): Effect.Effect<Float64Array, E> =>
  Effect.gen(function*() {
    const out = new Float64Array(n)
    for (let i = 0; i < n; i++) {
      const t = performance.now()
      yield* run()
      out[i] = performance.now() - t
      if (starts !== undefined) starts[i] = t
    }
    return out
  })

/**
 * One contender's row of an engine benchmark's table, medians over its rounds: req/s, p50, main
 * CPU µs a request, rows a run. Throws when any of its requests failed (a benchmark of failures
 * measures nothing).
 */
export const engineRow = (contender: string, rounds: ReadonlyArray<LoadResult>) => {
  const failed = rounds.reduce((n, r) => n + r.failed, 0)
  if (failed > 0) throw new Error(`${contender}: ${failed} requests failed: ${rounds.find((r) => r.firstError !== undefined)?.firstError}`)
  return {
    contender,
    "req/s": Math.round(median(rounds.map((r) => r.reqPerSec))),
    "p50 ms": fmt(median(rounds.map((r) => r.latency["all"]?.p50 ?? NaN))),
    "main CPU µs/req": fmt(median(rounds.map((r) => r.mainCpuUsPerReq))),
    "rows a run": fmt(median(rounds.map((r) => r.meanBatch ?? NaN)))
  }
}
