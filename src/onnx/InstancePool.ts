/**
 * The instances of one model version: N session instances, each holding one onnxruntime
 * session (`SessionEndpoint`), behind one FIFO of waiting jobs. Where an instance runs is the
 * `Transport`'s business: a worker thread (`WorkerHost`) or a child process (`ProcessHost`).
 * Time comes from the Clock and respawn backoff from a `Schedule`, so a fake Transport under
 * `TestClock` drives every path here without a model.
 *
 * - An instance runs one job at a time. With `depth` 2 (threads) it is handed its next job while
 *   the current one runs, so it never idles while a job crosses the thread boundary. This is the
 *   one place that picks the instance for a job: an idle one first, then one with room. (The
 *   engine decides whether a job may go at all; it never sees instances.)
 * - `run` waits in FIFO order for an instance with room. Interrupting it: a queued job is
 *   dropped unsent, at once; a running job's interruption returns at once, its instance stays
 *   busy until it replies, and that reply is discarded (counted in `lateRepliesDropped`), except
 *   with process isolation, where the run is stopped (below) and the interruption returns once it
 *   is over; a job
 *   sent ahead and not begun is skipped by the instance at its turn (`cancel`), and its
 *   interruption returns only then (or once it has run, when the cancel came too late): until
 *   the instance lets go of it, it holds that instance's room. No instance ever runs two jobs at once.
 * - An instance that dies (uncaught error, `process.exit`, and for a process a native crash or a
 *   signal) fails only the job it was running with RunFailed; a job sent ahead to it goes back to
 *   the front of the line, unless its inputs were moved to it (`RunOptions.transfer`): they died
 *   with it, so that job fails too, with a RunFailed saying its inputs were lost with the
 *   instance (the engine runs a joined batch's members again alone, from their own inputs).
 *   It is replaced (attempts with exponential backoff), so the instance count is kept. If replacements keep failing and no instance is left, the pool becomes
 *   unavailable and its waiting jobs fail with ModelUnavailable; the lost instance is then tried
 *   again every `respawnRetryInterval` (30 s), and the pool serves again once one loads.
 * - A replacement runs the model its siblings run: none is started once model.onnx's identity
 *   (`Options.identify`) differs from the one read at start, and one whose session reports
 *   another signature or provider than the first instance is closed before it takes a job. Such
 *   a refusal is not retried: the instance is lost (`respawnFailures`, a logged warning) and the
 *   pool serves on the others, or is unavailable with the reason when none is left.
 * - Deadlines (process isolation only): a job run with a `timeout` that is still running
 *   `killGrace` after it is killed with its process (SIGKILL); the job fails at once with
 *   RunFailed ("killed after exceeding its deadline by …"), and a replacement is started once the
 *   process is gone. A job whose deadline passed while it waited is failed without being sent.
 *   Likewise a run whose caller was interrupted (every caller of a batch has left: the engine
 *   interrupts it only then) is killed `killGrace` after the interruption unless it ends first
 *   (`abandonKills`); the interruption returns when the run has ended or its process was killed,
 *   so a caller holding a permit for the run holds it until then.
 *   Threads cannot be stopped mid-run (terminating one aborts the whole process), so a thread
 *   pool ignores `timeout`. A hang without a timeout is never detected.
 * - `close` fails queued jobs with ModelUnavailable (`closeInto`, for a reload, moves them to the
 *   new pool instead), lets the jobs already sent finish and reply,
 *   then asks each instance to release its session and exit. The transport's `kill` (a thread's
 *   `terminate()`, a process's SIGKILL) is a last resort after `closeTimeout`, except for an
 *   instance still running a job whose kill would abort the whole process (a thread inside a
 *   native run: `Transport.killMidRunAbortsProcess`): that one is left to finish its run, then
 *   to release its session and exit, and `close` returns without it (`workersLeftRunning`).
 *
 * Input tensors are copied to the instance (`Tensor.compact` first, so a view into a large
 * buffer does not clone all of it), or moved when `RunOptions.transfer` says the pool may keep
 * them; output arrays are owned by the caller.
 *
 * @module InstancePool
 */
import { Clock, Data, Deferred, Duration, Effect, Exit, Fiber, Schedule, type Scope } from "effect"
import * as InferenceError from "../InferenceError.ts"
import * as ModelMetadata from "../ModelMetadata.ts"
import type { RunOutput } from "../ModelPool.ts"
import * as Tensor from "../Tensor.ts"
import type * as Protocol from "./Protocol.ts"

export type Isolation = Protocol.Isolation

/**
 * Lifetime counters, shared by the pools of one `OnnxModelPool`. After every pool has closed
 * (and every instance left running at a close has ended its run),
 * `workersSpawned === workersExited` and `sessionsOpened === sessionsClosed + sessionsLost`.
 * A "worker" is an instance of either kind, thread or process.
 */
export interface Counters {
  /** Instances started (initial ones and replacements). */
  workersSpawned: number
  /** Instances that ended, for any reason. */
  workersExited: number
  /** Sessions that loaded (an instance reported ready). */
  sessionsOpened: number
  /** Sessions released by a graceful close. */
  sessionsClosed: number
  /** Sessions whose instance died without releasing them (the thread's or process's teardown frees them). */
  sessionsLost: number
  /** Unexpected instance exits (deadline kills are counted apart). */
  crashes: number
  /** Processes killed because their run outlived its deadline by the kill grace. */
  deadlineKills: number
  /** Processes killed because their run outlived its interrupted caller by the kill grace. */
  abandonKills: number
  /** Jobs failed unsent because their deadline passed while they waited for an instance. */
  expiredUnsent: number
  /** Replacement instances that loaded. */
  respawns: number
  /** Lost instances whose quick replacement attempts all failed (tried again every 30 s after, unless refused: another model on disk). */
  respawnFailures: number
  /** Replies from instances that reached the pool. */
  replies: number
  /** Replies whose caller had been interrupted; dropped. */
  lateRepliesDropped: number
  /** Callers interrupted while their job ran (or was sent ahead). */
  interruptedRunning: number
  /** Callers interrupted while their job waited (it was never sent). */
  interruptedQueued: number
  /** Instances stopped with the transport's `kill` after the close timeout. */
  forcedTerminations: number
  /**
   * Instances still inside a run at the close timeout that the pool did not kill, because the kill
   * would have aborted the whole process (`Transport.killMidRunAbortsProcess`): each finishes its
   * run, then releases its session and exits, after its pool's `close` has returned.
   */
  workersLeftRunning: number
}

export const makeCounters = (): Counters => ({
  workersSpawned: 0,
  workersExited: 0,
  sessionsOpened: 0,
  sessionsClosed: 0,
  sessionsLost: 0,
  crashes: 0,
  deadlineKills: 0,
  abandonKills: 0,
  expiredUnsent: 0,
  respawns: 0,
  respawnFailures: 0,
  replies: 0,
  lateRepliesDropped: 0,
  interruptedRunning: 0,
  interruptedQueued: 0,
  forcedTerminations: 0,
  workersLeftRunning: 0
})

