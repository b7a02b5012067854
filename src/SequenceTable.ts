/**
 * The sequences of stateful models under way (`Sequence`): each one's state between its
 * requests, its requests run one at a time in the order they came, and how long it has been idle.
 * Synchronous and without a clock of its own (`nowMs` is given): the engine runs each turn, and
 * answers a turn that waits past its deadline.
 *
 * - A sequence's requests run one at a time: one that comes while an earlier one of its sequence
 *   is unanswered waits behind it (`Waiting`), and runs with the state that one leaves.
 * - A success moves the state on (its state outputs are the next state); a failure, a
 *   cancellation or a time-out leaves the state as it was. A start sets the initial state, an end
 *   that succeeds drops the sequence once its turn is over.
 * - A sequence without a request for `maxSequenceIdleMs` (none running, none waiting) is dropped
 *   at the next `take` or `counts`, whatever its model (an unloaded one's too): its memory is
 *   given back then.
 *
 * @module SequenceTable
 */
import * as Sequence from "./Sequence.ts"
import type * as Tensor from "./Tensor.ts"

/** A request's turn in its sequence. */
export interface Turn {
  /** The request's priority rank (0 = Critical … 3 = Low), for the counts of waiting turns. */
  readonly rank: number
  readonly start: boolean
  readonly end: boolean
  /**
   * Runs the request with the sequence's state (`states`, by input name: the table's own, which
   * the run must neither move nor change); calls `done` once it settles, with the next state (by
   * input name, tensors the table may keep) after a success, undefined otherwise. Returns what
   * cancels it, or undefined when it was answered at once (`done` called).
   */
  readonly go: (states: Tensor.TensorMap, done: (next: Tensor.TensorMap | undefined) => void) => (() => void) | undefined
  /**
   * Answers the turn without running it, when its turn comes: "ended" (its sequence ended before
   * it), "reshaped" (a reload of the model changed its states' shape, which ends its sequences),
   * "shuttingDown" (`refuseWaiting`).
   */
  readonly refuse: (why: "ended" | "reshaped" | "shuttingDown") => void
  /** Whether the turn may wait behind its sequence's running request now (the queue's bound counts waiting turns). */
  readonly canWait: () => boolean
}

/** What `take` did with a turn. */
export type Taken =
  | { readonly _tag: "Running"; readonly cancel: () => void }
  /**
   * Behind an earlier request of its sequence: `cancel` takes it out (it is then never run nor
   * refused), or, once its turn has come, cancels its run as `Running`'s does.
   */
  | { readonly _tag: "Waiting"; readonly cancel: () => void }
  /** It would wait, and `canWait` said no. */
  | { readonly _tag: "QueueFull" }
  /** Answered at once (`go` settled it, or `refuse`). */
  | { readonly _tag: "Answered" }
  /** Not a start, and no such sequence is under way (never started, ended, or idle past its limit). */
  | { readonly _tag: "NotStarted" }
  /** A start of a new sequence while the model version already has `capacity` (its `maxSequences`). */
  | { readonly _tag: "Full"; readonly capacity: number }

interface Waiting {
  readonly model: string
  readonly turn: Turn
  readonly sequence: Sequence.Resolved
  gone: boolean
  /** Its run's cancel once its turn came and it runs. */
  running: (() => void) | undefined
}

/** A model version's sequences. */
interface Model {
  readonly key: string
  /** Every sequence under way, by `Sequence.keyOf` (what `maxSequences` counts). */
  readonly all: Map<string, Slot>
  /**
   * The free ones (none running, none waiting), by their idle limit, each map in the order they
   * became free, which is the order they go idle in: a sweep stops at the first that is not.
   */
  readonly free: Map<number, Map<string, Slot>>
}

interface Slot {
  readonly model: Model
  readonly key: string
  /** The state now, by input name (undefined before the first turn ran). */
  states: Tensor.TensorMap | undefined
  /** `Sequence.Resolved.shape` of the states held. */
  shape: string
  /** The idle limit it is filed under while free (the model version's at its last take). */
  idleMs: number
  lastMs: number
  busy: boolean
  /** Its end succeeded: later turns that are not starts are refused. */
  ended: boolean
  readonly waiting: Array<Waiting>
}

