/**
 * What a model takes and returns, read from its ONNX metadata, and the pure check of a
 * request's inputs against it (run before a request is queued).
 *
 * @module ModelMetadata
 */
import type * as BatchPolicy from "./BatchPolicy.ts"
import * as InferenceError from "./InferenceError.ts"
import * as InputSignature from "./InputSignature.ts"
import type * as Priority from "./Priority.ts"
import type * as Sequence from "./Sequence.ts"
import * as Tensor from "./Tensor.ts"
import type * as VersionPolicy from "./VersionPolicy.ts"
import type * as Warmup from "./Warmup.ts"

/** One input or output. A dim of -1 is dynamic (any size). */
export interface TensorSpec {
  readonly name: string
  readonly dtype: Tensor.DataType
  readonly dims: ReadonlyArray<number>
}

export interface ModelMetadata {
  readonly name: string
  readonly version: string
  readonly inputs: ReadonlyArray<TensorSpec>
  readonly outputs: ReadonlyArray<TensorSpec>
  /** Dynamic batching for this model; absent means off. */
  readonly batching?: BatchPolicy.BatchingConfig | undefined
  /**
   * Runs of this model that can go at once (its instances); absent means no limit. The engine
   * dispatches no more, so waiting requests wait in its priority queue, not in the pool's FIFO.
   */
  readonly concurrency?: number | undefined
  /**
   * Jobs the pool accepts for one instance at once (absent: 1). With 2, the engine hands an
   * instance its next batch while the current one runs, so the instance never idles while a job
   * crosses the thread boundary; the instance still runs one at a time.
   */
  readonly pipelineDepth?: number | undefined
  /**
   * The pool calls `RunOptions.onStart` when each run begins. One that pins a job to a busy
   * instance (pipelining) must: its jobs do not start in the order they were handed over, and the
   * engine would otherwise take the oldest ones for the running ones, withdraw a job that runs,
   * and let another model's run start beside it. Absent: the pool starts its jobs in that order.
   */
  readonly reportsStarts?: boolean | undefined
  /**
   * The pool stops a run that has begun when its caller is interrupted (process isolation: its
   * process is killed, after a grace), and the interruption returns once the run is over. The
   * engine then interrupts a run once every caller of it has left (cancelled, or past their
   * deadlines), so that no native run goes on for nobody. Absent: a begun run cannot be stopped,
   * and the engine lets it end (its result dropped).
   */
  readonly stopsAbandonedRuns?: boolean | undefined
  /**
   * Runs of this model its hardware executes at once (absent: `concurrency`): 1 where its
   * instances share one GPU, whose runs queue for it. Learned batch sizing predicts from it when
   * a run can start.
   */
  readonly devices?: number | undefined
  /**
   * The execution provider its sessions run on, as onnxruntime names it ("cpu", "webgpu"), after
   * any fall back at load; absent where the pool does not say.
   */
  readonly deviceUsed?: string | undefined
  /** The priority a server gives a request that names none; absent means Normal. */
  readonly defaultPriority?: Priority.Priority | undefined
  /**
   * The most of this version's requests that may wait at once (queued, or in a job sent ahead to
   * a busy instance), within the engine's `maxQueuedRequests`; absent: only that bound.
   */
  readonly maxQueuedRequests?: number | undefined
  /** Class labels by output, line i labelling class i (config.json `labels`), for Triton's classification extension. */
  readonly labels?: Readonly<Record<string, ReadonlyArray<string>>> | undefined
  /** The file each output's labels came from (config.json `labels` as written), as Triton's `label_filename` reports it. */
  readonly labelFiles?: Readonly<Record<string, string>> | undefined
  /** Which of the model's version directories are served (config.json `versionPolicy`); absent: all of them. */
  readonly versionPolicy?: VersionPolicy.VersionPolicy | undefined
  /** Answers of this version are kept in the engine's response cache, where it has one (config.json `responseCache`; `ResponseCache`). */
  readonly responseCache?: boolean | undefined
  /**
   * The state the engine keeps between the requests of a sequence (config.json
   * `sequenceBatching`, see `Sequence`): each request then names its sequence, sends no state
   * input and gets no state output. Absent: the model keeps nothing between requests.
   */
  readonly sequence?: Sequence.Resolved | undefined
  /** The warm-up runs each instance made before it served (config.json `warmup`); absent: none. */
  readonly warmup?: Warmup.Plan | undefined
  /** Declared alternatives the inputs must fit (config.json `inputSignatures`); absent means the ONNX signature alone. */
  readonly signatures?: ReadonlyArray<InputSignature.Signature> | undefined
}

/** Largest element count the engine accepts in one tensor (2^28 elements, 1 GiB of float32). */
export const maxElementsPerTensor = 2 ** 28

const invalid = (modelId: string, input: string | undefined, detail: string) =>
  new InferenceError.InvalidInput(input === undefined ? { modelId, detail } : { modelId, input, detail })


/**
 * Checks the shape of a tensor on its own: integer, non-negative dims, each of which and whose
 * product fit the element limit, and at least one element. A tensor with a zero-size dim is
 * refused: onnxruntime can abort the whole process on one (silero_vad does), so empty tensors
 * are never run. Cheap: it never looks at the data.
 */
