/**
 * The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService` (so that
 * `tritonclient.grpc` and KServe's gRPC client work unchanged) and the standard
 * `grpc.health.v1.Health`, served by `@grpc/grpc-js` over the same engine, pool and lifecycle as
 * the HTTP routes.
 *
 * | RPC | answer |
 * |---|---|
 * | ServerLive, ServerReady | live always; ready as HTTP's `/v2/health/ready` (`Lifecycle.readiness`: strict readiness, shutdown) |
 * | ModelReady | ready, or false when unavailable or unknown (as Triton) |
 * | ServerMetadata, ModelMetadata | as `GET /v2`, `GET /v2/models/{m}` |
 * | ModelInfer | one inference; tensors in `raw_input_contents` or typed `contents`, outputs in `raw_output_contents` |
 * | ModelStreamInfer | a bidirectional stream of inferences, answered in completion order (`streamOrder` "request": in the order asked, as Triton) |
 * | ModelConfig, ModelStatistics | Triton's configuration and statistics extensions (`ModelConfiguration`, `Statistics`) |
 * | RepositoryIndex | every model version with its state and reason |
 * | RepositoryModelLoad / Unload | as HTTP's load and unload (`ModelControl`); INVALID_ARGUMENT without explicit model control |
 * | Health.Check | SERVING while ready (as ServerReady), NOT_SERVING otherwise, whatever service it names (as Triton) |
 * | (the shared-memory, trace and log RPCs) | UNIMPLEMENTED |
 *
 * The rules are HTTP's: a request is refused as early as it can be (shutting down, model name,
 * model lookup, a full queue before decoding), decoded by `Oip.prepare`, and run by
 * `engine.infer`. `parameters.priority` and `parameters.timeout` (µs) as over HTTP, counted from
 * the handler's start (the message's decoding is inside it); the call's
 * gRPC deadline is the request's deadline when it is sooner than the request's timeout (30 s when
 * it names none, as over HTTP), so when it passes the engine times the request out (counted as a
 * timeout) wherever it is. A client cancel interrupts the call's
 * fiber, which cancels the inference wherever it is (counted as cancelled). Errors are
 * `InferenceError.grpcCode` with HTTP's messages; a message over `maxMessageBytes` is refused
 * with RESOURCE_EXHAUSTED from its length prefix, before it is buffered.
 *
 * ModelStreamInfer: every request of the stream goes into the engine as it arrives, at most
 * `maxConcurrentRequests + maxQueuedRequests` outstanding (beyond that the stream is not read,
 * and HTTP/2 flow control holds the client back). Each answer is written as it completes (with
 * `streamOrder` "request", in the order of the requests, as Triton), with
 * `parameters.triton_final_response` true (one answer a request, as Triton marks them); a failed
 * request answers `error_message` (and the stream goes on), also a message that does not decode
 * as protobuf (unary: INVALID_ARGUMENT; grpc-js would end the call). A stream opened with
 * Triton's `triton_grpc_error: true` header ends at its first failed request instead, with that
 * failure's status (`endsOnError`): the answers written before it are those that came before it
 * in the stream's order. When the client half-closes, the stream ends once every answer is
 * written; when it cancels, what is outstanding is cancelled.
 *
 * The server is a scoped resource: closing the scope shuts it down: a stream that owes no
 * answer ends at once with UNAVAILABLE ("the server is shutting down"), one that does once it has
 * answered; calls in flight get `shutdownTimeout` to finish, then are cut. (The engine's drain,
 * which runs first on SIGTERM, is what lets queued requests finish; an idle stream does not hold
 * up the drain.)
 *
 * @module GrpcServer
 */
import * as Grpc from "@grpc/grpc-js"
import type * as Http2 from "node:http2"
import { constants as Http2Constants } from "node:http2"
import { Context, Data, Duration, Effect, Exit, Layer, Option, type Scope, Stream, Tracer } from "effect"
import { Headers, HttpTraceContext } from "effect/http"
import * as GrpcCodec from "./GrpcCodec.ts"
import * as GrpcService from "./GrpcService.ts"
import { GrpcFailure, type Requirements } from "./GrpcService.ts"

export { GrpcFailure }

