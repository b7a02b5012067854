/**
 * Engine invariants under random schedules (effect's own property testing, TestClock time).
 *
 * A schedule is a list of submissions with random priorities, deadlines, row counts, scripted
 * run latencies and failures, and cancellations at random moments (queued, in a forming batch,
 * running), over random engine settings (batching on or off, aging on or off, bounds).
 * After every schedule the test checks that every request settled exactly once with the outcome
 * its schedule implies, that the bounds held, that dispatch respected (effective, aged) priority, that nothing
 * is left holding a permit, and that the telemetry adds up.
 *
 * `PROPERTY_RUNS` sets the number of schedules (1,000 by default; `npm run soak:properties`
 * runs 100,000). A failure prints vitest's replay token: pass it back through
 * `PROPERTY_REPLAY` (the JSON `Replay: [...]` array) to rerun exactly that schedule.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Duration, Effect, Exit, Fiber, Schema } from "effect"
import { TestClock } from "effect/testing"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import type * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as Priority from "../src/Priority.ts"
import * as QueuePolicy from "../src/QueuePolicy.ts"
import { makeHarness } from "./fixtures/EngineHarness.ts"
import { echoInputs } from "./fixtures/FakeModelPool.ts"
import { checkCommonOutcome } from "./fixtures/Outcomes.ts"

const Int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

const Submission = Schema.Struct({
  submitAtMs: Int(0, 60),
  priority: Schema.Literals(Priority.levels),
  rows: Int(1, 3),
  latencyMs: Int(1, 25),
  timeoutMs: Int(1, 150),
  fails: Schema.Boolean,
  /** Cancel this long after submission; null: never. */
  cancelAfterMs: Schema.NullOr(Int(0, 60))
})

const Schedule = Schema.Struct({
  submissions: Schema.Array(Submission).check(Schema.isMaxLength(24)),
  maxConcurrentRequests: Int(1, 4),
  maxQueuedRequests: Int(1, 16),
  queueTimeoutMs: Int(0, 120),
  batching: Schema.Boolean,
  maxBatchSize: Int(1, 8),
  maxQueueDelayMs: Int(0, 10),
  aging: Schema.Boolean,
  /** The model's instances; null: unlimited. */
  instances: Schema.NullOr(Int(1, 3))
})

type Schedule = typeof Schedule.Type

type Outcome = "Success" | "Interrupted" | InferenceError.ReasonTag

const runs = Number(process.env.PROPERTY_RUNS ?? 1000)
/** The replay token as printed (a JSON text, passed on as is). */
const replay = process.env.PROPERTY_REPLAY

