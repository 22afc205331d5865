// The live record board: the records of one type as cards in columns by their
// `status` field, kept current by the SyncFrame feed. No CRDT code and no
// dependencies: bootstrap over HTTP (`/sync/v1/records`), frames over a
// WebSocket (`/sync/v1/ws`), changes as HTTP mutations, queued in localStorage
// while the server cannot be reached and replayed (idempotently) later.
// The access token (auth.js) rides on every request: Bearer on fetch, ?token= on the socket.

import {
  AUTH_CLOSE_CODES, AUTH_STATUSES, authHeaders, bindTokenForm, onTokenChange, tokenIdentity, withToken
} from './auth.js'

const COLUMNS = ['open', 'doing', 'done']
const OTHER = 'other'
const DEFAULT_TYPE = 'task'
const PAGE_LIMIT = 100
const PING_MS = 15000 // ping the frame socket this often
const DEAD_MS = 30000 // no message for this long: the socket is dead
const BACKOFF_MIN_MS = 500
const BACKOFF_MAX_MS = 15000
const MAX_BATCH = 100 // mutations per POST
const TOAST_MS = 8000
const USER_KEY = 'crdt-sync.user' // shared with the editor: {name, color}
const CLIENT_KEY = 'crdt-sync.board.client_id' // sessionStorage: one per tab
const QUEUE_KEY = 'crdt-sync.board.outbox' // localStorage: survives reloads
/** One outbox per identity (org/sub of the token): changes queued under one token are
 * never sent with another's (another tenant's, another user's). */
const queueKey = () => `${QUEUE_KEY}:${tokenIdentity()}`
const HIDDEN_FIELDS = new Set(['title', 'status', 'body'])

const COLORS = [
  '#e0555b', '#e8843a', '#d4a514', '#4caf50', '#26a69a',
  '#2f8fd8', '#5c6bc0', '#9c5fc9', '#d05d9e', '#7f8c8d'
]
const ADJECTIVES = ['Amber', 'Brave', 'Calm', 'Clever', 'Eager', 'Gentle', 'Happy', 'Swift']
const ANIMALS = ['Badger', 'Crane', 'Falcon', 'Fox', 'Heron', 'Lynx', 'Otter', 'Robin']

const $ = (selector, root = document) => root.querySelector(selector)
const els = {
  typeForm: $('#type-form'),
  typeName: $('#type-name'),
  userName: $('#user-name'),
  outbox: $('#outbox'),
  outboxText: $('#outbox-text'),
  outboxRetry: $('#outbox-retry'),
  status: $('#status'),
  statusText: $('#status-text'),
  lastSid: $('#last-sid'),
  createForm: $('#create-form'),
  newId: $('#new-id'),
  newTitle: $('#new-title'),
  createError: $('#create-error'),
  toasts: $('#toasts'),
  board: $('#board')
}

// ---- small helpers -------------------------------------------------------------

const pick = (list) => list[Math.floor(Math.random() * list.length)]
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** `n` random base-36 characters (crypto.getRandomValues works outside secure contexts too). */
function randomId (n) {
  const bytes = crypto.getRandomValues(new Uint8Array(n))
  return Array.from(bytes, (b) => (b % 36).toString(36)).join('')
}

function backoff (attempt) {
  const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt)
  return ms / 2 + Math.random() * ms / 2
}

/** Same checks as the server's doc names: 1–512 characters, no control characters. */
function validName (name) {
  // eslint-disable-next-line no-control-regex
  return name.length > 0 && name.length <= 512 && !/[\u0000-\u001f\u007f-\u009f]/.test(name)
}

function readStorage (storage, key) {
  try { return storage.getItem(key) } catch (_) { return null }
}

function writeStorage (storage, key, value) {
  try {
    storage.setItem(key, value)
  } catch (_) {
    // storage disabled or full: the value lasts for this page only
  }
}

function display (value) {
  if (value === null || value === undefined) return ''
  if (typeof value === 'string') return value
  if (Array.isArray(value) && value.every((item) => item === null || typeof item !== 'object')) {
    return value.map((item) => String(item)).join(', ') // ["web", "ui"] as `web, ui`
  }
  return JSON.stringify(value)
}

