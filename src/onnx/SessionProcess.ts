/**
 * Child-process entry: one onnxruntime session for the life of the process, served by
 * `SessionEndpoint` over the IPC channel (`serialization: "advanced"`, so typed arrays cross
 * as such). Started by `ProcessHost` with a JSON `Protocol.WorkerConfig` as its only argument.
 *
 * - It exits when the channel closes: after `close` (session released, `closed` sent), after a
 *   failed load (`loadFailed` sent), or when the parent goes away (the channel's other end
 *   closes), so an instance never outlives its host by more than the run in hand.
 * - An uncaught exception is reported as `fatal` and the process exits with code 1.
 * - Native crashes (SIGSEGV, abort) end only this process; the host sees the signal.
 *
 * @module SessionProcess
 */
import type * as Protocol from "./Protocol.ts"
import * as SessionEndpoint from "./SessionEndpoint.ts"

const send = process.send?.bind(process)
if (send === undefined) throw new Error("SessionProcess.ts must run as a child process with an IPC channel")

let pending = 0
let ending = false

const disconnect = () => {
  if (process.connected) process.disconnect()
}

const post = (message: Protocol.FromWorker, after?: () => void) => {
  pending++
  send(message, undefined, {}, () => {
    pending--
    after?.()
    if (ending && pending === 0) disconnect()
  })
}

// The parent closed the channel (or died): nothing is left to serve.
process.on("disconnect", () => process.exit(0))

process.on("uncaughtException", (e) => {
  post({ _tag: "fatal", error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) }, () => process.exit(1))
  setTimeout(() => process.exit(1), 1_000).unref() // the parent may not be reading
})

await SessionEndpoint.serve(JSON.parse(process.argv[2] ?? "null") as Protocol.WorkerConfig, {
  post: (message) => post(message),
  end: () => {
    ending = true
    if (pending === 0) disconnect()
  },
  listen: (f) => process.on("message", f as (message: unknown) => void)
})
