/**
 * SIGTERM at 64 outstanding requests, on the real server process and the bundled MLP: 64
 * clients in a closed loop, each on its own kept-alive connection, and the signal mid-load.
 * Every request the server accepted is answered: 200 when it was admitted before the signal,
 * 503 when it arrived after; no connection is reset. Each client stops at its first refusal.
 * The process exits 0 within the grace period.
 *
 * And in process, the case behind resets seen on a loaded machine: a drain that outlasts the
 * quiet period, after which the clients answered `Connection: close` reconnect.
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer } from "effect"
import { HttpServer } from "effect/http"
import { spawn } from "node:child_process"
import * as Http from "node:http"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { AsyncConfigService } from "../../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import * as Server from "../../src/http/Server.ts"
import { TelemetryCollector } from "../../src/Telemetry.ts"
import * as Client from "../http/HttpClient.ts"
import { freePort } from "../deploy/Tools.ts"
import { makeTestPool, routeOptions, withFreshMetrics } from "../http/TestApp.ts"
import { closedLoop, entry, mlpBody, request, root, type Running, startServer, stopServer } from "./ServerProcess.ts"
import * as SlowModel from "./SlowModel.ts"

const clients = 64
const graceSeconds = 10

describe("SIGTERM under load", () => {
  let server: Running | undefined

  afterAll(() => stopServer(server))

  it(`${clients} outstanding: every accepted request is answered 200 or 503, none is reset, exit 0 within the grace period`, async () => {
    const running = server = await startServer(["--grace-period-seconds", String(graceSeconds)])
    const body = mlpBody()
    let signalledAt: number | undefined
    const events: Array<{ readonly client: number; readonly label: string; readonly atMs: number }> = []
    let okBefore = 0
    let okAfter = 0
    const loop = closedLoop({
      port: running.port,
      clients,
      path: "/v2/models/mlp/infer",
      body: () => body,
      record: (o, client) => {
        if (signalledAt === undefined) {
          if (o.status === 200) okBefore++
          else events.push({ client, label: o.label, atMs: -1 })
          return o.status === 200
        }
        events.push({ client, label: o.label, atMs: performance.now() - signalledAt })
        if (o.status === 200) okAfter++
        return o.status === 200
      }
    })
    while (okBefore < 4 * clients && events.length === 0) await new Promise((r) => setTimeout(r, 5))
    signalledAt = performance.now()
    running.child.kill("SIGTERM")
    await loop.done
    const code = await running.exit
    const exitMs = running.exitedAt()! - signalledAt

    const counts: Record<string, number> = {}
    for (const e of events) counts[e.label] = (counts[e.label] ?? 0) + 1
    const timeline = events.filter((e) => e.label !== "200").map((e) => `${e.label}@${e.atMs.toFixed(0)}`).join(" ")
    const report = `before the signal: ${okBefore} × 200; after: ${JSON.stringify(counts)}; refusals (ms after the signal): ${timeline}; exit ${code} after ${exitMs.toFixed(0)} ms\n${running.output()}`

    console.log(`shutdown: ${report.split("\n")[0]}`)
    assert.isAtLeast(okBefore, 4 * clients, report)
    assert.isTrue(events.every((e) => e.atMs >= 0), `nothing but 200 before the signal: ${report}`)
    for (const label of Object.keys(counts)) assert.include(["200", "503"], label, `unexpected outcome ${label}: ${report}`)
    assert.isAtLeast(okAfter, 1, `requests in flight at the signal were answered: ${report}`)
    assert.isAtLeast(counts["503"] ?? 0, 1, `requests arriving after the signal got 503: ${report}`)
    assert.strictEqual(code, 0, report)
    assert.isBelow(exitMs, graceSeconds * 1000, report)
    assert.include(running.output(), "drained in", report)
  }, 45_000)
})

describe("a drain longer than the quiet period", () => {
  it.live("a client answered Connection: close at the end of the drain reconnects at once and gets 503, not a refused or reset connection", () =>
    Effect.gen(function*() {
      const pool = yield* makeTestPool({ slowLatency: `${Server.quietMs * 2} millis` })
      const context = yield* Layer.build(
        Server.layer({ ...routeOptions(), host: "127.0.0.1", port: 0, keepAliveTimeoutMs: 10_000 }).pipe(
          Layer.provideMerge(AsyncInferenceEngine.layer),
          Layer.provideMerge(Layer.mergeAll(pool.layer, TelemetryCollector.layer, AsyncConfigService.layerWith({})))
        )
      )
      const address = Context.get(context, HttpServer.HttpServer).address
      if (address._tag === "UnixPathAddress") return yield* Effect.die("expected a TCP address")
      const port = address.port
      const agent = new Http.Agent({ keepAlive: true, maxSockets: 1 })
      yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
      const body = { inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4] }] }
      // The client sends its next request as soon as it has the answer to the slow one.
      const slowThenNext = Effect.promise(async () => {
        const first = await Client.send(port, "POST", "/v2/models/slow/infer", body, agent)
        const next = await Client.send(port, "POST", "/v2/models/echo/infer", body, agent)
        return [first, next] as const
      })
      const client = yield* Effect.forkChild(slowThenNext, { startImmediately: true })
      yield* Effect.promise(() => Client.eventually(() => pool.stats.started === 1))
      const report = yield* Server.shutdown("5 seconds").pipe(Effect.provideContext(context))
      const [first, next] = yield* Fiber.join(client)
      assert.isTrue(Client.isReply(first) && first.status === 200 && first.headers.connection === "close", JSON.stringify(first))
      assert.isTrue(Client.isReply(next), `the reconnecting client was answered, not ${JSON.stringify(next)}`)
      if (Client.isReply(next)) assert.strictEqual(next.status, 503)
      assert.isTrue(report.drained)
      assert.strictEqual(report.connectionsDestroyed, 0)
    }).pipe(withFreshMetrics))
})

describe("stopping the server process", () => {
  let server: Running | undefined

  afterAll(() => stopServer(server))

  it("clients that never stop: the process drains and exits 0 in a few seconds, not after the 30 s grace period", async () => {
    const running = server = await startServer(["--grace-period-seconds", "30"])
    const body = mlpBody()
    const counts: Record<string, number> = {}
    let signalled = false
    let okAfter = 0
    // 16 clients that send again whatever they got: 200, 503, a refused or reset connection.
    const loop = closedLoop({
      port: running.port,
      clients: 16,
      path: "/v2/models/mlp/infer",
      body: () => body,
      record: (o) => {
        counts[o.label] = (counts[o.label] ?? 0) + 1
        if (signalled && o.status === 200) okAfter++
      }
    })
    while ((counts["200"] ?? 0) < 200) await new Promise((r) => setTimeout(r, 5))
    const signalledAt = performance.now()
    signalled = true
    running.child.kill("SIGTERM")
    const code = await running.exit
    const exitMs = running.exitedAt()! - signalledAt
    loop.stop()
    await loop.done
    const report = `${JSON.stringify(counts)}; exit ${code} after ${exitMs.toFixed(0)} ms\n${running.output()}`
    console.log(`never-stopping clients, real server: ${report.split("\n")[0]}`)
    assert.strictEqual(code, 0, report)
    assert.isBelow(exitMs, 5000, report)
    assert.match(running.output(), /drained in \d+ ms \(\d+ HTTP requests and \d+ gRPC requests refused meanwhile\)/, report)
    assert.isAtLeast(counts["503"] ?? 0, 1, report)
    for (const label of Object.keys(counts)) assert.include(["200", "503", "ECONNREFUSED"], label, `nothing reset: ${report}`)
  }, 45_000)

  it("a second signal during the drain ends the process at once by that signal, saying what it abandoned", async () => {
    const running = server = await startServer(["--grace-period-seconds", "30"])
    // A request whose body never ends: it is being answered when the signal comes, and holds the drain.
    const socket = Net.connect(running.port, "127.0.0.1")
    await new Promise<void>((resolve) => socket.once("connect", () => resolve()))
    socket.on("error", () => {})
    socket.write("POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"inputs\":")
    await new Promise((r) => setTimeout(r, 300))
    const { code, exitMs } = await signalTwice(running)
    socket.destroy()
    assert.isNull(code, running.output())
    assert.strictEqual(running.child.signalCode, "SIGINT", running.output())
    assert.isBelow(exitMs, 2000, running.output())
    assert.match(running.output(), /second SIGINT: exiting now without draining; abandoning 1 requests in flight \(HTTP and gRPC\)/)
  }, 30_000)

  it("a second signal while a worker thread is inside a long native run ends the process at once, by that signal", async () => {
    // process.exit waits for a worker thread's native run to return, then aborts (134): only the signal's own default action is at once.
    const repository = Fs.mkdtempSync(Path.join(Os.tmpdir(), "shutdown-slow-"))
    try {
      SlowModel.write(repository)
      const running = server = await startServer(["--models", repository, "--grpc-port", "off", "--grace-period-seconds", "30"])
      const agent = new Http.Agent()
      const rows = await rowsForRun(running.port, agent, 20_000)
      const long = request(running.port, "/v2/models/slow/infer", SlowModel.body(rows), agent)
      await new Promise((r) => setTimeout(r, 1500))
      const { code, exitMs } = await signalTwice(running)
      const report = `a run of ${rows} rows; exit ${code} (${running.child.signalCode}) after ${exitMs.toFixed(0)} ms\n${running.output()}`
      assert.isBelow(exitMs, 2000, report)
      assert.strictEqual(running.child.signalCode, "SIGINT", report)
      assert.match(running.output(), /second SIGINT: exiting now without draining; abandoning 1 requests in flight \(HTTP and gRPC\) and 1 requests queued or running/, report)
      assert.notInclude(running.output(), "terminate called", report)
      assert.notStrictEqual((await long).status, 200, report)
      agent.destroy()
    } finally {
      Fs.rmSync(repository, { recursive: true, force: true })
    }
  }, 60_000)

  it("Ctrl-C in a terminal (SIGINT to the whole process group) drains: a process-isolated model's session processes finish their runs", async () => {
    // The session processes are in the server's process group, so the signal reaches them too.
    const repository = processIsolatedSlow("shutdown-group-")
    try {
      const { running, agent, long } = await groupLeaderRunning(repository, 2000)
      server = running
      process.kill(-running.child.pid!, "SIGINT")
      const answer = await long
      const code = await running.exit
      agent.destroy()
      assert.strictEqual(answer.status, 200, `${answer.body}\n${running.output()}`)
      assert.strictEqual(code, 0, running.output())
      assert.notInclude(running.output(), "died (signal SIGINT)", running.output())
    } finally {
      Fs.rmSync(repository, { recursive: true, force: true })
    }
  }, 60_000)

  it("a second Ctrl-C (the forced exit, no drain) leaves no session process running its job on (they ignore the group's signals while the server is there)", async () => {
    const repository = processIsolatedSlow("shutdown-group-forced-")
    try {
      const { running, agent, long } = await groupLeaderRunning(repository, 6000)
      server = running
      const children = childrenOf(running.child.pid!)
      assert.isAbove(children.length, 0, running.output())
      process.kill(-running.child.pid!, "SIGINT")
      await waitFor(() => running.output().includes("shutting down"), 5000)
      process.kill(-running.child.pid!, "SIGINT")
      await running.exit
      await long.catch(() => undefined)
      agent.destroy()
      // Killed as the server exited, not left to finish a 6 s run (a zombie waits for init to reap it).
      await waitFor(() => children.every((pid) => !runs(pid)), 1500).catch(() => undefined)
      assert.deepStrictEqual(children.filter(runs), [], running.output())
    } finally {
      Fs.rmSync(repository, { recursive: true, force: true })
    }
  }, 60_000)

  it("a reader of its standard output that goes away does not end the server: it serves on, and SIGTERM still drains (exit 0)", async () => {
    const port = await freePort()
    const child = spawn(process.execPath, [entry, "--port", String(port), "--grpc-port", "off"], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    // The reader closes its end at once: every log line the server writes after that fails (EPIPE).
    child.stdout!.destroy()
    let stderr = ""
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
    const exit = new Promise<number | null>((r) => child.on("exit", (code) => r(code)))
    try {
      const agent = new Http.Agent()
      let ready = false
      for (const until = performance.now() + 30_000; !ready && performance.now() < until && child.exitCode === null;) {
        ready = await request(port, "/v2/health/ready", undefined, agent).then((r) => r.status === 200, () => false)
        if (!ready) await new Promise((r) => setTimeout(r, 100))
      }
      assert.isTrue(ready, `never ready; exit ${child.exitCode}\n${stderr}`)
      // Each answer logs nothing at info, but loading did: the server has written into the closed pipe by now.
      assert.strictEqual((await request(port, "/v2/models/mlp/infer", mlpBody(), agent)).status, 200, stderr)
      agent.destroy()
      child.kill("SIGTERM")
      assert.strictEqual(await exit, 0, stderr)
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL")
    }
  }, 60_000)

  it("run by an npm script, when its parent process dies (npm start killed), the server notices, drains and exits", async () => {
    const server = underParent([])
    try {
      const serverPid = await server.serverPid()
      await waitFor(() => /listening on/.test(server.output()), 30_000)
      assert.isTrue(alive(serverPid))
      server.parent.kill("SIGKILL")
      const killedAt = performance.now()
      await waitFor(() => !alive(serverPid), 10_000)
      const goneMs = performance.now() - killedAt
      assert.isBelow(goneMs, 5000, server.output())
      assert.match(server.output(), /parent process \d+ is gone: draining as on SIGTERM/)
      assert.include(server.output(), "drained in")
    } finally {
      server.stop()
    }
  }, 45_000)

  it("run directly (not by npm), the server goes on when its parent exits (a script that started it in the background)", async () => {
    const server = underParent(["--grpc-port", "off"], "setInterval(() => {}, 1000)", false)
    try {
      const serverPid = await server.serverPid()
      await waitFor(() => /listening on/.test(server.output()), 30_000)
      server.parent.kill("SIGKILL")
      // Well past the parent watch's poll (500 ms).
      await new Promise((r) => setTimeout(r, 2000))
      assert.isTrue(alive(serverPid), server.output())
      assert.notMatch(server.output(), /parent process \d+ is gone/)
    } finally {
      server.stop()
    }
  }, 45_000)

  it("a drain begun by a signal is not cut short when the parent exits too (Ctrl-C on npm start reaches both)", async () => {
    const repository = Fs.mkdtempSync(Path.join(Os.tmpdir(), "shutdown-ctrl-c-"))
    SlowModel.write(repository)
    const server = underParent(["--grpc-port", "off", "--models", repository])
    const agent = new Http.Agent()
    try {
      const serverPid = await server.serverPid()
      await waitFor(() => /listening on http:\/\/[^:]+:\d+/.test(server.output()), 30_000)
      const port = Number(/listening on http:\/\/[^:]+:(\d+)/.exec(server.output())![1])
      // A run of about 3 s: longer than the parent watch's poll.
      const long = request(port, "/v2/models/slow/infer", SlowModel.body(await rowsForRun(port, agent, 3000)), agent)
      await new Promise((r) => setTimeout(r, 500))
      process.kill(serverPid, "SIGINT")
      server.parent.kill("SIGKILL")
      const answer = await long
      await waitFor(() => !alive(serverPid), 30_000)
      assert.strictEqual(answer.status, 200, server.output())
      assert.notInclude(server.output(), "exiting now without draining", server.output())
      assert.include(server.output(), "drained in", server.output())
    } finally {
      agent.destroy()
      server.stop()
      Fs.rmSync(repository, { recursive: true, force: true })
    }
  }, 60_000)

  it("when its parent process dies while the models load, the server notices too and exits", async () => {
    // The parent dies 1.5 s after starting the server, while a model that takes seconds to load loads.
    const repository = Fs.mkdtempSync(Path.join(Os.tmpdir(), "shutdown-loading-"))
    SlowModel.write(repository, "big", 5000)
    const server = underParent(["--grpc-port", "off", "--models", repository], "setTimeout(() => process.exit(0), 1500)")
    try {
      const serverPid = await server.serverPid()
      if (server.parent.exitCode === null) await new Promise<void>((resolve) => server.parent.on("exit", () => resolve()))
      await waitFor(() => !alive(serverPid), 20_000).catch(() => {})
      assert.isFalse(alive(serverPid), `the orphaned server still runs:\n${server.output()}`)
      assert.match(server.output(), /parent process \d+ is gone: draining as on SIGTERM/)
    } finally {
      server.stop()
      Fs.rmSync(repository, { recursive: true, force: true })
    }
  }, 45_000)
})

/** A repository of `SlowModel` in process isolation, batching off. */
const processIsolatedSlow = (prefix: string): string => {
  const repository = Fs.mkdtempSync(Path.join(Os.tmpdir(), prefix))
  SlowModel.write(repository)
  Fs.writeFileSync(Path.join(repository, "slow", "config.json"), JSON.stringify({ isolation: "process", batching: { enabled: false } }))
  return repository
}

