/**
 * The GPU soak: the engine serving a WebGPU model with the defaults for a GPU model (config.json
 * names only the provider) at `--outstanding` requests (default 256) for
 * `--seconds` (default 300), with mixed request sizes (1-32 rows), cancellations (5% aborted
 * 0-3 ms after submission) and tight deadlines (2% with a 2 ms timeout); every answer is checked
 * against the CPU's output for the same rows (computed once, in this thread, on a CPU session).
 *
 *   node scripts/gpu/soak.ts [--seconds=300] [--outstanding=256] [--sizes=1024,4096,4096,1000] [--out=FILE.json]
 *
 * Fails (exit 1) on any answer that differs from the CPU's by more than 1e-4, on any failure
 * other than Cancelled / DeadlineExceeded / QueueTimeout for a request that was cancelled or
 * given a tight deadline, or when nothing completed. Where no adapter is found the model falls
 * back to the CPU and the soak measures that (the JSON says `deviceUsed`). `--out` is rewritten
 * at every window, marked `partial` (no verdict), so that a soak stopped by a time limit or a
 * native crash of its process still leaves its figures; the end replaces it with the verdict.
 *
 * @module soak
 */
import * as Fs from "node:fs"
import * as ort from "onnxruntime-node"
import * as InferenceClient from "../../src/InferenceClient.ts"
import { InferenceError } from "../../src/InferenceError.ts"
import * as InferenceRequest from "../../src/InferenceRequest.ts"
import * as Tensor from "../../src/Tensor.ts"
import { countingTelemetry } from "../../bench/lib/pools.ts"
import { heavySizes, maxAbsDiff, parseSizes, writeRepository } from "./model.ts"

const option = (name: string): string | undefined => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3)
const seconds = Number(option("seconds") ?? 300)
const outstanding = Number(option("outstanding") ?? 256)
const out = option("out")
const sizes = parseSizes(option("sizes"), heavySizes)
const tolerance = 1e-4
const poolRows = 64

// nothing but the provider: the engine's defaults for a GPU model (process isolation, `OnnxModelPool.gpuBatching`)
const repo = writeRepository(sizes, { gpu: { executionProviders: ["webgpu"] } })
const [width, classes] = [sizes[0]!, sizes[sizes.length - 1]!]

// The reference: the CPU's outputs for a pool of rows; every request takes consecutive rows of it.
const rows = repo.input(poolRows, 42)
const cpu = await ort.InferenceSession.create(repo.modelPath, { executionProviders: ["cpu"], logSeverityLevel: 3 })
const reference = (await cpu.run({ input: new ort.Tensor("float32", rows, [poolRows, width]) }))["logits"]!.data as Float32Array
await cpu.release()

// recordRun's batch size counts requests a run answered (bench/lib/pools.ts calls them rows).
const counts = { runs: 0, rows: 0, runMs: 0 }
const telemetry = countingTelemetry("metrics", counts)

const client = await InferenceClient.make({ repository: repo.root, telemetry, config: { maxQueuedRequests: 8192 }, logLevel: "Warn" })

const sizesOfRequests = [1, 1, 1, 2, 2, 4, 4, 8, 16, 32]
let seed = 12345
const random = () => {
  seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0
  return seed / 4294967296
}

const tally = {
  completed: 0,
  rowsCompleted: 0,
  cancelledAsked: 0,
  tightDeadlines: 0,
  expectedFailures: {} as Record<string, number>,
  unexpectedFailures: {} as Record<string, number>,
  firstUnexpected: undefined as string | undefined,
  mismatches: 0,
  maxAbsDiff: 0,
  devices: {} as Record<string, number>
}
const count = (record: Record<string, number>, key: string) => (record[key] = (record[key] ?? 0) + 1)

