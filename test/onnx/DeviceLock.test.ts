import { assert, describe, it } from "@effect/vitest"
import { Worker } from "node:worker_threads"
import * as DeviceLock from "../../src/onnx/DeviceLock.ts"

const workerUrl = new URL("../fixtures/DeviceLockWorker.ts", import.meta.url)

const exited = (w: Worker): Promise<number> => new Promise((resolve, reject) => {
  w.on("error", reject)
  w.on("exit", resolve)
})

/** `threads` workers taking `rounds` turns each; [turns taken, turns that saw another thread inside]. */
const contend = async (threads: number, rounds: number, stayMs: number, locked: boolean): Promise<readonly [number, number]> => {
  const lock = DeviceLock.make()
  const state = new Int32Array(new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT))
  const workers = Array.from({ length: threads }, () => new Worker(workerUrl, { workerData: { lock, state, rounds, stayMs, locked, hold: false } }))
  const codes = await Promise.all(workers.map(exited))
  assert.deepStrictEqual(codes, workers.map(() => 0))
  assert.isUndefined(DeviceLock.holder(lock), "free after every turn")
  return [state[0]!, state[2]!]
}

describe("DeviceLock", () => {
  it("is taken and freed by its holder only", () => {
    const lock = DeviceLock.make()
    assert.isUndefined(DeviceLock.holder(lock))
    DeviceLock.acquire(lock, 0)
    assert.strictEqual(DeviceLock.holder(lock), 0)
    assert.throws(() => DeviceLock.acquire(lock, 0), /already holds it/)
    assert.isFalse(DeviceLock.releaseHeldBy(lock, 7), "another thread cannot free it")
    assert.strictEqual(DeviceLock.holder(lock), 0)
    assert.isTrue(DeviceLock.releaseHeldBy(lock, 0))
    assert.isUndefined(DeviceLock.holder(lock))
    assert.isFalse(DeviceLock.releaseHeldBy(lock, 0), "freeing a free lock does nothing")
  })

  it("withLock frees the lock when its function throws or rejects", async () => {
    const lock = DeviceLock.make()
    try {
      await DeviceLock.withLock(lock, 3, () => {
        throw new Error("thrown")
      })
      assert.fail("withLock should have rejected")
    } catch (e) {
      assert.match(String(e), /thrown/)
    }
    assert.isUndefined(DeviceLock.holder(lock))
    const rejected = await DeviceLock.withLock(lock, 3, () => Promise.reject(new Error("rejected"))).catch((e: Error) => e.message)
    assert.strictEqual(rejected, "rejected")
    assert.isUndefined(DeviceLock.holder(lock))
    assert.strictEqual(await DeviceLock.withLock(lock, 3, () => 42), 42)
  })

  it("lets one worker thread in at a time; without it, threads overlap (the control)", async () => {
    // each turn stays up to 20 ms waiting to see another thread inside
    const [turns, overlaps] = await contend(3, 12, 20, true)
    assert.strictEqual(turns, 36)
    assert.strictEqual(overlaps, 0, "no turn saw another thread inside")
    const [controlTurns, controlOverlaps] = await contend(3, 12, 20, false)
    assert.strictEqual(controlTurns, 36)
    assert.isAbove(controlOverlaps, 0, "unlocked, the threads' turns overlap: the check can fail")
  })

  it("a thread that exits holding the lock keeps it until the host frees it by thread id", async () => {
    const lock = DeviceLock.make()
    const state = new Int32Array(new SharedArrayBuffer(12))
    const w = new Worker(workerUrl, { workerData: { lock, state, rounds: 0, stayMs: 0, locked: true, hold: true } })
    const threadId = w.threadId
    assert.strictEqual(await exited(w), 0)
    assert.strictEqual(DeviceLock.holder(lock), threadId, "the dead thread still holds it")
    assert.isTrue(DeviceLock.releaseHeldBy(lock, threadId))
    assert.strictEqual(await DeviceLock.withLock(lock, 0, () => "taken"), "taken")
  })
})