const shorten = (text, max) => (text.length > max ? text.slice(0, max - 1) + '…' : text)

function el (tag, className, text) {
  const node = document.createElement(tag)
  if (className) node.className = className
  if (text !== undefined) node.textContent = text
  return node
}

function setText (node, text) {
  if (node.textContent !== text) node.textContent = text
}

// ---- who and what this page is -------------------------------------------------

function recordType () {
  const t = (new URLSearchParams(window.location.search).get('t') || '').trim()
  return t || DEFAULT_TYPE
}

const T = recordType()
const typeError = (!validName(T) || T.includes('/') || T.length > 256)
  ? `“${shorten(T, 40)}” is not a record type (no “/”, at most 256 characters)`
  : null

function sessionClientId () {
  let id = readStorage(sessionStorage, CLIENT_KEY)
  if (!id) {
    id = 'board-' + randomId(12)
    writeStorage(sessionStorage, CLIENT_KEY, id)
  }
  return id
}

const clientId = sessionClientId()

function loadUser () {
  try {
    const stored = JSON.parse(readStorage(localStorage, USER_KEY) || 'null')
    if (stored && typeof stored.name === 'string' && stored.name.trim()) return stored
  } catch (_) {
    // unreadable: a fresh random user below
  }
  const user = { name: `${pick(ADJECTIVES)} ${pick(ANIMALS)}`, color: pick(COLORS) }
  writeStorage(localStorage, USER_KEY, JSON.stringify(user))
  return user
}

const user = loadUser()

// ---- the records: bootstrap + frames ---------------------------------------------

/** id -> {id, fields, sid}: what the server says, as of the frames applied. */
const records = new Map()
/** id -> newest sid applied to that record (kept after a delete, so old frames stay ignored). */
const recordSids = new Map()
/** The newest sid applied (the `since` of the next reconnect). */
let lastSid = 0
let bootstrapped = false

function applyFrames (frames) {
  for (const frame of frames) {
    if (!frame || typeof frame.sid !== 'number' || typeof frame.id !== 'string') continue
    if (frame.sid > lastSid) lastSid = frame.sid
    if (frame.t !== T) continue
    if (frame.sid <= (recordSids.get(frame.id) ?? -1)) continue // already applied
    recordSids.set(frame.id, frame.sid)
    const p = frame.p && typeof frame.p === 'object' ? frame.p : {}
    if (frame.op === 'd') {
      records.delete(frame.id)
    } else if (frame.op === 'i') {
      records.set(frame.id, { id: frame.id, fields: merge({}, p), sid: frame.sid })
    } else if (frame.op === 'u') {
      const record = records.get(frame.id) || { id: frame.id, fields: {} }
      merge(record.fields, p)
      record.sid = frame.sid
      records.set(frame.id, record)
    }
  }
  settleAwaiting()
  scheduleRender()
}

/** `u` semantics: set every field of `p`, remove those that are null. */
function merge (fields, p) {
  for (const [key, value] of Object.entries(p)) {
    if (value === null) delete fields[key]
    else fields[key] = value
  }
  return fields
}

class HttpError extends Error {
  constructor (status, body) {
    super((body && body.detail) || `HTTP ${status}`)
    this.status = status
    this.body = body
  }
}

/** GET a feed endpoint as JSON, waiting out 429s as the server asks. */
async function getJson (path) {
  for (;;) {
    const response = await fetch(api(path), { headers: authHeaders({ 'X-Client-Id': clientId }) })
    const body = await response.json().catch(() => null)
    if (response.status === 429) {
      const header = Number(response.headers.get('Retry-After'))
      const wait = header > 0 ? header * 1000 : (body && body.retry_after_ms) || 1000
      setStatus('connecting', `Server busy, retrying in ${Math.ceil(wait / 1000)} s…`)
      await sleep(wait)
      continue
    }
    if (!response.ok) throw new HttpError(response.status, body)
    return body
  }
}

