/**
 * Dynamic batching policy: per-model configuration, the pure decision "send the forming batch
 * now, or wait at most d" (Triton's decision-function design), and which priorities may share a
 * batch (`mayJoin`). The mechanism that owns fibers and the clock lives in the engine; this
 * module never sleeps.
 *
 * @module BatchPolicy
 */
import { Duration, Effect, Schema } from "effect"
import * as Priority from "./Priority.ts"
import { millisOf } from "./internal/Millis.ts"

/** A batch axis, or null for an input that is not batched (it must be equal across the batch and is passed once). */
export type Axis = number | null

export interface BatchingConfig {
  readonly enabled: boolean
  /** Most rows (sum of the requests' batch dims) in one run. */
  readonly maxBatchSize: number
  /**
   * Longest time a forming batch waits for more rows, counted from its oldest request's admission
   * (learned sizing: beyond the time an instance could first take it).
   */
  readonly maxQueueDelay: Duration.Duration
  /** Sizes that are sent as soon as they are reached (ascending). */
  readonly preferredBatchSizes: ReadonlyArray<number>
  /**
   * How a forming batch knows it has waited enough while this model runs: `"fixed"`, at a preferred
   * size or when `maxQueueDelay` is spent; `"learned"`, from the model's learned run cost and
   * arrival rate (`RunCost`): it takes every row that arrives until an instance is about to free
   * (it could not run sooner anyway), then goes once it holds the rows that keep up with the
   * arrivals, or once the delay is spent.
   */
  readonly sizing: Sizing
  /** Batch axis per input; inputs not listed batch on axis 0. From `resolve`, an object without a prototype. */
  readonly inputAxes: Readonly<Record<string, Axis>>
  /** Batch axis per output; outputs not listed batch on axis 0. From `resolve`, an object without a prototype. */
  readonly outputAxes: Readonly<Record<string, Axis>>
}

export const disabled: BatchingConfig = {
  enabled: false,
  maxBatchSize: 1,
  maxQueueDelay: Duration.zero,
  preferredBatchSizes: [],
  sizing: "fixed",
  inputAxes: {},
  outputAxes: {}
}

const AxisSchema = Schema.NullOr(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)))

/** See `BatchingConfig.sizing`. */
export type Sizing = "fixed" | "learned"

/** The `batching` object of a model's config.json. Every field is optional. */
export const ConfigJson = Schema.Struct({
  enabled: Schema.optional(Schema.Boolean),
  maxBatchSize: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 65536 }))),
  maxQueueDelayMs: Schema.optional(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 60_000 }))),
  preferredBatchSizes: Schema.optional(Schema.Array(Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)))),
  sizing: Schema.optional(Schema.Literals(["fixed", "learned"])),
  inputAxes: Schema.optional(Schema.Record(Schema.String, AxisSchema)),
  outputAxes: Schema.optional(Schema.Record(Schema.String, AxisSchema))
})

export type ConfigJson = typeof ConfigJson.Type

const ownAxes = (axes: Readonly<Record<string, Axis>> | undefined): Readonly<Record<string, Axis>> =>
  Object.assign(Object.create(null) as Record<string, Axis>, axes)

/** What a model declares: each input's and output's dims (-1 = dynamic). */
export interface Signature {
  readonly inputs: ReadonlyArray<{ readonly name: string; readonly dims: ReadonlyArray<number> }>
  readonly outputs: ReadonlyArray<{ readonly name: string; readonly dims: ReadonlyArray<number> }>
}

/**
 * Resolves a model's batching from its config.json `batching` object and its signature.
 * Without an explicit `enabled`, batching is on exactly when every batched input and output
 * has a dynamic dim on its batch axis. Fails with a message naming the bad field: an axis
 * `inputAxes`/`outputAxes` names that the tensor does not have, or where its dim is fixed, is
 * invalid unless `enabled` is false (only axis 0 by default quietly means "cannot batch").
 */
