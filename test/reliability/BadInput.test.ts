/**
 * A corpus of malformed requests: each is answered with its exact 4xx status and a JSON
 * `{"error": …}` that says what is wrong, never a 5xx, a stack trace or a file path, and the
 * server serves a valid inference afterwards. In memory (real routes and engine, scripted pool)
 * case by case; then the whole corpus over a real socket, with what only a socket can do:
 * unnormalised paths (`%2e%2e`), oversized and chunked bodies, a client that leaves mid-body,
 * bytes that are not HTTP.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import { HttpServer } from "effect/http"
import * as Net from "node:net"
import { AsyncConfigService } from "../../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import * as Server from "../../src/http/Server.ts"
import { TelemetryCollector } from "../../src/Telemetry.ts"
import * as Client from "../http/HttpClient.ts"
import { makeApp, makeTestPool, routeOptions, withFreshMetrics } from "../http/TestApp.ts"
import { assertCleanError } from "./Errors.ts"

/** Body limit of every server here: small, so that "oversized" is cheap to send. */
const bodyLimitBytes = 64 * 1024

const echo = "/v2/models/echo/infer"
const x = (fields: Record<string, unknown> = {}) => ({ name: "x", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4], ...fields })
const withInput = (fields: Record<string, unknown>) => ({ inputs: [x(fields)] })
const valid = { inputs: [x()] }
const identity = (dtype: string, datatype: string, data: ReadonlyArray<unknown>) => ({
  path: `/v2/models/identity_${dtype}/infer`,
  body: { inputs: [{ name: "x", shape: [1, data.length], datatype, data }] }
})
const multiA = { name: "a", shape: [3], datatype: "FP32", data: [1, 2, 3] }
const multiB = { name: "b", shape: [], datatype: "INT64", data: [10] }

export interface Case {
  readonly name: string
  readonly method?: string
  readonly path?: string
  /** A string or bytes are sent as they are; anything else as JSON. */
  readonly body?: unknown
  readonly status: number
  /** What the error message must say. */
  readonly error: RegExp
}

/** Data nested `depth` levels deep, `[[[…[1]…]]]`, with a shape of `depth` ones (as text: JSON.stringify would overflow). */
const deep = (depth: number) =>
  `{"inputs":[{"name":"x","shape":[${new Array(depth).fill(1).join(",")}],"datatype":"FP32","data":${"[".repeat(depth)}1${"]".repeat(depth)}}]}`

