/**
 * Scheduler and engine invariants with SEVERAL models and versions whose inputs look alike.
 *
 * The other property tests drive one model, which is how a batch that gathered another model's
 * queued requests (253f148) and jobs that ran requests on a version other than the one they were
 * admitted to (8e78663, a71f87c) went unseen. Here every batching model takes the same input kinds
 * (one batch key), versions of one model sit side by side, requests name a version or none, and
 * the schedules mix priorities, rows, batching on and off, groups (a model that does not batch,
 * over a pool with runGroup), batching delays (fixed and learned sizing), pipelining, cancellations,
 * deadlines, queue timeouts and completions in any order.
 *
 * - The pure `Scheduler`, time as an argument, driven as the Dispatcher drives it: after every step
 *   the harness checks that each dispatched job's members share one model version and one batch key
 *   (as the harness admitted them, not as the scheduler records them), that every request settles
 *   exactly once and is dispatched at most once, that slots and permits add up and stay within
 *   their bounds, that neither the queue nor a forming batch holds what could go now (nothing is
 *   stranded when capacity frees), and that timers fire on time. Then it drains everything.
 * - The engine (`AsyncInferenceEngine` over an inline pool, TestClock time): model `k` at version
 *   `v` multiplies by `10k + v`, so an answer from another model or version has the wrong numbers;
 *   each job the pool runs records the requests it carried and the version it ran; native runs at
 *   once stay within `maxConcurrentRequests`, and the jobs of one model version within its
 *   instances × pipeline depth. Variants: loads that make another version the latest, metadata
 *   that names several models alike, and reloads that change a version's outputs (requests admitted
 *   before and after must not share a run).
 *
 * `PROPERTY_RUNS` scales every property (1000: the defaults, a few seconds for the file);
 * `PROPERTY_REPLAY` takes the replay token a failure prints (run that one test with `-t`).
 */
import { assert, describe, it } from "@effect/vitest"
import { Arbitrary, Cause, Clock, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Schema } from "effect"
import { TestClock } from "effect/testing"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import { AsyncInferenceEngine } from "../src/Engine.ts"
import * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as ModelMetadata from "../src/ModelMetadata.ts"
import { ModelPool, type RunOptions, type RunOutput } from "../src/ModelPool.ts"
import * as Priority from "../src/Priority.ts"
import * as Scheduler from "../src/Scheduler.ts"
import { TelemetryCollector } from "../src/Telemetry.ts"
import * as Tensor from "../src/Tensor.ts"
import { echoInputs, echoMetadata } from "./fixtures/FakeModelPool.ts"
import { checkCommonOutcome } from "./fixtures/Outcomes.ts"

const Int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/** Runs of each property: the scheduler's are cheap (pure), the engine's take fibers and a TestClock. */
const scale = Number(process.env.PROPERTY_RUNS ?? 1000) / 1000
const replay = process.env.PROPERTY_REPLAY
const arbitrary = (runs: number, size: number) => ({
  runs: Math.max(1, Math.round(runs * scale)),
  size,
  ...(replay === undefined ? {} : { replay })
})

// ---------------------------------------------------------------------------------------------
// The pure Scheduler
// ---------------------------------------------------------------------------------------------

const ModelGen = Schema.Struct({
  /** null: a pool without a bound. */
  instances: Schema.NullOr(Int(1, 3)),
  depth: Int(1, 3),
  devices: Schema.NullOr(Int(1, 2)),
  /** 0: does not batch; 1 to 3: batches (most models do: batches forming are where requests of several models meet). */
  batching: Int(0, 3),
  maxBatchSize: Int(1, 16),
  maxQueueDelayMs: Int(0, 20),
  preferred: Schema.Boolean,
  learned: Schema.Boolean,
  /** For a model that does not batch (a pool with runGroup); a batching model gets 1, as the engine gives it. */
  maxGroup: Int(1, 5),
  /** The native run time the pool reports for a run (ms), whenever the run ends. */
  runMs: Int(1, 6),
  /**
   * Its pool pins each job to an instance (an idle one, else the busy one whose run began first)
   * and says when each starts (`reportsStarts`), as `InstancePool` does; else it starts its jobs in
   * the order they came (one FIFO).
   */
  pins: Schema.Boolean,
  /** Its own queue bound (config.json `maxQueuedRequests`), or null: the shared one alone. */
  maxQueued: Schema.NullOr(Int(1, 6))
})

/** Whether the Dispatcher pumps after the step (0: not yet, as within one burst of admissions). */
const Pump = Int(0, 3)

const Admit = Schema.TaggedStruct("Admit", {
  /** One of the scenario's models (`modelKeys`, modulo their count). */
  model: Int(0, 3),
  /** 0 to 2: the first of two input kinds that every batching model shares (alike inputs); 3: the second; 4: inputs that cannot batch. */
  kind: Int(0, 4),
  /** 0: Critical, 1-2: High, 3-5: Normal, 6-7: Low (a Critical request sends its batch at once, so fewer of them). */
  priority: Int(0, 7),
  rows: Int(1, 3),
  /** Requests admitted at once with these settings (a burst). */
  copies: Int(1, 3),
  deadlineInMs: Int(1, 250),
  /** null or 0: no queue timeout. */
  queueTimeoutMs: Schema.NullOr(Int(0, 60)),
  pump: Pump
})
/** Moves the clock on `ms`; or, `toWake`, to the time the Dispatcher's timer fires next (what `next` waits for, or a timer), if later. */
const Advance = Schema.TaggedStruct("Advance", { ms: Int(0, 15), toWake: Schema.Boolean, pump: Pump })
/** Cancels one unsettled request, or with `any` one of all admitted (a settled one too: cancel must then say false). */
const Cancel = Schema.TaggedStruct("Cancel", { pick: Int(0, 999), any: Schema.Boolean, pump: Pump })
/** Ends the run of one job in flight, in any order (a job sent ahead too: withdrawn or run elsewhere; a pinning pool's, mostly one that runs). */
const Complete = Schema.TaggedStruct("Complete", { pick: Int(0, 999), pump: Pump })
const Op = Schema.Union([Admit, Advance, Cancel, Complete])

const SchedulerScenario = Schema.Struct({
  models: Schema.Array(ModelGen).check(Schema.isMinLength(2), Schema.isMaxLength(4)),
  maxConcurrent: Int(1, 4),
  maxQueued: Int(1, 24),
  enablePriority: Schema.Boolean,
  aging: Schema.Boolean,
  ops: Schema.Array(Op).check(Schema.isMinLength(10), Schema.isMaxLength(80))
})
type SchedulerScenario = typeof SchedulerScenario.Type

/** Every batching model's requests have one of these keys: what the inputs look like, not whose they are. */
const kinds = ["x:float32:*x4", "y:float32:*x4"] as const
const priorities: ReadonlyArray<Priority.Priority> = ["Critical", "High", "High", "Normal", "Normal", "Normal", "Low", "Low"]
/** Model keys as the engine makes them (name@version): two versions of "a", then other models. */
const modelKeys = ["a@1", "a@2", "b@1", "c@3"] as const

const specOf = (gen: SchedulerScenario["models"][number], i: number): Scheduler.ModelSpec => ({
  key: modelKeys[i]!,
  instances: gen.instances ?? Infinity,
  depth: gen.depth,
  devices: gen.devices ?? undefined,
  batching: gen.batching > 0
    ? {
      ...BatchPolicy.disabled,
      enabled: true,
      maxBatchSize: gen.maxBatchSize,
      maxQueueDelay: Duration.millis(gen.maxQueueDelayMs),
      preferredBatchSizes: gen.preferred && !gen.learned ? [Math.min(2, gen.maxBatchSize)] : [],
      sizing: gen.learned ? "learned" : "fixed"
    }
    : BatchPolicy.disabled,
  maxGroup: gen.batching > 0 ? 1 : gen.maxGroup,
  reportsStarts: gen.pins,
  maxQueued: gen.maxQueued ?? undefined
})

