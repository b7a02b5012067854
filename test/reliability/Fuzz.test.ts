/**
 * Random mutations of valid inference requests (effect's own property testing): random JSON
 * values in any field, deleted keys, wrong types, extreme numbers, long strings, deep nesting,
 * tokens that are not JSON (NaN, Infinity), truncated and byte-flipped bodies, junk model names.
 * Whatever arrives, the answer is below 500 (or the 504 of a deadline the mutation made 1 ms or
 * shorter, which can pass before the request runs), an error is JSON `{"error"}` with a clean message, and a valid
 * request is still served afterwards.
 *
 * In memory (real routes and engine, scripted pool): `FUZZ_RUNS` cases (400 by default), then a
 * quarter of that over a real socket through Node's HTTP parser. `FUZZ_SEED` fixes the seed;
 * `FUZZ_VERBOSE=1` prints how many answers of each kind the run gave. A failure prints the
 * shrunk case, the request and vitest's replay token.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Schema, Scope } from "effect"
import { HttpServer } from "effect/http"
import * as Http from "node:http"
import { AsyncConfigService } from "../../src/AsyncConfig.ts"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import * as Server from "../../src/http/Server.ts"
import { TelemetryCollector } from "../../src/Telemetry.ts"
import * as Client from "../http/HttpClient.ts"
import { makeApp, makeTestPool, routeOptions, type Send, withFreshMetrics } from "../http/TestApp.ts"
import { assertCleanError } from "./Errors.ts"

const runs = Number(process.env["FUZZ_RUNS"] ?? 400)
const bodyLimitBytes = 256 * 1024

/** Valid requests, one per kind of input, with every optional field present so that it gets mutated. */
const bases: ReadonlyArray<{ readonly model: string; readonly body: unknown }> = [
  {
    model: "echo",
    body: {
      id: "fuzz",
      parameters: { priority: 2, timeout: 10_000_000 },
      inputs: [{ name: "x", shape: [2, 4], datatype: "FP32", parameters: {}, data: [[1, 2, 3, 4], [5, 6, 7, 8]] }],
      outputs: [{ name: "y", parameters: {} }]
    }
  },
  {
    model: "multi",
    body: {
      inputs: [{ name: "a", shape: [3], datatype: "FP32", data: [1.5, -2, 3] }, { name: "b", shape: [], datatype: "INT64", data: ["10"] }],
      outputs: [{ name: "scaled" }, { name: "sum" }]
    }
  },
  { model: "identity_bool", body: { inputs: [{ name: "x", shape: [1, 3], datatype: "BOOL", data: [true, false, 1] }] } },
  { model: "identity_string", body: { inputs: [{ name: "x", shape: [2, 1], datatype: "BYTES", data: [["a"], ["é"]] }] } },
  { model: "identity_float16", body: { inputs: [{ name: "x", shape: [1, 2], datatype: "FP16", data: [0.1, 65504] }] } },
  { model: "identity_uint64", body: { inputs: [{ name: "x", shape: [1, 2], datatype: "UINT64", data: ["18446744073709551615", 0] }] } }
]

const Int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/** Which node of the (current) body a mutation touches: an index into its paths, modulo their number. */
const At = Int(0, 1000)

const extremes: ReadonlyArray<number> = [
  1e308, -1e308, 2 ** 53 + 2, -(2 ** 53), 2 ** 31, -(2 ** 31) - 1, 2 ** 64, -1, 0, -0, 0.5, 5e-324, 268_435_457, 4_294_967_296
]

/** Text spliced in place of a value: not JSON, or JSON that JSON.stringify cannot build. */
const tokens = ["NaN", "Infinity", "-Infinity", "undefined", "1e999", "-1e999", "0x10", "01", "'a'", "[1,]", "{\"a\":1,\"a\":2}", "\"\\ud800\"", "1e-999"] as const

const Mutation = Schema.Union([
  Schema.TaggedStruct("Replace", { at: At, value: Schema.Json }),
  Schema.TaggedStruct("Delete", { at: At }),
  Schema.TaggedStruct("WrongType", { at: At, which: Int(0, 6) }),
  Schema.TaggedStruct("Extreme", { at: At, which: Int(0, extremes.length - 1) }),
  Schema.TaggedStruct("LongString", { at: At, length: Int(0, 100_000) }),
  Schema.TaggedStruct("Deep", { at: At, depth: Int(1, 20_000) }),
  /** The first input's shape becomes `depth` ones and its data is nested as deep. */
  Schema.TaggedStruct("DeepTensor", { depth: Int(1, 20_000) }),
  Schema.TaggedStruct("Token", { at: At, token: Schema.Literals(tokens) }),
  Schema.TaggedStruct("Duplicate", { at: At }),
  Schema.TaggedStruct("Truncate", { at: Int(0, 100_000) }),
  Schema.TaggedStruct("Flip", { at: Int(0, 100_000), char: Int(0, 127) }),
  Schema.TaggedStruct("ModelName", { name: Schema.String })
])

