/**
 * OpenTelemetry export: the engine's spans (`Engine.infer`, `OnnxModelPool.make`, …), its Effect
 * Metrics (`inference_*`, see `Telemetry`) and logs, sent to a collector over OTLP/HTTP by
 * effect's own exporters (`effect/observability` `Otlp`). No OpenTelemetry SDK is needed.
 *
 * `layer` is optional and additive: provide it next to the engine's layers (or to a
 * `ManagedRuntime`) and everything that runs there is traced and measured. Its scope owns the
 * exporters: closing it flushes what is still buffered (bounded by `shutdownTimeout`); its
 * `OtlpExporter.Flusher` flushes on demand.
 *
 * `layerFromEnv` reads the standard variables and is empty when `OTEL_EXPORTER_OTLP_ENDPOINT`
 * is unset, so an entry point can always provide it:
 *
 * | variable | meaning |
 * |---|---|
 * | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL of the collector (`/v1/traces`, `/v1/metrics`, `/v1/logs` are appended) |
 * | `OTEL_SERVICE_NAME` | `service.name` (default: the entry point's) |
 * | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/json` (default here) or `http/protobuf` |
 * | `OTEL_EXPORTER_OTLP_HEADERS` | `key=value,key2=value2` (values URL-encoded), e.g. an API key |
 * | `OTEL_RESOURCE_ATTRIBUTES` | `key=value,…` resource attributes |
 * | `OTEL_BSP_SCHEDULE_DELAY` | ms between span exports, a positive integer (default 5000) |
 * | `OTEL_METRIC_EXPORT_INTERVAL` | ms between metric exports, a positive integer (default 60000) |
 * | `OTEL_SDK_DISABLED` | `true` (any case) turns export off; any other value leaves it on |
 *
 * @module Otel
 */
import { Config, Duration, Effect, Layer, Option, Result, Schema } from "effect"
import { FetchHttpClient, HttpClient, HttpClientError } from "effect/http"
import { Otlp, OtlpExporter } from "effect/observability"

export interface Options {
  /** Base URL of the collector's OTLP/HTTP receiver, e.g. `http://127.0.0.1:4318`. */
  readonly endpoint: string
  /** `service.name` of the resource. Default `effect-onnx`. */
  readonly serviceName?: string | undefined
  readonly serviceVersion?: string | undefined
  /** Extra resource attributes. */
  readonly attributes?: Readonly<Record<string, string>> | undefined
  /** Wire format. Default `json`. */
  readonly protocol?: "json" | "protobuf" | undefined
  /** Sent with every export (authentication, tenant). */
  readonly headers?: Readonly<Record<string, string>> | undefined
  /** Time between span exports. Default 5 seconds (as the OpenTelemetry SDKs). */
  readonly tracesExportInterval?: Duration.Input | undefined
  /** Time between metric exports. Default 60 seconds (as the OpenTelemetry SDKs). */
  readonly metricsExportInterval?: Duration.Input | undefined
  /** How long closing the layer waits for the final flush. Default 1 second: telemetry never holds up a shutdown for longer. */
  readonly shutdownTimeout?: Duration.Input | undefined
  /** Longest wait for one export request (a collector that accepts and never answers). Default 10 seconds. */
  readonly requestTimeout?: Duration.Input | undefined
}

/** The default `service.name`. */
export const defaultServiceName = "effect-onnx"

/** The default bound on the final flush when the layer closes. */
export const defaultShutdownTimeout: Duration.Duration = Duration.seconds(1)

/**
 * The HTTP client the exporters use: `fetch`, each request bounded by `requestTimeout`, and the
 * first failed export (refused, unreachable, timed out, or answered with an error status) logged
 * once as a warning that names the endpoint: effect's exporters only log it at DEBUG and
 * drop what they held, so a collector that nothing listens on would otherwise go unnoticed.
 */
