/**
 * Joining requests into one batch and splitting the batch's outputs back, along each tensor's
 * batch axis (row-major). Pure: no fibers, no clock.
 *
 * @module Batch
 */
import type * as BatchPolicy from "./BatchPolicy.ts"
import * as Tensor from "./Tensor.ts"

/** The batch axis of input `name` (config.json `inputAxes`, default 0), or null; own keys only (an input may be named "constructor"). */
export const axisOf = (axes: Readonly<Record<string, BatchPolicy.Axis>>, name: string): BatchPolicy.Axis =>
  Object.hasOwn(axes, name) ? axes[name]! : 0

/**
 * An unbatched input's values as text, one-to-one: a string is quoted (JSON), so a separator
 * inside it cannot make two lists read alike, and -0 is kept apart from 0 (a model may tell them
 * apart, as in 1/x).
 */
const valuesKey = (data: Tensor.TensorData): string => {
  let out = ""
  for (let i = 0; i < data.length; i++) {
    const v: unknown = data[i]
    if (i > 0) out += ","
    out += typeof v === "string" ? JSON.stringify(v) : Object.is(v, -0) ? "-0" : String(v)
  }
  return out
}

/**
 * The key that requests must share to join one batch: every input's dtype and its dims off the
 * batch axis, and the values of unbatched inputs. Requests of one model share a key only when
 * all of these are equal, so a batch may pass its first member's unbatched inputs for all.
 * Undefined when the request cannot batch (its batched inputs disagree on the row count, or it
 * is too large).
 */
export const keyOf = (config: BatchPolicy.BatchingConfig, inputs: Tensor.TensorMap): { readonly key: string; readonly rows: number } | undefined => {
  let rows: number | undefined
  let key = ""
  // One input (the common case) needs no array of names to sort.
  let only: string | undefined
  let count = 0
  for (const name in inputs) {
    if (!Object.hasOwn(inputs, name)) continue
    only = name
    count++
  }
  const names = count > 1 ? Object.keys(inputs).sort() : undefined
  for (let i = 0; i < count; i++) {
    const name = names === undefined ? only! : names[i]!
    const tensor = inputs[name]!
    const axis = axisOf(config.inputAxes, name)
    if (key !== "") key += "|"
    if (axis === null) {
      if (tensor.data.length > 16) return undefined
      key += `${name}:${tensor.dtype}:${tensor.dims.join("x")}=${valuesKey(tensor.data)}`
      continue
    }
    const dims = tensor.dims
    const r = dims[axis]
    if (r === undefined || (rows !== undefined && r !== rows)) return undefined
    rows = r
    key += `${name}:${tensor.dtype}:`
    for (let i = 0; i < dims.length; i++) key += (i === 0 ? "" : "x") + (i === axis ? "*" : dims[i])
  }
  if (rows === undefined || rows === 0 || rows > config.maxBatchSize) return undefined
  return { key, rows }
}

/**
 * Where the model's batching config declares batch axes, every batched input must have the same
 * size on its axis: the rows of one request. Returns what disagrees, or undefined.
 */
export const rowsDisagreement = (config: BatchPolicy.BatchingConfig, inputs: Tensor.TensorMap): string | undefined => {
  let first: { readonly name: string; readonly axis: number; readonly rows: number } | undefined
  for (const name in inputs) {
    if (!Object.hasOwn(inputs, name)) continue
    const axis = axisOf(config.inputAxes, name)
    if (axis === null) continue
    const rows = inputs[name]!.dims[axis]
    if (rows === undefined) continue
    if (first === undefined) first = { name, axis, rows }
    else if (rows !== first.rows) {
      return `inputs disagree on the batch size: ${first.name} has ${first.rows} on axis ${first.axis}, ${name} has ${rows} on axis ${axis}`
    }
  }
  return undefined
}

/** Elements before and after the batch axis: [outer, inner]. */
const strides = (dims: ReadonlyArray<number>, axis: number): readonly [number, number] => {
  let outer = 1
  let inner = 1
  for (let i = 0; i < axis; i++) outer *= dims[i]!
  for (let i = axis + 1; i < dims.length; i++) inner *= dims[i]!
  return [outer, inner]
}

const copy = (target: Tensor.TensorData, offset: number, source: Tensor.TensorData, start: number, end: number): void => {
  if (Array.isArray(target)) {
    const t = target as Array<string>
    for (let i = start; i < end; i++) t[offset + i - start] = (source as ReadonlyArray<string>)[i]!
  } else if (start === 0 && end === source.length) {
    // a whole request's rows (the common case): no view to allocate
    ;(target as Uint8Array).set(source as Uint8Array, offset)
  } else {
    ;(target as Uint8Array).set((source as Uint8Array).subarray(start, end), offset)
  }
}

