/**
 * grpc: the same server process (`node src/bin/server.ts`, the MLP with batching off) driven
 * over four paths, closed loop at 1 and 64 outstanding requests, one 784-float row a request:
 *
 *   (a) http json     POST /v2/models/mlp/infer, JSON both ways (keep-alive connections)
 *   (b) http binary   the same with Triton's binary tensor data both ways
 *   (c) grpc unary    ModelInfer with raw_input_contents / raw_output_contents (@grpc/grpc-js client, one channel)
 *   (d) grpc stream   ModelStreamInfer: one bidirectional stream, answers matched by id
 *
 * The load generator runs on the same machine: its own cost (a grpc-js client costs more CPU
 * than node:http) takes CPU from the server, so the server's CPU per request, read from /proc, is
 * reported beside the throughput.
 *
 * Contenders alternate within every round (the starting one rotating); figures are medians over
 * rounds. Before the load, the message codec alone, µs per message, for the two candidate
 * libraries (`codec`).
 *
 * Every block is also printed as one JSON line (`{"bench":"grpc",…}`) for machines.
 *
 * Usage: npm run bench -- grpc [--quick], or node --expose-gc bench/grpc.ts [--quick] [--rounds=N]
 *        [--seconds=S] [--levels=1,64]
 */
import * as Grpc from "@grpc/grpc-js"
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Os from "node:os"
import * as Path from "node:path"
import * as GrpcCodec from "../src/grpc/GrpcCodec.ts"
import { alternate, type Contender, fmt, log, median, mlpData, modelsDir, parseArgs, repoRoot, section, table, writeResults } from "./lib/common.ts"
import { closedLoopAsync, cpuSeconds, type LoadResult } from "./lib/load.ts"
import * as OipHttp from "./lib/oipHttp.ts"
import { binaryBody, jsonBody } from "./lib/oipHttp.ts"

const args = parseArgs()
const ROUNDS = Number(args.options["rounds"] ?? (args.quick ? 2 : 3))
const SECONDS = Number(args.options["seconds"] ?? (args.quick ? 1 : 2))
const LEVELS = (args.options["levels"] ?? "1,64").split(",").map(Number)

const definitions = GrpcCodec.loadDefinitions()
const proto = Grpc.loadPackageDefinition(definitions) as any

const row = mlpData(1, 7)
const grpcRequest = (id: string) => ({
  model_name: "mlp",
  id,
  inputs: [{ name: "input", datatype: "FP32", shape: [1, 784] }],
  raw_input_contents: [Buffer.from(row.buffer)]
})

interface Server {
  readonly child: ChildProcess
  readonly http: number
  readonly grpc: number
}

