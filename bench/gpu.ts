/**
 * `npm run bench -- gpu [--quick] [--sizes=1024,4096,4096,1000] [--seconds=4] [--rounds=2] [--warmup-ms=2000] [--emulate]
 * [--emulated-only] [--instances=1,2,3]`: a
 * compute-heavy generated MLP (`scripts/gpu/model.ts`) on each provider that loads here, cpu
 * always and webgpu where an adapter is found (`scripts/gpu/probe.ts`; otherwise one line says
 * why and the CPU is measured alone).
 *
 * Contenders, alternating, closed loop at 1, 64 and 256 outstanding requests of one row each:
 * - `session.run` per request on one session in the main thread (cpu: intra-op threads = cores);
 * - the engine with batching (maxBatchSize 256) over the model's config.json: cpu with
 *   intraOpNumThreads = cores and 1 instance; webgpu with the engine's defaults for a GPU model
 *   (process isolation, `ModelRepository.defaultIsolation`);
 * - the same engine with the other batch sizing than the default, so that a GPU host measures
 *   what `bench/sizing.ts` simulates: on webgpu fixed sizing within the same 2 ms delay (the
 *   default is learned sizing); on cpu learned sizing within a 2 ms delay (the default is fixed
 *   sizing with no delay, and learned sizing never waits without one);
 * - once per provider, the raw batched rate: 256-row `session.run` calls back to back;
 * - at 64 and 256, the request path's ceiling: the same engine, a GPU model's defaults (process
 *   isolation, `ModelRepository.defaultInstances()` instances, `OnnxModelPool.gpuBatching`), on a
 *   model with the MLP's signature whose run is one Slice (`sliceOnnx`), on the CPU. Whatever the
 *   GPU does, the engine cannot serve this model's requests faster than that here.
 * Every engine contender (and the emulated ones) first runs `--warmup-ms` at 64 outstanding
 * (default 2000, quick 1000): V8 optimises the engine over its first seconds of load, and the
 * first level's blocks measured that (`bench/throughput.ts` warms its contenders too); so does
 * each model of the `--instances` sweep, at 256.
 * Prints req/s, p50/p99 latency, rows per native run, and the largest difference between the
 * provider's outputs and the CPU session's on the same 8 rows. `--quick` uses a smaller MLP
 * (1024-1024-1024-1000) and short blocks, for a machine without a GPU.
 *
 * Where no adapter is found (or with `--emulate`), the engine also serves an emulated H200
 * (`bench/lib/emulatedGpu.ts`: a WebGPU run's measured cost, one device shared by the instances'
 * processes, outputs from a one-Slice model) with a GPU model's defaults and 2 instances (the
 * 16-core host's default), learned sizing against fixed: what the goals below would read if the
 * GPU cost what it did there, on this machine's CPU. It runs after the engines above are closed;
 * `--emulated-only` runs it alone (no MLP, no ceiling), for comparing the request path of two
 * commits side by side.
 *
 * `--instances=1,2,3` adds, last, the GPU model (where no adapter is found, the emulated one) with
 * each of these instance counts, at 256 outstanding, alternating: whether processes that share one
 * GPU gain from more of them (the default is `ModelRepository.defaultInstances()`).
 *
 * Goals (GPU only; `gpuGoals` in scripts/gpu/report.ts): the engine on webgpu at 256 outstanding
 * reaches 50% of the raw batched webgpu rate, 10× per-request webgpu `session.run` at 64, and 3×
 * the engine on the CPU (intra-op = cores) at 64 (the issue's wording) and at 256.
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as ort from "onnxruntime-node"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as OnnxModelPool from "../src/onnx/OnnxModelPool.ts"
import * as Tensor from "../src/Tensor.ts"
import { probeWebGpu } from "../scripts/gpu/probe.ts"
import { benchTable, gpuGoals, rawBatchedContender } from "../scripts/gpu/report.ts"
import * as ModelRepository from "../src/ModelRepository.ts"
import * as EmulatedGpu from "./lib/emulatedGpu.ts"
import { addModel, heavySizes, maxAbsDiff, parseSizes, sliceOnnx, writeRepository } from "../scripts/gpu/model.ts"
import { alternate, type Contender, fmt, type Goal, goalsTable, median, parseArgs, section, table, writeResults } from "./lib/common.ts"
import { closedLoopAsync, closedLoopEffect, type LoadResult } from "./lib/load.ts"
import { type EngineHandle, engineLayer, startEngine } from "./lib/pools.ts"
import { withRunCounts } from "./lib/contenders.ts"

const args = parseArgs()
const sizes = parseSizes(args.options["sizes"], args.quick ? [1024, 1024, 1024, 1000] : heavySizes)
const blockMs = Number(args.options["seconds"] ?? (args.quick ? 1.5 : 4)) * 1000
const rounds = Number(args.options["rounds"] ?? (args.quick ? 1 : 2))
const warmupMs = Number(args.options["warmup-ms"] ?? (args.quick ? 1000 : 2000))
if (!Number.isFinite(warmupMs) || warmupMs < 0) throw new Error(`--warmup-ms must be a number of milliseconds, got ${args.options["warmup-ms"]}`)
const outstandings = [1, 64, 256]
const cores = Os.availableParallelism()
const maxBatchSize = 256
/** `--instances=1,2,3` → [1, 2, 3]; absent → [] (no sweep). */
const parseInstances = (text: string | undefined): ReadonlyArray<number> => {
  if (text === undefined || text === "") return []
  const counts = text.split(",").map((s) => Number(s.trim()))
  if (counts.some((n) => !Number.isInteger(n) || n < 1 || n > 16)) throw new Error(`--instances: expected integers from 1 to 16, got ${JSON.stringify(text)}`)
  return counts
}