type Outcome = "answered" | "cancelled" | Scheduler.Expiry

/** What the harness admitted, kept apart from what the scheduler records. */
interface Rec {
  readonly id: number
  readonly spec: number
  readonly kind: string | undefined
  readonly priority: Priority.Priority
  readonly rows: number
  readonly deadlineAtMs: number
  readonly queueDeadlineAtMs: number
  readonly request: Scheduler.Request<number>
  outcome: Outcome | undefined
  settledCount: number
  dispatched: Scheduler.Batch<number> | undefined
}

interface Flight {
  readonly batch: Scheduler.Batch<number>
  readonly dispatchedAtMs: number
  /** A pinning pool's: the instance it was handed to (undefined while in the pool's FIFO), whether it has begun, whether it was withdrawn. */
  instance: PinnedInstance | undefined
  began: boolean
  withdrawn: boolean
}

/** One instance of a pinning pool: its jobs in order (the first runs), and when that one began (a count). */
interface PinnedInstance {
  readonly jobs: Array<Flight>
  headSeq: number
}

/** A pinning pool (`ModelGen.pins`): its instances (one a job where the model has no bound) and its FIFO of jobs no instance had room for. */
interface PinningPool {
  readonly instances: Array<PinnedInstance>
  readonly fifo: Array<Flight>
}

/** Where the monotonic clock of the pools that time the runs stands at the scenario's 0 (ms): about a day after boot. */
const monotonicOriginMs = 86_400_000 + 0.123456

/** What `runScenario` saw: the cases the generator must reach for the properties to mean anything. */
const newCoverage = () => ({
  dispatches: 0,
  /** Batches of several requests. */
  joined: 0,
  /** Groups of several requests. */
  grouped: 0,
  /** Jobs handed to a busy instance (pipelining). */
  sentAhead: 0,
  /** Jobs a pinning pool started out of the order they were dispatched in (an instance freed before the one they waited on). */
  startedOutOfOrder: 0,
  /** Jobs a pinning pool had sent ahead that were withdrawn. */
  withdrawnPinned: 0,
  /** Jobs dispatched while the queue held alike requests (same batch key, or none for groups) of another model. */
  alikeOtherModelQueued: 0,
  /** ... of another version of the same model. */
  alikeOtherVersionQueued: 0,
  /** Pumps that left requests of two or more models queued. */
  mixedModelsQueued: 0,
  /** Batches that waited to form (seen forming after a pump). */
  formed: 0,
  cancelled: { queued: 0, forming: 0, running: 0 },
  expired: { queue: 0, deadline: 0 },
  refused: 0,
  /** Refused by the model's own bound while the shared queue had room. */
  refusedByModel: 0
})
type Coverage = ReturnType<typeof newCoverage>

/**
 * Plays a scenario on a Scheduler the way the Dispatcher drives it (a pump: `expire`, then `next`
 * until it says to wait; a job withdrawn when nobody waits for it ahead of a busy instance), with
 * the invariants checked after every step. Throws on the first violation. A `Wait` from `next(now)`
 * must name a time later than now (one that named now itself was asked again forever while the
 * clock stood still: the regression property below).
 */
