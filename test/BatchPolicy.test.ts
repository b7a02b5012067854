import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect } from "effect"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import type * as Priority from "../src/Priority.ts"

const config: BatchPolicy.BatchingConfig = {
  ...BatchPolicy.disabled,
  enabled: true,
  maxBatchSize: 8,
  maxQueueDelay: Duration.millis(10),
  preferredBatchSizes: [4]
}

const pending: BatchPolicy.Pending = {
  rows: 2,
  oldestWaitMs: 1,
  earliestDeadlineInMs: 1000,
  highestPriority: "Normal",
  runsInFlight: 1,
  expectedRunMs: 2
}

describe("BatchPolicy.decide", () => {
  const table: ReadonlyArray<readonly [string, BatchPolicy.BatchingConfig, Partial<BatchPolicy.Pending>, BatchPolicy.Decision]> = [
    ["waits out the rest of the delay while runs are in flight", config, {}, { _tag: "Wait", ms: 9 }],
    ["sends a full batch", config, { rows: 8 }, { _tag: "Send", why: "full" }],
    ["sends a batch above the bound", config, { rows: 9 }, { _tag: "Send", why: "full" }],
    ["sends a preferred size at once", config, { rows: 4 }, { _tag: "Send", why: "preferred" }],
    ["sends at once with no delay configured", { ...config, maxQueueDelay: Duration.zero }, {}, { _tag: "Send", why: "noDelay" }],
    ["sends once the delay is spent", config, { oldestWaitMs: 10 }, { _tag: "Send", why: "delayElapsed" }],
    ["never makes a Critical request wait", config, { highestPriority: "Critical" }, { _tag: "Send", why: "critical" }],
    ["waits only as long as the earliest deadline allows for twice the run time", config, { earliestDeadlineInMs: 6 }, { _tag: "Wait", ms: 2 }],
    ["sends when the deadline leaves no time to wait", config, { earliestDeadlineInMs: 4 }, { _tag: "Send", why: "deadline" }],
    ["with no run time known yet, keeps the delay itself as the deadline's headroom", config, { expectedRunMs: 0, earliestDeadlineInMs: 15 }, { _tag: "Wait", ms: 5 }],
    ["with no run time known yet, sends a member whose deadline is nearer than the delay", config, { expectedRunMs: 0, earliestDeadlineInMs: 8 }, { _tag: "Send", why: "deadline" }],
    ["never waits when nothing else of the model is running", config, { runsInFlight: 0 }, { _tag: "Send", why: "idle" }]
  ]
  for (const [name, c, p, expected] of table) {
    it(name, () => assert.deepStrictEqual(BatchPolicy.decide(c, { ...pending, ...p }), expected))
  }
})

describe("BatchPolicy.decide with learned sizing", () => {
  const learned: BatchPolicy.BatchingConfig = { ...config, preferredBatchSizes: [], sizing: "learned" }
  const known: Partial<BatchPolicy.Pending> = { predictedRunMs: 2, handOverInMs: 3, targetRows: 2 }
  const table: ReadonlyArray<readonly [string, Partial<BatchPolicy.Pending>, BatchPolicy.Decision]> = [
    ["with the rows to keep up, waits until an instance is about to free", known, { _tag: "Wait", ms: 3 }],
    ["with the rows to keep up and an instance free, sends", { ...known, handOverInMs: 0 }, { _tag: "Send", why: "handOver" }],
    ["short of the rows to keep up, waits out the delay even with an instance free", { ...known, targetRows: 5, handOverInMs: 0 }, { _tag: "Wait", ms: 9 }],
    ["waits for an instance past the delay: it could not start sooner", { ...known, handOverInMs: 30, oldestWaitMs: 12 }, { _tag: "Wait", ms: 30 }],
    ["once an instance is free, goes when the delay is spent, however few its rows", { ...known, targetRows: 5, handOverInMs: 0, oldestWaitMs: 10 }, { _tag: "Send", why: "delayElapsed" }],
    ["short of the rows to keep up and no instance free, waits for the instance", { ...known, targetRows: 5 }, { _tag: "Wait", ms: 3 }],
    ["never waits past the deadline's headroom (twice its predicted run)", { ...known, handOverInMs: 30, earliestDeadlineInMs: 8 }, { _tag: "Wait", ms: 4 }],
    ["takes its headroom from its own predicted run, not the last run", { ...known, predictedRunMs: 4, expectedRunMs: 1, earliestDeadlineInMs: 8 }, { _tag: "Send", why: "deadline" }],
    ["still sends a full batch", { ...known, rows: 8 }, { _tag: "Send", why: "full" }],
    ["ignores what would be a preferred size under fixed sizing", { ...known, rows: 4 }, { _tag: "Wait", ms: 3 }],
    ["still never makes a Critical request wait", { ...known, highestPriority: "Critical" }, { _tag: "Send", why: "critical" }],
    ["still never waits when nothing else of the model is running", { ...known, runsInFlight: 0, targetRows: 5 }, { _tag: "Send", why: "idle" }],
    ["with nothing learned yet, sends as an instance frees", { handOverInMs: 0 }, { _tag: "Send", why: "handOver" }]
  ]
  for (const [name, p, expected] of table) {
    it(name, () => assert.deepStrictEqual(BatchPolicy.decide(learned, { ...pending, ...p }), expected))
  }
})

