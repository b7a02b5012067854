/**
 * Every OIP route and every error answer, in memory: real routes, real engine, scripted pool,
 * requests built with `HttpServerRequest.fromWeb` and run in the test's fiber (TestClock).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Metric } from "effect"
import { TestClock } from "effect/testing"
import * as Zlib from "node:zlib"
import { countedDecodePool, makeApp, secretPath, waitUntil, withFreshMetrics } from "./TestApp.ts"
import * as Lifecycle from "../../src/http/Lifecycle.ts"
import * as RetryAfter from "../../src/http/RetryAfter.ts"
import * as InferExchange from "../../src/http/InferExchange.ts"
import * as DecodePool from "../../src/http/DecodePool.ts"
import * as Routes from "../../src/http/Routes.ts"
import type * as ModelMetadata from "../../src/ModelMetadata.ts"
import * as Tensor from "../../src/Tensor.ts"
import { ModelPool } from "../../src/ModelPool.ts"
import { counterSequence, makeCounterPool } from "../fixtures/CounterPool.ts"

const echoRequest = (values: ReadonlyArray<number>, extra: Record<string, unknown> = {}) => ({
  inputs: [{ name: "x", shape: [values.length / 4, 4], datatype: "FP32", data: values }],
  ...extra
})

const noSecrets = (text: string) => {
  assert.notInclude(text, secretPath)
  assert.notInclude(text, "/srv/")
  assert.notMatch(text, /\n\s+at /)
}

describe("server and health routes", () => {
  it.effect("GET /v2 answers name, version and extensions", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const r = yield* send("GET", "/v2")
      assert.strictEqual(r.status, 200)
      assert.deepStrictEqual(r.json, { name: "effect-onnx", version: "0.0.0-test", extensions: ["binary_tensor_data", "classification", "model_configuration", "statistics", "schedule_policy", "parameters"] })
      assert.strictEqual(r.headers.get("content-type"), "application/json")
      assert.strictEqual((yield* send("GET", "/v2/")).status, 200)
    }).pipe(withFreshMetrics))

  it.effect("live is always 200; ready is 200 until shutdown begins, then 503 with Connection: close", () =>
    Effect.gen(function*() {
      const { send, lifecycle } = yield* makeApp()
      assert.deepStrictEqual((yield* send("GET", "/v2/health/live")).json, { live: true })
      const ready = yield* send("GET", "/v2/health/ready")
      assert.strictEqual(ready.status, 200)
      assert.deepStrictEqual(ready.json, { ready: true })
      assert.isNull(ready.headers.get("connection"))
      yield* lifecycle.beginShutdown
      const notReady = yield* send("GET", "/v2/health/ready")
      assert.strictEqual(notReady.status, 503)
      assert.strictEqual(notReady.json.ready, false)
      assert.strictEqual(notReady.headers.get("connection"), "close")
      assert.strictEqual((yield* send("GET", "/v2/health/live")).status, 200)
      // Held just before the listener closes: answers keep their connection (still 503).
      yield* lifecycle.holdConnections(true)
      const held = yield* send("GET", "/v2/health/ready")
      assert.strictEqual(held.status, 503)
      assert.isNull(held.headers.get("connection"))
      yield* lifecycle.holdConnections(false)
      assert.strictEqual((yield* send("GET", "/v2/health/ready")).headers.get("connection"), "close")
    }).pipe(withFreshMetrics))

  it.effect("strict readiness (the server's default): 503 while a model is unavailable, naming it; not strict: 200", () =>
    Effect.gen(function*() {
      const strict = yield* makeApp({ routes: { strictReadiness: true } })
      const notReady = yield* strict.send("GET", "/v2/health/ready")
      assert.strictEqual(notReady.status, 503)
      assert.strictEqual(notReady.json.ready, false)
      assert.match(notReady.json.error, /^1 of \d+ model versions unavailable: broken@1$/)
      assert.notInclude(notReady.json.error, secretPath)
      const lenient = yield* makeApp({ routes: { strictReadiness: false } })
      assert.strictEqual((yield* lenient.send("GET", "/v2/health/ready")).status, 200)
    }).pipe(withFreshMetrics))

  it("readiness: shutting down, strict or not, an empty repository, unavailable models; unloaded ones, and those being loaded or unloaded, do not count", () => {
    const ready = { name: "a", version: "1", state: "READY" }
    const down = { name: "b", version: "2", state: "UNAVAILABLE", reason: "x" }
    const unloaded = { name: "u", version: "1", state: "UNAVAILABLE", reason: "unloaded" }
    const loading = { name: "l", version: "1", state: "LOADING" }
    const unloading = { name: "v", version: "3", state: "UNLOADING" }
    const cases: ReadonlyArray<readonly [Lifecycle.ReadinessInput, boolean, string?]> = [
      [{ shuttingDown: false, strict: true, models: [ready, loading, unloading] }, true],
      [{ shuttingDown: false, strict: true, models: [loading, down] }, false, "1 of 1 model versions unavailable: b@2"],
      [{ shuttingDown: false, strict: true, models: [ready] }, true],
      [{ shuttingDown: false, strict: true, models: [ready, down] }, false, "1 of 2 model versions unavailable: b@2"],
      [{ shuttingDown: false, strict: true, models: [ready, unloaded] }, true],
      [{ shuttingDown: false, strict: true, models: [unloaded] }, true],
      [{ shuttingDown: false, strict: true, models: [ready, unloaded, down] }, false, "1 of 2 model versions unavailable: b@2"],
      [{ shuttingDown: false, strict: false, models: [ready, down] }, true],
      [{ shuttingDown: false, strict: true, models: [] }, false, "the model repository holds no model"],
      [{ shuttingDown: false, strict: false, models: [] }, true],
      [{ shuttingDown: true, strict: false, models: [ready] }, false, "the server is shutting down"],
      [{ shuttingDown: true, strict: true, models: [down] }, false, "the server is shutting down"],
      [{ shuttingDown: false, strict: true, models: Array.from({ length: 7 }, (_, i) => ({ ...down, name: `m${i}` })) }, false, "7 of 7 model versions unavailable: m0@2, m1@2, m2@2, m3@2, m4@2 and 2 more"]
    ]
    for (const [input, expected, reason] of cases) {
      const result = Lifecycle.readiness(input)
      assert.strictEqual(result.ready, expected, JSON.stringify(input))
      if (!result.ready) assert.strictEqual(result.reason, reason)
    }
  })

  it.effect("an unknown route is a JSON 404", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const r = yield* send("GET", "/v1/models")
      assert.strictEqual(r.status, 404)
      assert.deepStrictEqual(r.json, { error: "no route for GET /v1/models" })
      assert.strictEqual((yield* send("DELETE", "/v2/nothing/here")).status, 404)
      const undecodable = yield* send("GET", "/v2/models/%E0%A4%A")
      assert.strictEqual(undecodable.status, 404)
      assert.match(undecodable.json.error, /^no route for GET/)
      // Paths are case-sensitive, as Triton's (and the fast path's): the router matched these before.
      assert.strictEqual((yield* send("GET", "/V2/HEALTH/LIVE")).status, 404)
      assert.strictEqual((yield* send("POST", "/V2/MODELS/echo/INFER", echoRequest([1, 2, 3, 4]))).status, 404)
      assert.strictEqual((yield* send("GET", "/v2/health/live")).status, 200)
    }).pipe(withFreshMetrics))

  it.effect("a wrong method on an existing route is a JSON 405 with Allow", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const cases: ReadonlyArray<readonly [string, string, string]> = [
        ["PUT", "/v2/models/echo/infer", "POST"],
        ["GET", "/v2/models/echo/infer", "POST"],
        ["GET", "/v2/models/echo/versions/1/infer/", "POST"],
        ["DELETE", "/v2/models/echo", "GET, HEAD"],
        ["POST", "/v2/health/ready", "GET, HEAD"],
        ["GET", "/v2/repository/index", "POST"],
        ["PATCH", "/v2/models/stats", "GET, HEAD"]
      ]
      for (const [method, path, allow] of cases) {
        const r = yield* send(method, path)
        assert.strictEqual(r.status, 405, `${method} ${path}`)
        assert.strictEqual(r.headers.get("allow"), allow, `${method} ${path}`)
        assert.strictEqual(r.json.error, `method ${method} not allowed for ${path}; allowed: ${allow}`)
      }
    }).pipe(withFreshMetrics))

  it("allowedMethods: the methods the routes take at a path, HEAD beside GET, a trailing slash ignored", () => {
    const routes: ReadonlyArray<Routes.RoutePattern> = [["GET", "/v2"], ["GET", "/v2/models/:name"], ["POST", "/v2/models/:name/infer"], ["GET", "/v2/models/stats"], ["POST", "/v2/models/:name"]]
    const cases: ReadonlyArray<readonly [string, ReadonlyArray<string>]> = [
      ["/v2", ["GET", "HEAD"]],
      ["/v2/", ["GET", "HEAD"]],
      ["/v2/models/m", ["GET", "HEAD", "POST"]],
      ["/v2/models/m/infer", ["POST"]],
      ["/v2/models/stats", ["GET", "HEAD", "POST"]],
      ["/v2/models//infer", []],
      ["/v2/models", []],
      ["/", []],
      ["/v2/models/m/infer/extra", []]
    ]
    for (const [path, expected] of cases) assert.deepStrictEqual(Routes.allowedMethods(routes, path), expected, path)
  })

  it.effect("HEAD answers as GET does", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      assert.strictEqual((yield* send("HEAD", "/v2/health/ready")).status, 200)
      assert.strictEqual((yield* send("HEAD", "/v2/models/echo")).status, 200)
    }).pipe(withFreshMetrics))
})

describe("model metadata and readiness", () => {
  it.effect("describes a model with -1 for dynamic dims, every version, the ONNX platform", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const r = yield* send("GET", "/v2/models/multi")
      assert.strictEqual(r.status, 200)
      assert.deepStrictEqual(r.json, {
        name: "multi",
        versions: ["1"],
        platform: "onnxruntime_onnx",
        inputs: [{ name: "a", datatype: "FP32", shape: [-1] }, { name: "b", datatype: "INT64", shape: [] }],
        outputs: [
          { name: "sum", datatype: "FP32", shape: [1] },
          { name: "scaled", datatype: "FP32", shape: [-1] },
          { name: "b_out", datatype: "INT64", shape: [] }
        ],
        properties: { default_priority: "Normal", max_batch_size: "0" }
      })
      // As Triton: without a version, the versions that can serve; with one, that version alone.
      assert.deepStrictEqual((yield* send("GET", "/v2/models/echo")).json.versions, ["1", "2"])
      const echo = yield* send("GET", "/v2/models/echo/versions/1")
      assert.strictEqual(echo.status, 200)
      assert.deepStrictEqual(echo.json.versions, ["1"])
    }).pipe(withFreshMetrics))

  it.effect("tells in properties (strings, as the OIP allows) the default priority, the batch limit and the declared input signatures", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      assert.deepStrictEqual((yield* send("GET", "/v2/models/slow")).json.properties, { default_priority: "High", max_batch_size: "0" })
      const vad = (yield* send("GET", "/v2/models/vad")).json.properties
      assert.deepStrictEqual(JSON.parse(vad.input_signatures), [
        { audio: { dims: [-1, 4] }, sr: { values: [16000] } },
        { audio: { dims: [-1, 2] }, sr: { values: [8000] } }
      ])
    }).pipe(withFreshMetrics))

  it.effect("404 for an unknown model or version", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const model = yield* send("GET", "/v2/models/nope")
      assert.strictEqual(model.status, 404)
      assert.deepStrictEqual(model.json, { error: "model \"nope\" not found" })
      const version = yield* send("GET", "/v2/models/echo/versions/7")
      assert.strictEqual(version.status, 404)
      assert.deepStrictEqual(version.json, { error: "model \"echo\" version \"7\" not found" })
      assert.strictEqual((yield* send("POST", "/v2/models/echo/versions/7/infer", echoRequest([1, 2, 3, 4]))).status, 404)
      assert.strictEqual((yield* send("GET", "/v2/models/nope/ready")).status, 404)
    }).pipe(withFreshMetrics))

  it.effect("a model name with a separator, dot-dot or junk is a 400 and never looked up", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      for (const name of ["..%2F..%2Fetc%2Fpasswd", "a%2Fb", ".hidden", "%00", "a%5Cb", "x".repeat(300)]) {
        for (const path of [`/v2/models/${name}`, `/v2/models/${name}/ready`]) {
          const r = yield* send("GET", path)
          assert.strictEqual(r.status, 400, path)
          assert.match(r.json.error, /^invalid model name/)
        }
        assert.strictEqual((yield* send("POST", `/v2/models/${name}/infer`, echoRequest([1, 2, 3, 4]))).status, 400)
      }
      const version = yield* send("GET", "/v2/models/echo/versions/..%2F1")
      assert.strictEqual(version.status, 400)
      assert.match(version.json.error, /^invalid model version/)
    }).pipe(withFreshMetrics))

  it.effect("model ready: 200 when it can serve, 503 with the reason (no path, no stack) when unavailable", () =>
    Effect.gen(function*() {
      const { send, lifecycle } = yield* makeApp()
      assert.deepStrictEqual((yield* send("GET", "/v2/models/echo/ready")).json, { name: "echo", ready: true })
      assert.deepStrictEqual((yield* send("GET", "/v2/models/echo/versions/1/ready")).json, { name: "echo", ready: true })
      const broken = yield* send("GET", "/v2/models/broken/ready")
      assert.strictEqual(broken.status, 503)
      assert.strictEqual(broken.json.ready, false)
      assert.include(broken.json.error, "Protobuf parsing failed")
      noSecrets(broken.text)
      const metadata = yield* send("GET", "/v2/models/broken")
      assert.strictEqual(metadata.status, 503)
      noSecrets(metadata.text)
      yield* lifecycle.beginShutdown
      assert.strictEqual((yield* send("GET", "/v2/models/echo/ready")).status, 503)
    }).pipe(withFreshMetrics))
})

describe("repository index", () => {
  it.effect("lists every model version with its state, and the reason of an unavailable one", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const r = yield* send("POST", "/v2/repository/index")
      assert.strictEqual(r.status, 200)
      const index = r.json as Array<{ name: string; version: string; state: string; reason?: string }>
      assert.deepInclude(index, { name: "echo", version: "1", state: "READY" })
      assert.deepInclude(index, { name: "echo", version: "2", state: "READY" })
      const broken = index.find((m) => m.name === "broken")!
      assert.strictEqual(broken.state, "UNAVAILABLE")
      assert.strictEqual(broken.reason, "failed to load <repository>/broken/1/model.onnx: Protobuf parsing failed")
      noSecrets(r.text)
      const ready = yield* send("POST", "/v2/repository/index", { ready: true })
      assert.isFalse((ready.json as Array<{ name: string }>).some((m) => m.name === "broken"))
      assert.strictEqual((yield* send("POST", "/v2/repository/index", { ready: "yes" })).status, 400)
      assert.strictEqual((yield* send("POST", "/v2/repository/models/echo/load")).status, 400)
    }).pipe(withFreshMetrics))
})

describe("inference", () => {
  it.effect("runs the default (highest) version, echoes the id, names the version", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const r = yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4.5], { id: "req-42" }))
      assert.strictEqual(r.status, 200)
      assert.deepStrictEqual(r.json, {
        model_name: "echo",
        model_version: "2",
        id: "req-42",
        outputs: [{ name: "y", datatype: "FP32", shape: [1, 4], data: [2, 4, 6, 9] }]
      })
      const v1 = yield* send("POST", "/v2/models/echo/versions/1/infer", echoRequest([1, 2, 3, 4]))
      assert.strictEqual(v1.json.model_version, "1")
      assert.deepStrictEqual(v1.json.outputs[0].data, [1, 2, 3, 4])
      assert.notProperty(v1.json, "id")
    }).pipe(withFreshMetrics))

  it.effect("accepts data nested as the shape, in row-major order", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const r = yield* send("POST", "/v2/models/echo/versions/1/infer", {
        inputs: [{ name: "x", shape: [2, 4], datatype: "FP32", data: [[1, 2, 3, 4], [5, 6, 7, 8]] }]
      })
      assert.strictEqual(r.status, 200)
      assert.deepStrictEqual(r.json.outputs[0], { name: "y", datatype: "FP32", shape: [2, 4], data: [1, 2, 3, 4, 5, 6, 7, 8] })
      const ragged = yield* send("POST", "/v2/models/echo/infer", {
        inputs: [{ name: "x", shape: [2, 4], datatype: "FP32", data: [[1, 2, 3], [4, 5, 6, 7, 8]] }]
      })
      assert.strictEqual(ragged.status, 400)
      assert.include(ragged.json.error, "does not match shape [2, 4]")
    }).pipe(withFreshMetrics))

  it.effect("round-trips every datatype the model takes, 64-bit integers exactly", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const cases: ReadonlyArray<readonly [string, string, ReadonlyArray<unknown>, string]> = [
        ["float32", "FP32", [1.5, -0.1, 3.4e38, 0], "[1.5,-0.1,3.4e+38,0]"],
        ["float64", "FP64", [0.1, -1e300, 5e-324, 2], "[0.1,-1e+300,5e-324,2]"],
        ["float16", "FP16", [1.5, 65504, -0.0001, 100000], "[1.5,65504,-0.0001,null]"],
        ["int8", "INT8", [-128, 127, 0, 1], "[-128,127,0,1]"],
        ["int16", "INT16", [-32768, 32767, 0, 1], "[-32768,32767,0,1]"],
        ["int32", "INT32", [-2147483648, 2147483647, 0, 1], "[-2147483648,2147483647,0,1]"],
        ["int64", "INT64", ["-9223372036854775808", "9007199254740993", -5, 0], "[-9223372036854775808,9007199254740993,-5,0]"],
        ["uint8", "UINT8", [0, 255, 1, 2], "[0,255,1,2]"],
        ["uint16", "UINT16", [0, 65535, 1, 2], "[0,65535,1,2]"],
        ["uint32", "UINT32", [0, 4294967295, 1, 2], "[0,4294967295,1,2]"],
        ["uint64", "UINT64", ["18446744073709551615", 0, 1, 2], "[18446744073709551615,0,1,2]"],
        ["bool", "BOOL", [true, false, 1, 0], "[true,false,true,false]"],
        ["string", "BYTES", ["a", "é", "", "\"q\""], "[\"a\",\"é\",\"\",\"\\\"q\\\"\"]"]
      ]
      for (const [dtype, datatype, data, expected] of cases) {
        const r = yield* send("POST", `/v2/models/identity_${dtype}/infer`, {
          inputs: [{ name: "x", shape: [2, 2], datatype, data }]
        })
        assert.strictEqual(r.status, 200, `${datatype}: ${r.text}`)
        assert.include(r.text, `"datatype":"${datatype}","shape":[2,2],"data":${expected}`, datatype)
      }
    }).pipe(withFreshMetrics))

  it.effect("refuses a datatype the model does not take, or does not exist, naming the input", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const fp16 = yield* send("POST", "/v2/models/identity_float32/infer", { inputs: [{ name: "x", shape: [1, 1], datatype: "FP16", data: [1] }] })
      assert.strictEqual(fp16.status, 400)
      assert.strictEqual(fp16.json.error, "invalid input \"x\" for model \"identity_float32\": datatype FP16 given, the model takes FP32")
      const bytes = yield* send("POST", "/v2/models/identity_float32/infer", { inputs: [{ name: "x", shape: [1, 1], datatype: "BYTES", data: ["a"] }] })
      assert.strictEqual(bytes.status, 400)
      assert.include(bytes.json.error, "datatype BYTES given, the model takes FP32")
      const bf16 = yield* send("POST", "/v2/models/identity_float32/infer", { inputs: [{ name: "x", shape: [1, 1], datatype: "BF16", data: [1] }] })
      assert.strictEqual(bf16.status, 400)
      assert.include(bf16.json.error, "datatype \"BF16\" is not supported")
    }).pipe(withFreshMetrics))

  it.effect("refuses elements of the wrong kind or out of range, naming the input and the element", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const cases: ReadonlyArray<readonly [string, string, ReadonlyArray<unknown>, string]> = [
        ["int8", "INT8", [200], "element 0 is 200, out of the INT8 range [-128, 127]"],
        ["int32", "INT32", [1.5], "element 0 is 1.5, not INT32"],
        ["uint64", "UINT64", [-1], "element 0 is -1, out of the UINT64 range"],
        ["int64", "INT64", ["12a"], "element 0 is \"12a\", not INT64"],
        ["float32", "FP32", ["1"], "element 0 is \"1\", not FP32"],
        ["bool", "BOOL", [2], "element 0 is 2, not BOOL"],
        ["string", "BYTES", [1], "element 0 is 1, not BYTES"],
        // Never a silent change of the data: onnxruntime-node would end a string at a NUL, and a
        // lone surrogate has no UTF-8 form.
        ["string", "BYTES", ["a\u0000b"], "element 0 holds a NUL character (U+0000), where onnxruntime would cut the string"],
        ["string", "BYTES", ["\ud800z"], "element 0 is not well-formed Unicode (a lone surrogate, which UTF-8 cannot encode)"]
      ]
      for (const [dtype, datatype, data, message] of cases) {
        const r = yield* send("POST", `/v2/models/identity_${dtype}/infer`, { inputs: [{ name: "x", shape: [1, 1], datatype, data }] })
        assert.strictEqual(r.status, 400, `${datatype} ${r.text}`)
        assert.include(r.json.error, `invalid input "x" for model "identity_${dtype}": ${message}`)
      }
    }).pipe(withFreshMetrics))

  it.effect("refuses a shape that does not fit: wrong count, negative dims, [1e9, 1e9] before any allocation", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const count = yield* send("POST", "/v2/models/echo/infer", { inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", data: [1, 2, 3] }] })
      assert.strictEqual(count.status, 400)
      assert.include(count.json.error, "invalid input \"x\" for model \"echo\"")
      const negative = yield* send("POST", "/v2/models/echo/infer", { inputs: [{ name: "x", shape: [-1, 4], datatype: "FP32", data: [] }] })
      assert.strictEqual(negative.status, 400)
      assert.include(negative.json.error, "must be non-negative integers")
      const huge = yield* send("POST", "/v2/models/echo/infer", { inputs: [{ name: "x", shape: [1e9, 1e9], datatype: "FP32", data: [] }] })
      assert.strictEqual(huge.status, 400)
      assert.include(huge.json.error, "exceed the limit of 268435456 elements")
      const fixed = yield* send("POST", "/v2/models/echo/infer", { inputs: [{ name: "x", shape: [1, 3], datatype: "FP32", data: [1, 2, 3] }] })
      assert.strictEqual(fixed.status, 400)
      assert.include(fixed.json.error, "dim 1 is 3, the model takes 4")
    }).pipe(withFreshMetrics))

  it.effect("refuses malformed JSON and bodies that are not inference requests, saying where", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const malformed = yield* send("POST", "/v2/models/echo/infer", "{\"inputs\": [")
      assert.strictEqual(malformed.status, 400)
      assert.match(malformed.json.error, /^the request body is not valid JSON/)
      // Bytes that are not UTF-8 (here in the id) are refused, not read as U+FFFD: valid JSON once replaced.
      const body = (id: Uint8Array) =>
        Buffer.concat([Buffer.from('{"id": "'), id, Buffer.from('", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}')])
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", body(Buffer.from("é")))).status, 200)
      for (const [name, bytes, headers] of [
        ["JSON body", body(Buffer.of(0xc3, 0x28)), {}],
        ["JSON head of a binary body", Buffer.concat([body(Buffer.of(0xff)), Buffer.of(1, 2)]), { "inference-header-content-length": String(body(Buffer.of(0xff)).length) }]
      ] as const) {
        const notUtf8 = yield* send("POST", "/v2/models/echo/infer", new Uint8Array(bytes), headers)
        assert.strictEqual(notUtf8.status, 400, name)
        assert.strictEqual(notUtf8.json.error, "the request body is not valid UTF-8, as JSON text must be (RFC 8259 §8.1)", name)
      }
      const load = yield* send("POST", "/v2/repository/index", new Uint8Array(Buffer.of(0x7b, 0xff, 0x7d)))
      assert.strictEqual(load.status, 400)
      assert.match(load.json.error, /not valid UTF-8/)
      // Refused before JSON.parse, which takes about half a microsecond and an array per level (seconds and gigabytes for a 16 MB body).
      const deep = yield* send("POST", "/v2/models/echo/infer", `{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ${"[".repeat(20_000)}0${"]".repeat(20_000)}}]}`)
      assert.strictEqual(deep.status, 400)
      assert.match(deep.json.error, /^the request body nests arrays or objects more than 64 levels deep/)
      const noInputs = yield* send("POST", "/v2/models/echo/infer", { id: "1" })
      assert.strictEqual(noInputs.status, 400)
      assert.include(noInputs.json.error, "Missing key at [\"inputs\"]")
      const badShape = yield* send("POST", "/v2/models/echo/infer", { inputs: [{ name: "x", shape: "1,4", datatype: "FP32", data: [] }] })
      assert.strictEqual(badShape.status, 400)
      assert.include(badShape.json.error, "at [\"inputs\"][0][\"shape\"]")
      const notArray = yield* send("POST", "/v2/models/echo/infer", { inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", data: 4 }] })
      assert.strictEqual(notArray.status, 400)
      assert.include(notArray.json.error, "data must be an array")
    }).pipe(withFreshMetrics))

  it.effect("refuses unknown, repeated and missing inputs and unknown outputs; returns only the outputs asked for", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const a = { name: "a", shape: [3], datatype: "FP32", data: [1, 2, 3] }
      const b = { name: "b", shape: [], datatype: "INT64", data: [10] }
      const unknown = yield* send("POST", "/v2/models/multi/infer", { inputs: [a, b, { ...b, name: "c" }] })
      assert.strictEqual(unknown.status, 400)
      assert.include(unknown.json.error, "invalid input \"c\" for model \"multi\": unknown input; the model takes a, b")
      const twice = yield* send("POST", "/v2/models/multi/infer", { inputs: [a, a, b] })
      assert.include(twice.json.error, "input given more than once")
      const missing = yield* send("POST", "/v2/models/multi/infer", { inputs: [a] })
      assert.strictEqual(missing.status, 400)
      assert.include(missing.json.error, "invalid input \"b\" for model \"multi\": missing input")
      const badOutput = yield* send("POST", "/v2/models/multi/infer", { inputs: [a, b], outputs: [{ name: "nope" }] })
      assert.strictEqual(badOutput.status, 400)
      assert.include(badOutput.json.error, "unknown output \"nope\"; the model returns sum, scaled, b_out")
      const subset = yield* send("POST", "/v2/models/multi/infer", { inputs: [a, b], outputs: [{ name: "scaled" }, { name: "sum" }] })
      assert.strictEqual(subset.status, 200)
      assert.deepStrictEqual(subset.json.outputs, [
        { name: "scaled", datatype: "FP32", shape: [3], data: [10, 20, 30] },
        { name: "sum", datatype: "FP32", shape: [1], data: [6] }
      ])
      const all = yield* send("POST", "/v2/models/multi/infer", { inputs: [a, b] })
      assert.deepStrictEqual(all.json.outputs.map((o: { name: string }) => o.name), ["sum", "scaled", "b_out"])
      assert.deepStrictEqual(all.json.outputs[2], { name: "b_out", datatype: "INT64", shape: [], data: [10] })
    }).pipe(withFreshMetrics))

  it.effect("an empty outputs array asks for every output, as Triton and the gRPC front end read it", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const inputs = [{ name: "a", shape: [3], datatype: "FP32", data: [1, 2, 3] }, { name: "b", shape: [], datatype: "INT64", data: [10] }]
      const empty = yield* send("POST", "/v2/models/multi/infer", { inputs, outputs: [] })
      assert.strictEqual(empty.status, 200)
      assert.deepStrictEqual(empty.json.outputs.map((o: { name: string }) => o.name), ["sum", "scaled", "b_out"])
      const binary = yield* send("POST", "/v2/models/multi/infer", { inputs, outputs: [], parameters: { binary_data_output: true } })
      assert.strictEqual(binary.headers.get("content-type"), "application/octet-stream")
      const head = JSON.parse(binary.text.slice(0, Number(binary.headers.get("inference-header-content-length"))))
      assert.deepStrictEqual(head.outputs.map((o: { parameters: unknown }) => o.parameters), [{ binary_data_size: 4 }, { binary_data_size: 12 }, { binary_data_size: 8 }])
    }).pipe(withFreshMetrics))

  it.effect("outputs of more than maxJsonOutputValues values are refused as JSON (400, naming binary data), and come as binary data", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp({ bodyLimitBytes: 8 << 20 })
      const rows = InferExchange.maxJsonOutputValues / 4 + 1
      const bytes = new Uint8Array(rows * 4 * 4)
      const request = (parameters: Record<string, unknown>) => {
        const head = Buffer.from(JSON.stringify({ inputs: [{ name: "x", datatype: "FP32", shape: [rows, 4], parameters: { binary_data_size: bytes.length } }], parameters }))
        return send("POST", "/v2/models/echo/infer", Buffer.concat([head, bytes]), { "inference-header-content-length": String(head.length) })
      }
      const json = yield* request({})
      assert.strictEqual(json.status, 400)
      assert.strictEqual(json.json.error, `the outputs asked as JSON hold ${rows * 4} values, more than the ${InferExchange.maxJsonOutputValues} a JSON answer carries; ask for them as binary tensor data (parameters.binary_data_output: true)`)
      const binary = yield* request({ binary_data_output: true })
      assert.strictEqual(binary.status, 200)
      assert.strictEqual(binary.headers.get("content-type"), "application/octet-stream")
    }).pipe(withFreshMetrics))

  it.effect("a raw binary request (Inference-Header-Content-Length: 0) is the bytes of the model's one input, its shape deduced, every output binary", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const raw = (model: string, bytes: Uint8Array) =>
        send("POST", `/v2/models/${model}/infer`, bytes, { "inference-header-content-length": "0", "content-type": "application/octet-stream" })
      const floats = (values: ReadonlyArray<number>) => new Uint8Array(new Float32Array(values).buffer)
      const head = (r: { readonly text: string; readonly headers: Headers }) =>
        JSON.parse(r.text.slice(0, Number(r.headers.get("inference-header-content-length"))))
      // echo ([-1, 4], no batching): the variable dim from the byte count, as Triton deduces it.
      const echo = yield* raw("echo", floats([1, 2, 3, 4, 5, 6, 7, 8]))
      assert.strictEqual(echo.status, 200, echo.text)
      assert.strictEqual(echo.headers.get("content-type"), "application/octet-stream")
      assert.deepStrictEqual(head(echo), {
        model_name: "echo",
        model_version: "2",
        outputs: [{ name: "y", datatype: "FP32", shape: [2, 4], parameters: { binary_data_size: 32 } }]
      })
      // batched ([-1, 4], batches): batch size 1, and the bytes must fill [1, 4] exactly.
      const one = yield* raw("batched", floats([1, 2, 3, 4]))
      assert.strictEqual(one.status, 200, one.text)
      assert.deepStrictEqual(head(one).outputs[0].shape, [1, 4])
      const short = yield* raw("batched", floats([1, 2, 3]))
      assert.strictEqual(short.status, 400)
      assert.include(short.json.error, "the binary data is 12 bytes, shape [1, 4] of FP32 needs 16")
      // What Triton refuses too: several inputs, more than one variable-size dim.
      const several = yield* raw("multi", floats([1]))
      assert.strictEqual(several.status, 400)
      assert.include(several.json.error, "raw binary request (Inference-Header-Content-Length 0) needs a model of one input; multi takes 2 (a, b)")
      const twoDynamic = yield* raw("identity_uint8", new Uint8Array([1, 2]))
      assert.strictEqual(twoDynamic.status, 400)
      assert.include(twoDynamic.json.error, "more than one variable-size dim")
    }).pipe(withFreshMetrics))

  it.effect("413 for a body over the limit, from Content-Length or while reading", () =>
    Effect.gen(function*() {
      const { send, stats } = yield* makeApp({ bodyLimitBytes: 1000 })
      const big = JSON.stringify(echoRequest(Array.from({ length: 400 }, () => 0.125)))
      const declared = yield* send("POST", "/v2/models/echo/infer", big, { "content-length": String(big.length) })
      assert.strictEqual(declared.status, 413)
      assert.include(declared.json.error, "exceeds the limit of 1000 bytes")
      const streamed = yield* send("POST", "/v2/models/echo/infer", big)
      assert.strictEqual(streamed.status, 413)
      assert.strictEqual(stats.started, 0)
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))).status, 200)
    }).pipe(withFreshMetrics))

  it.effect("Triton's priority 1…4 maps to Critical…Low, 0 and beyond the levels to the default; negative or fractional is a 400", () =>
    Effect.gen(function*() {
      const { send, engine, gate, stats } = yield* makeApp({ config: { maxConcurrentRequests: 1 } })
      yield* gate.close
      const running = yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => stats.started === 1)
      const queued = []
      for (const priority of [1, 2, 4, 0, 10, 1e20]) {
        queued.push(yield* Effect.forkChild(
          send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4], { parameters: { priority } })),
          { startImmediately: true }
        ))
      }
      yield* Effect.yieldNow
      assert.deepStrictEqual(yield* engine.queueStats, { critical: 1, high: 1, normal: 3, low: 1, total: 6 })
      for (const priority of [-1, 1.5, "1"]) {
        const bad = yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4], { parameters: { priority } }))
        assert.strictEqual(bad.status, 400)
        assert.include(bad.json.error, "[\"parameters\"][\"priority\"]")
      }
      yield* gate.open
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(running)).status, 200)
      for (const f of queued) assert.strictEqual((yield* Fiber.join(f)).status, 200)
    }).pipe(withFreshMetrics))

  it.effect("a request without a priority gets its model's default priority", () =>
    Effect.gen(function*() {
      const { send, engine, gate, stats } = yield* makeApp({ config: { maxConcurrentRequests: 1 } })
      yield* gate.close
      const running = yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => stats.started === 1)
      const queued = [
        yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true }),
        yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4], { parameters: { priority: 0 } })), { startImmediately: true }),
        yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4], { parameters: { priority: 4 } })), { startImmediately: true })
      ]
      yield* Effect.yieldNow
      assert.deepStrictEqual(yield* engine.queueStats, { critical: 0, high: 2, normal: 0, low: 1, total: 3 })
      yield* gate.open
      yield* TestClock.adjust("5 seconds")
      for (const f of [running, ...queued]) assert.strictEqual((yield* Fiber.join(f)).status, 200)
    }).pipe(withFreshMetrics))

  it.effect("parameters.timeout (µs) becomes the deadline: 504 when it passes", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const fiber = yield* Effect.forkChild(
        send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4], { parameters: { timeout: 50_000 } })),
        { startImmediately: true }
      )
      yield* TestClock.adjust("49 millis")
      assert.isUndefined(fiber.pollUnsafe())
      yield* TestClock.adjust("1 millis")
      const r = yield* Fiber.join(fiber)
      assert.strictEqual(r.status, 504)
      assert.include(r.json.error, "exceeded its 50 ms deadline")
    }).pipe(withFreshMetrics))

  it.effect("Retry-After comes from the queue's measured drain rate: the queue over the rate, 60 s when nothing drains", () =>
    Effect.gen(function*() {
      const { send, gate, engine, stats } = yield* makeApp({ config: { maxConcurrentRequests: 1, maxQueuedRequests: 10 } })
      // One request run in the first 500 ms sample: 2 requests a second.
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))).status, 200)
      yield* TestClock.adjust("500 millis")
      yield* gate.close
      const fibers = [yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })]
      yield* waitUntil(() => stats.started === 2)
      for (let i = 0; i < 10; i++) fibers.push(yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true }))
      yield* waitUntil(() => Effect.runSync(engine.pending) === 11)
      const full = yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))
      assert.strictEqual(full.status, 429)
      assert.strictEqual(full.headers.get("retry-after"), "5", "10 queued at 2 a second")
      // the reason with its numbers, for a client that rebuilds the engine's error (`OipClient`)
      assert.deepStrictEqual(JSON.parse(full.headers.get(Routes.reasonHeader) ?? "null"), { _tag: "QueueFull", capacity: 10 })
      // Nothing runs for a while (the gate is closed; less than the 5 s queue timeout): the
      // measured rate decays towards 0, the wait grows.
      yield* TestClock.adjust("4 seconds")
      const later = Number((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))).headers.get("retry-after"))
      assert.isAbove(later, 5)
      for (const f of fibers) yield* Fiber.interrupt(f)
    }).pipe(withFreshMetrics))

  /** Closes the gate, fills the queue with 11 slow requests (one dispatched, 10 queued), and answers the Retry-After of the 429 that follows. */
  const retryAfterWhenFull = (app: Effect.Success<ReturnType<typeof makeApp>>) =>
    Effect.gen(function*() {
      const { send, gate, engine, stats } = app
      const startedBefore = stats.started
      yield* gate.close
      yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => stats.started === startedBefore + 1)
      for (let i = 0; i < 10; i++) yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => Effect.runSync(engine.pending) === 11)
      const full = yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))
      assert.strictEqual(full.status, 429)
      return full.headers.get("retry-after")
    })

  it.effect("Retry-After on a fresh server after idle time is the 1 s fallback, not the 60 s of a stuck model", () =>
    Effect.gen(function*() {
      const app = yield* makeApp({ config: { maxConcurrentRequests: 1, maxQueuedRequests: 10 } })
      yield* TestClock.adjust("30 seconds")
      assert.strictEqual(yield* retryAfterWhenFull(app), "1")
    }).pipe(withFreshMetrics))

  it.effect("Retry-After after idle time keeps the drain rate measured before it", () =>
    Effect.gen(function*() {
      const app = yield* makeApp({ config: { maxConcurrentRequests: 1, maxQueuedRequests: 10 } })
      // One request run in the first 500 ms interval: 2 a second.
      assert.strictEqual((yield* app.send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))).status, 200)
      yield* TestClock.adjust("30 seconds")
      assert.strictEqual(yield* retryAfterWhenFull(app), "5", "10 queued at 2 a second")
    }).pipe(withFreshMetrics))

  it("RetryAfter.seconds: the queue over the drain rate, rounded up, within bounds", () => {
    const cases: ReadonlyArray<readonly [RetryAfter.Input, number]> = [
      [{ queued: 100, ratePerSecond: undefined }, 1],
      [{ queued: 100, ratePerSecond: undefined, fallback: 3 }, 3],
      [{ queued: 100, ratePerSecond: 0 }, 60],
      [{ queued: 100, ratePerSecond: 1000 }, 1],
      [{ queued: 100, ratePerSecond: 40 }, 3],
      [{ queued: 100, ratePerSecond: 50 }, 2],
      [{ queued: 100, ratePerSecond: 0.5 }, 60],
      [{ queued: 100, ratePerSecond: 0.5, max: 300 }, 200],
      [{ queued: 0, ratePerSecond: 10 }, 1],
      [{ queued: 100, ratePerSecond: Number.NaN }, 1]
    ]
    for (const [input, expected] of cases) assert.strictEqual(RetryAfter.seconds(input), expected, JSON.stringify(input))
  })

  it.effect("classification (Triton's extension): an output asked with parameters.classification comes back as its top classes, BYTES \"value:index\"", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      // A model that does not batch (echo answers 2x): the whole output is one row, the answer
      // [count]; equal values in index order.
      const one = yield* send("POST", "/v2/models/echo/infer", echoRequest([0.5, 2, -1, 2], { outputs: [{ name: "y", parameters: { classification: 3 } }] }))
      assert.strictEqual(one.status, 200, one.text)
      assert.deepStrictEqual(one.json.outputs, [{ name: "y", datatype: "BYTES", shape: [3], data: ["4.000000:1", "4.000000:3", "1.000000:0"] }])
      // A model that batches: each row apart, the answer [rows, count]; a count past the row's elements gives them all.
      const rows = yield* send("POST", "/v2/models/batched/infer", {
        inputs: [{ name: "x", shape: [2, 4], datatype: "FP32", data: [1, 2, 3, 4, 8, 7, 6, 5] }],
        outputs: [{ name: "y", parameters: { classification: 9 } }]
      })
      assert.strictEqual(rows.status, 200, rows.text)
      assert.deepStrictEqual(rows.json.outputs[0].shape, [2, 4])
      assert.deepStrictEqual(rows.json.outputs[0].data, [
        "4.000000:3", "3.000000:2", "2.000000:1", "1.000000:0",
        "8.000000:0", "7.000000:1", "6.000000:2", "5.000000:3"
      ])
      // With binary tensor data, as BYTES are laid out: a 4-byte length before each string.
      const binary = yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4], { outputs: [{ name: "y", parameters: { classification: 1, binary_data: true } }] }))
      assert.strictEqual(binary.status, 200)
      const jsonLength = Number(binary.headers.get("inference-header-content-length"))
      const bytes = Buffer.from(binary.text, "latin1")
      const head = JSON.parse(bytes.subarray(0, jsonLength).toString("utf8"))
      assert.deepStrictEqual(head.outputs, [{ name: "y", datatype: "BYTES", shape: [1], parameters: { binary_data_size: 4 + 10 } }])
      assert.strictEqual(bytes.readUInt32LE(jsonLength), 10)
      assert.strictEqual(bytes.subarray(jsonLength + 4).toString("utf8"), "8.000000:3")
      // Integers as integers.
      const ints = yield* send("POST", "/v2/models/identity_int64/infer", { inputs: [{ name: "x", shape: [1, 3], datatype: "INT64", data: [7, 9, 8] }], outputs: [{ name: "y", parameters: { classification: 2 } }] })
      assert.deepStrictEqual(ints.json.outputs[0].data, ["9:1", "8:2"])
    }).pipe(withFreshMetrics))

  it.effect("classification: a count that is not a positive integer, or an output that is not numeric, is a 400; nothing runs", () =>
    Effect.gen(function*() {
      const { send, stats } = yield* makeApp()
      const cases: ReadonlyArray<readonly [string, unknown, RegExp]> = [
        ["echo", echoRequest([1, 2, 3, 4], { outputs: [{ name: "y", parameters: { classification: 0 } }] }), /output "y": parameters.classification must be a positive integer \(the number of classes to return\), got 0/],
        ["echo", echoRequest([1, 2, 3, 4], { outputs: [{ name: "y", parameters: { classification: 2.5 } }] }), /must be a positive integer .*got 2.5/],
        ["echo", echoRequest([1, 2, 3, 4], { outputs: [{ name: "y", parameters: { classification: "3" } }] }), /must be a positive integer .*got "3"/],
        ["identity_bool", { inputs: [{ name: "x", shape: [1, 2], datatype: "BOOL", data: [true, false] }], outputs: [{ name: "y", parameters: { classification: 1 } }] }, /parameters.classification needs a numeric output; this one is BOOL/],
        ["identity_string", { inputs: [{ name: "x", shape: [1, 1], datatype: "BYTES", data: ["a"] }], outputs: [{ name: "y", parameters: { classification: 1 } }] }, /needs a numeric output; this one is BYTES/]
      ]
      for (const [model, body, error] of cases) {
        const r = yield* send("POST", `/v2/models/${model}/infer`, body)
        assert.strictEqual(r.status, 400, JSON.stringify(body))
        assert.match(r.json.error, error)
      }
      assert.strictEqual(stats.started, 0, "nothing ran")
    }).pipe(withFreshMetrics))

  it.effect("parameters of unsupported extensions (shared memory) are a 400 naming the extension, not ignored", () =>
    Effect.gen(function*() {
      const { send, stats } = yield* makeApp()
      const cases: ReadonlyArray<readonly [unknown, RegExp]> = [
        [echoRequest([1, 2, 3, 4], { outputs: [{ name: "y", parameters: { shared_memory_region: "out", shared_memory_byte_size: 16 } }] }), /output "y": parameters.shared_memory_region: the shared memory extension is not supported/],
        [{ inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", parameters: { shared_memory_region: "in", shared_memory_byte_size: 16 } }] }, /^invalid input "x" for model "echo": parameters.shared_memory_region: the shared memory extension is not supported/]
      ]
      for (const [body, error] of cases) {
        const r = yield* send("POST", "/v2/models/echo/infer", body)
        assert.strictEqual(r.status, 400, JSON.stringify(body))
        assert.match(r.json.error, error)
      }
      assert.strictEqual(stats.started, 0, "nothing ran")
    }).pipe(withFreshMetrics))

  it.effect("429 with Retry-After when the queue is full; nothing is read or queued", () =>
    Effect.gen(function*() {
      const { send, gate, engine, stats } = yield* makeApp({ config: { maxConcurrentRequests: 1, maxQueuedRequests: 1 } })
      yield* gate.close
      const a = yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => stats.started === 1)
      const b = yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => Effect.runSync(engine.pending) === 2)
      const c = yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))
      assert.strictEqual(c.status, 429)
      assert.strictEqual(c.headers.get("retry-after"), "1")
      // Refused before the body was read: the request has no id yet, and the message names none.
      assert.strictEqual(c.json.error, "queue full: 1 requests already queued, all models together (model echo)")
      assert.strictEqual(yield* engine.pending, 2)
      yield* gate.open
      yield* TestClock.adjust("2 seconds")
      assert.strictEqual((yield* Fiber.join(a)).status, 200)
      assert.strictEqual((yield* Fiber.join(b)).status, 200)
    }).pipe(withFreshMetrics))

  it.effect("503 for an unavailable model, and for every inference once shutting down", () =>
    Effect.gen(function*() {
      const { send, lifecycle, stats } = yield* makeApp()
      const broken = yield* send("POST", "/v2/models/broken/infer", echoRequest([1, 2, 3, 4]))
      assert.strictEqual(broken.status, 503)
      noSecrets(broken.text)
      yield* lifecycle.beginShutdown
      const r = yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))
      assert.strictEqual(r.status, 503)
      assert.deepStrictEqual(r.json, { error: "the engine is shutting down and accepts no new requests" })
      assert.strictEqual(r.headers.get("connection"), "close")
      assert.strictEqual(stats.started, 0)
    }).pipe(withFreshMetrics))

  it.effect("interrupting the request fiber takes the request out of the queue and counts it cancelled", () =>
    Effect.gen(function*() {
      const { send, gate, engine, stats } = yield* makeApp({ config: { maxConcurrentRequests: 1 } })
      yield* gate.close
      const running = yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => stats.started === 1)
      const queued = yield* Effect.forkChild(send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* Effect.yieldNow
      assert.strictEqual(yield* engine.pending, 2)
      yield* Fiber.interrupt(queued)
      assert.strictEqual(yield* engine.pending, 1)
      assert.strictEqual((yield* engine.queueStats).total, 0)
      yield* Fiber.interrupt(running)
      const metrics = yield* send("GET", "/metrics")
      assert.include(metrics.text, "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"cancelled\"} 1")
      assert.include(metrics.text, "inference_requests_total{model=\"slow\",version=\"1\",outcome=\"cancelled\"} 1")
    }).pipe(withFreshMetrics))
})

