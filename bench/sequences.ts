/**
 * sequences: what keeping a stateful model's state in the engine costs, against a client that
 * carries it. Not part of `npm run bench` (no goal); run it by hand:
 *
 *   node --expose-gc bench/sequences.ts [--quick]
 *
 * The engine over Silero VAD in one worker thread (its bundled config.json: batching on, `state`
 * on axis 1), `streams` concurrent audio streams, each sending 512-sample chunks one after another:
 * - "client carries the state": the bundled model; each request sends the state of its stream's
 *   last answer, which the client keeps;
 * - "server keeps the state": the same model with `sequenceBatching`; each request names its
 *   stream (`sequence`), its first one starting it.
 * Both engines run side by side (one thread each); rounds alternate, at 1 and 16 streams: req/s,
 * p50, main-thread CPU µs per request and rows a run, and the ratio kept / carried per round.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { Effect } from "effect"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as OnnxModelPool from "../src/onnx/OnnxModelPool.ts"
import * as Tensor from "../src/Tensor.ts"
import { alternate, log, median, modelsDir, parseArgs, ratio, section, table, writeResults } from "./lib/common.ts"
import { withRunCounts } from "./lib/contenders.ts"
import { closedLoopEffect, engineRow, type LoadResult } from "./lib/load.ts"
import { engineLayer, type EngineHandle, startEngine } from "./lib/pools.ts"

const args = parseArgs()
const rounds = args.quick ? 3 : 5
const blockMs = args.quick ? 1000 : 2500

const bundled = Path.join(modelsDir, "silero_vad")
const config = { ...JSON.parse(Fs.readFileSync(Path.join(bundled, "config.json"), "utf8")), instances: 1, intraOpNumThreads: 1, interOpNumThreads: 1 }
const repository = Fs.mkdtempSync(Path.join(Os.tmpdir(), "bench-sequences-"))
for (const [name, extra] of [["plain", {}], ["kept", { sequenceBatching: { maxSequenceIdleMs: 600_000, state: [{ input: "state", output: "stateN" }] } }]] as const) {
  Fs.mkdirSync(Path.join(repository, name))
  Fs.copyFileSync(Path.join(bundled, "model.onnx"), Path.join(repository, name, "model.onnx"))
  Fs.writeFileSync(Path.join(repository, name, "config.json"), JSON.stringify({ ...config, ...extra }))
}
process.on("exit", () => Fs.rmSync(repository, { recursive: true, force: true }))

const chunk = Tensor.float32(Float32Array.from({ length: 512 }, (_, i) => Math.sin(i / 6) * 0.4), [1, 512])
const sr = Tensor.make("int64", BigInt64Array.from([16000n]), [])

let nextId = 1
/** `streams` clients, each one stream of chunks: its state carried by the client, or kept by the server. */
const streamsVia = (h: EngineHandle, kept: boolean) => async (streams: number, durationMs: number): Promise<LoadResult> => {
  const before = { ...h.counts }
  const states: Array<Tensor.Tensor> = Array.from({ length: streams }, () => Tensor.float32(new Float32Array(256), [2, 1, 128]))
  // new sequences each block: each client starts its own
  const ids = Array.from({ length: streams }, () => nextId++)
  const started = new Array<boolean>(streams).fill(false)
  const r = await h.runtime.runPromise(closedLoopEffect(streams, durationMs, (_seq, stream) => {
    if (kept) {
      const start = !started[stream]
      started[stream] = true
      return { run: h.engine.infer(InferenceRequest.make("kept", { input: chunk, sr }, { sequence: { id: ids[stream]!, start } })) }
    }
    return {
      run: Effect.map(h.engine.infer(InferenceRequest.make("plain", { input: chunk, sr, state: states[stream]! })), (result) => {
        states[stream] = result.outputs["stateN"]!
      })
    }
  }))
  return withRunCounts(r, before, h.counts)
}

const engine = await startEngine(engineLayer(OnnxModelPool.layer({ repository }), {}))
const contenders = (streams: number) => [
  { name: `${streams} streams, client carries the state`, run: () => streamsVia(engine, false)(streams, blockMs) },
  { name: `${streams} streams, server keeps the state`, run: () => streamsVia(engine, true)(streams, blockMs) }
]
const out: Record<string, unknown> = {}
for (const streams of [1, 16]) {
  section(`Silero VAD, ${streams} stream(s), 512-sample chunks`)
  const cs = contenders(streams)
  // V8 optimises the engine over its first seconds of load
  for (const c of cs) await c.run()
  const results = await alternate(rounds, cs)
  const rows = cs.map((c) => engineRow(c.name, results[c.name]!))
  const perRound = results[cs[1]!.name]!.map((r, i) => r.reqPerSec / results[cs[0]!.name]![i]!.reqPerSec)
  log(table(rows))
  log(`req/s kept over carried, median of ${rounds} rounds: ${ratio(median(perRound))}`)
  out[`streams${streams}`] = { rows, perRoundRatio: perRound }
}
writeResults("sequences", out)
await engine.dispose()
