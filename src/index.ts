/**
 * effect-onnx: asynchronous ONNX model inference on Effect and onnxruntime-node.
 *
 * Each module is a namespace here and a deep import of its own (`effect-onnx/Engine`).
 * Effect users compose `Engine.AsyncInferenceEngine.layer` with `OnnxModelPool.layer`,
 * `Telemetry.TelemetryCollector.layer` and `AsyncConfig.AsyncConfigService` (or take
 * `InferenceClient.layer`, all of them at once); other code uses `InferenceClient.make`.
 *
 * @module index
 */

// The engine and its domain
export * as AsyncConfig from "./AsyncConfig.ts"
export * as CancelToken from "./CancelToken.ts"
export * as Engine from "./Engine.ts"
export * as InferenceError from "./InferenceError.ts"
export * as InferenceRequest from "./InferenceRequest.ts"
export * as InferenceResult from "./InferenceResult.ts"
export * as Priority from "./Priority.ts"
export * as Tensor from "./Tensor.ts"
export * as TensorCodec from "./TensorCodec.ts"

// Scheduling policy and mechanism
export * as Batch from "./Batch.ts"
export * as BatchPolicy from "./BatchPolicy.ts"
export * as PriorityQueue from "./PriorityQueue.ts"
export * as QueuePolicy from "./QueuePolicy.ts"
export * as ResponseCache from "./ResponseCache.ts"
export * as SequenceTable from "./SequenceTable.ts"

// Models
export * as InputSignature from "./InputSignature.ts"
export * as ModelMetadata from "./ModelMetadata.ts"
export * as ModelPool from "./ModelPool.ts"
export * as ModelRepository from "./ModelRepository.ts"
export * as Sequence from "./Sequence.ts"
export * as VersionPolicy from "./VersionPolicy.ts"
export * as Warmup from "./Warmup.ts"
export * as OnnxModelPool from "./onnx/OnnxModelPool.ts"

// Observability
export * as Otel from "./Otel.ts"
export * as Telemetry from "./Telemetry.ts"

// The one composed layer every entry point runs
export * as Live from "./Live.ts"

// Without Effect
export * as InferenceClient from "./InferenceClient.ts"

// A client of a server (this one, Triton, KServe) over the Open Inference Protocol
export * as OipClient from "./OipClient.ts"

// The Open Inference Protocol server
export * as Lifecycle from "./http/Lifecycle.ts"
export * as Metrics from "./http/Metrics.ts"
export * as ModelConfiguration from "./http/ModelConfiguration.ts"
export * as Oip from "./http/Oip.ts"
export * as RepositoryPoll from "./http/RepositoryPoll.ts"
export * as Routes from "./http/Routes.ts"
export * as Server from "./http/Server.ts"
export * as ServerConfig from "./http/ServerConfig.ts"
export * as Statistics from "./http/Statistics.ts"

// The same protocol over gRPC
export * as GrpcCodec from "./grpc/GrpcCodec.ts"
export * as GrpcServer from "./grpc/GrpcServer.ts"
