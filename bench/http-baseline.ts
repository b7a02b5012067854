/**
 * The hand-written contenders of the HTTP benchmark: what a Node user writes instead of this
 * project, doing the same work per request as the OIP server (read the JSON body, check and copy
 * the tensor, run the session, answer OIP JSON), one session in the main thread (`run` blocks
 * the event loop while it runs), no deadlines, no cancellation. `--mode`:
 *
 *   plain       (default) `session.run` per request, no queue at all
 *   pqueue      p-queue(4) in front of `session.run`, Triton's `parameters.priority` (1 = highest) as its priority
 *   microbatch  a micro-batcher in fifty lines: rows wait until 64 are pending or 2 ms have passed,
 *               then run as one batch and are split back (no priorities)
 *
 * Every mode also takes Triton's binary tensor data (a request with `Inference-Header-Content-Length`:
 * the JSON header, then the row's bytes) and then answers the logits as binary data the same way,
 * as the OIP server does: the baseline for the server fed binary data, same payload both sides.
 *
 * Usage: node bench/http-baseline.ts --port=0 [--mode=plain|pqueue|microbatch] [--model=models/mlp/model.onnx]
 * Prints "listening on http://127.0.0.1:PORT"; exits on SIGTERM.
 */
import * as Http from "node:http"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as ort from "onnxruntime-node"
import PQueue from "p-queue"

const args = Object.fromEntries(process.argv.slice(2).map((a) => {
  const [k, v] = a.replace(/^--/, "").split("=")
  return [k!, v ?? "true"]
}))
const root = fileURLToPath(new URL("..", import.meta.url))
const modelFile = Path.resolve(root, args["model"] ?? "models/mlp/model.onnx")
const session = await ort.InferenceSession.create(modelFile, {
  executionProviders: ["cpu"],
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  graphOptimizationLevel: "all"
})
const inputName = session.inputNames[0]!
const outputName = session.outputNames[0]!
const mode = args["mode"] ?? "plain"

type Output = { readonly dims: ReadonlyArray<number>; readonly data: Float32Array }

/** `session.run` per request. */
const runOne = (row: Float32Array, shape: Array<number>): Promise<Output> =>
  session.run({ [inputName]: new ort.Tensor("float32", row, shape) }).then((out) => out[outputName] as unknown as Output)

const queue = new PQueue({ concurrency: 4 })
const runQueued = (row: Float32Array, shape: Array<number>, priority: number): Promise<Output> =>
  queue.add(() => runOne(row, shape), { priority }) as Promise<Output>

// ---- the micro-batcher: 64 rows or 2 ms, whichever first --------------------------------
const MAX_ROWS = 64
const MAX_WAIT_MS = 2
let pending: Array<{ row: Float32Array; resolve: (o: Output) => void; reject: (e: unknown) => void }> = []
let timer: ReturnType<typeof setTimeout> | undefined
let running = false
const flush = () => {
  if (timer !== undefined) clearTimeout(timer)
  timer = undefined
  if (running || pending.length === 0) return
  const batch = pending.splice(0, MAX_ROWS)
  const width = batch[0]!.row.length
  const input = new Float32Array(batch.length * width)
  batch.forEach((b, i) => input.set(b.row, i * width))
  running = true
  session.run({ [inputName]: new ort.Tensor("float32", input, [batch.length, width]) }).then((out) => {
    const y = out[outputName]!
    const cols = (y.data as Float32Array).length / batch.length
    batch.forEach((b, i) => b.resolve({ dims: [1, cols], data: (y.data as Float32Array).slice(i * cols, (i + 1) * cols) }))
  }, (e: unknown) => batch.forEach((b) => b.reject(e))).finally(() => {
    running = false
    if (pending.length >= MAX_ROWS) flush()
    else if (pending.length > 0 && timer === undefined) timer = setTimeout(flush, MAX_WAIT_MS)
  })
}
const runBatched = (row: Float32Array): Promise<Output> =>
  new Promise((resolve, reject) => {
    pending.push({ row, resolve, reject })
    if (pending.length >= MAX_ROWS) flush()
    else if (timer === undefined) timer = setTimeout(flush, MAX_WAIT_MS)
  })

const reply = (res: Http.ServerResponse, status: number, body: string) => {
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) })
  res.end(body)
}

const server = Http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  if (req.method !== "POST" || !req.url?.endsWith("/infer")) return reply(res, 404, "{\"error\":\"not found\"}")
  const chunks: Array<Buffer> = []
  req.on("data", (c: Buffer) => chunks.push(c))
  req.on("end", () => {
    let body: {
      id?: string
      parameters?: { priority?: number }
      inputs?: Array<{ name: string; shape: Array<number>; datatype: string; data?: Array<number>; parameters?: { binary_data_size?: number } }>
    }
    const raw = Buffer.concat(chunks)
    const headerLength = req.headers["inference-header-content-length"]
    const binary = headerLength !== undefined
    const jsonEnd = binary ? Number(headerLength) : raw.length
    try {
      body = JSON.parse(raw.subarray(0, jsonEnd).toString("utf8"))
    } catch {
      return reply(res, 400, "{\"error\":\"invalid JSON\"}")
    }
    const input = body.inputs?.[0]
    if (input === undefined || input.datatype !== "FP32" || (!binary && !Array.isArray(input.data))) return reply(res, 400, "{\"error\":\"bad input\"}")
    const count = input.shape.reduce((a, b) => a * b, 1)
    if ((binary ? (raw.length - jsonEnd) / 4 : input.data!.length) !== count) return reply(res, 400, "{\"error\":\"bad shape\"}")
    // Binary: the row's bytes copied into a Float32Array of its own (the body's offset need not be aligned).
    const row = binary ? new Float32Array(Uint8Array.from(raw.subarray(jsonEnd)).buffer) : Float32Array.from(input.data!)
    const run = mode === "microbatch" && input.shape[0] === 1
      ? runBatched(row)
      : mode === "pqueue"
      ? runQueued(row, input.shape, 5 - (body.parameters?.priority ?? 3))
      : runOne(row, input.shape)
    run.then((y) => {
      if (binary) {
        const bytes = Buffer.from(y.data.buffer, y.data.byteOffset, y.data.byteLength)
        const header = Buffer.from(JSON.stringify({
          model_name: "mlp",
          model_version: "1",
          ...(body.id === undefined ? {} : { id: body.id }),
          outputs: [{ name: outputName, datatype: "FP32", shape: y.dims, parameters: { binary_data_size: bytes.length } }]
        }))
        res.writeHead(200, { "content-type": "application/octet-stream", "inference-header-content-length": header.length, "content-length": header.length + bytes.length })
        return res.end(Buffer.concat([header, bytes]))
      }
      reply(res, 200, JSON.stringify({
        model_name: "mlp",
        model_version: "1",
        ...(body.id === undefined ? {} : { id: body.id }),
        outputs: [{ name: outputName, datatype: "FP32", shape: y.dims, data: Array.from(y.data as Float32Array) }]
      }))
    }, (e: unknown) => reply(res, 500, JSON.stringify({ error: String(e) })))
  })
})

server.listen(Number(args["port"] ?? 0), "127.0.0.1", () => {
  const address = server.address() as { port: number }
  console.log(`listening on http://127.0.0.1:${address.port}`)
})
process.on("SIGTERM", () => {
  server.close()
  server.closeAllConnections()
  void session.release().finally(() => process.exit(0))
})