const runScenario = (sc: SchedulerScenario, coverage: Coverage = newCoverage()): Coverage => {
  const specs = sc.models.map(specOf)
  const nameOf = (spec: number) => modelKeys[spec]!.split("@")[0]
  const options: Scheduler.Options = {
    maxConcurrent: sc.maxConcurrent,
    maxQueued: sc.maxQueued,
    enablePriority: sc.enablePriority,
    aging: sc.aging ? { High: 20, Normal: 20, Low: 20 } : undefined
  }
  const s = Scheduler.make<number>(options)
  const recs: Array<Rec> = []
  const inFlight: Array<Flight> = []
  let now = 0
  let where = "start"
  let lastStep = { _tag: "Idle" } as Scheduler.Step<number>
  const formedSeen = new WeakSet<object>()
  const check = (ok: boolean, message: string): void => {
    if (!ok) throw new Error(`${message} [${where}, at ${now} ms]`)
  }

  /** The pinning pools (`ModelGen.pins`), by model: which of their jobs run is theirs to say. */
  const pools = new Map<Scheduler.Model, PinningPool>()
  let heads = 0
  const poolOf = (model: Scheduler.Model): PinningPool => {
    let pool = pools.get(model)
    if (pool === undefined) pools.set(model, pool = { instances: [], fifo: [] })
    return pool
  }

  /**
   * `instance` moves on, as `InstancePool` does when a reply comes: its FIFO fills its room, and a
   * job that reaches the head begins (the pool says so). A withdrawn job at the head holds the
   * instance until its skip comes (`skipped`: the instance's "cancelled before it ran" reply).
   */
  const advance = (pool: PinningPool, instance: PinnedInstance, depth: number, skipped = false): void => {
    // Skipped: the pool lets go of it, and the Dispatcher's interrupted run ends only now.
    if (skipped) while (instance.jobs[0]?.withdrawn === true) retire(instance.jobs.shift()!)
    while (instance.jobs.length < depth && pool.fifo.length > 0) {
      const next = pool.fifo.shift()!
      next.instance = instance
      instance.jobs.push(next)
    }
    const head = instance.jobs[0]
    if (head === undefined || head.began || head.withdrawn) return
    instance.headSeq = heads++
    head.began = true
    const model = head.batch.model
    if (model.inFlight.some((b, i) => i < model.inFlight.indexOf(head.batch) && !inFlight.find((f) => f.batch === b)!.began)) coverage.startedOutOfOrder++
    s.started(head.batch, now)
  }

  /** A pinning pool takes a job: an idle instance, a new one while under the count, the busy one with room whose run began first, or its FIFO. */
  const handOver = (flight: Flight): void => {
    const { model } = flight.batch
    const pool = poolOf(model)
    const { depth, instances } = model.spec
    let pick = pool.instances.find((i) => i.jobs.length === 0)
    if (pick === undefined && pool.instances.length < instances) pool.instances.push(pick = { jobs: [], headSeq: 0 })
    if (pick === undefined) {
      for (const i of pool.instances) {
        if (i.jobs.length < depth && (pick === undefined || i.jobs.length < pick.jobs.length || (i.jobs.length === pick.jobs.length && i.headSeq < pick.headSeq))) pick = i
      }
    }
    if (pick === undefined) {
      pool.fifo.push(flight)
      return
    }
    flight.instance = pick
    pick.jobs.push(flight)
    advance(pool, pick, depth)
  }

  /** A pinning pool lets go of a job that ended (it ran, or was answered unsent). */
  const letGo = (flight: Flight): void => {
    const pool = poolOf(flight.batch.model)
    const instance = flight.instance
    if (instance === undefined) {
      pool.fifo.splice(pool.fifo.indexOf(flight), 1)
      return
    }
    instance.jobs.splice(instance.jobs.indexOf(flight), 1)
    advance(pool, instance, flight.batch.model.spec.depth)
  }

  /** The skips of withdrawn jobs at the head of an instance come in (some time after their turn came). */
  const skipsArrive = (): void => {
    for (const [model, pool] of pools) {
      for (const instance of pool.instances) if (instance.jobs[0]?.withdrawn === true) advance(pool, instance, model.spec.depth, true)
    }
  }

  /** The members of one job (or forming batch), in order, agree on what may share a job. */
  const checkMembers = (batch: Scheduler.Batch<number>, what: string): void => {
    const first = batch.members[0] === undefined ? undefined : recs[batch.members[0].value]!
    let rows = 0
    let sawCritical = false
    for (const m of batch.members) {
      const rec = recs[m.value]!
      rows += m.rows
      check(m.model === batch.model, `${what}: request ${rec.id}'s model is not the batch's`)
      check(batch.model.spec.key === specs[rec.spec]!.key, `${what} of ${batch.model.spec.key} holds request ${rec.id} admitted for ${specs[rec.spec]!.key}`)
      check(rec.spec === first!.spec, `${what} mixes requests of ${specs[first!.spec]!.key} and ${specs[rec.spec]!.key}`)
      check(rec.kind === first!.kind, `${what} mixes batch keys ${String(first!.kind)} and ${String(rec.kind)}`)
      check(m.batch === batch, `${what}: request ${rec.id} does not point back at its batch`)
      if (sawCritical) check(m.priority === "Critical", `${what}: a ${m.priority} request joined after a Critical one`)
      if (m.priority === "Critical") sawCritical = true
    }
    check(batch.rows === rows, `${what}: rows ${batch.rows} but its members hold ${rows}`)
    if (first === undefined) return
    const spec = specs[first.spec]!
    if (batch.grouped) {
      check(first.kind === undefined, `${what}: a group of requests that batch`)
      check(spec.maxGroup > 1 && batch.members.length <= spec.maxGroup, `${what}: a group of ${batch.members.length} (maxGroup ${spec.maxGroup})`)
    } else if (first.kind === undefined) {
      check(batch.members.length === 1, `${what}: ${batch.members.length} requests that do not batch in one run`)
    } else {
      check(rows <= spec.batching.maxBatchSize, `${what}: ${rows} rows over maxBatchSize ${spec.batching.maxBatchSize}`)
    }
  }

  const settleRec = (rec: Rec, outcome: Outcome): void => {
    check(rec.outcome === undefined, `request ${rec.id} settled twice (${rec.outcome}, then ${outcome})`)
    rec.outcome = outcome
    rec.settledCount++
  }

  const completeFlight = (flight: Flight): void => {
    const { batch } = flight
    if (batch.model.spec.reportsStarts === true) letGo(flight)
    // The Dispatcher answers every member still waiting for this run, then frees the slot.
    for (const m of batch.members) {
      const rec = recs[m.value]!
      if (rec.outcome !== undefined) continue
      check(m.stage === "running", `request ${rec.id} answered from a run while ${m.stage}`)
      s.settle(m)
      settleRec(rec, "answered")
    }
    // What the Dispatcher learns from a run: the native time the pool reports (here the model's own,
    // growing with the rows), measured as a pool measures it, a difference of two readings of a
    // monotonic clock in ms, with the floating-point dust that leaves.
    const perRunMs = sc.models[specs.findIndex((spec) => spec.key === batch.model.spec.key)]!.runMs
    const startedMs = monotonicOriginMs + flight.dispatchedAtMs
    const runMs = (startedMs + (batch.grouped ? perRunMs : perRunMs * (1 + batch.rows / 7))) - startedMs
    batch.model.expectedRunMs = runMs
    batch.model.cost.observe(batch.rows, runMs)
    retire(flight)
  }

  /** The job's run has ended in the Dispatcher (it ran, or it was withdrawn and its pool let go of it): its slot is free. */
  const retire = (flight: Flight): void => {
    s.complete(flight.batch, now)
    inFlight.splice(inFlight.indexOf(flight), 1)
  }

  /** The Dispatcher withdraws a job sent ahead that nobody waits for any more. */
  const withdrawIfAbandoned = (request: Scheduler.Request<number>): void => {
    const batch = request.batch
    if (batch === undefined || !s.isAbandonedAhead(batch)) return
    // Already withdrawn (two of its members left at once): its run has ended, or waits for its pool to let go.
    const flight = inFlight.find((f) => f.batch === batch)
    if (flight === undefined || flight.withdrawn) return
    if (batch.model.spec.reportsStarts !== true) return completeFlight(flight)
    check(!flight.began, `job [${batch.members.map((m) => m.value).join(",")}] of ${batch.model.spec.key} withdrawn while it runs`)
    coverage.withdrawnPinned++
    flight.withdrawn = true
    // The pool lets go of a job in its FIFO at once; an instance that holds it, when it skips it
    // at its turn (`skipsArrive`): the interrupted run, and its slot, end only then.
    if (flight.instance === undefined) {
      letGo(flight)
      retire(flight)
    }
  }

  const onDispatch = (batch: Scheduler.Batch<number>): void => {
    check(batch.members.length > 0, "an empty job dispatched")
    check(batch.stage === "running", "a dispatched job not running")
    check(!inFlight.some((f) => f.batch === batch), "a job dispatched twice")
    checkMembers(batch, `job [${batch.members.map((m) => m.value).join(",")}]`)
    for (const m of batch.members) {
      const rec = recs[m.value]!
      check(rec.outcome === undefined, `request ${rec.id} dispatched after it settled (${rec.outcome})`)
      check(rec.dispatched === undefined, `request ${rec.id} dispatched twice`)
      check(m.stage === "running", `request ${rec.id} dispatched but ${m.stage}`)
      rec.dispatched = batch
    }
    coverage.dispatches++
    if (batch.members.length > 1) coverage[batch.grouped ? "grouped" : "joined"]++
    if (batch.model.inFlight.length > batch.model.spec.instances) coverage.sentAhead++
    const first = recs[batch.members[0]!.value]!
    if (batch.grouped || first.kind !== undefined) {
      for (const r of s.queue.values()) {
        const rec = recs[r.value]!
        if (rec.kind !== first.kind) continue
        if (nameOf(rec.spec) !== nameOf(first.spec)) coverage.alikeOtherModelQueued++
        else if (rec.spec !== first.spec) coverage.alikeOtherVersionQueued++
      }
    }
    const flight: Flight = { batch, dispatchedAtMs: now, instance: undefined, began: false, withdrawn: false }
    inFlight.push(flight)
    if (batch.model.spec.reportsStarts === true) handOver(flight)
  }

  const pump = (): void => {
    where += " / pump"
    const expired = s.expire(now)
    for (const { request, why } of expired) {
      const rec = recs[request.value]!
      if (why === "deadline") check(now >= rec.deadlineAtMs, `request ${rec.id} expired before its deadline ${rec.deadlineAtMs}`)
      else {
        check(now >= rec.queueDeadlineAtMs && rec.queueDeadlineAtMs < rec.deadlineAtMs, `request ${rec.id} timed out in the queue before ${rec.queueDeadlineAtMs}`)
        check(rec.dispatched === undefined, `request ${rec.id} timed out in the queue while running`)
      }
      settleRec(rec, why)
      coverage.expired[why]++
    }
    // Withdrawn once every expiry is answered (the Dispatcher interrupts the job; it ends after).
    for (const { request } of expired) withdrawIfAbandoned(request)
    let step = s.next(now)
    for (let guard = 0; step._tag === "Dispatch"; step = s.next(now)) {
      check(++guard < 10_000, "next() dispatches without end")
      onDispatch(step.batch)
    }
    lastStep = step
    checkSettled()
    // Nothing stranded: what is still queued can go neither on a free slot nor into a forming batch of its kind.
    let forming = 0
    for (const model of s.models()) {
      for (const batch of model.forming.values()) {
        forming++
        if (!formedSeen.has(batch)) coverage.formed++
        formedSeen.add(batch)
        check(batch.members.length > 0, `an empty forming batch of ${model.spec.key} kept after next()`)
      }
    }
    if (forming > 0) check(step._tag === "Wait", `${forming} batches forming but next() says ${step._tag}`)
    if (step._tag === "Wait") {
      check(step.untilMs >= now, `next(${now}) waits until ${step.untilMs}, before now`)
    }
    const modelsQueued = new Set<Scheduler.Model>()
    for (const r of s.queue.values()) {
      modelsQueued.add(r.model)
      const model = r.model
      const instances = model.spec.instances
      const canOpen = model.slots < instances * model.spec.depth && (model.slots >= instances || s.freePermits > 0)
      check(!canOpen, `request ${r.value} of ${model.spec.key} stays queued with a slot free (slots ${model.slots}, free permits ${s.freePermits})`)
      check(r.batchKey === undefined || !model.forming.has(r.batchKey), `request ${r.value} stays queued while a batch of its kind forms`)
    }
    if (modelsQueued.size > 1) coverage.mixedModelsQueued++
    // Timers: nothing due is left.
    check(s.nextTimerMs() > now, `a timer due at ${s.nextTimerMs()} was left`)
    for (const rec of recs) {
      if (rec.outcome !== undefined) continue
      check(rec.deadlineAtMs > now, `request ${rec.id} is past its deadline and unsettled`)
      if (rec.dispatched === undefined && rec.queueDeadlineAtMs < rec.deadlineAtMs) {
        check(rec.queueDeadlineAtMs > now, `request ${rec.id} waits past its queue timeout`)
      }
    }
  }

  /** The scheduler's state agrees with the harness's records, and every bound holds. */
  const checkSettled = (): void => {
    let unsettled = 0
    let abandoned = 0
    let queued = 0
    let formingRecs = 0
    for (const rec of recs) {
      check(rec.settledCount <= 1, `request ${rec.id} settled ${rec.settledCount} times`)
      const stage = rec.request.stage
      if (rec.outcome === "cancelled" || rec.outcome === "queue" || rec.outcome === "deadline") abandoned++
      if (rec.outcome !== undefined) {
        check(stage === "settled", `request ${rec.id} settled (${rec.outcome}) but the scheduler has it ${stage}`)
        continue
      }
      unsettled++
      if (rec.dispatched !== undefined) check(stage === "running", `request ${rec.id} dispatched but ${stage}`)
      else check(stage === "queued" || stage === "forming", `request ${rec.id} not dispatched but ${stage}`)
      if (stage === "queued") queued++
      if (stage === "forming") formingRecs++
    }
    check(s.unsettled === unsettled, `the scheduler counts ${s.unsettled} unsettled, the harness ${unsettled}`)
    check(s.abandoned.queued + s.abandoned.forming + s.abandoned.running === abandoned, "abandoned counts disagree")
    check(s.queue.size === queued, `queue holds ${s.queue.size}, the harness has ${queued} queued`)
    check(s.queue.size <= sc.maxQueued, "the queue is over maxQueued")
    for (const r of s.queue.values()) check(r.stage === "queued" && recs[r.value]!.outcome === undefined, `request ${r.value} in the queue but ${r.stage}`)

    let permits = 0
    let native = 0
    let waitingAhead = 0
    let formingMembers = 0
    const seen = new Set<Scheduler.Model>()
    for (const model of s.models()) {
      seen.add(model)
      const spec = model.spec
      const flights = inFlight.filter((f) => f.batch.model === model)
      check(model.runs === flights.length, `${spec.key}: ${model.runs} runs counted, ${flights.length} in flight`)
      check(model.inFlight.length === flights.length && flights.every((f) => model.inFlight.includes(f.batch)), `${spec.key}: inFlight disagrees`)
      check(model.slots === model.forming.size + flights.length, `${spec.key}: ${model.slots} slots for ${model.forming.size} forming and ${flights.length} in flight`)
      check(model.slots <= spec.instances * spec.depth, `${spec.key}: ${model.slots} slots over ${spec.instances} × ${spec.depth}`)
      check(model.permitsHeld === Math.min(model.slots, spec.instances), `${spec.key}: holds ${model.permitsHeld} permits for ${model.slots} slots`)
      permits += model.permitsHeld
      let queuedRows = 0
      for (const r of s.queue.values()) if (r.model === model) queuedRows += r.rows
      check(model.queuedRows === queuedRows, `${spec.key}: queuedRows ${model.queuedRows}, queue holds ${queuedRows}`)
      let queuedHere = 0
      for (const r of s.queue.values()) if (r.model === model) queuedHere++
      check(model.queued === queuedHere, `${spec.key}: queued ${model.queued}, queue holds ${queuedHere}`)
      let aheadHere = 0
      for (const batch of model.inFlight) aheadHere += batch.waiting
      check(model.waitingAhead === aheadHere, `${spec.key}: waitingAhead ${model.waitingAhead}, its jobs hold ${aheadHere}`)
      for (const [key, batch] of model.forming) {
        check(batch.key === key && batch.model === model && batch.stage === "forming", `${spec.key}: a forming batch out of place`)
        checkMembers(batch as Scheduler.Batch<number>, `forming batch of ${spec.key}`)
        for (const m of batch.members) check(m.stage === "forming", `request ${String(m.value)} in a forming batch but ${m.stage}`)
        formingMembers += batch.members.length
      }
      model.inFlight.forEach((batch, i) => {
        const started = !Number.isNaN(batch.startedAtMs)
        if (spec.reportsStarts === true) {
          const began = inFlight.find((f) => f.batch === batch)!.began
          check(started === began, `${spec.key}: job ${i} in flight ${started ? "started" : "not started"} but its pool ${began ? "began" : "has not begun"} it`)
          // Native runs: the instances running a job (a withdrawn one at the head is skipped, not run).
          native += poolOf(model).instances.filter((inst) => inst.jobs[0] === inFlight.find((f) => f.batch === batch)).length
        } else {
          check(started === i < spec.instances, `${spec.key}: job ${i} in flight ${started ? "started" : "not started"} with ${spec.instances} instances`)
          if (started) native++
        }
        const waiting = started ? 0 : batch.members.filter((m) => m.stage !== "settled").length
        check(batch.waiting === waiting, `${spec.key}: job ${i} counts ${batch.waiting} waiting, ${waiting} do`)
        check(s.isAbandonedAhead(batch as Scheduler.Batch<number>) === (!started && waiting === 0), `${spec.key}: isAbandonedAhead wrong`)
        waitingAhead += batch.waiting
      })
    }
    for (const f of inFlight) check(seen.has(f.batch.model), "a job in flight for a model the scheduler does not know")
    check(formingMembers === formingRecs, `${formingMembers} requests in forming batches, the harness has ${formingRecs}`)
    check(permits <= sc.maxConcurrent, `${permits} permits held over maxConcurrent ${sc.maxConcurrent}`)
    check(native <= sc.maxConcurrent, `${native} native runs at once over maxConcurrent ${sc.maxConcurrent}`)
    check(s.freePermits === sc.maxConcurrent - permits, `freePermits ${s.freePermits} with ${permits} held`)
    check(s.waitingAhead === waitingAhead, `waitingAhead ${s.waitingAhead}, jobs hold ${waitingAhead}`)
  }

  sc.ops.forEach((op, index) => {
    where = `op ${index} ${op._tag}`
    switch (op._tag) {
      case "Admit": {
        const specIndex = op.model % specs.length
        const spec = specs[specIndex]!
        const batches = spec.batching.enabled && op.kind < 4 && op.rows <= spec.batching.maxBatchSize
        const kind = batches ? kinds[op.kind < 3 ? 0 : 1] : undefined
        const rows = batches ? op.rows : 1
        const priority = priorities[op.priority]!
        for (let c = 0; c < op.copies; c++) {
          const ownBound = !s.isFull() && s.modelFullAt(spec.key) !== undefined
          const wasFull = s.isFull() || ownBound
          const id = recs.length
          const deadlineAtMs = now + op.deadlineInMs
          const queueDeadlineAtMs = op.queueTimeoutMs === null || op.queueTimeoutMs === 0 ? Infinity : now + op.queueTimeoutMs
          const request = s.admit({ value: id, model: spec, priority, rows, batchKey: kind, deadlineAtMs, queueDeadlineAtMs }, now)
          if (request === undefined) {
            check(wasFull, "a request refused while the queue (and its model's own bound) had room")
            coverage.refused++
            if (ownBound) coverage.refusedByModel++
            continue
          }
          check(request.value === id && request.model.spec.key === spec.key, "admit returned another request or model")
          check(request.stage === "queued" || request.stage === "forming", `a new request is ${request.stage}`)
          if (wasFull) check(request.stage === "forming", "a request queued past maxQueued")
          recs.push({ id, spec: specIndex, kind, priority, rows, deadlineAtMs, queueDeadlineAtMs, request, outcome: undefined, settledCount: 0, dispatched: undefined })
        }
        break
      }
      case "Advance": {
        skipsArrive()
        const wake = Math.min(lastStep._tag === "Wait" ? lastStep.untilMs : Infinity, s.nextTimerMs())
        now = op.toWake ? Math.max(now, Number.isFinite(wake) ? wake : now + op.ms) : now + op.ms
        break
      }
      case "Cancel": {
        const candidates = op.any ? recs : recs.filter((r) => r.outcome === undefined)
        if (candidates.length === 0) break
        const rec = candidates[op.pick % candidates.length]!
        const wasUnsettled = rec.outcome === undefined
        const stage = rec.request.stage
        if (stage !== "settled") coverage.cancelled[stage]++
        check(s.cancel(rec.request) === wasUnsettled, `cancel of request ${rec.id} answered wrongly (settled: ${!wasUnsettled})`)
        if (wasUnsettled) {
          settleRec(rec, "cancelled")
          withdrawIfAbandoned(rec.request)
        }
        break
      }
      case "Complete": {
        // A pinning pool's jobs end by running (one that has not begun ends only unsent, which is rare: once in eight here).
        const ending = (op.pick % 8 === 0 ? inFlight : inFlight.filter((f) => f.began || f.batch.model.spec.reportsStarts !== true)).filter((f) => !f.withdrawn)
        if (ending.length === 0) break
        completeFlight(ending[op.pick % ending.length]!)
        break
      }
    }
    checkSettled()
    if (op.pump > 0) pump()
  })

  // Drain: jobs end one by one, time moves to the next thing the scheduler waits for, until nothing is left.
  for (let i = 0; ; i++) {
    where = `drain ${i}`
    check(i < 20_000, "the drain does not end")
    skipsArrive()
    pump()
    if (inFlight.length > 0) {
      // The pool ends a job that runs (a pinning pool's others wait their turn).
      completeFlight(inFlight.find((f) => f.began || f.batch.model.spec.reportsStarts !== true) ?? inFlight.find((f) => !f.withdrawn)!)
      checkSettled()
      continue
    }
    if (recs.every((r) => r.outcome !== undefined)) break
    const wake = Math.min(lastStep._tag === "Wait" ? lastStep.untilMs : Infinity, s.nextTimerMs())
    check(Number.isFinite(wake), `requests wait with nothing running and nothing to wake for (next: ${lastStep._tag})`)
    check(wake > now, `next(${now}) or a timer names no later time: ${wake}`)
    now = wake
  }
  where = "end"
  check(s.unsettled === 0 && s.queue.size === 0 && s.waitingAhead === 0, "requests left after the drain")
  check(s.freePermits === sc.maxConcurrent, `${sc.maxConcurrent - s.freePermits} permits leaked`)
  for (const model of s.models()) {
    check(model.slots === 0 && model.permitsHeld === 0 && model.runs === 0 && model.forming.size === 0 && model.inFlight.length === 0, `${model.spec.key} holds slots after the drain`)
  }
  for (const [model, pool] of pools) {
    check(pool.fifo.length === 0 && pool.instances.every((i) => i.jobs.length === 0), `${model.spec.key}'s pool holds jobs after the drain`)
  }
  for (const rec of recs) {
    check(rec.settledCount === 1, `request ${rec.id} settled ${rec.settledCount} times`)
    if (rec.outcome === "answered") check(rec.dispatched !== undefined, `request ${rec.id} answered without running`)
  }
  return coverage
}

