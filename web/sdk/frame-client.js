// createFrameClient: the sync loop of a non-CRDT client, so that no app writes it again.
//
// - a local pool of current records, bootstrapped from `/sync/v1/records` and kept
//   current by the frame feed (WebSocket, falling back to SSE), each frame applied once
//   in sid order and handed to `subscribe` listeners in batches;
// - `save`/`insert`/`remove` applied to the pool at once and sent as mutations with a
//   generated `client_tx_id`, kept in an offline queue (IndexedDB where there is one)
//   and replayed in order: the server applies each exactly once;
// - reconnects with capped exponential backoff and full jitter (reset after a stable
//   connection), the feed resumed with `since` = the newest sid applied (the server
//   sends what was missed first: that is the catch-up), close codes honoured;
// - a ping every 15 s, a connection silent for 30 s is dead.

import { Backoff, retryAfterMs } from './backoff.js'
import { openQueue } from './offline-queue.js'
import { keyOf, Pool } from './pool.js'
import { openLongPoll, openSse, openWebSocket } from './transport.js'

/** @typedef {import('./pool.js').Frame} Frame */
/** @typedef {import('./pool.js').PoolRecord} PoolRecord */
/** @typedef {import('./offline-queue.js').QueuedMutation} QueuedMutation */
/** @typedef {import('./offline-queue.js').Queue} Queue */
/** @typedef {import('./transport.js').CloseInfo} CloseInfo */

/** @typedef {'offline' | 'syncing' | 'online'} ConnectionState */

/**
 * Why the client stopped, or what went wrong last.
 * @typedef {object} ClientError
 * @property {number} code A WebSocket close code, or 4000 + an HTTP status.
 * @property {string} error A short machine reason (`forbidden`, `token_expired`, ...).
 * @property {string} detail For a person.
 * @property {boolean} fatal The client stopped (until `setToken` or `reconnect`).
 * @property {number} [retryAfter] ms the server asked to wait (4429, 429).
 */

/**
 * The server's answer to one mutation (`POST /sync/v1/mutations`, one `results` entry).
 * @typedef {object} MutationResult
 * @property {number} status 200 / 201 applied; 4xx refused.
 * @property {string} [client_tx_id]
 * @property {number} [sid] The sid of the mutation's frame.
 * @property {string[]} [conflicts] Fields it overwrote that another writer set since `base_sid`.
 * @property {Record<string, {value: unknown, who: string | null, sid: number | null}>} [overwritten]
 * @property {boolean} [replayed] The server had applied it already (an idempotent replay).
 * @property {string} [error]
 * @property {string} [detail]
 */

/**
 * The state of the offline queue.
 * @typedef {object} QueueInfo
 * @property {number} pending Mutations not yet acknowledged.
 * @property {'idle' | 'sending' | 'offline' | 'blocked'} state `sending`: a request is
 *   in flight; `offline`: the last attempt failed, a retry is scheduled (or in flight);
 *   `blocked`: waiting for a token.
 * @property {'indexeddb' | 'memory' | 'loading'} storage
 * @property {ClientError | null} error Why it is blocked.
 */

/**
 * @typedef {object} FrameClientOptions
 * @property {string | URL} url The server's base URL (`http://host:port`, or with a path
 *   prefix): endpoints are `<url>/sync/v1/...`.
 * @property {string | null} [token] Access token (Bearer on HTTP, subprotocol on the WebSocket).
 * @property {string[] | string | null} [types] Record types to keep (default: all). One
 *   type is also filtered by the server (`?t=`).
 * @property {(info: {reason: string, code: number}) => (string | null | undefined | Promise<string | null | undefined>)} [getToken]
 *   Asked for a fresh token when the server says 4401 (or HTTP 401), and before the
 *   current one expires (then renewed in band). No answer (null): the client stops
 *   (state `offline`, `error` set) until `setToken()`.
 * @property {any} [WebSocket] WebSocket class (default `globalThis.WebSocket`; Node 20:
 *   pass the `ws` package). None: SSE only.
 * @property {typeof fetch} [fetch] Default `globalThis.fetch`.
 * @property {IDBFactory | null} [indexedDB] Default `globalThis.indexedDB`; null: queue in memory.
 * @property {'auto' | 'ws' | 'sse' | 'longpoll'} [transport] `auto` (default): WebSocket, SSE
 *   when there is no WebSocket or it fails `wsFailuresBeforeSse` times in a row without
 *   opening. `longpoll`: HTTP long-poll of `/sync/v1/delta?live=1` only (networks that pass
 *   neither WebSockets nor streaming responses; no presence views over it).
 * @property {number} [wsFailuresBeforeSse=2]
 * @property {'subprotocol' | 'query'} [wsTokenIn='subprotocol'] How the WebSocket carries the
 *   token: the `bearer.<token>` subprotocol, or `?token=` in its URL.
 * @property {string} [clientId] Sent as `client_id` with mutations (default: random).
 * @property {string | ((identity: string) => string)} [queueName] The offline queue's
 *   name (default `crdt-sync.queue:<org/sub of the token>`: one queue per identity, so a
 *   change queued under one token is never sent with another's).
 * @property {number} [pingInterval=15000] ms between pings.
 * @property {number} [pingTimeout=30000] ms without any message: the connection is dead.
 * @property {{base?: number, cap?: number, stableAfter?: number, random?: () => number}} [backoff]
 *   Reconnect delays in ms (defaults 500 / 30000 / 10000).
 * @property {number} [pageLimit=100] Records per bootstrap request.
 * @property {number} [batchSize=100] Mutations per POST.
 * @property {number} [renewBefore] Seconds before expiry to renew in band (default
 *   2 × pingInterval).
 * @property {(error: ClientError) => void} [onError] Every error (also those retried).
 */

