/**
 * A client of an Open Inference Protocol v2 server over HTTP (this project's server, Triton,
 * KServe): the engine's own `InferenceRequest` in, its `InferenceResult.Success` or typed
 * `InferenceError` out, so that code written against the engine in process runs against a
 * server by swapping one call.
 *
 * - Inputs go as Triton's binary tensor data (`binaryInputs`, default true: no JSON number
 *   printing and parsing) or as JSON; outputs are asked as binary (`binaryOutputs`, default true).
 *   String tensors go as JSON either way. Output tensors are the client's own memory.
 * - A request's priority, timeout and sequence go as Triton's parameters (`priority` 1 = Critical
 *   … 4 = Low, `timeout` in µs, `sequence_id`/`sequence_start`/`sequence_end`), its `requestId` as
 *   the body's `id`. The deadline covers the whole exchange here too: when `timeout` passes before
 *   the answer, the request is abandoned (its connection closed, which cancels it at this
 *   project's server) and fails with DeadlineExceeded.
 * - Interrupting `infer` closes the request's connection the same way: the server cancels it
 *   wherever it is (queued, batching, running), as for any client that goes away.
 * - A sequence's requests (`InferenceRequest.sequence`) go one at a time, in the order they were
 *   made, as the engine runs them: each waits for the one before it to be answered (inside its
 *   deadline), since over separate connections they could overtake one another.
 * - `inferResult` and `inferBatch` answer every outcome as a result, as the engine's do.
 * - `retryOnQueueFull: n` sends a request refused with a full queue again, after the server's
 *   `Retry-After`, up to n times within its deadline (off by default).
 * - Errors: this project's server names the reason of each refusal in an `inference-error` header
 *   (`TensorCodec.inferenceErrorHeader`), so the client rebuilds the same `InferenceError` the server's engine
 *   gave, with its numbers (a full queue's capacity, a queue timeout's wait). From another server,
 *   the status decides: 400 InvalidInput, 404 ModelNotFound, 504 DeadlineExceeded, anything else
 *   ModelUnavailable carrying the status and the server's message (Triton answers a full queue
 *   503). A server that cannot be reached (or goes away, or sends an answer larger than
 *   `maxResponseBytes`) is ModelUnavailable with `unreachable`; one that answers something that is
 *   not the protocol is ModelUnavailable too, with the reason.
 * - One keep-alive connection pool (`maxSockets`, default 64) per client, closed with its scope.
 * - Effect users take `make` (scoped) or `OipClient.layer`; other code `connect`, whose calls
 *   return Promises and take an AbortSignal.
 * - Over HTTP only (gRPC is for Triton's own clients); it asks for neither shared memory nor
 *   classification outputs (Triton's extensions).
 *
 * @module OipClient
 */
import { Cause, Context, Deferred, Duration, Effect, Exit, Layer, Scope, Stream } from "effect"
import * as Http from "node:http"
import * as CancelToken from "./CancelToken.ts"
import * as InferenceError from "./InferenceError.ts"
import type { InferenceRequest } from "./InferenceRequest.ts"
import * as InferenceResult from "./InferenceResult.ts"
import type * as InputSignature from "./InputSignature.ts"
import type * as ModelMetadata from "./ModelMetadata.ts"
import * as Priority from "./Priority.ts"
import * as Sequence from "./Sequence.ts"
import * as Tensor from "./Tensor.ts"
import * as TensorCodec from "./TensorCodec.ts"
import { millisOf } from "./internal/Millis.ts"

export interface Options {
  /** The server's base URL: `http://host:port`. */
  readonly url: string
  /** Keep-alive connections at most at once. Default 64. */
  readonly maxSockets?: number | undefined
  /** Send numeric inputs as binary tensor data. Default true. */
  readonly binaryInputs?: boolean | undefined
  /** Ask for outputs as binary tensor data. Default true. */
  readonly binaryOutputs?: boolean | undefined
  /** The largest answer read, in bytes; a larger one fails the request (ModelUnavailable). Default 256 MiB. */
  readonly maxResponseBytes?: number | undefined
  /**
   * How many times a request refused with a full queue (429: refused before it ran, so sending it
   * again is safe, a sequence's request too) is sent again, each after the server's `Retry-After`
   * (1 s when it gives none), as long as its deadline leaves time for the wait. Default 0: the
   * QueueFull is the answer.
   */
  readonly retryOnQueueFull?: number | undefined
}

