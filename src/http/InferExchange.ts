/**
 * One inference over HTTP, between the body's bytes and the engine: the body decoded for its
 * model into an `InferenceRequest` (`decode`), and the engine's result encoded as the answer
 * (`prepare`, `encodePrepared`). Both ways of serving the infer route use it, the router's (`Routes`) and the one
 * on Node's request event (`NodeInfer`), so that they answer the same bytes and the same errors.
 *
 * @module InferExchange
 */
import { Duration } from "effect"
import type { Service as Engine } from "../Engine.ts"
import * as InferenceError from "../InferenceError.ts"
import * as InferenceRequest from "../InferenceRequest.ts"
import type * as InferenceResult from "../InferenceResult.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import type * as Priority from "../Priority.ts"
import type * as Sequence from "../Sequence.ts"
import type * as Tensor from "../Tensor.ts"
import * as Oip from "./Oip.ts"
import { millisOf } from "../internal/Millis.ts"
import * as JsonDepth from "../internal/JsonDepth.ts"

/** A body ready for the engine, with what its answer needs. */
export interface Decoded {
  readonly _tag: "Decoded"
  readonly request: InferenceRequest.InferenceRequest
  /** The outputs to return, in order. */
  readonly outputs: ReadonlyArray<string>
  readonly binaryOutputs: ReadonlySet<string>
  /** The outputs asked as classifications, with their counts (`Oip.classificationsOf`). */
  readonly classifications: ReadonlyMap<string, number>
  /** The request's `id`, echoed in the answer. */
  readonly id: string | undefined
}

/** A body that is not JSON at all: 400 with `message`, before any model is involved. */
export interface NotJson {
  readonly _tag: "NotJson"
  readonly message: string
}

/**
 * A body decoded for its model, before it is a request: plain data that a decode thread can post
 * back (`DecodePool`).
 */
export interface Body {
  readonly _tag: "Body"
  readonly inputs: Tensor.TensorMap
  readonly outputs: ReadonlyArray<string>
  readonly binaryOutputs: ReadonlyArray<string>
  /** The outputs asked as classifications and their counts (pairs: plain data a decode thread can post). */
  readonly classifications: ReadonlyArray<readonly [string, number]>
  /** Undefined: the model's default. */
  readonly priority: Priority.Priority | undefined
  /** Undefined: the engine's default deadline. */
  readonly timeoutMs: number | undefined
  readonly id: string | undefined
  /** The request's sequence (`Oip.Prepared.sequence`); undefined: none. */
  readonly sequence: Sequence.Flags | undefined
}

/** A body that asks for no classification (most): one shared empty list. */
const noPairs: ReadonlyArray<readonly [string, number]> = []

/**
 * Decodes an inference body for `metadata`: the JSON `text` (the body, or its head when the
 * request carries Triton's binary tensor data; none, with a binary part, for a raw binary request,
 * `Oip.rawBinaryRequest`), then the envelope (Schema), then each tensor (`Oip.prepare`, which
 * reads the model's name, inputs, outputs and batching). A body that
 * decodes as JSON but not as a request for this model is InvalidInput, which the engine counts
 * as a refused request.
 */
export const decodeBody = (
  name: string,
  metadata: ModelMetadata.ModelMetadata,
  text: string,
  binary: Uint8Array | undefined
): Body | NotJson | InferenceError.InvalidInput => {
  let body: ReturnType<typeof Oip.decodeInferRequest>
  if (text.length === 0 && binary !== undefined) {
    // Inference-Header-Content-Length 0: Triton's raw binary request, the body the one input's bytes.
    const raw = Oip.rawBinaryRequest(metadata, binary)
    if (raw instanceof InferenceError.InvalidInput) return raw
    body = raw.body
    binary = raw.binary
  } else {
    const problem = JsonDepth.inferBodyProblem(text, "the request body")
    if (problem !== undefined) return { _tag: "NotJson", message: problem }
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (e) {
      return { _tag: "NotJson", message: `the request body is not valid JSON: ${e instanceof Error ? e.message : String(e)}` }
    }
    body = Oip.decodeInferRequest(json)
    if ("error" in body) return new InferenceError.InvalidInput({ modelId: name, detail: body.error })
  }
  const prepared = Oip.prepare(metadata, body, binary)
  if (prepared instanceof InferenceError.InvalidInput) return prepared
  return {
    _tag: "Body",
    inputs: prepared.inputs,
    outputs: prepared.outputs,
    binaryOutputs: [...prepared.binaryOutputs],
    classifications: prepared.classifications.size === 0 ? noPairs : [...prepared.classifications],
    priority: prepared.priority,
    timeoutMs: prepared.timeout === undefined ? undefined : millisOf(prepared.timeout),
    id: body.id,
    sequence: prepared.sequence
  }
}

/** A decoded body as the engine's request (the model's default priority where it gave none). */
export const toDecoded = (
  name: string,
  version: string | undefined,
  metadata: ModelMetadata.ModelMetadata,
  body: Body,
  /** The body's memory is the caller's to give away: the inputs may move to the worker (`InferenceRequest.transferInputs`). */
  ownsBody: boolean
): Decoded => ({
  _tag: "Decoded",
  request: InferenceRequest.make(name, body.inputs, {
    // As the client named it (or not): the engine admits it to a version, which the answer names (`prepare`, `encodePrepared`).
    modelVersion: version,
    priority: body.priority ?? metadata.defaultPriority,
    timeout: body.timeoutMs === undefined ? undefined : Duration.millis(body.timeoutMs),
    metadata: body.id === undefined ? undefined : { id: body.id },
    transferInputs: ownsBody,
    sequence: body.sequence
  }),
  outputs: body.outputs,
  binaryOutputs: new Set(body.binaryOutputs),
  classifications: body.classifications.length === 0 ? Oip.noClassifications : new Map(body.classifications),
  id: body.id
})

