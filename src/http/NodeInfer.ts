/**
 * The infer route served straight from Node's `request` event, for the requests that make up a
 * server's load: `POST /v2/models/{name}[/versions/{v}]/infer` with a `Content-Length` within
 * the limit, no `Content-Encoding`, for a model that is ready, while the engine admits. Every
 * other request, and every one of these that would be refused before its body is read (a bad
 * name, an unknown model, a full queue, a shutdown, a body too large), is declined (`false`) and
 * goes through the router (`Routes`), which answers it as it always has.
 *
 * Why: the router costs a fiber, an Effect request and response object and several layers of
 * middleware per request, about half of the server's main-thread CPU for a small model
 * (README "Benchmarks"). Here a request costs its body's bytes, one `JSON.parse`, the tensor
 * decoding and the engine's own admission; the answers are the same bytes (`InferExchange`).
 *
 * Contracts, as the router's infer route:
 * - the body is read within the limit, then decoded; a body that is not JSON answers 400, one
 *   that does not fit the model 400 (counted by the engine as refused);
 * - bodies are decoded after the poll phase that read them, Critical first (`priorityHint`,
 *   `makeDecodeQueue`): under load the main thread's queue of bodies is where a request waits
 *   longest, and its priority is in its body;
 * - with a `decodePool`, a JSON body of `largeBodyBytes` and more is always decoded on its threads,
 *   whatever its priority and the load: parsed here, it would hold up every other request (about
 *   9 ms a MiB on these machines);
 * - likewise an answer that writes `largeAnswerValues` and more as JSON text is encoded there
 *   (about 8 ms for 65,536 float32 values here); the request counts in flight until it is written;
 * - with decode threads beside that (`decodeInFlightLimit` above 0, off by default:
 *   `--decode-threads`), while bodies queue up, JSON ones of 4 KiB and more are decoded on them,
 *   up to 16 a thread at once, the rest here; below `largeBodyBytes`, a Critical body, a binary
 *   one and any body when nothing else waits are decoded here (a hop would only add latency);
 * - the request is counted in flight (`Lifecycle`) from its arrival until its answer is
 *   written or its connection closes; answers carry `Connection: close` once the shutdown began;
 * - a client that disconnects cancels the inference (out of the queue, or its result dropped);
 * - an engine failure answers the router's status, message and headers (`errorOf`); a defect
 *   answers 500 "internal error" and is reported (`onDefect`).
 * It opens no span and writes no log line: a server whose tracer exports does not use it.
 *
 * @module NodeInfer
 */
import type * as Http from "node:http"
import { Cause, Effect, Exit } from "effect"
import type { Service as Engine } from "../Engine.ts"
import * as InferenceError from "../InferenceError.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import type { ModelPool } from "../ModelPool.ts"
import * as ModelRepository from "../ModelRepository.ts"
import * as Priority from "../Priority.ts"
import * as QueuePolicy from "../QueuePolicy.ts"
import type * as DecodePool from "./DecodePool.ts"
import * as InferExchange from "./InferExchange.ts"
import type * as Lifecycle from "./Lifecycle.ts"
import * as Oip from "./Oip.ts"

/** Answers the request and returns true, or returns false (having touched nothing) to let the router answer it. */
export type Handler = (request: Http.IncomingMessage, response: Http.ServerResponse) => boolean

/** An error answer: the status, the message of its `{"error": …}` body, and headers such as Retry-After. */
export interface ErrorAnswer {
  readonly status: number
  readonly message: string
  readonly headers?: Readonly<Record<string, string>> | undefined
}