export interface Service {
  /**
   * Runs `request` at the server. `outputs`: the outputs to return (default: all the model's).
   * The result's `latencyMs` is this client's, from the call to the answer; `deviceUsed` is "remote".
   */
  readonly infer: (
    request: InferenceRequest,
    options?: { readonly outputs?: ReadonlyArray<string> | undefined }
  ) => Effect.Effect<InferenceResult.Success, InferenceError.InferenceError>
  /**
   * `infer` as the engine's `inferResult`: every outcome a result (a refusal Failed, a deadline
   * TimedOut, a cancellation Cancelled), also a server that gives no answer (Failed, ModelUnavailable).
   */
  readonly inferResult: (request: InferenceRequest) => Effect.Effect<InferenceResult.InferenceResult>
  /**
   * Runs every request, at most `concurrency` at once (default `maxSockets`), and emits each
   * result as it completes, as the engine's `inferBatch`. `requests` is read as they are sent.
   */
  readonly inferBatch: (
    requests: Iterable<InferenceRequest>,
    options?: { readonly concurrency?: number | undefined }
  ) => Stream.Stream<InferenceResult.InferenceResult>
  /** The model's inputs and outputs (`GET /v2/models/{name}[/versions/{v}]`); `version` is the highest the server lists when none is named. */
  readonly metadata: (model: string, version?: string) => Effect.Effect<ModelMetadata.ModelMetadata, InferenceError.InferenceError>
  /** `GET /v2/health/ready` (no model) or `/v2/models/{name}[/versions/{v}]/ready`: true on 200; false on any other answer or none. */
  readonly ready: (model?: string, version?: string) => Effect.Effect<boolean>
}

/** The header in which this project's server names a refusal's reason (`Routes.reasonFields`). */
export const reasonHeader = TensorCodec.inferenceErrorHeader

/** What an answer was, before it is read as the protocol. */
export interface Answer {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly body: Buffer
}

const unavailable = (modelId: string, reason: string) => InferenceError.make(new InferenceError.ModelUnavailable({ modelId, reason }))

/** `text` without `prefix` when it starts with it (a message the reason's own class wrote), else whole. */
const after = (text: string, prefix: string): string => (text.startsWith(prefix) ? text.slice(prefix.length) : text)

const numberOf = (fields: Readonly<Record<string, unknown>>, key: string): number | undefined =>
  typeof fields[key] === "number" ? fields[key] : undefined

/**
 * The reason of a refusal (a status other than 200), as the engine that answered it gave it when
 * the server names it (`reasonHeader`), else from the status. `message` is the body's `error`;
 * `elapsedMs` this client's wait. Pure.
 */
export const reasonOf = (
  request: Pick<InferenceRequest, "modelId" | "modelVersion" | "requestId" | "timeout">,
  status: number,
  header: string | undefined,
  message: string,
  elapsedMs: number
): InferenceError.Reason => {
  const { modelId, requestId } = request
  let fields: Readonly<Record<string, unknown>> | undefined
  try {
    const parsed: unknown = header === undefined ? undefined : JSON.parse(header)
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) fields = parsed as Readonly<Record<string, unknown>>
  } catch {
    // not this project's header: the status decides
  }
  const timeoutMs = millisOf(request.timeout)
  switch (fields?.["_tag"]) {
    case "QueueFull": {
      const bound = fields["bound"]
      return new InferenceError.QueueFull({
        modelId,
        requestId,
        capacity: numberOf(fields, "capacity") ?? 0,
        ...(bound === "server" || bound === "model" || bound === "sequences" ? { bound } : {})
      })
    }
    case "QueueTimeout":
      return new InferenceError.QueueTimeout({ modelId, requestId, queueTimeoutMs: numberOf(fields, "queueTimeoutMs") ?? 0, waitedMs: numberOf(fields, "waitedMs") ?? elapsedMs })
    case "DeadlineExceeded":
      return new InferenceError.DeadlineExceeded({ modelId, requestId, timeoutMs: numberOf(fields, "timeoutMs") ?? timeoutMs, elapsedMs: numberOf(fields, "elapsedMs") ?? elapsedMs })
    case "Cancelled":
      return new InferenceError.Cancelled({ requestId, reason: after(message, new InferenceError.Cancelled({ requestId, reason: "" }).message) })
    case "ModelNotFound": {
      const version = fields["version"]
      return new InferenceError.ModelNotFound({ modelId, ...(typeof version === "string" ? { version } : {}) })
    }
    case "ModelUnavailable": {
      const unloaded = fields["unloaded"] === true
      return new InferenceError.ModelUnavailable({
        modelId,
        reason: after(message, new InferenceError.ModelUnavailable({ modelId, reason: "" }).message),
        ...(unloaded ? { unloaded } : {})
      })
    }
    case "InvalidInput": {
      const input = typeof fields["input"] === "string" ? fields["input"] : undefined
      const prefix = new InferenceError.InvalidInput({ modelId, detail: "", ...(input === undefined ? {} : { input }) }).message
      return new InferenceError.InvalidInput({ modelId, detail: after(message, prefix), ...(input === undefined ? {} : { input }) })
    }
    case "RunFailed":
      return new InferenceError.RunFailed({ modelId, requestId, detail: after(message, new InferenceError.RunFailed({ modelId, requestId, detail: "" }).message) })
    case "ShuttingDown":
      return new InferenceError.ShuttingDown({})
  }
  switch (status) {
    case 400:
      return new InferenceError.InvalidInput({ modelId, detail: message })
    case 404:
      return new InferenceError.ModelNotFound({ modelId, ...(request.modelVersion === undefined ? {} : { version: request.modelVersion }) })
    case 504:
      return new InferenceError.DeadlineExceeded({ modelId, requestId, timeoutMs, elapsedMs })
    default:
      return new InferenceError.ModelUnavailable({ modelId, reason: `the server answered ${status}: ${message}` })
  }
}

