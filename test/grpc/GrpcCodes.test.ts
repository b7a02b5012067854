/**
 * `InferenceError.grpcCode`, the one mapping from reason to gRPC status, against grpc-js's own
 * constants and beside `httpStatus`: every reason, as Triton maps its errors.
 */
import * as Grpc from "@grpc/grpc-js"
import { assert, describe, it } from "@effect/vitest"
import * as InferenceError from "../../src/InferenceError.ts"

const reasons: ReadonlyArray<readonly [InferenceError.Reason, Grpc.status, number]> = [
  [new InferenceError.InvalidInput({ modelId: "m", detail: "d" }), Grpc.status.INVALID_ARGUMENT, 400],
  [new InferenceError.ModelNotFound({ modelId: "m" }), Grpc.status.NOT_FOUND, 404],
  [new InferenceError.QueueFull({ modelId: "m", requestId: "r", capacity: 1 }), Grpc.status.RESOURCE_EXHAUSTED, 429],
  [new InferenceError.Cancelled({ requestId: "r", reason: "x" }), Grpc.status.CANCELLED, 499],
  [new InferenceError.RunFailed({ modelId: "m", requestId: "r", detail: "d" }), Grpc.status.INTERNAL, 500],
  [new InferenceError.ModelUnavailable({ modelId: "m", reason: "x" }), Grpc.status.UNAVAILABLE, 503],
  [new InferenceError.ModelUnavailable({ modelId: "m", reason: "unloaded", unloaded: true }), Grpc.status.NOT_FOUND, 404],
  [new InferenceError.ShuttingDown({}), Grpc.status.UNAVAILABLE, 503],
  [new InferenceError.QueueTimeout({ modelId: "m", requestId: "r", queueTimeoutMs: 1, waitedMs: 2 }), Grpc.status.DEADLINE_EXCEEDED, 504],
  [new InferenceError.DeadlineExceeded({ modelId: "m", requestId: "r", timeoutMs: 1, elapsedMs: 2 }), Grpc.status.DEADLINE_EXCEEDED, 504]
]

describe("InferenceError.grpcCode", () => {
  it("maps every reason to the status Triton uses, consistently with httpStatus", () => {
    for (const [reason, code, http] of reasons) {
      assert.strictEqual(InferenceError.grpcCode(reason), code, reason._tag)
      assert.strictEqual(InferenceError.httpStatus(reason), http, reason._tag)
    }
    const tags = new Set(reasons.map(([r]) => r._tag))
    assert.strictEqual(tags.size, 9, "every reason is in the table")
  })
})
