import * as Fs from "node:fs"
import * as Http from "node:http"
const port = Number(process.argv[2]); const c = Number(process.argv[3] ?? 16); const secs = Number(process.argv[4] ?? 5); const pid = Number(process.argv[5] ?? 0)
const cpu = () => { if (!pid) return NaN; const s = Fs.readFileSync(`/proc/${pid}/stat`, "utf8"); const f = s.slice(s.lastIndexOf(")") + 2).split(" "); return (Number(f[11]) + Number(f[12])) / 100 }
const data = Array.from({ length: 784 }, (_, i) => (i % 100) / 100 - 0.5)
const body = Buffer.from(JSON.stringify({ inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", data }] }))
const agent = new Http.Agent({ keepAlive: true, maxSockets: c })
const one = () => new Promise<void>((resolve, reject) => {
  const req = Http.request({ host: "127.0.0.1", port, method: "POST", path: "/v2/models/mlp/infer", agent, headers: { "content-type": "application/json", "content-length": body.length } }, (res) => { res.on("data", () => {}); res.on("end", () => { if (res.statusCode !== 200) reject(new Error(String(res.statusCode))); else resolve() }) })
  req.on("error", reject); req.end(body)
})
const run = async (s: number) => { let n = 0; const end = Date.now() + s * 1000; await Promise.all(Array.from({ length: c }, async () => { while (Date.now() < end) { await one(); n++ } })); return n }
await run(1)
const c0 = cpu(); const t0 = Date.now()
const n = await run(secs)
const c1 = cpu()
console.log(`req/s ${(n / ((Date.now() - t0) / 1000)).toFixed(0)} server CPU µs/req ${((c1 - c0) * 1e6 / n).toFixed(0)}`)
agent.destroy()
