/**
 * http: the OIP server against a minimal `node:http` + onnxruntime-node server doing the same
 * work (`bench/http-baseline.ts`), over real sockets, closed loop at 1, 16 and 64 outstanding
 * requests (MLP, one 784-float row a request, JSON both ways).
 *
 *   (a) baseline     node:http, one in-thread session, no queue (the floor to beat)
 *   (a2) p-queue     the same with p-queue(4) in front of `session.run`
 *   (a3) microbatch  the same with a hand-written micro-batcher (64 rows or 2 ms, whichever first)
 *   (b) oip          `node src/bin/server.ts`, mlp with `config.json` {"batching": {"enabled": false}}
 *   (c) oip+batching the same server, {"batching": {"enabled": true, "maxBatchSize": 64, "maxQueueDelayMs": 0}}
 *                    and MAX_CONCURRENT_REQUESTS=2 (`--batching-max-concurrent`), so that batches form
 *   (d) oip binary   with `--binary`: server (b) fed the row as binary tensor data (Triton's extension),
 *                    logits back as binary; no goal, it shows what JSON numbers cost
 *
 * Each server is its own process, started once; the load generator (this process) keeps N
 * keep-alive connections busy and sends a pre-serialized body. Contenders alternate within every
 * round (the starting one rotating); figures are medians over rounds, ratios medians of per-round
 * ratios. Server CPU per request is read from /proc: all threads of the server process, and its
 * main thread alone (the event loop: HTTP, decoding, scheduling).
 *
 * Goals (issue 11): at concurrency 1, oip ≥ 0.8× baseline and ≤ 250 µs of main-thread CPU per
 * request; at 64 outstanding, oip+batching ≥ 1.4× baseline and ≥ 1.0× the micro-batcher, and
 * binary ≥ 2× JSON.
 *
 * Usage: npm run bench -- http [--quick], or node --expose-gc bench/http.ts [--quick] [--rounds=N]
 *        [--seconds=S] [--levels=1,16,64] [--batching-max-concurrent=N] [--binary]
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Os from "node:os"
import * as Path from "node:path"
import {
  alternate,
  type Contender,
  fmt,
  goal,
  goalsTable,
  log,
  median,
  mlpData,
  modelsDir,
  parseArgs,
  ratio,
  repoRoot,
  section,
  table,
  writeResults
} from "./lib/common.ts"
import { closedLoopAsync, type LoadResult } from "./lib/load.ts"

const args = parseArgs()
const ROUNDS = Number(args.options["rounds"] ?? (args.quick ? 2 : 5))
const SECONDS = Number(args.options["seconds"] ?? (args.quick ? 1 : 2.5))
const LEVELS = (args.options["levels"] ?? "1,16,64").split(",").map(Number)
/** Runs at once for the batching server: few, so that requests queue and batches form (1 instance). */
const BATCHING_MAX_CONCURRENT = Number(args.options["batching-max-concurrent"] ?? 2)
/** Also the server fed binary tensor data (`--binary`): the same row, without JSON numbers either way. */
const WITH_BINARY = args.options["binary"] === "true"

interface Server {
  readonly name: string
  readonly child: ChildProcess
  readonly port: number
  readonly path: string
  /** Send the row as binary tensor data (Triton's extension) and ask for binary logits. */
  readonly binary?: boolean
}

const start = (name: string, argv: ReadonlyArray<string>, path: string, env: Record<string, string> = {}, binary = false): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...argv], { cwd: repoRoot, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    const onData = (c: Buffer) => {
      output += c.toString("utf8")
      const m = /listening on http:\/\/[^:\s]+:(\d+)/.exec(output)
      if (m !== null) resolve({ name, child, port: Number(m[1]), path, binary })
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.on("exit", (code) => reject(new Error(`${name} exited with ${code}:\n${output}`)))
  })

const stop = (server: Server): Promise<void> =>
  new Promise((resolve) => {
    if (server.child.exitCode !== null) return resolve()
    server.child.once("exit", () => resolve())
    server.child.kill("SIGTERM")
  })

