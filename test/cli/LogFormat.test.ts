/**
 * `LogFormat.jsonLine`: a log event as one JSON line, whatever its message holds.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Fiber } from "effect"
import * as LogFormat from "../../src/cli/LogFormat.ts"

const fiber = Effect.runFork(Effect.never)
const at = new Date("2026-12-07T13:00:00.000Z")
const line = (message: unknown, cause: Cause.Cause<unknown> = Cause.empty, annotations: Record<string, unknown> = {}) =>
  JSON.parse(LogFormat.jsonLine({ message, logLevel: "Warn", cause, fiber, date: at }, annotations)) as Record<string, unknown>

describe("LogFormat.jsonLine", () => {
  it("joins the message's parts, objects as JSON and errors by their stack; a cause and annotations have fields of their own", () => {
    assert.deepStrictEqual(line(["listening on", "http://x"]), { time: "2026-12-07T13:00:00.000Z", level: "WARN", message: "listening on http://x", fiber: `#${fiber.id}` })
    assert.strictEqual(line(["a", { n: 1 }]).message, "a {\"n\":1}")
    assert.match(line(["failed", new Error("boom")]).message as string, /^failed Error: boom\n\s+at /)
    const withCause = line("run failed", Cause.fail("bad input"), { model: "mlp" })
    assert.match(withCause["cause"] as string, /bad input/)
    assert.deepStrictEqual(withCause["annotations"], { model: "mlp" })
  })

  it("never fails: a part JSON cannot write (circular, a BigInt) is written as text", () => {
    const circular: Record<string, unknown> = {}
    circular["self"] = circular
    assert.strictEqual(line(["x", circular]).message, "x [object Object]")
    assert.strictEqual(line(["n", 10n]).message, "n 10")
    const noText = { toString: () => { throw new Error("no") }, toJSON: () => { throw new Error("no") } }
    assert.strictEqual(line(["?", noText]).message, "? (a value with no text)")
  })

  it("immediateLine: a forced exit's line in the same format", () => {
    assert.deepStrictEqual(JSON.parse(LogFormat.immediateLine("json", "WARN", "second SIGINT", at)), { time: "2026-12-07T13:00:00.000Z", level: "WARN", message: "second SIGINT" })
    assert.strictEqual(LogFormat.immediateLine("text", "WARN", "second SIGINT", at), "2026-12-07T13:00:00.000Z second SIGINT")
  })
})

Effect.runFork(Fiber.interrupt(fiber))
