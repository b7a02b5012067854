/**
 * The engine for code that does not use Effect: Promises, AbortSignal and AsyncIterable over
 * an `AsyncInferenceEngine` that runs in a `ManagedRuntime`. It has no behaviour of its own:
 * every method is one engine call, and its contract is the engine's (see `Engine`).
 *
 * ```ts
 * import { InferenceClient, InferenceRequest, Tensor } from "effect-onnx"
 *
 * const client = await InferenceClient.make()                   // the bundled models
 * const result = await client.infer(
 *   InferenceRequest.make("mlp", { input: Tensor.float32(new Float32Array(784), [1, 784]) }),
 *   { signal: AbortSignal.timeout(1000) }
 * )
 * await client.close()                                          // or `await using client = …`
 * ```
 *
 * - `infer` resolves with the Success, or rejects with the engine's typed `InferenceError`
 *   (match on `error.reason._tag`). Aborting its `signal` interrupts the call exactly as
 *   interrupting an Effect caller does: a queued request leaves the queue and never runs; a
 *   running one is answered at once and its result dropped. The promise then rejects with an
 *   `InferenceError` whose reason is `Cancelled` (carrying the signal's reason).
 * - `inferBatch` yields each result as it completes (an AsyncIterable of `InferenceResult`, which
 *   never throws for a failed request), reading `requests` as it submits them. Aborting `signal`
 *   settles what is outstanding as Cancelled and ends the iteration (nothing more is taken from
 *   `requests`); leaving the `for await` loop early cancels what is outstanding. However the
 *   iteration ends, a generator it reads is closed (its `finally` runs).
 * - `close` stops the engine: after `grace` (default 0) the requests still queued or running are
 *   answered with ShuttingDown, then every model session is released. Later `infer` and
 *   `metadata` calls reject with ShuttingDown, `inferResult` answers it as a Failed result
 *   (while the grace lasts, a request of a sequence under way is still answered: the engine's
 *   drain lets sequences finish, `Sequence`), a
 *   batch (one in flight included) answers the next request it takes so and ends there, and
 *   `models`, `stats` and `config` still answer. `await using` calls it through
 *   `Symbol.asyncDispose`. Until it is called the client's worker threads keep Node running.
 *
 * @module InferenceClient
 */
import { Cause, type Config, Context, Duration, Effect, Exit, Layer, type LogLevel, ManagedRuntime, Option, References, Result, Stream } from "effect"
import * as AsyncConfig from "./AsyncConfig.ts"
import * as CancelToken from "./CancelToken.ts"
import { AsyncInferenceEngine, invalidConcurrency, isConcurrency } from "./Engine.ts"
import * as InferenceError from "./InferenceError.ts"
import type { InferenceRequest } from "./InferenceRequest.ts"
import * as InferenceResult from "./InferenceResult.ts"
import type * as ModelMetadata from "./ModelMetadata.ts"
import { ModelPool, type ModelStatus } from "./ModelPool.ts"
import * as Live from "./Live.ts"
import type * as ModelRepository from "./ModelRepository.ts"
import type * as Otel from "./Otel.ts"
import type * as PriorityQueue from "./PriorityQueue.ts"
import { TelemetryCollector } from "./Telemetry.ts"

/** The model repository shipped with the package (`models/`: `mlp` and `silero_vad`); see `Live`. */
export const bundledModels: string = Live.bundledModels

/** `PE`: how a pool given in `modelPool` fails to build. */
export interface Options<PE = unknown> {
  /** The model repository root (see `ModelRepository`). Default: `bundledModels`. */
  readonly repository?: string | undefined
  /** Engine settings over `AsyncConfig.defaults`. */
  readonly config?: AsyncConfig.Overrides | undefined
  /** Defaults for models without a config.json (instances, execution providers, threads), within config.json's bounds: else `make` rejects with a RepositoryError naming the field. */
  readonly modelDefaults?: ModelRepository.DefaultsOverrides | undefined
  /** Where telemetry goes. Default `TelemetryCollector.layer` (Effect Metrics). */
  readonly telemetry?: Layer.Layer<TelemetryCollector> | undefined
  /** Export traces and metrics over OTLP (`Otel.layer`). Default: no export, and no spans. */
  readonly otel?: Otel.Options | undefined
  /** The engine's log lines below this level are dropped (not those of a program `layer` is provided to). Default `Warn`. */
  readonly logLevel?: LogLevel.LogLevel | undefined
  /**
   * The model pool, replacing the onnxruntime pool over `repository` (a fake in tests, say).
   * `repository` and `modelDefaults` are then unused.
   */
  readonly modelPool?: Layer.Layer<ModelPool, PE> | undefined
}

