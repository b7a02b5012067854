/**
 * The standalone server's options, from command-line flags over environment variables over
 * defaults, each decoded with Schema. An invalid value fails with a message that names the flag
 * or variable and what is wrong with it; unknown flags are refused.
 *
 * | flag | variable | default |
 * |---|---|---|
 * | `--host` | `HOST` | `127.0.0.1` |
 * | `--port` | `PORT` | `8000` (0: any free port) |
 * | `--models DIR` | `MODEL_REPOSITORY` | the bundled `models/` |
 * | `--max-body-bytes` | `MAX_BODY_BYTES` | 16 MiB |
 * | `--grace-period-seconds` | `GRACE_PERIOD_SECONDS` | 30 |
 * | `--model-control-mode none\|explicit` | `MODEL_CONTROL_MODE` | `none` |
 * | `--load-model NAME` (repeatable) | | none (explicit mode: loaded at start) |
 * | `--grpc-port` | `GRPC_PORT` | `8001`, or 0 when `--port` is 0 (0: any free port; `off`: no gRPC server) |
 *
 * The engine's own settings come from its variables (`AsyncConfig`: `MAX_CONCURRENT_REQUESTS`,
 * `MAX_QUEUED_REQUESTS`, `QUEUE_TIMEOUT_MS`, `ENABLE_PRIORITY_QUEUE`).
 *
 * @module ServerConfig
 */
import { Data, Duration, Schema } from "effect"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"

export interface ServerConfig {
  readonly host: string
  readonly port: number
  /** Absolute path of the model repository. */
  readonly models: string
  readonly maxBodyBytes: number
  readonly gracePeriod: Duration.Duration
  /** The gRPC port (0: any free one); undefined: no gRPC server. */
  readonly grpcPort: number | undefined
  /** Triton's model control mode: "none" (every model loaded at start, no load/unload) or "explicit". */
  readonly modelControlMode: "none" | "explicit"
  /** Under explicit model control, the models loaded at start. */
  readonly loadModels: ReadonlyArray<string>
}

/** The repository shipped with the package. */
export const bundledModels: string = fileURLToPath(new URL("../../models", import.meta.url))

export const defaults: ServerConfig = {
  host: "127.0.0.1",
  port: 8000,
  models: bundledModels,
  maxBodyBytes: 16 * 1024 * 1024,
  gracePeriod: Duration.seconds(30),
  grpcPort: 8001,
  modelControlMode: "none",
  loadModels: []
}

export const usage = `Usage: node src/bin/server.ts [options]

Serves the Open Inference Protocol v2 over HTTP and gRPC for every model in a repository.

Options (each also read from the environment variable in brackets):
  --host HOST                    address to bind [HOST] (default ${defaults.host})
  --port PORT                    port, 0 for any free one [PORT] (default ${defaults.port})
  --models DIR                   model repository [MODEL_REPOSITORY] (default: the bundled models/)
  --max-body-bytes N             largest request body [MAX_BODY_BYTES] (default ${defaults.maxBodyBytes})
  --grace-period-seconds S       drain time on SIGTERM/SIGINT [GRACE_PERIOD_SECONDS] (default 30)
  --grpc-port PORT               gRPC port on the same host, 0 for any free one, off for none [GRPC_PORT]
                                 (default ${defaults.grpcPort}; 0 when --port is 0)
  --model-control-mode MODE      none: every model loaded at start; explicit: only --load-model ones,
                                 then POST /v2/repository/models/NAME/load|unload [MODEL_CONTROL_MODE] (default none)
  --load-model NAME              under explicit model control, load NAME at start (repeatable)
  -h, --help                     this text

Engine: MAX_CONCURRENT_REQUESTS, MAX_QUEUED_REQUESTS, QUEUE_TIMEOUT_MS, ENABLE_PRIORITY_QUEUE.`

/** A flag or variable that cannot be used; `message` says which and why. */
export class ConfigError extends Data.TaggedError("ConfigError")<{ readonly message: string }> {}

/** `--help` was given. */
export class HelpRequested extends Data.TaggedError("HelpRequested")<{}> {}

const Port = Schema.NumberFromString.check(Schema.isInt(), Schema.isBetween({ minimum: 0, maximum: 65535 }))
const Host = Schema.String.check(Schema.isMinLength(1), Schema.isPattern(/^[A-Za-z0-9.:_-]+$/))
const Dir = Schema.String.check(Schema.isMinLength(1))
const Bytes = Schema.NumberFromString.check(Schema.isInt(), Schema.isBetween({ minimum: 1, maximum: 2 ** 31 - 1 }))
const ModelControlMode = Schema.Literals(["none", "explicit"])
const Seconds = Schema.NumberFromString.check(Schema.isFinite(), Schema.isBetween({ minimum: 0, maximum: 24 * 3600 }))

