import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, References } from "effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as ModelRepository from "../../src/ModelRepository.ts"
import * as OnnxModelPool from "../../src/onnx/OnnxModelPool.ts"
import * as ProviderDiagnosis from "../../src/onnx/ProviderDiagnosis.ts"
import * as SessionEndpoint from "../../src/onnx/SessionEndpoint.ts"
import * as Tensor from "../../src/Tensor.ts"
import { probeWebGpu } from "../../scripts/gpu/probe.ts"
import { mlpBytes, sampleInput, tempRepository } from "../fixtures/ModelRepositoryFixture.ts"

const quiet = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.provideService(self, References.MinimumLogLevel, "Error")

const decode = (json: unknown, overrides: Partial<ModelRepository.Defaults> = {}) =>
  Effect.runSync(Effect.exit(ModelRepository.decodeConfig(json, overrides)))

const rejection = (json: unknown): string => {
  const exit = decode(json)
  assert.isTrue(Exit.isFailure(exit), `${JSON.stringify(json)} is rejected`)
  return Exit.isFailure(exit) ? String(exit.cause) : ""
}

const accepted = (json: unknown, overrides: Partial<ModelRepository.Defaults> = {}): ModelRepository.ModelConfig => {
  const exit = decode(json, overrides)
  assert.isTrue(Exit.isSuccess(exit), `${JSON.stringify(json)} is accepted: ${Exit.isFailure(exit) ? String(exit.cause) : ""}`)
  return (exit as Exit.Success<ModelRepository.ModelConfig>).value
}

