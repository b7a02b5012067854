import { assert, describe, it, layer } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import * as InferenceError from "../../src/InferenceError.ts"
import { ModelPool } from "../../src/ModelPool.ts"
import * as Mlp from "../../scripts/Mlp.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import * as Tensor from "../../src/Tensor.ts"
import { bundledRepository, maxAbsDiff, sampleInput } from "../fixtures/ModelRepositoryFixture.ts"
import * as TestOps from "../fixtures/TestOps.ts"

const mlp = Mlp.weights()
const mlpInputs = (batch: number, seed = 7) => ({ input: Tensor.float32(sampleInput(batch, seed), [batch, 784]) })

const sileroInputs = (batch: number, samples = 512) => ({
  input: Tensor.float32(Float32Array.from({ length: batch * samples }, (_, i) => 0.1 * Math.sin(i / 5)), [batch, samples]),
  state: Tensor.float32(new Float32Array(2 * batch * 128), [2, batch, 128]),
  sr: Tensor.int64([16000], [])
})

const now = () => performance.now()

// One pool on the bundled repository for this file: one instance per model, test ops on.
layer(OnnxModelPool.layerWithControl({ repository: bundledRepository, defaults: { instances: 1 }, transports: TestOps.transports }), {
  excludeTestServices: true
})("OnnxModelPool on the bundled repository", (it) => {
  it.effect("lists both bundled models as READY on cpu", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      assert.deepStrictEqual(yield* pool.models, [
        { name: "mlp", version: "1", state: "READY" },
        { name: "silero_vad", version: "1", state: "READY" }
      ])
      const info = yield* (yield* OnnxModelPool.OnnxModelPool).info
      assert.deepStrictEqual(info.map((m) => [m.name, m.deviceUsed, m.stats?.live]), [["mlp", "cpu", 1], ["silero_vad", "cpu", 1]])
    }))

  it.effect("reads the mlp's metadata from the session: dynamic batch as -1", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      const { batching, concurrency, defaultPriority, deviceUsed, pipelineDepth, reportsStarts, ...metadata } = yield* pool.metadata("mlp")
      assert.isAtLeast(concurrency!, 1, "its instances")
      assert.strictEqual(deviceUsed, "cpu")
      assert.strictEqual(pipelineDepth, 2, "threads take a job ahead")
      assert.isTrue(reportsStarts, "it pins jobs to workers, so it says when each begins")
      assert.deepInclude(batching, { enabled: true, maxBatchSize: 64 }, "on by default: every dim 0 is dynamic")
      assert.strictEqual(defaultPriority, "Normal")
      assert.deepStrictEqual(metadata, {
        name: "mlp",
        version: "1",
        inputs: [{ name: "input", dtype: "float32", dims: [-1, 784] }],
        outputs: [{ name: "logits", dtype: "float32", dims: [-1, 10] }]
      })
      assert.strictEqual((yield* pool.metadata("mlp", "1")).version, "1")
    }))

  it.effect("reads silero_vad's metadata: unnamed dims as -1, int64 scalar sr", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      const { batching, concurrency: _c, defaultPriority: _p, deviceUsed: _u, pipelineDepth: _d, reportsStarts: _r, signatures, ...metadata } = yield* pool.metadata("silero_vad")
      assert.deepInclude(batching, { enabled: true, inputAxes: { state: 1, sr: null }, outputAxes: { stateN: 1 } }, "from its config.json")
      assert.deepStrictEqual(signatures, [
        { input: { dims: [-1, 512] }, sr: { values: [16000] } },
        { input: { dims: [-1, 256] }, sr: { values: [8000] } }
      ], "from its config.json")
      assert.deepStrictEqual(metadata, {
        name: "silero_vad",
        version: "1",
        inputs: [
          { name: "input", dtype: "float32", dims: [-1, -1] },
          { name: "state", dtype: "float32", dims: [2, -1, 128] },
          { name: "sr", dtype: "int64", dims: [] }
        ],
        outputs: [
          { name: "output", dtype: "float32", dims: [-1, 1] },
          { name: "stateN", dtype: "float32", dims: [-1, -1, -1] }
        ]
      })
    }))

  it.effect("runs the mlp in a worker and matches the plain-JS forward pass", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      for (const batch of [1, 4]) {
        const inputs = mlpInputs(batch, batch)
        const before = Float32Array.from(inputs.input.data)
        const out = yield* pool.run("mlp", inputs, { requestId: `mlp-${batch}` })
        assert.strictEqual(out.deviceUsed, "cpu")
        const logits = out.outputs["logits"]!
        assert.strictEqual(logits.dtype, "float32")
        assert.deepStrictEqual(logits.dims, [batch, 10])
        assert.isBelow(maxAbsDiff(logits.data as Float32Array, Mlp.forward(mlp, inputs.input.data, batch)), 1e-5)
        // the caller's input was copied, not transferred; the output owns an exact-size buffer
        assert.strictEqual(inputs.input.data.byteLength, batch * 784 * 4)
        assert.deepStrictEqual(inputs.input.data, before)
        assert.strictEqual((logits.data as Float32Array).buffer.byteLength, batch * 10 * 4)
      }
    }))

  it.effect("a run whose inputs were moved to the worker gives their buffer back, and the next batch's buffer is it", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      const rows = 13
      const bytes = rows * 784 * 4
      // the pool is the process's: take out what earlier tests' batches of this size left in it
      for (let h = -1; h !== Tensor.recycledBytesHeld();) {
        h = Tensor.recycledBytesHeld()
        Tensor.allocateForOverwrite("float32", rows * 784)
      }
      const held = Tensor.recycledBytesHeld()
      const first = Tensor.allocateForOverwrite("float32", rows * 784)
      first.set(sampleInput(rows, 3))
      const out = yield* pool.run("mlp", { input: Tensor.float32(first, [rows, 784]) }, { requestId: "moved", transfer: true })
      assert.strictEqual(first.byteLength, 0, "moved to the worker")
      assert.isBelow(maxAbsDiff(out.outputs["logits"]!.data as Float32Array, Mlp.forward(mlp, sampleInput(rows, 3), rows)), 1e-5)
      assert.strictEqual(Tensor.recycledBytesHeld(), held + bytes, "given back")
      // the next buffer of that size is the one given back (its old rows are overwritten)
      const second = Tensor.allocateForOverwrite("float32", rows * 784)
      assert.strictEqual(Tensor.recycledBytesHeld(), held)
      second.set(sampleInput(rows, 4))
      const again = yield* pool.run("mlp", { input: Tensor.float32(second, [rows, 784]) }, { requestId: "reused", transfer: true })
      assert.isBelow(maxAbsDiff(again.outputs["logits"]!.data as Float32Array, Mlp.forward(mlp, sampleInput(rows, 4), rows)), 1e-5)
      // a copied input is the caller's: nothing comes back
      const copied = Tensor.float32(sampleInput(rows, 5), [rows, 784])
      const held2 = Tensor.recycledBytesHeld()
      yield* pool.run("mlp", { input: copied }, { requestId: "copied" })
      assert.strictEqual(Tensor.recycledBytesHeld(), held2)
      assert.strictEqual(copied.data.byteLength, bytes)
    }))

  it.effect("sends only the viewed part of a larger buffer", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      const big = new Float32Array(784 * 50)
      big.set(sampleInput(2, 99), 784 * 10)
      const view = big.subarray(784 * 10, 784 * 12)
      const out = yield* pool.run("mlp", { input: Tensor.float32(view, [2, 784]) }, { requestId: "view" })
      assert.isBelow(maxAbsDiff(out.outputs["logits"]!.data as Float32Array, Mlp.forward(mlp, sampleInput(2, 99), 2)), 1e-5)
      assert.strictEqual(big.byteLength, 784 * 50 * 4)
    }))

  it.effect("runs silero_vad: a speech probability and the next state", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      for (const batch of [1, 2]) {
        const out = yield* pool.run("silero_vad", sileroInputs(batch), { requestId: `vad-${batch}` })
        const p = out.outputs["output"]!
        assert.deepStrictEqual(p.dims, [batch, 1])
        for (const v of p.data as Float32Array) assert.isTrue(v >= 0 && v <= 1, `probability ${v}`)
        assert.deepStrictEqual(out.outputs["stateN"]!.dims, [2, batch, 128])
      }
    }))

  it.effect("fails an unknown model, version or unsafe name with ModelNotFound", () =>
    Effect.gen(function*() {
      const pool = yield* ModelPool
      const unknown = yield* Effect.flip(pool.metadata("resnet"))
      assert.instanceOf(unknown, InferenceError.ModelNotFound)
      assert.strictEqual(unknown.modelId, "resnet")
      const version = yield* Effect.flip(pool.metadata("mlp", "2"))
      assert.instanceOf(version, InferenceError.ModelNotFound)
      assert.strictEqual((version as InferenceError.ModelNotFound).version, "2")
      for (const name of ["../mlp", "mlp/../mlp", "..", "./mlp", "/etc/passwd", "models/mlp"]) {
        assert.instanceOf(yield* Effect.flip(pool.metadata(name)), InferenceError.ModelNotFound, name)
        assert.instanceOf(yield* Effect.flip(pool.run(name, mlpInputs(1), { requestId: "x" })), InferenceError.ModelNotFound, name)
      }
      // Plain JavaScript: a name or version of another type is not found (it was a TypeError, or a defect of the error's schema).
      for (const [name, v] of [[42, undefined], [undefined, undefined], ["mlp", 1], ["mlp", null]] as const) {
        const error = yield* Effect.flip(pool.metadata(name as unknown as string, v as unknown as string))
        assert.instanceOf(error, InferenceError.ModelNotFound, `${String(name)} ${String(v)}`)
      }
    }))

  it.effect("fails a run that onnxruntime rejects with RunFailed and keeps the instance", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      const crashes = pool.counters.crashes
      const error = yield* Effect.flip(pool.run("mlp", { input: Tensor.float32(new Float32Array(10), [1, 10]) }, { requestId: "bad-dims" }))
      assert.instanceOf(error, InferenceError.RunFailed)
      assert.strictEqual((error as InferenceError.RunFailed).requestId, "bad-dims")
      assert.match((error as InferenceError.RunFailed).detail, /dimension|Got: 10/i)
      yield* pool.run("mlp", mlpInputs(1), { requestId: "after-bad" })
      assert.strictEqual(pool.counters.crashes, crashes)
    }))

  it.effect("keeps timers on time while a worker blocks for 300 ms", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      const gaps: Array<number> = []
      let last = now()
      const interval = setInterval(() => {
        const t = now()
        gaps.push(t - last)
        last = t
      }, 10)
      let effectTicks = 0
      const ticker = yield* Effect.forkChild(Effect.forever(Effect.andThen(Effect.sleep(10), Effect.sync(() => effectTicks++))), {
        startImmediately: true
      })
      const t0 = now()
      const out = yield* TestOps.run(pool, "mlp", { _tag: "spin", ms: 300 }, { requestId: "spin-300" })
      const elapsed = now() - t0
      clearInterval(interval)
      yield* Fiber.interrupt(ticker)
      assert.isAtLeast(elapsed, 300)
      assert.isAtLeast(out.runMs, 299, "the worker measured its own blocking time")
      assert.isBelow(elapsed - out.runMs, 100, `the thread hop cost ${(elapsed - out.runMs).toFixed(1)} ms`)
      assert.strictEqual(out.deviceUsed, "cpu")
      // A blocked main thread would show one gap of >= 300 ms and no ticks in between. The bounds
      // leave room for a machine busy with other test files (2 cores): ticks get late, never absent.
      assert.isAtLeast(gaps.length, 4, `setInterval(10) fired ${gaps.length} times in ${elapsed.toFixed(0)} ms`)
      assert.isBelow(Math.max(...gaps), 150, `longest gap ${Math.max(...gaps).toFixed(1)} ms`)
      assert.isAtLeast(effectTicks, 3, `Effect.sleep(10) loop ticked ${effectTicks} times`)
    }))

  it.effect("returns at once when a running caller is interrupted, and reuses the instance only after the run ends", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      const dropped = pool.counters.lateRepliesDropped
      const running = yield* Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 300 }, { requestId: "long" }), { startImmediately: true })
      yield* Effect.sleep(40)
      assert.strictEqual(pool.stats("mlp")?.busy, 1)
      const t0 = now()
      yield* Fiber.interrupt(running)
      const interruptMs = now() - t0
      assert.isBelow(interruptMs, 30, `interrupt took ${interruptMs.toFixed(1)} ms`)
      assert.strictEqual(pool.stats("mlp")?.busy, 1, "the instance stays busy until the worker replies")
      const t1 = now()
      yield* pool.run("mlp", mlpInputs(1), { requestId: "next" })
      const waited = now() - t1
      assert.isAtLeast(waited, 200, `the next run waited ${waited.toFixed(0)} ms for the spin to end`)
      assert.strictEqual(pool.counters.lateRepliesDropped, dropped + 1)
      assert.deepInclude(pool.stats("mlp"), { busy: 0, idle: 1, queued: 0 })
    }))

  it.effect("says when each run begins on its worker: at once when idle, as the run ahead of it ends when sent ahead", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      const begun: Record<string, number> = {}
      const spin = (requestId: string, ms: number) =>
        Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms }, { requestId, onStart: () => (begun[requestId] = now()) }), { startImmediately: true })
      const t0 = now()
      const first = yield* spin("first", 150)
      const ahead = yield* spin("ahead", 100)
      assert.deepStrictEqual(Object.keys(begun), ["first"], "the idle worker began the first at once; the second waits in it")
      const [firstOut, aheadOut] = yield* Effect.all([Fiber.join(first), Fiber.join(ahead)])
      const endOfFirst = (firstOut.outputs["interval"]!.data as Float64Array)[1]! - performance.timeOrigin
      assert.isAtLeast(begun["ahead"]! - t0, 100, "the second began only once the first ended")
      assert.isAtLeast(begun["ahead"]!, endOfFirst - 1, "not before the first's run ended in the worker")
      assert.isBelow(begun["ahead"]!, (aheadOut.outputs["interval"]!.data as Float64Array)[1]! - performance.timeOrigin, "while it ran, not when it replied")
    }))

  it.effect("drops a queued job whose caller was interrupted without sending it", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      const { interruptedQueued, replies } = pool.counters
      const blocker = yield* Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 150 }, { requestId: "blocker" }), { startImmediately: true })
      // the instance takes one job ahead of the running one
      const ahead = yield* Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 1 }, { requestId: "ahead" }), { startImmediately: true })
      const queued = yield* Effect.forkChild(pool.run("mlp", mlpInputs(1), { requestId: "queued" }), { startImmediately: true })
      yield* Effect.sleep(20)
      assert.strictEqual(pool.stats("mlp")?.queued, 1)
      yield* Fiber.interrupt(queued)
      assert.strictEqual(pool.stats("mlp")?.queued, 0)
      yield* Fiber.join(blocker)
      yield* Fiber.join(ahead)
      yield* pool.run("mlp", mlpInputs(1), { requestId: "after" })
      assert.strictEqual(pool.counters.interruptedQueued, interruptedQueued + 1)
      assert.strictEqual(pool.counters.replies, replies + 3, "only the blocker, the job ahead and the last run reached the worker")
    }))

  it.effect("a worker skips a job sent ahead whose caller left while the worker was blocked in another run", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      const blocker = yield* Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 200 }, { requestId: "blocker" }), { startImmediately: true })
      // the instance takes it ahead of the running spin; its cancel reaches the worker during the spin
      const ahead = yield* Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 400 }, { requestId: "ahead" }), { startImmediately: true })
      yield* Effect.sleep(40)
      yield* Fiber.interrupt(ahead)
      yield* Fiber.join(blocker)
      const t0 = now()
      yield* pool.run("mlp", mlpInputs(1), { requestId: "after" })
      const waited = now() - t0
      assert.isBelow(waited, 300, `the next run waited ${waited.toFixed(0)} ms: the job ahead ran its 400 ms instead of being skipped`)
    }))

  it.effect("serves waiting callers in FIFO order", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      const order: Array<string> = []
      const blocker = yield* Effect.forkChild(TestOps.run(pool, "mlp", { _tag: "spin", ms: 60 }, { requestId: "blocker" }), { startImmediately: true })
      const ids = ["a", "b", "c", "d", "e", "f"]
      const fibers = []
      for (const id of ids) {
        fibers.push(yield* Effect.forkChild(pool.run("mlp", mlpInputs(1), { requestId: id }).pipe(Effect.tap(() => Effect.sync(() => order.push(id)))), {
          startImmediately: true
        }))
      }
      yield* Fiber.join(blocker)
      yield* Fiber.joinAll(fibers)
      assert.deepStrictEqual(order, ids)
    }))

  it.effect("refuses test operations on an unknown model", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.OnnxModelPool
      assert.instanceOf(yield* Effect.flip(TestOps.run(pool, "nope", { _tag: "spin", ms: 1 }, { requestId: "t" })), InferenceError.ModelNotFound)
      const failed = yield* Effect.flip(TestOps.run(pool, "mlp", { _tag: "fail", message: "scripted failure" }, { requestId: "t" }))
      assert.instanceOf(failed, InferenceError.RunFailed)
      assert.strictEqual((failed as InferenceError.RunFailed).detail, "scripted failure")
    }))
})

describe("OnnxModelPool.layer", () => {
  it.live("provides ModelPool alone; its production instances run no test operation", () =>
    Effect.gen(function*() {
      const pool = yield* OnnxModelPool.make({ repository: bundledRepository, defaults: { instances: 1 } })
      const refused = yield* Effect.flip(TestOps.run(pool, "mlp", { _tag: "exit", code: 1 }, { requestId: "t" }))
      assert.instanceOf(refused, InferenceError.RunFailed)
      // onnxruntime runs it as any request: the model's own input is missing from it
      assert.include((refused as InferenceError.RunFailed).detail, "input 'input' is missing")
      assert.strictEqual(pool.counters.crashes, 0)
      const out = yield* ModelPool.use((p) => p.run("mlp", mlpInputs(1), { requestId: "layer" })).pipe(
        Effect.provide(OnnxModelPool.layer({ repository: bundledRepository, defaults: { instances: 1 } }))
      )
      assert.deepStrictEqual(out.outputs["logits"]!.dims, [1, 10])
    }))

  it.live("fails to build when the repository root does not exist", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(OnnxModelPool.make({ repository: "/nonexistent/models" }))
      assert.strictEqual(error._tag, "RepositoryError")
    }))
})
