/**
 * Triton's model configuration extension: a model's configuration in Triton's form
 * (`model_config.proto`), as `GET /v2/models/{name}[/versions/{v}]/config` and gRPC
 * `ModelConfig` answer it. The same object serves both: JSON for HTTP, the `ModelConfig`
 * message for gRPC (enums as their names).
 *
 * - `max_batch_size`: the model's batching limit, 0 when it does not batch; when it is above 0,
 *   `dims` leave out the batch dimension, as Triton writes them. Triton's form cannot say that a
 *   tensor is batched on another axis than its first, or not at all (Silero VAD's `state` and
 *   `sr`): for such a model `max_batch_size` is 0 and every tensor lists all its dims, which is
 *   what a Triton client must send (the engine still batches it).
 * - `instance_group`: one group of the model's instances: `KIND_GPU` on GPU 0 where its sessions
 *   run on a GPU provider (`ModelMetadata.deviceUsed`; after a fall back to the CPU, `KIND_CPU`),
 *   else `KIND_CPU`.
 * - `dynamic_batching`: always present, because the engine's priority levels and queue policy
 *   live there in Triton's schema: `preferred_batch_size` and `max_queue_delay_microseconds` of
 *   the model's batching (empty and 0 when it does not batch), `priority_levels` 4,
 *   `default_priority_level` the model's default, `default_queue_policy` the engine's queue
 *   bound and queue timeout.
 *
 * @module ModelConfiguration
 */
import { Duration } from "effect"
import type { AsyncConfig } from "../AsyncConfig.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import * as ModelRepository from "../ModelRepository.ts"
import * as Priority from "../Priority.ts"
import * as Sequence from "../Sequence.ts"
import * as VersionPolicy from "../VersionPolicy.ts"
import * as Warmup from "../Warmup.ts"
import * as Oip from "./Oip.ts"

/** Triton's `DataType` enum name of a tensor's dtype. */
export const tritonDataType = (spec: ModelMetadata.TensorSpec): string => {
  const datatype = Oip.datatypeOf[spec.dtype]
  return datatype === "BYTES" ? "TYPE_STRING" : `TYPE_${datatype}`
}

/**
 * Whole microseconds; 0 for none, or a duration too long for a uint64 of them (infinite, or
 * 1e308 ms, whose microseconds are not finite: JSON wrote null, gRPC 2^64 - 1). A positive one
 * is at least 1: below half a microsecond it rounded to 0, which reads as no timeout.
 */
const micros = (d: Duration.Duration) => {
  const us = Duration.toMillis(d) * 1000
  return Number.isFinite(us) && us < 2 ** 64 ? (us > 0 ? Math.max(1, Math.round(us)) : 0) : 0
}

/** The model's instances as Triton's one instance group: on GPU 0 when its sessions run on the GPU. */
const instanceGroup = (metadata: ModelMetadata.ModelMetadata) => {
  const count = metadata.concurrency ?? 1
  return metadata.deviceUsed !== undefined && ModelRepository.isGpuProvider(metadata.deviceUsed)
    ? { name: metadata.name, kind: "KIND_GPU", count, gpus: [0] }
    : { name: metadata.name, kind: "KIND_CPU", count }
}

/**
 * config.json's warm-up samples in Triton's form (`ModelWarmup`): per input its `data_type`, the
 * shape it ran with (`Warmup.shapeOf`) and `zero_data`, `random_data` or `input_data_file`; a `fill` value, which
 * Triton's form cannot say, leaves the data kind out. Where the configuration writes dims without
 * the batch dim (`leadingBatch`), so does each input here, and `batch_size` is the rows the runs
 * had (`Warmup.rows`); else `batch_size` is 1 and the dims whole, as Triton's for
 * a model without an implicit batch dim.
 */
const modelWarmup = (plan: Warmup.Plan, inputs: ReadonlyArray<ModelMetadata.TensorSpec>, leadingBatch: boolean) =>
  plan.samples.map((sample) => {
    // The load made these same tensors from this same plan and signature: a misfit failed it then.
    const shapes = inputs.map((spec) => Warmup.shapeOf(sample, spec, Warmup.axisOf(plan.inputAxes, spec.name)))
    return {
      name: sample.name,
      batch_size: leadingBatch ? Warmup.rows(sample, inputs, plan.inputAxes) : 1,
      inputs: Object.fromEntries(inputs.map((spec, i) => {
        const data: Warmup.Data = Object.hasOwn(sample.inputs, spec.name) ? sample.inputs[spec.name]!.data : { _tag: "Zero" }
        return [spec.name, {
          data_type: tritonDataType(spec),
          dims: leadingBatch ? shapes[i]!.slice(1) : shapes[i]!,
          ...(data._tag === "Zero" ? { zero_data: true } : data._tag === "Random" ? { random_data: true } : data._tag === "File" ? { input_data_file: data.name } : {})
        }]
      })),
      count: sample.count
    }
  })

