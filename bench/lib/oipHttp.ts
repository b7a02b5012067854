/**
 * The OIP request bodies the HTTP benchmarks send (one 784-float MLP row, seed 7), and one POST
 * of such a body over a keep-alive agent.
 */
import * as Http from "node:http"
import { mlpData } from "./common.ts"

const row = mlpData(1, 7)

/** The row's `inputs`, JSON numbers. */
export const inputs = [{ name: "input", shape: [1, 784], datatype: "FP32", data: Array.from(row) }]

/** The row as an OIP JSON body. */
export const jsonBody = Buffer.from(JSON.stringify({ inputs }))

/** The row as binary tensor data: the JSON header, then the row's 3,136 bytes; binary logits back. */
export const binaryHeader = Buffer.from(JSON.stringify({
  inputs: [{ name: "input", shape: [1, 784], datatype: "FP32", parameters: { binary_data_size: 784 * 4 } }],
  outputs: [{ name: "logits", parameters: { binary_data: true } }]
}))
export const binaryBody = Buffer.concat([binaryHeader, Buffer.from(row.buffer)])

/**
 * One POST of `body` to `127.0.0.1:port` at `path` (as binary tensor data with `binary`);
 * resolves once the whole answer was read, rejects on a network error or a status other than 200.
 */
export const post = (port: number, path: string, agent: Http.Agent, body: Buffer, binary = false): Promise<void> =>
  new Promise((resolve, reject) => {
    const req = Http.request({
      host: "127.0.0.1",
      port,
      method: "POST",
      path,
      agent,
      headers: binary
        ? { "content-type": "application/octet-stream", "content-length": body.length, "inference-header-content-length": binaryHeader.length }
        : { "content-type": "application/json", "content-length": body.length }
    }, (res) => {
      res.on("data", () => {})
      res.on("end", () => (res.statusCode === 200 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`))))
      res.on("error", reject)
    })
    req.on("error", reject)
    req.end(body)
  })
