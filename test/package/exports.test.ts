/**
 * The package's public surface, as package.json declares it: the root and one deep import per
 * module of the root barrel (types and JS in dist/), nothing else importable, the CLI as a bin.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("../..", import.meta.url))
const pkg = JSON.parse(Fs.readFileSync(Path.join(root, "package.json"), "utf8")) as {
  exports: Record<string, { types: string; default: string } | string>
  bin: Record<string, string>
  files: ReadonlyArray<string>
  main: string
  types: string
  scripts: Record<string, string>
}

/** `export * as Name from "./path.ts"` lines of src/index.ts. */
const barrel = [...Fs.readFileSync(Path.join(root, "src/index.ts"), "utf8").matchAll(/^export \* as (\w+) from "\.\/([\w/]+)\.ts"$/gm)]
  .map(([, name, path]) => ({ name: name!, path: path! }))

describe("package.json", () => {
  it("exports the root and one deep import per module of the barrel, each with types", () => {
    assert.isAbove(barrel.length, 10)
    assert.deepStrictEqual(pkg.exports["."], { types: "./dist/index.d.ts", default: "./dist/index.js" })
    for (const { name, path } of barrel) {
      assert.deepStrictEqual(pkg.exports[`./${name}`], { types: `./dist/${path}.d.ts`, default: `./dist/${path}.js` }, name)
      assert.isTrue(Fs.existsSync(Path.join(root, "src", `${path}.ts`)), path)
    }
    assert.strictEqual(pkg.exports["./package.json"], "./package.json")
    const expected = new Set([".", "./package.json", ...barrel.map((m) => `./${m.name}`)])
    assert.deepStrictEqual(Object.keys(pkg.exports).filter((k) => !expected.has(k)), [])
    assert.isFalse(Object.keys(pkg.exports).some((k) => k.includes("internal") || k.includes("*")))
    assert.strictEqual(pkg.main, "./dist/index.js")
    assert.strictEqual(pkg.types, "./dist/index.d.ts")
  })

  it("installs the CLI, ships dist/ and the bundled models, and builds before packing", () => {
    assert.deepStrictEqual(pkg.bin, { "effect-onnx": "dist/bin/cli.js" })
    assert.include(pkg.files, "dist")
    assert.include(pkg.files, "models")
    assert.match(pkg.scripts["build"]!, /scripts\/build\.ts/)
    assert.match(pkg.scripts["prepack"]!, /scripts\/build\.ts|npm run build/)
    assert.strictEqual(pkg.scripts["start"], "node src/bin/server.ts")
    assert.strictEqual(pkg.scripts["test"], "vitest run")
    assert.isTrue(Fs.readFileSync(Path.join(root, "src/bin/cli.ts"), "utf8").startsWith("#!/usr/bin/env node\n"))
  })
})