const start = (repository: string): Promise<Server> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["src/bin/server.ts", "--port", "0", "--grpc-port", "0", "--models", repository], {
      cwd: repoRoot,
      env: { ...process.env, MAX_QUEUED_REQUESTS: "1024" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    const onData = (c: Buffer) => {
      output += c.toString("utf8")
      const http = /listening on http:\/\/[^:\s]+:(\d+)/.exec(output)
      const grpc = /gRPC listening on [^:\s]+:(\d+)/.exec(output)
      if (http !== null && grpc !== null) resolve({ child, http: Number(http[1]), grpc: Number(grpc[1]) })
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${output}`)))
  })

const post = (port: number, agent: Http.Agent, binary: boolean): Promise<void> =>
  binary ? OipHttp.post(port, "/v2/models/mlp/infer", agent, binaryBody, true) : OipHttp.post(port, "/v2/models/mlp/infer", agent, jsonBody)

type Path4 = "http json" | "http binary" | "grpc unary" | "grpc stream"


interface Block extends LoadResult {
  /** The server process's CPU per request (the client's own cost, which differs by protocol, left out). */
  readonly serverCpuUsPerReq: number
}

const load = async (server: Server, path: Path4, outstanding: number, seconds: number): Promise<Block> => {
  const cpu0 = cpuSeconds(server.child.pid!)
  const result = await drive(server, path, outstanding, seconds)
  const cpu = cpuSeconds(server.child.pid!) - cpu0
  return { ...result, serverCpuUsPerReq: (cpu * 1e6) / Math.max(1, result.completed) }
}

const drive = async (server: Server, path: Path4, outstanding: number, seconds: number): Promise<LoadResult> => {
  if (path === "http json" || path === "http binary") {
    const agent = new Http.Agent({ keepAlive: true, maxSockets: outstanding })
    try {
      return await closedLoopAsync(outstanding, seconds * 1000, () => ({ run: () => post(server.http, agent, path === "http binary") }))
    } finally {
      agent.destroy()
    }
  }
  const client = new proto.inference.GRPCInferenceService(`127.0.0.1:${server.grpc}`, Grpc.credentials.createInsecure())
  try {
    if (path === "grpc unary") {
      return await closedLoopAsync(outstanding, seconds * 1000, (seq) => ({
        run: () =>
          new Promise<void>((resolve, reject) =>
            client.ModelInfer(grpcRequest(String(seq)), (e: Grpc.ServiceError | null) => (e === null ? resolve() : reject(e))))
      }))
    }
    const stream = client.ModelStreamInfer()
    const waiting = new Map<string, { resolve: () => void; reject: (e: Error) => void }>()
    stream.on("data", (m: any) => {
      const w = waiting.get(m.infer_response.id)
      waiting.delete(m.infer_response.id)
      if (m.error_message === "") w?.resolve()
      else w?.reject(new Error(m.error_message))
    })
    stream.on("error", (e: Error) => {
      for (const w of waiting.values()) w.reject(e)
    })
    const result = await closedLoopAsync(outstanding, seconds * 1000, (seq) => ({
      run: () =>
        new Promise<void>((resolve, reject) => {
          waiting.set(String(seq), { resolve, reject })
          stream.write(grpcRequest(String(seq)))
        })
    }))
    await new Promise<void>((resolve) => {
      stream.on("end", resolve)
      stream.on("error", () => resolve())
      stream.end()
    })
    return result
  } finally {
    client.close()
  }
}

/** µs per call of `f`, after a warm-up. */
const perCallUs = (n: number, f: () => unknown): number => {
  for (let i = 0; i < 2000; i++) f()
  const t = performance.now()
  for (let i = 0; i < n; i++) f()
  return ((performance.now() - t) * 1000) / n
}

const logits = new Float32Array(10).map((_, i) => i / 10)

/**
 * The codec alone, both candidates on the same messages: the server decodes a ModelInferRequest
 * (the row in raw_input_contents) and encodes a ModelInferResponse (10 logits in
 * raw_output_contents). proto-loader (protobufjs, what the server uses) against @bufbuild/protobuf
 * driven by reflection over the same .proto (its descriptors built through protobufjs; generated
 * code would be no faster at run time, bufbuild's codec is reflective either way).
 */
const codec = async () => {
  const n = args.quick ? 20_000 : 100_000
  const method = proto.inference.GRPCInferenceService.service.ModelInfer
  const request = grpcRequest("1")
  const response = { model_name: "mlp", model_version: "1", id: "1", outputs: [{ name: "logits", datatype: "FP32", shape: [1, 10] }], raw_output_contents: [Buffer.from(logits.buffer)] }
  const requestBytes = method.requestSerialize(request) as Buffer
  const protoLoader = {
    library: "@grpc/proto-loader 0.8.1 (protobufjs)",
    requestBytes: requestBytes.length,
    "request encode µs": perCallUs(n, () => method.requestSerialize(request)),
    "request decode µs": perCallUs(n, () => method.requestDeserialize(requestBytes)),
    "response encode µs": perCallUs(n, () => method.responseSerialize(response))
  }
  const { bufbuild } = await import("./lib/bufbuild.ts")
  const b = bufbuild()
  const bufRequest = b.create(b.request, { modelName: "mlp", id: "1", inputs: [{ name: "input", datatype: "FP32", shape: [1n, 784n] }], rawInputContents: [new Uint8Array(row.buffer)] })
  const bufResponse = b.create(b.response, { modelName: "mlp", modelVersion: "1", id: "1", outputs: [{ name: "logits", datatype: "FP32", shape: [1n, 10n] }], rawOutputContents: [new Uint8Array(logits.buffer)] })
  const bufBytes = b.toBinary(b.request, bufRequest)
  const bufbuildRow = {
    library: "@bufbuild/protobuf 2.17.0 (reflection)",
    requestBytes: bufBytes.length,
    "request encode µs": perCallUs(n, () => b.toBinary(b.request, bufRequest)),
    "request decode µs": perCallUs(n, () => b.fromBinary(b.request, requestBytes)),
    "response encode µs": perCallUs(n, () => b.toBinary(b.response, bufResponse))
  }
  return [protoLoader, bufbuildRow]
}

const main = async () => {
  log(`grpc: ${ROUNDS} rounds × ${SECONDS} s per contender and level ${LEVELS.join(", ")}${args.quick ? " (quick)" : ""}`)
  const c = await codec()
  section("Message codec: ModelInferRequest (one 784-float row, raw contents) and ModelInferResponse (10 logits)")
  console.log(table(c))
  for (const row of c) console.log(JSON.stringify({ bench: "grpc", kind: "codec", ...row }))

  const repository = Fs.mkdtempSync(Path.join(Os.tmpdir(), "bench-grpc-"))
  Fs.mkdirSync(Path.join(repository, "mlp"))
  Fs.copyFileSync(Path.join(modelsDir, "mlp/model.onnx"), Path.join(repository, "mlp/model.onnx"))
  Fs.writeFileSync(Path.join(repository, "mlp/config.json"), JSON.stringify({ batching: { enabled: false } }))
  const server = await start(repository)
  const paths: ReadonlyArray<Path4> = ["http json", "http binary", "grpc unary", "grpc stream"]
  try {
    for (const p of paths) await load(server, p, 16, args.quick ? 0.5 : 2)
    const results: Record<number, Record<string, Array<Block>>> = {}
    for (const level of LEVELS) {
      const contenders: Array<Contender<Block>> = paths.map((p) => ({ name: p, run: () => load(server, p, level, SECONDS) }))
      results[level] = await alternate(ROUNDS, contenders, (round, name, r) => {
        console.log(JSON.stringify({ bench: "grpc", kind: "block", outstanding: level, round, path: name, reqPerSec: r.reqPerSec, p50Ms: r.latency["all"]!.p50, p99Ms: r.latency["all"]!.p99, serverCpuUsPerReq: r.serverCpuUsPerReq, failed: r.failed }))
        log(`  c=${level} round ${round + 1} ${name}: ${fmt(r.reqPerSec)} req/s p50 ${fmt(r.latency["all"]!.p50)} ms p99 ${fmt(r.latency["all"]!.p99)} ms${r.failed > 0 ? ` FAILED ${r.failed} (${r.firstError})` : ""}`)
      }, `c=${level}`)
    }
    const rows = []
    for (const level of LEVELS) {
      const json = median(results[level]!["http json"]!.map((b) => b.reqPerSec))
      for (const p of paths) {
        const blocks = results[level]![p]!
        rows.push({
          outstanding: level,
          path: p,
          "req/s": median(blocks.map((b) => b.reqPerSec)),
          "vs http json": `${(median(blocks.map((b) => b.reqPerSec)) / json).toFixed(2)}×`,
          "p50 ms": median(blocks.map((b) => b.latency["all"]!.p50)),
          "p99 ms": median(blocks.map((b) => b.latency["all"]!.p99)),
          "server CPU µs/req": median(blocks.map((b) => b.serverCpuUsPerReq)),
          failed: blocks.reduce((n, b) => n + b.failed, 0)
        })
      }
    }
    section("gRPC vs HTTP on one server process (MLP, one row a request, closed loop)")
    console.log(table(rows))
    for (const r of rows) console.log(JSON.stringify({ bench: "grpc", kind: "summary", ...r }))
    const file = writeResults("grpc", {
      args: { quick: args.quick, rounds: ROUNDS, seconds: SECONDS, levels: LEVELS },
      setup: {
        server: "node src/bin/server.ts --port 0 --grpc-port 0, MAX_QUEUED_REQUESTS=1024, engine defaults (maxConcurrentRequests 4), mlp with batching disabled",
        client: "this process: node:http keep-alive agent; @grpc/grpc-js client, one channel"
      },
      codec: c,
      results: rows,
      goals: []
    })
    log(`results: ${Path.relative(repoRoot, file)}`)
  } finally {
    await new Promise<void>((resolve) => {
      if (server.child.exitCode !== null) return resolve()
      server.child.once("exit", () => resolve())
      server.child.kill("SIGTERM")
    })
    Fs.rmSync(repository, { recursive: true, force: true })
  }
}

await main()
