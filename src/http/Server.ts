/**
 * The standalone server as a layer: the OIP routes (`Routes`) served by `NodeHttpServer` on a
 * Node `http.Server` that this module keeps a handle on, plus the graceful `shutdown`. The infer
 * route's common requests are answered before the router, on Node's request event (`NodeInfer`),
 * unless the tracer exports spans.
 *
 * Shutdown (what the entry point runs on SIGTERM or SIGINT, before the layers close):
 * 1. `Lifecycle.beginShutdown`: at once, `/v2/health/ready` and model ready answer 503, new
 *    inferences 503 (ShuttingDown), and every response carries `Connection: close`, so that
 *    keep-alive connections close themselves after their next answer (but for one with requests
 *    pipelined behind it on its connection: the last answer there closes it). Sequences of
 *    stateful models under way go on (Triton's rule): their next requests are still answered, and
 *    keep their connection (`InferExchange.keepsConnectionAtShutdown`), until they end.
 * 2. The HTTP requests that arrived before the signal finish, within the grace period: queued and
 *    running ones, and also those whose body is still arriving or being decoded, which the engine
 *    still admits; those that arrive after it are answered 503 at once and waited for no longer.
 *    The listener stays open meanwhile: a request that still arrives (Kubernetes removes the pod
 *    from its endpoints at the same time as it sends SIGTERM) gets a clean 503, where a closed
 *    listener would refuse it, or reset it if it was already in the accept queue. Idle
 *    keep-alive connections are not cut either: cutting one while its client sends resets that
 *    request (see `anchors.md` §6).
 * 3. `engine.drain` with what is left of the grace: it refuses new work and waits for what other
 *    callers (a library caller in the same process) still have queued or running, and for the
 *    sequences under way to end (or go idle). When the grace
 *    runs out it answers what never reached an instance ShuttingDown (503), and the server waits
 *    a poll phase and 20 ms for those answers to be written.
 * 4. The listener stops accepting connections: at the first quiet moment (no connection, no
 *    request, no answer finished for `quietMs`: a client answered with `Connection: close`
 *    reconnects at once, and gets its 503 on the new connection), and after one more pass of the
 *    event loop's poll phase (which accepts what the kernel queued while the process was not
 *    scheduled). Closing it any earlier resets the connections in its accept queue. Under clients
 *    that never stop knocking there is no quiet moment within `settleMs`: the server then holds
 *    connections (`Lifecycle.holdConnections`: answers stop carrying `Connection: close`, so the
 *    clients stay on their connections instead of reconnecting), waits until no new connection
 *    has arrived for `quietMs` (at most `settleMs` more), lets a poll phase accept what is queued,
 *    closes the listener and stops holding. Whoever connects after that is refused
 *    (ECONNREFUSED), which a retrying client handles like any unreachable server.
 * 5. Connections close: an active client's next request is answered with `Connection: close`;
 *    a connection that has stayed idle for `lingerMs` (1 s) is ended by the server (a client
 *    that has not sent for that long is not about to). The shutdown returns as soon as no
 *    connection is left. What is still open when the grace period ends is destroyed.
 * Closing the layers afterwards answers anything left in the queue with ShuttingDown and
 * releases every model session.
 *
 * @module Server
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Duration, Effect, Layer } from "effect"
import { HttpRouter, type HttpServer } from "effect/http"
import type { ServeError } from "effect/http/HttpServerError"
import * as Http from "node:http"
import * as Net from "node:net"
import { AsyncInferenceEngine } from "../Engine.ts"
import type { ModelPool } from "../ModelPool.ts"
import type { TelemetryCollector } from "../Telemetry.ts"
import { Lifecycle } from "./Lifecycle.ts"
import type * as NodeInfer from "./NodeInfer.ts"
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

/** The Node server under the Effect one, with its connections, for the shutdown sequence. */
export interface NodeServerHandle {
  readonly server: Http.Server
  /** Every open connection, with the number of requests it is answering and since when it idles. */
  readonly connections: ReadonlyMap<Net.Socket, { readonly active: number; readonly idleSinceMs: number }>
  /** The clock every time here is read from: the Clock of the layer's context, in ms. */
  readonly nowMs: () => number
  /** When the last connection or request arrived, or the last answer finished (`nowMs`). */
  readonly lastActivityMs: () => number
  /** When the last connection arrived (`nowMs`). */
  readonly lastConnectionMs: () => number
  /** Requests received since the server started. */
  readonly requests: () => number
  /** Requests received whose answer was cut (their connection closed before the answer was written). */
  readonly answersCut: () => number
}

