/**
 * The standalone server's options: one table (`options`), from which the command line's flags
 * (`effect-onnx serve`, `npm start`, both parsed by `effect/cli`, see `cli/Serve`), their help
 * and their environment variables all come. A flag wins over its variable, which wins over the
 * default; each value is decoded with Schema, and an invalid one fails with a message that names
 * the flag or variable and what is wrong with it. Numbers are decimal (`0x1F90`, `1e3` are
 * refused); an empty variable counts as unset, an empty flag (`--port=`) is refused.
 *
 * | flag | variable | default |
 * |---|---|---|
 * | `--host` | `HOST` | `127.0.0.1` |
 * | `--port` | `PORT` | `8000` (0: any free port) |
 * | `--models DIR` | `MODEL_REPOSITORY` | the bundled `models/` |
 * | `--max-body-bytes` | `MAX_BODY_BYTES` | 16 MiB |
 * | `--grace-period-seconds` | `GRACE_PERIOD_SECONDS` | 30 |
 * | `--grpc-port` | `GRPC_PORT` | `8001`, or 0 when `--port` is 0 (0: any free port; `off`: no gRPC server) |
 * | `--grpc-stream-order completion\|request` | `GRPC_STREAM_ORDER` | `completion`; `request`: ModelStreamInfer answers in the order asked, as Triton |
 * | `--model-control-mode none\|explicit\|poll` | `MODEL_CONTROL_MODE` | `none` |
 * | `--repository-poll-secs S` | `REPOSITORY_POLL_SECS` | 15 (poll mode: seconds between scans of the repository, at least 1) |
 * | `--load-model NAME` (repeatable) | `LOAD_MODELS` (comma-separated) | none (explicit mode: loaded at start; `*`: every model) |
 * | `--strict-readiness BOOL` | `STRICT_READINESS` | true: not ready while any model is unavailable (Triton's) |
 * | `--exit-on-error BOOL` | `EXIT_ON_ERROR` | false: exit 1 at start when a model fails to load (Triton's flag; Triton defaults it to true) |
 * | `--metrics-format F` | `METRICS_FORMAT` | `default`; `triton` also exposes Triton's `nv_inference_*` and `nv_cache_*` names |
 * | `--log-format F` | `LOG_FORMAT` | `text`; `json`: one JSON object a log line (`cli/LogFormat`) |
 * | `--decode-threads N` | `DECODE_THREADS` | 0: none (threads that decode large JSON bodies while the main thread has a queue of them) |
 *
 * To add an option: one row in `options`, one field in `ServerConfig` and `defaults`.
 *
 * The engine's own settings come from its variables (`AsyncConfig`: `MAX_CONCURRENT_REQUESTS`,
 * `MAX_QUEUED_REQUESTS`, `QUEUE_TIMEOUT_MS`, `ENABLE_PRIORITY_QUEUE`, `AGING_MS`, `RESPONSE_CACHE_BYTES`), OTLP export
 * from `OTEL_*` (`Otel`): `environment` lists them all for the help text.
 *
 * @module ServerConfig
 */
import { Data, Duration, Schema, SchemaTransformation } from "effect"
import * as Path from "node:path"
import * as ModelRepository from "../ModelRepository.ts"

export type MetricsFormat = "default" | "triton"

