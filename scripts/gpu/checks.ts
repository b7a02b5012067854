/**
 * The GPU checks, as plain async functions that throw on failure and return a one-line summary,
 * so that the same code runs under vitest (`test/gpu/Gpu.test.ts`) and, on a GPU host whose
 * pack has no test runner, as `node scripts/gpu/checks.ts` (exit 1 when a check fails).
 *
 * Each check loads a generated MLP as a CPU model and as a WebGPU model (config.json
 * `executionProviders: ["webgpu"]`, nothing else: the engine's defaults for a GPU model apply)
 * and compares their outputs within `tolerance`. Where no adapter is found the WebGPU model
 * falls back to the CPU; `expectGpu` says which device the checks demand.
 *
 * @module checks
 */
import { Effect, References } from "effect"
import { pathToFileURL } from "node:url"
import * as InferenceClient from "../../src/InferenceClient.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import * as InferenceRequest from "../../src/InferenceRequest.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import * as Tensor from "../../src/Tensor.ts"
import * as TestOps from "../../test/fixtures/TestOps.ts"
import { maxAbsDiff, parseSizes, type Repository, writeRepository } from "./model.ts"
import { probeWebGpu } from "./probe.ts"

/** GPU and CPU outputs may differ by this much (measured: 5e-6 on the 25M-parameter MLP). */
export const tolerance = 1e-4

export interface Options {
  /** Layer widths of the MLP; default 1024-1024-1024-1000 (3M parameters: quick to load and run). */
  readonly sizes?: ReadonlyArray<number> | undefined
  /** The device the WebGPU model must report: "webgpu" where an adapter was found, else "cpu". */
  readonly expectGpu: boolean
}

const defaultSizes = [1024, 1024, 1024, 1000]

const repositoryFor = (options: Options, extra: Record<string, Record<string, unknown>> = {}): Repository =>
  writeRepository(options.sizes ?? defaultSizes, {
    cpu: { executionProviders: ["cpu"], instances: 1 },
    gpu: { executionProviders: ["webgpu"] },
    ...extra
  })

const quiet = <A, E>(self: Effect.Effect<A, E>) => Effect.provideService(self, References.MinimumLogLevel, "Error")

const check = (ok: boolean, what: string): void => {
  if (!ok) throw new Error(what)
}

const logits = (outputs: Tensor.TensorMap): Float32Array => outputs["logits"]!.data as Float32Array

/**
 * Through `OnnxModelPool`: batches of 1, 3, 64 and 256 rows on the WebGPU model and on the CPU
 * model agree within `tolerance`; the WebGPU model reports its device (in its info, its metadata
 * and each run) and runs in processes.
 */
export const poolMatchesCpu = (options: Options): Promise<string> => {
  const repo = repositoryFor(options)
  return Effect.runPromise(quiet(Effect.scoped(Effect.gen(function*() {
    const pool = yield* OnnxModelPool.make({ repository: repo.root })
    const info = Object.fromEntries((yield* pool.info).map((m) => [m.name, m]))
    const gpu = info["gpu"]!
    check(gpu.state === "READY", `gpu model: ${gpu.state} ${gpu.reason ?? ""}`)
    check(gpu.deviceUsed === (options.expectGpu ? "webgpu" : "cpu"), `gpu model runs on ${gpu.deviceUsed} (fallbacks: ${JSON.stringify(gpu.fallbacks)})`)
    check(gpu.isolation === "process", `gpu model isolation ${gpu.isolation}, expected the default "process"`)
    const metadata = yield* pool.metadata("gpu")
    check(metadata.deviceUsed === gpu.deviceUsed, `its metadata says ${metadata.deviceUsed}, its info ${gpu.deviceUsed}`)
    let worst = 0
    for (const rows of [1, 3, 64, 256]) {
      const input = { input: Tensor.float32(repo.input(rows, rows), [rows, repo.sizes[0]!]) }
      const [g, c] = yield* Effect.all([pool.run("gpu", input, { requestId: `g${rows}` }), pool.run("cpu", input, { requestId: `c${rows}` })])
      check(g.deviceUsed === gpu.deviceUsed, `a run reported ${g.deviceUsed}`)
      const d = maxAbsDiff(logits(g.outputs), logits(c.outputs))
      check(d <= tolerance, `${rows} rows: max abs diff ${d} > ${tolerance}`)
      worst = Math.max(worst, d)
    }
    return `pool: gpu model on ${gpu.deviceUsed} in ${gpu.isolation}es matches cpu on 1/3/64/256 rows (max abs diff ${worst.toExponential(1)})`
  })))).finally(repo.remove)
}

