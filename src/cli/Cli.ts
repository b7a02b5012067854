/**
 * The command line (`effect-onnx`, built with `effect/cli`):
 *
 * - `infer --model NAME --input FILE.ndjson --output FILE.ndjson [--concurrency N] [--priority P] [--resume]`
 *   runs every record of an NDJSON file through the engine (`Infer`, `Records`), with a progress
 *   bar on a terminal and plain progress lines otherwise. `-` is standard input or output.
 *   Ctrl+C stops it cleanly: the records that finished are written, in input order, and it exits
 *   130; `--resume` then runs only the records not in the output yet.
 * - `serve [--host H] [--port P] [--models DIR] …` runs the Open Inference Protocol server
 *   (`src/bin/server.ts`, the same entry point as `npm start`).
 *
 * `--help` on the root or on a command documents it. Exit codes: 0 done, 1 failed (a fatal
 * malformed line, an unknown model, an unreadable repository or file, an output that cannot be
 * written, standard output's reader gone included: EPIPE is one line, as in GNU `cat`), 2 invalid
 * command line, 130 interrupted.
 *
 * @module Cli
 */
import { Duration, Effect, Exit, Option } from "effect"
import { Command, Flag } from "effect/cli"
import * as Fs from "node:fs"
import * as ServerConfig from "../http/ServerConfig.ts"
import * as Priority from "../Priority.ts"
import { fail, failConfig, name } from "./CliCommon.ts"
import * as Progress from "./Progress.ts"
import * as Perf from "./Perf.ts"
import * as Serve from "./Serve.ts"

export { ExitCode, markStoppedBySignal, name, presenter, teardown } from "./CliCommon.ts"

const stderr: Progress.Output = {
  write: (text) => void process.stderr.write(text),
  get isTTY() {
    return process.stderr.isTTY === true
  },
  get columns() {
    return process.stderr.columns
  }
}

const priorities = Priority.levels.map((level) => [level.toLowerCase(), level] as const)

