/**
 * costs: unit costs behind the HTTP request path's figures in the README ("Benchmarks"), on this
 * machine, in µs per operation (medians over rounds, the operations alternating):
 *   - `JSON.parse` of the HTTP benchmark's body (one 784-float MLP row, `bench/lib/oipHttp.ts`);
 *   - the server's whole decoding of that body for the MLP (`InferExchange.decode`: the parse,
 *     the envelope, the tensor);
 *   - a `postMessage` round trip to a worker thread that answers at once, measured as the main
 *     thread's CPU per round trip (`/proc/self/task/<pid>/schedstat`): an empty message, and a
 *     100 KB buffer transferred there and back (as a batch's input buffer goes and comes back);
 *   - the JSON text of a float32 output as an answer carries it (`TensorCodec.encodeData`): 10
 *     values (the MLP's logits) and 65,536 (64 rows of a 1,024-float embedding);
 *   - decoding a gRPC ModelInferRequest of 100,000 floats in typed `fp32_contents`: proto-loader's
 *     decoder alone, and the server's (`GrpcCodec.tolerantRequests`: checked, floats read as bytes).
 * No goal; not part of `npm run bench`. Run it by hand:
 *
 *   node bench/costs.ts [--quick]
 */
import * as Fs from "node:fs"
import { Worker } from "node:worker_threads"
import * as InferExchange from "../src/http/InferExchange.ts"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import * as GrpcCodec from "../src/grpc/GrpcCodec.ts"
import * as Tensor from "../src/Tensor.ts"
import * as TensorCodec from "../src/TensorCodec.ts"
import type * as ModelMetadata from "../src/ModelMetadata.ts"
import { fmt, log, median, parseArgs, section, table, writeResults } from "./lib/common.ts"
import { jsonBody } from "./lib/oipHttp.ts"

const args = parseArgs()
const ROUNDS = args.quick ? 3 : 7
const N = args.quick ? 3_000 : 10_000

const text = jsonBody.toString("utf8")
const mlp: ModelMetadata.ModelMetadata = {
  name: "mlp",
  version: "1",
  inputs: [{ name: "input", dtype: "float32", dims: [-1, 784] }],
  outputs: [{ name: "logits", dtype: "float32", dims: [-1, 10] }],
  batching: { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 64 }
}

/** Outputs to print as JSON: seeded values in (-1, 1), as logits and embeddings are. */
const outputOf = (n: number): Tensor.Tensor => {
  let seed = 7
  return Tensor.float32(Array.from({ length: n }, () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 31 - 1), [n])
}
const logits = outputOf(10)
const embeddings = outputOf(65_536)

/** proto-loader's ModelInfer method, and the server's tolerant one over it. */
type Method = { readonly requestSerialize: (m: unknown) => Buffer; readonly requestDeserialize: (b: Buffer) => unknown }
const inference = (GrpcCodec.loadDefinitions() as unknown as Record<string, Record<string, Method>>)["inference.GRPCInferenceService"]!
const tolerantInfer = GrpcCodec.tolerantRequests(inference)["ModelInfer"]!
const typedMessage = inference["ModelInfer"]!.requestSerialize({
  model_name: "mlp",
  inputs: [{ name: "input", datatype: "FP32", shape: ["1", "100000"], contents: { fp32_contents: Array.from(outputOf(100_000).data as Float32Array) } }]
})

const mainThreadUs = (): number => Number(Fs.readFileSync(`/proc/self/task/${process.pid}/schedstat`, "utf8").split(" ")[0]) / 1000

/** µs of wall time per call of `f`, over `n` calls. */
const timeSync = (n: number, f: () => unknown): number => {
  const t0 = performance.now()
  for (let i = 0; i < n; i++) f()
  return ((performance.now() - t0) * 1000) / n
}

const echo = new Worker(
  `const { parentPort } = require("node:worker_threads")
   parentPort.on("message", (m) => m.buffer === undefined ? parentPort.postMessage(m) : parentPort.postMessage(m, [m.buffer]))`,
  { eval: true }
)