/** All records of type T, page by page; the feed continues from the first page's sid. */
async function bootstrap () {
  setStatus('connecting', 'Loading records…')
  const fresh = []
  let since = null
  let cursor = null
  do {
    const query = new URLSearchParams({ t: T, limit: String(PAGE_LIMIT) })
    if (cursor) query.set('cursor', cursor)
    const page = await getJson('records?' + query)
    if (since === null) since = page.sid
    fresh.push(...page.records.filter((record) => record.t === T))
    cursor = page.next_cursor
  } while (cursor)
  records.clear()
  recordSids.clear()
  for (const record of fresh) {
    records.set(record.id, { id: record.id, fields: { ...record.fields }, sid: record.sid })
    recordSids.set(record.id, record.sid)
  }
  lastSid = since
  bootstrapped = true
  settleAwaiting()
  scheduleRender()
}

// ---- the frame WebSocket ---------------------------------------------------------

/** A URL of the server relative to this page, so a path prefix in front keeps working. */
function api (path) {
  return new URL('../sync/v1/' + path, window.location.href)
}

let socket = null // the current frame socket (null while disconnected)
let needBootstrap = true
let reconnectAttempt = 0
let reconnectTimer = null
let connecting = false

async function connect () {
  clearTimeout(reconnectTimer)
  if (connecting || socket) return
  connecting = true
  try {
    if (needBootstrap) {
      await bootstrap()
      needBootstrap = false
    }
  } catch (error) {
    connecting = false
    if (error instanceof HttpError && error.status === 400) {
      setStatus('closed', `Refused: ${error.message}`)
      return
    }
    if (error instanceof HttpError && AUTH_STATUSES.has(error.status)) {
      needToken(`Refused (${error.status}): ${error.message}`)
      return
    }
    scheduleReconnect(`Cannot load records (${error.message})`)
    return
  }
  connecting = false
  openSocket()
}

function openSocket () {
  const url = api('ws')
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:'
  url.searchParams.set('since', String(lastSid))
  url.searchParams.set('t', T)
  withToken(url)
  setStatus('connecting')
  const ws = new WebSocket(url)
  const now = Date.now()
  const conn = { ws, lastMessage: now, lastPing: now, lastTick: now, timer: null, done: false }
  socket = conn

  conn.timer = setInterval(() => {
    const now = Date.now()
    if (now - conn.lastTick > 5000) {
      // This timer was throttled (background tab, suspended laptop): the silence
      // may be ours. Ping now and judge the socket by whether that is answered.
      conn.lastMessage = Math.max(conn.lastMessage, now - PING_MS)
      conn.lastPing = 0
    }
    conn.lastTick = now
    if (now - conn.lastMessage >= DEAD_MS) {
      socketGone(conn, 'no message for 30 s')
      return
    }
    if (ws.readyState === WebSocket.OPEN && now - conn.lastPing >= PING_MS) {
      conn.lastPing = now
      ws.send('{"type":"ping"}')
    }
  }, 1000)

  ws.onopen = () => {
    conn.lastMessage = conn.lastPing = Date.now()
    setStatus('connected')
    if (expanded) sendView(expanded)
    flushOutbox()
  }
  ws.onmessage = (event) => {
    conn.lastMessage = Date.now()
    let message
    try {
      message = JSON.parse(event.data)
    } catch (_) {
      return
    }
    if (Array.isArray(message)) {
      reconnectAttempt = 0
      applyFrames(message)
    } else if (message && message.type === 'pong') {
      reconnectAttempt = 0
    } else if (message && message.type === 'presence') {
      onPresence(message)
    } else if (message && message.type === 'error') {
      if (message.error === 'since_too_old') needBootstrap = true
      else console.warn('frame feed:', message.error, message.detail)
    }
  }
  ws.onclose = (event) => {
    if (event.code === 4410) needBootstrap = true
    const why = `closed ${event.code}${event.reason ? ': ' + event.reason : ''}`
    if (AUTH_CLOSE_CODES.has(event.code)) {
      socketGone(conn, why, false)
      needToken(`Refused (${why})`)
      return
    }
    socketGone(conn, why)
  }
}

/** The socket closed or went silent: forget it and come back with `since` (or bootstrap). */
function socketGone (conn, why, retry = true) {
  if (conn.done) return
  conn.done = true
  clearInterval(conn.timer)
  conn.ws.onopen = conn.ws.onmessage = conn.ws.onclose = null
  if (conn.ws.readyState < WebSocket.CLOSING) conn.ws.close()
  if (socket === conn) socket = null
  if (retry) scheduleReconnect(`Disconnected (${why}) — reconnecting…`)
}

