import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Backoff, retryAfterMs } from '../backoff.js'

/** A seeded generator (mulberry32): the same jitter on every run. */
function seeded (seed) {
  return () => {
    seed |= 0
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

test('full jitter: the n-th delay is uniform in [0, min(cap, base * 2**n)]', () => {
  const backoff = new Backoff({ base: 100, cap: 1000, random: seeded(1) })
  const ceilings = [100, 200, 400, 800, 1000, 1000, 1000]
  for (const ceiling of ceilings) {
    assert.equal(backoff.ceiling(), ceiling)
    const delay = backoff.nextDelay()
    assert.ok(delay >= 0 && delay <= ceiling, `${delay} in [0, ${ceiling}]`)
  }
  assert.equal(backoff.attempt, ceilings.length)
})

test('the extremes of the random source reach both ends of the range', () => {
  assert.equal(new Backoff({ base: 100, random: () => 0 }).nextDelay(), 0)
  const top = new Backoff({ base: 100, cap: 1000, random: () => 0.999999 })
  top.attempt = 10
  assert.ok(top.nextDelay() > 999)
})

test('many clients with the same history spread out (not lock-step)', () => {
  const random = seeded(42)
  const delays = Array.from({ length: 100 }, () => new Backoff({ base: 1000, random }).nextDelay())
  assert.ok(new Set(delays.map(Math.round)).size > 90)
  assert.ok(Math.max(...delays) - Math.min(...delays) > 500)
})

test('a floor (Retry-After, 4429) is honoured', () => {
  const backoff = new Backoff({ base: 100, random: () => 0.5 })
  assert.equal(backoff.nextDelay({ atLeast: 5000 }), 5000)
  assert.equal(backoff.nextDelay({ atLeast: 1 }), 100) // 0.5 * 200
})

test('the attempts reset only after a stable connection', () => {
  let now = 0
  const backoff = new Backoff({ base: 100, stableAfter: 10000, random: () => 1, now: () => now })
  backoff.nextDelay()
  backoff.nextDelay()
  backoff.connected()
  now += 2000 // accepted and dropped soon: keep backing off
  backoff.disconnected()
  assert.equal(backoff.attempt, 2)
  backoff.connected()
  now += 10000
  backoff.disconnected()
  assert.equal(backoff.attempt, 0)
  assert.equal(backoff.nextDelay(), 100)
  backoff.disconnected() // no connection: nothing to judge
  assert.equal(backoff.attempt, 1)
})

test('bad parameters are refused', () => {
  assert.throws(() => new Backoff({ base: 0 }), RangeError)
  assert.throws(() => new Backoff({ base: 100, cap: 10 }), RangeError)
})

test('Retry-After: seconds or an HTTP date', () => {
  assert.equal(retryAfterMs('3'), 3000)
  assert.equal(retryAfterMs('0.5'), 500)
  assert.equal(retryAfterMs(null), null)
  assert.equal(retryAfterMs(''), null)
  assert.equal(retryAfterMs('soon'), null)
  const now = Date.parse('2026-01-01T00:00:00Z')
  assert.equal(retryAfterMs('Thu, 01 Jan 2026 00:00:10 GMT', now), 10000)
  assert.equal(retryAfterMs('Thu, 01 Jan 2025 00:00:10 GMT', now), 0)
})
