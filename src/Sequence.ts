/**
 * Sequences of a stateful model: Triton's sequence batcher with implicit state, written in a
 * model's `config.json` as `sequenceBatching`. A stateful model (an RNN, Silero VAD) takes its
 * state as an input and gives the next state as an output; without this, every client carries the
 * state from one answer to its next request. With it, the server keeps each sequence's state:
 *
 * ```json
 * { "sequenceBatching": {
 *   "maxSequenceIdleMs": 1000,
 *   "maxSequences": 1024,
 *   "state": [ { "input": "state", "output": "stateN", "dims": [2, 1, 128] } ]
 * } }
 * ```
 *
 * - Each request names its sequence (`sequence_id`: a positive integer or non-empty text) and
 *   sets `sequence_start` on its first request and `sequence_end` on its last, as Triton's
 *   clients do. The client sends neither state input nor asks for a state output: the engine
 *   adds the sequence's state to the request (the initial state on a start) and keeps the state
 *   outputs of its answer for the next request, which it does not return.
 * - `state[].dims`: the state's whole shape for one sequence; without it, the model's dims with 1
 *   for each dynamic dim. A sequence starts from zeros (Triton's `zero_data` initial state).
 * - `maxSequenceIdleMs` (Triton's `max_sequence_idle_microseconds`; default 1000): a sequence
 *   with no request for that long is dropped, and its next request must start again.
 *   `maxSequences` (default 1024): the most sequences of the model version at once; a start
 *   beyond them is refused as a full queue (retryable) until one ends or goes idle.
 * - Pure: the config, the checks of a model and of a request, no clock, no state; the sequences
 *   themselves live in the engine (`SequenceTable`).
 *
 * @module Sequence
 */
import * as Tensor from "./Tensor.ts"

/** A sequence's id, as Triton's `sequence_id`: a positive integer or non-empty text (0 and "" mean none). */
export type Id = number | string

/** A request's place in its sequence (Triton's `sequence_id`, `sequence_start`, `sequence_end`). */
export interface Flags {
  readonly id: Id
  /** The sequence's first request: its state starts from zeros (an ongoing one of that id starts over). */
  readonly start?: boolean | undefined
  /** The sequence's last request: once it succeeds, the sequence is gone. */
  readonly end?: boolean | undefined
}

/** The longest text id, in UTF-16 units. */
export const maxIdLength = 256

/** The default `maxSequenceIdleMs`: Triton's one second. */
export const defaultMaxSequenceIdleMs = 1_000

/** The default `maxSequences`. */
export const defaultMaxSequences = 1_024

/** The largest `maxSequences`. */
export const maxMaxSequences = 1_000_000

/** The largest state one sequence may keep, in bytes, all its state tensors together. */
export const maxStateBytes = 16 * 1024 * 1024

/** One state tensor as config.json writes it. */
export interface StateConfig {
  readonly input: string
  readonly output: string
  readonly dims: ReadonlyArray<number> | undefined
}

/** `sequenceBatching` decoded (`fromJson`). */
export interface Config {
  readonly maxSequenceIdleMs: number
  readonly maxSequences: number
  readonly states: ReadonlyArray<StateConfig>
}

/** One state tensor of a loaded model: what the engine adds to a request, and the output it keeps. */
export interface State {
  readonly input: string
  readonly output: string
  /** The state of a sequence that starts (zeros): never mutated, never moved (the engine copies what a run may move). */
  readonly initial: Tensor.Tensor
}

/** `Config` checked against a loaded model (`resolve`): the model's metadata carries it. */
export interface Resolved {
  readonly maxSequenceIdleMs: number
  readonly maxSequences: number
  readonly states: ReadonlyArray<State>
  /** Each state's initial tensor by input name: a new sequence's first state, and admission's check of a request's inputs (shared: never mutated). */
  readonly initialInputs: Tensor.TensorMap
  /**
   * The states' names, dtypes and dims: a reload of the model that keeps them keeps its
   * sequences going (their state still fits); one that changes them ends them.
   */
  readonly shape: string
}

const isObject = (v: unknown): v is Readonly<Record<string, unknown>> => typeof v === "object" && v !== null && !Array.isArray(v)

const isIntIn = (v: unknown, min: number, max: number): v is number => Number.isInteger(v) && (v as number) >= min && (v as number) <= max

const configKeys = ["maxSequenceIdleMs", "maxSequences", "state"]
const stateKeys = ["input", "output", "dims"]

const unknownKey = (at: string, o: Readonly<Record<string, unknown>>, known: ReadonlyArray<string>): string | undefined => {
  const extra = Object.keys(o).find((k) => !known.includes(k))
  return extra === undefined ? undefined : `${at} has unknown key ${JSON.stringify(extra)} (known: ${known.map((k) => JSON.stringify(k)).join(", ")})`
}

