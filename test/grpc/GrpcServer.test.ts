/**
 * The gRPC server driven by `@grpc/grpc-js` as a Triton or KServe client would: every RPC, raw
 * and typed contents, streaming (completion or request order, half-close, cancel mid-stream, triton_grpc_error), deadlines,
 * every error code, bad messages. Real sockets on 127.0.0.1, real engine, scripted pool.
 */
import * as Grpc from "@grpc/grpc-js"
import * as Http2 from "node:http2"
import { constants as Http2Constants } from "node:http2"
import * as Stream from "node:stream"
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Fiber, Latch, Layer, Scope } from "effect"
import { DispatchGate } from "../../src/Engine.ts"
import * as GrpcCodec from "../../src/grpc/GrpcCodec.ts"
import * as GrpcServer from "../../src/grpc/GrpcServer.ts"
import { hostPort, maxConcurrentStreams } from "../../src/grpc/GrpcServer.ts"
import { ModelPool } from "../../src/ModelPool.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import { mlpBytes, tempRepository, writeTree } from "../fixtures/ModelRepositoryFixture.ts"
import { scaleBytes } from "../fixtures/OnnxGraph.ts"
import { makeTestPool } from "../http/TestApp.ts"
import { echoRaw, f32, fromF32, makeHarness, openStream } from "./GrpcHarness.ts"

const definitions = GrpcCodec.loadDefinitions()

const waitFor = (condition: () => boolean | Promise<boolean>, ms = 2000) =>
  Effect.promise(async () => {
    const until = Date.now() + ms
    while (Date.now() < until) {
      if (await condition()) return
      await new Promise((r) => setTimeout(r, 5))
    }
    throw new Error("condition never held")
  })

describe("health, server and model metadata", () => {
  it.live("live, ready, server metadata and grpc.health.v1 SERVING; after shutdown begins: not ready, NOT_SERVING, inference UNAVAILABLE", () =>
    Effect.gen(function*() {
      const { call, health, lifecycle } = yield* makeHarness()
      assert.deepStrictEqual((yield* call("ServerLive", {})).response, { live: true })
      assert.deepStrictEqual((yield* call("ServerReady", {})).response, { ready: true })
      const meta = (yield* call("ServerMetadata", {})).response
      assert.strictEqual(meta.name, "effect-onnx")
      assert.strictEqual(meta.version, "0.0.0-test")
      assert.include(meta.extensions, "model_configuration")
      assert.deepStrictEqual((yield* call("Check", { service: "" }, {}, health)).response, { status: "SERVING" })
      // Whatever service it names, as Triton's (a Kubernetes probe may name one of its own).
      assert.deepStrictEqual((yield* call("Check", { service: "my-app" }, {}, health)).response, { status: "SERVING" })
      yield* lifecycle.beginShutdown
      assert.deepStrictEqual((yield* call("Check", { service: "" }, {}, health)).response, { status: "NOT_SERVING" })
      assert.deepStrictEqual((yield* call("ServerReady", {})).response, { ready: false })
      assert.deepStrictEqual((yield* call("ServerLive", {})).response, { live: true })
      assert.strictEqual(lifecycle.refused().grpc, 0)
      const refused = yield* call("ModelInfer", echoRaw([1, 2, 3, 4]))
      assert.strictEqual(refused.error?.code, Grpc.status.UNAVAILABLE)
      assert.include(refused.error?.details, "shutting down")
      assert.strictEqual(lifecycle.refused().grpc, 1, "counted for the drain's log line")
    }))

  it.live("ModelInfer refusals before admission are counted as over HTTP: an unavailable model, a version it lacks, a made-up model, draining", () =>
    Effect.gen(function*() {
      const { call, lifecycle, telemetry } = yield* makeHarness({ recordTelemetry: true })
      assert.strictEqual((yield* call("ModelInfer", echoRaw([1, 2, 3, 4], { model_name: "broken" }))).error?.code, Grpc.status.UNAVAILABLE)
      assert.strictEqual((yield* call("ModelInfer", echoRaw([1, 2, 3, 4], { model_version: "9" }))).error?.code, Grpc.status.NOT_FOUND)
      assert.strictEqual((yield* call("ModelInfer", echoRaw([1, 2, 3, 4], { model_name: "made-up" }))).error?.code, Grpc.status.NOT_FOUND)
      yield* lifecycle.beginShutdown
      assert.strictEqual((yield* call("ModelInfer", echoRaw([1, 2, 3, 4]))).error?.code, Grpc.status.UNAVAILABLE)
      // (The version labels are checked over HTTP, where /metrics shows them: the same engine call.)
      const outcomes = telemetry.flatMap((e) => e._tag === "failure" || e._tag === "rejected" ? [`${e._tag}:${e.modelId}:${e.reason}`] : [])
      assert.deepStrictEqual(outcomes, ["failure:broken:ModelUnavailable", "failure:echo:ModelNotFound", "failure:_unknown:ModelNotFound", "rejected:echo:ShuttingDown"])
    }))

  it.live("strict readiness: ServerReady and Health.Check answer from HTTP's check, so a broken model makes both not ready; lenient, ready", () =>
    Effect.gen(function*() {
      const strict = yield* makeHarness({ strictReadiness: true })
      assert.deepStrictEqual((yield* strict.call("ServerReady", {})).response, { ready: false })
      for (const service of ["", "inference.GRPCInferenceService"]) {
        assert.deepStrictEqual((yield* strict.call("Check", { service }, {}, strict.health)).response, { status: "NOT_SERVING" }, service)
      }
      assert.deepStrictEqual((yield* strict.call("ServerLive", {})).response, { live: true })
      const lenient = yield* makeHarness({ strictReadiness: false })
      assert.deepStrictEqual((yield* lenient.call("ServerReady", {})).response, { ready: true })
      assert.deepStrictEqual((yield* lenient.call("Check", { service: "" }, {}, lenient.health)).response, { status: "SERVING" })
    }))

  it.live("model metadata, readiness (false for an unknown model, as Triton), configuration; NOT_FOUND and INVALID_ARGUMENT as HTTP's 404 and 400", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness()
      const meta = (yield* call("ModelMetadata", { name: "multi" })).response
      assert.strictEqual(meta.platform, "onnxruntime_onnx")
      assert.deepStrictEqual(meta.inputs, [{ name: "a", datatype: "FP32", shape: ["-1"] }, { name: "b", datatype: "INT64", shape: [] }])
      assert.deepStrictEqual((yield* call("ModelMetadata", { name: "echo" })).response.versions, ["1", "2"])
      assert.deepStrictEqual((yield* call("ModelMetadata", { name: "echo", version: "2" })).response.versions, ["2"])
      const missing = yield* call("ModelMetadata", { name: "nope" })
      assert.strictEqual(missing.error?.code, Grpc.status.NOT_FOUND)
      assert.strictEqual(missing.error?.details, "model \"nope\" not found")
      assert.strictEqual((yield* call("ModelMetadata", { name: "../etc" })).error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.strictEqual((yield* call("ModelMetadata", { name: "echo", version: "x" })).error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.deepStrictEqual((yield* call("ModelReady", { name: "echo", version: "1" })).response, { ready: true })
      assert.deepStrictEqual((yield* call("ModelReady", { name: "broken" })).response, { ready: false })
      assert.deepStrictEqual((yield* call("ModelReady", { name: "nope" })).response, { ready: false })
      // A name no model can have is a model it does not have (tritonclient's is_model_ready: False,
      // not an exception); a version that is not a number is still an error, as Triton's.
      assert.deepStrictEqual((yield* call("ModelReady", { name: "../x" })).response, { ready: false })
      assert.deepStrictEqual((yield* call("ModelReady", { name: "" })).response, { ready: false })
      assert.strictEqual((yield* call("ModelReady", { name: "echo", version: "x" })).error?.code, Grpc.status.INVALID_ARGUMENT)
      const unavailable = yield* call("ModelMetadata", { name: "broken" })
      assert.strictEqual(unavailable.error?.code, Grpc.status.UNAVAILABLE)
      assert.notInclude(unavailable.error?.details, "/srv/")
      const config = (yield* call("ModelConfig", { name: "batched" })).response.config
      assert.strictEqual(config.name, "batched")
      assert.strictEqual(config.platform, "onnxruntime_onnx")
      assert.strictEqual(config.max_batch_size, 2)
      assert.deepStrictEqual(config.version_policy?.all, {}, "every version is served, as Triton's `all` policy")
      assert.deepStrictEqual(config.input.map((t: any) => [t.name, t.data_type, t.dims]), [["x", "TYPE_FP32", ["4"]]])
      assert.strictEqual(config.instance_group[0].kind, "KIND_GPU")
      assert.deepStrictEqual(config.instance_group[0].gpus, [0])
      assert.deepStrictEqual(config.model_warmup, [{
        name: "pair",
        batch_size: 2,
        count: 3,
        inputs: { x: { data_type: "TYPE_FP32", dims: ["4"], random_data: true, input_data_type: "random_data" } }
      }], "config.json's warmup, as Triton's ModelWarmup")
      assert.deepStrictEqual((yield* call("ModelConfig", { name: "slow" })).response.config.model_warmup, [], "none without warmup")
      assert.deepStrictEqual(config.response_cache, { enable: false }, "Triton's ModelResponseCache")
      const slow = (yield* call("ModelConfig", { name: "slow" })).response.config
      assert.strictEqual(slow.instance_group[0].kind, "KIND_CPU")
      assert.deepStrictEqual(slow.version_policy, { latest: { num_versions: 1 }, policy_choice: "latest" }, "config.json's versionPolicy, as Triton's message")
      const vad = (yield* call("ModelConfig", { name: "vad" })).response.config
      assert.deepStrictEqual(vad.version_policy, { specific: { versions: ["1", "3"] }, policy_choice: "specific" })
      assert.strictEqual(config.dynamic_batching.priority_levels, "4")
      assert.strictEqual(config.dynamic_batching.default_priority_level, "3")
      assert.deepStrictEqual(config.dynamic_batching.preferred_batch_size, [2])
      assert.strictEqual(config.dynamic_batching.max_queue_delay_microseconds, "5000")
      assert.strictEqual(config.dynamic_batching.default_queue_policy.timeout_action, "REJECT")
      assert.strictEqual((yield* call("ModelConfig", { name: "nope" })).error?.code, Grpc.status.NOT_FOUND)
    }))

  it.live("repository index with states and redacted reasons; load and unload are INVALID_ARGUMENT without model control", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness()
      const models = (yield* call("RepositoryIndex", {})).response.models as Array<any>
      assert.deepInclude(models, { name: "echo", version: "2", state: "READY", reason: "" })
      const broken = models.find((m) => m.name === "broken")
      assert.strictEqual(broken.state, "UNAVAILABLE")
      assert.strictEqual(broken.reason, "failed to load <repository>/broken/1/model.onnx: Protobuf parsing failed")
      const ready = (yield* call("RepositoryIndex", { ready: true })).response.models as Array<any>
      assert.isFalse(ready.some((m) => m.name === "broken"))
      const load = yield* call("RepositoryModelLoad", { model_name: "echo" })
      assert.strictEqual(load.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(load.error?.details, "explicit model control is not supported")
      assert.strictEqual((yield* call("RepositoryModelUnload", { model_name: "echo" })).error?.code, Grpc.status.INVALID_ARGUMENT)
    }))
})

