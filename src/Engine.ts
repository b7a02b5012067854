/**
 * The asynchronous inference engine (`AsyncInferenceEngine`).
 *
 * Admission is immediate: an unknown model, invalid inputs or a full queue are answered at
 * once and nothing is queued. Admitted requests wait in a bounded `PriorityQueue`; one
 * dispatcher fiber takes a permit from a `Semaphore` of `maxConcurrentRequests` permits, then
 * the highest-priority request, and runs it in its own fiber on the `ModelPool`. The permit is
 * released when the native run ends, so there are never more native runs than the bound.
 *
 * Deadlines: a request's `timeout` covers queue wait plus run and fires on time from the Clock.
 * A request still queued after `queueTimeout` fails with QueueTimeout and never runs.
 *
 * Cancellation (interrupting the caller's fiber, a CancelToken or an AbortSignal):
 * - while queued, the request leaves the queue at once and never runs;
 * - while running, the caller is answered at once; the native run cannot be aborted, so its
 *   result is dropped when it ends, and its permit and model instance stay held until then.
 *
 * @module Engine
 */
import { Clock, Context, Deferred, Duration, Effect, Exit, Latch, Layer, Semaphore, Stream } from "effect"
import { AsyncConfigService, type AsyncConfig } from "./AsyncConfig.ts"
import * as Batch from "./Batch.ts"
import * as BatchPolicy from "./BatchPolicy.ts"
import * as CancelToken from "./CancelToken.ts"
import * as InferenceError from "./InferenceError.ts"
import type { InferenceRequest } from "./InferenceRequest.ts"
import * as InferenceResult from "./InferenceResult.ts"
import * as ModelMetadata from "./ModelMetadata.ts"
import * as DeadlineHeap from "./internal/DeadlineHeap.ts"
import { ModelPool, type RunOutput } from "./ModelPool.ts"
import * as Priority from "./Priority.ts"
import * as PriorityQueue from "./PriorityQueue.ts"
import { type RequestInfo, TelemetryCollector } from "./Telemetry.ts"

export interface Service {
  /**
   * Runs one request. Fails with a typed InferenceError; cancel it by interrupting the fiber.
   * The deadline (`request.timeout`) covers queue wait plus run.
   */
  readonly infer: (request: InferenceRequest) => Effect.Effect<InferenceResult.Success, InferenceError.InferenceError>
  /**
   * The spec's shape: never fails. Cancellation through `cancel`, time-out and failure come
   * back as Cancelled, TimedOut and Failed results.
   */
  readonly inferResult: (request: InferenceRequest, cancel?: CancelToken.Cancellation) => Effect.Effect<InferenceResult.InferenceResult>
  /**
   * Runs every request and emits each result as it completes (each carries its requestId).
   * At most `concurrency` requests (default `maxConcurrentRequests`) are submitted at once, so a
   * large batch never floods the queue. Cancelling `cancel` settles what is outstanding as
   * Cancelled; the consumer stopping early interrupts (and so cancels) what is outstanding.
   */
  readonly inferBatch: (
    requests: Iterable<InferenceRequest>,
    options?: { readonly cancel?: CancelToken.Cancellation | undefined; readonly concurrency?: number | undefined }
  ) => Stream.Stream<InferenceResult.InferenceResult>
  readonly queueStats: Effect.Effect<PriorityQueue.QueueStats>
  /** The same, for each model that has requests queued now (O(queued)). */
  readonly queueStatsByModel: Effect.Effect<ReadonlyMap<string, PriorityQueue.QueueStats>>
  /** Requests admitted and not yet answered: queued, forming a batch, or running. */
  readonly pending: Effect.Effect<number>
  readonly config: AsyncConfig
  /**
   * Stops admitting (new requests fail with ShuttingDown), then waits until every queued and
   * running request has settled, or `grace` has passed. Idempotent.
   */
  readonly drain: (grace: Duration.Input) => Effect.Effect<{ readonly drained: boolean }>
  /** True once draining has begun. */
  readonly isDraining: Effect.Effect<boolean>
  /** Where work is right now, for tests, soak runs and operators. */
  readonly diagnostics: Effect.Effect<Diagnostics>
}

