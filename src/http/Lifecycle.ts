/**
 * The server's lifecycle state: serving, then shutting down. Routes read it (readiness turns 503,
 * new inferences are refused with ShuttingDown, responses after the signal carry
 * `Connection: close` but for a moment before the listener closes; a sequence under way goes
 * on, on its connection: `InferExchange.keepsConnectionAtShutdown`) and count themselves in and out, so that a graceful shutdown can wait for
 * the HTTP requests still being answered, not only for the engine's work.
 *
 * @module Lifecycle
 */
import { Context, Effect, Latch, Layer } from "effect"

/** What readiness is decided from: the lifecycle, the policy, and every model's state. */
export interface ReadinessInput {
  readonly shuttingDown: boolean
  /** Triton's `--strict-readiness`: every model must be ready, and there must be one. */
  readonly strict: boolean
  readonly models: ReadonlyArray<{ readonly name: string; readonly version: string; readonly state: string; readonly reason?: string | undefined }>
}

export type Readiness = { readonly ready: true } | { readonly ready: false; readonly reason: string }

/** The reason a pool gives a model version that is down because nobody asked for it: never loaded under explicit model control, or unloaded. */
export const unloadedReason = "unloaded"

/**
 * Whether the server is ready (`/v2/health/ready`), and if not why. Shutting down is never
 * ready. Strict (the default, as Triton's): not ready while a model version that should be up is
 * unavailable (the reason names them; one UNAVAILABLE with reason "unloaded", never loaded under
 * explicit model control or unloaded since, does not count, as in Triton's `IsReady`, and neither
 * does one LOADING or UNLOADING under explicit model control until that ends) or while
 * the repository holds no model. Not strict: ready once listening, whatever the models.
 */
export const readiness = (input: ReadinessInput): Readiness => {
  if (input.shuttingDown) return { ready: false, reason: "the server is shutting down" }
  if (!input.strict) return { ready: true }
  if (input.models.length === 0) return { ready: false, reason: "the model repository holds no model" }
  // Being loaded or unloaded on an operator's request is not a failure: neither counts until it ends.
  const counted = input.models.filter((m) => m.state === "READY" || (m.state === "UNAVAILABLE" && m.reason !== unloadedReason))
  const unavailable = counted.filter((m) => m.state !== "READY")
  if (unavailable.length === 0) return { ready: true }
  const names = unavailable.slice(0, 5).map((m) => `${m.name}@${m.version}`).join(", ")
  const more = unavailable.length > 5 ? ` and ${unavailable.length - 5} more` : ""
  return { ready: false, reason: `${unavailable.length} of ${counted.length} model versions unavailable: ${names}${more}` }
}

export interface Service {
  /** True once shutdown has begun. Never turns back. */
  readonly isShuttingDown: () => boolean
  /**
   * Whether answers carry `Connection: close`: from the start of the shutdown (so that clients
   * and load balancers move to another server), except while the server holds connections
   * open just before it closes its listener (`holdConnections`).
   */
  readonly closesConnections: () => boolean
  /**
   * While held, answers keep their connection (a client stays on it instead of reconnecting), so
   * that no new connection is queued on the listener at the moment it closes. The shutdown holds
   * for a moment before closing the listener and releases right after.
   */
  readonly holdConnections: (hold: boolean) => Effect.Effect<void>
  /** Starts the shutdown (idempotent). */
  readonly beginShutdown: Effect.Effect<void>
  /** Runs `effect` as one in-flight HTTP request. */
  readonly track: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** `track` for a request answered outside any fiber: counts it now; the returned function (idempotent) when it is answered. */
  readonly enterUnsafe: () => () => void
  /** HTTP requests being answered now. */
  readonly inFlight: () => number
  /** Waits until no HTTP request is being answered. */
  readonly awaitIdle: Effect.Effect<void>
  /** HTTP requests being answered now that arrived before the shutdown began: the accepted work. */
  readonly acceptedInFlight: () => number
  /**
   * Waits until every request that arrived before the shutdown began is answered. Unlike
   * `awaitIdle`, it ends however many requests keep arriving (each answered 503 at once).
   */
  readonly awaitAcceptedIdle: Effect.Effect<void>
  /** Counts a request answered ShuttingDown (503, UNAVAILABLE): an inference or model control refused by the shutdown. */
  readonly noteRefusalUnsafe: (protocol: "http" | "grpc") => void
  /** Requests answered ShuttingDown so far, by protocol (a health check that says "not ready" is none). */
  readonly refused: () => { readonly http: number; readonly grpc: number }
}

export const make: Effect.Effect<Service> = Effect.sync(() => {
  let shuttingDown = false
  let holding = false
  let inFlight = 0
  let accepted = 0
  const refused = { http: 0, grpc: 0 }
  const idle = Latch.makeUnsafe(true)
  const acceptedIdle = Latch.makeUnsafe(true)
  const leaveUnsafe = () => {
    inFlight--
    if (inFlight === 0) idle.openUnsafe()
  }
  const leaveAcceptedUnsafe = () => {
    leaveUnsafe()
    accepted--
    if (accepted === 0) acceptedIdle.openUnsafe()
  }
  const leave = Effect.sync(leaveUnsafe)
  const leaveAccepted = Effect.sync(leaveAcceptedUnsafe)
  return {
    isShuttingDown: () => shuttingDown,
    closesConnections: () => shuttingDown && !holding,
    holdConnections: (hold) =>
      Effect.sync(() => {
        holding = hold
      }),
    beginShutdown: Effect.sync(() => {
      shuttingDown = true
    }),
    track: (effect) =>
      Effect.suspend(() => {
        inFlight++
        idle.closeUnsafe()
        if (shuttingDown) return Effect.ensuring(effect, leave)
        accepted++
        acceptedIdle.closeUnsafe()
        return Effect.ensuring(effect, leaveAccepted)
      }),
    enterUnsafe: () => {
      inFlight++
      idle.closeUnsafe()
      const wasAccepted = !shuttingDown
      if (wasAccepted) {
        accepted++
        acceptedIdle.closeUnsafe()
      }
      let left = false
      return () => {
        if (left) return
        left = true
        if (wasAccepted) leaveAcceptedUnsafe()
        else leaveUnsafe()
      }
    },
    inFlight: () => inFlight,
    awaitIdle: idle.await,
    acceptedInFlight: () => accepted,
    awaitAcceptedIdle: acceptedIdle.await,
    noteRefusalUnsafe: (protocol) => {
      refused[protocol]++
    },
    refused: () => ({ ...refused })
  }
})

export class Lifecycle extends Context.Service<Lifecycle, Service>()("effect-onnx/http/Lifecycle") {
  static readonly layer: Layer.Layer<Lifecycle> = Layer.effect(Lifecycle, make)
}
