/**
 * The engine's state, pure and synchronous: every admitted request, the batches forming and in
 * flight, and each model's dispatch slots. No fibers, no Effects, no clock reads: the time is an
 * argument of every transition, so tables and property tests drive it directly and the
 * `Dispatcher` (the mechanism) only acts on what it answers.
 *
 * - `admit` queues a request, or refuses it (`QueueFull`) when `maxQueued` are waiting: in the
 *   queue, or in a job sent ahead to a busy instance (it waits there just the same); a request
 *   that fits a forming batch of its kind joins it instead of queuing.
 * - `next(now)` says what to do: dispatch this batch, wait until a time, or nothing.
 * - `expire(now)` takes out the requests whose queue timeout (while waiting) or deadline (in any
 *   stage) has come; `cancel` takes one out at once. Either way a queued or forming request never
 *   runs; a running one stays in its batch, and its rows are dropped when the batch completes.
 * - `complete(batch)` frees the batch's slot once its run has ended.
 *
 * Slots and permits. A model has `instances × depth` dispatch slots: `depth` jobs may be handed
 * to one instance at once (the pool pipelines them, so an instance never idles while the next
 * job crosses the thread boundary), but an instance runs one at a time. A slot that makes an
 * instance busy takes one of `maxConcurrent` permits; a pipelined one does not. So native runs,
 * `Σ min(slots used, instances)`, never exceed `maxConcurrent`, and a forming batch (which holds
 * a slot while it waits for rows) counts as a run. One exception: a reload that changes a model's
 * `instances` while it has jobs in flight (`model` takes the new spec at once). Raised, the jobs
 * already sent ahead count as busy, so until they end the runs may exceed the bound by them;
 * lowered, the next `complete` gives back the permits beyond the new count while
 * the old runs go on. Both last only until the jobs dispatched before the reload have ended, and
 * while raised ones exceed it nothing else starts (their permits are taken at once, past the
 * bound: `freePermits` goes below 0) (a property campaign found both; the ONNX pool, which pins
 * jobs to the instances that took them and reports starts, keeps running those jobs one at a time
 * per old instance).
 *
 * Which jobs in flight run. A pool that starts its jobs in the order they were dispatched (one
 * FIFO for its instances) runs the oldest `instances` of them: `complete` infers the starts from
 * that. A pool that pins a job to one busy instance (`ModelSpec.reportsStarts`) may start a later
 * job first, on an instance that freed sooner; it says when each starts (`started`). Either way a
 * job is withdrawn (`isAbandonedAhead`) only while it waits; once it runs, it is stopped
 * (`isAbandoned`) only on a pool that can stop runs (`ModelSpec.stopsAbandonedRuns`).
 *
 * @module Scheduler
 */
import * as BatchPolicy from "./BatchPolicy.ts"
import * as DeadlineHeap from "./internal/DeadlineHeap.ts"
import * as Priority from "./Priority.ts"
import * as PriorityQueue from "./PriorityQueue.ts"
import type * as QueuePolicy from "./QueuePolicy.ts"
import * as RunCost from "./RunCost.ts"

export type Stage = "queued" | "forming" | "running" | "settled"

/** What a model needs for scheduling; fixed for the model's key. */
export interface ModelSpec {
  /** The model and version, as one key. */
  readonly key: string
  /** Native runs of this model at once (its instances); Infinity for a pool without a bound. */
  readonly instances: number
  /** Jobs one instance may be handed at once (1: no pipelining). */
  readonly depth: number
  /**
   * Its pool says when each job starts (`started`), instead of the engine taking the oldest
   * `instances` jobs in flight as the running ones: a pool that pins jobs to instances starts
   * them out of dispatch order.
   */
  readonly reportsStarts?: boolean | undefined
  /**
   * Its pool can stop a run that has begun (`ModelMetadata.stopsAbandonedRuns`): a running job
   * none of whose members waits for it any more is abandoned too (`isAbandoned`), not only one
   * that waits in a busy instance.
   */
  readonly stopsAbandonedRuns?: boolean | undefined
  /**
   * Runs its hardware executes at once, for learned sizing's prediction of when a run can start:
   * its instances where each has its own cores (the default), 1 where they share one GPU (their
   * runs queue for it).
   */
  readonly devices?: number | undefined
  readonly batching: BatchPolicy.BatchingConfig
  /**
   * Requests of one model share a job only if admitted under one generation (absent: 0). The
   * engine's counts the changes of the model version's inputs or outputs (a reload), so that
   * requests validated against different signatures never share a run.
   */
  readonly generation?: number | undefined
  /**
   * For a model that does not batch: the most requests one job may carry as separate runs
   * (the pool runs them one after another and answers them together), so the hop to the
   * instance is paid once per group, not per request. 1: every request is its own job.
   */
  readonly maxGroup: number
  /**
   * The most of this model version's requests that may wait at once (in the queue, or in a job
   * sent ahead to a busy instance), besides the queue's own bound (`Options.maxQueued`, which all
   * models share); absent: only that one. Triton's per-model `max_queue_size`: a flooded model
   * cannot fill the queue for the others.
   */
  readonly maxQueued?: number | undefined
}

