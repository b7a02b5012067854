/**
 * The logging policy of docs/usage.md ("Logging"): the library logs through Effect's logger and
 * the application decides what shows. The Promise facade shows WARN and above by default and
 * INFO when asked; an Effect program shows what its own minimum level lets through.
 */
import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("../..", import.meta.url))

let scripts = 0

/** Runs `code` as an ES module file (not `-e`: the engine's worker threads inherit the process's flags). */
const run = (code: string): Promise<{ code: number | null; output: string }> =>
  new Promise((resolve) => {
    const file = Path.join(Os.tmpdir(), `logging-${process.pid}-${scripts++}.mjs`)
    Fs.writeFileSync(file, code)
    const child = spawn(process.execPath, [file], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    child.on("exit", () => Fs.rmSync(file, { force: true }))
    let output = ""
    child.stdout.on("data", (c: Buffer) => (output += c.toString("utf8")))
    child.stderr.on("data", (c: Buffer) => (output += c.toString("utf8")))
    child.on("exit", (exit) => resolve({ code: exit, output }))
  })

const facade = (options: string) => `
  const { InferenceClient } = await import(${JSON.stringify(`${root}src/index.ts`)})
  const client = await InferenceClient.make(${options})
  await client.close()
  console.log("closed")
`

const effectProgram = (level: string | undefined) => `
  const { Effect, Layer, References } = await import(${JSON.stringify(`${root}node_modules/effect/dist/index.js`)})
  const { AsyncConfig, Engine, InferenceClient, OnnxModelPool, Telemetry } = await import(${JSON.stringify(`${root}src/index.ts`)})
  const layer = Engine.AsyncInferenceEngine.layer.pipe(Layer.provide(Layer.mergeAll(
    OnnxModelPool.layer({ repository: InferenceClient.bundledModels }), Telemetry.TelemetryCollector.layer, AsyncConfig.AsyncConfigService.layer)))
  const program = Effect.scoped(Layer.build(layer))
  await Effect.runPromise(${level === undefined ? "program" : `Effect.provideService(program, References.MinimumLogLevel, ${JSON.stringify(level)})`})
  console.log("closed")
`

const loaded = /model mlp version 1 is READY/

describe("logging policy", () => {
  it("the Promise facade: quiet by default (WARN), model loads shown with logLevel Info", async () => {
    const [quiet, verbose] = await Promise.all([run(facade("{}")), run(facade(`{ logLevel: "Info" }`))])
    assert.strictEqual(quiet.code, 0, quiet.output)
    assert.strictEqual(verbose.code, 0, verbose.output)
    assert.notMatch(quiet.output, loaded)
    assert.match(verbose.output, loaded)
  }, 60_000)

  it("an Effect program: its own minimum level decides (INFO by default shows model loads, WARN hides them)", async () => {
    const [defaults, warn] = await Promise.all([run(effectProgram(undefined)), run(effectProgram("Warn"))])
    assert.strictEqual(defaults.code, 0, defaults.output)
    assert.strictEqual(warn.code, 0, warn.output)
    assert.match(defaults.output, loaded)
    assert.notMatch(warn.output, loaded)
  }, 60_000)
})
