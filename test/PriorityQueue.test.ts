import { assert, describe, it } from "@effect/vitest"
import * as Priority from "../src/Priority.ts"
import * as PriorityQueue from "../src/PriorityQueue.ts"

describe("PriorityQueue", () => {
  it("takes the highest level first and keeps FIFO order within a level", () => {
    const queue = PriorityQueue.make<string>(10)
    queue.offer("low-1", Priority.Low)
    queue.offer("high-1", Priority.High)
    queue.offer("low-2", Priority.Low)
    queue.offer("critical-1", Priority.Critical)
    queue.offer("high-2", Priority.High)
    const order = Array.from({ length: 5 }, () => queue.poll())
    assert.deepStrictEqual(order, ["critical-1", "high-1", "high-2", "low-1", "low-2"])
    assert.isUndefined(queue.poll())
  })

  it("refuses an offer when all levels together hold capacity entries", () => {
    const queue = PriorityQueue.make<number>(3)
    assert.isDefined(queue.offer(1, Priority.Low))
    assert.isDefined(queue.offer(2, Priority.Critical))
    assert.isDefined(queue.offer(3, Priority.Normal))
    assert.isUndefined(queue.offer(4, Priority.Critical))
    assert.strictEqual(queue.size, 3)
    queue.poll()
    assert.isDefined(queue.offer(4, Priority.Critical), "room again after a poll")
  })

  it("removes a cancelled entry through its handle, once", () => {
    const queue = PriorityQueue.make<string>(10)
    queue.offer("a", Priority.Normal)
    const b = queue.offer("b", Priority.Normal)!
    queue.offer("c", Priority.Normal)
    assert.isTrue(queue.remove(b))
    assert.isFalse(queue.remove(b))
    assert.isFalse(b.queued)
    assert.deepStrictEqual([queue.poll(), queue.poll(), queue.poll()], ["a", "c", undefined])
    assert.deepStrictEqual(queue.stats(), { critical: 0, high: 0, normal: 0, low: 0, total: 0 })
  })

  it("removing the only entry of a level leaves the level empty and usable", () => {
    const queue = PriorityQueue.make<string>(10)
    const only = queue.offer("x", Priority.High)!
    queue.remove(only)
    queue.offer("y", Priority.High)
    assert.strictEqual(queue.poll(), "y")
  })

  it("does not remove an entry that was already polled", () => {
    const queue = PriorityQueue.make<string>(10)
    const a = queue.offer("a", Priority.Low)!
    assert.strictEqual(queue.poll(), "a")
    assert.isFalse(queue.remove(a))
    assert.strictEqual(queue.size, 0)
  })

  it("counts queued entries by level", () => {
    const queue = PriorityQueue.make<number>(10)
    for (const [i, p] of (["Critical", "High", "High", "Normal", "Low", "Low", "Low"] as const).entries()) queue.offer(i, p)
    assert.deepStrictEqual(queue.stats(), { critical: 1, high: 2, normal: 1, low: 3, total: 7 })
  })

  it("is a single FIFO when priorities are disabled, still counting by level", () => {
    const queue = PriorityQueue.make<string>(10, false)
    queue.offer("low", Priority.Low)
    queue.offer("critical", Priority.Critical)
    queue.offer("normal", Priority.Normal)
    assert.deepStrictEqual(queue.stats(), { critical: 1, high: 0, normal: 1, low: 1, total: 3 })
    assert.deepStrictEqual([queue.poll(), queue.poll(), queue.poll()], ["low", "critical", "normal"])
  })

  it("takeWhere takes matching entries in dispatch order and leaves the rest", () => {
    const queue = PriorityQueue.make<string>(10)
    queue.offer("a-low", Priority.Low)
    queue.offer("b-high", Priority.High)
    queue.offer("a-high", Priority.High)
    queue.offer("a-critical", Priority.Critical)
    queue.offer("a-normal", Priority.Normal)
    assert.deepStrictEqual(queue.takeWhere((s) => s.startsWith("a"), 3), ["a-critical", "a-high", "a-normal"])
    assert.deepStrictEqual([...queue.values()], ["b-high", "a-low"])
    assert.strictEqual(queue.stats().total, 2)
  })

  it("takeWhere stops looking once full() says nothing more fits: a deep queue is not read to its end for every batch", () => {
    const queue = PriorityQueue.make<number>(2000)
    for (let i = 0; i < 1000; i++) queue.offer(i, Priority.Normal)
    let looked = 0
    let rows = 0
    const taken = queue.takeWhere((i) => {
      looked++
      if (i % 2 === 1) return false
      rows++
      return true
    }, Infinity, () => rows >= 4)
    assert.deepStrictEqual(taken, [0, 2, 4, 6])
    assert.strictEqual(looked, 7, "the entries up to the fourth taken, none after")
    assert.strictEqual(queue.size, 996)
  })

  it("peek shows the next entry without taking it", () => {
    const queue = PriorityQueue.make<string>(10)
    assert.isUndefined(queue.peek())
    queue.offer("n", Priority.Normal)
    queue.offer("c", Priority.Critical)
    assert.strictEqual(queue.peek()?.value, "c")
    assert.strictEqual(queue.size, 2)
  })

  it("with aging, a Low entry that waited past its bounds is served before newer High entries", () => {
    const queue = PriorityQueue.make<string>(10, true, { Low: 100 })
    queue.offer("low", Priority.Low, 0)
    queue.offer("high-1", Priority.High, 120)
    queue.offer("high-2", Priority.High, 130)
    assert.strictEqual(queue.peek(150)?.value, "high-1", "at 150 ms Low is served as Normal: High goes first")
    assert.strictEqual(queue.poll(250), "low", "at 250 ms Low competes as High and is the oldest")
    assert.deepStrictEqual([queue.poll(250), queue.poll(250)], ["high-1", "high-2"])
  })

  it("firstWhere finds the entry poll would take among the matching ones, aged, and leaves it in place", () => {
    const queue = PriorityQueue.make<string>(10, true, { Normal: 10, Low: 10 })
    queue.offer("x-critical", Priority.Critical, 0)
    queue.offer("a-low", Priority.Low, 1)
    queue.offer("a-normal", Priority.Normal, 40)
    const match = (s: string) => s.startsWith("a")
    assert.strictEqual(queue.firstWhere(match, 5)?.value, "a-normal", "not aged yet: strict levels")
    assert.strictEqual(queue.firstWhere(match, 50)?.value, "a-low", "Low has aged to Critical, Normal to High")
    assert.strictEqual(queue.size, 3)
    assert.isUndefined(queue.firstWhere((s) => s.startsWith("z"), 50))
  })

  it("with aging, firstWhere takes what peek would among equal effective ranks: the older head, and on an exact tie the higher level", () => {
    const older = PriorityQueue.make<string>(10, true, { Low: 10 })
    older.offer("high", Priority.High, 0)
    older.offer("low", Priority.Low, 5)
    // at 30 ms Low has waited 25 ms: served as High, but younger than the High head
    assert.strictEqual(older.peek(30)?.value, "high")
    assert.strictEqual(older.firstWhere(() => true, 30)?.value, "high")
    const tie = PriorityQueue.make<string>(10, true, { Low: 10 })
    tie.offer("high", Priority.High, 0)
    tie.offer("low", Priority.Low, 0)
    assert.strictEqual(tie.peek(20)?.value, "high")
    assert.strictEqual(tie.firstWhere(() => true, 20)?.value, "high")
  })

  it("takeWhere takes at most max entries, within a level and across levels", () => {
    const queue = PriorityQueue.make<string>(10)
    for (const value of ["n1", "n2", "n3"]) queue.offer(value, Priority.Normal)
    assert.deepStrictEqual(queue.takeWhere(() => true, 2), ["n1", "n2"])
    queue.offer("c", Priority.Critical)
    queue.offer("l", Priority.Low)
    assert.deepStrictEqual(queue.takeWhere(() => true, 2), ["c", "n3"])
    assert.deepStrictEqual([...queue.values()], ["l"])
  })

  it("with priorities disabled, stats count by level after a poll or a remove too", () => {
    const queue = PriorityQueue.make<string>(10, false)
    queue.offer("low", Priority.Low)
    const critical = queue.offer("critical", Priority.Critical)!
    queue.offer("normal", Priority.Normal)
    assert.strictEqual(queue.poll(), "low")
    assert.deepStrictEqual(queue.stats(), { critical: 1, high: 0, normal: 1, low: 0, total: 2 })
    queue.remove(critical)
    assert.deepStrictEqual(queue.stats(), { critical: 0, high: 0, normal: 1, low: 0, total: 1 })
  })

  it("ignores aging when priorities are disabled", () => {
    const queue = PriorityQueue.make<string>(10, false, { Low: 1 })
    queue.offer("a", Priority.Critical, 0)
    queue.offer("b", Priority.Low, 0)
    assert.strictEqual(queue.poll(1000), "a")
  })
})