describe("executionProviders in config.json", () => {
  it("takes names and { name, ...options } objects, lower-casing the names", () => {
    const config = accepted({
      executionProviders: [{ name: "WebGPU", validationMode: "wgpuOnly", storageBufferCacheMode: "simple", forceCpuNodeNames: ["n1"] }, "CPU"]
    })
    assert.deepStrictEqual(config.executionProviders, [
      { name: "webgpu", validationMode: "wgpuOnly", storageBufferCacheMode: "simple", forceCpuNodeNames: ["n1"] },
      "cpu"
    ])
    assert.deepStrictEqual(accepted({ executionProviders: [{ name: "cuda", deviceId: 1 }, { name: "cpu", useArena: false }] }).executionProviders, [
      { name: "cuda", deviceId: 1 },
      { name: "cpu", useArena: false }
    ])
  })

  const rejected: ReadonlyArray<readonly [string, unknown, RegExp]> = [
    ["an unknown name", ["gpu"], /unknown execution provider "gpu" \(onnxruntime knows cpu, webgpu, cuda/],
    ["an unknown name in an object", [{ name: "metal" }], /unknown execution provider "metal"/],
    ["an object without a name", [{ validationMode: "basic" }], /needs a "name"/],
    ["an option the provider does not take", [{ name: "webgpu", deviceId: 0 }], /webgpu: unknown option "deviceId" \(it takes preferredLayout,/],
    ["an option for a provider that takes none", [{ name: "xnnpack", threads: 2 }], /xnnpack: unknown option "threads" \(it takes none here\)/],
    ["a bad option value", [{ name: "webgpu", validationMode: "none" }], /webgpu: option "validationMode" must be one of "disabled", "wgpuOnly", "basic", "full"/],
    ["a bad device id", [{ name: "cuda", deviceId: -1 }], /cuda: option "deviceId" must be an integer >= 0/],
    ["a path", ["../cpu"], /\["executionProviders"\]\[0\]/]
  ]
  for (const [what, providers, expected] of rejected) {
    it(`rejects ${what}, naming the entry`, () => {
      const error = rejection({ executionProviders: providers })
      assert.match(error, expected)
      assert.include(error, `["executionProviders"][0]`)
    })
  }
})

describe("defaults for GPU models", () => {
  const isolation: ReadonlyArray<readonly [ReadonlyArray<ModelRepository.ExecutionProvider>, ModelRepository.Isolation]> = [
    [["webgpu"], "process"],
    [["webgpu", "cpu"], "process"],
    [[{ name: "webgpu", validationMode: "basic" }], "process"],
    [["cuda", "webgpu", "cpu"], "process"],
    [["cpu", "webgpu"], "thread"],
    [["cpu"], "thread"],
    [["cuda", "cpu"], "thread"],
    [["coreml"], "thread"]
  ]
  for (const [providers, expected] of isolation) {
    it(`isolates ${JSON.stringify(providers)} in a ${expected} by default`, () => {
      assert.strictEqual(ModelRepository.defaultIsolation(providers), expected)
      assert.strictEqual(accepted({ executionProviders: providers }).isolation, expected)
    })
  }

  it("keeps an isolation that config.json or the operator's defaults name", () => {
    assert.strictEqual(accepted({ executionProviders: ["webgpu"], isolation: "thread", instances: 1 }).isolation, "thread")
    assert.strictEqual(accepted({ executionProviders: ["webgpu"] }, { isolation: "thread" }).isolation, "thread")
    assert.strictEqual(accepted({ executionProviders: ["cpu"] }, { isolation: "process" }).isolation, "process")
    assert.strictEqual(accepted({ executionProviders: ["cpu"], isolation: "process" }).isolation, "process")
  })

  const conflicts: ReadonlyArray<readonly [Parameters<typeof ModelRepository.configConflict>[0], boolean]> = [
    [{ executionProviders: ["webgpu"], isolation: "thread", instances: 2 }, true],
    [{ executionProviders: ["cuda", "webgpu"], isolation: "thread", instances: 4 }, true],
    [{ executionProviders: ["webgpu"], isolation: "thread", instances: 1 }, false],
    [{ executionProviders: ["webgpu"], isolation: "process", instances: 4 }, false],
    [{ executionProviders: ["cpu", "webgpu"], isolation: "thread", instances: 4 }, false],
    [{ executionProviders: ["cpu"], isolation: "thread", instances: 4 }, false]
  ]
  for (const [config, refused] of conflicts) {
    it(`${refused ? "refuses" : "allows"} ${JSON.stringify(config)}`, () => {
      const reason = ModelRepository.configConflict(config)
      if (refused) assert.match(reason ?? "", /isolation "thread" would run several WebGPU sessions in worker threads of one process, which crashes it \(SIGSEGV\) when their runs overlap/)
      else assert.isUndefined(reason)
    })
  }
})

describe("batching defaults for a model that runs on a GPU", () => {
  const table: ReadonlyArray<readonly [string, Parameters<typeof OnnxModelPool.gpuBatching>[0], Record<string, unknown>]> = [
    ["no batching section", undefined, { maxBatchSize: 256, maxQueueDelayMs: 2, sizing: "learned" }],
    ["a section that sets neither", { enabled: true }, { enabled: true, maxBatchSize: 256, maxQueueDelayMs: 2, sizing: "learned" }],
    ["a section that sets both", { maxBatchSize: 32, maxQueueDelayMs: 0 }, { maxBatchSize: 32, maxQueueDelayMs: 0, sizing: "learned" }],
    ["batching turned off", { enabled: false }, { enabled: false, maxBatchSize: 256, maxQueueDelayMs: 2, sizing: "learned" }],
    ["preferred sizes keep fixed sizing", { preferredBatchSizes: [64, 128] }, { preferredBatchSizes: [64, 128], maxBatchSize: 256, maxQueueDelayMs: 2, sizing: "fixed" }],
    ["an explicit fixed sizing", { sizing: "fixed" }, { sizing: "fixed", maxBatchSize: 256, maxQueueDelayMs: 2 }]
  ]
  for (const [what, json, expected] of table) {
    it(`fills what config.json leaves out: ${what}`, () => {
      assert.deepStrictEqual(OnnxModelPool.gpuBatching(json), expected)
    })
  }
})

describe("intra-op threads from the host", () => {
  const table: ReadonlyArray<readonly [number, number, number]> = [
    // instances, cores, threads
    [1, 1, 1],
    [1, 2, 1],
    [2, 2, 1],
    [1, 4, 3],
    [2, 16, 7],
    [4, 16, 3],
    [3, 16, 5],
    [32, 16, 1],
    [0, 8, 7],
    [1, 1000, 256]
  ]
  for (const [instances, cores, threads] of table) {
    it(`gives ${threads} thread(s) to each of ${instances} CPU session(s) on ${cores} core(s)`, () => {
      assert.strictEqual(ModelRepository.defaultIntraOpNumThreads(instances, cores), threads)
    })
  }

  it.effect("fills only CPU models that leave it unset, counting every CPU instance of the repository", () =>
    Effect.gen(function*() {
      const good = mlpBytes()
      const repository = yield* tempRepository({
        "a/model.onnx": good,
        "a/config.json": JSON.stringify({ instances: 2 }),
        "b/1/model.onnx": good,
        "b/2/model.onnx": good,
        "b/config.json": JSON.stringify({ instances: 1 }),
        "pinned/model.onnx": good,
        "pinned/config.json": JSON.stringify({ instances: 1, intraOpNumThreads: 5 }),
        "gpu/model.onnx": good,
        "gpu/config.json": JSON.stringify({ instances: 3, executionProviders: ["webgpu"] }),
        "gputhreads/model.onnx": good,
        "gputhreads/config.json": JSON.stringify({ instances: 2, executionProviders: ["webgpu"], isolation: "thread" })
      })
      const threadsOf = (r: ModelRepository.ModelRepository, name: string, version = "1") => {
        const e = ModelRepository.lookup(r, name, version)
        assert.strictEqual(e?._tag, "Found", `${name}@${version}`)
        return (e as ModelRepository.Found).config
      }
      // CPU sessions: a ×2, b@1, b@2, pinned = 5; (16 - 1) / 5 = 3
      const on16 = yield* ModelRepository.scan(repository, { cores: 16 })
      assert.strictEqual(threadsOf(on16, "a").intraOpNumThreads, 3)
      assert.strictEqual(threadsOf(on16, "b", "2").intraOpNumThreads, 3)
      assert.strictEqual(threadsOf(on16, "pinned").intraOpNumThreads, 5)
      assert.strictEqual(threadsOf(on16, "gpu").intraOpNumThreads, 1)
      assert.strictEqual(threadsOf(on16, "gpu").isolation, "process")
      const refused = ModelRepository.lookup(on16, "gputhreads")
      assert.strictEqual(refused?._tag, "Unavailable")
      assert.match((refused as ModelRepository.Unavailable).reason, /^config\.json: 2 instances of a GPU model \(webgpu\) with isolation "thread"/)
      // on 2 cores every CPU session keeps 1 thread; an operator's default wins everywhere
      assert.strictEqual(threadsOf(yield* ModelRepository.scan(repository, { cores: 2 }), "a").intraOpNumThreads, 1)
      assert.strictEqual(threadsOf(yield* ModelRepository.scan(repository, { cores: 16, defaults: { intraOpNumThreads: 2 } }), "a").intraOpNumThreads, 2)
    }))
})

describe("ProviderDiagnosis", () => {
  const ortError = "/onnxruntime_src/onnxruntime/core/providers/webgpu/webgpu_context.cc:136 onnxruntime::webgpu::WebGpuContext::Initialize(" +
    "const onnxruntime::webgpu::WebGpuContextConfig&)::<lambda()> adapter_result.status == wgpu::RequestAdapterStatus::Success was false. " +
    "Failed to get a WebGPU adapter: No supported adapters\n"
  const host = (h: Partial<ProviderDiagnosis.Host>): ProviderDiagnosis.Host => ({
    platform: "linux",
    vulkanLoader: undefined,
    icdFiles: [],
    icdFromEnv: false,
    ...h
  })
  const cases: ReadonlyArray<readonly [string, string, string, ProviderDiagnosis.Host, RegExp]> = [
    ["no Vulkan loader", "webgpu", ortError, host({}), /^webgpu: no adapter found \(No supported adapters\); the Vulkan loader libvulkan\.so\.1 is not installed \(Debian: libvulkan1/],
    ["a loader but no ICD", "webgpu", ortError, host({ vulkanLoader: "/usr/lib/x86_64-linux-gnu/libvulkan.so.1" }), /no Vulkan ICD file was found: point VK_DRIVER_FILES at the driver's nvidia_icd\.json$/],
    [
      "VK_DRIVER_FILES naming a missing file",
      "webgpu",
      ortError,
      host({ vulkanLoader: "/etc/ld.so.cache", icdFiles: ["/nowhere/nvidia_icd.json"], icdFromEnv: true }),
      /VK_DRIVER_FILES names \/nowhere\/nvidia_icd\.json, which does not exist$/
    ],
    ["not Linux", "webgpu", ortError, host({ platform: "darwin" }), /^webgpu: no adapter found \(No supported adapters\)$/],
    ["CUDA without its libraries", "cuda", "OrtSessionOptionsAppendExecutionProvider_Cuda: Failed to load shared library", host({}), /^cuda: its libraries are not installed/],
    ["a provider this build lacks", "coreml", "no available backend found. ERR: [coreml] backend not found.", host({}), /^coreml: not available in this onnxruntime-node build$/],
    ["any other assertion", "webgpu", "/src/x.cc:12 f() a == b was false. Something else broke\nmore", host({}), /^webgpu: Something else broke$/]
  ]
  for (const [what, provider, error, h, expected] of cases) {
    it(`explains ${what} in one line`, () => {
      const line = ProviderDiagnosis.explain(provider, error, h)
      assert.match(line, expected)
      assert.notInclude(line, "\n")
      assert.notInclude(line, "onnxruntime_src")
    })
  }

  it("lists each provider once, in order, then cpu unless it is listed", () => {
    assert.deepStrictEqual(SessionEndpoint.attempts(["WebGPU", "webgpu", "cuda"]), ["webgpu", "cuda", "cpu"])
    assert.deepStrictEqual(SessionEndpoint.attempts([{ name: "WEBGPU", validationMode: "basic" }, "cpu", "cuda"]), [
      { name: "webgpu", validationMode: "basic" },
      "cpu",
      "cuda"
    ])
  })
})

describe("falling back on this host", () => {
  it.live("loads a webgpu model on the CPU where there is no adapter, in a process and in a thread, saying why in one line", () =>
    Effect.gen(function*() {
      const probe = yield* Effect.promise(() => probeWebGpu())
      const repository = yield* tempRepository({
        "gpu/model.onnx": mlpBytes(),
        "gpu/config.json": JSON.stringify({ instances: 1, executionProviders: [{ name: "webgpu", validationMode: "basic" }, "cpu"] }),
        "gputhread/model.onnx": mlpBytes(),
        "gputhread/config.json": JSON.stringify({ instances: 1, isolation: "thread", executionProviders: ["WebGPU", { name: "cpu", useArena: false }] }),
        "bogus/model.onnx": mlpBytes(),
        "bogus/config.json": JSON.stringify({ executionProviders: ["gpu"] })
      })
      // On a GPU host the thread variant would put a WebGPU session in a worker of the test process: left to scripts/gpu/narrow.ts there.
      if (probe.available) Fs.rmSync(Path.join(repository, "gputhread"), { recursive: true })
      const pool = yield* quiet(OnnxModelPool.make({ repository }))
      const info = Object.fromEntries((yield* pool.info).map((m) => [m.name, m]))
      assert.strictEqual(info["bogus"]!.state, "UNAVAILABLE")
      assert.match(info["bogus"]!.reason ?? "", /config\.json: .*unknown execution provider "gpu"/)
      const gpu = info["gpu"]!
      assert.strictEqual(gpu.state, "READY")
      assert.strictEqual(gpu.isolation, "process")
      const out = yield* pool.run("gpu", { input: Tensor.float32(sampleInput(2), [2, 784]) }, { requestId: "r" })
      const batching = (yield* pool.metadata("gpu")).batching
      // the GPU batching defaults apply where the model runs on the GPU, the CPU's where it fell back
      assert.strictEqual(batching?.maxBatchSize, probe.available ? 256 : 64)
      if (probe.available) {
        // a GPU host: the same model loads on the GPU, with nothing to fall back from
        assert.strictEqual(gpu.deviceUsed, "webgpu")
        assert.deepStrictEqual(gpu.fallbacks, [])
        assert.strictEqual(out.deviceUsed, "webgpu")
      } else {
        assert.strictEqual(gpu.deviceUsed, "cpu")
        assert.strictEqual(out.deviceUsed, "cpu")
        const [fallback] = gpu.fallbacks ?? []
        assert.strictEqual(fallback?.provider, "webgpu")
        assert.strictEqual(fallback?.error, probe.reason, "the pool and the probe give the same one-line reason")
        assert.match(fallback?.error ?? "", /^webgpu: no adapter found \(/)
        assert.notInclude(fallback?.error ?? "", "\n")
        assert.include(fallback?.detail ?? "", "Failed to get a WebGPU adapter")
        // the same in a worker thread, with the providers given as a name and as an object
        const thread = info["gputhread"]!
        assert.strictEqual(thread.state, "READY")
        assert.strictEqual(thread.isolation, "thread")
        assert.strictEqual(thread.deviceUsed, "cpu")
        assert.deepStrictEqual(thread.fallbacks?.map((f) => f.error), [probe.reason])
        const threadOut = yield* pool.run("gputhread", { input: Tensor.float32(sampleInput(2), [2, 784]) }, { requestId: "t" })
        assert.deepStrictEqual(threadOut.outputs["logits"]!.data, out.outputs["logits"]!.data)
      }
    }))
})
