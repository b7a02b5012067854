/**
 * A model repository on disk, scanned once:
 *
 * ```
 * <root>/<model>/model.onnx              one version, reported as "1"
 * <root>/<model>/<version>/model.onnx    numeric version directories; the highest is the default
 * <root>/<model>/config.json             optional, applies to every version of the model
 * ```
 *
 * Which version directories serve is config.json's `versionPolicy` (`VersionPolicy`: all of them
 * by default); the ones it leaves out are not entries, only `notServed`.
 *
 * When a model has version directories, a `model.onnx` beside them is ignored. Two version
 * directories of one number ("01" and "1") are both unavailable, saying so (`versionConflicts`);
 * a directory that starts with a digit but is not all digits ("1a") is listed in `ignored`.
 *
 * `config.json` is decoded with Schema (`ConfigJson`); an unknown execution provider name or
 * provider option makes it invalid, and so does a GPU model in threads with several instances
 * (`configConflict`). A GPU model runs in child processes unless it says otherwise
 * (`defaultIsolation`); CPU models share the host's cores (`withHostThreadDefaults`). Its `batching`
 * section is decoded with `BatchPolicy.ConfigJson` (resolved against the model's signature once it
 * is loaded). A key it does not know (at the top level or inside `batching`) is an error, not a
 * silent default: the model is `Unavailable` with a reason that names the key and the closest
 * known one (`unknown key "batchng" (did you mean "batching"?)`).
 *
 * Model names must match `modelNamePattern`; directories that do not are listed in `ignored`, and
 * so is a Triton `config.pbtxt` without a config.json beside it (`tritonConfigFileName`).
 * Nothing is ever resolved outside the root: a model file or config.json whose real path
 * (symlinks followed) leaves the root makes the model unavailable, and nothing of it is read. A missing or empty model file, or an invalid config.json,
 * makes that model (every version of it, for the config) `Unavailable` with a reason; the other
 * models are unaffected. Whether the file is a loadable ONNX model is decided later, by the
 * runtime that loads it.
 *
 * @module ModelRepository
 */
import { Data, Effect, Schema } from "effect"
import * as Crypto from "node:crypto"
import * as FsSync from "node:fs"
import * as Fs from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as BatchPolicy from "./BatchPolicy.ts"
import * as InputSignature from "./InputSignature.ts"
import * as Priority from "./Priority.ts"
import * as VersionPolicy from "./VersionPolicy.ts"
import * as Sequence from "./Sequence.ts"
import * as Warmup from "./Warmup.ts"

/** The model repository shipped with the package (`models/`: `mlp` and `silero_vad`). The one place its path is defined. */
export const bundled: string = fileURLToPath(new URL("../models", import.meta.url))

/** Safe model names: a letter or digit, then letters, digits, `_`, `.` or `-`. No separators, no leading dot. */
export const modelNamePattern = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/

/** Longest accepted model name. */
export const maxModelNameLength = 128

/** What a valid model name is, in words, for the messages that refuse one. */
export const modelNameRule = `letters, digits, "_", "." and "-" only, starting with a letter or digit, at most ${maxModelNameLength} characters`

/** True for a name that can be a model directory in the repository (and nothing else). */
export const isValidModelName = (name: string): boolean =>
  typeof name === "string" && name.length <= maxModelNameLength && modelNamePattern.test(name)

/** Version directories: decimal digits only. */
export const versionPattern = /^[0-9]+$/

/** The model file inside a model (or version) directory. */
export const modelFileName = "model.onnx"

/** The optional per-model configuration file. */
export const configFileName = "config.json"

/**
 * Triton's model configuration, which this server does not read. A model directory copied from a
 * Triton repository (the layout is the same) that has it and no config.json is named in `ignored`,
 * so that its settings are not silently replaced by the defaults.
 */
export const tritonConfigFileName = "config.pbtxt"

const tritonConfigIgnored =
  "Triton's model configuration is not read here: its settings (max_batch_size, dynamic_batching, instance_group, …) do not apply, " +
  "the defaults do; write them as config.json (models/README.md)"

// ---------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------

const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1))
const Threads = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 256 }))

/**
 * The execution providers onnxruntime knows by name (its `ExecutionProviderOptionMap`). Which of
 * them a given build can load is decided at session creation: onnxruntime-node 1.30 for Linux x64
 * bundles "cpu" and "webgpu"; "cuda" and "tensorrt" need libraries its install script downloads.
 */
export const knownExecutionProviders: ReadonlyArray<string> = [
  "cpu", "webgpu", "cuda", "tensorrt", "coreml", "dml", "qnn", "xnnpack", "nnapi", "webnn", "wasm", "webgl"
]

/** The providers that run on a GPU through onnxruntime-node's bundled binaries (see `isGpuProvider`). */
export const gpuExecutionProviders: ReadonlyArray<string> = ["webgpu"]

const isKnownProvider = Schema.makeFilter<string>((name) =>
  knownExecutionProviders.includes(name.toLowerCase()) ||
  `unknown execution provider ${JSON.stringify(name)} (onnxruntime knows ${knownExecutionProviders.join(", ")})`
)

/**
 * An execution provider name as onnxruntime spells it (case-insensitive): one of
 * `knownExecutionProviders`. An unknown name makes config.json invalid (the model is
 * UNAVAILABLE with the reason); a known provider that cannot load here falls back at session
 * creation, with the reason in the model's `fallbacks`.
 */
export const ExecutionProviderName = Schema.String.check(Schema.isPattern(/^[A-Za-z][A-Za-z0-9_-]*$/), isKnownProvider)

type OptionCheck = (value: unknown) => string | undefined
const oneOf = (...values: ReadonlyArray<string>): OptionCheck => (v) =>
  typeof v === "string" && values.includes(v) ? undefined : `one of ${values.map((x) => JSON.stringify(x)).join(", ")}`
const isBoolean: OptionCheck = (v) => (typeof v === "boolean" ? undefined : "a boolean")
const isDeviceId: OptionCheck = (v) => (Number.isInteger(v) && (v as number) >= 0 ? undefined : "an integer >= 0")
const isNames: OptionCheck = (v) => (Array.isArray(v) && v.every((x) => typeof x === "string") ? undefined : "an array of node names")
const cacheMode = oneOf("disabled", "lazyRelease", "simple", "bucket")

/**
 * The options onnxruntime-node 1.30 takes per provider (onnxruntime-common's
 * `*ExecutionProviderOption` typings), except what JSON cannot carry (webgpu's `device`).
 */
export const providerOptions: Readonly<Record<string, Readonly<Record<string, OptionCheck>>>> = {
  cpu: { useArena: isBoolean },
  cuda: { deviceId: isDeviceId },
  tensorrt: { deviceId: isDeviceId },
  dml: { deviceId: isDeviceId },
  webgpu: {
    preferredLayout: oneOf("NCHW", "NHWC"),
    forceCpuNodeNames: isNames,
    validationMode: oneOf("disabled", "wgpuOnly", "basic", "full"),
    enableRobustness: isBoolean,
    storageBufferCacheMode: cacheMode,
    uniformBufferCacheMode: cacheMode,
    queryResolveBufferCacheMode: cacheMode,
    defaultBufferCacheMode: cacheMode
  }
}