export interface ServerConfig {
  readonly host: string
  readonly port: number
  /** Absolute path of the model repository. */
  readonly models: string
  readonly maxBodyBytes: number
  readonly gracePeriod: Duration.Duration
  /** The gRPC port (0: any free one); undefined: no gRPC server. */
  readonly grpcPort: number | undefined
  /** The order of ModelStreamInfer's answers (`GrpcServer.Options.streamOrder`). */
  readonly grpcStreamOrder: "completion" | "request"
  /** Triton's model control mode: "none" (every model loaded at start, no load/unload), "explicit" or "poll" (`RepositoryPoll`). */
  readonly modelControlMode: "none" | "explicit" | "poll"
  /** Under model control mode poll, the time between two scans of the repository. */
  readonly repositoryPollInterval: Duration.Duration
  /** Under explicit model control, the models loaded at start. */
  readonly loadModels: ReadonlyArray<string>
  /** Not ready while any model is unavailable, or while the repository is empty. */
  readonly strictReadiness: boolean
  /** Exit 1 at start when any model failed to load. */
  readonly exitOnError: boolean
  /** `triton`: /metrics also carries Triton's `nv_inference_*` and `nv_cache_*` families. */
  readonly metricsFormat: MetricsFormat
  /** `json`: one JSON object a log line, for a log collector. */
  readonly logFormat: "text" | "json"
  /** Threads that decode large JSON inference bodies while the main thread has a queue of them (`Routes.Options.decodeThreads`). */
  readonly decodeThreads: number
  /** JSON inference bodies of this many bytes and more are always decoded on a thread (`Routes.Options.largeBodyBytes`); 0: none. */
  readonly largeBodyBytes: number
}

/** The repository shipped with the package (`ModelRepository.bundled`). */
export const bundledModels: string = ModelRepository.bundled

export const defaults: ServerConfig = {
  host: "127.0.0.1",
  port: 8000,
  models: bundledModels,
  maxBodyBytes: 16 * 1024 * 1024,
  gracePeriod: Duration.seconds(30),
  grpcPort: 8001,
  grpcStreamOrder: "completion",
  modelControlMode: "none",
  repositoryPollInterval: Duration.seconds(15),
  loadModels: [],
  strictReadiness: true,
  exitOnError: false,
  metricsFormat: "default",
  logFormat: "text",
  decodeThreads: 0,
  largeBodyBytes: 1024 * 1024
}

/** `--load-model '*'`: every model of the repository is loaded at start (Triton's wildcard; it must be the only name). */
export const allModels = "*"

/** A flag or variable that cannot be used; `message` says which and why. */
export class ConfigError extends Data.TaggedError("ConfigError")<{ readonly message: string }> {}

/**
 * A number in decimal digits (with a fraction when `fraction`): not "", "0x1F90", "1e3" nor
 * " 80", which `Number` (and so `Schema.NumberFromString`) would take as 0, 8080, 1000 and 80.
 */
const decimal = (fraction: boolean) =>
  Schema.String.check(
    fraction
      ? Schema.isPattern(/^[0-9]+(\.[0-9]+)?$/, { expected: "a decimal number, such as 2.5" })
      : Schema.isPattern(/^[0-9]+$/, { expected: "a decimal integer" })
  ).pipe(Schema.decodeTo(Schema.Number, SchemaTransformation.numberFromString))

const Port = decimal(false).check(Schema.isInt(), Schema.isBetween({ minimum: 0, maximum: 65535 }))
const Host = Schema.String.check(Schema.isMinLength(1), Schema.isPattern(/^[A-Za-z0-9.:_-]+$/))
const Bytes = decimal(false).check(Schema.isInt(), Schema.isBetween({ minimum: 1, maximum: 2 ** 31 - 1 }))
const ModelControlMode = Schema.Literals(["none", "explicit", "poll"])
const StreamOrder = Schema.Literals(["completion", "request"])
const Seconds = decimal(true).check(Schema.isFinite(), Schema.isBetween({ minimum: 0, maximum: 24 * 3600 }))
const Bool = Schema.Literals(["true", "false", "1", "0", "yes", "no", "on", "off"])
const Format = Schema.Literals(["default", "triton"])
const LogFormat = Schema.Literals(["text", "json"])
const BytesOrZero = decimal(false).check(Schema.isInt(), Schema.isBetween({ minimum: 0, maximum: 2 ** 31 - 1 }))
const Threads = decimal(false).check(Schema.isInt(), Schema.isBetween({ minimum: 0, maximum: 64 }))

