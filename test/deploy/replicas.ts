/**
 * `npm run test:replicas`: two server processes behind nginx, configured by deploy/nginx/ as it
 * is (free ports substituted for 8100, 8101 and 8080), under 64 outstanding requests:
 *
 * 1. throughput at 64 outstanding: two replicas behind nginx, replica A alone behind nginx (a
 *    second nginx, the same file without the second replica's line) and replica A direct, taking
 *    turns in 4 s runs, 3 rounds (the machine is shared), medians reported; both replicas took
 *    requests (their own /metrics counts);
 * 2. a rolling restart: SIGTERM to one replica (it drains and exits 0), start it again, wait
 *    until nginx sends it requests, then the same for the other; every request answered 200;
 * 3. SIGKILL to one replica: the requests that fail are at most those it held (nginx's log
 *    counts the tries on it that got no answer); counted and reported;
 * 4. 5 s more with replica A dead: every request answered 200.
 *
 * Needs nginx (Debian's); exits 3 naming it when missing. Bounded: 5 minutes at most. Progress on
 * stderr, one JSON summary line on stdout; exits 0 only when every check passed.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { closedLoop, mlpBody, type Outcome, quantile, root, type Running, startServer, stopServer } from "../reliability/ServerProcess.ts"
import { Checks, freePort, getText, metricValue, requireTools, sleep, tally, waitFor200 } from "./Tools.ts"

requireTools("test:replicas", { nginx: "nginx" })

const checks = new Checks()
const summary: Record<string, unknown> = { test: "replicas", cpus: Os.cpus().length, outstanding: 64 }
const log = (line: string) => console.error(`[test:replicas] ${line}`)
const body = mlpBody(0.5)
const serverEnv = { GRACE_PERIOD_SECONDS: "20" }
const rounds = 3
const roundSeconds = 4
const median = (xs: ReadonlyArray<number>): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const prefix = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-onnx-nginx-"))
const replicas: Array<Running | undefined> = [undefined, undefined]
const nginxes: Array<ChildProcess> = []

const watchdog = setTimeout(() => {
  console.error("test:replicas: over 5 minutes, giving up")
  void cleanup().then(() => process.exit(1))
}, 5 * 60_000)

const cleanup = async () => {
  for (const r of replicas) await stopServer(r)
  for (const nginx of nginxes) {
    if (nginx.exitCode !== null) continue
    nginx.kill("SIGQUIT")
    await Promise.race([new Promise((r) => nginx.once("exit", r)), sleep(5000)])
    if (nginx.exitCode === null) nginx.kill("SIGKILL")
  }
}

/**
 * deploy/nginx/ copied under `dir` with these ports for the replicas and the balancer; without
 * `b`, the line of the second replica is left out (a balancer of one replica, for comparison).
 */
const writeNginxConfig = (dir: string, ports: { a: number; b: number | undefined; lb: number }): string => {
  const source = Path.join(root, "deploy/nginx")
  const site = Fs.readFileSync(Path.join(source, "effect-onnx.conf"), "utf8")
  if (!["127.0.0.1:8100", "127.0.0.1:8101", "127.0.0.1:8080"].every((a) => site.includes(a))) throw new Error("deploy/nginx/effect-onnx.conf no longer names 127.0.0.1:8100, :8101 and :8080")
  const replaced = (ports.b === undefined ? site.replace(/^\s*server 127\.0\.0\.1:8101 .*\n/m, "") : site.replaceAll("127.0.0.1:8101", `127.0.0.1:${ports.b}`))
    .replaceAll("127.0.0.1:8100", `127.0.0.1:${ports.a}`).replaceAll("127.0.0.1:8080", `127.0.0.1:${ports.lb}`)
  Fs.mkdirSync(Path.join(dir, "logs"), { recursive: true })
  Fs.mkdirSync(Path.join(dir, "tmp"), { recursive: true })
  Fs.writeFileSync(Path.join(dir, "effect-onnx.conf"), replaced)
  Fs.copyFileSync(Path.join(source, "nginx.conf"), Path.join(dir, "nginx.conf"))
  return Path.join(dir, "nginx.conf")
}

const startNginx = async (dir: string, ports: { a: number; b: number | undefined; lb: number }): Promise<ChildProcess> => {
  const child = spawn("nginx", ["-p", dir, "-c", writeNginxConfig(dir, ports), "-g", "daemon off;"], { stdio: ["ignore", "inherit", "inherit"] })
  nginxes.push(child)
  await waitFor200(ports.lb, "/v2/health/ready", 10_000)
  return child
}

const successes = async (port: number): Promise<number> => metricValue(await getText(port, "/metrics"), "inference_requests_total", "model=\"mlp\"", "outcome=\"success\"")

interface Run {
  readonly outcomes: Array<Outcome & { readonly endedAt: number }>
  readonly stop: () => Promise<void>
}

