/**
 * The repository poller (`--model-control-mode poll`): the pure plan of each poll, then polls
 * over a real OnnxModelPool on a temporary repository, a version added, a policy changed, a model
 * replaced, broken, added and removed, and the layer polling on its own.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Duration, Effect, Fiber, Layer, References } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { AsyncConfigService } from "../../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import { Lifecycle } from "../../src/http/Lifecycle.ts"
import * as InferenceRequest from "../../src/InferenceRequest.ts"
import * as ModelControl from "../../src/http/ModelControl.ts"
import * as RepositoryPoll from "../../src/http/RepositoryPoll.ts"
import { ModelPool } from "../../src/ModelPool.ts"
import type * as ModelRepository from "../../src/ModelRepository.ts"
import * as VersionPolicy from "../../src/VersionPolicy.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import { TelemetryCollector } from "../../src/Telemetry.ts"
import * as Tensor from "../../src/Tensor.ts"
import { mlpBytes, sampleInput, tempRepository, writeTree } from "../fixtures/ModelRepositoryFixture.ts"
import * as TestOps from "../fixtures/TestOps.ts"

const quiet = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.provideService(self, References.MinimumLogLevel, "Error")

describe("RepositoryPoll.changes", () => {
  const found = (
    name: string,
    version: string,
    modifiedMs = 1,
    raw: Record<string, unknown> = {},
    { bytes = 100, identity = "1:1:1", path = `/r/${name}/${version}/model.onnx`, labels = undefined as Record<string, ReadonlyArray<string>> | undefined } = {}
  ): ModelRepository.Entry => ({
    _tag: "Found",
    name,
    version,
    path,
    file: { modifiedMs, bytes, identity },
    config: { raw, labels, versionPolicy: VersionPolicy.all } as unknown as ModelRepository.ModelConfig
  })
  const unavailable = (name: string, version: string, reason: string): ModelRepository.Entry => ({ _tag: "Unavailable", name, version, reason })
  const repo = (...entries: ReadonlyArray<ModelRepository.Entry>): ModelRepository.ModelRepository => ({ root: "/r", entries, ignored: [], notServed: [] })
  const plan = (loaded: ModelRepository.ModelRepository, onDisk: ModelRepository.ModelRepository, tried: ReadonlyMap<string, string> = new Map()) =>
    RepositoryPoll.changes(loaded, onDisk, tried).map((c) => `${c._tag} ${c.name}`)

  const a1 = found("a", "1")
  const b1 = found("b", "1")
  const table: ReadonlyArray<readonly [string, ModelRepository.ModelRepository, ModelRepository.ModelRepository, ReadonlyArray<string>]> = [
    ["nothing changed: nothing to do", repo(a1, b1), repo(a1, b1), []],
    ["a version directory added", repo(a1), repo(a1, found("a", "2")), ["Load a"]],
    ["a version directory removed", repo(a1, found("a", "2")), repo(a1), ["Load a"]],
    ["a model file replaced (another modification time)", repo(a1), repo(found("a", "1", 2)), ["Load a"]],
    ["config.json edited", repo(a1), repo(found("a", "1", 1, { instances: 2 })), ["Load a"]],
    ["a model file of another size, same modification time", repo(a1), repo(found("a", "1", 1, {}, { bytes: 101 })), ["Load a"]],
    ["a model file renamed into place: same size and modification time, another inode", repo(a1), repo(found("a", "1", 1, {}, { identity: "1:2:1" })), ["Load a"]],
    ["a model file that resolves elsewhere (a symlink re-pointed)", repo(a1), repo(found("a", "1", 1, {}, { path: "/r/elsewhere/model.onnx" })), ["Load a"]],
    ["a label file edited", repo(found("a", "1", 1, {}, { labels: { y: ["cat"] } })), repo(found("a", "1", 1, {}, { labels: { y: ["dog"] } })), ["Load a"]],
    ["a model that was unavailable is fixed", repo(unavailable("a", "1", "a/model.onnx is empty")), repo(a1), ["Load a"]],
    ["a model added", repo(a1), repo(a1, b1), ["Load b"]],
    ["a model removed", repo(a1, b1), repo(a1), ["Unload b"]],
    ["changes come in name order", repo(b1), repo(a1), ["Load a", "Unload b"]]
  ]
  for (const [name, loaded, onDisk, expected] of table) {
    it(name, () => assert.deepStrictEqual(plan(loaded, onDisk), expected))
  }

  it("changes come in name order, an unload before a load of a later name", () => {
    assert.deepStrictEqual(RepositoryPoll.changes(repo(a1), repo(b1), new Map()).map((c) => `${c._tag} ${c.name}`), ["Unload a", "Load b"])
  })

  it("what the poller tried wins over what the pool loaded: a failed load is not retried, an unloaded model is loaded when it comes back", () => {
    const changed = repo(found("a", "1", 2))
    const [load] = RepositoryPoll.changes(repo(a1), changed, new Map())
    assert.strictEqual(load?._tag, "Load")
    // the load failed: the pool still serves the old files, the poller remembers it tried these
    const tried = new Map([["a", (load as { fingerprint: string }).fingerprint]])
    assert.deepStrictEqual(plan(repo(a1), changed, tried), [], "not tried again until the files change once more")
    assert.deepStrictEqual(plan(repo(a1), repo(found("a", "1", 3)), tried), ["Load a"])
    // unloaded, then back as it was: loaded again
    const gone = new Map([["a", ""]])
    assert.deepStrictEqual(plan(repo(a1), repo(), gone), [], "unloaded once")
    assert.deepStrictEqual(plan(repo(a1), repo(a1), gone), ["Load a"])
    // a model the poller loaded that is gone: unloaded though the pool's start never saw it
    assert.deepStrictEqual(plan(repo(), repo(), new Map([["c", "x"]])), ["Unload c"])
  })
})

/** The engine over a real pool in poll mode, with the services a poll needs. */
const pollApp = (repository: string, transports?: OnnxModelPool.Options["transports"]) =>
  Effect.gen(function*() {
    const services = yield* Layer.build(
      AsyncInferenceEngine.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(
          OnnxModelPool.layerWithControl({ repository, modelControl: "poll", defaults: { instances: 1 }, closeTimeout: "5 seconds", transports }),
          TelemetryCollector.layer,
          AsyncConfigService.layerWith({}),
          Lifecycle.layer
        ))
      )
    )
    const pool = Context.get(services, ModelPool)
    const tried = new Map<string, string>()
    const poll = quiet(RepositoryPoll.pollOnce(tried).pipe(Effect.provide(services)))
    const states = Effect.map(pool.models, (models) => models.map((m) => `${m.name}@${m.version} ${m.state}`))
    const infer = (name: string, version?: string) =>
      Context.get(services, AsyncInferenceEngine).infer(
        InferenceRequest.make(name, { input: Tensor.float32(sampleInput(1), [1, 784]) }, { modelVersion: version })
      ).pipe(Effect.map(() => "ok"), Effect.catch((e) => Effect.succeed(e.reason._tag)))
    return {
      services,
      pool,
      /** The same pool, with its instance counters. */
      onnx: Context.get(services, OnnxModelPool.OnnxModelPool),
      poll,
      states,
      infer,
      lifecycle: Context.get(services, Lifecycle),
      engine: Context.get(services, AsyncInferenceEngine)
    }
  })

