// Scenario helper for the several-node tests: one y-websocket editor that stays
// connected to one node and is driven line by line from stdin.
//
//   node cluster_peer.mjs WS_BASE ROOM '{"name": "alice"}'
//
// Connects, waits for the server's sync step 2, sets its awareness user = {name}
// (unless params.aware is false) and prints 'synced' with its clientID and body. Then reads commands, one JSON object per
// line, each with an "id"; the answer is a line whose event is that id:
//   {"id", "cmd": "type", "text", "delay_ms"?, "seed"?}
//       types `text` one character at a time, each at a pseudo-random position of
//       the Y.Text 'body' (its own transaction, `delay_ms` apart): concurrent edits
//       when several peers type at once. Answers with the body when done.
//   {"id", "cmd": "insert", "at", "text"}     one insert (at = null: at the end)
//   {"id", "cmd": "delete", "at", "len"}      one delete
//   {"id", "cmd": "state"}
//       answers {body, sv, users, connected, closes}
//   {"id", "cmd": "await_body", "body", "timeout_ms"?}
//       answers once the body is exactly `body` (fails the script after the timeout)
//   {"id", "cmd": "aware"}   sets the awareness user = {name} now
//   {"id", "cmd": "leave"}   provider.destroy() (y-websocket sends its null awareness
//       state), waits for the socket to close, answers, exits 0
// EOF on stdin leaves too.
//
// Awareness, unprompted: 'seen:<name>' the first time a remote state with
// user.name == name appears, and 'gone:<name>' when that client's state is removed,
// each with {clientID, at (epoch ms), connected (this peer's own socket), closes}.
// A removal while this peer itself is disconnected is y-websocket's own doing (it
// drops every remote state when its socket closes), which `connected` shows.
import * as readline from 'node:readline'
import {
  emit, hardTimeout, leave, openClient, parseArgs, remoteUsers, run, stateVector, synced, waitFor
} from './lib.mjs'

const { base, room, params } = parseArgs()
const name = params.name || 'peer'
hardTimeout(params.lifetime_ms ?? 90000, `cluster_peer ${name}`)

/** Mulberry32: a small seeded generator, so that a failing run can be replayed. */
function rng (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

run(async () => {
  const peer = openClient(base, room, { name })
  const { doc, provider } = peer
  const awareness = provider.awareness
  const ownID = doc.clientID
  const body = doc.getText('body')

  const named = new Map() // clientID -> name, of every remote state seen
  const seen = new Set()
  const gone = new Set()
  const stamp = (clientID) => ({
    clientID,
    at: Date.now(),
    connected: provider.wsconnected,
    closes: peer.closes.length
  })
  awareness.on('change', ({ added, updated, removed }) => {
    for (const clientID of [...added, ...updated]) {
      const state = awareness.getStates().get(clientID)
      const who = state?.user?.name
      if (clientID === ownID || !who) continue
      named.set(clientID, who)
      if (!seen.has(who)) {
        seen.add(who)
        emit(`seen:${who}`, stamp(clientID))
      }
    }
    for (const clientID of removed) {
      const who = named.get(clientID)
      if (who !== undefined && !gone.has(who)) {
        gone.add(who)
        emit(`gone:${who}`, stamp(clientID))
      }
    }
  })

  await synced(peer, 10000)
  if (params.aware !== false) awareness.setLocalStateField('user', { name })
  emit('synced', { clientID: ownID, body: body.toString() })

  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (!line.trim()) continue
    const command = JSON.parse(line)
    const { id, cmd } = command
    if (cmd === 'type') {
      const next = rng(command.seed ?? ownID)
      for (const char of command.text) {
        body.insert(Math.floor(next() * (body.length + 1)), char)
        if (command.delay_ms) await sleep(command.delay_ms)
      }
      emit(id, { body: body.toString() })
    } else if (cmd === 'insert') {
      body.insert(command.at ?? body.length, command.text)
      emit(id, { body: body.toString() })
    } else if (cmd === 'delete') {
      body.delete(command.at, command.len)
      emit(id, { body: body.toString() })
    } else if (cmd === 'state') {
      emit(id, {
        body: body.toString(),
        sv: stateVector(doc),
        users: remoteUsers(awareness, ownID),
        connected: provider.wsconnected,
        closes: peer.closes.length,
        close_events: peer.closes,
        errors: peer.errors
      })
    } else if (cmd === 'await_body') {
      await waitFor(() => body.toString() === command.body, `${name}: body ${JSON.stringify(command.body)}`,
        command.timeout_ms ?? 10000, () => JSON.stringify(body.toString()))
      emit(id, { body: body.toString(), connected: provider.wsconnected, closes: peer.closes.length })
    } else if (cmd === 'aware') {
      awareness.setLocalStateField('user', { name })
      emit(id, {})
    } else if (cmd === 'leave') {
      await leave(peer)
      emit(id, {})
      return
    } else {
      throw new Error(`unknown command ${JSON.stringify(line)}`)
    }
  }
  await leave(peer)
})
