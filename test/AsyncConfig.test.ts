import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect, Layer, Result, Schema } from "effect"
import * as AsyncConfig from "../src/AsyncConfig.ts"

describe("AsyncConfig", () => {
  it("has the spec's defaults", () => {
    assert.strictEqual(AsyncConfig.defaults.maxConcurrentRequests, 4)
    assert.strictEqual(AsyncConfig.defaults.maxQueuedRequests, 100)
    assert.strictEqual(Duration.toMillis(AsyncConfig.defaults.queueTimeout), 5000)
    assert.isTrue(AsyncConfig.defaults.enablePriorityQueue)
  })

  it.effect("decodes a partial JSON object over the defaults", () =>
    Effect.gen(function*() {
      const config = yield* AsyncConfig.decode({ maxConcurrentRequests: 2, queueTimeoutMs: 250 })
      assert.strictEqual(config.maxConcurrentRequests, 2)
      assert.strictEqual(config.maxQueuedRequests, 100)
      assert.strictEqual(Duration.toMillis(config.queueTimeout), 250)
    }))

  it.effect("refuses bad values with a SchemaError naming the field", () =>
    Effect.gen(function*() {
      for (const [input, field] of [[{ maxConcurrentRequests: 0 }, "maxConcurrentRequests"], [{ maxQueuedRequests: 1.5 }, "maxQueuedRequests"], [{ queueTimeoutMs: -1 }, "queueTimeoutMs"], [{ queueTimeoutMs: 1e-9 }, "queueTimeoutMs"], [{ enablePriorityQueue: "yes" }, "enablePriorityQueue"], [{ queueTimeout: 5 }, "queueTimeout"], [{ agingMs: { Hgh: 1 } }, "Hgh"]] as const) {
        const error = yield* Effect.flip(AsyncConfig.decode(input))
        assert.isTrue(Schema.isSchemaError(error))
        assert.include(error.message, field)
      }
    }))

  it.effect("loads from the environment", () =>
    Effect.gen(function*() {
      const config = yield* AsyncConfig.config.pipe(
        Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env: { MAX_CONCURRENT_REQUESTS: "8", ENABLE_PRIORITY_QUEUE: "false", QUEUE_TIMEOUT_MS: "100" } }))
      )
      assert.strictEqual(config.maxConcurrentRequests, 8)
      assert.isFalse(config.enablePriorityQueue)
      assert.strictEqual(Duration.toMillis(config.queueTimeout), 100)
      assert.strictEqual(config.maxQueuedRequests, 100)
    }))

  it.effect("reads one aging bound for every level below Critical from AGING_MS", () =>
    Effect.gen(function*() {
      const config = yield* AsyncConfig.config.pipe(
        Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env: { AGING_MS: "250" } }))
      )
      assert.deepStrictEqual(config.aging, { High: 250, Normal: 250, Low: 250 })
      const strict = yield* AsyncConfig.config.pipe(Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env: {} })))
      assert.isUndefined(strict.aging)
    }))

  it.effect("reads the response cache's bytes from RESPONSE_CACHE_BYTES (0, the default, for none), and from JSON and code", () =>
    Effect.gen(function*() {
      const read = (env: Record<string, string>) => AsyncConfig.config.pipe(Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env })))
      assert.strictEqual((yield* read({ RESPONSE_CACHE_BYTES: "1048576" })).responseCacheBytes, 1048576)
      assert.isUndefined((yield* read({ RESPONSE_CACHE_BYTES: "0" })).responseCacheBytes)
      assert.isUndefined((yield* read({})).responseCacheBytes)
      assert.strictEqual(AsyncConfig.describeError(yield* Effect.flip(read({ RESPONSE_CACHE_BYTES: "-1" }))), "RESPONSE_CACHE_BYTES: Expected a value between 0 and 9007199254740991")
      assert.strictEqual(AsyncConfig.describeError(yield* Effect.flip(read({ RESPONSE_CACHE_BYTES: "1.5" }))), "RESPONSE_CACHE_BYTES: Expected an integer")
      assert.strictEqual((yield* AsyncConfig.decode({ responseCacheBytes: 4096 })).responseCacheBytes, 4096)
      assert.isTrue(Result.isFailure(AsyncConfig.validate({ responseCacheBytes: -1 })))
      assert.isTrue(Result.isSuccess(AsyncConfig.validate({ responseCacheBytes: 4096 })))
    }))

  it.effect("fails to load an invalid environment value", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(AsyncConfig.config.pipe(
        Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env: { MAX_QUEUED_REQUESTS: "0" } }))
      ))
      assert.strictEqual(error._tag, "ConfigError")
    }))

  it.effect("an invalid environment value is one line that names the variable, not the field it feeds", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<readonly [Record<string, string>, string]> = [
        [{ MAX_QUEUED_REQUESTS: "-1" }, "MAX_QUEUED_REQUESTS: Expected a value greater than or equal to 1"],
        [{ MAX_QUEUED_REQUESTS: "abc" }, "MAX_QUEUED_REQUESTS: Expected a string representing a finite number"],
        [{ MAX_CONCURRENT_REQUESTS: "0" }, "MAX_CONCURRENT_REQUESTS: Expected a value greater than or equal to 1"],
        [{ MAX_CONCURRENT_REQUESTS: "1.5" }, "MAX_CONCURRENT_REQUESTS: Expected an integer"],
        [{ QUEUE_TIMEOUT_MS: "x" }, "QUEUE_TIMEOUT_MS: Expected a string representing a finite number"],
        [{ QUEUE_TIMEOUT_MS: "-1" }, "QUEUE_TIMEOUT_MS: Expected a value greater than or equal to 0"],
        // Below a nanosecond it would round to 0, which means no queue timeout.
        [{ QUEUE_TIMEOUT_MS: "0.0000001" }, "QUEUE_TIMEOUT_MS: Expected 0 (no queue timeout) or at least 0.000001 (1 ns)"],
        [{ AGING_MS: "0" }, "AGING_MS: Expected a value greater than 0"]
      ]
      for (const [env, message] of cases) {
        const error = yield* Effect.flip(AsyncConfig.config.pipe(
          Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env }))
        ))
        assert.strictEqual(AsyncConfig.describeError(error), message, JSON.stringify(env))
      }
    }))

  it("validate refuses settings given in code that would stop the engine, naming the setting on one line", () => {
    const cases: ReadonlyArray<readonly [Partial<Record<keyof AsyncConfig.AsyncConfig, unknown>>, string]> = [
      [{ maxConcurrentRequests: 0 }, "maxConcurrentRequests: Expected a value greater than or equal to 1, got 0"],
      [{ maxConcurrentRequests: -1 }, "maxConcurrentRequests: Expected a value greater than or equal to 1, got -1"],
      [{ maxConcurrentRequests: Number.NaN }, "maxConcurrentRequests: Expected an integer, got NaN"],
      [{ maxConcurrentRequests: 2.5 }, "maxConcurrentRequests: Expected an integer, got 2.5"],
      [{ maxQueuedRequests: 0 }, "maxQueuedRequests: Expected a value greater than or equal to 1, got 0"],
      [{ maxQueuedRequests: Number.NaN }, "maxQueuedRequests: Expected an integer, got NaN"],
      [{ queueTimeout: Duration.seconds(-1) }, "queueTimeout: Expected a duration that is not negative"],
      [{ queueTimeout: 100 }, "queueTimeout: Expected Duration, got 100"],
      [{ enablePriorityQueue: "yes" }, "enablePriorityQueue: Expected boolean, got \"yes\""],
      [{ aging: { High: -5 } }, "aging.High: Expected a value greater than 0, got -5"],
      // A misspelled key is an error: it ran on the defaults (here: without aging, so Low could starve).
      [{ aging: { Lwo: 10 } }, "aging.Lwo: Unexpected key with value 10"],
      [{ maxQueuedRequest: 10 } as Record<string, unknown>, "maxQueuedRequest: Unexpected key with value 10"]
    ]
    for (const [overrides, message] of cases) {
      const result = AsyncConfig.validate(overrides as Partial<AsyncConfig.AsyncConfig>)
      assert.isTrue(Result.isFailure(result), JSON.stringify(overrides))
      const described = AsyncConfig.describeError((result as Result.Failure<unknown, Schema.SchemaError>).failure)
      assert.include(described, message)
      assert.notInclude(described, "\n")
    }
    const valid = AsyncConfig.validate({ maxConcurrentRequests: 2, maxQueuedRequests: undefined, aging: { Low: 100 } } as unknown as Partial<AsyncConfig.AsyncConfig>)
    assert.deepStrictEqual(Result.getOrThrow(valid), { ...AsyncConfig.defaults, maxConcurrentRequests: 2, aging: { Low: 100 } })
  })

  it.effect("layerWith fails with a ConfigError naming an invalid setting, and builds the valid ones", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Layer.build(AsyncConfig.AsyncConfigService.layerWith({ maxQueuedRequests: 0 })))
      assert.strictEqual(error._tag, "ConfigError")
      assert.strictEqual(AsyncConfig.describeError(error), "maxQueuedRequests: Expected a value greater than or equal to 1, got 0")
      const config = yield* AsyncConfig.AsyncConfigService.pipe(Effect.provide(AsyncConfig.AsyncConfigService.layerWith({ maxQueuedRequests: 3 })))
      assert.strictEqual(config.maxQueuedRequests, 3)
    }))
})
