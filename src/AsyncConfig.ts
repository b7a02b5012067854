/**
 * Engine configuration, with the spec's defaults. Decoded with Schema; loadable from the
 * environment (`MAX_CONCURRENT_REQUESTS`, `MAX_QUEUED_REQUESTS`, `QUEUE_TIMEOUT_MS`,
 * `ENABLE_PRIORITY_QUEUE`, `AGING_MS` for one aging bound on every level below Critical,
 * `RESPONSE_CACHE_BYTES` for the response cache).
 *
 * @module AsyncConfig
 */
import { Config, Context, Duration, Effect, Layer, Option, Result, Schema, SchemaIssue } from "effect"
import type * as QueuePolicy from "./QueuePolicy.ts"

const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1))
/**
 * 0 (none) or at least a nanosecond, the Duration's grain: a smaller positive figure would round to
 * 0 and mean no queue timeout at all.
 */
const QueueTimeoutMillis = Schema.Number.check(
  Schema.isGreaterThanOrEqualTo(0),
  Schema.makeFilter((ms: number) => ms === 0 || ms >= 1e-6, { expected: "0 (no queue timeout) or at least 0.000001 (1 ns)" })
)

const PositiveMillis = Schema.Number.check(Schema.isGreaterThan(0))
/** The response cache's size: 0 (none) to 2^53 - 1 bytes. */
const CacheBytes = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }))
const AgingMs = Schema.Struct({
  High: Schema.optional(PositiveMillis),
  Normal: Schema.optional(PositiveMillis),
  Low: Schema.optional(PositiveMillis)
})

export interface AsyncConfig {
  /** Native runs (or batches) at once, never exceeded. */
  readonly maxConcurrentRequests: number
  /** Requests waiting in the queue, all levels together; one more is refused with QueueFull. */
  readonly maxQueuedRequests: number
  /**
   * Longest wait in the queue before a request fails with QueueTimeout (it never runs). 0 means
   * none, as Triton's `default_timeout_microseconds` 0 does: only the request's own deadline applies.
   * A request handed to an instance is out of the queue, one in a job sent ahead to a busy
   * instance too: only its deadline applies there.
   */
  readonly queueTimeout: Duration.Duration
  /** When false, one FIFO for all priorities. */
  readonly enablePriorityQueue: boolean
  /**
   * Aging bounds per level (ms); absent means strict priority, which can starve Low. A request
   * waiting past its level's bound is served as if one level higher, one more per further bound.
   */
  readonly aging?: QueuePolicy.Aging | undefined
  /**
   * Bytes the response cache may hold, for every model together (`ResponseCache`; Triton's
   * `--cache-config local,size=N`); absent or 0: no cache. A model uses it only where its metadata
   * says `responseCache` (config.json's `responseCache: {"enable": true}`).
   */
  readonly responseCacheBytes?: number | undefined
}

/**
 * Settings given in code over the defaults: any subset, a key set to undefined keeping its default
 * (as `Partial<AsyncConfig>`, and so under `exactOptionalPropertyTypes` too: `maxConcurrentRequests: fromEnv`).
 */
export type Overrides = { readonly [K in keyof AsyncConfig]?: AsyncConfig[K] | undefined }

export const defaults: AsyncConfig = {
  maxConcurrentRequests: 4,
  maxQueuedRequests: 100,
  queueTimeout: Duration.seconds(5),
  enablePriorityQueue: true
}

/**
 * Decodes a (partial) JSON object over the defaults; fails with a SchemaError naming the field,
 * an unknown one too (a misspelled key is an error, not a setting left at its default).
 */
export const decode = (input: unknown): Effect.Effect<AsyncConfig, Schema.SchemaError> =>
  Schema.decodeUnknownEffect(Schema.Struct({
    maxConcurrentRequests: Schema.optional(PositiveInt),
    maxQueuedRequests: Schema.optional(PositiveInt),
    queueTimeoutMs: Schema.optional(QueueTimeoutMillis),
    enablePriorityQueue: Schema.optional(Schema.Boolean),
    agingMs: Schema.optional(AgingMs),
    responseCacheBytes: Schema.optional(CacheBytes)
  }))(input, { onExcessProperty: "error" }).pipe(Effect.map((c): AsyncConfig => ({
    maxConcurrentRequests: c.maxConcurrentRequests ?? defaults.maxConcurrentRequests,
    maxQueuedRequests: c.maxQueuedRequests ?? defaults.maxQueuedRequests,
    queueTimeout: c.queueTimeoutMs === undefined ? defaults.queueTimeout : Duration.millis(c.queueTimeoutMs),
    enablePriorityQueue: c.enablePriorityQueue ?? defaults.enablePriorityQueue,
    ...(c.agingMs === undefined ? {} : { aging: c.agingMs }),
    ...(c.responseCacheBytes === undefined || c.responseCacheBytes === 0 ? {} : { responseCacheBytes: c.responseCacheBytes })
  })))