const checkProviderObject = (o: { readonly [key: string]: unknown }): string | true => {
  const name = o["name"]
  if (typeof name !== "string") return `an execution provider object needs a "name" (one of ${knownExecutionProviders.join(", ")})`
  const lower = name.toLowerCase()
  if (!knownExecutionProviders.includes(lower)) return `unknown execution provider ${JSON.stringify(name)} (onnxruntime knows ${knownExecutionProviders.join(", ")})`
  // own keys only: an option named like an Object.prototype member ("valueOf") is unknown, not a function
  const allowed = Object.hasOwn(providerOptions, lower) ? providerOptions[lower]! : {}
  for (const [key, value] of Object.entries(o)) {
    if (key === "name") continue
    const check = Object.hasOwn(allowed, key) ? allowed[key] : undefined
    if (check === undefined) {
      const known = Object.keys(allowed)
      return `${lower}: unknown option ${JSON.stringify(key)} (${known.length === 0 ? "it takes none here" : `it takes ${known.join(", ")}`})`
    }
    const expected = check(value)
    if (expected !== undefined) return `${lower}: option ${JSON.stringify(key)} must be ${expected}`
  }
  return true
}

/** A provider with options, as onnxruntime-node takes it: `{ "name": "webgpu", "validationMode": "basic" }`. */
export const ExecutionProviderObject = Schema.Record(Schema.String, Schema.Unknown).check(Schema.makeFilter(checkProviderObject))

/** One entry of `executionProviders`: a name, or an object with `name` and that provider's options. */
export const ExecutionProvider = Schema.Union([ExecutionProviderName, ExecutionProviderObject])

/** A provider as sessions are created with it: a lower-case name, or `{ name, ...options }` (name lower-cased). */
export type ExecutionProvider = string | { readonly name: string; readonly [option: string]: unknown }

/** The provider's name, lower-cased. */
export const providerName = (p: ExecutionProvider): string => (typeof p === "string" ? p : p.name).toLowerCase()

/** True for a provider that runs on a GPU from onnxruntime-node's npm binaries ("webgpu"). */
export const isGpuProvider = (p: ExecutionProvider): boolean => gpuExecutionProviders.includes(providerName(p))

const normalizeProvider = (p: string | { readonly [key: string]: unknown }): ExecutionProvider =>
  typeof p === "string" ? p.toLowerCase() : { ...p, name: String(p["name"]).toLowerCase() }

/**
 * Where a model's sessions run. "thread": worker threads of the server process (cheapest; a
 * native crash ends the server, a run cannot be stopped). "process": one child process per
 * instance (a crash ends one child; a run past its deadline plus `killGraceMs` is killed).
 */
export const Isolation = Schema.Literals(["thread", "process"])

export type Isolation = typeof Isolation.Type

/** Longest accepted kill grace: 10 minutes. */
export const maxKillGraceMs = 600_000

const KillGraceMs = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: maxKillGraceMs }))

/** Longest `loadTimeoutMs`: a day. */
export const maxLoadTimeoutMs = 86_400_000

const LoadTimeoutMs = Schema.Int.check(Schema.isBetween({ minimum: 1_000, maximum: maxLoadTimeoutMs }))

/** A label file's name: one file in the model's directory, beside config.json (no directory part). */
const LabelFileName = Schema.String.check(
  Schema.makeFilter((name: string) =>
    name.length > 0 && name !== "." && name !== ".." && !name.includes("/") && !name.includes("\\") && !name.includes("\u0000")
      ? undefined
      : `a label file is a file name in the model's directory (no "/", "\\" or ".."), got ${JSON.stringify(name)}`)
)

/**
 * The fields of `config.json`, exported so that other modules can extend the schema
 * (`Schema.Struct({ ...ModelRepository.configFields, batching: ... })`).
 */
export const configFields = {
  /** Sessions (worker threads) for the model. */
  instances: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 64 }))),
  /** Providers to try in order, as names or `{ name, ...options }`; CPU is the fallback when none loads. */
  executionProviders: Schema.optionalKey(Schema.Array(ExecutionProvider).check(Schema.isMinLength(1))),
  /** onnxruntime intra-op threads per session. */
  intraOpNumThreads: Schema.optionalKey(Threads),
  /** onnxruntime inter-op threads per session. */
  interOpNumThreads: Schema.optionalKey(Threads),
  /** Dynamic batching (see `BatchPolicy.ConfigJson`); absent means BatchPolicy.resolve's default. */
  batching: Schema.optionalKey(BatchPolicy.ConfigJson),
  /** Where sessions run: "thread" (worker threads, the default) or "process" (child processes, killable). */
  isolation: Schema.optionalKey(Isolation),
  /** Process isolation: how long a run may outlive its request's deadline before its process is killed. */
  killGraceMs: Schema.optionalKey(KillGraceMs),
  /** How long an instance may take to load its session before it is killed and counts as a failed start. */
  loadTimeoutMs: Schema.optionalKey(LoadTimeoutMs),
  /** The priority of a request that names none (Triton's priority 0 or absent). */
  defaultPriority: Schema.optionalKey(Priority.schema),
  /** The most requests of one version that may wait at once, within the server's own bound (Triton's `max_queue_size`). */
  maxQueuedRequests: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 }))),
  /** Alternatives a request's inputs must fit, narrower than the ONNX signature (see `InputSignature`). */
  inputSignatures: Schema.optionalKey(InputSignature.ConfigJson),
  /** Class labels of outputs, for Triton's classification extension: output name → a file of one label a line, in the model's directory. */
  labels: Schema.optionalKey(Schema.Record(Schema.String, LabelFileName)),
  /** Which version directories are served (Triton's `version_policy`, see `VersionPolicy`); absent: all of them. */
  versionPolicy: Schema.optionalKey(VersionPolicy.ConfigJson),
  /** Whether the engine's response cache keeps this model's answers (Triton's `response_cache`, see `ResponseCache`). */
  responseCache: Schema.optionalKey(
    Schema.Unknown.check(Schema.makeFilter((json: unknown) =>
      (typeof json === "object" && json !== null && !Array.isArray(json) && Object.keys(json).length === 1 && typeof (json as { enable?: unknown }).enable === "boolean") ||
      `responseCache must be {"enable": true} or {"enable": false}`
    ))
  ),
  /** Runs each instance makes before it serves (Triton's `model_warmup`, see `Warmup`); absent: none. */
  warmup: Schema.optionalKey(Schema.Unknown.check(Schema.makeFilter((json: unknown) => Warmup.problem(json) ?? true))),
  /** The state kept between the requests of a sequence (Triton's `sequence_batching` with implicit state, see `Sequence`); absent: none. */
  sequenceBatching: Schema.optionalKey(Schema.Unknown.check(Schema.makeFilter((json: unknown) => Sequence.problem(json) ?? true)))
}

