/**
 * The server process's lifecycle, what `effect-onnx serve` (`Serve`) runs once its flags are
 * decoded:
 * - loads every model of the repository (under explicit model control, those `--load-model` names).
 *   A model that fails to load is UNAVAILABLE and the others serve, unless `--exit-on-error true`
 *   (then exit 1, naming the models); one left unloaded by explicit model control is no failure. An empty repository is
 *   a warning (and, under strict readiness, the server never turns ready).
 * - the first SIGTERM or SIGINT drains gracefully (`Server.shutdown`), releases every session and
 *   exits 0. A second signal ends the process at once by that signal (a log line says what was
 *   abandoned), even while a worker thread is inside a native run.
 * - run by an npm script (`npm start`: `npm_lifecycle_event` is set), when its parent process
 *   goes away (npm killed: npm does not pass SIGTERM on, and the server would go on under init),
 *   the server notices within `orphanPollMs` and drains as on SIGTERM. Run otherwise (`node
 *   src/bin/server.ts`, a process manager, `nohup … &` from a script that then exits), its
 *   parent's exit changes nothing. Both are watched from before the models load: a signal then
 *   stops the start (exit 0).
 *
 * @module ServerMain
 */
import * as GrpcJs from "@grpc/grpc-js"
import { Duration, Effect, Layer } from "effect"
import { HttpServer } from "effect/http"
import { readFileSync } from "node:fs"
import * as AsyncConfig from "../AsyncConfig.ts"
import { AsyncInferenceEngine } from "../Engine.ts"
import * as GrpcServer from "../grpc/GrpcServer.ts"
import { Lifecycle, unloadedReason } from "../http/Lifecycle.ts"
import * as Routes from "../http/Routes.ts"
import * as RepositoryPoll from "../http/RepositoryPoll.ts"
import * as Server from "../http/Server.ts"
import * as ServerConfig from "../http/ServerConfig.ts"
import { Statistics } from "../http/Statistics.ts"
import * as Live from "../Live.ts"
import { ModelPool } from "../ModelPool.ts"
import * as InstancePool from "../onnx/InstancePool.ts"
import * as ProcessHost from "../onnx/ProcessHost.ts"
import * as Cli from "./CliCommon.ts"
import * as LogFormat from "./LogFormat.ts"

const packageJson = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { name: string; version: string }

/** How often the server checks that its parent process is still there. */
export const orphanPollMs = 500

/**
 * Watches for the first stop request (SIGINT, SIGTERM, the parent's exit) and for a second one.
 * The first is left to the runtime (it interrupts the main fiber, whose finalizers drain); the
 * parent's exit raises SIGTERM on this process so that it takes the same path, unless a stop has
 * begun (then it is no second signal). The second exits at once with `onForce`'s line.
 */
const watchStops = (onForce: () => string, format: LogFormat.LogFormat) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      let stops = 0
      const onSignal = (signal: NodeJS.Signals) => {
        stops++
        Cli.markStoppedBySignal()
        if (stops < 2) return
        process.stderr.write(`${LogFormat.immediateLine(format, "WARN", `second ${signal}: exiting now without draining; ${onForce()}`)}\n`)
        // Ends by the signal's default action (status 128 + its number): process.exit would first
        // wait for a worker thread's native run to return, then abort (134). That runs no "exit"
        // handler, so the session processes (which ignore the group's signals) are killed first.
        ProcessHost.killSessionProcesses()
        process.removeAllListeners(signal)
        process.kill(process.pid, signal)
        process.exit(1)
      }
      // Never removed: a second signal must still force the exit while the layers close.
      process.on("SIGINT", () => onSignal("SIGINT"))
      process.on("SIGTERM", () => onSignal("SIGTERM"))
      const parent = Cli.parentAtStart
      if (process.env["npm_lifecycle_event"] === undefined) return undefined
      const timer = setInterval(() => {
        if (process.ppid === parent) return
        clearInterval(timer)
        // Already stopping (Ctrl-C on `npm start` signals npm and the server both): the drain goes
        // on; raising SIGTERM would count as a second signal and cut it short.
        if (stops > 0) return void process.stderr.write(`${LogFormat.immediateLine(format, "INFO", `parent process ${parent} is gone; the drain goes on`)}\n`)
        process.stderr.write(`${LogFormat.immediateLine(format, "WARN", `parent process ${parent} is gone: draining as on SIGTERM`)}\n`)
        process.kill(process.pid, "SIGTERM")
      }, orphanPollMs)
      timer.unref()
      return timer
    }),
    (timer) => Effect.sync(() => timer !== undefined && clearInterval(timer))
  )