/** Main-thread CPU µs per round trip of `n` sequential messages; with `bytes`, a buffer goes there and back. */
const roundTrips = (n: number, bytes: number | undefined): Promise<number> =>
  new Promise((resolve) => {
    let buffer = bytes === undefined ? undefined : new ArrayBuffer(bytes)
    let left = n
    const c0 = mainThreadUs()
    const send = () => (buffer === undefined ? echo.postMessage({ id: left }) : echo.postMessage({ id: left, buffer }, [buffer]))
    echo.removeAllListeners("message")
    echo.on("message", (m: { readonly buffer?: ArrayBuffer }) => {
      buffer = m.buffer
      if (--left > 0) return send()
      resolve((mainThreadUs() - c0) / n)
    })
    send()
  })

const main = async () => {
  log(`costs: ${ROUNDS} rounds × ${N} operations each`)
  const samples: Record<string, Array<number>> = { parse: [], decode: [], emptyTrip: [], bufferTrip: [], encodeSmall: [], encodeLarge: [], grpcPlain: [], grpcServer: [] }
  // Warm-up: the JIT and the worker.
  timeSync(N, () => JSON.parse(text))
  timeSync(N, () => InferExchange.decode("mlp", undefined, mlp, text, undefined, true))
  await roundTrips(N, undefined)
  await roundTrips(N, 100_352)
  timeSync(N, () => TensorCodec.encodeData(logits))
  timeSync(20, () => TensorCodec.encodeData(embeddings))
  timeSync(10, () => inference["ModelInfer"]!.requestDeserialize(typedMessage))
  timeSync(10, () => tolerantInfer.requestDeserialize(typedMessage))
  for (let round = 0; round < ROUNDS; round++) {
    samples["parse"]!.push(timeSync(N, () => JSON.parse(text)))
    samples["decode"]!.push(timeSync(N, () => InferExchange.decode("mlp", undefined, mlp, text, undefined, true)))
    samples["emptyTrip"]!.push(await roundTrips(N, undefined))
    samples["bufferTrip"]!.push(await roundTrips(N, 100_352))
    samples["encodeSmall"]!.push(timeSync(N, () => TensorCodec.encodeData(logits)))
    samples["encodeLarge"]!.push(timeSync(Math.max(5, N / 500), () => TensorCodec.encodeData(embeddings)))
    samples["grpcPlain"]!.push(timeSync(Math.max(5, N / 1000), () => inference["ModelInfer"]!.requestDeserialize(typedMessage)))
    samples["grpcServer"]!.push(timeSync(Math.max(5, N / 1000), () => tolerantInfer.requestDeserialize(typedMessage)))
  }
  await echo.terminate()
  const rows = [
    { operation: `JSON.parse of the HTTP benchmark's body (${jsonBody.length} bytes)`, "µs (median)": median(samples["parse"]!), kind: "wall" },
    { operation: "InferExchange.decode of that body for the MLP", "µs (median)": median(samples["decode"]!), kind: "wall" },
    { operation: "postMessage round trip to a worker, empty message", "µs (median)": median(samples["emptyTrip"]!), kind: "main-thread CPU" },
    { operation: "… with a 100 KB buffer transferred there and back", "µs (median)": median(samples["bufferTrip"]!), kind: "main-thread CPU" },
    { operation: "JSON text of a float32 output of 10 values", "µs (median)": median(samples["encodeSmall"]!), kind: "wall" },
    { operation: "JSON text of a float32 output of 65,536 values", "µs (median)": median(samples["encodeLarge"]!), kind: "wall" },
    { operation: "gRPC ModelInferRequest of 100,000 fp32_contents, proto-loader's decoder", "µs (median)": median(samples["grpcPlain"]!), kind: "wall" },
    { operation: "… the server's decoding (checked, floats read as bytes)", "µs (median)": median(samples["grpcServer"]!), kind: "wall" }
  ]
  section(`costs: unit costs of the HTTP request path (${ROUNDS} rounds, medians)`)
  console.log(table(rows))
  log(`results: ${writeResults("costs", { rounds: ROUNDS, operations: N, rows, samples })}`)
  log(rows.map((r) => `${r.operation}: ${fmt(r["µs (median)"])} µs`).join("\n"))
}

await main()
