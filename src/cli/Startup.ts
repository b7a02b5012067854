/**
 * What the server's process must note, or guard against, the moment it starts, before it loads
 * anything else (the rest of the program takes a second or more to load on a busy machine): its
 * parent, whether a signal has asked it to stop, and a reader of its output that goes away. No
 * imports, so that an entry point that imports it alone first has it evaluated at once
 * (`bin/server.ts`).
 *
 * @module Startup
 */

/**
 * This process's parent when it started: a server whose parent dies while it loads must still see
 * that it changed (it would read init's pid later).
 */
export const parentAtStart: number = process.ppid

let stoppedBySignal = false

/** The server calls this when a signal (or its parent's exit) asks it to stop: the interruption that follows is its normal end. */
export const markStoppedBySignal = (): void => {
  stoppedBySignal = true
}

/** Whether `markStoppedBySignal` was called. */
export const wasStoppedBySignal = (): boolean => stoppedBySignal

/**
 * A reader of `streams` (default standard output and error) that goes away (`| head`, a log
 * shipper that restarts, a closed terminal) must not end the process: Node reports the failed
 * write as an "error" event on the stream, and without a listener that is an uncaught exception
 * (exit 1, what was in flight lost, no drain). With this listener the lines are lost instead. For
 * streams that carry logs and progress only: a command whose product is standard output (`perf`,
 * `infer --output -`) must still fail when it cannot write it.
 */
export const surviveClosedOutput = (streams: ReadonlyArray<NodeJS.WritableStream> = [process.stdout, process.stderr]): void => {
  for (const stream of streams) stream.on("error", () => {})
}
