/**
 * A request to run one model once.
 *
 * @module InferenceRequest
 */
import { Duration } from "effect"
import { dual } from "effect/Function"
import * as Priority from "./Priority.ts"
import type * as Sequence from "./Sequence.ts"
import type * as Tensor from "./Tensor.ts"

export interface InferenceRequest {
  /** Unique per request; generated unless given. */
  readonly requestId: string
  readonly modelId: string
  /** A model version; undefined means the model's default (highest) version. */
  readonly modelVersion?: string | undefined
  readonly inputs: Tensor.TensorMap
  /** Deadline for the whole request: queue wait plus run. */
  readonly timeout: Duration.Duration
  readonly priority: Priority.Priority
  readonly metadata: Readonly<Record<string, string>>
  /**
   * The caller gives the inputs' buffers to the engine: a worker thread may receive them moved
   * instead of copied, which leaves them detached (empty) here, so the caller must not read them
   * after `infer`. Only a buffer that holds exactly its tensor moves. Default false: copied.
   */
  readonly transferInputs?: boolean | undefined
  /**
   * The sequence the request belongs to, for a model that keeps state between requests
   * (config.json `sequenceBatching`, see `Sequence`): required there, refused elsewhere.
   */
  readonly sequence?: Sequence.Flags | undefined
}

/** 30 seconds, as in the spec. */
export const defaultTimeout: Duration.Duration = Duration.seconds(30)

export interface Options {
  readonly requestId?: string | undefined
  readonly modelVersion?: string | undefined
  /** The deadline, over queue wait and run (default 30 s); a negative one is refused with InvalidInput. */
  readonly timeout?: Duration.Input | undefined
  readonly priority?: Priority.Priority | undefined
  readonly metadata?: Readonly<Record<string, string>> | undefined
  readonly transferInputs?: boolean | undefined
  readonly sequence?: Sequence.Flags | undefined
}

let counter = 0
const prefix = Math.random().toString(36).slice(2, 8)

/** A fresh request id: unique within the process, cheap to make. */
export const nextRequestId = (): string => `${prefix}-${(++counter).toString(36)}`

/**
 * `Duration.fromInputUnsafe`, except for what it cannot take: NaN (which it reads as 0, a deadline
 * already passed, answered as a time-out) and text it cannot parse (which it throws on) are kept
 * as given, so that admission refuses them as InvalidInput, as it does any timeout that is not a
 * Duration.
 */
const timeoutOf = (timeout: Duration.Input): Duration.Duration => {
  if (typeof timeout === "number" && Number.isNaN(timeout)) return timeout as unknown as Duration.Duration
  try {
    return Duration.fromInputUnsafe(timeout)
  } catch {
    return timeout as unknown as Duration.Duration
  }
}

/**
 * A request with the spec's defaults: 30 s timeout, Normal priority, no metadata, a generated id.
 * Never throws: a timeout that is not a duration (NaN, "5 sec") is refused at admission (InvalidInput).
 */
export const make = (modelId: string, inputs: Tensor.TensorMap, options: Options = {}): InferenceRequest => ({
  requestId: options.requestId ?? nextRequestId(),
  modelId,
  // (spreading `false` allocates nothing, where `{}` is an object a request)
  ...(options.modelVersion !== undefined && { modelVersion: options.modelVersion }),
  inputs,
  timeout: options.timeout === undefined ? defaultTimeout : timeoutOf(options.timeout),
  priority: options.priority ?? Priority.Normal,
  metadata: options.metadata ?? {},
  ...(options.transferInputs === true && { transferInputs: true }),
  ...(options.sequence !== undefined && { sequence: options.sequence })
})

export const withPriority: {
  (priority: Priority.Priority): (self: InferenceRequest) => InferenceRequest
  (self: InferenceRequest, priority: Priority.Priority): InferenceRequest
} = dual(2, (self: InferenceRequest, priority: Priority.Priority): InferenceRequest => ({ ...self, priority }))

export const withTimeout: {
  (timeout: Duration.Input): (self: InferenceRequest) => InferenceRequest
  (self: InferenceRequest, timeout: Duration.Input): InferenceRequest
} = dual(2, (self: InferenceRequest, timeout: Duration.Input): InferenceRequest => ({ ...self, timeout: timeoutOf(timeout) }))
