/**
 * The Open Inference Protocol v2 (REST) as the HTTP routes speak it: the repository index
 * request, Triton's platform name, output selection, model metadata and properties, the binary
 * tensor data framing of a body (split at `Inference-Header-Content-Length`, joined for a
 * response), the response encoding, Triton's `max_batch_size` check, and `prepare`.
 *
 * The tensor codec and the request's JSON form (datatypes, `InferRequest`, `decodeTensor`,
 * `encodeData`, Triton's `priority` and `timeout` parameters) are core (`TensorCodec`), shared with
 * the gRPC service and the batch CLI, and re-exported here.
 *
 * Encoding (`encodeResponse`) writes the response JSON by hand (see `TensorCodec.encodeData`); an
 * output asked with `binary_data` is returned in the binary part instead. A model that batches
 * refuses more rows than its `max_batch_size` (`checkBatchSize`), as Triton.
 *
 * `prepare` is the one decoding of an inference request that both protocols share: the HTTP
 * routes feed it the JSON body (and binary part), the gRPC service a `ModelInferRequest`
 * rewritten into the same shape, so that both answer the same messages.
 *
 * @module Oip
 */
import { Duration, Schema } from "effect"
import * as Batch from "../Batch.ts"
import * as Classification from "../Classification.ts"
import * as InferenceError from "../InferenceError.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import type * as ModelPool from "../ModelPool.ts"
import * as Priority from "../Priority.ts"
import * as Sequence from "../Sequence.ts"
import * as Tensor from "../Tensor.ts"
import * as TensorCodec from "../TensorCodec.ts"

// The tensor codec and the request's JSON form live in the core (`TensorCodec`), shared with the CLI and gRPC.
export {
  datatypeOf,
  datatypes,
  decodeInferRequest,
  decodeInputs,
  decodeTensor,
  dtypeOf,
  encodeBinaryData,
  encodeData,
  encodeOutput,
  fromHalfBits,
  inferenceHeaderContentLength,
  InferParameters,
  InferRequest,
  Parameters,
  priorityLevels,
  priorityOf,
  RequestInput,
  RequestOutput,
  timeoutOf,
  toHalfBits
} from "../TensorCodec.ts"
export type { InferRequest as InferRequestType, RequestInput as RequestInputType } from "../TensorCodec.ts"

/** Fatal: JSON text must be UTF-8 (RFC 8259 §8.1); a leading byte-order mark is dropped. */
const utf8 = new TextDecoder("utf-8", { fatal: true })

/** The refusal of a body whose bytes are not UTF-8: 400. */
export const notUtf8Message = "the request body is not valid UTF-8, as JSON text must be (RFC 8259 §8.1)"

/** The most bytes a JSON text may have here: V8's longest string (UTF-8 has at least a byte a character). */
export const maxJsonTextBytes = 0x1fffffe8

/**
 * A body's bytes as JSON text, or undefined when they are not UTF-8 (such bytes are refused,
 * never read with U+FFFD in their place, which would change the strings and ids that were sent)
 * or longer than a string can be (`maxJsonTextBytes`): `undecodableMessage` says which.
 */
export const jsonText = (bytes: Uint8Array): string | undefined => {
  if (bytes.length > maxJsonTextBytes) return undefined
  try {
    return utf8.decode(bytes)
  } catch {
    return undefined
  }
}

/** Why `jsonText` gave no text for `bytes`: too long for a string, or not UTF-8. */
export const undecodableMessage = (bytes: Uint8Array): string =>
  bytes.length > maxJsonTextBytes
    ? `the request's JSON is ${bytes.length} bytes, more than the ${maxJsonTextBytes} a JSON text can be here (send large tensors as binary data)`
    : notUtf8Message

const utf8Encoder = new TextEncoder()

// ---------------------------------------------------------------------------
// Datatypes
// ---------------------------------------------------------------------------


// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

/** Free-form `parameters` object. */
/** The body of `POST /v2/repository/index` (Triton's repository extension). */
export const RepositoryIndexRequest = Schema.Struct({
  ready: Schema.optionalKey(Schema.Boolean)
})

const decodeIndexRequestResult = Schema.decodeUnknownResult(RepositoryIndexRequest)

const schemaMessage = (error: Schema.SchemaError): string => error.message.replace(/\n\s*/g, " ")

export const decodeRepositoryIndexRequest = (json: unknown): typeof RepositoryIndexRequest.Type | { readonly error: string } => {
  const result = decodeIndexRequestResult(json)
  return result._tag === "Success" ? result.success : { error: `invalid repository index request: ${schemaMessage(result.failure)}` }
}

