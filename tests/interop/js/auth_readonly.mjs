// Scenario: a read-only viewer next to a writer in one room.
//
//   node auth_readonly.mjs WS_BASE ROOM '{"write_token": "...", "read_token": "..."}'
//
// Both connect with `params: {token}`. The writer types W1; the viewer (mode read)
// must receive it. The viewer then types READER-EDIT and only after that shows its
// cursor in awareness: the server handles one connection's messages in order, so by
// the time the writer sees the cursor, a relayed edit would already have arrived.
// The writer then types W2 (the viewer must still be connected and receive it).
// Prints 'cursor_seen' and 'result' {writer, viewer, viewer_closes, ...}.
import { emit, hardTimeout, leave, parseArgs, remoteUsers, run, synced, waitFor } from './lib.mjs'
import { openAuthClient } from './auth_lib.mjs'

hardTimeout(25000, 'auth_readonly')
const { base, room, params } = parseArgs()

run(async () => {
  const writer = openAuthClient(base, room, params.write_token, { name: 'writer' })
  const viewer = openAuthClient(base, room, params.read_token, { name: 'viewer' })
  await synced(writer)
  await synced(viewer)
  const wBody = writer.doc.getText('body')
  const vBody = viewer.doc.getText('body')
  wBody.insert(wBody.length, 'W1 ')
  await waitFor(() => vBody.toString().includes('W1'), 'the viewer to receive W1')

  vBody.insert(0, 'READER-EDIT ')
  viewer.doc.getMap('fields').set('hacked', true)
  // one update with both fields: the writer waits for the name and reads the cursor
  viewer.provider.awareness.setLocalState({ user: { name: 'viewer' }, cursor: { index: 3 } })
  await waitFor(
    () => Object.values(remoteUsers(writer.provider.awareness, writer.doc.clientID)).includes('viewer'),
    "the writer to see the viewer's cursor"
  )
  const cursor = writer.provider.awareness.getStates().get(viewer.doc.clientID).cursor
  emit('cursor_seen', { cursor })

  wBody.insert(wBody.length, 'W2')
  await waitFor(() => vBody.toString().includes('W2'), 'the viewer to receive W2 after its refused edit')
  emit('result', {
    writer: wBody.toString(),
    writer_fields: writer.doc.getMap('fields').toJSON(),
    viewer: vBody.toString(),
    viewer_closes: viewer.closes,
    writer_closes: writer.closes
  })
  await leave(viewer)
  await leave(writer)
})
