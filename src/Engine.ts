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
import * as CancelToken from "./CancelToken.ts"
import * as InferenceError from "./InferenceError.ts"
import type { InferenceRequest } from "./InferenceRequest.ts"
import * as InferenceResult from "./InferenceResult.ts"
import * as ModelMetadata from "./ModelMetadata.ts"
import { ModelPool, type RunOutput } from "./ModelPool.ts"
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
  /** Requests admitted and not yet settled: queued plus running. */
  readonly pending: Effect.Effect<number>
  readonly config: AsyncConfig
  /**
   * Stops admitting (new requests fail with ShuttingDown), then waits until every queued and
   * running request has settled, or `grace` has passed. Idempotent.
   */
  readonly drain: (grace: Duration.Input) => Effect.Effect<{ readonly drained: boolean }>
  /** True once draining has begun. */
  readonly isDraining: Effect.Effect<boolean>
}

type State = "queued" | "running" | "settled"

interface Pending {
  readonly request: InferenceRequest
  readonly deferred: Deferred.Deferred<RunOutput, InferenceError.Reason>
  readonly admittedAtMs: number
  entry: PriorityQueue.Entry<Pending> | undefined
  state: State
}

const nowMs = (clock: Clock.Clock): number => Number(clock.monotonicTimeNanosUnsafe()) / 1e6

const infoOf = (request: InferenceRequest): RequestInfo => ({
  modelId: request.modelId,
  requestId: request.requestId,
  priority: request.priority
})

