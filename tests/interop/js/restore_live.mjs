// Scenario: three y-websocket editors stay connected through a version restore.
//
//   node restore_live.mjs WS_BASE ROOM
//
// The three edit a record doc (Y.Text 'body', Y.Map 'fields'); a version is taken
// (POST /docs/ROOM/versions); they edit on; the version is restored (POST
// .../versions/V/restore) while all three stay connected. Each must receive the
// restore as a normal update (no reconnect, no reload): content equal to the
// version. Then they keep editing, and A undoes its own later work with its own
// Y.UndoManager (only its own work goes, the restore stays). Prints 'version',
// 'restored' and 'result' lines.
import {
  canonical, content, emit, hardTimeout, openClient, parseArgs, run, synced, waitConverged,
  waitFor, Y
} from './lib.mjs'

hardTimeout(30000, 'restore_live')
const { base, room } = parseArgs()
const http = base.replace(/^ws/, 'http').replace(/\/yjs\/?$/, '')
const docPath = `${http}/docs/${room.split('/').map(encodeURIComponent).join('/')}`

async function post (path, body) {
  const response = await fetch(docPath + path, {
    method: 'POST',
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const json = await response.json()
  if (!response.ok) throw new Error(`POST ${path}: ${response.status} ${JSON.stringify(json)}`)
  return json
}

async function serverContent () {
  const response = await fetch(docPath)
  const json = await response.json()
  return { body: json.content.body ?? '', fields: json.content.fields ?? {} }
}

run(async () => {
  const clients = ['A', 'B', 'C'].map((name) => openClient(base, room, { name }))
  const [a, b, c] = clients
  const connects = clients.map(() => 0)
  clients.forEach((client, i) => client.provider.on('status', ({ status }) => {
    if (status === 'connected') connects[i] += 1
  }))
  await Promise.all(clients.map((client) => synced(client)))
  const docs = clients.map((client) => client.doc)
  const undoA = new Y.UndoManager([a.doc.getText('body'), a.doc.getMap('fields')])

  a.doc.getText('body').insert(0, 'hello')
  b.doc.getMap('fields').set('title', 'T1')
  c.doc.getMap('fields').set('tags', ['x'])
  await waitConverged(docs, 'the first edits')
  const version = await post('/versions', { label: 'v1' })
  emit('version', { version, content: content(a.doc) })

  a.doc.getText('body').insert(5, ' world')
  b.doc.getMap('fields').set('title', 'T2')
  c.doc.getText('body').insert(0, '>> ')
  c.doc.getMap('fields').delete('tags')
  await waitConverged(docs, 'the edits after the version')
  const edited = content(a.doc)

  const restored = await post(`/versions/${version.version}/restore`)
  const want = canonical({ body: 'hello', fields: { title: 'T1', tags: ['x'] } })
  await waitFor(() => docs.every((doc) => canonical(content(doc)) === want),
    'every editor to receive the restore', 10000,
    () => JSON.stringify(docs.map(content)))
  emit('restored', { restored, edited, a: content(a.doc), b: content(b.doc), c: content(c.doc) })

  // They keep editing: A's own later work, B and C concurrently.
  undoA.stopCapturing()
  a.doc.getText('body').insert(5, ' again')
  undoA.stopCapturing()
  b.doc.getMap('fields').set('after', 1)
  c.doc.getText('body').insert(0, '# ')
  await waitConverged(docs, 'the edits after the restore')
  const afterEdits = content(a.doc)

  // A undoes its own later work only: the restore and the others' edits stay.
  undoA.undo()
  await waitConverged(docs, 'A\'s undo')
  const afterUndo = content(a.doc)
  undoA.redo()
  await waitConverged(docs, 'A\'s redo')
  const server = await serverContent() // it relayed every edit: it has them all
  emit('result', {
    afterEdits,
    afterUndo,
    final: clients.map((client) => content(client.doc)),
    server,
    closes: clients.reduce((n, client) => n + client.closes.length, 0),
    connects
  })
  clients.forEach((client) => client.provider.destroy())
})
