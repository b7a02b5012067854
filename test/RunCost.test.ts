import { assert, describe, it } from "@effect/vitest"
import * as RunCost from "../src/RunCost.ts"

const close = (actual: number, expected: number, tolerance = 1e-6) =>
  assert.isTrue(Math.abs(actual - expected) <= tolerance, `${actual} is not within ${tolerance} of ${expected}`)

const fed = (runs: ReadonlyArray<readonly [number, number]>) => {
  const cost = RunCost.make()
  for (const [rows, ms] of runs) cost.observe(rows, ms)
  return cost
}

describe("RunCost", () => {
  it("predicts 0 before any run, and one run's time for any rows after it", () => {
    const cost = RunCost.make()
    assert.strictEqual(cost.predict(10), 0)
    cost.observe(4, 3)
    assert.strictEqual(cost.predict(1), 3)
    assert.strictEqual(cost.predict(100), 3)
  })

  it("recovers a fixed cost and a cost per row from runs of varying rows", () => {
    const cost = fed([1, 64, 8, 256, 32, 128, 2, 16].map((rows) => [rows, 1 + 0.0057 * rows] as const))
    close(cost.fixedMs, 1)
    close(cost.perRowMs, 0.0057)
    close(cost.predict(200), 1 + 0.0057 * 200)
  })

  it("follows a change in cost: recent runs outweigh old ones", () => {
    const rows = [1, 16, 4, 64, 8, 32]
    const cost = fed([...Array.from({ length: 60 }, (_, i) => [rows[i % 6]!, 2 + 0.1 * rows[i % 6]!] as const), ...Array.from({ length: 120 }, (_, i) => [rows[i % 6]!, 1 + 0.01 * rows[i % 6]!] as const)])
    close(cost.fixedMs, 1, 0.01)
    close(cost.perRowMs, 0.01, 0.001)
  })

  it("keeps the last per-row cost while runs all carry the same rows", () => {
    const cost = fed([[1, 1.1], [101, 2.1], [1, 1.1], [101, 2.1]])
    close(cost.perRowMs, 0.01)
    for (let i = 0; i < 200; i++) cost.observe(50, 1.5)
    close(cost.perRowMs, 0.01, 1e-3)
    close(cost.predict(50), 1.5, 0.01)
  })

  it("never fits a negative fixed cost: a line through the origin instead", () => {
    const cost = fed([[10, 0.5], [100, 9.5], [10, 0.5], [100, 9.5]])
    assert.strictEqual(cost.fixedMs, 0)
    assert.isTrue(cost.perRowMs > 0)
    close(cost.predict(55), 55 * cost.perRowMs)
  })

  it("ignores runs with no rows or no usable time", () => {
    const cost = fed([[0, 1], [4, Number.NaN], [4, -1], [4, Number.POSITIVE_INFINITY]])
    assert.strictEqual(cost.runs, 0)
    assert.strictEqual(cost.predict(4), 0)
  })
})

describe("RunCost.ArrivalRate", () => {
  it("reads a steady stream's rate", () => {
    const rate = new RunCost.ArrivalRate()
    for (let t = 0; t <= 400; t += 0.5) rate.observe(2, t) // 4 rows a ms
    close(rate.rowsPerMs(400), 4, 0.1)
  })

  it("fades once arrivals stop: a third after one window, nearly nothing after five", () => {
    const rate = new RunCost.ArrivalRate()
    for (let t = 0; t <= 400; t += 1) rate.observe(1, t)
    const before = rate.rowsPerMs(400)
    close(rate.rowsPerMs(400 + RunCost.arrivalWindowMs), before / Math.E, 1e-9)
    assert.isTrue(rate.rowsPerMs(400 + 5 * RunCost.arrivalWindowMs) < before / 100)
  })
})

describe("RunCost.targetRows", () => {
  const gpuLike = fed([[1, 1.0057], [256, 1 + 0.0057 * 256]])
  const table: ReadonlyArray<readonly [string, RunCost.RunCost, number, number, number]> = [
    // what, cost, rows per ms, runners, expected
    ["nothing learned: 1", RunCost.make(), 50, 1, 1],
    ["nothing arriving: 1", gpuLike, 0, 1, 1],
    ["a trickle needs no batch", gpuLike, 0.1, 1, 1],
    ["10 rows a ms at 1 ms a run: ~13 rows keep the GPU 80% busy", gpuLike, 10, 1, 10 / (0.8 - 10 * 0.0057)],
    ["two runners share the load", gpuLike, 10, 2, 10 / (1.6 - 10 * 0.0057)],
    ["more than any run size keeps up with: the maximum", gpuLike, 200, 1, 256]
  ]
  for (const [what, cost, rowsPerMs, runners, expected] of table) {
    it(what, () => close(RunCost.targetRows(cost, rowsPerMs, runners, 256), expected, 1e-6))
  }
})

describe("RunCost edges", () => {
  it("a run that took 0 ms is a run: it counts and it is fitted", () => {
    const cost = RunCost.make()
    cost.observe(1, 0)
    cost.observe(101, 10)
    assert.strictEqual(cost.runs, 2)
    // both runs fitted (through the origin, the line's intercept being -0.1): a 1-row run is cheap;
    // with the 0 ms run ignored, the 101-row run's 10 ms would be predicted for any rows
    assert.isTrue(cost.predict(1) < 1, `predict(1) = ${cost.predict(1)}`)
  })

  it("never fits a negative per-row cost: runs that get faster with more rows cost a fixed time", () => {
    const cost = RunCost.make()
    for (const [rows, ms] of [[1, 2], [100, 1], [1, 2], [100, 1]] as const) cost.observe(rows, ms)
    assert.strictEqual(cost.perRowMs, 0)
    assert.isTrue(cost.fixedMs > 1 && cost.fixedMs < 2)
  })

  it("a fit through the origin passes through the weighted mean run", () => {
    const runs = [[10, 0.5], [100, 9.5], [10, 0.5], [100, 9.5]] as const
    const cost = RunCost.make()
    for (const [rows, ms] of runs) cost.observe(rows, ms)
    let sx = 0
    let sy = 0
    runs.forEach(([rows, ms], i) => {
      const w = RunCost.forget ** (runs.length - 1 - i)
      sx += w * rows
      sy += w * ms
    })
    assert.strictEqual(cost.fixedMs, 0)
    close(cost.perRowMs, sy / sx)
  })

  it("a rate read before the last arrival is not inflated", () => {
    const rate = new RunCost.ArrivalRate()
    rate.observe(1, 100)
    close(rate.rowsPerMs(50), 1 / RunCost.arrivalWindowMs)
  })

  it("targetRows never exceeds maxBatchSize while a run size could still keep up", () => {
    const gpuLike = RunCost.make()
    gpuLike.observe(1, 1.0057)
    gpuLike.observe(256, 1 + 0.0057 * 256)
    // capacity 0.8 - 100 * 0.0057 = 0.23 > 0, but 100 * 1 / 0.23 ≈ 435 rows
    assert.strictEqual(RunCost.targetRows(gpuLike, 100, 1, 256), 256)
  })
})
