/**
 * WebGPU against the CPU, where an adapter is found (the probe runs once, in a child process:
 * `scripts/gpu/probe.ts`); elsewhere the GPU suite is skipped and its name says why. The checks
 * themselves live in `scripts/gpu/checks.ts` so that a GPU host without the test runner runs the
 * same code (`node scripts/gpu/checks.ts`).
 */
import { describe, expect, it } from "@effect/vitest"
import * as Checks from "../../scripts/gpu/checks.ts"
import { probeWebGpu } from "../../scripts/gpu/probe.ts"

const probe = await probeWebGpu()
const available = probe.available
const skipped = probe.available ? "" : ` (skipped: no WebGPU adapter here: ${probe.reason})`
if (!available) console.log(`test/gpu: the WebGPU suite is skipped: no WebGPU adapter here: ${probe.available ? "" : probe.reason}`)

describe.skipIf(!available)(`WebGPU outputs equal the CPU's within ${Checks.tolerance}${skipped}`, () => {
  it("through the pool, on batches of 1, 3, 64 and 256 rows, in processes by default", async () => {
    expect(await Checks.poolMatchesCpu({ expectGpu: true })).toMatch(/^pool: gpu model on webgpu in processes/)
  }, 120_000)

  it("through the engine with batching, 512 requests of 1-4 rows", async () => {
    expect(await Checks.engineMatchesCpu({ expectGpu: true })).toMatch(/on webgpu match cpu/)
  }, 120_000)
})

describe("a GPU model's native crash", () => {
  it(`fails one request and is replaced, the server lives (on ${available ? "webgpu" : "cpu, after the fallback"})`, async () => {
    expect(await Checks.crashIsContained({ expectGpu: available })).toMatch(new RegExp(`SIGSEGV in a ${available ? "webgpu" : "cpu"} instance failed one request`))
  }, 120_000)
})
