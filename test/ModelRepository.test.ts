import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as ModelRepository from "../src/ModelRepository.ts"
import * as VersionPolicy from "../src/VersionPolicy.ts"
import { tempDirectory, tempRepository } from "./fixtures/ModelRepositoryFixture.ts"

const onnx = "not checked by the scan, only by the runtime"

/**
 * Scans `root` in a process that is not root (as `nobody` when this one is root, which reads any
 * file), and returns each entry as `name@version: reason` or `name@version: found`.
 */
const asNobody = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {}

/** Whether the unprivileged process can read this checkout and its node_modules (not where they are the owner's alone). */
const unprivilegedCanRun = (): boolean => {
  try {
    execFileSync(process.execPath, ["--input-type=module", "-e", `await import("effect"); await import(${JSON.stringify(new URL("../src/ModelRepository.ts", import.meta.url).href)})`], {
      cwd: Path.join(import.meta.dirname, ".."),
      stdio: "ignore",
      ...asNobody
    })
    return true
  } catch {
    return false
  }
}

const scanUnprivileged = (root: string): ReadonlyArray<string> => {
  const module = new URL("../src/ModelRepository.ts", import.meta.url).href
  const script = `import { Effect } from "effect"
import * as R from ${JSON.stringify(module)}
const r = await Effect.runPromise(R.scan(${JSON.stringify(root)}))
console.log(JSON.stringify(r.entries.map((e) => e.name + "@" + e.version + ": " + (e._tag === "Found" ? "found" : e.reason))))`
  const out = execFileSync(process.execPath, ["--input-type=module", "-e", script], { cwd: Path.join(import.meta.dirname, ".."), encoding: "utf8", ...asNobody })
  return JSON.parse(out.trim().split("\n").pop()!) as ReadonlyArray<string>
}

const entry = (repository: ModelRepository.ModelRepository, name: string, version: string) => {
  const found = repository.entries.find((e) => e.name === name && e.version === version)
  assert.isDefined(found, `${name}@${version} is listed`)
  return found!
}

const reasonOf = (e: ModelRepository.Entry): string => {
  assert.strictEqual(e._tag, "Unavailable", `${e.name}@${e.version} is unavailable`)
  return (e as ModelRepository.Unavailable).reason
}

const configError = (json: unknown) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(ModelRepository.decodeConfig(json))
    assert.isTrue(Exit.isFailure(exit), `${JSON.stringify(json)} is rejected`)
    return Exit.isFailure(exit) ? String(exit.cause) : ""
  })