const sweep = parseInstances(args.options["instances"])

const probe = await probeWebGpu()
if (!probe.available) console.log(`no WebGPU adapter here: ${probe.reason}; measuring the CPU alone`)
const providers = probe.available ? (["cpu", "webgpu"] as const) : (["cpu"] as const)
type Provider = (typeof providers)[number]
const modelOf = (p: Provider) => `mlp_${p}`

const batching = { enabled: true, maxBatchSize }
/** The other sizing than each provider's default, for the comparison: its model's suffix and contender name. */
const other = { cpu: { suffix: "_learned", contender: "engine, learned sizing" }, webgpu: { suffix: "_fixed", contender: "engine, fixed sizing" } } as const
const repo = writeRepository(sizes, {
  mlp_cpu: { executionProviders: ["cpu"], instances: 1, intraOpNumThreads: cores, batching },
  mlp_cpu_learned: { executionProviders: ["cpu"], instances: 1, intraOpNumThreads: cores, batching: { ...batching, sizing: "learned", maxQueueDelayMs: 2 } },
  ...(probe.available
    ? { mlp_webgpu: { executionProviders: ["webgpu"], batching }, mlp_webgpu_fixed: { executionProviders: ["webgpu"], batching: { ...batching, sizing: "fixed" } } }
    : {})
})
const [inputs, outputs] = [sizes[0]!, sizes[sizes.length - 1]!]
const ceilingModel = "slice_ceiling"
const ceilingConfig = {
  executionProviders: ["cpu"],
  isolation: "process",
  instances: ModelRepository.defaultInstances(),
  intraOpNumThreads: 1,
  batching: OnnxModelPool.gpuBatching(batching)
}
addModel(repo.root, ceilingModel, sliceOnnx(inputs, Math.min(inputs, outputs)), ceilingConfig)
console.log(`model: MLP ${sizes.join("-")} (${(sizes.slice(1).reduce((n, s, i) => n + s * (sizes[i]! + 1), 0) / 1e6).toFixed(1)}M parameters), ${cores} cores, blocks of ${blockMs} ms, ${rounds} round(s)`)

const row = repo.input(1, 7)

/** `k` callers in a closed loop of one-row requests to `model` on `handle`, with the native runs they caused. */
const oneRowLoad = (handle: EngineHandle, model: string) => async (k: number, ms = blockMs): Promise<LoadResult> => {
  const before = { ...handle.counts }
  const r = await handle.runtime.runPromise(closedLoopEffect(k, ms, () => ({
    run: handle.engine.infer(InferenceRequest.make(model, { input: Tensor.float32(row, [1, inputs]) }))
  })))
  return withRunCounts(r, before, handle.counts)
}

/** Blocks of one contender: the medians of their rate, latency and rows per run, and their failures summed. */
const summarize = (list: ReadonlyArray<LoadResult>) => ({
  reqPerSec: median(list.map((x) => x.reqPerSec)),
  p50: median(list.map((x) => x.latency["all"]!.p50)),
  p99: median(list.map((x) => x.latency["all"]!.p99)),
  rowsPerRun: median(list.map((x) => x.meanBatch ?? 1)),
  failed: list.reduce((n, x) => n + x.failed, 0)
})

