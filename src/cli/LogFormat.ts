/**
 * How the server writes its log lines (`--log-format`): `text`, Effect's default logger
 * (`[13:01:02.345] INFO (#9): listening on …`), or `json`, one JSON object a line for a log
 * collector (Loki, Elasticsearch, Cloud Logging):
 *
 * ```json
 * {"time":"2026-12-07T13:01:02.345Z","level":"INFO","message":"listening on http://127.0.0.1:8000 (models: …)","fiber":"#9"}
 * ```
 *
 * `message` joins the parts a log call was given (objects as JSON, errors by their stack); a
 * failure's cause, when there is one, is in `cause` (Effect's pretty form), the fiber's log
 * annotations in `annotations`. A line never fails: a part that cannot be written as JSON is
 * written as text. The loggers that are not the default one (the tracer's, OTLP export's) are
 * left as they are.
 *
 * @module LogFormat
 */
import { Cause, Effect, Logger, References } from "effect"
import * as Util from "node:util"

export type LogFormat = "text" | "json"

export const formats: ReadonlyArray<LogFormat> = ["text", "json"]

/** For JSON.stringify: a BigInt as its digits, an Error by its name, message and stack (JSON writes `{}` for one). */
const replacer = (_key: string, value: unknown): unknown =>
  typeof value === "bigint" ? value.toString() : value instanceof Error ? { name: value.name, message: value.message, stack: value.stack } : value

/** One part of a log call's message as text: JSON where it can be, else Node's inspection (a circular object). */
const partText = (part: unknown): string => {
  if (typeof part === "string") return part
  if (typeof part === "bigint") return part.toString()
  if (part instanceof Error) return part.stack ?? `${part.name}: ${part.message}`
  try {
    return JSON.stringify(part, replacer) ?? String(part)
  } catch {
    try {
      return Util.inspect(part, { depth: 4, breakLength: Infinity })
    } catch {
      return "(a value with no text)"
    }
  }
}

/** The log event as one JSON line (see the module doc). */
export const jsonLine = (options: Logger.Options<unknown>, annotations: Readonly<Record<string, unknown>>): string => {
  const parts = Array.isArray(options.message) ? options.message : [options.message]
  const line: Record<string, unknown> = {
    time: options.date.toISOString(),
    level: options.logLevel.toUpperCase(),
    message: parts.map(partText).join(" "),
    fiber: `#${options.fiber.id}`
  }
  if (options.cause.reasons.length > 0) line["cause"] = Cause.pretty(options.cause)
  if (Object.keys(annotations).length > 0) line["annotations"] = annotations
  try {
    return JSON.stringify(line, replacer)
  } catch {
    return JSON.stringify({ ...line, annotations: partText(annotations) })
  }
}

/**
 * A line written at once, outside Effect's loggers (a forced exit's last words, which cannot wait
 * for a fiber), in `format`: text as `<ISO time> <text>`, json as a log line of `level`.
 */
export const immediateLine = (format: LogFormat, level: "INFO" | "WARN" | "ERROR", text: string, date = new Date()): string =>
  format === "json" ? JSON.stringify({ time: date.toISOString(), level, message: text }) : `${date.toISOString()} ${text}`

/**
 * grpc-js's own log lines (`E No address added out of total 1 resolved`, which it writes to
 * standard error with `console.error`) in `format`: as they are for text, as JSON lines of their
 * level for json. Process-wide (grpc-js has one logger); a no-op for text.
 */
export const routeGrpcLog = (format: LogFormat, setLogger: (logger: Partial<Console>) => void): void => {
  if (format === "text") return
  const write = (level: "INFO" | "WARN" | "ERROR" | "DEBUG") => (...parts: Array<unknown>) =>
    void process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), level, message: `grpc-js: ${parts.map(partText).join(" ")}` })}\n`)
  setLogger({ error: write("ERROR"), info: write("INFO"), debug: write("DEBUG") })
}

/** Writes each log event as a JSON line, to standard output (standard error under `Logger.LogToStderr`). */
export const jsonLogger: Logger.Logger<unknown, void> = Logger.make((options) => {
  const text = jsonLine(options, options.fiber.getRef(References.CurrentLogAnnotations))
  if (options.fiber.getRef(Logger.LogToStderr)) process.stderr.write(`${text}\n`)
  else process.stdout.write(`${text}\n`)
})

/** `effect` with its log lines in `format`: for `json`, the default logger replaced by `jsonLogger`. */
export const withFormat = (format: LogFormat) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  format === "text"
    ? effect
    : Effect.updateService(effect, Logger.CurrentLoggers, (loggers) => {
      const next = new Set(loggers)
      next.delete(Logger.defaultLogger)
      next.add(jsonLogger)
      return next
    })
