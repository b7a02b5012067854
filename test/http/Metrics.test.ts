/**
 * `Metrics.tritonFamilies`, pure: the engine's request outcomes as Triton's failure reasons, and
 * the requests waiting per version as its pending count, with values other than 0 (the route
 * tests see mostly zero rows).
 */
import { assert, describe, it } from "@effect/vitest"
import type { Metric } from "effect"
import * as Metrics from "../../src/http/Metrics.ts"
import { metrics, type RequestOutcome } from "../../src/Telemetry.ts"

const requests = (outcome: RequestOutcome, count: number): Metric.Metric.Snapshot => ({
  id: metrics.requests.id,
  type: "Counter",
  description: undefined,
  attributes: { model: "m", version: "1", outcome },
  state: { count, incremental: true }
} as unknown as Metric.Metric.Snapshot)

describe("Metrics.tritonFamilies", () => {
  it("maps each failure outcome to Triton's reason, and the waiting requests to nv_inference_pending_request_count", () => {
    const snapshot = [
      requests("success", 7),
      requests("rejected", 2),
      requests("cancelled", 3),
      requests("backend", 5),
      requests("timeout", 11),
      requests("invalid", 13)
    ]
    const text = Metrics.tritonFamilies(snapshot, new Map([["m", new Map([["1", 4]])]]))
    for (const line of [
      "nv_inference_request_success{model=\"m\",version=\"1\"} 7",
      "nv_inference_request_failure{model=\"m\",version=\"1\",reason=\"REJECTED\"} 2",
      "nv_inference_request_failure{model=\"m\",version=\"1\",reason=\"CANCELED\"} 3",
      "nv_inference_request_failure{model=\"m\",version=\"1\",reason=\"BACKEND\"} 5",
      // Triton has no reason of its own for these two.
      "nv_inference_request_failure{model=\"m\",version=\"1\",reason=\"OTHER\"} 24",
      "nv_inference_pending_request_count{model=\"m\",version=\"1\"} 4"
    ]) {
      assert.include(text, `${line}\n`, line)
    }
  })
})