/** The key under which `Scheduler.unbatchable` holds a model version (its signature's generation too: a reload with other inputs or outputs starts afresh). */
export const unbatchableKey = (spec: ModelSpec): string => `${spec.key}#${spec.generation ?? 0}`

/** A model's scheduling state. */
export interface Model {
  spec: ModelSpec
  /** Slots taken: batches forming or dispatched. */
  slots: number
  /** Permits its busy instances hold: `min(slots, instances)`, kept as a count so that a reload that changes `instances` cannot leak one. */
  permitsHeld: number
  /** Batches dispatched and not completed. */
  runs: number
  /** The last run's duration. */
  expectedRunMs: number
  /** Its runs' cost as a function of their rows, learned from every run (for learned sizing). */
  readonly cost: RunCost.RunCost
  /** Its rows arriving per ms (for learned sizing). */
  readonly arrivals: RunCost.ArrivalRate
  /** Rows of its requests waiting in the queue. */
  queuedRows: number
  /** Its requests waiting in the queue. */
  queued: number
  /** Its requests waiting in jobs sent ahead to busy instances. */
  waitingAhead: number
  /** Forming batches by batch key. */
  readonly forming: Map<string, Batch<unknown>>
  /**
   * Dispatched batches in dispatch order. Those running have a `startedAtMs`; the others wait in
   * a busy instance (sent ahead). Without `ModelSpec.reportsStarts`, the first `instances` run.
   */
  readonly inFlight: Array<Batch<unknown>>
}

export interface Request<A> {
  readonly value: A
  readonly model: Model
  readonly priority: Priority.Priority
  /** Rows on the batch axis (1 when the model does not batch). */
  readonly rows: number
  /** Requests with the same key may share a run; undefined runs alone, or in a group. */
  readonly batchKey: string | undefined
  /** Its spec's `generation` when admitted. */
  readonly generation: number
  readonly admittedAtMs: number
  readonly deadlineAtMs: number
  /** When it fails with QueueTimeout if still waiting; Infinity for none. */
  readonly queueDeadlineAtMs: number
  stage: Stage
  entry: PriorityQueue.Entry<Request<A>> | undefined
  timer: DeadlineHeap.Entry<Request<A>> | undefined
  batch: Batch<A> | undefined
}

/**
 * What one dispatch carries: a batch (members of one key, joined into one native run), a group
 * (members of a model that does not batch, each its own native run, sent in one job), or one
 * request alone.
 */
export interface Batch<A> {
  readonly model: Model
  /** Its members' `generation`. */
  readonly generation: number
  readonly key: string | undefined
  /** Members run separately (a group), not joined. */
  readonly grouped: boolean
  readonly members: Array<Request<A>>
  rows: number
  /** The highest priority among the members (see `BatchPolicy.mayJoin`). */
  highest: Priority.Priority
  stage: "forming" | "running"
  /** Unsettled requests it holds while it waits in a busy instance (sent ahead); 0 once it runs. */
  waiting: number
  /**
   * When it started: handed to a free instance, its instance became free (`complete`), or its
   * pool said so (`started`); NaN while it waits there or forms. On instances that share one
   * device it may still queue there for the device: predictions from it then run early, and the
   * next batch is handed over early, not late.
   */
  startedAtMs: number
  /** The mechanism's handle on its run once dispatched (opaque here: the Dispatcher's fiber); undefined before and after. */
  run: unknown
}

export type Step<A> =
  | { readonly _tag: "Dispatch"; readonly batch: Batch<A> }
  | { readonly _tag: "Wait"; readonly untilMs: number }
  | { readonly _tag: "Idle" }

/** Why a request left by `expire`. */
export type Expiry = "queue" | "deadline"

export interface Options {
  readonly maxConcurrent: number
  readonly maxQueued: number
  readonly enablePriority: boolean
  readonly aging?: QueuePolicy.Aging | undefined
}

export interface AdmitInput<A> {
  readonly value: A
  readonly model: ModelSpec
  readonly priority: Priority.Priority
  readonly rows: number
  readonly batchKey: string | undefined
  readonly deadlineAtMs: number
  readonly queueDeadlineAtMs: number
}

const idle: Step<never> = { _tag: "Idle" }

/**
 * The run time one group may hold (ms): a request of higher priority that arrives waits for at most
 * the group running and the one sent ahead, so groups are kept short: a 0.25 ms model gets groups of 4.
 */
export const groupBudgetMs = 1

/** Requests a new group may take: `maxGroup`, and no more runs than fit `groupBudgetMs` at the model's last run time per request. */
export const groupCap = (maxGroup: number, expectedRunMs: number): number =>
  expectedRunMs <= 0 ? maxGroup : Math.max(1, Math.min(maxGroup, Math.floor(groupBudgetMs / expectedRunMs)))

/** Below this share of rows per free slot, splitting a burst over slots buys nothing: a run's fixed cost dominates. */
export const minSplitRows = 8

