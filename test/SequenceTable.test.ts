import { assert, describe, it } from "@effect/vitest"
import type * as Sequence from "../src/Sequence.ts"
import * as SequenceTable from "../src/SequenceTable.ts"
import type * as Tensor from "../src/Tensor.ts"
import { counterSequence } from "./fixtures/CounterPool.ts"

/** A turn that settles at once with `next` (undefined: a failure), recording the state it ran with. */
const turnOf = (seen: Array<Tensor.TensorMap>, flags: { readonly start?: boolean; readonly end?: boolean }, next?: Tensor.TensorMap): SequenceTable.Turn => ({
  rank: 2,
  start: flags.start === true,
  end: flags.end === true,
  canWait: () => true,
  go: (states, done) => {
    seen.push(states)
    done(next)
    return undefined
  },
  refuse: () => assert.fail("refused")
})

/** A turn that runs until `finish` is called. */
const heldTurn = (flags: { readonly start?: boolean } = {}, canWait = true) => {
  let finish: (next: Tensor.TensorMap | undefined) => void = () => {}
  const refusals: Array<string> = []
  let ran = 0
  const turn: SequenceTable.Turn = {
    rank: 2,
    start: flags.start === true,
    end: false,
    canWait: () => canWait,
    go: (_states, done) => {
      ran++
      finish = done
      return () => {}
    },
    refuse: (why) => void refusals.push(why)
  }
  return { turn, finish: (next?: Tensor.TensorMap) => finish(next), refusals, ran: () => ran }
}