/** The server wants a (fresh) token: stop retrying, keep the outbox, ask for one. */
function needToken (why) {
  clearTimeout(reconnectTimer)
  setStatus('closed', `${why} — enter a token`)
  tokenForm.needed(`${why}: enter a token`)
}

function scheduleReconnect (text) {
  clearTimeout(reconnectTimer)
  setStatus('disconnected', text)
  reconnectTimer = setTimeout(connect, backoff(reconnectAttempt++))
}

function sendMessage (message) {
  if (socket && socket.ws.readyState === WebSocket.OPEN) {
    socket.ws.send(JSON.stringify(message))
    return true
  }
  return false
}

const STATUS_TEXT = {
  connecting: 'Connecting…',
  connected: 'Live',
  disconnected: 'Disconnected — reconnecting…',
  closed: 'Stopped'
}

let statusState = 'connecting'

function setStatus (status, text) {
  statusState = status
  els.status.dataset.status = status
  els.status.dataset.synced = String(status === 'connected' && bootstrapped)
  setText(els.statusText, text || STATUS_TEXT[status] || status)
}

// ---- mutations and the offline queue -----------------------------------------------

/** Mutations not yet acknowledged, oldest first: {t, id, op, p, client_tx_id, base_sid}. */
let outbox = loadOutbox()
/** Acknowledged mutations whose frame has not arrived yet: shown meanwhile. */
let awaiting = []
let flushing = false
let flushTimer = null
let flushAttempt = 0
let outboxState = 'idle' // idle | sending | offline
let txCounter = 0

function loadOutbox () {
  try {
    const stored = JSON.parse(readStorage(localStorage, queueKey()) || '[]')
    return Array.isArray(stored)
      ? stored.filter((m) => m && typeof m.client_tx_id === 'string' && typeof m.id === 'string')
      : []
  } catch (_) {
    return []
  }
}

function saveOutbox () {
  writeStorage(localStorage, queueKey(), JSON.stringify(outbox))
}

function newTxId () {
  txCounter += 1
  return `${clientId}-${Date.now().toString(36)}-${txCounter}-${randomId(4)}`
}

/** Queue one mutation of a record of this board and send it as soon as possible. */
function mutate (op, id, p) {
  const mutation = { t: T, id, op, p, client_tx_id: newTxId(), base_sid: lastSid }
  outbox.push(mutation)
  saveOutbox()
  scheduleRender()
  flushOutbox()
}

async function flushOutbox () {
  if (flushing || outbox.length === 0) return
  flushing = true
  clearTimeout(flushTimer)
  const batch = outbox.slice(0, MAX_BATCH)
  outboxState = 'sending'
  scheduleRender()
  let response
  let body
  try {
    response = await fetch(api('mutations'), {
      method: 'POST',
      headers: authHeaders({ 'Content-Type': 'application/json', 'X-Client-Id': clientId }),
      body: JSON.stringify({
        client_id: clientId,
        mutations: batch.map(({ t, id, op, p, client_tx_id, base_sid }) =>
          ({ t, id, op, p, client_tx_id, base_sid }))
      })
    })
    body = await response.json().catch(() => null)
    if (AUTH_STATUSES.has(response.status)) {
      // Not this batch's fault: it stays queued until a token is given.
      flushing = false
      outboxState = 'offline'
      scheduleRender()
      needToken(`Not saved (${response.status}: ${(body && body.detail) || 'refused'})`)
      return
    }
    if (response.status >= 500 || response.status === 429 || !body) {
      throw new HttpError(response.status, body)
    }
  } catch (error) {
    // Unreachable or unavailable: keep everything and try again later.
    flushing = false
    outboxState = 'offline'
    flushTimer = setTimeout(flushOutbox, backoff(flushAttempt++))
    scheduleRender()
    return
  }
  flushing = false
  flushAttempt = 0
  outboxState = 'idle'
  if (response.ok) {
    handleResults(batch, body.results || [])
  } else {
    // Refused whole (400, 413): drop the mutation named, or the batch, and say so.
    const match = /^mutations\[(\d+)\]/.exec(body.field || '')
    const bad = match ? [batch[Number(match[1])]] : batch
    const drop = new Set(bad.filter(Boolean).map((m) => m.client_tx_id))
    removeFromOutbox(drop)
    for (const m of bad) if (m) notify(m.id, 'error', `Not saved: ${body.detail || body.error}`)
  }
  scheduleRender()
  if (outbox.length && outboxState !== 'offline') flushOutbox()
}

