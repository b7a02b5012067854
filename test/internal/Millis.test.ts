import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import { millisOf } from "../../src/internal/Millis.ts"

describe("millisOf", () => {
  it("is Duration.toMillis, for every representation", () => {
    const cases: ReadonlyArray<Duration.Duration> = [
      Duration.millis(0),
      Duration.millis(1.5),
      Duration.millis(-5),
      Duration.seconds(30),
      Duration.nanos(1_500_000n),
      Duration.nanos(1n),
      Duration.micros(250n),
      Duration.infinity,
      Duration.fromInputUnsafe("2 hours")
    ]
    for (const d of cases) assert.strictEqual(millisOf(d), Duration.toMillis(d), Duration.format(d))
    assert.strictEqual(millisOf(Duration.negativeInfinity), -Infinity)
  })
})
