/**
 * An emulated GPU for benchmarks on machines without one: the cost of a WebGPU run of the
 * 25M-parameter MLP (1024-4096-4096-1000) as measured on an NVIDIA H200 host
 * (`/work/shared/gpu/README.md`: 1.198 ms for 1 row, 1.477 for 64, 2.448 for 256, 6.957 for 1,024;
 * p50 of 20 runs, one session), as a line fitted to the first three, and the process transport
 * whose instances pay it on one device they share (`EmulatedGpuProcess.ts`).
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as ProcessHost from "../../src/onnx/ProcessHost.ts"
import type * as InstancePool from "../../src/onnx/InstancePool.ts"

/** Fixed cost of a run (ms): dispatch and read-back. */
export const fixedMs = 1.15
/** Cost of each row (ms). */
export const perRowMs = 0.0051

/** Emulated device time of a run of `rows` rows (ms): 1.155 for 1 row, 1.48 for 64, 2.46 for 256. */
export const costMs = (rows: number): number => fixedMs + perRowMs * rows

/** Rows per second of back-to-back runs of `rows` rows. */
export const rowsPerSec = (rows: number): number => (rows * 1000) / costMs(rows)

export interface Device {
  /** The transport for `OnnxModelPool.Options.transports.process`. */
  readonly transport: InstancePool.Transport
  readonly remove: () => void
}

/**
 * One emulated device: a FIFO holding one token byte, named to the instances through the
 * environment (children inherit it). Only one device per process at a time.
 */
export const open = (): Device => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "emulated-gpu-"))
  const fifoPath = Path.join(dir, "device")
  execFileSync("mkfifo", [fifoPath])
  const fd = Fs.openSync(fifoPath, "r+") // held open so that the token stays in the FIFO
  Fs.writeSync(fd, Buffer.of(1))
  process.env["EMULATED_GPU_FIFO"] = fifoPath
  return {
    transport: ProcessHost.transportFor(new URL("./EmulatedGpuProcess.ts", import.meta.url)),
    remove: () => {
      delete process.env["EMULATED_GPU_FIFO"]
      Fs.closeSync(fd)
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}
