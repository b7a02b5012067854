/**
 * The asynchronous inference engine (`AsyncInferenceEngine`): the service over the
 * `Scheduler` (pure state: queue, batches, slots and permits) and the `Dispatcher` (the
 * mechanism: one pump, one timer, a fiber per native run).
 *
 * Admission is immediate: an unknown model, invalid inputs or a full queue are answered at
 * once and nothing is queued. Admitted requests wait in a bounded priority queue; the
 * dispatcher sends the highest-priority request whose model has a free instance (with the rows
 * of its kind that fit, when the model batches) to the `ModelPool`. There are never more native
 * runs than `maxConcurrentRequests`, nor more of one model than its instances.
 *
 * Deadlines: a request's `timeout` covers queue wait plus run and fires on time from the Clock.
 * A request still queued after `queueTimeout` fails with QueueTimeout and never runs. The queue
 * ends where a request is handed to an instance: one in a job sent ahead to a busy instance (the
 * ONNX pool's instances take one job ahead) counts as waiting for the bound, but only its
 * deadline applies there, as Triton's queue policy ends at its scheduler.
 *
 * Cancellation (interrupting the caller's fiber, a CancelToken or an AbortSignal):
 * - while queued, the request leaves the queue at once and never runs;
 * - while running, the caller is answered at once; the native run cannot be aborted, so its
 *   result is dropped when it ends, and its permit and model instance stay held until then.
 *
 * @module Engine
 */
import { Cause, Context, Duration, Effect, Exit, Fiber, Latch, Layer, Stream, Tracer } from "effect"
import { AsyncConfigService, type AsyncConfig } from "./AsyncConfig.ts"
import * as Batch from "./Batch.ts"
import * as BatchPolicy from "./BatchPolicy.ts"
import * as CancelToken from "./CancelToken.ts"
import * as Dispatcher from "./Dispatcher.ts"
import * as InferenceError from "./InferenceError.ts"
import type { InferenceRequest } from "./InferenceRequest.ts"
import * as InferenceResult from "./InferenceResult.ts"
import * as ModelMetadata from "./ModelMetadata.ts"
import { ModelPool, type RunOutput } from "./ModelPool.ts"
import * as Priority from "./Priority.ts"
import type * as PriorityQueue from "./PriorityQueue.ts"
import * as ResponseCache from "./ResponseCache.ts"
import * as Scheduler from "./Scheduler.ts"
import * as Sequence from "./Sequence.ts"
import * as SequenceTable from "./SequenceTable.ts"
import * as Telemetry from "./Telemetry.ts"
import type * as Tensor from "./Tensor.ts"
import { type RequestInfo, TelemetryCollector, unknownModel } from "./Telemetry.ts"
import { millisOf } from "./internal/Millis.ts"

export interface Service {
  /**
   * Runs one request. Fails with a typed InferenceError; cancel it by interrupting the fiber.
   * The deadline (`request.timeout`) covers queue wait plus run, and `spentMs` (as `inferUnsafe`'s:
   * what an edge spent on the request before this call, its decoding) when one is given.
   */
  readonly infer: (
    request: InferenceRequest,
    options?: { readonly spentMs?: number | undefined }
  ) => Effect.Effect<InferenceResult.Success, InferenceError.InferenceError>
  /**
   * The spec's shape: never fails. Cancellation through `cancel`, time-out and failure come
   * back as Cancelled, TimedOut and Failed results.
   */
  readonly inferResult: (request: InferenceRequest, cancel?: CancelToken.Cancellation) => Effect.Effect<InferenceResult.InferenceResult>
  /**
   * Runs every request and emits each result as it completes (each carries its requestId).
   * At most `concurrency` requests (default `maxConcurrentRequests`) are submitted at once, so a
   * large batch never floods the queue; a concurrency that is not a positive integer is a defect
   * (a TypeError) before anything is submitted. `requests` is read as requests are submitted (a
   * generator may be endless). Cancelling `cancel` settles what is outstanding as Cancelled and
   * ends the stream: what `requests` has not yet given is not taken; the consumer stopping early
   * interrupts (and so cancels) what is outstanding. Once the engine drains, the next request
   * taken is answered ShuttingDown and the stream ends there (requests of sequences under way,
   * which a drain still runs, go on until then). However it ends, an iterator of
   * `requests` not run to its end is closed (`return`: a generator's `finally` runs).
   */
  readonly inferBatch: (
    requests: Iterable<InferenceRequest>,
    options?: { readonly cancel?: CancelToken.Cancellation | undefined; readonly concurrency?: number | undefined }
  ) => Stream.Stream<InferenceResult.InferenceResult>
  /**
   * Whether a request for `modelId` would be admitted now, by the engine's own rule: fails with
   * the ShuttingDown or QueueFull it would answer (and counts the refusal, as it would). For an
   * edge that wants to refuse before the costly part (reading and decoding a body); admission
   * itself still decides when the request comes. `version`: the model version the request goes to
   * (its metadata's), under which the refusal is counted (absent: the default version); `metadata`:
   * that version's, as the edge looked it up (its own queue bound, `maxQueuedRequests`; absent:
   * the pool is asked). A full queue does not refuse a model version that uses the response cache
   * (`ResponseCache`): its request may be a hit, which admission answers without the queue.
   */
  readonly checkAdmission: (modelId: string, version?: string, metadata?: ModelMetadata.ModelMetadata) => Effect.Effect<void, InferenceError.InferenceError>
  /**
   * `checkAdmission` as a plain answer, counting nothing: true when a request would be queued now,
   * with `waitingAtEdge` more requests counted as queued (an edge's own backlog of accepted bodies
   * not yet submitted, which the queue's bound covers too).
   */
  readonly admitsUnsafe: (waitingAtEdge?: number) => boolean
  /**
   * The QueueFull an admission of `modelId` (to the version `metadata` describes, as the edge
   * looked it up) would get now, counting nothing: the queue with `waitingAtEdge` more counted (as
   * `admitsUnsafe`), or the version's own bound (`ModelMetadata.maxQueuedRequests`) with
   * `waitingAtEdgeForModel` of those its own; undefined when it would be queued. For a model
   * version that uses the response cache, only `waitingAtEdge` counts against the queue's size (as
   * `checkAdmission`, a full queue does not refuse what may be a hit).
   */
  readonly queueFullUnsafe: (
    modelId: string,
    metadata: ModelMetadata.ModelMetadata | undefined,
    waitingAtEdge?: number,
    waitingAtEdgeForModel?: number
  ) => InferenceError.QueueFull | undefined
  /**
   * `infer` for a caller outside any fiber (the HTTP server's infer path): `onExit` is called
   * once with the outcome, synchronously when the request is refused. The returned function
   * cancels it as interrupting `infer` does (out of the queue, or its result dropped, counted as
   * cancelled); `onExit` is then never called. Opens no span: use `infer` under a tracer.
   * An `onExit` that throws is the caller's bug: the throw is caught and logged (once), and
   * touches nothing else (other requests of its batch, the engine's timer).
   * `spentMs`: what the request already spent before this call (an edge's wait to decode its body,
   * and the decoding), which its deadline covers as well: a request whose timeout is spent by then
   * fails with DeadlineExceeded without running. The queue timeout counts from admission.
   */
  readonly inferUnsafe: (
    request: InferenceRequest,
    onExit: (exit: Exit.Exit<InferenceResult.Success, InferenceError.InferenceError>) => void,
    options?: { readonly spentMs?: number | undefined }
  ) => () => void
  /**
   * Counts a request that an edge refused before it reached the engine (a body that did not
   * decode: InvalidInput), so that telemetry sees every request: started, then its outcome.
   * `version`: the model version its body was checked against (absent: the default version).
   */
  readonly recordRefused: (modelId: string, reason: InferenceError.Reason, version?: string) => Effect.Effect<void>
  /**
   * Requests waiting to run, by priority: in the queue, or in a job sent ahead to a busy instance
   * (not started yet). What `maxQueuedRequests` bounds, so a QueueFull comes when `total` is at it.
   * A request that joins a batch forming is not queued and is admitted even then, so `total` can
   * pass the bound by the rows of such a batch once it is sent ahead (at most `maxBatchSize` each).
   */
  readonly queueStats: Effect.Effect<PriorityQueue.QueueStats>
  /** The same, for each model that has requests waiting now (O(waiting)). */
  readonly queueStatsByModel: Effect.Effect<ReadonlyMap<string, PriorityQueue.QueueStats>>
  /** The same requests counted by model, then by the model version each was admitted to (O(waiting)). */
  readonly waitingByVersion: Effect.Effect<ReadonlyMap<string, ReadonlyMap<string, number>>>
  /**
   * Requests of `modelId` admitted and not started: queued, in a batch forming, or in a job sent
   * ahead to a busy instance (what an unload of the model waits for; other models' do not count).
   */
  readonly notStarted: (modelId: string) => Effect.Effect<number>
  /** Requests admitted and not yet answered: queued, forming a batch, or running. */
  readonly pending: Effect.Effect<number>
  /** The response cache's figures now (`ResponseCache.Stats`); undefined when the engine has none (`AsyncConfig.responseCacheBytes`). */
  readonly responseCache: Effect.Effect<ResponseCache.Stats | undefined>
  /**
   * Sequences of stateful models under way now (`Sequence`), by model then version: started, not
   * ended, not idle past their `maxSequenceIdleMs` (those are dropped first). Models with none are absent.
   */
  readonly sequences: Effect.Effect<ReadonlyMap<string, ReadonlyMap<string, number>>>
  readonly config: AsyncConfig
  /**
   * Stops admitting (new requests fail with ShuttingDown), then waits until every queued and
   * running request has settled, or `grace` has passed: then those not yet handed to an instance
   * (queued, or in a batch forming) are answered ShuttingDown at once and never run; runs go on
   * until the engine closes (which answers their callers ShuttingDown). Idempotent.
   *
   * Sequences of stateful models under way go on, as in Triton: until the grace is spent, a
   * request of one (not a start) is still admitted, and the drain waits for each to end, by its
   * end request or by going idle past its `maxSequenceIdleMs` (checked at least every 100 ms).
   * Once the grace is spent they are refused too (ShuttingDown).
   */
  readonly drain: (grace: Duration.Input) => Effect.Effect<{ readonly drained: boolean }>
  /**
   * Whether the engine would still take a request of `modelId` at `version` whose sequence is
   * `sequence` (its `InferenceRequest.sequence`) while it drains: the sequence is under way and the
   * request is not a start; a request without a sequence: false. False for all once a drain's
   * grace is spent. For an edge that refuses new work during a shutdown (before its engine
   * drains) but lets sequences under way go on.
   */
  readonly takesSequenceUnsafe: (modelId: string, version: string, sequence: Sequence.Flags | undefined) => boolean
  /**
   * Whether some sequence of `modelId` at `version` is under way and would go on during a drain
   * (`takesSequenceUnsafe`): an edge's check before it has read a request's sequence.
   */
  readonly sequencesUnderWayUnsafe: (modelId: string, version: string) => boolean
  /** True once draining has begun. */
  readonly isDraining: Effect.Effect<boolean>
  /** Where work is right now, for tests, soak runs and operators. */
  readonly diagnostics: Effect.Effect<Diagnostics>
}