export interface Options {
  /** An IPv4 or IPv6 address (bare, as HTTP's `--host`: `::1`, `::`) or a host name. */
  readonly host: string
  /** 0 binds any free port (read it from the service's `port`). */
  readonly port: number
  /** Largest message accepted, in bytes (RESOURCE_EXHAUSTED above). */
  readonly maxMessageBytes: number
  readonly serverName: string
  readonly serverVersion: string
  /** Directories whose path never appears in an answer. */
  readonly redactPaths?: ReadonlyArray<string> | undefined
  /** Triton's `--strict-readiness` for ServerReady and Health.Check, as HTTP's. Default true. */
  readonly strictReadiness?: boolean | undefined
  /**
   * The order of ModelStreamInfer's answers: "completion" (the default), each as it completes (match
   * them by `id`); "request", in the order of their requests, as Triton writes them for a model
   * that is not decoupled (a client may pair them by position; a fast request's answer waits for
   * the slower ones asked before it).
   */
  readonly streamOrder?: "completion" | "request" | undefined
  /** How long closing waits for calls in flight before cutting them. Default 5 seconds. */
  readonly shutdownTimeout?: Duration.Input | undefined
  /** Calls one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). Default `maxConcurrentStreams`. */
  readonly maxConcurrentStreams?: number | undefined
  /** Calls open at once over every connection; past it a call is refused at once. Default `maxOpenCalls`. */
  readonly maxOpenCalls?: number | undefined
  /** Connections open at once; past it a new one is closed as it comes. Default `maxConnections`. */
  readonly maxConnections?: number | undefined
  /** Stream resets (cancels, deadlines) a connection may send before it is closed. Default `streamResets`. */
  readonly streamResets?: { readonly burst: number; readonly perSecond: number } | undefined
}

/**
 * Calls (HTTP/2 streams) one connection may have open at once by default: 100 (HTTP/2's
 * recommended minimum). Without a bound (grpc-js and Node leave it at 2^32 - 1) one connection's
 * idle streams, a HEADERS frame of some 30 bytes each, cost the server about 17 KB each for as
 * long as the client keeps them: 80 000 took 1.35 GB. A client past the bound waits for one of its
 * calls to end (grpc-js queues them) rather than failing; the engine's own bound
 * (`maxConcurrentRequests + maxQueuedRequests`, 104 by default) decides what is refused. It was
 * 1 000: with many connections, the refused streams each held (`maxOpenCalls`) took the heap past
 * 400 MB; at 100 they stayed under 300.
 */
export const maxConcurrentStreams = 100

/**
 * Calls open at once over every connection, by default: 10 000. The bound a connection has
 * (`maxConcurrentStreams`) is no bound on a client that opens many connections: 250 connections
 * of 1 000 idle ModelStreamInfer calls each (a HEADERS frame each, never a message) took the
 * server past its 4 GB heap and it died. A call past this bound is answered at once with
 * RESOURCE_EXHAUSTED ("too many open calls") and costs nothing after; 10 000 idle calls cost
 * some 180 MB.
 */
export const maxOpenCalls = 10_000

/**
 * Connections open at once, by default: 1 000. With `maxConcurrentStreams` a connection, they bound
 * the HTTP/2 streams the server holds (a stream refused by `maxOpenCalls` still costs its
 * connection some memory until the garbage collector runs): without it, clients that opened
 * connection after connection of refused streams kept 600 MB of them live. A connection past the
 * bound is closed as it comes (Node's `maxConnections`).
 */
export const maxConnections = 1000

/**
 * Stream resets a connection may send, by default: a burst of 10 000, then 5 000 a second. Every
 * call a client cancels, or whose deadline passes, ends with a reset (RST_STREAM), and Node's
 * HTTP/2 protection against rapid-reset floods (a burst of 1 000, then 33 a second) closes the
 * connection past its bound (GOAWAY, INTERNAL_ERROR): every valid call in flight on it then
 * failed with INTERNAL. A reviewer's client of 8 loops, half with 10 ms deadlines, was closed
 * every ~1 450 calls. A reset here frees the call's work at once (the engine is interrupted), so a
 * flood of them costs little; past this bound Node's protection still closes the connection.
 */
export const streamResets = { burst: 10_000, perSecond: 5_000 } as const

