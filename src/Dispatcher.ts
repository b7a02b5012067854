/**
 * The engine's mechanism: it acts on what the `Scheduler` decides. One pump, run as a microtask
 * once per burst of admissions and after each run, dispatches every batch the scheduler allows;
 * one timer fiber sleeps on the Clock until the next queue timeout, deadline or batching delay;
 * each dispatched batch runs in its own fiber on the `ModelPool`, and its results are routed back
 * to the callers that still wait.
 *
 * - Nothing here is per request but a scheduler record and one queue-wait histogram update: no
 *   fiber, Deferred, timer or Effect per request.
 * - A batch (or a group) whose run fails as a whole (RunFailed, or a defect from the pool, which
 *   is taken as RunFailed) is run again member by member, under the same slot, within each
 *   member's deadline, so one poisoned input fails only its own request.
 * - A batch concatenated by the engine, or a request run alone whose caller gave its inputs away
 *   (`InferenceRequest.transferInputs`), is handed to the pool as its own (`RunOptions.transfer`):
 *   a worker pool moves its buffers instead of copying them.
 * - A job sent ahead to a busy instance whose callers have all left (cancelled, or past their
 *   deadlines) is withdrawn: its run is interrupted, so the pool drops it unsent or the worker
 *   skips it, and its slot is free once the pool has let go of it (a pool that reports starts
 *   holds the interruption until then: a cancel that reaches the worker just as it starts the job
 *   is too late, and that run holds its slot and permit to its end). A job that has begun is
 *   interrupted only on a pool that stops such runs (`ModelMetadata.stopsAbandonedRuns`: process
 *   isolation kills the process after its grace), once every caller of it has left; its slot
 *   and permit are free once the run is over. Which jobs have begun is the pool's word where it
 *   reports starts (`RunOptions.onStart`).
 * - `close` (the engine's scope closing) answers every request with ShuttingDown, queued,
 *   forming or running, and interrupts the runs in progress without waiting for their end.
 *
 * @module Dispatcher
 */
import { Cause, Clock, Context, Duration, Effect, Exit, Fiber, Latch, type Scope } from "effect"
import * as Batch from "./Batch.ts"
import type * as BatchPolicy from "./BatchPolicy.ts"
import * as InferenceError from "./InferenceError.ts"
import type { InferenceRequest } from "./InferenceRequest.ts"
import type * as ModelMetadata from "./ModelMetadata.ts"
import { ModelPool, type RunOutput } from "./ModelPool.ts"
import * as Scheduler from "./Scheduler.ts"
import { TelemetryCollector } from "./Telemetry.ts"
import { millisOf } from "./internal/Millis.ts"

/** What the dispatcher keeps of a caller: its request and how to answer it. */
export interface Caller {
  readonly request: InferenceRequest
  /**
   * The model's metadata as admission found it, its inputs validated against it: the job runs
   * under its version (`RunOptions.version`), whatever version is the highest by then, and the
   * pool refuses it if a reload has changed that version's inputs or outputs (`RunOptions.admittedAs`).
   */
  readonly metadata: ModelMetadata.ModelMetadata
  readonly batching: BatchPolicy.BatchingConfig
  /** Answers the caller. Called at most once, synchronously, when its request settles. */
  readonly resume: (exit: Exit.Exit<RunOutput, InferenceError.Reason>) => void
}

export type Request = Scheduler.Request<Caller>

export interface Dispatcher {
  readonly scheduler: Scheduler.Scheduler<Caller>
  /** The Clock's monotonic time in milliseconds. */
  readonly nowMs: () => number
  /** Admits a request at `nowMs` (default: the Clock now); the next pump dispatches it. Undefined (nothing queued) when the queue is full or the dispatcher closed. */
  readonly submit: (input: Scheduler.AdmitInput<Caller>, nowMs?: number) => Request | undefined
  /**
   * The caller left: the request leaves the queue or its batch, or its result will be dropped (a
   * job sent ahead that nobody waits for now is withdrawn). It is not answered.
   */
  readonly cancel: (request: Request) => void
  /**
   * Answers every request not yet handed to an instance (queued, or in a batch forming) with
   * ShuttingDown: they never run. What a drain does once its grace has passed, so that an edge
   * can answer them before it closes its connections. Runs, and jobs sent ahead, go on. How many.
   */
  readonly refuseWaiting: () => number
}