export interface Diagnostics {
  /** Requests in the queue. */
  readonly queued: number
  /**
   * Requests in jobs sent ahead to busy instances, not started yet (with `queued`, what
   * `maxQueuedRequests` bounds); while a member of a failed batch waits there to run again alone,
   * the batch's other members waiting for their turn count too.
   */
  readonly ahead: number
  /** Requests held in batches that are forming (each batch holds a permit). */
  readonly forming: number
  /** Native runs in progress, including runs whose callers have all left. Each holds a permit. */
  readonly runs: number
  /** Requests admitted and not yet answered. */
  readonly unsettled: number
  /** Requests cancelled (or timed out) since the start, by the stage they were in. */
  readonly abandoned: { readonly queued: number; readonly forming: number; readonly running: number }
}

/** See `Dispatcher.DispatchGate`. */
export const DispatchGate = Dispatcher.DispatchGate

/** The telemetry record of a settled request, by its failure reason. */
const recordFailure = (telemetry: TelemetryCollector["Service"], request: RequestInfo, reason: InferenceError.Reason, elapsedMs: number): void => {
  switch (reason._tag) {
    case "QueueFull":
    case "ShuttingDown":
      return telemetry.recordRejected(request, reason)
    case "QueueTimeout":
    case "DeadlineExceeded":
      return telemetry.recordTimeout(request, elapsedMs)
    case "Cancelled":
      return telemetry.recordCancelled(request, elapsedMs)
    default:
      return telemetry.recordFailure(request, reason, elapsedMs)
  }
}

/** What the engine's operations share. */
interface State {
  readonly config: AsyncConfig
  readonly pool: ModelPool["Service"]
  readonly telemetry: TelemetryCollector["Service"]
  readonly dispatcher: Dispatcher.Dispatcher
  readonly scheduler: Scheduler.Scheduler<Dispatcher.Caller>
  readonly nowMs: () => number
  readonly queueTimeoutMs: number
  /** Opened when draining and nothing is left unsettled. */
  readonly settled: Latch.Latch
  /** Scheduling facts per model version, derived once from the pool's metadata object. */
  readonly specs: WeakMap<ModelMetadata.ModelMetadata, Map<string, Scheduler.ModelSpec>>
  /** Per model key, the last metadata seen and its generation (`Scheduler.ModelSpec.generation`). */
  readonly signatures: Map<string, { readonly metadata: ModelMetadata.ModelMetadata; readonly generation: number }>
  draining: boolean
  /**
   * Set once a drain's grace is spent (or the engine closes): sequences under way are refused then too.
   */
  sequencesClosed: boolean
  /** Set once a drain's grace cut work (refused what waited, or left sequences under way): no drain reports everything drained after that. */
  drainCut: boolean
  /**
   * Models this engine's lookups found (loaded or not), for `modelLabel` where the pool has no
   * `metadataUnsafe`: bounded by the models there are, since a made-up name is never found.
   */
  readonly knownModels: Set<string>
  /** Reports an `inferUnsafe` callback that threw (logged once; the engine goes on). */
  readonly callbackThrew: (error: unknown) => void
  /** The response cache (`AsyncConfig.responseCacheBytes`), for the model versions whose metadata says `responseCache`. */
  readonly cache: ResponseCache.ResponseCache | undefined
  /** A name for each loaded model version (each metadata object), for the cache's keys: a reload is another. */
  readonly loads: WeakMap<ModelMetadata.ModelMetadata, string>
  nextLoad: number
  /** The sequences of stateful models under way (`ModelMetadata.sequence`). */
  readonly sequences: SequenceTable.SequenceTable
  /** Starts a fiber in the engine's context (a waiting turn's deadline). */
  readonly runFork: <A, E>(effect: Effect.Effect<A, E>) => Fiber.Fiber<A, E>
}

/**
 * The most requests of a model that does not batch sent to an instance in one job (each still its own
 * run). Measured at 64 outstanding MLP rows: groups of 8 reach 18k req/s against 21k for 16 or 32, and
 * a Critical request waits behind at most two of them (the one running, the one sent ahead).
 */
const maxGroup = 8

/**
 * The scheduling facts of `modelId` as `metadata` describes it, made once per pair: keyed by the
 * model id the request named, not by `metadata.name`, which a pool may share between models (one
 * metadata object for several ids, say), whose requests must never share a run. Its generation
 * moves on when the version's inputs or outputs differ from the last metadata seen (a reload), so
 * that requests admitted before and after never share a run.
 */
const specOf = (state: State, modelId: string, metadata: ModelMetadata.ModelMetadata): Scheduler.ModelSpec => {
  let byId = state.specs.get(metadata)
  if (byId === undefined) state.specs.set(metadata, byId = new Map())
  let spec = byId.get(modelId)
  if (spec === undefined) {
    const key = `${modelId}@${metadata.version}`
    const last = state.signatures.get(key)
    const generation = last === undefined ? 0 : ModelMetadata.sameSignature(last.metadata, metadata) ? last.generation : last.generation + 1
    state.signatures.set(key, { metadata, generation })
    spec = {
      key,
      generation,
      instances: metadata.concurrency ?? Infinity,
      depth: metadata.pipelineDepth ?? 1,
      reportsStarts: metadata.reportsStarts === true,
      stopsAbandonedRuns: metadata.stopsAbandonedRuns === true,
      devices: metadata.devices,
      batching: metadata.batching ?? BatchPolicy.disabled,
      maxGroup: state.pool.runGroup === undefined || metadata.batching?.enabled === true ? 1 : maxGroup,
      maxQueued: metadata.maxQueuedRequests
    }
    byId.set(modelId, spec)
  }
  return spec
}

/**
 * The bound of its own that `modelId`'s `version` has reached, counting `waitingElsewhere` more
 * (an edge's backlog), or undefined. The scheduler first takes the version's spec from `known`
 * (the metadata the edge looked up) or as the pool has it now (`metadataUnsafe`), so that a
 * reload's new bound applies before any of its requests is admitted. Nothing is built for a
 * version without a bound of its own, before or after (the edges' hot path).
 */
const ownBoundFull = (
  state: State,
  modelId: string,
  version: string | undefined,
  known: ModelMetadata.ModelMetadata | undefined,
  waitingElsewhere = 0
): number | undefined => {
  if (version === undefined) return undefined
  const looked = known ?? state.pool.metadataUnsafe?.(modelId, version)
  const metadata = looked === undefined || "_tag" in looked ? undefined : looked
  if (metadata !== undefined) {
    const spec = specOf(state, modelId, metadata)
    const model = state.scheduler.model(spec)
    if (spec.maxQueued === undefined && model.spec.maxQueued === undefined) return undefined
  }
  return state.scheduler.modelFullAt(`${modelId}@${version}`, waitingElsewhere)
}