const runSchedule = (schedule: Schedule) =>
  Effect.gen(function*() {
    const aging: QueuePolicy.Aging | undefined = schedule.aging ? { High: 20, Normal: 20, Low: 20 } : undefined
    const latencyOf = new Map<string, { latencyMs: number; fails: boolean }>()
    const batching: BatchPolicy.BatchingConfig | undefined = schedule.batching
      ? { ...BatchPolicy.disabled, enabled: true, maxBatchSize: schedule.maxBatchSize, maxQueueDelay: Duration.millis(schedule.maxQueueDelayMs) }
      : undefined
    const { engine, stats, outcomes, log } = yield* makeHarness({
      // A batch takes the latency scripted for its first member; it fails when any member's
      // input is scripted to fail (a poisoned row fails the whole native run).
      script: (id, rowValues) => {
        const latency = Duration.millis(latencyOf.get(id)!.latencyMs)
        return rowValues.some((v) => latencyOf.get(`r${v - 1}`)!.fails) ? { latency, failWith: "scripted failure" } : { latency }
      },
      batching,
      concurrency: schedule.instances ?? undefined,
      config: {
        maxConcurrentRequests: schedule.maxConcurrentRequests,
        maxQueuedRequests: schedule.maxQueuedRequests,
        queueTimeout: Duration.millis(schedule.queueTimeoutMs),
        ...(aging === undefined ? {} : { aging })
      }
    })
    const t0 = yield* Clock.currentTimeMillis

    interface Tracked {
      readonly index: number
      readonly id: string
      readonly priority: Priority.Priority
      readonly value: number
      admittedAtMs: number
      settledAtMs: number
      outcome: Outcome | undefined
      settledCount: number
      cancelRequestedAtMs: number | undefined
      fiber: Fiber.Fiber<void, unknown> | undefined
    }
    const tracked: Array<Tracked> = schedule.submissions.map((s, index) => ({
      index,
      id: `r${index}`,
      priority: s.priority,
      value: index + 1,
      admittedAtMs: -1,
      settledAtMs: -1,
      outcome: undefined,
      settledCount: 0,
      cancelRequestedAtMs: undefined,
      fiber: undefined
    }))
    schedule.submissions.forEach((s, i) => latencyOf.set(tracked[i]!.id, { latencyMs: s.latencyMs, fails: s.fails }))

    // Events in time order: submissions and cancellations.
    type Event = { readonly atMs: number; readonly order: number; readonly run: () => Effect.Effect<void> }
    const events: Array<Event> = []
    schedule.submissions.forEach((s, i) => {
      const t = tracked[i]!
      events.push({
        atMs: s.submitAtMs,
        order: i,
        run: () =>
          Effect.gen(function*() {
            t.admittedAtMs = (yield* Clock.currentTimeMillis) - t0
            const request = InferenceRequest.make("echo", echoInputs(t.value, s.rows), { requestId: t.id, priority: s.priority, timeout: Duration.millis(s.timeoutMs) })
            t.fiber = yield* Effect.forkChild(
              engine.infer(request).pipe(
                Effect.exit,
                Effect.flatMap((exit) =>
                  Effect.gen(function*() {
                    t.settledCount++
                    t.settledAtMs = (yield* Clock.currentTimeMillis) - t0
                    if (Exit.isSuccess(exit)) {
                      t.outcome = "Success"
                      const y = exit.value.outputs["y"]!
                      assert.deepStrictEqual(y.dims, [s.rows, 4], `${t.id} got its own rows`)
                      assert.isTrue(Array.from(y.data as Float32Array).every((v) => v === t.value * 2), `${t.id} got its own values`)
                    } else {
                      assert.isFalse(Cause.hasDies(exit.cause), `${t.id} died: ${Cause.pretty(exit.cause)}`)
                      const fail = exit.cause.reasons.find((r) => r._tag === "Fail")
                      t.outcome = fail === undefined ? "Interrupted" : fail.error.reason._tag
                    }
                  })
                ),
                // The recording of an interrupted request happens in its own finalizer.
                Effect.onInterrupt(() =>
                  Effect.gen(function*() {
                    t.settledCount++
                    t.settledAtMs = (yield* Clock.currentTimeMillis) - t0
                    t.outcome = "Interrupted"
                  })
                )
              ),
              { startImmediately: true }
            )
            const queued = yield* engine.queueStats
            assert.isAtMost(queued.total, schedule.maxQueuedRequests, "queue above its bound")
          })
      })
      if (s.cancelAfterMs !== null) {
        events.push({
          atMs: s.submitAtMs + s.cancelAfterMs,
          order: 1000 + i,
          run: () =>
            Effect.gen(function*() {
              if (t.fiber === undefined || t.settledCount > 0) return
              t.cancelRequestedAtMs = (yield* Clock.currentTimeMillis) - t0
              yield* Fiber.interrupt(t.fiber)
            })
        })
      }
    })
    events.sort((a, b) => a.atMs - b.atMs || a.order - b.order)
    let nowMs = 0
    for (const event of events) {
      if (event.atMs > nowMs) {
        yield* TestClock.adjust(Duration.millis(event.atMs - nowMs))
        nowMs = event.atMs
      }
      yield* event.run()
      assert.isAtMost(stats.maxActive, schedule.maxConcurrentRequests, "more native runs than the bound")
      if (schedule.instances !== null) assert.isAtMost(stats.maxActive, schedule.instances, "more runs of the model than its instances")
      // The Scheduler's own state agrees with what is observed and with its bounds.
      const state = yield* engine.diagnostics
      assert.isAtMost(state.runs, schedule.maxConcurrentRequests, "the scheduler counts more runs than its permits")
      if (schedule.instances !== null) assert.isAtMost(state.runs, schedule.instances, "the scheduler counts more runs than the model's instances")
      assert.strictEqual(state.queued + state.ahead, (yield* engine.queueStats).total, "the scheduler's queue and the queue stats disagree")
      assert.isAtMost(state.queued + state.forming, state.unsettled, "queued or forming requests that are not unsettled")
      assert.isAtMost(stats.active, state.runs, "a native run the scheduler does not count")
    }
    // Let everything finish: the longest possible tail is bounded by the deadlines and latencies.
    yield* TestClock.adjust("2 seconds")

    // --- every request settled exactly once, with an outcome its schedule allows
    // A request runs once; or, when its batch's run failed, once more alone (its last run decides).
    const runOf = new Map<number, { readonly startMs: number; readonly endMs: number; readonly fails: boolean; readonly members: number }>()
    stats.runs.forEach((run, i) => {
      // A run takes the latency scripted for its first member (named in stats.order); it fails
      // when any member is scripted to fail.
      const members = new Set(run.rowValues)
      const latencyMs = latencyOf.get(stats.order[i]!)!.latencyMs
      const fails = [...members].some((v) => latencyOf.get(`r${v - 1}`)!.fails)
      for (const v of members) {
        const earlier = runOf.get(v)
        if (earlier !== undefined) {
          assert.isTrue(earlier.fails && earlier.members > 1, `request with value ${v} ran again after a run that did not fail as a batch`)
          assert.strictEqual(members.size, 1, `request with value ${v} ran again, but not alone`)
        }
        runOf.set(v, { startMs: run.startMs - t0, endMs: run.startMs - t0 + latencyMs, fails, members: members.size })
      }
    })
    for (const t of tracked) {
      const s = schedule.submissions[t.index]!
      assert.strictEqual(t.settledCount, 1, `${t.id} settled ${t.settledCount} times`)
      const ran = runOf.get(t.value)
      const deadlineMs = t.admittedAtMs + s.timeoutMs
      const cancelMs = t.cancelRequestedAtMs ?? Infinity
      const awaitedRerun = ran !== undefined && ran.fails && ran.members > 1
      if (awaitedRerun) {
        // Its batch failed and it settled before it could run again alone.
        assert.include(["DeadlineExceeded", "Interrupted"], t.outcome, `${t.id}'s batch failed at ${ran.endMs} ms and it never ran alone`)
      } else if (ran !== undefined && ran.endMs < deadlineMs && ran.endMs < cancelMs) {
        assert.strictEqual(t.outcome, ran.fails ? "RunFailed" : "Success", `${t.id}'s run ended in time at ${ran.endMs} ms`)
      }
      if (ran !== undefined && ran.endMs > deadlineMs && deadlineMs < cancelMs) {
        assert.strictEqual(t.outcome, "DeadlineExceeded", `${t.id}'s run ended after its deadline`)
      }
      if (ran === undefined && t.cancelRequestedAtMs === undefined) {
        assert.include(["QueueFull", "QueueTimeout", "DeadlineExceeded"], t.outcome, `${t.id} never ran and was not cancelled`)
      }
      if (checkCommonOutcome(t, { timeoutMs: s.timeoutMs, queueTimeoutMs: schedule.queueTimeoutMs }, ran !== undefined, ran?.startMs)) continue
      switch (t.outcome) {
        case "RunFailed":
          assert.isDefined(ran, `${t.id} failed its run without running`)
          assert.isTrue(s.fails, `${t.id} failed with a batch although its own input runs`)
          break
        default:
          assert.fail(`${t.id} ended with ${t.outcome}`)
      }
    }

    // --- a batch led by a Critical request takes only Critical requests (BatchPolicy.mayJoin; a
    // Critical request may still join a forming batch led by a lower one, which then goes at once)
    stats.runs.forEach((run, i) => {
      const leader = tracked[Number(stats.order[i]!.slice(1))]!
      if (leader.priority !== "Critical") return
      const others = [...new Set(run.rowValues)].map((v) => tracked[v - 1]!).filter((t) => t.priority !== "Critical")
      assert.deepStrictEqual(others.map((t) => t.id), [], `${leader.id} (Critical) led a batch with lower-priority requests`)
    })

    // --- dispatch order: among requests waiting when a run started, none outranked it (no batching).
    // Ranks are effective ranks: with aging, a request that waited past its bounds competes higher,
    // so an aged request is never passed by a fresher one of the same or a lower effective rank.
    if (!schedule.batching) {
      for (const a of tracked) {
        const aRun = runOf.get(a.value)
        if (aRun === undefined) continue
        for (const b of tracked) {
          if (b === a) continue
          const bRun = runOf.get(b.value)
          const bWaiting = b.admittedAtMs < aRun.startMs && b.settledAtMs > aRun.startMs && (bRun === undefined || bRun.startMs > aRun.startMs) &&
            b.outcome !== "QueueFull"
          if (!bWaiting) continue
          const ra = QueuePolicy.effectiveRank(aging, a.priority, aRun.startMs - a.admittedAtMs)
          const rb = QueuePolicy.effectiveRank(aging, b.priority, aRun.startMs - b.admittedAtMs)
          assert.isAtMost(ra, rb, `${a.id} (${a.priority}, rank ${ra}) ran at ${aRun.startMs} ms while ${b.id} (${b.priority}, rank ${rb}) waited`)
          if (ra === rb && a.admittedAtMs > b.admittedAtMs) {
            // FIFO within a (effective) level; equal admission times are one tick and keep submission order.
            assert.fail(`${a.id} ran before ${b.id}, admitted earlier at the same effective level`)
          }
        }
      }
    }

    // --- quiescence: nothing queued, forming or running; every native run finished
    const diagnostics = yield* engine.diagnostics
    assert.deepInclude(diagnostics, { queued: 0, forming: 0, runs: 0, unsettled: 0 })
    // Every timed-out request was abandoned in the scheduler; so was every cancelled one that had not been answered yet.
    const abandoned = diagnostics.abandoned.queued + diagnostics.abandoned.forming + diagnostics.abandoned.running
    const timedOut = tracked.filter((t) => t.outcome === "QueueTimeout" || t.outcome === "DeadlineExceeded").length
    const interrupted = tracked.filter((t) => t.outcome === "Interrupted").length
    assert.isAtLeast(abandoned, timedOut, "a timed-out request the scheduler did not count as abandoned")
    assert.isAtMost(abandoned, timedOut + interrupted, "the scheduler abandoned a request that was answered")
    assert.strictEqual(stats.active, 0)
    assert.strictEqual(stats.started, stats.finished)

    // --- telemetry adds up
    const counts = outcomes()
    assert.strictEqual(counts.start, tracked.length)
    assert.strictEqual(counts.start, counts.success! + counts.failure! + counts.cancelled! + counts.timeout! + counts.rejected!)
    assert.strictEqual(counts.success, tracked.filter((t) => t.outcome === "Success").length)
    assert.strictEqual(counts.cancelled, tracked.filter((t) => t.outcome === "Interrupted").length)
    // A run is counted once it completed (a failed batch's members count when they run again alone).
    assert.strictEqual(log.events.filter((e) => e._tag === "run").length, stats.runs.filter((r) => !r.failed).length)
  }).pipe(Effect.scoped)

describe("AsyncInferenceEngine properties", () => {
  it.effect.prop(
    "random schedules keep every invariant",
    [Schedule],
    ([schedule]) => runSchedule(schedule),
    // size 24: schedules up to the 24 submissions the schema allows (the default size, 10, stopped them at 10).
    { timeout: Math.max(240_000, runs * 10), arbitrary: { runs, size: 24, ...(replay === undefined ? {} : { replay }) } }
  )
})
