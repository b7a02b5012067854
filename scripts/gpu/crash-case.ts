/**
 * One case of the WebGPU crash hunt, alone in this process:
 *
 *   node scripts/gpu/crash-case.ts CASE MODEL.onnx [RUNS]      (PROVIDER=cpu to try the harness without a GPU)
 *
 * Raw onnxruntime-node cases (RUNS runs per session, rows per run fixed at 64 or drawn from a
 * seeded sequence in 1..256): where the sessions live (main thread, worker threads), how many
 * there are, whether their runs overlap in time. Engine cases (`engine-*`): the engine with a
 * GPU model in threads or in processes, next to a CPU model, at 64 or 256 outstanding.
 * Prints one JSON line `{"case", "ok": true, ...}` at the end; a native crash prints nothing and
 * ends the process by a signal, which `narrow.ts` records.
 *
 * @module crash-case
 */
import * as Os from "node:os"
import * as Path from "node:path"
import { pathToFileURL } from "node:url"
import { isMainThread, parentPort, threadId, Worker, workerData } from "node:worker_threads"
import * as ort from "onnxruntime-node"
import * as DeviceLock from "../../src/onnx/DeviceLock.ts"

const provider = process.env["PROVIDER"] ?? "webgpu"
/** How long each engine case runs (ENGINE_SECONDS, default 10). */
const engineSeconds = Number(process.env["ENGINE_SECONDS"] ?? 10)

interface Plan {
  readonly modelPath: string
  readonly runs: number
  /** "fixed": 64 rows every run; "varying": 1..256 from a seeded sequence. */
  readonly rows: "fixed" | "varying"
  readonly seed: number
  readonly provider: string
}

const rowsAt = (plan: Plan, i: number): number => {
  if (plan.rows === "fixed") return 64
  let a = (plan.seed * 7919 + i * 104729) >>> 0
  a = Math.imul(a ^ (a >>> 15), 2246822519) >>> 0
  return 1 + (a % 256)
}

const open = (plan: Plan) =>
  ort.InferenceSession.create(plan.modelPath, { executionProviders: [plan.provider], intraOpNumThreads: 1, logSeverityLevel: 3 })

/** `runs` runs on `session`, each holding `lock` if given (the engine's `DeviceLock`, shared by the threads of a case). */
const loop = async (plan: Plan, session: ort.InferenceSession, lock?: DeviceLock.DeviceLock) => {
  const width = session.inputMetadata[0]!.isTensor ? Number((session.inputMetadata[0] as { shape: ReadonlyArray<unknown> }).shape[1]) : 1024
  for (let i = 0; i < plan.runs; i++) {
    const rows = rowsAt(plan, i)
    const run = () => session.run({ input: new ort.Tensor("float32", new Float32Array(rows * width).fill(0.01 * (i % 7)), [rows, width]) })
    await (lock === undefined ? run() : DeviceLock.withLock(lock, threadId, run))
  }
}

// ---------------------------------------------------------------------------
// Worker side: open a session, then run on command ("go") or freely ("free").
// ---------------------------------------------------------------------------
if (!isMainThread) {
  const { plan, mode, lock } = workerData as { plan: Plan; mode: "free" | "stepped" | "openClose"; lock?: DeviceLock.DeviceLock }
  const session = lock === undefined ? await open(plan) : await DeviceLock.withLock(lock, threadId, () => open(plan))
  if (mode === "free") {
    await loop(plan, session, lock)
    await (lock === undefined ? session.release() : DeviceLock.withLock(lock, threadId, () => session.release()))
    parentPort!.postMessage({ done: true })
  } else if (mode === "openClose") {
    await loop(plan, session)
    await session.release()
    parentPort!.postMessage({ done: true })
  } else {
    // stepped: one run per "go" message, answering "ran"
    let i = 0
    parentPort!.on("message", async (m: string) => {
      if (m === "close") {
        await session.release()
        parentPort!.postMessage({ done: true })
        parentPort!.close()
        return
      }
      await loop({ ...plan, runs: 1, seed: plan.seed + i++ }, session)
      parentPort!.postMessage("ran")
    })
    parentPort!.postMessage("ready")
  }
}

const inWorker = (plan: Plan, mode: "free" | "stepped" | "openClose", lock?: DeviceLock.DeviceLock) =>
  new Worker(new URL(import.meta.url), { workerData: { plan, mode, lock } })

const finished = (w: Worker) =>
  new Promise<void>((resolve, reject) => {
    w.on("message", (m) => {
      if (typeof m === "object" && m !== null && (m as { done?: boolean }).done) resolve()
    })
    w.on("error", reject)
    w.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`worker exit ${code}`))))
  })

