/**
 * Tensors as the engine sees them: a dtype, dims and a typed array in row-major order.
 *
 * Ownership: the engine never writes into a caller's `data`. Inputs are copied when they
 * cross to a worker thread; outputs are fresh arrays that the caller owns.
 *
 * @module Tensor
 */
import { Buffer } from "node:buffer"

/** Element types, named as onnxruntime names them. */
export const dataTypes = [
  "float32", "float64", "float16",
  "int8", "int16", "int32", "int64",
  "uint8", "uint16", "uint32", "uint64",
  "bool", "string"
] as const

export type DataType = typeof dataTypes[number]

/** The typed array that holds each dtype (bool is a Uint8Array of 0/1, float16 raw bits in a Uint16Array). */
export interface DataTypeToArray {
  float32: Float32Array
  float64: Float64Array
  float16: Uint16Array
  int8: Int8Array
  int16: Int16Array
  int32: Int32Array
  int64: BigInt64Array
  uint8: Uint8Array
  uint16: Uint16Array
  uint32: Uint32Array
  uint64: BigUint64Array
  bool: Uint8Array
  string: ReadonlyArray<string>
}

export type TensorData = DataTypeToArray[DataType]

export interface Tensor<T extends DataType = DataType> {
  readonly dtype: T
  /** Row-major dimensions; every entry a non-negative integer. */
  readonly dims: ReadonlyArray<number>
  readonly data: DataTypeToArray[T]
}

/**
 * True when `tensor`'s element type is `dtype`, narrowing its `data` to that type's array:
 * `if (Tensor.isOf(out, "float32")) out.data` is a Float32Array, no cast.
 */
export const isOf = <T extends DataType>(tensor: Tensor, dtype: T): tensor is Tensor<T> => tensor.dtype === dtype

/** Input or output name → tensor. */
export type TensorMap = Readonly<Record<string, Tensor>>

export const make = <T extends DataType>(dtype: T, data: DataTypeToArray[T], dims: ReadonlyArray<number>): Tensor<T> => ({
  dtype,
  dims,
  data
})

export const float32 = (data: Float32Array | ReadonlyArray<number>, dims: ReadonlyArray<number>): Tensor<"float32"> =>
  make("float32", data instanceof Float32Array ? data : Float32Array.from(data), dims)

export const int64 = (data: BigInt64Array | ReadonlyArray<bigint | number>, dims: ReadonlyArray<number>): Tensor<"int64"> =>
  make("int64", data instanceof BigInt64Array ? data : BigInt64Array.from(data, (x) => BigInt(x)), dims)

/** Dims as error messages print them: `[1, 784]`. */
export const dimsText = (dims: ReadonlyArray<number>): string => `[${dims.join(", ")}]`

/** Product of dims (1 for a scalar). */
export const elementCount = (dims: ReadonlyArray<number>): number => {
  let n = 1
  for (const d of dims) n *= d
  return n
}

const constructors = {
  float32: Float32Array,
  float64: Float64Array,
  float16: Uint16Array,
  int8: Int8Array,
  int16: Int16Array,
  int32: Int32Array,
  int64: BigInt64Array,
  uint8: Uint8Array,
  uint16: Uint16Array,
  uint32: Uint32Array,
  uint64: BigUint64Array,
  bool: Uint8Array
} as const

/** Bytes per element, or undefined for string tensors. */
export const bytesPerElement = (dtype: DataType): number | undefined =>
  dtype === "string" ? undefined : constructors[dtype].BYTES_PER_ELEMENT

/** A zero-filled array of `length` elements of `dtype`. */
export const allocate = <T extends DataType>(dtype: T, length: number): DataTypeToArray[T] =>
  (dtype === "string" ? new Array<string>(length).fill("") : new constructors[dtype as Exclude<DataType, "string">](length)) as DataTypeToArray[T]

/** From this many bytes, `allocateForOverwrite` skips the zeroing (below it, a zeroed array is as cheap). */
const uninitializedMinBytes = 4096

/**
 * Like `allocate`, for a caller that writes every element before anyone reads one: from 4 KiB the
 * memory is not zeroed first (a 766 KB batch cost 110 µs allocated and filled, 70 µs without the
 * zeroing), and a buffer given back by `recycle` of exactly the size is reused first. Always an
 * exact-size buffer of its own, so it can be transferred.
 */
