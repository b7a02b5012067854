/**
 * The Open Inference Protocol v2 (REST) as data: request schemas, the datatype mapping, and the
 * JSON tensor codec between OIP tensors and the engine's `Tensor`s.
 *
 * Datatypes: BOOL ↔ bool (Uint8Array of 0/1), UINT8/16/32/64 ↔ uint8…uint64, INT8/16/32/64 ↔
 * int8…int64 (64-bit as BigInt64Array / BigUint64Array), FP16 ↔ float16 (raw half bits in a
 * Uint16Array), FP32 ↔ float32, FP64 ↔ float64, BYTES ↔ string. A tensor is accepted only in the
 * datatype the model declares for it.
 *
 * Decoding (`decodeTensor`) is cheap before it is costly: the shape is checked first (integer,
 * non-negative dims whose product is within `ModelMetadata.maxElementsPerTensor`, and the
 * model's rank, which also bounds how deep nested `data` is walked), then the number of JSON
 * elements is compared with the product of the shape, and only then is the typed array
 * allocated. `data` is row-major, either flat or nested exactly as the shape.
 *
 * Encoding (`encodeResponse`) writes the response JSON by hand: float32/float16 as their
 * shortest round-tripping decimal, INT64/UINT64 as exact integers (beyond 2^53 many JSON parsers,
 * JavaScript's included, round them; the wire text is exact), BOOL as true/false, and a
 * non-finite float (NaN, ±Infinity, which JSON cannot carry) as null.
 *
 * Triton's binary tensor data extension: an input with `parameters.binary_data_size` takes its
 * bytes from the binary part of the body (after the JSON, whose length the
 * Inference-Header-Content-Length header gives), little-endian and row-major, exactly as many
 * as its shape needs; an output asked with `binary_data` is returned the same way.
 *
 * Triton's request parameters: `priority` 1…4 maps to Critical…Low (0, absent or above 4: the
 * model's default, as Triton), `timeout` in microseconds becomes the request's deadline (0 or
 * absent: the engine's default). A model that batches refuses more rows than its
 * `max_batch_size` (`checkBatchSize`), as Triton.
 *
 * `prepare` is the one decoding of an inference request that both protocols share: the HTTP
 * routes feed it the JSON body (and binary part), the gRPC service a `ModelInferRequest`
 * rewritten into the same shape, so that both answer the same messages.
 *
 * @module Oip
 */
import { Duration, Schema } from "effect"
import * as InferenceError from "../InferenceError.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import { checkDims } from "../ModelMetadata.ts"
import * as Priority from "../Priority.ts"
import * as Tensor from "../Tensor.ts"

// ---------------------------------------------------------------------------
// Datatypes
// ---------------------------------------------------------------------------

/** Triton's binary tensor data extension: the header that gives the length of the JSON part of a body, in bytes. */
export const inferenceHeaderContentLength = "inference-header-content-length"

/** The OIP datatype of each engine dtype. */
export const datatypeOf: { readonly [K in Tensor.DataType]: string } = {
  float32: "FP32",
  float64: "FP64",
  float16: "FP16",
  int8: "INT8",
  int16: "INT16",
  int32: "INT32",
  int64: "INT64",
  uint8: "UINT8",
  uint16: "UINT16",
  uint32: "UINT32",
  uint64: "UINT64",
  bool: "BOOL",
  string: "BYTES"
}

const dtypeByDatatype: ReadonlyMap<string, Tensor.DataType> = new Map(
  Tensor.dataTypes.map((dtype) => [datatypeOf[dtype], dtype] as const)
)

/** Every datatype this server speaks. */
export const datatypes: ReadonlyArray<string> = Tensor.dataTypes.map((dtype) => datatypeOf[dtype])

/** The engine dtype of an OIP datatype, or undefined for one it does not support (BF16, say). */
export const dtypeOf = (datatype: string): Tensor.DataType | undefined => dtypeByDatatype.get(datatype)

// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

/** Free-form `parameters` object. */
export const Parameters = Schema.Record(Schema.String, Schema.Unknown)

/**
 * One input tensor. `data` is walked by `decodeTensor`, which knows the shape and the model's
 * datatype and so can refuse an oversized tensor before allocating it.
 */
export const RequestInput = Schema.Struct({
  name: Schema.String,
  shape: Schema.Array(Schema.Number),
  datatype: Schema.String,
  parameters: Schema.optionalKey(Parameters),
  /** Absent when the input's bytes come in the binary part of the body (`parameters.binary_data_size`). */
  data: Schema.optionalKey(Schema.Unknown)
})

