/**
 * The deployment files agree with the server (no cluster needed): every Kubernetes and KServe
 * manifest under deploy/, the Containerfile and the nginx configuration are parsed, and their
 * ports, paths, probes, grace periods and environment variables are checked against what the code
 * reads and serves: `ServerConfig.decode` (flags through its options table) and `AsyncConfig.config` decide which variables exist and
 * what they mean, and the real routes (over a test pool) answer the probe and metrics paths.
 */
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Duration, Effect } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import * as Yaml from "yaml"
import * as AsyncConfig from "../../src/AsyncConfig.ts"
import * as ServerConfig from "../../src/http/ServerConfig.ts"
import { makeApp, withFreshMetrics } from "../http/TestApp.ts"

const root = fileURLToPath(new URL("../..", import.meta.url))
const read = (file: string) => Fs.readFileSync(Path.join(root, file), "utf8")

/** Every YAML document under deploy/, with the file it came from. */
const manifests: ReadonlyArray<{ readonly file: string; readonly doc: any }> = ["deploy/k8s", "deploy/kserve"].flatMap((dir) =>
  Fs.readdirSync(Path.join(root, dir)).filter((f) => /\.ya?ml$/.test(f)).sort().flatMap((f) => {
    const file = `${dir}/${f}`
    return Yaml.parseAllDocuments(read(file)).map((d) => {
      if (d.errors.length > 0) throw new Error(`${file}: ${d.errors.map((e) => e.message).join("; ")}`)
      return { file, doc: d.toJS() }
    })
  })
)
const ofKind = (kind: string) => manifests.filter((m) => m.doc?.kind === kind)
const one = (kind: string) => {
  const found = ofKind(kind)
  assert.strictEqual(found.length, 1, `one ${kind}`)
  return found[0]!.doc
}

// ---- what the server reads -------------------------------------------------------------------

const asyncConfig = (env: Record<string, string>) =>
  Effect.runSync(Effect.result(Effect.provideService(
    Effect.gen(function*() {
      return yield* AsyncConfig.config
    }),
    ConfigProvider.ConfigProvider,
    ConfigProvider.fromEnv({ env })
  )))

/** Container args (`--flag value`, the form the manifests use) as `ServerConfig.decode`'s flags, through the one options table. */
const flagsOf = (args: ReadonlyArray<string>): Partial<Record<keyof ServerConfig.ServerConfig, string>> | string => {
  const flags: Partial<Record<keyof ServerConfig.ServerConfig, string>> = {}
  for (let i = 0; i < args.length; i += 2) {
    const option = ServerConfig.options.find((o) => `--${o.flag}` === args[i])
    if (option === undefined || args[i + 1] === undefined) return `unknown flag or missing value: ${args[i]}`
    flags[option.key] = option.repeatable === true && flags[option.key] !== undefined ? `${flags[option.key]},${args[i + 1]}` : args[i + 1]!
  }
  return flags
}

const parse = (args: ReadonlyArray<string>, env: Record<string, string>) => {
  const flags = flagsOf(args)
  return typeof flags === "string" ? new ServerConfig.ConfigError({ message: flags }) : ServerConfig.decode(flags, env)
}

const describeBoth = (env: Record<string, string>) => JSON.stringify([parse([], env), asyncConfig(env)], (_, v) => (Duration.isDuration(v) ? Duration.toMillis(v) : v))

/**
 * Whether the server reads `name`: some value of it changes the server's or the engine's
 * configuration, or is refused by them. A misspelt variable changes nothing and fails.
 */
const serverReads = (name: string, value: string): boolean => {
  const unset = describeBoth({})
  return [value, "1", "2", "not a value"].some((v) => describeBoth({ [name]: v }) !== unset)
}

/** The server's and the engine's configuration for a container's args and env, or the error. */
const configOf = (args: ReadonlyArray<string>, env: Record<string, string>) => {
  const server = parse(args, env)
  if (!("port" in server)) throw new Error(`the server refuses args ${JSON.stringify(args)} env ${JSON.stringify(env)}: ${"message" in server ? server.message : "--help"}`)
  const engine = asyncConfig(env)
  if (engine._tag !== "Success") throw new Error(`the engine refuses env ${JSON.stringify(env)}: ${String(engine.failure)}`)
  return { server, engine: engine.success }
}

const envOf = (container: any): Record<string, string> => Object.fromEntries((container.env ?? []).map((e: any) => [e.name, String(e.value)]))

