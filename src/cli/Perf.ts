/**
 * `effect-onnx perf`: a load generator for your own model, in the spirit of Triton's
 * `perf_analyzer`. For each concurrency level, that many clients each send their next request as
 * soon as the previous one is answered (a closed loop), for `duration` seconds after a short
 * warm-up; it prints the throughput and the latency percentiles of each level (`--json`: one
 * machine-readable document on stdout).
 *
 * - Target: the engine in this process (default: the model repository `--models`, with the
 *   engine's settings from the environment), or a running Open Inference Protocol server
 *   (`--url http://host:port`), in JSON or, with `--binary`, Triton's binary tensor data.
 *   With `--grpc`, `--url host:port` is a GRPCInferenceService (Triton's, this server's on 8001):
 *   ModelMetadata, then ModelInfer with the tensors in `raw_input_contents`.
 * - Inputs: the records of an NDJSON file (`--input`, the format of `infer`), sent in turn; or
 *   made from the model's metadata (`makeInputs`): each dynamic dim 1, or the dims of the
 *   model's first declared input signature, values within the signature's `values`/`min`/`max`,
 *   else small random numbers.
 * - A stateful model (config.json `sequenceBatching`; over HTTP and gRPC, its configuration's
 *   `sequence_batching`): each client sends sequences of `sequenceLength` requests (Triton's
 *   `perf_analyzer --sequence-length`, default 20), the first a start, the last an end, each
 *   sequence with an integer id of its own (from a random base below 2^30, so that it fits an
 *   int32 CORRID control and another run's ids are unlikely to meet it); a sequence cut by the end of a level gets
 *   one more request, an end, not measured, so that the next level's sequences find room
 *   (`maxSequences`).
 * - Latency is measured at the client, from send to answer; a request that fails (an error
 *   status, an engine error) counts as an error and not in the latencies. A server that is gone
 *   (its connection refused: nothing listens at the address) stops the run with PerfError: the
 *   levels already finished are kept (`onLevel`), the one under way is dropped.
 *
 * The policy parts are pure and tested on their own: `parseLevels`, `makeInputs`, `summarize`,
 * `formatTable`.
 *
 * @module Perf
 */
import { Data, Effect, FileSystem, Stream } from "effect"
import * as Http from "node:http"
import { AsyncInferenceEngine } from "../Engine.ts"
import * as TensorCodec from "../TensorCodec.ts"
import * as InferenceError from "../InferenceError.ts"
import * as InferenceRequest from "../InferenceRequest.ts"
import type * as InputSignature from "../InputSignature.ts"
import * as ModelMetadata from "../ModelMetadata.ts"
import * as Sequence from "../Sequence.ts"
import { ModelPool } from "../ModelPool.ts"
import * as OipClient from "../OipClient.ts"
import type * as Tensor from "../Tensor.ts"
import * as Cli from "./CliCommon.ts"
import * as Infer from "./Infer.ts"
import * as Records from "./Records.ts"

export interface Options {
  readonly model: string
  readonly version?: string | undefined
  readonly levels: ReadonlyArray<number>
  /** Measured seconds per level. */
  readonly durationSeconds: number
  /** Unmeasured seconds before each level. */
  readonly warmupSeconds: number
  /** A running server; undefined: the engine in this process. */
  readonly url?: string | undefined
  readonly binary: boolean
  /** With `url` (host:port, or grpc://host:port): Triton's GRPCInferenceService instead of HTTP. */
  readonly grpc?: boolean | undefined
  /** NDJSON records to send in turn; undefined: inputs made from the metadata. */
  readonly input?: string | undefined
  readonly repository?: string | undefined
  /** Where the progress lines go (stderr in the CLI). */
  readonly messages: (line: string) => void
  /** Called with each level's result as it finishes, so that a run stopped part-way still has them. */
  readonly onLevel?: ((result: LevelResult) => void) | undefined
  /** A stateful model's requests per sequence (default `defaultSequenceLength`). */
  readonly sequenceLength?: number | undefined
}