export const infer = Command.make("infer", {
  model: Flag.String("model").pipe(Flag.withMetavar("NAME"), Flag.withDescription("model to run, by its name in the repository")),
  modelVersion: Flag.String("model-version").pipe(
    Flag.withMetavar("V"),
    Flag.optional,
    Flag.withDescription("model version (default: the highest)")
  ),
  input: Flag.String("input").pipe(
    Flag.withMetavar("FILE.ndjson"),
    Flag.withDescription("records to run, - for standard input: one JSON object per line, a tensor map {\"input\": {\"datatype\": \"FP32\", \"shape\": [1, 784], \"data\": [...]}} or an OIP request body {\"id\", \"parameters\", \"inputs\": [...]}")
  ),
  output: Flag.String("output").pipe(
    Flag.withMetavar("FILE.ndjson"),
    Flag.withDescription("results, - for standard output, one line per record in input order: {\"line\", \"id\"?, \"outputs\": {...}} or {\"line\", \"id\"?, \"error\": {\"reason\", \"message\"}} (created or truncated)")
  ),
  resume: Flag.Boolean("resume").pipe(
    Flag.withDefault(false),
    Flag.withDescription("keep the records an interrupted run already wrote to --output (a file) and run only the others, appending")
  ),
  concurrency: Flag.Int("concurrency").pipe(
    Flag.withMetavar("N"),
    Flag.optional,
    Flag.withDescription("records in the engine at once (default: twice MAX_CONCURRENT_REQUESTS; with --url, 16)")
  ),
  priority: Flag.ChoiceWithValue("priority", priorities).pipe(
    Flag.withMetavar("P"),
    Flag.withDefault(Priority.Normal),
    Flag.withDescription("priority of records that do not set one (default normal)")
  ),
  timeoutMs: Flag.Int("timeout-ms").pipe(
    Flag.withMetavar("MS"),
    Flag.optional,
    Flag.withDescription("deadline of each record that does not set one, queue wait plus run (default 30000)")
  ),
  onMalformed: Flag.Literals("on-malformed", ["skip", "fail"]).pipe(
    Flag.withMetavar("ACTION"),
    Flag.withDefault("skip" as const),
    Flag.withDescription("a line that is not a valid record is reported with its line number, then skipped or fatal (default skip)")
  ),
  models: Flag.Directory("models", { mustExist: true }).pipe(
    Flag.withMetavar("DIR"),
    Flag.optional,
    Flag.withDescription("model repository (default: the bundled models/: mlp, silero_vad)")
  ),
  url: Flag.String("url").pipe(
    Flag.withMetavar("URL"),
    Flag.optional,
    Flag.withDescription("run the records at a running Open Inference Protocol server (this one, Triton, KServe), e.g. http://127.0.0.1:8000, instead of in this process (--concurrency default 16)")
  ),
  progress: Flag.Literals("progress", Progress.modes).pipe(
    Flag.withMetavar("MODE"),
    Flag.withDefault("auto" as const),
    Flag.withDescription("progress on stderr; auto: a bar on a terminal, plain lines every 2 s otherwise (default auto)")
  )
}, (given) => {
  // The standard streams by their device names too: opening /dev/stdout fails (ENXIO) when it is a socket, as under a process manager.
  const flags = {
    ...given,
    input: given.input === "/dev/stdin" || given.input === "/dev/fd/0" ? "-" : given.input,
    output: given.output === "/dev/stdout" || given.output === "/dev/fd/1" ? "-" : given.output
  }
  const concurrency = Option.getOrUndefined(flags.concurrency)
  if (concurrency !== undefined && concurrency < 1) return fail("--concurrency must be at least 1", 2)
  const unreadable = flags.input === "-" ? undefined : inputProblem(flags.input)
  if (unreadable !== undefined) return fail(`--input ${JSON.stringify(flags.input)}: ${unreadable} (- reads standard input)`, 2)
  if (flags.input !== "-" && flags.output !== "-" && isSameFile(flags.input, flags.output)) {
    return fail("--output must not be the --input file", 2)
  }
  if (flags.resume && flags.output === "-") return fail("--resume needs an --output file to resume, not standard output", 2)
  const timeoutMs = Option.getOrUndefined(flags.timeoutMs)
  if (timeoutMs !== undefined && timeoutMs <= 0) return fail("--timeout-ms must be positive", 2)
  const url = Option.getOrUndefined(flags.url)
  if (url !== undefined && Option.isSome(flags.models)) return fail("--url runs the records at a server, which has its own models: leave --models out", 2)
  const badUrl = url === undefined ? undefined : Perf.checkHttpUrl(url, false)
  if (badUrl !== undefined) return fail(`--url ${badUrl}`, 2)
  // The engine and its pipeline load only when a batch runs: `--help` stays quick.
  return Effect.promise(() => import("./Infer.ts")).pipe(
    Effect.flatMap((Infer) => {
      const options = {
        model: flags.model,
        version: Option.getOrUndefined(flags.modelVersion),
        input: flags.input,
        output: flags.output,
        resume: flags.resume,
        concurrency,
        priority: flags.priority,
        timeout: timeoutMs === undefined ? undefined : Duration.millis(timeoutMs),
        onMalformed: flags.onMalformed,
        progress: { mode: flags.progress },
        messages: stderr
      }
      return url === undefined
        ? Infer.runWithEngine(options, { repository: Option.getOrUndefined(flags.models), serviceName: `${name}-cli` })
        : Infer.runRemote(options, url)
    }),
    Effect.asVoid,
    Effect.catchTags({
      MalformedLine: (e) => fail(e.message),
      OutputError: (e) => fail(e.message),
      InputError: (e) => fail(e.message),
      InferenceError: (e) => fail(e.message),
      RepositoryError: (e) => fail(e.message),
      ConfigError: failConfig,
      PlatformError: (e) => fail(e.message)
    })
  )
}).pipe(
  Command.withDescription(
    "Runs every record of an NDJSON file through the engine and writes the results in input order. " +
      "Ctrl+C stops cleanly: the records that finished are written, and the exit code is 130." +
      "\n\nENVIRONMENT\n" + ServerConfig.environmentText()
  ),
  Command.withShortDescription("Runs every record of an NDJSON file (or standard input) through the engine, results in input order"),
  Command.withExamples([{
    command: `${name} infer --model mlp --input in.ndjson --output out.ndjson --concurrency 8 --priority high`,
    description: "run the bundled MLP over in.ndjson"
  }, {
    command: `cat in.ndjson | ${name} infer --model mlp --input - --output - | jq -c .outputs`,
    description: "in a pipe"
  }, {
    command: `${name} infer --model mlp --input in.ndjson --output out.ndjson --resume`,
    description: "after an interruption: run only the records not in out.ndjson yet"
  }, {
    command: `${name} infer --model mlp --input in.ndjson --output out.ndjson --url http://127.0.0.1:8000`,
    description: "at a running server (this one, Triton, KServe) instead of in this process"
  }])
)

