// Scenario helper: a y-websocket editor watching its doc change under it, while
// the Python side writes to the same doc over HTTP (POST /docs/{doc}/update).
//
//   node watch_doc.mjs WS_BASE ROOM '{"expect": [CONTENT, ...], "step_timeout_ms": 5000}'
//
// CONTENT is {body, fields} (see lib.mjs content()). Prints 'synced' with the content
// the server gave it at sync, then, for each expected content in order, 'saw_<i>' the
// moment its doc holds exactly that content (with the provider's connection state and
// how many times its socket closed: a live update must not need a reconnect). Then
// leaves and prints 'left'.
import { canonical, content, emit, hardTimeout, leave, openClient, parseArgs, run, synced, waitFor } from './lib.mjs'

const { base, room, params } = parseArgs()
const expected = params.expect || []
const stepTimeout = params.step_timeout_ms ?? 5000
hardTimeout(10000 + expected.length * stepTimeout, 'watch_doc')

run(async () => {
  const client = openClient(base, room, { name: 'watcher' })
  await synced(client)
  emit('synced', content(client.doc))
  for (const [i, want] of expected.entries()) {
    const started = Date.now()
    await waitFor(() => canonical(content(client.doc)) === canonical(want),
      `content ${i}: ${canonical(want)}`, stepTimeout, () => canonical(content(client.doc)))
    emit(`saw_${i}`, {
      ...content(client.doc),
      ms_waiting: Date.now() - started,
      connected: client.provider.wsconnected,
      closes: client.closes.length
    })
  }
  await leave(client)
  emit('left')
})