export interface Options {
  readonly modelId: string
  readonly version: string
  /** Absolute path of model.onnx. */
  readonly path: string
  readonly instances: number
  readonly executionProviders: ReadonlyArray<Protocol.ExecutionProvider>
  readonly intraOpNumThreads: number
  readonly interOpNumThreads: number
  /** How long `close` waits for an instance before the transport's `kill`. */
  readonly closeTimeout: Duration.Duration
  readonly counters: Counters
  /** Replacement attempts per lost instance (default 5), with delays doubling from `respawnDelay` (default 100 ms). */
  readonly respawnAttempts?: number | undefined
  readonly respawnDelay?: Duration.Duration | undefined
  /** Once a lost instance's attempts are spent: how often it is tried again, while the pool is open (default 30 seconds). */
  readonly respawnRetryInterval?: Duration.Duration | undefined
  /** Process isolation: how long a run may outlive its `timeout`, or its interrupted caller, before its process is killed (default 1 second). */
  readonly killGrace?: Duration.Duration | undefined
  /**
   * How long an instance may take to load its session (default 10 minutes): one still loading
   * then counts as a start that failed (the pool's start fails; a replacement's attempt is
   * retried), and is killed, a process at once; a thread, which cannot be stopped in native code,
   * is closed once it loads. A session whose load hangs (a GPU driver that never answers) would
   * otherwise hold the start, or leave a lost instance unreplaced, for ever.
   */
  readonly loadTimeout?: Duration.Duration | undefined
  /** Jobs handed to one instance at once (default: 2 for threads, 1 for processes, whose deadline kills end the job in hand). */
  readonly depth?: number | undefined
  /**
   * The model file's identity now (`ModelRepository.fileIdentity`: device, inode, size, mtime).
   * Read when the pool starts; a replacement instance is started only while it is unchanged
   * (see the module doc). Without it, only a replacement's signature and provider are compared.
   */
  readonly identify?: (() => string) | undefined
  /**
   * config.json's warm-up samples (`Warmup`): each instance, replacements included, runs them
   * after its session loads and before it takes a job; one whose warm-up fails counts as a failed
   * start (with the reason). The load timeout covers the warm-up too.
   */
  readonly warmup?: Protocol.WorkerConfig["warmup"]
}

/** Per-run options. */
export interface RunOptions {
  /**
   * How long the caller waits for this run, from the call to `run` (a wait for an instance
   * included). Process isolation kills a run still going `killGrace` after it; threads ignore it.
   */
  readonly timeout?: Duration.Duration | undefined
  /**
   * The inputs' buffers are the pool's to give away (a batch the engine joined): a thread
   * receives them moved, not copied, and they are detached here. Default false: copied. Such a
   * job sent ahead to an instance that then dies cannot be sent again: it fails (see the module doc).
   */
  readonly transfer?: boolean | undefined
  /**
   * Called once, synchronously, when the job reaches the head of an instance (nothing runs before
   * it there): at once when an idle instance takes it, or when the job ahead of it replies. Not
   * called for a job cancelled before then, or answered unsent.
   */
  readonly onStart?: (() => void) | undefined
}

/** What a run returns: `RunOutput` plus the native run's own duration, measured in the instance. */
export interface RunResult extends RunOutput {
  /** Time inside `session.run`, without the hop and the copies. */
  readonly runMs: number
}

/** A snapshot of a pool's instances. */
export interface Stats {
  /** The configured instance count. */
  readonly instances: number
  /** Instances whose session is loaded and that have not exited. */
  readonly live: number
  readonly idle: number
  readonly busy: number
  /** Jobs waiting for an instance. */
  readonly queued: number
  /** Instances started and not yet ready (replacements). */
  readonly starting: number
}

export interface InstancePool {
  readonly modelId: string
  readonly version: string
  readonly isolation: Isolation
  /** Jobs handed to one instance at once. */
  readonly depth: number
  readonly metadata: ModelMetadata.ModelMetadata
  /** The provider the first instance loaded on. */
  readonly deviceUsed: string
  /** Requested providers that could not load before `deviceUsed` did. */
  readonly fallbacks: ReadonlyArray<Protocol.Fallback>
  /** How long the first instance's warm-up runs took (0 without `Options.warmup`). */
  readonly warmupMs: number
  /**
   * Runs each of `inputs` as its own native run, one after another on one instance, in one job
   * (see `ModelPool.runGroup`): each element of the result is that run's outcome.
   */
  readonly runGroup: (
    inputs: ReadonlyArray<Tensor.TensorMap>,
    requestId: string,
    options?: RunOptions
  ) => Effect.Effect<ReadonlyArray<Exit.Exit<RunResult, InferenceError.RunFailed>>, InferenceError.RunFailed | InferenceError.ModelUnavailable>
  /** Runs `inputs` on an instance with room (FIFO wait). See the module doc for interruption and deadlines. */
  readonly run: (
    inputs: Tensor.TensorMap,
    requestId: string,
    options?: RunOptions
  ) => Effect.Effect<RunResult, InferenceError.RunFailed | InferenceError.ModelUnavailable>
  /** Undefined while the pool can serve; why not otherwise (closing, every instance lost). */
  readonly unavailableReason: () => string | undefined
  readonly stats: () => Stats
  /** The OS process ids of the instances not yet exited (processes only; empty for threads). */
  readonly pids: () => ReadonlyArray<number>
  /** Stops every instance gracefully (see the module doc); idempotent. */
  readonly close: Effect.Effect<void>
  /**
   * `close`, for a pool that `next` replaces (a reload): its waiting jobs, never sent, move to
   * `next`, ahead of what waits there, when `next` takes the same inputs and gives the same outputs in the same isolation;
   * otherwise, or without `next`, they fail with ModelUnavailable `reason` (retryable). Jobs
   * already sent finish here. Idempotent with `close`: the first call decides.
   */
  readonly closeInto: (next: InstancePool | undefined, reason: string) => Effect.Effect<void>
}

/** The model could not be loaded: no instance reported ready. */
export class LoadFailed extends Data.TaggedError("LoadFailed")<{ readonly modelId: string; readonly version: string; readonly reason: string }> {
  override get message(): string {
    return `model ${JSON.stringify(this.modelId)} version ${this.version} failed to load: ${this.reason}`
  }
}

// ---------------------------------------------------------------------------
// Transports
// ---------------------------------------------------------------------------

/** What a transport reports about one instance. Every callback may fire more than once; `exit` counts once. */
export interface InstanceEvents {
  readonly message: (message: Protocol.FromWorker) => void
  /** An error the instance reported (uncaught exception, spawn or channel failure); kept for the exit's description. */
  readonly error: (text: string) => void
  /** A reply that could not be deserialized. */
  readonly messageError: (text: string) => void
  /** It has ended; `how` says how ("exit code 3", "signal SIGSEGV"). */
  readonly exit: (how: string) => void
}

/** One running instance as the pool drives it. */
export interface Instance {
  /** Sends a message, moving `transfer`'s buffers where the transport can; throws when it cannot be sent. */
  readonly send: (message: Protocol.ToWorker, transfer?: ReadonlyArray<ArrayBuffer>) => void
  /** Stops it at once; `exit` follows. */
  readonly kill: () => void
  /** Its OS process id (processes only). */
  readonly pid: number | undefined
}

