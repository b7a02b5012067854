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
 *   for each dynamic dim. A sequence starts from zeros (Triton's `zero_data` initial state), or
 *   with `"initialState": {"file": name}` from a file of the model's `initial_state/` directory
 *   (Triton's `data_file`): the state's raw little-endian elements, exactly its size. The scan
 *   reads the file (`ModelRepository`); `resolve` checks its size against the state's.
 * - `control` (Triton's `control_input`): inputs the engine sets on each request for a model that
 *   wants to know where a request stands in its sequence: `{"input": "START", "kind": "start"}`
 *   (1 on a sequence's first request, else 0), `"end"` (1 on its last), `"ready"` (always 1: a
 *   request is there) and `"corrid"` (the sequence's id: an integer for a numeric input, text for
 *   a string one). One element each, of the input's dtype (bool, integer or float: false 0,
 *   true 1). A model may have controls and no state.
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
import * as FileName from "./internal/FileName.ts"

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

/** The directory of a model's initial state files, in its directory (Triton's). */
export const initialStateDirectory = "initial_state"

/**
 * A state's initial value from a file of the model's `initial_state/` directory (Triton's
 * `initial_state.data_file`): `bytes` and `identity` (a digest of them, so that a changed file is a
 * changed model for a poll) once the scan has read it.
 */
export interface InitialFile {
  readonly name: string
  readonly bytes?: Uint8Array | undefined
  readonly identity?: string | undefined
}

/** One state tensor as config.json writes it. */
export interface StateConfig {
  readonly input: string
  readonly output: string
  readonly dims: ReadonlyArray<number> | undefined
  /** Its initial value from a file; absent: zeros. */
  readonly initialFile?: InitialFile | undefined
}

/** What a control input tells the model (Triton's `CONTROL_SEQUENCE_*`). */
export type ControlKind = "start" | "end" | "ready" | "corrid"

export const controlKinds: ReadonlyArray<ControlKind> = ["start", "end", "ready", "corrid"]

/** A control input as config.json writes it. */
export interface ControlConfig {
  readonly input: string
  readonly kind: ControlKind
}

/** `sequenceBatching` decoded (`fromJson`). */
export interface Config {
  readonly maxSequenceIdleMs: number
  readonly maxSequences: number
  readonly states: ReadonlyArray<StateConfig>
  readonly controls?: ReadonlyArray<ControlConfig> | undefined
}

/** A control input of a loaded model: its dtype and dims (one element). */
export interface Control {
  readonly input: string
  readonly kind: ControlKind
  readonly dtype: Tensor.DataType
  readonly dims: ReadonlyArray<number>
}

/** One state tensor of a loaded model: what the engine adds to a request, and the output it keeps. */
export interface State {
  readonly input: string
  readonly output: string
  /** The state of a sequence that starts (zeros, or its file's): never mutated, never moved (the engine copies what a run may move). */
  readonly initial: Tensor.Tensor
  /** The file of `initial_state/` it was read from; undefined: zeros. */
  readonly initialFile?: string | undefined
}

/** `Config` checked against a loaded model (`resolve`): the model's metadata carries it. */
export interface Resolved {
  readonly maxSequenceIdleMs: number
  readonly maxSequences: number
  readonly states: ReadonlyArray<State>
  readonly controls: ReadonlyArray<Control>
  /** Each state's initial tensor by input name: a new sequence's first state (shared: never mutated). */
  readonly initialStates: Tensor.TensorMap
  /** The initial states and a zero of each control input: what admission checks a request's inputs with (shared: never mutated). */
  readonly initialInputs: Tensor.TensorMap
  /**
   * The states' names, dtypes and dims: a reload of the model that keeps them keeps its
   * sequences going (their state still fits); one that changes them ends them.
   */
  readonly shape: string
}

const isObject = (v: unknown): v is Readonly<Record<string, unknown>> => typeof v === "object" && v !== null && !Array.isArray(v)

const isIntIn = (v: unknown, min: number, max: number): v is number => Number.isInteger(v) && (v as number) >= min && (v as number) <= max

const configKeys = ["maxSequenceIdleMs", "maxSequences", "state", "control"]
const controlKeys = ["input", "kind"]
const stateKeys = ["input", "output", "dims", "initialState"]

const fileNameProblem = (at: string, name: unknown): string | undefined => FileName.problem(at, name, initialStateDirectory)

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
  const initial = state["initialState"]
  if (initial === undefined || initial === "zero") return undefined
  if (isObject(initial) && Object.keys(initial).length === 1 && "file" in initial) return fileNameProblem(`${at}.initialState.file`, initial["file"])
  return `${at}.initialState must be "zero" (the default) or {"file": name}`
}

/** What is wrong with config.json's `sequenceBatching`, on one line, or undefined. */
export const problem = (json: unknown): string | undefined => {
  const at = "sequenceBatching"
  if (!isObject(json)) return `${at} must be an object with "state", "control" or both`
  const extra = unknownKey(at, json, configKeys)
  if (extra !== undefined) return extra
  const { maxSequenceIdleMs, maxSequences, state } = json
  if (maxSequenceIdleMs !== undefined && !isIntIn(maxSequenceIdleMs, 1, 86_400_000)) return `${at}.maxSequenceIdleMs must be an integer from 1 to 86400000 (a day)`
  if (maxSequences !== undefined && !isIntIn(maxSequences, 1, maxMaxSequences)) return `${at}.maxSequences must be an integer from 1 to ${maxMaxSequences}`
  const control = json["control"]
  if (state === undefined && control === undefined) return `${at} must list its "state" tensors, its "control" inputs, or both`
  if (state !== undefined && (!Array.isArray(state) || state.length === 0 || state.length > 64)) return `${at}.state must list 1 to 64 state tensors ({"input", "output"})`
  const states = (state ?? []) as ReadonlyArray<unknown>
  for (let i = 0; i < states.length; i++) {
    const p = stateProblem(`${at}.state[${i}]`, states[i])
    if (p !== undefined) return p
  }
  for (const key of ["input", "output"] as const) {
    const names = states.map((s) => (s as Readonly<Record<string, unknown>>)[key] as string)
    const twice = names.find((n, i) => names.indexOf(n) !== i)
    if (twice !== undefined) return `${at}.state names the ${key} ${JSON.stringify(twice)} twice`
  }
  if (control !== undefined) {
    if (!Array.isArray(control) || control.length === 0 || control.length > controlKinds.length) return `${at}.control must list 1 to ${controlKinds.length} control inputs ({"input", "kind"})`
    for (let i = 0; i < control.length; i++) {
      const c = control[i] as unknown
      const where = `${at}.control[${i}]`
      if (!isObject(c)) return `${where} must be an object with "input" and "kind"`
      const extraKey = unknownKey(where, c, controlKeys)
      if (extraKey !== undefined) return extraKey
      if (typeof c["input"] !== "string" || c["input"].length === 0) return `${where}.input must name one of the model's inputs`
      if (!controlKinds.includes(c["kind"] as ControlKind)) return `${where}.kind must be one of ${controlKinds.map((k) => JSON.stringify(k)).join(", ")}`
    }
    for (const key of ["input", "kind"] as const) {
      const names = control.map((c: Readonly<Record<string, unknown>>) => c[key] as string)
      const twice = names.find((n, i) => names.indexOf(n) !== i)
      if (twice !== undefined) return `${at}.control names the ${key} ${JSON.stringify(twice)} twice`
    }
    const shared = control.map((c: Readonly<Record<string, unknown>>) => c["input"] as string).find((name) => states.some((s) => (s as Readonly<Record<string, unknown>>)["input"] === name))
    if (shared !== undefined) return `${at}: ${JSON.stringify(shared)} is both a state and a control input`
  }
  return undefined
}

/** `json` decoded (`problem(json)` undefined), defaults filled in. */
export const fromJson = (json: unknown): Config => {
  const o = json as Readonly<Record<string, unknown>>
  return {
    maxSequenceIdleMs: (o["maxSequenceIdleMs"] as number | undefined) ?? defaultMaxSequenceIdleMs,
    maxSequences: (o["maxSequences"] as number | undefined) ?? defaultMaxSequences,
    states: ((o["state"] ?? []) as ReadonlyArray<Readonly<Record<string, unknown>>>).map((s) => {
      const initial = s["initialState"]
      return {
        input: s["input"] as string,
        output: s["output"] as string,
        dims: s["dims"] as ReadonlyArray<number> | undefined,
        ...(typeof initial === "object" && initial !== null ? { initialFile: { name: (initial as { readonly file: string }).file } } : {})
      }
    }),
    ...(o["control"] === undefined
      ? {}
      : { controls: (o["control"] as ReadonlyArray<Readonly<Record<string, unknown>>>).map((c) => ({ input: c["input"] as string, kind: c["kind"] as ControlKind })) })
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
    const stateBytes = Tensor.elementCount(dims) * Tensor.bytesPerElement(input.dtype)!
    bytes += stateBytes
    if (bytes > maxStateBytes) return `${at}: the states of one sequence come to ${bytes} bytes, more than ${maxStateBytes}`
    const data = Tensor.allocate(input.dtype, Tensor.elementCount(dims)) as Exclude<Tensor.TensorData, ReadonlyArray<string>>
    const file = state.initialFile
    if (file !== undefined) {
      const what = `${at}.initialState: ${initialStateDirectory}/${file.name}`
      if (file.bytes === undefined) return `${what} was not read`
      if (file.bytes.length !== stateBytes) return `${what} has ${file.bytes.length} bytes; the state ${Tensor.dimsText(dims)} ${input.dtype} takes ${stateBytes}`
      new Uint8Array(data.buffer, data.byteOffset, data.byteLength).set(file.bytes)
    }
    states.push({
      input: input.name,
      output: output.name,
      initial: Tensor.make(input.dtype, data, dims),
      ...(file === undefined ? {} : { initialFile: file.name })
    })
  }
  const controls: Array<Control> = []
  for (let i = 0; i < (config.controls ?? []).length; i++) {
    const control = config.controls![i]!
    const at = `sequenceBatching.control[${i}]`
    const input = model.inputs.find((s) => s.name === control.input)
    if (input === undefined) return `${at}.input: the model has no input ${JSON.stringify(control.input)} (its inputs: ${model.inputs.map((s) => s.name).join(", ")})`
    const dims = input.dims.map((d) => (d < 0 ? 1 : d))
    if (Tensor.elementCount(dims) !== 1) return `${at}.input: ${JSON.stringify(input.name)} ${Tensor.dimsText(input.dims)} holds more than one element; a control input holds one`
    const allowed = control.kind === "corrid" ? corridTypes : flagTypes
    if (!allowed.includes(input.dtype)) return `${at}.input: ${JSON.stringify(input.name)} is ${input.dtype}; a ${control.kind} control input is ${allowed.join(", ")}`
    controls.push({ input: input.name, kind: control.kind, dtype: input.dtype, dims })
  }
  const shape = states.map((s) => `${s.input}>${s.output}:${s.initial.dtype}${Tensor.dimsText(s.initial.dims)}`).join(";")
  const initialStates = Object.fromEntries(states.map((s) => [s.input, s.initial]))
  const initialInputs = Object.fromEntries([
    ...states.map((s) => [s.input, s.initial] as const),
    ...controls.map((c) => [c.input, Tensor.make(c.dtype, Tensor.allocate(c.dtype, 1), c.dims)] as const)
  ])
  return { maxSequenceIdleMs: config.maxSequenceIdleMs, maxSequences: config.maxSequences, states, controls, initialStates, initialInputs, shape }
}

const flagTypes: ReadonlyArray<Tensor.DataType> = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"]
const corridTypes: ReadonlyArray<Tensor.DataType> = ["int32", "int64", "uint32", "uint64", "string"]

/** A one-element tensor of `dtype` holding `value` (0 or 1, an id). */
const scalar = (control: Control, value: number | string): Tensor.Tensor => {
  const data = Tensor.allocate(control.dtype, 1) as unknown as { [i: number]: unknown }
  data[0] = control.dtype === "string"
    ? String(value)
    : control.dtype === "int64" || control.dtype === "uint64"
    ? BigInt(value)
    : control.dtype === "float16"
    ? (value === 1 ? 0x3c00 : 0)
    : value
  return Tensor.make(control.dtype, data as unknown as Tensor.TensorData, control.dims)
}

/**
 * The control inputs of one request of a sequence (`Resolved.controls`): start (1 on the
 * sequence's first request), end, ready (1), corrid (the id). `flagsProblem` and `corridProblem`
 * said undefined.
 */
export const controlInputs = (sequence: Resolved, flags: Flags): Tensor.TensorMap => {
  const out: Record<string, Tensor.Tensor> = {}
  for (const control of sequence.controls) {
    const value = control.kind === "start" ? (flags.start === true ? 1 : 0) : control.kind === "end" ? (flags.end === true ? 1 : 0) : control.kind === "ready" ? 1 : flags.id
    setOwn(out, control.input, scalar(control, value))
  }
  return out
}

/** Why `id` cannot be the model's corrid control input (a text id for a numeric one, a number past its range), or undefined. */
export const corridProblem = (sequence: Resolved, id: Id): string | undefined => {
  const corrid = sequence.controls.find((c) => c.kind === "corrid")
  if (corrid === undefined || corrid.dtype === "string") return undefined
  if (typeof id === "string") {
    return `the model takes the sequence id as its ${corrid.dtype} input ${JSON.stringify(corrid.input)}: sequence_id must be an integer below 2^53, not text (nor a gRPC integer past 2^53, kept as text)`
  }
  const max = corrid.dtype === "int32" ? 2 ** 31 - 1 : corrid.dtype === "uint32" ? 2 ** 32 - 1 : Number.MAX_SAFE_INTEGER
  return id > max ? `sequence_id ${id} does not fit the model's ${corrid.dtype} input ${JSON.stringify(corrid.input)}` : undefined
}

/** Whether `name` is one of the state or control inputs (the engine's to set, never sent by a client). */
export const isServerInput = (sequence: Resolved | undefined, name: string): boolean =>
  sequence !== undefined && (sequence.states.some((s) => s.input === name) || sequence.controls.some((c) => c.input === name))

/** Whether `name` is one of the state outputs (kept by the engine, never answered). */
export const isStateOutput = (sequence: Resolved | undefined, name: string): boolean =>
  sequence !== undefined && sequence.states.some((s) => s.output === name)

/** The model's inputs a client sends: all but the state and control inputs. */
export const clientInputs = <S extends TensorSpec>(model: { readonly inputs: ReadonlyArray<S>; readonly sequence?: Resolved | undefined }): ReadonlyArray<S> =>
  model.sequence === undefined ? model.inputs : model.inputs.filter((s) => !isServerInput(model.sequence, s.name))

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

/**
 * A client's `inputs` as the model will run them, for checking them against its signature: with
 * the initial state and a zero of each control in the places the engine fills (same dtypes and
 * dims); `inputs` themselves for a model without sequences.
 */
export const asRun = (sequence: Resolved | undefined, inputs: Tensor.TensorMap): Tensor.TensorMap =>
  sequence === undefined ? inputs : withStates(inputs, sequence.initialInputs)

/** A copy of a state tensor, in a buffer of its own (a run may move it; an output may be a view of a batch's). */
export const copyState = (tensor: Tensor.Tensor): Tensor.Tensor => {
  const data = tensor.data as Exclude<Tensor.TensorData, ReadonlyArray<string>>
  return Tensor.make(tensor.dtype, data.slice() as Tensor.TensorData, [...tensor.dims])
}
