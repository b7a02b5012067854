import { assert, describe, it } from "@effect/vitest"
import { fromHalfBits } from "../src/internal/Float16.ts"
import * as Tensor from "../src/Tensor.ts"
import * as Warmup from "../src/Warmup.ts"

const sample = (over: Partial<Warmup.Sample> = {}): Warmup.Sample => ({ name: "s", batchSize: 1, count: 1, inputs: {}, ...over })
const input = (name: string, dtype: Tensor.DataType, dims: ReadonlyArray<number>): Warmup.InputSpec => ({ name, dtype, dims })
const misfit = (f: () => unknown): string => {
  try {
    f()
  } catch (e) {
    assert.instanceOf(e, Warmup.Misfit)
    return (e as Error).message
  }
  return assert.fail("no Misfit thrown")
}

describe("Warmup.problem", () => {
  it("accepts samples with defaults, names, counts, dims and each kind of data", () => {
    for (
      const ok of [
        [{}],
        [{ name: "one row", batchSize: 1, count: 1 }],
        [{ batchSize: 64, count: 1000, inputs: { input: { data: "random" } } }],
        [{ inputs: { input: { dims: [1, 512], data: "zero" }, sr: { data: { fill: 16000 } }, flag: { data: { fill: true } }, text: { data: { fill: "hi" } } } }],
        [{ name: "a" }, { name: "b" }],
        [{ inputs: { input: { data: { file: "input.bin" } } } }],
        Array.from({ length: Warmup.maxSamples }, () => ({}))
      ]
    ) assert.isUndefined(Warmup.problem(ok), JSON.stringify(ok))
  })

  it("refuses what is not a list of samples, with where and why", () => {
    const table: ReadonlyArray<readonly [unknown, string]> = [
      [{}, "warmup must list 1 to 64 samples"],
      [[], "warmup must list 1 to 64 samples"],
      [Array.from({ length: 65 }, () => ({})), "warmup must list 1 to 64 samples"],
      [[1], "warmup[0] must be an object"],
      [[{ batch_size: 2 }], `warmup[0] has unknown key "batch_size" (known: "name", "batchSize", "count", "inputs")`],
      [[{ name: "" }], "warmup[0].name must be text of 1 to 200 characters"],
      [[{ name: "x".repeat(201) }], "warmup[0].name must be text of 1 to 200 characters"],
      [[{}, { batchSize: 0 }], "warmup[1].batchSize must be an integer from 1 to 65536"],
      [[{ batchSize: 65537 }], "warmup[0].batchSize must be an integer from 1 to 65536"],
      [[{ batchSize: 1.5 }], "warmup[0].batchSize must be an integer from 1 to 65536"],
      [[{ count: 0 }], "warmup[0].count must be an integer from 1 to 1000"],
      [[{ count: 1001 }], "warmup[0].count must be an integer from 1 to 1000"],
      [[{ inputs: [] }], `warmup[0].inputs must be an object: input name → {"dims", "data"}`],
      [[{ inputs: { x: 1 } }], `warmup[0].inputs.x must be an object with "dims" and/or "data"`],
      [[{ inputs: { x: { zero_data: true } } }], `warmup[0].inputs.x has unknown key "zero_data" (known: "dims", "data")`],
      [[{ inputs: { x: { dims: [1, -1] } } }], "warmup[0].inputs.x.dims must be a list of at most 32 integers from 0 to 2147483647 (the input's whole shape)"],
      [[{ inputs: { x: { dims: "1,2" } } }], "warmup[0].inputs.x.dims must be a list of at most 32 integers from 0 to 2147483647 (the input's whole shape)"],
      [[{ inputs: { x: { dims: Array.from({ length: 33 }, () => 1) } } }], "warmup[0].inputs.x.dims must be a list of at most 32 integers from 0 to 2147483647 (the input's whole shape)"],
      [[{ inputs: { x: { data: "ones" } } }], `warmup[0].inputs.x.data must be "zero", "random", {"fill": value} or {"file": name}`],
      [[{ inputs: { x: { data: { fill: 1, also: 2 } } } }], `warmup[0].inputs.x.data must be "zero", "random", {"fill": value} or {"file": name}`],
      [[{ inputs: { x: { data: { fill: 1, file: "a" } } } }], `warmup[0].inputs.x.data must be "zero", "random", {"fill": value} or {"file": name}`],
      [[{ inputs: { x: { data: { file: "../a.bin" } } } }], `warmup[0].inputs.x.data.file must be a file name in the model's warmup/ directory (no "/", "\\" or ".."), got "../a.bin"`],
      [[{ inputs: { x: { data: { file: "a\\b" } } } }], `warmup[0].inputs.x.data.file must be a file name in the model's warmup/ directory (no "/", "\\" or ".."), got "a\\\\b"`],
      [[{ inputs: { x: { data: { file: ".." } } } }], `warmup[0].inputs.x.data.file must be a file name in the model's warmup/ directory (no "/", "\\" or ".."), got ".."`],
      [[{ inputs: { x: { data: { file: "" } } } }], `warmup[0].inputs.x.data.file must be a file name in the model's warmup/ directory (no "/", "\\" or ".."), got ""`],
      [[{ inputs: { x: { data: { file: 1 } } } }], `warmup[0].inputs.x.data.file must be a file name in the model's warmup/ directory (no "/", "\\" or ".."), got 1`],
      [[{ inputs: { x: { data: { fill: null } } } }], "warmup[0].inputs.x.data.fill must be a finite number, a boolean or a string"],
      [[{ inputs: { x: { data: { fill: [1] } } } }], "warmup[0].inputs.x.data.fill must be a finite number, a boolean or a string"],
      [[{ name: "a" }, { name: "a" }], `warmup names the sample "a" twice`],
      // a default name counts too
      [[{}, { name: "sample 0" }], `warmup names the sample "sample 0" twice`]
    ]
    for (const [json, expected] of table) assert.strictEqual(Warmup.problem(json), expected, JSON.stringify(json))
  })
})