/** `config.json` as written. The schema itself ignores unknown keys; `decodeConfig` refuses them first (`unknownKeys`). */
export const ConfigJson = Schema.Struct(configFields)

export type ConfigJson = typeof ConfigJson.Type

/** A model's configuration with every default filled in. */
export interface ModelConfig {
  readonly instances: number
  readonly executionProviders: ReadonlyArray<ExecutionProvider>
  readonly intraOpNumThreads: number
  readonly interOpNumThreads: number
  readonly isolation: Isolation
  /** Process isolation: ms a run may outlive its deadline before its process is killed. Ignored for threads. */
  readonly killGraceMs: number
  /** Ms an instance may take to load its session before it is killed and counts as a failed start (threads and processes). */
  readonly loadTimeoutMs: number
  /** The priority of a request that names none. */
  readonly defaultPriority: Priority.Priority
  /**
   * The most requests of one version of the model that may wait at once (queued, or in a job sent
   * ahead to a busy instance); undefined: only the server's `maxQueuedRequests`, which all share.
   */
  readonly maxQueuedRequests: number | undefined
  /** config.json's `batching` section as written; undefined without one (see BatchPolicy.resolve). */
  readonly batching: BatchPolicy.ConfigJson | undefined
  /** config.json's `inputSignatures` as written (checked against the model by `InputSignature.resolve` once loaded). */
  readonly inputSignatures: InputSignature.ConfigJson | undefined
  /**
   * Class labels by output (config.json's `labels`, each file read at the scan: line i labels
   * class i); undefined without any. Checked against the model's outputs once it loaded.
   */
  readonly labels: Readonly<Record<string, ReadonlyArray<string>>> | undefined
  /** Which version directories are served (config.json's `versionPolicy`; `VersionPolicy.all` without one). */
  readonly versionPolicy: VersionPolicy.VersionPolicy
  /** Whether the engine's response cache keeps this model's answers (config.json's `responseCache.enable`; false without it). */
  readonly responseCache: boolean
  /** config.json's `warmup` samples (`Warmup`), run by every instance before it serves; undefined: none. */
  readonly warmup: ReadonlyArray<Warmup.Sample> | undefined
  /** config.json's `sequenceBatching` (`Sequence`), checked against the model once it loaded; undefined: none. */
  readonly sequenceBatching: Sequence.Config | undefined
  /** config.json as parsed (an empty object without one). */
  readonly raw: Readonly<Record<string, unknown>>
}

export type Defaults = Omit<ModelConfig, "raw" | "batching" | "inputSignatures" | "labels" | "maxQueuedRequests" | "versionPolicy" | "warmup" | "responseCache" | "sequenceBatching">

/** Defaults given in code over `defaults()`: any subset, a key set to undefined keeping its default. */
export type DefaultsOverrides = { readonly [K in keyof Defaults]?: Defaults[K] | undefined }

/** `overrides` without the keys set to undefined (which keep their defaults). */
const givenOverrides = (overrides: DefaultsOverrides): Partial<Defaults> =>
  Object.fromEntries(Object.entries(overrides).filter(([, v]) => v !== undefined)) as Partial<Defaults>

/** The operator's defaults (`scan`'s `defaults`) checked as config.json's fields are. */
const DefaultsSchema = Schema.Struct({
  instances: configFields.instances,
  executionProviders: configFields.executionProviders,
  intraOpNumThreads: configFields.intraOpNumThreads,
  interOpNumThreads: configFields.interOpNumThreads,
  isolation: configFields.isolation,
  killGraceMs: configFields.killGraceMs,
  loadTimeoutMs: configFields.loadTimeoutMs,
  defaultPriority: configFields.defaultPriority
})

/**
 * What is wrong with defaults given in code (`Live.layer`'s `modelDefaults`), on one line, or
 * undefined: the same bounds as config.json's (`instances` 1–64, …), unknown keys refused, a key
 * set to undefined taken as unset. Types let `instances: 0` through; it stopped every model's load
 * with a defect.
 */
export const defaultsProblem = (overrides: DefaultsOverrides): string | undefined => {
  const decoded = Schema.decodeUnknownResult(DefaultsSchema)(givenOverrides(overrides), { onExcessProperty: "error" })
  return decoded._tag === "Failure" ? `invalid model defaults: ${decoded.failure.message.replace(/\n\s*/g, " ")}` : undefined
}

/** Instances per model by default: 1 on up to 3 cores, 2 from 4 cores (more than the cores only slows runs down). */
export const defaultInstances = (cores: number = Os.availableParallelism()): number => (cores >= 4 ? 2 : 1)

/** The defaults for a model without config.json on this machine (see `defaultIsolation` and `defaultIntraOpNumThreads`). */
export const defaults = (): Defaults => ({
  instances: defaultInstances(),
  executionProviders: ["cpu"],
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  isolation: "thread",
  killGraceMs: 1_000,
  loadTimeoutMs: 600_000,
  defaultPriority: Priority.Normal
})

/** A config.json key this version does not know: a typo, or a setting from another version. */
export class UnknownConfigKey extends Data.TaggedError("UnknownConfigKey")<{
  /** Where the key is: `"batchng"`, or `"batching.maxBatchSise"`. */
  readonly path: string
  /** The closest known key, when one is close enough to be a likely typo. */
  readonly suggestion: string | undefined
}> {
  override get message(): string {
    return `unknown key ${JSON.stringify(this.path)}${this.suggestion === undefined ? "" : ` (did you mean ${JSON.stringify(this.suggestion)}?)`}`
  }
}

/** Levenshtein distance, case-insensitive. */
export const editDistance = (a: string, b: string): number => {
  const x = a.toLowerCase()
  const y = b.toLowerCase()
  let previous = Array.from({ length: y.length + 1 }, (_, j) => j)
  for (let i = 1; i <= x.length; i++) {
    const current = [i]
    for (let j = 1; j <= y.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1))
    }
    previous = current
  }
  return previous[y.length]!
}

/** The known key closest to `key`, if within a third of its length (at least 2 edits), or a case/prefix variant. */
export const closest = (key: string, known: ReadonlyArray<string>): string | undefined => {
  let best: string | undefined
  let bestDistance = Infinity
  for (const candidate of known) {
    const d = editDistance(key, candidate)
    if (d < bestDistance) {
      best = candidate
      bestDistance = d
    }
  }
  const limit = Math.max(2, Math.floor(key.length / 3))
  return best !== undefined && bestDistance <= limit ? best : undefined
}

const batchingKeys: ReadonlyArray<string> = Object.keys(BatchPolicy.ConfigJson.fields)

const constraintKeys: ReadonlyArray<string> = Object.keys(InputSignature.ConstraintJson.fields)

