/**
 * `npm run test:container`: builds the image from the Containerfile, runs it, checks the Open
 * Inference Protocol through the mapped port (the answer equals onnxruntime's on this machine),
 * the image's user, ports, labels and HEALTHCHECK, then sends SIGTERM to the container under 64
 * outstanding requests and checks that the drain answered every request it had (200, or 503 for
 * those that arrived after the signal; none reset) and that the container exited 0.
 *
 * Needs podman and runc (and debootstrap, root and the Debian mirror the first time, for the
 * local base image: scripts/container/base-image.sh); exits 3 naming what is missing. `BASE=…`
 * builds on another base (docker.io/library/node:22-slim where a registry is reachable).
 * Bounded: every step has a time limit, the whole run 15 minutes. Prints progress on stderr and
 * one JSON summary line on stdout; exits 0 only when every check passed.
 */
import * as Fs from "node:fs"
import * as Http from "node:http"
import * as Path from "node:path"
import * as ort from "onnxruntime-node"
import * as Yaml from "yaml"
import { closedLoop, mlpBody, type Outcome, request, root } from "../reliability/ServerProcess.ts"
import { Checks, freePort, getText, requireTools, run, runOk, sleep, tally, waitFor200 } from "./Tools.ts"

requireTools("test:container", { podman: "podman", runc: "runc" })

const checks = new Checks()
const image = process.env["IMAGE"] ?? "localhost/effect-onnx:test"
const localBase = "localhost/effect-onnx-base:22-bookworm"
const base = process.env["BASE"] ?? localBase
const name = `effect-onnx-test-${process.pid}`
// runc and no default ulimits: what podman needs on these machines (docs/deploy.md).
const env = { CONTAINERS_CONF: process.env["CONTAINERS_CONF"] ?? Path.join(root, "scripts/container/containers.conf") }
const podman = (args: ReadonlyArray<string>, timeoutMs = 120_000) => runOk("podman", ["--runtime", "runc", ...args], { env, timeoutMs })
const log = (line: string) => console.error(`[test:container] ${line}`)

const watchdog = setTimeout(() => {
  console.error("test:container: over 15 minutes, giving up")
  void run("podman", ["--runtime", "runc", "rm", "-f", name], { env }).then(() => process.exit(1))
}, 15 * 60_000)

const summary: Record<string, unknown> = { test: "container", image, base }