const concatTensor = (tensors: ReadonlyArray<Tensor.Tensor>, axis: number): Tensor.Tensor => {
  const first = tensors[0]!
  let rows = 0
  for (const t of tensors) rows += t.dims[axis]!
  const dims = first.dims.map((d, i) => i === axis ? rows : d)
  const [outer, inner] = strides(first.dims, axis)
  const data = Tensor.allocateForOverwrite(first.dtype, outer * rows * inner)
  let offset = 0
  for (let o = 0; o < outer; o++) {
    for (const t of tensors) {
      const block = t.dims[axis]! * inner
      copy(data, offset, t.data, o * block, (o + 1) * block)
      offset += block
    }
  }
  return Tensor.make(first.dtype, data, dims)
}

/**
 * Joins the members' inputs into one input map (members all share one `keyOf` key). With two or
 * more members every tensor of the result is a fresh buffer, an unbatched one (axis null) copied
 * from the first member too: the caller may give the result away (transfer it to a worker)
 * without detaching a buffer a member still owns.
 */
export const concat = (config: BatchPolicy.BatchingConfig, members: ReadonlyArray<Tensor.TensorMap>): Tensor.TensorMap => {
  if (members.length === 1) return members[0]!
  const out: Record<string, Tensor.Tensor> = {}
  for (const name of Object.keys(members[0]!)) {
    const axis = axisOf(config.inputAxes, name)
    out[name] = axis === null ? copyTensor(members[0]![name]!) : concatTensor(members.map((m) => m[name]!), axis)
  }
  return out
}

const copyTensor = (tensor: Tensor.Tensor): Tensor.Tensor => {
  const data = Tensor.allocateForOverwrite(tensor.dtype, tensor.data.length)
  copy(data, 0, tensor.data, 0, tensor.data.length)
  return Tensor.make(tensor.dtype, data, tensor.dims)
}

const sliceTensor = (tensor: Tensor.Tensor, axis: number, from: number, rows: number): Tensor.Tensor => {
  const [outer, inner] = strides(tensor.dims, axis)
  const total = tensor.dims[axis]!
  const data = Tensor.allocateForOverwrite(tensor.dtype, outer * rows * inner)
  for (let o = 0; o < outer; o++) {
    const start = (o * total + from) * inner
    copy(data, o * rows * inner, tensor.data, start, start + rows * inner)
  }
  return Tensor.make(tensor.dtype, data, tensor.dims.map((d, i) => i === axis ? rows : d))
}

/**
 * Why a run's outputs are not rows of its inputs, or undefined: an output with a batch axis
 * whose size there is not the run's `rows` (a detection model's `[num_detections, …]` output on a
 * dynamic axis 0). Such a model cannot be batched: its outputs do not split back into callers.
 */
export const rowsMismatch = (config: BatchPolicy.BatchingConfig, outputs: Tensor.TensorMap, rows: number): string | undefined => {
  for (const name in outputs) {
    const axis = axisOf(config.outputAxes, name)
    if (axis === null) continue
    const size = outputs[name]!.dims[axis]
    if (size !== rows) return `output ${JSON.stringify(name)} has ${size} along its batch axis (${axis}) for a run of ${rows} row${rows === 1 ? "" : "s"}`
  }
  return undefined
}

/**
 * Splits a batch's outputs back into one output map per member, `rows[i]` rows each, in member
 * order. An unbatched output (axis null) is given whole to every member, each its own copy (the
 * first the run's own): a caller owns its outputs. Fails (undefined) when an output's batch dim
 * does not equal the total rows, or its data does not hold exactly its dims' elements (a pool's
 * bug: the slices are written from it, into memory that is not zeroed first).
 */
export const split = (
  config: BatchPolicy.BatchingConfig,
  outputs: Tensor.TensorMap,
  rows: ReadonlyArray<number>
): ReadonlyArray<Tensor.TensorMap> | undefined => {
  if (rows.length === 1) return [outputs]
  const total = rows.reduce((a, b) => a + b, 0)
  const result: Array<Record<string, Tensor.Tensor>> = rows.map(() => ({}))
  for (const [name, tensor] of Object.entries(outputs)) {
    const axis = axisOf(config.outputAxes, name)
    if (axis === null) {
      result.forEach((r, i) => {
        r[name] = i === 0 ? tensor : copyTensor(tensor)
      })
      continue
    }
    if (tensor.dims[axis] !== total || tensor.data.length !== Tensor.elementCount(tensor.dims)) return undefined
    let from = 0
    rows.forEach((n, i) => {
      result[i]![name] = sliceTensor(tensor, axis, from, n)
      from += n
    })
  }
  return result
}