export const checkDims = (modelId: string, name: string, dims: ReadonlyArray<number>): InferenceError.InvalidInput | undefined => {
  let count = 1
  for (const d of dims) {
    if (!Number.isInteger(d) || d < 0) return invalid(modelId, name, `dims ${Tensor.dimsText(dims)} must be non-negative integers`)
    // Each dim on its own too: a zero elsewhere makes the product small, not the tensor sane.
    count *= d
    if (d > maxElementsPerTensor || count > maxElementsPerTensor) {
      return invalid(modelId, name, `dims ${Tensor.dimsText(dims)} exceed the limit of ${maxElementsPerTensor} elements`)
    }
  }
  if (count === 0) {
    return invalid(modelId, name, `dims ${Tensor.dimsText(dims)} hold no elements: empty tensors are not run, because onnxruntime can abort the process on them`)
  }
  return undefined
}

const sameSpecs = (a: ReadonlyArray<TensorSpec>, b: ReadonlyArray<TensorSpec>): boolean =>
  a.length === b.length && a.every((spec, i) => {
    const other = b[i]!
    return spec.name === other.name && spec.dtype === other.dtype && spec.dims.length === other.dims.length &&
      spec.dims.every((d, axis) => d === other.dims[axis])
  })

/** What `sameSignature` compares. */
export type Signature = Pick<ModelMetadata, "inputs" | "outputs">

/**
 * Whether two metadata describe models that take the same inputs and give the same outputs
 * (names, dtypes and dims, in order): inputs validated against one may run on the other, and its
 * outputs answer them as the first promised.
 */
export const sameSignature = (a: Signature, b: Signature): boolean =>
  a === b || (sameSpecs(a.inputs, b.inputs) && sameSpecs(a.outputs, b.outputs))

/**
 * Checks `inputs` against the model: every declared input present, no unknown input, dtype,
 * rank and fixed dims equal, data length equal to the element count; then the model's declared
 * input signatures, if any (`InputSignature.check`).
 * Returns the first problem found, or undefined when the inputs fit.
 */
export const validateInputs = (metadata: ModelMetadata, inputs: Tensor.TensorMap): InferenceError.InvalidInput | undefined => {
  const modelId = metadata.name
  // The types rule these out; a caller in plain JavaScript, or with decoded JSON, may not.
  if (typeof inputs !== "object" || inputs === null) return invalid(modelId, undefined, `inputs must be an object of named tensors, not ${inputs === null ? "null" : typeof inputs}`)
  for (const name in inputs) {
    if (!Object.hasOwn(inputs, name)) continue
    if (!metadata.inputs.some((spec) => spec.name === name)) {
      return invalid(modelId, name, `unknown input; the model takes ${metadata.inputs.map((s) => s.name).join(", ")}`)
    }
  }
  for (const spec of metadata.inputs) {
    // Own properties only: an input named like an Object.prototype member ("constructor") is missing, not a function.
    const tensor = Object.hasOwn(inputs, spec.name) ? inputs[spec.name] : undefined
    if (tensor === undefined) return invalid(modelId, spec.name, "missing input")
    if (typeof tensor !== "object" || tensor === null || !Array.isArray(tensor.dims)) {
      return invalid(modelId, spec.name, "not a tensor: expected an object with dtype, dims (an array) and data (Tensor.make)")
    }
    if (tensor.dtype !== spec.dtype) return invalid(modelId, spec.name, `dtype ${tensor.dtype} given, the model takes ${spec.dtype}`)
    const bad = checkDims(modelId, spec.name, tensor.dims)
    if (bad !== undefined) return bad
    if (tensor.dims.length !== spec.dims.length) {
      return invalid(modelId, spec.name, `rank ${tensor.dims.length} given (dims ${Tensor.dimsText(tensor.dims)}), the model takes rank ${spec.dims.length} ${Tensor.dimsText(spec.dims)}`)
    }
    for (let axis = 0; axis < spec.dims.length; axis++) {
      const expected = spec.dims[axis]!
      if (expected >= 0 && tensor.dims[axis] !== expected) {
        return invalid(modelId, spec.name, `dim ${axis} is ${tensor.dims[axis]}, the model takes ${expected} (dims ${Tensor.dimsText(spec.dims)})`)
      }
    }
    if (!Tensor.dataMatches(tensor.dtype, tensor.data)) {
      return invalid(modelId, spec.name, `data is not the array type that holds ${tensor.dtype}`)
    }
    const count = Tensor.elementCount(tensor.dims)
    if (tensor.data.length !== count) {
      return invalid(modelId, spec.name, `data has ${tensor.data.length} elements, dims ${Tensor.dimsText(tensor.dims)} need ${count}`)
    }
    if (tensor.dtype === "string") {
      // What the edges refuse when they decode (a NUL, a lone surrogate), for library callers too.
      const strings = tensor.data as ReadonlyArray<unknown>
      for (let i = 0; i < strings.length; i++) {
        const element = strings[i]
        const problem = typeof element === "string" ? Tensor.stringElementProblem(element) : `is a ${element === null ? "null" : typeof element}, not a string`
        if (problem !== undefined) return invalid(modelId, spec.name, `element ${i} ${problem}`)
      }
    }
  }
  const refused = InputSignature.check(metadata.signatures, inputs)
  return refused === undefined ? undefined : invalid(modelId, undefined, refused)
}