/** How instances are started: threads, processes, or (in tests) a fake. */
export interface Transport {
  readonly isolation: Isolation
  /** The instance in messages: "worker", "session process". */
  readonly noun: string
  /** The module named in spans ("WorkerHost", "ProcessHost"). */
  readonly spanPrefix: string
  readonly spawn: (config: Protocol.WorkerConfig, events: InstanceEvents) => Instance
  /**
   * True when `kill` of an instance inside a native run would abort this whole process (a worker
   * thread's `terminate()`): at the close timeout such an instance is left to finish its run
   * instead. Default false (a process's SIGKILL ends that process alone).
   */
  readonly killMidRunAbortsProcess?: boolean | undefined
}

export const errorText = (e: unknown): string => (e instanceof Error ? `${e.name}: ${e.message}` : String(e))

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

type Outcome = Exit.Exit<unknown, InferenceError.RunFailed | InferenceError.ModelUnavailable>
type Ready = Extract<Protocol.FromWorker, { readonly _tag: "ready" }>
type Reply = Extract<Protocol.FromWorker, { readonly _tag: "done" | "failed" | "doneGroup" }>

interface Job {
  readonly requestId: string
  /** The message that carries it as job `id`; `ahead` when it goes to an instance with a job in hand. */
  readonly message: (id: number, ahead: boolean) => Protocol.ToWorker
  readonly transfer: ReadonlyArray<ArrayBuffer> | undefined
  readonly resume: (outcome: Outcome) => void
  /** Its outcome from the instance's reply. */
  readonly decode: (reply: Reply) => Outcome
  /** Clock deadlines; undefined without a timeout or on threads. */
  readonly deadlineAtMs: number | undefined
  readonly killAtMs: number | undefined
  /** When its caller was interrupted while it ran (processes only): it is killed `killGrace` after. */
  abandonedAtMs: number | undefined
  readonly onStart: (() => void) | undefined
  state: "new" | "queued" | "running" | "done"
  /** Completed when it is done, for an interruption that waits for that (`cancel` of a job sent ahead). */
  letGo: Deferred.Deferred<void> | undefined
  cancelled: boolean
  /** Its id once sent, and the instance it was sent to. */
  sent: { readonly id: number; readonly slot: Slot } | undefined
  /** The pool that holds it: the one it was submitted to, or the successor it moved to (`closeInto`). */
  owner: State
}

interface Slot {
  readonly instance: Instance
  ready: boolean
  exited: boolean
  /** Its start was given up before its session loaded (the load timeout, or the start interrupted): closed if it ever loads. */
  abandoned: boolean
  closeRequested: boolean
  sessionReleased: boolean
  /** Jobs sent and not yet replied to, in order: the first is running, the others wait their turn in the instance. */
  readonly jobs: Array<{ readonly id: number; readonly job: Job }>
  /** When its running job reached the head, as a count of such moments in the pool: the lowest began first. */
  headSeq: number
  /** Armed while a job with a deadline runs (processes only). */
  killTimer: Fiber.Fiber<void> | undefined
  /** Set when the pool killed the instance for a deadline: the failure of the job it ran. */
  killedFor: string | undefined
  lastError: string
  loadError: string | undefined
  readonly exit: Deferred.Deferred<void>
}

interface State {
  readonly options: Options
  readonly transport: Transport
  readonly config: Protocol.WorkerConfig
  readonly counters: Counters
  readonly depth: number
  readonly killGraceMs: number
  readonly nowMs: () => number
  readonly runFork: <A>(effect: Effect.Effect<A>) => Fiber.Fiber<A>
  /** Every instance not yet exited, ready or not. */
  readonly all: Set<Slot>
  /** Ready, not exited, not asked to close. */
  readonly live: Set<Slot>
  /** FIFO of waiting jobs; `head` avoids O(n) shifts, cancelled jobs are skipped. */
  readonly waiting: Array<Job>
  head: number
  queued: number
  nextId: number
  /** Counts jobs reaching the head of an instance (`Slot.headSeq`). */
  heads: number
  closing: boolean
  closed: Deferred.Deferred<void> | undefined
  /** Where `closeInto` sends the jobs that have not run (undefined: a plain close fails them). */
  handOver: HandOver | undefined
  broken: string | undefined
  /** Replacements under way (counted from the loss until they load or their quick attempts are spent). */
  readonly respawns: Set<Fiber.Fiber<void>>
  pendingRespawns: number
  first: Ready | undefined
  /** `options.identify()` when the pool started. */
  identity: string | undefined
}

/** A replacement that must not serve beside the instances that loaded first (`mismatch`): not retried. */
class Refused {
  readonly reason: string
  constructor(reason: string) {
    this.reason = reason
  }
}

/**
 * Why a replacement instance must not serve beside the ones that loaded first, or undefined:
 * model.onnx changed on disk since the pool started, or (once it is `ready`) its session reports
 * another signature or another provider than the first instance's.
 */
const mismatch = (state: State, ready: Ready | undefined): string | undefined => {
  const { identify } = state.options
  if (identify !== undefined && identify() !== state.identity) {
    return `model.onnx changed on disk since this version loaded: a replacement would run another model than the instances serving, ` +
      `so none is started; load the model again (or restart) to serve the new file`
  }
  const first = state.first
  if (ready === undefined || first === undefined) return undefined
  if (ready.deviceUsed !== first.deviceUsed) return `the replacement's session runs on ${ready.deviceUsed}, the other instances' on ${first.deviceUsed}`
  if (!ModelMetadata.sameSignature(ready, first)) {
    return `the replacement's session has another signature than the other instances' (model.onnx changed on disk?); load the model again to serve the new file`
  }
  return undefined
}

const ms = (x: number) => `${Math.round(x)} ms`

const unavailable = (state: State, reason: string) => new InferenceError.ModelUnavailable({ modelId: state.options.modelId, reason })
const runFailed = (state: State, job: Job, detail: string) => new InferenceError.RunFailed({ modelId: state.options.modelId, requestId: job.requestId, detail })

// ---------------------------------------------------------------------------
// Jobs and instances
// ---------------------------------------------------------------------------

/** `job`, sent, is answered or dropped: nothing of it is left in an instance. */
const finish = (job: Job): void => {
  job.state = "done"
  if (job.letGo !== undefined) Deferred.doneUnsafe(job.letGo, Exit.void)
}

const nextJob = (state: State): Job | undefined => {
  const { waiting } = state
  while (state.head < waiting.length) {
    const job = waiting[state.head]!
    waiting[state.head++] = undefined as unknown as Job // let the job be collected
    if (state.head > 1024 && state.head * 2 > waiting.length) {
      waiting.splice(0, state.head)
      state.head = 0
    }
    if (job.state === "queued") {
      state.queued--
      return job
    }
  }
  if (state.head > 0) {
    waiting.length = 0
    state.head = 0
  }
  return undefined
}

/**
 * The live instance with the fewest jobs, if it has room: an idle one first; among busy ones, the
 * one whose run began first (likely the first to end: a job sent ahead waits for it). The one
 * place that picks an instance.
 */