export interface SequenceTable {
  /**
   * Takes a turn of the sequence `flags.id` of `model` (a model version's key), configured as
   * `sequence`: runs it now, queues it behind its sequence's running request, or says why not.
   */
  readonly take: (model: string, sequence: Sequence.Resolved, flags: Sequence.Flags, turn: Turn) => Taken
  /** Turns waiting behind an earlier request of their sequence, all models together. */
  readonly waiting: () => number
  /**
   * The same by model version key, then by priority rank (Critical … Low); versions with none are
   * absent. The array is the table's own: read it, do not keep it.
   */
  readonly waitingByModel: () => ReadonlyMap<string, ReadonlyArray<number>>
  /** Answers every waiting turn "shuttingDown" (a drain past its grace); returns how many. */
  readonly refuseWaiting: () => number
  /** Sequences under way by model version key, after dropping the idle ones. */
  readonly counts: () => ReadonlyMap<string, number>
  /**
   * Whether sequence `id` of `model` (a model version's key) is under way now: started, not ended,
   * not idle past its limit. Without `id`: whether any of the model version's is.
   */
  readonly underWay: (model: string, id?: Sequence.Id) => boolean
  /** Sequences under way, all models together, after dropping the idle ones. */
  readonly live: () => number
  /** When the first free sequence goes idle (on `nowMs`'s clock), or undefined when none is free. */
  readonly nextIdleAtMs: () => number | undefined
}

/** The table's state. */
interface Table {
  readonly nowMs: () => number
  readonly models: Map<string, Model>
  waitingCount: number
  /** Waiting turns by model version key, then priority rank (`waitingByModel`). */
  readonly waitingCounts: Map<string, Array<number>>
}

const countWaiting = (table: Table, entry: Waiting, by: 1 | -1): void => {
  table.waitingCount += by
  let counts = table.waitingCounts.get(entry.model)
  if (counts === undefined) table.waitingCounts.set(entry.model, counts = [0, 0, 0, 0])
  counts[entry.turn.rank] = (counts[entry.turn.rank] ?? 0) + by
  if (counts.every((n) => n === 0)) table.waitingCounts.delete(entry.model)
}

const idle = (slot: Slot, now: number): boolean => now - slot.lastMs >= slot.idleMs

/** Files `slot` as free (at the back: the last to go idle), or drops it once its end succeeded. */
const free = (table: Table, slot: Slot): void => {
  const { model } = slot
  if (slot.ended) {
    if (model.all.get(slot.key) === slot) model.all.delete(slot.key)
    if (model.all.size === 0 && table.models.get(model.key) === model) table.models.delete(model.key)
    return
  }
  let bucket = model.free.get(slot.idleMs)
  if (bucket === undefined) model.free.set(slot.idleMs, bucket = new Map())
  bucket.set(slot.key, slot)
}

/** Takes `slot` off its free list (it runs, or a turn waits on it). */
const unfree = (slot: Slot): void => {
  const bucket = slot.model.free.get(slot.idleMs)
  if (bucket === undefined || bucket.get(slot.key) !== slot) return
  bucket.delete(slot.key)
  if (bucket.size === 0) slot.model.free.delete(slot.idleMs)
}

/** Drops the free sequences idle past their limit, every model's: each free list's front only. */
const sweep = (table: Table, now: number): void => {
  for (const model of table.models.values()) {
    for (const [idleMs, bucket] of model.free) {
      for (const slot of bucket.values()) {
        if (!idle(slot, now)) break
        bucket.delete(slot.key)
        model.all.delete(slot.key)
      }
      if (bucket.size === 0) model.free.delete(idleMs)
    }
    if (model.all.size === 0) table.models.delete(model.key)
  }
}

/** The turns after the one that just left: each runs or is refused in order until one runs; then the slot is free again if none did. */
const next = (table: Table, slot: Slot): void => {
  while (!slot.busy) {
    const entry = slot.waiting.shift()
    if (entry === undefined) break
    if (entry.gone) continue
    entry.gone = true
    countWaiting(table, entry, -1)
    entry.running = run(table, slot, entry.turn, entry.sequence)
  }
  if (!slot.busy && slot.waiting.length === 0) free(table, slot)
}

/** Runs `turn` on `slot` (not busy, off the free lists), or refuses it when its sequence ended before it; returns its cancel while it runs. */
const run = (table: Table, slot: Slot, turn: Turn, sequence: Sequence.Resolved): (() => void) | undefined => {
  if (turn.start) {
    slot.states = undefined
    slot.shape = sequence.shape
    slot.ended = false
  } else if (slot.ended || slot.shape !== sequence.shape) {
    turn.refuse(slot.ended ? "ended" : "reshaped")
    return undefined
  }
  slot.busy = true
  let over = false
  const leave = () => {
    over = true
    slot.busy = false
    slot.lastMs = table.nowMs()
    next(table, slot)
  }
  const cancel = turn.go(slot.states ?? sequence.initialStates, (nextStates) => {
    if (over) return
    if (nextStates !== undefined) {
      slot.states = nextStates
      if (turn.end) slot.ended = true
    }
    leave()
  })
  if (cancel === undefined || over) return undefined
  return () => {
    if (!over) leave()
    cancel()
  }
}