/**
 * @typedef {object} FrameClient
 * @property {Map<string, Map<string, PoolRecord>>} pool t -> id -> record: the confirmed
 *   records with this client's unacknowledged changes on top (a record deleted locally
 *   is absent). Live: the same Map objects are updated in place.
 * @property {ConnectionState} state
 * @property {ClientError | null} error
 * @property {number} lastSid The newest sid applied.
 * @property {boolean} bootstrapped The pool was loaded since the last reset.
 * @property {'ws' | 'sse' | 'longpoll' | null} transport The transport of the current connection.
 * @property {QueueInfo} queue
 * @property {string} clientId
 * @property {(cb: (frames: Frame[]) => void) => () => void} subscribe Batches of accepted
 *   frames, in sid order, each frame once. Returns unsubscribe.
 * @property {(cb: (change: {keys: Set<string>, reset: boolean}) => void) => () => void} onChange
 *   The pool changed (frames, a local change, an answer, a bootstrap).
 * @property {(cb: (state: ConnectionState, error: ClientError | null) => void) => () => void} onStateChange
 * @property {(cb: (t: string, id: string, fields: Record<string, {value: unknown, who: string | null, sid: number | null}>, detail: {result: MutationResult, mutation: QueuedMutation}) => void) => () => void} onConflict
 * @property {(cb: (mutation: QueuedMutation, result: MutationResult) => void) => () => void} onReject
 *   A mutation the server refused (its local change is undone).
 * @property {(cb: (info: QueueInfo) => void) => () => void} onQueueChange
 * @property {(cb: (message: any) => void) => () => void} onPresence `{type: "presence", t, id, present}`.
 * @property {(t: string, id: string, fields: Record<string, unknown>) => Promise<MutationResult>} save
 * @property {(t: string, id: string, fields: Record<string, unknown>) => Promise<MutationResult>} insert
 * @property {(t: string, id: string) => Promise<MutationResult>} remove
 * @property {(t: string, id: string) => PoolRecord | undefined} get
 * @property {(t: string, id: string) => {t: string, id: string, fields: Record<string, unknown>, sid: number} | undefined} confirmed
 * @property {() => QueuedMutation[]} pending
 * @property {() => Promise<number>} catchUp
 * @property {() => Promise<void>} flush
 * @property {(token: string | null) => void} setToken
 * @property {() => void} reconnect
 * @property {(t: string, id: string, state?: object) => void} view
 * @property {(t: string, id: string) => void} watch
 * @property {(t: string, id: string) => void} leave
 * @property {() => Promise<void>} whenIdle
 * @property {() => void} close
 */

/** Close codes after which the client does not reconnect by itself. */
const STOP_CODES = new Set([4400, 4403, 4404])

/**
 * Create a client of the SyncFrame feed. It connects at once.
 * @param {FrameClientOptions} options
 * @returns {FrameClient}
 */
export function createFrameClient (options) {
  return new FrameClientImpl(options)
}

class HttpError extends Error {
  /** @param {number} status @param {any} body @param {number | null} retryAfter */
  constructor (status, body, retryAfter = null) {
    super((body && (body.detail || body.error)) || `HTTP ${status}`)
    this.status = status
    this.body = body
    this.retryAfter = retryAfter
  }
}

/**
 * `org/sub` of a JWT's payload (display and queue names only: the server decides who a
 * token is); `open` without a token, `token` for one that is not a readable JWT.
 * @param {string | null | undefined} token
 * @returns {string}
 */
export function tokenIdentity (token) {
  if (!token) return 'open'
  try {
    const payload = token.split('.')[1]
    const b64 = payload.replace(/-/g, '+').replace(/_/g, '/')
    const json = typeof atob === 'function' ? atob(b64) : Buffer.from(b64, 'base64').toString('binary')
    const claims = JSON.parse(json)
    if (typeof claims.sub === 'string') return `${claims.org ?? 'default'}/${claims.sub}`
  } catch (_) {}
  return 'token'
}

/** `n` random base-36 characters. @param {number} n */
function randomId (n) {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(n))
  return Array.from(bytes, (b) => (b % 36).toString(36)).join('')
}

/** @template T @param {Set<T>} set @param {T} item */
function adder (set, item) {
  set.add(item)
  return () => { set.delete(item) }
}