describe("ModelRepository", () => {
  describe("config.json", () => {
    it.effect("reads a model's default priority, and names the field when it is wrong", () =>
      Effect.gen(function*() {
        assert.strictEqual((yield* ModelRepository.decodeConfig({ defaultPriority: "High" })).defaultPriority, "High")
        const error = yield* Effect.flip(ModelRepository.decodeConfig({ defaultPriority: "urgent" }))
        assert.include(error.message, `["defaultPriority"]`)
      }))

    it.effect("reads a model's own queue bound (maxQueuedRequests: an integer from 1), and names the field when it is wrong", () =>
      Effect.gen(function*() {
        assert.strictEqual((yield* ModelRepository.decodeConfig({ maxQueuedRequests: 50 })).maxQueuedRequests, 50)
        for (const bad of [0, -1, 1.5, "50"]) {
          const error = yield* Effect.flip(ModelRepository.decodeConfig({ maxQueuedRequests: bad }))
          assert.include(error.message, `["maxQueuedRequests"]`, String(bad))
        }
      }))

    it.effect("decodes warmup samples with their defaults, and refuses an invalid one at the key", () =>
      Effect.gen(function*() {
        const config = yield* ModelRepository.decodeConfig({ warmup: [{ batchSize: 8, inputs: { input: { data: "random" } } }] })
        assert.deepStrictEqual(config.warmup, [{ name: "sample 0", batchSize: 8, count: 1, inputs: { input: { dims: undefined, data: { _tag: "Random" } } } }])
        const error = yield* Effect.flip(ModelRepository.decodeConfig({ warmup: [{ batchSize: 8, inputs: { input: { data: "ones" } } }] }))
        assert.include(error.message, `warmup[0].inputs.input.data must be "zero", "random", {"fill": value} or {"file": name}`)
        assert.include(error.message, `["warmup"]`)
      }))

    it.effect("responseCache: {enable} only, a boolean", () =>
      Effect.gen(function*() {
        assert.isTrue((yield* ModelRepository.decodeConfig({ responseCache: { enable: true } })).responseCache)
        assert.isFalse((yield* ModelRepository.decodeConfig({ responseCache: { enable: false } })).responseCache)
        assert.isFalse((yield* ModelRepository.decodeConfig({})).responseCache)
        for (const bad of [{ enable: "yes" }, {}, { enable: true, size: 5 }, true]) {
          const error = yield* Effect.flip(ModelRepository.decodeConfig({ responseCache: bad }))
          assert.include(error.message, `["responseCache"]`, JSON.stringify(bad))
        }
      }))

    it.effect("sequenceBatching: decoded with its defaults, bad sections and the response cache beside it refused", () =>
      Effect.gen(function*() {
        const config = yield* ModelRepository.decodeConfig({ sequenceBatching: { state: [{ input: "h", output: "hN" }] } })
        assert.deepStrictEqual(config.sequenceBatching, {
          maxSequenceIdleMs: 1000,
          maxSequences: 1024,
          states: [{ input: "h", output: "hN", dims: undefined }]
        })
        for (const bad of [{}, { state: [] }, { state: [{ input: "h" }] }, { state: [{ input: "h", output: "o", size: 3 }] }, { maxSequenceIdleMs: 0, state: [{ input: "h", output: "o" }] }]) {
          const error = yield* Effect.flip(ModelRepository.decodeConfig({ sequenceBatching: bad }))
          assert.include(error.message, `sequenceBatching`, JSON.stringify(bad))
        }
        const both = yield* ModelRepository.decodeConfig({ responseCache: { enable: true }, sequenceBatching: { state: [{ input: "h", output: "hN" }] } })
        assert.include(ModelRepository.configConflict(both), "responseCache and sequenceBatching exclude each other")
        assert.isUndefined(ModelRepository.configConflict(config))
      }))

    it.effect("fills every default when the file is empty", () =>
      Effect.gen(function*() {
        const config = yield* ModelRepository.decodeConfig({})
        assert.deepStrictEqual(config, {
          instances: ModelRepository.defaultInstances(),
          executionProviders: ["cpu"],
          intraOpNumThreads: 1,
          interOpNumThreads: 1,
          isolation: "thread",
          killGraceMs: 1000,
          loadTimeoutMs: 600_000,
          defaultPriority: "Normal",
          maxQueuedRequests: undefined,
          batching: undefined,
          inputSignatures: undefined,
          labels: undefined,
          versionPolicy: VersionPolicy.all,
          warmup: undefined,
          responseCache: false,
          sequenceBatching: undefined,
          raw: {}
        })
        assert.strictEqual(ModelRepository.defaultInstances(2), 1)
        assert.strictEqual(ModelRepository.defaultInstances(8), 2)
      }))

    it.effect("decodes every field and keeps the parsed object in raw", () =>
      Effect.gen(function*() {
        const json = {
          instances: 3,
          executionProviders: ["CoreML", "cuda", "webgpu", "cpu"],
          intraOpNumThreads: 2,
          interOpNumThreads: 4,
          batching: { maxBatchSize: 32, maxQueueDelayMs: 2 }
        }
        const config = yield* ModelRepository.decodeConfig(json)
        assert.strictEqual(config.instances, 3)
        assert.deepStrictEqual(config.executionProviders, ["coreml", "cuda", "webgpu", "cpu"])
        assert.strictEqual(config.intraOpNumThreads, 2)
        assert.strictEqual(config.interOpNumThreads, 4)
        assert.deepStrictEqual(config.batching, { maxBatchSize: 32, maxQueueDelayMs: 2 })
        assert.deepStrictEqual(config.raw["instances"], 3)
      }))

    it.effect("refuses an unknown key, naming it and the closest known one", () =>
      Effect.gen(function*() {
        const cases: ReadonlyArray<readonly [unknown, string]> = [
          [{ instance: 4 }, `unknown key "instance" (did you mean "instances"?)`],
          [{ instances: 4, batchng: { enabled: true } }, `unknown key "batchng" (did you mean "batching"?)`],
          [{ Isolation: "process" }, `unknown key "Isolation" (did you mean "isolation"?)`],
          [{ batching: { maxBatchSise: 8 } }, `unknown key "batching.maxBatchSise" (did you mean "batching.maxBatchSize"?)`],
          // In a signature's constraints too: a misspelled one turned its check off.
          [{ inputSignatures: [{ input: { dims: [-1, 784], maximum: 0 } }] }, `unknown key "inputSignatures[0].input.maximum"`],
          [{ inputSignatures: [{ a: { min: 0 } }, { sr: { Max: 1 } }] }, `unknown key "inputSignatures[1].sr.Max" (did you mean "inputSignatures[1].sr.max"?)`],
          [{ future: { anything: true } }, `unknown key "future"`],
          [{ zzzzzzzzzzzzzz: 1 }, `unknown key "zzzzzzzzzzzzzz"`]
        ]
        for (const [json, expected] of cases) {
          const error = yield* Effect.flip(ModelRepository.decodeConfig(json))
          assert.strictEqual(error.message, expected)
        }
      }))

    it("suggests only close keys", () => {
      assert.strictEqual(ModelRepository.closest("instnaces", ["instances", "isolation"]), "instances")
      assert.strictEqual(ModelRepository.closest("foo", ["instances", "isolation"]), undefined)
      assert.strictEqual(ModelRepository.editDistance("kitten", "sitting"), 3)
    })

    it.effect("refuses provider options named like Object.prototype members as unknown options", () =>
      Effect.gen(function*() {
        for (const key of ["valueOf", "hasOwnProperty", "toString", "constructor", "__proto__"]) {
          const provider = JSON.parse(`{"name": "cpu", ${JSON.stringify(key)}: true}`) as unknown
          const error = yield* Effect.flip(ModelRepository.decodeConfig({ executionProviders: [provider] }))
          assert.strictEqual(error._tag, "SchemaError", key)
          assert.include(error.message, `cpu: unknown option ${JSON.stringify(key)} (it takes useArena)`)
        }
        const root = yield* tempRepository({
          "m/2/model.onnx": onnx,
          "m/3/model.onnx": onnx,
          "m/config.json": JSON.stringify({ executionProviders: [{ name: "cpu", valueOf: true }] })
        })
        const repository = yield* ModelRepository.scan(root)
        assert.deepStrictEqual(repository.entries.map((e) => e.version), ["2", "3"], "each version listed, with the reason")
        assert.include(reasonOf(entry(repository, "m", "3")), `config.json: cpu: unknown option "valueOf"`)
      }))

    it.effect("uses the caller's defaults under the file's values", () =>
      Effect.gen(function*() {
        const config = yield* ModelRepository.decodeConfig({ intraOpNumThreads: 2 }, { instances: 4, intraOpNumThreads: 3 })
        assert.strictEqual(config.instances, 4)
        assert.strictEqual(config.intraOpNumThreads, 2)
      }))

    it.effect("names the offending field in its errors", () =>
      Effect.gen(function*() {
        assert.include(yield* configError({ instances: 0 }), `["instances"]`)
        assert.include(yield* configError({ batching: { sizing: "adaptive" } }), `["batching"]["sizing"]`)
        assert.include(yield* configError({ instances: "2" }), `["instances"]`)
        assert.include(yield* configError({ intraOpNumThreads: 1.5 }), `["intraOpNumThreads"]`)
        assert.include(yield* configError({ interOpNumThreads: -1 }), `["interOpNumThreads"]`)
        assert.include(yield* configError({ executionProviders: ["cpu", 3] }), `["executionProviders"][1]`)
        assert.include(yield* configError({ executionProviders: [] }), `["executionProviders"]`)
        assert.include(yield* configError({ executionProviders: ["../cpu"] }), `["executionProviders"][0]`)
        assert.include(yield* configError({ batching: { maxBatchSize: 0 } }), `["batching"]["maxBatchSize"]`)
        assert.include(yield* configError({ batching: { inputAxes: { input: -1 } } }), `["batching"]["inputAxes"]["input"]`)
        assert.include(yield* configError([1, 2]), "Expected object")
      }))

    it("exports its fields so that another schema can extend them", () => {
      assert.containsAllKeys(ModelRepository.configFields, ["instances", "executionProviders", "intraOpNumThreads", "interOpNumThreads", "batching"])
    })
  })

  describe("jsonSyntaxError", () => {
    const cases: ReadonlyArray<readonly [string, string]> = [
      ["{ instances: 2", "invalid JSON at line 1 column 3"],
      ["{\n  \"instances\": 2,\n}", "invalid JSON at line 3 column 1"],
      ["root:x:0:0:root:/root:/bin/bash", "invalid JSON"],
      ["{\"instances\": 2", "invalid JSON at line 1 column 16"],
      ["", "invalid JSON: it ends too early"],
      ["{} secret", "invalid JSON at line 1 column 4"]
    ]
    it.each(cases)("%j: %s", (text, expected) => {
      let error: unknown
      try {
        JSON.parse(text)
      } catch (e) {
        error = e
      }
      assert.strictEqual(ModelRepository.jsonSyntaxError(text, error), expected)
    })
  })

  describe("model names", () => {
    it("accepts safe names and rejects anything that could leave the repository", () => {
      for (const name of ["mlp", "silero_vad", "resnet-50.v2", "A1", "0"]) assert.isTrue(ModelRepository.isValidModelName(name), name)
      for (const name of ["", ".", "..", "../mlp", "a/b", "a\\b", ".hidden", "-x", "_x", "a b", "a\0b", "x".repeat(129), "%2e%2e"]) {
        assert.isFalse(ModelRepository.isValidModelName(name), JSON.stringify(name))
      }
    })

    it.effect("modelDirectory resolves a safe name to a direct child of the root and refuses traversal", () =>
      Effect.gen(function*() {
        assert.strictEqual(yield* ModelRepository.modelDirectory("/srv/models", "mlp"), Path.resolve("/srv/models/mlp"))
        for (const name of ["../etc", "..", "a/../../b", "/etc/passwd"]) {
          const error = yield* Effect.flip(ModelRepository.modelDirectory("/srv/models", name))
          assert.strictEqual(error._tag, "InvalidModelName")
          assert.include(error.message, JSON.stringify(name))
        }
      }))
  })

  describe("scan", () => {
    // Skipped where an unprivileged process cannot read this checkout (run as root, the test scans as nobody).
    it.effect.skipIf(!unprivilegedCanRun())("a model file the server may not read is named 'permission denied' by the scan, not left to onnxruntime ('system error number 13')", () =>
      Effect.gen(function*() {
        const root = yield* tempRepository({ "readable/model.onnx": onnx, "locked/model.onnx": onnx })
        // The unprivileged scan must reach the files: the temporary directories are the owner's alone.
        for (const dir of [root, Path.join(root, "readable"), Path.join(root, "locked")]) Fs.chmodSync(dir, 0o755)
        Fs.chmodSync(Path.join(root, "readable", "model.onnx"), 0o644)
        Fs.chmodSync(Path.join(root, "locked", "model.onnx"), 0o000)
        assert.deepStrictEqual(scanUnprivileged(root), ["locked@1: locked/model.onnx: permission denied", "readable@1: found"])
      }))

    it.effect("reads flat and versioned layouts; the highest version is the default", () =>
      Effect.gen(function*() {
        const root = yield* tempRepository({
          "flat/model.onnx": onnx,
          "flat/config.json": JSON.stringify({ instances: 2 }),
          "versioned/1/model.onnx": onnx,
          "versioned/3/model.onnx": onnx,
          "versioned/10/model.onnx": onnx,
          "versioned/model.onnx": onnx, // ignored beside version directories
          "versioned/notes/model.onnx": onnx, // not a version directory
          "README.md": "plain files at the root are not models",
          ".git/model.onnx": onnx
        })
        const repository = yield* ModelRepository.scan(root)
        assert.deepStrictEqual(repository.entries.map((e) => `${e._tag} ${e.name}@${e.version}`), [
          "Found flat@1",
          "Found versioned@1",
          "Found versioned@3",
          "Found versioned@10"
        ])
        const flat = entry(repository, "flat", "1")
        assert.strictEqual(flat._tag === "Found" && flat.config.instances, 2)
        assert.strictEqual(flat._tag === "Found" && flat.path, Path.join(repository.root, "flat", "model.onnx"))
        assert.strictEqual(ModelRepository.lookup(repository, "versioned")?.version, "10")
        assert.strictEqual(ModelRepository.lookup(repository, "versioned", "3")?.version, "3")
        assert.strictEqual(ModelRepository.lookup(repository, "versioned", "03")?.version, "3")
        assert.isUndefined(ModelRepository.lookup(repository, "versioned", "2"))
        assert.isUndefined(ModelRepository.lookup(repository, "versioned", "x"))
        assert.isUndefined(ModelRepository.lookup(repository, "nope"))
        assert.deepStrictEqual(repository.ignored, [])
      }))

    it("versionsOf reads each repository object's own entries, lowest version first: a replaced repository is not served from the old one's index", () => {
      const found = (name: string, version: string) => ({ _tag: "Unavailable", name, version, reason: "test" }) as ModelRepository.Entry
      const before: ModelRepository.ModelRepository = { root: "/r", entries: [found("a", "1"), found("b", "1"), found("b", "2"), found("c", "7")], ignored: [], notServed: [] }
      assert.deepStrictEqual(ModelRepository.versionsOf(before, "b").map((e) => e.version), ["1", "2"])
      assert.deepStrictEqual(ModelRepository.versionsOf(before, "nope"), [])
      // what a load does: a new object, the model's versions replaced
      const after: ModelRepository.ModelRepository = { ...before, entries: [found("a", "1"), found("b", "3"), found("c", "7")] }
      assert.deepStrictEqual(ModelRepository.versionsOf(after, "b").map((e) => e.version), ["3"])
      assert.strictEqual(ModelRepository.lookup(after, "b")?.version, "3")
      assert.strictEqual(ModelRepository.lookup(before, "b")?.version, "2")
    })

    it("sameVersion takes time linear in the names: a gRPC model_version of millions of digits made BigInt block the event loop for seconds", () => {
      const huge = "1".repeat(10_000_000)
      const start = performance.now()
      assert.isFalse(ModelRepository.sameVersion("1", huge))
      assert.isTrue(ModelRepository.sameVersion(huge, `000${huge}`))
      assert.isTrue(ModelRepository.sameVersion(`${"0".repeat(5_000_000)}7`, "7"))
      assert.isBelow(performance.now() - start, 500)
      assert.isTrue(ModelRepository.sameVersion("0", "000"))
      assert.isTrue(ModelRepository.sameVersion("010", "10"))
      assert.isFalse(ModelRepository.sameVersion("10", "1"))
      assert.isFalse(ModelRepository.sameVersion("1", "x"))
      assert.isFalse(ModelRepository.sameVersion("01", "1x"))
    })

    it.effect("refuses two version directories of one number, and lists a directory that only looks like a version", () =>
      Effect.gen(function*() {
        const root = yield* tempRepository({
          "m/01/model.onnx": onnx,
          "m/1/model.onnx": onnx,
          "m/2/model.onnx": onnx,
          "m/1a/model.onnx": onnx,
          "m/assets/vocab.txt": "not a version, not listed",
          "lone/02/model.onnx": onnx
        })
        const repository = yield* ModelRepository.scan(root)
        assert.deepStrictEqual(repository.entries.filter((e) => e.name === "m").map((e) => [e.version, e._tag]), [
          ["01", "Unavailable"],
          ["1", "Unavailable"],
          ["2", "Found"]
        ])
        assert.strictEqual(reasonOf(entry(repository, "m", "1")), "version directories 01 and 1 are both version 1: keep one")
        assert.strictEqual(entry(repository, "lone", "02")._tag, "Found", "a lone 02 is version 2")
        assert.deepStrictEqual(repository.ignored, [{ name: "m/1a", reason: "not a version directory (a version is decimal digits only)" }])
      }))

    it.effect("serves only the version directories config.json's versionPolicy selects, and says what it left out", () =>
      Effect.gen(function*() {
        const root = yield* tempRepository({
          "latest/1/model.onnx": onnx,
          "latest/2/model.onnx": onnx,
          "latest/10/model.onnx": onnx,
          "latest/config.json": JSON.stringify({ versionPolicy: { latest: { numVersions: 2 } } }),
          "specific/1/model.onnx": onnx,
          "specific/2/model.onnx": "", // named by the policy and broken: unavailable, as without a policy
          "specific/3/model.onnx": onnx,
          "specific/config.json": JSON.stringify({ versionPolicy: { specific: { versions: [2, 3, 9] } } }),
          "none/1/model.onnx": onnx,
          "none/config.json": JSON.stringify({ versionPolicy: { specific: { versions: [4, 5] } } }),
          "flat/model.onnx": onnx,
          "flat/config.json": JSON.stringify({ versionPolicy: { latest: { numVersions: 1 } } }),
          "all/1/model.onnx": onnx,
          "all/2/model.onnx": onnx,
          "all/config.json": JSON.stringify({ versionPolicy: { all: {} } }),
          "typo/1/model.onnx": onnx,
          "typo/2/model.onnx": onnx,
          "typo/config.json": JSON.stringify({ versionPolicy: { latest: { num_versions: 1 } } })
        })
        const repository = yield* ModelRepository.scan(root)
        assert.deepStrictEqual(repository.entries.map((e) => `${e._tag} ${e.name}@${e.version}`), [
          "Found all@1",
          "Found all@2",
          "Found flat@1",
          "Found latest@2",
          "Found latest@10",
          "Unavailable none@5",
          "Unavailable specific@2",
          "Found specific@3",
          "Unavailable typo@1",
          "Unavailable typo@2"
        ])
        assert.strictEqual(ModelRepository.lookup(repository, "latest")?.version, "10")
        assert.isUndefined(ModelRepository.lookup(repository, "latest", "1"), "a version left out is not a version of the model")
        assert.strictEqual(reasonOf(entry(repository, "none", "5")), "no version that versionPolicy (specific 4, 5) names is in the repository (it has version directories 1)")
        assert.strictEqual(reasonOf(entry(repository, "specific", "2")), "specific/2/model.onnx is empty")
        assert.include(reasonOf(entry(repository, "typo", "1")), `"latest" takes only "numVersions", got "num_versions"`)
        assert.include(reasonOf(entry(repository, "typo", "1")), `["versionPolicy"]`)
        assert.deepStrictEqual(repository.notServed, [
          { name: "latest", policy: "latest 2", leftOut: ["1"], missing: [] },
          { name: "none", policy: "specific 4, 5", leftOut: ["1"], missing: ["4", "5"] },
          { name: "specific", policy: "specific 2, 3, 9", leftOut: ["1"], missing: ["9"] }
        ])
        const latest = entry(repository, "latest", "10")
        assert.deepStrictEqual(latest._tag === "Found" && latest.config.versionPolicy, { _tag: "Latest", numVersions: 2 })
      }))

    it.effect("names a Triton config.pbtxt without a config.json beside it: its settings would otherwise be replaced by the defaults in silence", () =>
      Effect.gen(function*() {
        const root = yield* tempRepository({
          "triton/1/model.onnx": onnx,
          "triton/config.pbtxt": "max_batch_size: 8\ndynamic_batching { }\n",
          "both/model.onnx": onnx,
          "both/config.pbtxt": "max_batch_size: 8\n",
          "both/config.json": "{}"
        })
        const repository = yield* ModelRepository.scan(root)
        assert.strictEqual(entry(repository, "triton", "1")._tag, "Found", "the model itself serves, on the defaults")
        assert.deepStrictEqual(repository.ignored.map((i) => i.name), ["triton/config.pbtxt"])
        assert.match(repository.ignored[0]!.reason, /^Triton's model configuration is not read here: .* write them as config\.json/)
      }))

    it.effect("refuses defaults given in code that config.json could not hold (instances 0 stopped every load with a defect), naming the field", () =>
      Effect.gen(function*() {
        const root = yield* tempRepository({ "m/model.onnx": onnx })
        for (const [defaults, field] of [[{ instances: 0 }, "instances"], [{ instances: 1.5 }, "instances"], [{ loadTimeoutMs: -5 }, "loadTimeoutMs"], [{ intraOpNumThreads: 0 }, "intraOpNumThreads"]] as const) {
          const error = yield* Effect.flip(ModelRepository.scan(root, { defaults }))
          assert.match(error.message, new RegExp(`invalid model defaults: .*\\["${field}"\\]`), JSON.stringify(defaults))
        }
        // A key set to undefined is unset, as in config.json's absence: the defaults apply.
        const unset = entry(yield* ModelRepository.scan(root, { defaults: { instances: undefined, loadTimeoutMs: undefined, executionProviders: undefined } }), "m", "1")
        assert.strictEqual(unset._tag, "Found")
        const config = (unset as ModelRepository.Found).config
        const base = ModelRepository.defaults()
        assert.deepStrictEqual([config.instances, config.loadTimeoutMs, config.executionProviders], [base.instances, base.loadTimeoutMs, base.executionProviders])
      }))

    it("versionConflicts names every directory of a number that several share", () => {
      assert.deepStrictEqual([...ModelRepository.versionConflicts(["1", "2", "3"])], [])
      assert.deepStrictEqual([...ModelRepository.versionConflicts(["0", "00", "000", "5"]).keys()], ["0", "00", "000"])
      assert.strictEqual(ModelRepository.versionConflicts(["0", "00", "000"]).get("00"), "version directories 0 and 00 and 000 are all version 0: keep one")
    })

    it.effect("reports a missing, empty or non-file model and an invalid config.json as Unavailable with a reason", () =>
      Effect.gen(function*() {
        const root = yield* tempRepository({
          "good/model.onnx": onnx,
          "missing/readme.txt": "no model here",
          "empty/model.onnx": "",
          "dirmodel/model.onnx/x": "a directory named model.onnx",
          "badconfig/model.onnx": onnx,
          "badconfig/config.json": JSON.stringify({ instances: 0 }),
          "badjson/model.onnx": onnx,
          "badjson/config.json": "{ instances: 2",
          // A byte-order mark (some editors write one) is dropped; bytes that are not UTF-8 are refused.
          "bom/model.onnx": onnx,
          "bom/config.json": Buffer.concat([Buffer.of(0xef, 0xbb, 0xbf), Buffer.from(JSON.stringify({ instances: 2 }))]),
          "latin1/model.onnx": onnx,
          "latin1/config.json": Buffer.concat([Buffer.from('{"defaultPriority": "'), Buffer.of(0xe9), Buffer.from('"}')]),
          "typo/model.onnx": onnx,
          "typo/config.json": JSON.stringify({ instance: 4, batchng: { enabled: true } }),
          "versions/1/model.onnx": onnx,
          "versions/2/other.onnx": onnx,
          "badversions/1/model.onnx": onnx,
          "badversions/2/model.onnx": onnx,
          "badversions/config.json": JSON.stringify({ executionProviders: "cpu" })
        })
        const repository = yield* ModelRepository.scan(root)
        assert.strictEqual(entry(repository, "good", "1")._tag, "Found")
        assert.include(reasonOf(entry(repository, "missing", "1")), "model.onnx: does not exist")
        assert.include(reasonOf(entry(repository, "empty", "1")), "model.onnx is empty")
        assert.include(reasonOf(entry(repository, "dirmodel", "1")), "is not a regular file")
        assert.include(reasonOf(entry(repository, "badconfig", "1")), `config.json: Expected a value between 1 and 64 at ["instances"]`)
        assert.include(reasonOf(entry(repository, "badjson", "1")), "config.json: invalid JSON")
        const bom = entry(repository, "bom", "1")
        assert.strictEqual(bom._tag === "Found" ? bom.config.instances : reasonOf(bom), 2)
        assert.strictEqual(reasonOf(entry(repository, "latin1", "1")), "config.json is not UTF-8 text")
        assert.strictEqual(reasonOf(entry(repository, "typo", "1")), `config.json: unknown key "instance" (did you mean "instances"?)`)
        assert.strictEqual(entry(repository, "versions", "1")._tag, "Found")
        assert.include(reasonOf(entry(repository, "versions", "2")), "versions/2/model.onnx: does not exist")
        assert.include(reasonOf(entry(repository, "badversions", "1")), `["executionProviders"]`)
        assert.include(reasonOf(entry(repository, "badversions", "2")), `["executionProviders"]`)
      }))

    it.effect("never resolves outside the root: unsafe names are ignored, escaping symlinks are unavailable", () =>
      Effect.gen(function*() {
        const outside = yield* tempDirectory({ "secret.onnx": onnx, "model/model.onnx": onnx })
        const root = yield* tempRepository({
          "bad name/model.onnx": onnx,
          "-dash/model.onnx": onnx,
          "linkfile/model.onnx": { symlink: Path.join(outside, "secret.onnx") },
          "linkdir": { symlink: Path.join(outside, "model") },
          "inside/model.onnx": onnx,
          "alias/model.onnx": { symlink: "../inside/model.onnx" }
        })
        const repository = yield* ModelRepository.scan(root)
        assert.deepStrictEqual(repository.ignored.map((i) => i.name), ["-dash", "bad name"])
        assert.include(repository.ignored[0]!.reason, "invalid model name")
        assert.include(reasonOf(entry(repository, "linkfile", "1")), "resolves outside the model repository")
        assert.include(reasonOf(entry(repository, "linkdir", "1")), "resolves outside the model repository")
        assert.strictEqual(entry(repository, "alias", "1")._tag, "Found", "a symlink that stays inside is fine")
        for (const e of repository.entries) {
          if (e._tag === "Found") assert.isTrue(e.path.startsWith(repository.root + Path.sep), e.path)
        }
      }))

    it.effect("reads no config.json whose real path leaves the root, and quotes none of it in the reason", () =>
      Effect.gen(function*() {
        const outside = yield* tempDirectory({ "config.json": JSON.stringify({ instances: 3 }), "passwd": "root:x:0:0:root:/root:/bin/bash\n" })
        const root = yield* tempRepository({
          "cfgout/model.onnx": onnx,
          "cfgout/config.json": { symlink: Path.join(outside, "config.json") },
          "cfgsecret/model.onnx": onnx,
          "cfgsecret/config.json": { symlink: Path.join(outside, "passwd") },
          "cfgin/model.onnx": onnx,
          "cfgin/config.json": { symlink: "../shared.json" },
          "shared.json/x": "a directory, so not a model's config",
          "cfgnotjson/model.onnx": onnx,
          "cfgnotjson/config.json": "root:x:0:0:root:/root:/bin/bash\n"
        })
        const repository = yield* ModelRepository.scan(root)
        assert.strictEqual(reasonOf(entry(repository, "cfgout", "1")), "config.json resolves outside the model repository")
        assert.strictEqual(reasonOf(entry(repository, "cfgsecret", "1")), "config.json resolves outside the model repository")
        assert.strictEqual(reasonOf(entry(repository, "cfgin", "1")), "config.json is not a regular file", "a link inside the root is followed (to a directory)")
        assert.strictEqual(reasonOf(entry(repository, "cfgnotjson", "1")), "config.json: invalid JSON")
      }))

    it.effect.skipIf(process.platform === "win32")("reads no config.json that is not a regular file: a FIFO would hold one of libuv's threads until a writer came", () =>
      Effect.gen(function*() {
        const root = yield* tempRepository({ "fifo/model.onnx": onnx, "ok/model.onnx": onnx })
        const fifo = Path.join(root, "fifo", "config.json")
        execFileSync("mkfifo", [fifo])
        // Should the scan open it anyway, a writer lets that open (and the test) end.
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            try {
              Fs.closeSync(Fs.openSync(fifo, Fs.constants.O_WRONLY | Fs.constants.O_NONBLOCK))
            } catch {}
          })
        )
        const repository = yield* ModelRepository.scan(root).pipe(Effect.timeout("5 seconds"))
        assert.strictEqual(reasonOf(entry(repository, "fifo", "1")), "config.json is not a regular file")
        assert.strictEqual(entry(repository, "ok", "1")._tag, "Found")
      }), 10_000)

    it.effect("reads no config.json larger than maxConfigBytes: every load rescans the repository and would hold the whole file", () =>
      Effect.gen(function*() {
        const root = yield* tempRepository({ "big/model.onnx": onnx, "big/config.json": "" })
        Fs.truncateSync(Path.join(root, "big", "config.json"), ModelRepository.maxConfigBytes + 1)
        const repository = yield* ModelRepository.scan(root)
        assert.strictEqual(
          reasonOf(entry(repository, "big", "1")),
          `config.json is ${ModelRepository.maxConfigBytes + 1} bytes, more than the ${ModelRepository.maxConfigBytes} a configuration may have`
        )
      }))

    it.effect("fails with RepositoryError only when the root cannot be read", () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(ModelRepository.scan("/nonexistent/effect-onnx-models"))
        assert.strictEqual(error._tag, "RepositoryError")
        assert.include(error.message, "does not exist")
        const root = yield* tempRepository({ "file.txt": "x" })
        const notDir = yield* Effect.flip(ModelRepository.scan(Path.join(root, "file.txt")))
        assert.strictEqual(notDir._tag, "RepositoryError")
      }))

    it.effect("scans the bundled repository: mlp and silero_vad", () =>
      Effect.gen(function*() {
        const repository = yield* ModelRepository.scan(new URL("../models", import.meta.url).pathname)
        assert.deepStrictEqual(repository.entries.map((e) => `${e._tag} ${e.name}@${e.version}`), ["Found mlp@1", "Found silero_vad@1"])
      }))
  })
})