/**
 * A test hook in the spirit of Triton's TRITONSERVER_DELAY_SCHEDULER: nothing is dispatched until
 * this effect completes, so a test can hold dispatch until the queue holds exactly what it wants
 * batched. The default completes at once.
 */
export const DispatchGate = Context.Reference<Effect.Effect<void>>("effect-onnx/Engine/DispatchGate", {
  defaultValue: () => Effect.void
})

const shuttingDown = Exit.fail(new InferenceError.ShuttingDown({}))

/** The run itself failed (not a missing or unavailable model): worth running a batch's members alone. */
const isRunFailure = (exit: Exit.Exit<unknown, InferenceError.Reason>): boolean => {
  const reason = exit._tag === "Failure" ? exit.cause.reasons[0] : undefined
  return reason?._tag === "Fail" && reason.error._tag === "RunFailed"
}

/** What a defect says, for a RunFailed's detail. */
const defectDetail = (cause: Cause.Cause<unknown>): string => {
  const defect = Cause.squash(cause)
  return `the run ended with a defect: ${defect instanceof Error ? defect.message : String(defect)}`
}

/**
 * A run's exit as its callers get it: a defect from the pool (a bug, a lost worker) is the run
 * failing (RunFailed, the backend's fault), not the engine closing. Only interruption, which
 * the engine's own close causes, stays as it is (its callers get ShuttingDown).
 */
const asRunExit = <A>(exit: Exit.Exit<A, InferenceError.Reason>, modelId: string, requestId: string): Exit.Exit<A, InferenceError.Reason> =>
  Exit.isSuccess(exit) || Cause.hasFails(exit.cause) || Cause.hasInterruptsOnly(exit.cause)
    ? exit
    : Exit.fail(new InferenceError.RunFailed({ modelId, requestId, detail: defectDetail(exit.cause) }))

/** The answer to a member whose run's fiber ended without answering it: interrupted (close) or a defect. */
const abortedExit = (request: Request, cause: Cause.Cause<unknown>): Exit.Exit<never, InferenceError.Reason> => {
  if (Cause.hasInterruptsOnly(cause)) return shuttingDown
  const { modelId, requestId } = request.value.request
  return Exit.fail(new InferenceError.RunFailed({ modelId, requestId, detail: defectDetail(cause) }))
}

/** The mechanism's state: what the operations below share. */
interface State {
  readonly scheduler: Scheduler.Scheduler<Caller>
  readonly pool: ModelPool["Service"]
  readonly telemetry: TelemetryCollector["Service"]
  readonly nowMs: () => number
  readonly runFork: (effect: Effect.Effect<void>) => Fiber.Fiber<void>
  /**
   * Runs in progress, interrupted on close; each batch's own is also its `run` (withdrawn when a job
   * sent ahead is abandoned). Not a Map keyed by batch: that cost about 8% of the throughput at 64
   * outstanding (engine microbenchmark, paired runs).
   */
  readonly runs: Set<Fiber.Fiber<void>>
  readonly wakeChanged: Latch.Latch
  gateOpen: boolean
  closed: boolean
  pumpScheduled: boolean
  /** When the timer fiber pumps next. */
  wakeAtMs: number
  /**
   * When the timer fiber's sleep ends: Infinity while it waits for `wakeChanged` alone, -Infinity
   * while it is awake (it reads `wakeAtMs` before it sleeps again). It is woken only for a time
   * sooner than this: a later `wakeAtMs` costs no wake-up (the sleep ends early, and the fiber
   * sleeps again), where waking it forked a new sleep and race for every request at low load.
   */
  sleepsUntilMs: number
}

/** Answers a request once: out of the scheduler, then its caller resumed. */
const answer = (state: State, request: Request, exit: Exit.Exit<RunOutput, InferenceError.Reason>, expired = false): void => {
  if (request.stage === "settled") return
  state.scheduler.settle(request, expired)
  request.value.resume(exit)
}

/**
 * After `request` left: if its job now runs or waits for nobody (`Scheduler.isAbandoned`), its run
 * is interrupted: withdrawn from a busy instance, or stopped by a pool that can stop runs.
 */