export type RequestInput = typeof RequestInput.Type

export const RequestOutput = Schema.Struct({
  name: Schema.String,
  parameters: Schema.optionalKey(Parameters)
})

/** Triton's request parameters; other keys are accepted and ignored. */
export const InferParameters = Schema.Struct({
  /**
   * 1 = highest. 0, or a level beyond the model's `priority_levels` (any uint64, as Triton's, even
   * past 2^53), means the model's default (as Triton).
   */
  priority: Schema.optionalKey(Schema.Number.check(
    Schema.makeFilter((n: number) => Number.isInteger(n), { expected: "a non-negative integer" }),
    Schema.isGreaterThanOrEqualTo(0)
  )),
  /** Microseconds; 0 means the default deadline. */
  timeout: Schema.optionalKey(Schema.Number.check(Schema.isGreaterThanOrEqualTo(0), Schema.isFinite())),
  /** Binary tensor data extension: every output as binary unless its own `binary_data` says otherwise. */
  binary_data_output: Schema.optionalKey(Schema.Boolean)
})

/** The body of `POST /v2/models/{name}[/versions/{version}]/infer`. */
export const InferRequest = Schema.Struct({
  id: Schema.optionalKey(Schema.String),
  parameters: Schema.optionalKey(InferParameters),
  inputs: Schema.Array(RequestInput),
  outputs: Schema.optionalKey(Schema.Array(RequestOutput))
})

export type InferRequest = typeof InferRequest.Type

/** The body of `POST /v2/repository/index` (Triton's repository extension). */
export const RepositoryIndexRequest = Schema.Struct({
  ready: Schema.optionalKey(Schema.Boolean)
})

const decodeInferRequestResult = Schema.decodeUnknownResult(InferRequest)
const decodeIndexRequestResult = Schema.decodeUnknownResult(RepositoryIndexRequest)

const schemaMessage = (error: Schema.SchemaError): string => error.message.replace(/\n\s*/g, " ")

/** Decodes a parsed JSON body; the error string names the offending path. */
export const decodeInferRequest = (json: unknown): InferRequest | { readonly error: string } => {
  const result = decodeInferRequestResult(json)
  return result._tag === "Success" ? result.success : { error: `invalid inference request: ${schemaMessage(result.failure)}` }
}

export const decodeRepositoryIndexRequest = (json: unknown): typeof RepositoryIndexRequest.Type | { readonly error: string } => {
  const result = decodeIndexRequestResult(json)
  return result._tag === "Success" ? result.success : { error: `invalid repository index request: ${schemaMessage(result.failure)}` }
}

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

/** Triton's platform name for ONNX models. */
export const platformName = "onnxruntime_onnx"

/** The number of priority levels a model has (Triton's `priority_levels`). */
export const priorityLevels = Priority.levels.length

/**
 * Triton priority (1 = highest) → engine priority; 0, absent, or beyond `priorityLevels` →
 * undefined (the model's default), as Triton treats a priority its model does not have.
 */
export const priorityOf = (priority: number | undefined): Priority.Priority | undefined =>
  priority === undefined || priority === 0 || priority > priorityLevels ? undefined : Priority.levels[priority - 1]

/** Triton timeout (µs) → deadline; 0 or absent → undefined (the default). */
export const timeoutOf = (timeoutMicros: number | undefined): Duration.Duration | undefined =>
  timeoutMicros === undefined || timeoutMicros === 0 ? undefined : Duration.millis(timeoutMicros / 1000)

// ---------------------------------------------------------------------------
// Half precision
// ---------------------------------------------------------------------------

const roundHalfEven = (x: number): number => {
  const f = Math.floor(x)
  const d = x - f
  return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1
}

/** The IEEE 754 binary16 bits nearest to `value` (round half to even; overflow to ±Infinity). */
export const toHalfBits = (value: number): number => {
  if (Number.isNaN(value)) return 0x7e00
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0
  const a = Math.abs(value)
  if (a === Infinity) return sign | 0x7c00
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24) // subnormal (1024 rounds up into the first normal)
  let e = Math.floor(Math.log2(a))
  if (2 ** e > a) e--
  else if (2 ** (e + 1) <= a) e++
  let mantissa = roundHalfEven((a / 2 ** e - 1) * 1024)
  if (mantissa === 1024) {
    mantissa = 0
    e++
  }
  if (e > 15) return sign | 0x7c00
  return sign | ((e + 15) << 10) | mantissa
}

