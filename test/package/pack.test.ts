/**
 * `npm pack` produces a package that a fresh consumer project installs and uses: the root and a
 * deep import, one inference on the bundled MLP through the Promise facade, the installed CLI
 * (`--help`, and `infer` over a 2-line NDJSON file), and the type declarations under `tsc`.
 *
 * The consumer installs the tarball's dependencies from the npm cache or registry
 * (`--prefer-offline`), with onnxruntime-node's download of GPU binaries skipped (its CPU
 * binaries ship in its package).
 */
import { afterAll, assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("../..", import.meta.url))
const work = Fs.mkdtempSync(Path.join(Os.tmpdir(), "pack-test-"))
afterAll(() => Fs.rmSync(work, { recursive: true, force: true }))

// This Node first on PATH: npm, the CLI's `#!/usr/bin/env node` and tsc run on it.
const env = {
  ...process.env,
  PATH: `${Path.dirname(process.execPath)}${Path.delimiter}${Path.join(root, "node_modules", ".bin")}${Path.delimiter}${process.env["PATH"] ?? ""}`,
  ONNXRUNTIME_NODE_INSTALL: "skip",
  npm_config_onnxruntime_node_install: "skip",
  npm_config_fund: "false",
  npm_config_audit: "false",
  npm_config_update_notifier: "false"
}

const sh = (command: string, args: ReadonlyArray<string>, cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    const child = spawn(command, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")))
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
    child.on("error", (e) => resolve({ code: -1, stdout, stderr: `${stderr}${e.message}` }))
    child.on("exit", (code) => resolve({ code, stdout, stderr }))
  })

const ok = async (what: string, run: Promise<{ code: number | null; stdout: string; stderr: string }>) => {
  const result = await run
  assert.strictEqual(result.code, 0, `${what} failed:\n${result.stdout}\n${result.stderr}`)
  return result
}