const withdrawIfAbandoned = (state: State, request: Request): void => {
  const batch = request.batch
  if (batch !== undefined && state.scheduler.isAbandoned(batch)) (batch.run as Fiber.Fiber<void> | undefined)?.interruptUnsafe()
}

/** A span of the monotonic clock in ms, without the floating-point dust of a difference of two large times. */
const spanMs = (from: number, to: number): number => Math.round((to - from) * 1e3) / 1e3

const expiredExit = (request: Request, why: Scheduler.Expiry, now: number): Exit.Exit<never, InferenceError.Reason> => {
  const { modelId, requestId, timeout } = request.value.request
  if (why === "queue") {
    return Exit.fail(new InferenceError.QueueTimeout({ modelId, requestId, queueTimeoutMs: spanMs(request.admittedAtMs, request.queueDeadlineAtMs), waitedMs: spanMs(request.admittedAtMs, now) }))
  }
  // From submission, as the deadline counts: admission may have come after a metadata lookup.
  const timeoutMs = millisOf(timeout)
  return Exit.fail(new InferenceError.DeadlineExceeded({ modelId, requestId, timeoutMs, elapsedMs: timeoutMs + spanMs(request.deadlineAtMs, now) }))
}

/**
 * Answers `request` with its run's failure; a RunFailed once its deadline has passed is the
 * deadline's doing (DeadlineExceeded, a 504 counted as a timeout, and expired in the scheduler as
 * its timer would have): a pool that stops runs refuses a job whose deadline passed while it
 * waited for an instance, and kills a run at its deadline (plus its grace), each a RunFailed a
 * moment before the engine's own timer answers it. Any other failure (the model unloading, say)
 * keeps its reason, past the deadline or not.
 */
const answerFailed = (state: State, request: Request, cause: Cause.Cause<InferenceError.Reason>): void => {
  const exit = Exit.failCause(cause)
  const now = state.nowMs()
  if (isRunFailure(exit) && now >= request.deadlineAtMs) answer(state, request, expiredExit(request, "deadline", now), true)
  else answer(state, request, exit)
}

/** Settles what is due, dispatches what may go, and sets the timer for what comes next. */
const pump = (state: State): void => {
  state.pumpScheduled = false
  if (state.closed || !state.gateOpen) return
  const { scheduler } = state
  const now = state.nowMs()
  for (const { request, why } of scheduler.expire(now)) {
    request.value.resume(expiredExit(request, why, now))
    withdrawIfAbandoned(state, request)
  }
  let waitUntil = Infinity
  while (true) {
    const step = scheduler.next(now)
    if (step._tag === "Dispatch") {
      dispatch(state, step.batch, now)
      continue
    }
    if (step._tag === "Wait") waitUntil = step.untilMs
    break
  }
  const next = Math.min(waitUntil, scheduler.nextTimerMs())
  // Set before waking the timer: opening the latch may resume it synchronously.
  state.wakeAtMs = next
  if (next < state.sleepsUntilMs) state.wakeChanged.openUnsafe()
}

/** Pumps once at the end of the current burst (a microtask), however many admissions it holds. */
const schedule = (state: State): void => {
  if (state.pumpScheduled || state.closed) return
  state.pumpScheduled = true
  queueMicrotask(() => pump(state))
}

/**
 * The timer fiber: sleeps on the Clock until `wakeAtMs`, woken early when a time sooner than its
 * sleep's end is set (`sleepsUntilMs`); pumps once `wakeAtMs` has come.
 */
const timer = (state: State) =>
  Effect.gen(function*() {
    while (true) {
      state.wakeChanged.closeUnsafe()
      const now = state.nowMs()
      if (state.wakeAtMs === Infinity) {
        state.sleepsUntilMs = Infinity
        yield* state.wakeChanged.await
      } else if (state.wakeAtMs > now) {
        state.sleepsUntilMs = state.wakeAtMs
        yield* Effect.raceFirst(Effect.sleep(Duration.millis(state.wakeAtMs - now)), state.wakeChanged.await)
      }
      state.sleepsUntilMs = -Infinity
      if (state.nowMs() >= state.wakeAtMs) pump(state)
    }
  })

