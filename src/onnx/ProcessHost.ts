/**
 * The process `Transport` of `InstancePool`: each instance is a child process
 * (`child_process.fork` of `SessionProcess.ts`) speaking `Protocol` over its IPC channel with
 * `serialization: "advanced"` (V8 structured clone, so typed arrays cross as such).
 *
 * What it buys over threads (`WorkerHost`):
 * - a native crash or abort inside onnxruntime ends one child, not the server: its run fails
 *   with RunFailed and a replacement is started;
 * - deadlines bound CPU: a run given a `timeout` that is still running `killGrace` after it is
 *   killed with its process (SIGKILL takes effect in tens of milliseconds, even mid native run),
 *   failed with RunFailed and replaced;
 * - the close timeout ends a stuck instance with SIGKILL, which is safe (a thread's
 *   `terminate()` inside a run aborts the whole process).
 *
 * What it costs: a larger hop (inputs and outputs are serialized through a pipe, not cloned
 * in memory; tensors of 64 KiB and more cross through shared memory instead, `ShmChannel`), a
 * Node process per instance (start-up and memory), and a replacement start after each kill
 * during which the model has one instance fewer. See docs/isolation.md for figures.
 *
 * Children inherit stdout and stderr. They exit when the IPC channel closes, so they do not
 * outlive a parent that dies without closing them (beyond the run in hand), and this process
 * kills those still alive when it exits (they ignore a process group's SIGINT and SIGTERM while
 * it is there: `ProcessPort`).
 *
 * @module ProcessHost
 */
import { type ChildProcess, fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import * as InstancePool from "./InstancePool.ts"
import type * as Protocol from "./Protocol.ts"
import type * as ProcessPort from "./ProcessPort.ts"
import * as ShmChannel from "./ShmChannel.ts"

/**
 * The session processes alive, killed (SIGKILL) when this process exits: they ignore a process
 * group's SIGINT and SIGTERM while their host is there (`ProcessPort`), counting on its drain, so
 * an exit without one (`process.exit`; the server's forced exit calls `killSessionProcesses`)
 * must not leave them to finish their run reparented to init. (A host killed by a signal's
 * default action cannot do this; its children exit once the run in hand is over.)
 */
const alive = new Set<ChildProcess>()
let killOnExit = false
const track = (child: ChildProcess): void => {
  if (!killOnExit) {
    killOnExit = true
    process.on("exit", killSessionProcesses)
  }
  alive.add(child)
  child.once("exit", () => alive.delete(child))
}

/**
 * Kills (SIGKILL) every session process this process started that is still alive. For an exit
 * that runs no "exit" handler (ending by a signal's default action, as the server's forced exit
 * does) and must not leave them behind.
 */
export const killSessionProcesses = (): void => {
  for (const child of alive) child.kill("SIGKILL")
}

/** The child process entry, run directly by Node 22 (type stripping). */
export const processUrl: URL = new URL("./SessionProcess.ts", import.meta.url)

/**
 * Instances as child processes running `entry` (a module that serves `SessionEndpoint` over IPC;
 * default `SessionProcess.ts`). `sharedMemory: false` sends every tensor through the pipe.
 */
export const transportFor = (entry: URL, options: { readonly sharedMemory?: boolean } = {}): InstancePool.Transport => ({
  isolation: "process",
  noun: "session process",
  spanPrefix: "ProcessHost",
  spawn: (config, events) => {
    // Without /dev/shm (another OS, a container without it) every message goes through the pipe.
    const shm = options.sharedMemory === false ? undefined : ShmChannel.open()
    const child = fork(fileURLToPath(entry), shm === undefined ? [] : ["shm"], {
      execPath: process.execPath,
      execArgv: [],
      serialization: "advanced",
      stdio: ["ignore", "inherit", "inherit", "ipc", ...(shm === undefined ? [] : [shm.inputFd, shm.outputFd])]
    })
    track(child)
    // Its config first, over the channel (`ProcessPort.receiveConfig`): not on the command line, which Linux bounds.
    child.send({ _tag: "start", config } satisfies ProcessPort.Start)
    /** The job whose inputs are in shared memory: no other job's may be written there until it ends. */
    let placedJob: number | undefined
    child.on("message", (message: Protocol.FromWorker) => {
      if (shm !== undefined && ShmChannel.endsJob(message) === placedJob) placedJob = undefined
      let received = message
      if (shm !== undefined) {
        try {
          received = ShmChannel.takeOutputs(shm.outputFd, message)
        } catch (e) {
          received = { _tag: "failed", id: ShmChannel.endsJob(message) ?? -1, error: InstancePool.errorText(e) }
        }
      }
      events.message(received)
    })
    child.on("error", (e) => {
      events.error(InstancePool.errorText(e))
      if (child.pid === undefined) events.exit("could not start") // a failed spawn may not emit "exit"
    })
    // "close", not "exit": it follows the end of the IPC channel, so every message sent before the end has arrived
    child.on("close", (code, signal) => {
      shm?.close()
      events.exit(signal === null ? `exit code ${code}` : `signal ${signal}`)
    })
    return {
      send: (message) => {
        if (shm !== undefined && placedJob === undefined) {
          let placed: Protocol.ToWorker | undefined
          try {
            placed = ShmChannel.placeInputs(shm.inputFd, message)
          } catch {
            placed = undefined // shared memory full: the pipe still works
          }
          if (placed !== undefined) {
            placedJob = (placed as { readonly id: number }).id
            child.send(placed)
            return
          }
        }
        child.send(message)
      },
      kill: () => {
        child.kill("SIGKILL")
      },
      pid: child.pid
    }
  }
})

/** Instances as child processes. */
export const transport: InstancePool.Transport = transportFor(processUrl)
