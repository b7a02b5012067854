/**
 * The batch CLI's `infer`: streams the records of an NDJSON file (`Records`) through the engine
 * and writes one output line per record, in input order.
 *
 * - Lines are read as a stream; at most `concurrency` records are in the engine at once, so a
 *   file of any size runs in bounded memory. Output order is input order: a result that
 *   finishes early waits (at most `concurrency` of them) for the ones before it.
 * - A malformed line is reported with its line number; with `onMalformed: "skip"` it is left out
 *   of the output and the batch goes on, with `"fail"` the batch stops with MalformedLine.
 * - A record the engine cannot answer (time-out, run failure, …) gets an error record.
 * - Stopping early (interruption: Ctrl+C in the CLI, or a fatal malformed line) cancels the
 *   records in the engine and writes every record that had finished, still in input order, so
 *   the output holds exactly the records that finished; `resume` then runs only the others.
 * - `-` as input reads standard input, as output writes standard output (the progress and the
 *   reports go to `messages`, stderr in the CLI), so that the command can sit in a pipe.
 * - The records run on the engine in this process (`run`), or at a server over the Open
 *   Inference Protocol (`runRemote`: this project's, Triton, KServe).
 *
 * @module Infer
 */
import { Data, Duration, Effect, Exit, FileSystem, type PlatformError, Stream } from "effect"
import * as Fs from "node:fs"
import { AsyncInferenceEngine } from "../Engine.ts"
import * as InferenceError from "../InferenceError.ts"
import * as InferenceRequest from "../InferenceRequest.ts"
import * as InferenceResult from "../InferenceResult.ts"
import * as Live from "../Live.ts"
import type * as ModelMetadata from "../ModelMetadata.ts"
import { ModelPool } from "../ModelPool.ts"
import * as OipClient from "../OipClient.ts"
import type * as Priority from "../Priority.ts"
import * as Cli from "./CliCommon.ts"
import * as Progress from "./Progress.ts"
import * as Records from "./Records.ts"

export interface Options {
  readonly model: string
  /** Default: the model's highest version. */
  readonly version?: string | undefined
  /** The NDJSON input file; `-` reads standard input. */
  readonly input: string
  /** The NDJSON output file, created or truncated (appended to with `resume`); `-` writes standard output. */
  readonly output: string
  /**
   * Keeps what an interrupted run wrote to `output` and runs only the records it does not answer
   * yet (see `Records.readResume`). A missing output file starts from scratch.
   */
  readonly resume?: boolean | undefined
  /** Records in the engine (or at the server) at once. Default: twice the engine's `maxConcurrentRequests`; 16 with a server. */
  readonly concurrency?: number | undefined
  /** Priority of records that do not set one. */
  readonly priority: Priority.Priority
  /** Deadline of records that do not set one. Default: the engine's (30 s). */
  readonly timeout?: Duration.Duration | undefined
  readonly onMalformed: "skip" | "fail"
  /**
   * The longest line read, in bytes; a longer one is a malformed record (skipped or fatal as
   * `onMalformed` says), its bytes never held. Default `defaultMaxLineBytes` (64 MiB).
   */
  readonly maxLineBytes?: number | undefined
  readonly progress: Omit<Progress.Options, "output">
  /** Where reports and progress go (stderr in the CLI). */
  readonly messages: Progress.Output
}

/** A malformed line, with `onMalformed: "fail"`. */
export class MalformedLine extends Data.TaggedError("MalformedLine")<{ readonly line: number; readonly reason: string }> {
  override get message(): string {
    return `line ${this.line}: malformed record: ${this.reason}`
  }
}

/** The output file cannot be written. */
export class OutputError extends Data.TaggedError("OutputError")<{ readonly path: string; readonly reason: string }> {
  override get message(): string {
    return `cannot write ${this.path}: ${this.reason}`
  }
}

/** The input cannot be read. */
export class InputError extends Data.TaggedError("InputError")<{ readonly path: string; readonly reason: string }> {
  override get message(): string {
    return `cannot read ${this.path}: ${this.reason}`
  }
}

export interface Summary {
  /** Records read (non-blank input lines). */
  readonly total: number
  /** Output lines written. */
  readonly written: number
  /** Of `written`, error records. */
  readonly failed: number
  /** Malformed lines left out. */
  readonly skipped: number
}