/** Runs a dispatched batch in its own fiber; when it ends, its slot is freed and the next pump follows. */
const dispatch = (state: State, batch: Scheduler.Batch<Caller>, now: number): void => {
  const modelId = batch.members[0]!.value.request.modelId
  for (const m of batch.members) state.telemetry.recordQueueWait(modelId, m.priority, now - m.admittedAtMs, m.value.metadata.version)
  const work = batch.grouped && batch.members.length > 1 ? runGroup(state, batch) : runMembers(state, batch, batch.members)
  const fiber = state.runFork(work.pipe(
    Effect.onExit((exit) =>
      Exit.isSuccess(exit) ? Effect.void : Effect.sync(() => {
        for (const m of batch.members) answer(state, m, abortedExit(m, exit.cause))
      })
    )
  ))
  state.runs.add(fiber)
  batch.run = fiber
  fiber.addObserver(() => {
    state.runs.delete(fiber)
    batch.run = undefined
    state.scheduler.complete(batch, state.nowMs())
    schedule(state)
  })
}

/** What the pool calls when the batch's job begins on an instance (`RunOptions.onStart`). */
const startedFor = (state: State, batch: Scheduler.Batch<Caller>) => () => state.scheduler.started(batch, state.nowMs())

/** One native run of the members still waiting; a failed batch reruns them alone. */
const runMembers = (state: State, batch: Scheduler.Batch<Caller>, candidates: ReadonlyArray<Request>): Effect.Effect<void> =>
  Effect.suspend(() => {
    const members = candidates.filter((m) => m.stage === "running")
    if (members.length === 0) return Effect.void
    const { request, metadata, batching } = members[0]!.value
    const startedMs = state.nowMs()
    let lastDeadlineMs = 0
    for (const m of members) lastDeadlineMs = Math.max(lastDeadlineMs, m.deadlineAtMs)
    const joined = members.length > 1
    // A rerun (a member alone after its batch's job failed) is a new job: it may wait in a busy instance again.
    state.scheduler.resubmitted(batch)
    const inputs = joined ? Batch.concat(batching, members.map((m) => m.value.request.inputs)) : request.inputs
    const runOptions = {
      requestId: request.requestId,
      // Every member was admitted to this version (one model key a job), whatever version is the highest now.
      version: metadata.version,
      admittedAs: metadata,
      // The run is wanted until the last member's deadline: a pool that can stop runs stops it only once every caller has given up.
      timeout: Duration.millis(Math.max(0, lastDeadlineMs - startedMs)),
      transfer: joined || request.transferInputs === true,
      onStart: startedFor(state, batch)
    }
    return Effect.flatMap(Effect.exit(state.pool.run(request.modelId, inputs, runOptions)), (ran) => {
      const exit = asRunExit(ran, request.modelId, request.requestId)
      const runMs = state.nowMs() - startedMs
      batch.model.expectedRunMs = runMs
      // The learned cost wants the native run alone; a pool that does not say gets the wall time.
      let rows = 0
      for (const m of members) rows += m.rows
      const nativeMs = Exit.isSuccess(exit) ? exit.value.runMs : undefined
      batch.model.cost.observe(rows, nativeMs ?? runMs)
      // Outputs that are not rows of the inputs (a detection model's `[num_detections, …]`): the
      // model cannot be batched. Its requests go alone from now on, and a batch's members run
      // again alone, each answered with its own run's outputs.
      // Only requests that could be joined (a batch key) know their rows: one too tall for a batch,
      // or whose unbatched inputs are too long to key, runs alone counted as 1 row.
      const mismatch = Exit.isSuccess(exit) && batching.enabled && batch.key !== undefined ? Batch.rowsMismatch(batching, exit.value.outputs, rows) : undefined
      let warned: Effect.Effect<void> = Effect.void
      if (mismatch !== undefined) {
        const key = Scheduler.unbatchableKey(batch.model.spec)
        if (!state.scheduler.unbatchable.has(key)) {
          state.scheduler.unbatchable.add(key)
          warned = Effect.logWarning(
            `model ${request.modelId} version ${metadata.version}: ${mismatch}: its outputs are not rows of its inputs, so its requests are not batched from now on ` +
              `(set "batching": { "enabled": false } in its config.json)`
          )
        }
        if (joined) return Effect.andThen(warned, Effect.forEach(members, (m) => runMembers(state, batch, [m]), { discard: true }))
      }
      // The compute time is the native run's too: a job sent ahead to a busy instance waited there first.
      // Only a run that completed counts (Triton's execution and inference counts): a failed
      // batch's members run again alone, and would count twice.
      if (Exit.isSuccess(exit)) state.telemetry.recordRun(request.modelId, nativeMs ?? runMs, members.length, rows, metadata.version)
      if (Exit.isFailure(exit) && joined && isRunFailure(exit)) {
        // One member's input can fail a whole batch: each member runs again alone, but one past
        // its deadline (the pool refused or killed the job for it) is answered so, not run again.
        for (const m of members) if (state.nowMs() >= m.deadlineAtMs) answerFailed(state, m, exit.cause)
        return Effect.forEach(members, (m) => runMembers(state, batch, [m]), { discard: true })
      }
      deliver(state, members, batching, exit)
      return warned
    })
  })