/** One option: its flag, its variable, how it reads, and where it goes in `ServerConfig`. */
export interface Option {
  readonly key: keyof ServerConfig
  /** The flag without its dashes. */
  readonly flag: string
  readonly variable: string
  readonly metavar: string
  readonly description: string
  /** Decodes the text; fails with a message. */
  readonly decode: (text: string) => { readonly value: unknown } | { readonly error: string }
  /** The flag may be given several times; its values reach `decode` joined with commas (as its variable takes them). */
  readonly repeatable?: boolean
}

const withSchema = <A>(schema: Schema.Codec<A, string>, map: (a: A) => unknown = (a) => a) => (text: string) => {
  const result = Schema.decodeUnknownResult(schema)(text)
  return result._tag === "Success" ? { value: map(result.success) } : { error: result.failure.message.replace(/\n\s*/g, " ") }
}

const truthy = (text: string) => text === "true" || text === "1" || text === "yes" || text === "on"

/** Every option of the server, in help order. */
export const options: ReadonlyArray<Option> = [
  { key: "host", flag: "host", variable: "HOST", metavar: "HOST", description: `address to bind (default ${defaults.host})`, decode: withSchema(Host) },
  { key: "port", flag: "port", variable: "PORT", metavar: "PORT", description: `port, 0 for any free one (default ${defaults.port})`, decode: withSchema(Port) },
  {
    key: "models",
    flag: "models",
    variable: "MODEL_REPOSITORY",
    metavar: "DIR",
    description: "model repository (default: the bundled models/)",
    decode: withSchema(Schema.String.check(Schema.isMinLength(1)), (dir) => Path.resolve(dir))
  },
  {
    key: "maxBodyBytes",
    flag: "max-body-bytes",
    variable: "MAX_BODY_BYTES",
    metavar: "N",
    description: `largest request body in bytes (default ${defaults.maxBodyBytes})`,
    decode: withSchema(Bytes)
  },
  {
    key: "gracePeriod",
    flag: "grace-period-seconds",
    variable: "GRACE_PERIOD_SECONDS",
    metavar: "S",
    description: "longest drain on SIGTERM/SIGINT; a second signal exits at once (default 30)",
    decode: withSchema(Seconds, (s) => Duration.millis(s * 1000))
  },
  {
    key: "grpcPort",
    flag: "grpc-port",
    variable: "GRPC_PORT",
    metavar: "PORT",
    description: `gRPC port on the same host, 0 for any free one, off for none (default ${defaults.grpcPort}; 0 when --port is 0)`,
    decode: (text) => (text.toLowerCase() === "off" ? { value: undefined } : withSchema(Port)(text))
  },
  {
    key: "grpcStreamOrder",
    flag: "grpc-stream-order",
    variable: "GRPC_STREAM_ORDER",
    metavar: "ORDER",
    description: "completion: ModelStreamInfer writes each answer as it completes (match them by id); request: in the order of the requests, as Triton does (default completion)",
    decode: withSchema(StreamOrder)
  },
  {
    key: "modelControlMode",
    flag: "model-control-mode",
    variable: "MODEL_CONTROL_MODE",
    metavar: "MODE",
    description: "none: every model loaded at start; explicit: only the --load-model ones, then POST /v2/repository/models/NAME/load|unload; " +
      "poll: every model at start, then the repository is rescanned every --repository-poll-secs and changed models reloaded (default none)",
    decode: withSchema(ModelControlMode)
  },
  {
    key: "repositoryPollInterval",
    flag: "repository-poll-secs",
    variable: "REPOSITORY_POLL_SECS",
    metavar: "S",
    description: "under --model-control-mode poll, seconds between two scans of the model repository, at least 1 (default 15)",
    decode: withSchema(Seconds.check(Schema.isGreaterThanOrEqualTo(1)), (s) => Duration.millis(s * 1000))
  },
  {
    key: "loadModels",
    flag: "load-model",
    variable: "LOAD_MODELS",
    metavar: "NAME",
    description: "under explicit model control, a model loaded at start (repeatable; * for every model of the repository, as Triton's)",
    repeatable: true,
    decode: (text) => {
      const names = text.split(",").map((n) => n.trim()).filter((n) => n !== "")
      if (names.includes(allModels) && names.length > 1) return { error: `"*" (every model) must be the only model named, as in Triton` }
      const bad = names.find((name) => name !== allModels && !ModelRepository.isValidModelName(name))
      return bad === undefined ? { value: names } : { error: `${JSON.stringify(bad)}: ${ModelRepository.modelNameRule}` }
    }
  },
  {
    key: "strictReadiness",
    flag: "strict-readiness",
    variable: "STRICT_READINESS",
    metavar: "BOOL",
    description: "true: /v2/health/ready is 503 while any model that should be up is unavailable (never loaded or unloaded ones do not count) or the repository holds none; false: ready once listening (default true)",
    decode: withSchema(Bool, truthy)
  },
  {
    key: "exitOnError",
    flag: "exit-on-error",
    variable: "EXIT_ON_ERROR",
    metavar: "BOOL",
    description: "true: exit 1 at start when any model fails to load; false: serve the others (default false)",
    decode: withSchema(Bool, truthy)
  },
  {
    key: "metricsFormat",
    flag: "metrics-format",
    variable: "METRICS_FORMAT",
    metavar: "FORMAT",
    description: "default: inference_* families; triton: Triton's nv_inference_* and nv_cache_* names too, for existing dashboards (default default)",
    decode: withSchema(Format)
  },
  {
    key: "logFormat",
    flag: "log-format",
    variable: "LOG_FORMAT",
    metavar: "FORMAT",
    description: "text: a line a log event; json: one JSON object a line (time, level, message, fiber, cause), for a log collector (default text)",
    decode: withSchema(LogFormat)
  },
  {
    key: "decodeThreads",
    flag: "decode-threads",
    variable: "DECODE_THREADS",
    metavar: "N",
    description: "threads that decode large JSON inference bodies while the main thread has a queue of them; worth it only with cores to spare (default 0: none)",
    decode: withSchema(Threads)
  },
  {
    key: "largeBodyBytes",
    flag: "large-body-bytes",
    variable: "LARGE_BODY_BYTES",
    metavar: "N",
    description: `JSON inference bodies of N bytes and more are always decoded on a thread, so that parsing one does not stall every other request (default ${defaults.largeBodyBytes}; 0: none)`,
    decode: withSchema(BytesOrZero)
  }
]