describe("GET /metrics", () => {
  it.effect("--metrics-format triton adds Triton's nv_inference_* families from the same counters", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp({ routes: { metricsFormat: "triton" } })
      // Before any request, every version served has its rows at 0, as Triton's from the model's load.
      const fresh = (yield* send("GET", "/metrics")).text
      for (const line of ["nv_inference_request_success{model=\"echo\",version=\"2\"} 0", "nv_inference_count{model=\"slow\",version=\"1\"} 0", "nv_inference_pending_request_count{model=\"echo\",version=\"1\"} 0"]) {
        assert.include(fresh, line)
      }
      assert.notInclude(fresh, "model=\"broken\"")
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))).status, 200)
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3]))).status, 400)
      // Each version has rows of its own, labelled as Triton labels them.
      assert.strictEqual((yield* send("POST", "/v2/models/echo/versions/1/infer", echoRequest([1, 2, 3, 4, 5, 6, 7, 8]))).status, 200)
      const text = (yield* send("GET", "/metrics")).text
      for (
        const line of [
          "nv_inference_request_success{model=\"echo\",version=\"1\"} 1",
          "nv_inference_request_failure{model=\"echo\",version=\"1\",reason=\"OTHER\"} 0",
          "nv_inference_count{model=\"echo\",version=\"1\"} 1",
          "nv_inference_pending_request_count{model=\"echo\",version=\"1\"} 0",
          "nv_inference_request_success{model=\"echo\",version=\"2\"} 1",
          "nv_inference_request_failure{model=\"echo\",version=\"2\",reason=\"OTHER\"} 1",
          "nv_inference_request_failure{model=\"echo\",version=\"2\",reason=\"REJECTED\"} 0",
          "nv_inference_request_failure{model=\"echo\",version=\"2\",reason=\"CANCELED\"} 0",
          "nv_inference_request_failure{model=\"echo\",version=\"2\",reason=\"BACKEND\"} 0",
          "nv_inference_count{model=\"echo\",version=\"2\"} 1",
          "nv_inference_exec_count{model=\"echo\",version=\"2\"} 1",
          "# TYPE nv_inference_request_duration_us counter",
          "# TYPE nv_inference_queue_duration_us counter",
          "# TYPE nv_inference_compute_infer_duration_us counter",
          "# TYPE nv_inference_pending_request_count gauge",
          "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"success\"} 1"
        ]
      ) assert.include(text, line)
    }).pipe(withFreshMetrics))

  it.effect("counts what the edge refuses before admission: an unavailable model (backend), a version the model lacks (invalid, no version label), a made-up model (one label), draining (rejected)", () =>
    Effect.gen(function*() {
      const { send, lifecycle } = yield* makeApp()
      const body = { inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4] }] }
      assert.strictEqual((yield* send("POST", "/v2/models/broken/infer", body)).status, 503)
      assert.strictEqual((yield* send("POST", "/v2/models/echo/versions/9/infer", body)).status, 404)
      assert.strictEqual((yield* send("POST", "/v2/models/echo/versions/10/infer", body)).status, 404)
      assert.strictEqual((yield* send("POST", "/v2/models/made-up/infer", body)).status, 404)
      yield* lifecycle.beginShutdown
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", body)).status, 503)
      const text = (yield* send("GET", "/metrics")).text
      const requests = text.split("\n").filter((l) => l.startsWith("inference_requests_total{") && !l.endsWith(" 0"))
      assert.deepStrictEqual(requests.sort(), [
        "inference_requests_total{model=\"_unknown\",version=\"\",outcome=\"invalid\"} 1",
        "inference_requests_total{model=\"broken\",version=\"\",outcome=\"backend\"} 1",
        "inference_requests_total{model=\"echo\",version=\"\",outcome=\"invalid\"} 2",
        "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"rejected\"} 1"
      ])
    }).pipe(withFreshMetrics))

  it.effect("reports the pool's instance events, every event with its row from the first scrape, counting on as they grow", () =>
    Effect.gen(function*() {
      const counters = { crashes: 0, deadlineKills: 0, abandonKills: 0, respawns: 0, respawnFailures: 0 }
      const { send } = yield* makeApp({ counters })
      const first = (yield* send("GET", "/metrics")).text
      assert.include(first, "# TYPE inference_instance_events_total counter")
      for (const event of ["crash", "deadline_kill", "abandon_kill", "respawn", "respawn_failure"]) {
        assert.include(first, `inference_instance_events_total{event="${event}"} 0`)
      }
      counters.crashes = 2
      counters.abandonKills = 1
      counters.respawns = 3
      const second = (yield* send("GET", "/metrics")).text
      assert.include(second, `inference_instance_events_total{event="crash"} 2`)
      assert.include(second, `inference_instance_events_total{event="abandon_kill"} 1`)
      assert.include(second, `inference_instance_events_total{event="respawn"} 3`)
      assert.include(second, `inference_instance_events_total{event="deadline_kill"} 0`)
      counters.crashes = 5
      const third = (yield* send("GET", "/metrics")).text
      assert.include(third, `inference_instance_events_total{event="crash"} 5`, "a counter, not a sum of scrapes")
      assert.include(third, `inference_instance_events_total{event="respawn"} 3`)
    }).pipe(withFreshMetrics))

  it.effect("the gauges the page sets are set every 5 s without a scrape too, for exporters that read the registry (OTLP)", () =>
    Effect.gen(function*() {
      const { send, gate, stats } = yield* makeApp({ config: { maxConcurrentRequests: 1 } })
      const unsettled = Effect.map(Metric.snapshot, (snapshot) =>
        snapshot.filter((m) => m.id === "inference_unsettled_requests").map((m) => (m.state as { value: number }).value))
      yield* Effect.yieldNow // the refresh fiber's first turn
      assert.deepStrictEqual(yield* unsettled, [0], "set as the routes start")
      yield* gate.close
      const running = yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => stats.started === 1)
      yield* TestClock.adjust("5 seconds")
      assert.deepStrictEqual(yield* unsettled, [1], "no /metrics scrape in between")
      yield* gate.open
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(running)).status, 200)
    }).pipe(withFreshMetrics))

  it.effect("a pool without instance counts has no instance events family", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      assert.notInclude((yield* send("GET", "/metrics")).text, "inference_instance_events_total")
    }).pipe(withFreshMetrics))

  it.effect("renders one family per fact: requests by outcome (every outcome has a row), counts, pending by priority, durations in seconds by model", () =>
    Effect.gen(function*() {
      const { send, gate, stats } = yield* makeApp({ config: { maxConcurrentRequests: 1, maxQueuedRequests: 1 } })
      // Before any request: every model served has its pending rows, at 0 (a dashboard finds the series at once).
      const fresh = (yield* send("GET", "/metrics")).text
      for (const level of ["Critical", "High", "Normal", "Low"]) {
        assert.include(fresh, `inference_pending_requests{model="echo",priority="${level}"} 0`)
        assert.include(fresh, `inference_pending_requests{model="slow",priority="${level}"} 0`)
      }
      assert.notInclude(fresh, `inference_pending_requests{model="broken"`, "a model that did not load serves nothing")
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))).status, 200)
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4, 5, 6, 7, 8]))).status, 200)
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3]))).status, 400)
      yield* gate.close
      const a = yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => stats.started === 3)
      const b = yield* Effect.forkChild(
        send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4], { parameters: { priority: 2, timeout: 100_000 } })),
        { startImmediately: true }
      )
      yield* Effect.yieldNow
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))).status, 429)
      const during = yield* send("GET", "/metrics")
      assert.strictEqual(during.status, 200)
      assert.strictEqual(during.headers.get("content-type"), "text/plain; version=0.0.4; charset=utf-8")
      assert.include(during.text, "inference_pending_requests{model=\"slow\",priority=\"High\"} 1")
      assert.include(during.text, "inference_pending_requests{model=\"slow\",priority=\"Critical\"} 0")
      assert.include(during.text, "inference_unsettled_requests 2")
      yield* TestClock.adjust("100 millis")
      assert.strictEqual((yield* Fiber.join(b)).status, 504)
      yield* gate.open
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* Fiber.join(a)).status, 200)
      const text = (yield* send("GET", "/metrics")).text
      for (
        const line of [
          "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"success\"} 2",
          "inference_requests_total{model=\"slow\",version=\"1\",outcome=\"success\"} 1",
          "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"invalid\"} 1",
          "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"rejected\"} 1",
          "inference_requests_total{model=\"slow\",version=\"1\",outcome=\"timeout\"} 1",
          "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"backend\"} 0",
          "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"cancelled\"} 0",
          "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"timeout\"} 0",
          "inference_requests_started_total{model=\"echo\",version=\"2\"} 4",
          "inference_count_total{model=\"echo\",version=\"2\"} 2",
          "inference_executions_total{model=\"echo\",version=\"2\"} 2",
          "inference_pending_requests{model=\"slow\",priority=\"High\"} 0",
          "# TYPE inference_queue_duration_seconds histogram",
          "# TYPE inference_compute_duration_seconds histogram",
          "# TYPE inference_request_duration_seconds histogram",
          "inference_request_duration_seconds_count{model=\"slow\",version=\"1\"} 1",
          "# TYPE process_cpu_seconds_total counter",
          "# TYPE process_resident_memory_bytes gauge",
          "# TYPE process_start_time_seconds gauge",
          "# TYPE nodejs_eventloop_lag_seconds gauge",
          "# TYPE nodejs_heap_size_used_bytes gauge",
          "# TYPE nodejs_gc_duration_seconds histogram"
        ]
      ) assert.include(text, line)
      // The old overlapping families are gone: one family per fact.
      for (const gone of ["inference_request_success_total", "inference_request_failure_total", "inference_request_failures_total", "_duration_ms"]) {
        assert.notInclude(text, gone)
      }
      // Every sample line belongs to a family declared once.
      const types = text.split("\n").filter((l) => l.startsWith("# TYPE ")).map((l) => l.split(" ")[2])
      assert.strictEqual(new Set(types).size, types.length, "no family declared twice")
      assert.notInclude(text, "nv_inference_", "Triton's names only with --metrics-format triton")
    }).pipe(withFreshMetrics))
})

