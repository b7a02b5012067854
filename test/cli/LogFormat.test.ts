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

  it("never fails, and loses nothing JSON cannot write: BigInts as digits, errors inside objects, a circular object by inspection", () => {
    const circular: Record<string, unknown> = { n: 1 }
    circular["self"] = circular
    assert.strictEqual(line(["x", circular]).message, "x <ref *1> { n: 1, self: [Circular *1] }")
    assert.strictEqual(line(["n", 10n]).message, "n 10")
    assert.strictEqual(line(["big", { rows: 2n ** 70n }]).message, `big {"rows":"${2n ** 70n}"}`)
    assert.match(line(["wrapped", { error: new Error("boom") }]).message as string, /^wrapped \{"error":\{"name":"Error","message":"boom","stack":"Error: boom/)
    assert.deepStrictEqual(line("annotated", Cause.empty, { rows: 3n })["annotations"], { rows: "3" })
    const noText = { toString: () => { throw new Error("no") }, toJSON: () => { throw new Error("no") }, [Symbol.for("nodejs.util.inspect.custom")]: () => { throw new Error("no") } }
    assert.strictEqual(line(["?", noText]).message, "? (a value with no text)")
  })

  it("routeGrpcLog: grpc-js's own lines become JSON lines on standard error under json, and are left alone under text", () => {
    let installed: Partial<Console> | undefined
    LogFormat.routeGrpcLog("text", (logger) => (installed = logger))
    assert.isUndefined(installed)
    LogFormat.routeGrpcLog("json", (logger) => (installed = logger))
    const written: Array<string> = []
    const write = process.stderr.write
    process.stderr.write = ((chunk: string) => (written.push(chunk), true)) as typeof process.stderr.write
    try {
      installed!.error!("No address added out of total", 1, "resolved")
    } finally {
      process.stderr.write = write
    }
    assert.strictEqual(written.length, 1)
    assert.deepInclude(JSON.parse(written[0]!), { level: "ERROR", message: "grpc-js: No address added out of total 1 resolved" })
  })

  it("immediateLine: a forced exit's line in the same format", () => {
    assert.deepStrictEqual(JSON.parse(LogFormat.immediateLine("json", "WARN", "second SIGINT", at)), { time: "2026-12-07T13:00:00.000Z", level: "WARN", message: "second SIGINT" })
    assert.strictEqual(LogFormat.immediateLine("text", "WARN", "second SIGINT", at), "2026-12-07T13:00:00.000Z second SIGINT")
  })
})

Effect.runFork(Fiber.interrupt(fiber))
