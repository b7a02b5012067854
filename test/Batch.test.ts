import { assert, describe, it } from "@effect/vitest"
import * as Batch from "../src/Batch.ts"
import * as BatchPolicy from "../src/BatchPolicy.ts"
import * as Tensor from "../src/Tensor.ts"

const on: BatchPolicy.BatchingConfig = { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 16 }
const silero: BatchPolicy.BatchingConfig = { ...on, inputAxes: { state: 1, sr: null }, outputAxes: { stateN: 1 } }

describe("Batch", () => {
  it("rowsMismatch: an output whose batch axis is not the run's rows (axis 0, another axis, not an unbatched one)", () => {
    const config = { ...BatchPolicy.disabled, enabled: true, outputAxes: { state: 1, constant: null } }
    const outputs = (rowsY: number, rowsState: number) => ({
      y: Tensor.float32(new Float32Array(rowsY * 2), [rowsY, 2]),
      state: Tensor.float32(new Float32Array(2 * rowsState), [2, rowsState]),
      constant: Tensor.float32([1, 2, 3], [3])
    })
    assert.isUndefined(Batch.rowsMismatch(config, outputs(3, 3), 3))
    assert.strictEqual(Batch.rowsMismatch(config, outputs(4, 3), 3), "output \"y\" has 4 along its batch axis (0) for a run of 3 rows")
    assert.strictEqual(Batch.rowsMismatch(config, outputs(1, 2), 1), "output \"state\" has 2 along its batch axis (1) for a run of 1 row")
  })


  it("joins on axis 0 and splits each member's rows back", () => {
    const a = { x: Tensor.float32([1, 2, 3], [1, 3]) }
    const b = { x: Tensor.float32([4, 5, 6, 7, 8, 9], [2, 3]) }
    const joined = Batch.concat(on, [a, b])
    assert.deepStrictEqual(joined["x"]!.dims, [3, 3])
    assert.deepStrictEqual(Array.from(joined["x"]!.data as Float32Array), [1, 2, 3, 4, 5, 6, 7, 8, 9])
    const parts = Batch.split(on, { y: joined["x"]! }, [1, 2])!
    assert.deepStrictEqual(Array.from(parts[0]!["y"]!.data as Float32Array), [1, 2, 3])
    assert.deepStrictEqual(parts[1]!["y"]!.dims, [2, 3])
    assert.deepStrictEqual(Array.from(parts[1]!["y"]!.data as Float32Array), [4, 5, 6, 7, 8, 9])
  })

  it("joins on axis 1 (Silero's state) and passes unbatched inputs once", () => {
    const member = (v: number) => ({
      input: Tensor.float32([v, v], [1, 2]),
      state: Tensor.float32([v, v + 0.5], [2, 1, 1]),
      sr: Tensor.int64([16000], [])
    })
    const joined = Batch.concat(silero, [member(1), member(2)])
    assert.deepStrictEqual(joined["state"]!.dims, [2, 2, 1])
    assert.deepStrictEqual(Array.from(joined["state"]!.data as Float32Array), [1, 2, 1.5, 2.5])
    assert.deepStrictEqual(joined["sr"]!.dims, [])
    const parts = Batch.split(silero, { stateN: joined["state"]!, output: Tensor.float32([10, 20], [2, 1]) }, [1, 1])!
    assert.deepStrictEqual(Array.from(parts[1]!["stateN"]!.data as Float32Array), [2, 2.5])
    assert.deepStrictEqual(Array.from(parts[1]!["output"]!.data as Float32Array), [20])
  })

  it("keys requests by dtype, off-axis dims and unbatched values", () => {
    const k = (inputs: Tensor.TensorMap) => Batch.keyOf(silero, inputs)
    const base = { input: Tensor.float32([0, 0], [1, 2]), state: Tensor.float32([0, 0], [2, 1, 1]), sr: Tensor.int64([16000], []) }
    assert.deepStrictEqual(k(base)?.rows, 1)
    assert.strictEqual(k(base)?.key, k({ ...base, input: Tensor.float32([1, 1, 1, 1], [2, 2]), state: Tensor.float32([0, 0, 0, 0], [2, 2, 1]) })?.key)
    assert.notStrictEqual(k(base)?.key, k({ ...base, sr: Tensor.int64([8000], []) })?.key, "another sample rate")
    assert.notStrictEqual(k(base)?.key, k({ ...base, input: Tensor.float32([0, 0, 0], [1, 3]) })?.key, "another window length")
    assert.isUndefined(k({ ...base, input: Tensor.float32([0, 0, 0, 0], [2, 2]) }), "inputs that disagree on rows cannot batch")
    assert.isUndefined(Batch.keyOf({ ...on, maxBatchSize: 2 }, { x: Tensor.float32(new Float32Array(9), [3, 3]) }), "more rows than a batch holds")
  })

  it("keys an unbatched input of up to 16 elements by its values; a larger one, or a request of zero rows, has no key", () => {
    const config = { ...on, inputAxes: { table: null } }
    const k = (elements: number) => Batch.keyOf(config, { x: Tensor.float32([0], [1, 1]), table: Tensor.float32(new Float32Array(elements), [elements]) })
    assert.isDefined(k(16))
    assert.isUndefined(k(17))
    assert.isUndefined(Batch.keyOf(on, { x: Tensor.float32(new Float32Array(0), [0, 4]) }))
  })

  it("keys differ whenever unbatched values differ: strings that contain the separator, and -0 against 0", () => {
    const config = { ...on, inputAxes: { mode: null, bias: null } }
    const k = (mode: ReadonlyArray<string>, bias: number) =>
      Batch.keyOf(config, { x: Tensor.float32([0], [1, 1]), mode: Tensor.make("string", [...mode], [2]), bias: Tensor.float32([bias], []) })?.key
    assert.notStrictEqual(k(["a,b", "c"], 0), k(["a", "b,c"], 0))
    assert.notStrictEqual(k(["a|bias:float32:=0", "c"], 0), k(["a", "c"], 0))
    assert.notStrictEqual(k(["a", "c"], -0), k(["a", "c"], 0))
    assert.strictEqual(k(["a,b", "c"], 1.5), k(["a,b", "c"], 1.5), "equal values, one key")
  })

  it("gives each member an unbatched output (axis null) of its own: the caller owns its outputs, and one member writing its copy changes no other's", () => {
    const config = { ...on, outputAxes: { table: null } }
    const parts = Batch.split(config, { y: Tensor.float32([1, 2, 3], [3, 1]), table: Tensor.float32([7, 8], [2]) }, [1, 2])!
    const [a, b] = [parts[0]!["table"]!, parts[1]!["table"]!]
    assert.deepStrictEqual([Array.from(a.data as Float32Array), a.dims], [[7, 8], [2]])
    assert.deepStrictEqual([Array.from(b.data as Float32Array), b.dims], [[7, 8], [2]])
    ;(a.data as Float32Array)[0] = 0
    assert.deepStrictEqual(Array.from(b.data as Float32Array), [7, 8])
  })

  it("refuses to split an output whose data does not fill its dims: a slice would be read past it into memory not zeroed", () => {
    const short = Tensor.make("float32", new Float32Array(2048).fill(7), [2, 2048])
    assert.isUndefined(Batch.split(on, { y: short }, [1, 1]))
    const long = Tensor.make("float32", new Float32Array(3 * 2048), [2, 2048])
    assert.isUndefined(Batch.split(on, { y: long }, [1, 1]))
  })

  it("refuses to split outputs whose batch dim is not the total", () => {
    assert.isUndefined(Batch.split(on, { y: Tensor.float32([1, 2], [2, 1]) }, [1, 2]))
  })

  it("an input named like a member of Object.prototype batches on axis 0 like any other", () => {
    for (const name of ["constructor", "toString", "__proto__"]) {
      const inputs = Object.defineProperty({}, name, { value: Tensor.float32([0, 0, 0, 0], [2, 2]), enumerable: true })
      assert.strictEqual(Batch.keyOf(on, inputs)?.rows, 2, name)
      const disagreeing = { ...inputs, other: Tensor.float32([0, 0], [1, 2]) }
      Object.defineProperty(disagreeing, name, { value: Tensor.float32([0, 0, 0, 0], [2, 2]), enumerable: true })
      assert.include(Batch.rowsDisagreement(on, disagreeing), `${name} has 2 on axis 0`, name)
    }
  })

  it("finds batched inputs that disagree on the batch size, on their own axes", () => {
    const input = Tensor.float32([0, 0], [1, 2])
    assert.isUndefined(Batch.rowsDisagreement(silero, { input, state: Tensor.float32([0, 0], [2, 1, 1]), sr: Tensor.int64([16000], []) }))
    assert.strictEqual(
      Batch.rowsDisagreement(silero, { input, state: Tensor.float32([0, 0, 0, 0], [2, 2, 1]), sr: Tensor.int64([16000], []) }),
      "inputs disagree on the batch size: input has 1 on axis 0, state has 2 on axis 1"
    )
  })

  it("a joined batch owns every buffer it holds, an unbatched input's too, so that it can be transferred", () => {
    const config = { ...BatchPolicy.disabled, enabled: true, maxBatchSize: 8, inputAxes: { sr: null } }
    const member = (v: number) => ({
      input: Tensor.float32(new Float32Array([v, v]), [1, 2]),
      sr: Tensor.int64(new BigInt64Array([16000n]), [])
    })
    const members = [member(1), member(2)]
    const joined = Batch.concat(config, members)
    const owned = new Set(members.flatMap((m) => Object.values(m).map((t) => (t.data as ArrayBufferView).buffer)))
    for (const [name, tensor] of Object.entries(joined)) assert.isFalse(owned.has((tensor.data as ArrayBufferView).buffer), `${name} shares a member's buffer`)
    assert.deepStrictEqual(Array.from(joined["sr"]!.data as BigInt64Array), [16000n])
    assert.deepStrictEqual(Array.from(joined["input"]!.data as Float32Array), [1, 1, 2, 2])
  })

  it("joins and splits large tensors (memory not zeroed first) into exact-size buffers of their own, every element written", () => {
    // 600 float32 a row: 2.4 KB, so a member is below and the batch above the size from which memory is not zeroed
    const row = (r: number) => Float32Array.from({ length: 600 }, (_, i) => r * 1000 + i + 1)
    const members = [0, 1, 2, 3].map((r) => ({ x: Tensor.float32(row(r), [1, 600]), y: Tensor.int64(BigInt64Array.from(row(r), BigInt), [1, 600]) }))
    const joined = Batch.concat(on, members)
    for (const tensor of Object.values(joined)) {
      const data = tensor.data as Float32Array | BigInt64Array
      assert.strictEqual(data.byteOffset, 0)
      assert.strictEqual(data.buffer.byteLength, data.byteLength)
    }
    assert.deepStrictEqual(Array.from(joined["x"]!.data as Float32Array), [0, 1, 2, 3].flatMap((r) => Array.from(row(r))))
    assert.deepStrictEqual(Array.from(joined["y"]!.data as BigInt64Array), [0, 1, 2, 3].flatMap((r) => Array.from(row(r), BigInt)))
    const parts = Batch.split(on, { out: joined["x"]! }, [3, 1])!
    assert.deepStrictEqual(Array.from(parts[0]!["out"]!.data as Float32Array), [0, 1, 2].flatMap((r) => Array.from(row(r))))
    assert.deepStrictEqual(Array.from(parts[1]!["out"]!.data as Float32Array), Array.from(row(3)))
    assert.notStrictEqual((parts[0]!["out"]!.data as Float32Array).buffer, (joined["x"]!.data as Float32Array).buffer)
  })
})

