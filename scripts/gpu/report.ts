/**
 * The prepared GPU run's results as Markdown, for the README's "GPU on Linux": what `check.sh`
 * brought back from the GPU host (`summary.txt`, `gpu.json`, `soak.json`, `narrow.json` in one
 * folder) turned into tables, so that the figures are copied, not retyped. A file the run did not
 * produce (a phase stopped by the budget, a crash) is said to be missing; nothing is made up.
 *
 *   node scripts/gpu/report.ts DIR
 *
 * @module report
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import { pathToFileURL } from "node:url"
import { fmt, goal, type Goal, table } from "../../bench/lib/common.ts"

export interface BenchRow {
  readonly provider: string
  readonly contender: string
  readonly outstanding: number
  readonly reqPerSec: number
  readonly p50: number
  readonly p99: number
  readonly rowsPerRun: number
  readonly failed: number
}

/** What `bench/gpu.ts` writes (the parts reported here). */
export interface GpuJson {
  /** Written after each level: the bench stopped before its end (a crash, the time limit). */
  readonly partial?: boolean
  readonly sizes?: ReadonlyArray<number>
  readonly cores?: number
  readonly blockMs?: number
  readonly rounds?: number
  readonly webgpu?: { readonly available: boolean; readonly reason?: string }
  readonly maxAbsDiff?: Readonly<Record<string, number>>
  readonly results?: ReadonlyArray<BenchRow>
  readonly learnedVsFixed?: ReadonlyArray<{ readonly provider: string; readonly outstanding: number; readonly "req/s": number; readonly p50: number }>
  readonly instancesSweep?: {
    readonly onGpu: boolean
    readonly defaultInstances: number
    readonly results: ReadonlyArray<{ readonly instances: number; readonly reqPerSec: number; readonly p50: number; readonly p99: number; readonly rowsPerRun: number; readonly failed: number }> | { readonly error: string }
  }
  readonly goals?: ReadonlyArray<{ readonly goal: string; readonly target: string; readonly measured: string; readonly pass: boolean }>
}

export interface RunFiles {
  readonly summary?: string | undefined
  readonly gpu?: GpuJson | undefined
  readonly soak?: Readonly<Record<string, unknown>> | undefined
  /** The soak's own log (a JSON line every window), for a soak stopped before its summary. */
  readonly soakLog?: string | undefined
  readonly narrow?: { readonly outcomes: ReadonlyArray<{ readonly case: string; readonly ended: string; readonly seconds: number; readonly stderrTail?: string }> } | undefined
  /** Files that came back but are not JSON (cut short), with the parse error. */
  readonly unreadable?: Readonly<Record<string, string>> | undefined
}

const missing = (file: string, run: RunFiles) =>
  run.unreadable?.[file] !== undefined
    ? `(${file} came back unreadable: ${run.unreadable[file]}; see check.log and logs.tar.gz)`
    : `(${file} was not brought back: see summary.txt, check.log and logs.tar.gz)`

/** The contender name of the raw batched rate (`bench/gpu.ts`). */
export const rawBatchedContender = (rows: number): string => `session.run, ${rows} rows a run (rows/s)`

/**
 * The issue's goals from `bench gpu`'s rows (WebGPU only; none without its rows): the engine at
 * 256 outstanding against raw 256-row runs (≥ 50%), at 64 against per-request `session.run`
 * (≥ 10×), against the engine on the CPU at 64 (the issue's wording) and at 256 (≥ 3×), and the
 * outputs against the CPU's (≤ 1e-4). A level the run did not reach reads "not measured", its goal missed.
 */