const OP_NAMES = { i: 'create', u: 'change', d: 'delete' }

function handleResults (batch, results) {
  const done = new Set()
  for (const result of results) {
    const mutation = batch[result.index] ||
      batch.find((m) => m.client_tx_id === result.client_tx_id)
    if (!mutation) continue
    if (result.status === 503) continue // store unavailable: stays queued
    done.add(mutation.client_tx_id)
    if (result.status === 200 || result.status === 201) {
      if (result.sid !== null && result.sid !== undefined) {
        awaiting.push({ mutation, sid: result.sid })
      }
      if (Array.isArray(result.conflicts) && result.conflicts.length) {
        notify(mutation.id, 'conflict', conflictText(result), conflictTitle(result))
      }
    } else {
      const what = OP_NAMES[mutation.op] || mutation.op
      const why = {
        exists: 'a record with this id already exists',
        not_found: 'the record no longer exists'
      }[result.error] || result.detail || result.error
      notify(mutation.id, 'error', `Could not ${what} ${mutation.id}: ${why}`)
    }
  }
  removeFromOutbox(done)
  settleAwaiting()
  if (outbox.length && results.some((r) => r.status === 503)) {
    outboxState = 'offline'
    flushTimer = setTimeout(flushOutbox, backoff(flushAttempt++))
  }
}

function removeFromOutbox (txIds) {
  if (!txIds.size) return
  outbox = outbox.filter((m) => !txIds.has(m.client_tx_id))
  saveOutbox()
}

function conflictText (result) {
  const fields = result.conflicts
  const verb = fields.length === 1 ? 'was' : 'were'
  let text = `${fields.join(', ')} ${verb} changed by someone else`
  const before = result.overwritten && result.overwritten[fields[0]]
  if (fields.length === 1 && before && before.value !== undefined && before.value !== null) {
    text += ` (to “${shorten(display(before.value), 40)}”)`
  }
  return text + ' — your change replaced it'
}

function conflictTitle (result) {
  return result.conflicts.map((field) => {
    const o = (result.overwritten || {})[field] || {}
    return `${field}: ${display(o.value)} by ${o.who ?? 'unknown'} at sid ${o.sid ?? '?'}`
  }).join('\n')
}

/** Acknowledged mutations stay visible until their frame (or a newer state) is applied. */
function settleAwaiting () {
  awaiting = awaiting.filter(({ mutation, sid }) =>
    sid > lastSid && sid > (recordSids.get(mutation.id) ?? -1))
}

// Another tab of this browser changed the queue: take its version.
window.addEventListener('storage', (event) => {
  if (event.key === queueKey()) {
    outbox = loadOutbox()
    scheduleRender()
  }
})
window.addEventListener('online', () => {
  flushAttempt = 0
  flushOutbox()
  if (!socket) connect()
})

// ---- notices --------------------------------------------------------------------

/** id -> [{key, kind, text, title}] shown on the card (or as a toast if there is none). */
const notices = new Map()
let noticeCounter = 0

function notify (id, kind, text, title) {
  if (!currentView().has(id)) {
    toast(kind, text)
    return
  }
  const list = notices.get(id) || []
  list.push({ key: ++noticeCounter, kind, text, title })
  notices.set(id, list.slice(-3))
  scheduleRender()
}

function dismiss (id, key) {
  const list = (notices.get(id) || []).filter((n) => n.key !== key)
  if (list.length) notices.set(id, list)
  else notices.delete(id)
  scheduleRender()
}

function toast (kind, text) {
  const node = el('div', `toast ${kind}`, text)
  els.toasts.append(node)
  setTimeout(() => node.remove(), TOAST_MS)
}

// ---- presence of the expanded card --------------------------------------------------

let expanded = null // the id of the open card
let present = [] // its presence list, from {"type": "presence"} messages

