/**
 * Triton's `--model-control-mode poll`: the server follows its model repository on disk. Every
 * `interval` it scans the repository and, model by model:
 *
 * - a model whose files changed since it was loaded (a model.onnx replaced, a version directory
 *   added or removed, config.json or a label file edited, so also a new `versionPolicy`) is
 *   loaded again, as an explicit load does: all or nothing, the versions that served keep serving
 *   until the new ones are READY, and a load that fails leaves them serving (it is logged, and
 *   not tried again until the files change once more);
 * - a model directory added is loaded;
 * - a model directory removed is unloaded: it stops admitting, what it was given runs, then its
 *   sessions are released.
 *
 * A change is seen by `ModelRepository.fingerprint` (each model file's path, modification time,
 * size, inode and status-change time, and config.json as written), so a file renamed into place
 * is seen whatever its size and modification time. Copy a new version in under a temporary name
 * and rename it into place, as for Triton, so that no scan reads a file half written (such a file
 * fails to load, and the next change loads it). Loads run one model after another; a scan that
 * fails (the repository root unreadable) is logged and retried at the next interval. Clients
 * cannot load or unload meanwhile (`ModelControl`: refused, as Triton refuses them). Once the
 * server is shutting down nothing more is loaded, and a load under way is abandoned when the
 * poller is interrupted (`ModelPool.poll.load`): the shutdown does not wait for it.
 *
 * @module RepositoryPoll
 */
import { type Duration, Effect, Layer, Schedule } from "effect"
import { AsyncInferenceEngine } from "../Engine.ts"
import * as ModelPool from "../ModelPool.ts"
import * as ModelRepository from "../ModelRepository.ts"
import { Lifecycle } from "./Lifecycle.ts"
import * as ModelControl from "./ModelControl.ts"

/** What one poll does to one model. */
export type Change =
  | { readonly _tag: "Load"; readonly name: string; readonly fingerprint: string }
  | { readonly _tag: "Unload"; readonly name: string }

/**
 * What each model's fingerprint was at the poller's last load or unload of it (an unload: ""),
 * overriding what the pool loaded at start: a load that failed is not retried until the files
 * change again, and a model unloaded is loaded again when it comes back.
 */
export type Tried = ReadonlyMap<string, string>

const names = (repository: ModelRepository.ModelRepository): ReadonlyArray<string> => [...new Set(repository.entries.map((e) => e.name))]

/**
 * The changes from `loaded` (what the pool serves from) to `onDisk` (a scan now), in name order:
 * a load for each model whose fingerprint differs from what it was last loaded (or tried) as, an
 * unload for each model served or tried that is no longer on disk. Pure.
 */
export const changes = (loaded: ModelRepository.ModelRepository, onDisk: ModelRepository.ModelRepository, tried: Tried): ReadonlyArray<Change> => {
  const out: Array<Change> = []
  const known = (name: string) => tried.get(name) ?? ModelRepository.fingerprint(loaded, name)
  for (const name of names(onDisk)) {
    const now = ModelRepository.fingerprint(onDisk, name)
    if (now !== known(name)) out.push({ _tag: "Load", name, fingerprint: now })
  }
  const present = new Set(names(onDisk))
  const gone = new Set([...names(loaded), ...tried.keys()].filter((name) => !present.has(name) && known(name) !== ""))
  for (const name of [...gone].sort()) out.push({ _tag: "Unload", name })
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
}

/**
 * One poll: scans, then applies each change in turn. Never fails: a scan or a change that fails
 * is logged. Returns the changes it applied or tried.
 */
export const pollOnce = (tried: Map<string, string>): Effect.Effect<ReadonlyArray<Change>, never, ModelPool.ModelPool | AsyncInferenceEngine | Lifecycle> =>
  Effect.gen(function*() {
    const pool = yield* ModelPool.ModelPool
    const engine = yield* AsyncInferenceEngine
    const lifecycle = yield* Lifecycle
    const poll = pool.poll
    if (poll === undefined || lifecycle.isShuttingDown()) return []
    const scanned = yield* Effect.result(poll.scan)
    if (scanned._tag === "Failure") {
      yield* Effect.logWarning(`repository poll: ${scanned.failure.message}; trying again at the next poll`)
      return []
    }
    const planned = changes(poll.loaded(), scanned.success, tried)
    for (const change of planned) {
      if (lifecycle.isShuttingDown()) break
      if (change._tag === "Load") {
        const added = tried.get(change.name) === "" || ModelRepository.versionsOf(poll.loaded(), change.name).length === 0
        tried.set(change.name, change.fingerprint)
        yield* Effect.logInfo(`repository poll: model ${change.name} ${added ? "appeared in the repository" : "changed on disk"}: loading it`)
        yield* ModelControl.load(pool, change.name, lifecycle, "poll").pipe(
          Effect.catch((e) => Effect.logWarning(`repository poll: model ${change.name} did not load: ${e.message}`))
        )
      } else {
        tried.set(change.name, "")
        yield* Effect.logInfo(`repository poll: model ${change.name} is no longer in the repository: unloading it`)
        yield* ModelControl.unload(pool, engine, change.name, "poll").pipe(
          Effect.catch((e) => Effect.logWarning(`repository poll: model ${change.name} did not unload: ${e.message}`))
        )
      }
    }
    return planned
  }).pipe(Effect.withSpan("RepositoryPoll.pollOnce"))

/**
 * Polls every `interval` (the first poll one interval after start) for as long as the layer's
 * scope is open; interrupted with it, abandoning a load under way (an unload under way ends
 * first: by then the server has drained what it waits for). Without a polled pool
 * (`ModelPool.poll`) it does nothing.
 */
export const layer = (options: { readonly interval: Duration.Duration }): Layer.Layer<never, never, ModelPool.ModelPool | AsyncInferenceEngine | Lifecycle> =>
  Layer.effectDiscard(Effect.gen(function*() {
    const pool = yield* ModelPool.ModelPool
    const poll = pool.poll
    if (poll === undefined) return
    yield* Effect.acquireRelease(Effect.sync(() => poll.attach()), (detach) => Effect.sync(detach))
    const tried = new Map<string, string>()
    yield* Effect.forkScoped(Effect.repeat(Effect.delay(pollOnce(tried), options.interval), Schedule.forever))
  }))
