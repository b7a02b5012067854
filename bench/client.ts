/**
 * client: `OipClient` against what a Node user writes by hand to call the server (`fetch` and
 * JSON), both calling one `node src/bin/server.ts` (bundled models, a child process) with the same
 * MLP rows. Not part of `npm run bench` (no goal); run it by hand:
 *
 *   node --expose-gc bench/client.ts [--quick]
 *
 * Contenders, alternating by round, at 1 and 16 outstanding requests:
 * - "fetch + JSON (by hand)": `fetch` with the row as a JSON array, `response.json()`, the logits
 *   into a Float32Array;
 * - "OipClient, binary": `OipClient.connect(…).infer(request)` (binary tensor data both ways,
 *   node:http keep-alive);
 * - "OipClient, JSON": the same with `binaryInputs: false, binaryOutputs: false`.
 * Reported: req/s, p50, this process's main-thread CPU µs a request (the client's own cost; the
 * server is another process), and OipClient binary over fetch per round.
 */
import { spawn } from "node:child_process"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as OipClient from "../src/OipClient.ts"
import * as Tensor from "../src/Tensor.ts"
import { alternate, log, median, mlpData, MLP_IN, parseArgs, ratio, repoRoot, section, table, writeResults } from "./lib/common.ts"
import { closedLoopAsync, engineRow, type LoadResult } from "./lib/load.ts"

const args = parseArgs()
const rounds = args.quick ? 3 : 5
const blockMs = args.quick ? 1000 : 2500

const server = spawn(process.execPath, ["src/bin/server.ts", "--port", "0", "--grpc-port", "off"], { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] })
process.on("exit", () => server.kill("SIGKILL"))
const url = await new Promise<string>((resolve, reject) => {
  let out = ""
  const onData = (c: Buffer) => {
    out += c.toString("utf8")
    const m = /listening on (http:\/\/[^\s]+)/.exec(out)
    if (m !== null && /model mlp version 1 is READY/.test(out)) resolve(m[1]!)
  }
  server.stdout!.on("data", onData)
  server.stderr!.on("data", onData)
  server.on("exit", (code) => reject(new Error(`server exited with ${code}: ${out}`)))
})

const rows = Array.from({ length: 64 }, (_, i) => mlpData(1, i + 1))
const requestOf = (seq: number) => InferenceRequest.make("mlp", { input: Tensor.float32(rows[seq % rows.length]!, [1, MLP_IN]) })

const byHand = (outstanding: number): Promise<LoadResult> =>
  closedLoopAsync(outstanding, blockMs, (seq) => ({
    run: async () => {
      const response = await fetch(`${url}/v2/models/mlp/infer`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ inputs: [{ name: "input", datatype: "FP32", shape: [1, MLP_IN], data: Array.from(rows[seq % rows.length]!) }] })
      })
      if (response.status !== 200) throw new Error(`${response.status}: ${await response.text()}`)
      const json = await response.json() as { outputs: Array<{ data: Array<number> }> }
      return Float32Array.from(json.outputs[0]!.data)
    }
  }))

const viaClient = (client: OipClient.PromiseClient) => (outstanding: number): Promise<LoadResult> =>
  closedLoopAsync(outstanding, blockMs, (seq) => ({ run: () => client.infer(requestOf(seq)) }))

const binaryClient = OipClient.connect({ url })
const jsonClient = OipClient.connect({ url, binaryInputs: false, binaryOutputs: false })

const out: Record<string, unknown> = {}
for (const outstanding of [1, 16]) {
  section(`MLP, one row a request, ${outstanding} outstanding`)
  const cs = [
    { name: "fetch + JSON (by hand)", run: () => byHand(outstanding) },
    { name: "OipClient, binary", run: () => viaClient(binaryClient)(outstanding) },
    { name: "OipClient, JSON", run: () => viaClient(jsonClient)(outstanding) }
  ]
  // warm both sides (V8 optimises the server's path and the clients' over their first seconds)
  for (const c of cs) await c.run()
  const results = await alternate(rounds, cs)
  const rowsOut = cs.map((c) => engineRow(c.name, results[c.name]!)).map(({ "rows a run": _, ...r }) => r)
  const perRound = results[cs[1]!.name]!.map((r, i) => r.reqPerSec / results[cs[0]!.name]![i]!.reqPerSec)
  log(table(rowsOut))
  log(`req/s OipClient binary over fetch + JSON, median of ${rounds} rounds: ${ratio(median(perRound))}`)
  out[`outstanding${outstanding}`] = { rows: rowsOut, perRoundRatio: perRound }
}
writeResults("client", out)
await Promise.all([binaryClient.close(), jsonClient.close()])
server.kill("SIGTERM")
process.exit(0)
