/**
 * Every TypeScript block of README.md and docs/*.md runs as written, as a user would run it: the
 * block saved as a file in a project where `effect-onnx` is installed, then `node file.ts`
 * (Node ≥ 22.19 strips the types). Here the installed package is this checkout's source: a
 * temporary project whose `node_modules/effect-onnx` maps the package's exports to `src/`
 * (no build needed), run from the checkout's root so that relative paths such as `./models`
 * mean what the docs say. Each block must exit 0 and print something of its own (log lines do not count).
 *
 * A block that is not meant to run alone is fenced ```ts no-run, and says why beside it.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("../..", import.meta.url))

interface Snippet {
  readonly file: string
  readonly line: number
  readonly code: string
}

/** The ```ts blocks of a Markdown file, with the line each starts on; ```ts no-run blocks are left out. */
export const snippetsOf = (file: string, text: string): ReadonlyArray<Snippet> => {
  const out: Array<Snippet> = []
  const lines = text.split("\n")
  for (let i = 0; i < lines.length; i++) {
    const fence = /^```(ts|typescript)(\s.*)?$/.exec(lines[i]!)
    if (fence === null) continue
    const start = i
    const body: Array<string> = []
    for (i++; i < lines.length && lines[i] !== "```"; i++) body.push(lines[i]!)
    if (!(fence[2] ?? "").includes("no-run")) out.push({ file, line: start + 1, code: body.join("\n") + "\n" })
  }
  return out
}

const documents = ["README.md", ...Fs.readdirSync(Path.join(root, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`)]
const snippets = documents.flatMap((doc) => snippetsOf(doc, Fs.readFileSync(Path.join(root, doc), "utf8")))

let project: string

beforeAll(() => {
  // A project with effect-onnx "installed": its package maps every export to this checkout's src/.
  project = Fs.mkdtempSync(Path.join(Os.tmpdir(), "snippets-"))
  const pkg = Path.join(project, "effect-onnx")
  Fs.mkdirSync(pkg)
  Fs.symlinkSync(Path.join(root, "src"), Path.join(pkg, "src"))
  const manifest = JSON.parse(Fs.readFileSync(Path.join(root, "package.json"), "utf8")) as { exports: Record<string, unknown> }
  const exports: Record<string, string> = {}
  for (const [key, value] of Object.entries(manifest.exports)) {
    if (typeof value !== "object" || value === null) continue
    const target = (value as { default?: string }).default
    if (target !== undefined) exports[key] = target.replace(/^\.\/dist\//, "./src/").replace(/\.js$/, ".ts")
  }
  Fs.writeFileSync(Path.join(pkg, "package.json"), JSON.stringify({ name: "effect-onnx", type: "module", exports }))
  Fs.mkdirSync(Path.join(project, "node_modules"))
  Fs.symlinkSync(pkg, Path.join(project, "node_modules", "effect-onnx"))
  // effect and the rest, as the installed package would find them.
  for (const dep of ["effect", "@effect"]) Fs.symlinkSync(Path.join(root, "node_modules", dep), Path.join(project, "node_modules", dep))
})

afterAll(() => {
  if (project !== undefined) Fs.rmSync(project, { recursive: true, force: true })
})

const runSnippet = (snippet: Snippet, index: number): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    const file = Path.join(project, `snippet-${index}.ts`)
    Fs.writeFileSync(file, snippet.code)
    const child = spawn(process.execPath, [file], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (c: Buffer) => (stdout += c.toString("utf8")))
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString("utf8")))
    const timer = setTimeout(() => child.kill("SIGKILL"), 50_000)
    child.on("exit", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })

describe("the TypeScript blocks of README.md and docs/", () => {
  it("are found (the README's Effect and Promise tours, docs/usage.md's)", () => {
    assert.isAtLeast(snippets.filter((s) => s.file === "README.md").length, 2)
    assert.isAtLeast(snippets.filter((s) => s.file === "docs/usage.md").length, 2)
  })

  it("the extractor skips no-run blocks and keeps line numbers", () => {
    const text = "a\n```ts\nconsole.log(1)\n```\n```ts no-run (a fragment)\nx\n```\n```sh\nls\n```\n"
    assert.deepStrictEqual(snippetsOf("x.md", text), [{ file: "x.md", line: 2, code: "console.log(1)\n" }])
  })

  snippets.forEach((snippet, index) => {
    it(`${snippet.file}:${snippet.line} runs as written and prints`, async () => {
      const { code, stderr, stdout } = await runSnippet(snippet, index)
      assert.strictEqual(code, 0, `${snippet.file}:${snippet.line}\n${stdout}\n${stderr}`)
      // Something of its own, not only the engine's log lines ("[05:18:58.901] INFO (#10): model mlp …").
      const own = stdout.split("\n").filter((l) => l.trim() !== "" && !/^\[\d\d:\d\d:\d\d\.\d{3}\] [A-Z]+ /.test(l))
      assert.isAbove(own.length, 0, `${snippet.file}:${snippet.line} prints nothing of its own\n${stdout}\n${stderr}`)
    }, 60_000)
  })
})
