/**
 * The Open Inference Protocol v2 REST routes (plus Triton's repository index and a Prometheus
 * page), as an `HttpRouter` layer over the engine and the model pool.
 *
 * | route | answer |
 * |---|---|
 * | `GET /v2` | server metadata `{name, version, extensions}` |
 * | `GET /v2/health/live`, `GET /v2/health/ready` | 200; ready is 503 once shutting down and, under strict readiness, while any model is unavailable (`Lifecycle.readiness`) |
 * | `GET /v2/models/{name}[/versions/{v}]` | model metadata; -1 for dynamic dims |
 * | `GET /v2/models/{name}[/versions/{v}]/ready` | `{name, ready}`: 200, or 503 when not ready |
 * | `POST /v2/models/{name}[/versions/{v}]/infer` | an inference, in JSON or with Triton's binary tensor data (`Oip`) |
 * | `GET /v2/models/{name}[/versions/{v}]/config` | Triton's model configuration (`ModelConfiguration`) |
 * | `GET /v2/models/stats`, `GET /v2/models/{name}[/versions/{v}]/stats` | Triton's statistics (`Statistics`; 501 without its layer) |
 * | `POST /v2/repository/index` | every model version with its state (and reason) |
 * | `POST /v2/repository/models/{name}/load`, `…/unload` | Triton's model control (`ModelControl`); 400 without it |
 * | `GET /metrics` | Prometheus text (see `Metrics`) |
 *
 * Every error is `{"error": "…"}` with the status of `InferenceError.httpStatus` for engine
 * failures (400 invalid input, 404 unknown model or version, 429 queue full with a Retry-After
 * computed from the queue's drain rate (`RetryAfter`),
 * 500 a failed run, 503 shutting down or model unavailable, 504 deadline exceeded), 413 for a body over the
 * limit (or, once decompressed, `ContentEncoding`), 415 for an unsupported Content-Encoding, 400
 * for malformed JSON or an invalid model name. Messages never carry a stack trace or
 * an absolute file path, and are cut at `maxMessageLength` characters (`redact`). A defect answers 500 "internal error" and is logged.
 *
 * An inference is refused as early as it can be: name check, model lookup, a queue-full check
 * (made once the body is in, so that it is not stale) and the `Content-Length` limit all come before the body is decoded (a refused body is still
 * read, within the limit, so that the connection is not reset under the answer); the body is
 * read under the limit, its envelope decoded with Schema, each tensor's shape checked before
 * its array is allocated. Interrupting the request fiber (NodeHttpServer does so when the client disconnects)
 * cancels the inference: it leaves the queue, or its result is dropped, and the engine counts it
 * as cancelled (also when it left while its body was read, before it reached the engine).
 *
 * Under `Server`, most inferences never reach this router: `NodeInfer` answers them on Node's
 * request event (`serveInferFromNode`), decoding and encoding with the same `InferExchange`.
 *
 * @module Routes
 */
import { ByteSize, Cause, Data, Effect, identity, Layer, type Option, Schedule, type Scope, Tracer } from "effect"
import * as NodeFs from "node:fs"
import * as NodePath from "node:path"
import { HttpIncomingMessage, HttpRouter, HttpServerError, HttpServerRequest, HttpServerResponse } from "effect/http"
import { AsyncInferenceEngine, type Service as EngineService } from "../Engine.ts"
import * as InferenceError from "../InferenceError.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import { ModelPool, runs as versionRuns, type Service as ModelPoolService } from "../ModelPool.ts"
import * as ModelRepository from "../ModelRepository.ts"
import * as Sequence from "../Sequence.ts"
import * as TensorCodec from "../TensorCodec.ts"
import * as Lifecycle from "./Lifecycle.ts"
import * as DecodePool from "./DecodePool.ts"
import * as InferExchange from "./InferExchange.ts"
import * as Metrics from "./Metrics.ts"
import * as ContentEncoding from "./ContentEncoding.ts"
import * as ModelConfiguration from "./ModelConfiguration.ts"
import * as ModelControl from "./ModelControl.ts"
import * as NodeInfer from "./NodeInfer.ts"
import * as Oip from "./Oip.ts"
import * as RetryAfter from "./RetryAfter.ts"
import * as Statistics from "./Statistics.ts"
import * as JsonDepth from "../internal/JsonDepth.ts"

