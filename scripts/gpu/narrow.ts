/**
 * The WebGPU crash hunt: every case of `crash-case.ts`, each in its own process with a time
 * limit, on the MLP of `--sizes` (default 1024-4096-4096-1000). Records how each ended (ok, a
 * signal such as SIGSEGV, an exit code, the time limit) with the last lines of its stderr (Dawn's
 * "CommandEncoder is already finished" and the like), prints a table and writes JSON.
 *
 *   node scripts/gpu/narrow.ts [--out=FILE.json] [--runs=300] [--timeout=30] [--only=a,b] [--sizes=...]
 *   PROVIDER=cpu node scripts/gpu/narrow.ts --sizes=64,64,10 --runs=20     (the harness, without a GPU)
 *
 * @module narrow
 */
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import { fileURLToPath } from "node:url"
import { cases } from "./crash-case.ts"
import { heavySizes, parseSizes, writeRepository } from "./model.ts"

const option = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
const runs = Number(option("runs") ?? 300)
const timeoutS = Number(option("timeout") ?? 30)
const only = option("only")?.split(",")
const out = option("out")
const repo = writeRepository(parseSizes(option("sizes"), heavySizes), { m: {} })
const script = fileURLToPath(new URL("./crash-case.ts", import.meta.url))

interface Outcome {
  readonly case: string
  readonly ended: string
  readonly seconds: number
  readonly result?: unknown
  readonly stderrTail: string
}

const runCase = (name: string): Promise<Outcome> =>
  new Promise((resolve) => {
    const t0 = performance.now()
    const child = spawn(process.execPath, [script, name, repo.modelPath, String(runs)], { stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()))
    child.stderr.on("data", (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)))
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutS * 1000)
    child.on("close", (code, signal) => {
      clearTimeout(timer)
      const seconds = +((performance.now() - t0) / 1000).toFixed(1)
      const last = stdout.trim().split("\n").pop() ?? ""
      let result: unknown
      try {
        result = JSON.parse(last)
      } catch {
        result = undefined
      }
      const ended = signal === "SIGKILL" && seconds >= timeoutS ? `time limit ${timeoutS} s` : signal !== null ? `signal ${signal}` : code === 0 && result !== undefined ? "ok" : `exit ${code}`
      const tail = stderr.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !/^at /.test(l)).slice(-4).join(" | ")
      resolve({ case: name, ended, seconds, ...(result === undefined ? {} : { result }), stderrTail: tail.slice(0, 600) })
    })
  })

/**
 * The cases that check the engine's fixes run first (two GPU sessions in threads taking turns, two GPU
 * models in threads, the process default at 256 outstanding), after the layout `bench gpu` itself
 * runs in (a WebGPU session on the main thread beside CPU sessions in worker threads: were it to
 * crash, this says why the bench ended early), then the ones that narrowed the crash down: a run
 * stopped at the phase's time limit then loses the least.
 */
const first = ["gpumain+cpuworker", "workers2-locked", "engine-thread-2models", "engine-process-256", "engine-process-2models-256", "engine-thread-1x64"]
const order = [...first.filter((n) => n in cases), ...Object.keys(cases).filter((n) => !first.includes(n))]

const outcomes: Array<Outcome> = []
for (const name of order.filter((n) => only === undefined || only.includes(n))) {
  const o = await runCase(name)
  outcomes.push(o)
  console.log(`${o.ended.padEnd(16)} ${o.case.padEnd(28)} ${String(o.seconds).padStart(5)} s  ${o.result === undefined ? o.stderrTail : JSON.stringify(o.result)}`)
  if (out !== undefined) Fs.writeFileSync(out, JSON.stringify({ provider: process.env["PROVIDER"] ?? "webgpu", runs, timeoutS, sizes: repo.sizes, outcomes }, null, 2))
}
repo.remove()