/** Sets Node's stream-reset bound on the HTTP/2 servers grpc-js will create (private to grpc-js 1.14, checked by a test). */
const boundStreamResets = (server: Grpc.Server, limits: { readonly burst: number; readonly perSecond: number }): void => {
  const common = (server as unknown as { commonServerOptions?: Record<string, unknown> }).commonServerOptions
  if (common === undefined) return
  common["streamResetBurst"] = limits.burst
  common["streamResetRate"] = limits.perSecond
}

/** Sets `limit` on the Node servers grpc-js listens with (private to grpc-js 1.14, checked by a test). */
const boundConnections = (server: Grpc.Server, limit: number): void => {
  const servers = (server as unknown as { http2Servers?: Map<{ maxConnections: number }, unknown> }).http2Servers
  for (const listening of servers?.keys() ?? []) listening.maxConnections = limit
}

/** The longest `grpc-timeout` grpc-js can time: its timer takes the milliseconds as a 32-bit integer. */
const maxTimeoutMs = 2 ** 31 - 1

const timeoutUnitMs: Readonly<Record<string, number>> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 0.001, n: 0.000001 }

/**
 * A call's `grpc-timeout` past 2^31 - 1 ms (24.8 days) is set to that: grpc-js 1.14 truncates the
 * milliseconds to 32 bits, so a client's 25-day deadline (tritonclient's `client_timeout` of a
 * month, for "none") became negative and ended the call at once, DEADLINE_EXCEEDED. The request's
 * own timeout (30 s by default) is far sooner either way.
 */
const clampTimeout = (headers: Http2.IncomingHttpHeaders): void => {
  const header = headers["grpc-timeout"]
  if (typeof header !== "string") return
  const match = /(\d{1,8})\s*([HMSmun])/.exec(header)
  if (match !== null && Number(match[1]) * timeoutUnitMs[match[2]!]! > maxTimeoutMs) headers["grpc-timeout"] = `${Math.floor(maxTimeoutMs / 1000)}S`
}

/** The handlers grpc-js runs for each new HTTP/2 stream (private to grpc-js 1.14; one of them serves, as channelz is on or off). */
const streamHandlers = ["_streamHandler", "_channelzHandler"] as const

/**
 * Counts the calls open on `server` and refuses those past `limit` before grpc-js builds anything
 * for them: a trailers-only answer, RESOURCE_EXHAUSTED. Wraps grpc-js's private per-stream handlers
 * (checked by a test: a grpc-js that renames them fails it); returns the count of open calls.
 */
const boundOpenCalls = (server: Grpc.Server, limit: number): () => number => {
  let open = 0
  const internals = server as unknown as Record<string, unknown>
  for (const name of streamHandlers) {
    const handler = internals[name]
    if (typeof handler !== "function") continue
    internals[name] = function(this: unknown, extra: unknown, stream: Http2.ServerHttp2Stream, headers: Http2.IncomingHttpHeaders) {
      if (open >= limit) {
        stream.once("error", () => {})
        if (!stream.destroyed && !stream.headersSent) {
          stream.respond({
            ":status": 200,
            "content-type": "application/grpc",
            "grpc-status": String(Grpc.status.RESOURCE_EXHAUSTED),
            // Printable ASCII without "%": as gRPC's percent-encoding leaves it.
            "grpc-message": `too many open calls: ${limit} are open on this server; send it again once fewer are`
          }, { endStream: true })
          // And RST_STREAM (NO_ERROR) a second later, unless the client has ended its side by then: one
          // that never does would keep the refused stream, half closed, on the server. Not at once:
          // grpc-js's client then reads the reset before the status (INTERNAL, not RESOURCE_EXHAUSTED).
          setTimeout(() => {
            if (!stream.closed) stream.close(Http2Constants.NGHTTP2_NO_ERROR)
          }, 1000).unref()
        }
        return
      }
      open++
      stream.once("close", () => void open--)
      clampTimeout(headers)
      return (handler as (...args: Array<unknown>) => unknown).call(this, extra, stream, headers)
    }
  }
  return () => open
}

/**
 * `effect` in the call's server span, named as OpenTelemetry names RPC spans
 * (`inference.GRPCInferenceService/ModelInfer`), the child of the trace the call's metadata
 * carries (`traceparent`, or B3), as HTTP's server span is: the engine's spans nest under it.
 * Only when a tracer exports (a span costs CPU on every call for nobody otherwise).
 */
