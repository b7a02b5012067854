/**
 * A bounded queue with one FIFO per priority level. Mutable and synchronous: it is the data
 * structure under the engine's dispatcher, which owns the fibers and the clock.
 *
 * - `offer` never blocks: past `capacity` (all levels together) it refuses.
 * - `poll` takes the oldest entry of the highest non-empty level.
 * - `remove` drops an entry in O(1) through the handle `offer` returned (a cancelled request).
 * - With `enablePriority` false every entry goes into one FIFO; stats still count by priority.
 * - With `aging`, a level's head that has waited past its bound competes as a higher level
 *   (see `QueuePolicy`); `offer` and `poll` then take the current time.
 *
 * @module PriorityQueue
 */
import * as Priority from "./Priority.ts"
import * as QueuePolicy from "./QueuePolicy.ts"

/** Queued entries by level. */
export interface QueueStats {
  readonly critical: number
  readonly high: number
  readonly normal: number
  readonly low: number
  readonly total: number
}

/** The handle of a queued value. */
export interface Entry<A> {
  readonly value: A
  readonly priority: Priority.Priority
  readonly enqueuedAtMs: number
  /** False once polled or removed. */
  readonly queued: boolean
}

class Node<A> implements Entry<A> {
  prev: Node<A> | undefined = undefined
  next: Node<A> | undefined = undefined
  queued = true
  readonly value: A
  readonly priority: Priority.Priority
  readonly fifo: number
  readonly enqueuedAtMs: number
  constructor(value: A, priority: Priority.Priority, fifo: number, enqueuedAtMs: number) {
    this.value = value
    this.priority = priority
    this.fifo = fifo
    this.enqueuedAtMs = enqueuedAtMs
  }
}

class Fifo<A> {
  head: Node<A> | undefined = undefined
  tail: Node<A> | undefined = undefined
  push(node: Node<A>): void {
    node.prev = this.tail
    if (this.tail === undefined) this.head = node
    else this.tail.next = node
    this.tail = node
  }
  unlink(node: Node<A>): void {
    if (node.prev === undefined) this.head = node.next
    else node.prev.next = node.next
    if (node.next === undefined) this.tail = node.prev
    else node.next.prev = node.prev
    node.prev = undefined
    node.next = undefined
  }
}

export class PriorityQueue<A> {
  readonly #fifos: ReadonlyArray<Fifo<A>>
  readonly #counts = [0, 0, 0, 0]
  #size = 0
  readonly capacity: number
  readonly enablePriority: boolean
  readonly aging: QueuePolicy.Aging | undefined

  constructor(capacity: number, enablePriority = true, aging?: QueuePolicy.Aging) {
    this.capacity = capacity
    this.enablePriority = enablePriority
    this.aging = enablePriority ? aging : undefined
    this.#fifos = enablePriority ? [new Fifo(), new Fifo(), new Fifo(), new Fifo()] : [new Fifo()]
  }

  get size(): number {
    return this.#size
  }

  /** Queues `value` at the back of its level; undefined (nothing queued) when full. */
  offer(value: A, priority: Priority.Priority, nowMs = 0): Entry<A> | undefined {
    if (this.#size >= this.capacity) return undefined
    const node = new Node(value, priority, this.enablePriority ? Priority.rank(priority) : 0, nowMs)
    this.#fifos[node.fifo]!.push(node)
    this.#counts[Priority.rank(priority)]!++
    this.#size++
    return node
  }

  /** Takes the oldest entry of the highest level that has one (levels aged as of `nowMs`). */
  poll(nowMs = 0): A | undefined {
    const node = this.#next(nowMs)
    if (node === undefined) return undefined
    this.#unlink(node)
    return node.value
  }

  /** The entry `poll` would take next, left in place. */
  peek(nowMs = 0): Entry<A> | undefined {
    return this.#next(nowMs)
  }

  #next(nowMs: number): Node<A> | undefined {
    if (this.aging === undefined) {
      for (const fifo of this.#fifos) if (fifo.head !== undefined) return fifo.head
      return undefined
    }
    const heads: Array<Node<A>> = []
    for (const fifo of this.#fifos) if (fifo.head !== undefined) heads.push(fifo.head)
    return heads.length === 0 ? undefined : heads[QueuePolicy.choose(this.aging, heads, nowMs)]
  }

  /** Removes a queued entry; false when it was already polled or removed. O(1). */
  remove(entry: Entry<A>): boolean {
    const node = entry as Node<A>
    if (!node.queued) return false
    this.#unlink(node)
    return true
  }

  /**
   * Takes up to `max` entries that satisfy `predicate`, in dispatch order (highest level first,
   * FIFO within a level), leaving the others in place; it stops early once `full()` says nothing
   * more can be taken. O(queued) at most.
   */
  takeWhere(predicate: (value: A) => boolean, max: number, full?: () => boolean): Array<A> {
    const taken: Array<A> = []
    for (const fifo of this.#fifos) {
      let node = fifo.head
      while (node !== undefined && taken.length < max) {
        if (full?.() === true) return taken
        const next = node.next
        if (predicate(node.value)) {
          this.#unlink(node)
          taken.push(node.value)
        }
        node = next
      }
      if (taken.length >= max) break
    }
    return taken
  }

  /**
   * The entry `poll` would take first among those whose value satisfies `predicate` (levels aged
   * as of `nowMs`), left in place. O(queued).
   */
  firstWhere(predicate: (value: A) => boolean, nowMs = 0): Entry<A> | undefined {
    let best: Node<A> | undefined
    let bestRank = Infinity
    for (const fifo of this.#fifos) {
      // Within a level the first match is its best: older entries have aged at least as far.
      let node = fifo.head
      while (node !== undefined && !predicate(node.value)) node = node.next
      if (node === undefined) continue
      if (this.aging === undefined) return node
      const rank = QueuePolicy.effectiveRank(this.aging, node.priority, nowMs - node.enqueuedAtMs)
      if (rank < bestRank || (rank === bestRank && node.enqueuedAtMs < best!.enqueuedAtMs)) {
        best = node
        bestRank = rank
      }
    }
    return best
  }

  /** Every queued value in dispatch order. */
  *values(): IterableIterator<A> {
    for (const fifo of this.#fifos) {
      for (let node = fifo.head; node !== undefined; node = node.next) yield node.value
    }
  }

  stats(): QueueStats {
    const [critical, high, normal, low] = this.#counts as [number, number, number, number]
    return { critical, high, normal, low, total: this.#size }
  }

  #unlink(node: Node<A>): void {
    this.#fifos[node.fifo]!.unlink(node)
    node.queued = false
    this.#counts[Priority.rank(node.priority)]!--
    this.#size--
  }
}

export const make = <A>(capacity: number, enablePriority = true, aging?: QueuePolicy.Aging): PriorityQueue<A> =>
  new PriorityQueue<A>(capacity, enablePriority, aging)
