/**
 * A model repository on disk, scanned once:
 *
 * ```
 * <root>/<model>/model.onnx              one version, reported as "1"
 * <root>/<model>/<version>/model.onnx    numeric version directories; the highest is the default
 * <root>/<model>/config.json             optional, applies to every version of the model
 * ```
 *
 * When a model has version directories, a `model.onnx` beside them is ignored.
 *
 * `config.json` is decoded with Schema (`ConfigJson`); its `batching` section with
 * `BatchPolicy.ConfigJson` (resolved against the model's signature once it is loaded). A key it
 * does not know (at the top level or inside `batching`) is an error, not a silent default: the
 * model is `Unavailable` with a reason that names the key and the closest known one
 * (`unknown key "batchng" (did you mean "batching"?)`).
 *
 * Model names must match `modelNamePattern`; directories that do not are listed in `ignored`.
 * Nothing is ever resolved outside the root: a model file whose real path (symlinks followed)
 * leaves the root is unavailable. A missing or empty model file, or an invalid config.json,
 * makes that model (every version of it, for the config) `Unavailable` with a reason; the other
 * models are unaffected. Whether the file is a loadable ONNX model is decided later, by the
 * runtime that loads it.
 *
 * @module ModelRepository
 */
import { Data, Effect, Schema } from "effect"
import * as Fs from "node:fs/promises"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as BatchPolicy from "./BatchPolicy.ts"
import * as InputSignature from "./InputSignature.ts"
import * as Priority from "./Priority.ts"

/** The model repository shipped with the package (`models/`: `mlp` and `silero_vad`). The one place its path is defined. */
export const bundled: string = fileURLToPath(new URL("../models", import.meta.url))

/** Safe model names: a letter or digit, then letters, digits, `_`, `.` or `-`. No separators, no leading dot. */
export const modelNamePattern = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/

/** Longest accepted model name. */
export const maxModelNameLength = 128

/** True for a name that can be a model directory in the repository (and nothing else). */
export const isValidModelName = (name: string): boolean => name.length <= maxModelNameLength && modelNamePattern.test(name)

/** Version directories: decimal digits only. */
export const versionPattern = /^[0-9]+$/

/** The model file inside a model (or version) directory. */
export const modelFileName = "model.onnx"

/** The optional per-model configuration file. */
export const configFileName = "config.json"

// ---------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------

const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1))
const Threads = Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 256 }))

/**
 * An execution provider name as onnxruntime spells it: "cpu", "cuda", "tensorrt", "webgpu",
 * "coreml", "dml", "qnn", "xnnpack", ... Unknown names are accepted here; a provider that
 * cannot load falls back to CPU at session creation.
 */
export const ExecutionProvider = Schema.String.check(Schema.isPattern(/^[A-Za-z][A-Za-z0-9_-]*$/))

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

/**
 * The fields of `config.json`, exported so that other modules can extend the schema
 * (`Schema.Struct({ ...ModelRepository.configFields, batching: ... })`).
 */
export const configFields = {
  /** Sessions (worker threads) for the model. */
  instances: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 64 }))),
  /** Providers to try in order; CPU is the fallback when none loads. */
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
  /** The priority of a request that names none (Triton's priority 0 or absent). */
  defaultPriority: Schema.optionalKey(Priority.schema),
  /** Alternatives a request's inputs must fit, narrower than the ONNX signature (see `InputSignature`). */
  inputSignatures: Schema.optionalKey(InputSignature.ConfigJson)
}

/** `config.json` as written. The schema itself ignores unknown keys; `decodeConfig` refuses them first (`unknownKeys`). */
export const ConfigJson = Schema.Struct(configFields)

export type ConfigJson = typeof ConfigJson.Type

