/**
 * The one error type of the engine. Every failure carries a `reason` that says what went
 * wrong and what a caller needs to react (model, request id, limits, elapsed time).
 * `httpStatus` is the single mapping from reason to HTTP status.
 *
 * @module InferenceError
 */
import { Schema } from "effect"

/**
 * The queue already holds `capacity` requests; nothing was queued. Retryable. `requestId` is ""
 * when the refusal came before the request had one (an edge's early check, before its body was
 * read); the message then names none.
 */
export class QueueFull extends Schema.Error<QueueFull>("effect-onnx/InferenceError/QueueFull")({
  _tag: Schema.tag("QueueFull"),
  modelId: Schema.String,
  requestId: Schema.String,
  capacity: Schema.Number,
  /**
   * Which bound: "model" when the model's own (config.json `maxQueuedRequests`) is full;
   * "sequences" when a new sequence of a stateful model finds it at its `maxSequences` (config.json
   * `sequenceBatching`; `capacity` is that); absent (or "server") when the queue all models share is.
   */
  bound: Schema.optional(Schema.Literals(["server", "model", "sequences"]))
}) {
  override get message(): string {
    const request = this.requestId === "" ? "" : `, request ${this.requestId}`
    if (this.bound === "sequences") {
      return `too many sequences: model ${this.modelId} already has ${this.capacity} under way, the most its config.json allows (sequenceBatching.maxSequences); one must end or go idle first${this.requestId === "" ? "" : ` (request ${this.requestId})`}`
    }
    return this.bound === "model"
      ? `queue full: model ${this.modelId} already has ${this.capacity} requests waiting, the most its config.json allows (maxQueuedRequests)${this.requestId === "" ? "" : ` (request ${this.requestId})`}`
      : `queue full: ${this.capacity} requests already queued, all models together (model ${this.modelId}${request})`
  }
}

/** The request waited in the queue longer than `queueTimeoutMs` and never ran. Retryable. */
export class QueueTimeout extends Schema.Error<QueueTimeout>("effect-onnx/InferenceError/QueueTimeout")({
  _tag: Schema.tag("QueueTimeout"),
  modelId: Schema.String,
  requestId: Schema.String,
  queueTimeoutMs: Schema.Number,
  waitedMs: Schema.Number
}) {
  override get message(): string {
    return `request ${this.requestId} waited ${this.waitedMs} ms in the queue (limit ${this.queueTimeoutMs} ms) for model ${this.modelId}`
  }
}

/** The request's deadline (queue wait plus run) passed before it finished. */
export class DeadlineExceeded extends Schema.Error<DeadlineExceeded>("effect-onnx/InferenceError/DeadlineExceeded")({
  _tag: Schema.tag("DeadlineExceeded"),
  modelId: Schema.String,
  requestId: Schema.String,
  timeoutMs: Schema.Number,
  elapsedMs: Schema.Number
}) {
  override get message(): string {
    return `request ${this.requestId} for model ${this.modelId} exceeded its ${this.timeoutMs} ms deadline`
  }
}

/** The caller cancelled the request. */
export class Cancelled extends Schema.Error<Cancelled>("effect-onnx/InferenceError/Cancelled")({
  _tag: Schema.tag("Cancelled"),
  requestId: Schema.String,
  reason: Schema.String
}) {
  override get message(): string {
    return `request ${this.requestId} cancelled: ${this.reason}`
  }
}

/** No model of that name (or version) is in the repository. */
export class ModelNotFound extends Schema.Error<ModelNotFound>("effect-onnx/InferenceError/ModelNotFound")({
  _tag: Schema.tag("ModelNotFound"),
  modelId: Schema.String,
  version: Schema.optional(Schema.String)
}) {
  override get message(): string {
    return this.version === undefined
      ? `model ${JSON.stringify(this.modelId)} not found`
      : `model ${JSON.stringify(this.modelId)} version ${JSON.stringify(this.version)} not found`
  }
}

/**
 * The model exists but cannot serve (it failed to load, or is still loading). `unloaded`: it is
 * not loaded under explicit model control (never loaded, or unloaded), which only a load changes:
 * answered as not found (HTTP 404, gRPC NOT_FOUND, as Triton's "has no available versions"),
 * and not retryable. `unreachable`: a client of a server (`OipClient`) got no answer at all (the
 * server could not be reached, or went away): nothing is known of the model.
 */
export class ModelUnavailable extends Schema.Error<ModelUnavailable>("effect-onnx/InferenceError/ModelUnavailable")({
  _tag: Schema.tag("ModelUnavailable"),
  modelId: Schema.String,
  reason: Schema.String,
  unloaded: Schema.optional(Schema.Boolean),
  unreachable: Schema.optional(Schema.Boolean)
}) {
  override get message(): string {
    return `model ${JSON.stringify(this.modelId)} is unavailable: ${this.reason}`
  }
}