/** Queues `turn` behind the running request of `slot`'s sequence. */
const wait = (table: Table, slot: Slot, modelKey: string, turn: Turn, sequence: Sequence.Resolved): Taken => {
  if (!turn.canWait()) return { _tag: "QueueFull" }
  const entry: Waiting = { model: modelKey, turn, sequence, gone: false, running: undefined }
  slot.waiting.push(entry)
  countWaiting(table, entry, 1)
  return {
    _tag: "Waiting",
    cancel: () => {
      if (entry.running !== undefined) return entry.running()
      if (entry.gone) return
      entry.gone = true
      countWaiting(table, entry, -1)
      const i = slot.waiting.indexOf(entry)
      if (i >= 0) slot.waiting.splice(i, 1)
    }
  }
}

const take = (table: Table, modelKey: string, sequence: Sequence.Resolved, flags: Sequence.Flags, turn: Turn): Taken => {
  const now = table.nowMs()
  sweep(table, now)
  let model = table.models.get(modelKey)
  if (model === undefined) table.models.set(modelKey, model = { key: modelKey, all: new Map(), free: new Map() })
  const key = Sequence.keyOf(flags.id)
  let slot = model.all.get(key)
  if (slot === undefined) {
    if (turn.start !== true) {
      if (model.all.size === 0) table.models.delete(modelKey)
      return { _tag: "NotStarted" }
    }
    if (model.all.size >= sequence.maxSequences) return { _tag: "Full", capacity: sequence.maxSequences }
    slot = { model, key, states: undefined, shape: sequence.shape, idleMs: sequence.maxSequenceIdleMs, lastMs: now, busy: false, ended: false, waiting: [] }
    model.all.set(key, slot)
  } else if (!slot.busy && slot.waiting.length === 0) {
    unfree(slot)
  }
  slot.lastMs = now
  // the model version's limit now (a reload may have changed it): it is filed under it when free again
  slot.idleMs = sequence.maxSequenceIdleMs
  // turns waiting and the slot free: only inside `next`, which a refused turn's answer re-entered; it runs them in order
  if (slot.busy || slot.waiting.length > 0) return wait(table, slot, modelKey, turn, sequence)
  const cancel = run(table, slot, turn, sequence)
  if (!slot.busy) next(table, slot)
  return cancel === undefined ? { _tag: "Answered" } : { _tag: "Running", cancel }
}

const refuseWaiting = (table: Table): number => {
  let refused = 0
  for (const model of table.models.values()) {
    for (const slot of model.all.values()) {
      if (slot.waiting.length === 0) continue
      for (const entry of slot.waiting.splice(0)) {
        if (entry.gone) continue
        entry.gone = true
        countWaiting(table, entry, -1)
        refused++
        entry.turn.refuse("shuttingDown")
      }
      if (!slot.busy) free(table, slot)
    }
  }
  return refused
}

const underWay = (table: Table, modelKey: string, id: Sequence.Id | undefined): boolean => {
  const model = table.models.get(modelKey)
  if (model === undefined) return false
  const now = table.nowMs()
  const live = (slot: Slot) => !slot.ended && (slot.busy || slot.waiting.length > 0 || !idle(slot, now))
  if (id !== undefined) {
    const slot = model.all.get(Sequence.keyOf(id))
    return slot !== undefined && live(slot)
  }
  for (const slot of model.all.values()) if (live(slot)) return true
  return false
}

const nextIdleAtMs = (table: Table): number | undefined => {
  let first: number | undefined
  for (const model of table.models.values()) {
    for (const bucket of model.free.values()) {
      // each bucket in the order its sequences go idle: its front is its first
      for (const slot of bucket.values()) {
        const atMs = slot.lastMs + slot.idleMs
        if (first === undefined || atMs < first) first = atMs
        break
      }
    }
  }
  return first
}

export const make = (nowMs: () => number): SequenceTable => {
  const table: Table = { nowMs, models: new Map(), waitingCount: 0, waitingCounts: new Map() }
  return {
    take: (modelKey, sequence, flags, turn) => take(table, modelKey, sequence, flags, turn),
    waiting: () => table.waitingCount,
    waitingByModel: () => table.waitingCounts,
    refuseWaiting: () => refuseWaiting(table),
    counts: () => {
      sweep(table, nowMs())
      return new Map([...table.models.values()].filter((m) => m.all.size > 0).map((m) => [m.key, m.all.size] as const))
    },
    underWay: (modelKey, id) => underWay(table, modelKey, id),
    live: () => {
      sweep(table, nowMs())
      let n = 0
      for (const model of table.models.values()) n += model.all.size
      return n
    },
    nextIdleAtMs: () => nextIdleAtMs(table)
  }
}
