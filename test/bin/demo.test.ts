/**
 * `node src/bin/demo.ts` as a process: an invalid environment variable is one line on stderr
 * and exit code 2, and so is a reader that goes away (exit code 1).
 */
import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("../..", import.meta.url))

const run = (env: Record<string, string>, options: { readonly closeStdoutAtFirstChunk?: boolean; readonly closeStdoutAtOnce?: boolean } = {}) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn(process.execPath, [Path.join(root, "src/bin/demo.ts")], { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    // `| head -1`: the reader takes the first chunk and goes away.
    if (options.closeStdoutAtFirstChunk === true) child.stdout.once("data", () => child.stdout.destroy())
    // `| true`: the reader goes away before the first line, while the sessions load.
    if (options.closeStdoutAtOnce === true) child.stdout.destroy()
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")))
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
    child.on("exit", (code) => resolve({ code, stdout, stderr }))
  })

describe("demo (src/bin/demo.ts)", () => {
  it("answers an invalid environment variable with one line naming it and exit code 2", async () => {
    const result = await run({ MAX_QUEUED_REQUESTS: "abc" })
    assert.strictEqual(result.code, 2, result.stderr)
    assert.deepStrictEqual(result.stderr.trim().split("\n"), ["demo: invalid configuration: MAX_QUEUED_REQUESTS: Expected a string representing a finite number"])
  }, 30_000)

  it("ends with one line and exit code 1 when the reader of its output goes away, not an uncaught EPIPE nor an abort (134) inside onnxruntime", async () => {
    for (const when of [{ closeStdoutAtFirstChunk: true }, { closeStdoutAtOnce: true }, { closeStdoutAtOnce: true }]) {
      const result = await run({}, when)
      assert.strictEqual(result.code, 1, `${JSON.stringify(when)}: ${result.stderr}`)
      assert.deepStrictEqual(result.stderr.trim().split("\n"), ["demo: cannot write standard output: the reader closed the pipe (EPIPE)"])
    }
  }, 90_000)
})
