/**
 * The standalone server as a process with gRPC beside HTTP: a gRPC inference on the real MLP
 * (raw contents, checked against the reference forward pass), both protocols answering, and
 * SIGTERM: the gRPC health turns NOT_SERVING while the server drains, then the process exits 0.
 */
import * as Grpc from "@grpc/grpc-js"
import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as Mlp from "../../scripts/Mlp.ts"
import * as GrpcCodec from "../../src/grpc/GrpcCodec.ts"
import { startServer } from "../fixtures/ServerProcess.ts"
import * as Client from "../http/HttpClient.ts"

const root = fileURLToPath(new URL("../..", import.meta.url))
const entry = Path.join(root, "src/bin/server.ts")
const proto = Grpc.loadPackageDefinition(GrpcCodec.loadDefinitions()) as any

const unary = (client: any, method: string, request: unknown): Promise<{ error?: Grpc.ServiceError; response?: any }> =>
  new Promise((resolve) => client[method](request, (error: Grpc.ServiceError | null, response: any) => resolve(error === null ? { response } : { error })))

describe("node src/bin/server.ts with gRPC", () => {
  it("serves gRPC beside HTTP on the same engine; SIGTERM turns gRPC health NOT_SERVING, drains and exits 0", async () => {
    const server = await startServer(["--port", "0", "--grpc-port", "0", "--grace-period-seconds", "5"], { grpc: true, timeoutMs: 20_000 })
    const { child, exit } = server
    const ports = { http: server.http, grpc: server.grpc }
    const address = `127.0.0.1:${ports.grpc}`
    const client = new proto.inference.GRPCInferenceService(address, Grpc.credentials.createInsecure())
    const health = new proto.grpc.health.v1.Health(address, Grpc.credentials.createInsecure())
    try {
      const weights = Mlp.weights()
      const x = Float32Array.from({ length: 2 * 784 }, (_, i) => ((i * 7919) % 1000) / 1000 - 0.5)
      const expected = Mlp.forward(weights, x, 2)
      const r = await unary(client, "ModelInfer", {
        model_name: "mlp",
        inputs: [{ name: "input", datatype: "FP32", shape: [2, 784] }],
        raw_input_contents: [Buffer.from(x.buffer)]
      })
      assert.isUndefined(r.error, r.error?.message)
      assert.deepStrictEqual(r.response.outputs[0].shape, ["2", "10"])
      const logits = new Float32Array(new Uint8Array(r.response.raw_output_contents[0]).buffer)
      for (let i = 0; i < expected.length; i++) assert.closeTo(logits[i]!, expected[i]!, 1e-4)
      const config = await unary(client, "ModelConfig", { name: "mlp" })
      assert.strictEqual(config.response.config.platform, "onnxruntime_onnx")
      assert.deepStrictEqual((await unary(health, "Check", { service: "" })).response, { status: "SERVING" })
      const ready = await Client.send(ports.http, "GET", "/v2/health/ready")
      assert.isTrue(Client.isReply(ready) && ready.status === 200)

      child.kill("SIGTERM")
      // The drain keeps both listeners open for a quiet period; meanwhile health says NOT_SERVING.
      let status: string | undefined
      for (let i = 0; i < 50 && status !== "NOT_SERVING"; i++) {
        status = (await unary(health, "Check", { service: "" })).response?.status
        if (status !== "NOT_SERVING") await new Promise((resolve) => setTimeout(resolve, 5))
      }
      assert.strictEqual(status, "NOT_SERVING")
      assert.strictEqual(await exit, 0, server.output())
    } finally {
      client.close()
      health.close()
      if (child.exitCode === null) child.kill("SIGKILL")
    }
  }, 40_000)

  it("binds gRPC on an IPv6 --host as HTTP does, and logs an address a client can dial ([::1]:port)", async () => {
    const child = spawn(process.execPath, [entry, "--host", "::1", "--port", "0", "--grpc-port", "0", "--grace-period-seconds", "1"], {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    const exit = new Promise<number | null>((r) => child.on("exit", (code) => r(code)))
    const address = await new Promise<string>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        output += chunk.toString("utf8")
        const grpc = /gRPC listening on (\[::1\]:\d+)/.exec(output)
        if (grpc !== null) resolve(grpc[1]!)
      }
      child.stdout!.on("data", onData)
      child.stderr!.on("data", onData)
      void exit.then((code) => reject(new Error(`server exited with ${code}:\n${output}`)))
      setTimeout(() => reject(new Error(`server did not listen in time:\n${output}`)), 20_000).unref()
    })
    const client = new proto.inference.GRPCInferenceService(address, Grpc.credentials.createInsecure())
    try {
      assert.deepStrictEqual((await unary(client, "ServerLive", {})).response, { live: true })
      child.kill("SIGTERM")
      assert.strictEqual(await exit, 0, output)
    } finally {
      client.close()
      if (child.exitCode === null) child.kill("SIGKILL")
    }
  }, 40_000)
})