/** The number that binary16 `bits` hold. */
export const fromHalfBits = (bits: number): number => {
  const sign = bits & 0x8000 ? -1 : 1
  const e = (bits >> 10) & 0x1f
  const m = bits & 0x3ff
  if (e === 0) return sign * m * 2 ** -24
  if (e === 31) return m === 0 ? sign * Infinity : NaN
  return sign * (1 + m / 1024) * 2 ** (e - 15)
}

// ---------------------------------------------------------------------------
// Decoding tensors
// ---------------------------------------------------------------------------


const describe = (value: unknown): string => {
  if (typeof value === "string") return value.length > 20 ? `a string` : JSON.stringify(value)
  if (Array.isArray(value)) return "an array"
  if (value === null) return "null"
  if (typeof value === "object") return "an object"
  return String(value)
}

const integerRanges = {
  int8: [-(2 ** 7), 2 ** 7 - 1],
  int16: [-(2 ** 15), 2 ** 15 - 1],
  int32: [-(2 ** 31), 2 ** 31 - 1],
  uint8: [0, 2 ** 8 - 1],
  uint16: [0, 2 ** 16 - 1],
  uint32: [0, 2 ** 32 - 1]
} as const

const bigRanges = {
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint64: [0n, 2n ** 64n - 1n]
} as const

const integerText = /^-?[0-9]+$/

/**
 * Writes one JSON element into `out` at `index`; returns an error detail, or undefined.
 * Accepted: numbers for FP*, integers in range for INT and UINT (INT64/UINT64 also as decimal
 * strings, exact beyond 2^53), true/false or 0/1 for BOOL, strings for BYTES.
 */
type Writer = (value: unknown, index: number) => string | undefined

const makeWriter = (dtype: Tensor.DataType, out: Tensor.TensorData): Writer => {
  const datatype = datatypeOf[dtype]
  const wrong = (value: unknown, index: number) => `element ${index} is ${describe(value)}, not ${datatype}`
  switch (dtype) {
    case "float32":
    case "float64": {
      const array = out as Float32Array | Float64Array
      return (value, index) => {
        if (typeof value !== "number") return wrong(value, index)
        array[index] = value
        return undefined
      }
    }
    case "float16": {
      const array = out as Uint16Array
      return (value, index) => {
        if (typeof value !== "number") return wrong(value, index)
        array[index] = toHalfBits(value)
        return undefined
      }
    }
    case "int8":
    case "int16":
    case "int32":
    case "uint8":
    case "uint16":
    case "uint32": {
      const array = out as Int32Array
      const [min, max] = integerRanges[dtype]
      return (value, index) => {
        if (typeof value !== "number" || !Number.isInteger(value)) return wrong(value, index)
        if (value < min || value > max) return `element ${index} is ${value}, out of the ${datatype} range [${min}, ${max}]`
        array[index] = value
        return undefined
      }
    }
    case "int64":
    case "uint64": {
      const array = out as BigInt64Array | BigUint64Array
      const [min, max] = bigRanges[dtype]
      return (value, index) => {
        let big: bigint
        if (typeof value === "number" && Number.isInteger(value)) big = BigInt(value)
        else if (typeof value === "string" && integerText.test(value)) big = BigInt(value)
        else return wrong(value, index)
        if (big < min || big > max) return `element ${index} is ${big}, out of the ${datatype} range [${min}, ${max}]`
        array[index] = big
        return undefined
      }
    }
    case "bool": {
      const array = out as Uint8Array
      return (value, index) => {
        if (value === true || value === 1) array[index] = 1
        else if (value === false || value === 0) array[index] = 0
        else return wrong(value, index)
        return undefined
      }
    }
    case "string": {
      const array = out as Array<string>
      return (value, index) => {
        if (typeof value !== "string") return wrong(value, index)
        array[index] = value
        return undefined
      }
    }
  }
}

/** True when `data` is nested exactly as `dims` (every level an array of the dim's length). */
const nestedMatches = (data: unknown, dims: ReadonlyArray<number>, axis: number): boolean => {
  if (axis === dims.length) return !Array.isArray(data)
  if (!Array.isArray(data) || data.length !== dims[axis]) return false
  for (let i = 0; i < data.length; i++) if (!nestedMatches(data[i], dims, axis + 1)) return false
  return true
}