export interface Options {
  /** Largest request body accepted, in bytes (413 above). */
  readonly bodyLimitBytes: number
  /** Server metadata. */
  readonly serverName: string
  readonly serverVersion: string
  /** Directories whose path never appears in an answer (the model repository). */
  readonly redactPaths?: ReadonlyArray<string> | undefined
  /**
   * Seconds a client is told to wait after a 429. Default: computed at each refusal from the
   * queue's measured drain rate (`RetryAfter`); a number fixes it.
   */
  readonly retryAfterSeconds?: number | undefined
  /** Triton's strict readiness: not ready while any model is unavailable or none is loaded. Default true. */
  readonly strictReadiness?: boolean | undefined
  /** `/metrics`: `triton` adds Triton's `nv_inference_*` and `nv_cache_*` families (see `Metrics`). Default `default`. */
  readonly metricsFormat?: "default" | "triton" | undefined
  /**
   * Where the routes hand over the infer route as a Node `request` handler (`NodeInfer`), for a
   * server that can call it before its router (`Server` does). Not called when the tracer exports
   * spans or the pool has no synchronous metadata: the router then answers every request.
   */
  readonly serveInferFromNode?: ((handler: NodeInfer.Handler) => void) | undefined
  /**
   * Threads that decode large JSON inference bodies while the main thread has a queue of them
   * (`DecodePool`, with `serveInferFromNode` only). Default 0: every body decoded on the main
   * thread. On a 2-core host a decode thread cost more CPU than it saved (README "Benchmarks",
   * measured side by side); on a host with cores to spare it frees the main thread of `JSON.parse`.
   */
  readonly decodeThreads?: number | undefined
  /**
   * JSON inference bodies of this many bytes and more are decoded on a decode thread, whatever the
   * load and their priority (one is started at the first such body, with or without
   * `decodeThreads`; until it has loaded, 0.6-0.9 s here, they are decoded on the main thread, as
   * no request waits for it; it then holds about 70 MB): parsed on the main thread, a 16 MiB body
   * would stall every other request for over 100 ms. Default `defaultLargeBodyBytes` (1 MiB, about 9 ms of parsing); 0: none.
   */
  readonly largeBodyBytes?: number | undefined
  /** Makes the decode threads' pool (`DecodePool.make`, the default); for tests. */
  readonly makeDecodePool?: ((threads: number) => DecodePool.DecodePool) | undefined
  /**
   * Whether the connection of a request (its platform request: `HttpServerRequest.source`, for
   * Node an `IncomingMessage`) holds more requests to answer after it (HTTP/1.1 pipelining). Its
   * answer then does not carry the shutdown's `Connection: close`, on which the client gives up
   * (and Node drops) the requests behind it; the last answer on the connection does. Default: none do.
   */
  readonly pipelinedBehind?: ((source: object) => boolean) | undefined
}

/**
 * Whether an answer to the request whose platform request is `source` carries `Connection: close`:
 * while the server closes connections (`Lifecycle.closesConnections`), unless requests pipelined
 * behind it wait on its connection.
 */
const closesConnection = (lifecycle: Lifecycle.Service, options: Pick<Options, "pipelinedBehind">, source: object): boolean =>
  lifecycle.closesConnections() && options.pipelinedBehind?.(source) !== true

/** Triton's platform name for ONNX models. */
export const platform = Oip.platformName

/**
 * The extensions this server implements: Triton's binary tensor data, model configuration,
 * statistics, schedule policy (priority and timeout) and parameters; the model repository
 * extension only under explicit model control, where load and unload work.
 */
export const extensionsFor = (modelControl: "none" | "explicit"): ReadonlyArray<string> =>
  modelControl === "explicit"
    ? ["model_repository", "binary_tensor_data", "classification", "model_configuration", "statistics", "schedule_policy", "parameters"]
    : ["binary_tensor_data", "classification", "model_configuration", "statistics", "schedule_policy", "parameters"]

/** The extensions of a server without model control. */
export const extensions: ReadonlyArray<string> = extensionsFor("none")

/** An answer that is not a success: a status, a message, and headers such as Retry-After. */
export class ApiError extends Data.TaggedError("ApiError")<{
  readonly status: number
  readonly message: string
  readonly headers?: Readonly<Record<string, string>> | undefined
}> {}