describe("Batch keys and row checks: dtype, the bound, unbatched outputs", () => {
  it("keys differ by dtype, on a batched input and on an unbatched one", () => {
    const batched = Batch.keyOf(on, { x: Tensor.float32([0, 0], [1, 2]) })?.key
    assert.notStrictEqual(batched, Batch.keyOf(on, { x: Tensor.make("int32", new Int32Array(2), [1, 2]) })?.key)
    const config = { ...on, inputAxes: { sr: null } }
    const withSr = (sr: Tensor.Tensor) => Batch.keyOf(config, { x: Tensor.float32([0], [1, 1]), sr })?.key
    assert.notStrictEqual(withSr(Tensor.int64([16000], [])), withSr(Tensor.make("int32", new Int32Array([16000]), [])))
  })

  it("a request of exactly maxBatchSize rows has a key", () => {
    assert.deepStrictEqual(Batch.keyOf({ ...on, maxBatchSize: 3 }, { x: Tensor.float32(new Float32Array(9), [3, 3]) })?.rows, 3)
  })

  it("rowsMismatch looks past an unbatched output to the batched ones after it", () => {
    const config = { ...on, outputAxes: { constant: null } }
    const outputs = { constant: Tensor.float32([1, 2, 3], [3]), y: Tensor.float32(new Float32Array(8), [4, 2]) }
    assert.strictEqual(Batch.rowsMismatch(config, outputs, 3), "output \"y\" has 4 along its batch axis (0) for a run of 3 rows")
  })
})
