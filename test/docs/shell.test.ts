/**
 * The `curl` tours of README.md and docs/server.md run as written against the server they
 * describe (`npm start`: the bundled models), and print what their comments say. Each document's
 * tour gets a fresh server, since a tour's last command reads counters its earlier ones moved.
 *
 * A block is a tour when it holds a `curl` command. In it, a command is a line that is not a
 * comment (with its `\` continuations); the comment lines right after it (no blank line between)
 * are its expected output, compared without whitespace (the docs wrap long JSON); a last `# …`
 * line means "and more lines": the output must start with the lines before it. A comment after a
 * blank line describes the next command. `localhost:8000` is replaced by the test server's port.
 * A block whose first command starts the server with flags (`node src/bin/server.ts --flag …`)
 * runs against a server of its own, started with those flags.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { type Running, startServer, stopServer } from "../reliability/ServerProcess.ts"

const root = fileURLToPath(new URL("../..", import.meta.url))

interface Step {
  readonly command: string
  /** Expected output lines; undefined: not checked (only that it succeeds). */
  readonly expected: ReadonlyArray<string> | undefined
}

/** The steps of a shell block (see the module doc). */
export const stepsOf = (block: string): ReadonlyArray<Step> => {
  const steps: Array<{ command: string; expected: Array<string> | undefined }> = []
  const lines = block.split("\n")
  let current: { command: string; expected: Array<string> | undefined } | undefined
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!
    if (line.trim() === "") {
      current = undefined
      continue
    }
    if (line.startsWith("#")) {
      if (current !== undefined) (current.expected ??= []).push(line.replace(/^# ?/, ""))
      continue
    }
    let command = line
    while (command.endsWith("\\") && i + 1 < lines.length) command = `${command}\n${lines[++i]!}`
    current = { command, expected: undefined }
    steps.push(current)
  }
  return steps
}

const shellBlocks = (file: string): ReadonlyArray<string> => {
  const text = Fs.readFileSync(Path.join(root, file), "utf8")
  return [...text.matchAll(/^```sh\n([\s\S]*?)^```$/gm)].map((m) => m[1]!).filter((b) => /\bcurl\b/.test(b))
}

const squash = (text: string) => text.replace(/\s+/g, "")

const check = (step: Step, output: string) => {
  if (step.expected === undefined) return
  const more = step.expected.at(-1)?.trim() === "…"
  if (!more) return assert.strictEqual(squash(output), squash(step.expected.join("\n")), step.command)
  const want = step.expected.slice(0, -1).map(squash)
  const got = output.split("\n").map(squash).slice(0, want.length)
  assert.deepStrictEqual(got, want, step.command)
}

describe("the curl tours of the docs", () => {
  it("a block's steps: commands with continuations, their output comments, descriptions apart", () => {
    const steps = stepsOf("curl a\n# {\"x\":\n#  1}\n\n# describes b\nnode -e 1 \\\n  | curl b\n\ncurl c | grep d\n# d 1\n# …\n")
    assert.deepStrictEqual(steps, [
      { command: "curl a", expected: ["{\"x\":", " 1}"] },
      { command: "node -e 1 \\\n  | curl b", expected: undefined },
      { command: "curl c | grep d", expected: ["d 1", "…"] }
    ])
  })

  for (const file of ["README.md", "docs/server.md"]) {
    describe(file, () => {
      let server: Running | undefined
      beforeAll(async () => {
        server = await startServer([])
      }, 30_000)
      afterAll(() => stopServer(server))

      it("runs as written and prints what its comments say", async () => {
        const blocks = shellBlocks(file)
        assert.isAtLeast(blocks.length, 1)
        const env = { ...process.env, PATH: `${Path.dirname(process.execPath)}${Path.delimiter}${process.env["PATH"] ?? ""}` }
        for (const block of blocks) {
          const steps = stepsOf(block)
          const own = /^node src\/bin\/server\.ts\s+(.*)$/.exec(steps[0]?.command ?? "")
          const target = own === null ? server! : await startServer(own[1]!.split(/\s+/))
          try {
            for (const step of steps) {
              if (!/\bcurl\b/.test(step.command)) continue
              const command = step.command.replaceAll("localhost:8000", `127.0.0.1:${target.port}`)
              const output = execFileSync("sh", ["-c", command], { cwd: root, env, encoding: "utf8", timeout: 20_000 })
              check(step, output)
            }
          } finally {
            if (own !== null) await stopServer(target)
          }
        }
      }, 90_000)
    })
  }
})
