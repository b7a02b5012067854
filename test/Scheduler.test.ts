/**
 * The Scheduler alone: pure state, time as an argument, no fibers and no model. The engine's
 * behaviour under real fibers is in Engine*.test.ts; these pin each transition down.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import type * as Priority from "../src/Priority.ts"
import * as Scheduler from "../src/Scheduler.ts"

const spec = (key: string, overrides: Partial<Scheduler.ModelSpec> = {}): Scheduler.ModelSpec => ({
  key,
  instances: 1,
  depth: 1,
  batching: BatchPolicy.disabled,
  maxGroup: 1,
  ...overrides
})

const batching = (overrides: Partial<BatchPolicy.BatchingConfig> = {}): BatchPolicy.BatchingConfig => ({
  ...BatchPolicy.disabled,
  enabled: true,
  maxBatchSize: 8,
  ...overrides
})

const make = (options: Partial<Scheduler.Options> = {}) =>
  Scheduler.make<string>({ maxConcurrent: 4, maxQueued: 100, enablePriority: true, ...options })

const admit = (
  s: Scheduler.Scheduler<string>,
  value: string,
  model: Scheduler.ModelSpec,
  nowMs = 0,
  options: { priority?: Priority.Priority; rows?: number; deadlineAtMs?: number; queueDeadlineAtMs?: number } = {}
) =>
  s.admit({
    value,
    model,
    priority: options.priority ?? "Normal",
    rows: options.rows ?? 1,
    batchKey: model.batching.enabled ? "k" : undefined,
    deadlineAtMs: options.deadlineAtMs ?? nowMs + 1000,
    queueDeadlineAtMs: options.queueDeadlineAtMs ?? Infinity
  }, nowMs)

/** Every dispatch `next` gives now, as lists of member values. */
const drainSteps = (s: Scheduler.Scheduler<string>, nowMs = 0) => {
  const out: Array<Array<string>> = []
  const batches: Array<Scheduler.Batch<string>> = []
  for (let step = s.next(nowMs); step._tag === "Dispatch"; step = s.next(nowMs)) {
    out.push(step.batch.members.map((m) => m.value))
    batches.push(step.batch)
  }
  return { out, batches, last: s.next(nowMs) }
}

