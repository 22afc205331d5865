// Scenario: two y-websocket editors on one room converge through the server.
//
//   node two_editors.mjs WS_BASE ROOM
//
// A types into the Y.Text 'body', B must see it; B edits the Y.Map 'fields', A
// must see it; then both edit at once (text at both ends, the same map key) and
// must end with equal state vectors and equal content. Prints one 'result' line.
import {
  content, emit, encodedContent, hardTimeout, leave, openClient, parseArgs, run,
  stateVector, synced, waitConverged, waitFor
} from './lib.mjs'

hardTimeout(15000, 'two_editors')
const { base, room } = parseArgs()

run(async () => {
  const a = openClient(base, room, { name: 'A' })
  const b = openClient(base, room, { name: 'B' })
  await Promise.all([synced(a), synced(b)])

  a.doc.getText('body').insert(0, 'hello from A')
  await waitFor(() => b.doc.getText('body').toString() === 'hello from A', 'B to see A\'s text',
    5000, () => JSON.stringify(content(b.doc)))

  b.doc.transact(() => {
    const fields = b.doc.getMap('fields')
    fields.set('title', 'from B')
    fields.set('count', 42)
    fields.set('tags', ['x', 'y'])
  })
  await waitFor(() => a.doc.getMap('fields').get('count') === 42, 'A to see B\'s fields',
    5000, () => JSON.stringify(content(a.doc)))

  // Concurrent edits: both are applied locally before either hears of the other.
  a.doc.transact(() => {
    a.doc.getText('body').insert(0, '[A] ')
    a.doc.getMap('fields').set('winner', 'A')
  })
  b.doc.transact(() => {
    const body = b.doc.getText('body')
    body.insert(body.length, ' [B]')
    b.doc.getMap('fields').set('winner', 'B')
  })
  await waitConverged([a.doc, b.doc], 'A and B to converge after concurrent edits')

  emit('result', {
    a: content(a.doc),
    b: content(b.doc),
    a_encoded: encodedContent(a.doc),
    b_encoded: encodedContent(b.doc),
    a_sv: stateVector(a.doc),
    b_sv: stateVector(b.doc),
    closes: a.closes.length + b.closes.length
  })
  await Promise.all([leave(a), leave(b)])
})
