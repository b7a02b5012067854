/**
 * The Open Inference Protocol's tensors as data, shared by every edge that speaks it (the HTTP
 * routes, the gRPC service, the batch CLI's records): the datatype mapping, the JSON form of a
 * request (its inputs, outputs and Triton's parameters), and the codec between OIP tensors (JSON
 * and binary) and the engine's `Tensor`s.
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
 * allocated. `data` is row-major, either flat or nested exactly as the shape. An input with
 * `parameters.binary_data_size` (Triton's binary tensor data) takes its bytes, little-endian and
 * row-major, exactly as many as its shape needs, from the binary part of the body. An INT64 or
 * UINT64 element given as a JSON number beyond ±(2^53 - 1) is refused (JSON.parse has rounded
 * it); such values go as decimal strings.
 *
 * Encoding (`encodeData`, `encodeBinaryData`) writes float32/float16 as their shortest
 * round-tripping decimal, INT64/UINT64 as exact integers (beyond 2^53 many JSON parsers,
 * JavaScript's included, round them; the wire text is exact), BOOL as true/false, and a
 * non-finite float (NaN, ±Infinity, which JSON cannot carry) as null.
 *
 * Triton's request parameters: `priority` 1…4 maps to Critical…Low (0, absent or above 4: the
 * model's default, as Triton), `timeout` in microseconds becomes the request's deadline (0 or
 * absent: the engine's default).
 *
 * @module TensorCodec
 */
import { Duration, Schema } from "effect"
import * as InferenceError from "./InferenceError.ts"
import { fromHalfBits, toHalfBits } from "./internal/Float16.ts"
import type * as ModelMetadata from "./ModelMetadata.ts"
import { checkDims } from "./ModelMetadata.ts"
import * as Priority from "./Priority.ts"
import * as Tensor from "./Tensor.ts"
import type * as Sequence from "./Sequence.ts"

export { fromHalfBits, toHalfBits }

// ---------------------------------------------------------------------------
// Datatypes
// ---------------------------------------------------------------------------

/** Triton's binary tensor data extension: the header that gives the length of the JSON part of a body, in bytes. */
export const inferenceHeaderContentLength = "inference-header-content-length"

/**
 * The header in which this project's server names a refusal's reason, as JSON (`Routes.reasonFields`),
 * so that a client (`OipClient`) rebuilds the typed error the engine gave. Not Triton's: other servers send none.
 */
export const inferenceErrorHeader = "inference-error"

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
// Requests
// ---------------------------------------------------------------------------

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
  /** Microseconds, an integer as Triton's uint64; 0 means the default deadline. */
  timeout: Schema.optionalKey(Schema.Number.check(
    Schema.makeFilter((n: number) => Number.isInteger(n), { expected: "a non-negative integer (microseconds)" }),
    Schema.isGreaterThanOrEqualTo(0)
  )),
  /** Binary tensor data extension: every output as binary unless its own `binary_data` says otherwise. */
  binary_data_output: Schema.optionalKey(Schema.Boolean),
  /**
   * The sequence of a stateful model the request belongs to (Triton's correlation id, see
   * `Sequence`): a non-negative integer below 2^53 or text of at most 256 characters; 0 and ""
   * mean none.
   */
  sequence_id: Schema.optionalKey(Schema.Union([
    Schema.Number.check(Schema.makeFilter((n: number) =>
      (Number.isSafeInteger(n) && n >= 0) || `sequence_id ${n}: an integer from 0 to 2^53 - 1 (a larger id goes as text)`
    )),
    Schema.String.check(Schema.isMaxLength(256))
  ])),
  /** The first request of its sequence: the sequence's state starts over. */
  sequence_start: Schema.optionalKey(Schema.Boolean),
  /** The last request of its sequence: the sequence ends once it succeeds. */
  sequence_end: Schema.optionalKey(Schema.Boolean)
})

/**
 * A request's sequence flags from its parameters (`InferParameters`): undefined without a
 * sequence id (absent, 0 or ""); a problem when `sequence_start` or `sequence_end` is set without one.
 */