const roomy = (state: State): Slot | undefined => {
  let best: Slot | undefined
  for (const slot of state.live) {
    if (slot.jobs.length >= state.depth || slot.closeRequested) continue
    if (slot.jobs.length === 0) return slot
    if (best === undefined || slot.jobs.length < best.jobs.length || (slot.jobs.length === best.jobs.length && slot.headSeq < best.headSeq)) best = slot
  }
  return best
}

/** When `job`, running, is to be killed: its deadline or its caller's interruption, plus the grace; whichever comes first. */
const killAtMsOf = (state: State, job: Job): number =>
  Math.min(job.killAtMs ?? Infinity, job.abandonedAtMs === undefined ? Infinity : job.abandonedAtMs + state.killGraceMs)

/** Kills `slot`'s process if it is still running job `id` (its deadline or its caller's interruption, plus the grace, has passed). */
const killOverrun = (state: State, slot: Slot, id: number): void => {
  slot.killTimer = undefined
  const current = slot.jobs[0]
  if (current === undefined || current.id !== id || slot.exited) return
  const job = current.job
  const now = state.nowMs()
  const grace = `kill grace ${ms(state.killGraceMs)}`
  // The cause whose kill time came first (as `arm` chose it), not one read from the clock now: a
  // timer may fire a fraction of a millisecond before the time it was set for.
  const abandonKillAtMs = job.abandonedAtMs === undefined ? Infinity : job.abandonedAtMs + state.killGraceMs
  if (job.killAtMs !== undefined && job.killAtMs <= abandonKillAtMs) {
    // At least 0: the timer may fire a fraction early ("by -1 ms" read as nonsense).
    slot.killedFor = `killed after exceeding its deadline by ${ms(Math.max(0, now - job.deadlineAtMs!))} (${grace}); the ${state.transport.noun} was replaced`
    state.counters.deadlineKills++
  } else {
    slot.killedFor = `killed ${ms(Math.max(0, now - job.abandonedAtMs!))} after its caller left (${grace}); the ${state.transport.noun} was replaced`
    state.counters.abandonKills++
  }
  slot.instance.kill()
  // SIGKILL cannot be caught or delayed: the run is over now. The job is answered at once; the
  // instance stays busy (and is replaced) once the process is gone, some milliseconds later.
  finish(job)
  if (job.cancelled) state.counters.lateRepliesDropped++
  else job.resume(Exit.fail(runFailed(state, job, slot.killedFor)))
}

/** Arms the kill of the job now running on `slot`, if it has a deadline or an interrupted caller (processes only). */
const arm = (state: State, slot: Slot): void => {
  const head = slot.jobs[0]
  if (head === undefined) return
  const killAtMs = killAtMsOf(state, head.job)
  if (killAtMs === Infinity) return
  const delayMs = Math.max(0, killAtMs - state.nowMs())
  slot.killTimer = state.runFork(Effect.andThen(Effect.sleep(Duration.millis(delayMs)), Effect.sync(() => killOverrun(state, slot, head.id))))
}

const disarm = (slot: Slot): void => {
  if (slot.killTimer === undefined) return
  slot.killTimer.interruptUnsafe()
  slot.killTimer = undefined
}

/** `slot`'s first job is now the one it runs: it starts its kill timer, and its caller hears of the start. */
const headStarted = (state: State, slot: Slot): void => {
  const head = slot.jobs[0]
  if (head === undefined) return
  slot.headSeq = state.heads++
  // A job whose cancel reached the instance too late runs for nobody: a process stops it as an interrupted run.
  if (head.job.cancelled && state.transport.isolation === "process") head.job.abandonedAtMs ??= state.nowMs()
  arm(state, slot)
  if (!head.job.cancelled) head.job.onStart?.()
}

/** Sends `job` to `slot`; false (job failed, or slot unusable) when it cannot or should not be sent. */
const dispatch = (state: State, slot: Slot, job: Job): boolean => {
  if (job.deadlineAtMs !== undefined) {
    const lateMs = state.nowMs() - job.deadlineAtMs
    if (lateMs >= 0) {
      job.state = "done"
      state.counters.expiredUnsent++
      job.resume(Exit.fail(runFailed(state, job, `not run: its deadline passed ${ms(lateMs)} ago while it waited for an instance`)))
      return false
    }
  }
  const id = state.nextId++
  job.state = "running"
  job.sent = { id, slot }
  const ahead = slot.jobs.length > 0
  slot.jobs.push({ id, job })
  try {
    slot.instance.send(job.message(id, ahead), job.transfer)
  } catch (e) {
    slot.jobs.pop()
    job.state = "done"
    job.resume(Exit.fail(runFailed(state, job, `the inputs could not be sent to the ${state.transport.noun}: ${errorText(e)}`)))
    return false
  }
  if (slot.jobs.length === 1) headStarted(state, slot)
  return true
}

const requestClose = (slot: Slot): void => {
  if (slot.closeRequested || slot.exited) return
  slot.closeRequested = true
  try {
    slot.instance.send({ _tag: "close" })
  } catch {
    // the instance is already gone; its exit event follows
  }
}

/** `slot` has room: give it waiting jobs while it has room (or, closing, ask it to close once empty). */
const release = (state: State, slot: Slot): void => {
  if (slot.exited) return
  if (state.closing) {
    if (slot.jobs.length === 0) requestClose(slot)
    return
  }
  while (slot.jobs.length < state.depth) {
    const job = nextJob(state)
    if (job === undefined) return
    dispatch(state, slot, job)
  }
}

const enqueue = (state: State, job: Job, front = false): void => {
  for (let slot = roomy(state); slot !== undefined; slot = roomy(state)) {
    if (dispatch(state, slot, job) || job.state === "done") return
  }
  job.state = "queued"
  state.queued++
  if (!front) state.waiting.push(job)
  else if (state.head > 0) state.waiting[--state.head] = job
  else state.waiting.unshift(job)
}

/**
 * The caller of `job` was interrupted. Queued, it is dropped. Sent ahead and not begun, the
 * instance is told to skip it, and the interruption waits until the instance has let go of it
 * (skipped at its turn, or run when the cancel came too late), so that a caller counting the
 * instance's jobs never counts it gone while it can still run. Running on a thread, it returns
 * at once; running in a process, the process is killed `killGrace` from now unless the run ends
 * first, and the interruption returns once the run is over either way.
 */
const cancel = (state: State, job: Job): Effect.Effect<void> => {
  job.cancelled = true
  if (job.state === "queued") {
    job.state = "done"
    state.queued--
    state.counters.interruptedQueued++
  } else if (job.state === "running") {
    state.counters.interruptedRunning++
    const sent = job.sent!
    if (sent.slot.jobs[0]?.id !== sent.id) {
      try {
        sent.slot.instance.send({ _tag: "cancel", id: sent.id })
      } catch {
        // the instance is gone; its exit fails the job
      }
      job.letGo = Deferred.makeUnsafe<void>()
      return Deferred.await(job.letGo)
    }
    if (state.transport.isolation === "process" && !sent.slot.exited) {
      job.abandonedAtMs = state.nowMs()
      disarm(sent.slot)
      arm(state, sent.slot)
      job.letGo = Deferred.makeUnsafe<void>()
      return Deferred.await(job.letGo)
    }
  }
  return Effect.void
}