/**
 * The keys of config.json (and of its `batching` object, and of each input's constraints in
 * `inputSignatures`) that this version does not know, in order: a misspelled constraint
 * (`"maximum"`) would otherwise turn the check it meant off.
 */
export const unknownKeys = (json: unknown): ReadonlyArray<UnknownConfigKey> => {
  const out: Array<UnknownConfigKey> = []
  if (typeof json !== "object" || json === null || Array.isArray(json)) return out
  const known = Object.keys(configFields)
  for (const key of Object.keys(json)) {
    if (!known.includes(key)) out.push(new UnknownConfigKey({ path: key, suggestion: closest(key, known) }))
  }
  const batching = (json as Record<string, unknown>)["batching"]
  if (typeof batching === "object" && batching !== null && !Array.isArray(batching)) {
    for (const key of Object.keys(batching)) {
      if (!batchingKeys.includes(key)) {
        const suggestion = closest(key, batchingKeys)
        out.push(new UnknownConfigKey({ path: `batching.${key}`, suggestion: suggestion === undefined ? undefined : `batching.${suggestion}` }))
      }
    }
  }
  const signatures = (json as Record<string, unknown>)["inputSignatures"]
  if (Array.isArray(signatures)) {
    signatures.forEach((signature: unknown, i) => {
      if (typeof signature !== "object" || signature === null || Array.isArray(signature)) return
      for (const [input, constraint] of Object.entries(signature)) {
        if (typeof constraint !== "object" || constraint === null || Array.isArray(constraint)) continue
        const at = `inputSignatures[${i}].${input}`
        for (const key of Object.keys(constraint)) {
          if (constraintKeys.includes(key)) continue
          const suggestion = closest(key, constraintKeys)
          out.push(new UnknownConfigKey({ path: `${at}.${key}`, suggestion: suggestion === undefined ? undefined : `${at}.${suggestion}` }))
        }
      }
    })
  }
  return out
}

/**
 * True when session creation may land on a GPU: a GPU provider (`isGpuProvider`) is listed
 * before the first "cpu" (providers after "cpu" are never tried).
 */
export const requestsGpu = (providers: ReadonlyArray<ExecutionProvider>): boolean => {
  for (const p of providers) {
    if (providerName(p) === "cpu") return false
    if (isGpuProvider(p)) return true
  }
  return false
}

/**
 * Where a model's sessions run when neither config.json nor the operator's defaults say:
 * "process" for a model that requests a GPU (`requestsGpu`), "thread" otherwise. Measured on an
 * NVIDIA H200 host (onnxruntime-node 1.30, WebGPU over Vulkan): two worker threads of one process,
 * each with a WebGPU session, died with SIGSEGV within a second, and the engine serving one GPU
 * model in threads crashed the whole process; in child processes it did not. A process per
 * instance also turns a native crash of the GPU stack into one failed request and a respawn.
 */
export const defaultIsolation = (providers: ReadonlyArray<ExecutionProvider>): Isolation => (requestsGpu(providers) ? "process" : "thread")

/**
 * Why a resolved configuration is refused, or undefined: a GPU model (`requestsGpu`) with
 * `isolation: "thread"` and more than one instance would put two WebGPU sessions in two worker
 * threads of the server process, which crashed it when their runs overlapped (see
 * `defaultIsolation`). Their runs would now take turns (`DeviceLock`), which upstream reports
 * (microsoft/onnxruntime#32561) say is safe but no GPU host has confirmed here yet (the crash
 * hunt's `workers2-locked` and `engine-thread-2models` cases); and they would gain nothing over
 * one instance, the GPU running one at a time anyway. One instance in a thread is allowed (the
 * server then shares the process with the GPU stack: the operator chose). Also the response cache
 * together with sequences: an answer of a stateful model depends on its sequence's state.
 */
export const configConflict = (config: Pick<ModelConfig, "executionProviders" | "isolation" | "instances"> & Partial<Pick<ModelConfig, "responseCache" | "sequenceBatching">>): string | undefined =>
  config.responseCache === true && config.sequenceBatching !== undefined
    ? `responseCache and sequenceBatching exclude each other: a sequence's answer depends on its state, not on the request alone`
    : requestsGpu(config.executionProviders) && config.isolation === "thread" && config.instances > 1
    ? `${config.instances} instances of a GPU model (${config.executionProviders.map(providerName).join(", ")}) with isolation "thread" ` +
      `would run several WebGPU sessions in worker threads of one process, which crashes it (SIGSEGV) when their runs overlap; ` +
      `taking turns they would gain nothing over one instance: use isolation "process" (the default for GPU models) or instances 1`
    : undefined

/**
 * The default `intraOpNumThreads` of a CPU model's sessions on a host with `cores` cores (default
 * `os.availableParallelism()`), when `instances` CPU sessions (every instance of every CPU model
 * version in the repository) share them: the cores less one for the main thread (admission,
 * batching, HTTP), divided among the sessions, at least 1 and at most 256. 1 on a 2-core machine;
 * 7 for 2 instances on 16 cores. GPU models keep 1 (their sessions hardly use the CPU).
 */
export const defaultIntraOpNumThreads = (instances: number, cores: number = Os.availableParallelism()): number =>
  Math.max(1, Math.min(256, Math.floor((cores - 1) / Math.max(1, instances))))

/**
 * Decodes a parsed config.json over `defaults`. Fails with UnknownConfigKey for the first key
 * it does not know, or a SchemaError whose message names the offending field
 * (`Expected an integer\n  at ["instances"]`). `isolation` defaults by
 * `defaultIsolation` unless `overrides` names one. `intraOpNumThreads` is the override or 1 here;
 * `scan` derives it from the host (`defaultIntraOpNumThreads`) when neither sets it.
 */
export const decodeConfig = (json: unknown, overrides: DefaultsOverrides = {}): Effect.Effect<ModelConfig, Schema.SchemaError | UnknownConfigKey> =>
  Effect.suspend((): Effect.Effect<ConfigJson, Schema.SchemaError | UnknownConfigKey> => {
    const unknown = unknownKeys(json)
    return unknown.length > 0 ? Effect.fail(unknown[0]!) : Schema.decodeUnknownEffect(ConfigJson)(json)
  }).pipe(Effect.map((config) => {
    const base = { ...defaults(), ...givenOverrides(overrides) }
    const executionProviders = (config.executionProviders ?? base.executionProviders).map(normalizeProvider)
    return {
      instances: config.instances ?? base.instances,
      executionProviders,
      intraOpNumThreads: config.intraOpNumThreads ?? base.intraOpNumThreads,
      interOpNumThreads: config.interOpNumThreads ?? base.interOpNumThreads,
      isolation: config.isolation ?? overrides.isolation ?? defaultIsolation(executionProviders),
      killGraceMs: config.killGraceMs ?? base.killGraceMs,
      loadTimeoutMs: config.loadTimeoutMs ?? base.loadTimeoutMs,
      defaultPriority: config.defaultPriority ?? base.defaultPriority,
      maxQueuedRequests: config.maxQueuedRequests,
      batching: config.batching,
      inputSignatures: config.inputSignatures,
      // Read from the files config.json names by the scan (`readLabels`), which has the model's directory.
      labels: undefined,
      versionPolicy: config.versionPolicy === undefined ? VersionPolicy.all : VersionPolicy.fromJson(config.versionPolicy),
      warmup: config.warmup === undefined ? undefined : Warmup.fromJson(config.warmup as ReadonlyArray<unknown>),
      responseCache: (config.responseCache as { readonly enable?: boolean } | undefined)?.enable === true,
      sequenceBatching: config.sequenceBatching === undefined ? undefined : Sequence.fromJson(config.sequenceBatching),
      raw: json as Readonly<Record<string, unknown>>
    }
  }))

