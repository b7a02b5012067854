/**
 * Closed-loop contenders shared by throughput, limit and priority: in-thread baselines
 * (per-request `session.run`, p-queue + `session.run`) and engines.
 */
import PQueue from "p-queue"
import * as ort from "onnxruntime-node"
import * as InferenceRequest from "../../src/InferenceRequest.ts"
import type * as Priority from "../../src/Priority.ts"
import * as Tensor from "../../src/Tensor.ts"
import { mlpData } from "./common.ts"
import { closedLoopAsync, closedLoopEffect, type LoadResult } from "./load.ts"
import type { EngineHandle, RunCounts } from "./pools.ts"

export const mlpRow = mlpData(1, 11)
export const mlpInputs = { input: Tensor.float32(mlpRow, [1, 784]) }

/** Closed loop of per-request `session.run` calls in the main thread. */
export const perRequest = (session: ort.InferenceSession) => (outstanding: number, durationMs: number): Promise<LoadResult> =>
  closedLoopAsync(outstanding, durationMs, () => ({
    run: () => session.run({ input: new ort.Tensor("float32", mlpRow, [1, 784]) })
  }))

/** Closed loop through a p-queue of `concurrency` in front of `session.run` in the main thread. */
export const pQueue = (session: ort.InferenceSession, concurrency: number) => {
  const queue = new PQueue({ concurrency })
  return (outstanding: number, durationMs: number): Promise<LoadResult> =>
    closedLoopAsync(outstanding, durationMs, () => ({
      run: () => queue.add(() => session.run({ input: new ort.Tensor("float32", mlpRow, [1, 784]) }))
    }))
}

/** Closed loop of MLP batch-1 requests through `engine.infer`, as fibers in the engine's runtime. */
export const viaEngine = (
  h: EngineHandle,
  priorityOf?: (seq: number) => Priority.Priority
) =>
async (outstanding: number, durationMs: number): Promise<LoadResult> => {
  const before = { ...h.counts }
  const r = await h.runtime.runPromise(closedLoopEffect(outstanding, durationMs, (seq) => {
    const priority = priorityOf?.(seq)
    return {
      cls: priority,
      run: h.engine.infer(InferenceRequest.make("mlp", mlpInputs, priority === undefined ? {} : { priority }))
    }
  }))
  return withRunCounts(r, before, h.counts)
}

/** Adds the engine's mean batch size and run time over a block. */
export const withRunCounts = (r: LoadResult, before: RunCounts, after: RunCounts): LoadResult => {
  const runs = after.runs - before.runs
  return { ...r, meanBatch: (after.rows - before.rows) / runs, meanRunMs: (after.runMs - before.runMs) / runs }
}

/**
 * Closed loop through a hand-written micro-batcher in front of `session.run` in the main thread,
 * the same fifty lines as `bench/http-baseline.ts --mode=microbatch`: rows wait until 64 are
 * pending or 2 ms have passed, then run as one batch (one at a time) and are split back. What a
 * Node user writes when they want batching without this project; the fair baseline for the
 * engine with batching on (per-request runs cannot batch at all).
 */
export const microBatcher = (session: ort.InferenceSession, maxRows = 64, maxWaitMs = 2) => {
  const width = mlpRow.length
  const pending: Array<{ row: Float32Array; resolve: (o: Float32Array) => void; reject: (e: unknown) => void }> = []
  let timer: ReturnType<typeof setTimeout> | undefined
  let running = false
  const flush = (): void => {
    if (timer !== undefined) clearTimeout(timer)
    timer = undefined
    if (running || pending.length === 0) return
    const batch = pending.splice(0, maxRows)
    const input = new Float32Array(batch.length * width)
    batch.forEach((b, i) => input.set(b.row, i * width))
    running = true
    session.run({ input: new ort.Tensor("float32", input, [batch.length, width]) }).then((out) => {
      const y = out["logits"]!.data as Float32Array
      const cols = y.length / batch.length
      batch.forEach((b, i) => b.resolve(y.slice(i * cols, (i + 1) * cols)))
    }, (e: unknown) => batch.forEach((b) => b.reject(e))).finally(() => {
      running = false
      if (pending.length >= maxRows) flush()
      else if (pending.length > 0 && timer === undefined) timer = setTimeout(flush, maxWaitMs)
    })
  }
  const run = (row: Float32Array): Promise<Float32Array> =>
    new Promise((resolve, reject) => {
      pending.push({ row, resolve, reject })
      if (pending.length >= maxRows) flush()
      else if (timer === undefined) timer = setTimeout(flush, maxWaitMs)
    })
  return (outstanding: number, durationMs: number): Promise<LoadResult> =>
    closedLoopAsync(outstanding, durationMs, () => ({ run: () => run(mlpRow) }))
}
