/**
 * Warm-up runs of a model's instances: Triton's `model_warmup`, written in a model's
 * `config.json` as `warmup`. Every instance (those started at a load and every replacement)
 * runs each sample `count` times, in order, after its session loads and before it reports
 * ready: the model is not READY, and an instance takes no request, until they have run. The
 * first runs of a session pay for what onnxruntime does once (memory arenas, kernel choices; on
 * a GPU, compiling shaders for each new shape), which a request would pay otherwise.
 *
 * ```json
 * { "warmup": [
 *   { "name": "one row", "batchSize": 1 },
 *   { "name": "full batch", "batchSize": 64, "count": 2, "inputs": { "input": { "data": "random" } } },
 *   { "inputs": { "input": { "dims": [1, 512] }, "sr": { "data": { "fill": 16000 } } } }
 * ] }
 * ```
 *
 * - A sample's `inputs` set some of the model's inputs; the others get the defaults. Each input's
 *   `dims` is its whole shape in the run; without it, the model's dims with `batchSize` on the
 *   input's batch axis (`batching.inputAxes`, axis 0 unless config.json says; none when it says
 *   null) where that dim is dynamic. Another dynamic dim must be given (`dims`).
 * - `data`: `"zero"` (the default; empty strings for a string input), `"random"` (uniform in
 *   [0, 1) for floats, integers from 0 to 127 within the type's range, 0 or 1 for bool, and
 *   empty strings, as Triton's random data for strings; the same values at every start), or
 *   `{"fill": v}` (every element v: a number, a boolean for a bool input, text for a string one),
 *   or `{"file": name}` (Triton's `input_data_file`: a file of the model's `warmup/` directory
 *   holding the tensor's raw little-endian elements, or one row of them on batch axis 0, repeated
 *   for each row; a string input's elements as Triton writes them, each a 4-byte little-endian
 *   length and its UTF-8 bytes). The scan checks the file as it checks config.json (inside the
 *   repository, a regular file); the instance reads it.
 * - A sample that does not fit the model (an input it does not have, dims of another rank or
 *   against a fixed dim, a fill value its type cannot hold), or a run that fails, fails the
 *   instance's load with the sample's name and the reason: the model is UNAVAILABLE, as Triton's.
 *
 * Pure and free of runtime dependencies (only `Tensor`), so that the session instance
 * (`SessionEndpoint`) builds the tensors where it runs them; `problem` checks config.json.
 *
 * @module Warmup
 */
import * as Tensor from "./Tensor.ts"
import * as FileName from "./internal/FileName.ts"
import { toHalfBits } from "./internal/Float16.ts"
import * as Mulberry32 from "./internal/Mulberry32.ts"

/** How an input's elements are made. */
export type Data =
  | { readonly _tag: "Zero" }
  | { readonly _tag: "Random" }
  | { readonly _tag: "Fill"; readonly value: number | boolean | string }
  /**
   * Read from a file of the model's `warmup/` directory (Triton's `input_data_file`). `name` as
   * config.json writes it; `path` (its real path) and `identity` filled in by the repository's
   * scan, which checked it (`ModelRepository`).
   */
  | { readonly _tag: "File"; readonly name: string; readonly path?: string | undefined; readonly identity?: string | undefined }

/** One input of a sample: its whole shape (undefined: from the model and `batchSize`) and its data. */
export interface Input {
  readonly dims: ReadonlyArray<number> | undefined
  readonly data: Data
}

/** A warm-up sample, decoded (`fromJson`). */
export interface Sample {
  readonly name: string
  /** Rows on each input's batch axis where the model leaves that dim dynamic and `dims` is not given. */
  readonly batchSize: number
  /** Runs of this sample on each instance. */
  readonly count: number
  readonly inputs: Readonly<Record<string, Input>>
}

/** What an instance is started with: the samples, and the batch axis of each input as config.json writes it (`batching.inputAxes`). */
export interface Plan {
  readonly samples: ReadonlyArray<Sample>
  readonly inputAxes: Readonly<Record<string, number | null>>
}

/** Most samples a model may have. */
export const maxSamples = 64
/** Largest `count`, and largest `batchSize`. */
export const maxCount = 1_000
export const maxBatchSize = 65_536
/** Largest tensor a sample may make, in bytes (a string element counts its UTF-8 bytes and 8 more). */
export const maxTensorBytes = 256 * 1024 * 1024

const isObject = (v: unknown): v is Readonly<Record<string, unknown>> => typeof v === "object" && v !== null && !Array.isArray(v)

