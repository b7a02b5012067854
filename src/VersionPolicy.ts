/**
 * Which of a model's version directories are served: Triton's `version_policy`, written in a
 * model's `config.json` as `versionPolicy`.
 *
 * ```json
 * { "versionPolicy": { "all": {} } }                       every version directory (the default here)
 * { "versionPolicy": { "latest": { "numVersions": 2 } } }  the 2 highest-numbered ones (Triton's default, with 1)
 * { "versionPolicy": { "specific": { "versions": [1, 3] } } }  exactly these
 * ```
 *
 * Pure: `select` decides from the version directories found on disk. The versions a policy
 * leaves out are not loaded (a request for one is answered as for a version that does not
 * exist); a version `specific` names that has no directory is skipped (the scan reports it in
 * `ModelRepository.NotServed.missing`, and the server logs a warning), and when none of them has
 * one the model is unavailable, as Triton's "at least one version must be available under the
 * version policy". Versions compare as numbers ("01" is version 1), as everywhere in the repository.
 *
 * The default differs from Triton's: Triton serves only the latest version when the policy is
 * absent; this server serves every version directory, as it always has.
 *
 * @module VersionPolicy
 */
import { Schema } from "effect"

/** A version policy, decoded. */
export type VersionPolicy =
  | { readonly _tag: "All" }
  | { readonly _tag: "Latest"; readonly numVersions: number }
  | { readonly _tag: "Specific"; readonly versions: ReadonlyArray<string> }

/** Serve every version directory (the default). */
export const all: VersionPolicy = { _tag: "All" }

/** Most versions `latest` or `specific` may name (each version at most 2^53 - 1). */
export const maxVersions = 1_000

const isCount = (v: unknown): v is number => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= maxVersions

/**
 * A version as config.json may write it: an integer from 0 to 2^53 - 1 (the largest a JSON number
 * holds exactly, and the model configuration reports), or its decimal digits.
 */
const versionText = (v: unknown): string | undefined => {
  const digits = Number.isSafeInteger(v) && (v as number) >= 0
    ? String(v)
    : typeof v === "string" && /^[0-9]{1,30}$/.test(v)
    ? v.replace(/^0+(?=[0-9])/, "")
    : undefined
  return digits !== undefined && BigInt(digits) <= BigInt(Number.MAX_SAFE_INTEGER) ? digits : undefined
}

const keysOf = (o: object): string => Object.keys(o).map((k) => JSON.stringify(k)).join(", ")

const isObject = (v: unknown): v is Readonly<Record<string, unknown>> => typeof v === "object" && v !== null && !Array.isArray(v)

/**
 * Why `json` is not a version policy, or undefined: exactly one of `all` (an empty object),
 * `latest` (`numVersions`, 1 to 1,000) or `specific` (`versions`, 1 to 1,000 distinct
 * integers from 0 to 2^53 - 1, as numbers or digits), and no other key at any level.
 */