export interface Options {
  readonly engine: Engine
  readonly metadataUnsafe: NonNullable<ModelPool["Service"]["metadataUnsafe"]>
  readonly lifecycle: Lifecycle.Service
  /** As `Routes.Options.pipelinedBehind`: given the request, whether more requests wait on its connection. */
  readonly pipelinedBehind?: ((source: object) => boolean) | undefined
  readonly bodyLimitBytes: number
  /** The router's answer for an engine failure. */
  readonly errorOf: (reason: InferenceError.Reason) => ErrorAnswer
  /**
   * Counts a request refused here (a body that did not fit its model, a full queue, a model
   * unloaded while the body arrived) or cancelled before it reached the engine (its client left), as the engine
   * counts refusals; `version`: the model version it was checked against, where it was.
   */
  readonly recordRefused: (name: string, reason: InferenceError.Reason, version?: string) => void
  /** Reports a defect (the answer is 500 "internal error"). */
  readonly onDefect: (defect: unknown) => void
  /** Threads that decode large JSON bodies, and others while the main thread has a queue of them; none: all decoded here. */
  readonly decodePool?: DecodePool.DecodePool | undefined
  /** Smallest JSON body always decoded on `decodePool` (see the module's contracts). Default: none is. */
  readonly largeBodyBytes?: number | undefined
  /** Fewest values an answer writes as JSON text for it to be encoded on `decodePool`. Default: none is. */
  readonly largeAnswerValues?: number | undefined
  /** Smallest JSON body sent to a decode thread (smaller ones cost less than the hop). Default 4096 bytes. */
  readonly offloadMinBytes?: number | undefined
  /**
   * Most bodies with the decode threads at once; past it the main thread decodes too. Default 16
   * a thread: with 2, 85% of the bodies at 64 outstanding were decoded here anyway, the thread
   * idle while its answers waited for the main thread's next poll.
   */
  readonly decodeInFlightLimit?: number | undefined
}

/**
 * The model name and version of an infer path (a trailing slash and a query allowed, as the
 * router allows them), or undefined for any other path or a name the router would refuse.
 */
export const matchInferPath = (url: string): { readonly name: string; readonly version: string | undefined } | undefined => {
  const query = url.indexOf("?")
  let path = query === -1 ? url : url.slice(0, query)
  if (path.endsWith("/")) path = path.slice(0, -1)
  if (!path.startsWith("/v2/models/") || !path.endsWith("/infer")) return undefined
  const parts = path.slice(11, -6).split("/")
  const name = parts[0]!
  if (!ModelRepository.isValidModelName(name)) return undefined
  if (parts.length === 1) return { name, version: undefined }
  if (parts.length === 3 && parts[1] === "versions" && ModelRepository.versionPattern.test(parts[2]!)) return { name, version: parts[2] }
  return undefined
}

const errorBody = (message: string) => JSON.stringify({ error: message })

/** The version a refusal is counted under: the one found, if any. */
const versionOf = (metadata: ReturnType<Options["metadataUnsafe"]>): string | undefined => "_tag" in metadata ? undefined : metadata.version

/** What a client that left before its request reached the engine is counted as (no request id yet). */
const notReached = new InferenceError.Cancelled({ requestId: "", reason: "the client disconnected before its request reached the engine" })

const priorityKey = Buffer.from('"priority"')

/**
 * The priority a body asks for, read from its bytes without parsing them (Triton's
 * `parameters.priority`: 1 = Critical … 4 = Low; the first `"priority": <digit>` in the JSON), as
 * a rank 0 (Critical) … 3 (Low); `fallback` when there is none or it is not 1 to 4. Only a hint
 * for the order of decoding: the request's priority is what the decoded body says.
 */
export const priorityHint = (json: Buffer, fallback: number): number => {
  const at = json.indexOf(priorityKey)
  if (at === -1) return fallback
  let i = at + priorityKey.length
  while (json[i] === 0x20 || json[i] === 0x0a || json[i] === 0x0d || json[i] === 0x09) i++
  if (json[i++] !== 0x3a) return fallback
  while (json[i] === 0x20 || json[i] === 0x0a || json[i] === 0x0d || json[i] === 0x09) i++
  const digit = json[i]! - 0x30
  const next = json[i + 1]
  const single = next === undefined || next < 0x30 || next > 0x39
  return single && digit >= 1 && digit <= 4 ? digit - 1 : fallback
}

/**
 * Bodies read and waiting to be decoded, a FIFO per priority rank. Decoding (`JSON.parse` of the
 * tensors) is the costly part of a request on the main thread: deferred out of the poll phase
 * that read the body, and done Critical first, a Critical request skips the bodies of Low ones
 * that arrived before it. With `aging` (the engine's, `AsyncConfig.aging`), a body that has waited
 * is served as the engine's queue serves a request that has (`QueuePolicy.effectiveRank`), so that
 * a flood of higher ranks cannot hold a lower one here for ever. Drained after each poll phase
 * (`setImmediate`) for at most `drainBudgetMs`, so that the next poll phase reads what has arrived
 * meanwhile.
 */
