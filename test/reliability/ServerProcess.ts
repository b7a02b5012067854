/**
 * The standalone server as a child process (`node src/bin/server.ts`), for the reliability tests
 * and the soak run: start it, read the port it prints, sample its memory, signal it, await its
 * exit. Plus a closed-loop HTTP load: N clients, each on its own kept-alive connection, each
 * sending its next request as soon as the previous one is answered.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

export const root = fileURLToPath(new URL("../..", import.meta.url))
export const entry = Path.join(root, "src/bin/server.ts")

export interface Running {
  readonly child: ChildProcess
  readonly port: number
  /** Everything it wrote on stdout and stderr so far. */
  readonly output: () => string
  /** Its exit code (null when killed by a signal). */
  readonly exit: Promise<number | null>
  /** When it exited (`performance.now()`), once it has. */
  readonly exitedAt: () => number | undefined
}

/** Starts `node src/bin/server.ts --port 0 …args` and waits for its "listening on" line. */
export const startServer = (
  args: ReadonlyArray<string> = [],
  env: Record<string, string> = {},
  nodeArgs: ReadonlyArray<string> = [],
  /** `detached`: a process group of its own (its pid is the group's id), as a terminal's foreground job has. */
  options: { readonly detached?: boolean } = {}
): Promise<Running> =>
  new Promise((resolve, reject) => {
    // An ephemeral port unless the caller names one (the CLI takes a flag once).
    const port = args.includes("--port") ? [] : ["--port", "0"]
    const child = spawn(process.execPath, [...nodeArgs, entry, ...port, ...args], {
      cwd: root,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: options.detached === true
    })
    let output = ""
    let exitedAt: number | undefined
    const exit = new Promise<number | null>((r) =>
      child.on("exit", (code) => {
        exitedAt = performance.now()
        r(code)
      })
    )
    const onData = (chunk: Buffer) => {
      output += chunk.toString("utf8")
      const match = /listening on http:\/\/[^:\s]+:(\d+)/.exec(output)
      if (match !== null) resolve({ child, port: Number(match[1]), output: () => output, exit, exitedAt: () => exitedAt })
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    void exit.then((code) => reject(new Error(`server exited with ${code} before listening:\n${output}`)))
    setTimeout(() => reject(new Error(`server did not listen in time:\n${output}`)), 30_000).unref()
  })

/** Resident set size of a process in bytes (Linux: /proc), or undefined where it cannot be read. */
export const rssOf = (pid: number | undefined): number | undefined => {
  if (pid === undefined) return undefined
  try {
    const status = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
    const kb = /^VmRSS:\s+(\d+) kB/m.exec(status)
    return kb === null ? undefined : Number(kb[1]) * 1024
  } catch {
    return undefined
  }
}

/** Kills the server if it still runs. */
export const stopServer = async (server: Running | undefined): Promise<void> => {
  if (server === undefined || server.child.exitCode !== null || server.child.signalCode !== null) return
  server.child.kill("SIGKILL")
  await server.exit
}

/** One MLP row (784 floats) as an OIP request body. */
export const mlpBody = (seed = 0.25): string =>
  JSON.stringify({ inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", data: Array.from({ length: 784 }, (_, i) => ((i * 7919 + seed * 1000) % 1000) / 1000 - 0.5) }] })

export interface Outcome {
  /** The status, or the error code of a request that got no answer (ECONNRESET, …). */
  readonly label: string
  readonly status: number | undefined
  readonly ms: number
  readonly retryAfter: string | undefined
  readonly body: string
}

/**
 * Sends one request on `agent` (a POST of `body`, or a GET when `body` is undefined); settles
 * with the outcome, never rejects. `signal` aborts it (the outcome is then labelled "aborted").
 */
export const request = (
  port: number,
  path: string,
  body: string | undefined,
  agent: Http.Agent,
  signal?: AbortSignal
): Promise<Outcome> =>
  new Promise((resolve) => {
    const started = performance.now()
    const done = (label: string, status: number | undefined, retryAfter: string | undefined, text: string) =>
      resolve({ label, status, ms: performance.now() - started, retryAfter, body: text })
    const req = Http.request({
      host: "127.0.0.1",
      port,
      method: body === undefined ? "GET" : "POST",
      path,
      agent,
      headers: body === undefined ? {} : { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      ...(signal === undefined ? {} : { signal })
    }, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (c: Buffer) => chunks.push(c))
      response.on("end", () => {
        const retry = response.headers["retry-after"]
        done(String(response.statusCode), response.statusCode, Array.isArray(retry) ? retry[0] : retry, Buffer.concat(chunks).toString("utf8"))
      })
      response.on("error", (e: NodeJS.ErrnoException) => done(signal?.aborted === true ? "aborted" : e.code ?? e.message, undefined, undefined, ""))
    })
    req.on("error", (e: NodeJS.ErrnoException) => done(signal?.aborted === true ? "aborted" : e.code ?? e.message, undefined, undefined, ""))
    req.end(body)
  })

export interface Loop {
  /** Resolves when every client has stopped. */
  readonly done: Promise<void>
  /** Asks every client to stop after its current request. */
  readonly stop: () => void
}

/**
 * `clients` closed loops. `next` is called for each request a client is about to send and may
 * return an AbortSignal to cancel it; `record` sees every outcome and returns false to make that
 * client stop.
 */
export const closedLoop = (options: {
  readonly port: number
  readonly clients: number
  readonly path: string
  /** The body of each request (undefined: a GET). */
  readonly body: (client: number) => string | undefined
  readonly record: (outcome: Outcome, client: number) => boolean | void
  readonly signal?: (client: number) => AbortSignal | undefined
}): Loop => {
  let stopped = false
  const client = async (i: number) => {
    const agent = new Http.Agent({ keepAlive: true, maxSockets: 1 })
    try {
      while (!stopped) {
        const outcome = await request(options.port, options.path, options.body(i), agent, options.signal?.(i))
        if (options.record(outcome, i) === false) return
      }
    } finally {
      agent.destroy()
    }
  }
  const done = Promise.all(Array.from({ length: options.clients }, (_, i) => client(i))).then(() => undefined)
  return { done, stop: () => (stopped = true) }
}

/** The q-quantile (0…1) of `xs` (sorted in place). */
export const quantile = (xs: Array<number>, q: number): number => {
  if (xs.length === 0) return NaN
  xs.sort((a, b) => a - b)
  return xs[Math.min(xs.length - 1, Math.floor(q * xs.length))]!
}