describe("Scheduler", () => {
  it("refuses an admission past maxQueued and queues nothing", () => {
    const s = make({ maxQueued: 2 })
    const m = spec("m")
    assert.isDefined(admit(s, "a", m))
    assert.isDefined(admit(s, "b", m))
    assert.isUndefined(admit(s, "c", m))
    assert.strictEqual(s.queue.size, 2)
    assert.strictEqual(s.unsettled, 2)
  })

  it("a job sent ahead to a busy instance still waits: its requests count against maxQueued until it runs", () => {
    const s = make({ maxQueued: 2 })
    const m = spec("m", { depth: 2 })
    admit(s, "r0", m)
    admit(s, "r1", m)
    const { batches } = drainSteps(s)
    assert.strictEqual(batches.length, 2, "one running, one sent ahead")
    assert.strictEqual(s.waitingAhead, 1)
    assert.isDefined(admit(s, "r2", m))
    assert.isUndefined(admit(s, "r3", m), "one queued and one waiting ahead: the bound of 2 is reached")
    for (const member of batches[0]!.members) s.settle(member)
    s.complete(batches[0]!, 0)
    assert.strictEqual(s.waitingAhead, 0, "the job sent ahead runs now")
    assert.isDefined(admit(s, "r3", m))
  })

  it("a model's own bound (maxQueued): a flooded model is refused past it, another model is still admitted; jobs sent ahead count, what its free slots take at once does not", () => {
    const s = make({ maxQueued: 10, maxConcurrent: 1 })
    const flooded = spec("flooded", { maxQueued: 2, depth: 2 })
    const other = spec("other")
    // Idle, with one instance and a job ahead: a burst of 3 is admitted before any pump; the next
    // dispatch runs one (f0) and sends one ahead (f1), which still waits beside f2: the bound.
    for (const value of ["f0", "f1", "f2"]) assert.isDefined(admit(s, value, flooded), value)
    assert.isUndefined(admit(s, "f3", flooded), "its own bound of 2 is reached")
    assert.strictEqual(s.modelFullAt("flooded"), 2)
    assert.isUndefined(s.modelFullAt("other"))
    assert.isFalse(s.isFull(), "the shared queue has room")
    assert.isDefined(admit(s, "o0", other), "another model is not held up by it")
    // f0 runs, f1 is sent ahead to the busy instance: it still waits, and counts beside f2.
    const { out, batches } = drainSteps(s)
    assert.deepStrictEqual(out, [["f0"], ["f1"]], "o0 waits for the one permit")
    assert.strictEqual(s.waitingAhead, 1)
    assert.isUndefined(admit(s, "f3", flooded))
    // f0's run completes, so f1's job runs: it no longer waits: f3 finds room.
    for (const member of batches[0]!.members) s.settle(member)
    s.complete(batches[0]!, 1)
    assert.isUndefined(s.modelFullAt("flooded"))
    assert.isDefined(admit(s, "f3", flooded))
    assert.isUndefined(admit(s, "f4", flooded))
  })

  it("a model's own bound allows, at an idle model, only what the next dispatch runs at once: batches of the queued requests' rows, and none without a permit", () => {
    const waitingAfterDispatch = (s: Scheduler.Scheduler<string>, model: Scheduler.ModelSpec, rows: number) => {
      let admitted = 0
      for (let i = 0; i < 50; i++) if (admit(s, `r${i}`, model, 0, { rows }) !== undefined) admitted++
      drainSteps(s)
      const m = [...s.models()].find((x) => x.spec.key === model.key)!
      return { admitted, waiting: m.queued + m.waitingAhead }
    }
    const batching = { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 8 }
    // Requests of 4 rows: a batch of 8 rows takes 2 of them, so 3 are admitted, 1 waits.
    assert.deepStrictEqual(waitingAfterDispatch(make({ maxQueued: 1000, maxConcurrent: 4 }), spec("rows", { maxQueued: 1, batching }), 4), { admitted: 3, waiting: 1 })
    // A group is capped by the model's run time (groupCap: 1 for a 2 ms model), not maxGroup.
    const g = make({ maxQueued: 1000, maxConcurrent: 4 })
    const grouped = spec("grouped", { maxGroup: 8, maxQueued: 1 })
    g.model(grouped).expectedRunMs = 2
    assert.deepStrictEqual(waitingAfterDispatch(g, grouped, 1), { admitted: 2, waiting: 1 })
    // Two slots (a job ahead): a deep burst is split over them (batchCap), and the half sent ahead waits.
    const d = make({ maxQueued: 1000, maxConcurrent: 4 })
    assert.isAtMost(waitingAfterDispatch(d, spec("deep", { maxQueued: 1, depth: 2, batching: { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 64 } }), 1).waiting, 1)
    // Another model holds the only permit: the idle instance runs nothing at once, so only the bound waits.
    const s = make({ maxQueued: 1000, maxConcurrent: 1 })
    admit(s, "busy", spec("other"))
    drainSteps(s)
    assert.deepStrictEqual(waitingAfterDispatch(s, spec("blocked", { maxQueued: 1, batching }), 1), { admitted: 1, waiting: 1 })
  })

  it("a reload that raises a model's instances takes the permits of the jobs already sent ahead at once: nothing else starts until the runs are back under maxConcurrent", () => {
    const s = make({ maxQueued: 100, maxConcurrent: 2 })
    const a1 = spec("a", { instances: 1, depth: 3 })
    for (const value of ["a0", "a1", "a2"]) admit(s, value, a1)
    admit(s, "b0", spec("b"))
    const { batches } = drainSteps(s)
    assert.strictEqual(s.freePermits, 0)
    // Reloaded with 3 instances: its 3 jobs count as busy (the scheduler's start inference says so).
    const a3 = spec("a", { instances: 3, depth: 3 })
    admit(s, "a3", a3)
    assert.strictEqual(s.freePermits, -2, "over the bound by the jobs sent before the reload")
    admit(s, "c0", spec("c"))
    assert.deepStrictEqual(drainSteps(s).out, [["a3"]], "a's own pipelined slot takes a job; c0 gets no permit")
    const settle = (value: string) => {
      const batch = batches.find((b) => b.members[0]!.value === value)!
      for (const member of batch.members) s.settle(member)
      s.complete(batch, 1)
    }
    settle("a0")
    settle("a1")
    settle("b0")
    assert.deepStrictEqual(drainSteps(s).out, [], "a2 and a3 run on two of a's three instances: at the bound")
    const a2 = batches.find((b) => b.members[0]!.value === "a2")!
    for (const member of a2.members) s.settle(member)
    s.complete(a2, 1)
    assert.deepStrictEqual(drainSteps(s).out, [["c0"]], "under it: c0 starts")
  })

  it("a batching model's own bound does not count the requests one free slot's batch takes: a burst at an idle model is batched, not refused", () => {
    const s = make({ maxQueued: 100, maxConcurrent: 1 })
    const batching = spec("b", { maxQueued: 2, batching: { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 8 } })
    for (let i = 0; i < 10; i++) assert.isDefined(admit(s, `r${i}`, batching), `r${i}: 8 go in the free slot's batch, 2 wait`)
    assert.isUndefined(admit(s, "r10", batching))
  })

  it("a model whose pool reports starts: a job waits until its pool says it began, whatever its place in dispatch order", () => {
    const s = make()
    const m = spec("m", { instances: 2, depth: 2, reportsStarts: true })
    for (const value of ["r0", "r1", "r2"]) admit(s, value, m)
    const { batches: [r0, r1, r2] } = drainSteps(s)
    assert.strictEqual(s.waitingAhead, 3, "none has begun yet")
    s.started(r0!, 1)
    s.started(r1!, 2)
    assert.strictEqual(s.waitingAhead, 1)
    assert.deepStrictEqual([r0!.startedAtMs, r1!.startedAtMs], [1, 2])
    // r2 was pinned behind r0; r1's instance frees first: r2 still waits
    for (const member of r1!.members) s.settle(member)
    s.complete(r1!, 5)
    assert.strictEqual(s.waitingAhead, 1, "not taken for started by its place")
    assert.isNaN(r2!.startedAtMs)
    for (const member of r0!.members) s.settle(member, true)
    assert.isFalse(s.isAbandonedAhead(r0!), "r0 began: its caller left, but it is not withdrawn")
    for (const member of r2!.members) s.settle(member, true)
    assert.isTrue(s.isAbandonedAhead(r2!), "its caller left while it waited: it may be withdrawn")
    s.complete(r2!, 6)
    s.started(r2!, 7)
    assert.isNaN(r2!.startedAtMs, "a start reported after it was withdrawn changes nothing")
    assert.strictEqual(s.waitingAhead, 0)
  })

  it("isAbandoned: a begun batch that nobody waits for is abandoned only on a pool that stops runs", () => {
    for (const stops of [false, true]) {
      const s = make()
      const m = spec("m", { instances: 1, depth: 2, reportsStarts: true, stopsAbandonedRuns: stops, batching: batching({ maxBatchSize: 2 }) })
      const [r1, r2] = [admit(s, "r1", m, 0)!, admit(s, "r2", m, 0)!]
      const { batches: [batch] } = drainSteps(s)
      assert.isFalse(s.isAbandoned(batch!), `stops ${stops}: both wait for it`)
      s.started(batch!, 1)
      s.settle(r1, true)
      assert.isFalse(s.isAbandoned(batch!), `stops ${stops}: r2 still waits for the run`)
      s.settle(r2, true)
      assert.strictEqual(s.isAbandoned(batch!), stops, `stops ${stops}: nobody waits for the run`)
      assert.isFalse(s.isAbandonedAhead(batch!), "it began: not withdrawn as a job ahead")
      s.complete(batch!, 2)
      assert.isFalse(s.isAbandoned(batch!), "a completed batch is not interrupted")
    }
    // Not begun, the same as isAbandonedAhead whatever the pool.
    const s = make()
    const m = spec("m", { instances: 1, depth: 2, reportsStarts: true })
    const r = admit(s, "r", m, 0)!
    const { batches: [batch] } = drainSteps(s)
    s.settle(r, true)
    assert.isTrue(s.isAbandoned(batch!))
  })

  it("a model whose pool reports starts: a batch whose job failed waits again while a rerun of a member waits in its pool", () => {
    const s = make()
    const m = spec("m", { instances: 1, depth: 2, reportsStarts: true, batching: batching({ maxBatchSize: 2 }) })
    const [r1, r2] = [admit(s, "r1", m, 0)!, admit(s, "r2", m, 0)!]
    const { batches: [batch] } = drainSteps(s)
    s.started(batch!, 1)
    assert.strictEqual(s.waitingAhead, 0)
    // its job failed; r1 runs again alone, handed to the pool
    s.resubmitted(batch!)
    assert.strictEqual(s.waitingAhead, 2, "r1's job waits, and r2 for its own turn")
    assert.isNaN(batch!.startedAtMs)
    s.settle(r1, true)
    assert.isFalse(s.isAbandonedAhead(batch!), "r2 still waits: the job stays")
    s.settle(r2, true)
    assert.isTrue(s.isAbandonedAhead(batch!), "nobody waits: it may be withdrawn")
    assert.strictEqual(s.waitingAhead, 0)
    s.resubmitted(batch!)
    assert.strictEqual(s.waitingAhead, 0, "a batch not started is not counted twice")
    s.complete(batch!, 2)
    s.resubmitted(batch!)
    assert.strictEqual(s.waitingAhead, 0, "nor after it completed")
  })

  it("a request that leaves a job sent ahead no longer counts against maxQueued", () => {
    const s = make({ maxQueued: 2 })
    const m = spec("m", { depth: 2 })
    admit(s, "running", m)
    const ahead = admit(s, "ahead", m)!
    drainSteps(s)
    assert.strictEqual(s.waitingAhead, 1)
    admit(s, "queued", m)
    assert.isTrue(s.isFull())
    assert.isTrue(s.cancel(ahead))
    assert.strictEqual(s.waitingAhead, 0, "it waits for nothing now")
    assert.isFalse(s.isFull())
    assert.isDefined(admit(s, "next", m))
  })

  it("dispatches the highest priority first and FIFO within a level", () => {
    const s = make()
    const m = spec("m", { instances: 10 })
    admit(s, "low", m, 0, { priority: "Low" })
    admit(s, "n1", m, 0)
    admit(s, "crit", m, 0, { priority: "Critical" })
    admit(s, "n2", m, 0)
    assert.deepStrictEqual(drainSteps(s).out, [["crit"], ["n1"], ["n2"], ["low"]])
  })

  it.each([
    { name: "one instance, no pipelining", instances: 1, depth: 1, maxConcurrent: 4, dispatched: 1 },
    { name: "one instance, depth 2: the second job is sent ahead without a permit", instances: 1, depth: 2, maxConcurrent: 1, dispatched: 2 },
    { name: "three instances, two permits", instances: 3, depth: 1, maxConcurrent: 2, dispatched: 2 },
    { name: "two instances, depth 2, one permit", instances: 2, depth: 2, maxConcurrent: 1, dispatched: 1 },
    { name: "two instances, depth 2, two permits", instances: 2, depth: 2, maxConcurrent: 2, dispatched: 4 }
  ])("slots and permits: $name", ({ depth, dispatched, instances, maxConcurrent }) => {
    const s = make({ maxConcurrent })
    const m = spec("m", { instances, depth })
    for (let i = 0; i < 10; i++) admit(s, `r${i}`, m)
    const { last, out } = drainSteps(s)
    assert.strictEqual(out.length, dispatched)
    assert.strictEqual(last._tag, "Idle")
    // never more busy instances than permits
    assert.isAtMost(Math.min(out.length, instances), maxConcurrent)
  })

  it("a model whose slots are full never holds up another model's requests", () => {
    const s = make()
    const busy = spec("busy")
    const other = spec("other")
    admit(s, "b1", busy, 0, { priority: "Critical" })
    admit(s, "b2", busy, 0, { priority: "Critical" })
    admit(s, "o1", other, 0, { priority: "Low" })
    assert.deepStrictEqual(drainSteps(s).out, [["b1"], ["o1"]])
    assert.strictEqual(s.queue.size, 1, "b2 waits for busy's instance")
  })

  it("while every queued request's model is busy, next() does not look through the queue; once one can go, it finds it", () => {
    const s = make()
    const busy = spec("busy")
    const other = spec("other")
    for (let i = 0; i < 100; i++) admit(s, `b${i}`, busy, 0)
    assert.deepStrictEqual(drainSteps(s).out, [["b0"]])
    let scans = 0
    const firstWhere = s.queue.firstWhere.bind(s.queue)
    s.queue.firstWhere = (predicate, nowMs) => {
      scans++
      return firstWhere(predicate, nowMs)
    }
    assert.deepStrictEqual(s.next(1), { _tag: "Idle" })
    assert.strictEqual(scans, 0, "99 queued for a busy model: nothing to look for")
    admit(s, "o1", other, 1)
    assert.deepStrictEqual(drainSteps(s, 1).out, [["o1"]], "behind 99 of the busy model")
    assert.isAbove(scans, 0)
  })

  it("with aging, when the oldest request's model is busy, the next free permit goes to the request that ranks next by aged level", () => {
    const s = make({ maxConcurrent: 2, aging: { High: 10, Normal: 10, Low: 10 } })
    const a = spec("a")
    const b = spec("b")
    const c = spec("c")
    admit(s, "a-run", a, 0, { priority: "Critical" })
    admit(s, "c-run", c, 0)
    const { batches } = drainSteps(s, 0)
    admit(s, "a-wait", a, 1, { priority: "Critical" })
    admit(s, "low", b, 2, { priority: "Low" })
    admit(s, "c-next", c, 50)
    const cRun = batches[1]!
    for (const m of cRun.members) s.settle(m)
    s.complete(cRun, 50)
    // a-wait (Critical) is oldest but its model is busy; low has aged to Critical too, c-next is fresh Normal.
    assert.deepStrictEqual(drainSteps(s, 50).out, [["low"]])
  })

  it("a reload that changes a model's instances while it runs leaks no permit", () => {
    const s = make({ maxConcurrent: 2 })
    const before = spec("m", { instances: 2 })
    admit(s, "a", before)
    admit(s, "b", before)
    const { batches } = drainSteps(s)
    assert.strictEqual(s.freePermits, 0)
    s.model(spec("m", { instances: 1 })) // reloaded with one instance
    for (const batch of batches) {
      for (const member of batch.members) s.settle(member)
      s.complete(batch, 0)
    }
    assert.strictEqual(s.freePermits, 2, "every permit came back")
  })

  it("complete frees the slot: the next request goes", () => {
    const s = make()
    const m = spec("m")
    admit(s, "a", m)
    admit(s, "b", m)
    const { batches } = drainSteps(s)
    assert.strictEqual(batches.length, 1)
    for (const member of batches[0]!.members) s.settle(member)
    s.complete(batches[0]!, 0)
    assert.deepStrictEqual(drainSteps(s).out, [["b"]])
  })

  it("gathers queued rows of one kind into a batch up to maxBatchSize, highest level first", () => {
    const s = make()
    const m = spec("m", { batching: batching({ maxBatchSize: 4 }) })
    admit(s, "n", m, 0, { rows: 2 })
    admit(s, "h", m, 0, { priority: "High", rows: 2 })
    admit(s, "l", m, 0, { priority: "Low", rows: 1 })
    const { out } = drainSteps(s)
    assert.deepStrictEqual(out, [["h", "n"]])
  })

  it("a batch led by a Critical request takes only Critical requests", () => {
    const s = make()
    const m = spec("m", { instances: 2, batching: batching() })
    admit(s, "c", m, 0, { priority: "Critical" })
    admit(s, "n", m, 0)
    assert.deepStrictEqual(drainSteps(s).out, [["c"], ["n"]])
  })

  it("a batch that a Critical request joins while it gathers takes no lower-priority rows after it", () => {
    const s = make({ aging: { High: 10, Normal: 10, Low: 10 } })
    const m = spec("m", { batching: batching() })
    admit(s, "busy", m, 0, { priority: "Critical" })
    const busy = drainSteps(s, 0).batches[0]!
    admit(s, "aged-low", m, 5, { priority: "Low" })
    admit(s, "crit", m, 60, { priority: "Critical" })
    admit(s, "normal", m, 60)
    admit(s, "low", m, 60, { priority: "Low" })
    for (const r of busy.members) s.settle(r)
    s.complete(busy, 100)
    assert.deepStrictEqual(drainSteps(s, 100).out, [["aged-low", "crit"]], "the aged Low request opens it, the Critical one joins, the others wait")
    assert.strictEqual(s.queue.size, 2)
    const g = make({ aging: { High: 10, Normal: 10, Low: 10 } })
    const n = spec("n", { maxGroup: 4 })
    admit(g, "busy", n, 0, { priority: "Critical" })
    const running = drainSteps(g, 0).batches[0]!
    admit(g, "aged-low", n, 5, { priority: "Low" })
    admit(g, "crit", n, 60, { priority: "Critical" })
    admit(g, "normal", n, 60)
    for (const r of running.members) g.settle(r)
    g.complete(running, 100)
    assert.deepStrictEqual(drainSteps(g, 100).out, [["aged-low", "crit"]], "a group too")
  })

  it.each([
    { maxBatchSize: 64, queuedRows: 64, freeSlots: 2, cap: 32 },
    { maxBatchSize: 64, queuedRows: 64, freeSlots: 1, cap: 64 },
    { maxBatchSize: 64, queuedRows: 3, freeSlots: 2, cap: 64 },
    { maxBatchSize: 16, queuedRows: 64, freeSlots: 2, cap: 16 },
    { maxBatchSize: 64, queuedRows: 20, freeSlots: 2, cap: 10 },
    { maxBatchSize: 64, queuedRows: 16, freeSlots: 2, cap: 8 },
    { maxBatchSize: 64, queuedRows: 14, freeSlots: 2, cap: 64 },
    { maxBatchSize: 64, queuedRows: 100, freeSlots: Infinity, cap: 64 }
  ])("batchCap($maxBatchSize, $queuedRows, $freeSlots) = $cap", ({ cap, freeSlots, maxBatchSize, queuedRows }) => {
    assert.strictEqual(Scheduler.batchCap(maxBatchSize, queuedRows, freeSlots), cap)
  })

  it.each([
    { maxGroup: 32, expectedRunMs: 0, cap: 32 },
    { maxGroup: 32, expectedRunMs: 0.035, cap: 28 },
    { maxGroup: 8, expectedRunMs: 0.25, cap: 4 },
    { maxGroup: 8, expectedRunMs: 1, cap: 1 },
    { maxGroup: 8, expectedRunMs: 3, cap: 1 },
    { maxGroup: 4, expectedRunMs: 0.01, cap: 4 }
  ])("groupCap($maxGroup, $expectedRunMs ms) = $cap: a group holds about groupBudgetMs of runs", ({ cap, expectedRunMs, maxGroup }) => {
    assert.strictEqual(Scheduler.groupCap(maxGroup, expectedRunMs), cap)
  })

  it("a model that does not batch sends its queued requests in groups, each member still its own run", () => {
    const s = make()
    const m = spec("m", { depth: 2, maxGroup: 4 })
    for (let i = 0; i < 10; i++) admit(s, `r${i}`, m)
    const { batches } = drainSteps(s)
    assert.deepStrictEqual(batches.map((b) => [b.grouped, b.members.length]), [[true, 4], [true, 4]])
    const slow = make()
    const n = spec("n", { depth: 2, maxGroup: 32 })
    const model = slow.model(n)
    model.expectedRunMs = 0.5
    for (let i = 0; i < 10; i++) admit(slow, `r${i}`, n)
    assert.deepStrictEqual(drainSteps(slow).batches.map((b) => b.members.length), [2, 2], "1 ms of 0.5 ms runs")
  })

  it("a burst over two free slots splits into two even batches", () => {
    const s = make()
    const m = spec("m", { depth: 2, batching: batching({ maxBatchSize: 64 }) })
    for (let i = 0; i < 64; i++) admit(s, `r${i}`, m)
    assert.deepStrictEqual(drainSteps(s).out.map((b) => b.length), [32, 32])
  })

  it("a forming batch waits while the model is busy, takes later arrivals, and goes when its delay is spent", () => {
    const s = make()
    const m = spec("m", { depth: 2, batching: batching({ maxQueueDelay: Duration.millis(10) }) })
    admit(s, "running", m, 0)
    assert.deepStrictEqual(drainSteps(s).out, [["running"]])
    admit(s, "a", m, 1)
    const first = s.next(1)
    assert.deepStrictEqual(first, { _tag: "Wait", untilMs: 11 }, "forming: the model has a run in flight")
    admit(s, "b", m, 5)
    assert.deepStrictEqual(s.next(5), { _tag: "Wait", untilMs: 11 })
    assert.deepStrictEqual(drainSteps(s, 11).out, [["a", "b"]])
  })

  it("the forming batches of several models are each waited for and sent, however they begin and end", () => {
    const s = make()
    const delayed = batching({ maxQueueDelay: Duration.millis(10) })
    const [a, b, c] = ["a", "b", "c"].map((key) => spec(key, { depth: 2, batching: delayed }))
    for (const m of [a!, b!, c!]) admit(s, `${m.key} running`, m, 0)
    const running = drainSteps(s)
    assert.deepStrictEqual(running.out, [["a running"], ["b running"], ["c running"]], "one batch per model, though their keys are alike")
    admit(s, "a1", a!, 1)
    admit(s, "b1", b!, 2)
    assert.deepStrictEqual(s.next(2), { _tag: "Wait", untilMs: 11 }, "a's batch is due first")
    // c's first batch is emptied (dropped, its slot back) and a second begins: a, b and c are all still waited for
    const leaving = admit(s, "c0", c!, 3)!
    assert.strictEqual(s.next(3)._tag, "Wait")
    assert.strictEqual(leaving.stage, "forming")
    s.cancel(leaving)
    assert.deepStrictEqual(s.next(3), { _tag: "Wait", untilMs: 11 })
    admit(s, "a2", a!, 3)
    admit(s, "c1", c!, 4)
    assert.deepStrictEqual(drainSteps(s, 11).out, [["a1", "a2"]])
    assert.deepStrictEqual(s.next(11), { _tag: "Wait", untilMs: 12 })
    assert.deepStrictEqual(drainSteps(s, 12).out, [["b1"]])
    assert.deepStrictEqual(drainSteps(s, 14).out, [["c1"]])
    // a forms again after its batch went: it is waited for again
    s.complete(running.batches[0]!, 15)
    admit(s, "a3", a!, 15)
    assert.deepStrictEqual(s.next(15), { _tag: "Wait", untilMs: 25 })
    assert.deepStrictEqual(drainSteps(s, 25).out, [["a3"]])
  })

  it("never answers a wait until now: a wait too short to move the clock (a float remainder) sends the batch", () => {
    const s = make()
    const m = spec("m", { depth: 2, batching: batching({ maxQueueDelay: Duration.millis(100) }) })
    s.model(m).expectedRunMs = 3.9999999999999996 // the last run's time, a difference of two clock readings
    admit(s, "running", m, 0, { deadlineAtMs: 1000 })
    assert.strictEqual(s.next(0)._tag, "Dispatch")
    admit(s, "a", m, 0, { deadlineAtMs: 70 }) // forms behind "running" until its deadline less twice the run time
    assert.deepStrictEqual(s.next(0), { _tag: "Wait", untilMs: 62 })
    const step = s.next(62)
    assert.strictEqual(step._tag, "Dispatch", JSON.stringify(step._tag === "Wait" ? step : step._tag))
  })

  it("a request too large for the forming batch of its kind sends that batch and opens the next: no batch is orphaned", () => {
    const s = make({ maxConcurrent: 3 })
    const m = spec("m", { instances: 3, batching: batching({ maxBatchSize: 6, maxQueueDelay: Duration.millis(50) }) })
    admit(s, "a", m, 0)
    const running = drainSteps(s).batches[0]!
    admit(s, "b", m, 1, { rows: 5 })
    assert.strictEqual(s.next(1)._tag, "Wait", "b forms: a run is in flight")
    admit(s, "c", m, 2, { rows: 2 })
    const step = s.next(2)
    assert.strictEqual(step._tag, "Dispatch", "b's batch cannot take c: it goes now")
    assert.deepStrictEqual(step._tag === "Dispatch" && step.batch.members.map((r) => r.value), ["b"])
    assert.strictEqual(s.next(2)._tag, "Wait", "c opens the next batch, which forms")
    assert.deepStrictEqual(s.counts(), { queued: 0, forming: 1, runs: 2 })
    for (const r of running.members) s.settle(r)
    s.complete(running, 3)
    const sent = step._tag === "Dispatch" ? step.batch : running
    for (const r of sent.members) s.settle(r)
    s.complete(sent, 3)
    const last = drainSteps(s, 52)
    assert.deepStrictEqual(last.out, [["c"]])
    for (const r of last.batches[0]!.members) s.settle(r)
    s.complete(last.batches[0]!, 53)
    assert.strictEqual(s.freePermits, 3, "every slot and permit came back")
    assert.strictEqual(s.model(m).slots, 0)
  })

  it("a Critical request that joins a forming batch sends it at once", () => {
    const s = make()
    const m = spec("m", { depth: 2, batching: batching({ maxQueueDelay: Duration.millis(10) }) })
    admit(s, "running", m, 0)
    drainSteps(s)
    admit(s, "low", m, 1, { priority: "Low" })
    assert.strictEqual(s.next(1)._tag, "Wait")
    admit(s, "crit", m, 2, { priority: "Critical" })
    assert.deepStrictEqual(drainSteps(s, 2).out, [["low", "crit"]])
  })

  it("expire: the queue timeout ends a waiting request, not a running one; the deadline ends any", () => {
    const s = make({ maxConcurrent: 1 })
    const m = spec("m")
    const running = admit(s, "running", m, 0, { queueDeadlineAtMs: 5, deadlineAtMs: 50 })!
    const waiting = admit(s, "waiting", m, 0, { queueDeadlineAtMs: 5, deadlineAtMs: 50 })!
    drainSteps(s)
    assert.strictEqual(running.stage, "running")
    assert.strictEqual(s.nextTimerMs(), 5)
    const expired = s.expire(5)
    assert.deepStrictEqual(expired.map((e) => [e.request.value, e.why]), [["waiting", "queue"]])
    assert.strictEqual(waiting.stage, "settled")
    assert.strictEqual(running.stage, "running", "already running: the queue timeout no longer applies")
    assert.strictEqual(s.nextTimerMs(), 50)
    assert.deepStrictEqual(s.expire(50).map((e) => [e.request.value, e.why]), [["running", "deadline"]])
    assert.deepStrictEqual(s.abandoned, { queued: 1, forming: 0, running: 1 })
    assert.strictEqual(s.unsettled, 0)
  })

  it("cancel takes a queued request out at once; a second cancel is a no-op", () => {
    const s = make({ maxConcurrent: 1 })
    const m = spec("m")
    admit(s, "running", m)
    const queued = admit(s, "queued", m)!
    drainSteps(s)
    assert.isTrue(s.cancel(queued))
    assert.isFalse(s.cancel(queued))
    assert.strictEqual(s.queue.size, 0)
    assert.deepStrictEqual(s.abandoned, { queued: 1, forming: 0, running: 0 })
  })

  it("a cancelled member leaves a forming batch; an emptied batch gives its slot back", () => {
    const s = make({ maxConcurrent: 1 })
    const m = spec("m", { depth: 2, batching: batching({ maxQueueDelay: Duration.millis(10) }) })
    admit(s, "running", m, 0)
    drainSteps(s)
    const a = admit(s, "a", m, 1)!
    assert.strictEqual(s.next(1)._tag, "Wait")
    assert.strictEqual(a.stage, "forming")
    assert.deepStrictEqual(s.counts(), { queued: 0, forming: 1, runs: 1 })
    s.cancel(a)
    assert.deepStrictEqual(s.next(2), { _tag: "Idle" })
    assert.deepStrictEqual(s.counts(), { queued: 0, forming: 0, runs: 1 })
    assert.deepStrictEqual(s.abandoned, { queued: 0, forming: 1, running: 0 })
  })

  it("a burst splits only over the slots that have a permit: one permit free for two idle instances takes the whole burst in one batch", () => {
    const s = make({ maxConcurrent: 2 })
    admit(s, "b-run", spec("b"))
    assert.deepStrictEqual(drainSteps(s).out, [["b-run"]], "model b holds one permit")
    const a = spec("a", { instances: 2, batching: batching({ maxBatchSize: 64 }) })
    for (let i = 0; i < 64; i++) admit(s, `r${i}`, a)
    assert.deepStrictEqual(drainSteps(s).out.map((b) => b.length), [64])
  })

  /**
   * Model m (two instances, a 10 ms delay) runs one request and forms a batch of `forming` on its
   * second slot, taking the last of two permits; then a request of model o waits for a permit.
   */
  const formingHoldsLastPermit = (forming: ReadonlyArray<Priority.Priority>) => {
    const s = make({ maxConcurrent: 2 })
    const m = spec("m", { instances: 2, batching: batching({ maxQueueDelay: Duration.millis(10) }) })
    admit(s, "running", m, 0)
    assert.deepStrictEqual(drainSteps(s, 0).out, [["running"]])
    const members = forming.map((priority, i) => admit(s, `f${i}`, m, 1, { priority })!)
    assert.deepStrictEqual(s.next(1), { _tag: "Wait", untilMs: 11 })
    assert.isTrue(members.every((r) => r.stage === "forming"))
    assert.strictEqual(s.freePermits, 0)
    return { s, members, other: spec("o") }
  }

  it("a request of the forming batch's own priority waiting for its permit does not cut the batch's delay", () => {
    const { other, s } = formingHoldsLastPermit(["Normal"])
    admit(s, "o", other, 2)
    assert.deepStrictEqual(s.next(2), { _tag: "Wait", untilMs: 11 })
    admit(s, "o-high", other, 3, { priority: "High" })
    assert.deepStrictEqual(drainSteps(s, 3).out, [["f0"]], "a higher priority does")
  })

  it("a forming batch left with Low members only is Low again: a Normal request waiting for its permit sends it", () => {
    const { members, other, s } = formingHoldsLastPermit(["Low", "Low"])
    s.cancel(members[0]!)
    assert.strictEqual(members[1]!.batch!.highest, "Low")
    admit(s, "o", other, 2)
    assert.deepStrictEqual(drainSteps(s, 2).out, [["f1"]])
  })

  it("rows that could not join while a Critical member led a forming batch ride along when it goes without it", () => {
    const s = make()
    const m = spec("m", { depth: 2, batching: batching({ maxQueueDelay: Duration.millis(10) }) })
    admit(s, "running", m, 0)
    drainSteps(s, 0)
    admit(s, "n1", m, 1)
    assert.strictEqual(s.next(1)._tag, "Wait")
    const c = admit(s, "c", m, 2, { priority: "Critical" })!
    assert.strictEqual(c.stage, "forming", "c joins the forming batch")
    const n2 = admit(s, "n2", m, 3)!
    assert.strictEqual(n2.stage, "queued", "a batch led by a Critical request takes only Critical requests")
    s.cancel(c)
    assert.deepStrictEqual(drainSteps(s, 11).out, [["n1", "n2"]], "sent at its delay with the row that waited")
  })

  it("a reload that lowers a model's instances: a run that completes gives the permits beyond its busy instances to other models", () => {
    const s = make({ maxConcurrent: 3 })
    const before = spec("m", { instances: 3 })
    for (const value of ["a", "b", "c"]) admit(s, value, before)
    const { batches } = drainSteps(s)
    assert.strictEqual(s.freePermits, 0)
    s.model(spec("m", { instances: 1 })) // reloaded with one instance
    for (const member of batches[0]!.members) s.settle(member)
    s.complete(batches[0]!, 1)
    assert.strictEqual(s.freePermits, 2, "m keeps one permit for its one instance")
    const other = spec("o", { instances: 2 })
    admit(s, "o1", other, 1)
    admit(s, "o2", other, 1)
    assert.deepStrictEqual(drainSteps(s, 1).out, [["o1"], ["o2"]])
  })

  it("a batch's start time is its first: a second started() or another batch's complete() does not move it", () => {
    const s = make()
    const m = spec("m", { instances: 2, depth: 2, reportsStarts: true })
    admit(s, "r0", m, 0)
    const { batches: [r0] } = drainSteps(s, 0)
    s.started(r0!, 1)
    s.started(r0!, 3)
    assert.strictEqual(r0!.startedAtMs, 1)
    const f = make()
    const n = spec("n", { instances: 2 })
    admit(f, "first", n, 0)
    const [first] = drainSteps(f, 0).batches
    admit(f, "second", n, 4)
    const [second] = drainSteps(f, 4).batches
    assert.deepStrictEqual([first!.startedAtMs, second!.startedAtMs], [0, 4])
    for (const member of first!.members) f.settle(member)
    f.complete(first!, 10)
    assert.strictEqual(second!.startedAtMs, 4, "still running since 4")
  })
})

