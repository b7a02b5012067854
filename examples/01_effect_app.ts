/**
 * 01 · The engine inside an Effect application.
 *
 * The engine is a service (`AsyncInferenceEngine`) built by a Layer from three others: the model
 * pool (onnxruntime sessions in worker threads over a model repository), telemetry and
 * configuration. Your own services depend on it like on any other, and its failures are typed
 * (`InferenceError`, with a `reason` to match on).
 *
 * Run: `npm run example -- 01` (or `node examples/01_effect_app.ts` on Node ≥ 22.19)
 */
import { Context, Effect, Layer } from "effect"
import { fileURLToPath } from "node:url"
import { AsyncConfig, Engine, InferenceError, InferenceRequest, OnnxModelPool, Telemetry, Tensor } from "../src/index.ts"

// The engine, assembled from its parts: swap any of them (a fake pool in tests, another telemetry).
const EngineLive = Engine.AsyncInferenceEngine.layer.pipe(
  Layer.provide(Layer.mergeAll(
    OnnxModelPool.layer({ repository: fileURLToPath(new URL("../models", import.meta.url)) }),
    Telemetry.TelemetryCollector.layer,
    AsyncConfig.AsyncConfigService.layerWith({ maxConcurrentRequests: 2 })
  ))
)

// An application service that uses the engine: the bundled MLP as a 10-class classifier.
class Classifier extends Context.Service<Classifier, {
  readonly classify: (pixels: Float32Array) => Effect.Effect<number, InferenceError.InferenceError>
}>()("example/Classifier") {
  static readonly layer = Layer.effect(
    Classifier,
    Effect.gen(function*() {
      const engine = yield* Engine.AsyncInferenceEngine
      return Classifier.of({
        classify: (pixels) =>
          engine.infer(InferenceRequest.make("mlp", { input: Tensor.float32(pixels, [1, 784]) }, { priority: "High" })).pipe(
            Effect.map((result) => {
              const logits = result.outputs["logits"]!.data as Float32Array
              return logits.indexOf(Math.max(...logits))
            })
          )
      })
    })
  )
}

const AppLive = Classifier.layer.pipe(Layer.provide(EngineLive))

const image = (seed: number) => Float32Array.from({ length: 784 }, (_, i) => Math.sin(i * seed) / 2)

const program = Effect.gen(function*() {
  const classifier = yield* Classifier
  const classes = yield* Effect.forEach([1, 2, 3, 4], (seed) => classifier.classify(image(seed)), { concurrency: "unbounded" })
  console.log(`classified 4 images: [${classes.join(", ")}]`)

  // Typed failures: the reason says what went wrong; httpStatus maps it for an API.
  const engine = yield* Engine.AsyncInferenceEngine
  const reason = yield* engine.infer(InferenceRequest.make("no-such-model", {})).pipe(
    Effect.as("none"),
    Effect.catchTag("InferenceError", (e) => Effect.succeed(`${e.reason._tag} (HTTP ${InferenceError.httpStatus(e.reason)})`))
  )
  console.log(`unknown model -> ${reason}`)
})

// Closing the layer's scope at the end releases every session and worker thread.
await Effect.runPromise(program.pipe(Effect.provide(Layer.merge(AppLive, EngineLive))))
console.log("engine closed")