function viewState () {
  return { user: { name: user.name, color: user.color }, board_client: clientId }
}

function sendView (id) {
  sendMessage({ type: 'view', t: T, id, state: viewState() })
}

function toggle (id) {
  const previous = expanded
  if (previous !== null) sendMessage({ type: 'leave', t: T, id: previous })
  expanded = previous === id ? null : id
  present = []
  if (expanded !== null) sendView(expanded)
  scheduleRender()
}

function onPresence (message) {
  if (message.t !== T || message.id !== expanded || !Array.isArray(message.present)) return
  present = message.present
  scheduleRender()
}

function presenceEntries () {
  const entries = present.map((item) => {
    const state = item && typeof item.state === 'object' && item.state ? item.state : {}
    const peer = state.user && typeof state.user === 'object' ? state.user : {}
    const name = typeof peer.name === 'string' && peer.name.trim()
      ? shorten(peer.name.trim(), 60)
      : `Anonymous ${item.client_id}`
    return {
      key: String(item.client_id),
      name,
      color: /^#[0-9a-f]{3}([0-9a-f]{3})?$/i.test(peer.color || '') ? peer.color : '#9aa0a6',
      viewer: Boolean(item.viewer),
      self: state.board_client === clientId
    }
  })
  return entries.sort((a, b) => (b.self - a.self) || a.name.localeCompare(b.name))
}

// ---- rendering --------------------------------------------------------------------

let renderScheduled = false

function scheduleRender () {
  if (renderScheduled) return
  renderScheduled = true
  queueMicrotask(() => {
    renderScheduled = false
    render()
  })
}

/** The server's records with this page's own changes on top (queued, or sent and not yet framed). */
function currentView () {
  const view = new Map()
  for (const [id, record] of records) {
    view.set(id, { id, fields: { ...record.fields }, sid: record.sid, pending: null })
  }
  const overlay = [
    ...awaiting.map(({ mutation }) => ({ mutation, queued: false })),
    ...outbox.filter((m) => m.t === T).map((mutation) => ({ mutation, queued: true }))
  ]
  for (const { mutation, queued } of overlay) {
    let card = view.get(mutation.id)
    if (mutation.op === 'd') {
      if (!card) continue
      if (queued) card.pending = 'delete'
      else view.delete(mutation.id)
      continue
    }
    if (!card) {
      if (mutation.op !== 'i') continue
      card = { id: mutation.id, fields: {}, sid: null, pending: null }
      view.set(mutation.id, card)
    }
    merge(card.fields, mutation.p || {})
    if (queued && card.pending !== 'delete') card.pending = mutation.op === 'i' ? 'create' : 'change'
  }
  return view
}

function columnOf (status) {
  return COLUMNS.includes(status) ? status : OTHER
}

const collator = new Intl.Collator(undefined, { numeric: true })
const cards = new Map() // id -> card element

function render () {
  const view = currentView()
  const byColumn = new Map([...COLUMNS, OTHER].map((name) => [name, []]))
  for (const card of view.values()) byColumn.get(columnOf(card.fields.status)).push(card)

  for (const [name, list] of byColumn) {
    list.sort((a, b) => collator.compare(a.id, b.id))
    const column = $(`.column[data-column="${name}"]`, els.board)
    setText($('.count', column), String(list.length))
    const container = $('.cards', column)
    list.forEach((card, index) => {
      const node = cardElement(card)
      const here = container.children[index]
      if (here !== node) container.insertBefore(node, here || null)
    })
  }
  for (const [id, node] of cards) {
    if (!view.has(id)) {
      node.remove()
      cards.delete(id)
      notices.delete(id)
    }
  }
  if (expanded !== null && !view.has(expanded)) {
    sendMessage({ type: 'leave', t: T, id: expanded })
    expanded = null
    present = []
  }

  setText(els.lastSid, String(lastSid))
  els.lastSid.dataset.sid = String(lastSid)
  const count = outbox.length
  els.outbox.hidden = count === 0
  els.outbox.dataset.count = String(count)
  els.outbox.dataset.state = outboxState
  setText(els.outboxText, `${count} change${count === 1 ? '' : 's'} pending` +
    (outboxState === 'offline' ? ' — server unreachable' : ''))
}

