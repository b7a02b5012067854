/**
 * 06 · A stateful model's sequences: the engine keeps Silero VAD's state between the chunks of
 * each audio stream.
 *
 * Silero VAD takes its state as an input (`state`) and gives the next one as an output
 * (`stateN`). With `sequenceBatching` in its config.json, each request names its stream
 * (`sequence: { id, start, end }`) and sends no state: the engine adds it, keeps the next one and
 * answers without it. A stream's chunks may all be sent at once: they run one at a time, in order,
 * while chunks of other streams batch with them.
 *
 * Run: `npm run example -- 06`
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { InferenceClient, InferenceError, InferenceRequest, ModelRepository, Tensor } from "../src/index.ts"

// A repository with Silero VAD twice: as bundled (the client carries the state) and with sequences.
const repository = Fs.mkdtempSync(Path.join(Os.tmpdir(), "example-06-"))
const bundled = Path.join(ModelRepository.bundled, "silero_vad")
const config = JSON.parse(Fs.readFileSync(Path.join(bundled, "config.json"), "utf8")) as Record<string, unknown>
for (const [name, extra] of [["vad", { sequenceBatching: { state: [{ input: "state", output: "stateN" }] } }], ["vad_carried", {}]] as const) {
  Fs.mkdirSync(Path.join(repository, name))
  Fs.copyFileSync(Path.join(bundled, "model.onnx"), Path.join(repository, name, "model.onnx"))
  Fs.writeFileSync(Path.join(repository, name, "config.json"), JSON.stringify({ ...config, ...extra }))
}

const client = await InferenceClient.make({ repository })
const sr = Tensor.make("int64", BigInt64Array.of(16000n), [])
/** Chunk `c` of stream `s`: 512 samples at 16 kHz. */
const chunk = (s: number, c: number) =>
  Tensor.float32(Float32Array.from({ length: 512 }, (_, i) => Math.sin((c * 512 + i) / (4 + s)) * 0.5), [1, 512])
type Answer = Awaited<ReturnType<typeof client.infer>>
const probability = (result: Answer) => (result.outputs["output"]!.data as Float32Array)[0]!

// Two streams of 8 chunks, every chunk sent at once; the engine keeps each stream's state.
const streams = [1, 2]
const kept = await Promise.all(streams.map((s) =>
  Promise.all(Array.from({ length: 8 }, (_, c) =>
    client.infer(InferenceRequest.make("vad", { input: chunk(s, c), sr }, { sequence: { id: s, start: c === 0, end: c === 7 } }))
      .then(probability)))
))
console.log(`answers carry no state: ${Object.keys((await client.infer(InferenceRequest.make("vad", { input: chunk(1, 0), sr }, { sequence: { id: 9, start: true, end: true } }))).outputs).join(", ")}`)

// The same streams with the client carrying the state, chunk after chunk.
const carried = await Promise.all(streams.map(async (s) => {
  let state: Tensor.Tensor = Tensor.float32(new Float32Array(256), [2, 1, 128])
  const out: Array<number> = []
  for (let c = 0; c < 8; c++) {
    const result = await client.infer(InferenceRequest.make("vad_carried", { input: chunk(s, c), sr, state }))
    out.push(probability(result))
    state = result.outputs["stateN"]!
  }
  return out
}))
const same = kept.every((stream, s) => stream.every((p, c) => Math.abs(p - carried[s]![c]!) < 1e-6))
console.log(`2 streams of 8 chunks: the state kept by the engine answers as the state carried by the client: ${same}`)

// A stream that ended (or never started) must start again.
const after = await client.infer(InferenceRequest.make("vad", { input: chunk(1, 0), sr }, { sequence: { id: 1 } })).then(
  () => "resolved",
  (e: unknown) => (InferenceError.isInferenceError(e) ? `rejected with InferenceError ${e.reason._tag}` : String(e))
)
console.log(`a chunk of a stream that ended: ${after}`)

await client.close()
Fs.rmSync(repository, { recursive: true, force: true })