/** The seconds a container's preStop pauses (`sleep N`), 0 without one. */
const preStopSeconds = (container: any): number => {
  const command: Array<string> | undefined = container.lifecycle?.preStop?.exec?.command
  if (command === undefined) return container.lifecycle?.preStop?.sleep?.seconds ?? 0
  const match = /^sleep (\d+)$/.exec(command.join(" "))
  assert.isNotNull(match, `preStop is a plain sleep: ${command.join(" ")}`)
  return Number(match![1])
}

/** The containers that run the server, with the pod-level settings that matter to them. */
const serverContainers = () => {
  const deployment = one("Deployment")
  const runtime = one("ServingRuntime")
  return [
    { where: "deploy/k8s Deployment", container: deployment.spec.template.spec.containers[0], terminationGraceSeconds: deployment.spec.template.spec.terminationGracePeriodSeconds as number, pod: deployment.spec.template },
    // A ServingRuntime cannot set the pod's grace period: Kubernetes' default applies.
    { where: "deploy/kserve ServingRuntime", container: runtime.spec.containers[0], terminationGraceSeconds: 30, pod: undefined }
  ]
}

const portNumber = (container: any, port: string | number): number =>
  typeof port === "number" ? port : container.ports.find((p: any) => p.name === port)?.containerPort

