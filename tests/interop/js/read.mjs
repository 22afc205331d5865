// Scenario helper: a late joiner. Connects, and prints 'content' with what it
// holds the moment the server's sync step 2 has been applied (no waiting for
// more: a joiner must get the full state in that answer), then leaves.
//
//   node read.mjs WS_BASE ROOM
import { content, emit, hardTimeout, leave, openClient, parseArgs, run, stateVector, synced } from './lib.mjs'

hardTimeout(10000, 'read')
const { base, room } = parseArgs()

run(async () => {
  const client = openClient(base, room, { name: 'reader' })
  await synced(client)
  emit('content', { ...content(client.doc), sv: stateVector(client.doc) })
  await leave(client)
})
