/**
 * `effect-onnx serve`, and `npm start` (`src/bin/server.ts`, which runs this same command): the
 * Open Inference Protocol server. Its flags come from one table (`ServerConfig.options`) and are
 * parsed by `effect/cli` like every other command's; each also reads an environment variable,
 * and `--help` lists every variable the server reads. The server itself (`ServerMain`) loads only
 * when it runs, so that `--help` stays quick.
 *
 * @module Serve
 */
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import * as ServerConfig from "../http/ServerConfig.ts"
import * as Cli from "./CliCommon.ts"

/** The flags, one per row of `ServerConfig.options` (a repeatable one collects its values). */
const flags = Object.fromEntries(ServerConfig.options.map((option) => {
  const described = (flag: Flag.Flag<string>) => flag.pipe(Flag.withMetavar(option.metavar), Flag.withDescription(`${option.description} [${option.variable}]`))
  return [
    option.key,
    option.repeatable === true ? described(Flag.String(option.flag)).pipe(Flag.between(0, 1000)) : described(Flag.String(option.flag)).pipe(Flag.optional)
  ] as const
})) as Record<keyof ServerConfig.ServerConfig, Flag.Flag<Option.Option<string> | ReadonlyArray<string>>>


export const command = Command.make("serve", flags, (values) => {
  const given: Partial<Record<keyof ServerConfig.ServerConfig, string>> = {}
  for (const [key, value] of Object.entries(values) as Array<[keyof ServerConfig.ServerConfig, Option.Option<string> | ReadonlyArray<string>]>) {
    if (Array.isArray(value)) {
      if (value.length > 0) given[key] = value.join(",")
    } else if (Option.isSome(value as Option.Option<string>)) given[key] = (value as Option.Some<string>).value
  }
  const config = ServerConfig.decode(given, process.env)
  if (config instanceof ServerConfig.ConfigError) return Cli.fail(`serve: ${config.message}`, 2)
  const repository = ServerConfig.checkRepository(config, given, process.env)
  if (repository !== undefined) return Cli.fail(`serve: ${repository.message}`, 2)
  // A signal while ServerMain loads, before it watches signals itself, stops the start as one
  // during the models' load does (exit 0): it ended as a Ctrl-C of a batch command (130).
  process.once("SIGINT", Cli.markStoppedBySignal)
  process.once("SIGTERM", Cli.markStoppedBySignal)
  return Effect.flatMap(Effect.promise(() => import("./ServerMain.ts")), (main) => main.run(config))
}).pipe(
  Command.withDescription(
    "Serves the Open Inference Protocol v2 over HTTP and gRPC for every model of a repository, until SIGTERM or SIGINT (then drains; a second signal exits at once). " +
      "Each flag can also come from the variable in brackets.\n\nENVIRONMENT (besides the flags' own)\n" + ServerConfig.environmentText()
  ),
  Command.withShortDescription("Serves the Open Inference Protocol v2 over HTTP and gRPC for every model of a repository"),
  Command.withExamples([
    { command: `${Cli.name} serve --port 8080 --models ./models`, description: "serve ./models on 127.0.0.1:8080" },
    { command: `${Cli.name} serve --strict-readiness false --metrics-format triton`, description: "ready even with a broken model; Triton metric names" }
  ])
)