function cardElement (card) {
  let node = cards.get(card.id)
  if (!node) {
    node = buildCard(card.id)
    cards.set(card.id, node)
  }
  updateCard(node, card)
  return node
}

/** The collaborative editor (index.html next to this page) on the record's doc. */
function editorHref (id) {
  return './?' + new URLSearchParams({ doc: `${T}/${id}` })
}

function buildCard (id) {
  const node = el('article', 'rec')
  node.dataset.id = id

  const head = el('header', 'rec-head')
  const toggleButton = el('button', 'rec-toggle')
  toggleButton.type = 'button'
  toggleButton.append(el('span', 'rec-title'), el('span', 'rec-id', id))
  toggleButton.addEventListener('click', () => toggle(id))
  head.append(toggleButton, el('span', 'badge pending'))

  const fields = el('ul', 'rec-fields')
  const body = el('p', 'rec-body')
  const noticeList = el('div', 'notices')

  const presence = el('section', 'rec-presence')
  presence.append(el('h3', '', 'Here now'), el('ul', 'presence'))

  const actions = el('footer', 'rec-actions')
  const moveLabel = el('label', 'move')
  const select = el('select', 'rec-move')
  select.title = 'Move to another column'
  select.addEventListener('change', () => {
    const status = select.value
    select.blur()
    mutate('u', id, { status })
  })
  moveLabel.append(el('span', 'visually-hidden', 'Status'), select)
  const open = el('a', 'rec-open', 'Open in editor')
  open.href = editorHref(id)
  open.target = '_blank'
  // Same origin; an opener link gets a copy of this tab's sessionStorage: the token.
  open.rel = 'opener'
  const remove = el('button', 'rec-delete', 'Delete')
  remove.type = 'button'
  remove.title = `Delete ${id}`
  remove.addEventListener('click', () => mutate('d', id, {}))
  actions.append(moveLabel, open, remove)

  node.append(head, fields, body, noticeList, presence, actions)
  return node
}

function updateCard (node, card) {
  const { fields } = card
  const isExpanded = expanded === card.id
  const status = typeof fields.status === 'string' ? fields.status : display(fields.status)
  node.dataset.status = status
  node.dataset.sid = card.sid === null ? '' : String(card.sid)
  node.dataset.expanded = String(isExpanded)
  if (card.pending) node.dataset.pending = card.pending
  else delete node.dataset.pending

  const toggleButton = $('.rec-toggle', node)
  toggleButton.setAttribute('aria-expanded', String(isExpanded))
  const title = display(fields.title).trim()
  setText($('.rec-title', node), title || card.id)
  $('.rec-id', node).hidden = !title
  setText($('.badge.pending', node), {
    create: 'pending', change: 'pending', delete: 'pending delete'
  }[card.pending] || '')

  // Other fields, compactly: `key value` chips.
  const chips = Object.keys(fields).filter((key) => !HIDDEN_FIELDS.has(key)).sort()
  const signature = JSON.stringify(chips.map((key) => [key, fields[key]]))
  const list = $('.rec-fields', node)
  if (list.dataset.signature !== signature) {
    list.dataset.signature = signature
    list.replaceChildren(...chips.map((key) => {
      const item = el('li', 'chip')
      item.dataset.field = key
      const text = display(fields[key])
      item.title = `${key}: ${text}`
      item.append(el('span', 'key', key), el('span', 'value', shorten(text, 40)))
      return item
    }))
  }
  list.hidden = chips.length === 0

  const body = $('.rec-body', node)
  const bodyText = 'body' in fields ? display(fields.body) : ''
  setText(body, bodyText)
  body.hidden = !('body' in fields)
  body.classList.toggle('empty', bodyText === '')

  const noticeList = $('.notices', node)
  const cardNotices = notices.get(card.id) || []
  const noticeKeys = cardNotices.map((n) => n.key).join(',')
  if (noticeList.dataset.keys !== noticeKeys) {
    noticeList.dataset.keys = noticeKeys
    noticeList.replaceChildren(...cardNotices.map((notice) => {
      const item = el('div', `notice ${notice.kind}`)
      item.setAttribute('role', 'status')
      if (notice.title) item.title = notice.title
      const close = el('button', 'dismiss', '×')
      close.type = 'button'
      close.title = 'Dismiss'
      close.addEventListener('click', () => dismiss(card.id, notice.key))
      item.append(el('span', 'text', notice.text), close)
      return item
    }))
  }

  const presence = $('.rec-presence', node)
  presence.hidden = !isExpanded
  if (isExpanded) {
    const entries = presenceEntries()
    const signature = JSON.stringify(entries)
    const ul = $('ul', presence)
    if (ul.dataset.signature !== signature) {
      ul.dataset.signature = signature
      ul.replaceChildren(...entries.map(presenceItem))
      if (!entries.length) ul.append(el('li', 'nobody', 'Nobody else here yet'))
    }
  }

  const select = $('.rec-move', node)
  const known = COLUMNS.includes(status)
  const options = known ? COLUMNS : [status, ...COLUMNS]
  if (select.dataset.options !== options.join('\n')) {
    select.dataset.options = options.join('\n')
    select.replaceChildren(...options.map((value) => {
      const option = el('option', '', value || '(no status)')
      option.value = value
      if (!COLUMNS.includes(value)) option.disabled = true
      return option
    }))
  }
  if (select.value !== status) select.value = status
  select.disabled = card.pending === 'delete'
  $('.rec-delete', node).disabled = card.pending === 'delete'
}