describe("ModelInfer", () => {
  it.live("raw contents in, raw contents out: the default version, a named version, the id echoed", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness()
      const r = (yield* call("ModelInfer", echoRaw([1, 2, 3, 4.5], { id: "req-1" }))).response
      assert.strictEqual(r.model_name, "echo")
      assert.strictEqual(r.model_version, "2")
      assert.strictEqual(r.id, "req-1")
      assert.deepStrictEqual(r.outputs.map((o: any) => [o.name, o.datatype, o.shape]), [["y", "FP32", ["1", "4"]]])
      assert.deepStrictEqual(fromF32(r.raw_output_contents[0]), [2, 4, 6, 9])
      const v1 = (yield* call("ModelInfer", echoRaw([1, 2, 3, 4], { model_version: "1" }))).response
      assert.strictEqual(v1.model_version, "1")
      assert.deepStrictEqual(fromF32(v1.raw_output_contents[0]), [1, 2, 3, 4])
    }))

  it.live("KServe's client: raw contents with each input's binary_data_size set to their length are answered", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness()
      // kserve.InferRequest.to_grpc() with numpy data: InferInput.set_data_from_numpy puts
      // binary_data_size (int64) in the input's parameters beside its raw_input_contents entry.
      const r = yield* call("ModelInfer", {
        model_name: "multi",
        id: "kserve-1",
        inputs: [
          { name: "a", datatype: "FP32", shape: [2], parameters: { binary_data_size: { int64_param: "8" } } },
          { name: "b", datatype: "INT64", shape: [], parameters: { binary_data_size: { int64_param: "8" } } }
        ],
        raw_input_contents: [f32([1, 2]), Buffer.from(new BigInt64Array([3n]).buffer)]
      })
      assert.isUndefined(r.error, r.error?.details)
      assert.strictEqual(r.response.id, "kserve-1")
      assert.deepStrictEqual(fromF32(r.response.raw_output_contents[1]), [3, 6])
      // One that disagrees with the bytes is refused, not overwritten.
      const wrong = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), inputs: [{ name: "x", datatype: "FP32", shape: [1, 4], parameters: { binary_data_size: { int64_param: "12" } } }] })
      assert.strictEqual(wrong.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.strictEqual(wrong.error?.details, "invalid input for model \"echo\": input \"x\": parameters.binary_data_size is 12, but its raw_input_contents entry holds 16 bytes")
    }))

  it.live("typed contents for every kind: FP32, INT64 exact beyond 2^53, BYTES, BOOL, UINT8, FP64", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness()
      const fp32 = (yield* call("ModelInfer", {
        model_name: "echo",
        inputs: [{ name: "x", datatype: "FP32", shape: [1, 4], contents: { fp32_contents: [1, 2, 3, 4] } }]
      })).response
      assert.deepStrictEqual(fromF32(fp32.raw_output_contents[0]), [2, 4, 6, 8])
      const big = "1152921504606846977" // 2^60 + 1
      const int64 = (yield* call("ModelInfer", {
        model_name: "identity_int64",
        inputs: [{ name: "x", datatype: "INT64", shape: [1, 2], contents: { int64_contents: [big, "-5"] } }]
      })).response
      const out64 = new BigInt64Array(new Uint8Array(int64.raw_output_contents[0]).buffer)
      assert.deepStrictEqual(Array.from(out64, String), [big, "-5"])
      const bytes = (yield* call("ModelInfer", {
        model_name: "identity_string",
        inputs: [{ name: "x", datatype: "BYTES", shape: [1, 2], contents: { bytes_contents: [Buffer.from("héllo"), Buffer.from("")] } }]
      })).response
      const raw = Buffer.from(bytes.raw_output_contents[0])
      // Triton's BYTES layout: a 4-byte little-endian length, then the bytes, per element.
      assert.strictEqual(raw.readUInt32LE(0), Buffer.byteLength("héllo"))
      assert.strictEqual(raw.subarray(4, 4 + raw.readUInt32LE(0)).toString(), "héllo")
      assert.strictEqual(raw.length, 4 + Buffer.byteLength("héllo") + 4)
      const bool = (yield* call("ModelInfer", {
        model_name: "identity_bool",
        inputs: [{ name: "x", datatype: "BOOL", shape: [1, 3], contents: { bool_contents: [true, false, true] } }]
      })).response
      assert.deepStrictEqual(Array.from(bool.raw_output_contents[0] as Uint8Array), [1, 0, 1])
      const u8 = (yield* call("ModelInfer", {
        model_name: "identity_uint8",
        inputs: [{ name: "x", datatype: "UINT8", shape: [1, 2], contents: { uint_contents: [0, 255] } }]
      })).response
      assert.deepStrictEqual(Array.from(u8.raw_output_contents[0] as Uint8Array), [0, 255])
      const badU8 = yield* call("ModelInfer", {
        model_name: "identity_uint8",
        inputs: [{ name: "x", datatype: "UINT8", shape: [1, 1], contents: { uint_contents: [256] } }]
      })
      assert.strictEqual(badU8.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(badU8.error?.details, "out of the UINT8 range")
      const fp64 = (yield* call("ModelInfer", {
        model_name: "identity_float64",
        inputs: [{ name: "x", datatype: "FP64", shape: [1, 1], contents: { fp64_contents: [0.1] } }]
      })).response
      assert.deepStrictEqual(Array.from(new Float64Array(new Uint8Array(fp64.raw_output_contents[0]).buffer)), [0.1])
    }))

  it.live("an output subset returns only those outputs, in raw contents of their own", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness()
      const r = (yield* call("ModelInfer", {
        model_name: "multi",
        inputs: [
          { name: "a", datatype: "FP32", shape: [3], contents: { fp32_contents: [1, 2, 3] } },
          { name: "b", datatype: "INT64", shape: [], contents: { int64_contents: ["2"] } }
        ],
        outputs: [{ name: "scaled" }, { name: "sum" }]
      })).response
      assert.deepStrictEqual(r.outputs.map((o: any) => o.name), ["scaled", "sum"])
      assert.deepStrictEqual(fromF32(r.raw_output_contents[0]), [2, 4, 6])
      assert.deepStrictEqual(fromF32(r.raw_output_contents[1]), [6])
      // tritonclient's InferRequestedOutput(class_count=3): the top 3 classes as BYTES, each with its 4-byte length.
      const classification = (yield* call("ModelInfer", { ...echoRaw([1, 4, 3, 2]), outputs: [{ name: "y", parameters: { classification: { int64_param: 3 } } }] })).response
      assert.deepStrictEqual(classification.outputs.map((o: any) => [o.name, o.datatype, o.shape.map(Number)]), [["y", "BYTES", [3]]])
      const raw = Buffer.from(classification.raw_output_contents[0])
      const strings: Array<string> = []
      for (let at = 0; at < raw.length; at += 4 + raw.readUInt32LE(at)) strings.push(raw.subarray(at + 4, at + 4 + raw.readUInt32LE(at)).toString("utf8"))
      assert.deepStrictEqual(strings, ["8.000000:1", "6.000000:2", "4.000000:3"], "its echo answers 2x")
      const zero = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), outputs: [{ name: "y", parameters: { classification: { int64_param: 0 } } }] })
      assert.strictEqual(zero.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(zero.error?.details, "parameters.classification must be a positive integer")
      const shm = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), outputs: [{ name: "y", parameters: { shared_memory_region: { string_param: "r" } } }] })
      assert.strictEqual(shm.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(shm.error?.details, "the shared-memory extension")
      const unknown = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), outputs: [{ name: "z" }] })
      assert.strictEqual(unknown.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(unknown.error?.details, "unknown output \"z\"")
    }))

  it.live("invalid inputs are INVALID_ARGUMENT with HTTP's messages, before anything runs", () =>
    Effect.gen(function*() {
      const { call, stats } = yield* makeHarness()
      const wrongType = yield* call("ModelInfer", { model_name: "echo", inputs: [{ name: "x", datatype: "INT32", shape: [1, 4], contents: { int_contents: [1, 2, 3, 4] } }] })
      assert.strictEqual(wrongType.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.strictEqual(wrongType.error?.details, "invalid input \"x\" for model \"echo\": datatype INT32 given, the model takes FP32")
      const short = yield* call("ModelInfer", { model_name: "echo", inputs: [{ name: "x", datatype: "FP32", shape: [1, 4] }], raw_input_contents: [f32([1, 2, 3])] })
      assert.strictEqual(short.error?.details, "invalid input \"x\" for model \"echo\": the binary data is 12 bytes, shape [1, 4] of FP32 needs 16")
      const count = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), raw_input_contents: [f32([1, 2, 3, 4]), f32([1])] })
      assert.include(count.error?.details, "expected 1 raw_input_contents, one per input, got 2")
      // Both ways at once: refused, not the typed values silently dropped (Triton's rule).
      const both = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), inputs: [{ name: "x", datatype: "FP32", shape: [1, 4], contents: { fp32_contents: [9, 9, 9, 9] } }] })
      assert.strictEqual(both.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.strictEqual(both.error?.details, "invalid input for model \"echo\": input \"x\": contents must not be given when raw_input_contents is used")
      // The wrong contents field, or none: the message says which field the datatype needs.
      const wrongField = yield* call("ModelInfer", { model_name: "echo", inputs: [{ name: "x", datatype: "FP32", shape: [1, 4], contents: { int_contents: [1, 2, 3, 4] } }] })
      assert.strictEqual(wrongField.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.strictEqual(wrongField.error?.details, "invalid input for model \"echo\": input \"x\": datatype FP32 takes its values in contents.fp32_contents, got int_contents")
      const none = yield* call("ModelInfer", { model_name: "echo", inputs: [{ name: "x", datatype: "FP32", shape: [1, 4] }] })
      assert.include(none.error?.details, "no values: shape [1, 4] of FP32 needs 4 in contents.fp32_contents")
      // HTTP's binary_data_size has no place in a gRPC message: refused without talk of HTTP headers.
      const binarySize = yield* call("ModelInfer", { model_name: "echo", inputs: [{ name: "x", datatype: "FP32", shape: [1, 4], parameters: { binary_data_size: { int64_param: 16 } }, contents: { fp32_contents: [1, 2, 3, 4] } }] })
      assert.strictEqual(binarySize.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(binarySize.error?.details, "over gRPC send the bytes in raw_input_contents")
      assert.notInclude(binarySize.error?.details, "Header")
      const fp16 = yield* call("ModelInfer", { model_name: "identity_float16", inputs: [{ name: "x", datatype: "FP16", shape: [1, 1], contents: { fp32_contents: [1] } }] })
      assert.include(fp16.error?.details, "send it in raw_input_contents")
      const missing = yield* call("ModelInfer", { model_name: "echo", inputs: [] })
      assert.strictEqual(missing.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(missing.error?.details, "missing input")
      const hugeShape = yield* call("ModelInfer", { model_name: "echo", inputs: [{ name: "x", datatype: "FP32", shape: [1e12, 4] }], raw_input_contents: [f32([1])] })
      assert.include(hugeShape.error?.details, "exceed the limit")
      const tooMany = yield* call("ModelInfer", { model_name: "batched", inputs: [{ name: "x", datatype: "FP32", shape: [3, 4] }], raw_input_contents: [f32(new Array(12).fill(1))] })
      assert.include(tooMany.error?.details, "batch-size must be <= 2 for 'batched'")
      assert.strictEqual(stats.started, 0)
    }))

  it.live("parameters: priority as int64 or uint64 (beyond the levels: the default), timeout; a negative priority is INVALID_ARGUMENT", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness()
      for (const priority of [{ uint64_param: "1" }, { int64_param: "0" }, { uint64_param: "10" }, { uint64_param: "18446744073709551615" }]) {
        const r = yield* call("ModelInfer", echoRaw([1, 2, 3, 4], { parameters: { priority } }))
        assert.isUndefined(r.error, JSON.stringify(priority))
      }
      const negative = yield* call("ModelInfer", echoRaw([1, 2, 3, 4], { parameters: { priority: { int64_param: "-1" } } }))
      assert.strictEqual(negative.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(negative.error?.details, "[\"parameters\"][\"priority\"]")
      const timeout = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), model_name: "slow", parameters: { timeout: { int64_param: "10000" } } })
      assert.strictEqual(timeout.error?.code, Grpc.status.DEADLINE_EXCEEDED)
      assert.include(timeout.error?.details, "exceeded its 10 ms deadline")
    }))

  it.live("the gRPC deadline is the request's deadline only when it is sooner than the request's timeout, the 30 s default included", () =>
    Effect.gen(function*() {
      const { call, engine } = yield* makeHarness()
      // What the engine is given: the request's timeout.
      const timeouts: Array<number> = []
      const infer = engine.infer
      ;(engine as { infer: typeof infer }).infer = (request, options) => {
        timeouts.push(Duration.toMillis(request.timeout))
        return infer(request, options)
      }
      const ok = (reply: { error?: Grpc.ServiceError | undefined }) => assert.isUndefined(reply.error, reply.error?.details)
      ok(yield* call("ModelInfer", echoRaw([1, 2, 3, 4])))
      // KServe's client puts a 60 s deadline on every call: the server's 30 s default still holds.
      ok(yield* call("ModelInfer", echoRaw([1, 2, 3, 4]), { deadline: Date.now() + 60_000 }))
      ok(yield* call("ModelInfer", echoRaw([1, 2, 3, 4], { parameters: { timeout: { int64_param: "10000000" } } }), { deadline: Date.now() + 3_600_000 }))
      ok(yield* call("ModelInfer", echoRaw([1, 2, 3, 4], { parameters: { timeout: { int64_param: "100000000" } } }), { deadline: Date.now() + 20_000 }))
      ok(yield* call("ModelInfer", echoRaw([1, 2, 3, 4]), { deadline: Date.now() + 5_000 }))
      // Past 2^31 - 1 ms (24.8 days), which grpc-js's timer truncated to 32 bits (a negative
      // timeout: DEADLINE_EXCEEDED at once): a month, as tritonclient's client_timeout for "none".
      ok(yield* call("ModelInfer", echoRaw([1, 2, 3, 4]), { deadline: Date.now() + 30 * 86_400_000 }))
      assert.strictEqual(timeouts.length, 6)
      assert.deepStrictEqual(timeouts.slice(0, 3), [30_000, 30_000, 10_000])
      // A sooner deadline is the request's (less what has passed since the call began).
      assert.isTrue(timeouts[3]! <= 20_000 && timeouts[3]! > 19_000, String(timeouts[3]))
      assert.isTrue(timeouts[4]! <= 5_000 && timeouts[4]! > 4_000, String(timeouts[4]))
      assert.strictEqual(timeouts[5], 30_000, "the month-long deadline leaves the 30 s default")
    }))

  it.live("the deadline covers the message's decoding: the engine is told what it took, and a timeout it spends fails without running", () =>
    Effect.gen(function*() {
      const { call, engine, stats } = yield* makeHarness()
      const spent: Array<number | undefined> = []
      const infer = engine.infer
      ;(engine as { infer: typeof infer }).infer = (request, options) => {
        spent.push(options?.spentMs)
        return infer(request, options)
      }
      const values = Array.from({ length: 40_000 }, (_, i) => i % 100)
      const r = yield* call("ModelInfer", echoRaw(values, { parameters: { timeout: { int64_param: "1" } } }))
      assert.strictEqual(r.error?.code, Grpc.status.DEADLINE_EXCEEDED)
      assert.strictEqual(stats.started, 0)
      // Its decoding took microseconds at least (performance.now's scale), and it is passed on.
      assert.strictEqual(spent.length, 1)
      assert.isTrue(spent[0]! > 0.001 && spent[0]! < 10_000, String(spent[0]))
    }))

  it.live("the gRPC deadline is the request's deadline: DEADLINE_EXCEEDED, and the engine lets the request go", () =>
    Effect.gen(function*() {
      const { call, engine, gate } = yield* makeHarness()
      yield* gate.close
      // parameters.timeout says 10 s, the call's deadline 100 ms: the sooner wins.
      const started = Date.now()
      const r = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), model_name: "slow", parameters: { timeout: { int64_param: "10000000" } } }, { deadline: Date.now() + 100 })
      assert.strictEqual(r.error?.code, Grpc.status.DEADLINE_EXCEEDED)
      assert.isBelow(Date.now() - started, 2000)
      yield* waitFor(() => Effect.runSync(engine.pending) === 0)
      yield* gate.open
    }))

  it.live("a request whose gRPC deadline passes while queued counts as timed out, not cancelled: the deadline is the engine's", () =>
    Effect.gen(function*() {
      const { call, client, engine, gate, stats, telemetry } = yield* makeHarness({ config: { maxConcurrentRequests: 1 }, recordTelemetry: true })
      yield* gate.close
      const first = client.ModelInfer({ ...echoRaw([1, 2, 3, 4]), model_name: "slow" }, () => {})
      yield* waitFor(() => stats.started === 1)
      const r = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), model_name: "slow" }, { deadline: Date.now() + 100 })
      assert.strictEqual(r.error?.code, Grpc.status.DEADLINE_EXCEEDED)
      const settled = () => telemetry.filter((e) => e._tag === "timeout" || e._tag === "cancelled").map((e) => e._tag)
      yield* waitFor(() => settled().length > 0)
      assert.strictEqual(Effect.runSync(engine.queueStats).total, 0)
      assert.deepStrictEqual(settled(), ["timeout"])
      // A client's cancel is still a cancel.
      first.cancel()
      yield* waitFor(() => settled().length === 2)
      assert.deepStrictEqual(settled(), ["timeout", "cancelled"])
      yield* gate.open
      yield* waitFor(() => Effect.runSync(engine.pending) === 0)
    }))

  it.live("a deadline is still a timeout when the client's cancel at its own deadline comes before the server's (the server read the header late)", () =>
    Effect.gen(function*() {
      const { address, engine, gate, stats, telemetry, client } = yield* makeHarness({ config: { maxConcurrentRequests: 1 }, recordTelemetry: true })
      yield* gate.close
      const first = client.ModelInfer({ ...echoRaw([1, 2, 3, 4]), model_name: "slow" }, () => {})
      yield* waitFor(() => stats.started === 1)
      // A client with a 200 ms deadline whose header reached a busy server 15 ms late: the server's
      // deadline is 200 ms after it read the header, the client's RST_STREAM comes at 185 ms. (Not
      // closer to the 50 ms tolerance: the server reads the header late here too, when the machine is busy.)
      const message = (definitions["inference.GRPCInferenceService"] as any).ModelInfer.requestSerialize({ ...echoRaw([1, 2, 3, 4]), model_name: "slow" }) as Buffer
      const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, 0]), message])
      frame.writeUInt32BE(message.length, 1)
      const session = Http2.connect(`http://${address}`)
      yield* Effect.addFinalizer(() => Effect.sync(() => session.close()))
      const stream = session.request({
        ":method": "POST",
        ":path": "/inference.GRPCInferenceService/ModelInfer",
        "content-type": "application/grpc",
        te: "trailers",
        "grpc-timeout": "200m"
      })
      stream.on("error", () => {})
      stream.end(frame)
      yield* Effect.sleep("185 millis")
      stream.close(Http2.constants.NGHTTP2_CANCEL)
      const settled = () => telemetry.filter((e) => e._tag === "timeout" || e._tag === "cancelled").map((e) => e._tag)
      yield* waitFor(() => settled().length > 0)
      assert.deepStrictEqual(settled(), ["timeout"])
      first.cancel()
      yield* gate.open
      yield* waitFor(() => Effect.runSync(engine.pending) === 0)
    }))

  it.live("a client cancel cancels the request in the queue", () =>
    Effect.gen(function*() {
      const { client, engine, gate, stats } = yield* makeHarness({ config: { maxConcurrentRequests: 1 } })
      yield* gate.close
      const first = client.ModelInfer({ ...echoRaw([1, 2, 3, 4]), model_name: "slow" }, () => {})
      yield* waitFor(() => stats.started === 1)
      let code: number | undefined
      const second = client.ModelInfer({ ...echoRaw([1, 2, 3, 4]), model_name: "slow" }, (e: Grpc.ServiceError | null) => {
        code = e?.code
      })
      yield* waitFor(() => Effect.runSync(engine.queueStats).total === 1)
      second.cancel()
      yield* waitFor(() => code !== undefined && Effect.runSync(engine.queueStats).total === 0)
      assert.strictEqual(code, Grpc.status.CANCELLED)
      first.cancel()
      yield* gate.open
      yield* waitFor(() => Effect.runSync(engine.pending) === 0)
      assert.strictEqual(stats.started, 1)
    }))

  it.live("a full queue is RESOURCE_EXHAUSTED; an unavailable model UNAVAILABLE; an unknown one NOT_FOUND", () =>
    Effect.gen(function*() {
      const { call, client, gate, stats, engine } = yield* makeHarness({ config: { maxConcurrentRequests: 1, maxQueuedRequests: 1 } })
      yield* gate.close
      const calls = [
        client.ModelInfer({ ...echoRaw([1, 2, 3, 4]), model_name: "slow" }, () => {}),
        client.ModelInfer({ ...echoRaw([1, 2, 3, 4]), model_name: "slow" }, () => {})
      ]
      yield* waitFor(() => stats.started === 1 && Effect.runSync(engine.queueStats).total === 1)
      const full = yield* call("ModelInfer", echoRaw([1, 2, 3, 4]))
      assert.strictEqual(full.error?.code, Grpc.status.RESOURCE_EXHAUSTED)
      assert.strictEqual(full.error?.details, "queue full: 1 requests already queued, all models together (model echo)")
      // The request's own id, when it has one, so that the client can tell which was refused.
      const named = yield* call("ModelInfer", echoRaw([1, 2, 3, 4], { id: "req-7" }))
      assert.strictEqual(named.error?.details, "queue full: 1 requests already queued, all models together (model echo, request req-7)")
      for (const c of calls) c.cancel()
      yield* gate.open
      assert.strictEqual((yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), model_name: "broken" })).error?.code, Grpc.status.UNAVAILABLE)
      const unknown = yield* call("ModelInfer", { ...echoRaw([1, 2, 3, 4]), model_name: "nope" })
      assert.strictEqual(unknown.error?.code, Grpc.status.NOT_FOUND)
      assert.strictEqual(unknown.error?.details, "model \"nope\" not found")
    }))

  it.live("a message over the limit is RESOURCE_EXHAUSTED; an undecodable one is refused; the server goes on", () =>
    Effect.gen(function*() {
      const { address, call } = yield* makeHarness({ maxMessageBytes: 4096 })
      const big = yield* call("ModelInfer", { model_name: "echo", inputs: [{ name: "x", datatype: "FP32", shape: [256, 4] }], raw_input_contents: [f32(new Array(1024).fill(1))] })
      assert.strictEqual(big.error?.code, Grpc.status.RESOURCE_EXHAUSTED)
      // Bytes that are not a ModelInferRequest (a field 5 whose length runs past the end).
      const raw = new Grpc.Client(address, Grpc.credentials.createInsecure())
      const garbage = yield* Effect.callback<Grpc.ServiceError | null>((resume) => {
        raw.makeUnaryRequest(
          "/inference.GRPCInferenceService/ModelInfer",
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from([0x2a, 0xff, 0xff, 0x03, 0x01]),
          (error) => resume(Effect.succeed(error))
        )
      })
      raw.close()
      assert.isNotNull(garbage)
      assert.strictEqual(garbage!.code, Grpc.status.INVALID_ARGUMENT, "bad input, not grpc-js's INTERNAL")
      assert.match(garbage!.details, /^the request message could not be decoded as ModelInfer's request: /)
      assert.isUndefined((yield* call("ModelInfer", echoRaw([1, 2, 3, 4]))).error)
    }))

  it.live("an answer over 4 MiB is sent: the server sets no send limit (its receive limit is --max-body-bytes; a finite send limit would fail this)", () =>
    Effect.gen(function*() {
      const { address } = yield* makeHarness({ maxMessageBytes: 16 * 1024 * 1024 })
      const ctor = (Grpc.loadPackageDefinition(definitions) as any).inference.GRPCInferenceService
      const client = new ctor(address, Grpc.credentials.createInsecure(), { "grpc.max_receive_message_length": -1, "grpc.max_send_message_length": -1 })
      const rows = 5 * 1024 * 1024 / 16 // 5 MiB of FP32 in, the same out
      const answer = yield* Effect.callback<{ error: Grpc.ServiceError | null; response: any }>((resume) => {
        client.ModelInfer(
          { model_name: "echo", inputs: [{ name: "x", datatype: "FP32", shape: [rows, 4] }], raw_input_contents: [Buffer.alloc(rows * 16)] },
          (error: Grpc.ServiceError | null, response: any) => resume(Effect.succeed({ error, response }))
        )
      })
      client.close()
      assert.isNull(answer.error, answer.error?.details)
      assert.strictEqual(answer.response.raw_output_contents[0].length, rows * 16)
    }))

  it.live("an undecodable message on a stream answers its error_message; the requests before and after it are answered and the stream ends OK", () =>
    Effect.gen(function*() {
      const { address } = yield* makeHarness()
      const method = (definitions["inference.GRPCInferenceService"] as any).ModelStreamInfer
      const raw = new Grpc.Client(address, Grpc.credentials.createInsecure())
      yield* Effect.addFinalizer(() => Effect.sync(() => raw.close()))
      const stream = raw.makeBidiStreamRequest("/inference.GRPCInferenceService/ModelStreamInfer", (b: Buffer) => b, (b: Buffer) => method.responseDeserialize(b))
      const received: Array<any> = []
      const status = new Promise<number>((resolve) => {
        stream.on("data", (m: any) => received.push(m))
        stream.on("error", (e: Grpc.ServiceError) => resolve(e.code))
        stream.on("end", () => resolve(Grpc.status.OK))
      })
      const request = (id: string) => method.requestSerialize({ ...echoRaw([1, 2, 3, 4]), id }) as Buffer
      for (let i = 0; i < 10; i++) stream.write(request(`before${i}`))
      stream.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]))
      stream.write(request("after"))
      stream.end()
      assert.strictEqual(yield* Effect.promise(() => status), Grpc.status.OK)
      const failed = received.filter((m) => m.error_message !== "")
      assert.strictEqual(failed.length, 1)
      assert.match(failed[0].error_message, /^the request message could not be decoded as ModelStreamInfer's request: /)
      const answered = received.filter((m) => m.error_message === "").map((m) => m.infer_response.id).sort()
      assert.deepStrictEqual(answered, ["after", ...Array.from({ length: 10 }, (_, i) => `before${i}`)].sort())
    }))
})

