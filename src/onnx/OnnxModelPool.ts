/**
 * The onnxruntime implementation of `ModelPool`: every model version of a repository
 * (`ModelRepository`) loaded as `instances` onnxruntime sessions, each in its own worker
 * thread (`WorkerHost`) or, with config.json's `isolation: "process"`, its own child process
 * (`ProcessHost`), so that no native run ever blocks the main event loop.
 *
 * - `make` scans the repository and loads every model version at once; it returns when each
 *   is READY or UNAVAILABLE (missing, empty or corrupt file, invalid config.json, a session that
 *   cannot be created). Only a repository root that cannot be read fails it.
 * - Every worker and session belongs to the scope of `make` (the Layer's scope for `layer`):
 *   closing it fails queued runs with ModelUnavailable, lets running ones finish, then releases
 *   every session and waits for every thread to exit. `counters` proves it afterwards. From the
 *   moment it starts closing, `load` fails with ModelUnavailable ("the model pool is closing"),
 *   and a load under way has its hosts waited for and closed with the others.
 * - `run` waits in FIFO order for a free instance of the model. Interrupting it returns at once
 *   (the instance stays busy until its native run ends, and the late reply is dropped), but for a
 *   job sent ahead to a busy worker: it returns once the worker has skipped it (`InstancePool`).
 * - A crashed worker fails only its own request (RunFailed) and is replaced. With process
 *   isolation that includes native crashes, and a run still going `killGraceMs` after its
 *   `timeout` (`ModelPool.RunOptions`) is killed with its process (RunFailed) and replaced.
 * - Execution providers are tried in the configured order, then CPU; `RunOutput.deviceUsed`
 *   and `info` tell which one runs, `info`'s `fallbacks` why the ones before it did not (one line
 *   each), and a warning is logged. GPU models run in child processes unless config.json says
 *   otherwise (`ModelRepository.defaultIsolation`); several GPU models in threads get a warning
 *   (their runs take turns on the process's `DeviceLock`).
 *   A model that runs on a GPU batches fuller by default (`gpuBatching`); how full a batching
 *   model's runs are goes to the `inference_batch_fill_ratio` histogram (`batchFill`).
 * - config.json's `batching` section is resolved (`BatchPolicy.resolve`) against the signature
 *   the session reports and returned in `metadata`; without one, batching is on exactly when
 *   every input and output has a dynamic dim on axis 0. Its `inputSignatures` are checked the
 *   same way (`InputSignature.resolve`). An invalid section makes the model UNAVAILABLE.
 *
 * @module OnnxModelPool
 */
import { Context, Duration, Effect, Latch, Layer, Metric, type Scope, Semaphore } from "effect"
import * as Batch from "../Batch.ts"
import * as BatchPolicy from "../BatchPolicy.ts"
import * as Warmup from "../Warmup.ts"
import * as Classification from "../Classification.ts"
import * as InferenceError from "../InferenceError.ts"
import * as InputSignature from "../InputSignature.ts"
import * as ModelMetadata from "../ModelMetadata.ts"
import { ModelPool, type ModelStatus, type RunOptions as ModelPoolRunOptions, type Service as ModelPoolService } from "../ModelPool.ts"
import * as ModelRepository from "../ModelRepository.ts"
import * as Sequence from "../Sequence.ts"
import type * as Tensor from "../Tensor.ts"
import * as InstancePool from "./InstancePool.ts"
import * as ProcessHost from "./ProcessHost.ts"
import type * as Protocol from "./Protocol.ts"
import * as WorkerHost from "./WorkerHost.ts"

export interface Options {
  /** The repository root (see `ModelRepository`). */
  readonly repository: string
  /** Defaults for models without (or with a partial) config.json; otherwise `ModelRepository.defaults()`. */
  readonly defaults?: ModelRepository.DefaultsOverrides | undefined
  /**
   * How instances are started, by isolation: default `WorkerHost.transport` and
   * `ProcessHost.transport`. Tests substitute transports whose instances take failure-injecting
   * operations through the ordinary run path (`test/fixtures/TestOps.ts`).
   */
  readonly transports?: Partial<Record<InstancePool.Isolation, InstancePool.Transport>> | undefined
  /**
   * How long closing (an unload, a reload, the end of the scope) waits for an instance to finish
   * before `terminate()` (a thread) or SIGKILL (a process). Default 60 seconds. A thread still
   * running a job then is not terminated (that would abort the whole process, exit 134): it is
   * left to finish its run and exit after the close has returned (`counters.workersLeftRunning`);
   * `process.exit` while it runs still aborts, so a program that ends with it (`NodeRuntime.runMain`
   * after a signal does) waits on `awaitLeftRunning` first, as the server and CLI do.
   */
  readonly closeTimeout?: Duration.Input | undefined
  /** Replacement attempts for a crashed instance (default 5). */
  readonly respawnAttempts?: number | undefined
  /**
   * Triton's model control mode: "none" (default) loads every model at start and offers no
   * `load`/`unload`; "explicit" loads only `loadModels` at start (the others are UNAVAILABLE,
   * "unloaded") and offers `load` and `unload`; `models` also lists, as UNAVAILABLE "unloaded",
   * the model directories added to the repository since (from a scan at most a second old).
   * "poll" loads every model at start, lists models as "explicit" does, and offers `load`,
   * `unload` and `poll` for a poller that follows the repository (`RepositoryPoll`).
   */
  readonly modelControl?: "none" | "explicit" | "poll" | undefined
  /** The models loaded at start under explicit model control; `["*"]`: every model (Triton's wildcard). */
  readonly loadModels?: ReadonlyArray<string> | undefined
}

/** A model version's state with what the runtime reports about it. */
export interface ModelInfo extends ModelStatus {
  /** The provider its sessions run on (READY only). */
  readonly deviceUsed?: string
  /** Providers that were requested but could not load. */
  readonly fallbacks?: ReadonlyArray<Protocol.Fallback>
  /** Where its sessions run (READY only). */
  readonly isolation?: InstancePool.Isolation
  readonly stats?: InstancePool.Stats
  /** The OS process ids of its instances (process isolation only). */
  readonly pids?: ReadonlyArray<number>
}

/** `ModelPool.RunOptions`, for `run` and `test`. */
export type RunOptions = ModelPoolRunOptions

