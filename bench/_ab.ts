// temporary: alternate closed-loop load across several server commands; print median req/s and server CPU/req
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
const level = Number(process.env.C ?? 16), secs = Number(process.env.S ?? 2), rounds = Number(process.env.R ?? 3)
const specs = process.argv.slice(2).map((s) => { const [name, ...cmd] = s.split(" "); return { name: name!, cmd } })
const cpu = (pid: number) => { const s = Fs.readFileSync(`/proc/${pid}/stat`, "utf8"); const f = s.slice(s.lastIndexOf(")") + 2).split(" "); return (Number(f[11]) + Number(f[12])) / 100 }
const data = Array.from({ length: 784 }, (_, i) => (i % 100) / 100 - 0.5)
const body = Buffer.from(JSON.stringify({ inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", data }] }))
let port = 18100
const servers = await Promise.all(specs.map((s) => new Promise<{ name: string; pid: number; port: number; kill: () => void }>((resolve, reject) => {
  const p = port++
  const child = spawn(process.execPath, s.cmd.map((a) => a.replace("PORT", String(p))), { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, MAX_QUEUED_REQUESTS: "1024" } })
  let out = ""; const on = (c: Buffer) => { out += c; if (out.includes("listening")) resolve({ name: s.name, pid: child.pid!, port: p, kill: () => child.kill("SIGTERM") }) }
  child.stdout.on("data", on); child.stderr.on("data", on); child.on("exit", (code) => reject(new Error(s.name + " exited " + code + out)))
})))
const load = async (port: number, secs: number) => {
  const agent = new Http.Agent({ keepAlive: true, maxSockets: level })
  const one = () => new Promise<void>((resolve, reject) => { const req = Http.request({ host: "127.0.0.1", port, method: "POST", path: "/v2/models/mlp/infer", agent, headers: { "content-type": "application/json", "content-length": body.length } }, (res) => { res.on("data", () => {}); res.on("end", () => res.statusCode === 200 ? resolve() : reject(new Error(String(res.statusCode)))) }); req.on("error", reject); req.end(body) })
  let n = 0; const end = Date.now() + secs * 1000; const t0 = Date.now()
  await Promise.all(Array.from({ length: level }, async () => { while (Date.now() < end) { await one(); n++ } }))
  agent.destroy(); return { n, rps: n / ((Date.now() - t0) / 1000) }
}
for (const s of servers) await load(s.port, 1)
const res: Record<string, Array<{ rps: number; us: number }>> = {}
for (let r = 0; r < rounds; r++) for (let k = 0; k < servers.length; k++) { const s = servers[(r + k) % servers.length]!; const c0 = cpu(s.pid); const { n, rps } = await load(s.port, secs); const us = (cpu(s.pid) - c0) * 1e6 / n; (res[s.name] ??= []).push({ rps, us }) }
const med = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
for (const s of servers) console.log(s.name.padEnd(20), "req/s", med(res[s.name]!.map((x) => x.rps)).toFixed(0).padStart(6), "server µs/req", med(res[s.name]!.map((x) => x.us)).toFixed(0).padStart(6))
for (const s of servers) s.kill()
