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
 * Mechanism: an `Int32Array` over a `SharedArrayBuffer`, shared with each worker through
 * `workerData`. Word 0 is 0 when free, else the holder's `threadId` + 1; word 1 is the last holder;
 * then one word per waiting slot (`slots`), 1 while that slot's thread waits. A waiter blocks its
 * thread in `Atomics.wait`, as the run it waits for would (`worker.terminate()` still ends it).
 * Turns alternate: a thread that held the lock last and asks again while another thread waits
 * lets that one go first (waiting at most `yieldMs` for it to take the lock), so one busy model's
 * thread cannot keep another model's thread waiting.
 * A thread that dies holding the lock or marked waiting cannot undo it: the host does, on the
 * worker's exit (`releaseHeldBy`, `clearSlot`).
 *
 * @module DeviceLock
 */

/** The lock's shared words. */
export type DeviceLock = Int32Array<SharedArrayBuffer>

/** The providers whose sessions take turns within one process: WebGPU (see the module doc). */
export const exclusiveProviders: ReadonlyArray<string> = ["webgpu"]

/** Threads that can mark themselves waiting (and so be let first); a thread without a slot still takes turns, unannounced. */
export const slots = 256

/** Longest a thread that held the lock last waits for a waiting thread to take it first (ms). */
export const yieldMs = 5

const holderWord = 0
const lastWord = 1
const firstSlotWord = 2

/** A free lock, to share with worker threads through `workerData`. */
export const make = (): DeviceLock => new Int32Array(new SharedArrayBuffer((firstSlotWord + slots) * Int32Array.BYTES_PER_ELEMENT))

const tagOf = (holder: number): number => holder + 1

const othersWaiting = (lock: DeviceLock, slot: number | undefined): boolean => {
  for (let s = 0; s < slots; s++) {
    if (s !== slot && Atomics.load(lock, firstSlotWord + s) === 1) return true
  }
  return false
}

/**
 * Blocks this thread until the lock is free, then takes it for `holder` (the caller's
 * `threadId`). `slot` (0 to `slots` - 1, one per live thread; the host assigns them) lets the
 * thread be seen waiting, so that the last holder lets it go first (waiting at most
 * `yieldWithinMs` for it).
 */
export const acquire = (lock: DeviceLock, holder: number, slot?: number, yieldWithinMs: number = yieldMs): void => {
  const tag = tagOf(holder)
  const announced = slot !== undefined && slot >= 0 && slot < slots
  if (announced) Atomics.store(lock, firstSlotWord + slot, 1)
  try {
    if (Atomics.load(lock, lastWord) === tag && othersWaiting(lock, slot)) Atomics.wait(lock, lastWord, tag, yieldWithinMs)
    while (true) {
      const seen = Atomics.compareExchange(lock, holderWord, 0, tag)
      if (seen === 0) break
      if (seen === tag) throw new Error(`DeviceLock: thread ${holder} already holds it`)
      Atomics.wait(lock, holderWord, seen)
    }
  } finally {
    if (announced) Atomics.store(lock, firstSlotWord + slot, 0)
  }
  if (Atomics.exchange(lock, lastWord, tag) !== tag) Atomics.notify(lock, lastWord)
}

/**
 * Frees the lock if `holder` holds it, waking every waiter (one takes it, the others wait again);
 * true when it did. Waking one alone could lose the wake-up: a waiter terminated between its wake
 * and its take (a worker stopped at the close timeout) would leave the others asleep on a free lock.
 */
export const releaseHeldBy = (lock: DeviceLock, holder: number): boolean => {
  if (Atomics.compareExchange(lock, holderWord, tagOf(holder), 0) !== tagOf(holder)) return false
  Atomics.notify(lock, holderWord)
  return true
}

/** Unmarks `slot` as waiting (its thread ended while it waited), so that no holder yields to it. */
export const clearSlot = (lock: DeviceLock, slot: number): void => {
  if (slot >= 0 && slot < slots) Atomics.store(lock, firstSlotWord + slot, 0)
}

/** The thread holding the lock, or undefined when it is free. */
export const holder = (lock: DeviceLock): number | undefined => {
  const tag = Atomics.load(lock, holderWord)
  return tag === 0 ? undefined : tag - 1
}

/** Runs `f` holding the lock as `holder` (waiting as `slot`, see `acquire`), releasing it when `f` settles (fulfilled or rejected). */
export const withLock = async <A>(lock: DeviceLock, holder: number, f: () => A | Promise<A>, slot?: number, yieldWithinMs?: number): Promise<A> => {
  acquire(lock, holder, slot, yieldWithinMs)
  try {
    return await f()
  } finally {
    releaseHeldBy(lock, holder)
  }
}
