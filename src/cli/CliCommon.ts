/**
 * What every command of `effect-onnx` shares: its name, the exit-code error, the one-line
 * failure, and how a command line that does not parse is reported (`presenter`): the error on
 * one line first, then where to find the usage, not the whole help.
 *
 * @module CliCommon
 */
import { Cause, type Config, Data, Effect, Exit, type Runtime } from "effect"
import { CliError, CliOutput } from "effect/cli"
import * as AsyncConfig from "../AsyncConfig.ts"
import * as InstancePool from "../onnx/InstancePool.ts"
import * as Startup from "./Startup.ts"

/** Ends the process with `code`, after the message was printed. */
export class ExitCode extends Data.TaggedError("ExitCode")<{ readonly code: number }> {}

/** The name the package installs the command under. */
export const name = "effect-onnx"

/** Prints `effect-onnx: message` on stderr and ends with `code`. */
export const fail = (message: string, code = 1): Effect.Effect<never, ExitCode> =>
  Effect.andThen(Effect.sync(() => process.stderr.write(`${name}: ${message}\n`)), Effect.fail(new ExitCode({ code })))

/** An invalid environment variable: `effect-onnx: invalid configuration: MAX_QUEUED_REQUESTS: …` on one line, exit code 2. */
export const failConfig = (error: Config.ConfigError): Effect.Effect<never, ExitCode> =>
  fail(`invalid configuration: ${AsyncConfig.describeError(error)}`, 2)

/**
 * Help and version as effect/cli prints them; an invalid invocation as one line per error on
 * stderr (`effect-onnx infer: Missing required flag: --model`), then a pointer to `--help`. A
 * mistyped subcommand is the only error said: the flags after it, which it would have taken,
 * are not named as unrecognized.
 */
export const presenter: CliOutput.Presenter = {
  present: (event) => {
    if (event._tag !== "InvalidInvocation") return CliOutput.defaultPresenter.present(event)
    const path = event.commandPath.join(" ")
    const unknownSubcommand = event.errors.filter((e) => (e as { _tag?: unknown })._tag === "UnknownSubcommand")
    const errors = unknownSubcommand.length > 0 ? unknownSubcommand : event.errors
    const lines = errors.map((e) => `${path}: ${String((e as { message?: unknown }).message ?? e)}`.replace(/\s*\n\s*/g, " "))
    return Effect.sync(() => process.stderr.write(`${lines.join("\n")}\nRun '${path} --help' for usage.\n`))
  }
}

export { markStoppedBySignal, parentAtStart } from "./Startup.ts"

/**
 * Exit codes: 0 done (and a server stopped by a signal, after its drain), 130 interrupted
 * (Ctrl+C during a batch), 2 invalid command line, known failures their code (already
 * reported), 1 anything else (printed).
 */
export const teardown: Runtime.Teardown = (exit, onExit) => {
  if (Exit.isSuccess(exit)) return onExit(0)
  if (Cause.hasInterruptsOnly(exit.cause)) return onExit(Startup.wasStoppedBySignal() ? 0 : 130)
  const error = Cause.findErrorOption(exit.cause)
  if (error._tag === "Some") {
    if (error.value instanceof ExitCode) return onExit(error.value.code)
    if (CliError.isCliError(error.value)) return onExit(2)
  }
  process.stderr.write(`${Cause.pretty(exit.cause)}\n`)
  return onExit(1)
}

/**
 * After the model pools have closed: waits for the worker threads a close left inside a native
 * run (past `closeTimeout`), since exiting while one runs aborts the process (134). Says so; a
 * signal meanwhile exits at once, by that signal (`onWait` runs first, when there is a wait).
 */
export const awaitLeftRunning = (onWait: () => void = () => {}): Effect.Effect<void> =>
  Effect.suspend(() => {
    const count = InstancePool.leftRunningCount()
    if (count === 0) return Effect.void
    onWait()
    const exitBy = (signal: NodeJS.Signals) => () => {
      process.removeAllListeners(signal)
      process.kill(process.pid, signal)
    }
    const onInt = exitBy("SIGINT")
    const onTerm = exitBy("SIGTERM")
    return Effect.logWarning(
      `waiting for ${count} worker thread${count === 1 ? "" : "s"} still inside a native run to end before exiting ` +
        `(stopping one would abort the process; a signal exits at once)`
    ).pipe(
      Effect.andThen(Effect.sync(() => {
        process.on("SIGINT", onInt)
        process.on("SIGTERM", onTerm)
      })),
      Effect.andThen(InstancePool.awaitLeftRunning),
      Effect.andThen(Effect.logInfo("the worker threads left running have ended")),
      Effect.ensuring(Effect.sync(() => {
        process.off("SIGINT", onInt)
        process.off("SIGTERM", onTerm)
      }))
    )
  })
