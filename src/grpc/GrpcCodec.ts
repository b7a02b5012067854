/**
 * The Open Inference Protocol's gRPC messages (Triton's `grpc_service.proto`, package
 * `inference`) as the JavaScript objects `@grpc/proto-loader` gives and takes (`loadOptions`:
 * field names as in the .proto, 64-bit integers as decimal strings, enums by name), and their
 * translation to and from what the HTTP side speaks, so that both protocols share one decoding
 * (`Oip.prepare`) and answer the same messages.
 *
 * A `ModelInferRequest` carries its tensors either in `raw_input_contents` (one entry per input,
 * in order, little-endian bytes exactly as Triton's binary tensor data) or in each input's typed
 * `contents` (`fp32_contents`, `int64_contents`, …). Raw contents become the binary part of an
 * OIP request (`parameters.binary_data_size` per input), typed contents its `data`; from there the
 * checks are those of HTTP. Outputs always go back in `raw_output_contents`, as Triton's server
 * sends them.
 *
 * @module GrpcCodec
 */
import * as ProtoLoader from "@grpc/proto-loader"
import { fileURLToPath } from "node:url"
import * as TensorCodec from "../TensorCodec.ts"
import type * as Tensor from "../Tensor.ts"

/** Where the .proto files ship (copied beside the compiled module by the build). */
export const protoDirectory: string = fileURLToPath(new URL("./proto/", import.meta.url))

/** The options the messages are loaded with: the shapes below depend on them. */
export const loadOptions: ProtoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [protoDirectory]
}

/** Loads `grpc_service.proto` and `health.proto` (synchronously: once, at start). */
export const loadDefinitions = (): ProtoLoader.PackageDefinition =>
  ProtoLoader.loadSync(["grpc_service.proto", "health.proto"], loadOptions)

/**
 * A request message whose bytes did not decode (not protobuf of its type). The server's
 * deserializers return it rather than throw: grpc-js ends a call whose message fails to decode
 * (INTERNAL), which on a stream loses the answers to every request accepted before it.
 */
export class Undecodable {
  readonly details: string
  constructor(details: string) {
    this.details = details
  }
}

/** The most inputs, outputs, raw_input_contents and parameters-map entries (all together) a ModelInferRequest may hold. */
export const maxInferEntries = 4096

/**
 * The most tensor values in `contents` (bool, integer, float, bytes elements) and shape dims a
 * ModelInferRequest may hold: 2^20, about a second of the main thread to decode here at most (4
 * million varints took 2.5–3.5 s, 4 million floats 1.9 s). Larger tensors go in
 * `raw_input_contents`, as Triton's clients send them.
 */
export const maxInferValues = 1 << 20

/** The most dims an input's shape may have. */
export const maxInferRank = 64

/** The end of the varint at `at`, or -1 past `end`. */
const varintEnd = (b: Uint8Array, at: number, end: number): number => {
  while (at < end && b[at]! >= 0x80) at++
  return at < end ? at + 1 : -1
}

/**
 * The varint at `at` read as protobufjs reads keys and lengths (`Reader.uint32`): its low 32
 * bits, at most 10 bytes; and where it ends. Undefined when it does not end by `end` (or in 10 bytes).
 */
const uint32At = (b: Uint8Array, at: number, end: number): readonly [number, number] | undefined => {
  let value = 0
  for (let k = 0; k < 10; k++) {
    const i = at + k
    if (i >= end) return undefined
    const byte = b[i]!
    if (k < 5) value |= (byte & 0x7f) << (7 * k)
    if (byte < 0x80) return [value >>> 0, i + 1]
  }
  return undefined
}

/** Varints in a packed field's payload: the bytes that end one. */
const packedVarints = (b: Uint8Array, from: number, to: number): number => {
  let n = 0
  for (let i = from; i < to; i++) if (b[i]! < 0x80) n++
  return n
}

/** A field's visit (`key`: where its key begins): why the message is refused, or undefined to go on. */
type Visit = (field: number, wire: number, at: number, end: number, key: number) => string | undefined