describe("statistics", () => {
  it.live("ModelStatistics counts what ran, as HTTP's /stats", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness()
      for (let i = 0; i < 3; i++) assert.isUndefined((yield* call("ModelInfer", echoRaw([1, 2, 3, 4]))).error)
      const versions = (yield* call("ModelStatistics", { name: "echo" })).response.model_stats as Array<any>
      assert.deepStrictEqual(versions.map((m) => m.version).sort(), ["1", "2"], "a model's every version, as Triton answers")
      const s = versions.find((m) => m.version === "2")
      assert.strictEqual(s.name, "echo")
      assert.strictEqual(s.inference_count, "3")
      assert.strictEqual(s.execution_count, "3")
      assert.strictEqual(s.inference_stats.success.count, "3")
      assert.notStrictEqual(s.last_inference, "0")
      const all = (yield* call("ModelStatistics", {})).response.model_stats as Array<any>
      assert.isTrue(all.some((m) => m.name === "echo"))
      assert.strictEqual((yield* call("ModelStatistics", { name: "nope" })).error?.code, Grpc.status.NOT_FOUND)
    }))

  it.live("ModelStatistics reads versions as the other RPCs do: \"01\" is version 1, a bad or nameless version is INVALID_ARGUMENT", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness()
      // As OnnxModelPool finds versions for ModelReady, ModelMetadata, ModelInfer (ModelRepository.lookup).
      const padded = yield* call("ModelStatistics", { name: "echo", version: "01" })
      assert.isUndefined(padded.error, padded.error?.details)
      assert.deepStrictEqual(padded.response.model_stats.map((m: any) => [m.name, m.version]), [["echo", "1"]])
      // An unavailable model's statistics too, whatever its state.
      assert.deepStrictEqual((yield* call("ModelStatistics", { name: "broken", version: "001" })).response?.model_stats.map((m: any) => m.version), ["1"])
      assert.strictEqual((yield* call("ModelStatistics", { name: "echo", version: "7" })).error?.code, Grpc.status.NOT_FOUND)
      assert.strictEqual((yield* call("ModelStatistics", { name: "echo", version: "abc" })).error?.code, Grpc.status.INVALID_ARGUMENT)
      for (const version of ["abc", "7"]) {
        const nameless = yield* call("ModelStatistics", { name: "", version })
        assert.strictEqual(nameless.error?.code, Grpc.status.INVALID_ARGUMENT, version)
        assert.strictEqual(nameless.error?.details, `model version "${version}" given without a model name`)
      }
    }))
})