/** Requests per sequence of a stateful model by default: perf_analyzer's `--sequence-length`. */
export const defaultSequenceLength = 20

/** A perf run that cannot go on: bad inputs, an unreachable server, an unknown model. */
export class PerfError extends Data.TaggedError("PerfError")<{ readonly message: string }> {}

/** `1,16,64` → [1, 16, 64]; a message for anything else (an empty entry, `1,,2` or `1,`, included). */
export const parseLevels = (text: string): ReadonlyArray<number> | string => {
  if (text.trim() === "") return "expected a comma-separated list of positive integers, e.g. 1,16,64"
  const parts = text.split(",").map((p) => p.trim())
  const levels: Array<number> = []
  for (const part of parts) {
    if (part === "") return `an empty entry in ${JSON.stringify(text)}: expected a comma-separated list of positive integers, e.g. 1,16,64`
    if (!/^\d+$/.test(part) || Number(part) < 1 || Number(part) > 4096) return `invalid concurrency ${JSON.stringify(part)}: an integer from 1 to 4096`
    levels.push(Number(part))
  }
  return levels
}

/**
 * `--url` for HTTP: `http://HOST[:PORT]` (a path after it is ignored); a message for anything else,
 * such as `localhost:8000`, which the URL parser reads as the scheme `localhost:`.
 */
export const checkHttpUrl = (text: string, grpcHint = true): string | undefined => {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    return `invalid URL ${JSON.stringify(text)}: expected http://HOST:PORT, e.g. http://127.0.0.1:8000`
  }
  if (url.protocol !== "http:" || url.hostname === "") {
    return `${JSON.stringify(text)} is not an http:// URL: expected http://HOST:PORT, e.g. http://127.0.0.1:8000${grpcHint ? " (with --grpc: HOST:PORT)" : ""}`
  }
  return undefined
}

/**
 * Why `text` is not a gRPC address (`HOST:PORT`, or `grpc://HOST:PORT`), or undefined: an
 * http(s):// URL or a missing port would reach grpc-js as a name it cannot resolve.
 */
export const checkGrpcAddress = (text: string): string | undefined => {
  const address = text.replace(/^grpc:\/\//, "")
  const expected = "expected HOST:PORT, e.g. 127.0.0.1:8001 (the server's gRPC port)"
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(address)) return `${JSON.stringify(text)} is a URL: ${expected}`
  const match = /^(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d{1,5})$/.exec(address)
  if (match === null || Number(match[2]) > 65535) return `invalid address ${JSON.stringify(text)}: ${expected}`
  return undefined
}

/** A small deterministic generator (mulberry32), so that a run's inputs are repeatable. */
const random = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const isFloat = (dtype: Tensor.DataType) => dtype === "float16" || dtype === "float32" || dtype === "float64"

/**
 * `count` OIP request inputs for `metadata`: for each input, the dims of the model's first
 * declared signature that names it, else its own dims, a dynamic dim (-1) becoming 1; values
 * from the signature's `values` (in turn), else uniform within its `min`/`max`, else small
 * random numbers (0…1 for floats, 0…9 for integers, true/false, "x" for strings). Pure.
 */
export const makeInputs = (metadata: ModelMetadata.ModelMetadata, count: number, seed = 1): ReadonlyArray<ReadonlyArray<TensorCodec.RequestInput>> => {
  const next = random(seed)
  const signature: InputSignature.Signature = metadata.signatures?.[0] ?? {}
  return Array.from({ length: count }, () =>
    Sequence.clientInputs(metadata).map((spec) => {
      const constraint = signature[spec.name]
      const shape = (constraint?.dims ?? spec.dims).map((d) => (d < 0 ? 1 : d))
      const size = shape.reduce((a, b) => a * b, 1)
      const value = (i: number): unknown => {
        if (constraint?.values !== undefined) return constraint.values[i % constraint.values.length]!
        if (spec.dtype === "bool") return next() < 0.5
        if (spec.dtype === "string") return "x"
        const lo = constraint?.min ?? 0
        const hi = constraint?.max ?? (isFloat(spec.dtype) ? 1 : 9)
        const v = lo + next() * (hi - lo)
        return isFloat(spec.dtype) ? v : Math.round(v)
      }
      return { name: spec.name, datatype: TensorCodec.datatypeOf[spec.dtype], shape, data: Array.from({ length: size }, (_, i) => value(i)) } as TensorCodec.RequestInput
    }))
}