/**
 * Walks the fields of the message in `b[from, to)`, calling `on(field, wire, at, end)` for each
 * (`at`/`end`: its payload for a length-delimited one, its value otherwise), with the wire types
 * `wires` allows for its known fields (the decoder reads a known field by its type whatever the
 * wire type says, so a wrong one would hide what it holds). Why it cannot be walked, or what `on`
 * refused, else undefined. Groups (wire types 3 and 4) are refused: no field of an inference
 * request is one, and the decoder would skip what they hold unseen.
 */
const eachField = (b: Uint8Array, from: number, to: number, wires: Readonly<Record<number, ReadonlyArray<number>>>, on: Visit): string | undefined => {
  let at = from
  while (at < to) {
    const key = uint32At(b, at, to)
    if (key === undefined) return `a field key at byte ${at} does not end`
    const [tag, next] = key
    // The decoder reads a key or a length of more than 5 bytes as 10 (protobufjs's Reader.uint32
    // skips 5 more bytes unread): this walk would see other fields than it does.
    if (next - at > 5) return `the key at byte ${at} takes ${next - at} bytes, more than a 32-bit varint's 5`
    const field = tag >>> 3
    const wire = tag & 7
    const allowed = wires[field]
    if (allowed !== undefined && !allowed.includes(wire)) return `field ${field} at byte ${at} has wire type ${wire}, not its type's (${allowed.join(" or ")})`
    let start = next
    let end: number
    if (wire === 0) end = varintEnd(b, next, to)
    else if (wire === 1) end = next + 8
    else if (wire === 5) end = next + 4
    else if (wire === 2) {
      const length = uint32At(b, next, to)
      if (length === undefined) return `the length of field ${field} at byte ${at} does not end`
      if (length[1] - next > 5) return `the length of field ${field} at byte ${at} takes ${length[1] - next} bytes, more than a 32-bit varint's 5`
      start = length[1]
      end = start + length[0]
    } else return `field ${field} at byte ${at} is a group (wire type ${wire}), which no field of an inference request is`
    if (end < 0 || end > to) return `field ${field} at byte ${at} runs past the end of its message`
    const refused = on(field, wire, start, end, at)
    if (refused !== undefined) return refused
    at = end
  }
  return undefined
}

/** Wire types of each known field: ModelInferRequest, InferInputTensor, InferRequestedOutputTensor, InferTensorContents. */
const requestWires = { 1: [2], 2: [2], 3: [2], 4: [2], 5: [2], 6: [2], 7: [2] } as const
const inputWires = { 1: [2], 2: [2], 3: [0, 2], 4: [2], 5: [2] } as const
const outputWires = { 1: [2], 2: [2] } as const
const contentsWires = { 1: [0, 2], 2: [0, 2], 3: [0, 2], 4: [0, 2], 5: [0, 2], 6: [5, 2], 7: [1, 2], 8: [2] } as const

/**
 * What stops a ModelInferRequest's bytes before they are decoded, or undefined: `unreadable`
 * when they are not protobuf this walk reads as the decoder would (a group, a known field of
 * the wrong wire type, a field past its message's end), `tooLarge` when they hold more entries
 * or values than any request needs (`maxInferEntries`, `maxInferValues`, `maxInferRank`). One
 * pass over the bytes. Decoding costs by entries and values, not by bytes: a 16 MB message of 8
 * million empty `inputs` (15.6 KB gzip-compressed) took 45 s of the main thread to decode; and
 * bytes this walk could not read were once let through, undecoded and uncounted.
 */