export const problem = (json: unknown): string | undefined => {
  if (!isObject(json)) return `must be an object with one of "all", "latest" or "specific"`
  const keys = Object.keys(json)
  if (keys.length !== 1) {
    return keys.length === 0 ? `must name one of "all", "latest" or "specific"` : `must name one policy, got ${keysOf(json)}`
  }
  const kind = keys[0]!
  const body = json[kind]
  switch (kind) {
    case "all":
      return isObject(body) && Object.keys(body).length === 0 ? undefined : `"all" takes no settings: write {"all": {}}`
    case "latest": {
      if (!isObject(body)) return `"latest" must be an object: {"latest": {"numVersions": 1}}`
      const extra = Object.keys(body).filter((k) => k !== "numVersions")
      if (extra.length > 0) return `"latest" takes only "numVersions", got ${extra.map((k) => JSON.stringify(k)).join(", ")}`
      return isCount(body["numVersions"]) ? undefined : `"latest.numVersions" must be an integer from 1 to ${maxVersions}`
    }
    case "specific": {
      if (!isObject(body)) return `"specific" must be an object: {"specific": {"versions": [1]}}`
      const extra = Object.keys(body).filter((k) => k !== "versions")
      if (extra.length > 0) return `"specific" takes only "versions", got ${extra.map((k) => JSON.stringify(k)).join(", ")}`
      const versions = body["versions"]
      if (!Array.isArray(versions) || versions.length === 0 || versions.length > maxVersions) {
        return `"specific.versions" must list 1 to ${maxVersions} versions`
      }
      const texts = versions.map(versionText)
      const bad = texts.findIndex((t) => t === undefined)
      if (bad >= 0) return `"specific.versions" must be integers from 0 to ${Number.MAX_SAFE_INTEGER}, got ${JSON.stringify(versions[bad])}`
      return new Set(texts).size === texts.length ? undefined : `"specific.versions" names a version twice`
    }
    default:
      return `unknown policy ${JSON.stringify(kind)} (one of "all", "latest" or "specific")`
  }
}

/** config.json's `versionPolicy`: checked by `problem`, decoded by `fromJson`. */
export const ConfigJson = Schema.Unknown.check(Schema.makeFilter((json: unknown) => problem(json) ?? true))

/** The policy `json` writes (`problem(json)` undefined); `all` for anything else. */
export const fromJson = (json: unknown): VersionPolicy => {
  if (problem(json) !== undefined) return all
  const o = json as Readonly<Record<string, Readonly<Record<string, unknown>>>>
  if (o["latest"] !== undefined) return { _tag: "Latest", numVersions: o["latest"]["numVersions"] as number }
  if (o["specific"] !== undefined) return { _tag: "Specific", versions: (o["specific"]["versions"] as ReadonlyArray<unknown>).map((v) => versionText(v)!) }
  return all
}

/** The policy in words, as log lines and reasons quote it: "latest 2", "specific 1, 3", "all". */
export const describe = (policy: VersionPolicy): string =>
  policy._tag === "All" ? "all" : policy._tag === "Latest" ? `latest ${policy.numVersions}` : `specific ${policy.versions.join(", ")}`

/** The policy in Triton's form (`model_config.proto`'s `ModelVersionPolicy`), as the model configuration reports it. */
export const toTriton = (policy: VersionPolicy) =>
  policy._tag === "All"
    ? { all: {} }
    : policy._tag === "Latest"
    ? { latest: { num_versions: policy.numVersions } }
    : { specific: { versions: policy.versions.map(Number) } }

/** What `select` decided for a model's version directories. */
export interface Selection {
  /** The directories to serve, in the order given. */
  readonly served: ReadonlyArray<string>
  /** The directories the policy leaves out, in the order given. */
  readonly left: ReadonlyArray<string>
  /** Versions `specific` names that no directory holds, as the policy writes them. */
  readonly missing: ReadonlyArray<string>
}

const number = (version: string): bigint => BigInt(version)

/**
 * Splits a model's version directories (decimal digits; several may name one number, "01" and
 * "1") by `policy`. `latest n` serves every directory of the n highest numbers.
 */
export const select = (policy: VersionPolicy, versions: ReadonlyArray<string>): Selection => {
  if (policy._tag === "All") return { served: versions, left: [], missing: [] }
  let keep: Set<bigint>
  let missing: ReadonlyArray<string> = []
  if (policy._tag === "Latest") {
    const numbers = [...new Set(versions.map(number))].sort((a, b) => (a < b ? 1 : a > b ? -1 : 0))
    keep = new Set(numbers.slice(0, policy.numVersions))
  } else {
    keep = new Set(policy.versions.map(number))
    const present = new Set(versions.map(number))
    missing = policy.versions.filter((v) => !present.has(number(v)))
  }
  return {
    served: versions.filter((v) => keep.has(number(v))),
    left: versions.filter((v) => !keep.has(number(v))),
    missing
  }
}