const isIntIn = (v: unknown, min: number, max: number): v is number => Number.isInteger(v) && (v as number) >= min && (v as number) <= max

const sampleKeys = ["name", "batchSize", "count", "inputs"]
const inputKeys = ["dims", "data"]

const unknownKey = (at: string, o: Readonly<Record<string, unknown>>, known: ReadonlyArray<string>): string | undefined => {
  const extra = Object.keys(o).find((k) => !known.includes(k))
  return extra === undefined ? undefined : `${at} has unknown key ${JSON.stringify(extra)} (known: ${known.map((k) => JSON.stringify(k)).join(", ")})`
}

const dataProblem = (at: string, data: unknown): string | undefined => {
  if (data === "zero" || data === "random") return undefined
  if (isObject(data) && Object.keys(data).length === 1 && "file" in data) return fileNameProblem(`${at}.data.file`, data["file"])
  if (isObject(data) && Object.keys(data).length === 1 && "fill" in data) {
    const v = data["fill"]
    return (typeof v === "number" && Number.isFinite(v)) || typeof v === "boolean" || typeof v === "string"
      ? undefined
      : `${at}.data.fill must be a finite number, a boolean or a string`
  }
  return `${at}.data must be "zero", "random", {"fill": value} or {"file": name}`
}

/** The directory of a model's warm-up files, in its directory (Triton's). */
export const directoryName = "warmup"

const fileNameProblem = (at: string, name: unknown): string | undefined => FileName.problem(at, name, directoryName)

const inputProblem = (at: string, input: unknown): string | undefined => {
  if (!isObject(input)) return `${at} must be an object with "dims" and/or "data"`
  const extra = unknownKey(at, input, inputKeys)
  if (extra !== undefined) return extra
  const dims = input["dims"]
  if (dims !== undefined && (!Array.isArray(dims) || dims.length > 32 || !dims.every((d) => isIntIn(d, 0, 2 ** 31 - 1)))) {
    return `${at}.dims must be a list of at most 32 integers from 0 to ${2 ** 31 - 1} (the input's whole shape)`
  }
  return input["data"] === undefined ? undefined : dataProblem(at, input["data"])
}

const sampleProblem = (i: number, sample: unknown): string | undefined => {
  const at = `warmup[${i}]`
  if (!isObject(sample)) return `${at} must be an object`
  const extra = unknownKey(at, sample, sampleKeys)
  if (extra !== undefined) return extra
  const { name, batchSize, count, inputs } = sample
  if (name !== undefined && (typeof name !== "string" || name.length === 0 || name.length > 200)) return `${at}.name must be text of 1 to 200 characters`
  if (batchSize !== undefined && !isIntIn(batchSize, 1, maxBatchSize)) return `${at}.batchSize must be an integer from 1 to ${maxBatchSize}`
  if (count !== undefined && !isIntIn(count, 1, maxCount)) return `${at}.count must be an integer from 1 to ${maxCount}`
  if (inputs === undefined) return undefined
  if (!isObject(inputs)) return `${at}.inputs must be an object: input name → {"dims", "data"}`
  for (const [input, spec] of Object.entries(inputs)) {
    const problem = inputProblem(`${at}.inputs.${input}`, spec)
    if (problem !== undefined) return problem
  }
  return undefined
}

/**
 * Why `json` is not a `warmup` section, or undefined: a list of 1 to `maxSamples` samples, each
 * with optional `name` (text), `batchSize` (1 to `maxBatchSize`), `count` (1 to `maxCount`) and
 * `inputs` (input → `dims` and/or `data`), and no other key. Names default to "sample i" and must
 * differ.
 */
export const problem = (json: unknown): string | undefined => {
  if (!Array.isArray(json) || json.length === 0 || json.length > maxSamples) return `warmup must list 1 to ${maxSamples} samples`
  for (let i = 0; i < json.length; i++) {
    const p = sampleProblem(i, json[i])
    if (p !== undefined) return p
  }
  const names = fromJson(json).map((s) => s.name)
  const twice = names.find((n, i) => names.indexOf(n) !== i)
  return twice === undefined ? undefined : `warmup names the sample ${JSON.stringify(twice)} twice`
}

const dataOf = (json: unknown): Data =>
  json === "random"
    ? { _tag: "Random" }
    : isObject(json) && "file" in json
    ? { _tag: "File", name: json["file"] as string }
    : isObject(json)
    ? { _tag: "Fill", value: json["fill"] as number | boolean | string }
    : { _tag: "Zero" }

