/**
 * The standard process and Node.js metrics, under the names prom-client's default collectors
 * use (so that existing Node.js dashboards work), computed by hand from `process`, `perf_hooks`
 * and, on Linux, `/proc`; no dependency.
 *
 * | family | type | what |
 * |---|---|---|
 * | `process_cpu_user_seconds_total`, `process_cpu_system_seconds_total`, `process_cpu_seconds_total` | counter | CPU time spent (user, system, both) |
 * | `process_resident_memory_bytes` | gauge | resident set size |
 * | `process_start_time_seconds` | gauge | start time, Unix epoch seconds |
 * | `process_open_fds` | gauge | open file descriptors (Linux only) |
 * | `nodejs_eventloop_lag_seconds` | gauge | mean event-loop delay since the previous scrape |
 * | `nodejs_eventloop_lag_p50_seconds`, `_p90_`, `_p99_`, `_max_` | gauge | its percentiles since the previous scrape |
 * | `nodejs_heap_size_total_bytes`, `nodejs_heap_size_used_bytes`, `nodejs_external_memory_bytes` | gauge | V8 heap and external memory |
 * | `nodejs_active_resources` | gauge | handles and requests keeping the event loop alive |
 * | `nodejs_gc_duration_seconds` | histogram, label `kind` (minor, major, incremental, weakcb) | garbage-collection pauses |
 * | `nodejs_version_info` | gauge, labels `version`, `major`, `minor`, `patch` | always 1 |
 *
 * `make` starts the event-loop and GC observers; `stop` ends them. The server makes one.
 *
 * @module ProcessMetrics
 */
import * as Fs from "node:fs"
import { constants as perfConstants, monitorEventLoopDelay, PerformanceObserver } from "node:perf_hooks"

/** GC pause boundaries, in seconds (as prom-client's). */
export const gcBoundaries: ReadonlyArray<number> = [0.001, 0.01, 0.1, 1, 2, 5]

