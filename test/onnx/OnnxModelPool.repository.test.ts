import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, References } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as AsyncConfig from "../../src/AsyncConfig.ts"
import * as ModelConfiguration from "../../src/http/ModelConfiguration.ts"
import * as Oip from "../../src/http/Oip.ts"
import * as InferenceError from "../../src/InferenceError.ts"
import * as Mlp from "../../scripts/Mlp.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import * as ProcessHost from "../../src/onnx/ProcessHost.ts"
import * as Tensor from "../../src/Tensor.ts"
import { bundledRepository, maxAbsDiff, mlpBytes, sampleInput, tempRepository } from "../fixtures/ModelRepositoryFixture.ts"
import * as OnnxGraph from "../fixtures/OnnxGraph.ts"
import * as TestOps from "../fixtures/TestOps.ts"
import onnxProto from "onnx-proto"

const quiet = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.provideService(self, References.MinimumLogLevel, "Error")
const mlpInputs = (batch: number) => ({ input: Tensor.float32(sampleInput(batch), [batch, 784]) })
const logitsOf = (out: { readonly outputs: Tensor.TensorMap }) => out.outputs["logits"]!.data as Float32Array

describe("OnnxModelPool on a repository with broken models", () => {
  it.live("reports each broken model UNAVAILABLE with its reason while the others serve", () =>
    Effect.gen(function*() {
      const good = mlpBytes()
      const seed3 = Mlp.build({ seed: 3 })
      const repository = yield* tempRepository({
        "good/model.onnx": good,
        "corrupt/model.onnx": Uint8Array.from({ length: 4096 }, (_, i) => (i * 7919) % 251),
        "truncated/model.onnx": good.subarray(0, good.length >> 1),
        "missing/notes.txt": "no model.onnx here",
        "badconfig/model.onnx": good,
        "badconfig/config.json": JSON.stringify({ instances: "two" }),
        "badjson/model.onnx": good,
        "badjson/config.json": "{\"instances\": 1,",
        "batched/model.onnx": good,
        "batched/config.json": JSON.stringify({ batching: { maxBatchSize: 16, maxQueueDelayMs: 2 }, maxQueuedRequests: 40 }),
        "badbatching/model.onnx": good,
        "badbatching/config.json": JSON.stringify({ batching: { inputAxes: { pixels: 0 } } }),
        "badsignature/model.onnx": good,
        "badsignature/config.json": JSON.stringify({ inputSignatures: [{ input: { dims: [-1, 784] } }, { input: { dims: [-1, 512] } }] }),
        "versioned/1/model.onnx": good,
        "versioned/2/README": "version 2 was withdrawn",
        "versioned/3/model.onnx": seed3.bytes,
        "newbroken/1/model.onnx": good,
        "newbroken/2/model.onnx": good.subarray(0, 100),
        "allbroken/1/model.onnx": good.subarray(0, 100),
        "allbroken/2/README": "no model.onnx"
      })
      const pool = yield* quiet(OnnxModelPool.make({ repository, defaults: { instances: 1 } }))
      const states = Object.fromEntries((yield* pool.models).map((m) => [`${m.name}@${m.version}`, m]))
      assert.deepStrictEqual(Object.keys(states), [
        "allbroken@1",
        "allbroken@2",
        "badbatching@1",
        "badconfig@1",
        "badjson@1",
        "badsignature@1",
        "batched@1",
        "corrupt@1",
        "good@1",
        "missing@1",
        "newbroken@1",
        "newbroken@2",
        "truncated@1",
        "versioned@1",
        "versioned@2",
        "versioned@3"
      ])
      const reason = (key: string) => {
        assert.strictEqual(states[key]!.state, "UNAVAILABLE", key)
        return states[key]!.reason ?? ""
      }
      assert.match(reason("corrupt@1"), /protobuf parsing failed/i)
      assert.match(reason("truncated@1"), /protobuf parsing failed|failed to load/i)
      assert.include(reason("missing@1"), "model.onnx: does not exist")
      assert.include(reason("badconfig@1"), `config.json: Expected number at ["instances"]`)
      assert.include(reason("badjson@1"), "config.json: invalid JSON")
      assert.include(reason("versioned@2"), "versioned/2/model.onnx: does not exist")
      assert.include(reason("badbatching@1"), `config.json: batching.inputAxes names unknown input "pixels"`)
      assert.strictEqual(reason("badsignature@1"), "config.json: inputSignatures[1].input.dims: dim 1 is 512, the model fixes it at 784")
      for (const key of ["good@1", "batched@1", "versioned@1", "versioned@3"]) assert.strictEqual(states[key]!.state, "READY", key)

      // batching: the default without a section (on: the mlp's dim 0 is dynamic), resolved against the session's signature with one
      assert.deepInclude((yield* pool.metadata("good")).batching, { enabled: true, maxBatchSize: 64 })
      const batching = (yield* pool.metadata("batched")).batching
      assert.deepInclude(batching, { enabled: true, maxBatchSize: 16 })
      // the model's own queue bound, for the engine; none without one
      assert.strictEqual((yield* pool.metadata("batched")).maxQueuedRequests, 40)
      assert.notProperty(yield* pool.metadata("good"), "maxQueuedRequests")

      // the broken ones fail fast with ModelUnavailable, naming the model and the reason
      for (const name of ["corrupt", "truncated", "missing", "badconfig", "badbatching", "badsignature"]) {
        const metadataError = yield* Effect.flip(pool.metadata(name))
        assert.instanceOf(metadataError, InferenceError.ModelUnavailable, name)
        assert.strictEqual((metadataError as InferenceError.ModelUnavailable).modelId, name)
        assert.strictEqual((metadataError as InferenceError.ModelUnavailable).reason, states[`${name}@1`]!.reason)
        assert.instanceOf(yield* Effect.flip(pool.run(name, mlpInputs(1), { requestId: name })), InferenceError.ModelUnavailable, name)
      }

      // the good one serves
      const out = yield* pool.run("good", mlpInputs(2), { requestId: "good" })
      assert.isBelow(maxAbsDiff(logitsOf(out), Mlp.forward(Mlp.weights(), sampleInput(2), 2)), 1e-5)

      // versions: the highest is the default, others by name, a withdrawn one is unavailable
      assert.strictEqual((yield* pool.metadata("versioned")).version, "3")
      assert.strictEqual((yield* pool.metadata("versioned", "1")).version, "1")
      const v3 = yield* pool.run("versioned", mlpInputs(1), { requestId: "v3" })
      assert.isBelow(maxAbsDiff(logitsOf(v3), Mlp.forward(seed3.mlp, sampleInput(1), 1)), 1e-5)
      const v1 = yield* pool.run("versioned", mlpInputs(1), { requestId: "v1", version: "1" })
      assert.isBelow(maxAbsDiff(logitsOf(v1), Mlp.forward(Mlp.weights(), sampleInput(1), 1)), 1e-5)
      assert.instanceOf(yield* Effect.flip(pool.metadata("versioned", "2")), InferenceError.ModelUnavailable)
      const v9 = yield* Effect.flip(pool.run("versioned", mlpInputs(1), { requestId: "v9", version: "9" }))
      assert.instanceOf(v9, InferenceError.ModelNotFound)
      assert.strictEqual((v9 as InferenceError.ModelNotFound).version, "9")

      // without a version, the highest that can serve (as Triton): a broken version 2 does not take the model down
      assert.strictEqual(states["newbroken@2"]!.state, "UNAVAILABLE")
      assert.strictEqual((yield* pool.metadata("newbroken")).version, "1")
      assert.strictEqual(pool.metadataUnsafe!("newbroken") instanceof Error, false)
      const fallback = yield* pool.run("newbroken", mlpInputs(1), { requestId: "nb" })
      assert.isBelow(maxAbsDiff(logitsOf(fallback), Mlp.forward(Mlp.weights(), sampleInput(1), 1)), 1e-5)
      assert.instanceOf(yield* Effect.flip(pool.metadata("newbroken", "2")), InferenceError.ModelUnavailable)
      // none can: the highest one's reason
      const none = yield* Effect.flip(pool.metadata("allbroken"))
      assert.instanceOf(none, InferenceError.ModelUnavailable)
      assert.include((none as InferenceError.ModelUnavailable).reason, "allbroken/2/model.onnx: does not exist")
    }))

  it.live("labels (Triton's label_filename): read from the model's directory, checked against its outputs, used by classification", () =>
    Effect.gen(function*() {
      const good = mlpBytes()
      const classes = Array.from({ length: 10 }, (_, i) => (i === 3 ? "" : `class ${i}`))
      const repository = yield* tempRepository({
        "labelled/model.onnx": good,
        "labelled/config.json": JSON.stringify({ labels: { logits: "classes.txt" } }),
        // CRLF endings and a final newline, as an editor may leave them; line 3 empty: no label.
        "labelled/classes.txt": classes.map((c) => `${c}\r\n`).join(""),
        "unknownoutput/model.onnx": good,
        "unknownoutput/config.json": JSON.stringify({ labels: { scores: "classes.txt" } }),
        "unknownoutput/classes.txt": "a\n",
        "nofile/model.onnx": good,
        "nofile/config.json": JSON.stringify({ labels: { logits: "missing.txt" } }),
        "outside/model.onnx": good,
        "outside/config.json": JSON.stringify({ labels: { logits: "../labelled/classes.txt" } }),
        "notutf8/model.onnx": good,
        "notutf8/config.json": JSON.stringify({ labels: { logits: "classes.txt" } }),
        "notutf8/classes.txt": Uint8Array.of(0x61, 0xff, 0x0a)
      })
      const pool = yield* quiet(OnnxModelPool.make({ repository, defaults: { instances: 1 } }))
      const states = Object.fromEntries((yield* pool.models).map((m) => [m.name, m]))
      const reason = (name: string) => {
        assert.strictEqual(states[name]!.state, "UNAVAILABLE", name)
        return states[name]!.reason ?? ""
      }
      assert.strictEqual(reason("unknownoutput"), `config.json: labels: the model has no output "scores" (its outputs: logits)`)
      assert.strictEqual(reason("nofile"), `config.json: labels of output "logits": missing.txt cannot be read (no such file in the model's directory)`)
      assert.include(reason("outside"), `a label file is a file name in the model's directory (no "/", "\\" or ".."), got "../labelled/classes.txt"`)
      assert.strictEqual(reason("notutf8"), `config.json: labels of output "logits": classes.txt is not UTF-8 text`)
      const metadata = yield* pool.metadata("labelled")
      assert.deepStrictEqual(metadata.labels, { logits: classes })
      // The model configuration (Triton's extension) names the file, as Triton's label_filename.
      const config = ModelConfiguration.of(metadata, AsyncConfig.defaults)
      assert.deepStrictEqual(config.output.map((o) => ["label_filename" in o ? o.label_filename : undefined, o.name]), [["classes.txt", "logits"]])
      // The real logits, classified with their labels: class 3's is empty, so its string has none.
      const out = yield* pool.run("labelled", mlpInputs(1), { requestId: "labelled" })
      const all = Oip.answerTensor(metadata, "logits", out.outputs["logits"]!, new Map([["logits", 10]]))
      const strings = Array.from(all.data as ReadonlyArray<string>)
      const logits = logitsOf(out)
      for (const s of strings) {
        const [value, index, label] = s.split(":")
        assert.strictEqual(value, logits[Number(index)]!.toFixed(6))
        assert.strictEqual(label, Number(index) === 3 ? undefined : `class ${index}`, s)
      }
    }))

  it.live("warmup (Triton's model_warmup): every instance runs the samples before the model is READY; a sample that misfits or fails makes it UNAVAILABLE", () =>
    Effect.gen(function*() {
      const good = mlpBytes()
      const vad = Fs.readFileSync(Path.join(bundledRepository, "silero_vad", "model.onnx"))
      const vadConfig = JSON.parse(Fs.readFileSync(Path.join(bundledRepository, "silero_vad", "config.json"), "utf8")) as object
      const samples = [{ name: "one row" }, { name: "full", batchSize: 64, count: 2, inputs: { input: { data: "random" } } }]
      const repository = yield* tempRepository({
        "warm/model.onnx": good,
        "warm/config.json": JSON.stringify({ instances: 2, warmup: samples, responseCache: { enable: true } }),
        "warmproc/model.onnx": good,
        "warmproc/config.json": JSON.stringify({ isolation: "process", warmup: samples }),
        "misfit/model.onnx": good,
        "misfit/config.json": JSON.stringify({ warmup: [{ inputs: { pixels: { data: "random" } } }] }),
        "badwarmup/model.onnx": good,
        "badwarmup/config.json": JSON.stringify({ warmup: [{ count: 0 }] }),
        // Silero refuses a sample rate of 0 (zero data) in its run, and takes 16000
        "vadzero/model.onnx": vad,
        "vadzero/config.json": JSON.stringify({ ...vadConfig, warmup: [{ name: "zeros", inputs: { input: { dims: [1, 512] } } }] }),
        // Triton's input_data_file: one row of the MLP's input, repeated for each row
        "fromfile/model.onnx": good,
        "fromfile/config.json": JSON.stringify({ isolation: "process", warmup: [{ name: "rows", batchSize: 4, inputs: { input: { data: { file: "row.bin" } } } }] }),
        "fromfile/warmup/row.bin": new Uint8Array(sampleInput(1).buffer),
        "shortfile/model.onnx": good,
        "shortfile/config.json": JSON.stringify({ warmup: [{ name: "rows", batchSize: 4, inputs: { input: { data: { file: "row.bin" } } } }] }),
        "shortfile/warmup/row.bin": new Uint8Array(12),
        "vad16k/model.onnx": vad,
        "vad16k/config.json": JSON.stringify({ ...vadConfig, warmup: [{ batchSize: 4, inputs: { input: { dims: [4, 512], data: "random" }, sr: { data: { fill: 16000 } } } }] })
      })
      const pool = yield* quiet(OnnxModelPool.make({ repository, defaults: { instances: 1 } }))
      const states = Object.fromEntries((yield* pool.models).map((m) => [m.name, m]))
      for (const name of ["warm", "warmproc", "vad16k", "fromfile"]) assert.strictEqual(states[name]!.state, "READY", `${name}: ${states[name]!.reason}`)
      const reason = (name: string) => {
        assert.strictEqual(states[name]!.state, "UNAVAILABLE", name)
        return states[name]!.reason ?? ""
      }
      assert.include(reason("misfit"), `warmup sample "sample 0" does not fit the model: the model has no input "pixels" (its inputs: input)`)
      assert.include(reason("badwarmup"), "warmup[0].count must be an integer from 1 to 1000")
      assert.include(reason("vadzero"), `warmup sample "zeros" failed: `)
      assert.include(reason("shortfile"), `warmup sample "rows" does not fit the model: input "input": warmup/row.bin has 12 bytes; [4, 784] float32 takes 12544 bytes (or 3136 bytes for one row, repeated 4 times)`)
      assert.deepStrictEqual(ModelConfiguration.of(yield* pool.metadata("fromfile"), AsyncConfig.defaults).model_warmup, [
        { name: "rows", batch_size: 4, inputs: { input: { data_type: "TYPE_FP32", dims: [784], input_data_file: "row.bin" } }, count: 1 }
      ])
      // What ran is what the model configuration reports, in Triton's form.
      const metadata = yield* pool.metadata("warm")
      assert.isTrue(metadata.responseCache, "config.json's responseCache reaches the engine")
      assert.isUndefined((yield* pool.metadata("warmproc")).responseCache)
      assert.deepStrictEqual(metadata.warmup?.samples.map((s) => [s.name, s.batchSize, s.count]), [["one row", 1, 1], ["full", 64, 2]])
      assert.deepStrictEqual(ModelConfiguration.of(metadata, AsyncConfig.defaults).model_warmup, [
        { name: "one row", batch_size: 1, inputs: { input: { data_type: "TYPE_FP32", dims: [784], zero_data: true } }, count: 1 },
        { name: "full", batch_size: 64, inputs: { input: { data_type: "TYPE_FP32", dims: [784], random_data: true } }, count: 2 }
      ])
      // Silero is batched on other axes than the first: batch_size 1 and whole shapes; a fill has no Triton kind.
      const vadWarmup = ModelConfiguration.of(yield* pool.metadata("vad16k"), AsyncConfig.defaults).model_warmup
      assert.deepStrictEqual(vadWarmup?.[0]?.inputs, {
        input: { data_type: "TYPE_FP32", dims: [4, 512], random_data: true },
        state: { data_type: "TYPE_FP32", dims: [2, 4, 128], zero_data: true },
        sr: { data_type: "TYPE_INT64", dims: [] }
      })
      // and it serves as any model
      for (const name of ["warm", "warmproc"]) {
        const out = yield* pool.run(name, mlpInputs(2), { requestId: name })
        assert.deepStrictEqual(out.outputs["logits"]!.dims, [2, 10], name)
      }
    }))

  it.live("warmup edge cases: a plan over 128 KiB reaches a session process, a warm-up past loadTimeoutMs stops, batchSize past maxBatchSize and an input named __proto__ are refused", () =>
    Effect.gen(function*() {
      const { onnx } = onnxProto
      // 64 inputs, each passed through: a plan of 64 samples × 64 inputs is about 200 KB of JSON,
      // over Linux's 128 KiB bound on one command-line argument (spawn E2BIG when it went there).
      const names = Array.from({ length: 64 }, (_, i) => `input_${i}`)
      const wide = OnnxGraph.encodeModel(onnx.GraphProto.create({
        name: "wide",
        node: names.map((n) => onnx.NodeProto.create({ name: `id_${n}`, opType: "Identity", input: [n], output: [`out_${n}`] })),
        input: names.map((n) => OnnxGraph.valueInfo(n, onnx.TensorProto.DataType.FLOAT, ["batch", 4])),
        output: names.map((n) => OnnxGraph.valueInfo(`out_${n}`, onnx.TensorProto.DataType.FLOAT, ["batch", 4]))
      }))
      const bigPlan = Array.from({ length: 64 }, (_, i) => ({
        name: `sample ${i} ${"-".repeat(150)}`,
        inputs: Object.fromEntries(names.map((n) => [n, { dims: [1, 4], data: "random" }]))
      }))
      assert.isAbove(JSON.stringify(bigPlan).length, 128 * 1024)
      const good = mlpBytes()
      const repository = yield* tempRepository({
        "wide/model.onnx": wide,
        "wide/config.json": JSON.stringify({ isolation: "process", warmup: bigPlan }),
        // each run of 16,384 rows takes tens of ms here: 1,000 of them far outlast the 1 s load timeout
        "slow/model.onnx": good,
        "slow/config.json": JSON.stringify({ loadTimeoutMs: 1000, warmup: [{ batchSize: 16384, count: 1000 }] }),
        "toolarge/model.onnx": good,
        "toolarge/config.json": JSON.stringify({ batching: { maxBatchSize: 8 }, warmup: [{ name: "big", batchSize: 16 }] }),
        // the rows its dims give count as well
        "toolargedims/model.onnx": good,
        "toolargedims/config.json": JSON.stringify({ batching: { maxBatchSize: 8 }, warmup: [{ name: "dims", inputs: { input: { dims: [100, 784] } } }] }),
        "proto/model.onnx": good,
        "proto/config.json": `{"warmup": [{"inputs": {"__proto__": {"data": "random"}}}]}`
      })
      const startedMs = Date.now()
      const pool = yield* quiet(OnnxModelPool.make({ repository, defaults: { instances: 1 } }))
      const elapsedMs = Date.now() - startedMs
      const states = Object.fromEntries((yield* pool.models).map((m) => [m.name, m]))
      assert.strictEqual(states["wide"]!.state, "READY", states["wide"]!.reason)
      const reason = (name: string) => {
        assert.strictEqual(states[name]!.state, "UNAVAILABLE", name)
        return states[name]!.reason ?? ""
      }
      assert.include(reason("slow"), "did not load its session within 1s")
      // The thread stops its warm-up itself (nothing can stop it from outside): the start does not wait out 1,000 runs.
      assert.isBelow(elapsedMs, 20_000)
      assert.include(reason("toolarge"), `config.json: warmup sample "big": 16 rows, above batching.maxBatchSize 8`)
      assert.include(reason("toolargedims"), `config.json: warmup sample "dims": 100 rows, above batching.maxBatchSize 8`)
      assert.include(reason("proto"), `the model has no input "__proto__"`)
    }))

  it.live("falls back to cpu when the requested execution providers cannot load, and says so", () =>
    Effect.gen(function*() {
      const good = mlpBytes()
      const repository = yield* tempRepository({
        "webgpu/model.onnx": good,
        "webgpu/config.json": JSON.stringify({ executionProviders: ["webgpu", "cpu"] }),
        "cuda/model.onnx": good,
        "cuda/config.json": JSON.stringify({ executionProviders: ["cuda"] }),
        "coreml/model.onnx": good,
        "coreml/config.json": JSON.stringify({ executionProviders: ["coreml", "cpu"] })
      })
      const pool = yield* quiet(OnnxModelPool.make({ repository, defaults: { instances: 1 } }))
      const info = Object.fromEntries((yield* pool.info).map((m) => [m.name, m]))
      for (const [name, provider] of [["webgpu", "webgpu"], ["cuda", "cuda"], ["coreml", "coreml"]] as const) {
        assert.strictEqual(info[name]!.state, "READY", name)
        assert.strictEqual(info[name]!.deviceUsed, "cpu", name)
        assert.strictEqual((yield* pool.metadata(name)).deviceUsed, "cpu", `${name}: what runs, after the fall back`)
        assert.deepStrictEqual(info[name]!.fallbacks?.map((f) => f.provider), [provider], name)
        assert.isAbove(info[name]!.fallbacks![0]!.error.length, 0)
        const out = yield* pool.run(name, mlpInputs(1), { requestId: name })
        assert.strictEqual(out.deviceUsed, "cpu", name)
      }
    }))

  it.live("marks a model UNAVAILABLE when a crashed instance cannot be replaced", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ instances: 1 }) })
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: TestOps.transports, respawnAttempts: 2 }))
      yield* pool.run("mlp", mlpInputs(1), { requestId: "before" })
      // the file goes bad on disk, then the only worker dies: no replacement runs another file than the one loaded
      Fs.writeFileSync(Path.join(repository, "mlp", "model.onnx"), "garbage")
      const crashed = yield* Effect.flip(TestOps.run(pool, "mlp", { _tag: "exit", code: 9 }, { requestId: "crash" }))
      assert.instanceOf(crashed, InferenceError.RunFailed)
      // a request that waits for the replacement fails once the replacement is given up
      const waiting = yield* Effect.flip(pool.run("mlp", mlpInputs(1), { requestId: "waiting" }))
      assert.instanceOf(waiting, InferenceError.ModelUnavailable)
      assert.match((waiting as InferenceError.ModelUnavailable).reason, /could not be replaced.*exit code 9.*model\.onnx changed on disk since this version loaded/is)
      const [status] = yield* pool.models
      assert.strictEqual(status!.state, "UNAVAILABLE")
      assert.strictEqual(pool.counters.respawnFailures, 1)
      assert.instanceOf(yield* Effect.flip(pool.metadata("mlp")), InferenceError.ModelUnavailable)
    }))
})