/** The request's body: JSON, or JSON then the inputs' bytes (binary tensor data). */
export const encodeRequest = (
  request: InferenceRequest,
  options: { readonly binaryInputs: boolean; readonly binaryOutputs: boolean; readonly outputs?: ReadonlyArray<string> | undefined }
): { readonly bytes: Uint8Array; readonly headers: Record<string, string> } => {
  const timeoutMs = millisOf(request.timeout)
  const parameters: Record<string, unknown> = { priority: Priority.levels.indexOf(request.priority) + 1 }
  // an infinite deadline is none: the parameter left out (Triton's 0)
  if (Number.isFinite(timeoutMs)) parameters["timeout"] = Math.max(1, Math.round(timeoutMs * 1000))
  if (request.sequence !== undefined) {
    parameters["sequence_id"] = request.sequence.id
    if (request.sequence.start === true) parameters["sequence_start"] = true
    if (request.sequence.end === true) parameters["sequence_end"] = true
  }
  if (options.binaryOutputs) parameters["binary_data_output"] = true
  const blobs: Array<Uint8Array> = []
  // JSON text written as it goes: a tensor's data printed once (`encodeData`), never parsed back
  const inputs = Object.entries(request.inputs).map(([name, tensor]) => {
    const head = `{"name":${JSON.stringify(name)},"datatype":"${TensorCodec.datatypeOf[tensor.dtype]}","shape":${JSON.stringify(tensor.dims)}`
    if (!options.binaryInputs || tensor.dtype === "string") return `${head},"data":${TensorCodec.encodeData(tensor)}}`
    const blob = TensorCodec.encodeBinaryData(tensor)
    blobs.push(blob)
    return `${head},"parameters":{"binary_data_size":${blob.byteLength}}}`
  })
  const outputs = options.outputs?.map((name) => ({ name, ...(options.binaryOutputs ? { parameters: { binary_data: true } } : {}) }))
  const text = `{"id":${JSON.stringify(request.requestId)},"parameters":${JSON.stringify(parameters)},"inputs":[${inputs.join(",")}]${
    outputs === undefined ? "" : `,"outputs":${JSON.stringify(outputs)}`
  }}`
  const json = Buffer.from(text, "utf8")
  if (blobs.length === 0) return { bytes: json, headers: { "content-type": "application/json" } }
  const bytes = Buffer.concat([json, ...blobs])
  return { bytes, headers: { "content-type": "application/octet-stream", [TensorCodec.inferenceHeaderContentLength]: String(json.byteLength) } }
}

interface ResponseOutput {
  readonly name: string
  readonly datatype: string
  readonly shape: ReadonlyArray<number>
  readonly data?: unknown
  readonly parameters?: Readonly<Record<string, unknown>>
}

