/**
 * The RPCs of `inference.GRPCInferenceService` as Effects over the engine, the pool and the
 * lifecycle, with the HTTP routes' rules and messages (`Oip.prepare`, `InferenceError.grpcCode`);
 * `GrpcServer` wires them to `@grpc/grpc-js`. Each takes the request message as proto-loader
 * decodes it (`GrpcCodec`) and answers the response message, or fails with `GrpcFailure`.
 *
 * @module GrpcService
 */
import * as Grpc from "@grpc/grpc-js"
import { Data, Duration, Effect } from "effect"
import { AsyncInferenceEngine } from "../Engine.ts"
import { Lifecycle, type Readiness, readiness } from "../http/Lifecycle.ts"
import * as ModelConfiguration from "../http/ModelConfiguration.ts"
import * as ModelControl from "../http/ModelControl.ts"
import * as Oip from "../http/Oip.ts"
import * as Routes from "../http/Routes.ts"
import * as Statistics from "../http/Statistics.ts"
import * as InferenceError from "../InferenceError.ts"
import * as InferenceRequest from "../InferenceRequest.ts"
import { ModelPool } from "../ModelPool.ts"
import * as ModelRepository from "../ModelRepository.ts"
import * as Sequence from "../Sequence.ts"
import * as GrpcCodec from "./GrpcCodec.ts"

export interface Options {
  /** Directories whose path never appears in an answer. */
  readonly redactPaths?: ReadonlyArray<string> | undefined
  /** Triton's `--strict-readiness`, as HTTP's `/v2/health/ready` (`Lifecycle.readiness`). Default true. */
  readonly strictReadiness?: boolean | undefined
}

/** A failure answered as a gRPC status. */
export class GrpcFailure extends Data.TaggedError("GrpcFailure")<{ readonly code: Grpc.status; readonly details: string }> {}

export type Requirements = AsyncInferenceEngine | ModelPool | Lifecycle

