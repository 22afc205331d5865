// Scenario: the SDK on Server-Sent Events when the WebSocket is unavailable.
//
//   node sdk_sse.mjs HTTP_URL TYPE '{"mode": "no_websocket" | "blocked_upgrade"}'
//
// no_websocket: no WebSocket class at all (Node 20 has no global one): SSE from the
// start. blocked_upgrade: the client goes through a real HTTP proxy (here, on
// 127.0.0.1) that forwards plain HTTP, streams included, but refuses WebSocket
// upgrades, as some corporate proxies do: after its WebSocket attempts fail the
// client falls back to SSE. Either way it must be online, receive another writer's
// frame live, and have its own save applied ('result').
import http from 'node:http'
import {
  WebSocket, createFrameClient, emit, hardTimeout, parseArgs, poolOf, recordingWebSocket, run,
  sameJson, serverRecords, until
} from './sdk_lib.mjs'

hardTimeout(40000, 'sdk_sse')
const { url, t, params } = parseArgs()

/** A proxy to `target` that refuses every WebSocket upgrade. */
function upgradeRefusingProxy (target) {
  const upstream = new URL(target)
  const refused = []
  const proxy = http.createServer((req, res) => {
    const forward = http.request({
      host: upstream.hostname,
      port: upstream.port,
      path: req.url,
      method: req.method,
      headers: { ...req.headers, host: upstream.host }
    }, (answer) => {
      res.writeHead(answer.statusCode, answer.headers)
      answer.pipe(res)
    })
    forward.on('error', () => res.destroy())
    req.pipe(forward)
    res.on('close', () => forward.destroy())
  })
  proxy.on('upgrade', (req, socket) => {
    refused.push(req.url)
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n')
  })
  return new Promise((resolve) => {
    proxy.listen(0, '127.0.0.1', () => resolve({ proxy, refused, url: `http://127.0.0.1:${proxy.address().port}` }))
  })
}

run(async () => {
  const attempts = []
  let via = url
  let proxy = null
  if (params.mode === 'blocked_upgrade') {
    proxy = await upgradeRefusingProxy(url)
    via = proxy.url
  }
  const client = createFrameClient({
    url: via,
    types: [t],
    WebSocket: params.mode === 'blocked_upgrade' ? recordingWebSocket(attempts) : null,
    indexedDB: null,
    backoff: { base: 100, cap: 500 }
  })
  const batches = []
  client.subscribe((frames) => batches.push(frames.map((f) => f.sid)))
  await until(() => client.state === 'online', 'online', 20000, () => JSON.stringify({ state: client.state, error: client.error }))
  const transport = client.transport

  // Another writer, straight to the server: its frame reaches the client live.
  const response = await fetch(new URL('/sync/v1/mutations', url), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ mutations: [{ t, id: 'other', op: 'i', p: { title: 'from another writer' } }] })
  })
  const [other] = (await response.json()).results
  await until(() => client.get(t, 'other'), 'the other writer\'s frame over SSE')
  const own = await client.insert(t, 'mine', { title: 'over SSE' })
  await until(() => client.lastSid >= own.sid, 'its own frame')
  const records = await serverRecords(url, t)
  emit('result', {
    transport,
    state: client.state,
    ws_attempts: attempts.length,
    refused_upgrades: proxy ? proxy.refused.length : 0,
    other,
    own,
    batches,
    equal: sameJson(poolOf(client, t), records),
    pool: poolOf(client, t)
  })
  client.close()
  if (proxy) proxy.proxy.close()
})
