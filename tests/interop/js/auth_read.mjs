// Scenario helper: a late joiner with a token (`params: {token}`); prints 'content'
// once synced, or 'refused' {code} if the server closes it first.
//
//   node auth_read.mjs WS_BASE ROOM '{"token": "..."}'
import { content, emit, hardTimeout, leave, parseArgs, run, waitFor } from './lib.mjs'
import { openAuthClient } from './auth_lib.mjs'

hardTimeout(15000, 'auth_read')
const { base, room, params } = parseArgs()

run(async () => {
  const client = openAuthClient(base, room, params.token, { name: 'late' })
  await waitFor(() => client.provider.synced || client.closes.length > 0, 'sync or a close', 10000)
  if (client.provider.synced) emit('content', content(client.doc))
  else emit('refused', { code: client.closes[0] && client.closes[0].code })
  await leave(client)
})