/** The RPC handlers, as Effects over the services (the grpc-js wiring is `make`). */
export const make = (options: Options) =>
  Effect.gen(function*() {
    const engine = yield* AsyncInferenceEngine
    const pool = yield* ModelPool
    const lifecycle = yield* Lifecycle
    const statistics = yield* Effect.serviceOption(Statistics.Statistics)
    const roots = options.redactPaths ?? []
    const strict = options.strictReadiness ?? true

    const fromReason = (reason: InferenceError.Reason) => {
      if (reason._tag === "ShuttingDown") lifecycle.noteRefusalUnsafe("grpc")
      return new GrpcFailure({ code: InferenceError.grpcCode(reason), details: Routes.clientMessage(reason, roots) })
    }
    const invalidArgument = (details: string) => new GrpcFailure({ code: Grpc.status.INVALID_ARGUMENT, details })

    /** A model version ("" is the default, undefined), checked as HTTP checks its path. */
    const versionParam = (version: string) =>
      version !== "" && !ModelRepository.versionPattern.test(version)
        ? Effect.fail(invalidArgument(`invalid model version ${JSON.stringify(version.slice(0, 200))}: decimal digits only`))
        : Effect.succeed(version === "" ? undefined : version)

    /** The model name and version ("" is the default), checked as HTTP checks its path. */
    const modelParams = (name: string, version: string) =>
      ModelRepository.isValidModelName(name)
        ? Effect.map(versionParam(version), (v) => ({ name, version: v }))
        : Effect.fail(invalidArgument(`invalid model name ${JSON.stringify(name.slice(0, 200))}: ${ModelRepository.modelNameRule}`))

    /** The server's readiness, from the one check HTTP's `/v2/health/ready` answers from. */
    const serverReadiness: Effect.Effect<Readiness> = Effect.map(pool.models, (models) =>
      readiness({ shuttingDown: lifecycle.isShuttingDown(), strict, models }))

    const metadataOf = (name: string, version: string | undefined) => Effect.mapError(pool.metadata(name, version), fromReason)

    /** A refusal as the client can match it: a QueueFull names the request's own id, when it has one (the engine knows another, or none yet). */
    const refusedAs = (reason: InferenceError.Reason, id: string) =>
      fromReason(reason._tag === "QueueFull" && id !== "" ? new InferenceError.QueueFull({ modelId: reason.modelId, requestId: id, capacity: reason.capacity, bound: reason.bound }) : reason)

    const invalid = (name: string, version: string, reason: InferenceError.InvalidInput) =>
      Effect.andThen(engine.recordRefused(name, reason, version), Effect.fail(fromReason(reason)))

    /** One inference; `deadlineMs` is the call's deadline (Date.now() scale), if any. */
    const infer = (message: GrpcCodec.ModelInferRequest, deadlineMs: number | undefined) =>
      Effect.gen(function*() {
        // The deadline counts from here: the message's decoding is inside it (as over HTTP).
        const inAtMs = Date.now()
        const inAtPreciseMs = performance.now()
        const { name, version } = yield* modelParams(message.model_name, message.model_version)
        // Counted as over HTTP (draining: rejected; an unavailable model: backend; a version it lacks: invalid).
        const refuse = (reason: InferenceError.Reason) => Effect.andThen(engine.recordRefused(name, reason, version), Effect.fail(fromReason(reason)))
        const shuttingDown = lifecycle.isShuttingDown()
        const metadata = yield* Effect.catch(pool.metadata(name, version), (reason) => refuse(shuttingDown ? new InferenceError.ShuttingDown({}) : reason))
        // Shutting down: new work is refused, sequences under way go on (Triton's rule; as over HTTP).
        if (shuttingDown && !engine.sequencesUnderWayUnsafe(name, metadata.version)) return yield* refuse(new InferenceError.ShuttingDown({}))
        // not while shutting down: what is let through then is a sequence's next request, or new work refused once decoded
        if (!shuttingDown) yield* Effect.mapError(engine.checkAdmission(name, metadata.version, metadata), (e) => refusedAs(e.reason, message.id))
        const oip = GrpcCodec.toOip(message)
        if (typeof oip === "string") return yield* invalid(name, metadata.version, new InferenceError.InvalidInput({ modelId: name, detail: oip }))
        const body = Oip.decodeInferRequest(oip.body)
        if ("error" in body) return yield* invalid(name, metadata.version, new InferenceError.InvalidInput({ modelId: name, detail: body.error }))
        const prepared = Oip.prepare(metadata, body, oip.binary)
        if (prepared instanceof InferenceError.InvalidInput) return yield* invalid(name, metadata.version, prepared)
        if (shuttingDown && !engine.takesSequenceUnsafe(name, metadata.version, prepared.sequence)) {
          const reason = new InferenceError.ShuttingDown({})
          return yield* Effect.andThen(engine.recordRefused(name, reason, metadata.version), Effect.fail(fromReason(reason)))
        }
        // The call's deadline when it is sooner than the request's timeout (the default when it names none).
        let timeout = prepared.timeout
        if (deadlineMs !== undefined) {
          const left = Duration.millis(Math.max(1, deadlineMs - inAtMs))
          if (Duration.isGreaterThan(timeout ?? InferenceRequest.defaultTimeout, left)) timeout = left
        }
        const request = InferenceRequest.make(name, prepared.inputs, {
          // As the client named it (or not): the engine admits it to a version, which the answer names.
          modelVersion: version,
          priority: prepared.priority ?? metadata.defaultPriority,
          timeout,
          metadata: body.id === undefined ? undefined : { id: body.id },
          sequence: prepared.sequence
        })
        const result = yield* engine.infer(request, { spentMs: performance.now() - inAtPreciseMs }).pipe(Effect.mapError((e) => refusedAs(e.reason, message.id)))
        const outputs: Array<readonly [string, (typeof result.outputs)[string]]> = []
        for (const output of prepared.outputs) {
          const tensor = result.outputs[output]
          if (tensor === undefined) return yield* Effect.die(new Error(`model ${name} returned no output ${output} (request ${request.requestId})`))
          outputs.push([output, Oip.answerTensor(metadata, output, tensor, prepared.classifications)])
        }
        return GrpcCodec.inferResponse({ modelName: name, modelVersion: result.modelVersion, id: message.id, outputs })
      })

    const modelMetadata = (message: { name: string; version: string }) =>
      Effect.gen(function*() {
        const { name, version } = yield* modelParams(message.name, message.version)
        const metadata = yield* metadataOf(name, version)
        return {
          name,
          versions: Oip.metadataVersions(yield* pool.models, metadata, version),
          platform: Oip.platformName,
          inputs: Sequence.clientInputs(metadata).map(Oip.tensorMetadata),
          outputs: Sequence.clientOutputs(metadata).map(Oip.tensorMetadata)
        }
      })

    const modelReady = (message: { name: string; version: string }) =>
      Effect.gen(function*() {
        // As Triton's ModelReady: not ready, not an error, for a model it does not have (so that
        // tritonclient's is_model_ready answers False instead of raising), a name no model can
        // have included; a version that is not a number is an error, as Triton's.
        const version = yield* versionParam(message.version)
        if (!ModelRepository.isValidModelName(message.name) || lifecycle.isShuttingDown()) return { ready: false }
        const result = yield* Effect.result(metadataOf(message.name, version))
        return { ready: result._tag === "Success" }
      })

    const modelConfig = (message: { name: string; version: string }) =>
      Effect.gen(function*() {
        const { name, version } = yield* modelParams(message.name, message.version)
        const metadata = yield* metadataOf(name, version)
        return { config: ModelConfiguration.of(metadata, engine.config) }
      })

    const modelStatistics = (message: { name: string; version: string }) =>
      Effect.gen(function*() {
        if (statistics._tag === "None") {
          return yield* Effect.fail(new GrpcFailure({ code: Grpc.status.UNIMPLEMENTED, details: "statistics are not collected by this server (Statistics.layer is not provided)" }))
        }
        if (message.name === "") {
          // Every model's statistics; a version alone names nothing (HTTP has no such route either).
          if (message.version !== "") return yield* Effect.fail(invalidArgument(`model version ${JSON.stringify(message.version.slice(0, 200))} given without a model name`))
          return { model_stats: yield* Effect.mapError(Statistics.report(pool, statistics.value, undefined, undefined), fromReason) }
        }
        const { name, version } = yield* modelParams(message.name, message.version)
        const model_stats = yield* Effect.mapError(Statistics.report(pool, statistics.value, name, version), fromReason)
        return { model_stats }
      })

    const repositoryIndex = (message: { ready: boolean }) =>
      Effect.map(pool.models, (models) => ({
        models: models
          .filter((m) => !message.ready || m.state === "READY")
          .map((m) => ({ name: m.name, version: m.version, state: m.state, reason: m.reason === undefined ? "" : Routes.redact(m.reason, roots) }))
      }))

    const modelControl = (action: "load" | "unload") => (message: { model_name: string; parameters?: Record<string, unknown> | null }) =>
      Effect.gen(function*() {
        const { name } = yield* modelParams(message.model_name, "")
        // Overrides the server cannot apply (config, file:) are refused, as over HTTP.
        const refused = ModelControl.checkParameters(action, GrpcCodec.parameterValues(message.parameters))
        if (refused !== undefined) return yield* Effect.fail(invalidArgument(refused))
        yield* (action === "load" ? ModelControl.load(pool, name, lifecycle) : ModelControl.unload(pool, engine, name)).pipe(
          Effect.catchTag("NotSupported", (e) => Effect.fail(invalidArgument(e.message))),
          Effect.mapError((e) => (e instanceof GrpcFailure ? e : fromReason(e)))
        )
        return {}
      })

    const extensions = Routes.extensionsFor(ModelControl.isEnabled(pool) ? "explicit" : "none").slice()

    return { engine, lifecycle, serverReadiness, infer, modelMetadata, modelReady, modelConfig, modelStatistics, repositoryIndex, modelControl, extensions }
  })