export interface LevelResult {
  readonly concurrency: number
  readonly requests: number
  readonly errors: number
  /** Answered requests per second (errors excluded). */
  readonly throughput: number
  readonly latencyMs: { readonly avg: number; readonly p50: number; readonly p90: number; readonly p95: number; readonly p99: number; readonly max: number }
  /** The first few distinct errors, for the report. */
  readonly errorSamples: ReadonlyArray<string>
}

/** The result of one level from its latencies (ms, of answered requests), errors and measured seconds. Pure. */
export const summarize = (concurrency: number, latenciesMs: ReadonlyArray<number>, errors: ReadonlyArray<string>, seconds: number): LevelResult => {
  const sorted = [...latenciesMs].sort((a, b) => a - b)
  const at = (q: number) => (sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!)
  const round = (n: number) => Math.round(n * 1000) / 1000
  return {
    concurrency,
    requests: sorted.length,
    errors: errors.length,
    throughput: seconds > 0 ? Math.round((sorted.length / seconds) * 10) / 10 : 0,
    latencyMs: {
      avg: round(sorted.length === 0 ? 0 : sorted.reduce((a, b) => a + b, 0) / sorted.length),
      p50: round(at(0.5)),
      p90: round(at(0.9)),
      p95: round(at(0.95)),
      p99: round(at(0.99)),
      max: round(sorted.at(-1) ?? 0)
    },
    errorSamples: [...new Set(errors)].slice(0, 3)
  }
}

/** The results as a fixed-width table, one row per level. Pure. */
export const formatTable = (results: ReadonlyArray<LevelResult>): string => {
  const header = ["concurrency", "requests", "errors", "infer/s", "avg ms", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms"]
  const rows = results.map((r) => [
    String(r.concurrency),
    String(r.requests),
    String(r.errors),
    r.throughput.toFixed(1),
    ...[r.latencyMs.avg, r.latencyMs.p50, r.latencyMs.p90, r.latencyMs.p95, r.latencyMs.p99, r.latencyMs.max].map((v) => v.toFixed(2))
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padStart(widths[i]!)).join("  ")
  return [line(header), ...rows.map(line)].join("\n")
}

/** One request, answered (true) or failed (its error text); fails with PerfError when the server is gone. */
/** Sends one request (with its sequence, for a stateful model): true when it succeeded, else why not. */
type Send = (inputs: Tensor.TensorMap, sequence?: Sequence.Flags) => Effect.Effect<true | string, PerfError>

/** This process's first sequence id less one: random, below 2^30, so that its ids (a counter on from it) stay below 2^31. */
const idBase = Math.floor(Math.random() * 2 ** 30)
let sequences = 0

/** A client's sequences of a stateful model (`sequenceFlags`). */
export interface SequenceFlags {
  /** The flags of its next request. */
  readonly next: () => Sequence.Flags
  /** The flags of a request that ends the sequence under way, if one is (not at its end yet). */
  readonly closing: () => Sequence.Flags | undefined
}

/**
 * A client's sequences of a stateful model: `length` requests to a sequence, the first a start,
 * the last an end, each sequence with an integer id no other client of this run uses (and, from
 * a random base, unlikely to be another run's), below 2^31: it fits a model's int32 CORRID
 * control, which a text id would not. Pure but for the id counter.
 */
export const sequenceFlags = (length: number): SequenceFlags => {
  let id = 0
  let step = 0
  return {
    next: () => {
      if (step === 0) id = idBase + ++sequences
      const flags = { id, start: step === 0, end: step === length - 1 }
      step = (step + 1) % length
      return flags
    },
    closing: () => {
      if (step === 0) return undefined
      step = 0
      return { id, start: false, end: true }
    }
  }
}

/** Connection errors that mean no server listens at the address any more (not one busy or slow). */
const goneCodes: ReadonlySet<string> = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "ENOTFOUND"])

