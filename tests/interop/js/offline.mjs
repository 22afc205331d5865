// Scenario: edits made offline merge on reconnect.
//
//   node offline.mjs WS_BASE ROOM
//
// A and B sync 'base|'. A disconnects, appends '[A-off]' and sets fields.a while
// B, online, prepends '[B-on]' and sets fields.b. A reconnects: both (and a late
// third client C, which only has the server's copy) must converge to
// '[B-on]base|[A-off]' with both fields. Prints 'offline' (what A saw while
// offline) and 'result'.
import {
  content, emit, hardTimeout, leave, openClient, parseArgs, run, stateVector, synced,
  waitConverged, waitFor
} from './lib.mjs'

hardTimeout(20000, 'offline')
const { base, room } = parseArgs()

run(async () => {
  const a = openClient(base, room, { name: 'A' })
  const b = openClient(base, room, { name: 'B' })
  await Promise.all([synced(a), synced(b)])

  a.doc.getText('body').insert(0, 'base|')
  await waitConverged([a.doc, b.doc], 'B to receive A\'s online edit')

  a.provider.disconnect()
  await waitFor(() => !a.provider.wsconnected && a.provider.ws === null, 'A to go offline')

  a.doc.transact(() => {
    const body = a.doc.getText('body')
    body.insert(body.length, '[A-off]')
    a.doc.getMap('fields').set('a', 'offline edit')
  })
  b.doc.transact(() => {
    b.doc.getText('body').insert(0, '[B-on]')
    b.doc.getMap('fields').set('b', 'online edit')
  })
  // B's edit travels through the server; A, offline, must not get it. C joins
  // now and must get B's edit from the server (and nothing of A's offline work).
  const c = openClient(base, room, { name: 'C' })
  await synced(c)
  await waitFor(() => c.doc.getMap('fields').get('b') === 'online edit', 'C to see B\'s online edit',
    5000, () => JSON.stringify(content(c.doc)))
  emit('offline', { a: content(a.doc), b: content(b.doc), c: content(c.doc) })

  a.provider.connect()
  await synced(a)
  await waitConverged([a.doc, b.doc, c.doc], 'A, B and C to converge after A reconnects')
  emit('result', {
    a: content(a.doc),
    b: content(b.doc),
    c: content(c.doc),
    a_sv: stateVector(a.doc),
    b_sv: stateVector(b.doc),
    closes: b.closes.length + c.closes.length
  })
  await Promise.all([leave(a), leave(b), leave(c)])
})