/**
 * The rows a new batch may take: all it may (`maxBatchSize`), or, when several slots are free and
 * the queue is deep, an even share of the queued rows over them. A closed loop of 64 callers on
 * one instance with two slots then settles into two cohorts of 32 rows, one running while the
 * other crosses to the worker, instead of lockstep 64-row runs with the instance idle between.
 */
export const batchCap = (maxBatchSize: number, queuedRows: number, freeSlots: number): number => {
  if (freeSlots <= 1 || !Number.isFinite(freeSlots)) return maxBatchSize
  const share = Math.ceil(queuedRows / freeSlots)
  return share < minSplitRows ? maxBatchSize : Math.min(maxBatchSize, share)
}

/**
 * Learned sizing hands a forming batch over this share of the predicted run time before an
 * instance frees: a batch a little early waits in the instance (its rows were all it could take
 * anyway), a batch late leaves the instance idle, so the prediction's error is taken early.
 */
export const handOverLead = 0.1

/**
 * The least lead (ms): Node's timers fire on whole milliseconds, a wait of 0.4 ms sleeps 1 ms and
 * one of 1.5 ms can wake after 1.1 ms and sleep 1 more, so a handover timed closer than this
 * reaches the instance after it frees. On the emulated H200 (`bench/gpu.ts`), with a run of 128
 * rows taking 1.9 ms, the second half of 256 outstanding requests then often missed its turn and
 * merged with the first into one run on one process, the device idle meanwhile.
 */
export const minHandOverLeadMs = 1

/** How long before its instance is predicted to free a batch is handed over, for a run predicted to take `runMs`. */
export const handOverLeadMs = (runMs: number): number => Math.max(handOverLead * runMs, minHandOverLeadMs)

export class Scheduler<A> {
  readonly options: Options
  readonly queue: PriorityQueue.PriorityQueue<Request<A>>
  readonly #timers = new DeadlineHeap.DeadlineHeap<Request<A>>()
  readonly #models = new Map<string, Model>()
  /** The models with a batch forming, in the order their batches began to form: `next` looks at these only, not at every model it has seen. */
  readonly #formingModels = new Set<Model>()
  /** The models with requests in the queue: when none of them can go, `next` need not look through the queue. */
  readonly #queuedModels = new Set<Model>()
  #permits = 0
  /** Requests in batches sent ahead to busy instances: they wait, and count against `maxQueued`. */
  #waitingAhead = 0
  /** Requests admitted and not settled. */
  unsettled = 0
  /**
   * Model versions (`unbatchableKey`) seen answering with outputs that are not rows of their
   * inputs (`Batch.rowsMismatch`): their requests are not joined any more (the engine gives them
   * no batch key), whatever their config says.
   */
  readonly unbatchable = new Set<string>()
  /** Requests abandoned (cancelled or timed out) since the start, by the stage they were in. */
  readonly abandoned = { queued: 0, forming: 0, running: 0 }

  constructor(options: Options) {
    this.options = options
    this.queue = PriorityQueue.make(options.maxQueued, options.enablePriority, options.aging)
  }

  /** Native runs that may start now: permits not held by a busy instance. */
  get freePermits(): number {
    return this.options.maxConcurrent - this.#permits
  }

  model(spec: ModelSpec): Model {
    let model = this.#models.get(spec.key)
    if (model === undefined) {
      model = { spec, slots: 0, permitsHeld: 0, runs: 0, expectedRunMs: 0, cost: RunCost.make(), arrivals: new RunCost.ArrivalRate(), queuedRows: 0, queued: 0, waitingAhead: 0, forming: new Map(), inFlight: [] }
      this.#models.set(spec.key, model)
    } else if (model.spec !== spec) {
      // A reloaded model: its new instances and batching apply from now on. Raised instances make
      // jobs sent ahead busy ones: they take their permits at once, past `maxConcurrent` if need
      // be, so that nothing else starts until enough runs have ended.
      model.spec = spec
      const held = Math.min(model.slots, spec.instances)
      if (held > model.permitsHeld) {
        this.#permits += held - model.permitsHeld
        model.permitsHeld = held
      }
    }
    return model
  }

  models(): IterableIterator<Model> {
    return this.#models.values()
  }