const NonNegativeDuration = Schema.Duration.check(
  Schema.makeFilter((d: Duration.Duration) => !Duration.isNegative(d), { expected: "a duration that is not negative" })
)

/** An `AsyncConfig` as code gives it (durations as `Duration`s). */
const Settings = Schema.Struct({
  maxConcurrentRequests: PositiveInt,
  maxQueuedRequests: PositiveInt,
  queueTimeout: NonNegativeDuration,
  enablePriorityQueue: Schema.Boolean,
  aging: Schema.optional(AgingMs),
  responseCacheBytes: Schema.optional(CacheBytes)
})

/**
 * Checks settings given in code: `overrides` over the defaults (a key set to undefined keeps its
 * default). Fails with a SchemaError naming the field (`maxQueuedRequests`, `aging.High`), an
 * unknown one too (`aging.Lwo`: plain JavaScript would otherwise run on the defaults, without
 * aging); `describeError` puts it on one line.
 */
export const validate = (overrides: Overrides = {}): Result.Result<AsyncConfig, Schema.SchemaError> => {
  const merged: Record<string, unknown> = { ...defaults }
  for (const [key, value] of Object.entries(overrides)) if (value !== undefined) merged[key] = value
  return Result.map(Schema.decodeUnknownResult(Settings)(merged, { errors: "all", reportInput: true, onExcessProperty: "error" }), () => merged as unknown as AsyncConfig)
}

/**
 * A configuration error on one line: each bad setting by its path (the variable for the
 * environment, `aging.High` for code) with what is wrong, `; `-separated.
 */
export const describeError = (error: Config.ConfigError | Schema.SchemaError): string => {
  const cause = error instanceof Config.ConfigError ? error.cause : error
  if (!Schema.isSchemaError(cause)) return cause.message.replace(/\s*\n\s*/g, " ")
  const seen = new Set<string>()
  const parts: Array<string> = []
  for (const issue of SchemaIssue.makeFormatterStandardSchemaV1()(cause.issue).issues) {
    const path = (issue.path ?? []).map(String).join(".")
    // One message per setting: a union's alternatives would each add theirs.
    if (seen.has(path)) continue
    seen.add(path)
    const message = issue.message.replace(/\s*\n\s*/g, " ")
    parts.push(path === "" ? message : `${path}: ${message}`)
  }
  return parts.join("; ")
}

/**
 * Reads the configuration from the ConfigProvider (the environment by default). Each variable is
 * checked on its own, so a ConfigError names the variable (`MAX_QUEUED_REQUESTS`, `AGING_MS`);
 * `describeError` puts it on one line.
 */
export const config: Config.Config<AsyncConfig> = Config.all({
  maxConcurrentRequests: Config.schema(PositiveInt, "MAX_CONCURRENT_REQUESTS").pipe(Config.withDefault(defaults.maxConcurrentRequests)),
  maxQueuedRequests: Config.schema(PositiveInt, "MAX_QUEUED_REQUESTS").pipe(Config.withDefault(defaults.maxQueuedRequests)),
  queueTimeoutMs: Config.schema(QueueTimeoutMillis, "QUEUE_TIMEOUT_MS").pipe(Config.withDefault(Duration.toMillis(defaults.queueTimeout))),
  enablePriorityQueue: Config.Boolean("ENABLE_PRIORITY_QUEUE").pipe(Config.withDefault(defaults.enablePriorityQueue)),
  agingMs: Config.schema(PositiveMillis, "AGING_MS").pipe(Config.option),
  responseCacheBytes: Config.schema(CacheBytes, "RESPONSE_CACHE_BYTES").pipe(Config.withDefault(0))
}).pipe(Config.map(({ agingMs, queueTimeoutMs, responseCacheBytes, ...rest }): AsyncConfig => ({
  ...rest,
  queueTimeout: Duration.millis(queueTimeoutMs),
  ...(Option.isSome(agingMs) ? { aging: { High: agingMs.value, Normal: agingMs.value, Low: agingMs.value } } : {}),
  ...(responseCacheBytes > 0 ? { responseCacheBytes } : {})
})))

/** The engine's configuration as a service. */
export class AsyncConfigService extends Context.Service<AsyncConfigService, AsyncConfig>()("effect-onnx/AsyncConfig") {
  /** The spec's defaults. */
  static readonly layer = Layer.succeed(AsyncConfigService, defaults)
  /** From the environment (see the module doc), defaults for what is unset. */
  static readonly layerConfig = Layer.effect(AsyncConfigService, config)
  /** `overrides` over the defaults; fails with a ConfigError naming an invalid setting (see `validate`). */
  static readonly layerWith = (overrides: Overrides): Layer.Layer<AsyncConfigService, Config.ConfigError> =>
    Layer.effect(
      AsyncConfigService,
      Effect.mapError(Effect.fromResult(validate(overrides)), (e) => new Config.ConfigError(e))
    )
}