/** One batch forming behind a run, woken exactly when `next` says (a timer on a TestClock). */
const WakeScenario = Schema.Struct({
  learned: Schema.Boolean,
  /** The run's time in µs, as a pool measures it: a difference of two monotonic clock readings. */
  runUs: Int(500, 20_000),
  clockMs: Int(0, 1_000_000_000),
  maxQueueDelayMs: Int(1, 200),
  deadlineInMs: Int(1, 200),
  atMs: Int(0, 1_000)
})

const runWakeScenario = (sc: typeof WakeScenario.Type): void => {
  const s = Scheduler.make<string>({ maxConcurrent: 1, maxQueued: 10, enablePriority: true })
  const spec: Scheduler.ModelSpec = {
    key: "m@1",
    instances: 1,
    depth: 2,
    batching: { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 8, maxQueueDelay: Duration.millis(sc.maxQueueDelayMs), sizing: sc.learned ? "learned" : "fixed" },
    maxGroup: 1
  }
  const runMs = (sc.clockMs + sc.runUs / 1000) - sc.clockMs
  s.model(spec).expectedRunMs = runMs
  s.model(spec).cost.observe(1, runMs)
  const admit = (value: string, deadlineAtMs: number) =>
    s.admit({ value, model: spec, priority: "Normal", rows: 1, batchKey: "k", deadlineAtMs, queueDeadlineAtMs: Infinity }, sc.atMs)
  admit("running", Infinity)
  assert.strictEqual(s.next(sc.atMs)._tag, "Dispatch")
  admit("forming", sc.atMs + sc.deadlineInMs)
  let now = sc.atMs
  for (let i = 0; i < 100; i++) {
    const step = s.next(now)
    if (step._tag === "Dispatch") return
    assert.strictEqual(step._tag, "Wait", "a batch forms: next() waits for it")
    if (step._tag !== "Wait") return
    assert.isAbove(step.untilMs, now, `next(${now}) waits until ${step.untilMs}: the batch never goes at this time`)
    now = step.untilMs
  }
  assert.fail("the batch never went")
}

