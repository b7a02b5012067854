/**
 * The messages between a `InstancePool` (main thread) and one session instance: a
 * `SessionWorker` (worker thread) or a `SessionProcess` (child process), each holding one
 * onnxruntime session and serving it with `SessionEndpoint`. Types only, so that the instance
 * loads nothing for it.
 *
 * Host → worker: `run` carries a request id that the reply repeats; a host may send
 * the next job before the current one has replied (pipelining), and the worker runs them one at
 * a time, in order. `cancel` drops a job that was sent but has not started. `close` asks the
 * worker to release its session and exit once the jobs in hand have ended.
 * Worker → host: `ready` (or `loadFailed`, then the worker exits) once; then one `done` or
 * `failed` per run, in order; `closed` before a graceful exit.
 *
 * Input tensors are structured-cloned (copied) to the worker, or transferred when the host owns
 * them (a batch the engine joined), and then given back after the run for the host to reuse
 * (`recycle`); output buffers are transferred back (the worker's arrays are detached, the host's
 * are exact-size and owned by the caller).
 *
 * @module Protocol
 */
import type * as ModelMetadata from "../ModelMetadata.ts"
import type * as DeviceLock from "./DeviceLock.ts"
import type * as Tensor from "../Tensor.ts"
import type * as ShmChannel from "./ShmChannel.ts"
import type * as Warmup from "../Warmup.ts"

/** Where sessions run: worker threads of this process, or child processes. */
export type Isolation = "thread" | "process"

/** A provider to try: a name ("webgpu"), or an object with the name and the options onnxruntime-node takes for it. */
export type ExecutionProvider = string | { readonly name: string; readonly [option: string]: unknown }

/** What an instance is started with (in `ThreadStart` for a thread, the first argument for a process). */
export interface WorkerConfig {
  readonly modelId: string
  readonly version: string
  /** Absolute path of model.onnx. */
  readonly modelPath: string
  /** Providers to try, in order; "cpu" is tried last when none of them loads. */
  readonly executionProviders: ReadonlyArray<ExecutionProvider>
  readonly intraOpNumThreads: number
  readonly interOpNumThreads: number
  /** Where this instance runs. */
  readonly isolation: Isolation
  /** config.json's `warmup`: runs made after the session loads and before `ready` (none when undefined). */
  readonly warmup?: Warmup.Plan | undefined
  /**
   * The host's load timeout, in ms: a warm-up still going this long after the instance started
   * stops before its next run and fails the load (a thread cannot be stopped from outside).
   */
  readonly loadTimeoutMs?: number | undefined
}

/** What a thread instance gets as `workerData`: its config and the process's `DeviceLock` (see `SessionEndpoint.Exclusive`). */
export interface ThreadStart {
  readonly config: WorkerConfig
  readonly deviceLock: DeviceLock.DeviceLock
  /** Its waiting slot in the lock, -1 when all are taken. */
  readonly deviceSlot: number
  /** The providers whose sessions hold the lock (`DeviceLock.exclusiveProviders` unless a test says). */
  readonly exclusiveProviders: ReadonlyArray<string>
}

/**
 * `placed` fields exist on a process's pipe only (`ShmChannel`): the tensors they describe are in
 * shared memory, and the message's own `inputs` or `outputs` are empty until the receiving end of
 * the transport reads them back. Neither `InstancePool` nor `SessionEndpoint` ever sees one.
 */
export type ToWorker =
  | {
    readonly _tag: "run"
    readonly id: number
    readonly inputs: Tensor.TensorMap
    readonly placed?: ShmChannel.PlacedMap | undefined
    /** Sent ahead, to an instance with a job in hand: its caller may cancel it before its turn (see `SessionEndpoint`). */
    readonly ahead?: boolean | undefined
    /** The inputs' buffers were transferred (the host's own): `done` gives them back in `returned`, for the host to reuse. */
    readonly recycle?: boolean | undefined
  }
  /** Several runs, each on its own, answered together by one `doneGroup`. */
  | {
    readonly _tag: "runGroup"
    readonly id: number
    readonly inputs: ReadonlyArray<Tensor.TensorMap>
    readonly placed?: ReadonlyArray<ShmChannel.PlacedMap> | undefined
    readonly ahead?: boolean | undefined
  }
  /** The caller of job `id` left: if it has not started, it is answered `failed` without running. */
  | { readonly _tag: "cancel"; readonly id: number }
  | { readonly _tag: "close" }

/** A provider that was requested but could not create the session. */
export interface Fallback {
  readonly provider: string
  /** Why, in one line (`ProviderDiagnosis.explain`). */
  readonly error: string
  /** onnxruntime's own error text. */
  readonly detail?: string
}

export type FromWorker =
  | {
    readonly _tag: "ready"
    /** The provider the session runs on. */
    readonly deviceUsed: string
    /** Requested providers that failed before `deviceUsed` loaded. */
    readonly fallbacks: ReadonlyArray<Fallback>
    readonly inputs: ReadonlyArray<ModelMetadata.TensorSpec>
    readonly outputs: ReadonlyArray<ModelMetadata.TensorSpec>
    /** Time to create the session, all attempts included. */
    readonly loadMs: number
    /** Time of the warm-up runs (`WorkerConfig.warmup`), after `loadMs`; 0 without any. */
    readonly warmupMs: number
  }
  | { readonly _tag: "loadFailed"; readonly error: string }
  | {
    readonly _tag: "done"
    readonly id: number
    readonly outputs: Tensor.TensorMap
    readonly deviceUsed: string
    readonly runMs: number
    readonly placed?: ShmChannel.PlacedMap | undefined
    /** For a `recycle` run: its input buffers, transferred back once the run no longer reads them (none that an output shares). */
    readonly returned?: ReadonlyArray<ArrayBuffer> | undefined
  }
  | { readonly _tag: "failed"; readonly id: number; readonly error: string }
  /** The outcome of each run of a `runGroup`, in order. */
  | {
    readonly _tag: "doneGroup"
    readonly id: number
    readonly deviceUsed: string
    readonly results: ReadonlyArray<
      | { readonly _tag: "done"; readonly outputs: Tensor.TensorMap; readonly runMs: number; readonly placed?: ShmChannel.PlacedMap | undefined }
      | { readonly _tag: "failed"; readonly error: string }
    >
  }
  | { readonly _tag: "closed" }
  /** A child process's uncaught exception, sent just before it exits (processes only). */
  | { readonly _tag: "fatal"; readonly error: string }
