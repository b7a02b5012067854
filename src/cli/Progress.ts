/**
 * Progress of a batch: counts, rate and ETA, drawn as a bar redrawn in place on a terminal, or
 * printed as plain lines at an interval otherwise (a log file, CI). The formatting is pure;
 * `start` is the ticker that draws it.
 *
 * Rate is the average since the start (records settled per second); ETA is what remains of
 * `total` at that rate, unknown until the first record settles or when the total is unknown.
 *
 * @module Progress
 */
import { Duration, Effect, Schedule, type Scope } from "effect"

/** What the bar shows. */
export interface Snapshot {
  /** Records settled (written or failed) so far. */
  readonly done: number
  /** Records expected, if known. */
  readonly total: number | undefined
  /** Of `done`, those answered with an error record. */
  readonly failed: number
  /** Malformed lines skipped. */
  readonly skipped: number
  readonly elapsedMs: number
}

/** `auto`: a bar on a terminal, plain lines otherwise. */
export type Mode = "auto" | "bar" | "plain" | "none"

export const modes: ReadonlyArray<Mode> = ["auto", "bar", "plain", "none"]

/** Records per second, 0 before any time has passed. */
export const rate = (s: Snapshot): number => (s.elapsedMs <= 0 ? 0 : s.done / (s.elapsedMs / 1000))

/** Milliseconds left at the current rate, or undefined when unknown. */
export const etaMs = (s: Snapshot): number | undefined => {
  if (s.total === undefined || s.done === 0) return undefined
  const left = Math.max(0, s.total - s.done - s.skipped)
  return (left / rate(s)) * 1000
}

/** `m:ss`, or `h:mm:ss` from an hour on. */
export const formatDuration = (ms: number): string => {
  const total = Math.max(0, Math.round(ms / 1000))
  const h = Math.floor(total / 3600)
  const m = Math.floor((total % 3600) / 60)
  const sec = String(total % 60).padStart(2, "0")
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`
}

const formatRate = (r: number): string => (r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2))

const fraction = (s: Snapshot): number | undefined =>
  s.total === undefined || s.total === 0 ? undefined : Math.min(1, (s.done + s.skipped) / s.total)

const tail = (s: Snapshot): string => {
  const parts: Array<string> = []
  if (s.failed > 0) parts.push(`${s.failed} failed`)
  if (s.skipped > 0) parts.push(`${s.skipped} skipped`)
  return parts.length === 0 ? "" : `, ${parts.join(", ")}`
}

/** One line of the bar, at most `columns` wide: `[#####-----] 120/500 24% 81.2/s ETA 0:04`. */
export const bar = (s: Snapshot, columns = 80): string => {
  const f = fraction(s)
  const eta = etaMs(s)
  const count = s.total === undefined ? `${s.done + s.skipped}` : `${s.done + s.skipped}/${s.total}`
  const text = `${count}${f === undefined ? "" : ` ${Math.floor(f * 100)}%`} ${formatRate(rate(s))}/s ETA ${
    eta === undefined ? "-:--" : formatDuration(eta)
  }${tail(s)}`
  const width = Math.min(40, columns - text.length - 3)
  if (width < 5) return text.slice(0, Math.max(0, columns - 1))
  const filled = f === undefined ? 0 : Math.round(f * width)
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${text}`
}

/** One plain progress line: `progress: 120/500 (24%), 81.2 records/s, ETA 0:04`. */
export const line = (s: Snapshot): string => {
  const f = fraction(s)
  const eta = etaMs(s)
  const count = s.total === undefined ? `${s.done + s.skipped}` : `${s.done + s.skipped}/${s.total}`
  return `progress: ${count}${f === undefined ? "" : ` (${Math.floor(f * 100)}%)`}, ${formatRate(rate(s))} records/s${
    eta === undefined ? "" : `, ETA ${formatDuration(eta)}`
  }${tail(s)}`
}

/** How a batch ended. */
export type Ending = "done" | "interrupted" | "stopped"

/** The final line: `done: 500 records in 0:06 (81.2 records/s), 2 failed, 1 skipped`. */
export const summary = (s: Snapshot, ending: Ending = "done"): string =>
  `${ending}: ${s.done} record${s.done === 1 ? "" : "s"} in ${formatDuration(s.elapsedMs)} (${formatRate(rate(s))} records/s)${tail(s)}`

/** Where progress goes (stderr in the CLI). */
export interface Output {
  readonly write: (text: string) => void
  readonly isTTY?: boolean | undefined
  readonly columns?: number | undefined
}

export interface Options {
  readonly mode: Mode
  readonly output: Output
  /** Between redraws of the bar. Default 100 ms. */
  readonly barInterval?: Duration.Input | undefined
  /** Between plain lines. Default 2 seconds. */
  readonly lineInterval?: Duration.Input | undefined
}

export interface Handle {
  /** Prints a message line (the bar is redrawn below it). */
  readonly log: (text: string) => void
  /** Stops drawing; erases the bar and prints the summary line. */
  readonly finish: (ending: Ending) => Effect.Effect<void>
}

/**
 * Draws `snapshot()` periodically until the scope closes or `finish` is called; `finish` erases
 * the bar and prints the summary line (in every mode but `none`). Messages are printed in
 * every mode.
 */
export const start = (options: Options, snapshot: () => Snapshot): Effect.Effect<Handle, never, Scope.Scope> =>
  Effect.gen(function*() {
    const { output } = options
    const mode = options.mode === "auto" ? (output.isTTY === true ? "bar" : "plain") : options.mode
    let finished = false
    let drawn = false
    const draw = Effect.sync(() => {
      if (finished) return
      if (mode === "bar") {
        // A terminal whose size is unknown reports 0 columns.
        output.write(`\r\x1b[2K${bar(snapshot(), output.columns !== undefined && output.columns > 0 ? output.columns : 80)}`)
        drawn = true
      } else if (mode === "plain") {
        output.write(`${line(snapshot())}\n`)
      }
    })
    if (mode === "bar" || mode === "plain") {
      const every = mode === "bar" ? options.barInterval ?? Duration.millis(100) : options.lineInterval ?? Duration.seconds(2)
      yield* Effect.forkScoped(Effect.sleep(every).pipe(Effect.andThen(draw), Effect.repeat(Schedule.forever)))
    }
    const erase = () => {
      if (drawn) output.write("\r\x1b[2K")
      drawn = false
    }
    return {
      log: (text) => {
        erase()
        output.write(`${text}\n`)
      },
      finish: (ending) =>
        Effect.sync(() => {
          if (finished) return
          finished = true
          if (mode === "none") return
          erase()
          output.write(`${summary(snapshot(), ending)}\n`)
        })
    }
  })
