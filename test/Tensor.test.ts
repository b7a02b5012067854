import { assert, describe, it } from "@effect/vitest"
import * as Tensor from "../src/Tensor.ts"

/** Takes out the buffers of `length` floats that earlier tests left for reuse (the pool is the process's). */
const drain = (length: number): void => {
  for (let h = -1; h !== Tensor.recycledBytesHeld();) {
    h = Tensor.recycledBytesHeld()
    Tensor.allocateForOverwrite("float32", length)
  }
}

describe("Tensor.recycle", () => {
  it("allocateForOverwrite reuses a recycled buffer of exactly its size, once", () => {
    drain(1531)
    const buffer = new ArrayBuffer(4 * 1531)
    const held = Tensor.recycledBytesHeld()
    Tensor.recycle(buffer)
    assert.strictEqual(Tensor.recycledBytesHeld(), held + buffer.byteLength)
    const other = Tensor.allocateForOverwrite("float32", 1530)
    assert.notStrictEqual(other.buffer, buffer, "another size: a fresh buffer")
    const reused = Tensor.allocateForOverwrite("int32", 1531)
    assert.strictEqual(reused.buffer, buffer)
    assert.strictEqual(reused.length, 1531)
    assert.strictEqual(Tensor.recycledBytesHeld(), held)
    assert.notStrictEqual(Tensor.allocateForOverwrite("float32", 1531).buffer, buffer, "given out once")
  })

  it("keeps at most four buffers of one size, none under 4 KiB, none resizable", () => {
    drain(1777)
    const held = Tensor.recycledBytesHeld()
    const buffers = Array.from({ length: 6 }, () => new ArrayBuffer(4 * 1777))
    for (const b of buffers) Tensor.recycle(b)
    assert.strictEqual(Tensor.recycledBytesHeld(), held + 4 * buffers[0]!.byteLength)
    Tensor.recycle(new ArrayBuffer(4000))
    Tensor.recycle(new (ArrayBuffer as unknown as new(n: number, o: { maxByteLength: number }) => ArrayBuffer)(8192, { maxByteLength: 16384 }))
    assert.strictEqual(Tensor.recycledBytesHeld(), held + 4 * buffers[0]!.byteLength)
    const taken = Array.from({ length: 5 }, () => Tensor.allocateForOverwrite("float32", 1777).buffer)
    assert.deepStrictEqual(taken.slice(0, 4).map((b) => buffers.indexOf(b as ArrayBuffer)).sort(), [0, 1, 2, 3])
    assert.strictEqual(buffers.indexOf(taken[4] as ArrayBuffer), -1)
    assert.strictEqual(Tensor.recycledBytesHeld(), held)
  })

  it("an array under 4 KiB is a zeroed one of its own: a buffer that small is not kept", () => {
    const small = new Float32Array(1000).fill(1)
    Tensor.recycle(small.buffer)
    const fresh = Tensor.allocateForOverwrite("float32", 1000)
    assert.notStrictEqual(fresh.buffer, small.buffer)
    assert.isTrue(fresh.every((x) => x === 0))
  })
})

describe("Tensor.isOf", () => {
  it("narrows a tensor's data by its element type (a type guard: generic code keeps Tensor<T>)", () => {
    const tensors: ReadonlyArray<Tensor.Tensor> = [Tensor.float32([1.5], [1]), Tensor.int64([2n], [1])]
    const seen: Array<string> = []
    for (const t of tensors) {
      // Each branch compiles only if `data` narrowed (checked by the type check).
      if (Tensor.isOf(t, "float32")) {
        const data: Float32Array = t.data
        seen.push(`f32 ${data[0]}`)
      } else if (Tensor.isOf(t, "int64")) {
        const data: BigInt64Array = t.data
        seen.push(`i64 ${data[0]}`)
      }
    }
    assert.deepStrictEqual(seen, ["f32 1.5", "i64 2"])
  })
})