/** The QueueFull for a refused admission: the model version's own bound when that is what is full (`key`), else the queue's. */
const queueFull = (state: State, modelId: string, requestId: string, key: string | undefined): InferenceError.QueueFull => {
  const own = key === undefined || state.scheduler.isFull() ? undefined : state.scheduler.modelFullAt(key)
  return own === undefined
    ? new InferenceError.QueueFull({ modelId, requestId, capacity: state.config.maxQueuedRequests })
    : new InferenceError.QueueFull({ modelId, requestId, capacity: own, bound: "model" })
}

/**
 * `queueFull` where turns waiting behind their sequences count: the model version's own bound
 * when that is what is full with them, else the queue's.
 */
const queueFullWithTurns = (state: State, modelId: string, requestId: string, metadata: ModelMetadata.ModelMetadata, key: string): InferenceError.QueueFull => {
  if (!state.scheduler.isFull(state.sequences.waiting())) {
    const own = ownBoundFull(state, modelId, metadata.version, metadata, turnsWaiting(state, key))
    if (own !== undefined) return new InferenceError.QueueFull({ modelId, requestId, capacity: own, bound: "model" })
  }
  return new InferenceError.QueueFull({ modelId, requestId, capacity: state.config.maxQueuedRequests })
}

const noteSettled = (state: State): void => {
  if (
    state.draining && state.scheduler.unsettled === 0 && state.sequences.waiting() === 0 &&
    (state.sequencesClosed || state.sequences.live() === 0)
  ) state.settled.openUnsafe()
}

/** `Service.takesSequenceUnsafe`. */
const takesSequence = (state: State, modelId: string, version: string, flags: Sequence.Flags | undefined): boolean =>
  !state.sequencesClosed && flags !== undefined && flags.start !== true && state.sequences.underWay(`${modelId}@${version}`, flags.id)

/** `Service.sequencesUnderWayUnsafe`. */
const sequencesUnderWay = (state: State, modelId: string, version: string): boolean =>
  !state.sequencesClosed && state.sequences.underWay(`${modelId}@${version}`)

/**
 * Whether a draining engine may still look `request` up: it names a sequence, not as a start,
 * and sequences are not closed (`submit` then checks that the sequence is under way).
 */
const mayContinue = (state: State, request: InferenceRequest): boolean => {
  // (a batch's request may be anything a plain JavaScript caller passed: admission refuses it)
  const sequence = (request as Partial<InferenceRequest> | null | undefined)?.sequence
  return !state.sequencesClosed && sequence !== undefined && sequence !== null && sequence.start !== true
}

/** How a request's waiter is answered. */
type Resume = (exit: Exit.Exit<InferenceResult.Success, InferenceError.InferenceError>) => void

/** The caller's record: how the dispatcher answers it, with the telemetry of its outcome (`info`: the request as admitted to its version). */
const callerOf = (
  state: State,
  request: InferenceRequest,
  info: RequestInfo,
  metadata: ModelMetadata.ModelMetadata,
  batching: BatchPolicy.BatchingConfig,
  startedMs: number,
  resume: Resume
): Dispatcher.Caller => ({
  request,
  metadata,
  batching,
  resume: (exit) => {
    const elapsedMs = state.nowMs() - startedMs
    noteSettled(state)
    if (Exit.isSuccess(exit)) {
      state.telemetry.recordSuccess(info, elapsedMs)
      const { deviceUsed, outputs } = exit.value
      return resume(Exit.succeed(InferenceResult.Success({ requestId: request.requestId, outputs, latencyMs: elapsedMs, deviceUsed, modelVersion: metadata.version }) as InferenceResult.Success))
    }
    // Interruption (the engine closing) is ShuttingDown; any other cause without a typed error is a defect: the run failed.
    const failure = exit.cause.reasons.find((r) => r._tag === "Fail")
    const reason = failure !== undefined
      ? failure.error
      : Cause.hasInterruptsOnly(exit.cause)
      ? new InferenceError.ShuttingDown({})
      : new InferenceError.RunFailed({ modelId: request.modelId, requestId: request.requestId, detail: `a defect: ${String(Cause.squash(exit.cause))}` })
    recordFailure(state.telemetry, info, reason, elapsedMs)
    resume(Exit.fail(InferenceError.make(reason)))
  }
})

/** Answers a request refused at admission (after its start was recorded) and records why. */
const refuseNow = (state: State, request: RequestInfo, reason: InferenceError.Reason, resume: Resume): undefined => {
  recordFailure(state.telemetry, request, reason, 0)
  resume(Exit.fail(InferenceError.make(reason)))
  return undefined
}

/**
 * Queues the request; `resume` answers it when it settles. Returns the cleanup that runs if the
 * caller is interrupted first (the cancellation path; a no-op once settled), or nothing when it
 * was answered at once. The deadline counts from `startedMs` less `spentMs` (time the request
 * spent before the engine); the queue timeout from `queuedMs`, when it is queued (after a
 * metadata lookup, if any).
 */
const submit = (
  state: State,
  request: InferenceRequest,
  info: RequestInfo,
  metadata: ModelMetadata.ModelMetadata,
  startedMs: number,
  resume: Resume,
  queuedMs = startedMs,
  spentMs = 0
): (() => void) | undefined => {
  // Draining may have begun while the metadata was looked up (the Effect path): nothing is queued
  // then, but for a request of a sequence under way (Triton's rule: sequences under way go on).
  if (state.draining && (metadata.sequence === undefined || !takesSequence(state, request.modelId, metadata.version, request.sequence))) {
    return refuseNow(state, info, new InferenceError.ShuttingDown({}), resume)
  }
  if (metadata.sequence !== undefined) return takeTurn(state, request, info, metadata, metadata.sequence, startedMs, resume, queuedMs, spentMs)
  if (state.cache !== undefined && metadata.responseCache === true) {
    const key = cacheKey(state, state.cache, request, info, metadata, startedMs, resume)
    if (key === undefined) return undefined
    const cache = state.cache
    const answer = resume
    resume = (exit) => {
      if (Exit.isSuccess(exit)) {
        // An entry the cache cannot take (a Map at V8's size limit) must not keep the answer back.
        try {
          cache.insert(key, exit.value)
        } catch {
          // not kept: the next such request runs
        }
      }
      answer(exit)
    }
  }
  return enqueue(state, request, info, metadata, startedMs, resume, queuedMs, spentMs)
}

/**
 * `submit`'s last step: the request to the dispatcher (the queue, or a batch forming). `promoted`:
 * a turn that waited behind its sequence, whose place in the queue's bounds was counted then.
 */
const enqueue = (
  state: State,
  request: InferenceRequest,
  info: RequestInfo,
  metadata: ModelMetadata.ModelMetadata,
  startedMs: number,
  resume: Resume,
  queuedMs: number,
  spentMs: number,
  promoted = false
): (() => void) | undefined => {
  const spec = specOf(state, request.modelId, metadata)
  // Turns waiting behind their sequence count against the queue's bounds (none wait: nothing to look up).
  if (!promoted && state.sequences.waiting() > 0 && (state.scheduler.isFull(state.sequences.waiting()) || ownBoundFull(state, request.modelId, metadata.version, metadata, turnsWaiting(state, spec.key)) !== undefined)) {
    return refuseNow(state, info, queueFullWithTurns(state, request.modelId, request.requestId, metadata, spec.key), resume)
  }
  // (no key built while no model is unbatchable: the hot path allocates nothing for it)
  const unbatchable = state.scheduler.unbatchable.size > 0 && state.scheduler.unbatchable.has(Scheduler.unbatchableKey(spec))
  const joinable = spec.batching.enabled && !unbatchable ? Batch.keyOf(spec.batching, request.inputs) : undefined
  const admitted = state.dispatcher.submit({
    value: callerOf(state, request, info, metadata, spec.batching, startedMs, resume),
    model: spec,
    priority: request.priority,
    rows: joinable?.rows ?? 1,
    batchKey: joinable === undefined ? undefined : joinable.key,
    deadlineAtMs: startedMs - spentMs + millisOf(request.timeout),
    queueDeadlineAtMs: state.queueTimeoutMs > 0 ? queuedMs + state.queueTimeoutMs : Infinity
  }, queuedMs)
  if (admitted === undefined) return refuseNow(state, info, queueFull(state, request.modelId, request.requestId, spec.key), resume)
  state.settled.closeUnsafe()
  // Interrupted: out of the queue or its forming batch at once; running, its result is dropped.
  return () => {
    if (admitted.stage === "settled") return
    state.dispatcher.cancel(admitted)
    state.telemetry.recordCancelled(info, state.nowMs() - startedMs)
    noteSettled(state)
  }
}

/** The refusal of a request whose sequence is not under way. */
const sequenceNotStarted = (request: InferenceRequest, flags: Sequence.Flags, sequence: Sequence.Resolved): InferenceError.InvalidInput =>
  new InferenceError.InvalidInput({
    modelId: request.modelId,
    detail: `sequence ${Sequence.idText(flags.id)} of model ${request.modelId} is not under way (never started, ended, or idle for ${sequence.maxSequenceIdleMs} ms, its maxSequenceIdleMs): its first request must set sequence_start`
  })

/** A sequence's state tensors in buffers of their own (`transferInputs` may move a request's). */
const copyStates = (states: Tensor.TensorMap): Tensor.TensorMap => {
  const out: Array<[string, Tensor.Tensor]> = []
  for (const name in states) if (Object.hasOwn(states, name)) out.push([name, Sequence.copyState(states[name]!)])
  // own keys whatever the names ("__proto__" included)
  return Object.fromEntries(out)
}

