// Scenario: a y-websocket editor of a record doc, seen by frame clients.
//
//   node record_editor.mjs WS_BASE ROOM '{"type": "hello", "delay_ms": 10, "expect_status": "done"}'
//
// Types `type` into the Y.Text 'body' one character every `delay_ms` ('typed' when
// done), then waits until a frame-feed viewer shows up in its awareness ('saw_viewer',
// with that state) and until the Y.Map 'fields' has status === expect_status
// ('saw_status', without reconnecting), then leaves ('left').
import { emit, hardTimeout, leave, openClient, parseArgs, run, synced, waitFor } from './lib.mjs'

const { base, room, params } = parseArgs()
hardTimeout(30000, 'record_editor')

run(async () => {
  const client = openClient(base, room, { name: 'editor' })
  client.provider.awareness.setLocalStateField('user', { name: 'js-editor' })
  await synced(client)
  emit('synced')
  const body = client.doc.getText('body')
  for (const char of params.type) {
    body.insert(body.length, char)
    await new Promise((resolve) => setTimeout(resolve, params.delay_ms ?? 10))
  }
  emit('typed', { body: body.toString() })

  const awareness = client.provider.awareness
  const viewer = await waitFor(
    () => [...awareness.getStates().values()].find((s) => s && s.viewer === true),
    'a viewer in awareness', 10000)
  emit('saw_viewer', { state: viewer })

  const fields = client.doc.getMap('fields')
  await waitFor(() => fields.get('status') === params.expect_status, 'status', 10000,
    () => JSON.stringify(fields.toJSON()))
  emit('saw_status', { fields: fields.toJSON(), closes: client.closes.length })
  await leave(client)
  emit('left')
})
