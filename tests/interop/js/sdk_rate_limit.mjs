// Scenario: the server rate-limits the client's messages (its pings): an `error`
// `rate_limited` with `retry_after`, then close 4429. The client must wait at least
// `retry_after` before its next attempt (the floor of its backoff), then come back.
//
//   node sdk_rate_limit.mjs HTTP_URL TYPE
import {
  WebSocket, createFrameClient, emit, hardTimeout, parseArgs, recordingFetch, run, until
} from './sdk_lib.mjs'

hardTimeout(40000, 'sdk_rate_limit')
const { url, t } = parseArgs()

run(async () => {
  const attempts = []
  const errors = []
  const client = createFrameClient({
    url,
    types: [t],
    WebSocket,
    fetch: recordingFetch(attempts),
    indexedDB: null,
    pingInterval: 100, // far more messages than the server allows
    pingTimeout: 5000,
    backoff: { base: 50, cap: 100 }, // the floor, not the backoff, must set the wait
    onError: (error) => errors.push({ ...error, at: Date.now() })
  })
  await until(() => errors.some((e) => e.code === 4429), 'the 4429', 20000)
  const limited = errors.find((e) => e.code === 4429)
  await until(() => attempts.some((at) => at >= limited.at), 'the next attempt', 20000)
  const next = attempts.find((at) => at >= limited.at)
  await until(() => client.state === 'online', 'online again', 20000)
  emit('result', { limited, waited_ms: next - limited.at, last_error: client.error })
  client.close()
})