describe("deploy manifests", () => {
  it("parse as YAML, each with an apiVersion and a kind", () => {
    assert.isAtLeast(manifests.length, 7)
    for (const { doc, file } of manifests) {
      assert.isString(doc.apiVersion, file)
      assert.isString(doc.kind, file)
      assert.isString(doc.metadata?.name, file)
    }
  })

  it("set only environment variables the server reads, with values it accepts", () => {
    for (const { container, where } of serverContainers()) {
      const env = envOf(container)
      assert.isAbove(Object.keys(env).length, 0, where)
      for (const [name, value] of Object.entries(env)) assert.isTrue(serverReads(name, value), `${where}: the server does not read ${name}`)
      configOf(container.args ?? [], env)
    }
  })

  it("listen on every interface, on the port the container declares, serving the mounted repository", () => {
    for (const { container, pod, where } of serverContainers()) {
      const { server } = configOf(container.args ?? [], envOf(container))
      assert.strictEqual(server.host, "0.0.0.0", where)
      // The HTTP port, and the gRPC one where the container declares it (KServe routes one port per runtime).
      const ports = container.ports.map((p: any) => p.containerPort)
      assert.strictEqual(ports[0], server.port, where)
      assert.includeMembers([server.port, server.grpcPort], ports, where)
      if (pod === undefined) {
        // KServe's storage initializer puts storageUri at /mnt/models.
        assert.strictEqual(server.models, "/mnt/models", where)
      } else {
        const mount = container.volumeMounts.find((m: any) => server.models === m.mountPath || server.models.startsWith(m.mountPath + "/"))
        assert.isDefined(mount, `${where}: the model repository ${server.models} is a mounted volume`)
        assert.isDefined(pod.spec.volumes.find((v: any) => v.name === mount.name), where)
      }
    }
  })

  it("give the drain its time: terminationGracePeriodSeconds > preStop pause + GRACE_PERIOD_SECONDS", () => {
    for (const { container, terminationGraceSeconds, where } of serverContainers()) {
      const { server } = configOf(container.args ?? [], envOf(container))
      const pause = preStopSeconds(container)
      assert.isAbove(pause, 0, `${where}: a preStop pause covers endpoint removal`)
      assert.isAbove(terminationGraceSeconds, pause + Duration.toSeconds(server.gracePeriod), where)
    }
  })

  it.effect("probe paths the server answers: readiness turns 503 when the drain begins, liveness stays 200", () =>
    withFreshMetrics(Effect.gen(function*() {
      const app = yield* makeApp()
      for (const { container, where } of serverContainers()) {
        const { server } = configOf(container.args ?? [], envOf(container))
        assert.strictEqual(portNumber(container, container.readinessProbe.httpGet.port), server.port, where)
        assert.strictEqual(portNumber(container, container.livenessProbe.httpGet.port), server.port, where)
        assert.strictEqual((yield* app.send("GET", container.readinessProbe.httpGet.path)).status, 200, where)
        assert.strictEqual((yield* app.send("GET", container.livenessProbe.httpGet.path)).status, 200, where)
        if (container.startupProbe !== undefined) assert.strictEqual((yield* app.send("GET", container.startupProbe.httpGet.path)).status, 200, where)
      }
      yield* app.lifecycle.beginShutdown
      for (const { container, where } of serverContainers()) {
        assert.strictEqual((yield* app.send("GET", container.readinessProbe.httpGet.path)).status, 503, `${where}: readiness during the drain`)
        assert.strictEqual((yield* app.send("GET", container.livenessProbe.httpGet.path)).status, 200, `${where}: liveness during the drain`)
      }
    }))
  )

  it.effect("scrape and autoscale on what /metrics exposes", () =>
    withFreshMetrics(Effect.gen(function*() {
      const app = yield* makeApp()
      const deployment = one("Deployment")
      const container = deployment.spec.template.spec.containers[0]
      const { server } = configOf(container.args ?? [], envOf(container))
      const annotations = deployment.spec.template.metadata.annotations
      assert.strictEqual(Number(annotations["prometheus.io/port"]), server.port)
      const runtime = one("ServingRuntime")
      assert.strictEqual(Number(runtime.spec.annotations["prometheus.kserve.io/port"]), server.port)
      assert.strictEqual(runtime.spec.annotations["prometheus.kserve.io/path"], annotations["prometheus.io/path"])
      const page = yield* app.send("GET", annotations["prometheus.io/path"])
      assert.strictEqual(page.status, 200)

      const hpa = one("HorizontalPodAutoscaler")
      assert.strictEqual(hpa.spec.scaleTargetRef.kind, "Deployment")
      assert.strictEqual(hpa.spec.scaleTargetRef.name, deployment.metadata.name)
      for (const metric of hpa.spec.metrics) {
        assert.strictEqual(metric.type, "Pods")
        assert.match(page.text, new RegExp(`^# TYPE ${metric.pods.metric.name} gauge$`, "m"), `${metric.pods.metric.name} is a gauge on /metrics`)
      }
    }))
  )

  it("route the Service to the server's port, and roll out without losing capacity", () => {
    const deployment = one("Deployment")
    const service = one("Service")
    const container = deployment.spec.template.spec.containers[0]
    const { server } = configOf(container.args ?? [], envOf(container))
    assert.deepStrictEqual(service.spec.selector, deployment.spec.selector.matchLabels)
    assert.deepStrictEqual(deployment.spec.template.metadata.labels, deployment.spec.selector.matchLabels)
    for (const p of service.spec.ports) {
      assert.strictEqual(portNumber(container, p.targetPort), p.name === "grpc" ? server.grpcPort : server.port, `Service port ${p.name}`)
    }
    assert.strictEqual(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0)
    assert.isDefined(container.resources.requests.cpu)
    assert.isDefined(container.resources.requests.memory)
  })

  it("declare a KServe runtime for onnx over v2, and an InferenceService of the bundled MLP on it", () => {
    const runtime = one("ServingRuntime")
    const isvc = one("InferenceService")
    assert.strictEqual(runtime.spec.containers[0].name, "kserve-container")
    assert.include(runtime.spec.supportedModelFormats.map((f: any) => f.name), "onnx")
    assert.include(runtime.spec.protocolVersions, "v2")
    // grpc-v2 only together with a port for it.
    if (runtime.spec.protocolVersions.includes("grpc-v2")) assert.isAbove(runtime.spec.containers[0].ports.length, 1)
    const model = isvc.spec.predictor.model
    assert.strictEqual(model.runtime, runtime.metadata.name)
    assert.strictEqual(model.modelFormat.name, "onnx")
    assert.strictEqual(model.protocolVersion, "v2")
    const claim = /^pvc:\/\/([^/]+)\/(.+)$/.exec(model.storageUri)
    assert.isNotNull(claim, model.storageUri)
    assert.strictEqual(one("PersistentVolumeClaim").metadata.name, claim![1])
    // The Job that fills the claim copies the bundled MLP into the directory storageUri names.
    const job = one("Job").spec.template.spec
    assert.strictEqual(job.volumes[0].persistentVolumeClaim.claimName, claim![1])
    const mount = job.containers[0].volumeMounts[0].mountPath
    assert.include(job.containers[0].command.join(" "), `cp -R /models/mlp ${mount}/${claim![2]}/`)
    assert.isTrue(Fs.existsSync(Path.join(root, "models/mlp/model.onnx")))
  })

  it("use one image everywhere", () => {
    const images = new Set<string>()
    const walk = (node: any): void => {
      if (Array.isArray(node)) node.forEach(walk)
      else if (node !== null && typeof node === "object") for (const [k, v] of Object.entries(node)) k === "image" ? images.add(String(v)) : walk(v)
    }
    manifests.forEach((m) => walk(m.doc))
    assert.strictEqual(images.size, 1, [...images].join(", "))
  })
})