export const resolve = (json: ConfigJson | undefined, signature: Signature): Effect.Effect<BatchingConfig, string> =>
  Effect.suspend(() => {
    // Without a prototype: a lookup by a tensor's name ("constructor", "toString") finds only what config.json set.
    const inputAxes = ownAxes(json?.inputAxes)
    const outputAxes = ownAxes(json?.outputAxes)
    for (const name of Object.keys(inputAxes)) {
      if (!signature.inputs.some((i) => i.name === name)) return Effect.fail(`batching.inputAxes names unknown input ${JSON.stringify(name)}`)
    }
    for (const name of Object.keys(outputAxes)) {
      if (!signature.outputs.some((o) => o.name === name)) return Effect.fail(`batching.outputAxes names unknown output ${JSON.stringify(name)}`)
    }
    // Why a tensor cannot batch on its axis: on the default axis 0, the model just does not batch;
    // on an axis config.json names, the value is wrong.
    const problems: Array<string> = []
    const invalid: Array<string> = []
    const check = (kind: string, specs: Signature["inputs"], axes: Readonly<Record<string, Axis>>) => {
      for (const spec of specs) {
        const listed = axes[spec.name] !== undefined
        const axis = listed ? axes[spec.name]! : 0
        if (axis === null) continue
        const noAxis = axis >= spec.dims.length
        if (!noAxis && spec.dims[axis] === -1) continue
        problems.push(noAxis
          ? `${kind} ${spec.name} has rank ${spec.dims.length}, no axis ${axis}`
          : `${kind} ${spec.name} has a fixed dim ${spec.dims[axis]} on batch axis ${axis}`)
        if (listed) {
          invalid.push(`batching.${kind}Axes.${spec.name} is ${axis}, but the ${kind} ` +
            (noAxis ? `has rank ${spec.dims.length}` : `fixes that dim at ${spec.dims[axis]}`))
        }
      }
    }
    check("input", signature.inputs, inputAxes)
    check("output", signature.outputs, outputAxes)
    if (invalid.length > 0 && json?.enabled !== false) return Effect.fail(invalid.join("; "))
    const batchable = problems.length === 0 && signature.inputs.some((i) => inputAxes[i.name] !== null)
    if (json?.enabled === true && !batchable) {
      return Effect.fail(`batching is enabled but the model cannot batch: ${problems.join("; ") || "no input has a batch axis"}`)
    }
    const maxBatchSize = json?.maxBatchSize ?? 64
    const preferred = [...(json?.preferredBatchSizes ?? [])].sort((a, b) => a - b)
    const tooBig = preferred.find((p) => p > maxBatchSize)
    if (tooBig !== undefined) return Effect.fail(`batching.preferredBatchSizes has ${tooBig}, above maxBatchSize ${maxBatchSize}`)
    const sizing = json?.sizing ?? "fixed"
    if (sizing === "learned" && preferred.length > 0) {
      return Effect.fail(`batching.sizing "learned" chooses batch sizes itself: leave out batching.preferredBatchSizes (${preferred.join(", ")})`)
    }
    return Effect.succeed({
      enabled: json?.enabled ?? batchable,
      maxBatchSize,
      maxQueueDelay: Duration.millis(json?.maxQueueDelayMs ?? 0),
      preferredBatchSizes: preferred,
      sizing,
      inputAxes,
      outputAxes
    })
  })

/** What is known about a forming batch when the policy is asked. */
export interface Pending {
  /** Rows gathered so far. */
  readonly rows: number
  /** Time since the oldest member was admitted. */
  readonly oldestWaitMs: number
  /** Time left until the earliest member's deadline. */
  readonly earliestDeadlineInMs: number
  /** The highest priority among the members. */
  readonly highestPriority: Priority.Priority
  /** Other runs of this model in progress: the sign that more requests are flowing. */
  readonly runsInFlight: number
  /** Recent run time of this model (0 when unknown). */
  readonly expectedRunMs: number
  /** Learned sizing only: the batch's own run time as the model's learned cost predicts it (0 when unknown). */
  readonly predictedRunMs?: number | undefined
  /**
   * Learned sizing only: how long until an instance can take this batch, less a lead for the
   * prediction's error (`Scheduler.handOverInMs`); 0 when one is free now.
   */
  readonly handOverInMs?: number | undefined
  /** Learned sizing only: the rows a run needs to keep up with the arrivals (`RunCost.targetRows`). */
  readonly targetRows?: number | undefined
}

