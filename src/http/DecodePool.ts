/**
 * Worker threads that decode JSON inference bodies (`InferExchange.decodeBody`: `JSON.parse` of the
 * tensors, the envelope, the typed arrays) off the main thread: large bodies always (1 MiB and
 * more by default, `--large-body-bytes`: about 9 ms a MiB that would stall every other request),
 * and for `NodeInfer` others while the main thread has a queue of bodies. They also encode large
 * answers (`encode`: 65,536 JSON values and more, `Routes.largeAnswerValues`). `JSON.parse` of a
 * 784-float row is about 85 µs, the largest cost of a JSON request on the main thread; for those
 * the threads are off by default (`--decode-threads`): on a 2-core host they cost more CPU than
 * they save (README "Benchmarks"). Threads start on first use.
 *
 * Contracts:
 * - `decode` calls back exactly once: with the decoded body (its tensors moved from the thread,
 *   not copied), or with `undefined` when no thread could answer, in which case the caller decodes
 *   on the main thread: at once while no thread is ready (one is started; a thread takes 0.6-0.9 s
 *   to load its modules here, which no body waits for), later when its thread crashed or the pool
 *   closed. The body's bytes (or text) are copied to the thread, so they are still the caller's.
 * - A model's decoding facts (`Spec`: name, inputs, outputs, batching) are sent to a thread once per
 *   metadata object, before its first body.
 * - A thread that exits is replaced at the next `decode` (or `encode`, `start`); `close` terminates them all.
 *
 * @module DecodePool
 */
import { Worker } from "node:worker_threads"
import * as InferenceError from "../InferenceError.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import type * as Tensor from "../Tensor.ts"
import type * as InferExchange from "./InferExchange.ts"

/**
 * What `Oip.prepare` reads of a model: its name, inputs and outputs, of its batching whether it is
 * on, the most rows and the batch axes, and of its sequence batching the names of its state and
 * control inputs and state outputs (which a client neither sends nor gets: `Sequence.clientInputs`,
 * `clientOutputs`). Plain data, for structured clone; a test decodes the same bodies with it and
 * with the whole metadata.
 */
export interface Spec {
  readonly name: string
  readonly version: string
  readonly inputs: ModelMetadata.ModelMetadata["inputs"]
  readonly outputs: ModelMetadata.ModelMetadata["outputs"]
  readonly batching: { readonly enabled: boolean; readonly maxBatchSize: number; readonly inputAxes: Readonly<Record<string, number | null>> } | undefined
  readonly sequence:
    | {
      readonly states: ReadonlyArray<{ readonly input: string; readonly output: string }>
      readonly controls: ReadonlyArray<{ readonly input: string; readonly kind: string }>
    }
    | undefined
}

/** A `Spec` as the metadata `Oip.prepare` takes (it reads nothing else). */
export const asMetadata = (spec: Spec): ModelMetadata.ModelMetadata => spec as unknown as ModelMetadata.ModelMetadata

const specOf = (metadata: ModelMetadata.ModelMetadata): Spec => {
  const b = metadata.batching
  return {
    name: metadata.name,
    version: metadata.version,
    inputs: metadata.inputs,
    outputs: metadata.outputs,
    batching: b === undefined ? undefined : { enabled: b.enabled, maxBatchSize: b.maxBatchSize, inputAxes: b.inputAxes },
    // the names alone: a state's initial tensor may be megabytes
    sequence: metadata.sequence === undefined ? undefined : {
      states: metadata.sequence.states.map((s) => ({ input: s.input, output: s.output })),
      controls: metadata.sequence.controls.map((c) => ({ input: c.input, kind: c.kind }))
    }
  }
}

export type ToDecoder =
  /** A model version's spec; it replaces the one sent before for the same `key` (name and version: a reload's new metadata). */
  | { readonly _tag: "spec"; readonly spec: number; readonly key: string; readonly value: Spec }
  | { readonly _tag: "decode"; readonly id: number; readonly spec: number; readonly name: string; readonly bytes: Uint8Array | string }
  | { readonly _tag: "encode"; readonly id: number; readonly response: InferExchange.Response }