export const inferRequestProblem = (b: Uint8Array): { readonly _tag: "unreadable" | "tooLarge"; readonly why: string } | undefined => {
  let entries = 0
  let values = 0
  let rank = 0
  let inputDims = 0
  const contents: Visit = (field, wire, at, end) => {
    // bool, int32 and uint32 are read as 32-bit varints: 6 to 9 bytes would be read as 10 (above)
    if (wire === 0 && (field === 1 || field === 2 || field === 4) && end - at > 5 && end - at < 10) {
      return `a value of field ${field} at byte ${at} takes ${end - at} bytes, which the decoder reads as 10`
    }
    // bool, int32, int64, uint32, uint64 (packed or not); float and double; bytes, one each.
    if (field >= 1 && field <= 5) values += wire === 2 ? packedVarints(b, at, end) : 1
    else if (field === 6) values += wire === 2 ? Math.ceil((end - at) / 4) : 1
    else if (field === 7) values += wire === 2 ? Math.ceil((end - at) / 8) : 1
    else if (field === 8) values++
    return undefined
  }
  const input: Visit = (field, wire, at, end) => {
    if (field === 3) {
      // The decoder joins repeated occurrences into one shape.
      const dims = wire === 2 ? packedVarints(b, at, end) : 1
      values += dims
      inputDims += dims
    } else if (field === 4) entries++
    else if (field === 5) return eachField(b, at, end, contentsWires, contents)
    return undefined
  }
  const output: Visit = (field) => {
    if (field === 2) entries++
    return undefined
  }
  const unreadable = eachField(b, 0, b.length, requestWires, (field, _wire, at, end) => {
    if (field === 4 || field === 7) entries++
    else if (field === 5) {
      entries++
      inputDims = 0
      const refused = eachField(b, at, end, inputWires, input)
      rank = Math.max(rank, inputDims)
      return refused
    } else if (field === 6) {
      entries++
      return eachField(b, at, end, outputWires, output)
    }
    return undefined
  })
  if (unreadable !== undefined) return { _tag: "unreadable", why: unreadable }
  if (rank > maxInferRank) return { _tag: "tooLarge", why: `an input's shape has ${rank} dims; at most ${maxInferRank}` }
  if (entries > maxInferEntries) {
    return { _tag: "tooLarge", why: `the request holds ${entries} inputs, outputs, raw_input_contents and parameters together; at most ${maxInferEntries}` }
  }
  if (values > maxInferValues) {
    return { _tag: "tooLarge", why: `the request holds ${values} tensor values in contents and shape dims; at most ${maxInferValues} (send large tensors in raw_input_contents)` }
  }
  return undefined
}

/** The methods whose request is a ModelInferRequest. */
const inferMethods = new Set(["ModelInfer", "ModelStreamInfer"])

/** Whether this host stores numbers little-endian, as protobuf does: packed floats are then their values' bytes. */
const littleEndian = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1

/** A packed `fp32_contents` (field 6) or `fp64_contents` (field 7) payload of the `input`-th input: `b[start, end)`, its one-byte key at `key`. */
interface PackedFloats {
  readonly input: number
  readonly field: 6 | 7
  readonly key: number
  readonly start: number
  readonly end: number
}

/** The key of each packed float field, and the key of a field InferTensorContents does not have that hides it (same wire type and length). */
const packedKeys = { 6: [(6 << 3) | 2, (14 << 3) | 2], 7: [(7 << 3) | 2, (15 << 3) | 2] } as const

/**
 * The packed float and double contents of a ModelInferRequest whose bytes `inferRequestProblem`
 * let through, or undefined when they are not all plain (an input whose values also come
 * unpacked, a key of more than one byte, a payload that is not whole values): the decoder then
 * reads them all, as it always did.
 */
const packedFloatsOf = (b: Uint8Array): ReadonlyArray<PackedFloats> | undefined => {
  const found: Array<PackedFloats> = []
  let input = -1
  /** Where the current input's payloads begin in `found`. */
  let inputFrom = 0
  let plain = true
  const contents: Visit = (field, wire, start, end, key) => {
    if (field !== 6 && field !== 7) return undefined
    if (wire !== 2 || b[key] !== packedKeys[field][0] || (end - start) % (field === 6 ? 4 : 8) !== 0) plain = false
    else found.push({ input, field, key, start, end })
    return undefined
  }
  eachField(b, 0, b.length, requestWires, (field, _wire, at, end) => {
    if (field !== 5) return undefined
    input++
    inputFrom = found.length
    return eachField(b, at, end, inputWires, (inner, _w, from, to) => {
      if (inner !== 5) return undefined
      // The decoder keeps an input's last contents message, not a merge of them: the one before is not read.
      found.length = inputFrom
      return eachField(b, from, to, contentsWires, contents)
    })
  })
  return plain ? found : undefined
}

