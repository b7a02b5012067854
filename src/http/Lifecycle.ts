/**
 * The server's lifecycle state: serving, then shutting down. Routes read it (readiness turns 503,
 * new inferences are refused with ShuttingDown, every response after the signal carries
 * `Connection: close`) and count themselves in and out, so that a graceful shutdown can wait for
 * the HTTP requests still being answered, not only for the engine's work.
 *
 * @module Lifecycle
 */
import { Context, Effect, Latch, Layer } from "effect"

export interface Service {
  /** True once shutdown has begun. Never turns back. */
  readonly isShuttingDown: () => boolean
  /** Starts the shutdown (idempotent). */
  readonly beginShutdown: Effect.Effect<void>
  /** Runs `effect` as one in-flight HTTP request. */
  readonly track: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** HTTP requests being answered now. */
  readonly inFlight: () => number
  /** Waits until no HTTP request is being answered. */
  readonly awaitIdle: Effect.Effect<void>
}

export const make: Effect.Effect<Service> = Effect.sync(() => {
  let shuttingDown = false
  let inFlight = 0
  const idle = Latch.makeUnsafe(true)
  const leave = Effect.sync(() => {
    inFlight--
    if (inFlight === 0) idle.openUnsafe()
  })
  return {
    isShuttingDown: () => shuttingDown,
    beginShutdown: Effect.sync(() => {
      shuttingDown = true
    }),
    track: (effect) =>
      Effect.suspend(() => {
        inFlight++
        idle.closeUnsafe()
        return Effect.ensuring(effect, leave)
      }),
    inFlight: () => inFlight,
    awaitIdle: idle.await
  }
})

export class Lifecycle extends Context.Service<Lifecycle, Service>()("effect-onnx/http/Lifecycle") {
  static readonly layer: Layer.Layer<Lifecycle> = Layer.effect(Lifecycle, make)
}
