// Scenario: the close codes of auth. Tokens come from the test (it has the secret).
//
//   node sdk_auth.mjs HTTP_URL TYPE '{"case": "...", "token": "...", "fresh": ["..."]}'
//
// expiry: the token expires mid-session; the server closes 4401; the client asks
//   getToken (which answers the next of `fresh`) and comes back online with its pool.
// bad_token: the first token is refused (HTTP 401 on the bootstrap): getToken is asked.
// forbidden: getToken answers another actor's token; the client renews in band, the
//   server closes 4403; the client stops: offline, the error exposed, no reconnect.
// read_only: a token that may read but not write: the feed stays online, a save is
//   refused (HTTP 403) and stays queued (and shown), the queue `blocked`.
import {
  WebSocket, createFrameClient, emit, hardTimeout, parseArgs, poolOf, recordingWebSocket, run,
  sameJson, serverRecords, until
} from './sdk_lib.mjs'

hardTimeout(40000, 'sdk_auth')
const { url, t, params } = parseArgs()

run(async () => {
  const asked = []
  const states = []
  const attempts = []
  const fresh = [...(params.fresh || [])]
  const client = createFrameClient({
    url,
    token: params.token,
    types: [t],
    WebSocket: recordingWebSocket(attempts),
    indexedDB: null,
    pingInterval: 300,
    pingTimeout: 5000,
    // forbidden: renew at the first pong; otherwise never in band (4401 is the subject).
    renewBefore: params.case === 'forbidden' ? 1e9 : -1,
    backoff: { base: 100, cap: 500 },
    getToken: ({ reason, code }) => {
      asked.push({ reason, code, at: Date.now() })
      return fresh.shift() || null
    }
  })
  client.onStateChange((state, error) => states.push({ state, code: error ? error.code : null }))

  if (params.case === 'forbidden') {
    await until(() => client.error && client.error.fatal, 'the client to stop', 20000)
    const count = attempts.length
    // Stopped means stopped: no attempt in several of its backoff ceilings.
    await new Promise((resolve) => setTimeout(resolve, 1500))
    emit('result', { state: client.state, error: client.error, asked, states, attempts: count, attempts_later: attempts.length })
    client.close()
    return
  }

  await until(() => client.state === 'online', 'online', 20000, () => JSON.stringify(client.error))
  if (params.case === 'read_only') {
    client.insert(t, 'x', { n: 1 })
    await until(() => client.queue.state === 'blocked', 'the queue to be blocked', 20000)
    emit('result', { state: client.state, queue: client.queue, pool: poolOf(client, t), asked, error: client.error })
    client.close()
    return
  }
  const before = await client.insert(t, 'x', { n: 1 })
  emit('online', { asked: asked.length, sid: before.sid })
  if (params.case === 'expiry') {
    await until(() => asked.length > 0, 'getToken to be asked at expiry', 20000)
    await until(() => client.state === 'online', 'online with the fresh token', 20000)
  }
  const after = await client.save(t, 'x', { n: 2 })
  await until(() => client.lastSid >= after.sid, 'the save\'s frame')
  const records = await serverRecords(url, t, params.read_token)
  emit('result', { state: client.state, asked, states, before, after, equal: sameJson(poolOf(client, t), records), pool: poolOf(client, t) })
  client.close()
})