const traced = <A, E, R>(call: { readonly metadata: Grpc.Metadata; getPath(): string }, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withFiber((fiber) => {
    if (fiber.getRef(Tracer.Tracer) === Tracer.nativeTracer) return effect
    const entries: Record<string, string> = {}
    for (const [key, value] of Object.entries(call.metadata.getMap())) if (typeof value === "string") entries[key] = value
    const parent = Option.getOrUndefined(HttpTraceContext.fromHeaders(Headers.fromInput(entries)))
    return Effect.withSpan(effect, call.getPath().replace(/^\//, ""), parent === undefined ? { kind: "server" } : { kind: "server", parent })
  })

/** The server could not bind. */
export class GrpcServeError extends Data.TaggedError("GrpcServeError")<{ readonly message: string }> {}

export class GrpcServer extends Context.Service<GrpcServer, {
  readonly port: number
  /** Where it listens, as a client dials it: `host:port`, an IPv6 host in brackets (`[::1]:8001`). */
  readonly address: string
  readonly server: Grpc.Server
  /** Calls open now over every connection (`maxOpenCalls` bounds them). */
  readonly openCalls: () => number
}>()("effect-onnx/grpc/GrpcServer") {}

/**
 * `host:port` as gRPC targets spell it: an IPv6 literal goes in brackets (`[::]:8001`), as
 * without them its colons read as the port's; a host already in brackets is kept.
 */
export const hostPort = (host: string, port: number): string =>
  host.includes(":") && !host.startsWith("[") ? `[${host}]:${port}` : `${host}:${port}`

/** The call's deadline in ms since the epoch, or undefined for none. */
const deadlineOf = (call: { getDeadline(): Grpc.Deadline }): number | undefined => {
  const deadline = call.getDeadline()
  const ms = deadline instanceof Date ? deadline.getTime() : deadline
  return Number.isFinite(ms) ? ms : undefined
}

/**
 * How long after its deadline a call's work may go on before it is interrupted. The engine holds
 * the call's deadline as the request's own, and settles it as timed out on time; interrupting
 * first would count it as cancelled. Only work that outlasts its deadline (none that the engine
 * runs) waits this long.
 */
const deadlineGraceMs = 1000

/**
 * How close to its deadline a cancel is taken for the deadline. The server's deadline runs from
 * when it read the call's header, the client's from when it wrote it: a client cancels at its own
 * deadline (grpc-js and C-core send RST_STREAM then), which arrives before the server's by as
 * long as the header waited (network, a busy event loop).
 */
const deadlineToleranceMs = 50

/**
 * What grpc-js's cancel of a call means: a client's cancel interrupts at once; a deadline that
 * has passed (grpc-js ends such a call with DEADLINE_EXCEEDED itself), or a cancel less than
 * `deadlineToleranceMs` before it, leaves the engine to time the request out, and interrupts
 * only after `deadlineGraceMs`.
 */
const onCancelled = (call: { getDeadline(): Grpc.Deadline; on(event: "cancelled", listener: () => void): unknown }, interrupt: () => void) => {
  const deadlineMs = deadlineOf(call)
  call.on("cancelled", () => {
    if (deadlineMs !== undefined && Date.now() >= deadlineMs - deadlineToleranceMs) setTimeout(interrupt, deadlineGraceMs).unref()
    else interrupt()
  })
}

const toServiceError = (e: GrpcFailure): Partial<Grpc.StatusObject> => ({ code: e.code, details: e.details })

/** An unexpected failure (a defect) as INTERNAL "internal error", logged: it answers its own call or stream request only. */
const internalOnDefect = <A, R>(effect: Effect.Effect<A, GrpcFailure, R>): Effect.Effect<A, GrpcFailure, R> =>
  Effect.catchDefect(effect, (defect) =>
    Effect.andThen(
      Effect.logError("unexpected failure while answering a gRPC call", defect),
      Effect.fail(new GrpcFailure({ code: Grpc.status.INTERNAL, details: "internal error" }))
    ))

/**
 * What every stream answer carries, as Triton's stream answers do: each request gets exactly one
 * answer, its last (clients that asked for `triton_enable_empty_final_response` wait for it).
 */
const finalResponse = { triton_final_response: { bool_param: true } }

/** A stream answer to write, and the failure it reports (for a stream that ends on the first: `endsOnError`). */
interface StreamAnswer {
  readonly message: unknown
  readonly failure?: GrpcFailure | undefined
}

/** A failed request's answer: its error_message, with the request's model, version and id. */
const failedAnswer = (failure: GrpcFailure, request: { readonly model_name: string; readonly model_version: string; readonly id: string }): StreamAnswer => ({
  message: {
    error_message: failure.details,
    infer_response: { model_name: request.model_name, model_version: request.model_version, id: request.id, parameters: finalResponse }
  },
  failure
})

/**
 * Triton's `triton_grpc_error: true` stream header: the stream's first failed request ends it
 * with that failure's gRPC status (answers before it in the stream's order are written first;
 * those after it are cancelled), instead of an `error_message` answer and the stream going on.
 */
export const endsOnError = (metadata: Grpc.Metadata): boolean =>
  metadata.get("triton_grpc_error").some((v) => String(v).trim().toLowerCase() === "true")

/**
 * A call's requests, read one at a time as the consumer pulls (backpressure: what is not pulled
 * is not read). Returning stops reading and leaves the call alone. Node's own iterator does not:
 * once the call has seen an "error" event (the status a stopped stream ends with), its return
 * destroys the call, and answers still being written, and that status, were lost (the client got
 * CANCELLED at the shutdown timeout).
 */
export const requestsOf = <A>(call: NodeJS.EventEmitter & { read(): unknown }): AsyncIterable<A> => ({
  [Symbol.asyncIterator]: () => {
    let ended = false
    let failure: { readonly error: unknown } | undefined
    let wake: (() => void) | undefined
    const onReadable = () => wake?.()
    const onEnd = () => {
      ended = true
      wake?.()
    }
    const onError = (error: unknown) => {
      failure = { error }
      wake?.()
    }
    call.on("readable", onReadable)
    call.on("end", onEnd)
    call.on("error", onError)
    const cleanup = () => {
      wake = undefined
      call.off("readable", onReadable)
      call.off("end", onEnd)
      call.off("error", onError)
    }
    const next = (): Promise<IteratorResult<A>> =>
      new Promise((resolve, reject) => {
        const attempt = () => {
          const request = call.read()
          if (request !== null) return resolve({ value: request as A, done: false })
          if (failure !== undefined) {
            cleanup()
            return reject(failure.error)
          }
          if (ended) {
            cleanup()
            return resolve({ value: undefined, done: true })
          }
          wake = () => {
            wake = undefined
            attempt()
          }
        }
        attempt()
      })
    return {
      next,
      return: () => {
        cleanup()
        return Promise.resolve({ value: undefined, done: true })
      }
    }
  }
})

/** What `GrpcService.make` gives: the handlers every RPC calls. */
type Handlers = Effect.Success<ReturnType<typeof GrpcService.make>>

/** Runs an effect as a callback, with the server's services; returns its interrupt. */
type Run = ReturnType<typeof Effect.runCallbackWith<Requirements>>

/** A unary RPC: the effect runs as one call the lifecycle tracks; a cancel interrupts it. */
const unaryWith = (run: Run, handlers: Handlers) =>
<Req, Res>(f: (request: Req, deadlineMs: number | undefined) => Effect.Effect<Res, GrpcFailure, Requirements>) =>
(call: Grpc.ServerUnaryCall<Req, Res>, callback: Grpc.sendUnaryData<Res>) => {
  const request: unknown = call.request
  if (request instanceof GrpcCodec.Undecodable) return callback({ code: Grpc.status.INVALID_ARGUMENT, details: request.details })
  const effect = traced(call, internalOnDefect(handlers.lifecycle.track(f(call.request, deadlineOf(call)))))
  const interrupt = run(effect, {
    onExit: (exit) => {
      if (Exit.isSuccess(exit)) return callback(null, exit.value)
      const failure = exit.cause.reasons.find((r) => r._tag === "Fail")
      if (failure !== undefined) return callback(toServiceError(failure.error as GrpcFailure))
      // Interrupted: the client is gone (cancel or deadline); grpc-js has already ended the call.
      callback({ code: Grpc.status.CANCELLED, details: "cancelled" })
    }
  })
  onCancelled(call, interrupt)
}

type InferStream = Grpc.ServerDuplexStream<GrpcCodec.ModelInferRequest, unknown>

/** The open `ModelStreamInfer` streams, each with the requests it has received and not yet answered, and whether the server closes. */
interface Streams {
  readonly open: Map<InferStream, { outstanding: number; stop: () => void }>
  closing: boolean
}

/**
 * `ModelStreamInfer`: every request goes into the engine as it arrives; answers leave as they
 * complete, or in the order asked (`Options.streamOrder`). A failed inference is an answer with
 * its `error_message`, unless the client asked `triton_grpc_error` (the stream then ends with its
 * status). Once the server closes, a stream ends when it owes no answer.
 */
const streamInferWith = (run: Run, handlers: Handlers, options: Options, streams: Streams) => (call: InferStream) => {
  const state = { outstanding: 0, stop: () => {} }
  const endOnError = endsOnError(call.metadata)
  /** Writes an answer; with `triton_grpc_error`, a failed one ends the stream with its status instead. */
  const write = ({ message, failure }: StreamAnswer) =>
    failure !== undefined && endOnError
      ? Effect.fail(failure)
      : Effect.callback<void>((resume) => {
        if (call.write(message)) resume(Effect.void)
        else call.once("drain", () => resume(Effect.void))
      }).pipe(Effect.andThen(Effect.sync(() => {
        state.outstanding--
        // Closing: a stream ends once it owes nothing.
        if (streams.closing && state.outstanding === 0) state.stop()
      })))
  const deadlineMs = deadlineOf(call)
  const concurrency = handlers.engine.config.maxConcurrentRequests + handlers.engine.config.maxQueuedRequests
  /** A stream answer: the inference's response, or its error_message (also for a message that did not decode). */
  const answer = (message: GrpcCodec.ModelInferRequest | GrpcCodec.Undecodable): Effect.Effect<StreamAnswer, never, Requirements> =>
    message instanceof GrpcCodec.Undecodable
      ? Effect.succeed(failedAnswer(new GrpcFailure({ code: Grpc.status.INVALID_ARGUMENT, details: message.details }), { model_name: "", model_version: "", id: "" }))
      : internalOnDefect(handlers.infer(message, deadlineMs)).pipe(
        Effect.match({
          onFailure: (e) => failedAnswer(e, message),
          onSuccess: (response) => ({ message: { error_message: "", infer_response: { ...response, parameters: finalResponse } } })
        })
      )
  const effect = Stream.fromAsyncIterable(requestsOf<GrpcCodec.ModelInferRequest | GrpcCodec.Undecodable>(call), (e) => e).pipe(
    Stream.tap(() => Effect.sync(() => void state.outstanding++)),
    Stream.mapEffect(answer, { concurrency, unordered: options.streamOrder !== "request" }),
    Stream.runForEach(write)
  )
  const interrupt = run(traced(call, effect), {
    onExit: (exit) => {
      streams.open.delete(call)
      if (Exit.isSuccess(exit)) return call.end()
      if (call.cancelled) return
      const failure = exit.cause.reasons.find((r) => r._tag === "Fail")?.error
      call.emit("error", failure instanceof GrpcFailure
        ? toServiceError(failure)
        : failure === undefined && (streams.closing || handlers.lifecycle.isShuttingDown())
        ? { code: Grpc.status.UNAVAILABLE, details: "the server is shutting down" }
        : { code: Grpc.status.INTERNAL, details: failure === undefined ? "internal error" : String((failure as Error)?.message ?? failure) })
    }
  })
  state.stop = () => interrupt()
  streams.open.set(call, state)
  onCancelled(call, interrupt)
}

/** The inference service's RPCs and the health service's `Check`, over `handlers`. */
const services = (run: Run, handlers: Handlers, options: Options, streams: Streams) => {
  const unary = unaryWith(run, handlers)
  const inference: Grpc.UntypedServiceImplementation = {
    ServerLive: unary(() => Effect.succeed({ live: true })),
    ServerReady: unary(() => Effect.map(handlers.serverReadiness, (r) => ({ ready: r.ready }))),
    ModelReady: unary(handlers.modelReady),
    ServerMetadata: unary(() => Effect.succeed({ name: options.serverName, version: options.serverVersion, extensions: handlers.extensions })),
    ModelMetadata: unary(handlers.modelMetadata),
    ModelInfer: unary(handlers.infer),
    ModelStreamInfer: streamInferWith(run, handlers, options, streams),
    ModelConfig: unary(handlers.modelConfig),
    ModelStatistics: unary(handlers.modelStatistics),
    RepositoryIndex: unary(handlers.repositoryIndex),
    RepositoryModelLoad: unary(handlers.modelControl("load")),
    RepositoryModelUnload: unary(handlers.modelControl("unload"))
  }
  // Whatever service it names, as Triton's Check (which never reads it): a Kubernetes probe
  // configured with a service name of its own still sees the server's readiness.
  const health: Grpc.UntypedServiceImplementation = {
    Check: unary(() => Effect.map(handlers.serverReadiness, (r) => ({ status: r.ready ? "SERVING" : "NOT_SERVING" })))
  }
  return { inference, health }
}

/**
 * Binds `server`; the scope's close stops it: streams that owe no answer end at once
 * (UNAVAILABLE), the others once they have answered, and what is left after `shutdownTimeout`
 * is forced.
 */
const bind = (server: Grpc.Server, options: Options, streams: Streams): Effect.Effect<number, GrpcServeError, Scope.Scope> => {
  const shutdownTimeout = Duration.fromInputUnsafe(options.shutdownTimeout ?? Duration.seconds(5))
  return Effect.acquireRelease(
    Effect.callback<number, GrpcServeError>((resume) => {
      server.bindAsync(hostPort(options.host, options.port), Grpc.ServerCredentials.createInsecure(), (error, port) => {
        if (error === null) boundConnections(server, options.maxConnections ?? maxConnections)
        resume(error === null ? Effect.succeed(port) : Effect.fail(new GrpcServeError({ message: error.message })))
      })
    }),
    () =>
      Effect.callback<void>((resume) => {
        streams.closing = true
        for (const state of [...streams.open.values()]) if (state.outstanding === 0) state.stop()
        server.tryShutdown(() => resume(Effect.void))
      }).pipe(
        Effect.timeoutOption(shutdownTimeout),
        Effect.andThen(Effect.sync(() => server.forceShutdown()))
      )
  )
}

/** Builds the server and binds it; the current scope owns it. */
export const make = (options: Options): Effect.Effect<GrpcServer["Service"], GrpcServeError, Requirements | Scope.Scope> =>
  Effect.gen(function*() {
    const context = yield* Effect.context<Requirements>()
    const handlers = yield* GrpcService.make(options)
    const run = Effect.runCallbackWith(context)
    const proto = Grpc.loadPackageDefinition(GrpcCodec.loadDefinitions()) as unknown as {
      inference: { GRPCInferenceService: { service: Grpc.ServiceDefinition } }
      grpc: { health: { v1: { Health: { service: Grpc.ServiceDefinition } } } }
    }
    const streams: Streams = { open: new Map(), closing: false }
    const { inference, health } = services(run, handlers, options, streams)
    const server = new Grpc.Server({
      "grpc.max_receive_message_length": options.maxMessageBytes,
      "grpc.max_send_message_length": -1,
      "grpc.max_concurrent_streams": options.maxConcurrentStreams ?? maxConcurrentStreams,
      // Nothing here serves channelz, and it keeps a record of every call and connection.
      "grpc.enable_channelz": 0
    })
    boundStreamResets(server, options.streamResets ?? streamResets)
    const openCalls = boundOpenCalls(server, options.maxOpenCalls ?? maxOpenCalls)
    // A message that does not decode is answered as bad input (INVALID_ARGUMENT; on a stream, its
    // error_message), not by grpc-js ending the call with INTERNAL.
    server.addService(GrpcCodec.tolerantRequests(proto.inference.GRPCInferenceService.service), inference)
    server.addService(GrpcCodec.tolerantRequests(proto.grpc.health.v1.Health.service), health)
    const port = yield* bind(server, options, streams)
    return { port, address: hostPort(options.host, port), server, openCalls }
  })

/** The gRPC server as a layer; needs what the HTTP routes need (`Statistics` optional). */
export const layer = (options: Options): Layer.Layer<GrpcServer, GrpcServeError, Requirements> => Layer.effect(GrpcServer, make(options))
