// Scenario: many SDK clients lose the server at the same instant and reconnect.
//
//   node sdk_spread.mjs HTTP_URL TYPE '{"clients": 100, "base": 1000, "cap": 8000}'
//
// All clients are online ('ready'); the test stops the server, which closes every
// feed at once. Each client records when it noticed (its state left `online`) and
// when each of its reconnect attempts started (its catch-up request, the first of
// each). Once all are offline ('all_offline')
// the test restarts the server and says so on stdin ('restarted <epoch ms>'); the
// clients come back and a record inserted by one of them reaches all ('result').
import {
  WebSocket, command, createFrameClient, emit, hardTimeout, parseArgs, poolOf, recordingFetch, run,
  sameJson, serverRecords, until
} from './sdk_lib.mjs'

hardTimeout(90000, 'sdk_spread')
const { url, t, params } = parseArgs()
const count = params.clients ?? 100

run(async () => {
  const clients = []
  for (let i = 0; i < count; i++) {
    const attempts = []
    const entry = { attempts, droppedAt: null, onlineAt: [] }
    entry.client = createFrameClient({
      url,
      types: [t],
      WebSocket,
      fetch: recordingFetch(attempts),
      indexedDB: null,
      clientId: `spread-${i}`,
      // The heartbeat is not what this measures: long enough never to fire here.
      pingInterval: 60000,
      pingTimeout: 120000,
      backoff: { base: params.base ?? 1000, cap: params.cap ?? 8000 }
    })
    entry.client.onStateChange((state) => {
      if (state !== 'online' && entry.droppedAt === null && entry.readyAt) entry.droppedAt = Date.now()
      if (state === 'online' && entry.droppedAt !== null) entry.onlineAt.push(Date.now())
    })
    clients.push(entry)
  }
  await until(() => clients.every((c) => c.client.state === 'online'), 'every client online', 30000,
    () => `${clients.filter((c) => c.client.state === 'online').length}/${count}`)
  const readyAt = Date.now()
  for (const c of clients) {
    c.readyAt = readyAt
    c.attemptsBefore = c.attempts.length
  }
  emit('ready', { clients: count })

  await until(() => clients.every((c) => c.droppedAt !== null), 'every client to notice', 20000)
  emit('all_offline')
  const restartedAt = Number(await command('restarted', 30000))
  await until(() => clients.every((c) => c.client.state === 'online'), 'every client back online', 60000,
    () => `${clients.filter((c) => c.client.state === 'online').length}/${count}`)

  const writer = clients[0].client
  const answer = await writer.insert(t, 'after-restart', { title: 'seen by all' })
  await until(() => clients.every((c) => c.client.lastSid >= answer.sid), 'the insert to reach every client', 20000)
  const records = await serverRecords(url, t)
  emit('result', {
    clients: clients.map((c) => ({
      dropped_at: c.droppedAt,
      attempts: c.attempts.slice(c.attemptsBefore),
      // The first time online since the restart (a reconnect may reach the old
      // server while it shuts down, which closes it again at once).
      online_again_at: c.onlineAt.filter((at) => at >= restartedAt).concat([null])[0]
    })),
    restarted_at: restartedAt,
    pools_equal: clients.every((c) => sameJson(poolOf(c.client, t), records)),
    answer
  })
  for (const c of clients) c.client.close()
})