function presenceItem (entry) {
  const li = el('li', entry.self ? 'peer self' : 'peer')
  li.dataset.clientId = entry.key
  li.dataset.kind = entry.viewer ? 'viewer' : 'editor'
  li.style.setProperty('--peer-color', entry.color)
  li.append(el('span', 'swatch'), el('span', 'name', entry.name))
  if (entry.self) li.append(el('span', 'you', 'you'))
  li.append(el('span', 'cursor', entry.viewer ? 'viewing' : 'editing'))
  return li
}

// ---- forms ------------------------------------------------------------------------

els.typeName.value = T
document.title = `${T} · crdt-sync board`
els.typeForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const t = els.typeName.value.trim()
  if (!t || t === T) return
  const url = new URL(window.location.href)
  url.searchParams.set('t', t)
  window.location.assign(url)
})

els.userName.value = user.name
els.userName.addEventListener('change', () => {
  const name = els.userName.value.trim().slice(0, 60)
  if (!name) {
    els.userName.value = user.name
    return
  }
  user.name = name
  if (!user.color) user.color = pick(COLORS)
  writeStorage(localStorage, USER_KEY, JSON.stringify(user))
  if (expanded !== null) sendView(expanded)
})

els.createForm.addEventListener('submit', (event) => {
  event.preventDefault()
  const id = els.newId.value.trim() || randomId(6)
  const title = els.newTitle.value.trim()
  let error = ''
  if (!validName(`${T}/${id}`)) error = 'That id cannot be used (too long or control characters).'
  else if (currentView().has(id)) error = `A card “${shorten(id, 40)}” already exists.`
  setText(els.createError, error)
  if (error) return
  mutate('i', id, title ? { title, status: 'open' } : { status: 'open' })
  els.newId.value = ''
  els.newTitle.value = ''
  els.newTitle.focus()
})

const tokenForm = bindTokenForm()
// A new token may grant other records (or another tenant): start over with it.
onTokenChange(() => {
  outbox = loadOutbox() // the new identity's queue, never the previous one's
  needBootstrap = true
  if (socket) socketGone(socket, 'token changed', false)
  reconnectAttempt = 0
  flushAttempt = 0
  connect()
  flushOutbox()
})

els.outboxRetry.addEventListener('click', () => {
  flushAttempt = 0
  flushOutbox()
})

// Handy from the devtools console (and for tests): the page's state.
window.crdtBoard = {
  get t () { return T },
  get clientId () { return clientId },
  get lastSid () { return lastSid },
  get outbox () { return outbox.slice() },
  get records () { return new Map(records) },
  get status () { return statusState },
  flush: () => { flushAttempt = 0; return flushOutbox() },
  reconnect: () => { if (socket) socketGone(socket, 'asked to'); else connect() }
}

if (typeError) {
  setStatus('closed', typeError)
} else {
  render()
  connect()
}
