/**
 * `npm run demo`: loads the bundled models, runs a mixed-priority workload with a few
 * cancellations and time-outs through the engine, prints each result and a telemetry summary.
 */
import { Config, Effect, Metric } from "effect"
import * as AsyncConfig from "../AsyncConfig.ts"
import * as CancelToken from "../CancelToken.ts"
import { AsyncInferenceEngine } from "../Engine.ts"
import * as InferenceRequest from "../InferenceRequest.ts"
import type * as InferenceResult from "../InferenceResult.ts"
import * as Live from "../Live.ts"
import * as Priority from "../Priority.ts"
import * as Tensor from "../Tensor.ts"

const repository = Live.bundledModels

// The demo's product is standard output: a reader that goes away (`npm run demo | head -1`) ends
// it with one line on stderr and exit code 1, as `infer --output -` does, not with an uncaught
// EPIPE and its stack trace: the program is interrupted, so that the engine's scope closes its
// sessions (exiting while a worker is inside onnxruntime aborts the process, exit 134). Standard
// error carries only that line: losing it must not crash it.
const stop = new AbortController()
let outputClosed: string | undefined
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (outputClosed !== undefined) return
  outputClosed = error.code === "EPIPE" ? "the reader closed the pipe (EPIPE)" : error.message
  stop.abort()
})
process.stderr.on("error", () => {})

const mlpInput = (rows: number, seed: number) => {
  const data = new Float32Array(rows * 784)
  let s = seed >>> 0
  for (let i = 0; i < data.length; i++) {
    s = (s * 1664525 + 1013904223) >>> 0
    data[i] = s / 4294967296 - 0.5
  }
  return { input: Tensor.float32(data, [rows, 784]) }
}

const sileroInput = (seed: number) => {
  const samples = new Float32Array(512).map((_, i) => Math.sin((i + seed) / 8) * 0.3)
  return {
    input: Tensor.float32(samples, [1, 512]),
    state: Tensor.float32(new Float32Array(2 * 128), [2, 1, 128]),
    sr: Tensor.int64([16000], [])
  }
}

const describe = (result: InferenceResult.InferenceResult, priority: string): string => {
  switch (result._tag) {
    case "Success": {
      const [name, tensor] = Object.entries(result.outputs)[0]!
      return `${result.requestId.padEnd(14)} ${priority.padEnd(8)} Success   ${result.latencyMs.toFixed(2)} ms on ${result.deviceUsed}: ${name} [${tensor.dims.join(", ")}]`
    }
    case "Cancelled":
      return `${result.requestId.padEnd(14)} ${priority.padEnd(8)} Cancelled (${result.reason})`
    case "TimedOut":
      return `${result.requestId.padEnd(14)} ${priority.padEnd(8)} TimedOut  after ${result.elapsedMs.toFixed(2)} ms`
    case "Failed":
      return `${result.requestId.padEnd(14)} ${priority.padEnd(8)} Failed    ${result.error.message}`
  }
}

const program = Effect.gen(function*() {
  const engine = yield* AsyncInferenceEngine
  const jobs: Array<{ readonly request: InferenceRequest.InferenceRequest; readonly cancel?: CancelToken.CancelToken }> = []
  for (let i = 0; i < 24; i++) {
    const big = i % 8 === 5
    jobs.push({
      request: InferenceRequest.make("mlp", mlpInput(big ? 4096 : 1 + (i % 3), i), {
        requestId: `mlp-${i}${big ? "-big" : ""}`,
        priority: Priority.levels[i % 4]!,
        // A 4096-row run takes longer than this deadline: these time out.
        timeout: big ? "3 millis" : "10 seconds"
      }),
      ...(i === 18 || i === 23 ? { cancel: CancelToken.makeUnsafe() } : {})
    })
  }
  for (let i = 0; i < 4; i++) {
    jobs.push({ request: InferenceRequest.make("silero_vad", sileroInput(i), { requestId: `vad-${i}`, priority: "High" }) })
  }
  console.log(`${jobs.length} requests on mlp and silero_vad, all submitted at once; mlp-18 and mlp-23 are cancelled while they wait\n`)
  const settled = Effect.forEach(jobs, ({ cancel, request }) =>
    engine.inferResult(request, cancel).pipe(
      Effect.tap((result) => Effect.sync(() => console.log(describe(result, request.priority))))
    ), { concurrency: "unbounded", discard: true })
  const cancelSome = Effect.sync(() => {
    for (const job of jobs) job.cancel?.cancelUnsafe("cancelled by the demo")
  })
  yield* Effect.all([settled, Effect.andThen(Effect.yieldNow, cancelSome)], { concurrency: "unbounded", discard: true })

  console.log("\ntelemetry (Effect metrics recorded by TelemetryCollector.layer):")
  for (const snapshot of yield* Metric.snapshot) {
    if (!snapshot.id.startsWith("inference_")) continue
    // `unit` is the family's (the name says it), not a label
    const labels = Object.entries(snapshot.attributes ?? {}).filter(([k]) => k !== "unit").map(([k, v]) => `${k}=${v}`).join(",")
    const state = snapshot.state as { count?: number; sum?: number; min?: number; max?: number }
    const value = snapshot.type === "Histogram"
      ? `count ${state.count} mean ${((state.sum ?? 0) / Math.max(1, state.count ?? 1)).toFixed(3)} max ${(state.max ?? 0).toFixed(3)}`
      : String(state.count)
    console.log(`  ${snapshot.id}{${labels}} ${value}`)
  }
})

const EngineLive = Live.layerConfig({ repository, serviceName: "effect-onnx-demo" })

// One line on stderr, as the CLI does: exit code 2 for an invalid environment variable, 1 for anything else.
Effect.runPromise(program.pipe(Effect.provide(EngineLive)), { signal: stop.signal }).then(
  () => {
    if (outputClosed === undefined) return
    process.stderr.write(`demo: cannot write standard output: ${outputClosed}\n`)
    process.exitCode = 1
  },
  (error: unknown) => {
    const configError = error instanceof Config.ConfigError
    const message = outputClosed !== undefined
      ? `cannot write standard output: ${outputClosed}`
      : configError
      ? `invalid configuration: ${AsyncConfig.describeError(error)}`
      : error instanceof Error
      ? error.message
      : String(error)
    process.stderr.write(`demo: ${message}\n`)
    process.exitCode = configError && outputClosed === undefined ? 2 : 1
  }
)
