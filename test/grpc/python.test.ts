/**
 * Another language's gRPC stack against the server: Python's grpcio with stubs generated from the
 * .proto files the package ships (what tritonclient.grpc is built on), over every unary RPC kind,
 * raw and typed contents, a classification (Triton's extension), an error, statistics, a stream and the health service. Runs where
 * `python3` has grpcio and grpcio-tools (Debian: python3-grpcio python3-grpc-tools); skipped
 * elsewhere.
 */
import { assert, describe, it } from "@effect/vitest"
import { spawn, spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as GrpcCodec from "../../src/grpc/GrpcCodec.ts"

const root = fileURLToPath(new URL("../..", import.meta.url))
const python = ["/usr/bin/python3", "python3"].find((p) => spawnSync(p, ["-c", "import grpc, grpc_tools"], { stdio: "ignore" }).status === 0)

describe("a Python grpcio client", () => {
  it.skipIf(python === undefined)("calls every kind of RPC through stubs generated from the shipped .proto files", async () => {
    const work = Fs.mkdtempSync(Path.join(Os.tmpdir(), "grpc-python-"))
    const child = spawn(process.execPath, [Path.join(root, "src/bin/server.ts"), "--port", "0", "--grpc-port", "0"], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    try {
      const generated = spawnSync(python!, ["-m", "grpc_tools.protoc", "-I", GrpcCodec.protoDirectory, `--python_out=${work}`, `--grpc_python_out=${work}`, "grpc_service.proto", "model_config.proto", "health.proto"], { encoding: "utf8" })
      assert.strictEqual(generated.status, 0, generated.stderr)
      Fs.copyFileSync(Path.join(root, "test/grpc/python/check.py"), Path.join(work, "check.py"))
      let output = ""
      const port = await new Promise<number>((resolve, reject) => {
        const onData = (chunk: Buffer) => {
          output += chunk.toString("utf8")
          const m = /gRPC listening on [^:\s]+:(\d+)/.exec(output)
          if (m !== null) resolve(Number(m[1]))
        }
        child.stdout!.on("data", onData)
        child.stderr!.on("data", onData)
        child.on("exit", (code) => reject(new Error(`server exited with ${code}: ${output}`)))
      })
      const run = spawnSync(python!, ["check.py", String(port)], { cwd: work, encoding: "utf8", timeout: 60_000 })
      assert.strictEqual(run.status, 0, `${run.stdout}\n${run.stderr}`)
      assert.deepStrictEqual(run.stdout.trim().split("\n"), ["live", "metadata", "ready", "model metadata", "config", "infer", "typed contents", "classification", "error", "stats", "stream", "health"])
    } finally {
      child.kill("SIGTERM")
      Fs.rmSync(work, { recursive: true, force: true })
    }
  }, 90_000)
})
