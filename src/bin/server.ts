/**
 * The standalone Open Inference Protocol v2 server: `npm start`, or `node src/bin/server.ts`
 * (run the server process directly under a process manager: npm does not pass SIGTERM on).
 *
 * Loads every model of the repository (a model that fails to load is reported UNAVAILABLE and
 * the others serve), listens on 127.0.0.1:8000 unless told otherwise (`ServerConfig`), and on
 * SIGTERM or SIGINT drains gracefully (`Server.shutdown`), releases every session and exits 0.
 *
 * @module server
 */
import { NodeRuntime } from "@effect/platform-node"
import { Cause, Duration, Effect, Exit, Layer, References, Runtime } from "effect"
import { HttpServer } from "effect/http"
import { readFileSync } from "node:fs"
import { AsyncConfigService } from "../AsyncConfig.ts"
import { AsyncInferenceEngine } from "../Engine.ts"
import * as GrpcServer from "../grpc/GrpcServer.ts"
import * as Server from "../http/Server.ts"
import * as ServerConfig from "../http/ServerConfig.ts"
import { Statistics } from "../http/Statistics.ts"
import * as OnnxModelPool from "../onnx/OnnxModelPool.ts"
import * as Otel from "../Otel.ts"
import { TelemetryCollector } from "../Telemetry.ts"

const packageJson = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { name: string; version: string }

const config = ServerConfig.parse(process.argv.slice(2), process.env)
if (config instanceof ServerConfig.HelpRequested) {
  console.log(ServerConfig.usage)
  process.exit(0)
}
if (config instanceof ServerConfig.ConfigError) {
  console.error(`server: ${config.message}\n\n${ServerConfig.usage}`)
  process.exit(2)
}

const Http = Server.layer({
  host: config.host,
  port: config.port,
  bodyLimitBytes: config.maxBodyBytes,
  serverName: packageJson.name,
  serverVersion: packageJson.version,
  redactPaths: [config.models]
})

/** gRPC beside HTTP, on the same host, engine and lifecycle (so SIGTERM drains both); none with --grpc-port off. */
const Grpc = config.grpcPort === undefined
  ? Layer.empty
  : GrpcServer.layer({
    host: config.host,
    port: config.grpcPort,
    maxMessageBytes: config.maxBodyBytes,
    serverName: packageJson.name,
    serverVersion: packageJson.version,
    redactPaths: [config.models]
  })

const App = Grpc.pipe(Layer.provideMerge(Http)).pipe(
  Layer.provideMerge(AsyncInferenceEngine.layer),
  // Triton's statistics, fed by the same telemetry as /metrics.
  Layer.provideMerge(Statistics.layer),
  Layer.provide(Layer.mergeAll(
    OnnxModelPool.layer({ repository: config.models, modelControl: config.modelControlMode, loadModels: config.loadModels }),
    TelemetryCollector.layer,
    AsyncConfigService.layerConfig
  )),
  // Traces and metrics over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (see Otel); else nothing.
  Layer.provide(Otel.layerFromEnv({ serviceName: packageJson.name, serviceVersion: packageJson.version }))
)

const main = Effect.gen(function*() {
  // Registered after the layers were built, so it runs before they close.
  yield* Effect.addFinalizer(() =>
    Effect.gen(function*() {
      yield* Effect.logInfo(`shutting down: draining for up to ${Duration.toSeconds(config.gracePeriod)} s`)
      const report = yield* Server.shutdown(config.gracePeriod)
      yield* Effect.logInfo(
        report.drained
          ? `drained in ${report.elapsedMs} ms; releasing sessions`
          : `grace period over with requests still pending (${report.inFlight} HTTP requests in flight); releasing sessions`
      )
    })
  )
  const server = yield* HttpServer.HttpServer
  yield* Effect.logInfo(`listening on ${HttpServer.formatAddress(server.address)} (models: ${config.models})`)
  const grpc = yield* Effect.serviceOption(GrpcServer.GrpcServer)
  if (grpc._tag === "Some") yield* Effect.logInfo(`gRPC listening on ${config.host}:${grpc.value.port}`)
  return yield* Effect.never
}).pipe(
  Effect.scoped,
  Effect.provide(App),
  Effect.catchTags({
    ServeError: (e) => Effect.logError(`cannot listen on ${config.host}:${config.port}: ${String((e.cause as Error | undefined)?.message ?? e)}`).pipe(Effect.andThen(Effect.fail(1 as const))),
    RepositoryError: (e) => Effect.logError(e.message).pipe(Effect.andThen(Effect.fail(1 as const))),
    GrpcServeError: (e) => Effect.logError(`cannot listen for gRPC on ${config.host}:${config.grpcPort}: ${e.message}`).pipe(Effect.andThen(Effect.fail(1 as const)))
  }),
  Effect.catchTag("ConfigError", (e) => Effect.logError(`invalid engine configuration: ${e.message}`).pipe(Effect.andThen(Effect.fail(2 as const))))
)

/** A signal is the normal way to stop: exit 0 after the drain. Known failures exit with their code. */
const teardown: Runtime.Teardown = (exit, onExit) => {
  if (Exit.isSuccess(exit)) return onExit(0)
  if (Cause.hasInterruptsOnly(exit.cause)) return onExit(0)
  const code = Cause.findErrorOption(exit.cause)
  if (code._tag === "Some" && typeof code.value === "number") return onExit(code.value)
  console.error(Cause.pretty(exit.cause))
  return Runtime.defaultTeardown(exit, onExit)
}

/**
 * Spans cost CPU on every request (effect 4.1 records a stack frame per span) and go nowhere
 * without an exporter: tracing is on only when spans are exported (OTEL_EXPORTER_OTLP_ENDPOINT).
 */
const tracing = (process.env["OTEL_EXPORTER_OTLP_ENDPOINT"] ?? "") !== "" && process.env["OTEL_SDK_DISABLED"] !== "true"

NodeRuntime.runMain(Effect.provideService(main, References.TracerEnabled, tracing), { teardown, disableErrorReporting: true })
