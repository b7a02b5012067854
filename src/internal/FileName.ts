/**
 * A file name that config.json gives for a file of one of the model's directories (`warmup/`,
 * `initial_state/`, as Triton lays them out): a plain name that cannot reach another directory.
 *
 * @module FileName
 */

/** Why `name` (at `at` in config.json) is not a file name in the model's `directory`, or undefined. */
export const problem = (at: string, name: unknown, directory: string): string | undefined =>
  typeof name === "string" && name.length > 0 && name.length <= 255 && !/[/\\\0]/.test(name) && name !== "." && name !== ".."
    ? undefined
    : `${at} must be a file name in the model's ${directory}/ directory (no "/", "\\" or ".."), got ${JSON.stringify(name)}`