class FrameClientImpl {
  /** @param {FrameClientOptions} options */
  constructor (options) {
    if (!options || !options.url) throw new TypeError('createFrameClient needs {url}')
    const o = options
    const base = String(o.url)
    // A relative url (in a page: '/', '..') is the page's server; a bad one throws now.
    const page = globalThis.location ? globalThis.location.href : undefined
    this._base = new URL(base.endsWith('/') ? base : base + '/', page).href
    this._token = o.token || null
    const types = typeof o.types === 'string' ? [o.types] : o.types
    this._types = types && types.length ? [...types] : null
    this._getToken = o.getToken || null
    this._WebSocket = o.WebSocket !== undefined ? o.WebSocket : globalThis.WebSocket
    if (!o.fetch && typeof globalThis.fetch !== 'function') throw new TypeError('createFrameClient needs a fetch (option or globalThis.fetch)')
    this._fetch = o.fetch || globalThis.fetch.bind(globalThis)
    this._indexedDB = o.indexedDB
    this._transportMode = o.transport || 'auto'
    this._wsFailuresBeforeSse = o.wsFailuresBeforeSse ?? 2
    this._wsTokenIn = o.wsTokenIn || 'subprotocol'
    this.clientId = o.clientId || `sdk-${randomId(12)}`
    this._queueName = o.queueName || ((/** @type {string} */ identity) => `crdt-sync.queue:${identity}`)
    this._pingInterval = o.pingInterval ?? 15000
    this._pingTimeout = o.pingTimeout ?? 30000
    this._tickMs = Math.max(20, Math.min(1000, this._pingInterval / 4, this._pingTimeout / 8))
    this._backoff = new Backoff(o.backoff)
    this._flushBackoff = new Backoff(o.backoff)
    this._pageLimit = o.pageLimit ?? 100
    this._batchSize = o.batchSize ?? 100
    this._renewBefore = o.renewBefore ?? (2 * this._pingInterval) / 1000
    this._onErrorOption = o.onError || null

    this._pool = new Pool(this._types)
    this.pool = this._pool.records
    /** @type {ConnectionState} */
    this.state = 'offline'
    /** @type {ClientError | null} */
    this.error = null
    this.bootstrapped = false
    this._needBootstrap = true
    this._closed = false
    this._stopped = false
    this._wsFailures = 0
    this._connecting = false
    /** @type {import('./transport.js').Transport | null} */
    this._conn = null
    /** @type {any} */
    this._timers = { reconnect: null, tick: null, flush: null }
    this._lastError = null
    this._txCounter = 0
    this._seq = 0
    /** @type {Map<string, {t: string, id: string, state?: object, kind: 'view' | 'watch'}>} */
    this._views = new Map()
    /** @type {Map<string, (result: MutationResult) => void>} */
    this._waiters = new Map()
    this._flushing = false
    /** @type {QueueInfo['state']} */
    this._queueState = 'idle'
    this._renewing = false
    /** @type {Promise<void> | null} */
    this._tokenAsk = null
    /** @type {ClientError | null} */
    this._queueError = null
    this._generation = 0

    this._listeners = {
      frames: new Set(),
      change: new Set(),
      state: new Set(),
      conflict: new Set(),
      reject: new Set(),
      queue: new Set(),
      presence: new Set()
    }
    this._persist = Promise.resolve()
    this._openQueue()
    // Next microtask: listeners added right after createFrameClient() see `syncing`.
    queueMicrotask(() => this._connect())
  }

  // ---- public -------------------------------------------------------------------

  get lastSid () { return this._pool.lastSid }
  get transport () { return this._conn ? this._conn.kind : null }

  /** @returns {QueueInfo} */
  get queue () {
    return {
      pending: this._pool.queued.length,
      state: this._queueState,
      storage: this._store ? this._store.kind : 'loading',
      error: this._queueState === 'blocked' ? this._queueError : null
    }
  }

  /** @param {(frames: Frame[]) => void} cb */
  subscribe (cb) { return adder(this._listeners.frames, cb) }
  /** @param {(change: {keys: Set<string>, reset: boolean}) => void} cb */
  onChange (cb) { return adder(this._listeners.change, cb) }
  /** @param {(state: ConnectionState, error: ClientError | null) => void} cb */
  onStateChange (cb) { return adder(this._listeners.state, cb) }
  /** @param {(t: string, id: string, fields: any, detail: any) => void} cb */
  onConflict (cb) { return adder(this._listeners.conflict, cb) }
  /** @param {(mutation: QueuedMutation, result: MutationResult) => void} cb */
  onReject (cb) { return adder(this._listeners.reject, cb) }
  /** @param {(info: QueueInfo) => void} cb */
  onQueueChange (cb) { return adder(this._listeners.queue, cb) }
  /** @param {(message: any) => void} cb */
  onPresence (cb) { return adder(this._listeners.presence, cb) }

  /** @param {string} t @param {string} id */
  get (t, id) { return this.pool.get(t)?.get(id) }
  /** @param {string} t @param {string} id */
  confirmed (t, id) { return this._pool.confirmedRecord(t, id) }
  pending () { return this._pool.queued.map((m) => ({ ...m, p: { ...m.p } })) }

  /** Update fields of a record (null removes a field). @param {string} t @param {string} id @param {Record<string, unknown>} fields */
  save (t, id, fields) { return this._mutate('u', t, id, fields) }
  /** Create a record. @param {string} t @param {string} id @param {Record<string, unknown>} fields */
  insert (t, id, fields) { return this._mutate('i', t, id, fields) }
  /** Delete a record. @param {string} t @param {string} id */
  remove (t, id) { return this._mutate('d', t, id, {}) }

  /**
   * Catch up over HTTP now (`GET /sync/v1/delta?since=`), page by page; a log trimmed
   * past `lastSid` (410) bootstraps the pool again. Returns the frames applied.
   * @returns {Promise<number>}
   */
  async catchUp () {
    let applied = 0
    for (let page = 0; page < 10000; page++) {
      const query = new URLSearchParams({ since: String(this._pool.lastSid), limit: '1000' })
      if (this._types && this._types.length === 1) query.set('t', this._types[0])
      let body
      try {
        body = await this._getJson('delta?' + query)
      } catch (error) {
        if (error instanceof HttpError && error.status === 410) {
          await this._bootstrap()
          return applied
        }
        throw error
      }
      const { accepted } = this._applyFrames(body.frames || [])
      applied += accepted.length
      if (typeof body.next === 'number' && body.next > this._pool.lastSid) this._pool.lastSid = body.next
      if (!body.more) break
    }
    return applied
  }