describe("SequenceTable", () => {
  const sequence: Sequence.Resolved = counterSequence({ maxSequenceIdleMs: 100, maxSequences: 2 })
  const next = { h: sequence.states[0]!.initial }

  it("drops idle sequences of every model at the next take, so a start finds room again", () => {
    let now = 0
    const table = SequenceTable.make(() => now)
    const seen: Array<Tensor.TensorMap> = []
    assert.strictEqual(table.take("a@1", sequence, { id: 1, start: true }, turnOf(seen, { start: true }, next))._tag, "Answered")
    assert.strictEqual(table.take("a@1", sequence, { id: 2, start: true }, turnOf(seen, { start: true }, next))._tag, "Answered")
    assert.deepStrictEqual(table.take("a@1", sequence, { id: 3, start: true }, turnOf(seen, { start: true }, next)), { _tag: "Full", capacity: 2 })
    assert.strictEqual(table.take("b@1", sequence, { id: 1, start: true }, turnOf(seen, { start: true }, next))._tag, "Answered")
    assert.deepStrictEqual([...table.counts()], [["a@1", 2], ["b@1", 1]])
    now = 60
    // used at 60: stays; the others go idle at 100
    table.take("a@1", sequence, { id: 2 }, turnOf(seen, {}, next))
    now = 120
    assert.strictEqual(table.take("a@1", sequence, { id: 3, start: true }, turnOf(seen, { start: true }, next))._tag, "Answered")
    assert.deepStrictEqual([...table.counts()], [["a@1", 2]])
    assert.deepStrictEqual(table.take("a@1", sequence, { id: 1 }, turnOf(seen, {}, next)), { _tag: "NotStarted" })
  })

  it("underWay, live and nextIdleAtMs: a running sequence is under way and never idle; a free one until its idle limit; an ended one not", () => {
    let now = 0
    const table = SequenceTable.make(() => now)
    const seen: Array<Tensor.TensorMap> = []
    assert.deepStrictEqual([table.underWay("a@1"), table.live(), table.nextIdleAtMs()], [false, 0, undefined])
    const running = heldTurn({ start: true })
    assert.strictEqual(table.take("a@1", sequence, { id: 1, start: true }, running.turn)._tag, "Running")
    assert.deepStrictEqual([table.underWay("a@1"), table.underWay("a@1", 1), table.underWay("a@1", 2), table.underWay("b@1")], [true, true, false, false])
    assert.deepStrictEqual([table.live(), table.nextIdleAtMs()], [1, undefined], "busy: no idle limit")
    now = 30
    table.take("a@1", sequence, { id: "x", start: true }, turnOf(seen, { start: true }, next))
    assert.deepStrictEqual([table.live(), table.nextIdleAtMs()], [2, 130])
    now = 500
    // the running one is not idle however long it runs
    assert.deepStrictEqual([table.underWay("a@1", 1), table.underWay("a@1", "x")], [true, false])
    running.finish(next)
    assert.deepStrictEqual([table.live(), table.nextIdleAtMs()], [1, 600])
    table.take("a@1", sequence, { id: 1, end: true }, turnOf(seen, { end: true }, next))
    assert.deepStrictEqual([table.underWay("a@1"), table.live(), table.nextIdleAtMs()], [false, 0, undefined])
  })

  it("a turn that would wait while the queue is full is QueueFull; waiting turns are counted, and refused ShuttingDown by refuseWaiting", () => {
    const table = SequenceTable.make(() => 0)
    const first = heldTurn({ start: true })
    assert.strictEqual(table.take("a@1", sequence, { id: 1, start: true }, first.turn)._tag, "Running")
    assert.deepStrictEqual(table.take("a@1", sequence, { id: 1 }, heldTurn({}, false).turn), { _tag: "QueueFull" })
    const second = heldTurn()
    const third = heldTurn()
    assert.strictEqual(table.take("a@1", sequence, { id: 1 }, second.turn)._tag, "Waiting")
    assert.strictEqual(table.take("a@1", sequence, { id: 1 }, third.turn)._tag, "Waiting")
    assert.strictEqual(table.waiting(), 2)
    assert.strictEqual(table.refuseWaiting(), 2)
    assert.deepStrictEqual([second.refusals, third.refusals, table.waiting()], [["shuttingDown"], ["shuttingDown"], 0])
    first.finish(next)
    assert.deepStrictEqual([second.ran(), third.ran()], [0, 0])
  })

  it("turns waiting behind an end that succeeds are refused as ended, unless one starts again", () => {
    const table = SequenceTable.make(() => 0)
    const seen: Array<Tensor.TensorMap> = []
    const first = heldTurn({ start: true })
    table.take("a@1", sequence, { id: 1, start: true }, first.turn)
    const refusals: Array<string> = []
    const after: SequenceTable.Turn = { ...turnOf(seen, {}, next), refuse: (why) => void refusals.push(why) }
    const ending: SequenceTable.Turn = { ...turnOf(seen, { end: true }, next) }
    table.take("a@1", sequence, { id: 1, end: true }, ending)
    table.take("a@1", sequence, { id: 1 }, after)
    table.take("a@1", sequence, { id: 1, start: true }, turnOf(seen, { start: true }, next))
    first.finish(next)
    assert.deepStrictEqual(refusals, ["ended"])
    assert.strictEqual(seen.length, 2)
    assert.deepStrictEqual([...table.counts()], [["a@1", 1]])
  })

  it("an idle sequence behind a busy one that was used earlier is dropped all the same", () => {
    let now = 0
    const table = SequenceTable.make(() => now)
    const seen: Array<Tensor.TensorMap> = []
    const longRun = heldTurn({ start: true })
    assert.strictEqual(table.take("m@1", sequence, { id: "A", start: true }, longRun.turn)._tag, "Running")
    now = 1
    table.take("m@1", sequence, { id: "B", start: true }, turnOf(seen, { start: true }, next))
    now = 10_000
    // A still runs (used at 0, before B); B has been idle far past 100 ms: C takes its place
    assert.strictEqual(table.take("m@1", sequence, { id: "C", start: true }, turnOf(seen, { start: true }, next))._tag, "Answered")
    assert.deepStrictEqual([...table.counts()], [["m@1", 2]])
  })

  it("a turn taken from inside a refused turn's answer goes behind the turns already waiting, not ahead of them", () => {
    const table = SequenceTable.make(() => 0)
    const ran: Array<string> = []
    const named = (name: string, flags: { readonly start?: boolean; readonly end?: boolean }, onRefuse?: () => void): SequenceTable.Turn => ({
      rank: 2,
      start: flags.start === true,
      end: flags.end === true,
      canWait: () => true,
      go: () => {
        ran.push(name)
        return () => {}
      },
      refuse: () => {
        ran.push(`${name} refused`)
        onRefuse?.()
      }
    })
    const first = heldTurn({ start: true })
    table.take("m@1", sequence, { id: 1, start: true }, first.turn)
    const ending = heldTurn()
    table.take("m@1", sequence, { id: 1, end: true }, { ...ending.turn, end: true })
    // after the end: refused, and its answer at once starts the sequence again (a client reacting to the refusal)
    table.take("m@1", sequence, { id: 1 }, named("late", {}, () => void table.take("m@1", sequence, { id: 1, start: true }, named("restart", { start: true }))))
    table.take("m@1", sequence, { id: 1, start: true }, named("queued start", { start: true }))
    first.finish(next)
    ending.finish(next)
    assert.deepStrictEqual(ran, ["late refused", "queued start"])
  })
})