describe("Warmup.fromJson", () => {
  it("fills the defaults: name by position, batchSize 1, count 1, zero data", () => {
    const [a, b] = Warmup.fromJson([{}, { name: "full", batchSize: 64, count: 3, inputs: { input: { dims: [64, 784], data: "random" }, sr: { data: { fill: 16000 } }, x: {} } }])
    assert.deepStrictEqual(a, { name: "sample 0", batchSize: 1, count: 1, inputs: {} })
    assert.deepStrictEqual(b, {
      name: "full",
      batchSize: 64,
      count: 3,
      inputs: {
        input: { dims: [64, 784], data: { _tag: "Random" } },
        sr: { dims: undefined, data: { _tag: "Fill", value: 16000 } },
        x: { dims: undefined, data: { _tag: "Zero" } }
      }
    })
    assert.deepStrictEqual(Warmup.fromJson([{ inputs: { x: { data: { file: "x.bin" } } } }])[0]!.inputs["x"]!.data, { _tag: "File", name: "x.bin" })
    assert.strictEqual(Warmup.runs([a!, b!]), 4)
  })
})

describe("Warmup.shapeOf", () => {
  const mlp = input("input", "float32", [-1, 784])
  it("puts batchSize on the batch axis where the model leaves it dynamic, and keeps fixed dims", () => {
    assert.deepStrictEqual(Warmup.shapeOf(sample({ batchSize: 64 }), mlp, 0), [64, 784])
    assert.deepStrictEqual(Warmup.shapeOf(sample(), mlp, 0), [1, 784])
    // Silero's state is batched on axis 1
    assert.deepStrictEqual(Warmup.shapeOf(sample({ batchSize: 8 }), input("state", "float32", [2, -1, 128]), 1), [2, 8, 128])
    // a scalar, and a fixed shape with batchSize 1
    assert.deepStrictEqual(Warmup.shapeOf(sample({ batchSize: 8 }), input("sr", "int64", []), null), [])
    assert.deepStrictEqual(Warmup.shapeOf(sample(), input("x", "float32", [1, 3]), 0), [1, 3])
    // the batch dim fixed to batchSize itself
    assert.deepStrictEqual(Warmup.shapeOf(sample({ batchSize: 4 }), input("x", "float32", [4, 3]), 0), [4, 3])
  })

  it("uses given dims as the whole shape, checked against the model", () => {
    const given = (dims: ReadonlyArray<number>) => sample({ batchSize: 8, inputs: { input: { dims, data: { _tag: "Zero" } } } })
    assert.deepStrictEqual(Warmup.shapeOf(given([3, 784]), mlp, 0), [3, 784])
    assert.strictEqual(misfit(() => Warmup.shapeOf(given([784]), mlp, 0)), `input "input": dims [784] have rank 1, the model's [-1, 784] 2`)
    assert.strictEqual(misfit(() => Warmup.shapeOf(given([1, 512]), mlp, 0)), `input "input": dims [1, 512], but the model fixes axis 1 to 784 ([-1, 784])`)
  })

  it("asks for dims where another dim is dynamic, and refuses a batchSize against a fixed batch dim", () => {
    const audio = input("input", "float32", [-1, -1])
    assert.strictEqual(misfit(() => Warmup.shapeOf(sample(), audio, 0)), `input "input" has a dynamic dim at axis 1 ([-1, -1]): give the sample's "dims" for it`)
    // not batched (null): even axis 0 must be given
    assert.strictEqual(misfit(() => Warmup.shapeOf(sample(), mlp, null)), `input "input" has a dynamic dim at axis 0 ([-1, 784]): give the sample's "dims" for it`)
    assert.strictEqual(
      misfit(() => Warmup.shapeOf(sample({ batchSize: 64 }), input("x", "float32", [1, 3]), 0)),
      `input "x": batchSize 64, but the model fixes its batch axis 0 to 1 ([1, 3])`
    )
  })
})