/**
 * Fills `intraOpNumThreads` of the CPU models whose config.json and `overrides` leave it unset
 * with `defaultIntraOpNumThreads` of all the CPU instances in `entries` on `cores`.
 */
export const withHostThreadDefaults = (
  entries: ReadonlyArray<Entry>,
  overrides: DefaultsOverrides,
  cores: number = Os.availableParallelism()
): Array<Entry> => {
  if (overrides.intraOpNumThreads !== undefined) return [...entries]
  const isCpu = (e: Entry): e is Found => e._tag === "Found" && !requestsGpu(e.config.executionProviders)
  const sessions = entries.filter(isCpu).reduce((n, e) => n + e.config.instances, 0)
  const threads = defaultIntraOpNumThreads(sessions, cores)
  return entries.map((e) => (isCpu(e) && e.config.raw["intraOpNumThreads"] === undefined ? { ...e, config: { ...e.config, intraOpNumThreads: threads } } : e))
}

// ---------------------------------------------------------------------------
// Scanning
// ---------------------------------------------------------------------------

/** A model version whose file exists inside the repository (whether ORT can load it is decided later). */
export interface Found {
  readonly _tag: "Found"
  readonly name: string
  readonly version: string
  /** Absolute real path of model.onnx, inside the repository root. */
  readonly path: string
  /**
   * The model file at the scan: its modification time (ms since the epoch), size, and identity
   * (device, inode and status-change time: a file renamed into place, or rewritten with the same
   * size and modification time, differs in it).
   */
  readonly file: { readonly modifiedMs: number; readonly bytes: number; readonly identity: string }
  readonly config: ModelConfig
}

/** A model version that cannot be loaded, and why. */
export interface Unavailable {
  readonly _tag: "Unavailable"
  readonly name: string
  readonly version: string
  readonly reason: string
}

export type Entry = Found | Unavailable

export interface ModelRepository {
  /** Absolute real path of the root. */
  readonly root: string
  /** Every model version, by name, then by version number. */
  readonly entries: ReadonlyArray<Entry>
  /**
   * Directories that are not models (unsafe names), and directories of a model that look like
   * versions but are not (`m/1a`), with the reason.
   */
  readonly ignored: ReadonlyArray<{ readonly name: string; readonly reason: string }>
  /** Per model whose `versionPolicy` leaves version directories out, or names versions that have none. */
  readonly notServed: ReadonlyArray<NotServed>
}

/**
 * What a model's `versionPolicy` does not serve: neither list is loaded or listed (when it names
 * no version that is present, the model is one UNAVAILABLE entry saying so instead).
 */
export interface NotServed {
  readonly name: string
  /** The policy in words ("latest 1"). */
  readonly policy: string
  /** Version directories the policy leaves out. */
  readonly leftOut: ReadonlyArray<string>
  /** Versions `specific` names that no directory holds (skipped, as Triton does, while another one serves). */
  readonly missing: ReadonlyArray<string>
}

/** The repository root itself cannot be read. */
export class RepositoryError extends Data.TaggedError("RepositoryError")<{ readonly root: string; readonly reason: string }> {
  override get message(): string {
    return `model repository ${JSON.stringify(this.root)}: ${this.reason}`
  }
}

/** The model name is not a safe name (see `modelNamePattern`). */
export class InvalidModelName extends Data.TaggedError("InvalidModelName")<{ readonly name: string }> {
  override get message(): string {
    return `invalid model name ${JSON.stringify(this.name)}: must match ${modelNamePattern} and be at most ${maxModelNameLength} characters`
  }
}

/** Fails with InvalidModelName unless `name` is safe. */
export const validateModelName = (name: string): Effect.Effect<string, InvalidModelName> =>
  isValidModelName(name) ? Effect.succeed(name) : Effect.fail(new InvalidModelName({ name }))

/**
 * The directory of model `name` under `root`, or InvalidModelName. Pure path arithmetic: the
 * name is validated first, and the result is checked to be a direct child of `root`.
 */
export const modelDirectory = (root: string, name: string): Effect.Effect<string, InvalidModelName> =>
  Effect.flatMap(validateModelName(name), () => {
    const resolved = Path.resolve(root, name)
    return Path.dirname(resolved) === Path.resolve(root) ? Effect.succeed(resolved) : Effect.fail(new InvalidModelName({ name }))
  })

const errorText = (e: unknown): string => {
  const code = (e as { code?: unknown } | null)?.code
  if (code === "ENOENT") return "does not exist"
  if (code === "EACCES" || code === "EPERM") return "permission denied"
  if (code === "ENOTDIR") return "is not a directory"
  return e instanceof Error ? e.message : String(e)
}

/**
 * Why `root` cannot be read as a model repository, in the scan's words (does not exist, is not a
 * directory, permission denied), or undefined. Synchronous: for a start's checks of its settings.
 */
export const rootProblem = (root: string): string | undefined => {
  try {
    if (!FsSync.statSync(root).isDirectory()) return "is not a directory"
    FsSync.accessSync(root, FsSync.constants.R_OK | FsSync.constants.X_OK)
    return undefined
  } catch (e) {
    return errorText(e)
  }
}

const inside = (root: string, path: string) => path.startsWith(root.endsWith(Path.sep) ? root : root + Path.sep)

const compareVersions = (a: string, b: string): number => {
  const x = BigInt(a)
  const y = BigInt(b)
  return x < y ? -1 : x > y ? 1 : a < b ? -1 : a > b ? 1 : 0
}

const isDirectory = async (path: string): Promise<boolean> => {
  try {
    return (await Fs.stat(path)).isDirectory()
  } catch {
    return false
  }
}

/**
 * Why `text` is not JSON, naming where (line and column) but quoting none of it: the parser's
 * own message quotes the text around the error.
 */
export const jsonSyntaxError = (text: string, error: unknown): string => {
  const message = error instanceof Error ? error.message : ""
  if (/Unexpected end of JSON input/.test(message)) return "invalid JSON: it ends too early"
  const position = /at position (\d+)/.exec(message)
  if (position === null) return "invalid JSON"
  const before = text.slice(0, Number(position[1]))
  const line = before.split("\n").length
  return `invalid JSON at line ${line} column ${before.length - before.lastIndexOf("\n")}`
}