/** A model's configuration with every default filled in. */
export interface ModelConfig {
  readonly instances: number
  readonly executionProviders: ReadonlyArray<string>
  readonly intraOpNumThreads: number
  readonly interOpNumThreads: number
  readonly isolation: Isolation
  /** Process isolation: ms a run may outlive its deadline before its process is killed. Ignored for threads. */
  readonly killGraceMs: number
  /** The priority of a request that names none. */
  readonly defaultPriority: Priority.Priority
  /** config.json's `batching` section as written; undefined without one (see BatchPolicy.resolve). */
  readonly batching: BatchPolicy.ConfigJson | undefined
  /** config.json's `inputSignatures` as written (checked against the model by `InputSignature.resolve` once loaded). */
  readonly inputSignatures: InputSignature.ConfigJson | undefined
  /** config.json as parsed (an empty object without one). */
  readonly raw: Readonly<Record<string, unknown>>
}

export type Defaults = Omit<ModelConfig, "raw" | "batching" | "inputSignatures">

/** Instances per model by default: 1 on up to 3 cores, 2 from 4 cores (more than the cores only slows runs down). */
export const defaultInstances = (cores: number = Os.availableParallelism()): number => (cores >= 4 ? 2 : 1)

/** The defaults for a model without config.json on this machine. */
export const defaults = (): Defaults => ({
  instances: defaultInstances(),
  executionProviders: ["cpu"],
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  isolation: "thread",
  killGraceMs: 1_000,
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

/** The keys of config.json (and of its `batching` object) that this version does not know, in order. */
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
  return out
}

/**
 * Decodes a parsed config.json over `defaults`. Fails with UnknownConfigKey for the first key
 * it does not know, or a SchemaError whose message names the offending field
 * (`Expected an integer\n  at ["instances"]`).
 */
export const decodeConfig = (json: unknown, overrides: Partial<Defaults> = {}): Effect.Effect<ModelConfig, Schema.SchemaError | UnknownConfigKey> =>
  Effect.suspend((): Effect.Effect<ConfigJson, Schema.SchemaError | UnknownConfigKey> => {
    const unknown = unknownKeys(json)
    return unknown.length > 0 ? Effect.fail(unknown[0]!) : Schema.decodeUnknownEffect(ConfigJson)(json)
  }).pipe(Effect.map((config) => {
    const base = { ...defaults(), ...overrides }
    return {
      instances: config.instances ?? base.instances,
      executionProviders: (config.executionProviders ?? base.executionProviders).map((p) => p.toLowerCase()),
      intraOpNumThreads: config.intraOpNumThreads ?? base.intraOpNumThreads,
      interOpNumThreads: config.interOpNumThreads ?? base.interOpNumThreads,
      isolation: config.isolation ?? base.isolation,
      killGraceMs: config.killGraceMs ?? base.killGraceMs,
      defaultPriority: config.defaultPriority ?? base.defaultPriority,
      batching: config.batching,
      inputSignatures: config.inputSignatures,
      raw: json as Readonly<Record<string, unknown>>
    }
  }))

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
  /** Directories that are not models (unsafe names), with the reason. */
  readonly ignored: ReadonlyArray<{ readonly name: string; readonly reason: string }>
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

/** Reads and decodes config.json; undefined config means "absent", a string is the reason it is invalid. */
const readConfig = async (dir: string, overrides: Partial<Defaults>): Promise<ModelConfig | string> => {
  let text: string
  try {
    text = await Fs.readFile(Path.join(dir, configFileName), "utf8")
  } catch (e) {
    if ((e as { code?: unknown }).code === "ENOENT") return Effect.runSync(decodeConfig({}, overrides))
    return `${configFileName}: cannot be read (${errorText(e)})`
  }
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return `${configFileName}: invalid JSON (${e instanceof Error ? e.message : String(e)})`
  }
  const decoded = Effect.runSync(Effect.result(decodeConfig(json, overrides)))
  return decoded._tag === "Success" ? decoded.success : `${configFileName}: ${decoded.failure.message.replace(/\n\s*/g, " ")}`
}