/** A group: each member its own native run, sent to the pool in one job; each answered with its own outcome. */
const runGroup = (state: State, batch: Scheduler.Batch<Caller>): Effect.Effect<void> =>
  Effect.suspend(() => {
    const members = batch.members.filter((m) => m.stage === "running")
    if (members.length === 0) return Effect.void
    const { request, metadata } = members[0]!.value
    const startedMs = state.nowMs()
    let lastDeadlineMs = 0
    for (const m of members) lastDeadlineMs = Math.max(lastDeadlineMs, m.deadlineAtMs)
    const runOptions = {
      requestId: request.requestId,
      version: metadata.version,
      admittedAs: metadata,
      timeout: Duration.millis(Math.max(0, lastDeadlineMs - startedMs)),
      onStart: startedFor(state, batch)
    }
    return Effect.flatMap(Effect.exit(state.pool.runGroup!(request.modelId, members.map((m) => m.value.request.inputs), runOptions)), (ran) => {
      const exit = asRunExit(ran, request.modelId, request.requestId)
      if (Exit.isFailure(exit)) {
        // The whole job failed (its instance died, or was killed at the group's deadline): as a
        // batch's members, each still waiting runs again alone, so one crashing input fails only
        // itself; one past its deadline is answered so (`answerFailed`), not run again.
        for (const m of members) if (state.nowMs() >= m.deadlineAtMs) answerFailed(state, m, exit.cause)
        if (members.length > 1 && isRunFailure(exit)) return Effect.forEach(members, (m) => runMembers(state, batch, [m]), { discard: true })
        for (const m of members) answerFailed(state, m, exit.cause)
        return Effect.void
      }
      const outcomes = exit.value
      // The model's native run time per request (as the pool measured it, else the group's wall
      // time per member), for the size of its next groups (`Scheduler.groupCap`).
      let nativeMs = 0
      for (const o of outcomes) nativeMs += Exit.isSuccess(o) ? o.value.runMs ?? NaN : 0
      const wallMs = (state.nowMs() - startedMs) / members.length
      batch.model.expectedRunMs = Number.isFinite(nativeMs) ? nativeMs / members.length : wallMs
      for (let i = 0; i < members.length; i++) {
        const m = members[i]!
        const outcome = outcomes[i]
        const { modelId, requestId } = m.value.request
        // A run the pool did not time counts the group's wall time per member, as a batch's run does; a failed one does not count.
        if (outcome !== undefined && Exit.isSuccess(outcome)) state.telemetry.recordRun(modelId, outcome.value.runMs ?? wallMs, 1, m.rows, metadata.version)
        if (outcome === undefined) answer(state, m, Exit.fail(new InferenceError.RunFailed({ modelId, requestId, detail: "the pool answered fewer runs than it was sent" })))
        else if (Exit.isSuccess(outcome)) answer(state, m, Exit.succeed({ outputs: outcome.value.outputs, deviceUsed: outcome.value.deviceUsed }))
        else answer(state, m, Exit.fail(new InferenceError.RunFailed({ modelId, requestId, detail: outcome.cause.reasons[0]?._tag === "Fail" ? outcome.cause.reasons[0].error.detail : "run failed" })))
      }
      return Effect.void
    })
  })