type Sweep = ReadonlyArray<{ instances: number; reqPerSec: number; p50: number; p99: number; rowsPerRun: number; failed: number }>

/**
 * `--instances`: the GPU model (webgpu here, else the emulated H200) with each instance count, in
 * one engine, at 256 outstanding, alternating. A failure to load or serve is reported, not thrown:
 * the sweep runs after every other measurement has been taken.
 */
const instancesSweep = async (onGpu: boolean): Promise<Sweep | { readonly error: string }> => {
  const device = onGpu ? undefined : EmulatedGpu.open()
  const name = (n: number) => `${onGpu ? "mlp_webgpu" : "emulated"}_x${n}`
  let root: string
  let remove: () => void
  if (onGpu) {
    const r = writeRepository(sizes, Object.fromEntries(sweep.map((n) => [name(n), { executionProviders: ["webgpu"], instances: n, batching }])))
    root = r.root
    remove = r.remove
  } else {
    root = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-onnx-emulated-sweep-"))
    for (const n of sweep) addModel(root, name(n), sliceOnnx(inputs, Math.min(inputs, outputs)), { executionProviders: ["cpu"], isolation: "process", instances: n })
    remove = () => Fs.rmSync(root, { recursive: true, force: true })
  }
  const k = maxBatchSize
  try {
    const handle = await startEngine(engineLayer(
      OnnxModelPool.layer({ repository: root, ...(device === undefined ? {} : { transports: { process: device.transport } }) }),
      { maxConcurrentRequests: Math.max(4, ...sweep), maxQueuedRequests: 4096 }
    ))
    try {
      for (const n of sweep) await oneRowLoad(handle, name(n))(k, warmupMs)
      const results = await alternate(rounds, sweep.map((n) => ({ name: String(n), run: () => oneRowLoad(handle, name(n))(k) })), (_r, n, b) =>
        console.error(`  ${onGpu ? "webgpu" : "emulated"} ${n} instance(s) k=${k}: ${b.reqPerSec.toFixed(0)}/s`), "instances")
      return sweep.map((n) => ({ instances: n, ...summarize(results[String(n)]!) }))
    } finally {
      await handle.dispose()
    }
  } catch (e) {
    return { error: e instanceof Error ? e.message : String(e) }
  } finally {
    device?.remove()
    remove()
  }
}

/** The sweep as `gpu.json` records it. */
const sweepRecord = (results: Sweep | { readonly error: string }, onGpu: boolean) =>
  ({ onGpu, outstanding: maxBatchSize, defaultInstances: ModelRepository.defaultInstances(), results })

/** Prints the sweep's table. */
const reportSweep = (result: Sweep | { readonly error: string }, onGpu: boolean) => {
  section(`instances of the ${onGpu ? "webgpu model sharing this GPU" : "emulated GPU model sharing one emulated device"}, one process each, ${maxBatchSize} outstanding (default here: ${ModelRepository.defaultInstances()})`)
  if ("error" in result) return console.log(`the sweep failed: ${result.error}`)
  console.log(table(result.map((r) => ({ instances: r.instances, "req/s": fmt(r.reqPerSec), "p50 ms": fmt(r.p50), "p99 ms": fmt(r.p99), "rows/run": fmt(r.rowsPerRun), failed: r.failed }))))
}

type Emulated = ReadonlyArray<{ sizing: string; outstanding: number; reqPerSec: number; p50: number; p99: number; rowsPerRun: number; failed: number }>

/**
 * The engine in front of the emulated H200: the Slice model as a GPU model (it reports "webgpu", so
 * the pool applies `gpuBatching`) in 2 processes sharing one emulated device, learned sizing (the
 * default) against fixed, alternating.
 */