export type Decision =
  | {
    readonly _tag: "Send"
    readonly why: "full" | "preferred" | "noDelay" | "delayElapsed" | "deadline" | "critical" | "idle" | "handOver"
  }
  | { readonly _tag: "Wait"; readonly ms: number }

/**
 * Send now, or wait at most `ms` for more rows.
 * - A full batch, a preferred size, no delay configured, or a delay already spent: send.
 * - A Critical member never waits for a batch to fill.
 * - Never past a member's deadline: the wait ends early enough for the run to finish in time
 *   (with twice the recent run time as headroom; before any run time is known, `maxQueueDelay`).
 * - A free runner never waits when nothing else of this model is running: with no traffic in
 *   flight, no closed-loop caller is about to send another request, so waiting would only add
 *   latency (a lone request would always sit out the whole delay).
 * - Learned sizing: while no instance could take the batch (`handOverInMs`), it waits for one, past
 *   the delay if need be: its start is not delayed, and rows keep joining. Then it goes once it
 *   holds `targetRows`, or once the delay is spent. Its deadline headroom is twice its own
 *   predicted run time.
 */
export const decide = (config: BatchingConfig, pending: Pending): Decision => {
  if (pending.rows >= config.maxBatchSize) return { _tag: "Send", why: "full" }
  const learned = config.sizing === "learned"
  if (!learned && config.preferredBatchSizes.includes(pending.rows)) return { _tag: "Send", why: "preferred" }
  const delayMs = millisOf(config.maxQueueDelay)
  if (delayMs <= 0) return { _tag: "Send", why: "noDelay" }
  if (pending.highestPriority === Priority.Critical) return { _tag: "Send", why: "critical" }
  const delayLeftMs = delayMs - pending.oldestWaitMs
  if (!learned && delayLeftMs <= 0) return { _tag: "Send", why: "delayElapsed" }
  // Twice the recent run time as headroom: run times vary by a third or more between runs. With
  // no run time known yet, the delay itself: a batching wait never eats into the time a member
  // needs more than it could have gained.
  const runMs = learned ? pending.predictedRunMs ?? pending.expectedRunMs : pending.expectedRunMs
  const deadlineLeftMs = pending.earliestDeadlineInMs - (runMs > 0 ? 2 * runMs : delayMs)
  if (deadlineLeftMs <= 0) return { _tag: "Send", why: "deadline" }
  if (pending.runsInFlight === 0) return { _tag: "Send", why: "idle" }
  if (!learned) return { _tag: "Wait", ms: Math.min(delayLeftMs, deadlineLeftMs) }
  // No instance could take it sooner: rows keep joining, and its start is not delayed.
  const handOverInMs = pending.handOverInMs ?? 0
  if (handOverInMs > 0) return { _tag: "Wait", ms: Math.min(handOverInMs, deadlineLeftMs) }
  if (delayLeftMs <= 0) return { _tag: "Send", why: "delayElapsed" }
  // Too few rows to keep up with the arrivals: wait for more, within the delay.
  if (pending.rows < (pending.targetRows ?? 1)) return { _tag: "Wait", ms: Math.min(delayLeftMs, deadlineLeftMs) }
  return { _tag: "Send", why: "handOver" }
}

/**
 * Whether a request of priority `candidate` may join a batch whose highest member has priority
 * `batchHighest`. A batch that holds a Critical request takes only Critical requests, so a
 * Critical request never waits for a run made longer by lower-priority rows; any other batch
 * takes any priority (it fills from the highest level first).
 */
export const mayJoin = (batchHighest: Priority.Priority, candidate: Priority.Priority): boolean =>
  batchHighest !== Priority.Critical || candidate === Priority.Critical