// An absolute path: it starts the message or follows a space, quote or bracket (a relative path
// inside the repository, `mlp/1/model.onnx`, is left alone).
const absolutePath = /(?<![\w.>~-])(?:[A-Za-z]:)?(?:[\\/][^\s\\/:"'`()[\]]+){2,}/g

/**
 * The spellings of a repository path that messages may quote: as given, absolute, and its real
 * path (symlinks followed: the scan and onnxruntime name files by it, and a Kubernetes volume
 * mount is often a symlink), for `redact`. A root that does not exist keeps the first two.
 */
export const repositoryRoots = (path: string): ReadonlyArray<string> => {
  const roots = new Set([path, NodePath.resolve(path)])
  try {
    roots.add(NodeFs.realpathSync(path))
  } catch {
    // not there (yet): nothing more to name
  }
  return [...roots]
}

/** Longest message an answer carries: one that quotes a huge field of the request is cut. */
export const maxMessageLength = 1024

/**
 * A message fit for a client: its first line before any stack frame, with `roots` replaced by
 * `<repository>` and any other absolute path by its last segment, at most `maxMessageLength`
 * characters.
 */
export const redact = (message: string, roots: ReadonlyArray<string> = []): string => {
  let text = message.slice(0, 4 * maxMessageLength).split(/\n\s+at /)[0]!.replace(/\s*\n\s*/g, " ").trim()
  // Longest first: a root inside another ("/srv/models" and "/srv/models-real") is not cut in two.
  for (const root of [...roots].sort((a, b) => b.length - a.length)) if (root.length > 1) text = text.split(root).join("<repository>")
  return cut(text.replace(absolutePath, (path) => path.split(/[\\/]/).pop() ?? ""))
}

/**
 * A failure's message for its client. An invalid input's message is the validator's, quoting
 * what the client sent (a tensor named "/data/x" stays so), so only cut to length; any other
 * (a run that failed, a model that did not load) may quote the server's files: `redact`.
 */
export const clientMessage = (reason: InferenceError.Reason, roots: ReadonlyArray<string>): string =>
  reason._tag === "InvalidInput" ? cut(reason.message) : redact(reason.message, roots)

/** The header naming a refusal's reason (`reasonFields`), for clients that rebuild the typed error (`OipClient`). */
export const reasonHeader = TensorCodec.inferenceErrorHeader

/**
 * A refusal's reason as the `inference-error` header says it: its tag and the fields that carry
 * no text of the server's (numbers, a version, an input's name), as JSON in ASCII (a header's
 * value is Latin-1: other characters are `\u` escapes). The message, redacted, stays in the body.
 */
export const reasonFields = (reason: InferenceError.Reason): string => {
  const fields: Record<string, unknown> = { _tag: reason._tag }
  switch (reason._tag) {
    case "QueueFull":
      fields["capacity"] = reason.capacity
      if (reason.bound !== undefined) fields["bound"] = reason.bound
      break
    case "QueueTimeout":
      fields["queueTimeoutMs"] = reason.queueTimeoutMs
      fields["waitedMs"] = reason.waitedMs
      break
    case "DeadlineExceeded":
      fields["timeoutMs"] = reason.timeoutMs
      fields["elapsedMs"] = reason.elapsedMs
      break
    case "ModelNotFound":
      if (reason.version !== undefined) fields["version"] = reason.version
      break
    case "ModelUnavailable":
      if (reason.unloaded === true) fields["unloaded"] = true
      break
    case "InvalidInput":
      // (a longer name is left out rather than cut: the client rebuilds the message from it)
      if (reason.input !== undefined && reason.input.length <= 256) fields["input"] = reason.input
      break
  }
  return JSON.stringify(fields).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
}

/** At most `maxMessageLength` UTF-16 units, never half a surrogate pair (a lone one is not valid UTF-8 text). */
const cut = (text: string): string => {
  if (text.length <= maxMessageLength) return text
  const end = maxMessageLength - 1
  const high = text.charCodeAt(end - 1)
  return `${text.slice(0, high >= 0xd800 && high <= 0xdbff ? end - 1 : end)}…`
}

const json = (status: number, body: unknown, headers?: Readonly<Record<string, string>>) =>
  HttpServerResponse.text(JSON.stringify(body), { status, contentType: "application/json", ...(headers === undefined ? {} : { headers }) })

const errorResponse = (e: ApiError) => json(e.status, { error: e.message }, e.headers)

const fail = (status: number, message: string): Effect.Effect<never, ApiError> => Effect.fail(new ApiError({ status, message }))

/** The `name` and optional `version` path parameters, checked before they go anywhere. */
const modelParams = Effect.flatMap(HttpRouter.params, (params) => {
  const name = params["name"] ?? ""
  const version = params["version"]
  if (!ModelRepository.isValidModelName(name)) {
    return fail(400, `invalid model name ${JSON.stringify(name.slice(0, 200))}: ${ModelRepository.modelNameRule}`)
  }
  if (version !== undefined && !ModelRepository.versionPattern.test(version)) {
    return fail(400, `invalid model version ${JSON.stringify(version.slice(0, 200))}: decimal digits only`)
  }
  return Effect.succeed({ name, version })
})

/** `text` parsed as JSON, or a 400 that names `what` did not parse. */
const parseJson = (text: string, what: string): Effect.Effect<unknown, ApiError> => {
  if (JsonDepth.nestsDeeperThan(text)) return fail(400, JsonDepth.tooDeepMessage(what))
  try {
    return Effect.succeed(JSON.parse(text))
  } catch (e) {
    return fail(400, `${what} is not valid JSON: ${e instanceof Error ? e.message : String(e)}`)
  }
}

/**
 * The request body's readers, under a limit of `bodyLimit` bytes on the body as sent and once
 * decompressed (413 above it, from Content-Length at once or while reading; 415 for an
 * unsupported Content-Encoding).
 */
const bodyReaders = (bodyLimit: number) => {
  const maxBodySize = ByteSize.bytes(bodyLimit)
  const readWithin = <A>(read: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<A, HttpServerError.HttpServerError>) =>
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const declared = request.headers["content-length"]
      if (declared !== undefined && Number(declared) > bodyLimit) {
        return yield* fail(413, `request body of ${declared} bytes exceeds the limit of ${bodyLimit} bytes`)
      }
      return yield* read(request).pipe(
        Effect.provideService(HttpIncomingMessage.MaxBodySize, maxBodySize),
        Effect.mapError((e) =>
          e.reason._tag === "RequestParseError" && e.reason.reason === "BodyTooLarge"
            ? new ApiError({ status: 413, message: `request body exceeds the limit of ${bodyLimit} bytes` })
            : new ApiError({ status: 400, message: "could not read the request body" })
        )
      )
    })

  /**
   * The body's bytes, decompressed as its Content-Encoding says (gzip, deflate; 415 for any
   * other coding). The limit applies to the decompressed size too (413).
   */
  const readBytes = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const codings = ContentEncoding.parse(request.headers["content-encoding"])
    if (typeof codings === "string") {
      return yield* Effect.andThen(Effect.ignore(readWithin((request) => request.arrayBuffer)), fail(415, codings))
    }
    const bytes = new Uint8Array(yield* readWithin((request) => request.arrayBuffer))
    if (codings.length === 0) return bytes
    const decoded = yield* ContentEncoding.decode(bytes, codings, bodyLimit)
    if (decoded._tag === "TooLarge") return yield* fail(413, `decompressed request body exceeds the limit of ${bodyLimit} bytes`)
    if (decoded._tag === "Corrupt") return yield* fail(400, `the request body is not valid ${decoded.coding}: ${decoded.detail}`)
    return decoded.bytes
  })

  /** The body as text. */
  const readBody = Effect.flatMap(readBytes, (bytes) => {
    const text = Oip.jsonText(bytes)
    return text === undefined ? fail(400, Oip.undecodableMessage(bytes)) : Effect.succeed(text)
  })

  /**
   * An inference body: JSON text, and with Triton's binary tensor data extension (the
   * Inference-Header-Content-Length header gives the JSON's length in bytes) the binary part after it.
   */
  const readInferBody = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const header = request.headers[Oip.inferenceHeaderContentLength]
    if (header === undefined) return { text: yield* readBody, binary: undefined }
    const split = Oip.splitBinaryBody(yield* readBytes, header)
    return typeof split === "string" ? yield* fail(400, split) : split
  })
  return { readBody, readInferBody }
}