/** The stop of a run whose server is gone (`goneCodes`). */
const serverGone = (where: string, why: string) => new PerfError({ message: `${where} stopped answering (${why}): the server is gone` })

/** Runs each level in turn with `send`, cycling through `inputs`. */
const runLevels = (options: Options, inputs: ReadonlyArray<Tensor.TensorMap>, send: Send, stateful = false) =>
  Effect.gen(function*() {
    const results: Array<LevelResult> = []
    let next = 0
    const pick = () => inputs[next++ % inputs.length]!
    for (const concurrency of options.levels) {
      const warmupEnd = performance.now() + options.warmupSeconds * 1000
      const end = warmupEnd + options.durationSeconds * 1000
      const latencies: Array<number> = []
      const errors: Array<string> = []
      const client = Effect.gen(function*() {
        const nextFlags = stateful ? sequenceFlags(options.sequenceLength ?? defaultSequenceLength) : undefined
        while (performance.now() < end) {
          const started = performance.now()
          const outcome = yield* send(pick(), nextFlags?.next())
          const finished = performance.now()
          if (started < warmupEnd || finished > end) continue
          if (outcome === true) latencies.push(finished - started)
          else errors.push(outcome)
        }
        // the sequence the level's end cut: ended on the server (not measured), which would keep it until it went idle
        const closing = nextFlags?.closing()
        if (closing !== undefined) yield* send(pick(), closing)
      })
      options.messages(`concurrency ${concurrency}: ${options.warmupSeconds} s warm-up, ${options.durationSeconds} s measured…`)
      yield* Effect.forEach(Array.from({ length: concurrency }), () => client, { concurrency: "unbounded", discard: true })
      const result = summarize(concurrency, latencies, errors, options.durationSeconds)
      options.messages(
        `concurrency ${concurrency}: ${result.throughput} infer/s, p50 ${result.latencyMs.p50} ms, p99 ${result.latencyMs.p99} ms, ${result.errors} errors${
          result.errorSamples.length > 0 ? ` (${result.errorSamples.join("; ")})` : ""
        }`
      )
      results.push(result)
      options.onLevel?.(result)
    }
    return results
  })

/** The inputs to send: the NDJSON file's records, or 16 made from the metadata. */
const inputsFor = (metadata: ModelMetadata.ModelMetadata, file: string | undefined) =>
  Effect.gen(function*() {
    if (file === undefined) {
      const made: Array<Tensor.TensorMap> = []
      for (const inputs of makeInputs(metadata, 16)) {
        const decoded = TensorCodec.decodeInputs(metadata, inputs)
        // a stateful model's state is the engine's to add: checked with the initial one in its place
        const invalid = decoded instanceof InferenceError.InvalidInput
          ? decoded
          : ModelMetadata.validateInputs(metadata, Sequence.asRun(metadata.sequence, decoded))
        if (invalid !== undefined) {
          return yield* new PerfError({ message: `cannot make inputs for model ${metadata.name} from its metadata (${invalid.message}): give records with --input FILE.ndjson` })
        }
        made.push(decoded as Tensor.TensorMap)
      }
      return made
    }
    // Read as `infer` reads its input: a line that is not UTF-8, or over its bound (never held), is named, not echoed.
    const fs = yield* FileSystem.FileSystem
    const records = yield* Infer.inputLines(fs, file, Infer.defaultMaxLineBytes).pipe(
      Stream.mapError((e) => new PerfError({ message: `cannot read ${file}: ${e.message}` })),
      Stream.mapEffect((line) => {
        const decoded = Infer.decodeLine(metadata, Infer.defaultMaxLineBytes, line)
        return Records.isMalformed(decoded)
          ? Effect.fail(new PerfError({ message: `${file} line ${decoded.line}: ${decoded.reason}` }))
          : Effect.succeed(decoded.inputs)
      }),
      Stream.runCollect
    )
    if (records.length === 0) return yield* new PerfError({ message: `${file} holds no record` })
    return records
  })