/** A 200 answer's outputs as tensors (JSON `data`, or bytes of its binary part), or why it is not the protocol. */
export const decodeResponse = (
  modelId: string,
  answer: Answer
): { readonly modelVersion: string; readonly outputs: Tensor.TensorMap } | string => {
  const headerLength = answer.headers[TensorCodec.inferenceHeaderContentLength]
  const jsonLength = headerLength === undefined ? answer.body.byteLength : Number(headerLength)
  if (!Number.isSafeInteger(jsonLength) || jsonLength < 0 || jsonLength > answer.body.byteLength) return `its ${TensorCodec.inferenceHeaderContentLength} ${String(headerLength)} does not fit its ${answer.body.byteLength} bytes`
  let body: { readonly model_version?: unknown; readonly outputs?: unknown }
  try {
    body = JSON.parse(answer.body.subarray(0, jsonLength).toString("utf8"), exactIntegers) as typeof body
  } catch {
    return "its body is not JSON"
  }
  if (!Array.isArray(body?.outputs)) return "its body has no outputs"
  const outputs: Record<string, Tensor.Tensor> = {}
  let offset = jsonLength
  for (const output of body.outputs as ReadonlyArray<ResponseOutput>) {
    const dtype = typeof output?.datatype === "string" ? TensorCodec.dtypeOf(output.datatype) : undefined
    if (dtype === undefined || typeof output.name !== "string" || !Array.isArray(output.shape)) return `an output is not a tensor it knows (${JSON.stringify(output).slice(0, 120)})`
    const size = output.parameters?.["binary_data_size"]
    let binary: Uint8Array | undefined
    if (size !== undefined) {
      if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0 || offset + size > answer.body.byteLength) return `output ${JSON.stringify(output.name)}: binary_data_size ${String(size)} does not fit the answer`
      binary = answer.body.subarray(offset, offset + size)
      offset += size
    }
    // an empty output (a detector that found nothing) is a tensor too; the decoder, made for inputs, refuses one
    if (output.shape.every((d) => Number.isSafeInteger(d) && d >= 0) && Tensor.elementCount(output.shape) === 0) {
      if (binary !== undefined ? binary.byteLength !== 0 : !(Array.isArray(output.data) && output.data.length === 0)) return `output ${JSON.stringify(output.name)}: an empty tensor with data`
      outputs[output.name] = Tensor.make(dtype, (dtype === "string" ? [] : Tensor.allocate(dtype, 0)) as Tensor.TensorData, output.shape.slice())
      continue
    }
    const spec: ModelMetadata.TensorSpec = { name: output.name, dtype, dims: output.shape }
    // integers past 2^53 come as their digits (`exactIntegers`): an int64 output reads them exactly, any other as numbers
    const data = dtype === "int64" || dtype === "uint64" ? output.data : numbersOf(output.data)
    const tensor = TensorCodec.decodeTensor(modelId, spec, { name: output.name, datatype: output.datatype, shape: output.shape, data }, binary)
    if (tensor instanceof InferenceError.InvalidInput) return `output ${JSON.stringify(output.name)}: ${tensor.detail}`
    outputs[output.name] = tensor
  }
  return { modelVersion: typeof body.model_version === "string" ? body.model_version : "", outputs }
}

/**
 * `JSON.parse`'s reviver for answers: an integer past 2^53 kept as its digits (the server prints
 * int64 outputs exactly; a number would round them), from the source text Node 22's reviver gets.
 */
const exactIntegers = (_key: string, value: unknown, context?: { readonly source?: string }): unknown =>
  typeof value === "number" && !Number.isSafeInteger(value) && Number.isInteger(value) && context?.source !== undefined && /^-?\d+$/.test(context.source)
    ? context.source
    : value

/** `data` with the digits `exactIntegers` kept turned back into numbers (an output that is not int64). */
const numbersOf = (data: unknown): unknown =>
  Array.isArray(data) ? data.map(numbersOf) : typeof data === "string" && /^-?\d+$/.test(data) ? Number(data) : data

/** One HTTP exchange; interrupting it destroys the request (its connection closes). */
const exchange = (
  agent: Http.Agent,
  url: URL,
  maxResponseBytes: number,
  method: string,
  path: string,
  body?: { readonly bytes: Uint8Array; readonly headers: Record<string, string> }
): Effect.Effect<Answer, string> =>
  Effect.callback<Answer, string>((resume) => {
    const request = Http.request({
      // an IPv6 address without its brackets
      host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: url.port === "" ? 80 : Number(url.port),
      method,
      path: `${url.pathname.replace(/\/$/, "")}${path}`,
      agent,
      headers: body === undefined ? {} : { ...body.headers, "content-length": String(body.bytes.byteLength) }
    }, (response) => {
      const chunks: Array<Buffer> = []
      let bytes = 0
      response.on("data", (chunk: Buffer) => {
        bytes += chunk.byteLength
        if (bytes > maxResponseBytes) {
          request.destroy()
          return resume(Effect.fail(`its answer is larger than ${maxResponseBytes} bytes (maxResponseBytes)`))
        }
        chunks.push(chunk)
      })
      response.on("end", () => resume(Effect.succeed({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks) })))
      response.on("error", (e: NodeJS.ErrnoException) => resume(Effect.fail(e.code ?? e.message)))
    })
    request.on("error", (e: NodeJS.ErrnoException) => resume(Effect.fail(e.code ?? e.message)))
    request.end(body?.bytes)
    return Effect.sync(() => request.destroy())
  })

