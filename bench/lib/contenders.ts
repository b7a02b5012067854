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