const failWaiting = (state: State, reason: string): void => {
  for (let job = nextJob(state); job !== undefined; job = nextJob(state)) {
    job.state = "done"
    job.resume(Exit.fail(unavailable(state, reason)))
  }
}

const checkBroken = (state: State, reason: string): void => {
  if (state.closing || state.live.size > 0 || state.pendingRespawns > 0) return
  state.broken = `every instance was lost and could not be replaced: ${reason}`
  failWaiting(state, state.broken)
}

const onReply = (state: State, slot: Slot, message: Reply): void => {
  const current = slot.jobs[0]
  if (current === undefined || current.id !== message.id || slot.killedFor !== undefined) return
  disarm(slot)
  slot.jobs.shift()
  headStarted(state, slot)
  const job = current.job
  finish(job)
  state.counters.replies++
  release(state, slot)
  if (job.cancelled) {
    state.counters.lateRepliesDropped++
    return
  }
  job.resume(message._tag === "failed" ? Exit.fail(runFailed(state, job, message.error)) : job.decode(message))
}

/** True when `job`'s inputs were moved to the instance (`RunOptions.transfer`): they cannot be sent again. */
const inputsMoved = (job: Job): boolean => {
  if (job.transfer === undefined) return false
  for (const buffer of job.transfer) if ((buffer as { readonly detached?: boolean }).detached === true) return true
  return false
}

/**
 * The instance ended after it had loaded: its running job fails, jobs sent ahead go back to the
 * line (or fail, when their inputs were moved to it and went with it), and it is replaced.
 */
const onLost = (state: State, slot: Slot, how: string): void => {
  const { counters, transport } = state
  if (!slot.sessionReleased) counters.sessionsLost++
  const lost = slot.jobs.splice(0)
  const detail = slot.killedFor ?? `the ${transport.noun} running the model died (${how}${slot.lastError ? `; ${slot.lastError}` : ""})`
  for (const [i, { job }] of lost.entries()) {
    if (job.state === "done") continue
    if (i > 0 && !job.cancelled && !state.closing && !inputsMoved(job)) {
      job.state = "new"
      job.sent = undefined
      enqueue(state, job, true)
      continue
    }
    finish(job)
    if (job.cancelled) counters.lateRepliesDropped++
    else {
      job.resume(Exit.fail(runFailed(
        state,
        job,
        i === 0
          ? detail
          : inputsMoved(job)
          ? `not run: its inputs were moved (transferred) to the ${transport.noun} ahead of their turn and were lost when it died (${how}) running an earlier job`
          : `the ${transport.noun} ended before the job ran (${how})`
      )))
    }
  }
  if (state.closing || slot.closeRequested) return
  if (slot.killedFor === undefined) counters.crashes++
  respawn(state, detail, slot.killedFor === undefined)
}

/**
 * Starts one instance; succeeds once its session is loaded, fails with the reason it did not.
 * With `check` (a replacement), a loaded instance it refuses is closed at once, before any job
 * can reach it, and the start fails with `Refused`.
 */
const spawn = (
  state: State,
  check?: (ready: Ready) => string | undefined
): Effect.Effect<{ readonly slot: Slot; readonly ready: Ready }, string | Refused> => {
  const loadTimeout = Duration.fromInputUnsafe(state.options.loadTimeout ?? defaultLoadTimeout)
  // Interruptible though `start` is not: the timeout must be able to give the load up.
  return Effect.timeoutOrElse(Effect.interruptible(loading(state, check)), {
    duration: loadTimeout,
    // `loading`'s interruption has killed the instance.
    orElse: () => Effect.fail(`the ${state.transport.noun} did not load its session within ${Duration.format(loadTimeout)}: killed`)
  })
}

/** The default `loadTimeout`: 10 minutes, far above a slow load (a large model compiled for a GPU), far below for ever. */
export const defaultLoadTimeout = Duration.minutes(10)

/** `spawn` without its timeout: interrupted before its session loaded (the timeout), the instance is killed. */
const loading = (
  state: State,
  check?: (ready: Ready) => string | undefined
): Effect.Effect<{ readonly slot: Slot; readonly ready: Ready }, string | Refused> =>
  Effect.callback((resume) => {
    const { counters, transport } = state
    // `slot` is assigned before any event can fire (events are asynchronous)
    let slot: Slot = undefined as unknown as Slot
    let instance: Instance
    try {
      instance = transport.spawn(state.config, {
        message: (message) => {
          switch (message._tag) {
            case "ready": {
              slot.ready = true
              counters.sessionsOpened++
              const refused = check?.(message)
              // Loaded while the pool closes (a replacement), refused, or after its start was given up: it is closed at once.
              if (state.closing || refused !== undefined || slot.abandoned) requestClose(slot)
              else state.live.add(slot)
              return resume(refused === undefined ? Effect.succeed({ slot, ready: message }) : Effect.fail(new Refused(refused)))
            }
            case "loadFailed":
              slot.loadError = message.error
              return
            case "done":
              if (message.returned !== undefined) for (const buffer of message.returned) Tensor.recycle(buffer)
              return onReply(state, slot, message)
            case "failed":
            case "doneGroup":
              return onReply(state, slot, message)
            case "closed":
              slot.sessionReleased = true
              counters.sessionsClosed++
              return
            case "fatal":
              slot.lastError = message.error
              return
          }
        },
        error: (text) => {
          slot.lastError = text
        },
        // A reply that cannot be deserialized never arrives: fail its job and free the instance.
        messageError: (text) => {
          const current = slot.jobs[0]
          if (current !== undefined) onReply(state, slot, { _tag: "failed", id: current.id, error: `the ${transport.noun}'s reply could not be deserialized: ${text}` })
        },
        exit: (how) => {
          if (slot.exited) return
          slot.exited = true
          disarm(slot)
          counters.workersExited++
          state.all.delete(slot)
          state.live.delete(slot)
          // Its jobs are answered and its session counted before a close waiting for its exit resumes.
          if (slot.ready) onLost(state, slot, how)
          else resume(Effect.fail(slot.loadError ?? `the ${transport.noun} ended (${how}) before its session loaded${slot.lastError ? ` (${slot.lastError})` : ""}`))
          leftRunning.delete(slot.exit)
          Deferred.doneUnsafe(slot.exit, Exit.void)
        }
      })
    } catch (e) {
      // `new Worker` and `fork` can throw at once (a thread or process limit: ERR_WORKER_INIT_FAILED
      // EAGAIN): a start that failed, as one whose instance ended before it loaded.
      return resume(Effect.fail(`the ${transport.noun} could not be started: ${errorText(e)}`))
    }
    counters.workersSpawned++
    slot = {
      instance,
      ready: false,
      exited: false,
      abandoned: false,
      closeRequested: false,
      sessionReleased: false,
      jobs: [],
      headSeq: 0,
      killTimer: undefined,
      killedFor: undefined,
      lastError: "",
      loadError: undefined,
      exit: Deferred.makeUnsafe()
    }
    state.all.add(slot)
    // Given up before its session loaded (the load timeout, an interrupted start): a process is
    // killed, and its exit forgets it; a thread in native code cannot be (its kill would abort
    // the whole process), so it is closed once it has loaded, if it ever does.
    return Effect.sync(() => {
      if (slot.ready || slot.exited) return
      slot.abandoned = true
      if (state.transport.killMidRunAbortsProcess !== true) slot.instance.kill()
    })
  })

