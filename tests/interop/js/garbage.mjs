// Scenario: two y-websocket editors keep syncing while raw sockets feed the same
// room garbage.
//
//   node garbage.mjs WS_BASE ROOM
//
// Raw `ws` sockets on the room send, once open:
//   binary       [0xff, 0xff, 0xff]  (an unterminated varUint)  -> expect close 1002
//   text         a text frame                                   -> expect close 1003
//   bad_update   a well-framed sync update whose payload is not a Yjs update -> 1007
// meanwhile the editors edit. Prints 'result' with each raw socket's close code
// and reason, both editors' content, a late joiner's content, and how often the
// editors' own connections closed (must be 0).
import {
  WebSocket, content, emit, hardTimeout, leave, openClient, parseArgs, run, synced,
  waitConverged, waitFor
} from './lib.mjs'

hardTimeout(15000, 'garbage')
const { base, room } = parseArgs()

const GARBAGE = {
  binary: Buffer.from([0xff, 0xff, 0xff]),
  text: 'hello, this is not y-websocket',
  // [messageSync][messageYjsUpdate][varUint8Array of 4 bytes that pycrdt cannot decode]
  bad_update: Buffer.from([0, 2, 4, 0xff, 0xff, 0xff, 0xff])
}

function feedGarbage (url, kind) {
  const result = { kind, opened: false, code: null, reason: null, received: 0 }
  const ws = new WebSocket(url)
  ws.on('open', () => {
    result.opened = true
    ws.send(GARBAGE[kind])
  })
  ws.on('message', () => { result.received++ })
  ws.on('error', (err) => { result.error = String(err.message || err) })
  ws.on('close', (code, reason) => {
    result.code = code
    result.reason = reason.toString()
  })
  return result
}

run(async () => {
  const a = openClient(base, room, { name: 'A' })
  const b = openClient(base, room, { name: 'B' })
  await Promise.all([synced(a), synced(b)])
  a.doc.getText('body').insert(0, 'before;')
  await waitConverged([a.doc, b.doc], 'A and B to converge before the garbage')

  const url = `${base}/${room}`
  const raws = Object.keys(GARBAGE).map((kind) => feedGarbage(url, kind))
  // Edit while the garbage is in flight.
  a.doc.getText('body').insert(a.doc.getText('body').length, 'during-a;')
  b.doc.getMap('fields').set('during', 'b')
  await waitFor(() => raws.every((r) => r.code !== null), 'every garbage socket to be closed', 5000,
    () => JSON.stringify(raws))
  await waitConverged([a.doc, b.doc], 'A and B to converge with the edits made during the garbage')

  const body = b.doc.getText('body')
  body.insert(body.length, 'after-b;')
  await waitConverged([a.doc, b.doc], 'A and B to converge after the garbage')

  const late = openClient(base, room, { name: 'late' })
  await synced(late)
  await waitConverged([a.doc, b.doc, late.doc], 'a late joiner to get the same state')

  emit('result', {
    raw: Object.fromEntries(raws.map((r) => [r.kind, r])),
    a: content(a.doc),
    b: content(b.doc),
    late: content(late.doc),
    editor_closes: [...a.closes, ...b.closes]
  })
  await Promise.all([leave(a), leave(b), leave(late)])
})