/**
 * The body of `POST /v2/repository/models/{m}/load|unload` (Triton's repository extension): at
 * most `parameters`, an object. Any other key is refused, so that a misspelt `parameters` is not
 * silently dropped. Which parameters the server can apply is `ModelControl.checkParameters`.
 */
export const RepositoryControlRequest = Schema.Struct({
  parameters: Schema.optionalKey(TensorCodec.Parameters)
})

const decodeControlRequestResult = Schema.decodeUnknownResult(RepositoryControlRequest, { onExcessProperty: "error" })

export const decodeRepositoryControlRequest = (json: unknown): typeof RepositoryControlRequest.Type | { readonly error: string } => {
  const result = decodeControlRequestResult(json)
  return result._tag === "Success" ? result.success : { error: `invalid repository load or unload request: ${schemaMessage(result.failure)}` }
}

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

/** Triton's platform name for ONNX models. */
export const platformName = "onnxruntime_onnx"

/**
 * The names of the outputs to return: the requested ones (each must exist), or all the model's
 * outputs when `outputs` is absent or empty (as Triton reads it, and as gRPC, whose repeated
 * field cannot tell the two apart).
 */
export const selectOutputs = (
  metadata: ModelMetadata.ModelMetadata,
  requested: ReadonlyArray<{ readonly name: string }> | undefined
): ReadonlyArray<string> | InferenceError.InvalidInput => {
  const outputs = Sequence.clientOutputs(metadata)
  if (requested === undefined || requested.length === 0) return outputs.map((s) => s.name)
  const names: Array<string> = []
  for (const { name } of requested) {
    if (Sequence.isStateOutput(metadata.sequence, name)) {
      return new InferenceError.InvalidInput({
        modelId: metadata.name,
        detail: `output ${JSON.stringify(name)} is the sequence's next state, which the server keeps for the sequence's next request (config.json sequenceBatching): it is not returned`
      })
    }
    if (!outputs.some((s) => s.name === name)) {
      return new InferenceError.InvalidInput({
        modelId: metadata.name,
        detail: `unknown output ${JSON.stringify(name)}; the model returns ${outputs.map((s) => s.name).join(", ")}`
      })
    }
    if (!names.includes(name)) names.push(name)
  }
  return names
}

/** An inference response: the JSON text, and the binary part for the outputs asked as binary (empty otherwise). */
export interface EncodedResponse {
  readonly json: string
  readonly binary: ReadonlyArray<Uint8Array>
}

/** A response with a binary part as one body: the JSON's bytes, then each output's bytes; `jsonLength` goes in Inference-Header-Content-Length. */
export const binaryBody = (encoded: EncodedResponse): { readonly body: Uint8Array; readonly jsonLength: number } => {
  const head = utf8Encoder.encode(encoded.json)
  const body = new Uint8Array(encoded.binary.reduce((n, b) => n + b.length, head.length))
  body.set(head)
  let offset = head.length
  for (const part of encoded.binary) {
    body.set(part, offset)
    offset += part.length
  }
  return { body, jsonLength: head.length }
}

/**
 * Splits a request body sent with binary tensor data at `header` (the Inference-Header-Content-Length
 * value): the JSON text, and the binary part after it. An error string when the header is not a
 * byte count within the body.
 */
export const splitBinaryBody = (bytes: Uint8Array, header: string): { readonly text: string; readonly binary: Uint8Array } | string => {
  const jsonLength = /^[0-9]+$/.test(header) ? Number(header) : Number.NaN
  if (!(jsonLength <= bytes.length)) {
    return `${TensorCodec.inferenceHeaderContentLength} ${JSON.stringify(header.slice(0, 40))} must be a byte count within the body's ${bytes.length} bytes`
  }
  const head = bytes.subarray(0, jsonLength)
  const text = jsonText(head)
  return text === undefined ? undecodableMessage(head) : { text, binary: bytes.subarray(jsonLength) }
}

/**
 * The fixed parts of a model's responses, written once per model version: the head with its
 * name and version, and each output's opening up to its shape.
 */
interface Template {
  readonly head: string
  readonly outputs: Map<string, string>
}

/** Templates by model name and version; a server holds few models, and the map is cleared past `maxTemplates`. */
const templates = new Map<string, Template>()
const maxTemplates = 1024

