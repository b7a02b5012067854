/**
 * The engine's view of loaded models: metadata for validation, and `run` on a free instance.
 * The onnxruntime implementation (sessions in worker threads over a model repository) is
 * `OnnxModelPool`; tests provide fakes with scripted latency.
 *
 * @module ModelPool
 */
import { Context, type Duration, type Effect, type Exit } from "effect"
import type * as InferenceError from "./InferenceError.ts"
import type * as ModelMetadata from "./ModelMetadata.ts"
import type * as ModelRepository from "./ModelRepository.ts"
import type * as Tensor from "./Tensor.ts"

export interface RunOutput {
  readonly outputs: Tensor.TensorMap
  /** The execution provider that actually ran ("cpu" after a fallback). */
  readonly deviceUsed: string
  /**
   * The native run's own time (ms), where the pool measures it: without the hop to its instance or
   * any wait there. The engine learns each model's run cost from it (else from the wall time).
   */
  readonly runMs?: number | undefined
}

/**
 * A model's state in the repository, as the server's repository index reports it (Triton's
 * states): READY serves; UNAVAILABLE does not, with the reason; LOADING is being loaded and does
 * not serve yet (a version that serves keeps READY through its reload, until the new one takes
 * over); UNLOADING is being unloaded: it admits nothing more and finishes what it was given.
 */
export interface ModelStatus {
  readonly name: string
  readonly version: string
  readonly state: "READY" | "UNAVAILABLE" | "LOADING" | "UNLOADING"
  /** Why it is unavailable. */
  readonly reason?: string | undefined
}

/** Whether a version still runs what it was given: READY, or UNLOADING while it drains (its series stay in the metrics until then). */
export const runs = (status: ModelStatus): boolean => status.state === "READY" || status.state === "UNLOADING"

/** The options of `Service.run`. */
export interface RunOptions {
  readonly requestId: string
  /** A model version; undefined means the model's default (highest) version. */
  readonly version?: string | undefined
  /**
   * How long the caller will still wait for this run, counted from the call to `run` (any wait
   * for a free instance included): what is left of the request's deadline. A pool may stop a
   * run that outlives it: a model with process isolation kills the run `killGraceMs` after it
   * (RunFailed). Threads cannot be stopped mid-run and ignore it. Undefined: no deadline.
   */
  readonly timeout?: Duration.Duration | undefined
  /**
   * The inputs' buffers are the pool's to keep (the engine joined them for this run and holds no
   * other reference): a pool may move them to a worker instead of copying, detaching them.
   */
  readonly transfer?: boolean | undefined
  /**
   * The metadata the inputs were validated against (the engine passes what its admission found).
   * A pool whose model has changed since then (reloaded with other inputs or outputs, or the
   * version gone) refuses the run with ModelUnavailable, which the caller may retry, rather than
   * run inputs the model no longer takes. Undefined: no check.
   */
  readonly admittedAs?: ModelMetadata.ModelMetadata | undefined
  /**
   * Called once, synchronously, when the run begins on an instance: nothing runs before it there.
   * A pool whose metadata says `reportsStarts` must call it for every run that begins; others may
   * ignore it. Not called for a run that never begins (refused, withdrawn, past its deadline).
   */
  readonly onStart?: (() => void) | undefined
}

