/**
 * The engine's mechanism: it acts on what the `Scheduler` decides. One pump, run as a microtask
 * once per burst of admissions and after each run, dispatches every batch the scheduler allows;
 * one timer fiber sleeps on the Clock until the next queue timeout, deadline or batching delay;
 * each dispatched batch runs in its own fiber on the `ModelPool`, and its results are routed back
 * to the callers that still wait.
 *
 * - Nothing here is per request but a scheduler record and one queue-wait histogram update: no
 *   fiber, Deferred, timer or Effect per request.
 * - A batch whose run fails (RunFailed) is run again member by member, under the same slot,
 *   within each member's deadline, so one poisoned input fails only its own request.
 * - A batch concatenated by the engine is handed to the pool as its own (`RunOptions.transfer`):
 *   a worker pool moves its buffers instead of copying them.
 * - `close` (the engine's scope closing) answers every queued and forming request with
 *   ShuttingDown and interrupts the runs in progress, whose callers get ShuttingDown too.
 *
 * @module Dispatcher
 */
import { Clock, Context, Duration, Effect, Exit, Fiber, Latch, type Scope } from "effect"
import * as Batch from "./Batch.ts"
import type * as BatchPolicy from "./BatchPolicy.ts"
import * as InferenceError from "./InferenceError.ts"
import type { InferenceRequest } from "./InferenceRequest.ts"
import { ModelPool, type RunOutput } from "./ModelPool.ts"
import * as Scheduler from "./Scheduler.ts"
import { TelemetryCollector } from "./Telemetry.ts"

/** What the dispatcher keeps of a caller: its request and how to answer it. */
export interface Caller {
  readonly request: InferenceRequest
  readonly batching: BatchPolicy.BatchingConfig
  /** Answers the caller. Called at most once, synchronously, when its request settles. */
  readonly resume: (exit: Exit.Exit<RunOutput, InferenceError.Reason>) => void
}

export type Request = Scheduler.Request<Caller>