const field = <A>(schema: Schema.Codec<A, string>, flag: string, variable: string, raw: { flag?: string | undefined; env?: string | undefined }): A | ConfigError | undefined => {
  const [source, value] = raw.flag !== undefined ? [`--${flag}`, raw.flag] : raw.env !== undefined && raw.env !== "" ? [variable, raw.env] : [undefined, undefined]
  if (value === undefined) return undefined
  const result = Schema.decodeUnknownResult(schema)(value)
  if (result._tag === "Success") return result.success
  return new ConfigError({ message: `invalid ${source} ${JSON.stringify(value)}: ${result.failure.message.replace(/\n\s*/g, " ")}` })
}

/**
 * Decodes `argv` (without node and the script) and `env`. Returns the configuration, a
 * ConfigError, or HelpRequested.
 */
export const parse = (
  argv: ReadonlyArray<string>,
  env: Readonly<Record<string, string | undefined>>
): ServerConfig | ConfigError | HelpRequested => {
  let flags: Record<string, string | boolean | Array<string> | undefined>
  try {
    flags = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        host: { type: "string" },
        port: { type: "string" },
        models: { type: "string" },
        "max-body-bytes": { type: "string" },
        "grace-period-seconds": { type: "string" },
        "grpc-port": { type: "string" },
        "model-control-mode": { type: "string" },
        "load-model": { type: "string", multiple: true },
        help: { type: "boolean", short: "h" }
      }
    }).values
  } catch (e) {
    return new ConfigError({ message: e instanceof Error ? e.message : String(e) })
  }
  if (flags["help"] === true) return new HelpRequested()
  const get = (name: string) => {
    const v = flags[name]
    return typeof v === "string" ? v : undefined
  }
  const host = field(Host, "host", "HOST", { flag: get("host"), env: env["HOST"] })
  const port = field(Port, "port", "PORT", { flag: get("port"), env: env["PORT"] })
  const models = field(Dir, "models", "MODEL_REPOSITORY", { flag: get("models"), env: env["MODEL_REPOSITORY"] })
  const maxBody = field(Bytes, "max-body-bytes", "MAX_BODY_BYTES", { flag: get("max-body-bytes"), env: env["MAX_BODY_BYTES"] })
  const grace = field(Seconds, "grace-period-seconds", "GRACE_PERIOD_SECONDS", { flag: get("grace-period-seconds"), env: env["GRACE_PERIOD_SECONDS"] })
  const grpcRaw = get("grpc-port") ?? (env["GRPC_PORT"] === "" ? undefined : env["GRPC_PORT"])
  const grpcOff = grpcRaw !== undefined && grpcRaw.toLowerCase() === "off"
  const grpcPort = grpcOff ? undefined : field(Port, "grpc-port", "GRPC_PORT", { flag: get("grpc-port"), env: env["GRPC_PORT"] })
  const mode = field(ModelControlMode, "model-control-mode", "MODEL_CONTROL_MODE", { flag: get("model-control-mode"), env: env["MODEL_CONTROL_MODE"] })
  const loadModels = flags["load-model"]
  const loadList = Array.isArray(loadModels) ? loadModels : []
  for (const v of [host, port, models, maxBody, grace, grpcPort, mode]) if (v instanceof ConfigError) return v
  const badName = loadList.find((name) => !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name))
  if (badName !== undefined) return new ConfigError({ message: `invalid --load-model ${JSON.stringify(badName)}: letters, digits, "_", "." and "-" only` })
  if (loadList.length > 0 && (mode ?? defaults.modelControlMode) !== "explicit") {
    return new ConfigError({ message: "--load-model needs --model-control-mode explicit (without it every model is loaded)" })
  }
  return {
    host: (host as string | undefined) ?? defaults.host,
    port: (port as number | undefined) ?? defaults.port,
    models: models === undefined ? defaults.models : Path.resolve(models as string),
    maxBodyBytes: (maxBody as number | undefined) ?? defaults.maxBodyBytes,
    gracePeriod: grace === undefined ? defaults.gracePeriod : Duration.millis((grace as number) * 1000),
    // A free HTTP port (tests, several servers on one host) implies a free gRPC port too.
    modelControlMode: (mode as "none" | "explicit" | undefined) ?? defaults.modelControlMode,
    loadModels: loadList,
    grpcPort: grpcOff ? undefined : (grpcPort as number | undefined) ?? (port === 0 ? 0 : defaults.grpcPort)
  }
}
