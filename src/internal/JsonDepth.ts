/**
 * A guard for `JSON.parse` on untrusted text. Parsing costs about half a microsecond per level of
 * nesting (against a few nanoseconds per byte of flat data) and an array per level: 16 MB of
 * `[[[…]]]` held the main thread for seconds and took gigabytes of heap. A request body never
 * nests deeper than its tensors' rank and a few levels of envelope.
 *
 * @module JsonDepth
 */

/** The deepest nesting of arrays and objects a request body may have. */
export const maxDepth = 64

/**
 * Openers (`[` and `{`) that a text may hold without its depth being scanned: at most this many
 * levels parse in a few milliseconds. Counting them is native (`indexOf`), about 1% of the parse.
 */
const openersUnscanned = 10_000

/** How many times `char` occurs in `text`, counting no further than `limit + 1`. */
const countUpTo = (text: string, char: string, limit: number): number => {
  let n = 0
  for (let i = text.indexOf(char); i !== -1 && n <= limit; i = text.indexOf(char, i + 1)) n++
  return n
}

/** The characters that open or close a level or a string; the scan jumps from one to the next. */
const structural = /[[\]{}"]/g

/**
 * Whether `text` (meant for `JSON.parse`) nests arrays and objects deeper than `depth` levels,
 * outside strings. A text with few openers is not scanned (false): its parse is cheap whatever
 * its depth. Otherwise one pass from one structural character to the next (a regex, about a
 * fifth of the parse of a body of nested rows), stopping at the first level too deep.
 */
export const nestsDeeperThan = (text: string, depth: number = maxDepth): boolean => {
  const openers = countUpTo(text, "[", openersUnscanned)
  if (openers + countUpTo(text, "{", openersUnscanned - openers) <= openersUnscanned) return false
  return scanDeeperThan(text, depth)
}

/**
 * Calls `stop` with each bracket or brace of `text` outside strings, in order, jumping from one
 * structural character to the next; true once `stop` says so, false at the end (or at a string
 * that does not end: JSON.parse refuses it).
 */
const scanUntil = (text: string, stop: (char: number) => boolean): boolean => {
  structural.lastIndex = 0
  for (let match = structural.exec(text); match !== null; match = structural.exec(text)) {
    const c = text.charCodeAt(match.index)
    if (c !== 0x22) {
      if (stop(c)) return true
      continue
    }
    const end = stringEnd(text, match.index)
    if (end === -1) return false
    structural.lastIndex = end + 1
  }
  return false
}

/** `nestsDeeperThan`'s scan, without its count first. */
const scanDeeperThan = (text: string, depth: number): boolean => {
  let level = 0
  return scanUntil(text, (c) => (c === 0x5b || c === 0x7b ? ++level > depth : (level--, false)))
}

/** The index of the quote that closes the string opened at `start`: one after an even run of backslashes; -1 if none. */
const stringEnd = (text: string, start: number): number => {
  for (let end = text.indexOf("\"", start + 1); end !== -1; end = text.indexOf("\"", end + 1)) {
    let k = end - 1
    while (text.charCodeAt(k) === 0x5c) k--
    if ((end - 1 - k) % 2 === 0) return end
  }
  return -1
}

/** The 400 message for a text that `nestsDeeperThan` refused. */
export const tooDeepMessage = (what: string): string =>
  `${what} nests arrays or objects more than ${maxDepth} levels deep (a request nests as deep as its tensors' rank, plus its envelope)`

/** The most objects an inference body may hold: its inputs, outputs and their parameters are a few each. */
export const maxObjects = 4096

/** The most arrays an inference body may hold: nested rows of data (`[[0], [0], …]`) are one each. */
export const maxArrays = 1 << 20

/**
 * Why `text` (an inference body meant for `JSON.parse`) may not be parsed, or undefined: it nests
 * deeper than `maxDepth` (as `nestsDeeperThan`), or holds more objects or arrays than any request
 * needs, outside strings. Parsing costs by values, not bytes: 16 MB of `{}` (16 KB
 * gzip-compressed) took 2 s of the main thread, of `[]` 1.7 s. The same two native counts as
 * `nestsDeeperThan` (`indexOf`); the exact scans (outside strings) run only past their bounds.
 */
export const inferBodyProblem = (text: string, what: string): string | undefined => {
  const arrays = countUpTo(text, "[", maxArrays)
  const objects = countUpTo(text, "{", Math.max(maxObjects, openersUnscanned))
  if (arrays + objects > openersUnscanned && scanDeeperThan(text, maxDepth)) return tooDeepMessage(what)
  if (objects <= maxObjects && arrays <= maxArrays) return undefined
  return scanTooMany(text, what)
}

/** The exact count behind `inferBodyProblem`: objects and arrays outside strings. */
const scanTooMany = (text: string, what: string): string | undefined => {
  let objects = 0
  let arrays = 0
  const over = scanUntil(text, (c) => (c === 0x7b && ++objects > maxObjects) || (c === 0x5b && ++arrays > maxArrays))
  if (!over) return undefined
  return objects > maxObjects
    ? `${what} holds more than ${maxObjects} objects (a request's inputs, outputs and parameters are a few)`
    : `${what} holds more than ${maxArrays} arrays (send many rows as one flat data array, or as binary tensor data)`
}