export class NodeServer extends Context.Service<NodeServer, NodeServerHandle>()("effect-onnx/http/NodeServer") {}

/** A JSON `{error}` answer written on the raw socket, then the connection closed (as Node does for what it refuses). */
const rawJsonAnswer = (socket: Net.Socket, status: number, reason: string, message: string, extra = ""): void => {
  const body = JSON.stringify({ error: message })
  // Destroyed once written, as Node does: ending only our side would leave the socket open for
  // as long as a client that keeps its own side open wants (no parser watches it any more).
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ndate: ${new Date().toUTCString()}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}connection: close\r\n\r\n${body}`,
    () => socket.destroy()
  )
}

/** A JSON `{error}` answer on a response Node handed over, closing the connection after it. */
const jsonAnswer = (response: Http.ServerResponse, status: number, message: string): void => {
  const body = JSON.stringify({ error: message })
  response.shouldKeepAlive = false
  response.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body), connection: "close" })
  response.end(body)
}

/**
 * Why an HTTP/1.1 request's Host header is refused, or undefined (RFC 9112 §3.2: a server must
 * answer 400 to a request without one, with more than one, or with an invalid value; Node keeps the
 * first of several). Node's own check (`requireHostHeader`) answers an empty 400, so the server
 * turns it off and checks here. Cheap: a request has a few header lines.
 */
const badHost = (request: Http.IncomingMessage): string | undefined => {
  if (request.httpVersionMinor !== 1 || request.httpVersionMajor !== 1) return undefined
  const host = request.headers.host
  if (host === undefined) return "missing Host header: an HTTP/1.1 request must carry one"
  let lines = 0
  const raw = request.rawHeaders
  for (let i = 0; i < raw.length; i += 2) if (raw[i]!.length === 4 && raw[i]!.toLowerCase() === "host") lines++
  if (lines > 1) return "more than one Host header: an HTTP/1.1 request carries exactly one"
  // A host, an IPv6 literal and a port have no whitespace (an empty value is allowed).
  if (/\s/.test(host)) return "invalid Host header: it holds whitespace"
  return undefined
}

const refuseBadHost = (response: Http.ServerResponse, why: string): void => jsonAnswer(response, 400, why)

/**
 * A request read past `maxUnansweredRequests` on its connection: 429 without its work (its body
 * discarded). The connection stays open: closing it with requests the server has not read would
 * reset it, and the client would lose the answers it has not read yet.
 */
const refuseOverLimit = (request: Http.IncomingMessage, response: Http.ServerResponse): void => {
  request.resume()
  const body = JSON.stringify({ error: `more than ${maxUnansweredRequests} requests pipelined on one connection without reading their answers` })
  response.writeHead(429, { "content-type": "application/json", "content-length": Buffer.byteLength(body) })
  response.end(body)
}

/**
 * What Node's HTTP parser refuses (bytes that are not HTTP, a malformed header, headers over
 * 16 KiB) never reaches the routes; Node would answer a bare 400 or 431. This answers the same
 * status as JSON `{error}`, like every other error, and closes the connection. So do the other
 * answers Node would write itself: 417 for an `Expect` other than `100-continue` (Node's is
 * empty) and 405 for `CONNECT` (Node would close the connection without a word).
 */
const answerClientErrors = (server: Http.Server, afterAnswers: Tracked["afterAnswers"]): void => {
  server.on("checkExpectation", (request: Http.IncomingMessage, response: Http.ServerResponse) => {
    const expect = String(request.headers.expect).slice(0, 100)
    jsonAnswer(response, 417, `unsupported Expect header ${JSON.stringify(expect)}: only 100-continue is`)
  })
  server.on("connect", (_request: Http.IncomingMessage, socket: Net.Socket) => {
    rawJsonAnswer(socket, 405, "Method Not Allowed", "CONNECT is not supported: this is not a proxy", "allow: GET, HEAD, POST\r\n")
  })
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Net.Socket) => {
    if (error.code === "ECONNRESET" || !socket.writable) {
      socket.destroy()
      return
    }
    const answer = () => {
      // A response under way on this connection cannot be followed by another one.
      const started = (socket as Net.Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage?.headersSent === true
      if (!socket.writable || started) return void socket.destroy()
      const [status, reason, message] = error.code === "HPE_HEADER_OVERFLOW"
        ? [431, "Request Header Fields Too Large", "request headers too large"]
        : error.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? [408, "Request Timeout", "request not received in time"]
        : [400, "Bad Request", "malformed HTTP request"]
      rawJsonAnswer(socket, status, reason, message)
    }
    // The requests read before what Node refused are answered first (it reads no more of the connection).
    if (!afterAnswers(socket, answer)) answer()
  })
}

/**
 * Requests one connection may have read and not yet answered (HTTP/1.1 pipelining) before the
 * server stops reading it; it reads on once fewer are. Node stops reading a connection only when
 * its answers back up, which they do not while the requests are slower to answer than to parse:
 * a client that pipelined 200 000 `GET /v2/models/mlp` (8 MB) without reading had every one read,
 * the server grew to 4 GB and answered others after 10 s.
 */
export const maxPipelinedRequests = 32

/**
 * Requests one connection may have read and not answered at all. Node pauses a connection only
 * after the read in hand is parsed whole (up to 64 KiB: some 1 900 `GET /metrics`), so the requests
 * that came in the same read as the one that reached `maxPipelinedRequests` are still dispatched:
 * six connections that each wrote 1 900 `GET /metrics` at once had the server render 11 400 pages
 * (1 GB, `/v2/health/ready` 26 s late). Past this bound a request is answered 429 at once, without
 * its work (its answer is small, and waits its turn like the others).
 */
export const maxUnansweredRequests = 128

/** The members of Node's HTTP server connection that pause and resume its reading (`_http_server.js`). */
type PausableSocket = Net.Socket & { _paused?: boolean; parser?: { resume(): void } | null }

/**
 * A connection's state; `queued`: answers pipelined behind the one that has the connection (they
 * have none yet); `last`: the last request read on it, while unanswered; `whenAnswered`: what runs
 * once no request read on it is left to answer.
 */
interface Connection {
  active: number
  idleSinceMs: number
  readonly queued: Set<Http.ServerResponse>
  last: Http.IncomingMessage | undefined
  whenAnswered: (() => void) | undefined
}

interface Tracked extends NodeServerHandle {
  readonly onRequest: (...args: Array<any>) => void
  /**
   * Runs `f` once every request read on `socket` is answered (or cut); false, running nothing, when
   * none is pending, the client has ended its side, or the last request's body is incomplete.
   */
  readonly afterAnswers: (socket: Net.Socket, f: () => void) => boolean
  /**
   * Whether a request was read after `request` on its connection and is not answered yet: its
   * answer comes after this one (HTTP/1.1 answers in order), so this one must keep the connection.
   */
  readonly pipelinedBehind: (request: Http.IncomingMessage) => boolean
  /** Whether `request` was read past `maxUnansweredRequests` on its connection (it is refused). */
  readonly overLimit: (request: Http.IncomingMessage) => boolean
}

const track = (server: Http.Server, nowMs: () => number): Tracked => {
  const connections = new Map<Net.Socket, Connection>()
  let lastActivityMs = 0
  let lastConnectionMs = 0
  let requests = 0
  let answersCut = 0
  const over = new WeakSet<Http.IncomingMessage>()
  server.on("connection", (socket: Net.Socket) => {
    lastActivityMs = lastConnectionMs = nowMs()
    const state: Connection = { active: 0, idleSinceMs: lastActivityMs, queued: new Set(), last: undefined, whenAnswered: undefined }
    connections.set(socket, state)
    socket.once("close", () => {
      connections.delete(socket)
      // Answers queued behind the one that had the connection will never get it, and Node never
      // closes them: closing them here releases their requests, as a disconnect's are (their
      // handlers see "close" before "finish": cancelled).
      for (const response of state.queued) {
        if (response.socket !== null || response.destroyed) continue
        response.destroy()
        response.emit("close")
      }
    })
  })
  server.on("request", onRequest)
  // A request with `Expect: 100-continue` comes as "checkContinue" instead of "request".
  server.on("checkContinue", onRequest)
  function onRequest(request: Http.IncomingMessage, response: Http.ServerResponse) {
    lastActivityMs = nowMs()
    requests++
    const socket = request.socket as PausableSocket
    const state = connections.get(socket)
    if (state === undefined) return
    // Checked at every request: Node's own resume (once its answers drain) may have undone a pause.
    if (++state.active > maxUnansweredRequests) over.add(request)
    if (state.active >= maxPipelinedRequests && !socket._paused) {
      // As Node pauses a connection whose answers back up: `_paused` keeps a request's body read
      // (`IncomingMessage#_read`) from resuming it, and has the parser paused after this chunk.
      socket._paused = true
      socket.pause()
    }
    // Node gives a response the connection at once unless answers are ahead of it (pipelining).
    const queued = response.socket === null
    if (queued) state.queued.add(response)
    state.last = request
    response.once("close", () => {
      if (queued) state.queued.delete(response)
      if (state.last === request) state.last = undefined
      if (!response.writableFinished) answersCut++
      if (state.active-- === maxPipelinedRequests && socket._paused === true) {
        // As Node's `socketOnDrain` resumes it; Node pauses it again at the next request if its answers still back up.
        socket._paused = false
        socket.parser?.resume()
        socket.resume()
      }
      state.idleSinceMs = lastActivityMs = nowMs()
      if (state.active === 0 && state.whenAnswered !== undefined) {
        const f = state.whenAnswered
        state.whenAnswered = undefined
        f()
      }
    })
  }
  const afterAnswers = (socket: Net.Socket, f: () => void): boolean => {
    const state = connections.get(socket)
    // Nothing to wait for; or a client gone (it ended its side), or a request whose body will not
    // come now, which would never be answered.
    if (state === undefined || state.active === 0 || socket.readableEnded || state.last?.complete === false) return false
    state.whenAnswered = f
    return true
  }
  const pipelinedBehind = (request: Http.IncomingMessage): boolean => {
    const last = connections.get(request.socket)?.last
    return last !== undefined && last !== request
  }
  const overLimit = (request: Http.IncomingMessage): boolean => over.has(request)
  return { onRequest, afterAnswers, pipelinedBehind, overLimit, server, connections, nowMs, lastActivityMs: () => lastActivityMs, lastConnectionMs: () => lastConnectionMs, requests: () => requests, answersCut: () => answersCut }
}

