// The feed transports behind one small interface: the frame WebSocket
// (`/sync/v1/ws`), Server-Sent Events (`/sync/v1/events`) read over fetch, and HTTP
// long-poll (`/sync/v1/delta?live=1`) for networks that pass neither. Each
// reports messages in the WebSocket's shape (an array of frames, or an object with a
// `type`) and ends with one `onClose({code, reason})`, SSE endings mapped to the
// WebSocket close code the server would have sent (see crdt_sync/sync_stream.py).

import { retryAfterMs } from './backoff.js'
import { SseParser } from './sse.js'

/**
 * @typedef {object} TransportHandlers
 * @property {() => void} onOpen
 * @property {(message: any) => void} onMessage A frames array or a `{type, ...}` object.
 * @property {(info: {expiresIn: number | null}) => void} [onKeepAlive] SSE keep-alive comment.
 * @property {(close: CloseInfo) => void} onClose Once, whatever ended it (not after `close()`).
 */

/**
 * @typedef {object} CloseInfo
 * @property {number} code WebSocket close code (SSE: the equivalent one).
 * @property {string} reason
 * @property {boolean} opened Whether the transport had opened.
 * @property {number | null} [retryAfter] ms, from a 429's Retry-After.
 * @property {any} [body] The error body of a refused SSE request.
 */

/**
 * @typedef {object} Transport
 * @property {'ws'|'sse'|'longpoll'} kind
 * @property {(message: object) => boolean} send Send a JSON message (false: not possible now).
 * @property {() => void} close Close it; no onClose follows.
 */

/**
 * The frame WebSocket. Browsers cannot set an Authorization header on a WebSocket, so
 * a token is offered as the `bearer.<token>` subprotocol next to `crdt-sync` (the
 * default: it keeps the token out of URLs), or with `tokenIn: 'query'` as `?token=`.
 * @param {{url: string | URL, token?: string | null, WebSocket: any, tokenIn?: 'subprotocol' | 'query'}} options
 * @param {TransportHandlers} handlers
 * @returns {Transport}
 */
export function openWebSocket ({ url, token, WebSocket, tokenIn = 'subprotocol' }, handlers) {
  let ws
  if (token && tokenIn === 'query') {
    const withToken = new URL(String(url))
    withToken.searchParams.set('token', token)
    ws = new WebSocket(String(withToken))
  } else {
    ws = token ? new WebSocket(String(url), ['crdt-sync', `bearer.${token}`]) : new WebSocket(String(url))
  }
  let opened = false
  let done = false
  ws.onopen = () => {
    if (done) return
    opened = true
    handlers.onOpen()
  }
  ws.onmessage = (/** @type {{data: any}} */ event) => {
    if (done) return
    let message
    try {
      message = JSON.parse(typeof event.data === 'string' ? event.data : String(event.data))
    } catch (_) {
      return // not JSON: not from this protocol
    }
    handlers.onMessage(message)
  }
  ws.onerror = () => {} // the close event that follows says how it ended
  ws.onclose = (/** @type {{code: number, reason: string}} */ event) => {
    if (done) return
    done = true
    handlers.onClose({ code: event.code, reason: event.reason || '', opened })
  }
  return {
    kind: 'ws',
    send (message) {
      if (done || ws.readyState !== 1) return false
      ws.send(JSON.stringify(message))
      return true
    },
    close () {
      if (done) return
      done = true
      ws.onopen = ws.onmessage = ws.onclose = null
      try {
        ws.close()
      } catch (_) {
        // already closing
      }
    }
  }
}

/** SSE `event: error` names mapped to the WebSocket close code the same ending gets there. */
const SSE_ERROR_CODES = {
  since_too_old: 4410,
  token_expired: 4401,
  revoked: 4401,
  forbidden: 4403,
  rate_limited: 4429
}

/**
 * Server-Sent Events over fetch: `Authorization: Bearer` and `Last-Event-ID` as headers.
 * @param {{url: string | URL, token?: string | null, fetch: typeof fetch, since?: number | null}} options
 * @param {TransportHandlers} handlers
 * @returns {Transport}
 */
