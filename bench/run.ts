/**
 * `npm run bench [-- names…] [-- --quick] [-- --cpu-prof]`: runs the benchmarks (all of them, or
 * those named: overhead, throughput, limit, priority, memory, http, isolation, grpc, gpu, sizing), each in its own Node process
 * started with `--expose-gc` (so that every benchmark can force a full GC before a reading or
 * a block), one after another. Other `--options` are passed on to each benchmark.
 *
 * Every benchmark prints its tables and goals on stdout and writes `bench/results/<name>.json`;
 * this runner also keeps the whole output in `bench/results/run.log` and ends with a summary of
 * every goal. Benchmarks are not a test gate: a missed goal does not fail the run, a crash does.
 *
 * `--cpu-prof` adds V8 CPU profiles (main thread and workers) under bench/results/prof/.
 * `BENCH_NODE_FLAGS="…"` adds other Node flags.
 */
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { benchDir, type Goal, goalsTable, machine, resultsDir, table } from "./lib/common.ts"

const all = ["overhead", "throughput", "limit", "priority", "memory", "http", "isolation", "grpc", "gpu", "sizing"] as const

const argv = process.argv.slice(2)
if (argv.includes("--help") || argv.includes("-h")) {
  // Not passed on: every benchmark would take it for an option and run in full.
  console.log(`npm run bench [-- names…] [-- --quick] [-- --cpu-prof]

Runs the benchmarks (all of them, or those named), each in its own Node process, one after
another; prints tables and goals, writes bench/results/<name>.json and bench/results/run.log.
  names        ${all.join(", ")}
  --quick      shorter runs (fewer rounds), for a first look
  --cpu-prof   V8 CPU profiles under bench/results/prof/
  BENCH_NODE_FLAGS="…"  other Node flags`)
  process.exit(0)
}
const names = argv.filter((a) => !a.startsWith("--"))
const passOn = argv.filter((a) => a.startsWith("--") && a !== "--cpu-prof")
const unknown = names.filter((n) => !(all as ReadonlyArray<string>).includes(n))
if (unknown.length > 0) {
  console.error(`unknown benchmark(s): ${unknown.join(", ")}; known: ${all.join(", ")}`)
  process.exit(2)
}
const selected = names.length === 0 ? [...all] : all.filter((n) => names.includes(n))

const nodeFlags = ["--expose-gc", ...(process.env["BENCH_NODE_FLAGS"]?.split(/\s+/).filter((f) => f !== "") ?? [])]
if (argv.includes("--cpu-prof")) nodeFlags.push("--cpu-prof", `--cpu-prof-dir=${Path.join(resultsDir, "prof")}`)

Fs.mkdirSync(resultsDir, { recursive: true })
const logFile = Fs.createWriteStream(Path.join(resultsDir, "run.log"))
const out = (text: string) => {
  process.stdout.write(text)
  logFile.write(text)
}

const runOne = (name: string): Promise<{ code: number; seconds: number }> =>
  new Promise((resolve) => {
    const t0 = performance.now()
    const child = spawn(process.execPath, [...nodeFlags, Path.join(benchDir, `${name}.ts`), ...passOn], { stdio: ["ignore", "pipe", "pipe"] })
    child.stdout.on("data", (d: Buffer) => out(d.toString()))
    child.stderr.on("data", (d: Buffer) => {
      process.stderr.write(d)
      logFile.write(d)
    })
    child.on("close", (code) => resolve({ code: code ?? 1, seconds: (performance.now() - t0) / 1000 }))
  })

const m = machine()
const started = new Date()
out(`# npm run bench ${argv.join(" ")}\n\n`)
out(`${started.toISOString()} — ${m.nproc} cores (${m.cpuModel}), Node ${m.node}, ${m.platform}, ${m.totalMemMiB} MiB, load average ${m.loadAvg.join(" ")}\n`)
out(`benchmarks: ${selected.join(", ")}; node flags: ${nodeFlags.join(" ")}${passOn.length > 0 ? `; options: ${passOn.join(" ")}` : ""}\n`)

const t0 = performance.now()
const runs: Array<{ name: string; code: number; seconds: number }> = []
for (const name of selected) {
  out(`\n# ${name}\n`)
  const r = await runOne(name)
  runs.push({ name, ...r })
  if (r.code !== 0) out(`\n${name} FAILED (exit ${r.code})\n`)
}

const goals: Array<Goal & { benchmark: string }> = []
for (const r of runs) {
  try {
    const json = JSON.parse(Fs.readFileSync(Path.join(resultsDir, `${r.name}.json`), "utf8")) as { goals?: Array<Goal>; date?: string }
    if (r.code === 0) for (const g of json.goals ?? []) goals.push({ ...g, benchmark: r.name })
  } catch {
    // no result file: the benchmark failed before writing it
  }
}
out(`\n# summary\n\n`)
out(`${table(runs.map((r) => ({ benchmark: r.name, seconds: +r.seconds.toFixed(1), exit: r.code })))}\n\n`)
out(`${goalsTable(goals.map((g) => ({ ...g, goal: `${g.benchmark}: ${g.goal}` })))}\n`)
out(`\ntotal ${((performance.now() - t0) / 1000).toFixed(0)} s; load average at the end ${machine().loadAvg.join(" ")}\n`)
logFile.end()
process.exitCode = runs.some((r) => r.code !== 0) ? 1 : 0
