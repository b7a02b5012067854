/**
 * The engine on real onnxruntime, where one request's input makes a whole native run fail: a
 * token id past an embedding's vocabulary (onnxruntime's Gather kernel refuses the run).
 * Batched with good requests, only the poisoned one fails; declared in `inputSignatures`, it is
 * refused at admission and never runs.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Latch, Layer } from "effect"
import { AsyncConfigService } from "../src/AsyncConfig.ts"
import { AsyncInferenceEngine, DispatchGate } from "../src/Engine.ts"
import type * as InferenceError from "../src/InferenceError.ts"
import * as InferenceRequest from "../src/InferenceRequest.ts"
import * as OnnxModelPool from "../src/onnx/OnnxModelPool.ts"
import { layerRecording, TelemetryLog } from "../src/Telemetry.ts"
import * as Tensor from "../src/Tensor.ts"
import * as EmbeddingModel from "./fixtures/EmbeddingModel.ts"
import { tempRepository } from "./fixtures/ModelRepositoryFixture.ts"

const ids = (model: string, id: string, tokens: ReadonlyArray<number>) =>
  InferenceRequest.make(model, { ids: Tensor.int64(tokens, [1, tokens.length]) }, { requestId: id })

const reasonOf = (exit: Exit.Exit<unknown, InferenceError.InferenceError>) =>
  Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error.reason : undefined

/** Waits until no run is in flight: a run is recorded in telemetry just after its callers are answered. */
const quiescent = (engine: AsyncInferenceEngine["Service"]) =>
  Effect.repeat(Effect.andThen(Effect.sleep("1 millis"), engine.diagnostics), { until: (d) => d.runs === 0 })

/** The engine over a repository with the embedding twice: as is, and with its id range declared. */
const makeEngine = Effect.gen(function*() {
  const model = EmbeddingModel.bytes()
  const batching = { enabled: true, maxBatchSize: 8, maxQueueDelayMs: 0 }
  const repository = yield* tempRepository({
    "embed/model.onnx": model,
    "embed/config.json": JSON.stringify({ instances: 1, batching }),
    "declared/model.onnx": model,
    "declared/config.json": JSON.stringify({ instances: 1, batching, inputSignatures: [{ ids: { min: 0, max: EmbeddingModel.vocabulary - 1 } }] })
  })
  const gate = yield* Latch.make(false)
  const context = yield* Layer.build(
    AsyncInferenceEngine.layer.pipe(
      Layer.provideMerge(Layer.mergeAll(OnnxModelPool.layer({ repository }), layerRecording, AsyncConfigService.layerWith({ maxConcurrentRequests: 1 })))
    )
  ).pipe(Effect.provideService(DispatchGate, gate.await))
  return { engine: Context.get(context, AsyncInferenceEngine), log: Context.get(context, TelemetryLog), gate }
})

describe("AsyncInferenceEngine on onnxruntime", () => {
  it.live("a token id past the vocabulary fails only its own request, not the batch it ran in", () =>
    Effect.gen(function*() {
      const { engine, gate, log } = yield* makeEngine
      const fork = (id: string, tokens: ReadonlyArray<number>) => Effect.forkChild(Effect.exit(engine.infer(ids("embed", id, tokens))), { startImmediately: true })
      const good1 = yield* fork("good-1", [1, 2])
      const poisoned = yield* fork("poisoned", [3, 12])
      const good2 = yield* fork("good-2", [4, 5])
      yield* gate.open

      const [e1, ep, e2] = [yield* Fiber.join(good1), yield* Fiber.join(poisoned), yield* Fiber.join(good2)]
      assert.isTrue(Exit.isSuccess(e1) && Exit.isSuccess(e2), "the good requests got their results")
      if (Exit.isSuccess(e1)) assert.deepStrictEqual(Array.from(e1.value.outputs["vectors"]!.data as Float32Array), [1, -1, 2, -2])
      if (Exit.isSuccess(e2)) assert.deepStrictEqual(Array.from(e2.value.outputs["vectors"]!.data as Float32Array), [4, -4, 5, -5])
      const reason = reasonOf(ep)
      assert.strictEqual(reason?._tag, "RunFailed")
      assert.match(reason?.message ?? "", /idx=12/, "onnxruntime's own words")
      yield* quiescent(engine)
      const runs = log.events.filter((e) => e._tag === "run").map((e) => e._tag === "run" ? e.batchSize : 0)
      // One batch of three failed, then each ran alone: the failed runs (the batch, the poisoned one alone) are not counted.
      assert.deepStrictEqual(runs, [1, 1], "the two good requests' runs alone")
    }))

  it.live("with the id range declared, the same request is refused at admission and nothing runs", () =>
    Effect.gen(function*() {
      const { engine, gate, log } = yield* makeEngine
      yield* gate.open
      const exit = yield* Effect.exit(engine.infer(ids("declared", "poisoned", [3, 12])))
      const reason = reasonOf(exit)
      assert.strictEqual(reason?._tag, "InvalidInput")
      assert.strictEqual(reason?.message, "invalid input for model \"declared\": ids value 12 (element 1) is outside [0, 9] (the model's declared input signature)")
      assert.isTrue(Exit.isSuccess(yield* Effect.exit(engine.infer(ids("declared", "good", [9, 0])))))
      yield* quiescent(engine)
      assert.deepStrictEqual(log.events.filter((e) => e._tag === "run").length, 1, "only the good request ran")
    }))
})

describe("InferenceRequest.transferInputs on worker threads", () => {
  it.live("moves an input that owns its buffer to the worker (detached here), copies it otherwise", () =>
    Effect.gen(function*() {
      const repository = yield* tempRepository({
        "embed/model.onnx": EmbeddingModel.bytes(),
        "embed/config.json": JSON.stringify({ instances: 1, batching: { enabled: false } })
      })
      const context = yield* Layer.build(
        AsyncInferenceEngine.layer.pipe(
          Layer.provideMerge(Layer.mergeAll(OnnxModelPool.layer({ repository }), layerRecording, AsyncConfigService.layerWith({})))
        )
      )
      const engine = Context.get(context, AsyncInferenceEngine)
      const request = (transferInputs: boolean) =>
        InferenceRequest.make("embed", { ids: Tensor.int64([1, 2], [1, 2]) }, { transferInputs })
      const kept = request(false)
      const keptResult = yield* engine.infer(kept)
      assert.deepStrictEqual(Array.from(keptResult.outputs["vectors"]!.data as Float32Array), [1, -1, 2, -2])
      assert.strictEqual((kept.inputs["ids"]!.data as BigInt64Array).length, 2, "copied: still readable")
      const given = request(true)
      const givenResult = yield* engine.infer(given)
      assert.deepStrictEqual(Array.from(givenResult.outputs["vectors"]!.data as Float32Array), [1, -1, 2, -2])
      assert.strictEqual((given.inputs["ids"]!.data as BigInt64Array).buffer.byteLength, 0, "moved: detached here")
    }))
})