/** Writes nested `data` (already checked by `nestedMatches`) in row-major order. */
const writeNested = (data: ReadonlyArray<unknown>, depth: number, write: Writer, start: number): { next: number; error?: string } => {
  let index = start
  for (let i = 0; i < data.length; i++) {
    const item = data[i]
    if (depth > 1) {
      const r = writeNested(item as ReadonlyArray<unknown>, depth - 1, write, index)
      if (r.error !== undefined) return r
      index = r.next
    } else {
      const error = write(item, index)
      if (error !== undefined) return { next: index, error }
      index++
    }
  }
  return { next: index }
}

/**
 * Binary tensor data (Triton's extension): little-endian, row-major, no padding; BOOL one byte
 * of 0 or 1; BYTES each a 4-byte little-endian length and the UTF-8 bytes. The byte count must
 * be exactly what the shape needs.
 */
const decodeBinaryData = (
  dtype: Tensor.DataType,
  dims: ReadonlyArray<number>,
  count: number,
  bytes: Uint8Array,
  invalid: (detail: string) => InferenceError.InvalidInput
): Tensor.Tensor | InferenceError.InvalidInput => {
  const width = Tensor.bytesPerElement(dtype)
  if (width === undefined) {
    // Each element takes at least its 4-byte length: refuse before allocating `count` slots.
    if (count * 4 > bytes.length) return invalid(`binary data of ${bytes.length} bytes cannot hold ${count} BYTES elements (4 bytes of length each at least)`)
    const strings = new Array<string>(count)
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    let offset = 0
    for (let i = 0; i < count; i++) {
      if (offset + 4 > bytes.length) return invalid(`binary data ends inside element ${i} of ${count}`)
      const length = view.getUint32(offset, true)
      offset += 4
      if (offset + length > bytes.length) return invalid(`binary data ends inside element ${i} of ${count}`)
      strings[i] = utf8.decode(bytes.subarray(offset, offset + length))
      offset += length
    }
    if (offset !== bytes.length) return invalid(`binary data has ${bytes.length - offset} bytes after the ${count} elements of shape ${Tensor.dimsText(dims)}`)
    return Tensor.make(dtype, strings as Tensor.DataTypeToArray[typeof dtype], dims.slice())
  }
  if (bytes.length !== count * width) {
    return invalid(`parameters.binary_data_size is ${bytes.length} bytes, shape ${Tensor.dimsText(dims)} of ${datatypeOf[dtype]} needs ${count * width}`)
  }
  const out = Tensor.allocate(dtype, count) as Exclude<Tensor.TensorData, ReadonlyArray<string>>
  new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(bytes)
  if (dtype === "bool") {
    const flags = out as Uint8Array
    for (let i = 0; i < count; i++) if (flags[i]! > 1) return invalid(`BOOL element ${i} is the byte ${flags[i]}, not 0 or 1`)
  }
  return Tensor.make(dtype, out, dims.slice())
}

const utf8 = new TextDecoder()

/**
 * Decodes one OIP input into a tensor of the model's declared `spec`, or explains, naming the
 * input, why it cannot. Never allocates more than the product of a shape already checked
 * against the element limit and against the number of JSON elements (or binary bytes) sent.
 */