const one = async (): Promise<void> => {
  const n = sizesOfRequests[Math.floor(random() * sizesOfRequests.length)]!
  const start = Math.floor(random() * (poolRows - n + 1))
  const input = { input: Tensor.float32(rows.slice(start * width, (start + n) * width), [n, width]) }
  const roll = random()
  const cancel = roll < 0.05
  const tight = !cancel && roll < 0.07
  const controller = cancel ? new AbortController() : undefined
  if (controller !== undefined) {
    tally.cancelledAsked++
    setTimeout(() => controller.abort("soak: cancelled"), Math.floor(random() * 4))
  }
  if (tight) tally.tightDeadlines++
  try {
    const r = await client.infer(InferenceRequest.make("gpu", input, tight ? { timeout: 2 } : {}), { signal: controller?.signal })
    count(tally.devices, r.deviceUsed)
    const got = r.outputs["logits"]!.data as Float32Array
    const d = maxAbsDiff(got, reference.subarray(start * classes, (start + n) * classes))
    tally.maxAbsDiff = Math.max(tally.maxAbsDiff, d)
    if (!(d <= tolerance)) tally.mismatches++
    tally.completed++
    tally.rowsCompleted += n
  } catch (e) {
    const tag = e instanceof InferenceError ? e.reason._tag : "non-InferenceError"
    const expected = (cancel && tag === "Cancelled") || (tight && (tag === "DeadlineExceeded" || tag === "QueueTimeout"))
    count(expected ? tally.expectedFailures : tally.unexpectedFailures, tag)
    if (!expected) tally.firstUnexpected ??= e instanceof Error ? e.message : String(e)
  }
}

const t0 = performance.now()
const end = t0 + seconds * 1000
const windows: Array<Record<string, number>> = []
let last = { t: t0, completed: 0, runs: 0, requests: 0 }
/** The summary so far (`partial` until the end, with no verdict): a soak stopped by the run's limit still leaves its figures. */
const summarize = (elapsedS: number, partial: boolean) => ({
  ...(partial ? { partial: true } : {}),
  sizes,
  seconds: +elapsedS.toFixed(1),
  outstanding,
  ...tally,
  reqPerSec: Math.round(tally.completed / elapsedS),
  requestsPerRun: +(counts.rows / Math.max(1, counts.runs)).toFixed(1),
  rowsPerRun: +(tally.rowsCompleted / Math.max(1, counts.runs)).toFixed(1),
  runs: counts.runs,
  windows,
  pass: !partial && Object.values(tally.unexpectedFailures).reduce((a, b) => a + b, 0) === 0 && tally.mismatches === 0 && tally.completed > 0
})
const report = setInterval(() => {
  const now = performance.now()
  const w = {
    t: Math.round((now - t0) / 1000),
    reqPerSec: Math.round((tally.completed - last.completed) / ((now - last.t) / 1000)),
    requestsPerRun: +((counts.rows - last.requests) / Math.max(1, counts.runs - last.runs)).toFixed(1),
    unexpected: Object.values(tally.unexpectedFailures).reduce((a, b) => a + b, 0),
    mismatches: tally.mismatches,
    rssMiB: Math.round(process.memoryUsage().rss / 2 ** 20)
  }
  windows.push(w)
  console.log(JSON.stringify(w))
  if (out !== undefined) {
    Fs.writeFileSync(`${out}.tmp`, JSON.stringify(summarize((now - t0) / 1000, true), null, 2))
    Fs.renameSync(`${out}.tmp`, out)
  }
  last = { t: now, completed: tally.completed, runs: counts.runs, requests: counts.rows }
}, Math.min(10_000, seconds * 250))
await Promise.all(Array.from({ length: outstanding }, async () => {
  while (performance.now() < end) await one()
}))
clearInterval(report)
const elapsed = (performance.now() - t0) / 1000
await client.close()
repo.remove()

const summary = summarize(elapsed, false)
if (out !== undefined) Fs.writeFileSync(out, JSON.stringify(summary, null, 2))
const { windows: _, ...brief } = summary
console.log(JSON.stringify(brief))
console.log(summary.pass ? "SOAK PASS" : "SOAK FAIL")
process.exitCode = summary.pass ? 0 : 1
