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
 *   (a-bin) baseline binary  with `--binary`: server (a) fed the same binary body, logits back as
 *                    binary: (d)'s "vs baseline" is against it (same payload both sides), not (a)
 *
 * Each server is its own process, started once; the load generator (this process) keeps N
 * keep-alive connections busy and sends a pre-serialized body. Contenders alternate within every
 * round (the starting one rotating); figures are medians over rounds, ratios medians of per-round
 * ratios. Server CPU per request is read from /proc: all threads of the server process, and its
 * main thread alone (the event loop: HTTP, decoding, scheduling).
 *
 * Priority section (`--priority`, after the throughput levels): does Critical stay fast over HTTP
 * under a flood of Low? For oip+batching (server (c); Triton's `parameters.priority` in the JSON
 * body, 1 = Critical, 4 = Low), p-queue (a2; the same parameter, mapped to p-queue's priority so
 * that 1 runs first), the micro-batcher (a3; ignores it) and baseline (a; ignores it), each
 * contender's block in a round is
 *   (1) unloaded: Critical alone, 1 outstanding, for `--seconds` → Critical p50 and p99;
 *   (2) loaded: 64 outstanding, closed loop, every request Low with probability 0.95 and Critical
 *       with 0.05 (a PRNG seeded by the round, so every contender gets the same sequence), for
 *       `--seconds` → Critical p50 and p99 (recorded apart from Low) and total req/s.
 * The mix is drawn per request rather than from 61 Low + 3 Critical connections: with dedicated
 * connections the Critical share of the traffic grows with how fast a contender serves Critical,
 * so each contender would face a different flood; per request, every contender gets 95% Low and
 * the Critical sample is a steady 5% of what completes (its size is in the table). Ratio: loaded
 * Critical p99 ÷ unloaded Critical p99, the median of per-round ratios (both halves of a round
 * run back to back).
 *
 * Goals (issue 11): at concurrency 1, oip ≥ 0.8× baseline and ≤ 250 µs of main-thread CPU per
 * request; at 64 outstanding, oip+batching ≥ 1.4× baseline and ≥ 1.0× the micro-batcher, and
 * binary ≥ 2× JSON; with `--priority`, oip+batching Critical p99 loaded ÷ unloaded ≤ 1.5×.
 *
 * Usage: npm run bench -- http [--quick] [--priority], or node --expose-gc bench/http.ts [--quick]
 *        [--rounds=N] [--seconds=S] [--levels=1,16,64] [--batching-max-concurrent=N] [--binary] [--priority]
 *        [--decode-threads=N]
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
  rng,
  type Row,
  section,
  table,
  writeResults
} from "./lib/common.ts"
import { closedLoopAsync, cpuSeconds, type LoadResult } from "./lib/load.ts"
import * as OipHttp from "./lib/oipHttp.ts"
import { binaryBody, inputs, jsonBody } from "./lib/oipHttp.ts"

const args = parseArgs()
const ROUNDS = Number(args.options["rounds"] ?? (args.quick ? 2 : 5))
const SECONDS = Number(args.options["seconds"] ?? (args.quick ? 1 : 2.5))
const LEVELS = (args.options["levels"] ?? "1,16,64").split(",").map(Number)
/** Runs at once for the batching server: few, so that requests queue and batches form (1 instance). */
const BATCHING_MAX_CONCURRENT = Number(args.options["batching-max-concurrent"] ?? 2)
/** Also the server fed binary tensor data (`--binary`): the same row, without JSON numbers either way. */
const WITH_BINARY = args.options["binary"] === "true"
/**
 * Also the batching server with this many decode threads (`--decode-threads=N`, the server's
 * `--decode-threads`), beside the one with the default: is a decode thread worth it on this host?
 */