/** Every case, by name. Paths are sent as written (the socket suite does not normalise them). */
export const corpus: ReadonlyArray<Case> = [
  // -- not JSON, or not an inference request ---------------------------------------
  { name: "malformed JSON: unterminated", body: "{\"inputs\": [", status: 400, error: /^the request body is not valid JSON/ },
  { name: "malformed JSON: trailing comma", body: "{\"inputs\": [],}", status: 400, error: /^the request body is not valid JSON/ },
  { name: "malformed JSON: single quotes", body: "{'inputs': []}", status: 400, error: /^the request body is not valid JSON/ },
  { name: "empty body", body: "", status: 400, error: /^the request body is not valid JSON/ },
  { name: "body is JSON null", body: "null", status: 400, error: /invalid inference request: Expected object/ },
  { name: "body is a JSON array", body: "[1, 2]", status: 400, error: /invalid inference request: Expected object/ },
  { name: "body is a JSON string", body: "\"inputs\"", status: 400, error: /invalid inference request: Expected object/ },
  { name: "body is a JSON number", body: "42", status: 400, error: /invalid inference request: Expected object/ },
  { name: "JSON nested 30000 levels deep", body: "[".repeat(30_000) + "]".repeat(30_000), status: 400, error: /^the request body nests arrays or objects more than 64 levels deep/ },
  // -- missing fields and wrong types --------------------------------------------------
  { name: "missing inputs", body: { id: "1" }, status: 400, error: /Missing key at \["inputs"\]/ },
  { name: "inputs is an object", body: { inputs: { x: [1, 2, 3, 4] } }, status: 400, error: /at \["inputs"\]/ },
  { name: "no input at all: the model's input is missing", body: { inputs: [] }, status: 400, error: /invalid input "x" for model "echo": missing input/ },
  { name: "input without a name", body: { inputs: [{ shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4] }] }, status: 400, error: /Missing key at \["inputs"\]\[0\]\["name"\]/ },
  { name: "input name is a number", body: withInput({ name: 7 }), status: 400, error: /at \["inputs"\]\[0\]\["name"\]/ },
  { name: "shape missing", body: { inputs: [{ name: "x", datatype: "FP32", data: [1, 2, 3, 4] }] }, status: 400, error: /Missing key at \["inputs"\]\[0\]\["shape"\]/ },
  { name: "shape is a string", body: withInput({ shape: "1,4" }), status: 400, error: /at \["inputs"\]\[0\]\["shape"\]/ },
  { name: "shape holds a string", body: withInput({ shape: ["1", 4] }), status: 400, error: /at \["inputs"\]\[0\]\["shape"\]\[0\]/ },
  { name: "datatype missing", body: { inputs: [{ name: "x", shape: [1, 4], data: [1, 2, 3, 4] }] }, status: 400, error: /Missing key at \["inputs"\]\[0\]\["datatype"\]/ },
  { name: "data missing", body: { inputs: [{ name: "x", shape: [1, 4], datatype: "FP32" }] }, status: 400, error: /data must be an array|\["data"\]/ },
  { name: "data is an object", body: withInput({ data: { 0: 1 } }), status: 400, error: /data must be an array, got an object/ },
  { name: "data is a string", body: withInput({ data: "1,2,3,4" }), status: 400, error: /data must be an array, got "1,2,3,4"/ },
  { name: "id is a number", body: { ...valid, id: 42 }, status: 400, error: /at \["id"\]/ },
  { name: "parameters is an array", body: { ...valid, parameters: [1] }, status: 400, error: /at \["parameters"\]/ },
  { name: "outputs is not an array", body: { ...valid, outputs: "y" }, status: 400, error: /at \["outputs"\]/ },
  // -- inputs the model does not take ----------------------------------------------------
  { name: "unknown input", body: withInput({ name: "z" }), status: 400, error: /invalid input "z" for model "echo": unknown input; the model takes x/ },
  { name: "input given twice", body: { inputs: [x(), x()] }, status: 400, error: /input given more than once/ },
  { name: "one of two inputs missing", path: "/v2/models/multi/infer", body: { inputs: [multiA] }, status: 400, error: /invalid input "b" for model "multi": missing input/ },
  { name: "unknown output", body: { ...valid, outputs: [{ name: "nope" }] }, status: 400, error: /unknown output "nope"; the model returns y/ },
  // -- datatypes ---------------------------------------------------------------------------
  { name: "datatype unknown", body: withInput({ datatype: "FLOAT32" }), status: 400, error: /datatype "FLOAT32" is not supported \(supported: FP32, .*BYTES\)/ },
  { name: "datatype in lower case", body: withInput({ datatype: "fp32" }), status: 400, error: /datatype "fp32" is not supported/ },
  { name: "datatype BF16 (not supported)", body: withInput({ datatype: "BF16" }), status: 400, error: /datatype "BF16" is not supported/ },
  { name: "datatype mismatch: INT32 for an FP32 input", body: withInput({ datatype: "INT32" }), status: 400, error: /datatype INT32 given, the model takes FP32/ },
  { name: "element is a string in FP32 data", body: withInput({ data: [1, "2", 3, 4] }), status: 400, error: /element 1 is "2", not FP32/ },
  { name: "element is null", body: withInput({ data: [1, 2, null, 4] }), status: 400, error: /element 2 is null, not FP32/ },
  { name: "element is an object", body: withInput({ data: [1, 2, 3, {}] }), status: 400, error: /element 3 is an object, not FP32/ },
  { name: "element out of the INT8 range", ...identity("int8", "INT8", [1, 300]), status: 400, error: /element 1 is 300, out of the INT8 range \[-128, 127\]/ },
  { name: "negative UINT32", ...identity("uint32", "UINT32", [-1]), status: 400, error: /element 0 is -1, out of the UINT32 range/ },
  { name: "fraction in INT32 data", ...identity("int32", "INT32", [1.5]), status: 400, error: /element 0 is 1.5, not INT32/ },
  { name: "INT64 string that is not an integer", ...identity("int64", "INT64", ["12a"]), status: 400, error: /element 0 is "12a", not INT64/ },
  { name: "BYTES element with a NUL (onnxruntime-node would cut it)", ...identity("string", "BYTES", ["a\u0000b"]), status: 400, error: /element 0 holds a NUL character/ },
  { name: "BYTES element with a lone surrogate", ...identity("string", "BYTES", ["\udc00"]), status: 400, error: /element 0 is not well-formed Unicode/ },
  { name: "body bytes that are not UTF-8", body: new Uint8Array([0x7b, 0xff, 0x7d]), status: 400, error: /^the request body is not valid UTF-8/ },
  { name: "INT64 beyond 2^63", ...identity("int64", "INT64", ["9223372036854775808"]), status: 400, error: /out of the INT64 range/ },
  { name: "BOOL given 2", ...identity("bool", "BOOL", [true, 2]), status: 400, error: /element 1 is 2, not BOOL/ },
  { name: "BYTES given a number", ...identity("string", "BYTES", ["a", 1]), status: 400, error: /element 1 is 1, not BYTES/ },
  // -- NaN and Infinity ----------------------------------------------------------------------
  { name: "NaN literal (not JSON)", body: "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[NaN,1,2,3]}]}", status: 400, error: /^the request body is not valid JSON/ },
  { name: "Infinity literal (not JSON)", body: "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[1,Infinity,2,3]}]}", status: 400, error: /^the request body is not valid JSON/ },
  { name: "\"NaN\" as a string", body: withInput({ data: ["NaN", 1, 2, 3] }), status: 400, error: /element 0 is "NaN", not FP32/ },
  { name: "1e999 (Infinity once parsed) into INT32", path: "/v2/models/identity_int32/infer", body: "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,1],\"datatype\":\"INT32\",\"data\":[1e999]}]}", status: 400, error: /element 0 is Infinity, not INT32/ },
  { name: "a scalar's data nested", path: "/v2/models/multi/infer", body: { inputs: [multiA, { ...multiB, data: [[1]] }] }, status: 400, error: /data nests arrays deeper than shape \[\]: expected 1 element in a flat array/ },
  { name: "timeout of 1e999 µs (Infinity)", body: `{"parameters":{"timeout":1e999},"inputs":${JSON.stringify(valid.inputs)}}`, status: 400, error: /at \["parameters"\]\["timeout"\]/ },
  // -- shapes ------------------------------------------------------------------------------------
  { name: "fewer elements than the shape", body: withInput({ data: [1, 2, 3] }), status: 400, error: /data does not match shape \[1, 4\]: expected a flat array of 4 elements/ },
  { name: "more elements than the shape", body: withInput({ data: [1, 2, 3, 4, 5] }), status: 400, error: /data does not match shape \[1, 4\]/ },
  { name: "one-dim shape, wrong count", path: "/v2/models/multi/infer", body: { inputs: [{ ...multiA, data: [1, 2] }, multiB] }, status: 400, error: /data has 2 elements, shape \[3\] needs 3/ },
  { name: "data nested unlike the shape", body: withInput({ data: [[1, 2], [3, 4]] }), status: 400, error: /data does not match shape \[1, 4\]/ },
  { name: "ragged nesting", body: withInput({ shape: [2, 4], data: [[1, 2, 3, 4], [5, 6, 7]] }), status: 400, error: /data does not match shape \[2, 4\]/ },
  { name: "negative dim", body: withInput({ shape: [-1, 4] }), status: 400, error: /dims \[-1, 4\] must be non-negative integers/ },
  { name: "fractional dim", body: withInput({ shape: [0.5, 4] }), status: 400, error: /must be non-negative integers/ },
  { name: "dim beyond 2^53", body: withInput({ shape: [1e300, 4] }), status: 400, error: /exceed the limit of 268435456 elements/ },
  { name: "huge dims, before any allocation", body: withInput({ shape: [1e9, 1e9], data: [] }), status: 400, error: /exceed the limit of 268435456 elements/ },
  { name: "wrong fixed dim", body: withInput({ shape: [1, 3], data: [1, 2, 3] }), status: 400, error: /dim 1 is 3, the model takes 4/ },
  { name: "wrong rank", body: withInput({ shape: [4] }), status: 400, error: /rank 1 given \(dims \[4\]\), the model takes rank 2/ },
  { name: "scalar shape for a matrix input", body: withInput({ shape: [], data: [1] }), status: 400, error: /rank 0 given/ },
  { name: "data nested 5000 levels deep", body: deep(5000), status: 400, error: /rank 5000 given/ },
  { name: "data nested 15000 levels deep (deeper than the stack)", body: deep(15_000), status: 400, error: /^the request body nests arrays or objects more than 64 levels deep/ },
  // -- declared input signatures (config.json inputSignatures): refused before they run ---------
  { name: "fits neither declared signature (8 kHz rate, 16 kHz chunk)", path: "/v2/models/vad/infer", body: { inputs: [{ name: "audio", shape: [1, 4], datatype: "FP32", data: [0, 0, 0, 0] }, { name: "sr", shape: [], datatype: "INT64", data: [8000] }] }, status: 400, error: /fit none of the model's 2 declared input signatures: \[0\] sr value 8000 \(element 0\) is not one of \[16000\]; \[1\] audio dims \[1, 4\], declared \[-1, 2\]/ },
  { name: "too few samples for any declared signature", path: "/v2/models/vad/infer", body: { inputs: [{ name: "audio", shape: [1, 1], datatype: "FP32", data: [0] }, { name: "sr", shape: [], datatype: "INT64", data: [16000] }] }, status: 400, error: /audio dims \[1, 1\], declared \[-1, 4\]/ },
  { name: "unsupported sample rate", path: "/v2/models/vad/infer", body: { inputs: [{ name: "audio", shape: [1, 4], datatype: "FP32", data: [0, 0, 0, 0] }, { name: "sr", shape: [], datatype: "INT64", data: [12345] }] }, status: 400, error: /sr value 12345 \(element 0\) is not one of \[16000\]/ },
  { name: "token id past the declared range", path: "/v2/models/tokens/infer", body: { inputs: [{ name: "ids", shape: [1, 3], datatype: "INT64", data: [1, 2, 10] }] }, status: 400, error: /ids value 10 \(element 2\) is outside \[0, 9\] \(the model's declared input signature\)/ },
  { name: "negative token id", path: "/v2/models/tokens/infer", body: { inputs: [{ name: "ids", shape: [1, 1], datatype: "INT64", data: [-1] }] }, status: 400, error: /ids value -1 \(element 0\) is outside \[0, 9\]/ },
  // -- Triton parameters --------------------------------------------------------------------------
  // A priority beyond the levels is the model's default, as in Triton (issue 13); a negative one is still refused.
  { name: "priority negative", body: { ...valid, parameters: { priority: -1 } }, status: 400, error: /at \["parameters"\]\["priority"\]/ },
  { name: "priority as a string", body: { ...valid, parameters: { priority: "high" } }, status: 400, error: /at \["parameters"\]\["priority"\]/ },
  { name: "negative timeout", body: { ...valid, parameters: { timeout: -1 } }, status: 400, error: /at \["parameters"\]\["timeout"\]/ },
  { name: "fractional timeout (microseconds are an integer, as priority is)", body: { ...valid, parameters: { timeout: 1.5 } }, status: 400, error: /Expected a non-negative integer \(microseconds\) at \["parameters"\]\["timeout"\]/ },
  // -- model names and versions: nothing reaches outside the repository -------------------------
  { name: "model name ../../etc/passwd (encoded)", path: "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", body: valid, status: 400, error: /^invalid model name/ },
  { name: "model name with a backslash", path: "/v2/models/a%5Cb/infer", body: valid, status: 400, error: /^invalid model name/ },
  { name: "model name starting with a dot", path: "/v2/models/.hidden/infer", body: valid, status: 400, error: /^invalid model name/ },
  { name: "model name of 129 characters", path: `/v2/models/${"m".repeat(129)}/infer`, body: valid, status: 400, error: /^invalid model name "m+": letters, digits, .* at most 128 characters$/ },
  { name: "model name with a NUL byte", path: "/v2/models/echo%00/infer", body: valid, status: 400, error: /^invalid model name/ },
  { name: "model name with markup", path: "/v2/models/%3Cscript%3E/infer", body: valid, status: 400, error: /^invalid model name/ },
  { name: "model name of 300 characters", path: `/v2/models/${"m".repeat(300)}/infer`, body: valid, status: 400, error: /^invalid model name/ },
  { name: "model name of 2000 characters", path: `/v2/models/${"m".repeat(2000)}/infer`, body: valid, status: 400, error: /^invalid model name/ },
  { name: "model version of 2000 letters", path: `/v2/models/echo/versions/${"v".repeat(2000)}/infer`, body: valid, status: 400, error: /^invalid model version/ },
  { name: "absolute path as model name", method: "GET", path: "/v2/models/%2Fetc%2Fpasswd", status: 400, error: /^invalid model name/ },
  { name: "unknown model", body: valid, path: "/v2/models/nope/infer", status: 404, error: /model "nope" not found/ },
  { name: "version ../1 (encoded)", path: "/v2/models/echo/versions/..%2F1/infer", body: valid, status: 400, error: /^invalid model version/ },
  { name: "version -1", path: "/v2/models/echo/versions/-1/infer", body: valid, status: 400, error: /^invalid model version/ },
  { name: "version 1e3", path: "/v2/models/echo/versions/1e3/infer", body: valid, status: 400, error: /^invalid model version/ },
  { name: "version as an absolute path", path: "/v2/models/echo/versions/%2Fetc/infer", body: valid, status: 400, error: /^invalid model version/ },
  { name: "version with a NUL byte", path: "/v2/models/echo/versions/1%00/infer", body: valid, status: 400, error: /^invalid model version/ },
  { name: "version that does not exist", path: "/v2/models/echo/versions/9/infer", body: valid, status: 404, error: /model "echo" version "9" not found/ },
  { name: "version of 40 digits", path: `/v2/models/echo/versions/${"9".repeat(40)}/infer`, body: valid, status: 404, error: /not found/ },
  // -- wrong methods and routes -------------------------------------------------------------------
  { name: "GET on infer", method: "GET", path: echo, status: 405, error: /^method GET not allowed for \/v2\/models\/echo\/infer; allowed: POST$/ },
  { name: "PUT on infer", method: "PUT", path: echo, body: valid, status: 405, error: /^method PUT not allowed/ },
  { name: "DELETE on a model", method: "DELETE", path: "/v2/models/echo", status: 405, error: /^method DELETE not allowed for \/v2\/models\/echo; allowed: GET, HEAD$/ },
  { name: "POST on live", method: "POST", path: "/v2/health/live", body: "{}", status: 405, error: /^method POST not allowed/ },
  { name: "model control (not supported)", path: "/v2/repository/models/echo/load", body: "{}", status: 400, error: /explicit model control is not supported/ },
  { name: "repository index with malformed JSON", path: "/v2/repository/index", body: "{", status: 400, error: /not valid JSON/ },
  { name: "repository index with ready as a string", path: "/v2/repository/index", body: { ready: "yes" }, status: 400, error: /^invalid repository index request/ },
  // -- size -----------------------------------------------------------------------------------------
  { name: "body over the limit", body: withInput({ data: new Array(bodyLimitBytes / 2).fill(1) }), status: 413, error: /exceeds the limit of 65536 bytes/ },
  { name: "a million elements for a shape of four", body: "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,4],\"datatype\":\"FP32\",\"data\":[" + "0,".repeat(30_000) + "0]}]}", status: 400, error: /data does not match shape \[1, 4\]/ },
  { name: "a 60 kB datatype", body: withInput({ datatype: "A".repeat(60_000) }), status: 400, error: /datatype "A+…$/ }
]

describe("malformed requests, in memory", () => {
  it.effect("the corpus has at least 30 cases, each with a name of its own", () =>
    Effect.sync(() => {
      assert.isAtLeast(corpus.length, 30)
      assert.strictEqual(new Set(corpus.map((c) => c.name)).size, corpus.length)
    }))

  for (const c of corpus) {
    it.effect(`${c.name}: ${c.status}`, () =>
      Effect.gen(function*() {
        const { send, stats } = yield* makeApp({ bodyLimitBytes })
        const r = yield* send(c.method ?? "POST", c.path ?? echo, c.body)
        assert.strictEqual(r.status, c.status, `${c.name}: ${r.text.slice(0, 300)}`)
        assertCleanError(c.name, r.status, r.text, c.error)
        assert.strictEqual(r.headers.get("content-type"), "application/json", c.name)
        assert.strictEqual(stats.started, 0, `${c.name}: nothing ran`)
        const ok = yield* send("POST", echo, valid)
        assert.strictEqual(ok.status, 200, `${c.name}: a valid inference afterwards`)
        assert.deepStrictEqual(ok.json.outputs[0].data, [2, 4, 6, 8])
      }).pipe(withFreshMetrics))
  }

  it.effect("1e999 into FP32 is +Infinity, a float32 value: accepted, and the non-finite output prints as null", () =>
    Effect.gen(function*() {
      const { send } = yield* makeApp({ bodyLimitBytes })
      const r = yield* send("POST", "/v2/models/identity_float32/infer", "{\"inputs\":[{\"name\":\"x\",\"shape\":[1,2],\"datatype\":\"FP32\",\"data\":[1e999,-1e999]}]}")
      assert.strictEqual(r.status, 200)
      assert.deepStrictEqual(r.json.outputs[0].data, [null, null])
    }).pipe(withFreshMetrics))
})

/** The in-process server on a real socket (scripted pool), for the socket-level cases. */
const makeSocketServer = Effect.gen(function*() {
  const pool = yield* makeTestPool()
  const context = yield* Layer.build(
    Server.layer({ ...routeOptions(bodyLimitBytes), host: "127.0.0.1", port: 0, keepAliveTimeoutMs: 10_000 }).pipe(
      Layer.provideMerge(AsyncInferenceEngine.layer),
      Layer.provideMerge(Layer.mergeAll(pool.layer, TelemetryCollector.layer, AsyncConfigService.layerWith({})))
    )
  )
  const address = Context.get(context, HttpServer.HttpServer).address
  if (address._tag === "UnixPathAddress") return yield* Effect.die("expected a TCP address")
  const { connections } = Context.get(context, Server.NodeServer)
  return { port: address.port, stats: pool.stats, connections: () => connections.size }
})

/**
 * Writes raw bytes on a fresh connection and returns what comes back before the server ends its
 * side, or `waitMs` passes. The client keeps its own side open (`allowHalfOpen`), as a hostile
 * one would; it closes it on return unless `keepOpen`, then returns the socket to the caller.
 */
const raw = (
  port: number,
  chunks: ReadonlyArray<string | Buffer>,
  options: { readonly waitMs?: number; readonly keepOpen?: boolean } = {}
): Promise<{ text: string; error?: string; socket: Net.Socket }> =>
  new Promise((resolve) => {
    const socket = Net.connect({ port, host: "127.0.0.1", allowHalfOpen: true })
    let text = ""
    let error: string | undefined
    const done = () => {
      clearTimeout(timer)
      if (options.keepOpen !== true) socket.destroy()
      resolve(error === undefined ? { text, socket } : { text, error, socket })
    }
    const timer = setTimeout(done, options.waitMs ?? 2000)
    socket.on("data", (c: Buffer) => (text += c.toString("utf8")))
    socket.on("error", (e: NodeJS.ErrnoException) => (error = e.code ?? e.message))
    socket.on("end", done)
    socket.on("close", done)
    socket.on("connect", () => {
      for (const c of chunks) socket.write(c)
    })
  })

/** Status line, headers and body of one raw HTTP/1.1 answer. */
const parseRaw = (text: string) => {
  const [head = "", ...rest] = text.split("\r\n\r\n")
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0)
  return { status, head: head.toLowerCase(), body: rest.join("\r\n\r\n") }
}

const request = (method: string, path: string, body: string, extra = "") =>
  `${method} ${path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n${extra}\r\n${body}`

describe("malformed requests, over a real socket", () => {
  it.live("the whole corpus, one request after the other; then a valid inference", () =>
    Effect.gen(function*() {
      const { port, stats } = yield* makeSocketServer
      for (const c of corpus) {
        const o = yield* Effect.promise(() => Client.send(port, c.method ?? "POST", c.path ?? echo, c.body))
        if (!Client.isReply(o)) return assert.fail(`${c.name}: ${o.error}`)
        assert.strictEqual(o.status, c.status, `${c.name}: ${o.body.slice(0, 300)}`)
        assertCleanError(c.name, o.status, o.body, c.error)
      }
      assert.strictEqual(stats.started, 0)
      const ok = yield* Effect.promise(() => Client.send(port, "POST", echo, valid))
      assert.isTrue(Client.isReply(ok) && ok.status === 200)
    }).pipe(withFreshMetrics), 30_000)

  it.live("paths the client does not normalise: %2e%2e, .., //, NUL, a version of ..", () =>
    Effect.gen(function*() {
      const { port, stats } = yield* makeSocketServer
      const body = JSON.stringify(valid)
      const cases: ReadonlyArray<readonly [string, number, RegExp]> = [
        ["/v2/models/%2e%2e/infer", 400, /^invalid model name "\.\."/],
        ["/v2/models/%2E%2E%2F%2E%2E%2Fetc/infer", 400, /^invalid model name/],
        ["/v2/models/../models/echo/infer", 404, /^no route/],
        ["/v2/models/echo/versions/%2e%2e/infer", 400, /^invalid model version "\.\."/],
        ["/v2/models/echo/versions/../../infer", 404, /^no route/],
        ["/v2/models/echo/versions//etc/infer", 400, /^invalid model version "etc"/],
        ["/v2/models/%00/infer", 400, /^invalid model name/],
        ["/v2/models/echo/versions/%001/infer", 400, /^invalid model version/],
        ["/v2/models/%ff%fe/infer", 404, /^no route/]
      ]
      for (const [path, status, error] of cases) {
        const r = parseRaw((yield* Effect.promise(() => raw(port, [request("POST", path, body)]))).text)
        assert.strictEqual(r.status, status, `${path}: ${r.body.slice(0, 300)}`)
        assertCleanError(path, r.status, r.body, error)
      }
      assert.strictEqual(stats.started, 0)
    }).pipe(withFreshMetrics))

  it.live("oversized bodies: 413 from Content-Length at once, and while reading a chunked body", () =>
    Effect.gen(function*() {
      const { port, stats } = yield* makeSocketServer
      const declared = yield* Effect.promise(() =>
        raw(port, [`POST ${echo} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\nConnection: close\r\n\r\n{`])
      )
      const d = parseRaw(declared.text)
      assert.strictEqual(d.status, 413, declared.text.slice(0, 300))
      assertCleanError("declared", d.status, d.body, /request body of 10000000000 bytes exceeds the limit of 65536 bytes/)

      const chunk = Buffer.alloc(16 * 1024, "1,")
      const head = `POST ${echo} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`
      const chunks: Array<string | Buffer> = [head]
      for (let i = 0; i < 8; i++) chunks.push(`${chunk.length.toString(16)}\r\n`, chunk, "\r\n")
      chunks.push("0\r\n\r\n")
      const streamed = yield* Effect.promise(() => raw(port, chunks))
      const s = parseRaw(streamed.text)
      assert.strictEqual(s.status, 413, streamed.text.slice(0, 300))
      assertCleanError("chunked", s.status, s.body, /request body exceeds the limit of 65536 bytes/)
      assert.strictEqual(stats.started, 0)
      const ok = yield* Effect.promise(() => Client.send(port, "POST", echo, valid))
      assert.isTrue(Client.isReply(ok) && ok.status === 200)
    }).pipe(withFreshMetrics))

  it.live("a client that leaves mid-body, or sends bytes that are not HTTP, does not stop the server", () =>
    Effect.gen(function*() {
      const { port, stats, connections } = yield* makeSocketServer
      // Declares 1000 bytes, sends 10, and closes.
      const half = yield* Effect.promise(() =>
        raw(port, [`POST ${echo} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"inputs":`], { waitMs: 300 })
      )
      assert.strictEqual(half.text, "", "nothing is answered to a body that never ends")
      // What Node's parser refuses is answered as JSON too, and the connection is closed.
      const parserCases: ReadonlyArray<readonly [string, string, number, RegExp]> = [
        ["a TLS hello", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03 not http\r\n\r\n", 400, /^malformed HTTP request/],
        ["a header line without a colon", "GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, /^malformed HTTP request/],
        ["both Content-Length and chunked", `POST ${echo} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n`, 400, /^malformed HTTP request/],
        ["headers over 16 kB", `GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`, 431, /^request headers too large/],
        // Answers Node would write itself, without a body (or none at all for CONNECT).
        ["no Host header", "GET /v2/health/live HTTP/1.1\r\n\r\n", 400, /^missing Host header: an HTTP\/1.1 request must carry one$/],
        ["no Host header on an infer request", `POST ${echo} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`, 400, /^missing Host header/],
        ["no Host header with Expect: 100-continue", `POST ${echo} HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n`, 400, /^missing Host header/],
        ["two Host headers", "GET /v2 HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, /^more than one Host header/],
        ["a Host with whitespace", "GET /v2 HTTP/1.1\r\nHost: a b\r\n\r\n", 400, /^invalid Host header: it holds whitespace$/],
        // No route upgrades: an Upgrade request is an ordinary one, Host check and timeouts included.
        ["no Host header with Upgrade", "GET /v2/health/live HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n", 400, /^missing Host header/],
        ["an Expect other than 100-continue", "GET /v2 HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n", 417, /^unsupported Expect header "foo": only 100-continue is$/],
        ["CONNECT", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, /^CONNECT is not supported/]
      ]
      for (const [label, bytes, status, error] of parserCases) {
        const reply = yield* Effect.promise(() => raw(port, [bytes], { keepOpen: true }))
        const r = parseRaw(reply.text)
        assert.strictEqual(r.status, status, `${label}: ${reply.text.slice(0, 200)}`)
        assert.include(r.head, "content-type: application/json", label)
        assert.include(r.head, "connection: close", label)
        // RFC 9110 §6.6.1: an origin server with a clock sends Date on every 4xx.
        assert.match(r.head, /\bdate: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT\b/i, label)
        assertCleanError(label, r.status, r.body, error)
        // The client kept its side open: the server must still let go of the socket.
        const released = yield* Effect.promise(() => Client.eventually(() => connections() === 0, 1000).then(() => true, () => false))
        reply.socket.destroy()
        assert.isTrue(released, `${label}: the server let go of the connection`)
      }
      assert.strictEqual(stats.started, 0)
      const ok = yield* Effect.promise(() => Client.send(port, "POST", echo, valid))
      assert.isTrue(Client.isReply(ok) && ok.status === 200)
    }).pipe(withFreshMetrics))
})
