/**
 * Helpers for the deploy scripts (`npm run test:container`, `npm run test:replicas`): external
 * commands with a time bound, the tools they need (named with the Debian package when one is
 * missing), free ports, waiting for readiness, and the one-line machine-readable summary.
 */
import { spawn, spawnSync } from "node:child_process"
import * as Net from "node:net"

/** Exit code of a script whose tools are missing: it did not run, which is not a pass. */
export const missingToolsExit = 3

/** Exits with `missingToolsExit` naming every tool that is not on the PATH and the package that has it. */
export const requireTools = (script: string, tools: Record<string, string>): void => {
  const missing = Object.entries(tools).filter(([tool]) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0)
  if (missing.length === 0) return
  console.error(`${script}: missing ${missing.map(([t]) => t).join(", ")}; on Debian: apt-get install -y ${[...new Set(missing.map(([, p]) => p))].join(" ")}`)
  console.log(JSON.stringify({ test: script, ok: false, skipped: true, missing: missing.map(([t]) => t) }))
  process.exit(missingToolsExit)
}

export interface CommandResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Runs a command to completion (killed after `timeoutMs`); never rejects. */
export const run = (command: string, args: ReadonlyArray<string>, options: { timeoutMs?: number; env?: Record<string, string>; input?: string } = {}): Promise<CommandResult> =>
  new Promise((resolve) => {
    const child = spawn(command, args, { env: { ...process.env, ...options.env }, stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout!.on("data", (c: Buffer) => (stdout += c.toString("utf8")))
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 120_000)
    child.on("error", (e) => {
      clearTimeout(timer)
      resolve({ code: -1, stdout, stderr: stderr + String(e) })
    })
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
    if (options.input !== undefined) {
      // A command that exits without reading its input must not crash the script (EPIPE).
      child.stdin!.on("error", () => {})
      child.stdin!.end(options.input)
    }
  })

/** Like `run`, but throws with the command's output when it does not exit 0. */
export const runOk = async (command: string, args: ReadonlyArray<string>, options: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<string> => {
  const result = await run(command, args, options)
  if (result.code !== 0) throw new Error(`${command} ${args.join(" ")} exited ${result.code}:\n${result.stdout.slice(-4000)}${result.stderr.slice(-4000)}`)
  return result.stdout
}

/** A TCP port free on 127.0.0.1 now (the kernel picks it). */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const port = (server.address() as Net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })

/** GET http://127.0.0.1:port/path: the status, or undefined when nothing answers. */
export const getStatus = async (port: number, path: string): Promise<number | undefined> => {
  try {
    const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(2000) })
    await response.arrayBuffer()
    return response.status
  } catch {
    return undefined
  }
}

/** GET the body as text (throws when the status is not 200). */
export const getText = async (port: number, path: string): Promise<string> => {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(5000) })
  const text = await response.text()
  if (response.status !== 200) throw new Error(`GET ${path}: ${response.status} ${text}`)
  return text
}

/** Polls until `path` answers 200, or throws after `timeoutMs`. */
export const waitFor200 = async (port: number, path: string, timeoutMs: number): Promise<number> => {
  const started = performance.now()
  while (performance.now() - started < timeoutMs) {
    if ((await getStatus(port, path)) === 200) return performance.now() - started
    await sleep(100)
  }
  throw new Error(`GET 127.0.0.1:${port}${path} did not answer 200 within ${timeoutMs} ms`)
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

/** The value of a Prometheus sample `name{…labels}` (labels given as `key="value"` fragments), summed over matches. */
export const metricValue = (page: string, name: string, ...labels: ReadonlyArray<string>): number => {
  let sum = 0
  for (const line of page.split("\n")) {
    if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue
    if (!labels.every((l) => line.includes(l))) continue
    sum += Number(line.slice(line.lastIndexOf(" ") + 1))
  }
  return sum
}

/** Counts labels: `{ "200": 812, "503": 3 }`. */
export const tally = (labels: Iterable<string>): Record<string, number> => {
  const counts: Record<string, number> = {}
  for (const l of labels) counts[l] = (counts[l] ?? 0) + 1
  return counts
}

/** A check: recorded in the summary, printed as it happens. */
export class Checks {
  readonly results: Array<{ readonly name: string; readonly ok: boolean; readonly detail?: unknown }> = []
  check(name: string, ok: boolean, detail?: unknown): boolean {
    this.results.push(detail === undefined ? { name, ok } : { name, ok, detail })
    console.error(`${ok ? "ok  " : "FAIL"} ${name}${detail === undefined ? "" : ` ${JSON.stringify(detail)}`}`)
    return ok
  }
  get ok(): boolean {
    return this.results.length > 0 && this.results.every((r) => r.ok)
  }
}
