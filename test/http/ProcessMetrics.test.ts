import { assert, describe, it } from "@effect/vitest"
import * as ProcessMetrics from "../../src/http/ProcessMetrics.ts"

const value = (text: string, sample: string): number => {
  const line = text.split("\n").find((l) => l.startsWith(`${sample} `))
  assert.isDefined(line, `${sample} in\n${text}`)
  return Number(line!.slice(sample.length + 1))
}

describe("ProcessMetrics", () => {
  it("reports CPU, memory, start time, event-loop lag, heap and GC pauses in base units", async () => {
    const metrics = ProcessMetrics.make()
    try {
      // Block the event loop for about 60 ms, and allocate enough to make V8 collect.
      await new Promise((r) => setTimeout(r, 20))
      const until = performance.now() + 60
      while (performance.now() < until) { /* busy */ }
      let garbage: Array<Array<number>> = []
      for (let i = 0; i < 200; i++) garbage.push(Array.from({ length: 10_000 }, (_, j) => j))
      garbage = []
      await new Promise((r) => setTimeout(r, 50))
      const text = metrics.render()
      assert.isAbove(value(text, "process_cpu_seconds_total"), 0)
      assert.closeTo(value(text, "process_cpu_seconds_total"), value(text, "process_cpu_user_seconds_total") + value(text, "process_cpu_system_seconds_total"), 1e-6)
      assert.isAbove(value(text, "process_resident_memory_bytes"), 10 * 1024 * 1024)
      assert.closeTo(value(text, "process_start_time_seconds"), Date.now() / 1000 - process.uptime(), 2)
      assert.isAtLeast(value(text, "nodejs_eventloop_lag_max_seconds"), 0.04, "the 60 ms block shows, in seconds")
      assert.isBelow(value(text, "nodejs_eventloop_lag_max_seconds"), 5)
      assert.isAbove(value(text, "nodejs_heap_size_used_bytes"), 0)
      assert.match(text, /^nodejs_gc_duration_seconds_count\{kind="(minor|major|incremental|weakcb)"\} [1-9]\d*$/m)
      assert.match(text, /^nodejs_version_info\{version="v\d+\.\d+\.\d+",major="\d+",minor="\d+",patch="\d+"\} 1$/m)
      if (process.platform === "linux") assert.isAbove(value(text, "process_open_fds"), 2)
      // The lag window restarts at each scrape.
      assert.isBelow(value(metrics.render(), "nodejs_eventloop_lag_max_seconds"), 0.04)
      void garbage
    } finally {
      metrics.stop()
    }
  })
})
