/**
 * limit: the physical limit — the best items/s one `session.run` reaches over batch sizes
 * 1…128 (intraOpNumThreads 1), in the main thread and in a worker — and the engine's share of
 * it at 64 outstanding batch-1 requests with batching on.
 *
 *   in-thread b=N   `session.run` of a batch of N rows, back to back, in the main thread
 *   worker b=N      OnnxModelPool.run of a batch of N rows, 2 outstanding (round trip through the
 *                   worker), plus the worker-measured native run time (runMs) of the same runs
 *   engine …        64 clients sending batch-1 requests through the engine, batching on
 *
 * MLP by default; Silero VAD too (`--models=mlp,silero_vad`, the default outside --quick), a
 * model whose runs cost ~5× more, so that the per-request cost of the engine weighs less.
 *
 * Usage: node --expose-gc bench/limit.ts [--quick] [--models=mlp,silero_vad]
 */
import { Effect } from "effect"
import * as ort from "onnxruntime-node"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as Tensor from "../src/Tensor.ts"
import {
  alternate,
  fmt,
  goal,
  type Goal,
  goalsTable,
  log,
  median,
  mlpData,
  parseArgs,
  type Row,
  Samples,
  section,
  table,
  writeResults
} from "./lib/common.ts"
import { withRunCounts } from "./lib/contenders.ts"
import { closedLoopAsync, closedLoopEffect, type LoadResult } from "./lib/load.ts"
import { engineLayer, type EngineHandle, openSession, startEngine, startOnnxPool, workerPool } from "./lib/pools.ts"

const args = parseArgs()
const ROUNDS = Number(args.options["rounds"] ?? (args.quick ? 1 : 3))
const BLOCK_MS = Number(args.options["block-ms"] ?? (args.quick ? 300 : 800))
const MODELS = (args.options["models"] ?? (args.quick ? "mlp" : "mlp,silero_vad")).split(",")

interface ModelSpec {
  readonly sizes: ReadonlyArray<number>
  /** Engine-side inputs of `rows` rows. */
  readonly inputs: (rows: number) => Tensor.TensorMap
  readonly batching: Record<string, unknown>
}

const sileroInputs = (rows: number): Tensor.TensorMap => {
  const samples = new Float32Array(rows * 512)
  for (let i = 0; i < samples.length; i++) samples[i] = Math.sin(i / 8) * 0.3
  return {
    input: Tensor.float32(samples, [rows, 512]),
    state: Tensor.float32(new Float32Array(2 * rows * 128), [2, rows, 128]),
    sr: Tensor.int64([16000], [])
  }
}

const specs: Record<string, ModelSpec> = {
  mlp: {
    sizes: [1, 2, 4, 8, 16, 32, 64, 128],
    inputs: (rows) => ({ input: Tensor.float32(mlpData(rows, 3), [rows, 784]) }),
    batching: { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0 }
  },
  silero_vad: {
    sizes: [1, 8, 32, 64],
    inputs: sileroInputs,
    batching: { enabled: true, maxBatchSize: 64, maxQueueDelayMs: 0, inputAxes: { state: 1, sr: null }, outputAxes: { stateN: 1 } }
  }
}

const feedsOf = (inputs: Tensor.TensorMap): Record<string, ort.Tensor> => {
  const feeds: Record<string, ort.Tensor> = {}
  for (const name in inputs) {
    const t = inputs[name]!
    feeds[name] = new ort.Tensor(t.dtype as "float32", t.data as Float32Array, t.dims)
  }
  return feeds
}

interface Block {
  readonly itemsPerSec: number
  /** Items/s from the worker-measured native run time (worker rows only). */
  readonly nativeItemsPerSec?: number
  readonly p50ms: number
  readonly p99ms: number
  /** Engine rows only: mean rows per native run. */
  readonly meanBatch?: number
}

