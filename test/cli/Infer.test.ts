/**
 * The batch's input side without a model process: `splitLines` (numbered lines from bytes, a
 * line over the bound skipped without being held), and `run` over the fake pool's `echo` model
 * with a small `maxLineBytes`.
 */
import * as NodeServices from "@effect/platform-node/NodeServices"
import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Exit, Layer, Stream } from "effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { AsyncConfigService } from "../../src/AsyncConfig.ts"
import * as Infer from "../../src/cli/Infer.ts"
import { AsyncInferenceEngine } from "../../src/Engine.ts"
import { TelemetryCollector } from "../../src/Telemetry.ts"
import { ModelPool } from "../../src/ModelPool.ts"
import { makeCounterPool } from "../fixtures/CounterPool.ts"
import { makeFake } from "../fixtures/FakeModelPool.ts"

const bytes = (text: string) => new TextEncoder().encode(text)

const split = (chunks: ReadonlyArray<Uint8Array>, maxLineBytes: number) =>
  Effect.runSync(Stream.runCollect(Infer.splitLines(maxLineBytes)(Stream.fromIterable(chunks))))

const show = (lines: ReadonlyArray<Infer.Line>) =>
  lines.map((l) => (l.text !== undefined ? `${l.line}: ${l.text}` : l.tooLongBytes !== undefined ? `${l.line}: ${l.tooLongBytes} bytes` : `${l.line}: not UTF-8 (${l.notUtf8Bytes} bytes)`))

