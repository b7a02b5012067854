/**
 * The standalone server as a layer: the OIP routes (`Routes`) served by `NodeHttpServer` on a
 * Node `http.Server` that this module keeps a handle on, plus the graceful `shutdown`.
 *
 * Shutdown (what the entry point runs on SIGTERM or SIGINT, before the layers close):
 * 1. `Lifecycle.beginShutdown`: at once, `/v2/health/ready` and model ready answer 503, new
 *    inferences 503 (ShuttingDown), and every response carries `Connection: close`, so that
 *    keep-alive connections close themselves after their next answer.
 * 2. The listener stops accepting connections. Idle keep-alive connections are not cut at this
 *    point: cutting one while its client sends resets that request (see `anchors.md` §6).
 * 3. `engine.drain(grace)`: queued and running requests finish, within the grace period.
 * 4. The HTTP requests still being answered finish (bounded by what is left of the grace).
 * 5. Idle connections are closed, then, after a short wait for the rest, every connection.
 * Closing the layers afterwards answers anything left in the queue with ShuttingDown and
 * releases every model session.
 *
 * @module Server
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Clock, Context, Deferred, Duration, Effect, Exit, Layer } from "effect"
import { HttpRouter, type HttpServer } from "effect/http"
import type { ServeError } from "effect/http/HttpServerError"
import * as Http from "node:http"
import * as Net from "node:net"
import { AsyncInferenceEngine } from "../Engine.ts"
import type { ModelPool } from "../ModelPool.ts"
import type { TelemetryCollector } from "../Telemetry.ts"
import { Lifecycle } from "./Lifecycle.ts"
import * as Routes from "./Routes.ts"

export interface Options extends Routes.Options {
  readonly host: string
  /** 0 binds any free port (read it from `HttpServer.address`). */
  readonly port: number
  /**
   * Idle time before Node closes a keep-alive connection. Default 65 s: above the idle timeout
   * of the proxies in front (KServe uses the same value).
   */
  readonly keepAliveTimeoutMs?: number | undefined
}

/** The Node server under the Effect one, for the shutdown sequence. */
export class NodeServer extends Context.Service<NodeServer, Http.Server>()("effect-inference/http/NodeServer") {}

/** Serves the routes on `options.host:options.port`; also provides the Lifecycle and the Node server. */
export const layer = (
  options: Options
): Layer.Layer<HttpServer.HttpServer | Lifecycle | NodeServer, ServeError, AsyncInferenceEngine | ModelPool | TelemetryCollector> =>
  Layer.unwrap(Effect.sync(() => {
    const server = Http.createServer({ keepAliveTimeout: options.keepAliveTimeoutMs ?? 65_000 })
    return HttpRouter.serve(Routes.layer(options), {
      disableLogger: true,
      disableListenLog: true,
      routerConfig: Routes.routerConfig
    }).pipe(
      Layer.provideMerge(NodeHttpServer.layer(() => server, { host: options.host, port: options.port, disablePreemptiveShutdown: true })),
      Layer.provideMerge(Lifecycle.layer),
      Layer.provideMerge(Layer.succeed(NodeServer, server))
    )
  }))

export interface ShutdownReport {
  /** Every queued and running request settled within the grace period. */
  readonly drained: boolean
  /** HTTP requests still being answered when the grace period ended. */
  readonly inFlight: number
  readonly elapsedMs: number
}

/** Stops accepting connections without closing idle keep-alive ones (http.Server#close would). */
const stopListening = (server: Http.Server): Deferred.Deferred<void> => {
  const closed = Deferred.makeUnsafe<void>()
  if (!server.listening) {
    Deferred.doneUnsafe(closed, Exit.void)
  } else {
    Net.Server.prototype.close.call(server, () => Deferred.doneUnsafe(closed, Exit.void))
  }
  return closed
}

/** The graceful shutdown (see the module doc). Never fails; idempotent enough to run twice. */
export const shutdown = (grace: Duration.Input): Effect.Effect<ShutdownReport, never, Lifecycle | NodeServer | AsyncInferenceEngine> =>
  Effect.gen(function*() {
    const lifecycle = yield* Lifecycle
    const server = yield* NodeServer
    const engine = yield* AsyncInferenceEngine
    const startedMs = yield* Clock.currentTimeMillis
    const graceMs = Duration.toMillis(Duration.fromInputUnsafe(grace))
    const remaining = Effect.map(Clock.currentTimeMillis, (now) => Duration.millis(Math.max(0, graceMs - (now - startedMs))))

    yield* lifecycle.beginShutdown
    const closed = stopListening(server)
    const { drained } = yield* engine.drain(grace)
    yield* lifecycle.awaitIdle.pipe(Effect.timeoutOption(yield* remaining))
    const inFlight = lifecycle.inFlight()
    server.closeIdleConnections()
    const left = yield* remaining
    yield* Deferred.await(closed).pipe(Effect.timeoutOption(Duration.max(Duration.min(left, Duration.seconds(1)), Duration.millis(100))))
    server.closeAllConnections()
    const elapsedMs = (yield* Clock.currentTimeMillis) - startedMs
    return { drained, inFlight, elapsedMs }
  }).pipe(Effect.withSpan("Server.shutdown"))