/**
 * A stream sent, in order: a request to the slow model ("slow"), a fast one ("fast-1"), one for a
 * model that does not exist ("bad") and another fast one ("fast-2"); the answers as they come.
 */
const mixedStream = (client: any) => {
  const { stream, received, ended } = openStream(client)
  stream.write({ ...echoRaw([1, 2, 3, 4]), model_name: "slow", id: "slow" })
  stream.write(echoRaw([1, 1, 1, 1], { id: "fast-1" }))
  stream.write({ model_name: "nope", id: "bad", inputs: [] })
  stream.write(echoRaw([2, 2, 2, 2], { id: "fast-2" }))
  return { stream, received, ended }
}

describe("ModelStreamInfer", () => {
  it.live("answers in completion order, carries errors in error_message, and ends after the half-close once every answer is sent", () =>
    Effect.gen(function*() {
      const { client, gate } = yield* makeHarness()
      yield* gate.close
      const { stream, received, ended } = mixedStream(client)
      yield* waitFor(() => received.length === 3)
      assert.sameMembers(received.map((m) => m.infer_response.id), ["fast-1", "bad", "fast-2"])
      const bad = received.find((m) => m.infer_response.id === "bad")
      assert.strictEqual(bad.error_message, "model \"nope\" not found")
      const fast = received.find((m) => m.infer_response.id === "fast-2")
      assert.strictEqual(fast.error_message, "")
      assert.deepStrictEqual(fromF32(fast.infer_response.raw_output_contents[0]), [4, 4, 4, 4])
      stream.end()
      let done = false
      void ended.then(() => {
        done = true
      })
      yield* Effect.sleep("30 millis")
      assert.isFalse(done, "the stream must stay open while an answer is outstanding")
      yield* gate.open
      yield* Effect.promise(() => ended)
      assert.strictEqual(received.length, 4)
      assert.strictEqual(received[3].infer_response.id, "slow")
    }))

  it.live("with streamOrder \"request\" (--grpc-stream-order request), runs requests at once but answers them in the order asked, as Triton", () =>
    Effect.gen(function*() {
      const { client, gate, stats } = yield* makeHarness({ streamOrder: "request" })
      yield* gate.close
      const { stream, received, ended } = mixedStream(client)
      // The fast ones have run (not held behind the slow one) but wait for its answer to go first.
      yield* waitFor(() => stats.finished === 2)
      stream.end()
      yield* Effect.sleep("30 millis")
      assert.strictEqual(received.length, 0, "no answer may overtake the first request's")
      yield* gate.open
      yield* Effect.promise(() => ended)
      assert.deepStrictEqual(received.map((m) => m.infer_response.id), ["slow", "fast-1", "bad", "fast-2"])
      assert.strictEqual(received[2].error_message, "model \"nope\" not found")
      assert.strictEqual(received[3].error_message, "")
      assert.deepStrictEqual(fromF32(received[3].infer_response.raw_output_contents[0]), [4, 4, 4, 4])
    }))

  it.live("with Triton's triton_grpc_error header, the first failed request ends the stream with its status, after the answers before it", () =>
    Effect.gen(function*() {
      const { client } = yield* makeHarness()
      const metadata = new Grpc.Metadata()
      metadata.set("triton_grpc_error", "true")
      const stream = client.ModelStreamInfer(metadata)
      const received: Array<any> = []
      const ended = new Promise<Grpc.ServiceError | "ended">((resolve) => {
        stream.on("data", (m: any) => received.push(m))
        stream.on("end", () => resolve("ended"))
        stream.on("error", (e: Grpc.ServiceError) => resolve(e))
      })
      stream.write(echoRaw([1, 1, 1, 1], { id: "first" }))
      yield* waitFor(() => received.length === 1)
      stream.write({ model_name: "nope", id: "bad", inputs: [] })
      stream.write(echoRaw([2, 2, 2, 2], { id: "after" }))
      stream.end()
      const status = yield* Effect.promise(() => ended)
      assert.notStrictEqual(status, "ended")
      assert.strictEqual((status as Grpc.ServiceError).code, Grpc.status.NOT_FOUND)
      assert.strictEqual((status as Grpc.ServiceError).details, "model \"nope\" not found")
      // The failure is the call's status, not an answer (one after it, already done, may have gone out first).
      assert.strictEqual(received[0].infer_response.id, "first")
      assert.notInclude(received.map((m) => m.infer_response.id), "bad")
      // Without the header (or with another value), the stream goes on past a failure.
      for (const value of [undefined, "false"]) {
        const plain = new Grpc.Metadata()
        if (value !== undefined) plain.set("triton_grpc_error", value)
        const other = client.ModelStreamInfer(plain)
        const answers: Array<any> = []
        yield* Effect.promise(() =>
          new Promise<void>((resolve, reject) => {
            other.on("data", (m: any) => answers.push(m))
            other.on("end", () => resolve())
            other.on("error", reject)
            other.write({ model_name: "nope", id: "bad", inputs: [] })
            other.write(echoRaw([2, 2, 2, 2], { id: "after" }))
            other.end()
          })
        )
        assert.deepStrictEqual(answers.map((m) => [m.infer_response.id, m.error_message]), [["bad", "model \"nope\" not found"], ["after", ""]], String(value))
      }
    }))

  it.live("every answer, a failed one too, says it is its request's last (parameters.triton_final_response true), as Triton's stream does", () =>
    Effect.gen(function*() {
      const { client } = yield* makeHarness()
      const { stream, received, ended } = openStream(client)
      // tritonclient's async_stream_infer(enable_empty_final_response=True) sends this, then waits
      // for an answer whose triton_final_response is true before it takes the request as done.
      const final = { triton_enable_empty_final_response: { bool_param: true } }
      stream.write(echoRaw([1, 2, 3, 4], { id: "ok", parameters: final }))
      stream.write({ model_name: "nope", id: "bad", inputs: [], parameters: final })
      stream.write(echoRaw([1, 2, 3, 4], { id: "plain" }))
      stream.end()
      yield* Effect.promise(() => ended)
      assert.sameMembers(received.map((m) => m.infer_response.id), ["ok", "bad", "plain"])
      for (const m of received) {
        assert.strictEqual(m.infer_response.parameters.triton_final_response?.bool_param, true, m.infer_response.id)
      }
      // A unary answer has no stream to end: no such parameter, as in Triton.
      const unary = yield* Effect.promise(() => new Promise<any>((resolve) => client.ModelInfer(echoRaw([1, 2, 3, 4]), (_: unknown, r: any) => resolve(r))))
      assert.deepStrictEqual(unary.parameters, {})
    }))

  it.live("a stream's deadline that passes times out what it has queued (counted as timeouts); the stream and the engine let go", () =>
    Effect.gen(function*() {
      const { client, engine, gate, stats, telemetry } = yield* makeHarness({ config: { maxConcurrentRequests: 1 }, recordTelemetry: true })
      yield* gate.close
      const first = client.ModelInfer({ ...echoRaw([1, 2, 3, 4]), model_name: "slow" }, () => {})
      yield* waitFor(() => stats.started === 1)
      const stream = client.ModelStreamInfer({ deadline: Date.now() + 150 })
      const status = new Promise<number>((resolve) => {
        stream.on("error", (e: Grpc.ServiceError) => resolve(e.code))
        stream.on("end", () => resolve(Grpc.status.OK))
      })
      for (let i = 0; i < 3; i++) stream.write({ ...echoRaw([1, 2, 3, 4]), model_name: "slow", id: `s${i}` })
      assert.strictEqual(yield* Effect.promise(() => status), Grpc.status.DEADLINE_EXCEEDED)
      const settled = () => telemetry.filter((e) => e._tag === "timeout" || e._tag === "cancelled").map((e) => e._tag)
      yield* waitFor(() => settled().length === 3)
      assert.deepStrictEqual(settled(), ["timeout", "timeout", "timeout"])
      assert.strictEqual(Effect.runSync(engine.queueStats).total, 0)
      first.cancel()
      yield* gate.open
      yield* waitFor(() => Effect.runSync(engine.pending) === 0)
      assert.strictEqual(stats.started, 1)
    }))

  it.live("a cancel mid-stream cancels what is outstanding in the engine", () =>
    Effect.gen(function*() {
      const { client, engine, gate, stats } = yield* makeHarness({ config: { maxConcurrentRequests: 1 } })
      yield* gate.close
      const stream = client.ModelStreamInfer()
      const received: Array<any> = []
      stream.on("data", (m: any) => received.push(m))
      stream.on("error", () => {})
      stream.write(echoRaw([1, 1, 1, 1], { id: "fast" }))
      yield* waitFor(() => received.length === 1)
      for (let i = 0; i < 5; i++) stream.write({ ...echoRaw([1, 2, 3, 4]), model_name: "slow", id: `slow-${i}` })
      yield* waitFor(() => stats.started === 2 && Effect.runSync(engine.queueStats).total === 4)
      stream.cancel()
      yield* waitFor(() => Effect.runSync(engine.queueStats).total === 0)
      yield* gate.open
      yield* waitFor(() => Effect.runSync(engine.pending) === 0)
      // Only the fast one and the slow one already running ever ran.
      assert.strictEqual(stats.started, 2)
      assert.strictEqual(received.length, 1)
    }))

  it.live("a request that fails unexpectedly answers error_message \"internal error\"; the stream and its other requests go on", () =>
    Effect.gen(function*() {
      // A pool that returns fewer outputs than `multi` declares: answering it dies.
      const inner = yield* makeTestPool({ slowLatency: "100 millis" })
      // A decorator forwards the optional members as they are (typed `| undefined`, so this compiles under exactOptionalPropertyTypes).
      const pool = ModelPool.of({
        ...inner.pool,
        metadataUnsafe: inner.pool.metadataUnsafe,
        runGroup: inner.pool.runGroup,
        run: (modelId, inputs, options) =>
          Effect.map(inner.pool.run(modelId, inputs, options), (out) => (modelId === "multi" ? { ...out, outputs: { sum: out.outputs["sum"]! } } : out))
      })
      const { call, client } = yield* makeHarness({ pool: Layer.succeed(ModelPool, pool) })
      const multi = {
        model_name: "multi",
        id: "broken",
        inputs: [
          { name: "a", datatype: "FP32", shape: [1], contents: { fp32_contents: [1] } },
          { name: "b", datatype: "INT64", shape: [], contents: { int64_contents: ["1"] } }
        ]
      }
      const unary = yield* call("ModelInfer", multi)
      assert.strictEqual(unary.error?.code, Grpc.status.INTERNAL)
      const stream = client.ModelStreamInfer()
      const received: Array<any> = []
      const status = new Promise<number>((resolve) => {
        stream.on("data", (m: any) => received.push(m))
        stream.on("error", (e: Grpc.ServiceError) => resolve(e.code))
        stream.on("end", () => resolve(Grpc.status.OK))
      })
      stream.write({ ...echoRaw([1, 2, 3, 4]), model_name: "slow", id: "slow" })
      stream.write(multi)
      stream.end()
      assert.strictEqual(yield* Effect.promise(() => status), Grpc.status.OK)
      assert.deepStrictEqual(received.map((m) => [m.infer_response.id, m.error_message]), [["broken", "internal error"], ["slow", ""]])
    }))

  it.live("many requests on one stream all come back, each once", () =>
    Effect.gen(function*() {
      const { client } = yield* makeHarness()
      const stream = client.ModelStreamInfer()
      const ids = new Set<string>()
      const ended = new Promise<void>((resolve, reject) => {
        stream.on("data", (m: any) => {
          assert.strictEqual(m.error_message, "")
          ids.add(m.infer_response.id)
        })
        stream.on("end", resolve)
        stream.on("error", reject)
      })
      for (let i = 0; i < 200; i++) stream.write(echoRaw([i, i, i, i], { id: String(i) }))
      stream.end()
      yield* Effect.promise(() => ended)
      assert.strictEqual(ids.size, 200)
    }))
})