/**
 * Largest config.json read (1 MiB; a configuration is a few hundred bytes): every load rescans the
 * whole repository, each concurrent one holding every config.json it reads.
 */
export const maxConfigBytes = 1024 * 1024

/**
 * Reads and decodes config.json (the defaults when there is none); a string is the reason it is
 * invalid. Like model.onnx, it is read only where its real path (symlinks followed) lies inside
 * `root`, and only when it is a regular file of at most `maxConfigBytes`: it is opened without
 * blocking, since opening a FIFO for reading waits for a writer, and that wait would hold one of
 * libuv's four threads (every file read, decompression and scan of the process) for good.
 */
/**
 * The bytes of the file at `path`, read as the repository reads its own files: only where its real
 * path (symlinks followed) lies inside `root`, only a regular file of at most `maxBytes`, opened
 * without blocking (see `readConfig`). Otherwise "missing" when there is no such file, or why it
 * cannot be read, as words that follow its name ("is not a regular file"); `what` names the kind
 * of file in the size refusal ("a configuration").
 */
const readRepositoryFile = async (root: string, path: string, maxBytes: number, what: string): Promise<Buffer | "missing" | { readonly why: string }> => {
  try {
    const real = await Fs.realpath(path)
    if (!inside(root, real)) return { why: "resolves outside the model repository" }
    const file = await Fs.open(real, FsSync.constants.O_RDONLY | (FsSync.constants.O_NONBLOCK ?? 0))
    try {
      const stat = await file.stat()
      if (!stat.isFile()) return { why: "is not a regular file" }
      if (stat.size > maxBytes) return { why: `is ${stat.size} bytes, more than the ${maxBytes} ${what} may have` }
      return await file.readFile()
    } finally {
      await file.close()
    }
  } catch (e) {
    return (e as { code?: unknown }).code === "ENOENT" ? "missing" : { why: `cannot be read (${errorText(e)})` }
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true })

/** A repository file's bytes as text (config.json, label files): UTF-8, a leading byte-order mark (which some editors write) dropped; undefined when they are not UTF-8. */
const utf8Text = (bytes: Uint8Array): string | undefined => {
  try {
    return utf8.decode(bytes)
  } catch {
    return undefined
  }
}

const readConfig = async (root: string, dir: string, overrides: DefaultsOverrides): Promise<ModelConfig | string> => {
  const read = await readRepositoryFile(root, Path.join(dir, configFileName), maxConfigBytes, "a configuration")
  if (read === "missing") {
    const config = Effect.runSync(decodeConfig({}, overrides))
    const conflict = configConflict(config)
    return conflict === undefined ? config : `defaults: ${conflict}`
  }
  if ("why" in read) return `${configFileName} ${read.why}`
  const text = utf8Text(read)
  if (text === undefined) return `${configFileName} is not UTF-8 text`
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return `${configFileName}: ${jsonSyntaxError(text, e)}`
  }
  const decoded = Effect.runSync(Effect.result(decodeConfig(json, overrides)))
  if (decoded._tag === "Failure") return `${configFileName}: ${decoded.failure.message.replace(/\n\s*/g, " ")}`
  const conflict = configConflict(decoded.success)
  if (conflict !== undefined) return `${configFileName}: ${conflict}`
  const warmup = decoded.success.warmup === undefined ? undefined : await checkWarmupFiles(root, dir, decoded.success.warmup)
  if (typeof warmup === "string") return `${configFileName}: ${warmup}`
  const sequenceBatching = decoded.success.sequenceBatching === undefined ? undefined : await readInitialStates(root, dir, decoded.success.sequenceBatching)
  if (typeof sequenceBatching === "string") return `${configFileName}: ${sequenceBatching}`
  const config = { ...decoded.success, ...(warmup === undefined ? {} : { warmup }), ...(sequenceBatching === undefined ? {} : { sequenceBatching }) }
  const files = (json as { readonly labels?: Readonly<Record<string, string>> }).labels
  if (files === undefined) return config
  const labels = await readLabels(root, dir, files)
  return typeof labels === "string" ? `${configFileName}: ${labels}` : { ...config, labels }
}

/**
 * The warm-up samples with each file they name (`{"file": name}`, in the model's `warmup/`
 * directory) checked as config.json is, without reading it: inside `root` (symlinks followed), a
 * regular file of at most `Warmup.maxTensorBytes`; its real path and identity filled in (the
 * instance reads it; the identity makes a changed file a changed model for a poll). A string is
 * why one cannot be used.
 */
const checkWarmupFiles = async (root: string, dir: string, samples: ReadonlyArray<Warmup.Sample>): Promise<ReadonlyArray<Warmup.Sample> | string> => {
  const out: Array<Warmup.Sample> = []
  for (const sample of samples) {
    const inputs: Array<[string, Warmup.Input]> = []
    for (const [name, input] of Object.entries(sample.inputs)) {
      if (input.data._tag !== "File") {
        inputs.push([name, input])
        continue
      }
      const relative = `${Warmup.directoryName}/${input.data.name}`
      const why = (reason: string) => `warmup sample ${JSON.stringify(sample.name)}, input ${JSON.stringify(name)}: ${relative} ${reason}`
      try {
        const real = await Fs.realpath(Path.join(dir, Warmup.directoryName, input.data.name))
        if (!inside(root, real)) return why("resolves outside the model repository")
        const stat = await Fs.stat(real, { bigint: true })
        if (!stat.isFile()) return why("is not a regular file")
        if (stat.size > BigInt(Warmup.maxTensorBytes)) return why(`is ${stat.size} bytes, more than a warm-up tensor may have (${Warmup.maxTensorBytes})`)
        inputs.push([name, { ...input, data: { ...input.data, path: real, identity: `${stat.dev}:${stat.ino}:${stat.size}:${stat.mtimeNs}:${stat.ctimeNs}` } }])
      } catch (e) {
        return why((e as { code?: unknown }).code === "ENOENT" ? "cannot be read (no such file)" : `cannot be read (${errorText(e)})`)
      }
    }
    // own keys whatever the names ("__proto__" included: an assignment would set the prototype)
    out.push({ ...sample, inputs: Object.fromEntries(inputs) })
  }
  return out
}

/**
 * Reads each initial state file that `sequenceBatching` names (`{"file": name}`, in the model's
 * `initial_state/` directory), as config.json is read: inside `root` (symlinks followed), a regular
 * file; its bytes and a digest of them (a changed file is a changed model for a poll) filled in.
 * The files together hold at most `Sequence.maxStateBytes`, as a sequence's states do: reading
 * stops at the file that would pass it (a scan runs at every poll). Each file's size is checked
 * against its state's once the model is loaded (`Sequence.resolve`). A string is why one cannot be used.
 */
