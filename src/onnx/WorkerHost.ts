/**
 * The instances of one model version: N `node:worker_threads` workers, each holding one
 * onnxruntime session (`SessionWorker.ts`), behind one FIFO of waiting jobs.
 *
 * - An instance runs one job at a time and is free again only when its worker replies.
 * - `run` waits in FIFO order for a free instance. Interrupting it returns at once: a queued job
 *   is dropped unsent; a running job's instance stays busy until the worker replies, and that
 *   reply is discarded (counted in `lateRepliesDropped`). No instance ever runs two jobs.
 * - A worker that dies (uncaught error, `process.exit`) fails only its own job with RunFailed and
 *   is replaced, so the instance count is kept. If replacements keep failing and no instance is
 *   left, the host becomes unavailable and its waiting jobs fail with ModelUnavailable.
 * - `close` fails queued jobs with ModelUnavailable, lets running jobs finish and reply, then
 *   asks each worker to release its session and exit. `worker.terminate()` is only a last resort
 *   after `closeTimeout`: terminating a thread inside `session.run` aborts the whole process.
 *
 * Input tensors are copied to the worker (`Tensor.compact` first, so a view into a large buffer
 * does not clone all of it); the caller's arrays are never touched. Output arrays are
 * transferred from the worker and owned by the caller.
 *
 * @module WorkerHost
 */
import { Data, Duration, Effect, Exit } from "effect"
import { Worker } from "node:worker_threads"
import * as InferenceError from "../InferenceError.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import type { RunOutput } from "../ModelPool.ts"
import * as Tensor from "../Tensor.ts"
import type * as Protocol from "./Protocol.ts"

/** The worker entry, run directly by Node 22 (type stripping). */
export const workerUrl: URL = new URL("./SessionWorker.ts", import.meta.url)

/**
 * Lifetime counters, shared by the hosts of one pool. After every host has closed,
 * `workersSpawned === workersExited` and `sessionsOpened === sessionsClosed + sessionsLost`.
 */
export interface Counters {
  /** Worker threads started (initial ones and replacements). */
  workersSpawned: number
  /** Worker threads that ended, for any reason. */
  workersExited: number
  /** Sessions that loaded (a worker reported ready). */
  sessionsOpened: number
  /** Sessions released by a graceful close. */
  sessionsClosed: number
  /** Sessions whose worker died without releasing them (the thread's teardown frees them). */
  sessionsLost: number
  /** Unexpected worker exits. */
  crashes: number
  /** Replacement workers that loaded. */
  respawns: number
  /** Instances given up after every replacement attempt failed. */
  respawnFailures: number
  /** Replies from workers (runs and test ops) that reached the host. */
  replies: number
  /** Replies whose caller had been interrupted; dropped. */
  lateRepliesDropped: number
  /** Callers interrupted while their job ran. */
  interruptedRunning: number
  /** Callers interrupted while their job waited (it was never sent). */
  interruptedQueued: number
  /** Workers stopped with `terminate()` after the close timeout. */
  forcedTerminations: number
}