export interface Service extends ModelPoolService {
  /** `ModelPool.run`, whose output also carries `runMs`, the native run's own time in the worker. */
  readonly run: (
    modelId: string,
    inputs: Tensor.TensorMap,
    options: RunOptions
  ) => Effect.Effect<InstancePool.RunResult, InferenceError.RunFailed | InferenceError.ModelNotFound | InferenceError.ModelUnavailable>
  /** The repository as scanned. */
  readonly repository: ModelRepository.ModelRepository
  /** `models`, with providers and instance stats. */
  readonly info: Effect.Effect<ReadonlyArray<ModelInfo>>
  /** A model version's instance stats; undefined when it is not loaded. */
  readonly stats: (modelId: string, version?: string) => InstancePool.Stats | undefined
  /** Lifetime counters of instances (threads and processes) and sessions; still readable after the scope closed. */
  readonly counters: Readonly<InstancePool.Counters>
}

/** The pool with its extras (`info`, `stats`, `counters`), for tests and operators. */
export class OnnxModelPool extends Context.Service<OnnxModelPool, Service>()("effect-onnx/OnnxModelPool") {}

type Loaded =
  | { readonly _tag: "Ready"; readonly host: InstancePool.InstancePool; readonly metadata: ModelMetadata.ModelMetadata }
  | { readonly _tag: "Unavailable"; readonly reason: string }

type Ready = Extract<Loaded, { readonly _tag: "Ready" }>

const isError = (
  u: Ready | InferenceError.ModelNotFound | InferenceError.ModelUnavailable
): u is InferenceError.ModelNotFound | InferenceError.ModelUnavailable =>
  u instanceof InferenceError.ModelNotFound || u instanceof InferenceError.ModelUnavailable

const key = (name: string, version: string) => `${name}\u0000${version}`

const byNameThenVersion = (a: ModelRepository.Entry, b: ModelRepository.Entry) =>
  a.name < b.name ? -1 : a.name > b.name ? 1 : Number(BigInt(a.version) - BigInt(b.version))

/**
 * How full a batching model's native runs are: rows in the run over its `maxBatchSize` (1 = a full
 * batch), one observation per run, labelled `model` and `version`. On `/metrics` as `inference_batch_fill_ratio`.
 * For a GPU model, whose run costs about 1 ms however small, runs well below 1 at high load mean the
 * batch policy sends too early.
 */
export const batchFill = Metric.histogram("inference_batch_fill_ratio", {
  description: "Rows per native run over the model's maxBatchSize (1 = full), batching models only",
  boundaries: [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1]
})

/** Rows in a batching model's run: the dim on the batch axis of its first batched input (0 when none). */
export const rowsOf = (inputs: Tensor.TensorMap, batching: BatchPolicy.BatchingConfig): number => {
  for (const [name, tensor] of Object.entries(inputs)) {
    const axis = Batch.axisOf(batching.inputAxes, name)
    if (axis !== null && axis < tensor.dims.length) return tensor.dims[axis]!
  }
  return 0
}

/**
 * Waits until every worker thread that a close left inside its native run (in any pool of this
 * process) has finished and exited; at once when none is. Unbounded: a native run cannot be
 * stopped. Run it after the pool's layer has closed and before `process.exit`, which would abort
 * the process (134) while such a thread runs.
 */
export const awaitLeftRunning: Effect.Effect<void> = InstancePool.awaitLeftRunning

/** `maxBatchSize` of a model that runs on a GPU when config.json's `batching` leaves it out (64 on the CPU). */
export const gpuMaxBatchSize = 256

/** `maxQueueDelayMs` of a model that runs on a GPU when config.json's `batching` leaves it out (0 on the CPU). */
export const gpuMaxQueueDelayMs = 2

/**
 * config.json's `batching` for a model whose sessions run on a GPU: what it leaves out favours
 * full batches, since a WebGPU run costs about 1 ms however few its rows (measured on an H200:
 * 1.2 ms for 1 row, 2.4 ms for 256 of a 25M-parameter MLP). Up to `gpuMaxBatchSize` rows, within
 * `gpuMaxQueueDelayMs` (about one such run), with learned sizing unless it lists
 * `preferredBatchSizes` or sets `sizing`: a forming batch takes rows until the GPU is about to free,
 * then goes once it has the rows to keep up (`BatchPolicy.decide`). It still goes at once when the
 * model is idle, for a Critical request, or when waiting would miss a member's deadline. Learned
 * sizing's throughput was never more than 5% below the 2 ms delay alone's in the simulation of
 * `bench/sizing.ts` (its median latency at most 1.11× there), and 1.2-1.5× it on this project's
 * 2-vCPU machine with a model in two child processes;
 * not yet measured through the engine on a GPU (`bench gpu` compares both there).
 */
export const gpuBatching = (json: BatchPolicy.ConfigJson | undefined): BatchPolicy.ConfigJson => ({
  ...json,
  maxBatchSize: json?.maxBatchSize ?? gpuMaxBatchSize,
  maxQueueDelayMs: json?.maxQueueDelayMs ?? gpuMaxQueueDelayMs,
  sizing: json?.sizing ?? ((json?.preferredBatchSizes?.length ?? 0) > 0 ? "fixed" : "learned")
})

/** What loading a model version needs, and the hosts it started (the pool's finalizer closes them). */
interface Loader {
  readonly options: Options
  readonly counters: InstancePool.Counters
  readonly transports: Record<InstancePool.Isolation, InstancePool.Transport>
  readonly closeTimeout: Duration.Duration
  readonly hosts: Array<InstancePool.InstancePool>
  /** Set when the pool's finalizer starts: no host starts after it. */
  closing: boolean
  /** Hosts being started; the finalizer waits for them (`started` is open when there are none). */
  starting: number
  readonly started: Latch.Latch
  /** Loads after the start that served, or failed, in all and by model (`ModelPool.modelLoads`). */
  readonly loads: { succeeded: number; failed: number; readonly byModel: Map<string, { succeeded: number; failed: number }> }
}

const closingReason = "the model pool is closing"