/** A route's method and path pattern (`:param` is one non-empty path segment), as the router is given them. */
export type RoutePattern = readonly [method: string, path: string]

/**
 * The methods the routes take at `path` (a trailing slash ignored, as the router ignores it),
 * HEAD beside GET (the router answers HEAD as GET); empty when no route has this path.
 */
export const allowedMethods = (routes: ReadonlyArray<RoutePattern>, path: string): ReadonlyArray<string> => {
  const segments = (path.length > 1 && path.endsWith("/") ? path.slice(0, -1) : path).split("/")
  const allowed = new Set<string>()
  for (const [method, pattern] of routes) {
    const parts = pattern.split("/")
    if (parts.length !== segments.length) continue
    if (parts.every((part, i) => part.startsWith(":") ? segments[i] !== "" : part === segments[i])) {
      allowed.add(method)
      if (method === "GET") allowed.add("HEAD")
    }
  }
  return [...allowed].sort()
}

/**
 * A request no route takes is a JSON answer too, with Connection: close once the server is
 * closing connections: 405 with `Allow` when routes have its path under other methods, else 404
 * (also for a path that does not even decode). HEAD falls back to GET inside the router, before this runs.
 */
const jsonNotFound = (lifecycle: Lifecycle.Service, options: Pick<Options, "pipelinedBehind">, routes: ReadonlyArray<RoutePattern>) => <E>(
  app: Effect.Effect<HttpServerResponse.HttpServerResponse, E>
): Effect.Effect<HttpServerResponse.HttpServerResponse, E, HttpServerRequest.HttpServerRequest> =>
  Effect.catchCause(app, (cause) => {
    const error = Cause.findErrorOption(cause)
    if (error._tag === "None" || !HttpServerError.isHttpServerError(error.value) || error.value.reason._tag !== "RouteNotFound") {
      return Effect.failCause(cause)
    }
    return Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
      const path = request.url.split("?")[0]!
      const allowed = allowedMethods(routes, path)
      const response = allowed.length > 0 && !allowed.includes(request.method)
        ? HttpServerResponse.setHeader(
          json(405, { error: `method ${request.method.slice(0, 20)} not allowed for ${path.slice(0, 200)}; allowed: ${allowed.join(", ")}` }),
          "allow",
          allowed.join(", ")
        )
        : json(404, { error: `no route for ${request.method} ${path.slice(0, 200)}` })
      return closesConnection(lifecycle, options, request.source) ? HttpServerResponse.setHeader(response, "connection", "close") : response
    })
  })

/** What the route handlers share: the services, the error mapping, the wrapper every route goes through, the body readers. */
interface Ctx {
  readonly options: Options
  readonly engine: EngineService
  readonly pool: ModelPoolService
  readonly lifecycle: Lifecycle.Service
  readonly statistics: Option.Option<Statistics.Statistics["Service"]>
  readonly metricsPage: Effect.Success<typeof Metrics.make>
  /** Directories whose path never appears in an answer. */
  readonly roots: ReadonlyArray<string>
  readonly strictReadiness: boolean
  readonly fromReason: (reason: InferenceError.Reason) => ApiError
  /** Every route goes through here: counted in flight, errors as JSON, Connection: close after the signal. */
  readonly handle: <R>(
    effect: Effect.Effect<HttpServerResponse.HttpServerResponse, ApiError, R>
  ) => Effect.Effect<HttpServerResponse.HttpServerResponse, never, R | HttpServerRequest.HttpServerRequest>
  readonly metadataOf: (name: string, version: string | undefined) => Effect.Effect<ModelMetadata.ModelMetadata, ApiError>
  readonly readBody: Effect.Effect<string, ApiError, HttpServerRequest.HttpServerRequest>
  readonly readInferBody: ReturnType<typeof bodyReaders>["readInferBody"]
  /**
   * Requests (`HttpServerRequest.source`) whose answer keeps its connection open during a shutdown:
   * those of a sequence under way that goes on (`inferRoute`).
   */
  readonly keepsConnection: WeakSet<object>
  /** Decodes an inference body: on a decode thread when it is large (`Options.largeBodyBytes`), else here. */
  readonly decodeInfer: DecodeInfer
  /** Encodes a success's answer: on a decode thread when it is large (`largeAnswerValues`), else here. */
  readonly encodeAnswer: (prepared: InferExchange.Prepared) => Effect.Effect<InferExchange.Answer>
}

/** Decodes an inference body for a model version (`decoderOf`). */
export type DecodeInfer = (
  name: string,
  version: string | undefined,
  metadata: ModelMetadata.ModelMetadata,
  text: string | Uint8Array,
  binary: Uint8Array | undefined
) => Effect.Effect<ReturnType<typeof InferExchange.decode>>