/** A `Retry-After` header in ms: whole seconds (this server's), else 1 s (an HTTP date, or none). */
const retryAfterMs = (header: string | ReadonlyArray<string> | undefined): number => {
  const text = typeof header === "string" ? header.trim() : undefined
  return text !== undefined && /^\d+$/.test(text) ? Number(text) * 1000 : 1000
}

const modelPath = (model: string, version: string | undefined) =>
  `/v2/models/${encodeURIComponent(model)}${version === undefined ? "" : `/versions/${encodeURIComponent(version)}`}`

const errorMessage = (body: Buffer): string => {
  try {
    const parsed = JSON.parse(body.toString("utf8")) as { readonly error?: unknown }
    if (typeof parsed?.error === "string") return parsed.error
  } catch {
    // not JSON
  }
  return body.toString("utf8").slice(0, 200)
}

/** Why `request` would be refused by the engine before it ran (not a request, a bad timeout or priority), or undefined. */
const refusal = (request: InferenceRequest): InferenceError.InvalidInput | undefined => {
  const given = request as Partial<InferenceRequest> | null | undefined
  if (typeof given !== "object" || given === null || typeof given.modelId !== "string" || typeof given.inputs !== "object" || given.inputs === null) {
    return new InferenceError.InvalidInput({ modelId: typeof given?.modelId === "string" ? given.modelId : "", detail: "not an InferenceRequest (InferenceRequest.make builds one)" })
  }
  const timeout: unknown = request.timeout
  if (!Duration.isDuration(timeout) || Duration.isNegative(timeout)) {
    return new InferenceError.InvalidInput({ modelId: request.modelId, detail: `timeout ${String(timeout)}: it must be a Duration that is not negative` })
  }
  if (!Priority.is(request.priority)) {
    return new InferenceError.InvalidInput({ modelId: request.modelId, detail: `unknown priority ${JSON.stringify(request.priority)}: one of ${Priority.levels.join(", ")}` })
  }
  return undefined
}

/**
 * A `GET /v2/models/{name}[/versions/{v}]` answer's body as the model's metadata, or why it is not
 * one: its inputs and outputs, the highest version it lists (Triton does not promise an order)
 * when `version` is not named, and the input signatures this project's server publishes as a
 * property (config.json `inputSignatures`). Pure.
 */
export const decodeMetadata = (model: string, version: string | undefined, body: Uint8Array): ModelMetadata.ModelMetadata | string => {
  let json: { readonly versions?: unknown; readonly inputs?: unknown; readonly outputs?: unknown; readonly properties?: { readonly input_signatures?: unknown } }
  try {
    json = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("utf8")) as typeof json
  } catch {
    return "metadata that is not JSON"
  }
  const specs = (list: unknown): Array<ModelMetadata.TensorSpec> | undefined => {
    if (!Array.isArray(list)) return undefined
    const out: Array<ModelMetadata.TensorSpec> = []
    for (const t of list as ReadonlyArray<{ name?: unknown; datatype?: unknown; shape?: unknown }>) {
      const dtype = typeof t?.datatype === "string" ? TensorCodec.dtypeOf(t.datatype) : undefined
      if (dtype === undefined || typeof t.name !== "string" || !Array.isArray(t.shape)) return undefined
      out.push({ name: t.name, dtype, dims: t.shape as ReadonlyArray<number> })
    }
    return out
  }
  const inputs = specs(json?.inputs)
  const outputs = specs(json?.outputs)
  if (inputs === undefined || outputs === undefined) return "metadata with tensors it does not know"
  const declared = json.properties?.input_signatures
  let signatures: ReadonlyArray<InputSignature.Signature> | undefined
  if (typeof declared === "string") {
    try {
      const parsed: unknown = JSON.parse(declared)
      if (Array.isArray(parsed)) signatures = parsed as ReadonlyArray<InputSignature.Signature>
    } catch {
      // not ours: no signatures
    }
  }
  const versions = Array.isArray(json.versions) ? json.versions.filter((v): v is string => typeof v === "string" && /^\d+$/.test(v)) : []
  const highest = versions.reduce<string | undefined>((best, v) => (best === undefined || Number(v) > Number(best) ? v : best), undefined)
  return { name: model, version: version ?? highest ?? "1", inputs, outputs, ...(signatures === undefined ? {} : { signatures }) }
}

