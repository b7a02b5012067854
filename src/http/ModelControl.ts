/**
 * Triton's model repository extension, load and unload, as both protocols answer them
 * (`POST /v2/repository/models/{m}/load|unload`, gRPC `RepositoryModelLoad|Unload`). They work
 * when the pool offers them (`ModelPool.load`/`unload`: `OnnxModelPool` under
 * `--model-control-mode explicit`); otherwise they are refused with `NotSupported` (HTTP 400,
 * gRPC INVALID_ARGUMENT), as under Triton's `--model-control-mode none`.
 *
 * Unload stops admitting at once, then waits until the engine holds no queued request of the
 * model and no batch is forming, then releases the sessions (a run still going finishes first).
 *
 * @module ModelControl
 */
import { Data, Effect } from "effect"
import type { AsyncInferenceEngine } from "../Engine.ts"
import type * as InferenceError from "../InferenceError.ts"
import type * as ModelPool from "../ModelPool.ts"

export class NotSupported extends Data.TaggedError("NotSupported")<{}> {
  override get message(): string {
    return "explicit model control is not supported: the repository is loaded once, at startup; start the server with --model-control-mode explicit"
  }
}

/** True when the pool can load and unload. */
export const isEnabled = (pool: ModelPool.Service): boolean => pool.load !== undefined && pool.unload !== undefined

export const load = (pool: ModelPool.Service, name: string): Effect.Effect<void, NotSupported | InferenceError.ModelNotFound | InferenceError.ModelUnavailable> =>
  pool.load === undefined ? Effect.fail(new NotSupported()) : pool.load(name)

/** Waits until the engine has nothing queued for `name` and no batch forming. */
export const drained = (engine: AsyncInferenceEngine["Service"], name: string): Effect.Effect<void> =>
  Effect.gen(function*() {
    while (true) {
      const queued = (yield* engine.queueStatsByModel).get(name)?.total ?? 0
      const { forming } = yield* engine.diagnostics
      if (queued === 0 && forming === 0) return
      yield* Effect.sleep("5 millis")
    }
  })

export const unload = (
  pool: ModelPool.Service,
  engine: AsyncInferenceEngine["Service"],
  name: string
): Effect.Effect<void, NotSupported | InferenceError.ModelNotFound> =>
  pool.unload === undefined ? Effect.fail(new NotSupported()) : pool.unload(name, drained(engine, name))