describe("ModelRepository: versionPolicy edges and file identity", () => {
  it.effect("notServed reports a version specific names that has no directory though none is left out", () =>
    Effect.gen(function*() {
      const root = yield* tempRepository({
        "m/1/model.onnx": onnx,
        "m/config.json": JSON.stringify({ versionPolicy: { specific: { versions: [1, 9] } } })
      })
      const repository = yield* ModelRepository.scan(root)
      assert.deepStrictEqual(repository.entries.map((e) => `${e._tag} ${e.name}@${e.version}`), ["Found m@1"])
      assert.deepStrictEqual(repository.notServed, [{ name: "m", policy: "specific 1, 9", leftOut: [], missing: ["9"] }])
    }))

  it.effect("a model.onnx without version directories under a specific policy naming another version is unavailable, saying so", () =>
    Effect.gen(function*() {
      const root = yield* tempRepository({
        "flat/model.onnx": onnx,
        "flat/config.json": JSON.stringify({ versionPolicy: { specific: { versions: [2] } } })
      })
      const repository = yield* ModelRepository.scan(root)
      assert.deepStrictEqual(repository.entries, [{
        _tag: "Unavailable",
        name: "flat",
        version: "2",
        reason: "no version that versionPolicy (specific 2) names is in the repository (it has only model.onnx, version 1)"
      }])
      assert.deepStrictEqual(repository.notServed, [{ name: "flat", policy: "specific 2", leftOut: ["1"], missing: ["2"] }])
    }))

  it.live("warm-up files: checked at the scan in the model's warmup/ directory, their real path filled in, and a rewritten one changes the fingerprint", () =>
    Effect.gen(function*() {
      const warmup = (file: string) => JSON.stringify({ warmup: [{ name: "w", inputs: { x: { data: { file } } } }] })
      const root = yield* tempRepository({
        "m/model.onnx": "weights",
        "m/config.json": warmup("row.bin"),
        "m/warmup/row.bin": "abcd",
        "missing/model.onnx": "weights",
        "missing/config.json": warmup("nope.bin"),
        "dir/model.onnx": "weights",
        "dir/config.json": warmup("sub"),
        "dir/warmup/sub/x": "x",
        "outside/model.onnx": "weights",
        "outside/config.json": warmup("link.bin")
      })
      const secret = Path.join(Path.dirname(root), `${Path.basename(root)}-secret.bin`)
      Fs.writeFileSync(secret, "s")
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(secret, { force: true })))
      Fs.mkdirSync(Path.join(root, "outside", "warmup"))
      Fs.symlinkSync(secret, Path.join(root, "outside", "warmup", "link.bin"))
      const repository = yield* ModelRepository.scan(root)
      const byName = Object.fromEntries(repository.entries.map((e) => [e.name, e]))
      const m = byName["m"]!
      assert.strictEqual(m._tag, "Found")
      const data = m._tag === "Found" ? m.config.warmup?.[0]?.inputs["x"]?.data : undefined
      assert.deepInclude(data, { _tag: "File", name: "row.bin", path: Fs.realpathSync(Path.join(root, "m", "warmup", "row.bin")) })
      const reason = (name: string) => {
        const e = byName[name]!
        return e._tag === "Unavailable" ? e.reason : assert.fail(`${name} is ${e._tag}`)
      }
      assert.strictEqual(reason("missing"), `config.json: warmup sample "w", input "x": warmup/nope.bin cannot be read (no such file)`)
      assert.strictEqual(reason("dir"), `config.json: warmup sample "w", input "x": warmup/sub is not a regular file`)
      assert.strictEqual(reason("outside"), `config.json: warmup sample "w", input "x": warmup/link.bin resolves outside the model repository`)
      const before = ModelRepository.fingerprint(repository, "m")
      assert.strictEqual(ModelRepository.fingerprint(yield* ModelRepository.scan(root), "m"), before, "unchanged")
      yield* Effect.sleep("50 millis") // past the filesystem's coarse timestamp tick
      Fs.writeFileSync(Path.join(root, "m", "warmup", "row.bin"), "efgh")
      assert.notStrictEqual(ModelRepository.fingerprint(yield* ModelRepository.scan(root), "m"), before, "a rewritten warm-up file is a changed model")
    }))

  it.live("initial state files: read at the scan from the model's initial_state/ directory, and a rewritten one changes the fingerprint", () =>
    Effect.gen(function*() {
      const stateful = (file: string) => JSON.stringify({ sequenceBatching: { state: [{ input: "h", output: "hN" }, { input: "c", output: "cN", initialState: { file } }] } })
      const root = yield* tempRepository({
        "m/model.onnx": "weights",
        "m/config.json": stateful("c0.bin"),
        "m/initial_state/c0.bin": "abcd",
        "missing/model.onnx": "weights",
        "missing/config.json": stateful("nope.bin"),
        "dir/model.onnx": "weights",
        "dir/config.json": stateful("sub"),
        "dir/initial_state/sub/x": "x",
        "outside/model.onnx": "weights",
        "outside/config.json": stateful("link.bin")
      })
      const secret = Path.join(Path.dirname(root), `${Path.basename(root)}-secret-state.bin`)
      Fs.writeFileSync(secret, "s")
      yield* Effect.addFinalizer(() => Effect.sync(() => Fs.rmSync(secret, { force: true })))
      Fs.mkdirSync(Path.join(root, "outside", "initial_state"))
      Fs.symlinkSync(secret, Path.join(root, "outside", "initial_state", "link.bin"))
      const repository = yield* ModelRepository.scan(root)
      const byName = Object.fromEntries(repository.entries.map((e) => [e.name, e]))
      const m = byName["m"]!
      assert.strictEqual(m._tag, "Found")
      const states = m._tag === "Found" ? m.config.sequenceBatching?.states : undefined
      assert.deepStrictEqual(states?.[0], { input: "h", output: "hN", dims: undefined })
      assert.strictEqual(states?.[1]?.initialFile?.name, "c0.bin")
      assert.deepStrictEqual(Array.from(states?.[1]?.initialFile?.bytes ?? []), [97, 98, 99, 100])
      const reason = (name: string) => {
        const e = byName[name]!
        return e._tag === "Unavailable" ? e.reason : assert.fail(`${name} is ${e._tag}`)
      }
      assert.strictEqual(reason("missing"), "config.json: sequenceBatching.state[1].initialState: initial_state/nope.bin cannot be read (no such file)")
      assert.strictEqual(reason("dir"), "config.json: sequenceBatching.state[1].initialState: initial_state/sub is not a regular file")
      assert.strictEqual(reason("outside"), "config.json: sequenceBatching.state[1].initialState: initial_state/link.bin resolves outside the model repository")
      const before = ModelRepository.fingerprint(repository, "m")
      assert.strictEqual(ModelRepository.fingerprint(yield* ModelRepository.scan(root), "m"), before, "unchanged")
      // the same size, the same config.json: only the bytes differ
      Fs.writeFileSync(Path.join(root, "m", "initial_state", "c0.bin"), "abce")
      assert.notStrictEqual(ModelRepository.fingerprint(yield* ModelRepository.scan(root), "m"), before, "a rewritten initial state file is a changed model")
    }))

  it.live("initial state files: together at most what a sequence's states may hold; reading stops at the file that passes it", () =>
    Effect.gen(function*() {
      const big = Buffer.alloc(10 * 1024 * 1024)
      const states = [0, 1, 2].map((i) => ({ input: `h${i}`, output: `h${i}N`, initialState: { file: "big.bin" } }))
      const root = yield* tempRepository({ "m/model.onnx": "weights", "m/config.json": JSON.stringify({ sequenceBatching: { state: states } }) })
      Fs.mkdirSync(Path.join(root, "m", "initial_state"))
      Fs.writeFileSync(Path.join(root, "m", "initial_state", "big.bin"), big)
      const [entry] = (yield* ModelRepository.scan(root)).entries
      assert.strictEqual(entry?._tag, "Unavailable")
      assert.strictEqual(
        entry?._tag === "Unavailable" ? entry.reason : undefined,
        "config.json: sequenceBatching.state[1].initialState: initial_state/big.bin: the initial state files come to 20971520 bytes so far, more than the 16777216 a sequence's states may have"
      )
    }))

  it.live("fingerprint changes when model.onnx is rewritten in place with the same size and its old modification time restored", () =>
    Effect.gen(function*() {
      const root = yield* tempRepository({ "m/1/model.onnx": "weights-A" })
      const file = Path.join(root, "m", "1", "model.onnx")
      Fs.utimesSync(file, 1_000_000_000, 1_000_000_000)
      const before = ModelRepository.fingerprint(yield* ModelRepository.scan(root), "m")
      yield* Effect.sleep("50 millis") // past the filesystem's coarse timestamp tick
      const inode = Fs.statSync(file).ino
      Fs.writeFileSync(file, "weights-B") // same inode, same size
      Fs.utimesSync(file, 1_000_000_000, 1_000_000_000)
      assert.strictEqual(Fs.statSync(file).ino, inode)
      const after = ModelRepository.fingerprint(yield* ModelRepository.scan(root), "m")
      assert.notStrictEqual(after, before)
    }))
})
