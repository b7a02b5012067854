/**
 * `SessionHost` with thread isolation: each instance is a `node:worker_threads` worker running
 * `SessionWorker.ts`, inside this process. The cheapest hop, but a native crash in onnxruntime
 * takes the whole process down, and a run cannot be stopped once started: `worker.terminate()`
 * while a thread is inside `session.run` aborts the process. So deadlines are never enforced
 * here (`RunOptions.timeout` is ignored), and `terminate()` is used only after `closeTimeout`.
 * Output arrays are transferred from the worker, not copied.
 *
 * @module WorkerHost
 */
import type { Effect, Scope } from "effect"
import { Worker } from "node:worker_threads"
import * as SessionHost from "./SessionHost.ts"

/** The worker entry, run directly by Node 22 (type stripping). */
export const workerUrl: URL = new URL("./SessionWorker.ts", import.meta.url)

/** Instances as worker threads. */
export const transport: SessionHost.Transport = {
  isolation: "thread",
  noun: "worker",
  spanPrefix: "WorkerHost",
  spawn: (config, events) => {
    const worker = new Worker(workerUrl, { workerData: config, name: `session ${config.modelId}@${config.version}` })
    worker.on("message", events.message)
    worker.on("error", (e) => events.error(SessionHost.errorText(e)))
    worker.on("messageerror", (e) => events.messageError(SessionHost.errorText(e)))
    worker.on("exit", (code) => events.exit(`exit code ${code}`))
    return {
      send: (message, transfer) => worker.postMessage(message, transfer as Array<ArrayBuffer> | undefined),
      kill: () => {
        worker.terminate().catch(() => {})
      },
      pid: undefined
    }
  }
}

/** Starts the threads and waits until every instance has loaded (see `SessionHost.start`). */
export const start = (options: SessionHost.Options): Effect.Effect<SessionHost.SessionHost, SessionHost.LoadFailed> => SessionHost.start(options, transport)

/** `start` with `close` as the finalizer of the current scope. */
export const make = (options: SessionHost.Options): Effect.Effect<SessionHost.SessionHost, SessionHost.LoadFailed, Scope.Scope> =>
  SessionHost.make(options, transport)