describe("Triton's limits and request codings", () => {
  it.effect("a request with more rows than the model's max_batch_size is a 400 naming the limit; at the limit it runs", () =>
    Effect.gen(function*() {
      const { send, stats } = yield* makeApp()
      const tooMany = yield* send("POST", "/v2/models/batched/infer", echoRequest(Array.from({ length: 12 }, (_, i) => i)))
      assert.strictEqual(tooMany.status, 400)
      assert.include(tooMany.json.error, "batch-size must be <= 2 for 'batched'")
      assert.include(tooMany.json.error, "got 3")
      assert.strictEqual(stats.started, 0)
      const fits = yield* Effect.forkChild(send("POST", "/v2/models/batched/infer", echoRequest([1, 2, 3, 4, 5, 6, 7, 8])), { startImmediately: true })
      yield* TestClock.adjust("10 millis")
      const ok = yield* Fiber.join(fits)
      assert.strictEqual(ok.status, 200)
      assert.deepStrictEqual(ok.json.outputs[0].shape, [2, 4])
      // A model that does not batch has no such limit.
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest(Array.from({ length: 12 }, (_, i) => i)))).status, 200)
    }).pipe(withFreshMetrics))
})

describe("Routes.decoderOf: large bodies on the router's path", () => {
  const metadata: ModelMetadata.ModelMetadata = {
    name: "m",
    version: "1",
    inputs: [{ name: "x", dtype: "float32", dims: [-1, -1] }],
    outputs: [{ name: "y", dtype: "float32", dims: [-1, -1] }]
  }
  const body = (n: number) => JSON.stringify({ id: "r", inputs: [{ name: "x", shape: [1, n], datatype: "FP32", data: Array.from({ length: n }, (_, i) => i / 8) }] })
  /** What a decode answers, without its request id (each decode makes one). */
  const plain = (outcome: ReturnType<typeof InferExchange.decode>) =>
    outcome._tag === "Decoded" ? { id: outcome.id, x: Array.from(outcome.request.inputs["x"]!.data as Float32Array), dims: outcome.request.inputs["x"]!.dims } : outcome

  it.live("a JSON body of largeBodyBytes and more is decoded on a thread, others here, and both give what decoding here gives", () =>
    Effect.gen(function*() {
      const { pool, real, calls } = yield* countedDecodePool
      const sent = calls.bodies
      const decode = Routes.decoderOf(pool, 1000)
      const small = body(10)
      const large = body(400)
      const wrong = large.replace("[1,400]", "[1,401]")
      for (const text of [small, large, wrong, new TextEncoder().encode(large)]) {
        const here = InferExchange.decode("m", undefined, metadata, text, undefined)
        assert.deepStrictEqual(plain(yield* decode("m", undefined, metadata, text, undefined)), plain(here))
      }
      assert.deepStrictEqual(sent.map((b) => b.length), [large.length, wrong.length, large.length], "the large ones alone, as text or as bytes")
      // The threshold is in bytes: text of 600 two-byte characters is 1,200 bytes.
      const wide = JSON.stringify({ id: "é".repeat(600), inputs: [{ name: "x", shape: [1, 1], datatype: "FP32", data: [1] }] })
      assert.isBelow(wide.length, 1000)
      yield* decode("m", undefined, metadata, wide, undefined)
      assert.strictEqual(sent.length, 4)
      sent.pop()
      // A binary part is never sent (its tensors are views on bytes here).
      yield* decode("m", undefined, metadata, large, new Uint8Array(0))
      assert.strictEqual(sent.length, 3)
      // Without a pool, or when the thread cannot answer, it is decoded here.
      assert.deepStrictEqual(plain(yield* Routes.decoderOf(undefined, 1000)("m", undefined, metadata, large, undefined)), plain(InferExchange.decode("m", undefined, metadata, large, undefined)))
      const lost: DecodePool.DecodePool = { ...real, decode: (_n, _m, _b, onDone) => onDone(undefined) }
      assert.deepStrictEqual(plain(yield* Routes.decoderOf(lost, 1000)("m", undefined, metadata, large, undefined)), plain(InferExchange.decode("m", undefined, metadata, large, undefined)))
    }))

  it.live("encoderOf: an answer of largeValues JSON values and more is encoded on a thread, the same bytes; a smaller one here", () =>
    Effect.gen(function*() {
      const { pool, real, calls } = yield* countedDecodePool
      const prepared = (n: number): InferExchange.Prepared => ({
        _tag: "Prepared",
        response: { modelName: "m", modelVersion: "1", id: "r", outputs: [["y", Tensor.float32(Array.from({ length: n }, (_, i) => i / 3), [1, n])]], binaryOutputs: undefined },
        jsonValues: n
      })
      const text = (answer: InferExchange.Answer) =>
        answer._tag === "Json" ? answer.text : answer._tag === "JsonBytes" ? new TextDecoder().decode(answer.bytes) : answer._tag
      const encode = Routes.encoderOf(pool, 100)
      for (const n of [99, 100, 1000]) {
        const answer = yield* encode(prepared(n))
        assert.strictEqual(answer._tag, n < 100 ? "Json" : "JsonBytes")
        assert.strictEqual(text(answer), text(InferExchange.encodePrepared(prepared(n).response)))
      }
      assert.strictEqual(calls.encodes, 2)
      const lost: DecodePool.DecodePool = { ...real, encode: (_r, onDone) => onDone(undefined) }
      assert.strictEqual(text(yield* Routes.encoderOf(lost, 100)(prepared(1000))), text(InferExchange.encodePrepared(prepared(1000).response)))
    }))

  it.effect("on the router's path, a client that leaves while its large body is decoded on a thread is counted cancelled", () =>
    Effect.gen(function*() {
      // a thread that never answers: the request waits on it until its client leaves
      let asked = 0
      const stuck: DecodePool.DecodePool = {
        threads: 1,
        inFlight: () => asked,
        specsHeld: () => 0,
        start: () => {},
        warm: () => Promise.resolve(),
        decode: () => void asked++,
        encode: () => {},
        close: () => {}
      }
      const { send, stats } = yield* makeApp({ routes: { largeBodyBytes: 64, makeDecodePool: () => stuck } })
      const large = JSON.stringify(echoRequest([1, 2, 3, 4], { id: "a-request-id-long-enough-to-make-this-body-large" }))
      const leaving = yield* Effect.forkChild(send("POST", "/v2/models/echo/infer", Zlib.gzipSync(large), { "content-encoding": "gzip" }), { startImmediately: true })
      yield* waitUntil(() => asked === 1)
      yield* Fiber.interrupt(leaving)
      assert.strictEqual(stats.started, 0)
      const metrics = yield* send("GET", "/metrics")
      assert.include(metrics.text, "inference_requests_total{model=\"echo\",version=\"2\",outcome=\"cancelled\"} 1")
    }).pipe(withFreshMetrics))

  it.live("a shutdown that begins while a large answer is encoded on a thread: a sequence that goes on keeps its connection", () =>
    Effect.gen(function*() {
      const n = 70_000
      // the counter's state as large as its input, so that its answer is large (n values)
      const counter = makeCounterPool({ sequence: counterSequence({ states: [{ input: "h", output: "hN", dims: [n, 1] }] }) })
      let real: DecodePool.DecodePool | undefined
      let shutdownAtEncode = false
      let encodes = 0
      const makeDecodePool = (threads: number): DecodePool.DecodePool => {
        const made = real = DecodePool.make(threads)
        return {
          ...made,
          encode: (response, onDone) => {
            encodes++
            if (shutdownAtEncode) Effect.runSync(app.lifecycle.beginShutdown)
            made.encode(response, onDone)
          }
        }
      }
      const app = yield* makeApp({ modelPool: Layer.succeed(ModelPool, counter.pool), routes: { makeDecodePool } })
      yield* Effect.promise(() => real!.warm())
      const body = (parameters: Record<string, unknown>) => ({ parameters, inputs: [{ name: "x", shape: [n, 1], datatype: "FP32", data: new Array(n).fill(1) }] })
      const first = yield* app.send("POST", "/v2/models/counter/infer", body({ sequence_id: 1, sequence_start: true }))
      assert.strictEqual(first.status, 200, first.text.slice(0, 200))
      shutdownAtEncode = true
      const next = yield* app.send("POST", "/v2/models/counter/infer", body({ sequence_id: 1 }))
      assert.strictEqual(next.status, 200, next.text.slice(0, 200))
      assert.strictEqual(encodes, 2, "both answers were encoded on the thread")
      assert.isNull(next.headers.get("connection"), "the sequence goes on: its connection stays")
      const last = yield* app.send("POST", "/v2/models/counter/infer", body({ sequence_id: 1, sequence_end: true }))
      assert.strictEqual(last.headers.get("connection"), "close", "the sequence's end: its connection closes")
    }).pipe(withFreshMetrics))

  it.effect("on the router's path (a compressed body), a large body is answered as a small one is", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp({ routes: { largeBodyBytes: 64 } })
      const large = JSON.stringify(echoRequest([1, 2, 3, 4], { id: "a-request-id-long-enough-to-make-this-body-large" }))
      assert.isAbove(large.length, 64)
      const r = yield* send("POST", "/v2/models/echo/infer", Zlib.gzipSync(large), { "content-encoding": "gzip" })
      assert.strictEqual(r.status, 200, r.text)
      assert.deepStrictEqual(r.json.outputs[0].data, [2, 4, 6, 8])
      const bad = yield* send("POST", "/v2/models/echo/infer", Zlib.gzipSync(large.replace("[1,4]", "[1,5]")), { "content-encoding": "gzip" })
      assert.strictEqual(bad.status, 400)
    }).pipe(withFreshMetrics))
})

