import { test } from 'node:test'
import assert from 'node:assert/strict'
import { MemoryQueue, openQueue } from '../offline-queue.js'

const entry = (seq, tx, op = 'u') => ({ seq, client_tx_id: tx, t: 'task', id: 'a', op, p: { n: seq } })

test('without IndexedDB (Node) the queue is in memory', async () => {
  const queue = await openQueue('q')
  assert.equal(queue.kind, 'memory')
  const forced = await openQueue('q', { indexedDB: null })
  assert.equal(forced.kind, 'memory')
})

test('entries come back in seq order whatever the order they were added in', async () => {
  const queue = new MemoryQueue('q')
  await queue.add(entry(3, 'c'))
  await queue.add(entry(1, 'a'))
  await queue.add(entry(2, 'b'))
  assert.deepEqual((await queue.load()).map((e) => e.client_tx_id), ['a', 'b', 'c'])
  await queue.remove(['b'])
  assert.deepEqual((await queue.load()).map((e) => e.client_tx_id), ['a', 'c'])
  await queue.clear()
  assert.deepEqual(await queue.load(), [])
})

test('a stored entry is a copy: changing the caller\'s object changes nothing stored', async () => {
  const queue = new MemoryQueue('q')
  const e = entry(1, 'a')
  await queue.add(e)
  e.p.n = 99
  const [stored] = await queue.load()
  assert.equal(stored.p.n, 1)
  stored.p.n = 42
  assert.equal((await queue.load())[0].p.n, 1)
})

test('adding the same client_tx_id twice keeps one entry (a replayed add)', async () => {
  const queue = new MemoryQueue('q')
  await queue.add(entry(1, 'a'))
  await queue.add(entry(1, 'a'))
  assert.equal((await queue.load()).length, 1)
})

test('an IndexedDB that fails to open falls back to memory and says why', async () => {
  const errors = []
  const broken = {
    open () {
      const request = {}
      setTimeout(() => { request.error = new Error('quota'); request.onerror() }, 0)
      return request
    }
  }
  const queue = await openQueue('q', { indexedDB: broken, onError: (e) => errors.push(e.message) })
  assert.equal(queue.kind, 'memory')
  assert.deepEqual(errors, ['quota'])
})