export const decodeTensor = (
  modelId: string,
  spec: ModelMetadata.TensorSpec,
  input: RequestInput,
  /** The input's bytes from the binary part of the body (binary tensor data extension). */
  binary?: Uint8Array
): Tensor.Tensor | InferenceError.InvalidInput => {
  const invalid = (detail: string) => new InferenceError.InvalidInput({ modelId, input: input.name, detail })
  const dtype = dtypeOf(input.datatype)
  if (dtype === undefined) {
    return invalid(`datatype ${JSON.stringify(input.datatype)} is not supported (supported: ${datatypes.join(", ")})`)
  }
  if (dtype !== spec.dtype) {
    return invalid(`datatype ${input.datatype} given, the model takes ${datatypeOf[spec.dtype]}`)
  }
  const dims = input.shape
  const badDims = checkDims(modelId, input.name, dims)
  if (badDims !== undefined) return badDims
  // The model's rank bounds how deep `data` may nest: walking a deeper nesting would overflow the stack.
  if (dims.length !== spec.dims.length) {
    const given = dims.length > 16 ? `[${dims.slice(0, 16).join(", ")}, …]` : Tensor.dimsText(dims)
    return invalid(`rank ${dims.length} given (dims ${given}), the model takes rank ${spec.dims.length} ${Tensor.dimsText(spec.dims)}`)
  }
  const count = Tensor.elementCount(dims)
  if (binary !== undefined) {
    if (input.data !== undefined) return invalid("has both data and parameters.binary_data_size")
    return decodeBinaryData(dtype, dims, count, binary, invalid)
  }
  const data = input.data
  if (!Array.isArray(data)) return invalid(`data must be an array, got ${describe(data)}`)
  const flat = data.length === count && (count === 0 || !Array.isArray(data[0]))
  if (!flat && !(dims.length > 1 && nestedMatches(data, dims, 0))) {
    return invalid(
      dims.length > 1
        ? `data does not match shape ${Tensor.dimsText(dims)}: expected a flat array of ${count} elements, or arrays nested as the shape`
        : `data has ${data.length} elements, shape ${Tensor.dimsText(dims)} needs ${count}`
    )
  }
  const out = Tensor.allocate(dtype, count)
  const write = makeWriter(dtype, out)
  if (flat) {
    for (let i = 0; i < count; i++) {
      const error = write(data[i], i)
      if (error !== undefined) return invalid(error)
    }
  } else {
    const r = writeNested(data, dims.length, write, 0)
    if (r.error !== undefined) return invalid(r.error)
  }
  return Tensor.make(dtype, out, dims.slice())
}

/**
 * Decodes every input of a request against the model's metadata: no unknown or repeated input,
 * each tensor decoded by `decodeTensor`. Missing inputs and fixed dims are left to the engine's
 * `validateInputs`, which names them.
 */
export const decodeInputs = (
  metadata: ModelMetadata.ModelMetadata,
  inputs: ReadonlyArray<RequestInput>,
  /** The binary part of the body (binary tensor data extension), in the order of the inputs that declare a `binary_data_size`. */
  binary?: Uint8Array
): Tensor.TensorMap | InferenceError.InvalidInput => {
  const out: Record<string, Tensor.Tensor> = {}
  let offset = 0
  const refuse = (detail: string, input?: string) =>
    new InferenceError.InvalidInput(input === undefined ? { modelId: metadata.name, detail } : { modelId: metadata.name, input, detail })
  for (const input of inputs) {
    const spec = metadata.inputs.find((s) => s.name === input.name)
    if (spec === undefined) {
      return new InferenceError.InvalidInput({
        modelId: metadata.name,
        input: input.name,
        detail: `unknown input; the model takes ${metadata.inputs.map((s) => s.name).join(", ")}`
      })
    }
    if (Object.hasOwn(out, input.name)) {
      return new InferenceError.InvalidInput({ modelId: metadata.name, input: input.name, detail: "input given more than once" })
    }
    const size = input.parameters?.["binary_data_size"]
    let bytes: Uint8Array | undefined
    if (size !== undefined) {
      if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
        return refuse(`parameters.binary_data_size must be a non-negative integer, got ${describe(size)}`, input.name)
      }
      const left = binary === undefined ? 0 : binary.length - offset
      if (size > left) {
        return refuse(
          binary === undefined
            ? "parameters.binary_data_size given, but the request has no binary part (send the Inference-Header-Content-Length header)"
            : `parameters.binary_data_size is ${size} bytes, only ${left} are left in the binary part`,
          input.name
        )
      }
      bytes = binary!.subarray(offset, offset + size)
      offset += size
    }
    const tensor = decodeTensor(metadata.name, spec, input, bytes)
    if (tensor instanceof InferenceError.InvalidInput) return tensor
    out[input.name] = tensor
  }
  if (binary !== undefined && offset !== binary.length) {
    return refuse(`the binary part has ${binary.length} bytes, the inputs' binary_data_size add up to ${offset}`)
  }
  return out
}

/**
 * The names of the outputs to return: the requested ones (each must exist), or all the model's
 * outputs when `outputs` is absent.
 */
