import { assert, describe, it } from "@effect/vitest"
import type * as Priority from "../src/Priority.ts"
import * as QueuePolicy from "../src/QueuePolicy.ts"

const aging: QueuePolicy.Aging = { High: 100, Normal: 100, Low: 50 }

describe("QueuePolicy.effectiveRank", () => {
  const table: ReadonlyArray<readonly [Priority.Priority, number, QueuePolicy.Aging | undefined, number]> = [
    ["Low", 1_000_000, undefined, 3],
    ["Low", 49, aging, 3],
    ["Low", 50, aging, 2],
    ["Low", 100, aging, 1],
    ["Low", 150, aging, 0],
    ["Low", 10_000, aging, 0],
    ["Normal", 99, aging, 2],
    ["Normal", 100, aging, 1],
    ["High", 100, aging, 0],
    ["Critical", 10_000, aging, 0],
    ["Normal", 10_000, { Low: 10 }, 2],
    ["Low", 10, { Low: 0 }, 3],
    ["Low", 1, { Low: 1 }, 2],
    ["Low", 0.5, { Low: 0.25 }, 1]
  ]
  for (const [priority, waited, a, rank] of table) {
    it(`${priority} after ${waited} ms with ${a === undefined ? "no aging" : JSON.stringify(a)} is served at rank ${rank}`, () => {
      assert.strictEqual(QueuePolicy.effectiveRank(a, priority, waited), rank)
    })
  }
})

describe("QueuePolicy.choose", () => {
  it("without aging takes the highest level's head", () => {
    assert.strictEqual(QueuePolicy.choose(undefined, [{ priority: "High", enqueuedAtMs: 5 }, { priority: "Low", enqueuedAtMs: 0 }], 1000), 0)
  })
  it("an aged Low head beats a fresh High head once it reaches the same rank, being older", () => {
    const heads = [{ priority: "High", enqueuedAtMs: 40 }, { priority: "Low", enqueuedAtMs: 0 }] as const
    assert.strictEqual(QueuePolicy.choose(aging, heads, 99), 0, "Low at 99 ms is served as Normal")
    assert.strictEqual(QueuePolicy.choose(aging, heads, 100), 1, "at 100 ms it competes as High, and is older")
  })
  it("between equal effective ranks the older head goes first", () => {
    const heads = [{ priority: "Normal", enqueuedAtMs: 10 }, { priority: "Low", enqueuedAtMs: 0 }] as const
    assert.strictEqual(QueuePolicy.choose(aging, heads, 60), 1)
  })
})