/** The path that means standard input (as `--input`) or standard output (as `--output`). */
export const stdio = "-"

/**
 * The longest input line read, in bytes (64 MiB): a longer one is reported as malformed without
 * being held in memory, well below V8's longest string (~512 MiB), past which it could not be read at all.
 */
export const defaultMaxLineBytes = 64 * 1024 * 1024

/**
 * An input line, numbered from 1: its text; or, when it is longer than the bound, only its length
 * in bytes; or, when its bytes are not UTF-8 (JSON text must be), its length and why it has no text.
 */
export type Line =
  | { readonly line: number; readonly text: string; readonly tooLongBytes?: undefined; readonly notUtf8Bytes?: undefined }
  | { readonly line: number; readonly text?: undefined; readonly tooLongBytes: number; readonly notUtf8Bytes?: undefined }
  | { readonly line: number; readonly text?: undefined; readonly tooLongBytes?: undefined; readonly notUtf8Bytes: number }

/** Cuts bytes into lines at "\n" (a "\r" before it is dropped); skips, without keeping, the bytes of a line over `maxLineBytes`. */
class LineSplitter {
  private parts: Array<Uint8Array> = []
  private bytes = 0
  /** The length of the line being skipped, or -1. */
  private skipped = -1
  private line = 0
  private readonly decoder = new TextDecoder("utf-8", { fatal: true })
  private readonly maxLineBytes: number
  constructor(maxLineBytes: number) {
    this.maxLineBytes = maxLineBytes
  }

  push(chunk: Uint8Array): ReadonlyArray<Line> {
    const out: Array<Line> = []
    for (let from = 0; from <= chunk.length;) {
      const newline = chunk.indexOf(10, from)
      const end = newline === -1 ? chunk.length : newline
      if (this.skipped >= 0) this.skipped += end - from
      else if (this.bytes + end - from > this.maxLineBytes) {
        this.skipped = this.bytes + end - from
        this.parts = []
        this.bytes = 0
      } else if (end > from) {
        this.parts.push(chunk.subarray(from, end))
        this.bytes += end - from
      }
      if (newline === -1) break
      out.push(this.take())
      from = newline + 1
    }
    return out
  }

  /** The last line, when the input does not end with a newline. */
  end(): ReadonlyArray<Line> {
    return this.bytes > 0 || this.skipped >= 0 ? [this.take()] : []
  }

  private take(): Line {
    const line = ++this.line
    if (this.skipped >= 0) {
      const tooLongBytes = this.skipped
      this.skipped = -1
      return { line, tooLongBytes }
    }
    const bytes = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts, this.bytes)
    this.parts = []
    this.bytes = 0
    let text: string
    try {
      text = this.decoder.decode(bytes)
    } catch {
      return { line, notUtf8Bytes: bytes.length }
    }
    return { line, text: text.endsWith("\r") ? text.slice(0, -1) : text }
  }
}

/** Splits a byte stream into numbered lines (see `Line`); a line over `maxLineBytes` is never held in memory. */
export const splitLines = (maxLineBytes: number) => <E, R>(bytes: Stream.Stream<Uint8Array, E, R>): Stream.Stream<Line, E, R> =>
  Stream.mapAccum(bytes, () => new LineSplitter(maxLineBytes), (splitter, chunk) => [splitter, splitter.push(chunk)] as const, {
    onHalt: (splitter) => splitter.end()
  })

/** True for a regular file; false for a pipe (`<(…)`, `mkfifo`), a device or a socket, which read once, in order, and have no size. */
export const isRegularFile = (path: string): boolean => {
  try {
    return Fs.statSync(path).isFile()
  } catch {
    return false
  }
}

/** A Node readable's bytes, as read in order (a pipe or standard input: no positional reads). */
const sequentialBytes = (open: () => AsyncIterable<Uint8Array>, name: string): Stream.Stream<Uint8Array, InputError> =>
  Stream.suspend(() => Stream.fromAsyncIterable(open(), (e) => new InputError({ path: name, reason: e instanceof Error ? e.message : String(e) })))