  /** Send the queue now (a retry button; also after it was blocked by a 401/403). */
  flush () {
    if (this._queueState === 'blocked') {
      this._queueState = 'idle'
      this._queueError = null
    }
    this._flushBackoff.reset()
    clearTimeout(this._timers.flush)
    return this._flush()
  }

  /**
   * A new token: reconnect with it and clear the pool (another grant may see other
   * records); the offline queue becomes the new identity's.
   * @param {string | null} token
   */
  setToken (token) {
    const value = token || null
    const sameIdentity = tokenIdentity(value) === tokenIdentity(this._token)
    this._token = value
    this._restart(!sameIdentity)
  }

  /** Drop the connection and connect again now (also after a stop). */
  reconnect () {
    this._stopped = false
    this._backoff.reset()
    if (this._conn) this._dropConnection({ code: 4000, reason: 'reconnect asked', opened: true })
    else this._connect()
  }

  /** Appear in a record's presence (re-sent after every reconnect). @param {string} t @param {string} id @param {object} [state] */
  view (t, id, state = {}) {
    this._views.set(keyOf(t, id), { t, id, state, kind: 'view' })
    this._send({ type: 'view', t, id, state })
  }

  /** Receive a record's presence only. @param {string} t @param {string} id */
  watch (t, id) {
    this._views.set(keyOf(t, id), { t, id, kind: 'watch' })
    this._send({ type: 'watch', t, id })
  }

  /** @param {string} t @param {string} id */
  leave (t, id) {
    if (this._views.delete(keyOf(t, id))) this._send({ type: 'leave', t, id })
  }

  /** Resolves once the queue is empty (or the client stopped / closed). */
  async whenIdle () {
    for (let i = 0; i < 1e6 && this._pool.queued.length && !this._closed && !this._stopped; i++) {
      await new Promise((resolve) => {
        const off = this.onQueueChange(() => { off(); resolve(undefined) })
      })
    }
    await this._persist
  }

  /** Close the connection and stop every timer. The queue stays stored. */
  close () {
    if (this._closed) return
    this._closed = true
    this._generation++
    for (const timer of Object.values(this._timers)) { clearTimeout(timer); clearInterval(timer) }
    if (this._conn) this._conn.close()
    this._conn = null
    this._setState('offline')
    if (this._store) this._store.close()
  }

  // ---- the connection loop --------------------------------------------------------

  async _connect () {
    clearTimeout(this._timers.reconnect)
    if (this._closed || this._stopped || this._connecting || this._conn) return
    this._connecting = true
    const generation = this._generation
    this._setState('syncing')
    const what = this._needBootstrap ? 'bootstrap' : 'catch-up'
    try {
      // Catch up over HTTP first: the pool is current before the feed opens, and a
      // server that answers HTTP but refuses the WebSocket (a proxy) is told apart
      // from one that is down (only the former counts towards the SSE fallback).
      if (this._needBootstrap) await this._bootstrap()
      else await this.catchUp()
    } catch (error) {
      this._connecting = false
      if (generation !== this._generation) return
      this._httpFailed(error, what)
      return
    }
    this._connecting = false
    if (generation !== this._generation || this._closed || this._stopped) return
    this._openTransport()
  }

  _openTransport () {
    const longPoll = this._transportMode === 'longpoll'
    const useWs = !longPoll && this._WebSocket && this._transportMode !== 'sse' &&
      (this._transportMode === 'ws' || this._wsFailures < this._wsFailuresBeforeSse)
    const query = new URLSearchParams({ since: String(this._pool.lastSid) })
    if (this._types && this._types.length === 1) query.set('t', this._types[0])
    const now = Date.now()
    const live = { lastMessage: now, lastPing: now, lastTick: now }
    /** @type {import('./transport.js').TransportHandlers} */
    const handlers = {
      onOpen: () => {
        live.lastMessage = live.lastPing = Date.now()
        if (conn.kind === 'ws') this._wsFailures = 0
        this._backoff.connected()
        this.error = null
        this._setState('online')
        for (const v of this._views.values()) {
          this._send(v.kind === 'view' ? { type: 'view', t: v.t, id: v.id, state: v.state } : { type: 'watch', t: v.t, id: v.id })
        }
        this._flushBackoff.reset()
        this._flush()
      },
      onMessage: (message) => {
        live.lastMessage = Date.now()
        this._onMessage(message)
      },
      onKeepAlive: ({ expiresIn }) => {
        live.lastMessage = Date.now()
        this._maybeRenew(expiresIn)
      },
      onClose: (info) => {
        if (this._conn !== conn) return
        this._dropConnection(info)
      }
    }
    this._lastError = null
    let conn
    try {
      if (useWs) {
        const url = this._endpoint('ws?' + query)
        url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
        conn = openWebSocket({ url, token: this._token, WebSocket: this._WebSocket, tokenIn: this._wsTokenIn }, handlers)
      } else if (longPoll) {
        // Answered well inside the heartbeat timeout, so a held poll is never silence.
        const timeoutMs = Math.max(1000, Math.min(20000, this._pingTimeout - 5000))
        const t = this._types && this._types.length === 1 ? this._types[0] : null
        conn = openLongPoll({ url: this._endpoint('delta'), token: this._token, fetch: this._fetch, since: this._pool.lastSid, t, timeoutMs }, handlers)
      } else {
        conn = openSse({ url: this._endpoint('events?' + query), token: this._token, fetch: this._fetch }, handlers)
      }
    } catch (error) {
      // A WebSocket constructor that throws (a blocked scheme, a bad subprotocol): as
      // if it had failed to open.
      this._report({ code: 1006, error: 'transport_failed', detail: String(error), fatal: false })
      if (useWs) this._wsFailures++
      this._setState('offline')
      this._scheduleReconnect(this._backoff.nextDelay())
      return
    }
    this._conn = conn
    clearInterval(this._timers.tick)
    this._timers.tick = setInterval(() => this._tick(conn, live), this._tickMs)
  }

