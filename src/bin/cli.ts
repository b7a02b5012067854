#!/usr/bin/env node
/**
 * The `effect-onnx` command (`Cli`): `infer` over NDJSON files, and `serve`.
 * From a checkout: `node src/bin/cli.ts --help`; installed: `npx effect-onnx --help`.
 *
 * @module cli
 */
// Single modules, not the package's index, which loads every Node service (~0.6 s of CPU).
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Cause, Effect, Exit, References, type Runtime } from "effect"
import { CliError, Command } from "effect/cli"
import { readFileSync } from "node:fs"
import * as Cli from "../cli/Cli.ts"

const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }

/** Interrupted (Ctrl+C) 130, invalid command line 2, known failures their code (already reported). */
const teardown: Runtime.Teardown = (exit, onExit) => {
  if (Exit.isSuccess(exit)) return onExit(0)
  if (Cause.hasInterruptsOnly(exit.cause)) return onExit(130)
  const error = Cause.findErrorOption(exit.cause)
  if (error._tag === "Some") {
    if (error.value instanceof Cli.ExitCode) return onExit(error.value.code)
    if (CliError.isCliError(error.value)) return onExit(2)
  }
  process.stderr.write(`${Cause.pretty(exit.cause)}\n`)
  return onExit(1)
}

Command.run(Cli.command, { version }).pipe(
  // The engine's INFO lines (models loading) would interleave with the progress bar;
  // --log-level info shows them.
  Effect.provideService(References.MinimumLogLevel, "Warn"),
  Effect.provide(NodeServices.layer),
  NodeRuntime.runMain({ teardown, disableErrorReporting: true })
)
