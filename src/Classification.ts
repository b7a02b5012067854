/**
 * Triton's classification extension, as a pure function of an output tensor: an output requested
 * with `parameters.classification: N` comes back as the N highest-valued elements, as BYTES
 * strings "<value>:<index>", instead of the tensor the model returned.
 *
 * - For a model that batches, each row along the output's batch axis is classified apart and the
 *   answer is `[rows, N]`; for one that does not, the whole tensor is one row and the answer is
 *   `[N]` (Triton's rule: its batch dim is the first of a model with a max_batch_size).
 * - N larger than a row's elements gives them all (Triton clamps the same way).
 * - Order: highest value first, the lower index first among equal values; NaN after every number.
 * - `<value>` is written as C++'s `std::to_string` writes it, since that is what Triton answers:
 *   integers in decimal, floating-point values with six decimals ("0.437489", "nan", "-inf").
 * - Numeric outputs only: BOOL and BYTES outputs are refused at decoding (`supports`).
 * - With labels (config.json's `labels`: line i labels class i), a class whose label is not empty
 *   is "<value>:<index>:<label>", as Triton's `label_filename` makes it.
 *
 * @module Classification
 */
import * as Tensor from "./Tensor.ts"
import { fromHalfBits } from "./internal/Float16.ts"

/** Whether an output of `dtype` can be classified (numeric; not BOOL or BYTES). */
export const supports = (dtype: Tensor.DataType): boolean => dtype !== "bool" && dtype !== "string"

/**
 * The count a `classification` parameter asks for, or why it is not one: a positive integer
 * (Triton's is a uint32). Non-numbers, fractions, 0 and negatives are refused.
 */
export const countOf = (value: unknown): number | string => {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1 || value > 0xffff_ffff) {
    return `parameters.classification must be a positive integer (the number of classes to return), got ${typeof value === "string" ? JSON.stringify(value) : String(value)}`
  }
  return value
}

/**
 * A floating-point value as C++'s `std::to_string` writes it (`%f`): six decimals, and from 1e21 on
 * (where `toFixed` turns to exponents) the integer the double is, in full.
 */
const floatText = (v: number): string =>
  Number.isNaN(v) ? "nan" : v === Infinity ? "inf" : v === -Infinity ? "-inf" : Object.is(v, -0) ? "-0.000000" : Math.abs(v) < 1e21 ? v.toFixed(6) : `${BigInt(v)}.000000`

const isFloat = (dtype: Tensor.DataType): boolean => dtype === "float32" || dtype === "float64" || dtype === "float16"

/** The element at `i` for ordering (int64 and uint64 as BigInt, exactly), and its text. */
const reader = (tensor: Tensor.Tensor): { readonly value: (i: number) => number | bigint; readonly text: (i: number) => string } => {
  const data = tensor.data as ArrayLike<number | bigint>
  if (tensor.dtype === "float16") {
    const bits = tensor.data as Uint16Array
    return { value: (i) => fromHalfBits(bits[i]!), text: (i) => floatText(fromHalfBits(bits[i]!)) }
  }
  if (isFloat(tensor.dtype)) return { value: (i) => data[i] as number, text: (i) => floatText(data[i] as number) }
  return { value: (i) => data[i]!, text: (i) => String(data[i]) }
}

/**
 * The top `count` classes of each row of `tensor` (see the module doc), as a string tensor.
 * `batchAxis`: the output's batch axis when the model batches, else null (one row); `labels`:
 * the output's class labels, if it has any.
 */
export const classify = (
  tensor: Tensor.Tensor,
  count: number,
  batchAxis: number | null,
  labels?: ReadonlyArray<string>
): Tensor.Tensor<"string"> => {
  // Triton takes the first dim as the batch; an output batched on another axis is classified the same way, row by row along it.
  const axis = batchAxis !== null && batchAxis < tensor.dims.length ? batchAxis : null
  const rows = axis === null ? 1 : tensor.dims[axis]!
  // Elements of a row: every dim but the batch axis (known even when there are no rows).
  let perRow = 1
  for (let i = 0; i < tensor.dims.length; i++) if (i !== axis) perRow *= tensor.dims[i]!
  const inner = axis === null ? perRow : strideAfter(tensor.dims, axis)
  const n = Math.min(count, perRow)
  const { value, text } = reader(tensor)
  const out: Array<string> = []
  const order = Array.from({ length: perRow }, (_, k) => k)
  for (let row = 0; row < rows; row++) {
    // Element k of this row: outer block k / inner, offset k % inner (row-major around the batch axis).
    const at = (k: number) => axis === null ? k : (Math.floor(k / inner) * rows + row) * inner + (k % inner)
    const values = order.map((k) => value(at(k)))
    const ranked = order.slice().sort((a, b) => {
      const x = values[a]!
      const y = values[b]!
      const xNaN = x !== x
      const yNaN = y !== y
      if (xNaN || yNaN) return xNaN === yNaN ? a - b : xNaN ? 1 : -1
      return x === y ? a - b : y > x ? 1 : -1
    })
    for (let j = 0; j < n; j++) {
      const k = ranked[j]!
      const label = labels?.[k]
      out.push(label === undefined || label === "" ? `${text(at(k))}:${k}` : `${text(at(k))}:${k}:${label}`)
    }
  }
  return Tensor.make("string", out, axis === null ? [n] : [rows, n])
}

/** Elements after `axis` in a row-major layout. */
const strideAfter = (dims: ReadonlyArray<number>, axis: number): number => {
  let stride = 1
  for (let i = axis + 1; i < dims.length; i++) stride *= dims[i]!
  return stride
}