/** The non-blank lines of `path` (standard input for `-`), numbered from 1; `perf --input` reads its records with it too. */
export const inputLines = (fs: FileSystem.FileSystem, path: string, maxLineBytes: number) => {
  const bytes: Stream.Stream<Uint8Array, InputError | PlatformError.PlatformError> = path === stdio
    ? sequentialBytes(() => process.stdin as AsyncIterable<Uint8Array>, "standard input")
    : isRegularFile(path)
    ? fs.stream(path)
    // A pipe refuses the positional reads of `fs.stream` (ESPIPE).
    : sequentialBytes(() => Fs.createReadStream(path) as AsyncIterable<Uint8Array>, path)
  return bytes.pipe(
    splitLines(maxLineBytes),
    Stream.filter((l) => l.text === undefined || !Records.isBlank(l.text))
  )
}

/** A line's record, or why it is malformed: not JSON of a record, not UTF-8, or over `maxLineBytes` (never read). */
export const decodeLine = (metadata: ModelMetadata.ModelMetadata, maxLineBytes: number, l: Line): Records.Record | Records.Malformed =>
  l.text !== undefined
    ? Records.decode(metadata, l.line, l.text)
    : {
      _tag: "Malformed",
      line: l.line,
      reason: l.notUtf8Bytes !== undefined ? "not valid UTF-8, as JSON text must be" : `line of ${l.tooLongBytes} bytes, longer than the ${maxLineBytes} bytes read (not read)`
    }

/**
 * The number of lines of `path` (a final line without a newline counts), counted on raw bytes:
 * the progress bar's total, known soon after the start on a large file.
 */
export const countLines = (path: string): Effect.Effect<number> =>
  Effect.callback<number>((resume) => {
    const stream = Fs.createReadStream(path, { highWaterMark: 1 << 20 })
    let count = 0
    let last = 10
    stream.on("data", (chunk) => {
      const buffer = chunk as Buffer
      for (let at = buffer.indexOf(10); at !== -1; at = buffer.indexOf(10, at + 1)) count++
      if (buffer.length > 0) last = buffer[buffer.length - 1]!
    })
    stream.on("end", () => resume(Effect.succeed(last === 10 ? count : count + 1)))
    stream.on("error", () => resume(Effect.succeed(0)))
    return Effect.sync(() => stream.destroy())
  })

/** How an output is named in messages: its path, or "standard output" for `-`. */
const outputName = (path: string): string => (path === stdio ? "standard output" : path)

/** The OutputError of a failed stream; EPIPE says that the reader went away (`effect-onnx infer … | head`). */
const outputError = (path: string, error: Error | undefined): OutputError =>
  new OutputError({
    path: outputName(path),
    reason: error === undefined
      ? "the output closed"
      : (error as NodeJS.ErrnoException).code === "EPIPE"
      ? "the reader closed the pipe (EPIPE)"
      : error.message
  })

/**
 * An output file with backpressure. A write fails with OutputError once the stream has failed
 * (a full disk, EIO, EPIPE: a reader that closed its end of the pipe), including a write that
 * waits for the stream to drain. `close` ends the file and waits for its data to reach it (for
 * `-`, standard output, left open: for what was written to be handed over), failing with the
 * stream's error if it had one; the scope's release does the same without failing, and neither
 * waits on a stream that has failed. `resume`: keeps the file's first `keepBytes` and appends.
 */
const openOutput = (path: string, resume?: { readonly keepBytes: number }) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        const stream: import("node:stream").Writable = path === stdio
          ? process.stdout
          : resume === undefined
          ? Fs.createWriteStream(path, { fd: Fs.openSync(path, "w") })
          : (() => {
            // "a" creates a missing output (resume then starts from scratch); appends go after keepBytes.
            const fd = Fs.openSync(path, "a")
            Fs.ftruncateSync(fd, resume.keepBytes)
            return Fs.createWriteStream(path, { fd })
          })()
        const state: { error: Error | undefined } = { error: undefined }
        stream.on("error", (e) => {
          state.error ??= e
        })
        return { stream, state }
      },
      catch: (e) => new OutputError({ path: outputName(path), reason: e instanceof Error ? e.message : String(e) })
    }),
    ({ state, stream }) => Effect.ignore(closeOutput(path, stream, state))
  ).pipe(Effect.map(({ state, stream }) => {
    // `errored` is set as the stream fails; its "error" event (and so `state.error`) comes a tick later.
    const failure = () => outputError(path, state.error ?? stream.errored ?? undefined)
    return {
      write: (text: string): Effect.Effect<void, OutputError> =>
        Effect.callback((resume) => {
          if (state.error !== undefined || stream.destroyed) return resume(Effect.fail(failure()))
          if (stream.write(text)) return resume(Effect.void)
          // Waits for the drain, or for the error (or close) after which no drain comes.
          const settle = () => {
            unlisten()
            resume(state.error === undefined && !stream.destroyed ? Effect.void : Effect.fail(failure()))
          }
          const unlisten = () => {
            stream.off("drain", settle)
            stream.off("error", settle)
            stream.off("close", settle)
          }
          stream.on("drain", settle)
          stream.on("error", settle)
          stream.on("close", settle)
          return Effect.sync(unlisten)
        }),
      /** Writes without waiting (for the final flush, which the close then waits for); false once the output has failed. */
      writeNow: (text: string): boolean => {
        if (state.error !== undefined || stream.destroyed) return false
        stream.write(text)
        return true
      },
      /** Ends the output and waits for its data to be written; fails with the stream's error. */
      close: closeOutput(path, stream, state)
    }
  }))