/**
 * Through the engine with batching (maxBatchSize 256): 512 requests of 1-4 rows, 256 at a time,
 * on the WebGPU model; each answer matches the CPU model's answer to the same request.
 */
export const engineMatchesCpu = async (options: Options): Promise<string> => {
  const batching = { enabled: true, maxBatchSize: 256 }
  const repo = writeRepository(options.sizes ?? defaultSizes, {
    cpu: { executionProviders: ["cpu"], instances: 1, batching },
    gpu: { executionProviders: ["webgpu"], batching }
  })
  const client = await InferenceClient.make({ repository: repo.root, config: { maxQueuedRequests: 2048 }, logLevel: "Error" })
  try {
    const width = repo.sizes[0]!
    let worst = 0
    const devices = new Set<string>()
    const one = async (i: number) => {
      const rows = 1 + (i % 4)
      const input = { input: Tensor.float32(repo.input(rows, 1000 + i), [rows, width]) }
      const [g, c] = await Promise.all([client.infer(InferenceRequest.make("gpu", input)), client.infer(InferenceRequest.make("cpu", input))])
      devices.add(g.deviceUsed)
      const d = maxAbsDiff(logits(g.outputs), logits(c.outputs))
      check(d <= tolerance, `request ${i} (${rows} rows): max abs diff ${d} > ${tolerance}`)
      worst = Math.max(worst, d)
    }
    for (let wave = 0; wave < 2; wave++) await Promise.all(Array.from({ length: 256 }, (_, i) => one(wave * 256 + i)))
    check(devices.size === 1 && devices.has(options.expectGpu ? "webgpu" : "cpu"), `answers came from ${[...devices].join(", ")}`)
    return `engine: 512 batched requests on ${[...devices].join(", ")} match cpu (max abs diff ${worst.toExponential(1)})`
  } finally {
    await client.close()
    repo.remove()
  }
}

/**
 * A native crash of a GPU model's instance (SIGSEGV, sent by the instance to itself through the
 * test transport) fails only the request in flight: the server process lives, the instance is
 * replaced, and the next request runs on the same device with the same outputs.
 */
export const crashIsContained = (options: Options): Promise<string> => {
  const repo = repositoryFor(options)
  return Effect.runPromise(quiet(Effect.scoped(Effect.gen(function*() {
    const pool = yield* OnnxModelPool.make({ repository: repo.root, transports: TestOps.transports })
    const input = { input: Tensor.float32(repo.input(8, 8), [8, repo.sizes[0]!]) }
    const before = yield* pool.run("gpu", input, { requestId: "before" })
    const crashed = yield* Effect.flip(TestOps.run(pool, "gpu", { _tag: "signal", signal: "SIGSEGV" }, { requestId: "crash" }))
    check(crashed instanceof InferenceError.RunFailed, `the crashed request failed with ${String(crashed)}`)
    const cpu = yield* pool.run("cpu", input, { requestId: "cpu" })
    const after = yield* pool.run("gpu", input, { requestId: "after" })
    check(after.deviceUsed === before.deviceUsed, `after the crash the model runs on ${after.deviceUsed}, before on ${before.deviceUsed}`)
    const d = maxAbsDiff(logits(after.outputs), logits(before.outputs))
    check(d === 0, `outputs changed after the respawn by ${d}`)
    check(pool.counters.respawns >= 1, `respawns ${pool.counters.respawns}`)
    check(maxAbsDiff(logits(cpu.outputs), logits(after.outputs)) <= tolerance, "gpu and cpu disagree after the respawn")
    return `containment: SIGSEGV in a ${before.deviceUsed} instance failed one request (${(crashed as InferenceError.RunFailed).detail.slice(0, 80)}...), ` +
      `the instance was replaced (${pool.counters.respawns} respawn), the server lived`
  })))).finally(repo.remove)
}

export const all = { poolMatchesCpu, engineMatchesCpu, crashIsContained } as const

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const sizes = parseSizes(process.argv.find((a) => a.startsWith("--sizes="))?.slice(8), defaultSizes)
  const probe = await probeWebGpu()
  console.log(probe.available ? `webgpu adapter found (session created in ${probe.createMs.toFixed(0)} ms)` : `no WebGPU adapter here: ${probe.reason}`)
  let failed = 0
  for (const [name, run] of Object.entries(all)) {
    const t0 = performance.now()
    try {
      const summary = await run({ sizes, expectGpu: probe.available })
      console.log(`PASS ${name} (${((performance.now() - t0) / 1000).toFixed(1)} s): ${summary}`)
    } catch (e) {
      failed++
      console.log(`FAIL ${name}: ${e instanceof Error ? e.message : String(e)}`)
    }
  }
  process.exitCode = failed === 0 ? 0 : 1
}