describe("Infer", () => {
  describe("splitLines", () => {
    const e = bytes("é") // two bytes, cut between chunks below
    const cases: ReadonlyArray<readonly [string, ReadonlyArray<Uint8Array>, ReadonlyArray<string>]> = [
      ["lines ended by newlines", [bytes("a\nbb\n")], ["1: a", "2: bb"]],
      ["a last line without a newline", [bytes("a\nb")], ["1: a", "2: b"]],
      ["blank lines keep their numbers", [bytes("a\n\nb\n")], ["1: a", "2: ", "3: b"]],
      ["a line across chunks", [bytes("ab"), bytes("c\nd"), bytes("e\n")], ["1: abc", "2: de"]],
      ["CRLF", [bytes("a\r\nb\r\n")], ["1: a", "2: b"]],
      ["a character cut between chunks", [e.subarray(0, 1), e.subarray(1), bytes("\n")], ["1: é"]],
      ["a line of exactly the bound", [bytes("12345678\nok\n")], ["1: 12345678", "2: ok"]],
      ["a line over the bound: only its length", [bytes("123456789\nok\n")], ["1: 9 bytes", "2: ok"]],
      ["a line over the bound across chunks", [bytes("12345"), bytes("67890"), bytes("12\nok")], ["1: 12 bytes", "2: ok"]],
      ["a last line over the bound", [bytes("ok\n1234567890")], ["1: ok", "2: 10 bytes"]],
      ["a line whose bytes are not UTF-8: no text", [Uint8Array.of(0x61, 0xff, 0x62, 0x0a), bytes("ok\n")], ["1: not UTF-8 (3 bytes)", "2: ok"]],
      ["nothing", [], []]
    ]
    for (const [name, chunks, expected] of cases) {
      it(name, () => assert.deepStrictEqual(show(split(chunks, 8)), expected))
    }
  })

  describe("run", () => {
    const record = (value: number) => JSON.stringify({ x: { datatype: "FP32", shape: [1, 4], data: [value, value, value, value] } })

    /**
     * Runs `infer` over the fake echo model; `input` writes the input (a file, by default) under
     * the run's temporary directory and returns its path.
     */
    const runBatch = (
      input: string,
      onMalformed: "skip" | "fail",
      writeInput = (dir: string, text: string): string => {
        const path = Path.join(dir, "in.ndjson")
        Fs.writeFileSync(path, text)
        return path
      }
    ) =>
      Effect.gen(function*() {
        const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "infer-test-"))
        yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
        const inputPath = writeInput(dir, input)
        const outputPath = Path.join(dir, "out.ndjson")
        const messages: Array<string> = []
        const fake = yield* makeFake(() => ({ latency: "1 millis" }))
        const exit = yield* Effect.exit(Infer.run({
          model: "echo",
          input: inputPath,
          output: outputPath,
          priority: "Normal",
          onMalformed,
          maxLineBytes: 200,
          progress: { mode: "none" },
          messages: { write: (text) => void messages.push(text) }
        }).pipe(Effect.provide(AsyncInferenceEngine.layer.pipe(
          Layer.provideMerge(Layer.mergeAll(fake.layer, TelemetryCollector.layer, AsyncConfigService.layer, NodeServices.layer))
        ))))
        const output = Fs.readFileSync(outputPath, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as { line: number })
        return { exit, messages: messages.join(""), lines: output.map((o) => o.line) }
      })

    it.live("a stateful model's records name their sequence: run in the order of their lines, each with the state the one before left", () =>
      Effect.gen(function*() {
        const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "infer-test-"))
        yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
        const step = (id: number, x: number, flags: Record<string, boolean> = {}) =>
          JSON.stringify({ parameters: { sequence_id: id, ...flags }, inputs: [{ name: "x", datatype: "FP32", shape: [1, 1], data: [x] }] })
        const lines = [step(1, 1, { sequence_start: true }), step(2, 100, { sequence_start: true }), step(1, 2), step(1, 3), step(2, 1, { sequence_end: true }), step(1, 4, { sequence_end: true })]
        Fs.writeFileSync(Path.join(dir, "in.ndjson"), lines.join("\n") + "\n")
        const counter = makeCounterPool({ latencyMs: 1 })
        const exit = yield* Effect.exit(Infer.run({
          model: "counter",
          input: Path.join(dir, "in.ndjson"),
          output: Path.join(dir, "out.ndjson"),
          priority: "Normal",
          onMalformed: "fail",
          concurrency: 8,
          maxLineBytes: 1000,
          progress: { mode: "none" },
          messages: { write: () => {} }
        }).pipe(Effect.provide(AsyncInferenceEngine.layer.pipe(
          Layer.provideMerge(Layer.mergeAll(Layer.succeed(ModelPool, counter.pool), TelemetryCollector.layer, AsyncConfigService.layer, NodeServices.layer))
        ))))
        assert.isTrue(Exit.isSuccess(exit), String(exit))
        const output = Fs.readFileSync(Path.join(dir, "out.ndjson"), "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l))
        assert.deepStrictEqual(output.map((o: any) => [o.line, o.outputs?.y.data[0], Object.keys(o.outputs ?? {})]), [
          [1, 1, ["y"]], [2, 100, ["y"]], [3, 3, ["y"]], [4, 6, ["y"]], [5, 101, ["y"]], [6, 10, ["y"]]
        ])
      }))

    it.live("reads a named pipe (mkfifo, or a shell's <(…)): in order, once, without positional reads", () =>
      Effect.gen(function*() {
        let writing: Promise<void> = Promise.resolve()
        const { exit, lines } = yield* runBatch([record(1), record(2), record(3)].join("\n") + "\n", "fail", (dir, text) => {
          const fifo = Path.join(dir, "in.fifo")
          ChildProcess.execFileSync("mkfifo", [fifo])
          assert.isFalse(Infer.isRegularFile(fifo))
          // The writer blocks until the reader opens the pipe.
          writing = Fs.promises.writeFile(fifo, text)
          return fifo
        })
        yield* Effect.promise(() => writing)
        // Before: "FileSystem.readAlloc" failed (ESPIPE) and nothing was written.
        assert.isTrue(Exit.isSuccess(exit), String(exit))
        assert.deepStrictEqual(lines, [1, 2, 3])
      }))

    it.live("reports a line longer than maxLineBytes as malformed and goes on with the next record", () =>
      Effect.gen(function*() {
        const { exit, lines, messages } = yield* runBatch([record(1), "x".repeat(1000), record(2)].join("\n") + "\n", "skip")
        assert.isTrue(Exit.isSuccess(exit))
        assert.include(messages, "line 2: skipped malformed record: line of 1000 bytes, longer than the 200 bytes read (not read)")
        assert.deepStrictEqual(lines, [1, 3])
        assert.deepInclude(Exit.isSuccess(exit) ? exit.value : {}, { total: 3, written: 2, skipped: 1 })
      }))

    it.live("reports a line whose bytes are not UTF-8 as malformed: its strings are not read with U+FFFD in their place", () =>
      Effect.gen(function*() {
        // An OIP body whose id holds the byte 0xff: valid JSON once replaced, so only the check refuses it.
        const bad = Buffer.concat([Buffer.from('{"id": "a'), Buffer.of(0xff), Buffer.from('", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]}')])
        const { exit, lines, messages } = yield* runBatch("", "skip", (dir) => {
          const path = Path.join(dir, "in.ndjson")
          Fs.writeFileSync(path, Buffer.concat([Buffer.from(record(1) + "\n"), bad, Buffer.from("\n" + record(2) + "\n")]))
          return path
        })
        assert.isTrue(Exit.isSuccess(exit))
        assert.include(messages, "line 2: skipped malformed record: not valid UTF-8, as JSON text must be")
        assert.deepStrictEqual(lines, [1, 3])
      }))

    it.live("with onMalformed fail, a line longer than maxLineBytes stops the batch with MalformedLine", () =>
      Effect.gen(function*() {
        const { exit, lines } = yield* runBatch([record(1), "x".repeat(1000), record(2)].join("\n") + "\n", "fail")
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined
        assert.instanceOf(error, Infer.MalformedLine)
        assert.strictEqual((error as Infer.MalformedLine).line, 2)
        assert.deepStrictEqual(lines, [1])
      }))
  })
})