const readInitialStates = async (root: string, dir: string, config: Sequence.Config): Promise<Sequence.Config | string> => {
  if (!config.states.some((s) => s.initialFile !== undefined)) return config
  const states: Array<Sequence.StateConfig> = []
  let total = 0
  for (let i = 0; i < config.states.length; i++) {
    const state = config.states[i]!
    const file = state.initialFile
    if (file === undefined) {
      states.push(state)
      continue
    }
    const relative = `${Sequence.initialStateDirectory}/${file.name}`
    const read = await readRepositoryFile(root, Path.join(dir, Sequence.initialStateDirectory, file.name), Sequence.maxStateBytes, "a sequence's states")
    if (read === "missing") return `sequenceBatching.state[${i}].initialState: ${relative} cannot be read (no such file)`
    if ("why" in read) return `sequenceBatching.state[${i}].initialState: ${relative} ${read.why}`
    total += read.byteLength
    if (total > Sequence.maxStateBytes) {
      return `sequenceBatching.state[${i}].initialState: ${relative}: the initial state files come to ${total} bytes so far, more than the ${Sequence.maxStateBytes} a sequence's states may have`
    }
    const bytes = new Uint8Array(read.buffer, read.byteOffset, read.byteLength)
    states.push({ ...state, initialFile: { name: file.name, bytes, identity: Crypto.createHash("sha256").update(bytes).digest("hex") } })
  }
  return { ...config, states }
}

/** Largest label file read (16 MiB: a label a line, and a few hundred thousand classes at most). */
export const maxLabelBytes = 16 * 1024 * 1024

/**
 * Reads each label file of config.json's `labels` (output → file name in `dir`), as config.json
 * is read: inside `root` (symlinks followed), a regular file of at most `maxLabelBytes`, UTF-8.
 * Line i (without its line ending) labels class i. A string is why one cannot be used.
 */
const readLabels = async (
  root: string,
  dir: string,
  files: Readonly<Record<string, string>>
): Promise<Readonly<Record<string, ReadonlyArray<string>>> | string> => {
  const out: Record<string, ReadonlyArray<string>> = {}
  for (const [output, name] of Object.entries(files)) {
    const why = (reason: string) => `labels of output ${JSON.stringify(output)}: ${name} ${reason}`
    const read = await readRepositoryFile(root, Path.join(dir, name), maxLabelBytes, "a label file")
    if (read === "missing") return why("cannot be read (no such file in the model's directory)")
    if ("why" in read) return why(read.why)
    const text = utf8Text(read)
    if (text === undefined) return why("is not UTF-8 text")
    const lines = text.split("\n").map((line) => (line.endsWith("\r") ? line.slice(0, -1) : line))
    if (lines.at(-1) === "") lines.pop()
    out[output] = lines
  }
  return out
}

/**
 * The identity of the file at `path` now: its device, inode, size and modification time (ns),
 * or why it cannot be read. A file replaced (renamed over, or rewritten) has another identity;
 * one `touch`ed too, though its content is the same.
 */
export const fileIdentity = (path: string): string => {
  try {
    const stat = FsSync.statSync(path, { bigint: true })
    return `dev ${stat.dev} inode ${stat.ino} size ${stat.size} mtime ${stat.mtimeNs}`
  } catch (e) {
    return `unreadable (${errorText(e)})`
  }
}

/** Checks one model file: present, a non-empty regular file this process may read, really inside the root. */
const checkFile = async (
  root: string,
  file: string
): Promise<{ readonly path: string; readonly modifiedMs: number; readonly bytes: number; readonly identity: string } | { readonly reason: string }> => {
  const relative = Path.relative(root, file)
  let real: string
  try {
    real = await Fs.realpath(file)
  } catch (e) {
    return { reason: `${relative}: ${errorText(e)}` }
  }
  if (!inside(root, real)) return { reason: `${relative} resolves outside the model repository` }
  try {
    const stat = await Fs.stat(real, { bigint: true })
    if (!stat.isFile()) return { reason: `${relative} is not a regular file` }
    if (stat.size === 0n) return { reason: `${relative} is empty` }
    // Unreadable: "permission denied" here, not onnxruntime's "system error number 13" at the load.
    await Fs.access(real, FsSync.constants.R_OK)
    return { path: real, modifiedMs: Number(stat.mtimeMs), bytes: Number(stat.size), identity: `${stat.dev}:${stat.ino}:${stat.ctimeNs}` }
  } catch (e) {
    return { reason: `${relative}: ${errorText(e)}` }
  }
}

type Ignored = { readonly name: string; readonly reason: string }

/**
 * Why each version directory that names the same number as another ("01" and "1") is refused,
 * by directory: lookups find versions by number, so one would shadow the other.
 */
export const versionConflicts = (versions: ReadonlyArray<string>): ReadonlyMap<string, string> => {
  const byNumber = new Map<bigint, Array<string>>()
  for (const v of versions) {
    const n = BigInt(v)
    const same = byNumber.get(n)
    if (same === undefined) byNumber.set(n, [v])
    else same.push(v)
  }
  const conflicts = new Map<string, string>()
  for (const [n, same] of byNumber) {
    if (same.length < 2) continue
    const reason = `version directories ${same.join(" and ")} are ${same.length === 2 ? "both" : "all"} version ${n}: keep one`
    for (const v of same) conflicts.set(v, reason)
  }
  return conflicts
}

const scanModel = async (
  root: string,
  name: string,
  overrides: DefaultsOverrides
): Promise<{ entries: Array<Entry>; ignored: Array<Ignored>; notServed: NotServed | undefined }> => {
  const dir = Path.join(root, name)
  const realDir = await Fs.realpath(dir)
  if (!inside(root, realDir)) {
    return { entries: [{ _tag: "Unavailable", name, version: "1", reason: `${name}/ resolves outside the model repository` }], ignored: [], notServed: undefined }
  }
  const children = await Fs.readdir(realDir)
  const versions: Array<string> = []
  const ignored: Array<Ignored> = []
  for (const child of children) {
    if (!/^[0-9]/.test(child) || !(await isDirectory(Path.join(realDir, child)))) continue
    if (versionPattern.test(child)) versions.push(child)
    else ignored.push({ name: `${name}/${child}`, reason: "not a version directory (a version is decimal digits only)" })
  }
  if (children.includes(tritonConfigFileName) && !children.includes(configFileName)) {
    ignored.push({ name: `${name}/${tritonConfigFileName}`, reason: tritonConfigIgnored })
  }
  versions.sort(compareVersions)
  const conflicts = versionConflicts(versions)
  const config = await readConfig(root, realDir, overrides)
  // A model.onnx without version directories is version 1, for the policy as for everything else.
  const found = versions.length === 0 ? ["1"] : versions
  const selection = typeof config === "string" ? VersionPolicy.select(VersionPolicy.all, found) : VersionPolicy.select(config.versionPolicy, found)
  const entries: Array<Entry> = []
  for (const version of selection.served) {
    const file = versions.length === 0 ? Path.join(realDir, modelFileName) : Path.join(realDir, version, modelFileName)
    const conflict = conflicts.get(version)
    if (typeof config === "string" || conflict !== undefined) {
      entries.push({ _tag: "Unavailable", name, version, reason: conflict ?? (config as string) })
      continue
    }
    const checked = await checkFile(root, file)
    entries.push("path" in checked
      ? { _tag: "Found", name, version, path: checked.path, file: { modifiedMs: checked.modifiedMs, bytes: checked.bytes, identity: checked.identity }, config }
      : { _tag: "Unavailable", name, version, reason: checked.reason.replaceAll(Path.sep, "/") })
  }
  if (typeof config === "string" || (selection.left.length === 0 && selection.missing.length === 0)) return { entries, ignored, notServed: undefined }
  const policy = VersionPolicy.describe(config.versionPolicy)
  if (entries.length === 0) {
    // Triton's "at least one version must be available under the version policy": the model does not serve.
    const version = selection.missing.reduce((a, b) => (compareVersions(a, b) >= 0 ? a : b))
    const present = versions.length === 0 ? "only model.onnx, version 1" : `version directories ${versions.join(", ")}`
    entries.push({ _tag: "Unavailable", name, version, reason: `no version that versionPolicy (${policy}) names is in the repository (it has ${present})` })
  }
  return { entries, ignored, notServed: { name, policy, leftOut: selection.left, missing: selection.missing } }
}

