/**
 * Is there a WebGPU adapter here? Creates one onnxruntime-node session with the "webgpu" provider
 * on the bundled MLP (`models/mlp/model.onnx`) in a child process, so that neither a failure nor
 * a native crash of the GPU stack touches the caller, and so that the caller's own process holds
 * no WebGPU context afterwards (two threads of one process with WebGPU sessions crashed on an
 * NVIDIA host). Takes under a second without a GPU.
 *
 *   node scripts/gpu/probe.ts        prints `{"available":false,"reason":"webgpu: no adapter found (...)"}`
 *
 * @module probe
 */
import { execFile } from "node:child_process"
import * as Path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"

export type Probe =
  | { readonly available: true; readonly createMs: number }
  | { readonly available: false; readonly reason: string }

const root = fileURLToPath(new URL("../..", import.meta.url))

const child = (modelPath: string, diagnosis: string) => `
import * as ort from "onnxruntime-node"
import { explain } from ${JSON.stringify(diagnosis)}
const t0 = performance.now()
try {
  const s = await ort.InferenceSession.create(${JSON.stringify(modelPath)}, { executionProviders: ["webgpu"], logSeverityLevel: 4 })
  const createMs = performance.now() - t0
  await s.release()
  console.log(JSON.stringify({ available: true, createMs }))
} catch (e) {
  console.log(JSON.stringify({ available: false, reason: explain("webgpu", e instanceof Error ? e.message : String(e)) }))
}
`

/** Probes once per call (under a second without a GPU); `timeoutMs` (default 30 s) bounds a hung driver. */
export const probeWebGpu = (options: { readonly modelPath?: string; readonly timeoutMs?: number } = {}): Promise<Probe> =>
  new Promise((resolve) => {
    const modelPath = options.modelPath ?? Path.join(root, "models", "mlp", "model.onnx")
    const diagnosis = pathToFileURL(Path.join(root, "src", "onnx", "ProviderDiagnosis.ts")).href
    execFile(process.execPath, ["--input-type=module", "-e", child(modelPath, diagnosis)], { cwd: root, timeout: options.timeoutMs ?? 30_000 }, (error, stdout, stderr) => {
      const line = stdout.trim().split("\n").pop() ?? ""
      try {
        resolve(JSON.parse(line) as Probe)
      } catch {
        const why = error?.signal ? `killed by ${error.signal}` : error ? `exit code ${error.code}` : "no answer"
        resolve({ available: false, reason: `webgpu: the probe process failed (${why}): ${stderr.trim().split("\n").slice(-2).join(" ")}` })
      }
    })
  })

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(JSON.stringify(await probeWebGpu()))
}
