/**
 * Explicit model control (Triton's `--model-control-mode explicit`) over the real routes and a
 * real OnnxModelPool on a temporary repository: nothing serves until loaded, load picks up a
 * directory added after start and a changed config.json, unload lets admitted requests finish
 * and then releases the sessions; the repository index shows state and reason throughout.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Fiber, Latch, Layer, Logger } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { AsyncConfigService } from "../../src/AsyncConfig.ts"
import { AsyncInferenceEngine, DispatchGate } from "../../src/Engine.ts"
import { Lifecycle } from "../../src/http/Lifecycle.ts"
import * as Routes from "../../src/http/Routes.ts"
import { Statistics } from "../../src/http/Statistics.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import { TelemetryCollector } from "../../src/Telemetry.ts"
import { mlpBytes, tempRepository, writeTree } from "../fixtures/ModelRepositoryFixture.ts"
import { scaleBytes } from "../fixtures/OnnxGraph.ts"
import { routeOptions, withFreshMetrics } from "./TestApp.ts"

const mlpRequest = (rows = 1) => ({ inputs: [{ name: "input", shape: [rows, 784], datatype: "FP32", data: new Array(rows * 784).fill(0.5) }] })

const makeApp = (repository: string, loadModels: ReadonlyArray<string>, gate: Effect.Effect<void> = Effect.void, strictReadiness = false) =>
  Effect.gen(function*() {
    const services = yield* Layer.build(
      AsyncInferenceEngine.layer.pipe(
        Layer.provideMerge(Statistics.layer),
        Layer.provideMerge(Layer.mergeAll(
          OnnxModelPool.layer({ repository, modelControl: "explicit", loadModels, closeTimeout: "5 seconds" }),
          TelemetryCollector.layer,
          AsyncConfigService.layerWith({ maxConcurrentRequests: 1 }),
          Lifecycle.layer
        ))
      )
    ).pipe(Effect.provideService(DispatchGate, gate))
    const app = yield* HttpRouter.toHttpEffect(
      Routes.layer(routeOptions(64 * 1024 * 1024, { strictReadiness })).pipe(Layer.provide(Layer.succeedContext(services)))
    ).pipe(Effect.provideService(HttpRouter.RouterConfig, Routes.routerConfig))
    const raw = (request: Request) =>
      Effect.gen(function*() {
        const response = yield* app.pipe(
          Effect.provideService(HttpServerRequest.HttpServerRequest, HttpServerRequest.fromWeb(request)),
          Effect.scoped,
          Effect.catchCause((cause) => Effect.die(cause))
        )
        const web = HttpServerResponse.toWeb(response)
        const text = yield* Effect.promise(() => web.text())
        return { status: web.status, text, json: (web.headers.get("content-type") ?? "").includes("json") ? JSON.parse(text) as any : undefined }
      })
    const send = (method: string, path: string, body?: unknown, rawBody?: string) => {
      const init: RequestInit = { method }
      if (body !== undefined) init.body = JSON.stringify(body)
      if (rawBody !== undefined) init.body = rawBody
      return raw(new Request(`http://localhost${path}`, init))
    }
    return Object.assign(send, { raw, engine: Context.get(services, AsyncInferenceEngine), lifecycle: Context.get(services, Lifecycle) })
  })

const stateOf = (index: ReadonlyArray<{ name: string; version: string; state: string; reason?: string }>, name: string) => index.find((m) => m.name === name)

describe("explicit model control", () => {
  it.live("serves nothing until loaded; load, infer, unload, and /v2 advertises model_repository", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, [])
      assert.include((yield* send("GET", "/v2")).json.extensions, "model_repository")
      let index = (yield* send("POST", "/v2/repository/index")).json
      assert.deepStrictEqual(stateOf(index, "mlp"), { name: "mlp", version: "1", state: "UNAVAILABLE", reason: "unloaded" })
      // Not loaded: a 404, as Triton's "has no available versions" (only a load changes it; no retry helps).
      assert.strictEqual((yield* send("POST", "/v2/models/mlp/infer", mlpRequest())).status, 404)
      // ... counted as an unknown model's is (invalid, not a backend failure), and not ready (as gRPC's ModelReady).
      assert.include((yield* send("GET", "/metrics")).text, `inference_requests_total{model="mlp",version="",outcome="invalid"} 1\n`)
      const notReady = yield* send("GET", "/v2/models/mlp/ready")
      assert.strictEqual(notReady.status, 503)
      assert.deepInclude(notReady.json, { name: "mlp", ready: false })
      assert.include(notReady.json.error, "unloaded")
      const load = yield* send("POST", "/v2/repository/models/mlp/load")
      assert.strictEqual(load.status, 200, JSON.stringify(load.json))
      index = (yield* send("POST", "/v2/repository/index")).json
      assert.strictEqual(stateOf(index, "mlp")?.state, "READY")
      assert.strictEqual((yield* send("POST", "/v2/models/mlp/infer", mlpRequest())).status, 200)
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/unload")).status, 200)
      index = (yield* send("POST", "/v2/repository/index")).json
      assert.deepStrictEqual(stateOf(index, "mlp"), { name: "mlp", version: "1", state: "UNAVAILABLE", reason: "unloaded" })
      const after = yield* send("POST", "/v2/models/mlp/infer", mlpRequest())
      assert.strictEqual(after.status, 404)
      assert.include(after.json.error, "unloaded")
      assert.strictEqual((yield* send("POST", "/v2/repository/models/nope/load")).status, 404)
      assert.strictEqual((yield* send("POST", "/v2/repository/models/nope/unload")).status, 404)
    }).pipe(withFreshMetrics), 60_000)

  it.live("--load-model '*' (Triton's wildcard) loads every model at start, and load and unload work as for named ones", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "other/1/model.onnx": mlpBytes(), "other/2/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, ["*"])
      const states = () => Effect.map(send("POST", "/v2/repository/index"), (r) => (r.json as Array<{ name: string; version: string; state: string }>).map((m) => `${m.name}@${m.version} ${m.state}`))
      assert.deepStrictEqual(yield* states(), ["mlp@1 READY", "other@1 READY", "other@2 READY"])
      assert.strictEqual((yield* send("POST", "/v2/models/other/infer", mlpRequest())).status, 200)
      assert.strictEqual((yield* send("POST", "/v2/repository/models/other/unload")).status, 200)
      assert.deepStrictEqual(yield* states(), ["mlp@1 READY", "other@1 UNAVAILABLE", "other@2 UNAVAILABLE"])
      assert.strictEqual((yield* send("POST", "/v2/repository/models/other/load")).status, 200)
      assert.deepStrictEqual(yield* states(), ["mlp@1 READY", "other@1 READY", "other@2 READY"])
    }).pipe(withFreshMetrics), 60_000)

  it.live("--load-model models serve from the start; load picks up a directory added after start and a changed config.json", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, ["mlp"])
      assert.strictEqual((yield* send("POST", "/v2/models/mlp/infer", mlpRequest())).status, 200)
      assert.strictEqual((yield* send("GET", "/v2/models/mlp/config")).json.max_batch_size, 64)
      // A new model directory, and a changed configuration of the served one.
      writeTree(repository, {
        "added/model.onnx": mlpBytes(),
        "mlp/config.json": JSON.stringify({ batching: { enabled: true, maxBatchSize: 8 } })
      })
      assert.strictEqual((yield* send("POST", "/v2/models/added/infer", mlpRequest())).status, 404)
      // Listed as soon as it is on disk, unloaded until it is loaded.
      assert.deepStrictEqual(stateOf((yield* send("POST", "/v2/repository/index")).json, "added"), { name: "added", version: "1", state: "UNAVAILABLE", reason: "unloaded" })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/added/load")).status, 200)
      assert.strictEqual((yield* send("POST", "/v2/models/added/infer", mlpRequest())).status, 200)
      assert.strictEqual(stateOf((yield* send("POST", "/v2/repository/index")).json, "added")?.state, "READY")
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/load")).status, 200)
      assert.strictEqual((yield* send("GET", "/v2/models/mlp/config")).json.max_batch_size, 8)
      const tooMany = yield* send("POST", "/v2/models/mlp/infer", mlpRequest(9))
      assert.strictEqual(tooMany.status, 400)
      assert.include(tooMany.json.error, "batch-size must be <= 8")
      // As Triton's reload: one that fails (a broken config.json, then a broken model.onnx) answers
      // 503 with the reason, and the model keeps serving as it was loaded.
      for (const files of [{ "mlp/config.json": "{ not json" }, { "mlp/config.json": "{}", "mlp/model.onnx": "not a model" }]) {
        writeTree(repository, files)
        const broken = yield* send("POST", "/v2/repository/models/mlp/load")
        assert.strictEqual(broken.status, 503)
        assert.match(broken.json.error, /the reload failed \(version 1: .+\); the version loaded before keeps serving/)
        assert.notInclude(broken.json.error, repository)
        assert.strictEqual(stateOf((yield* send("POST", "/v2/repository/index")).json, "mlp")?.state, "READY")
        assert.strictEqual((yield* send("GET", "/v2/models/mlp/config")).json.max_batch_size, 8, "the configuration loaded before")
        assert.strictEqual((yield* send("POST", "/v2/models/mlp/infer", mlpRequest(8))).status, 200)
        assert.strictEqual((yield* send("GET", "/v2/health/ready")).status, 200)
      }
      // Fixed, the next load takes.
      writeTree(repository, { "mlp/model.onnx": mlpBytes(), "mlp/config.json": JSON.stringify({ batching: { enabled: true, maxBatchSize: 4 } }) })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/load")).status, 200)
      assert.strictEqual((yield* send("GET", "/v2/models/mlp/config")).json.max_batch_size, 4)
      // Every load after the start counted by model and outcome (the --load-model one at start is not):
      // added once; mlp twice served, twice failed.
      const page = (yield* send("GET", "/metrics")).text
      assert.include(page, `inference_model_loads_total{model="mlp",outcome="success"} 2\n`)
      assert.include(page, `inference_model_loads_total{model="mlp",outcome="failure"} 2\n`)
      assert.include(page, `inference_model_loads_total{model="added",outcome="success"} 1\n`)
      assert.include(page, `inference_model_loads_total{model="added",outcome="failure"} 0\n`)
      void Path
    }).pipe(withFreshMetrics), 60_000)

  it.live("a reload applies a changed versionPolicy: the versions it leaves out stop serving, the model configuration reports it", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/1/model.onnx": mlpBytes(), "mlp/2/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, ["mlp"])
      const versions = (index: any) => (index as Array<{ name: string; version: string; state: string }>).filter((m) => m.name === "mlp").map((m) => `${m.version} ${m.state}`)
      assert.deepStrictEqual(versions((yield* send("POST", "/v2/repository/index")).json), ["1 READY", "2 READY"])
      assert.deepStrictEqual((yield* send("GET", "/v2/models/mlp/config")).json.version_policy, { all: {} })
      writeTree(repository, { "mlp/config.json": JSON.stringify({ versionPolicy: { latest: { numVersions: 1 } } }) })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/load")).status, 200)
      assert.deepStrictEqual(versions((yield* send("POST", "/v2/repository/index")).json), ["2 READY"])
      assert.deepStrictEqual((yield* send("GET", "/v2/models/mlp/config")).json.version_policy, { latest: { num_versions: 1 } })
      assert.strictEqual((yield* send("POST", "/v2/models/mlp/versions/2/infer", mlpRequest())).status, 200)
      const leftOut = yield* send("POST", "/v2/models/mlp/versions/1/infer", mlpRequest())
      assert.strictEqual(leftOut.status, 404, "a version the policy leaves out is not a version of the model")
      assert.include(leftOut.json.error, `version "1"`)
      assert.deepStrictEqual((yield* send("GET", "/v2/models/mlp")).json.versions, ["2"])
      assert.strictEqual((yield* send("GET", "/v2/health/ready")).status, 200, "a version left out does not make the server unready")
      // Back to an older version only; a policy that names no version on disk fails the load and keeps what serves.
      writeTree(repository, { "mlp/config.json": JSON.stringify({ versionPolicy: { specific: { versions: [1] } } }) })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/load")).status, 200)
      assert.deepStrictEqual(versions((yield* send("POST", "/v2/repository/index")).json), ["1 READY"])
      assert.deepStrictEqual((yield* send("GET", "/v2/models/mlp/config")).json.version_policy, { specific: { versions: [1] } })
      writeTree(repository, { "mlp/config.json": JSON.stringify({ versionPolicy: { specific: { versions: [7] } } }) })
      const none = yield* send("POST", "/v2/repository/models/mlp/load")
      assert.strictEqual(none.status, 503)
      assert.include(none.json.error, "no version that versionPolicy (specific 7) names is in the repository (it has version directories 1, 2)")
      assert.strictEqual((yield* send("POST", "/v2/models/mlp/versions/1/infer", mlpRequest())).status, 200, "the version loaded before keeps serving")
    }).pipe(withFreshMetrics), 60_000)

  it.live("the versions a versionPolicy leaves out are logged at start and after a load that took, not after one that failed (what served, left-out versions included, still serves)", () => {
    const infos: Array<string> = []
    const capture = Logger.make((options) => {
      if (options.logLevel === "Info") infos.push(String(Array.isArray(options.message) ? options.message.join(" ") : options.message))
    })
    return Effect.gen(function*() {
      const repository = yield* tempRepository({
        "mlp/1/model.onnx": mlpBytes(),
        "mlp/2/model.onnx": mlpBytes(),
        "mlp/config.json": JSON.stringify({ versionPolicy: { latest: { numVersions: 1 } } })
      })
      const send = yield* makeApp(repository, ["mlp"])
      const leftOut = (versions: string) => infos.filter((l) => l === `model mlp: versionPolicy latest 1 leaves out version(s) ${versions}; they are not loaded`).length
      assert.strictEqual(leftOut("1"), 1, JSON.stringify(infos))
      writeTree(repository, { "mlp/3/model.onnx": "not a model" })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/load")).status, 503)
      assert.strictEqual(leftOut("1, 2"), 0, "version 2 still serves")
      writeTree(repository, { "mlp/3/model.onnx": mlpBytes() })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/load")).status, 200)
      assert.strictEqual(leftOut("1, 2"), 1)
    }).pipe(Effect.provide(Logger.layer([capture], { mergeWithExisting: true })), withFreshMetrics)
  }, 60_000)

  it.live("the index drops a model never loaded whose directory has gone (its load is a 404); a load names its ignored directories in a warning, as the start does", () => {
    const warnings: Array<string> = []
    const capture = Logger.make((options) => {
      if (options.logLevel === "Warn") warnings.push(String(Array.isArray(options.message) ? options.message.join(" ") : options.message))
    })
    return Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "gone/model.onnx": mlpBytes(), "thr/1/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, ["mlp"])
      const index = () => Effect.map(send("POST", "/v2/repository/index"), (r) => (r.json as ReadonlyArray<{ name: string }>).map((m) => m.name))
      assert.deepStrictEqual(yield* index(), ["gone", "mlp", "thr"])
      Fs.rmSync(Path.join(repository, "gone"), { recursive: true })
      // A directory that is not a version (digits only), added beside a version: ignored, and said so at the load.
      writeTree(repository, { "thr/2a/model.onnx": mlpBytes() })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/thr/load")).status, 200)
      assert.isTrue(warnings.some((w) => w.includes(`ignoring "thr/2a": not a version directory`)), JSON.stringify(warnings))
      // A version a specific versionPolicy names that has no directory: skipped, with a warning.
      writeTree(repository, { "thr/config.json": JSON.stringify({ versionPolicy: { specific: { versions: [1, 4] } } }) })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/thr/load")).status, 200)
      assert.isTrue(warnings.some((w) => w === "model thr: versionPolicy specific 1, 4 names version 4, but no version directory 4/ is present"), JSON.stringify(warnings))
      // The load rescanned: "gone" is no longer listed, and cannot be loaded.
      assert.deepStrictEqual(yield* index(), ["mlp", "thr"])
      assert.strictEqual((yield* send("POST", "/v2/repository/models/gone/load")).status, 404)
    }).pipe(Effect.provide(Logger.layer([capture], { mergeWithExisting: true })), withFreshMetrics)
  }, 60_000)

  it.live("the index lists a model none of whose versions is loaded as it is on disk now: a version removed or added since is too", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/1/model.onnx": mlpBytes(), "mlp/2/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, ["mlp"])
      const versions = () =>
        Effect.map(send("POST", "/v2/repository/index"), (r) =>
          (r.json as ReadonlyArray<{ name: string; version: string; state: string }>).map((m) => `${m.name}@${m.version}:${m.state}`))
      assert.deepStrictEqual(yield* versions(), ["mlp@1:READY", "mlp@2:READY"])
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/unload")).status, 200)
      Fs.rmSync(Path.join(repository, "mlp", "2"), { recursive: true })
      writeTree(repository, { "mlp/3/model.onnx": mlpBytes() })
      // The index rescans at most once a second.
      yield* Effect.sleep("1100 millis")
      assert.deepStrictEqual(yield* versions(), ["mlp@1:UNAVAILABLE", "mlp@3:UNAVAILABLE"])
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/load")).status, 200)
      assert.deepStrictEqual(yield* versions(), ["mlp@1:READY", "mlp@3:READY"])
    }).pipe(withFreshMetrics), 60_000)

  it.live("a load is all or nothing, as Triton's: one broken version fails it, a served version is never dropped, and nothing new serves", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/1/model.onnx": mlpBytes(), "mlp/2/model.onnx": mlpBytes(), "other/1/model.onnx": mlpBytes(), "other/2/model.onnx": "not a model" })
      const send = yield* makeApp(repository, ["mlp"], Effect.void, true)
      const versions = (name: string) =>
        Effect.map(send("POST", "/v2/repository/index"), (r) =>
          (r.json as ReadonlyArray<{ name: string; version: string; state: string }>).filter((m) => m.name === name).map((m) => `${m.version}:${m.state}`))
      // Version 2 removed from disk, and a broken version 3 added: the reload fails, and both versions loaded before keep serving.
      Fs.rmSync(Path.join(repository, "mlp", "2"), { recursive: true })
      writeTree(repository, { "mlp/3/model.onnx": "not a model" })
      const reload = yield* send("POST", "/v2/repository/models/mlp/load")
      assert.strictEqual(reload.status, 503, JSON.stringify(reload.json))
      assert.match(reload.json.error, /the reload failed \(version 3: .+\); the versions loaded before keep serving/)
      assert.deepStrictEqual(yield* versions("mlp"), ["1:READY", "2:READY"])
      assert.strictEqual((yield* send("POST", "/v2/models/mlp/versions/2/infer", mlpRequest())).status, 200)
      assert.strictEqual((yield* send("POST", "/v2/models/mlp/infer", mlpRequest())).json.model_version, "2")
      assert.strictEqual((yield* send("GET", "/v2/health/ready")).status, 200, "still ready: nothing that served changed")
      // A first load with one broken version: it fails, and the version that loaded does not serve either.
      const first = yield* send("POST", "/v2/repository/models/other/load")
      assert.strictEqual(first.status, 503, JSON.stringify(first.json))
      assert.match(first.json.error, /^.*version 2: .+/)
      assert.deepStrictEqual(yield* versions("other"), ["1:UNAVAILABLE", "2:UNAVAILABLE"])
      const index = (yield* send("POST", "/v2/repository/index")).json as ReadonlyArray<{ name: string; version: string; reason?: string }>
      assert.match(index.find((m) => m.name === "other" && m.version === "1")?.reason ?? "", /not loaded: the load failed \(version 2: .+\), and a load is all or nothing/)
      assert.strictEqual((yield* send("POST", "/v2/models/other/versions/1/infer", mlpRequest())).status, 503)
      // Fixed, the next load takes both.
      writeTree(repository, { "other/2/model.onnx": mlpBytes(), "mlp/3/model.onnx": mlpBytes() })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/other/load")).status, 200)
      assert.deepStrictEqual(yield* versions("other"), ["1:READY", "2:READY"])
      assert.strictEqual((yield* send("POST", "/v2/repository/models/mlp/load")).status, 200)
      assert.deepStrictEqual(yield* versions("mlp"), ["1:READY", "3:READY"])
    }).pipe(withFreshMetrics), 60_000)

  it.live("a load once the server is shutting down is refused with 503 and loads nothing", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, [])
      yield* send.lifecycle.beginShutdown
      const load = yield* send("POST", "/v2/repository/models/mlp/load")
      assert.strictEqual(load.status, 503, JSON.stringify(load.json))
      assert.include(load.json.error, "shutting down")
      const index = (yield* send("POST", "/v2/repository/index")).json
      assert.deepStrictEqual(stateOf(index, "mlp"), { name: "mlp", version: "1", state: "UNAVAILABLE", reason: "unloaded" })
    }).pipe(withFreshMetrics), 60_000)

  it.live("a load that waits for its turn (behind another load of the model) when the shutdown begins is refused with 503 and starts nothing", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, [])
      const first = yield* Effect.forkChild(send("POST", "/v2/repository/models/mlp/load"), { startImmediately: true })
      const second = yield* Effect.forkChild(send("POST", "/v2/repository/models/mlp/load"), { startImmediately: true })
      yield* Effect.yieldNow
      yield* send.lifecycle.beginShutdown
      assert.strictEqual((yield* Fiber.join(first)).status, 200, "the load under way when the shutdown began ends")
      const refused = yield* Fiber.join(second)
      assert.strictEqual(refused.status, 503, JSON.stringify(refused.json))
      assert.include(refused.json.error, "shutting down")
    }).pipe(withFreshMetrics), 60_000)

  it.live("a load body: empty or {parameters} only; config and file: overrides and malformed bodies are refused with 400, not ignored", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, [])
      const raw = (action: string, text: string) => send("POST", `/v2/repository/models/mlp/${action}`, undefined, text)
      const cases: ReadonlyArray<readonly [string, string, RegExp]> = [
        ["load", JSON.stringify({ parameters: { config: JSON.stringify({ name: "mlp", backend: "onnxruntime" }) } }), /^load parameter "config" overrides are not supported: a model loads only as its repository directory holds it/],
        ["load", JSON.stringify({ parameters: { config: "{}", "file:1/model.onnx": "AAAA" } }), /^load parameter "config" overrides are not supported/],
        ["load", JSON.stringify({ parameters: { "file:1/model.onnx": "AAAA" } }), /^load parameter "file:1\/model.onnx" overrides are not supported/],
        ["load", JSON.stringify({ parameters: { color: "blue" } }), /^load parameter "color" is not a load parameter this server knows/],
        ["unload", JSON.stringify({ parameters: { force: true } }), /^unload parameter "force" is not an unload parameter/],
        ["unload", JSON.stringify({ parameters: { unload_dependents: "yes" } }), /^unload parameter "unload_dependents" must be a boolean, got "yes"/],
        ["load", "{{{", /^the request body is not valid JSON/],
        ["load", "[".repeat(20_000) + "]".repeat(20_000), /^the request body nests arrays or objects more than 64 levels deep/],
        ["load", "[]", /^invalid repository load or unload request/],
        ["load", JSON.stringify({ parameters: "config" }), /^invalid repository load or unload request/],
        ["load", JSON.stringify({ paramters: { config: "{}" } }), /^invalid repository load or unload request/]
      ]
      for (const [action, text, error] of cases) {
        const r = yield* raw(action, text)
        assert.strictEqual(r.status, 400, text)
        assert.match(r.json.error, error, text)
      }
      assert.strictEqual(stateOf((yield* send("POST", "/v2/repository/index")).json, "mlp")?.state, "UNAVAILABLE", "nothing was loaded")
      assert.strictEqual((yield* raw("load", "")).status, 200)
      assert.strictEqual((yield* raw("load", JSON.stringify({ parameters: {} }))).status, 200)
      assert.strictEqual((yield* raw("unload", JSON.stringify({ parameters: { unload_dependents: true } }))).status, 200)
    }).pipe(withFreshMetrics), 60_000)

  it.live("strict readiness counts only the models that should be up: never loaded or unloaded ones do not hold it back", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes(), "other/model.onnx": mlpBytes() })
      const send = yield* makeApp(repository, ["mlp"], Effect.void, true)
      const ready = () => Effect.map(send("GET", "/v2/health/ready"), (r) => `${r.status} ${JSON.stringify(r.json)}`)
      assert.strictEqual(yield* ready(), `200 {"ready":true}`, "other was never loaded")
      assert.strictEqual((yield* send("POST", "/v2/repository/models/other/load")).status, 200)
      assert.strictEqual(yield* ready(), `200 {"ready":true}`)
      assert.strictEqual((yield* send("POST", "/v2/repository/models/other/unload")).status, 200)
      assert.strictEqual(yield* ready(), `200 {"ready":true}`, "other was unloaded")
      // A model that fails to load is one that should be up.
      writeTree(repository, { "other/config.json": "{ not json" })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/other/load")).status, 503)
      assert.strictEqual(yield* ready(), `503 {"ready":false,"error":"1 of 2 model versions unavailable: other@1"}`)
    }).pipe(withFreshMetrics), 60_000)

  it.live("unload lets the requests already admitted finish, and refuses new ones at once", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      // Dispatch is held until every request is admitted, so that the queue is deep when the unload begins.
      const gate = yield* Latch.make(false)
      const send = yield* makeApp(repository, ["mlp"], gate.await)
      const inflight = yield* Effect.forEach(
        Array.from({ length: 40 }, () => send("POST", "/v2/models/mlp/infer", mlpRequest(16))),
        (r) => Effect.forkChild(r, { startImmediately: true })
      )
      for (let i = 0; (yield* send.engine.queueStats).total < 40; i++) {
        assert.isBelow(i, 10_000, "the 40 requests were admitted")
        yield* Effect.sleep("1 millis")
      }
      const queuedAtUnload = (yield* send.engine.queueStats).total
      yield* gate.open
      const unload = yield* send("POST", "/v2/repository/models/mlp/unload")
      assert.strictEqual(unload.status, 200)
      const answers = yield* Effect.forEach(inflight, (f) => Effect.map(Fiber.await(f), (exit) => (exit._tag === "Success" ? exit.value : { status: -1, json: {} })))
      const ok = answers.filter((a) => a.status === 200).length
      assert.isAtLeast(ok, queuedAtUnload, "every request queued when the unload began finished")
      for (const a of answers.filter((a) => a.status !== 200)) {
        assert.strictEqual(a.status, 503)
        assert.include(a.json.error, "unloading", "only requests that arrived after the unload began are refused")
      }
      // Unloaded now: not found, as Triton's.
      assert.strictEqual((yield* send("POST", "/v2/models/mlp/infer", mlpRequest())).status, 404)
    }).pipe(withFreshMetrics), 60_000)
})

describe("a load while requests wait in the queue", () => {
  const scaleRequest = (width = 4) => ({ inputs: [{ name: "x", shape: [1, width], datatype: "FP32", data: Array.from({ length: width }, (_, i) => i + 1) }] })

  /**
   * `m` version 1 (y = 2x) loaded, one request queued (dispatch held) at `path`, then `change`
   * applied to the repository and `m` loaded again before dispatch: the queued request's answer.
   */
  const queuedThroughLoad = (path: string, change: (repository: string) => void) =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "m/1/model.onnx": scaleBytes(2) })
      const gate = yield* Latch.make(false)
      const send = yield* makeApp(repository, ["m"], gate.await)
      const queued = yield* Effect.forkChild(send("POST", path, scaleRequest()), { startImmediately: true })
      for (let i = 0; (yield* send.engine.queueStats).total < 1; i++) {
        assert.isBelow(i, 10_000, "the request was admitted")
        yield* Effect.sleep("1 millis")
      }
      change(repository)
      const load = yield* send("POST", "/v2/repository/models/m/load")
      assert.strictEqual(load.status, 200, JSON.stringify(load.json))
      yield* gate.open
      return { answer: yield* Fiber.join(queued), send }
    })

  it.live("a request that named no version runs on the version it was admitted to and says so, though a new highest version came meanwhile", () =>
    Effect.gen(function*() {
      const changes: ReadonlyArray<readonly [string, Uint8Array]> = [
        ["the same signature", scaleBytes(3)],
        ["another output name", scaleBytes(3, { output: "z" })],
        ["wider inputs", scaleBytes(3, { width: 8 })]
      ]
      for (const [what, bytes] of changes) {
        const { answer, send } = yield* queuedThroughLoad("/v2/models/m/infer", (repository) => writeTree(repository, { "m/2/model.onnx": bytes }))
        assert.strictEqual(answer.status, 200, `${what}: ${JSON.stringify(answer.json)}`)
        assert.strictEqual(answer.json.model_version, "1", what)
        assert.deepStrictEqual(answer.json.outputs[0].data, [2, 4, 6, 8], `${what}: version 1's output (2x), not version 2's`)
        // and a request that arrives now goes to the new highest version
        if (what === "the same signature") assert.deepStrictEqual((yield* send("POST", "/v2/models/m/infer", scaleRequest())).json.outputs[0].data, [3, 6, 9, 12])
      }
    }).pipe(withFreshMetrics), 60_000)

  it.live("a request that named no version, whose body still arrives when a load removes the highest version, runs on the one left and names it", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "m/1/model.onnx": scaleBytes(2), "m/2/model.onnx": scaleBytes(3) })
      const send = yield* makeApp(repository, ["m"])
      // a chunked body (no content-length), sent in two parts: the route looks the model up (version 2), then reads the body
      let finish!: () => void
      const body = JSON.stringify(scaleRequest())
      const stream = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode(body.slice(0, 10)))
          finish = () => {
            controller.enqueue(new TextEncoder().encode(body.slice(10)))
            controller.close()
          }
        }
      })
      const request = new Request("http://localhost/v2/models/m/infer", { method: "POST", body: stream, duplex: "half" } as RequestInit)
      const infer = yield* Effect.forkChild(send.raw(request), { startImmediately: true })
      yield* Effect.sleep("200 millis")
      Fs.rmSync(Path.join(repository, "m", "2"), { recursive: true })
      assert.strictEqual((yield* send("POST", "/v2/repository/models/m/load")).status, 200)
      finish()
      const answer = yield* Fiber.join(infer)
      assert.strictEqual(answer.status, 200, JSON.stringify(answer.json))
      assert.strictEqual(answer.json.model_version, "1", "the version that ran it")
      assert.deepStrictEqual(answer.json.outputs[0].data, [2, 4, 6, 8])
    }).pipe(withFreshMetrics), 60_000)

  it.live("a version reloaded with other outputs, or gone, answers its queued requests 503 (send again), not a 500 or a 404", () =>
    Effect.gen(function*() {
      const reloaded = yield* queuedThroughLoad("/v2/models/m/versions/1/infer", (repository) => writeTree(repository, { "m/1/model.onnx": scaleBytes(2, { output: "z" }) }))
      assert.strictEqual(reloaded.answer.status, 503, JSON.stringify(reloaded.answer.json))
      assert.include(reloaded.answer.json.error, "reloaded with other inputs or outputs while this request waited; send it again")
      const gone = yield* queuedThroughLoad("/v2/models/m/versions/1/infer", (repository) => {
        writeTree(repository, { "m/2/model.onnx": scaleBytes(3) })
        Fs.rmSync(Path.join(repository, "m", "1"), { recursive: true })
      })
      assert.strictEqual(gone.answer.status, 503, JSON.stringify(gone.answer.json))
      assert.include(gone.answer.json.error, "reloaded without version 1 while this request waited; send it again")
      // the same version reloaded with the same signature still serves its queued request
      const same = yield* queuedThroughLoad("/v2/models/m/versions/1/infer", (repository) => writeTree(repository, { "m/1/model.onnx": scaleBytes(5) }))
      assert.strictEqual(same.answer.status, 200, JSON.stringify(same.answer.json))
      assert.deepStrictEqual(same.answer.json.outputs[0].data, [5, 10, 15, 20], "run by the reloaded version 1")
    }).pipe(withFreshMetrics), 60_000)
})