export const gpuGoals = (rows: ReadonlyArray<BenchRow>, maxAbsDiff: Readonly<Record<string, number>>, cores: number | undefined, maxBatchSize = 256): Array<Goal> => {
  const rate = (provider: string, contender: string, outstanding: number) =>
    rows.find((r) => r.provider === provider && r.contender === contender && r.outstanding === outstanding)?.reqPerSec ?? NaN
  const engine = (provider: string, k: number) => rate(provider, "engine, batching", k)
  const a = engine("webgpu", 256) / rate("webgpu", rawBatchedContender(maxBatchSize), 1)
  const b = engine("webgpu", 64) / rate("webgpu", "session.run per request", 64)
  const c64 = engine("webgpu", 64) / engine("cpu", 64)
  const c256 = engine("webgpu", 256) / engine("cpu", 256)
  const diff = Math.max(maxAbsDiff["engine webgpu"] ?? Infinity, maxAbsDiff["session.run webgpu"] ?? Infinity)
  const threads = cores === undefined ? "" : ` (intra-op ${cores})`
  const shown = (value: number, text: string) => (Number.isFinite(value) ? text : "not measured")
  return [
    goal("engine on webgpu at 256 outstanding vs raw 256-row webgpu runs", "≥ 0.5", a, a >= 0.5, shown(a, `${(a * 100).toFixed(0)}%`)),
    goal("engine on webgpu vs per-request webgpu session.run at 64", "≥ 10×", b, b >= 10, shown(b, `${b.toFixed(1)}×`)),
    goal(`engine on webgpu vs engine on cpu${threads} at 64`, "≥ 3×", c64, c64 >= 3, shown(c64, `${c64.toFixed(1)}×`)),
    goal(`engine on webgpu vs engine on cpu${threads} at 256`, "≥ 3×", c256, c256 >= 3, shown(c256, `${c256.toFixed(1)}×`)),
    goal("webgpu outputs vs cpu outputs", "≤ 1e-4", diff, diff <= 1e-4, shown(diff, diff.toExponential(1)))
  ]
}

/** `bench gpu`'s table: a row per provider, contender and outstanding level. */
export const benchTable = (rows: ReadonlyArray<BenchRow>): string =>
  table(rows.map((r) => ({
    provider: r.provider,
    contender: r.contender,
    outstanding: r.outstanding,
    "req/s": fmt(r.reqPerSec),
    "p50 ms": fmt(r.p50),
    "p99 ms": fmt(r.p99),
    "rows/run": fmt(r.rowsPerRun),
    failed: r.failed
  })))

const benchSection = (gpu: GpuJson): Array<string> => {
  const out: Array<string> = []
  if (gpu.partial === true) out.push("**Partial**: the bench stopped before its end; these are the levels it finished.", "")
  out.push(`MLP ${gpu.sizes?.join("-") ?? "?"}, ${gpu.cores ?? "?"} cores, ${gpu.rounds ?? "?"} round(s) of ${gpu.blockMs ?? "?"} ms a contender; WebGPU ${gpu.webgpu?.available === true ? "found" : `not found (${gpu.webgpu?.reason ?? "no reason given"})`}.`, "")
  out.push(benchTable(gpu.results ?? []))
  const diffs = Object.entries(gpu.maxAbsDiff ?? {})
  if (diffs.length > 0) out.push("", `Max abs diff against the CPU session on 8 rows: ${diffs.map(([k, v]) => `${k} ${v.toExponential(1)}`).join(", ")}.`)
  // A bench stopped before its end wrote no goals: they are computed here from the levels it finished.
  const goals = (gpu.goals ?? []).length > 0
    ? gpu.goals!
    : gpu.webgpu?.available === true && (gpu.results ?? []).some((r) => r.provider === "webgpu")
    ? gpuGoals(gpu.results!, gpu.maxAbsDiff ?? {}, gpu.cores)
    : []
  if (goals.length > 0) {
    if (gpu.goals === undefined || gpu.goals.length === 0) out.push("", "Goals computed from the levels above (the bench wrote none):")
    out.push("", table(goals.map((g) => ({ goal: g.goal, target: g.target, measured: g.measured, result: g.pass ? "met" : "missed" }))))
  } else {
    out.push("", gpu.webgpu?.available === true ? "No goals: the bench measured no WebGPU level." : "No goals measured (they need a WebGPU adapter).")
  }
  if ((gpu.learnedVsFixed ?? []).length > 0) {
    out.push("", "Learned against fixed sizing, same engine:", "", table(gpu.learnedVsFixed!.map((r) => ({
      provider: r.provider,
      outstanding: r.outstanding,
      "req/s ratio": `${r["req/s"].toFixed(2)}×`,
      "p50 ratio": `${r.p50.toFixed(2)}×`
    }))))
  }
  const sweep = gpu.instancesSweep
  if (sweep !== undefined) {
    out.push("", `Instances (processes) of the ${sweep.onGpu ? "WebGPU" : "emulated"} model sharing one ${sweep.onGpu ? "GPU" : "emulated device"}, 256 outstanding (default ${sweep.defaultInstances}):`, "")
    out.push("error" in sweep.results ? `the sweep failed: ${sweep.results.error}` : table(sweep.results.map((r) => ({
      instances: r.instances,
      "req/s": fmt(r.reqPerSec),
      "p50 ms": fmt(r.p50),
      "p99 ms": fmt(r.p99),
      "rows/run": fmt(r.rowsPerRun),
      failed: r.failed
    }))))
  }
  return out
}