const runModel = async (model: string) => {
  const spec = specs[model]!
  const session = await openSession(model, 1)
  const onnx = await startOnnxPool([{ name: model, instances: 1 }])
  const engineConfigs = [
    { name: "engine-c4", label: "engine, batching on, workers ×1, maxConcurrent 4 (default)", maxConcurrentRequests: 4 },
    { name: "engine-c2", label: "engine, batching on, workers ×1, maxConcurrent 2", maxConcurrentRequests: 2 }
  ]
  const engines: Array<EngineHandle> = []
  for (const c of engineConfigs) {
    engines.push(await startEngine(engineLayer(workerPool([{ name: model, instances: 1, batching: spec.batching }]), { maxConcurrentRequests: c.maxConcurrentRequests })))
  }
  const one = spec.inputs(1)

  type Run = (ms: number) => Promise<Block>
  const contenders: Array<{ name: string; label: string; kind: "inthread" | "worker" | "engine"; rows: number; run: Run }> = []
  for (const b of spec.sizes) {
    const feeds = feedsOf(spec.inputs(b))
    contenders.push({
      name: `inthread-b${b}`,
      label: `in-thread session.run b=${b}`,
      kind: "inthread",
      rows: b,
      run: async (ms) => {
        const r = await closedLoopAsync(1, ms, () => ({ run: () => session.run(feeds) }))
        return { itemsPerSec: r.reqPerSec * b, p50ms: r.latency["all"]!.p50, p99ms: r.latency["all"]!.p99 }
      }
    })
  }
  for (const b of spec.sizes) {
    const inputs = spec.inputs(b)
    contenders.push({
      name: `worker-b${b}`,
      label: `worker (OnnxModelPool.run, 2 outstanding) b=${b}`,
      kind: "worker",
      rows: b,
      run: async (ms) => {
        const runMs = new Samples()
        const r: LoadResult = await onnx.runtime.runPromise(closedLoopEffect(2, ms, () => ({
          run: Effect.tap(onnx.pool.run(model, inputs, { requestId: InferenceRequest.nextRequestId() }), (out) => Effect.sync(() => runMs.push(out.runMs)))
        })))
        const nativeMs = median(Array.from(runMs.view()))
        return { itemsPerSec: r.reqPerSec * b, nativeItemsPerSec: (b * 1000) / nativeMs, p50ms: r.latency["all"]!.p50, p99ms: r.latency["all"]!.p99 }
      }
    })
  }
  engineConfigs.forEach((c, k) => {
    const h = engines[k]!
    contenders.push({
      name: c.name,
      label: `${c.label}, 64 outstanding batch-1`,
      kind: "engine",
      rows: 1,
      run: async (ms) => {
        const before = { ...h.counts }
        const r = withRunCounts(await h.runtime.runPromise(closedLoopEffect(64, ms, () => ({ run: h.engine.infer(InferenceRequest.make(model, one)) }))), before, h.counts)
        if (r.failed > 0) throw new Error(`engine requests failed: ${r.firstError}`)
        return { itemsPerSec: r.reqPerSec, p50ms: r.latency["all"]!.p50, p99ms: r.latency["all"]!.p99, meanBatch: r.meanBatch ?? NaN }
      }
    })
  })

  log(`limit ${model}: warm-up`)
  for (const c of contenders) await c.run(c.kind === "engine" ? 1500 : 200)
  const results = await alternate(ROUNDS, contenders.map((c) => ({ name: c.name, run: () => c.run(BLOCK_MS) })), (r, name, x) =>
    log(`  ${model} round ${r + 1} ${name.padEnd(14)} ${fmt(x.itemsPerSec)} items/s${x.nativeItemsPerSec === undefined ? "" : ` (native ${fmt(x.nativeItemsPerSec)})`}${x.meanBatch === undefined ? "" : ` rows/run ${fmt(x.meanBatch)}`}`), model)

  const med = (name: string, key: "itemsPerSec" | "nativeItemsPerSec" | "p50ms" | "p99ms" | "meanBatch") => median(results[name]!.map((x) => x[key] ?? NaN))
  // Per round: the best in-thread batch size of that round is the limit that round.
  const inThread = contenders.filter((c) => c.kind === "inthread")
  const bestInThreadByRound = Array.from({ length: ROUNDS }, (_, r) => Math.max(...inThread.map((c) => results[c.name]![r]!.itemsPerSec)))
  const bestInThread = inThread.reduce((a, b) => (med(b.name, "itemsPerSec") > med(a.name, "itemsPerSec") ? b : a))
  const workers = contenders.filter((c) => c.kind === "worker")
  const bestWorker = workers.reduce((a, b) => (med(b.name, "itemsPerSec") > med(a.name, "itemsPerSec") ? b : a))
  const bestNative = workers.reduce((a, b) => (med(b.name, "nativeItemsPerSec") > med(a.name, "nativeItemsPerSec") ? b : a))
  const limit = median(bestInThreadByRound)

  const rows: Array<Row> = []
  for (const b of spec.sizes) {
    rows.push({
      rows: b,
      "in-thread items/s": med(`inthread-b${b}`, "itemsPerSec"),
      "in-thread ms/run": med(`inthread-b${b}`, "p50ms"),
      "worker round-trip items/s": med(`worker-b${b}`, "itemsPerSec"),
      "worker round-trip ms p50": med(`worker-b${b}`, "p50ms"),
      "worker native items/s (runMs)": med(`worker-b${b}`, "nativeItemsPerSec")
    })
  }
  const share = (name: string) => median(results[name]!.map((x, r) => x.itemsPerSec / bestInThreadByRound[r]!))
  const engineRows: Array<Row> = engineConfigs.map((c) => ({
    contender: c.label,
    "items/s": med(c.name, "itemsPerSec"),
    "p50 ms": med(c.name, "p50ms"),
    "p99 ms": med(c.name, "p99ms"),
    "rows/run": med(c.name, "meanBatch"),
    "share of in-thread limit": `${(100 * share(c.name)).toFixed(1)}%`,
    "share of worker round-trip best": `${(100 * med(c.name, "itemsPerSec") / med(bestWorker.name, "itemsPerSec")).toFixed(1)}%`
  }))
  const bestEngine = engineConfigs.reduce((a, b) => (share(b.name) > share(a.name) ? b : a))
  const goals: Array<Goal> = [
    goal(`${model}: engine share of the physical limit, default config`, "≥ 60%", share("engine-c4"), share("engine-c4") >= 0.6, `${(100 * share("engine-c4")).toFixed(1)}%`),
    goal(`${model}: engine share of the physical limit, best config (${bestEngine.label})`, "≥ 60%", share(bestEngine.name), share(bestEngine.name) >= 0.6, `${(100 * share(bestEngine.name)).toFixed(1)}%`)
  ]
  await Promise.all([...engines.map((h) => h.dispose()), onnx.dispose(), session.release()])
  return {
    model,
    rows,
    engineRows,
    goals,
    limit: { itemsPerSec: limit, bestInThread: bestInThread.label, bestWorkerRoundTrip: bestWorker.label, bestWorkerNative: bestNative.label },
    rounds: results
  }
}

const main = async () => {
  log(`limit: models ${MODELS.join(", ")}, ${ROUNDS} rounds × ${BLOCK_MS} ms${args.quick ? " (quick)" : ""}`)
  const out = []
  for (const m of MODELS) out.push(await runModel(m))
  for (const o of out) {
    section(`limit: ${o.model}, one session (intraOpNumThreads 1) by batch size (${ROUNDS} rounds × ${BLOCK_MS} ms, medians)`)
    console.log(table(o.rows))
    console.log(`\nphysical limit (median over rounds of the best in-thread batch size): ${fmt(o.limit.itemsPerSec)} items/s (${o.limit.bestInThread}); best worker round trip: ${o.limit.bestWorkerRoundTrip}`)
    section(`limit: ${o.model}, engine at 64 outstanding batch-1 requests, batching on`)
    console.log(table(o.engineRows))
  }
  const goals = out.flatMap((o) => o.goals)
  section("limit: goals")
  console.log(goalsTable(goals))
  const file = writeResults("limit", { args: { quick: args.quick, rounds: ROUNDS, blockMs: BLOCK_MS, models: MODELS }, models: out, goals })
  log(`wrote ${file}`)
}

await main()