/** The pool's mutable state: the repository (the startup scan, with each `load`ed model's versions swapped in), each version's state, the models being unloaded. */
interface State {
  repository: ModelRepository.ModelRepository
  readonly loaded: Map<string, Loaded>
  /** Models being unloaded: they admit nothing more. */
  readonly unloading: Set<string>
  /** Models being loaded, with the versions the load found on disk (those that do not serve yet are LOADING in the index). */
  readonly loading: Map<string, ReadonlyArray<string>>
}

/** Several GPU models in worker threads take turns on the device, and a native crash would end the server: say so. */
const warnGpuThreads = (repository: ModelRepository.ModelRepository): Effect.Effect<void> => {
  const threadGpu = repository.entries.filter((e): e is ModelRepository.Found =>
    e._tag === "Found" && e.config.isolation === "thread" && ModelRepository.requestsGpu(e.config.executionProviders)
  )
  if (threadGpu.length <= 1) return Effect.void
  return Effect.logWarning(
    `${threadGpu.map((e) => `${e.name} version ${e.version}`).join(", ")} request a GPU with isolation "thread": their WebGPU runs take turns ` +
      `(DeviceLock: concurrent runs in worker threads of one process crashed it with SIGSEGV on an NVIDIA host), and a native crash ` +
      `would end the server; use isolation "process" (the default for GPU models) to run them side by side and contain a crash`
  )
}

/** Closes a host and forgets it (its runs still going finish first). */
const release = (
  loader: Loader,
  host: InstancePool.InstancePool,
  /** A reload: its waiting runs move to `next` (`InstancePool.closeInto`), or fail with `reason`. */
  handOver?: { readonly next: InstancePool.InstancePool | undefined; readonly reason: string }
): Effect.Effect<void> =>
  Effect.andThen(handOver === undefined ? host.close : host.closeInto(handOver.next, handOver.reason), Effect.sync(() => {
    const i = loader.hosts.indexOf(host)
    if (i >= 0) loader.hosts.splice(i, 1)
  }))

/** Why config.json's labels do not fit the model: a label file for an output it does not have, or for one that is not numeric. */
const labelsConflict = (labels: ModelRepository.ModelConfig["labels"], metadata: ModelMetadata.ModelMetadata): Effect.Effect<void, string> => {
  for (const output of Object.keys(labels ?? {})) {
    const spec = metadata.outputs.find((s) => s.name === output)
    if (spec === undefined) return Effect.fail(`labels: the model has no output ${JSON.stringify(output)} (its outputs: ${metadata.outputs.map((s) => s.name).join(", ")})`)
    if (!Classification.supports(spec.dtype)) return Effect.fail(`labels: output ${JSON.stringify(output)} is not numeric (${spec.dtype}): it cannot be classified`)
  }
  return Effect.void
}

/** config.json's `sequenceBatching` checked against the loaded model (`Sequence.resolve`); undefined without one. */
const sequenceOf = (config: Sequence.Config | undefined, metadata: ModelMetadata.ModelMetadata): Effect.Effect<Sequence.Resolved | undefined, string> => {
  if (config === undefined) return Effect.succeed(undefined)
  const resolved = Sequence.resolve(config, metadata)
  return typeof resolved === "string" ? Effect.fail(resolved) : Effect.succeed(resolved)
}

/**
 * Why config.json's warm-up does not fit the model's batching: a sample of more rows (its
 * `batchSize`, or what its `dims` give) than any batch the engine runs, as Triton refuses it.
 * Known only once the model loaded (and its instances ran the warm-up): the batching is resolved then.
 */
const warmupConflict = (
  config: ModelRepository.ModelConfig,
  metadata: ModelMetadata.ModelMetadata,
  batching: BatchPolicy.BatchingConfig
): Effect.Effect<void, string> => {
  if (config.warmup === undefined || !batching.enabled) return Effect.void
  const plan = warmupOf(config.warmup, config)
  for (const sample of plan.samples) {
    const rows = Warmup.rows(sample, metadata.inputs, plan.inputAxes)
    if (rows > batching.maxBatchSize) {
      return Effect.fail(`warmup sample ${JSON.stringify(sample.name)}: ${rows} rows, above batching.maxBatchSize ${batching.maxBatchSize}, more than any run the engine makes`)
    }
  }
  return Effect.void
}

/**
 * The metadata a started host serves under: config.json's batching, inputSignatures and labels
 * sections checked against the signature the session reports (without a batching section,
 * batching is on exactly when every input and output has a dynamic batch dim), and its warmup's
 * batch sizes against the batching. On a bad section
 * the host is released (closed and dropped from `loader.hosts`) and it fails with
 * `config.json: <reason>`.
 */
const configure = (loader: Loader, entry: ModelRepository.Found, host: InstancePool.InstancePool): Effect.Effect<Ready, string> => {
  const gpu = ModelRepository.isGpuProvider(host.deviceUsed)
  return Effect.all([
    BatchPolicy.resolve(gpu ? gpuBatching(entry.config.batching) : entry.config.batching, host.metadata),
    InputSignature.resolve(entry.config.inputSignatures, host.metadata),
    labelsConflict(entry.config.labels, host.metadata),
    sequenceOf(entry.config.sequenceBatching, host.metadata)
  ]).pipe(
    Effect.tap(([batching]) => warmupConflict(entry.config, host.metadata, batching)),
    Effect.map(([batching, signatures, , sequence]): Ready => ({
      _tag: "Ready",
      host,
      metadata: {
        ...host.metadata,
        batching,
        defaultPriority: entry.config.defaultPriority,
        ...(entry.config.maxQueuedRequests === undefined ? {} : { maxQueuedRequests: entry.config.maxQueuedRequests }),
        concurrency: entry.config.instances,
        ...(entry.config.versionPolicy._tag === "All" ? {} : { versionPolicy: entry.config.versionPolicy }),
        ...(entry.config.warmup === undefined ? {} : { warmup: warmupOf(entry.config.warmup, entry.config) }),
        ...(entry.config.responseCache ? { responseCache: true } : {}),
        ...(sequence === undefined ? {} : { sequence }),
        pipelineDepth: host.depth,
        reportsStarts: true,
        // A process can be killed mid-run (after `killGraceMs`); a thread cannot.
        ...(host.isolation === "process" ? { stopsAbandonedRuns: true } : {}),
        deviceUsed: host.deviceUsed,
        // Every instance's WebGPU device is the same GPU: their runs queue for it.
        ...(gpu ? { devices: 1 } : {}),
        ...(signatures === undefined ? {} : { signatures }),
        ...(entry.config.labels === undefined
          ? {}
          : { labels: entry.config.labels, labelFiles: entry.config.raw["labels"] as Readonly<Record<string, string>> })
      }
    })),
    Effect.catch((reason) => Effect.andThen(release(loader, host), Effect.fail(`config.json: ${reason}`)))
  )
}

