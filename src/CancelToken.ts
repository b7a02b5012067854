/**
 * An explicit cancel handle for callers who hold no fiber to interrupt: an Effect-based token,
 * or a standard AbortSignal. Cancelling is idempotent; the first reason wins.
 *
 * @module CancelToken
 */
import { Deferred, Effect } from "effect"

export interface CancelToken {
  /** Cancels every request that was given this token. */
  readonly cancel: (reason?: string) => Effect.Effect<void>
  /** The same, callable from outside Effect. */
  readonly cancelUnsafe: (reason?: string) => void
  readonly isCancelled: () => boolean
  /** Succeeds with the reason once cancelled; waits forever otherwise. */
  readonly await: Effect.Effect<string>
}

/** Either kind of cancel handle that the engine's result-shaped API accepts. */
export type Cancellation = CancelToken | AbortSignal

export const makeUnsafe = (): CancelToken => {
  const deferred = Deferred.makeUnsafe<string>()
  const cancelUnsafe = (reason = "cancelled by caller") => {
    Deferred.doneUnsafe(deferred, Effect.succeed(reason))
  }
  return {
    cancel: (reason) => Effect.sync(() => cancelUnsafe(reason)),
    cancelUnsafe,
    isCancelled: () => Deferred.isDoneUnsafe(deferred),
    await: Deferred.await(deferred)
  }
}

export const make: Effect.Effect<CancelToken> = Effect.sync(makeUnsafe)

/**
 * An AbortSignal's reason as a Cancelled's text: an Error's message, else the reason as a string,
 * "aborted" without one. Never throws: a reason with no string form (`Object.create(null)`, a
 * `toString` that throws) reads "aborted (the reason has no text)".
 */
export const abortReasonText = (reason: unknown): string => {
  try {
    if (reason instanceof Error) return String(reason.message)
    return reason === undefined ? "aborted" : String(reason)
  } catch {
    return "aborted (the reason has no text)"
  }
}

const abortReason = (signal: AbortSignal): string => abortReasonText(signal.reason)

/** True when the handle has already fired. */
export const isCancelled = (cancellation: Cancellation): boolean =>
  cancellation instanceof AbortSignal ? cancellation.aborted : cancellation.isCancelled()

/** The reason, once the handle fires (immediately if it already has). */
export const await_ = (cancellation: Cancellation): Effect.Effect<string> =>
  cancellation instanceof AbortSignal
    ? Effect.callback<string>((resume) => {
      if (cancellation.aborted) {
        resume(Effect.succeed(abortReason(cancellation)))
        return
      }
      const onAbort = () => resume(Effect.succeed(abortReason(cancellation)))
      cancellation.addEventListener("abort", onAbort, { once: true })
      return Effect.sync(() => cancellation.removeEventListener("abort", onAbort))
    })
    : cancellation.await

export { await_ as await }
