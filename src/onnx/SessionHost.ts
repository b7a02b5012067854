/**
 * The instances of one model version: N session instances, each holding one onnxruntime
 * session (`SessionEndpoint`), behind one FIFO of waiting jobs. Where an instance runs is the
 * `Transport`'s business: a worker thread (`WorkerHost`) or a child process (`ProcessHost`).
 *
 * - An instance runs one job at a time. With `depth` 2 (threads) it is handed its next job while
 *   the current one runs, so it never idles while a job crosses the thread boundary; a job goes
 *   to an idle instance first, then to one with room.
 * - `run` waits in FIFO order for an instance with room. Interrupting it returns at once: a
 *   queued job is dropped unsent; a job sent ahead and not started is dropped in the instance
 *   (`cancel`); a running job's instance stays busy until it replies, and that reply is
 *   discarded (counted in `lateRepliesDropped`). No instance ever runs two jobs at once.
 * - An instance that dies (uncaught error, `process.exit`, and for a process a native crash or
 *   a signal) fails only its own job with RunFailed and is replaced, so the instance count is
 *   kept. If replacements keep failing and no instance is left, the host becomes unavailable
 *   and its waiting jobs fail with ModelUnavailable.
 * - Deadlines (process isolation only): a job run with a `timeout` that is still running
 *   `killGrace` after it is killed with its process (SIGKILL); the job fails at once with
 *   RunFailed ("killed after exceeding its deadline by …"), and a replacement is started once
 *   the process is gone (the instance counts as busy until then). A job whose deadline passed while it waited is failed without being sent. Threads
 *   cannot be stopped mid-run (terminating one aborts the whole process), so a thread host
 *   ignores `timeout`. A hang without a timeout is never detected.
 * - `close` fails queued jobs with ModelUnavailable, lets running jobs finish and reply, then
 *   asks each instance to release its session and exit. The transport's `kill` (a thread's
 *   `terminate()`, a process's SIGKILL) is a last resort after `closeTimeout`.
 *
 * Input tensors are copied to the instance (`Tensor.compact` first, so a view into a large
 * buffer does not clone all of it); the caller's arrays are never touched. Output arrays are
 * owned by the caller.
 *
 * @module SessionHost
 */
import { Data, Duration, Effect, Exit } from "effect"
import * as InferenceError from "../InferenceError.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import type { RunOutput } from "../ModelPool.ts"
import * as Tensor from "../Tensor.ts"
import type * as Protocol from "./Protocol.ts"

export type Isolation = Protocol.Isolation

/**
 * Lifetime counters, shared by the hosts of one pool. After every host has closed,
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
  /** Jobs failed unsent because their deadline passed while they waited for an instance. */
  expiredUnsent: number
  /** Replacement instances that loaded. */
  respawns: number
  /** Instances given up after every replacement attempt failed. */
  respawnFailures: number
  /** Replies from instances (runs and test ops) that reached the host. */
  replies: number
  /** Replies whose caller had been interrupted; dropped. */
  lateRepliesDropped: number
  /** Callers interrupted while their job ran. */
  interruptedRunning: number
  /** Callers interrupted while their job waited (it was never sent). */
  interruptedQueued: number
  /** Instances stopped with the transport's `kill` after the close timeout. */
  forcedTerminations: number
}

export const makeCounters = (): Counters => ({
  workersSpawned: 0,
  workersExited: 0,
  sessionsOpened: 0,
  sessionsClosed: 0,
  sessionsLost: 0,
  crashes: 0,
  deadlineKills: 0,
  expiredUnsent: 0,
  respawns: 0,
  respawnFailures: 0,
  replies: 0,
  lateRepliesDropped: 0,
  interruptedRunning: 0,
  interruptedQueued: 0,
  forcedTerminations: 0
})

export interface Options {
  readonly modelId: string
  readonly version: string
  /** Absolute path of model.onnx. */
  readonly path: string
  readonly instances: number
  readonly executionProviders: ReadonlyArray<string>
  readonly intraOpNumThreads: number
  readonly interOpNumThreads: number
  /** Honour `test` operations (tests only). */
  readonly allowTestOps: boolean
  /** How long `close` waits for an instance before the transport's `kill`. */
  readonly closeTimeout: Duration.Duration
  readonly counters: Counters
  /** Replacement attempts per lost instance (default 5), with delays doubling from `respawnDelay` (default 100 ms). */
  readonly respawnAttempts?: number | undefined
  readonly respawnDelay?: Duration.Duration | undefined
  /** Process isolation: how long a run may outlive its `timeout` before its process is killed (default 1 second). */
  readonly killGrace?: Duration.Duration | undefined
  /** Jobs handed to one instance at once (default: 2 for threads, 1 for processes, whose deadline kills end the job in hand). */
  readonly depth?: number | undefined
}