const main = async () => {
  if (base === localBase) {
    log(`base image ${base} (cached after the first run)`)
    requireTools("test:container", { debootstrap: "debootstrap" })
    await runOk(Path.join(root, "scripts/container/base-image.sh"), [base], { env, timeoutMs: 10 * 60_000 })
  }
  log(`podman build -t ${image} --build-arg BASE=${base}`)
  let started = performance.now()
  const revision = (await run("git", ["-C", root, "rev-parse", "--short", "HEAD"])).stdout.trim() || "unknown"
  await podman(["build", "--format", "docker", "--build-arg", `BASE=${base}`, "--build-arg", `REVISION=${revision}`, "-t", image, "-f", Path.join(root, "Containerfile"), root], 10 * 60_000)
  summary["buildSeconds"] = Math.round((performance.now() - started) / 100) / 10

  const inspect = JSON.parse(await podman(["image", "inspect", image]))[0]
  const config = inspect.Config ?? {}
  summary["imageBytes"] = inspect.Size
  summary["imageMB"] = Math.round(inspect.Size / 1e6)
  checks.check("the image runs as a non-root numeric user", /^[1-9]\d*(:\d+)?$/.test(config.User ?? ""), config.User)
  checks.check("the entry point is the server process itself, not npm", JSON.stringify(config.Entrypoint) === JSON.stringify(["node", "src/bin/server.ts"]), config.Entrypoint)
  checks.check("port 8000 is exposed", "8000/tcp" in (config.ExposedPorts ?? {}), Object.keys(config.ExposedPorts ?? {}))
  const healthcheck = JSON.stringify(inspect.Healthcheck ?? config.Healthcheck ?? null)
  checks.check("the HEALTHCHECK probes /v2/health/ready", healthcheck.includes("/v2/health/ready"))
  checks.check("OCI labels are set", typeof config.Labels?.["org.opencontainers.image.version"] === "string" && config.Labels?.["org.opencontainers.image.revision"] === revision, config.Labels?.["org.opencontainers.image.version"])
  const installed = await run("podman", ["--runtime", "runc", "run", "--rm", "--entrypoint", "sh", image, "-c", "cd node_modules && find . -maxdepth 3 -name package.json | sed 's|^./||; s|/package.json$||'"], { env, timeoutMs: 60_000 })
  const packages = installed.stdout.trim().split("\n").filter((p) => p !== "" && !p.includes("/node_modules"))
  // What the lock file marks dev-only (devDependencies and what only they need).
  const lock = JSON.parse(Fs.readFileSync(Path.join(root, "package-lock.json"), "utf8")).packages as Record<string, { dev?: boolean }>
  const devInstalled = packages.filter((p) => lock[`node_modules/${p}`]?.dev === true)
  checks.check("only production dependencies are installed (nothing the lock file marks dev)", installed.code === 0 && packages.includes("onnxruntime-node") && devInstalled.length === 0, { packages: packages.length, devInstalled })

  const port = await freePort()
  log(`podman run -p 127.0.0.1:${port}:8000`)
  started = performance.now()
  await podman(["run", "-d", "--name", name, "-p", `127.0.0.1:${port}:8000`, "-e", "GRACE_PERIOD_SECONDS=20", image])
  const readyMs = await waitFor200(port, "/v2/health/ready", 60_000)
  summary["readySeconds"] = Math.round((performance.now() - started) / 100) / 10
  checks.check("the container answers /v2/health/ready through the mapped port", true, { readyMs: Math.round(readyMs) })
  const logs = await podman(["logs", name])
  checks.check("it listens on 0.0.0.0:8000 and serves /models", /listening on http:\/\/0\.0\.0\.0:8000 \(models: \/models\)/.test(logs))
  checks.check("/v2/models/mlp describes the bundled MLP", JSON.parse(await getText(port, "/v2/models/mlp")).inputs?.[0]?.shape?.[1] === 784)

  const body = mlpBody(0.25)
  const answer = await request(port, "/v2/models/mlp/infer", body, new Http.Agent())
  const logits = JSON.parse(answer.body).outputs?.[0]?.data as Array<number> | undefined
  const session = await ort.InferenceSession.create(Path.join(root, "models/mlp/model.onnx"))
  const input = JSON.parse(body).inputs[0].data as Array<number>
  const expected = Array.from((await session.run({ input: new ort.Tensor("float32", Float32Array.from(input), [1, 784]) }))["logits"]!.data as Float32Array)
  await session.release()
  const maxError = logits === undefined ? Infinity : Math.max(...expected.map((v, i) => Math.abs(v - (logits[i] ?? NaN))))
  checks.check("an inference through the port equals onnxruntime's on the host", answer.status === 200 && logits?.length === 10 && maxError < 1e-5, { status: answer.status, maxError })

  log("the Deployment's settings: its environment, models on a read-only volume, read-only root, no capabilities")
  const deployment = Yaml.parse(Fs.readFileSync(Path.join(root, "deploy/k8s/deployment.yaml"), "utf8"))
  const k8s = deployment.spec.template.spec.containers[0]
  const k8sPort = await freePort()
  const k8sName = `${name}-k8s`
  try {
    await podman([
      "run", "-d", "--name", k8sName, "-p", `127.0.0.1:${k8sPort}:${k8s.ports[0].containerPort}`,
      "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
      "--user", `${deployment.spec.template.spec.securityContext.runAsUser}:${deployment.spec.template.spec.securityContext.runAsGroup}`,
      "-v", `${Path.join(root, "models")}:${k8s.volumeMounts[0].mountPath}:ro`,
      ...k8s.env.flatMap((e: { name: string; value: string }) => ["-e", `${e.name}=${e.value}`]),
      image
    ])
    await waitFor200(k8sPort, k8s.readinessProbe.httpGet.path, 60_000)
    const k8sAnswer = await request(k8sPort, "/v2/models/mlp/infer", body, new Http.Agent())
    const k8sLogs = await podman(["logs", k8sName])
    checks.check("with the Deployment's settings it serves the mounted repository", k8sAnswer.status === 200 && k8sLogs.includes(`(models: ${k8s.volumeMounts[0].mountPath})`), { status: k8sAnswer.status })
  } finally {
    await run("podman", ["--runtime", "runc", "rm", "-f", k8sName], { env, timeoutMs: 60_000 })
  }

  const health = await run("podman", ["--runtime", "runc", "healthcheck", "run", name], { env, timeoutMs: 30_000 })
  checks.check("podman healthcheck run: healthy", health.code === 0, (health.stdout + health.stderr).trim().split("\n").pop())

  log("64 outstanding requests, then SIGTERM to the container")
  let signalledAt = Infinity
  const outcomes: Array<{ outcome: Outcome; startedAt: number }> = []
  const load = closedLoop({
    port,
    clients: 64,
    path: "/v2/models/mlp/infer",
    body: () => body,
    record: (outcome) => {
      outcomes.push({ outcome, startedAt: performance.now() - outcome.ms })
      // After the signal a client stops at its first refusal, as a balancer would go elsewhere.
      return !(performance.now() > signalledAt && outcome.status !== 200)
    }
  })
  await sleep(3000)
  const beforeSignal = outcomes.length
  signalledAt = performance.now()
  await podman(["kill", "--signal", "SIGTERM", name])
  const exitCode = Number((await podman(["wait", name], 60_000)).trim())
  const exitedAfterMs = performance.now() - signalledAt
  const stopped = await Promise.race([load.done.then(() => true), sleep(10_000).then(() => false)])
  load.stop()
  const after = outcomes.filter((o) => o.outcome.ms + o.startedAt > signalledAt)
  const counts = tally(outcomes.map((o) => o.outcome.label))
  const afterCounts = tally(after.map((o) => o.outcome.label))
  const drainLog = (await podman(["logs", name])).split("\n").filter((l) => /shutting down|drained|grace period/.test(l))
  summary["drain"] = { requestsBeforeSignal: beforeSignal, total: outcomes.length, counts, answeredAfterSignal: afterCounts, exitCode, exitedAfterMs: Math.round(exitedAfterMs), log: drainLog }
  checks.check("every request before the signal was answered 200", outcomes.slice(0, beforeSignal).every((o) => o.outcome.status === 200), tally(outcomes.slice(0, beforeSignal).map((o) => o.outcome.label)))
  checks.check("requests the server held at the signal were answered 200 after it", (afterCounts["200"] ?? 0) > 0, afterCounts)
  const unanswered = outcomes.filter((o) => o.outcome.status === undefined && o.outcome.label !== "ECONNREFUSED")
  checks.check("no request was reset or left unanswered (only 200, 503, or refused once the listener closed)", unanswered.length === 0 && outcomes.every((o) => o.outcome.status === 200 || o.outcome.status === 503 || o.outcome.label === "ECONNREFUSED"), counts)
  checks.check("the container exited 0 after draining, within the grace period", exitCode === 0 && exitedAfterMs < 20_000 && drainLog.some((l) => l.includes("drained in")), { exitCode, exitedAfterMs: Math.round(exitedAfterMs) })
  checks.check("the clients stopped", stopped)
}

main().catch((e: unknown) => {
  checks.check("the run completed", false, e instanceof Error ? e.message.slice(0, 2000) : String(e))
}).finally(async () => {
  clearTimeout(watchdog)
  await run("podman", ["--runtime", "runc", "rm", "-f", name], { env, timeoutMs: 60_000 })
  console.log(JSON.stringify({ ...summary, ok: checks.ok, checks: checks.results.length, failed: checks.results.filter((r) => !r.ok).map((r) => r.name) }))
  process.exit(checks.ok ? 0 : 1)
})
