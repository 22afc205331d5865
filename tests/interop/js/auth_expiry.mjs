// Scenario: the token expires mid-session; the client reconnects with a fresh one.
//
//   node auth_expiry.mjs WS_BASE ROOM '{"token": "<short-lived>", "watch_token": "<long>"}'
//
// The client types before-expiry and waits for the server to close it (4401 at the
// token's exp: y-websocket does not retry a 44xx close, it emits 'closed'). Disconnected,
// it types while-disconnected, prints 'expired' {code, at} and waits for one stdin line
// `token <jwt>`; it sets provider.params.token and reconnects, typing
// around-reconnect right after connect(). A watcher (long token) in the same room must
// end with all three edits: prints 'converged' {watcher, client, closes}.
import { emit, hardTimeout, leave, parseArgs, run, synced, waitFor } from './lib.mjs'
import { openAuthClient, stdinLines } from './auth_lib.mjs'

hardTimeout(40000, 'auth_expiry')
const { base, room, params } = parseArgs()
const EDITS = ['before-expiry;', 'while-disconnected;', 'around-reconnect;']

run(async () => {
  const lines = stdinLines()
  const watcher = openAuthClient(base, room, params.watch_token, { name: 'watcher' })
  const client = openAuthClient(base, room, params.token, { name: 'client' })
  await synced(watcher)
  await synced(client)
  const body = client.doc.getText('body')
  body.insert(body.length, EDITS[0])
  await waitFor(() => watcher.doc.getText('body').toString().includes(EDITS[0]), 'the watcher to see before-expiry')
  emit('connected', { at: Date.now() })

  await waitFor(() => client.closes.length > 0, 'the server to close the expired session', 20000)
  const closed = client.closes[0]
  body.insert(body.length, EDITS[1])
  emit('expired', { code: closed && closed.code, at: closed && closed.at, terminal: client.terminal })

  const line = await lines.next()
  if (!line.startsWith('token ')) throw new Error(`expected 'token <jwt>', got ${JSON.stringify(line)}`)
  client.provider.params = { ...client.provider.params, token: line.slice(6) }
  client.provider.connect()
  body.insert(body.length, EDITS[2])
  await synced(client, 10000)
  await waitFor(
    () => EDITS.every((e) => watcher.doc.getText('body').toString().includes(e)),
    'the watcher to see every edit of the client',
    10000,
    () => JSON.stringify(watcher.doc.getText('body').toString())
  )
  emit('converged', {
    watcher: watcher.doc.getText('body').toString(),
    client: body.toString(),
    closes: client.closes,
    watcher_closes: watcher.closes
  })
  await leave(client)
  await leave(watcher)
})