/** What each instance of a model runs before it serves: config.json's `warmup` samples, each input on its `batching.inputAxes` axis. */
const warmupOf = (samples: ReadonlyArray<Warmup.Sample>, config: ModelRepository.ModelConfig): Warmup.Plan => ({
  samples,
  inputAxes: config.batching?.inputAxes ?? {}
})

/** Warns of each version a model's `versionPolicy` names that has no directory (skipped, as Triton's). */
const warnMissing = (notServed: ModelRepository.NotServed): Effect.Effect<void> =>
  Effect.forEach(notServed.missing, (version) =>
    Effect.logWarning(`model ${notServed.name}: versionPolicy ${notServed.policy} names version ${version}, but no version directory ${version}/ is present`), { discard: true })

/** Says which version directories a model's `versionPolicy` leaves out (at info: the operator chose it), once they are not served. */
const announceLeftOut = (notServed: ModelRepository.NotServed): Effect.Effect<void> =>
  notServed.leftOut.length === 0
    ? Effect.void
    : Effect.logInfo(`model ${notServed.name}: versionPolicy ${notServed.policy} leaves out version(s) ${notServed.leftOut.join(", ")}; they are not loaded`)

/** Logs a version READY, as a warning when a requested provider fell back. */
const announceReady = (entry: ModelRepository.Found, host: InstancePool.InstancePool): Effect.Effect<void> => {
  const warmup = entry.config.warmup === undefined
    ? ""
    : `, warm-up of ${Warmup.runs(entry.config.warmup)} run(s) in ${host.warmupMs.toFixed(1)} ms`
  const line = `model ${entry.name} version ${entry.version} is READY on ${host.deviceUsed} (${entry.config.instances} instance(s), ${host.isolation} isolation, ${entry.config.intraOpNumThreads} intra-op thread(s)${warmup})`
  return host.fallbacks.length === 0
    ? Effect.logInfo(line)
    : Effect.logWarning(`${line} after falling back: ${host.fallbacks.map((f) => f.error.split("\n")[0]).join("; ")}`)
}

/** Loads one model version (never fails: a failure is an Unavailable state); the hosts it starts belong to `loader.hosts`. */
const loadEntry = (loader: Loader, entry: ModelRepository.Entry): Effect.Effect<Loaded> => {
  const unavailable = (reason: string) =>
    Effect.as(
      Effect.logWarning(`model ${entry.name} version ${entry.version} is UNAVAILABLE: ${reason}`),
      { _tag: "Unavailable", reason } as const
    )
  if (entry._tag === "Unavailable") return unavailable(entry.reason)
  const options: InstancePool.Options = {
    modelId: entry.name,
    version: entry.version,
    path: entry.path,
    instances: entry.config.instances,
    executionProviders: entry.config.executionProviders,
    intraOpNumThreads: entry.config.intraOpNumThreads,
    interOpNumThreads: entry.config.interOpNumThreads,
    closeTimeout: loader.closeTimeout,
    counters: loader.counters,
    respawnAttempts: loader.options.respawnAttempts,
    killGrace: Duration.millis(entry.config.killGraceMs),
    loadTimeout: Duration.millis(entry.config.loadTimeoutMs),
    identify: () => ModelRepository.fileIdentity(entry.path),
    ...(entry.config.warmup === undefined ? {} : { warmup: warmupOf(entry.config.warmup, entry.config) })
  }
  // Refused once the pool closes; otherwise counted before the start and registered when it
  // ends, in one uninterruptible step: the finalizer waits for every start counted, then closes
  // every host registered, so none escapes it. The wait while its instances load is as
  // interruptible as the caller (the server's start, yes; a `load`, no), and an interrupted
  // start owns nothing (`InstancePool.start`).
  const start = Effect.uninterruptibleMask((restore) => {
    if (loader.closing) return Effect.fail(closingReason)
    loader.starting++
    loader.started.closeUnsafe()
    return InstancePool.start(options, loader.transports[entry.config.isolation], restore).pipe(
      Effect.tap((host) => Effect.sync(() => loader.hosts.push(host))),
      Effect.mapError((e) => e.reason),
      Effect.ensuring(Effect.sync(() => {
        if (--loader.starting === 0) loader.started.openUnsafe()
      }))
    )
  })
  return start.pipe(
    // started while the pool began closing: the finalizer closes it
    Effect.filterOrFail(() => !loader.closing, () => closingReason),
    Effect.flatMap((host) => configure(loader, entry, host)),
    Effect.matchEffect({
      onFailure: unavailable,
      onSuccess: (ready) => Effect.as(announceReady(entry, ready.host), ready)
    })
  )
}

/**
 * A load in which some version failed, all or nothing as Triton's: none of the new versions
 * serves (those that loaded are closed). A model that had a version serving keeps every version
 * as it was (entries and hosts unchanged); one that served nothing lists each new version
 * UNAVAILABLE, with its own reason or the failed versions'. Fails with the reasons.
 */
