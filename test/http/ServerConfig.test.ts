import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import * as Path from "node:path"
import * as ServerConfig from "../../src/http/ServerConfig.ts"

const parse = (argv: ReadonlyArray<string>, env: Record<string, string> = {}) => ServerConfig.parse(argv, env)

describe("ServerConfig", () => {
  it("defaults to 127.0.0.1:8000, the bundled repository, 16 MiB bodies and a 30 s grace period", () => {
    const config = parse([])
    assert.deepStrictEqual(config, ServerConfig.defaults)
    if (!("host" in config)) return
    assert.strictEqual(config.host, "127.0.0.1")
    assert.strictEqual(config.port, 8000)
    assert.strictEqual(Path.basename(config.models), "models")
    assert.strictEqual(config.maxBodyBytes, 16 * 1024 * 1024)
    assert.strictEqual(Duration.toSeconds(config.gracePeriod), 30)
  })

  it("reads the environment, and flags win over it", () => {
    const env = { HOST: "0.0.0.0", PORT: "8080", MODEL_REPOSITORY: "/mnt/models", MAX_BODY_BYTES: "1024", GRACE_PERIOD_SECONDS: "2.5" }
    const fromEnv = parse([], env)
    assert.deepInclude(fromEnv, { host: "0.0.0.0", port: 8080, models: "/mnt/models", maxBodyBytes: 1024 })
    if ("gracePeriod" in fromEnv) assert.strictEqual(Duration.toMillis(fromEnv.gracePeriod), 2500)
    const fromFlags = parse(["--host", "::1", "--port=9000", "--models", "repo", "--max-body-bytes", "2048", "--grace-period-seconds", "0"], env)
    assert.deepInclude(fromFlags, { host: "::1", port: 9000, models: Path.resolve("repo"), maxBodyBytes: 2048 })
    if ("gracePeriod" in fromFlags) assert.strictEqual(Duration.toMillis(fromFlags.gracePeriod), 0)
  })

  it("names the flag or variable and what is wrong", () => {
    const cases: ReadonlyArray<readonly [ReadonlyArray<string>, Record<string, string>, string]> = [
      [["--port", "eighty"], {}, "invalid --port \"eighty\""],
      [["--port", "70000"], {}, "invalid --port \"70000\""],
      [[], { PORT: "-1" }, "invalid PORT \"-1\""],
      [["--max-body-bytes", "1.5"], {}, "invalid --max-body-bytes \"1.5\""],
      [[], { GRACE_PERIOD_SECONDS: "soon" }, "invalid GRACE_PERIOD_SECONDS \"soon\""],
      [["--host", "a b"], {}, "invalid --host \"a b\""],
      [["--models", ""], {}, "invalid --models \"\""],
      [["--bogus"], {}, "Unknown option '--bogus'"],
      [["extra"], {}, "Unexpected argument 'extra'"]
    ]
    for (const [argv, env, message] of cases) {
      const result = parse(argv, env)
      assert.instanceOf(result, ServerConfig.ConfigError, JSON.stringify(argv))
      if (result instanceof ServerConfig.ConfigError) assert.include(result.message, message)
    }
  })

  it("serves gRPC on 8001 by default; --grpc-port or GRPC_PORT moves it, 0 picks a free port, off turns it off", () => {
    assert.strictEqual((parse([]) as ServerConfig.ServerConfig).grpcPort, 8001)
    assert.strictEqual((parse([], { GRPC_PORT: "9001" }) as ServerConfig.ServerConfig).grpcPort, 9001)
    assert.strictEqual((parse(["--port", "0"]) as ServerConfig.ServerConfig).grpcPort, 0)
    assert.strictEqual((parse(["--port", "0", "--grpc-port", "9002"]) as ServerConfig.ServerConfig).grpcPort, 9002)
    assert.strictEqual((parse(["--grpc-port", "0"], { GRPC_PORT: "9001" }) as ServerConfig.ServerConfig).grpcPort, 0)
    assert.isUndefined((parse(["--grpc-port", "off"]) as ServerConfig.ServerConfig).grpcPort)
    assert.isUndefined((parse([], { GRPC_PORT: "OFF" }) as ServerConfig.ServerConfig).grpcPort)
    const bad = parse(["--grpc-port", "grpc"])
    assert.instanceOf(bad, ServerConfig.ConfigError)
    if (bad instanceof ServerConfig.ConfigError) assert.include(bad.message, "invalid --grpc-port \"grpc\"")
  })

  it("explicit model control with --load-model (repeatable); --load-model alone, a bad mode or a bad name is refused", () => {
    assert.deepInclude(parse([]) as ServerConfig.ServerConfig, { modelControlMode: "none", loadModels: [] })
    assert.deepInclude(parse(["--model-control-mode", "explicit", "--load-model", "a", "--load-model", "b.2"]) as ServerConfig.ServerConfig, {
      modelControlMode: "explicit",
      loadModels: ["a", "b.2"]
    })
    assert.deepInclude(parse([], { MODEL_CONTROL_MODE: "explicit" }) as ServerConfig.ServerConfig, { modelControlMode: "explicit" })
    const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
      [["--load-model", "a"], "--load-model needs --model-control-mode explicit"],
      [["--model-control-mode", "poll"], "invalid --model-control-mode \"poll\""],
      [["--model-control-mode", "explicit", "--load-model", "../x"], "invalid --load-model \"../x\""]
    ]
    for (const [argv, message] of cases) {
      const result = parse(argv)
      assert.instanceOf(result, ServerConfig.ConfigError, JSON.stringify(argv))
      if (result instanceof ServerConfig.ConfigError) assert.include(result.message, message)
    }
  })

  it("--help asks for the usage", () => {
    assert.instanceOf(parse(["--help"]), ServerConfig.HelpRequested)
    assert.instanceOf(parse(["-h"]), ServerConfig.HelpRequested)
  })
})
