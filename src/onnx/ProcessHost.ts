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
 * in memory), a Node process per instance (start-up and memory), and a replacement start after
 * each kill during which the model has one instance fewer. See docs/isolation.md for figures.
 *
 * Children inherit stdout and stderr. They exit when the IPC channel closes, so they do not
 * outlive a parent that dies without closing them (beyond the run in hand).
 *
 * @module ProcessHost
 */
import { fork } from "node:child_process"
import { fileURLToPath } from "node:url"
import * as InstancePool from "./InstancePool.ts"
import type * as Protocol from "./Protocol.ts"

/** The child process entry, run directly by Node 22 (type stripping). */
export const processUrl: URL = new URL("./SessionProcess.ts", import.meta.url)

/** Instances as child processes running `entry` (a module that serves `SessionEndpoint` over IPC; default `SessionProcess.ts`). */
export const transportFor = (entry: URL): InstancePool.Transport => ({
  isolation: "process",
  noun: "session process",
  spanPrefix: "ProcessHost",
  spawn: (config, events) => {
    const child = fork(fileURLToPath(entry), [JSON.stringify(config)], {
      execPath: process.execPath,
      execArgv: [],
      serialization: "advanced",
      stdio: ["ignore", "inherit", "inherit", "ipc"]
    })
    child.on("message", (message: Protocol.FromWorker) => events.message(message))
    child.on("error", (e) => {
      events.error(InstancePool.errorText(e))
      if (child.pid === undefined) events.exit("could not start") // a failed spawn may not emit "exit"
    })
    // "close", not "exit": it follows the end of the IPC channel, so every message sent before the end has arrived
    child.on("close", (code, signal) => events.exit(signal === null ? `exit code ${code}` : `signal ${signal}`))
    return {
      send: (message) => {
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