  /**
   * @param {import('./transport.js').Transport} conn
   * @param {{lastMessage: number, lastPing: number, lastTick: number}} live
   */
  _tick (conn, live) {
    if (this._conn !== conn) return
    const now = Date.now()
    if (now - live.lastTick > Math.max(5 * this._tickMs, 5000)) {
      // This timer was throttled (a background tab, a suspended laptop): the silence
      // may be ours. Ping now and judge the connection by whether that is answered.
      live.lastMessage = Math.max(live.lastMessage, now - this._pingInterval)
      live.lastPing = 0
    }
    live.lastTick = now
    if (now - live.lastMessage >= this._pingTimeout) {
      this._report({ code: 4408, error: 'timeout', detail: `no message for ${this._pingTimeout} ms`, fatal: false })
      this._dropConnection({ code: 4408, reason: 'heartbeat timeout', opened: true })
      return
    }
    if (conn.kind === 'ws' && now - live.lastPing >= this._pingInterval) {
      if (conn.send({ type: 'ping' })) live.lastPing = now
    }
  }

  /** @param {any} message */
  _onMessage (message) {
    if (Array.isArray(message)) {
      this._applyFrames(message)
      return
    }
    if (!message || typeof message !== 'object') return
    if (message.type === 'pong') {
      this._maybeRenew(message.expires_in)
    } else if (message.type === 'presence') {
      this._emit('presence', message)
    } else if (message.type === 'auth') {
      this._renewing = false
    } else if (message.type === 'error') {
      this._lastError = message
      if (message.error === 'since_too_old') this._needBootstrap = true
      else if (!['forbidden', 'not_found', 'view_failed'].includes(message.error) || message.t === undefined) {
        this._report({ code: 0, error: message.error, detail: message.detail || '', fatal: false })
      }
    }
  }

  /**
   * The connection ended (closed by the server, failed, or found dead): decide when
   * and how to come back.
   * @param {CloseInfo} info
   */
  _dropConnection (info) {
    const conn = this._conn
    if (!conn) return
    this._conn = null
    clearInterval(this._timers.tick)
    conn.close()
    this._backoff.disconnected()
    if (this._closed) return
    if (conn.kind === 'ws' && !info.opened) {
      this._wsFailures++
    } else if (conn.kind === 'sse') {
      // SSE failed too (the server is down, not only its WebSocket): try WS first
      // again; SSE that worked: give the WebSocket one more chance next time.
      this._wsFailures = info.opened ? Math.max(0, this._wsFailuresBeforeSse - 1) : 0
    }
    const error = this._lastError && typeof this._lastError.error === 'string' ? this._lastError : (info.body || null)
    const code = info.code
    const detail = (error && error.detail) || info.reason || `closed ${code}`
    if (code === 4401) {
      this._setState('offline')
      this._askToken({ code, error: (error && error.error) || 'unauthorized', detail, fatal: false })
      return
    }
    if (STOP_CODES.has(code)) {
      this._stop({ code, error: (error && error.error) || 'refused', detail, fatal: true })
      return
    }
    if (code === 4410) {
      this._needBootstrap = true
      this._setState('offline')
      this._scheduleReconnect(0)
      return
    }
    let atLeast = 0
    if (code === 4429) {
      const seconds = error && typeof error.retry_after === 'number' ? error.retry_after * 1000 : null
      atLeast = info.retryAfter ?? seconds ?? this._backoff.base
    }
    if (code >= 4000 && code !== 4000) {
      /** @type {ClientError} */
      const report = { code, error: (error && error.error) || `closed_${code}`, detail, fatal: false }
      if (atLeast) report.retryAfter = atLeast
      this._report(report)
    }
    this._setState('offline')
    this._scheduleReconnect(this._backoff.nextDelay({ atLeast }))
  }

  /** @param {number} delay ms */
  _scheduleReconnect (delay) {
    clearTimeout(this._timers.reconnect)
    if (this._closed || this._stopped) return
    this._timers.reconnect = setTimeout(() => this._connect(), delay)
  }

  /** Close the current connection (if any) and stop its heartbeat, quietly (a stop or
   * a restart: unlike `_dropConnection`, no reconnect follows). */
  _closeQuietly () {
    if (!this._conn) return
    const conn = this._conn
    this._conn = null
    clearInterval(this._timers.tick)
    conn.close()
  }

  /** @param {ClientError} error */
  _stop (error) {
    this._stopped = true
    clearTimeout(this._timers.reconnect)
    this._closeQuietly()
    this._report(error)
    this.error = error
    this._setState('offline')
  }

  /**
   * The server wants a (fresh) token: ask `getToken`; none: stop until `setToken()`.
   * @param {ClientError} error
   */
  _askToken (error) {
    // The feed (4401) and the queue (HTTP 401) may both ask at once: one question.
    if (!this._tokenAsk) {
      this._tokenAsk = this._askTokenOnce(error).finally(() => { this._tokenAsk = null })
    }
    return this._tokenAsk
  }