export interface Diagnostics {
  /** Requests in the queue. */
  readonly queued: number
  /** Requests held in batches that are forming (each batch holds a permit). */
  readonly forming: number
  /** Native runs in progress, including runs whose callers have all left. Each holds a permit. */
  readonly runs: number
  /** Requests admitted and not yet answered. */
  readonly unsettled: number
  /** Requests cancelled (or timed out) since the start, by the stage they were in. */
  readonly abandoned: { readonly queued: number; readonly forming: number; readonly running: number }
}

type State = "queued" | "forming" | "running" | "settled"

interface Pending {
  readonly request: InferenceRequest
  readonly deferred: Deferred.Deferred<RunOutput, InferenceError.Reason>
  readonly admittedAtMs: number
  readonly deadlineAtMs: number
  /** Requests with the same key may run as one batch; undefined runs alone. */
  readonly batchKey: string | undefined
  readonly rows: number
  readonly batching: BatchPolicy.BatchingConfig
  /** Runs of its model that may go at once (the model's instances). */
  readonly capacity: number
  entry: PriorityQueue.Entry<Pending> | undefined
  state: State
  /** Its entries in the deadline heap, taken out when it settles. */
  queueTimer: DeadlineHeap.Entry<Timer> | undefined
  deadlineTimer: DeadlineHeap.Entry<Timer> | undefined
}

/** What fires at a deadline: the queue timeout (only while waiting) or the request's deadline. */
interface Timer {
  readonly pending: Pending
  readonly kind: "queue" | "deadline"
}

/** A batch that holds a permit while it waits for more rows. */
interface Forming {
  readonly key: string
  readonly members: Array<Pending>
  rows: number
  /** The highest priority among the members (see `BatchPolicy.mayJoin`). */
  highest: Priority.Priority
  readonly arrival: Latch.Latch
}

/**
 * A test hook in the spirit of Triton's TRITONSERVER_DELAY_SCHEDULER: the dispatcher runs this
 * effect (after taking a permit, before taking requests from the queue), so a test can hold
 * dispatch until the queue holds exactly what it wants batched.
 */
export const DispatchGate = Context.Reference<Effect.Effect<void>>("effect-onnx/Engine/DispatchGate", {
  defaultValue: () => Effect.void
})

const nowMs = (clock: Clock.Clock): number => Number(clock.monotonicTimeNanosUnsafe()) / 1e6

const infoOf = (request: InferenceRequest): RequestInfo => ({
  modelId: request.modelId,
  requestId: request.requestId,
  priority: request.priority
})

/** The run itself failed (not a missing or unavailable model): worth running a batch's members alone. */
const isRunFailure = (exit: Exit.Exit<unknown, InferenceError.Reason>): boolean => {
  const reason = exit._tag === "Failure" ? exit.cause.reasons[0] : undefined
  return reason?._tag === "Fail" && reason.error._tag === "RunFailed"
}

const modelKey = (request: InferenceRequest) => request.modelVersion === undefined ? request.modelId : `${request.modelId}@${request.modelVersion}`