/**
 * Decodes a ModelInferRequest with `decode` (proto-loader's), its packed float and double contents
 * read straight into a Float32Array / Float64Array each (their bytes copied as they are), not one
 * number at a time into an array: a million floats took the main thread 203 ms that way, which
 * every other request waited for. The decoder is made to skip them (their keys turned, for the
 * call, into ones the message does not have, so it steps over the payload), then they are put
 * where it would have put them, in the order it would have read them (an input's packed payloads
 * joined; of an input's `contents` given twice, the last, as the decoder keeps it).
 */
const decodeInferRequest = (bytes: Buffer, decode: (bytes: Buffer) => unknown): unknown => {
  const packed = littleEndian ? packedFloatsOf(bytes) : undefined
  if (packed === undefined || packed.length === 0) return decode(bytes)
  for (const p of packed) bytes[p.key] = packedKeys[p.field][1]
  let decoded: unknown
  try {
    decoded = decode(bytes)
  } finally {
    for (const p of packed) bytes[p.key] = packedKeys[p.field][0]
  }
  const inputs = (decoded as { readonly inputs?: ReadonlyArray<{ contents?: Record<string, unknown> | null }> }).inputs
  // per input and field, every payload in order, as the decoder joins repeated occurrences
  const byTarget = new Map<string, Array<PackedFloats>>()
  for (const p of packed) {
    const target = `${p.input}:${p.field}`
    const runs = byTarget.get(target)
    if (runs === undefined) byTarget.set(target, [p])
    else runs.push(p)
  }
  for (const runs of byTarget.values()) {
    const { input, field } = runs[0]!
    const bytesTotal = runs.reduce((n, r) => n + r.end - r.start, 0)
    const values = field === 6 ? new Float32Array(bytesTotal / 4) : new Float64Array(bytesTotal / 8)
    const into = new Uint8Array(values.buffer)
    let at = 0
    for (const r of runs) {
      into.set(bytes.subarray(r.start, r.end), at)
      at += r.end - r.start
    }
    const tensor = inputs?.[input]
    if (tensor === undefined) continue
    tensor.contents ??= {}
    tensor.contents[field === 6 ? "fp32_contents" : "fp64_contents"] = values
  }
  return decoded
}

/**
 * `definition` (a service's methods) with request deserializers that return `Undecodable`
 * instead of throwing, so that a handler answers a bad message as bad input and a stream goes on;
 * an inference request is refused so before it is decoded when its bytes are not what the decoder
 * would read unseen, or hold more than any request needs (`inferRequestProblem`).
 */
export const tolerantRequests = <D extends Record<string, { readonly requestDeserialize: (bytes: Buffer) => unknown }>>(definition: D): D => {
  const methods: Record<string, unknown> = {}
  for (const [name, method] of Object.entries(definition)) {
    methods[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        const problem = inferMethods.has(name) ? inferRequestProblem(bytes) : undefined
        if (problem !== undefined) {
          return new Undecodable(problem._tag === "tooLarge" ? problem.why : `the request message could not be decoded as ${name}'s request: ${problem.why}`)
        }
        try {
          return inferMethods.has(name) ? decodeInferRequest(bytes, method.requestDeserialize) : method.requestDeserialize(bytes)
        } catch (e) {
          return new Undecodable(`the request message could not be decoded as ${name}'s request: ${e instanceof Error ? e.message : String(e)}`)
        }
      }
    }
  }
  return methods as D
}

/** One `InferParameter` (a oneof), as proto-loader decodes it. */
export interface InferParameter {
  readonly parameter_choice?: string
  readonly bool_param?: boolean
  readonly int64_param?: string
  readonly string_param?: string
  readonly double_param?: number
  readonly uint64_param?: string
}

