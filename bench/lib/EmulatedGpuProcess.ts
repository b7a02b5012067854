/**
 * A session process (as `SessionProcess.ts`) whose runs cost what a WebGPU run cost on the H200
 * host, on a device that every such process shares: each run first takes the device token from the
 * FIFO named by `EMULATED_GPU_FIFO` (one byte: one run on the device at a time, across processes),
 * waits `EmulatedGpu.costMs(rows)` without using the CPU (as a thread blocked in a GPU read-back
 * does), gives the token back, then runs its session (a cheap model with the real one's signature)
 * for the outputs. It reports `deviceUsed` "webgpu" (so the pool applies a GPU model's defaults)
 * and a run time that includes the emulated device time, but not the wait for the token.
 * A process killed while it holds the token loses it: the benchmark gives deadlines no kill can meet.
 */
import * as Fs from "node:fs"
import * as ProcessPort from "../../src/onnx/ProcessPort.ts"
import type * as Protocol from "../../src/onnx/Protocol.ts"
import * as SessionEndpoint from "../../src/onnx/SessionEndpoint.ts"
import { costMs } from "./emulatedGpu.ts"

const fifoPath = process.env["EMULATED_GPU_FIFO"]
if (fifoPath === undefined) throw new Error("EmulatedGpuProcess.ts needs EMULATED_GPU_FIFO")
const fifo = Fs.openSync(fifoPath, "r+")
const token = Buffer.alloc(1)
const sleeper = new Int32Array(new SharedArrayBuffer(4))
/** Emulated device ms of each job in hand, added to its reply's `runMs`. */
const deviceMs = new Map<number, number>()

const port = ProcessPort.make({ shm: process.argv[3] === "shm" })
const emulated: SessionEndpoint.Port = {
  ...port,
  post: (message, transfer) => {
    let out: Protocol.FromWorker = message
    if (message._tag === "ready") out = { ...message, deviceUsed: "webgpu", fallbacks: [] }
    else if (message._tag === "done") {
      out = { ...message, deviceUsed: "webgpu", runMs: message.runMs + (deviceMs.get(message.id) ?? 0) }
      deviceMs.delete(message.id)
    } else if (message._tag === "failed") deviceMs.delete(message.id)
    port.post(out, transfer)
  }
}

const intercept: SessionEndpoint.Intercept = (message) => {
  const rows = Object.values(message.inputs)[0]?.dims[0] ?? 1
  Fs.readSync(fifo, token, 0, 1, null) // blocks until the device is free
  const t0 = performance.now()
  Atomics.wait(sleeper, 0, 0, costMs(rows))
  deviceMs.set(message.id, performance.now() - t0)
  Fs.writeSync(fifo, token)
  return false // the session computes the outputs
}

await SessionEndpoint.serve(JSON.parse(process.argv[2] ?? "null") as Protocol.WorkerConfig, emulated, { intercept })