describe("npm pack", () => {
  it("installs into a fresh project: library, deep import, CLI and types", async () => {
    const timings: Record<string, number> = {}
    const timed = async <A>(name: string, f: () => Promise<A>): Promise<A> => {
      const t0 = Date.now()
      const a = await f()
      timings[name] = Date.now() - t0
      return a
    }

    // Pack (prepack builds dist/).
    const packed = await timed("pack", () => ok("npm pack", sh("npm", ["pack", "--json", "--pack-destination", work], root)))
    const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf("["))) as Array<{ filename: string; size: number; files: Array<{ path: string }> }>
    const paths = info!.files.map((f) => f.path)
    for (const p of ["dist/index.js", "dist/index.d.ts", "dist/bin/cli.js", "dist/onnx/SessionWorker.js", "models/mlp/model.onnx", "package.json", "dist/grpc/proto/grpc_service.proto", "dist/grpc/proto/model_config.proto", "dist/grpc/proto/health.proto", "dist/grpc/proto/LICENSE"]) {
      assert.include(paths, p)
    }
    assert.isFalse(paths.some((p) => p.startsWith("src/") || p.startsWith("test/") || p.endsWith(".ts") && !p.endsWith(".d.ts")))

    // The packed Markdown's relative links land on packed files (README linked docs the package
    // left out), except the examples and the Grafana dashboard: they run or load from a checkout
    // (the examples import ../src), and the README says so where it links them.
    const checkoutOnly = ["examples", "deploy/"]
    for (const doc of paths.filter((p) => p.endsWith(".md"))) {
      const text = Fs.readFileSync(Path.join(root, doc), "utf8")
      for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
        if (/^[a-z]+:/.test(target!)) continue
        const resolved = Path.posix.normalize(Path.posix.join(Path.posix.dirname(doc), target!))
        if (checkoutOnly.some((prefix) => resolved.startsWith(prefix))) continue
        assert.include(paths, resolved, `${doc} links ${target}, which the package does not ship`)
      }
    }

    // A fresh consumer project.
    const consumer = Path.join(work, "consumer")
    Fs.mkdirSync(consumer)
    Fs.writeFileSync(Path.join(consumer, "package.json"), JSON.stringify({ name: "consumer", version: "1.0.0", private: true, type: "module" }))
    Fs.writeFileSync(Path.join(consumer, ".npmrc"), "onnxruntime-node-install=skip\n")
    await timed("install", () =>
      ok("npm install", sh("npm", ["install", Path.join(work, info!.filename), "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"], consumer)))

    // One copy of effect: effect-onnx's and @effect/platform-node's (and so the consumer's) resolve
    // to the same (pinned exactly, 4.1.0 sat beside the 4.1.x platform-node-shared requires, and an
    // Effect program's layers did not type-check against the engine's).
    const effects = Fs.readdirSync(Path.join(consumer, "node_modules"), { recursive: true, encoding: "utf8" })
      .filter((p) => p.split(Path.sep).at(-1) === "effect" && Fs.existsSync(Path.join(consumer, "node_modules", p, "package.json")))
    assert.deepStrictEqual(effects, ["effect"], "one node_modules/effect, at the top")

    // The library: root and deep imports, one inference through the Promise facade.
    Fs.writeFileSync(Path.join(consumer, "main.mjs"), `
import { InferenceClient, InferenceRequest, Tensor } from "effect-onnx"
import * as InferenceError from "effect-onnx/InferenceError"
const client = await InferenceClient.make()
const result = await client.infer(InferenceRequest.make("mlp", { input: Tensor.float32(new Float32Array(784), [1, 784]) }))
const missing = await client.infer(InferenceRequest.make("nope", {})).catch((e) => e)
console.log(JSON.stringify({ tag: result._tag, dims: result.outputs.logits.dims, missing: InferenceError.isInferenceError(missing) && missing.reason._tag }))
await client.close()
`)
    const main = await timed("library", () => ok("node main.mjs", sh(process.execPath, ["main.mjs"], consumer)))
    assert.deepStrictEqual(JSON.parse(main.stdout.trim().split("\n").at(-1)!), { tag: "Success", dims: [1, 10], missing: "ModelNotFound" })
    // The gRPC service definitions ship and load from the installed package.
    const grpc = await sh(process.execPath, ["--input-type=module", "-e", "const c = await import('effect-onnx/GrpcCodec'); const d = c.loadDefinitions(); console.log(Object.keys(d).includes('inference.GRPCInferenceService'))"], consumer)
    assert.strictEqual(grpc.stdout.trim(), "true", grpc.stderr)
    const internal = await sh(process.execPath, ["--input-type=module", "-e", "await import('effect-onnx/onnx/WorkerHost')"], consumer)
    assert.include(internal.stderr, "ERR_PACKAGE_PATH_NOT_EXPORTED")

    // The CLI, through the bin link npm made.
    const bin = Path.join(consumer, "node_modules", ".bin", "effect-onnx")
    const help = await timed("cli --help", () => ok("effect-onnx --help", sh(bin, ["--help"], consumer)))
    assert.match(help.stdout, /infer\s+Runs every record/)
    const record = JSON.stringify({ input: { datatype: "FP32", shape: [1, 784], data: new Array(784).fill(0.5) } })
    Fs.writeFileSync(Path.join(consumer, "in.ndjson"), `${record}\n${record}\n`)
    await timed("cli infer", () =>
      ok("effect-onnx infer", sh(bin, ["infer", "--model", "mlp", "--input", "in.ndjson", "--output", "out.ndjson", "--progress", "none"], consumer)))
    const out = Fs.readFileSync(Path.join(consumer, "out.ndjson"), "utf8").trim().split("\n").map((l) => JSON.parse(l) as { line: number; outputs: { logits: { shape: Array<number> } } })
    assert.deepStrictEqual(out.map((o) => [o.line, o.outputs.logits.shape]), [[1, [1, 10]], [2, [1, 10]]])

    // The type declarations, under the strict compiler (node's types from this repository). The
    // expect-error directive below fails the check if the declarations do not resolve (types turn `any`);
    // skipLibCheck spares re-checking effect's own declarations.
    Fs.writeFileSync(Path.join(consumer, "check.ts"), `
import { Effect, Layer } from "effect"
import { AsyncConfig, Engine, InferenceClient, InferenceError, InferenceRequest, OnnxModelPool, Telemetry, Tensor } from "effect-onnx"
import { AsyncInferenceEngine } from "effect-onnx/Engine"
// An Effect program of the consumer's own, over the engine's layers (the README's "Effect users").
const EngineLive = Engine.AsyncInferenceEngine.layer.pipe(
  Layer.provide(Layer.mergeAll(OnnxModelPool.layer({ repository: InferenceClient.bundledModels }), Telemetry.TelemetryCollector.layer, AsyncConfig.AsyncConfigService.layerConfig))
)
const program: Effect.Effect<number, never> = Effect.gen(function*() {
  const engine = yield* Engine.AsyncInferenceEngine
  const out = yield* engine.infer(InferenceRequest.make("mlp", { input: Tensor.float32(new Float32Array(784), [1, 784]) }))
  return out.outputs["logits"]!.dims.length
}).pipe(Effect.catchTag("InferenceError", () => Effect.succeed(0)), Effect.provide(EngineLive), Effect.orDie)
const client: InferenceClient.InferenceClient = await InferenceClient.make({ config: { maxConcurrentRequests: 2 } })
const result = await client.infer(InferenceRequest.make("mlp", { input: Tensor.float32(new Float32Array(784), [1, 784]) }), { signal: AbortSignal.timeout(1000) })
const dims: ReadonlyArray<number> = result.outputs["logits"]!.dims
const reason: InferenceError.ReasonTag = "Cancelled"
const layer: typeof AsyncInferenceEngine.layer = Engine.AsyncInferenceEngine.layer
// @ts-expect-error the queue bound is a number
const wrong: string = client.config.maxQueuedRequests
export { dims, layer, program, reason, wrong }
`)
    Fs.writeFileSync(Path.join(consumer, "tsconfig.json"), JSON.stringify({
      compilerOptions: {
        target: "ES2023",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        lib: ["ES2023", "DOM"],
        types: ["node"],
        typeRoots: [Path.join(root, "node_modules", "@types")]
      },
      files: ["check.ts"]
    }))
    await timed("tsc", () => ok("tsc", sh(Path.join(root, "node_modules", ".bin", "tsc"), ["-p", "."], consumer)))

    console.log(`npm pack: ${(info!.size / 1e6).toFixed(2)} MB, ${paths.length} files; ${JSON.stringify(timings)}`)
  }, 180_000)
})