/**
 * Each sequence under way (by model, version and `Sequence.keyOf` its id): the last request made,
 * which the next waits for, and how many of its requests are not over yet.
 */
type Tails = Map<string, { tail: Deferred.Deferred<void>; users: number }>

/**
 * `send` once the requests of the same sequence made before it are over: the server runs a
 * sequence's requests in the order they come, and over separate connections they could overtake
 * one another. A request that leaves early (its deadline, an interruption) passes the turn on
 * only once the one before it is over too. Other requests go at once.
 */
const inTurn = <A, E>(tails: Tails, request: InferenceRequest, send: Effect.Effect<A, E>): Effect.Effect<A, E> => {
  if (request.sequence === undefined) return send
  const key = `${request.modelId}@${request.modelVersion ?? ""}#${Sequence.keyOf(request.sequence.id)}`
  // registered and its release attached in one step, in the fiber that runs it: no interruption between
  return Effect.uninterruptibleMask((restore) =>
    Effect.suspend(() => {
      const mine = Deferred.makeUnsafe<void>()
      let entry = tails.get(key)
      const before = entry?.tail
      if (entry === undefined) tails.set(key, entry = { tail: mine, users: 0 })
      entry.tail = mine
      entry.users++
      const held = entry
      return Effect.ensuring(
        restore(before === undefined ? send : Effect.andThen(Deferred.await(before), send)),
        Effect.sync(() => {
          Deferred.doneUnsafe(mine, before === undefined ? Effect.void : Deferred.await(before))
          if (--held.users === 0 && tails.get(key) === held) tails.delete(key)
        })
      )
    })
  )
}

/** What a client's operations share (`make`). */
interface Connection {
  readonly url: URL
  /** One exchange: a refusal (ShuttingDown) once closed; no answer at all is ModelUnavailable, `unreachable`. */
  readonly call: (modelId: string, method: string, path: string, body?: { readonly bytes: Uint8Array; readonly headers: Record<string, string> }) => Effect.Effect<Answer, InferenceError.InferenceError>
  readonly binaryInputs: boolean
  readonly binaryOutputs: boolean
  readonly retryOnQueueFull: number
  readonly tails: Tails
}

/** A refusal's answer (a status other than 200) as the typed error. */
const refusedBy = (request: Parameters<typeof reasonOf>[0], answer: Answer, elapsedMs: number): InferenceError.InferenceError => {
  const header = answer.headers[reasonHeader]
  return InferenceError.make(reasonOf(request, answer.status, typeof header === "string" ? header : undefined, errorMessage(answer.body), elapsedMs))
}

/** `Service.infer` (see the module doc). */
const infer = (conn: Connection, request: InferenceRequest, outputs: ReadonlyArray<string> | undefined): Effect.Effect<InferenceResult.Success, InferenceError.InferenceError> =>
  Effect.suspend(() => {
    // refused as the engine refuses them, before anything is sent
    const refused = refusal(request)
    if (refused !== undefined) return Effect.fail(InferenceError.make(refused))
    const startedMs = performance.now()
    const timeoutMs = millisOf(request.timeout)
    const late = () => InferenceError.make(new InferenceError.DeadlineExceeded({ modelId: request.modelId, requestId: request.requestId, timeoutMs, elapsedMs: performance.now() - startedMs }))
    // the server's deadline is what is left of the request's once it is sent (a sequence's may have waited its turn)
    const sent = Effect.suspend(() => {
      const leftMs = timeoutMs - (performance.now() - startedMs)
      // its turn came too late: not sent (a sequence's state at the server is left as it was)
      if (leftMs <= 0) return Effect.fail(late())
      const body = encodeRequest(Number.isFinite(leftMs) ? { ...request, timeout: Duration.millis(leftMs) } : request, {
        binaryInputs: conn.binaryInputs,
        binaryOutputs: conn.binaryOutputs,
        outputs
      })
      return conn.call(request.modelId, "POST", `${modelPath(request.modelId, request.modelVersion)}/infer`, body)
    })
    // a full queue (429) sent again after its Retry-After, while the deadline leaves time for the wait
    const sentWithRetries = (retriesLeft: number): Effect.Effect<Answer, InferenceError.InferenceError> =>
      Effect.flatMap(sent, (answer) => {
        if (answer.status !== 429 || retriesLeft <= 0) return Effect.succeed(answer)
        const waitMs = retryAfterMs(answer.headers["retry-after"])
        if (waitMs >= timeoutMs - (performance.now() - startedMs)) return Effect.succeed(answer)
        return Effect.andThen(Effect.sleep(Duration.millis(waitMs)), sentWithRetries(retriesLeft - 1))
      })
    const answered = Effect.flatMap(inTurn(conn.tails, request, sentWithRetries(conn.retryOnQueueFull)), (answer) => {
      const elapsedMs = performance.now() - startedMs
      if (answer.status !== 200) return Effect.fail(refusedBy(request, answer, elapsedMs))
      const decoded = decodeResponse(request.modelId, answer)
      if (typeof decoded === "string") return Effect.fail(unavailable(request.modelId, `${conn.url.origin} answered what is not an inference response: ${decoded}`))
      return Effect.succeed(InferenceResult.Success({
        requestId: request.requestId,
        outputs: decoded.outputs,
        latencyMs: elapsedMs,
        deviceUsed: "remote",
        modelVersion: decoded.modelVersion
      }) as InferenceResult.Success)
    })
    // the deadline covers the whole exchange: past it the request is abandoned (its connection closed)
    if (!Number.isFinite(timeoutMs)) return answered
    return Effect.timeoutOrElse(answered, { duration: Duration.millis(timeoutMs), orElse: () => Effect.fail(late()) })
  })