const refuseLoad = (
  loader: Loader,
  state: State,
  name: string,
  fresh: ReadonlyArray<ModelRepository.Entry>,
  states: ReadonlyArray<Loaded>,
  old: ReadonlyArray<{ readonly version: string; readonly loaded: Loaded | undefined }>,
  failures: ReadonlyArray<{ readonly version: string; readonly reason: string }>
): Effect.Effect<never, InferenceError.ModelUnavailable> =>
  Effect.gen(function*() {
    yield* Effect.forEach(states, (s) => (s._tag === "Ready" ? release(loader, s.host) : Effect.void), { concurrency: "unbounded", discard: true })
    const reasons = failures.map((f) => `version ${f.version}: ${f.reason}`).join("; ")
    const serving = old.filter((o) => o.loaded?._tag === "Ready").map((o) => `version ${o.version}`)
    if (serving.length > 0) {
      const keeps = serving.length === 1 ? "keeps" : "keep"
      yield* Effect.logWarning(`model ${name}: the reload failed, and ${serving.join(", ")} ${keeps} serving as loaded before: ${reasons}`)
      return yield* new InferenceError.ModelUnavailable({
        modelId: name,
        reason: `the reload failed (${reasons}); the version${serving.length === 1 ? "" : "s"} loaded before ${keeps} serving`
      })
    }
    yield* Effect.logWarning(`model ${name}: the load failed, and no version of it serves (a load is all or nothing): ${reasons}`)
    for (const e of ModelRepository.versionsOf(state.repository, name)) state.loaded.delete(key(e.name, e.version))
    const notLoaded = `not loaded: the load failed (${reasons}), and a load is all or nothing`
    fresh.forEach((e, i) => state.loaded.set(key(e.name, e.version), states[i]!._tag === "Ready" ? { _tag: "Unavailable", reason: notLoaded } : states[i]!))
    state.repository = { ...state.repository, entries: [...state.repository.entries.filter((e) => e.name !== name), ...fresh].sort(byNameThenVersion) }
    return yield* new InferenceError.ModelUnavailable({ modelId: name, reason: fresh.length === 1 ? failures[0]!.reason : reasons })
  })

/**
 * Scans the repository again and loads `name`'s versions as found; once they are loaded they
 * serve, and the old versions' hosts finish what they run, then close. Runs waiting in an old
 * host (never sent to an instance) move to the same version's new host when it takes the same
 * inputs in the same isolation; otherwise they fail with ModelUnavailable saying the model was
 * reloaded (retryable). All or nothing, as Triton's load: when any version fails, none of the
 * new ones serves, a model that was serving keeps serving as it was loaded (`refuseLoad`), and
 * the load fails with the reasons. Fails too when the model is not on disk (nothing changes).
 */
const load = (loader: Loader, state: State, name: string): Effect.Effect<void, InferenceError.ModelNotFound | InferenceError.ModelUnavailable> =>
  Effect.gen(function*() {
    if (!ModelRepository.isValidModelName(name)) return yield* new InferenceError.ModelNotFound({ modelId: String(name) })
    const refuseClosing = Effect.suspend(() =>
      loader.closing ? Effect.fail(new InferenceError.ModelUnavailable({ modelId: name, reason: closingReason })) : Effect.void
    )
    yield* refuseClosing
    const scanned = yield* ModelRepository.scan(loader.options.repository, { defaults: loader.options.defaults }).pipe(
      Effect.mapError((e) => new InferenceError.ModelUnavailable({ modelId: name, reason: e.message }))
    )
    // As at start: a directory of this model that is not a version is named in a warning.
    for (const ignored of scanned.ignored) {
      if (ignored.name.startsWith(`${name}/`)) yield* Effect.logWarning(`model repository: ignoring ${JSON.stringify(ignored.name)}: ${ignored.reason}`)
    }
    const notServed = scanned.notServed.filter((n) => n.name === name)
    yield* Effect.forEach(notServed, warnMissing, { discard: true })
    const fresh = ModelRepository.versionsOf(scanned, name)
    if (fresh.length === 0) return yield* new InferenceError.ModelNotFound({ modelId: name })
    yield* refuseClosing
    state.loading.set(name, fresh.map((e) => e.version))
    const states = yield* Effect.forEach(fresh, (entry) => loadEntry(loader, entry), { concurrency: "unbounded" }).pipe(
      Effect.ensuring(Effect.sync(() => state.loading.delete(name)))
    )
    // The pool began closing while they loaded: the finalizer closes their hosts, and nothing is swapped.
    yield* refuseClosing
    const old = ModelRepository.versionsOf(state.repository, name).map((e) => ({ version: e.version, loaded: state.loaded.get(key(e.name, e.version)) }))
    state.unloading.delete(name)
    const failures = fresh.flatMap((e, i) => {
      const now = states[i]!
      return now._tag === "Unavailable" ? [{ version: e.version, reason: now.reason }] : []
    })
    let byModel = loader.loads.byModel.get(name)
    if (byModel === undefined) loader.loads.byModel.set(name, byModel = { succeeded: 0, failed: 0 })
    if (failures.length > 0) {
      loader.loads.failed++
      byModel.failed++
      return yield* refuseLoad(loader, state, name, fresh, states, old, failures)
    }
    loader.loads.succeeded++
    byModel.succeeded++
    // Said only now: a load that fails leaves what served, left-out versions included.
    yield* Effect.forEach(notServed, announceLeftOut, { discard: true })
    // The swap: the new versions serve from here on; the old hosts finish what they run, then go.
    for (const e of ModelRepository.versionsOf(state.repository, name)) state.loaded.delete(key(e.name, e.version))
    fresh.forEach((e, i) => state.loaded.set(key(e.name, e.version), states[i]!))
    state.repository = { ...state.repository, entries: [...state.repository.entries.filter((e) => e.name !== name), ...fresh].sort(byNameThenVersion) }
    // A run still waiting in an old host (never sent) moves to the same version's new host, or fails saying why it cannot.
    yield* Effect.forEach(old, ({ loaded, version }) => {
      if (loaded?._tag !== "Ready") return Effect.void
      const next = ModelRepository.lookup(state.repository, name, version)
      const now = next === undefined ? undefined : state.loaded.get(key(next.name, next.version))
      const reason = now === undefined ? `the model was reloaded without version ${version}` : "the model was reloaded while this run waited"
      return release(loader, loaded.host, { next: now?._tag === "Ready" ? now.host : undefined, reason })
    }, { concurrency: "unbounded", discard: true })
  }).pipe(Effect.withSpan("OnnxModelPool.load", { attributes: { model: name } }))