describe("Scheduler properties: several models and versions with alike inputs", () => {
  it("the generated scenarios reach the cases the properties are about", () => {
    const coverage = newCoverage()
    const scenarios = Effect.runSync(Arbitrary.sampleEffect(Arbitrary.schema(SchedulerScenario), { count: 300, seed: 7, size: 80 }))
    for (const scenario of scenarios) runScenario(scenario, coverage)
    const { cancelled, expired, ...counts } = coverage
    for (const [name, n] of Object.entries({ ...counts, ...cancelled, ...expired })) assert.isAbove(n, 10, `${name} in ${JSON.stringify(coverage)}`)
  })

  it.prop(
    "every job holds one model version and batch key; every request settles once; slots and permits hold; nothing is stranded",
    [SchedulerScenario],
    ([scenario]) => {
      runScenario(scenario)
    },
    { timeout: 120_000, arbitrary: arbitrary(1500, 80) }
  )

  // A regression property (the bug fixed with it): next(now) answered Wait { untilMs: now }, and the
  // same again at that time, so a batch forming there never went while the clock stood still.
  // BatchPolicy.decide answers Wait { ms } with ms the time left before the batch's deadline less
  // twice its run time; woken at the time it named, that is a sliver of floating-point dust (run
  // times are differences of monotonic clock readings), and now + ms rounds to now. The Dispatcher
  // then pumped again at once, in a loop that ended only when the clock moved: under a TestClock,
  // never. The property above, asked for a time later than now, meets it about once in 8,000
  // scenarios; this one aims at it.
  it("a batch forming behind a run goes by the times next() names, each later than the last", () =>
    Effect.runSync(checkProperty(WakeScenario, (scenario) => Effect.sync(() => runWakeScenario(scenario)), arbitrary(1000, 10))))
})

// ---------------------------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------------------------

const EngineModelVersion = Schema.Struct({
  batching: Schema.Boolean,
  maxBatchSize: Int(2, 6),
  maxQueueDelayMs: Int(0, 10),
  /** null: no bound. */
  instances: Schema.NullOr(Int(1, 2)),
  depth: Int(1, 2)
})

