/**
 * Shared benchmark helpers: arguments, machine description, statistics, alternating rounds,
 * tables, goals and the JSON result files.
 *
 * Every benchmark runs its contenders alternately in one process (round r runs every contender
 * once, the starting contender rotating each round), so slow phases of a noisy shared machine
 * hit every contender alike. Figures are medians over rounds; ratios are medians of per-round
 * ratios (paired within a round), which cancels most of the drift between rounds.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as Mulberry32 from "../../src/internal/Mulberry32.ts"

export const benchDir = fileURLToPath(new URL("..", import.meta.url))
export const repoRoot = Path.resolve(benchDir, "..")
export const modelsDir = Path.join(repoRoot, "models")
export const resultsDir = Path.join(benchDir, "results")

// ---------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------

export interface Args {
  readonly quick: boolean
  /** `--key=value` options, raw. */
  readonly options: Readonly<Record<string, string>>
  readonly positional: ReadonlyArray<string>
}

export const parseArgs = (argv: ReadonlyArray<string> = process.argv.slice(2)): Args => {
  const options: Record<string, string> = {}
  const positional: Array<string> = []
  for (const a of argv) {
    if (a.startsWith("--")) {
      const eq = a.indexOf("=")
      if (eq < 0) options[a.slice(2)] = "true"
      else options[a.slice(2, eq)] = a.slice(eq + 1)
    } else positional.push(a)
  }
  return { quick: options["quick"] === "true", options, positional }
}

// ---------------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------------

export interface Machine {
  readonly nproc: number
  readonly cpuModel: string
  readonly node: string
  readonly platform: string
  readonly totalMemMiB: number
  readonly loadAvg: ReadonlyArray<number>
  readonly gcExposed: boolean
  readonly execArgv: ReadonlyArray<string>
}

export const cpuModel = (): string => {
  try {
    const text = Fs.readFileSync("/proc/cpuinfo", "utf8")
    const m = /^model name\s*:\s*(.+)$/m.exec(text)
    if (m !== null) return m[1]!.trim()
  } catch {
    // not Linux
  }
  return Os.cpus()[0]?.model ?? "unknown"
}

export const machine = (): Machine => ({
  nproc: Os.availableParallelism(),
  cpuModel: cpuModel(),
  node: process.version,
  platform: `${process.platform}/${process.arch}`,
  totalMemMiB: Math.round(Os.totalmem() / 2 ** 20),
  loadAvg: Os.loadavg().map((x) => +x.toFixed(2)),
  gcExposed: typeof globalThis.gc === "function",
  execArgv: process.execArgv
})

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

export interface Stats {
  readonly n: number
  readonly p50: number
  readonly p90: number
  readonly p99: number
  readonly max: number
  readonly mean: number
}

/** Nearest-rank percentile of an ascending array. */
const rank = (sorted: ArrayLike<number>, p: number): number =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!

export const stats = (samples: ArrayLike<number>): Stats => {
  const s = Float64Array.from(samples).sort()
  let sum = 0
  for (let i = 0; i < s.length; i++) sum += s[i]!
  return {
    n: s.length,
    p50: rank(s, 0.5),
    p90: rank(s, 0.9),
    p99: rank(s, 0.99),
    max: s.length === 0 ? NaN : s[s.length - 1]!,
    mean: s.length === 0 ? NaN : sum / s.length
  }
}

export const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].filter((x) => !Number.isNaN(x)).sort((a, b) => a - b)
  if (s.length === 0) return NaN
  const mid = s.length >> 1
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

export const min = (xs: ReadonlyArray<number>): number => Math.min(...xs)
export const max = (xs: ReadonlyArray<number>): number => Math.max(...xs)