/** Serves the routes on `options.host:options.port`; also provides the Lifecycle and the Node server. */
export const layer = (
  options: Options
): Layer.Layer<HttpServer.HttpServer | Lifecycle | NodeServer, ServeError, AsyncInferenceEngine | ModelPool | TelemetryCollector> =>
  Layer.unwrap(Effect.clockWith((clock) => Effect.sync(() => {
    // The Host check is ours (`badHost`): Node's answers an empty body.
    // No route upgrades a connection: a request with `Upgrade:` is an ordinary request (the pinned
    // Node 22.23 honours the option, tested; a Node without it ignores it). Handed to the upgrade
    // path, it escaped the request timeout, the Host check and the pipelining bound, and held its
    // connection for ever.
    const server = Http.createServer({
      keepAliveTimeout: options.keepAliveTimeoutMs ?? 65_000,
      requireHostHeader: false,
      shouldUpgradeCallback: () => false
    } as Http.ServerOptions)
    const handle = track(server, () => clock.currentTimeMillisUnsafe())
    answerClientErrors(server, handle.afterAnswers)
    let nodeInfer: NodeInfer.Handler | undefined
    const routes = Routes.layer({
      ...options,
      serveInferFromNode: (handler) => void (nodeInfer = handler),
      pipelinedBehind: (source) => handle.pipelinedBehind(source as Http.IncomingMessage)
    })
    const served = HttpRouter.serve(routes, {
      disableLogger: true,
      disableListenLog: true,
      routerConfig: Routes.routerConfig
    }).pipe(
      Layer.provideMerge(NodeHttpServer.layer(() => server, { host: options.host, port: options.port, disablePreemptiveShutdown: true })),
      // Fresh: one server's shutdown is its own, though another server is built in the same runtime.
      Layer.provideMerge(Layer.fresh(Lifecycle.layer)),
      Layer.provideMerge(Layer.succeed(NodeServer, handle))
    )
    // Once the router listens: the Host check, then the infer route's Node handler, go first; the router answers what they decline.
    const inferFirst = Layer.effectDiscard(Effect.acquireRelease(
      Effect.sync(() => routeThrough(server, nodeInfer, handle)),
      (restore) => Effect.sync(() => restore())
    ))
    return inferFirst.pipe(Layer.provideMerge(served))
  })))

