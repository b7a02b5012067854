/**
 * What the server's process must note the moment it starts, before it loads anything else (the
 * rest of the program takes a second or more to load on a busy machine): its parent, and whether
 * a signal has asked it to stop. No imports, so that an entry point that imports it alone first
 * has it evaluated at once (`bin/server.ts`).
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
