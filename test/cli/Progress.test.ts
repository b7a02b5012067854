/**
 * Progress: the pure formatting (rate, ETA, bar, plain line, summary) and the ticker under
 * TestClock (a bar redrawn in place on a terminal, plain lines at an interval otherwise).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import * as Progress from "../../src/cli/Progress.ts"

const at = (done: number, total: number | undefined, elapsedMs: number, failed = 0, skipped = 0): Progress.Snapshot => ({
  done,
  total,
  failed,
  skipped,
  elapsedMs
})

describe("Progress", () => {
  it("computes the rate and the ETA from the average since the start", () => {
    assert.strictEqual(Progress.rate(at(100, 500, 2000)), 50)
    assert.strictEqual(Progress.etaMs(at(100, 500, 2000)), 8000)
    assert.strictEqual(Progress.etaMs(at(100, 500, 2000, 0, 100)), 6000)
    assert.isUndefined(Progress.etaMs(at(0, 500, 2000)))
    assert.isUndefined(Progress.etaMs(at(10, undefined, 2000)))
    assert.strictEqual(Progress.rate(at(10, 10, 0)), 0)
  })

  it("formats durations as m:ss and h:mm:ss", () => {
    assert.strictEqual(Progress.formatDuration(4_000), "0:04")
    assert.strictEqual(Progress.formatDuration(62_400), "1:02")
    assert.strictEqual(Progress.formatDuration(3_723_000), "1:02:03")
  })

  it("draws a bar with count, percentage, rate and ETA within the terminal's width", () => {
    const bar = Progress.bar(at(120, 480, 2000, 2, 0), 80)
    assert.match(bar, /^\[#{10}-{30}\] 120\/480 25% 60\.0\/s ETA 0:06, 2 failed$/)
    assert.isAtMost(bar.length, 80)
    assert.isAtMost(Progress.bar(at(120, 480, 2000), 30).length, 30)
    assert.include(Progress.bar(at(5, undefined, 1000)), "ETA -:--")
  })

  it("prints plain lines and a summary", () => {
    assert.strictEqual(Progress.line(at(120, 480, 2000, 0, 3)), "progress: 123/480 (25%), 60.0 records/s, ETA 0:06, 3 skipped")
    assert.strictEqual(Progress.line(at(7, undefined, 1000)), "progress: 7, 7.00 records/s")
    assert.strictEqual(Progress.summary(at(500, 500, 6000, 2, 1)), "done: 500 records in 0:06 (83.3 records/s), 2 failed, 1 skipped")
    assert.strictEqual(Progress.summary(at(1, 5, 1000), "interrupted"), "interrupted: 1 record in 0:01 (1.00 records/s)")
  })

  const capture = (isTTY: boolean) => {
    const writes: Array<string> = []
    return { writes, output: { write: (t: string) => void writes.push(t), isTTY, columns: 60 } }
  }

  it.effect("auto mode redraws a bar in place on a terminal, erasing it for messages and the summary", () =>
    Effect.gen(function*() {
      const { output, writes } = capture(true)
      let done = 0
      const handle = yield* Progress.start({ mode: "auto", output }, () => at(done, 10, 1000))
      done = 3
      yield* TestClock.adjust("100 millis")
      assert.match(writes.at(-1)!, /^\r\x1b\[2K\[#+-+\] 3\/10 30%/)
      handle.log("line 4: skipped")
      assert.deepStrictEqual(writes.slice(-2), ["\r\x1b[2K", "line 4: skipped\n"])
      yield* TestClock.adjust("100 millis")
      yield* handle.finish("done")
      assert.deepStrictEqual(writes.slice(-2), ["\r\x1b[2K", "done: 3 records in 0:01 (3.00 records/s)\n"])
      const count = writes.length
      yield* TestClock.adjust("1 second")
      assert.strictEqual(writes.length, count)
    }))

  it.effect("draws an 80-column bar on a terminal that reports no size", () =>
    Effect.gen(function*() {
      const writes: Array<string> = []
      yield* Progress.start({ mode: "bar", output: { write: (t) => void writes.push(t), isTTY: true, columns: 0 } }, () => at(1, 2, 1000))
      yield* TestClock.adjust("100 millis")
      assert.match(writes[0]!, /^\r\x1b\[2K\[#{20}-{20}\] 1\/2 50% 1\.00\/s ETA 0:01$/)
    }))

  it.effect("auto mode prints a plain line every 2 seconds when not on a terminal", () =>
    Effect.gen(function*() {
      const { output, writes } = capture(false)
      const handle = yield* Progress.start({ mode: "auto", output }, () => at(4, 8, 2000))
      yield* TestClock.adjust("1 second")
      assert.deepStrictEqual(writes, [])
      yield* TestClock.adjust("1500 millis")
      assert.deepStrictEqual(writes, ["progress: 4/8 (50%), 2.00 records/s, ETA 0:02\n"])
      yield* handle.finish("stopped")
      assert.strictEqual(writes.at(-1), "stopped: 4 records in 0:02 (2.00 records/s)\n")
    }))

  it.effect("none prints messages only", () =>
    Effect.gen(function*() {
      const { output, writes } = capture(true)
      const handle = yield* Progress.start({ mode: "none", output }, () => at(1, 1, 1))
      yield* TestClock.adjust("10 seconds")
      handle.log("hello")
      yield* handle.finish("done")
      assert.deepStrictEqual(writes, ["hello\n"])
    }))
})