/** `GET /v2`, the health routes and `/metrics`. */
const serverRoutes = (ctx: Ctx) => {
  const { handle, options, pool, lifecycle, roots, strictReadiness, engine, metricsPage } = ctx
  const serverMetadata = handle(Effect.succeed(json(200, {
    name: options.serverName,
    version: options.serverVersion,
    extensions: extensionsFor(ModelControl.isEnabled(pool) ? "explicit" : "none")
  })))

  const live = handle(Effect.succeed(json(200, { live: true })))

  const ready = handle(Effect.map(pool.models, (models) => {
    const state = Lifecycle.readiness({ shuttingDown: lifecycle.isShuttingDown(), strict: strictReadiness, models })
    return state.ready ? json(200, { ready: true }) : json(503, { ready: false, error: redact(state.reason, roots) })
  }))

  const prometheus = handle(
    // The versions served now; `models` may rescan the repository (explicit model control), each scrape.
    (pool.loadedModels ?? pool.models).pipe(
      Effect.flatMap((models) =>
        metricsPage.render(engine, { format: options.metricsFormat, served: models.filter(versionRuns), instanceEvents: pool.counters, modelLoads: pool.modelLoads })
      ),
      Effect.map((text) => HttpServerResponse.text(text, { contentType: Metrics.contentType }))
    )
  )
  return { serverMetadata, live, ready, prometheus }
}

/** What a client that left before its request reached the engine is counted as (no request id yet). */
const notReached = new InferenceError.Cancelled({ requestId: "", reason: "the client disconnected before its request reached the engine" })

/** `POST /v2/models/{name}[/versions/{v}]/infer` on the router (the fast path is `NodeInfer`'s). */
const inferRoute = (ctx: Ctx) => {
  const { handle, engine, pool, lifecycle, fromReason, readBody, readInferBody, keepsConnection, decodeInfer, encodeAnswer } = ctx
  /** A body that did not decode for `version` of the model: the engine counts the refusal, the client gets the reason. */
  const invalid = (name: string, version: string, reason: InferenceError.InvalidInput) =>
    Effect.andThen(engine.recordRefused(name, reason, version), Effect.fail(fromReason(reason)))

  /**
   * Refuses before decoding, but after reading the body (within the limit): a connection
   * that is closed with unread request bytes is reset, and the client would see ECONNRESET
   * instead of the answer.
   */
  const refuseEarly = <A, R>(checks: Effect.Effect<A, ApiError, R>) =>
    Effect.catchTag(checks, "ApiError", (e) => Effect.andThen(Effect.ignore(readBody), Effect.fail(e)))

  const infer = handle(Effect.gen(function*() {
    const shuttingDown = lifecycle.isShuttingDown()
    const { name, version, metadata } = yield* refuseEarly(Effect.gen(function*() {
      const { name, version } = yield* modelParams
      // Counted as the engine counts its refusals (draining: rejected; an unavailable model:
      // backend; a version it lacks: invalid, without a version label), then answered.
      const refuse = (reason: InferenceError.Reason) => Effect.andThen(engine.recordRefused(name, reason, version), Effect.fail(fromReason(reason)))
      const metadata: ModelMetadata.ModelMetadata = yield* Effect.catch(
        pool.metadata(name, version),
        (reason) => refuse(shuttingDown ? new InferenceError.ShuttingDown({}) : reason)
      )
      // Shutting down: new work is refused, but sequences under way go on (Triton's rule); whether
      // this request continues one, its body says (checked once decoded).
      if (shuttingDown && !engine.sequencesUnderWayUnsafe(name, metadata.version)) return yield* refuse(new InferenceError.ShuttingDown({}))
      return { name, version, metadata }
    }))
    // A client that leaves while its body is read (or inflated) never reaches the engine, which counts its own cancellations.
    const { binary, text } = yield* Effect.onInterrupt(readInferBody, () => engine.recordRefused(name, notReached, metadata.version))
    // The engine's own admission rule before the costly part: a full queue answers 429 before
    // decoding anything, as the queue is once the body is in (not when its headers came). Not
    // while shutting down: what is let through then is a sequence's next request, or new work
    // refused 503 once decoded; the engine bounds what it admits.
    if (!lifecycle.isShuttingDown()) yield* Effect.mapError(engine.checkAdmission(name, metadata.version, metadata), (e) => fromReason(e.reason))
    // As on the fast path (`NodeInfer`), the deadline counts from when the body was in: its decoding is inside it.
    const inAtMs = performance.now()
    // On a thread for a large body: a client that leaves meanwhile is counted as one that left while its body was read.
    const decoded = yield* Effect.onInterrupt(decodeInfer(name, version, metadata, text, binary), () => engine.recordRefused(name, notReached, metadata.version))
    if (decoded._tag !== "Decoded") {
      // shutting down, a body that does not decode may still come from a sequence's client: its connection stays
      if (lifecycle.isShuttingDown() && engine.sequencesUnderWayUnsafe(name, metadata.version)) keepsConnection.add((yield* HttpServerRequest.HttpServerRequest).source)
      return yield* (decoded._tag === "NotJson" ? fail(400, decoded.message) : invalid(name, metadata.version, decoded))
    }
    const { sequence } = decoded.request
    if (shuttingDown && !engine.takesSequenceUnsafe(name, metadata.version, sequence)) {
      const reason = new InferenceError.ShuttingDown({})
      return yield* Effect.andThen(engine.recordRefused(name, reason, metadata.version), Effect.fail(fromReason(reason)))
    }
    const result = yield* engine.infer(decoded.request, { spentMs: performance.now() - inAtMs }).pipe(
      Effect.mapError((e) => fromReason(e.reason)),
      // a shutdown that began while it ran, or before: a sequence that goes on keeps its connection
      sequence === undefined ? identity : Effect.ensuring(Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
        Effect.sync(() => {
          if (InferExchange.keepsConnectionAtShutdown(lifecycle.isShuttingDown(), engine, name, metadata.version, sequence)) keepsConnection.add(request.source)
        })))
    )
    const prepared = InferExchange.prepare(metadata, decoded, result)
    if (prepared instanceof Error) return yield* Effect.die(prepared)
    if (prepared._tag === "TooLarge") return yield* fail(400, prepared.message)
    const answer = yield* encodeAnswer(prepared)
    // a shutdown that began while it was encoded (on a thread): read again before it is written
    if (sequence !== undefined && InferExchange.keepsConnectionAtShutdown(lifecycle.isShuttingDown(), engine, name, metadata.version, sequence)) {
      keepsConnection.add((yield* HttpServerRequest.HttpServerRequest).source)
    }
    switch (answer._tag) {
      case "Json":
        return HttpServerResponse.text(answer.text, { contentType: "application/json" })
      case "JsonBytes":
        return HttpServerResponse.uint8Array(answer.bytes, { contentType: "application/json" })
      case "Binary":
        return HttpServerResponse.uint8Array(answer.bytes, {
          contentType: "application/octet-stream",
          headers: { [Oip.inferenceHeaderContentLength]: String(answer.jsonLength) }
        })
      case "TooLarge":
        return yield* fail(400, answer.message)
    }
  }))
  return infer
}

