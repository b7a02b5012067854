import { assert, describe, it } from "@effect/vitest"
import * as VersionPolicy from "../src/VersionPolicy.ts"

describe("VersionPolicy", () => {
  describe("problem", () => {
    const accepted: ReadonlyArray<unknown> = [
      { all: {} },
      { latest: { numVersions: 1 } },
      { latest: { numVersions: VersionPolicy.maxVersions } },
      { specific: { versions: [1] } },
      { specific: { versions: [0, 3, "7", "0012"] } },
      { specific: { versions: [Number.MAX_SAFE_INTEGER, "0009007199254740990"] } }
    ]
    for (const json of accepted) {
      it(`accepts ${JSON.stringify(json)}`, () => assert.isUndefined(VersionPolicy.problem(json)))
    }

    const refused: ReadonlyArray<readonly [unknown, string]> = [
      ["latest", "must be an object"],
      [[{ all: {} }], "must be an object"],
      [null, "must be an object"],
      [{}, "must name one of"],
      [{ all: {}, latest: { numVersions: 1 } }, `must name one policy, got "all", "latest"`],
      [{ newest: { numVersions: 1 } }, `unknown policy "newest"`],
      [{ all: true }, `"all" takes no settings`],
      [{ all: { x: 1 } }, `"all" takes no settings`],
      [{ latest: 1 }, `"latest" must be an object`],
      [{ latest: {} }, `"latest.numVersions" must be an integer from 1 to 1000`],
      [{ latest: { numVersions: 0 } }, `"latest.numVersions" must be an integer`],
      [{ latest: { numVersions: 1.5 } }, `"latest.numVersions" must be an integer`],
      [{ latest: { numVersions: "2" } }, `"latest.numVersions" must be an integer`],
      [{ latest: { numVersions: 1001 } }, `"latest.numVersions" must be an integer`],
      [{ latest: { num_versions: 1 } }, `"latest" takes only "numVersions", got "num_versions"`],
      [{ specific: [1] }, `"specific" must be an object`],
      [{ specific: { versions: [] } }, `"specific.versions" must list 1 to 1000 versions`],
      [{ specific: { versions: 1 } }, `"specific.versions" must list`],
      [{ specific: { versions: Array.from({ length: 1001 }, (_, i) => i) } }, `"specific.versions" must list`],
      [{ specific: { versions: [-1] } }, `must be integers from 0 to 9007199254740991, got -1`],
      [{ specific: { versions: [1.5] } }, `got 1.5`],
      [{ specific: { versions: ["1a"] } }, `got "1a"`],
      [{ specific: { versions: [2 ** 53] } }, `got ${2 ** 53}`],
      [{ specific: { versions: ["12345678901234567890"] } }, `got "12345678901234567890"`],
      [{ specific: { versions: ["9007199254740992"] } }, `must be integers from 0 to 9007199254740991, got "9007199254740992"`],
      [{ specific: { versions: [1, "01"] } }, `names a version twice`],
      [{ specific: { versions: [1], extra: true } }, `"specific" takes only "versions", got "extra"`]
    ]
    for (const [json, expected] of refused) {
      it(`refuses ${JSON.stringify(json).slice(0, 60)}: ${expected}`, () => assert.include(VersionPolicy.problem(json) ?? "(accepted)", expected))
    }
  })

  it("fromJson decodes each policy, versions as digits without leading zeros", () => {
    assert.deepStrictEqual(VersionPolicy.fromJson({ all: {} }), VersionPolicy.all)
    assert.deepStrictEqual(VersionPolicy.fromJson({ latest: { numVersions: 2 } }), { _tag: "Latest", numVersions: 2 })
    assert.deepStrictEqual(VersionPolicy.fromJson({ specific: { versions: [3, "007", "0"] } }), { _tag: "Specific", versions: ["3", "7", "0"] })
    assert.deepStrictEqual(VersionPolicy.fromJson({ latest: {} }), VersionPolicy.all, "an invalid policy (refused by `problem` first) decodes as all")
  })

  it("describe and toTriton say the policy in words and in model_config.proto's form", () => {
    const table: ReadonlyArray<readonly [VersionPolicy.VersionPolicy, string, unknown]> = [
      [VersionPolicy.all, "all", { all: {} }],
      [{ _tag: "Latest", numVersions: 2 }, "latest 2", { latest: { num_versions: 2 } }],
      [{ _tag: "Specific", versions: ["1", "3"] }, "specific 1, 3", { specific: { versions: [1, 3] } }]
    ]
    for (const [policy, words, triton] of table) {
      assert.strictEqual(VersionPolicy.describe(policy), words)
      assert.deepStrictEqual(VersionPolicy.toTriton(policy), triton)
    }
  })

  describe("select", () => {
    const table: ReadonlyArray<readonly [string, VersionPolicy.VersionPolicy, ReadonlyArray<string>, VersionPolicy.Selection]> = [
      ["all serves every directory", VersionPolicy.all, ["1", "2", "10"], { served: ["1", "2", "10"], left: [], missing: [] }],
      ["latest 1 serves the highest number, not the last string", { _tag: "Latest", numVersions: 1 }, ["1", "2", "10"], { served: ["10"], left: ["1", "2"], missing: [] }],
      ["latest 2", { _tag: "Latest", numVersions: 2 }, ["1", "2", "10"], { served: ["2", "10"], left: ["1"], missing: [] }],
      ["latest n above the count serves all", { _tag: "Latest", numVersions: 5 }, ["1", "2"], { served: ["1", "2"], left: [], missing: [] }],
      ["latest counts numbers: two directories of one number are both served", { _tag: "Latest", numVersions: 1 }, ["1", "02", "2"], { served: ["02", "2"], left: ["1"], missing: [] }],
      ["specific serves those named, by number", { _tag: "Specific", versions: ["1", "10"] }, ["01", "2", "10"], { served: ["01", "10"], left: ["2"], missing: [] }],
      ["specific names a version with no directory", { _tag: "Specific", versions: ["2", "5"] }, ["1", "2"], { served: ["2"], left: ["1"], missing: ["5"] }],
      ["specific that names none present serves nothing", { _tag: "Specific", versions: ["7"] }, ["1"], { served: [], left: ["1"], missing: ["7"] }],
      ["versions longer than a safe integer compare as numbers", { _tag: "Latest", numVersions: 1 }, ["9007199254740993", "9007199254740992"], { served: ["9007199254740993"], left: ["9007199254740992"], missing: [] }]
    ]
    for (const [name, policy, versions, expected] of table) {
      it(name, () => assert.deepStrictEqual(VersionPolicy.select(policy, versions), expected))
    }
  })
})

describe("VersionPolicy bounds and counting", () => {
  it("specific accepts exactly maxVersions versions (the bound is inclusive, as latest's is)", () => {
    assert.isUndefined(VersionPolicy.problem({ specific: { versions: Array.from({ length: VersionPolicy.maxVersions }, (_, i) => i) } }))
  })

  it("latest n counts distinct numbers: two directories of one number take one of the n places", () => {
    assert.deepStrictEqual(VersionPolicy.select({ _tag: "Latest", numVersions: 2 }, ["1", "02", "2"]), { served: ["1", "02", "2"], left: [], missing: [] })
  })
})
