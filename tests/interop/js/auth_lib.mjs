// Helpers for the auth scenarios: a y-websocket client that passes its token the
// way an app does, as a URL parameter (`params: {token}` -> `?token=...`).
import { WebSocket, WebsocketProvider, Y } from './lib.mjs'

/**
 * A Y.Doc connected through y-websocket with `params: {token}`. `closes` collects
 * every connection-close (code, reason, when), `terminal` the y-websocket 'closed'
 * events (a 44xx close it does not retry by itself).
 */
export function openAuthClient (base, room, token, { name = 'client', connect = true } = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(base, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    connect,
    params: { token }
  })
  const client = { name, doc, provider, closes: [], terminal: [] }
  provider.on('connection-close', (event) => {
    client.closes.push(event ? { code: event.code, reason: event.reason, at: Date.now() } : null)
  })
  provider.on('closed', (event) => {
    client.terminal.push({ code: event.code, reason: event.reason, at: Date.now() })
  })
  return client
}

/** Read stdin line by line: `next()` resolves with the next line (bounded by the caller). */
export function stdinLines () {
  const queue = []
  const waiters = []
  let buffer = ''
  process.stdin.setEncoding('utf8')
  process.stdin.on('data', (chunk) => {
    buffer += chunk
    let at
    while ((at = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, at).trim()
      buffer = buffer.slice(at + 1)
      if (waiters.length) waiters.shift()(line)
      else queue.push(line)
    }
  })
  return {
    next () {
      return queue.length ? Promise.resolve(queue.shift()) : new Promise((resolve) => waiters.push(resolve))
    }
  }
}