/**
 * Puts the pipelining bound (`maxUnansweredRequests`: 429), the Host check (`badHost`: 400) and
 * `first` in front of the server's `request` and `checkContinue` listeners, except `tracked`'s,
 * which observes every request: a request they decline
 * goes to them. A request that sent `Expect: 100-continue` (curl does for bodies over 1 KiB) and
 * that `first` takes is told to continue before its body is read. Returns what puts the
 * listeners back.
 */
const routeThrough = (server: Http.Server, first: NodeInfer.Handler | undefined, tracked: Tracked): () => void => {
  type Listener = (request: Http.IncomingMessage, response: Http.ServerResponse) => void
  const keep = tracked.onRequest
  const requestListeners = server.listeners("request").filter((listener) => listener !== keep) as Array<Listener>
  const continueListeners = server.listeners("checkContinue").filter((listener) => listener !== keep) as Array<Listener>
  for (const listener of requestListeners) server.off("request", listener)
  for (const listener of continueListeners) server.off("checkContinue", listener)
  const onRequest: Listener = (request, response) => {
    if (tracked.overLimit(request)) return refuseOverLimit(request, response)
    const host = badHost(request)
    if (host !== undefined) return refuseBadHost(response, host)
    if (first !== undefined && first(request, response)) return
    for (const listener of requestListeners) listener.call(server, request, response)
  }
  const onCheckContinue: Listener = (request, response) => {
    if (tracked.overLimit(request)) return refuseOverLimit(request, response)
    const host = badHost(request)
    if (host !== undefined) return refuseBadHost(response, host)
    if (first !== undefined && first(request, response)) return response.writeContinue()
    for (const listener of continueListeners) listener.call(server, request, response)
  }
  server.on("request", onRequest)
  server.on("checkContinue", onCheckContinue)
  return () => {
    server.off("request", onRequest)
    server.off("checkContinue", onCheckContinue)
    for (const listener of requestListeners) server.on("request", listener)
    for (const listener of continueListeners) server.on("checkContinue", listener)
  }
}