export const selectOutputs = (
  metadata: ModelMetadata.ModelMetadata,
  requested: ReadonlyArray<{ readonly name: string }> | undefined
): ReadonlyArray<string> | InferenceError.InvalidInput => {
  if (requested === undefined) return metadata.outputs.map((s) => s.name)
  const names: Array<string> = []
  for (const { name } of requested) {
    if (!metadata.outputs.some((s) => s.name === name)) {
      return new InferenceError.InvalidInput({
        modelId: metadata.name,
        detail: `unknown output ${JSON.stringify(name)}; the model returns ${metadata.outputs.map((s) => s.name).join(", ")}`
      })
    }
    if (!names.includes(name)) names.push(name)
  }
  return names
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

const float32Text = (v: number): string => {
  if (!Number.isFinite(v)) return "null"
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v)
  for (let p = 6; p < 9; p++) {
    const s = Number(v.toPrecision(p))
    if (Math.fround(s) === v) return String(s)
  }
  return String(Number(v.toPrecision(9)))
}

const float64Text = (v: number): string => (Number.isFinite(v) ? String(v) : "null")

const float16Text = (bits: number): string => {
  const v = fromHalfBits(bits)
  if (!Number.isFinite(v)) return "null"
  if (Number.isInteger(v)) return String(v)
  for (let p = 3; p < 5; p++) {
    const s = Number(v.toPrecision(p))
    if (toHalfBits(s) === bits) return String(s)
  }
  return String(Number(v.toPrecision(5)))
}

const joinMapped = <A>(data: ArrayLike<A>, f: (a: A) => string): string => {
  let s = ""
  for (let i = 0; i < data.length; i++) {
    if (i > 0) s += ","
    s += f(data[i]!)
  }
  return s
}

/** The JSON text of a tensor's `data` (a flat, row-major array). */
export const encodeData = (tensor: Tensor.Tensor): string => {
  const data = tensor.data
  switch (tensor.dtype) {
    case "float32":
      return `[${joinMapped(data as Float32Array, float32Text)}]`
    case "float64":
      return `[${joinMapped(data as Float64Array, float64Text)}]`
    case "float16":
      return `[${joinMapped(data as Uint16Array, float16Text)}]`
    case "bool":
      return `[${joinMapped(data as Uint8Array, (b) => (b === 0 ? "false" : "true"))}]`
    case "string":
      return JSON.stringify(data)
    default:
      // Integers, 64-bit ones included, print exactly.
      return `[${(data as Int32Array).join(",")}]`
  }
}

/** The JSON text of one response output. */
export const encodeOutput = (name: string, tensor: Tensor.Tensor): string =>
  `{"name":${JSON.stringify(name)},"datatype":"${datatypeOf[tensor.dtype]}","shape":[${tensor.dims.join(",")}],"data":${encodeData(tensor)}}`

const utf8Encoder = new TextEncoder()

/** A tensor's data as binary tensor data (the layout `decodeBinaryData` reads). */
export const encodeBinaryData = (tensor: Tensor.Tensor): Uint8Array => {
  const data = tensor.data
  if (!ArrayBuffer.isView(data)) {
    const encoded = (data as ReadonlyArray<string>).map((text) => utf8Encoder.encode(text))
    const out = new Uint8Array(encoded.reduce((n, e) => n + 4 + e.length, 0))
    const view = new DataView(out.buffer)
    let offset = 0
    for (const e of encoded) {
      view.setUint32(offset, e.length, true)
      out.set(e, offset + 4)
      offset += 4 + e.length
    }
    return out
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
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
    return `${inferenceHeaderContentLength} ${JSON.stringify(header.slice(0, 40))} must be a byte count within the body's ${bytes.length} bytes`
  }
  return { text: utf8.decode(bytes.subarray(0, jsonLength)), binary: bytes.subarray(jsonLength) }
}

/**
 * Encodes an inference response. Outputs named in `binaryOutputs` carry
 * `parameters.binary_data_size` instead of `data`, and their bytes follow the JSON in the
 * order of the outputs (binary tensor data extension).
 */
export const encodeResponse = (response: {
  readonly modelName: string
  readonly modelVersion: string
  readonly id: string | undefined
  readonly outputs: ReadonlyArray<readonly [string, Tensor.Tensor]>
  readonly binaryOutputs?: ReadonlySet<string> | undefined
}): EncodedResponse => {
  const binary: Array<Uint8Array> = []
  let s = `{"model_name":${JSON.stringify(response.modelName)},"model_version":${JSON.stringify(response.modelVersion)}`
  if (response.id !== undefined) s += `,"id":${JSON.stringify(response.id)}`
  s += `,"outputs":[`
  for (let i = 0; i < response.outputs.length; i++) {
    const [name, tensor] = response.outputs[i]!
    if (i > 0) s += ","
    if (response.binaryOutputs?.has(name) === true) {
      const bytes = encodeBinaryData(tensor)
      binary.push(bytes)
      s += `{"name":${JSON.stringify(name)},"datatype":"${datatypeOf[tensor.dtype]}","shape":[${tensor.dims.join(",")}],"parameters":{"binary_data_size":${bytes.length}}}`
    } else {
      s += encodeOutput(name, tensor)
    }
  }
  return { json: s + "]}", binary }
}