const DECODE_THREADS = args.options["decode-threads"]
/** Also the priority section (`--priority`): Critical latency alone and under a 95% Low flood. */
const WITH_PRIORITY = args.options["priority"] === "true"
/** The priority section's contenders, in order, with what they do with `parameters.priority`. */
const PRIORITY_CONTENDERS: ReadonlyArray<readonly [name: string, label: string]> = [
  ["oip+batching", "oip+batching (priority levels)"],
  ["p-queue", "p-queue (priorities)"],
  ["microbatch", "microbatch (no priorities)"],
  ["baseline", "baseline (plain, no queue)"]
]
const PRIORITY_OUTSTANDING = 64
const CRITICAL_SHARE = 0.05

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


type Class = "Critical" | "Low"
/** The same row with Triton's `parameters.priority`: 1 is Critical (the highest of four levels), 4 is Low. */
const priorityBodies: Record<Class, Buffer> = {
  Critical: Buffer.from(JSON.stringify({ parameters: { priority: 1 }, inputs })),
  Low: Buffer.from(JSON.stringify({ parameters: { priority: 4 }, inputs }))
}

/** One POST of the row to `server` (as binary tensor data when it takes that), or of `json` to a JSON server. */
const post = (server: Server, agent: Http.Agent, json: Buffer = jsonBody): Promise<void> =>
  server.binary === true ? OipHttp.post(server.port, server.path, agent, binaryBody, true) : OipHttp.post(server.port, server.path, agent, json)

interface Block extends LoadResult {
  readonly serverCpuUsPerReq: number
  readonly serverMainCpuUsPerReq: number
  /** This process's CPU per request: the load generator, on the same cores as the server. */
  readonly clientCpuUsPerReq: number
}

const load = async (server: Server, outstanding: number, seconds: number): Promise<Block> => {
  const agent = new Http.Agent({ keepAlive: true, maxSockets: outstanding })
  try {
    const pid = server.child.pid!
    const cpu0 = cpuSeconds(pid)
    const main0 = mainThreadUs(pid)
    const client0 = process.cpuUsage()
    const result = await closedLoopAsync(outstanding, seconds * 1000, () => ({ run: () => post(server, agent) }))
    const client = process.cpuUsage(client0)
    const cpu = cpuSeconds(pid) - cpu0
    const mainUs = mainThreadUs(pid) - main0
    const n = Math.max(1, result.completed)
    return {
      ...result,
      serverCpuUsPerReq: (cpu * 1e6) / n,
      serverMainCpuUsPerReq: mainUs / n,
      clientCpuUsPerReq: (client.user + client.system) / n
    }
  } finally {
    agent.destroy()
  }
}

/** A closed loop whose requests carry the priority `pick` chooses; latency is recorded by class. */
const classLoad = async (server: Server, outstanding: number, seconds: number, pick: () => Class): Promise<LoadResult> => {
  const agent = new Http.Agent({ keepAlive: true, maxSockets: outstanding })
  try {
    return await closedLoopAsync(outstanding, seconds * 1000, () => {
      const cls = pick()
      return { cls, run: () => post(server, agent, priorityBodies[cls]) }
    })
  } finally {
    agent.destroy()
  }
}

/** 95% Low, 5% Critical, from a PRNG seeded per round (the same sequence for every contender). */
const flood = (round: number): () => Class => {
  const next = rng(1000 + round)
  return () => (next() < CRITICAL_SHARE ? "Critical" : "Low")
}

interface PriorityBlock {
  /** Critical alone, 1 outstanding. */
  readonly unloaded: LoadResult
  /** 64 outstanding, 95% Low. */
  readonly loaded: LoadResult
}

const priorityBlock = async (server: Server, round: number, seconds: number): Promise<PriorityBlock> => ({
  unloaded: await classLoad(server, 1, seconds, () => "Critical"),
  loaded: await classLoad(server, PRIORITY_OUTSTANDING, seconds, flood(round))
})

const critical = (r: LoadResult, key: "n" | "p50" | "p99"): number => r.latency["Critical"]?.[key] ?? NaN

/**
 * The priority section: every contender's `priorityBlock`, alternating within rounds; one row a
 * contender (medians over rounds) and its figures for the result file.
 */