/** A model's metadata, readiness, configuration and statistics, and its inferences. */
const modelRoutes = (ctx: Ctx) => {
  const { handle, pool, engine, lifecycle, fromReason, metadataOf, statistics } = ctx
  const modelMetadata = handle(Effect.gen(function*() {
    const { name, version } = yield* modelParams
    const metadata = yield* metadataOf(name, version)
    return json(200, {
      name,
      versions: Oip.metadataVersions(yield* pool.models, metadata, version),
      platform,
      inputs: Sequence.clientInputs(metadata).map(Oip.tensorMetadata),
      outputs: Sequence.clientOutputs(metadata).map(Oip.tensorMetadata),
      properties: Oip.modelProperties(metadata)
    })
  }))

  const modelReady = handle(Effect.gen(function*() {
    const { name, version } = yield* modelParams
    if (lifecycle.isShuttingDown()) return json(503, { name, ready: false, error: "the server is shutting down" })
    const result = yield* Effect.result(pool.metadata(name, version))
    if (result._tag === "Success") return json(200, { name, ready: true })
    // A model the repository lacks is a 404; one it holds that cannot serve (not loaded under
    // explicit model control included, whose inferences are a 404) is not ready, as gRPC's ModelReady says.
    const error = fromReason(result.failure)
    return result.failure._tag === "ModelNotFound" ? errorResponse(error) : json(503, { name, ready: false, error: error.message })
  }))

  const modelConfig = handle(Effect.gen(function*() {
    const { name, version } = yield* modelParams
    const metadata = yield* metadataOf(name, version)
    return json(200, ModelConfiguration.of(metadata, engine.config))
  }))

  /** Triton's statistics of every model (or one), from the same telemetry as /metrics. */
  const statsOf = (name: string | undefined, version: string | undefined) =>
    statistics._tag === "None"
      ? fail(501, "statistics are not collected by this server (Statistics.layer is not provided)")
      : Effect.mapError(Statistics.report(pool, statistics.value, name, version), fromReason)

  const allStats = handle(Effect.map(statsOf(undefined, undefined), (model_stats) => json(200, { model_stats })))

  const modelStats = handle(Effect.gen(function*() {
    const { name, version } = yield* modelParams
    return json(200, { model_stats: yield* statsOf(name, version) })
  }))
  return { modelMetadata, modelReady, infer: inferRoute(ctx), modelConfig, allStats, modelStats }
}

/** Triton's repository index and model control. */
const repositoryRoutes = (ctx: Ctx) => {
  const { handle, pool, engine, lifecycle, fromReason, readBody, roots } = ctx
  const repositoryIndex = handle(Effect.gen(function*() {
    const text = yield* readBody
    const body = Oip.decodeRepositoryIndexRequest(text.trim() === "" ? {} : yield* parseJson(text, "the request body"))
    if ("error" in body) return yield* fail(400, body.error)
    const models = yield* pool.models
    return json(
      200,
      models
        .filter((m) => body.ready !== true || m.state === "READY")
        .map((m) => ({
          name: m.name,
          version: m.version,
          state: m.state,
          ...(m.reason === undefined ? {} : { reason: redact(m.reason, roots) })
        }))
    )
  }))

  /**
   * Load or unload (Triton's model repository extension); 400 without explicit model control, for
   * a body that is not empty nor `{"parameters": {...}}`, and for parameters the server cannot
   * apply (`ModelControl.checkParameters`: `config` and `file:` overrides).
   */
  const modelControl = (action: "load" | "unload") =>
    handle(Effect.gen(function*() {
      const { name } = yield* modelParams
      const text = yield* readBody
      const body = Oip.decodeRepositoryControlRequest(text.trim() === "" ? {} : yield* parseJson(text, "the request body"))
      if ("error" in body) return yield* fail(400, body.error)
      const refused = ModelControl.checkParameters(action, body.parameters ?? {})
      if (refused !== undefined) return yield* fail(400, refused)
      yield* (action === "load" ? ModelControl.load(pool, name, lifecycle) : ModelControl.unload(pool, engine, name)).pipe(
        Effect.catchTag("NotSupported", (e) => fail(400, e.message)),
        Effect.mapError((e) => (e instanceof ApiError ? e : fromReason(e)))
      )
      return json(200, {})
    }))
  return { repositoryIndex, modelControl }
}

/**
 * Hands the infer route to `options.serveInferFromNode` as a Node request handler (`NodeInfer`):
 * the same answers without the router's cost per request. Not when the tracer exports spans or
 * the pool has no synchronous metadata: the router then answers every request. Decode threads,
 * if any, live as long as the routes' scope.
 */
