import { assert, describe, it } from "@effect/vitest"
import * as Sequence from "../src/Sequence.ts"
import * as Tensor from "../src/Tensor.ts"

/** Silero VAD's signature: `state` [2, batch, 128] in, `stateN` out. */
const silero: Sequence.Signature = {
  inputs: [
    { name: "input", dtype: "float32", dims: [-1, -1] },
    { name: "state", dtype: "float32", dims: [2, -1, 128] },
    { name: "sr", dtype: "int64", dims: [] }
  ],
  outputs: [{ name: "output", dtype: "float32", dims: [-1, 1] }, { name: "stateN", dtype: "float32", dims: [2, -1, 128] }]
}

const config = (json: unknown) => {
  const problem = Sequence.problem(json)
  if (problem !== undefined) throw new Error(problem)
  return Sequence.fromJson(json)
}

describe("Sequence", () => {
  it("problem: names what is wrong with a sequenceBatching section", () => {
    const table: ReadonlyArray<readonly [unknown, string | undefined]> = [
      [{ state: [{ input: "state", output: "stateN" }] }, undefined],
      [{ maxSequenceIdleMs: 5000, maxSequences: 10, state: [{ input: "state", output: "stateN", dims: [2, 1, 128] }] }, undefined],
      [[], "must be an object"],
      [{}, `sequenceBatching must list its "state" tensors, its "control" inputs, or both`],
      [{ control: [{ input: "START", kind: "start" }] }, undefined],
      [{ control: [] }, "control must list 1 to 4"],
      [{ control: [{ input: "S", kind: "begin" }] }, `control[0].kind must be one of "start", "end", "ready", "corrid"`],
      [{ control: [{ input: "S", kind: "start", fp32: [0, 1] }] }, `control[0] has unknown key "fp32"`],
      [{ control: [{ input: "S", kind: "start" }, { input: "E", kind: "start" }] }, `names the kind "start" twice`],
      [{ state: [{ input: "h", output: "hN" }], control: [{ input: "h", kind: "ready" }] }, `"h" is both a state and a control input`],
      [{ state: [] }, "sequenceBatching.state must list 1 to 64"],
      [{ state: [{ input: "state" }] }, "state[0].output must name one of the model's outputs"],
      [{ state: [{ input: "", output: "x" }] }, "state[0].input must name"],
      [{ state: [{ input: "a", output: "b", dims: [2, 0] }] }, "state[0].dims must be a list"],
      [{ state: [{ input: "a", output: "b", initial: "zero" }] }, `state[0] has unknown key "initial"`],
      [{ state: [{ input: "a", output: "b", initialState: "zero" }] }, undefined],
      [{ state: [{ input: "a", output: "b", initialState: { file: "h0.bin" } }] }, undefined],
      [{ state: [{ input: "a", output: "b", initialState: "random" }] }, `state[0].initialState must be "zero" (the default) or {"file": name}`],
      [{ state: [{ input: "a", output: "b", initialState: { file: "h0.bin", zero: true } }] }, `state[0].initialState must be "zero"`],
      [{ state: [{ input: "a", output: "b", initialState: { file: "../h0.bin" } }] }, `state[0].initialState.file must be a file name in the model's initial_state/ directory`],
      [{ state: [{ input: "a", output: "b", initialState: { file: "" } }] }, "initialState.file must be a file name"],
      [{ idle: 3, state: [{ input: "a", output: "b" }] }, `sequenceBatching has unknown key "idle"`],
      [{ maxSequenceIdleMs: 0, state: [{ input: "a", output: "b" }] }, "maxSequenceIdleMs must be an integer from 1"],
      [{ maxSequences: 1.5, state: [{ input: "a", output: "b" }] }, "maxSequences must be an integer from 1"],
      [{ state: [{ input: "a", output: "b" }, { input: "a", output: "c" }] }, `names the input "a" twice`],
      [{ state: [{ input: "a", output: "b" }, { input: "c", output: "b" }] }, `names the output "b" twice`]
    ]
    for (const [json, expected] of table) {
      const problem = Sequence.problem(json)
      if (expected === undefined) assert.isUndefined(problem, JSON.stringify(json))
      else assert.include(problem, expected, JSON.stringify(json))
    }
  })

  it("fromJson: Triton's one-second idle limit and 1024 sequences by default", () => {
    assert.deepStrictEqual(config({ state: [{ input: "state", output: "stateN" }] }), {
      maxSequenceIdleMs: 1000,
      maxSequences: 1024,
      states: [{ input: "state", output: "stateN", dims: undefined }]
    })
  })

  it("resolve: zeros of the model's dims with 1 for each dynamic dim, or of the dims given", () => {
    const resolved = Sequence.resolve(config({ state: [{ input: "state", output: "stateN" }] }), silero)
    assert.notStrictEqual(typeof resolved, "string")
    if (typeof resolved === "string") return
    const initial = resolved.states[0]!.initial
    assert.deepStrictEqual([initial.dtype, initial.dims, initial.data.length], ["float32", [2, 1, 128], 256])
    assert.isTrue((initial.data as Float32Array).every((v) => v === 0))
    assert.strictEqual(resolved.initialInputs["state"], initial)
    const given = Sequence.resolve(config({ state: [{ input: "state", output: "stateN", dims: [2, 1, 128] }] }), silero)
    assert.strictEqual(typeof given === "string" ? given : given.shape, resolved.shape)
  })

  it("fromJson and resolve: an initial state from a file (Triton's data_file), its raw little-endian elements, exactly the state's size", () => {
    const json = { state: [{ input: "state", output: "stateN", initialState: { file: "h0.bin" } }] }
    assert.deepStrictEqual(config(json).states, [{ input: "state", output: "stateN", dims: undefined, initialFile: { name: "h0.bin" } }])
    const values = Float32Array.from({ length: 256 }, (_, i) => i / 4)
    const read = (bytes: Uint8Array): Sequence.Config => ({
      ...config(json),
      states: [{ input: "state", output: "stateN", dims: undefined, initialFile: { name: "h0.bin", bytes } }]
    })
    const resolved = Sequence.resolve(read(new Uint8Array(values.buffer)), silero)
    if (typeof resolved === "string") return assert.fail(resolved)
    const initial = resolved.states[0]!
    assert.deepStrictEqual([initial.initial.dims, Array.from(initial.initial.data as Float32Array), initial.initialFile], [[2, 1, 128], Array.from(values), "h0.bin"])
    assert.strictEqual(resolved.initialStates["state"], initial.initial)
    // the same shape as zeros: a reload from zeros to a file keeps the sequences going
    assert.strictEqual(resolved.shape, (Sequence.resolve(config({ state: [{ input: "state", output: "stateN" }] }), silero) as Sequence.Resolved).shape)
    assert.strictEqual(
      Sequence.resolve(read(new Uint8Array(1020)), silero),
      "sequenceBatching.state[0].initialState: initial_state/h0.bin has 1020 bytes; the state [2, 1, 128] float32 takes 1024"
    )
    assert.include(Sequence.resolve(config(json), silero) as string, "initial_state/h0.bin was not read")
  })

  it("resolve: refuses states that do not fit the model", () => {
    const table: ReadonlyArray<readonly [unknown, string]> = [
      [{ state: [{ input: "h", output: "stateN" }] }, `state[0].input: the model has no input "h" (its inputs: input, state, sr)`],
      [{ state: [{ input: "state", output: "hN" }] }, `state[0].output: the model has no output "hN"`],
      [{ state: [{ input: "sr", output: "output" }] }, "input \"sr\" is int64, output \"output\" float32"],
      [{ state: [{ input: "state", output: "stateN", dims: [3, 1, 128] }] }, "dims [3, 1, 128] do not fit input \"state\" [2, -1, 128]"],
      [{ state: [{ input: "state", output: "stateN", dims: [2, 1] }] }, "do not fit input"],
      [{ state: [{ input: "state", output: "stateN", dims: [2, 100_000, 128] }] }, "more than 16777216"]
    ]
    for (const [json, expected] of table) {
      const resolved = Sequence.resolve(config(json), silero)
      assert.include(typeof resolved === "string" ? resolved : "resolved", expected, JSON.stringify(json))
    }
    const strings = Sequence.resolve(config({ state: [{ input: "t", output: "u" }] }), {
      inputs: [{ name: "t", dtype: "string", dims: [1] }],
      outputs: [{ name: "u", dtype: "string", dims: [1] }]
    })
    assert.include(strings as string, "a state must be numeric")
  })

  it("flagsProblem: a positive safe integer or text of 1 to 256 characters, booleans for start and end", () => {
    const table: ReadonlyArray<readonly [unknown, string | undefined]> = [
      [{ id: 1 }, undefined],
      [{ id: "a", start: true, end: false }, undefined],
      [{ id: 2 ** 53 - 1 }, undefined],
      [{ id: "x".repeat(256) }, undefined],
      [{ id: 0 }, "positive integer"],
      [{ id: 2 ** 53 }, "below 2^53"],
      [{ id: 1.5 }, "positive integer"],
      [{ id: "" }, "text of 1 to 256"],
      [{ id: "x".repeat(257) }, "text of 1 to 256"],
      [{ id: null }, "not null"],
      [{ id: 1, start: "yes" }, "start must be a boolean"],
      [{ id: 1, end: 1 }, "end must be a boolean"],
      ["1", "must be an object"]
    ]
    for (const [flags, expected] of table) {
      const problem = Sequence.flagsProblem(flags)
      if (expected === undefined) assert.isUndefined(problem, JSON.stringify(flags))
      else assert.include(problem, expected, JSON.stringify(flags))
    }
  })

  it("keyOf: an integer id and the same digits as text are two sequences", () => {
    assert.notStrictEqual(Sequence.keyOf(7), Sequence.keyOf("7"))
    assert.strictEqual(Sequence.keyOf(7), Sequence.keyOf(7))
  })

  it("clientInputs and clientOutputs leave the states out; withStates adds them to a new map, own keys whatever the names", () => {
    const resolved = Sequence.resolve(config({ state: [{ input: "state", output: "stateN" }] }), silero) as Sequence.Resolved
    const model = { ...silero, sequence: resolved }
    assert.deepStrictEqual(Sequence.clientInputs(model).map((s) => s.name), ["input", "sr"])
    assert.deepStrictEqual(Sequence.clientOutputs(model).map((s) => s.name), ["output"])
    assert.strictEqual(Sequence.clientInputs(silero), silero.inputs)
    const inputs = { input: Tensor.float32(new Float32Array(512), [1, 512]) }
    const merged = Sequence.withStates(inputs, resolved.initialInputs)
    assert.deepStrictEqual(Object.keys(merged), ["input", "state"])
    assert.deepStrictEqual(Object.keys(inputs), ["input"])
    const odd = Sequence.withStates(JSON.parse(`{"__proto__": 1}`), { constructor: resolved.states[0]!.initial })
    assert.deepStrictEqual(Object.keys(odd), ["__proto__", "constructor"])
  })

  it("copyState: a buffer of its own", () => {
    const tensor = Tensor.float32(new Float32Array(8).subarray(2, 4), [2])
    const copy = Sequence.copyState(tensor)
    assert.deepStrictEqual([copy.dims, copy.data.length, (copy.data as Float32Array).buffer.byteLength], [[2], 2, 8])
  })

  it("control inputs: resolved against the model (one element, a type its kind takes), set per request, the id checked against CORRID's type", () => {
    const model: Sequence.Signature = {
      inputs: [
        { name: "x", dtype: "float32", dims: [-1, 4] },
        { name: "S", dtype: "bool", dims: [-1, 1] },
        { name: "C", dtype: "int32", dims: [1] },
        { name: "T", dtype: "string", dims: [-1] },
        { name: "W", dtype: "float32", dims: [2] }
      ],
      outputs: [{ name: "y", dtype: "float32", dims: [-1, 4] }]
    }
    const resolve = (control: ReadonlyArray<unknown>) => Sequence.resolve(config({ control }), model)
    assert.include(resolve([{ input: "W", kind: "ready" }]) as string, `"W" [2] holds more than one element`)
    assert.include(resolve([{ input: "T", kind: "start" }]) as string, "a start control input is bool, int8")
    assert.include(resolve([{ input: "S", kind: "corrid" }]) as string, "a corrid control input is int32, int64, uint32, uint64, string")
    assert.include(resolve([{ input: "nope", kind: "end" }]) as string, `the model has no input "nope"`)
    const resolved = resolve([{ input: "S", kind: "start" }, { input: "C", kind: "corrid" }]) as Sequence.Resolved
    assert.deepStrictEqual(resolved.states, [])
    const inputs = Sequence.controlInputs(resolved, { id: 12, start: true })
    assert.deepStrictEqual([inputs["S"]!.dims, Array.from(inputs["S"]!.data as Uint8Array), inputs["C"]!.dims, Array.from(inputs["C"]!.data as Int32Array)], [[1, 1], [1], [1], [12]])
    assert.deepStrictEqual(Array.from(Sequence.controlInputs(resolved, { id: 12 })["S"]!.data as Uint8Array), [0])
    assert.deepStrictEqual(Sequence.clientInputs({ ...model, sequence: resolved }).map((s) => s.name), ["x", "T", "W"])
    assert.include(Sequence.corridProblem(resolved, "a"), "must be an integer below 2^53, not text")
    assert.include(Sequence.corridProblem(resolved, 2 ** 31), "does not fit the model's int32 input")
    assert.isUndefined(Sequence.corridProblem(resolved, 2 ** 31 - 1))
    const text = resolve([{ input: "T", kind: "corrid" }]) as Sequence.Resolved
    assert.isUndefined(Sequence.corridProblem(text, "a"))
    assert.deepStrictEqual(Sequence.controlInputs(text, { id: 5 })["T"]!.data, ["5"])
  })
})