export interface Dispatcher {
  readonly scheduler: Scheduler.Scheduler<Caller>
  /** The Clock's monotonic time in milliseconds. */
  readonly nowMs: () => number
  /** Admits a request; the next pump dispatches it. Undefined (nothing queued) when the queue is full. */
  readonly submit: (input: Scheduler.AdmitInput<Caller>) => Request | undefined
  /** The caller left: the request leaves the queue or its batch, or its result will be dropped. It is not answered. */
  readonly cancel: (request: Request) => void
  /** Answers a request now with `exit` (a cancel token), taking it out as `cancel` does. */
  readonly answer: (request: Request, exit: Exit.Exit<RunOutput, InferenceError.Reason>) => void
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

/** Builds the dispatcher in the current scope; closing the scope stops it (see the module doc). */
export const make = (options: Scheduler.Options): Effect.Effect<Dispatcher, never, Scope.Scope | ModelPool | TelemetryCollector> =>
  Effect.gen(function*() {
    const pool = yield* ModelPool
    const telemetry = yield* TelemetryCollector
    const clock = yield* Clock.Clock
    const gate = yield* DispatchGate
    const scope = yield* Effect.scope
    const context = yield* Effect.context<never>()
    const runFork = Effect.runForkWith(context)
    const scheduler = Scheduler.make<Caller>(options)
    const nowMs = (): number => Number(clock.monotonicTimeNanosUnsafe()) / 1e6
    const runs = new Set<Fiber.Fiber<void>>()
    let gateOpen = false
    let closed = false
    let pumpScheduled = false
    let wakeAtMs = Infinity
    const wakeChanged = Latch.makeUnsafe(false)

    const answer = (request: Request, exit: Exit.Exit<RunOutput, InferenceError.Reason>, abandoned = false): void => {
      if (request.stage === "settled") return
      scheduler.settle(request, abandoned)
      request.value.resume(exit)
    }

    const expired = (request: Request, why: Scheduler.Expiry, now: number): Exit.Exit<never, InferenceError.Reason> => {
      const { request: r } = request.value
      const elapsedMs = now - request.admittedAtMs
      return why === "queue"
        ? Exit.fail(new InferenceError.QueueTimeout({ modelId: r.modelId, requestId: r.requestId, queueTimeoutMs: request.queueDeadlineAtMs - request.admittedAtMs, waitedMs: elapsedMs }))
        : Exit.fail(new InferenceError.DeadlineExceeded({ modelId: r.modelId, requestId: r.requestId, timeoutMs: request.deadlineAtMs - request.admittedAtMs, elapsedMs }))
    }

    /** Settles what is due, dispatches what may go, and sets the timer for what comes next. */
    const pump = (): void => {
      pumpScheduled = false
      if (closed || !gateOpen) return
      const now = nowMs()
      for (const { request, why } of scheduler.expire(now)) request.value.resume(expired(request, why, now))
      let waitUntil = Infinity
      while (true) {
        const step = scheduler.next(now)
        if (step._tag === "Dispatch") {
          dispatch(step.batch, now)
          continue
        }
        if (step._tag === "Wait") waitUntil = step.untilMs
        break
      }
      const next = Math.min(waitUntil, scheduler.nextTimerMs())
      const sooner = next < wakeAtMs
      // Set before waking the timer: opening the latch may resume it synchronously.
      wakeAtMs = next
      if (sooner) wakeChanged.openUnsafe()
    }

    const schedule = (): void => {
      if (pumpScheduled || closed) return
      pumpScheduled = true
      queueMicrotask(pump)
    }

    /** Sleeps until `wakeAtMs`, woken early when an earlier time is set; then pumps. */
    const timer = Effect.gen(function*() {
      while (true) {
        wakeChanged.closeUnsafe()
        const now = nowMs()
        if (wakeAtMs === Infinity) yield* wakeChanged.await
        else if (wakeAtMs > now) yield* Effect.raceFirst(Effect.sleep(Duration.millis(wakeAtMs - now)), wakeChanged.await)
        if (nowMs() >= wakeAtMs) pump()
      }
    })

    /** One native run of the members still waiting; a failed batch reruns them alone. */
    const runMembers = (batch: Scheduler.Batch<Caller>, candidates: ReadonlyArray<Request>): Effect.Effect<void> =>
      Effect.suspend(() => {
        const members = candidates.filter((m) => m.stage === "running")
        if (members.length === 0) return Effect.void
        const { request, batching } = members[0]!.value
        const startedMs = nowMs()
        let lastDeadlineMs = 0
        for (const m of members) lastDeadlineMs = Math.max(lastDeadlineMs, m.deadlineAtMs)
        const joined = members.length > 1
        const inputs = joined ? Batch.concat(batching, members.map((m) => m.value.request.inputs)) : request.inputs
        const runOptions = {
          requestId: request.requestId,
          version: request.modelVersion,
          // The run is wanted until the last member's deadline: a pool that can stop runs stops it only once every caller has given up.
          timeout: Duration.millis(Math.max(0, lastDeadlineMs - startedMs)),
          transfer: joined
        }
        return Effect.flatMap(Effect.exit(pool.run(request.modelId, inputs, runOptions)), (exit) => {
          const runMs = nowMs() - startedMs
          batch.model.expectedRunMs = runMs
          telemetry.recordRun(request.modelId, runMs, members.length)
          if (Exit.isFailure(exit)) {
            // One member's input can fail a whole batch: each member runs again alone.
            if (joined && isRunFailure(exit)) return Effect.forEach(members, (m) => runMembers(batch, [m]), { discard: true })
            for (const m of members) answer(m, exit)
            return Effect.void
          }
          const parts = joined ? Batch.split(batching, exit.value.outputs, members.map((m) => m.rows)) : [exit.value.outputs]
          for (let i = 0; i < members.length; i++) {
            const m = members[i]!
            answer(m, parts === undefined
              ? Exit.fail(new InferenceError.RunFailed({ modelId: request.modelId, requestId: m.value.request.requestId, detail: "the model's outputs do not have the batch's rows on their batch axis" }))
              : Exit.succeed({ outputs: parts[i]!, deviceUsed: exit.value.deviceUsed }))
          }
          return Effect.void
        })
      })

    const dispatch = (batch: Scheduler.Batch<Caller>, now: number): void => {
      const modelId = batch.members[0]!.value.request.modelId
      for (const m of batch.members) telemetry.recordQueueWait(modelId, m.priority, now - m.admittedAtMs)
      const fiber = runFork(runMembers(batch, batch.members).pipe(
        Effect.onInterrupt(() => Effect.sync(() => {
          for (const m of batch.members) answer(m, shuttingDown)
        }))
      ))
      runs.add(fiber)
      fiber.addObserver(() => {
        runs.delete(fiber)
        scheduler.complete(batch)
        schedule()
      })
    }

    yield* Effect.forkIn(timer, scope)
    yield* Effect.forkIn(
      Effect.andThen(gate, Effect.sync(() => {
        gateOpen = true
        schedule()
      })),
      scope,
      { startImmediately: true }
    )

    // On close: answer everything still queued or forming, and interrupt the runs.
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closed = true
        for (const request of scheduler.waiting()) answer(request, shuttingDown)
        return Fiber.interruptAll([...runs])
      })
    )

    return {
      scheduler,
      nowMs,
      submit: (input) => {
        const request = scheduler.admit(input, nowMs())
        if (request !== undefined) schedule()
        return request
      },
      cancel: (request) => {
        if (scheduler.cancel(request)) schedule()
      },
      answer: (request, exit) => {
        answer(request, exit, true)
        schedule()
      }
    } satisfies Dispatcher
  })
