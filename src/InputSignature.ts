/**
 * Declared input signatures: what a model really accepts, narrower than its ONNX signature.
 *
 * An ONNX file says `input: float32 [batch, samples]`, but Silero VAD runs only 512 samples at
 * 16 kHz or 256 at 8 kHz, and a text model's Gather fails on a token id past its vocabulary.
 * onnxruntime refuses such inputs only at run time, as a kernel error that cannot be told
 * apart from a model fault (so it would answer 500). A model's `config.json` may declare the
 * alternatives it accepts; the engine then refuses a request that fits none of them at
 * admission, as InvalidInput (400), before it is queued.
 *
 * ```json
 * "inputSignatures": [
 *   { "input": { "dims": [-1, 512] }, "sr": { "values": [16000] } },
 *   { "input": { "dims": [-1, 256] }, "sr": { "values": [8000] } }
 * ]
 * ```
 *
 * A request must fit at least one signature. In a signature, each named input may declare
 * `dims` (same rank as the model's; -1 is any size; a fixed dim must agree with the model's),
 * `values` (every element is one of these), and `min` / `max` (every element within, inclusive;
 * NaN never is). Inputs a signature does not name are unconstrained by it. Pure: no clock, no I/O.
 *
 * @module InputSignature
 */
import { Effect, Schema } from "effect"
import * as Tensor from "./Tensor.ts"

/** One input's constraints in a signature. */
export interface Constraint {
  readonly dims?: ReadonlyArray<number>
  readonly values?: ReadonlyArray<number>
  readonly min?: number
  readonly max?: number
}

/** One accepted alternative: constraints by input name. */
export type Signature = Readonly<Record<string, Constraint>>

/** One input's constraints as config.json writes them (its keys are checked by `ModelRepository.unknownKeys`). */
export const ConstraintJson = Schema.Struct({
  dims: Schema.optionalKey(Schema.Array(Schema.Int.check(Schema.isGreaterThanOrEqualTo(-1)))),
  values: Schema.optionalKey(Schema.Array(Schema.Finite).check(Schema.isMinLength(1))),
  min: Schema.optionalKey(Schema.Finite),
  max: Schema.optionalKey(Schema.Finite)
})

/** config.json's `inputSignatures`: a non-empty list of alternatives. */
export const ConfigJson = Schema.Array(Schema.Record(Schema.String, ConstraintJson)).check(Schema.isMinLength(1))

export type ConfigJson = typeof ConfigJson.Type

/** The model's own inputs, as its ONNX metadata declares them (-1 = dynamic). */
export interface ModelInputs {
  readonly inputs: ReadonlyArray<{ readonly name: string; readonly dtype?: Tensor.DataType; readonly dims: ReadonlyArray<number> }>
}


/**
 * Checks declared signatures against the model's inputs once it is loaded: every named input
 * exists, declared dims have the model's rank and agree with its fixed dims, `values`, `min`
 * and `max` constrain a numeric input, `min` ≤ `max`.
 * Fails with a message naming the field (`inputSignatures[1].sr: unknown input`).
 */
export const resolve = (config: ReadonlyArray<Signature> | undefined, model: ModelInputs): Effect.Effect<ReadonlyArray<Signature> | undefined, string> =>
  Effect.suspend(() => {
    if (config === undefined) return Effect.succeed(undefined)
    for (let i = 0; i < config.length; i++) {
      for (const [name, constraint] of Object.entries(config[i]!)) {
        const at = `inputSignatures[${i}].${name}`
        const spec = model.inputs.find((s) => s.name === name)
        if (spec === undefined) return Effect.fail(`${at}: unknown input; the model takes ${model.inputs.map((s) => s.name).join(", ")}`)
        const dims = constraint.dims
        if (dims !== undefined) {
          if (dims.length !== spec.dims.length) return Effect.fail(`${at}.dims: rank ${dims.length}, the model's input has rank ${spec.dims.length} ${Tensor.dimsText(spec.dims)}`)
          for (let axis = 0; axis < dims.length; axis++) {
            const fixed = spec.dims[axis]!
            if (fixed >= 0 && dims[axis]! >= 0 && dims[axis] !== fixed) {
              return Effect.fail(`${at}.dims: dim ${axis} is ${dims[axis]}, the model fixes it at ${fixed}`)
            }
          }
        }
        if (spec.dtype === "string" && (constraint.values !== undefined || constraint.min !== undefined || constraint.max !== undefined)) {
          return Effect.fail(`${at}: values, min and max apply to numbers; the input holds strings`)
        }
        if (constraint.min !== undefined && constraint.max !== undefined && constraint.min > constraint.max) {
          return Effect.fail(`${at}: min ${constraint.min} is above max ${constraint.max}`)
        }
      }
    }
    return Effect.succeed(config)
  })

const elementNumber = (x: number | bigint | boolean | string): number => (typeof x === "number" ? x : typeof x === "bigint" ? Number(x) : Number.NaN)

/** The first element of `data` that `test` refuses, as text, or undefined when all pass. */
const firstRefused = (data: Tensor.TensorData, test: (x: number | bigint) => boolean): string | undefined => {
  for (let i = 0; i < data.length; i++) {
    const x = data[i] as number | bigint
    if (!test(x)) return `${String(x)} (element ${i})`
  }
  return undefined
}

const sameValue = (x: number | bigint, v: number): boolean =>
  typeof x === "bigint" ? Number.isInteger(v) && x === BigInt(v) : x === v

/** Why `tensor` breaks `constraint`, or undefined when it fits. */
const breaks = (name: string, constraint: Constraint, tensor: Tensor.Tensor): string | undefined => {
  const { dims, max, min, values } = constraint
  if (dims !== undefined) {
    for (let axis = 0; axis < dims.length; axis++) {
      if (dims[axis]! >= 0 && tensor.dims[axis] !== dims[axis]) return `${name} dims ${Tensor.dimsText(tensor.dims)}, declared ${Tensor.dimsText(dims)}`
    }
  }
  if (values !== undefined) {
    const refused = firstRefused(tensor.data, (x) => values.some((v) => sameValue(x, v)))
    if (refused !== undefined) return `${name} value ${refused} is not one of ${Tensor.dimsText(values)}`
  }
  if (min !== undefined || max !== undefined) {
    const refused = firstRefused(tensor.data, (x) => {
      const n = elementNumber(x)
      return (min === undefined || n >= min) && (max === undefined || n <= max)
    })
    if (refused !== undefined) return `${name} value ${refused} is outside [${min ?? "-inf"}, ${max ?? "inf"}]`
  }
  return undefined
}

/**
 * Checks inputs that already fit the model's own metadata against its declared signatures.
 * Returns undefined when they fit one (or none are declared), otherwise why they fit none:
 * the one reason for a single signature, each signature's first reason for several.
 */
export const check = (signatures: ReadonlyArray<Signature> | undefined, inputs: Tensor.TensorMap): string | undefined => {
  if (signatures === undefined || signatures.length === 0) return undefined
  const reasons: Array<string> = []
  for (const signature of signatures) {
    let reason: string | undefined
    for (const [name, constraint] of Object.entries(signature)) {
      const tensor = inputs[name]
      if (tensor === undefined) continue
      reason = breaks(name, constraint, tensor)
      if (reason !== undefined) break
    }
    if (reason === undefined) return undefined
    reasons.push(reason)
  }
  return reasons.length === 1
    ? `${reasons[0]} (the model's declared input signature)`
    : `the inputs fit none of the model's ${reasons.length} declared input signatures: ${reasons.map((r, i) => `[${i}] ${r}`).join("; ")}`
}
