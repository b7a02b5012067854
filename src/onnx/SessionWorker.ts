/**
 * Worker-thread entry: one onnxruntime session for the life of the thread, served by
 * `SessionEndpoint` over `parentPort`. Started by `WorkerHost` with a `Protocol.WorkerConfig`
 * as `workerData`. Output buffers are transferred to the host, not copied.
 *
 * @module SessionWorker
 */
import { parentPort, workerData } from "node:worker_threads"
import type * as Protocol from "./Protocol.ts"
import * as SessionEndpoint from "./SessionEndpoint.ts"

const port = parentPort
if (port === null) throw new Error("SessionWorker.ts must run in a worker thread")

await SessionEndpoint.serve(workerData as Protocol.WorkerConfig, {
  post: (message, transfer = []) => port.postMessage(message, transfer as Array<ArrayBuffer>),
  end: () => port.close(), // nothing else keeps the thread alive: it exits with code 0
  listen: (f) => port.on("message", f)
})
