/**
 * A binary min-heap of deadlines with O(log n) removal through the entry's handle, so that a
 * request answered early takes its timers out at once instead of leaving them to expire.
 * Mutable and synchronous: the engine's timer fiber owns the clock.
 *
 * @internal
 */

export interface Entry<A> {
  readonly atMs: number
  readonly value: A
  /** Position in the heap; -1 once popped or removed. */
  index: number
}

export class DeadlineHeap<A> {
  readonly #items: Array<Entry<A>> = []

  get size(): number {
    return this.#items.length
  }

  push(atMs: number, value: A): Entry<A> {
    const entry: Entry<A> = { atMs, value, index: this.#items.length }
    this.#items.push(entry)
    this.#up(entry.index)
    return entry
  }

  peek(): Entry<A> | undefined {
    return this.#items[0]
  }

  pop(): Entry<A> | undefined {
    const top = this.#items[0]
    if (top !== undefined) this.remove(top)
    return top
  }

  /** Removes the entry if it is still in the heap; false when it was already popped or removed. */
  remove(entry: Entry<A>): boolean {
    const i = entry.index
    if (i < 0 || this.#items[i] !== entry) return false
    const last = this.#items.pop()!
    entry.index = -1
    if (last !== entry) {
      this.#items[i] = last
      last.index = i
      this.#down(i)
      this.#up(last.index)
    }
    return true
  }

  #swap(i: number, j: number): void {
    const a = this.#items[i]!
    const b = this.#items[j]!
    this.#items[i] = b
    this.#items[j] = a
    a.index = j
    b.index = i
  }

  #up(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (this.#items[parent]!.atMs <= this.#items[i]!.atMs) return
      this.#swap(i, parent)
      i = parent
    }
  }

  #down(i: number): void {
    const n = this.#items.length
    while (true) {
      const left = 2 * i + 1
      const right = left + 1
      let smallest = i
      if (left < n && this.#items[left]!.atMs < this.#items[smallest]!.atMs) smallest = left
      if (right < n && this.#items[right]!.atMs < this.#items[smallest]!.atMs) smallest = right
      if (smallest === i) return
      this.#swap(i, smallest)
      i = smallest
    }
  }
}
