import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import type { AsyncConfig } from "../../src/AsyncConfig.ts"
import * as ModelConfiguration from "../../src/http/ModelConfiguration.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"

const engine = { queueTimeout: Duration.millis(0), maxQueuedRequests: 10 } as AsyncConfig
const model = (extra: Partial<ModelMetadata.ModelMetadata>): ModelMetadata.ModelMetadata => ({
  name: "m",
  version: "1",
  inputs: [{ name: "x", dtype: "float32", dims: [-1, 4] }],
  outputs: [{ name: "y", dtype: "float32", dims: [-1, 4] }],
  ...extra
})

describe("ModelConfiguration", () => {
  it("says where the model's instances run: KIND_GPU on GPU 0 for a GPU provider, else KIND_CPU", () => {
    const table: ReadonlyArray<readonly [Partial<ModelMetadata.ModelMetadata>, unknown]> = [
      [{}, { name: "m", kind: "KIND_CPU", count: 1 }],
      [{ deviceUsed: "cpu", concurrency: 3 }, { name: "m", kind: "KIND_CPU", count: 3 }],
      [{ deviceUsed: "webgpu", concurrency: 2 }, { name: "m", kind: "KIND_GPU", count: 2, gpus: [0] }],
      [{ deviceUsed: "WebGPU" }, { name: "m", kind: "KIND_GPU", count: 1, gpus: [0] }],
      // a provider this version does not run on a GPU (onnxruntime-node's npm binaries have no CUDA)
      [{ deviceUsed: "xnnpack" }, { name: "m", kind: "KIND_CPU", count: 1 }]
    ]
    for (const [extra, group] of table) {
      assert.deepStrictEqual(ModelConfiguration.of(model(extra), engine).instance_group, [group], JSON.stringify(extra))
    }
  })
})
