// Scenario: two writers of the same field. A's change is made while its mutations
// cannot reach the server (its network drops POSTs); B changes the same field and
// another one meanwhile; A's replay carries the base_sid of when A made the change,
// so the server reports that A overwrote B's `status`, and A's onConflict fires with
// it. Both pools end equal to the server's records.
//
//   node sdk_conflict.mjs HTTP_URL TYPE
import {
  WebSocket, createFrameClient, emit, hardTimeout, parseArgs, poolOf, run, serverRecords, until
} from './sdk_lib.mjs'

hardTimeout(40000, 'sdk_conflict')
const { url, t } = parseArgs()

run(async () => {
  // A's network: POST /sync/v1/mutations fails like an unreachable server while down.
  const network = { down: false }
  const aFetch = (resource, init = {}) => {
    if (network.down && init.method === 'POST') return Promise.reject(new TypeError('fetch failed: network down'))
    return fetch(resource, init)
  }
  const common = { url, types: [t], WebSocket, indexedDB: null, backoff: { base: 100, cap: 500 } }
  const a = createFrameClient({ ...common, fetch: aFetch, clientId: 'writer-a' })
  const b = createFrameClient({ ...common, clientId: 'writer-b' })
  const conflicts = { a: [], b: [] }
  a.onConflict((tt, id, fields, { result }) => conflicts.a.push({ t: tt, id, fields, result }))
  b.onConflict((tt, id, fields, { result }) => conflicts.b.push({ t: tt, id, fields, result }))
  await until(() => a.state === 'online' && b.state === 'online', 'both online')

  const made = await a.insert(t, 'k', { title: 'Contested', status: 'open' })
  await until(() => b.get(t, 'k') && a.lastSid >= made.sid, 'both to see k')

  network.down = true
  const aAnswer = a.save(t, 'k', { status: 'doing', title: 'A title' })
  await until(() => a.queue.state === 'offline', "A's POST to fail")
  const bAnswer = await b.save(t, 'k', { status: 'done', owner: 'bob' })
  await until(() => a.confirmed(t, 'k')?.sid === bAnswer.sid, "B's frame to reach A")
  const aWhileDown = { ...a.get(t, 'k').fields }

  network.down = false
  a.flush()
  const aResult = await aAnswer
  await until(() => a.lastSid >= aResult.sid && b.lastSid >= aResult.sid, "A's frame to reach both")
  const records = await serverRecords(url, t)
  emit('result', {
    conflicts,
    a_result: aResult,
    b_result: bAnswer,
    a_while_down: aWhileDown,
    a_pool: poolOf(a, t),
    b_pool: poolOf(b, t),
    records
  })
  a.close()
  b.close()
})
