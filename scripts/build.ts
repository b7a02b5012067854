/**
 * `npm run build` (and `prepack`): compiles `src/` to `dist/` (JS + .d.ts, `tsconfig.build.json`),
 * then fixes what the compiler leaves as it is.
 *
 * Relative import specifiers are rewritten `.ts` → `.js` by the compiler
 * (`rewriteRelativeImportExtensions`), but the thread and process entry points are loaded by URL
 * (`new URL("./SessionWorker.ts", import.meta.url)`), which it does not touch: in `dist/` such a
 * URL must name the `.js` file, because Node does not strip types under `node_modules`. This
 * script rewrites every `new URL("./….ts", import.meta.url)` in `dist/` to `.js`, checks that
 * each target exists, and marks the CLI executable. It fails when a rewritten URL names a file
 * that was not emitted.
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const dist = Path.join(root, "dist")

Fs.rmSync(dist, { recursive: true, force: true })
execFileSync(Path.join(root, "node_modules", ".bin", "tsc"), ["-p", Path.join(root, "tsconfig.build.json")], { stdio: "inherit" })

const entryUrl = /new URL\((["'])(\.{1,2}\/[^"'`]+)\.ts\1, import\.meta\.url\)/g
let rewritten = 0
const missing: Array<string> = []
const walk = (dir: string): Array<string> =>
  Fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(Path.join(dir, e.name)) : [Path.join(dir, e.name)]))

for (const file of walk(dist).filter((f) => f.endsWith(".js"))) {
  const text = Fs.readFileSync(file, "utf8")
  const next = text.replace(entryUrl, (_, quote: string, specifier: string) => {
    rewritten++
    if (!Fs.existsSync(Path.resolve(Path.dirname(file), `${specifier}.js`))) missing.push(`${Path.relative(root, file)}: ${specifier}.js`)
    return `new URL(${quote}${specifier}.js${quote}, import.meta.url)`
  })
  if (next !== text) Fs.writeFileSync(file, next)
}
if (missing.length > 0) {
  console.error(`build: entry points not emitted:\n  ${missing.join("\n  ")}`)
  process.exit(1)
}
// Non-TypeScript assets loaded at run time: the gRPC service definitions (and their licence).
Fs.cpSync(Path.join(root, "src", "grpc", "proto"), Path.join(dist, "grpc", "proto"), { recursive: true })
Fs.chmodSync(Path.join(dist, "bin", "cli.js"), 0o755)
console.log(`build: dist/ written; ${rewritten} entry-point URL(s) rewritten to .js`)