describe("binding", () => {
  it("hostPort brackets an IPv6 host, as gRPC targets need, and leaves the others", () => {
    const table: ReadonlyArray<readonly [string, number, string]> = [
      ["127.0.0.1", 8001, "127.0.0.1:8001"],
      ["0.0.0.0", 0, "0.0.0.0:0"],
      ["localhost", 8001, "localhost:8001"],
      ["::", 8001, "[::]:8001"],
      ["::1", 8001, "[::1]:8001"],
      ["fe80::1%eth0", 8001, "[fe80::1%eth0]:8001"],
      ["[::1]", 8001, "[::1]:8001"]
    ]
    for (const [host, port, expected] of table) assert.strictEqual(hostPort(host, port), expected, host)
  })

  it.live("binds an IPv6 host (::1) and answers there, with an address a client can dial", () =>
    Effect.gen(function*() {
      const { address, call, port } = yield* makeHarness({ host: "::1" })
      assert.strictEqual(address, `[::1]:${port}`)
      assert.deepStrictEqual((yield* call("ServerLive", {})).response, { live: true })
      assert.deepStrictEqual(fromF32((yield* call("ModelInfer", echoRaw([1, 2, 3, 4]))).response.raw_output_contents[0]), [2, 4, 6, 8])
    }))

  it.live("binds every IPv6 (and, dual-stack, IPv4) address with ::", () =>
    Effect.gen(function*() {
      const { address, port } = yield* makeHarness({ host: "::" })
      assert.strictEqual(address, `[::]:${port}`)
      assert.isUndefined(yield* connectError(`[::1]:${port}`, 2000))
    }))
})