const measurePriority = async (servers: ReadonlyArray<Server>) => {
  const chosen = PRIORITY_CONTENDERS.map(([name, label]) => ({ server: servers.find((s) => s.name === name)!, label }))
  log(`priority: ${ROUNDS} rounds × (${SECONDS} s Critical alone + ${SECONDS} s at ${PRIORITY_OUTSTANDING} outstanding, ${CRITICAL_SHARE * 100}% Critical) per contender`)
  // Warm-up of the Low and Critical paths (the servers were warmed by the throughput levels).
  for (const c of chosen) await classLoad(c.server, PRIORITY_OUTSTANDING, args.quick ? 0.5 : 1, flood(999))
  const contenders: Array<Contender<PriorityBlock>> = chosen.map((c) => ({ name: c.server.name, run: (round) => priorityBlock(c.server, round, SECONDS) }))
  const results = await alternate(ROUNDS, contenders, (round, name, b) => {
    const failed = b.unloaded.failed + b.loaded.failed
    log(`  priority round ${round + 1} ${name}: alone p50 ${fmt(critical(b.unloaded, "p50"))} p99 ${fmt(critical(b.unloaded, "p99"))} ms; flood ${fmt(b.loaded.reqPerSec)} req/s, Critical n ${fmt(critical(b.loaded, "n"))} p50 ${fmt(critical(b.loaded, "p50"))} p99 ${fmt(critical(b.loaded, "p99"))} ms${failed > 0 ? ` FAILED ${failed} (${b.unloaded.firstError ?? b.loaded.firstError})` : ""}`)
  }, "priority")
  const rows: Array<Row> = []
  const summary: Record<string, Record<string, unknown>> = {}
  for (const c of chosen) {
    const blocks = results[c.server.name]!
    const perRoundRatio = blocks.map((b) => critical(b.loaded, "p99") / critical(b.unloaded, "p99"))
    const row = {
      contender: c.label,
      "unloaded Critical p50 ms": median(blocks.map((b) => critical(b.unloaded, "p50"))),
      "unloaded Critical p99 ms": median(blocks.map((b) => critical(b.unloaded, "p99"))),
      "loaded Critical p50 ms": median(blocks.map((b) => critical(b.loaded, "p50"))),
      "loaded Critical p99 ms": median(blocks.map((b) => critical(b.loaded, "p99"))),
      "Critical p99 loaded ÷ unloaded": ratio(median(perRoundRatio)),
      "loaded req/s": median(blocks.map((b) => b.loaded.reqPerSec)),
      "loaded Critical n": median(blocks.map((b) => critical(b.loaded, "n"))),
      failed: blocks.reduce((n, b) => n + b.unloaded.failed + b.loaded.failed, 0)
    }
    rows.push(row)
    summary[c.server.name] = {
      ...row,
      criticalP99Ratio: median(perRoundRatio),
      perRoundRatio,
      loadedLowP99Ms: median(blocks.map((b) => b.loaded.latency["Low"]?.p99 ?? NaN)),
      blocks
    }
  }
  return { rows, summary, ratioOf: (name: string): number => (summary[name]?.["criticalP99Ratio"] as number | undefined) ?? NaN }
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
    ...(WITH_BINARY
      ? [
        start("oip binary", ["src/bin/server.ts", "--port", "0", "--models", repos.off], infer, engineEnv, true),
        start("baseline binary", ["bench/http-baseline.ts", "--port=0"], infer, {}, true)
      ]
      : []),
    ...(DECODE_THREADS === undefined ? [] : [
      start(`oip+batching, ${DECODE_THREADS} decode threads`, ["src/bin/server.ts", "--port", "0", "--models", repos.on, "--decode-threads", DECODE_THREADS], infer, {
        ...engineEnv,
        MAX_CONCURRENT_REQUESTS: String(BATCHING_MAX_CONCURRENT)
      })
    ])
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
    const priority = WITH_PRIORITY ? await measurePriority(servers) : undefined

    const rows = []
    const summary: Record<string, Record<string, unknown>> = {}
    for (const level of LEVELS) {
      const byName = results[level]!
      for (const s of servers) {
        const blocks = byName[s.name]!
        // The same payload on both sides: a server fed binary data against the baseline fed it too.
        const base = byName[s.binary === true ? "baseline binary" : "baseline"]!
        const perRoundRatio = blocks.map((b, i) => b.reqPerSec / base[i]!.reqPerSec)
        const row = {
          outstanding: level,
          server: s.name,
          "req/s": median(blocks.map((b) => b.reqPerSec)),
          "vs baseline": s.name === "baseline" || s.name === "baseline binary" ? "1.00×" : ratio(median(perRoundRatio)),
          "p50 ms": median(blocks.map((b) => b.latency["all"]!.p50)),
          "p99 ms": median(blocks.map((b) => b.latency["all"]!.p99)),
          "server main-thread CPU µs/req": median(blocks.map((b) => b.serverMainCpuUsPerReq)),
          "server CPU µs/req (all threads)": median(blocks.map((b) => b.serverCpuUsPerReq)),
          "load generator CPU µs/req": median(blocks.map((b) => b.clientCpuUsPerReq)),
          failed: blocks.reduce((n, b) => n + b.failed, 0)
        }
        rows.push(row)
        summary[`${s.name}@${level}`] = { ...row, ratioVsBaseline: median(perRoundRatio), blocks }
      }
    }

    section(`HTTP throughput: OIP server vs minimal node:http + onnxruntime-node (MLP, closed loop)${WITH_BINARY ? "; \"vs baseline\" of oip binary is against baseline binary (same payload)" : ""}`)
    console.log(table(rows))
    if (priority !== undefined) {
      section(`HTTP priority: Critical alone vs under a 95% Low flood (${PRIORITY_OUTSTANDING} outstanding, closed loop; ${ROUNDS} rounds; medians; ratio = median of per-round ratios)`)
      console.log(table(priority.rows))
    }
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
        : []),
      ...(priority !== undefined
        ? [goal(
          `oip+batching Critical p99 under a 95% Low flood (${PRIORITY_OUTSTANDING} outstanding) ÷ unloaded`,
          "≤ 1.5×",
          priority.ratioOf("oip+batching"),
          priority.ratioOf("oip+batching") <= 1.5,
          ratio(priority.ratioOf("oip+batching"))
        )]
        : [])
    ]
    if (goals.length > 0) {
      section("Goals")
      console.log(goalsTable(goals))
    }
    const file = writeResults("http", {
      args: { quick: args.quick, rounds: ROUNDS, seconds: SECONDS, levels: LEVELS, ...(WITH_PRIORITY ? { priority: true } : {}) },
      setup: {
        model: "mlp (784-256-10), one row a request, JSON body of 784 floats",
        baseline: "bench/http-baseline.ts: node:http, one in-thread InferenceSession (intraOpNumThreads 1)",
        oip: "node src/bin/server.ts: engine defaults (maxConcurrentRequests 4), MAX_QUEUED_REQUESTS=1024, OnnxModelPool (1 worker-thread session), config.json batching disabled",
        batching: `config.json batching {enabled, maxBatchSize 64, maxQueueDelayMs 0}, MAX_CONCURRENT_REQUESTS=${BATCHING_MAX_CONCURRENT}`,
        ...(WITH_PRIORITY
          ? {
            priority: `parameters.priority 1 (Critical) / 4 (Low) in the JSON body; per contender and round: Critical alone at 1 outstanding for ${SECONDS} s, then ${PRIORITY_OUTSTANDING} outstanding closed loop for ${SECONDS} s, each request Critical with probability ${CRITICAL_SHARE} (PRNG seeded by the round), else Low`
          }
          : {})
      },
      results: summary,
      ...(priority !== undefined ? { priority: priority.summary } : {}),
      goals
    })
    log(`results: ${Path.relative(repoRoot, file)}`)
  } finally {
    await Promise.all(servers.map(stop))
    for (const dir of Object.values(repos)) Fs.rmSync(dir, { recursive: true, force: true })
  }
}

await main()
