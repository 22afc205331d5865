// Scenario helper: a y-websocket client that watches another user's awareness.
//
//   node awareness_watch.mjs WS_BASE ROOM '{"name": "bob", "watch": "alice", "mode": "watch"}'
//
// Sets its own awareness user = {name}. Prints:
//   'synced'   with users_at_sync (clientID -> user name of the remote states known
//              when the server's sync step 2 arrived)
// mode "watch" (default):
//   'seen'     when a remote state with user.name == watch appears (ms_after_start:
//              since this client was created)
//   'removed'  when that state is removed, with the removal's origin: 'server' if
//              it arrived from the server, 'timeout' if y-protocols' own 30 s
//              outdated check removed it (the server failed to), ms_after_seen,
//              and whether this client itself stayed connected; fails if no
//              removal arrives within removal_timeout_ms (default 15000)
//   then waits for 'leave' or EOF on stdin.
// mode "snapshot": after synced, waits until it sees `expect` (a user that is
//   still connected, proving the server hands known states to newcomers) and
//   prints 'snapshot' with the remote users it knows; exits.
import * as readline from 'node:readline'
import { emit, hardTimeout, leave, openClient, parseArgs, remoteUsers, run, synced, waitFor } from './lib.mjs'

const { base, room, params } = parseArgs()
const name = params.name || 'bob'
const watch = params.watch || 'alice'
const mode = params.mode || 'watch'
const removalTimeout = params.removal_timeout_ms ?? 15000
hardTimeout(removalTimeout + 15000, 'awareness_watch')

run(async () => {
  const startedAt = Date.now()
  const client = openClient(base, room, { name })
  const awareness = client.provider.awareness
  const ownID = client.doc.clientID
  awareness.setLocalStateField('user', { name })

  let seen = null // { clientID, at }
  let removed = null // { origin, at }
  awareness.on('change', ({ added, updated, removed: gone }, origin) => {
    for (const clientID of [...added, ...updated]) {
      const state = awareness.getStates().get(clientID)
      if (seen === null && clientID !== ownID && state?.user?.name === watch) {
        seen = { clientID, at: Date.now() }
      }
    }
    if (seen !== null && removed === null && gone.includes(seen.clientID)) {
      removed = {
        origin: origin === client.provider ? 'server' : String(origin),
        at: Date.now()
      }
    }
  })

  await synced(client)
  emit('synced', { clientID: ownID, users_at_sync: remoteUsers(awareness, ownID) })

  if (mode === 'snapshot') {
    const expect = params.expect
    await waitFor(() => Object.values(remoteUsers(awareness, ownID)).includes(expect),
      `the server to send ${expect}'s awareness state`, 5000,
      () => JSON.stringify(remoteUsers(awareness, ownID)))
    emit('snapshot', { users: remoteUsers(awareness, ownID) })
    await leave(client)
    return
  }

  await waitFor(() => seen, `${watch} to appear in awareness`, 5000,
    () => JSON.stringify(remoteUsers(awareness, ownID)))
  emit('seen', { clientID: seen.clientID, ms_after_start: seen.at - startedAt })

  await waitFor(() => removed, `${watch}'s awareness state to be removed`, removalTimeout,
    () => JSON.stringify(remoteUsers(awareness, ownID)))
  emit('removed', {
    clientID: seen.clientID,
    origin: removed.origin,
    ms_after_seen: removed.at - seen.at,
    connected: client.provider.wsconnected,
    closes: client.closes.length,
    users: remoteUsers(awareness, ownID)
  })

  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (line.trim() === 'leave') break
  }
  await leave(client)
})