describe("BatchPolicy.resolve", () => {
  const mlp = { inputs: [{ name: "input", dims: [-1, 784] }], outputs: [{ name: "logits", dims: [-1, 10] }] }
  const silero = {
    inputs: [{ name: "input", dims: [-1, -1] }, { name: "state", dims: [2, -1, 128] }, { name: "sr", dims: [] }],
    outputs: [{ name: "output", dims: [-1, 1] }, { name: "stateN", dims: [2, -1, 128] }]
  }
  const fixed = { inputs: [{ name: "x", dims: [1, 3] }], outputs: [{ name: "y", dims: [1, 3] }] }

  it.effect("is on by default for a model with a dynamic batch dim", () =>
    Effect.gen(function*() {
      const c = yield* BatchPolicy.resolve(undefined, mlp)
      assert.isTrue(c.enabled)
      assert.strictEqual(c.maxBatchSize, 64)
      assert.strictEqual(Duration.toMillis(c.maxQueueDelay), 0)
    }))

  it.effect("is off by default for a model without one", () =>
    Effect.gen(function*() {
      assert.isFalse((yield* BatchPolicy.resolve(undefined, fixed)).enabled)
      assert.isFalse((yield* BatchPolicy.resolve(undefined, silero)).enabled, "state batches on axis 1, sr is a scalar")
    }))

  it.effect("accepts per-tensor axes (Silero's state on axis 1, sr unbatched)", () =>
    Effect.gen(function*() {
      const c = yield* BatchPolicy.resolve({ enabled: true, inputAxes: { state: 1, sr: null }, outputAxes: { stateN: 1 }, maxQueueDelayMs: 2 }, silero)
      assert.isTrue(c.enabled)
      assert.strictEqual(Duration.toMillis(c.maxQueueDelay), 2)
    }))

  it.effect("a tensor named like an Object.prototype member batches on axis 0 unless config.json says otherwise", () =>
    Effect.gen(function*() {
      const odd = { inputs: [{ name: "constructor", dims: [-1, 3] }, { name: "valueOf", dims: [-1] }], outputs: [{ name: "toString", dims: [-1, 3] }] }
      const c = yield* BatchPolicy.resolve(undefined, odd)
      assert.isTrue(c.enabled)
      assert.isUndefined(c.inputAxes["constructor"])
      assert.isUndefined(c.outputAxes["toString"])
      const set = yield* BatchPolicy.resolve({ inputAxes: { valueOf: null } }, odd)
      assert.isNull(set.inputAxes["valueOf"])
      assert.isUndefined(set.inputAxes["constructor"])
    }))

  it.effect("an explicit enabled: false turns batching off for a model that could batch", () =>
    Effect.gen(function*() {
      assert.isFalse((yield* BatchPolicy.resolve({ enabled: false }, mlp)).enabled)
      assert.isFalse((yield* BatchPolicy.resolve({ enabled: false, maxQueueDelayMs: 2 }, mlp)).enabled)
    }))

  it.effect("is off by default when config.json leaves every input unbatched", () =>
    Effect.gen(function*() {
      const c = yield* BatchPolicy.resolve({ inputAxes: { input: null } }, mlp)
      assert.isFalse(c.enabled)
    }))

  it.effect("accepts a preferred size equal to maxBatchSize", () =>
    Effect.gen(function*() {
      const c = yield* BatchPolicy.resolve({ maxBatchSize: 8, preferredBatchSizes: [8, 4] }, mlp)
      assert.deepStrictEqual(c.preferredBatchSizes, [4, 8])
      assert.strictEqual(c.maxBatchSize, 8)
    }))

  it.effect("leaves an invalid axis alone when batching is disabled", () =>
    Effect.gen(function*() {
      assert.isFalse((yield* BatchPolicy.resolve({ enabled: false, inputAxes: { input: 5 } }, mlp)).enabled)
    }))

  it.effect("takes learned sizing, and sizes are fixed without it", () =>
    Effect.gen(function*() {
      assert.strictEqual((yield* BatchPolicy.resolve({ sizing: "learned", maxQueueDelayMs: 5 }, mlp)).sizing, "learned")
      assert.strictEqual((yield* BatchPolicy.resolve({ preferredBatchSizes: [8] }, mlp)).sizing, "fixed")
      assert.strictEqual((yield* BatchPolicy.resolve(undefined, mlp)).sizing, "fixed")
    }))

  const errors: ReadonlyArray<readonly [string, BatchPolicy.ConfigJson, RegExp]> = [
    ["enabling a model that cannot batch", { enabled: true }, /fixed dim 1 on batch axis 0/],
    ["an axis for an unknown input", { inputAxes: { nope: 0 } }, /unknown input "nope"/],
    ["an input axis beyond the input's rank", { inputAxes: { input: 5 } }, /^batching\.inputAxes\.input is 5, but the input has rank 2$/],
    ["an input axis equal to the input's rank", { inputAxes: { input: 2 } }, /^batching\.inputAxes\.input is 2, but the input has rank 2$/],
    ["enabling batching when no input has a batch axis", { enabled: true, inputAxes: { input: null } }, /^batching is enabled but the model cannot batch: no input has a batch axis$/],
    ["an output axis on a fixed dim", { outputAxes: { logits: 1 } }, /^batching\.outputAxes\.logits is 1, but the output fixes that dim at 10$/],
    ["a preferred size above the maximum", { maxBatchSize: 4, preferredBatchSizes: [8] }, /above maxBatchSize 4/],
    ["preferred sizes with learned sizing", { sizing: "learned", preferredBatchSizes: [16, 8] }, /sizing "learned" chooses batch sizes itself: leave out batching.preferredBatchSizes \(8, 16\)/]
  ]
  for (const [name, json, message] of errors) {
    it.effect(`refuses ${name}, saying why`, () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(BatchPolicy.resolve(json, name.includes("cannot") ? fixed : mlp))
        assert.match(error, message)
      }))
  }
})