/** The configuration of a model, in Triton's form. */
export const of = (metadata: ModelMetadata.ModelMetadata, engine: AsyncConfig) => {
  const batching = metadata.batching?.enabled === true ? metadata.batching : undefined
  const onFirstAxis = (axes: Readonly<Record<string, number | null>>) => Object.values(axes).every((axis) => axis === 0)
  // Triton's implicit batch dim is every tensor's first: a model batched otherwise is described unbatched.
  const leadingBatch = batching !== undefined && onFirstAxis(batching.inputAxes) && onFirstAxis(batching.outputAxes)
  const tensor = (spec: ModelMetadata.TensorSpec) => {
    const dims = leadingBatch ? spec.dims.slice(1) : spec.dims
    return { name: spec.name, data_type: tritonDataType(spec), dims: dims.map((d) => (d < 0 ? -1 : d)) }
  }
  return {
    name: metadata.name,
    platform: Oip.platformName,
    backend: "onnxruntime",
    // config.json's versionPolicy; without one every version directory is served (the highest ready one by default)
    version_policy: VersionPolicy.toTriton(metadata.versionPolicy ?? VersionPolicy.all),
    max_batch_size: leadingBatch ? batching.maxBatchSize : 0,
    // a stateful model's state tensors are in sequence_batching.state, as Triton lists them
    input: Sequence.clientInputs(metadata).map(tensor),
    // Triton's label_filename, where config.json names one (classification answers carry the labels).
    output: Sequence.clientOutputs(metadata).map((spec) => {
      const labelFile = metadata.labelFiles?.[spec.name]
      return labelFile === undefined ? tensor(spec) : { ...tensor(spec), label_filename: labelFile }
    }),
    instance_group: [instanceGroup(metadata)],
    ...(metadata.warmup === undefined ? {} : { model_warmup: modelWarmup(metadata.warmup, metadata.inputs, leadingBatch) }),
    // config.json's responseCache; the engine keeps answers only when the server has a cache (--cache-config)
    response_cache: { enable: metadata.responseCache === true },
    ...scheduling(metadata, engine, batching, leadingBatch)
  }
}

/** Triton's scheduling choice: a stateful model's sequence batcher, else the dynamic batcher (one of the two). */
const scheduling = (
  metadata: ModelMetadata.ModelMetadata,
  engine: AsyncConfig,
  batching: ModelMetadata.ModelMetadata["batching"],
  leadingBatch: boolean
): { dynamic_batching?: ReturnType<typeof dynamicBatching>; sequence_batching?: ReturnType<typeof sequenceBatching> } =>
  metadata.sequence === undefined
    ? { dynamic_batching: dynamicBatching(metadata, engine, batching) }
    : { sequence_batching: sequenceBatching(metadata.sequence, batching, leadingBatch) }

/**
 * A stateful model's sequences in Triton's form: its `oldest` strategy (requests of different
 * sequences batch together, within the model's batching), the idle limit, and each implicit state
 * (dims without the batch dim when the model's batch dim is every tensor's first).
 */
const sequenceBatching = (sequence: Sequence.Resolved, batching: ModelMetadata.ModelMetadata["batching"], leadingBatch: boolean) => ({
  max_sequence_idle_microseconds: sequence.maxSequenceIdleMs * 1000,
  oldest: {
    max_candidate_sequences: sequence.maxSequences,
    preferred_batch_size: batching?.enabled === true ? batching.preferredBatchSizes.slice() : [],
    max_queue_delay_microseconds: batching?.enabled === true ? micros(batching.maxQueueDelay) : 0
  },
  control_input: sequence.controls.map((control) => ({ name: control.input, control: [controlOf(control)] })),
  state: sequence.states.map((state) => {
    const data_type = tritonDataType({ name: state.input, dtype: state.initial.dtype, dims: state.initial.dims })
    const dims = leadingBatch ? state.initial.dims.slice(1) : state.initial.dims.slice()
    const initial = state.initialFile === undefined
      ? { name: "zero", data_type, dims, zero_data: true }
      : { name: state.initialFile, data_type, dims, data_file: state.initialFile }
    return { input_name: state.input, output_name: state.output, data_type, dims, initial_state: [initial] }
  })
})

const controlKinds = { start: "CONTROL_SEQUENCE_START", end: "CONTROL_SEQUENCE_END", ready: "CONTROL_SEQUENCE_READY", corrid: "CONTROL_SEQUENCE_CORRID" } as const

/** A control input in Triton's form: its kind and, for a flag, the false and true values in the field of its type. */
const controlOf = (control: Sequence.Control) => {
  const data_type = tritonDataType({ name: control.input, dtype: control.dtype, dims: control.dims })
  const kind = controlKinds[control.kind]
  if (control.kind === "corrid") return { kind, data_type }
  // Triton's fields: bool_false_true, fp32_false_true (floats), int32_false_true (integers)
  return control.dtype === "bool"
    ? { kind, bool_false_true: [false, true] }
    : control.dtype.startsWith("float")
    ? { kind, fp32_false_true: [0, 1] }
    : { kind, int32_false_true: [0, 1] }
}

/** The model's dynamic batching and queue policy in Triton's form. */
const dynamicBatching = (
  metadata: ModelMetadata.ModelMetadata,
  engine: AsyncConfig,
  batching: ModelMetadata.ModelMetadata["batching"]
) => {
  const defaultPriority = metadata.defaultPriority ?? Priority.Normal
  return {
    preferred_batch_size: batching?.preferredBatchSizes.slice() ?? [],
    max_queue_delay_microseconds: batching === undefined ? 0 : micros(batching.maxQueueDelay),
    priority_levels: Oip.priorityLevels,
    default_priority_level: Priority.rank(defaultPriority) + 1,
    default_queue_policy: {
      timeout_action: "REJECT",
      default_timeout_microseconds: micros(engine.queueTimeout),
      allow_timeout_override: true,
      // The model's own bound where config.json sets one (within the server's, which all models share).
      max_queue_size: metadata.maxQueuedRequests ?? engine.maxQueuedRequests
    }
  }
}