describe("Infer.runRemote (--url)", () => {
  /**
   * A fake OIP server of one model "counter" (x: FP32 [1, 1] → y = x + the sequence's state): it
   * records, for each sequence, the most of its requests it ever had at once, and answers after
   * `delayMs` (a random delay each time, so that requests in flight together would overtake each
   * other). `metadata: false`: it never answers the metadata request.
   */
  const fakeServer = (options: { readonly delayMs: () => number; readonly metadata?: boolean; readonly dieAfter?: number }) =>
    Effect.gen(function*() {
      const inFlight = new Map<string, number>()
      const most = new Map<string, number>()
      const states = new Map<string, number>()
      const order: Array<string> = []
      let answered = 0
      const server = Http.createServer((req, res) => {
        const chunks: Array<Buffer> = []
        req.on("data", (c: Buffer) => chunks.push(c))
        req.on("end", () => {
          const bytes = Buffer.concat(chunks)
          // the client sends Triton's binary tensor data: a JSON header, then x's 4 bytes
          const jsonLength = Number(req.headers["inference-header-content-length"] ?? bytes.byteLength)
          const body = bytes.subarray(0, jsonLength).toString("utf8")
          const binaryX = jsonLength < bytes.byteLength ? bytes.readFloatLE(jsonLength) : undefined
          if (req.method === "GET") {
            if (options.metadata === false) return
            res.writeHead(200, { "content-type": "application/json" })
            return res.end(JSON.stringify({ name: "counter", versions: ["1"], inputs: [{ name: "x", datatype: "FP32", shape: [1, 1] }], outputs: [{ name: "y", datatype: "FP32", shape: [1, 1] }] }))
          }
          const json = JSON.parse(body) as { parameters: { sequence_id?: number; sequence_start?: boolean }; inputs: Array<{ data?: Array<number> }> }
          const id = String(json.parameters.sequence_id)
          const x = binaryX ?? json.inputs[0]!.data![0]!
          order.push(`${id}:${x}`)
          inFlight.set(id, (inFlight.get(id) ?? 0) + 1)
          most.set(id, Math.max(most.get(id) ?? 0, inFlight.get(id)!))
          setTimeout(() => {
            inFlight.set(id, inFlight.get(id)! - 1)
            if (options.dieAfter !== undefined && answered >= options.dieAfter) return req.socket.destroy()
            answered++
            const y = (json.parameters.sequence_start === true ? 0 : states.get(id) ?? 0) + x
            states.set(id, y)
            res.writeHead(200, { "content-type": "application/json" })
            res.end(JSON.stringify({ model_name: "counter", model_version: "1", outputs: [{ name: "y", datatype: "FP32", shape: [1, 1], data: [y] }] }))
          }, options.delayMs())
        })
      })
      yield* Effect.acquireRelease(
        Effect.callback<void>((resume) => void server.listen(0, "127.0.0.1", () => resume(Effect.void))),
        () => Effect.sync(() => (server.closeAllConnections(), server.close()))
      )
      return { url: `http://127.0.0.1:${(server.address() as Net.AddressInfo).port}`, most, order }
    })

  const runAt = (url: string, lines: ReadonlyArray<string>, options: { readonly timeout?: Duration.Duration } = {}) =>
    Effect.gen(function*() {
      const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "infer-remote-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true })))
      Fs.writeFileSync(Path.join(dir, "in.ndjson"), lines.join("\n") + "\n")
      const exit = yield* Effect.exit(Infer.runRemote({
        model: "counter",
        input: Path.join(dir, "in.ndjson"),
        output: Path.join(dir, "out.ndjson"),
        priority: "Normal",
        onMalformed: "fail",
        concurrency: 16,
        timeout: options.timeout,
        progress: { mode: "none" },
        messages: { write: () => {} }
      }, url).pipe(Effect.provide(NodeServices.layer)))
      const out = Fs.existsSync(Path.join(dir, "out.ndjson"))
        ? Fs.readFileSync(Path.join(dir, "out.ndjson"), "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as { line: number; outputs?: { y: { data: Array<number> } }; error?: unknown })
        : []
      return { exit, out }
    })

  const step = (id: number, x: number, flags: Record<string, boolean> = {}) =>
    JSON.stringify({ parameters: { sequence_id: id, ...flags }, inputs: [{ name: "x", datatype: "FP32", shape: [1, 1], data: [x] }] })

  it.live("a sequence's records go one at a time in line order, though 16 records are in flight and answers come back in any order", () =>
    Effect.gen(function*() {
      const { url, most, order } = yield* fakeServer({ delayMs: () => Math.random() * 20 })
      const lines: Array<string> = []
      for (let i = 1; i <= 10; i++) for (const id of [1, 2, 3]) lines.push(step(id, i, i === 1 ? { sequence_start: true } : i === 10 ? { sequence_end: true } : {}))
      const { exit, out } = yield* runAt(url, lines)
      assert.isTrue(Exit.isSuccess(exit), String(exit))
      assert.deepStrictEqual([...most.values()], [1, 1, 1], "never two requests of a sequence at the server at once")
      for (const id of ["1", "2", "3"]) assert.deepStrictEqual(order.filter((o) => o.startsWith(`${id}:`)).map((o) => Number(o.split(":")[1])), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
      // each answer the running sum of its sequence: 1, 3, 6, …
      assert.deepStrictEqual(out.filter((_, i) => i % 3 === 0).map((o) => o.outputs!.y.data[0]), [1, 3, 6, 10, 15, 21, 28, 36, 45, 55])
    }))

  it.live("a server that goes away stops the batch (it does not turn the rest into error records), with what finished written", () =>
    Effect.gen(function*() {
      const { url } = yield* fakeServer({ delayMs: () => 2, dieAfter: 5 })
      const lines = Array.from({ length: 40 }, (_, i) => JSON.stringify({ inputs: [{ name: "x", datatype: "FP32", shape: [1, 1], data: [i] }] }))
      const { exit, out } = yield* runAt(url, lines)
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined
      assert.include(String((error as { message?: string } | undefined)?.message), "ECONNRESET")
      assert.isAtMost(out.length, 40)
      assert.isTrue(out.every((o) => o.error === undefined), "no error records")
    }))

  it.live("a server that never gives the metadata: the batch stops at the records' deadline", () =>
    Effect.gen(function*() {
      const { url } = yield* fakeServer({ delayMs: () => 0, metadata: false })
      const startedMs = performance.now()
      const { exit } = yield* runAt(url, [step(1, 1, { sequence_start: true })], { timeout: Duration.millis(300) })
      assert.isTrue(Exit.isFailure(exit))
      assert.isBelow(performance.now() - startedMs, 5_000)
      const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail")?.error : undefined
      assert.include(String((error as { message?: string } | undefined)?.message), "gave no metadata within")
    }))
})
