/**
 * Learned batch sizing in the simulation of `bench/sizing.ts`: the engine's Scheduler and
 * BatchPolicy on simulated time, in front of a device with a known cost per run. Deterministic
 * (a seeded PRNG, no clock), so these are comparisons of policies, not timings.
 */
import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import { type Device, type Load, simulate } from "../bench/lib/sizingSim.ts"
import * as BatchPolicy from "../src/BatchPolicy.ts"

const gpu: Device = { fixedMs: 1, perRowMs: 0.0057, noise: 0.1, shared: true }

const config = (delayMs: number, sizing: BatchPolicy.Sizing, preferred: ReadonlyArray<number> = []): BatchPolicy.BatchingConfig => ({
  ...BatchPolicy.disabled,
  enabled: true,
  maxBatchSize: 256,
  maxQueueDelay: Duration.millis(delayMs),
  preferredBatchSizes: preferred,
  sizing
})

const run = (batching: BatchPolicy.BatchingConfig, load: Load, hopMs: number, measured = 10_000) =>
  simulate({ batching, instances: 2, depth: 2, hopMs, device: gpu, load, rowsPerRequest: 1, warmup: measured / 5, measured, seed: 7 })

describe("learned batch sizing (simulated device)", () => {
  it("answers every request under every load, and a lone caller never waits for company", () => {
    for (const load of [{ _tag: "open", requestsPerMs: 0.5 }, { _tag: "open", requestsPerMs: 40 }, { _tag: "closed", outstanding: 1 }, { _tag: "closed", outstanding: 256 }] as const) {
      const r = run(config(2, "learned"), load, 0.3)
      assert.isTrue(r.throughputPerS > 0, JSON.stringify(load))
    }
    // One caller at a time: nothing else is in flight, so a lone request never waits for company.
    const lone = run(config(50, "learned"), { _tag: "closed", outstanding: 1 }, 0.3)
    assert.isTrue(lone.p99Ms < 2, `p99 ${lone.p99Ms} ms with a 50 ms delay`)
  })

  it("hands batches to a GPU shared by two processes just in time: more throughput than waiting out the delay", () => {
    const fixed = run(config(2, "fixed"), { _tag: "closed", outstanding: 64 }, 0.3)
    const learned = run(config(2, "learned"), { _tag: "closed", outstanding: 64 }, 0.3)
    assert.isTrue(learned.throughputPerS > 1.05 * fixed.throughputPerS, `${learned.throughputPerS} vs ${fixed.throughputPerS} req/s`)
    assert.isTrue(learned.p50Ms < fixed.p50Ms)
  })

  it("under heavy open load, halves the median latency of fixed preferred sizes that the load does not fill", () => {
    const load = { _tag: "open", requestsPerMs: 83 } as const
    const learned = run(config(2, "learned"), load, 0.05, 40_000)
    for (const preferred of [[64], [128]]) {
      const fixed = run(config(2, "fixed", preferred), load, 0.05, 40_000)
      assert.isTrue(learned.p50Ms < 0.6 * fixed.p50Ms, `preferred ${preferred}: p50 ${learned.p50Ms} vs ${fixed.p50Ms} ms`)
    }
  })

  it("learns the device's cost: runs grow with the load", () => {
    const light = run(config(10, "learned"), { _tag: "open", requestsPerMs: 5 }, 0.3)
    const heavy = run(config(10, "learned"), { _tag: "open", requestsPerMs: 60 }, 0.3)
    assert.isTrue(heavy.rowsPerRun > 4 * light.rowsPerRun, `${heavy.rowsPerRun} vs ${light.rowsPerRun} rows a run`)
  })
})
