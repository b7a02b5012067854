import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import * as Path from "node:path"
import * as ServerConfig from "../../src/http/ServerConfig.ts"

type Flags = Partial<Record<keyof ServerConfig.ServerConfig, string>>
const decode = (flags: Flags, env: Record<string, string> = {}) => ServerConfig.decode(flags, env)

describe("ServerConfig", () => {
  it("defaults to 127.0.0.1:8000, the bundled repository, 16 MiB bodies, a 30 s grace period, strict readiness", () => {
    const config = decode({})
    assert.deepStrictEqual(config, ServerConfig.defaults)
    if (!("host" in config)) return
    assert.strictEqual(config.host, "127.0.0.1")
    assert.strictEqual(config.port, 8000)
    assert.strictEqual(Path.basename(config.models), "models")
    assert.strictEqual(config.maxBodyBytes, 16 * 1024 * 1024)
    assert.strictEqual(Duration.toSeconds(config.gracePeriod), 30)
    assert.strictEqual(config.strictReadiness, true)
    assert.strictEqual(config.exitOnError, false)
    assert.strictEqual(config.metricsFormat, "default")
  })

  it("reads the environment, and flags win over it", () => {
    const env = {
      HOST: "0.0.0.0",
      PORT: "8080",
      MODEL_REPOSITORY: "/mnt/models",
      MAX_BODY_BYTES: "1024",
      GRACE_PERIOD_SECONDS: "2.5",
      STRICT_READINESS: "false",
      EXIT_ON_ERROR: "1",
      METRICS_FORMAT: "triton"
    }
    const fromEnv = decode({}, env)
    assert.deepInclude(fromEnv, { host: "0.0.0.0", port: 8080, models: "/mnt/models", maxBodyBytes: 1024, strictReadiness: false, exitOnError: true, metricsFormat: "triton" })
    if ("gracePeriod" in fromEnv) assert.strictEqual(Duration.toMillis(fromEnv.gracePeriod), 2500)
    const fromFlags = decode({
      host: "::1",
      port: "9000",
      models: "repo",
      maxBodyBytes: "2048",
      gracePeriod: "0",
      strictReadiness: "true",
      exitOnError: "no",
      metricsFormat: "default"
    }, env)
    assert.deepInclude(fromFlags, { host: "::1", port: 9000, models: Path.resolve("repo"), maxBodyBytes: 2048, strictReadiness: true, exitOnError: false, metricsFormat: "default" })
    if ("gracePeriod" in fromFlags) assert.strictEqual(Duration.toMillis(fromFlags.gracePeriod), 0)
  })

  it("names the flag or variable and what is wrong", () => {
    const cases: ReadonlyArray<readonly [Flags, Record<string, string>, string]> = [
      [{ port: "eighty" }, {}, "invalid --port \"eighty\""],
      [{ port: "70000" }, {}, "invalid --port \"70000\""],
      [{}, { PORT: "-1" }, "invalid PORT \"-1\""],
      [{ maxBodyBytes: "1.5" }, {}, "invalid --max-body-bytes \"1.5\""],
      [{}, { GRACE_PERIOD_SECONDS: "soon" }, "invalid GRACE_PERIOD_SECONDS \"soon\""],
      [{ host: "a b" }, {}, "invalid --host \"a b\""],
      [{ models: "" }, {}, "invalid --models \"\""],
      [{ strictReadiness: "maybe" }, {}, "invalid --strict-readiness \"maybe\""],
      [{}, { METRICS_FORMAT: "prometheus" }, "invalid METRICS_FORMAT \"prometheus\""]
    ]
    for (const [flags, env, message] of cases) {
      const result = decode(flags, env)
      assert.instanceOf(result, ServerConfig.ConfigError, JSON.stringify(flags))
      if (result instanceof ServerConfig.ConfigError) assert.include(result.message, message)
    }
  })

  it("has one row per configuration field, each with a distinct flag and variable", () => {
    const keys = ServerConfig.options.map((o) => o.key).sort()
    assert.deepStrictEqual(keys, Object.keys(ServerConfig.defaults).sort())
    assert.strictEqual(new Set(ServerConfig.options.map((o) => o.flag)).size, ServerConfig.options.length)
    assert.strictEqual(new Set(ServerConfig.options.map((o) => o.variable)).size, ServerConfig.options.length)
  })
})
