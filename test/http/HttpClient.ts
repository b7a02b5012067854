/**
 * A minimal `node:http` client for the real-socket tests: keep-alive agents under the test's
 * control, requests that can be abandoned mid-flight, errors reported by code (ECONNREFUSED,
 * ECONNRESET) rather than thrown.
 */
import * as Http from "node:http"
import * as Net from "node:net"

export interface Reply {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly body: string
}

export type Outcome = Reply | { readonly error: string }

export interface Pending {
  readonly request: Http.ClientRequest
  readonly done: Promise<Outcome>
}

/** Starts a request; `done` settles with the reply or the error code, never rejects. */
export const start = (
  port: number,
  method: string,
  path: string,
  body?: unknown,
  agent?: Http.Agent,
  headers: Readonly<Record<string, string>> = {}
): Pending => {
  const payload = body === undefined ? undefined : typeof body === "string" || body instanceof Uint8Array ? body : JSON.stringify(body)
  let request!: Http.ClientRequest
  const done = new Promise<Outcome>((resolve) => {
    request = Http.request({
      host: "127.0.0.1",
      port,
      method,
      path,
      agent: agent ?? false,
      headers: payload === undefined ? { ...headers } : { "content-type": "application/json", "content-length": Buffer.byteLength(payload), ...headers }
    }, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (c: Buffer) => chunks.push(c))
      response.on("end", () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks).toString("utf8") }))
      response.on("error", (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }))
    })
    request.on("error", (e: NodeJS.ErrnoException) => resolve({ error: e.code ?? e.message }))
    if (payload !== undefined) request.write(payload)
    request.end()
  })
  return { request, done }
}

export const send = (port: number, method: string, path: string, body?: unknown, agent?: Http.Agent): Promise<Outcome> =>
  start(port, method, path, body, agent).done

export const isReply = (o: Outcome): o is Reply => "status" in o

/** Polls `condition` every few milliseconds until it holds or `timeoutMs` passes. */
export const eventually = async (condition: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> => {
  const until = Date.now() + timeoutMs
  while (!(await condition())) {
    if (Date.now() > until) throw new Error("condition not reached in time")
    await new Promise((r) => setTimeout(r, 5))
  }
}

export interface BinaryReply {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly body: Buffer
}

/**
 * One POST with Triton's binary tensor data extension: the JSON `header`, then `binary`, with
 * Inference-Header-Content-Length set to the JSON's length (or to `headerLength` when given).
 */
export const sendBinary = (port: number, path: string, header: unknown, binary: Uint8Array, headerLength?: string): Promise<BinaryReply> =>
  new Promise((resolve, reject) => {
    const json = Buffer.from(JSON.stringify(header))
    const body = Buffer.concat([json, binary])
    const request = Http.request({
      host: "127.0.0.1",
      port,
      method: "POST",
      path,
      agent: false,
      headers: {
        "content-type": "application/octet-stream",
        "content-length": body.length,
        "inference-header-content-length": headerLength ?? String(json.length)
      }
    }, (response) => {
      const chunks: Array<Buffer> = []
      response.on("data", (c: Buffer) => chunks.push(c))
      response.on("end", () => resolve({ status: response.statusCode ?? 0, headers: response.headers, body: Buffer.concat(chunks) }))
      response.on("error", reject)
    })
    request.on("error", reject)
    request.end(body)
  })

/**
 * A raw connection that has sent the headers of `POST /v2/models/echo/infer` with `body` and the
 * first `sentBytes` of it (`extraHeaders`: whole header lines, each ending in CRLF); `rest` sends
 * the remainder, `received` is what came back so far, `close` destroys the socket.
 */
export const partialEchoPost = (port: number, body: string, sentBytes: number, extraHeaders = "") => {
  const socket = Net.connect(port, "127.0.0.1")
  let received = ""
  socket.on("data", (chunk: Buffer) => (received += chunk.toString("latin1")))
  socket.on("error", () => {})
  socket.write(`POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\n${extraHeaders}Content-Length: ${body.length}\r\n\r\n${body.slice(0, sentBytes)}`)
  return {
    socket,
    rest: () => void socket.write(body.slice(sentBytes)),
    received: () => received,
    close: () => socket.destroy()
  }
}
