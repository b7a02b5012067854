/**
 * A compute-heavy model for GPU checks: an MLP generated with `scripts/Mlp.ts` (default
 * 1024-4096-4096-1000, 25M parameters, about 100 MB), written once into a temporary model
 * repository as several models (one `config.json` each) that share the same weights, so that a
 * CPU model and a GPU model compute the same function.
 *
 * @module model
 */
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import onnxProto from "onnx-proto"
import * as Mlp from "../Mlp.ts"

const { onnx } = onnxProto

/** The MLP of the GPU measurements in `/work/shared/gpu/README.md`. */
export const heavySizes: ReadonlyArray<number> = [1024, 4096, 4096, 1000]

export interface Repository {
  readonly root: string
  readonly sizes: ReadonlyArray<number>
  /** The model file (the first model's). */
  readonly modelPath: string
  /** `rows` rows of input, deterministic per `seed`, values in [-0.5, 0.5). */
  readonly input: (rows: number, seed?: number) => Float32Array<ArrayBuffer>
  readonly remove: () => void
}

/** `sizes` "1024,4096,4096,1000" → [1024, 4096, 4096, 1000]; undefined → `fallback`. */
export const parseSizes = (text: string | undefined, fallback: ReadonlyArray<number>): ReadonlyArray<number> => {
  if (text === undefined || text === "") return fallback
  const sizes = text.split(",").map((s) => Number(s.trim()))
  if (sizes.length < 2 || sizes.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--sizes: expected at least two positive integers, got ${JSON.stringify(text)}`)
  return sizes
}

/** Writes the MLP of `sizes` under a new temp root as each model of `models` (name → config.json). */
export const writeRepository = (sizes: ReadonlyArray<number>, models: Readonly<Record<string, Record<string, unknown>>>): Repository => {
  const root = Fs.mkdtempSync(Path.join(Os.tmpdir(), "effect-onnx-gpu-"))
  const { bytes } = Mlp.build({ sizes, seed: 5 })
  let modelPath = ""
  for (const [name, config] of Object.entries(models)) {
    const dir = Path.join(root, name)
    Fs.mkdirSync(dir)
    const file = Path.join(dir, "model.onnx")
    if (modelPath === "") Fs.writeFileSync(modelPath = file, bytes)
    else Fs.copyFileSync(modelPath, file)
    Fs.writeFileSync(Path.join(dir, "config.json"), JSON.stringify(config, null, 2))
  }
  const input = (rows: number, seed = 1): Float32Array<ArrayBuffer> => {
    let a = seed >>> 0
    const data = new Float32Array(rows * sizes[0]!)
    for (let i = 0; i < data.length; i++) {
      a = (Math.imul(a, 1664525) + 1013904223) >>> 0
      data[i] = a / 4294967296 - 0.5
    }
    return data
  }
  return { root, sizes, modelPath, input, remove: () => Fs.rmSync(root, { recursive: true, force: true }) }
}

/**
 * A model with the MLP's signature whose run costs about a copy: `input` float32 [batch, inputs] →
 * `logits` [batch, outputs], the first `outputs` columns (one Slice; `outputs` ≤ `inputs`). Served
 * like the MLP, it measures what the request path costs with the device taken out.
 */
export const sliceOnnx = (inputs: number, outputs: number): Uint8Array => {
  if (outputs > inputs) throw new RangeError(`sliceOnnx: outputs (${outputs}) must not exceed inputs (${inputs})`)
  const ints = (name: string, value: number) => onnx.TensorProto.create({ name, dims: [1], dataType: onnx.TensorProto.DataType.INT64, int64Data: [value] })
  const floats = (name: string, width: number) =>
    onnx.ValueInfoProto.create({
      name,
      type: onnx.TypeProto.create({
        tensorType: onnx.TypeProto.Tensor.create({
          elemType: onnx.TensorProto.DataType.FLOAT,
          shape: onnx.TensorShapeProto.create({ dim: [onnx.TensorShapeProto.Dimension.create({ dimParam: "batch" }), onnx.TensorShapeProto.Dimension.create({ dimValue: width })] })
        })
      })
    })
  return onnx.ModelProto.encode(onnx.ModelProto.create({
    irVersion: 8,
    producerName: "effect-onnx/scripts/gpu/model",
    opsetImport: [onnx.OperatorSetIdProto.create({ domain: "", version: 17 })],
    graph: onnx.GraphProto.create({
      name: "slice",
      node: [onnx.NodeProto.create({ name: "slice", opType: "Slice", input: ["input", "starts", "ends", "axes"], output: ["logits"] })],
      initializer: [ints("starts", 0), ints("ends", outputs), ints("axes", 1)],
      input: [floats("input", inputs)],
      output: [floats("logits", outputs)]
    })
  })).finish()
}

/** Writes `bytes` as model `name` of the repository at `root` with `config` as its config.json. */
export const addModel = (root: string, name: string, bytes: Uint8Array, config: Record<string, unknown>): void => {
  const dir = Path.join(root, name)
  Fs.mkdirSync(dir)
  Fs.writeFileSync(Path.join(dir, "model.onnx"), bytes)
  Fs.writeFileSync(Path.join(dir, "config.json"), JSON.stringify(config, null, 2))
}

/** Largest absolute difference of two equally long arrays (Infinity when the lengths differ). */
export const maxAbsDiff = (a: ArrayLike<number>, b: ArrayLike<number>): number => {
  if (a.length !== b.length) return Infinity
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}
