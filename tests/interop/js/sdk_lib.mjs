// Shared helpers for the SDK scenarios (tests/interop/test_js_sdk.py): the real
// @crdt-sync/sdk from web/sdk, with the `ws` package as Node 20's WebSocket.
//
//   node sdk_<scenario>.mjs HTTP_URL TYPE [JSON_PARAMS]
//
// Like every interop script: JSON lines on stdout, failures on stderr, a hard
// timeout; commands from the test arrive as lines on stdin.

import { createInterface } from 'node:readline'
import WebSocket from 'ws'
import { createFrameClient } from '../../../web/sdk/index.js'

export { WebSocket, createFrameClient }
export { emit, hardTimeout, run } from './lib.mjs'

/** Parse `node script.mjs HTTP_URL TYPE [JSON_PARAMS]`. */
export function parseArgs () {
  const [url, t, params = '{}'] = process.argv.slice(2)
  if (!url || !t) {
    console.error(`usage: node ${process.argv[1]} HTTP_URL TYPE [JSON_PARAMS]`)
    process.exit(64)
  }
  return { url, t, params: JSON.parse(params) }
}

const lines = []
const lineWaiters = []
createInterface({ input: process.stdin }).on('line', (line) => {
  const waiter = lineWaiters.shift()
  if (waiter) waiter(line)
  else lines.push(line)
})

/** The next command line from the test (rejects after `timeoutMs`). */
export function nextCommand (timeoutMs = 30000) {
  if (lines.length) return Promise.resolve(lines.shift())
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no command within ${timeoutMs} ms`)), timeoutMs)
    lineWaiters.push((line) => { clearTimeout(timer); resolve(line) })
  })
}

/** Wait for the command `expected` (anything else is an error). */
export async function command (expected, timeoutMs = 30000) {
  const line = await nextCommand(timeoutMs)
  if (line.split(' ')[0] !== expected) throw new Error(`expected command ${expected}, got ${line}`)
  return line.slice(expected.length + 1)
}

/** Resolve when `predicate()` holds, checked every 10 ms; reject after `timeoutMs`. */
export function until (predicate, label, timeoutMs = 15000, describe = () => '') {
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve, reject) => {
    const tick = () => {
      let value
      try { value = predicate() } catch (err) { reject(err); return }
      if (value) { resolve(value); return }
      if (Date.now() > deadline) {
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${label} ${describe()}`))
        return
      }
      setTimeout(tick, 10)
    }
    tick()
  })
}

/** A WebSocket class that records when each connection attempt starts (ms since epoch). */
export function recordingWebSocket (attempts) {
  return class RecordingWebSocket extends WebSocket {
    constructor (...args) {
      attempts.push(Date.now())
      super(...args)
    }
  }
}

/** A fetch that records when each reconnect attempt starts: its catch-up request
 * (`/sync/v1/delta`, or `/sync/v1/records` for a bootstrap), the first of every attempt. */
export function recordingFetch (attempts) {
  return (resource, init) => {
    const path = new URL(String(resource)).pathname
    if (path === '/sync/v1/delta' || path === '/sync/v1/records') attempts.push(Date.now())
    return fetch(resource, init)
  }
}

/** GET a JSON endpoint of the server (with a token if given). */
export async function getJson (url, path, token) {
  let response
  for (let attempt = 0; attempt < 50; attempt++) {
    response = await fetch(new URL(path, url), {
      headers: token ? { Authorization: `Bearer ${token}` } : {}
    })
    if (response.status !== 429) break
    const body = await response.json()
    await new Promise((resolve) => setTimeout(resolve, body.retry_after_ms || 100))
  }
  if (!response.ok) throw new Error(`GET ${path}: HTTP ${response.status} ${await response.text()}`)
  return response.json()
}

/** Every record of type `t` on the server, as {id: fields}. */
export async function serverRecords (url, t, token) {
  const out = {}
  let cursor = null
  for (let page = 0; page < 1000; page++) {
    const query = new URLSearchParams({ t, limit: '1000' })
    if (cursor) query.set('cursor', cursor)
    const body = await getJson(url, '/sync/v1/records?' + query, token)
    for (const record of body.records) out[record.id] = record.fields
    cursor = body.next_cursor
    if (!cursor) break
  }
  return out
}

/** The client's pool of type `t` as {id: fields}. */
export function poolOf (client, t) {
  const out = {}
  for (const [id, record] of client.pool.get(t) || []) out[id] = record.fields
  return out
}

/** JSON equality with sorted keys. */
export function sameJson (a, b) {
  return canonical(a) === canonical(b)
}

function canonical (value) {
  if (Array.isArray(value)) return '[' + value.map(canonical).join(',') + ']'
  if (value && typeof value === 'object') {
    return '{' + Object.keys(value).sort().map((k) => JSON.stringify(k) + ':' + canonical(value[k])).join(',') + '}'
  }
  return JSON.stringify(value)
}