export const warningClient = (endpoint: string, requestTimeout: Duration.Input = Duration.seconds(10)): Layer.Layer<HttpClient.HttpClient> =>
  Layer.effect(
    HttpClient.HttpClient,
    Effect.gen(function*() {
      const client = yield* HttpClient.HttpClient
      let warned = false
      const warnOnce = (reason: string) =>
        Effect.suspend(() => {
          if (warned) return Effect.void
          warned = true
          return Effect.logWarning(
            `OpenTelemetry export to ${endpoint} failed (${reason}): traces, metrics and logs are being dropped. Check OTEL_EXPORTER_OTLP_ENDPOINT; further failures are not logged.`
          )
        })
      return client.pipe(HttpClient.transform((response, request) =>
        response.pipe(
          Effect.timeout(requestTimeout),
          Effect.tap((r) => (r.status >= 300 ? warnOnce(`${request.url} answered ${r.status}`) : Effect.void)),
          Effect.tapError((e) => warnOnce(`${request.url}: ${e._tag === "TimeoutError" ? "no answer in time" : String((e as { cause?: { message?: unknown } }).cause?.message ?? e.message)}`)),
          Effect.catchTag("TimeoutError", (e) => Effect.fail(new HttpClientError.HttpClientError({ reason: new HttpClientError.TransportError({ request, cause: e }) })))
        )
      ))
    })
  ).pipe(Layer.provide(FetchHttpClient.layer))

/**
 * Exports traces, metrics and logs to `options.endpoint` while the layer is alive; the console
 * logger stays in place. Uses `fetch` (`warningClient`); an unreachable collector loses data
 * and is reported once as a warning, but never fails the program, and closing the layer waits
 * at most `shutdownTimeout` (1 s) for the final flush.
 */
export const layer = (options: Options): Layer.Layer<OtlpExporter.Flusher> => {
  const otlp = options.protocol === "protobuf" ? Otlp.layerProtobuf : Otlp.layerJson
  return otlp({
    baseUrl: options.endpoint,
    resource: {
      serviceName: options.serviceName ?? defaultServiceName,
      serviceVersion: options.serviceVersion,
      attributes: { ...options.attributes }
    },
    headers: { ...options.headers },
    tracerExportInterval: options.tracesExportInterval ?? Duration.seconds(5),
    metricsExportInterval: options.metricsExportInterval ?? Duration.seconds(60),
    shutdownTimeout: options.shutdownTimeout ?? defaultShutdownTimeout
  }).pipe(Layer.provide(warningClient(options.endpoint, options.requestTimeout)))
}

/**
 * Parses the OpenTelemetry `key=value,key2=value2` list (values URL-encoded). Empty entries are
 * skipped; an entry that is not `key=value` with a key, or whose value does not decode (a `%`
 * not followed by two hex digits), fails, naming it: Effect's OTLP resource reads
 * `OTEL_RESOURCE_ATTRIBUTES` again itself, and ends the program on such a value.
 */
export const parseKeyValues = (text: string): Result.Result<Record<string, string>, string> => {
  const out: Record<string, string> = {}
  for (const item of text.split(",")) {
    if (item.trim() === "") continue
    const at = item.indexOf("=")
    const key = at < 0 ? "" : item.slice(0, at).trim()
    if (key === "") return Result.fail(`${JSON.stringify(item.trim())} is not key=value`)
    const raw = item.slice(at + 1).trim()
    try {
      out[key] = decodeURIComponent(raw)
    } catch {
      return Result.fail(`the value of ${JSON.stringify(key)} is not URL-encoded (a "%" starts %XX; write a "%" itself as %25): ${JSON.stringify(raw.slice(0, 100))}`)
    }
  }
  return Result.succeed(out)
}

/**
 * True when `env` asks for export (`OTEL_EXPORTER_OTLP_ENDPOINT` set and `OTEL_SDK_DISABLED` not
 * true): an entry point can leave tracing off (`References.TracerEnabled`) otherwise.
 */
export const isConfigured = (env: Readonly<Record<string, string | undefined>>): boolean =>
  (env["OTEL_EXPORTER_OTLP_ENDPOINT"] ?? "").trim() !== "" && !isDisabled(env["OTEL_SDK_DISABLED"])

/**
 * `OTEL_SDK_DISABLED` as the OpenTelemetry spec reads a boolean: `true` in any case disables, any
 * other value (or none) does not. `isConfigured` and `config` both read it so, so that the
 * tracing decision and the exporters agree.
 */
const isDisabled = (text: string | undefined): boolean => text?.trim().toLowerCase() === "true"