/** The samples `json` lists (`problem(json)` undefined), defaults filled in. */
export const fromJson = (json: ReadonlyArray<unknown>): ReadonlyArray<Sample> =>
  json.map((raw, i) => {
    const s = raw as Readonly<Record<string, unknown>>
    const inputs = (s["inputs"] ?? {}) as Readonly<Record<string, Readonly<Record<string, unknown>>>>
    return {
      name: typeof s["name"] === "string" ? s["name"] : `sample ${i}`,
      batchSize: (s["batchSize"] as number | undefined) ?? 1,
      count: (s["count"] as number | undefined) ?? 1,
      inputs: Object.fromEntries(Object.entries(inputs).map(([name, input]) => [name, {
        dims: input["dims"] as ReadonlyArray<number> | undefined,
        data: dataOf(input["data"])
      }]))
    }
  })

/** A model input as the session reports it (dims: -1 where dynamic). */
export interface InputSpec {
  readonly name: string
  readonly dtype: Tensor.DataType
  readonly dims: ReadonlyArray<number>
}

/** Thrown by `shapeOf` and `tensors`: why a sample does not fit the model. */
export class Misfit extends Error {}

/** What `sample` says of the input `name` (own keys only: an input may be named "constructor"). */
const inputOf = (sample: Sample, name: string): Input | undefined => (Object.hasOwn(sample.inputs, name) ? sample.inputs[name] : undefined)

/** The batch axis of input `name`: `inputAxes`' own entry (null: none), else 0. */
export const axisOf = (inputAxes: Readonly<Record<string, number | null>>, name: string): number | null =>
  Object.hasOwn(inputAxes, name) ? inputAxes[name]! : 0

/** The whole shape of `input` in a run of `sample` (see the module's header); throws `Misfit`. */
export const shapeOf = (sample: Sample, input: InputSpec, axis: number | null): ReadonlyArray<number> => {
  const given = inputOf(sample, input.name)?.dims
  const model = Tensor.dimsText(input.dims)
  if (given !== undefined) {
    if (given.length !== input.dims.length) throw new Misfit(`input ${JSON.stringify(input.name)}: dims ${Tensor.dimsText(given)} have rank ${given.length}, the model's ${model} ${input.dims.length}`)
    const clash = input.dims.findIndex((d, i) => d >= 0 && d !== given[i])
    if (clash >= 0) throw new Misfit(`input ${JSON.stringify(input.name)}: dims ${Tensor.dimsText(given)}, but the model fixes axis ${clash} to ${input.dims[clash]} (${model})`)
    return given
  }
  return input.dims.map((d, i) => {
    if (d >= 0) {
      if (i === axis && sample.batchSize !== 1 && d !== sample.batchSize) {
        throw new Misfit(`input ${JSON.stringify(input.name)}: batchSize ${sample.batchSize}, but the model fixes its batch axis ${i} to ${d} (${model})`)
      }
      return d
    }
    if (i === axis) return sample.batchSize
    throw new Misfit(`input ${JSON.stringify(input.name)} has a dynamic dim at axis ${i} (${model}): give the sample's "dims" for it`)
  })
}

/**
 * The rows a run of `sample` has: the largest dim on a batch axis among `inputs` (`shapeOf`;
 * inputs without a batch axis do not count), 1 when none has one. Throws `Misfit` as `shapeOf`.
 */
export const rows = (sample: Sample, inputs: ReadonlyArray<InputSpec>, inputAxes: Readonly<Record<string, number | null>>): number => {
  let most = 1
  for (const input of inputs) {
    const axis = axisOf(inputAxes, input.name)
    if (axis === null) continue
    const dim = shapeOf(sample, input, axis)[axis]
    if (dim !== undefined && dim > most) most = dim
  }
  return most
}

/** The integer range of each integer dtype (bool: 0 and 1). */
const integerRange: Partial<Record<Tensor.DataType, readonly [bigint, bigint]>> = {
  int8: [-(2n ** 7n), 2n ** 7n - 1n],
  int16: [-(2n ** 15n), 2n ** 15n - 1n],
  int32: [-(2n ** 31n), 2n ** 31n - 1n],
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint8: [0n, 2n ** 8n - 1n],
  uint16: [0n, 2n ** 16n - 1n],
  uint32: [0n, 2n ** 32n - 1n],
  uint64: [0n, 2n ** 64n - 1n],
  bool: [0n, 1n]
}