describe("OnnxModelPool with a model whose processes run it on the GPU (a fake: they say webgpu, and run on the CPU)", () => {
  it.live("serves a model whose instances run on the GPU with a GPU model's defaults, and says where it runs", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({
        "gpu/model.onnx": mlpBytes(),
        "gpu/config.json": JSON.stringify({ executionProviders: ["webgpu"], instances: 2 }),
        "tuned/model.onnx": mlpBytes(),
        "tuned/config.json": JSON.stringify({ executionProviders: ["webgpu"], instances: 1, batching: { maxBatchSize: 32, preferredBatchSizes: [16] } })
      })
      const onGpu = ProcessHost.transportFor(new URL("../fixtures/FakeGpuSessionProcess.ts", import.meta.url))
      const pool = yield* quiet(OnnxModelPool.make({ repository, transports: { process: onGpu } }))
      const info = Object.fromEntries((yield* pool.info).map((m) => [m.name, m]))
      assert.deepInclude(info["gpu"], { state: "READY", deviceUsed: "webgpu", isolation: "process" })
      const gpu = yield* pool.metadata("gpu")
      assert.strictEqual(gpu.deviceUsed, "webgpu")
      assert.strictEqual(gpu.devices, 1, "its instances share one GPU: learned sizing predicts their runs one after another")
      assert.strictEqual(gpu.concurrency, 2)
      assert.deepInclude(gpu.batching, { enabled: true, maxBatchSize: 256, sizing: "learned" }, "a GPU model's batching defaults")
      assert.strictEqual(Duration.toMillis(gpu.batching!.maxQueueDelay), 2)
      const tuned = yield* pool.metadata("tuned")
      assert.deepInclude(tuned.batching, { maxBatchSize: 32, preferredBatchSizes: [16], sizing: "fixed" }, "what config.json says is kept")
      assert.deepStrictEqual(ModelConfiguration.of(gpu, AsyncConfig.defaults).instance_group, [{ name: "gpu", kind: "KIND_GPU", count: 2, gpus: [0] }])
      const out = yield* pool.run("gpu", mlpInputs(3), { requestId: "gpu" })
      assert.strictEqual(out.deviceUsed, "webgpu")
      assert.deepStrictEqual(out.outputs["logits"]!.dims, [3, 10])
    }))
})
