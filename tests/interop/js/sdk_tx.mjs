// Scenario: one mutation request of three mutations reaches the SDK as ONE batch of
// its subscribers, on the transport asked for (ws, sse or longpoll).
//
//   node sdk_tx.mjs HTTP_URL TYPE '{"transport": "ws" | "sse" | "longpoll"}'
//
// Then the client's own batch of saves (one request, flushed together) reaches a second
// client in one batch too. Emits 'result'.
import {
  WebSocket, createFrameClient, emit, hardTimeout, parseArgs, poolOf, run, sameJson,
  serverRecords, until
} from './sdk_lib.mjs'

hardTimeout(40000, 'sdk_tx')
const { url, t, params } = parseArgs()

function client () {
  return createFrameClient({
    url,
    types: [t],
    transport: params.transport,
    WebSocket: params.transport === 'ws' ? WebSocket : null,
    indexedDB: null,
    backoff: { base: 100, cap: 500 }
  })
}

run(async () => {
  const reader = client()
  const batches = []
  reader.subscribe((frames) => batches.push(frames.map((f) => ({ sid: f.sid, id: f.id, tx: f.tx }))))
  await until(() => reader.state === 'online', 'online', 20000, () => JSON.stringify({ state: reader.state, error: reader.error }))
  const transport = reader.transport
  const response = await fetch(new URL('/sync/v1/mutations', url), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      mutations: ['a', 'b', 'c'].map((id, i) => ({ t, id, op: 'i', p: { n: i } }))
    })
  })
  const answer = await response.json()
  await until(() => reader.get(t, 'c') && reader.get(t, 'a'), 'the three records')
  // The writer's own three saves, queued together and flushed in one request.
  const writer = client()
  await until(() => writer.state === 'online', 'writer online', 20000)
  const saved = await Promise.all(['a', 'b', 'c'].map((id) => writer.save(t, id, { done: true })))
  await until(() => ['a', 'b', 'c'].every((id) => reader.get(t, id)?.fields?.done), 'the saves')
  const records = await serverRecords(url, t)
  emit('result', {
    transport,
    tx: answer.tx,
    results: answer.results,
    saved,
    batches,
    equal: sameJson(poolOf(reader, t), records)
  })
  reader.close()
  writer.close()
})