/** Why `path` cannot be read as an input (a file, a pipe, a device such as `/dev/stdin`), or undefined. */
const inputProblem = (path: string): string | undefined => {
  try {
    if (Fs.statSync(path).isDirectory()) return "is a directory"
    Fs.accessSync(path, Fs.constants.R_OK)
    return undefined
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code
    return code === "ENOENT" || code === "ENOTDIR" ? "no such file" : `cannot be read (${code ?? String(e)})`
  }
}

/**
 * True when `output` names the regular file `input` names, by any name: the same path, a
 * symbolic link or a hard link (same device and inode). An output that does not exist yet is not.
 */
export const isSameFile = (input: string, output: string): boolean => {
  try {
    const a = Fs.statSync(input)
    const b = Fs.statSync(output)
    return a.isFile() && a.dev === b.dev && a.ino === b.ino
  } catch {
    return false
  }
}

export const serve = Serve.command

export const perf = Command.make("perf", {
  model: Flag.String("model").pipe(Flag.withMetavar("NAME"), Flag.withDescription("model to load-test")),
  modelVersion: Flag.String("model-version").pipe(Flag.withMetavar("V"), Flag.optional, Flag.withDescription("model version (default: the highest)")),
  concurrency: Flag.String("concurrency").pipe(
    Flag.withMetavar("N,N,…"),
    Flag.withDefault("1,16,64"),
    Flag.withDescription("concurrency levels: that many requests always outstanding, each level in turn (default 1,16,64)")
  ),
  url: Flag.String("url").pipe(
    Flag.withMetavar("URL"),
    Flag.optional,
    Flag.withDescription("a running Open Inference Protocol server, e.g. http://127.0.0.1:8000 (default: the engine in this process)")
  ),
  duration: Flag.Finite("duration").pipe(Flag.withMetavar("S"), Flag.withDefault(5), Flag.withDescription("measured seconds per level (default 5)")),
  warmup: Flag.Finite("warmup").pipe(Flag.withMetavar("S"), Flag.withDefault(1), Flag.withDescription("unmeasured seconds before each level (default 1)")),
  binary: Flag.Boolean("binary").pipe(Flag.withDefault(false), Flag.withDescription("with --url: send tensors as Triton's binary tensor data")),
  grpc: Flag.Boolean("grpc").pipe(Flag.withDefault(false), Flag.withDescription("with --url HOST:PORT: send over gRPC (Triton's GRPCInferenceService, port 8001 by default) instead of HTTP")),
  input: Flag.String("input").pipe(
    Flag.withMetavar("FILE.ndjson"),
    Flag.optional,
    Flag.withDescription("records to send in turn, in the format of infer (default: inputs made from the model's metadata and declared input signatures)")
  ),
  json: Flag.Boolean("json").pipe(Flag.withDefault(false), Flag.withDescription("print the results as one JSON document on stdout instead of a table")),
  models: Flag.Directory("models", { mustExist: true }).pipe(
    Flag.withMetavar("DIR"),
    Flag.optional,
    Flag.withDescription("in process: the model repository (default: the bundled models/)")
  ),
  sequenceLength: Flag.Int("sequence-length").pipe(
    Flag.withMetavar("N"),
    Flag.withDefault(Perf.defaultSequenceLength),
    Flag.withDescription(`a stateful model (sequenceBatching): requests per sequence each client sends, the first a start, the last an end (default ${Perf.defaultSequenceLength}, as perf_analyzer)`)
  )
}, (flags) => {
  const levels = Perf.parseLevels(flags.concurrency)
  if (typeof levels === "string") return fail(`perf: --concurrency: ${levels}`, 2)
  if (!(flags.duration > 0)) return fail("perf: --duration must be positive", 2)
  if (!(flags.warmup >= 0)) return fail("perf: --warmup must not be negative", 2)
  if (!(flags.sequenceLength >= 1)) return fail("perf: --sequence-length must be at least 1", 2)
  if (flags.grpc && Option.isNone(flags.url)) return fail("perf: --grpc needs --url HOST:PORT (the server's gRPC address)", 2)
  if (flags.grpc && flags.binary) return fail("perf: --grpc sends raw tensors already; --binary is for HTTP", 2)
  if (flags.binary && Option.isNone(flags.url)) return fail("perf: --binary needs --url (in process, tensors are not encoded)", 2)
  const target = Option.getOrUndefined(flags.url)
  const badUrl = target === undefined ? undefined : flags.grpc ? Perf.checkGrpcAddress(target) : Perf.checkHttpUrl(target)
  if (badUrl !== undefined) return fail(`perf: --url ${badUrl}`, 2)
  const input = Option.getOrUndefined(flags.input)
  const unreadable = input === undefined ? undefined : inputProblem(input)
  if (unreadable !== undefined) return fail(`perf: --input ${JSON.stringify(input)}: ${unreadable}`, 2)
  const finished: Array<Perf.LevelResult> = []
  /** The levels finished, when there are any: all of them, or those before a stop (Ctrl-C, a failure). */
  const report = (complete: boolean) =>
    Effect.sync(() => {
      if (finished.length === 0) return
      const stopped = complete ? "" : `, stopped after ${finished.length} of ${levels.length} levels`
      if (flags.json) {
        process.stdout.write(
          `${JSON.stringify({ model: flags.model, target: target ?? "in-process", durationSeconds: flags.duration, binary: flags.binary, complete, levels: finished })}\n`
        )
      } else {
        process.stdout.write(`model ${flags.model} on ${target ?? "the engine in this process"}, ${flags.duration} s per level${stopped}\n${Perf.formatTable(finished)}\n`)
      }
    })
  return Perf.run({
    model: flags.model,
    version: Option.getOrUndefined(flags.modelVersion),
    levels,
    durationSeconds: flags.duration,
    warmupSeconds: flags.warmup,
    url: target,
    binary: flags.binary,
    grpc: flags.grpc,
    input: Option.getOrUndefined(flags.input),
    repository: Option.getOrUndefined(flags.models),
    sequenceLength: flags.sequenceLength,
    messages: (line) => void process.stderr.write(`${line}\n`),
    onLevel: (result) => void finished.push(result)
  }).pipe(
    Effect.onExit((exit) => report(Exit.isSuccess(exit))),
    Effect.catchTags({
      PerfError: (e) => fail(`perf: ${e.message}`),
      RepositoryError: (e) => fail(`perf: ${e.message}`),
      ConfigError: failConfig
    })
  )
}).pipe(
  Command.withDescription(
    "Load-tests a model, like Triton's perf_analyzer: for each concurrency level, that many requests always outstanding for --duration seconds; " +
      "prints the throughput and latency percentiles of each level (--json: machine-readable). In this process by default, or against a server with --url." +
      "\n\nENVIRONMENT (in process)\n" + ServerConfig.environmentText()
  ),
  Command.withShortDescription("Load-tests a model: throughput and latency percentiles per concurrency level, like perf_analyzer"),
  Command.withExamples([
    { command: `${name} perf --model mlp --concurrency 1,16,64`, description: "the bundled MLP, in process" },
    { command: `${name} perf --model mlp --url http://127.0.0.1:8000 --binary --json`, description: "a running server, binary tensors, JSON out" }
  ])
)

export const command = Command.make(name).pipe(
  Command.withDescription("Asynchronous ONNX inference on Effect and onnxruntime-node: batch inference over NDJSON files, an Open Inference Protocol server, and a load generator."),
  Command.withSubcommands([infer, serve, perf])
)