/** The environment variables that the server reads besides its options', for the help text. */
export const environment: ReadonlyArray<readonly [string, string]> = [
  ["MAX_CONCURRENT_REQUESTS", "native runs (or batches) at once (default 4)"],
  ["MAX_QUEUED_REQUESTS", "queued requests before 429 (default 100)"],
  ["QUEUE_TIMEOUT_MS", "longest queue wait (default 5000)"],
  ["ENABLE_PRIORITY_QUEUE", "false: one FIFO for every priority (default true)"],
  ["AGING_MS", "aging bound of every level below critical, in ms (default: none, strict priority)"],
  ["RESPONSE_CACHE_BYTES", "bytes of the response cache, for models whose config.json has responseCache (default 0: none; Triton's --cache-config local,size=N)"],
  ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP/HTTP collector: traces, metrics and logs are exported there (default: none)"],
  ["OTEL_SERVICE_NAME", "service.name (default effect-onnx)"],
  ["OTEL_EXPORTER_OTLP_PROTOCOL", "http/json (default) or http/protobuf"],
  ["OTEL_EXPORTER_OTLP_HEADERS", "key=value,… sent with every export"],
  ["OTEL_RESOURCE_ATTRIBUTES", "key=value,… resource attributes"],
  ["OTEL_BSP_SCHEDULE_DELAY", "ms between span exports (default 5000)"],
  ["OTEL_METRIC_EXPORT_INTERVAL", "ms between metric exports (default 60000)"],
  ["OTEL_SDK_DISABLED", "true: no export"]
]