/** Why a client could not connect to `target` within `ms`, or undefined once it did. */
const connectError = (target: string, ms: number) =>
  Effect.callback<Error | undefined>((resume) => {
    const probe = new Grpc.Client(target, Grpc.credentials.createInsecure())
    probe.waitForReady(Date.now() + ms, (e) => {
      probe.close()
      resume(Effect.succeed(e))
    })
  })

describe("connections", () => {
  it.live("a connection may have at most maxConcurrentStreams (100) calls open: unbounded, one client's idle streams took 1.35 GB (80 000 of them)", () =>
    Effect.gen(function*() {
      const { address } = yield* makeHarness()
      const session = Http2.connect(`http://${address}`)
      yield* Effect.addFinalizer(() => Effect.sync(() => session.destroy()))
      const settings = yield* Effect.callback<Http2.Settings>((resume) => {
        session.once("remoteSettings", (settings) => resume(Effect.succeed(settings)))
      })
      assert.strictEqual(settings.maxConcurrentStreams, maxConcurrentStreams)
    }))

  it.live("the server has at most maxOpenCalls calls open over all its connections: past it a call is refused RESOURCE_EXHAUSTED at once, and served again once fewer are open", () =>
    Effect.gen(function*() {
      const { address, call, openCalls } = yield* makeHarness({ maxOpenCalls: 6 })
      // Three connections of two idle ModelStreamInfer calls each (headers, never a message): what
      // many connections of idle calls did to a server bounded only per connection.
      const sessions = Array.from({ length: 3 }, () => Http2.connect(`http://${address}`))
      yield* Effect.addFinalizer(() => Effect.sync(() => sessions.forEach((s) => s.destroy())))
      const idle = sessions.flatMap((session) =>
        Array.from({ length: 2 }, () => {
          const stream = session.request({ ":method": "POST", ":path": "/inference.GRPCInferenceService/ModelStreamInfer", "content-type": "application/grpc", te: "trailers" }, { endStream: false })
          stream.on("error", () => {})
          return stream
        }))
      yield* waitFor(() => openCalls() === 6)
      const refused = yield* call("ModelInfer", echoRaw([1, 2, 3, 4]))
      assert.strictEqual(refused.error?.code, Grpc.status.RESOURCE_EXHAUSTED, String(refused.error))
      assert.include(refused.error?.details ?? "", "too many open calls: 6 are open")
      assert.strictEqual(openCalls(), 6, "the refused call was never counted")
      idle[0]!.close()
      yield* waitFor(() => openCalls() === 5)
      const served = yield* call("ModelInfer", echoRaw([1, 2, 3, 4]))
      assert.deepStrictEqual(fromF32(served.response.raw_output_contents[0]), [2, 4, 6, 8])
    }))

  it.live("the server keeps at most maxConnections connections open: one past it is closed as it comes, and one is taken again once fewer are open", () =>
    Effect.gen(function*() {
      const { address } = yield* makeHarness({ maxConnections: 2 })
      /** A connection's fate: its SETTINGS from the server, or closed first. */
      const connect = () =>
        Effect.callback<{ readonly session: Http2.ClientHttp2Session; readonly settled: boolean }>((resume) => {
          const session = Http2.connect(`http://${address}`)
          session.on("error", () => {})
          session.once("remoteSettings", () => resume(Effect.succeed({ session, settled: true })))
          session.once("close", () => resume(Effect.succeed({ session, settled: false })))
        })
      const first = yield* connect()
      const second = yield* connect()
      yield* Effect.addFinalizer(() => Effect.sync(() => [first, second].forEach((c) => c.session.destroy())))
      assert.deepStrictEqual([first.settled, second.settled], [true, true])
      const third = yield* connect()
      assert.isFalse(third.settled, "closed as it came")
      first.session.destroy()
      yield* Effect.sleep("100 millis")
      const again = yield* connect()
      yield* Effect.addFinalizer(() => Effect.sync(() => again.session.destroy()))
      assert.isTrue(again.settled)
    }))

  it.live("a client that cancels many calls keeps its connection (Node's rapid-reset bound is raised); past the server's own bound it is closed", () =>
    Effect.gen(function*() {
      /** Opens `n` ModelInfer calls on one connection and resets each at once (a cancel); whether the server closed the connection (GOAWAY). */
      const resets = (address: string, n: number) =>
        Effect.callback<boolean>((resume) => {
          const session = Http2.connect(`http://${address}`)
          session.on("error", () => {})
          let closed = false
          session.once("goaway", () => void (closed = true))
          let sent = 0
          const next = () => {
            for (let i = 0; i < 100 && sent < n && !closed && !session.destroyed; i++, sent++) {
              const stream = session.request({ ":method": "POST", ":path": "/inference.GRPCInferenceService/ModelInfer", "content-type": "application/grpc", te: "trailers" }, { endStream: false })
              stream.on("error", () => {})
              stream.close(Http2Constants.NGHTTP2_CANCEL)
            }
            if (sent < n && !closed && !session.destroyed) setImmediate(next)
            else setTimeout(() => resume(Effect.succeed(closed)), 300)
          }
          session.once("remoteSettings", next)
          return Effect.sync(() => session.destroy())
        })
      const raised = yield* makeHarness()
      assert.isFalse(yield* resets(raised.address, 3000), "3 000 resets at once (Node's own bound: 1 000) keep the connection")
      const after = yield* raised.call("ModelInfer", echoRaw([1, 2, 3, 4]))
      assert.deepStrictEqual(fromF32(after.response?.raw_output_contents[0]), [2, 4, 6, 8], String(after.error))
      const bounded = yield* makeHarness({ streamResets: { burst: 200, perSecond: 10 } })
      assert.isTrue(yield* resets(bounded.address, 3000), "past the bound the connection is closed")
    }))

  it.live("a client with more calls at once than the bound waits for its turn: every call is answered", () =>
    Effect.gen(function*() {
      const { call } = yield* makeHarness({ maxConcurrentStreams: 4 })
      const replies = yield* Effect.forEach(Array.from({ length: 40 }, (_, i) => i), (i) => call("ModelInfer", echoRaw([i, 0, 0, 0])), { concurrency: "unbounded" })
      assert.deepStrictEqual(replies.map((r) => fromF32(r.response.raw_output_contents[0])[0]), Array.from({ length: 40 }, (_, i) => 2 * i))
    }))
})