export type FromDecoder =
  | { readonly _tag: "body"; readonly id: number; readonly body: InferExchange.Body }
  | { readonly _tag: "notJson"; readonly id: number; readonly message: string }
  | { readonly _tag: "invalid"; readonly id: number; readonly modelId: string; readonly input: string | undefined; readonly detail: string }
  /** An encoded answer: its bytes, JSON alone or (with `jsonLength`) a JSON head and a binary part. */
  | { readonly _tag: "encoded"; readonly id: number; readonly bytes: Uint8Array; readonly jsonLength: number | undefined }
  /** The thread has loaded its modules and takes work (its first message; `id` -1). */
  | { readonly _tag: "ready"; readonly id: number }

export type Outcome = InferExchange.Body | InferExchange.NotJson | InferenceError.InvalidInput

export interface DecodePool {
  readonly threads: number
  /** Bodies sent to the threads and not yet answered (answers being encoded are not counted). */
  readonly inFlight: () => number
  /** Model specs the threads hold, over every thread: one a model version a thread decoded for (a reload replaces it). */
  readonly specsHeld: () => number
  /** Decodes `bytes` (the JSON of a body without a binary part, as bytes or text) for `metadata`; see the module's contracts. */
  readonly decode: (
    name: string,
    metadata: ModelMetadata.ModelMetadata,
    bytes: Uint8Array | string,
    onDone: (outcome: Outcome | undefined) => void
  ) => void
  /**
   * Encodes an answer (`InferExchange.encodePrepared`) on a thread: calls back exactly once, with
   * its body (as bytes: a JSON answer as its UTF-8 text) or with `undefined` when no thread could
   * answer (none ready yet, as for `decode`; the caller encodes it itself). The tensors are copied
   * to the thread (a view's own bytes, not all of its buffer), so they are still the caller's.
   */
  readonly encode: (response: InferExchange.Response, onDone: (answer: InferExchange.Answer | undefined) => void) => void
  /** Starts the threads not started yet (they start at their first body otherwise): for a body on its way. */
  readonly start: () => void
  /** Starts the threads and resolves once each is ready (or one was lost before it was, or the pool is closed). */
  readonly warm: () => Promise<void>
  readonly close: () => void
}

/** The decode thread's entry. */
export const workerUrl: URL = new URL("./DecodeWorker.ts", import.meta.url)

interface Thread {
  readonly worker: Worker
  /** Spec ids this thread holds: the last sent for each key (as the thread keeps them, `DecodeWorker`). */
  readonly specs: Set<number>
  readonly specByKey: Map<string, number>
  readonly jobs: Map<number, (reply: FromDecoder | undefined) => void>
  /** Its modules are loaded (its "ready" message came): it is given work from then on. */
  ready: boolean
  exited: boolean
}

/** The answer a decode thread's message carries. */
const outcomeOf = (message: Exclude<FromDecoder, { readonly _tag: "encoded" | "ready" }>): Outcome => {
  switch (message._tag) {
    case "body":
      return message.body
    case "notJson":
      return { _tag: "NotJson", message: message.message }
    case "invalid":
      return new InferenceError.InvalidInput(message.input === undefined
        ? { modelId: message.modelId, detail: message.detail }
        : { modelId: message.modelId, input: message.input, detail: message.detail })
  }
}

/**
 * Starts a decode thread in `pool[slot]`. Its answers go to `settle`; when it errs or exits, every
 * job it holds is settled with undefined (the caller decodes those itself) and the slot is freed.
 */
const startThread = (
  entry: URL,
  slot: number,
  pool: Array<Thread | undefined>,
  settle: (thread: Thread, id: number, reply: FromDecoder | undefined) => void,
  changed: () => void
): Thread => {
  const worker = new Worker(entry, { name: "decode" })
  worker.unref()
  const thread: Thread = { worker, specs: new Set(), specByKey: new Map(), jobs: new Map(), ready: false, exited: false }
  worker.on("message", (message: FromDecoder) => {
    if (message._tag !== "ready") return settle(thread, message.id, message)
    thread.ready = true
    changed()
  })
  const lost = () => {
    if (thread.exited) return
    thread.exited = true
    if (pool[slot] === thread) pool[slot] = undefined
    for (const id of [...thread.jobs.keys()]) settle(thread, id, undefined)
    changed()
  }
  worker.on("error", lost)
  worker.on("exit", lost)
  pool[slot] = thread
  return thread
}

