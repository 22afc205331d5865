// Scenario helper: a y-websocket client that shows a user in awareness and stays.
//
//   node awareness_peer.mjs WS_BASE ROOM '{"name": "alice"}'
//
// Connects, sets awareness field user = {name}, waits until the server has
// relayed that state back to it (so the server knows it), prints 'ready' with
// its clientID, then waits for commands on stdin:
//   leave   provider.destroy() (y-websocket sends the null state itself), wait
//           for the socket to close, print 'left', exit 0
// EOF on stdin exits too. The test may also SIGKILL it: no goodbye at all.
import * as readline from 'node:readline'
import { decodeAwarenessMessage, emit, hardTimeout, leave, openClient, parseArgs, run, synced, waitFor } from './lib.mjs'

hardTimeout(30000, 'awareness_peer')
const { base, room, params } = parseArgs()
const name = params.name || 'alice'

run(async () => {
  const peer = openClient(base, room, { name })
  const ownID = peer.doc.clientID
  let echoed = false
  peer.provider.ws.on('message', (data) => {
    const entries = decodeAwarenessMessage(data)
    if (entries && entries.some((e) => e.clientID === ownID && e.state?.user?.name === name)) {
      echoed = true
    }
  })
  await synced(peer)
  peer.provider.awareness.setLocalStateField('user', { name })
  await waitFor(() => echoed, `the server to relay ${name}'s awareness back`)
  emit('ready', { clientID: ownID })

  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (line.trim() === 'leave') {
      await leave(peer)
      emit('left', { clientID: ownID })
      return
    }
    throw new Error(`unknown command ${JSON.stringify(line)}`)
  }
})