/** Routes a run's outcome to its members: each its own rows of the outputs, or the failure. */
const deliver = (
  state: State,
  members: ReadonlyArray<Request>,
  batching: BatchPolicy.BatchingConfig,
  exit: Exit.Exit<RunOutput, InferenceError.Reason>
): void => {
  if (Exit.isFailure(exit)) {
    for (const m of members) answerFailed(state, m, exit.cause)
    return
  }
  const parts = members.length > 1 ? Batch.split(batching, exit.value.outputs, members.map((m) => m.rows)) : [exit.value.outputs]
  for (let i = 0; i < members.length; i++) {
    const m = members[i]!
    const { modelId, requestId } = m.value.request
    answer(state, m, parts === undefined
      ? Exit.fail(new InferenceError.RunFailed({ modelId, requestId, detail: "the model's outputs do not split into the batch's rows: an output's batch dim is not the rows, or its data does not fill its dims" }))
      : Exit.succeed({ outputs: parts[i]!, deviceUsed: exit.value.deviceUsed }))
  }
}

/**
 * On close: answers every request not yet answered with ShuttingDown (queued, forming, or in a run),
 * and interrupts the runs without waiting for them to end: a job sent ahead to a busy instance
 * ends only when that instance lets go of it, after the run before it, which the pool's own
 * close (and its close timeout) sees to.
 */
const close = (state: State): Effect.Effect<void> =>
  Effect.sync(() => {
    state.closed = true
    for (const request of state.scheduler.waiting()) answer(state, request, shuttingDown)
    for (const request of state.scheduler.running()) answer(state, request, shuttingDown)
    for (const fiber of state.runs) fiber.interruptUnsafe()
  })

/**
 * The Clock's monotonic time in ms. Effect's own clock reads `process.hrtime.bigint()`, a BigInt
 * a call (about 60 bytes, two or three reads a request): where the Clock is that one, the same
 * monotonic time comes from `performance.now()` (its origin differs, and the dispatcher only
 * compares its own readings). Any other Clock (a TestClock) is read as it is.
 */
const monotonicMs = (clock: Clock.Clock): (() => number) =>
  Object.getPrototypeOf(clock) === Object.getPrototypeOf(Clock.Clock.defaultValue())
    ? () => performance.now()
    : () => Number(clock.monotonicTimeNanosUnsafe()) / 1e6

/** Builds the dispatcher in the current scope; closing the scope stops it (see the module doc). */
export const make = (options: Scheduler.Options): Effect.Effect<Dispatcher, never, Scope.Scope | ModelPool | TelemetryCollector> =>
  Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const gate = yield* DispatchGate
    const scope = yield* Effect.scope
    const state: State = {
      scheduler: Scheduler.make<Caller>(options),
      pool: yield* ModelPool,
      telemetry: yield* TelemetryCollector,
      nowMs: monotonicMs(clock),
      runFork: Effect.runForkWith(yield* Effect.context<never>()),
      runs: new Set(),
      wakeChanged: Latch.makeUnsafe(false),
      gateOpen: false,
      closed: false,
      pumpScheduled: false,
      wakeAtMs: Infinity,
      sleepsUntilMs: -Infinity
    }
    yield* Effect.forkIn(timer(state), scope)
    const openGate = Effect.sync(() => {
      state.gateOpen = true
      schedule(state)
    })
    yield* Effect.forkIn(Effect.andThen(gate, openGate), scope, { startImmediately: true })
    yield* Effect.addFinalizer(() => close(state))
    return {
      scheduler: state.scheduler,
      nowMs: state.nowMs,
      submit: (input, nowMs = state.nowMs()) => {
        if (state.closed) return undefined
        const request = state.scheduler.admit(input, nowMs)
        if (request !== undefined) schedule(state)
        return request
      },
      cancel: (request) => {
        if (!state.scheduler.cancel(request)) return
        withdrawIfAbandoned(state, request)
        schedule(state)
      },
      refuseWaiting: () => {
        const waiting = state.scheduler.waiting()
        for (const request of waiting) answer(state, request, shuttingDown)
        schedule(state)
        return waiting.length
      }
    } satisfies Dispatcher
  })