describe("Warmup.rows", () => {
  it("is the largest dim on a batch axis, given or from batchSize; 1 without a batched input", () => {
    const inputs = [input("input", "float32", [-1, 4]), input("state", "float32", [2, -1, 3]), input("sr", "int64", [])]
    const axes = { state: 1, sr: null }
    assert.strictEqual(Warmup.rows(sample({ batchSize: 8 }), inputs, axes), 8)
    assert.strictEqual(Warmup.rows(sample({ inputs: { input: { dims: [100, 4], data: { _tag: "Zero" } } } }), inputs, axes), 100)
    assert.strictEqual(Warmup.rows(sample({ batchSize: 8 }), [input("sr", "int64", [])], { sr: null }), 1)
  })
})

describe("Warmup.tensors", () => {
  it("makes zeros by default, of each input's dtype and shape, with batch axes from inputAxes", () => {
    const out = Warmup.tensors(sample({ batchSize: 3 }), [
      input("input", "float32", [-1, 4]),
      input("state", "float32", [2, -1, 2]),
      input("sr", "int64", []),
      input("text", "string", [-1])
    ], { state: 1, sr: null })
    assert.deepStrictEqual(out["input"], Tensor.float32(new Float32Array(12), [3, 4]))
    assert.deepStrictEqual(out["state"], Tensor.float32(new Float32Array(12), [2, 3, 2]))
    assert.deepStrictEqual(out["sr"], Tensor.int64(new BigInt64Array(1), []))
    assert.deepStrictEqual(out["text"], Tensor.make("string", ["", "", ""], [3]))
  })

  it("fills every element with a fill value as the dtype holds it", () => {
    const fill = (value: number | boolean | string) => sample({ batchSize: 2, inputs: { x: { dims: undefined, data: { _tag: "Fill", value } } } })
    const one = (dtype: Tensor.DataType, value: number | boolean | string) => Warmup.tensors(fill(value), [input("x", dtype, [-1])], {})["x"]!
    assert.deepStrictEqual(Array.from(one("float32", 0.5).data as Float32Array), [0.5, 0.5])
    assert.deepStrictEqual(Array.from(one("int64", 16000).data as BigInt64Array), [16000n, 16000n])
    assert.deepStrictEqual(Array.from(one("uint64", 7).data as BigUint64Array), [7n, 7n])
    assert.deepStrictEqual(Array.from(one("int8", -128).data as Int8Array), [-128, -128])
    assert.deepStrictEqual(Array.from(one("uint16", 65535).data as Uint16Array), [65535, 65535])
    assert.deepStrictEqual(Array.from(one("bool", true).data as Uint8Array), [1, 1])
    assert.deepStrictEqual(Array.from(one("bool", 0).data as Uint8Array), [0, 0])
    assert.deepStrictEqual(one("string", "hi").data, ["hi", "hi"])
    assert.deepStrictEqual(Array.from(one("float16", 1.5).data as Uint16Array).map(fromHalfBits), [1.5, 1.5])
    // the largest of each, and 2^53 - 1 for the 64-bit integers
    assert.deepStrictEqual(Array.from(one("float16", 65504).data as Uint16Array).map(fromHalfBits), [65504, 65504])
    assert.strictEqual((one("float32", 3.4028234663852886e38).data as Float32Array)[0], 3.4028234663852886e38)
    assert.deepStrictEqual(Array.from(one("int64", -(2 ** 53 - 1)).data as BigInt64Array), [-(2n ** 53n - 1n), -(2n ** 53n - 1n)])
  })

  it("refuses a fill value the dtype cannot hold, naming the input", () => {
    const fill = (value: number | boolean | string) => sample({ inputs: { x: { dims: undefined, data: { _tag: "Fill", value } } } })
    const table: ReadonlyArray<readonly [Tensor.DataType, number | boolean | string, string]> = [
      ["int8", 128, `input "x" (int8): fill 128 is not an integer from -128 to 127`],
      ["uint8", -1, `input "x" (uint8): fill -1 is not an integer from 0 to 255`],
      ["int32", 1.5, `input "x" (int32): fill 1.5 is not an integer from -2147483648 to 2147483647`],
      ["int64", 2 ** 64, `input "x" (int64): fill 18446744073709552000 is not an integer from -9223372036854775808 to 9223372036854775807`],
      ["bool", 2, `input "x" (bool): fill 2 is not 0 or 1`],
      ["float32", true, `input "x" (float32): fill true is a boolean, the input is not bool`],
      ["float32", "1", `input "x" (float32): fill "1" is text, the input is numeric`],
      ["string", 1, `input "x" (string): fill 1 is not text`],
      ["float32", 1e39, `input "x" (float32): fill 1e+39 is beyond the largest float32`],
      ["float16", 70000, `input "x" (float16): fill 70000 is beyond the largest float16`],
      ["float16", -65520, `input "x" (float16): fill -65520 is beyond the largest float16`],
      ["int64", 2 ** 53 + 2, `input "x" (int64): fill 9007199254740994 is beyond 2^53, where a JSON number is not exact`],
      ["uint64", 2 ** 60, `input "x" (uint64): fill 1152921504606847000 is beyond 2^53, where a JSON number is not exact`]
    ]
    for (const [dtype, value, expected] of table) assert.strictEqual(misfit(() => Warmup.tensors(fill(value), [input("x", dtype, [1])], {})), expected, `${dtype} ${value}`)
  })

  it("makes random data in range, the same at every call, and empty strings for text", () => {
    const random = sample({ batchSize: 500, inputs: { f: { dims: undefined, data: { _tag: "Random" } }, i: { dims: undefined, data: { _tag: "Random" } }, b: { dims: undefined, data: { _tag: "Random" } }, l: { dims: undefined, data: { _tag: "Random" } }, h: { dims: undefined, data: { _tag: "Random" } }, s: { dims: undefined, data: { _tag: "Random" } } } })
    const specs = [input("f", "float32", [-1]), input("i", "int8", [-1]), input("b", "bool", [-1]), input("l", "int64", [-1]), input("h", "float16", [-1]), input("s", "string", [-1])]
    const out = Warmup.tensors(random, specs, {})
    const f = Array.from(out["f"]!.data as Float32Array)
    assert.isTrue(f.every((x) => x >= 0 && x < 1))
    assert.isAbove(new Set(f).size, 400, "not constant")
    const i = Array.from(out["i"]!.data as Int8Array)
    assert.isTrue(i.every((x) => x >= 0 && x <= 127 && Number.isInteger(x)))
    assert.isAbove(new Set(i).size, 64)
    const b = Array.from(out["b"]!.data as Uint8Array)
    assert.deepStrictEqual(new Set(b), new Set([0, 1]))
    const l = Array.from(out["l"]!.data as BigInt64Array)
    assert.isTrue(l.every((x) => x >= 0n && x <= 127n))
    const h = Array.from(out["h"]!.data as Uint16Array).map(fromHalfBits)
    assert.isTrue(h.every((x) => x >= 0 && x <= 1))
    assert.deepStrictEqual(out["s"]!.data, Array.from({ length: 500 }, () => ""))
    assert.deepStrictEqual(Warmup.tensors(random, specs, {}), out, "deterministic")
  })

  it("refuses an input the model does not have, and a tensor over the size bound; reads own keys only", () => {
    const specs = [input("input", "float32", [-1, 784])]
    assert.strictEqual(
      misfit(() => Warmup.tensors(sample({ inputs: { pixels: { dims: undefined, data: { _tag: "Zero" } } } }), specs, {})),
      `the model has no input "pixels" (its inputs: input)`
    )
    assert.strictEqual(
      misfit(() => Warmup.tensors(sample({ batchSize: 65536 }), [input("x", "float32", [-1, 2048])], {})),
      `input "x": [65536, 2048] float32 is 536870912 bytes, more than a warm-up tensor may have (268435456)`
    )
    // a string counts its text: 900,000 characters in each of 2,048 rows is 1.8 GB, not 16 KB of slots
    const text = sample({ batchSize: 2048, inputs: { s: { dims: undefined, data: { _tag: "Fill", value: "x".repeat(900_000) } } } })
    assert.strictEqual(misfit(() => Warmup.tensors(text, [input("s", "string", [-1, 1])], {})), `input "s": [2048, 1] string is 1843216384 bytes, more than a warm-up tensor may have (268435456)`)
    // an input named like an Object.prototype member is an input, and an inputAxes without it is axis 0
    const out = Warmup.tensors(sample({ batchSize: 2 }), [input("constructor", "float32", [-1]), input("__proto__", "float32", [-1])], {})
    assert.deepStrictEqual(out["constructor"], Tensor.float32(new Float32Array(2), [2]))
    assert.deepStrictEqual(Object.keys(out), ["constructor", "__proto__"])
    assert.strictEqual(Object.getPrototypeOf(out), Object.prototype)
  })
})