/**
 * The outputs to return as binary: those whose `parameters.binary_data` is true, and, when the
 * request's `parameters.binary_data_output` is true, every selected output whose own
 * `binary_data` is not false. A `binary_data` that is not a boolean is refused.
 */
export const binaryOutputsOf = (
  metadata: ModelMetadata.ModelMetadata,
  request: InferRequest,
  selected: ReadonlyArray<string>
): ReadonlySet<string> | InferenceError.InvalidInput => {
  const own = new Map<string, boolean>()
  for (const output of request.outputs ?? []) {
    const flag = output.parameters?.["binary_data"]
    if (flag === undefined) continue
    if (typeof flag !== "boolean") {
      return new InferenceError.InvalidInput({ modelId: metadata.name, detail: `output ${JSON.stringify(output.name)}: parameters.binary_data must be a boolean, got ${describe(flag)}` })
    }
    own.set(output.name, flag)
  }
  const all = request.parameters?.binary_data_output === true
  return new Set(selected.filter((name) => own.get(name) ?? all))
}

/** Metadata of one tensor in OIP form: -1 for a dynamic dim. */
export const tensorMetadata = (spec: ModelMetadata.TensorSpec) => ({
  name: spec.name,
  datatype: datatypeOf[spec.dtype],
  shape: spec.dims.map((d) => (d < 0 ? -1 : d))
})

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

/** The batch axis of `input` when the model batches (config.json `inputAxes`, default 0), or null. */
const batchAxisOf = (batching: NonNullable<ModelMetadata.ModelMetadata["batching"]>, input: string): number | null =>
  Object.hasOwn(batching.inputAxes, input) ? batching.inputAxes[input]! : 0

/**
 * The most rows a request may carry: `max_batch_size` when the model batches (Triton refuses a
 * request with more), else undefined (no limit).
 */
export const checkBatchSize = (metadata: ModelMetadata.ModelMetadata, inputs: Tensor.TensorMap): InferenceError.InvalidInput | undefined => {
  const batching = metadata.batching
  if (batching === undefined || !batching.enabled) return undefined
  for (const [name, tensor] of Object.entries(inputs)) {
    const axis = batchAxisOf(batching, name)
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

/** A decoded inference request, ready for the engine. */
export interface Prepared {
  readonly inputs: Tensor.TensorMap
  /** The outputs to return, in order. */
  readonly outputs: ReadonlyArray<string>
  /** The outputs to return as binary tensor data (HTTP only). */
  readonly binaryOutputs: ReadonlySet<string>
  /** Undefined: the model's default. */
  readonly priority: Priority.Priority | undefined
  /** Undefined: the engine's default deadline. */
  readonly timeout: Duration.Duration | undefined
}

/**
 * Decodes a request envelope (already schema-checked) against the model: inputs
 * (`decodeInputs`), batch size (`checkBatchSize`), outputs (`selectOutputs`), binary outputs,
 * priority and timeout. The first problem found is returned as InvalidInput.
 */
export const prepare = (
  metadata: ModelMetadata.ModelMetadata,
  body: InferRequest,
  binary?: Uint8Array
): Prepared | InferenceError.InvalidInput => {
  const inputs = decodeInputs(metadata, body.inputs, binary)
  if (inputs instanceof InferenceError.InvalidInput) return inputs
  const tooMany = checkBatchSize(metadata, inputs)
  if (tooMany !== undefined) return tooMany
  const outputs = selectOutputs(metadata, body.outputs)
  if (outputs instanceof InferenceError.InvalidInput) return outputs
  const binaryOutputs = binaryOutputsOf(metadata, body, outputs)
  if (binaryOutputs instanceof InferenceError.InvalidInput) return binaryOutputs
  return {
    inputs,
    outputs,
    binaryOutputs,
    priority: priorityOf(body.parameters?.priority),
    timeout: timeoutOf(body.parameters?.timeout)
  }
}