describe("Scheduler learned sizing", () => {
  /** A model whose learned cost is 10 ms a run whatever its rows. */
  const learnedModel = (s: Scheduler.Scheduler<string>, overrides: Partial<Scheduler.ModelSpec> = {}) => {
    const m = spec("m", { depth: 2, batching: batching({ maxBatchSize: 64, maxQueueDelay: Duration.millis(50), sizing: "learned" }), ...overrides })
    s.model(m).cost.observe(1, 10)
    return m
  }

  it("predicts when a busy instance frees: its run's start plus its predicted time, less the lead", () => {
    const s = make()
    const m = learnedModel(s)
    assert.strictEqual(s.handOverInMs(s.model(m), 0), 0, "nothing in flight: an instance is free")
    admit(s, "running", m, 0)
    drainSteps(s, 0)
    assert.strictEqual(s.handOverInMs(s.model(m), 3), 10 - Scheduler.handOverLeadMs(10) - 3)
    assert.strictEqual(s.handOverInMs(s.model(m), 12), 0, "past the prediction: now")
  })

  it("leads a short run by at least the timers' resolution: a shorter wait could not be timed", () => {
    assert.strictEqual(Scheduler.handOverLeadMs(20), 2, "a long run: a share of it")
    assert.strictEqual(Scheduler.handOverLeadMs(2), Scheduler.minHandOverLeadMs)
    const s = make()
    const m = spec("m", { depth: 2, batching: batching({ maxBatchSize: 64, maxQueueDelay: Duration.millis(50), sizing: "learned" }) })
    s.model(m).cost.observe(1, 2)
    admit(s, "running", m, 0)
    drainSteps(s, 0)
    assert.strictEqual(s.handOverInMs(s.model(m), 0.5), 2 - 1 - 0.5)
    assert.strictEqual(s.handOverInMs(s.model(m), 1), 0, "within the lead of its end: now")
  })

  it("counts the batches sent ahead: they run one after another on the instance that frees first", () => {
    const s = make()
    const m = learnedModel(s, { instances: 2, depth: 2 })
    for (const [i, at] of [[0, 0], [1, 4]] as const) {
      admit(s, `running${i}`, m, at)
      drainSteps(s, at)
    }
    assert.strictEqual(s.model(m).inFlight.length, 2)
    assert.strictEqual(s.handOverInMs(s.model(m), 4), 10 - Scheduler.handOverLeadMs(10) - 4, "two instances busy: the one that started first frees first")
    const shared = make()
    const g = learnedModel(shared, { instances: 2, depth: 2, devices: 1 })
    admit(shared, "running", g, 0)
    drainSteps(shared, 0)
    admit(shared, "ahead", g, 1, { priority: "Critical" })
    drainSteps(shared, 1)
    assert.strictEqual(shared.model(g).inFlight.length, 2)
    assert.strictEqual(shared.handOverInMs(shared.model(g), 1), 20 - Scheduler.handOverLeadMs(10) - 1, "one GPU: the second run starts when the first ends")
  })

  it("a forming batch takes rows until an instance is about to free, then goes with the rows to keep up or waits out its delay for them", () => {
    const s = make()
    const m = learnedModel(s)
    admit(s, "running", m, 0)
    const running = drainSteps(s, 0).batches[0]!
    // 20 rows arrived a moment ago: about 0.7 rows a ms at 9 ms, which 10 ms runs keep up with
    // (80% busy) at 0.7 × 10 / 0.8 ≈ 9 rows a run.
    s.model(m).arrivals.observe(20, 0)
    admit(s, "a", m, 1)
    assert.deepStrictEqual(s.next(1), { _tag: "Wait", untilMs: 9 }, "the instance is busy until about 10 ms")
    assert.deepStrictEqual(s.next(9), { _tag: "Wait", untilMs: 51 }, "at hand-over, one row is too few: it waits out its delay")
    // 30 more: about 2.2 rows a ms, kept up with at about 28 rows a run.
    for (let i = 0; i < 30; i++) admit(s, `b${i}`, m, 9)
    assert.deepStrictEqual(drainSteps(s, 9).out.map((b) => b.length), [31], "enough rows at hand-over: it goes")
    const t = s.model(m).inFlight[1]!
    assert.isTrue(Number.isNaN(t.startedAtMs), "sent ahead: it has not started")
    s.complete(running, 10)
    assert.strictEqual(t.startedAtMs, 10, "it starts when the run before it completes")
  })
})

describe("Scheduler timers and batch caps", () => {
  it("a request answered before its deadline leaves no timer behind", () => {
    const s = Scheduler.make<string>({ maxConcurrent: 1, maxQueued: 10, enablePriority: true })
    const m = spec("m")
    const running = s.admit({ value: "a", model: m, priority: "Normal", rows: 1, batchKey: undefined, deadlineAtMs: 50, queueDeadlineAtMs: Infinity }, 0)!
    const queued = s.admit({ value: "b", model: m, priority: "Normal", rows: 1, batchKey: undefined, deadlineAtMs: 60, queueDeadlineAtMs: Infinity }, 0)!
    assert.strictEqual(s.next(0)._tag, "Dispatch")
    s.settle(running)
    assert.isTrue(s.cancel(queued))
    assert.strictEqual(s.nextTimerMs(), Infinity, "nothing left to time")
  })

  it("batchCap with one free slot takes all it may", () => {
    assert.strictEqual(Scheduler.batchCap(64, 16, 1), 64)
  })
})