/**
 * The server on `repository` as the leader of a process group of its own (as a terminal's
 * foreground job), with one request running on the slow model for about `runMs`.
 */
const groupLeaderRunning = async (repository: string, runMs: number) => {
  const running = await startServer(["--models", repository, "--grpc-port", "off"], {}, [], { detached: true })
  const agent = new Http.Agent()
  const long = request(running.port, "/v2/models/slow/infer", SlowModel.body(await rowsForRun(running.port, agent, runMs)), agent)
  await new Promise((r) => setTimeout(r, 400))
  return { running, agent, long }
}

/** The pids of `pid`'s child processes (Linux: /proc). */
const childrenOf = (pid: number): Array<number> =>
  Fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d)).flatMap((d) => {
    try {
      const stat = Fs.readFileSync(`/proc/${d}/stat`, "utf8")
      return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid ? [Number(d)] : []
    } catch {
      return []
    }
  })

/** Whether `pid` exists and is not a zombie (killed, not yet reaped). */
const runs = (pid: number): boolean => {
  try {
    const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0] !== "Z"
  } catch {
    return false
  }
}

/** Whether a process of that pid is alive. */
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/**
 * The server started by a parent process, as `npm start` starts it: the server writes to the
 * parent's stdout and stderr (read here as `output`), and the parent prints the server's pid, then
 * runs `then` (by default it idles). `stop` kills what is left of both.
 */