/** Ends `stream` (flushes standard output) and waits until that is done or the stream has failed. */
const closeOutput = (
  path: string,
  stream: import("node:stream").Writable,
  state: { error: Error | undefined }
): Effect.Effect<void, OutputError> =>
  Effect.callback<void, OutputError>((resume) => {
    let open = true
    // The callback of `end` / `write` gets the error before the stream emits it.
    const settle = (error?: Error | null) => {
      if (!open) return
      open = false
      state.error ??= error ?? stream.errored ?? undefined
      stream.off("error", settle)
      stream.off("close", settle)
      resume(state.error === undefined ? Effect.void : Effect.fail(outputError(path, state.error)))
    }
    if (state.error !== undefined || stream.destroyed) return settle()
    stream.on("error", settle)
    stream.on("close", settle)
    if (path === stdio) stream.write("", settle)
    else stream.end(settle)
  })

/** What `output` already holds, for `resume`: nothing when it does not exist yet. */
const readResume = (path: string) =>
  Effect.try({
    try: () => Fs.existsSync(path) ? Records.readResume(Fs.readFileSync(path)) : { done: new Set<number>(), keepBytes: 0 },
    catch: (e) => new OutputError({ path, reason: e instanceof Error ? e.message : String(e) })
  }).pipe(Effect.flatMap((r) => "error" in r ? Effect.fail(new OutputError({ path, reason: `cannot resume: ${r.error}` })) : Effect.succeed(r)))

/**
 * A batch's counts as it goes, and its total for the progress: the file's lines once counted
 * (blank ones too: an estimate), until then estimated from its size and the lines read so far.
 */
class Tally {
  read = 0
  /** The input's line number of the last record read (blank lines are numbered, not read). */
  lastLine = 0
  done = 0
  failed = 0
  skipped = 0
  written = 0
  /** Characters of the lines read (with their newlines), for the estimate. */
  charsRead = 0
  lineCount: number | undefined
  readonly startedMs = Date.now()
  readonly fileBytes: number
  constructor(fileBytes: number) {
    this.fileBytes = fileBytes
  }
  total(): number | undefined {
    if (this.lineCount !== undefined) return this.lineCount
    if (this.read === 0 || this.fileBytes === 0) return undefined
    return Math.max(this.read, Math.round(this.fileBytes / (this.charsRead / this.read)))
  }
  snapshot(): Progress.Snapshot {
    return { done: this.done, total: this.total(), failed: this.failed, skipped: this.skipped, elapsedMs: Date.now() - this.startedMs }
  }
}

/**
 * The input's records in order: lines already answered (`resume`) and malformed ones (reported,
 * or fatal with `onMalformed: "fail"`) are counted and left out.
 */
const recordsOf = (
  fs: FileSystem.FileSystem,
  options: Options,
  metadata: ModelMetadata.ModelMetadata,
  alreadyDone: ReadonlySet<number>,
  tally: Tally,
  progress: Progress.Handle
) => {
  const malformed = (m: Records.Malformed) =>
    options.onMalformed === "fail"
      ? Effect.fail(new MalformedLine({ line: m.line, reason: m.reason }))
      : Effect.sync(() => {
        tally.skipped++
        progress.log(`line ${m.line}: skipped malformed record: ${m.reason}`)
      })
  const maxLineBytes = options.maxLineBytes ?? defaultMaxLineBytes
  return inputLines(fs, options.input, maxLineBytes).pipe(
    Stream.mapEffect(({ line, text, tooLongBytes, notUtf8Bytes }) => {
      tally.read++
      tally.lastLine = line
      tally.charsRead += (text?.length ?? tooLongBytes ?? notUtf8Bytes ?? 0) + 1
      if (alreadyDone.has(line)) {
        tally.done++
        return Effect.succeed(undefined)
      }
      const decoded = decodeLine(metadata, maxLineBytes, { line, text, tooLongBytes, notUtf8Bytes } as Line)
      return Records.isMalformed(decoded) ? Effect.as(malformed(decoded), undefined) : Effect.succeed(decoded)
    }),
    Stream.filter((record): record is Records.Record => record !== undefined)
  )
}

