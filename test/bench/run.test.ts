/** `npm run bench -- --help` prints the usage and runs nothing (it used to start every benchmark). */
import { assert, describe, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import { fileURLToPath } from "node:url"

const runner = fileURLToPath(new URL("../../bench/run.ts", import.meta.url))

describe("bench/run.ts", () => {
  it("--help prints the usage, names every benchmark, and exits 0 without starting one", () => {
    const result = spawnSync(process.execPath, [runner, "--help"], { encoding: "utf8", timeout: 20_000 })
    assert.strictEqual(result.status, 0, result.stderr)
    assert.match(result.stdout, /^npm run bench \[-- names…\]/)
    assert.include(result.stdout, "overhead, throughput, limit, priority, memory, http, isolation, grpc, gpu, sizing")
    assert.notInclude(result.stdout, "# overhead", "no benchmark started")
  })

  it("refuses an unknown benchmark name with exit 2", () => {
    const result = spawnSync(process.execPath, [runner, "nosuch"], { encoding: "utf8", timeout: 20_000 })
    assert.strictEqual(result.status, 2)
    assert.include(result.stderr, "unknown benchmark(s): nosuch")
  })
})
