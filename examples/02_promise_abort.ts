/**
 * 02 · The Promise facade with AbortSignal (no Effect in sight).
 *
 * `InferenceClient.make` starts an engine on a model repository (the bundled one by default).
 * `infer(request, { signal })` resolves with the result or rejects with a typed `InferenceError`.
 * Aborting the signal works exactly as interrupting an Effect caller: a queued request leaves the
 * queue and never runs, a running one is answered at once (its native run's result is dropped).
 *
 * Run: `npm run example -- 02`
 */
import { InferenceClient, InferenceError, InferenceRequest, Tensor } from "../src/index.ts"

const mlp = (rows: number) => InferenceRequest.make("mlp", { input: Tensor.float32(new Float32Array(rows * 784).fill(0.5), [rows, 784]) })

// One native run at a time, so that the second request below has to wait in the queue.
const client = await InferenceClient.make({ config: { maxConcurrentRequests: 1 } })

const ok = await client.infer(mlp(1))
console.log(`plain request: ${ok._tag}, logits [${ok.outputs["logits"]!.dims.join(", ")}]`)

const describe = (e: unknown) =>
  InferenceError.isInferenceError(e) ? `rejected with InferenceError ${e.reason._tag}` : `rejected with ${String(e)}`

// A long run (many rows), and a small request queued behind it; abort both.
const running = new AbortController()
const queued = new AbortController()
const long = client.infer(mlp(8192), { signal: running.signal }).then(() => "resolved", describe)
const waiting = client.infer(mlp(1), { signal: queued.signal }).then(() => "resolved", describe)
await new Promise((r) => setTimeout(r, 5))
queued.abort(new Error("user went away"))
console.log(`aborted while queued: ${await waiting}`)
running.abort()
console.log(`aborted while running: ${await long}`)

// Deadlines compose the same way: AbortSignal.timeout is an ordinary signal.
const timed = await client.infer(mlp(8192), { signal: AbortSignal.timeout(1) }).then(() => "resolved", describe)
console.log(`AbortSignal.timeout(1): ${timed}`)

// Never-rejecting form: cancellation is a result.
const result = await client.inferResult(mlp(1), { signal: AbortSignal.abort("not needed") })
console.log(`inferResult with an aborted signal: ${result._tag}`)

const stats = await client.stats()
console.log(`pending after: ${stats.pending}, queued: ${stats.queue.total}`)
await client.close()
console.log(`after close: ${await client.infer(mlp(1)).then(() => "resolved", describe)}`)