export const makeCounters = (): Counters => ({
  workersSpawned: 0,
  workersExited: 0,
  sessionsOpened: 0,
  sessionsClosed: 0,
  sessionsLost: 0,
  crashes: 0,
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
  /** How long `close` waits for a worker before `terminate()`. */
  readonly closeTimeout: Duration.Duration
  readonly counters: Counters
  /** Replacement attempts per lost instance (default 5), with delays doubling from `respawnDelay` (default 100 ms). */
  readonly respawnAttempts?: number | undefined
  readonly respawnDelay?: Duration.Duration | undefined
}

/** What a run returns: `RunOutput` plus the native run's own duration, measured in the worker. */
export interface RunResult extends RunOutput {
  /** Time inside `session.run` (or the test op), without the thread hop and the copies. */
  readonly runMs: number
}

/** A snapshot of a host's instances. */
export interface Stats {
  /** The configured instance count. */
  readonly instances: number
  /** Workers whose session is loaded and that have not exited. */
  readonly live: number
  readonly idle: number
  readonly busy: number
  /** Jobs waiting for an instance. */
  readonly queued: number
  /** Workers started and not yet ready (replacements). */
  readonly starting: number
}

export interface WorkerHost {
  readonly modelId: string
  readonly version: string
  readonly metadata: ModelMetadata.ModelMetadata
  /** The provider the first instance loaded on. */
  readonly deviceUsed: string
  /** Requested providers that could not load before `deviceUsed` did. */
  readonly fallbacks: ReadonlyArray<Protocol.Fallback>
  /** Runs `inputs` on a free instance (FIFO wait). See the module doc for interruption. */
  readonly run: (inputs: Tensor.TensorMap, requestId: string) => Effect.Effect<RunResult, InferenceError.RunFailed | InferenceError.ModelUnavailable>
  /** Runs a test operation on a free instance, exactly as `run` would; fails unless `allowTestOps`. */
  readonly test: (op: Protocol.TestOp, requestId: string) => Effect.Effect<RunResult, InferenceError.RunFailed | InferenceError.ModelUnavailable>
  /** Undefined while the host can serve; why not otherwise (closing, every instance lost). */
  readonly unavailableReason: () => string | undefined
  readonly stats: () => Stats
  /** Stops every worker gracefully (see the module doc); idempotent. */
  readonly close: Effect.Effect<void>
}

/** The model could not be loaded: no instance reported ready. */
export class LoadFailed extends Data.TaggedError("LoadFailed")<{ readonly modelId: string; readonly version: string; readonly reason: string }> {
  override get message(): string {
    return `model ${JSON.stringify(this.modelId)} version ${this.version} failed to load: ${this.reason}`
  }
}

type Outcome = Exit.Exit<RunResult, InferenceError.RunFailed | InferenceError.ModelUnavailable>

interface Job {
  readonly requestId: string
  readonly message: (id: number) => Protocol.ToWorker
  readonly resume: (outcome: Outcome) => void
  state: "new" | "queued" | "running" | "done"
  cancelled: boolean
}

interface Slot {
  readonly worker: Worker
  ready: boolean
  exited: boolean
  closeRequested: boolean
  sessionReleased: boolean
  current: { readonly id: number; readonly job: Job } | undefined
  lastError: string
  loadError: string | undefined
  readonly exit: Promise<void>
}

type Ready = Extract<Protocol.FromWorker, { readonly _tag: "ready" }>

const errorText = (e: unknown): string => (e instanceof Error ? `${e.name}: ${e.message}` : String(e))

/**
 * Starts the workers and waits until every instance has loaded. Uninterruptible: the returned
 * host owns threads, so the caller must `close` it (or use `make`, which does).
 * Fails with LoadFailed when an instance cannot load; the others are closed first.
 */
export const start = (options: Options): Effect.Effect<WorkerHost, LoadFailed> =>
  Effect.uninterruptible(Effect.callback<WorkerHost, LoadFailed>((resume) => {
    const host = makeUnstarted(options)
    host.startAll().then(
      () => resume(Effect.succeed(host.api)),
      (reason: unknown) =>
        resume(Effect.fail(new LoadFailed({ modelId: options.modelId, version: options.version, reason: typeof reason === "string" ? reason : errorText(reason) })))
    )
  })).pipe(Effect.withSpan("WorkerHost.start", { attributes: { model: options.modelId, version: options.version, instances: options.instances } }))

/** `start` with `close` as the finalizer of the current scope. */
export const make = (options: Options) => Effect.acquireRelease(start(options), (host) => host.close)

const makeUnstarted = (options: Options) => {
  const { counters, modelId } = options
  const respawnAttempts = options.respawnAttempts ?? 5
  const respawnDelayMs = Duration.toMillis(options.respawnDelay ?? Duration.millis(100))
  const workerConfig: Protocol.WorkerConfig = {
    modelId,
    version: options.version,
    modelPath: options.path,
    executionProviders: options.executionProviders,
    intraOpNumThreads: options.intraOpNumThreads,
    interOpNumThreads: options.interOpNumThreads,
    allowTestOps: options.allowTestOps
  }

  const all = new Set<Slot>() // every worker not yet exited, ready or not
  const live = new Set<Slot>() // ready and not exited
  const idle: Array<Slot> = [] // live and free (LIFO: the warmest instance first)
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

  /** Sends `job` to `slot`; false (job failed, slot still free) when the message cannot be posted. */
  const dispatch = (slot: Slot, job: Job): boolean => {
    const id = nextId++
    job.state = "running"
    slot.current = { id, job }
    try {
      slot.worker.postMessage(job.message(id))
      return true
    } catch (e) {
      slot.current = undefined
      job.state = "done"
      job.resume(Exit.fail(new InferenceError.RunFailed({ modelId, requestId: job.requestId, detail: `the inputs could not be sent to the worker: ${errorText(e)}` })))
      return false
    }
  }

  const requestClose = (slot: Slot) => {
    if (slot.closeRequested || slot.exited) return
    slot.closeRequested = true
    try {
      slot.worker.postMessage({ _tag: "close" } satisfies Protocol.ToWorker)
    } catch {
      // the worker is already gone; its exit event follows
    }
  }

  /** `slot` has no job: give it the next waiting one, or park it. */
  const release = (slot: Slot) => {
    slot.current = undefined
    if (slot.exited) return
    if (closing) return requestClose(slot)
    for (let job = nextJob(); job !== undefined; job = nextJob()) {
      if (dispatch(slot, job)) return
    }
    idle.push(slot)
  }

  const enqueue = (job: Job) => {
    const slot = idle.pop()
    if (slot !== undefined) {
      if (!dispatch(slot, job)) idle.push(slot)
      return
    }
    job.state = "queued"
    queued++
    waiting.push(job)
  }

  const cancel = (job: Job) => {
    job.cancelled = true
    if (job.state === "queued") {
      job.state = "done"
      queued--
      counters.interruptedQueued++
    } else if (job.state === "running") {
      counters.interruptedRunning++
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
    const current = slot.current
    if (current === undefined || current.id !== message.id) return
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
      : Exit.fail(new InferenceError.RunFailed({ modelId, requestId: job.requestId, detail: message.error })))
  }

  /** Starts one worker; resolves once its session is loaded, rejects with the reason it did not. */
  const spawn = (): Promise<{ readonly slot: Slot; readonly ready: Ready }> =>
    new Promise((resolve, reject) => {
      let onExit: () => void = () => {}
      const worker = new Worker(workerUrl, { workerData: workerConfig, name: `session ${modelId}@${options.version}` })
      counters.workersSpawned++
      const slot: Slot = {
        worker,
        ready: false,
        exited: false,
        closeRequested: false,
        sessionReleased: false,
        current: undefined,
        lastError: "",
        loadError: undefined,
        exit: new Promise<void>((r) => (onExit = r))
      }
      all.add(slot)
      worker.on("message", (message: Protocol.FromWorker) => {
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
        }
      })
      worker.on("error", (e) => {
        slot.lastError = errorText(e)
      })
      // A reply that cannot be deserialized never arrives: fail its job and free the instance.
      worker.on("messageerror", (e) => {
        const current = slot.current
        if (current === undefined) return
        onReply(slot, { _tag: "failed", id: current.id, error: `the worker's reply could not be deserialized: ${errorText(e)}` })
      })
      worker.on("exit", (code) => {
        slot.exited = true
        counters.workersExited++
        all.delete(slot)
        live.delete(slot)
        const i = idle.indexOf(slot)
        if (i >= 0) idle.splice(i, 1)
        onExit()
        if (!slot.ready) {
          reject(slot.loadError ?? `the worker exited with code ${code} before its session loaded${slot.lastError ? ` (${slot.lastError})` : ""}`)
          return
        }
        if (!slot.sessionReleased) counters.sessionsLost++
        const current = slot.current
        slot.current = undefined
        const detail = `the worker running the model died (exit code ${code}${slot.lastError ? `; ${slot.lastError}` : ""})`
        if (current !== undefined) {
          current.job.state = "done"
          if (current.job.cancelled) counters.lateRepliesDropped++
          else current.job.resume(Exit.fail(new InferenceError.RunFailed({ modelId, requestId: current.job.requestId, detail })))
        }
        if (closing || slot.closeRequested) return
        counters.crashes++
        pendingRespawns++
        respawn(0, detail)
      })
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
        const timer = setTimeout(() => {
          respawnTimers.delete(timer)
          respawn(attempt + 1, cause)
        }, respawnDelayMs * 2 ** attempt)
        respawnTimers.add(timer)
      }
    )
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
    closed = Promise.all([...all].map((slot) => {
      if (slot.ready && slot.current === undefined) requestClose(slot)
      // busy slots get their close request when they reply (release); starting ones when they load
      let timer: ReturnType<typeof setTimeout> | undefined
      const deadline = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          if (slot.exited) return resolve()
          counters.forcedTerminations++
          slot.worker.terminate().then(() => resolve(), () => resolve())
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

  const submit = (requestId: string, message: (id: number) => Protocol.ToWorker) =>
    Effect.callback<RunResult, InferenceError.RunFailed | InferenceError.ModelUnavailable>((resume) => {
      if (closing) return resume(Exit.fail(unavailable("the model pool is closing")))
      if (broken !== undefined) return resume(Exit.fail(unavailable(broken)))
      const job: Job = { requestId, message, resume, state: "new", cancelled: false }
      enqueue(job)
      return Effect.sync(() => cancel(job))
    })

  const run = (inputs: Tensor.TensorMap, requestId: string) => {
    const wire: Record<string, Tensor.Tensor> = {}
    for (const name in inputs) {
      const t = inputs[name]!
      const data = t.data
      // copied by postMessage: exact-size first; a SharedArrayBuffer would be shared, not copied
      wire[name] = {
        dtype: t.dtype,
        dims: t.dims,
        data: ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer ? (data as unknown as { slice: () => Tensor.TensorData }).slice() : Tensor.compact(data)
      }
    }
    return submit(requestId, (id) => ({ _tag: "run", id, inputs: wire }))
  }

  const api: WorkerHost = {
    modelId,
    version: options.version,
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
    test: (op, requestId) => submit(requestId, (id) => ({ _tag: "test", id, op })),
    unavailableReason: () => (closing ? "the model pool is closing" : broken),
    stats: () => {
      let busy = 0
      for (const slot of live) if (slot.current !== undefined) busy++
      return { instances: options.instances, live: live.size, idle: idle.length, busy, queued, starting: all.size - live.size }
    },
    close: Effect.promise(closeAll).pipe(Effect.withSpan("WorkerHost.close", { attributes: { model: modelId, version: options.version } }))
  }

  return { api, startAll }
}