/** Starts counting the input's lines for the progress's total, where a second reader is harmless. */
const countLinesInBackground = (options: Options, tally: Tally) =>
  // Not on a pipe: a second reader would take lines from the first.
  options.input !== stdio && isRegularFile(options.input)
    ? Effect.asVoid(Effect.forkScoped(Effect.map(countLines(options.input), (n) => {
      tally.lineCount = n
    })))
    : Effect.void

/** The lines in `done` past the input's `lastLine`: an output resumed against a shorter input (or another one). */
const countBeyond = (done: ReadonlySet<number>, lastLine: number): number => {
  let n = 0
  for (const line of done) if (line > lastLine) n++
  return n
}

/** Where a batch's records run: the engine in this process (`run`), or a server (`runRemote`). */
export interface Backend {
  /** The model's metadata, which records are decoded against. */
  readonly metadata: Effect.Effect<ModelMetadata.ModelMetadata, InferenceError.InferenceError>
  /**
   * One record's result (a refusal is a Failed result); fails only when the batch cannot go on
   * (a server gone), which stops it as an interruption does: what finished is written.
   */
  readonly inferResult: (request: InferenceRequest.InferenceRequest) => Effect.Effect<InferenceResult.InferenceResult, InferenceError.InferenceError>
  /** Records in flight at once unless `Options.concurrency` says otherwise. */
  readonly concurrency: number
}

/** Runs the batch (see the module doc) on the engine in this process. */
export const run = (options: Options) =>
  Effect.gen(function*() {
    const engine = yield* AsyncInferenceEngine
    const pool = yield* ModelPool
    return yield* runOn(options, {
      metadata: Effect.mapError(pool.metadata(options.model, options.version), InferenceError.make),
      inferResult: (request) => engine.inferResult(request),
      concurrency: engine.config.maxConcurrentRequests * 2
    })
  })

/** Records in flight at once against a server, unless `Options.concurrency` says otherwise. */
export const remoteConcurrency = 16

/**
 * Runs the batch against a server that speaks the Open Inference Protocol (this one, Triton,
 * KServe) at `url`, through `OipClient`: the records are decoded against the model's metadata as
 * the server gives it (this server's declared input signatures included), each record's deadline
 * covers its exchange, and a refusal is an error record.
 * - A sequence's records go one at a time, in line order, as the engine runs them in process:
 *   each waits for the one before it (that wait counts in its deadline); on the wire they could
 *   overtake one another.
 * - A server that gives no answer (unreachable, gone) or shuts down stops the batch (exit 1):
 *   what finished is written, and `resume` runs the rest once a server is back. The metadata's
 *   request has the records' deadline.
 */
export const runRemote = (options: Options, url: string) =>
  Effect.gen(function*() {
    const client = yield* OipClient.make({ url })
    const deadline = options.timeout ?? InferenceRequest.defaultTimeout
    const metadata = Effect.timeoutOrElse(client.metadata(options.model, options.version), {
      duration: deadline,
      orElse: () =>
        Effect.fail(InferenceError.make(new InferenceError.ModelUnavailable({ modelId: options.model, reason: `${url} gave no metadata within ${Duration.format(deadline)}`, unreachable: true })))
    })
    // (OipClient sends a sequence's records one at a time, in the order they come)
    const inferResult = (request: InferenceRequest.InferenceRequest) =>
      Effect.suspend(() => {
        const startedMs = performance.now()
        return Effect.catch(client.infer(request), (error) => {
          const reason = error.reason
          // no server to answer the rest: stop, so that `resume` runs them once there is one
          if ((reason._tag === "ModelUnavailable" && reason.unreachable === true) || reason._tag === "ShuttingDown") return Effect.fail(error)
          return Effect.succeed(InferenceResult.ofError(request.requestId, error, performance.now() - startedMs))
        })
      })
    return yield* runOn(options, { metadata, inferResult, concurrency: remoteConcurrency })
  }).pipe(Effect.scoped)

