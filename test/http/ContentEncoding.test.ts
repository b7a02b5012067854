import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Zlib from "node:zlib"
import * as ContentEncoding from "../../src/http/ContentEncoding.ts"

const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes)

describe("ContentEncoding", () => {
  it("parses the codings in the order they were applied; identity is nothing; others are refused by name", () => {
    assert.deepStrictEqual(ContentEncoding.parse(undefined), [])
    assert.deepStrictEqual(ContentEncoding.parse("identity"), [])
    assert.deepStrictEqual(ContentEncoding.parse("GZIP"), ["gzip"])
    assert.deepStrictEqual(ContentEncoding.parse("x-gzip"), ["gzip"])
    assert.deepStrictEqual(ContentEncoding.parse("deflate, gzip"), ["deflate", "gzip"])
    assert.include(ContentEncoding.parse("br") as string, "unsupported Content-Encoding \"br\"")
    assert.include(ContentEncoding.parse("gzip, zstd") as string, "\"zstd\"")
    // Each layer is work up to the body limit: more than two are refused before any is undone.
    assert.deepStrictEqual(ContentEncoding.parse("gzip, identity, deflate"), ["gzip", "deflate"])
    assert.strictEqual(ContentEncoding.parse(Array(300).fill("gzip").join(",")), "a Content-Encoding of more than 2 codings is not supported")
  })

  it.effect("undoes several codings, last applied first", () =>
    Effect.gen(function*() {
      const body = Zlib.gzipSync(Zlib.deflateSync("hello"))
      const r = yield* ContentEncoding.decode(body, ["deflate", "gzip"], 1024)
      assert.strictEqual(r._tag, "Decoded")
      if (r._tag === "Decoded") assert.strictEqual(text(r.bytes), "hello")
    }))

  it.effect("stops at the limit (TooLarge) and names a corrupt coding", () =>
    Effect.gen(function*() {
      const exact = yield* ContentEncoding.decode(Zlib.gzipSync(Buffer.alloc(1000)), ["gzip"], 1000)
      assert.strictEqual(exact._tag, "Decoded")
      const over = yield* ContentEncoding.decode(Zlib.gzipSync(Buffer.alloc(1001)), ["gzip"], 1000)
      assert.strictEqual(over._tag, "TooLarge")
      const overDeflate = yield* ContentEncoding.decode(Zlib.deflateSync(Buffer.alloc(5000)), ["deflate"], 1000)
      assert.strictEqual(overDeflate._tag, "TooLarge")
      const corrupt = yield* ContentEncoding.decode(new TextEncoder().encode("not gzip"), ["gzip"], 1000)
      assert.strictEqual(corrupt._tag, "Corrupt")
      if (corrupt._tag === "Corrupt") assert.strictEqual(corrupt.coding, "gzip")
    }))
})