/** A variable's text, checked by `check` (an error message, or undefined) unless it is blank; none when unset or blank. */
const nonEmpty = (name: string, check: (text: string) => string | undefined = () => undefined) =>
  Config.option(Config.schema(
    Schema.String.check(Schema.makeFilter((text: string) => (text.trim() === "" ? undefined : check(text.trim())))),
    name
  )).pipe(Config.map(Option.filter((s) => s.trim() !== "")))

/** An http(s) URL, else why not. */
const checkUrl = (text: string): string | undefined => {
  const url = URL.parse(text)
  return url !== null && (url.protocol === "http:" || url.protocol === "https:") && url.host !== ""
    ? undefined
    : `expected an http:// or https:// URL, such as http://127.0.0.1:4318, got ${JSON.stringify(text)}`
}

const checkKeyValues = (text: string): string | undefined => {
  const parsed = parseKeyValues(text)
  return Result.isSuccess(parsed) ? undefined : `expected key=value,key2=value2: ${parsed.failure}`
}

const keyValues = (text: Option.Option<string>): Record<string, string> =>
  Option.match(text, { onNone: () => ({}), onSome: (t) => Result.getOrElse(parseKeyValues(t), () => ({})) })

/** Milliseconds between exports: a positive integer (0 would export without pause). */
const intervalMs = (name: string) => Config.option(Config.schema(Schema.Int.check(Schema.isGreaterThan(0)), name))

/**
 * The options the standard variables describe (see the module doc), or none when
 * `OTEL_EXPORTER_OTLP_ENDPOINT` is unset or `OTEL_SDK_DISABLED` is true.
 */
export const config = (defaults: { readonly serviceName?: string | undefined; readonly serviceVersion?: string | undefined } = {}): Config.Config<Option.Option<Options>> =>
  Config.all({
    disabled: Config.option(Config.String("OTEL_SDK_DISABLED")).pipe(Config.map((text) => isDisabled(Option.getOrUndefined(text)))),
    endpoint: nonEmpty("OTEL_EXPORTER_OTLP_ENDPOINT", checkUrl),
    serviceName: nonEmpty("OTEL_SERVICE_NAME"),
    protocol: Config.Literals(["http/json", "http/protobuf"], "OTEL_EXPORTER_OTLP_PROTOCOL").pipe(Config.withDefault("http/json" as const)),
    headers: nonEmpty("OTEL_EXPORTER_OTLP_HEADERS", checkKeyValues),
    attributes: nonEmpty("OTEL_RESOURCE_ATTRIBUTES", checkKeyValues),
    tracesMs: intervalMs("OTEL_BSP_SCHEDULE_DELAY"),
    metricsMs: intervalMs("OTEL_METRIC_EXPORT_INTERVAL")
  }).pipe(Config.map((c) => {
    if (c.disabled || Option.isNone(c.endpoint)) return Option.none()
    const attributes = keyValues(c.attributes)
    return Option.some<Options>({
      endpoint: c.endpoint.value,
      // As the OpenTelemetry spec orders them: OTEL_SERVICE_NAME, then service.name (and
      // service.version) in OTEL_RESOURCE_ATTRIBUTES, then the program's own.
      serviceName: Option.getOrElse(c.serviceName, () => attributes["service.name"] ?? defaults.serviceName ?? defaultServiceName),
      serviceVersion: attributes["service.version"] ?? defaults.serviceVersion,
      protocol: c.protocol === "http/protobuf" ? "protobuf" : "json",
      headers: keyValues(c.headers),
      attributes,
      tracesExportInterval: Option.match(c.tracesMs, { onNone: () => undefined, onSome: Duration.millis }),
      metricsExportInterval: Option.match(c.metricsMs, { onNone: () => undefined, onSome: Duration.millis })
    })
  }))

/**
 * `layer` configured from the environment (the current `ConfigProvider`), or a layer that
 * exports nothing when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset. Fails at startup with a
 * ConfigError naming a variable whose value is invalid: an endpoint that is not an http(s) URL,
 * headers or attributes that are not `key=value` lists, an export interval that is not a
 * positive integer (0 would export without pause).
 */
export const layerFromEnv = (
  defaults: { readonly serviceName?: string | undefined; readonly serviceVersion?: string | undefined } = {}
): Layer.Layer<OtlpExporter.Flusher, Config.ConfigError> =>
  Layer.unwrap(Effect.gen(function*() {
    const options = yield* config(defaults)
    return Option.isNone(options) ? OtlpExporter.layerFlusher : layer(options.value)
  }))
