/**
 * Triton's model repository extension, load and unload, as both protocols answer them
 * (`POST /v2/repository/models/{m}/load|unload`, gRPC `RepositoryModelLoad|Unload`). They work
 * when the pool offers them (`ModelPool.load`/`unload`: `OnnxModelPool` under
 * `--model-control-mode explicit`); otherwise they are refused with `NotSupported` (HTTP 400,
 * gRPC INVALID_ARGUMENT), as under Triton's `--model-control-mode none`, and so are a client's
 * under `--model-control-mode poll`, where the repository poller (`RepositoryPoll`) alone loads
 * and unloads (Triton: "explicit model load / unload is not allowed if polling is enabled").
 *
 * Unload stops admitting at once, then waits until the engine holds no queued request of the
 * model and no batch is forming, then releases the sessions (a run still going finishes first).
 * Load is refused with ShuttingDown once the server is shutting down, as inferences are.
 *
 * @module ModelControl
 */
import { Data, Effect } from "effect"
import type { AsyncInferenceEngine } from "../Engine.ts"
import * as InferenceError from "../InferenceError.ts"
import type * as ModelPool from "../ModelPool.ts"
import type * as Lifecycle from "./Lifecycle.ts"

export class NotSupported extends Data.TaggedError("NotSupported")<{
  /** The pool is in poll mode (`--model-control-mode poll`): its models follow the files. */
  readonly polling?: boolean
  /** In poll mode, whether a poller follows the repository (`RepositoryPoll.layer`). */
  readonly followed?: boolean
}> {
  override get message(): string {
    return this.polling !== true
      ? "explicit model control is not supported: the repository is loaded once, at startup; start the server with --model-control-mode explicit"
      : this.followed === false
      ? "explicit model load and unload are not allowed in poll mode, and nothing polls the model repository: provide RepositoryPoll.layer beside the pool, or use explicit model control"
      : "explicit model load and unload are not allowed while the server polls the model repository (--model-control-mode poll): change the files, and the next poll loads them"
  }
}

/** Who asks for a load or an unload: a client (HTTP or gRPC), or the repository poller. */
export type Caller = "client" | "poll"

/** Why `caller` may not load or unload on `pool`, or undefined. */
const refusal = (pool: ModelPool.Service, caller: Caller): NotSupported | undefined =>
  pool.load === undefined || pool.unload === undefined
    ? new NotSupported({})
    : (pool.poll !== undefined) !== (caller === "poll")
    ? new NotSupported(pool.poll === undefined ? { polling: false } : { polling: true, followed: pool.poll.followed() })
    : undefined

/**
 * Whether the server can apply the request parameters of a load or unload (Triton's
 * repository extension), as a refusal (HTTP 400, gRPC INVALID_ARGUMENT) or undefined. A load
 * takes none: `config` and `file:<version>/<name>` overrides are refused, since a model loads
 * only as its repository directory holds it, and so is any other name, rather than ignored. An
 * unload takes `unload_dependents`, a boolean (no model here has dependents, so either value is the same).
 */
export const checkParameters = (action: "load" | "unload", parameters: Readonly<Record<string, unknown>>): string | undefined => {
  for (const [name, value] of Object.entries(parameters)) {
    if (action === "unload" && name === "unload_dependents") {
      if (typeof value === "boolean") continue
      return `unload parameter "unload_dependents" must be a boolean, got ${typeof value === "string" ? JSON.stringify(value.slice(0, 100)) : String(value)}`
    }
    const why = name === "config" || name.startsWith("file:")
      ? "overrides are not supported: a model loads only as its repository directory holds it (model.onnx, config.json); change the files there and load again"
      : action === "load"
      ? "is not a load parameter this server knows (Triton's are config and file:<version>/<name>, neither supported here)"
      : "is not an unload parameter this server knows (unload_dependents is)"
    return `${action} parameter ${JSON.stringify(name)} ${why}`
  }
  return undefined
}

/** True when a client can load and unload (explicit model control). */
export const isEnabled = (pool: ModelPool.Service): boolean => refusal(pool, "client") === undefined

/**
 * Loads (or reloads) `name`. Refused with ShuttingDown (HTTP 503, gRPC UNAVAILABLE) once the
 * server's shutdown has begun, also when it began while this load waited for its turn (behind
 * another load or unload of the model): sessions started then would outlive the drain.
 */
export const load = (
  pool: ModelPool.Service,
  name: string,
  lifecycle: Pick<Lifecycle.Service, "isShuttingDown">,
  caller: Caller = "client"
): Effect.Effect<void, NotSupported | InferenceError.ModelNotFound | InferenceError.ModelUnavailable | InferenceError.ShuttingDown> =>
  refusal(pool, caller) !== undefined
    ? Effect.fail(refusal(pool, caller)!)
    : Effect.suspend((): Effect.Effect<void, InferenceError.ModelNotFound | InferenceError.ModelUnavailable | InferenceError.ShuttingDown> =>
      Effect.suspend(() => lifecycle.isShuttingDown() ? Effect.fail(new InferenceError.ShuttingDown({})) : Effect.void).pipe(
        // The poller's load can be interrupted (by the shutdown); a client's runs to its end.
        (admit) => Effect.andThen(admit, caller === "poll" ? pool.poll!.load(name, admit) : pool.load!(name, admit))
      )
    )

/** Waits until the engine has nothing of `name` that has not started: queued, forming or sent ahead (other models' work does not hold it). */
export const drained = (engine: AsyncInferenceEngine["Service"], name: string): Effect.Effect<void> =>
  Effect.gen(function*() {
    while ((yield* engine.notStarted(name)) > 0) yield* Effect.sleep("5 millis")
  })

export const unload = (
  pool: ModelPool.Service,
  engine: AsyncInferenceEngine["Service"],
  name: string,
  caller: Caller = "client"
): Effect.Effect<void, NotSupported | InferenceError.ModelNotFound> =>
  refusal(pool, caller) !== undefined ? Effect.fail(refusal(pool, caller)!) : pool.unload!(name, drained(engine, name))
