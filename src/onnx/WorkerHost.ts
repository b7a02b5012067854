/**
 * The thread `Transport` of `InstancePool`: each instance is a `node:worker_threads` worker running
 * `SessionWorker.ts`, inside this process. The cheapest hop, but a native crash in onnxruntime
 * takes the whole process down, and a run cannot be stopped once started: `worker.terminate()`
 * while a thread is inside `session.run` aborts the process (exit 134), and so does the
 * process's exit with the run still going, so no safer stop exists for a thread. So deadlines
 * are never enforced here (`RunOptions.timeout` is ignored), and `terminate()` is used only
 * after `closeTimeout`, on a loaded worker that holds no job: one still running a job, or still
 * loading its session, is left to finish (`killMidRunAbortsProcess`, `InstancePool`'s
 * `workersLeftRunning`).
 * Output arrays are transferred from the worker, not copied. Sessions on a device that must not
 * run two sessions at once in a process (WebGPU) take turns through this process's `DeviceLock`,
 * which the host frees when a worker exits holding it.
 *
 * @module WorkerHost
 */
import { Worker } from "node:worker_threads"
import * as DeviceLock from "./DeviceLock.ts"
import * as InstancePool from "./InstancePool.ts"
import type * as Protocol from "./Protocol.ts"

/** The worker entry, run directly by Node 22 (type stripping). */
export const workerUrl: URL = new URL("./SessionWorker.ts", import.meta.url)

/** The lock every thread instance of this process shares (one WebGPU context per process). */
export const deviceLock: DeviceLock.DeviceLock = DeviceLock.make()

/** The lock's waiting slots held by live workers. */
const slotsInUse = new Set<number>()

const takeSlot = (): number => {
  for (let s = 0; s < DeviceLock.slots; s++) {
    if (!slotsInUse.has(s)) {
      slotsInUse.add(s)
      return s
    }
  }
  return -1
}

/**
 * Instances as worker threads running `entry` (a module that serves `SessionEndpoint`; default
 * `SessionWorker.ts`). `exclusiveProviders`: whose sessions take turns (default
 * `DeviceLock.exclusiveProviders`; tests name "cpu" to watch the turns without a GPU).
 */
export const transportFor = (entry: URL, options: { readonly exclusiveProviders?: ReadonlyArray<string> } = {}): InstancePool.Transport => ({
  isolation: "thread",
  noun: "worker",
  spanPrefix: "WorkerHost",
  killMidRunAbortsProcess: true,
  spawn: (config, events) => {
    const deviceSlot = takeSlot()
    const workerData: Protocol.ThreadStart = { config, deviceLock, deviceSlot, exclusiveProviders: options.exclusiveProviders ?? DeviceLock.exclusiveProviders }
    const worker = new Worker(entry, { workerData, name: `session ${config.modelId}@${config.version}` })
    const threadId = worker.threadId
    worker.on("message", events.message)
    worker.on("error", (e) => events.error(InstancePool.errorText(e)))
    worker.on("messageerror", (e) => events.messageError(InstancePool.errorText(e)))
    worker.on("exit", (code) => {
      // A worker that died mid-run (or was terminated while it held the lock) cannot free it: the other threads would wait forever.
      DeviceLock.releaseHeldBy(deviceLock, threadId)
      if (deviceSlot >= 0) {
        DeviceLock.clearSlot(deviceLock, deviceSlot)
        slotsInUse.delete(deviceSlot)
      }
      events.exit(`exit code ${code}`)
    })
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
