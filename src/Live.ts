/**
 * The one composed layer that every entry point runs: the engine over the onnxruntime pool (or a
 * pool you give), its telemetry and configuration, and the tracing decision with OTLP export,
 * made here once. The Promise facade (`InferenceClient`), the batch CLI (`infer`, `perf`), the
 * server (`effect-onnx serve`, `npm start`) and the demo all build on it.
 *
 * Tracing: spans cost CPU on every request and go nowhere without an exporter, so a layer is
 * traced when it exports (OTLP options given, or `OTEL_EXPORTER_OTLP_ENDPOINT` set for
 * `layerConfig`). Otherwise `layerConfig` sets `References.TracerEnabled` false for the program
 * it runs (an entry point's own), while `layer`, which an application composes, turns off only
 * its build's spans and leaves the application's tracing alone (the engine makes no span under
 * Effect's native tracer either way).
 *
 * @module Live
 */
import { type Config, Effect, Layer, Metric, References } from "effect"
import { type AsyncConfig, AsyncConfigService, config as asyncConfigFromEnv, type Overrides as AsyncConfigOverrides } from "./AsyncConfig.ts"
import { AsyncInferenceEngine } from "./Engine.ts"
import type { ModelPool } from "./ModelPool.ts"
import * as ModelRepository from "./ModelRepository.ts"
import * as OnnxModelPool from "./onnx/OnnxModelPool.ts"
import type { OtlpExporter } from "effect/observability"
import * as Otel from "./Otel.ts"
import { TelemetryCollector } from "./Telemetry.ts"

/** The model repository shipped with the package (`models/`: `mlp` and `silero_vad`): `ModelRepository.bundled`. */
export const bundledModels: string = ModelRepository.bundled

/** Where models come from; `PE` is how a pool given in `modelPool` fails to build. */
export interface PoolOptions<PE = unknown> {
  /** The repository root (see `ModelRepository`). Default: `bundledModels`. */
  readonly repository?: string | undefined
  /**
   * Defaults for models without a config.json, within config.json's bounds (`instances` 1–64, …):
   * an invalid one fails the layer with a RepositoryError naming it (`ModelRepository.defaultsProblem`).
   */
  readonly modelDefaults?: ModelRepository.DefaultsOverrides | undefined
  /**
   * Triton's model control mode (the server's `--model-control-mode`); default none. Under
   * "poll" the pool offers its `poll` side: provide `RepositoryPoll.layer` to follow the repository.
   */
  readonly modelControl?: "none" | "explicit" | "poll" | undefined
  /** Under explicit model control, the models loaded at start (`["*"]`: every model). */
  readonly loadModels?: ReadonlyArray<string> | undefined
  /** A pool to use instead of the onnxruntime one (a fake in tests); the options above are then unused. */
  readonly modelPool?: Layer.Layer<ModelPool, PE> | undefined
}

/** Where telemetry goes. */
export interface TelemetryOptions<T extends TelemetryCollector = TelemetryCollector> {
  /** The collector the engine reports to. Default `TelemetryCollector.layer` (Effect Metrics). */
  readonly collector?: Layer.Layer<TelemetryCollector> | undefined
  /** A layer over the collector (it may provide more, as the server's Statistics do). */
  readonly telemetry?: Layer.Layer<T, never, TelemetryCollector> | undefined
}

export interface Options<T extends TelemetryCollector = TelemetryCollector, PE = unknown> extends PoolOptions<PE>, TelemetryOptions<T> {
  /** Engine settings over `AsyncConfig.defaults`. */
  readonly config?: AsyncConfigOverrides | undefined
  /** Export traces and metrics over OTLP; traced only then. */
  readonly otel?: Otel.Options | undefined
}

export type Services<T extends TelemetryCollector = TelemetryCollector> = AsyncInferenceEngine | ModelPool | T

const onnxPool = (options: PoolOptions): Layer.Layer<ModelPool, ModelRepository.RepositoryError> =>
  OnnxModelPool.layer({
    repository: options.repository ?? bundledModels,
    defaults: options.modelDefaults,
    ...(options.modelControl === undefined ? {} : { modelControl: options.modelControl }),
    ...(options.loadModels === undefined ? {} : { loadModels: options.loadModels })
  })

/** The telemetry chain: the collector, under whatever decorates it. */
const telemetryLayer = <T extends TelemetryCollector>(options: TelemetryOptions<T>): Layer.Layer<T | TelemetryCollector> => {
  const collector = options.collector ?? TelemetryCollector.layer
  return options.telemetry === undefined ? collector : options.telemetry.pipe(Layer.provideMerge(collector))
}