export interface DecodeQueue {
  /** Queues `work` at `rank` (0 = Critical); it runs after the current turn of the event loop. */
  readonly push: (rank: number, work: () => void) => void
  /** Bodies still waiting (not counting the one whose work is running). */
  readonly waiting: () => number
}

export const makeDecodeQueue = (drainBudgetMs: number, aging?: QueuePolicy.Aging): DecodeQueue => {
  const queues: ReadonlyArray<Array<{ readonly work: () => void; readonly atMs: number }>> = [[], [], [], []]
  let waiting = 0
  let scheduled = false
  /** The rank whose first body goes next: the lowest rank, or with aging the lowest aged one (the oldest on a tie). */
  const next = (nowMs: number): number => {
    let best = -1
    let bestRank = Infinity
    for (let rank = 0; rank < queues.length; rank++) {
      const head = queues[rank]![0]
      if (head === undefined) continue
      if (aging === undefined) return rank
      const aged = QueuePolicy.effectiveRank(aging, Priority.levels[rank]!, nowMs - head.atMs)
      if (aged < bestRank || (aged === bestRank && head.atMs < queues[best]![0]!.atMs)) {
        best = rank
        bestRank = aged
      }
    }
    return best
  }
  const drain = () => {
    const untilMs = performance.now() + drainBudgetMs
    while (waiting > 0) {
      const { work } = queues[next(performance.now())]!.shift()!
      waiting--
      work()
      if (performance.now() >= untilMs) break
    }
    scheduled = waiting > 0
    if (scheduled) setImmediate(drain)
  }
  return {
    push: (rank, work) => {
      queues[rank]!.push({ work, atMs: performance.now() })
      waiting++
      if (!scheduled) {
        scheduled = true
        setImmediate(drain)
      }
    },
    waiting: () => waiting
  }
}

/** What the handler's steps share: the options and the decoding machinery, resolved once. */
interface Context {
  readonly options: Options
  readonly queue: DecodeQueue
  readonly pool: DecodePool.DecodePool | undefined
  readonly offloadMinBytes: number
  readonly offloadLimit: number
  readonly largeBodyBytes: number
  readonly largeAnswerValues: number
  /** Bodies in `queue` (read, waiting for their turn to be decoded) by model version key (`name@version`). */
  readonly waitingByKey: Map<string, number>
}

const send = (
  { options }: Context,
  response: Http.ServerResponse,
  status: number,
  contentType: string,
  body: string | Uint8Array,
  extra?: Readonly<Record<string, string>>,
  keepsConnection = false
): void => {
  if (response.headersSent || response.destroyed) return
  const headers: Record<string, string | number> = {
    "content-type": contentType,
    "content-length": typeof body === "string" ? Buffer.byteLength(body) : body.byteLength
  }
  if (extra !== undefined) Object.assign(headers, extra)
  if (options.lifecycle.closesConnections() && !keepsConnection && options.pipelinedBehind?.(response.req) !== true) headers["connection"] = "close"
  response.writeHead(status, headers)
  response.end(body)
}

const sendError = (context: Context, response: Http.ServerResponse, answer: ErrorAnswer): void =>
  send(context, response, answer.status, "application/json", errorBody(answer.message), answer.headers)

const defect = (context: Context, response: Http.ServerResponse, cause: unknown): void => {
  context.options.onDefect(cause)
  send(context, response, 500, "application/json", errorBody("internal error"))
}

/**
 * Runs a decoded body and answers it; returns the cancellation of the run, if one started. The
 * request's deadline counts from `inAtMs` (`performance.now()` when its body was in): its wait to
 * be decoded and its decoding are inside it, not before it.
 */