describe("Containerfile", () => {
  const text = read("Containerfile").replace(/\\\n/g, " ")
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"))
  const runtimeStage = lines.slice(lines.findLastIndex((l) => l.startsWith("FROM ")))
  const env = Object.fromEntries(runtimeStage.filter((l) => l.startsWith("ENV ")).flatMap((l) => [...l.slice(4).matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1]!, m[2]!])))

  it("defaults BASE to the official Node 22 slim image and installs production dependencies only, without onnxruntime's download", () => {
    assert.match(text, /^ARG BASE=docker\.io\/library\/node:22-slim$/m)
    assert.match(text, /npm ci --omit=dev/)
    assert.match(text, /^COPY package\.json package-lock\.json \.npmrc/m)
    assert.match(read(".npmrc"), /^onnxruntime-node-install=skip$/m)
  })

  it("sets only variables the server reads, listening on 0.0.0.0 on an exposed port, models at /models", () => {
    for (const [name, value] of Object.entries(env)) if (name !== "NODE_ENV") assert.isTrue(serverReads(name, value), `the server does not read ${name}`)
    const { server } = configOf([], env)
    assert.strictEqual(server.host, "0.0.0.0")
    assert.strictEqual(server.models, "/models")
    assert.match(text, /^COPY models \/models$/m)
    const exposed = runtimeStage.find((l) => l.startsWith("EXPOSE "))!.split(/\s+/).slice(1).map(Number)
    assert.include(exposed, server.port)
    assert.include(exposed, server.grpcPort, "the gRPC port is exposed")
  })

  it("runs the server itself as a numeric non-root user, with a HEALTHCHECK on readiness", () => {
    assert.include(runtimeStage, "ENTRYPOINT [\"node\", \"src/bin/server.ts\"]")
    assert.match(runtimeStage.find((l) => l.startsWith("USER "))!, /^USER [1-9]\d*:[1-9]\d*$/)
    assert.match(runtimeStage.find((l) => l.startsWith("HEALTHCHECK "))!, /\/v2\/health\/ready/)
    assert.match(text, /LABEL org\.opencontainers\.image\.title=/)
    // The version label defaults to the package's version.
    assert.include(lines, `ARG VERSION=${JSON.parse(read("package.json")).version}`)
  })

  it("has one ignore file for podman and docker", () => {
    assert.strictEqual(read(".containerignore"), read(".dockerignore"))
    assert.match(read(".containerignore"), /^node_modules$/m)
  })
})

describe("deploy/nginx", () => {
  const conf = read("deploy/nginx/effect-onnx.conf").replace(/#.*$/gm, "")
  const directive = (name: string) => [...conf.matchAll(new RegExp(`^\\s*${name}\\s+([^;]+);`, "gm"))].map((m) => m[1]!.trim())

  it("limits bodies to the server's MAX_BODY_BYTES default", () => {
    const [size] = directive("client_max_body_size")
    const units: Record<string, number> = { "": 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }
    const match = /^(\d+)([kmg]?)$/i.exec(size!)
    assert.isNotNull(match)
    assert.strictEqual(Number(match![1]) * units[match![2]!.toLowerCase()]!, ServerConfig.defaults.maxBodyBytes)
  })

  it("retries a refused or failed connection and a draining 503 on the other replica, POSTs included, over kept-alive upstreams", () => {
    const [next] = directive("proxy_next_upstream")
    for (const condition of ["error", "http_503", "non_idempotent"]) assert.include(next!.split(/\s+/), condition)
    assert.notInclude(next!.split(/\s+/), "http_429")
    assert.isNotEmpty(directive("keepalive"))
    assert.deepStrictEqual(directive("proxy_http_version"), ["1.1"])
    assert.deepStrictEqual(directive("proxy_set_header Connection"), ["\"\""])
    assert.lengthOf(directive("server 127\\.0\\.0\\.1:81\\d\\d"), 2)
  })
})