describe("PriorityQueue.firstWhere agrees with peek", () => {
  it("firstWhere looks past a level's non-matching head to a later match in that level", () => {
    const queue = PriorityQueue.make<string>(10)
    queue.offer("x-normal", Priority.Normal)
    queue.offer("a-normal", Priority.Normal)
    queue.offer("a-low", Priority.Low)
    assert.strictEqual(queue.firstWhere((s) => s.startsWith("a"))?.value, "a-normal")
    const aged = PriorityQueue.make<string>(10, true, { Low: 10 })
    aged.offer("x-high", Priority.High, 0)
    aged.offer("a-high", Priority.High, 1)
    assert.strictEqual(aged.firstWhere((s) => s.startsWith("a"), 2)?.value, "a-high")
  })

  it("with aging, firstWhere prefers the older head among equal effective ranks even when it is in the lower level", () => {
    const queue = PriorityQueue.make<string>(10, true, { Low: 10 })
    queue.offer("low", Priority.Low, 0)
    queue.offer("high", Priority.High, 10)
    // at 25 ms Low has waited 25 ms: rank 3 - floor(25/10) = 1, the High head's rank, and it is older
    assert.strictEqual(queue.peek(25)?.value, "low")
    assert.strictEqual(queue.firstWhere(() => true, 25)?.value, "low")
  })
})