/** The client, its connection pool closed with the scope. Fails (a defect) on a URL that is not http://. */
export const make = (options: Options): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    const url = new URL(options.url)
    if (url.protocol !== "http:") return yield* Effect.die(new TypeError(`OipClient: ${JSON.stringify(options.url)} is not an http:// URL`))
    let closed = false
    const agent = yield* Effect.acquireRelease(
      Effect.sync(() => new Http.Agent({ keepAlive: true, maxSockets: options.maxSockets ?? 64 })),
      (agent) =>
        Effect.sync(() => {
          closed = true
          agent.destroy()
        })
    )
    const maxResponseBytes = options.maxResponseBytes ?? 256 * 1024 * 1024
    const conn: Connection = {
      url,
      // a closed client refuses (an Agent opens new sockets after `destroy`)
      call: (modelId, method, path, body) =>
        closed
          ? Effect.fail(InferenceError.make(new InferenceError.ShuttingDown({})))
          : Effect.mapError(
            exchange(agent, url, maxResponseBytes, method, path, body),
            // no answer at all: the server is unreachable, or went away (or this client was closed meanwhile)
            (why) =>
              InferenceError.make(
                closed
                  ? new InferenceError.ShuttingDown({})
                  : new InferenceError.ModelUnavailable({ modelId, reason: `${url.origin}: ${why}`, unreachable: true })
              )
          ),
      binaryInputs: options.binaryInputs ?? true,
      binaryOutputs: options.binaryOutputs ?? true,
      retryOnQueueFull: Math.max(0, Math.floor(options.retryOnQueueFull ?? 0)),
      tails: new Map()
    }

    const inferResult: Service["inferResult"] = (request) =>
      Effect.suspend(() => {
        const startedMs = performance.now()
        const id: unknown = (request as Partial<InferenceRequest> | null | undefined)?.requestId
        return Effect.catch(infer(conn, request, undefined), (error) => Effect.succeed(InferenceResult.ofError(typeof id === "string" ? id : "", error, performance.now() - startedMs)))
      })

    return {
      infer: (request, inferOptions) => infer(conn, request, inferOptions?.outputs),
      inferResult,
      inferBatch: (requests, batchOptions) => {
        const concurrency = batchOptions?.concurrency ?? options.maxSockets ?? 64
        // as the engine's: NaN would send nothing and never end
        if (!(Number.isInteger(concurrency) && concurrency >= 1)) return Stream.die(new TypeError(`OipClient.inferBatch: concurrency ${concurrency}: it must be a positive integer`))
        return Stream.fromIterable(requests, { chunkSize: 1 }).pipe(Stream.mapEffect(inferResult, { concurrency, unordered: true }))
      },
      metadata: (model, version) =>
        Effect.flatMap(conn.call(model, "GET", modelPath(model, version)), (answer) => {
          if (answer.status !== 200) return Effect.fail(refusedBy({ modelId: model, modelVersion: version, requestId: "", timeout: Duration.zero }, answer, 0))
          const decoded = decodeMetadata(model, version, answer.body)
          return typeof decoded === "string" ? Effect.fail(unavailable(model, `${url.origin} answered ${decoded}`)) : Effect.succeed(decoded)
        }),
      ready: (model, version) =>
        conn.call(model ?? "", "GET", model === undefined ? "/v2/health/ready" : `${modelPath(model, version)}/ready`).pipe(
          Effect.map((answer) => answer.status === 200),
          Effect.orElseSucceed(() => false)
        )
    }
  })