const isFloat = (dtype: Tensor.DataType): boolean => dtype === "float32" || dtype === "float64" || dtype === "float16"

/** A fill value as `dtype` holds it; throws `Misfit` when it cannot. */
const fillValue = (input: InputSpec, value: number | boolean | string): number | bigint | string => {
  const what = `input ${JSON.stringify(input.name)} (${input.dtype})`
  if (input.dtype === "string") {
    if (typeof value !== "string") throw new Misfit(`${what}: fill ${JSON.stringify(value)} is not text`)
    return value
  }
  if (typeof value === "string") throw new Misfit(`${what}: fill ${JSON.stringify(value)} is text, the input is numeric`)
  if (typeof value === "boolean") {
    if (input.dtype !== "bool") throw new Misfit(`${what}: fill ${value} is a boolean, the input is not bool`)
    return value ? 1 : 0
  }
  if (isFloat(input.dtype)) {
    const bits = input.dtype === "float16" ? toHalfBits(value) : undefined
    const overflows = bits !== undefined ? (bits & 0x7fff) === 0x7c00 : input.dtype === "float32" && !Number.isFinite(Math.fround(value))
    if (overflows) throw new Misfit(`${what}: fill ${value} is beyond the largest ${input.dtype}`)
    return bits ?? value
  }
  const range = integerRange[input.dtype]!
  if (!Number.isInteger(value) || BigInt(value) < range[0] || BigInt(value) > range[1]) {
    throw new Misfit(`${what}: fill ${value} is not ${input.dtype === "bool" ? "0 or 1" : `an integer from ${range[0]} to ${range[1]}`}`)
  }
  // config.json's numbers are doubles: past 2^53 the value read is not the one written
  if (!Number.isSafeInteger(value)) throw new Misfit(`${what}: fill ${value} is beyond 2^53, where a JSON number is not exact`)
  return input.dtype === "int64" || input.dtype === "uint64" ? BigInt(value) : value
}

const randomFill = (dtype: Tensor.DataType, data: Tensor.TensorData, seed: number): void => {
  if (dtype === "string") return
  // the same values at every start, so a warm-up that fails fails alike
  const next = Mulberry32.make(seed)
  const array = data as unknown as { length: number; [i: number]: number | bigint }
  const top = dtype === "bool" ? 2 : 128
  for (let i = 0; i < array.length; i++) {
    const u = next()
    array[i] = dtype === "float16"
      ? toHalfBits(u)
      : isFloat(dtype)
      ? u
      : dtype === "int64" || dtype === "uint64"
      ? BigInt(Math.floor(u * top))
      : Math.floor(u * top)
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true })
const encoder = new TextEncoder()
const utf8Length = (text: string): number => encoder.encode(text).length

/** What a string element counts for besides its UTF-8 bytes (its slot in the array). */
const stringSlotBytes = 8

/** Throws `Misfit` when a tensor of `bytes` (strings: their UTF-8 bytes and slots) is over `maxTensorBytes`. */
const checkSize = (input: InputSpec, dims: ReadonlyArray<number>, bytes: number): void => {
  if (bytes > maxTensorBytes) {
    throw new Misfit(`input ${JSON.stringify(input.name)}: ${Tensor.dimsText(dims)} ${input.dtype} is ${bytes} bytes, more than a warm-up tensor may have (${maxTensorBytes})`)
  }
}

/** The elements of a string tensor's file: each a 4-byte little-endian length, then that many bytes of UTF-8 (Triton's form). */
const stringElements = (bytes: Uint8Array, what: string): Array<string> => {
  const out: Array<string> = []
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  for (let at = 0; at < bytes.length;) {
    if (at + 4 > bytes.length) throw new Misfit(`${what}: ends inside the length of element ${out.length}`)
    const n = view.getUint32(at, true)
    if (at + 4 + n > bytes.length) throw new Misfit(`${what}: element ${out.length} says ${n} bytes, ${bytes.length - at - 4} are left`)
    try {
      out.push(utf8.decode(bytes.subarray(at + 4, at + 4 + n)))
    } catch {
      throw new Misfit(`${what}: element ${out.length} is not UTF-8`)
    }
    at += 4 + n
  }
  return out
}

/**
 * An input's elements from its warm-up file: the whole tensor, or (on batch axis 0) one row that
 * is repeated for each row, as Triton repeats a sample to its batch size. Numbers are raw
 * little-endian elements; strings in Triton's form (`stringElements`).
 */