/**
 * Replaces a lost instance in its own fiber: attempts with exponential backoff from
 * `respawnDelay`; once they are spent, the pool is unavailable if no instance is left, and the
 * instance is tried again every `respawnRetryInterval` (a transient cause, such as memory or a
 * process limit, passes; the pool serves again once one loads). A refused replacement (another
 * model on disk) is not retried. Deferred a turn, so that the failed job is answered before a
 * process forks. A crash (not a deadline kill, which the request's answer reports) is logged as a warning.
 */
const respawn = (state: State, cause: string, crashed: boolean): void => {
  const { options } = state
  const attempts = Math.max(1, options.respawnAttempts ?? 5)
  const retryInterval = options.respawnRetryInterval ?? Duration.seconds(30)
  const noun = state.transport.noun
  const about = `model ${options.modelId} version ${options.version}`
  let pending = true
  const settled = () => {
    if (pending) state.pendingRespawns--
    pending = false
  }
  state.pendingRespawns++
  // Only the model its siblings run: refused (not retried) once model.onnx changed, or when the session differs.
  const attempt = Effect.suspend(() => {
    const changed = mismatch(state, undefined)
    return changed === undefined ? spawn(state, (ready) => mismatch(state, ready)) : Effect.fail(new Refused(changed))
  })
  const retryable = (e: unknown) => !state.closing && !(e instanceof Refused)
  const announce = crashed ? Effect.logWarning(`${about}: ${cause}; replacing it`) : Effect.void
  const serve = (slot: Slot, later: boolean) =>
    Effect.suspend(() => {
      settled()
      state.counters.respawns++
      if (!later) {
        release(state, slot)
        return Effect.void
      }
      state.broken = undefined
      release(state, slot)
      return Effect.logWarning(`${about}: a lost ${noun} was replaced on a later try; ${state.live.size} of ${options.instances} instance(s) serve`)
    })
  const why = (failure: unknown) => failure instanceof Refused ? `replacement refused: ${failure.reason}` : `replacement failed: ${failure}`
  // After the quick attempts: one every `retryInterval`, for as long as the pool is open.
  const retried = attempt.pipe(
    Effect.tapError((failure) => retryable(failure) ? Effect.logDebug(`${about}: a lost ${noun} is still not replaced (${why(failure)})`) : Effect.void),
    Effect.retry({ schedule: Schedule.spaced(retryInterval), while: retryable })
  )
  const later = Effect.andThen(Effect.sleep(retryInterval), retried).pipe(
    Effect.matchEffect({
      onSuccess: ({ slot }) => serve(slot, true),
      onFailure: (failure) =>
        Effect.suspend(() => {
          if (state.closing) return Effect.void
          if (state.broken !== undefined) state.broken = `every instance was lost and could not be replaced: ${cause}; ${why(failure)}`
          return Effect.logWarning(`${about}: a lost ${noun} is no longer retried (${why(failure)})`)
        })
    })
  )
  const replace = Effect.andThen(Effect.yieldNow, attempt).pipe(
    Effect.retry({
      schedule: Schedule.exponential(options.respawnDelay ?? Duration.millis(100)),
      times: attempts - 1,
      while: retryable
    }),
    // Once a crash, not once an attempt.
    (retried) => Effect.andThen(announce, retried),
    Effect.matchEffect({
      onSuccess: ({ slot }) => serve(slot, false),
      onFailure: (failure) =>
        Effect.suspend(() => {
          if (state.closing) return Effect.void
          state.counters.respawnFailures++
          settled()
          const again = retryable(failure)
          checkBroken(state, `${cause}; ${why(failure)}${again ? `; retried every ${Duration.format(retryInterval)}` : ""}`)
          const warned = Effect.logWarning(
            `${about}: a lost ${noun} was not replaced (${why(failure)}); ` +
              `${state.live.size} of ${options.instances} instance(s) serve` +
              (again ? `; it is tried again every ${Duration.format(retryInterval)}` : "")
          )
          return again ? Effect.andThen(warned, later) : warned
        })
    }),
    Effect.ensuring(Effect.sync(settled))
  )
  const fiber = state.runFork(replace)
  state.respawns.add(fiber)
  fiber.addObserver(() => state.respawns.delete(fiber))
}

// ---------------------------------------------------------------------------
// The pool
// ---------------------------------------------------------------------------

/**
 * How long a process that runs nothing may take to close (release its session and exit) before
 * it is killed: closing takes milliseconds, and killing a process is safe, so a stopped or hung
 * one must not hold a shutdown for the whole `closeTimeout` (which waits for runs to end).
 */
export const idleProcessCloseTimeout = Duration.seconds(5)

/**
 * Waits for `slot` to exit, killing it after `closeTimeout` (a process with no job in hand after
 * `idleProcessCloseTimeout`); or, when the kill of an instance inside a run would abort the
 * process, leaving it to finish that run (`leaveRunning`).
 */
const awaitExit = (state: State, slot: Slot): Effect.Effect<void> =>
  Deferred.await(slot.exit).pipe(
    Effect.timeoutOption(
      state.transport.killMidRunAbortsProcess !== true && slot.jobs.length === 0
        ? Duration.min(state.options.closeTimeout, idleProcessCloseTimeout)
        : state.options.closeTimeout
    ),
    Effect.flatMap((done) => {
      if (done._tag === "Some" || slot.exited) return Effect.void
      // A thread that still loads its session is inside native code too (onnxruntime-node loads synchronously).
      if (state.transport.killMidRunAbortsProcess === true && (slot.jobs.length > 0 || !slot.ready)) return leaveRunning(state, slot)
      state.counters.forcedTerminations++
      slot.instance.kill()
      return Deferred.await(slot.exit)
    })
  )

/**
 * `slot` is still inside a run (or still loading its session) at the close timeout and cannot be
 * killed without aborting the process: it is left to finish. Its job in hand keeps its caller
 * (answered when the run replies; then the instance is asked to close, and exits; a session that
 * loads is asked to close once loaded). The jobs sent ahead of their turn are cancelled in the
 * instance and taken back: they go where the pool's waiting jobs went (the reloaded version, or
 * ModelUnavailable), except one whose inputs were moved to the instance (RunFailed). (One the
 * instance began just before, its reply still on the way, then runs twice; its first answer is dropped.)
 */