export interface Service {
  /**
   * The metadata of a model that can serve. `version` defaults to the highest one.
   * Fails with ModelNotFound, or ModelUnavailable when the model failed to load.
   * One object per load of a version, the same at every call until the version is loaded again:
   * the engine keys what it derives from a model (its scheduling facts, its response cache
   * entries) by that object, so a pool that swaps a model's weights must answer a new one.
   */
  readonly metadata: (
    modelId: string,
    version?: string
  ) => Effect.Effect<ModelMetadata.ModelMetadata, InferenceError.ModelNotFound | InferenceError.ModelUnavailable>
  /**
   * `metadata` without an Effect, for the engine's admission path: the metadata, or the
   * error `metadata` would fail with. Optional: without it the engine runs `metadata`.
   */
  readonly metadataUnsafe?:
    | ((
      modelId: string,
      version?: string
    ) => ModelMetadata.ModelMetadata | InferenceError.ModelNotFound | InferenceError.ModelUnavailable)
    | undefined
  /**
   * Runs `inputs` (already validated) on a free instance of the model, waiting in FIFO order
   * when every instance is busy. Interrupting a run that has begun returns at once; the
   * instance goes back to the pool only when its native run has ended, so no instance ever runs
   * two requests. A pool whose metadata says `stopsAbandonedRuns` stops such a run instead, and
   * its interruption returns once the run is over. A pool may make the interruption of a run
   * handed to a busy instance wait until that instance has dropped it (a pool that
   * `reportsStarts` does: until then it may still begin). See `RunOptions.timeout` for deadlines.
   */
  readonly run: (
    modelId: string,
    inputs: Tensor.TensorMap,
    options: RunOptions
  ) => Effect.Effect<RunOutput, InferenceError.RunFailed | InferenceError.ModelNotFound | InferenceError.ModelUnavailable>
  /**
   * Optional: runs each of `inputs` as its own native run, one after another on one instance,
   * and answers them together: the hop to the instance is paid once for the group. Each element
   * of the result is that run's outcome; the Effect fails (RunFailed) only when the whole job
   * does (the instance died). The engine uses it for models that do not batch.
   */
  readonly runGroup?:
    | ((
      modelId: string,
      inputs: ReadonlyArray<Tensor.TensorMap>,
      options: RunOptions
    ) => Effect.Effect<ReadonlyArray<Exit.Exit<RunOutput, InferenceError.RunFailed>>, InferenceError.RunFailed | InferenceError.ModelNotFound | InferenceError.ModelUnavailable>)
    | undefined
  /** Every model in the repository with its state. */
  readonly models: Effect.Effect<ReadonlyArray<ModelStatus>>
  /**
   * Optional: the versions loaded (READY) or that failed to load, without looking at the
   * repository again (`models` may rescan it for models added since). What `/metrics` reads.
   */
  readonly loadedModels?: Effect.Effect<ReadonlyArray<ModelStatus>> | undefined
  /**
   * Explicit model control (optional: a pool without it cannot load or unload). Loads, or
   * reloads, every version of `name` from the repository as it is on disk now; the versions that
   * served before keep serving until the new ones are READY, then are released. All or nothing:
   * when any version fails, none of the new ones serves and what served before keeps serving.
   * Fails with ModelNotFound when the repository has no such model, ModelUnavailable when it cannot load.
   * Loads and unloads of one model take turns; `admit` runs when this load's turn comes, before
   * anything starts, and its failure is the load's (a server that began shutting down meanwhile).
   */
  readonly load?:
    | (<E = never>(name: string, admit?: Effect.Effect<void, E>) => Effect.Effect<void, InferenceError.ModelNotFound | InferenceError.ModelUnavailable | E>)
    | undefined
  /**
   * Explicit model control: stops admitting requests for `name` at once (`metadata` fails with
   * ModelUnavailable "unloading"), waits for `drained` (the caller's queue emptying of the
   * model), then releases its sessions (runs still going finish first). ModelNotFound when it is
   * not in the repository.
   */
  readonly unload?: ((name: string, drained: Effect.Effect<void>) => Effect.Effect<void, InferenceError.ModelNotFound>) | undefined
  /**
   * Model control mode "poll" (optional: absent otherwise): the pool's models follow the
   * repository on disk, and `load` and `unload` are for the poller alone (a client's are
   * refused). `scan` reads the repository now, as the pool would load it; `loaded` is the scan
   * the pool serves from (each model as its last load, or the start, found it); `load` is `load`
   * except that it can be interrupted midway (what it started closes with the pool): the poller
   * is interrupted only as the server closes, which must not wait for a load nobody asked for.
   */
  readonly poll?:
    | {
      readonly scan: Effect.Effect<ModelRepository.ModelRepository, ModelRepository.RepositoryError>
      readonly loaded: () => ModelRepository.ModelRepository
      readonly load: <E = never>(name: string, admit?: Effect.Effect<void, E>) => Effect.Effect<void, InferenceError.ModelNotFound | InferenceError.ModelUnavailable | E>
      /** Registers a poller (`RepositoryPoll.layer` does); the function it returns unregisters it. */
      readonly attach: () => () => void
      /** Whether a poller is registered: without one nothing follows the repository. */
      readonly followed: () => boolean
    }
    | undefined
  /**
   * Optional (pools that load after their start): lifetime counts of the loads and reloads asked
   * for after the start (explicit model control, or the repository poller), read live; what
   * `/metrics` reports as `inference_model_loads_total`.
   */
  readonly modelLoads?: Readonly<ModelLoads> | undefined
  /**
   * Optional: lifetime counts of what happened to the pool's instances (threads or processes),
   * over every model, read live; what `/metrics` reports as `inference_instance_events_total`.
   */
  readonly counters?: Readonly<InstanceEvents> | undefined
}

/** The loads a pool did after its start (each a count, only ever growing). */
export interface ModelLoads {
  /** Loads whose new versions all loaded and now serve. */
  readonly succeeded: number
  /** Loads of which some version failed: none of the new versions serves, what served keeps serving. */
  readonly failed: number
  /** The same counts by model name (models of the repository only), where the pool keeps them. */
  readonly byModel?: ReadonlyMap<string, { readonly succeeded: number; readonly failed: number }> | undefined
}

/** What happened to a pool's instances since it started (each a count, only ever growing). */
export interface InstanceEvents {
  /** Instances that ended unexpectedly (a crash, `process.exit`, a signal); kills below excluded. */
  readonly crashes: number
  /** Processes killed because their run outlived its deadline by the kill grace. */
  readonly deadlineKills: number
  /** Processes killed because their run outlived every caller by the kill grace. */
  readonly abandonKills: number
  /** Replacement instances that loaded. */
  readonly respawns: number
  /** Lost instances whose quick replacement attempts all failed (tried again every 30 s after, unless refused: another model on disk). */
  readonly respawnFailures: number
}

export class ModelPool extends Context.Service<ModelPool, Service>()("effect-onnx/ModelPool") {}
