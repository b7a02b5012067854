/**
 * The baseline of the HTTP benchmark: a minimal `node:http` + onnxruntime-node server that does
 * the same work per request as the OIP server (read the JSON body, check and copy the tensor,
 * run the session, answer OIP JSON), with nothing else: no queue, no priorities, no deadlines,
 * no cancellation, one session in the main thread (`run` blocks the event loop while it runs).
 *
 * Usage: node bench/http-baseline.ts --port=0 [--model=models/mlp/model.onnx]
 * Prints "listening on http://127.0.0.1:PORT"; exits on SIGTERM.
 */
import * as Http from "node:http"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as ort from "onnxruntime-node"

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

const reply = (res: Http.ServerResponse, status: number, body: string) => {
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) })
  res.end(body)
}

const server = Http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  if (req.method !== "POST" || !req.url?.endsWith("/infer")) return reply(res, 404, "{\"error\":\"not found\"}")
  const chunks: Array<Buffer> = []
  req.on("data", (c: Buffer) => chunks.push(c))
  req.on("end", () => {
    let body: { id?: string; inputs?: Array<{ name: string; shape: Array<number>; datatype: string; data: Array<number> }> }
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"))
    } catch {
      return reply(res, 400, "{\"error\":\"invalid JSON\"}")
    }
    const input = body.inputs?.[0]
    if (input === undefined || input.datatype !== "FP32" || !Array.isArray(input.data)) return reply(res, 400, "{\"error\":\"bad input\"}")
    const count = input.shape.reduce((a, b) => a * b, 1)
    if (input.data.length !== count) return reply(res, 400, "{\"error\":\"bad shape\"}")
    const tensor = new ort.Tensor("float32", Float32Array.from(input.data), input.shape)
    session.run({ [inputName]: tensor }).then((out) => {
      const y = out[outputName]!
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