const run = (
  context: Context,
  response: Http.ServerResponse,
  name: string,
  metadata: ModelMetadata.ModelMetadata,
  decoded: InferExchange.Decoded | InferExchange.NotJson | InferenceError.InvalidInput,
  inAtMs: number
): (() => void) | undefined => {
  const { options } = context
  if (decoded._tag !== "Decoded") {
    // shutting down, a body that does not decode may still come from a sequence's client: its connection stays
    const keeps = options.lifecycle.isShuttingDown() && options.engine.sequencesUnderWayUnsafe(name, metadata.version)
    const answer = decoded._tag === "NotJson" ? { status: 400, message: decoded.message } : options.errorOf(decoded)
    if (decoded._tag === "InvalidInput") options.recordRefused(name, decoded, metadata.version)
    send(context, response, answer.status, "application/json", errorBody(answer.message), answer.headers, keeps)
    return undefined
  }
  return options.engine.inferUnsafe(decoded.request, (exit) => {
    const { sequence } = decoded.request
    // a shutdown that began while it ran: a sequence that goes on keeps its connection
    const keeps = sequence !== undefined && InferExchange.keepsConnectionAtShutdown(options.lifecycle.isShuttingDown(), options.engine, name, metadata.version, sequence)
    if (Exit.isFailure(exit)) {
      const failure = exit.cause.reasons.find(Cause.isFailReason)
      if (failure === undefined) return defect(context, response, Cause.squash(exit.cause))
      const answer = options.errorOf(failure.error.reason)
      return send(context, response, answer.status, "application/json", errorBody(answer.message), answer.headers, keeps)
    }
    const prepared = InferExchange.prepare(metadata, decoded, exit.value)
    if (prepared instanceof Error) return defect(context, response, prepared)
    if (prepared._tag === "TooLarge") return send(context, response, 400, "application/json", errorBody(prepared.message), undefined, keeps)
    const { pool } = context
    if (pool === undefined || prepared.jsonValues < context.largeAnswerValues) {
      return sendAnswer(context, response, InferExchange.encodePrepared(prepared.response), keeps)
    }
    // Encoded on a thread (here again if it cannot answer); the request stays in flight meanwhile.
    pool.encode(prepared.response, (answer) => {
      if (response.destroyed) return
      try {
        // read again when written: a shutdown may have begun while it was encoded
        const keepsNow = sequence !== undefined && InferExchange.keepsConnectionAtShutdown(options.lifecycle.isShuttingDown(), options.engine, name, metadata.version, sequence)
        sendAnswer(context, response, answer ?? InferExchange.encodePrepared(prepared.response), keepsNow)
      } catch (e) {
        defect(context, response, e)
      }
    })
  }, { spentMs: performance.now() - inAtMs })
}

/** Writes a success's answer. */
const sendAnswer = (context: Context, response: Http.ServerResponse, answer: InferExchange.Answer, keeps: boolean): void => {
  switch (answer._tag) {
    case "Json":
      return send(context, response, 200, "application/json", answer.text, undefined, keeps)
    case "JsonBytes":
      return send(context, response, 200, "application/json", answer.bytes, undefined, keeps)
    case "Binary":
      return send(context, response, 200, "application/octet-stream", answer.bytes, { [Oip.inferenceHeaderContentLength]: String(answer.jsonLength) }, keeps)
    case "TooLarge":
      return send(context, response, 400, "application/json", errorBody(answer.message), undefined, keeps)
  }
}

/** Where an infer request's body goes: `head` (its JSON) and, with a valid binary header, `binary`. */
interface Body {
  readonly route: { readonly name: string; readonly version: string | undefined }
  readonly head: Buffer
  readonly binary: Uint8Array | undefined
  /** `performance.now()` when the whole body was in. */
  readonly inAtMs: number
}

/**
 * The body is in and its turn has come: decode it (on a decode thread when the main thread has
 * a queue of bodies and the body is large, else here), run it, answer. `binary` is the binary
 * part, read into memory of its own when the header was a valid byte count (then `head` is the
 * JSON alone). `started` receives the cancellation of the run once it starts.
 */
const answer = (
  context: Context,
  request: Http.IncomingMessage,
  response: Http.ServerResponse,
  { route: { name, version }, head, binary, inAtMs }: Body,
  rank: number,
  started: (cancel: (() => void) | undefined) => void
): void => {
  const { options, pool, queue } = context
  const metadata = options.metadataUnsafe(name, version)
  if ("_tag" in metadata) {
    // Unloaded while the body arrived: counted as the router counts it.
    options.recordRefused(name, metadata, version)
    return sendError(context, response, options.errorOf(metadata))
  }
  const header = request.headers[Oip.inferenceHeaderContentLength]
  if (binary === undefined && typeof header === "string") {
    // A header that is not a byte count within the body: the router's answer.
    const split = Oip.splitBinaryBody(head, header)
    return sendError(context, response, { status: 400, message: typeof split === "string" ? split : "invalid Inference-Header-Content-Length" })
  }
  // The body's memory is this request's alone: its inputs (binary ones are views on it) may move to the worker.
  const here = () => started(run(context, response, name, metadata, InferExchange.decode(name, version, metadata, head, binary, true), inAtMs))
  if (pool === undefined || binary !== undefined) return here()
  // A large body always goes (decoded here, it would stall every other request). Others stay here
  // when idle (a hop costs more than it saves), when small, when Critical (never behind the
  // thread's queue), and when the threads have enough.
  if (head.length < context.largeBodyBytes) {
    const busy = queue.waiting() > 0 || pool.inFlight() > 0
    if (head.length < context.offloadMinBytes || !busy || rank === 0 || pool.inFlight() >= context.offloadLimit) return here()
  }
  pool.decode(name, metadata, head, (outcome) => {
    if (response.destroyed) return
    try {
      if (outcome === undefined) return here()
      started(run(context, response, name, metadata, outcome._tag === "Body" ? InferExchange.toDecoded(name, version, metadata, outcome, true) : outcome, inAtMs))
    } catch (e) {
      defect(context, response, e)
    }
  })
}