const gcKinds: Readonly<Record<number, string>> = {
  [perfConstants.NODE_PERFORMANCE_GC_MINOR]: "minor",
  [perfConstants.NODE_PERFORMANCE_GC_MAJOR]: "major",
  [perfConstants.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
  [perfConstants.NODE_PERFORMANCE_GC_WEAKCB]: "weakcb"
}

interface Histogram {
  readonly buckets: Array<number>
  sum: number
  count: number
}

export interface ProcessMetrics {
  /** The families, in Prometheus text format. */
  readonly render: () => string
  readonly stop: () => void
}

const family = (name: string, type: string, help: string, samples: ReadonlyArray<string>) =>
  `# HELP ${name} ${help}\n# TYPE ${name} ${type}\n${samples.join("\n")}\n`

const number = (n: number) => (Number.isFinite(n) ? String(n) : "NaN")

/** Starts the observers; `render` reads everything at scrape time. */
export const make = (): ProcessMetrics => {
  const startTimeSeconds = Math.round((Date.now() - process.uptime() * 1000) / 1000)
  const loop = monitorEventLoopDelay({ resolution: 10 })
  loop.enable()
  const gc = new Map<string, Histogram>()
  let observer: PerformanceObserver | undefined
  try {
    observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        const detail = (entry as { detail?: { kind?: number } }).detail
        const kind = gcKinds[detail?.kind ?? -1] ?? "unknown"
        let h = gc.get(kind)
        if (h === undefined) {
          h = { buckets: gcBoundaries.map(() => 0), sum: 0, count: 0 }
          gc.set(kind, h)
        }
        const seconds = entry.duration / 1000
        h.sum += seconds
        h.count++
        gcBoundaries.forEach((bound, i) => {
          if (seconds <= bound) h.buckets[i]!++
        })
      }
    })
    observer.observe({ entryTypes: ["gc"] })
  } catch {
    observer = undefined
  }
  const [major, minor, patch] = process.versions.node.split(".")

  const openFds = (): number | undefined => {
    try {
      return Fs.readdirSync("/proc/self/fd").length - 1 // the directory handle itself
    } catch {
      return undefined
    }
  }

  return {
    render: () => {
      const cpu = process.cpuUsage()
      const memory = process.memoryUsage()
      const nsToSeconds = (ns: number) => ns / 1e9
      const lag = {
        mean: nsToSeconds(loop.mean),
        p50: nsToSeconds(loop.percentile(50)),
        p90: nsToSeconds(loop.percentile(90)),
        p99: nsToSeconds(loop.percentile(99)),
        max: nsToSeconds(loop.max)
      }
      loop.reset()
      const fds = openFds()
      let text = ""
      text += family("process_cpu_user_seconds_total", "counter", "User CPU time spent, in seconds", [`process_cpu_user_seconds_total ${cpu.user / 1e6}`])
      text += family("process_cpu_system_seconds_total", "counter", "System CPU time spent, in seconds", [`process_cpu_system_seconds_total ${cpu.system / 1e6}`])
      text += family("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds", [`process_cpu_seconds_total ${(cpu.user + cpu.system) / 1e6}`])
      text += family("process_resident_memory_bytes", "gauge", "Resident memory size, in bytes", [`process_resident_memory_bytes ${memory.rss}`])
      text += family("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch, in seconds", [`process_start_time_seconds ${startTimeSeconds}`])
      if (fds !== undefined) text += family("process_open_fds", "gauge", "Open file descriptors", [`process_open_fds ${fds}`])
      text += family("nodejs_eventloop_lag_seconds", "gauge", "Mean event-loop delay since the previous scrape, in seconds", [`nodejs_eventloop_lag_seconds ${number(lag.mean)}`])
      for (const [q, value] of [["p50", lag.p50], ["p90", lag.p90], ["p99", lag.p99], ["max", lag.max]] as const) {
        const name = `nodejs_eventloop_lag_${q}_seconds`
        text += family(name, "gauge", `The ${q} event-loop delay since the previous scrape, in seconds`, [`${name} ${number(value)}`])
      }
      text += family("nodejs_heap_size_total_bytes", "gauge", "V8 heap size, in bytes", [`nodejs_heap_size_total_bytes ${memory.heapTotal}`])
      text += family("nodejs_heap_size_used_bytes", "gauge", "V8 heap used, in bytes", [`nodejs_heap_size_used_bytes ${memory.heapUsed}`])
      text += family("nodejs_external_memory_bytes", "gauge", "Memory of C++ objects bound to JavaScript objects, in bytes", [`nodejs_external_memory_bytes ${memory.external}`])
      text += family("nodejs_active_resources", "gauge", "Handles and requests keeping the event loop alive", [
        `nodejs_active_resources ${process.getActiveResourcesInfo().length}`
      ])
      const gcSamples: Array<string> = []
      for (const [kind, h] of gc) {
        gcBoundaries.forEach((bound, i) => gcSamples.push(`nodejs_gc_duration_seconds_bucket{le="${bound}",kind="${kind}"} ${h.buckets[i]}`))
        gcSamples.push(`nodejs_gc_duration_seconds_bucket{le="+Inf",kind="${kind}"} ${h.count}`)
        gcSamples.push(`nodejs_gc_duration_seconds_sum{kind="${kind}"} ${h.sum}`)
        gcSamples.push(`nodejs_gc_duration_seconds_count{kind="${kind}"} ${h.count}`)
      }
      text += family("nodejs_gc_duration_seconds", "histogram", "Garbage-collection pauses by kind, in seconds", gcSamples)
      text += family("nodejs_version_info", "gauge", "Node.js version", [
        `nodejs_version_info{version="${process.version}",major="${major}",minor="${minor}",patch="${patch}"} 1`
      ])
      return text
    },
    stop: () => {
      loop.disable()
      observer?.disconnect()
    }
  }
}
