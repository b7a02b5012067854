/**
 * The standalone Open Inference Protocol v2 server: `npm start`, or `node src/bin/server.ts`,
 * the same command as `effect-onnx serve` (`cli/Serve`), with the same flags and help.
 * Under a process manager, run this process directly: npm does not pass SIGTERM on (the server
 * notices that npm is gone and drains, but only after npm itself has exited).
 *
 * Only `Startup` loads before this module runs: the parent is noted and signals are handled
 * from the first moment, while the rest of the program loads (a second or more on a busy
 * machine), where a static import of it would leave Node's default action (exit 143 on SIGTERM)
 * and the parent unknown until then.
 *
 * @module server
 */
import * as Startup from "../cli/Startup.ts"

// While the program loads nothing has started: a signal then ends the process at once, as a stop
// during the start does later (exit 0, not 130 or 143). Once it has loaded, a signal interrupts
// the command (NodeRuntime's handlers): while it starts (parsing its flags, loading the
// models) that stops the start, exit 0. One listener throughout: removing the last one would
// drop a signal that arrived while the modules loaded and is not yet handled.
let loaded = false
const onSignal = () => (loaded ? Startup.markStoppedBySignal() : process.exit(0))
process.once("SIGINT", onSignal)
process.once("SIGTERM", onSignal)
Startup.surviveClosedOutput()

const [NodeRuntime, NodeServices, { CliOutput, Command }, { Effect }, Fs, Cli] = await Promise.all([
  import("@effect/platform-node/NodeRuntime"),
  import("@effect/platform-node/NodeServices"),
  import("effect/cli"),
  import("effect"),
  import("node:fs"),
  import("../cli/Cli.ts")
])
loaded = true

const { version } = JSON.parse(Fs.readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }

Command.runWith(Cli.command, { version })(["serve", ...process.argv.slice(2)]).pipe(
  Effect.provide(CliOutput.layerPresenter(Cli.presenter)),
  Effect.provide(NodeServices.layer),
  NodeRuntime.runMain({ teardown: Cli.teardown, disableErrorReporting: true })
)