/** Copies `chunk`, which starts at byte `at` of a body whose JSON is its first `jsonLength` bytes, into `head` and `binary`. */
const place = (head: Buffer, binary: Uint8Array | undefined, jsonLength: number, chunk: Buffer, at: number): void => {
  let offset = 0
  if (at < jsonLength) offset = chunk.copy(head, at, 0, Math.min(chunk.length, jsonLength - at))
  if (offset < chunk.length && binary !== undefined) {
    const from = at + offset - jsonLength
    binary.set(chunk.subarray(offset, offset + Math.min(chunk.length - offset, binary.length - from)), from)
  }
}

/**
 * Memory for a body's JSON: shared (a `SharedArrayBuffer`) when it will be decoded on a thread
 * whatever the load (`largeBodyBytes`, a body without a binary part), so that it goes there without
 * a copy (15 MiB took 38 ms of the main thread to clone) and is still here should the thread fail
 * to answer.
 */
const allocateHead = (context: Context, jsonLength: number, jsonOnly: boolean): Buffer =>
  jsonOnly && context.pool !== undefined && jsonLength >= context.largeBodyBytes ? Buffer.from(new SharedArrayBuffer(jsonLength)) : Buffer.allocUnsafeSlow(jsonLength)

/**
 * Bodies up to this size (64 KiB) get their memory when accepted. A larger one keeps the chunks
 * as they arrive and gets its memory once half of it is in (then the chunks so far are copied
 * once): a client that declares a large Content-Length and sends little makes the server reserve
 * at most twice what it sent, not what it declared.
 */
export const upfrontBodyBytes = 64 * 1024

/**
 * Takes a request the handler accepted: counts it in flight, reads its body (the binary part, with
 * Triton's binary tensor data, into memory of its own: its tensors are views on it, aligned, that
 * can move to the worker without a copy; memory taken as `upfrontBodyBytes` says), then hands it
 * to `queueBody` (refused 429 there, or queued for decoding). A client that leaves before its request
 * reached the engine (while its body was read, or waited to be decoded) is counted as cancelled.
 */
const accept = (
  context: Context,
  request: Http.IncomingMessage,
  response: Http.ServerResponse,
  route: Body["route"],
  length: number
): void => {
  const { options } = context
  const leave = options.lifecycle.enterUnsafe()
  let cancel: (() => void) | undefined
  response.once("close", () => {
    leave()
    // The connection closed before the answer was written: the client is gone.
    if (response.writableFinished) return
    if (cancel !== undefined) return cancel()
    // Not yet in the engine (which counts its own cancellations), and not answered here.
    if (!response.headersSent) options.recordRefused(route.name, notReached, versionOf(options.metadataUnsafe(route.name, route.version)))
  })
  // An aborted upload emits "error" on the request; the response's "close" handles it.
  request.on("error", () => {})
  const header = request.headers[Oip.inferenceHeaderContentLength]
  const declared = typeof header === "string" && /^[0-9]+$/.test(header) ? Number(header) : undefined
  const splitAt = declared !== undefined && declared <= length ? declared : undefined
  const jsonLength = splitAt ?? length
  // The thread that will decode a large body starts while the body arrives, not after.
  if (context.pool !== undefined && splitAt === undefined && jsonLength >= context.largeBodyBytes) context.pool.start()
  const binaryLength = splitAt === undefined ? -1 : length - splitAt
  // A large body's chunks wait in `early` until half of it has come (`upfrontBodyBytes`).
  let early: Array<Buffer> | undefined
  let head: Buffer | undefined
  let binary: Uint8Array | undefined
  if (length <= upfrontBodyBytes) {
    head = allocateHead(context, jsonLength, binaryLength < 0)
    if (binaryLength >= 0) binary = new Uint8Array(binaryLength)
  } else early = []
  let received = 0
  request.on("data", (chunk: Buffer) => {
    if (early === undefined) place(head!, binary, jsonLength, chunk, received)
    else if ((received + chunk.length) * 2 < length) early.push(chunk)
    else {
      head = allocateHead(context, jsonLength, binaryLength < 0)
      if (binaryLength >= 0) binary = new Uint8Array(binaryLength)
      let at = 0
      for (const c of early) {
        place(head, binary, jsonLength, c, at)
        at += c.length
      }
      place(head, binary, jsonLength, chunk, at)
      early = undefined
    }
    received += chunk.length
  })
  request.once("end", () => {
    if (response.destroyed) return
    if (received !== length || head === undefined) return sendError(context, response, { status: 400, message: "could not read the request body" })
    queueBody(context, request, response, { route, head, binary, inAtMs: performance.now() }, (started) => {
      cancel = started
    })
  })
}