const soakSection = (soak: Readonly<Record<string, unknown>>): string => {
  const n = (k: string) => (typeof soak[k] === "number" ? fmt(soak[k]) : "?")
  const json = (k: string) => JSON.stringify(soak[k] ?? null)
  const verdict = soak["partial"] === true ? "**Stopped before its end** (written at its last 10 s window; no verdict)" : soak["pass"] === true ? "**Passed**" : "**Failed**"
  return `${verdict}: ${n("seconds")} s at ${n("outstanding")} outstanding, ${n("completed")} requests answered ` +
    `(${n("reqPerSec")} req/s, ${n("rowsPerRun")} rows and ${n("requestsPerRun")} requests a run on average), ${n("cancelledAsked")} cancellations and ` +
    `${n("tightDeadlines")} tight deadlines asked; expected failures ${json("expectedFailures")}, unexpected ${json("unexpectedFailures")}; ` +
    `${n("mismatches")} answers off the CPU's by more than 1e-4 (max abs diff ${typeof soak["maxAbsDiff"] === "number" ? (soak["maxAbsDiff"] as number).toExponential(1) : "?"}); devices ${json("devices")}.`
}

/** A soak stopped before its summary: its last window lines, as it logged them. */
const soakLogSection = (log: string): string => {
  const windows = log.split("\n").filter((l) => l.startsWith("{\"t\":"))
  return windows.length === 0
    ? "soak.log has no window line: the soak ended before its first 10 s."
    : `**Stopped before its summary** (soak.log, ${windows.length} window(s); the last ones):\n\n\`\`\`\n${windows.slice(-6).join("\n")}\n\`\`\``
}

/** The report, as Markdown. */
export const report = (files: RunFiles): string => {
  const out: Array<string> = ["## The GPU run", ""]
  out.push(files.summary === undefined ? missing("summary.txt", files) : ["```", files.summary.trim(), "```"].join("\n"))
  out.push("", "### bench gpu", "")
  if (files.gpu === undefined) out.push(missing("gpu.json", files))
  else out.push(...benchSection(files.gpu))
  out.push("", "### Soak", "")
  if (files.soak !== undefined) out.push(soakSection(files.soak))
  else out.push(missing("soak.json", files), ...(files.soakLog === undefined ? [] : ["", soakLogSection(files.soakLog)]))
  out.push("", "### Crash hunt", "")
  out.push(files.narrow === undefined ? missing("narrow.json", files) : table(files.narrow.outcomes.map((o) => ({
    case: o.case,
    ended: o.ended,
    seconds: o.seconds,
    "last stderr": o.ended === "ok" ? "" : (o.stderrTail ?? "").slice(-120).replaceAll("|", "/")
  }))))
  return out.join("\n") + "\n"
}

/** Reads what the run brought back from `dir`; absent files stay undefined. */
export const readRun = (dir: string): RunFiles => {
  const text = (name: string) => {
    const file = Path.join(dir, name)
    return Fs.existsSync(file) ? Fs.readFileSync(file, "utf8") : undefined
  }
  const unreadable: Record<string, string> = {}
  const json = (name: string) => {
    const t = text(name)
    if (t === undefined) return undefined
    try {
      return JSON.parse(t)
    } catch (e) {
      unreadable[name] = e instanceof Error ? e.message : String(e)
      return undefined
    }
  }
  const files = { summary: text("summary.txt"), gpu: json("gpu.json"), soak: json("soak.json"), soakLog: text("soak.log"), narrow: json("narrow.json") }
  return Object.keys(unreadable).length === 0 ? files : { ...files, unreadable }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(Path.resolve(process.argv[1])).href) {
  const dir = process.argv[2]
  if (dir === undefined) {
    console.error("usage: node scripts/gpu/report.ts DIR   (the folder check.sh filled: summary.txt, gpu.json, soak.json, narrow.json)")
    process.exit(2)
  }
  process.stdout.write(report(readRun(dir)))
}
