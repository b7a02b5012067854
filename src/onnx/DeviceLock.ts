/**
 * One run at a time on a device whose sessions must not run concurrently in one process, across
 * the worker threads of that process.
 *
 * Why: onnxruntime's WebGPU provider keeps one WebGPU context per process, shared by every WebGPU
 * session in it, and two `run`s at once from two threads corrupt its command recording: on an
 * NVIDIA H200 host (onnxruntime-node 1.30, Dawn over Vulkan) two worker threads with a WebGPU
 * session each died with SIGSEGV within a second, after Dawn's "[CommandEncoder] is already
 * finished". The upstream report (microsoft/onnxruntime#32561, Linux/Vulkan; #27592 and #31627 on
 * macOS/Metal) finds the same, and that runs one after another (created together or not) do not
 * crash. So `SessionEndpoint` holds this lock around every create, run and release of a session on
 * an `exclusiveProviders` device when it runs in a thread (a child process has its own context).
 *
 * Mechanism: an `Int32Array` over a `SharedArrayBuffer` (shared with each worker through
 * `workerData`); its word is 0 when free, else the holder's `threadId` + 1. A waiter blocks its
 * thread in `Atomics.wait`, as the run it waits for would (`worker.terminate()` still ends it). Not
 * fair: a thread that releases and asks again may win again; each instance holds at most the two
 * jobs the pool hands it, so no instance waits for more than two of another's runs in a row.
 * A holder that dies holding it (a worker that exits or is terminated mid-run) cannot release it:
 * the host does, on the worker's exit (`releaseHeldBy`).
 *
 * @module DeviceLock
 */

/** The lock's shared word. */
export type DeviceLock = Int32Array<SharedArrayBuffer>

/** The providers whose sessions take turns within one process: WebGPU (see the module doc). */
export const exclusiveProviders: ReadonlyArray<string> = ["webgpu"]

/** A free lock, to share with worker threads through `workerData`. */
export const make = (): DeviceLock => new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT))

const tagOf = (holder: number): number => holder + 1

/** Blocks this thread until the lock is free, then takes it for `holder` (the caller's `threadId`). */
export const acquire = (lock: DeviceLock, holder: number): void => {
  const tag = tagOf(holder)
  while (true) {
    const seen = Atomics.compareExchange(lock, 0, 0, tag)
    if (seen === 0) return
    if (seen === tag) throw new Error(`DeviceLock: thread ${holder} already holds it`)
    Atomics.wait(lock, 0, seen)
  }
}

/** Frees the lock if `holder` holds it, waking one waiter; true when it did. */
export const releaseHeldBy = (lock: DeviceLock, holder: number): boolean => {
  if (Atomics.compareExchange(lock, 0, tagOf(holder), 0) !== tagOf(holder)) return false
  Atomics.notify(lock, 0, 1)
  return true
}

/** The thread holding the lock, or undefined when it is free. */
export const holder = (lock: DeviceLock): number | undefined => {
  const tag = Atomics.load(lock, 0)
  return tag === 0 ? undefined : tag - 1
}

/** Runs `f` holding the lock as `holder`, releasing it when `f` settles (fulfilled or rejected). */
export const withLock = async <A>(lock: DeviceLock, holder: number, f: () => A | Promise<A>): Promise<A> => {
  acquire(lock, holder)
  try {
    return await f()
  } finally {
    releaseHeldBy(lock, holder)
  }
}
