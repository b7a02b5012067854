/**
 * Overload at three times capacity, over a real socket, on the real server process and the
 * bundled MLP. Capacity is what the server holds at once: `MAX_CONCURRENT_REQUESTS` running plus
 * `MAX_QUEUED_REQUESTS` queued (small here, so that the bound is hit). First a closed loop at
 * capacity measures the throughput; then three times as many clients, each sending again at once
 * when refused (the harshest client: none honours Retry-After), with one more client probing
 * `GET /v2/health/live` to measure how fast the saturated server answers anything at all.
 *
 * What must hold:
 * - every answer is 200 or 429 (no 5xx, no reset);
 * - each 429 carries Retry-After and a JSON error, and is answered without waiting for the
 *   queue: about as fast as a health check (both wait only for the event loop, which the retry
 *   flood saturates), and faster than an admitted answer at the median and at p99;
 * - admitted requests keep a bounded latency: on average below what the same goodput would give
 *   if every client were admitted (Little's law: 3 × capacity × service time), p99 within a
 *   slack of that; goodput does not collapse (at least a third of the slower of two capacity
 *   measures, one before the overload and one after: the shared machine's speed moves between them);
 * - the server's memory stays bounded (it levels off after ~20 s of this load, ~100 MiB above
 *   idle, as the V8 heap grows; a 48 s run measured that, this test only bounds the growth).
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { closedLoop, mlpBody, type Outcome, quantile, rssOf, type Running, startServer, stopServer } from "./ServerProcess.ts"

const maxConcurrent = 1
const maxQueued = 16
const capacity = maxConcurrent + maxQueued
const path = "/v2/models/mlp/infer"

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Phase {
  readonly outcomes: Array<Outcome>
  readonly probes: Array<Outcome>
  readonly seconds: number
  readonly rss: Array<number>
}

/** `clients` closed loops (and a health probe) for `ms`, sampling the server's RSS every 200 ms. */
const run = async (server: Running, clients: number, ms: number): Promise<Phase> => {
  const outcomes: Array<Outcome> = []
  const probes: Array<Outcome> = []
  const rss: Array<number> = []
  const body = mlpBody()
  const started = performance.now()
  const loop = closedLoop({ port: server.port, clients, path, body: () => body, record: (o) => void outcomes.push(o) })
  const probe = closedLoop({ port: server.port, clients: 1, path: "/v2/health/live", body: () => undefined, record: (o) => void probes.push(o) })
  const sampler = setInterval(() => {
    const r = rssOf(server.child.pid)
    if (r !== undefined) rss.push(r)
  }, 200)
  await sleep(ms)
  loop.stop()
  probe.stop()
  await Promise.all([loop.done, probe.done])
  clearInterval(sampler)
  return { outcomes, probes, seconds: (performance.now() - started) / 1000, rss }
}

const count = (outcomes: ReadonlyArray<Outcome>) => {
  const counts: Record<string, number> = {}
  for (const o of outcomes) counts[o.label] = (counts[o.label] ?? 0) + 1
  return counts
}

const mb = (bytes: number) => Math.round(bytes / 2 ** 20)
const round = (x: number) => +x.toFixed(1)