const leaveRunning = (state: State, slot: Slot): Effect.Effect<void> =>
  Effect.suspend(() => {
    const { counters, options, transport } = state
    counters.workersLeftRunning++
    leftRunning.add(slot.exit)
    const takenBack: Array<Job> = []
    for (const { id, job } of slot.jobs.splice(1)) {
      try {
        slot.instance.send({ _tag: "cancel", id })
      } catch {
        // the instance is gone; its exit event follows
      }
      if (job.state === "done") continue
      if (job.cancelled) finish(job)
      else if (!inputsMoved(job)) takenBack.push(job)
      else {
        finish(job)
        job.resume(Exit.fail(runFailed(state, job, `not run: its inputs were moved (transferred) to the ${transport.noun}, which was still inside an earlier run when the model pool closed`)))
      }
    }
    const target = state.handOver === undefined ? "the model pool is closing" : successor(state, state.handOver)
    if (typeof target !== "string") moveTo(target, takenBack)
    else {
      for (const job of takenBack) {
        finish(job)
        job.resume(Exit.fail(unavailable(state, target)))
      }
    }
    return Effect.logWarning(
      `model ${options.modelId} version ${options.version}: a ${transport.noun} was still ${slot.ready ? "inside a run" : "loading its session"} ` +
        `${Duration.format(options.closeTimeout)} after its pool began closing; it is left to finish and then exit (stopping it in native code would abort the whole process)`
    )
  })

/**
 * The instances left running (`leaveRunning`) by every pool of this process, until each exits.
 * The process must not exit while one is inside its native run: the exit waits for that run to
 * return, then aborts (134). A program's last step waits on `awaitLeftRunning`.
 */
const leftRunning = new Set<Deferred.Deferred<void>>()

/** How many instances left running at a close, in this process, have not exited yet. */
export const leftRunningCount = (): number => leftRunning.size

/**
 * Waits until every instance left running at a close, in this process, has ended its run and
 * exited (at once when none is). Not bounded: a run cannot be stopped; bound it from outside.
 */
export const awaitLeftRunning: Effect.Effect<void> = Effect.suspend(() =>
  Effect.forEach(Array.from(leftRunning), Deferred.await, { discard: true })
)

/** The state behind each pool `api` made, for `closeInto`. */
const states = new WeakMap<InstancePool, State>()

interface HandOver {
  readonly next: InstancePool | undefined
  readonly reason: string
}

/**
 * Where a closing pool's jobs that have not run go: the state of `handOver.next` when it takes the
 * same inputs and gives the same outputs in the same isolation; otherwise the ModelUnavailable
 * reason to fail them with.
 */
const successor = (state: State, handOver: HandOver): State | string => {
  const target = handOver.next === undefined ? undefined : states.get(handOver.next)
  if (target === undefined || target.closing || target.broken !== undefined) return handOver.reason
  if (target.transport.isolation !== state.transport.isolation || !ModelMetadata.sameSignature(target.first!, state.first!)) {
    return `${handOver.reason}, with other inputs, outputs or isolation: send it again`
  }
  return target
}

/** Moves the jobs waiting in `state` (never sent) to its successor (`successor`), ahead of what waits there; or fails them. */
const moveWaiting = (state: State, handOver: HandOver): void => {
  const target = successor(state, handOver)
  if (typeof target === "string") return failWaiting(state, target)
  const jobs: Array<Job> = []
  for (let job = nextJob(state); job !== undefined; job = nextJob(state)) jobs.push(job)
  moveTo(target, jobs)
}

/** Puts `jobs` (none of them run) at the front of `target`'s line, in order, and dispatches what the instances have room for. */
const moveTo = (target: State, jobs: ReadonlyArray<Job>): void => {
  if (jobs.length === 0) return
  for (const job of jobs) {
    job.owner = target
    job.state = "queued"
    job.sent = undefined
  }
  target.waiting.splice(target.head, 0, ...jobs)
  target.queued += jobs.length
  for (let slot = roomy(target); slot !== undefined; slot = roomy(target)) {
    const job = nextJob(target)
    if (job === undefined) return
    dispatch(target, slot, job)
  }
}

/**
 * Fails what waits (or, with `handOver`, moves it: `moveWaiting`), lets what was sent finish,
 * closes every instance (killing what outlives `closeTimeout`). Idempotent.
 */
const close = (state: State, handOver?: HandOver): Effect.Effect<void> =>
  Effect.suspend(() => {
    if (state.closed !== undefined) return Deferred.await(state.closed)
    const closed = Deferred.makeUnsafe<void>()
    state.closed = closed
    state.closing = true
    state.handOver = handOver
    if (handOver === undefined) failWaiting(state, "the model pool is closing")
    else moveWaiting(state, handOver)
    // `all` includes instances still loading; busy ones get their close request when their last job replies.
    const slots = [...state.all]
    for (const slot of slots) if (slot.ready && slot.jobs.length === 0) requestClose(slot)
    return Fiber.interruptAll([...state.respawns]).pipe(
      Effect.andThen(Effect.forEach([...state.all], (slot) => awaitExit(state, slot), { concurrency: "unbounded", discard: true })),
      Effect.ensuring(Deferred.done(closed, Exit.void))
    )
  })

/** An `uninterruptibleMask`'s restore: the interruptibility of the caller. */
export type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/**
 * Starts every instance; fails with the first reason one did not load (after closing the others).
 * `restore`: the caller's interruptibility, for the wait while they load (see `start`).
 */
const startAll = (state: State, restore: Restore): Effect.Effect<void, string> =>
  Effect.gen(function*() {
    state.identity = state.options.identify?.()
    // The one stretch of `start` as interruptible as its caller (an interrupted server start, a
    // layer build under a timeout): loading processes are killed at once; the instances that
    // loaded are closed, and a loading thread, which cannot be stopped in native code, once it loads.
    const results = yield* restore(Effect.forEach(
      Array.from({ length: state.options.instances }),
      () => Effect.result(spawn(state)),
      { concurrency: "unbounded" }
    )).pipe(Effect.onInterrupt(() => close(state)))
    const failure = results.find((r) => r._tag === "Failure")
    if (failure !== undefined) {
      yield* close(state)
      return yield* Effect.fail(String(failure.failure))
    }
    if (state.options.identify !== undefined && state.options.identify() !== state.identity) {
      yield* close(state)
      return yield* Effect.fail("model.onnx changed on disk while its instances loaded (they may run different models): load it again")
    }
    for (const r of results) {
      if (r._tag !== "Success") continue
      state.first ??= r.success.ready
      release(state, r.success.slot)
    }
  })

const submit = <A>(
  state: State,
  requestId: string,
  message: (id: number, ahead: boolean) => Protocol.ToWorker,
  decode: (reply: Reply) => Exit.Exit<A, InferenceError.RunFailed>,
  runOptions: RunOptions | undefined,
  transfer?: ReadonlyArray<ArrayBuffer>
) =>
  Effect.callback<A, InferenceError.RunFailed | InferenceError.ModelUnavailable>((resume) => {
    if (state.closing) return resume(Exit.fail(unavailable(state, "the model pool is closing")))
    if (state.broken !== undefined) return resume(Exit.fail(unavailable(state, state.broken)))
    const killsRuns = state.transport.isolation === "process"
    const timeoutMs = killsRuns && runOptions?.timeout !== undefined ? Duration.toMillis(runOptions.timeout) : Infinity
    const deadlineAtMs = Number.isFinite(timeoutMs) ? state.nowMs() + timeoutMs : undefined
    const job: Job = {
      requestId,
      message,
      transfer,
      resume: resume as (outcome: Outcome) => void,
      decode,
      deadlineAtMs,
      killAtMs: deadlineAtMs === undefined ? undefined : deadlineAtMs + state.killGraceMs,
      abandonedAtMs: undefined,
      onStart: runOptions?.onStart,
      letGo: undefined,
      state: "new",
      cancelled: false,
      sent: undefined,
      owner: state
    }
    enqueue(state, job)
    return Effect.suspend(() => cancel(job.owner, job))
  })