const stepped = async (plan: Plan) => {
  const w = inWorker(plan, "stepped")
  const replies: Array<() => void> = []
  w.on("message", (m) => {
    if (m === "ready" || m === "ran") replies.shift()?.()
  })
  const next = () => new Promise<void>((r) => replies.push(r))
  await next() // ready
  return {
    run: () => {
      const p = next()
      w.postMessage("go")
      return p
    },
    close: () => {
      const p = finished(w)
      w.postMessage("close")
      return p
    }
  }
}

// ---------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------
const engineCase = async (modelPath: string, gpuConfig: Record<string, unknown>, outstanding: number, seconds: number, gpuModels = 1) => {
  const Fs = await import("node:fs")
  const { InferenceClient, InferenceRequest, Tensor } = await import("../../src/index.ts")
  const root = Fs.mkdtempSync(Path.join(Os.tmpdir(), "crash-case-"))
  const batching = { enabled: true, maxBatchSize: 256 }
  const models: Record<string, Record<string, unknown>> = { cpu: { executionProviders: ["cpu"], batching } }
  for (let g = 0; g < gpuModels; g++) models[`gpu${g}`] = { executionProviders: [provider], batching, ...gpuConfig }
  for (const [name, config] of Object.entries(models)) {
    Fs.mkdirSync(Path.join(root, name))
    Fs.copyFileSync(modelPath, Path.join(root, name, "model.onnx"))
    Fs.writeFileSync(Path.join(root, name, "config.json"), JSON.stringify(config))
  }
  const client = await InferenceClient.make({ repository: root, config: { maxQueuedRequests: 4096 }, logLevel: "Warn" })
  const names = Object.keys(models).filter((n) => n !== "cpu")
  const width = (await client.metadata(names[0]!)).inputs[0]!.dims[1]!
  const end = performance.now() + seconds * 1000
  let done = 0
  let failed = 0
  const devices = new Set<string>()
  const client1 = async (k: number) => {
    while (performance.now() < end) {
      const rows = 1 + ((k + done) % 4)
      try {
        const r = await client.infer(InferenceRequest.make(names[k % names.length]!, { input: Tensor.float32(new Float32Array(rows * width).fill(0.01), [rows, width]) }))
        devices.add(r.deviceUsed)
        done++
      } catch {
        failed++
      }
    }
  }
  await Promise.all(Array.from({ length: outstanding }, (_, k) => client1(k)))
  await client.close()
  Fs.rmSync(root, { recursive: true, force: true })
  if (done === 0) throw new Error(`no request succeeded (${failed} failed)`)
  return { requests: done, failed, reqPerSec: Math.round(done / seconds), devices: [...devices] }
}