  /** Queues a request (or adds it to a forming batch of its kind); undefined when the queue is full. */
  admit(input: AdmitInput<A>, nowMs: number): Request<A> | undefined {
    const model = this.model(input.model)
    if (input.model.batching.sizing === "learned") model.arrivals.observe(input.rows, nowMs)
    const request: Request<A> = {
      value: input.value,
      model,
      priority: input.priority,
      rows: input.rows,
      batchKey: input.batchKey,
      generation: input.model.generation ?? 0,
      admittedAtMs: nowMs,
      deadlineAtMs: input.deadlineAtMs,
      queueDeadlineAtMs: input.queueDeadlineAtMs,
      stage: "queued",
      entry: undefined,
      timer: undefined,
      batch: undefined
    }
    const open = this.#formingFor(request)
    if (open !== undefined) {
      this.#join(open, request)
    } else {
      if (this.isFull() || this.#modelFull(model)) return undefined
      request.entry = this.queue.offer(request, input.priority, nowMs)
      if (request.entry === undefined) return undefined
      this.#queuedMore(model, request.rows)
    }
    this.unsettled++
    const queueFirst = request.queueDeadlineAtMs < request.deadlineAtMs
    request.timer = this.#timers.push(queueFirst ? request.queueDeadlineAtMs : request.deadlineAtMs, request)
    return request
  }

  /** The earliest time `expire` has work. */
  nextTimerMs(): number {
    return this.#timers.peek()?.atMs ?? Infinity
  }

  /**
   * Takes out every request whose time has come: a queue timeout ends a request still waiting
   * (queued or forming), a deadline ends one in any stage. Returns them with the reason.
   */
  expire(nowMs: number): Array<{ readonly request: Request<A>; readonly why: Expiry }> {
    const out: Array<{ readonly request: Request<A>; readonly why: Expiry }> = []
    for (let top = this.#timers.peek(); top !== undefined && top.atMs <= nowMs; top = this.#timers.peek()) {
      this.#timers.pop()
      const request = top.value
      request.timer = undefined
      if (request.stage === "settled") continue
      const isQueueTimeout = top.atMs === request.queueDeadlineAtMs && request.queueDeadlineAtMs < request.deadlineAtMs
      if (isQueueTimeout && request.stage === "running") {
        // Already running: the queue timeout no longer applies; the deadline still does.
        request.timer = this.#timers.push(request.deadlineAtMs, request)
        continue
      }
      this.settle(request, true)
      out.push({ request, why: isQueueTimeout ? "queue" : "deadline" })
    }
    return out
  }

  /** Takes a request out (interruption, a cancel token): queued or forming, it never runs. False if already settled. */
  cancel(request: Request<A>): boolean {
    if (request.stage === "settled") return false
    this.settle(request, true)
    return true
  }

  /**
   * Marks a request answered: out of the queue or its forming batch, its timer gone. A running
   * request stays a member of its batch (its rows are dropped); in a job sent ahead it stops
   * counting as waiting. `abandoned` counts it by stage.
   */
  settle(request: Request<A>, abandoned = false): void {
    const stage = request.stage
    if (stage === "settled") return
    if (stage === "queued") {
      this.queue.remove(request.entry!)
      this.#queuedLess(request.model, request.rows)
    } else if (stage === "forming") {
      const batch = request.batch!
      const i = batch.members.indexOf(request)
      if (i >= 0) batch.members.splice(i, 1)
      batch.rows -= request.rows
      this.#recomputeHighest(batch)
    } else if (request.batch!.waiting > 0) {
      // In a job sent ahead: it no longer waits there, nor counts against `maxQueued`.
      request.batch!.waiting--
      this.#ahead(request.model, -1)
    }
    if (abandoned) this.abandoned[stage]++
    request.stage = "settled"
    request.entry = undefined
    if (request.timer !== undefined) {
      this.#timers.remove(request.timer)
      request.timer = undefined
    }
    this.unsettled--
  }

  /**
   * What to do now. A forming batch that the policy sends goes first; then the first queued
   * request (priority order) whose model has a free slot, with the rows of its kind that fit.
   * A request that the forming batch of its kind cannot take sends that batch at once, and so does
   * a request of higher priority that waits for the slot or permit a forming batch holds.
   * A model whose slots are all taken never holds up another model's requests. A forming batch
   * left empty (its members all left) gives its slot back.
   */
  next(nowMs: number): Step<A> {
    // A loop, not recursion: each turn takes one request out of the queue, and a deep queue
    // joining forming batches must not grow the stack.
    while (true) {
      let waitUntil = Infinity
      for (const model of this.#formingModels) {
        for (const batch of model.forming.values() as IterableIterator<Batch<A>>) {
          if (batch.members.length === 0) {
            this.#dropForming(batch)
            continue
          }
          const decision = this.#decide(batch, nowMs)
          // A wait too short to move the clock (a float remainder: now + ms === now) would be asked again at once, forever.
          if (decision._tag === "Send" || !(nowMs + decision.ms > nowMs)) return this.#launch(batch, nowMs)
          waitUntil = Math.min(waitUntil, nowMs + decision.ms)
        }
      }
      const head = this.queue.peek(nowMs)
      const entry = head === undefined || this.#canGo(head.value) ? head : this.#anyMayGo() ? this.queue.firstWhere(this.#canGo, nowMs) : undefined
      if (entry === undefined) {
        // A higher-priority request waits for a slot or a permit that a forming batch of lower
        // priority holds while it waits for rows: that batch goes now, so the request waits for its
        // run at most, not for its batching delay too.
        const holder = head === undefined ? undefined : this.#lowerFormingHolding(head.value)
        if (holder !== undefined) return this.#launch(holder, nowMs)
        return waitUntil === Infinity ? idle : { _tag: "Wait", untilMs: waitUntil }
      }
      const first = entry.value
      const forming = first.batchKey === undefined ? undefined : first.model.forming.get(first.batchKey) as Batch<A> | undefined
      // The batch of its kind cannot take it (too many rows): that batch goes now, as Triton's
      // dynamic batcher sends a pending batch the next request does not fit, and `first` opens
      // the next one. One forming batch per key, always.
      if (forming !== undefined && !this.#fits(forming, first)) return this.#launch(forming, nowMs)
      this.queue.remove(entry)
      this.#queuedLess(first.model, first.rows)
      first.entry = undefined
      // A batch of its kind is forming and takes it: it joins, and the policy is asked again.
      if (forming !== undefined) {
        this.#join(forming, first)
        continue
      }
      const step = this.#open(first, nowMs)
      if (step !== undefined) return step
    }
  }

  /**
   * The batch's run (and any reruns of its members) ended at `nowMs`: its slot is free. Its
   * members were settled by then.
   */
  complete(batch: Batch<A>, nowMs: number): void {
    const model = batch.model
    model.runs--
    this.#freeSlot(model)
    const inFlight = model.inFlight as Array<Batch<A>>
    const i = inFlight.indexOf(batch)
    if (i >= 0) inFlight.splice(i, 1)
    this.#ahead(model, -batch.waiting)
    batch.waiting = 0
    if (model.spec.reportsStarts === true) return
    // The first `instances` in flight now run: what waited in them no longer does.
    const running = Math.min(inFlight.length, model.spec.instances)
    for (let j = 0; j < running; j++) {
      this.#ahead(model, -inFlight[j]!.waiting)
      inFlight[j]!.waiting = 0
      if (Number.isNaN(inFlight[j]!.startedAtMs)) inFlight[j]!.startedAtMs = nowMs
    }
  }

  /**
   * The pool says `batch`'s job has begun on an instance (a model that `reportsStarts`): its
   * members no longer wait, and it is no longer withdrawn when they leave. A call for a batch
   * already started, or after `complete`, changes nothing (see `resubmitted` for its reruns).
   */
  started(batch: Batch<A>, nowMs: number): void {
    if (!Number.isNaN(batch.startedAtMs) || !batch.model.inFlight.includes(batch as Batch<unknown>)) return
    batch.startedAtMs = nowMs
    this.#ahead(batch.model, -batch.waiting)
    batch.waiting = 0
  }

  /**
   * Another job of `batch` is about to be handed to its pool: its members run again alone, one
   * job each, after its job failed as a whole. Where the pool reports starts, that job may wait in
   * a busy instance like any other: the batch's members still running wait again (they count
   * against `maxQueued`, and the job is withdrawn if they all leave) until `started` says it began.
   */
  resubmitted(batch: Batch<A>): void {
    if (batch.model.spec.reportsStarts !== true || Number.isNaN(batch.startedAtMs) || !batch.model.inFlight.includes(batch as Batch<unknown>)) return
    let waiting = 0
    for (const m of batch.members) if (m.stage === "running") waiting++
    batch.startedAtMs = NaN
    batch.waiting = waiting
    this.#ahead(batch.model, waiting)
  }

  /**
   * How long until a batch of `model` handed over now would find an instance free, from its runs
   * in flight and their predicted run times (`Model.cost`), less the lead (`handOverLeadMs`) of
   * the run that frees it: 0 when an instance is free now, or when nothing is known of the runs yet.
   */
  handOverInMs(model: Model, nowMs: number): number {
    const runners = runnersOf(model.spec)
    if (!(model.inFlight.length >= runners) || model.cost.runs === 0) return 0
    // Those running first: where the pool reports starts, they need not be the oldest.
    const inFlight = model.spec.reportsStarts === true
      ? [...model.inFlight.filter((b) => !Number.isNaN(b.startedAtMs)), ...model.inFlight.filter((b) => Number.isNaN(b.startedAtMs))]
      : model.inFlight
    // Each runner frees when its run ends; the batches sent ahead run one after another.
    const ends: Array<number> = []
    const lasts: Array<number> = []
    for (let i = 0; i < runners; i++) {
      const batch = inFlight[i]!
      const runMs = model.cost.predict(batch.rows)
      ends.push((Number.isNaN(batch.startedAtMs) ? nowMs : batch.startedAtMs) + runMs)
      lasts.push(runMs)
    }
    for (let i = runners; i < inFlight.length; i++) {
      const k = argMin(ends)
      const runMs = model.cost.predict(inFlight[i]!.rows)
      ends[k] = ends[k]! + runMs
      lasts[k] = runMs
    }
    const k = argMin(ends)
    return Math.max(0, ends[k]! - handOverLeadMs(lasts[k]!) - nowMs)
  }

  /**
   * True when `admit` would refuse a request that joins no forming batch: `maxQueued` are waiting,
   * counting `waitingElsewhere` more (requests an edge has accepted and not yet submitted).
   */
  isFull(waitingElsewhere = 0): boolean {
    return this.queue.size + this.#waitingAhead + waitingElsewhere >= this.options.maxQueued
  }

  /**
   * The bound of its own that `key`'s model version has reached (`ModelSpec.maxQueued`), counting
   * `waitingElsewhere` more of its requests (an edge's backlog), or undefined: `admit` would
   * refuse its request that joins no forming batch, though the queue (`isFull`) has room.
   */
  modelFullAt(key: string, waitingElsewhere = 0): number | undefined {
    const model = this.#models.get(key)
    return model !== undefined && this.#modelFull(model, waitingElsewhere) ? model.spec.maxQueued : undefined
  }

  /**
   * True when `batch` was sent ahead to a busy instance, has not started, and none of its members
   * waits for it any more (each cancelled or past its deadline): its run is wanted by nobody.
   */
  isAbandonedAhead(batch: Batch<A>): boolean {
    return batch.stage === "running" && batch.waiting === 0 && Number.isNaN(batch.startedAtMs)
  }

  /**
   * True when nobody waits for `batch`'s run any more (each member cancelled or past its
   * deadline) and the run may be interrupted: it waits in a busy instance (`isAbandonedAhead`), or
   * it has begun on a pool that stops such runs (`ModelSpec.stopsAbandonedRuns`). False once it
   * completed. O(members + runs in flight): for a request that leaves, not for the hot path.
   */
  isAbandoned(batch: Batch<A>): boolean {
    if (batch.stage !== "running" || !batch.model.inFlight.includes(batch as Batch<unknown>)) return false
    if (Number.isNaN(batch.startedAtMs)) return batch.waiting === 0
    if (batch.model.spec.stopsAbandonedRuns !== true) return false
    for (const member of batch.members) if (member.stage !== "settled") return false
    return true
  }

  /** Requests waiting in jobs sent ahead to busy instances. */
  get waitingAhead(): number {
    return this.#waitingAhead
  }

  /** Each request `waitingAhead` counts (O(jobs in flight)). */
  forEachWaitingAhead(f: (request: Request<A>) => void): void {
    if (this.#waitingAhead === 0) return
    for (const model of this.#models.values()) {
      for (const batch of model.inFlight as Array<Batch<A>>) {
        if (batch.waiting === 0) continue
        for (const member of batch.members) if (member.stage === "running") f(member)
      }
    }
  }

  /** Counts for diagnostics. */
  counts(): { readonly queued: number; readonly forming: number; readonly runs: number } {
    let forming = 0
    let runs = 0
    for (const model of this.#models.values()) {
      runs += model.runs
      for (const batch of model.forming.values()) forming += batch.members.length
    }
    return { queued: this.queue.size, forming, runs }
  }

  /** Every request in a job dispatched and not settled (closing the engine answers them). */
  running(): Array<Request<A>> {
    const out: Array<Request<A>> = []
    for (const model of this.#models.values()) {
      for (const batch of model.inFlight as Array<Batch<A>>) for (const m of batch.members) if (m.stage === "running") out.push(m)
    }
    return out
  }

  /** Every request still queued or forming (closing the engine answers them). */
  waiting(): Array<Request<A>> {
    const out = [...this.queue.values()]
    for (const model of this.#models.values()) for (const batch of model.forming.values() as IterableIterator<Batch<A>>) out.push(...batch.members)
    return out
  }

  #slotsOf(model: Model): number {
    return model.spec.instances * model.spec.depth
  }

  /** A new slot is free for the model: under its slots, and a permit free if it would make an instance busy. */
  #canOpen(model: Model): boolean {
    if (model.slots >= this.#slotsOf(model)) return false
    return model.slots >= model.spec.instances || this.#permits < this.options.maxConcurrent
  }

  #takeSlot(model: Model): void {
    if (model.slots < model.spec.instances) {
      model.permitsHeld++
      this.#permits++
    }
    model.slots++
  }

  #freeSlot(model: Model): void {
    model.slots--
    // Give back what the model holds beyond its busy instances (a reload may have changed `instances`).
    const held = Math.min(model.slots, model.spec.instances)
    if (model.permitsHeld > held) {
      this.#permits -= model.permitsHeld - held
      model.permitsHeld = held
    }
  }

  /** Slots the model could still take now, permits considered. */
  #freeSlots(model: Model): number {
    const bySlots = this.#slotsOf(model) - model.slots
    const idleInstances = Math.max(0, model.spec.instances - model.slots)
    const pipelined = bySlots - idleInstances
    return Math.min(idleInstances, Math.max(0, this.freePermits)) + pipelined
  }

