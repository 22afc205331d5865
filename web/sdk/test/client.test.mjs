// The client with no server at all (every request fails like an unreachable host):
// changes are applied to the pool and queued at once, nothing is lost, and it keeps
// retrying with backoff until closed. Against real servers: tests/interop/test_js_sdk.py.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createFrameClient, tokenIdentity } from '../index.js'

function unreachable (calls) {
  return (resource, init = {}) => {
    calls.push({ url: String(resource), method: init.method || 'GET' })
    return Promise.reject(new TypeError('fetch failed'))
  }
}

const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

test('offline: saves are optimistic and queued in order; the client retries', async () => {
  const calls = []
  const states = []
  const client = createFrameClient({
    url: 'http://127.0.0.1:9',
    types: ['task'],
    fetch: unreachable(calls),
    WebSocket: null,
    indexedDB: null,
    backoff: { base: 10, cap: 40 }
  })
  client.onStateChange((state) => states.push(state))
  client.insert('task', 'a', { title: 'A' })
  client.save('task', 'a', { status: 'open' })
  client.insert('task', 'b', { title: 'B' })
  client.remove('task', 'b')
  assert.deepEqual(Object.fromEntries([...client.pool.get('task')].map(([id, r]) => [id, r.fields])), {
    a: { title: 'A', status: 'open' }
  })
  assert.equal(client.get('task', 'a').pending, 'u')
  const pending = client.pending()
  assert.deepEqual(pending.map((m) => [m.op, m.id]), [['i', 'a'], ['u', 'a'], ['i', 'b'], ['d', 'b']])
  assert.equal(new Set(pending.map((m) => m.client_tx_id)).size, 4)
  assert.ok(pending.every((m) => m.client_tx_id.startsWith(client.clientId)))
  await wait(300)
  assert.equal(client.state, 'offline')
  assert.ok(states.includes('syncing'))
  assert.equal(client.queue.pending, 4)
  assert.equal(client.queue.state, 'offline')
  const bootstraps = calls.filter((c) => c.url.includes('/sync/v1/records')).length
  const posts = calls.filter((c) => c.method === 'POST').length
  assert.ok(bootstraps >= 2, 'it keeps trying to connect')
  assert.ok(posts >= 2, 'it keeps trying to send the queue')
  client.close()
  const after = calls.length
  await wait(100)
  assert.equal(calls.length, after, 'closed: no more requests')
  assert.throws(() => client.save('task', 'a', {}), /closed/)
})

test('bad arguments are refused at once', () => {
  const client = createFrameClient({ url: 'http://127.0.0.1:9', fetch: unreachable([]), WebSocket: null, indexedDB: null })
  try {
    assert.throws(() => client.save('task/x', 'a', {}), TypeError)
    assert.throws(() => client.save('task', '', {}), TypeError)
    assert.throws(() => client.insert('task', 'a', null), TypeError)
    const typed = createFrameClient({ url: 'http://127.0.0.1:9', types: ['task'], fetch: unreachable([]), WebSocket: null, indexedDB: null })
    assert.throws(() => typed.save('note', 'a', {}), /not one of this client's types/)
    typed.close()
  } finally {
    client.close()
  }
  assert.throws(() => createFrameClient({}), TypeError)
  assert.throws(() => createFrameClient({ url: '/relative', fetch: unreachable([]) }), TypeError, 'no page to resolve it against')
})

test('tokenIdentity: org/sub of a JWT, open without one', () => {
  const payload = Buffer.from(JSON.stringify({ sub: 'ann', org: 'acme' })).toString('base64url')
  assert.equal(tokenIdentity(`h.${payload}.s`), 'acme/ann')
  assert.equal(tokenIdentity(null), 'open')
  assert.equal(tokenIdentity('garbage'), 'token')
})