export const allocateForOverwrite = <T extends DataType>(dtype: T, length: number): DataTypeToArray[T] => {
  if (dtype === "string") return allocate(dtype, length)
  const ctor = constructors[dtype as Exclude<DataType, "string">]
  const bytes = length * ctor.BYTES_PER_ELEMENT
  if (bytes < uninitializedMinBytes) return allocate(dtype, length)
  const reused = recycled.get(bytes)?.pop()
  if (reused !== undefined) {
    recycledBytes -= bytes
    return new ctor(reused, 0, length) as DataTypeToArray[T]
  }
  return new ctor(Buffer.allocUnsafeSlow(bytes).buffer, 0, length) as DataTypeToArray[T]
}

/**
 * Buffers given back for reuse, by byte length (this thread's own). Fresh memory costs its page
 * faults when it is first written: joining 32 MLP rows into a new 100 KB buffer took 0.5-1.5 µs a
 * row, against 0.07 into one written before.
 */
const recycled = new Map<number, Array<ArrayBuffer>>()
let recycledBytes = 0
/** At most this many bytes are kept, and this many buffers of one size. */
const recycledMaxBytes = 16 * 1024 * 1024
const recycledMaxPerSize = 4

/**
 * Gives `buffer` to `allocateForOverwrite` to reuse: the caller promises that nothing reads or
 * writes it any more (the usual case: a batch's input buffer that a worker thread transferred back
 * after its run). Kept only from 4 KiB, within the bounds above; otherwise left to the GC.
 */
export const recycle = (buffer: ArrayBuffer): void => {
  const bytes = buffer.byteLength
  if (bytes < uninitializedMinBytes || recycledBytes + bytes > recycledMaxBytes || (buffer as { readonly resizable?: boolean }).resizable === true) return
  let list = recycled.get(bytes)
  if (list === undefined) recycled.set(bytes, list = [])
  if (list.length >= recycledMaxPerSize) return
  list.push(buffer)
  recycledBytes += bytes
}

/** Bytes held for reuse now (`recycle`); for tests and telemetry. */
export const recycledBytesHeld = (): number => recycledBytes

/**
 * `length` elements of `dtype` read in place from `bytes` (no copy), or undefined when `bytes`
 * does not start at a multiple of the element size (a typed array cannot view it) or `dtype` is
 * string. The view shares `bytes`' memory: writing one writes the other.
 */
export const viewOf = <T extends Exclude<DataType, "string">>(dtype: T, bytes: Uint8Array, length: number): DataTypeToArray[T] | undefined => {
  const ctor = constructors[dtype]
  if (bytes.byteOffset % ctor.BYTES_PER_ELEMENT !== 0 || !(bytes.buffer instanceof ArrayBuffer)) return undefined
  return new ctor(bytes.buffer, bytes.byteOffset, length) as DataTypeToArray[T]
}

const loneSurrogate = /\p{Cs}/u

/**
 * Why `text` cannot be an element of an ONNX string tensor, or undefined. onnxruntime-node hands
 * each element to the runtime as a C string, so a NUL (U+0000) would end it there; a lone
 * surrogate has no UTF-8 form and would become U+FFFD. Either way the model would see other text
 * than was sent, so such an element is refused.
 */
export const stringElementProblem = (text: string): string | undefined =>
  text.includes("\0")
    ? "holds a NUL character (U+0000), where onnxruntime would cut the string (send binary payloads as UINT8)"
    : loneSurrogate.test(text)
    ? "is not well-formed Unicode (a lone surrogate, which UTF-8 cannot encode)"
    : undefined

/** True when `data` is the typed array (or string array) that holds `dtype`. */
export const dataMatches = (dtype: DataType, data: unknown): boolean =>
  dtype === "string" ? Array.isArray(data) : data instanceof constructors[dtype]

/**
 * A copy of `data` whose buffer holds exactly its elements, so that it can be posted to another
 * thread without cloning a larger backing buffer (a view into a pooled Buffer, say).
 */
export const compact = <T extends TensorData>(data: T): T =>
  ArrayBuffer.isView(data) && (data.byteOffset !== 0 || data.byteLength !== data.buffer.byteLength)
    ? (data as unknown as { slice: () => T }).slice()
    : data