// -- over HTTP ------------------------------------------------------------------

interface HttpAnswer {
  readonly status: number
  readonly body: string
}

const httpRequest = (agent: Http.Agent, url: URL, method: string, path: string, body?: { readonly bytes: Uint8Array | string; readonly headers: Record<string, string> }) =>
  Effect.callback<HttpAnswer, string>((resume) => {
    const request = Http.request({
      host: url.hostname,
      port: url.port === "" ? 80 : Number(url.port),
      method,
      path,
      agent,
      headers: body === undefined ? {} : { ...body.headers, "content-length": String(Buffer.byteLength(body.bytes)) }
    }, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (c: Buffer) => chunks.push(c))
      response.on("end", () => resume(Effect.succeed({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") })))
      response.on("error", (e: NodeJS.ErrnoException) => resume(Effect.fail(e.code ?? e.message)))
    })
    request.on("error", (e: NodeJS.ErrnoException) => resume(Effect.fail(e.code ?? e.message)))
    request.end(body?.bytes)
    return Effect.sync(() => request.destroy())
  })

/** The model's metadata from a server's `GET /v2/models/{name}[/versions/{v}]`. */
const remoteMetadata = (agent: Http.Agent, url: URL, model: string, version: string | undefined) =>
  Effect.gen(function*() {
    const path = `/v2/models/${encodeURIComponent(model)}${version === undefined ? "" : `/versions/${encodeURIComponent(version)}`}`
    const answer = yield* httpRequest(agent, url, "GET", path).pipe(Effect.mapError((e) => new PerfError({ message: `cannot reach ${url.origin}: ${e}` })))
    if (answer.status !== 200) return yield* new PerfError({ message: `${url.origin}${path} answered ${answer.status}: ${answer.body.slice(0, 300)}` })
    const metadata = OipClient.decodeMetadata(model, version, Buffer.from(answer.body, "utf8"))
    if (typeof metadata === "string") return yield* new PerfError({ message: `model ${model}: ${url.origin} answered ${metadata}` })
    return metadata
  })

/** One inference request body for `inputs`: JSON, or JSON and binary tensor data. */
export const encodeRequest = (
  inputs: Tensor.TensorMap,
  binary: boolean,
  sequence?: Sequence.Flags
): { readonly bytes: Uint8Array | string; readonly headers: Record<string, string> } => {
  const parameters = sequence === undefined ? undefined : { sequence_id: sequence.id, sequence_start: sequence.start === true, sequence_end: sequence.end === true }
  if (!binary) {
    const parts = Object.entries(inputs).map(([name, tensor]) =>
      `{"name":${JSON.stringify(name)},"datatype":"${TensorCodec.datatypeOf[tensor.dtype]}","shape":[${tensor.dims.join(",")}],"data":${TensorCodec.encodeData(tensor)}}`
    )
    const head = parameters === undefined ? "" : `"parameters":${JSON.stringify(parameters)},`
    return { bytes: `{${head}"inputs":[${parts.join(",")}]}`, headers: { "content-type": "application/json" } }
  }
  const blobs = Object.values(inputs).map(TensorCodec.encodeBinaryData)
  const header = JSON.stringify({
    ...(parameters === undefined ? {} : { parameters }),
    inputs: Object.entries(inputs).map(([name, tensor], i) => ({
      name,
      datatype: TensorCodec.datatypeOf[tensor.dtype],
      shape: tensor.dims,
      parameters: { binary_data_size: blobs[i]!.length }
    }))
  })
  const json = new TextEncoder().encode(header)
  const bytes = new Uint8Array(json.length + blobs.reduce((n, b) => n + b.length, 0))
  bytes.set(json, 0)
  let offset = json.length
  for (const blob of blobs) {
    bytes.set(blob, offset)
    offset += blob.length
  }
  return { bytes, headers: { "content-type": "application/octet-stream", [TensorCodec.inferenceHeaderContentLength]: String(json.length) } }
}

const overHttp = (options: Options & { readonly url: string }) =>
  Effect.gen(function*() {
    const url = yield* Effect.try({ try: () => new URL(options.url), catch: () => new PerfError({ message: `invalid --url ${JSON.stringify(options.url)}` }) })
    const agent = new Http.Agent({ keepAlive: true, maxSockets: Math.max(...options.levels) })
    yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
    const metadata = yield* remoteMetadata(agent, url, options.model, options.version)
    const inputs = yield* inputsFor(metadata, options.input)
    const encoded = new Map(inputs.map((i) => [i, encodeRequest(i, options.binary)] as const))
    const modelPath = `/v2/models/${encodeURIComponent(options.model)}${options.version === undefined ? "" : `/versions/${encodeURIComponent(options.version)}`}`
    const path = `${modelPath}/infer`
    const stateful = yield* remoteStateful(agent, url, `${modelPath}/config`)
    const send: Send = (i, sequence) =>
      // a sequence's parameters differ at each request: encoded then
      httpRequest(agent, url, "POST", path, sequence === undefined ? encoded.get(i)! : encodeRequest(i, options.binary, sequence)).pipe(
        Effect.map((answer): true | string => (answer.status === 200 ? true : `HTTP ${answer.status}: ${answer.body.slice(0, 120)}`)),
        Effect.catch((e) => goneCodes.has(e) ? Effect.fail(serverGone(url.origin, e)) : Effect.succeed(e))
      )
    return yield* runLevels(options, inputs, send, stateful)
  }).pipe(Effect.scoped)

/**
 * Whether the server's configuration of the model (`GET …/config`, Triton's model configuration
 * extension) has `sequence_batching`: a stateful model. A server without the extension answers
 * 404 or 400: not stateful as far as this client can tell.
 */
const remoteStateful = (agent: Http.Agent, url: URL, path: string) =>
  httpRequest(agent, url, "GET", path).pipe(
    Effect.map((answer) => {
      if (answer.status !== 200) return false
      try {
        return (JSON.parse(answer.body) as { sequence_batching?: unknown }).sequence_batching !== undefined
      } catch {
        return false
      }
    }),
    Effect.mapError((e) => new PerfError({ message: `cannot reach ${url.origin}: ${e}` }))
  )

// -- over gRPC ------------------------------------------------------------------

/** The client of Triton's GRPCInferenceService at `address` (host:port), closed with the scope. */
const grpcClient = (address: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const Grpc = await import("@grpc/grpc-js")
      const GrpcCodec = await import("../grpc/GrpcCodec.ts")
      const proto = Grpc.loadPackageDefinition(GrpcCodec.loadDefinitions()) as unknown as {
        inference: { GRPCInferenceService: new (address: string, credentials: unknown) => Record<string, Function> & { close: () => void } }
      }
      return new proto.inference.GRPCInferenceService(address, Grpc.credentials.createInsecure())
    }),
    (client) => Effect.sync(() => client.close())
  )