/**
 * A turn's run settled: the sequence moves on (`done`: the state outputs, copied, after a
 * success), then the caller is answered, without the state outputs. The sequence moves first: a
 * client that sends its next request as soon as it has the answer finds its sequence free, not
 * busy (a wait and a timer fiber).
 */
const settleTurn = (
  sequence: Sequence.Resolved,
  exit: Exit.Exit<InferenceResult.Success, InferenceError.InferenceError>,
  done: (next: Tensor.TensorMap | undefined) => void,
  resume: Resume
): void => {
  if (Exit.isFailure(exit)) {
    done(undefined)
    return resume(exit)
  }
  const next: Record<string, Tensor.Tensor> = {}
  const outputs: Record<string, Tensor.Tensor> = {}
  for (const name in exit.value.outputs) {
    if (Object.hasOwn(exit.value.outputs, name) && !Sequence.isStateOutput(sequence, name)) Sequence.setOwn(outputs, name, exit.value.outputs[name]!)
  }
  for (const s of sequence.states) {
    const output = Object.hasOwn(exit.value.outputs, s.output) ? exit.value.outputs[s.output] : undefined
    // a pool that left a state output out ran something else: the state stays as it was
    if (output === undefined) return (done(undefined), resume(exit))
    Sequence.setOwn(next, s.input, Sequence.copyState(output))
  }
  done(next)
  const { deviceUsed, latencyMs, modelVersion, requestId } = exit.value
  resume(Exit.succeed(InferenceResult.Success({ requestId, outputs, latencyMs, deviceUsed, modelVersion }) as InferenceResult.Success))
}

/** Why a turn is answered without running when its turn comes (`SequenceTable.Turn.refuse`). */
const turnRefusal = (why: "ended" | "reshaped" | "shuttingDown", request: InferenceRequest, flags: Sequence.Flags, sequence: Sequence.Resolved): InferenceError.Reason =>
  why === "ended"
    ? sequenceNotStarted(request, flags, sequence)
    : why === "reshaped"
    ? new InferenceError.InvalidInput({
      modelId: request.modelId,
      detail: `sequence ${Sequence.idText(flags.id)} of model ${request.modelId} ended: the model was reloaded with other state tensors (names, types or dims), so a sequence under way must start again (sequence_start)`
    })
    : new InferenceError.ShuttingDown({})

/**
 * Waiting behind its sequence is queue wait: sleeps on the Clock until the request's deadline or
 * its queue timeout, whichever comes first, then gives the reason it is answered with.
 */
const waitLimit = (state: State, request: InferenceRequest, startedMs: number, queuedMs: number, spentMs: number) => {
  const deadlineAtMs = startedMs - spentMs + millisOf(request.timeout)
  const queueDeadlineAtMs = state.queueTimeoutMs > 0 ? queuedMs + state.queueTimeoutMs : Infinity
  return Effect.sleep(Duration.millis(Math.max(0, Math.min(deadlineAtMs, queueDeadlineAtMs) - state.nowMs()))).pipe(Effect.map((): InferenceError.Reason => {
    const nowMs = state.nowMs()
    return queueDeadlineAtMs < deadlineAtMs
      ? new InferenceError.QueueTimeout({ modelId: request.modelId, requestId: request.requestId, queueTimeoutMs: state.queueTimeoutMs, waitedMs: nowMs - queuedMs })
      : new InferenceError.DeadlineExceeded({ modelId: request.modelId, requestId: request.requestId, timeoutMs: millisOf(request.timeout), elapsedMs: nowMs - startedMs + spentMs })
  }))
}

/**
 * A stateful model's request (`ModelMetadata.sequence`): its turn in its sequence
 * (`SequenceTable`), run now with the sequence's state, or once the earlier requests of its
 * sequence are answered. Waiting there is queue wait: its deadline and the queue timeout cover
 * it (a timer answers DeadlineExceeded or QueueTimeout), a cancellation takes it out, it counts
 * against the queue's bounds (the server's and the model version's own), and a drain waits for it.
 * The answer leaves out the state outputs, which the sequence keeps (copied) for its next request.
 */
const takeTurn = (
  state: State,
  request: InferenceRequest,
  info: RequestInfo,
  metadata: ModelMetadata.ModelMetadata,
  sequence: Sequence.Resolved,
  startedMs: number,
  resume: Resume,
  queuedMs: number,
  spentMs: number
): (() => void) | undefined => {
  const flags = request.sequence!
  const key = `${request.modelId}@${metadata.version}`
  let timer: Fiber.Fiber<void> | undefined
  let started = false
  let waited = false
  const stopTimer = () => {
    timer?.interruptUnsafe()
    timer = undefined
  }
  const turn: SequenceTable.Turn = {
    rank: Priority.rank(request.priority),
    start: flags.start === true,
    end: flags.end === true,
    // as the queue counts it: the server's bound and the model version's own
    canWait: () =>
      !state.scheduler.isFull(state.sequences.waiting()) &&
      ownBoundFull(state, request.modelId, metadata.version, metadata, turnsWaiting(state, key)) === undefined,
    go: (states, done) => {
      started = true
      stopTimer()
      const given = request.transferInputs === true ? copyStates(states) : states
      // the controls say where this request stands: a start for the turn that (re)starts the sequence
      const inputs = Sequence.withStates(
        request.inputs,
        sequence.controls.length === 0 ? given : Sequence.withStates(given, Sequence.controlInputs(sequence, flags))
      )
      return enqueue(state, { ...request, inputs }, info, metadata, startedMs, (exit) => {
        settleTurn(sequence, exit, done, resume)
        // a draining engine waits for its sequences: one that just ended may be the last
        noteSettled(state)
      }, queuedMs, spentMs, waited)
    },
    refuse: (why) => {
      stopTimer()
      refuseNow(state, info, turnRefusal(why, request, flags, sequence), resume)
      noteSettled(state)
    }
  }
  const taken = state.sequences.take(key, sequence, flags, turn)
  switch (taken._tag) {
    case "Answered":
      return undefined
    case "Running":
      return taken.cancel
    case "NotStarted":
      return refuseNow(state, info, sequenceNotStarted(request, flags, sequence), resume)
    case "Full":
      return refuseNow(state, info, new InferenceError.QueueFull({ modelId: request.modelId, requestId: request.requestId, capacity: taken.capacity, bound: "sequences" }), resume)
    case "QueueFull":
      return refuseNow(state, info, queueFullWithTurns(state, request.modelId, request.requestId, metadata, key), resume)
  }
  waited = true
  timer = state.runFork(Effect.map(waitLimit(state, request, startedMs, queuedMs, spentMs), (reason) => {
    timer = undefined
    if (started) return
    taken.cancel()
    const elapsedMs = state.nowMs() - startedMs + spentMs
    recordFailure(state.telemetry, info, reason, elapsedMs)
    resume(Exit.fail(InferenceError.make(reason)))
    noteSettled(state)
  }))
  return () => {
    stopTimer()
    const stillWaiting = !started
    taken.cancel()
    if (!stillWaiting) return
    state.telemetry.recordCancelled(info, state.nowMs() - startedMs)
    noteSettled(state)
  }
}

/**
 * Whether a request for `modelId` may be answered from the response cache: an edge's check
 * before decoding then lets it through a full queue, since only the inputs can tell (admission
 * answers a hit, or refuses a miss with the same QueueFull).
 */
const mayHitCache = (state: State, modelId: string, version: string | undefined, metadata: ModelMetadata.ModelMetadata | undefined): boolean => {
  if (state.cache === undefined) return false
  const found = metadata ?? state.pool.metadataUnsafe?.(modelId, version)
  return found !== undefined && !("_tag" in found) && found.responseCache === true
}

/**
 * Looks the request up in the response cache: on a hit answers it (a success, its latency the
 * lookup's) and returns undefined; on a miss returns the key its outputs go under once it succeeds.
 */
const cacheKey = (
  state: State,
  cache: ResponseCache.ResponseCache,
  request: InferenceRequest,
  info: RequestInfo,
  metadata: ModelMetadata.ModelMetadata,
  startedMs: number,
  resume: Resume
): string | undefined => {
  const lookupMs = state.nowMs()
  let load = state.loads.get(metadata)
  if (load === undefined) state.loads.set(metadata, load = `${metadata.version}#${state.nextLoad++}`)
  const key = ResponseCache.keyOf(request.modelId, load, request.inputs)
  const hit = cache.lookup(key)
  const nowMs = state.nowMs()
  state.telemetry.recordCacheLookup?.(info, hit !== undefined, nowMs - lookupMs)
  if (hit === undefined) return key
  const latencyMs = nowMs - startedMs
  state.telemetry.recordSuccess(info, latencyMs)
  resume(Exit.succeed(InferenceResult.Success({ requestId: request.requestId, outputs: hit.outputs, latencyMs, deviceUsed: hit.deviceUsed, modelVersion: metadata.version }) as InferenceResult.Success))
  return undefined
}

