/**
 * A real model whose run takes as long as its input is tall, built at test time: `x` float32
 * [batch, 512] through `layers` MatMuls by one 512×512 identity → `y` [batch, 512] (= x). A run
 * of a few thousand rows keeps a session inside onnxruntime's native code for seconds, as a big
 * model does, which no test op in a worker can stand in for; with thousands of layers, loading it
 * takes seconds too.
 */
import * as Fs from "node:fs"
import * as Path from "node:path"
import onnxProto from "onnx-proto"
import { encodeModel, valueInfo } from "../fixtures/OnnxGraph.ts"

const { onnx } = onnxProto

const width = 512

/** The model's bytes. */
export const bytes = (layers = 400): Uint8Array => {
  const identity = new Float32Array(width * width)
  for (let i = 0; i < width; i++) identity[i * width + i] = 1
  const node = Array.from({ length: layers }, (_, i) =>
    onnx.NodeProto.create({ name: `m${i}`, opType: "MatMul", input: [i === 0 ? "x" : `h${i - 1}`, "w"], output: [i === layers - 1 ? "y" : `h${i}`] }))
  return encodeModel(onnx.GraphProto.create({
    name: "slow",
    node,
    initializer: [onnx.TensorProto.create({ name: "w", dims: [width, width], dataType: onnx.TensorProto.DataType.FLOAT, rawData: new Uint8Array(identity.buffer) })],
    input: [valueInfo("x", onnx.TensorProto.DataType.FLOAT, ["batch", width])],
    output: [valueInfo("y", onnx.TensorProto.DataType.FLOAT, ["batch", width])]
  }))
}

/**
 * Writes the model as `<repository>/<name>/model.onnx`, batching off (one request, one run).
 * Its session takes longer to create the more `layers` it has (5 000: seconds).
 */
export const write = (repository: string, name = "slow", layers = 400): void => {
  Fs.mkdirSync(Path.join(repository, name), { recursive: true })
  Fs.writeFileSync(Path.join(repository, name, "model.onnx"), bytes(layers))
  Fs.writeFileSync(Path.join(repository, name, "config.json"), JSON.stringify({ batching: { enabled: false } }))
}

/** An OIP request body of `rows` rows of zeros, its output asked as binary data (thousands of rows are more values than a JSON answer carries). */
export const body = (rows: number): string =>
  JSON.stringify({ inputs: [{ name: "x", shape: [rows, width], datatype: "FP32", data: new Array(rows * width).fill(0) }], parameters: { binary_data_output: true } })