/** On-CPU µs of the process's main thread (tid = pid), from /proc/<pid>/task/<pid>/schedstat. */
const mainThreadUs = (pid: number): number => {
  try {
    return Number(Fs.readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").split(" ")[0]) / 1000
  } catch {
    return NaN
  }
}

/** CPU seconds (user + system, every thread) the process has used, from /proc. */
const cpuSeconds = (pid: number): number => {
  try {
    const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return NaN
  }
}

const body = Buffer.from(JSON.stringify({
  inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", data: Array.from(mlpData(1, 7)) }]
}))

/** The same row as binary tensor data: the JSON header, then the 3,136 bytes of the row; binary logits back. */
const binaryHeader = Buffer.from(JSON.stringify({
  inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", parameters: { binary_data_size: 784 * 4 } }],
  outputs: [{ name: "logits", parameters: { binary_data: true } }]
}))
const binaryBody = Buffer.concat([binaryHeader, Buffer.from(mlpData(1, 7).buffer)])

/** One POST; resolves with the status after the whole body was read, rejects on a network error or a non-200. */
const post = (server: Server, agent: Http.Agent): Promise<void> =>
  new Promise((resolve, reject) => {
    const req = Http.request({
      host: "127.0.0.1",
      port: server.port,
      method: "POST",
      path: server.path,
      agent,
      headers: server.binary === true
        ? { "content-type": "application/octet-stream", "content-length": binaryBody.length, "inference-header-content-length": binaryHeader.length }
        : { "content-type": "application/json", "content-length": body.length }
    }, (res) => {
      res.on("data", () => {})
      res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`))))
      res.on("error", reject)
    })
    req.on("error", reject)
    req.end(server.binary === true ? binaryBody : body)
  })

interface Block extends LoadResult {
  readonly serverCpuUsPerReq: number
  readonly serverMainCpuUsPerReq: number
}

const load = async (server: Server, outstanding: number, seconds: number): Promise<Block> => {
  const agent = new Http.Agent({ keepAlive: true, maxSockets: outstanding })
  try {
    const pid = server.child.pid!
    const cpu0 = cpuSeconds(pid)
    const main0 = mainThreadUs(pid)
    const result = await closedLoopAsync(outstanding, seconds * 1000, () => ({ run: () => post(server, agent) }))
    const cpu = cpuSeconds(pid) - cpu0
    const mainUs = mainThreadUs(pid) - main0
    return { ...result, serverCpuUsPerReq: (cpu * 1e6) / Math.max(1, result.completed), serverMainCpuUsPerReq: mainUs / Math.max(1, result.completed) }
  } finally {
    agent.destroy()
  }
}

const repository = (withBatching: boolean): string => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), `bench-http-${withBatching ? "on" : "off"}-`))
  Fs.mkdirSync(Path.join(dir, "mlp"))
  Fs.copyFileSync(Path.join(modelsDir, "mlp/model.onnx"), Path.join(dir, "mlp/model.onnx"))
  const batching = withBatching ? { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 } : { enabled: false }
  Fs.writeFileSync(Path.join(dir, "mlp/config.json"), JSON.stringify({ batching }))
  return dir
}

const main = async () => {
  log(`http: ${ROUNDS} rounds × ${SECONDS} s per contender and level ${LEVELS.join(", ")}${args.quick ? " (quick)" : ""}`)
  const repos = { off: repository(false), on: repository(true) }
  // A queue deeper than the deepest load, so that no request is refused with 429.
  const engineEnv = { MAX_QUEUED_REQUESTS: "1024" }
  const infer = "/v2/models/mlp/infer"
  const servers = await Promise.all([
    start("baseline", ["bench/http-baseline.ts", "--port=0"], infer),
    start("p-queue", ["bench/http-baseline.ts", "--port=0", "--mode=pqueue"], infer),
    start("microbatch", ["bench/http-baseline.ts", "--port=0", "--mode=microbatch"], infer),
    start("oip", ["src/bin/server.ts", "--port", "0", "--models", repos.off], infer, engineEnv),
    start("oip+batching", ["src/bin/server.ts", "--port", "0", "--models", repos.on], infer, {
      ...engineEnv,
      MAX_CONCURRENT_REQUESTS: String(BATCHING_MAX_CONCURRENT)
    }),
    ...(WITH_BINARY ? [start("oip binary", ["src/bin/server.ts", "--port", "0", "--models", repos.off], infer, engineEnv, true)] : [])
  ])
  try {
    // Warm-up: the JIT needs seconds of traffic before the Effect code paths are optimised.
    for (const s of servers) await load(s, 16, args.quick ? 1 : 4)

    const results: Record<number, Record<string, Array<Block>>> = {}
    for (const level of LEVELS) {
      const contenders: Array<Contender<Block>> = servers.map((s) => ({ name: s.name, run: () => load(s, level, SECONDS) }))
      results[level] = await alternate(ROUNDS, contenders, (round, name, r) =>
        log(`  c=${level} round ${round + 1} ${name}: ${fmt(r.reqPerSec)} req/s p50 ${fmt(r.latency["all"]!.p50)} ms p99 ${fmt(r.latency["all"]!.p99)} ms${r.failed > 0 ? ` FAILED ${r.failed} (${r.firstError})` : ""}`), `c=${level}`)
    }

    const rows = []
    const summary: Record<string, Record<string, unknown>> = {}
    for (const level of LEVELS) {
      const byName = results[level]!
      const base = byName["baseline"]!
      for (const s of servers) {
        const blocks = byName[s.name]!
        const perRoundRatio = blocks.map((b, i) => b.reqPerSec / base[i]!.reqPerSec)
        const row = {
          outstanding: level,
          server: s.name,
          "req/s": median(blocks.map((b) => b.reqPerSec)),
          "vs baseline": s.name === "baseline" ? "1.00×" : ratio(median(perRoundRatio)),
          "p50 ms": median(blocks.map((b) => b.latency["all"]!.p50)),
          "p99 ms": median(blocks.map((b) => b.latency["all"]!.p99)),
          "server main-thread CPU µs/req": median(blocks.map((b) => b.serverMainCpuUsPerReq)),
          "server CPU µs/req (all threads)": median(blocks.map((b) => b.serverCpuUsPerReq)),
          failed: blocks.reduce((n, b) => n + b.failed, 0)
        }
        rows.push(row)
        summary[`${s.name}@${level}`] = { ...row, ratioVsBaseline: median(perRoundRatio), blocks }
      }
    }

    section("HTTP throughput: OIP server vs minimal node:http + onnxruntime-node (MLP, closed loop)")
    console.log(table(rows))
    const at = (name: string, level = 64) => summary[`${name}@${level}`]?.["ratioVsBaseline"] as number | undefined
    /** Median of per-round ratios of two contenders at one level. */
    const pair = (a: string, b: string, level: number) => {
      const xs = results[level]?.[a]
      const ys = results[level]?.[b]
      return xs === undefined || ys === undefined ? NaN : median(xs.map((x, i) => x.reqPerSec / ys[i]!.reqPerSec))
    }
    const mainCpuAt1 = median((results[1]?.["oip"] ?? []).map((b) => b.serverMainCpuUsPerReq))
    const goals = [
      ...(LEVELS.includes(1)
        ? [
          goal("oip main-thread CPU per request at concurrency 1", "≤ 250 µs", mainCpuAt1, mainCpuAt1 <= 250, `${fmt(mainCpuAt1)} µs`),
          goal("oip at concurrency 1", "≥ 0.8× baseline", at("oip", 1) ?? NaN, (at("oip", 1) ?? 0) >= 0.8, ratio(at("oip", 1) ?? NaN))
        ]
        : []),
      ...(LEVELS.includes(64)
        ? [
          goal("oip+batching at 64 outstanding", "≥ 1.4× baseline", at("oip+batching") ?? NaN, (at("oip+batching") ?? 0) >= 1.4, ratio(at("oip+batching") ?? NaN)),
          goal("oip+batching at 64 outstanding", "≥ 1.0× micro-batcher", pair("oip+batching", "microbatch", 64), pair("oip+batching", "microbatch", 64) >= 1, ratio(pair("oip+batching", "microbatch", 64))),
          ...(WITH_BINARY ? [goal("binary tensor data vs JSON at 64 outstanding (oip)", "≥ 2×", pair("oip binary", "oip", 64), pair("oip binary", "oip", 64) >= 2, ratio(pair("oip binary", "oip", 64)))] : [])
        ]
        : [])
    ]
    if (goals.length > 0) {
      section("Goals")
      console.log(goalsTable(goals))
    }
    const file = writeResults("http", {
      args: { quick: args.quick, rounds: ROUNDS, seconds: SECONDS, levels: LEVELS },
      setup: {
        model: "mlp (784-256-10), one row a request, JSON body of 784 floats",
        baseline: "bench/http-baseline.ts: node:http, one in-thread InferenceSession (intraOpNumThreads 1)",
        oip: "node src/bin/server.ts: engine defaults (maxConcurrentRequests 4), MAX_QUEUED_REQUESTS=1024, OnnxModelPool (1 worker-thread session), config.json batching disabled",
        batching: `config.json batching {enabled, maxBatchSize 64, maxQueueDelayMs 0}, MAX_CONCURRENT_REQUESTS=${BATCHING_MAX_CONCURRENT}`
      },
      results: summary,
      goals
    })
    log(`results: ${Path.relative(repoRoot, file)}`)
  } finally {
    await Promise.all(servers.map(stop))
    for (const dir of Object.values(repos)) Fs.rmSync(dir, { recursive: true, force: true })
  }
}

await main()