/** Stops `name` admitting, waits for `drained`, then closes its hosts. Runs in the model's turn (`inTurn`): no load of it runs meanwhile. */
const unload = (loader: Loader, state: State, name: string, drained: Effect.Effect<void>): Effect.Effect<void, InferenceError.ModelNotFound> =>
  Effect.gen(function*() {
    const versions = ModelRepository.versionsOf(state.repository, name)
    if (versions.length === 0) return yield* new InferenceError.ModelNotFound({ modelId: name })
    state.unloading.add(name)
    yield* drained
    if (!state.unloading.has(name)) return // loaded meanwhile (a load and an unload of one model take turns: kept as a guard)
    const states = versions.map((e) => state.loaded.get(key(e.name, e.version)))
    for (const e of versions) state.loaded.set(key(e.name, e.version), { _tag: "Unavailable", reason: "unloaded" })
    state.unloading.delete(name)
    yield* Effect.forEach(states, (s) => (s?._tag === "Ready" ? release(loader, s.host) : Effect.void), { concurrency: "unbounded", discard: true })
    yield* Effect.logInfo(`model ${name} unloaded`)
  }).pipe(Effect.withSpan("OnnxModelPool.unload", { attributes: { model: name } }))

/** The loaded model serving `entry`, or why it cannot serve. */
const resolveEntry = (state: State, modelId: string, entry: ModelRepository.Entry): Ready | InferenceError.ModelUnavailable => {
  const loaded = state.loaded.get(key(entry.name, entry.version))
  if (loaded === undefined) return new InferenceError.ModelUnavailable({ modelId, reason: "not loaded" })
  if (loaded._tag === "Unavailable") {
    return new InferenceError.ModelUnavailable({ modelId, reason: loaded.reason, ...(loaded.reason === "unloaded" ? { unloaded: true } : {}) })
  }
  const reason = loaded.host.unavailableReason()
  return reason === undefined ? loaded : new InferenceError.ModelUnavailable({ modelId, reason })
}

/**
 * The loaded model serving `modelId` at `version`, or why not. Without a version, the highest
 * version that can serve, as Triton picks it: a higher one that failed to load does not take the
 * model down while a lower one is ready; when none is, the highest one's reason.
 */
const resolveModel = (
  state: State,
  modelId: string,
  version: string | undefined
): Ready | InferenceError.ModelNotFound | InferenceError.ModelUnavailable => {
  // `String`: a name or version of another type (plain JavaScript) is not found, not a defect of the error's own schema.
  if (!ModelRepository.isValidModelName(modelId) || (version !== undefined && typeof version !== "string")) {
    return new InferenceError.ModelNotFound(version === undefined ? { modelId: String(modelId) } : { modelId: String(modelId), version: String(version) })
  }
  if (version !== undefined) {
    const entry = ModelRepository.lookup(state.repository, modelId, version)
    return entry === undefined ? new InferenceError.ModelNotFound({ modelId, version }) : resolveEntry(state, modelId, entry)
  }
  const versions = ModelRepository.versionsOf(state.repository, modelId)
  if (versions.length === 0) return new InferenceError.ModelNotFound({ modelId })
  const highest = resolveEntry(state, modelId, versions[versions.length - 1]!)
  if (!isError(highest)) return highest
  for (let i = versions.length - 2; i >= 0; i--) {
    const lower = resolveEntry(state, modelId, versions[i]!)
    if (!isError(lower)) return lower
  }
  return highest
}

/** `f` of the model, or the reason there is none. */
const withModel = <A, E>(
  model: Ready | InferenceError.ModelNotFound | InferenceError.ModelUnavailable,
  f: (model: Ready) => Effect.Effect<A, E>
): Effect.Effect<A, E | InferenceError.ModelNotFound | InferenceError.ModelUnavailable> => (isError(model) ? Effect.fail(model) : f(model))

/**
 * `resolveModel` for a run the engine admitted against `runOptions.admittedAs`: ModelUnavailable
 * (retryable) when a load has since removed that version, or reloaded it with other inputs or
 * outputs, rather than run inputs the model no longer takes (Triton lets such requests finish on
 * the old model; here its hosts are gone, so the caller is told to send again).
 */
const resolveAdmitted = (
  state: State,
  modelId: string,
  runOptions: ModelPoolRunOptions
): Ready | InferenceError.ModelNotFound | InferenceError.ModelUnavailable => {
  const model = resolveModel(state, modelId, runOptions.version)
  const admitted = runOptions.admittedAs
  if (admitted === undefined) return model
  const changed = isError(model)
    ? model instanceof InferenceError.ModelNotFound ? `it was reloaded without version ${admitted.version} while this request waited` : undefined
    : ModelMetadata.sameSignature(model.metadata, admitted)
    ? undefined
    : `version ${admitted.version} was reloaded with other inputs or outputs while this request waited`
  return changed === undefined ? model : new InferenceError.ModelUnavailable({ modelId, reason: `${changed}; send it again` })
}

/**
 * One model's loads and unloads take turns, in the order asked (as Triton's): an unload asked
 * while a load of the model runs waits for it, so the model ends as the last one asked says, not
 * as the slower one finished. A model's turn is dropped once nobody holds or waits for it.
 */
