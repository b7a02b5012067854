/**
 * Request bodies with a `Content-Encoding` (what `tritonclient`'s `request_compression_algorithm`
 * sends): `gzip` (also `x-gzip`) and `deflate` (zlib, or raw deflate as some clients send it)
 * are decompressed, `identity` is nothing; any other coding is refused (415), and so are more
 * than `maxCodings` of them (each layer costs up to the limit's work: 300 layers of stored gzip
 * kept the main thread busy for 20 s). Decompression stops at `limit` bytes of output, so that a
 * small body that inflates to gigabytes (a "bomb") costs no more than the limit (413).
 *
 * @module ContentEncoding
 */
import { Effect } from "effect"
import * as Zlib from "node:zlib"

export type Coding = "gzip" | "deflate"

/** The most codings one body may carry (no client compresses twice; each layer is work up to the body limit). */
export const maxCodings = 2

/**
 * The codings of a Content-Encoding header, in the order they were applied; an error message
 * when one of them is not supported, or there are more than `maxCodings`.
 */
export const parse = (header: string | undefined): ReadonlyArray<Coding> | string => {
  if (header === undefined) return []
  const codings: Array<Coding> = []
  for (const raw of header.split(",")) {
    const coding = raw.trim().toLowerCase()
    if (coding === "" || coding === "identity") continue
    if (coding === "gzip" || coding === "x-gzip") codings.push("gzip")
    else if (coding === "deflate") codings.push("deflate")
    else return `unsupported Content-Encoding ${JSON.stringify(raw.trim().slice(0, 40))}: gzip, deflate or identity`
    if (codings.length > maxCodings) return `a Content-Encoding of more than ${maxCodings} codings is not supported`
  }
  return codings
}

export type Decoded =
  | { readonly _tag: "Decoded"; readonly bytes: Uint8Array }
  | { readonly _tag: "TooLarge" }
  | { readonly _tag: "Corrupt"; readonly coding: Coding; readonly detail: string }

type Inflate = (buf: Uint8Array, options: Zlib.ZlibOptions, callback: (error: Error | null, result: Buffer) => void) => void

const once = (inflate: Inflate, bytes: Uint8Array, limit: number): Effect.Effect<Buffer, NodeJS.ErrnoException> =>
  Effect.callback<Buffer, NodeJS.ErrnoException>((resume) => {
    inflate(bytes, { maxOutputLength: Math.max(1, limit) }, (error, result) =>
      resume(error === null ? Effect.succeed(result) : Effect.fail(error as NodeJS.ErrnoException)))
  })

const tooLarge = (e: NodeJS.ErrnoException) => e.code === "ERR_BUFFER_TOO_LARGE" || e instanceof RangeError

/** Undoes `codings` (last applied first), never producing more than `limit` bytes. */
export const decode = (bytes: Uint8Array, codings: ReadonlyArray<Coding>, limit: number): Effect.Effect<Decoded> =>
  Effect.gen(function*() {
    let current: Uint8Array = bytes
    for (const coding of [...codings].reverse()) {
      const attempt = coding === "gzip"
        ? once(Zlib.gunzip, current, limit)
        // HTTP's deflate is the zlib format; some clients send raw deflate.
        : Effect.catch(once(Zlib.inflate, current, limit), (e) => tooLarge(e) ? Effect.fail(e) : once(Zlib.inflateRaw, current, limit))
      const result = yield* Effect.result(attempt)
      if (result._tag === "Failure") {
        const e = result.failure
        if (tooLarge(e)) return { _tag: "TooLarge" } as const
        return { _tag: "Corrupt", coding, detail: e.message.split("\n")[0]!.slice(0, 200) } as const
      }
      if (result.success.length > limit) return { _tag: "TooLarge" } as const
      current = result.success
    }
    return { _tag: "Decoded", bytes: current } as const
  })
