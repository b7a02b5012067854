/**
 * Every example in `examples/` runs with one command (`node examples/NN_topic.ts`), exits 0 and
 * prints what it demonstrates.
 */
import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("../..", import.meta.url))
const dir = Path.join(root, "examples")

const run = (file: string): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    const child = spawn(process.execPath, [Path.join(dir, file)], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")))
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
    child.on("exit", (code) => resolve({ code, stdout, stderr }))
  })

/** What each example must print (regular expressions over its stdout). */
const expected: Record<string, ReadonlyArray<RegExp>> = {
  "01_effect_app.ts": [/^classified 4 images: \[\d, \d, \d, \d\]$/m, /^unknown model -> ModelNotFound \(HTTP 404\)$/m, /^engine closed$/m],
  "02_promise_abort.ts": [
    /^plain request: Success, logits \[1, 10\]$/m,
    /^aborted while queued: rejected with InferenceError Cancelled$/m,
    /^aborted while running: rejected with InferenceError Cancelled$/m,
    /^AbortSignal\.timeout\(1\): rejected with InferenceError Cancelled$/m,
    /^inferResult with an aborted signal: Cancelled$/m,
    /^pending after: 0, queued: 0$/m,
    /^after close: rejected with InferenceError ShuttingDown$/m
  ],
  "03_stream_batch.ts": [
    /^Stream: 200 requests -> \{"Success":200\}$/m,
    /^Stream\.take\(10\): 10 results, engine pending afterwards: 0$/m,
    /^for await: 50 successes$/m
  ],
  "04_custom_telemetry.ts": [
    /^outcomes: .*\bstarted=23\b/m,
    /^outcomes: .*\bsuccess=20\b/m,
    /^outcomes: .*\bcancelled=1\b/m,
    /^outcomes: .*\btimeout=1\b/m,
    /^outcomes: .*\bfailure:InvalidInput=1\b/m,
    /^success latency: p50 [\d.]+ ms, max [\d.]+ ms$/m,
    /^spans: Engine\.infer=22$/m
  ],
  "07_remote_client.ts": [
    /^remote: Success, logits \[1, 10\], the same as in process: true$/m,
    /^a row of 2 floats -> InvalidInput \(input input\), retryable: false$/m,
    /^an unknown model -> ModelNotFound$/m,
    /^metadata: input float32 \[-1, 784\]; ready: true$/m,
    /^shutdown: drained true$/m
  ],
  "05_server_in_process.ts": [
    /^listening on http:\/\/127\.0\.0\.1:<port>$/m,
    /^GET \/v2\/health\/ready -> 200$/m,
    /^POST \/v2\/models\/mlp\/infer -> 200: id example, logits \[1, 10\]$/m,
    /^POST \/v2\/models\/mlp\/infer, binary tensors -> 200: 10 logits, the same as JSON: true$/m,
    /^POST \/v2\/models\/nope\/infer -> 404$/m,
    /^shutdown: drained true$/m
  ],
  "06_stateful_stream.ts": [
    /^answers carry no state: output$/m,
    /^2 streams of 8 chunks: the state kept by the engine answers as the state carried by the client: true$/m,
    /^a chunk of a stream that ended: rejected with InferenceError InvalidInput$/m
  ]
}

describe("examples", () => {
  const files = Fs.readdirSync(dir).filter((f) => /^\d\d_.*\.ts$/.test(f)).sort()

  it("are numbered, and each one is checked here", () => {
    assert.deepStrictEqual(files, Object.keys(expected).sort())
  })

  for (const file of files) {
    it(`${file} runs and exits 0`, async () => {
      const { code, stderr, stdout } = await run(file)
      assert.strictEqual(code, 0, `${stdout}\n${stderr}`)
      for (const pattern of expected[file] ?? []) assert.match(stdout, pattern)
    }, 60_000)
  }
})
