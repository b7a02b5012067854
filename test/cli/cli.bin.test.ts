/**
 * `node src/bin/cli.ts` as a process: help, a batch over the bundled MLP in input order with
 * malformed lines skipped or fatal, Ctrl+C (SIGINT) in the middle of a batch, and `serve`.
 * The repository holds only the MLP, so that each run starts quickly.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("../..", import.meta.url))
const entry = Path.join(root, "src/bin/cli.ts")

interface Run {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

const start = (args: ReadonlyArray<string>, stdin?: string, env?: Record<string, string>): { child: ChildProcess; done: Promise<Run> } => {
  const child = spawn(process.execPath, [entry, ...args], {
    cwd: root,
    stdio: [stdin === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    ...(env === undefined ? {} : { env: { ...process.env, ...env } })
  })
  if (stdin !== undefined) child.stdin!.end(stdin)
  let stdout = ""
  let stderr = ""
  child.stdout!.on("data", (c: Buffer) => (stdout += c.toString("utf8")))
  child.stderr!.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
  const done = new Promise<Run>((resolve) => child.on("exit", (code) => resolve({ code, stdout, stderr })))
  return { child, done }
}

const run = (args: ReadonlyArray<string>, stdin?: string, env?: Record<string, string>) => start(args, stdin, env).done

const mlpRecord = (seed: number) =>
  JSON.stringify({ input: { datatype: "FP32", shape: [1, 784], data: Array.from({ length: 784 }, (_, i) => ((i * seed) % 7) / 7) } })

let dir: string
let models: string

beforeAll(() => {
  dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "cli-test-"))
  models = Path.join(dir, "models")
  Fs.mkdirSync(Path.join(models, "mlp"), { recursive: true })
  Fs.copyFileSync(Path.join(root, "models/mlp/model.onnx"), Path.join(models, "mlp/model.onnx"))
})
afterAll(() => Fs.rmSync(dir, { recursive: true, force: true }))

const outputLines = (file: string) =>
  Fs.readFileSync(file, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as { line: number; outputs?: any; error?: any })

describe("effect-onnx (src/bin/cli.ts)", () => {
  it("documents both commands and the infer flags in --help", async () => {
    const [top, infer] = await Promise.all([run(["--help"]), run(["infer", "--help"])])
    assert.strictEqual(top.code, 0)
    assert.match(top.stdout, /infer\s+Runs every record/)
    assert.match(top.stdout, /serve\s+Serves the Open Inference Protocol/)
    assert.match(top.stdout, /perf\s+Load-tests a model/)
    assert.strictEqual(infer.code, 0)
    for (const flag of ["--model", "--input", "--output", "--concurrency", "--priority", "--on-malformed", "--progress", "--models", "--timeout-ms", "--url"]) {
      assert.include(infer.stdout, flag)
    }
  }, 30_000)

  it("refuses an invalid command line with exit code 2", async () => {
    const file = Path.join(dir, "same.ndjson")
    Fs.writeFileSync(file, mlpRecord(1))
    const [missing, same, typo] = await Promise.all([
      run(["infer", "--model", "mlp"]),
      run(["infer", "--model", "mlp", "--input", file, "--output", file]),
      run(["infre", "--model", "mlp", "--input", file, "--output", "out.ndjson"])
    ])
    // A mistyped subcommand is the one error said, not the flags it would have taken.
    assert.strictEqual(typo.code, 2)
    assert.deepStrictEqual(typo.stderr.trim().split("\n"), [
      `effect-onnx: Unknown subcommand "infre" for "effect-onnx" Did you mean this? infer`,
      "Run 'effect-onnx --help' for usage."
    ])
    assert.strictEqual(missing.code, 2)
    // The error first, on one line, then where the usage is: not thirty lines of help.
    assert.deepStrictEqual(missing.stderr.trim().split("\n"), [
      "effect-onnx infer: Missing required flag: --input",
      "Run 'effect-onnx infer --help' for usage."
    ])
    assert.strictEqual(missing.stdout, "")
    assert.strictEqual(same.code, 2)
    assert.include(same.stderr, "--output must not be the --input file")
    assert.strictEqual(Fs.readFileSync(file, "utf8"), mlpRecord(1))
  }, 30_000)

  it("refuses an --output that is the --input file by another name (a symbolic or a hard link), leaving the input whole", async () => {
    const input = Path.join(dir, "linked.ndjson")
    Fs.writeFileSync(input, mlpRecord(1))
    const symbolic = Path.join(dir, "linked.symlink.ndjson")
    const hard = Path.join(dir, "linked.hardlink.ndjson")
    Fs.rmSync(symbolic, { force: true })
    Fs.rmSync(hard, { force: true })
    Fs.symlinkSync(input, symbolic)
    Fs.linkSync(input, hard)
    const [viaSymlink, viaHardLink] = await Promise.all([
      run(["infer", "--model", "mlp", "--input", input, "--output", symbolic, "--models", models]),
      run(["infer", "--model", "mlp", "--input", input, "--output", hard, "--models", models, "--resume"])
    ])
    for (const result of [viaSymlink, viaHardLink]) {
      assert.strictEqual(result.code, 2, result.stderr)
      assert.include(result.stderr, "--output must not be the --input file")
    }
    assert.strictEqual(Fs.readFileSync(input, "utf8"), mlpRecord(1))
  }, 30_000)

  it("--help lists every environment variable; serve's flags are documented by the same help as infer's", async () => {
    const [infer, serve] = await Promise.all([run(["infer", "--help"]), run(["serve", "--help"])])
    for (const variable of ["MAX_CONCURRENT_REQUESTS", "MAX_QUEUED_REQUESTS", "QUEUE_TIMEOUT_MS", "ENABLE_PRIORITY_QUEUE", "AGING_MS", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_BSP_SCHEDULE_DELAY", "OTEL_METRIC_EXPORT_INTERVAL", "OTEL_SDK_DISABLED"]) {
      assert.include(infer.stdout, variable)
      assert.include(serve.stdout, variable)
    }
    for (const [flag, variable] of [["--host", "HOST"], ["--port", "PORT"], ["--models", "MODEL_REPOSITORY"], ["--max-body-bytes", "MAX_BODY_BYTES"], ["--grace-period-seconds", "GRACE_PERIOD_SECONDS"], ["--strict-readiness", "STRICT_READINESS"], ["--exit-on-error", "EXIT_ON_ERROR"], ["--metrics-format", "METRICS_FORMAT"], ["--decode-threads", "DECODE_THREADS"], ["--large-body-bytes", "LARGE_BODY_BYTES"]]) {
      assert.match(serve.stdout, new RegExp(`${flag} .*\\[${variable}\\]`))
    }
    assert.match(serve.stdout, /USAGE\n\s+effect-onnx serve \[flags\]/)
  }, 30_000)

  it("reads standard input and writes standard output with -, and /dev/stdin, /dev/stdout too", async () => {
    const records = [mlpRecord(1), mlpRecord(2), mlpRecord(3)].join("\n") + "\n"
    const dash = await run(["infer", "--model", "mlp", "--input", "-", "--output", "-", "--models", models, "--progress", "none"], records)
    assert.strictEqual(dash.code, 0, dash.stderr)
    const lines = dash.stdout.trim().split("\n").map((l) => JSON.parse(l) as { line: number; outputs: any })
    assert.deepStrictEqual(lines.map((l) => l.line), [1, 2, 3])
    for (const l of lines) assert.deepStrictEqual(l.outputs.logits.shape, [1, 10])
    const devices = await run(["infer", "--model", "mlp", "--input", "/dev/stdin", "--output", "/dev/stdout", "--models", models, "--progress", "none"], records)
    assert.strictEqual(devices.code, 0, devices.stderr)
    assert.strictEqual(devices.stdout, dash.stdout)
  }, 60_000)

  it("keeps standard output for the records: log lines (a model that did not load, --log-level info) go to standard error", async () => {
    const repository = Path.join(dir, "with-broken")
    Fs.mkdirSync(Path.join(repository, "mlp"), { recursive: true })
    Fs.mkdirSync(Path.join(repository, "broken", "1"), { recursive: true })
    Fs.copyFileSync(Path.join(root, "models/mlp/model.onnx"), Path.join(repository, "mlp/model.onnx"))
    Fs.writeFileSync(Path.join(repository, "broken/1/model.onnx"), "not onnx")
    const records = [mlpRecord(1), mlpRecord(2)].join("\n") + "\n"
    const piped = await run(["infer", "--model", "mlp", "--input", "-", "--output", "-", "--models", repository, "--progress", "none", "--log-level", "info"], records)
    assert.strictEqual(piped.code, 0, piped.stderr)
    assert.deepStrictEqual(piped.stdout.trim().split("\n").map((l) => (JSON.parse(l) as { line: number }).line), [1, 2])
    assert.match(piped.stderr, /model broken version 1 is UNAVAILABLE/)
  }, 60_000)

  it("writes one result per record in input order, skipping malformed lines with their line numbers", async () => {
    const input = Path.join(dir, "mixed.ndjson")
    const lines = [
      ...Array.from({ length: 30 }, (_, i) => mlpRecord(i + 1)),
      "not json",
      "",
      JSON.stringify({ input: { datatype: "FP32", shape: [1, 3], data: [1, 2, 3] } }),
      JSON.stringify({ id: "last", parameters: { priority: 1 }, inputs: [{ name: "input", datatype: "FP32", shape: [1, 784], data: new Array(784).fill(0) }] })
    ]
    Fs.writeFileSync(input, lines.join("\n") + "\n")
    const output = Path.join(dir, "mixed.out.ndjson")
    const result = await run(["infer", "--model", "mlp", "--input", input, "--output", output, "--models", models, "--concurrency", "6", "--priority", "low"])
    assert.strictEqual(result.code, 0, result.stderr)
    assert.include(result.stderr, "line 31: skipped malformed record: not JSON")
    assert.include(result.stderr, "line 33: skipped malformed record: invalid input \"input\" for model \"mlp\"")
    assert.match(result.stderr, /done: 31 records in .*, 2 skipped/)
    const out = outputLines(output)
    assert.deepStrictEqual(out.map((o) => o.line), [...Array.from({ length: 30 }, (_, i) => i + 1), 34])
    for (const o of out) assert.deepStrictEqual(o.outputs.logits.shape, [1, 10])
    assert.strictEqual((out.at(-1) as any).id, "last")
    // Equal inputs give equal outputs, wherever they fall in the batch.
    assert.deepStrictEqual(out[0]!.outputs.logits.data, out[7]!.outputs.logits.data) // seeds 1 and 8: the same (i * seed) % 7
  }, 60_000)

  it("stops at a malformed line with --on-malformed fail (exit 1), naming the line", async () => {
    const input = Path.join(dir, "fatal.ndjson")
    Fs.writeFileSync(input, [mlpRecord(1), mlpRecord(2), "{\"input\": 1}", mlpRecord(3)].join("\n"))
    const output = Path.join(dir, "fatal.out.ndjson")
    const result = await run(["infer", "--model", "mlp", "--input", input, "--output", output, "--models", models, "--on-malformed", "fail", "--concurrency", "1"])
    assert.strictEqual(result.code, 1)
    assert.include(result.stderr, "line 3: malformed record: \"input\" is not a tensor")
    assert.deepStrictEqual(outputLines(output).map((o) => o.line), [1, 2])
  }, 60_000)

  it("fails with exit code 1 for a model the repository does not hold", async () => {
    const input = Path.join(dir, "one.ndjson")
    Fs.writeFileSync(input, mlpRecord(1))
    const result = await run(["infer", "--model", "nope", "--input", input, "--output", Path.join(dir, "x.ndjson"), "--models", models])
    assert.strictEqual(result.code, 1)
    assert.include(result.stderr, "model \"nope\" not found")
  }, 60_000)

  it("ends with one line and exit 1 when the output cannot be written: a full device, a reader that closed the pipe", async () => {
    const input = Path.join(dir, "unwritable.ndjson")
    Fs.writeFileSync(input, Array.from({ length: 2000 }, (_, i) => mlpRecord(i % 7 + 1)).join("\n") + "\n")
    /** Waits for the exit; a process still running after 20 s is killed and reported as hung. */
    const settled = (child: ChildProcess, done: Promise<Run>) => {
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000)
      return done.finally(() => clearTimeout(timer))
    }
    const full = start(["infer", "--model", "mlp", "--input", input, "--output", "/dev/full", "--models", models, "--progress", "none"])
    // `| head -1`: the reader takes the first chunk and goes away.
    const piped = start(["infer", "--model", "mlp", "--input", input, "--output", "-", "--models", models, "--progress", "none"])
    piped.child.stdout!.once("data", () => piped.child.stdout!.destroy())
    const [toFull, toPipe] = await Promise.all([settled(full.child, full.done), settled(piped.child, piped.done)])
    assert.strictEqual(toFull.code, 1, toFull.stderr)
    assert.deepStrictEqual(toFull.stderr.trim().split("\n"), ["effect-onnx: cannot write /dev/full: ENOSPC: no space left on device, write"])
    assert.strictEqual(toPipe.code, 1, toPipe.stderr)
    assert.deepStrictEqual(toPipe.stderr.trim().split("\n"), ["effect-onnx: cannot write standard output: the reader closed the pipe (EPIPE)"])
  }, 60_000)

  it("on SIGINT stops cleanly: exit 130, the records that finished written in input order", async () => {
    const input = Path.join(dir, "big.ndjson")
    const record = mlpRecord(3)
    Fs.writeFileSync(input, Array.from({ length: 20_000 }, () => record).join("\n") + "\n")
    const output = Path.join(dir, "big.out.ndjson")
    const { child, done } = start(["infer", "--model", "mlp", "--input", input, "--output", output, "--models", models, "--progress", "bar"])
    let stderr = ""
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
    // Interrupt once results are being written and the bar has been drawn (the engine can write
    // 20 kB of results before the bar's first tick).
    const bar = /\r\x1b\[2K\[[#-]+\] \d+\/20000/
    const deadline = Date.now() + 40_000
    while (Date.now() < deadline && (!Fs.existsSync(output) || Fs.statSync(output).size < 20_000 || !bar.test(stderr))) await new Promise((r) => setTimeout(r, 50))
    child.kill("SIGINT")
    const result = await done
    assert.strictEqual(result.code, 130, result.stderr)
    assert.match(result.stderr, /interrupted: \d+ records/)
    assert.match(result.stderr, /\r\x1b\[2K\[[#-]+\] \d+\/20000 \d+% [\d.]+\/s ETA/)
    const lines = outputLines(output).map((o) => o.line)
    assert.isAbove(lines.length, 0)
    assert.isBelow(lines.length, 20_000)
    for (let i = 1; i < lines.length; i++) assert.isAbove(lines[i]!, lines[i - 1]!)
    const written = Number(/interrupted: (\d+) records/.exec(result.stderr)![1])
    assert.strictEqual(lines.length, written)

    // --resume: the records already written are kept and not run again; the others are appended.
    // A last line cut mid-write (as a kill -9 would leave it) is dropped and its record runs again.
    const cut = `{"line":${lines.at(-1)! + 1},"outputs":{"logits":{"datatype":"FP3`
    Fs.appendFileSync(output, cut)
    const resumed = await run(["infer", "--model", "mlp", "--input", input, "--output", output, "--models", models, "--resume", "--progress", "plain"])
    assert.strictEqual(resumed.code, 0, resumed.stderr)
    assert.include(resumed.stderr, `resuming: ${lines.length} records already in`)
    const all = outputLines(output).map((o) => o.line)
    assert.strictEqual(all.length, 20_000)
    assert.deepStrictEqual(all.slice(0, lines.length), lines)
    assert.strictEqual(new Set(all).size, 20_000)
  }, 90_000)

  it("--resume with an output that does not exist yet starts from scratch", async () => {
    const input = Path.join(dir, "fresh.ndjson")
    Fs.writeFileSync(input, [mlpRecord(1), mlpRecord(2)].join("\n") + "\n")
    const output = Path.join(dir, "fresh.out.ndjson")
    Fs.rmSync(output, { force: true })
    const result = await run(["infer", "--model", "mlp", "--input", input, "--output", output, "--models", models, "--resume", "--progress", "none"])
    assert.strictEqual(result.code, 0, result.stderr)
    assert.deepStrictEqual(outputLines(output).map((o) => o.line), [1, 2])
  }, 30_000)

  it("infer runs to the end when the reader of its progress (standard error) goes away", async () => {
    const input = Path.join(dir, "stderr-gone.ndjson")
    Fs.writeFileSync(input, Array.from({ length: 300 }, (_, i) => mlpRecord(i + 1)).join("\n") + "\n")
    const output = Path.join(dir, "stderr-gone.out.ndjson")
    const { child, done } = start(["infer", "--model", "mlp", "--input", input, "--output", output, "--models", models, "--progress", "plain", "--log-level", "info"])
    // Its reader closes at once: every progress or log line after that fails (EPIPE).
    child.stderr!.destroy()
    const result = await done
    assert.strictEqual(result.code, 0)
    assert.deepStrictEqual(outputLines(output).map((o) => o.line), Array.from({ length: 300 }, (_, i) => i + 1))
  }, 60_000)

  it("the summary counts every record that did not succeed as failed: timed out included", async () => {
    const input = Path.join(dir, "timeouts.ndjson")
    const timedOut = JSON.stringify({ inputs: [{ name: "input", datatype: "FP32", shape: [1, 784], data: new Array(784).fill(0.5) }], parameters: { timeout: 1 } })
    Fs.writeFileSync(input, [mlpRecord(1), timedOut, mlpRecord(2)].join("\n") + "\n")
    const output = Path.join(dir, "timeouts.out.ndjson")
    const result = await run(["infer", "--model", "mlp", "--input", input, "--output", output, "--models", models, "--progress", "plain"])
    assert.strictEqual(result.code, 0, result.stderr)
    const lines = outputLines(output)
    assert.strictEqual(lines.length, 3)
    assert.isDefined(lines[1]!.error, JSON.stringify(lines[1]))
    assert.match(result.stderr, /done: 3 records .*1 failed/)
  }, 60_000)

  it("perf fails when the reader of its results (standard output) goes away: its product is lost", async () => {
    const { child, done } = start(["perf", "--model", "mlp", "--models", models, "--concurrency", "1", "--duration", "0.3", "--warmup", "0", "--json"])
    child.stdout!.destroy()
    const result = await done
    assert.notStrictEqual(result.code, 0, result.stderr)
  }, 60_000)

  it("--resume says when the output answers lines the input does not have", async () => {
    const input = Path.join(dir, "short.ndjson")
    Fs.writeFileSync(input, [mlpRecord(1), mlpRecord(2)].join("\n") + "\n")
    const output = Path.join(dir, "short.out.ndjson")
    Fs.writeFileSync(output, [1, 2, 3, 4].map((line) => JSON.stringify({ line, outputs: {} })).join("\n") + "\n")
    const result = await run(["infer", "--model", "mlp", "--input", input, "--output", output, "--models", models, "--resume", "--progress", "none"])
    assert.strictEqual(result.code, 0, result.stderr)
    assert.include(result.stderr, `2 records in ${output} answer lines past the input's last (2)`)
    assert.deepStrictEqual(outputLines(output).map((o) => o.line), [1, 2, 3, 4])
    // Blank lines are numbered: resuming an input's own output says nothing.
    const spaced = Path.join(dir, "spaced.ndjson")
    Fs.writeFileSync(spaced, [mlpRecord(1), "", mlpRecord(2), "", "", mlpRecord(3)].join("\n") + "\n")
    const spacedOut = Path.join(dir, "spaced.out.ndjson")
    Fs.rmSync(spacedOut, { force: true })
    assert.strictEqual((await run(["infer", "--model", "mlp", "--input", spaced, "--output", spacedOut, "--models", models, "--progress", "none"])).code, 0)
    const again = await run(["infer", "--model", "mlp", "--input", spaced, "--output", spacedOut, "--models", models, "--resume", "--progress", "none"])
    assert.strictEqual(again.code, 0, again.stderr)
    assert.notInclude(again.stderr, "past the input's last")
    assert.deepStrictEqual(outputLines(spacedOut).map((o) => o.line), [1, 3, 6])
  }, 30_000)

  it("--resume refuses an output that is not this command's, and standard output", async () => {
    const input = Path.join(dir, "r.ndjson")
    Fs.writeFileSync(input, mlpRecord(1))
    const other = Path.join(dir, "other.txt")
    Fs.writeFileSync(other, "precious notes\n")
    const [notOurs, stdout] = await Promise.all([
      run(["infer", "--model", "mlp", "--input", input, "--output", other, "--models", models, "--resume"]),
      run(["infer", "--model", "mlp", "--input", input, "--output", "-", "--models", models, "--resume"])
    ])
    assert.strictEqual(notOurs.code, 1)
    assert.include(notOurs.stderr, "cannot resume: line 1 of the output is not an output record of this command")
    assert.strictEqual(Fs.readFileSync(other, "utf8"), "precious notes\n")
    assert.strictEqual(stdout.code, 2)
    assert.include(stdout.stderr, "--resume needs an --output file")
  }, 60_000)

  it("perf load-tests a model in process and prints a table per concurrency; --grpc without --url is a usage error", async () => {
    const [table, grpc] = await Promise.all([
      run(["perf", "--model", "mlp", "--models", models, "--concurrency", "1,2", "--duration", "0.5", "--warmup", "0"]),
      run(["perf", "--model", "mlp", "--grpc"])
    ])
    assert.strictEqual(table.code, 0, table.stderr)
    const lines = table.stdout.trim().split("\n")
    assert.match(lines[0]!, /^model mlp on the engine in this process, 0\.5 s per level$/)
    assert.match(lines[1]!, /^concurrency\s+requests\s+errors\s+infer\/s\s+avg ms\s+p50 ms\s+p90 ms\s+p95 ms\s+p99 ms\s+max ms$/)
    assert.match(lines[2]!, /^\s+1\s+[1-9]\d*\s+0\s+/)
    assert.match(lines[3]!, /^\s+2\s+[1-9]\d*\s+0\s+/)
    assert.strictEqual(grpc.code, 2)
    assert.include(grpc.stderr, "--grpc needs --url HOST:PORT")
  }, 60_000)

  it("perf refuses an --input it cannot read and a gRPC --url that is not HOST:PORT, before loading anything (exit 2, one line)", async () => {
    const [missing, directory, url] = await Promise.all([
      run(["perf", "--model", "mlp", "--input", "/no/such/input.ndjson"]),
      run(["perf", "--model", "mlp", "--input", dir]),
      run(["perf", "--model", "mlp", "--grpc", "--url", "http://127.0.0.1:8001"])
    ])
    assert.deepStrictEqual([missing.code, missing.stderr.trim()], [2, `effect-onnx: perf: --input "/no/such/input.ndjson": no such file`])
    assert.deepStrictEqual([directory.code, directory.stderr.trim()], [2, `effect-onnx: perf: --input ${JSON.stringify(dir)}: is a directory`])
    assert.strictEqual(url.code, 2)
    assert.match(url.stderr.trim(), /^effect-onnx: perf: --url "http:\/\/127\.0\.0\.1:8001" is a URL: expected HOST:PORT/)
  }, 30_000)

  it("perf reads --input as infer does: a line that is not UTF-8 is named, its bytes not echoed (exit 1, one line)", async () => {
    const input = Path.join(dir, "garbage.ndjson")
    Fs.writeFileSync(input, Buffer.concat([Buffer.from(mlpRecord(1) + "\n"), Buffer.from([0xff, 0xfe, 0x7b, 0x0a])]))
    const result = await run(["perf", "--model", "mlp", "--models", models, "--input", input, "--concurrency", "1", "--duration", "0.2", "--warmup", "0"])
    assert.strictEqual(result.code, 1, result.stderr)
    assert.deepStrictEqual(result.stderr.trim().split("\n"), [`effect-onnx: perf: ${input} line 2: not valid UTF-8, as JSON text must be`])
  }, 60_000)

  it("perf stopped by Ctrl-C (SIGINT) prints the levels it finished, saying it stopped, and exits 130", async () => {
    const { child, done } = start(["perf", "--model", "mlp", "--models", models, "--concurrency", "1,2,4", "--duration", "1", "--warmup", "0", "--json"])
    let stderr = ""
    child.stderr!.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
    const deadline = Date.now() + 40_000
    while (Date.now() < deadline && !stderr.includes("concurrency 2: 0 s warm-up")) await new Promise((r) => setTimeout(r, 20))
    child.kill("SIGINT")
    const result = await done
    assert.strictEqual(result.code, 130, result.stderr)
    const report = JSON.parse(result.stdout) as { complete: boolean; levels: ReadonlyArray<{ concurrency: number; requests: number }> }
    assert.isFalse(report.complete)
    assert.deepStrictEqual(report.levels.map((l) => l.concurrency), [1], "the level that finished, not the one cut short")
    assert.isAbove(report.levels[0]!.requests, 0)
  }, 60_000)

  it("perf against a server that goes away stops: the levels it finished, complete false, exit 1, the reason on stderr", async () => {
    // A stand-in OIP server: the MLP's metadata, and 200 to every inference, until it closes 1.5 s after the first one.
    let firstInferMs: number | undefined
    const server = Http.createServer((request, response) => {
      request.resume()
      request.on("end", () => {
        if (request.method === "GET") {
          response.end(JSON.stringify({ name: "mlp", versions: ["1"], inputs: [{ name: "input", datatype: "FP32", shape: [-1, 784] }], outputs: [{ name: "logits", datatype: "FP32", shape: [-1, 10] }] }))
          return
        }
        firstInferMs ??= Date.now()
        response.end(JSON.stringify({ model_name: "mlp", outputs: [] }))
      })
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const port = (server.address() as AddressInfo).port
    const closer = setInterval(() => {
      if (firstInferMs === undefined || Date.now() - firstInferMs < 1500) return
      clearInterval(closer)
      server.close()
      server.closeAllConnections()
    }, 20)
    try {
      const result = await run(["perf", "--model", "mlp", "--url", `http://127.0.0.1:${port}`, "--concurrency", "1,2,4", "--duration", "1", "--warmup", "0", "--json"])
      assert.strictEqual(result.code, 1, result.stderr)
      assert.match(result.stderr, /perf: http:\/\/127\.0\.0\.1:\d+ stopped answering \(ECONNREFUSED\): the server is gone/)
      const report = JSON.parse(result.stdout) as { complete: boolean; levels: ReadonlyArray<{ concurrency: number; requests: number }> }
      assert.isFalse(report.complete)
      assert.deepStrictEqual(report.levels.map((l) => l.concurrency), [1], "the level that finished, not the one the server left")
    } finally {
      clearInterval(closer)
      server.close()
    }
  }, 60_000)

  it("perf, as infer, answers an invalid environment variable with one line naming the variable and exit code 2", async () => {
    const input = Path.join(dir, "env.ndjson")
    Fs.writeFileSync(input, mlpRecord(1))
    const infer = (env: Record<string, string>) =>
      run(["infer", "--model", "mlp", "--input", input, "--output", Path.join(dir, "env.out.ndjson"), "--models", models], undefined, env)
    const cases: ReadonlyArray<readonly [Promise<Run>, string]> = [
      [
        run(["perf", "--model", "mlp", "--models", models, "--duration", "0.2", "--warmup", "0", "--concurrency", "1"], undefined, { MAX_QUEUED_REQUESTS: "abc" }),
        "MAX_QUEUED_REQUESTS: Expected a string representing a finite number"
      ],
      [infer({ MAX_QUEUED_REQUESTS: "abc" }), "MAX_QUEUED_REQUESTS: Expected a string representing a finite number"],
      [infer({ MAX_QUEUED_REQUESTS: "-1" }), "MAX_QUEUED_REQUESTS: Expected a value greater than or equal to 1"],
      [infer({ AGING_MS: "0" }), "AGING_MS: Expected a value greater than 0"],
      [infer({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:1", OTEL_METRIC_EXPORT_INTERVAL: "0" }), "OTEL_METRIC_EXPORT_INTERVAL: Expected a value greater than 0"]
    ]
    for (const [pending, message] of cases) {
      const result = await pending
      assert.strictEqual(result.code, 2, result.stderr)
      assert.deepStrictEqual(result.stderr.trim().split("\n"), [`effect-onnx: invalid configuration: ${message}`])
      assert.strictEqual(result.stdout, "")
    }
  }, 30_000)

  it("serve --exit-on-error under explicit model control exits 1 for a model that failed to load, not for one nobody asked to load", async () => {
    const repository = Path.join(dir, "explicit")
    for (const name of ["mlp", "spare", "broken"]) Fs.mkdirSync(Path.join(repository, name), { recursive: true })
    Fs.copyFileSync(Path.join(root, "models/mlp/model.onnx"), Path.join(repository, "mlp/model.onnx"))
    Fs.copyFileSync(Path.join(root, "models/mlp/model.onnx"), Path.join(repository, "spare/model.onnx"))
    Fs.writeFileSync(Path.join(repository, "broken/model.onnx"), "not an onnx model")
    const args = ["serve", "--port", "0", "--grpc-port", "off", "--models", repository, "--model-control-mode", "explicit", "--exit-on-error", "true"]

    const { child, done } = start([...args, "--load-model", "mlp"])
    let output = ""
    await new Promise<void>((resolve, reject) => {
      const onData = (c: Buffer) => {
        output += c.toString("utf8")
        if (/listening on/.test(output)) resolve()
      }
      child.stdout!.on("data", onData)
      child.stderr!.on("data", onData)
      void done.then((r) => reject(new Error(`exited with ${r.code}: ${output}`)))
    })
    child.kill("SIGTERM")
    assert.strictEqual((await done).code, 0, output)
    assert.notMatch(output, /UNAVAILABLE|failed to load/, output)

    const failing = await run([...args, "--load-model", "mlp", "--load-model", "broken"])
    assert.strictEqual(failing.code, 1, failing.stderr)
    assert.match(failing.stdout + failing.stderr, /model broken@1 is UNAVAILABLE/)
    assert.match(failing.stdout + failing.stderr, /1 of 2 model versions failed to load; exiting \(--exit-on-error\)/)

    // A name the repository does not have is no model loaded either (before: a warning, and it served).
    const misspelt = await run([...args, "--load-model", "mlp", "--load-model", "nosuch"])
    assert.strictEqual(misspelt.code, 1, misspelt.stdout + misspelt.stderr)
    assert.match(misspelt.stdout + misspelt.stderr, /--load-model nosuch: not in the model repository .*; exiting \(--exit-on-error\)/)
  }, 60_000)

  it("serve runs the OIP server until SIGTERM (and perf --url measures it, over HTTP and gRPC)", async () => {
    const { child, done } = start(["serve", "--port", "0", "--models", models, "--grace-period-seconds", "1"])
    let output = ""
    const [port, grpcPort] = await new Promise<[number, number]>((resolve, reject) => {
      const onData = (c: Buffer) => {
        output += c.toString("utf8")
        const match = /listening on http:\/\/[^:\s]+:(\d+)/.exec(output)
        const grpc = /gRPC listening on [^:\s]+:(\d+)/.exec(output)
        if (match !== null && grpc !== null) resolve([Number(match[1]), Number(grpc[1])])
      }
      child.stdout!.on("data", onData)
      child.stderr!.on("data", onData)
      void done.then((r) => reject(new Error(`exited with ${r.code}: ${output}`)))
    })
    const ready = await fetch(`http://127.0.0.1:${port}/v2/models/mlp/ready`)
    assert.strictEqual(ready.status, 200)

    // perf against it: binary tensors, JSON out.
    const perf = await run(["perf", "--model", "mlp", "--url", `http://127.0.0.1:${port}`, "--binary", "--concurrency", "1,4", "--duration", "0.5", "--warmup", "0.1", "--json"])
    assert.strictEqual(perf.code, 0, perf.stderr)
    const report = JSON.parse(perf.stdout) as { target: string; binary: boolean; levels: Array<{ concurrency: number; requests: number; errors: number; throughput: number; latencyMs: { p50: number; p99: number } }> }
    assert.strictEqual(report.target, `http://127.0.0.1:${port}`)
    assert.isTrue(report.binary)
    assert.deepStrictEqual(report.levels.map((l) => l.concurrency), [1, 4])
    for (const level of report.levels) {
      assert.isAbove(level.requests, 0)
      assert.strictEqual(level.errors, 0)
      assert.isAbove(level.throughput, 0)
      assert.isAtMost(level.latencyMs.p50, level.latencyMs.p99)
    }

    // infer --url runs the records at it: the same results as in this process, a line that does
    // not fit the model as the server describes it reported, the output in input order
    const records = [mlpRecord(1), mlpRecord(2), JSON.stringify({ input: { datatype: "FP32", shape: [1, 3], data: [1, 2, 3] } }), mlpRecord(3)].join("\n") + "\n"
    const remote = await run(["infer", "--model", "mlp", "--input", "-", "--output", "-", "--url", `http://127.0.0.1:${port}`, "--progress", "none"], records)
    assert.strictEqual(remote.code, 0, remote.stderr)
    assert.match(remote.stderr, /line 3/)
    const local = await run(["infer", "--model", "mlp", "--input", "-", "--output", "-", "--models", models, "--progress", "none"], records)
    assert.strictEqual(local.code, 0, local.stderr)
    const lines = (text: string) => text.trim().split("\n").map((l) => JSON.parse(l) as { line: number; outputs: { logits: { shape: Array<number>; data: Array<number> } } })
    const [got, want] = [lines(remote.stdout), lines(local.stdout)]
    assert.deepStrictEqual(got.map((l) => l.line), [1, 2, 4])
    assert.deepStrictEqual(want.map((l) => l.line), [1, 2, 4])
    got.forEach((l, i) => l.outputs.logits.data.forEach((v, j) => assert.closeTo(v, want[i]!.outputs.logits.data[j]!, 1e-5)))
    const both = await run(["infer", "--model", "mlp", "--input", "-", "--output", "-", "--url", `http://127.0.0.1:${port}`, "--models", models], records)
    assert.strictEqual(both.code, 2)
    assert.include(both.stderr, "leave --models out")
    const unknown = await run(["infer", "--model", "nope", "--input", "-", "--output", "-", "--url", `http://127.0.0.1:${port}`], records)
    assert.strictEqual(unknown.code, 1)
    assert.include(unknown.stderr, `model "nope" not found`)

    // and over gRPC: ModelMetadata, then ModelInfer with raw contents
    const overGrpc = await run(["perf", "--model", "mlp", "--url", `127.0.0.1:${grpcPort}`, "--grpc", "--concurrency", "2", "--duration", "0.5", "--warmup", "0.1", "--json"])
    assert.strictEqual(overGrpc.code, 0, overGrpc.stderr)
    const grpcReport = JSON.parse(overGrpc.stdout) as { levels: Array<{ requests: number; errors: number }> }
    assert.isAbove(grpcReport.levels[0]!.requests, 0)
    assert.strictEqual(grpcReport.levels[0]!.errors, 0)
    child.kill("SIGTERM")
    assert.strictEqual((await done).code, 0)
  }, 60_000)
})
