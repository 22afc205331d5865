// Scenario helper: the y-websocket peer of the Python DocClient (test_js_doc_client.py).
//
//   node doc_client_peer.mjs WS_BASE ROOM '{"name": "js"}'
//
// Connects (y-websocket reconnects by itself), shows awareness user = {name},
// prints 'ready' once synced, then runs one JSON command per stdin line and
// prints one line per command (its `as` names the event):
//   {"cmd": "append", "text": T, "as": E}       append T to the Y.Text 'body'
//   {"cmd": "wait_body", "body": B, "as": E}    wait until body === B
//   {"cmd": "wait_user", "name": N, "as": E}    wait until a remote awareness has user N
//   {"cmd": "wait_no_user", "name": N, "as": E} wait until none has
//   {"cmd": "wait_offline", "as": E}            wait until the socket is down
//   {"cmd": "wait_synced", "as": E}             wait until connected and synced again
//   {"cmd": "leave", "as": E}                   destroy the provider, exit 0
// Every printed line carries `body`, `users` (remote names) and `closes`.
import * as readline from 'node:readline'
import { emit, hardTimeout, leave, openClient, parseArgs, remoteUsers, run, synced, waitFor } from './lib.mjs'

hardTimeout(90000, 'doc_client_peer')
const { base, room, params } = parseArgs()
const name = params.name || 'js'

run(async () => {
  const peer = openClient(base, room, { name })
  const body = peer.doc.getText('body')
  const awareness = peer.provider.awareness
  const users = () => Object.values(remoteUsers(awareness, peer.doc.clientID))
  const report = (event, extra = {}) =>
    emit(event, { body: body.toString(), users: users(), closes: peer.closes.length, ...extra })
  const describe = () => JSON.stringify({ body: body.toString(), users: users() })

  await synced(peer, 20000)
  awareness.setLocalStateField('user', { name })
  report('ready', { clientID: peer.doc.clientID })

  const lines = readline.createInterface({ input: process.stdin })
  for await (const line of lines) {
    if (!line.trim()) continue
    const command = JSON.parse(line)
    const as = command.as || command.cmd
    switch (command.cmd) {
      case 'append':
        body.insert(body.length, command.text)
        break
      case 'wait_body':
        await waitFor(() => body.toString() === command.body, `body ${JSON.stringify(command.body)}`, 30000, describe)
        break
      case 'wait_user':
        await waitFor(() => users().includes(command.name), `user ${command.name}`, 30000, describe)
        break
      case 'wait_no_user':
        await waitFor(() => !users().includes(command.name), `no user ${command.name}`, 30000, describe)
        break
      case 'wait_offline':
        await waitFor(() => !peer.provider.wsconnected, 'the socket to go down', 30000)
        break
      case 'wait_synced':
        await waitFor(() => peer.provider.wsconnected && peer.provider.synced, 'a new sync', 30000)
        break
      case 'leave':
        await leave(peer)
        report(as)
        return
      default:
        throw new Error(`unknown command ${line}`)
    }
    report(as)
  }
})