export const cases: Readonly<Record<string, (modelPath: string, runs: number) => Promise<Record<string, unknown>>>> = {
  "main-fixed": async (modelPath, runs) => {
    const plan: Plan = { modelPath, runs, rows: "fixed", seed: 1, provider }
    const s = await open(plan)
    await loop(plan, s)
    return { sessions: 1 }
  },
  "main-varying": async (modelPath, runs) => {
    const plan: Plan = { modelPath, runs, rows: "varying", seed: 1, provider }
    await loop(plan, await open(plan))
    return { sessions: 1 }
  },
  "worker-varying": async (modelPath, runs) => {
    await finished(inWorker({ modelPath, runs, rows: "varying", seed: 1, provider }, "free"))
    return { workers: 1 }
  },
  "worker-respawn": async (modelPath, runs) => {
    // a thread-isolated instance replaced: one worker's session released, then a new worker's session
    for (let k = 0; k < 3; k++) await finished(inWorker({ modelPath, runs: Math.ceil(runs / 3), rows: "varying", seed: k, provider }, "openClose"))
    return { workers: "3, one after another" }
  },
  "workers2-fixed": async (modelPath, runs) => {
    const plan: Plan = { modelPath, runs, rows: "fixed", seed: 1, provider }
    await Promise.all([finished(inWorker(plan, "free")), finished(inWorker({ ...plan, seed: 2 }, "free"))])
    return { workers: 2, overlap: true }
  },
  "workers2-varying": async (modelPath, runs) => {
    const plan: Plan = { modelPath, runs, rows: "varying", seed: 1, provider }
    await Promise.all([finished(inWorker(plan, "free")), finished(inWorker({ ...plan, seed: 2 }, "free"))])
    return { workers: 2, overlap: true }
  },
  "workers2-locked": async (modelPath, runs) => {
    // the engine's fix for threads: two sessions in two threads, free-running, each create, run and release holding the process's DeviceLock
    const plan: Plan = { modelPath, runs, rows: "varying", seed: 1, provider }
    const lock = DeviceLock.make()
    await Promise.all([finished(inWorker(plan, "free", lock)), finished(inWorker({ ...plan, seed: 2 }, "free", lock))])
    return { workers: 2, overlap: "DeviceLock" }
  },
  "workers2-alternating": async (modelPath, runs) => {
    // two sessions in two threads, never running at the same time: is it overlap, or two contexts at all?
    const plan: Plan = { modelPath, runs: 1, rows: "varying", seed: 1, provider }
    const [a, b] = [await stepped(plan), await stepped({ ...plan, seed: 2 })]
    for (let i = 0; i < runs; i++) await (i % 2 === 0 ? a : b).run()
    await a.close()
    await b.close()
    return { workers: 2, overlap: false }
  },
  "main+worker": async (modelPath, runs) => {
    const plan: Plan = { modelPath, runs, rows: "varying", seed: 1, provider }
    const s = await open(plan)
    await Promise.all([loop(plan, s), finished(inWorker({ ...plan, seed: 2 }, "free"))])
    return { sessions: "main thread + 1 worker", overlap: true }
  },
  "sessions2-main-alternating": async (modelPath, runs) => {
    const plan: Plan = { modelPath, runs: 1, rows: "varying", seed: 1, provider }
    const [a, b] = [await open(plan), await open(plan)]
    for (let i = 0; i < runs; i++) await loop({ ...plan, seed: i }, i % 2 === 0 ? a : b)
    return { sessions: "2 in the main thread", overlap: false }
  },
  "sessions2-main-together": async (modelPath, runs) => {
    const plan: Plan = { modelPath, runs, rows: "varying", seed: 1, provider }
    const [a, b] = [await open(plan), await open(plan)]
    await Promise.all([loop(plan, a), loop({ ...plan, seed: 2 }, b)])
    return { sessions: "2 in the main thread", overlap: "Promise.all" }
  },
  "gpuworker+cpuworker": async (modelPath, runs) => {
    // the engine's configuration that crashed: one GPU session in a worker next to a CPU session in another
    const plan: Plan = { modelPath, runs, rows: "varying", seed: 1, provider }
    // the CPU worker: a tenth of the runs at 64 rows (one intra-op thread is slow on the 25M-parameter MLP)
    await Promise.all([finished(inWorker(plan, "free")), finished(inWorker({ ...plan, provider: "cpu", rows: "fixed", runs: Math.ceil(runs / 10), seed: 2 }, "free"))])
    return { workers: "1 gpu + 1 cpu", overlap: true }
  },
  "gpumain+cpuworker": async (modelPath, runs) => {
    // bench/gpu.ts's layout: a GPU session in the main thread while a CPU session runs in a worker
    const plan: Plan = { modelPath, runs, rows: "varying", seed: 1, provider }
    const s = await open(plan)
    await Promise.all([loop(plan, s), finished(inWorker({ ...plan, provider: "cpu", rows: "fixed", runs: Math.ceil(runs / 10), seed: 2 }, "free"))])
    return { sessions: "gpu in the main thread + 1 cpu worker", overlap: true }
  },
  "engine-thread-1x64": (modelPath) => engineCase(modelPath, { isolation: "thread", instances: 1 }, 64, engineSeconds),
  "engine-thread-2models": (modelPath) => engineCase(modelPath, { isolation: "thread", instances: 1 }, 64, engineSeconds, 2),
  "engine-process-256": (modelPath) => engineCase(modelPath, {}, 256, engineSeconds),
  "engine-process-2models-256": (modelPath) => engineCase(modelPath, {}, 256, engineSeconds, 2)
}

if (isMainThread && process.argv[1] !== undefined && import.meta.url === pathToFileURL(Path.resolve(process.argv[1])).href) {
  const [name, modelPath, runsText] = process.argv.slice(2)
  const run = name === undefined ? undefined : cases[name]
  if (run === undefined || modelPath === undefined) {
    console.error(`usage: node scripts/gpu/crash-case.ts CASE MODEL.onnx [RUNS]; cases: ${Object.keys(cases).join(", ")}`)
    process.exit(2)
  }
  const t0 = performance.now()
  const extra = await run(modelPath, Number(runsText ?? 300))
  console.log(JSON.stringify({ case: name, ok: true, provider, ms: Math.round(performance.now() - t0), ...extra }))
}
