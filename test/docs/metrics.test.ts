/**
 * docs/server.md documents each /metrics family once, and documents them all; the Grafana
 * dashboard (deploy/grafana/effect-onnx.json), docs/deploy.md and the manifests name only
 * families the page has.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Metric } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { makeApp, waitUntil, withFreshMetrics } from "../http/TestApp.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import * as Metrics from "../../src/http/Metrics.ts"

const root = fileURLToPath(new URL("../..", import.meta.url))
const serverDoc = Fs.readFileSync(Path.join(root, "docs/server.md"), "utf8")

/** The family names in the first column of the tables of the Metrics section, each time they appear. */
const documented = (): Array<string> => {
  const section = serverDoc.slice(serverDoc.indexOf("## Metrics"), serverDoc.indexOf("\n## ", serverDoc.indexOf("## Metrics") + 5))
  const names: Array<string> = []
  for (const line of section.split("\n")) {
    if (!line.startsWith("| `")) continue
    const first = line.split("|")[1]!
    for (const match of first.matchAll(/`([a-z0-9_]+)`/g)) names.push(match[1]!)
  }
  return names
}

const familiesOf = (text: string) =>
  text.split("\n").filter((l) => l.startsWith("# TYPE ")).map((l) => l.split(" ")[2]!)

describe("metrics documentation", () => {
  it.effect("every family on /metrics (both formats) is documented in docs/server.md exactly once, and nothing else is", () =>
    Effect.gen(function*() {
      // A pool with instance counts, as the ONNX pool has (`inference_instance_events_total`).
      const counters = { crashes: 0, deadlineKills: 0, abandonKills: 0, respawns: 0, respawnFailures: 0 }
      // slow uses the response cache: its requests below are looked up (misses) as they are admitted
      const app = yield* makeApp({
        routes: { metricsFormat: "triton" },
        config: { maxConcurrentRequests: 1, responseCacheBytes: 100_000 },
        slowMetadata: { responseCache: true },
        counters,
        modelLoads: { succeeded: 0, failed: 0 }
      })
      const body = { inputs: [{ name: "x", shape: [1, 4], datatype: "FP32", data: [1, 2, 3, 4] }] }
      assert.strictEqual((yield* app.send("POST", "/v2/models/echo/infer", body)).status, 200)
      // The fake pool does not batch; a batching model's run in the ONNX pool records its fill here.
      yield* Metric.update(Metric.withAttributes(OnnxModelPool.batchFill, { model: "echo" }), 0.5)
      // Nor does it have a stateful model, whose sequences under way a scrape reports here.
      yield* Metric.update(Metric.withAttributes(Metrics.sequencesGauge, { model: "echo", version: "1" }), 0)
      // One request running and one queued, so that the queue gauges have a row.
      yield* app.gate.close
      const fibers = [
        yield* Effect.forkChild(app.send("POST", "/v2/models/slow/infer", body), { startImmediately: true }),
        yield* Effect.forkChild(app.send("POST", "/v2/models/slow/infer", body), { startImmediately: true })
      ]
      yield* waitUntil(() => Effect.runSync(app.engine.pending) === 2)
      const exposed = familiesOf((yield* app.send("GET", "/metrics")).text)
      for (const f of fibers) yield* Fiber.interrupt(f)
      const docs = documented()
      assert.deepStrictEqual(docs.filter((n, i) => docs.indexOf(n) !== i), [], "documented twice")
      // GC pauses may not have happened yet in this process; the family is declared either way.
      assert.deepStrictEqual([...new Set(exposed)].sort(), [...docs].sort())
    }).pipe(withFreshMetrics))

  it("docs/deploy.md and the Kubernetes manifests name only documented families", () => {
    const docs = new Set(documented())
    for (const file of ["docs/deploy.md", "deploy/k8s/hpa.yaml", "deploy/k8s/deployment.yaml", "deploy/kserve/servingruntime.yaml"]) {
      const text = Fs.readFileSync(Path.join(root, file), "utf8")
      for (const match of text.matchAll(/\b((?:inference|nv_inference)_[a-z0-9_]+)/g)) {
        assert.isTrue(docs.has(match[1]!.replace(/_(bucket|sum|count)$/, "")), `${file}: ${match[1]} is not a family on /metrics`)
      }
    }
  })

  it("the Grafana dashboard parses and queries only documented families", () => {
    const dashboard = JSON.parse(Fs.readFileSync(Path.join(root, "deploy/grafana/effect-onnx.json"), "utf8")) as {
      panels: Array<{ title: string; targets: Array<{ expr: string }> }>
      templating: { list: Array<{ query?: string }> }
    }
    const docs = new Set(documented())
    const expressions = [
      ...dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr)),
      ...dashboard.templating.list.map((v) => v.query ?? "").filter((q) => q.startsWith("label_values"))
    ]
    assert.isAtLeast(dashboard.panels.length, 10)
    for (const expr of expressions) {
      const names = [...expr.matchAll(/\b((?:inference|process|nodejs|nv_inference)_[a-z0-9_]+)/g)].map((m) => m[1]!.replace(/_(bucket|sum|count)$/, ""))
      assert.isAbove(names.length, 0, expr)
      for (const name of names) assert.isTrue(docs.has(name), `${name} (in ${expr}) is not a documented family`)
      // The dashboard's $instance picks a replica: every selector but the one that lists them must honour it.
      if (expr !== "label_values(process_start_time_seconds, instance)") {
        for (const selector of expr.matchAll(/\b(?:inference|process|nodejs)_[a-z0-9_]+(\{[^}]*\})?/g)) {
          assert.include(selector[1] ?? "", `instance=~"$instance"`, `${selector[0]} (in ${expr}) ignores $instance`)
        }
      }
    }
  })
})