describe("RepositoryPoll over a real pool", () => {
  it.live("follows the repository: a version added, a versionPolicy, a model replaced, broken, added and removed; a client cannot load or unload", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/1/model.onnx": mlpBytes() })
      const app = yield* pollApp(repository)
      assert.deepStrictEqual(yield* app.states, ["mlp@1 READY"])
      assert.deepStrictEqual(yield* app.poll, [], "nothing changed since the start")
      // a client's load and unload are refused: the files decide (and, with no poller, nothing does: said so)
      assert.match((yield* Effect.flip(ModelControl.load(app.pool, "mlp", app.lifecycle))).message, /not allowed in poll mode, and nothing polls the model repository: provide RepositoryPoll.layer/)
      const detach = app.pool.poll!.attach()
      const refused = yield* Effect.flip(ModelControl.load(app.pool, "mlp", app.lifecycle))
      detach()
      assert.match(refused.message, /not allowed while the server polls the model repository/)
      assert.strictEqual((yield* Effect.flip(ModelControl.unload(app.pool, app.engine, "mlp")))._tag, "NotSupported")
      assert.isFalse(ModelControl.isEnabled(app.pool))

      writeTree(repository, { "mlp/2/model.onnx": mlpBytes() })
      assert.deepStrictEqual((yield* app.poll).map((c) => `${c._tag} ${c.name}`), ["Load mlp"])
      assert.deepStrictEqual(yield* app.states, ["mlp@1 READY", "mlp@2 READY"])
      assert.deepStrictEqual(yield* app.poll, [], "a poll after a load finds nothing new")

      writeTree(repository, { "mlp/config.json": JSON.stringify({ versionPolicy: { latest: { numVersions: 1 } } }) })
      yield* app.poll
      assert.deepStrictEqual(yield* app.states, ["mlp@2 READY"])
      assert.strictEqual(yield* app.infer("mlp", "1"), "ModelNotFound")
      assert.strictEqual(yield* app.infer("mlp"), "ok")

      // a new version under the policy: served in place of the old one
      writeTree(repository, { "mlp/3/model.onnx": mlpBytes() })
      yield* app.poll
      assert.deepStrictEqual(yield* app.states, ["mlp@3 READY"])

      // a broken file is tried once and leaves the version that served; fixed, it loads
      const file = Path.join(repository, "mlp", "3", "model.onnx")
      Fs.writeFileSync(file, "not a model")
      assert.deepStrictEqual((yield* app.poll).map((c) => c._tag), ["Load"])
      assert.deepStrictEqual(yield* app.states, ["mlp@3 READY"])
      assert.strictEqual(yield* app.infer("mlp"), "ok", "the old session still serves")
      assert.deepStrictEqual(yield* app.poll, [], "not tried again until the files change")
      Fs.writeFileSync(file, mlpBytes())
      assert.deepStrictEqual((yield* app.poll).map((c) => c._tag), ["Load"])
      assert.strictEqual(yield* app.infer("mlp"), "ok")
      // retrained weights of the same size, renamed into place with the old file's modification time
      const retrained = mlpBytes()
      retrained[Math.floor(retrained.length / 2)]! ^= 1
      Fs.utimesSync(file, 1_000_000_000, 1_000_000_000)
      assert.deepStrictEqual((yield* app.poll).map((c) => c._tag), ["Load"], "a new modification time is a change")
      const before = Fs.statSync(file)
      const staged = Path.join(repository, "mlp", "3", ".model.onnx.new")
      Fs.writeFileSync(staged, retrained)
      Fs.utimesSync(staged, 1_000_000_000, 1_000_000_000)
      Fs.renameSync(staged, file)
      assert.deepStrictEqual([Fs.statSync(file).size, Fs.statSync(file).mtimeMs], [before.size, before.mtimeMs])
      assert.deepStrictEqual((yield* app.poll).map((c) => `${c._tag} ${c.name}`), ["Load mlp"], "seen by its inode")

      // a model added, then removed
      writeTree(repository, { "other/model.onnx": mlpBytes() })
      assert.deepStrictEqual((yield* app.poll).map((c) => `${c._tag} ${c.name}`), ["Load other"])
      assert.strictEqual(yield* app.infer("other"), "ok")
      Fs.rmSync(Path.join(repository, "other"), { recursive: true })
      assert.deepStrictEqual((yield* app.poll).map((c) => `${c._tag} ${c.name}`), ["Unload other"])
      assert.deepStrictEqual(yield* app.states, ["mlp@3 READY"], "a model removed is no longer listed")
      assert.include(["ModelNotFound", "ModelUnavailable"], yield* app.infer("other"))
      assert.deepStrictEqual(yield* app.poll, [])
      // back again, as it was
      writeTree(repository, { "other/model.onnx": mlpBytes() })
      yield* app.poll
      assert.strictEqual(yield* app.infer("other"), "ok")
    }), 120_000)

  it.live("a poll's load is abandoned when the poller is interrupted (the shutdown does not wait for an instance that takes long to load)", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      // After the start, instances never announce themselves ready: a load hangs as a stuck one would.
      let hold = false
      // A process, which the interruption kills at once (a thread loading in native code cannot be
      // stopped: it is waited for up to the pool's close timeout).
      const holding = TestOps.holdingReady(TestOps.transports.process, () => (hold ? new Promise<void>(() => {}) : undefined))
      const app = yield* pollApp(repository, { process: holding })
      hold = true
      writeTree(repository, { "added/model.onnx": mlpBytes(), "added/config.json": JSON.stringify({ isolation: "process" }) })
      const poll = yield* Effect.forkChild(app.poll, { startImmediately: true })
      for (let i = 0; (yield* app.states).every((m) => !m.startsWith("added")) || !(yield* app.states).includes("added@1 LOADING"); i++) {
        assert.isBelow(i, 400, "the poll began loading the added model")
        yield* Effect.sleep("10 millis")
      }
      const started = Date.now()
      yield* Fiber.interrupt(poll)
      assert.isBelow(Date.now() - started, 2_000, "the interruption did not wait for the load")
    }), 60_000)

  it.live("the layer polls on its own every interval, and stops with its scope", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const app = yield* pollApp(repository)
      const scope = yield* Effect.scope
      yield* quiet(Layer.buildWithScope(RepositoryPoll.layer({ interval: Duration.millis(50) }), scope).pipe(Effect.provide(app.services)))
      assert.isTrue(app.pool.poll!.followed(), "the layer registered its poller")
      writeTree(repository, { "added/model.onnx": mlpBytes() })
      for (let i = 0; !(yield* app.states).includes("added@1 READY"); i++) {
        assert.isBelow(i, 400, "the added model was loaded by a poll")
        yield* Effect.sleep("25 millis")
      }
    }), 60_000)
})

