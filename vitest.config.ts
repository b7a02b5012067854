import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Two files at a time on this 2-core machine: most of the suite's time is spent waiting on
    // the processes it spawns (the CLI and server binaries, session processes), so two overlap
    // well. Measured 2026-12-07 at 668de51: one at a time 326-343 s, two at a time 230, 251 and
    // 258 s, every test passing each time (the timing tests allow for a busy machine).
    maxWorkers: 2,
    // Sharing the module cache between files saves about 1 s of imports per file (346 s to 270 s
    // for the suite, measured one at a time). No test relies on fresh module state: servers,
    // pools and runtimes are built per test and released.
    isolate: false
  }
})
