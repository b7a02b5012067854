/**
 * largebody: how long small requests wait while large JSON bodies arrive, with large bodies decoded
 * on the main thread (`LARGE_BODY_BYTES=0`) and on a decode thread (the default, 1 MiB and more).
 * Two `node src/bin/server.ts` processes (bundled models), measured in alternating rounds: in each,
 * one client sends large MLP bodies back to back while another sends one-row JSON requests one at
 * a time (2 ms apart) and records their latency. Both large bodies are parsed in full: 64 rows
 * (about 1 MB) are served; 1,000 rows (about 15 MB) are refused (400, past max_batch_size) once
 * decoded. Each server is sent a large body first and given 2 s, so that the decode thread has
 * loaded (until it has, large bodies are decoded on the main thread) before anything is measured.
 * No goal; not part of `npm run bench`. Run it by hand:
 *
 *   node bench/largebody.ts [--quick]
 */
import { spawn } from "node:child_process"
import * as Http from "node:http"
import { log, median, mlpData, parseArgs, repoRoot, section, table, writeResults } from "./lib/common.ts"
import { jsonBody } from "./lib/oipHttp.ts"

const args = parseArgs()
const rounds = args.quick ? 2 : 3
const blockMs = args.quick ? 2000 : 4000

const startServer = async (largeBodyBytes: string): Promise<{ readonly port: number; readonly stop: () => void }> => {
  const child = spawn(process.execPath, ["src/bin/server.ts", "--port", "0", "--grpc-port", "off", "--large-body-bytes", largeBodyBytes], {
    cwd: repoRoot,
    stdio: ["ignore", "pipe", "pipe"]
  })
  process.on("exit", () => child.kill("SIGKILL"))
  const port = await new Promise<number>((resolve, reject) => {
    let out = ""
    const onData = (c: Buffer) => {
      out += c.toString("utf8")
      const m = /listening on http:\/\/[^\s]+:(\d+)/.exec(out)
      if (m !== null && /model mlp version 1 is READY/.test(out)) resolve(Number(m[1]))
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.on("exit", (code) => reject(new Error(`server exited with ${code}: ${out}`)))
  })
  return { port, stop: () => child.kill("SIGTERM") }
}

const bodyOf = (rows: number): Buffer =>
  Buffer.from(JSON.stringify({ inputs: [{ name: "input", shape: [rows, 784], datatype: "FP32", data: Array.from(mlpData(rows, 5)) }] }))

const agent = new Http.Agent({ keepAlive: true, maxSockets: 4 })

/** Sends `body` to the MLP; resolves with the status once the answer is read. */
const post = (port: number, body: Buffer): Promise<number> =>
  new Promise((resolve, reject) => {
    const r = Http.request({ host: "127.0.0.1", port, method: "POST", path: "/v2/models/mlp/infer", agent, headers: { "content-type": "application/json", "content-length": body.length } }, (response) => {
      response.resume()
      response.on("end", () => resolve(response.statusCode ?? 0))
    })
    r.on("error", reject)
    r.end(body)
  })

interface Round {
  readonly server: string
  readonly rows: number
  readonly small: ReadonlyArray<number>
  readonly large: number
}

/** One round: large bodies back to back beside small requests one at a time, for `blockMs`. */
const round = async (server: string, port: number, rows: number, large: Buffer): Promise<Round> => {
  const end = performance.now() + blockMs
  let sent = 0
  const sender = (async () => {
    while (performance.now() < end) {
      await post(port, large)
      sent++
    }
  })()
  const small: Array<number> = []
  while (performance.now() < end) {
    const t0 = performance.now()
    const status = await post(port, jsonBody)
    if (status !== 200) throw new Error(`a small request answered ${status}`)
    small.push(performance.now() - t0)
    await new Promise((resolve) => setTimeout(resolve, 2))
  }
  await sender
  return { server, rows, small, large: sent }
}

const quantile = (xs: ReadonlyArray<number>, q: number): number => {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))]!
}

const main = async () => {
  const servers = [
    { name: "large bodies on the main thread (LARGE_BODY_BYTES=0)", ...(await startServer("0")) },
    { name: "large bodies on a decode thread (default)", ...(await startServer(String(1024 * 1024))) }
  ]
  const bodies = [64, 1000].map((rows) => ({ rows, body: bodyOf(rows) }))
  for (const s of servers) for (const { body } of bodies) await post(s.port, body)
  // the first large body started the decode thread, which takes under a second to load (until then bodies are decoded on the main thread)
  await new Promise((resolve) => setTimeout(resolve, 2000))
  log(`largebody: ${rounds} rounds × ${blockMs} ms a server and body size, alternating; bodies ${bodies.map((b) => `${b.rows} rows = ${b.body.length} bytes`).join(", ")}`)
  const results: Array<Round> = []
  for (let r = 0; r < rounds; r++) {
    for (const { rows, body } of bodies) {
      for (const s of servers) results.push(await round(s.name, s.port, rows, body))
    }
  }
  for (const s of servers) s.stop()
  agent.destroy()
  const rowsOut = bodies.flatMap(({ rows }) =>
    servers.map((s) => {
      const mine = results.filter((x) => x.server === s.name && x.rows === rows)
      return {
        "large body": `${rows} rows`,
        server: s.name,
        "small p50 ms (median of rounds)": median(mine.map((x) => quantile(x.small, 0.5))),
        "small p99 ms": median(mine.map((x) => quantile(x.small, 0.99))),
        "small max ms": median(mine.map((x) => Math.max(...x.small))),
        "large bodies / s": median(mine.map((x) => x.large / (blockMs / 1000)))
      }
    })
  )
  section("largebody: small requests' latency while large JSON bodies arrive (medians over rounds)")
  console.log(table(rowsOut))
  log(`results: ${writeResults("largebody", { rounds, blockMs, rows: rowsOut, samples: results })}`)
}

await main()
