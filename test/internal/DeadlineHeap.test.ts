import { assert, describe, it } from "@effect/vitest"
import { DeadlineHeap } from "../../src/internal/DeadlineHeap.ts"

describe("DeadlineHeap", () => {
  it("pops in deadline order", () => {
    const heap = new DeadlineHeap<string>()
    for (const [t, v] of [[5, "e"], [1, "a"], [3, "c"], [2, "b"], [4, "d"]] as const) heap.push(t, v)
    const out: Array<string> = []
    for (let e = heap.pop(); e !== undefined; e = heap.pop()) out.push(e.value)
    assert.deepStrictEqual(out, ["a", "b", "c", "d", "e"])
  })

  it("removes any entry through its handle, once, keeping the order of the rest", () => {
    let seed = 7
    const random = () => (seed = (seed * 1664525 + 1013904223) >>> 0) / 4294967296
    for (let round = 0; round < 50; round++) {
      const heap = new DeadlineHeap<number>()
      const entries = Array.from({ length: 40 }, (_, i) => heap.push(Math.floor(random() * 20), i))
      const removed = new Set<number>()
      for (const entry of entries) {
        if (random() < 0.5) {
          assert.isTrue(heap.remove(entry))
          assert.isFalse(heap.remove(entry))
          removed.add(entry.value)
        }
      }
      assert.strictEqual(heap.size, 40 - removed.size)
      const popped: Array<number> = []
      for (let e = heap.pop(); e !== undefined; e = heap.pop()) {
        assert.isFalse(removed.has(e.value))
        popped.push(e.atMs)
      }
      assert.deepStrictEqual(popped, [...popped].sort((a, b) => a - b))
    }
  })
})