export const sequenceOf = (parameters: InferParameters | undefined): Sequence.Flags | undefined | { readonly problem: string } => {
  const id = parameters?.sequence_id
  if (id === undefined || id === 0 || id === "") {
    return parameters?.sequence_start === true || parameters?.sequence_end === true
      ? { problem: "parameters.sequence_start and sequence_end need a sequence_id (a positive integer or text)" }
      : undefined
  }
  return { id, start: parameters?.sequence_start === true, end: parameters?.sequence_end === true }
}

export type InferParameters = typeof InferParameters.Type

/** The body of `POST /v2/models/{name}[/versions/{version}]/infer`. */
export const InferRequest = Schema.Struct({
  id: Schema.optionalKey(Schema.String),
  parameters: Schema.optionalKey(InferParameters),
  inputs: Schema.Array(RequestInput),
  outputs: Schema.optionalKey(Schema.Array(RequestOutput))
})

export type InferRequest = typeof InferRequest.Type

const decodeInferRequestResult = Schema.decodeUnknownResult(InferRequest)

const schemaMessage = (error: Schema.SchemaError): string => error.message.replace(/\n\s*/g, " ")

/** Decodes a parsed JSON body; the error string names the offending path. */
export const decodeInferRequest = (json: unknown): InferRequest | { readonly error: string } => {
  const result = decodeInferRequestResult(json)
  return result._tag === "Success" ? result.success : { error: `invalid inference request: ${schemaMessage(result.failure)}` }
}

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
// Decoding tensors
// ---------------------------------------------------------------------------