  /** @param {ClientError} error */
  async _askTokenOnce (error) {
    const generation = this._generation
    this._report(error)
    let token = null
    if (this._getToken) {
      try {
        token = await this._getToken({ reason: error.error, code: error.code })
      } catch (err) {
        this._report({ code: error.code, error: 'get_token_failed', detail: String(err), fatal: false })
      }
    }
    if (generation !== this._generation || this._closed) return
    if (!token) {
      this._stop({ ...error, fatal: true })
      this._queueState = 'blocked'
      this._queueError = { ...error, fatal: true }
      this._emitQueue()
      return
    }
    if (tokenIdentity(token) !== tokenIdentity(this._token)) {
      this.setToken(token)
      return
    }
    this._token = token
    this._stopped = false
    this.error = null
    // A jittered delay, not 0: a getToken that keeps answering a refused token must
    // not turn into a tight loop.
    this._scheduleReconnect(this._backoff.nextDelay())
    if (this._queueState === 'blocked') {
      this._queueState = 'idle'
      this._queueError = null
      this.flush()
    }
  }

  /** @param {number | null | undefined} expiresIn seconds */
  async _maybeRenew (expiresIn) {
    if (typeof expiresIn !== 'number' || !this._getToken || this._renewing) return
    if (expiresIn > this._renewBefore || this._renewedConn === this._conn) return
    this._renewing = true
    const conn = this._conn
    let token = null
    try {
      token = await this._getToken({ reason: 'expiring', code: 0 })
    } catch (err) {
      this._report({ code: 0, error: 'get_token_failed', detail: String(err), fatal: false })
    }
    if (!token || this._conn !== conn || !conn) {
      this._renewing = false
      return
    }
    this._token = token
    if (!conn.send({ type: 'auth', token })) {
      // SSE cannot renew in band: the stream ends at exp and comes back with this token.
      this._renewing = false
      this._renewedConn = conn
    }
  }

  /** Restart with the current token; `switchQueue`: take the token's own queue.
   * @param {boolean} switchQueue */
  _restart (switchQueue) {
    this._generation++
    clearTimeout(this._timers.reconnect)
    this._closeQuietly()
    this._connecting = false
    this._stopped = false
    this.error = null
    this._backoff.reset()
    this._flushBackoff.reset()
    this._wsFailures = 0
    this._needBootstrap = true
    this.bootstrapped = false
    const keys = this._pool.clear()
    if (this._queueState === 'blocked') this._queueState = 'idle'
    this._queueError = null
    if (switchQueue) {
      // The previous identity's changes stay in its own stored queue, never sent with this token.
      for (const key of this._pool.setQueued([])) keys.add(key)
      this._openQueue()
    }
    this._emit('change', { keys, reset: true })
    this._setState('offline')
    this._connect()
    this._flush()
  }

  // ---- HTTP -----------------------------------------------------------------------

  /** @param {string} path */
  _endpoint (path) {
    return new URL('sync/v1/' + path, this._base)
  }

  /** @param {Record<string, string>} [headers] */
  _headers (headers = {}) {
    const out = { ...headers, 'X-Client-Id': this.clientId }
    if (this._token) out.Authorization = `Bearer ${this._token}`
    return out
  }

  /**
   * GET a feed endpoint as JSON, waiting out 429s as the server asks (bounded).
   * @param {string} path
   */
  async _getJson (path) {
    for (let attempt = 0; ; attempt++) {
      const response = await this._fetch(this._endpoint(path), { headers: this._headers(), cache: 'no-store' })
      const body = await response.json().catch(() => null)
      if (response.status === 429 && attempt < 20 && !this._closed) {
        const wait = retryAfterMs(response.headers.get('Retry-After')) ??
          (body && body.retry_after_ms) ?? 1000
        this._report({ code: 4429, error: 'busy', detail: `${path.split('?')[0]}: the server asks to wait ${wait} ms`, fatal: false, retryAfter: wait })
        await new Promise((resolve) => setTimeout(resolve, wait))
        continue
      }
      if (!response.ok) throw new HttpError(response.status, body, retryAfterMs(response.headers.get('Retry-After')))
      return body
    }
  }

  /** Load every record of the pool's types; the feed continues from the first page's sid. */
  async _bootstrap () {
    const generation = this._generation
    const types = this._types || [null]
    const fresh = []
    let since = null
    for (const t of types) {
      let cursor = null
      let first = true
      for (let page = 0; page < 100000; page++) {
        const query = new URLSearchParams({ limit: String(this._pageLimit) })
        if (t !== null) query.set('t', t)
        if (cursor) query.set('cursor', cursor)
        const body = await this._getJson('records?' + query)
        if (first && typeof body.sid === 'number') since = since === null ? body.sid : Math.min(since, body.sid)
        first = false
        fresh.push(...(body.records || []))
        cursor = body.next_cursor
        if (!cursor) break
      }
    }
    if (generation !== this._generation) return
    const keys = this._pool.reset(fresh, since ?? 0)
    this._needBootstrap = false
    this.bootstrapped = true
    this._emit('change', { keys, reset: true })
  }