export function openSse ({ url, token, fetch, since }, handlers) {
  const controller = new AbortController()
  let done = false
  let opened = false
  /** @param {CloseInfo} info */
  const finish = (info) => {
    if (done) return
    done = true
    controller.abort()
    handlers.onClose(info)
  }
  /** @type {Record<string, string>} */
  const headers = { Accept: 'text/event-stream' }
  if (token) headers.Authorization = `Bearer ${token}`
  if (since !== null && since !== undefined) headers['Last-Event-ID'] = String(since)
  ;(async () => {
    const response = await fetch(String(url), { headers, signal: controller.signal, cache: 'no-store' })
    if (!response.ok || !response.body) {
      const body = await response.json().catch(() => null)
      finish({
        code: 4000 + response.status,
        reason: (body && (body.detail || body.error)) || `HTTP ${response.status}`,
        opened: false,
        retryAfter: retryAfterMs(response.headers.get('Retry-After')),
        body
      })
      return
    }
    opened = true
    if (done) return
    handlers.onOpen()
    const parser = new SseParser()
    const decoder = new TextDecoder()
    const reader = response.body.getReader()
    /** @type {any} */
    let lastError = null
    for (;;) {
      const { value, done: ended } = await reader.read()
      if (done) return
      if (ended) break
      /** @type {any[]} */
      let frames = []
      for (const event of parser.push(decoder.decode(value, { stream: true }))) {
        if (event.comment !== undefined) {
          const match = /expires_in=(\d+)/.exec(event.comment)
          if (handlers.onKeepAlive) handlers.onKeepAlive({ expiresIn: match ? Number(match[1]) : null })
          continue
        }
        let data
        try {
          data = JSON.parse(event.data || '')
        } catch (_) {
          continue
        }
        if (event.event === 'message') {
          frames.push(data)
          continue
        }
        if (event.event === 'tx' && data && Array.isArray(data.frames)) {
          frames.push(...data.frames) // one mutation request's frames: applied together
          continue
        }
        if (frames.length) handlers.onMessage(frames) // keep the order of what came
        frames = []
        if (event.event === 'error') lastError = data
        handlers.onMessage(data)
        if (done) return
      }
      if (frames.length) handlers.onMessage(frames) // one batch per chunk read
      if (done) return
    }
    finish(closeOf(lastError, opened))
  })().catch((error) => {
    if (!done) finish({ code: 1006, reason: String(error && error.message ? error.message : error), opened })
  })
  return {
    kind: 'sse',
    send () {
      return false // one-way: no ping, no view (the server's keep-alive shows it is alive)
    },
    close () {
      if (done) return
      done = true
      controller.abort()
    }
  }
}

/**
 * The close code an SSE stream that ended after `error` (its last error event) stands for.
 * @param {any} error
 * @param {boolean} opened
 * @returns {CloseInfo}
 */
function closeOf (error, opened) {
  if (!error || typeof error.error !== 'string') return { code: 1006, reason: 'stream ended', opened }
  const closed = /^closed_(\d+)$/.exec(error.error)
  const code = closed ? Number(closed[1]) : (SSE_ERROR_CODES[/** @type {keyof SSE_ERROR_CODES} */ (error.error)] || 1006)
  return {
    code,
    reason: error.detail || error.error,
    opened,
    retryAfter: typeof error.retry_after === 'number' ? error.retry_after * 1000 : null,
    body: error
  }
}

/**
 * HTTP long-poll: `GET /sync/v1/delta?since=&live=1&timeout_ms=` again and again, each
 * page one message (a mutation request's frames are never split across pages). Opens
 * with the first answer; ends like SSE (an HTTP refusal as `4000 + status`, a 410 as
 * 4410 with its reset body). One-way, as SSE: mutations go over HTTP anyway.
 * @param {{url: string | URL, token?: string | null, fetch: typeof fetch, since: number, t?: string | null, timeoutMs?: number}} options
 * @param {TransportHandlers} handlers
 * @returns {Transport}
 */
export function openLongPoll ({ url, token, fetch, since, t, timeoutMs = 20000 }, handlers) {
  const controller = new AbortController()
  let done = false
  let opened = false
  let cursor = since
  /** @param {CloseInfo} info */
  const finish = (info) => {
    if (done) return
    done = true
    controller.abort()
    handlers.onClose(info)
  }
  /** @type {Record<string, string>} */
  const headers = { Accept: 'application/json' }
  if (token) headers.Authorization = `Bearer ${token}`
  ;(async () => {
    while (!done) {
      // The first poll answers at once: the transport is open as soon as the server is.
      const wait = opened ? timeoutMs : 0
      const query = new URLSearchParams({ since: String(cursor), live: '1', timeout_ms: String(wait), limit: '1000' })
      if (t) query.set('t', t)
      const target = new URL(String(url))
      target.search = String(query)
      const response = await fetch(String(target), { headers, signal: controller.signal, cache: 'no-store' })
      const body = await response.json().catch(() => null)
      if (done) return
      if (!response.ok || !body) {
        const code = response.status === 410 ? 4410 : 4000 + response.status
        finish({
          code,
          reason: (body && (body.detail || body.error)) || `HTTP ${response.status}`,
          opened,
          retryAfter: retryAfterMs(response.headers.get('Retry-After')),
          body
        })
        return
      }
      if (!opened) {
        opened = true
        handlers.onOpen()
        if (done) return
      }
      if (handlers.onKeepAlive) handlers.onKeepAlive({ expiresIn: null })
      if (Array.isArray(body.frames) && body.frames.length) handlers.onMessage(body.frames)
      if (typeof body.next === 'number' && body.next > cursor) cursor = body.next
    }
  })().catch((error) => {
    if (!done) finish({ code: 1006, reason: String(error && error.message ? error.message : error), opened })
  })
  return {
    kind: 'longpoll',
    send () {
      return false
    },
    close () {
      if (done) return
      done = true
      controller.abort()
    }
  }
}
