import { afterAll, assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as ServerConfig from "../../src/http/ServerConfig.ts"

type Flags = Partial<Record<keyof ServerConfig.ServerConfig, string>>
const decode = (flags: Flags, env: Record<string, string> = {}) => ServerConfig.decode(flags, env)

/** Each case's flags and variables are refused with a ConfigError whose message includes its text. */
const assertRefused = (cases: ReadonlyArray<readonly [Flags, Record<string, string>, string]>) => {
  for (const [flags, env, message] of cases) {
    const result = decode(flags, env)
    assert.instanceOf(result, ServerConfig.ConfigError, JSON.stringify([flags, env]))
    if (result instanceof ServerConfig.ConfigError) assert.include(result.message, message)
  }
}

// Repositories that exist: --models and MODEL_REPOSITORY are checked to be readable directories.
const flagRepository = Fs.mkdtempSync(Path.join(Os.tmpdir(), "server-config-flag-"))
const envRepository = Fs.mkdtempSync(Path.join(Os.tmpdir(), "server-config-env-"))
Fs.writeFileSync(Path.join(flagRepository, "file"), "")
afterAll(() => {
  for (const dir of [flagRepository, envRepository]) Fs.rmSync(dir, { recursive: true, force: true })
})

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
    assert.strictEqual(config.grpcStreamOrder, "completion")
    assert.strictEqual(config.logFormat, "text")
    assert.strictEqual(config.decodeThreads, 0)
  })

  it("--decode-threads or DECODE_THREADS: 0 to 64", () => {
    assert.deepInclude(decode({}, { DECODE_THREADS: "2" }), { decodeThreads: 2 })
    assert.deepInclude(decode({ decodeThreads: "0" }, { DECODE_THREADS: "2" }), { decodeThreads: 0 })
    for (const text of ["-1", "65", "1.5", "auto"]) assert.instanceOf(decode({ decodeThreads: text }), ServerConfig.ConfigError, text)
  })

  it("--large-body-bytes or LARGE_BODY_BYTES: bytes from 0 (none), 1 MiB by default", () => {
    assert.deepInclude(decode({}), { largeBodyBytes: 1024 * 1024 })
    assert.deepInclude(decode({}, { LARGE_BODY_BYTES: "0" }), { largeBodyBytes: 0 })
    assert.deepInclude(decode({ largeBodyBytes: "65536" }, { LARGE_BODY_BYTES: "0" }), { largeBodyBytes: 65536 })
    for (const text of ["-1", "1e6", "2147483648", "1MiB"]) assert.instanceOf(decode({ largeBodyBytes: text }), ServerConfig.ConfigError, text)
  })

  it("reads the environment, and flags win over it", () => {
    const env = {
      HOST: "0.0.0.0",
      PORT: "8080",
      MODEL_REPOSITORY: envRepository,
      MAX_BODY_BYTES: "1024",
      GRACE_PERIOD_SECONDS: "2.5",
      STRICT_READINESS: "false",
      EXIT_ON_ERROR: "1",
      METRICS_FORMAT: "triton",
      GRPC_STREAM_ORDER: "request"
    }
    const fromEnv = decode({}, env)
    assert.deepInclude(fromEnv, { host: "0.0.0.0", port: 8080, models: envRepository, maxBodyBytes: 1024, strictReadiness: false, exitOnError: true, metricsFormat: "triton", grpcStreamOrder: "request" })
    if ("gracePeriod" in fromEnv) assert.strictEqual(Duration.toMillis(fromEnv.gracePeriod), 2500)
    const fromFlags = decode({
      host: "::1",
      port: "9000",
      models: Path.relative(process.cwd(), flagRepository),
      maxBodyBytes: "2048",
      gracePeriod: "0",
      strictReadiness: "true",
      exitOnError: "no",
      metricsFormat: "default",
      grpcStreamOrder: "completion"
    }, env)
    assert.deepInclude(fromFlags, { host: "::1", port: 9000, models: flagRepository, maxBodyBytes: 2048, strictReadiness: true, exitOnError: false, metricsFormat: "default", grpcStreamOrder: "completion" })
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
      [{}, { METRICS_FORMAT: "prometheus" }, "invalid METRICS_FORMAT \"prometheus\""],
      [{ grpcStreamOrder: "fifo" }, {}, "invalid --grpc-stream-order \"fifo\""],
      [{}, { LOG_FORMAT: "yaml" }, "invalid LOG_FORMAT \"yaml\""]
    ]
    assertRefused(cases)
  })

  it("checkRepository: a repository that does not exist or is not a directory, naming the flag or variable; decode reads no file (a manifest's /mnt/models)", () => {
    const check = (flags: Flags, env: Record<string, string>) => {
      const config = decode(flags, env)
      assert.notInstanceOf(config, ServerConfig.ConfigError)
      return ServerConfig.checkRepository(config as ServerConfig.ServerConfig, flags, env)?.message
    }
    assert.strictEqual(check({ models: "/no/such/repository" }, {}), "invalid --models \"/no/such/repository\": does not exist")
    const file = Path.join(flagRepository, "file")
    assert.strictEqual(check({}, { MODEL_REPOSITORY: file }), `invalid MODEL_REPOSITORY ${JSON.stringify(file)}: is not a directory`)
    assert.isUndefined(check({ models: flagRepository }, {}))
    assert.isUndefined(check({}, {}), "the bundled repository")
  })

  it("refuses an empty flag and numbers that are not decimal (they became 0, 8080, 1000); an empty variable is unset", () => {
    const cases: ReadonlyArray<readonly [Flags, Record<string, string>, string]> = [
      [{ port: "" }, {}, "invalid --port \"\""],
      [{ gracePeriod: "" }, {}, "invalid --grace-period-seconds \"\""],
      [{ decodeThreads: "" }, {}, "invalid --decode-threads \"\""],
      [{ maxBodyBytes: " " }, {}, "invalid --max-body-bytes \" \""],
      [{ loadModels: "" }, {}, "invalid --load-model \"\""],
      [{}, { PORT: "0x1F90" }, "invalid PORT \"0x1F90\": Expected a decimal integer"],
      [{ port: "1e3" }, {}, "invalid --port \"1e3\": Expected a decimal integer"],
      [{ port: " 80" }, {}, "invalid --port \" 80\""],
      [{ gracePeriod: "1e1" }, {}, "invalid --grace-period-seconds \"1e1\": Expected a decimal number"],
      [{ gracePeriod: "Infinity" }, {}, "invalid --grace-period-seconds \"Infinity\""],
      [{}, { MAX_BODY_BYTES: "0b11" }, "invalid MAX_BODY_BYTES \"0b11\""]
    ]
    assertRefused(cases)
    assert.deepInclude(decode({}, { PORT: "", GRACE_PERIOD_SECONDS: "" }), { port: 8000 })
    assert.deepInclude(decode({ port: "08080", maxBodyBytes: "1024" }), { port: 8080, maxBodyBytes: 1024 })
    const grace = decode({ gracePeriod: "2.5" })
    assert.strictEqual("gracePeriod" in grace ? Duration.toMillis(grace.gracePeriod) : undefined, 2500)
  })

  it("serves gRPC on 8001 by default; --grpc-port or GRPC_PORT moves it, 0 picks a free port, off turns it off", () => {
    const grpcPort = (flags: Record<string, string>, env: Record<string, string> = {}) => (decode(flags, env) as ServerConfig.ServerConfig).grpcPort
    assert.strictEqual(grpcPort({}), 8001)
    assert.strictEqual(grpcPort({}, { GRPC_PORT: "9001" }), 9001)
    assert.strictEqual(grpcPort({ port: "0" }), 0, "a free HTTP port implies a free gRPC port")
    assert.strictEqual(grpcPort({ port: "0", grpcPort: "9002" }), 9002)
    assert.strictEqual(grpcPort({ grpcPort: "0" }, { GRPC_PORT: "9001" }), 0)
    assert.isUndefined(grpcPort({ grpcPort: "off" }))
    assert.isUndefined(grpcPort({}, { GRPC_PORT: "OFF" }))
    const bad = decode({ grpcPort: "grpc" }, {})
    assert.instanceOf(bad, ServerConfig.ConfigError)
    if (bad instanceof ServerConfig.ConfigError) assert.include(bad.message, "invalid --grpc-port \"grpc\"")
  })

  it("explicit model control with --load-model (repeatable: its values arrive joined), poll mode with its interval; --load-model or --repository-poll-secs alone, a bad mode, interval or name is refused", () => {
    assert.deepInclude(decode({}, {}) as ServerConfig.ServerConfig, { modelControlMode: "none", loadModels: [] })
    assert.deepInclude(decode({ modelControlMode: "explicit", loadModels: "a,b.2" }, {}) as ServerConfig.ServerConfig, {
      modelControlMode: "explicit",
      loadModels: ["a", "b.2"]
    })
    assert.deepInclude(decode({}, { MODEL_CONTROL_MODE: "explicit" }) as ServerConfig.ServerConfig, { modelControlMode: "explicit" })
    assert.deepInclude(decode({ modelControlMode: "explicit", loadModels: "*" }, {}) as ServerConfig.ServerConfig, { loadModels: ["*"] }, "Triton's wildcard")
    // poll: every model at start, the repository rescanned every --repository-poll-secs (Triton's flag, default 15)
    const polled = decode({ modelControlMode: "poll" }, {}) as ServerConfig.ServerConfig
    assert.strictEqual(polled.modelControlMode, "poll")
    assert.strictEqual(Duration.toMillis(polled.repositoryPollInterval), 15_000)
    const often = decode({}, { MODEL_CONTROL_MODE: "poll", REPOSITORY_POLL_SECS: "2.5" }) as ServerConfig.ServerConfig
    assert.strictEqual(Duration.toMillis(often.repositoryPollInterval), 2_500)
    const cases: ReadonlyArray<readonly [Record<string, string>, string]> = [
      [{ loadModels: "a" }, "--load-model needs --model-control-mode explicit"],
      [{ modelControlMode: "watch" }, "invalid --model-control-mode \"watch\""],
      [{ modelControlMode: "explicit", loadModels: "*,mlp" }, "\"*\" (every model) must be the only model named"],
      [{ modelControlMode: "poll", loadModels: "a" }, "--load-model needs --model-control-mode explicit"],
      [{ repositoryPollInterval: "5" }, "--repository-poll-secs needs --model-control-mode poll"],
      [{ modelControlMode: "poll", repositoryPollInterval: "0.5" }, "invalid --repository-poll-secs \"0.5\""],
      [{ modelControlMode: "poll", repositoryPollInterval: "x" }, "invalid --repository-poll-secs \"x\""],
      [{ modelControlMode: "explicit", loadModels: "../x" }, "invalid --load-model \"../x\""],
      [{ modelControlMode: "explicit", loadModels: "m".repeat(129) }, "at most 128 characters"]
    ]
    for (const [flags, message] of cases) {
      const result = decode(flags, {})
      assert.instanceOf(result, ServerConfig.ConfigError, JSON.stringify(flags))
      if (result instanceof ServerConfig.ConfigError) assert.include(result.message, message)
    }
    // The message names where the setting came from: the variable, when it was one.
    const fromEnv = decode({}, { LOAD_MODELS: "a" })
    assert.instanceOf(fromEnv, ServerConfig.ConfigError)
    if (fromEnv instanceof ServerConfig.ConfigError) assert.match(fromEnv.message, /^LOAD_MODELS needs --model-control-mode explicit or MODEL_CONTROL_MODE=explicit/)
  })

  it("has one row per configuration field, each with a distinct flag and variable", () => {
    const keys = ServerConfig.options.map((o) => o.key).sort()
    assert.deepStrictEqual(keys, Object.keys(ServerConfig.defaults).sort())
    assert.strictEqual(new Set(ServerConfig.options.map((o) => o.flag)).size, ServerConfig.options.length)
    assert.strictEqual(new Set(ServerConfig.options.map((o) => o.variable)).size, ServerConfig.options.length)
  })
})

describe("ServerConfig: poll interval and wildcard edges", () => {
  it("--repository-poll-secs 1, the documented minimum, is accepted", () => {
    const config = ServerConfig.decode({ modelControlMode: "poll", repositoryPollInterval: "1" }, {})
    assert.notInstanceOf(config, ServerConfig.ConfigError)
    assert.strictEqual(Duration.toMillis((config as ServerConfig.ServerConfig).repositoryPollInterval), 1_000)
  })

  it("\"*\" beside another name is refused wherever it stands", () => {
    for (const loadModels of ["*,mlp", "mlp,*"]) {
      const result = ServerConfig.decode({ modelControlMode: "explicit", loadModels }, {})
      assert.instanceOf(result, ServerConfig.ConfigError, loadModels)
      if (result instanceof ServerConfig.ConfigError) assert.include(result.message, "\"*\" (every model) must be the only model named")
    }
  })
})