const stateProblem = (at: string, state: unknown): string | undefined => {
  if (!isObject(state)) return `${at} must be an object with "input" and "output"`
  const extra = unknownKey(at, state, stateKeys)
  if (extra !== undefined) return extra
  for (const key of ["input", "output"] as const) {
    const name = state[key]
    if (typeof name !== "string" || name.length === 0) return `${at}.${key} must name one of the model's ${key}s`
  }
  const dims = state["dims"]
  if (dims !== undefined && (!Array.isArray(dims) || dims.length > 32 || !dims.every((d) => isIntIn(d, 1, 2 ** 31 - 1)))) {
    return `${at}.dims must be a list of at most 32 integers from 1 to ${2 ** 31 - 1} (the state's whole shape for one sequence)`
  }
  return undefined
}

/** What is wrong with config.json's `sequenceBatching`, on one line, or undefined. */
export const problem = (json: unknown): string | undefined => {
  const at = "sequenceBatching"
  if (!isObject(json)) return `${at} must be an object with "state"`
  const extra = unknownKey(at, json, configKeys)
  if (extra !== undefined) return extra
  const { maxSequenceIdleMs, maxSequences, state } = json
  if (maxSequenceIdleMs !== undefined && !isIntIn(maxSequenceIdleMs, 1, 86_400_000)) return `${at}.maxSequenceIdleMs must be an integer from 1 to 86400000 (a day)`
  if (maxSequences !== undefined && !isIntIn(maxSequences, 1, maxMaxSequences)) return `${at}.maxSequences must be an integer from 1 to ${maxMaxSequences}`
  if (!Array.isArray(state) || state.length === 0 || state.length > 64) return `${at}.state must list 1 to 64 state tensors ({"input", "output"})`
  for (let i = 0; i < state.length; i++) {
    const p = stateProblem(`${at}.state[${i}]`, state[i])
    if (p !== undefined) return p
  }
  for (const key of ["input", "output"] as const) {
    const names = state.map((s: Readonly<Record<string, unknown>>) => s[key] as string)
    const twice = names.find((n, i) => names.indexOf(n) !== i)
    if (twice !== undefined) return `${at}.state names the ${key} ${JSON.stringify(twice)} twice`
  }
  return undefined
}

/** `json` decoded (`problem(json)` undefined), defaults filled in. */
export const fromJson = (json: unknown): Config => {
  const o = json as Readonly<Record<string, unknown>>
  return {
    maxSequenceIdleMs: (o["maxSequenceIdleMs"] as number | undefined) ?? defaultMaxSequenceIdleMs,
    maxSequences: (o["maxSequences"] as number | undefined) ?? defaultMaxSequences,
    states: (o["state"] as ReadonlyArray<Readonly<Record<string, unknown>>>).map((s) => ({
      input: s["input"] as string,
      output: s["output"] as string,
      dims: s["dims"] as ReadonlyArray<number> | undefined
    }))
  }
}

/** A model's inputs and outputs as the session reports them (dims: -1 where dynamic). */
export interface Signature {
  readonly inputs: ReadonlyArray<TensorSpec>
  readonly outputs: ReadonlyArray<TensorSpec>
}

/** One input or output (`ModelMetadata.TensorSpec`). */
export interface TensorSpec {
  readonly name: string
  readonly dtype: Tensor.DataType
  readonly dims: ReadonlyArray<number>
}

const fits = (dims: ReadonlyArray<number>, model: ReadonlyArray<number>): boolean =>
  dims.length === model.length && model.every((d, i) => d < 0 || d === dims[i])

/**
 * `config` checked against a loaded model: each state names an input and an output the model
 * has, of one numeric dtype, whose dims `dims` fit (rank, fixed dims); the initial state built.
 * Returns the reason it does not fit (`sequenceBatching.state[0]: …`) otherwise.
 */
export const resolve = (config: Config, model: Signature): Resolved | string => {
  const states: Array<State> = []
  let bytes = 0
  for (let i = 0; i < config.states.length; i++) {
    const state = config.states[i]!
    const at = `sequenceBatching.state[${i}]`
    const input = model.inputs.find((s) => s.name === state.input)
    if (input === undefined) return `${at}.input: the model has no input ${JSON.stringify(state.input)} (its inputs: ${model.inputs.map((s) => s.name).join(", ")})`
    const output = model.outputs.find((s) => s.name === state.output)
    if (output === undefined) return `${at}.output: the model has no output ${JSON.stringify(state.output)} (its outputs: ${model.outputs.map((s) => s.name).join(", ")})`
    if (input.dtype === "string") return `${at}.input: ${JSON.stringify(input.name)} is a string tensor; a state must be numeric`
    if (output.dtype !== input.dtype) return `${at}: input ${JSON.stringify(input.name)} is ${input.dtype}, output ${JSON.stringify(output.name)} ${output.dtype}; the output must be the next value of the input`
    const dims = state.dims ?? input.dims.map((d) => (d < 0 ? 1 : d))
    if (!fits(dims, input.dims)) return `${at}.dims ${Tensor.dimsText(dims)} do not fit input ${JSON.stringify(input.name)} ${Tensor.dimsText(input.dims)}`
    if (!fits(dims, output.dims)) return `${at}.dims ${Tensor.dimsText(dims)} do not fit output ${JSON.stringify(output.name)} ${Tensor.dimsText(output.dims)}`
    bytes += Tensor.elementCount(dims) * Tensor.bytesPerElement(input.dtype)!
    if (bytes > maxStateBytes) return `${at}: the states of one sequence come to ${bytes} bytes, more than ${maxStateBytes}`
    states.push({ input: input.name, output: output.name, initial: Tensor.make(input.dtype, Tensor.allocate(input.dtype, Tensor.elementCount(dims)), dims) })
  }
  const shape = states.map((s) => `${s.input}>${s.output}:${s.initial.dtype}${Tensor.dimsText(s.initial.dims)}`).join(";")
  const initialInputs = Object.fromEntries(states.map((s) => [s.input, s.initial]))
  return { maxSequenceIdleMs: config.maxSequenceIdleMs, maxSequences: config.maxSequences, states, initialInputs, shape }
}