const EngineSubmission = Schema.Struct({
  atMs: Int(0, 12),
  model: Int(0, 2),
  /** 0, 1: names no version (the latest); 2, 3: names "1" or "2". */
  version: Int(0, 3),
  priority: Schema.Literals(Priority.levels),
  rows: Int(1, 3),
  latencyMs: Int(2, 15),
  timeoutMs: Int(1, 150),
  /** Cancel this long after submission; null: never. */
  cancelAfterMs: Schema.NullOr(Int(0, 40))
})

const EngineSchedule = Schema.Struct({
  /** Models "a", "b" (and "c"), each with versions "1" and "2" (the latest); every one takes x: float32 [-1, 4]. */
  models: Schema.Array(Schema.Struct({ v1: EngineModelVersion, v2: EngineModelVersion })).check(Schema.isMinLength(2), Schema.isMaxLength(3)),
  submissions: Schema.Array(EngineSubmission).check(Schema.isMinLength(8), Schema.isMaxLength(24)),
  maxConcurrentRequests: Int(1, 4),
  maxQueuedRequests: Int(2, 16),
  queueTimeoutMs: Int(0, 120),
  enablePriorityQueue: Schema.Boolean,
  aging: Schema.Boolean,
  /** The pool answers metadata without an Effect (the engine's synchronous admission path). */
  metadataUnsafe: Schema.Boolean
})
type EngineSchedule = typeof EngineSchedule.Type

const modelNames = ["a", "b", "c"] as const
/** What model `k` at `version` multiplies its input by: an answer from another model or version has the wrong numbers. */
const factorOf = (model: number, version: string) => 10 * (model + 1) + Number(version)

/** One job the pool ran: a native run (a batch, or one request), or a group of runs. */
interface PoolJob {
  readonly modelId: string
  /** The version the job named (RunOptions.version). */
  readonly version: string | undefined
  /** The model version that ran it: the one named, or the latest when it started. */
  readonly key: string
  readonly grouped: boolean
  /** The value of each request it carried (each row of a request holds the request's value). */
  readonly values: ReadonlyArray<number>
  readonly rows: number
}

type EngineOutcome = "Success" | "Interrupted" | InferenceError.ReasonTag

interface EngineOptions {
  /**
   * For each model, when a load adds version "3", which becomes its latest (null: none): requests
   * that named no version and wait meanwhile were admitted (and validated) as version "2".
   */
  readonly loadsAtMs?: ReadonlyArray<number | null> | undefined
  /** The `name` in each model's metadata; the model id by default (a pool may copy one template for several models). */
  readonly metadataName?: ((modelId: string) => string) | undefined
  /**
   * For each model, when its version "2" is reloaded with another output name (z for y), its
   * inputs alike (null: never): a request admitted before must not be answered with the new
   * outputs (the pool refuses its run: ModelUnavailable, send it again), one admitted after must run.
   */
  readonly reloadsAtMs?: ReadonlyArray<number | null> | undefined
}

