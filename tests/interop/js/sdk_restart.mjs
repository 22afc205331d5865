// Scenario: the server is stopped while the client holds queued saves, then restarted.
//
//   node sdk_restart.mjs HTTP_URL TYPE
//
// Online, the client inserts two records ('ready'). The test stops the server; once
// the client sees it is offline it inserts, updates and deletes while offline
// ('queued', with the client_tx_ids), every save applied to its pool at once. The
// test restarts the server on the same port: the client must come back online by
// itself, replay the queue in order (an insert then an update of the same record
// only work in that order), and end with a pool equal to GET /sync/v1/records
// ('result').
import {
  createFrameClient, emit, hardTimeout, parseArgs, poolOf, recordingWebSocket, run,
  sameJson, serverRecords, until
} from './sdk_lib.mjs'

hardTimeout(60000, 'sdk_restart')
const { url, t } = parseArgs()

run(async () => {
  const attempts = []
  const states = []
  const client = createFrameClient({
    url,
    types: [t],
    WebSocket: recordingWebSocket(attempts),
    indexedDB: null,
    pingInterval: 1000,
    pingTimeout: 4000,
    backoff: { base: 200, cap: 2000 }
  })
  client.onStateChange((state) => states.push(state))
  const results = []
  await until(() => client.state === 'online', 'the client to be online')
  results.push(await client.insert(t, 'a', { title: 'A', status: 'open' }))
  results.push(await client.insert(t, 'b', { title: 'B', status: 'open' }))
  await until(() => client.get(t, 'b')?.sid === results[1].sid, 'the frame of b')
  emit('ready', { pool: poolOf(client, t), last_sid: client.lastSid })

  await until(() => client.state !== 'online', 'the client to notice the server is gone', 20000)
  const offlineAt = client.lastSid
  const answers = [
    client.save(t, 'a', { status: 'doing', owner: 'ann' }),
    client.insert(t, 'c', { title: 'Made offline', status: 'open' }),
    client.save(t, 'c', { status: 'done' }),
    client.remove(t, 'b')
  ]
  const optimistic = poolOf(client, t)
  emit('queued', {
    state: client.state,
    pending: client.queue.pending,
    tx_ids: client.pending().map((m) => m.client_tx_id),
    pool: optimistic,
    attempts_before: attempts.length
  })

  const settled = await Promise.all(answers)
  await until(() => client.state === 'online' && client.queue.pending === 0, 'online with an empty queue', 30000,
    () => JSON.stringify({ state: client.state, queue: client.queue }))
  const last = Math.max(...settled.map((r) => r.sid ?? 0))
  await until(() => client.lastSid >= last, 'the frames of the replayed queue', 10000)
  const records = await serverRecords(url, t)
  const pool = poolOf(client, t)
  emit('result', {
    state: client.state,
    pending: client.queue.pending,
    results: settled,
    pool,
    records,
    equal: sameJson(pool, records),
    offline_sid: offlineAt,
    states,
    attempts: attempts.length
  })
  client.close()
})
