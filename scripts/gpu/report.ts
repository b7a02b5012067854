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
import { fmt, table } from "../../bench/lib/common.ts"

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
  readonly narrow?: { readonly outcomes: ReadonlyArray<{ readonly case: string; readonly ended: string; readonly seconds: number; readonly stderrTail?: string }> } | undefined
}

const missing = (file: string) => `(${file} was not brought back: see summary.txt and logs.tar.gz)`

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
  if ((gpu.goals ?? []).length > 0) {
    out.push("", table(gpu.goals!.map((g) => ({ goal: g.goal, target: g.target, measured: g.measured, result: g.pass ? "met" : "missed" }))))
  } else {
    out.push("", "No goals measured (they need a WebGPU adapter).")
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
  return `${soak["pass"] === true ? "**Passed**" : "**Failed**"}: ${n("seconds")} s at ${n("outstanding")} outstanding, ${n("completed")} requests answered ` +
    `(${n("reqPerSec")} req/s, ${n("rowsPerRun")} rows and ${n("requestsPerRun")} requests a run on average), ${n("cancelledAsked")} cancellations and ` +
    `${n("tightDeadlines")} tight deadlines asked; expected failures ${json("expectedFailures")}, unexpected ${json("unexpectedFailures")}; ` +
    `${n("mismatches")} answers off the CPU's by more than 1e-4 (max abs diff ${typeof soak["maxAbsDiff"] === "number" ? (soak["maxAbsDiff"] as number).toExponential(1) : "?"}); devices ${json("devices")}.`
}

/** The report, as Markdown. */
export const report = (files: RunFiles): string => {
  const out: Array<string> = ["## The GPU run", ""]
  out.push(files.summary === undefined ? missing("summary.txt") : ["```", files.summary.trim(), "```"].join("\n"))
  out.push("", "### bench gpu", "")
  if (files.gpu === undefined) out.push(missing("gpu.json"))
  else out.push(...benchSection(files.gpu))
  out.push("", "### Soak", "")
  out.push(files.soak === undefined ? missing("soak.json") : soakSection(files.soak))
  out.push("", "### Crash hunt", "")
  out.push(files.narrow === undefined ? missing("narrow.json") : table(files.narrow.outcomes.map((o) => ({
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
  const json = (name: string) => {
    const t = text(name)
    return t === undefined ? undefined : JSON.parse(t)
  }
  return { summary: text("summary.txt"), gpu: json("gpu.json"), soak: json("soak.json"), narrow: json("narrow.json") }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(Path.resolve(process.argv[1])).href) {
  const dir = process.argv[2]
  if (dir === undefined) {
    console.error("usage: node scripts/gpu/report.ts DIR   (the folder check.sh filled: summary.txt, gpu.json, soak.json, narrow.json)")
    process.exit(2)
  }
  process.stdout.write(report(readRun(dir)))
}