describe("Content-Encoding of request bodies", () => {
  const body = JSON.stringify(echoRequest([1, 2, 3, 4], { id: "z" }))

  it.effect("gzip and deflate (zlib or raw) bodies are decompressed; identity is plain", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const cases: ReadonlyArray<readonly [string, Uint8Array]> = [
        ["gzip", Zlib.gzipSync(body)],
        ["x-gzip", Zlib.gzipSync(body)],
        ["deflate", Zlib.deflateSync(body)],
        ["deflate", Zlib.deflateRawSync(body)],
        ["identity", new TextEncoder().encode(body)]
      ]
      for (const [coding, bytes] of cases) {
        const r = yield* send("POST", "/v2/models/echo/infer", bytes, { "content-type": "application/json", "content-encoding": coding })
        assert.strictEqual(r.status, 200, `${coding}: ${r.text}`)
        assert.deepStrictEqual(r.json.outputs[0].data, [2, 4, 6, 8])
      }
    }).pipe(withFreshMetrics))

  it.effect("a client that accepts gzip answers (tritonclient's response_compression_algorithm) gets a plain, correct answer", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const r = yield* send("POST", "/v2/models/echo/infer", Zlib.gzipSync(body), { "content-encoding": "gzip", "accept-encoding": "gzip, deflate" })
      assert.strictEqual(r.status, 200)
      assert.isNull(r.headers.get("content-encoding"))
      assert.deepStrictEqual(r.json.outputs[0].data, [2, 4, 6, 8])
    }).pipe(withFreshMetrics))

  it.effect("a compressed binary-tensor body is decompressed before it is split", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const head = new TextEncoder().encode(JSON.stringify({
        inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", parameters: { binary_data_size: 16 } }]
      }))
      const whole = new Uint8Array(head.length + 16)
      whole.set(head)
      whole.set(new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer), head.length)
      const r = yield* send("POST", "/v2/models/echo/infer", Zlib.gzipSync(whole), {
        "content-encoding": "gzip",
        "inference-header-content-length": String(head.length)
      })
      assert.strictEqual(r.status, 200, r.text)
      assert.deepStrictEqual(r.json.outputs[0].data, [2, 4, 6, 8])
    }).pipe(withFreshMetrics))

  it.effect("another coding is a JSON 415; a corrupt one a 400", () =>
    Effect.gen(function*() {
      const { send, stats } = yield* makeApp()
      const br = yield* send("POST", "/v2/models/echo/infer", Zlib.brotliCompressSync(body), { "content-encoding": "br" })
      assert.strictEqual(br.status, 415)
      assert.include(br.json.error, "unsupported Content-Encoding \"br\"")
      const corrupt = yield* send("POST", "/v2/models/echo/infer", body, { "content-encoding": "gzip" })
      assert.strictEqual(corrupt.status, 400)
      assert.include(corrupt.json.error, "not valid gzip")
      assert.strictEqual(stats.started, 0)
    }).pipe(withFreshMetrics))

  it.effect("the body limit applies to the decompressed size: a small bomb is a 413", () =>
    Effect.gen(function*() {
      const { send, stats } = yield* makeApp({ bodyLimitBytes: 64 * 1024 })
      // 10 MB of spaces compress to about 10 KB: under the limit on the wire, far over it inflated.
      const bomb = Zlib.gzipSync(Buffer.alloc(10_000_000, 0x20))
      assert.isBelow(bomb.length, 64 * 1024)
      const r = yield* send("POST", "/v2/models/echo/infer", bomb, { "content-encoding": "gzip" })
      assert.strictEqual(r.status, 413)
      assert.include(r.json.error, "decompressed request body exceeds the limit of 65536 bytes")
      assert.strictEqual(stats.started, 0)
      const r2 = yield* send("POST", "/v2/models/echo/infer", Zlib.deflateSync(Buffer.alloc(10_000_000, 0x20)), { "content-encoding": "deflate" })
      assert.strictEqual(r2.status, 413)
    }).pipe(withFreshMetrics))

  it.effect("the deadline covers a compressed body's decoding: a request whose timeout it spends fails with 504 without running", () =>
    Effect.gen(function*() {
      const { send, stats } = yield* makeApp()
      // 20,000 numbers take far more than the 1 µs timeout to parse; the engine's clock
      // (TestClock) does not move, so only the decoding can spend it.
      const values = Array.from({ length: 20_000 }, (_, i) => (i % 1000) / 7)
      const slowToDecode = (timeoutUs: number) => Zlib.gzipSync(JSON.stringify(echoRequest(values, { parameters: { timeout: timeoutUs } })))
      const spent = yield* send("POST", "/v2/models/echo/infer", slowToDecode(1), { "content-encoding": "gzip" })
      assert.strictEqual(spent.status, 504)
      assert.include(spent.json.error, "deadline")
      assert.strictEqual(stats.started, 0)
      // The same body with time to spare runs.
      const fits = yield* send("POST", "/v2/models/echo/infer", slowToDecode(60_000_000), { "content-encoding": "gzip" })
      assert.strictEqual(fits.status, 200)
      assert.strictEqual(stats.started, 1)
    }).pipe(withFreshMetrics))
})

