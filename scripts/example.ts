/**
 * `npm run example -- 01` runs `examples/01_*.ts` with this Node; `npm run example` lists them.
 */
import { spawnSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const dir = fileURLToPath(new URL("../examples", import.meta.url))
const examples = Fs.readdirSync(dir).filter((f) => /^\d\d_.*\.ts$/.test(f)).sort()
const wanted = process.argv[2]
const file = wanted === undefined ? undefined : examples.find((f) => f.startsWith(wanted.padStart(2, "0")) || f === wanted)
if (file === undefined) {
  console.log(`usage: npm run example -- NN\n\n${examples.map((f) => `  ${f.slice(0, 2)}  ${f}`).join("\n")}`)
  process.exit(wanted === undefined ? 0 : 2)
}
const result = spawnSync(process.execPath, [Path.join(dir, file), ...process.argv.slice(3)], { stdio: "inherit" })
process.exit(result.status ?? 1)