describe("Warmup.tensors from files", () => {
  const file = (name: string, dims?: ReadonlyArray<number>) => ({ dims, data: { _tag: "File" as const, name, path: `/repo/m/warmup/${name}` } })
  const bytesOf = (values: ArrayLike<number>) => new Uint8Array(Float32Array.from(values).buffer)
  const files: Record<string, Uint8Array> = {
    "/repo/m/warmup/whole.bin": bytesOf([1, 2, 3, 4, 5, 6]),
    "/repo/m/warmup/row.bin": bytesOf([1, 2, 3]),
    "/repo/m/warmup/odd.bin": Uint8Array.of(1, 2, 3, 4, 5),
    // Triton's string form: a 4-byte little-endian length, then the UTF-8 bytes
    "/repo/m/warmup/text.bin": Uint8Array.of(2, 0, 0, 0, 0x68, 0x69, 3, 0, 0, 0, 0xc3, 0xa9, 0x21),
    "/repo/m/warmup/cut.bin": Uint8Array.of(9, 0, 0, 0, 0x68),
    "/repo/m/warmup/short.bin": Uint8Array.of(1, 0),
    "/repo/m/warmup/latin1.bin": Uint8Array.of(1, 0, 0, 0, 0xe9)
  }
  const read: Warmup.Read = (path) => {
    const bytes = files[path]
    if (bytes === undefined) throw new Error(`ENOENT: no such file or directory, open '${path}'`)
    return bytes
  }
  const run = (batchSize: number, inputs: Warmup.Sample["inputs"], spec: Warmup.InputSpec) => Warmup.tensors(sample({ batchSize, inputs }), [spec], {}, read)[spec.name]!

  it("takes the whole tensor, or one row repeated for each row on batch axis 0 (Triton's batch_size)", () => {
    const x = input("x", "float32", [-1, 3])
    assert.deepStrictEqual(run(2, { x: file("whole.bin") }, x), Tensor.float32([1, 2, 3, 4, 5, 6], [2, 3]))
    assert.deepStrictEqual(run(3, { x: file("row.bin") }, x), Tensor.float32([1, 2, 3, 1, 2, 3, 1, 2, 3], [3, 3]))
    assert.deepStrictEqual(run(1, { x: file("row.bin") }, x), Tensor.float32([1, 2, 3], [1, 3]))
    const text = run(2, { t: file("text.bin") }, input("t", "string", [-1]))
    assert.deepStrictEqual(text, Tensor.make("string", ["hi", "é!"], [2]))
    assert.deepStrictEqual(run(4, { t: file("text.bin", [2, 2]) }, input("t", "string", [-1, 2])).data, ["hi", "é!", "hi", "é!"])
  })

  it("refuses a file of another size, a string file cut short or not UTF-8, and one that cannot be read, naming the file", () => {
    const x = input("x", "float32", [-1, 3])
    const table: ReadonlyArray<readonly [() => unknown, string]> = [
      [() => run(4, { x: file("whole.bin") }, x), `input "x": warmup/whole.bin has 24 bytes; [4, 3] float32 takes 48 bytes (or 12 bytes for one row, repeated 4 times)`],
      [() => run(1, { x: file("whole.bin") }, x), `input "x": warmup/whole.bin has 24 bytes; [1, 3] float32 takes 12 bytes`],
      [() => run(2, { x: file("odd.bin") }, x), `input "x": warmup/odd.bin has 5 bytes; [2, 3] float32 takes 24 bytes (or 12 bytes for one row, repeated 2 times)`],
      // on another batch axis a row is not a contiguous run of bytes: the whole tensor only
      [() => Warmup.tensors(sample({ batchSize: 2, inputs: { s: file("row.bin") } }), [input("s", "float32", [3, -1])], { s: 1 }, read), `input "s": warmup/row.bin has 12 bytes; [3, 2] float32 takes 24 bytes`],
      [() => run(3, { t: file("text.bin") }, input("t", "string", [-1])), `input "t": warmup/text.bin has 2 elements; [3] string takes 3 elements (or 1 element for one row, repeated 3 times)`],
      [() => run(1, { t: file("cut.bin") }, input("t", "string", [-1])), `input "t": warmup/cut.bin: element 0 says 9 bytes, 1 are left`],
      [() => run(1, { t: file("short.bin") }, input("t", "string", [-1])), `input "t": warmup/short.bin: ends inside the length of element 0`],
      [() => run(1, { t: file("latin1.bin") }, input("t", "string", [-1])), `input "t": warmup/latin1.bin: element 0 is not UTF-8`],
      [() => run(13_000_000, { t: file("text.bin") }, input("t", "string", [-1, 2])), `input "t": [13000000, 2] string is 273000000 bytes, more than a warm-up tensor may have (268435456)`],
      [() => run(1, { x: file("gone.bin") }, x), `input "x": warmup/gone.bin cannot be read (ENOENT: no such file or directory, open '/repo/m/warmup/gone.bin')`]
    ]
    for (const [f, expected] of table) assert.strictEqual(misfit(f), expected)
  })
})