/** The wire form of `inputs`: copied, or the pool's own exact-size buffers moved (with `transfer`, threads only). */
const wireInputs = (state: State, inputs: Tensor.TensorMap, transfer: boolean) => {
  const wire: Record<string, Tensor.Tensor> = {}
  const moving = transfer && state.transport.isolation === "thread" ? new Set<ArrayBuffer>() : undefined
  for (const name in inputs) {
    const t = inputs[name]!
    const data = t.data
    if (moving !== undefined && ArrayBuffer.isView(data) && data.buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === data.buffer.byteLength) {
      moving.add(data.buffer)
      wire[name] = t
      continue
    }
    // copied on the way: exact-size first; a SharedArrayBuffer would be shared (thread) or refused (process)
    wire[name] = {
      dtype: t.dtype,
      dims: t.dims,
      data: ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer ? (data as unknown as { slice: () => Tensor.TensorData }).slice() : Tensor.compact(data)
    }
  }
  return { wire, transfer: moving === undefined || moving.size === 0 ? undefined : [...moving] }
}

const decodeRun = (reply: Reply): Exit.Exit<RunResult, never> => {
  const done = reply as Extract<Reply, { readonly _tag: "done" }>
  return Exit.succeed({ outputs: done.outputs, deviceUsed: done.deviceUsed, runMs: done.runMs })
}

const decodeGroup = (state: State, requestId: string, reply: Reply): Exit.Exit<ReadonlyArray<Exit.Exit<RunResult, InferenceError.RunFailed>>, never> => {
  const group = reply as Extract<Reply, { readonly _tag: "doneGroup" }>
  return Exit.succeed(group.results.map((r) =>
    r._tag === "done"
      ? Exit.succeed({ outputs: r.outputs, deviceUsed: group.deviceUsed, runMs: r.runMs })
      : Exit.fail(new InferenceError.RunFailed({ modelId: state.options.modelId, requestId, detail: r.error }))
  ))
}

const api = (state: State): InstancePool => {
  const { options, transport } = state
  const first = state.first!
  const span = { attributes: { model: options.modelId, version: options.version } }
  const pool: InstancePool = {
    modelId: options.modelId,
    version: options.version,
    isolation: transport.isolation,
    depth: state.depth,
    metadata: { name: options.modelId, version: options.version, inputs: first.inputs, outputs: first.outputs },
    deviceUsed: first.deviceUsed,
    fallbacks: first.fallbacks,
    warmupMs: first.warmupMs,
    run: (inputs, requestId, runOptions) => {
      const { transfer, wire } = wireInputs(state, inputs, runOptions?.transfer === true)
      // Inputs moved to a thread come back after the run (`recycle`), for the next batch's buffers.
      const recycle = transfer !== undefined
      return submit(state, requestId, (id, ahead) =>
        recycle
          ? ahead ? { _tag: "run", id, inputs: wire, ahead, recycle } : { _tag: "run", id, inputs: wire, recycle }
          : ahead ? { _tag: "run", id, inputs: wire, ahead } : { _tag: "run", id, inputs: wire }, decodeRun, runOptions, transfer)
    },
    runGroup: (inputs, requestId, runOptions) => {
      const wires = inputs.map((i) => wireInputs(state, i, false).wire)
      return submit(state, requestId, (id, ahead) => ahead ? { _tag: "runGroup", id, inputs: wires, ahead } : { _tag: "runGroup", id, inputs: wires }, (reply) => decodeGroup(state, requestId, reply), runOptions)
    },
    unavailableReason: () => (state.closing ? "the model pool is closing" : state.broken),
    stats: () => {
      let busy = 0
      for (const slot of state.live) if (slot.jobs.length > 0) busy++
      return { instances: options.instances, live: state.live.size, idle: state.live.size - busy, busy, queued: state.queued, starting: state.all.size - state.live.size }
    },
    pids: () => [...state.all].flatMap((slot) => (slot.instance.pid === undefined ? [] : [slot.instance.pid])),
    close: close(state).pipe(Effect.withSpan(`${transport.spanPrefix}.close`, span)),
    closeInto: (next, reason) => close(state, { next, reason }).pipe(Effect.withSpan(`${transport.spanPrefix}.close`, span))
  }
  states.set(pool, state)
  return pool
}

/**
 * Starts the instances and waits until every one has loaded. The returned pool owns threads or
 * processes, so the caller must `close` it (or use `make`, which does). Fails with LoadFailed
 * when an instance cannot load; the others are closed first. Uninterruptible but while the
 * instances load, when its caller is interruptible: interrupted then, it kills the processes
 * still loading, closes the instances that loaded (a thread still loading once it loads: it
 * cannot be stopped in native code) and ends interrupted, owning nothing. `restoreCaller`: the
 * interruptibility of a caller that is itself uninterruptible around this call (its
 * `uninterruptibleMask`'s restore), so that what it does with the pool (register it) and the
 * start are one step.
 */
export const start = (options: Options, transport: Transport, restoreCaller?: Restore): Effect.Effect<InstancePool, LoadFailed> =>
  Effect.uninterruptibleMask((restore) => Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const context = yield* Effect.context<never>()
    const isProcess = transport.isolation === "process"
    const state: State = {
      options,
      transport,
      config: {
        modelId: options.modelId,
        version: options.version,
        modelPath: options.path,
        executionProviders: options.executionProviders,
        intraOpNumThreads: options.intraOpNumThreads,
        interOpNumThreads: options.interOpNumThreads,
        isolation: transport.isolation,
        ...(options.warmup === undefined
          ? {}
          : { warmup: options.warmup, loadTimeoutMs: Duration.toMillis(Duration.fromInputUnsafe(options.loadTimeout ?? defaultLoadTimeout)) })
      },
      counters: options.counters,
      depth: Math.max(1, options.depth ?? (isProcess ? 1 : 2)),
      killGraceMs: Duration.toMillis(options.killGrace ?? Duration.seconds(1)),
      nowMs: () => Number(clock.monotonicTimeNanosUnsafe()) / 1e6,
      runFork: Effect.runForkWith(context),
      all: new Set(),
      live: new Set(),
      waiting: [],
      head: 0,
      queued: 0,
      nextId: 0,
      heads: 0,
      closing: false,
      closed: undefined,
      handOver: undefined,
      broken: undefined,
      respawns: new Set(),
      pendingRespawns: 0,
      first: undefined,
      identity: undefined
    }
    yield* Effect.mapError(startAll(state, restoreCaller ?? restore), (reason) => new LoadFailed({ modelId: options.modelId, version: options.version, reason }))
    return api(state)
  })).pipe(
    Effect.withSpan(`${transport.spanPrefix}.start`, { attributes: { model: options.modelId, version: options.version, instances: options.instances } })
  )

/** `start` with `close` as the finalizer of the current scope. */
export const make = (options: Options, transport: Transport): Effect.Effect<InstancePool, LoadFailed, Scope.Scope> =>
  Effect.acquireRelease(start(options, transport), (pool) => pool.close)