/** 64 closed-loop clients on `port` until stopped. */
const load = (port: number): Run => {
  const outcomes: Array<Outcome & { readonly endedAt: number }> = []
  const loop = closedLoop({ port, clients: 64, path: "/v2/models/mlp/infer", body: () => body, record: (o) => void outcomes.push({ ...o, endedAt: performance.now() }) })
  return { outcomes, stop: async () => (loop.stop(), await loop.done) }
}

/** Throughput at 64 outstanding for `seconds`: answers per second, the statuses and latency quantiles. */
const measure = async (port: number, seconds: number) => {
  const run = load(port)
  await sleep(seconds * 1000)
  await run.stop()
  const ms = run.outcomes.map((o) => o.ms)
  return {
    seconds,
    answered: run.outcomes.length,
    perSecond: Math.round(run.outcomes.filter((o) => o.status === 200).length / seconds),
    counts: tally(run.outcomes.map((o) => o.label)),
    p50ms: Math.round(quantile(ms, 0.5) * 10) / 10,
    p99ms: Math.round(quantile(ms, 0.99) * 10) / 10
  }
}

/** The nginx access log lines written since `from` (a byte offset), parsed. */
const accessLog = (from: number) => {
  const text = Fs.readFileSync(Path.join(prefix, "logs/access.log"), "utf8").slice(from)
  return text.split("\n").filter((l) => l.includes("/infer")).map((line) => {
    const status = Number(/" (\d{3}) /.exec(line)?.[1])
    const upstreams = (/upstream=(\S+(?:, \S+)*) upstream_status/.exec(line)?.[1] ?? "").split(", ")
    const statuses = (/upstream_status=(\S+(?:, \S+)*) upstream_time/.exec(line)?.[1] ?? "").split(", ")
    return { status, upstreams, statuses }
  })
}
const logSize = () => Fs.statSync(Path.join(prefix, "logs/access.log")).size

const restart = async (i: 0 | 1, port: number, other: number) => {
  const replica = replicas[i]!
  const before = await successes(other)
  const signalledAt = performance.now()
  replica.child.kill("SIGTERM")
  const code = await replica.exit
  const drainedMs = performance.now() - signalledAt
  checks.check(`replica ${i === 0 ? "A" : "B"} drained and exited 0 on SIGTERM`, code === 0, { code, drainedMs: Math.round(drainedMs) })
  replicas[i] = await startServer(["--port", String(port), "--grpc-port", "off"], serverEnv)
  await waitFor200(port, "/v2/health/ready", 30_000)
  // Back in rotation once nginx sends it requests again (after fail_timeout).
  const served = await successes(port)
  const started = performance.now()
  while ((await successes(port)) <= served + 10 && performance.now() - started < 20_000) await sleep(100)
  const backMs = performance.now() - started
  checks.check(`replica ${i === 0 ? "A" : "B"} takes requests again after its restart`, (await successes(port)) > served + 10, { backMs: Math.round(backMs) })
  return { drainedMs: Math.round(drainedMs), otherServedMeanwhile: (await successes(other)) - before }
}

const main = async () => {
  const ports = { a: await freePort(), b: await freePort(), lb: await freePort(), lbOne: await freePort() }
  log(`replicas on ${ports.a} and ${ports.b}, nginx on ${ports.lb}, nginx of replica A alone on ${ports.lbOne} (${prefix})`)
  replicas[0] = await startServer(["--port", String(ports.a), "--grpc-port", "off"], serverEnv)
  replicas[1] = await startServer(["--port", String(ports.b), "--grpc-port", "off"], serverEnv)
  await startNginx(prefix, { a: ports.a, b: ports.b, lb: ports.lb })
  await startNginx(Path.join(prefix, "one"), { a: ports.a, b: undefined, lb: ports.lbOne })
  summary["nginx"] = spawnSync("nginx", ["-v"]).stderr.toString().trim()
  summary["loadAverageAtStart"] = Os.loadavg().map((l) => Math.round(l * 100) / 100)

  // The machine is shared: the three set-ups take turns, in short runs, and the median is reported.
  log(`warm-up 2 s, then ${rounds} rounds of ${roundSeconds} s each: two replicas behind nginx, replica A alone behind nginx, replica A direct`)
  await measure(ports.lb, 2)
  const runs: Record<"twoReplicas" | "oneReplica" | "oneReplicaDirect", Array<Awaited<ReturnType<typeof measure>>>> = { twoReplicas: [], oneReplica: [], oneReplicaDirect: [] }
  let [servedByA, servedByB] = [0, 0]
  for (let round = 0; round < rounds; round++) {
    const [a0, b0] = [await successes(ports.a), await successes(ports.b)]
    runs.twoReplicas.push(await measure(ports.lb, roundSeconds))
    servedByA += (await successes(ports.a)) - a0
    servedByB += (await successes(ports.b)) - b0
    runs.oneReplica.push(await measure(ports.lbOne, roundSeconds))
    runs.oneReplicaDirect.push(await measure(ports.a, roundSeconds))
  }
  summary["throughput"] = Object.fromEntries(Object.entries(runs).map(([setup, rs]) => [setup, {
    perSecondMedian: median(rs.map((r) => r.perSecond)),
    perSecond: rs.map((r) => r.perSecond),
    p50msMedian: median(rs.map((r) => r.p50ms)),
    p99msMedian: median(rs.map((r) => r.p99ms))
  }]))
  summary["loadAverageAfterThroughput"] = Os.loadavg().map((l) => Math.round(l * 100) / 100)
  checks.check("requests spread over both replicas (each took at least 25%)", Math.min(servedByA, servedByB) >= 0.25 * (servedByA + servedByB), { servedByA, servedByB })
  const all = Object.values(runs).flat()
  checks.check("every request answered 200 in the throughput runs", all.every((r) => (r.counts["200"] ?? 0) === r.answered), all.reduce<Record<string, number>>((sum, r) => {
    for (const [label, n] of Object.entries(r.counts)) sum[label] = (sum[label] ?? 0) + n
    return sum
  }, {}))

  log("rolling restart under 64 outstanding: A, then B")
  let offset = logSize()
  const rolling = load(ports.lb)
  await sleep(1000)
  const restartA = await restart(0, ports.a, ports.b)
  const restartB = await restart(1, ports.b, ports.a)
  await sleep(1000)
  await rolling.stop()
  const rollingCounts = tally(rolling.outcomes.map((o) => o.label))
  const rollingLog = accessLog(offset)
  const retried = rollingLog.filter((l) => l.statuses.length > 1)
  summary["rollingRestart"] = {
    answered: rolling.outcomes.length,
    counts: rollingCounts,
    restartA,
    restartB,
    nginxRetries: { requests: retried.length, tries: tally(retried.map((l) => l.statuses.join(", "))) }
  }
  checks.check("rolling restart: every request answered 200 (none lost, none reset)", rolling.outcomes.length > 0 && (rollingCounts["200"] ?? 0) === rolling.outcomes.length, rollingCounts)
  checks.check("rolling restart: nginx's log agrees (every request 200)", rollingLog.length === rolling.outcomes.length && rollingLog.every((l) => l.status === 200), { logged: rollingLog.length })

  log("SIGKILL to replica A under 64 outstanding")
  offset = logSize()
  const killed = load(ports.lb)
  await sleep(2000)
  const killedAt = performance.now()
  replicas[0]!.child.kill("SIGKILL")
  await replicas[0]!.exit
  await sleep(3000)
  await killed.stop()
  const killLog = accessLog(offset)
  const aAddress = `127.0.0.1:${ports.a}`
  // A try on A that got no HTTP answer (nginx logs 502 or 504 for it; A answers only 200 here): a request A held, or was being sent, when it died.
  const lostOnA = killLog.filter((l) => l.upstreams.some((u, k) => u === aAddress && !/^[24]\d\d$/.test(l.statuses[k] ?? "")))
  const failed = killed.outcomes.filter((o) => o.status !== 200)
  summary["sigkill"] = {
    answered: killed.outcomes.length,
    counts: tally(killed.outcomes.map((o) => o.label)),
    triesOnAWithoutAnswer: lostOnA.length,
    retriedElsewhereAnd200: lostOnA.filter((l) => l.status === 200).length,
    failed: failed.length,
    failedAfterKillMs: failed.map((o) => Math.round(o.endedAt - killedAt))
  }
  checks.check("SIGKILL: the failed requests are at most those A held when it died", failed.length <= lostOnA.length && lostOnA.length <= 64, { failed: failed.length, triesOnAWithoutAnswer: lostOnA.length })
  checks.check("SIGKILL: replica B kept answering", (tally(killed.outcomes.map((o) => o.label))["200"] ?? 0) > 0)

  log("5 s more with replica A dead")
  const afterKill = await measure(ports.lb, 5)
  summary["afterKill"] = afterKill
  checks.check("every request answered 200 with replica A dead (nginx skips it)", (afterKill.counts["200"] ?? 0) === afterKill.answered, afterKill.counts)
}

main().catch((e: unknown) => {
  checks.check("the run completed", false, e instanceof Error ? e.message.slice(0, 2000) : String(e))
}).finally(async () => {
  clearTimeout(watchdog)
  await cleanup()
  try {
    const errors = Fs.readFileSync(Path.join(prefix, "logs/error.log"), "utf8").split("\n").filter((l) => l.trim() !== "")
    summary["nginxErrorLog"] = { lines: errors.length, last: errors.slice(-5) }
  } catch {}
  Fs.rmSync(prefix, { recursive: true, force: true })
  console.log(JSON.stringify({ ...summary, ok: checks.ok, checks: checks.results.length, failed: checks.results.filter((r) => !r.ok).map((r) => r.name) }))
  process.exit(checks.ok ? 0 : 1)
})