export interface InferTensorContents {
  readonly bool_contents?: ReadonlyArray<boolean>
  readonly int_contents?: ReadonlyArray<number>
  readonly int64_contents?: ReadonlyArray<string>
  readonly uint_contents?: ReadonlyArray<number>
  readonly uint64_contents?: ReadonlyArray<string>
  /** A Float32Array when it came packed (`decodeInferRequest`), as clients send it. */
  readonly fp32_contents?: ReadonlyArray<number> | Float32Array
  /** A Float64Array when it came packed. */
  readonly fp64_contents?: ReadonlyArray<number> | Float64Array
  readonly bytes_contents?: ReadonlyArray<Uint8Array>
}

export interface ModelInferRequest {
  readonly model_name: string
  readonly model_version: string
  readonly id: string
  readonly parameters?: Readonly<Record<string, InferParameter>>
  readonly inputs: ReadonlyArray<{
    readonly name: string
    readonly datatype: string
    readonly shape: ReadonlyArray<string | number>
    readonly parameters?: Readonly<Record<string, InferParameter>>
    readonly contents?: InferTensorContents | null
  }>
  readonly outputs: ReadonlyArray<{ readonly name: string; readonly parameters?: Readonly<Record<string, InferParameter>> }>
  readonly raw_input_contents: ReadonlyArray<Uint8Array>
}

/** A parameter's value: numbers for the integer kinds (Triton sends priority and timeout as int64 or uint64). */
export const parameterValue = (p: InferParameter): unknown => {
  switch (p.parameter_choice) {
    case "bool_param":
      return p.bool_param
    case "int64_param":
      return Number(p.int64_param)
    case "uint64_param":
      return Number(p.uint64_param)
    case "double_param":
      return p.double_param
    case "string_param":
      return p.string_param
    default:
      return undefined
  }
}

/** Parameters as plain values (`parameterValue`), {} when none. */
export const parameterValues = (parameters: Readonly<Record<string, unknown>> | null | undefined): Record<string, unknown> =>
  parametersOf((parameters ?? undefined) as Readonly<Record<string, InferParameter>> | undefined) ?? {}

const parametersOf = (parameters: Readonly<Record<string, InferParameter>> | undefined): Record<string, unknown> | undefined => {
  if (parameters === undefined) return undefined
  const keys = Object.keys(parameters)
  if (keys.length === 0) return undefined
  const out: Record<string, unknown> = {}
  for (const key of keys) out[key] = key === "sequence_id" ? sequenceIdValue(parameters[key]!) : parameterValue(parameters[key]!)
  return out
}

/**
 * `sequence_id` as `parameterValue` gives it, except an integer past 2^53 (Triton's correlation
 * ids are uint64: a client may draw them at random), which a number cannot hold exactly: kept as
 * its decimal text, so that each id stays its own sequence (the same as that text sent as
 * `string_param`).
 */
const sequenceIdValue = (p: InferParameter): unknown => {
  const value = parameterValue(p)
  if (p.parameter_choice !== "int64_param" && p.parameter_choice !== "uint64_param") return value
  return Number.isSafeInteger(value) ? value : String(p.parameter_choice === "int64_param" ? p.int64_param : p.uint64_param)
}

/** The fields of `InferTensorContents`, in the proto's order. */
const contentsFields = [
  "bool_contents",
  "int_contents",
  "int64_contents",
  "uint_contents",
  "uint64_contents",
  "fp32_contents",
  "fp64_contents",
  "bytes_contents"
] as const

/** The `InferTensorContents` field that holds a datatype's values, as Triton reads them; undefined for one with none (FP16, BF16) or unknown. */
export const contentsFieldOf = (datatype: string): (typeof contentsFields)[number] | undefined => {
  switch (datatype) {
    case "BOOL":
      return "bool_contents"
    case "INT8":
    case "INT16":
    case "INT32":
      return "int_contents"
    case "INT64":
      return "int64_contents"
    case "UINT8":
    case "UINT16":
    case "UINT32":
      return "uint_contents"
    case "UINT64":
      return "uint64_contents"
    case "FP32":
      return "fp32_contents"
    case "FP64":
      return "fp64_contents"
    case "BYTES":
      return "bytes_contents"
    default:
      return undefined
  }
}

