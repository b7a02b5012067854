/**
 * Triton's response cache: the outputs of successful runs, by request, so that a request the
 * engine has answered before is answered again at admission, without a queue or a run. The
 * engine keeps one when `AsyncConfig.responseCacheBytes` is above 0, and uses it for the model
 * versions whose metadata says `responseCache` (config.json's `responseCache: {"enable": true}`).
 *
 * - A request is its model, the loaded model version (a reload is another one, whatever its
 *   number), and each input's name, element type, dims and bytes: `keyOf` is their SHA-256.
 *   Triton's key is a 64-bit hash, where two requests that collide get each other's outputs;
 *   SHA-256 makes that as unlikely as anything in computing.
 * - Entries are copied in and copied out: the caller that ran it and each caller of a hit own
 *   their arrays, and may write them.
 * - Least recently used first out, within `capacityBytes` for every model together. Each entry
 *   counts what it costs the process as measured (`sizeOf`): its outputs' bytes, 384 bytes a
 *   tensor and 256 an entry for the objects around them (the MLP's 40-byte answer took 516 bytes
 *   of heap and 590 of resident memory an entry, and counts 680), a string element 32 bytes and
 *   2 a character. An entry larger than the whole capacity is not kept.
 * - Only successful runs are kept; a failed, timed-out or cancelled request leaves nothing.
 *   Identical requests that arrive together both run (the second is not held for the first).
 *
 * @module ResponseCache
 */
import { createHash } from "node:crypto"
import * as Tensor from "./Tensor.ts"

/** What a hit gives back: the outputs (copies) and the provider that ran them. */
export interface Entry {
  readonly outputs: Tensor.TensorMap
  readonly deviceUsed: string
}

export interface ResponseCache {
  readonly capacityBytes: number
  /** The entry for `key`, copied, now the most recently used; undefined on a miss. */
  readonly lookup: (key: string) => Entry | undefined
  /** Keeps a copy of `entry` under `key`, dropping the least recently used entries until it fits. */
  readonly insert: (key: string, entry: Entry) => void
  readonly stats: () => Stats
}

export interface Stats {
  readonly entries: number
  readonly bytes: number
  readonly capacityBytes: number
  readonly hits: number
  readonly misses: number
  readonly evictions: number
}

/** What an entry costs besides its tensors: its key, its place in the map, the objects holding it. */
export const entryOverheadBytes = 256

/** What a tensor costs besides its elements: the tensor, its dims, its typed array and buffer. */
export const tensorOverheadBytes = 384

const encoder = new TextEncoder()

/** A string element as V8 holds it, at most: its header and two bytes a UTF-16 unit. */
const stringBytes = (s: string): number => 32 + 2 * s.length

const tensorBytes = (tensor: Tensor.Tensor): number =>
  tensorOverheadBytes + (tensor.dtype === "string"
    ? (tensor.data as ReadonlyArray<string>).reduce((n, s) => n + stringBytes(s), 0)
    : (tensor.data as ArrayBufferView).byteLength)

/** What `entry` counts for against the capacity. */
export const sizeOf = (entry: Entry): number => {
  let bytes = entryOverheadBytes
  for (const name in entry.outputs) bytes += tensorBytes(entry.outputs[name]!)
  return bytes
}

const copyOf = (outputs: Tensor.TensorMap): Tensor.TensorMap => {
  const out: Array<[string, Tensor.Tensor]> = []
  for (const name in outputs) {
    const t = outputs[name]!
    const data = t.dtype === "string" ? [...(t.data as ReadonlyArray<string>)] : (t.data as unknown as { slice: () => Tensor.TensorData }).slice()
    out.push([name, Tensor.make(t.dtype, data as never, [...t.dims])])
  }
  return Object.fromEntries(out)
}

/** A cache of `capacityBytes` (at least 1). */
export const make = (capacityBytes: number): ResponseCache => {
  // A Map iterates in insertion order: re-inserting on use keeps the least recently used first.
  const entries = new Map<string, { readonly entry: Entry; readonly bytes: number }>()
  let bytes = 0
  let hits = 0
  let misses = 0
  let evictions = 0
  return {
    capacityBytes,
    lookup: (key) => {
      const found = entries.get(key)
      if (found === undefined) {
        misses++
        return undefined
      }
      hits++
      entries.delete(key)
      entries.set(key, found)
      return { outputs: copyOf(found.entry.outputs), deviceUsed: found.entry.deviceUsed }
    },
    insert: (key, entry) => {
      const size = sizeOf(entry)
      if (size > capacityBytes) return
      const old = entries.get(key)
      if (old !== undefined) {
        entries.delete(key)
        bytes -= old.bytes
      }
      for (const [oldest, { bytes: b }] of entries) {
        if (bytes + size <= capacityBytes) break
        entries.delete(oldest)
        bytes -= b
        evictions++
      }
      entries.set(key, { entry: { outputs: copyOf(entry.outputs), deviceUsed: entry.deviceUsed }, bytes: size })
      bytes += size
    },
    stats: () => ({ entries: entries.size, bytes, capacityBytes, hits, misses, evictions })
  }
}

/** Scratch space for the small parts of a key (names, dims, lengths), grown as needed. */
let scratch = new Uint8Array(1024)
let scratchView = new DataView(scratch.buffer)

/**
 * The key of a request for `modelId` at the loaded version `generation` (a name that a reload
 * changes): SHA-256 of every part, each length-prefixed so that no two requests read alike, the
 * inputs in name order. The small parts go in one buffer, the inputs' bytes as they are: two
 * updates an input (a key cost 17 µs for the MLP's 3 KB with an update per part, about 4 here).
 */
export const keyOf = (modelId: string, generation: string, inputs: Tensor.TensorMap): string => {
  const hash = createHash("sha256")
  let at = 0
  const room = (bytes: number) => {
    if (at + bytes <= scratch.length) return
    const grown = new Uint8Array(Math.max(scratch.length * 2, at + bytes))
    grown.set(scratch.subarray(0, at))
    scratch = grown
    scratchView = new DataView(grown.buffer)
  }
  const u32 = (n: number) => {
    room(4)
    scratchView.setUint32(at, n, true)
    at += 4
  }
  const text = (s: string) => {
    // at most 3 bytes of UTF-8 a UTF-16 unit
    room(4 + s.length * 3)
    const { written } = encoder.encodeInto(s, scratch.subarray(at + 4))
    scratchView.setUint32(at, written, true)
    at += 4 + written
  }
  const flush = () => {
    hash.update(scratch.subarray(0, at))
    at = 0
  }
  text(modelId)
  text(generation)
  for (const name of Object.keys(inputs).sort()) {
    const t = inputs[name]!
    text(name)
    text(t.dtype)
    u32(t.dims.length)
    for (const d of t.dims) u32(d)
    if (t.dtype === "string") {
      const data = t.data as ReadonlyArray<string>
      u32(data.length)
      for (const s of data) text(s)
    } else {
      const v = t.data as ArrayBufferView
      u32(v.byteLength)
      flush()
      hash.update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength))
    }
  }
  flush()
  return hash.digest("hex")
}