describe("Triton's model configuration extension", () => {
  it.effect("answers the configuration in Triton's JSON form, dims without the batch dim when the model batches", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp({ config: { maxQueuedRequests: 77 } })
      const batched = yield* send("GET", "/v2/models/batched/config")
      assert.strictEqual(batched.status, 200)
      assert.deepStrictEqual(batched.json, {
        name: "batched",
        platform: "onnxruntime_onnx",
        backend: "onnxruntime",
        version_policy: { all: {} },
        max_batch_size: 2,
        input: [{ name: "x", data_type: "TYPE_FP32", dims: [4] }],
        output: [{ name: "y", data_type: "TYPE_FP32", dims: [4] }],
        instance_group: [{ name: "batched", kind: "KIND_GPU", count: 2, gpus: [0] }],
        // config.json's warmup, as Triton's model_warmup
        model_warmup: [{ name: "pair", batch_size: 2, inputs: { x: { data_type: "TYPE_FP32", dims: [4], random_data: true } }, count: 3 }],
        response_cache: { enable: false },
        dynamic_batching: {
          preferred_batch_size: [2],
          max_queue_delay_microseconds: 5000,
          priority_levels: 4,
          default_priority_level: 3,
          default_queue_policy: { timeout_action: "REJECT", default_timeout_microseconds: batched.json.dynamic_batching.default_queue_policy.default_timeout_microseconds, allow_timeout_override: true, max_queue_size: 77 }
        }
      })
      const slow = yield* send("GET", "/v2/models/slow/versions/1/config")
      assert.strictEqual(slow.json.max_batch_size, 0)
      assert.deepStrictEqual(slow.json.instance_group, [{ name: "slow", kind: "KIND_CPU", count: 1 }], "a pool that does not say where it runs: the CPU")
      assert.deepStrictEqual(slow.json.input, [{ name: "x", data_type: "TYPE_FP32", dims: [-1, 4] }])
      assert.strictEqual(slow.json.dynamic_batching.default_priority_level, 2)
      assert.notProperty(slow.json, "model_warmup", "none without warmup")
      assert.strictEqual((yield* send("GET", "/v2/models/identity_string/config")).json.input[0].data_type, "TYPE_STRING")
      assert.strictEqual((yield* send("GET", "/v2/models/nope/config")).status, 404)
      assert.strictEqual((yield* send("GET", "/v2/models/echo/versions/9/config")).status, 404)
      assert.strictEqual((yield* send("GET", "/v2/models/broken/config")).status, 503)
    }).pipe(withFreshMetrics))
})

