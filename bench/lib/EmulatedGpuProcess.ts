/**
 * A session process (as `SessionProcess.ts`) whose runs cost what a WebGPU run cost on the H200
 * host, on a device that every such process shares: each run takes the device token from the FIFO
 * named by `EMULATED_GPU_FIFO` (one byte: one run on the device at a time, across processes), runs
 * its session (a cheap model with the real one's signature) for the outputs, waits out the rest of
 * `EmulatedGpu.costMs(rows)` without using the CPU (as a thread blocked in a GPU read-back does),
 * and gives the token back as it replies. It reports `deviceUsed` "webgpu" (so the pool applies a
 * GPU model's defaults) and a run time from the token taken to the reply (the wait for the token
 * not included). A process killed while it holds the token loses it: the benchmark gives
 * deadlines no kill can meet.
 */
import * as Fs from "node:fs"
import * as ProcessPort from "../../src/onnx/ProcessPort.ts"
import * as SessionEndpoint from "../../src/onnx/SessionEndpoint.ts"
import { costMs } from "./emulatedGpu.ts"
import { reportingWebGpu } from "../../test/fixtures/WebGpuPort.ts"

const fifoPath = process.env["EMULATED_GPU_FIFO"]
if (fifoPath === undefined) throw new Error("EmulatedGpuProcess.ts needs EMULATED_GPU_FIFO")
const fifo = Fs.openSync(fifoPath, "r+")
const token = Buffer.alloc(1)
const sleeper = new Int32Array(new SharedArrayBuffer(4))
/** The job on the device: its id, when it took the token, and what it costs. */
let onDevice: { readonly id: number; readonly startMs: number; readonly costMs: number } | undefined

/** Waits out the job's emulated cost, gives the token back, and says how long the device was held. */
const leaveDevice = (id: number): number | undefined => {
  if (onDevice?.id !== id) return undefined
  const left = onDevice.startMs + onDevice.costMs - performance.now()
  if (left > 0) Atomics.wait(sleeper, 0, 0, left)
  const heldMs = performance.now() - onDevice.startMs
  onDevice = undefined
  Fs.writeSync(fifo, token)
  return heldMs
}

const emulated = reportingWebGpu(ProcessPort.make({ shm: process.argv[2] === "shm" }), leaveDevice)

const intercept: SessionEndpoint.Intercept = (message) => {
  const rows = Object.values(message.inputs)[0]?.dims[0] ?? 1
  Fs.readSync(fifo, token, 0, 1, null) // blocks until the device is free
  onDevice = { id: message.id, startMs: performance.now(), costMs: costMs(rows) }
  return false // the session computes the outputs, on the device's time
}

await SessionEndpoint.serve(await ProcessPort.receiveConfig(), emulated, { intercept })