const serveInferFromNode = (
  options: Options,
  engine: EngineService,
  pool: ModelPoolService,
  lifecycle: Lifecycle.Service,
  fromReason: (reason: InferenceError.Reason) => ApiError,
  decodePool: DecodePool.DecodePool | undefined
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const metadataUnsafe = pool.metadataUnsafe
    const tracer = yield* Effect.withFiber((fiber) => Effect.succeed(fiber.getRef(Tracer.Tracer)))
    if (options.serveInferFromNode === undefined || metadataUnsafe === undefined || tracer !== Tracer.nativeTracer) return
    const runFork = Effect.runForkWith(yield* Effect.context<never>())
    options.serveInferFromNode(NodeInfer.make({
      decodePool,
      largeBodyBytes: largeBodyBytesOf(options),
      largeAnswerValues: largeAnswerValuesOf(options),
      decodeInFlightLimit: 16 * (options.decodeThreads ?? 0),
      engine,
      metadataUnsafe,
      lifecycle,
      pipelinedBehind: options.pipelinedBehind,
      bodyLimitBytes: options.bodyLimitBytes,
      errorOf: fromReason,
      recordRefused: (name, reason, version) => Effect.runSync(engine.recordRefused(name, reason, version)),
      onDefect: (defect) => void runFork(Effect.logError("unexpected failure while answering a request", defect))
    }))
  })

/** The routes, as a layer that registers them on the `HttpRouter`. */
export const layer = (
  options: Options
): Layer.Layer<never, never, HttpRouter.HttpRouter | AsyncInferenceEngine | ModelPool | Lifecycle.Lifecycle> =>
  HttpRouter.use((router) =>
    Effect.gen(function*() {
      const engine = yield* AsyncInferenceEngine
      const pool = yield* ModelPool
      const lifecycle = yield* Lifecycle.Lifecycle
      // The /metrics page's state (models seen, process observers) lives as long as these routes.
      const metricsPage = yield* Metrics.make
      // The gauges the page sets as it renders, every 5 s as well: an OTLP exporter reads the
      // registry itself, and would see them only as of the last scrape (never, without one).
      yield* (pool.loadedModels ?? pool.models).pipe(
        Effect.flatMap((models) => metricsPage.refresh(engine, { served: models.filter(versionRuns), instanceEvents: pool.counters, modelLoads: pool.modelLoads })),
        Effect.repeat(Schedule.spaced("5 seconds")),
        Effect.forkScoped
      )
      // Optional: without Statistics.layer (an embedding that did not wire it) the stats routes answer 501.
      const statistics = yield* Effect.serviceOption(Statistics.Statistics)
      const roots = options.redactPaths ?? []
      const drainRate = options.retryAfterSeconds === undefined ? yield* RetryAfter.sampler(engine.pending) : undefined
      const retryAfter = () =>
        String(
          drainRate === undefined
            ? options.retryAfterSeconds
            : RetryAfter.seconds({ queued: engine.config.maxQueuedRequests, ratePerSecond: drainRate.ratePerSecond() })
        )
      const strictReadiness = options.strictReadiness ?? true
      const bodyLimit = options.bodyLimitBytes
      const { readBody, readInferBody } = bodyReaders(bodyLimit)

      const fromReason = (reason: InferenceError.Reason): ApiError => {
        if (reason._tag === "ShuttingDown") lifecycle.noteRefusalUnsafe("http")
        return new ApiError({
          status: InferenceError.httpStatus(reason),
          message: clientMessage(reason, roots),
          headers: reason._tag === "QueueFull"
            ? { "retry-after": retryAfter(), [reasonHeader]: reasonFields(reason) }
            : { [reasonHeader]: reasonFields(reason) }
        })
      }

      const keepsConnection = new WeakSet<object>()
      const handle = <R>(effect: Effect.Effect<HttpServerResponse.HttpServerResponse, ApiError, R>) =>
        lifecycle.track(effect.pipe(
          Effect.catchTag("ApiError", (e) => Effect.succeed(errorResponse(e))),
          Effect.catchDefect((defect) =>
            Effect.logError("unexpected failure while answering a request", defect).pipe(
              Effect.as(json(500, { error: "internal error" }))
            )
          ),
          Effect.flatMap((response) =>
            lifecycle.closesConnections()
              ? Effect.map(HttpServerRequest.HttpServerRequest, (request) =>
                closesConnection(lifecycle, options, request.source) && !keepsConnection.has(request.source)
                  ? HttpServerResponse.setHeader(response, "connection", "close")
                  : response)
              : Effect.succeed(response)
          )
        ))

      const metadataOf = (name: string, version: string | undefined) =>
        Effect.mapError(pool.metadata(name, version), fromReason)

      // Threads for large bodies (started at the first) and, with --decode-threads, for bodies that queue up.
      const threads = Math.max(options.decodeThreads ?? 0, largeBodyBytesOf(options) < Infinity ? 1 : 0)
      const decodePool = threads > 0
        ? yield* Effect.acquireRelease(Effect.sync(() => (options.makeDecodePool ?? DecodePool.make)(threads)), (pool) => Effect.sync(pool.close))
        : undefined
      yield* serveInferFromNode(options, engine, pool, lifecycle, fromReason, decodePool)
      const decodeInfer = decoderOf(decodePool, largeBodyBytesOf(options))
      const encodeAnswer = encoderOf(decodePool, largeAnswerValuesOf(options))

      const ctx: Ctx = { options, engine, pool, lifecycle, statistics, metricsPage, roots, strictReadiness, fromReason, handle, metadataOf, readBody, readInferBody, keepsConnection, decodeInfer, encodeAnswer }
      const { serverMetadata, live, ready, prometheus } = serverRoutes(ctx)
      const { modelMetadata, modelReady, infer, modelConfig, allStats, modelStats } = modelRoutes(ctx)
      const { repositoryIndex, modelControl } = repositoryRoutes(ctx)

      const routes = [
        HttpRouter.route("GET", "/v2", serverMetadata),
        HttpRouter.route("GET", "/v2/health/live", live),
        HttpRouter.route("GET", "/v2/health/ready", ready),
        HttpRouter.route("GET", "/v2/models/:name", modelMetadata),
        HttpRouter.route("GET", "/v2/models/:name/versions/:version", modelMetadata),
        HttpRouter.route("GET", "/v2/models/:name/ready", modelReady),
        HttpRouter.route("GET", "/v2/models/:name/versions/:version/ready", modelReady),
        HttpRouter.route("GET", "/v2/models/:name/config", modelConfig),
        HttpRouter.route("GET", "/v2/models/:name/versions/:version/config", modelConfig),
        HttpRouter.route("GET", "/v2/models/stats", allStats),
        HttpRouter.route("GET", "/v2/models/:name/stats", modelStats),
        HttpRouter.route("GET", "/v2/models/:name/versions/:version/stats", modelStats),
        HttpRouter.route("POST", "/v2/models/:name/infer", infer),
        HttpRouter.route("POST", "/v2/models/:name/versions/:version/infer", infer),
        HttpRouter.route("POST", "/v2/repository/index", repositoryIndex),
        HttpRouter.route("POST", "/v2/repository/models/:name/load", modelControl("load")),
        HttpRouter.route("POST", "/v2/repository/models/:name/unload", modelControl("unload")),
        HttpRouter.route("GET", "/metrics", prometheus)
      ]

      yield* router.addGlobalMiddleware(jsonNotFound(lifecycle, options, routes.map((r): RoutePattern => [r.method, r.path])))

      yield* router.addAll(routes)
    })
  )

