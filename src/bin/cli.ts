#!/usr/bin/env node
/**
 * The `effect-onnx` command (`Cli`): `infer` over NDJSON files, `serve`, and `perf`.
 * From a checkout: `node src/bin/cli.ts --help`; installed: `npx effect-onnx --help`.
 *
 * @module cli
 */
// Single modules, not the package's index, which loads every Node service (~0.6 s of CPU).
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Effect, Logger, References } from "effect"
import { CliOutput, Command } from "effect/cli"
import { readFileSync } from "node:fs"
import * as Cli from "../cli/Cli.ts"
import * as Startup from "../cli/Startup.ts"

// Standard error carries logs and progress; standard output is the server's log, but the batch
// commands' product (records, perf's document), whose loss must fail them.
Startup.surviveClosedOutput(process.argv[2] === "serve" ? [process.stdout, process.stderr] : [process.stderr])

const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }

// Batch commands: the engine's INFO lines (models loading) would interleave with the progress
// bar; `--log-level info` shows them. Their log lines go to standard error, as the progress does:
// standard output is the records (`--output -`) or `perf --json`'s document. The server logs at
// INFO (its lifecycle is its output).
const quiet = process.argv[2] !== "serve"

Command.run(Cli.command, { version }).pipe(
  quiet ? (effect) => effect.pipe(Effect.provideService(References.MinimumLogLevel, "Warn"), Effect.provideService(Logger.LogToStderr, true)) : (effect) => effect,
  Effect.provide(CliOutput.layerPresenter(Cli.presenter)),
  Effect.provide(NodeServices.layer),
  NodeRuntime.runMain({ teardown: Cli.teardown, disableErrorReporting: true })
)