/** `threads` decode threads, started on first use; each body goes to the one with the fewest in flight. */
export const make = (threads: number, entry: URL = workerUrl): DecodePool => {
  const pool: Array<Thread | undefined> = Array.from({ length: threads }, () => undefined)
  const specIds = new WeakMap<ModelMetadata.ModelMetadata, number>()
  let nextSpec = 0
  let nextJob = 0
  /** Bodies at the threads (`inFlight`); encodes are not counted. */
  let inFlight = 0
  let closed = false

  const settle = (thread: Thread, id: number, reply: FromDecoder | undefined) => {
    const done = thread.jobs.get(id)
    if (done === undefined) return
    thread.jobs.delete(id)
    done(reply)
  }

  /** Called when a thread becomes ready or is lost: `warm`'s waiters look again. */
  let waiters: Array<() => void> = []
  const changed = () => {
    const now = waiters
    waiters = []
    for (const w of now) w()
  }

  /** Starts the threads not started (or lost); the ready one with the fewest jobs, if any is ready. */
  const pick = (): Thread | undefined => {
    let best: Thread | undefined
    for (let slot = 0; slot < pool.length; slot++) {
      const thread = pool[slot] ?? startThread(entry, slot, pool, settle, changed)
      if (thread.ready && (best === undefined || thread.jobs.size < best.jobs.size)) best = thread
    }
    return best
  }

  return {
    threads,
    inFlight: () => inFlight,
    specsHeld: () => pool.reduce((n, thread) => n + (thread?.specs.size ?? 0), 0),
    decode: (name, metadata, bytes, onDone) => {
      const thread = closed ? undefined : pick()
      if (thread === undefined) return onDone(undefined)
      let spec = specIds.get(metadata)
      if (spec === undefined) specIds.set(metadata, spec = nextSpec++)
      try {
        if (!thread.specs.has(spec)) {
          // One spec a model version: a reload's replaces the one before, so that reloads add none.
          const key = `${metadata.name}@${metadata.version}`
          thread.worker.postMessage({ _tag: "spec", spec, key, value: specOf(metadata) } satisfies ToDecoder)
          const before = thread.specByKey.get(key)
          if (before !== undefined) thread.specs.delete(before)
          thread.specByKey.set(key, spec)
          thread.specs.add(spec)
        }
        const id = nextJob++
        thread.worker.postMessage({ _tag: "decode", id, spec, name, bytes } satisfies ToDecoder)
        inFlight++
        thread.jobs.set(id, (reply) => {
          inFlight--
          onDone(reply === undefined || reply._tag === "encoded" || reply._tag === "ready" ? undefined : outcomeOf(reply))
        })
      } catch {
        onDone(undefined)
      }
    },
    encode: (response, onDone) => {
      const thread = closed ? undefined : pick()
      if (thread === undefined) return onDone(undefined)
      // A slice of a batch's outputs would take all of that batch's buffer with it: its own bytes go.
      const copies: Array<ArrayBuffer> = []
      const outputs = response.outputs.map(([name, tensor]): readonly [string, Tensor.Tensor] => {
        const data = tensor.data
        if (!ArrayBuffer.isView(data) || (data.byteOffset === 0 && data.byteLength === data.buffer.byteLength)) return [name, tensor]
        const own = data.slice()
        copies.push(own.buffer as ArrayBuffer)
        return [name, { ...tensor, data: own } as Tensor.Tensor]
      })
      try {
        const id = nextJob++
        thread.worker.postMessage({ _tag: "encode", id, response: { ...response, outputs } } satisfies ToDecoder, copies)
        thread.jobs.set(id, (reply) =>
          onDone(
            reply?._tag !== "encoded"
              ? undefined
              : reply.jsonLength === undefined
              ? { _tag: "JsonBytes", bytes: reply.bytes }
              : { _tag: "Binary", bytes: reply.bytes, jsonLength: reply.jsonLength }
          ))
      } catch {
        onDone(undefined)
      }
    },
    start: () => {
      if (!closed) pick()
    },
    warm: () =>
      new Promise<void>((resolve) => {
        if (!closed) pick()
        // a thread lost before it was ready is not started again here (one that cannot load would loop)
        const look = () => (closed || pool.every((thread) => thread?.ready === true) || pool.some((thread) => thread === undefined) ? resolve() : void waiters.push(look))
        look()
      }),
    close: () => {
      closed = true
      changed()
      for (const thread of pool) {
        if (thread === undefined) continue
        thread.exited = true
        for (const id of [...thread.jobs.keys()]) settle(thread, id, undefined)
        thread.worker.terminate().catch(() => {})
      }
    }
  }
}