export interface InferOptions {
  /** Aborting it cancels the request (see the module doc). */
  readonly signal?: AbortSignal | undefined
}

export interface BatchOptions {
  /** Aborting it settles every outstanding request as Cancelled. */
  readonly signal?: AbortSignal | undefined
  /** Requests submitted at once, a positive integer (else `inferBatch` throws a TypeError). Default: the engine's `maxConcurrentRequests`. */
  readonly concurrency?: number | undefined
}

export interface Stats {
  /** Requests waiting in the queue, by priority. */
  readonly queue: PriorityQueue.QueueStats
  /** Requests admitted and not yet answered (queued, forming a batch, or running). */
  readonly pending: number
  /** True once `close` has begun. */
  readonly draining: boolean
}

export interface InferenceClient extends AsyncDisposable {
  /** Runs one request: the Success, or a rejection with `InferenceError`. */
  readonly infer: (request: InferenceRequest, options?: InferOptions) => Promise<InferenceResult.Success>
  /** Runs one request; never rejects: Cancelled, TimedOut and Failed are results. */
  readonly inferResult: (request: InferenceRequest, options?: InferOptions) => Promise<InferenceResult.InferenceResult>
  /** Runs every request; yields each result as it completes (each carries its requestId). */
  readonly inferBatch: (requests: Iterable<InferenceRequest>, options?: BatchOptions) => AsyncIterable<InferenceResult.InferenceResult>
  /** A model's inputs and outputs; rejects with ModelNotFound or ModelUnavailable. */
  readonly metadata: (modelId: string, version?: string) => Promise<ModelMetadata.ModelMetadata>
  /** Every model in the repository with its state. */
  readonly models: () => Promise<ReadonlyArray<ModelStatus>>
  readonly stats: () => Promise<Stats>
  /** The engine's configuration. */
  readonly config: AsyncConfig.AsyncConfig
  /**
   * Stops the engine (see the module doc). Idempotent. Rejects with a TypeError, closing
   * nothing, when `grace` is not a duration that is not negative.
   */
  readonly close: (options?: { readonly grace?: Duration.Input | undefined }) => Promise<void>
}

type Services = AsyncInferenceEngine | ModelPool | TelemetryCollector

/**
 * The layer a client runs: the engine over the onnxruntime pool (or `options.modelPool`), its
 * telemetry and configuration, and optionally OTLP export. Effect programs can provide it too.
 * Fails as `Live.layer` does: ConfigError, RepositoryError, or the given pool's error.
 */
export const layer = <PE = never>(
  options: Options<PE> = {}
): Layer.Layer<Services, PE | ModelRepository.RepositoryError | Config.ConfigError> =>
  Live.layer({
    repository: options.repository,
    modelDefaults: options.modelDefaults,
    modelPool: options.modelPool,
    config: options.config,
    otel: options.otel,
    collector: options.telemetry
  }).pipe(
    // The build's context, which the pool's fibers (loads, replacements) log from; a program the
    // layer is provided to keeps its own level.
    Layer.provide(Layer.succeed(References.MinimumLogLevel, options.logLevel ?? "Warn"))
  )

/**
 * Starts an engine; resolves once every model has loaded (or is reported unavailable). Rejects
 * when the repository cannot be read, and with a TypeError naming the setting when `config`
 * holds an invalid one (`AsyncConfig.validate`: a count that is not a positive integer, a
 * negative duration …), before anything starts.
 */
export const make = async (options: Options = {}): Promise<InferenceClient> => {
  const settings = AsyncConfig.validate(options.config)
  if (Result.isFailure(settings)) throw new TypeError(`InferenceClient.make: invalid config: ${AsyncConfig.describeError(settings.failure)}`)
  const runtime = ManagedRuntime.make(layer(options))
  let context: Context.Context<Services>
  try {
    context = await runtime.context()
  } catch (error) {
    await runtime.dispose()
    throw error
  }
  return fromRuntime(runtime, context)
}

/** `close`'s grace as a Duration: undefined for what is not a duration, NaN, or a negative one. */
const graceOf = (input: Duration.Input | undefined): Duration.Duration | undefined => {
  if (input === undefined) return Duration.zero
  if (typeof input === "number" && Number.isNaN(input)) return undefined
  const grace = Duration.fromInput(input)
  return Option.isSome(grace) && !Duration.isNegative(grace.value) ? grace.value : undefined
}