/**
 * `Options.largeBodyBytes`' default: 1 MiB, about 9 ms of parsing on these machines. A body sent to
 * the thread waits a few milliseconds more for its own answer (a 1 MiB one 32-39 → 42-51 ms end to
 * end here): below 1 MiB the stall it spares the others is not worth that.
 */
export const defaultLargeBodyBytes = 1024 * 1024

/** The smallest body always decoded on a thread; Infinity for none. */
const largeBodyBytesOf = (options: Options): number => {
  const bytes = options.largeBodyBytes ?? defaultLargeBodyBytes
  return bytes > 0 ? bytes : Infinity
}

/**
 * The router's decoding of an inference body: a JSON body of `largeBodyBytes` and more without a
 * binary part on a decode thread (on the main thread again if the thread could not answer),
 * anything else here. Either way the decoded tensors are this request's own, as on the fast path.
 * Exported for its test.
 */
export const decoderOf = (decodePool: DecodePool.DecodePool | undefined, largeBodyBytes: number): DecodeInfer =>
  (name, version, metadata, text, binary) => {
    // in bytes, as on the fast path (a string of n UTF-16 units is n to 3n bytes)
    if (decodePool === undefined || binary !== undefined || (typeof text === "string" ? text.length * 3 < largeBodyBytes || Buffer.byteLength(text) < largeBodyBytes : text.length < largeBodyBytes)) {
      return Effect.sync(() => InferExchange.decode(name, version, metadata, text, binary))
    }
    return Effect.callback((resume) => {
      decodePool.decode(name, metadata, text, (outcome) =>
        resume(Effect.sync(() =>
          outcome === undefined
            ? InferExchange.decode(name, version, metadata, text, undefined)
            : outcome._tag === "Body"
            ? InferExchange.toDecoded(name, version, metadata, outcome, true)
            : outcome
        )))
    })
  }

/**
 * Answers that write this many values and more as JSON text (about 8 ms for float32 values here)
 * are encoded on a decode thread, whenever large bodies are decoded there (`Options.largeBodyBytes`
 * not 0). Unlike a body's, an answer's cost is known before any of it is written.
 */
export const largeAnswerValues = 65_536

const largeAnswerValuesOf = (options: Options): number => (largeBodyBytesOf(options) < Infinity ? largeAnswerValues : Infinity)

/**
 * The router's encoding of a success (`Ctx.encodeAnswer`): one that writes `largeValues` and more
 * as JSON on a decode thread (here again if the thread cannot answer), else here. Exported for its test.
 */
export const encoderOf = (decodePool: DecodePool.DecodePool | undefined, largeValues: number) => (prepared: InferExchange.Prepared): Effect.Effect<InferExchange.Answer> =>
  decodePool === undefined || prepared.jsonValues < largeValues
    ? Effect.sync(() => InferExchange.encodePrepared(prepared.response))
    : Effect.callback((resume) => {
      decodePool.encode(prepared.response, (answer) => resume(Effect.sync(() => answer ?? InferExchange.encodePrepared(prepared.response))))
    })

/**
 * Router options for these routes: `/v2/` and `/v2` are the same; long names reach the name check
 * (400; a parameter past the router's limit would be "no route", 404, and the 16 KiB of a request's
 * head, Node's limit, bounds it first); paths are case-sensitive, as Triton's and the fast path's (`/V2/MODELS/…` is a 404).
 */
export const routerConfig = { ignoreTrailingSlash: true, maxParamLength: 16 * 1024, caseSensitive: true } as const