const emulate = async (): Promise<Emulated> => {
  const device = EmulatedGpu.open()
  const root = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-onnx-emulated-gpu-"))
  const base = { executionProviders: ["cpu"], isolation: "process", instances: 2 }
  addModel(root, "emulated", sliceOnnx(inputs, Math.min(inputs, outputs)), base)
  addModel(root, "emulated_fixed", sliceOnnx(inputs, Math.min(inputs, outputs)), { ...base, batching: { sizing: "fixed" } })
  const emulated = await startEngine(engineLayer(
    OnnxModelPool.layer({ repository: root, transports: { process: device.transport } }),
    { maxConcurrentRequests: 4, maxQueuedRequests: 4096 }
  ))
  const out: Array<Emulated[number]> = []
  for (const model of ["emulated", "emulated_fixed"]) await oneRowLoad(emulated, model)(64, warmupMs)
  for (const k of outstandings) {
    const results = await alternate(rounds, [
      { name: "learned (default)", run: () => oneRowLoad(emulated, "emulated")(k) },
      { name: "fixed", run: () => oneRowLoad(emulated, "emulated_fixed")(k) }
    ], (_r, name, b) => console.error(`  emulated ${name} k=${k}: ${b.reqPerSec.toFixed(0)}/s`), `emulated k=${k}`)
    for (const [sizing, list] of Object.entries(results)) out.push({ sizing, outstanding: k, ...summarize(list) })
  }
  await emulated.dispose()
  device.remove()
  Fs.rmSync(root, { recursive: true, force: true })
  return out
}

/** Prints the emulated H200's table and what the goals would read there. */
const reportEmulated = (emulated: Emulated) => {
  const rawRows = EmulatedGpu.rowsPerSec(maxBatchSize)
  const perRequest = 1000 / EmulatedGpu.costMs(1)
  const at = (k: number) => emulated.find((e) => e.sizing === "learned (default)" && e.outstanding === k)?.reqPerSec ?? NaN
  section(`emulated H200 (a run costs ${EmulatedGpu.fixedMs} ms + ${EmulatedGpu.perRowMs} ms a row on one device shared by 2 processes; raw 256-row runs ${fmt(rawRows)} rows/s, one row a run ${fmt(perRequest)} req/s)`)
  console.log(table(emulated.map((e) => ({
    sizing: e.sizing,
    outstanding: e.outstanding,
    "req/s": fmt(e.reqPerSec),
    "p50 ms": fmt(e.p50),
    "p99 ms": fmt(e.p99),
    "rows/run": fmt(e.rowsPerRun),
    failed: e.failed
  }))))
  console.log(
    `as the goals would read on such a GPU (emulated, not measured on one): engine at 256 / raw 256-row runs ${(at(256) / rawRows * 100).toFixed(0)}% (goal ≥ 50%), ` +
      `engine at 64 / one row a run ${(at(64) / perRequest).toFixed(1)}× (goal ≥ 10×)`
  )
}

// `--emulated-only`: the emulated H200 alone (no MLP, no ceiling), for comparing the request path across commits.
if (args.options["emulated-only"] !== undefined) {
  const emulated = await emulate()
  reportEmulated(emulated)
  const instances = sweep.length === 0 ? undefined : await instancesSweep(false)
  if (instances !== undefined) reportSweep(instances, false)
  const file = writeResults("gpu", { emulated: { fixedMs: EmulatedGpu.fixedMs, perRowMs: EmulatedGpu.perRowMs, instances: 2, results: emulated }, instancesSweep: instances === undefined ? undefined : sweepRecord(instances, false) })
  console.log(`\nresults: ${Path.relative(process.cwd(), file)}`)
  repo.remove()
  process.exit(0)
}

// Main-thread sessions: per-request and raw batched baselines, and the reference outputs.
const sessions: Partial<Record<Provider, ort.InferenceSession>> = {}
for (const p of providers) {
  sessions[p] = await ort.InferenceSession.create(repo.modelPath, { executionProviders: [p], intraOpNumThreads: cores, graphOptimizationLevel: "all", logSeverityLevel: 3 })
}
const reference = repo.input(8, 99)
const runRaw = async (p: Provider, data: Float32Array, rows: number): Promise<Float32Array> =>
  (await sessions[p]!.run({ input: new ort.Tensor("float32", data, [rows, inputs]) }))["logits"]!.data as Float32Array
const cpuReference = await runRaw("cpu", reference, 8)

