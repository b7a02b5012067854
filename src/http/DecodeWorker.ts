/**
 * Decode-thread entry (`DecodePool`): decodes inference bodies for the models whose `Spec` it was
 * sent, and posts each outcome back with the tensors' buffers moved, not copied; encodes answers,
 * and posts their bytes back moved.
 *
 * @module DecodeWorker
 */
import { parentPort } from "node:worker_threads"
import * as InferenceError from "../InferenceError.ts"
import type * as DecodePool from "./DecodePool.ts"
import { asMetadata } from "./DecodePool.ts"
import * as InferExchange from "./InferExchange.ts"
import * as Oip from "./Oip.ts"

const port = parentPort
if (port === null) throw new Error("DecodeWorker.ts must run in a worker thread")

const specs = new Map<number, DecodePool.Spec>()
const utf8 = new TextEncoder()
/** The spec held for each model version: a new one replaces it (as `DecodePool` counts them). */
const specByKey = new Map<string, number>()

port.on("message", (message: DecodePool.ToDecoder) => {
  if (message._tag === "spec") {
    const before = specByKey.get(message.key)
    if (before !== undefined) specs.delete(before)
    specByKey.set(message.key, message.spec)
    specs.set(message.spec, message.value)
    return
  }
  if (message._tag === "encode") {
    const answer = InferExchange.encodePrepared(message.response)
    // Json or Binary: an answer that is prepared is never TooLarge
    const bytes = answer._tag === "Json" ? utf8.encode(answer.text) : answer._tag === "Binary" || answer._tag === "JsonBytes" ? answer.bytes : new Uint8Array(0)
    const jsonLength = answer._tag === "Binary" ? answer.jsonLength : undefined
    port.postMessage({ _tag: "encoded", id: message.id, bytes, jsonLength } satisfies DecodePool.FromDecoder, [bytes.buffer as ArrayBuffer])
    return
  }
  const spec = specs.get(message.spec)!
  const { bytes } = message
  const text = typeof bytes === "string" ? bytes : Oip.jsonText(bytes)
  const outcome = text === undefined
    ? { _tag: "NotJson" as const, message: Oip.undecodableMessage(bytes as Uint8Array) }
    : InferExchange.decodeBody(message.name, asMetadata(spec), text, undefined)
  let reply: DecodePool.FromDecoder
  const transfer: Array<ArrayBuffer> = []
  if (outcome._tag === "Body") {
    for (const tensor of Object.values(outcome.inputs)) {
      const data = tensor.data
      // JSON-decoded tensors own exactly their buffer (`Tensor.allocate`): moved, not copied.
      if (ArrayBuffer.isView(data) && data.buffer instanceof ArrayBuffer && data.byteLength === data.buffer.byteLength && !transfer.includes(data.buffer)) {
        transfer.push(data.buffer)
      }
    }
    reply = { _tag: "body", id: message.id, body: outcome }
  } else if (outcome._tag === "NotJson") {
    reply = { _tag: "notJson", id: message.id, message: outcome.message }
  } else {
    const invalid: InferenceError.InvalidInput = outcome
    reply = { _tag: "invalid", id: message.id, modelId: invalid.modelId, input: invalid.input, detail: invalid.detail }
  }
  port.postMessage(reply, transfer)
})

// Its modules are loaded: work may come (until now the pool's caller did it itself).
port.postMessage({ _tag: "ready", id: -1 } satisfies DecodePool.FromDecoder)