/** Runs the server until interrupted (a signal), then drains. Fails with an exit code once reported. */
/** The HTTP server, gRPC beside it (unless --grpc-port off), and the engine over the repository, as configured. */
const appLayer = (config: ServerConfig.ServerConfig) => {
  const Http = Server.layer({
    host: config.host,
    port: config.port,
    bodyLimitBytes: config.maxBodyBytes,
    serverName: packageJson.name,
    serverVersion: packageJson.version,
    redactPaths: Routes.repositoryRoots(config.models),
    strictReadiness: config.strictReadiness,
    metricsFormat: config.metricsFormat,
    decodeThreads: config.decodeThreads,
    largeBodyBytes: config.largeBodyBytes
  })
  /** gRPC beside HTTP, on the same host, engine and lifecycle (so a signal drains both); none with --grpc-port off. */
  const Grpc = config.grpcPort === undefined
    ? Layer.empty
    : GrpcServer.layer({
      host: config.host,
      port: config.grpcPort,
      maxMessageBytes: config.maxBodyBytes,
      serverName: packageJson.name,
      serverVersion: packageJson.version,
      redactPaths: Routes.repositoryRoots(config.models),
      strictReadiness: config.strictReadiness,
      streamOrder: config.grpcStreamOrder
    })
  const app = Grpc.pipe(
    Layer.provideMerge(Http),
    Layer.provideMerge(Live.layerConfig({
      repository: config.models,
      modelControl: config.modelControlMode,
      loadModels: config.loadModels,
      serviceName: packageJson.name,
      serviceVersion: packageJson.version,
      // Triton's statistics, fed by the same telemetry as /metrics.
      telemetry: Statistics.layer
    }))
  )
  // Under --model-control-mode poll, the poller follows the repository from the first interval on.
  return config.modelControlMode === "poll"
    ? RepositoryPoll.layer({ interval: config.repositoryPollInterval }).pipe(Layer.provideMerge(app))
    : app
}

/**
 * Logs what loaded: a warning for an empty repository and for each model version that failed to
 * load; with --exit-on-error, fails (exit 1) when any did, or when a `--load-model` names no model
 * of the repository (the pool warned of it). A version explicit model control left unloaded
 * because nobody asked for it is no failure.
 */
const reportModels = (config: ServerConfig.ServerConfig) =>
  Effect.gen(function*() {
    const models = yield* (yield* ModelPool).models
    const loaded = models.filter((m) => m.state === "READY" || m.reason !== unloadedReason)
    const unavailable = loaded.filter((m) => m.state !== "READY")
    const missing = config.modelControlMode === "explicit"
      ? config.loadModels.filter((name) => name !== ServerConfig.allModels && !models.some((m) => m.name === name))
      : []
    if (config.exitOnError && missing.length > 0) {
      yield* Effect.logError(`--load-model ${missing.join(", ")}: not in the model repository ${config.models}; exiting (--exit-on-error)`)
      return yield* Effect.fail(new Cli.ExitCode({ code: 1 }))
    }
    if (models.length === 0) {
      yield* Effect.logWarning(
        `the model repository ${config.models} holds no model${config.strictReadiness ? ": the server will not turn ready (--strict-readiness)" : ""}`
      )
    }
    for (const m of unavailable) yield* Effect.logWarning(`model ${m.name}@${m.version} is UNAVAILABLE: ${m.reason ?? "unknown reason"}`)
    if (config.exitOnError && unavailable.length > 0) {
      yield* Effect.logError(`${unavailable.length} of ${loaded.length} model versions failed to load; exiting (--exit-on-error)`)
      return yield* Effect.fail(new Cli.ExitCode({ code: 1 }))
    }
    yield* reportResponseCache(models.filter((m) => m.state === "READY"))
  })

/**
 * Says whether the response cache serves the model versions that ask for it (config.json
 * `responseCache`): the bytes it has, or a warning when `RESPONSE_CACHE_BYTES` gave it none.
 */
const reportResponseCache = (ready: ReadonlyArray<{ readonly name: string; readonly version: string }>) =>
  Effect.gen(function*() {
    const pool = yield* ModelPool
    const bytes = (yield* AsyncInferenceEngine).config.responseCacheBytes ?? 0
    const asking: Array<string> = []
    for (const m of ready) {
      const metadata = yield* Effect.option(pool.metadata(m.name, m.version))
      if (metadata._tag === "Some" && metadata.value.responseCache === true) asking.push(`${m.name}@${m.version}`)
    }
    if (asking.length === 0) return
    yield* bytes > 0
      ? Effect.logInfo(`response cache: ${bytes} bytes for ${asking.join(", ")}`)
      : Effect.logWarning(`${asking.join(", ")}: config.json enables responseCache, but RESPONSE_CACHE_BYTES is 0, so nothing is cached`)
  })