const fromFile = (
  input: InputSpec,
  dims: ReadonlyArray<number>,
  axis: number | null,
  file: Extract<Data, { readonly _tag: "File" }>,
  read: (path: string) => Uint8Array
): Tensor.TensorData => {
  const what = `input ${JSON.stringify(input.name)}: ${directoryName}/${file.name}`
  let bytes: Uint8Array
  try {
    bytes = read(file.path ?? "")
  } catch (e) {
    throw new Misfit(`${what} cannot be read (${e instanceof Error ? e.message : String(e)})`)
  }
  const length = Tensor.elementCount(dims)
  const rows = axis === 0 && dims.length > 0 && dims[0]! > 0 ? dims[0]! : 1
  const bpe = Tensor.bytesPerElement(input.dtype)
  const elements = bpe === undefined ? stringElements(bytes, what) : undefined
  const count = elements?.length ?? bytes.length / bpe!
  const shape = `${Tensor.dimsText(dims)} ${input.dtype}`
  if (count !== length && (rows === 1 || count * rows !== length)) {
    // strings count in elements, numbers in bytes
    const size = (elementsOf: number) => bpe === undefined ? `${elementsOf} element${elementsOf === 1 ? "" : "s"}` : `${elementsOf * bpe} bytes`
    const row = rows === 1 ? "" : ` (or ${size(length / rows)} for one row, repeated ${rows} times)`
    throw new Misfit(`${what} has ${bpe === undefined ? size(count) : `${bytes.length} bytes`}; ${shape} takes ${size(length)}${row}`)
  }
  const times = length / count
  if (elements !== undefined) {
    checkSize(input, dims, times * elements.reduce((n, e) => n + stringSlotBytes + utf8Length(e), 0))
    return Array.from({ length: times }, () => elements).flat()
  }
  const data = Tensor.allocate(input.dtype, length) as Exclude<Tensor.TensorData, ReadonlyArray<string>>
  const target = new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  for (let i = 0; i < times; i++) target.set(bytes, i * bytes.length)
  return data
}

/** Reads a warm-up file whole (the instance's: `fs.readFileSync`). */
export type Read = (path: string) => Uint8Array

/**
 * The tensors of one run of `sample` for a model with `inputs`, each input on its batch axis
 * from `inputAxes` (0 unless listed; null: none), files read with `read`. Throws `Misfit` with
 * the reason (the sample's name is the caller's to add).
 */
export const tensors = (
  sample: Sample,
  inputs: ReadonlyArray<InputSpec>,
  inputAxes: Readonly<Record<string, number | null>>,
  read: Read = () => {
    throw new Error("no file reader")
  }
): Tensor.TensorMap => {
  const unknown = Object.keys(sample.inputs).find((name) => !inputs.some((i) => i.name === name))
  if (unknown !== undefined) throw new Misfit(`the model has no input ${JSON.stringify(unknown)} (its inputs: ${inputs.map((i) => i.name).join(", ")})`)
  const out: Array<[string, Tensor.Tensor]> = []
  inputs.forEach((input, index) => {
    const axis = axisOf(inputAxes, input.name)
    const dims = shapeOf(sample, input, axis)
    const length = Tensor.elementCount(dims)
    const spec = inputOf(sample, input.name)?.data ?? { _tag: "Zero" }
    // a string element costs its UTF-8 bytes besides its slot (a file's are counted as it is read)
    const fillBytes = spec._tag === "Fill" && typeof spec.value === "string" ? utf8Length(spec.value) : 0
    checkSize(input, dims, length * ((Tensor.bytesPerElement(input.dtype) ?? stringSlotBytes) + fillBytes))
    if (spec._tag === "File") {
      out.push([input.name, Tensor.make(input.dtype, fromFile(input, dims, axis, spec, read), dims)])
      return
    }
    const data = Tensor.allocate(input.dtype, length)
    if (spec._tag === "Random") randomFill(input.dtype, data, index + 1)
    else if (spec._tag === "Fill") (data as unknown as { fill: (v: unknown) => void }).fill(fillValue(input, spec.value))
    out.push([input.name, Tensor.make(input.dtype, data, dims)])
  })
  // own keys whatever the names ("__proto__" included)
  return Object.fromEntries(out)
}

/** Runs of every sample: what one instance's warm-up costs. */
export const runs = (samples: ReadonlyArray<Sample>): number => samples.reduce((n, s) => n + s.count, 0)
