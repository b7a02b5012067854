import { assert, describe, it } from "@effect/vitest"
import { Duration } from "effect"
import type { AsyncConfig } from "../../src/AsyncConfig.ts"
import * as BatchPolicy from "../../src/BatchPolicy.ts"
import * as ModelConfiguration from "../../src/http/ModelConfiguration.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"
import { controlledSignature, controls, counterSequence, counterSignature } from "../fixtures/CounterPool.ts"

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

  it("default_timeout_microseconds: whole microseconds, 0 for none or past a uint64 (an infinite or 1e308 ms queue timeout)", () => {
    const timeout = (ms: number) => ModelConfiguration.of(model({}), { ...engine, queueTimeout: Duration.millis(ms) }).dynamic_batching!.default_queue_policy.default_timeout_microseconds
    assert.deepStrictEqual([timeout(5000), timeout(0.0015), timeout(Infinity), timeout(1e308), timeout(0)], [5_000_000, 2, 0, 0, 0])
    // A timeout below half a microsecond is still one: not 0, which would read as none.
    assert.strictEqual(timeout(0.0001), 1)
  })

  it("model_warmup: the shapes the warm-up ran with, batch_size the rows where dims leave the batch dim out, else 1 and whole dims", () => {
    const batching = { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 64 }
    const plan = {
      samples: [
        { name: "given", batchSize: 1, count: 2, inputs: { x: { dims: [3, 4], data: { _tag: "Fill" as const, value: 2 } } } },
        { name: "default", batchSize: 8, count: 1, inputs: {} }
      ],
      inputAxes: {}
    }
    assert.deepStrictEqual(ModelConfiguration.of(model({ batching, warmup: plan }), engine).model_warmup, [
      { name: "given", batch_size: 3, inputs: { x: { data_type: "TYPE_FP32", dims: [4] } }, count: 2 },
      { name: "default", batch_size: 8, inputs: { x: { data_type: "TYPE_FP32", dims: [4], zero_data: true } }, count: 1 }
    ])
    // not batched: Triton's batch_size 1, dims whole
    assert.deepStrictEqual(ModelConfiguration.of(model({ warmup: plan }), engine).model_warmup?.map((s) => [s.batch_size, s.inputs["x"]!.dims]), [[1, [3, 4]], [1, [8, 4]]])
    assert.isUndefined(ModelConfiguration.of(model({}), engine).model_warmup)
  })

  it("max_queue_size: the model's own bound where config.json sets one, else the server's", () => {
    assert.strictEqual(ModelConfiguration.of(model({}), engine).dynamic_batching!.default_queue_policy.max_queue_size, 10)
    assert.strictEqual(ModelConfiguration.of(model({ maxQueuedRequests: 3 }), engine).dynamic_batching!.default_queue_policy.max_queue_size, 3)
  })

  it("max_batch_size and dims: the batch axis left out only where every tensor is batched on its first; otherwise max_batch_size 0 and every dim in place, as a Triton client must send them", () => {
    const batching = (inputAxes: Record<string, number | null>, outputAxes: Record<string, number | null> = {}) =>
      ({ ...BatchPolicy.disabled, enabled: true, maxBatchSize: 64, inputAxes, outputAxes })
    const silero = {
      inputs: [
        { name: "input", dtype: "float32", dims: [-1, -1] },
        { name: "state", dtype: "float32", dims: [2, -1, 128] },
        { name: "sr", dtype: "int64", dims: [] }
      ],
      outputs: [{ name: "output", dtype: "float32", dims: [-1, 1] }, { name: "stateN", dtype: "float32", dims: [2, -1, 128] }]
    } as const
    type Row = readonly [string, Partial<ModelMetadata.ModelMetadata>, number, ReadonlyArray<ReadonlyArray<number>>, ReadonlyArray<ReadonlyArray<number>>]
    const table: ReadonlyArray<Row> = [
      ["no batching", {}, 0, [[-1, 4]], [[-1, 4]]],
      ["batching disabled", { batching: BatchPolicy.disabled }, 0, [[-1, 4]], [[-1, 4]]],
      ["every tensor on its first axis", { batching: batching({}) }, 64, [[4]], [[4]]],
      ["axes named 0 explicitly", { batching: batching({ x: 0 }, { y: 0 }) }, 64, [[4]], [[4]]],
      ["an output not split by row", { batching: batching({}, { y: null }) }, 0, [[-1, 4]], [[-1, 4]]],
      ["Silero VAD: state on axis 1, sr a scalar", { ...silero, batching: batching({ state: 1, sr: null }, { stateN: 1 }) }, 0,
        [[-1, -1], [2, -1, 128], []], [[-1, 1], [2, -1, 128]]]
    ]
    for (const [why, extra, maxBatchSize, inputs, outputs] of table) {
      const config = ModelConfiguration.of(model(extra), engine)
      assert.strictEqual(config.max_batch_size, maxBatchSize, why)
      assert.deepStrictEqual(config.input.map((t) => t.dims), inputs, why)
      assert.deepStrictEqual(config.output.map((t) => t.dims), outputs, why)
    }
  })

  it("a stateful model: sequence_batching with its implicit state and control inputs, as Triton writes them, and no dynamic_batching", () => {
    const sequence = counterSequence({ controls, maxSequenceIdleMs: 2000 })
    const config = ModelConfiguration.of({ name: "counter", version: "1", ...controlledSignature, sequence }, engine)
    assert.isUndefined(config.dynamic_batching)
    assert.deepStrictEqual(config.input.map((t) => t.name), ["x"])
    assert.deepStrictEqual(config.output.map((t) => t.name), ["y"])
    assert.strictEqual(config.sequence_batching?.max_sequence_idle_microseconds, 2_000_000)
    assert.deepStrictEqual(config.sequence_batching?.control_input, [
      { name: "START", control: [{ kind: "CONTROL_SEQUENCE_START", int32_false_true: [0, 1] }] },
      { name: "END", control: [{ kind: "CONTROL_SEQUENCE_END", bool_false_true: [false, true] }] },
      { name: "READY", control: [{ kind: "CONTROL_SEQUENCE_READY", fp32_false_true: [0, 1] }] },
      { name: "CORRID", control: [{ kind: "CONTROL_SEQUENCE_CORRID", data_type: "TYPE_UINT64" }] }
    ])
    assert.deepStrictEqual(config.sequence_batching?.state.map((s) => [s.input_name, s.output_name, s.dims]), [["h", "hN", [1, 1]]])
    assert.deepStrictEqual(config.sequence_batching?.state[0]?.initial_state, [{ name: "zero", data_type: "TYPE_FP32", dims: [1, 1], zero_data: true }])
  })

  it("a state whose initial value comes from a file: initial_state names it as Triton's data_file", () => {
    const sequence = counterSequence({ states: [{ input: "h", output: "hN", dims: undefined, initialFile: { name: "h0.bin", bytes: new Uint8Array(Float32Array.of(5).buffer) } }] })
    const config = ModelConfiguration.of({ name: "counter", version: "1", ...counterSignature, sequence }, engine)
    assert.deepStrictEqual(config.sequence_batching?.state[0]?.initial_state, [{ name: "h0.bin", data_type: "TYPE_FP32", dims: [1, 1], data_file: "h0.bin" }])
  })
})
