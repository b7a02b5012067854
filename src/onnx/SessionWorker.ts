/**
 * Worker-thread entry: one onnxruntime session for the life of the thread, served by
 * `SessionEndpoint` over `parentPort`. Started by `WorkerHost` with a `Protocol.ThreadStart` as
 * `workerData` (its config and the process's `DeviceLock`). Output buffers are transferred to the
 * host, not copied.
 *
 * @module SessionWorker
 */
import { parentPort, threadId, workerData } from "node:worker_threads"
import type * as Protocol from "./Protocol.ts"
import * as SessionEndpoint from "./SessionEndpoint.ts"

const port = parentPort
if (port === null) throw new Error("SessionWorker.ts must run in a worker thread")

const start = workerData as Protocol.ThreadStart
await SessionEndpoint.serve(start.config, {
  post: (message, transfer = []) => port.postMessage(message, transfer as Array<ArrayBuffer>),
  end: () => port.close(), // nothing else keeps the thread alive: it exits with code 0
  listen: (f) => port.on("message", f)
}, { exclusive: { lock: start.deviceLock, holder: threadId, slot: start.deviceSlot, providers: start.exclusiveProviders } })