const templateOf = (modelName: string, modelVersion: string): Template => {
  const key = `${modelName}\u0000${modelVersion}`
  let template = templates.get(key)
  if (template === undefined) {
    if (templates.size >= maxTemplates) templates.clear()
    template = { head: `{"model_name":${JSON.stringify(modelName)},"model_version":${JSON.stringify(modelVersion)}`, outputs: new Map() }
    templates.set(key, template)
  }
  return template
}

const outputOpening = (template: Template, name: string, tensor: Tensor.Tensor): string => {
  const key = `${name}\u0000${tensor.dtype}`
  let opening = template.outputs.get(key)
  if (opening === undefined) {
    opening = `{"name":${JSON.stringify(name)},"datatype":"${TensorCodec.datatypeOf[tensor.dtype]}","shape":[`
    if (template.outputs.size < maxTemplates) template.outputs.set(key, opening)
  }
  return opening
}

/**
 * Encodes an inference response from the model's template (`Template`). Outputs named in
 * `binaryOutputs` carry `parameters.binary_data_size` instead of `data`, and their bytes follow
 * the JSON in the order of the outputs (binary tensor data extension).
 */
export const encodeResponse = (response: {
  readonly modelName: string
  readonly modelVersion: string
  readonly id: string | undefined
  readonly outputs: ReadonlyArray<readonly [string, Tensor.Tensor]>
  readonly binaryOutputs?: ReadonlySet<string> | undefined
}): EncodedResponse => {
  const template = templateOf(response.modelName, response.modelVersion)
  const binary: Array<Uint8Array> = []
  let s = template.head
  if (response.id !== undefined) s += `,"id":${JSON.stringify(response.id)}`
  s += `,"outputs":[`
  for (let i = 0; i < response.outputs.length; i++) {
    const [name, tensor] = response.outputs[i]!
    if (i > 0) s += ","
    s += outputOpening(template, name, tensor)
    s += tensor.dims.join(",")
    if (response.binaryOutputs?.has(name) === true) {
      const bytes = TensorCodec.encodeBinaryData(tensor)
      binary.push(bytes)
      s += `],"parameters":{"binary_data_size":${bytes.length}}}`
    } else {
      s += `],"data":${TensorCodec.encodeData(tensor)}}`
    }
  }
  return { json: s + "]}", binary }
}

/**
 * The outputs to return as binary: those whose `parameters.binary_data` is true, and, when the
 * request's `parameters.binary_data_output` is true, every selected output whose own
 * `binary_data` is not false. A `binary_data` that is not a boolean is refused, and so is a
 * parameter of an extension this server does not implement (`TensorCodec.unsupportedParameter`).
 */
export const binaryOutputsOf = (
  metadata: ModelMetadata.ModelMetadata,
  request: TensorCodec.InferRequest,
  selected: ReadonlyArray<string>
): ReadonlySet<string> | InferenceError.InvalidInput => {
  const own = new Map<string, boolean>()
  for (const output of request.outputs ?? []) {
    const unsupported = TensorCodec.unsupportedParameter(output.parameters, true)
    if (unsupported !== undefined) return new InferenceError.InvalidInput({ modelId: metadata.name, detail: `output ${JSON.stringify(output.name)}: ${unsupported}` })
    const flag = output.parameters?.["binary_data"]
    if (flag === undefined) continue
    if (typeof flag !== "boolean") {
      return new InferenceError.InvalidInput({ modelId: metadata.name, detail: `output ${JSON.stringify(output.name)}: parameters.binary_data must be a boolean, got ${TensorCodec.describe(flag)}` })
    }
    own.set(output.name, flag)
  }
  const all = request.parameters?.binary_data_output === true
  return new Set(selected.filter((name) => own.get(name) ?? all))
}

/**
 * The outputs asked as classifications (Triton's classification extension: an output's
 * `parameters.classification`, the number of classes), by name; refused when the count is not a
 * positive integer or the output is not numeric (`Classification`).
 */
export const classificationsOf = (
  metadata: ModelMetadata.ModelMetadata,
  request: TensorCodec.InferRequest
): ReadonlyMap<string, number> | InferenceError.InvalidInput => {
  let out: Map<string, number> | undefined
  for (const output of request.outputs ?? []) {
    const asked = output.parameters?.["classification"]
    if (asked === undefined) continue
    const refuse = (detail: string) => new InferenceError.InvalidInput({ modelId: metadata.name, detail: `output ${JSON.stringify(output.name)}: ${detail}` })
    const count = Classification.countOf(asked)
    if (typeof count === "string") return refuse(count)
    const spec = metadata.outputs.find((s) => s.name === output.name)
    if (spec !== undefined && !Classification.supports(spec.dtype)) {
      return refuse(`parameters.classification needs a numeric output; this one is ${TensorCodec.datatypeOf[spec.dtype]}`)
    }
    ;(out ??= new Map()).set(output.name, count)
  }
  return out ?? noClassifications
}