const runEngineSchedule = (schedule: EngineSchedule, options: EngineOptions = {}) =>
  Effect.gen(function*() {
    const t0 = yield* Clock.currentTimeMillis
    const metadata = new Map<string, ModelMetadata.ModelMetadata>()
    const factors = new Map<string, number>()
    const latest = new Map<string, string>()
    // Each model version's instances: a job waits for one (FIFO), as a job handed to a busy worker
    // waits there; withdrawn while it waits, it never runs. A native run, once started, cannot be stopped.
    const instances = new Map<string, { free: number; readonly waiters: Array<() => boolean> }>()
    const addVersion = (i: number, version: string, gen: typeof EngineModelVersion.Type) => {
      const modelId = modelNames[i]!
      const key = `${modelId}@${version}`
      factors.set(key, factorOf(i, version))
      const md: ModelMetadata.ModelMetadata = {
        ...echoMetadata,
        name: options.metadataName?.(modelId) ?? modelId,
        version,
        batching: gen.batching
          ? { ...BatchPolicy.disabled, enabled: true, maxBatchSize: gen.maxBatchSize, maxQueueDelay: Duration.millis(gen.maxQueueDelayMs) }
          : undefined,
        concurrency: gen.instances ?? undefined,
        pipelineDepth: gen.depth
      }
      metadata.set(key, md)
      instances.set(key, { free: md.concurrency ?? Infinity, waiters: [] })
      latest.set(modelId, version)
    }
    schedule.models.forEach((versions, i) => {
      addVersion(i, "1", versions.v1)
      addVersion(i, "2", versions.v2)
    })
    const keyOf = (modelId: string, version: string | undefined) => `${modelId}@${version ?? latest.get(modelId)}`
    const lookup = (modelId: string, version?: string): ModelMetadata.ModelMetadata | InferenceError.ModelNotFound =>
      metadata.get(keyOf(modelId, version)) ?? new InferenceError.ModelNotFound({ modelId })
    const takeInstance = (key: string) =>
      Effect.callback<void>((resume) => {
        const instance = instances.get(key)!
        if (instance.free > 0) {
          instance.free--
          return resume(Effect.void)
        }
        let waiting = true
        instance.waiters.push(() => {
          if (!waiting) return false
          waiting = false
          resume(Effect.void)
          return true
        })
        return Effect.sync(() => {
          waiting = false
        })
      })
    const releaseInstance = (key: string) => {
      const instance = instances.get(key)!
      while (instance.waiters.length > 0) if (instance.waiters.shift()!()) return
      instance.free++
    }

    const jobs: Array<PoolJob> = []
    const violations: Array<string> = []
    let active = 0
    const handedOver = new Map<string, number>()
    const job = <A>(
      modelId: string,
      { admittedAs, version }: RunOptions,
      inputs: ReadonlyArray<Tensor.TensorMap>,
      grouped: boolean,
      answer: (outputs: Array<RunOutput>) => A
    ) =>
      Effect.suspend((): Effect.Effect<A, InferenceError.ModelNotFound | InferenceError.ModelUnavailable> => {
        const key = keyOf(modelId, version)
        const md = metadata.get(key)
        if (md === undefined) return Effect.fail(new InferenceError.ModelNotFound({ modelId }))
        // As OnnxModelPool does: a job admitted against inputs or outputs its version no longer has is refused.
        if (admittedAs !== undefined && !ModelMetadata.sameSignature(md, admittedAs)) {
          return Effect.fail(new InferenceError.ModelUnavailable({ modelId, reason: `version ${md.version} was reloaded while this request waited; send it again` }))
        }
        const slots = (md.concurrency ?? Infinity) * (md.pipelineDepth ?? 1)
        const held = (handedOver.get(key) ?? 0) + 1
        handedOver.set(key, held)
        if (held > slots) violations.push(`${key}: ${held} jobs handed over at once, over ${md.concurrency} instances × depth ${md.pipelineDepth}`)
        const start = Effect.gen(function*() {
          const done = yield* Deferred.make<A>()
          active++
          if (active > schedule.maxConcurrentRequests) violations.push(`${active} native runs at once, over maxConcurrentRequests ${schedule.maxConcurrentRequests}`)
          // Each request's rows hold its value: a batch's joined rows name its requests in order.
          const values: Array<number> = []
          let rows = 0
          for (const x of inputs) {
            const data = x["x"]!.data as Float32Array
            for (let r = 0; r < x["x"]!.dims[0]!; r++, rows++) if (values.at(-1) !== data[r * 4]) values.push(data[r * 4]!)
          }
          jobs.push({ modelId, version, key, grouped, values, rows })
          // A batch takes its first request's scripted time; a group, each of its runs one after another.
          const latencyMs = grouped
            ? values.reduce((ms, v) => ms + schedule.submissions[v - 1]!.latencyMs, 0)
            : schedule.submissions[values[0]! - 1]!.latencyMs
          const factor = factors.get(key)!
          const outputs = inputs.map((x): RunOutput => ({
            outputs: { [md.outputs[0]!.name]: Tensor.float32(Float32Array.from(x["x"]!.data as Float32Array, (v) => v * factor), x["x"]!.dims) },
            deviceUsed: "cpu"
          }))
          yield* Effect.forkDetach(
            Effect.sleep(Duration.millis(latencyMs)).pipe(Effect.andThen(Effect.sync(() => {
              active--
              releaseInstance(key)
              Deferred.doneUnsafe(done, Exit.succeed(answer(outputs)))
            }))),
            { startImmediately: true }
          )
          return done
        })
        return Effect.uninterruptibleMask((restore) => Effect.andThen(restore(takeInstance(key)), start)).pipe(
          Effect.flatMap(Deferred.await),
          Effect.ensuring(Effect.sync(() => handedOver.set(key, handedOver.get(key)! - 1)))
        )
      })

    const pool: ModelPool["Service"] = {
      metadata: (modelId, version) => {
        const found = lookup(modelId, version)
        return "_tag" in found ? Effect.fail(found) : Effect.succeed(found)
      },
      ...(schedule.metadataUnsafe ? { metadataUnsafe: lookup } : {}),
      run: (modelId, inputs, options) => job(modelId, options, [inputs], false, (outputs) => outputs[0]!),
      runGroup: (modelId, inputs, options) => job(modelId, options, inputs, true, (outputs) => outputs.map((o) => Exit.succeed(o))),
      models: Effect.succeed([])
    }
    const context = yield* Layer.build(AsyncInferenceEngine.layer.pipe(
      Layer.provide(Layer.mergeAll(
        Layer.succeed(ModelPool, pool),
        TelemetryCollector.layerNoop,
        AsyncConfigService.layerWith({
          maxConcurrentRequests: schedule.maxConcurrentRequests,
          maxQueuedRequests: schedule.maxQueuedRequests,
          queueTimeout: Duration.millis(schedule.queueTimeoutMs),
          enablePriorityQueue: schedule.enablePriorityQueue,
          ...(schedule.aging ? { aging: { High: 20, Normal: 20, Low: 20 } } : {})
        })
      ))
    ))
    const engine = Context.get(context, AsyncInferenceEngine)

    interface Tracked {
      readonly id: string
      readonly value: number
      readonly model: string
      readonly version: string | undefined
      /** The model version it was submitted to: the one named, or the latest then. */
      admittedAs: string
      /** That version's metadata then (a reload replaces it). */
      admittedMetadata: ModelMetadata.ModelMetadata | undefined
      admittedAtMs: number
      settledAtMs: number
      settledCount: number
      outcome: EngineOutcome | undefined
      cancelRequestedAtMs: number | undefined
      fiber: Fiber.Fiber<void, unknown> | undefined
    }
    const tracked: Array<Tracked> = schedule.submissions.map((s, i) => ({
      id: `r${i}`,
      value: i + 1,
      model: modelNames[s.model % schedule.models.length]!,
      version: s.version < 2 ? undefined : String(s.version - 1),
      admittedAs: "",
      admittedMetadata: undefined,
      admittedAtMs: -1,
      settledAtMs: -1,
      settledCount: 0,
      outcome: undefined,
      cancelRequestedAtMs: undefined,
      fiber: undefined
    }))
    const elapsed = Effect.map(Clock.currentTimeMillis, (t) => t - t0)

    type Event = { readonly atMs: number; readonly order: number; readonly run: Effect.Effect<void> }
    const events: Array<Event> = []
    schedule.submissions.forEach((s, i) => {
      const t = tracked[i]!
      events.push({
        atMs: s.atMs,
        order: i,
        run: Effect.gen(function*() {
          t.admittedAtMs = yield* elapsed
          t.admittedAs = keyOf(t.model, t.version)
          t.admittedMetadata = metadata.get(t.admittedAs)
          const request = InferenceRequest.make(t.model, echoInputs(t.value, s.rows), {
            requestId: t.id,
            priority: s.priority,
            timeout: Duration.millis(s.timeoutMs),
            modelVersion: t.version
          })
          const settle = (outcome: EngineOutcome) =>
            Effect.map(elapsed, (ms) => {
              t.settledCount++
              t.settledAtMs = ms
              t.outcome = outcome
            })
          t.fiber = yield* Effect.forkChild(
            engine.infer(request).pipe(
              Effect.exit,
              Effect.flatMap((exit) => {
                if (Exit.isSuccess(exit)) {
                  // Answered with the outputs of the version it was admitted (and validated) against.
                  const output = t.admittedMetadata!.outputs[0]!.name
                  const y = exit.value.outputs[output]
                  if (y === undefined) {
                    violations.push(`${t.id} (${t.admittedAs}, admitted against output ${output}) was answered with ${Object.keys(exit.value.outputs).join(", ")}`)
                    return settle("Success")
                  }
                  const due = t.value * factors.get(t.admittedAs)!
                  const got = Array.from(y.data as Float32Array)
                  if (y.dims[0] !== s.rows || y.dims[1] !== 4) violations.push(`${t.id} got dims ${y.dims.join("x")} for ${s.rows} rows`)
                  if (!got.every((v) => v === due)) {
                    violations.push(`${t.id} (${t.admittedAs}, value ${t.value}) got ${got[0]}, due ${due}: computed by another model or version`)
                  }
                  return settle("Success")
                }
                if (Cause.hasDies(exit.cause)) violations.push(`${t.id} died: ${Cause.pretty(exit.cause)}`)
                const fail = exit.cause.reasons.find((r) => r._tag === "Fail")
                return settle(fail === undefined ? "Interrupted" : fail.error.reason._tag)
              }),
              Effect.onInterrupt(() => settle("Interrupted"))
            ),
            { startImmediately: true }
          )
        })
      })
      if (s.cancelAfterMs !== null) {
        events.push({
          atMs: s.atMs + s.cancelAfterMs,
          order: 1000 + i,
          run: Effect.gen(function*() {
            if (t.fiber === undefined || t.settledCount > 0) return
            t.cancelRequestedAtMs = yield* elapsed
            yield* Fiber.interrupt(t.fiber)
          })
        })
      }
    })
    options.loadsAtMs?.forEach((atMs, i) => {
      if (atMs === null || i >= schedule.models.length) return
      events.push({ atMs, order: -1, run: Effect.sync(() => addVersion(i, "3", schedule.models[i]!.v2)) })
    })
    options.reloadsAtMs?.forEach((atMs, i) => {
      if (atMs === null || i >= schedule.models.length) return
      const key = `${modelNames[i]}@2`
      events.push({
        atMs,
        order: -1,
        run: Effect.sync(() => {
          const before = metadata.get(key)!
          metadata.set(key, { ...before, outputs: [{ ...before.outputs[0]!, name: "z" }] })
        })
      })
    })
    events.sort((a, b) => a.atMs - b.atMs || a.order - b.order)
    let nowMs = 0
    for (const event of events) {
      if (event.atMs > nowMs) {
        yield* TestClock.adjust(Duration.millis(event.atMs - nowMs))
        nowMs = event.atMs
      }
      yield* event.run
      assert.deepStrictEqual(violations, [], violations.join("; "))
      const state = yield* engine.diagnostics
      const stats = yield* engine.queueStats
      assert.strictEqual(state.queued + state.ahead, stats.total, "the scheduler's queue and the queue stats disagree")
      assert.isAtMost(state.queued + state.forming, state.unsettled, "queued or forming requests that are not unsettled")
    }
    // Long enough for every deadline, delay and run (a group of 8 runs of 12 ms) to pass.
    yield* TestClock.adjust("3 seconds")
    assert.deepStrictEqual(violations, [], violations.join("; "))

    // Every job the pool ran carried requests of one model version: the one it ran under.
    const ranIn = new Map<number, PoolJob>()
    for (const j of jobs) {
      const md = metadata.get(j.key)!
      const admittedAgainst = tracked[j.values[0]! - 1]!.admittedMetadata!
      for (const v of j.values) {
        const t = tracked[v - 1]!
        assert.isTrue(
          ModelMetadata.sameSignature(t.admittedMetadata!, admittedAgainst),
          `${t.id} shares a job with ${tracked[j.values[0]! - 1]!.id}, admitted against another signature of ${j.key}`
        )
        assert.isUndefined(ranIn.get(v), `${t.id} ran twice`)
        ranIn.set(v, j)
        assert.strictEqual(t.model, j.modelId, `${t.id} (model ${t.model}) ran in a job of model ${j.modelId}`)
        assert.strictEqual(j.key, t.admittedAs, `${t.id} (${t.admittedAs}) ran in a job of ${j.key}`)
      }
      if (j.grouped) assert.isTrue(md.batching === undefined, `a group of ${j.modelId}@${md.version}, which batches`)
      else if (j.values.length > 1) {
        assert.isTrue(md.batching !== undefined && j.rows <= md.batching.maxBatchSize, `a batch of ${j.rows} rows of ${j.modelId}@${md.version}`)
      }
    }
    for (const t of tracked) {
      const s = schedule.submissions[Number(t.id.slice(1))]!
      assert.strictEqual(t.settledCount, 1, `${t.id} settled ${t.settledCount} times`)
      const ran = ranIn.get(t.value)
      if (checkCommonOutcome(t, { timeoutMs: s.timeoutMs, queueTimeoutMs: schedule.queueTimeoutMs }, ran !== undefined)) continue
      switch (t.outcome) {
        case "ModelUnavailable":
          // Only a request admitted against a signature its version no longer has is sent back.
          assert.isFalse(ModelMetadata.sameSignature(t.admittedMetadata!, metadata.get(t.admittedAs)!), `${t.id} refused, though admitted against ${t.admittedAs} as it is`)
          assert.isUndefined(ran, `${t.id} refused yet ran`)
          break
        default:
          assert.fail(`${t.id} ended with ${t.outcome}`)
      }
    }
    // Quiescence: nothing queued, forming or running; every native run ended and every instance is back.
    assert.deepInclude(yield* engine.diagnostics, { queued: 0, ahead: 0, forming: 0, runs: 0, unsettled: 0 })
    assert.strictEqual(active, 0)
    for (const [key, n] of handedOver) assert.strictEqual(n, 0, `${key} still holds jobs`)
    for (const [key, md] of metadata) assert.strictEqual(instances.get(key)!.free, md.concurrency ?? Infinity, `${key} lost an instance`)
    return { jobs, outcomes: tracked.map((t) => t.outcome!) }
  }).pipe(Effect.scoped)