describe("Triton's statistics extension", () => {
  it.live("the response cache: a repeated request is a cache_hit in the statistics and on /metrics (Triton's names too), a new one a cache_miss; /config says response_cache", () =>
    Effect.gen(function*() {
      const { send, stats } = yield* makeApp({ config: { responseCacheBytes: 100_000 }, slowMetadata: { responseCache: true }, slowLatency: "1 millis", routes: { metricsFormat: "triton" } })
      for (const data of [[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8], [1, 2, 3, 4]]) {
        const r = yield* send("POST", "/v2/models/slow/infer", echoRequest(data))
        assert.strictEqual(r.status, 200)
        assert.deepStrictEqual(r.json.outputs[0].data, data)
      }
      assert.strictEqual(stats.started, 2, "two distinct requests ran; the repeats did not")
      const s = (yield* send("GET", "/v2/models/slow/stats")).json.model_stats[0]
      assert.deepStrictEqual([s.inference_stats.cache_hit.count, s.inference_stats.cache_miss.count, s.inference_stats.success.count, s.execution_count], [2, 2, 4, 2])
      assert.isAbove(s.inference_stats.cache_miss.ns, 0)
      const metrics = (yield* send("GET", "/metrics")).text
      assert.match(metrics, /inference_cache_hits_total\{model="slow",version="1"\} 2\b/)
      assert.match(metrics, /inference_cache_misses_total\{model="slow",version="1"\} 2\b/)
      // the cache as a whole: two answers kept (the two distinct requests), nothing evicted
      assert.match(metrics, /\ninference_cache_entries 2\n/)
      assert.match(metrics, /\ninference_cache_capacity_bytes 100000\n/)
      assert.match(metrics, /\ninference_cache_evictions_total 0\n/)
      const bytes = Number(/\ninference_cache_bytes (\d+)\n/.exec(metrics)?.[1])
      assert.isAbove(bytes, 0)
      // and Triton's names, only for the model that uses the cache
      assert.match(metrics, /\nnv_cache_num_hits_per_model\{model="slow",version="1"\} 2\n/)
      assert.match(metrics, /\nnv_cache_num_misses_per_model\{model="slow",version="1"\} 2\n/)
      assert.notMatch(metrics, /nv_cache_num_hits_per_model\{model="echo"/)
      assert.deepStrictEqual((yield* send("GET", "/v2/models/slow/config")).json.response_cache, { enable: true })
      assert.deepStrictEqual((yield* send("GET", "/v2/models/echo/config")).json.response_cache, { enable: false })
      // no hit or miss series for a model that does not use the cache
      assert.notMatch(metrics, /inference_cache_hits_total\{model="echo"/)
    }).pipe(withFreshMetrics))

  it.live("the response cache's evictions on /metrics count each answer dropped once, across scrapes", () =>
    Effect.gen(function*() {
      // room for one echo answer (4 floats: 656 bytes as counted), so each new one drops the last
      const { send } = yield* makeApp({ config: { responseCacheBytes: 1000 }, slowMetadata: { responseCache: true }, slowLatency: "1 millis" })
      const evictions = Effect.map(send("GET", "/metrics"), (r) => Number(/\ninference_cache_evictions_total (\d+)\n/.exec(r.text)?.[1]))
      for (const first of [1, 2, 3]) assert.strictEqual((yield* send("POST", "/v2/models/slow/infer", echoRequest([first, 2, 3, 4]))).status, 200)
      assert.strictEqual(yield* evictions, 2)
      assert.strictEqual(yield* evictions, 2, "a second scrape adds nothing")
      assert.strictEqual((yield* send("POST", "/v2/models/slow/infer", echoRequest([4, 2, 3, 4]))).status, 200)
      assert.strictEqual(yield* evictions, 3)
      assert.match((yield* send("GET", "/metrics")).text, /\ninference_cache_entries 1\n/)
    }).pipe(withFreshMetrics))

  it.live("the response cache over the router: a full queue does not refuse a repeated request before its body is read; a new one gets the 429", () =>
    Effect.gen(function*() {
      const { engine, gate, send, stats } = yield* makeApp({
        config: { responseCacheBytes: 100_000, maxConcurrentRequests: 1, maxQueuedRequests: 1 },
        slowMetadata: { responseCache: true, concurrency: 1 },
        slowLatency: "1 millis"
      })
      assert.strictEqual((yield* send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4]))).status, 200)
      yield* gate.close
      const running = yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([2, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => stats.started === 2)
      const queued = yield* Effect.forkChild(send("POST", "/v2/models/slow/infer", echoRequest([3, 2, 3, 4])), { startImmediately: true })
      yield* waitUntil(() => Effect.runSync(engine.pending) === 2)
      const runs = stats.started
      const hit = yield* send("POST", "/v2/models/slow/infer", echoRequest([1, 2, 3, 4]))
      assert.strictEqual(hit.status, 200)
      assert.deepStrictEqual(hit.json.outputs[0].data, [1, 2, 3, 4])
      assert.strictEqual((yield* send("POST", "/v2/models/slow/infer", echoRequest([4, 2, 3, 4]))).status, 429)
      assert.strictEqual(stats.started, runs)
      yield* gate.open
      for (const f of [running, queued]) assert.strictEqual((yield* Fiber.join(f)).status, 200)
    }).pipe(withFreshMetrics))

  it.effect("counts successes, failures, queue and compute per model version, from the same telemetry as /metrics", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const before = yield* send("GET", "/v2/models/echo/stats")
      assert.strictEqual(before.status, 200)
      assert.deepStrictEqual(before.json.model_stats.map((m: any) => [m.version, m.inference_count, m.last_inference]).sort(), [["1", 0, 0], ["2", 0, 0]], "every version of the model, as Triton answers")
      for (let i = 0; i < 2; i++) assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3, 4]))).status, 200)
      assert.strictEqual((yield* send("POST", "/v2/models/echo/infer", echoRequest([1, 2, 3]))).status, 400)
      const r = yield* send("GET", "/v2/models/echo/versions/2/stats")
      const s = r.json.model_stats[0]
      // Every field of the extension's $model_stat: response statistics and memory usage are not tracked (none).
      assert.deepStrictEqual(Object.keys(s).sort(), [
        "batch_stats", "execution_count", "inference_count", "inference_stats", "last_inference", "memory_usage", "name", "response_stats", "version"
      ])
      assert.deepStrictEqual([s.response_stats, s.memory_usage], [{}, []])
      assert.strictEqual(s.name, "echo")
      assert.strictEqual(s.version, "2")
      assert.strictEqual(s.inference_count, 2)
      assert.strictEqual(s.execution_count, 2)
      assert.isAbove(s.last_inference, 0)
      assert.strictEqual(s.inference_stats.success.count, 2)
      assert.strictEqual(s.inference_stats.fail.count, 1)
      assert.strictEqual(s.inference_stats.queue.count, 2)
      assert.strictEqual(s.inference_stats.compute_infer.count, 2)
      assert.deepStrictEqual(s.batch_stats.map((b: any) => [b.batch_size, b.compute_infer.count]), [[1, 2]])
      const metrics = (yield* send("GET", "/metrics")).text
      assert.match(metrics, /inference_count_total\{model="echo",version="2"\} 2\b/)
      assert.match(metrics, /inference_executions_total\{model="echo",version="2"\} 2\b/)
      const all = yield* send("GET", "/v2/models/stats")
      assert.strictEqual(all.status, 200)
      const names = (all.json.model_stats as Array<{ name: string; version: string }>).map((m) => `${m.name}/${m.version}`)
      assert.include(names, "echo/2")
      assert.include(names, "echo/1", "every version the server has")
      // per version: what ran on version 2 is not version 1's
      const v1 = (yield* send("GET", "/v2/models/echo/versions/1/stats")).json.model_stats[0]
      assert.deepStrictEqual([v1.version, v1.inference_count, v1.inference_stats.success.count, v1.inference_stats.fail.count], ["1", 0, 0, 0])
      assert.strictEqual((yield* send("POST", "/v2/models/echo/versions/1/infer", echoRequest([1, 2, 3, 4]))).status, 200)
      const [one, two] = [
        (yield* send("GET", "/v2/models/echo/versions/1/stats")).json.model_stats[0],
        (yield* send("GET", "/v2/models/echo/versions/2/stats")).json.model_stats[0]
      ]
      assert.deepStrictEqual([one.inference_count, one.inference_stats.success.count, one.inference_stats.queue.count], [1, 1, 1])
      assert.deepStrictEqual([two.inference_count, two.inference_stats.success.count, two.inference_stats.fail.count], [2, 2, 1], "the body that did not fit version 2 counts under it")
      // a body that does not fit version 1 counts under version 1, not the default
      assert.strictEqual((yield* send("POST", "/v2/models/echo/versions/1/infer", echoRequest([1, 2, 3]))).status, 400)
      const oneAfter = (yield* send("GET", "/v2/models/echo/versions/1/stats")).json.model_stats[0]
      const twoAfter = (yield* send("GET", "/v2/models/echo/versions/2/stats")).json.model_stats[0]
      assert.deepStrictEqual([oneAfter.inference_stats.fail.count, twoAfter.inference_stats.fail.count], [1, 1])
      assert.deepStrictEqual((yield* send("GET", "/v2/models/echo/versions/01/stats")).json.model_stats[0].version, "1", "versions compare as numbers, as every other route finds them")
      assert.strictEqual((yield* send("GET", "/v2/models/echo/versions/3/stats")).status, 404)
      assert.strictEqual((yield* send("GET", "/v2/models/nope/stats")).status, 404)
    }).pipe(withFreshMetrics))

  it.effect("batch_stats counts runs per batch size: two one-row requests batched into one run of 2", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      const a = yield* Effect.forkChild(send("POST", "/v2/models/batched/infer", echoRequest([1, 2, 3, 4])), { startImmediately: true })
      const b = yield* Effect.forkChild(send("POST", "/v2/models/batched/infer", echoRequest([5, 6, 7, 8])), { startImmediately: true })
      yield* TestClock.adjust("10 millis")
      assert.strictEqual((yield* Fiber.join(a)).status, 200)
      assert.strictEqual((yield* Fiber.join(b)).status, 200)
      const s = (yield* send("GET", "/v2/models/batched/stats")).json.model_stats[0]
      assert.strictEqual(s.inference_count, 2)
      assert.strictEqual(s.execution_count, 1)
      assert.deepStrictEqual(s.batch_stats.map((x: any) => [x.batch_size, x.compute_infer.count]), [[2, 1]])
    }).pipe(withFreshMetrics))

  it.effect("counts inferences in rows, as Triton: one request of 2 rows is 2 inferences and a run of batch size 2", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp()
      assert.strictEqual((yield* send("POST", "/v2/models/batched/infer", echoRequest([1, 2, 3, 4, 5, 6, 7, 8]))).status, 200)
      const s = (yield* send("GET", "/v2/models/batched/stats")).json.model_stats[0]
      assert.strictEqual(s.inference_count, 2)
      assert.strictEqual(s.execution_count, 1)
      assert.deepStrictEqual(s.batch_stats.map((x: any) => [x.batch_size, x.compute_infer.count]), [[2, 1]])
      assert.match((yield* send("GET", "/metrics")).text, /inference_count_total\{model="batched",version="1"\} 2\b/)
    }).pipe(withFreshMetrics))
})