/** A request that asks for no classification (most): one shared empty map. */
export const noClassifications: ReadonlyMap<string, number> = new Map()

/**
 * `tensor`, the model's output `name`, as the request asked for it: its classification when it
 * asked for one (`classificationsOf`), else itself. A model that batches classifies each row
 * along the output's batch axis.
 */
export const answerTensor = (
  metadata: ModelMetadata.ModelMetadata,
  name: string,
  tensor: Tensor.Tensor,
  classifications: ReadonlyMap<string, number>
): Tensor.Tensor => {
  const count = classifications.get(name)
  if (count === undefined) return tensor
  const batching = metadata.batching
  return Classification.classify(tensor, count, batching?.enabled === true ? Batch.axisOf(batching.outputAxes, name) : null, metadata.labels?.[name])
}

/** Metadata of one tensor in OIP form: -1 for a dynamic dim. */
export const tensorMetadata = (spec: ModelMetadata.TensorSpec) => ({
  name: spec.name,
  datatype: TensorCodec.datatypeOf[spec.dtype],
  shape: spec.dims.map((d) => (d < 0 ? -1 : d))
})

/**
 * The `versions` of a model's metadata answer, as Triton gives them (the versions "that may be
 * explicitly requested"): with a version in the path, that version alone; without one, the
 * model's versions that can serve now (READY), not those that failed to load or were unloaded;
 * the version that answered where the pool lists none.
 */
export const metadataVersions = (
  models: ReadonlyArray<ModelPool.ModelStatus>,
  metadata: ModelMetadata.ModelMetadata,
  askedVersion: string | undefined
): ReadonlyArray<string> => {
  if (askedVersion !== undefined) return [metadata.version]
  const ready = models.filter((m) => m.name === metadata.name && m.state === "READY").map((m) => m.version)
  return ready.length === 0 ? [metadata.version] : ready
}

/**
 * The model metadata response's `properties` (the OIP allows string values only): the priority
 * a request without one gets, the most rows a batch may hold ("0": no batching, as Triton's
 * max_batch_size), and, when `config.json` declares them, the input signatures a request must
 * fit, as JSON text (`InputSignature`).
 */
export const modelProperties = (metadata: ModelMetadata.ModelMetadata): Record<string, string> => {
  const properties: Record<string, string> = {
    default_priority: metadata.defaultPriority ?? Priority.Normal,
    max_batch_size: String(metadata.batching?.enabled === true ? metadata.batching.maxBatchSize : 0)
  }
  if (metadata.signatures !== undefined) properties["input_signatures"] = JSON.stringify(metadata.signatures)
  return properties
}

/**
 * The most rows a request may carry: `max_batch_size` when the model batches (Triton refuses a
 * request with more), else undefined (no limit).
 */
export const checkBatchSize = (metadata: ModelMetadata.ModelMetadata, inputs: Tensor.TensorMap): InferenceError.InvalidInput | undefined => {
  const batching = metadata.batching
  if (batching === undefined || !batching.enabled) return undefined
  for (const [name, tensor] of Object.entries(inputs)) {
    const axis = Batch.axisOf(batching.inputAxes, name)
    if (axis === null) continue
    const rows = tensor.dims[axis]
    if (rows !== undefined && rows > batching.maxBatchSize) {
      return new InferenceError.InvalidInput({
        modelId: metadata.name,
        input: name,
        detail: `inference request batch-size must be <= ${batching.maxBatchSize} for '${metadata.name}' (the model's max_batch_size), got ${rows}`
      })
    }
  }
  return undefined
}

/**
 * Triton's raw binary request (binary tensor data extension): with Inference-Header-Content-Length
 * 0 the whole body is the bytes of the model's one input, and every output comes back as binary.
 * The input's shape is deduced as Triton deduces it: 1 on the batch axis of a model that batches
 * (a batch of one), the one variable-size dim of the others from the byte count; a BYTES input must
 * hold exactly one element, the whole body. The request this stands for (the body's bytes then go
 * through `prepare` as any binary input's), or why the model cannot take one.
 */