type Mutation = typeof Mutation.Type

const Case = Schema.Struct({
  base: Int(0, bases.length - 1),
  mutations: Schema.Array(Mutation).check(Schema.isMinLength(1), Schema.isMaxLength(3))
})

type Case = typeof Case.Type

type Path = ReadonlyArray<string | number>

/** Every node of `value`, the root included, depth first. */
const pathsOf = (value: unknown, prefix: Path = [], out: Array<Path> = []): Array<Path> => {
  out.push(prefix)
  if (Array.isArray(value)) value.forEach((v, i) => pathsOf(v, [...prefix, i], out))
  else if (value !== null && typeof value === "object") for (const [k, v] of Object.entries(value)) pathsOf(v, [...prefix, k], out)
  return out
}

/** `root` with the node at `path` replaced by `f(node)` (undefined deletes it); a new root when the path is empty. */
const update = (root: unknown, path: Path, f: (node: unknown) => unknown): unknown => {
  if (path.length === 0) return f(root)
  let parent = root as Record<string | number, unknown>
  for (const key of path.slice(0, -1)) parent = parent[key] as Record<string | number, unknown>
  const key = path[path.length - 1]!
  const next = f(parent[key])
  if (next !== undefined) parent[key] = next
  else if (Array.isArray(parent)) parent.splice(key as number, 1)
  else delete parent[key]
  return root
}

const wrongTypes: ReadonlyArray<unknown> = [{}, [], "", true, null, 0, "1"]

/** The request a case describes: method, path and body text. */
export const build = (c: Case): { readonly path: string; readonly body: string } => {
  const base = bases[c.base]!
  let model = base.model
  let body: unknown = structuredClone(base.body)
  const splices: Array<string> = []
  const splice = (text: string) => `\u0000splice${splices.push(text) - 1}\u0000`
  const textual: Array<Mutation> = []
  for (const m of c.mutations) {
    const paths = pathsOf(body)
    const path = "at" in m && m._tag !== "Truncate" && m._tag !== "Flip" ? paths[m.at % paths.length]! : []
    switch (m._tag) {
      case "Replace":
        body = update(body, path, () => structuredClone(m.value))
        break
      case "Delete":
        body = path.length === 0 ? {} : update(body, path, () => undefined)
        break
      case "WrongType":
        body = update(body, path, () => structuredClone(wrongTypes[m.which]))
        break
      case "Extreme":
        body = update(body, path, () => extremes[m.which])
        break
      case "LongString":
        body = update(body, path, () => "x".repeat(m.length))
        break
      case "Deep":
        body = update(body, path, () => splice("[".repeat(m.depth) + "1" + "]".repeat(m.depth)))
        break
      case "Token":
        body = update(body, path, () => splice(m.token))
        break
      case "DeepTensor": {
        const input = (body as { inputs?: Array<unknown> } | null)?.inputs?.[0]
        if (input !== null && typeof input === "object" && !Array.isArray(input)) {
          Object.assign(input, { shape: new Array(m.depth).fill(1), data: splice("[".repeat(m.depth) + "1" + "]".repeat(m.depth)) })
        }
        break
      }
      case "Duplicate":
        body = update(body, path, (node) => Array.isArray(node) ? [...node, ...structuredClone(node)] : node)
        break
      case "ModelName":
        model = m.name
        break
      case "Truncate":
      case "Flip":
        textual.push(m)
    }
  }
  let text = body === undefined ? "" : JSON.stringify(body)
  text = text.replace(/"\\u0000splice(\d+)\\u0000"/g, (_, i: string) => splices[Number(i)]!)
  for (const m of textual) {
    if (m._tag === "Truncate") text = text.slice(0, m.at % (text.length + 1))
    else if (m._tag === "Flip" && text.length > 0) {
      const i = m.at % text.length
      text = text.slice(0, i) + String.fromCharCode(m.char) + text.slice(i + 1)
    }
  }
  // A lone surrogate cannot be percent-encoded: it becomes U+FFFD.
  return { path: `/v2/models/${encodeURIComponent(model.replace(/[\ud800-\udfff]/g, "\ufffd"))}/infer`, body: text }
}