/** The elements a shape holds, or undefined when it is no valid shape (the OIP checks then say why). */
const elementsOf = (shape: ReadonlyArray<string | number>): number | undefined => {
  let count = 1
  for (const d of shape) {
    const n = Number(d)
    if (!Number.isSafeInteger(n) || n < 0) return undefined
    count *= n
  }
  return Number.isSafeInteger(count) ? count : undefined
}

/**
 * An input's typed contents as OIP `data`, or why they cannot be: a datatype without typed
 * contents (FP16), values in another field than the datatype's (`int_contents` for FP32), or
 * not as many values as the shape holds. An unknown datatype gives no data, for the OIP checks
 * to refuse.
 */
const dataOf = (input: ModelInferRequest["inputs"][number]): ReadonlyArray<unknown> | Float32Array | Float64Array | string => {
  const field = contentsFieldOf(input.datatype)
  if (field === undefined) {
    return TensorCodec.dtypeOf(input.datatype) === undefined ? [] : `datatype ${input.datatype} has no typed contents: send it in raw_input_contents`
  }
  const c = input.contents
  let wrong = ""
  if (c != null) {
    for (const other of contentsFields) {
      if (other !== field && (c[other]?.length ?? 0) > 0) wrong += wrong === "" ? other : `, ${other}`
    }
  }
  if (wrong !== "") {
    return (c?.[field]?.length ?? 0) > 0
      ? `datatype ${input.datatype} takes its values in contents.${field} only, also got ${wrong}`
      : `datatype ${input.datatype} takes its values in contents.${field}, got ${wrong}`
  }
  const values = c?.[field] ?? []
  const count = elementsOf(input.shape)
  if (count !== undefined && values.length !== count) {
    const shape = `shape [${input.shape.join(", ")}]`
    return values.length === 0
      ? `no values: ${shape} of ${input.datatype} needs ${count} in contents.${field} (or its bytes in raw_input_contents)`
      : `contents.${field} holds ${values.length} values, ${shape} needs ${count}`
  }
  if (field !== "bytes_contents") return values
  const strings = new Array<string>(values.length)
  for (let i = 0; i < values.length; i++) {
    const text = TensorCodec.utf8Element(values[i] as Uint8Array)
    if (text === undefined) return `contents.bytes_contents element ${i} is not valid UTF-8 (a model's string tensor holds text; send binary payloads as UINT8)`
    const problem = TensorCodec.stringElementProblem(text)
    if (problem !== undefined) return `contents.bytes_contents element ${i} ${problem}`
    strings[i] = text
  }
  return strings
}

/**
 * Why a tensor's parameter asks for what this server does not do over gRPC, or undefined (the
 * others go on to the OIP checks, or are ignored as Triton ignores them).
 */
const refusedParameter = (kind: "input" | "output", key: string, raw: boolean): string | undefined => {
  switch (key) {
    case "binary_data_size":
      // HTTP's binary tensor data: its bytes would come after a JSON header gRPC does not have.
      // Beside raw contents it may describe them (KServe's client sends it so): `toOip` checks it.
      return kind === "input" && !raw ? "parameters.binary_data_size belongs to HTTP's binary tensor data; over gRPC send the bytes in raw_input_contents" : undefined
    case "shared_memory_region":
    case "shared_memory_byte_size":
    case "shared_memory_offset":
      return `parameters.${key} asks for the shared-memory extension, which this server does not support`
    default:
      return undefined
  }
}

/** The first refused parameter of a tensor, as the request's answer; undefined when none is (no allocation when it has none). */
const refusedParameters = (
  kind: "input" | "output",
  name: string,
  parameters: Readonly<Record<string, InferParameter>> | undefined,
  raw = false
): string | undefined => {
  if (parameters === undefined) return undefined
  for (const key in parameters) {
    const why = refusedParameter(kind, key, raw)
    if (why !== undefined) return `${kind} ${JSON.stringify(name)}: ${why}`
  }
  return undefined
}