export const rawBinaryRequest = (
  metadata: ModelMetadata.ModelMetadata,
  bytes: Uint8Array
): { readonly body: TensorCodec.InferRequest; readonly binary: Uint8Array } | InferenceError.InvalidInput => {
  const refuse = (detail: string) =>
    new InferenceError.InvalidInput({ modelId: metadata.name, detail: `a raw binary request (Inference-Header-Content-Length 0) ${detail}` })
  const inputs = Sequence.clientInputs(metadata)
  if (inputs.length !== 1) {
    return refuse(`needs a model of one input; ${metadata.name} takes ${inputs.length} (${inputs.map((s) => s.name).join(", ")})`)
  }
  const spec = inputs[0]!
  const batching = metadata.batching?.enabled === true ? metadata.batching : undefined
  const batchAxis = batching === undefined ? null : Batch.axisOf(batching.inputAxes, spec.name)
  const shape = spec.dims.slice()
  let variable = -1
  let fixed = 1
  for (let i = 0; i < shape.length; i++) {
    if (i === batchAxis) shape[i] = 1
    else if (shape[i]! >= 0) fixed *= shape[i]!
    else if (variable === -1) variable = i
    else return refuse(`cannot deduce the shape of input ${JSON.stringify(spec.name)} ${Tensor.dimsText(spec.dims)}: more than one variable-size dim`)
  }
  let binary = bytes
  const width = Tensor.bytesPerElement(spec.dtype)
  if (width === undefined) {
    if (variable !== -1 || fixed !== 1) {
      return refuse(`of BYTES needs an input of one element; ${JSON.stringify(spec.name)} is ${Tensor.dimsText(spec.dims)}`)
    }
    // The body is the one element: its 4-byte length goes before it, as binary BYTES are laid out.
    binary = new Uint8Array(4 + bytes.length)
    new DataView(binary.buffer).setUint32(0, bytes.length, true)
    binary.set(bytes, 4)
  } else if (variable !== -1) {
    shape[variable] = fixed === 0 ? 0 : Math.floor(bytes.length / (fixed * width))
  }
  const input = { name: spec.name, shape, datatype: TensorCodec.datatypeOf[spec.dtype], parameters: { binary_data_size: binary.length } }
  return { body: { inputs: [input], parameters: { binary_data_output: true } }, binary }
}

/** A decoded inference request, ready for the engine. */
export interface Prepared {
  readonly inputs: Tensor.TensorMap
  /** The outputs to return, in order. */
  readonly outputs: ReadonlyArray<string>
  /** The outputs to return as binary tensor data (HTTP only). */
  readonly binaryOutputs: ReadonlySet<string>
  /** The outputs to return as classifications, with their counts (`classificationsOf`). */
  readonly classifications: ReadonlyMap<string, number>
  /** Undefined: the model's default. */
  readonly priority: Priority.Priority | undefined
  /** Undefined: the engine's default deadline. */
  readonly timeout: Duration.Duration | undefined
  /** The request's sequence (`parameters.sequence_id`, `sequence_start`, `sequence_end`); undefined: none. */
  readonly sequence: Sequence.Flags | undefined
}

/**
 * Decodes a request envelope (already schema-checked) against the model: inputs
 * (`decodeInputs`), batch size (`checkBatchSize`), outputs (`selectOutputs`), binary outputs,
 * classifications, priority and timeout. The first problem found is returned as InvalidInput.
 */
export const prepare = (
  metadata: ModelMetadata.ModelMetadata,
  body: TensorCodec.InferRequest,
  binary?: Uint8Array
): Prepared | InferenceError.InvalidInput => {
  const inputs = TensorCodec.decodeInputs(metadata, body.inputs, binary)
  if (inputs instanceof InferenceError.InvalidInput) return inputs
  const tooMany = checkBatchSize(metadata, inputs)
  if (tooMany !== undefined) return tooMany
  const outputs = selectOutputs(metadata, body.outputs)
  if (outputs instanceof InferenceError.InvalidInput) return outputs
  const binaryOutputs = binaryOutputsOf(metadata, body, outputs)
  if (binaryOutputs instanceof InferenceError.InvalidInput) return binaryOutputs
  const classifications = classificationsOf(metadata, body)
  if (classifications instanceof InferenceError.InvalidInput) return classifications
  const sequence = TensorCodec.sequenceOf(body.parameters)
  if (sequence !== undefined && "problem" in sequence) return new InferenceError.InvalidInput({ modelId: metadata.name, detail: sequence.problem })
  return {
    inputs,
    outputs,
    binaryOutputs,
    classifications,
    priority: TensorCodec.priorityOf(body.parameters?.priority),
    timeout: TensorCodec.timeoutOf(body.parameters?.timeout),
    sequence
  }
}