/** Per-run options. */
export interface RunOptions {
  /**
   * How long the caller waits for this run, from the call to `run` (a wait for an instance
   * included). Process isolation kills a run still going `killGrace` after it; threads ignore it.
   */
  readonly timeout?: Duration.Duration | undefined
  /**
   * The inputs' buffers are the host's to give away (a batch the engine joined): a thread
   * receives them moved, not copied, and they are detached here. Default false: copied.
   */
  readonly transfer?: boolean | undefined
}

/** What a run returns: `RunOutput` plus the native run's own duration, measured in the instance. */
export interface RunResult extends RunOutput {
  /** Time inside `session.run` (or the test op), without the hop and the copies. */
  readonly runMs: number
}

/** A snapshot of a host's instances. */
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

export interface SessionHost {
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
  /** Runs `inputs` on a free instance (FIFO wait). See the module doc for interruption and deadlines. */
  readonly run: (
    inputs: Tensor.TensorMap,
    requestId: string,
    options?: RunOptions
  ) => Effect.Effect<RunResult, InferenceError.RunFailed | InferenceError.ModelUnavailable>
  /** Runs a test operation on a free instance, exactly as `run` would; fails unless `allowTestOps`. */
  readonly test: (
    op: Protocol.TestOp,
    requestId: string,
    options?: RunOptions
  ) => Effect.Effect<RunResult, InferenceError.RunFailed | InferenceError.ModelUnavailable>
  /** Undefined while the host can serve; why not otherwise (closing, every instance lost). */
  readonly unavailableReason: () => string | undefined
  readonly stats: () => Stats
  /** The OS process ids of the instances not yet exited (processes only; empty for threads). */
  readonly pids: () => ReadonlyArray<number>
  /** Stops every instance gracefully (see the module doc); idempotent. */
  readonly close: Effect.Effect<void>
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

/** One running instance as the host drives it. */
export interface Instance {
  /** Sends a message, moving `transfer`'s buffers where the transport can; throws when it cannot be sent. */
  readonly send: (message: Protocol.ToWorker, transfer?: ReadonlyArray<ArrayBuffer>) => void
  /** Stops it at once; `exit` follows. */
  readonly kill: () => void
  /** Its OS process id (processes only). */
  readonly pid: number | undefined
}

/** How instances are started: threads or processes. */
export interface Transport {
  readonly isolation: Isolation
  /** The instance in messages: "worker", "session process". */
  readonly noun: string
  /** The module named in spans ("WorkerHost", "ProcessHost"). */
  readonly spanPrefix: string
  readonly spawn: (config: Protocol.WorkerConfig, events: InstanceEvents) => Instance
}

// ---------------------------------------------------------------------------
// The host
// ---------------------------------------------------------------------------

type Outcome = Exit.Exit<RunResult, InferenceError.RunFailed | InferenceError.ModelUnavailable>

interface Job {
  readonly requestId: string
  readonly message: (id: number) => Protocol.ToWorker
  readonly transfer: ReadonlyArray<ArrayBuffer> | undefined
  readonly resume: (outcome: Outcome) => void
  /** `performance.now()` deadlines; undefined without a timeout or on threads. */
  readonly deadlineAtMs: number | undefined
  readonly killAtMs: number | undefined
  state: "new" | "queued" | "running" | "done"
  cancelled: boolean
  /** Its id once sent, and the instance it was sent to. */
  sent: { readonly id: number; readonly slot: Slot } | undefined
}

interface Slot {
  readonly instance: Instance
  ready: boolean
  exited: boolean
  closeRequested: boolean
  sessionReleased: boolean
  /** Jobs sent and not yet replied to, in order: the first is running, the others wait their turn in the instance. */
  readonly jobs: Array<{ readonly id: number; readonly job: Job }>
  /** Armed while a job with a deadline runs (processes only). */
  killTimer: ReturnType<typeof setTimeout> | undefined
  /** Set when the host killed the instance for a deadline: the failure of the job it ran. */
  killedFor: string | undefined
  lastError: string
  loadError: string | undefined
  readonly exit: Promise<void>
}

type Ready = Extract<Protocol.FromWorker, { readonly _tag: "ready" }>

export const errorText = (e: unknown): string => (e instanceof Error ? `${e.name}: ${e.message}` : String(e))

const ms = (x: number) => `${Math.round(x)} ms`

/** The longest `setTimeout` delay Node honours. */
const maxTimerMs = 2 ** 31 - 1

/**
 * Starts the instances and waits until every one has loaded. Uninterruptible: the returned
 * host owns threads or processes, so the caller must `close` it (or use `make`, which does).
 * Fails with LoadFailed when an instance cannot load; the others are closed first.
 */
export const start = (options: Options, transport: Transport): Effect.Effect<SessionHost, LoadFailed> =>
  Effect.uninterruptible(Effect.callback<SessionHost, LoadFailed>((resume) => {
    const host = makeUnstarted(options, transport)
    host.startAll().then(
      () => resume(Effect.succeed(host.api)),
      (reason: unknown) =>
        resume(Effect.fail(new LoadFailed({ modelId: options.modelId, version: options.version, reason: typeof reason === "string" ? reason : errorText(reason) })))
    )
  })).pipe(Effect.withSpan(`${transport.spanPrefix}.start`, { attributes: { model: options.modelId, version: options.version, instances: options.instances } }))

/** `start` with `close` as the finalizer of the current scope. */
export const make = (options: Options, transport: Transport) => Effect.acquireRelease(start(options, transport), (host) => host.close)

const makeUnstarted = (options: Options, transport: Transport) => {
  const { counters, modelId } = options
  const { noun } = transport
  const killsRuns = transport.isolation === "process"
  const depth = Math.max(1, options.depth ?? (killsRuns ? 1 : 2))
  const respawnAttempts = options.respawnAttempts ?? 5
  const respawnDelayMs = Duration.toMillis(options.respawnDelay ?? Duration.millis(100))
  const killGraceMs = Duration.toMillis(options.killGrace ?? Duration.seconds(1))
  const config: Protocol.WorkerConfig = {
    modelId,
    version: options.version,
    modelPath: options.path,
    executionProviders: options.executionProviders,
    intraOpNumThreads: options.intraOpNumThreads,
    interOpNumThreads: options.interOpNumThreads,
    allowTestOps: options.allowTestOps,
    isolation: transport.isolation
  }

  const all = new Set<Slot>() // every instance not yet exited, ready or not
  const live = new Set<Slot>() // ready and not exited (and not asked to close)
  const waiting: Array<Job> = [] // FIFO; `head` avoids O(n) shifts, cancelled jobs are skipped
  let head = 0
  let queued = 0
  let nextId = 0
  let closing = false
  let closed: Promise<void> | undefined
  let broken: string | undefined
  let pendingRespawns = 0
  const respawnTimers = new Set<ReturnType<typeof setTimeout>>()
  let first: Ready | undefined
  let metadata: ModelMetadata.ModelMetadata | undefined

  const unavailable = (reason: string) => new InferenceError.ModelUnavailable({ modelId, reason })
  const runFailed = (job: Job, detail: string) => new InferenceError.RunFailed({ modelId, requestId: job.requestId, detail })

  const nextJob = (): Job | undefined => {
    while (head < waiting.length) {
      const job = waiting[head]!
      waiting[head++] = undefined as unknown as Job // let the job be collected
      if (head > 1024 && head * 2 > waiting.length) {
        waiting.splice(0, head)
        head = 0
      }
      if (job.state === "queued") {
        queued--
        return job
      }
    }
    if (head > 0) {
      waiting.length = 0
      head = 0
    }
    return undefined
  }

  /** The live instance with the fewest jobs, if it has room: an idle one first. */
  const roomy = (): Slot | undefined => {
    let best: Slot | undefined
    for (const slot of live) {
      if (slot.jobs.length >= depth || slot.closeRequested) continue
      if (best === undefined || slot.jobs.length < best.jobs.length) best = slot
      if (slot.jobs.length === 0) break
    }
    return best
  }

  /** Kills `slot`'s process if it is still running job `id` (its deadline plus the grace has passed). */
  const killOverrun = (slot: Slot, id: number) => {
    slot.killTimer = undefined
    const current = slot.jobs[0]
    if (current === undefined || current.id !== id || slot.exited) return
    const job = current.job
    const overMs = performance.now() - job.deadlineAtMs!
    slot.killedFor = `killed after exceeding its deadline by ${ms(overMs)} (kill grace ${ms(killGraceMs)}); the ${noun} was replaced`
    counters.deadlineKills++
    slot.instance.kill()
    // SIGKILL cannot be caught or delayed: the run is over now. The job is answered at once; the
    // instance stays busy (and is replaced) once the process is gone, some milliseconds later.
    job.state = "done"
    if (job.cancelled) counters.lateRepliesDropped++
    else job.resume(Exit.fail(runFailed(job, slot.killedFor)))
  }

  /** Sends `job` to `slot`; false (job failed, slot still free) when it cannot or should not be sent. */
  const dispatch = (slot: Slot, job: Job): boolean => {
    if (job.deadlineAtMs !== undefined) {
      const lateMs = performance.now() - job.deadlineAtMs
      if (lateMs >= 0) {
        job.state = "done"
        counters.expiredUnsent++
        job.resume(Exit.fail(runFailed(job, `not run: its deadline passed ${ms(lateMs)} ago while it waited for an instance`)))
        return false
      }
    }
    const id = nextId++
    job.state = "running"
    job.sent = { id, slot }
    slot.jobs.push({ id, job })
    try {
      slot.instance.send(job.message(id), job.transfer)
    } catch (e) {
      slot.jobs.pop()
      job.state = "done"
      job.resume(Exit.fail(runFailed(job, `the inputs could not be sent to the ${noun}: ${errorText(e)}`)))
      return false
    }
    if (slot.jobs.length === 1) arm(slot)
    return true
  }

  /** Arms the deadline kill of the job now running on `slot`, if it has one. */
  const arm = (slot: Slot) => {
    const head = slot.jobs[0]
    if (head === undefined || head.job.killAtMs === undefined) return
    slot.killTimer = setTimeout(killOverrun, Math.max(0, head.job.killAtMs - performance.now()), slot, head.id)
  }

  const disarm = (slot: Slot) => {
    if (slot.killTimer === undefined) return
    clearTimeout(slot.killTimer)
    slot.killTimer = undefined
  }

  const requestClose = (slot: Slot) => {
    if (slot.closeRequested || slot.exited) return
    slot.closeRequested = true
    try {
      slot.instance.send({ _tag: "close" })
    } catch {
      // the instance is already gone; its exit event follows
    }
  }

  /** `slot` has room: give it waiting jobs while it has room. */
  const release = (slot: Slot) => {
    if (slot.exited) return
    if (closing) {
      if (slot.jobs.length === 0) requestClose(slot)
      return
    }
    while (slot.jobs.length < depth) {
      const job = nextJob()
      if (job === undefined) return
      dispatch(slot, job)
    }
  }

  const enqueue = (job: Job) => {
    for (let slot = roomy(); slot !== undefined; slot = roomy()) {
      if (dispatch(slot, job)) return
      if (job.state === "done") return
    }
    job.state = "queued"
    queued++
    waiting.push(job)
  }

  /** A job sent ahead to an instance that died before running it: first in line again. */
  const requeueFront = (job: Job) => {
    const slot = roomy()
    if (slot !== undefined && dispatch(slot, job)) return
    if (job.state === "done") return
    job.state = "queued"
    queued++
    if (head > 0) waiting[--head] = job
    else waiting.unshift(job)
  }

  const cancel = (job: Job) => {
    job.cancelled = true
    if (job.state === "queued") {
      job.state = "done"
      queued--
      counters.interruptedQueued++
    } else if (job.state === "running") {
      counters.interruptedRunning++
      // Sent ahead and not started: the instance skips it when its turn comes.
      const sent = job.sent!
      if (sent.slot.jobs[0]?.id !== sent.id) {
        try {
          sent.slot.instance.send({ _tag: "cancel", id: sent.id })
        } catch {
          // the instance is gone; its exit fails the job
        }
      }
    }
  }

  const failWaiting = (reason: string) => {
    for (let job = nextJob(); job !== undefined; job = nextJob()) {
      job.state = "done"
      job.resume(Exit.fail(unavailable(reason)))
    }
  }

  const checkBroken = (reason: string) => {
    if (closing || live.size > 0 || pendingRespawns > 0) return
    broken = `every instance was lost and could not be replaced: ${reason}`
    failWaiting(broken)
  }

  const onReply = (slot: Slot, message: Extract<Protocol.FromWorker, { readonly _tag: "done" | "failed" }>) => {
    const current = slot.jobs[0]
    if (current === undefined || current.id !== message.id || slot.killedFor !== undefined) return
    disarm(slot)
    slot.jobs.shift()
    arm(slot)
    const job = current.job
    job.state = "done"
    counters.replies++
    release(slot)
    if (job.cancelled) {
      counters.lateRepliesDropped++
      return
    }
    job.resume(message._tag === "done"
      ? Exit.succeed({ outputs: message.outputs, deviceUsed: message.deviceUsed, runMs: message.runMs })
      : Exit.fail(runFailed(job, message.error)))
  }

  /** Starts one instance; resolves once its session is loaded, rejects with the reason it did not. */
  const spawn = (): Promise<{ readonly slot: Slot; readonly ready: Ready }> =>
    new Promise((resolve, reject) => {
      let onExit: () => void = () => {}
      const exit = new Promise<void>((r) => (onExit = r))
      // `slot` is assigned before any event can fire (events are asynchronous)
      let slot: Slot = undefined as unknown as Slot
      const instance = transport.spawn(config, {
        message: (message) => {
          switch (message._tag) {
            case "ready":
              slot.ready = true
              counters.sessionsOpened++
              live.add(slot)
              resolve({ slot, ready: message })
              return
            case "loadFailed":
              slot.loadError = message.error
              return
            case "done":
            case "failed":
              return onReply(slot, message)
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
          if (current === undefined) return
          onReply(slot, { _tag: "failed", id: current.id, error: `the ${noun}'s reply could not be deserialized: ${text}` })
        },
        exit: (how) => {
          if (slot.exited) return
          slot.exited = true
          disarm(slot)
          counters.workersExited++
          all.delete(slot)
          live.delete(slot)
          onExit()
          if (!slot.ready) {
            reject(slot.loadError ?? `the ${noun} ended (${how}) before its session loaded${slot.lastError ? ` (${slot.lastError})` : ""}`)
            return
          }
          if (!slot.sessionReleased) counters.sessionsLost++
          const lost = slot.jobs.splice(0)
          const detail = slot.killedFor ?? `the ${noun} running the model died (${how}${slot.lastError ? `; ${slot.lastError}` : ""})`
          for (const [i, { job }] of lost.entries()) {
            if (job.state === "done") continue
            if (i > 0 && !job.cancelled && !closing) {
              // Sent ahead and never started: it goes back to the front of the line for another instance.
              job.state = "new"
              job.sent = undefined
              requeueFront(job)
              continue
            }
            job.state = "done"
            if (job.cancelled) counters.lateRepliesDropped++
            else job.resume(Exit.fail(runFailed(job, i === 0 ? detail : `the ${noun} ended before the job ran (${how})`)))
          }
          if (closing || slot.closeRequested) return
          if (slot.killedFor === undefined) counters.crashes++
          pendingRespawns++
          // deferred: starting a child process blocks this thread for a while (fork); the failed job is answered first
          scheduleRespawn(0, detail, 0)
        }
      })
      counters.workersSpawned++
      slot = {
        instance,
        ready: false,
        exited: false,
        closeRequested: false,
        sessionReleased: false,
        jobs: [],
        killTimer: undefined,
        killedFor: undefined,
        lastError: "",
        loadError: undefined,
        exit
      }
      all.add(slot)
    })

  /** Replaces a lost instance; `pendingRespawns` already counts it. */
  const respawn = (attempt: number, cause: string) => {
    if (closing) {
      pendingRespawns--
      return
    }
    spawn().then(
      ({ slot }) => {
        pendingRespawns--
        counters.respawns++
        release(slot)
      },
      (reason: unknown) => {
        if (closing) {
          pendingRespawns--
          return
        }
        if (attempt + 1 >= respawnAttempts) {
          pendingRespawns--
          counters.respawnFailures++
          checkBroken(`${cause}; replacement failed: ${typeof reason === "string" ? reason : errorText(reason)}`)
          return
        }
        scheduleRespawn(attempt + 1, cause, respawnDelayMs * 2 ** attempt)
      }
    )
  }

  const scheduleRespawn = (attempt: number, cause: string, delayMs: number) => {
    const timer = setTimeout(() => {
      respawnTimers.delete(timer)
      respawn(attempt, cause)
    }, delayMs)
    respawnTimers.add(timer)
  }

  const closeAll = (): Promise<void> => {
    if (closed !== undefined) return closed
    closing = true
    for (const timer of respawnTimers) {
      clearTimeout(timer)
      pendingRespawns--
    }
    respawnTimers.clear()
    failWaiting("the model pool is closing")
    const timeoutMs = Duration.toMillis(options.closeTimeout)
    // `all` includes instances still loading; no new one starts once `closing` is set.
    closed = Promise.all([...all].map((slot) => {
      if (slot.ready && slot.jobs.length === 0) requestClose(slot)
      // busy slots get their close request when they reply (release); starting ones when they load
      let timer: ReturnType<typeof setTimeout> | undefined
      const deadline = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          if (slot.exited) return resolve()
          counters.forcedTerminations++
          slot.instance.kill()
          slot.exit.then(resolve)
        }, timeoutMs)
      })
      return Promise.race([slot.exit, deadline]).then(() => clearTimeout(timer))
    })).then(() => undefined)
    return closed
  }

  const startAll = async (): Promise<void> => {
    const results = await Promise.allSettled(Array.from({ length: options.instances }, spawn))
    const failure = results.find((r): r is PromiseRejectedResult => r.status === "rejected")
    if (failure !== undefined) {
      await closeAll()
      throw failure.reason
    }
    for (const r of results) {
      if (r.status === "fulfilled") {
        if (first === undefined) {
          first = r.value.ready
          metadata = { name: modelId, version: options.version, inputs: first.inputs, outputs: first.outputs }
        }
        release(r.value.slot)
      }
    }
  }

  const submit = (
    requestId: string,
    message: (id: number) => Protocol.ToWorker,
    runOptions: RunOptions | undefined,
    transfer?: ReadonlyArray<ArrayBuffer>
  ) =>
    Effect.callback<RunResult, InferenceError.RunFailed | InferenceError.ModelUnavailable>((resume) => {
      if (closing) return resume(Exit.fail(unavailable("the model pool is closing")))
      if (broken !== undefined) return resume(Exit.fail(unavailable(broken)))
      const timeoutMs = killsRuns && runOptions?.timeout !== undefined ? Duration.toMillis(runOptions.timeout) : Infinity
      // beyond a timer's range (~24.8 days) is as good as no deadline
      const deadlineAtMs = timeoutMs + killGraceMs <= maxTimerMs ? performance.now() + timeoutMs : undefined
      const job: Job = {
        requestId,
        message,
        transfer,
        resume,
        deadlineAtMs,
        killAtMs: deadlineAtMs === undefined ? undefined : deadlineAtMs + killGraceMs,
        state: "new",
        cancelled: false,
        sent: undefined
      }
      enqueue(job)
      return Effect.sync(() => cancel(job))
    })

  const run = (inputs: Tensor.TensorMap, requestId: string, runOptions?: RunOptions) => {
    const wire: Record<string, Tensor.Tensor> = {}
    const moving = runOptions?.transfer === true && !killsRuns ? new Set<ArrayBuffer>() : undefined
    for (const name in inputs) {
      const t = inputs[name]!
      const data = t.data
      if (moving !== undefined && ArrayBuffer.isView(data) && data.buffer instanceof ArrayBuffer && data.byteOffset === 0 && data.byteLength === data.buffer.byteLength) {
        // the host's own exact-size buffer: moved, not copied
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
    return submit(requestId, (id) => ({ _tag: "run", id, inputs: wire }), runOptions, moving === undefined || moving.size === 0 ? undefined : [...moving])
  }

  const api: SessionHost = {
    modelId,
    version: options.version,
    isolation: transport.isolation,
    depth,
    get metadata() {
      return metadata!
    },
    get deviceUsed() {
      return first!.deviceUsed
    },
    get fallbacks() {
      return first!.fallbacks
    },
    run,
    test: (op, requestId, runOptions) => submit(requestId, (id) => ({ _tag: "test", id, op }), runOptions),
    unavailableReason: () => (closing ? "the model pool is closing" : broken),
    stats: () => {
      let busy = 0
      for (const slot of live) if (slot.jobs.length > 0) busy++
      return { instances: options.instances, live: live.size, idle: live.size - busy, busy, queued, starting: all.size - live.size }
    },
    pids: () => [...all].flatMap((slot) => (slot.instance.pid === undefined ? [] : [slot.instance.pid])),
    close: Effect.promise(closeAll).pipe(Effect.withSpan(`${transport.spanPrefix}.close`, { attributes: { model: modelId, version: options.version } }))
  }

  return { api, startAll }
}
