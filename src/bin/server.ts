/**
 * The standalone Open Inference Protocol v2 server: `npm start`, or `node src/bin/server.ts`,
 * the same command as `effect-onnx serve` (`cli/Serve`), with the same flags and help.
 * Under a process manager, run this process directly: npm does not pass SIGTERM on (the server
 * notices that npm is gone and drains, but only after npm itself has exited).
 *
 * @module server
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { Command } from "effect/cli"
import { CliOutput } from "effect/cli"
import { Effect } from "effect"
import { readFileSync } from "node:fs"
import * as Cli from "../cli/Cli.ts"


// From here on a signal interrupts the command; while it starts (parsing its flags, loading the
// server), that stops the start as a signal during the models' load does: exit 0, not 130.
process.once("SIGINT", Cli.markStoppedBySignal)
process.once("SIGTERM", Cli.markStoppedBySignal)

const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }

Command.runWith(Cli.command, { version })(["serve", ...process.argv.slice(2)]).pipe(
  Effect.provide(CliOutput.layerPresenter(Cli.presenter)),
  Effect.provide(NodeServices.layer),
  NodeRuntime.runMain({ teardown: Cli.teardown, disableErrorReporting: true })
)