  /** `next` may take it now: its model has a slot free, or a batch of its kind is forming (it joins, or sends that batch). */
  readonly #canGo = (request: Request<A>): boolean =>
    this.#canOpen(request.model) || (request.batchKey !== undefined && request.model.forming.has(request.batchKey))

  /**
   * Whether any queued request might go (`#canGo`): one of the queued models has a slot free or a
   * batch forming. When none has, looking through the queue (O(queued), on every pump while the
   * engine is overloaded) finds nothing.
   */
  #anyMayGo(): boolean {
    for (const model of this.#queuedModels) if (model.forming.size > 0 || this.#canOpen(model)) return true
    return false
  }

  /**
   * A forming batch of lower priority than `request` that holds what it lacks: a slot of its
   * model, or a permit when none is free. Undefined when there is none.
   */
  #lowerFormingHolding(request: Request<A>): Batch<A> | undefined {
    const rank = Priority.rank(request.priority)
    const noPermit = this.freePermits <= 0
    for (const model of this.#formingModels) {
      if (model !== request.model && !noPermit) continue
      for (const batch of model.forming.values() as IterableIterator<Batch<A>>) {
        if (batch.members.length > 0 && Priority.rank(batch.highest) > rank) return batch
      }
    }
    return undefined
  }

  #queuedMore(model: Model, rows: number): void {
    if (model.queuedRows === 0) this.#queuedModels.add(model)
    model.queuedRows += rows
    model.queued++
  }

  #queuedLess(model: Model, rows: number): void {
    model.queuedRows -= rows
    model.queued--
    if (model.queuedRows === 0) this.#queuedModels.delete(model)
  }

  /** Requests of `model` now waiting ahead in its jobs: `delta` more (or fewer). */
  #ahead(model: Model, delta: number): void {
    this.#waitingAhead += delta
    model.waitingAhead += delta
  }

  /**
   * True when `model` holds its `maxQueued` waiting requests (queued, or in jobs sent ahead),
   * not counting what the next dispatch runs at once: a job for each idle instance that a free
   * permit lets run, each as large as `#open` makes it (a batch's rows capped as `batchCap` splits
   * the queued rows over the free slots, taken as requests of the queued ones' mean rows; a group
   * capped by `groupCap`; one request for a version that no longer batches). A burst that reaches
   * an idle model is admitted before the pump hands any of it over, and the requests it runs at
   * once do not wait. A job sent ahead to a busy instance still waits, so pipelined slots take
   * nothing here; nor does an idle instance without a permit. An estimate: two idle models may
   * each count the one free permit, a batch filled past a large request may take a few more than
   * the mean says, and requests of a batching model that have no batch key (which run alone) are
   * taken as batched until the version is marked `unbatchable`: each can let a model's waiting pass
   * its bound by up to a batch, never the shared bound.
   */
  #modelFull(model: Model, waitingElsewhere = 0): boolean {
    const max = model.spec.maxQueued
    if (max === undefined) return false
    const runnable = Math.min(Math.max(0, model.spec.instances - model.slots), Math.max(0, this.freePermits))
    const waiting = model.queued + model.waitingAhead + waitingElsewhere
    if (runnable === 0) return waiting >= max
    // The queue as it would be with the request asked about (its rows taken as the mean).
    const freeSlots = this.#freeSlots(model)
    const { batching } = model.spec
    const meanRows = model.queued > 0 ? model.queuedRows / model.queued : 1
    const perJob = !batching.enabled
      ? batchCap(groupCap(model.spec.maxGroup, model.expectedRunMs), model.queued + 1, freeSlots)
      : this.unbatchable.has(unbatchableKey(model.spec))
      ? 1
      : Math.max(1, Math.floor(batchCap(batching.maxBatchSize, model.queuedRows + meanRows, freeSlots) / meanRows))
    return waiting - runnable * perJob >= max
  }

  #formingFor(request: Request<A>): Batch<A> | undefined {
    if (request.batchKey === undefined) return undefined
    const open = request.model.forming.get(request.batchKey) as Batch<A> | undefined
    return open !== undefined && this.#fits(open, request) ? open : undefined
  }

  /**
   * `request` may join `batch`: the same model (`ModelSpec.key`: a batch key says only what the
   * inputs look like, and two models may take alike inputs) and generation, the same key, rows to
   * spare, and a priority the batch takes.
   */
  #fits(batch: Batch<A>, request: Request<A>): boolean {
    return request.model === batch.model && request.generation === batch.generation && request.batchKey === batch.key && batch.rows + request.rows <= batch.model.spec.batching.maxBatchSize &&
      BatchPolicy.mayJoin(batch.highest, request.priority)
  }

  #join(batch: Batch<A>, request: Request<A>): void {
    request.stage = batch.stage === "forming" ? "forming" : "running"
    request.batch = batch
    batch.members.push(request)
    batch.rows += request.rows
    if (Priority.rank(request.priority) < Priority.rank(batch.highest)) batch.highest = request.priority
  }

  #recomputeHighest(batch: Batch<A>): void {
    let highest = 3
    for (const m of batch.members) highest = Math.min(highest, Priority.rank(m.priority))
    batch.highest = Priority.levels[highest]!
  }

  /** Opens a batch for `first` (already out of the queue) on a new slot, gathers rows, and sends it or lets it form. */
  #open(first: Request<A>, nowMs: number): Step<A> | undefined {
    const model = first.model
    const freeSlots = this.#freeSlots(model)
    this.#takeSlot(model)
    const grouped = first.batchKey === undefined && model.spec.maxGroup > 1
    const batch: Batch<A> = {
      model,
      generation: first.generation,
      key: first.batchKey,
      grouped,
      members: [],
      rows: 0,
      highest: first.priority,
      stage: "forming",
      waiting: 0,
      startedAtMs: NaN,
      run: undefined
    }
    this.#join(batch, first)
    if (grouped) {
      this.#gatherGroup(batch, batchCap(groupCap(model.spec.maxGroup, model.expectedRunMs), model.queuedRows + first.rows, freeSlots))
      return this.#launch(batch, nowMs)
    }
    if (first.batchKey === undefined) return this.#launch(batch, nowMs)
    const cap = batchCap(model.spec.batching.maxBatchSize, model.queuedRows + first.rows, freeSlots)
    this.#gather(batch, cap)
    const decision = this.#decide(batch, nowMs)
    if (decision._tag === "Send") return this.#launch(batch, nowMs)
    model.forming.set(first.batchKey, batch as Batch<unknown>)
    this.#formingModels.add(model)
    return undefined
  }

  /** Takes queued requests that can join `batch`, highest priority first, while rows fit under `cap`. */
  #gather(batch: Batch<A>, cap: number): void {
    if (batch.rows >= cap) return
    // Rows and the highest priority are kept up to date during the scan: a Critical request taken
    // early closes the batch to the lower ones after it (`mayJoin`).
    const joined = this.queue.takeWhere((r) => {
      if (batch.rows >= cap || !this.#fits(batch, r) || batch.rows + r.rows > cap) return false
      batch.rows += r.rows
      if (Priority.rank(r.priority) < Priority.rank(batch.highest)) batch.highest = r.priority
      return true
    }, Infinity, () => batch.rows >= cap)
    batch.rows -= joined.reduce((n, r) => n + r.rows, 0)
    for (const r of joined) {
      r.entry = undefined
      this.#queuedLess(r.model, r.rows)
      this.#join(batch, r)
    }
  }

  /** Takes queued requests of the group's model and generation (that do not batch) into it, highest priority first, up to `cap`. */
  #gatherGroup(batch: Batch<A>, cap: number): void {
    if (batch.members.length >= cap) return
    let count = batch.members.length
    const joined = this.queue.takeWhere((r) => {
      if (count >= cap || r.model !== batch.model || r.generation !== batch.generation || r.batchKey !== undefined || !BatchPolicy.mayJoin(batch.highest, r.priority)) return false
      count++
      if (Priority.rank(r.priority) < Priority.rank(batch.highest)) batch.highest = r.priority
      return true
    }, Infinity, () => count >= cap)
    for (const r of joined) {
      r.entry = undefined
      this.#queuedLess(r.model, r.rows)
      this.#join(batch, r)
    }
  }

  #decide(batch: Batch<A>, nowMs: number): BatchPolicy.Decision {
    let oldest = Infinity
    let earliestDeadline = Infinity
    for (const m of batch.members) {
      if (m.admittedAtMs < oldest) oldest = m.admittedAtMs
      if (m.deadlineAtMs < earliestDeadline) earliestDeadline = m.deadlineAtMs
    }
    const model = batch.model
    const batching = model.spec.batching
    const learned = batching.sizing === "learned"
    return BatchPolicy.decide(batching, {
      rows: batch.rows,
      oldestWaitMs: nowMs - oldest,
      earliestDeadlineInMs: earliestDeadline - nowMs,
      highestPriority: batch.highest,
      runsInFlight: model.runs,
      expectedRunMs: model.expectedRunMs,
      predictedRunMs: learned ? model.cost.predict(batch.rows) : undefined,
      handOverInMs: learned ? this.handOverInMs(model, nowMs) : undefined,
      targetRows: learned ? RunCost.targetRows(model.cost, model.arrivals.rowsPerMs(nowMs), runnersOf(model.spec), batching.maxBatchSize) : undefined
    })
  }

  #launch(batch: Batch<A>, nowMs: number): Step<A> {
    if (batch.key !== undefined && batch.model.forming.get(batch.key) === batch) {
      // Rows that arrived while it formed and still fit ride along.
      batch.model.forming.delete(batch.key)
      if (batch.model.forming.size === 0) this.#formingModels.delete(batch.model)
      this.#gather(batch, batch.model.spec.batching.maxBatchSize)
    }
    batch.stage = "running"
    for (const m of batch.members) m.stage = "running"
    batch.model.runs++
    const inFlight = batch.model.inFlight as Array<Batch<A>>
    // A pool that reports starts says so at once when an instance is free (`started`, called as
    // the batch's run is handed over); until then the batch waits.
    if (batch.model.spec.reportsStarts === true || inFlight.length >= batch.model.spec.instances) {
      batch.waiting = batch.members.length
      this.#ahead(batch.model, batch.waiting)
    } else {
      batch.startedAtMs = nowMs
    }
    inFlight.push(batch)
    return { _tag: "Dispatch", batch }
  }

  #dropForming(batch: Batch<A>): void {
    batch.model.forming.delete(batch.key!)
    if (batch.model.forming.size === 0) this.#formingModels.delete(batch.model)
    this.#freeSlot(batch.model)
  }
}

/** Runs of the model that execute at once: its instances, or fewer where they share devices. */
const runnersOf = (spec: ModelSpec): number => Math.min(spec.instances, spec.devices ?? Infinity)

const argMin = (xs: ReadonlyArray<number>): number => {
  let k = 0
  for (let i = 1; i < xs.length; i++) if (xs[i]! < xs[k]!) k = i
  return k
}

export const make = <A>(options: Options): Scheduler<A> => new Scheduler<A>(options)
