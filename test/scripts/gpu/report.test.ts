import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import { type BenchRow, gpuGoals, readRun, report } from "../../../scripts/gpu/report.ts"

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

  it("computes the goals from the levels a bench stopped before its end finished, 3× at 64 and at 256", () => {
    const row = (provider: string, contender: string, outstanding: number, reqPerSec: number): BenchRow =>
      ({ provider, contender, outstanding, reqPerSec, p50: 1, p99: 2, rowsPerRun: 1, failed: 0 })
    const rows = [
      row("webgpu", "session.run, 256 rows a run (rows/s)", 1, 100_000),
      row("webgpu", "engine, batching", 256, 60_000),
      row("webgpu", "engine, batching", 64, 30_000),
      row("webgpu", "session.run per request", 64, 1_000),
      row("cpu", "engine, batching", 64, 12_000),
      row("cpu", "engine, batching", 256, 15_000)
    ]
    const goals = gpuGoals(rows, { "engine webgpu": 3e-6, "session.run webgpu": 2e-6 }, 16)
    assert.deepStrictEqual(goals.map((g) => [g.measured, g.pass]), [["60%", true], ["30.0×", true], ["2.5×", false], ["4.0×", true], ["3.0e-6", true]])
    assert.include(goals[2]!.goal, "cpu (intra-op 16) at 64")
    // A level the bench did not reach: its goals are missed, not made up.
    assert.deepStrictEqual(
      gpuGoals(rows.filter((r) => r.outstanding !== 256), {}, 16).map((g) => [g.measured, g.pass]),
      [["not measured", false], ["30.0×", true], ["2.5×", false], ["not measured", false], ["not measured", false]]
    )
    const { goals: _, ...noGoals } = gpu
    const partial = report({ gpu: { ...noGoals, partial: true, results: rows, maxAbsDiff: { "engine webgpu": 3e-6 } } })
    assert.include(partial, "Goals computed from the levels above (the bench wrote none)")
    assert.match(partial, /at 64 +\| ≥ 3× +\| 2\.5× +\| missed/)
    assert.include(report({ gpu: { ...noGoals, webgpu: { available: false, reason: "no adapter" } } }), "No goals measured (they need a WebGPU adapter).")
  })

  it("reports a soak stopped before its end from its partial JSON, or from soak.log's windows when the JSON is missing", () => {
    const partial = report({ soak: { partial: true, pass: false, seconds: 120, outstanding: 256, completed: 5000, mismatches: 0 } })
    assert.include(partial, "**Stopped before its end** (written at its last 10 s window; no verdict): 120 s at 256 outstanding")
    assert.notInclude(partial, "**Failed**")
    const log = "loading\n{\"t\":10,\"reqPerSec\":900}\n{\"t\":20,\"reqPerSec\":950}\n"
    const fromLog = report({ soakLog: log })
    assert.include(fromLog, "(soak.json was not brought back")
    assert.include(fromLog, "**Stopped before its summary** (soak.log, 2 window(s)")
    assert.include(fromLog, "{\"t\":20,\"reqPerSec\":950}")
    assert.include(report({ soakLog: "loading\n" }), "soak.log has no window line")
  })

  it("names a file that came back cut short instead of failing the whole report", () => {
    const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "gpu-report-"))
    try {
      Fs.writeFileSync(Path.join(dir, "narrow.json"), "{\"outcomes\": [")
      Fs.writeFileSync(Path.join(dir, "gpu.json"), JSON.stringify(gpu))
      const run = readRun(dir)
      assert.isUndefined(run.narrow)
      assert.deepStrictEqual(run.gpu, gpu)
      const text = report(run)
      assert.match(text, /\(narrow\.json came back unreadable: .*JSON.*; see check\.log and logs\.tar\.gz\)/)
      assert.include(text, "WebGPU found.")
    } finally {
      Fs.rmSync(dir, { recursive: true, force: true })
    }
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