/** The client as a service. */
export class OipClient extends Context.Service<OipClient, Service>()("effect-onnx/OipClient") {
  /** The client; its connections close with the layer. */
  static readonly layer = (options: Options): Layer.Layer<OipClient> => Layer.effect(OipClient, make(options))
}

/** The client for code without Effect (`connect`): Promises, an AbortSignal for cancellation. */
export interface PromiseClient {
  /** `Service.infer`; rejects with the `InferenceError`. Aborting `signal` closes the request (Cancelled). */
  readonly infer: (
    request: InferenceRequest,
    options?: { readonly outputs?: ReadonlyArray<string> | undefined; readonly signal?: AbortSignal | undefined }
  ) => Promise<InferenceResult.Success>
  /** `Service.inferResult`: never rejects; aborting `signal` answers Cancelled. */
  readonly inferResult: (request: InferenceRequest, options?: { readonly signal?: AbortSignal | undefined }) => Promise<InferenceResult.InferenceResult>
  /** `Service.inferBatch` as an AsyncIterable: each result as it completes; leaving the loop early cancels what is in flight. */
  readonly inferBatch: (requests: Iterable<InferenceRequest>, options?: { readonly concurrency?: number | undefined }) => AsyncIterable<InferenceResult.InferenceResult>
  readonly metadata: (model: string, version?: string) => Promise<ModelMetadata.ModelMetadata>
  readonly ready: (model?: string, version?: string) => Promise<boolean>
  /**
   * Closes the client's connections (idempotent): requests in flight are abandoned (Cancelled; a
   * batch's are answered ShuttingDown), later ones refused (ShuttingDown).
   */
  readonly close: () => Promise<void>
}

/**
 * `make` for code without Effect. A request aborted by its signal rejects with an
 * `InferenceError` whose reason is Cancelled; its connection is closed, which cancels it at this
 * project's server. Throws a TypeError on a URL that is not http://.
 */
export const connect = (options: Options): PromiseClient => {
  const scope = Scope.makeUnsafe()
  const exit = Effect.runSyncExit(Scope.provide(make(options), scope))
  if (Exit.isFailure(exit)) throw Cause.squash(exit.cause)
  const client = exit.value
  let closed = false
  /** Each call's own abort, so that `close` cancels what is in flight. */
  const inFlight = new Set<AbortController>()
  const run = <A>(effect: Effect.Effect<A, InferenceError.InferenceError>, requestId: string, given?: AbortSignal): Promise<A> => {
    if (closed) return Promise.reject(InferenceError.make(new InferenceError.ShuttingDown({})))
    const controller = new AbortController()
    const signal = given === undefined ? controller.signal : AbortSignal.any([given, controller.signal])
    inFlight.add(controller)
    return Effect.runPromiseExit(effect, { signal }).then((result) => {
      if (Exit.isSuccess(result)) return result.value
      const error = Cause.findErrorOption(result.cause)
      if (error._tag === "Some") throw error.value
      if (Cause.hasInterruptsOnly(result.cause)) {
        throw InferenceError.make(new InferenceError.Cancelled({ requestId, reason: CancelToken.abortReasonText(signal.reason) }))
      }
      throw Cause.squash(result.cause)
    }).finally(() => inFlight.delete(controller))
  }
  return {
    infer: (request, inferOptions) => run(client.infer(request, inferOptions), request.requestId, inferOptions?.signal),
    inferResult: (request, resultOptions) => {
      const id: unknown = (request as Partial<InferenceRequest> | null | undefined)?.requestId
      const requestId = typeof id === "string" ? id : ""
      return run(client.inferResult(request), requestId, resultOptions?.signal).catch((e: unknown) => {
        if (InferenceError.isInferenceError(e)) return InferenceResult.ofError(requestId, e, 0)
        throw e
      })
    },
    // (once closed, each request is answered Failed, ShuttingDown)
    inferBatch: (requests, batchOptions) => Stream.toAsyncIterable(client.inferBatch(requests, batchOptions)),
    metadata: (model, version) => run(client.metadata(model, version), ""),
    ready: (model, version) => (closed ? Promise.resolve(false) : Effect.runPromise(client.ready(model, version))),
    close: () => {
      closed = true
      for (const controller of inFlight) controller.abort("the client was closed")
      return Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }
}