const compose = <T extends TelemetryCollector, PE, E, R>(
  pool: Layer.Layer<ModelPool, PE>,
  telemetry: Layer.Layer<T | TelemetryCollector>,
  config: Layer.Layer<AsyncConfigService, E, R>,
  tracing: Layer.Layer<OtlpExporter.Flusher, Config.ConfigError> | undefined,
  /** Without export, turn tracing off for the program the layer is provided to too, not only for its build. */
  untracedProgram: boolean
) => {
  // Fresh: the engine and collector layers are module constants, which Effect builds once per
  // runtime; two stacks in one runtime (two servers over two repositories) shared the first's engine.
  const base = Layer.fresh(AsyncInferenceEngine.layer).pipe(Layer.provideMerge(Layer.mergeAll(pool, Layer.fresh(telemetry), config)))
  // A metric registry of the stack's own, for everything in it and the program it is provided to
  // (a server's /metrics, the OTLP exporter): Effect's default one is the whole process's, where
  // two engines (two InferenceClients, two servers) counted each other's requests.
  const registry = Layer.sync(Metric.MetricRegistry, () => new Map())
  // provideMerge: the tracer the OTLP layer installs must reach the runtime's own context.
  if (tracing !== undefined) return base.pipe(Layer.provideMerge(tracing), Layer.provideMerge(registry))
  const off = Layer.succeed(References.TracerEnabled, false)
  return (untracedProgram ? base.pipe(Layer.provideMerge(off)) : base.pipe(Layer.provide(off))).pipe(Layer.provideMerge(registry))
}

/**
 * The engine with everything it needs, configured from `options` alone (nothing read from the
 * environment). Without `otel` its build makes no span, and the program it is provided to keeps its
 * own tracing: under a Tracer of yours, your spans and each request's `Engine.infer` go to it
 * (under Effect's native tracer the engine makes none). Fails with a ConfigError naming an invalid engine setting (`AsyncConfig.validate`),
 * a RepositoryError when the repository root cannot be read, or as `options.modelPool` fails.
 */
export function layer<T extends TelemetryCollector = TelemetryCollector, PE = never>(
  options?: Options<T, PE>
): Layer.Layer<Services<T>, PE | ModelRepository.RepositoryError | Config.ConfigError>
/** With the collector's type named (`layer<MyCollector>({ modelPool })`) a pool's error is not inferred: `unknown`. */
export function layer<T extends TelemetryCollector>(options?: Options<T, unknown>): Layer.Layer<Services<T>, unknown>
export function layer<T extends TelemetryCollector, PE>(options: Options<T, PE> = {}): Layer.Layer<Services<T>, unknown> {
  return compose<T, PE | ModelRepository.RepositoryError, Config.ConfigError, never>(
    options.modelPool ?? onnxPool(options),
    telemetryLayer(options),
    AsyncConfigService.layerWith(options.config ?? {}),
    options.otel === undefined ? undefined : Otel.layer(options.otel),
    false
  )
}

export interface ConfigOptions<T extends TelemetryCollector = TelemetryCollector> extends Omit<PoolOptions, "modelPool">, TelemetryOptions<T> {
  /** `service.name` (and version) of exported telemetry, unless `OTEL_SERVICE_NAME` says otherwise. */
  readonly serviceName: string
  readonly serviceVersion?: string | undefined
  /** Adjusts the configuration read from the environment (the CLI raises the queue bound to its concurrency). */
  readonly adjust?: ((config: AsyncConfig) => AsyncConfig) | undefined
}

/**
 * The same, configured from the environment: the engine from `MAX_CONCURRENT_REQUESTS` and the
 * other `AsyncConfig` variables, OTLP export (and so tracing) from `OTEL_*` (`Otel.layerFromEnv`).
 * Fails with a ConfigError naming a bad variable. For entry points (the CLI, the server): without
 * export, tracing is off in the whole program it is provided to (`References.TracerEnabled`).
 */
export const layerConfig = <T extends TelemetryCollector = TelemetryCollector>(
  options: ConfigOptions<T>
): Layer.Layer<Services<T>, ModelRepository.RepositoryError | Config.ConfigError> => {
  const adjust = options.adjust
  const config = adjust === undefined
    ? AsyncConfigService.layerConfig
    : Layer.effect(AsyncConfigService, Effect.map(asyncConfigFromEnv, adjust))
  const exports = Otel.isConfigured(process.env)
  return compose(
    onnxPool(options),
    telemetryLayer(options),
    config,
    exports ? Otel.layerFromEnv({ serviceName: options.serviceName, serviceVersion: options.serviceVersion }) : undefined,
    true
  )
}