describe("lifecycle", () => {
  it.live("closing the scope shuts the server down", () =>
    Effect.gen(function*() {
      const port = yield* Effect.scoped(Effect.map(makeHarness(), (h) => h.port))
      assert.isDefined(yield* connectError(`127.0.0.1:${port}`, 300))
    }))
})



describe("model control over gRPC", () => {
  it.live("under explicit model control RepositoryModelLoad and Unload work, and ServerMetadata advertises model_repository", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const { call, health } = yield* makeHarness({ strictReadiness: true, pool: OnnxModelPool.layer({ repository, modelControl: "explicit", loadModels: [] }) })
      // Strict readiness does not count a model nobody asked to load, as HTTP's and Triton's.
      assert.deepStrictEqual((yield* call("ServerReady", {})).response, { ready: true })
      assert.deepStrictEqual((yield* call("Check", { service: "" }, {}, health)).response, { status: "SERVING" })
      const infer = { model_name: "mlp", inputs: [{ name: "input", datatype: "FP32", shape: [1, 784] }], raw_input_contents: [f32(new Array(784).fill(0.5))] }
      assert.include((yield* call("ServerMetadata", {})).response.extensions, "model_repository")
      assert.deepInclude((yield* call("RepositoryIndex", {})).response.models, { name: "mlp", version: "1", state: "UNAVAILABLE", reason: "unloaded" })
      // Not loaded: NOT_FOUND, as Triton's "has no available versions" (UNAVAILABLE would invite retries).
      assert.strictEqual((yield* call("ModelInfer", infer)).error?.code, Grpc.status.NOT_FOUND)
      assert.strictEqual((yield* call("ModelMetadata", { name: "mlp" })).error?.code, Grpc.status.NOT_FOUND)
      assert.isUndefined((yield* call("RepositoryModelLoad", { model_name: "mlp" })).error)
      const r = yield* call("ModelInfer", infer)
      assert.isUndefined(r.error)
      assert.deepStrictEqual(r.response.outputs[0].shape, ["1", "10"])
      assert.isUndefined((yield* call("RepositoryModelUnload", { model_name: "mlp" })).error)
      assert.strictEqual((yield* call("ModelInfer", infer)).error?.code, Grpc.status.NOT_FOUND)
      assert.strictEqual((yield* call("RepositoryModelLoad", { model_name: "nope" })).error?.code, Grpc.status.NOT_FOUND)
      // Overrides the server cannot apply are refused, not ignored.
      const config = yield* call("RepositoryModelLoad", { model_name: "mlp", parameters: { config: { string_param: "{}" } } })
      assert.strictEqual(config.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(config.error?.details, `load parameter "config" overrides are not supported`)
      const file = yield* call("RepositoryModelLoad", { model_name: "mlp", parameters: { "file:1/model.onnx": { bytes_param: Buffer.from([1]) } } })
      assert.strictEqual(file.error?.code, Grpc.status.INVALID_ARGUMENT)
      // unload_dependents is a bool_param; a string is refused, as HTTP refuses one.
      const loose = yield* call("RepositoryModelUnload", { model_name: "mlp", parameters: { unload_dependents: { string_param: "yes" } } })
      assert.strictEqual(loose.error?.code, Grpc.status.INVALID_ARGUMENT)
      assert.include(loose.error?.details, `unload parameter "unload_dependents" must be a boolean, got "yes"`)
      assert.isUndefined((yield* call("RepositoryModelUnload", { model_name: "mlp", parameters: { unload_dependents: { bool_param: true } } })).error)
    }), 60_000)
})

