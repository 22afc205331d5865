// Reconnect delays: capped exponential backoff with full jitter, the JavaScript twin
// of crdt_sync/client/backoff.py.
//
// "Full jitter" (AWS architecture blog, *Exponential Backoff And Jitter*): the n-th
// delay is uniform in [0, min(cap, base * 2**n)], so clients that lost the same
// server at the same instant spread their reconnects instead of arriving in
// lock-step. The attempt count resets once a connection has stayed up for
// `stableAfter` ms (a server that accepts and drops at once keeps backing off).

/**
 * @typedef {object} BackoffOptions
 * @property {number} [base=500] The ceiling of the first delay, in ms.
 * @property {number} [cap=30000] The largest ceiling, in ms.
 * @property {number} [stableAfter=10000] Ms a connection must stay up before the attempts reset.
 * @property {() => number} [random=Math.random] Where the jitter comes from (seeded in tests).
 * @property {() => number} [now=Date.now] The clock, in ms.
 */

export class Backoff {
  /** @param {BackoffOptions} [options] */
  constructor ({ base = 500, cap = 30000, stableAfter = 10000, random = Math.random, now = Date.now } = {}) {
    if (!(base > 0) || !(cap >= base)) throw new RangeError(`backoff needs 0 < base <= cap, got base=${base} cap=${cap}`)
    this.base = base
    this.cap = cap
    this.stableAfter = stableAfter
    this.random = random
    this.now = now
    /** Attempts since the last reset. */
    this.attempt = 0
    /** @type {number | null} */
    this._connectedAt = null
  }

  /** The current ceiling (before this attempt is counted), in ms. */
  ceiling () {
    return Math.min(this.cap, this.base * 2 ** this.attempt)
  }

  /**
   * The delay before the next attempt, in ms (and count it).
   * @param {{atLeast?: number}} [options] `atLeast`: a server's Retry-After or a
   *   rate-limit close, honoured as a floor (ms).
   * @returns {number}
   */
  nextDelay ({ atLeast = 0 } = {}) {
    const ceiling = this.ceiling()
    this.attempt += 1
    return Math.max(atLeast, this.random() * ceiling)
  }

  /** A connection is up (the attempts reset once it has been up long enough). */
  connected () {
    this._connectedAt = this.now()
  }

  /** The connection ended: reset the attempts if it had been stable. */
  disconnected () {
    if (this._connectedAt !== null) {
      if (this.now() - this._connectedAt >= this.stableAfter) this.attempt = 0
      this._connectedAt = null
    }
  }

  /** Start over (a new token, an explicit reconnect). */
  reset () {
    this.attempt = 0
    this._connectedAt = null
  }
}

/**
 * A `Retry-After` header (seconds or an HTTP date) in ms, or null.
 * @param {string | null | undefined} value
 * @param {number} [now] ms since the epoch
 * @returns {number | null}
 */
export function retryAfterMs (value, now = Date.now()) {
  if (value === null || value === undefined || value === '') return null
  const seconds = Number(value)
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000)
  const date = Date.parse(value)
  return Number.isNaN(date) ? null : Math.max(0, date - now)
}
