import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { readRun, report } from "../../../scripts/gpu/report.ts"

const gpu = {
  sizes: [1024, 4096, 4096, 1000],
  cores: 16,
  blockMs: 2000,
  rounds: 1,
  webgpu: { available: true },
  maxAbsDiff: { "engine webgpu": 3.8e-6 },
  results: [
    { provider: "webgpu", contender: "engine, batching", outstanding: 256, reqPerSec: 61234.5, p50: 3.9, p99: 9.1, rowsPerRun: 128, failed: 0 }
  ],
  learnedVsFixed: [{ provider: "webgpu", outstanding: 256, "req/s": 1.31, p50: 0.77 }],
  instancesSweep: { onGpu: true, defaultInstances: 2, results: { error: "model mlp_webgpu_x3 failed to load" } },
  goals: [
    { goal: "engine on webgpu at 256 outstanding vs raw 256-row webgpu runs", target: "≥ 0.5", measured: "59%", pass: true },
    { goal: "webgpu outputs vs cpu outputs", target: "≤ 1e-4", measured: "2.0e-3", pass: false }
  ]
}

describe("scripts/gpu/report", () => {
  it("says which files the run did not bring back, and makes nothing up for them", () => {
    const text = report({})
    for (const file of ["summary.txt", "gpu.json", "soak.json", "narrow.json"]) assert.include(text, `(${file} was not brought back`)
    assert.notInclude(text, "Passed")
  })

  it("turns the bench, the goals (met and missed), a failed sweep, the soak and the crash hunt into Markdown", () => {
    const text = report({
      summary: "probe exit=0 seconds=1\n",
      gpu,
      soak: { pass: false, seconds: 300.2, outstanding: 256, completed: 1000, unexpectedFailures: { RunFailed: 2 }, mismatches: 0, maxAbsDiff: 1e-6 },
      narrow: { outcomes: [{ case: "workers2-locked", ended: "ok", seconds: 1.2 }, { case: "workers2-fixed", ended: "signal SIGSEGV", seconds: 0.8, stderrTail: "x | CommandEncoder is already finished" }] }
    })
    assert.include(text, "MLP 1024-4096-4096-1000, 16 cores, 1 round(s) of 2000 ms a contender; WebGPU found.")
    assert.match(text, /\| webgpu +\| engine, batching +\| 256 +\| 61,235 +\| 3\.900 +\| 9\.100 +\| 128 +\| 0 +\|/)
    assert.match(text, /≥ 0\.5 +\| 59% +\| met/)
    assert.match(text, /≤ 1e-4 +\| 2\.0e-3 +\| missed/)
    assert.include(text, "engine webgpu 3.8e-6")
    assert.include(text, "1.31×")
    assert.include(text, "the sweep failed: model mlp_webgpu_x3 failed to load")
    assert.include(text, "**Failed**: 300 s at 256 outstanding, 1,000 requests answered")
    assert.include(text, "unexpected {\"RunFailed\":2}")
    assert.match(text, /\| workers2-fixed +\| signal SIGSEGV +\| 0\.800 +\| x \/ CommandEncoder is already finished/)
    assert.match(text, /\| workers2-locked +\| ok +\|/)
  })

  it("says when the bench stopped before its end", () => {
    assert.include(report({ gpu: { ...gpu, partial: true } }), "**Partial**: the bench stopped before its end")
    assert.notInclude(report({ gpu }), "Partial")
  })

  it("reads what is in the folder, and leaves out what is not", () => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gpu-report-"))
    try {
      Fs.writeFileSync(Path.join(dir, "gpu.json"), JSON.stringify(gpu))
      Fs.writeFileSync(Path.join(dir, "summary.txt"), "bench exit=0 seconds=90\n")
      const run = readRun(dir)
      assert.deepStrictEqual(run.gpu, gpu)
      assert.strictEqual(run.summary, "bench exit=0 seconds=90\n")
      assert.isUndefined(run.soak)
      assert.isUndefined(run.narrow)
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})