const leftRunningText = () => {
  const count = InstancePool.leftRunningCount()
  return `abandoning ${count} worker thread${count === 1 ? "" : "s"} still inside a native run`
}

export const run = (config: ServerConfig.ServerConfig): Effect.Effect<void, Cli.ExitCode> => {
  LogFormat.routeGrpcLog(config.logFormat, GrpcJs.setLogger)
  /** What a second signal abandons: the models being loaded, until the server listens. */
  let abandoned = () => "abandoning the models being loaded"
  const main = Effect.gen(function*() {
    yield* reportModels(config)
    const lifecycle = yield* Lifecycle
    const engine = yield* AsyncInferenceEngine
    abandoned = () => {
      const pending = Effect.runSync(Effect.orElseSucceed(engine.pending, () => NaN))
      return `abandoning ${lifecycle.inFlight()} requests in flight (HTTP and gRPC) and ${pending} requests queued or running in the engine`
    }
    // Registered after the layers were built, so it runs before they close.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        // Sequences of stateful models under way go on until they end (Triton's rule): say how many the drain waits for.
        const sequencesUnderWay = Effect.map(engine.sequences, (byModel) => {
          let n = 0
          for (const versions of byModel.values()) for (const count of versions.values()) n += count
          return n
        })
        const sequencesAtStart = yield* sequencesUnderWay
        yield* Effect.logInfo(
          `shutting down: draining for up to ${Duration.toSeconds(config.gracePeriod)} s${
            sequencesAtStart === 0 ? "" : `, until the ${sequencesAtStart} sequences under way end`
          } (a second signal exits at once)`
        )
        const report = yield* Server.shutdown(config.gracePeriod)
        const sequencesCut = report.drained ? 0 : yield* sequencesUnderWay
        const refused = config.grpcPort === undefined
          ? `${report.refused} requests refused meanwhile`
          : `${report.refused} HTTP requests and ${lifecycle.refused().grpc} gRPC requests refused meanwhile`
        yield* Effect.logInfo(
          report.drained && report.inFlight === 0
            ? `drained in ${report.elapsedMs} ms (${refused}); releasing sessions`
            : `grace period over after ${report.elapsedMs} ms with work still pending (${report.inFlight} requests in flight, HTTP and gRPC; ${report.connectionsDestroyed} connections destroyed${
              sequencesCut === 0 ? "" : `; ${sequencesCut} sequences cut before their end`
            }); releasing sessions`
        )
      })
    )
    const server = yield* HttpServer.HttpServer
    yield* Effect.logInfo(`listening on ${HttpServer.formatAddress(server.address)} (models: ${config.models})`)
    const grpc = yield* Effect.serviceOption(GrpcServer.GrpcServer)
    if (grpc._tag === "Some") yield* Effect.logInfo(`gRPC listening on ${grpc.value.address}`)
    return yield* Effect.never
  }).pipe(
    Effect.scoped,
    Effect.provide(appLayer(config)),
    Effect.catchTags({
      ServeError: (e) =>
        Effect.logError(`cannot listen on ${config.host}:${config.port}: ${String((e.cause as Error | undefined)?.message ?? e)}`).pipe(
          Effect.andThen(Effect.fail(new Cli.ExitCode({ code: 1 })))
        ),
      RepositoryError: (e) => Effect.logError(e.message).pipe(Effect.andThen(Effect.fail(new Cli.ExitCode({ code: 1 })))),
      GrpcServeError: (e) =>
        Effect.logError(`cannot listen for gRPC on ${GrpcServer.hostPort(config.host, config.grpcPort ?? 0)}: ${e.message}`).pipe(Effect.andThen(Effect.fail(new Cli.ExitCode({ code: 1 })))),
      ConfigError: (e) => Effect.logError(`invalid configuration: ${AsyncConfig.describeError(e)}`).pipe(Effect.andThen(Effect.fail(new Cli.ExitCode({ code: 2 }))))
    })
  )

  // Tracing and OTLP export are decided by Live.layerConfig (traced only when exporting).
  // The stops are watched from before the models load: a signal or the parent's exit then stops the start.
  return Effect.scoped(Effect.andThen(watchStops(() => abandoned(), config.logFormat), Effect.ensuring(main, Cli.awaitLeftRunning(() => abandoned = leftRunningText)))).pipe(
    LogFormat.withFormat(config.logFormat)
  )
}
