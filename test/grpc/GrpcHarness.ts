/**
 * A gRPC server over the real engine and the HTTP tests' scripted pool, on a free port of
 * 127.0.0.1, and a `@grpc/grpc-js` client of it, as a Triton user's client would call it.
 */
import * as Grpc from "@grpc/grpc-js"
import { Context, Effect, Layer, type Scope } from "effect"
import { type AsyncConfig, AsyncConfigService } from "../../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import * as GrpcCodec from "../../src/grpc/GrpcCodec.ts"
import * as GrpcServer from "../../src/grpc/GrpcServer.ts"
import { Lifecycle } from "../../src/http/Lifecycle.ts"
import type { ModelPool } from "../../src/ModelPool.ts"
import { Statistics } from "../../src/http/Statistics.ts"
import { type Event, layerRecording, TelemetryCollector, TelemetryLog } from "../../src/Telemetry.ts"
import { makeTestPool, secretPath } from "../http/TestApp.ts"

const definitions = GrpcCodec.loadDefinitions()
const proto = Grpc.loadPackageDefinition(definitions) as any

export interface Reply<A = any> {
  readonly error?: Grpc.ServiceError | undefined
  readonly response?: A | undefined
}

export interface HarnessOptions {
  readonly config?: Partial<AsyncConfig> | undefined
  /** Triton's strict readiness. Default false, as HTTP's TestApp (the scripted pool has a broken model). */
  readonly strictReadiness?: boolean | undefined
  /** Record every telemetry call (the harness's `telemetry`) instead of the metrics collector. */
  readonly recordTelemetry?: boolean | undefined
  /** Where to bind. Default 127.0.0.1. */
  readonly host?: string | undefined
  readonly maxMessageBytes?: number | undefined
  readonly slowLatency?: import("effect").Duration.Input | undefined
  /** Another pool than the scripted one (a real OnnxModelPool, say). */
  readonly pool?: Layer.Layer<ModelPool, unknown> | undefined
  readonly maxConcurrentStreams?: number | undefined
  readonly maxOpenCalls?: number | undefined
  readonly maxConnections?: number | undefined
  readonly streamResets?: { readonly burst: number; readonly perSecond: number } | undefined
  readonly streamOrder?: "completion" | "request" | undefined
}

export const makeHarness = (options: HarnessOptions = {}) =>
  Effect.gen(function*() {
    const testPool = yield* makeTestPool({ slowLatency: options.slowLatency ?? "50 millis" })
    const recorded = options.recordTelemetry === true ? yield* Layer.build(layerRecording) : undefined
    const services = yield* Layer.build(
      GrpcServer.layer({
        host: options.host ?? "127.0.0.1",
        port: 0,
        maxMessageBytes: options.maxMessageBytes ?? 1024 * 1024,
        serverName: "effect-onnx",
        serverVersion: "0.0.0-test",
        redactPaths: [secretPath],
        strictReadiness: options.strictReadiness ?? false,
        shutdownTimeout: "1 second",
        maxConcurrentStreams: options.maxConcurrentStreams,
        maxOpenCalls: options.maxOpenCalls,
        maxConnections: options.maxConnections,
        streamResets: options.streamResets,
        streamOrder: options.streamOrder
      }).pipe(
        Layer.provideMerge(AsyncInferenceEngine.layer),
        Layer.provideMerge(Statistics.layer),
        Layer.provideMerge(Layer.mergeAll(
          options.pool === undefined ? testPool.layer : Layer.orDie(options.pool),
          recorded === undefined ? TelemetryCollector.layer : Layer.succeedContext(recorded),
          AsyncConfigService.layerWith(options.config ?? {}),
          Lifecycle.layer
        ))
      )
    )
    const { port, server, address, openCalls } = Context.get(services, GrpcServer.GrpcServer)
    const client = new proto.inference.GRPCInferenceService(address, Grpc.credentials.createInsecure())
    const health = new proto.grpc.health.v1.Health(address, Grpc.credentials.createInsecure())
    yield* Effect.addFinalizer(() => Effect.sync(() => {
      client.close()
      health.close()
    }))
    /** One unary call; never fails (the error is in the reply). */
    const call = <A = any>(method: string, request: unknown, callOptions: Grpc.CallOptions = {}, on: any = client): Effect.Effect<Reply<A>> =>
      Effect.callback<Reply<A>>((resume) => {
        const c = on[method](request, callOptions, (error: Grpc.ServiceError | null, response: A) =>
          resume(Effect.succeed(error === null ? { response } : { error })))
        return Effect.sync(() => c.cancel())
      })
    return {
      ...testPool,
      address,
      port,
      server,
      openCalls,
      client,
      health,
      call,
      engine: Context.get(services, AsyncInferenceEngine),
      /** Every telemetry record call (none unless `recordTelemetry`). */
      telemetry: recorded === undefined ? [] as ReadonlyArray<Event> : Context.get(recorded, TelemetryLog).events,
      lifecycle: Context.get(services, Lifecycle)
    }
  })

export type Harness = Effect.Success<ReturnType<typeof makeHarness>>

/** Float32 values as little-endian bytes. */
export const f32 = (values: ReadonlyArray<number>): Buffer => Buffer.from(new Float32Array(values).buffer)

/** Little-endian bytes as float32 values. */
export const fromF32 = (bytes: Uint8Array): Array<number> => Array.from(new Float32Array(new Uint8Array(bytes).buffer))

/** A ModelInferRequest for `echo` with `values` in raw contents. */
export const echoRaw = (values: ReadonlyArray<number>, extra: Record<string, unknown> = {}) => ({
  model_name: "echo",
  inputs: [{ name: "x", datatype: "FP32", shape: [values.length / 4, 4] }],
  raw_input_contents: [f32(values)],
  ...extra
})

export type { Scope }

/** A new ModelStreamInfer call, its answers as they come, and its end (rejected on an error status). */
export const openStream = (client: any) => {
  const stream = client.ModelStreamInfer()
  const received: Array<any> = []
  const ended = new Promise<void>((resolve, reject) => {
    stream.on("data", (m: any) => received.push(m))
    stream.on("end", () => resolve())
    stream.on("error", reject)
  })
  return { stream, received, ended }
}
