// Shared helpers for the interop scenarios: real npm yjs + y-websocket clients
// pointed at a crdt-sync server. Every script prints JSON lines on stdout (one
// object per line, read by tests/interop/*.py), reports failures on stderr, and
// always exits by itself: a hard timeout kills a stuck scenario with code 2.

import WebSocket from 'ws'
import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'
import { WebsocketProvider } from 'y-websocket'

export { Y, WebSocket, WebsocketProvider }

/** Parse `node script.mjs WS_BASE ROOM [JSON_PARAMS]`. */
export function parseArgs () {
  const [base, room, params = '{}'] = process.argv.slice(2)
  if (!base || room === undefined) {
    console.error(`usage: node ${process.argv[1]} WS_BASE ROOM [JSON_PARAMS]`)
    process.exit(64)
  }
  return { base, room, params: JSON.parse(params) }
}

/** Exit with code 2 after `ms` whatever happens (the timer does not keep node alive). */
export function hardTimeout (ms, label = 'scenario') {
  setTimeout(() => {
    console.error(`timeout: ${label} did not finish within ${ms} ms`)
    process.exit(2)
  }, ms).unref()
}

/** Print one JSON line for the Python side. */
export function emit (event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n')
}

/** Run `main`, exit 0 when it resolves, 1 (with the stack on stderr) when it throws. */
export function run (main) {
  main().then(
    () => process.exit(0),
    (err) => {
      console.error(err && err.stack ? err.stack : String(err))
      process.exit(1)
    }
  )
}

/**
 * Poll `predicate` every 5 ms until it is truthy; reject after `timeoutMs`.
 * `describe` is called on failure to say what was seen instead.
 */
export function waitFor (predicate, label, timeoutMs = 5000, describe = () => '') {
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve, reject) => {
    const tick = () => {
      let value
      try {
        value = predicate()
      } catch (err) {
        reject(err)
        return
      }
      if (value) {
        resolve(value)
      } else if (Date.now() > deadline) {
        const seen = describe()
        reject(new Error(`waited ${timeoutMs} ms for ${label}` + (seen ? `; saw ${seen}` : '')))
      } else {
        setTimeout(tick, 5)
      }
    }
    tick()
  })
}

/**
 * A Y.Doc connected through y-websocket, exactly as an app would connect it,
 * except that BroadcastChannel is disabled: Node 20 has a global
 * BroadcastChannel, and two providers of one process would otherwise sync
 * with each other without the server.
 */
export function openClient (base, room, { connect = true, name = 'client' } = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(base, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    connect
  })
  const client = { name, doc, provider, closes: [], errors: [] }
  provider.on('connection-close', (event) => {
    client.closes.push(event ? { code: event.code, reason: event.reason } : null)
  })
  provider.on('connection-error', (event) => {
    client.errors.push(String(event && event.message ? event.message : event))
  })
  return client
}

/** Wait until the provider has applied the server's sync step 2. */
export function synced (client, timeoutMs = 5000) {
  return waitFor(() => client.provider.synced, `${client.name} synced`, timeoutMs)
}

/** The doc as plain JSON: the Y.Text 'body' and the Y.Map 'fields'. */
export function content (doc) {
  return {
    body: doc.getText('body').toString(),
    fields: doc.getMap('fields').toJSON()
  }
}

/**
 * The content of a fresh doc built only from `Y.encodeStateAsUpdate(doc)`: what
 * the doc would hand to anyone syncing from it.
 */
export function encodedContent (doc) {
  const copy = new Y.Doc()
  Y.applyUpdate(copy, Y.encodeStateAsUpdate(doc))
  const result = content(copy)
  copy.destroy()
  return result
}

/** State vector as `{clientID: clock}` (comparable with JSON.stringify after sorting). */
export function stateVector (doc) {
  const sv = Y.decodeStateVector(Y.encodeStateVector(doc))
  return Object.fromEntries([...sv.entries()].sort((a, b) => a[0] - b[0]))
}

/** JSON with object keys sorted: Y.Map.toJSON() keeps insertion order, which differs per replica. */
export function canonical (value) {
  return JSON.stringify(value, (_key, v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)))
      : v
  )
}

/** True when every doc has the same state vector and the same content. */
export function converged (docs) {
  const first = canonical([stateVector(docs[0]), content(docs[0])])
  return docs.every((doc) => canonical([stateVector(doc), content(doc)]) === first)
}

/** Wait until `docs` converge; the error shows each doc's content. */
export function waitConverged (docs, label, timeoutMs = 5000) {
  return waitFor(
    () => converged(docs),
    label,
    timeoutMs,
    () => JSON.stringify(docs.map((doc) => ({ sv: stateVector(doc), ...content(doc) })))
  )
}

/**
 * Destroy the provider and wait for its socket to be closed, so that everything
 * it sent before (its last edits, its awareness removal) has left this process.
 */
export async function leave (client, timeoutMs = 5000) {
  const ws = client.provider.ws
  client.provider.destroy()
  if (ws) {
    await waitFor(() => ws.readyState === WebSocket.CLOSED, `${client.name} socket closed`, timeoutMs)
  }
}

/**
 * Decode an awareness message (`[1][varUint8Array update]`) into its entries,
 * or return null for any other message type.
 */
export function decodeAwarenessMessage (data) {
  const decoder = decoding.createDecoder(new Uint8Array(data))
  if (decoding.readVarUint(decoder) !== 1) return null
  const update = decoding.createDecoder(decoding.readVarUint8Array(decoder))
  const entries = []
  const count = decoding.readVarUint(update)
  for (let i = 0; i < count; i++) {
    const clientID = decoding.readVarUint(update)
    const clock = decoding.readVarUint(update)
    const state = JSON.parse(decoding.readVarString(update))
    entries.push({ clientID, clock, state })
  }
  return entries
}

/** Names (`state.user.name`) in an awareness, by client id, other than `ownID`. */
export function remoteUsers (awareness, ownID) {
  const users = {}
  for (const [clientID, state] of awareness.getStates()) {
    if (clientID !== ownID && state && state.user) users[clientID] = state.user.name
  }
  return users
}
