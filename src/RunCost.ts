/**
 * What a model's runs cost, learned online: run time as a line in the rows a run carries, a fixed
 * cost per run plus a cost per row, fitted by exponentially weighted least squares over recent
 * runs (each run's weight falls by `forget` with every later run: about the last 20 count). Pure
 * and synchronous: the dispatcher feeds it each run's rows and native run time, the scheduler asks
 * it how long a run of some rows will take (`BatchPolicy`'s learned sizing).
 *
 * - Before any run it predicts 0 (unknown); after one, that run's time for any rows.
 * - While recent runs all carried about the same rows, the per-row cost cannot be told from the
 *   fixed cost: the last per-row cost fitted is kept, and the fixed cost absorbs the rest.
 * - Neither cost is ever negative: a fit whose line would cross zero goes through the origin
 *   instead (all per row).
 *
 * @module RunCost
 */

/** Each earlier run's weight falls by this factor with every new run (an effective window of ~20 runs). */
export const forget = 0.95

/** Below this variance of the recent rows (rows²), the per-row cost is not refitted. */
export const minRowsVariance = 0.25

export class RunCost {
  /** Fitted cost of a run of no rows (ms). */
  fixedMs = 0
  /** Fitted cost of each row (ms). */
  perRowMs = 0
  /** Runs observed. */
  runs = 0
  #w = 0
  #sx = 0
  #sy = 0
  #sxx = 0
  #sxy = 0

  /** Records one run of `rows` rows that took `runMs`; non-finite or negative times are ignored. */
  observe(rows: number, runMs: number): void {
    if (!(runMs >= 0) || !Number.isFinite(runMs) || !(rows > 0)) return
    this.runs++
    this.#w = this.#w * forget + 1
    this.#sx = this.#sx * forget + rows
    this.#sy = this.#sy * forget + runMs
    this.#sxx = this.#sxx * forget + rows * rows
    this.#sxy = this.#sxy * forget + rows * runMs
    const meanX = this.#sx / this.#w
    const meanY = this.#sy / this.#w
    const varX = this.#sxx / this.#w - meanX * meanX
    if (varX >= minRowsVariance) this.perRowMs = Math.max(0, (this.#sxy / this.#w - meanX * meanY) / varX)
    const fixed = meanY - this.perRowMs * meanX
    if (fixed >= 0) {
      this.fixedMs = fixed
    } else {
      this.fixedMs = 0
      this.perRowMs = meanY / meanX
    }
  }

  /** Predicted time of a run of `rows` rows (ms); 0 before any run. */
  predict(rows: number): number {
    return this.runs === 0 ? 0 : this.fixedMs + this.perRowMs * rows
  }
}

export const make = (): RunCost => new RunCost()

/** The time constant of `ArrivalRate` (ms): arrivals older than a few of these hardly count. */
export const arrivalWindowMs = 20

/**
 * Rows arriving per ms, exponentially decayed over `arrivalWindowMs`: each arrival adds its rows
 * over the window, and the sum decays continuously, so a burst's rate fades within ~3 windows.
 */
export class ArrivalRate {
  #sum = 0
  #atMs = 0

  /** Records `rows` arriving at `nowMs` (times must not go backwards). */
  observe(rows: number, nowMs: number): void {
    this.#sum = this.#sum * Math.exp(-(nowMs - this.#atMs) / arrivalWindowMs) + rows / arrivalWindowMs
    this.#atMs = nowMs
  }

  /** Rows per ms at `nowMs`. */
  rowsPerMs(nowMs: number): number {
    return this.#sum * Math.exp(-Math.max(0, nowMs - this.#atMs) / arrivalWindowMs)
  }
}

/** The share of its time learned sizing lets a device be busy: above it, queues grow without bound in bursts. */
export const targetUtilization = 0.8

/**
 * The fewest rows a run must carry for `runners` runners (devices that run at once) to keep up
 * with `rowsPerMs` arriving while busy `targetUtilization` of the time, at the learned cost:
 * `r` with `runners × utilization × r / cost(r) ≥ rowsPerMs`. 1 when nothing is known or nothing
 * arrives; `maxBatchSize` when no run size would keep up.
 */
export const targetRows = (cost: RunCost, rowsPerMs: number, runners: number, maxBatchSize: number): number => {
  if (cost.runs === 0 || !(rowsPerMs > 0)) return 1
  const capacity = runners * targetUtilization - rowsPerMs * cost.perRowMs
  if (capacity <= 0) return maxBatchSize
  return Math.min(maxBatchSize, Math.max(1, (rowsPerMs * cost.fixedMs) / capacity))
}
