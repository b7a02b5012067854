/**
 * IEEE 754 half precision as raw bits in a number (FP16 tensors are kept as their bits in a
 * Uint16Array): conversion from a JavaScript number, rounding to nearest, ties to even, and back.
 *
 * @internal
 */
const roundHalfEven = (x: number): number => {
  const f = Math.floor(x)
  const d = x - f
  return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1
}

/** The IEEE 754 binary16 bits nearest to `value` (round half to even; overflow to ±Infinity). */
export const toHalfBits = (value: number): number => {
  if (Number.isNaN(value)) return 0x7e00
  const sign = value < 0 || Object.is(value, -0) ? 0x8000 : 0
  const a = Math.abs(value)
  if (a === Infinity) return sign | 0x7c00
  if (a < 2 ** -14) return sign | roundHalfEven(a * 2 ** 24) // subnormal (1024 rounds up into the first normal)
  let e = Math.floor(Math.log2(a))
  if (2 ** e > a) e--
  else if (2 ** (e + 1) <= a) e++
  let mantissa = roundHalfEven((a / 2 ** e - 1) * 1024)
  if (mantissa === 1024) {
    mantissa = 0
    e++
  }
  if (e > 15) return sign | 0x7c00
  return sign | ((e + 15) << 10) | mantissa
}

/** The number that binary16 `bits` hold. */
export const fromHalfBits = (bits: number): number => {
  const sign = bits & 0x8000 ? -1 : 1
  const e = (bits >> 10) & 0x1f
  const m = bits & 0x3ff
  if (e === 0) return sign * m * 2 ** -24
  if (e === 31) return m === 0 ? sign * Infinity : NaN
  return sign * (1 + m / 1024) * 2 ** (e - 15)
}