/** Builds the engine in the current scope; closing the scope stops it (see `layer`). */
export const make = Effect.gen(function*() {
  const config = yield* AsyncConfigService
  const pool = yield* ModelPool
  const telemetry = yield* TelemetryCollector
  const clock = yield* Clock.Clock
  const scope = yield* Effect.scope

  const queue = PriorityQueue.make<Pending>(config.maxQueuedRequests, config.enablePriorityQueue)
  const permits = yield* Semaphore.make(config.maxConcurrentRequests)
  const wake = yield* Latch.make(false)
  const settledLatch = yield* Latch.make(false)
  let running = 0
  let draining = false
  const queueTimeoutMs = Duration.toMillis(config.queueTimeout)

  const settle = (pending: Pending, exit: Exit.Exit<RunOutput, InferenceError.Reason>): void => {
    if (pending.state === "settled") return
    pending.state = "settled"
    Deferred.doneUnsafe(pending.deferred, exit)
  }

  const noteIdle = () => {
    if (queue.size === 0 && running === 0) settledLatch.openUnsafe()
  }

  /** Runs one dispatched request; the caller holds a permit until the native run ends. */
  const runOne = (pending: Pending): Effect.Effect<void> =>
    Effect.suspend(() => {
      const { request } = pending
      const startedMs = nowMs(clock)
      return telemetry.recordQueueWait(request.modelId, request.priority, startedMs - pending.admittedAtMs).pipe(
        Effect.andThen(Effect.exit(pool.run(request.modelId, request.inputs, { requestId: request.requestId, version: request.modelVersion }))),
        Effect.tap(() => telemetry.recordRun(request.modelId, nowMs(clock) - startedMs, 1)),
        // A caller that is gone (cancelled, timed out) has already settled it: the result is dropped.
        Effect.flatMap((exit) => Effect.sync(() => settle(pending, exit))),
        Effect.onInterrupt(() => Effect.sync(() => settle(pending, Exit.fail(new InferenceError.ShuttingDown({})))))
      )
    })

  const dispatcher = Effect.gen(function*() {
    while (true) {
      yield* permits.take(1)
      let next = queue.poll()
      while (next === undefined) {
        wake.closeUnsafe()
        next = queue.poll()
        if (next === undefined) yield* wake.await
      }
      const pending = next
      pending.state = "running"
      running++
      yield* Effect.forkIn(
        runOne(pending).pipe(Effect.ensuring(Effect.andThen(permits.release(1), Effect.sync(() => {
          running--
          noteIdle()
        })))),
        scope,
        { startImmediately: true }
      )
    }
  })
  yield* Effect.forkIn(dispatcher, scope)

  // On close: refuse new work, and answer everything still queued.
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      draining = true
      for (let p = queue.poll(); p !== undefined; p = queue.poll()) settle(p, Exit.fail(new InferenceError.ShuttingDown({})))
    })
  )

  const fail = (reason: InferenceError.Reason) => Effect.fail(InferenceError.make(reason))

  /** After `limitMs`: a still-queued request expires; a running one waits out its deadline. */
  const awaitWithDeadlines = (pending: Pending): Effect.Effect<RunOutput, InferenceError.Reason> => {
    const { request } = pending
    const timeoutMs = Duration.toMillis(request.timeout)
    const queueLimitMs = queueTimeoutMs > 0 ? Math.min(queueTimeoutMs, timeoutMs) : timeoutMs
    const deadlineExceeded = () =>
      new InferenceError.DeadlineExceeded({
        modelId: request.modelId,
        requestId: request.requestId,
        timeoutMs,
        elapsedMs: nowMs(clock) - pending.admittedAtMs
      })
    const afterQueueLimit = Effect.suspend((): Effect.Effect<RunOutput, InferenceError.Reason> => {
      if (pending.state === "queued") {
        queue.remove(pending.entry!)
        const waitedMs = nowMs(clock) - pending.admittedAtMs
        settle(pending, Exit.fail(
          queueLimitMs < timeoutMs
            ? new InferenceError.QueueTimeout({ modelId: request.modelId, requestId: request.requestId, queueTimeoutMs, waitedMs })
            : deadlineExceeded()
        ))
        noteIdle()
        return Deferred.await(pending.deferred)
      }
      if (pending.state === "settled") return Deferred.await(pending.deferred)
      const remainingMs = timeoutMs - (nowMs(clock) - pending.admittedAtMs)
      return Deferred.await(pending.deferred).pipe(Effect.timeoutOrElse({
        duration: Duration.millis(Math.max(0, remainingMs)),
        orElse: () => Effect.fail(deadlineExceeded())
      }))
    })
    return Deferred.await(pending.deferred).pipe(Effect.timeoutOrElse({
      duration: Duration.millis(queueLimitMs),
      orElse: () => afterQueueLimit
    }))
  }

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
      const pending: Pending = {
        request,
        deferred: Deferred.makeUnsafe(),
        admittedAtMs,
        entry: undefined,
        state: "queued"
      }
      pending.entry = queue.offer(pending, request.priority)
      if (pending.entry === undefined) {
        return yield* fail(new InferenceError.QueueFull({ modelId: request.modelId, requestId: request.requestId, capacity: config.maxQueuedRequests }))
      }
      settledLatch.closeUnsafe()
      wake.openUnsafe()
      return yield* awaitWithDeadlines(pending).pipe(
        Effect.mapError(InferenceError.make),
        Effect.map((output) =>
          InferenceResult.Success({
            requestId: request.requestId,
            outputs: output.outputs,
            latencyMs: nowMs(clock) - admittedAtMs,
            deviceUsed: output.deviceUsed
          }) as InferenceResult.Success
        ),
        // Whatever ends the wait (interruption included) takes the request out of the engine.
        Effect.onExit(() =>
          Effect.sync(() => {
            if (pending.state === "queued") {
              queue.remove(pending.entry!)
              settle(pending, Exit.interrupt())
              noteIdle()
            } else if (pending.state === "running") {
              settle(pending, Exit.interrupt())
            }
          })
        )
      )
    })

  const infer = (request: InferenceRequest): Effect.Effect<InferenceResult.Success, InferenceError.InferenceError> =>
    Effect.suspend(() => {
      const admittedAtMs = nowMs(clock)
      return telemetry.recordStart(infoOf(request)).pipe(
        Effect.andThen(admitAndAwait(request, admittedAtMs)),
        Effect.onExit((exit) => record(request, exit, nowMs(clock) - admittedAtMs)),
        Effect.withSpan("Engine.infer", {
          attributes: { "inference.model": request.modelId, "inference.request_id": request.requestId, "inference.priority": request.priority }
        })
      )
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
    pending: Effect.sync(() => queue.size + running),
    config,
    drain,
    isDraining: Effect.sync(() => draining)
  })
})

/** The engine as a service. Built by `layer` from ModelPool, TelemetryCollector and AsyncConfigService. */
export class AsyncInferenceEngine extends Context.Service<AsyncInferenceEngine, Service>()("effect-inference/AsyncInferenceEngine") {
  /** Closing the layer's scope refuses new work, answers queued requests with ShuttingDown and interrupts running ones. */
  static readonly layer: Layer.Layer<AsyncInferenceEngine, never, ModelPool | TelemetryCollector | AsyncConfigService> = Layer.effect(
    AsyncInferenceEngine,
    make
  )
}