/** A unary call as an Effect: the answer, or the error's details (its gRPC status code in `code`). */
const unary = (client: Record<string, Function>, method: string, request: unknown) =>
  Effect.callback<any, { readonly code: number | undefined; readonly details: string }>((resume) => {
    const call = client[method]!.call(client, request, (error: { code?: number; details?: string; message: string } | null, response: unknown) =>
      resume(error === null ? Effect.succeed(response) : Effect.fail({ code: error.code, details: error.details ?? error.message })))
    return Effect.sync(() => call.cancel())
  })

/** grpc-js's UNAVAILABLE (14) when it cannot connect at all, not a server's own UNAVAILABLE answer (shutting down). */
const grpcGone = (error: { readonly code: number | undefined; readonly details: string }): boolean =>
  error.code === 14 && /ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|No connection established/.test(error.details)

const overGrpc = (options: Options & { readonly url: string }) =>
  Effect.gen(function*() {
    const address = options.url.replace(/^grpc:\/\//, "")
    const client = yield* grpcClient(address)
    const answer = yield* unary(client, "ModelMetadata", { name: options.model, version: options.version ?? "" }).pipe(
      Effect.mapError((e) => new PerfError({ message: `gRPC ${address} ModelMetadata: ${e.details}` }))
    )
    const spec = (t: { name: string; datatype: string; shape: Array<string | number> }): ModelMetadata.TensorSpec | undefined => {
      const dtype = TensorCodec.dtypeOf(t.datatype)
      return dtype === undefined ? undefined : { name: t.name, dtype, dims: t.shape.map(Number) }
    }
    const inputs = (answer.inputs as Array<{ name: string; datatype: string; shape: Array<string> }>).map(spec)
    if (inputs.some((i) => i === undefined)) return yield* new PerfError({ message: `model ${options.model} has an input of a datatype this client does not know` })
    const metadata: ModelMetadata.ModelMetadata = {
      name: answer.name,
      version: options.version ?? (answer.versions as Array<string>).at(-1) ?? "1",
      inputs: inputs as Array<ModelMetadata.TensorSpec>,
      outputs: (answer.outputs as Array<{ name: string; datatype: string; shape: Array<string> }>).map(spec).filter((o): o is ModelMetadata.TensorSpec => o !== undefined)
    }
    const records = yield* inputsFor(metadata, options.input)
    const requests = new Map(records.map((record) => [record, {
      model_name: options.model,
      model_version: options.version ?? "",
      inputs: Object.entries(record).map(([name, tensor]) => ({ name, datatype: TensorCodec.datatypeOf[tensor.dtype], shape: tensor.dims })),
      raw_input_contents: Object.values(record).map((tensor) => Buffer.from(TensorCodec.encodeBinaryData(tensor)))
    }] as const))
    // a stateful model's configuration has sequence_batching (a server without the RPC: not stateful, as far as this client can tell)
    const stateful = yield* unary(client, "ModelConfig", { name: options.model, version: options.version ?? "" }).pipe(
      Effect.map((answer) => answer?.config?.sequence_batching != null),
      Effect.orElseSucceed(() => false)
    )
    const send: Send = (i, sequence) =>
      unary(client, "ModelInfer", sequence === undefined ? requests.get(i)! : {
        ...requests.get(i)!,
        parameters: {
          sequence_id: { string_param: String(sequence.id) },
          sequence_start: { bool_param: sequence.start === true },
          sequence_end: { bool_param: sequence.end === true }
        }
      }).pipe(
        Effect.as(true as const),
        Effect.catch((e) => grpcGone(e) ? Effect.fail(serverGone(`gRPC ${address}`, e.details)) : Effect.succeed(`gRPC: ${e.details}`))
      )
    return yield* runLevels(options, records, send, stateful)
  }).pipe(Effect.scoped)

// -- in process ---------------------------------------------------------------------

const inProcess = (options: Options) =>
  Effect.gen(function*() {
    const pool = yield* ModelPool
    const engine = yield* AsyncInferenceEngine
    const metadata = yield* pool.metadata(options.model, options.version).pipe(Effect.mapError((reason) => new PerfError({ message: InferenceError.make(reason).message })))
    const inputs = yield* inputsFor(metadata, options.input)
    const send: Send = (i, sequence) =>
      Effect.match(engine.infer(InferenceRequest.make(options.model, i, { modelVersion: options.version, sequence })), {
        onSuccess: (): true | string => true,
        onFailure: (e) => `${e.reason._tag}: ${e.message}`
      })
    return yield* runLevels(options, inputs, send, metadata.sequence !== undefined)
  }).pipe(
    Effect.provide(Infer.engineLayer({ repository: options.repository, concurrency: Math.max(...options.levels), serviceName: "effect-onnx-perf" })),
    // A worker thread the engine's close left inside a native run: exiting now would abort the process.
    Effect.ensuring(Cli.awaitLeftRunning())
  )

/** Runs every level against the target and returns the results. */
export const run = (options: Options) =>
  options.url === undefined ? inProcess(options) : options.grpc === true ? overGrpc({ ...options, url: options.url }) : overHttp({ ...options, url: options.url })