/**
 * Scans `root`. Fails only when the root itself cannot be read; each model's own problems
 * become `Unavailable` entries. Hidden entries (leading dot) and plain files are skipped.
 */
export const scan = (
  root: string,
  options: { readonly defaults?: DefaultsOverrides | undefined; /** For tests: the host's cores (`withHostThreadDefaults`). */ readonly cores?: number | undefined } = {}
): Effect.Effect<ModelRepository, RepositoryError> =>
  Effect.tryPromise({
    try: async () => {
      const invalidDefaults = defaultsProblem(options.defaults ?? {})
      if (invalidDefaults !== undefined) throw new Error(invalidDefaults)
      const realRoot = await Fs.realpath(root)
      const dirents = await Fs.readdir(realRoot, { withFileTypes: true })
      const names = dirents.map((d) => d.name).filter((n) => !n.startsWith(".")).sort()
      const entries: Array<Entry> = []
      const ignored: Array<{ name: string; reason: string }> = []
      const notServed: Array<NotServed> = []
      for (const name of names) {
        if (!(await isDirectory(Path.join(realRoot, name)))) continue
        if (!isValidModelName(name)) {
          ignored.push({ name, reason: new InvalidModelName({ name }).message })
          continue
        }
        try {
          const model = await scanModel(realRoot, name, options.defaults ?? {})
          entries.push(...model.entries)
          ignored.push(...model.ignored)
          if (model.notServed !== undefined) notServed.push(model.notServed)
        } catch (e) {
          entries.push({ _tag: "Unavailable", name, version: "1", reason: `${name}/: ${errorText(e)}` })
        }
      }
      return { root: realRoot, entries: withHostThreadDefaults(entries, options.defaults ?? {}, options.cores), ignored, notServed } satisfies ModelRepository
    },
    catch: (e) => new RepositoryError({ root, reason: errorText(e) })
  }).pipe(Effect.withSpan("ModelRepository.scan", { attributes: { root } }))

/**
 * What a model is on disk, as one string: each version's model file (path, modification time,
 * size, device, inode and status-change time) or why it is unavailable, and its config.json as
 * written with the labels it names and the identity of each warm-up file. Two scans of an
 * unchanged model give the same string; a model.onnx replaced (renamed into place, or rewritten,
 * whatever its size and modification time), an edited config.json, label file, warm-up file or initial state file, a
 * version directory added or removed, or a change
 * of `versionPolicy` change it (so does a `chmod` of the model file: a reload, not a miss).
 * Empty for a model the repository does not hold.
 */
export const fingerprint = (repository: ModelRepository, name: string): string => {
  const versions = versionsOf(repository, name)
  if (versions.length === 0) return ""
  const found = versions.find((e): e is Found => e._tag === "Found")
  return JSON.stringify([
    versions.map((e) => (e._tag === "Found" ? [e.version, e.path, e.file.modifiedMs, e.file.bytes, e.file.identity] : [e.version, e.reason])),
    found === undefined ? null : [found.config.raw, found.config.labels ?? null, found.config.warmup ?? null],
    // the initial state files' digests, where config.json names some
    ...initialStateIdentities(found)
  ])
}

const initialStateIdentities = (found: Found | undefined): ReadonlyArray<ReadonlyArray<string | null>> => {
  const states = found?.config.sequenceBatching?.states ?? []
  return states.some((s) => s.initialFile !== undefined) ? [states.map((s) => s.initialFile?.identity ?? null)] : []
}

/** Each repository's versions by name, built on first use: a repository is never changed, only replaced. */
const byName = new WeakMap<ModelRepository, ReadonlyMap<string, ReadonlyArray<Entry>>>()

const noVersions: ReadonlyArray<Entry> = []

/**
 * The versions of `name` in `repository`, lowest first (shared: never to be changed). A map
 * lookup: the request path asks for every request, and filtering the entries cost 1.7 µs a
 * request with 300 models.
 */
export const versionsOf = (repository: ModelRepository, name: string): ReadonlyArray<Entry> => {
  let index = byName.get(repository)
  if (index === undefined) {
    const built = new Map<string, Array<Entry>>()
    for (const e of repository.entries) {
      const versions = built.get(e.name)
      if (versions === undefined) built.set(e.name, [e])
      else versions.push(e)
    }
    byName.set(repository, index = built)
  }
  return index.get(name) ?? noVersions
}

/**
 * The entry for `name` at `version`, or at its highest version when `version` is undefined.
 * Versions compare as numbers ("01" finds "1"). Undefined when there is no such model or version.
 */
export const lookup = (repository: ModelRepository, name: string, version?: string): Entry | undefined => {
  const versions = versionsOf(repository, name)
  if (version === undefined) return versions[versions.length - 1]
  return versions.find((e) => sameVersion(e.version, version))
}

/** Whether two version names name one version: equal, or decimal digits of one number ("01" and "1"). */
export const sameVersion = (a: string, b: string): boolean =>
  a === b || (typeof a === "string" && typeof b === "string" && versionPattern.test(a) && versionPattern.test(b) && withoutLeadingZeros(a) === withoutLeadingZeros(b))

/**
 * Decimal digits without their leading zeros ("0" stays): linear, where BigInt's parse of a
 * version of millions of digits (a gRPC model_version is bounded only by the message size) blocked
 * the event loop for seconds.
 */
const withoutLeadingZeros = (digits: string): string => digits.replace(/^0+(?=[0-9])/, "")