/**
 * The body is in: refused (429) when the engine's queue, counting the bodies waiting here, or the
 * model version's own bound is full, unless draining (then the engine's own answer, 503); else
 * queued for decoding by the priority it asks for. `started` receives the run's cancellation.
 */
const queueBody = (
  context: Context,
  request: Http.IncomingMessage,
  response: Http.ServerResponse,
  body: Body,
  started: (cancel: (() => void) | undefined) => void
): void => {
  const { options, queue } = context
  const { name } = body.route
  const metadata = options.metadataUnsafe(name, body.route.version)
  const found = "_tag" in metadata ? undefined : metadata
  // Counted by version only for a version with a queue bound of its own (nothing built otherwise).
  const key = found?.maxQueuedRequests === undefined ? undefined : `${name}@${found.version}`
  const waitingHere = key === undefined ? 0 : context.waitingByKey.get(key) ?? 0
  const full = options.engine.queueFullUnsafe(name, found, queue.waiting() + (context.pool?.inFlight() ?? 0), waitingHere)
  if (full !== undefined && !Effect.runSync(options.engine.isDraining)) {
    // Refused before decoding: no request id yet ("", which the message leaves out).
    options.recordRefused(name, full, found?.version)
    return sendError(context, response, options.errorOf(full))
  }
  const rank = priorityHint(body.head, found === undefined ? 0 : Priority.rank(found.defaultPriority ?? Priority.Normal))
  if (key !== undefined) context.waitingByKey.set(key, waitingHere + 1)
  queue.push(rank, () => {
    if (key !== undefined) {
      const left = context.waitingByKey.get(key)! - 1
      if (left === 0) context.waitingByKey.delete(key)
      else context.waitingByKey.set(key, left)
    }
    if (response.destroyed) return
    try {
      answer(context, request, response, body, rank, started)
    } catch (e) {
      defect(context, response, e)
    }
  })
}

export const make = (options: Options): Handler => {
  const { engine, lifecycle, metadataUnsafe } = options
  const pool = options.decodePool
  const context: Context = {
    options,
    queue: makeDecodeQueue(1, engine.config.aging),
    pool,
    offloadMinBytes: options.offloadMinBytes ?? 4096,
    offloadLimit: options.decodeInFlightLimit ?? 16 * (pool?.threads ?? 0),
    largeBodyBytes: options.largeBodyBytes ?? Infinity,
    largeAnswerValues: options.largeAnswerValues ?? Infinity,
    waitingByKey: new Map()
  }
  return (request, response) => {
    if (request.method !== "POST") return false
    const route = matchInferPath(request.url ?? "")
    if (route === undefined) return false
    const headers = request.headers
    if (headers["content-encoding"] !== undefined || headers["content-length"] === undefined) return false
    const length = Number(headers["content-length"])
    if (!(length <= options.bodyLimitBytes)) return false
    if (lifecycle.isShuttingDown() || !engine.admitsUnsafe()) return false
    if ("_tag" in metadataUnsafe(route.name, route.version)) return false
    // Bodies read and not yet submitted count against the queue's bound too (`accept`).
    accept(context, request, response, route, length)
    return true
  }
}