/** Whether `name` is one of the state inputs (never sent by a client). */
export const isStateInput = (sequence: Resolved | undefined, name: string): boolean =>
  sequence !== undefined && sequence.states.some((s) => s.input === name)

/** Whether `name` is one of the state outputs (kept by the engine, never answered). */
export const isStateOutput = (sequence: Resolved | undefined, name: string): boolean =>
  sequence !== undefined && sequence.states.some((s) => s.output === name)

/** The model's inputs a client sends: all but the state inputs. */
export const clientInputs = <S extends TensorSpec>(model: { readonly inputs: ReadonlyArray<S>; readonly sequence?: Resolved | undefined }): ReadonlyArray<S> =>
  model.sequence === undefined ? model.inputs : model.inputs.filter((s) => !isStateInput(model.sequence, s.name))

/** The model's outputs a client gets: all but the state outputs. */
export const clientOutputs = <S extends TensorSpec>(model: { readonly outputs: ReadonlyArray<S>; readonly sequence?: Resolved | undefined }): ReadonlyArray<S> =>
  model.sequence === undefined ? model.outputs : model.outputs.filter((s) => !isStateOutput(model.sequence, s.name))

/** What is wrong with a request's sequence flags as given (a caller in plain JavaScript, or an edge's parameters), or undefined. */
export const flagsProblem = (flags: unknown): string | undefined => {
  if (!isObject(flags)) return `sequence must be an object {id, start?, end?}`
  const { id, start, end } = flags
  if (typeof id === "number") {
    if (!Number.isSafeInteger(id) || id < 1) return `sequence id ${id} must be a positive integer below 2^53 (or non-empty text)`
  } else if (typeof id === "string") {
    if (id.length === 0 || id.length > maxIdLength) return `sequence id must be text of 1 to ${maxIdLength} characters (or a positive integer)`
  } else {
    return `sequence id must be a positive integer or non-empty text, not ${id === null ? "null" : typeof id}`
  }
  if (start !== undefined && typeof start !== "boolean") return `sequence start must be a boolean`
  if (end !== undefined && typeof end !== "boolean") return `sequence end must be a boolean`
  return undefined
}

/** The key of a sequence within its model version: an integer id and the same digits as text are two sequences, as in Triton. */
export const keyOf = (id: Id): string => (typeof id === "number" ? `#${id}` : `'${id}`)

/** How an id is written in a message. */
export const idText = (id: Id): string => (typeof id === "number" ? String(id) : JSON.stringify(id))

/**
 * The request's inputs with `states` added (the sequence's, by input name): a new map, the
 * caller's left as it is. Own keys whatever the names.
 */
export const withStates = (inputs: Tensor.TensorMap, states: Tensor.TensorMap): Tensor.TensorMap => {
  const out: Record<string, Tensor.Tensor> = {}
  for (const name in inputs) if (Object.hasOwn(inputs, name)) setOwn(out, name, inputs[name]!)
  for (const name in states) if (Object.hasOwn(states, name)) setOwn(out, name, states[name]!)
  return out
}

/** `target[name] = value` as an own property, "__proto__" too (which plain assignment would take as the prototype). */
export const setOwn = <A>(target: Record<string, A>, name: string, value: A): void => {
  if (name === "__proto__") Object.defineProperty(target, name, { value, enumerable: true, writable: true, configurable: true })
  else target[name] = value
}

/** A copy of a state tensor, in a buffer of its own (a run may move it; an output may be a view of a batch's). */
export const copyState = (tensor: Tensor.Tensor): Tensor.Tensor => {
  const data = tensor.data as Exclude<Tensor.TensorData, ReadonlyArray<string>>
  return Tensor.make(tensor.dtype, data.slice() as Tensor.TensorData, [...tensor.dims])
}