/**
 * The server as the child of a Node process (`then` runs in it after the spawn). `npmScript`: the
 * server is told it runs as an npm script's (`npm_lifecycle_event`, as npm sets it), else it is not.
 */
const underParent = (serverArgs: ReadonlyArray<string>, then = "setInterval(() => {}, 1000)", npmScript = true) => {
  const env: Record<string, string | undefined> = { ...process.env, npm_lifecycle_event: npmScript ? "start" : undefined }
  if (!npmScript) delete env["npm_lifecycle_event"]
  const parentScript = `
    const { spawn } = require("node:child_process")
    const child = spawn(process.execPath, ${JSON.stringify([entry, "--port", "0", ...serverArgs])}, { stdio: ["ignore", "inherit", "inherit"], env: ${JSON.stringify(env)} })
    console.log("server pid " + child.pid)
    ${then}
  `
  const parent = spawn(process.execPath, ["-e", parentScript], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
  let output = ""
  parent.stdout.on("data", (c: Buffer) => (output += c.toString("utf8")))
  parent.stderr.on("data", (c: Buffer) => (output += c.toString("utf8")))
  let pid: number | undefined
  return {
    parent,
    output: () => output,
    /** The server's pid, once the parent printed it. */
    serverPid: async (): Promise<number> => {
      await waitFor(() => /server pid (\d+)/.test(output), 10_000)
      return pid = Number(/server pid (\d+)/.exec(output)![1])
    },
    stop: () => {
      parent.kill("SIGKILL")
      if (pid !== undefined && alive(pid)) process.kill(pid, "SIGKILL")
    }
  }
}

/** Rows of `SlowModel` for a run of about `ms` on this machine (runs take time in proportion to rows), within the 16 MiB body limit. */
const rowsForRun = async (port: number, agent: Http.Agent, ms: number): Promise<number> => {
  const timed = performance.now()
  assert.strictEqual((await request(port, "/v2/models/slow/infer", SlowModel.body(100), agent)).status, 200)
  return Math.min(8000, Math.ceil(100 * ms / (performance.now() - timed)))
}

/** SIGTERM, then (while it drains) SIGINT: the process's exit code and how long after the second signal it exited. */
const signalTwice = async (running: Running): Promise<{ readonly code: number | null; readonly exitMs: number }> => {
  running.child.kill("SIGTERM")
  await waitFor(() => running.output().includes("shutting down"), 5000)
  await new Promise((r) => setTimeout(r, 300))
  assert.isNull(running.child.exitCode, `still draining: ${running.output()}`)
  const secondAt = performance.now()
  running.child.kill("SIGINT")
  const code = await running.exit
  return { code, exitMs: running.exitedAt()! - secondAt }
}

/** Resolves once `condition` holds (checked every 20 ms); rejects after `timeoutMs`. */
const waitFor = async (condition: () => boolean, timeoutMs: number): Promise<void> => {
  const until = performance.now() + timeoutMs
  while (!condition()) {
    if (performance.now() > until) throw new Error("condition not reached in time")
    await new Promise((r) => setTimeout(r, 20))
  }
}