describe("BatchPolicy.mayJoin", () => {
  const table: ReadonlyArray<readonly [Priority.Priority, Priority.Priority, boolean]> = [
    ["Critical", "Critical", true],
    ["Critical", "High", false],
    ["Critical", "Low", false],
    ["High", "Critical", true],
    ["High", "Low", true],
    ["Normal", "Normal", true],
    ["Low", "Critical", true],
    ["Low", "High", true]
  ]
  for (const [batch, candidate, expected] of table) {
    it(`a ${candidate} request ${expected ? "may" : "may not"} join a batch led by ${batch}`, () =>
      assert.strictEqual(BatchPolicy.mayJoin(batch, candidate), expected))
  }
})

const learned: BatchPolicy.BatchingConfig = {
  ...BatchPolicy.disabled,
  enabled: true,
  maxBatchSize: 8,
  maxQueueDelay: Duration.millis(10),
  sizing: "learned"
}

describe("BatchPolicy learned sizing and deadlines", () => {
  it("learned sizing, short of the rows with an instance free: the wait for rows ends at the deadline's headroom", () => {
    const decision = BatchPolicy.decide(learned, {
      rows: 2,
      oldestWaitMs: 1,
      earliestDeadlineInMs: 8,
      highestPriority: "Normal",
      runsInFlight: 1,
      expectedRunMs: 2,
      predictedRunMs: 2,
      handOverInMs: 0,
      targetRows: 5
    })
    // delay left 9 ms, deadline headroom 8 - 2 × 2 = 4 ms
    assert.deepStrictEqual(decision, { _tag: "Wait", ms: 4 })
  })
})