/** A property as an Effect, for `it.effect.skip` (the vitest helper has no skipped `prop`); fails as `prop` does. */
const checkProperty = <S extends Schema.Top>(schema: S, property: (value: S["Type"]) => Effect.Effect<unknown, unknown>, options: Arbitrary.CheckOptions) =>
  Effect.flatMap(
    Arbitrary.checkEffect(
      Arbitrary.schema(schema) as Arbitrary.Arbitrary<S["Type"]>,
      // A failed assertion (a defect) falsifies the property, and shrinks, as in `it.effect.prop`.
      (value) => Effect.catchCause(Effect.as(property(value), true), (cause) => Cause.hasInterrupts(cause) ? Effect.failCause(cause) : Effect.fail(cause)),
      options
    ),
    (result) => {
      const failure = Arbitrary.formatCheckFailure(result)
      return failure === undefined ? Effect.void : Effect.die(new Error(failure))
    }
  )

/** Schedules in which loads add version "3" to some models while requests wait. */
const EngineScheduleWithLoads = Schema.Struct({
  schedule: EngineSchedule,
  loadsAtMs: Schema.Array(Schema.NullOr(Int(0, 40))).check(Schema.isMinLength(3), Schema.isMaxLength(3))
})

/** Schedules in which some models' version 2 is reloaded with other outputs while requests wait. */
const EngineScheduleWithReloads = Schema.Struct({
  schedule: EngineSchedule,
  reloadsAtMs: Schema.Array(Schema.NullOr(Int(0, 20))).check(Schema.isMinLength(3), Schema.isMaxLength(3))
})

describe("AsyncInferenceEngine properties: several models and versions with alike inputs", () => {
  it.effect("the generated schedules reach the cases the property is about", () =>
    Effect.gen(function*() {
      const schedules = yield* Arbitrary.sampleEffect(Arbitrary.schema(EngineSchedule), { count: 60, seed: 11, size: 24 })
      const counts: Record<string, number> = { joined: 0, grouped: 0, mixedModels: 0, mixedVersions: 0 }
      for (const schedule of schedules) {
        const { jobs, outcomes } = yield* runEngineSchedule(schedule)
        for (const j of jobs) if (j.values.length > 1) counts[j.grouped ? "grouped" : "joined"]!++
        if (new Set(jobs.map((j) => j.modelId)).size > 1) counts.mixedModels!++
        if (new Set(jobs.map((j) => j.key)).size > new Set(jobs.map((j) => j.modelId)).size) counts.mixedVersions!++
        for (const o of outcomes) counts[o] = (counts[o] ?? 0) + 1
      }
      for (const name of ["joined", "grouped", "mixedModels", "mixedVersions", "Success", "Interrupted", "QueueFull", "QueueTimeout", "DeadlineExceeded"]) {
        assert.isAbove(counts[name] ?? 0, 5, `${name} in ${JSON.stringify(counts)}`)
      }
    }))

  it.effect.prop(
    "each request is answered by its own model and version, in jobs of one model and version, within the bounds",
    [EngineSchedule],
    ([schedule]) => Effect.asVoid(runEngineSchedule(schedule)),
    { timeout: 120_000, arbitrary: arbitrary(150, 24) }
  )

  // Regressions (both failed at e1cae80, fixed by a71f87c): a request that named no version, queued
  // while a load made another version the latest, ran on the new one; two models whose metadata
  // carried one name were one model to the Scheduler, their requests joined into one run.
  it.effect.prop(
    "a request is answered by the version it was admitted as, though a load makes another version the latest meanwhile",
    [EngineScheduleWithLoads],
    ([{ loadsAtMs, schedule }]) => Effect.asVoid(runEngineSchedule(schedule, { loadsAtMs })),
    { timeout: 120_000, arbitrary: arbitrary(60, 24) }
  )

  it.effect.prop(
    "each request is answered by its own model when the pool's metadata names several models alike",
    [EngineSchedule],
    ([schedule]) => Effect.asVoid(runEngineSchedule(schedule, { metadataName: () => "echo" })),
    { timeout: 120_000, arbitrary: arbitrary(60, 24) }
  )

  // A regression property (the bug fixed with it): the Scheduler kept models apart by ModelSpec.key
  // (model@version) only, and a reload of a version makes a new spec (new metadata) under the same
  // key; so requests admitted before and after a reload that changed the version's outputs shared
  // one job, which runs under its first member's metadata (RunOptions.admittedAs). Led by an old
  // one, the pool refused the whole job: requests admitted against the current version got
  // ModelUnavailable ("send it again"). Led by a new one (say, of higher priority), the job ran:
  // requests admitted against the old outputs were answered with the new ones. Specs now carry a
  // generation that moves on with each change of signature, and only one generation shares a job.
  it.effect("a request is answered under the signature it was admitted against, though its version is reloaded while it waits", () =>
    checkProperty(
      EngineScheduleWithReloads,
      ({ reloadsAtMs, schedule }) => runEngineSchedule(schedule, { reloadsAtMs }),
      arbitrary(150, 24)
    ))
})