/** A negative timeout is a caller's mistake, not a deadline that passed (which looks retryable). `isNegative` allocates nothing. */
const negativeTimeout = (request: InferenceRequest): InferenceError.InvalidInput | undefined => {
  const timeout: unknown = request.timeout
  // A request built by hand in plain JavaScript (`{ ...request, timeout: 1000 }`): a typed refusal, not a TypeError.
  if (!Duration.isDuration(timeout)) {
    return new InferenceError.InvalidInput({
      modelId: request.modelId,
      detail: `timeout ${typeof timeout === "string" ? JSON.stringify(timeout.slice(0, 40)) : String(timeout)}: it must be a Duration (InferenceRequest.make takes "5 seconds", a number of milliseconds or a Duration)`
    })
  }
  return !Duration.isNegative(timeout)
    ? undefined
    : new InferenceError.InvalidInput({ modelId: request.modelId, detail: `timeout ${Duration.format(timeout)}: it must not be negative` })
}

/** Why the request cannot be queued (an unknown priority, a negative timeout, invalid inputs for its model), or undefined. */
const refusal = (request: InferenceRequest, metadata: ModelMetadata.ModelMetadata): InferenceError.Reason | undefined => {
  if (!Priority.is(request.priority)) {
    const given: unknown = request.priority
    return new InferenceError.InvalidInput({
      modelId: request.modelId,
      detail: `unknown priority ${typeof given === "string" ? JSON.stringify(given) : String(given)}: one of ${Priority.levels.join(", ")}`
    })
  }
  const timeout = negativeTimeout(request)
  if (timeout !== undefined) return timeout
  let inputs = request.inputs
  if (metadata.sequence !== undefined || request.sequence !== undefined) {
    const misfit = sequenceMisfit(request, metadata)
    if (misfit !== undefined) return new InferenceError.InvalidInput({ modelId: request.modelId, detail: misfit })
    // checked with the initial state in place of the sequence's (same dtypes and dims)
    inputs = Sequence.asRun(metadata.sequence, request.inputs)
  }
  const invalid = ModelMetadata.validateInputs(metadata, inputs)
  if (invalid !== undefined) return invalid
  const batching = metadata.batching
  if (batching?.enabled === true) {
    const disagreement = Batch.rowsDisagreement(batching, inputs)
    if (disagreement !== undefined) return new InferenceError.InvalidInput({ modelId: request.modelId, detail: disagreement })
  }
  return undefined
}

/**
 * Why a request does not fit its model's sequences (`Sequence`), or undefined: a stateful model
 * needs the request's sequence, and refuses a state input sent by the client; a model without
 * state refuses a sequence (its request would run without the state its client counts on).
 */
const sequenceMisfit = (request: InferenceRequest, metadata: ModelMetadata.ModelMetadata): string | undefined => {
  const sequence = metadata.sequence
  if (sequence === undefined) {
    return `model ${request.modelId} keeps no state between requests (its config.json has no sequenceBatching): send no sequence id`
  }
  if (request.sequence === undefined) {
    return `model ${request.modelId} keeps a state between the requests of a sequence (config.json sequenceBatching): each request needs a sequence id (parameters.sequence_id: a positive integer or text), and its first one sequence_start`
  }
  const problem = Sequence.flagsProblem(request.sequence)
  if (problem !== undefined) return problem
  for (const state of sequence.states) {
    if (Object.hasOwn(request.inputs, state.input)) {
      return `input ${JSON.stringify(state.input)} is the sequence's state, which the server keeps between its requests (config.json sequenceBatching): do not send it`
    }
  }
  for (const control of sequence.controls) {
    if (Object.hasOwn(request.inputs, control.input)) {
      return `input ${JSON.stringify(control.input)} is the sequence's ${control.kind} control, which the server sets on each request (config.json sequenceBatching.control): do not send it`
    }
  }
  return sequence.controls.length === 0 ? undefined : Sequence.corridProblem(sequence, request.sequence.id)
}

type Lookup = NonNullable<ModelPool["Service"]["metadataUnsafe"]>

/**
 * The request as telemetry records it, under `version` of its model: one object for its start and
 * its outcome. Not the request itself, which holds its inputs: a collector may keep what it is given.
 */
const infoOf = (request: InferenceRequest, version: string | undefined): RequestInfo => ({
  modelId: request.modelId,
  requestId: request.requestId,
  priority: request.priority,
  version
})

/**
 * The version a request for `modelId` (at `version`, or the default) would go to now, for telemetry
 * of a request refused before admission chose one; undefined where the pool cannot say at once.
 */
const versionNow = (state: State, modelId: string, version: string | undefined): string | undefined => {
  const metadata = state.pool.metadataUnsafe?.(modelId, version)
  return metadata === undefined || "_tag" in metadata ? undefined : metadata.version
}

/** Notes a model the pool's `metadata` found (loaded or not), for `modelLabel` where the pool has no `metadataUnsafe`. */
const known = (state: State, modelId: string): void => {
  if (state.pool.metadataUnsafe === undefined) state.knownModels.add(modelId)
}

/**
 * The model a request that never ran is counted under: its id when the engine knows the model
 * (the pool's `metadataUnsafe` finds it, available or not; without one, a lookup of this engine
 * found it before), else `unknownModel`. Refusals that come before any lookup (a full queue at an
 * edge, draining, a cancel before the start) would otherwise add a series, and statistics, for
 * every made-up name a client sends.
 */
const modelLabel = (state: State, modelId: string): string => {
  const lookup = state.pool.metadataUnsafe
  if (lookup === undefined) return state.knownModels.has(modelId) ? modelId : unknownModel
  const found = lookup(modelId)
  return "_tag" in found && found._tag === "ModelNotFound" ? unknownModel : modelId
}

/**
 * The request as telemetry records it when it never ran: under `unknownModel` when its model is
 * not found or not known (`modelLabel`); under its model without a version when the model lacks
 * the version it named; else under the version it was (or would have been) admitted to.
 */
const recordedAs = (state: State, request: InferenceRequest, reason: InferenceError.Reason | undefined, version: string | undefined): RequestInfo =>
  modelLabel(state, request.modelId) === unknownModel
    ? { modelId: unknownModel, requestId: request.requestId, priority: request.priority }
    : reason?._tag === "ModelNotFound"
    ? infoOf(request, undefined)
    : infoOf(request, version ?? versionNow(state, request.modelId, request.modelVersion))

/** Records the start and refusal of a request that was never queued (`version`: its metadata's, when it was found). */
const recordRefusal = (state: State, request: InferenceRequest, reason: InferenceError.Reason, elapsedMs: number, version?: string): void => {
  const info = recordedAs(state, request, reason, version)
  state.telemetry.recordStart(info)
  recordFailure(state.telemetry, info, reason, elapsedMs)
}

/** A value in a refusal's detail: strings quoted and cut, the rest as `String` gives them. */
const shown = (value: unknown): string => typeof value === "string" ? JSON.stringify(value.slice(0, 40)) : value === null ? "null" : Array.isArray(value) ? "an array" : typeof value === "object" ? "an object" : String(value)

/**
 * Why a request built by hand in plain JavaScript is not an `InferenceRequest` (a field of the
 * wrong type: `modelVersion: 1`, no `modelId`), or undefined: a typed refusal before the lookup,
 * where it was a TypeError, or a defect, from deep inside it. The rest (priority, timeout, inputs
 * against the model) is `refusal`'s.
 */
const malformed = (request: InferenceRequest): InferenceError.InvalidInput | undefined => {
  const given: unknown = request
  if (typeof given !== "object" || given === null) {
    return new InferenceError.InvalidInput({ modelId: "", detail: `the request is ${shown(given)}: it must be an InferenceRequest (InferenceRequest.make)` })
  }
  const { inputs, modelId, modelVersion, requestId } = given as Record<string, unknown>
  if (typeof modelId !== "string") return new InferenceError.InvalidInput({ modelId: "", detail: `modelId ${shown(modelId)}: it must be a string` })
  const problem = modelVersion !== undefined && typeof modelVersion !== "string"
    ? `modelVersion ${shown(modelVersion)}: it must be a string of decimal digits ("1"), or absent for the default version`
    : typeof requestId !== "string"
    ? `requestId ${shown(requestId)}: it must be a string`
    : typeof inputs !== "object" || inputs === null || Array.isArray(inputs)
    ? `inputs ${shown(inputs)}: it must be an object of tensors by input name`
    : undefined
  return problem === undefined ? undefined : new InferenceError.InvalidInput({ modelId, detail: problem })
}

/** Counts and answers a `malformed` request: under the model named when it is a string (`refused` labels a made-up one `_unknown`). */
const refuseMalformed = (state: State, request: InferenceRequest, reason: InferenceError.InvalidInput): InferenceError.InferenceError => {
  refused(state, reason.modelId, reason, undefined)
  return InferenceError.make(reason)
}