/** The inputs do not fit the model: unknown or missing input, wrong dtype, rank or dims. Not retryable. */
export class InvalidInput extends Schema.Error<InvalidInput>("effect-onnx/InferenceError/InvalidInput")({
  _tag: Schema.tag("InvalidInput"),
  modelId: Schema.String,
  input: Schema.optional(Schema.String),
  detail: Schema.String
}) {
  override get message(): string {
    return this.input === undefined
      ? `invalid input for model ${JSON.stringify(this.modelId)}: ${this.detail}`
      : `invalid input ${JSON.stringify(this.input)} for model ${JSON.stringify(this.modelId)}: ${this.detail}`
  }
}

/** The runtime failed while running the model (or its worker died). */
export class RunFailed extends Schema.Error<RunFailed>("effect-onnx/InferenceError/RunFailed")({
  _tag: Schema.tag("RunFailed"),
  modelId: Schema.String,
  requestId: Schema.String,
  detail: Schema.String
}) {
  override get message(): string {
    return `run of model ${JSON.stringify(this.modelId)} failed for request ${this.requestId}: ${this.detail}`
  }
}

/** The engine is draining: it accepts no new work. */
export class ShuttingDown extends Schema.Error<ShuttingDown>("effect-onnx/InferenceError/ShuttingDown")({
  _tag: Schema.tag("ShuttingDown")
}) {
  override get message(): string {
    return "the engine is shutting down and accepts no new requests"
  }
}

export const Reason = Schema.Union([
  QueueFull,
  QueueTimeout,
  DeadlineExceeded,
  Cancelled,
  ModelNotFound,
  ModelUnavailable,
  InvalidInput,
  RunFailed,
  ShuttingDown
])

export type Reason = typeof Reason.Type

export type ReasonTag = Reason["_tag"]

/** Every failure of the engine. Match on `reason._tag`, or use `Effect.catchReason`. */
export class InferenceError extends Schema.Error<InferenceError>("effect-onnx/InferenceError")({
  _tag: Schema.tag("InferenceError"),
  reason: Reason
}) {
  override get message(): string {
    return this.reason.message
  }

  /** True when the same request may succeed later unchanged. */
  get isRetryable(): boolean {
    return isRetryable(this.reason)
  }
}

/** Wraps a reason in an `InferenceError`. */
export const make = (reason: Reason): InferenceError => new InferenceError({ reason })

export const isInferenceError = (u: unknown): u is InferenceError => u instanceof InferenceError

export const isRetryable = (reason: Reason): boolean => {
  switch (reason._tag) {
    case "QueueFull":
    case "QueueTimeout":
    case "ShuttingDown":
      return true
    case "ModelUnavailable":
      return reason.unloaded !== true
    default:
      return false
  }
}

/**
 * The one mapping from reason to HTTP status. 499 is the de-facto "client closed request"
 * status: a cancelled request has no one left to read the answer.
 */
export const httpStatus = (reason: Reason): number => {
  switch (reason._tag) {
    case "InvalidInput":
      return 400
    case "ModelNotFound":
      return 404
    case "QueueFull":
      return 429
    case "Cancelled":
      return 499
    case "RunFailed":
      return 500
    case "ModelUnavailable":
      return reason.unloaded === true ? 404 : 503
    case "ShuttingDown":
      return 503
    case "QueueTimeout":
    case "DeadlineExceeded":
      return 504
  }
}

/**
 * The one mapping from reason to gRPC status code (numbers as in `grpc-js`'s `status`):
 * INVALID_ARGUMENT (3), NOT_FOUND (5), RESOURCE_EXHAUSTED (8) for a full queue, DEADLINE_EXCEEDED
 * (4), CANCELLED (1), INTERNAL (13), UNAVAILABLE (14); a model not loaded under explicit model
 * control NOT_FOUND, as Triton's (HTTP 404). As Triton's except a full queue and an
 * expired timeout, which Triton answers UNAVAILABLE (a code clients retry as transient): here
 * overload and a deadline say what they are, as HTTP's 429 and 504 do.
 */
export const grpcCode = (reason: Reason): number => {
  switch (reason._tag) {
    case "InvalidInput":
      return 3
    case "ModelNotFound":
      return 5
    case "QueueFull":
      return 8
    case "Cancelled":
      return 1
    case "RunFailed":
      return 13
    case "ModelUnavailable":
      return reason.unloaded === true ? 5 : 14
    case "ShuttingDown":
      return 14
    case "QueueTimeout":
    case "DeadlineExceeded":
      return 4
  }
}
