/**
 * A `Duration` in milliseconds without allocating: `Duration.toMillis` builds its matcher (an
 * object of four functions) on every call, about 250 bytes, which the engine's hot path paid once
 * or more a request.
 *
 * @internal
 */
import type { Duration } from "effect"

/** `Duration.toMillis(duration)`, without allocating. */
export const millisOf = (duration: Duration.Duration): number => {
  const value = duration.value
  switch (value._tag) {
    case "Millis":
      return value.millis
    case "Nanos":
      return Number(value.nanos) / 1_000_000
    case "Infinity":
      return Infinity
    case "NegativeInfinity":
      return -Infinity
  }
}
