/**
 * OTLP export against a local collector stub: the layer on its own (engine on the fake pool,
 * through the Promise facade), the configuration from the standard variables, and the
 * standalone server, which exports when OTEL_EXPORTER_OTLP_ENDPOINT is set.
 */
import { afterEach, assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Layer, Logger, Option } from "effect"
import * as Grpc from "@grpc/grpc-js"
import * as Net from "node:net"
import { spawn } from "node:child_process"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as GrpcCodec from "../../src/grpc/GrpcCodec.ts"
import * as InferenceClient from "../../src/InferenceClient.ts"
import * as InferenceRequest from "../../src/InferenceRequest.ts"
import * as Otel from "../../src/Otel.ts"
import { echoInputs, makeFake } from "../fixtures/FakeModelPool.ts"
import * as Collector from "./Collector.ts"

const root = fileURLToPath(new URL("../..", import.meta.url))

const fromEnv = (env: Record<string, string>) =>
  Effect.runSync(Effect.provideService(Effect.gen(function*() {
    return yield* Otel.config({ serviceName: "default-name" })
  }), ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env })))

let collector: Collector.Collector | undefined
afterEach(async () => {
  await collector?.close()
  collector = undefined
})

describe("Otel", () => {
  it("reads nothing without OTEL_EXPORTER_OTLP_ENDPOINT, or with OTEL_SDK_DISABLED=true", () => {
    assert.isTrue(Option.isNone(fromEnv({})))
    assert.isTrue(Option.isNone(fromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://x:4318", OTEL_SDK_DISABLED: "true" })))
    assert.isFalse(Otel.isConfigured({}))
    assert.isFalse(Otel.isConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://x:4318", OTEL_SDK_DISABLED: "true" }))
    assert.isTrue(Otel.isConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://x:4318" }))
  })

  it("reads OTEL_SDK_DISABLED as the OpenTelemetry spec does, the same way in isConfigured and config: true in any case disables, any other value leaves export on", () => {
    const endpoint = "http://x:4318"
    for (const [value, disabled] of [["true", true], ["TRUE", true], [" True ", true], ["false", false], ["1", false], ["yes", false], ["", false]] as const) {
      const env = { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_SDK_DISABLED: value }
      assert.strictEqual(Otel.isConfigured(env), !disabled, `isConfigured with ${JSON.stringify(value)}`)
      assert.strictEqual(Option.isSome(fromEnv(env)), !disabled, `config with ${JSON.stringify(value)}`)
    }
  })

  it("reads the standard variables", () => {
    const options = fromEnv({
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318",
      OTEL_SERVICE_NAME: "svc",
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
      OTEL_EXPORTER_OTLP_HEADERS: "api-key=a%20b,tenant=t1",
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=test",
      OTEL_METRIC_EXPORT_INTERVAL: "1500"
    })
    assert.isTrue(Option.isSome(options))
    const o = Option.getOrThrow(options)
    assert.strictEqual(o.endpoint, "http://collector:4318")
    assert.strictEqual(o.serviceName, "svc")
    assert.strictEqual(o.protocol, "protobuf")
    assert.deepStrictEqual(o.headers, { "api-key": "a b", tenant: "t1" })
    assert.deepStrictEqual(o.attributes, { "deployment.environment": "test" })
    assert.strictEqual(Option.getOrThrow(fromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c" })).serviceName, "default-name")
  })

  it("takes the service's name and version as the OpenTelemetry spec orders them: OTEL_SERVICE_NAME, then OTEL_RESOURCE_ATTRIBUTES, then the program's", () => {
    const endpoint = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c" }
    const named = (env: Record<string, string>) => {
      const o = Option.getOrThrow(fromEnv({ ...endpoint, ...env }))
      return [o.serviceName, o.serviceVersion]
    }
    assert.deepStrictEqual(named({ OTEL_RESOURCE_ATTRIBUTES: "service.name=from-attrs,service.version=9.9" }), ["from-attrs", "9.9"])
    assert.deepStrictEqual(named({ OTEL_SERVICE_NAME: "svc", OTEL_RESOURCE_ATTRIBUTES: "service.name=from-attrs" }), ["svc", undefined])
    assert.deepStrictEqual(named({}), ["default-name", undefined])
  })

  it("refuses at startup, naming the variable: an export interval that is not a positive integer, headers or attributes that are not key=value, an endpoint that is not an http(s) URL", () => {
    const failure = (env: Record<string, string>) =>
      Effect.runSync(Effect.flip(Effect.provideService(Otel.config(), ConfigProvider.ConfigProvider, ConfigProvider.fromEnv({ env }))))
    const endpoint = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" }
    for (const [env, variable, text] of [
      [{ ...endpoint, OTEL_METRIC_EXPORT_INTERVAL: "0" }, "OTEL_METRIC_EXPORT_INTERVAL", "greater than 0"],
      [{ ...endpoint, OTEL_METRIC_EXPORT_INTERVAL: "-5" }, "OTEL_METRIC_EXPORT_INTERVAL", "greater than 0"],
      [{ ...endpoint, OTEL_BSP_SCHEDULE_DELAY: "0" }, "OTEL_BSP_SCHEDULE_DELAY", "greater than 0"],
      [{ ...endpoint, OTEL_EXPORTER_OTLP_HEADERS: "garbage" }, "OTEL_EXPORTER_OTLP_HEADERS", "\"garbage\" is not key=value"],
      [{ ...endpoint, OTEL_EXPORTER_OTLP_HEADERS: "api-key=1,=x" }, "OTEL_EXPORTER_OTLP_HEADERS", "\"=x\" is not key=value"],
      [{ ...endpoint, OTEL_RESOURCE_ATTRIBUTES: "env" }, "OTEL_RESOURCE_ATTRIBUTES", "is not key=value"],
      // Effect's OTLP resource reads the variable again and ends the program on it: refused here first.
      [{ ...endpoint, OTEL_RESOURCE_ATTRIBUTES: "team=a%ZZb" }, "OTEL_RESOURCE_ATTRIBUTES", "the value of \"team\" is not URL-encoded"],
      [{ ...endpoint, OTEL_EXPORTER_OTLP_HEADERS: "share=100%" }, "OTEL_EXPORTER_OTLP_HEADERS", "the value of \"share\" is not URL-encoded"],
      [{ OTEL_EXPORTER_OTLP_ENDPOINT: "notaurl" }, "OTEL_EXPORTER_OTLP_ENDPOINT", "expected an http:// or https:// URL"],
      [{ OTEL_EXPORTER_OTLP_ENDPOINT: "ftp://collector:4318" }, "OTEL_EXPORTER_OTLP_ENDPOINT", "expected an http:// or https:// URL"]
    ] as const) {
      const error = failure(env)
      assert.strictEqual(error._tag, "ConfigError", JSON.stringify(env))
      assert.include(error.message, variable)
      assert.include(error.message, text)
    }
    // Empty entries (a trailing comma) are fine; a blank variable is unset.
    const o = Option.getOrThrow(fromEnv({ ...endpoint, OTEL_EXPORTER_OTLP_HEADERS: "a=1,", OTEL_RESOURCE_ATTRIBUTES: " " }))
    assert.deepStrictEqual([o.headers, o.attributes], [{ a: "1" }, {}])
  })

  it("exports an Engine.infer span and the inference_ metrics to the collector; closing flushes them", async () => {
    collector = await Collector.start()
    const fake = Effect.runSync(makeFake(() => ({ latency: "2 millis" })))
    const client = await InferenceClient.make({ modelPool: fake.layer, otel: { endpoint: collector.url, serviceName: "otel-test" } })
    await client.infer(InferenceRequest.make("echo", echoInputs(1)))
    await client.close()
    const spans = Collector.spanNames(collector.bodies("/v1/traces"))
    assert.include(spans, "Engine.infer")
    const metrics = Collector.metricNames(collector.bodies("/v1/metrics"))
    assert.include(metrics, "inference_requests_total")
    assert.isTrue(metrics.some((m) => m.startsWith("inference_")))
    assert.include(Collector.serviceNames(collector.bodies("/v1/traces")), "otel-test")
    // A counter is a monotonic sum (what backends take for a counter), as /metrics declares it.
    const sums = collector.bodies("/v1/metrics").flatMap((body) =>
      (JSON.parse(body).resourceMetrics ?? []).flatMap((r: any) => r.scopeMetrics.flatMap((s: any) => s.metrics))
    ).filter((m: any) => m.name.endsWith("_total"))
    assert.isAbove(sums.length, 0)
    for (const m of sums) assert.strictEqual(m.sum?.isMonotonic, true, m.name)
    // Durations carry their unit (UCUM "s"), counts none ("1"): the exporter read "1" for seconds too.
    const exported = collector.bodies("/v1/metrics").flatMap((body) =>
      (JSON.parse(body).resourceMetrics ?? []).flatMap((r: any) => r.scopeMetrics.flatMap((s: any) => s.metrics))
    )
    const unitOf = (name: string) => exported.find((m: any) => m.name === name)?.unit
    assert.strictEqual(unitOf("inference_request_duration_seconds"), "s")
    assert.strictEqual(unitOf("inference_queue_duration_seconds"), "s")
    assert.strictEqual(unitOf("inference_requests_total"), "1")
  })

  it("the server exports traces and metrics when OTEL_EXPORTER_OTLP_ENDPOINT is set; a gRPC call has its server span, in the trace its traceparent names", async () => {
    collector = await Collector.start()
    const child = spawn(process.execPath, [Path.join(root, "src/bin/server.ts"), "--port", "0", "--grpc-port", "0", "--grace-period-seconds", "2"], {
      cwd: root,
      env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_SERVICE_NAME: "oip-server-test" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve))
    const port = await new Promise<number>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        output += chunk.toString("utf8")
        const match = /listening on http:\/\/[^:\s]+:(\d+)/.exec(output)
        if (match !== null) resolve(Number(match[1]))
      }
      child.stdout.on("data", onData)
      child.stderr.on("data", onData)
      void exited.then((code) => reject(new Error(`server exited with ${code}:\n${output}`)))
      setTimeout(() => reject(new Error(`server did not listen in time:\n${output}`)), 40_000).unref()
    })
    const body = { inputs: [{ name: "input", datatype: "FP32", shape: [1, 784], data: new Array(784).fill(0) }] }
    const response = await fetch(`http://127.0.0.1:${port}/v2/models/mlp/infer`, { method: "POST", body: JSON.stringify(body) })
    assert.strictEqual(response.status, 200, await response.text())
    // Over gRPC, with the caller's trace context in the metadata.
    const grpcAddress = /gRPC listening on (\S+)/.exec(output)![1]!
    const proto = Grpc.loadPackageDefinition(GrpcCodec.loadDefinitions()) as any
    const grpcClient = new proto.inference.GRPCInferenceService(grpcAddress, Grpc.credentials.createInsecure())
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
    const metadata = new Grpc.Metadata()
    metadata.set("traceparent", `00-${traceId}-00f067aa0ba902b7-01`)
    const grpcError = await new Promise<unknown>((resolve) =>
      grpcClient.ModelInfer({ model_name: "mlp", inputs: [{ name: "input", datatype: "FP32", shape: [1, 784], contents: { fp32_contents: new Array(784).fill(0) } }] }, metadata, (e: unknown) => resolve(e))
    )
    grpcClient.close()
    assert.isNull(grpcError)
    child.kill("SIGTERM")
    assert.strictEqual(await exited, 0, output)
    assert.include(Collector.spanNames(collector.bodies("/v1/traces")), "Engine.infer")
    assert.include(Collector.metricNames(collector.bodies("/v1/metrics")), "inference_requests_total")
    assert.include(Collector.serviceNames(collector.bodies("/v1/traces")), "oip-server-test")
    const spans = collector.bodies("/v1/traces").flatMap((b) =>
      (JSON.parse(b).resourceSpans ?? []).flatMap((r: any) => r.scopeSpans.flatMap((s: any) => s.spans))
    ) as Array<{ name: string; traceId: string; spanId: string; parentSpanId?: string; kind: number }>
    const server = spans.find((s) => s.name === "inference.GRPCInferenceService/ModelInfer")
    assert.isDefined(server, spans.map((s) => s.name).join(", "))
    assert.strictEqual(server!.traceId, traceId, "the trace the caller named")
    assert.strictEqual(server!.parentSpanId, "00f067aa0ba902b7")
    assert.isTrue(spans.some((s) => s.name === "Engine.infer" && s.parentSpanId === server!.spanId), "the engine's span under it")
  }, 60_000)

  it("an endpoint that nothing listens on: one warning naming it, and closing waits at most about a second", async () => {
    // A port that was free a moment ago: connections to it are refused.
    const port = await new Promise<number>((resolve) => {
      const probe = Net.createServer().listen(0, "127.0.0.1", () => {
        const address = probe.address() as Net.AddressInfo
        probe.close(() => resolve(address.port))
      })
    })
    const endpoint = `http://127.0.0.1:${port}`
    const warnings: Array<string> = []
    const capture = Logger.make((options) => {
      if (options.logLevel === "Warn") warnings.push(String(Array.isArray(options.message) ? options.message.join(" ") : options.message))
    })
    const program = Effect.gen(function*() {
      for (let i = 0; i < 20; i++) yield* Effect.sleep("20 millis").pipe(Effect.withSpan(`work-${i}`))
      yield* Effect.sleep("600 millis")
    })
    const exporter = Otel.layer({ endpoint, tracesExportInterval: "100 millis", metricsExportInterval: "100 millis" })
    let closingAt = 0
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      yield* Layer.build(exporter)
      yield* Effect.addFinalizer(() => Effect.sync(() => (closingAt = performance.now())))
      yield* program
    })).pipe(Effect.provide(Logger.layer([capture], { mergeWithExisting: false }))))
    const closeMs = performance.now() - closingAt
    assert.strictEqual(warnings.length, 1, JSON.stringify(warnings))
    assert.include(warnings[0], `OpenTelemetry export to ${endpoint} failed`)
    assert.isBelow(closeMs, 1500, "telemetry delays the shutdown by at most about a second")
  }, 20_000)
})