describe("RepositoryPoll: order, shutdown, interval, counts and the index", () => {

  it.live("a poll once the shutdown has begun does nothing and reports nothing", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const app = yield* pollApp(repository)
      writeTree(repository, { "added/model.onnx": mlpBytes() })
      yield* app.lifecycle.beginShutdown
      assert.deepStrictEqual(yield* app.poll, [])
      assert.notInclude(yield* app.states, "added@1 READY")
    }), 60_000)

  it.live("the layer's first poll waits one interval", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const app = yield* pollApp(repository)
      const scope = yield* Effect.scope
      yield* quiet(Layer.buildWithScope(RepositoryPoll.layer({ interval: Duration.seconds(60) }), scope).pipe(Effect.provide(app.services)))
      writeTree(repository, { "added/model.onnx": mlpBytes() })
      yield* Effect.sleep("500 millis")
      assert.notInclude(yield* app.states, "added@1 READY")
    }), 60_000)

  it.live("under poll, the pool counts the poller's loads by outcome (inference_model_loads_total)", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const app = yield* pollApp(repository)
      assert.deepStrictEqual(app.pool.modelLoads, { succeeded: 0, failed: 0, byModel: new Map() })
      writeTree(repository, { "added/model.onnx": mlpBytes() })
      yield* app.poll
      Fs.writeFileSync(Path.join(repository, "mlp", "model.onnx"), "not a model")
      yield* app.poll
      assert.deepStrictEqual(app.pool.modelLoads, {
        succeeded: 1,
        failed: 1,
        byModel: new Map([["added", { succeeded: 1, failed: 0 }], ["mlp", { succeeded: 0, failed: 1 }]])
      })
    }), 60_000)

  it.live("a model added since the index last scanned is listed LOADING while the poll loads it", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      let release: () => void = () => {}
      let hold = false
      const held = new Promise<void>((resolve) => (release = resolve))
      const holding = TestOps.holdingReady(TestOps.transports.thread, () => (hold ? held : undefined))
      const app = yield* pollApp(repository, { thread: holding })
      yield* Effect.addFinalizer(() => Effect.sync(() => release()))
      hold = true
      const spawned = app.onnx.counters.workersSpawned
      assert.deepStrictEqual(yield* app.states, ["mlp@1 READY"]) // the index scans now, and keeps that scan for a second
      writeTree(repository, { "added/model.onnx": mlpBytes() })
      const poll = yield* Effect.forkChild(app.poll, { startImmediately: true })
      for (let i = 0; app.onnx.counters.workersSpawned === spawned; i++) {
        assert.isBelow(i, 400, "the poll began loading the added model")
        yield* Effect.sleep("2 millis")
      }
      assert.deepStrictEqual(yield* app.states, ["mlp@1 READY", "added@1 LOADING"])
      release()
      yield* Fiber.join(poll)
      assert.include(yield* app.states, "added@1 READY")
    }), 60_000)

  it.live("right after a poll loads a model added since start, the index lists it once, READY (the poll's load rescans the index)", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({ "mlp/model.onnx": mlpBytes() })
      const app = yield* pollApp(repository)
      writeTree(repository, { "added/model.onnx": mlpBytes() })
      assert.deepStrictEqual(yield* app.states, ["mlp@1 READY", "added@1 UNAVAILABLE"]) // scanned now, kept a second
      yield* app.poll
      assert.deepStrictEqual(yield* app.states, ["added@1 READY", "mlp@1 READY"])
    }), 60_000)
})
