/**
 * micro: the per-request cost of the Effect patterns on the engine's request path, one after
 * another in one fiber (µs per operation, median over alternating rounds). It backs the
 * suggestions in RESULTS.md; not part of `npm run bench` (no goal), run it by hand:
 *
 *   node --expose-gc bench/micro.ts [--quick]
 *
 * Each operation awaits a Deferred that is completed on a microtask, as a pool reply completes
 * a request, wrapped the way the engine wraps it:
 *   - `Effect.timeoutOrElse` (awaitWithDeadlines): raceFirst forks two fibers and arms a timer;
 *   - a hand-made alternative: one `Effect.callback` with its own setTimeout/clearTimeout;
 *   - `Effect.withSpan` (Engine.infer), with and without its stack-trace capture;
 *   - `Metric.update` of a labelled counter (TelemetryCollector.layer), as an Effect.
 */
import { Deferred, Duration, Effect, Exit, Metric } from "effect"
import { alternate, fmt, log, median, parseArgs, section, table, writeResults } from "./lib/common.ts"

const args = parseArgs()
const N = args.quick ? 20_000 : 100_000
const ROUNDS = args.quick ? 3 : 7

const awaitReply = () =>
  Effect.suspend(() => {
    const d = Deferred.makeUnsafe<number>()
    queueMicrotask(() => Deferred.doneUnsafe(d, Exit.succeed(1)))
    return Deferred.await(d)
  })

const counter = Metric.withAttributes(Metric.counter("bench_micro_total"), { model: "mlp", outcome: "success" })
const fiveSeconds = Duration.seconds(5)

const ops: Record<string, { readonly label: string; readonly op: () => Effect.Effect<unknown> }> = {
  base: { label: "await a Deferred completed on a microtask (baseline)", op: awaitReply },
  timeout: {
    label: "… + Effect.timeoutOrElse(5 s)  [engine: awaitWithDeadlines]",
    op: () => awaitReply().pipe(Effect.timeoutOrElse({ duration: fiveSeconds, orElse: () => Effect.succeed(0) }))
  },
  callbackTimer: {
    label: "… the same deadline as one Effect.callback + setTimeout/clearTimeout",
    op: () =>
      Effect.callback<number>((resume) => {
        const timer = setTimeout(() => resume(Effect.succeed(0)), 5000)
        queueMicrotask(() => {
          clearTimeout(timer)
          resume(Effect.succeed(1))
        })
      })
  },
  span: {
    label: "… + Effect.withSpan with 3 attributes  [engine: Engine.infer]",
    op: () => awaitReply().pipe(Effect.withSpan("Engine.infer", { attributes: { a: "mlp", b: "id", c: "Low" } }))
  },
  spanNoStack: {
    label: "… + Effect.withSpan, captureStackTrace: false",
    op: () => awaitReply().pipe(Effect.withSpan("Engine.infer", { attributes: { a: "mlp", b: "id", c: "Low" } }, { captureStackTrace: false }))
  },
  onExit: { label: "… + Effect.onExit", op: () => awaitReply().pipe(Effect.onExit(() => Effect.void)) },
  metric: { label: "… + Metric.update of a labelled counter  [telemetry, ×3–4 per request]", op: () => awaitReply().pipe(Effect.tap(() => Metric.update(counter, 1))) }
}

const run = (op: () => Effect.Effect<unknown>) =>
  Effect.runPromise(Effect.gen(function*() {
    const t = performance.now()
    for (let i = 0; i < N; i++) yield* op()
    return ((performance.now() - t) * 1000) / N
  }))

const main = async () => {
  log(`micro: ${ROUNDS} rounds × ${N} operations`)
  for (const o of Object.values(ops)) await run(o.op)
  const res = await alternate(ROUNDS, Object.entries(ops).map(([name, o]) => ({ name, run: () => run(o.op) })), undefined, "micro")
  const base = median(res["base"]!)
  const rows = Object.entries(ops).map(([name, o]) => ({
    operation: o.label,
    "µs/op": fmt(median(res[name]!), 3),
    "µs over baseline": name === "base" ? "" : fmt(median(res[name]!) - base, 3)
  }))
  section(`micro: Effect patterns on the request path (${ROUNDS} rounds × ${N} sequential operations, medians)`)
  console.log(table(rows))
  writeResults("micro", { args: { quick: args.quick, n: N, rounds: ROUNDS }, table: rows, rounds: res })
}

await main()