/** A growable sample buffer that does not allocate per sample. */
export class Samples {
  #data: Float64Array
  #n = 0
  constructor(capacity = 1024) {
    this.#data = new Float64Array(capacity)
  }
  push(x: number): void {
    if (this.#n === this.#data.length) {
      const next = new Float64Array(this.#data.length * 2)
      next.set(this.#data)
      this.#data = next
    }
    this.#data[this.#n++] = x
  }
  get length(): number {
    return this.#n
  }
  view(): Float64Array {
    return this.#data.subarray(0, this.#n)
  }
  clear(): void {
    this.#n = 0
  }
}

// ---------------------------------------------------------------------------
// Alternation
// ---------------------------------------------------------------------------

export const gc = (): void => {
  const f = (globalThis as { gc?: () => void }).gc
  if (f !== undefined) {
    f()
    f()
  }
}

/** Jiffies the whole machine spent busy, from /proc/stat (undefined off Linux). */
const machineBusyJiffies = (): number | undefined => {
  try {
    const line = Fs.readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!
    const f = line.trim().split(/\s+/).slice(1).map(Number)
    // user nice system idle iowait irq softirq steal ...
    return f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!
  } catch {
    return undefined
  }
}

/**
 * Measures how busy the machine was with OTHER processes during a block: (machine busy CPU −
 * this process's CPU) / (wall time × cores), in [0, 1]. The machine is shared; a block with a
 * high figure was measured while something else ran.
 */
export const foreignLoad = () => {
  const j0 = machineBusyJiffies()
  const c0 = process.cpuUsage()
  const t0 = performance.now()
  return (): number => {
    const j1 = machineBusyJiffies()
    if (j0 === undefined || j1 === undefined) return NaN
    const wallS = (performance.now() - t0) / 1000
    const ownS = (() => {
      const c = process.cpuUsage(c0)
      return (c.user + c.system) / 1e6
    })()
    const hz = 100
    const machineS = (j1 - j0) / hz
    return Math.max(0, Math.min(1, (machineS - ownS) / (wallS * Os.availableParallelism())))
  }
}

/** Foreign load of every block `alternate` ran (written into every result file). */
export const foreignLog: Array<{ readonly group: string; readonly round: number; readonly contender: string; readonly load: number }> = []

/** Median and max foreign load over the blocks run so far. */
export const foreignSummary = () => {
  const xs = foreignLog.map((f) => f.load).filter((x) => !Number.isNaN(x))
  return { blocks: xs.length, median: +median(xs).toFixed(3), max: xs.length === 0 ? NaN : +Math.max(...xs).toFixed(3) }
}

export interface Contender<T> {
  readonly name: string
  readonly run: (round: number) => Promise<T>
}

/**
 * Runs `rounds` rounds; each round runs every contender once, starting one later each round
 * (A B C, B C A, C A B, …). A full GC precedes every block when `--expose-gc` is on.
 */
export const alternate = async <T>(
  rounds: number,
  contenders: ReadonlyArray<Contender<T>>,
  onBlock?: (round: number, name: string, result: T) => void,
  group = ""
): Promise<Record<string, Array<T>>> => {
  const out: Record<string, Array<T>> = {}
  for (const c of contenders) out[c.name] = []
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < contenders.length; k++) {
      const c = contenders[(r + k) % contenders.length]!
      gc()
      const stop = foreignLoad()
      const result = await c.run(r)
      foreignLog.push({ group, round: r, contender: c.name, load: stop() })
      out[c.name]!.push(result)
      onBlock?.(r, c.name, result)
    }
  }
  return out
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

export const fmt = (x: number, digits = 3): string => {
  if (Number.isNaN(x)) return "–"
  if (!Number.isFinite(x)) return String(x)
  const a = Math.abs(x)
  if (a >= 1000) return Math.round(x).toLocaleString("en-US")
  if (Number.isInteger(x)) return String(x)
  if (a >= 100) return x.toFixed(Math.max(0, digits - 3))
  if (a >= 10) return x.toFixed(Math.max(1, digits - 2))
  return x.toFixed(digits)
}

export const ratio = (x: number): string => (Number.isNaN(x) ? "–" : `${x.toFixed(2)}×`)

export type Row = Record<string, string | number>

/** A Markdown table (it also reads well in a terminal). */
export const table = (rows: ReadonlyArray<Row>, columns?: ReadonlyArray<string>): string => {
  if (rows.length === 0) return "(no rows)"
  const cols = columns ?? Object.keys(rows[0]!)
  const cell = (v: string | number | undefined) => (v === undefined ? "" : typeof v === "number" ? fmt(v) : v)
  const widths = cols.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)))
  const line = (values: ReadonlyArray<string>) => `| ${values.map((v, i) => v.padEnd(widths[i]!)).join(" | ")} |`
  return [
    line(cols),
    `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`,
    ...rows.map((r) => line(cols.map((c) => cell(r[c]))))
  ].join("\n")
}

// ---------------------------------------------------------------------------
// Goals and results
// ---------------------------------------------------------------------------

export interface Goal {
  readonly goal: string
  readonly target: string
  readonly measured: string
  readonly value: number
  readonly pass: boolean
}

export const goal = (goalText: string, target: string, value: number, pass: boolean, measured?: string): Goal => ({
  goal: goalText,
  target,
  measured: measured ?? fmt(value),
  value,
  pass
})

export const goalsTable = (goals: ReadonlyArray<Goal>): string =>
  table(goals.map((g) => ({ goal: g.goal, target: g.target, measured: g.measured, result: g.pass ? "PASS" : "MISS" })))

export const section = (title: string): void => {
  console.log(`\n## ${title}\n`)
}

export const log = (text: string): void => {
  process.stderr.write(`${text}\n`)
}

/** Writes `bench/results/<name>.json` and returns its path. */
export const writeResults = (name: string, data: Record<string, unknown>): string => {
  Fs.mkdirSync(resultsDir, { recursive: true })
  const file = Path.join(resultsDir, `${name}.json`)
  const body = { benchmark: name, date: new Date().toISOString(), machine: machine(), foreignLoad: { summary: foreignSummary(), blocks: foreignLog }, ...data }
  Fs.writeFileSync(file, `${JSON.stringify(body, null, 2)}\n`)
  return file
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

export const MLP_IN = 784
export const MLP_OUT = 10

/** Deterministic MLP input, `rows` × 784 in [-0.5, 0.5). */
export const mlpData = (rows: number, seed = 1): Float32Array<ArrayBuffer> => {
  const a = new Float32Array(rows * MLP_IN)
  let s = seed >>> 0
  for (let i = 0; i < a.length; i++) {
    s = (s * 1664525 + 1013904223) >>> 0
    a[i] = s / 4294967296 - 0.5
  }
  return a
}

/** A deterministic PRNG (mulberry32) for workload choices. */
export const rng = (seed: number): () => number => Mulberry32.make(seed)

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))