const engine = await startEngine(engineLayer(OnnxModelPool.layer({ repository: repo.root }), { maxConcurrentRequests: 4, maxQueuedRequests: 4096 }))
const deviceUsed: Record<string, string> = {}
const diffs: Record<string, number> = {}
for (const p of providers) {
  diffs[`session.run ${p}`] = maxAbsDiff(await runRaw(p, reference, 8), cpuReference)
  const out = await engine.runtime.runPromise(engine.engine.infer(InferenceRequest.make(modelOf(p), { input: Tensor.float32(reference, [8, inputs]) })))
  deviceUsed[modelOf(p)] = out.deviceUsed
  diffs[`engine ${p}`] = maxAbsDiff(out.outputs["logits"]!.data as Float32Array, cpuReference)
}
console.log(`engine models: ${Object.entries(deviceUsed).map(([m, d]) => `${m} on ${d}`).join(", ")}; outputs [8, ${outputs}]`)

const ceiling = oneRowLoad(engine, ceilingModel)
const perRequest = (p: Provider) => (k: number): Promise<LoadResult> =>
  closedLoopAsync(k, blockMs, () => ({ run: () => sessions[p]!.run({ input: new ort.Tensor("float32", row, [1, inputs]) }) }))
const viaEngine = (p: Provider, suffix = "") => oneRowLoad(engine, `${modelOf(p)}${suffix}`)
const batch = repo.input(maxBatchSize, 3)
const rawBatched = (p: Provider) => async (): Promise<LoadResult> => {
  const r = await closedLoopAsync(1, blockMs, () => ({ run: () => runRaw(p, batch, maxBatchSize) }))
  return { ...r, reqPerSec: r.reqPerSec * maxBatchSize, meanBatch: maxBatchSize }
}

const ceilingContender = `engine ceiling: Slice model, GPU defaults (${ceilingConfig.instances} process${ceilingConfig.instances === 1 ? "" : "es"})`
interface Block {
  readonly provider: Provider
  readonly contender: string
  readonly outstanding: number
  readonly result: LoadResult
}
const blocks: Array<Block> = []
// The engine contenders' warm-up, before any level is measured (not counted).
for (const p of providers) for (const suffix of ["", other[p].suffix]) await viaEngine(p, suffix)(64, warmupMs)
await ceiling(64, warmupMs)

/** Each contender's blocks at each level, as one row keyed `provider|contender|outstanding`. */
const summarizeBlocks = (all: ReadonlyArray<Block>) => {
  const byKey = new Map<string, Array<Block>>()
  for (const b of all) {
    const key = `${b.provider}|${b.contender}|${b.outstanding}`
    byKey.set(key, [...(byKey.get(key) ?? []), b])
  }
  return new Map([...byKey].map(([key, same]) => {
    const [{ provider, contender, outstanding }] = same as [Block]
    return [key, { provider, contender, outstanding, ...summarize(same.map((x) => x.result)) }] as const
  }))
}
for (const k of outstandings) {
  const contenders: Array<Contender<Block>> = []
  for (const p of providers) {
    contenders.push({ name: `${p} session.run per request`, run: async () => ({ provider: p, contender: "session.run per request", outstanding: k, result: await perRequest(p)(k) }) })
    contenders.push({ name: `${p} engine`, run: async () => ({ provider: p, contender: "engine, batching", outstanding: k, result: await viaEngine(p)(k) }) })
    contenders.push({ name: `${p} ${other[p].contender}`, run: async () => ({ provider: p, contender: other[p].contender, outstanding: k, result: await viaEngine(p, other[p].suffix)(k) }) })
    if (k === maxBatchSize) {
      contenders.push({ name: `${p} raw batched`, run: async () => ({ provider: p, contender: rawBatchedContender(maxBatchSize), outstanding: 1, result: await rawBatched(p)() }) })
    }
  }
  if (k > 1) {
    contenders.push({ name: "request-path ceiling", run: async () => ({ provider: "cpu", contender: ceilingContender, outstanding: k, result: await ceiling(k) }) })
  }
  const results = await alternate(rounds, contenders, (_r, name, b) => console.error(`  ${name} k=${k}: ${b.result.reqPerSec.toFixed(0)}/s`), `k=${k}`)
  for (const list of Object.values(results)) blocks.push(...list)
  // What is measured so far, in case a native crash ends this process before the end (the final write replaces it).
  writeResults("gpu", { partial: true, sizes, cores, blockMs, rounds, webgpu: probe, deviceUsed, maxAbsDiff: diffs, results: [...summarizeBlocks(blocks).values()] })
}