/**
 * `decodeBody`, then `toDecoded`. `json` is the JSON text, or its bytes as an edge read them
 * (then bytes that are not UTF-8, or too many for a string, are NotJson: `Oip.undecodableMessage`).
 */
export const decode = (
  name: string,
  version: string | undefined,
  metadata: ModelMetadata.ModelMetadata,
  json: string | Uint8Array,
  binary: Uint8Array | undefined,
  ownsBody = false
): Decoded | NotJson | InferenceError.InvalidInput => {
  const text = typeof json === "string" ? json : Oip.jsonText(json)
  if (text === undefined) return { _tag: "NotJson", message: Oip.undecodableMessage(json as Uint8Array) }
  const body = decodeBody(name, metadata, text, binary)
  return body._tag === "Body" ? toDecoded(name, version, metadata, body, ownsBody) : body
}

/** An answer's body: JSON text (or its UTF-8 bytes), or bytes (JSON head and binary part) with the head's length; or why it is not given (a 400). */
export type Answer =
  | { readonly _tag: "Json"; readonly text: string }
  | { readonly _tag: "JsonBytes"; readonly bytes: Uint8Array }
  | { readonly _tag: "Binary"; readonly bytes: Uint8Array; readonly jsonLength: number }
  | { readonly _tag: "TooLarge"; readonly message: string }

/**
 * The most output values an answer carries as JSON `data`: 2^20, about 10 MB of text and a second
 * or two of the main thread here (the text is built there, and 10^8 values ran the heap out: the
 * server died). Larger outputs come as binary tensor data (`binary_data_output`), which copies bytes.
 */
export const maxJsonOutputValues = 1 << 20

/** What an answer says, before it is text (`Oip.encodeResponse`'s argument): plain data, which a decode thread can be sent. */
export interface Response {
  readonly modelName: string
  readonly modelVersion: string
  readonly id: string | undefined
  readonly outputs: ReadonlyArray<readonly [string, Tensor.Tensor]>
  readonly binaryOutputs: ReadonlySet<string> | undefined
}

/** A success ready to encode, and how many values it writes as JSON text (the costly part). */
export interface Prepared {
  readonly _tag: "Prepared"
  readonly response: Response
  readonly jsonValues: number
}

/**
 * Selects a success's outputs in order (as classifications where asked), those asked as binary
 * going in the binary part.
 * An output the model did not return is a defect (the metadata promised it): an Error. Outputs
 * of more than `maxJsonOutputValues` values to write as JSON are not written: `TooLarge`.
 */
export const prepare = (
  metadata: ModelMetadata.ModelMetadata,
  decoded: Decoded,
  result: InferenceResult.Success
): Prepared | Extract<Answer, { readonly _tag: "TooLarge" }> | Error => {
  const tensors: Array<readonly [string, Tensor.Tensor]> = []
  for (const output of decoded.outputs) {
    const tensor = result.outputs[output]
    if (tensor === undefined) {
      return new Error(`model ${metadata.name} returned no output ${output} (request ${decoded.request.requestId})`)
    }
    tensors.push([output, Oip.answerTensor(metadata, output, tensor, decoded.classifications)])
  }
  let jsonValues = 0
  for (const [name, tensor] of tensors) if (decoded.binaryOutputs?.has(name) !== true) jsonValues += tensor.data.length
  if (jsonValues > maxJsonOutputValues) {
    return {
      _tag: "TooLarge",
      message: `the outputs asked as JSON hold ${jsonValues} values, more than the ${maxJsonOutputValues} a JSON answer carries; ask for them as binary tensor data (parameters.binary_data_output: true)`
    }
  }
  return {
    _tag: "Prepared",
    response: {
      modelName: metadata.name,
      // the version that ran it, which a load between this edge's lookup and the engine's may have made another
      modelVersion: result.modelVersion,
      id: decoded.id,
      outputs: tensors,
      binaryOutputs: decoded.binaryOutputs
    },
    jsonValues
  }
}

/** The answer's body for a prepared success. */
export const encodePrepared = (response: Response): Answer => {
  const encoded = Oip.encodeResponse(response)
  if (encoded.binary.length === 0) return { _tag: "Json", text: encoded.json }
  const { body, jsonLength } = Oip.binaryBody(encoded)
  return { _tag: "Binary", bytes: body, jsonLength }
}

/**
 * Whether the answer to a request of `sequence` keeps its connection open though the server shuts
 * down (which closes connections after their next answer): the request is not its sequence's end
 * and the sequence is still under way, so the client will send its next request, and a new
 * connection might reach another server, which knows nothing of the sequence. Read when the
 * answer is written (the signal may have come while the request ran).
 */
export const keepsConnectionAtShutdown = (
  shuttingDown: boolean,
  engine: Pick<Engine, "takesSequenceUnsafe">,
  name: string,
  version: string,
  sequence: Sequence.Flags | undefined
): boolean => shuttingDown && sequence !== undefined && sequence.end !== true && engine.takesSequenceUnsafe(name, version, { id: sequence.id })
