/**
 * What every error answer must look like: JSON `{"error": "…"}` with a meaningful message of at
 * most `maxMessageLength` characters, and no stack frame, source location or file path.
 */
import { assert } from "@effect/vitest"
import { maxMessageLength } from "../../src/http/Routes.ts"
import { secretPath } from "../http/TestApp.ts"

/** The message is JSON `{error}`, meaningful, short, with no stack frame and no path. */
export const assertCleanError = (label: string, status: number, text: string, error?: RegExp): void => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    assert.fail(`${label}: the body is not JSON: ${text.slice(0, 200)}`)
  }
  assert.isObject(json, label)
  const message = (json as { error?: unknown }).error
  assert.isString(message, `${label}: no error message in ${text.slice(0, 200)}`)
  const m = message as string
  assert.isAtLeast(m.length, 10, `${label}: "${m}" is not a meaningful message`)
  assert.isAtMost(m.length, maxMessageLength, `${label}: the message is cut`)
  if (error !== undefined) assert.match(m, error, `${label} (status ${status})`)
  assert.notMatch(m, /\bat (?:async )?[\w.<>$]+ \(|\n\s*at /, `${label}: stack frame in "${m.slice(0, 300)}"`)
  assert.notInclude(m, "/work/", label)
  assert.notInclude(m, secretPath, label)
  assert.notMatch(m, /\.(?:ts|js|mjs|cjs):\d/, `${label}: source location in "${m.slice(0, 300)}"`)
}
