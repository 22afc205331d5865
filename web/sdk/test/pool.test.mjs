import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Pool, merge } from '../pool.js'

const frame = (sid, op, id, p = {}, t = 'task') => ({ sid, t, id, op, p })
const m = (tx, op, id, p = {}) => ({ seq: Number(tx.slice(2)), client_tx_id: tx, t: 'task', id, op, p })

test('merge: set fields, null removes one', () => {
  assert.deepEqual(merge({ a: 1, b: 2 }, { b: null, c: 3 }), { a: 1, c: 3 })
})

test('frames are applied once, in sid order, whatever order they came in', () => {
  const pool = new Pool(['task'])
  const first = pool.apply([frame(2, 'u', 'a', { n: 2 }), frame(1, 'i', 'a', { n: 1, x: 'y' })])
  assert.deepEqual(first.accepted.map((f) => f.sid), [1, 2])
  assert.deepEqual(pool.snapshot(), { task: { a: { n: 2, x: 'y' } } })
  const again = pool.apply([frame(2, 'u', 'a', { n: 2 }), frame(3, 'u', 'a', { x: null })])
  assert.deepEqual(again.accepted.map((f) => f.sid), [3], 'a frame seen already is dropped')
  assert.deepEqual(pool.snapshot(), { task: { a: { n: 2 } } })
  assert.equal(pool.lastSid, 3)
  pool.apply([frame(4, 'd', 'a')])
  assert.deepEqual(pool.snapshot(), {})
})

test('frames of other types move the cursor but stay out of the pool', () => {
  const pool = new Pool(['task'])
  const { accepted } = pool.apply([frame(5, 'i', 'n', { a: 1 }, 'note')])
  assert.deepEqual(accepted, [])
  assert.equal(pool.lastSid, 5)
  assert.deepEqual(pool.snapshot(), {})
})

test('a bootstrap replaces the confirmed state; older frames of a record are ignored', () => {
  const pool = new Pool(['task'])
  pool.apply([frame(1, 'i', 'gone', { a: 1 })])
  pool.reset([{ t: 'task', id: 'a', fields: { n: 7 }, sid: 9 }], 8)
  assert.deepEqual(pool.snapshot(), { task: { a: { n: 7 } } })
  // sid 9 is newer than the page's sid (8) but the record already holds it.
  const { accepted } = pool.apply([frame(9, 'u', 'a', { n: 6 }), frame(10, 'u', 'a', { n: 8 })])
  assert.deepEqual(accepted.map((f) => f.sid), [9, 10])
  assert.deepEqual(pool.snapshot(), { task: { a: { n: 8 } } })
})

test('local changes are shown at once, on top of frames, until answered', () => {
  const pool = new Pool(['task'])
  pool.apply([frame(1, 'i', 'a', { status: 'open', title: 'A' })])
  pool.enqueue(m('tx1', 'u', 'a', { status: 'doing' }))
  pool.enqueue(m('tx2', 'i', 'b', { title: 'B' }))
  assert.equal(pool.records.get('task').get('a').pending, 'u')
  assert.equal(pool.records.get('task').get('b').pending, 'i')
  // Someone else's frame lands underneath the local change.
  pool.apply([frame(2, 'u', 'a', { status: 'done', owner: 'bob' })])
  assert.deepEqual(pool.snapshot().task.a, { status: 'doing', title: 'A', owner: 'bob' })
  // Answered with sid 3: no longer pending, still shown until its frame arrives.
  pool.acknowledge('tx1', 3)
  assert.equal(pool.records.get('task').get('a').pending, null)
  assert.equal(pool.snapshot().task.a.status, 'doing')
  assert.equal(pool.awaiting.length, 1)
  pool.apply([frame(3, 'u', 'a', { status: 'doing' })])
  assert.equal(pool.awaiting.length, 0)
  assert.deepEqual(pool.confirmedRecord('task', 'a').fields, { status: 'doing', title: 'A', owner: 'bob' })
})

test('a refused change is undone; a local delete hides the record', () => {
  const pool = new Pool(['task'])
  pool.apply([frame(1, 'i', 'a', { n: 1 })])
  pool.enqueue(m('tx1', 'u', 'a', { n: 2 }))
  pool.acknowledge('tx1', null)
  assert.deepEqual(pool.snapshot(), { task: { a: { n: 1 } } })
  pool.enqueue(m('tx2', 'd', 'a'))
  assert.deepEqual(pool.snapshot(), {})
  assert.ok(pool.confirmedRecord('task', 'a'), 'the confirmed record is still there')
  pool.enqueue(m('tx3', 'u', 'missing', { n: 1 }))
  assert.equal(pool.records.get('task')?.get('missing'), undefined, 'an update of nothing shows nothing')
})

test('clear forgets the confirmed state but keeps the local changes', () => {
  const pool = new Pool(null)
  pool.apply([frame(1, 'i', 'a', { n: 1 }), frame(2, 'i', 'x', { n: 1 }, 'note')])
  pool.enqueue(m('tx1', 'i', 'b', { n: 2 }))
  pool.clear()
  assert.equal(pool.lastSid, 0)
  assert.deepEqual(pool.snapshot(), { task: { b: { n: 2 } } })
})
