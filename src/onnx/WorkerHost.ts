/**
 * The thread `Transport` of `InstancePool`: each instance is a `node:worker_threads` worker running
 * `SessionWorker.ts`, inside this process. The cheapest hop, but a native crash in onnxruntime
 * takes the whole process down, and a run cannot be stopped once started: `worker.terminate()`
 * while a thread is inside `session.run` aborts the process. So deadlines are never enforced
 * here (`RunOptions.timeout` is ignored), and `terminate()` is used only after `closeTimeout`.
 * Output arrays are transferred from the worker, not copied.
 *
 * @module WorkerHost
 */
import { Worker } from "node:worker_threads"
import * as InstancePool from "./InstancePool.ts"

/** The worker entry, run directly by Node 22 (type stripping). */
export const workerUrl: URL = new URL("./SessionWorker.ts", import.meta.url)

/** Instances as worker threads running `entry` (a module that serves `SessionEndpoint`; default `SessionWorker.ts`). */
export const transportFor = (entry: URL): InstancePool.Transport => ({
  isolation: "thread",
  noun: "worker",
  spanPrefix: "WorkerHost",
  spawn: (config, events) => {
    const worker = new Worker(entry, { workerData: config, name: `session ${config.modelId}@${config.version}` })
    worker.on("message", events.message)
    worker.on("error", (e) => events.error(InstancePool.errorText(e)))
    worker.on("messageerror", (e) => events.messageError(InstancePool.errorText(e)))
    worker.on("exit", (code) => events.exit(`exit code ${code}`))
    return {
      send: (message, transfer) => worker.postMessage(message, transfer as Array<ArrayBuffer> | undefined),
      kill: () => {
        worker.terminate().catch(() => {})
      },
      pid: undefined
    }
  }
})

/** Instances as worker threads. */
export const transport: InstancePool.Transport = transportFor(workerUrl)