/** Checks one model file: present, a non-empty regular file, really inside the root. */
const checkFile = async (root: string, file: string): Promise<{ readonly path: string } | { readonly reason: string }> => {
  const relative = Path.relative(root, file)
  let real: string
  try {
    real = await Fs.realpath(file)
  } catch (e) {
    return { reason: `${relative}: ${errorText(e)}` }
  }
  if (!inside(root, real)) return { reason: `${relative} resolves outside the model repository` }
  try {
    const stat = await Fs.stat(real)
    if (!stat.isFile()) return { reason: `${relative} is not a regular file` }
    if (stat.size === 0) return { reason: `${relative} is empty` }
  } catch (e) {
    return { reason: `${relative}: ${errorText(e)}` }
  }
  return { path: real }
}

const scanModel = async (root: string, name: string, overrides: Partial<Defaults>): Promise<Array<Entry>> => {
  const dir = Path.join(root, name)
  const realDir = await Fs.realpath(dir)
  if (!inside(root, realDir)) return [{ _tag: "Unavailable", name, version: "1", reason: `${name}/ resolves outside the model repository` }]
  const children = await Fs.readdir(realDir)
  const versions: Array<string> = []
  for (const child of children) {
    if (versionPattern.test(child) && (await isDirectory(Path.join(realDir, child)))) versions.push(child)
  }
  versions.sort(compareVersions)
  const files = versions.length === 0
    ? [{ version: "1", file: Path.join(realDir, modelFileName) }]
    : versions.map((version) => ({ version, file: Path.join(realDir, version, modelFileName) }))
  const config = await readConfig(realDir, overrides)
  const entries: Array<Entry> = []
  for (const { file, version } of files) {
    if (typeof config === "string") {
      entries.push({ _tag: "Unavailable", name, version, reason: config })
      continue
    }
    const checked = await checkFile(root, file)
    entries.push("path" in checked
      ? { _tag: "Found", name, version, path: checked.path, config }
      : { _tag: "Unavailable", name, version, reason: checked.reason.replaceAll(Path.sep, "/") })
  }
  return entries
}

/**
 * Scans `root`. Fails only when the root itself cannot be read; each model's own problems
 * become `Unavailable` entries. Hidden entries (leading dot) and plain files are skipped.
 */
export const scan = (root: string, options: { readonly defaults?: Partial<Defaults> | undefined } = {}): Effect.Effect<ModelRepository, RepositoryError> =>
  Effect.tryPromise({
    try: async () => {
      const realRoot = await Fs.realpath(root)
      const dirents = await Fs.readdir(realRoot, { withFileTypes: true })
      const names = dirents.map((d) => d.name).filter((n) => !n.startsWith(".")).sort()
      const entries: Array<Entry> = []
      const ignored: Array<{ name: string; reason: string }> = []
      for (const name of names) {
        if (!(await isDirectory(Path.join(realRoot, name)))) continue
        if (!isValidModelName(name)) {
          ignored.push({ name, reason: new InvalidModelName({ name }).message })
          continue
        }
        try {
          entries.push(...(await scanModel(realRoot, name, options.defaults ?? {})))
        } catch (e) {
          entries.push({ _tag: "Unavailable", name, version: "1", reason: `${name}/: ${errorText(e)}` })
        }
      }
      return { root: realRoot, entries, ignored } satisfies ModelRepository
    },
    catch: (e) => new RepositoryError({ root, reason: errorText(e) })
  }).pipe(Effect.withSpan("ModelRepository.scan", { attributes: { root } }))

/** The versions of `name` in `repository`, lowest first. */
export const versionsOf = (repository: ModelRepository, name: string): ReadonlyArray<Entry> =>
  repository.entries.filter((e) => e.name === name)

/**
 * The entry for `name` at `version`, or at its highest version when `version` is undefined.
 * Versions compare as numbers ("01" finds "1"). Undefined when there is no such model or version.
 */
export const lookup = (repository: ModelRepository, name: string, version?: string): Entry | undefined => {
  const versions = versionsOf(repository, name)
  if (version === undefined) return versions[versions.length - 1]
  return versions.find((e) => e.version === version) ??
    (versionPattern.test(version) ? versions.find((e) => BigInt(e.version) === BigInt(version)) : undefined)
}