/** Admission without any Effect, for a pool whose metadata needs none: `submit`'s answer, or undefined once refused. */
const admitNow = (state: State, request: InferenceRequest, lookup: Lookup, resume: Resume, spentMs = 0): (() => void) | undefined => {
  const startedMs = state.nowMs()
  const wrong = malformed(request)
  if (wrong !== undefined) {
    resume(Exit.fail(refuseMalformed(state, request, wrong)))
    return undefined
  }
  const metadata = state.draining && !mayContinue(state, request) ? new InferenceError.ShuttingDown({}) : lookup(request.modelId, request.modelVersion)
  if ("_tag" in metadata) {
    recordRefusal(state, request, metadata, 0)
    resume(Exit.fail(InferenceError.make(metadata)))
    return undefined
  }
  const reason = refusal(request, metadata)
  if (reason !== undefined) {
    recordRefusal(state, request, reason, 0, metadata.version)
    resume(Exit.fail(InferenceError.make(reason)))
    return undefined
  }
  const info = infoOf(request, metadata.version)
  state.telemetry.recordStart(info)
  return submit(state, request, info, metadata, startedMs, resume, startedMs, spentMs)
}

/** Admission and the wait in one `Effect.callback`, for a pool whose metadata needs no Effect. */
const admitUnsafe = (state: State, request: InferenceRequest, lookup: Lookup, spentMs: number) =>
  Effect.callback<InferenceResult.Success, InferenceError.InferenceError>((resume) => {
    const cancel = admitNow(state, request, lookup, resume, spentMs)
    return cancel === undefined ? undefined : Effect.sync(cancel)
  })

/** `Service.inferUnsafe`: `admitNow` where the pool allows it, else `infer` in a fiber of its own. */
const inferUnsafe = (state: State, request: InferenceRequest, onExit: Resume, spentMs = 0): () => void => {
  let open = true
  const once: Resume = (exit) => {
    if (!open) return
    open = false
    // Called from inside the dispatcher (its timer, a run's delivery to every member of a batch):
    // a throw there would reach other callers, so it stops here.
    try {
      onExit(exit)
    } catch (error) {
      state.callbackThrew(error)
    }
  }
  const lookup = state.pool.metadataUnsafe
  if (lookup !== undefined) {
    const cancel = admitNow(state, request, lookup, once, spentMs)
    return () => {
      if (!open) return
      open = false
      cancel?.()
    }
  }
  const fiber = Effect.runFork(admitEffect(state, request, spentMs))
  fiber.addObserver(once)
  return () => {
    if (!open) return
    open = false
    fiber.interruptUnsafe()
  }
}

/** Admission through the pool's `metadata` Effect, then the wait. */
const admitEffect = (state: State, request: InferenceRequest, spentMs = 0): Effect.Effect<InferenceResult.Success, InferenceError.InferenceError> =>
  Effect.suspend(() => {
    const startedMs = state.nowMs()
    // The start is recorded once the lookup has ended (see `recordedAs`), with its outcome if it is one.
    const refuse = (reason: InferenceError.Reason, elapsedMs = 0, version?: string) => {
      recordRefusal(state, request, reason, elapsedMs, version)
      return InferenceError.make(reason)
    }
    const wrong = malformed(request)
    if (wrong !== undefined) return Effect.fail(refuseMalformed(state, request, wrong))
    if (state.draining && !mayContinue(state, request)) return Effect.fail(refuse(new InferenceError.ShuttingDown({})))
    const timeout = negativeTimeout(request)
    if (timeout !== undefined) return Effect.fail(refuse(timeout, 0, versionNow(state, request.modelId, request.modelVersion)))
    // The deadline covers the lookup too: a pool slow to answer fails the request at its deadline, not after.
    const timeoutMs = millisOf(request.timeout)
    const pastDeadline = Effect.suspend(() => {
      const elapsedMs = state.nowMs() - startedMs + spentMs
      const reason = new InferenceError.DeadlineExceeded({ modelId: request.modelId, requestId: request.requestId, timeoutMs, elapsedMs })
      return Effect.fail(refuse(reason, elapsedMs))
    })
    // Interrupted before it is queued: counted as cancelled here (once queued, `submit`'s cleanup counts it).
    const found = Effect.tap(state.pool.metadata(request.modelId, request.modelVersion), () => Effect.sync(() => known(state, request.modelId)))
    const lookup = Effect.onInterrupt(
      Effect.timeoutOrElse(Effect.mapError(found, (reason) => {
        if (reason._tag === "ModelUnavailable") known(state, request.modelId)
        return refuse(reason)
      }), {
        duration: Duration.millis(Math.max(0, timeoutMs - spentMs)),
        orElse: () => pastDeadline
      }),
      () =>
        Effect.sync(() => {
          const info = recordedAs(state, request, undefined, undefined)
          state.telemetry.recordStart(info)
          state.telemetry.recordCancelled(info, state.nowMs() - startedMs)
        })
    )
    return Effect.flatMap(lookup, (metadata) => {
      const reason = refusal(request, metadata)
      if (reason !== undefined) return Effect.fail(refuse(reason, 0, metadata.version))
      const info = infoOf(request, metadata.version)
      state.telemetry.recordStart(info)
      return Effect.callback<InferenceResult.Success, InferenceError.InferenceError>((resume) => {
        const cancel = submit(state, request, info, metadata, startedMs, resume, state.nowMs(), spentMs)
        return cancel === undefined ? undefined : Effect.sync(cancel)
      })
    })
  })