const makeTurns = () => {
  const turns = new Map<string, { readonly semaphore: Semaphore.Semaphore; users: number }>()
  return <A, E>(name: string, effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    Effect.suspend(() => {
      let turn = turns.get(name)
      if (turn === undefined) turns.set(name, turn = { semaphore: Semaphore.makeUnsafe(1), users: 0 })
      const held = turn
      held.users++
      return Effect.ensuring(
        held.semaphore.withPermits(1)(effect),
        Effect.sync(() => {
          if (--held.users === 0) turns.delete(name)
        })
      )
    })
}

/** Every version in the repository with its state, provider, isolation and instance stats. */
const infoOf = (state: State): ReadonlyArray<ModelInfo> =>
  state.repository.entries.map((entry) => {
    const loaded = state.loaded.get(key(entry.name, entry.version))
    const base = { name: entry.name, version: entry.version }
    if (loaded === undefined || loaded._tag === "Unavailable") {
      return { ...base, state: "UNAVAILABLE", reason: loaded?.reason ?? (entry._tag === "Unavailable" ? entry.reason : "not loaded") }
    }
    const reason = loaded.host.unavailableReason()
    const { host } = loaded
    const extra = {
      deviceUsed: host.deviceUsed,
      fallbacks: host.fallbacks,
      isolation: host.isolation,
      stats: host.stats(),
      ...(host.isolation === "process" ? { pids: host.pids() } : {})
    }
    return reason === undefined ? { ...base, state: "READY", ...extra } : { ...base, state: "UNAVAILABLE", reason, ...extra }
  })

/** How long one scan for `unseen` answers `models` (a load or an unload rescans at once). */
const unseenTtl = Duration.seconds(1)

/**
 * Explicit model control, from a scan of the repository now: the model versions on disk that were
 * never loaded (a directory added after start), as Triton's index lists them (UNAVAILABLE,
 * "unloaded"), and the versions on disk of each model (undefined when the scan failed), so that a
 * model none of whose versions is loaded is listed as it is on disk now (a version directory
 * added or removed since), and one whose directory has gone is no longer listed.
 */
const unseen = (
  loader: Loader,
  state: State
): Effect.Effect<{ readonly unseen: ReadonlyArray<ModelStatus>; readonly onDisk: ReadonlyMap<string, ReadonlyArray<string>> | undefined }> =>
  ModelRepository.scan(loader.options.repository, { defaults: loader.options.defaults }).pipe(
    Effect.map((scanned) => {
      const onDisk = new Map<string, Array<string>>()
      for (const e of scanned.entries) onDisk.set(e.name, [...(onDisk.get(e.name) ?? []), e.version])
      return {
        unseen: scanned.entries
          .filter((e) => ModelRepository.versionsOf(state.repository, e.name).length === 0)
          .map((e): ModelStatus => unloadedStatus(e.name, e.version)),
        onDisk
      }
    }),
    Effect.orElseSucceed(() => ({ unseen: [], onDisk: undefined }))
  )

/**
 * The index while loads or unloads are under way, as Triton's shows it: a version being loaded
 * that does not serve yet is LOADING (one that serves stays READY until the new one takes over),
 * a version the load found on disk that was not listed yet is listed LOADING after its model's
 * others, and one that serves while its model is unloaded is UNLOADING (it drains).
 */
const inTransition = (state: State, listed: ReadonlyArray<ModelStatus>): ReadonlyArray<ModelStatus> => {
  if (state.loading.size === 0 && state.unloading.size === 0) return listed
  const loadingStatus = (name: string, version: string): ModelStatus => ({ name, version, state: "LOADING" })
  const unlisted = (name: string) =>
    (state.loading.get(name) ?? []).filter((v) => !listed.some((m) => m.name === name && ModelRepository.sameVersion(m.version, v)))
  const out: Array<ModelStatus> = []
  listed.forEach((m, i) => {
    out.push(
      m.state === "READY"
        ? (state.unloading.has(m.name) ? { name: m.name, version: m.version, state: "UNLOADING" } : m)
        : state.loading.has(m.name)
        ? loadingStatus(m.name, m.version)
        : m
    )
    if (listed[i + 1]?.name !== m.name) out.push(...unlisted(m.name).map((v) => loadingStatus(m.name, v)))
  })
  for (const name of state.loading.keys()) {
    if (!listed.some((m) => m.name === name)) out.push(...unlisted(name).map((v) => loadingStatus(name, v)))
  }
  return out
}

const unloadedStatus = (name: string, version: string): ModelStatus => ({ name, version, state: "UNAVAILABLE", reason: "unloaded" })

/**
 * The index under explicit control: the versions known (`loaded`), except that a model none of
 * whose versions is loaded is listed with the versions on disk now, then the models never seen.
 */
const explicitIndex = (
  loaded: ReadonlyArray<ModelStatus>,
  now: { readonly unseen: ReadonlyArray<ModelStatus>; readonly onDisk: ReadonlyMap<string, ReadonlyArray<string>> | undefined }
): ReadonlyArray<ModelStatus> => {
  const onDisk = now.onDisk
  if (onDisk === undefined) return loaded.concat(now.unseen)
  const someLoaded = new Set(loaded.filter((m) => m.reason !== "unloaded").map((m) => m.name))
  const listed: Array<ModelStatus> = []
  const relisted = new Set<string>()
  for (const m of loaded) {
    if (someLoaded.has(m.name)) listed.push(m)
    else if (!relisted.has(m.name)) {
      relisted.add(m.name)
      for (const version of onDisk.get(m.name) ?? []) listed.push(unloadedStatus(m.name, version))
    }
  }
  return listed.concat(now.unseen)
}

/**
 * Scans the repository and loads every model version; the current scope owns every worker.
 * Fails only when the repository root cannot be read.
 */
export const make = (options: Options): Effect.Effect<Service, ModelRepository.RepositoryError, Scope.Scope> =>
  Effect.gen(function*() {
    const repository = yield* ModelRepository.scan(options.repository, { defaults: options.defaults })
    const loader: Loader = {
      options,
      counters: InstancePool.makeCounters(),
      transports: { thread: WorkerHost.transport, process: ProcessHost.transport, ...options.transports },
      closeTimeout: Duration.fromInputUnsafe(options.closeTimeout ?? Duration.seconds(60)),
      hosts: [],
      closing: false,
      starting: 0,
      started: Latch.makeUnsafe(true),
      loads: { succeeded: 0, failed: 0, byModel: new Map() }
    }
    const state: State = { repository, loaded: new Map(), unloading: new Set(), loading: new Map() }

    // One finalizer closes every host at once (in-flight runs end in parallel, not one model after another).
    // From its start no host starts; the hosts a `load` is still starting are waited for and closed with the others.
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => void (loader.closing = true)).pipe(
        Effect.andThen(loader.started.await),
        Effect.andThen(Effect.suspend(() => Effect.forEach([...loader.hosts], (host) => host.close, { concurrency: "unbounded", discard: true }))),
        Effect.withSpan("OnnxModelPool.close")
      )
    )
    for (const name of repository.ignored) {
      yield* Effect.logWarning(`model repository: ignoring ${JSON.stringify(name.name)}: ${name.reason}`)
    }
    yield* Effect.forEach(repository.notServed, (n) => Effect.andThen(warnMissing(n), announceLeftOut(n)), { discard: true })
    yield* warnGpuThreads(repository)

    /** Explicit model control: only the models named are loaded at start; the others wait for `load`. */
    const explicit = options.modelControl === "explicit"
    /** Poll: every model loaded at start, then `load` and `unload` as the poller finds the repository changed. */
    const polled = options.modelControl === "poll"
    // Triton's `--load-model=*`: every model at start, then load and unload as under explicit control.
    const everyModel = (options.loadModels ?? []).includes("*")
    const startup = explicit && !everyModel ? new Set(options.loadModels ?? []) : undefined
    yield* Effect.forEach(repository.entries, (entry) =>
      startup !== undefined && !startup.has(entry.name)
        ? Effect.sync(() => state.loaded.set(key(entry.name, entry.version), { _tag: "Unavailable", reason: "unloaded" }))
        : Effect.flatMap(loadEntry(loader, entry), (loaded) => Effect.sync(() => state.loaded.set(key(entry.name, entry.version), loaded))), { concurrency: "unbounded", discard: true })
    for (const name of startup ?? []) {
      if (ModelRepository.versionsOf(repository, name).length === 0) yield* Effect.logWarning(`--load-model ${name}: no such model in the repository`)
    }

    const inTurn = makeTurns()
    /** Pollers registered on the poll facet (`RepositoryPoll.layer`). */
    let pollers = 0
    const info = Effect.sync(() => infoOf(state))
    const loadedModels: Effect.Effect<ReadonlyArray<ModelStatus>> = Effect.map(info, (all) =>
      all.map((m): ModelStatus => (m.reason === undefined
        ? { name: m.name, version: m.version, state: m.state }
        : { name: m.name, version: m.version, state: m.state, reason: m.reason })))
    // A scan reads every model's config.json (112 ms of CPU for 300 models), and readiness, metadata and
    // the index ask per request: one scan serves a second, or until a load or unload changes what is loaded.
    const [unseenNow, rescan] = yield* Effect.cachedInvalidateWithTTL(Effect.suspend(() => unseen(loader, state)), unseenTtl)
    /** The index: what is loaded (under explicit control, a model not loaded as it is on disk now), then what was never seen. */
    const listed: Effect.Effect<ReadonlyArray<ModelStatus>> = explicit || polled
      ? Effect.map(Effect.zip(loadedModels, unseenNow), ([loaded, now]) => inTransition(state, explicitIndex(loaded, now)))
      : loadedModels

    // one series per model, bound once (an update is then a lookup, not a context built per run)
    const fills = new Map<string, Metric.Histogram<number>>()

    const service: Service = {
      metadata: (modelId, version) =>
        state.unloading.has(modelId)
          ? Effect.fail(new InferenceError.ModelUnavailable({ modelId, reason: "unloading" }))
          : Effect.suspend(() => withModel(resolveModel(state, modelId, version), (model) => Effect.succeed(model.metadata))),
      metadataUnsafe: (modelId, version) => {
        if (state.unloading.has(modelId)) return new InferenceError.ModelUnavailable({ modelId, reason: "unloading" })
        const model = resolveModel(state, modelId, version)
        return isError(model) ? model : model.metadata
      },
      run: (modelId: string, inputs: Tensor.TensorMap, runOptions) =>
        Effect.suspend(() => withModel(resolveAdmitted(state, modelId, runOptions), (model) => {
          const run = model.host.run(inputs, runOptions.requestId, runOptions)
          const batching = model.metadata.batching
          if (batching === undefined || !batching.enabled) return run
          const key = `${modelId}@${model.metadata.version}`
          let fill = fills.get(key)
          if (fill === undefined) fills.set(key, fill = Metric.withAttributes(batchFill, { model: modelId, version: model.metadata.version }))
          return Effect.tap(run, () => Metric.update(fill, rowsOf(inputs, batching) / batching.maxBatchSize))
        })),
      runGroup: (modelId, inputs, runOptions) =>
        Effect.suspend(() => withModel(resolveAdmitted(state, modelId, runOptions), (model) => model.host.runGroup(inputs, runOptions.requestId, runOptions))),
      models: listed,
      loadedModels,
      get repository() {
        return state.repository
      },
      info,
      ...(explicit || polled
        ? {
          // Once begun, a load or an unload runs to its end though its caller leaves (an HTTP client that
          // disconnects): stopped midway, an unload left the model refusing every request as "unloading",
          // and a load left its new instances running for nothing. Waiting for the model's turn may be abandoned.
          load: (name, admit) => inTurn(name, Effect.andThen(admit ?? Effect.void, Effect.uninterruptible(Effect.ensuring(load(loader, state, name), rescan)))),
          unload: (name, drained) => inTurn(name, Effect.uninterruptible(Effect.ensuring(unload(loader, state, name, drained), rescan)))
        }
        : {}),
      ...(polled
        ? {
          poll: {
            scan: ModelRepository.scan(loader.options.repository, { defaults: loader.options.defaults }),
            loaded: () => state.repository,
            // Unlike a client's, interruptible: the poller is interrupted only as the server closes,
            // and a shutdown must not wait for a load nobody asked for (an instance may take up to
            // `loadTimeoutMs` to load). An interrupted load owns nothing: its hosts close with the pool.
            load: (name, admit) => inTurn(name, Effect.andThen(admit ?? Effect.void, Effect.ensuring(load(loader, state, name), rescan))),
            attach: () => {
              pollers++
              let attached = true
              return () => {
                if (attached) pollers--
                attached = false
              }
            },
            followed: () => pollers > 0
          }
        }
        : {}),
      stats: (modelId, version) => {
        const model = resolveModel(state, modelId, version)
        return isError(model) ? undefined : model.host.stats()
      },
      ...(explicit || polled ? { modelLoads: loader.loads } : {}),
      counters: loader.counters
    }
    return service
  }).pipe(Effect.withSpan("OnnxModelPool.make", { attributes: { repository: options.repository } }))

/** `ModelPool` backed by onnxruntime sessions in worker threads or child processes; the Layer's scope owns them. */
export const layer = (options: Options): Layer.Layer<ModelPool, ModelRepository.RepositoryError> => Layer.effect(ModelPool, make(options))

/** Both `ModelPool` and `OnnxModelPool` (the same instance), for tests and operators. */
export const layerWithControl = (options: Options): Layer.Layer<ModelPool | OnnxModelPool, ModelRepository.RepositoryError> =>
  Layer.effectContext(Effect.map(make(options), (service) => Context.make(ModelPool, service).pipe(Context.add(OnnxModelPool, service))))