  /**
   * A bootstrap (or catch-up) request failed: retry later, or ask for a token, or stop.
   * @param {unknown} error
   * @param {string} what
   */
  _httpFailed (error, what) {
    if (error instanceof HttpError) {
      const body = error.body || {}
      const report = { code: 4000 + error.status, error: body.error || `http_${error.status}`, detail: `${what}: ${error.message}`, fatal: false }
      if (error.status === 401) {
        this._setState('offline')
        this._askToken(report)
        return
      }
      if (error.status === 403 || error.status === 400) {
        this._stop({ ...report, fatal: true })
        return
      }
      this._report(report)
      this._setState('offline')
      this._scheduleReconnect(this._backoff.nextDelay({ atLeast: error.retryAfter ?? 0 }))
      return
    }
    this._report({ code: 1006, error: 'unreachable', detail: `${what}: ${error instanceof Error ? error.message : String(error)}`, fatal: false })
    this._setState('offline')
    this._scheduleReconnect(this._backoff.nextDelay())
  }

  // ---- mutations and the offline queue ------------------------------------------------

  /**
   * @param {'i' | 'u' | 'd'} op
   * @param {string} t
   * @param {string} id
   * @param {Record<string, unknown>} fields
   * @returns {Promise<MutationResult>}
   */
  _mutate (op, t, id, fields) {
    if (typeof t !== 'string' || !t || t.includes('/')) throw new TypeError(`a record type is a non-empty string without "/", got ${JSON.stringify(t)}`)
    if (typeof id !== 'string' || !id) throw new TypeError(`a record id is a non-empty string, got ${JSON.stringify(id)}`)
    if (this._types && !this._types.includes(t)) throw new TypeError(`type ${JSON.stringify(t)} is not one of this client's types (${this._types.join(', ')})`)
    if (op !== 'd' && (!fields || typeof fields !== 'object' || Array.isArray(fields))) throw new TypeError('fields must be an object')
    if (this._closed) throw new Error('the client is closed')
    this._txCounter += 1
    /** @type {QueuedMutation} */
    const mutation = {
      seq: Date.now() * 1000 + (this._seq++ % 1000),
      client_tx_id: `${this.clientId}-${Date.now().toString(36)}-${this._txCounter}-${randomId(4)}`,
      t,
      id,
      op,
      p: JSON.parse(JSON.stringify(fields || {}))
    }
    // What this client had seen when it made the change: the server reports the fields
    // another writer set since then and this change overwrites (onConflict).
    if (this.bootstrapped) mutation.base_sid = this._pool.lastSid
    const result = new Promise((resolve) => this._waiters.set(mutation.client_tx_id, resolve))
    const keys = this._pool.enqueue(mutation)
    const store = this._storeReady
    this._persist = this._persist.then(() => store).then((s) => s.add(mutation)).catch((e) => this._storageFailed(e))
    this._emit('change', { keys, reset: false })
    this._emitQueue()
    this._flush()
    return result
  }

  _openQueue () {
    const name = typeof this._queueName === 'function' ? this._queueName(tokenIdentity(this._token)) : this._queueName
    if (this._store) this._store.close()
    this._store = null
    const previous = this._persist
    const generation = this._generation
    this._storeReady = openQueue(name, { indexedDB: this._indexedDB, onError: (e) => this._storageFailed(e) })
    this._persist = previous.then(() => this._storeReady).then(async (store) => {
      if (generation !== this._generation || this._closed) { store.close(); return }
      this._store = store
      const stored = await store.load()
      const seen = new Set(stored.map((m) => m.client_tx_id))
      // Changes made before the queue was loaded come after the stored ones.
      const early = this._pool.queued.filter((m) => !seen.has(m.client_tx_id))
      for (const m of early) await store.add(m)
      const keys = this._pool.setQueued([...stored, ...early])
      // After this tab's own pending writes: a reload never drops a change not yet stored.
      store.onExternalChange(() => {
        this._persist = this._persist.then(() => this._reloadQueue(store)).catch((e) => this._storageFailed(e))
      })
      this._emit('change', { keys, reset: false })
      this._emitQueue()
      this._flush()
    }).catch((e) => this._storageFailed(e))
  }

  /** Another tab changed the stored queue: take its version.
   * @param {Queue} store */
  async _reloadQueue (store) {
    if (store !== this._store) return
    const stored = await store.load()
    const keys = this._pool.setQueued(stored)
    this._emit('change', { keys, reset: false })
    this._emitQueue()
    this._flush()
  }

  /** @param {unknown} error */
  _storageFailed (error) {
    this._report({ code: 0, error: 'storage_failed', detail: `offline queue: ${error instanceof Error ? error.message : String(error)}`, fatal: false })
  }

  async _flush () {
    if (this._flushing || this._closed || this._pool.queued.length === 0) return
    if (this._queueState === 'blocked') return
    this._flushing = true
    clearTimeout(this._timers.flush)
    const generation = this._generation
    try {
      await this._storeReady
      await this._flushOnce(generation)
    } finally {
      this._flushing = false
    }
    if (generation !== this._generation) {
      this._flush()
      return
    }
    if (this._pool.queued.length && this._queueState === 'idle') this._flush()
    this._emitQueue()
  }