/** `environment` as help text: one `NAME  meaning` line each, aligned. */
export const environmentText = (): string => {
  const width = Math.max(...environment.map(([name]) => name.length))
  return environment.map(([name, meaning]) => `  ${name.padEnd(width)}  ${meaning}`).join("\n")
}

/**
 * Decodes the flags' values (by `Option.key`; undefined when not given) over `env` over the
 * defaults. Returns the configuration or a ConfigError naming the flag or variable.
 */
/**
 * Why the configured model repository cannot be served (it does not exist, is not a directory,
 * cannot be read), naming the flag or variable that gave it, or undefined. Apart from `decode`,
 * which reads no file: a manifest's settings are checked where its paths do not exist.
 */
export const checkRepository = (
  config: ServerConfig,
  flags: Readonly<Partial<Record<keyof ServerConfig, string | undefined>>>,
  env: Readonly<Record<string, string | undefined>>
): ConfigError | undefined => {
  const problem = ModelRepository.rootProblem(config.models)
  if (problem === undefined) return undefined
  const source = flags.models !== undefined
    ? `--models ${JSON.stringify(flags.models)}`
    : (env["MODEL_REPOSITORY"] ?? "") !== ""
    ? `MODEL_REPOSITORY ${JSON.stringify(env["MODEL_REPOSITORY"])}`
    : `model repository ${JSON.stringify(config.models)} (the bundled one)`
  return new ConfigError({ message: `invalid ${source}: ${problem}` })
}

export const decode = (
  flags: Readonly<Partial<Record<keyof ServerConfig, string | undefined>>>,
  env: Readonly<Record<string, string | undefined>>
): ServerConfig | ConfigError => {
  const config: Record<string, unknown> = { ...defaults }
  /** Where each setting came from (`--port` or `PORT`), for messages about it. */
  const sources: Record<string, string> = {}
  for (const option of options) {
    const fromFlag = flags[option.key]
    const fromEnv = env[option.variable]
    const [source, text] = fromFlag !== undefined
      ? [`--${option.flag}`, fromFlag]
      : fromEnv !== undefined && fromEnv !== ""
      ? [option.variable, fromEnv]
      : [undefined, undefined]
    if (text === undefined) continue
    // An empty variable is unset; an empty flag (`--port=`) is a mistake, not the default nor 0.
    if (fromFlag !== undefined && text.trim() === "") return new ConfigError({ message: `invalid ${source} ${JSON.stringify(text)}: a value is required (leave the flag out for the default)` })
    const decoded = option.decode(text)
    if ("error" in decoded) return new ConfigError({ message: `invalid ${source} ${JSON.stringify(text)}: ${decoded.error}` })
    config[option.key] = decoded.value
    sources[option.key] = source
  }
  // A free HTTP port (tests, several servers on one host) implies a free gRPC port too.
  const grpcGiven = flags.grpcPort !== undefined || (env["GRPC_PORT"] ?? "") !== ""
  if (!grpcGiven && config["port"] === 0) config["grpcPort"] = 0
  if ((config["loadModels"] as ReadonlyArray<string>).length > 0 && config["modelControlMode"] !== "explicit") {
    return new ConfigError({ message: `${sources["loadModels"]} needs --model-control-mode explicit or MODEL_CONTROL_MODE=explicit (without it every model is loaded)` })
  }
  if (sources["repositoryPollInterval"] !== undefined && config["modelControlMode"] !== "poll") {
    return new ConfigError({ message: `${sources["repositoryPollInterval"]} needs --model-control-mode poll or MODEL_CONTROL_MODE=poll (only the poll mode rescans the repository)` })
  }
  return config as unknown as ServerConfig
}
