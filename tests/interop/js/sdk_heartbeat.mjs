// Scenario: the server freezes (SIGSTOP): no close, no error, the TCP connection
// stays open. Only the heartbeat can tell, within its (test-configured) timeout.
//
//   node sdk_heartbeat.mjs HTTP_URL TYPE '{"ping_interval": 300, "ping_timeout": 1500}'
//
// 'ready' once online; the test freezes the server and says 'stopped <epoch ms>';
// 'dead' when the client gave the connection up (with the errors it reported); the
// client saves while the server is frozen; the test thaws it ('resumed'); 'result'
// once the client is online again with the save applied.
import {
  command, createFrameClient, emit, hardTimeout, parseArgs, poolOf, run, sameJson,
  serverRecords, until
} from './sdk_lib.mjs'
import WebSocket from 'ws'

hardTimeout(60000, 'sdk_heartbeat')
const { url, t, params } = parseArgs()

run(async () => {
  const errors = []
  const client = createFrameClient({
    url,
    types: [t],
    WebSocket,
    indexedDB: null,
    pingInterval: params.ping_interval,
    pingTimeout: params.ping_timeout,
    backoff: { base: 200, cap: 1000 },
    onError: (error) => errors.push({ ...error, at: Date.now() })
  })
  await until(() => client.state === 'online', 'online')
  await client.insert(t, 'hb', { status: 'open' })
  emit('ready', { at: Date.now() })
  const stoppedAt = Number(await command('stopped'))
  await until(() => client.state !== 'online', 'the heartbeat to give the connection up', 30000)
  const deadAt = Date.now()
  const answer = client.save(t, 'hb', { status: 'done' })
  emit('dead', { at: deadAt, stopped_at: stoppedAt, errors: errors.filter((e) => e.at >= stoppedAt) })
  await command('resumed')
  const result = await answer
  await until(() => client.state === 'online' && client.lastSid >= result.sid, 'online again with the save', 30000)
  const records = await serverRecords(url, t)
  emit('result', { state: client.state, result, equal: sameJson(poolOf(client, t), records), pool: poolOf(client, t) })
  client.close()
})
