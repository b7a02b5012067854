import { assert, describe, it } from "@effect/vitest"
import type { Metric } from "effect"
import * as RetryAfter from "../../src/http/RetryAfter.ts"
import { metrics } from "../../src/Telemetry.ts"

describe("RetryAfter.seconds", () => {
  const cases: ReadonlyArray<readonly [string, RetryAfter.Input, number]> = [
    ["the queue over the rate, rounded up", { queued: 21, ratePerSecond: 10 }, 3],
    ["a whole number of seconds as it is", { queued: 20, ratePerSecond: 10 }, 2],
    ["at least min", { queued: 1, ratePerSecond: 100 }, 1],
    ["at most max", { queued: 1000, ratePerSecond: 1 }, 60],
    ["a rate of 0 (stuck): max", { queued: 1, ratePerSecond: 0 }, 60],
    ["no rate yet: the fallback", { queued: 1000, ratePerSecond: undefined }, 1]
  ]
  for (const [name, input, expected] of cases) {
    it(name, () => assert.strictEqual(RetryAfter.seconds(input), expected))
  }
})

describe("RetryAfter.totalDrained", () => {
  const counter = (id: string, outcome: string, count: number): Metric.Metric.Snapshot => ({
    id,
    type: "Counter",
    description: undefined,
    attributes: { model: "m", version: "1", outcome },
    state: { count, incremental: false }
  })
  it("counts the requests that left the queue or a run (success, backend, timeout, cancelled), over every model", () => {
    const snapshot = [
      counter(metrics.requests.id, "success", 5),
      counter(metrics.requests.id, "backend", 1),
      counter(metrics.requests.id, "timeout", 2),
      counter(metrics.requests.id, "cancelled", 3),
      counter(metrics.requests.id, "rejected", 100),
      counter(metrics.requests.id, "invalid", 100),
      counter(metrics.started.id, "success", 100)
    ]
    assert.strictEqual(RetryAfter.totalDrained(snapshot), 11)
  })
})

describe("RetryAfter.step", () => {
  const at = (atMs: number, drained: number, pending: number): RetryAfter.Sample => ({ atMs, drained, pending })
  /** The rate after folding `samples` in order from the initial state. */
  const rateAfter = (samples: ReadonlyArray<RetryAfter.Sample>) => samples.reduce(RetryAfter.step, RetryAfter.initial).ratePerSecond

  const cases: ReadonlyArray<readonly [string, ReadonlyArray<RetryAfter.Sample>, number | undefined]> = [
    ["one sample measures nothing", [at(0, 0, 0)], undefined],
    ["an idle server measures nothing, however long", Array.from({ length: 60 }, (_, i) => at(i * 500, 0, 0)), undefined],
    ["the first interval with work sets the rate", [at(0, 0, 3), at(500, 10, 0)], 20],
    ["work drained between two idle samples counts", [at(0, 0, 0), at(500, 5, 0)], 10],
    ["work pending and nothing drained is a rate of 0 (stuck)", [at(0, 0, 4), at(500, 0, 4)], 0],
    ["a run in progress at the end counts", [at(0, 0, 0), at(500, 0, 1)], 0],
    ["work pending at the start that drained nothing pulls the rate down", [at(0, 0, 3), at(500, 10, 2), at(1000, 10, 0)], 20 * (1 - RetryAfter.smoothing)],
    ["idle intervals after work keep the measured rate", [at(0, 0, 3), at(500, 10, 0), ...Array.from({ length: 50 }, (_, i) => at(1000 + i * 500, 10, 0))], 20],
    ["later intervals with work move the rate by the smoothing weight", [at(0, 0, 3), at(500, 10, 1), at(1000, 10, 1)], 20 * (1 - RetryAfter.smoothing)],
    ["a sample at the same instant is skipped", [at(0, 0, 3), at(0, 10, 3)], undefined],
    ["a counter that went back (fresh metrics) drains nothing", [at(0, 10, 1), at(500, 0, 1)], 0]
  ]
  for (const [name, samples, expected] of cases) {
    it(name, () => {
      const rate = rateAfter(samples)
      if (expected === undefined) assert.isUndefined(rate)
      else assert.closeTo(rate!, expected, 1e-9)
    })
  }

  it("after a long idle, a full queue is told the wait its last measured rate gives, not the 60 s of a stuck one", () => {
    const samples = [at(0, 0, 5), at(500, 10, 0), ...Array.from({ length: 50 }, (_, i) => at(1000 + i * 500, 10, 0))]
    assert.strictEqual(RetryAfter.seconds({ queued: 100, ratePerSecond: rateAfter(samples) }), 5)
    assert.strictEqual(RetryAfter.seconds({ queued: 100, ratePerSecond: rateAfter(samples.slice(2)) }), 1, "a fresh idle server: the fallback")
  })
})
