/**
 * One inference over HTTP, between the body's bytes and the engine: the body decoded for its
 * model into an `InferenceRequest` (`decode`), and the engine's result encoded as the answer
 * (`encode`). Both ways of serving the infer route use it, the router's (`Routes`) and the one
 * on Node's request event (`NodeInfer`), so that they answer the same bytes and the same errors.
 *
 * @module InferExchange
 */
import * as InferenceError from "../InferenceError.ts"
import * as InferenceRequest from "../InferenceRequest.ts"
import type * as InferenceResult from "../InferenceResult.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import type * as Tensor from "../Tensor.ts"
import * as Oip from "./Oip.ts"

/** A body ready for the engine, with what its answer needs. */
export interface Decoded {
  readonly _tag: "Decoded"
  readonly request: InferenceRequest.InferenceRequest
  /** The outputs to return, in order. */
  readonly outputs: ReadonlyArray<string>
  readonly binaryOutputs: ReadonlySet<string>
  /** The request's `id`, echoed in the answer. */
  readonly id: string | undefined
}

/** A body that is not JSON at all: 400 with `message`, before any model is involved. */
export interface NotJson {
  readonly _tag: "NotJson"
  readonly message: string
}

/**
 * Decodes an inference body for `metadata`: the JSON `text` (the body, or its head when the
 * request carries Triton's binary tensor data), then the envelope (Schema), then each tensor
 * (`Oip.prepare`). A body that decodes as JSON but not as a request for this model is
 * InvalidInput, which the engine counts as a refused request.
 */
export const decode = (
  name: string,
  version: string | undefined,
  metadata: ModelMetadata.ModelMetadata,
  text: string,
  binary: Uint8Array | undefined,
  /** The body's memory is the caller's to give away: the inputs may move to the worker (`InferenceRequest.transferInputs`). */
  ownsBody = false
): Decoded | NotJson | InferenceError.InvalidInput => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (e) {
    return { _tag: "NotJson", message: `the request body is not valid JSON: ${e instanceof Error ? e.message : String(e)}` }
  }
  const body = Oip.decodeInferRequest(json)
  if ("error" in body) return new InferenceError.InvalidInput({ modelId: name, detail: body.error })
  const prepared = Oip.prepare(metadata, body, binary)
  if (prepared instanceof InferenceError.InvalidInput) return prepared
  const request = InferenceRequest.make(name, prepared.inputs, {
    modelVersion: version,
    priority: prepared.priority ?? metadata.defaultPriority,
    timeout: prepared.timeout,
    metadata: body.id === undefined ? undefined : { id: body.id },
    transferInputs: ownsBody
  })
  return { _tag: "Decoded", request, outputs: prepared.outputs, binaryOutputs: prepared.binaryOutputs, id: body.id }
}

/** An answer's body: JSON text, or bytes (JSON head and binary part) with the head's length. */
export type Answer =
  | { readonly _tag: "Json"; readonly text: string }
  | { readonly _tag: "Binary"; readonly bytes: Uint8Array; readonly jsonLength: number }

/**
 * Encodes a success: the selected outputs in order, those asked as binary in the binary part.
 * An output the model did not return is a defect (the metadata promised it): an Error.
 */
export const encode = (
  metadata: ModelMetadata.ModelMetadata,
  decoded: Decoded,
  result: InferenceResult.Success
): Answer | Error => {
  const tensors: Array<readonly [string, Tensor.Tensor]> = []
  for (const output of decoded.outputs) {
    const tensor = result.outputs[output]
    if (tensor === undefined) {
      return new Error(`model ${metadata.name} returned no output ${output} (request ${decoded.request.requestId})`)
    }
    tensors.push([output, tensor])
  }
  const encoded = Oip.encodeResponse({
    modelName: metadata.name,
    modelVersion: metadata.version,
    id: decoded.id,
    outputs: tensors,
    binaryOutputs: decoded.binaryOutputs
  })
  if (encoded.binary.length === 0) return { _tag: "Json", text: encoded.json }
  const { body, jsonLength } = Oip.binaryBody(encoded)
  return { _tag: "Binary", bytes: body, jsonLength }
}