describe("Routes: model loads on /metrics", () => {
  it.effect("reports the pool's model loads by outcome from the first scrape, counting on as they grow (a counter, not a sum of scrapes)", () =>
    Effect.gen(function*() {
      const modelLoads = { succeeded: 0, failed: 0 }
      const { send } = yield* makeApp({ modelLoads })
      const first = (yield* send("GET", "/metrics")).text
      assert.include(first, `inference_model_loads_total{outcome="success"} 0`)
      assert.include(first, `inference_model_loads_total{outcome="failure"} 0`)
      modelLoads.succeeded = 2
      modelLoads.failed = 1
      const second = (yield* send("GET", "/metrics")).text
      assert.include(second, `inference_model_loads_total{outcome="success"} 2\n`)
      assert.include(second, `inference_model_loads_total{outcome="failure"} 1\n`)
      modelLoads.succeeded = 3
      const third = (yield* send("GET", "/metrics")).text
      assert.include(third, `inference_model_loads_total{outcome="success"} 3\n`)
      assert.include(third, `inference_model_loads_total{outcome="failure"} 1\n`)
    }).pipe(withFreshMetrics))
})

describe("shutdown with sequences under way (Triton's rule)", () => {
  const counterBody = (sequence?: Record<string, unknown>) => ({
    ...(sequence === undefined ? {} : { parameters: sequence }),
    inputs: [{ name: "x", shape: [1, 1], datatype: "FP32", data: [1] }]
  })

  it.live("new work for a model with sequences under way is refused 503 even while its queue is full (not 429), and a sequence's next request is let through", () =>
    withFreshMetrics(Effect.gen(function*() {
      // runs long enough for three requests to arrive behind the first, however loaded the machine
      const counter = makeCounterPool({ latencyMs: 300 })
      const { send, lifecycle, engine } = yield* makeApp({ modelPool: Layer.succeed(ModelPool, counter.pool), config: { maxConcurrentRequests: 1, maxQueuedRequests: 2 } })
      const started = yield* send("POST", "/v2/models/counter/infer", counterBody({ sequence_id: 1, sequence_start: true }))
      assert.strictEqual(started.status, 200, started.text)
      // one running and two waiting behind it: the queue's bound (2) is reached
      const fibers = []
      for (let n = 1; n <= 3; n++) {
        fibers.push(yield* Effect.forkChild(send("POST", "/v2/models/counter/infer", counterBody({ sequence_id: 1 })), { startImmediately: true }))
        for (let i = 0; i < 200 && (yield* engine.pending) < n; i++) yield* Effect.sleep("1 millis")
      }
      assert.strictEqual(yield* engine.pending, 3)
      assert.strictEqual((yield* send("POST", "/v2/models/counter/infer", counterBody())).status, 429, "before the shutdown: the queue is full")
      yield* lifecycle.beginShutdown
      for (const body of [counterBody(), counterBody({ sequence_id: 2, sequence_start: true })]) {
        const refused = yield* send("POST", "/v2/models/counter/infer", body)
        assert.strictEqual(refused.status, 503, refused.text)
        assert.include((refused.json as { error: string }).error, "shutting down")
      }
      for (const fiber of fibers) assert.strictEqual((yield* Fiber.join(fiber)).status, 200)
      // a sequence's client whose body does not decode keeps its connection: its sequence goes on
      const undecodable = yield* send("POST", "/v2/models/counter/infer", { parameters: { sequence_id: 1 }, inputs: [{ name: "x", shape: [1, 1], datatype: "FP32", data: [1, 2] }] })
      assert.strictEqual(undecodable.status, 400, undecodable.text)
      assert.isNull(undecodable.headers.get("connection"))
      const notJson = yield* send("POST", "/v2/models/counter/infer", "{")
      assert.strictEqual(notJson.status, 400, notJson.text)
      assert.isNull(notJson.headers.get("connection"))
      const next = yield* send("POST", "/v2/models/counter/infer", counterBody({ sequence_id: 1, sequence_end: true }))
      assert.strictEqual(next.status, 200, next.text)
      assert.strictEqual(next.headers.get("connection"), "close", "its end closes the connection")
    })))
})