export interface ShutdownReport {
  /** Every queued and running request settled within the grace period. */
  readonly drained: boolean
  /** Requests (HTTP and gRPC) accepted before the signal and still being answered when the grace period ended. */
  readonly inFlight: number
  /** Connections still open when the grace period ended (then destroyed). */
  readonly connectionsDestroyed: number
  /** HTTP requests refused by the shutdown (answered 503 ShuttingDown: inferences, model control). */
  readonly refused: number
  readonly elapsedMs: number
}

/** Stops accepting connections without closing idle keep-alive ones (http.Server#close would). */
const stopListening = (server: Http.Server): void => {
  if (server.listening) Net.Server.prototype.close.call(server)
}

/** How long a connection must have been idle, after the drain, before the server ends it. */
export const lingerMs = 1000

/** How long nothing must have happened (no arrival, no answer finished), after the drain, before the listener closes. */
export const quietMs = 200

/** Longest wait for a quiet moment after the accepted work was answered: then the listener closes anyway. */
export const settleMs = 500

/** Resumes after the event loop's next poll phase, where Node accepts the connections the kernel has queued. */
const afterPollPhase: Effect.Effect<void> = Effect.callback<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

/** The graceful shutdown (see the module doc). Never fails; idempotent enough to run twice. */
export const shutdown = (grace: Duration.Input): Effect.Effect<ShutdownReport, never, Lifecycle | NodeServer | AsyncInferenceEngine> =>
  Effect.gen(function*() {
    const lifecycle = yield* Lifecycle
    const { connections, lastActivityMs, lastConnectionMs, nowMs, server } = yield* NodeServer
    const engine = yield* AsyncInferenceEngine
    // One clock for everything here: the server's (`nowMs`), which also stamps its activity.
    const startedMs = nowMs()
    const graceMs = Duration.toMillis(Duration.fromInputUnsafe(grace))
    const leftMs = Effect.sync(() => Math.max(0, graceMs - (nowMs() - startedMs)))

    const refusedAtSignal = lifecycle.refused().http
    yield* lifecycle.beginShutdown
    // The edges refuse what arrives from now on. What they accepted before runs to its answer, also
    // a request whose body is still arriving or being decoded: the engine keeps admitting until
    // that is answered (or the grace is spent), and only then drains what is left (library callers).
    yield* lifecycle.awaitAcceptedIdle.pipe(Effect.timeoutOption(Duration.millis(yield* leftMs)))
    const { drained } = yield* engine.drain(Duration.millis(yield* leftMs))
    // Grace spent: the drain answered what never reached an instance (503 ShuttingDown); let
    // those answers reach their sockets before the connections are closed below.
    if (!drained) yield* Effect.andThen(afterPollPhase, Effect.sleep(Duration.millis(20)))
    const inFlight = lifecycle.acceptedInFlight()
    // Closing the listener resets connections still in its accept queue: wait for a quiet moment,
    // counted from the last answer too (its client may reconnect at once), then let one poll
    // phase accept what the kernel queued meanwhile, and check again.
    const answering = () => {
      for (const state of connections.values()) if (state.active > 0) return true
      return false
    }
    const quietForMs = () => (answering() ? 0 : nowMs() - lastActivityMs())
    const settledFrom = nowMs()
    let quiet = false
    while ((yield* leftMs) > 0 && nowMs() - settledFrom < settleMs) {
      if (quietForMs() < quietMs) {
        const settleLeftMs = settleMs - (nowMs() - settledFrom)
        yield* Effect.sleep(Duration.millis(Math.max(1, Math.min(quietMs - quietForMs() + 1, settleLeftMs, yield* leftMs))))
        continue
      }
      yield* afterPollPhase
      if (quietForMs() >= quietMs) {
        quiet = true
        break
      }
    }
    if (!quiet) {
      // No quiet moment: clients keep knocking, each reconnecting after its `Connection: close`
      // answer, so that the listener's accept queue is never empty. Hold their connections open
      // (answers keep them alive, so nobody reconnects) until no new connection has come for
      // `quietMs`, let a poll phase accept what is queued, then close.
      yield* lifecycle.holdConnections(true)
      const heldFrom = nowMs()
      const noNewConnectionForMs = () => nowMs() - lastConnectionMs()
      while ((yield* leftMs) > 0 && nowMs() - heldFrom < settleMs) {
        if (noNewConnectionForMs() < quietMs) {
          yield* Effect.sleep(Duration.millis(Math.max(1, Math.min(quietMs - noNewConnectionForMs() + 1, yield* leftMs))))
          continue
        }
        yield* afterPollPhase
        if (noNewConnectionForMs() >= quietMs) break
      }
      yield* afterPollPhase
    }
    stopListening(server)
    yield* lifecycle.holdConnections(false)
    // Connections close themselves after a `Connection: close` answer; end those left idle.
    while (connections.size > 0 && (yield* leftMs) > 0) {
      const now = nowMs()
      for (const [socket, state] of connections) {
        if (state.active === 0 && now - state.idleSinceMs >= lingerMs) socket.end()
      }
      yield* Effect.sleep(Duration.millis(Math.min(50, yield* leftMs)))
    }
    const connectionsDestroyed = connections.size
    server.closeAllConnections()
    for (const socket of connections.keys()) socket.destroy()
    const elapsedMs = nowMs() - startedMs
    return { drained, inFlight, connectionsDestroyed, refused: lifecycle.refused().http - refusedAtSignal, elapsedMs }
  }).pipe(Effect.withSpan("Server.shutdown"))