/**
 * A request rewritten as an OIP request (not yet schema-checked) with its binary part, or why it
 * cannot be: raw contents not one per input, an input with typed `contents` beside them, HTTP's
 * `binary_data_size` with typed contents (beside raw contents it must be the entry's length, as
 * KServe's client sends it), typed contents that do not fit the input (`dataOf`), or a tensor
 * parameter for an extension this server lacks (`shared_memory_*`). An output's `classification`
 * goes on to `Oip.prepare` (Triton's classification extension).
 */
export const toOip = (request: ModelInferRequest): { readonly body: unknown; readonly binary: Uint8Array | undefined } | string => {
  const raw = request.raw_input_contents
  if (raw.length > 0 && raw.length !== request.inputs.length) {
    // An input in a shared-memory region has no raw entry (tritonclient sends none): say so first.
    for (const input of request.inputs) {
      const refused = refusedParameters("input", input.name, input.parameters, true)
      if (refused !== undefined) return refused
    }
    return `expected ${request.inputs.length} raw_input_contents, one per input, got ${raw.length}`
  }
  const inputs: Array<Record<string, unknown>> = []
  for (let i = 0; i < request.inputs.length; i++) {
    const input = request.inputs[i]!
    const refused = refusedParameters("input", input.name, input.parameters, raw.length > 0)
    if (refused !== undefined) return refused
    const parameters = parametersOf(input.parameters) ?? {}
    const entry: Record<string, unknown> = { name: input.name, datatype: input.datatype, shape: input.shape.map(Number) }
    if (raw.length > 0) {
      // As Triton: one way or the other for the whole request, never both (the proto's rule).
      if (input.contents != null) return `input ${JSON.stringify(input.name)}: contents must not be given when raw_input_contents is used`
      const bytes = raw[i]!.length
      const size = parameters["binary_data_size"]
      if (size !== undefined && typeof size !== "number") {
        return `input ${JSON.stringify(input.name)}: parameters.binary_data_size must be an integer (int64_param), not ${typeof size === "string" ? "the string " : ""}${TensorCodec.describe(size)}`
      }
      if (size !== undefined && size !== bytes) {
        return `input ${JSON.stringify(input.name)}: parameters.binary_data_size is ${TensorCodec.describe(size)}, but its raw_input_contents entry holds ${bytes} bytes`
      }
      entry["parameters"] = { ...parameters, binary_data_size: bytes }
    } else {
      const data = dataOf(input)
      if (typeof data === "string") return `input ${JSON.stringify(input.name)}: ${data}`
      entry["data"] = data
      if (Object.keys(parameters).length > 0) entry["parameters"] = parameters
    }
    inputs.push(entry)
  }
  const body: Record<string, unknown> = { inputs }
  if (request.id !== "") body["id"] = request.id
  const parameters = parametersOf(request.parameters)
  if (parameters !== undefined) body["parameters"] = parameters
  if (request.outputs.length > 0) {
    for (const output of request.outputs) {
      const refused = refusedParameters("output", output.name, output.parameters)
      if (refused !== undefined) return refused
    }
    // Of an output's parameters, only `classification` means something here (Triton's classification extension).
    body["outputs"] = request.outputs.map((o) => {
      const classification = o.parameters?.["classification"]
      return classification === undefined ? { name: o.name } : { name: o.name, parameters: { classification: parameterValue(classification) } }
    })
  }
  const binary = raw.length === 0 ? undefined : raw.length === 1 ? raw[0]! : concat(raw)
  return { body, binary }
}

const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let offset = 0
  for (const p of parts) {
    out.set(p, offset)
    offset += p.length
  }
  return out
}

/** A `ModelInferResponse` with every output in `raw_output_contents`. */
export const inferResponse = (response: {
  readonly modelName: string
  readonly modelVersion: string
  readonly id: string
  readonly outputs: ReadonlyArray<readonly [string, Tensor.Tensor]>
}) => ({
  model_name: response.modelName,
  model_version: response.modelVersion,
  id: response.id,
  outputs: response.outputs.map(([name, tensor]) => ({ name, datatype: TensorCodec.datatypeOf[tensor.dtype], shape: tensor.dims.slice() })),
  raw_output_contents: response.outputs.map(([, tensor]) => TensorCodec.encodeBinaryData(tensor))
})