/** Builds the engine in the current scope; closing the scope stops it (see `layer`). */
export const make = Effect.gen(function*() {
  const config = yield* AsyncConfigService
  const pool = yield* ModelPool
  const telemetry = yield* TelemetryCollector
  const clock = yield* Clock.Clock
  const gate = yield* DispatchGate
  const scope = yield* Effect.scope

  const queue = PriorityQueue.make<Pending>(config.maxQueuedRequests, config.enablePriorityQueue, config.aging)
  const permits = yield* Semaphore.make(config.maxConcurrentRequests)
  const wake = yield* Latch.make(false)
  const settledLatch = yield* Latch.make(false)
  const forming = new Map<string, Forming>()
  const runsInFlight = new Map<string, number>()
  /** Permits given to each model: its runs and its batches forming. Never above its capacity. */
  const claimed = new Map<string, number>()
  const expectedRunMs = new Map<string, number>()
  let unsettled = 0
  let draining = false
  const abandoned = { queued: 0, forming: 0, running: 0 }
  const queueTimeoutMs = Duration.toMillis(config.queueTimeout)
  // Deadlines: one heap and one timer fiber for all requests, instead of a race per request.
  const timers = new DeadlineHeap.DeadlineHeap<Timer>()
  const timersChanged = Latch.makeUnsafe(false)
  let timerWakesAtMs = Infinity

  const noteIdle = () => {
    if (unsettled === 0) settledLatch.openUnsafe()
  }

  /** Answers the caller once; a later answer (a dropped result) is ignored. */
  const settle = (pending: Pending, exit: Exit.Exit<RunOutput, InferenceError.Reason>): void => {
    if (pending.state === "settled") return
    if (pending.state === "queued") queue.remove(pending.entry!)
    if (Exit.isFailure(exit)) {
      const reason = exit.cause.reasons[0]
      if (reason?._tag === "Interrupt" || (reason?._tag === "Fail" && (reason.error._tag === "QueueTimeout" || reason.error._tag === "DeadlineExceeded"))) {
        abandoned[pending.state]++
      }
    }
    pending.state = "settled"
    if (pending.queueTimer !== undefined) timers.remove(pending.queueTimer)
    if (pending.deadlineTimer !== undefined) timers.remove(pending.deadlineTimer)
    unsettled--
    Deferred.doneUnsafe(pending.deferred, exit)
    noteIdle()
  }

  const shuttingDown = Exit.fail(new InferenceError.ShuttingDown({}))

  /**
   * One native run of `members` (one request, or a batch); the caller holds a permit until it
   * ends. A batch whose run fails (RunFailed) is run again member by member, under the same
   * permit, within each member's deadline.
   */
  const runMembers = (candidates: ReadonlyArray<Pending>): Effect.Effect<void> =>
    Effect.suspend(() => {
      // A member whose caller left before this point never runs.
      const members = candidates.filter((m) => m.state !== "settled")
      if (members.length === 0) return Effect.void
      const first = members[0]!
      const { request, batching } = first
      const model = modelKey(request)
      const startedMs = nowMs(clock)
      for (const m of members) m.state = "running"
      runsInFlight.set(model, (runsInFlight.get(model) ?? 0) + 1)
      const inputs = Batch.concat(batching, members.map((m) => m.request.inputs))
      // The run is wanted until the last member's deadline: a pool that can stop runs (process
      // isolation) stops it only once every caller has given up.
      let lastDeadlineMs = 0
      for (const m of members) lastDeadlineMs = Math.max(lastDeadlineMs, m.deadlineAtMs)
      const timeout = Duration.millis(Math.max(0, lastDeadlineMs - startedMs))
      return Effect.forEach(members, (m) => telemetry.recordQueueWait(request.modelId, m.request.priority, startedMs - m.admittedAtMs), { discard: true }).pipe(
        Effect.andThen(Effect.exit(pool.run(request.modelId, inputs, { requestId: request.requestId, version: request.modelVersion, timeout }))),
        Effect.flatMap((exit) => {
          const runMs = nowMs(clock) - startedMs
          expectedRunMs.set(model, runMs)
          if (Exit.isFailure(exit)) {
            if (members.length > 1 && isRunFailure(exit)) {
              // One member's input can fail a whole batch (a token id past the vocabulary, a
              // crash): each member runs again alone, so only a member that fails alone fails.
              return Effect.andThen(
                telemetry.recordRun(request.modelId, runMs, members.length),
                Effect.forEach(members, (m) => runMembers([m]), { discard: true })
              )
            }
            for (const m of members) settle(m, exit)
          } else {
            const parts = Batch.split(batching, exit.value.outputs, members.map((m) => m.rows))
            members.forEach((m, i) =>
              settle(m, parts === undefined
                ? Exit.fail(new InferenceError.RunFailed({ modelId: request.modelId, requestId: m.request.requestId, detail: "the model's outputs do not have the batch's rows on their batch axis" }))
                : Exit.succeed({ outputs: parts[i]!, deviceUsed: exit.value.deviceUsed }))
            )
          }
          return telemetry.recordRun(request.modelId, runMs, members.length)
        }),
        Effect.ensuring(Effect.sync(() => runsInFlight.set(model, runsInFlight.get(model)! - 1))),
        Effect.onInterrupt(() => Effect.sync(() => {
          for (const m of members) settle(m, shuttingDown)
        }))
      )
    })

  /** Adds `pending` to `batch`'s count of rows and its highest priority. */
  const addTo = (batch: Forming, pending: Pending) => {
    batch.rows += pending.rows
    if (Priority.rank(pending.request.priority) < Priority.rank(batch.highest)) batch.highest = pending.request.priority
  }

  /** Whether `pending` may join `batch`: same kind, rows fit, priorities allowed together. */
  const fits = (batch: Forming, pending: Pending, maxRows: number) =>
    pending.batchKey === batch.key && batch.rows + pending.rows <= maxRows && BatchPolicy.mayJoin(batch.highest, pending.request.priority)

  /** Takes queued requests that can join `batch`, highest priority first, while rows fit. */
  const gather = (batch: Forming, maxRows: number) => {
    const joined = queue.takeWhere((p) => {
      if (!fits(batch, p, maxRows)) return false
      addTo(batch, p)
      return true
    }, Infinity)
    for (const p of joined) {
      p.state = "forming"
      batch.members.push(p)
    }
  }

  /** Holds a permit while the batch policy says wait; then runs what is still wanted. */
  const formAndRun = (batch: Forming, batching: BatchPolicy.BatchingConfig, model: string): Effect.Effect<void> =>
    Effect.gen(function*() {
      while (true) {
        // Members cancelled or expired while forming have settled: they leave the batch.
        for (let i = batch.members.length - 1; i >= 0; i--) {
          const m = batch.members[i]!
          if (m.state === "settled") {
            batch.members.splice(i, 1)
            batch.rows -= m.rows
          }
        }
        if (batch.members.length === 0) return
        const now = nowMs(clock)
        let oldest = Infinity
        let earliestDeadline = Infinity
        let highest = 3
        for (const m of batch.members) {
          oldest = Math.min(oldest, m.admittedAtMs)
          earliestDeadline = Math.min(earliestDeadline, m.deadlineAtMs)
          highest = Math.min(highest, Priority.rank(m.request.priority))
        }
        // Members that left may have been the highest.
        batch.highest = Priority.levels[highest]!
        const decision = BatchPolicy.decide(batching, {
          rows: batch.rows,
          oldestWaitMs: now - oldest,
          earliestDeadlineInMs: earliestDeadline - now,
          highestPriority: Priority.levels[highest]!,
          runsInFlight: runsInFlight.get(model) ?? 0,
          expectedRunMs: expectedRunMs.get(model) ?? 0
        })
        if (decision._tag === "Send") break
        forming.set(batch.key, batch)
        batch.arrival.closeUnsafe()
        yield* Effect.raceFirst(batch.arrival.await, Effect.sleep(Duration.millis(decision.ms)))
        gather(batch, batching.maxBatchSize)
      }
      if (forming.get(batch.key) === batch) forming.delete(batch.key)
      yield* runMembers(batch.members)
    }).pipe(
      Effect.onInterrupt(() => Effect.sync(() => {
        for (const m of batch.members) settle(m, shuttingDown)
      })),
      Effect.ensuring(Effect.sync(() => {
        if (forming.get(batch.key) === batch) forming.delete(batch.key)
      }))
    )

  /** A batch of its kind that is forming and may take it. */
  const formingFor = (pending: Pending): Forming | undefined => {
    if (pending.batchKey === undefined) return undefined
    const open = forming.get(pending.batchKey)
    return open !== undefined && fits(open, pending, pending.batching.maxBatchSize) ? open : undefined
  }

  /** Joins a batch of its kind that is forming, if one may take it. */
  const joinForming = (pending: Pending): boolean => {
    const open = formingFor(pending)
    if (open === undefined) return false
    pending.state = "forming"
    open.members.push(pending)
    addTo(open, pending)
    open.arrival.openUnsafe()
    return true
  }

  /** It can go now: its model has a free instance, or it can join a forming batch. */
  const canGo = (pending: Pending) =>
    (claimed.get(modelKey(pending.request)) ?? 0) < pending.capacity || formingFor(pending) !== undefined

  /**
   * The next request to dispatch: the queue's head if its model has a free instance, else the
   * first in priority order whose model has one (a model whose instances are all busy never
   * holds up another model's requests, and never has runs waiting in the pool, where priority
   * no longer applies).
   */
  const next = (): Pending | undefined => {
    const now = nowMs(clock)
    const head = queue.peek(now)
    if (head === undefined) return undefined
    if (canGo(head.value)) return queue.poll(now)
    return queue.takeWhere(canGo, 1)[0]
  }

  const dispatcher = Effect.gen(function*() {
    while (true) {
      yield* permits.take(1)
      yield* gate
      let pending = next()
      while (pending === undefined) {
        wake.closeUnsafe()
        pending = next()
        if (pending === undefined) yield* wake.await
      }
      // A batch of its kind is already forming: it joins it and the permit goes back.
      if (joinForming(pending)) {
        yield* permits.release(1)
        continue
      }
      const model = modelKey(pending.request)
      let work: Effect.Effect<void>
      if (pending.batchKey === undefined) {
        pending.state = "running"
        work = runMembers([pending])
      } else {
        const batch: Forming = { key: pending.batchKey, members: [pending], rows: pending.rows, highest: pending.request.priority, arrival: Latch.makeUnsafe(false) }
        pending.state = "forming"
        gather(batch, pending.batching.maxBatchSize)
        work = formAndRun(batch, pending.batching, model)
      }
      claimed.set(model, (claimed.get(model) ?? 0) + 1)
      const release = Effect.andThen(
        Effect.sync(() => {
          claimed.set(model, claimed.get(model)! - 1)
          // An instance of this model is free again: requests that waited for one may go.
          if (queue.size > 0) wake.openUnsafe()
        }),
        permits.release(1)
      )
      yield* Effect.forkIn(work.pipe(Effect.ensuring(release)), scope, { startImmediately: true })
    }
  })
  yield* Effect.forkIn(dispatcher, scope)

  // On close: refuse new work, and answer everything still queued or forming.
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      draining = true
      for (let p = queue.poll(); p !== undefined; p = queue.poll()) settle(p, shuttingDown)
      for (const batch of forming.values()) for (const m of batch.members) settle(m, shuttingDown)
    })
  )

  const fail = (reason: InferenceError.Reason) => Effect.fail(InferenceError.make(reason))

  /** A queue timeout fails a request that is still waiting; a deadline fails it in any stage. */
  const fire = ({ kind, pending }: Timer): void => {
    const { request } = pending
    if (pending.state === "settled") return
    const elapsedMs = nowMs(clock) - pending.admittedAtMs
    if (kind === "queue") {
      if (pending.state === "running") return
      settle(pending, Exit.fail(new InferenceError.QueueTimeout({ modelId: request.modelId, requestId: request.requestId, queueTimeoutMs, waitedMs: elapsedMs })))
      return
    }
    const timeoutMs = Duration.toMillis(request.timeout)
    settle(pending, Exit.fail(new InferenceError.DeadlineExceeded({ modelId: request.modelId, requestId: request.requestId, timeoutMs, elapsedMs })))
  }

  const addTimer = (atMs: number, timer: Timer): DeadlineHeap.Entry<Timer> => {
    const entry = timers.push(atMs, timer)
    if (atMs < timerWakesAtMs) timersChanged.openUnsafe()
    return entry
  }

  /** Sleeps until the earliest deadline, fires what is due; woken early when an earlier one arrives. */
  const timerLoop = Effect.gen(function*() {
    while (true) {
      const now = nowMs(clock)
      for (let next = timers.peek(); next !== undefined && next.atMs <= now; next = timers.peek()) {
        timers.pop()
        fire(next.value)
      }
      timersChanged.closeUnsafe()
      const next = timers.peek()
      if (next === undefined) {
        timerWakesAtMs = Infinity
        yield* timersChanged.await
      } else {
        timerWakesAtMs = next.atMs
        yield* Effect.raceFirst(Effect.sleep(Duration.millis(next.atMs - now)), timersChanged.await)
      }
    }
  })
  yield* Effect.forkIn(timerLoop, scope)

  const record = (request: InferenceRequest, exit: Exit.Exit<InferenceResult.Success, InferenceError.InferenceError>, elapsedMs: number) => {
    const info = infoOf(request)
    if (Exit.isSuccess(exit)) return telemetry.recordSuccess(info, exit.value.latencyMs)
    const error = exit.cause.reasons.find((r) => r._tag === "Fail")
    if (error === undefined) return telemetry.recordCancelled(info, elapsedMs)
    const reason = error.error.reason
    switch (reason._tag) {
      case "QueueFull":
      case "ShuttingDown":
        return telemetry.recordRejected(info, reason)
      case "QueueTimeout":
      case "DeadlineExceeded":
        return telemetry.recordTimeout(info, elapsedMs)
      case "Cancelled":
        return telemetry.recordCancelled(info, elapsedMs)
      default:
        return telemetry.recordFailure(info, reason, elapsedMs)
    }
  }

  const admitAndAwait = (request: InferenceRequest, admittedAtMs: number) =>
    Effect.gen(function*() {
      if (draining) return yield* fail(new InferenceError.ShuttingDown({}))
      const metadata = yield* Effect.mapError(pool.metadata(request.modelId, request.modelVersion), InferenceError.make)
      const invalid = ModelMetadata.validateInputs(metadata, request.inputs)
      if (invalid !== undefined) return yield* fail(invalid)
      const batching = metadata.batching ?? BatchPolicy.disabled
      if (batching.enabled) {
        const disagreement = Batch.rowsDisagreement(batching, request.inputs)
        if (disagreement !== undefined) return yield* fail(new InferenceError.InvalidInput({ modelId: request.modelId, detail: disagreement }))
      }
      const joinable = batching.enabled ? Batch.keyOf(batching, request.inputs) : undefined
      const pending: Pending = {
        request,
        deferred: Deferred.makeUnsafe(),
        admittedAtMs,
        deadlineAtMs: admittedAtMs + Duration.toMillis(request.timeout),
        batchKey: joinable === undefined ? undefined : `${modelKey(request)}|${joinable.key}`,
        rows: joinable?.rows ?? 1,
        batching,
        capacity: metadata.concurrency ?? Infinity,
        entry: undefined,
        state: "queued",
        queueTimer: undefined,
        deadlineTimer: undefined
      }
      pending.entry = queue.offer(pending, request.priority, admittedAtMs)
      if (pending.entry === undefined) {
        return yield* fail(new InferenceError.QueueFull({ modelId: request.modelId, requestId: request.requestId, capacity: config.maxQueuedRequests }))
      }
      unsettled++
      settledLatch.closeUnsafe()
      wake.openUnsafe()
      if (pending.batchKey !== undefined) forming.get(pending.batchKey)?.arrival.openUnsafe()
      pending.deadlineTimer = addTimer(pending.deadlineAtMs, { pending, kind: "deadline" })
      if (queueTimeoutMs > 0 && queueTimeoutMs < Duration.toMillis(request.timeout)) {
        pending.queueTimer = addTimer(admittedAtMs + queueTimeoutMs, { pending, kind: "queue" })
      }
      return yield* Deferred.await(pending.deferred).pipe(
        Effect.mapError(InferenceError.make),
        Effect.map((output) =>
          InferenceResult.Success({
            requestId: request.requestId,
            outputs: output.outputs,
            latencyMs: nowMs(clock) - admittedAtMs,
            deviceUsed: output.deviceUsed
          }) as InferenceResult.Success
        ),
        // Whatever ends the wait (interruption included) takes the request out of the engine:
        // out of the queue or its forming batch, or, when running, its result is dropped.
        Effect.onExit(() => Effect.sync(() => settle(pending, Exit.interrupt())))
      )
    })

  const infer = (request: InferenceRequest): Effect.Effect<InferenceResult.Success, InferenceError.InferenceError> =>
    Effect.suspend(() => {
      const admittedAtMs = nowMs(clock)
      const traced = telemetry.recordStart(infoOf(request)).pipe(
        Effect.andThen(admitAndAwait(request, admittedAtMs)),
        Effect.onExit((exit) => record(request, exit, nowMs(clock) - admittedAtMs))
      )
      // Data-first on purpose: in effect 4.1 the piped form of withSpan ignores its options'
      // captureStackTrace, and a stack trace per request costs more than the rest of the span.
      return Effect.withSpan(traced, "Engine.infer", {
        attributes: { "inference.model": request.modelId, "inference.request_id": request.requestId, "inference.priority": request.priority },
        captureStackTrace: false
      })
    })

  const toResult = (request: InferenceRequest, startedMs: number) =>
  (error: InferenceError.InferenceError): InferenceResult.InferenceResult => {
    const reason = error.reason
    const elapsedMs = nowMs(clock) - startedMs
    switch (reason._tag) {
      case "Cancelled":
        return InferenceResult.Cancelled({ requestId: request.requestId, reason: reason.reason })
      case "DeadlineExceeded":
      case "QueueTimeout":
        return InferenceResult.TimedOut({ requestId: request.requestId, elapsedMs })
      default:
        return InferenceResult.Failed({ requestId: request.requestId, error, elapsedMs })
    }
  }

  const inferResult = (request: InferenceRequest, cancel?: CancelToken.Cancellation): Effect.Effect<InferenceResult.InferenceResult> =>
    Effect.suspend(() => {
      const startedMs = nowMs(clock)
      if (cancel === undefined) {
        return infer(request).pipe(Effect.catch((e) => Effect.succeed(toResult(request, startedMs)(e))))
      }
      const cancelled = CancelToken.await(cancel).pipe(Effect.flatMap((reason) =>
        fail(new InferenceError.Cancelled({ requestId: request.requestId, reason }))
      ))
      const run = CancelToken.isCancelled(cancel)
        ? Effect.andThen(telemetry.recordStart(infoOf(request)), Effect.onExit(cancelled, () => telemetry.recordCancelled(infoOf(request), 0)))
        : Effect.raceFirst(infer(request), cancelled)
      return run.pipe(Effect.catch((e) => Effect.succeed(toResult(request, startedMs)(e))))
    })

  const inferBatch: Service["inferBatch"] = (requests, options) =>
    Stream.fromIterable(requests).pipe(
      Stream.mapEffect((request) => inferResult(request, options?.cancel), {
        concurrency: options?.concurrency ?? config.maxConcurrentRequests,
        unordered: true
      })
    )

  const drain = (grace: Duration.Input) =>
    Effect.suspend(() => {
      draining = true
      noteIdle()
      return settledLatch.await.pipe(
        Effect.timeoutOption(grace),
        Effect.map((o) => ({ drained: o._tag === "Some" }))
      )
    })

  return AsyncInferenceEngine.of({
    infer,
    inferResult,
    inferBatch,
    queueStats: Effect.sync(() => queue.stats()),
    queueStatsByModel: Effect.sync(() => {
      const byModel = new Map<string, [number, number, number, number]>()
      for (const pending of queue.values()) {
        const model = pending.request.modelId
        let counts = byModel.get(model)
        if (counts === undefined) byModel.set(model, counts = [0, 0, 0, 0])
        counts[Priority.rank(pending.request.priority)]++
      }
      return new Map([...byModel].map(([model, [critical, high, normal, low]]) =>
        [model, { critical, high, normal, low, total: critical + high + normal + low }] as const
      ))
    }),
    pending: Effect.sync(() => unsettled),
    config,
    drain,
    isDraining: Effect.sync(() => draining),
    diagnostics: Effect.sync(() => {
      let runs = 0
      for (const n of runsInFlight.values()) runs += n
      let formingMembers = 0
      for (const batch of forming.values()) formingMembers += batch.members.length
      return { queued: queue.size, forming: formingMembers, runs, unsettled, abandoned: { ...abandoned } }
    })
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