describe("overload at 3× capacity", () => {
  let server: Running

  beforeAll(async () => {
    server = await startServer([], {
      MAX_CONCURRENT_REQUESTS: String(maxConcurrent),
      MAX_QUEUED_REQUESTS: String(maxQueued)
    })
  }, 30_000)

  afterAll(() => stopServer(server))

  it("admitted requests keep a bounded latency, the rest get a fast 429 with Retry-After, memory stays bounded", async () => {
    // Warm-up: sessions, JIT, connection pools.
    await run(server, 4, 1000)

    const atCapacity = await run(server, capacity, 2500)
    const ok = atCapacity.outcomes.filter((o) => o.status === 200)
    const throughput = ok.length / atCapacity.seconds
    const rssBefore = rssOf(server.child.pid) ?? 0

    const overload = await run(server, 3 * capacity, 6000)
    const counts = count(overload.outcomes)
    const admittedMs = overload.outcomes.filter((o) => o.status === 200).map((o) => o.ms)
    const refused = overload.outcomes.filter((o) => o.status === 429)
    const refusedMs = refused.map((o) => o.ms)
    const probeMs = overload.probes.filter((o) => o.status === 200).map((o) => o.ms)
    const admitted = {
      mean: admittedMs.reduce((a, b) => a + b, 0) / Math.max(1, admittedMs.length),
      p50: quantile(admittedMs, 0.5),
      p99: quantile(admittedMs, 0.99)
    }
    const fast = { p50: quantile(refusedMs, 0.5), p99: quantile(refusedMs, 0.99) }
    const live = { p50: quantile(probeMs, 0.5), p99: quantile(probeMs, 0.99) }
    const goodput = admittedMs.length / overload.seconds
    // The service time under this load, from the same phase (the machine is shared: its speed varies).
    const serviceMs = 1000 / goodput
    const unboundedMeanMs = 3 * capacity * serviceMs
    const p99BoundMs = 10 * capacity * serviceMs + 500
    const rssMax = Math.max(...overload.rss, rssBefore)
    // Capacity again, after: the machine is shared (npm test runs two files at once), so its speed
    // moves between phases; a collapse shows against the slower of the two measures, noise does not.
    const after = await run(server, capacity, 2500)
    const throughputAfter = after.outcomes.filter((o) => o.status === 200).length / after.seconds
    const report = JSON.stringify({
      capacity: { clients: capacity, reqPerSec: Math.round(throughput), reqPerSecAfter: Math.round(throughputAfter), counts: count(atCapacity.outcomes), p99: round(quantile(ok.map((o) => o.ms), 0.99)) },
      overload: {
        clients: 3 * capacity,
        counts,
        goodput: Math.round(goodput),
        admitted: { mean: round(admitted.mean), unboundedMeanMs: Math.round(unboundedMeanMs), p50: round(admitted.p50), p99: round(admitted.p99), p99BoundMs: Math.round(p99BoundMs) },
        refused: { p50: round(fast.p50), p99: round(fast.p99) },
        live: { count: probeMs.length, p50: round(live.p50), p99: round(live.p99) }
      },
      rssMB: { before: mb(rssBefore), max: mb(rssMax) }
    })
    console.log(`overload: ${report}`)

    for (const label of Object.keys(counts)) assert.include(["200", "429"], label, `only 200 and 429: ${report}`)
    assert.deepStrictEqual(Object.keys(count(overload.probes)), ["200"], `the health probe is answered: ${report}`)
    // How many refusals a second comes from how fast a refusal is against a run, which varies with
    // the shared machine's load (from 0.3 to 2 refusals per admitted answer was seen): the bound
    // must have been hit many times, and each refusal must say it was the queue's bound.
    assert.isAtLeast(refused.length, admittedMs.length / 10, `the queue bound was hit: ${report}`)
    for (const o of refused) {
      assert.match(o.retryAfter ?? "", /^[1-9]\d*$/, "every 429 carries Retry-After, whole seconds from the drain rate")
      assert.match(JSON.parse(o.body).error, /^queue full: 16 requests already queued/)
    }
    assert.isBelow(fast.p50, 2 * live.p50 + 5, `a 429 is about as fast as a health check (median): ${report}`)
    assert.isBelow(fast.p99, 2 * live.p99 + 20, `a 429 is about as fast as a health check (p99): ${report}`)
    assert.isBelow(fast.p50, admitted.p50, `a 429 comes faster than an admitted answer (median): ${report}`)
    // At the tail both wait on the same busy event loop (a 429 was seen 1 ms above an admitted
    // p99 of 37 ms): a refusal's tail is no worse than an admitted answer's beyond that jitter,
    // which the health probe measures.
    assert.isBelow(fast.p99, admitted.p99 + live.p99, `a 429 comes no later than an admitted answer (p99): ${report}`)
    assert.isBelow(admitted.mean, unboundedMeanMs, `admitted latency is bounded by the queue, not by the number of clients: ${report}`)
    assert.isBelow(admitted.p99, p99BoundMs, `admitted p99 is bounded: ${report}`)
    assert.isAtLeast(goodput, Math.min(throughput, throughputAfter) / 3, `goodput does not collapse: ${report}`)
    assert.isBelow(rssMax - rssBefore, 160 * 2 ** 20, `memory stays bounded: ${report}`)
  }, 40_000)
})
