import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import * as InferenceError from "../src/InferenceError.ts"

const reasons: ReadonlyArray<readonly [InferenceError.Reason, number, boolean]> = [
  [new InferenceError.QueueFull({ modelId: "m", requestId: "r", capacity: 100 }), 429, true],
  [new InferenceError.QueueTimeout({ modelId: "m", requestId: "r", queueTimeoutMs: 5000, waitedMs: 5000 }), 504, true],
  [new InferenceError.DeadlineExceeded({ modelId: "m", requestId: "r", timeoutMs: 100, elapsedMs: 100 }), 504, false],
  [new InferenceError.Cancelled({ requestId: "r", reason: "stop" }), 499, false],
  [new InferenceError.ModelNotFound({ modelId: "m" }), 404, false],
  [new InferenceError.ModelUnavailable({ modelId: "m", reason: "corrupt" }), 503, true],
  // Not loaded under explicit model control: only a load changes that (Triton: NOT_FOUND).
  [new InferenceError.ModelUnavailable({ modelId: "m", reason: "unloaded", unloaded: true }), 404, false],
  [new InferenceError.InvalidInput({ modelId: "m", input: "x", detail: "missing input" }), 400, false],
  [new InferenceError.RunFailed({ modelId: "m", requestId: "r", detail: "boom" }), 500, false],
  [new InferenceError.ShuttingDown({}), 503, true]
]

describe("InferenceError", () => {
  for (const [reason, status, retryable] of reasons) {
    it(`maps ${reason._tag} to HTTP ${status}, retryable ${retryable}`, () => {
      assert.strictEqual(InferenceError.httpStatus(reason), status)
      const error = InferenceError.make(reason)
      assert.strictEqual(error.isRetryable, retryable)
      assert.strictEqual(error.message, reason.message)
      assert.isTrue(InferenceError.isInferenceError(error))
    })
  }

  it.effect("round-trips through its schema (serializable reasons)", () =>
    Effect.gen(function*() {
      for (const [reason] of reasons) {
        const error = InferenceError.make(reason)
        const encoded = yield* Schema.encodeEffect(InferenceError.InferenceError)(error)
        const decoded = yield* Schema.decodeUnknownEffect(InferenceError.InferenceError)(JSON.parse(JSON.stringify(encoded)))
        assert.strictEqual(decoded.reason._tag, reason._tag)
        assert.strictEqual(decoded.message, error.message)
      }
    }))

  it("a QueueFull names its request, or none when it had no id yet (refused before its body was read)", () => {
    assert.strictEqual(new InferenceError.QueueFull({ modelId: "mlp", requestId: "r-1", capacity: 3 }).message, "queue full: 3 requests already queued, all models together (model mlp, request r-1)")
    assert.strictEqual(new InferenceError.QueueFull({ modelId: "mlp", requestId: "", capacity: 3 }).message, "queue full: 3 requests already queued, all models together (model mlp)")
    // The model's own bound (config.json maxQueuedRequests): the message says whose queue is full.
    assert.strictEqual(
      new InferenceError.QueueFull({ modelId: "mlp", requestId: "r-1", capacity: 2, bound: "model" }).message,
      "queue full: model mlp already has 2 requests waiting, the most its config.json allows (maxQueuedRequests) (request r-1)"
    )
  })

  it("messages name the model and the input", () => {
    const error = new InferenceError.InvalidInput({ modelId: "mlp", input: "input", detail: "dim 1 is 5, the model takes 784" })
    assert.strictEqual(error.message, `invalid input "input" for model "mlp": dim 1 is 5, the model takes 784`)
  })
})