/** A new ModelStreamInfer call, its answers as they come, and the status it ends with (`{}` for OK). */
const streamToItsStatus = (client: any) => {
  const stream = client.ModelStreamInfer()
  const received: Array<any> = []
  stream.on("data", (m: any) => received.push(m))
  const ended = new Promise<{ code?: number; details?: string }>((resolve) => {
    stream.on("error", (e: Grpc.ServiceError) => resolve({ code: e.code, details: e.details }))
    stream.on("end", () => resolve({}))
  })
  return { stream, received, ended }
}

describe("shutdown with open streams", () => {
  it.live("closing the server ends an idle stream at once with UNAVAILABLE, without waiting for the shutdown timeout", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const { client } = yield* makeHarness().pipe(Scope.provide(scope))
      const { stream, received, ended } = streamToItsStatus(client)
      stream.write(echoRaw([1, 2, 3, 4], { id: "one" }))
      yield* waitFor(() => received.length === 1)
      const [elapsed] = yield* Effect.timed(Scope.close(scope, Exit.void))
      // The harness gives calls 1 s to finish: an idle stream must not use it.
      assert.isBelow(Duration.toMillis(elapsed), 800)
      const status = yield* Effect.promise(() => ended)
      assert.strictEqual(status.code, Grpc.status.UNAVAILABLE)
      assert.strictEqual(status.details, "the server is shutting down")
    }))

  it.live("a stream that owes an answer when the server closes writes it, then ends at once, not cut at the shutdown timeout", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const { client, stats } = yield* makeHarness({ slowLatency: "200 millis" }).pipe(Scope.provide(scope))
      const { stream, received, ended } = streamToItsStatus(client)
      stream.write({ ...echoRaw([1, 2, 3, 4]), model_name: "slow", id: "owed" })
      yield* waitFor(() => stats.started === 1)
      const [elapsed] = yield* Effect.timed(Scope.close(scope, Exit.void))
      const status = yield* Effect.promise(() => ended)
      assert.deepStrictEqual(received.map((m) => [m.infer_response.id, m.error_message]), [["owed", ""]])
      assert.strictEqual(status.code, Grpc.status.UNAVAILABLE, status.details)
      // The harness gives calls 1 s to finish; the stream ended once it owed nothing (after the 200 ms run).
      assert.isBelow(Duration.toMillis(elapsed), 800)
    }))

  it.live("a stream still receiving requests when the server closes ends with UNAVAILABLE too, at once, not cut at the shutdown timeout", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const { client, lifecycle } = yield* makeHarness().pipe(Scope.provide(scope))
      const stream = client.ModelStreamInfer()
      let received = 0
      stream.on("data", () => received++)
      const ended = new Promise<{ code?: number; details?: string }>((resolve) => {
        stream.on("error", (e: Grpc.ServiceError) => resolve({ code: e.code, details: e.details }))
        stream.on("end", () => resolve({}))
      })
      // Far more than the server reads at once, and the stream is never half-closed.
      for (let i = 0; i < 3000; i++) stream.write(echoRaw([1, 2, 3, 4], { id: `r${i}` }))
      yield* waitFor(() => received >= 50)
      yield* lifecycle.beginShutdown
      const [elapsed] = yield* Effect.timed(Scope.close(scope, Exit.void))
      const status = yield* Effect.promise(() => ended)
      assert.strictEqual(status.code, Grpc.status.UNAVAILABLE, status.details)
      assert.strictEqual(status.details, "the server is shutting down")
      assert.isBelow(Duration.toMillis(elapsed), 800)
    }))
})

describe("requestsOf", () => {
  /**
   * A call as grpc-js makes it: an object-mode Duplex whose writes complete 50 ms later, as a
   * socket's do, and whose status goes out in `final`, once every write is done.
   */
  const slowCall = () => {
    const sent = { status: false }
    const call = new Stream.Duplex({
      objectMode: true,
      read() {},
      write(_chunk, _encoding, callback) {
        setTimeout(callback, 50)
      },
      final(callback) {
        sent.status = true
        callback()
      }
    })
    // As grpc-js: an error event is the status to send; it ends the writing side.
    call.on("error", () => call.end())
    return { call, sent }
  }

  it("returning stops reading and leaves the call alone, though it saw an error event with an answer still being written (Node's iterator destroys it)", async () => {
    const stop = async (iterable: AsyncIterable<unknown>, { call, sent }: ReturnType<typeof slowCall>) => {
      const iterator = iterable[Symbol.asyncIterator]()
      const pending = iterator.next().catch(() => "rejected")
      call.write({ answer: 1 })
      // What a stopped stream ends with: its status, as an error event.
      call.emit("error", { code: 14, details: "the server is shutting down" })
      await iterator.return?.()
      await Promise.race([pending, new Promise((resolve) => setTimeout(resolve, 20))])
      await new Promise((resolve) => setTimeout(resolve, 100))
      return { destroyed: call.destroyed, statusSent: sent.status }
    }
    const node = slowCall()
    const nodeIterator = (node.call as unknown as { iterator: (o: { destroyOnReturn: boolean }) => AsyncIterable<unknown> }).iterator({ destroyOnReturn: false })
    assert.deepStrictEqual(await stop(nodeIterator, node), { destroyed: true, statusSent: false }, "Node's iterator, the reason for requestsOf")
    const ours = slowCall()
    assert.deepStrictEqual(await stop(GrpcServer.requestsOf(ours.call), ours), { destroyed: false, statusSent: true })
  })

  it("yields what the call reads, in order, ends at its end, and fails with its error", async () => {
    const { call } = slowCall()
    call.push({ id: 1 })
    call.push({ id: 2 })
    setTimeout(() => call.push(null), 10)
    const got: Array<unknown> = []
    for await (const request of GrpcServer.requestsOf(call)) got.push(request)
    assert.deepStrictEqual(got, [{ id: 1 }, { id: 2 }])
    const { call: failing } = slowCall()
    setTimeout(() => failing.emit("error", new Error("cancelled by the client")), 10)
    const iterator = GrpcServer.requestsOf(failing)[Symbol.asyncIterator]()
    const outcome = await iterator.next().then(() => "resolved", (e: Error) => e.message)
    assert.strictEqual(outcome, "cancelled by the client")
  })
})

describe("a load while a gRPC request waits in the queue", () => {
  it.live("a request that named no version runs on the version it was admitted to and names it, though a load added a higher one", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "m/1/model.onnx": scaleBytes(2) })
      const gate = yield* Latch.make(false)
      const { call, engine } = yield* makeHarness({ pool: OnnxModelPool.layer({ repository, modelControl: "explicit", loadModels: ["m"] }) }).pipe(
        Effect.provideService(DispatchGate, gate.await)
      )
      const queued = yield* Effect.forkChild(call("ModelInfer", { model_name: "m", inputs: [{ name: "x", datatype: "FP32", shape: [1, 4] }], raw_input_contents: [f32([1, 2, 3, 4])] }), {
        startImmediately: true
      })
      for (let i = 0; (yield* engine.queueStats).total < 1; i++) {
        assert.isBelow(i, 10_000, "the request was admitted")
        yield* Effect.sleep("1 millis")
      }
      writeTree(repository, { "m/2/model.onnx": scaleBytes(3) })
      assert.isUndefined((yield* call("RepositoryModelLoad", { model_name: "m" })).error)
      yield* gate.open
      const r = yield* Fiber.join(queued)
      assert.isUndefined(r.error, String(r.error?.details))
      assert.strictEqual(r.response.model_version, "1")
      assert.deepStrictEqual(fromF32(r.response.raw_output_contents[0]), [2, 4, 6, 8])
    }), 60_000)
})