const runOn = (options: Options, backend: Backend) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const metadata = yield* backend.metadata
    const resumed = options.resume === true ? yield* readResume(options.output) : undefined
    const output = yield* openOutput(options.output, resumed)
    const alreadyDone = resumed?.done ?? new Set<number>()
    const concurrency = Math.max(1, options.concurrency ?? backend.concurrency)

    const fileBytes = options.input === stdio ? 0 : yield* fs.stat(options.input).pipe(Effect.map((info) => Number(info.size)), Effect.orElseSucceed(() => 0))
    const tally = new Tally(fileBytes)
    const progress = yield* Progress.start({ ...options.progress, output: options.messages }, () => tally.snapshot())
    yield* countLinesInBackground(options, tally)
    if (alreadyDone.size > 0) progress.log(`resuming: ${alreadyDone.size} records already in ${options.output} are not run again`)

    /** Finished results not yet written, by line: what an early stop still writes. */
    const finished = new Map<number, string>()

    const infer = (record: Records.Record) =>
      backend.inferResult(InferenceRequest.make(options.model, record.inputs, {
        modelVersion: options.version,
        priority: record.priority ?? options.priority,
        timeout: record.timeout ?? options.timeout,
        metadata: { line: String(record.line) },
        sequence: record.sequence
      })).pipe(Effect.map((result) => {
        tally.done++
        if (result._tag !== "Success") tally.failed++
        finished.set(record.line, `${Records.encode(record, result)}\n`)
        return record.line
      }))

    /** Stopped early: writes what finished after the last line written, still in input order. */
    const writeFinished = () => {
      for (const line of [...finished.keys()].sort((a, b) => a - b)) {
        if (output.writeNow(finished.get(line)!)) tally.written++
      }
      finished.clear()
    }

    yield* recordsOf(fs, options, metadata, alreadyDone, tally, progress).pipe(
      Stream.mapEffect(infer, { concurrency }),
      Stream.runForEach((line) => {
        const text = finished.get(line)!
        finished.delete(line)
        tally.written++
        return output.write(text)
      }),
      // Every line was handed to the stream: fails here if one of them could not be written.
      Effect.andThen(output.close),
      Effect.onExit((exit) =>
        Effect.suspend(() => {
          writeFinished()
          if (Exit.isSuccess(exit)) {
            tally.lineCount = tally.read
            const beyond = countBeyond(alreadyDone, tally.lastLine)
            if (beyond > 0) progress.log(`${beyond} records in ${options.output} answer lines past the input's last (${tally.lastLine}): the output may be another input's`)
          }
          return progress.finish(Exit.isSuccess(exit) ? "done" : Exit.hasInterrupts(exit) ? "interrupted" : "stopped")
        })
      )
    )
    return { total: tally.read, written: tally.written, failed: tally.failed, skipped: tally.skipped } satisfies Summary
  }).pipe(Effect.scoped)

/**
 * The engine for one batch: the onnxruntime pool over `repository` (default: the bundled
 * models), the environment's engine settings with a queue that holds `concurrency`, OTLP export
 * when OTEL_EXPORTER_OTLP_ENDPOINT is set (and no spans otherwise, as in the server).
 */
export const engineLayer = (options: {
  readonly repository?: string | undefined
  readonly concurrency?: number | undefined
  readonly serviceName: string
}) =>
  Live.layerConfig({
    repository: options.repository,
    serviceName: options.serviceName,
    // The batch's own submissions never overflow the queue.
    adjust: (c) => ({ ...c, maxQueuedRequests: Math.max(c.maxQueuedRequests, options.concurrency ?? 2 * c.maxConcurrentRequests) })
  })

/**
 * `run` on its own engine (`engineLayer`), closed when the batch ends; then waits for any worker
 * thread the close left inside a native run (exiting while it runs would abort the process).
 */
export const runWithEngine = (options: Options, engine: Parameters<typeof engineLayer>[0]) =>
  run(options).pipe(Effect.provide(engineLayer({ ...engine, concurrency: options.concurrency })), Effect.ensuring(Cli.awaitLeftRunning()))
