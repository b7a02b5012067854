import { assert, describe, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import type * as Protocol from "../../src/onnx/Protocol.ts"
import * as ShmChannel from "../../src/onnx/ShmChannel.ts"
import * as Tensor from "../../src/Tensor.ts"

/** A channel in a temp directory (the same code as in /dev/shm), closed after `f`. */
const withChannel = <A>(f: (channel: NonNullable<ReturnType<typeof ShmChannel.open>>, dir: string) => A): A => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "shm-test-"))
  const channel = ShmChannel.open(dir)!
  try {
    return f(channel, dir)
  } finally {
    channel.close()
    Fs.rmSync(dir, { recursive: true })
  }
}

const big = (n: number, seed: number) => Tensor.float32(Float32Array.from({ length: n }, (_, i) => i * 0.5 + seed), [n / 4, 4])

describe("ShmChannel", () => {
  it("opens two files that are already unlinked", () =>
    withChannel((channel, dir) => {
      assert.deepStrictEqual(Fs.readdirSync(dir), [])
      assert.notStrictEqual(channel.inputFd, channel.outputFd)
      Fs.writeSync(channel.inputFd, new Uint8Array([1, 2, 3]), 0, 3, 0)
      assert.strictEqual(Fs.fstatSync(channel.inputFd).size, 3)
    }))

  it("a write that fails partway (the file system full) empties the file, not left at the failed message's partial size", () => {
    // A file size limit (ulimit -f) stands in for a full /dev/shm: writes past it fail with EFBIG
    // (SIGXFSZ handled), after a partial write, as ENOSPC does partway through a message.
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "shm-full-"))
    try {
      const script = Path.join(dir, "fill.mjs")
      const module = new URL("../../src/onnx/ShmChannel.ts", import.meta.url).href
      const tensor = new URL("../../src/Tensor.ts", import.meta.url).href
      Fs.writeFileSync(script, `
        import * as Fs from "node:fs"
        import * as ShmChannel from ${JSON.stringify(module)}
        import * as Tensor from ${JSON.stringify(tensor)}
        process.on("SIGXFSZ", () => {})
        const channel = ShmChannel.open(${JSON.stringify(dir)})
        const run = (n) => ({ _tag: "run", id: n, inputs: { x: Tensor.float32(new Float32Array(n), [n / 4, 4]) } })
        const small = ShmChannel.placeInputs(channel.inputFd, run(20_000))
        const sizes = [Fs.fstatSync(channel.inputFd).size]
        let failed = ""
        try { ShmChannel.placeInputs(channel.inputFd, run(1_000_000)) } catch (e) { failed = e.code }
        sizes.push(Fs.fstatSync(channel.inputFd).size)
        console.log(JSON.stringify({ placed: small !== undefined, failed, sizes }))
      `)
      const out = spawnSync("sh", ["-c", `ulimit -f 1024 && exec "${process.execPath}" "${script}"`], { encoding: "utf8" })
      assert.strictEqual(out.status, 0, out.stderr)
      const result = JSON.parse(out.stdout.trim().split("\n").at(-1)!) as { placed: boolean; failed: string; sizes: Array<number> }
      assert.isTrue(result.placed, "80 KB fits")
      assert.strictEqual(result.failed, "EFBIG", "4 MB does not")
      assert.deepStrictEqual(result.sizes, [80_000, 0], "emptied after the failed write")
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("is unavailable where the directory is not", () => {
    assert.isUndefined(ShmChannel.open("/nonexistent/dir"))
  })

  it("round-trips tensors of every numeric type at aligned offsets, each into exact-size memory of its own", () =>
    withChannel((channel) => {
      const tensors: Tensor.TensorMap = {
        a: Tensor.make("uint8", Uint8Array.from([1, 2, 3]), [3]),
        b: Tensor.float32(Float32Array.from([1.5, -2]), [1, 2]),
        c: Tensor.int64(BigInt64Array.from([2n ** 40n, -7n]), [2]),
        d: Tensor.make("float16", Uint16Array.from([15360]), []),
        e: Tensor.make("float64", Float64Array.from([Math.PI]), [1, 1, 1])
      }
      const { end, placed } = ShmChannel.write(channel.inputFd, tensors, 3)
      for (const p of Object.values(placed)) assert.strictEqual(p.offset % 8, 0)
      assert.strictEqual(placed["a"]!.offset, 8, "the start rounds up to 8")
      assert.isAtLeast(end, placed["e"]!.offset + 8)
      const back = ShmChannel.read(channel.inputFd, placed)
      for (const name of Object.keys(tensors)) {
        assert.deepStrictEqual(back[name], tensors[name], name)
        assert.strictEqual((back[name]!.data as Uint8Array).byteOffset, 0)
        assert.strictEqual((back[name]!.data as Uint8Array).buffer.byteLength, (tensors[name]!.data as Uint8Array).byteLength)
      }
    }))

  it("writes a view's own bytes, not its whole buffer", () =>
    withChannel((channel) => {
      const backing = Float32Array.from({ length: 10 }, (_, i) => i)
      const view = new Float32Array(backing.buffer, 8, 4)
      const { placed } = ShmChannel.write(channel.inputFd, { x: Tensor.float32(view, [4]) })
      assert.deepStrictEqual(Array.from(ShmChannel.read(channel.inputFd, placed)["x"]!.data as Float32Array), [2, 3, 4, 5])
    }))

  it("fails a read past the end of the file, saying what was missing", () =>
    withChannel((channel) => {
      assert.throws(
        () => ShmChannel.read(channel.inputFd, { x: { dtype: "float32", dims: [4], offset: 0, byteLength: 16 } }),
        /x needs 16 bytes at 0, the file ended after 0/
      )
    }))

  it("places a run's inputs only when they hold minBytes, and never string tensors", () =>
    withChannel((channel) => {
      const small: Protocol.ToWorker = { _tag: "run", id: 1, inputs: { x: big(64, 0) } }
      assert.isUndefined(ShmChannel.placeInputs(channel.inputFd, small))
      const strings: Protocol.ToWorker = { _tag: "run", id: 2, inputs: { x: big(ShmChannel.minBytes, 0), s: Tensor.make("string", ["a"], [1]) } }
      assert.isUndefined(ShmChannel.placeInputs(channel.inputFd, strings))
      assert.isUndefined(ShmChannel.placeInputs(channel.inputFd, { _tag: "cancel", id: 3 }))
      const large: Protocol.ToWorker = { _tag: "run", id: 4, inputs: { x: big(ShmChannel.minBytes / 4, 1) } }
      const placed = ShmChannel.placeInputs(channel.inputFd, large)!
      assert.deepStrictEqual(placed._tag === "run" && placed.inputs, {}, "the pipe carries no tensor data")
      assert.deepStrictEqual(ShmChannel.takeInputs(channel.inputFd, placed), large)
    }))

  it("keeps a job's sent-ahead mark through shared memory, for a run and a group", () =>
    withChannel((channel) => {
      const run: Protocol.ToWorker = { _tag: "run", id: 6, inputs: { x: big(ShmChannel.minBytes / 4, 1) }, ahead: true }
      assert.deepStrictEqual(ShmChannel.takeInputs(channel.inputFd, ShmChannel.placeInputs(channel.inputFd, run)!), run)
      const group: Protocol.ToWorker = { _tag: "runGroup", id: 7, inputs: [{ x: big(8192, 1) }, { x: big(8192, 2) }], ahead: true }
      assert.deepStrictEqual(ShmChannel.takeInputs(channel.inputFd, ShmChannel.placeInputs(channel.inputFd, group)!), group)
    }))

  it("places a group's inputs one after another, and its replies' outputs around the failed runs", () =>
    withChannel((channel) => {
      const inputs = [{ x: big(8192, 1) }, { x: big(8192, 2) }, { x: big(8192, 3) }]
      const group: Protocol.ToWorker = { _tag: "runGroup", id: 5, inputs }
      const placed = ShmChannel.placeInputs(channel.inputFd, group)!
      assert.deepStrictEqual(ShmChannel.takeInputs(channel.inputFd, placed), group)
      const reply: Protocol.FromWorker = {
        _tag: "doneGroup",
        id: 5,
        deviceUsed: "cpu",
        results: [{ _tag: "done", outputs: inputs[0]!, runMs: 1 }, { _tag: "failed", error: "no" }, { _tag: "done", outputs: inputs[2]!, runMs: 2 }]
      }
      const out = ShmChannel.placeOutputs(channel.outputFd, reply)!
      assert.isTrue(out._tag === "doneGroup" && out.results.every((r) => r._tag === "failed" || Object.keys(r.outputs).length === 0))
      assert.deepStrictEqual(ShmChannel.takeOutputs(channel.outputFd, out), reply)
      assert.strictEqual(ShmChannel.endsJob(out), 5)
      assert.isUndefined(ShmChannel.endsJob({ _tag: "closed" }))
    }))

  it("refuses a placement whose byte length does not match its dims and dtype, before reading anything", () =>
    withChannel((channel) => {
      const { placed } = ShmChannel.write(channel.outputFd, { y: big(80, 0) })
      const y = placed["y"]!
      const cases: ReadonlyArray<readonly [string, ShmChannel.Placed, string]> = [
        ["2 bytes short", { ...y, byteLength: y.byteLength - 2 }, "y is 318 bytes, but float32 dims [20, 4] need 320"],
        ["other dims", { ...y, dims: [1, 3] }, "y is 320 bytes, but float32 dims [1, 3] need 12"],
        ["a negative dim", { ...y, dims: [-20, -4] }, "y has invalid dims [-20, -4]"],
        ["a fractional dim", { ...y, dims: [40, 2.5] }, "y has invalid dims [40, 2.5]"],
        ["a negative offset", { ...y, offset: -8 }, "y has an invalid placement (dtype float32, offset -8)"]
      ]
      for (const [what, p, message] of cases) {
        assert.throws(() => ShmChannel.read(channel.outputFd, { y: p }), `shared memory: ${message}`, what)
      }
      assert.deepStrictEqual(ShmChannel.read(channel.outputFd, placed)["y"], big(80, 0), "the placement as written reads back")
    }))

  it("leaves a small reply to the pipe", () =>
    withChannel((channel) => {
      const done: Protocol.FromWorker = { _tag: "done", id: 1, outputs: { y: big(16, 0) }, deviceUsed: "cpu", runMs: 1 }
      assert.isUndefined(ShmChannel.placeOutputs(channel.outputFd, done))
      assert.strictEqual(ShmChannel.takeOutputs(channel.outputFd, done), done)
    }))
})