  /** @param {number} generation */
  async _flushOnce (generation) {
    const batch = this._pool.queued.slice(0, this._batchSize)
    if (!batch.length) return
    // After a failure the queue stays `offline` while it retries (no flicker between
    // offline and sending every few hundred ms); `sending` is a first attempt.
    if (this._queueState !== 'offline') this._queueState = 'sending'
    this._emitQueue()
    let response
    let body
    try {
      response = await this._fetch(this._endpoint('mutations'), {
        method: 'POST',
        headers: this._headers({ 'Content-Type': 'application/json' }),
        body: JSON.stringify({
          client_id: this.clientId,
          mutations: batch.map(({ t, id, op, p, client_tx_id, base_sid }) => ({ t, id, op, p, client_tx_id, base_sid }))
        })
      })
      body = await response.json().catch(() => null)
    } catch (error) {
      this._flushLater(0, { code: 1006, error: 'unreachable', detail: `mutations: ${error instanceof Error ? error.message : String(error)}`, fatal: false })
      return
    }
    if (generation !== this._generation) return
    const status = response.status
    if (status === 401 || status === 403) {
      // Not this batch's fault: it stays queued until a token is given. 401: ask for
      // one; 403 (a token that may read but not write): the feed goes on, the queue
      // waits for setToken().
      this._queueState = 'blocked'
      const error = { code: 4000 + status, error: (body && body.error) || 'unauthorized', detail: `mutations: ${(body && body.detail) || 'refused'}`, fatal: status === 403 }
      this._queueError = error
      if (status === 401) this._askToken({ ...error, fatal: false })
      else this._report(error)
      return
    }
    const hasResults = body && Array.isArray(body.results)
    if (status === 429 || (status >= 500 && !hasResults) || !body) {
      this._flushLater(retryAfterMs(response.headers.get('Retry-After')) ?? 0,
        { code: 4000 + status, error: (body && body.error) || `http_${status}`, detail: `mutations: ${(body && body.detail) || status}`, fatal: false })
      return
    }
    if (!hasResults) {
      // Refused whole (400, 413): drop the mutation named, or the batch.
      const match = /^mutations\[(\d+)\]/.exec(body.field || '')
      const bad = match ? [batch[Number(match[1])]].filter(Boolean) : batch
      for (const m of bad) this._answered(m, { status, error: body.error, detail: body.detail, client_tx_id: m.client_tx_id })
      this._queueState = 'idle'
      this._flushBackoff.reset()
      return
    }
    let unstored = false
    let answered = 0
    for (const result of body.results) {
      const mutation = batch[result.index] || batch.find((m) => m.client_tx_id === result.client_tx_id)
      if (!mutation || !this._pool.queued.some((m) => m.client_tx_id === mutation.client_tx_id)) continue
      if (result.status === 503) { unstored = true; continue } // store unavailable: stays queued
      this._answered(mutation, result)
      answered++
    }
    if (unstored || answered === 0) {
      this._flushLater(0, { code: 4503, error: 'store_unavailable', detail: 'mutations: the server could not store them', fatal: false })
      return
    }
    this._queueState = 'idle'
    this._flushBackoff.reset()
  }

  /**
   * @param {number} atLeast ms
   * @param {ClientError} error
   */
  _flushLater (atLeast, error) {
    this._queueState = 'offline'
    this._report(error)
    clearTimeout(this._timers.flush)
    // "Equal jitter": at least half the ceiling. A failed POST is not repeated at once;
    // spreading a crowd is the feed's job (its reconnect, fully jittered, flushes too).
    const half = this._flushBackoff.ceiling() / 2
    const delay = Math.max(atLeast, half + this._flushBackoff.nextDelay() / 2)
    this._timers.flush = setTimeout(() => this._flush(), delay)
  }

  /**
   * @param {QueuedMutation} mutation
   * @param {MutationResult} result
   */
  _answered (mutation, result) {
    const ok = result.status >= 200 && result.status < 300
    const keys = this._pool.acknowledge(mutation.client_tx_id, ok && typeof result.sid === 'number' ? result.sid : null)
    const store = this._store
    this._persist = this._persist.then(() => store && store.remove([mutation.client_tx_id])).catch((e) => this._storageFailed(e))
    this._emit('change', { keys, reset: false })
    if (ok && result.overwritten && Object.keys(result.overwritten).length) {
      this._emit('conflict', mutation.t, mutation.id, result.overwritten, { result, mutation })
    } else if (!ok) {
      this._emit('reject', mutation, result)
    }
    const waiter = this._waiters.get(mutation.client_tx_id)
    if (waiter) {
      this._waiters.delete(mutation.client_tx_id)
      waiter(result)
    }
  }

  // ---- frames, state, events --------------------------------------------------------

  /** @param {Frame[]} frames */
  _applyFrames (frames) {
    const outcome = this._pool.apply(frames)
    if (outcome.accepted.length) this._emit('frames', outcome.accepted)
    if (outcome.keys.size) this._emit('change', { keys: outcome.keys, reset: false })
    return outcome
  }

  /** @param {object} message */
  _send (message) {
    return this._conn ? this._conn.send(message) : false
  }

  /** @param {ConnectionState} state */
  _setState (state) {
    if (this.state === state && !(state === 'offline' && this.error)) return
    this.state = state
    this._emit('state', state, this.error)
  }

  _emitQueue () {
    this._emit('queue', this.queue)
  }

  /** @param {ClientError} error */
  _report (error) {
    if (this._onErrorOption) {
      try {
        this._onErrorOption(error)
      } catch (err) {
        console.error('crdt-sync sdk: onError threw', err)
      }
    }
  }

  /**
   * Call every listener of `kind`; one that throws is logged, the others still run.
   * @param {keyof FrameClientImpl['_listeners']} kind
   * @param {...any} args
   */
  _emit (kind, ...args) {
    for (const listener of [...this._listeners[kind]]) {
      try {
        listener(...args)
      } catch (error) {
        console.error(`crdt-sync sdk: a ${kind} listener threw`, error)
      }
    }
  }
}