const shuttingDown = () => InferenceError.make(new InferenceError.ShuttingDown({}))

const abortReason = (signal: AbortSignal | undefined): string => CancelToken.abortReasonText(signal?.reason)

const fromRuntime = (
  runtime: ManagedRuntime.ManagedRuntime<Services, unknown>,
  context: Context.Context<Services>
): InferenceClient => {
  const engine = Context.get(context, AsyncInferenceEngine)
  const pool = Context.get(context, ModelPool)
  let closing: Promise<void> | undefined
  /** Set once the drain is over: the runtime is being disposed. Until then the draining engine decides (it lets sequences under way go on). */
  let closed = false

  /**
   * Runs `effect`; an interruption becomes Cancelled (the signal's) or ShuttingDown (close).
   * Refused once `close` was called, or with `duringDrain` once the drain is over.
   */
  const run = <A>(effect: Effect.Effect<A, InferenceError.InferenceError>, requestId: string, signal?: AbortSignal, duringDrain = false): Promise<A> => {
    if (duringDrain ? closed : closing !== undefined) return Promise.reject(shuttingDown())
    return runtime.runPromiseExit(effect, signal === undefined ? undefined : { signal }).then((exit) => {
      if (Exit.isSuccess(exit)) return exit.value
      const error = Cause.findErrorOption(exit.cause)
      if (error._tag === "Some") throw error.value
      if (Cause.hasInterruptsOnly(exit.cause)) {
        throw signal?.aborted === true
          ? InferenceError.make(new InferenceError.Cancelled({ requestId, reason: abortReason(signal) }))
          : shuttingDown()
      }
      throw Cause.squash(exit.cause)
    })
  }

  const close = (options?: { readonly grace?: Duration.Input | undefined }): Promise<void> => {
    const grace = graceOf(options?.grace)
    if (grace === undefined) {
      const given = typeof options?.grace === "string" ? JSON.stringify(options.grace) : String(options?.grace)
      return Promise.reject(new TypeError(`InferenceClient.close: invalid grace ${given}: expected a duration that is not negative, such as "5 seconds" or 5000 (ms)`))
    }
    const dispose = () => {
      closed = true
      return runtime.dispose()
    }
    closing ??= runtime.runPromise(engine.drain(grace)).then(dispose, dispose)
    return closing
  }

  /** A request's id; "" for one built by hand in plain JavaScript that has none (the engine refuses it: InvalidInput). */
  const idOf = (request: InferenceRequest): string => {
    const id: unknown = (request as Partial<InferenceRequest> | null | undefined)?.requestId
    return typeof id === "string" ? id : ""
  }

  return {
    infer: (request, options) => run(engine.infer(request), idOf(request), options?.signal, true),
    inferResult: (request, options) => {
      if (closed) return Promise.resolve(InferenceResult.Failed({ requestId: idOf(request), error: shuttingDown(), elapsedMs: 0 }))
      const startedMs = performance.now()
      // The engine answers every outcome as a result; only close (the runtime's disposal) interrupts it: ShuttingDown.
      return runtime.runPromiseExit(engine.inferResult(request, options?.signal)).then((exit) => {
        if (Exit.isSuccess(exit)) return exit.value
        if (Cause.hasInterruptsOnly(exit.cause)) {
          return InferenceResult.Failed({ requestId: idOf(request), error: shuttingDown(), elapsedMs: performance.now() - startedMs })
        }
        throw Cause.squash(exit.cause)
      })
    },
    inferBatch: (requests, options) => {
      if (options?.concurrency !== undefined && !isConcurrency(options.concurrency)) throw invalidConcurrency(options.concurrency)
      const stream = engine.inferBatch(requests, { cancel: options?.signal, concurrency: options?.concurrency })
      return Stream.toAsyncIterableWith(stream, context)
    },
    metadata: (modelId, version) => run(Effect.mapError(pool.metadata(modelId, version), InferenceError.make), modelId),
    // Plain reads: they still answer after close.
    models: () => Effect.runPromise(pool.models),
    stats: () => Effect.runPromise(Effect.all({ queue: engine.queueStats, pending: engine.pending, draining: engine.isDraining })),
    config: engine.config,
    close,
    [Symbol.asyncDispose]: () => close()
  }
}
