/**
 * Queue policy: which waiting request goes next. Pure: the queue passes in the time.
 *
 * Strict priority can starve Low forever (Triton's DELAY policy says so). With aging, a request
 * that has waited longer than its level's aging bound is served as if one level higher, and one
 * more level for each further bound it waits, up to Critical. Within one effective level the
 * older request goes first.
 *
 * @module QueuePolicy
 */
import * as Priority from "./Priority.ts"

/** Aging bound per level in milliseconds; a level without one never ages. Critical cannot age. */
export interface Aging {
  readonly High?: number | undefined
  readonly Normal?: number | undefined
  readonly Low?: number | undefined
}

/** The rank (0 = Critical … 3 = Low) a request of `priority` is served at after waiting `waitedMs`. */
export const effectiveRank = (aging: Aging | undefined, priority: Priority.Priority, waitedMs: number): number => {
  const rank = Priority.rank(priority)
  if (aging === undefined || rank === 0 || waitedMs <= 0) return rank
  const bound = aging[priority as Exclude<Priority.Priority, "Critical">]
  if (bound === undefined || bound <= 0) return rank
  return Math.max(0, rank - Math.floor(waitedMs / bound))
}

/** A level's head as the queue sees it when choosing. */
export interface Head {
  readonly priority: Priority.Priority
  readonly enqueuedAtMs: number
}

/**
 * Of the heads of the non-empty levels (highest level first), the index of the one to serve:
 * lowest effective rank, then the oldest. Without aging: the first.
 */
export const choose = (aging: Aging | undefined, heads: ReadonlyArray<Head>, nowMs: number): number => {
  if (aging === undefined) return 0
  let best = 0
  let bestRank = Infinity
  for (let i = 0; i < heads.length; i++) {
    const head = heads[i]!
    const rank = effectiveRank(aging, head.priority, nowMs - head.enqueuedAtMs)
    if (rank < bestRank || (rank === bestRank && head.enqueuedAtMs < heads[best]!.enqueuedAtMs)) {
      best = i
      bestRank = rank
    }
  }
  return best
}