const summary = summarizeBlocks(blocks)
const rows = [...summary.values()]
section(`gpu: MLP ${sizes.join("-")}, one row a request (medians of ${rounds} round(s) × ${blockMs} ms)`)
console.log(benchTable(rows))
console.log(`\nmax abs diff vs the CPU session on 8 rows: ${Object.entries(diffs).map(([k, v]) => `${k} ${v.toExponential(1)}`).join(", ")}`)

const rate = (p: Provider, contender: string, k: number) => summary.get(`${p}|${contender}|${k}`)?.reqPerSec ?? NaN
const learnedVsFixed = providers.flatMap((p) =>
  outstandings.map((k) => {
    const [alt, byDefault] = [summary.get(`${p}|${other[p].contender}|${k}`), summary.get(`${p}|engine, batching|${k}`)]
    const [learned, fixed] = p === "webgpu" ? [byDefault, alt] : [alt, byDefault]
    return { provider: p, outstanding: k, "req/s": (learned?.reqPerSec ?? NaN) / (fixed?.reqPerSec ?? NaN), "p50": (learned?.p50 ?? NaN) / (fixed?.p50 ?? NaN) }
  })
)
section("learned against fixed sizing, same engine (webgpu: both within 2 ms, learned the default; cpu: learned within 2 ms, fixed with no delay, the default)")
console.log(table(learnedVsFixed.map((r) => ({ provider: r.provider, outstanding: r.outstanding, "req/s ratio": `${r["req/s"].toFixed(2)}×`, "p50 ratio": `${r.p50.toFixed(2)}×` }))))
/** The raw 256-row WebGPU rate on the H200 host of `/work/shared/gpu/README.md` (256 rows in 2.448 ms), for a machine without a GPU. */
const h200RawRowsPerSec = 256 / 2.448e-3
const rawWebGpu = probe.available ? rate("webgpu", rawBatchedContender(maxBatchSize), 1) : h200RawRowsPerSec
const ceiling256 = rate("cpu", ceilingContender, 256)
const ceilingShare = ceiling256 / (0.5 * rawWebGpu)
section("the request path's ceiling (the engine with the device taken out)")
console.log(
  `${fmt(ceiling256)} req/s at 256 outstanding, ${fmt(rate("cpu", ceilingContender, 64))} at 64: ${ceilingShare.toFixed(2)}× the ${fmt(0.5 * rawWebGpu)} req/s that ` +
    `50% of the raw 256-row WebGPU rate asks for (${probe.available ? "measured here" : "the H200's 256 rows in 2.448 ms; no GPU here"})`
)
const goals: Array<Goal> = probe.available ? gpuGoals(rows, diffs, cores, maxBatchSize) : []
if (probe.available) {
  section("goals")
  console.log(goalsTable(goals))
} else {
  console.log("\ngoals: none measured (they compare WebGPU with the CPU; no adapter here)")
}
// The levels and the goals, before the emulation and the sweep (which a time limit may stop): the final write replaces it.
writeResults("gpu", { partial: true, sizes, cores, blockMs, rounds, warmupMs, webgpu: probe, deviceUsed, maxAbsDiff: diffs, results: rows, learnedVsFixed, goals })

// The emulated device runs on a quiet machine: the engines and sessions above are closed first.
await engine.dispose()
for (const s of Object.values(sessions)) await s.release()
const emulated = probe.available && args.options["emulate"] === undefined ? undefined : await emulate()
if (emulated !== undefined) reportEmulated(emulated)
const instances = sweep.length === 0 ? undefined : await instancesSweep(probe.available)
if (instances !== undefined) reportSweep(instances, probe.available)

const file = writeResults("gpu", {
  sizes,
  cores,
  blockMs,
  rounds,
  warmupMs,
  webgpu: probe,
  deviceUsed,
  maxAbsDiff: diffs,
  results: rows,
  learnedVsFixed,
  emulated: emulated === undefined ? undefined : { fixedMs: EmulatedGpu.fixedMs, perRowMs: EmulatedGpu.perRowMs, instances: 2, results: emulated },
  instancesSweep: instances === undefined ? undefined : sweepRecord(instances, probe.available),
  ceiling: { model: ceilingModel, config: ceilingConfig, reqPerSecAt256: ceiling256, rawWebGpuRowsPerSec: rawWebGpu, rawMeasuredHere: probe.available, shareOfHalfRaw: ceilingShare },
  goals
})
console.log(`\nresults: ${Path.relative(process.cwd(), file)}`)
repo.remove()
