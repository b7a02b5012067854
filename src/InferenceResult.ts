/**
 * The settled outcome of a request, as the never-failing shape of `infer` returns it.
 *
 * @module InferenceResult
 */
import { Data } from "effect"
import type * as InferenceError from "./InferenceError.ts"
import type * as Tensor from "./Tensor.ts"

export type InferenceResult = Data.TaggedEnum<{
  /**
   * The model ran; `latencyMs` is end to end (queue wait plus run); `modelVersion` is the version
   * that ran it: the one the request named, or the highest ready one when it was admitted.
   */
  Success: { readonly requestId: string; readonly outputs: Tensor.TensorMap; readonly latencyMs: number; readonly deviceUsed: string; readonly modelVersion: string }
  /** The caller cancelled it; it has no latency. */
  Cancelled: { readonly requestId: string; readonly reason: string }
  /** Its deadline passed; `elapsedMs` is from submission to the deadline firing. */
  TimedOut: { readonly requestId: string; readonly elapsedMs: number }
  /** Anything else: rejected, invalid, run failed. */
  Failed: { readonly requestId: string; readonly error: InferenceError.InferenceError; readonly elapsedMs: number }
}>

export const { Cancelled, Failed, Success, TimedOut, $is: is, $match: match } = Data.taggedEnum<InferenceResult>()

export type Success = Extract<InferenceResult, { readonly _tag: "Success" }>

export const isSuccess = (result: InferenceResult): result is Success => result._tag === "Success"

/** End-to-end latency for Success, elapsed time for TimedOut and Failed, undefined for Cancelled. */
export const latencyMs = (result: InferenceResult): number | undefined => {
  switch (result._tag) {
    case "Success":
      return result.latencyMs
    case "TimedOut":
    case "Failed":
      return result.elapsedMs
    case "Cancelled":
      return undefined
  }
}

/**
 * The result of a request that failed with `error` after `elapsedMs`, as `inferResult` answers
 * it: Cancelled for a cancellation, TimedOut for a deadline or queue timeout, Failed otherwise.
 */
export const ofError = (requestId: string, error: InferenceError.InferenceError, elapsedMs: number): InferenceResult => {
  const reason = error.reason
  switch (reason._tag) {
    case "Cancelled":
      return Cancelled({ requestId, reason: reason.reason })
    case "DeadlineExceeded":
    case "QueueTimeout":
      return TimedOut({ requestId, elapsedMs })
    default:
      return Failed({ requestId, error, elapsedMs })
  }
}