/** A short description of a JSON value, for error messages. */
export const describe = (value: unknown): string => {
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

/** The characters of the longest 64-bit integer in decimal ("-9223372036854775808"; UINT64's max has 20). */
const maxInt64Text = 20

/**
 * Writes one JSON element into `out` at `index`; returns an error detail, or undefined.
 * Accepted: numbers for FP*, integers in range for INT and UINT (INT64/UINT64 as numbers only
 * within ±(2^53 - 1), which JSON.parse reads exactly, and as decimal strings, exact over their
 * whole range: a larger number is refused, never rounded), true/false or 0/1 for BOOL, strings
 * for BYTES.
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
        if (typeof value === "number" && Number.isSafeInteger(value)) big = BigInt(value)
        else if (typeof value === "number" && Number.isInteger(value)) {
          // JSON.parse has already rounded it: taking it would silently change the data.
          return `element ${index} is a JSON number beyond ±(2^53 - 1) (read as ${value}), which a number cannot hold exactly: send ${datatype} values of that size as decimal strings ("9007199254740993")`
        } else if (typeof value === "string" && integerText.test(value)) {
          // BigInt reads a long string in quadratic time: a 15 MB one held the process 15 s.
          if (value.length > maxInt64Text) return `element ${index} is a decimal string of ${value.length} characters, more than any ${datatype} value needs (${maxInt64Text} at most, without leading zeros)`
          big = BigInt(value)
        } else return wrong(value, index)
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
        const problem = stringElementProblem(value)
        if (problem !== undefined) return `element ${index} ${problem}`
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
      const text = utf8Element(bytes.subarray(offset, offset + length))
      if (text === undefined) return invalid(`BYTES element ${i} is not valid UTF-8 (a model's string tensor holds text; send binary payloads as UINT8)`)
      const problem = stringElementProblem(text)
      if (problem !== undefined) return invalid(`BYTES element ${i} ${problem}`)
      strings[i] = text
      offset += length
    }
    if (offset !== bytes.length) return invalid(`binary data has ${bytes.length - offset} bytes after the ${count} elements of shape ${Tensor.dimsText(dims)}`)
    return Tensor.make(dtype, strings as Tensor.DataTypeToArray[typeof dtype], dims.slice())
  }
  if (bytes.length !== count * width) {
    // Worded for both front ends: HTTP's binary_data_size and gRPC's raw_input_contents both land here.
    return invalid(`the binary data is ${bytes.length} bytes, shape ${Tensor.dimsText(dims)} of ${datatypeOf[dtype]} needs ${count * width}`)
  }
  // In place where the bytes are aligned for the dtype (the body's memory becomes the tensor's), else copied.
  let out = Tensor.viewOf(dtype as Exclude<Tensor.DataType, "string">, bytes, count) as Exclude<Tensor.TensorData, ReadonlyArray<string>> | undefined
  if (out === undefined) {
    out = Tensor.allocate(dtype, count) as Exclude<Tensor.TensorData, ReadonlyArray<string>>
    new Uint8Array(out.buffer, out.byteOffset, out.byteLength).set(bytes)
  }
  if (dtype === "bool") {
    const flags = out as Uint8Array
    for (let i = 0; i < count; i++) if (flags[i]! > 1) return invalid(`BOOL element ${i} is the byte ${flags[i]}, not 0 or 1`)
  }
  return Tensor.make(dtype, out, dims.slice())
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true })

/** `Tensor.stringElementProblem`: an element refused as bytes that are not UTF-8 are (`utf8Element`). */
export const stringElementProblem = Tensor.stringElementProblem

/**
 * One BYTES element as the string an ONNX string tensor holds, or undefined where it is not UTF-8:
 * replacing such bytes with U+FFFD would hand the model (and an identity model's answer) other
 * bytes than were sent. A leading byte-order mark is the element's own character, kept.
 */
export const utf8Element = (bytes: Uint8Array): string | undefined => {
  try {
    return utf8.decode(bytes)
  } catch {
    return undefined
  }
}

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
  // Float values read straight from a gRPC message's packed contents (`GrpcCodec`): flat, and this
  // request's own, so they become the tensor as they are.
  if ((dtype === "float32" && data instanceof Float32Array) || (dtype === "float64" && data instanceof Float64Array)) {
    if (data.length !== count) return invalid(`data has ${data.length} elements, shape ${Tensor.dimsText(dims)} needs ${count}`)
    return Tensor.make(dtype, data, dims.slice())
  }
  if (!Array.isArray(data)) return invalid(`data must be an array, got ${describe(data)}`)
  const flat = data.length === count && (count === 0 || !Array.isArray(data[0]))
  if (!flat && !(dims.length > 1 && nestedMatches(data, dims, 0))) {
    return invalid(
      dims.length > 1
        ? `data does not match shape ${Tensor.dimsText(dims)}: expected a flat array of ${count} elements, or arrays nested as the shape`
        : data.length === count
        ? `data nests arrays deeper than shape ${Tensor.dimsText(dims)}: expected ${count === 1 ? "1 element" : `${count} elements`} in a flat array`
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
 * Why the `parameters` of an input or output ask for a Triton extension this server does not
 * implement, or undefined: shared memory (`shared_memory_region`, `_byte_size`, `_offset`).
 * Refused rather than ignored, since ignoring them answers something other than what was asked.
 * (An output's `classification` is served: `Oip.classificationsOf`.)
 */
export const unsupportedParameter = (parameters: Readonly<Record<string, unknown>> | undefined, output: boolean): string | undefined => {
  if (parameters === undefined) return undefined
  for (const key of ["shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"]) {
    if (parameters[key] !== undefined) {
      return `parameters.${key}: the shared memory extension is not supported; send the data in the request${output ? " (the output comes back in the response)" : " (data, or binary_data_size)"}`
    }
  }
  return undefined
}

/**
 * Decodes every input of a request against the model's metadata: no unknown or repeated input,
 * no parameter of an unsupported extension (`unsupportedParameter`), each tensor decoded by `decodeTensor`. Missing inputs and fixed dims are left to the engine's
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
    const unsupported = unsupportedParameter(input.parameters, false)
    if (unsupported !== undefined) return refuse(unsupported, input.name)
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

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

/** Exact powers of ten, 10^0 to 10^22 (a double holds each exactly). */
const powersOfTen = Array.from({ length: 23 }, (_, i) => Number(`1e${i}`))

/** `|v|` correctly rounded to `p` significant digits (`v.toPrecision(p)`'s value), `exp` the decimal exponent of `|v|`. */
const roundedTo = (v: number, a: number, p: number, exp: number): number => {
  const k = p - 1 - exp
  if (k < -22 || k > 22) return Math.abs(Number(v.toPrecision(p)))
  // m / 10^k with m < 10^9 and 10^k both exact rounds once, as parsing the decimal does. The
  // product rounded once too: within a millionth of a tie it may have crossed it, and
  // toPrecision decides.
  const scaled = k >= 0 ? a * powersOfTen[k]! : a / powersOfTen[-k]!
  if (Math.abs(scaled - Math.floor(scaled) - 0.5) < 1e-6) return Math.abs(Number(v.toPrecision(p)))
  const m = Math.round(scaled)
  return k >= 0 ? m / powersOfTen[k]! : m * powersOfTen[-k]!
}

/** `|v|`'s decimal exponent (⌊log10 |v|⌋), `a` = |v| finite and not 0. */
const decimalExponent = (a: number): number => {
  let exp = Math.floor(Math.log10(a))
  // log10 can be one off next to a power of ten
  if (exp > -23 && exp < 22) {
    if (exp >= 0 ? powersOfTen[exp]! > a : 1 / powersOfTen[-exp]! > a) exp--
    else if (exp + 1 >= 0 ? powersOfTen[exp + 1]! <= a : 1 / powersOfTen[-exp - 1]! <= a) exp++
  }
  return exp
}

/**
 * The shortest decimal (from 6 significant digits) that reads back as the float32 `v`: the text
 * of `Number(v.toPrecision(p))` for the least p in 6..9 that round-trips. The digits are found with
 * exact arithmetic on doubles where the powers of ten are exact (toPrecision took 1 µs a value,
 * this 0.16; checked equal on 42.5 million float32 bit patterns across the range, and 3 million
 * random ones).
 */
const float32Text = (v: number): string => {
  if (!Number.isFinite(v)) return "null"
  if (v === 0) return zeroText(v)
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v)
  const a = Math.abs(v)
  const exp = decimalExponent(a)
  for (let p = 6; p < 9; p++) {
    const rounded = roundedTo(v, a, p, exp)
    if (Math.fround(rounded) === a) return String(v < 0 ? -rounded : rounded)
  }
  const rounded = roundedTo(v, a, 9, exp)
  return String(v < 0 ? -rounded : rounded)
}

/** Writes the `count` decimal digits of the integer `m` (0 ≤ m < 2^53) at `at`; returns where they end. */
const writeDigits = (out: Uint8Array, at: number, m: number, count: number): number => {
  for (let pos = at + count - 1; pos >= at; pos--) {
    const q = Math.floor(m / 10)
    out[pos] = 48 + m - q * 10
    m = q
  }
  return at + count
}

/** As `writeDigits`, for 0 ≤ m < 2^31 (integer arithmetic). */
const writeSmallDigits = (out: Uint8Array, at: number, m: number, count: number): number => {
  for (let pos = at + count - 1; pos >= at; pos--) {
    const q = (m / 10) | 0
    out[pos] = 48 + m - q * 10
    m = q
  }
  return at + count
}

/** How many decimal digits the integer `m` (1 ≤ m < 10^22) has. */
const digitCount = (m: number): number => {
  let n = 1
  while (n < 22 && m >= powersOfTen[n]!) n++
  return n
}

const writeAscii = (out: Uint8Array, at: number, text: string): number => {
  for (let i = 0; i < text.length; i++) out[at++] = text.charCodeAt(i)
  return at
}

/**
 * Writes the number m × 10^-k, m a positive integer of `digits` digits below 10^10 (whose digits
 * are then the shortest decimal of the double it denotes), as `String` prints that double:
 * ECMAScript's Number::toString, plain from 10^-7 to below 10^21, else with an exponent.
 */
const writeDecimal = (out: Uint8Array, at: number, negative: boolean, m: number, digits: number, k: number): number => {
  for (let q = (m / 10) | 0; m === q * 10; q = (m / 10) | 0) {
    m = q
    digits--
    k--
  }
  if (negative) out[at++] = 45 // -
  // the value is 0.<digits> × 10^n
  const n = digits - k
  if (0 < n && n < digits) {
    const scale = powersOfTen[digits - n]!
    const whole = (m / scale) | 0
    at = writeSmallDigits(out, at, whole, n)
    out[at++] = 46 // .
    return writeSmallDigits(out, at, m - whole * scale, digits - n)
  }
  if (-6 < n && n <= 0) {
    out[at++] = 48 // 0
    out[at++] = 46 // .
    for (let i = n; i < 0; i++) out[at++] = 48
    return writeSmallDigits(out, at, m, digits)
  }
  if (digits <= n && n <= 21) {
    at = writeSmallDigits(out, at, m, digits)
    for (let i = digits; i < n; i++) out[at++] = 48
    return at
  }
  const scale = powersOfTen[digits - 1]!
  const lead = (m / scale) | 0
  out[at++] = 48 + lead
  if (digits > 1) {
    out[at++] = 46 // .
    at = writeSmallDigits(out, at, m - lead * scale, digits - 1)
  }
  out[at++] = 101 // e
  const e = n - 1
  out[at++] = e < 0 ? 45 : 43 // - or +
  return writeSmallDigits(out, at, Math.abs(e), Math.abs(e) >= 10 ? 2 : 1)
}

/** Writes `float32Text(v)` as ASCII at `at`, at most `float32TextMaxBytes` bytes; returns where it ends. */
const writeFloat32 = (out: Uint8Array, at: number, v: number): number => {
  if (v === 0 || !Number.isFinite(v)) return writeAscii(out, at, v === 0 ? zeroText(v) : "null")
  const a = Math.abs(v)
  if (Number.isInteger(v) && a < 1e15) {
    if (v < 0) out[at++] = 45
    return writeDigits(out, at, a, digitCount(a))
  }
  const exp = decimalExponent(a)
  for (let p = 6; p <= 9; p++) {
    const k = p - 1 - exp
    if (k < -22 || k > 22) break
    const scaled = k >= 0 ? a * powersOfTen[k]! : a / powersOfTen[-k]!
    // next to a tie, toPrecision decides (`roundedTo`)
    if (Math.abs(scaled - Math.floor(scaled) - 0.5) < 1e-6) break
    const m = Math.round(scaled)
    if (p === 9 || Math.fround(k >= 0 ? m / powersOfTen[k]! : m * powersOfTen[-k]!) === a) {
      // rounding up may have made it 10^p
      return writeDecimal(out, at, v < 0, m, m === powersOfTen[p] ? p + 1 : p, k)
    }
  }
  return writeAscii(out, at, float32Text(v))
}

/** The most bytes `writeFloat32` writes: a sign and 21 digits ("-12345678900000000000000" is printed with an exponent). */
const float32TextMaxBytes = 22

/**
 * Below this many values a float32 array's text is joined as strings; from it, written as bytes
 * into one buffer and read as one string (faster for many values; slower for a few, where
 * decoding the buffer costs more than it saves).
 */
const float32BytesFrom = 256

const ascii = new TextDecoder()

/** `[v0,v1,…]` of a float32 array, each as `float32Text`. */
const float32ArrayText = (data: Float32Array): string => {
  if (data.length < float32BytesFrom) return `[${joinMapped(data, float32Text)}]`
  const out = new Uint8Array(2 + data.length * (float32TextMaxBytes + 1))
  let at = 0
  out[at++] = 91 // [
  for (let i = 0; i < data.length; i++) {
    if (i > 0) out[at++] = 44 // ,
    at = writeFloat32(out, at, data[i]!)
  }
  out[at++] = 93 // ]
  return ascii.decode(out.subarray(0, at))
}

/** A zero with its sign: `String(-0)` is "0", which reads back as +0 (JSON's grammar has `-0`). */
const zeroText = (v: number): string => (Object.is(v, -0) ? "-0" : "0")

const float64Text = (v: number): string => (Number.isFinite(v) ? (v === 0 ? zeroText(v) : String(v)) : "null")

const float16Text = (bits: number): string => {
  const v = fromHalfBits(bits)
  if (!Number.isFinite(v)) return "null"
  if (v === 0) return zeroText(v)
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
      return float32ArrayText(data as Float32Array)
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
