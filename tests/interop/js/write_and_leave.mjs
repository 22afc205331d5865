// Scenario helper: connect, append to the doc, and leave at once.
//
//   node write_and_leave.mjs WS_BASE ROOM '{"text": "one;", "key": "k1", "value": "v1"}'
//
// Prints 'before' (the content the server gave it at sync), appends `text` to the
// Y.Text 'body' and sets fields[key] = value in one transaction, then destroys the
// provider right away (an edit made just before leaving must not be lost) and
// prints 'left' once its socket is closed.
import { content, emit, hardTimeout, leave, openClient, parseArgs, run, synced } from './lib.mjs'

hardTimeout(10000, 'write_and_leave')
const { base, room, params } = parseArgs()

run(async () => {
  const client = openClient(base, room, { name: 'writer' })
  await synced(client)
  emit('before', content(client.doc))
  client.doc.transact(() => {
    const body = client.doc.getText('body')
    body.insert(body.length, params.text)
    client.doc.getMap('fields').set(params.key, params.value)
  })
  await leave(client)
  emit('left', content(client.doc))
})
