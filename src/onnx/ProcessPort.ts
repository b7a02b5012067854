/**
 * The `SessionEndpoint.Port` of a child process: its IPC channel (`serialization: "advanced"`).
 *
 * - The process exits when the channel closes: after `end` once every posted message is out,
 *   or when the parent goes away (the channel's other end closes), so an instance never
 *   outlives its host by more than the run in hand.
 * - An uncaught exception is reported as `fatal` and the process exits with code 1.
 * - SIGINT and SIGTERM sent to the whole process group (Ctrl-C in a terminal, systemd's default
 *   stop, `kill -- -PGID`) reach the child too: while the host is there the child ignores them,
 *   since the host drains (the child's run finishes) and then closes it, and the host kills its
 *   children (SIGKILL) whenever it exits without that (`ProcessHost`); with the host gone the
 *   child exits. SIGHUP, which the server does not drain on, keeps its default: it ends the child.
 *
 * @module ProcessPort
 */
import * as Os from "node:os"
import type * as Protocol from "./Protocol.ts"
import type * as SessionEndpoint from "./SessionEndpoint.ts"
import * as ShmChannel from "./ShmChannel.ts"

/**
 * The host's first message to a session process: its config. It goes over the IPC channel, not
 * on the command line, where Linux refuses one argument over 128 KiB (`spawn E2BIG`): a warm-up
 * plan of many inputs and samples can be that large.
 */
export interface Start {
  readonly _tag: "start"
  readonly config: Protocol.WorkerConfig
}

/**
 * The config the host sends first (`Start`). Call after `make` (whose handlers end the process
 * if the host goes away meanwhile); Node keeps a message that arrives before a listener.
 */
export const receiveConfig = (): Promise<Protocol.WorkerConfig> =>
  new Promise((resolve) => process.once("message", (message: Start) => resolve(message.config)))

/**
 * Sets up the process's exit handlers and returns its port. Call once, in a forked child. With
 * `shm`, the host passed `ShmChannel`'s files as descriptors 4 and 5: placed inputs are read from
 * one, and the reply to a job whose inputs came that way goes through the other when worth it.
 */
export const make = (options: { readonly shm?: boolean } = {}): SessionEndpoint.Port => {
  const send = process.send?.bind(process)
  if (send === undefined) throw new Error("a session process must run as a child process with an IPC channel")
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
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      if (!process.connected) process.exit(128 + Os.constants.signals[signal])
    })
  }
  process.on("uncaughtException", (e) => {
    post({ _tag: "fatal", error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) }, () => process.exit(1))
    setTimeout(() => process.exit(1), 1_000).unref() // the parent may not be reading
  })
  /** Jobs whose inputs came through shared memory and have not been answered. */
  const placedJobs = new Set<number>()
  const reply = (message: Protocol.FromWorker) => {
    const id = ShmChannel.endsJob(message)
    if (options.shm !== true || id === undefined || !placedJobs.delete(id)) return post(message)
    let placed: Protocol.FromWorker | undefined
    try {
      placed = ShmChannel.placeOutputs(ShmChannel.childOutputFd, message)
    } catch {
      placed = undefined // shared memory full: the pipe still works
    }
    post(placed ?? message)
  }
  return {
    post: reply,
    end: () => {
      ending = true
      if (pending === 0) disconnect()
    },
    listen: (f) =>
      process.on("message", (message: Protocol.ToWorker) => {
        if (message._tag !== "run" && message._tag !== "runGroup") return f(message)
        if (message.placed === undefined) return f(message)
        let received: Protocol.ToWorker
        try {
          received = ShmChannel.takeInputs(ShmChannel.childInputFd, message)
        } catch (e) {
          return post({ _tag: "failed", id: message.id, error: e instanceof Error ? e.message : String(e) })
        }
        placedJobs.add(message.id)
        f(received)
      })
  }
}