const valid = { inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4] }] }

/** The property: below 500; an error is clean JSON; a success has outputs. */
export const statuses = new Map<string, number>()

const check = (label: string, status: number, text: string) => {
  const key = status >= 400 ? `${status} ${String(JSON.parse(text).error).slice(0, 40)}` : String(status)
  statuses.set(key, (statuses.get(key) ?? 0) + 1)
  // A mutated `parameters.timeout` of a millisecond or less is a deadline that can pass before the
  // request is dispatched: 504 DeadlineExceeded is its right answer, not a server fault.
  const deadline = status === 504 && /exceeded its [0-9.e-]+ ms deadline/.test(text) && Number(/its ([0-9.e-]+) ms/.exec(text)![1]) <= 1
  if (!deadline) assert.isBelow(status, 500, `${label} answered ${status}: ${text.slice(0, 300)}`)
  if (status >= 400) assertCleanError(label, status, text)
  else {
    assert.strictEqual(status, 200, label)
    assert.isArray(JSON.parse(text).outputs, label)
  }
}

const describeCase = (request: { path: string; body: string }) =>
  `POST ${request.path.slice(0, 120)} ${request.body.length > 300 ? `${request.body.slice(0, 300)}… (${request.body.length} chars)` : request.body}`

describe("fuzzed request bodies, in memory", () => {
  const scope = Effect.runSync(Scope.make())
  let send: Send
  beforeAll(async () => {
    send = (await Effect.runPromise(makeApp({ bodyLimitBytes }).pipe(Scope.provide(scope), withFreshMetrics))).send
  })
  afterAll(() => {
    if (process.env["FUZZ_VERBOSE"] !== undefined) console.log([...statuses].sort((a, b) => b[1] - a[1]))
    return Effect.runPromise(Scope.close(scope, Exit.void))
  })

  it.effect.prop(
    "every mutation of a valid request is answered below 500, an error as clean JSON, and the server keeps serving",
    [Case],
    ([c]) =>
      Effect.gen(function*() {
        const request = build(c)
        const r = yield* send("POST", request.path, request.body)
        check(describeCase(request), r.status, r.text)
        const ok = yield* send("POST", "/v2/models/echo/infer", valid)
        assert.strictEqual(ok.status, 200, `a valid request after ${describeCase(request)}`)
      }),
    { timeout: 120_000, arbitrary: { runs, seed: process.env["FUZZ_SEED"] } }
  )
})

describe("fuzzed request bodies, over a real socket", () => {
  const scope = Effect.runSync(Scope.make())
  let port: number
  const agent = new Http.Agent({ keepAlive: true, maxSockets: 1 })
  beforeAll(async () => {
    const context = await Effect.runPromise(Effect.gen(function*() {
      const pool = yield* makeTestPool()
      return yield* Layer.build(
        Server.layer({ ...routeOptions(bodyLimitBytes), host: "127.0.0.1", port: 0, keepAliveTimeoutMs: 10_000 }).pipe(
          Layer.provideMerge(AsyncInferenceEngine.layer),
          Layer.provideMerge(Layer.mergeAll(pool.layer, TelemetryCollector.layer, AsyncConfigService.layerWith({})))
        )
      )
    }).pipe(Scope.provide(scope), withFreshMetrics))
    const address = Context.get(context, HttpServer.HttpServer).address
    if (address._tag === "UnixPathAddress") throw new Error("expected a TCP address")
    port = address.port
  })
  afterAll(async () => {
    agent.destroy()
    await Effect.runPromise(Scope.close(scope, Exit.void))
  })

  it.effect.prop(
    "the same through Node's HTTP parser, on one kept-alive connection",
    [Case],
    ([c]) =>
      Effect.gen(function*() {
        const request = build(c)
        const o = yield* Effect.promise(() => Client.send(port, "POST", request.path, request.body, agent))
        if (!Client.isReply(o)) return assert.fail(`${describeCase(request)}: ${o.error}`)
        check(describeCase(request), o.status, o.body)
        const ok = yield* Effect.promise(() => Client.send(port, "POST", "/v2/models/echo/infer", valid, agent))
        assert.isTrue(Client.isReply(ok) && ok.status === 200, `a valid request after ${describeCase(request)}`)
      }),
    { timeout: 120_000, arbitrary: { runs: Math.max(1, Math.round(runs / 4)), seed: process.env["FUZZ_SEED"] } }
  )
})
