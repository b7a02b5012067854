/**
 * Compiled by `tsc -p .` (npm run typecheck), never run: calls of the public API that a user writes
 * must typecheck as they are. A line that stops compiling fails the type check.
 */
import { type Config, Data, Effect, type Layer } from "effect"
import type * as ModelRepository from "../../src/ModelRepository.ts"
import * as Live from "../../src/Live.ts"
import type { ModelPool } from "../../src/ModelPool.ts"
import type { TelemetryCollector } from "../../src/Telemetry.ts"

class PoolError extends Data.TaggedError("PoolError")<{}> {}
declare const pool: Layer.Layer<ModelPool, PoolError>

// The pool's error is inferred: the layer fails with it, RepositoryError or ConfigError, each caught by tag.
export const inferred: Layer.Layer<Live.Services, PoolError | ModelRepository.RepositoryError | Config.ConfigError> = Live.layer({ modelPool: pool })
export const caught = Effect.void.pipe(
  Effect.provide(Live.layer({ modelPool: pool })),
  Effect.catchTag("PoolError", () => Effect.void),
  Effect.catchTag("RepositoryError", () => Effect.void),
  Effect.catchTag("ConfigError", () => Effect.void)
)
// With the collector's type named, a fallible pool still compiles (its error is then unknown).
export const named: Layer.Layer<Live.Services, unknown> = Live.layer<TelemetryCollector>({ modelPool: pool })