const spanned = <A, E>(request: InferenceRequest, effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
  Effect.withSpan(effect, "Engine.infer", {
    attributes: { "inference.model": request.modelId, "inference.request_id": request.requestId, "inference.priority": request.priority },
    captureStackTrace: false
  })

/**
 * `infer`: a span per request only when a tracer will export it (the native tracer keeps spans
 * for nobody). Where the pool's metadata needs no Effect, the tracer is read inside the one
 * `Effect.callback` of the request (its register runs in the caller's fiber), not by a
 * `withFiber` before it: one suspension a request.
 */
const infer = (state: State, request: InferenceRequest, spentMs = 0): Effect.Effect<InferenceResult.Success, InferenceError.InferenceError> => {
  const lookup = state.pool.metadataUnsafe
  // Before a span reads the request's fields.
  if (malformed(request) !== undefined) return admitEffect(state, request, spentMs)
  if (lookup === undefined) {
    return Effect.withFiber((fiber) =>
      fiber.getRef(Tracer.Tracer) === Tracer.nativeTracer ? admitEffect(state, request, spentMs) : spanned(request, admitEffect(state, request, spentMs))
    )
  }
  return Effect.callback<InferenceResult.Success, InferenceError.InferenceError>((resume) => {
    if (Fiber.getCurrent()?.getRef(Tracer.Tracer) !== Tracer.nativeTracer) {
      resume(spanned(request, admitUnsafe(state, request, lookup, spentMs)))
      return
    }
    const cancel = admitNow(state, request, lookup, resume, spentMs)
    return cancel === undefined ? undefined : Effect.sync(cancel)
  })
}

const toResult = (request: InferenceRequest, error: InferenceError.InferenceError, elapsedMs: number): InferenceResult.InferenceResult => {
  const reason = error.reason
  if (reason._tag === "InvalidInput" && malformed(request) !== undefined) {
    // Its id when it has one of the right type (`modelVersion: 1` is the mistake, say).
    const id: unknown = (request as Partial<InferenceRequest> | null | undefined)?.requestId
    return InferenceResult.Failed({ requestId: typeof id === "string" ? id : "", error, elapsedMs })
  }
  return InferenceResult.ofError(request.requestId, error, elapsedMs)
}

const inferResult = (state: State, request: InferenceRequest, cancel?: CancelToken.Cancellation): Effect.Effect<InferenceResult.InferenceResult> =>
  Effect.suspend(() => {
    const startedMs = state.nowMs()
    const settle = Effect.catch((e: InferenceError.InferenceError) => Effect.succeed(toResult(request, e, state.nowMs() - startedMs)))
    if (cancel === undefined || malformed(request) !== undefined) return settle(infer(state, request))
    const cancelled = CancelToken.await(cancel).pipe(Effect.flatMap((reason) =>
      Effect.fail(InferenceError.make(new InferenceError.Cancelled({ requestId: request.requestId, reason })))
    ))
    if (!CancelToken.isCancelled(cancel)) return settle(Effect.raceFirst(infer(state, request), cancelled))
    const { telemetry } = state
    const info = recordedAs(state, request, undefined, undefined)
    return settle(Effect.andThen(
      Effect.sync(() => telemetry.recordStart(info)),
      Effect.onExit(cancelled, () => Effect.sync(() => telemetry.recordCancelled(info, 0)))
    ))
  })

/** How often a drain that waits for sequences under way checks whether they went idle (none may come to say so). */
const drainSweepMs = 100

const drain = (state: State, grace: Duration.Input) =>
  Effect.suspend(() => {
    state.draining = true
    const endMs = state.nowMs() + Duration.toMillis(Duration.fromInputUnsafe(grace))
    // Settled, or grace spent. While sequences are under way, nothing may settle to say that the
    // last one went idle: wake at the first idle limit (at most every `drainSweepMs`) and look.
    const wait: Effect.Effect<boolean> = Effect.suspend(() => {
      noteSettled(state)
      const leftMs = endMs - state.nowMs()
      if (state.settled.isOpen()) return Effect.succeed(true)
      if (leftMs <= 0) return Effect.succeed(false)
      const idleAtMs = state.sequences.nextIdleAtMs()
      const stepMs = state.sequences.live() === 0
        ? leftMs
        : Math.min(leftMs, drainSweepMs, idleAtMs === undefined ? Infinity : Math.max(1, idleAtMs - state.nowMs()))
      return state.settled.await.pipe(
        Effect.timeoutOption(stepMs === Infinity ? Duration.infinity : Duration.millis(stepMs)),
        Effect.flatMap((o) => (o._tag === "Some" ? Effect.succeed(true) : wait))
      )
    })
    return Effect.map(wait, (drained) => {
      // Grace spent: what never reached an instance is answered now, not cut off with its connection.
      if (!drained) {
        const sequencesLeft = state.sequences.live()
        state.sequencesClosed = true
        // turns first: a queued request refused now would promote the turn behind it into the queue
        const refused = state.sequences.refuseWaiting() + state.dispatcher.refuseWaiting()
        if (refused > 0 || sequencesLeft > 0) state.drainCut = true
      }
      // another drain's grace may have cut what this one waited for
      return { drained: drained && !state.drainCut }
    })
  })

/** A sequence table's model version key (`${modelId}@${version}`, `takeTurn`) split: a version is digits, so the last "@" splits them. */
const splitKey = (key: string): readonly [model: string, version: string] => {
  const at = key.lastIndexOf("@")
  return [key.slice(0, at), key.slice(at + 1)]
}

const sequencesByModel = (state: State): ReadonlyMap<string, ReadonlyMap<string, number>> => {
  const out = new Map<string, Map<string, number>>()
  for (const [key, count] of state.sequences.counts()) {
    const [model, version] = splitKey(key)
    let versions = out.get(model)
    if (versions === undefined) out.set(model, versions = new Map())
    versions.set(version, count)
  }
  return out
}

/** Turns waiting behind their sequence (`SequenceTable`) of the model version `key`, all priorities. */
const turnsWaiting = (state: State, key: string): number => {
  const counts = state.sequences.waitingByModel().get(key)
  return counts === undefined ? 0 : counts[0]! + counts[1]! + counts[2]! + counts[3]!
}

const queueStats = (state: State): PriorityQueue.QueueStats => {
  const inQueue = state.scheduler.queue.stats()
  if (state.scheduler.waitingAhead === 0 && state.sequences.waiting() === 0) return inQueue
  const counts = [inQueue.critical, inQueue.high, inQueue.normal, inQueue.low]
  state.scheduler.forEachWaitingAhead((request) => counts[Priority.rank(request.priority)]!++)
  for (const waiting of state.sequences.waitingByModel().values()) for (let rank = 0; rank < 4; rank++) counts[rank]! += waiting[rank]!
  const [critical, high, normal, low] = counts as [number, number, number, number]
  return { critical, high, normal, low, total: critical + high + normal + low }
}

const queueStatsByModel = (state: State): ReadonlyMap<string, PriorityQueue.QueueStats> => {
  const byModel = new Map<string, [number, number, number, number]>()
  const count = (request: Scheduler.Request<Dispatcher.Caller>) => {
    const model = request.value.request.modelId
    let counts = byModel.get(model)
    if (counts === undefined) byModel.set(model, counts = [0, 0, 0, 0])
    counts[Priority.rank(request.priority)]++
  }
  for (const pending of state.scheduler.queue.values()) count(pending)
  state.scheduler.forEachWaitingAhead(count)
  for (const [key, waiting] of state.sequences.waitingByModel()) {
    const [model] = splitKey(key)
    let counts = byModel.get(model)
    if (counts === undefined) byModel.set(model, counts = [0, 0, 0, 0])
    for (let rank = 0; rank < 4; rank++) counts[rank]! += waiting[rank]!
  }
  return new Map([...byModel].map(([model, [critical, high, normal, low]]) =>
    [model, { critical, high, normal, low, total: critical + high + normal + low }] as const
  ))
}

/** Turns waiting behind their sequence for `modelId` at `version` (0 when none wait, without a lookup: the edges' hot path). */
const waitingTurnsOf = (state: State, modelId: string, version: string | undefined): number =>
  state.sequences.waiting() === 0 || version === undefined ? 0 : turnsWaiting(state, `${modelId}@${version}`)

const notStarted = (state: State, modelId: string): number => {
  // (turns waiting behind their sequence are in queueStatsByModel's counts)
  let n = queueStatsByModel(state).get(modelId)?.total ?? 0
  for (const model of state.scheduler.models()) {
    for (const batch of model.forming.values() as IterableIterator<Scheduler.Batch<Dispatcher.Caller>>) {
      for (const member of batch.members) if (member.value.request.modelId === modelId) n++
    }
  }
  return n
}

const waitingByVersion = (state: State): ReadonlyMap<string, ReadonlyMap<string, number>> => {
  const byModel = new Map<string, Map<string, number>>()
  const count = (request: Scheduler.Request<Dispatcher.Caller>) => {
    const { request: { modelId }, metadata: { version } } = request.value
    let versions = byModel.get(modelId)
    if (versions === undefined) byModel.set(modelId, versions = new Map())
    versions.set(version, (versions.get(version) ?? 0) + 1)
  }
  for (const pending of state.scheduler.queue.values()) count(pending)
  state.scheduler.forEachWaitingAhead(count)
  for (const key of state.sequences.waitingByModel().keys()) {
    const [model, version] = splitKey(key)
    let versions = byModel.get(model)
    if (versions === undefined) byModel.set(model, versions = new Map())
    versions.set(version, (versions.get(version) ?? 0) + turnsWaiting(state, key))
  }
  return byModel
}

/**
 * An edge's `spentMs` as the deadline takes it: what is not a positive number (negative, NaN,
 * absent) is 0, so that no deadline is ever NaN (a NaN wake-up time kept the timer fiber from
 * ever sleeping or pumping: the process spun).
 */
const spentOf = (options: { readonly spentMs?: number | undefined } | undefined): number => {
  const ms = options?.spentMs
  return ms !== undefined && ms > 0 ? ms : 0
}

/**
 * `requests` as one run of a batch reads them (`iterable`), ending early: as soon as `cancel` is
 * cancelled (checked before each element is asked for, so a cancelled batch takes nothing more, a
 * generator's side effects included), and once the engine drains (`draining`): the first element
 * asked for after it began is still taken, and answered ShuttingDown, and the batch ends there, so
 * an endless generator does not spin on ShuttingDown answers. `close` closes the iterator
 * (`return`, a generator's `finally`) unless it has run to its end: the batch ending early, or its
 * consumer stopping early, leaves no generator open.
 */
const batchSource = <A>(requests: Iterable<A>, cancel: CancelToken.Cancellation | undefined, endsBatch: (request: A) => boolean) => {
  let iterator: Iterator<A> | undefined
  let open = false
  let last = false
  const close = () => {
    if (!open) return
    open = false
    try {
      iterator!.return?.()
    } catch {
      // The caller's generator failed in its own `finally`: nothing of the batch's to answer.
    }
  }
  const ended = (): IteratorResult<A> => {
    close()
    return { done: true, value: undefined }
  }
  const iterable: Iterable<A> = {
    [Symbol.iterator]: () => {
      iterator = requests[Symbol.iterator]()
      open = true
      return {
        next: () => {
          if (last || (cancel !== undefined && CancelToken.isCancelled(cancel))) return ended()
          const result = iterator!.next()
          if (result.done === true) open = false
          // the engine drains: this one is answered ShuttingDown, and the batch ends there
          else if (endsBatch(result.value)) last = true
          return result
        }
      }
    }
  }
  return { iterable, close }
}

/** A batch's concurrency: a positive integer. */
export const isConcurrency = (concurrency: number): boolean => Number.isInteger(concurrency) && concurrency >= 1

/** The error of a batch concurrency that `isConcurrency` refuses. */
export const invalidConcurrency = (concurrency: unknown): TypeError =>
  new TypeError(`inferBatch: concurrency must be a positive integer, got ${String(concurrency)}`)

/**
 * Who a request an edge refused before admission is counted as: it never had a request id, and
 * counts at the Normal level. Under `unknownModel` when the model is not known (`modelLabel`);
 * under its model without a version when the model lacks the version named (a version a client
 * named and the model lacks would add a series per number sent); else under that version, or the
 * default one. One lookup in the common case (an edge's refusal of a body checked against
 * `version`'s metadata).
 */
const refusedInfo = (state: State, modelId: string, reason: InferenceError.Reason, version: string | undefined): RequestInfo => {
  const base = { modelId, requestId: "", priority: Priority.Normal }
  const unknown = { ...base, modelId: unknownModel }
  const lookup = state.pool.metadataUnsafe
  // Without `metadataUnsafe`, `refusedEffect` has asked the pool's `metadata`: `version` is what it found.
  if (lookup === undefined) return !state.knownModels.has(modelId) ? unknown : reason._tag === "ModelNotFound" ? base : { ...base, version }
  const found = lookup(modelId, version)
  if (!("_tag" in found)) return reason._tag === "ModelNotFound" ? base : { ...base, version: found.version }
  if (found._tag === "ModelUnavailable") return reason._tag === "ModelNotFound" ? base : { ...base, version }
  // Not found: the model, or only the version named (then no version label, whatever the refusal)?
  return version === undefined || modelLabel(state, modelId) === unknownModel ? unknown : base
}

/** Telemetry of a request an edge refused before admission (see `refusedInfo`). */
const refused = (state: State, modelId: string, reason: InferenceError.Reason, version: string | undefined): void => {
  const info = refusedInfo(state, modelId, reason, version)
  state.telemetry.recordStart(info)
  recordFailure(state.telemetry, info, reason, 0)
}

/**
 * `refused` as an Effect: where the pool has no `metadataUnsafe`, whether the model exists, and
 * which version, come from the pool's `metadata` (a model it cannot find is counted under
 * `unknownModel`), so that the refusal is counted as with the ONNX pool.
 */
const refusedEffect = (state: State, modelId: string, reason: InferenceError.Reason, version: string | undefined): Effect.Effect<void> =>
  state.pool.metadataUnsafe !== undefined
    ? Effect.sync(() => refused(state, modelId, reason, version))
    : state.pool.metadata(modelId, version).pipe(
      Effect.map((metadata): string | undefined => {
        known(state, modelId)
        return metadata.version
      }),
      Effect.catch((error) => {
        // Unavailable: the model (and a version named) exist. Not found: no version label it could add.
        if (error._tag === "ModelUnavailable") known(state, modelId)
        return Effect.succeed(error._tag === "ModelUnavailable" ? version : undefined)
      }),
      Effect.flatMap((found) => Effect.sync(() => refused(state, modelId, reason, found)))
    )

/** The collector, guarded (`Telemetry.guard`): a record point that throws is logged once, as a warning, and the engine goes on. */
const guardTelemetry = (collector: TelemetryCollector["Service"], runFork: (effect: Effect.Effect<void>) => unknown) => {
  const warned = new Set<string>()
  return Telemetry.guard(collector, (recordPoint, error) => {
    if (warned.has(recordPoint)) return
    warned.add(recordPoint)
    runFork(Effect.logWarning(`telemetry: ${recordPoint} threw; the fact is lost and the engine goes on (later throws of it are not logged)`, error))
  })
}

/** Builds the engine in the current scope; closing the scope stops it (see `layer`). */
export const make = Effect.gen(function*() {
  const config = yield* AsyncConfigService
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  const telemetry = guardTelemetry(yield* TelemetryCollector, runFork)
  let callbackWarned = false
  const dispatcher = yield* Dispatcher.make({
    maxConcurrent: config.maxConcurrentRequests,
    maxQueued: config.maxQueuedRequests,
    enablePriority: config.enablePriorityQueue,
    aging: config.aging
  }).pipe(Effect.provideService(TelemetryCollector, telemetry))
  const state: State = {
    config,
    pool: yield* ModelPool,
    telemetry,
    dispatcher,
    scheduler: dispatcher.scheduler,
    nowMs: dispatcher.nowMs,
    queueTimeoutMs: Duration.toMillis(config.queueTimeout),
    settled: yield* Latch.make(false),
    specs: new WeakMap(),
    signatures: new Map(),
    draining: false,
    sequencesClosed: false,
    drainCut: false,
    knownModels: new Set(),
    cache: config.responseCacheBytes !== undefined && config.responseCacheBytes > 0 ? ResponseCache.make(config.responseCacheBytes) : undefined,
    loads: new WeakMap(),
    nextLoad: 0,
    sequences: SequenceTable.make(dispatcher.nowMs),
    runFork,
    callbackThrew: (error) => {
      if (callbackWarned) return
      callbackWarned = true
      runFork(Effect.logError("inferUnsafe: an onExit callback threw; the engine goes on (later throws are not logged)", error))
    }
  }
  // Closing the scope refuses new work first (the dispatcher's finalizer then answers what waits).
  // Turns waiting behind their sequence are answered before the dispatcher answers the runs they wait for.
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      state.draining = true
      state.sequencesClosed = true
      state.sequences.refuseWaiting()
    })
  )
  const { scheduler } = state
  return AsyncInferenceEngine.of({
    infer: (request, options) => infer(state, request, spentOf(options)),
    inferResult: (request, cancel) => inferResult(state, request, cancel),
    inferBatch: (requests, options) => {
      const concurrency = options?.concurrency ?? config.maxConcurrentRequests
      // NaN would submit nothing and never end; 0 and negatives were taken as some other bound.
      if (!isConcurrency(concurrency)) return Stream.die(invalidConcurrency(concurrency))
      const cancel = options?.cancel
      // One at a time: a generator is read as requests are submitted, not thousands ahead; once
      // cancelled, nothing more is taken from `requests` (which may never end), not even one more.
      return Stream.suspend(() => {
        // a request of a sequence under way still goes on during a drain, and the batch with it
        const source = batchSource(requests, cancel, (request) => state.draining && !mayContinue(state, request))
        return Stream.fromIterable(source.iterable, { chunkSize: 1 }).pipe(
          Stream.ensuring(Effect.sync(source.close)),
          Stream.mapEffect((request) => inferResult(state, request, cancel), { concurrency, unordered: true })
        )
      })
    },
    checkAdmission: (modelId, version, metadata) =>
      Effect.suspend(() => {
        // draining: only a model version with sequences under way may still be asked (`submit` decides)
        const reason = state.draining && (version === undefined || !sequencesUnderWay(state, modelId, version))
          ? new InferenceError.ShuttingDown({})
          : (scheduler.isFull(state.sequences.waiting()) || ownBoundFull(state, modelId, version, metadata, waitingTurnsOf(state, modelId, version)) !== undefined) &&
              !mayHitCache(state, modelId, version, metadata)
          ? metadata !== undefined && version !== undefined && state.sequences.waiting() > 0
            ? queueFullWithTurns(state, modelId, "", metadata, `${modelId}@${version}`)
            : queueFull(state, modelId, "", version === undefined ? undefined : `${modelId}@${version}`)
          : undefined
        if (reason === undefined) return Effect.void
        return Effect.andThen(refusedEffect(state, modelId, reason, version), Effect.fail(InferenceError.make(reason)))
      }),
    admitsUnsafe: (waitingAtEdge = 0) => !state.draining && !scheduler.isFull(waitingAtEdge + state.sequences.waiting()),
    queueFullUnsafe: (modelId, metadata, waitingAtEdge = 0, waitingAtEdgeForModel = 0) => {
      // A cached model's request goes through a full queue (it may be a hit), but the bodies
      // waiting at the edge stay bounded by the queue's size.
      if (mayHitCache(state, modelId, metadata?.version, metadata)) {
        return waitingAtEdge >= config.maxQueuedRequests ? new InferenceError.QueueFull({ modelId, requestId: "", capacity: config.maxQueuedRequests }) : undefined
      }
      if (scheduler.isFull(waitingAtEdge + state.sequences.waiting())) return new InferenceError.QueueFull({ modelId, requestId: "", capacity: config.maxQueuedRequests })
      const own = metadata === undefined
        ? undefined
        : ownBoundFull(state, modelId, metadata.version, metadata, waitingAtEdgeForModel + waitingTurnsOf(state, modelId, metadata.version))
      return own === undefined ? undefined : new InferenceError.QueueFull({ modelId, requestId: "", capacity: own, bound: "model" })
    },
    inferUnsafe: (request, onExit, options) => inferUnsafe(state, request, onExit, spentOf(options)),
    recordRefused: (modelId, reason, version) => refusedEffect(state, modelId, reason, version),
    queueStats: Effect.sync(() => queueStats(state)),
    queueStatsByModel: Effect.sync(() => queueStatsByModel(state)),
    waitingByVersion: Effect.sync(() => waitingByVersion(state)),
    notStarted: (modelId) => Effect.sync(() => notStarted(state, modelId)),
    pending: Effect.sync(() => scheduler.unsettled + state.sequences.waiting()),
    responseCache: Effect.sync(() => state.cache?.stats()),
    sequences: Effect.sync(() => sequencesByModel(state)),
    config,
    drain: (grace) => drain(state, grace),
    takesSequenceUnsafe: (modelId, version, sequence) => takesSequence(state, modelId, version, sequence),
    sequencesUnderWayUnsafe: (modelId, version) => sequencesUnderWay(state, modelId, version),
    isDraining: Effect.sync(() => state.draining),
    diagnostics: Effect.sync(() => ({ ...scheduler.counts(), ahead: scheduler.waitingAhead, unsettled: scheduler.unsettled, abandoned: { ...scheduler.abandoned } }))
  })
})

/** The engine as a service. Built by `layer` from ModelPool, TelemetryCollector and AsyncConfigService. */
export class AsyncInferenceEngine extends Context.Service<AsyncInferenceEngine, Service>()("effect-onnx/AsyncInferenceEngine") {
  /** Closing the layer's scope refuses new work, answers queued requests with ShuttingDown and interrupts running ones. */
  static readonly layer: Layer.Layer<AsyncInferenceEngine, never, ModelPool | TelemetryCollector | AsyncConfigService> = Layer.effect(
    AsyncInferenceEngine,
    make
  )
}
